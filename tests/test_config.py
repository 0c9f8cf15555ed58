"""aproc.config: Procfile, .env and aproc.toml into ChildSpecs. Unit tests of each format, and
a fuzz: arbitrary or near-valid text only ever raises ConfigError (one line, naming a real line
of the file), never another exception."""

from __future__ import annotations

import json
import math
import re
import signal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aproc
from aproc.config import (
    Config,
    ConfigError,
    command_argv,
    load_config,
    load_dotenv,
    parse_procfile,
    parse_signal,
    parse_toml,
)
from aproc.readiness import ReadyLine, ReadyNotify, ReadyTcp

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# ----------------------------------------------------------------- command_argv


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("python -m http.server", ["python", "-m", "http.server"]),
        ("  echo   'a b'  \"c d\" ", ["echo", "a b", "c d"]),
        ("echo '$HOME | *'", ["echo", "$HOME | *"]),  # quoted: no shell meaning
        ("echo a:b --opt=x", ["echo", "a:b", "--opt=x"]),
        ('python -c "import a; a.b(1)"', ["python", "-c", "import a; a.b(1)"]),
    ],
)
def test_command_argv_direct(command: str, argv: list[str]) -> None:
    assert command_argv(command) == argv


@pytest.mark.parametrize(
    "command",
    [
        "a | b",
        "a && b",
        "a; b",
        "a > out.txt",
        "FOO=1 python app.py",
        "exec python app.py",
        "cd sub && make",
        "echo `date`",
    ],
)
def test_command_argv_shell(command: str) -> None:
    assert command_argv(command) == ["/bin/sh", "-c", command]


@pytest.mark.parametrize(
    "command",
    [
        "python -m http.server $PORT",
        'echo "$HOME"',  # expansion inside double quotes
        "ls *.py",
        "echo ~",
        "echo a\\ b",
    ],
)
def test_command_argv_shell_expansions_only_exec(command: str) -> None:
    # One simple command with expansions: the shell execs the program, which is then the
    # supervised process itself and gets the stop signal directly.
    assert command_argv(command) == ["/bin/sh", "-c", f"exec {command}"]


