"""The one exception type for bad input to data_prep (data_prep must not import worldpm, so this mirrors worldpm.errors.UserError).

`CollectError` reaches the user as one line (`worldpm collect: error: ...`) and a non-zero exit, never a traceback. Raise it where
the bad value is known and name it: a path, a config value, or a file and the position in it where its content went wrong.
"""


class CollectError(Exception):
    """Bad input from the user (a path, a config value, a file's content). The message is always one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def file_error(path, position: str, what: str) -> CollectError:
    """A corrupt or truncated input: name the file and where in it the problem is."""
    return CollectError(f"{path}: {position}: {what}")
