"""Shared fixtures. The autouse ``no_leaks`` fixture is the suite's strongest check: every test
must leave behind no child process (live or zombie) and no new file descriptor."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


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
