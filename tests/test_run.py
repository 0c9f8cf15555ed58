"""aproc.run(): results, check, input, timeout (whole group), cancellation, the bounded drain
after exit (PITFALLS.md 15, 17, 19) and stdio options."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import anyio
import pytest
from conftest import proc_state, wait_gone

import aproc

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("reaper_kind")]


async def test_run_completed_process_exact() -> None:
    argv = ["sh", "-c", "printf 'out\\n'; printf 'e r r' >&2"]
    with anyio.fail_after(10):
        result = await aproc.run(argv)
    assert isinstance(result, subprocess.CompletedProcess)
    assert result.args == argv
    assert result.returncode == 0
    assert result.stdout == b"out\n"
    assert result.stderr == b"e r r"
    result.check_returncode()


async def test_run_check_raises_called_process_error() -> None:
    argv = ["sh", "-c", "printf so; printf se >&2; exit 3"]
    with anyio.fail_after(10), pytest.raises(subprocess.CalledProcessError) as info:
        await aproc.run(argv)
    exc = info.value
    assert exc.returncode == 3
    assert exc.cmd == argv
    assert exc.stdout == b"so"
    assert exc.output == b"so"
    assert exc.stderr == b"se"


async def test_run_check_false_returns_code() -> None:
    with anyio.fail_after(10):
        result = await aproc.run(["sh", "-c", "echo x; exit 3"], check=False)
    assert result.returncode == 3
    assert result.stdout == b"x\n"
    with pytest.raises(subprocess.CalledProcessError):
        result.check_returncode()


async def test_run_killed_by_signal_returncode() -> None:
    with anyio.fail_after(10):
        result = await aproc.run(["sh", "-c", "kill -TERM $$"], check=False)
    assert result.returncode == -signal.SIGTERM


@pytest.mark.parametrize("size", [0, 1, 65537, 4 * 1024 * 1024])
async def test_run_input_exact(size: int) -> None:
    data = os.urandom(size)
    with anyio.fail_after(30):
        result = await aproc.run(["cat"], input=data)
    assert result.returncode == 0
    assert len(result.stdout) == size
    assert result.stdout == data


async def test_run_input_epipe_swallowed() -> None:
    # the child exits without reading: run() drops the rest of input rather than raising
    with anyio.fail_after(10):
        result = await aproc.run(["true"], input=b"x" * (8 * 1024 * 1024))
    assert result.returncode == 0
    assert result.stdout == b""


async def test_run_input_and_stdin_is_value_error() -> None:
    with anyio.fail_after(10), pytest.raises(ValueError, match="input"):
        await aproc.run(["cat"], input=b"x", stdin=aproc.DEVNULL)


async def test_run_timeout_raises_with_partial_output() -> None:
    argv = ["sh", "-c", "echo partial; echo err >&2; exec sleep 60"]
    start = anyio.current_time()
    with anyio.fail_after(15), pytest.raises(aproc.ProcessTimeoutError) as info:
        await aproc.run(argv, timeout=0.5)
    elapsed = anyio.current_time() - start
    exc = info.value
    assert isinstance(exc, TimeoutError)
    assert isinstance(exc, subprocess.TimeoutExpired)
    assert exc.timeout == 0.5
    assert exc.cmd == argv
    assert exc.stdout == b"partial\n"
    assert exc.output == b"partial\n"
    assert exc.stderr == b"err\n"
    assert 0.5 <= elapsed < 10
    # no child left behind: checked by the no_leaks fixture


async def test_run_timeout_takes_whole_group() -> None:
    argv = ["sh", "-c", "sleep 60 & echo $!; sleep 60"]
    with anyio.fail_after(15), pytest.raises(aproc.ProcessTimeoutError) as info:
        await aproc.run(argv, timeout=0.5, start_new_session=True)
    out = info.value.stdout
    assert out is not None
    assert out.endswith(b"\n")
    background = int(out.strip())
    state = await wait_gone(background)
    if state is not None:  # still there: kill it so it cannot outlive the test
        try:
            os.kill(background, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert state in (None, "Z"), f"background member {background} survived: state {state}"


async def test_run_cancelled_leaves_no_child() -> None:
    with anyio.fail_after(15):
        with anyio.move_on_after(0.5) as scope:
            await aproc.run(["sleep", "60"])
        assert scope.cancelled_caught
    # no child left behind: checked by the no_leaks fixture


async def test_run_cancelled_after_child_output() -> None:
    """Cancel once the child has provably started (it reports its pid on a side pipe)."""
    r, w = os.pipe()
    report = aproc.FdReceiveStream(r)
    pid_box: list[int] = []
    try:
        with anyio.fail_after(15):
            async with anyio.create_task_group() as tg:
                with anyio.CancelScope() as scope:

                    async def watch_report() -> None:
                        data = b""
                        while not data.endswith(b"\n"):
                            data += await report.receive()
                        pid_box.append(int(data))
                        scope.cancel()

                    tg.start_soon(watch_report)
                    # the side pipe is the child's stderr (dash cannot redirect to fd > 9)
                    await aproc.run(["sh", "-c", "echo $$ >&2; echo out; exec sleep 60"], stderr=w)
                    pytest.fail("run() returned although the child sleeps 60 s")
                assert scope.cancelled_caught
    finally:
        os.close(w)
        await report.aclose()
    assert len(pid_box) == 1
    # the child was stopped and reaped before the cancellation got out of run()
    assert proc_state(pid_box[0]) is None


async def test_run_drain_bounded_by_grandchild_holding_stdout() -> None:
    # the grandchild inherits stdout and stderr and keeps them open for 60 s
    argv = ["sh", "-c", "sleep 60 & echo $! >&2; echo done"]
    start = anyio.current_time()
    with anyio.fail_after(10):
        result = await aproc.run(argv, drain_timeout=0.2)
    elapsed = anyio.current_time() - start
    grandchild = int(result.stderr.strip())
    try:
        assert result.returncode == 0
        assert result.stdout == b"done\n"
        assert result.stderr == f"{grandchild}\n".encode()
        assert elapsed < 5
    finally:
        try:
            os.kill(grandchild, signal.SIGKILL)
        except ProcessLookupError:
            pass
        assert await wait_gone(grandchild) in (None, "Z")


@pytest.mark.parametrize("spec", [None, aproc.DEVNULL])
async def test_run_stdout_not_captured(spec: int | None) -> None:
    with anyio.fail_after(10):
        argv = ["true"] if spec is None else ["echo", "discarded"]
        result = await aproc.run(argv, stdout=spec, stderr=spec)
    assert result.returncode == 0
    assert result.stdout is None
    assert result.stderr is None


async def test_run_stderr_to_stdout() -> None:
    with anyio.fail_after(10):
        result = await aproc.run(
            ["sh", "-c", "echo out; echo err >&2; echo out2"], stderr=aproc.STDOUT
        )
    assert result.stdout == b"out\nerr\nout2\n"
    assert result.stderr is None


async def test_run_cwd_and_env(tmp_path: Path) -> None:
    env = {"FOO": "bar baz", "PATH": os.environ.get("PATH", os.defpath)}
    with anyio.fail_after(10):
        result = await aproc.run(["sh", "-c", 'pwd -P; echo "$FOO"'], cwd=tmp_path, env=env)
    real = await anyio.Path(tmp_path).resolve()
    assert result.stdout == f"{real}\nbar baz\n".encode()


async def test_run_env_replaces_environment() -> None:
    with anyio.fail_after(10):
        result = await aproc.run(["/usr/bin/env"], env={"ONLY": "this"})
    assert result.stdout == b"ONLY=this\n"


async def test_run_env_none_inherits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APROC_TEST_INHERITED", "yes-1")
    with anyio.fail_after(10):
        result = await aproc.run(["sh", "-c", 'echo "$APROC_TEST_INHERITED"'])
    assert result.stdout == b"yes-1\n"


async def test_run_large_stdout_and_stderr_concurrently() -> None:
    size = 2 * 1024 * 1024
    argv = ["sh", "-c", f"head -c {size} /dev/zero; head -c {size} /dev/zero >&2"]
    with anyio.fail_after(30):
        result = await aproc.run(argv)
    assert result.returncode == 0
    assert len(result.stdout) == size
    assert len(result.stderr) == size
    assert result.stdout == bytes(size)
    assert result.stderr == bytes(size)


async def test_run_missing_program_raises_before_spawn() -> None:
    with anyio.fail_after(10), pytest.raises(FileNotFoundError) as info:
        await aproc.run(["aproc-no-such-program-xyz"])
    assert info.value.filename == "aproc-no-such-program-xyz"


async def test_run_concurrent_many() -> None:
    results: dict[int, bytes] = {}

    async def one(i: int) -> None:
        result = await aproc.run(["sh", "-c", f"echo {i}; exit {i % 4}"], check=False)
        assert result.returncode == i % 4
        results[i] = result.stdout

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(one, i)
    assert results == {i: f"{i}\n".encode() for i in range(20)}
