"""The general launcher: os.fork, a few raw syscalls in the child, execve.

It carries out what posix_spawn cannot (umask, user and groups, rlimits) and serves platforms
where :mod:`.posix_spawn` is unavailable. After fork the child holds copies of every lock that
other threads held (import, logging, malloc), so it runs only plain syscall wrappers, touches no
lock and no logging, and ends in ``execve`` or ``os._exit(127)`` (PITFALLS.md 2).

Exec failure is reported through a close-on-exec error pipe: a successful exec closes the write
end and the parent reads EOF; a failure writes ``errno:step`` first. The parent side is split in
two (:func:`start_fork_exec`, then :meth:`PendingExec.finish`) so that an event loop can await
the pipe becoming readable instead of blocking on the read (PITFALLS.md 3).
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import signal
from dataclasses import dataclass, field
from typing import Any

from .fds import close_fds, lift_stdio_sources, pipe
from .request import SpawnRequest
from .wait import wait_blocking

__all__ = ["PendingExec", "fork_exec", "start_fork_exec"]

# Signals a child gets back at their default disposition. Python itself ignores SIGPIPE and
# SIGXFSZ, and an ignored disposition survives exec (PITFALLS.md 7: `yes | head` never ends).
_RESETTABLE = tuple(
    sorted(s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP))
)
_ALL_SIGNALS = signal.valid_signals()

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Looked up before any fork: the child must not go through the dynamic loader.
_prctl = _load_prctl()

_STEP_EXEC = b"exec"
_STEP_CHDIR = b"chdir"
_STEP_SETUP = b"setup"


@dataclass(slots=True)
class PendingExec:
    """A forked child whose exec has not been confirmed yet.

    ``error_fd`` becomes readable (EOF or an error report) once the child has exec'd or failed;
    an async caller waits for that, then calls :meth:`finish`, which then does not block.
    """

    pid: int
    error_fd: int
    request: SpawnRequest
    _done: bool = field(default=False, repr=False)

    def finish(self) -> int:
        """Read the child's exec report; return the pid if exec succeeded.

        On failure, reap the child and raise the exact OSError (``filename`` = the program, or
        the cwd when chdir failed). Closes ``error_fd`` exactly once; a second call after success
        returns the pid again.
        """
        if self._done:
            return self.pid
        self._done = True
        report = b""
        try:
            # An event loop that polled error_fd may have made it non-blocking (libuv does that
            # to every fd it watches): the read loop below relies on blocking until EOF.
            os.set_blocking(self.error_fd, True)
            while chunk := os.read(self.error_fd, 64):
                report += chunk
        finally:
            os.close(self.error_fd)
        if not report:
            return self.pid
        # The child wrote its report and is about to _exit(127): reaping it blocks only for that.
        wait_blocking(self.pid)
        raise _decode_report(report, self.request)

    def abandon(self) -> None:
        """Kill and reap the child and close ``error_fd``: for a caller cancelled mid-spawn."""
        if self._done:
            return
        self._done = True
        try:
            os.kill(self.pid, signal.SIGKILL)
        finally:
            os.close(self.error_fd)
            wait_blocking(self.pid)


def _decode_report(report: bytes, request: SpawnRequest) -> OSError:
    errno_text, _, step = report.partition(b":")
    try:
        err = int(errno_text)
    except ValueError:
        err = 0
    if step == _STEP_CHDIR and request.cwd is not None:
        filename = os.fsdecode(request.cwd)
    else:
        filename = request.program_name
    if err == 0:
        return OSError(f"child setup failed before exec ({step.decode(errors='replace')})")
    return OSError(err, os.strerror(err), filename)


def _child(
    request: SpawnRequest,
    stdio: tuple[int | None, int | None, int | None],
    error_w: int,
    keep_fds: tuple[int, ...],
    env: dict[bytes, bytes] | None,
    parent_pid: int,
) -> None:
    """Runs in the forked child: raw syscalls only, then execve. Never returns."""
    step = _STEP_SETUP
    err = 0
    try:
        for target, src in enumerate(stdio):
            if src is None:
                continue
            if src == target:
                os.set_inheritable(src, True)
            else:
                os.dup2(src, target)
        low = 3
        for keep in keep_fds:
            if keep > low:
                os.closerange(low, keep)
            low = max(low, keep + 1)
        os.closerange(low, 0x7FFFFFFF)
        for fd in request.pass_fds:
            os.set_inheritable(fd, True)
        if request.cwd is not None:
            step = _STEP_CHDIR
            os.chdir(request.cwd)
            step = _STEP_SETUP
        if request.umask is not None:
            os.umask(request.umask)
        if request.start_new_session:
            os.setsid()
        if request.process_group is not None:
            os.setpgid(0, request.process_group)
        if request.extra_groups is not None:
            os.setgroups(list(request.extra_groups))
        if request.group is not None:
            os.setregid(request.group, request.group)
        if request.user is not None:
            os.setreuid(request.user, request.user)
        for res, limits in request.rlimits:
            resource.setrlimit(res, limits)
        if request.parent_death_signal is not None:
            if _prctl is None or _prctl(_PR_SET_PDEATHSIG, request.parent_death_signal, 0, 0, 0):
                raise OSError(ctypes.get_errno() or errno.ENOSYS, "prctl(PR_SET_PDEATHSIG)")
            if os.getppid() != parent_pid:
                # The parent died before the request took effect: act on it as it would have.
                os.kill(os.getpid(), request.parent_death_signal)
        if request.reset_signals:
            for sig in _RESETTABLE:
                signal.signal(sig, signal.SIG_DFL)
        # The same empty mask posix_spawn gives: nothing the parent blocked leaks into the child.
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        step = _STEP_EXEC
        if env is None:
            os.execv(request.executable, request.argv)
        else:
            os.execve(request.executable, request.argv, env)
    except OSError as exc:
        err = exc.errno or 0
    except BaseException:
        err = 0
    try:
        os.write(error_w, b"%d:%s" % (err, step))
    finally:
        os._exit(127)


def start_fork_exec(request: SpawnRequest) -> PendingExec:
    """Fork a child that carries out ``request``; return before its exec is confirmed.

    The caller must call :meth:`PendingExec.finish` (after waiting for ``error_fd`` to become
    readable, if it must not block) or :meth:`PendingExec.abandon`.
    """
    env = None if request.env is None else dict(request.env)
    stdio, temps = lift_stdio_sources(request.stdio)
    try:
        error_r, error_w = pipe()
        try:
            keep_fds = tuple(sorted({*request.pass_fds, error_w}))
            parent_pid = os.getpid()
            # Block every signal across fork so no handler of ours can run in the child before
            # it has reset them; the child restores a mask of its own just before execve.
            saved_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _ALL_SIGNALS)
            try:
                pid = os.fork()
                if pid == 0:  # pragma: no cover - the child execs or _exits
                    _child(request, stdio, error_w, keep_fds, env, parent_pid)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, saved_mask)
        except BaseException:
            os.close(error_r)
            raise
        finally:
            os.close(error_w)
    finally:
        close_fds(*temps)
    return PendingExec(pid, error_r, request)


def fork_exec(request: SpawnRequest) -> int:
    """Start ``request`` through fork/execve and block until exec is confirmed; return the pid.

    Raises the exec failure as the exact OSError; the failed child is reaped.
    """
    return start_fork_exec(request).finish()
