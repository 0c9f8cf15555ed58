"""Waiting for children: per-pid waitpid, exact exit-status decoding, and pidfds.

The kernel reports a child's end as a 16-bit wait status. aproc decodes it the way subprocess
does (exit N -> N, killed by signal S -> -S) and keeps the core-dump flag; a stopped or
continued status is not an exit and is never decoded as one (PITFALLS.md 14).

Children are always waited for by pid, never with ``waitpid(-1)``, which would steal the
children of other libraries in the same process (PITFALLS.md 9). A pidfd (Linux >= 5.3) names
one process for good: it becomes readable when that process exits, so an event loop can wait for
it like any fd, and a signal sent through it can never hit a recycled pid (PITFALLS.md 12).
"""

from __future__ import annotations

import errno
import os
import signal
from dataclasses import dataclass
from functools import cache

__all__ = [
    "ExitStatus",
    "have_pidfd",
    "pidfd_open",
    "pidfd_send_signal",
    "send_signal",
    "try_reap",
    "wait_blocking",
]


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """How a child ended.

    ``returncode`` follows subprocess: the exit code N when the child exited, ``-S`` when signal
    S killed it. ``core_dumped`` is True when the kernel wrote a core file.
    """

    returncode: int
    core_dumped: bool = False

    @classmethod
    def from_wait_status(cls, status: int) -> ExitStatus:
        """Decode a raw ``waitpid`` status.

        Raises ValueError for a status that is not an end (stopped or continued): those only
        appear with WUNTRACED/WCONTINUED and must not be mistaken for an exit.
        """
        if os.WIFEXITED(status):
            return cls(os.WEXITSTATUS(status))
        if os.WIFSIGNALED(status):
            return cls(-os.WTERMSIG(status), os.WCOREDUMP(status))
        raise ValueError(f"wait status {status:#x} is not an exit (stopped or continued)")

    @property
    def signal(self) -> signal.Signals | None:
        """The signal that killed the child, or None when it exited."""
        if self.returncode >= 0:
            return None
        try:
            return signal.Signals(-self.returncode)
        except ValueError:  # a real-time signal without a name
            return None

    @property
    def signal_name(self) -> str | None:
        """``"SIGKILL"`` and the like when a signal killed the child, else None."""
        if self.returncode >= 0:
            return None
        sig = self.signal
        return sig.name if sig is not None else f"SIG{-self.returncode}"


def try_reap(pid: int) -> ExitStatus | None:
    """Reap ``pid`` if it has exited: ``waitpid(pid, WNOHANG)``.

    Returns None while the child runs. Raises ChildProcessError (ECHILD) when ``pid`` is not an
    unreaped child of this process, e.g. because SIGCHLD is ignored and the kernel reaped it.
    """
    reaped, status = os.waitpid(pid, os.WNOHANG)
    if reaped == 0:
        return None
    return ExitStatus.from_wait_status(status)


def wait_blocking(pid: int) -> ExitStatus:
    """Block until ``pid`` exits and reap it. For threads and sync code, never an event loop."""
    _, status = os.waitpid(pid, 0)
    return ExitStatus.from_wait_status(status)


def send_signal(pid: int, sig: int) -> None:
    """``kill(pid, sig)``. Callers must only use it for a child they have not reaped yet."""
    os.kill(pid, sig)


def pidfd_open(pid: int) -> int:
    """Open a pidfd for ``pid`` (close-on-exec, as every pidfd is). Raises OSError."""
    return os.pidfd_open(pid)


def pidfd_send_signal(pidfd: int, sig: int) -> None:
    """Send ``sig`` to the process a pidfd names; ESRCH once it is gone."""
    signal.pidfd_send_signal(pidfd, sig)


@cache
def have_pidfd() -> bool:
    """True when pidfd_open and pidfd_send_signal work here (Linux >= 5.3, no seccomp veto)."""
    if not hasattr(os, "pidfd_open") or not hasattr(signal, "pidfd_send_signal"):
        return False
    try:
        fd = os.pidfd_open(os.getpid())
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EPERM, errno.EINVAL):
            return False
        raise
    try:
        signal.pidfd_send_signal(fd, 0)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True
