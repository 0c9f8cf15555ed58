"""The Process handle's lifecycle: wait(), signals, stop(), ``async with``, aclose(),
cancellation at any await (mid-spawn included) and the lifecycle log events.

PITFALLS.md 12 (no signal after reap), 15 (wait follows exit, not EOF), 18 (closing while the
child is blocked on a full pipe), 19 (cancellation leaves nothing; many waiters share one exit),
21 (stop takes the whole group). The autouse ``no_leaks`` fixture checks children and fds.
"""

from __future__ import annotations

import fcntl
import os
import signal
import termios
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import pytest
import structlog
from conftest import children_of, read_all, reap, sig_ignored

import aproc
import aproc.process as aproc_process

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("reaper_kind")]

# posix_spawn for a plain request; umask= forces the fork/execve launcher.
LAUNCHERS = [
    pytest.param({}, id="posix_spawn"),
    pytest.param({"umask": 0o022}, id="fork"),
]


# --------------------------------------------------------------------------------------------
# helpers


async def readline(stream: Any) -> bytes:
    """One line without its newline, read a byte at a time so nothing past it is consumed."""
    line = bytearray()
    while True:
        byte = await stream.receive(1)
        if byte == b"\n":
            return bytes(line)
        line += byte


def proc_state(pid: int) -> str | None:
    """The state letter of ``pid`` from /proc, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return data[data.rindex(b")") + 2 :].split()[0].decode()


async def until(condition: Callable[[], bool], what: str, limit: float = 5.0) -> None:
    """Bounded wait for a condition only /proc can tell us about (no event to wait on)."""
    try:
        with anyio.fail_after(limit):
            while not condition():
                await anyio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out after {limit} s waiting for: {what}") from None


# --------------------------------------------------------------------------------------------
# wait()


async def test_many_waiters_all_get_the_exit() -> None:
    proc = await aproc.spawn(["sh", "-c", "read x; exit 5"], stdin=aproc.PIPE)
    results: list[int] = []

    async def waiter() -> None:
        results.append(await proc.wait())

    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(10):
                    tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                assert results == []
                assert proc.returncode is None
                assert proc.stdin is not None
                proc.stdin.close()
        assert results == [5] * 10
        assert proc.returncode == 5
        with anyio.fail_after(10):
            assert await proc.wait() == 5  # and once more, after the fact
    finally:
        await reap(proc)


@pytest.mark.parametrize("other_waiter", ["concurrent", "afterwards"])
async def test_cancelled_waiter_does_not_consume_the_exit(other_waiter: str) -> None:
    proc = await aproc.spawn(["sh", "-c", "read x; exit 4"], stdin=aproc.PIPE)
    assert proc.stdin is not None
    got: list[int] = []
    cancelled_scope = anyio.CancelScope()
    cancelled_done = anyio.Event()

    async def cancelled_waiter() -> None:
        with cancelled_scope:
            await proc.wait()
            got.append(-1000)  # must not be reached
        cancelled_done.set()

    async def other() -> None:
        got.append(await proc.wait())

    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(cancelled_waiter)
                await anyio.wait_all_tasks_blocked()
                if other_waiter == "concurrent":
                    tg.start_soon(other)
                    await anyio.wait_all_tasks_blocked()
                cancelled_scope.cancel()
                await cancelled_done.wait()
                assert cancelled_scope.cancelled_caught
                assert proc.returncode is None  # the child was left running
                proc.stdin.close()
                if other_waiter == "afterwards":
                    tg.start_soon(other)
        assert got == [4]
    finally:
        await reap(proc)


async def test_waiter_cancelled_after_exit_does_not_consume_it() -> None:
    proc = await aproc.spawn(["sh", "-c", "exit 6"], stdout=aproc.PIPE)
    try:
        with anyio.fail_after(10):
            assert await read_all(proc.stdout) == b""  # EOF: the child is exiting or gone
            with anyio.CancelScope() as scope:
                scope.cancel()
                await proc.wait()  # may raise the cancellation, or return the status
            assert await proc.wait() == 6
            assert proc.returncode == 6
    finally:
        await reap(proc)


async def test_wait_follows_exit_not_eof() -> None:
    # The shell exits at once; the backgrounded sleep keeps a copy of stdout open for 60 s.
    proc = await aproc.spawn(
        ["sh", "-c", "sleep 60 & echo $!"], stdout=aproc.PIPE, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        with anyio.fail_after(10):
            grandchild = int(await readline(proc.stdout))
            assert await proc.wait() == 0
        # The grandchild is still there holding stdout: no EOF, just nothing to read.
        os.kill(grandchild, 0)
        with pytest.raises(BlockingIOError):
            os.read(proc.stdout.fileno(), 1)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the group lives on in the grandchild
        except ProcessLookupError:
            pass
        await reap(proc)


async def test_output_buffered_at_exit_stays_readable() -> None:
    proc = await aproc.spawn(
        ["sh", "-c", "echo one; echo err >&2; echo two; head -c 60000 /dev/zero"],
        stdout=aproc.PIPE,
        stderr=aproc.PIPE,
    )
    try:
        with anyio.fail_after(10):
            assert await proc.wait() == 0
            assert await read_all(proc.stdout) == b"one\ntwo\n" + bytes(60000)
            assert await read_all(proc.stderr) == b"err\n"
    finally:
        await reap(proc)


async def test_poll() -> None:
    proc = await aproc.spawn(["sleep", "60"])
    try:
        assert proc.poll() is None
        proc.kill()
        with anyio.fail_after(10):
            assert await proc.wait() == -signal.SIGKILL
        assert proc.poll() == -signal.SIGKILL
    finally:
        await reap(proc)


# --------------------------------------------------------------------------------------------
# signals (PITFALLS.md 12)


@pytest.mark.parametrize(
    ("method", "expected"),
    [("terminate", -signal.SIGTERM), ("kill", -signal.SIGKILL)],
)
async def test_terminate_and_kill(method: str, expected: int) -> None:
    proc = await aproc.spawn(["sleep", "60"])
    try:
        getattr(proc, method)()
        with anyio.fail_after(10):
            assert await proc.wait() == expected
    finally:
        await reap(proc)


async def test_signals_after_reap_are_noops(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, tuple[Any, ...]]] = []

    def recording(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any) -> Any:
            calls.append((name, args))
            return real(*args)

        return wrapper

    monkeypatch.setattr(os, "kill", recording("kill", os.kill))
    monkeypatch.setattr(os, "killpg", recording("killpg", os.killpg))
    monkeypatch.setattr(
        signal, "pidfd_send_signal", recording("pidfd_send_signal", signal.pidfd_send_signal)
    )
    proc = await aproc.spawn(["sleep", "60"])
    try:
        # The recorders sit where aproc really signals: a live child's signal is seen.
        proc.terminate()
        assert len(calls) == 1
        assert calls[0][0] in ("kill", "pidfd_send_signal")
        with anyio.fail_after(10):
            assert await proc.wait() == -signal.SIGTERM
        calls.clear()
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGKILL)
        proc.terminate()
        proc.kill()
        with anyio.fail_after(10):
            assert await proc.stop() == -signal.SIGTERM
            assert await proc.stop(timeout=0) == -signal.SIGTERM
        assert calls == []
        assert proc.returncode == -signal.SIGTERM
    finally:
        await reap(proc)


async def test_signal_to_exited_unreaped_child_is_harmless() -> None:
    proc = await aproc.spawn(["sh", "-c", "exit 2"], stdout=aproc.PIPE)
    try:
        with anyio.fail_after(10):
            assert await read_all(proc.stdout) == b""
            proc.terminate()  # exited (or about to), not reaped: no exception
            proc.kill()
            assert await proc.wait() == 2
    finally:
        await reap(proc)


# --------------------------------------------------------------------------------------------
# stop()


async def test_stop_kills_a_child_that_ignores_term() -> None:
    proc = await aproc.spawn(
        ["sh", "-c", 'trap "" TERM; echo ready; while :; do sleep 0.05; done'],
        stdout=aproc.PIPE,
    )
    try:
        with anyio.fail_after(10):
            assert await readline(proc.stdout) == b"ready"
            assert sig_ignored(proc.pid, signal.SIGTERM)
            assert await proc.stop(timeout=0.2) == -signal.SIGKILL
        assert proc.returncode == -signal.SIGKILL
    finally:
        await reap(proc)


async def test_stop_returns_minus_15_when_term_is_enough() -> None:
    proc = await aproc.spawn(["sleep", "60"])
    try:
        with anyio.fail_after(10):  # well inside the 30 s grace: TERM did it
            assert await proc.stop(timeout=30) == -signal.SIGTERM
    finally:
        await reap(proc)


async def test_stop_signal_and_timeout_zero() -> None:
    proc = await aproc.spawn(["sleep", "60"], stop_signal=signal.SIGINT)
    try:
        with anyio.fail_after(10):
            assert await proc.stop(timeout=30) == -signal.SIGINT
    finally:
        await reap(proc)
    proc = await aproc.spawn(["sleep", "60"])
    try:
        with anyio.fail_after(10):
            assert await proc.stop(timeout=30, signal=signal.SIGHUP) == -signal.SIGHUP
    finally:
        await reap(proc)
    proc = await aproc.spawn(["sleep", "60"])
    try:
        with anyio.fail_after(10):
            assert await proc.stop(timeout=0) == -signal.SIGKILL
    finally:
        await reap(proc)


async def test_stop_group_leader_takes_the_grandchild() -> None:
    # The grandchild ignores TERM and announces itself only after its trap is in place.
    script = "sh -c 'trap \"\" TERM; echo ready; exec sleep 60' & echo $!; wait"
    proc = await aproc.spawn(["sh", "-c", script], stdout=aproc.PIPE, start_new_session=True)
    grandchild = -1
    try:
        with anyio.fail_after(10):
            lines = {await readline(proc.stdout), await readline(proc.stdout)}
            assert b"ready" in lines
            (pid_line,) = lines - {b"ready"}
            grandchild = int(pid_line)
            assert os.getpgid(grandchild) == proc.pid
            assert sig_ignored(grandchild, signal.SIGTERM)
            assert await proc.stop(timeout=5) == -signal.SIGTERM
        # Orphaned, the grandchild was reparented to init (or a subreaper): gone, or at most
        # a zombie its new parent has yet to reap.
        await until(lambda: proc_state(grandchild) in (None, "Z"), "grandchild killed")
    finally:
        if grandchild > 0 and proc_state(grandchild) not in (None, "Z"):
            os.kill(grandchild, signal.SIGKILL)
        await reap(proc)


async def test_stop_group_leader_ignoring_term_kills_the_group() -> None:
    proc = await aproc.spawn(
        ["sh", "-c", 'trap "" TERM; sleep 60 & echo $!; echo ready; wait'],
        stdout=aproc.PIPE,
        start_new_session=True,
    )
    grandchild = -1
    try:
        with anyio.fail_after(10):
            grandchild = int(await readline(proc.stdout))
            assert await readline(proc.stdout) == b"ready"
            assert await proc.stop(timeout=0.2) == -signal.SIGKILL
        await until(lambda: proc_state(grandchild) in (None, "Z"), "grandchild killed")
    finally:
        if grandchild > 0 and proc_state(grandchild) not in (None, "Z"):
            os.kill(grandchild, signal.SIGKILL)
        await reap(proc)


async def test_stop_of_a_stopped_child_sends_sigcont() -> None:
    # The TERM handler can only run once the shell is continued: without SIGCONT, stop() would
    # wait out the whole grace period and end with SIGKILL (-9) instead of exit 7.
    proc = await aproc.spawn(
        ["sh", "-c", 'trap "exit 7" TERM; echo ready; while :; do sleep 0.05; done'],
        stdout=aproc.PIPE,
    )
    try:
        with anyio.fail_after(10):
            assert await readline(proc.stdout) == b"ready"
        proc.send_signal(signal.SIGSTOP)
        await until(lambda: proc_state(proc.pid) == "T", "child stopped")
        with anyio.fail_after(10):
            assert await proc.stop(timeout=8) == 7
    finally:
        await reap(proc)


async def test_stop_of_a_stopped_plain_child() -> None:
    proc = await aproc.spawn(["sleep", "60"], start_new_session=True)
    try:
        proc.send_signal(signal.SIGSTOP)
        await until(lambda: proc_state(proc.pid) == "T", "child stopped")
        with anyio.fail_after(10):
            assert await proc.stop(timeout=8) == -signal.SIGTERM
    finally:
        await reap(proc)


# --------------------------------------------------------------------------------------------
# async with


async def test_async_with_normal_exit_closes_stdin_and_waits() -> None:
    proc = await aproc.spawn(["cat"], stdin=aproc.PIPE, stdout=aproc.PIPE)
    try:
        assert proc.stdin is not None
        assert proc.stdout is not None
        with anyio.fail_after(10):
            async with proc:
                await proc.stdin.send(b"hello\n")
        # cat exits 0 only on EOF: stdin was closed, and the block waited for the exit.
        assert proc.returncode == 0
        assert proc.stdin.fileno() == -1
        assert proc.stdout.fileno() == -1
    finally:
        await reap(proc)


async def test_async_with_exception_stops_the_child_and_reraises() -> None:
    proc = await aproc.spawn(["sleep", "60"], stdout=aproc.PIPE)
    try:
        with anyio.fail_after(10), pytest.raises(RuntimeError, match="boom"):
            async with proc:
                raise RuntimeError("boom")
        assert proc.returncode == -signal.SIGTERM
        assert proc.stdout is not None
        assert proc.stdout.fileno() == -1
    finally:
        await reap(proc)


async def test_async_with_exception_uses_spawn_stop_timeout() -> None:
    proc = await aproc.spawn(
        ["sh", "-c", 'trap "" TERM; echo ready; while :; do sleep 0.05; done'],
        stdout=aproc.PIPE,
        stop_timeout=0.2,
    )
    try:
        assert proc.stdout is not None
        with anyio.fail_after(10):
            assert await readline(proc.stdout) == b"ready"
            with pytest.raises(KeyError):
                async with proc:
                    raise KeyError("x")
        assert proc.returncode == -signal.SIGKILL
    finally:
        await reap(proc)


async def test_cancellation_inside_async_with_stops_the_child() -> None:
    proc = await aproc.spawn(["sleep", "60"])
    try:
        with anyio.fail_after(10):
            with anyio.CancelScope() as scope:
                async with proc:
                    scope.cancel()
                    await proc.wait()
                    pytest.fail("wait() returned in a cancelled scope")
            assert scope.cancelled_caught
        assert proc.returncode == -signal.SIGTERM
    finally:
        await reap(proc)


async def test_cancellation_from_outside_stops_the_child() -> None:
    proc = await aproc.spawn(["sleep", "60"])
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:

                async def body(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                    async with proc:
                        task_status.started()
                        await anyio.sleep_forever()

                await tg.start(body)
                assert proc.returncode is None
                tg.cancel_scope.cancel()
        assert proc.returncode == -signal.SIGTERM
    finally:
        await reap(proc)


async def test_cancellation_while_async_with_waits_for_exit_stops_the_child() -> None:
    proc = await aproc.spawn(["sleep", "60"])
    scope = anyio.CancelScope()
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:

                async def body() -> None:
                    with scope:
                        async with proc:
                            pass  # leaving normally: __aexit__ waits for the child

                tg.start_soon(body)
                await anyio.wait_all_tasks_blocked()
                assert proc.returncode is None
                scope.cancel()
        assert scope.cancelled_caught
        assert proc.returncode == -signal.SIGTERM
    finally:
        await reap(proc)


# --------------------------------------------------------------------------------------------
# cancellation mid-spawn (PITFALLS.md 19)


@pytest.mark.parametrize("launcher", LAUNCHERS)
async def test_cancelled_before_spawn_starts_nothing(launcher: dict[str, Any]) -> None:
    kids_before = children_of(os.getpid())
    with anyio.CancelScope() as scope:
        scope.cancel()
        proc = await aproc.spawn(["sleep", "60"], stdout=aproc.PIPE, **launcher)
        await reap(proc)
        pytest.fail("spawn() returned in a cancelled scope")
    assert scope.cancelled_caught
    assert children_of(os.getpid()) == kids_before


async def test_cancelled_while_the_fork_exec_report_is_awaited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scope = anyio.CancelScope()
    pending: list[Any] = []
    real = aproc_process.start_fork_exec

    def start_fork_exec(request: Any) -> Any:
        p = real(request)
        pending.append(p)
        scope.cancel()  # lands on the await of the error pipe
        return p

    monkeypatch.setattr(aproc_process, "start_fork_exec", start_fork_exec)
    with scope:
        proc = await aproc.spawn(["sleep", "60"], stdin=aproc.PIPE, stdout=aproc.PIPE, umask=0o022)
        await reap(proc)
        pytest.fail("spawn() returned in a cancelled scope")
    assert scope.cancelled_caught
    (p,) = pending
    # The forked child was killed and reaped by spawn() itself.
    with pytest.raises(ChildProcessError):
        os.waitpid(p.pid, os.WNOHANG)  # noqa: ASYNC222 - WNOHANG: never blocks
    assert proc_state(p.pid) is None


async def test_cancelled_right_after_posix_spawn(monkeypatch: pytest.MonkeyPatch) -> None:
    # posix_spawn has no await after it: spawn() returns the child and the cancellation lands
    # on the next await, where ``async with`` stops the child.
    scope = anyio.CancelScope()
    real = aproc_process.posix_spawn

    def posix_spawn(request: Any) -> int:
        pid: int = real(request)
        scope.cancel()
        return pid

    monkeypatch.setattr(aproc_process, "posix_spawn", posix_spawn)
    proc = None
    with anyio.fail_after(10), scope:
        proc = await aproc.spawn(["sleep", "60"], stdout=aproc.PIPE)
        async with proc:
            await proc.wait()
    assert scope.cancelled_caught
    assert proc is not None
    assert proc.returncode == -signal.SIGTERM


@pytest.mark.parametrize("launcher", LAUNCHERS)
async def test_move_on_after_zero_around_many_spawns(launcher: dict[str, Any]) -> None:
    kids_before = children_of(os.getpid())
    for _ in range(100):
        with anyio.move_on_after(0) as scope:
            proc = await aproc.spawn(["sleep", "60"], stdout=aproc.PIPE, **launcher)
            await reap(proc)
            pytest.fail("spawn() returned after its deadline")
        assert scope.cancelled_caught
    assert children_of(os.getpid()) == kids_before


@pytest.mark.parametrize("launcher", LAUNCHERS)
async def test_cancellation_at_assorted_moments(launcher: dict[str, Any]) -> None:
    # Deadlines from 0 to ~3 ms land before, during and after the spawn; the last, generous
    # one makes sure at least one spawn completes even on a loaded machine.
    kids_before = children_of(os.getpid())
    started = 0
    for deadline in [i * 3e-5 for i in range(100)] + [0.5]:
        proc = None
        with anyio.move_on_after(deadline) as scope:
            proc = await aproc.spawn(
                ["sleep", "60"], stdin=aproc.PIPE, stdout=aproc.PIPE, **launcher
            )
            async with proc:
                await proc.wait()
        assert scope.cancelled_caught
        if proc is not None:
            started += 1
            assert proc.returncode == -signal.SIGTERM
        assert children_of(os.getpid()) == kids_before
    assert started > 0


# --------------------------------------------------------------------------------------------
# aclose() (PITFALLS.md 18)


@pytest.mark.parametrize("launcher", LAUNCHERS)
async def test_aclose_of_child_blocked_on_full_pipe(launcher: dict[str, Any]) -> None:
    proc = await aproc.spawn(["yes"], stdout=aproc.PIPE, **launcher)
    try:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        capacity = fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)

        def pipe_full() -> bool:
            buf = bytearray(4)
            fcntl.ioctl(fd, termios.FIONREAD, buf)
            return int.from_bytes(buf, "little") >= capacity - 4096

        await until(pipe_full, "yes filled the pipe", limit=10)
        with anyio.fail_after(10):
            await proc.aclose()
        # Python ignores SIGPIPE; the child got it back at its default, so EPIPE killed it.
        assert proc.returncode == -signal.SIGPIPE
    finally:
        await reap(proc)


async def test_aclose_cancelled_stops_the_child() -> None:
    proc = await aproc.spawn(["sleep", "60"], stdout=aproc.PIPE)
    try:
        with anyio.fail_after(10):
            with anyio.CancelScope() as scope:
                scope.cancel()
                await proc.aclose()
            assert scope.cancelled_caught
        assert proc.returncode == -signal.SIGTERM
    finally:
        await reap(proc)


# --------------------------------------------------------------------------------------------
# log events (the names are a public contract)


async def test_spawned_and_exited_events() -> None:
    with structlog.testing.capture_logs() as logs:
        proc = await aproc.spawn(["sh", "-c", "exit 3"])
        try:
            with anyio.fail_after(10):
                assert await proc.wait() == 3
                assert await proc.wait() == 3
        finally:
            await reap(proc)
    mine = [e for e in logs if e.get("pid") == proc.pid]
    assert [e["event"] for e in mine] == ["process.spawned", "process.exited"]
    spawned, exited = mine
    assert spawned["argv"] == ["sh", "-c", "exit 3"]
    assert exited["returncode"] == 3
    assert exited["signal"] is None
    assert isinstance(exited["runtime"], float)
    assert exited["runtime"] >= 0


async def test_exited_event_names_the_signal() -> None:
    with structlog.testing.capture_logs() as logs:
        proc = await aproc.spawn(["sleep", "60"])
        try:
            proc.kill()
            with anyio.fail_after(10):
                assert await proc.wait() == -signal.SIGKILL
        finally:
            await reap(proc)
    exited = [e for e in logs if e["event"] == "process.exited" and e.get("pid") == proc.pid]
    assert len(exited) == 1
    assert exited[0]["returncode"] == -signal.SIGKILL
    assert exited[0]["signal"] == "SIGKILL"
    assert isinstance(exited[0]["runtime"], float)
    assert [e["argv"] for e in logs if e["event"] == "process.spawned"] == [["sleep", "60"]]
