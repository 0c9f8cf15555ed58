"""The per-loop reapers (pidfd and SIGCHLD): exits before anyone listens, merged SIGCHLDs, the
SIGCHLD listener hand-over, choosing and refusing a reaper, SIGCHLD ignored, and loops outside
the main thread.

PITFALLS.md 9 (never waitpid(-1)), 10 (exit before registration, merged SIGCHLDs), 11 (SIGCHLD
ignored; loops outside the main thread), 12 (signals through the pidfd).

Tests that depend on the reaper but do not choose it run under both (``reaper_kind``); tests that
choose it themselves set APROC_REAPER or run their own event loop.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from conftest import BACKENDS, children_of, is_uvloop, read_all, reap

import aproc
import aproc.process as aproc_process
from aproc.reaper import current_reaper

both_reapers = pytest.mark.usefixtures("reaper_kind")


def no_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt to start a child fail the test."""

    def refuse(request: Any) -> Any:
        raise AssertionError("a child was started")

    monkeypatch.setattr(aproc_process, "posix_spawn", refuse)
    monkeypatch.setattr(aproc_process, "start_fork_exec", refuse)


# --------------------------------------------------------------------------------------------
# exits nobody was listening for (PITFALLS.md 10)


@pytest.mark.anyio
@both_reapers
async def test_exit_before_anyone_waits(reaper_kind: str) -> None:
    assert current_reaper().name == reaper_kind
    procs = [
        await aproc.spawn(["sh", "-c", f"exit {code}"], stdout=aproc.PIPE) for code in range(20)
    ]
    try:
        with anyio.fail_after(10):
            # EOF on stdout: each child has exited (its SIGCHLD, if any, went unheard) ...
            for p in procs:
                assert await read_all(p.stdout) == b""
            await anyio.lowlevel.checkpoint()
            # ... and its status is still there for wait().
            assert [await p.wait() for p in procs] == list(range(20))
    finally:
        for p in procs:
            await reap(p)


@pytest.mark.anyio
@both_reapers
async def test_merged_sigchlds_all_waits_complete() -> None:
    # 50 shells block reading one shared pipe; closing its write end ends them all at once, so
    # their SIGCHLDs arrive together and merge.
    r, w = os.pipe()
    procs: list[aproc.Process] = []
    try:
        for code in range(50):
            procs.append(await aproc.spawn(["sh", "-c", f"read x; exit {code}"], stdin=r))
        os.close(r)
        r = -1
        results: dict[int, int] = {}

        async def waiter(i: int, p: aproc.Process) -> None:
            results[i] = await p.wait()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for i, p in enumerate(procs):
                    tg.start_soon(waiter, i, p)
                await anyio.wait_all_tasks_blocked()
                assert results == {}
                os.close(w)
                w = -1
        assert results == {i: i for i in range(50)}
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)
        for p in procs:
            await reap(p)


@pytest.mark.anyio
@both_reapers
async def test_many_kills_at_once_repeatedly() -> None:
    # The SIGCHLD listener role changes hands while children keep exiting: every round must
    # complete (a waiter handed the role whose own child had meanwhile exited used to drop it,
    # leaving the rest waiting forever).
    for _ in range(10):
        procs = [await aproc.spawn(["sleep", "60"]) for _ in range(20)]
        try:
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    for p in procs:
                        tg.start_soon(p.wait)
                    await anyio.wait_all_tasks_blocked()
                    for p in procs:
                        p.kill()
            assert [p.returncode for p in procs] == [-signal.SIGKILL] * 20
        finally:
            for p in procs:
                await reap(p)