@pytest.mark.parametrize("command", ["", "   ", "echo 'unterminated", 'echo "x', "echo \\"])
def test_command_argv_errors(command: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - plain ValueError by contract
        command_argv(command)


# ----------------------------------------------------------------- Procfile


def test_parse_procfile() -> None:
    text = (
        "# comment\n"
        "\n"
        "web: python -m http.server $PORT\n"
        "  worker-2:python worker.py  \n"
        "clock_1 :   echo tick: tock\n"
        "   # indented comment\n"
    )
    assert parse_procfile(text) == [
        ("web", "python -m http.server $PORT", 3),
        ("worker-2", "python worker.py", 4),
        ("clock_1", "echo tick: tock", 5),
    ]


@pytest.mark.parametrize(
    ("text", "line", "field", "fragment"),
    [
        ("web python app.py\n", 1, "line", "expected 'name: command'"),
        ("web: a\n-web: b\n", 2, "line", "expected"),
        ("web: a\nweb.1: b\n", 2, "line", "expected"),
        ("web:   \n", 1, "web", "empty command"),
        ("web: a\n\nweb: b\n", 3, "web", "already defined on line 1"),
    ],
)
def test_parse_procfile_errors(text: str, line: int, field: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_procfile(text, "Procfile")
    assert (info.value.path, info.value.line, info.value.field) == ("Procfile", line, field)
    assert str(info.value).startswith(f"Procfile:{line}: {field}: ")
    assert fragment in str(info.value)


@pytest.mark.parametrize("text", ["", "\n\n", "# just a comment\n"])
def test_parse_procfile_empty(text: str) -> None:
    with pytest.raises(ConfigError, match="no processes defined") as info:
        parse_procfile(text, "Procfile")
    assert info.value.line is None
    assert str(info.value) == "Procfile: no processes defined"


# ----------------------------------------------------------------- .env


def test_load_dotenv() -> None:
    text = (
        "# comment\n"
        "PLAIN=value\n"
        "export EXPORTED=yes\n"
        "SPACED = around equals  \n"
        "EMPTY=\n"
        "INLINE=value # a comment\n"
        "HASH=a#b\n"
        "EQUALS=a=b=c\n"
        "SINGLE='$NOT \\n expanded'\n"
        'DOUBLE="line\\nnext\\ttab \\"q\\" \\\\ # kept"  # dropped\n'
        "URL=postgres://u:p@h:5432/db\n"
        "PLAIN=overridden\n"
    )
    assert load_dotenv(text) == {
        "PLAIN": "overridden",
        "EXPORTED": "yes",
        "SPACED": "around equals",
        "EMPTY": "",
        "INLINE": "value",
        "HASH": "a#b",
        "EQUALS": "a=b=c",
        "SINGLE": "$NOT \\n expanded",
        "DOUBLE": 'line\nnext\ttab "q" \\ # kept',
        "URL": "postgres://u:p@h:5432/db",
    }


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        ("A=1\nnot a setting\n", 2, "line"),
        ("1A=x\n", 1, "line"),
        ("A-B=x\n", 1, "line"),
        ("A='open\n", 1, "A"),
        ('A="open\\"\n', 1, "A"),
        ("A='x' tail\n", 1, "A"),
    ],
)
def test_load_dotenv_errors(text: str, line: int, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_dotenv(text, "prod.env")
    assert str(info.value).startswith(f"prod.env:{line}: {field}: ")


# ----------------------------------------------------------------- signals


@pytest.mark.parametrize(
    ("value", "expected"),
    [("TERM", 15), ("SIGTERM", 15), (" term ", 15), ("int", 2), ("SIGKILL", 9), (1, 1)],
)
def test_parse_signal(value: str | int, expected: int) -> None:
    assert parse_signal(value) == expected


@pytest.mark.parametrize("value", ["SIGFOO", "", "SIG", 0, 999, True, 1.5, [15], None])
def test_parse_signal_errors(value: Any) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - plain ValueError by contract
        parse_signal(value)


# ----------------------------------------------------------------- aproc.toml

FULL = """\
[supervisor]
strategy = "rest_for_one"
max_restarts = 3
max_seconds = 30

[process.db]
cmd = ["postgres", "-D", "data"]
ready = { tcp = 5432, host = "localhost" }
stop_signal = "INT"
stop_timeout = 20

[process.web]   # the front end
cmd = "python -m http.server $PORT"
cwd = "site"
env = { PORT = 8000, DEBUG = "1" }
restart = "transient"
numprocs = 2
ready = { line = "Serving HTTP", stream = "stdout" }
depends_on = ["db"]
backoff = { initial = 0.5, maximum = 10, factor = 3, jitter = 0, reset_after = 60 }
start_timeout = 5
python_unbuffered = false

[process.notifier]
cmd = ["notifier"]
restart = "temporary"
ready = { notify = true }
watchdog = 2.5
depends_on = "web"
capture_output = false
"""


def test_parse_toml_full() -> None:
    config = parse_toml(FULL, "aproc.toml", base_dir="/srv/app")
    assert isinstance(config, Config)
    assert (config.strategy, config.max_restarts, config.max_seconds) == ("rest_for_one", 3, 30)
    db, web, notifier = config.specs
    assert db.name == "db"
    assert db.argv == ("postgres", "-D", "data")
    assert isinstance(db.ready, ReadyTcp)
    assert (db.ready.port, db.ready.host) == (5432, "localhost")
    assert db.stop_signal == signal.SIGINT
    assert db.stop_timeout == 20
    assert db.restart == "permanent"
    assert web.argv == ("/bin/sh", "-c", "exec python -m http.server $PORT")
    assert web.cwd == "/srv/app/site"
    assert web.env == {"PORT": "8000", "DEBUG": "1"}
    assert web.restart == "transient"
    assert web.numprocs == 2
    assert [i.name for i in web.instances()] == ["web.1", "web.2"]
    assert isinstance(web.ready, ReadyLine)
    assert web.ready.matches("stdout", b"Serving HTTP on 0.0.0.0")
    assert not web.ready.matches("stderr", b"Serving HTTP on 0.0.0.0")
    assert web.depends_on == ("db",)
    assert web.backoff == aproc.Backoff(initial=0.5, maximum=10, factor=3, jitter=0, reset_after=60)
    assert web.start_timeout == 5
    assert web.python_unbuffered is False
    assert isinstance(notifier.ready, ReadyNotify)
    assert notifier.watchdog == 2.5
    assert notifier.depends_on == ("web",)
    assert notifier.restart == "temporary"
    assert notifier.capture_output is False


def test_parse_toml_defaults() -> None:
    config = parse_toml('[process.one]\ncmd = "sleep 1"\n')
    assert (config.strategy, config.max_restarts, config.max_seconds) == ("one_for_one", 5, 60)
    (one,) = config.specs
    assert one == aproc.ChildSpec("one", ["sleep", "1"])


WEB = "[process.web]\ncmd = 'x'\n"


@pytest.mark.parametrize(
    ("text", "line", "field", "fragment"),
    [
        ("[process.web\n", 1, None, "invalid TOML"),
        (WEB + '\n[process.web]\ncmd = "y"\n', 4, None, "invalid TOML"),
        ("[supervisor]\nstrategy = 1\n", 2, "supervisor.strategy", "expected"),
        ("[supervisor]\nmax_restarts = -1\n", 2, "supervisor.max_restarts", ">= 0"),
        ("[supervisor]\nmax_restarts = 1.5\n", 2, "supervisor.max_restarts", "integer"),
        ("[supervisor]\nmax_seconds = 0\n", 2, "supervisor.max_seconds", "> 0"),
        ("supervisor = 3\n", 1, "supervisor", "a table"),
        ("unknown = 3\n", 1, "unknown", "unknown table"),
        ("[[process]]\ncmd = 'x'\n", 1, "process", "[process.NAME] tables"),
        ('[process."web app"]\ncmd = "x"\n', 1, 'process."web app"', "invalid process name"),
        ("[process]\nweb = 'x'\n", 2, "process.web", "a table"),
        ("[process.web]\ncmd = 5\n", 2, "process.web.cmd", "list of strings"),
        ("[process.web]\ncmd = ['a', 1]\n", 2, "process.web.cmd", "list of strings"),
        ("[process.web]\ncmd = ''\n", 2, "process.web.cmd", "empty command"),
        (WEB + "cwd = 1\n", 3, "process.web.cwd", "a string"),
        (WEB + "env = { A = true }\n", 3, "process.web.env", "'A'"),
        (WEB + "env = 'A=1'\n", 3, "process.web.env", "table"),
        (WEB + "numprocs = 0\n", 3, "process.web.numprocs", ">= 1"),
        (WEB + "numprocs = true\n", 3, "process.web.numprocs", "integer"),
        (WEB + "stop_signal = 0\n", 3, "process.web.stop_signal", "0"),
        (WEB + "stop_timeout = -1\n", 3, "process.web.stop_timeout", ">="),
        (WEB + "watchdog = 0\n", 3, "process.web.watchdog", "> 0"),
        (WEB + "capture_output = 1\n", 3, "process.web.capture_output", "true"),
        (WEB + "depends_on = [1]\n", 3, "process.web.depends_on", "names"),
        (WEB + "backoff = { factor = 0.5 }\n", 3, "process.web.backoff", ">= 1"),
        (WEB + "backoff = { jitter = 2 }\n", 3, "process.web.backoff", "jitter"),
        (WEB + "backoff = 1\n", 3, "process.web.backoff", "a table"),
        (WEB + "ready = {}\n", 3, "process.web.ready", "exactly one"),
        (WEB + "ready = 8000\n", 3, "process.web.ready", "tcp = 8000"),
        (WEB + "ready = { tcp = 0 }\n", 3, "process.web.ready", "1..65535"),
        (WEB + "ready = { tcp = 1, host = 2 }\n", 3, "process.web.ready", "host"),
        (WEB + "ready = { line = 1 }\n", 3, "process.web.ready", "regular"),
        (WEB + 'ready = { line = "a{99999999999}" }\n', 3, "process.web.ready", "regular"),
        (WEB + "ready = { line = 'x', stream = 'out' }\n", 3, "process.web.ready", "stream"),
        (WEB + "ready = { notify = 1 }\n", 3, "process.web.ready", "true"),
        (
            WEB + "ready = { line = 'x' }\ncapture_output = false\n",
            1,
            "process.web",
            "capture_output",
        ),
        (WEB + "readiness = 1\n", 3, "process.web.readiness", "unknown key"),
        (WEB + "ready.tcp = 80\nready.line = 'x'\n", 3, "process.web.ready", "exactly one"),
        (WEB + "[process.web.bogus]\nx = 1\n", 3, "process.web.bogus", "unknown key"),
        (
            "[process.a]\ncmd = 'x'\n[process.b]\ncmd = 'x'\ndepends_on = 'c'\n",
            5,
            "process.b.depends_on",
            "'c'",
        ),
        ("[process.a]\ncmd = 'x'\ndepends_on = 'a'\n", 3, "process.a.depends_on", "itself"),
    ],
)
def test_parse_toml_errors(text: str, line: int, field: str | None, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_toml(text, "aproc.toml")
    error = info.value
    assert (error.path, error.line, error.field) == ("aproc.toml", line, field), str(error)
    assert fragment in error.message
    assert "\n" not in str(error)


def test_parse_toml_no_processes() -> None:
    with pytest.raises(ConfigError, match=r"no \[process.NAME\] tables") as info:
        parse_toml("[supervisor]\nmax_restarts = 1\n", "aproc.toml")
    assert info.value.line is None


def test_parse_toml_deeply_nested_values() -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        parse_toml("x = " + "[" * 5000, "aproc.toml")


def test_config_error_is_one_line_even_for_strange_keys() -> None:
    with pytest.raises(ConfigError) as info:
        parse_toml('[process.web]\ncmd = "x"\n"new\\nline" = 1\n', "aproc.toml")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        parse_toml('[process."a\\nb"]\ncmd = "x"\n', "aproc.toml")
    assert "\n" not in str(info.value)


def test_config_error_str() -> None:
    assert str(ConfigError("f", 3, "bad", "k")) == "f:3: k: bad"
    assert str(ConfigError("f", None, "bad")) == "f: bad"
    assert isinstance(ConfigError("f", 1, "x"), ValueError)


# ----------------------------------------------------------------- load_config


def test_load_config_procfile(tmp_path: Path) -> None:
    (tmp_path / "Procfile").write_text("web: python -m http.server $PORT\nworker: run.sh\n")
    (tmp_path / ".env").write_text("A=1\n")
    config = load_config(tmp_path / "Procfile")
    web, worker = config.specs
    assert config.env == {"A": "1"}
    assert web.cwd == worker.cwd == str(tmp_path)
    assert [(i.name, i.env) for i in web.instances()] == [("web", {"A": "1", "PORT": "5000"})]
    assert [(i.name, i.env) for i in worker.instances()] == [("worker", {"A": "1", "PORT": "5100"})]
    assert worker.argv == ("run.sh",)


def test_load_config_concurrency_and_base_port(tmp_path: Path) -> None:
    (tmp_path / "Procfile").write_text("web: a\nworker: b\nclock: c\n")
    config = load_config(
        tmp_path / "Procfile", concurrency={"worker": 2, "clock": 0}, base_port=7000
    )
    names = [(i.name, (i.env or {})["PORT"]) for s in config.specs for i in s.instances()]
    assert names == [("web", "7000"), ("worker.1", "7100"), ("worker.2", "7101")]
    no_ports = load_config(tmp_path / "Procfile", base_port=None)
    assert all(s.env is None for s in no_ports.specs)


def test_load_config_unknown_concurrency_name(tmp_path: Path) -> None:
    (tmp_path / "Procfile").write_text("web: a\n")
    with pytest.raises(ConfigError, match="'wbe'") as info:
        load_config(tmp_path / "Procfile", concurrency={"wbe": 1})
    assert info.value.field == "concurrency"


def test_load_config_toml_with_env(tmp_path: Path) -> None:
    (tmp_path / "aproc.toml").write_text(
        "[process.web]\ncmd = ['x']\nnumprocs = 3\nenv = { A = 'toml' }\n"
    )
    (tmp_path / "other.env").write_text("A=dotenv\nB=dotenv\n")
    config = load_config(tmp_path / "aproc.toml", env_file=tmp_path / "other.env")
    (web,) = config.specs
    assert web.env == {"A": "toml", "B": "dotenv"}  # the process's own env wins
    assert web.numprocs == 3
    assert web.base_port is None  # PORT is a Procfile convention
    config = load_config(tmp_path / "aproc.toml", concurrency={"web": 1})
    assert config.specs[0].numprocs == 1


def test_load_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "Procfile")
    with pytest.raises(ConfigError):
        load_config(tmp_path)  # a directory
    (tmp_path / "Procfile").write_bytes(b"web: \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path / "Procfile")
    (tmp_path / "Procfile").write_text("web: a\n")
    with pytest.raises(ConfigError, match="file not found") as info:
        load_config(tmp_path / "Procfile", env_file=tmp_path / "missing.env")
    assert info.value.path == str(tmp_path / "missing.env")


@pytest.mark.parametrize("name", ["Procfile", "aproc.toml"])
def test_examples_load(name: str) -> None:
    config = load_config(EXAMPLES / name)
    assert [s.name for s in config.specs] == ["web", "worker"]


# ----------------------------------------------------------------- fuzz

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TEXT = st.text(st.characters(blacklist_categories=("Cs",)))


def check_error(error: ConfigError, text: str) -> None:
    """Every ConfigError is one line, and names a line that exists (or none)."""
    assert "\n" not in str(error), repr(str(error))
    assert str(error).startswith(error.path)
    if error.line is not None:
        assert 1 <= error.line <= max(1, len(text.splitlines()))


def parses_or_config_error(parse: Any, text: str) -> Any:
    try:
        return parse(text)
    except ConfigError as error:
        check_error(error, text)
        return None


@FUZZ
@given(TEXT)
def test_fuzz_procfile_text(text: str) -> None:
    entries = parses_or_config_error(lambda t: parse_procfile(t, "Procfile"), text)
    if entries is not None:
        assert all(command.strip() for _, command, _ in entries)


@FUZZ
@given(TEXT)
def test_fuzz_dotenv_text(text: str) -> None:
    env = parses_or_config_error(lambda t: load_dotenv(t, ".env"), text)
    if env is not None:
        assert all("\0" not in v for v in env.values())


@FUZZ
@given(TEXT)
def test_fuzz_toml_text(text: str) -> None:
    parses_or_config_error(lambda t: parse_toml(t, "aproc.toml", "/base"), text)


# Near-valid input: lines built from the formats' own pieces.
NAMES = st.one_of(
    st.sampled_from(["web", "worker", "db", "clock", "web-2", "a_b", "web.1", "-x", ""]),
    st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,8}", fullmatch=True),
    TEXT,
)
WORDS = st.one_of(
    st.sampled_from(
        ["python", "-m", "http.server", "$PORT", "|", "&&", ";", "'", '"', "\\", "#", "=",
         "FOO=1", "exec", "`x`", "~", "*.py", "'a b'", '"c $D"', "\t", ":", "\0", "\r"]
    ),
    TEXT,
)  # fmt: skip


@st.composite
def procfiles(draw: st.DrawFn) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["entry", "entry", "entry", "comment", "blank", "junk"]))
        if kind == "entry":
            sep = draw(st.sampled_from([": ", ":", " : ", ":\t", " ", "="]))
            command = " ".join(draw(st.lists(WORDS, max_size=5)))
            lines.append(f"{draw(NAMES)}{sep}{command}")
        elif kind == "comment":
            lines.append("# " + draw(TEXT))
        elif kind == "blank":
            lines.append(draw(st.sampled_from(["", "  ", "\t"])))
        else:
            lines.append(draw(TEXT))
    return "\n".join(lines) + draw(st.sampled_from(["", "\n", "\r\n"]))


