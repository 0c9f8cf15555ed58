"""Restart types (permanent, transient, temporary), restart intensity and the give-up, and the
capped exponential backoff between restarts (PITFALLS.md 22)."""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest
from supervisor_support import (
    QUICK,
    Events,
    anyio_backend,  # noqa: F401 (fixture)
    named,
    pid_exists,
    wait_for,
)

import aproc

pytestmark = pytest.mark.anyio


def first_run_then_sleep(marker: Path, first: str) -> list[str]:
    """A child that runs the shell snippet ``first`` on its first start only (tracked by
    ``marker``) and sleeps on every later start."""
    script = f'if [ -e "$1" ]; then exec sleep 60; fi; : > "$1"; {first}'
    return ["sh", "-c", script, "sh", str(marker)]


def running_again(sup: aproc.Supervisor, old_pid: int | None) -> bool:
    status = sup.status()[0]
    return status.state == "running" and status.pid is not None and status.pid != old_pid


# ----------------------------------------------------------------- restart types


async def test_permanent_child_is_restarted_after_exit_0(tmp_path: Path, logs: Events) -> None:
    argv = first_run_then_sleep(tmp_path / "ran", "exit 0")
    spec = aproc.ChildSpec("p", argv, restart="permanent", backoff=QUICK)
    with anyio.fail_after(10):
        async with aproc.Supervisor([spec]) as sup:
            await wait_for(lambda: sup.status()[0].restarts == 1 and running_again(sup, None))
            status = sup.status()[0]
            assert status.returncode == 0
            assert status.state == "running"
    (exited,) = [e for e in named(logs, "child.exited") if e["returncode"] == 0]
    assert exited["name"] == "p"
    assert exited["signal"] is None
    (restarting,) = named(logs, "child.restarting")
    assert (restarting["name"], restarting["attempt"]) == ("p", 1)


async def test_transient_child_is_not_restarted_after_exit_0(logs: Events) -> None:
    spec = aproc.ChildSpec("t", ["true"], restart="transient", backoff=QUICK)
    with anyio.fail_after(10):
        async with aproc.Supervisor([spec]) as sup:
            await sup.wait()  # nothing is left to run
            (status,) = sup.status()
            assert (status.state, status.returncode, status.restarts, status.pid) == (
                "exited",
                0,
                0,
                None,
            )
    assert not named(logs, "child.restarting")
    assert [e["event"] for e in logs if e["event"].startswith("child.")] == [
        "child.starting",
        "child.ready",
        "child.exited",
    ]


async def test_transient_child_is_restarted_after_exit_1(tmp_path: Path, logs: Events) -> None:
    argv = first_run_then_sleep(tmp_path / "ran", "exit 1")
    spec = aproc.ChildSpec("t", argv, restart="transient", backoff=QUICK)
    with anyio.fail_after(10):
        async with aproc.Supervisor([spec]) as sup:
            await wait_for(lambda: sup.status()[0].restarts == 1 and running_again(sup, None))
            assert sup.status()[0].returncode == 1
    (exited,) = named(logs, "child.exited")
    assert (exited["name"], exited["returncode"], exited["signal"]) == ("t", 1, None)
    assert len(named(logs, "child.restarting")) == 1


async def test_transient_child_is_restarted_after_a_signal(logs: Events) -> None:
    spec = aproc.ChildSpec("t", ["sleep", "60"], restart="transient", backoff=QUICK)
    with anyio.fail_after(10):
        async with aproc.Supervisor([spec]) as sup:
            old = sup.status()[0].pid
            assert old is not None
            os.kill(old, signal.SIGTERM)
            await wait_for(lambda: running_again(sup, old))
            status = sup.status()[0]
            assert (status.restarts, status.returncode) == (1, -signal.SIGTERM)
    exited = named(logs, "child.exited")[0]
    assert (exited["pid"], exited["returncode"], exited["signal"]) == (
        old,
        -signal.SIGTERM,
        "SIGTERM",
    )


@pytest.mark.parametrize(
    ("argv", "returncode"),
    [(["sh", "-c", "exit 0"], 0), (["sh", "-c", "exit 7"], 7), (["sh", "-c", "kill -9 $$"], -9)],
    ids=["exit0", "exit7", "sigkill"],
)
async def test_temporary_child_is_never_restarted(
    argv: list[str], returncode: int, logs: Events
) -> None:
    specs = [
        aproc.ChildSpec("tmp", argv, restart="temporary", backoff=QUICK),
        aproc.ChildSpec("other", ["sleep", "60"], restart="temporary"),
    ]
    with anyio.fail_after(10):
        async with aproc.Supervisor(specs) as sup:
            await wait_for(lambda: sup.status()[0].state == "exited")
            tmp, other = sup.status()
            assert (tmp.state, tmp.returncode, tmp.restarts, tmp.pid) == (
                "exited",
                returncode,
                0,
                None,
            )
            assert other.state == "running"
            # wait() returns once the last child is gone for good.
            assert other.pid is not None
            os.kill(other.pid, signal.SIGKILL)
            await sup.wait()
            assert [s.state for s in sup.status()] == ["exited", "exited"]
    assert not named(logs, "child.restarting")


