"""Many live children (``sleep 3600``): threads, RSS, time to spawn all, time to kill + reap all.

Each contender runs in a fresh interpreter (``python -m benchmarks.many``) so thread counts and
RSS are comparable. A child gets one waiter task as soon as it is spawned (the way an
application watches its children); after a short settle the thread count
(``/proc/self/task``) and the RSS growth (``VmRSS``) are read, then every child is killed and
the time until the last waiter returns is taken.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import sniffio
import trio

import aproc

from .common import (
    Config,
    Metric,
    Row,
    Section,
    aproc_key,
    fd_count,
    log,
    median,
    rss_kib,
    run_on,
    run_worker,
    setup_logging,
    thread_count,
    which,
    write_result,
)

SETTLE = 0.5


def _probe(stats: dict[str, Any], n: int) -> None:
    stats["threads"] = thread_count()
    stats["rss_kib"] = rss_kib()
    stats["fds"] = fd_count()
    stats["n"] = n


@contextlib.asynccontextmanager
async def native_group() -> AsyncIterator[Callable[[Callable[[], Awaitable[Any]]], None]]:
    """The running loop's own task group (asyncio.TaskGroup or a trio nursery), so aproc's
    rows carry the same per-task cost as the asyncio and trio rows."""
    if sniffio.current_async_library() == "trio":
        async with trio.open_nursery() as nursery:
            yield nursery.start_soon
    else:
        async with asyncio.TaskGroup() as tg:
            yield lambda fn: tg.create_task(fn())  # type: ignore[arg-type]


async def live_aproc(argv: list[str], n: int, stats: dict[str, Any]) -> None:
    procs: list[aproc.Process] = []
    try:
        async with native_group() as start_soon:
            t0 = time.perf_counter()
            for _ in range(n):
                proc = await aproc.spawn(argv)
                procs.append(proc)
                start_soon(proc.wait)
            stats["spawn_s"] = time.perf_counter() - t0
            await anyio.sleep(SETTLE)
            _probe(stats, n)
            t0 = time.perf_counter()
            for proc in procs:
                proc.kill()
        stats["reap_s"] = time.perf_counter() - t0
    finally:
        for proc in procs:
            proc.kill()  # a no-op for the reaped ones


async def live_asyncio(argv: list[str], n: int, stats: dict[str, Any]) -> None:
    procs: list[asyncio.subprocess.Process] = []
    try:
        async with asyncio.TaskGroup() as tg:
            t0 = time.perf_counter()
            for _ in range(n):
                proc = await asyncio.create_subprocess_exec(*argv)
                procs.append(proc)
                tg.create_task(proc.wait())
            stats["spawn_s"] = time.perf_counter() - t0
            await asyncio.sleep(SETTLE)
            _probe(stats, n)
            t0 = time.perf_counter()
            for proc in procs:
                proc.kill()
        stats["reap_s"] = time.perf_counter() - t0
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def live_anyio(argv: list[str], n: int, stats: dict[str, Any]) -> None:
    procs: list[anyio.abc.Process] = []
    try:
        async with anyio.create_task_group() as tg:
            t0 = time.perf_counter()
            for _ in range(n):
                proc = await anyio.open_process(argv, stdin=None, stdout=None, stderr=None)
                procs.append(proc)
                tg.start_soon(proc.wait)
            stats["spawn_s"] = time.perf_counter() - t0
            await anyio.sleep(SETTLE)
            _probe(stats, n)
            t0 = time.perf_counter()
            for proc in procs:
                proc.kill()
        stats["reap_s"] = time.perf_counter() - t0
    finally:
        with anyio.CancelScope(shield=True):
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()


async def live_trio(argv: list[str], n: int, stats: dict[str, Any]) -> None:
    procs: list[trio.Process] = []
    try:
        async with trio.open_nursery() as nursery:
            t0 = time.perf_counter()
            for _ in range(n):
                proc = await trio.lowlevel.open_process(argv)
                procs.append(proc)
                nursery.start_soon(proc.wait)
            stats["spawn_s"] = time.perf_counter() - t0
            await trio.sleep(SETTLE)
            _probe(stats, n)
            t0 = time.perf_counter()
            for proc in procs:
                proc.kill()
        stats["reap_s"] = time.perf_counter() - t0
    finally:
        with trio.CancelScope(shield=True):
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()


LiveFn = Callable[[list[str], int, dict[str, Any]], Awaitable[None]]
WORKER_IMPLS: dict[str, tuple[str, LiveFn]] = {
    "aproc-asyncio": ("asyncio", live_aproc),
    "aproc-uvloop": ("uvloop", live_aproc),
    "aproc-trio": ("trio", live_aproc),
    "asyncio": ("asyncio", live_asyncio),
    "uvloop": ("uvloop", live_asyncio),
    "anyio-asyncio": ("asyncio", live_anyio),
    "anyio-trio": ("trio", live_anyio),
    "trio": ("trio", live_trio),
}

CONTENDERS = [
    ("aproc-asyncio", "aproc", "asyncio", True, None),
    ("aproc-uvloop", "aproc", "uvloop", True, None),
    ("aproc-trio", "aproc", "trio", True, None),
    ("asyncio", "asyncio.create_subprocess_exec", "asyncio", False, aproc_key("asyncio")),
    ("uvloop", "asyncio.create_subprocess_exec", "uvloop", False, aproc_key("uvloop")),
    ("anyio-asyncio", "anyio.open_process", "asyncio", False, aproc_key("asyncio")),
    ("anyio-trio", "anyio.open_process", "trio", False, aproc_key("trio")),
    ("trio", "trio.lowlevel.open_process", "trio", False, aproc_key("trio")),
]


def _worker(args: argparse.Namespace) -> dict[str, Any]:
    setup_logging()
    loop, live = WORKER_IMPLS[args.impl]
    argv = [which("sleep"), "3600"]
    stats: dict[str, Any] = {}

    async def main() -> None:
        # Baseline inside the running loop, after every import: only the children's cost is
        # left in the difference.
        stats["threads_before"] = thread_count()
        stats["rss_kib_before"] = rss_kib()
        stats["fds_before"] = fd_count()
        await live(argv, args.n, stats)

    run_on(loop, main)
    return stats


METRICS = [
    Metric("threads", "threads", "", False, "{:,.0f}"),
    Metric("rss_mib", "RSS growth", "MiB", False, "{:,.1f}"),
    Metric("spawn_s", "spawn all", "s", False, "{:.3f}"),
    Metric("reap_s", "kill+reap all", "s", False, "{:.3f}"),
    Metric("fds", "fds held", "", False, "{:,.0f}"),
]


def run(cfg: Config) -> list[Section]:
    n = cfg.pick(50, 1000)
    repeats = cfg.pick(1, 3)
    section = Section(
        "many",
        f"{n} live children (sleep 3600): threads, RSS, spawn all, kill + reap all",
        METRICS,
        "rss_mib",
    )
    t0 = time.monotonic()
    log(f"many: {len(CONTENDERS)} contenders x {repeats} fresh workers, {n} children each")
    results: dict[str, list[dict[str, Any]]] = {c[0]: [] for c in CONTENDERS}
    for round_no in range(repeats):
        order = CONTENDERS if round_no % 2 == 0 else CONTENDERS[::-1]
        for worker_impl, *_ in order:
            results[worker_impl].append(
                run_worker("many", ["--impl", worker_impl, "--n", str(n)], timeout=240)
            )
        log(f"  many: round {round_no + 1}/{repeats} done")
    for worker_impl, name, loop, is_aproc, ref in CONTENDERS:
        row = Row(name, loop, is_aproc, ref)
        runs = results[worker_impl]
        errors = [r["error"] for r in runs if "error" in r]
        if errors:
            row.note = errors[0]
            row.values = {m.key: None for m in METRICS}
        else:
            row.values = {
                "threads": median([r["threads"] for r in runs]),
                "rss_mib": median([(r["rss_kib"] - r["rss_kib_before"]) / 1024 for r in runs]),
                "spawn_s": median([r["spawn_s"] for r in runs]),
                "reap_s": median([r["reap_s"] for r in runs]),
                "fds": median([r["fds"] - r["fds_before"] for r in runs]),
            }
            row.samples = {
                "threads_before": [r["threads_before"] for r in runs],
                "rss_mib_before": [r["rss_kib_before"] / 1024 for r in runs],
            }
        section.rows.append(row)
    section.notes.append(
        f"each contender in {repeats} fresh interpreter(s) (median); threads = whole process "
        "while the children live; RSS growth = VmRSS with the children live minus before the "
        "first spawn; fds held = open fds while live minus before; each child has one waiter task "
        "(aproc, asyncio and trio rows: the loop's native task group; anyio rows: anyio's)"
    )
    section.seconds = time.monotonic() - t0
    return [section]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.many")
    parser.add_argument("--impl", choices=sorted(WORKER_IMPLS), required=True)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    # A runaway benchmark must not outlive its budget with 1000 children attached.
    signal.alarm(200)
    write_result(args.out, _worker(args))


if __name__ == "__main__":
    main()
