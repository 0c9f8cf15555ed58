"""Helpers shared by the supervisor tests (tests/test_supervisor_*.py).

The ``anyio_backend`` fixture here takes effect only in a module that imports it by name::

    from supervisor_support import anyio_backend  # noqa: F401 (fixture)

There it overrides the conftest one: the supervisor tests run on asyncio and trio only (not on
uvloop as well). The ``logs`` fixture they use is in conftest.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, MutableMapping
from typing import Any

import anyio
import pytest

import aproc

QUICK = aproc.Backoff(initial=0.01, jitter=0)
"""jitter=0 keeps the restart delay exact; 10 ms keeps the tests quick."""

LIFECYCLE = frozenset(
    {
        "child.starting",
        "child.ready",
        "child.exited",
        "child.restarting",
        "child.stopping",
        "child.stopped",
    }
)

Events = list[MutableMapping[str, Any]]
"""What structlog.testing.capture_logs collects."""


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` in 10 ms steps; fail the test after ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)


def lifecycle(logs: Events, start: int = 0) -> list[tuple[str, str]]:
    return [(e["event"], e["name"]) for e in logs[start:] if e["event"] in LIFECYCLE]


def named(logs: Events, event: str) -> Events:
    return [e for e in logs if e["event"] == event]


def sleepers(*names: str) -> list[aproc.ChildSpec]:
    return [aproc.ChildSpec(name, ["sleep", "60"], backoff=QUICK) for name in names]


def pid_exists(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]
