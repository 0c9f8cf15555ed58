"""Pipes as anyio byte streams: types, EOF/close semantics, boundary sizes, lines(), EPIPE,
close-wakes-waiter and O_NONBLOCK on the parent's ends only (PITFALLS.md 6, 15-20)."""

from __future__ import annotations

import os
import random
import signal

import anyio
import anyio.abc
import pytest
from conftest import read_all

import aproc

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("reaper_kind")]

O_NONBLOCK = os.O_NONBLOCK


async def collect_lines(proc: aproc.Process, **kwargs: int) -> list[bytes]:
    assert proc.stdout is not None
    return [line async for line in proc.stdout.lines(**kwargs)]


async def append_lines(stream: aproc.FdReceiveStream, got: list[bytes], **kwargs: int) -> None:
    async for line in stream.lines(**kwargs):
        got.append(line)


def fd_flags_of(pid: int, fd: int) -> int:
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("flags:"):
                return int(line.split()[1], 8)
    raise AssertionError(f"no flags in /proc/{pid}/fdinfo/{fd}")


async def test_stream_types() -> None:
    with anyio.fail_after(10):
        proc = await aproc.spawn(["cat"], stdin=aproc.PIPE, stdout=aproc.PIPE, stderr=aproc.PIPE)
        async with proc:
            assert isinstance(proc.stdin, anyio.abc.ByteSendStream)
            assert isinstance(proc.stdout, anyio.abc.ByteReceiveStream)
            assert isinstance(proc.stderr, anyio.abc.ByteReceiveStream)
            assert isinstance(proc.stdout, aproc.FdReceiveStream)
            assert isinstance(proc.stdin, aproc.FdSendStream)
        assert proc.returncode == 0


async def test_no_pipe_means_no_stream() -> None:
    with anyio.fail_after(10):
        proc = await aproc.spawn(["true"], stdin=aproc.DEVNULL, stdout=aproc.DEVNULL)
        async with proc:
            assert proc.stdin is None
            assert proc.stdout is None
            assert proc.stderr is None
        assert proc.returncode == 0


async def test_receive_bytes_eof_then_closed() -> None:
    with anyio.fail_after(10):
        proc = await aproc.spawn(["printf", "hello"], stdout=aproc.PIPE)
        async with proc:
            assert proc.stdout is not None
            data = await proc.stdout.receive()
            assert type(data) is bytes
            assert data == b"hello"
            with pytest.raises(anyio.EndOfStream):
                await proc.stdout.receive()
            # EOF is sticky while the stream is open
            with pytest.raises(anyio.EndOfStream):
                await proc.stdout.receive()
            await proc.stdout.aclose()
            assert proc.stdout.fileno() == -1
            with pytest.raises(anyio.ClosedResourceError):
                await proc.stdout.receive()
            await proc.stdout.aclose()  # idempotent
        assert proc.returncode == 0


async def test_receive_respects_max_bytes() -> None:
    with anyio.fail_after(10):
        proc = await aproc.spawn(["printf", "abcdefgh"], stdout=aproc.PIPE)
        async with proc:
            assert proc.stdout is not None
            await proc.wait()  # all 8 bytes are in the pipe now
            assert await proc.stdout.receive(3) == b"abc"
            assert await proc.stdout.receive(3) == b"def"
            assert await proc.stdout.receive(3) == b"gh"
            with pytest.raises(anyio.EndOfStream):
                await proc.stdout.receive(3)


@pytest.mark.parametrize("size", [65536, 65537, 219263, 219264, 4 * 1024 * 1024])
async def test_cat_round_trip_exact(size: int) -> None:
    payload = os.urandom(size)
    received: list[bytes] = []
    with anyio.fail_after(30):
        proc = await aproc.spawn(["cat"], stdin=aproc.PIPE, stdout=aproc.PIPE)
        async with proc:
            assert proc.stdin is not None
            assert proc.stdout is not None
            stdin, stdout = proc.stdin, proc.stdout

            async def writer() -> None:
                await stdin.send(payload)
                await stdin.aclose()

            async def reader() -> None:
                received.append(await read_all(stdout))

            async with anyio.create_task_group() as tg:
                tg.start_soon(writer)
                tg.start_soon(reader)
        assert proc.returncode == 0
    assert len(received[0]) == size
    assert received[0] == payload