@st.composite
def dotenvs(draw: st.DrawFn) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        key = draw(st.one_of(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True), TEXT))
        value = draw(st.one_of(TEXT, st.lists(WORDS, max_size=4).map(" ".join)))
        quote = draw(st.sampled_from(["", "'", '"', "'", '"']))
        end = draw(st.sampled_from([quote, quote, "", " # comment", quote + " tail"]))
        export = draw(st.sampled_from(["", "", "export ", "export"]))
        sep = draw(st.sampled_from(["=", " = ", "=", ":"]))
        lines.append(f"{export}{key}{sep}{quote}{value}{end}")
    return "\n".join(lines)


@FUZZ
@given(procfiles(), dotenvs(), st.dictionaries(NAMES, st.integers(-1, 3), max_size=3))
def test_fuzz_load_config_procfile_and_env(
    tmp_path_factory: pytest.TempPathFactory,
    procfile: str,
    dotenv: str,
    concurrency: dict[str, int],
) -> None:
    directory = tmp_path_factory.mktemp("fuzz")
    (directory / "Procfile").write_text(procfile, encoding="utf-8", newline="")
    (directory / ".env").write_text(dotenv, encoding="utf-8", newline="")
    try:
        config = load_config(directory / "Procfile", concurrency=concurrency)
    except ConfigError as error:
        text = procfile if error.path.endswith("Procfile") else dotenv
        check_error(error, text)
        return
    for spec in config.specs:
        assert isinstance(spec, aproc.ChildSpec)
        assert spec.argv
        assert [i.name for i in spec.instances()]


