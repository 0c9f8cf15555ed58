"""Shared helpers for the reliability suite (docs/RELIABILITY.md).

``APROC_RELIABILITY=quick|full`` picks the scale: ``quick`` (the default, what CI runs with the
rest of the tests) keeps the whole directory within a few minutes; ``full`` runs the sizes the
figures in docs/RELIABILITY.md come from. Each scenario records its figures through the
``record`` fixture; with ``APROC_RELIABILITY_REPORT=FILE`` they are appended to FILE as JSON
lines, one per test.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
import structlog

MODE_ENV = "APROC_RELIABILITY"
REPORT_ENV = "APROC_RELIABILITY_REPORT"

MiB = 1024 * 1024

T = TypeVar("T")


def _mode() -> str:
    mode = os.environ.get(MODE_ENV, "quick").strip().lower() or "quick"
    if mode not in ("quick", "full"):
        raise pytest.UsageError(f"{MODE_ENV} must be 'quick' or 'full', not {mode!r}")
    return mode


@dataclass(frozen=True)
class Scale:
    """The size of a run: ``scale.pick(quick, full)`` chooses a figure by mode."""

    mode: str

    @property
    def full(self) -> bool:
        return self.mode == "full"

    def pick(self, quick: T, full: T) -> T:
        return full if self.full else quick


SCALE = Scale(_mode())
"""The scale of this run, for module-level use (timeouts, hypothesis settings)."""


@pytest.fixture
def scale() -> Scale:
    return SCALE


def timeout(quick: float, full: float) -> pytest.MarkDecorator:
    """A pytest-timeout marker sized for the mode (the project default is 120 s)."""
    return pytest.mark.timeout(SCALE.pick(quick, full))


# ------------------------------------------------------------------------------ figures

Recorder = Callable[..., dict[str, Any]]


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Iterator[Recorder]:
    """``record(**figures)`` keeps figures for this test; at teardown they are appended (one
    JSON line per test, with its outcome) to ``$APROC_RELIABILITY_REPORT`` if that is set."""
    figures: dict[str, Any] = {}

    def add(**values: Any) -> dict[str, Any]:
        figures.update(values)
        return figures

    started = time.monotonic()
    yield add
    path = os.environ.get(REPORT_ENV)
    if not path or not figures:
        return
    call = getattr(request.node, "_reliability_call", None)
    line = {
        "test": request.node.nodeid,
        "mode": SCALE.mode,
        "outcome": call.outcome if call is not None else "unknown",
        "seconds": round(time.monotonic() - started, 2),
        **figures,
    }
    with open(path, "a", encoding="utf-8") as report:
        report.write(json.dumps(line, sort_keys=False) + "\n")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item._reliability_call = report  # type: ignore[attr-defined]
    return report


# ------------------------------------------------------------------------------ process state


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_malloc_trim = _load_malloc_trim()


def rss_bytes() -> int:
    """This process's resident set size (VmRSS from /proc/self/status).

    glibc's malloc_trim(0) runs first: memory freed earlier in the session (hypothesis data, a
    flood test) stays resident otherwise, and a leak could grow into it without moving RSS.
    """
    if _malloc_trim is not None:
        _malloc_trim(0)
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd")) - 1  # minus the fd listdir used


def open_fds() -> dict[int, str]:
    """Map fd -> what it points at, for this process."""
    fds: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
    return fds


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """``(state letter, ppid, start time)`` of ``pid``, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    return fields[0].decode(), int(fields[1]), int(fields[19])


def children_of(pid: int) -> dict[int, str]:
    """Map pid -> state letter for every process whose parent is ``pid`` (zombies included)."""
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = proc_stat(int(entry))
            if info is not None and info[1] == pid:
                found[int(entry)] = info[0]
    return found


def zombies(kids: dict[int, str]) -> list[int]:
    return [pid for pid, state in kids.items() if state == "Z"]


def quarters_flat(
    samples: Sequence[int], tolerance: int, what: str = "RSS", unit: int = MiB
) -> tuple[float, float]:
    """Assert the last quarter's median exceeds the first quarter's by at most ``tolerance``;
    return both medians."""
    assert len(samples) >= 8, f"too few {what} samples: {len(samples)}"
    q = len(samples) // 4
    first = statistics.median(samples[:q])
    last = statistics.median(samples[-q:])
    name = " MiB" if unit == MiB else ""
    assert last <= first + tolerance, (
        f"{what} grew: first-quarter median {first / unit:.1f}{name}, "
        f"last-quarter median {last / unit:.1f}{name} (tolerance {tolerance / unit:.1f}{name})"
    )
    return first, last


def mib(value: float) -> float:
    return round(value / MiB, 2)


# ------------------------------------------------------------------------------ helpers

PYTHON = sys.executable


@pytest.fixture
def quiet_logs() -> Iterator[None]:
    """Drop aproc's debug/info events for the test: tens of thousands of lifecycle lines would
    only slow the loop down (pytest captures them); warnings and errors still go through."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    try:
        yield
    finally:
        structlog.configure(**saved)


def children_env(**extra: str) -> dict[str, str]:
    """The environment for a helper Python process: ours, with aproc importable."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("APROC_REAPER", None)
    env.update(extra)
    return env
