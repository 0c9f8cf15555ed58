"""Operating a supervisor: status snapshots, operator start/stop/restart (an operator stop is not a
crash: PITFALLS.md 23), dynamic add/remove, ordered stop that takes the whole process tree
(PITFALLS.md 21), children's output and PYTHONUNBUFFERED (PITFALLS.md 26), lifecycle events."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from conftest import proc_state, sig_ignored, wait_gone
from supervisor_support import (
    LIFECYCLE,
    QUICK,
    Events,
    anyio_backend,  # noqa: F401 (fixture)
    lifecycle,
    named,
    python,
    sleepers,
    wait_for,
)

import aproc

pytestmark = pytest.mark.anyio


def by_name(sup: aproc.Supervisor) -> dict[str, aproc.ChildStatus]:
    return {s.name: s for s in sup.status()}


def replaced(status: aproc.ChildStatus, old_pid: int | None) -> bool:
    """Whether the child runs again as a new process (a dead one shows pid None)."""
    return status.state == "running" and status.pid not in (None, old_pid)


class Lines:
    """An on_output callback that keeps every line and lets a test wait for one."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, bytes]] = []
        self._changed = anyio.Event()

    def __call__(self, name: str, stream: str, line: bytes) -> None:
        self.lines.append((name, stream, line))
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        with anyio.fail_after(timeout):
            while not predicate():
                await self._changed.wait()


# ----------------------------------------------------------------- construction


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (
            [aproc.ChildSpec("a", ["true"]), aproc.ChildSpec("a", ["false"])],
            "duplicate child names: a",
        ),
        (
            [aproc.ChildSpec("w", ["true"], numprocs=2), aproc.ChildSpec("w.2", ["true"])],
            "duplicate child names: w.2",
        ),
        (
            [aproc.ChildSpec("app", ["true"], depends_on=["db"])],
            "child 'app' depends on unknown child 'db'",
        ),
        (
            [
                aproc.ChildSpec("a", ["true"], depends_on=["b"]),
                aproc.ChildSpec("b", ["true"], depends_on=["c"]),
                aproc.ChildSpec("c", ["true"], depends_on=["a"]),
            ],
            "dependency cycle: a -> b -> c -> a",
        ),
    ],
    ids=["duplicate", "duplicate-instance", "unknown-dependency", "cycle"],
)
def test_invalid_children_are_value_errors(specs: list[aproc.ChildSpec], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        aproc.Supervisor(specs)


def test_invalid_child_specs() -> None:
    with pytest.raises(ValueError, match="'a' depends on itself"):
        aproc.ChildSpec("a", ["true"], depends_on=["a"])
    with pytest.raises(TypeError, match="not a string"):
        aproc.ChildSpec("a", "sleep 60")
    with pytest.raises(ValueError, match="argv must not be empty"):
        aproc.ChildSpec("a", [])
    with pytest.raises(ValueError, match="numprocs"):
        aproc.ChildSpec("a", ["true"], numprocs=0)
    with pytest.raises(ValueError, match="name"):
        aproc.ChildSpec("a b", ["true"])
    with pytest.raises(TypeError, match="ChildSpec"):
        aproc.Supervisor([("a", ["true"])])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="max_restarts"):
        aproc.Supervisor([], max_restarts=-1)


# ----------------------------------------------------------------- status


async def test_status_snapshots(logs: Events) -> None:
    before = time.time()
    sup = aproc.Supervisor(sleepers("a", "b"))
    with anyio.fail_after(10):
        async with sup:
            running = sup.status()
            assert [s.name for s in running] == ["a", "b"]
            for s in running:
                assert isinstance(s, aproc.ChildStatus)
                assert (s.state, s.restarts, s.returncode) == ("running", 0, None)
                assert s.pid is not None
                assert proc_state(s.pid) in ("S", "R")
                assert before <= s.since <= time.time()
            assert running[0].pid != running[1].pid
            # A snapshot is a snapshot: frozen, and not updated behind the caller's back.
            with pytest.raises(AttributeError):
                running[0].state = "failed"  # type: ignore[misc]
            assert [(e["name"], e["pid"]) for e in named(logs, "child.ready")] == [
                ("a", running[0].pid),
                ("b", running[1].pid),
            ]
    stopped = sup.status()
    assert [(s.name, s.state, s.pid, s.returncode) for s in stopped] == [
        ("a", "stopped", None, -signal.SIGTERM),
        ("b", "stopped", None, -signal.SIGTERM),
    ]
    assert all(old.since <= new.since for old, new in zip(running, stopped, strict=True))
    assert running[0].state == "running"
    assert "a=stopped" in repr(sup)


