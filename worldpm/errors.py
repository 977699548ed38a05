"""The one exception type for bad user input in worldpm.

Anything raised as `UserError` reaches the user as a single line (`worldpm <verb>: error: ...`) and exit status 2, never as a
traceback. Raise it where the bad value is known, and name the value. It derives from data_prep's `InputError`, so the one Hydra
entry point (data_prep/entry.py) handles both packages' errors.
"""
from data_prep.errors import InputError


class UserError(InputError):
    """Bad input from the user (a path, a config value, a file's content). The message is shown as one line."""