def test_should_restart_table() -> None:
    def spec(restart: Any) -> aproc.ChildSpec:
        return aproc.ChildSpec("x", ["true"], restart=restart)

    codes = [0, 1, -9, -15]
    assert [spec("permanent").should_restart(c) for c in codes] == [True] * 4
    assert [spec("transient").should_restart(c) for c in codes] == [False, True, True, True]
    assert [spec("temporary").should_restart(c) for c in codes] == [False] * 4
    with pytest.raises(ValueError, match="sometimes"):
        spec("sometimes")


# ----------------------------------------------------------------- intensity


def crasher_and_sleepers(backoff: aproc.Backoff = QUICK) -> list[aproc.ChildSpec]:
    return [
        aproc.ChildSpec("before", ["sleep", "60"]),
        aproc.ChildSpec("bad", ["sh", "-c", "exit 3"], backoff=backoff),
        aproc.ChildSpec("after", ["sleep", "60"]),
    ]


async def test_intensity_exceeded_gives_up_and_stops_the_rest(
    logs: Events,
) -> None:
    sup = aproc.Supervisor(crasher_and_sleepers(), max_restarts=2, max_seconds=10)
    seen: dict[str, int | None] = {}

    async def supervise() -> None:
        async with sup:
            seen.update({s.name: s.pid for s in sup.status()})
            await anyio.sleep_forever()  # the give-up cancels the body

    with anyio.fail_after(10), pytest.raises(aproc.SupervisorGaveUp) as info:
        await supervise()
    exc = info.value
    assert exc.child == "bad"
    assert exc.restarts == 3
    assert exc.max_restarts == 2
    assert exc.max_seconds == 10
    assert exc.returncode == 3
    assert "'bad'" in str(exc)
    for name in ("before", "after"):
        pid = seen[name]
        assert pid is not None
        assert not pid_exists(pid)
    assert [(s.name, s.state, s.pid) for s in sup.status()] == [
        ("before", "stopped", None),
        ("bad", "failed", None),
        ("after", "stopped", None),
    ]
    assert sup.status()[1].restarts == 2
    assert sup.status()[1].returncode == 3
    (gave_up,) = named(logs, "supervisor.gave_up")
    assert (gave_up["name"], gave_up["restarts"], gave_up["returncode"]) == ("bad", 3, 3)
    assert [e["attempt"] for e in named(logs, "child.restarting")] == [1, 2]
    # The rest are stopped after the give-up, in reverse start order.
    after_give_up = logs[logs.index(gave_up) :]
    assert [(e["event"], e["name"]) for e in after_give_up if e["event"] == "child.stopped"] == [
        ("child.stopped", "after"),
        ("child.stopped", "before"),
    ]


async def test_wait_raises_gave_up_in_the_body() -> None:
    sup = aproc.Supervisor(crasher_and_sleepers(), max_restarts=2, max_seconds=10)
    from_wait: list[aproc.SupervisorGaveUp] = []

    async def supervise() -> None:
        async with sup:
            try:
                await sup.wait()
            except aproc.SupervisorGaveUp as exc:
                from_wait.append(exc)

    with anyio.fail_after(10), pytest.raises(aproc.SupervisorGaveUp) as info:
        await supervise()
    assert from_wait == [info.value]
    assert (info.value.child, info.value.restarts) == ("bad", 3)


async def test_max_restarts_zero_gives_up_on_the_first_crash() -> None:
    spec = aproc.ChildSpec("once", ["sh", "-c", "exit 5"], backoff=QUICK)
    with anyio.fail_after(10), pytest.raises(aproc.SupervisorGaveUp) as info:
        async with aproc.Supervisor([spec], max_restarts=0) as sup:
            await sup.wait()
    assert (info.value.child, info.value.restarts, info.value.returncode) == ("once", 1, 5)


async def test_restarts_outside_the_window_do_not_count(logs: Events) -> None:
    # Five quick crashes, but the window is so short that each one is alone in it.
    backoff = aproc.Backoff(initial=0.05, factor=1, jitter=0)
    spec = aproc.ChildSpec("bad", ["sh", "-c", "exit 3"], backoff=backoff)
    with anyio.fail_after(10):
        async with aproc.Supervisor([spec], max_restarts=1, max_seconds=0.04) as sup:
            await wait_for(lambda: sup.status()[0].restarts >= 5)
    assert not named(logs, "supervisor.gave_up")


