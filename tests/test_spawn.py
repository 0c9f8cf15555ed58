"""aproc.spawn(): exit statuses, exact exec errors, both launchers, fd hygiene, stdio wiring,
cwd/env/PATH, sessions and process groups, spawning at volume, no thread per child, and living
next to subprocess in another thread.

Every test runs on asyncio, uvloop and trio under both reapers; the autouse ``no_leaks`` fixture
fails any test that leaves a child (live or zombie) or a new fd behind (PITFALLS.md 1, 5).
"""

from __future__ import annotations

import errno
import fcntl
import os
import resource
import signal
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from conftest import children_of, open_fds, read_all, reap

import aproc
import aproc.process as aproc_process
from aproc.primitives import POSIX_SPAWN_AVAILABLE

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("reaper_kind")]

O_CLOEXEC_FDINFO = 0o2000000  # how O_CLOEXEC shows in /proc/<pid>/fdinfo/<fd> "flags"


# --------------------------------------------------------------------------------------------
# helpers


@dataclass
class Launcher:
    """Which launcher a test asks for, and a record of the launchers spawn() really used."""

    name: str
    kwargs: dict[str, Any]
    used: list[str] = field(default_factory=list)

    def assert_used(self) -> None:
        assert self.used, "no launcher was called"
        assert set(self.used) == {self.name}, self.used


def spy_on_launchers(monkeypatch: pytest.MonkeyPatch, used: list[str]) -> None:
    """Wrap both launchers as spawn() calls them, recording each use in ``used``."""
    real_posix_spawn = aproc_process.posix_spawn
    real_start_fork_exec = aproc_process.start_fork_exec

    def posix_spawn(req: Any) -> Any:
        used.append("posix_spawn")
        return real_posix_spawn(req)

    def start_fork_exec(req: Any) -> Any:
        used.append("fork")
        return real_start_fork_exec(req)

    monkeypatch.setattr(aproc_process, "posix_spawn", posix_spawn)
    monkeypatch.setattr(aproc_process, "start_fork_exec", start_fork_exec)


