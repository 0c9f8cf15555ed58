"""The process tree: who is whose child, who shares a session, and child subreapers.

A service that daemonises leaves processes behind that are no longer its children: they are
re-parented to the nearest *child subreaper* (PR_SET_CHILD_SUBREAPER, Linux >= 3.4), or to
PID 1. They usually keep their session, though, so a supervisor that starts each service in a
session of its own can still find them through ``/proc`` and stop them with their service
(PITFALLS.md 21; tini #236).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "ProcInfo",
    "become_subreaper",
    "children_of",
    "kill_all",
    "list_processes",
    "session_members",
]

_PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True, slots=True)
class ProcInfo:
    """One line of the process table, from ``/proc/PID/stat``."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str  # "R", "S", "D", "Z", "T", ...


def list_processes() -> list[ProcInfo]:
    """Every process visible in ``/proc`` (a snapshot: processes come and go meanwhile)."""
    found: list[ProcInfo] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue  # gone meanwhile
        # The command name may hold spaces and parentheses: the fields start after the last ')'.
        fields = data[data.rindex(b")") + 2 :].split()
        found.append(
            ProcInfo(
                pid=int(entry),
                ppid=int(fields[1]),
                pgid=int(fields[2]),
                sid=int(fields[3]),
                state=fields[0].decode(),
            )
        )
    return found


def children_of(pid: int) -> list[ProcInfo]:
    """The processes whose parent is ``pid``, zombies included."""
    return [p for p in list_processes() if p.ppid == pid]


def session_members(sid: int) -> list[ProcInfo]:
    """The processes of session ``sid``, zombies included."""
    return [p for p in list_processes() if p.sid == sid]


def kill_all(pids: Iterable[int], sig: int) -> None:
    """Send ``sig`` to each pid, skipping those already gone. Only for processes that cannot
    be recycled under us (our unreaped children or zombies, members of a live session)."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process instead of PID 1. True on success.

    The calling process must then reap them, or they stay zombies.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False
