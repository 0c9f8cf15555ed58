"""Shared fixtures. The autouse ``no_leaks`` fixture is the suite's strongest check: every test
must leave behind no child process (live or zombie) and no new file descriptor.

Also the small process helpers several test modules share (``from conftest import ...``)."""

from __future__ import annotations

import os
from collections.abc import Iterator, MutableMapping
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

import aproc


def children_of(pid: int) -> dict[int, str]:
    """Map pid -> state letter for every process whose parent is ``pid`` (zombies included)."""
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: fields start after the last ')'.
        fields = data[data.rindex(b")") + 2 :].split()
        if int(fields[1]) == pid:
            found[int(entry)] = fields[0].decode()
    return found


def proc_state(pid: int) -> str | None:
    """State letter of ``pid`` from /proc, or None when it no longer exists."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    return data[data.rindex(b")") + 2 :].split()[0].decode()


def sig_ignored(pid: int, sig: int) -> bool:
    """Whether ``pid`` ignores signal ``sig`` (its SigIgn mask in /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("SigIgn:"):
                return bool(int(line.split()[1], 16) & (1 << (sig - 1)))
    raise AssertionError("no SigIgn line")


async def wait_gone(pid: int, timeout: float = 5.0) -> str | None:
    """Poll (bounded) until ``pid`` is gone or a zombie waiting for init to reap it.

    Only for processes that are not our children (orphaned grandchildren), which nothing can
    wait for from here."""
    state = proc_state(pid)
    with anyio.move_on_after(timeout):
        while state not in (None, "Z"):
            await anyio.sleep(0.01)
            state = proc_state(pid)
    return state


async def reap(proc: aproc.Process) -> None:
    """Kill (no-op once reaped), close the pipes and reap; shielded and bounded."""
    with anyio.fail_after(10, shield=True):
        proc.kill()
        await proc.aclose()


async def read_all(stream: Any) -> bytes:
    """Everything ``stream`` yields up to EOF."""
    chunks = []
    while True:
        try:
            chunks.append(await stream.receive())
        except anyio.EndOfStream:
            return b"".join(chunks)


def open_fds() -> dict[int, str]:
    """Map fd -> what it points at, for this process."""
    fds: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the fd listdir itself used
    return fds


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("allow_leaks"):
        yield
        return
    fds_before = open_fds()
    kids_before = children_of(os.getpid())
    yield
    kids = {p: s for p, s in children_of(os.getpid()).items() if p not in kids_before}
    leaked_fds = {fd: target for fd, target in open_fds().items() if fds_before.get(fd) != target}
    problems = []
    if kids:
        problems.append(f"child processes left behind (pid: state): {kids}")
        for pid in kids:  # do not let one leaky test poison the next
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except OSError:
                pass
    if leaked_fds:
        problems.append(f"file descriptors left open: {leaked_fds}")
    if problems:
        pytest.fail("; ".join(problems))


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """The structlog events the test emits (structlog.testing.capture_logs)."""
    with capture_logs() as captured:
        yield captured


def pytest_configure(config: pytest.Config) -> None:
    # libuv opens a process-wide signal pipe pair with the first uvloop loop and keeps it for
    # the life of the process; open it now so no test's fd snapshot mistakes it for a leak.
    import uvloop

    uvloop.new_event_loop().close()
    config.addinivalue_line(
        "markers", "allow_leaks: skip the fd/child leak check (for tests that check it themselves)"
    )


# Every async test runs on asyncio, uvloop and trio (anyio's pytest plugin reads this fixture).
BACKENDS = [
    pytest.param(("asyncio", {}), id="asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    pytest.param(("trio", {}), id="trio"),
]


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    backend: tuple[str, dict[str, object]] = request.param
    return backend


def is_uvloop(anyio_backend: tuple[str, dict[str, object]]) -> bool:
    return bool(anyio_backend[1].get("use_uvloop"))


@pytest.fixture(params=["pidfd", "sigchld"])
def reaper_kind(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    anyio_backend: tuple[str, dict[str, object]],
) -> str:
    """Run the test under each reaper (APROC_REAPER). The reaper is chosen per event loop, and
    each test gets a fresh loop, so setting the variable before the test is enough."""
    kind: str = request.param
    if kind == "sigchld" and is_uvloop(anyio_backend):
        pytest.skip("uvloop reserves SIGCHLD for libuv; aproc serves uvloop with the pidfd reaper")
    monkeypatch.setenv("APROC_REAPER", kind)
    return kind
