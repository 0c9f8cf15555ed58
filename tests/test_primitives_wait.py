"""Waiting: exact wait-status decoding (PITFALLS.md 14), per-pid reaping and pidfds."""

from __future__ import annotations

import errno
import os
import select
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from conftest import children_of
from hypothesis import given
from hypothesis import strategies as st

from aproc.primitives import (
    POSIX_SPAWN_AVAILABLE,
    ExitStatus,
    SpawnRequest,
    fork_exec,
    have_pidfd,
    pidfd_open,
    pidfd_send_signal,
    pipe,
    posix_spawn,
    send_signal,
    try_reap,
    wait_blocking,
)

Launcher = Callable[[SpawnRequest], int]

needs_pidfd = pytest.mark.skipif(not have_pidfd(), reason="pidfd_open is not available")


@pytest.fixture(params=["posix_spawn", "fork_exec"])
def launcher(request: pytest.FixtureRequest) -> Launcher:
    if request.param == "posix_spawn":
        if not POSIX_SPAWN_AVAILABLE:
            pytest.skip("glibc posix_spawn with addchdir_np/addclosefrom_np is not available")
        return posix_spawn
    return fork_exec


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"SIG{sig}"


# --------------------------------------------------------------------------------------------
# decoding raw statuses


@given(st.integers(min_value=0, max_value=255))
def test_exit_status_decodes_exit_codes(code: int) -> None:
    raw = code << 8
    assert os.WIFEXITED(raw)
    status = ExitStatus.from_wait_status(raw)
    assert status == ExitStatus(code, core_dumped=False)
    assert status.returncode == code
    assert status.core_dumped is False
    assert status.signal is None
    assert status.signal_name is None


@given(st.integers(min_value=1, max_value=64), st.booleans())
def test_exit_status_decodes_signals(sig: int, core: bool) -> None:
    raw = sig | (0x80 if core else 0)
    assert os.WIFSIGNALED(raw)
    status = ExitStatus.from_wait_status(raw)
    assert status == ExitStatus(-sig, core_dumped=core)
    assert status.returncode == -sig
    assert status.core_dumped is core
    assert status.signal_name == signal_name(sig)
    if sig in signal.Signals._value2member_map_:
        assert status.signal is signal.Signals(sig)
    else:
        assert status.signal is None


@given(st.integers(min_value=1, max_value=64))
def test_stopped_status_is_not_an_exit(sig: int) -> None:
    raw = (sig << 8) | 0x7F
    assert os.WIFSTOPPED(raw)
    with pytest.raises(ValueError, match="not an exit"):
        ExitStatus.from_wait_status(raw)


def test_continued_status_is_not_an_exit() -> None:
    assert os.WIFCONTINUED(0xFFFF)
    with pytest.raises(ValueError, match="not an exit"):
        ExitStatus.from_wait_status(0xFFFF)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (0x0000, ExitStatus(0)),
        (0x0300, ExitStatus(3)),
        (0xFF00, ExitStatus(255)),
        (0x000F, ExitStatus(-15)),
        (0x0009, ExitStatus(-9)),
        (0x0086, ExitStatus(-6, core_dumped=True)),
        (0x008B, ExitStatus(-11, core_dumped=True)),
    ],
)
def test_exit_status_known_values(raw: int, expected: ExitStatus) -> None:
    assert ExitStatus.from_wait_status(raw) == expected


def test_signal_properties() -> None:
    assert ExitStatus(-9).signal is signal.SIGKILL
    assert ExitStatus(-9).signal_name == "SIGKILL"
    assert ExitStatus(-15).signal_name == "SIGTERM"
    assert ExitStatus(-33).signal is None
    assert ExitStatus(-33).signal_name == "SIG33"
    assert ExitStatus(0).signal is None
    assert ExitStatus(1).signal_name is None


# --------------------------------------------------------------------------------------------
# real children


@contextmanager
def parked_child(launcher: Launcher, **kwargs: Any) -> Iterator[tuple[int, int]]:
    """A ``cat`` child blocked reading a pipe; yields (pid, the pipe's write end).

    Closing the write end lets it exit 0. On the way out the write end is closed (if the body
    did not) and the child is reaped if it is still ours.
    """
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
        yield pid, in_w
    finally:
        try:
            os.close(in_w)
        except OSError as exc:
            if exc.errno != errno.EBADF:
                raise
        if pid in children_of(os.getpid()):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def wait_readable(fd: int) -> None:
    readable, _, _ = select.select([fd], [], [], 30)
    assert readable == [fd]


@pytest.mark.parametrize(("sig", "returncode"), [(signal.SIGTERM, -15), (signal.SIGKILL, -9)])
def test_send_signal_from_the_parent(launcher: Launcher, sig: int, returncode: int) -> None:
    with parked_child(launcher) as (pid, _):
        send_signal(pid, sig)
        status = wait_blocking(pid)
    assert status == ExitStatus(returncode)
    assert status.signal == sig


@needs_pidfd
def test_try_reap_none_while_running_then_status(launcher: Launcher) -> None:
    with parked_child(launcher) as (pid, in_w):
        pidfd = pidfd_open(pid)
        try:
            assert try_reap(pid) is None
            os.close(in_w)
            wait_readable(pidfd)  # readable once the child has exited: no polling
            assert try_reap(pid) == ExitStatus(0)
        finally:
            os.close(pidfd)
        with pytest.raises(ChildProcessError):
            try_reap(pid)


def test_wait_blocking_reaps_once(launcher: Launcher) -> None:
    with parked_child(launcher) as (pid, in_w):
        os.close(in_w)
        assert wait_blocking(pid) == ExitStatus(0)
        assert pid not in children_of(os.getpid())
        with pytest.raises(ChildProcessError) as info:
            wait_blocking(pid)
        assert info.value.errno == errno.ECHILD


def test_try_reap_refuses_a_process_that_is_not_our_child() -> None:
    with pytest.raises(ChildProcessError) as info:
        try_reap(os.getppid())
    assert info.value.errno == errno.ECHILD


@needs_pidfd
def test_pidfd_signal_and_exit(launcher: Launcher) -> None:
    with parked_child(launcher) as (pid, _):
        pidfd = pidfd_open(pid)
        try:
            assert not os.get_inheritable(pidfd)
            pidfd_send_signal(pidfd, signal.SIGKILL)
            wait_readable(pidfd)
            assert wait_blocking(pid) == ExitStatus(-9)
            # After the reap the pidfd still names the dead process, never a recycled pid.
            with pytest.raises(ProcessLookupError) as info:
                pidfd_send_signal(pidfd, signal.SIGTERM)
            assert info.value.errno == errno.ESRCH
        finally:
            os.close(pidfd)


def test_pidfd_open_of_a_missing_process() -> None:
    if not have_pidfd():
        pytest.skip("pidfd_open is not available")
    with pytest.raises(ProcessLookupError):
        pidfd_open(2**22 + 1)  # above the kernel's pid_max limit


def test_have_pidfd_is_cached() -> None:
    assert have_pidfd() is have_pidfd()


@needs_pidfd
def test_ignored_sigchld_makes_the_kernel_reap(launcher: Launcher) -> None:
    """With SIGCHLD ignored the kernel reaps by itself: waiting raises ECHILD, never hangs."""
    old = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        with parked_child(launcher) as (pid, in_w):
            pidfd = pidfd_open(pid)
            try:
                os.close(in_w)
                wait_readable(pidfd)
                with pytest.raises(ChildProcessError):
                    wait_blocking(pid)
            finally:
                os.close(pidfd)
    finally:
        signal.signal(signal.SIGCHLD, old)
