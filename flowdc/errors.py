"""The errors a user sees, each with its exit code, declared once for every layer.

The CLI prints any `FlowdcError` as one line (`flowdc: error: ...`) and exits with its code; no
traceback. Lower layers raise these instead of importing the CLI or the config module.
"""

from __future__ import annotations

import errno
import os

EXIT_OK = 0
EXIT_FAILURE = 1  # the destination (or another service) cannot be reached; a rerun resumes
EXIT_USAGE = 2  # the user's input is wrong: config, options, manifest, output folder
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM: what is stored stays stored, a rerun resumes


class FlowdcError(Exception):
    """Base of the errors meant for users; `exit_code` is what the CLI returns for it."""

    exit_code = EXIT_FAILURE


class UserError(FlowdcError, ValueError):
    """Bad config, options or input: one line, exit code 2, never a traceback."""

    exit_code = EXIT_USAGE


class ConfigError(UserError):
    """An option or config value (the name kept from the first releases)."""


class DestinationError(FlowdcError, RuntimeError):
    """The output cannot be written at all; nothing stored so far is lost, a rerun resumes."""

    exit_code = EXIT_FAILURE


class ProxyError(FlowdcError, RuntimeError):
    """The proxy refused or could not be reached for the run's first requests: nothing is lost, a
    rerun with a working proxy resumes."""

    exit_code = EXIT_FAILURE


class OutputInUseError(UserError):
    """Another live run holds this output (lock or lease); the message names the holder."""


class OutputNotOursError(UserError):
    """The output holds files flowdc did not write (no ownership mark): refused, --force or not."""


class InterruptedRun(FlowdcError):
    """The run was stopped by a signal after keeping what it had stored."""

    exit_code = EXIT_INTERRUPTED


NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})  # the destination is full: no retry of a sample helps
# The destination refuses writes (and so would every retry), each in the words a message gives it.
REFUSED = {errno.EROFS: "a read-only file system", errno.EACCES: "permission denied",
           errno.EPERM: "operation not permitted"}


def then_again(exc: BaseException) -> str:
    """What to do after a destination failed with `exc`, for the end of a one-line error."""
    if getattr(exc, "errno", None) in NO_SPACE:
        return "free space, then run the same command again"
    return "run the same command again when it is reachable"


def failure_words(exc: BaseException) -> str:
    """What went wrong, for a one-line error: the system's words for an OS error ("No space left
    on device"), else the error's type."""
    code = getattr(exc, "errno", None)
    if isinstance(exc, OSError) and isinstance(code, int) and code > 0:
        return os.strerror(code)
    return type(exc).__name__
