"""`aproc run` and `aproc init`, run as the real command in a subprocess: exit codes passed
through (128+N for a signal, 124 on timeout, 127 for a missing program), restarts, signal
forwarding, and the init's reaping of orphans (checked through /proc)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cli_support import PY, Aproc, aproc, gone, json_record


def events(stderr: str, event: str) -> list[dict[str, Any]]:
    records = [r for r in map(json_record, stderr.splitlines()) if r is not None]
    return [r for r in records if r.get("event") == event]


# ----------------------------------------------------------------- run


@pytest.mark.parametrize("code", [0, 3, 255])
def test_run_passes_the_exit_code_through(code: int) -> None:
    proc = aproc("run", "--log-format", "json", "--", "sh", "-c", f"exit {code}")
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_output_is_not_prefixed_and_reaches_stdout() -> None:
    proc = aproc("run", "--log-format", "json", "--", "sh", "-c", "echo out; echo err >&2")
    assert proc.returncode == 0
    assert proc.stdout == "out\n"
    assert "err" in proc.stderr.splitlines()


def test_run_without_double_dash() -> None:
    proc = aproc("run", "--log-format", "json", "sh", "-c", "exit 6")
    assert proc.returncode == 6


def test_run_command_killed_by_sigterm_exits_143() -> None:
    proc = aproc("run", "--log-format", "json", "--", "sh", "-c", "kill -TERM $$")
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert events(proc.stderr, "child.exited")[0]["signal"] == "SIGTERM"


def test_run_timeout_exits_124_quickly() -> None:
    began = time.monotonic()
    proc = aproc("run", "--log-format", "json", "--timeout", "0.5", "--", "sleep", "60")
    assert proc.returncode == 124, proc.stderr
    assert time.monotonic() - began < 10
    assert len(events(proc.stderr, "aproc.timeout")) == 1
    (stopped,) = events(proc.stderr, "child.stopped")
    assert gone(stopped["pid"])


def test_run_restart_on_failure_until_success(tmp_path: Path) -> None:
    # Fails twice (exit 1), then succeeds; a counter file tells the attempts apart.
    script = 'n=$(cat count 2>/dev/null || echo 0); echo $((n + 1)) > count; [ "$n" -ge 2 ]'
    proc = subprocess.run(
        [sys.executable, "-m", "aproc.cli", "run", "--log-format", "json",
         "--restart", "on-failure", "--", "sh", "-c", script],
        cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(events(proc.stderr, "child.restarting")) == 2
    assert (tmp_path / "count").read_text().strip() == "3"


def test_run_restart_on_failure_gives_up_with_the_last_code() -> None:
    proc = aproc(
        "run", "--log-format", "json", "--restart", "on-failure", "--max-restarts", "2",
        "--", "sh", "-c", "exit 4",
    )  # fmt: skip
    assert proc.returncode == 4, proc.stderr
    assert len(events(proc.stderr, "child.restarting")) == 2
    assert len(events(proc.stderr, "supervisor.gave_up")) == 1


def test_run_restart_never_does_not_restart() -> None:
    proc = aproc("run", "--log-format", "json", "--restart", "never", "--", "sh", "-c", "exit 1")
    assert proc.returncode == 1
    assert events(proc.stderr, "child.restarting") == []


@pytest.mark.parametrize("program", ["/nonexistent/program", "no-such-program-aproc"])
def test_run_missing_program_exits_127(program: str) -> None:
    proc = aproc("run", "--log-format", "json", "--", program)
    assert proc.returncode == 127, proc.stderr
    (failed,) = events(proc.stderr, "child.start_failed")
    assert failed["errno"] == 2
    assert "Traceback" not in proc.stderr


def test_run_without_command_is_a_usage_error() -> None:
    proc = aproc("run", "--")
    assert proc.returncode == 2
    assert "a command is required" in proc.stderr


def test_run_stops_the_command_on_sigterm() -> None:
    with Aproc(
        "run", "--log-format", "json", "--", "sh", "-c", "echo ready; exec sleep 60", cwd=Path.cwd()
    ) as cmd:
        cmd.wait_for("out", lambda line: line == "ready")
        pid = cmd.wait_event("child.ready")["pid"]
        cmd.proc.send_signal(signal.SIGTERM)
        assert cmd.finish() == 128 + signal.SIGTERM, cmd.dump()
        assert gone(pid)


def test_run_on_trio() -> None:
    proc = aproc("run", "--backend", "trio", "--log-format", "json", "--", "sh", "-c", "exit 9")
    assert proc.returncode == 9, proc.stderr


# ----------------------------------------------------------------- init


@pytest.mark.parametrize("code", [0, 5])
def test_init_passes_the_exit_code_through(code: int) -> None:
    proc = aproc("init", "--", "sh", "-c", f"exit {code}")
    assert proc.returncode == code, proc.stderr


def test_init_child_killed_by_a_signal_exits_128_plus_n() -> None:
    proc = aproc("init", "--", "sh", "-c", "kill -KILL $$")
    assert proc.returncode == 128 + signal.SIGKILL


def test_init_missing_program_exits_127() -> None:
    proc = aproc("init", "--", "no-such-program-aproc")
    assert proc.returncode == 127
    assert proc.stderr.count("\n") == 1
    assert "no-such-program-aproc" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGTERM, 7), (signal.SIGHUP, 8), (signal.SIGUSR1, 9)]
)
def test_init_forwards_signals_to_the_child(sig: signal.Signals, code: int) -> None:
    # The child prints "ready" only once its trap is installed.
    script = f'trap "exit {code}" {sig.name[3:]}; echo ready; while :; do sleep 1; done'
    with Aproc("init", "--", "sh", "-c", script, cwd=Path.cwd()) as cmd:
        cmd.wait_for("out", lambda line: line == "ready")
        cmd.proc.send_signal(sig)
        assert cmd.finish(timeout=10) == code, cmd.dump()


def test_init_child_killed_by_a_forwarded_signal() -> None:
    with Aproc("init", "--", "sh", "-c", "echo ready; exec sleep 60", cwd=Path.cwd()) as cmd:
        cmd.wait_for("out", lambda line: line == "ready")
        cmd.proc.send_signal(signal.SIGTERM)
        assert cmd.finish(timeout=10) == 128 + signal.SIGTERM, cmd.dump()


ORPHANS = {
    # A background job in the child's own process group.
    "same-group": "sleep 60 & echo $!",
    # A grandchild in a session of its own: only the subreaper's own reaping can find it.
    "own-session": (
        f"{PY} -c \"import subprocess; print(subprocess.Popen(['sleep', '60'], "
        'start_new_session=True).pid)"'
    ),
    # ... and one that ignores SIGTERM, so it takes the SIGKILL after the grace period.
    "ignores-term": (
        f"{PY} -c \"import subprocess; print(subprocess.Popen(['sh', '-c', "
        '\'trap \\"\\" TERM; exec sleep 60\'], start_new_session=True).pid)"'
    ),
}


@pytest.mark.parametrize("kind", sorted(ORPHANS))
def test_init_reaps_orphans_before_exiting(kind: str) -> None:
    began = time.monotonic()
    with Aproc("init", "--grace", "0.5", "--", "sh", "-c", ORPHANS[kind], cwd=Path.cwd()) as cmd:
        line = cmd.wait_for("out", str.isdigit)
        orphan = int(line)
        assert cmd.finish(timeout=10) == 0, cmd.dump()
    assert gone(orphan), f"orphan {orphan} outlived aproc init"
    assert time.monotonic() - began < 8