async def test_numprocs_names_instances() -> None:
    spec = aproc.ChildSpec("w", ["sleep", "60"], numprocs=3)
    with anyio.fail_after(10):
        async with aproc.Supervisor([spec, *sleepers("x")]) as sup:
            status = sup.status()
            assert [(s.name, s.state) for s in status] == [
                ("w.1", "running"),
                ("w.2", "running"),
                ("w.3", "running"),
                ("x", "running"),
            ]
            assert len({s.pid for s in status}) == 4


# ----------------------------------------------------------------- stopping


async def test_children_stop_in_reverse_start_order(logs: Events) -> None:
    # "c" is listed first but depends on "b", so "b" starts first: start order is b, c, a.
    specs = [
        aproc.ChildSpec("c", ["sleep", "60"], depends_on=["b"]),
        *sleepers("a", "b"),
    ]
    with anyio.fail_after(10):
        async with aproc.Supervisor(specs) as sup:
            assert [s.name for s in sup.status()] == ["b", "c", "a"]
            assert [e["name"] for e in named(logs, "child.starting")] == ["b", "c", "a"]
            pids = [s.pid for s in sup.status()]
            mark = len(logs)
    assert lifecycle(logs, mark) == [
        ("child.stopping", "a"),
        ("child.stopped", "a"),
        ("child.stopping", "c"),
        ("child.stopped", "c"),
        ("child.stopping", "b"),
        ("child.stopped", "b"),
    ]
    stopped = [e for e in logs[mark:] if e["event"] == "child.stopped"]
    assert [(e["pid"], e["returncode"]) for e in stopped] == [
        (pids[2], -15),
        (pids[1], -15),
        (pids[0], -15),
    ]
    for pid in pids:
        assert pid is not None
        assert proc_state(pid) is None


async def test_stop_escalates_to_sigkill_and_takes_grandchildren(
    logs: Events,
) -> None:
    # The shell and its background grandchild both ignore SIGTERM.
    script = 'trap "" TERM; sleep 60 & echo $!; wait'
    spec = aproc.ChildSpec(
        "stubborn", ["sh", "-c", script], stop_timeout=0.3, ready=aproc.Ready.line(r"^\d+$")
    )
    lines = Lines()
    with anyio.fail_after(10):
        async with aproc.Supervisor([spec], on_output=lines) as sup:
            pid = sup.status()[0].pid
            assert pid is not None
            grandchild = int(lines.lines[0][2])
            assert proc_state(grandchild) in ("S", "R")
            assert sig_ignored(pid, signal.SIGTERM)
            assert sig_ignored(grandchild, signal.SIGTERM)
            left = anyio.current_time()
        took = anyio.current_time() - left
    assert 0.3 <= took < 5
    assert await wait_gone(grandchild) in (None, "Z")
    assert proc_state(pid) is None
    (stopping,) = named(logs, "child.stopping")
    assert (stopping["name"], stopping["pid"], stopping["signal"], stopping["timeout"]) == (
        "stubborn",
        pid,
        "SIGTERM",
        0.3,
    )
    (stopped,) = named(logs, "child.stopped")
    assert (stopped["name"], stopped["pid"], stopped["returncode"]) == ("stubborn", pid, -9)
    assert sup.status()[0].state == "stopped"


