"""The one exception type for user mistakes.

Anything a user can fix by changing an override, a path or a file raises ConfigError with a
single line that names the key, the bad value and what is allowed. Entry points print that line
and exit with code 2 instead of a traceback; everything else is a bug and keeps its traceback.
"""

USAGE_EXIT_CODE = 2


class ConfigError(Exception):
    """A user mistake: bad override, impossible batch split, missing file. One line, no traceback."""


class RunStopped(Exception):
    """The run cannot go on for a reason outside its config (no valid checkpoint, a full disk, a
    refused checkpoint file). One line; re-running the same command resumes once it is fixed."""
