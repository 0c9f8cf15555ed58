"""The Process handle, ``spawn()``, ``spawn_shell()`` and ``run()``.

A child is started by the primitives (posix_spawn whenever it can express the request, else
fork/execve with its error pipe awaited, never read blocking on the loop: PITFALLS.md 3) and
watched by the event loop's reaper right away, before any await. ``wait()`` follows the child's
exit, not its pipes' EOF (PITFALLS.md 15). Every path that fails or is cancelled after the fork
stops and reaps the child and closes the fds made for it (PITFALLS.md 1, 19).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import IO, Any, Final, Protocol

import anyio
import anyio.abc
import anyio.lowlevel
import structlog

from .errors import ProcessTimeoutError, StopTimeoutError
from .primitives import (
    ExitStatus,
    SpawnRequest,
    close_fds,
    pipe,
    posix_spawn,
    set_pipe_size,
    start_fork_exec,
    uses_posix_spawn,
    wait_blocking,
)
from .primitives.request import StrOrBytesPath
from .reaper import ChildWatch, check_sigchld_disposition, current_reaper
from .streams import FdReceiveStream, FdSendStream

__all__ = [
    "DEVNULL",
    "PIPE",
    "STDOUT",
    "Process",
    "StdioSpec",
    "communicate",
    "run",
    "spawn",
    "spawn_shell",
]

PIPE: Final = subprocess.PIPE
"""Connect the child's stream to a new pipe whose other end becomes ``proc.stdin`` etc."""
DEVNULL: Final = subprocess.DEVNULL
"""Connect the child's stream to ``/dev/null``."""
STDOUT: Final = subprocess.STDOUT
"""For ``stderr`` only: send the child's stderr wherever its stdout goes."""

StdioSpec = int | IO[Any] | None
"""None (inherit), PIPE, DEVNULL, STDOUT (stderr only), an fd, or an object with fileno()."""

DEFAULT_STOP_TIMEOUT = 10.0
DEFAULT_KILL_TIMEOUT = 5.0
DEFAULT_DRAIN_TIMEOUT = 1.0
# 1 MiB pipes: fewer wake-ups and syscalls for chatty children. Unprivileged processes may be
# refused past /proc/sys/fs/pipe-max-size (1 MiB by default); set_pipe_size tolerates that.
DEFAULT_PIPE_SIZE = 1024 * 1024


# A module-level lazy proxy: it reads structlog's configuration when first used, so an
# application configures structlog whenever it likes, and with cache_logger_on_first_use the
# spawn/exit events of a filtered level cost almost nothing on this hot path.
_log = structlog.get_logger("aproc")


def _argv_for_log(argv: Sequence[bytes]) -> list[str]:
    return [os.fsdecode(a) for a in argv]