async def test_stop_takes_grandchildren_that_obey_the_stop_signal() -> None:
    # The shell waits for its grandchild; a stop of the leader alone would leave the sleep.
    lines = Lines()
    spec = aproc.ChildSpec(
        "tree", ["sh", "-c", "sleep 60 & echo $!; wait"], ready=aproc.Ready.line(r"^\d+$")
    )
    with anyio.fail_after(10):
        async with aproc.Supervisor([spec], on_output=lines):
            grandchild = int(lines.lines[0][2])
    assert await wait_gone(grandchild) in (None, "Z")


async def test_a_crashed_childs_leftover_group_is_killed_before_the_restart(
    tmp_path: Path,
) -> None:
    # The first run leaves a background job behind and crashes; it must not outlive its
    # service (nor hold its port when the service comes back).
    script = 'if [ -e "$1" ]; then exec sleep 60; fi; : > "$1"; sleep 60 & echo $!; exit 1'
    lines = Lines()
    spec = aproc.ChildSpec("svc", ["sh", "-c", script, "sh", str(tmp_path / "ran")], backoff=QUICK)
    with anyio.fail_after(10):
        async with aproc.Supervisor([spec], on_output=lines) as sup:
            await lines.wait_for(lambda: len(lines.lines) == 1)
            grandchild = int(lines.lines[0][2])
            await wait_for(lambda: sup.status()[0].restarts == 1)
            await wait_for(lambda: replaced(sup.status()[0], None))
            assert await wait_gone(grandchild) in (None, "Z")
            assert sup.status()[0].state == "running"


async def test_a_finished_childs_leftover_group_is_killed() -> None:
    lines = Lines()
    spec = aproc.ChildSpec("job", ["sh", "-c", "sleep 60 & echo $!; exit 0"], restart="temporary")
    with anyio.fail_after(10):
        async with aproc.Supervisor([spec], on_output=lines) as sup:
            await sup.wait()
            assert await wait_gone(int(lines.lines[0][2])) in (None, "Z")
            assert (sup.status()[0].state, sup.status()[0].returncode) == ("exited", 0)


async def test_custom_stop_signal(logs: Events) -> None:
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGINT, lambda *_: sys.exit(0))\n"
        "print('armed')\n"
        "time.sleep(60)\n"
    )
    spec = aproc.ChildSpec(
        "polite", python(code), stop_signal=signal.SIGINT, ready=aproc.Ready.line("armed")
    )
    with anyio.fail_after(10):
        async with aproc.Supervisor([spec]):
            pass
    (stopping,) = named(logs, "child.stopping")
    assert stopping["signal"] == "SIGINT"
    (stopped,) = named(logs, "child.stopped")
    assert stopped["returncode"] == 0


# ----------------------------------------------------------------- operator actions


@pytest.mark.parametrize("strategy", ["one_for_one", "one_for_all", "rest_for_one"])
async def test_operator_stop_is_not_restarted(strategy: Any, logs: Events) -> None:
    sup = aproc.Supervisor(sleepers("a", "b"), strategy=strategy)
    with anyio.fail_after(10):
        async with sup:
            old = by_name(sup)
            mark = len(logs)
            await sup.stop_child("b")
            assert lifecycle(logs, mark) == [("child.stopping", "b"), ("child.stopped", "b")]
            b = by_name(sup)["b"]
            assert (b.state, b.pid, b.returncode, b.restarts) == ("stopped", None, -15, 0)
            assert proc_state(old["b"].pid) is None  # type: ignore[arg-type]
            # A crash of "a" restarts what the strategy says, but never the held "b".
            os.kill(old["a"].pid, signal.SIGKILL)  # type: ignore[arg-type]
            await wait_for(lambda: replaced(by_name(sup)["a"], old["a"].pid))
            assert by_name(sup)["b"].state == "stopped"
            assert by_name(sup)["b"].pid is None
            assert ("child.starting", "b") not in lifecycle(logs, mark)
            # wait() returns once every child is stopped.
            await sup.stop_child("a")
            await sup.wait()
            assert [s.state for s in sup.status()] == ["stopped", "stopped"]
            # start_child brings a stopped child back; the supervisor is live again.
            await sup.start_child("b")
            b = by_name(sup)["b"]
            assert b.state == "running"
            assert b.pid is not None
            assert b.pid != old["b"].pid
            assert by_name(sup)["a"].state == "stopped"
    assert not [e for e in logs if e["event"] == "child.restarting" and e["name"] == "b"]