# TOML: documents built from aproc.toml's own keys, with plausible and arbitrary values.
SCALARS = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    TEXT,
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
    max_leaves=6,
)


def plausible(key: str) -> st.SearchStrategy[Any]:
    names = st.sampled_from(["web", "worker", "db", "nosuch"])
    numbers = st.one_of(st.integers(-2, 100), st.floats(-1, 100), st.sampled_from([math.inf]))
    by_key: dict[str, st.SearchStrategy[Any]] = {
        "cmd": st.one_of(st.lists(WORDS, max_size=4).map(" ".join), st.lists(WORDS, max_size=3)),
        "cwd": st.one_of(st.sampled_from([".", "sub", "/", ""]), TEXT),
        "env": st.dictionaries(st.one_of(st.sampled_from(["PORT", "", "A=B"]), TEXT), VALUES),
        "restart": st.sampled_from(["permanent", "transient", "temporary", "always"]),
        "numprocs": st.integers(-1, 4),
        "stop_signal": st.one_of(
            st.sampled_from(["TERM", "SIGKILL", "int", "hup", "SIGFOO", "", 15, 0, 65, -1]),
            TEXT,
        ),
        "stop_timeout": numbers,
        "start_timeout": numbers,
        "watchdog": numbers,
        "python_unbuffered": st.booleans(),
        "capture_output": st.booleans(),
        "depends_on": st.one_of(names, st.lists(names, max_size=3)),
        "backoff": st.dictionaries(
            st.sampled_from(["initial", "factor", "maximum", "jitter", "reset_after", "x"]),
            numbers,
            max_size=3,
        ),
        "ready": st.dictionaries(
            st.sampled_from(["tcp", "host", "line", "stream", "notify", "x"]),
            st.one_of(
                st.integers(-1, 70000),
                st.sampled_from(["Serving", "(", "a{99999999999}", "stdout", "any", "x"]),
                st.booleans(),
                TEXT,
            ),
            max_size=3,
        ),
        "strategy": st.sampled_from(["one_for_one", "one_for_all", "rest_for_one", "x"]),
        "max_restarts": st.integers(-1, 10),
        "max_seconds": numbers,
    }
    base = by_key.get(key, VALUES)
    return st.one_of(base, base, base, VALUES)


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    assert isinstance(value, dict)
    items = (f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items())
    return "{ " + ", ".join(items) + " }"


