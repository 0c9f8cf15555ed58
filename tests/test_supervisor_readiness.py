"""Readiness: a line on the output, a TCP port, sd_notify READY=1; the start timeout; dependents
started only once their dependencies are ready; the sd_notify watchdog (PITFALLS.md 24)."""

from __future__ import annotations

import socket
from typing import Any

import anyio
import pytest
from supervisor_support import (
    QUICK,
    Events,
    anyio_backend,  # noqa: F401 (fixture)
    named,
    python,
    wait_for,
)

import aproc
from aproc.readiness import ReadyCheck

pytestmark = pytest.mark.anyio


def index_of(logs: Events, event: str, **fields: Any) -> int:
    """Index of the first captured event named ``event`` whose fields include ``fields``."""
    for i, entry in enumerate(logs):
        if entry["event"] == event and all(entry.get(k) == v for k, v in fields.items()):
            return i
    raise AssertionError(f"no {event} event with {fields} in {logs}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class StatesAtLine:
    """An on_output callback that records every child's state when ``line`` arrives."""

    def __init__(self, line: bytes) -> None:
        self.line = line
        self.sup: aproc.Supervisor | None = None
        self.states: dict[str, str] | None = None

    def __call__(self, name: str, stream: str, line: bytes) -> None:
        if line == self.line and self.states is None:
            assert self.sup is not None
            self.states = {s.name: s.state for s in self.sup.status()}


async def check_gating(
    logs: Events, dependency: aproc.ChildSpec, marker: bytes
) -> aproc.Supervisor:
    """Run ``dependency`` (which prints ``marker`` before it gets ready) and a dependent listed
    before it; check the dependent starts only after the dependency's child.ready."""
    app = aproc.ChildSpec("app", ["sleep", "60"], depends_on=[dependency.name])
    recorder = StatesAtLine(marker)
    sup = aproc.Supervisor([app, dependency], on_output=recorder)
    recorder.sup = sup
    with anyio.fail_after(10):
        async with sup:
            # `async with` returned after starting both, dependency first.
            assert [(s.name, s.state) for s in sup.status()] == [
                (dependency.name, "running"),
                ("app", "running"),
            ]
            pid = sup.status()[0].pid
    # While the dependency was still getting ready, the dependent had not been started.
    assert recorder.states == {dependency.name: "starting", "app": "stopped"}
    ready = index_of(logs, "child.ready", name=dependency.name)
    assert logs[ready]["pid"] == pid
    assert index_of(logs, "child.starting", name=dependency.name) < ready
    assert ready < index_of(logs, "child.starting", name="app")
    return sup


async def test_line_readiness_gates_dependent(logs: Events) -> None:
    db = aproc.ChildSpec(
        "db",
        ["sh", "-c", "echo booting; sleep 0.2; echo 'db is ready'; exec sleep 60"],
        ready=aproc.Ready.line(r"is ready$"),
    )
    await check_gating(logs, db, b"booting")
    line = index_of(logs, "child.output", name="db", line="db is ready")
    assert line < index_of(logs, "child.ready", name="db")


async def test_line_readiness_on_a_chosen_stream(logs: Events) -> None:
    # "ready" on stdout does not count when the check watches stderr.
    script = "echo ready; sleep 0.2; echo ready >&2; exec sleep 60"
    spec = aproc.ChildSpec("s", ["sh", "-c", script], ready=aproc.Ready.line("ready", "stderr"))
    with anyio.fail_after(10):
        async with aproc.Supervisor([spec]) as sup:
            assert sup.status()[0].state == "running"
    on_stdout = index_of(logs, "child.output", name="s", stream="stdout", line="ready")
    on_stderr = index_of(logs, "child.output", name="s", stream="stderr", line="ready")
    ready = index_of(logs, "child.ready", name="s")
    assert on_stdout < on_stderr < ready


def test_ready_line_constructor() -> None:
    check = aproc.Ready.line("up (v\\d+)")
    assert check.stream == "any"
    assert check.matches("stdout", b"server up v12 now")
    assert check.matches("stderr", b"up v1")
    assert not check.matches("stdout", b"up vx")
    only_err = aproc.Ready.line(b"up", "stderr")
    assert not only_err.matches("stdout", b"up")
    assert only_err.matches("stderr", b"up")
    with pytest.raises(ValueError, match="stdin"):
        aproc.Ready.line("x", "stdin")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="70000"):
        aproc.Ready.tcp(70000)
    with pytest.raises(ValueError, match="line readiness check needs capture_output"):
        aproc.ChildSpec("x", ["true"], ready=aproc.Ready.line("x"), capture_output=False)


