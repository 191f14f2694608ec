"""Errors a user can cause: the CLI prints them as one line and exits non-zero."""

from __future__ import annotations

from omegaconf.errors import OmegaConfBaseException


class UserError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""


class ConfigError(UserError):
    """A config value or combination that cannot run."""


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message ("" when it has none): library messages
    (OmegaConf's, torch's) run to several lines, and an error here is one line."""
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def as_user_error(error: BaseException) -> UserError | None:
    """``error`` as a mistake the user can fix: a UserError as it is, a ${...} or ??? the
    checks did not reach as one line; None for anything else (a bug)."""
    if isinstance(error, UserError):
        return error
    if isinstance(error, OmegaConfBaseException):
        return UserError(f"{first_line(error)}; check the overrides")
    return None
