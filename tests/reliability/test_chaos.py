"""Chaos: a supervisor under fire, and a supervisor killed outright.

A chaos task SIGKILLs random children of a 50-child supervisor at a steady rate: every
permanent child must be running at the end, the restarts must match the kills that hit a live
child, and no zombie may remain. With a small ``max_restarts`` the intensity limit must hold:
the supervisor gives up and stops everything. And when the supervisor's own process is
SIGKILLed, its children must not outlive it (``die_with_supervisor``: PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import json
import os
import random
import signal
import uuid
from typing import Any

import anyio
import pytest

import aproc

from .conftest import (
    PYTHON,
    Recorder,
    Scale,
    children_env,
    children_of,
    proc_stat,
    timeout,
)

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("quiet_logs")]

SEED = 7_919
LONG = ["sleep", "3600"]
CHILDREN = 50


async def _wait_until(predicate: Any, timeout: float = 30.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)


@timeout(60, 180)
async def test_chaos_kills_random_children(
    anyio_backend: Any, scale: Scale, record: Recorder
) -> None:
    duration = scale.pick(3.0, 30.0)
    period = 0.02  # chaos pacing: one to three kills every 20 ms
    spec = aproc.ChildSpec(
        "c", LONG, numprocs=CHILDREN, backoff=aproc.Backoff(initial=0.01, maximum=0.05)
    )
    rng = random.Random(SEED)
    killed: set[int] = set()
    killed_incarnations: set[tuple[int, int]] = set()  # (pid, start time): pids get reused
    kills = attempts = 0
    async with aproc.Supervisor([spec], max_restarts=1_000_000, max_seconds=1.0) as sup:
        assert [s.state for s in sup.status()] == ["running"] * CHILDREN
        first_pids = {s.pid for s in sup.status()}
        deadline = anyio.current_time() + duration
        while anyio.current_time() < deadline:
            for _ in range(rng.randint(1, 3)):
                # Only children the supervisor has not reaped yet: their pids cannot have been
                # recycled, and no await separates the snapshot from the kill.
                targets = [
                    s.pid
                    for s in sup.status()
                    if s.state == "running" and s.pid is not None and s.pid not in killed
                ]
                if not targets:
                    break
                victim = rng.choice(targets)
                attempts += 1
                info = proc_stat(victim)
                try:
                    os.kill(victim, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                kills += 1
                killed.add(victim)
                assert info is not None
                killed_incarnations.add((victim, info[2]))
            await anyio.sleep(period)

        def settled() -> bool:
            status = sup.status()
            return (
                all(s.state == "running" for s in status)
                and sum(s.restarts for s in status) >= kills
            )

        await _wait_until(settled)
        status = sup.status()
        restarts = sum(s.restarts for s in status)
        pids = {s.pid for s in status}
        incarnations = {(pid, (proc_stat(pid) or ("?", 0, -1))[2]) for pid in pids if pid}
        kids = children_of(os.getpid())
        gave_up = None
    after = children_of(os.getpid())
    record(
        backend=str(anyio_backend),
        children=CHILDREN,
        chaos_seconds=duration,
        seed=SEED,
        kills_delivered=kills,
        kill_attempts=attempts,
        restarts=restarts,
        running_at_end=sum(s.state == "running" for s in status),
        zombies=sum(1 for s in kids.values() if s == "Z"),
        left_after_exit=len(after),
    )
    assert gave_up is None
    assert kills > duration * 10, "the chaos task barely ran"
    assert restarts == kills
    assert all(s.state == "running" for s in status)
    assert None not in pids
    assert len(pids) == CHILDREN
    assert not (incarnations & killed_incarnations)
    assert pids != first_pids
    # Exactly the supervised children, all alive (no zombie of a killed incarnation).
    assert kids == dict.fromkeys(pids, "S"), kids
    assert after == {}


@pytest.mark.parametrize("max_restarts", [0, 3, 10])
async def test_chaos_respects_restart_intensity(
    anyio_backend: Any, max_restarts: int, record: Recorder
) -> None:
    spec = aproc.ChildSpec("c", LONG, numprocs=5, backoff=aproc.Backoff(initial=0.01, maximum=0.05))
    sup = aproc.Supervisor([spec], max_restarts=max_restarts, max_seconds=60)
    seen: set[int] = set()
    kills = 0
    rng = random.Random(SEED + max_restarts)

    async def kill_until_it_gives_up() -> None:
        nonlocal kills
        async with sup:
            while True:
                status = sup.status()
                seen.update(s.pid for s in status if s.pid is not None)
                victim = rng.choice([s.pid for s in status if s.pid is not None])
                os.kill(victim, signal.SIGKILL)
                kills += 1
                if kills > max_restarts:
                    await sup.wait()  # the kill that breaks the limit: it gives up
                    pytest.fail("the supervisor did not give up")

                def restarted(count: int = kills) -> bool:
                    status = sup.status()
                    return sum(s.restarts for s in status) == count and all(
                        s.state == "running" for s in status
                    )

                await _wait_until(restarted)

    with pytest.raises(aproc.SupervisorGaveUp) as info:
        await kill_until_it_gives_up()
    error = info.value
    states = {s.state for s in sup.status()}
    # Still ours (live or zombie)? A pid that left is not checked further: it may be reused.
    alive = [pid for pid in seen if (proc_stat(pid) or ("?", 0))[1] == os.getpid()]
    record(
        backend=str(anyio_backend),
        max_restarts=max_restarts,
        kills=kills,
        gave_up_after=error.restarts,
        states_after=sorted(states),
        alive_after=len(alive),
    )
    assert kills == max_restarts + 1
    assert error.restarts == max_restarts + 1
    assert error.max_restarts == max_restarts
    assert states <= {"stopped", "failed"}
    assert [s.state for s in sup.status()].count("failed") == 1
    assert alive == []
    assert children_of(os.getpid()) == {}


SUPERVISOR = r"""
import json, logging, sys
import anyio, aproc, structlog

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

