"""Pipelines: stages wired by OS pipes, pipefail returncodes, SIGPIPE default in children,
validation before any start, timeouts, streaming and shared stderr."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import anyio
import anyio.abc
import pytest
from conftest import read_all
from structlog.testing import capture_logs

import aproc

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("reaper_kind")]


def our_fd_targets() -> set[str]:
    targets = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            targets.add(os.readlink(f"/proc/self/fd/{name}"))
        except OSError:
            continue  # the fd listdir itself used
    return targets


async def test_run_pipeline_sort() -> None:
    with anyio.fail_after(10):
        result = await aproc.run_pipeline([["printf", "b\\na\\nc\\n"], ["sort"]])
    assert isinstance(result, aproc.PipelineResult)
    assert result.stdout == b"a\nb\nc\n"
    assert result.stderr == b""
    assert result.returncodes == [0, 0]
    assert result.returncode == 0
    assert result.args == [["printf", "b\\na\\nc\\n"], ["sort"]]


async def test_pipefail_returncode() -> None:
    with anyio.fail_after(10):
        result = await aproc.run_pipeline([["sh", "-c", "exit 2"], ["cat"]], check=False)
    assert result.returncodes == [2, 0]
    assert result.returncode == 2
    assert result.stdout == b""


async def test_pipefail_last_nonzero_wins() -> None:
    with anyio.fail_after(10):
        result = await aproc.run_pipeline(
            [["sh", "-c", "exit 2"], ["sh", "-c", "cat; exit 5"], ["cat"]], check=False
        )
    assert result.returncodes == [2, 5, 0]
    assert result.returncode == 5


async def test_pipeline_check_raises_with_joined_command() -> None:
    with anyio.fail_after(10), pytest.raises(subprocess.CalledProcessError) as info:
        await aproc.run_pipeline([["sh", "-c", "echo oops >&2; exit 2"], ["cat"]])
    exc = info.value
    assert exc.returncode == 2
    assert exc.cmd == "sh -c 'echo oops >&2; exit 2' | cat"
    assert exc.stdout == b""
    assert exc.stderr == b"oops\n"


async def test_yes_head_sigpipe_is_default_in_child() -> None:
    with anyio.fail_after(10):
        result = await aproc.run_pipeline([["yes"], ["head", "-n", "3"]], check=False)
    assert result.stdout == b"y\ny\ny\n"
    # yes died of SIGPIPE: the parent's SIG_IGN for SIGPIPE did not leak into the child
    assert result.returncodes == [-signal.SIGPIPE, 0]
    assert result.returncodes[0] == -13


async def test_stages_wired_by_os_pipes() -> None:
    payload = b"through the kernel\n" * 1000
    with anyio.fail_after(15):
        pipeline = await aproc.spawn_pipeline(
            [["cat"], ["cat"], ["cat"]], stdin=aproc.PIPE, stdout=aproc.PIPE
        )
        async with pipeline:
            assert isinstance(pipeline, aproc.Pipeline)
            assert pipeline.stdin is not None
            assert pipeline.stdout is not None
            first, middle, last = (p.pid for p in pipeline.processes)
            stdin, stdout = pipeline.stdin, pipeline.stdout
            # a line through all three stages: each cat is now in its copy loop (freshly
            # exec'd, the dynamic loader may still hold a transient fd on libc)
            await stdin.send(b"ping\n")
            echoed = b""
            while not echoed.endswith(b"\n"):
                echoed += await stdout.receive()
            assert echoed == b"ping\n"

            def link(pid: int, fd: int) -> str:
                return os.readlink(f"/proc/{pid}/fd/{fd}")

            assert link(middle, 0).startswith("pipe:")
            assert link(middle, 0) == link(first, 1)
            assert link(middle, 1).startswith("pipe:")
            assert link(middle, 1) == link(last, 0)
            assert link(first, 1) != link(last, 0)
            # the ends we hold are the first stage's stdin and the last stage's stdout ...
            ours = our_fd_targets()
            assert link(first, 0) in ours
            assert link(last, 1) in ours
            # ... and no end of the pipes between stages: no byte can pass through Python
            assert link(first, 1) not in ours
            assert link(last, 0) not in ours
            # each stage holds only its stdio: no sibling's pipe end (PITFALLS.md 5)
            for pid in (first, middle, last):
                assert sorted(os.listdir(f"/proc/{pid}/fd"), key=int) == ["0", "1", "2"]

            received: list[bytes] = []

            async def writer() -> None:
                await stdin.send(payload)
                await stdin.aclose()

            async def reader() -> None:
                received.append(await read_all(stdout))

            async with anyio.create_task_group() as tg:
                tg.start_soon(writer)
                tg.start_soon(reader)
        assert pipeline.returncodes == [0, 0, 0]
    assert received == [payload]


async def test_spawn_pipeline_streaming() -> None:
    with anyio.fail_after(10):
        pipeline = await aproc.spawn_pipeline(
            [["cat"], ["tr", "a-z", "A-Z"]], stdin=aproc.PIPE, stdout=aproc.PIPE
        )
        async with pipeline:
            assert pipeline.stdin is not None
            assert pipeline.stdout is not None
            assert pipeline.stderr is None
            await pipeline.stdin.send(b"hello\n")
            await pipeline.stdin.aclose()
            assert await read_all(pipeline.stdout) == b"HELLO\n"
            assert await pipeline.wait() == [0, 0]
        assert pipeline.returncodes == [0, 0]


async def test_spawn_pipeline_lines() -> None:
    with anyio.fail_after(10):
        pipeline = await aproc.spawn_pipeline(
            [["seq", "1", "5000"], ["grep", "7"]], stdout=aproc.PIPE
        )
        async with pipeline:
            assert pipeline.stdout is not None
            lines = [line async for line in pipeline.stdout.lines()]
        assert pipeline.returncodes == [0, 0]
    assert lines == [str(i).encode() for i in range(1, 5001) if "7" in str(i)]


async def test_missing_program_in_later_stage_fails_before_any_start() -> None:
    with anyio.fail_after(10), capture_logs() as logs:
        with pytest.raises(FileNotFoundError) as info:
            await aproc.spawn_pipeline(
                [["cat"], ["aproc-no-such-program-xyz"], ["cat"]], stdin=aproc.PIPE
            )
        with pytest.raises(FileNotFoundError):
            await aproc.run_pipeline([["true"], ["aproc-no-such-program-xyz"]])
    assert info.value.filename == "aproc-no-such-program-xyz"
    assert [e for e in logs if e["event"] == "process.spawned"] == []
    # nothing started, nothing left: the no_leaks fixture checks children and fds


async def test_exec_failure_in_later_stage_stops_earlier_stages(tmp_path: Path) -> None:
    # a path with a slash is only tried at exec time: the first stage is already running
    not_executable = tmp_path / "not-executable"
    not_executable.write_text("#!/bin/sh\nexit 0\n")
    not_executable.chmod(0o644)
    with anyio.fail_after(15), pytest.raises(PermissionError):
        await aproc.spawn_pipeline(
            [["sleep", "60"], [str(not_executable)]], stdin=aproc.PIPE, stdout=aproc.PIPE
        )
    # the sleep was stopped and reaped, every fd closed: the no_leaks fixture checks it


async def test_pipeline_timeout() -> None:
    start = anyio.current_time()
    with anyio.fail_after(15), pytest.raises(aproc.ProcessTimeoutError) as info:
        await aproc.run_pipeline([["sleep", "60"], ["sleep", "60"], ["sleep", "60"]], timeout=0.3)
    assert isinstance(info.value, TimeoutError)
    assert info.value.timeout == 0.3
    assert anyio.current_time() - start < 10
    # every stage stopped and reaped: the no_leaks fixture checks it


async def test_pipeline_timeout_partial_output() -> None:
    with anyio.fail_after(15), pytest.raises(aproc.ProcessTimeoutError) as info:
        await aproc.run_pipeline([["sh", "-c", "echo first; exec sleep 60"], ["cat"]], timeout=0.5)
    assert info.value.stdout == b"first\n"


async def test_pipeline_cancelled_leaves_nothing() -> None:
    with anyio.fail_after(15):
        with anyio.move_on_after(0.3) as scope:
            await aproc.run_pipeline([["sleep", "60"], ["cat"]])
        assert scope.cancelled_caught


async def test_input_through_three_stages() -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    with anyio.fail_after(30):
        result = await aproc.run_pipeline([["cat"], ["cat"], ["cat"]], input=data)
    assert result.returncodes == [0, 0, 0]
    assert len(result.stdout) == len(data)
    assert result.stdout == data


async def test_input_and_stdin_is_value_error() -> None:
    with pytest.raises(ValueError, match="input"):
        await aproc.run_pipeline([["cat"], ["cat"]], input=b"x", stdin=aproc.DEVNULL)


async def test_empty_pipeline_is_value_error() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        await aproc.run_pipeline([])


async def test_shared_stderr_collects_every_stage() -> None:
    with anyio.fail_after(10):
        result = await aproc.run_pipeline(
            [
                ["sh", "-c", "echo e1 >&2; echo x"],
                ["sh", "-c", "cat; echo e2 >&2"],
                ["sh", "-c", "cat >/dev/null; echo e3 >&2"],
            ]
        )
    assert result.returncodes == [0, 0, 0]
    assert result.stdout == b""
    # each stage writes its stderr line only after the stage before it has exited
    assert result.stderr == b"e1\ne2\ne3\n"


async def test_spawn_pipeline_shared_stderr_stream() -> None:
    with anyio.fail_after(10):
        pipeline = await aproc.spawn_pipeline(
            [["sh", "-c", "echo a >&2"], ["sh", "-c", "cat; echo b >&2"]],
            stdout=aproc.DEVNULL,
            stderr=aproc.PIPE,
        )
        async with pipeline:
            assert pipeline.stderr is not None
            assert pipeline.stdout is None
            assert await read_all(pipeline.stderr) == b"a\nb\n"
        assert pipeline.returncodes == [0, 0]


async def test_single_stage_pipeline() -> None:
    with anyio.fail_after(10):
        result = await aproc.run_pipeline([["echo", "solo"]])
    assert result.stdout == b"solo\n"
    assert result.returncodes == [0]
