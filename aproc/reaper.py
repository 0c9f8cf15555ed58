"""Reaping children from an event loop, without a thread per child.

One reaper serves each event loop (an anyio RunVar), behind the small :class:`Reaper` protocol.
A reaper hands out a :class:`ChildWatch` per child; the watch reaps its pid with
``waitpid(pid, WNOHANG)`` only, never ``waitpid(-1)``, so children of other libraries in the same
process are left alone (PITFALLS.md 9). Two mechanisms, run by the same test suite:

* :class:`PidfdReaper` (Linux >= 5.3): a pidfd becomes readable when its process exits, so a
  waiter waits on it like on any fd. Signals go through ``pidfd_send_signal``, which can never
  reach a recycled pid (PITFALLS.md 12), and no signal handler is needed, so it works on a loop
  outside the main thread.
* :class:`SigchldReaper` (portable POSIX): the kernel sends SIGCHLD when a child exits. Several
  exits can merge into one signal and a child can exit before anyone listens, so on every
  signal, and whenever a listener starts, every watched pid is polled until none is ready
  (PITFALLS.md 10). One task at a time listens for the loop (a second handler would replace the
  first); when it leaves, it hands the role to another waiter.

``APROC_REAPER=pidfd|sigchld`` forces one; the default is pidfd where the kernel has it.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any, Protocol

import anyio
import anyio.lowlevel

from .errors import ReaperUnavailableError
from .primitives import ExitStatus, have_pidfd, pidfd_open, pidfd_send_signal, send_signal
from .primitives import try_reap as _try_reap

__all__ = [
    "ChildWatch",
    "PidfdReaper",
    "Reaper",
    "SigchldReaper",
    "check_sigchld_disposition",
    "current_reaper",
]

REAPER_ENV = "APROC_REAPER"

_SIGCHLD_IGNORED_HINT = (
    "SIGCHLD is ignored (SIG_IGN) in this process, so the kernel discards the exit status of "
    "every child; restore the default with signal.signal(signal.SIGCHLD, signal.SIG_DFL)"
)


def check_sigchld_disposition() -> None:
    """Raise ReaperUnavailableError when SIGCHLD is ignored.

    With SIGCHLD at SIG_IGN (it is inherited across exec) the kernel reaps children itself and
    ``waitpid`` fails with ECHILD, so no exit status could ever be reported and a signal-driven
    wait would hang (PITFALLS.md 11; CPython #76296). Refusing before the spawn loses no child.
    """
    if signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN:
        raise ReaperUnavailableError(_SIGCHLD_IGNORED_HINT)


class ChildWatch:
    """One child as seen by its reaper: its exit status once reaped, and a way to signal it.

    ``status`` is published in the same step as the reap, and from then on signals are no-ops,
    so a recycled pid is never signalled (PITFALLS.md 12).
    """

    __slots__ = ("_next_turn", "_waiting", "pid", "status")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.status: ExitStatus | None = None
        # One task at a time waits on the OS for this child (an fd admits one waiter); the
        # others, rare, park on _next_turn. Cheaper than a lock for the one-waiter case.
        self._waiting = False
        self._next_turn: anyio.Event | None = None

    def poll(self) -> ExitStatus | None:
        """Reap the child if it has exited; return its status, or None while it runs."""
        if self.status is None:
            try:
                status = _try_reap(self.pid)
            except ChildProcessError as exc:
                # The status is gone for good: nothing is left to wait for, so release what
                # the watch holds (the pidfd) rather than leak it with the failed wait.
                self.close()
                if signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN:
                    raise ReaperUnavailableError(_SIGCHLD_IGNORED_HINT) from exc
                raise ChildProcessError(
                    errno.ECHILD,
                    f"pid {self.pid} was reaped by someone else (a waitpid(-1) elsewhere in "
                    "this process?)",
                ) from exc
            if status is not None:
                self._set_status(status)
        return self.status

    def _set_status(self, status: ExitStatus) -> None:
        self.status = status

    async def wait(self) -> ExitStatus:
        """Wait until the child exits and return how. Any number of tasks may wait at once; a
        cancelled waiter gives up its turn without consuming the exit."""
        if self.status is not None:
            await anyio.lowlevel.checkpoint()
            return self.status
        while (status := self.poll()) is None:
            if self._waiting:
                if self._next_turn is None:
                    self._next_turn = anyio.Event()
                await self._next_turn.wait()
                continue
            self._waiting = True
            try:
                await self._wait_for_exit()
            finally:
                # Done, or cancelled: either way let the others look again (one of them takes
                # over the waiting if the child still runs).
                self._waiting = False
                turn, self._next_turn = self._next_turn, None
                if turn is not None:
                    turn.set()
        return status

    async def _wait_for_exit(self) -> None:
        raise NotImplementedError

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the child; a no-op once it has been reaped."""
        if self.status is None:
            try:
                send_signal(self.pid, sig)
            except ProcessLookupError:
                pass  # exited, not yet reaped: nothing left to signal

    def close(self) -> None:
        """Release what the watch holds (the pidfd). The child must have been reaped."""


class Reaper(Protocol):
    """What the core needs from a reaping mechanism."""

    name: str

    def watch(self, pid: int) -> ChildWatch:
        """Start watching ``pid``, a child that has not been reaped. Call before any await."""
        ...


class _PidfdWatch(ChildWatch):
    __slots__ = ("_pidfd",)

    def __init__(self, pid: int) -> None:
        super().__init__(pid)
        # pidfd_open on a child that has already exited but is unreaped still works: the
        # zombie holds the pid, so there is no window in which it could be recycled.
        self._pidfd = pidfd_open(pid)

    def _set_status(self, status: ExitStatus) -> None:
        self.status = status
        self._close_pidfd()

    def _close_pidfd(self) -> None:
        fd, self._pidfd = self._pidfd, -1
        if fd >= 0:
            if self._waiting:
                # The task waiting on the pidfd must wake with ClosedResourceError rather than
                # wait on a number the kernel may hand out again (PITFALLS.md 20).
                try:
                    anyio.notify_closing(fd)
                except Exception:
                    pass  # no event loop in this thread (close() from a finaliser)
            os.close(fd)

    async def _wait_for_exit(self) -> None:
        try:
            await anyio.wait_readable(self._pidfd)
        except anyio.ClosedResourceError:
            pass  # reaped by poll() from another task meanwhile

    def send_signal(self, sig: int) -> None:
        if self.status is None:
            try:
                pidfd_send_signal(self._pidfd, sig)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        self._close_pidfd()


class PidfdReaper:
    """Reaps by waiting for each child's pidfd to become readable (Linux >= 5.3)."""

    name = "pidfd"

    def watch(self, pid: int) -> ChildWatch:
        return _PidfdWatch(pid)


class _SigchldWatch(ChildWatch):
    __slots__ = ("_reaper", "_wakeup")

    def __init__(self, pid: int, reaper: SigchldReaper) -> None:
        super().__init__(pid)
        self._reaper = reaper
        self._wakeup: anyio.Event | None = None

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    async def _wait_for_exit(self) -> None:
        await self._reaper._wait_turn(self)


_RACE_REPORT = f"Signal {int(signal.SIGCHLD)} ignored due to race condition"


def _signal_check_point() -> None:
    """Calling a Python function is a point where CPython runs pending signal handlers."""


def _sigchld_noop(signum: int, frame: Any) -> None:
    """SIGCHLD's handler between two listeners of the SIGCHLD reaper (see _close_receiver)."""


class _DropSigchldRaceReport:
    """An unraisable hook that drops CPython's report of a benign SIGCHLD race and passes
    everything else on."""

    def __init__(self, previous: Any) -> None:
        self.previous = previous

    def __call__(self, unraisable: Any) -> None:
        exc = unraisable.exc_value
        if isinstance(exc, OSError) and str(exc) == _RACE_REPORT:
            return
        self.previous(unraisable)


class SigchldReaper:
    """Reaps on SIGCHLD by polling every waited-for pid (portable POSIX; main thread only)."""

    name = "sigchld"

    def __init__(self) -> None:
        self._waiting: dict[int, _SigchldWatch] = {}
        self._listening = False

    def watch(self, pid: int) -> ChildWatch:
        return _SigchldWatch(pid, self)

    @staticmethod
    def _open_receiver() -> tuple[Any, AsyncIterator[signal.Signals]]:
        receiver = anyio.open_signal_receiver(signal.SIGCHLD)
        try:
            return receiver, receiver.__enter__()
        except (RuntimeError, ValueError, NotImplementedError) as exc:
            # asyncio and trio allow signal handlers only in the main thread, and uvloop
            # reserves SIGCHLD for libuv's own child watcher.
            raise ReaperUnavailableError(
                f"the SIGCHLD reaper cannot listen for SIGCHLD here ({exc}); "
                f"use the pidfd reaper ({REAPER_ENV}=pidfd)"
            ) from exc

    @classmethod
    def probe(cls) -> None:
        """Raise ReaperUnavailableError now if this loop cannot deliver SIGCHLD to us, so the
        refusal comes before a spawn rather than from a wait with a child already running."""
        receiver, _ = cls._open_receiver()
        cls._close_receiver(receiver)

    @staticmethod
    def _close_receiver(receiver: Any) -> None:
        """Leave a SIGCHLD receiver, which restores the disposition it replaced.

        A SIGCHLD that CPython notes just as ``signal.signal()`` swaps its Python handler for
        SIG_DFL finds no Python handler when it is run, and CPython reports it as an unraisable
        "OSError: Signal 17 ignored due to race condition" (bpo-43406): noise on stderr, a
        failure under pytest. Nothing is lost (a listener polls every pid when it starts), so
        the report is avoided: SIGCHLD is held back in this thread while the handler changes;
        one that another thread took meanwhile is run before this returns, its report dropped;
        and from then on SIGCHLD keeps a no-op Python handler instead of SIG_DFL (both leave
        exit statuses to waitpid), so a signal noted late still finds a handler.
        """
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGCHLD,))
        hook = sys.unraisablehook
        sys.unraisablehook = _DropSigchldRaceReport(hook)
        try:
            receiver.__exit__(None, None, None)
            if signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL:
                signal.signal(signal.SIGCHLD, _sigchld_noop)
                signal.siginterrupt(signal.SIGCHLD, False)
            _signal_check_point()
        finally:
            sys.unraisablehook = hook
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def _poll_waiting(self) -> None:
        for watch in list(self._waiting.values()):
            if watch.poll() is not None:
                watch._wake()

    async def _wait_turn(self, watch: _SigchldWatch) -> None:
        """Return once ``watch``'s child may have exited; the caller polls again."""
        self._waiting[watch.pid] = watch
        try:
            if self._listening:
                watch._wakeup = anyio.Event()
                await watch._wakeup.wait()
                return
            self._listening = True
            try:
                await self._listen(watch)
            finally:
                self._listening = False
        finally:
            self._waiting.pop(watch.pid, None)
            watch._wakeup = None
            if not self._listening:
                # Nobody listens now: hand the role to someone still waiting, or their
                # children's exits would go unnoticed. Not only the listener does this: a
                # waiter woken to take the role over may find its own child already reaped
                # and never listen, so it passes the role on before it polls.
                for other in self._waiting.values():
                    if other.status is None:
                        other._wake()
                        break

    async def _listen(self, watch: _SigchldWatch) -> None:
        receiver, signals = self._open_receiver()
        try:
            # A child may have exited before the handler was in place: poll once first.
            self._poll_waiting()
            while watch.status is None:
                await signals.__anext__()
                self._poll_waiting()
        finally:
            self._close_receiver(receiver)


_reaper_var: anyio.lowlevel.RunVar[Reaper] = anyio.lowlevel.RunVar("aproc_reaper")


def _choose_reaper() -> Reaper:
    wanted = os.environ.get(REAPER_ENV, "").strip().lower()
    if wanted == "sigchld":
        SigchldReaper.probe()
        return SigchldReaper()
    if wanted == "pidfd":
        if not have_pidfd():
            raise ReaperUnavailableError(
                f"{REAPER_ENV}=pidfd but this kernel has no usable pidfd_open/pidfd_send_signal"
            )
        return PidfdReaper()
    if wanted not in ("", "auto"):
        raise ReaperUnavailableError(
            f"{REAPER_ENV}={wanted!r}: expected 'pidfd', 'sigchld' or 'auto'"
        )
    if have_pidfd():
        return PidfdReaper()
    SigchldReaper.probe()
    return SigchldReaper()


def current_reaper() -> Reaper:
    """The reaper of the running event loop, created on first use."""
    try:
        return _reaper_var.get()
    except LookupError:
        reaper = _choose_reaper()
        _reaper_var.set(reaper)
        return reaper