async def test_tcp_readiness_gates_dependent(logs: Events) -> None:
    port = free_port()
    code = (
        "import socket, time\n"
        "print('binding', flush=True)\n"
        "time.sleep(0.3)\n"
        "s = socket.socket()\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('127.0.0.1', {port}))\n"
        "s.listen()\n"
        "time.sleep(60)\n"
    )
    srv = aproc.ChildSpec("srv", python(code), ready=aproc.Ready.tcp(port))
    app = aproc.ChildSpec("app", ["sleep", "60"], depends_on=["srv"])
    recorder = StatesAtLine(b"binding")
    sup = aproc.Supervisor([app, srv], on_output=recorder)
    recorder.sup = sup
    with anyio.fail_after(10):
        async with sup:
            # child.ready meant the port was accepting: it still is.
            stream = await anyio.connect_tcp("127.0.0.1", port)
            await stream.aclose()
            assert [s.state for s in sup.status()] == ["running", "running"]
    assert recorder.states == {"srv": "starting", "app": "stopped"}
    assert index_of(logs, "child.ready", name="srv") < index_of(logs, "child.starting", name="app")


async def test_notify_readiness_gates_dependent(
    logs: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Our own NOTIFY_SOCKET (we might run under systemd) must not leak to other children.
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify")
    code = (
        "import os, socket, time\n"
        "print('booting', flush=True)\n"
        "time.sleep(0.2)\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
        "s.sendto(b'STATUS=warming up\\nREADY=1', os.environ['NOTIFY_SOCKET'])\n"
        "time.sleep(60)\n"
    )
    svc = aproc.ChildSpec("svc", python(code), ready=aproc.Ready.notify())
    await check_gating(logs, svc, b"booting")


async def test_notify_socket_only_for_children_that_use_it(
    logs: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify")
    code = (
        "import os, time\n"
        "print(os.environ.get('NOTIFY_SOCKET'), os.environ.get('WATCHDOG_USEC'))\n"
        "time.sleep(60)\n"
    )
    plain = aproc.ChildSpec("plain", python(code), ready=aproc.Ready.line("None None"))
    with anyio.fail_after(10):
        async with aproc.Supervisor([plain]) as sup:
            assert sup.status()[0].state == "running"
    assert index_of(logs, "child.output", name="plain", line="None None") >= 0


@pytest.mark.parametrize("kind", ["line", "tcp", "notify"])
async def test_start_timeout_is_a_failed_start(kind: str, logs: Events) -> None:
    checks: dict[str, ReadyCheck] = {
        "line": aproc.Ready.line("never printed"),
        "tcp": aproc.Ready.tcp(free_port()),
        "notify": aproc.Ready.notify(),
    }
    spec = aproc.ChildSpec(
        "slow", ["sleep", "60"], ready=checks[kind], start_timeout=0.3, backoff=QUICK
    )
    started = anyio.current_time()
    with anyio.fail_after(10), pytest.raises(aproc.SupervisorGaveUp) as info:
        async with aproc.Supervisor([spec], max_restarts=1, max_seconds=10) as sup:
            await sup.wait()
    # Two starts of 0.3 s each, both stopped (SIGTERM), one restart in between, then give-up.
    assert anyio.current_time() - started >= 0.6
    failed = named(logs, "child.start_failed")
    assert [(e["name"], e["error"]) for e in failed] == [("slow", "not ready within 0.3 s")] * 2
    exited = named(logs, "child.exited")
    assert [e["pid"] for e in exited] == [e["pid"] for e in failed]
    assert [(e["returncode"], e["signal"]) for e in exited] == [(-15, "SIGTERM")] * 2
    assert len(named(logs, "child.restarting")) == 1
    assert not named(logs, "child.ready")
    assert (info.value.child, info.value.restarts, info.value.returncode) == ("slow", 2, -15)
    assert sup.status()[0].state == "failed"


async def test_exit_before_ready_is_a_failed_start(logs: Events) -> None:
    spec = aproc.ChildSpec("early", ["sh", "-c", "exit 2"], ready=aproc.Ready.line("up"))
    with anyio.fail_after(10), pytest.raises(aproc.SupervisorGaveUp) as info:
        async with aproc.Supervisor([spec], max_restarts=0) as sup:
            await sup.wait()
    (failed,) = named(logs, "child.start_failed")
    assert (failed["name"], failed["error"]) == ("early", "exited before it was ready")
    assert (info.value.restarts, info.value.returncode) == (1, 2)


async def test_dependent_of_a_never_ready_child_is_never_started(
    logs: Events,
) -> None:
    db = aproc.ChildSpec(
        "db", ["sleep", "60"], ready=aproc.Ready.line("never"), start_timeout=0.2, backoff=QUICK
    )
    app = aproc.ChildSpec("app", ["sleep", "60"], depends_on=["db"])
    sup = aproc.Supervisor([db, app], max_restarts=1)
    with anyio.fail_after(10), pytest.raises(aproc.SupervisorGaveUp) as info:
        async with sup:
            pytest.fail("entered although a dependency never got ready")
    assert info.value.child == "db"
    assert not [e for e in logs if e.get("name") == "app"]
    assert [(s.name, s.state) for s in sup.status()] == [("db", "failed"), ("app", "stopped")]


async def test_dependency_on_a_numprocs_group_waits_for_every_instance(
    logs: Events,
) -> None:
    worker = aproc.ChildSpec(
        "w",
        ["sh", "-c", "sleep 0.1; echo up; exec sleep 60"],
        ready=aproc.Ready.line("up"),
        numprocs=2,
    )
    app = aproc.ChildSpec("app", ["sleep", "60"], depends_on=["w"])
    with anyio.fail_after(10):
        async with aproc.Supervisor([app, worker]) as sup:
            assert [s.name for s in sup.status()] == ["w.1", "w.2", "app"]
    app_start = index_of(logs, "child.starting", name="app")
    assert index_of(logs, "child.ready", name="w.1") < app_start
    assert index_of(logs, "child.ready", name="w.2") < app_start


async def test_watchdog_restarts_a_child_that_stops_pinging(logs: Events) -> None:
    code = (
        "import os, socket, time\n"
        "print('usec', os.environ['WATCHDOG_USEC'])\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
        "addr = os.environ['NOTIFY_SOCKET']\n"
        "s.sendto(b'READY=1', addr)\n"
        "for _ in range(2):\n"
        "    time.sleep(0.1)\n"
        "    s.sendto(b'WATCHDOG=1', addr)\n"
        "print('pings stopped')\n"
        "time.sleep(60)\n"
    )
    spec = aproc.ChildSpec(
        "dog", python(code), ready=aproc.Ready.notify(), watchdog=0.5, backoff=QUICK
    )
    with anyio.fail_after(10):
        async with aproc.Supervisor([spec]) as sup:
            first = sup.status()[0].pid
            await wait_for(
                lambda: (
                    sup.status()[0].restarts == 1
                    and sup.status()[0].state == "running"
                    and sup.status()[0].pid != first
                )
            )
    (timeout, *_) = named(logs, "child.watchdog_timeout")
    assert (timeout["name"], timeout["pid"], timeout["interval"]) == ("dog", first, 0.5)
    assert index_of(logs, "child.output", name="dog", line="usec 500000") >= 0
    # The watchdog did not fire while the pings were still coming.
    assert index_of(logs, "child.output", name="dog", line="pings stopped") < logs.index(timeout)
    exited = index_of(logs, "child.exited", name="dog", pid=first)
    assert (logs[exited]["returncode"], logs[exited]["signal"]) == (-15, "SIGTERM")
    assert logs.index(timeout) < exited < index_of(logs, "child.restarting", name="dog")
    assert named(logs, "child.restarting")[0]["attempt"] == 1
