"""Spawn + reap of /bin/true: one at a time, and 50 at a time.

Every contender starts the child with stdin/stdout/stderr inherited (no pipes), waits for its
exit and reaps it. Each sample runs in a fresh event loop: a few warm-up spawns, then a timed
series; the samples of all contenders are interleaved and the median is reported.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable

import anyio
import trio

import aproc

from .common import (
    Config,
    Impl,
    Metric,
    Section,
    aproc_key,
    gather,
    interleave,
    log,
    median,
    row_for,
    spread,
)

TRUE = "/bin/true"
ARGV = [TRUE]
WIDTH = 50


async def aproc_one() -> None:
    proc = await aproc.spawn(ARGV)
    await proc.wait()


async def asyncio_one() -> None:
    proc = await asyncio.create_subprocess_exec(TRUE)
    await proc.wait()


async def anyio_one() -> None:
    await anyio.run_process(ARGV, stdout=None, stderr=None)


async def trio_one() -> None:
    await trio.run_process(ARGV, stdin=None)


def raw_seq(n: int, warm: int) -> list[float]:
    env = os.environ
    for _ in range(warm):
        os.waitpid(os.posix_spawn(TRUE, ARGV, env), 0)
    rates = []
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        os.waitpid(os.posix_spawn(TRUE, ARGV, env), 0)
        rates.append(1.0 / (clock() - t0))
    return rates


def raw_batched(n: int, warm: int) -> list[float]:
    env = os.environ

    def batch() -> None:
        pids = [os.posix_spawn(TRUE, ARGV, env) for _ in range(WIDTH)]
        for pid in pids:
            os.waitpid(pid, 0)

    for _ in range(max(1, warm // WIDTH)):
        batch()
    rates = []
    for _ in range(max(1, n // WIDTH)):
        t0 = time.perf_counter()
        batch()
        rates.append(WIDTH / (time.perf_counter() - t0))
    return rates


OneFn = Callable[[], Awaitable[None]]


def seq(one: OneFn) -> Callable[[int, int], Awaitable[list[float]]]:
    """n sequential spawn+reap, each timed on its own: returns one rate (1/time) per spawn."""

    async def run(n: int, warm: int) -> list[float]:
        for _ in range(warm):
            await one()
        rates = []
        clock = time.perf_counter
        for _ in range(n):
            t0 = clock()
            await one()
            rates.append(1.0 / (clock() - t0))
        return rates

    return run


def batched(one: OneFn) -> Callable[[int, int], Awaitable[list[float]]]:
    """Batches of WIDTH concurrent spawn+reap, each batch timed: one rate per batch."""

    async def run(n: int, warm: int) -> list[float]:
        fns = [one] * WIDTH
        for _ in range(max(1, warm // WIDTH)):
            await gather(fns)
        rates = []
        for _ in range(max(1, n // WIDTH)):
            t0 = time.perf_counter()
            await gather(fns)
            rates.append(WIDTH / (time.perf_counter() - t0))
        return rates

    return run


def impls(
    wrap: Callable[[OneFn], Callable[..., Awaitable[list[float]]]],
    raw: Callable[..., list[float]],
) -> list[Impl]:
    a_asyncio, a_uvloop, a_trio = aproc_key("asyncio"), aproc_key("uvloop"), aproc_key("trio")
    return [
        Impl("aproc", "asyncio", wrap(aproc_one), is_aproc=True),
        Impl("aproc", "asyncio", wrap(aproc_one), is_aproc=True, reaper="sigchld"),
        Impl("aproc", "uvloop", wrap(aproc_one), is_aproc=True),
        Impl("aproc", "trio", wrap(aproc_one), is_aproc=True),
        Impl("aproc", "trio", wrap(aproc_one), is_aproc=True, reaper="sigchld"),
        Impl("asyncio.create_subprocess_exec", "asyncio", wrap(asyncio_one), ref=a_asyncio),
        Impl("asyncio.create_subprocess_exec", "uvloop", wrap(asyncio_one), ref=a_uvloop),
        Impl("anyio.run_process", "asyncio", wrap(anyio_one), ref=a_asyncio),
        Impl("anyio.run_process", "trio", wrap(anyio_one), ref=a_trio),
        Impl("trio.run_process", "trio", wrap(trio_one), ref=a_trio),
        Impl("os.posix_spawn + os.waitpid (raw)", "sync", raw, ref=a_asyncio),
    ]


METRICS = [Metric("rate", "spawn+reap", "/s", True, "{:,.0f}")]


def run(cfg: Config) -> list[Section]:
    sections = []
    repeats = cfg.pick(2, 10)
    for name, title, wrap, raw, n, warm in (
        (
            "spawn_seq",
            "spawn + reap /bin/true, one at a time",
            seq,
            raw_seq,
            cfg.pick(20, 150),
            cfg.pick(3, 10),
        ),
        (
            "spawn_50",
            f"spawn + reap /bin/true, {WIDTH} at a time",
            batched,
            raw_batched,
            cfg.pick(WIDTH * 2, WIDTH * 8),
            WIDTH,
        ),
    ):
        log(f"{name}: {n} spawns per sample, {repeats} samples per contender")
        contenders = impls(wrap, raw)
        t0 = time.monotonic()
        errors: dict[str, str] = {}
        samples = interleave(
            contenders, repeats, lambda impl, n=n, warm=warm: impl.run(n, warm), name, errors
        )
        section = Section(name, title, METRICS, "rate")
        for impl in contenders:
            rounds = samples[impl.key]
            pooled = [rate for chunk in rounds for rate in chunk]
            row = row_for(impl, rate=median(pooled) if pooled else None)
            round_medians = [median(chunk) for chunk in rounds if chunk]
            row.samples["rate_per_round"] = round_medians
            row.values["spread"] = spread(round_medians)
            row.values["mean_rate"] = len(pooled) / sum(1 / r for r in pooled) if pooled else None
            row.note = errors.get(impl.key, "")
            section.rows.append(row)
        unit = "spawn" if name == "spawn_seq" else f"batch of {WIDTH}"
        section.notes.append(
            f"{repeats} interleaved rounds of {n} spawns per contender (fresh event loop per "
            f"round, {warm} warm-up spawns); every {unit} is timed on its own and the rate shown "
            f"comes from the median time per {unit} over all rounds (robust to bursts of load "
            "from other processes); spread = (max - min) / median of the per-round medians; "
            "children inherit stdio (no pipes)"
        )
        if name == "spawn_50":
            section.notes.append(
                "async contenders: 50 concurrent tasks each spawning and waiting (asyncio.gather "
                "/ trio nursery); raw: 50 posix_spawn then 50 waitpid"
            )
        section.seconds = time.monotonic() - t0
        sections.append(section)
    return sections
