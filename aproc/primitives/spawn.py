"""Choosing a launcher: posix_spawn whenever it can carry the request out, fork/execve otherwise."""

from __future__ import annotations

from . import spawn_posix as _posix_spawn
from .request import SpawnRequest
from .spawn_fork import fork_exec

__all__ = ["spawn", "uses_posix_spawn"]


def uses_posix_spawn(request: SpawnRequest) -> bool:
    """True when :func:`spawn` will start ``request`` with posix_spawn."""
    return _posix_spawn.AVAILABLE and not request.needs_fork


def spawn(request: SpawnRequest) -> int:
    """Start ``request`` and return the child's pid once it has exec'd.

    Blocking: with the fork launcher this waits for the exec report. Raises the exec failure as
    the exact OSError; the failed child is reaped and no fd made for it stays open.
    """
    if uses_posix_spawn(request):
        return _posix_spawn.posix_spawn(request)
    return fork_exec(request)
