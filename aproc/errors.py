"""aproc's own exceptions, each a subclass of the builtin a user would already catch.

Errors of the OS itself (a missing program, a bad cwd) are raised as the plain OSError subclass
the kernel's errno maps to; a non-zero exit under ``check=True`` is subprocess's own
CalledProcessError. Only what has no builtin home is defined here.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import Any

import anyio

__all__ = [
    "LineTooLongError",
    "ProcessTimeoutError",
    "ReaperUnavailableError",
    "StopTimeoutError",
    "SupervisorGaveUp",
]


class ReaperUnavailableError(RuntimeError):
    """No way to learn of child exits here: SIGCHLD is ignored, or the chosen reaper cannot run
    in this thread. Raised before a child is started, so none is lost."""


class LineTooLongError(anyio.DelimiterNotFound):
    """A line grew past the stream's line limit without a newline.

    ``limit`` is the limit in force; pass a larger ``limit=`` to ``lines()`` for long lines.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit
        self.args = (
            f"line longer than {limit} bytes without a newline; "
            "pass a larger limit to lines(limit=...)",
        )


class ProcessTimeoutError(TimeoutError, subprocess.TimeoutExpired):
    """``run(timeout=...)`` expired: the child was stopped and reaped.

    It is both a TimeoutError and a subprocess.TimeoutExpired, and carries what the child had
    written: ``cmd``, ``timeout``, ``stdout`` (alias ``output``) and ``stderr``.
    """

    def __init__(
        self,
        cmd: Sequence[Any] | str,
        timeout: float,
        output: bytes | None = None,
        stderr: bytes | None = None,
    ) -> None:
        TimeoutError.__init__(self, f"command {cmd!r} timed out after {timeout} seconds")
        subprocess.TimeoutExpired.__init__(self, cmd, timeout, output, stderr)

    def __str__(self) -> str:
        return f"Command {self.cmd!r} timed out after {self.timeout} seconds"


class StopTimeoutError(TimeoutError):
    """A child did not exit even after SIGKILL within the bound ``stop()`` allows.

    That happens when it is in uninterruptible sleep (state D, stuck in the kernel). ``pid`` names
    it; it stays watched and a later ``wait()`` still reaps it.
    """

    def __init__(self, pid: int, waited: float) -> None:
        super().__init__(
            f"process {pid} did not exit within {waited} s of SIGKILL "
            "(uninterruptible sleep in the kernel?)"
        )
        self.pid = pid
        self.waited = waited


class SupervisorGaveUp(Exception):
    """Children restarted more than ``max_restarts`` times within ``max_seconds``.

    The supervisor has stopped every child. ``child`` names the child whose exit broke the
    limit, ``restarts`` the number of restarts asked for within the window (its own included),
    and ``returncode`` its last exit code
    (None when it could not be started at all).
    """

    def __init__(
        self,
        child: str,
        restarts: int,
        max_restarts: int,
        max_seconds: float,
        returncode: int | None,
    ) -> None:
        super().__init__(
            f"child {child!r} broke the restart intensity: {restarts} restarts needed within "
            f"{max_seconds} s, more than max_restarts={max_restarts}; "
            f"last returncode {returncode}"
        )
        self.child = child
        self.restarts = restarts
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self.returncode = returncode
