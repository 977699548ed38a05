"""The one exception type for bad user input.

Anything raised as `UserError` reaches the user as a single line (`worldpm: error: ...`) and exit status 2,
never as a traceback. Raise it where the bad value is known, and name the value.
"""


class UserError(Exception):
    """Bad input from the user (a path, a config value, a file's content). The message is shown as one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line