async def test_parent_ends_nonblocking_child_ends_blocking() -> None:
    with anyio.fail_after(10):
        proc = await aproc.spawn(["cat"], stdin=aproc.PIPE, stdout=aproc.PIPE, stderr=aproc.PIPE)
        async with proc:
            assert proc.stdin is not None
            assert proc.stdout is not None
            assert proc.stderr is not None
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                assert os.get_blocking(stream.fileno()) is False
                assert os.get_inheritable(stream.fileno()) is False
            # the child's ends of the very same pipes stay blocking (PITFALLS.md 6)
            for fd in (0, 1, 2):
                assert fd_flags_of(proc.pid, fd) & O_NONBLOCK == 0
        assert proc.returncode == 0


async def test_send_after_close_raises_closed() -> None:
    with anyio.fail_after(10):
        proc = await aproc.spawn(["cat"], stdin=aproc.PIPE, stdout=aproc.DEVNULL)
        async with proc:
            assert proc.stdin is not None
            await proc.stdin.send(b"some bytes\n")
            await proc.stdin.aclose()
            assert proc.stdin.fileno() == -1
            with pytest.raises(anyio.ClosedResourceError):
                await proc.stdin.send(b"x")
            # cat sees EOF on the closed pipe and exits on its own
            assert await proc.wait() == 0


async def test_stdin_epipe_is_broken_resource() -> None:
    with anyio.fail_after(10):
        proc = await aproc.spawn(["true"], stdin=aproc.PIPE)
        async with proc:
            assert proc.stdin is not None
            # the child has exited without reading: the pipe has no reader left
            assert await proc.wait() == 0
            with pytest.raises(anyio.BrokenResourceError):
                await proc.stdin.send(b"x" * 10**6)
        assert proc.returncode == 0


async def test_close_wakes_waiting_receiver() -> None:
    outcome: list[BaseException | bytes] = []
    with anyio.fail_after(10):
        proc = await aproc.spawn(["sleep", "60"], stdout=aproc.PIPE)
        try:
            assert proc.stdout is not None
            stdout = proc.stdout

            async def waiter() -> None:
                try:
                    outcome.append(await stdout.receive())
                except BaseException as exc:
                    outcome.append(exc)
                    if not isinstance(exc, anyio.ClosedResourceError):
                        raise

            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                # the waiter is parked on the empty pipe (sleep writes nothing)
                await anyio.wait_all_tasks_blocked()
                assert outcome == []
                await stdout.aclose()
            assert len(outcome) == 1
            assert isinstance(outcome[0], anyio.ClosedResourceError)
            assert proc.returncode is None  # closing the pipe did not touch the child
        finally:
            proc.kill()
            assert await proc.wait() == -signal.SIGKILL
            await proc.aclose()


async def test_close_wakes_waiting_sender() -> None:
    outcome: list[BaseException | None] = []
    with anyio.fail_after(10):
        # sleep never reads: a large send fills the pipe and parks the sender
        proc = await aproc.spawn(["sleep", "60"], stdin=aproc.PIPE)
        try:
            assert proc.stdin is not None
            stdin = proc.stdin

            async def sender() -> None:
                try:
                    await stdin.send(b"x" * (16 * 1024 * 1024))
                    outcome.append(None)
                except BaseException as exc:
                    outcome.append(exc)
                    if not isinstance(exc, anyio.ClosedResourceError):
                        raise

            async with anyio.create_task_group() as tg:
                tg.start_soon(sender)
                await anyio.wait_all_tasks_blocked()
                assert outcome == []
                await stdin.aclose()
            assert len(outcome) == 1
            assert isinstance(outcome[0], anyio.ClosedResourceError)
        finally:
            proc.kill()
            assert await proc.wait() == -signal.SIGKILL
            await proc.aclose()


# --- lines() -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["printf", "a\\nb\\nc"], [b"a", b"b", b"c"]),
        (["printf", "a\\n\\nb\\n"], [b"a", b"", b"b"]),
        (["printf", "\\n"], [b""]),
        (["printf", "\\n\\n"], [b"", b""]),
        (["printf", "only"], [b"only"]),
        (["printf", "crlf\\r\\n"], [b"crlf\r"]),
        (["true"], []),
    ],
    ids=["partial-last", "empty-middle", "one-empty", "two-empty", "no-newline", "crlf", "none"],
)
async def test_lines_splitting(argv: list[str], expected: list[bytes]) -> None:
    with anyio.fail_after(10):
        proc = await aproc.spawn(argv, stdout=aproc.PIPE)
        async with proc:
            assert await collect_lines(proc) == expected
        assert proc.returncode == 0


async def test_lines_one_mebibyte_line_whole() -> None:
    script = "head -c 1048576 /dev/zero | tr '\\0' x; echo; printf tail"
    with anyio.fail_after(20):
        proc = await aproc.spawn(["sh", "-c", script], stdout=aproc.PIPE)
        async with proc:
            lines = await collect_lines(proc)
        assert proc.returncode == 0
    assert len(lines) == 2
    assert len(lines[0]) == 2**20
    assert lines[0] == b"x" * 2**20
    assert lines[1] == b"tail"


