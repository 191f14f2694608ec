"""Errors a user can cause: the CLI prints them as one line and exits non-zero."""

from __future__ import annotations

import errno


class UserError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""


class ConfigError(UserError):
    """A config value or combination that cannot run."""


class SharedError(UserError):
    """A UserError every process of a data-parallel run has agreed on, raised on the processes
    other than 0: process 0 reports it (and records it), the others end quietly."""


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message ("" when it has none): library messages
    (OmegaConf's, torch's) run to several lines, and an error here is one line."""
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


# What the operating system says about a path the user gave, and what to do about it.
_PATH_FIXES = {
    errno.ENAMETOOLONG: "use a shorter path",
    errno.ENOTDIR: "a file stands where a folder is expected; move it or choose another path",
    errno.EISDIR: "a folder stands where a file is expected; move it or choose another path",
    errno.EEXIST: "something else already has that name; choose another path",
    errno.EACCES: "choose a path you may write to, or change its permissions",
    errno.EPERM: "choose a path you may write to, or change its permissions",
    errno.EROFS: "the file system is read-only; choose a writable path",
    errno.ENOSPC: "free some disk space, or choose a path on another disk",
    errno.EDQUOT: "your disk quota is used up; free some space or choose another disk",
    errno.ENOENT: "check the path",
    errno.ELOOP: "the path loops through symbolic links; check it",
}


def path_error(error: OSError) -> UserError | None:
    """An operating-system error on a path as one line naming the path and the fix; None for
    one that is not about a path the user can change."""
    fix = _PATH_FIXES.get(error.errno or 0)
    if fix is None:
        return None
    where = error.filename if error.filename is not None else "a file"
    return UserError(f"{where}: {error.strerror or error}; {fix}")


def as_user_error(error: BaseException) -> UserError | None:
    """``error`` as a mistake the user can fix: a UserError as it is, a ${...} or ??? the checks
    did not reach, or an operating-system error on a path, as one line; None for anything else
    (a bug)."""
    from omegaconf.errors import OmegaConfBaseException  # (trainlab-report does without)

    if isinstance(error, UserError):
        return error
    if isinstance(error, OmegaConfBaseException):
        return UserError(f"{first_line(error)}; check the overrides")
    if isinstance(error, OSError):
        return path_error(error)
    return None