backend, options, token = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]

async def main():
    specs = [
        aproc.ChildSpec("sleeper", ["sleep", "3600." + token], numprocs=5),
        # Children restarting as fast as they can: the supervisor dies mid-spawn too.
        aproc.ChildSpec(
            "flapper", ["sh", "-c", "exit 1", token], numprocs=3,
            backoff=aproc.Backoff(initial=0.0, maximum=0.0, jitter=0.0),
        ),
    ]
    async with aproc.Supervisor(specs, max_restarts=10**9, max_seconds=1) as sup:
        with anyio.fail_after(30):
            while not all(s.state == "running" for s in sup.status()[:5]):
                await anyio.sleep(0.01)
        print("PIDS", json.dumps([s.pid for s in sup.status()[:5]]), flush=True)
        await anyio.sleep_forever()

anyio.run(main, backend=backend, backend_options=options)
"""


def _processes_with(token: str) -> dict[int, str]:
    """Live (non-zombie) processes whose command line mentions ``token``."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if token.encode() in cmdline:
            info = proc_stat(int(entry))
            if info is not None and info[0] != "Z":
                found[int(entry)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found


@pytest.mark.parametrize(
    ("backend", "options"),
    [("asyncio", {}), ("asyncio", {"use_uvloop": True}), ("trio", {})],
    ids=["asyncio", "uvloop", "trio"],
)
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_supervisor_sigkilled_leaves_no_orphans(
    backend: str, options: dict[str, Any], scale: Scale, record: Recorder
) -> None:
    rounds = scale.pick(2, 10)
    survivors_total = 0
    children_total = 0
    for _ in range(rounds):
        token = uuid.uuid4().hex[:12]
        token_digits = str(int(token, 16) % 10**9)
        proc = await aproc.spawn(
            [PYTHON, "-c", SUPERVISOR, backend, json.dumps(options), token_digits],
            stdout=aproc.PIPE,
            env=children_env(),
        )
        try:
            assert proc.stdout is not None
            with anyio.fail_after(60):
                line = b""
                async for line in proc.stdout.lines():
                    if line.startswith(b"PIDS "):
                        break
            pids = json.loads(line.removeprefix(b"PIDS "))
            starts = {pid: (proc_stat(pid) or ("?", 0, -1))[2] for pid in pids}
            assert all(proc_stat(pid) is not None for pid in pids)
        finally:
            proc.kill()
            await proc.wait()
            await proc.aclose()

        def gone(pid: int, starts: dict[int, int] = starts) -> bool:
            info = proc_stat(pid)
            # Gone, a zombie waiting for init, or the pid already reused by someone else.
            return info is None or info[0] == "Z" or info[2] != starts[pid]

        with anyio.fail_after(10):
            while not (all(gone(pid) for pid in pids) and not _processes_with(token_digits)):
                await anyio.sleep(0.01)
        survivors = [pid for pid in pids if not gone(pid)]
        survivors_total += len(survivors) + len(_processes_with(token_digits))
        children_total += len(pids)
    record(
        backend=backend + ("+uvloop" if options else ""),
        supervisors_killed=rounds,
        children_checked=children_total,
        survivors=survivors_total,
    )
    assert survivors_total == 0