@pytest.mark.anyio
@both_reapers
@pytest.mark.parametrize("cancelled", ["first", "second"])
async def test_listener_role_is_handed_over(cancelled: str) -> None:
    # Two waiters on two children; the first to wait listens for SIGCHLD. Cancel one of them:
    # the other's child still gets noticed when it exits, and the cancelled one's child later.
    first = await aproc.spawn(["sh", "-c", "read x; exit 1"], stdin=aproc.PIPE)
    second = await aproc.spawn(["sh", "-c", "read x; exit 2"], stdin=aproc.PIPE)
    procs = {"first": first, "second": second}
    survivor = "second" if cancelled == "first" else "first"
    scopes = {"first": anyio.CancelScope(), "second": anyio.CancelScope()}
    done = {"first": anyio.Event(), "second": anyio.Event()}
    results: dict[str, int] = {}

    async def waiter(name: str) -> None:
        with scopes[name]:
            results[name] = await procs[name].wait()
        done[name].set()

    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter, "first")
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(waiter, "second")
                await anyio.wait_all_tasks_blocked()
                scopes[cancelled].cancel()
                await done[cancelled].wait()
                assert scopes[cancelled].cancelled_caught
                assert results == {}
                stdin = procs[survivor].stdin
                assert stdin is not None
                stdin.close()
                await done[survivor].wait()
            assert results == {survivor: 1 if survivor == "first" else 2}
            assert procs[cancelled].returncode is None
            stdin = procs[cancelled].stdin
            assert stdin is not None
            stdin.close()
            assert await procs[cancelled].wait() == (1 if cancelled == "first" else 2)
    finally:
        await reap(first)
        await reap(second)


@pytest.mark.anyio
@both_reapers
async def test_listener_cancelled_while_many_wait() -> None:
    r, w = os.pipe()
    procs: list[aproc.Process] = []
    try:
        procs = [await aproc.spawn(["sh", "-c", "read x"], stdin=r) for _ in range(10)]
        os.close(r)
        r = -1
        scope = anyio.CancelScope()
        results: list[int] = []

        async def cancelled_waiter() -> None:
            with scope:
                await procs[0].wait()

        async def waiter(p: aproc.Process) -> None:
            results.append(await p.wait())

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(cancelled_waiter)  # first: the listener
                await anyio.wait_all_tasks_blocked()
                for p in procs[1:]:
                    tg.start_soon(waiter, p)
                await anyio.wait_all_tasks_blocked()
                scope.cancel()
                await anyio.wait_all_tasks_blocked()
                os.close(w)
                w = -1
            assert sorted(results) == [1] * 9  # `read` at EOF fails: exit status 1
            assert await procs[0].wait() == 1
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)
        for p in procs:
            await reap(p)


# --------------------------------------------------------------------------------------------
# waiting per pid, signalling per pidfd (PITFALLS.md 9, 12)


@pytest.mark.anyio
@both_reapers
async def test_never_waits_for_any_child(monkeypatch: pytest.MonkeyPatch) -> None:
    waited: list[int] = []
    real_waitpid = os.waitpid

    def waitpid(pid: int, options: int) -> tuple[int, int]:
        waited.append(pid)
        return real_waitpid(pid, options)

    monkeypatch.setattr(os, "waitpid", waitpid)
    procs = [await aproc.spawn(["sh", "-c", f"exit {i}"]) for i in range(5)]
    try:
        with anyio.fail_after(10):
            assert [await p.wait() for p in procs] == list(range(5))
        with pytest.raises(FileNotFoundError):
            await aproc.spawn(["/nonexistent-aproc-dir/x"], umask=0o022)  # reaped by pid too
    finally:
        for p in procs:
            await reap(p)
    assert waited
    assert all(pid > 0 for pid in waited), waited
    assert {p.pid for p in procs} <= set(waited)


@pytest.mark.anyio
async def test_pidfd_reaper_signals_through_the_pidfd(
    monkeypatch: pytest.MonkeyPatch, anyio_backend: Any
) -> None:
    monkeypatch.setenv("APROC_REAPER", "pidfd")
    kills: list[tuple[int, int]] = []
    real_kill = os.kill

    def kill(pid: int, sig: int) -> None:
        kills.append((pid, sig))
        real_kill(pid, sig)

    monkeypatch.setattr(os, "kill", kill)
    proc = await aproc.spawn(["sleep", "60"])
    try:
        assert current_reaper().name == "pidfd"
        proc.terminate()
        with anyio.fail_after(10):
            assert await proc.wait() == -signal.SIGTERM
        assert kills == []
    finally:
        await reap(proc)


@pytest.mark.anyio
async def test_default_reaper_is_pidfd(monkeypatch: pytest.MonkeyPatch, anyio_backend: Any) -> None:
    from aproc.primitives import have_pidfd

    monkeypatch.delenv("APROC_REAPER", raising=False)
    assert current_reaper().name == ("pidfd" if have_pidfd() else "sigchld")
    monkeypatch.setenv("APROC_REAPER", "auto")
    proc = await aproc.spawn(["sh", "-c", "exit 3"])
    try:
        with anyio.fail_after(10):
            assert await proc.wait() == 3
    finally:
        await reap(proc)


