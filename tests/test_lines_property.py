"""Property tests of ``FdReceiveStream.lines()``: for any bytes cut into any chunks, the lines
are exactly ``data.split(b"\\n")`` minus the empty piece after a final newline, and the limit
raises exactly when some line is longer than it. Runs on asyncio only (pure stream logic)."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aproc
from aproc.primitives import pipe

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def expected_lines(data: bytes) -> list[bytes]:
    if not data:
        return []
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    return lines


class ChunkedStream(aproc.FdReceiveStream):
    """An FdReceiveStream whose reads return exactly the given chunks, then EOF; so the
    property controls where every chunk boundary falls. (It owns a real, unused pipe end.)"""

    __slots__ = ("_chunks",)

    def __init__(self, fd: int, chunks: list[bytes]) -> None:
        super().__init__(fd)
        self._chunks = [c for c in chunks if c]  # an empty read would mean EOF
        self._chunks.reverse()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        await anyio.lowlevel.checkpoint()
        if self.fileno() < 0:
            raise anyio.ClosedResourceError
        if not self._chunks:
            raise anyio.EndOfStream
        chunk = self._chunks.pop()
        if len(chunk) > max_bytes:
            self._chunks.append(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        return chunk


async def append_lines(stream: aproc.FdReceiveStream, got: list[bytes], limit: int) -> None:
    async for line in stream.lines(limit=limit):
        got.append(line)


# Chunks rich in newlines, so empty lines, runs of newlines and boundaries at a newline occur.
chunks_strategy = st.lists(
    st.one_of(st.binary(max_size=64), st.sampled_from([b"\n", b"\n\n", b"a\n", b"\nb", b"x"]))
    | st.text(alphabet="ab\n", max_size=40).map(str.encode),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(st.binary()))
async def test_lines_through_a_pipe(chunks: list[bytes]) -> None:
    data = b"".join(chunks)
    r, w = pipe()
    reader = aproc.FdReceiveStream(r)
    writer = aproc.FdSendStream(w)
    got: list[bytes] = []
    try:
        with anyio.fail_after(10):

            async def feed() -> None:
                for chunk in chunks:
                    await writer.send(chunk)
                await writer.aclose()

            async with anyio.create_task_group() as tg:
                tg.start_soon(feed)
                async for line in reader.lines():
                    got.append(line)
    finally:
        writer.close()
        reader.close()
    assert got == expected_lines(data)


@settings(max_examples=200, deadline=None)
@given(chunks=chunks_strategy)
async def test_lines_exact_chunk_boundaries(chunks: list[bytes]) -> None:
    data = b"".join(chunks)
    r, w = pipe()
    stream = ChunkedStream(r, chunks)
    try:
        got = [line async for line in stream.lines()]
    finally:
        stream.close()
        aproc.primitives.close_fds(w)
    assert got == expected_lines(data)


@settings(max_examples=200, deadline=None)
@given(chunks=chunks_strategy, limit=st.integers(min_value=1, max_value=80))
async def test_lines_limit_exact(chunks: list[bytes], limit: int) -> None:
    data = b"".join(chunks)
    expected = expected_lines(data)
    r, w = pipe()
    stream = ChunkedStream(r, chunks)
    got: list[bytes] = []
    try:
        if any(len(line) > limit for line in expected):
            with pytest.raises(aproc.LineTooLongError) as info:
                await append_lines(stream, got, limit)
            assert info.value.limit == limit
            # lines yielded before the error are the leading lines, each within the limit
            assert got == expected[: len(got)]
            first_long = next(i for i, line in enumerate(expected) if len(line) > limit)
            assert len(got) <= first_long
        else:
            async for line in stream.lines(limit=limit):
                got.append(line)
            assert got == expected
    finally:
        stream.close()
        aproc.primitives.close_fds(w)


def split_pieces(line: bytes, limit: int) -> list[bytes]:
    if not line:
        return [line]
    return [line[i : i + limit] for i in range(0, len(line), limit)]


@settings(max_examples=200, deadline=None)
@given(chunks=chunks_strategy, limit=st.integers(min_value=1, max_value=20))
async def test_lines_split_long_exact(chunks: list[bytes], limit: int) -> None:
    """With split_long=True a long line comes out in limit-sized pieces, wherever the chunk
    boundaries fall."""
    data = b"".join(chunks)
    expected = [piece for line in expected_lines(data) for piece in split_pieces(line, limit)]
    r, w = pipe()
    stream = ChunkedStream(r, chunks)
    try:
        got = [line async for line in stream.lines(limit=limit, split_long=True)]
    finally:
        stream.close()
        aproc.primitives.close_fds(w)
    assert got == expected


async def test_lines_limit_must_be_positive() -> None:
    r, w = pipe()
    stream = ChunkedStream(r, [b"a\n"])
    try:
        with pytest.raises(ValueError, match="limit"):
            async for _ in stream.lines(limit=0):
                pass
    finally:
        stream.close()
        aproc.primitives.close_fds(w)
