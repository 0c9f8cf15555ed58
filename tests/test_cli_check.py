"""`aproc check`, run as the real command: every broken configuration gives exit 1 and one
line on stderr naming the file, the line and the field, never a traceback; good ones exit 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def check(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aproc.cli", "check", *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


# (file name, text, line, field, a fragment of the message)
BROKEN: dict[str, tuple[str, str, int, str | None, str]] = {
    "bad TOML syntax": (
        "aproc.toml",
        '[process.web]\ncmd = "sleep 1"\nrestart = permanent\n',
        3,
        None,
        "invalid TOML",
    ),
    "unterminated table header": ("aproc.toml", '[process.web\ncmd = "x"\n', 1, None, "TOML"),
    "unknown key": (
        "aproc.toml",
        '[process.web]\ncmd = "sleep 1"\nrestrat = "permanent"\n',
        3,
        "process.web.restrat",
        "unknown key 'restrat'",
    ),
    "unknown supervisor key": (
        "aproc.toml",
        '[supervisor]\nmax_restart = 3\n\n[process.web]\ncmd = "sleep 1"\n',
        2,
        "supervisor.max_restart",
        "unknown key",
    ),
    "unknown table": ("aproc.toml", "[processes.web]\ncmd = 'x'\n", 1, "processes", "unknown"),
    "wrong type": (
        "aproc.toml",
        '[process.web]\ncmd = "sleep 1"\nnumprocs = "two"\n',
        3,
        "process.web.numprocs",
        "expected an integer",
    ),
    "wrong type, bool for a number": (
        "aproc.toml",
        '[process.web]\ncmd = "sleep 1"\nstop_timeout = true\n',
        3,
        "process.web.stop_timeout",
        "expected a number",
    ),
    "unknown dependency": (
        "aproc.toml",
        '[process.web]\ncmd = "sleep 1"\n\n[process.web2]\ncmd = "sleep 1"\ndepends_on = ["db"]\n',
        6,
        "process.web2.depends_on",
        "'db'",
    ),
    "dependency cycle": (
        "aproc.toml",
        '[process.e]\ncmd = "sleep 1"\n\n[process.a]\ncmd = "sleep 1"\ndepends_on = ["b"]\n\n'
        '[process.b]\ncmd = "sleep 1"\ndepends_on = ["a"]\n',
        6,
        "process.a.depends_on",
        "cycle: a -> b -> a",
    ),
    "depends on itself": (
        "aproc.toml",
        '[process.web]\ncmd = "sleep 1"\ndepends_on = ["web"]\n',
        3,
        "process.web.depends_on",
        "itself",
    ),
    "bad signal name": (
        "aproc.toml",
        '[process.web]\ncmd = "sleep 1"\nstop_signal = "SIGFOO"\n',
        3,
        "process.web.stop_signal",
        "SIGFOO",
    ),
    "bad signal type": (
        "aproc.toml",
        '[process.web]\ncmd = "sleep 1"\nstop_signal = [15]\n',
        3,
        "process.web.stop_signal",
        "signal",
    ),
    "bad restart value": (
        "aproc.toml",
        '[process.web]\ncmd = "sleep 1"\nrestart = "sometimes"\n',
        3,
        "process.web.restart",
        "'sometimes'",
    ),
    "bad strategy": (
        "aproc.toml",
        '[supervisor]\nstrategy = "all_for_one"\n[process.web]\ncmd = "sleep 1"\n',
        2,
        "supervisor.strategy",
        "'all_for_one'",
    ),
    "missing cmd": ("aproc.toml", '\n[process.web]\ncwd = "."\n', 2, "process.web", "'cmd'"),
    "empty cmd list": ("aproc.toml", "[process.web]\ncmd = []\n", 2, "process.web.cmd", "list"),
    "ready with two checks": (
        "aproc.toml",
        '[process.web]\ncmd = "sleep 1"\nready = { tcp = 80, line = "x" }\n',
        3,
        "process.web.ready",
        "exactly one",
    ),
    "ready with a bad regex": (
        "aproc.toml",
        '[process.web]\ncmd = "sleep 1"\nready = { line = "(" }\n',
        3,
        "process.web.ready",
        "regular expression",
    ),
    "unknown backoff key": (
        "aproc.toml",
        '[process.web]\ncmd = "sleep 1"\nbackoff = { initail = 1 }\n',
        3,
        "process.web.backoff",
        "initail",
    ),
    "bad Procfile line": (
        "Procfile",
        "web: sleep 1\nworker python worker.py\n",
        2,
        "line",
        "expected 'name: command'",
    ),
    "empty Procfile command": ("Procfile", "web:\n", 1, "web", "empty command"),
    "unbalanced quote in a Procfile command": (
        "Procfile",
        "# comment\nweb: echo 'oops\n",
        2,
        "web",
        "quotation",
    ),
    "duplicate Procfile name": (
        "Procfile",
        "web: sleep 1\nworker: sleep 2\nweb: sleep 3\n",
        3,
        "web",
        "already defined on line 1",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_config(case: str, tmp_path: Path) -> None:
    name, text, line, field, fragment = BROKEN[case]
    (tmp_path / name).write_text(text)
    proc = check(name, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    error = lines[0]
    assert f"{name}:{line}: " in error
    if field is not None:
        assert f"{name}:{line}: {field}: " in error
    assert fragment in error
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("env_text", "line", "field", "fragment"),
    [
        ("A=1\nthis is not a setting\n", 2, "line", "expected KEY=VALUE"),
        ("# c\n\nA=1\nB='unterminated\n", 4, "B", "unterminated quote"),
        ('A="x" y\n', 1, "A", "after the closing quote"),
        ("1A=2\n", 1, "line", "expected KEY=VALUE"),
    ],
)
def test_bad_dotenv_line(
    env_text: str, line: int, field: str, fragment: str, tmp_path: Path
) -> None:
    (tmp_path / "Procfile").write_text("web: sleep 1\n")
    (tmp_path / ".env").write_text(env_text)
    proc = check("Procfile", cwd=tmp_path)  # the .env beside the Procfile is read
    assert proc.returncode == 1
    (error,) = proc.stderr.splitlines()
    assert f".env:{line}: {field}: " in error
    assert fragment in error
    # ... and an explicit -e file is named as given
    (tmp_path / ".env").unlink()
    (tmp_path / "prod.env").write_text(env_text)
    proc = check("Procfile", "-e", "prod.env", cwd=tmp_path)
    assert proc.returncode == 1
    (error,) = proc.stderr.splitlines()
    assert f"prod.env:{line}: {field}: " in error


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        # Whole-file problems have no line to name: the error names the file.
        ("Procfile", "", "no processes defined"),
        ("Procfile", "# only comments\n\n", "no processes defined"),
        ("aproc.toml", "[supervisor]\nmax_restarts = 1\n", "no [process.NAME] tables"),
        ("missing.toml", None, "file not found"),
        ("Procfile", b"web: echo \xff\n", "not UTF-8"),
    ],
)
def test_whole_file_errors(
    name: str, content: str | bytes | None, fragment: str, tmp_path: Path
) -> None:
    if isinstance(content, bytes):
        (tmp_path / name).write_bytes(content)
    elif content is not None:
        (tmp_path / name).write_text(content)
    proc = check(name, cwd=tmp_path)
    assert proc.returncode == 1
    (error,) = proc.stderr.splitlines()
    assert f"{name}: " in error
    assert fragment in error


def test_error_names_the_path_as_given(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    bad = tmp_path / "conf" / "aproc.toml"
    bad.write_text('[process.web]\ncmd = "x"\nnumprocs = 0\n')
    proc = check(str(bad), cwd=tmp_path)
    assert proc.returncode == 1
    assert f"{bad}:3: process.web.numprocs: must be >= 1" in proc.stderr


@pytest.mark.parametrize("name", ["Procfile", "aproc.toml"])
def test_examples_are_valid(name: str) -> None:
    proc = check(str(EXAMPLES / name), cwd=EXAMPLES)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert ": ok (2 processes: web, worker" in proc.stdout


def test_good_config_lists_the_instances(tmp_path: Path) -> None:
    (tmp_path / "aproc.toml").write_text(
        "[process.db]\ncmd = 'sleep 1'\nready = { tcp = 5432 }\n"
        "[process.web]\ncmd = ['sleep', '1']\nnumprocs = 2\ndepends_on = 'db'\n"
    )
    proc = check("aproc.toml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "aproc.toml: ok (2 processes: db, web.1, web.2)\n"
