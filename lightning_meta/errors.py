"""What a user can get wrong, apart from what is a bug.

Every check of a user's input raises one of these where it is made, with a message that names the setting or file
and what to change. The command line prints a `UserError` as one line (`error: ...`, exit status 2) and lets every
other exception show its traceback: an exception that is not a `UserError` is a bug of the project or of a library.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; the message says what to change."""


class ConfigError(UserError, ValueError):
    """A config key, a command-line argument or a constructor argument out of range or of the wrong type."""


class DataError(UserError):
    """Data on disk or from a user's taskset that is missing, corrupt or too small for the requested episodes."""


class CheckpointError(UserError):
    """A checkpoint that cannot be read, or that does not fit the config or the learner it is loaded into."""


class DivergenceError(UserError):
    """Training or evaluation produced non-finite values; the message names the setting to lower."""