@pytest.mark.parametrize("strategy", ["one_for_one", "one_for_all", "rest_for_one"])
async def test_operator_stop_racing_a_crash(strategy: Any, logs: Events) -> None:
    # The child dies just as the operator stops it: whichever the supervisor sees first, the
    # operator's stop wins and the child stays stopped.
    sup = aproc.Supervisor(sleepers("a", "b"), strategy=strategy)
    with anyio.fail_after(10):
        async with sup:
            old = by_name(sup)["a"].pid
            assert old is not None
            os.kill(old, signal.SIGKILL)
            await sup.stop_child("a")
            a = by_name(sup)["a"]
            assert (a.state, a.pid, a.returncode) == ("stopped", None, -signal.SIGKILL)
            await sup.stop_child("b")
            await sup.wait()
            assert [s.state for s in sup.status()] == ["stopped", "stopped"]
    assert [e["name"] for e in named(logs, "child.starting")].count("a") == 1


async def test_operator_stop_after_a_crash_was_seen(logs: Events) -> None:
    # The crash is seen first (the background job holds the output pipe, so the exit is being
    # drained for a while); the operator's stop still wins.
    slow = aproc.Backoff(initial=30, jitter=0)
    spec = aproc.ChildSpec("a", ["sh", "-c", "sleep 60 & exec sleep 60"], backoff=slow)
    with anyio.fail_after(10):
        async with aproc.Supervisor([spec]) as sup:
            old = sup.status()[0].pid
            assert old is not None
            os.kill(old, signal.SIGKILL)
            await wait_for(lambda: sup.status()[0].state != "running")
            await sup.stop_child("a")
            a = sup.status()[0]
            assert (a.state, a.pid, a.returncode) == ("stopped", None, -signal.SIGKILL)
            await sup.wait()
    assert [e["name"] for e in named(logs, "child.starting")] == ["a"]


async def test_operator_stop_of_a_finished_child(logs: Events) -> None:
    spec = aproc.ChildSpec("job", ["sh", "-c", "exit 4"], restart="temporary")
    with anyio.fail_after(10):
        async with aproc.Supervisor([spec]) as sup:
            await sup.wait()
            assert sup.status()[0].state == "exited"
            await sup.stop_child("job")
            job = sup.status()[0]
            assert (job.state, job.pid, job.returncode) == ("stopped", None, 4)
            await sup.start_child("job")
            await sup.wait()
            assert sup.status()[0].state == "exited"
    assert not named(logs, "child.stopping")
    assert [e["name"] for e in named(logs, "child.starting")] == ["job", "job"]


async def test_stop_child_racing_start_child() -> None:
    # stop_child() may run after start_child() has scheduled the child's runner but before the
    # runner has run: the stop must still take effect, not wait for a child nobody stops.
    with anyio.fail_after(20):
        async with aproc.Supervisor(sleepers("a")) as sup:
            for _ in range(10):
                await sup.stop_child("a")
                with anyio.fail_after(2):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(sup.start_child, "a")
                        await anyio.lowlevel.checkpoint()
                        await sup.stop_child("a")
                a = sup.status()[0]
                # Whichever call the scheduler ran last wins.
                assert (a.state, a.pid is None) in (("stopped", True), ("running", False))


async def test_operator_stop_during_backoff(logs: Events) -> None:
    slow = aproc.Backoff(initial=30, jitter=0)
    specs = [aproc.ChildSpec("bad", ["sh", "-c", "exit 1"], backoff=slow), *sleepers("ok")]
    with anyio.fail_after(10):
        async with aproc.Supervisor(specs) as sup:
            await wait_for(lambda: by_name(sup)["bad"].state == "backoff")
            with anyio.fail_after(2):  # not after the 30 s backoff
                await sup.stop_child("bad")
            assert by_name(sup)["bad"].state == "stopped"
            assert by_name(sup)["ok"].state == "running"
    assert [e["name"] for e in named(logs, "child.starting")] == ["bad", "ok"]


