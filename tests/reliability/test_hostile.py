"""Hostile input: fuzzing what users and other processes can hand aproc.

Procfile, .env and aproc.toml parsing, argv/env validation and the control-socket protocol are
driven by hypothesis: only the documented errors may come out (ConfigError/ValueError for
configuration, TypeError/ValueError/OSError for spawn requests, an ``{"ok": false}`` answer or a
closed connection for the control socket), never another exception, a hang, a child that should
not exist, or a crashed supervisor. And the control socket refuses other users.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aproc
from aproc.config import ConfigError, command_argv, load_dotenv, parse_procfile, parse_toml
from aproc.control import ControlServer
from aproc.primitives import SpawnRequest

from .conftest import PYTHON, SCALE, Recorder, children_of, open_fds

EXAMPLES = SCALE.pick(300, 5000)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
)
SLOW_FUZZ = settings(FUZZ, max_examples=SCALE.pick(100, 1500))

# A counter per fuzz target, so each test can report how many inputs it tried.
tried: dict[str, int] = {}


def _count(name: str) -> None:
    tried[name] = tried.get(name, 0) + 1


@pytest.fixture
def counted(request: pytest.FixtureRequest, record: Recorder) -> Iterator[str]:
    name = request.node.name
    tried[name] = 0
    yield name
    record(inputs_tried=tried[name])


# ----------------------------------------------------------------------------- configuration

PROCESS_KEYS = [
    "cmd", "cwd", "env", "restart", "numprocs", "stop_signal", "stop_timeout", "ready",
    "depends_on", "backoff", "start_timeout", "watchdog", "python_unbuffered", "capture_output",
]  # fmt: skip
scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),
    st.booleans(),
    st.text(max_size=30),
    st.sampled_from(["TERM", "SIGKILL", "term", "permanent", "transient", "one_for_all", "x"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(
                [
                    "tcp",
                    "line",
                    "notify",
                    "host",
                    "stream",
                    "initial",
                    "factor",
                    "maximum",
                    "jitter",
                    "reset_after",
                    "PORT",
                    "x",
                ]
            )
            | st.text(max_size=6),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=8,
)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"


process_names = st.sampled_from(["web", "db", "worker", "a-b", "_x"]) | st.text(max_size=8)
process_tables = st.dictionaries(
    st.sampled_from(PROCESS_KEYS) | st.text(max_size=8), values, max_size=6
)
toml_documents = st.builds(
    lambda sup, procs: (
        "[supervisor]\n"
        + "".join(f"{json.dumps(k)} = {_toml_value(v)}\n" for k, v in sup.items())
        + "".join(
            f"\n[process.{json.dumps(name)}]\n"
            + "".join(f"{json.dumps(k)} = {_toml_value(v)}\n" for k, v in table.items())
            for name, table in procs.items()
        )
    ),
    st.dictionaries(
        st.sampled_from(["strategy", "max_restarts", "max_seconds", "other"]), values, max_size=3
    ),
    st.dictionaries(process_names, process_tables, max_size=4),
)
line_texts = st.lists(
    st.one_of(
        st.text(max_size=60),
        st.builds(lambda n, c: f"{n}: {c}", process_names, st.text(max_size=40)),
        st.builds(lambda k, v: f"{k}={v}", st.text(max_size=10), st.text(max_size=30)),
        st.sampled_from(["#", "export A='b", 'A="\\', "x: 'unbalanced", "web:", " : ", "A=\0"]),
    ),
    max_size=8,
).map("\n".join)


def _only_config_errors(func: Any, *args: Any) -> Any:
    """Call ``func``; a ConfigError (naming the file) or ValueError gives None. Any other
    exception propagates and fails the test."""
    error: ConfigError | None = None
    try:
        return func(*args)
    except ConfigError as exc:
        error = exc
    except ValueError:
        return None
    assert str(error).startswith(error.path), str(error)  # names the file
    return None


@FUZZ
@given(text=st.one_of(st.text(), line_texts))
def test_fuzz_procfile(text: str, counted: str) -> None:
    _count(counted)
    entries = _only_config_errors(parse_procfile, text, "Procfile")
    for name, command, line in entries or ():
        assert isinstance(name, str)
        assert isinstance(command, str)
        assert line >= 1
        _only_config_errors(command_argv, command)


@FUZZ
@given(text=st.one_of(st.text(), line_texts))
def test_fuzz_dotenv(text: str, counted: str) -> None:
    _count(counted)
    env = _only_config_errors(load_dotenv, text, ".env")
    if env is not None:
        assert all(
            isinstance(k, str) and isinstance(v, str) and "\0" not in v for k, v in env.items()
        )


@FUZZ
@given(command=st.text())
def test_fuzz_command_argv(command: str, counted: str) -> None:
    _count(counted)
    argv = _only_config_errors(command_argv, command)
    if argv is not None:
        assert argv
        assert all(isinstance(a, str) for a in argv)


@FUZZ
@given(text=st.one_of(toml_documents, st.text()))
def test_fuzz_toml(text: str, counted: str) -> None:
    _count(counted)
    config = _only_config_errors(parse_toml, text, "aproc.toml", "/srv")
    if config is not None:
        assert all(isinstance(spec, aproc.ChildSpec) for spec in config.specs)


# ----------------------------------------------------------------------------- spawn requests

path_like = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=40),
    st.text(max_size=10).map(Path),
)
anything = st.one_of(
    path_like, st.integers(), st.none(), st.floats(), st.lists(st.text(), max_size=2)
)
hashable = st.one_of(path_like, st.integers(), st.none(), st.floats(allow_nan=False))
argvs = st.one_of(st.lists(path_like, max_size=6), st.lists(anything, max_size=3), path_like)
envs = st.one_of(
    st.none(),
    st.dictionaries(path_like, path_like, max_size=5),
    st.dictionaries(hashable, anything, max_size=2),
)


@FUZZ
@given(
    argv=argvs, env=envs, cwd=st.one_of(st.none(), path_like), fds=st.lists(anything, max_size=3)
)
def test_fuzz_spawn_request(argv: Any, env: Any, cwd: Any, fds: Any, counted: str) -> None:
    _count(counted)
    try:
        SpawnRequest.create(argv, env=env, cwd=cwd, pass_fds=fds)
    except (TypeError, ValueError, OSError):
        pass


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@SLOW_FUZZ
@given(args=st.lists(path_like, max_size=5), env=envs)
async def test_fuzz_spawn_never_starts_a_stray_child(
    anyio_backend: str, args: list[Any], env: Any, counted: str
) -> None:
    """Arbitrary arguments and environments for a program that does not exist: a clear error,
    no child, no fd."""
    _count(counted)
    fds = open_fds()
    with pytest.raises((TypeError, ValueError, OSError)) as info:
        await aproc.spawn(["/nonexistent/aproc-fuzz", *args], env=env, stdout=aproc.PIPE)
    if isinstance(info.value, OSError):
        assert info.value.filename == "/nonexistent/aproc-fuzz"
    assert children_of(os.getpid()) == {}
    assert open_fds() == fds


safe_bytes = st.binary(max_size=60).map(lambda b: b.replace(b"\0", b""))
env_names = st.binary(min_size=1, max_size=12).map(
    lambda b: b.replace(b"\0", b"").replace(b"=", b"")
)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@SLOW_FUZZ
@given(
    args=st.lists(safe_bytes, max_size=6), env=st.dictionaries(env_names, safe_bytes, max_size=5)
)
async def test_fuzz_argv_and_env_reach_the_child_exactly(
    anyio_backend: str, args: list[bytes], env: dict[bytes, bytes], counted: str
) -> None:
    """Whatever bytes pass validation reach the child unchanged (argv through printf, the
    environment through env -0)."""
    _count(counted)
    env = {k: v for k, v in env.items() if k}
    argv_out = await aproc.run(["/bin/sh", "-c", 'printf "%s\\0" "$@"', "sh", *args], env={})
    # (printf runs its format once even without arguments.)
    assert argv_out.stdout == (b"".join(a + b"\0" for a in args) or b"\0")
    env_out = await aproc.run(["/usr/bin/env", "-0"], env=env)
    got = [item for item in env_out.stdout.split(b"\0") if item]
    assert sorted(got) == sorted(k + b"=" + v for k, v in env.items())


# ----------------------------------------------------------------------------- control socket

CHILD = "svc-7f3a9"


@pytest.fixture
async def control(tmp_path: Path) -> AsyncIterator[tuple[aproc.Supervisor, Path]]:
    spec = aproc.ChildSpec(CHILD, ["sleep", "3600"], numprocs=2)
    path = tmp_path / "ctl" / "aproc.sock"
    async with aproc.Supervisor([spec]) as sup, ControlServer(sup, path):
        yield sup, path


async def _exchange(path: Path, payload: bytes, how: str) -> list[bytes]:
    """Send ``payload``; then half-close and read every answer, or just close."""
    answers = b""
    async with await anyio.connect_unix(path) as stream:
        try:
            await stream.send(payload)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return []  # the server refused an oversized request and closed first
        if how == "close":
            return []
        await stream.send_eof()
        with anyio.fail_after(10):
            try:
                while True:
                    answers += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
    return answers.splitlines()


async def _status(path: Path) -> list[dict[str, Any]]:
    request = json.dumps({"v": 1, "cmd": "status"}).encode() + b"\n"
    lines = await _exchange(path, request, "read")
    assert len(lines) == 1, lines
    answer = json.loads(lines[0])
    assert answer["ok"] is True, answer
    result: list[dict[str, Any]] = answer["result"]
    return result


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)
requests = st.fixed_dictionaries(
    {
        "v": st.sampled_from([1, 2, 0, "1", None, 1.5, True, [1]]),
        "cmd": st.sampled_from(["status", "start", "stop", "restart", "", "STATUS"]) | st.text(),
    },
    optional={"name": st.text() | st.integers() | st.none() | json_values, "extra": json_values},
)
one_line = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    requests.map(lambda r: json.dumps(r).encode()),
    st.integers(1, 40_000).map(lambda n: b"[" * n + b"]" * n),  # deep nesting
    st.integers(1, 40_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.integers(60_000, 200_000).map(lambda n: b"x" * n),  # past the request size limit
    st.sampled_from([b"", b"{}", b"null", b"\xff\xfe", b'{"v":1}', b"1" * 5000]),
)
payloads = st.lists(one_line, min_size=1, max_size=4).flatmap(
    lambda lines: st.sampled_from([b"\n".join(lines), b"\n".join(lines) + b"\n"])
)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.usefixtures("quiet_logs")
@SLOW_FUZZ
@given(payload=payloads, how=st.sampled_from(["read", "read", "close"]))
async def test_fuzz_control_socket(
    anyio_backend: str,
    control: tuple[aproc.Supervisor, Path],
    payload: bytes,
    how: str,
    counted: str,
) -> None:
    sup, path = control
    _count(counted)
    answers = await _exchange(path, payload, how)
    for raw in answers:
        answer = json.loads(raw)
        assert isinstance(answer, dict), answer
        assert answer["v"] == 1, answer
        if answer["ok"] is False:
            assert isinstance(answer["error"], str)
            assert answer["error"]
        else:
            assert answer["ok"] is True, answer
            assert isinstance(answer["result"], list), answer
    complete = payload.count(b"\n")
    assert len(answers) <= complete + 1
    # The supervisor and its server carry on.
    assert [s.state for s in sup.status()] == ["running", "running"]
    assert [c["state"] for c in await _status(path)] == ["running", "running"]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.usefixtures("quiet_logs")
async def test_control_socket_deep_nesting_regression(
    control: tuple[aproc.Supervisor, Path],
) -> None:
    """Regression: a request nested deeper than the JSON decoder's recursion limit raised
    RecursionError out of the connection handler, which took the control server down."""
    _, path = control
    for depth in (1_000, 10_000, 30_000):
        lines = await _exchange(path, b"[" * depth + b"]" * depth + b"\n", "read")
        assert len(lines) == 1
        answer = json.loads(lines[0])
        assert answer["ok"] is False, answer
        assert "malformed" in answer["error"], answer
    assert len(await _status(path)) == 2


CLIENT = r"""
import json, os, socket, sys
path, mode = sys.argv[1], sys.argv[2]
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    sock.connect(path)
except OSError as exc:
    print(json.dumps({"connect": type(exc).__name__}))
    sys.exit(0)
