"""Pipelines: ``argv1 | argv2 | ...`` with the stages wired by OS pipes.

Stage i's stdout is a pipe whose read end is stage i+1's stdin, made close-on-exec and handed
to exactly the two children that need it, so no byte passes through Python and no stage holds a
pipe open that would keep another from seeing EOF (PITFALLS.md 5). Every argv is validated
before the first stage starts; if a later stage fails to start, the earlier ones are stopped
and reaped before the error propagates.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio

from .errors import ProcessTimeoutError
from .primitives import SpawnRequest, close_fds, pipe
from .primitives.request import StrOrBytesPath
from .process import (
    DEFAULT_DRAIN_TIMEOUT,
    PIPE,
    Process,
    StdioSpec,
    communicate,
    leave_block,
    spawn,
)
from .streams import FdReceiveStream, FdSendStream

__all__ = ["Pipeline", "PipelineResult", "run_pipeline", "spawn_pipeline"]


@dataclass(frozen=True, slots=True)
class PipelineResult:
    """What :func:`run_pipeline` returns.

    ``returncodes`` has one entry per stage; ``returncode`` is the last non-zero one (0 when
    all succeeded), like ``set -o pipefail``.
    """

    args: list[list[str]]
    returncodes: list[int]
    stdout: bytes | None
    stderr: bytes | None

    @property
    def returncode(self) -> int:
        for code in reversed(self.returncodes):
            if code != 0:
                return code
        return 0

    def check_returncode(self) -> None:
        """Raise ``subprocess.CalledProcessError`` if ``returncode`` is non-zero."""
        if self.returncode != 0:
            raise subprocess.CalledProcessError(
                self.returncode, self.command, self.stdout, self.stderr
            )

    @property
    def command(self) -> str:
        """The pipeline as a shell would show it: ``"a x | b y"``."""
        return " | ".join(shlex.join(argv) for argv in self.args)


class Pipeline:
    """Running stages of a pipeline. ``stdin`` feeds the first, ``stdout`` reads the last.

    ``async with pipeline:`` waits for every stage on a normal exit and stops every stage when
    the block is left by an exception or a cancellation.
    """

    def __init__(self, processes: list[Process], stderr: FdReceiveStream | None = None) -> None:
        self.processes = processes
        self._stderr = stderr

    @property
    def stdin(self) -> FdSendStream | None:
        return self.processes[0].stdin

    @property
    def stdout(self) -> FdReceiveStream | None:
        return self.processes[-1].stdout

    @property
    def stderr(self) -> FdReceiveStream | None:
        """The stderr pipe all stages share, when ``stderr=PIPE`` was asked for."""
        return self._stderr

    @property
    def returncodes(self) -> list[int | None]:
        return [p.returncode for p in self.processes]

    async def wait(self) -> list[int]:
        """Wait for every stage; return their returncodes in order."""
        return [await p.wait() for p in self.processes]

    async def stop(self, timeout: float | None = None) -> list[int]:
        """Stop every stage (see :meth:`Process.stop`), all at once; return the returncodes."""
        async with anyio.create_task_group() as tg:
            for proc in self.processes:
                tg.start_soon(proc.stop, timeout)
        return [p.returncode for p in self.processes]  # type: ignore[misc]

    def _close_streams(self) -> None:
        for proc in self.processes:
            proc._close_streams()
        if self._stderr is not None:
            self._stderr.close()

    async def __aenter__(self) -> Pipeline:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await leave_block(self, self.stdin, exc_type is not None)


async def spawn_pipeline(
    argvs: Sequence[Sequence[StrOrBytesPath]],
    *,
    stdin: StdioSpec = None,
    stdout: StdioSpec = None,
    stderr: StdioSpec = None,
    **kwargs: Any,
) -> Pipeline:
    """Start ``argvs[0] | argvs[1] | ...`` and return the running :class:`Pipeline`.

    ``stdin`` applies to the first stage, ``stdout`` to the last; ``stderr`` to every stage
    (with PIPE, one pipe shared by all, exposed as ``pipeline.stderr``). Other keyword
    arguments of :func:`aproc.spawn` apply to every stage. Raises ValueError for an empty
    pipeline and the first stage's spawn error, with every started stage stopped and reaped.
    """
    if isinstance(argvs, (str, bytes)) or not argvs:
        raise ValueError("a pipeline needs a non-empty list of argv sequences")
    for argv in argvs:  # validate every stage before starting any
        SpawnRequest.create(argv, env=kwargs.get("env"), cwd=kwargs.get("cwd"))
    links: list[tuple[int, int]] = []
    processes: list[Process] = []
    stderr_read: int | None = None
    stderr_spec: StdioSpec = stderr
    try:
        for _ in range(len(argvs) - 1):
            links.append(pipe())
        if stderr == PIPE:
            stderr_read, stderr_write = pipe()
            stderr_spec = stderr_write
            links.append((stderr_read, stderr_write))
        for i, argv in enumerate(argvs):
            stage_in = stdin if i == 0 else links[i - 1][0]
            stage_out = stdout if i == len(argvs) - 1 else links[i][1]
            processes.append(
                await spawn(argv, stdin=stage_in, stdout=stage_out, stderr=stderr_spec, **kwargs)
            )
    except BaseException:
        with anyio.CancelScope(shield=True):
            for proc in processes:
                proc._close_streams()
                await proc.stop(timeout=0)
        if stderr_read is not None:
            close_fds(stderr_read)
        raise
    finally:
        close_fds(*(fd for link in links for fd in link if fd != stderr_read))
    return Pipeline(processes, None if stderr_read is None else FdReceiveStream(stderr_read))


async def run_pipeline(
    argvs: Sequence[Sequence[StrOrBytesPath]],
    *,
    input: bytes | None = None,
    stdin: StdioSpec = None,
    stdout: StdioSpec = PIPE,
    stderr: StdioSpec = PIPE,
    check: bool = True,
    timeout: float | None = None,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    **kwargs: Any,
) -> PipelineResult:
    """Run ``argvs[0] | argvs[1] | ...`` to completion, like :func:`aproc.run` for a pipeline.

    Returns a :class:`PipelineResult` with the last stage's stdout, every stage's stderr
    (one shared pipe), ``returncodes`` per stage and the pipefail ``returncode``. With
    ``check=True`` a non-zero ``returncode`` raises ``subprocess.CalledProcessError``;
    ``timeout`` stops every stage and raises :class:`aproc.ProcessTimeoutError`.
    """
    if input is not None:
        if stdin is not None:
            raise ValueError("pass either input or stdin, not both")
        stdin = PIPE
    pipeline = await spawn_pipeline(argvs, stdin=stdin, stdout=stdout, stderr=stderr, **kwargs)
    out, err, timed_out = await communicate(
        pipeline, pipeline.stdin, pipeline.stdout, pipeline.stderr, input, timeout, drain_timeout
    )
    args = [p.args for p in pipeline.processes]
    result = PipelineResult(
        args=args,
        returncodes=[code for code in pipeline.returncodes if code is not None],
        stdout=b"".join(out) if pipeline.stdout is not None else None,
        stderr=b"".join(err) if pipeline.stderr is not None else None,
    )
    if timed_out:
        assert timeout is not None
        raise ProcessTimeoutError(args, timeout, result.stdout, result.stderr)
    if check:
        result.check_returncode()
    return result