@pytest.fixture(params=["posix_spawn", "fork"])
def launcher(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Launcher:
    """posix_spawn (the default request) or fork/execve (forced by ``umask=``), with both
    launchers wrapped so the test can check which one ran."""
    name: str = request.param
    if name == "posix_spawn" and not POSIX_SPAWN_AVAILABLE:
        pytest.skip("glibc posix_spawn with addchdir_np/addclosefrom_np is not available")
    launcher = Launcher(name, {} if name == "posix_spawn" else {"umask": 0o022})
    spy_on_launchers(monkeypatch, launcher.used)
    return launcher


@pytest.fixture
def used_launchers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    used: list[str] = []
    spy_on_launchers(monkeypatch, used)
    return used


async def output_of(argv: Sequence[Any], **kwargs: Any) -> tuple[bytes, int]:
    """Spawn with stdout=PIPE; return (everything it wrote, returncode)."""
    proc = await aproc.spawn(argv, stdout=aproc.PIPE, **kwargs)
    try:
        with anyio.fail_after(10):
            data = await read_all(proc.stdout)
            code = await proc.wait()
    finally:
        await reap(proc)
    return data, code


def fdinfo_flags(pid: int, fd: int) -> int:
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("flags:"):
                return int(line.split()[1], 8)
    raise AssertionError(f"no flags line in /proc/{pid}/fdinfo/{fd}")


def write_script(path: Path, body: str, mode: int = 0o755) -> Path:
    path.write_text(body)
    path.chmod(mode)
    return path


# --------------------------------------------------------------------------------------------
# exit statuses (PITFALLS.md 14)


@pytest.mark.parametrize("code", [0, 1, 3, 255])
async def test_exit_code_is_exact(code: int, launcher: Launcher) -> None:
    proc = await aproc.spawn(["sh", "-c", f"exit {code}"], **launcher.kwargs)
    try:
        with anyio.fail_after(10):
            assert await proc.wait() == code
        assert proc.returncode == code
        assert proc.exit_status is not None
        assert proc.exit_status.returncode == code
        assert proc.exit_status.signal is None
        assert proc.exit_status.signal_name is None
    finally:
        await reap(proc)
    launcher.assert_used()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
async def test_killed_by_signal_is_minus_signum(sig: signal.Signals, launcher: Launcher) -> None:
    proc = await aproc.spawn(["sleep", "60"], **launcher.kwargs)
    try:
        assert proc.returncode is None
        assert proc.exit_status is None
        proc.send_signal(sig)
        with anyio.fail_after(10):
            assert await proc.wait() == -sig
        assert proc.returncode == -sig
        assert proc.exit_status is not None
        assert proc.exit_status.signal == sig
        assert proc.exit_status.signal_name == sig.name
        assert not proc.exit_status.core_dumped
    finally:
        await reap(proc)


# --------------------------------------------------------------------------------------------
# exec errors surface at spawn, exactly, with nothing left behind (PITFALLS.md 1, 8)


async def spawn_and_reap(argv: Any, **kwargs: Any) -> None:
    proc = await aproc.spawn(argv, **kwargs)
    await reap(proc)  # only reached when a test expecting an error is about to fail


async def expect_spawn_error(
    exc_type: type[BaseException], argv: Any, **kwargs: Any
) -> pytest.ExceptionInfo[Any]:
    kids_before = children_of(os.getpid())
    fds_before = open_fds()
    with pytest.raises(exc_type) as info:
        await spawn_and_reap(argv, **kwargs)
    assert children_of(os.getpid()) == kids_before
    assert open_fds() == fds_before
    return info


async def test_missing_program_on_path(launcher: Launcher) -> None:
    info = await expect_spawn_error(
        FileNotFoundError, ["aproc-no-such-program", "x"], **launcher.kwargs
    )
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == "aproc-no-such-program"
    assert launcher.used == []  # found in the parent, before any child was made


async def test_missing_program_by_path_fails_in_the_launcher(launcher: Launcher) -> None:
    # A program with a slash is not looked up in the parent: the exec itself fails, so the error
    # travels back through the launcher (for fork: the error pipe, awaited asynchronously).
    program = "/nonexistent-aproc-dir/prog"
    info = await expect_spawn_error(FileNotFoundError, [program], **launcher.kwargs)
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == program
    assert info.value.strerror == os.strerror(errno.ENOENT)
    launcher.assert_used()


async def test_non_executable_file_is_permission_error(launcher: Launcher, tmp_path: Path) -> None:
    script = write_script(tmp_path / "not-exec", "#!/bin/sh\necho hi\n", mode=0o644)
    info = await expect_spawn_error(PermissionError, [str(script)], **launcher.kwargs)
    assert info.value.errno == errno.EACCES
    assert info.value.filename == str(script)
    launcher.assert_used()


async def test_non_executable_file_on_path_is_permission_error(
    launcher: Launcher, tmp_path: Path
) -> None:
    write_script(tmp_path / "aproc-not-exec", "#!/bin/sh\necho hi\n", mode=0o644)
    info = await expect_spawn_error(
        PermissionError, ["aproc-not-exec"], env={"PATH": str(tmp_path)}, **launcher.kwargs
    )
    assert info.value.errno == errno.EACCES
    assert info.value.filename == "aproc-not-exec"


async def test_exec_format_error(launcher: Launcher, tmp_path: Path) -> None:
    script = write_script(tmp_path / "no-shebang", "echo hi\n")
    info = await expect_spawn_error(OSError, [str(script)], **launcher.kwargs)
    assert info.value.errno == errno.ENOEXEC
    assert info.value.filename == str(script)
    launcher.assert_used()


async def test_missing_cwd_names_the_cwd(launcher: Launcher, tmp_path: Path) -> None:
    cwd = tmp_path / "missing"
    info = await expect_spawn_error(FileNotFoundError, ["true"], cwd=cwd, **launcher.kwargs)
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == str(cwd)
    launcher.assert_used()


async def test_cwd_that_is_a_file_names_the_cwd(launcher: Launcher, tmp_path: Path) -> None:
    cwd = tmp_path / "a-file"
    cwd.write_text("")
    info = await expect_spawn_error(NotADirectoryError, ["/bin/true"], cwd=cwd, **launcher.kwargs)
    assert info.value.errno == errno.ENOTDIR
    assert info.value.filename == str(cwd)


@pytest.mark.parametrize(
    ("argv", "kwargs", "exc_type"),
    [
        pytest.param("true", {}, TypeError, id="bare-str"),
        pytest.param(b"true", {}, TypeError, id="bare-bytes"),
        pytest.param(["tr\0ue"], {}, ValueError, id="nul-in-argv0"),
        pytest.param(["echo", "a\0b"], {}, ValueError, id="nul-in-arg"),
        pytest.param([], {}, ValueError, id="empty-argv"),
        pytest.param(["true"], {"env": {"A=B": "x"}}, ValueError, id="equals-in-env-key"),
        pytest.param(["true"], {"env": {"A": "x\0y"}}, ValueError, id="nul-in-env-value"),
        pytest.param(["true"], {"cwd": "/tm\0p"}, ValueError, id="nul-in-cwd"),
        pytest.param(["true", 3], {}, TypeError, id="int-arg"),
    ],
)
async def test_invalid_request_is_refused_before_any_child(
    argv: Any, kwargs: dict[str, Any], exc_type: type[BaseException], launcher: Launcher
) -> None:
    await expect_spawn_error(exc_type, argv, **kwargs, **launcher.kwargs)
    assert launcher.used == []


async def test_bare_str_error_points_to_spawn_shell() -> None:
    with pytest.raises(TypeError, match="spawn_shell"):
        await aproc.spawn("echo hi")  # type: ignore[arg-type]


async def test_pipes_of_a_failed_spawn_are_closed(launcher: Launcher) -> None:
    # Every pipe made for the child is closed exactly once when its exec fails.
    fds_before = open_fds()
    for _ in range(20):
        with pytest.raises(FileNotFoundError):
            await aproc.spawn(
                ["/nonexistent-aproc-dir/prog"],
                stdin=aproc.PIPE,
                stdout=aproc.PIPE,
                stderr=aproc.PIPE,
                **launcher.kwargs,
            )
    assert open_fds() == fds_before
    launcher.assert_used()


# --------------------------------------------------------------------------------------------
# the fork launcher: what only it can do


async def test_umask_takes_the_fork_path(used_launchers: list[str]) -> None:
    out, code = await output_of(["sh", "-c", "umask"], umask=0o027)
    assert (out, code) == (b"0027\n", 0)
    assert used_launchers == ["fork"]


async def test_rlimits_take_the_fork_path(used_launchers: list[str]) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    out, code = await output_of(
        ["sh", "-c", "ulimit -n"], rlimits={resource.RLIMIT_NOFILE: (256, hard)}
    )
    assert (out, code) == (b"256\n", 0)
    assert used_launchers == ["fork"]


async def test_plain_request_takes_posix_spawn(used_launchers: list[str]) -> None:
    if not POSIX_SPAWN_AVAILABLE:
        pytest.skip("glibc posix_spawn with addchdir_np/addclosefrom_np is not available")
    out, code = await output_of(
        ["echo", "hi"], cwd="/", start_new_session=True, stdin=aproc.DEVNULL, pass_fds=[2]
    )
    assert (out, code) == (b"hi\n", 0)
    assert used_launchers == ["posix_spawn"]


async def test_fork_path_exec_error_is_awaited_not_blocking(used_launchers: list[str]) -> None:
    # The exec report of the fork launcher travels through the error pipe, which spawn() awaits;
    # meanwhile other tasks of the loop keep running.
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        for _ in range(20):
            with pytest.raises(FileNotFoundError) as info:
                await aproc.spawn(["/nonexistent-aproc-dir/prog"], umask=0o022)
            assert info.value.filename == "/nonexistent-aproc-dir/prog"
        tg.cancel_scope.cancel()
    assert used_launchers == ["fork"] * 20
    assert ticks > 0


# --------------------------------------------------------------------------------------------
# fd hygiene (PITFALLS.md 5, 6)


async def test_child_sees_only_stdio_and_pass_fds(launcher: Launcher) -> None:
    inheritable = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(inheritable, True)
    high = fcntl.fcntl(inheritable, fcntl.F_DUPFD, 60)  # F_DUPFD: inheritable too
    try:
        assert os.get_inheritable(inheritable)
        assert os.get_inheritable(high)
        # fd 3 in the listing is ls's own handle on /proc/self/fd.
        out, code = await output_of(["ls", "/proc/self/fd"], **launcher.kwargs)
        assert (out, code) == (b"0\n1\n2\n3\n", 0)
        out, code = await output_of(["ls", "/proc/self/fd"], pass_fds=(high,), **launcher.kwargs)
        assert code == 0
        assert sorted(int(x) for x in out.split()) == [0, 1, 2, 3, high]
    finally:
        os.close(high)
        os.close(inheritable)
    launcher.assert_used()


async def test_pass_fds_is_the_same_open_file(launcher: Launcher) -> None:
    r, w = os.pipe()
    try:
        # dash only redirects to single-digit fds; reopening /proc/self/fd/N reaches the pipe.
        proc = await aproc.spawn(
            ["sh", "-c", f"echo through > /proc/self/fd/{w}"], pass_fds=[w], **launcher.kwargs
        )
        try:
            os.close(w)
            w = -1
            with anyio.fail_after(10):
                assert await proc.wait() == 0
        finally:
            await reap(proc)
        assert os.read(r, 100) == b"through\n"
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


async def test_sibling_does_not_hold_another_childs_pipe(launcher: Launcher) -> None:
    # If the second child inherited the first one's stdin write end, cat would never see EOF.
    cat = await aproc.spawn(["cat"], stdin=aproc.PIPE, stdout=aproc.DEVNULL, **launcher.kwargs)
    sleeper = await aproc.spawn(["sleep", "60"], stdin=aproc.DEVNULL, **launcher.kwargs)
    try:
        assert cat.stdin is not None
        cat.stdin.close()
        with anyio.fail_after(10):
            assert await cat.wait() == 0
        assert sleeper.returncode is None
    finally:
        await reap(cat)
        await reap(sleeper)


async def test_parent_ends_nonblocking_child_ends_blocking(launcher: Launcher) -> None:
    proc = await aproc.spawn(["cat"], stdin=aproc.PIPE, stdout=aproc.PIPE, **launcher.kwargs)
    try:
        assert proc.stdin is not None
        assert proc.stdout is not None
        for parent_fd, child_fd in ((proc.stdin.fileno(), 0), (proc.stdout.fileno(), 1)):
            assert parent_fd > 2
            assert not os.get_blocking(parent_fd)
            assert fcntl.fcntl(parent_fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
            # The child's end is the other end of the same pipe ...
            assert os.readlink(f"/proc/{proc.pid}/fd/{child_fd}") == os.readlink(
                f"/proc/self/fd/{parent_fd}"
            )
            # ... and stays blocking and inheritable.
            flags = fdinfo_flags(proc.pid, child_fd)
            assert not flags & os.O_NONBLOCK, oct(flags)
            assert not flags & O_CLOEXEC_FDINFO, oct(flags)
        with anyio.fail_after(10):
            await proc.stdin.send(b"ping\n")
            proc.stdin.close()
            assert await read_all(proc.stdout) == b"ping\n"
            assert await proc.wait() == 0
    finally:
        await reap(proc)


# --------------------------------------------------------------------------------------------
# stdio wiring


async def test_stdin_devnull() -> None:
    out, code = await output_of(["readlink", "/proc/self/fd/0"], stdin=aproc.DEVNULL)
    assert (out, code) == (b"/dev/null\n", 0)
    out, code = await output_of(["cat"], stdin=aproc.DEVNULL)
    assert (out, code) == (b"", 0)


async def test_stdout_devnull() -> None:
    proc = await aproc.spawn(["readlink", "/proc/self/fd/1"], stdout=aproc.DEVNULL)
    try:
        assert proc.stdout is None
        with anyio.fail_after(10):
            assert await proc.wait() == 0
    finally:
        await reap(proc)


async def test_stderr_stdout_merges(launcher: Launcher) -> None:
    proc = await aproc.spawn(
        ["sh", "-c", "echo out; echo err >&2; echo out2"],
        stdout=aproc.PIPE,
        stderr=aproc.STDOUT,
        **launcher.kwargs,
    )
    try:
        assert proc.stderr is None
        with anyio.fail_after(10):
            assert await read_all(proc.stdout) == b"out\nerr\nout2\n"
            assert await proc.wait() == 0
    finally:
        await reap(proc)
    out, code = await output_of(
        ["sh", "-c", "readlink /proc/self/fd/1; readlink /proc/self/fd/2"], stderr=aproc.STDOUT
    )
    first, second = out.splitlines()
    assert code == 0
    assert first.startswith(b"pipe:")
    assert first == second


async def test_stdout_and_stderr_pipes_are_separate(launcher: Launcher) -> None:
    proc = await aproc.spawn(
        ["sh", "-c", "echo out; echo err >&2"],
        stdout=aproc.PIPE,
        stderr=aproc.PIPE,
        **launcher.kwargs,
    )
    try:
        with anyio.fail_after(10):
            assert await read_all(proc.stdout) == b"out\n"
            assert await read_all(proc.stderr) == b"err\n"
            assert await proc.wait() == 0
    finally:
        await reap(proc)


async def test_stdout_to_int_fd(launcher: Launcher, tmp_path: Path) -> None:
    path = tmp_path / "out"
    # close-on-exec on purpose: the launcher must dup2 it onto 1 all the same.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        proc = await aproc.spawn(["echo", "to an fd"], stdout=fd, **launcher.kwargs)
        try:
            assert proc.stdout is None
            with anyio.fail_after(10):
                assert await proc.wait() == 0
        finally:
            await reap(proc)
        os.fstat(fd)  # the caller's fd is the caller's: still open
    finally:
        os.close(fd)
    assert path.read_bytes() == b"to an fd\n"


async def test_stdio_from_file_objects(launcher: Launcher, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.write_bytes(b"line one\nline two\n")
    dst = tmp_path / "out"
    with open(src, "rb") as fin, open(dst, "wb") as fout:  # noqa: ASYNC230 - local tmp files
        proc = await aproc.spawn(["cat"], stdin=fin, stdout=fout, **launcher.kwargs)
        try:
            with anyio.fail_after(10):
                assert await proc.wait() == 0
        finally:
            await reap(proc)
        assert not fout.closed
    assert dst.read_bytes() == b"line one\nline two\n"


async def test_stderr_stdout_is_refused_for_stdout() -> None:
    with pytest.raises(ValueError, match="stderr"):
        await aproc.spawn(["true"], stdout=aproc.STDOUT)


# --------------------------------------------------------------------------------------------
# cwd, env, PATH (PITFALLS.md 8)


@pytest.fixture
def resolved_tmp_path(tmp_path: Path) -> Path:
    return tmp_path.resolve()


async def test_cwd_applies(launcher: Launcher, tmp_path: Path, resolved_tmp_path: Path) -> None:
    expected = os.fsencode(resolved_tmp_path) + b"\n"
    out, code = await output_of(["pwd", "-P"], cwd=tmp_path, **launcher.kwargs)
    assert (out, code) == (expected, 0)
    out, code = await output_of(["pwd", "-P"], cwd=os.fsencode(tmp_path), **launcher.kwargs)
    assert (out, code) == (expected, 0)


async def test_relative_program_resolves_against_child_cwd(
    launcher: Launcher, tmp_path: Path
) -> None:
    write_script(tmp_path / "hello.sh", "#!/bin/sh\necho hello from cwd\n")
    out, code = await output_of(["./hello.sh"], cwd=tmp_path, **launcher.kwargs)
    assert (out, code) == (b"hello from cwd\n", 0)


async def test_env_replaces_environment(launcher: Launcher) -> None:
    out, code = await output_of(
        ["/usr/bin/env"], env={"A": "1", "B": "two words"}, **launcher.kwargs
    )
    assert (out, code) == (b"A=1\nB=two words\n", 0)
    out, code = await output_of(["/usr/bin/env"], env={}, **launcher.kwargs)
    assert (out, code) == (b"", 0)
    out, code = await output_of(["/usr/bin/env"], env={b"RAW": b"\xff\xfe"}, **launcher.kwargs)
    assert (out, code) == (b"RAW=\xff\xfe\n", 0)


async def test_env_none_inherits(launcher: Launcher, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APROC_TEST_INHERITED", "yes it is")
    out, code = await output_of(["sh", "-c", 'echo "$APROC_TEST_INHERITED"'], **launcher.kwargs)
    assert (out, code) == (b"yes it is\n", 0)


async def test_path_lookup_uses_the_childs_env(
    launcher: Launcher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    theirs = tmp_path / "theirs"
    ours = tmp_path / "ours"
    theirs.mkdir()
    ours.mkdir()
    write_script(theirs / "aproc-path-probe", "#!/bin/sh\necho theirs\n")
    write_script(ours / "aproc-path-probe", "#!/bin/sh\necho ours\n")
    monkeypatch.setenv("PATH", f"{ours}:{os.environ['PATH']}")
    # The child's PATH decides, not ours ...
    out, code = await output_of(["aproc-path-probe"], env={"PATH": str(theirs)}, **launcher.kwargs)
    assert (out, code) == (b"theirs\n", 0)
    # ... inheriting ours finds ours ...
    out, code = await output_of(["aproc-path-probe"], **launcher.kwargs)
    assert (out, code) == (b"ours\n", 0)
    # ... and a child PATH without it finds nothing, although ours has it.
    with pytest.raises(FileNotFoundError) as info:
        await aproc.spawn(["aproc-path-probe"], env={"PATH": "/nonexistent-aproc-dir"})
    assert info.value.filename == "aproc-path-probe"


async def test_spawn_shell() -> None:
    proc = await aproc.spawn_shell("echo a | tr a b", stdout=aproc.PIPE)
    try:
        with anyio.fail_after(10):
            assert await read_all(proc.stdout) == b"b\n"
            assert await proc.wait() == 0
        assert proc.args == ["/bin/sh", "-c", "echo a | tr a b"]
    finally:
        await reap(proc)
    proc = await aproc.spawn_shell("exit 42")
    try:
        with anyio.fail_after(10):
            assert await proc.wait() == 42
    finally:
        await reap(proc)


# --------------------------------------------------------------------------------------------
# sessions and process groups


async def test_start_new_session(launcher: Launcher) -> None:
    proc = await aproc.spawn(["sleep", "60"], start_new_session=True, **launcher.kwargs)
    try:
        assert os.getsid(proc.pid) == proc.pid
        assert os.getpgid(proc.pid) == proc.pid
        assert proc.group_leader
    finally:
        await reap(proc)
    launcher.assert_used()


async def test_process_group_zero(launcher: Launcher) -> None:
    leader = await aproc.spawn(["sleep", "60"], process_group=0, **launcher.kwargs)
    try:
        assert os.getpgid(leader.pid) == leader.pid
        assert os.getsid(leader.pid) == os.getsid(0)
        assert leader.group_leader
        member = await aproc.spawn(["sleep", "60"], process_group=leader.pid, **launcher.kwargs)
        try:
            assert os.getpgid(member.pid) == leader.pid
            assert not member.group_leader
        finally:
            await reap(member)
    finally:
        await reap(leader)


async def test_default_stays_in_our_group(launcher: Launcher) -> None:
    proc = await aproc.spawn(["sleep", "60"], **launcher.kwargs)
    try:
        assert os.getpgid(proc.pid) == os.getpgid(0)
        assert os.getsid(proc.pid) == os.getsid(0)
        assert not proc.group_leader
    finally:
        await reap(proc)


# --------------------------------------------------------------------------------------------
# volume: no zombies, no fds, no threads (PITFALLS.md 13)


async def test_many_sequential_spawns_leave_nothing() -> None:
    proc = await aproc.spawn(["/bin/true"])  # warm up: the loop's reaper exists from here on
    await proc.wait()
    me = os.getpid()
    kids_before = children_of(me)
    fds_before = open_fds()
    with anyio.fail_after(60):
        for _ in range(1000):
            proc = await aproc.spawn(["/bin/true"])
            assert await proc.wait() == 0
    assert children_of(me) == kids_before
    assert open_fds() == fds_before


async def test_many_sequential_fork_path_spawns_leave_nothing() -> None:
    me = os.getpid()
    kids_before = children_of(me)
    fds_before = open_fds()
    with anyio.fail_after(60):
        for _ in range(200):
            proc = await aproc.spawn(["/bin/true"], umask=0o022, stdout=aproc.PIPE)
            assert await proc.wait() == 0
            await proc.aclose()
    assert children_of(me) == kids_before
    assert open_fds() == fds_before


def os_thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


async def test_no_thread_per_child() -> None:
    proc = await aproc.spawn(["/bin/true"])  # warm up
    await proc.wait()
    threads_before = threading.active_count()
    os_threads_before = os_thread_count()
    procs: list[aproc.Process] = []
    try:
        with anyio.fail_after(30):
            for _ in range(100):
                procs.append(await aproc.spawn(["sleep", "60"]))
            async with anyio.create_task_group() as tg:
                for p in procs:
                    tg.start_soon(p.wait)
                await anyio.wait_all_tasks_blocked()
                assert all(p.returncode is None for p in procs)
                # Idle worker threads of earlier tests may exit meanwhile, never the reverse.
                assert threading.active_count() <= threads_before
                assert os_thread_count() <= os_threads_before
                for p in procs:
                    p.kill()
        assert [p.returncode for p in procs] == [-signal.SIGKILL] * 100
    finally:
        for p in procs:
            await reap(p)


async def test_coexists_with_subprocess_in_another_thread() -> None:
    thread_codes: list[int] = []
    thread_errors: list[BaseException] = []

    def use_subprocess() -> None:
        try:
            for _ in range(50):
                thread_codes.append(subprocess.run(["sh", "-c", "exit 7"]).returncode)
        except BaseException as exc:  # reported by the test below
            thread_errors.append(exc)

    thread = threading.Thread(target=use_subprocess)
    ours: list[int] = []
    thread.start()
    try:
        with anyio.fail_after(60):
            while thread.is_alive() or len(ours) < 50:
                procs = [await aproc.spawn(["sh", "-c", f"exit {i}"]) for i in range(3)]
                for i, p in enumerate(procs):
                    assert await p.wait() == i
                ours.append(0)
    finally:
        await anyio.to_thread.run_sync(thread.join, 30)
    assert not thread.is_alive()
    assert thread_errors == []
    assert thread_codes == [7] * 50


async def test_executable_overrides_argv0(launcher: Launcher) -> None:
    out, code = await output_of(
        ["custom-name", "-c", 'echo "$0"'], executable="/bin/sh", **launcher.kwargs
    )
    assert (out, code) == (b"custom-name\n", 0)


async def test_signals_are_reset_in_the_child(launcher: Launcher) -> None:
    # Python ignores SIGPIPE; the child must get it back at its default (PITFALLS.md 7).
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN
    out, code = await output_of(["sh", "-c", "yes | head -n 2"], **launcher.kwargs)
    assert (out, code) == (b"y\ny\n", 0)
    out, code = await output_of(["grep", "^SigIgn", "/proc/self/status"], **launcher.kwargs)
    assert code == 0
    assert int(out.split()[1], 16) == 0, out