class Process(anyio.abc.Process):
    """A running (or finished) child process. Get one from :func:`spawn`.

    ``returncode`` is None while the child runs, then its exit code, or ``-N`` when signal N
    killed it. Signals sent after the child was reaped are no-ops, so they can never hit a
    recycled pid. ``async with proc:`` closes stdin on exit and waits for the child; leaving
    the block by an exception or a cancellation stops it instead.
    """

    def __init__(
        self,
        watch: ChildWatch,
        argv: tuple[bytes, ...],
        stdin: FdSendStream | None,
        stdout: FdReceiveStream | None,
        stderr: FdReceiveStream | None,
        *,
        group_leader: bool,
        stop_signal: int,
        stop_timeout: float,
    ) -> None:
        self._watch = watch
        self._argv = argv
        self._stdin = stdin
        self._stdout = stdout
        self._stderr = stderr
        self._group_leader = group_leader
        self._stop_signal = stop_signal
        self._stop_timeout = stop_timeout
        self._started = time.monotonic()
        self._exit_logged = False

    def __repr__(self) -> str:
        return f"<aproc.Process pid={self.pid} returncode={self.returncode} argv={self.args!r}>"

    @property
    def pid(self) -> int:
        return self._watch.pid

    @property
    def args(self) -> list[str]:
        """The argv the child was started with, decoded."""
        return _argv_for_log(self._argv)

    @property
    def returncode(self) -> int | None:
        status = self._watch.status
        return None if status is None else status.returncode

    @property
    def exit_status(self) -> ExitStatus | None:
        """The full exit status (returncode, signal, core dump) once reaped, else None."""
        return self._watch.status

    @property
    def stdin(self) -> FdSendStream | None:
        return self._stdin

    @property
    def stdout(self) -> FdReceiveStream | None:
        return self._stdout

    @property
    def stderr(self) -> FdReceiveStream | None:
        return self._stderr

    @property
    def group_leader(self) -> bool:
        """True when the child leads its own process group (``start_new_session`` or
        ``process_group=0``): :meth:`stop` then signals the whole group."""
        return self._group_leader

    def poll(self) -> int | None:
        """Reap the child if it has exited, without waiting; return ``returncode``."""
        if self._watch.poll() is not None:
            self._log_exit()
        return self.returncode

    async def wait(self) -> int:
        """Wait for the child to exit; return its returncode.

        Any number of tasks may wait at once. Cancelling a waiter leaves the child running and
        its exit to be reported to the other waiters. Output still in the pipes stays readable.
        """
        status = await self._watch.wait()
        self._log_exit()
        return status.returncode

    def _log_exit(self) -> None:
        if self._exit_logged:
            return
        self._exit_logged = True
        status = self._watch.status
        assert status is not None
        _log.debug(
            "process.exited",
            pid=self.pid,
            argv=self.args,
            returncode=status.returncode,
            signal=status.signal_name,
            core_dumped=status.core_dumped,
            runtime=round(time.monotonic() - self._started, 6),
        )

    def send_signal(self, signal: int) -> None:
        """Send ``signal`` to the child. A no-op once it has been reaped."""
        self._watch.send_signal(signal)

    def terminate(self) -> None:
        """Send SIGTERM (no-op once reaped)."""
        self._watch.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Send SIGKILL (no-op once reaped)."""
        self._watch.send_signal(signal.SIGKILL)

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the child's whole process group when it leads one (as
        :meth:`stop` does), else to the child alone. Safe after the reap: a group that still
        has members keeps its id, and an empty one is simply gone."""
        if self._group_leader:
            # The group outlives its leader while members remain, and its id stays allocated
            # as long as it has members, so signalling it after the leader's reap is safe.
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass
            except PermissionError:
                self._watch.send_signal(sig)  # a member changed credentials: the leader at least
        else:
            self._watch.send_signal(sig)

    async def stop(
        self,
        timeout: float | None = None,
        *,
        signal: int | None = None,
        kill_timeout: float = DEFAULT_KILL_TIMEOUT,
    ) -> int:
        """Stop the child: ``signal`` (default SIGTERM), up to ``timeout`` seconds of grace,
        then SIGKILL; return its returncode.

        When the child leads a process group the signals go to the whole group, and whatever
        is left of the group after the grace period is killed (PITFALLS.md 21). A stopped
        (SIGSTOP) child gets SIGCONT so it can act on the signal. ``timeout=0`` kills at once.
        Raises :class:`aproc.StopTimeoutError` if the child is still there ``kill_timeout``
        seconds after SIGKILL (uninterruptible sleep).
        """
        grace = self._stop_timeout if timeout is None else timeout
        sig = self._stop_signal if signal is None else signal
        if self.returncode is None and grace > 0:
            self.signal_group(sig)
            if sig not in (_SIGKILL, _SIGCONT):
                self.signal_group(_SIGCONT)
            with anyio.move_on_after(grace):
                await self.wait()
        if self.returncode is None or self._group_leader:
            self.signal_group(_SIGKILL)
        with anyio.move_on_after(kill_timeout) as scope:
            await self.wait()
        if scope.cancelled_caught:
            raise StopTimeoutError(self.pid, kill_timeout)
        returncode = self.returncode
        assert returncode is not None
        return returncode

    def _close_streams(self) -> None:
        for stream in (self._stdin, self._stdout, self._stderr):
            if stream is not None:
                stream.close()

    async def aclose(self) -> None:
        """Close the pipes, then wait for the child (anyio semantics: unread output is dropped,
        so a child blocked on a full pipe gets EPIPE instead of deadlocking: PITFALLS.md 18).
        If the wait is cancelled, the child is stopped before the cancellation propagates."""
        self._close_streams()
        await wait_or_stop(self)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await leave_block(self, self._stdin, exc_type is not None)


