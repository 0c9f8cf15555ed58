"""The benchmark runner: ``.venv/bin/python -m benchmarks [--quick] [--only NAME] [--json PATH]``.

Runs aproc and its peers side by side, prints one table per benchmark (absolute numbers, and
how the same-loop aproc row compares with every peer) and DESIGN.md's targets with met or
missed. Never asserts a speed: the exit status is non-zero only when a benchmark failed to run
or left a child process behind.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from . import bigparent, idle, latency, many, spawn, throughput
from .common import (
    Config,
    Section,
    SignalRaceCounter,
    become_subreaper,
    collect_leftovers,
    fd_count,
    load_average,
    log,
    machine_info,
    prime_loops,
    setup_logging,
)
from .report import render_markdown, render_text, targets, to_json

BENCHMARKS: dict[str, tuple[Callable[[Config], list[Section]], str]] = {
    "spawn": (spawn.run, "spawn + reap /bin/true, one at a time and 50 at a time"),
    "latency": (latency.run, "kill -> wait() latency, p50 / p99"),
    "bytes": (throughput.run_bytes, "stdout throughput, 1 MiB chunks of head -c 1G /dev/zero"),
    "lines": (throughput.run_lines, "stdout throughput, 41-byte lines"),
    "bigparent": (bigparent.run, "spawn from a 2 GiB parent vs a small one (fresh workers)"),
    "many": (many.run, "1000 live children: threads, RSS, spawn all, kill+reap all"),
    "supervisor": (idle.run, "200 idle children: wake-ups and CPU while nothing happens"),
}
ALIASES = {"throughput": ["bytes", "lines"], "idle": ["supervisor"], "spawn_seq": ["spawn"]}


def parse_only(values: list[str]) -> list[str]:
    chosen: list[str] = []
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if not name:
                continue
            names = ALIASES.get(name, [name])
            for n in names:
                if n not in BENCHMARKS:
                    raise SystemExit(
                        f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}"
                    )
                if n not in chosen:
                    chosen.append(n)
    return [n for n in BENCHMARKS if n in chosen]


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark aproc against asyncio, uvloop, anyio, trio and raw syscalls.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke mode for CI: tiny counts, < 60 s"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="run only this benchmark (repeatable, or comma-separated): " + ", ".join(BENCHMARKS),
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--markdown", metavar="PATH", help="also write the tables as Markdown")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args()

    if args.list:
        for name, (_fn, doc) in BENCHMARKS.items():
            print(f"{name:12} {doc}")
        return 0
    names = parse_only(args.only) if args.only else list(BENCHMARKS)

    setup_logging()
    # The aproc rows without a named reaper use aproc's default; a stray APROC_REAPER in the
    # caller's environment must not silently change what they measure.
    stray = os.environ.pop("APROC_REAPER", None)
    if stray is not None:
        log(f"ignoring APROC_REAPER={stray!r} from the environment (rows name their reaper)")
    if not become_subreaper():
        log("could not become a child subreaper: leaks below worker processes go unseen")
    races = SignalRaceCounter()
    races.install()
    cfg = Config(quick=args.quick)
    info = machine_info(args.quick)
    log(f"{info['mode']} run of: {', '.join(names)}")
    for line in (
        f"{info['nproc']} CPUs, Linux {info['kernel']}, {info['python']}",
        ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
    ):
        log(line)

    prime_loops()
    started = time.monotonic()
    sections: list[Section] = []
    failures: list[str] = []
    early = collect_leftovers()
    if early:
        log(f"children present before the run (reaped): {early}")
    for name in names:
        fn, _doc = BENCHMARKS[name]
        fds_before = fd_count()
        load_before = load_average()
        t0 = time.monotonic()
        try:
            produced = fn(cfg)
        except Exception as exc:
            traceback.print_exc()
            failures.append(f"{name}: {exc!r}")
            produced = [Section(name, f"{name}: FAILED ({exc!r})", [], None)]
        leftovers = collect_leftovers()
        fds_after = fd_count()
        if fds_after > fds_before:
            leftovers.append(f"{fds_after - fds_before} more open fds in the runner than before")
        if leftovers:
            failures.append(f"{name}: left behind {leftovers}")
            produced[-1].leftovers.extend(leftovers)
        for section in produced:
            section.notes.append(
                f"1-minute load average of the machine: {load_before:.2f} before, "
                f"{load_average():.2f} after (2 CPUs; other processes add noise)"
            )
        lost = races.take()
        if lost:
            produced[-1].notes.append(
                f"{lost} SIGCHLD deliveries reached CPython while their Python handler was being "
                'swapped ("Signal 17 ignored due to race condition"): the sigchld reaper '
                "installs and removes its handler on every listener hand-off"
            )
        failed = [r.key for s in produced for r in s.rows if r.note.startswith("FAILED")]
        if failed:
            failures.append(f"{name}: {', '.join(failed)} failed")
        log(f"{name} finished in {time.monotonic() - t0:.1f} s" + (" (LEAKS)" if leftovers else ""))
        sections.extend(produced)

    by_name = {s.name: s for s in sections}
    tgts = targets(by_name)
    total = time.monotonic() - started
    print(render_text(info, sections, tgts))
    print(f"\ntotal: {total:.0f} s" + (f"; PROBLEMS: {failures}" if failures else "; clean-up: OK"))
    if args.json:
        data = to_json(info, sections, tgts)
        data["total_seconds"] = total
        data["problems"] = failures
        Path(args.json).write_text(json.dumps(data, indent=1))
        log(f"wrote {args.json}")
    if args.markdown:
        Path(args.markdown).write_text(render_markdown(info, sections, tgts))
        log(f"wrote {args.markdown}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
