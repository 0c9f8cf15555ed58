"""Shared machinery: logging setup, event loops, statistics, /proc probes, worker processes,
child clean-up checks and the result model every benchmark fills in."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import logging
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPS = ("asyncio", "uvloop", "trio")


def setup_logging() -> None:
    """aproc logs ``process.spawned``/``process.exited`` at debug level on every spawn; make
    those calls as cheap as a configured application would (a filtering logger at WARNING),
    so the benchmarks do not time structlog's default console renderer."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        cache_logger_on_first_use=True,
    )


def which(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name!r} is not on PATH; the benchmarks need coreutils")
    return path


# --------------------------------------------------------------------------------------------
# Event loops


MEASUREMENT_TIMEOUT = 120.0


class Hung(Exception):
    """A measurement did not finish within MEASUREMENT_TIMEOUT (and was cancelled)."""


async def _guarded(fn: Callable[..., Awaitable[Any]], timeout: float, *args: Any) -> Any:
    import anyio

    try:
        with anyio.fail_after(timeout):
            return await fn(*args)
    except TimeoutError as exc:
        raise Hung(f"no result after {timeout:.0f} s (cancelled)") from exc


def run_on(
    loop: str,
    fn: Callable[..., Awaitable[Any]],
    *args: Any,
    timeout: float | None = MEASUREMENT_TIMEOUT,
) -> Any:
    """Run ``fn(*args)`` in a fresh event loop of the given kind and return its result.

    With a timeout, a measurement that hangs is cancelled and raises :class:`Hung`, so one
    stuck contender cannot stall the whole run."""
    import anyio

    if timeout is not None:
        fn, args = _guarded, (fn, timeout, *args)
    if loop == "asyncio":
        return anyio.run(fn, *args, backend="asyncio")
    if loop == "uvloop":
        return anyio.run(fn, *args, backend="asyncio", backend_options={"use_uvloop": True})
    if loop == "trio":
        return anyio.run(fn, *args, backend="trio")
    raise ValueError(f"unknown loop {loop!r}")


def prime_loops() -> None:
    """Run one empty loop of each kind: uvloop keeps a process-wide pipe pair open after its
    first loop, which must not count as an fd leak of the first benchmark that used it."""

    async def nothing() -> None:
        pass

    for loop in LOOPS:
        run_on(loop, nothing)


class SignalRaceCounter:
    """Counts CPython's "Signal N ignored due to race condition" reports (a signal arrived
    while its Python handler was being swapped out) instead of printing a traceback each."""

    def __init__(self) -> None:
        self.count = 0
        self._previous = sys.unraisablehook

    def install(self) -> None:
        sys.unraisablehook = self._hook

    def _hook(self, unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, OSError) and "ignored due to race condition" in str(
            unraisable.exc_value
        ):
            self.count += 1
            return
        self._previous(unraisable)

    def take(self) -> int:
        count, self.count = self.count, 0
        return count


@contextlib.contextmanager
def reaper_env(reaper: str | None) -> Iterator[None]:
    """Force aproc's reaper (read when a loop first spawns) for the duration of the block."""
    old = os.environ.get("APROC_REAPER")
    if reaper is not None:
        os.environ["APROC_REAPER"] = reaper
    try:
        yield
    finally:
        if reaper is not None:
            if old is None:
                del os.environ["APROC_REAPER"]
            else:
                os.environ["APROC_REAPER"] = old


async def gather(fns: Sequence[Callable[[], Awaitable[Any]]]) -> None:
    """Run the zero-argument coroutine functions concurrently with the running loop's own
    primitive (asyncio.gather, or a trio nursery), so a peer is driven the way its users
    would drive it."""
    import sniffio

    if sniffio.current_async_library() == "trio":
        import trio

        async with trio.open_nursery() as nursery:
            for fn in fns:
                nursery.start_soon(fn)
    else:
        import asyncio

        await asyncio.gather(*(fn() for fn in fns))