async def test_lines_split_long_pieces() -> None:
    # 700_000 bytes over several reads, then a newline: pieces of the limit, no empty extra
    script = "head -c 700000 /dev/zero | tr '\\0' x; echo; echo next"
    with anyio.fail_after(20):
        proc = await aproc.spawn(["sh", "-c", script], stdout=aproc.PIPE)
        async with proc:
            assert proc.stdout is not None
            lines = [line async for line in proc.stdout.lines(limit=100_000, split_long=True)]
        assert proc.returncode == 0
    assert lines == [b"x" * 100_000] * 7 + [b"next"]


def test_default_line_limit_is_generous() -> None:
    assert aproc.DEFAULT_LINE_LIMIT >= 1024 * 1024


@pytest.mark.parametrize(
    ("length", "limit", "newline"),
    [
        (5000, 1000, True),  # one chunk, complete line too long
        (5000, 1000, False),  # too long last partial line
        (600_000, 300_000, False),  # spans several reads without a newline
        (600_000, 300_000, True),
        (1001, 1000, True),  # one byte over
    ],
)
async def test_lines_too_long_raises(length: int, limit: int, newline: bool) -> None:
    script = f"printf ok\\\\n; head -c {length} /dev/zero | tr '\\0' y"
    if newline:
        script += "; echo; echo after"
    with anyio.fail_after(20):
        proc = await aproc.spawn(["sh", "-c", script], stdout=aproc.PIPE)
        async with proc:
            got: list[bytes] = []
            assert proc.stdout is not None
            with pytest.raises(aproc.LineTooLongError) as info:
                await append_lines(proc.stdout, got, limit=limit)
            # whatever came before the long line was delivered, nothing after it
            assert got in ([], [b"ok"])
            await proc.stdout.aclose()
    assert isinstance(info.value, anyio.DelimiterNotFound)
    assert info.value.limit == limit
    assert str(limit) in str(info.value)


@pytest.mark.parametrize("newline", [True, False])
async def test_lines_exactly_at_limit_ok(newline: bool) -> None:
    limit = 4096
    script = f"head -c {limit} /dev/zero | tr '\\0' z"
    if newline:
        script += "; echo"
    with anyio.fail_after(10):
        proc = await aproc.spawn(["sh", "-c", script], stdout=aproc.PIPE)
        async with proc:
            assert await collect_lines(proc, limit=limit) == [b"z" * limit]
        assert proc.returncode == 0


async def test_lines_seq_100k_across_chunks() -> None:
    with anyio.fail_after(20):
        proc = await aproc.spawn(["seq", "1", "100000"], stdout=aproc.PIPE)
        async with proc:
            lines = await collect_lines(proc)
        assert proc.returncode == 0
    assert lines == [str(i).encode() for i in range(1, 100001)]


async def test_lines_varied_lengths_through_cat() -> None:
    rng = random.Random(1234)
    lengths = [rng.choice([0, 1, 2, 7, 100, 4095, 4096, 65535, 65536, 70000]) for _ in range(300)]
    lengths += [300_000, 0, 262_144, 262_143, 1, 600_000]  # longer than one read (256 KiB)
    expected = [bytes([97 + i % 26]) * n for i, n in enumerate(lengths)]
    payload = b"\n".join(expected) + b"\n"
    got: list[bytes] = []
    with anyio.fail_after(30):
        proc = await aproc.spawn(["cat"], stdin=aproc.PIPE, stdout=aproc.PIPE)
        async with proc:
            assert proc.stdin is not None
            assert proc.stdout is not None
            stdin, stdout = proc.stdin, proc.stdout

            async def writer() -> None:
                # odd-sized writes so line ends fall anywhere relative to reads
                view = memoryview(payload)
                step = 7919
                while view:
                    await stdin.send(bytes(view[:step]))
                    view = view[step:]
                    step = step * 3 % 100_003 + 1
                await stdin.aclose()

            async def reader() -> None:
                async for line in stdout.lines():
                    got.append(line)

            async with anyio.create_task_group() as tg:
                tg.start_soon(writer)
                tg.start_soon(reader)
        assert proc.returncode == 0
    assert len(got) == len(expected)
    assert got == expected


async def test_output_buffered_at_exit_stays_readable() -> None:
    with anyio.fail_after(10):
        proc = await aproc.spawn(["printf", "left\\nbehind\\n"], stdout=aproc.PIPE)
        async with proc:
            assert await proc.wait() == 0
            assert await collect_lines(proc) == [b"left", b"behind"]