class _Stoppable(Protocol):
    async def wait(self) -> Any: ...

    async def stop(self, timeout: float | None = None) -> Any: ...

    def _close_streams(self) -> None: ...


async def wait_or_stop(target: _Stoppable) -> None:
    """Wait for ``target`` (a process or a pipeline); if the wait is interrupted by an error or
    a cancellation, stop it, shielded, before letting that propagate."""
    try:
        await target.wait()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await target.stop()
        raise


async def leave_block(target: _Stoppable, stdin: FdSendStream | None, failed: bool) -> None:
    """What leaving ``async with target`` does: on a normal exit close stdin and wait; when the
    block failed or was cancelled, close the pipes and stop ``target``."""
    if not failed:
        if stdin is not None:
            stdin.close()
        try:
            await wait_or_stop(target)
        finally:
            target._close_streams()
    else:
        target._close_streams()
        with anyio.CancelScope(shield=True):
            await target.stop()


_SIGKILL = signal.SIGKILL
_SIGCONT = signal.SIGCONT


class _Stdio:
    """The fds a spawn makes: child ends to close after the spawn, parent ends to keep."""

    __slots__ = ("child_fds", "devnull", "parent_fds", "pipe_size")

    def __init__(self, pipe_size: int | None) -> None:
        self.pipe_size = pipe_size
        self.child_fds: list[int] = []
        self.parent_fds: list[int | None] = [None, None, None]
        self.devnull: int | None = None

    def resolve(self, spec: StdioSpec, target: int, stdout_fd: int | None) -> int | None:
        if spec is None:
            return None
        if spec == PIPE:
            r, w = pipe()
            if target == 0:
                parent, child = w, r
            else:
                parent, child = r, w
            self.parent_fds[target] = parent
            self.child_fds.append(child)
            if self.pipe_size is not None:
                set_pipe_size(parent, self.pipe_size)
            return child
        if spec == DEVNULL:
            if self.devnull is None:
                self.devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                self.child_fds.append(self.devnull)
            return self.devnull
        if spec == STDOUT:
            if target != 2:
                raise ValueError("STDOUT is only valid for stderr")
            return 1 if stdout_fd is None else stdout_fd
        if isinstance(spec, int):
            if spec < 0:
                raise ValueError(f"invalid file descriptor {spec} for {_STREAM_NAMES[target]}")
            return spec
        fileno = getattr(spec, "fileno", None)
        if fileno is None:
            raise TypeError(
                f"{_STREAM_NAMES[target]} must be None, PIPE, DEVNULL, an fd or a file object, "
                f"not {type(spec).__name__}"
            )
        fd: int = fileno()
        return fd

    def close_child_ends(self) -> None:
        fds, self.child_fds = self.child_fds, []
        close_fds(*fds)

    def close_parent_ends(self) -> None:
        fds, self.parent_fds = self.parent_fds, [None, None, None]
        close_fds(*fds)


_STREAM_NAMES = ("stdin", "stdout", "stderr")