async def test_start_child_of_a_running_child_is_a_no_op(logs: Events) -> None:
    with anyio.fail_after(10):
        async with aproc.Supervisor(sleepers("a")) as sup:
            pid = sup.status()[0].pid
            await sup.start_child("a")
            assert sup.status()[0].pid == pid
            with pytest.raises(KeyError, match="nope"):
                await sup.start_child("nope")
            with pytest.raises(KeyError, match="nope"):
                await sup.stop_child("nope")
    assert len(named(logs, "child.starting")) == 1


async def test_restart_child_gives_a_new_pid(logs: Events) -> None:
    with anyio.fail_after(10):
        async with aproc.Supervisor(sleepers("a", "b")) as sup:
            old = by_name(sup)
            mark = len(logs)
            await sup.restart_child("a")
            new = by_name(sup)
            assert new["a"].state == "running"
            assert new["a"].pid not in (None, old["a"].pid)
            assert new["b"].pid == old["b"].pid
            assert lifecycle(logs, mark) == [
                ("child.stopping", "a"),
                ("child.stopped", "a"),
                ("child.starting", "a"),
                ("child.ready", "a"),
            ]
            # restart_child also starts a child an operator had stopped.
            await sup.stop_child("b")
            await sup.restart_child("b")
            assert by_name(sup)["b"].state == "running"
    assert proc_state(old["a"].pid) is None  # type: ignore[arg-type]


async def test_one_slow_stop_does_not_block_other_operations(
    logs: Events,
) -> None:
    # PITFALLS.md 24: no global lock; a child taking its time to stop holds up no one else.
    script = 'trap "" TERM; echo up; while :; do sleep 1; done'
    specs = [
        aproc.ChildSpec("slow", ["sh", "-c", script], stop_timeout=1, ready=aproc.Ready.line("up")),
        *sleepers("fast"),
    ]
    with anyio.fail_after(10):
        async with aproc.Supervisor(specs) as sup, anyio.create_task_group() as tg:
            tg.start_soon(sup.stop_child, "slow")
            await wait_for(lambda: by_name(sup)["slow"].state == "stopping")
            fast = by_name(sup)["fast"].pid
            with anyio.fail_after(0.8):  # well within the slow child's 1 s stop timeout
                await sup.restart_child("fast")
            assert by_name(sup)["fast"].pid != fast
            assert by_name(sup)["slow"].state == "stopping"
    assert by_name(sup)["slow"].state == "stopped"
    assert named(logs, "child.stopped")[-2]["name"] == "slow"


async def test_add_and_remove_children(logs: Events) -> None:
    with anyio.fail_after(10):
        async with aproc.Supervisor(sleepers("a")) as sup:
            await sup.add_child(aproc.ChildSpec("b", ["sleep", "60"], depends_on=["a"]))
            await sup.add_child(aproc.ChildSpec("w", ["sleep", "60"], numprocs=2))
            assert [(s.name, s.state) for s in sup.status()] == [
                ("a", "running"),
                ("b", "running"),
                ("w.1", "running"),
                ("w.2", "running"),
            ]
            with pytest.raises(ValueError, match="'a' already exists"):
                await sup.add_child(aproc.ChildSpec("a", ["true"]))
            with pytest.raises(ValueError, match=r"'w\.1' already exists"):
                await sup.add_child(aproc.ChildSpec("w.1", ["true"]))
            with pytest.raises(ValueError, match="'c' depends on unknown child 'nope'"):
                await sup.add_child(aproc.ChildSpec("c", ["true"], depends_on=["nope"]))
            gone = {s.name: s.pid for s in sup.status()}
            mark = len(logs)
            await sup.remove_child("w")  # a numprocs group, by its name
            await sup.remove_child("b")
            assert [s.name for s in sup.status()] == ["a"]
            assert lifecycle(logs, mark) == [
                ("child.stopping", "w.2"),
                ("child.stopped", "w.2"),
                ("child.stopping", "w.1"),
                ("child.stopped", "w.1"),
                ("child.stopping", "b"),
                ("child.stopped", "b"),
            ]
            for name in ("b", "w.1", "w.2"):
                assert proc_state(gone[name]) is None  # type: ignore[arg-type]
            with pytest.raises(KeyError, match="nope"):
                await sup.remove_child("nope")
            # Removing the last child leaves nothing to run.
            await sup.remove_child("a")
            assert sup.status() == []
            await sup.wait()
            # And a child added afterwards runs again.
            await sup.add_child(aproc.ChildSpec("late", ["sleep", "60"]))
            assert [(s.name, s.state) for s in sup.status()] == [("late", "running")]
    assert [e["name"] for e in named(logs, "child.stopped")][-1] == "late"


