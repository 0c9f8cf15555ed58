"""PID 1 for containers (``aproc init -- CMD``), like tini and dumb-init.

The first process of a container (or any process that makes itself a *child subreaper*) inherits
every orphan below it, and must reap them or they stay zombies forever (tini #236). Signals sent
to it are not acted on by default (PID 1 has no default handlers), so it must forward them to
the real workload. And when the workload exits, its leftover descendants must be stopped and
reaped before the container's init exits (dumb-init #212).

This mode owns every child of the process, so here, and only here, ``waitpid(-1)`` is right
(PITFALLS.md 9, 21). It is synchronous on purpose: a signal loop over ``sigwaitinfo`` needs no
event loop, and nothing else runs in this process.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence

from .primitives import ExitStatus, SpawnRequest, spawn
from .primitives.tree import become_subreaper, children_of, kill_all

__all__ = ["FORWARDED_SIGNALS", "exit_code", "run_init"]

FORWARDED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
    signal.SIGCONT,
)


def exit_code(status: ExitStatus) -> int:
    """The shell's convention: the exit code, or 128 + N when signal N killed the process."""
    return status.returncode if status.returncode >= 0 else 128 - status.returncode


def _reap_all(main_pid: int) -> tuple[ExitStatus | None, bool]:
    """Reap every exited child. Returns the main child's status if it was among them, and
    whether any child is left."""
    main: ExitStatus | None = None
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return main, False
        if pid == 0:
            return main, True
        if pid == main_pid:
            main = ExitStatus.from_wait_status(status)


def _direct_children() -> list[int]:
    return [p.pid for p in children_of(os.getpid()) if p.state != "Z"]


def run_init(argv: Sequence[str], *, grace: float = 5.0) -> int:
    """Run ``argv`` as the workload of an init process; return the exit code to use.

    The workload leads its own process group, and SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1,
    SIGUSR2, SIGWINCH and SIGCONT are forwarded to that group. Every child is reaped as it
    exits. When the workload exits, the remaining children get SIGTERM, ``grace`` seconds,
    then SIGKILL, and are reaped. Returns the workload's exit code (128 + N if signal N killed
    it). Raises the spawn error (FileNotFoundError etc.) if the workload cannot start.
    """
    if os.getpid() != 1:
        become_subreaper()
    # An inherited SIG_IGN for SIGCHLD would make the kernel reap behind our back.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    waited = {*FORWARDED_SIGNALS, signal.SIGCHLD}
    saved = signal.pthread_sigmask(signal.SIG_BLOCK, {*waited, signal.SIGTTOU, signal.SIGTTIN})
    try:
        pid = spawn(SpawnRequest.create(list(argv), process_group=0))
        try:
            # Let the workload own the terminal, as a shell does for its foreground job.
            os.tcsetpgrp(0, pid)
        except OSError:
            pass
        main: ExitStatus | None = None
        while main is None:
            info = signal.sigwaitinfo(waited)
            if info.si_signo == signal.SIGCHLD:
                main, _ = _reap_all(pid)
            else:
                try:
                    os.killpg(pid, info.si_signo)
                except ProcessLookupError:
                    pass
        _stop_leftovers(pid, grace)
        return exit_code(main)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, saved)


def _stop_leftovers(main_pid: int, grace: float) -> None:
    """Stop and reap whatever the workload left behind, bounded by ``grace`` (+1 s for the
    SIGKILLed)."""
    _, left = _reap_all(main_pid)
    if not left:
        return
    try:
        os.killpg(main_pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    kill_all(_direct_children(), signal.SIGTERM)
    for sig, budget in ((None, grace), (signal.SIGKILL, 1.0)):
        if sig is not None:
            kill_all(_direct_children(), sig)
        deadline = time.monotonic() + budget
        while left:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            signal.sigtimedwait({signal.SIGCHLD}, remaining)
            _, left = _reap_all(main_pid)
        if not left:
            return
