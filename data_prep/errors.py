"""The exception type for bad user input, shared by every verb (data_prep must not import worldpm, so it lives here and
`worldpm.errors.UserError` derives from it).

An `InputError` reaches the user as one line (`worldpm <verb>: error: ...`) and exit status 2, never a traceback. Raise it where
the bad value is known and name it: a path, a config value, or a file and the position in it where its content went wrong.
"""


class InputError(Exception):
    """Bad input from the user (a path, a config value, a file's content). The message is always one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class CollectError(InputError):
    """Bad input to `worldpm collect`."""


def file_error(path, position: str, what: str) -> CollectError:
    """A corrupt or truncated input: name the file and where in it the problem is."""
    return CollectError(f"{path}: {position}: {what}")
