"""Supervisor strategies: what a crash restarts (one_for_one, one_for_all, rest_for_one), in
which order the others are stopped and started again, and what a clean exit leaves alone."""

from __future__ import annotations

import os
import signal

import anyio
import pytest
from supervisor_support import (
    Events,
    anyio_backend,  # noqa: F401 (fixture)
    lifecycle,
    pid_exists,
    sleepers,
    wait_for,
)

import aproc

pytestmark = pytest.mark.anyio


def pids(sup: aproc.Supervisor) -> dict[str, int | None]:
    return {s.name: s.pid for s in sup.status()}


def all_replaced(sup: aproc.Supervisor, old: dict[str, int | None], names: str) -> bool:
    now = {s.name: s for s in sup.status()}
    return all(
        now[n].state == "running" and now[n].pid is not None and now[n].pid != old[n] for n in names
    )


async def test_one_for_one_restarts_only_the_crashed_child(logs: Events) -> None:
    with anyio.fail_after(10):
        async with aproc.Supervisor(sleepers("a", "b", "c"), strategy="one_for_one") as sup:
            old = pids(sup)
            mark = len(logs)
            os.kill(old["b"], signal.SIGKILL)  # type: ignore[arg-type]
            await wait_for(lambda: all_replaced(sup, old, "b"))
            assert lifecycle(logs, mark) == [
                ("child.exited", "b"),
                ("child.restarting", "b"),
                ("child.starting", "b"),
                ("child.ready", "b"),
            ]
            now = pids(sup)
            assert now["a"] == old["a"]
            assert now["c"] == old["c"]
            assert [(s.name, s.restarts) for s in sup.status()] == [("a", 0), ("b", 1), ("c", 0)]
    exited = next(e for e in logs if e["event"] == "child.exited")
    assert exited["pid"] == old["b"]
    assert exited["returncode"] == -signal.SIGKILL
    assert exited["signal"] == "SIGKILL"


async def test_one_for_all_restarts_every_child_in_order(logs: Events) -> None:
    with anyio.fail_after(10):
        async with aproc.Supervisor(sleepers("a", "b", "c"), strategy="one_for_all") as sup:
            old = pids(sup)
            mark = len(logs)
            os.kill(old["b"], signal.SIGKILL)  # type: ignore[arg-type]
            await wait_for(lambda: all_replaced(sup, old, "abc"))
            # The others stop in reverse start order, then all start again in start order.
            assert lifecycle(logs, mark) == [
                ("child.exited", "b"),
                ("child.restarting", "b"),
                ("child.stopping", "c"),
                ("child.stopped", "c"),
                ("child.stopping", "a"),
                ("child.stopped", "a"),
                ("child.starting", "a"),
                ("child.ready", "a"),
                ("child.starting", "b"),
                ("child.ready", "b"),
                ("child.starting", "c"),
                ("child.ready", "c"),
            ]
            new = pids(sup)
            assert set(new.values()).isdisjoint(old.values())
            # Only the crash counts as a restart of its own child.
            assert [(s.name, s.restarts) for s in sup.status()] == [("a", 0), ("b", 1), ("c", 0)]
    for pid in old.values():
        assert not pid_exists(pid)  # type: ignore[arg-type]


async def test_rest_for_one_restarts_the_crashed_and_later_children(
    logs: Events,
) -> None:
    with anyio.fail_after(10):
        async with aproc.Supervisor(sleepers("a", "b", "c"), strategy="rest_for_one") as sup:
            old = pids(sup)
            mark = len(logs)
            os.kill(old["b"], signal.SIGKILL)  # type: ignore[arg-type]
            await wait_for(lambda: all_replaced(sup, old, "bc"))
            assert lifecycle(logs, mark) == [
                ("child.exited", "b"),
                ("child.restarting", "b"),
                ("child.stopping", "c"),
                ("child.stopped", "c"),
                ("child.starting", "b"),
                ("child.ready", "b"),
                ("child.starting", "c"),
                ("child.ready", "c"),
            ]
            assert pids(sup)["a"] == old["a"]


async def test_rest_for_one_crash_of_the_last_child_restarts_only_it(
    logs: Events,
) -> None:
    with anyio.fail_after(10):
        async with aproc.Supervisor(sleepers("a", "b", "c"), strategy="rest_for_one") as sup:
            old = pids(sup)
            mark = len(logs)
            os.kill(old["c"], signal.SIGKILL)  # type: ignore[arg-type]
            await wait_for(lambda: all_replaced(sup, old, "c"))
            assert lifecycle(logs, mark) == [
                ("child.exited", "c"),
                ("child.restarting", "c"),
                ("child.starting", "c"),
                ("child.ready", "c"),
            ]
            now = pids(sup)
            assert (now["a"], now["b"]) == (old["a"], old["b"])


async def test_one_for_all_leaves_others_alone_when_a_transient_child_exits_cleanly(
    logs: Events,
) -> None:
    specs = [*sleepers("a"), aproc.ChildSpec("job", ["true"], restart="transient"), *sleepers("c")]
    with anyio.fail_after(10):
        async with aproc.Supervisor(specs, strategy="one_for_all") as sup:
            old = pids(sup)
            await wait_for(lambda: sup.status()[1].state == "exited")
            status = sup.status()
            assert [(s.name, s.state) for s in status] == [
                ("a", "running"),
                ("job", "exited"),
                ("c", "running"),
            ]
            assert status[1].returncode == 0
            assert status[1].pid is None
            assert (status[0].pid, status[2].pid) == (old["a"], old["c"])
            assert not [e for e in logs if e["event"] == "child.restarting"]


async def test_one_for_all_crash_counts_once_against_the_intensity(
    logs: Events,
) -> None:
    # Stopping the others is part of one restart, not a restart of each of them: two crashes
    # under max_restarts=2 are allowed even with three children.
    with anyio.fail_after(10):
        async with aproc.Supervisor(
            sleepers("a", "b", "c"), strategy="one_for_all", max_restarts=2, max_seconds=30
        ) as sup:
            for _ in range(2):
                old = pids(sup)
                os.kill(old["a"], signal.SIGKILL)  # type: ignore[arg-type]
                await wait_for(lambda old=old: all_replaced(sup, old, "abc"))  # type: ignore[misc]
            assert [s.state for s in sup.status()] == ["running"] * 3
    assert len([e for e in logs if e["event"] == "child.restarting"]) == 2
    assert not [e for e in logs if e["event"] == "supervisor.gave_up"]


def test_unknown_strategy_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="one_for_everyone"):
        aproc.Supervisor(sleepers("a"), strategy="one_for_everyone")  # type: ignore[arg-type]
