"""Reading a child's stdout: bytes in big chunks, and 41-byte lines.

Bytes: ``head -c SIZE /dev/zero`` read to EOF with 1 MiB receives (aproc ``receive``, asyncio
``StreamReader.read``, trio ``receive_some``, anyio ``receive``) against a blocking 64 KiB
``os.read`` loop on a ``subprocess.Popen`` pipe.

Lines: ``yes 0123456789012345678901234567890123456789 | head -c SIZE`` (41-byte lines with the
newline) counted with aproc ``lines()``, asyncio ``readline()``, anyio's
``BufferedByteReceiveStream.receive_until(b"\\n", 65536)`` and a C-buffered ``for line in
popen.stdout`` loop.

The clock starts once the spawn has returned and stops when the child has been reaped; every
run checks it saw exactly SIZE bytes (or every line).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Callable

import anyio
import anyio.abc
import trio
from anyio.streams.buffered import BufferedByteReceiveStream

import aproc

from .common import (
    LOOPS,
    Config,
    Impl,
    Metric,
    Section,
    aproc_key,
    interleave,
    log,
    median,
    row_for,
    spread,
    which,
)

CHUNK = 1 << 20
RAW_CHUNK = 64 << 10
LINE = "0123456789012345678901234567890123456789"  # + "\n" = 41 bytes
LINE_LEN = len(LINE) + 1


def bytes_argv(size: int) -> list[str]:
    return [which("head"), "-c", str(size), "/dev/zero"]


def lines_argv(size: int) -> list[str]:
    return [which("sh"), "-c", f"{which('yes')} {LINE} | {which('head')} -c {size}"]


def expected_lines(size: int) -> int:
    return -(-size // LINE_LEN)  # the last, partial line counts too


def _check(what: str, got: int, want: int, name: str) -> None:
    if got != want:
        raise RuntimeError(f"{name}: read {got} {what}, expected {want}")


# ---------------------------------------------------------------------------------- bytes


async def aproc_bytes(size: int) -> float:
    proc = await aproc.spawn(bytes_argv(size), stdout=aproc.PIPE)
    assert proc.stdout is not None
    total = 0
    t0 = time.perf_counter()
    async with proc:
        receive = proc.stdout.receive
        try:
            while True:
                total += len(await receive(CHUNK))
        except anyio.EndOfStream:
            pass
    elapsed = time.perf_counter() - t0
    _check("bytes", total, size, "aproc")
    return elapsed


async def asyncio_bytes(size: int) -> float:
    proc = await asyncio.create_subprocess_exec(*bytes_argv(size), stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    read = proc.stdout.read
    total = 0
    t0 = time.perf_counter()
    while chunk := await read(CHUNK):
        total += len(chunk)
    await proc.wait()
    elapsed = time.perf_counter() - t0
    _check("bytes", total, size, "asyncio")
    return elapsed


async def trio_bytes(size: int) -> float:
    proc = await trio.lowlevel.open_process(bytes_argv(size), stdout=subprocess.PIPE)
    assert proc.stdout is not None
    receive_some = proc.stdout.receive_some
    total = 0
    t0 = time.perf_counter()
    try:
        while chunk := await receive_some(CHUNK):
            total += len(chunk)
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
        await proc.stdout.aclose()
    elapsed = time.perf_counter() - t0
    _check("bytes", total, size, "trio")
    return elapsed


async def anyio_bytes(size: int) -> float:
    proc = await anyio.open_process(bytes_argv(size), stdin=None, stderr=None)
    assert proc.stdout is not None
    receive = proc.stdout.receive
    total = 0
    t0 = time.perf_counter()
    async with proc:
        try:
            while True:
                total += len(await receive(CHUNK))
        except anyio.EndOfStream:
            pass
    elapsed = time.perf_counter() - t0
    _check("bytes", total, size, "anyio")
    return elapsed


def raw_bytes(size: int, pipesize: int = -1) -> float:
    with subprocess.Popen(bytes_argv(size), stdout=subprocess.PIPE, pipesize=pipesize) as proc:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        read = os.read
        total = 0
        t0 = time.perf_counter()
        while chunk := read(fd, RAW_CHUNK):
            total += len(chunk)
        proc.wait()
        elapsed = time.perf_counter() - t0
    _check("bytes", total, size, "raw")
    return elapsed


def raw_bytes_big_pipe(size: int) -> float:
    """As raw_bytes, with the 1 MiB pipe aproc asks for (F_SETPIPE_SZ) instead of 64 KiB."""
    return raw_bytes(size, 1 << 20)


# ---------------------------------------------------------------------------------- lines


async def aproc_lines(size: int) -> float:
    proc = await aproc.spawn(lines_argv(size), stdout=aproc.PIPE)
    assert proc.stdout is not None
    count = 0
    t0 = time.perf_counter()
    async with proc:
        async for _line in proc.stdout.lines():
            count += 1
    elapsed = time.perf_counter() - t0
    _check("lines", count, expected_lines(size), "aproc")
    return elapsed


async def asyncio_lines(size: int) -> float:
    proc = await asyncio.create_subprocess_exec(*lines_argv(size), stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    readline = proc.stdout.readline
    count = 0
    t0 = time.perf_counter()
    while await readline():
        count += 1
    await proc.wait()
    elapsed = time.perf_counter() - t0
    _check("lines", count, expected_lines(size), "asyncio")
    return elapsed


async def anyio_lines(size: int) -> float:
    proc = await anyio.open_process(lines_argv(size), stdin=None, stderr=None)
    assert proc.stdout is not None
    buffered = BufferedByteReceiveStream(proc.stdout)
    receive_until = buffered.receive_until
    count = 0
    t0 = time.perf_counter()
    async with proc:
        try:
            while True:
                await receive_until(b"\n", 65536)
                count += 1
        except anyio.IncompleteRead:
            if buffered.buffer:
                count += 1  # the last line had no newline
    elapsed = time.perf_counter() - t0
    _check("lines", count, expected_lines(size), "anyio")
    return elapsed


def c_lines(size: int) -> float:
    with subprocess.Popen(lines_argv(size), stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        count = 0
        t0 = time.perf_counter()
        for _line in proc.stdout:
            count += 1
        proc.wait()
        elapsed = time.perf_counter() - t0
    _check("lines", count, expected_lines(size), "C readline")
    return elapsed


APROC_BYTES = "aproc receive(1 MiB)"
APROC_LINES = "aproc lines()"
ANYIO_LINES = "anyio BufferedByteReceiveStream.receive_until"


def byte_impls() -> list[Impl]:
    a_asyncio, a_uvloop, a_trio = (aproc_key(loop, name=APROC_BYTES) for loop in LOOPS)
    return [
        Impl(APROC_BYTES, "asyncio", aproc_bytes, is_aproc=True),
        Impl(APROC_BYTES, "uvloop", aproc_bytes, is_aproc=True),
        Impl(APROC_BYTES, "trio", aproc_bytes, is_aproc=True),
        Impl("asyncio StreamReader.read(1 MiB)", "asyncio", asyncio_bytes, ref=a_asyncio),
        Impl("asyncio StreamReader.read(1 MiB)", "uvloop", asyncio_bytes, ref=a_uvloop),
        Impl("anyio Process.stdout.receive(1 MiB)", "asyncio", anyio_bytes, ref=a_asyncio),
        Impl("anyio Process.stdout.receive(1 MiB)", "trio", anyio_bytes, ref=a_trio),
        Impl("trio receive_some(1 MiB)", "trio", trio_bytes, ref=a_trio),
        Impl("raw blocking os.read(64 KiB) on Popen", "sync", raw_bytes, ref=a_asyncio),
        Impl("raw blocking os.read(64 KiB), 1 MiB pipe", "sync", raw_bytes_big_pipe, ref=a_asyncio),
    ]


def line_impls() -> list[Impl]:
    a_asyncio, a_uvloop, a_trio = (aproc_key(loop, name=APROC_LINES) for loop in LOOPS)
    return [
        Impl(APROC_LINES, "asyncio", aproc_lines, is_aproc=True),
        Impl(APROC_LINES, "uvloop", aproc_lines, is_aproc=True),
        Impl(APROC_LINES, "trio", aproc_lines, is_aproc=True),
        Impl("asyncio StreamReader.readline()", "asyncio", asyncio_lines, ref=a_asyncio),
        Impl("asyncio StreamReader.readline()", "uvloop", asyncio_lines, ref=a_uvloop),
        Impl(
            "anyio BufferedByteReceiveStream.receive_until", "asyncio", anyio_lines, ref=a_asyncio
        ),
        Impl("anyio BufferedByteReceiveStream.receive_until", "trio", anyio_lines, ref=a_trio),
        Impl("C-buffered readline (for line in Popen.stdout)", "sync", c_lines, ref=a_asyncio),
    ]


def _section(
    name: str,
    title: str,
    impls: list[Impl],
    size: int,
    warm_size: int,
    repeats: int,
    metric: Metric,
    rate: Callable[[float], float],
    note: str,
) -> Section:
    t0 = time.monotonic()
    log(f"{name}: warm-up at {warm_size >> 20} MiB, then {repeats} x {size >> 20} MiB each")
    errors: dict[str, str] = {}
    interleave(impls, 1, lambda impl: impl.run(warm_size), "", errors)
    samples = interleave(impls, repeats, lambda impl: rate(impl.run(size)), name, errors)
    section = Section(name, title, [metric], metric.key)
    for impl in impls:
        values = samples[impl.key]
        row = row_for(impl, **{metric.key: median(values) if values else None})
        row.samples[metric.key] = values
        row.values["spread"] = spread(values)
        row.note = errors.get(impl.key, "")
        section.rows.append(row)
    section.notes.append(note)
    section.seconds = time.monotonic() - t0
    return section


def run_bytes(cfg: Config) -> list[Section]:
    size = cfg.pick(16 << 20, 1 << 30)
    repeats = cfg.pick(2, 5)
    mib = size / (1 << 20)
    return [
        _section(
            "bytes",
            f"stdout bytes: head -c {size >> 20}M /dev/zero read to EOF",
            byte_impls(),
            size,
            min(size, 16 << 20),
            repeats,
            Metric("mib_s", "throughput", "MiB/s", True, "{:,.0f}"),
            lambda seconds: mib / seconds,
            f"median of {repeats} reads of {size >> 20} MiB each (fresh loop and child per run)",
        )
    ]


def run_lines(cfg: Config) -> list[Section]:
    size = cfg.pick(16 << 20, 256 << 20)
    repeats = cfg.pick(2, 5)
    n_lines = expected_lines(size)
    return [
        _section(
            "lines",
            f"stdout lines: yes <40 digits> | head -c {size >> 20}M (41-byte lines)",
            line_impls(),
            size,
            min(size, 16 << 20),
            repeats,
            Metric("mlines_s", "lines", "M lines/s", True, "{:.2f}"),
            lambda seconds: n_lines / seconds / 1e6,
            f"median of {repeats} runs of {n_lines:,} lines ({size >> 20} MiB) each",
        )
    ]
