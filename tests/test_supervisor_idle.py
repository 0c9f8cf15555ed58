"""No polling (PITFALLS.md 25): a supervisor with nothing to do wakes up zero times. With 50
children at rest, two seconds cost well under 0.1 s of CPU and next to no context switches."""

from __future__ import annotations

import threading
import time

import anyio
import pytest
from supervisor_support import anyio_backend  # noqa: F401 (fixture)

import aproc

pytestmark = pytest.mark.anyio

CHILDREN = 50
IDLE_SECONDS = 2.0


def voluntary_context_switches() -> int:
    """Voluntary context switches of the calling thread (the event loop's) so far: each time it
    went to sleep in the kernel, so each wake-up of the loop counts one."""
    with open(f"/proc/self/task/{threading.get_native_id()}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches in /proc/self/task/*/status")


async def test_idle_supervisor_does_not_wake_up() -> None:
    specs = [aproc.ChildSpec(f"idle{i}", ["sleep", "60"], ready=None) for i in range(CHILDREN)]
    with anyio.fail_after(30):
        async with aproc.Supervisor(specs) as sup:
            assert [s.state for s in sup.status()] == ["running"] * CHILDREN
            # Let the start-up settle: every output pump parked on its pipe.
            await anyio.wait_all_tasks_blocked()
            cpu = time.process_time()
            switches = voluntary_context_switches()
            await anyio.sleep(IDLE_SECONDS)
            cpu = time.process_time() - cpu
            switches = voluntary_context_switches() - switches
            assert [s.state for s in sup.status()] == ["running"] * CHILDREN
    print(f"idle {IDLE_SECONDS} s with {CHILDREN} children: {cpu:.4f} s CPU, {switches} switches")
    assert cpu < 0.02
    # Our own sleep costs one wake-up (one spare for the kernel's sake); a supervisor polling
    # once a second, as supervisord does, would already cost two more.
    assert switches <= 2
