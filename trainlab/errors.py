"""Errors a user can cause: the CLI prints them as one line and exits non-zero."""


class UserError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""


class ConfigError(UserError):
    """A config value or combination that cannot run."""
