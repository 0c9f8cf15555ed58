"""Helpers shared by the tests that run the `aproc` command itself (tests/test_cli_*.py): the
command in the background with line readers that have deadlines (``Aproc``), the command run to
completion (``aproc``), and small checks on what it printed or left behind."""

from __future__ import annotations

import json
import os
import selectors
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

PY = shlex.quote(sys.executable)
"""This interpreter, quoted for a shell command line (a Procfile's, say)."""


class Aproc:
    """The `aproc` command running in the background, its stdout and stderr read line by line
    with deadlines (selectors, no threads). Use as a context manager: leaving it kills the
    command if it still runs, waits for it, and closes the pipes."""

    def __init__(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aproc.cli", *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: dict[str, list[str]] = {"out": [], "err": []}
        self._partial = {"out": b"", "err": b""}
        self._sel = selectors.DefaultSelector()
        for name, pipe in (("out", self.proc.stdout), ("err", self.proc.stderr)):
            assert pipe is not None
            os.set_blocking(pipe.fileno(), False)
            self._sel.register(pipe, selectors.EVENT_READ, name)

    def __enter__(self) -> Aproc:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._sel.close()
        for pipe in (self.proc.stdout, self.proc.stderr):
            assert pipe is not None
            pipe.close()
        # Never leave a child of the command behind, even when a test failed halfway.
        for pid in self.pids():
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass

    def _pump(self, timeout: float) -> bool:
        """Read what is ready within ``timeout``; False once both pipes are at EOF."""
        if not self._sel.get_map():
            return False
        for key, _ in self._sel.select(timeout):
            name = key.data
            data = os.read(key.fd, 65536)
            if not data:
                self._sel.unregister(key.fileobj)
                if self._partial[name]:
                    self.lines[name].append(self._partial[name].decode(errors="replace"))
                    self._partial[name] = b""
                continue
            *complete, self._partial[name] = (self._partial[name] + data).split(b"\n")
            self.lines[name].extend(line.decode(errors="replace") for line in complete)
        return True

    def wait_for(
        self, stream: str, predicate: Callable[[str], bool], timeout: float = 10.0, start: int = 0
    ) -> str:
        """The first line of ``stream`` ("out" or "err") from index ``start`` on that
        satisfies ``predicate``; fails the test after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        index = start
        while True:
            lines = self.lines[stream]
            while index < len(lines):
                if predicate(lines[index]):
                    return lines[index]
                index += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._pump(min(remaining, 0.5)):
                if remaining > 0 and self.proc.poll() is None:
                    continue  # pipes closed early but the command still runs
                pytest.fail(f"no matching line on std{stream} within {timeout} s\n{self.dump()}")

    def wait_event(self, event: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        """The first JSON lifecycle event on stderr named ``event`` with ``fields``."""

        def match(line: str) -> bool:
            record = json_record(line)
            return (
                record is not None
                and record.get("event") == event
                and all(record.get(k) == v for k, v in fields.items())
            )

        line = self.wait_for("err", match, timeout)
        record = json_record(line)
        assert record is not None
        return record

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        records = [r for r in map(json_record, self.lines["err"]) if r is not None]
        return [r for r in records if event is None or r.get("event") == event]

    def pids(self) -> set[int]:
        return {r["pid"] for r in self.events() if isinstance(r.get("pid"), int)}

    def finish(self, timeout: float = 10.0) -> int:
        """Wait for the command to exit (reading all its output); its exit code."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._pump(min(0.05, max(0.0, deadline - time.monotonic()))):
                break
            if self.proc.poll() is not None and not self._sel.select(0):
                break
        try:
            return self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"aproc did not exit within {timeout} s\n{self.dump()}")

    def dump(self) -> str:
        return "--- stdout:\n{}\n--- stderr:\n{}".format(
            "\n".join(self.lines["out"]), "\n".join(self.lines["err"])
        )


def json_record(line: str) -> dict[str, Any] | None:
    """``line`` parsed as a JSON object (a structured log record); None for anything else."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def aproc(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run the command to completion (it must not outlive ``timeout``)."""
    return subprocess.run(
        [sys.executable, "-m", "aproc.cli", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()
