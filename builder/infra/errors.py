"""Error types and the exit codes they map to.

Two kinds of failure matter to whoever reads a CI log: the user's input was
wrong (a patch, a fragment, a config key) or the machine let us down (a tool
is missing, the disk is full, a mirror is down).  Each gets its own class and
exit code, and every error carries a hint saying what to do next.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    INTERNAL = 1  # a bug in isobuild: a traceback was printed
    USER = 2  # bad input: config, patch, fragment, compile error from a patch
    INFRA = 3  # the host: missing tool, disk full, mirror down, QEMU crashed, lock held
    CHECK_FAILED = 4  # a boot check ran and its verdict was "fail"
    INTERRUPTED = 130  # Ctrl-C / SIGTERM


class IsobuildError(Exception):
    """Base class: a message for people, an optional hint, an exit code."""

    exit_code = ExitCode.INTERNAL

    def __init__(self, message: str, hint: str | None = None, details: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details or []


class UserError(IsobuildError):
    """The input is wrong; the user can fix it."""

    exit_code = ExitCode.USER


class InfraError(IsobuildError):
    """The host or the network failed; fixing it is not about the inputs."""

    exit_code = ExitCode.INFRA


class CheckFailed(IsobuildError):
    """A verification ran to completion and said no (e.g. the boot check)."""

    exit_code = ExitCode.CHECK_FAILED
