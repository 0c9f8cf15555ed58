"""aproc's synchronous OS layer: fds, spawning and waiting.

Nothing here knows about async or logging; every function is a thin, typed wrapper around one
syscall idea and raises OSError with errno and filename. The async core is built on it, and it is
usable on its own::

    from aproc.primitives import SpawnRequest, spawn, wait_blocking

    pid = spawn(SpawnRequest.create(["echo", "hi"]))
    assert wait_blocking(pid).returncode == 0
"""

from .fds import (
    close_fds,
    close_range,
    dup2,
    lift_stdio_sources,
    move_above_stdio,
    pipe,
    set_blocking,
    set_inheritable,
    set_nonblocking,
    set_pipe_size,
)
from .request import SpawnRequest, find_program
from .spawn import spawn, uses_posix_spawn
from .spawn_fork import PendingExec, fork_exec, start_fork_exec
from .spawn_posix import AVAILABLE as POSIX_SPAWN_AVAILABLE
from .spawn_posix import posix_spawn
from .tree import ProcInfo, become_subreaper, children_of, list_processes, session_members
from .wait import (
    ExitStatus,
    have_pidfd,
    pidfd_open,
    pidfd_send_signal,
    send_signal,
    try_reap,
    wait_blocking,
)

__all__ = [
    "POSIX_SPAWN_AVAILABLE",
    "ExitStatus",
    "PendingExec",
    "ProcInfo",
    "SpawnRequest",
    "become_subreaper",
    "children_of",
    "close_fds",
    "close_range",
    "dup2",
    "find_program",
    "fork_exec",
    "have_pidfd",
    "lift_stdio_sources",
    "list_processes",
    "move_above_stdio",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "posix_spawn",
    "send_signal",
    "session_members",
    "set_blocking",
    "set_inheritable",
    "set_nonblocking",
    "set_pipe_size",
    "spawn",
    "start_fork_exec",
    "try_reap",
    "uses_posix_spawn",
    "wait_blocking",
]
