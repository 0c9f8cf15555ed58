"""Stress: thousands of spawns with cancellations injected at random points.

Each backend (asyncio, uvloop, trio) under each reaper (pidfd, sigchld) runs a seeded random mix
of operations, several at a time, each cancelled at a random moment: before ``spawn()`` returns
(the fork/exec path included, where the cancellation can land after the fork), while reading
stdout, while waiting, while stopping, and inside ``run()``. Afterwards there must be no child
(live or zombie), no fd that was not there before, and a resident set that did not grow
between the first and the last quarter of the run (PITFALLS.md 19).
"""

from __future__ import annotations

import os
import random
import sys
from collections import Counter
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
import pytest

import aproc
from aproc.process import communicate

from .conftest import (
    MiB,
    Recorder,
    Scale,
    children_of,
    fd_count,
    mib,
    open_fds,
    quarters_flat,
    rss_bytes,
    timeout,
)

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.usefixtures("reaper_kind", "quiet_logs"),
    timeout(120, 1200),
]

SEED = 20_240_607
WORKERS = 4
RSS_TOLERANCE = 10 * MiB
LONG = ["sleep", "30"]


def _tiny(rng: random.Random, upper: float = 0.004) -> float:
    """A deadline: often zero (cancelled at the first checkpoint), else a few milliseconds."""
    return 0.0 if rng.random() < 0.2 else rng.uniform(0.0, upper)


