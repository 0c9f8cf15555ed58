"""`aproc ctl` against a live `aproc up --socket PATH`, both run as the real command:
status (text and JSON), restart, stop, start; the socket's modes; malformed requests answered
or dropped without harming the supervisor; and a connection from another uid refused."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import Aproc, aproc

PROCFILE = (
    "web: echo web up && exec sleep 60\n"
    "worker: echo worker up && exec sleep 60\n"
    "clock: echo clock up && exec sleep 60\n"
)


class Live:
    """A running `aproc up --socket` with the children of ``procfile``."""

    def __init__(self, tmp_path: Path, procfile: str = PROCFILE, *extra: str) -> None:
        self.dir = tmp_path / "run"
        self.socket = self.dir / "ctl.sock"
        self.names = [line.split(":")[0] for line in procfile.splitlines()]
        (tmp_path / "Procfile").write_text(procfile)
        self.cmd = Aproc(
            "up", "--log-format", "json", "--socket", str(self.socket), *extra, cwd=tmp_path
        )

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return aproc("ctl", "--socket", str(self.socket), *args)

    def status(self) -> dict[str, dict[str, Any]]:
        proc = self.ctl("status", "--json")
        assert proc.returncode == 0, proc.stderr
        return {child["name"]: child for child in json.loads(proc.stdout)}

    def request(self, payload: bytes, timeout: float = 10.0) -> list[dict[str, Any]] | None:
        """Send raw bytes on a fresh connection; the answers, or None if the server closed
        the connection without one."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.socket))
            try:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                pass
            data = b""
            try:
                while chunk := sock.recv(65536):
                    data += chunk
            except ConnectionResetError:
                pass
        if not data:
            return None
        return [json.loads(line) for line in data.splitlines()]


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` in 10 ms steps; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.01)


@contextlib.contextmanager
def serving(tmp_path: Path, procfile: str = PROCFILE, *extra: str) -> Iterator[Live]:
    server = Live(tmp_path, procfile, *extra)
    with server.cmd:
        wait_until(server.socket.exists)
        server.cmd.wait_event("control.listening")
        for name in server.names:
            server.cmd.wait_for("out", lambda line, name=name: line.endswith(f"| {name} up"))
        yield server
        server.cmd.proc.send_signal(signal.SIGTERM)
        assert server.cmd.finish() == 0, server.cmd.dump()
        assert not server.socket.exists()  # removed on the way out
        assert "Traceback" not in server.cmd.dump()
        for pid in server.cmd.pids():
            assert not Path(f"/proc/{pid}").exists()


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    with serving(tmp_path) as server:
        yield server


# ----------------------------------------------------------------- operations


def test_status_text_and_json(live: Live) -> None:
    text = live.ctl("status")
    assert text.returncode == 0, text.stderr
    header, *rows = text.stdout.splitlines()
    assert header.split() == ["NAME", "STATE", "PID", "RESTARTS", "EXIT", "FOR"]
    table = {row.split()[0]: row.split() for row in rows}
    assert set(table) == {"web", "worker", "clock"}
    status = live.status()
    for name in ("web", "worker", "clock"):
        child = status[name]
        assert child["state"] == "running"
        assert isinstance(child["pid"], int)
        assert child["restarts"] == 0
        assert child["returncode"] is None
        assert isinstance(child["since"], float)
        assert table[name][1:4] == ["running", str(child["pid"]), "0"]
    ready = {e["name"]: e["pid"] for e in live.cmd.events("child.ready")}
    assert ready == {name: status[name]["pid"] for name in ready}


def test_restart_changes_the_pid(live: Live) -> None:
    before = live.status()
    proc = live.ctl("restart", "web")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "restart: web: ok\n"
    after = live.status()
    assert after["web"]["state"] == "running"
    assert after["web"]["pid"] != before["web"]["pid"]
    assert not Path(f"/proc/{before['web']['pid']}").exists()
    assert after["worker"]["pid"] == before["worker"]["pid"]  # untouched


def test_stop_stays_stopped_and_start_brings_it_back(live: Live) -> None:
    old_pid = live.status()["worker"]["pid"]
    proc = live.ctl("stop", "worker")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "stop: worker: ok\n"
    status = live.status()
    assert status["worker"]["state"] == "stopped"
    assert status["worker"]["pid"] is None or not Path(f"/proc/{old_pid}").exists()
    assert status["web"]["state"] == "running"
    # Still stopped after other work went through the supervisor (a restart takes longer than
    # the default backoff), and no attempt to start it again was logged. (clock keeps running:
    # see test_restarting_the_only_running_child_keeps_aproc_up.)
    mark = len(live.cmd.lines["err"])
    assert live.ctl("restart", "web").returncode == 0
    assert live.status()["worker"]["state"] == "stopped"
    later = [json.loads(line) for line in live.cmd.lines["err"][mark:] if line.startswith("{")]
    assert not any(e["event"] == "child.starting" and e["name"] == "worker" for e in later)
    # Stopping it again is harmless.
    assert live.ctl("stop", "worker").returncode == 0
    mark = len(live.cmd.lines["out"])
    proc = live.ctl("start", "worker")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "start: worker: ok\n"
    status = live.status()
    assert status["worker"]["state"] == "running"
    assert status["worker"]["pid"] not in (None, old_pid)
    live.cmd.wait_for("out", lambda line: line.endswith("| worker up"), start=mark)


def test_operations_on_trio(tmp_path: Path) -> None:
    with serving(tmp_path, PROCFILE, "--backend", "trio") as live:
        before = live.status()
        assert {c["state"] for c in before.values()} == {"running"}
        assert live.ctl("restart", "web").returncode == 0
        assert live.ctl("stop", "worker").returncode == 0
        after = live.status()
        assert after["web"]["pid"] != before["web"]["pid"]
        assert after["worker"]["state"] == "stopped"
        assert live.request(b"garbage\n") == [
            {"v": 1, "ok": False, "error": "malformed request: not JSON"}
        ]
        assert live.ctl("start", "worker").returncode == 0
        assert live.status()["worker"]["state"] == "running"


def test_restarting_the_only_running_child_keeps_aproc_up(tmp_path: Path) -> None:
    # restart_child() stops the child first: for a moment every child is stopped, which must
    # not look like "nothing left to run".
    procfile = "web: echo web up && exec sleep 60\nworker: echo worker up && exec sleep 60\n"
    with serving(tmp_path, procfile) as live:
        assert live.ctl("stop", "worker").returncode == 0
        proc = live.ctl("restart", "web")
        assert proc.returncode == 0, proc.stderr
        assert live.status()["web"]["state"] == "running"


def test_stopping_every_child_keeps_a_controlled_aproc_up(tmp_path: Path) -> None:
    # With a control socket the operator may start them again: only a signal ends `up`.
    procfile = "web: echo web up && exec sleep 60\nworker: echo worker up && exec sleep 60\n"
    with serving(tmp_path, procfile) as live:
        assert live.ctl("stop", "worker").returncode == 0
        assert live.ctl("stop", "web").returncode == 0
        assert live.status()["web"]["state"] == "stopped"
        assert live.ctl("start", "web").returncode == 0
        assert live.status()["web"]["state"] == "running"


def test_socket_is_private(live: Live) -> None:
    sock = live.socket.lstat()
    assert stat.S_ISSOCK(sock.st_mode)
    assert stat.S_IMODE(sock.st_mode) == 0o600
    assert sock.st_uid == os.getuid()
    directory = live.dir.lstat()
    assert stat.S_IMODE(directory.st_mode) == 0o700
    assert directory.st_uid == os.getuid()


@pytest.mark.parametrize("action", ["stop", "start", "restart"])
def test_unknown_child(live: Live, action: str) -> None:
    proc = live.ctl(action, "nosuch")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == "aproc ctl: no child named 'nosuch'\n"
    assert live.status()["web"]["state"] == "running"


def test_no_server(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "aproc.cli", "ctl", "--socket", str(tmp_path / "none.sock"),
         "status"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "cannot connect" in proc.stderr
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------- malformed requests


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"\x00\xff\xfe garbage \x80\n", "not JSON"),
        (b"not json at all\n", "not JSON"),
        (b"\n", "not JSON"),
        (b"[1, 2, 3]\n", "expected a JSON object"),
        (b'"status"\n', "expected a JSON object"),
        (b'{"cmd": "status"}\n', "unsupported protocol version None"),
        (b'{"v": 2, "cmd": "status"}\n', "unsupported protocol version 2"),
        (b'{"v": "1", "cmd": "status"}\n', "unsupported protocol version '1'"),
        (b'{"v": 1}\n', "unknown command None"),
        (b'{"v": 1, "cmd": "shutdown"}\n', "unknown command 'shutdown'"),
        (b'{"v": 1, "cmd": ["status"]}\n', "unknown command"),
        (b'{"v": 1, "cmd": "stop"}\n', "needs a child 'name'"),
        (b'{"v": 1, "cmd": "restart", "name": 7}\n', "needs a child 'name'"),
        (b'{"v": 1, "cmd": "start", "name": ""}\n', "needs a child 'name'"),
        (b'{"v": 1, "cmd": "stop", "name": {"a": 1}}\n', "needs a child 'name'"),
        (b"[" * 30000 + b"\n", "not JSON"),  # nesting deep enough to exhaust the recursion
    ],
)
def test_malformed_request_gets_an_error(live: Live, payload: bytes, error: str) -> None:
    answers = live.request(payload)
    assert answers is not None, "connection closed without an answer"
    (answer,) = answers
    assert answer["v"] == 1
    assert answer["ok"] is False
    assert error in answer["error"]
    assert set(live.status()) == {"web", "worker", "clock"}


def test_huge_line_is_refused(live: Live) -> None:
    answers = live.request(b"x" * (70 * 1024))  # no newline, over the 64 KiB limit
    if answers is not None:  # an answer, or a closed connection: both are fine
        assert answers == [{"v": 1, "ok": False, "error": "request too large"}]
    assert live.status()["web"]["state"] == "running"


def test_silent_and_half_sent_connections_do_no_harm(live: Live) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
        idle.connect(str(live.socket))
        assert live.request(b"") is None  # connect, send nothing, close
        assert live.request(b'{"v": 1, "cmd": "sta') is None  # cut short
        assert live.status()["web"]["state"] == "running"  # the idle one blocks nobody


def test_split_and_pipelined_requests(live: Live) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(live.socket))
        for piece in (b'{"v": 1, ', b'"cmd": "sta', b'tus"}\r\n{"v": 1, "cmd": "nope"}\n'):
            sock.sendall(piece)
        data = b""
        while data.count(b"\n") < 2:
            chunk = sock.recv(65536)
            assert chunk, "closed early"
            data += chunk
    first, second = map(json.loads, data.splitlines())
    assert first["ok"] is True
    assert {c["name"] for c in first["result"]} == {"web", "worker", "clock"}
    assert second["ok"] is False


def test_second_server_on_the_same_socket_is_refused(live: Live, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "Procfile").write_text("x: sleep 60\n")
    with Aproc("up", "--log-format", "json", "--socket", str(live.socket), cwd=other) as second:
        assert second.finish() == 2, second.dump()
        assert any("already listening" in line for line in second.lines["err"])
    assert live.status()["web"]["state"] == "running"


def test_unsafe_socket_directory_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    (tmp_path / "Procfile").write_text("x: sleep 60\n")
    with Aproc(
        "up", "--log-format", "json", "--socket", str(shared / "ctl.sock"), cwd=tmp_path
    ) as cmd:
        assert cmd.finish() == 2, cmd.dump()
        assert any("chmod 700" in line for line in cmd.lines["err"])
    assert not (shared / "ctl.sock").exists()


def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(run / "ctl.sock"))  # bound, never listening: what a crash leaves
    (tmp_path / "Procfile").write_text("x: sleep 60\n")
    with Aproc(
        "up", "--log-format", "json", "--socket", str(run / "ctl.sock"), cwd=tmp_path
    ) as cmd:
        cmd.wait_event("control.listening")
        cmd.proc.send_signal(signal.SIGTERM)
        assert cmd.finish() == 0, cmd.dump()


# ----------------------------------------------------------------- another uid

NOBODY = 65534
CLIENT = """
import json, socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.settimeout(10)
try:
    sock.connect(sys.argv[1])
except OSError as exc:
    print(json.dumps({"connect_errno": exc.errno}))
    sys.exit()
try:
    sock.sendall(b'{"v": 1, "cmd": "status"}\\n')
except OSError:
    pass
data = b""
try:
    while chunk := sock.recv(65536):
        data += chunk
except OSError:
    pass
print(json.dumps({"answer": data.decode()}))
"""


def python_for_nobody() -> str | None:
    """An interpreter uid 65534 can run (ours may live under root's private home)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3", sys.executable):
        if not os.path.exists(candidate):
            continue
        try:
            probe = subprocess.run(
                [candidate, "-I", "-c", "pass"],
                cwd="/",
                user=NOBODY,
                group=NOBODY,
                extra_groups=[],
                capture_output=True,
                timeout=30,
                check=False,
            )
        except OSError:
            continue
        if probe.returncode == 0:
            return candidate
    return None


def as_nobody(python: str, path: str, cwd: Path | str) -> dict[str, Any]:
    proc = subprocess.run(
        [python, "-I", "-c", CLIENT, path],
        cwd=cwd,
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid")
def test_connection_from_another_uid_is_refused(live: Live) -> None:
    python = python_for_nobody()
    if python is None:
        pytest.skip("no Python interpreter that uid 65534 can run")
    # The private directory alone keeps the other user out: it cannot even reach the socket.
    assert as_nobody(python, str(live.socket), "/") == {"connect_errno": errno.EACCES}
    assert as_nobody(python, "ctl.sock", live.dir) == {"connect_errno": errno.EACCES}
    # Open the way on purpose; the peer-credential check must still refuse the other uid.
    live.dir.chmod(0o711)
    live.socket.chmod(0o666)
    try:
        result = as_nobody(python, "ctl.sock", live.dir)  # cwd is entered before setuid
    finally:
        live.dir.chmod(0o700)
        live.socket.chmod(0o600)
    answer = result["answer"]
    if answer:  # refused with an answer (else: a closed connection, also a refusal)
        assert json.loads(answer) == {"v": 1, "ok": False, "error": "forbidden"}
    rejected = live.cmd.wait_event("control.rejected")
    assert rejected["uid"] == NOBODY
    assert live.status()["web"]["state"] == "running"