async def spawn(
    argv: Sequence[StrOrBytesPath],
    *,
    stdin: StdioSpec = None,
    stdout: StdioSpec = None,
    stderr: StdioSpec = None,
    cwd: StrOrBytesPath | None = None,
    env: Mapping[str, str] | Mapping[bytes, bytes] | None = None,
    pass_fds: Iterable[int] = (),
    start_new_session: bool = False,
    process_group: int | None = None,
    executable: StrOrBytesPath | None = None,
    umask: int | None = None,
    user: int | None = None,
    group: int | None = None,
    extra_groups: Iterable[int] | None = None,
    rlimits: Mapping[int, tuple[int, int]] | None = None,
    reset_signals: bool = True,
    parent_death_signal: int | None = None,
    stop_signal: int = signal.SIGTERM,
    stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    pipe_size: int | None = DEFAULT_PIPE_SIZE,
) -> Process:
    """Start ``argv`` as a child process and return its :class:`Process` once it has exec'd.

    ``argv`` is a sequence (a bare str is a TypeError: there is no implicit shell, see
    :func:`spawn_shell`). ``stdin``/``stdout``/``stderr`` take None (inherit), PIPE, DEVNULL,
    STDOUT (stderr only), an fd or a file object. ``env`` replaces the environment (None
    inherits ours); the program is looked up on the child's PATH. The child sees only fds 0-2
    and ``pass_fds``. ``start_new_session``/``process_group=0`` make it lead its own process
    group, so :meth:`Process.stop` takes the whole group. ``parent_death_signal`` (Linux) is
    sent to the child by the kernel if the thread running this event loop dies first (it takes
    the fork path). ``stop_signal`` and ``stop_timeout``
    are the defaults :meth:`Process.stop` uses, also when the ``async with`` block is left by
    an exception. ``pipe_size`` raises the capacity of each PIPE (1 MiB by default: fewer
    wake-ups for bulk output); None keeps the kernel's 64 KiB. Pipe memory counts against a
    per-user budget (``/proc/sys/fs/pipe-user-pages-soft``), so many long-lived children
    should keep the default size, as the Supervisor does.

    Raises the exec failure at once as the exact OSError: FileNotFoundError with ``filename`` =
    the program, PermissionError, or the cwd's error with ``filename`` = the cwd; TypeError or
    ValueError for malformed arguments; :class:`aproc.ReaperUnavailableError` when child exits
    cannot be observed here. Cancellation at any point leaves no child and no fd behind.
    """
    await anyio.lowlevel.checkpoint_if_cancelled()
    check_sigchld_disposition()
    reaper = current_reaper()
    stdio = _Stdio(pipe_size)
    try:
        stdin_fd = stdio.resolve(stdin, 0, None)
        stdout_fd = stdio.resolve(stdout, 1, None)
        stderr_fd = stdio.resolve(stderr, 2, stdout_fd)
        request = SpawnRequest.create(
            argv,
            executable=executable,
            env=env,  # type: ignore[arg-type]
            cwd=cwd,
            stdin=stdin_fd,
            stdout=stdout_fd,
            stderr=stderr_fd,
            pass_fds=pass_fds,
            start_new_session=start_new_session,
            process_group=process_group,
            reset_signals=reset_signals,
            umask=umask,
            user=user,
            group=group,
            extra_groups=extra_groups,
            rlimits=rlimits,
            parent_death_signal=parent_death_signal,
        )
        if uses_posix_spawn(request):
            pid = posix_spawn(request)
        else:
            pending = start_fork_exec(request)
            try:
                await anyio.wait_readable(pending.error_fd)
            except BaseException:
                pending.abandon()
                raise
            pid = pending.finish()
        try:
            watch = reaper.watch(pid)
        except BaseException:
            # No way to watch it (EMFILE on pidfd_open): never leave a child nobody reaps.
            os.kill(pid, signal.SIGKILL)
            wait_blocking(pid)
            raise
    except BaseException:
        stdio.close_parent_ends()
        raise
    finally:
        stdio.close_child_ends()
    parent = stdio.parent_fds
    proc = Process(
        watch,
        request.argv,
        None if parent[0] is None else FdSendStream(parent[0]),
        None if parent[1] is None else FdReceiveStream(parent[1]),
        None if parent[2] is None else FdReceiveStream(parent[2]),
        group_leader=start_new_session or process_group == 0,
        stop_signal=stop_signal,
        stop_timeout=stop_timeout,
    )
    _log.debug("process.spawned", pid=pid, argv=proc.args)
    return proc


async def spawn_shell(command: str | bytes, **kwargs: Any) -> Process:
    """Run ``command`` through ``/bin/sh -c``: the explicit way to get shell syntax.

    Takes the keyword arguments of :func:`spawn`.
    """
    return await spawn(["/bin/sh", "-c", command], **kwargs)


async def _collect(stream: FdReceiveStream, chunks: list[bytes]) -> None:
    try:
        while True:
            chunks.append(await stream.receive(DEFAULT_PIPE_SIZE))
    except (anyio.EndOfStream, anyio.ClosedResourceError):
        pass


async def _feed(stream: FdSendStream, data: bytes) -> None:
    try:
        await stream.send(data)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass  # the child stopped reading: what it did not take is dropped, as in subprocess
    finally:
        stream.close()


