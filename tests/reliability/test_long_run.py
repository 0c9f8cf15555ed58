"""Long runs: a supervisor restarting a child that exits at once, thousands of times.

Every ``step`` restarts the child is held (an operator stop), so that the sample is taken in the
same quiet state each time: no process, no pipe, no pidfd of it open. RSS must stay flat between
the first and the last quarter of the run and the fd count must be identical every time.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import anyio
import pytest

import aproc

from .conftest import (
    MiB,
    Recorder,
    Scale,
    children_of,
    fd_count,
    mib,
    open_fds,
    quarters_flat,
    rss_bytes,
    timeout,
)

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("quiet_logs"), timeout(90, 900)]

SAMPLES = 40
RSS_TOLERANCE = 10 * MiB


async def test_restart_loop(anyio_backend: Any, scale: Scale, record: Recorder) -> None:
    target = scale.pick(200, 10_000)
    step = max(1, target // SAMPLES)
    spec = aproc.ChildSpec(
        "flap", ["true"], backoff=aproc.Backoff(initial=0.0, maximum=0.0, jitter=0.0)
    )
    rss: list[int] = []
    fds: list[int] = []
    blocks: list[int] = []
    fds_before = open_fds()
    started = anyio.current_time()
    async with aproc.Supervisor([spec], max_restarts=10**9, max_seconds=1.0) as sup:
        next_sample = step
        restarts = 0
        while restarts < target:
            await anyio.sleep(0.01)  # condition poll: the restarts run on their own
            restarts = sup.status()[0].restarts
            if restarts >= next_sample:
                await sup.stop_child("flap")
                assert children_of(os.getpid()) == {}
                rss.append(rss_bytes())
                fds.append(fd_count())
                blocks.append(sys.getallocatedblocks())
                next_sample = restarts + step
                await sup.start_child("flap")
        elapsed = anyio.current_time() - started
        final = sup.status()[0]
    leaked = {fd: t for fd, t in open_fds().items() if fds_before.get(fd) != t}
    first, last = quarters_flat(rss, RSS_TOLERANCE)
    blocks_first, blocks_last = quarters_flat(blocks, 20_000, "allocated blocks", unit=1)
    record(
        backend=str(anyio_backend),
        restarts=restarts,
        restarts_per_second=round(restarts / elapsed, 1),
        samples=len(rss),
        rss_first_quarter_mib=mib(first),
        rss_last_quarter_mib=mib(last),
        py_blocks_first_quarter=int(blocks_first),
        py_blocks_last_quarter=int(blocks_last),
        fd_counts=sorted(set(fds)),
        leaked_fds=len(leaked),
        children_left=len(children_of(os.getpid())),
    )
    assert restarts >= target
    assert final.state in ("running", "starting", "backoff", "exited")
    assert len(set(fds)) == 1, f"fd count changed across samples: {fds}"
    assert leaked == {}
    assert children_of(os.getpid()) == {}