if mode == "hangup":
    sock.close()
    print(json.dumps({"connect": "ok", "hung_up": True}))
    sys.exit(0)
try:
    sock.sendall(json.dumps({"v": 1, "cmd": "stop", "name": sys.argv[3]}).encode() + b"\n")
except BrokenPipeError:
    pass  # refused and closed before the request went out: the answer is already here
data = b""
while not data.endswith(b"\n"):
    try:
        chunk = sock.recv(65536)
    except ConnectionResetError:
        break
    if not chunk:
        break
    data += chunk
print(json.dumps({"connect": "ok", "answer": data.decode()}))
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory uid 65534 can reach (pytest's tmp_path lives under a 0700 directory)."""
    base = Path(tempfile.mkdtemp(prefix="aproc-reliability-"))
    os.chmod(base, 0o711)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.usefixtures("quiet_logs")
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
async def test_control_socket_refuses_other_users(
    anyio_backend: str, shared_dir: Path, record: Recorder
) -> None:
    """Another user is kept out by the directory's mode and, failing that, by the peer
    credential check. Regression: a foreign client that hung up before reading its 'forbidden'
    answer made the send fail, and the error took the whole control server down."""
    spec = aproc.ChildSpec(CHILD, ["sleep", "3600"])
    path = shared_dir / "ctl" / "aproc.sock"

    async def as_nobody(mode: str) -> dict[str, Any]:
        result = await aproc.run([PYTHON, "-c", CLIENT, str(path), mode, CHILD], check=False)
        assert result.returncode == 0, result.stderr.decode()
        answer: dict[str, Any] = json.loads(result.stdout)
        return answer

    async with aproc.Supervisor([spec]) as sup, ControlServer(sup, path):
        # As made: a 0700 directory and a 0600 socket; another user cannot even connect.
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        closed = await as_nobody("request")
        # Opened up by mistake: the peer-credential check still refuses.
        os.chmod(path.parent, 0o755)
        os.chmod(path, 0o666)
        try:
            opened = await as_nobody("request")
            hangups = [await as_nobody("hangup") for _ in range(20)]
        finally:
            os.chmod(path, 0o600)
            os.chmod(path.parent, 0o700)
        status = await _status(path)
    record(
        backend=anyio_backend,
        closed_dir=closed,
        open_dir=opened.get("answer", "").strip(),
        hangups=len(hangups),
    )
    assert closed == {"connect": "PermissionError"}
    assert json.loads(opened["answer"]) == {"v": 1, "ok": False, "error": "forbidden"}
    assert all(h["connect"] == "ok" for h in hangups)
    assert [c["state"] for c in status] == ["running"]  # the forbidden stop did nothing