# ----------------------------------------------------------------- backoff


async def test_backoff_grows_and_is_capped(logs: Events) -> None:
    backoff = aproc.Backoff(initial=0.05, factor=2, maximum=0.2, jitter=0)
    spec = aproc.ChildSpec("bad", ["sh", "-c", "exit 1"], backoff=backoff)
    started = anyio.current_time()
    with anyio.fail_after(10), pytest.raises(aproc.SupervisorGaveUp) as info:
        async with aproc.Supervisor([spec], max_restarts=4, max_seconds=10) as sup:
            await sup.wait()
    elapsed = anyio.current_time() - started
    restarting = named(logs, "child.restarting")
    assert [e["delay"] for e in restarting] == [0.05, 0.1, 0.2, 0.2]
    assert [e["attempt"] for e in restarting] == [1, 2, 3, 4]
    assert {e["name"] for e in restarting} == {"bad"}
    assert info.value.restarts == 5
    # The delays were really waited for.
    assert elapsed >= 0.55
    starting = named(logs, "child.starting")
    assert [e["attempt"] for e in starting] == [1, 2, 3, 4, 5]


async def test_backoff_starts_over_after_a_healthy_run(tmp_path: Path, logs: Events) -> None:
    # Runs 1 and 2 crash at once, run 3 crashes after 0.8 s (longer than reset_after), run 4
    # stays up.
    script = (
        'n=$(cat "$1" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "$1"; '
        "case $n in 1|2) exit 1;; 3) sleep 0.8; exit 1;; esac; exec sleep 60"
    )
    backoff = aproc.Backoff(initial=0.05, factor=2, maximum=1, jitter=0, reset_after=0.5)
    spec = aproc.ChildSpec("w", ["sh", "-c", script, "sh", str(tmp_path / "n")], backoff=backoff)
    with anyio.fail_after(10):
        async with aproc.Supervisor([spec], max_restarts=10) as sup:
            await wait_for(lambda: sup.status()[0].restarts == 3 and running_again(sup, None))
    restarting = named(logs, "child.restarting")
    assert [(e["attempt"], e["delay"]) for e in restarting] == [(1, 0.05), (2, 0.1), (1, 0.05)]


def test_backoff_delay_without_jitter() -> None:
    backoff = aproc.Backoff(initial=0.05, factor=2, maximum=0.2, jitter=0)
    assert [backoff.delay(n) for n in range(1, 6)] == [0.05, 0.1, 0.2, 0.2, 0.2]
    assert backoff.delay(0) == 0.05
    assert backoff.delay(10**6) == 0.2
    assert aproc.Backoff(initial=1, factor=1, jitter=0).delay(50) == 1


def test_backoff_defaults() -> None:
    backoff = aproc.Backoff()
    assert (
        backoff.initial,
        backoff.factor,
        backoff.maximum,
        backoff.jitter,
        backoff.reset_after,
    ) == (0.1, 2.0, 30.0, 0.1, 10.0)


def test_backoff_jitter_extremes() -> None:
    backoff = aproc.Backoff(initial=1, factor=2, maximum=8, jitter=0.25)
    assert backoff.delay(1, rng=lambda: 0.0) == 0.75
    assert backoff.delay(1, rng=lambda: 0.5) == 1.0
    assert backoff.delay(2, rng=lambda: 0.0) == 1.5
    # Jitter never pushes a delay past the cap.
    assert backoff.delay(10, rng=lambda: 0.999999) == 8
    assert backoff.delay(10, rng=lambda: 0.0) == 6


def test_backoff_jitter_stays_within_bounds() -> None:
    backoff = aproc.Backoff(initial=0.1, factor=2, maximum=30, jitter=0.1)
    rng = random.Random(1234).random
    for attempt in range(1, 20):
        base = min(30, 0.1 * 2 ** (attempt - 1))
        delays = [backoff.delay(attempt, rng=rng) for _ in range(200)]
        assert all(max(0, base * 0.9) <= d <= min(30, base * 1.1) for d in delays), attempt
        # The spread is used, not collapsed to one value.
        assert max(delays) - min(delays) > base * 0.05


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": -1},
        {"maximum": -0.5},
        {"reset_after": -1},
        {"factor": 0.5},
        {"jitter": 1.5},
        {"jitter": -0.1},
    ],
)
def test_backoff_rejects_bad_values(kwargs: dict[str, float]) -> None:
    (name,) = kwargs
    with pytest.raises(ValueError, match=name):
        aproc.Backoff(**kwargs)
