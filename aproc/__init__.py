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
    SupervisorGaveUp,
)
from .pipeline import Pipeline, PipelineResult, run_pipeline, spawn_pipeline
from .primitives import ExitStatus
from .process import DEVNULL, PIPE, STDOUT, Process, run, spawn, spawn_shell
from .readiness import Ready
from .streams import DEFAULT_LINE_LIMIT, FdReceiveStream, FdSendStream
from .supervisor import Backoff, ChildSpec, ChildStatus, Supervisor

__version__ = "0.1.0.dev0"

__all__ = [
    "DEFAULT_LINE_LIMIT",
    "DEVNULL",
    "PIPE",
    "STDOUT",
    "Backoff",
    "ChildSpec",
    "ChildStatus",
    "ExitStatus",
    "FdReceiveStream",
    "FdSendStream",
    "LineTooLongError",
    "Pipeline",
    "PipelineResult",
    "Process",
    "ProcessTimeoutError",
    "Ready",
    "ReaperUnavailableError",
    "StopTimeoutError",
    "Supervisor",
    "SupervisorGaveUp",
    "run",
    "run_pipeline",
    "spawn",
    "spawn_pipeline",
    "spawn_shell",
]
