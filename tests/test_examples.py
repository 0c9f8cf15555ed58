"""The examples are documentation that runs: CI executes each one and checks what it prints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

EXPECTED = {
    "primitives_spawn.py": [
        "wrote b'hello from sh\\n' and exited with 3",
        "No such file or directory: 'no-such-program'",
    ],
    "stream_lines.py": ["] line 1", "] line 3", "] no newline at the end", "exited with 0"],
    "run_with_timeout.py": [
        "uname says 'Linux'",
        "exit 4, stderr b'to stderr\\n'",
        "stopped after 0.5 s; it had printed b'working\\n'",
    ],
    "pipeline.py": ["2 apple", "returncodes per stage: [0, 0, 0]", "-> 3"],
    "supervise_workers.py": [
        "child.ready",
        "name=web",
        "child.restarting",
        "oops, crashing",
        "GET http://127.0.0.1:",
        "-> 200",
        "child.stopped",
        "all children stopped",
    ],
}


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str, backend: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), backend],
        capture_output=True,
        timeout=60,
        check=False,
    )
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    for fragment in EXPECTED[name]:
        assert fragment in out