async def test_removed_child_is_not_restarted_by_a_group_restart(
    logs: Events,
) -> None:
    with anyio.fail_after(10):
        async with aproc.Supervisor(sleepers("a", "b", "c"), strategy="one_for_all") as sup:
            await sup.remove_child("c")
            old = by_name(sup)
            os.kill(old["a"].pid, signal.SIGKILL)  # type: ignore[arg-type]
            await wait_for(lambda: all(replaced(s, old[s.name].pid) for s in sup.status()))
            assert [s.name for s in sup.status()] == ["a", "b"]
    assert [e["name"] for e in named(logs, "child.starting")] == ["a", "b", "c", "a", "b"]


# ----------------------------------------------------------------- output


async def test_output_callback_and_output_events(logs: Events) -> None:
    lines = Lines()
    script = "echo out1; echo err1 >&2; echo out2; exec sleep 60"
    spec = aproc.ChildSpec("talker", ["sh", "-c", script])
    with anyio.fail_after(10):
        async with aproc.Supervisor([spec], on_output=lines):
            await lines.wait_for(lambda: len(lines.lines) == 3)
    assert [line for line in lines.lines if line[1] == "stdout"] == [
        ("talker", "stdout", b"out1"),
        ("talker", "stdout", b"out2"),
    ]
    assert [line for line in lines.lines if line[1] == "stderr"] == [
        ("talker", "stderr", b"err1"),
    ]
    output = [(e["name"], e["stream"], e["line"]) for e in named(logs, "child.output")]
    assert sorted(output) == [
        ("talker", "stderr", "err1"),
        ("talker", "stdout", "out1"),
        ("talker", "stdout", "out2"),
    ]


async def test_output_written_just_before_exit_is_delivered() -> None:
    lines = Lines()
    spec = aproc.ChildSpec(
        "last", ["sh", "-c", "printf 'a\\nno newline'; exit 0"], restart="transient"
    )
    with anyio.fail_after(10):
        async with aproc.Supervisor([spec], on_output=lines) as sup:
            await sup.wait()
    assert lines.lines == [("last", "stdout", b"a"), ("last", "stdout", b"no newline")]


@pytest.mark.parametrize("how", ["stop_child", "shutdown"])
async def test_output_written_while_being_stopped_is_delivered(how: str) -> None:
    # The child says goodbye on SIGTERM: a stop must not cut the output pumps off before they
    # have read it.
    lines = Lines()
    script = 'trap "echo bye; exit 0" TERM; echo ready; while :; do sleep 0.05; done'
    spec = aproc.ChildSpec("polite", ["sh", "-c", script])
    with anyio.fail_after(10):
        async with aproc.Supervisor([spec], on_output=lines, log_output=False) as sup:
            await lines.wait_for(lambda: ("polite", "stdout", b"ready") in lines.lines)
            if how == "stop_child":
                await sup.stop_child("polite")
    # (The group's `sleep` dies of the TERM too, and sh may say so on stderr.)
    stdout = [line for line in lines.lines if line[1] == "stdout"]
    assert stdout == [("polite", "stdout", b"ready"), ("polite", "stdout", b"bye")]


async def test_log_output_false_keeps_the_callback(logs: Events) -> None:
    lines = Lines()
    spec = aproc.ChildSpec("quiet", ["sh", "-c", "echo hi; exec sleep 60"])
    with anyio.fail_after(10):
        async with aproc.Supervisor([spec], on_output=lines, log_output=False):
            await lines.wait_for(lambda: len(lines.lines) == 1)
    assert lines.lines == [("quiet", "stdout", b"hi")]
    assert not named(logs, "child.output")


