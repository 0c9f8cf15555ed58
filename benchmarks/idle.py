"""A supervisor at rest: 200 idle children, nothing happening.

Each contender runs in a fresh interpreter (``python -m benchmarks.idle``): it starts the
children, lets everything settle, then measures over a window (10 s; 2 s in quick mode) the
process CPU time (``getrusage``) and the voluntary context switches of all its threads
(``/proc/self/task/*/status``; each is one time a thread went to sleep and needed a wake-up).
A loop that only sleeps through the window shows 1: the wake-up at its end. The contenders
run in parallel (they are idle; every counter is per process).

``aproc.Supervisor`` is measured when it exists (``hasattr(aproc, "Supervisor")``); the
comparison is a plain loop of ``aproc.spawn``'ed sleeping children with one waiter task each.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

import aproc

from .common import (
    Config,
    Metric,
    Row,
    Section,
    log,
    run_on,
    setup_logging,
    start_worker,
    thread_count,
    voluntary_switches_all_threads,
    which,
    write_result,
)

SETTLE = 1.0
READY_TIMEOUT = 60.0


class Window:
    """Counters read right before and right after the idle window."""

    def __init__(self) -> None:
        self.start: dict[str, float] = {}
        self.result: dict[str, Any] = {}

    @staticmethod
    def _read() -> dict[str, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "cpu": time.process_time(),
            "nvcsw_rusage": usage.ru_nvcsw,
            "nivcsw": usage.ru_nivcsw,
            "nvcsw": voluntary_switches_all_threads(),
            "wall": time.perf_counter(),
        }

    def begin(self) -> None:
        self.start = self._read()

    def end(self) -> None:
        end = self._read()
        d = {k: end[k] - self.start[k] for k in end}
        self.result = {
            "seconds": d["wall"],
            "cpu_ms": d["cpu"] * 1e3,
            "wakeups": int(d["nvcsw"]),
            "wakeups_rusage": int(d["nvcsw_rusage"]),
            "involuntary": int(d["nivcsw"]),
            "threads": thread_count(),
        }


async def idle_control(n: int, seconds: float, window: Window) -> None:
    del n
    await anyio.sleep(SETTLE)
    window.begin()
    await anyio.sleep(seconds)
    window.end()


async def idle_aproc(n: int, seconds: float, window: Window) -> None:
    argv = [which("sleep"), "3600"]
    procs: list[aproc.Process] = []
    try:
        async with anyio.create_task_group() as tg:
            for _ in range(n):
                proc = await aproc.spawn(argv)
                procs.append(proc)
                tg.start_soon(proc.wait)
            await anyio.sleep(SETTLE)
            window.begin()
            await anyio.sleep(seconds)
            window.end()
            window.result["running"] = sum(1 for p in procs if p.returncode is None)
            for proc in procs:
                proc.kill()
    finally:
        for proc in procs:
            proc.kill()


async def idle_supervisor(n: int, seconds: float, window: Window) -> None:
    supervisor_cls = getattr(aproc, "Supervisor", None)
    spec_cls = getattr(aproc, "ChildSpec", None)
    if supervisor_cls is None or spec_cls is None:
        raise NotImplementedError("aproc.Supervisor is not available yet")
    argv = [which("sleep"), "3600"]
    specs = [spec_cls(f"idle{i}", argv) for i in range(n)]
    sup = supervisor_cls(specs)
    async with sup:
        # Wait (outside the window) until every child reports running, if status() exists.
        status = getattr(sup, "status", None)
        if status is not None:
            with anyio.move_on_after(READY_TIMEOUT):
                while not all(getattr(s, "state", "running") == "running" for s in status()):
                    await anyio.sleep(0.05)
        await anyio.sleep(SETTLE)
        running = None
        if status is not None:
            running = sum(1 for s in status() if getattr(s, "state", None) == "running")
        window.begin()
        await anyio.sleep(seconds)
        window.end()
        window.result["running"] = running


WORKER_IMPLS = {
    "control": idle_control,
    "aproc": idle_aproc,
    "supervisor": idle_supervisor,
}

CONTENDERS = [
    # (worker impl, loop, display name, is_aproc)
    ("control", "asyncio", "empty event loop (control)", False),
    ("control", "trio", "empty event loop (control)", False),
    ("aproc", "asyncio", "aproc.spawn x N + one waiter task each", True),
    ("aproc", "trio", "aproc.spawn x N + one waiter task each", True),
    ("supervisor", "asyncio", "aproc.Supervisor", True),
    ("supervisor", "trio", "aproc.Supervisor", True),
]

METRICS = [
    Metric("wakeups", "wake-ups in window", "", False, "{:,.0f}"),
    Metric("wakeups_per_s", "wake-ups", "/s", False, "{:.2f}"),
    Metric("cpu_ms", "CPU in window", "ms", False, "{:.1f}"),
    Metric("threads", "threads", "", False, "{:,.0f}"),
]


def _worker(args: argparse.Namespace) -> dict[str, Any]:
    setup_logging()
    window = Window()
    run_on(args.loop, WORKER_IMPLS[args.impl], args.n, args.seconds, window)
    return window.result


def run(cfg: Config) -> list[Section]:
    n = cfg.pick(200, 200)
    seconds = cfg.pick(2.0, 10.0)
    available = hasattr(aproc, "Supervisor") and hasattr(aproc, "ChildSpec")
    section = Section(
        "supervisor",
        f"at rest with {n} idle children: wake-ups and CPU over {seconds:g} s",
        METRICS,
        None,
    )
    t0 = time.monotonic()
    log(f"supervisor: {len(CONTENDERS)} idle workers in parallel, {seconds:g} s window")
    results: dict[tuple[str, str], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="aproc-bench-idle-") as tmp:
        running = []
        for impl, loop, _name, _is_aproc in CONTENDERS:
            if impl == "supervisor" and not available:
                results[(impl, loop)] = {"error": "not available yet"}
                continue
            out = Path(tmp) / f"{impl}-{loop}.json"
            err = Path(tmp) / f"{impl}-{loop}.err"
            args = ["--impl", impl, "--loop", loop, "--n", str(n), "--seconds", str(seconds)]
            running.append((impl, loop, out, err, start_worker("idle", args, out, err)))
        for impl, loop, out, err, proc in running:
            try:
                rc = proc.wait(timeout=seconds + 120)
            except Exception:
                proc.kill()
                rc = proc.wait()
            if rc == 0 and out.exists():
                results[(impl, loop)] = json.loads(out.read_text())
            else:
                tail = err.read_text(errors="replace").strip().splitlines()[-2:]
                results[(impl, loop)] = {"error": f"worker exit {rc}: " + " | ".join(tail)}
    for impl, loop, name, is_aproc in CONTENDERS:
        result = results[(impl, loop)]
        row = Row(name, loop, is_aproc, None)
        if "error" in result:
            row.note = result["error"]
            row.values = {m.key: None for m in METRICS}
        else:
            row.values = {
                "wakeups": result["wakeups"],
                "wakeups_per_s": result["wakeups"] / result["seconds"],
                "cpu_ms": result["cpu_ms"],
                "threads": result["threads"],
            }
            row.samples = {"raw": [result["wakeups_rusage"], result["involuntary"]]}
            running = result.get("running")
            if running is not None and running != n:
                row.note = f"only {running} of {n} children running in the window"
        section.rows.append(row)
    section.notes.append(
        f"N = {n}; window {seconds:g} s after a {SETTLE:g} s settle; wake-ups = voluntary "
        "context switches summed over all threads (1 = only the wake-up ending the window); "
        "aproc.Supervisor rows run only when aproc.Supervisor exists"
    )
    section.seconds = time.monotonic() - t0
    return [section]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.idle")
    parser.add_argument("--impl", choices=sorted(WORKER_IMPLS), required=True)
    parser.add_argument("--loop", choices=["asyncio", "uvloop", "trio"], default="asyncio")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    write_result(args.out, _worker(args))


if __name__ == "__main__":
    main()