@st.composite
def toml_tables(draw: st.DrawFn, known: list[str]) -> dict[str, Any]:
    keys = draw(st.lists(st.one_of(st.sampled_from(known), TEXT), max_size=len(known) // 2 + 2))
    return {key: draw(plausible(key)) for key in keys}


@st.composite
def toml_documents(draw: st.DrawFn) -> str:
    parts = []
    if draw(st.booleans()):
        table = draw(toml_tables(["strategy", "max_restarts", "max_seconds", "bogus"]))
        body = "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in table.items())
        parts.append(f"[supervisor]\n{body}")
    process_keys = [
        "cmd", "cmd", "cwd", "env", "restart", "numprocs", "stop_signal", "stop_timeout", "ready",
        "depends_on", "backoff", "start_timeout", "watchdog", "python_unbuffered",
        "capture_output",
    ]  # fmt: skip
    names = draw(st.lists(NAMES, max_size=4, unique=True))
    for name in names:
        table = draw(toml_tables(process_keys))
        if draw(st.booleans()):
            table.setdefault("cmd", "sleep 1")
        body = "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in table.items())
        parts.append(f"[process.{toml_key(name)}]\n{body}")
    return "\n".join(parts)


@FUZZ
@given(toml_documents())
def test_fuzz_toml_near_valid(text: str) -> None:
    config = parses_or_config_error(lambda t: parse_toml(t, "aproc.toml", "/base"), text)
    if config is not None:
        for spec in config.specs:
            assert isinstance(spec, aproc.ChildSpec)
            assert spec.instances()


@FUZZ
@given(st.data())
def test_fuzz_toml_mutated_example(data: st.DataObject) -> None:
    # Random edits of a valid file: deleted, inserted and duplicated characters and lines.
    text = FULL
    for _ in range(data.draw(st.integers(1, 4))):
        where = data.draw(st.integers(0, len(text)))
        edit = data.draw(st.sampled_from(["delete", "insert", "duplicate-line", "swap"]))
        if edit == "delete":
            text = text[:where] + text[where + data.draw(st.integers(1, 10)) :]
        elif edit == "insert":
            piece = data.draw(st.one_of(st.sampled_from(list("[]{}=\"',.#\n ")), TEXT))
            text = text[:where] + piece + text[where:]
        elif edit == "duplicate-line":
            lines = text.splitlines(keepends=True)
            if lines:
                i = where % len(lines)
                lines.insert(i, lines[i])
            text = "".join(lines)
        else:
            text = text[:where] + text[where:][::-1][:5] + text[where + 5 :]
    parses_or_config_error(lambda t: parse_toml(t, "aproc.toml", "/base"), text)
