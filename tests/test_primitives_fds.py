"""File-descriptor helpers: pipes above stdio (PITFALLS.md 4, 5), dup2, pipe sizes, bulk close."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import aproc
from aproc.primitives import (
    close_fds,
    close_range,
    dup2,
    lift_stdio_sources,
    move_above_stdio,
    pipe,
    set_blocking,
    set_inheritable,
    set_nonblocking,
    set_pipe_size,
)
from aproc.primitives import fds as fds_module

ROOT = str(Path(aproc.__file__).resolve().parent.parent)


def is_open(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise
        return False
    return True


def cloexec(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)


def same_file(a: int, b: int) -> bool:
    sa, sb = os.fstat(a), os.fstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def free_fd() -> int:
    """A number that is not an open fd (nothing else opens fds while a test runs)."""
    r, w = pipe()
    close_fds(r, w)
    return r


def run_python(script: str, tmp_path: Path) -> Any:
    result_path = tmp_path / "result.json"
    pythonpath = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", script, str(result_path)],
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
# pipe() and move_above_stdio()


def test_pipe_ends_are_cloexec_blocking_and_above_stdio() -> None:
    r, w = pipe()
    try:
        assert r >= 3
        assert w >= 3
        assert cloexec(r)
        assert cloexec(w)
        assert os.get_blocking(r)
        assert os.get_blocking(w)
        assert os.write(w, b"through") == 7
        assert os.read(r, 100) == b"through"
    finally:
        close_fds(r, w)


PIPE_SCRIPT = r"""
import fcntl, json, os, sys, traceback

result_path = sys.argv[1]
result = {}


def low_open():
    found = []
    for fd in (0, 1, 2):
        try:
            fcntl.fcntl(fd, fcntl.F_GETFD)
        except OSError:
            continue
        found.append(fd)
    return found


try:
    from aproc.primitives import close_fds, move_above_stdio, pipe

    # Keep a handle on /dev/null above stdio, to refill 0-2 between cases.
    devnull = fcntl.fcntl(os.open(os.devnull, os.O_RDWR), fcntl.F_DUPFD_CLOEXEC, 10)
    for closed in ([0], [1], [2], [0, 1], [1, 2], [0, 1, 2]):
        for fd in (0, 1, 2):
            if fd in closed:
                try:
                    os.close(fd)
                except OSError:
                    pass
            else:
                os.dup2(devnull, fd)
        r, w = pipe()
        flags = [bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC) for fd in (r, w)]
        os.write(w, b"x")
        case = {
            "above_stdio": r >= 3 and w >= 3,
            "cloexec": flags,
            "blocking": [os.get_blocking(r), os.get_blocking(w)],
            "roundtrip": os.read(r, 1).decode(),
            # the low fds pipe2 handed out were closed again, not left behind
            "low_open": low_open(),
        }
        close_fds(r, w)
        result[",".join(map(str, closed))] = case

    # move_above_stdio on an fd that landed on 0.
    for fd in (0, 1, 2):
        try:
            os.close(fd)
        except OSError:
            pass
    low = os.open(os.devnull, os.O_RDONLY)
    high = move_above_stdio(low)
    result["move"] = {
        "low": low,
        "high_above_stdio": high >= 3,
        "high_cloexec": bool(fcntl.fcntl(high, fcntl.F_GETFD) & fcntl.FD_CLOEXEC),
        "low_open": low_open(),
    }
    os.close(high)
except BaseException:
    result["error"] = traceback.format_exc()
with open(result_path, "w") as f:
    json.dump(result, f)
