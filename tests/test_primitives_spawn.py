"""Spawning with both launchers (glibc posix_spawn and fork/execve).

Covers exit statuses, the exact exec errors (PITFALLS.md 1), validation before any fork (8), fd
hygiene (1, 5), the dup2 shuffle with the parent's own stdio closed (4), the child's signal state
(7), sessions and process groups, cwd/env/PATH, the fork-only features and PendingExec.
"""

from __future__ import annotations

import errno
import fcntl
import importlib
import json
import os
import resource
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from conftest import children_of

import aproc
from aproc.primitives import (
    POSIX_SPAWN_AVAILABLE,
    ExitStatus,
    PendingExec,
    SpawnRequest,
    close_fds,
    fork_exec,
    pipe,
    posix_spawn,
    spawn,
    start_fork_exec,
    uses_posix_spawn,
    wait_blocking,
)

# The package re-exports functions named like its modules (spawn): fetch the modules themselves.
spawn_module = importlib.import_module("aproc.primitives.spawn")
spawn_posix_module = importlib.import_module("aproc.primitives.spawn_posix")

Launcher = Callable[[SpawnRequest], int]

ROOT = str(Path(aproc.__file__).resolve().parent.parent)
SH = "/bin/sh"


@pytest.fixture(params=["posix_spawn", "fork_exec"])
def launcher(request: pytest.FixtureRequest) -> Launcher:
    if request.param == "posix_spawn":
        if not POSIX_SPAWN_AVAILABLE:
            pytest.skip("glibc posix_spawn with addchdir_np/addclosefrom_np is not available")
        return posix_spawn
    return fork_exec


class _Tripwire:
    def __getattr__(self, name: str) -> Any:
        pytest.fail(f"posix_spawn reached libc.{name}: validation must happen before any spawn")