class Run:
    """One stress run: a shared budget of spawns, figures, and RSS samples."""

    def __init__(self, rng: random.Random, spawns: int) -> None:
        self.rng = rng
        self.budget = spawns
        self.spawns = 0
        self.outcomes: Counter[str] = Counter()
        self.rss: list[int] = []
        self.fds: list[int] = []
        self.blocks: list[int] = []
        self.sample_every = max(1, spawns // 200)

    def take(self) -> bool:
        if self.spawns >= self.budget:
            return False
        self.spawns += 1
        if self.spawns % self.sample_every == 0:
            self.rss.append(rss_bytes())
            self.fds.append(fd_count())
            self.blocks.append(sys.getallocatedblocks())
        return True

    # Each operation makes exactly one spawn() call.

    async def spawn_cancelled(self) -> None:
        """Cancelled before spawn() returns, or just after; the fork path (umask) too."""
        rng = self.rng
        fork = rng.random() < 0.3
        kwargs = {
            "stdin": rng.choice([None, aproc.PIPE, aproc.DEVNULL]),
            "stdout": rng.choice([None, aproc.PIPE, aproc.DEVNULL]),
            "stderr": rng.choice([None, aproc.PIPE, aproc.STDOUT]),
        }
        if fork:
            kwargs["umask"] = 0o22
        proc = None
        with anyio.move_on_after(_tiny(rng, 0.012 if fork else 0.002)) as scope:
            proc = await aproc.spawn(rng.choice([["true"], LONG]), **kwargs)
        if proc is None:
            assert scope.cancelled_caught
            self.outcomes["cancelled_in_spawn_fork" if fork else "cancelled_in_spawn"] += 1
            return
        self.outcomes["spawn_returned"] += 1
        await proc.stop(timeout=0)
        await proc.aclose()

    async def read_cancelled(self) -> None:
        """Cancelled while reading stdout (lines() or receive()) inside ``async with``."""
        rng = self.rng
        argv = ["yes"] if rng.random() < 0.5 else ["seq", "1", str(rng.randint(1, 30_000))]
        done = False
        with anyio.move_on_after(_tiny(rng, 0.01)):
            async with await aproc.spawn(argv, stdout=aproc.PIPE) as proc:
                assert proc.stdout is not None
                if rng.random() < 0.5:
                    async for _ in proc.stdout.lines():
                        pass
                else:
                    try:
                        while True:
                            await proc.stdout.receive()
                    except anyio.EndOfStream:
                        pass
            done = True
        self.outcomes["read_completed" if done else "cancelled_in_read"] += 1

    async def wait_cancelled(self) -> None:
        """Cancelled while waiting: a waiter that gives up, or the whole ``async with``."""
        rng = self.rng
        argv = LONG if rng.random() < 0.7 else ["sleep", "0.002"]
        if rng.random() < 0.5:
            proc = await aproc.spawn(argv, start_new_session=rng.random() < 0.3)
            with anyio.move_on_after(_tiny(rng)) as scope:
                await proc.wait()
            self.outcomes["cancelled_in_wait" if scope.cancelled_caught else "wait_returned"] += 1
            await proc.stop(timeout=rng.choice([0, 0.5]))
            await proc.aclose()
        else:
            with anyio.move_on_after(_tiny(rng)) as scope:
                async with await aproc.spawn(argv) as proc:
                    await proc.wait()
            key = "cancelled_in_async_with_wait" if scope.cancelled_caught else "wait_returned"
            self.outcomes[key] += 1

    async def stop_cancelled(self) -> None:
        """Cancelled while stop() waits for the grace period or after SIGKILL."""
        rng = self.rng
        stubborn = rng.random() < 0.3  # ignores SIGTERM: stop() must escalate to SIGKILL
        argv = ["sh", "-c", "trap '' TERM; exec sleep 30"] if stubborn else LONG
        proc = await aproc.spawn(argv, start_new_session=rng.random() < 0.5)
        if stubborn:
            # Let the shell install its trap, or SIGTERM could still kill it.
            with anyio.fail_after(10):
                while not _ignores_sigterm(proc.pid) and proc.returncode is None:
                    await anyio.sleep(0.001)
        with anyio.move_on_after(_tiny(rng)) as scope:
            await proc.stop(timeout=rng.choice([0, 0.002, 0.05]))
        self.outcomes["cancelled_in_stop" if scope.cancelled_caught else "stop_returned"] += 1
        with anyio.fail_after(10):
            code = await proc.stop(timeout=0)
        assert code in (-15, -9), code
        await proc.aclose()

    async def run_cancelled(self) -> None:
        """Cancelled inside run(): feeding stdin, collecting output, or its own timeout."""
        rng = self.rng
        if rng.random() < 0.5:
            data = rng.randbytes(rng.choice([0, 100, 70_000, 300_000]))
            with anyio.move_on_after(_tiny(rng, 0.01)) as scope:
                result = await aproc.run(["cat"], input=data)
            if scope.cancelled_caught:
                self.outcomes["cancelled_in_run"] += 1
            else:
                assert result.stdout == data
                self.outcomes["run_completed"] += 1
        else:
            with pytest.raises(aproc.ProcessTimeoutError):
                await aproc.run(LONG, timeout=_tiny(rng, 0.01))
            self.outcomes["run_timed_out"] += 1


def _ignores_sigterm(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("SigIgn:"):
                    return bool(int(line.split()[1], 16) & (1 << 14))
    except OSError:
        pass
    return False


async def _worker(run: Run) -> None:
    ops: list[Callable[[], Awaitable[None]]] = [
        run.spawn_cancelled,
        run.read_cancelled,
        run.wait_cancelled,
        run.stop_cancelled,
        run.run_cancelled,
    ]
    while run.take():
        await run.rng.choice(ops)()


async def test_spawn_cancel_stress(
    scale: Scale, record: Recorder, anyio_backend: object, reaper_kind: str
) -> None:
    spawns = scale.pick(300, 20_000)
    # Warm up: the first spawn sets up what lives as long as the loop (the reaper, epoll).
    await aproc.run(["true"])
    fds_before = open_fds()
    rng = random.Random(SEED)
    run = Run(rng, spawns)
    async with anyio.create_task_group() as tg:
        for _ in range(WORKERS):
            tg.start_soon(_worker, run)

    kids = children_of(os.getpid())
    leaked = {fd: t for fd, t in open_fds().items() if fds_before.get(fd) != t}
    first, last = quarters_flat(run.rss, RSS_TOLERANCE)
    # Python objects too: a leak of a few objects per spawn shows here long before in RSS.
    blocks_first, blocks_last = quarters_flat(run.blocks, 20_000, "allocated blocks", unit=1)
    q = len(run.fds) // 4
    record(
        backend=str(anyio_backend),
        reaper=reaper_kind,
        spawns=run.spawns,
        seed=SEED,
        workers=WORKERS,
        outcomes=dict(sorted(run.outcomes.items())),
        rss_first_quarter_mib=mib(first),
        rss_last_quarter_mib=mib(last),
        py_blocks_first_quarter=int(blocks_first),
        py_blocks_last_quarter=int(blocks_last),
        fds_max_first_quarter=max(run.fds[:q]),
        fds_max_last_quarter=max(run.fds[-q:]),
        live_children=len(kids),
        zombies=sum(1 for s in kids.values() if s == "Z"),
        leaked_fds=len(leaked),
    )
    assert run.spawns == spawns
    assert kids == {}, f"children left behind: {kids}"
    assert leaked == {}, f"fds left open: {leaked}"
    # Every kind of cancellation point was actually hit.
    for key in ("cancelled_in_spawn", "cancelled_in_read", "cancelled_in_wait"):
        assert run.outcomes[key] > 0, run.outcomes
    assert run.outcomes["cancelled_in_stop"] + run.outcomes["cancelled_in_async_with_wait"] > 0


async def test_cancellation_between_awaits_is_not_lost_by_run() -> None:
    """Regression (found by the stress run: a cancelled ``run(["cat"], input=data)`` returned
    normally with an empty stdout). A cancellation that strikes while run()'s task is between
    awaits is delivered to its reader tasks only; they stop short, and the task groups, whose
    tasks are gone by then, exited without a cancellation check, so communicate() returned a
    truncated result from a cancelled call. Here the target's wait() cancels the caller's scope
    and yields (shielded) so that the readers finish first: the call must end cancelled, with
    the target stopped."""
    r, w = os.pipe()
    stdout = aproc.FdReceiveStream(r)
    stopped: list[bool] = []

    class Target:
        async def wait(self) -> int:
            outer.cancel()
            for _ in range(5):  # let the cancelled readers finish and be reaped by their group
                await anyio.lowlevel.cancel_shielded_checkpoint()
            return 0

        async def stop(self, timeout: float | None = None) -> int:
            stopped.append(True)
            return 0

        def _close_streams(self) -> None:
            stdout.close()

    try:
        with anyio.CancelScope() as outer:
            await communicate(Target(), None, stdout, None, None, None, 1.0)
            pytest.fail("communicate() returned normally from a cancelled call")
    finally:
        os.close(w)
    assert outer.cancelled_caught
    assert stopped == [True]
    assert stdout.fileno() == -1
