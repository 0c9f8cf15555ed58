"""Pipes as anyio byte streams.

The parent's pipe ends are non-blocking (the child's stay blocking: PITFALLS.md 6). Every
operation tries the syscall first and waits for readiness only on EAGAIN: a pipe that already
holds data costs one ``read`` and no trip through the event loop. ``lines()`` splits whole
chunks with ``bytes.split`` rather than scanning byte by byte, and bounds a line only by an
explicit, generous limit (asyncio's 64 KiB readline limit breaks NDJSON: PITFALLS.md 16).

Closing a stream while another task waits on it wakes that task with ClosedResourceError via
``anyio.notify_closing``, so it never waits on an fd number the kernel may reuse (PITFALLS.md 20).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import anyio
import anyio.abc
import anyio.lowlevel

from .errors import LineTooLongError

__all__ = ["DEFAULT_LINE_LIMIT", "FdReceiveStream", "FdSendStream"]

DEFAULT_LINE_LIMIT = 16 * 1024 * 1024
"""Longest line ``lines()`` accepts by default: 16 MiB."""

_LINES_READ_SIZE = 256 * 1024


class _FdStream:
    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd

    def fileno(self) -> int:
        """The underlying fd, or -1 once closed."""
        return self._fd

    def close(self) -> None:
        """Close the fd now (idempotent); tasks waiting on it get ClosedResourceError."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                anyio.notify_closing(fd)
            except Exception:
                pass  # no event loop in this thread: nobody can be waiting on it
            os.close(fd)

    async def aclose(self) -> None:
        self.close()
        await anyio.lowlevel.checkpoint()


class FdReceiveStream(_FdStream, anyio.abc.ByteReceiveStream):
    """The read end of a pipe as an ``anyio.abc.ByteReceiveStream``.

    ``receive()`` returns what one ``read`` gives (at most ``max_bytes``) and raises
    ``anyio.EndOfStream`` at EOF and ``anyio.ClosedResourceError`` once closed.
    """

    __slots__ = ()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        # Checkpoint semantics as trio's FdStream: a cancelled caller never loses data that was
        # read, and a reader of a fast pipe still lets other tasks run.
        await anyio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while True:
            fd = self._fd
            if fd < 0:
                raise anyio.ClosedResourceError
            try:
                data = os.read(fd, max_bytes)
            except BlockingIOError:
                await anyio.wait_readable(fd)
                waited = True
                continue
            if not waited:
                await anyio.lowlevel.cancel_shielded_checkpoint()
            if not data:
                raise anyio.EndOfStream
            return data

    async def lines(
        self, *, limit: int = DEFAULT_LINE_LIMIT, split_long: bool = False
    ) -> AsyncIterator[bytes]:
        """Yield each line without its ``\\n``; a last line without one is yielded too.

        A line longer than ``limit`` bytes raises :class:`aproc.LineTooLongError` (an
        ``anyio.DelimiterNotFound``), or with ``split_long=True`` comes out in pieces of
        ``limit`` bytes, as a log collector wants.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        pending: list[bytes] = []  # pieces of a line whose newline has not arrived yet
        pending_len = 0
        while True:
            try:
                chunk = await self.receive(_LINES_READ_SIZE)
            except anyio.EndOfStream:
                if pending:
                    yield b"".join(pending)
                return
            lines = chunk.split(b"\n")
            tail = lines.pop()
            if lines and pending:
                pending.append(lines[0])
                lines[0] = b"".join(pending)
                pending = []
                pending_len = 0
            if tail:
                pending.append(tail)
                pending_len += len(tail)
            # Only a chunk longer than the limit, or a line completing a carried-over part, can
            # hold a line that is too long: the common case skips the per-line check.
            if len(chunk) > limit or (lines and len(lines[0]) > limit):
                lines = _enforce_limit(lines, limit, split_long)
            for line in lines:
                yield line
            if pending_len > limit:
                if not split_long:
                    raise LineTooLongError(limit)
                joined = b"".join(pending)
                # Keep 1..limit bytes pending: the line's last piece is only known once its
                # newline (or EOF) arrives; emptying pending here would make that newline
                # yield a spurious b"" line.
                cut = (len(joined) - 1) // limit * limit
                for start in range(0, cut, limit):
                    yield joined[start : start + limit]
                pending = [joined[cut:]]
                pending_len = len(joined) - cut


def _enforce_limit(lines: list[bytes], limit: int, split_long: bool) -> list[bytes]:
    out: list[bytes] = []
    for line in lines:
        if len(line) <= limit:
            out.append(line)
        elif split_long:
            out.extend(line[start : start + limit] for start in range(0, len(line), limit))
        else:
            raise LineTooLongError(limit)
    return out


class FdSendStream(_FdStream, anyio.abc.ByteSendStream):
    """The write end of a pipe as an ``anyio.abc.ByteSendStream``.

    ``send()`` returns once every byte is in the pipe. When the reader is gone (EPIPE) it raises
    ``anyio.BrokenResourceError``; once closed, ``anyio.ClosedResourceError``.
    """

    __slots__ = ()

    async def send(self, item: bytes) -> None:
        await anyio.lowlevel.checkpoint_if_cancelled()
        if not item:
            return
        view = memoryview(item)
        waited = False
        while view:
            fd = self._fd
            if fd < 0:
                raise anyio.ClosedResourceError
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                await anyio.wait_writable(fd)
                waited = True
                continue
            except BrokenPipeError as exc:
                raise anyio.BrokenResourceError from exc
            view = view[written:]
        if not waited:
            await anyio.lowlevel.cancel_shielded_checkpoint()