@dataclass(frozen=True)
class Impl:
    """One contender: a display name, the loop it runs on and the aproc row it is compared to."""

    name: str
    loop: str  # asyncio | uvloop | trio | sync
    fn: Callable[..., Any]
    is_aproc: bool = False
    reaper: str | None = None  # aproc only: force APROC_REAPER
    ref: str | None = None  # key of the aproc row this peer is compared to

    @property
    def key(self) -> str:
        return f"{self.name} [{self.label}]"

    @property
    def label(self) -> str:
        if self.reaper:
            return f"{self.loop}, {self.reaper} reaper"
        return self.loop

    def run(self, *args: Any) -> Any:
        """Call the implementation once, in a fresh event loop unless it is synchronous."""
        gc.collect()
        with reaper_env(self.reaper):
            if self.loop == "sync":
                return self.fn(*args)
            return run_on(self.loop, self.fn, *args)


def aproc_key(loop: str, reaper: str | None = None, name: str = "aproc") -> str:
    """The row key of an aproc contender (what a peer's ``ref`` names)."""
    label = loop if reaper is None else f"{loop}, {reaper} reaper"
    return f"{name} [{label}]"


def interleave(
    impls: Sequence[Impl],
    repeats: int,
    measure: Callable[[Impl], Any],
    progress: str = "",
    errors: dict[str, str] | None = None,
) -> dict[str, list[Any]]:
    """Measure every implementation ``repeats`` times, round-robin, rotating the order each
    round so no contender always runs right after the same neighbour.

    A contender whose measurement raises is dropped from later rounds and its error recorded
    in ``errors`` (key -> message); the others carry on."""
    samples: dict[str, list[Any]] = {impl.key: [] for impl in impls}
    errors = {} if errors is None else errors
    for round_no in range(repeats):
        shift = round_no % len(impls)
        order = list(impls[shift:]) + list(impls[:shift])
        if round_no % 2:
            order.reverse()
        for impl in order:
            if impl.key in errors:
                continue
            try:
                samples[impl.key].append(measure(impl))
            except Exception as exc:
                message = f"FAILED {type(exc).__name__}: {exc}"
                left = collect_leftovers()
                if left:
                    message += f"; left behind {len(left)} child(ren): {left[:3]}"
                errors[impl.key] = message
                log(f"  {impl.key} {message}")
        if progress:
            log(f"  {progress}: round {round_no + 1}/{repeats} done")
    return samples