async def test_capture_output_false_inherits_our_stdout(logs: Events) -> None:
    lines = Lines()
    spec = aproc.ChildSpec(
        "inherit", ["sh", "-c", "echo hi"], capture_output=False, restart="transient"
    )
    with anyio.fail_after(10):
        async with aproc.Supervisor([spec], on_output=lines) as sup:
            await sup.wait()
    assert lines.lines == []
    assert not named(logs, "child.output")
    assert sup.status()[0].returncode == 0


async def test_python_children_are_unbuffered_by_default(
    logs: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    # The line must arrive while the child still runs: only an unbuffered child sends it.
    code = (
        "import os, time\nprint('unbuffered', os.environ.get('PYTHONUNBUFFERED'))\ntime.sleep(60)"
    )
    spec = aproc.ChildSpec("py", python(code), ready=aproc.Ready.line("^unbuffered"))
    with anyio.fail_after(10):
        async with aproc.Supervisor([spec]) as sup:
            assert sup.status()[0].state == "running"
    assert [e["line"] for e in named(logs, "child.output")] == ["unbuffered 1"]


async def test_python_unbuffered_false_leaves_the_environment_alone(
    logs: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    code = "import os\nprint('unbuffered', os.environ.get('PYTHONUNBUFFERED'))"
    spec = aproc.ChildSpec("py", python(code), python_unbuffered=False, restart="transient")
    with anyio.fail_after(10):
        async with aproc.Supervisor([spec]) as sup:
            await sup.wait()
    assert [e["line"] for e in named(logs, "child.output")] == ["unbuffered None"]


async def test_env_and_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APROC_TEST_INHERITED", "from-parent")
    monkeypatch.setenv("APROC_TEST_OVERRIDDEN", "from-parent")
    lines = Lines()
    spec = aproc.ChildSpec(
        "env",
        ["sh", "-c", 'echo "$APROC_TEST_INHERITED $APROC_TEST_OVERRIDDEN $(pwd)"'],
        env={"APROC_TEST_OVERRIDDEN": "from-spec"},
        cwd=str(tmp_path),
        restart="transient",
    )
    with anyio.fail_after(10):
        async with aproc.Supervisor([spec], on_output=lines) as sup:
            await sup.wait()
    assert lines.lines == [("env", "stdout", f"from-parent from-spec {tmp_path}".encode())]


async def test_missing_program_is_a_failed_start(logs: Events) -> None:
    spec = aproc.ChildSpec("ghost", ["/nonexistent/program"], backoff=QUICK)
    with anyio.fail_after(10), pytest.raises(aproc.SupervisorGaveUp) as info:
        async with aproc.Supervisor([spec], max_restarts=1) as sup:
            await sup.wait()
    assert (info.value.child, info.value.restarts, info.value.returncode) == ("ghost", 2, None)
    failed = named(logs, "child.start_failed")
    assert len(failed) == 2
    assert failed[0]["name"] == "ghost"
    assert "No such file or directory" in failed[0]["error"]
    assert sup.status()[0].state == "failed"


# ----------------------------------------------------------------- lifecycle events


async def test_lifecycle_events(tmp_path: Path, logs: Events) -> None:
    marker = tmp_path / "ran"
    script = 'if [ -e "$1" ]; then exec sleep 60; fi; : > "$1"; exit 3'
    spec = aproc.ChildSpec("svc", ["sh", "-c", script, "sh", str(marker)], backoff=QUICK)
    with anyio.fail_after(10):
        async with aproc.Supervisor([spec]) as sup:
            await wait_for(lambda: sup.status()[0].restarts == 1)
            await wait_for(lambda: sup.status()[0].state == "running")
            second = sup.status()[0].pid
    spawned = [e["pid"] for e in named(logs, "process.spawned")]
    assert len(spawned) == 2
    first = spawned[0]
    assert spawned[1] == second
    events = [
        {k: v for k, v in e.items() if k not in ("timestamp",)}
        for e in logs
        if e["event"] in LIFECYCLE
    ]
    assert events == [
        {"event": "child.starting", "name": "svc", "attempt": 1, "log_level": "info"},
        {"event": "child.ready", "name": "svc", "pid": first, "log_level": "info"},
        {
            "event": "child.exited",
            "name": "svc",
            "pid": first,
            "returncode": 3,
            "signal": None,
            "log_level": "warning",
        },
        {
            "event": "child.restarting",
            "name": "svc",
            "attempt": 1,
            "delay": 0.01,
            "strategy": "one_for_one",
            "log_level": "info",
        },
        {"event": "child.starting", "name": "svc", "attempt": 2, "log_level": "info"},
        {"event": "child.ready", "name": "svc", "pid": second, "log_level": "info"},
        {
            "event": "child.stopping",
            "name": "svc",
            "pid": second,
            "signal": "SIGTERM",
            "timeout": 10.0,
            "log_level": "info",
        },
        {
            "event": "child.stopped",
            "name": "svc",
            "pid": second,
            "returncode": -15,
            "log_level": "info",
        },
    ]
    exited = named(logs, "process.exited")
    assert [(e["pid"], e["returncode"]) for e in exited] == [(first, 3), (second, -15)]


async def test_restarting_the_only_child_does_not_end_wait() -> None:
    # restart_child() stops the child before starting it again: for that moment every child
    # is stopped, which must not make wait() return.
    spec = aproc.ChildSpec("only", ["sleep", "60"])
    with anyio.fail_after(10):
        async with aproc.Supervisor([spec]) as sup:
            waited = anyio.Event()

            async def waiter() -> None:
                await sup.wait()
                waited.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await anyio.lowlevel.checkpoint()
                await sup.restart_child("only")
                await anyio.lowlevel.checkpoint()
                assert not waited.is_set()
                assert sup.status()[0].state == "running"
                await sup.stop_child("only")
                await waited.wait()


# A grandchild that leaves the service's process group (a group kill misses it) but stays in
# its session, as a daemon started with job control does.
LEAVE_GROUP = "import os, time; os.setpgid(0, 0); print(os.getpid(), flush=True); time.sleep(60)"


async def test_a_daemon_that_left_the_group_dies_with_its_service(logs: Events) -> None:
    lines = Lines()
    script = f"{sys.executable} -c '{LEAVE_GROUP}' & wait"
    spec = aproc.ChildSpec("daemonish", ["sh", "-c", script], stop_timeout=2)
    with anyio.fail_after(15):
        async with aproc.Supervisor([spec], on_output=lines) as sup:
            await lines.wait_for(lambda: any(line[1] == "stdout" for line in lines.lines))
            gpid = int(next(line[2] for line in lines.lines if line[1] == "stdout"))
            leader = by_name(sup)["daemonish"].pid
            assert leader is not None
            assert os.getpgid(gpid) == gpid
            assert os.getsid(gpid) == leader
    assert await wait_gone(gpid) in (None, "Z")
    assert [e["pids"] for e in named(logs, "child.leftovers_killed")] == [[gpid]]


def test_subreaper_adopts_and_reaps_what_its_services_leave() -> None:
    # In a process of its own: becoming a subreaper is process-wide, and this test process
    # must not start adopting every other test's orphans.
    script = f"""
import anyio, aproc, os, sys
from aproc.primitives import children_of

async def main():
    pids = []
    def on_output(name, stream, line):
        if stream == "stdout":
            pids.append(int(line))
    # The service starts a daemon that leaves its group, and exits: the daemon is re-parented
    # to the subreaper, and killed and reaped when the service's end is handled.
    spec = aproc.ChildSpec(
        "svc", ["sh", "-c", "{sys.executable} -c '{LEAVE_GROUP}' & sleep 0.5"],
        restart="temporary",
    )
    async with aproc.Supervisor([spec], on_output=on_output, subreaper=True) as sup:
        await sup.wait()
    assert pids, "the daemon never reported"
    print("children left:", [p.pid for p in children_of(os.getpid())])

anyio.run(main)
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "children left: []"
