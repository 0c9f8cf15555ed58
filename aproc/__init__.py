"""aproc: the process layer for async Python.

Spawn, stream and supervise OS processes from any anyio application (asyncio, uvloop, trio)
with no thread per child, no zombies, no leaked fds and kill-on-cancel::

    import aproc

    result = await aproc.run(["git", "rev-parse", "HEAD"])
    async with await aproc.spawn(["tail", "-f", "log"], stdout=aproc.PIPE) as proc:
        async for line in proc.stdout.lines():
            ...
"""

from .errors import (
    LineTooLongError,
    ProcessTimeoutError,
    ReaperUnavailableError,
    StopTimeoutError,
)
from .pipeline import Pipeline, PipelineResult, run_pipeline, spawn_pipeline
from .primitives import ExitStatus
from .process import DEVNULL, PIPE, STDOUT, Process, run, spawn, spawn_shell
from .streams import DEFAULT_LINE_LIMIT, FdReceiveStream, FdSendStream

__version__ = "0.1.0.dev0"

__all__ = [
    "DEFAULT_LINE_LIMIT",
    "DEVNULL",
    "PIPE",
    "STDOUT",
    "ExitStatus",
    "FdReceiveStream",
    "FdSendStream",
    "LineTooLongError",
    "Pipeline",
    "PipelineResult",
    "Process",
    "ProcessTimeoutError",
    "ReaperUnavailableError",
    "StopTimeoutError",
    "run",
    "run_pipeline",
    "spawn",
    "spawn_pipeline",
    "spawn_shell",
]
