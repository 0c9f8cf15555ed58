"""kill -> wait() latency.

Each trial spawns ``sleep 60``, starts one task waiting for it and lets it park (2 ms), then
takes the time from ``proc.kill()`` to the moment the waiting task resumes with the exit
status. That is the reaper's whole wake-up path: pidfd readiness or SIGCHLD for aproc, the
child-watcher thread plus ``call_soon_threadsafe`` for asyncio, libuv's SIGCHLD handling for
uvloop, trio's pidfd wait. The floor is a blocking ``os.kill`` + ``os.waitpid`` in plain code.
Trials run in rounds, interleaving the contenders; p50 and p99 are over all trials.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import trio

import aproc

from .common import (
    Config,
    Impl,
    Metric,
    Section,
    aproc_key,
    interleave,
    log,
    percentile,
    row_for,
    which,
)

PARK = 0.002


async def _trials(spawn: Callable[[list[str]], Awaitable[Any]], n: int, warm: int) -> list[float]:
    """Shared harness: anyio task groups work on every loop, and nothing of the harness runs
    between the kill and the waiter's timestamp."""
    argv = [which("sleep"), "60"]
    out: list[float] = []
    for i in range(warm + n):
        proc = await spawn(argv)
        done_at = 0.0

        async def waiter(proc: Any = proc) -> None:
            nonlocal done_at
            await proc.wait()
            done_at = time.perf_counter()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await anyio.sleep(PARK)
                t0 = time.perf_counter()
                proc.kill()
        finally:
            if proc.returncode is None:
                proc.kill()
                with anyio.CancelScope(shield=True):
                    await proc.wait()
        if i >= warm:
            out.append(done_at - t0)
    return out


async def aproc_trials(n: int, warm: int) -> list[float]:
    return await _trials(aproc.spawn, n, warm)


async def asyncio_trials(n: int, warm: int) -> list[float]:
    return await _trials(lambda argv: asyncio.create_subprocess_exec(*argv), n, warm)


async def trio_trials(n: int, warm: int) -> list[float]:
    return await _trials(trio.lowlevel.open_process, n, warm)


def floor_trials(n: int, warm: int) -> list[float]:
    argv = [which("sleep"), "60"]
    out = []
    for i in range(warm + n):
        pid = os.posix_spawn(argv[0], argv, os.environ)
        time.sleep(PARK)
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        elapsed = time.perf_counter() - t0
        if i >= warm:
            out.append(elapsed)
    return out


def impls() -> list[Impl]:
    a_asyncio, a_uvloop, a_trio = aproc_key("asyncio"), aproc_key("uvloop"), aproc_key("trio")
    return [
        Impl("aproc", "asyncio", aproc_trials, is_aproc=True),
        Impl("aproc", "asyncio", aproc_trials, is_aproc=True, reaper="sigchld"),
        Impl("aproc", "uvloop", aproc_trials, is_aproc=True),
        Impl("aproc", "trio", aproc_trials, is_aproc=True),
        Impl("aproc", "trio", aproc_trials, is_aproc=True, reaper="sigchld"),
        Impl("asyncio.create_subprocess_exec", "asyncio", asyncio_trials, ref=a_asyncio),
        Impl("asyncio.create_subprocess_exec", "uvloop", asyncio_trials, ref=a_uvloop),
        Impl("trio.lowlevel.open_process", "trio", trio_trials, ref=a_trio),
        Impl("blocking os.kill + os.waitpid (floor)", "sync", floor_trials, ref=a_asyncio),
    ]


METRICS = [
    Metric("p50_us", "p50", "us", False, "{:,.0f}"),
    Metric("p99_us", "p99", "us", False, "{:,.0f}"),
]


def run(cfg: Config) -> list[Section]:
    total = cfg.pick(20, 300)
    rounds = cfg.pick(2, 6)
    per_round = total // rounds
    warm = 3
    keyed = impls()
    t0 = time.monotonic()
    log(f"latency: {rounds} rounds x {per_round} trials per contender")
    errors: dict[str, str] = {}
    samples = interleave(keyed, rounds, lambda impl: impl.run(per_round, warm), "latency", errors)
    section = Section(
        "latency", "kill -> wait() returns (sleep 60, waiter parked)", METRICS, "p50_us"
    )
    for impl in keyed:
        values = [v for chunk in samples[impl.key] for v in chunk]
        row = row_for(
            impl,
            p50_us=percentile(values, 50) * 1e6 if values else None,
            p99_us=percentile(values, 99) * 1e6 if values else None,
        )
        row.note = errors.get(impl.key, "")
        row.samples["us"] = [v * 1e6 for v in values]
        section.rows.append(row)
    section.notes.append(
        f"{rounds * per_round} trials per contender in {rounds} interleaved rounds "
        f"({warm} warm-up trials per round); aproc rows without a reaper named use the default "
        "(pidfd on this kernel); the sigchld reaper is not available on uvloop (libuv owns SIGCHLD)"
    )
    section.seconds = time.monotonic() - t0
    return [section]