# --------------------------------------------------------------------------------------------
# Statistics


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear-interpolated percentile (pct in 0..100)."""
    data = sorted(values)
    if not data:
        raise ValueError("no data")
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * pct / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def spread(values: Sequence[float]) -> float | None:
    """(max - min) / median: how noisy the repeats were."""
    if len(values) < 2:
        return None
    mid = median(values)
    return (max(values) - min(values)) / mid if mid else None


# --------------------------------------------------------------------------------------------
# /proc probes


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def voluntary_switches_all_threads() -> int:
    """Voluntary context switches summed over every thread of this process (each one is a
    time a thread blocked, i.e. will need a wake-up)."""
    total = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


# --------------------------------------------------------------------------------------------
# Children: subreaper, leak checks


def become_subreaper() -> bool:
    """Make orphans of our workers' children re-parent to us, so a leak anywhere below the
    runner is seen (and cleaned up) by :func:`collect_leftovers`."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def children_of(pid: int) -> list[tuple[int, str, str]]:
    """(pid, state, command line) of every process whose parent is ``pid``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2 :].split()
        if int(rest[1]) != pid:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            cmd = ""
        out.append((int(entry), rest[0], cmd or stat[stat.find("(") : stat.rfind(")") + 1]))
    return out


def collect_leftovers() -> list[str]:
    """Kill and reap every child still attached to this process; describe what was found
    (a zombie is state Z). An empty list means the benchmark cleaned up after itself."""
    found = []
    for pid, state, cmd in children_of(os.getpid()):
        found.append(f"pid {pid} state {state}: {cmd}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    return found


# --------------------------------------------------------------------------------------------
# Worker subprocesses (fresh interpreters for memory, thread and big-parent measurements)


def run_worker(module: str, args: Sequence[str], timeout: float = 300.0) -> dict[str, Any]:
    """Run ``python -m benchmarks.<module> ARGS --out FILE`` and return the JSON it wrote.

    The worker's stdout is /dev/null (its children inherit it, so nothing can hold a pipe of
    ours open), its stderr is kept for the error message."""
    with tempfile.TemporaryDirectory(prefix="aproc-bench-") as tmp:
        out = Path(tmp) / "result.json"
        err_path = Path(tmp) / "stderr.txt"
        cmd = [sys.executable, "-m", f"benchmarks.{module}", *args, "--out", str(out)]
        with open(err_path, "wb") as err:
            try:
                proc = subprocess.run(
                    cmd,
                    cwd=REPO_ROOT,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    timeout=timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                return {"error": f"worker timed out after {timeout:.0f} s"}
        if proc.returncode != 0 or not out.exists():
            tail = err_path.read_text(errors="replace").strip().splitlines()[-3:]
            return {"error": f"worker exit {proc.returncode}: " + " | ".join(tail)}
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def start_worker(module: str, args: Sequence[str], out: Path, err: Path) -> subprocess.Popen[bytes]:
    """Like :func:`run_worker` but returns at once (for workers that sit idle in parallel)."""
    cmd = [sys.executable, "-m", f"benchmarks.{module}", *args, "--out", str(out)]
    with open(err, "wb") as errf:
        return subprocess.Popen(
            cmd, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errf
        )


def write_result(path: str, result: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(result))


# --------------------------------------------------------------------------------------------
# Result model


@dataclass
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    fmt: str = "{:,.0f}"


@dataclass
class Row:
    impl: str
    loop: str
    is_aproc: bool = False
    ref: str | None = None  # key of the aproc row to compare with
    values: dict[str, float | None] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    note: str = ""

    @property
    def key(self) -> str:
        return f"{self.impl} [{self.loop}]"


@dataclass
class Section:
    name: str
    title: str
    metrics: list[Metric]
    ratio_metric: str | None
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    leftovers: list[str] = field(default_factory=list)

    def row(self, key: str) -> Row | None:
        for row in self.rows:
            if row.key == key:
                return row
        return None

    def metric(self, key: str) -> Metric:
        for metric in self.metrics:
            if metric.key == key:
                return metric
        raise KeyError(key)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def row_for(impl: Impl, **values: float | None) -> Row:
    loop = impl.label
    return Row(impl.name, loop, impl.is_aproc, impl.ref, dict(values))


@dataclass
class Config:
    quick: bool

    def pick(self, quick: Any, full: Any) -> Any:
        return quick if self.quick else full


_T0 = time.monotonic()


def log(message: str) -> None:
    """Progress output on stderr (the table goes to stdout)."""
    print(f"[{time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def machine_info(quick: bool) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = 0.0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / (1 << 20)
                break
    versions = {}
    for pkg in ("aproc", "anyio", "trio", "uvloop", "structlog", "sniffio"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = "missing"
    try:
        import anyio

        from aproc.reaper import current_reaper

        async def reaper_name() -> str:
            return current_reaper().name

        reaper = anyio.run(reaper_name)
    except Exception as exc:
        reaper = f"unavailable ({exc})"
    try:
        pipe_max = Path("/proc/sys/fs/pipe-max-size").read_text().strip()
    except OSError:
        pipe_max = "?"
    libc = " ".join(platform.libc_ver())
    return {
        "mode": "quick" if quick else "full",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "mem_gib": round(mem_gib, 1),
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "libc": libc,
        "versions": versions,
        "aproc_default_reaper": reaper,
        "pipe_max_size": pipe_max,
    }
