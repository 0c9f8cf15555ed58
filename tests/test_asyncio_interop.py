"""aproc next to asyncio's own subprocess machinery and subprocess.run in a thread, in one
loop: neither steals the other's children (PITFALLS.md 9: wait per pid, never waitpid(-1)).

These are pytest-asyncio tests on purpose (asyncio's own loop, not anyio's test runner), so
this module has no anyio pytestmark; each reaper is forced through APROC_REAPER."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

import aproc


@pytest.fixture(params=["pidfd", "sigchld"])
def aproc_reaper(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    kind: str = request.param
    monkeypatch.setenv("APROC_REAPER", kind)
    return kind


async def _asyncio_child(i: int) -> tuple[int, bytes]:
    proc = await asyncio.create_subprocess_exec(
        "sh", "-c", f"echo asyncio-{i}; exit {10 + i % 3}", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out


async def _aproc_child(i: int) -> tuple[int, bytes]:
    result = await aproc.run(["sh", "-c", f"echo aproc-{i}; exit {20 + i % 3}"], check=False)
    return result.returncode, result.stdout


def _thread_child(i: int) -> tuple[int, bytes]:
    result = subprocess.run(
        ["sh", "-c", f"echo thread-{i}; exit {30 + i % 3}"], stdout=subprocess.PIPE, check=False
    )
    return result.returncode, result.stdout


@pytest.mark.asyncio
@pytest.mark.usefixtures("aproc_reaper")
async def test_asyncio_subprocess_and_aproc_concurrently() -> None:
    n = 8
    async with asyncio.timeout(30):
        results = await asyncio.gather(
            *(_asyncio_child(i) for i in range(n)),
            *(_aproc_child(i) for i in range(n)),
            *(asyncio.to_thread(_thread_child, i) for i in range(n)),
        )
    asyncio_results = results[:n]
    aproc_results = results[n : 2 * n]
    thread_results = results[2 * n :]
    assert asyncio_results == [(10 + i % 3, f"asyncio-{i}\n".encode()) for i in range(n)]
    assert aproc_results == [(20 + i % 3, f"aproc-{i}\n".encode()) for i in range(n)]
    assert thread_results == [(30 + i % 3, f"thread-{i}\n".encode()) for i in range(n)]


@pytest.mark.asyncio
@pytest.mark.usefixtures("aproc_reaper")
async def test_aproc_spawn_while_asyncio_child_runs() -> None:
    async with asyncio.timeout(30):
        slow = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            "read line; echo got-$line",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            # several aproc children start and exit while asyncio's child is still alive
            for i in range(5):
                result = await aproc.run(["sh", "-c", f"exit {i}"], check=False)
                assert result.returncode == i
            assert slow.returncode is None
            out, _ = await slow.communicate(b"go\n")
        finally:
            if slow.returncode is None:
                slow.kill()
                await slow.wait()
    assert slow.returncode == 0
    assert out == b"got-go\n"
