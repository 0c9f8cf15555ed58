"""Spawn from a parent with a lot of resident memory versus a small parent.

fork() copies the parent's page tables, so its cost grows with the parent's resident memory;
posix_spawn (clone(CLONE_VM|CLONE_VFORK) in glibc) does not. Each measurement runs in a fresh
interpreter (``python -m benchmarks.bigparent``) that first allocates and touches the memory
(a bytearray with every 4096th byte written, so every page is resident), then times sequential
spawn + reap of /bin/true.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

import aproc

from .common import (
    Config,
    Metric,
    Row,
    Section,
    aproc_key,
    log,
    median,
    rss_kib,
    run_on,
    run_worker,
    setup_logging,
    write_result,
)

TRUE = "/bin/true"
ARGV = [TRUE]


async def aproc_one() -> None:
    proc = await aproc.spawn(ARGV)
    await proc.wait()


async def aproc_fork_one() -> None:
    # A umask is one of the things posix_spawn cannot do: aproc takes its fork/execve launcher.
    proc = await aproc.spawn(ARGV, umask=0o022)
    await proc.wait()


async def asyncio_one() -> None:
    proc = await asyncio.create_subprocess_exec(TRUE)
    await proc.wait()


async def trio_one() -> None:
    await trio.run_process(ARGV, stdin=None)


async def raw_one() -> None:  # blocking on purpose: the floor, no event loop involved
    os.waitpid(os.posix_spawn(TRUE, ARGV, os.environ), 0)  # noqa: ASYNC221, ASYNC222


WORKER_IMPLS: dict[str, tuple[str, Callable[[], Awaitable[None]]]] = {
    "aproc-asyncio": ("asyncio", aproc_one),
    "aproc-uvloop": ("uvloop", aproc_one),
    "aproc-trio": ("trio", aproc_one),
    "aproc-fork-asyncio": ("asyncio", aproc_fork_one),
    "asyncio": ("asyncio", asyncio_one),
    "uvloop": ("uvloop", asyncio_one),
    "trio": ("trio", trio_one),
    "raw": ("asyncio", raw_one),  # blocking calls; the loop is only there for symmetry
}

A_ASYNCIO = aproc_key("asyncio")
CONTENDERS = [
    # (worker impl id, display name, loop label, is_aproc, ref)
    ("aproc-asyncio", "aproc", "asyncio", True, None),
    ("aproc-uvloop", "aproc", "uvloop", True, None),
    ("aproc-trio", "aproc", "trio", True, None),
    ("aproc-fork-asyncio", "aproc, fork/exec launcher (umask=)", "asyncio", True, None),
    ("asyncio", "asyncio.create_subprocess_exec", "asyncio", False, A_ASYNCIO),
    ("uvloop", "asyncio.create_subprocess_exec", "uvloop", False, aproc_key("uvloop")),
    ("trio", "trio.run_process", "trio", False, aproc_key("trio")),
    ("raw", "os.posix_spawn + os.waitpid (raw)", "sync", False, A_ASYNCIO),
]


def _worker(args: argparse.Namespace) -> dict[str, Any]:
    setup_logging()
    rss_before = rss_kib()
    t0 = time.perf_counter()
    ballast = bytearray(args.mib << 20)
    if args.mib:
        pages = len(ballast) // 4096
        ballast[::4096] = b"\x01" * pages  # touch every page: all of it becomes resident
    alloc_s = time.perf_counter() - t0
    rss_after = rss_kib()
    loop, one = WORKER_IMPLS[args.impl]

    async def measure() -> list[float]:
        for _ in range(args.warm):
            await one()
        samples = []
        for _ in range(args.n):
            t = time.perf_counter()
            await one()
            samples.append((time.perf_counter() - t) * 1e3)
        return samples

    samples = run_on(loop, measure)
    del ballast
    return {
        "impl": args.impl,
        "mib": args.mib,
        "rss_mib_before": rss_before / 1024,
        "rss_mib": rss_after / 1024,
        "alloc_s": alloc_s,
        "ms_per_spawn": median(samples),
        "samples": samples,
    }


METRICS = [
    Metric("small_ms", "small parent", "ms/spawn", False, "{:.3f}"),
    Metric("big_ms", "big parent", "ms/spawn", False, "{:.3f}"),
    Metric("big_over_small", "big / small", "x", False, "{:.2f}"),
    Metric("big_rss", "big parent RSS", "MiB", False, "{:,.0f}"),
]


def run(cfg: Config) -> list[Section]:
    mib = cfg.pick(256, 2048)
    n = cfg.pick(10, 60)
    warm = 5
    section = Section(
        "bigparent",
        f"spawn + reap /bin/true from a parent with {mib} MiB touched vs a small parent",
        METRICS,
        "big_ms",
    )
    t0 = time.monotonic()
    log(f"bigparent: {len(CONTENDERS)} contenders x 2 fresh workers ({mib} MiB ballast)")
    results: dict[tuple[str, int], dict[str, Any]] = {}
    for worker_impl, *_ in CONTENDERS:
        for size in (0, mib):  # small and big back to back, so drift hits both alike
            args = ["--impl", worker_impl, "--mib", str(size), "--n", str(n), "--warm", str(warm)]
            results[(worker_impl, size)] = run_worker("bigparent", args, timeout=180)
        log(f"  bigparent: {worker_impl} done")
    for worker_impl, name, loop, is_aproc, ref in CONTENDERS:
        small, big = results[(worker_impl, 0)], results[(worker_impl, mib)]
        row = Row(name, loop, is_aproc, ref)
        errors = [r["error"] for r in (small, big) if "error" in r]
        if errors:
            row.note = "; ".join(errors)
            row.values = {m.key: None for m in METRICS}
        else:
            row.values = {
                "small_ms": small["ms_per_spawn"],
                "big_ms": big["ms_per_spawn"],
                "big_over_small": big["ms_per_spawn"] / small["ms_per_spawn"],
                "big_rss": big["rss_mib"],
            }
            row.samples = {"small_ms": small["samples"], "big_ms": big["samples"]}
        section.rows.append(row)
    section.notes.append(
        f"each cell: a fresh interpreter; {warm} warm-up spawns, then the median of {n} "
        f"individually timed sequential spawn+reap; big parent = bytearray({mib} MiB) with every "
        "page touched"
    )
    section.seconds = time.monotonic() - t0
    return [section]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bigparent")
    parser.add_argument("--impl", choices=sorted(WORKER_IMPLS), required=True)
    parser.add_argument("--mib", type=int, default=2048, help="touched ballast in MiB (0: none)")
    parser.add_argument("--n", type=int, default=60, help="timed spawns")
    parser.add_argument("--warm", type=int, default=5)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    write_result(args.out, _worker(args))


if __name__ == "__main__":
    main()
