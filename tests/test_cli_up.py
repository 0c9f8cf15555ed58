"""`aproc up`, run as the real command in a subprocess: a Procfile (+ .env) or an aproc.toml,
prefixed output, honcho's PORT scheme, a clean stop on SIGTERM, a kill on the second SIGINT,
and exit 1 when the supervisor gives up. Also the help of every subcommand."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_support import PY, Aproc, gone

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PREFIX = re.compile(r"^\d\d:\d\d:\d\d (\S+)\s* \| (.*)$")


def prefixed(name: str, text: str) -> Callable[[str], bool]:
    """A line of ``name``'s output, as `aproc up` prints it: ``HH:MM:SS name | text``."""

    def match(line: str) -> bool:
        m = PREFIX.match(line)
        return m is not None and m.group(1) == name and text in m.group(2)

    return match


def dead(pid: int) -> bool:
    """Gone, or a zombie waiting for whoever inherited it."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return True
    return data[data.rindex(b")") + 2 :].split()[0] in (b"Z", b"X")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def up(tmp_path: Path, *args: str) -> Aproc:
    return Aproc("up", "--log-format", "json", *args, cwd=tmp_path)


# ----------------------------------------------------------------- Procfile


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_procfile_two_processes_prefixed_output_and_clean_sigterm(
    tmp_path: Path, backend: str
) -> None:
    (tmp_path / "Procfile").write_text(
        "# two processes\n"
        f"web: {PY} -c \"print('web says hi'); import time; time.sleep(60)\"\n"
        # a shell with a grandchild in its process group
        "worker: sleep 60 & echo worker says hi $! && wait\n"
    )
    with up(tmp_path, "--backend", backend) as cmd:
        web = cmd.wait_for("out", prefixed("web", "web says hi"))
        worker = cmd.wait_for("out", prefixed("worker", "worker says hi"))
        grandchild = int(worker.rsplit(" ", 1)[1])
        # Names are padded to one width, so the bars line up.
        assert web.index("|") == worker.index("|")
        assert "\x1b[" not in web  # not a TTY: no colour
        pids = {cmd.wait_event("child.ready", name=n)["pid"] for n in ("web", "worker")}
        for pid in pids:  # each child leads its own process group
            assert os.getpgid(pid) == pid
        cmd.proc.send_signal(signal.SIGTERM)
        assert cmd.finish(timeout=10) == 0, cmd.dump()
        assert {r["name"] for r in cmd.events("child.stopped")} == {"web", "worker"}
        assert cmd.events("aproc.stopping")[0]["signal"] == "SIGTERM"
        for pid in pids:
            assert gone(pid), f"child {pid} outlived aproc"
        # The grandchild died with its group (reparented, it may be a zombie for a moment).
        deadline = time.monotonic() + 5
        while not dead(grandchild) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert dead(grandchild), f"grandchild {grandchild} outlived aproc"
        assert "Traceback" not in cmd.dump()


def test_second_sigint_kills_children_that_ignore_sigterm(tmp_path: Path) -> None:
    stubborn = "trap '' TERM INT; echo ready; while :; do sleep 1; done"
    (tmp_path / "Procfile").write_text(
        f"one: sh -c {shlex.quote(stubborn)}\ntwo: sh -c {shlex.quote(stubborn)}\n"
    )
    with up(tmp_path) as cmd:
        cmd.wait_for("out", prefixed("one", "ready"))
        cmd.wait_for("out", prefixed("two", "ready"))
        pids = {cmd.wait_event("child.ready", name=n)["pid"] for n in ("one", "two")}
        began = time.monotonic()
        cmd.proc.send_signal(signal.SIGINT)
        cmd.wait_event("child.stopping")  # the graceful stop is under way, and hangs
        cmd.proc.send_signal(signal.SIGINT)
        cmd.wait_event("aproc.killing", signal="SIGINT")
        assert cmd.finish(timeout=5) == 0, cmd.dump()
        assert time.monotonic() - began < 5  # far below the 10 s stop_timeout
        for pid in pids:
            assert gone(pid)


def test_gives_up_with_exit_1(tmp_path: Path) -> None:
    (tmp_path / "aproc.toml").write_text(
        "[supervisor]\nmax_restarts = 1\nmax_seconds = 60\n\n"
        "[process.ok]\ncmd = ['sleep', '60']\n\n"
        "[process.crash]\ncmd = ['sh', '-c', 'echo crashing; exit 1']\n"
        "backoff = { initial = 0.01, jitter = 0 }\n"
    )
    with up(tmp_path, "-f", "aproc.toml") as cmd:
        assert cmd.finish(timeout=15) == 1, cmd.dump()
        gave_up = cmd.events("supervisor.gave_up")
        assert len(gave_up) == 1
        assert gave_up[0]["name"] == "crash"
        assert len(cmd.events("child.restarting")) == 1
        assert sum(prefixed("crash", "crashing")(line) for line in cmd.lines["out"]) == 2
        ok_pid = next(r["pid"] for r in cmd.events("child.ready") if r["name"] == "ok")
        assert gone(ok_pid)


def test_default_file_is_procfile_then_aproc_toml(tmp_path: Path) -> None:
    (tmp_path / "aproc.toml").write_text("[process.only]\ncmd = 'echo from toml'\n")
    with up(tmp_path) as cmd:
        cmd.wait_for("out", prefixed("only", "from toml"))
        cmd.proc.send_signal(signal.SIGTERM)
        assert cmd.finish() == 0, cmd.dump()


def test_concurrency_and_honcho_ports(tmp_path: Path) -> None:
    (tmp_path / "Procfile").write_text(
        "web: echo web port=$PORT && exec sleep 60\n"
        "worker: echo worker port=$PORT && exec sleep 60\n"
    )
    with up(tmp_path, "-c", "worker=2") as cmd:
        cmd.wait_for("out", prefixed("web", "web port=5000"))
        cmd.wait_for("out", prefixed("worker.1", "worker port=5100"))
        cmd.wait_for("out", prefixed("worker.2", "worker port=5101"))
        cmd.proc.send_signal(signal.SIGTERM)
        assert cmd.finish() == 0, cmd.dump()
    assert {r["name"] for r in cmd.events("child.ready")} == {"web", "worker.1", "worker.2"}


def test_base_port_and_zero_concurrency(tmp_path: Path) -> None:
    (tmp_path / "Procfile").write_text(
        "web: echo web port=$PORT && exec sleep 60\nworker: echo worker port=$PORT\n"
    )
    with up(tmp_path, "-p", "7000", "-c", "web=2,worker=0") as cmd:
        cmd.wait_for("out", prefixed("web.1", "port=7000"))
        cmd.wait_for("out", prefixed("web.2", "port=7001"))
        cmd.proc.send_signal(signal.SIGTERM)
        assert cmd.finish() == 0, cmd.dump()
    assert not any(prefixed("worker", "")(line) for line in cmd.lines["out"])


def test_dotenv_reaches_children(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "# settings\nGREETING=hello\nexport QUOTED=\"two words\"\nSINGLE='$NOT_EXPANDED'\n"
    )
    (tmp_path / "Procfile").write_text(
        'env: echo "[$GREETING] [$QUOTED] [$SINGLE]" && exec sleep 60\n'
    )
    with up(tmp_path) as cmd:
        cmd.wait_for("out", prefixed("env", "[hello] [two words] [$NOT_EXPANDED]"))
        cmd.proc.send_signal(signal.SIGTERM)
        assert cmd.finish() == 0, cmd.dump()


def test_explicit_env_file(tmp_path: Path) -> None:
    (tmp_path / "other.env").write_text("WHO=explicit\n")
    (tmp_path / "Procfile").write_text("env: echo who=$WHO && exec sleep 60\n")
    with up(tmp_path, "-e", "other.env") as cmd:
        cmd.wait_for("out", prefixed("env", "who=explicit"))
        cmd.proc.send_signal(signal.SIGTERM)
        assert cmd.finish() == 0, cmd.dump()


def test_children_exiting_by_themselves_end_up_with_exit_0(tmp_path: Path) -> None:
    (tmp_path / "aproc.toml").write_text(
        "[process.once]\ncmd = 'echo done'\nrestart = 'transient'\n"
    )
    with up(tmp_path, "-f", "aproc.toml") as cmd:
        assert cmd.finish() == 0, cmd.dump()
        assert any(prefixed("once", "done")(line) for line in cmd.lines["out"])


def test_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "Procfile").write_text("web python -m http.server\n")
    with up(tmp_path) as cmd:
        assert cmd.finish() == 2
    assert cmd.lines["out"] == []
    assert len(cmd.lines["err"]) == 1
    assert "Procfile:1:" in cmd.lines["err"][0]


def test_unknown_concurrency_name_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "Procfile").write_text("web: sleep 60\n")
    with up(tmp_path, "-c", "wbe=2") as cmd:
        assert cmd.finish() == 2
    assert "wbe" in cmd.lines["err"][0]
    assert "Traceback" not in cmd.dump()


# ----------------------------------------------------------------- the examples


def test_examples_procfile_runs(tmp_path: Path) -> None:
    port = free_port()
    with Aproc(
        "up", "--log-format", "json", "-f", str(EXAMPLES / "Procfile"), "-p", str(port),
        cwd=tmp_path,
    ) as cmd:  # fmt: skip
        cmd.wait_for("out", prefixed("worker", "tick"), timeout=15)
        cmd.wait_for("out", prefixed("web", f"port {port}"), timeout=15)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert conn.recv(100).startswith(b"HTTP/1.0 200")
        cmd.proc.send_signal(signal.SIGTERM)
        assert cmd.finish() == 0, cmd.dump()


def test_examples_aproc_toml_runs(tmp_path: Path) -> None:
    # Same file, on a free port instead of the example's fixed one.
    text = (EXAMPLES / "aproc.toml").read_text()
    assert "8000" in text
    port = free_port()
    (tmp_path / "aproc.toml").write_text(text.replace("8000", str(port)))
    with up(tmp_path, "-f", "aproc.toml") as cmd:
        cmd.wait_event("child.ready", name="web", timeout=15)
        cmd.wait_for("out", prefixed("worker.1", "tick"), timeout=15)
        cmd.wait_for("out", prefixed("worker.2", "tick"), timeout=15)
        ready = [r["name"] for r in cmd.events("child.ready")]
        assert ready.index("web") < ready.index("worker.1")  # depends_on, readiness
        cmd.proc.send_signal(signal.SIGTERM)
        assert cmd.finish() == 0, cmd.dump()
        stopped = [r["name"] for r in cmd.events("child.stopped")]
        assert stopped[-1] == "web"  # stopped in reverse start order


# ----------------------------------------------------------------- help


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        ([], ["up", "run", "init", "check", "ctl", "--version"]),
        (["up"], ["--file", "--concurrency", "--env", "--port", "--socket", "--log-format"]),
        (["run"], ["--restart", "--timeout", "--stop-timeout", "--max-restarts", "124"]),
        (["init"], ["--grace", "reap", "128+N"]),
        (["check"], ["file", "--env", "line"]),
        (["ctl"], ["--socket", "status", "start", "stop", "restart"]),
        (["ctl", "status"], ["--json"]),
    ],
)
def test_help(args: list[str], mentions: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "aproc.cli", *args, "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: aproc")
    for word in mentions:
        assert word in proc.stdout, f"{word!r} missing from `aproc {' '.join(args)} --help`"


def test_version_and_usage_errors() -> None:
    version = subprocess.run(
        [sys.executable, "-m", "aproc.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert version.returncode == 0
    assert version.stdout.startswith("aproc ")
    bare = subprocess.run(
        [sys.executable, "-m", "aproc.cli"], capture_output=True, text=True, timeout=30, check=False
    )
    assert bare.returncode == 2
    assert "usage:" in bare.stderr