@pytest.fixture
def no_spawn(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail the test if anything reaches os.fork or glibc's posix_spawn, or makes a child."""

    def tripwire_fork() -> int:
        pytest.fail("os.fork reached: validation must happen before any fork")

    kids_before = children_of(os.getpid())
    monkeypatch.setattr(os, "fork", tripwire_fork)
    monkeypatch.setattr(spawn_posix_module, "_loaded", (_Tripwire(), None, None, None, None))
    yield
    assert children_of(os.getpid()) == kids_before


# --------------------------------------------------------------------------------------------
# helpers


class Result(NamedTuple):
    pid: int
    status: ExitStatus
    out: bytes
    err: bytes


def read_to_eof(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def read_exact(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        assert chunk, f"EOF after {data!r}"
        data += chunk
    return data


def kill_and_reap(pid: int) -> ExitStatus:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return wait_blocking(pid)


def run(
    launcher: Launcher, argv: list[Any], *, capture_stderr: bool = False, **kwargs: Any
) -> Result:
    """Spawn ``argv`` with stdout (and stderr) on fresh pipes, read them to EOF and reap."""
    out_r, out_w = pipe()
    err_r, err_w = pipe() if capture_stderr else (None, None)
    try:
        try:
            request = SpawnRequest.create(argv, stdout=out_w, stderr=err_w, **kwargs)
            pid = launcher(request)
        finally:
            os.close(out_w)
            if err_w is not None:
                os.close(err_w)
        try:
            out = read_to_eof(out_r)
            err = read_to_eof(err_r) if err_r is not None else b""
        except BaseException:
            kill_and_reap(pid)
            raise
        return Result(pid, wait_blocking(pid), out, err)
    finally:
        os.close(out_r)
        if err_r is not None:
            os.close(err_r)


@contextmanager
def parked_child(launcher: Launcher, **kwargs: Any) -> Iterator[int]:
    """A ``cat`` child blocked reading an empty pipe; leaving the block lets it exit, reaped."""
    in_r, in_w = pipe()
    try:
        try:
            pid = launcher(SpawnRequest.create(["cat"], stdin=in_r, **kwargs))
        finally:
            os.close(in_r)
    except BaseException:
        os.close(in_w)
        raise
    try:
        yield pid
    finally:
        os.close(in_w)
        wait_blocking(pid)


def proc_stat(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2 :].split()
    return {"ppid": int(fields[1]), "pgrp": int(fields[2]), "session": int(fields[3])}


def is_open(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise
        return False
    return True


def make_script(path: Path, body: str, mode: int = 0o755) -> Path:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(mode)
    return path


def run_python(script: str, *args: str, tmp_path: Path) -> Any:
    """Run ``script`` in a fresh interpreter that can import aproc; return the JSON it wrote
    to the path given as its last argument."""
    result_path = tmp_path / "result.json"
    pythonpath = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", script, *args, str(result_path)],
        env={**os.environ, "PYTHONPATH": pythonpath},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    result = json.loads(result_path.read_text())
    assert "error" not in result, result["error"]
    return result


# --------------------------------------------------------------------------------------------
# exit statuses


@pytest.mark.parametrize("code", [0, 3, 255])
def test_exit_code(launcher: Launcher, code: int) -> None:
    result = run(launcher, [SH, "-c", f"echo $$; exit {code}"])
    assert result.status == ExitStatus(code, core_dumped=False)
    assert result.status.signal is None
    assert result.status.signal_name is None
    # The pid returned is the exec'd program itself, not an intermediate process.
    assert result.out == b"%d\n" % result.pid


@pytest.mark.parametrize(
    ("sig", "returncode"), [(signal.SIGTERM, -15), (signal.SIGKILL, -9)], ids=["TERM", "KILL"]
)
def test_child_killed_by_signal(launcher: Launcher, sig: signal.Signals, returncode: int) -> None:
    result = run(launcher, [SH, "-c", f"echo $$; kill -{sig.name[3:]} $$; echo not-reached"])
    assert result.status == ExitStatus(returncode, core_dumped=False)
    assert result.status.returncode == returncode
    assert result.status.signal is sig
    assert result.status.signal_name == sig.name
    assert result.out == b"%d\n" % result.pid


# --------------------------------------------------------------------------------------------
# validation happens before any fork (PITFALLS.md 8)


@pytest.mark.parametrize(
    ("argv", "kwargs", "exc"),
    [
        pytest.param([], {}, ValueError, id="empty-argv"),
        pytest.param("echo hi", {}, TypeError, id="str-argv"),
        pytest.param(b"echo", {}, TypeError, id="bytes-argv"),
        pytest.param(Path("/bin/echo"), {}, TypeError, id="pathlike-argv"),
        pytest.param(["echo", 3], {}, TypeError, id="int-in-argv"),
        pytest.param(["ec\0ho"], {}, ValueError, id="nul-argv0"),
        pytest.param(["echo", "a\0b"], {}, ValueError, id="nul-argv1"),
        pytest.param(["echo", b"a\0b"], {}, ValueError, id="nul-bytes-arg"),
        pytest.param(["echo"], {"env": {"A\0B": "1"}}, ValueError, id="nul-env-key"),
        pytest.param(["echo"], {"env": {"A": "1\0"}}, ValueError, id="nul-env-value"),
        pytest.param(["echo"], {"env": {b"A": b"\0"}}, ValueError, id="nul-env-bytes-value"),
        pytest.param(["echo"], {"env": {"A=B": "1"}}, ValueError, id="eq-in-env-key"),
        pytest.param(["echo"], {"env": {"=A": "1"}}, ValueError, id="eq-leading-env-key"),
        pytest.param(["echo"], {"env": {"": "1"}}, ValueError, id="empty-env-key"),
        pytest.param(["echo"], {"cwd": "/tm\0p"}, ValueError, id="nul-cwd"),
        pytest.param(["echo"], {"executable": "/bin/e\0cho"}, ValueError, id="nul-executable"),
        pytest.param(["echo"], {"stdout": -1}, ValueError, id="negative-stdout"),
        pytest.param(["echo"], {"stdin": True}, ValueError, id="bool-stdin"),
        pytest.param(["echo"], {"pass_fds": [-1]}, ValueError, id="negative-pass-fd"),
        pytest.param(["echo"], {"process_group": -1}, ValueError, id="negative-pgroup"),
    ],
)
def test_invalid_request_raises_before_any_fork(
    launcher: Launcher, no_spawn: None, argv: Any, kwargs: dict[str, Any], exc: type[Exception]
) -> None:
    with pytest.raises(exc):
        launcher(SpawnRequest.create(argv, **kwargs))


def test_validation_messages_name_the_problem(no_spawn: None) -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        SpawnRequest.create([])
    with pytest.raises(TypeError, match="single string"):
        SpawnRequest.create("ls -l")
    with pytest.raises(ValueError, match="NUL byte"):
        SpawnRequest.create(["echo", "x\0"])
    with pytest.raises(ValueError, match="illegal environment variable name"):
        SpawnRequest.create(["echo"], env={"A=B": "1"})


@pytest.mark.parametrize("program", ["aproc-no-such-program", b"aproc-no-such-program"])
def test_missing_program_on_path_raises_before_fork(
    launcher: Launcher, no_spawn: None, program: str | bytes
) -> None:
    with pytest.raises(FileNotFoundError) as info:
        launcher(SpawnRequest.create([program, "arg"]))
    assert type(info.value) is FileNotFoundError
    assert info.value.errno == errno.ENOENT
    assert info.value.strerror == os.strerror(errno.ENOENT)
    assert info.value.filename == "aproc-no-such-program"


def test_not_executable_on_path_raises_before_fork(
    launcher: Launcher, no_spawn: None, tmp_path: Path
) -> None:
    make_script(tmp_path / "noexec", "echo hi", mode=0o644)
    with pytest.raises(PermissionError) as info:
        launcher(SpawnRequest.create(["noexec"], env={"PATH": str(tmp_path)}))
    assert info.value.errno == errno.EACCES
    assert info.value.filename == "noexec"


# --------------------------------------------------------------------------------------------
# exec failures surface at spawn, exactly (PITFALLS.md 1)


def assert_exact_error(
    info: pytest.ExceptionInfo[OSError], exc_type: type[OSError], err: int, filename: str
) -> None:
    assert type(info.value) is exc_type
    assert info.value.errno == err
    assert info.value.strerror == os.strerror(err)
    assert info.value.filename == filename


def test_missing_program_path(launcher: Launcher, tmp_path: Path) -> None:
    kids = children_of(os.getpid())
    program = str(tmp_path / "missing" / "prog")
    with pytest.raises(FileNotFoundError) as info:
        launcher(SpawnRequest.create([program]))
    assert_exact_error(info, FileNotFoundError, errno.ENOENT, program)
    assert children_of(os.getpid()) == kids


def test_missing_relative_program_names_the_program_not_the_cwd(
    launcher: Launcher, tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError) as info:
        launcher(SpawnRequest.create(["./missing"], cwd=str(tmp_path)))
    assert_exact_error(info, FileNotFoundError, errno.ENOENT, "./missing")


def test_not_executable(launcher: Launcher, tmp_path: Path) -> None:
    kids = children_of(os.getpid())
    program = str(make_script(tmp_path / "noexec", "echo hi", mode=0o644))
    with pytest.raises(PermissionError) as info:
        launcher(SpawnRequest.create([program]))
    assert_exact_error(info, PermissionError, errno.EACCES, program)
    assert children_of(os.getpid()) == kids


def test_directory_as_program(launcher: Launcher, tmp_path: Path) -> None:
    with pytest.raises(PermissionError) as info:
        launcher(SpawnRequest.create([str(tmp_path)]))
    assert_exact_error(info, PermissionError, errno.EACCES, str(tmp_path))


def test_missing_cwd(launcher: Launcher, tmp_path: Path) -> None:
    kids = children_of(os.getpid())
    cwd = str(tmp_path / "no" / "such" / "dir")
    with pytest.raises(FileNotFoundError) as info:
        launcher(SpawnRequest.create(["true"], cwd=cwd))
    assert_exact_error(info, FileNotFoundError, errno.ENOENT, cwd)
    assert children_of(os.getpid()) == kids


def test_cwd_is_a_file(launcher: Launcher, tmp_path: Path) -> None:
    cwd = tmp_path / "file"
    cwd.write_bytes(b"")
    with pytest.raises(NotADirectoryError) as info:
        launcher(SpawnRequest.create(["true"], cwd=str(cwd)))
    assert_exact_error(info, NotADirectoryError, errno.ENOTDIR, str(cwd))


def test_cwd_as_path_object_is_named_as_str(launcher: Launcher, tmp_path: Path) -> None:
    cwd = tmp_path / "missing"
    with pytest.raises(FileNotFoundError) as info:
        launcher(SpawnRequest.create(["true"], cwd=cwd))
    assert_exact_error(info, FileNotFoundError, errno.ENOENT, str(cwd))


def test_failed_spawns_leak_no_fd_and_no_child(launcher: Launcher, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing")
    bad_cwd = str(tmp_path / "no-dir")
    fds_before = set(os.listdir("/proc/self/fd"))
    kids_before = children_of(os.getpid())
    out_r, out_w = pipe()
    try:
        for _ in range(100):
            with pytest.raises(FileNotFoundError):
                launcher(SpawnRequest.create([missing], stdout=out_w))
            with pytest.raises(FileNotFoundError):
                launcher(SpawnRequest.create(["true"], cwd=bad_cwd, stdout=out_w))
            # Sources on 0-2 aimed at another target are lifted to temporary fds first:
            # those temporaries must be closed on failure too.
            with pytest.raises(FileNotFoundError):
                launcher(SpawnRequest.create(["true"], cwd=bad_cwd, stdout=2, stderr=1))
    finally:
        os.close(out_w)
    try:
        assert read_to_eof(out_r) == b""  # no failed child ever wrote (or exited 127)
    finally:
        os.close(out_r)
    assert set(os.listdir("/proc/self/fd")) == fds_before
    assert children_of(os.getpid()) == kids_before


# --------------------------------------------------------------------------------------------
# only 0, 1, 2 and pass_fds reach the child (PITFALLS.md 5)


def high_fd(fd: int, at_least: int, *, inheritable: bool) -> int:
    cmd = fcntl.F_DUPFD if inheritable else fcntl.F_DUPFD_CLOEXEC
    return fcntl.fcntl(fd, cmd, at_least)


def child_fd_table(launcher: Launcher, **kwargs: Any) -> dict[int, str]:
    """Start ``cat`` on fresh stdin/stdout pipes, make sure it runs its copy loop (past the
    dynamic loader, which opens fds of its own) by an echo, and return its fd table."""
    in_r, in_w = pipe()
    out_r, out_w = pipe()
    try:
        pid = launcher(
            SpawnRequest.create(["cat"], stdin=in_r, stdout=out_w, stderr=out_w, **kwargs)
        )
    except BaseException:
        close_fds(in_r, in_w, out_r, out_w)
        raise
    close_fds(in_r, out_w)
    try:
        os.write(in_w, b"ping\n")
        assert read_exact(out_r, 5) == b"ping\n"
        table = {
            int(name): os.readlink(f"/proc/{pid}/fd/{name}")
            for name in os.listdir(f"/proc/{pid}/fd")
        }
        assert table[0] == os.readlink(f"/proc/self/fd/{in_w}")
        assert table[1] == table[2] == os.readlink(f"/proc/self/fd/{out_r}")
    finally:
        os.close(in_w)
        try:
            rest = read_to_eof(out_r)
        finally:
            os.close(out_r)
            status = wait_blocking(pid)
    assert rest == b""
    assert status.returncode == 0
    return table


def test_child_sees_only_stdio_even_with_inheritable_fds(
    launcher: Launcher, tmp_path: Path
) -> None:
    file_fd = os.open(tmp_path / "file", os.O_RDWR | os.O_CREAT, 0o600)
    leak_r, leak_w = os.pipe()
    try:
        for fd in (file_fd, leak_r, leak_w):
            os.set_inheritable(fd, True)
        assert sorted(child_fd_table(launcher)) == [0, 1, 2]
    finally:
        close_fds(file_fd, leak_r, leak_w)


def test_pass_fds_keep_their_numbers(launcher: Launcher) -> None:
    a_r, a_w = pipe()
    b_r, b_w = pipe()
    writers = [a_w, b_w]
    try:
        # fd_a < gap < fd_b < above: the gap and the fd above are inheritable but not passed.
        fd_a = high_fd(a_w, 100, inheritable=False)
        writers.append(fd_a)
        gap = high_fd(a_w, fd_a + 1, inheritable=True)
        writers.append(gap)
        fd_b = high_fd(b_w, gap + 2, inheritable=False)
        writers.append(fd_b)
        above = high_fd(b_w, fd_b + 1, inheritable=True)
        writers.append(above)

        table = child_fd_table(launcher, pass_fds=[fd_b, fd_a, fd_a])
        assert sorted(table) == [0, 1, 2, fd_a, fd_b]
        assert table[fd_a] == os.readlink(f"/proc/self/fd/{a_r}")
        assert table[fd_b] == os.readlink(f"/proc/self/fd/{b_r}")

        # The passed fds are usable, by the same numbers, in the child.
        code = (
            "import os, sys; os.write(int(sys.argv[1]), b'to a');"
            " os.write(int(sys.argv[2]), b'to b')"
        )
        argv = [sys.executable, "-c", code, str(fd_a), str(fd_b)]
        pid = launcher(SpawnRequest.create(argv, pass_fds=(fd_a, fd_b)))
        try:
            close_fds(*writers)
        finally:
            writers = []
        try:
            assert read_to_eof(a_r) == b"to a"
            assert read_to_eof(b_r) == b"to b"
        finally:
            assert wait_blocking(pid).returncode == 0
    finally:
        close_fds(a_r, b_r, *writers)


def test_spawn_leaves_parent_fds_untouched(launcher: Launcher) -> None:
    r, w = pipe()
    try:
        result = run(launcher, ["true"], pass_fds=[r, w], stdin=r)
        assert result.status.returncode == 0
        # The parent's copies stay close-on-exec and open.
        assert not os.get_inheritable(r)
        assert not os.get_inheritable(w)
        assert is_open(r)
        assert is_open(w)
    finally:
        os.close(r)
        os.close(w)


# --------------------------------------------------------------------------------------------
# the dup2 shuffle with the parent's own 0, 1, 2 closed (PITFALLS.md 4)

STDIO_SCRIPT = r"""
import fcntl, json, os, sys, traceback

launcher_name, scenario, result_path = sys.argv[1:]
for fd in (0, 1, 2):
    os.close(fd)
result = {}
try:
    from aproc import primitives as P

    launcher = getattr(P, launcher_name)
    fds_before = set(os.listdir("/proc/self/fd"))

    def read_to_eof(fd):
        data = b""
        while chunk := os.read(fd, 65536):
            data += chunk
        return data.decode()

    def start(argv, **kwargs):
        return launcher(P.SpawnRequest.create(argv, **kwargs))

    def place(fd, target):
        os.dup2(fd, target, inheritable=False)
        os.close(fd)

    def low_open():
        found = []
        for fd in (0, 1, 2):
            try:
                fcntl.fcntl(fd, fcntl.F_GETFD)
            except OSError:
                continue
            found.append(fd)
        return found

    OUT_ERR = ["sh", "-c", "printf out; printf err >&2"]
    if scenario == "closed":
        # stdin is inherited, i.e. closed; the data pipe and the fork launcher's error pipe
        # must not land on 0-2, where the shuffle would clobber them.
        r, w = P.pipe()
        result["pipe_above_stdio"] = r >= 3 and w >= 3
        pid = start(OUT_ERR, stdout=w, stderr=w)
        os.close(w)
        result["low_open_after_spawn"] = low_open()
        result["out"] = read_to_eof(r)
        os.close(r)
    elif scenario == "own-target":
        # Every source already sits on its target, close-on-exec (as os.pipe makes it).
        in_r, in_w = P.pipe()
        out_r, out_w = P.pipe()
        err_r, err_w = P.pipe()
        place(in_r, 0)
        place(out_w, 1)
        place(err_w, 2)
        pid = start(["sh", "-c", "cat; printf err >&2"], stdin=0, stdout=1, stderr=2)
        for fd in (0, 1, 2):
            os.close(fd)
        os.write(in_w, b"in-to-out")
        os.close(in_w)
        result["out"] = read_to_eof(out_r)
        result["err"] = read_to_eof(err_r)
        os.close(out_r)
        os.close(err_r)
    elif scenario == "raw-os-pipe":
        # With 0-2 closed, os.pipe() itself hands out 0 and 1: stdout=1 is its own target.
        r, w = os.pipe()
        result["raw_pipe"] = [r, w]
        pid = start(["sh", "-c", "printf out"], stdout=w)
        os.close(w)
        result["out"] = read_to_eof(r)
        os.close(r)
    elif scenario == "swap":
        a_r, a_w = P.pipe()
        b_r, b_w = P.pipe()
        place(a_w, 1)
        place(b_w, 2)
        # The child's stdout is what we have on 2 and its stderr what we have on 1.
        pid = start(OUT_ERR, stdout=2, stderr=1)
        os.close(1)
        os.close(2)
        result["via_parent_fd2"] = read_to_eof(b_r)
        result["via_parent_fd1"] = read_to_eof(a_r)
        os.close(a_r)
        os.close(b_r)
    elif scenario == "rotate":
        a_r, a_w = P.pipe()
        b_r, b_w = P.pipe()
        c_r, c_w = P.pipe()
        place(a_w, 0)
        place(b_w, 1)
        place(c_r, 2)
        # stdin <- parent's 2, stdout -> parent's 0, stderr -> parent's 1: a 3-cycle.
        pid = start(["sh", "-c", "cat; printf err >&2"], stdin=2, stdout=0, stderr=1)
        for fd in (0, 1, 2):
            os.close(fd)
        os.write(c_w, b"in-to-out")
        os.close(c_w)
        result["via_parent_fd0"] = read_to_eof(a_r)
        result["via_parent_fd1"] = read_to_eof(b_r)
        os.close(a_r)
        os.close(b_r)
    else:
        raise AssertionError(scenario)
    result["returncode"] = P.wait_blocking(pid).returncode
    result["low_open_at_end"] = low_open()
    result["leaked"] = sorted(set(os.listdir("/proc/self/fd")) ^ fds_before)
except BaseException:
    result["error"] = traceback.format_exc()
with open(result_path, "w") as f:
    json.dump(result, f)
"""

STDIO_EXPECTED: dict[str, dict[str, Any]] = {
    "closed": {"pipe_above_stdio": True, "low_open_after_spawn": [], "out": "outerr"},
    "own-target": {"out": "in-to-out", "err": "err"},
    "raw-os-pipe": {"raw_pipe": [0, 1], "out": "out"},
    "swap": {"via_parent_fd2": "out", "via_parent_fd1": "err"},
    "rotate": {"via_parent_fd0": "in-to-out", "via_parent_fd1": "err"},
}


@pytest.mark.parametrize("scenario", list(STDIO_EXPECTED))
def test_stdio_shuffle_with_parent_stdio_closed(
    launcher: Launcher, scenario: str, tmp_path: Path
) -> None:
    result = run_python(STDIO_SCRIPT, launcher.__name__, scenario, tmp_path=tmp_path)
    expected = {
        **STDIO_EXPECTED[scenario],
        "returncode": 0,
        "low_open_at_end": [],
        "leaked": [],
    }
    assert result == expected


def test_swap_stdout_and_stderr_in_process(launcher: Launcher) -> None:
    """stdout=2 and stderr=1 with the parent's own (pytest's) 1 and 2: the child gets them
    crossed, and the parent's 1 and 2 are untouched afterwards."""
    before = {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in (1, 2)}
    code = (
        "import os, sys; os.write(int(sys.argv[1]),"
        " '\\n'.join(os.readlink(f'/proc/self/fd/{n}') for n in (1, 2)).encode())"
    )
    r, w = pipe()
    try:
        try:
            argv = [sys.executable, "-c", code, str(w)]
            pid = launcher(SpawnRequest.create(argv, stdout=2, stderr=1, pass_fds=[w]))
        finally:
            os.close(w)
        try:
            out = read_to_eof(r)
        finally:
            status = wait_blocking(pid)
    finally:
        os.close(r)
    assert status.returncode == 0
    assert out.decode().split("\n") == [before[2], before[1]]
    assert {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in (1, 2)} == before


# --------------------------------------------------------------------------------------------
# signal state (PITFALLS.md 7)


def signal_masks(status_text: bytes) -> dict[str, int]:
    masks = {}
    for line in status_text.decode().splitlines():
        key, _, value = line.partition(":")
        if key in ("SigBlk", "SigIgn", "SigCgt", "SigPnd", "ShdPnd"):
            masks[key] = int(value.strip(), 16)
    return masks


def bit(sig: int) -> int:
    return 1 << (sig - 1)


@contextmanager
def parent_signal_state() -> Iterator[None]:
    """SIGPIPE ignored (as Python sets it), SIGUSR2 ignored, SIGUSR1 blocked; restored after."""
    old_usr2 = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        with open("/proc/thread-self/status", "rb") as f:
            own = signal_masks(f.read())
        assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN
        assert own["SigIgn"] & bit(signal.SIGPIPE)
        assert own["SigIgn"] & bit(signal.SIGUSR2)
        assert own["SigBlk"] & bit(signal.SIGUSR1)
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        signal.signal(signal.SIGUSR2, old_usr2)


def test_child_starts_with_default_signals_and_empty_mask(launcher: Launcher) -> None:
    with parent_signal_state():
        result = run(launcher, ["cat", "/proc/self/status"])
    assert result.status.returncode == 0
    masks = signal_masks(result.out)
    assert masks["SigBlk"] == 0
    assert masks["SigIgn"] == 0
    assert masks["SigPnd"] == 0


def test_reset_signals_false_keeps_ignored_dispositions(launcher: Launcher) -> None:
    with parent_signal_state():
        result = run(launcher, ["cat", "/proc/self/status"], reset_signals=False)
    assert result.status.returncode == 0
    expected = bit(signal.SIGPIPE) | bit(signal.SIGUSR2) | bit(signal.SIGXFSZ)
    assert signal_masks(result.out)["SigIgn"] == expected


def test_yes_head_ends_with_sigpipe(launcher: Launcher) -> None:
    # yes must die of SIGPIPE (status 128+13 in the shell), not exit on EPIPE with an error.
    result = run(launcher, [SH, "-c", "(yes; echo $? >&2) | head -n 1"], capture_stderr=True)
    assert result.out == b"y\n"
    assert result.err == b"141\n"
    assert result.status.returncode == 0


# --------------------------------------------------------------------------------------------
# sessions and process groups


def test_default_child_shares_session_and_group(launcher: Launcher) -> None:
    with parked_child(launcher) as pid:
        assert proc_stat(pid) == {
            "ppid": os.getpid(),
            "pgrp": os.getpgrp(),
            "session": os.getsid(0),
        }


def test_start_new_session(launcher: Launcher) -> None:
    with parked_child(launcher, start_new_session=True) as pid:
        assert proc_stat(pid) == {"ppid": os.getpid(), "pgrp": pid, "session": pid}
        assert os.getsid(pid) == pid
        assert os.getpgid(pid) == pid


def test_process_group_zero_makes_a_new_group(launcher: Launcher) -> None:
    with parked_child(launcher, process_group=0) as pid:
        assert proc_stat(pid) == {"ppid": os.getpid(), "pgrp": pid, "session": os.getsid(0)}
        assert os.getpgid(pid) == pid


def test_process_group_joins_an_existing_group(launcher: Launcher) -> None:
    with (
        parked_child(launcher, process_group=0) as leader,
        parked_child(launcher, process_group=leader) as member,
    ):
        assert os.getpgid(member) == leader
        assert proc_stat(member)["session"] == os.getsid(0)


def test_spawn_returns_after_exec(launcher: Launcher) -> None:
    with parked_child(launcher) as pid:
        assert os.readlink(f"/proc/{pid}/exe") == os.path.realpath(
            os.fsdecode(SpawnRequest.create(["cat"]).executable)
        )


# --------------------------------------------------------------------------------------------
# cwd, env and PATH


@pytest.mark.parametrize("kind", ["str", "bytes", "path"])
def test_cwd_applies(launcher: Launcher, tmp_path: Path, kind: str) -> None:
    cwd: Any = {"str": str(tmp_path), "bytes": os.fsencode(tmp_path), "path": tmp_path}[kind]
    result = run(launcher, ["pwd"], cwd=cwd)
    assert result.status.returncode == 0
    assert result.out == os.fsencode(os.path.realpath(tmp_path)) + b"\n"


def test_env_is_exactly_what_was_given(launcher: Launcher) -> None:
    env = {"A": "1", "B": "x=y", "PATH": os.environ["PATH"]}
    result = run(launcher, ["env"], env=env)
    assert result.status.returncode == 0
    assert result.out == b"A=1\nB=x=y\nPATH=" + os.environ["PATH"].encode() + b"\n"


def test_env_bytes_pass_through(launcher: Launcher) -> None:
    result = run(launcher, ["env"], env={b"RAW": b"\xff\xfe", "PATH": "/usr/bin:/bin"})
    assert result.out == b"RAW=\xff\xfe\nPATH=/usr/bin:/bin\n"


def test_empty_env(launcher: Launcher) -> None:
    # No PATH in the child's env: the lookup falls back to os.defpath.
    result = run(launcher, ["env"], env={})
    assert result.status.returncode == 0
    assert result.out == b""


def test_env_none_inherits_the_current_environment(
    launcher: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APROC_PRIMITIVES_TEST", "inherited")
    result = run(launcher, ["env"])
    assert b"APROC_PRIMITIVES_TEST=inherited" in result.out.splitlines()


@pytest.fixture
def probe_dir(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    make_script(bin_dir / "aproc-probe", "echo found")
    return bin_dir


def test_path_lookup_uses_the_childs_env(launcher: Launcher, probe_dir: Path) -> None:
    result = run(launcher, ["aproc-probe"], env={"PATH": f"/nonexistent:{probe_dir}:/usr/bin"})
    assert result.status.returncode == 0
    assert result.out == b"found\n"


def test_path_lookup_ignores_the_parents_path(
    launcher: Launcher, no_spawn: None, probe_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", f"{probe_dir}:{os.environ['PATH']}")
    with pytest.raises(FileNotFoundError) as info:
        launcher(SpawnRequest.create(["aproc-probe"], env={"PATH": "/usr/bin:/bin"}))
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == "aproc-probe"


def test_path_lookup_with_inherited_env(
    launcher: Launcher, probe_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", f"{probe_dir}:{os.environ['PATH']}")
    assert run(launcher, ["aproc-probe"]).out == b"found\n"


def test_relative_program_resolves_against_the_childs_cwd(
    launcher: Launcher, probe_dir: Path
) -> None:
    assert run(launcher, ["./aproc-probe"], cwd=str(probe_dir)).out == b"found\n"


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        pytest.param(["./aproc-probe"], None, id="slash"),
        pytest.param(["aproc-probe"], {"PATH": "."}, id="path-dot"),
        pytest.param(["aproc-probe"], {"PATH": ""}, id="path-empty-entry"),
    ],
)
def test_relative_program_with_relative_cwd(
    launcher: Launcher,
    probe_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    env: dict[str, str] | None,
) -> None:
    # The launchers exec after chdir(cwd): a relative cwd must not be applied twice.
    monkeypatch.chdir(probe_dir.parent)
    result = run(launcher, argv, cwd="bin", env=env)
    assert result.status.returncode == 0
    assert result.out == b"found\n"


def test_executable_overrides_argv0(launcher: Launcher) -> None:
    result = run(launcher, ["my-name", "-c", 'echo "$0"'], executable="sh")
    assert result.out == b"my-name\n"


def test_spawn_from_a_worker_thread(launcher: Launcher) -> None:
    results: list[Result] = []
    thread = threading.Thread(target=lambda: results.append(run(launcher, ["echo", "hi"])))
    thread.start()
    thread.join()
    assert len(results) == 1
    assert results[0].out == b"hi\n"
    assert results[0].status.returncode == 0


# --------------------------------------------------------------------------------------------
# what only the fork launcher can do


@pytest.fixture(params=["fork_exec", "spawn"])
def fork_capable(request: pytest.FixtureRequest) -> Launcher:
    return fork_exec if request.param == "fork_exec" else spawn


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_umask(fork_capable: Launcher) -> None:
    before = current_umask()
    result = run(fork_capable, [SH, "-c", "umask"], umask=0o027)
    assert result.out == b"0027\n"
    assert current_umask() == before


def test_rlimits(fork_capable: Launcher) -> None:
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    limits = {resource.RLIMIT_NOFILE: (64, before[1])}
    result = run(fork_capable, [SH, "-c", "ulimit -n"], rlimits=limits)
    assert result.out == b"64\n"
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == before


@pytest.mark.skipif(os.geteuid() != 0, reason="changing user and groups needs root")
def test_user_and_groups(fork_capable: Launcher) -> None:
    result = run(
        fork_capable,
        [SH, "-c", "id -u; id -g; id -G"],
        user=65534,
        group=65534,
        extra_groups=[],
    )
    assert result.out == b"65534\n65534\n65534\n"


NEEDS_FORK = [
    pytest.param({"umask": 0o22}, id="umask"),
    pytest.param({"rlimits": {resource.RLIMIT_CORE: (0, 0)}}, id="rlimits"),
    pytest.param({"user": os.getuid()}, id="user"),
    pytest.param({"group": os.getgid()}, id="group"),
    pytest.param({"extra_groups": []}, id="extra_groups"),
]


@pytest.mark.skipif(not POSIX_SPAWN_AVAILABLE, reason="posix_spawn launcher unavailable")
@pytest.mark.parametrize("kwargs", NEEDS_FORK)
def test_posix_spawn_refuses_requests_that_need_fork(kwargs: dict[str, Any]) -> None:
    kids = children_of(os.getpid())
    request = SpawnRequest.create(["true"], **kwargs)
    assert request.needs_fork
    assert not uses_posix_spawn(request)
    with pytest.raises(RuntimeError, match="fork"):
        posix_spawn(request)
    assert children_of(os.getpid()) == kids


@pytest.mark.parametrize("kwargs", [*NEEDS_FORK, pytest.param({}, id="plain")])
def test_spawn_picks_the_launcher(monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Any]) -> None:
    used: list[str] = []

    def via_fork(request: SpawnRequest) -> int:
        used.append("fork_exec")
        return fork_exec(request)

    def via_posix_spawn(request: SpawnRequest) -> int:
        used.append("posix_spawn")
        return posix_spawn(request)

    monkeypatch.setattr(spawn_module, "fork_exec", via_fork)
    monkeypatch.setattr(spawn_posix_module, "posix_spawn", via_posix_spawn)
    request = SpawnRequest.create(["true"], **kwargs)
    pid = spawn(request)
    assert wait_blocking(pid).returncode == 0
    if request.needs_fork or not POSIX_SPAWN_AVAILABLE:
        assert used == ["fork_exec"]
    else:
        assert used == ["posix_spawn"]


# --------------------------------------------------------------------------------------------
# PendingExec: the fork launcher split in two for event loops (PITFALLS.md 3)


def wait_readable(fd: int) -> None:
    readable, _, _ = select.select([fd], [], [], 30)
    assert readable == [fd]


def test_pending_exec_finish_returns_the_pid() -> None:
    in_r, in_w = pipe()
    try:
        pending = start_fork_exec(SpawnRequest.create(["cat"], stdin=in_r))
    finally:
        os.close(in_r)
    try:
        assert isinstance(pending, PendingExec)
        wait_readable(pending.error_fd)
        assert pending.finish() == pending.pid
        assert not is_open(pending.error_fd)
        assert pending.finish() == pending.pid  # a second call returns the pid again
        pending.abandon()  # and abandon() after success does nothing
        assert children_of(os.getpid())[pending.pid] in "RS"
        assert os.readlink(f"/proc/{pending.pid}/exe") == os.path.realpath(
            os.fsdecode(pending.request.executable)
        )
    finally:
        os.close(in_w)
        status = wait_blocking(pending.pid)
    assert status.returncode == 0


def test_pending_exec_abandon_kills_and_reaps() -> None:
    in_r, in_w = pipe()
    try:
        pending = start_fork_exec(SpawnRequest.create(["cat"], stdin=in_r))
        pending.abandon()
        assert not is_open(pending.error_fd)
        assert pending.pid not in children_of(os.getpid())
        with pytest.raises(ChildProcessError):
            os.waitpid(pending.pid, os.WNOHANG)
        pending.abandon()  # idempotent
    finally:
        os.close(in_r)
        os.close(in_w)


@pytest.mark.parametrize("failure", ["missing-program", "not-executable", "bad-cwd"])
def test_pending_exec_failure_raises_the_exact_error(tmp_path: Path, failure: str) -> None:
    program = str(tmp_path / "prog")
    cwd = None
    if failure == "not-executable":
        make_script(tmp_path / "prog", "true", mode=0o644)
        expected: tuple[type[OSError], int, str] = (PermissionError, errno.EACCES, program)
    elif failure == "bad-cwd":
        program = "true"
        cwd = str(tmp_path / "missing")
        expected = (FileNotFoundError, errno.ENOENT, cwd)
    else:
        expected = (FileNotFoundError, errno.ENOENT, program)
    pending = start_fork_exec(SpawnRequest.create([program], cwd=cwd))
    try:
        wait_readable(pending.error_fd)
        with pytest.raises(expected[0]) as info:
            pending.finish()
    except BaseException:
        pending.abandon()
        raise
    assert_exact_error(info, *expected)
    assert not is_open(pending.error_fd)
    with pytest.raises(ChildProcessError):
        os.waitpid(pending.pid, os.WNOHANG)