async def communicate(
    target: _Stoppable,
    stdin: FdSendStream | None,
    stdout: FdReceiveStream | None,
    stderr: FdReceiveStream | None,
    input: bytes | None,
    timeout: float | None,
    drain_timeout: float,
) -> tuple[list[bytes], list[bytes], bool]:
    """Feed ``input``, collect both outputs and wait for ``target`` (a process or a pipeline).

    Writing and reading run concurrently, so no pipe size can deadlock them (PITFALLS.md 17).
    Waiting follows the exit; afterwards the outputs are drained for at most ``drain_timeout``
    seconds. On ``timeout`` the target is stopped. Any exception or cancellation stops it too,
    shielded, before propagating. Returns ``(stdout_chunks, stderr_chunks, timed_out)``.
    """
    out: list[bytes] = []
    err: list[bytes] = []
    timed_out = False
    try:
        async with anyio.create_task_group() as feeders:
            if input is not None and stdin is not None:
                feeders.start_soon(_feed, stdin, input)
            async with anyio.create_task_group() as readers:
                if stdout is not None:
                    readers.start_soon(_collect, stdout, out)
                if stderr is not None:
                    readers.start_soon(_collect, stderr, err)
                with anyio.move_on_after(timeout) as deadline:
                    await target.wait()
                if deadline.cancelled_caught:
                    timed_out = True
                    await target.stop()
                readers.cancel_scope.deadline = anyio.current_time() + drain_timeout
            feeders.cancel_scope.cancel()
        # A cancellation that struck while this task was between awaits reaches only the
        # reader tasks, which then stop short; a task group whose tasks are gone exits without
        # a cancellation check, so it would go unnoticed and the caller would get a truncated
        # result from a call it cancelled. Let it propagate here instead.
        await anyio.lowlevel.checkpoint_if_cancelled()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await target.stop()
        raise
    finally:
        target._close_streams()
    return out, err, timed_out


async def run(
    argv: Sequence[StrOrBytesPath],
    *,
    input: bytes | None = None,
    stdin: StdioSpec = None,
    stdout: StdioSpec = PIPE,
    stderr: StdioSpec = PIPE,
    check: bool = True,
    timeout: float | None = None,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    **kwargs: Any,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` to completion and return a ``subprocess.CompletedProcess``.

    Mirrors ``anyio.run_process``: ``input`` is written to the child's stdin (EPIPE is
    ignored), ``stdout``/``stderr`` are captured by default, and with ``check=True`` a non-zero
    exit raises ``subprocess.CalledProcessError`` carrying both. Keyword arguments of
    :func:`spawn` (cwd, env, start_new_session, stop_timeout, ...) are passed on.

    ``timeout`` stops the child (its group when it leads one) as :meth:`Process.stop` does and
    raises :class:`aproc.ProcessTimeoutError`, a TimeoutError carrying the output so far.
    Cancellation stops the child too. After the child exits, its pipes are read to EOF for at
    most ``drain_timeout`` seconds (default 1 s), so a grandchild that inherited stdout cannot
    hang the call forever (PITFALLS.md 15); output already in the pipes is never lost to it.
    """
    if input is not None:
        if stdin is not None:
            raise ValueError("pass either input or stdin, not both")
        stdin = PIPE
    proc = await spawn(argv, stdin=stdin, stdout=stdout, stderr=stderr, **kwargs)
    out, err, timed_out = await communicate(
        proc, proc.stdin, proc.stdout, proc.stderr, input, timeout, drain_timeout
    )
    stdout_bytes = b"".join(out) if proc.stdout is not None else None
    stderr_bytes = b"".join(err) if proc.stderr is not None else None
    if timed_out:
        assert timeout is not None
        raise ProcessTimeoutError(list(argv), timeout, stdout_bytes, stderr_bytes)
    returncode = proc.returncode
    assert returncode is not None
    if check and returncode != 0:
        raise subprocess.CalledProcessError(returncode, list(argv), stdout_bytes, stderr_bytes)
    return subprocess.CompletedProcess(list(argv), returncode, stdout_bytes, stderr_bytes)
