"""File descriptors: pipes, flags, dup2 and bulk close.

Every fd aproc makes for itself is close-on-exec from birth (pipe2(O_CLOEXEC)), so a concurrent
spawn in another thread can never inherit it (PITFALLS.md 5), and lives at 3 or above, so it can
never be mistaken for, or clobbered by, a child's stdin/stdout/stderr when the parent runs with
fd 0, 1 or 2 closed (PITFALLS.md 4).
"""

from __future__ import annotations

import errno
import fcntl
import os

__all__ = [
    "PIPE_BUF",
    "close_fds",
    "close_range",
    "dup2",
    "lift_stdio_sources",
    "move_above_stdio",
    "pipe",
    "set_blocking",
    "set_inheritable",
    "set_nonblocking",
    "set_pipe_size",
]

PIPE_BUF = 4096  # Linux: writes up to this size are atomic (pipe(7)).

# F_SETPIPE_SZ / F_GETPIPE_SZ are Linux-only; Python exposes them since 3.10.
_F_SETPIPE_SZ: int | None = getattr(fcntl, "F_SETPIPE_SZ", None)


def move_above_stdio(fd: int) -> int:
    """Return an fd >= 3 for ``fd``, duplicating (close-on-exec) and closing the low one if needed.

    An fd at 0, 1 or 2 only appears when the parent runs with its standard streams closed; moving
    it up keeps the spawn code free to dup2 over 0-2 without destroying one of its own fds.
    """
    if fd >= 3:
        return fd
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    return high


def pipe() -> tuple[int, int]:
    """Create a pipe whose two ends are close-on-exec and numbered 3 or above.

    Returns ``(read_fd, write_fd)``; both ends are blocking.
    """
    r, w = os.pipe2(os.O_CLOEXEC)
    if r < 3 or w < 3:
        try:
            r = move_above_stdio(r)
            w = move_above_stdio(w)
        except OSError:
            close_fds(r, w)
            raise
    return r, w


def set_nonblocking(fd: int) -> None:
    """Set O_NONBLOCK on ``fd``. Only ever on the parent's own end: see PITFALLS.md 6."""
    os.set_blocking(fd, False)


def set_blocking(fd: int) -> None:
    """Clear O_NONBLOCK on ``fd``."""
    os.set_blocking(fd, True)


def set_inheritable(fd: int, inheritable: bool) -> None:
    """Set or clear close-on-exec on ``fd`` (``inheritable=True`` clears it)."""
    os.set_inheritable(fd, inheritable)


def set_pipe_size(fd: int, size: int) -> int:
    """Ask the kernel to raise a pipe's capacity to ``size`` bytes (F_SETPIPE_SZ).

    Returns the capacity in force afterwards. An unprivileged process is capped by
    ``/proc/sys/fs/pipe-max-size`` (EPERM) and by its per-user pipe budget; both are refusals
    the caller can live with, so on EPERM/EBUSY the current size is returned unchanged. Where the
    platform has no F_SETPIPE_SZ the call returns 0 and does nothing.
    """
    if _F_SETPIPE_SZ is None:
        return 0
    try:
        return fcntl.fcntl(fd, _F_SETPIPE_SZ, size)
    except PermissionError:
        return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
        raise


def dup2(fd: int, fd2: int, *, inheritable: bool = True) -> int:
    """Make ``fd2`` a copy of ``fd``; returns ``fd2``.

    ``dup2(fd, fd)`` is a no-op in the kernel that leaves close-on-exec set, so the exact case
    where a source already sits on its target would silently lose the fd across exec
    (PITFALLS.md 4). Here it sets the inheritable flag as asked instead.
    """
    if fd == fd2:
        os.set_inheritable(fd, inheritable)
        return fd2
    return os.dup2(fd, fd2, inheritable=inheritable)


def close_range(first: int, last: int | None = None) -> None:
    """Close every fd from ``first`` to ``last`` inclusive (to the end when ``last`` is None).

    CPython's ``os.closerange`` uses the close_range(2) syscall where the kernel has it, so the
    cost does not grow with RLIMIT_NOFILE (PITFALLS.md 5: 20 s spawns at ``ulimit -n 1048576``).
    """
    stop = 0x7FFFFFFF if last is None else last + 1
    if stop > first:
        os.closerange(first, stop)


def close_fds(*fds: int | None) -> None:
    """Close each fd once, skipping None; every fd is attempted even if one close fails.

    The first error is re-raised after all were tried, so a failure never leaks the rest.
    """
    first_error: OSError | None = None
    for fd in fds:
        if fd is None:
            continue
        try:
            os.close(fd)
        except OSError as exc:
            if first_error is None:
                first_error = exc
    if first_error is not None:
        raise first_error


def lift_stdio_sources(
    stdio: tuple[int | None, int | None, int | None],
) -> tuple[tuple[int | None, int | None, int | None], list[int]]:
    """Prepare a child's fd 0-2 map so that dup2-ing it in order cannot clobber a source.

    A source that sits on 0, 1 or 2 but is meant for another target (``stdout=0``, or swapping
    stdout and stderr) would be overwritten by an earlier dup2 of the shuffle (PITFALLS.md 4).
    Such sources are duplicated (close-on-exec) to 3 or above in the parent first. Returns the
    map to use and the temporary fds, which the caller closes after the spawn.
    """
    lifted: dict[int, int] = {}
    out: list[int | None] = []
    try:
        for target, src in enumerate(stdio):
            if src is not None and src < 3 and src != target:
                if src not in lifted:
                    lifted[src] = fcntl.fcntl(src, fcntl.F_DUPFD_CLOEXEC, 3)
                src = lifted[src]
            out.append(src)
    except OSError:
        close_fds(*lifted.values())
        raise
    return (out[0], out[1], out[2]), list(lifted.values())