"""


def test_pipe_with_stdio_closed(tmp_path: Path) -> None:
    result = run_python(PIPE_SCRIPT, tmp_path)
    move = result.pop("move")
    assert move == {"low": 0, "high_above_stdio": True, "high_cloexec": True, "low_open": []}
    expected_cases = ["0", "1", "2", "0,1", "1,2", "0,1,2"]
    assert list(result) == expected_cases
    for closed, case in result.items():
        still_open = [fd for fd in (0, 1, 2) if str(fd) not in closed.split(",")]
        assert case == {
            "above_stdio": True,
            "cloexec": [True, True],
            "blocking": [True, True],
            "roundtrip": "x",
            "low_open": still_open,
        }, closed


def test_move_above_stdio_keeps_a_high_fd() -> None:
    r, w = pipe()
    try:
        assert move_above_stdio(r) == r
        assert is_open(r)
    finally:
        close_fds(r, w)


# --------------------------------------------------------------------------------------------
# flags and dup2


def test_set_blocking_and_nonblocking() -> None:
    r, w = pipe()
    try:
        set_nonblocking(r)
        assert not os.get_blocking(r)
        assert os.get_blocking(w)  # the other end is a separate file description
        with pytest.raises(BlockingIOError):
            os.read(r, 1)
        set_blocking(r)
        assert os.get_blocking(r)
    finally:
        close_fds(r, w)


def test_set_inheritable() -> None:
    r, w = pipe()
    try:
        set_inheritable(r, True)
        assert not cloexec(r)
        set_inheritable(r, False)
        assert cloexec(r)
    finally:
        close_fds(r, w)


def test_dup2_onto_itself_clears_cloexec() -> None:
    r, w = pipe()
    try:
        assert cloexec(r)
        assert dup2(r, r) == r
        assert not cloexec(r)
        assert dup2(r, r, inheritable=False) == r
        assert cloexec(r)
        assert is_open(r)
    finally:
        close_fds(r, w)


@pytest.mark.parametrize("inheritable", [True, False])
def test_dup2_to_another_fd(inheritable: bool) -> None:
    r, w = pipe()
    r2, w2 = pipe()
    try:
        assert dup2(r, w2, inheritable=inheritable) == w2
        assert cloexec(w2) is not inheritable
        assert same_file(r, w2)
        os.write(w, b"z")
        assert os.read(w2, 1) == b"z"
    finally:
        close_fds(r, w, r2, w2)


def test_dup2_default_is_inheritable() -> None:
    r, w = pipe()
    r2, w2 = pipe()
    try:
        dup2(r, w2)
        assert not cloexec(w2)
    finally:
        close_fds(r, w, r2, w2)


# --------------------------------------------------------------------------------------------
# set_pipe_size


def pipe_size(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)


def test_set_pipe_size_raises_capacity() -> None:
    r, w = pipe()
    try:
        before = pipe_size(w)
        wanted = before * 4
        got = set_pipe_size(w, wanted)
        assert got >= wanted
        assert pipe_size(w) == got
        assert pipe_size(r) == got  # one pipe, seen from both ends
        # The whole new capacity takes a write without blocking.
        set_nonblocking(w)
        assert os.write(w, b"x" * got) == got
        _, writable, _ = select.select([], [w], [], 0)
        assert writable == []
    finally:
        close_fds(r, w)


def test_set_pipe_size_refused_with_ebusy_keeps_the_size() -> None:
    r, w = pipe()
    try:
        before = pipe_size(w)
        os.write(w, b"x" * 3 * 4096)  # more data than a one-page pipe can hold
        assert set_pipe_size(w, 4096) == before
        assert pipe_size(w) == before
    finally:
        close_fds(r, w)


def test_set_pipe_size_refused_with_eperm_keeps_the_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Unprivileged processes get EPERM above /proc/sys/fs/pipe-max-size; root never does.
    real_fcntl = fcntl.fcntl

    def fake_fcntl(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == fcntl.F_SETPIPE_SZ:
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))
        return real_fcntl(fd, cmd, arg)

    r, w = pipe()
    try:
        before = pipe_size(w)
        with monkeypatch.context() as m:
            m.setattr(fcntl, "fcntl", fake_fcntl)
            assert set_pipe_size(w, before * 16) == before
        assert pipe_size(w) == before
    finally:
        close_fds(r, w)


def test_set_pipe_size_on_a_non_pipe_raises(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "file", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError) as info:  # noqa: PT011 - the errno is checked below
            set_pipe_size(fd, 1 << 20)
        assert info.value.errno == errno.EBADF
    finally:
        os.close(fd)


def test_set_pipe_size_without_platform_support(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fds_module, "_F_SETPIPE_SZ", None)
    r, w = pipe()
    try:
        before = pipe_size(w)
        assert set_pipe_size(w, before * 4) == 0
        assert pipe_size(w) == before
    finally:
        close_fds(r, w)


# --------------------------------------------------------------------------------------------
# close_fds and close_range


def test_close_fds_closes_every_fd_even_when_one_fails() -> None:
    r, w = pipe()
    bad = free_fd()
    with pytest.raises(OSError) as info:  # noqa: PT011 - the errno is checked below
        close_fds(r, bad, None, w)
    assert info.value.errno == errno.EBADF
    assert not is_open(r)
    assert not is_open(w)


def test_close_fds_reraises_the_first_error(monkeypatch: pytest.MonkeyPatch) -> None:
    r, w = pipe()
    first = OSError(errno.EIO, "first failure")
    second = OSError(errno.EBADF, "second failure")
    failing = {10**6: first, 10**6 + 1: second}
    attempted: list[int] = []
    real_close = os.close

    def fake_close(fd: int) -> None:
        attempted.append(fd)
        if fd in failing:
            raise failing[fd]
        real_close(fd)

    with monkeypatch.context() as m:
        m.setattr(os, "close", fake_close)
        with pytest.raises(OSError) as info:  # noqa: PT011 - identity is checked below
            close_fds(10**6, r, None, 10**6 + 1, w)
    assert info.value is first
    assert attempted == [10**6, r, 10**6 + 1, w]
    assert not is_open(r)
    assert not is_open(w)


def test_close_fds_closes_each_fd_once() -> None:
    r, w = pipe()
    close_fds(r, w)
    assert not is_open(r)
    assert not is_open(w)
    close_fds()
    close_fds(None, None)


def contiguous_fds(source: int, count: int) -> list[int]:
    """``count`` close-on-exec copies of ``source`` on consecutive numbers above every open fd."""
    base = max(int(name) for name in os.listdir("/proc/self/fd")) + 10
    fds = [fcntl.fcntl(source, fcntl.F_DUPFD_CLOEXEC, base + i) for i in range(count)]
    assert fds == list(range(base, base + count))
    return fds


def test_close_range_inclusive() -> None:
    r, w = pipe()
    a, b, c, d = contiguous_fds(r, 4)
    try:
        close_range(b, c)
        assert [is_open(fd) for fd in (a, b, c, d)] == [True, False, False, True]
        close_range(d, d)
        assert not is_open(d)
        close_range(a, a - 1)  # an empty range closes nothing
        assert is_open(a)
    finally:
        close_fds(r, w, a)


def test_close_range_to_the_end() -> None:
    r, w = pipe()
    try:
        before = set(os.listdir("/proc/self/fd"))
        first, *_ = contiguous_fds(r, 1)
        scattered = [fcntl.fcntl(r, fcntl.F_DUPFD_CLOEXEC, first + gap) for gap in (5, 100)]
        close_range(first)
        for fd in (first, *scattered):
            assert not is_open(fd)
        assert set(os.listdir("/proc/self/fd")) == before
        assert is_open(r)
        assert is_open(w)
    finally:
        close_fds(r, w)


# --------------------------------------------------------------------------------------------
# lift_stdio_sources


def test_lift_leaves_sources_on_their_own_target() -> None:
    assert lift_stdio_sources((0, 1, 2)) == ((0, 1, 2), [])
    assert lift_stdio_sources((None, None, None)) == ((None, None, None), [])


def test_lift_leaves_high_sources() -> None:
    r, w = pipe()
    try:
        assert lift_stdio_sources((r, w, w)) == ((r, w, w), [])
    finally:
        close_fds(r, w)


def test_lift_swapped_stdout_and_stderr() -> None:
    (stdin, stdout, stderr), temps = lift_stdio_sources((None, 2, 1))
    try:
        assert stdin is None
        assert stdout is not None
        assert stderr is not None
        assert temps == [stdout, stderr]
        assert stdout >= 3
        assert stderr >= 3
        assert same_file(stdout, 2)
        assert same_file(stderr, 1)
        assert cloexec(stdout)
        assert cloexec(stderr)
    finally:
        close_fds(*temps)


def test_lift_shares_one_copy_per_source() -> None:
    (stdin, stdout, stderr), temps = lift_stdio_sources((None, 0, 0))
    try:
        assert stdin is None
        assert stdout is not None
        assert stdout == stderr
        assert stdout >= 3
        assert temps == [stdout]
        assert same_file(stdout, 0)
    finally:
        close_fds(*temps)


def test_lift_only_what_would_be_clobbered() -> None:
    (stdin, stdout, stderr), temps = lift_stdio_sources((1, 1, None))
    try:
        assert stdin is not None
        assert stdin >= 3
        assert same_file(stdin, 1)
        assert stdout == 1
        assert stderr is None
        assert temps == [stdin]
    finally:
        close_fds(*temps)


def test_lift_closes_its_copies_when_one_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    real_fcntl = fcntl.fcntl
    made: list[int] = []

    def fake_fcntl(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == fcntl.F_DUPFD_CLOEXEC and made:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        result = real_fcntl(fd, cmd, arg)
        if cmd == fcntl.F_DUPFD_CLOEXEC:
            made.append(result)
        return result

    with monkeypatch.context() as m:
        m.setattr(fcntl, "fcntl", fake_fcntl)
        with pytest.raises(OSError) as info:  # noqa: PT011 - the errno is checked below
            lift_stdio_sources((2, 0, None))
    assert info.value.errno == errno.EMFILE
    assert len(made) == 1
    assert not is_open(made[0])
