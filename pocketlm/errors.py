"""User-facing errors: bad input that the command line reports in one line, not as a stack trace.

Raise a subclass of `PocketLMError` for anything the user can fix (a missing file, an unknown name, a
malformed line); `pocketlm.cli.run` prints its message and exits with status 2. Bugs stay stack traces.
"""


class PocketLMError(Exception):
    """Base of every error whose message alone tells the user what to fix."""


class ConfigError(PocketLMError, ValueError):
    """An argument or setting is out of range or inconsistent."""