# --------------------------------------------------------------------------------------------
# refusing before a child exists (PITFALLS.md 11)


@pytest.mark.anyio
async def test_bogus_reaper_is_refused_at_spawn(
    monkeypatch: pytest.MonkeyPatch, anyio_backend: Any
) -> None:
    monkeypatch.setenv("APROC_REAPER", "bogus")
    no_launcher(monkeypatch)
    kids_before = children_of(os.getpid())
    with pytest.raises(aproc.ReaperUnavailableError, match="bogus"):
        await aproc.spawn(["sleep", "60"], stdout=aproc.PIPE)
    assert children_of(os.getpid()) == kids_before


@pytest.mark.anyio
async def test_sigchld_reaper_is_refused_on_uvloop(
    monkeypatch: pytest.MonkeyPatch, anyio_backend: Any
) -> None:
    if not is_uvloop(anyio_backend):
        pytest.skip("uvloop only")
    monkeypatch.setenv("APROC_REAPER", "sigchld")
    no_launcher(monkeypatch)
    with pytest.raises(aproc.ReaperUnavailableError, match="pidfd"):
        await aproc.spawn(["sleep", "60"], stdout=aproc.PIPE)


@pytest.mark.anyio
@both_reapers
async def test_sigchld_ignored_is_refused_before_any_child(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert threading.current_thread() is threading.main_thread()
    no_launcher(monkeypatch)
    kids_before = children_of(os.getpid())
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        with pytest.raises(aproc.ReaperUnavailableError, match="SIGCHLD"):
            await aproc.spawn(["sleep", "60"], stdin=aproc.PIPE, stdout=aproc.PIPE)
    finally:
        signal.signal(signal.SIGCHLD, previous)
    assert children_of(os.getpid()) == kids_before


@pytest.mark.anyio
async def test_sigchld_ignored_after_spawn_raises_instead_of_hanging(
    monkeypatch: pytest.MonkeyPatch, anyio_backend: Any
) -> None:
    # With the pidfd reaper the exit is still noticed; the kernel discarded the status, which
    # must surface as an error, not a wait forever.
    monkeypatch.setenv("APROC_REAPER", "pidfd")
    kids_before = children_of(os.getpid())
    proc = await aproc.spawn(["sh", "-c", "read x; exit 3"], stdin=aproc.PIPE)
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        assert proc.stdin is not None
        proc.stdin.close()
        with anyio.fail_after(10), pytest.raises(aproc.ReaperUnavailableError, match="SIGCHLD"):
            await proc.wait()
    finally:
        signal.signal(signal.SIGCHLD, previous)
    assert children_of(os.getpid()) == kids_before  # the kernel reaped it
    # (no_leaks checks that the pidfd was released although the wait failed)


# --------------------------------------------------------------------------------------------
# loops outside the main thread (PITFALLS.md 11)


def run_in_thread(backend: Any, func: Any) -> Any:
    """Run ``func`` in a fresh event loop in a new thread; return its result or raise."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = anyio.run(func, backend=backend[0], backend_options=backend[1])
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "the loop in the thread hung"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_pidfd_reaper_in_a_non_main_thread(backend: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APROC_REAPER", "pidfd")

    async def main() -> tuple[str, list[int], bytes]:
        procs = [await aproc.spawn(["sh", "-c", f"exit {i}"]) for i in range(5)]
        echo = await aproc.spawn(["echo", "from a thread"], stdout=aproc.PIPE)
        try:
            with anyio.fail_after(10):
                codes = [await p.wait() for p in procs]
                out = await read_all(echo.stdout)
                await echo.wait()
            return current_reaper().name, codes, out
        finally:
            for p in [*procs, echo]:
                await reap(p)

    assert run_in_thread(backend, main) == ("pidfd", [0, 1, 2, 3, 4], b"from a thread\n")


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigchld_reaper_in_a_non_main_thread_is_refused(
    backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APROC_REAPER", "sigchld")
    no_launcher(monkeypatch)
    kids_before = children_of(os.getpid())

    async def main() -> None:
        with anyio.fail_after(10):
            await aproc.spawn(["sleep", "60"], stdout=aproc.PIPE)

    with pytest.raises(aproc.ReaperUnavailableError, match="pidfd"):
        run_in_thread(backend, main)
    assert children_of(os.getpid()) == kids_before
