"""OTP-style supervision of OS processes.

A :class:`Supervisor` starts its children in order (each dependency ready before its
dependents), restarts them by their restart type and the supervisor's strategy, with capped
exponential backoff, and gives up, stopping everything, when restarts come faster than the
restart intensity allows (PITFALLS.md 22). Each child runs in its own process group, so a stop
takes its whole tree (PITFALLS.md 21); an operator's stop is not a crash and is never undone by a
restart (PITFALLS.md 23). Nothing here polls: an idle supervisor is parked on its children's
exits and output (PITFALLS.md 25).

Every lifecycle step is a structlog event on the ``"aproc"`` logger: ``child.starting``,
``child.ready``, ``child.exited``, ``child.restarting``, ``child.stopping``, ``child.stopped``,
``supervisor.gave_up`` (and ``child.start_failed``, ``child.output``).
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import random
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Literal

import anyio
import anyio.abc
import structlog

from .errors import LineTooLongError, SupervisorGaveUp
from .primitives.tree import become_subreaper, kill_all, session_members
from .process import PIPE, Process, spawn
from .readiness import NotifySocket, ReadyCheck, ReadyLine, ReadyNotify, ReadyTcp
from .reaper import check_sigchld_disposition, current_reaper
from .streams import FdReceiveStream

__all__ = [
    "Backoff",
    "ChildSpec",
    "ChildState",
    "ChildStatus",
    "OutputCallback",
    "RestartType",
    "Strategy",
    "Supervisor",
    "order_by_dependencies",
]

RestartType = Literal["permanent", "transient", "temporary"]
Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
ChildState = Literal["starting", "running", "backoff", "stopping", "stopped", "exited", "failed"]
OutputCallback = Callable[[str, str, bytes], None]
"""``callback(child_name, stream_name, line)``, called for each line a child writes."""

_TERMINAL: frozenset[str] = frozenset({"stopped", "exited", "failed"})
_OUTPUT_LINE_LIMIT = 1024 * 1024
_DRAIN_AFTER_EXIT = 0.5


def _log() -> Any:
    return structlog.get_logger("aproc")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff between restarts, in seconds.

    The n-th consecutive quick restart waits ``min(maximum, initial * factor ** (n - 1))``,
    spread by +/- ``jitter`` (a fraction) so a fleet does not restart in lockstep. A child that
    ran ``reset_after`` seconds before exiting starts over at ``initial``.
    """

    initial: float = 0.1
    factor: float = 2.0
    maximum: float = 30.0
    jitter: float = 0.1
    reset_after: float = 10.0

    def __post_init__(self) -> None:
        for name in ("initial", "maximum", "reset_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"Backoff.{name} must be >= 0")
        if self.factor < 1:
            raise ValueError("Backoff.factor must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("Backoff.jitter must be between 0 and 1")

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """The delay before restart number ``attempt`` (1-based) of a quick-failing child."""
        exponent = max(attempt - 1, 0)
        # Guard the power against overflow for absurd attempt counts.
        base = self.maximum if exponent > 1000 else self.initial * self.factor**exponent
        base = min(self.maximum, base)
        spread = base * self.jitter * (2 * rng() - 1)
        return max(0.0, min(self.maximum, base + spread))


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """What to run and how to keep it running.

    ``restart``: ``"permanent"`` children are always restarted, ``"transient"`` ones only after
    a non-zero exit or a signal, ``"temporary"`` ones never. ``env`` adds to (and overrides) the
    supervisor's environment; Python children get ``PYTHONUNBUFFERED=1`` unless
    ``python_unbuffered=False`` (a Python child block-buffers a pipe: PITFALLS.md 26).
    ``ready`` gates dependents (``depends_on`` names other specs) and must hold within
    ``start_timeout`` seconds. ``watchdog`` (seconds, with sd_notify) restarts a child that
    stops sending ``WATCHDOG=1``. ``numprocs=N`` runs N copies named ``name.1`` ... ``name.N``;
    with ``base_port`` each gets ``PORT`` = ``base_port`` + its number - 1, as honcho does.
    ``die_with_supervisor`` (Linux) has the kernel SIGKILL the child if the supervisor's
    thread dies without stopping it (the supervisor itself SIGKILLed): no orphans survive it.
    """

    name: str
    argv: Sequence[str]
    restart: RestartType = "permanent"
    cwd: str | None = None
    env: Mapping[str, str] | None = None
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 10.0
    backoff: Backoff = field(default_factory=Backoff)
    ready: ReadyCheck | None = None
    start_timeout: float | None = 60.0
    depends_on: Sequence[str] = ()
    numprocs: int = 1
    watchdog: float | None = None
    capture_output: bool = True
    python_unbuffered: bool = True
    base_port: int | None = None
    die_with_supervisor: bool = True

    def __post_init__(self) -> None:
        if (
            not isinstance(self.name, str)
            or not self.name
            or any(c.isspace() or c == "/" for c in self.name)
        ):
            raise ValueError(f"child name must be a non-empty word without '/', got {self.name!r}")
        if isinstance(self.argv, (str, bytes)):
            raise TypeError(
                f"child {self.name!r}: argv must be a sequence of arguments, not a string"
            )
        if not self.argv:
            raise ValueError(f"child {self.name!r}: argv must not be empty")
        object.__setattr__(self, "argv", tuple(self.argv))
        object.__setattr__(self, "depends_on", tuple(self.depends_on))
        if self.restart not in ("permanent", "transient", "temporary"):
            raise ValueError(
                f"child {self.name!r}: restart must be 'permanent', 'transient' or "
                f"'temporary', not {self.restart!r}"
            )
        if not isinstance(self.numprocs, int) or self.numprocs < 1:
            raise ValueError(f"child {self.name!r}: numprocs must be an int >= 1")
        if self.stop_timeout < 0:
            raise ValueError(f"child {self.name!r}: stop_timeout must be >= 0")
        if self.watchdog is not None and self.watchdog <= 0:
            raise ValueError(f"child {self.name!r}: watchdog must be > 0 seconds")
        if isinstance(self.ready, ReadyLine) and not self.capture_output:
            raise ValueError(f"child {self.name!r}: a line readiness check needs capture_output")
        if self.name in self.depends_on:
            raise ValueError(f"child {self.name!r} depends on itself")

    def should_restart(self, returncode: int | None) -> bool:
        """Whether an exit with ``returncode`` calls for a restart under this restart type
        (None: the child could not be started, which counts as a failure)."""
        if self.restart == "permanent":
            return True
        if self.restart == "transient":
            return returncode != 0
        return False

    def instances(self) -> list[ChildSpec]:
        """The specs this one expands to: itself, or ``name.1`` ... ``name.N``."""
        if self.numprocs == 1 and self.base_port is None:
            return [self]
        return [
            replace(
                self,
                name=self.name if self.numprocs == 1 else f"{self.name}.{i}",
                numprocs=1,
                base_port=None,
                env=self.env
                if self.base_port is None
                else {**(self.env or {}), "PORT": str(self.base_port + i - 1)},
            )
            for i in range(1, self.numprocs + 1)
        ]


@dataclass(frozen=True, slots=True)
class ChildStatus:
    """A snapshot of one child, as :meth:`Supervisor.status` reports it."""

    name: str
    state: ChildState
    pid: int | None
    restarts: int
    returncode: int | None
    since: float
    """Wall-clock time (``time.time()``) of the last state change."""


class _Child:
    """The supervisor's book-keeping for one child instance."""

    def __init__(self, spec: ChildSpec, group: str) -> None:
        self.spec = spec
        self.group = group  # the spec name before numprocs expansion, for depends_on
        self.state: ChildState = "stopped"
        self.since = time.time()
        self.proc: Process | None = None
        self.restarts = 0
        self.attempt = 0  # consecutive quick failures, for the backoff
        self.returncode: int | None = None
        self.ready = anyio.Event()
        self.scope: anyio.CancelScope | None = None
        self.done = anyio.Event()
        self.done.set()  # no runner yet
        self.stopping_on_purpose = False  # its next exit is not a crash
        self.held = False  # an operator stopped it: no strategy restart may start it

    @property
    def name(self) -> str:
        return self.spec.name

    def set_state(self, state: ChildState) -> None:
        self.state = state
        self.since = time.time()

    def snapshot(self) -> ChildStatus:
        pid = self.proc.pid if self.proc is not None and self.proc.returncode is None else None
        return ChildStatus(self.name, self.state, pid, self.restarts, self.returncode, self.since)


class _StartFailed(Exception):
    """A start did not reach readiness: the exec failed, the child exited first, or the start
    timeout passed. Treated like a crash."""


def order_by_dependencies(specs: Sequence[ChildSpec]) -> list[ChildSpec]:
    """Order specs so every spec follows what it depends on, keeping the given order otherwise.

    Raises ValueError for an unknown dependency or a cycle, naming them.
    """
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"duplicate child names: {', '.join(dupes)}")
    # numprocs turns "w" into "w.1" ... "w.N", which may clash with another spec's own name;
    # two children with one name would make every by-name operation ambiguous.
    instances = [i.name for s in specs for i in s.instances()]
    if len(set(instances)) != len(instances):
        dupes = sorted({n for n in instances if instances.count(n) > 1})
        raise ValueError(f"duplicate child names: {', '.join(dupes)}")
    by_name = {s.name: s for s in specs}
    for spec in specs:
        for dep in spec.depends_on:
            if dep not in by_name:
                raise ValueError(f"child {spec.name!r} depends on unknown child {dep!r}")
    ordered: list[ChildSpec] = []
    state: dict[str, int] = {}  # 1 = visiting, 2 = done

    def visit(spec: ChildSpec, path: list[str]) -> None:
        mark = state.get(spec.name)
        if mark == 2:
            return
        if mark == 1:
            cycle = [*path[path.index(spec.name) :], spec.name]
            raise ValueError(f"dependency cycle: {' -> '.join(cycle)}")
        state[spec.name] = 1
        for dep in spec.depends_on:
            visit(by_name[dep], [*path, spec.name])
        state[spec.name] = 2
        ordered.append(spec)

    for spec in specs:
        visit(spec, [])
    return ordered


class Supervisor:
    """Supervise child processes, OTP-style. See DESIGN.md's public contract.

    ``strategy`` decides what a crash restarts: ``"one_for_one"`` the crashed child,
    ``"one_for_all"`` every child, ``"rest_for_one"`` the crashed child and those started after
    it. More than ``max_restarts`` restarts within ``max_seconds`` (all children together) make
    the supervisor give up: it stops every child and raises :class:`aproc.SupervisorGaveUp`
    out of ``async with`` and from :meth:`wait`.

    ``on_output(name, stream, line)`` receives every output line of every child that captures
    output; with ``log_output`` (default) each line is also logged as ``child.output``.

    When a service ends, whatever it left in its session is killed with it. ``subreaper=True``
    (Linux) also makes this process a child subreaper, so orphans of the services re-parent to
    it rather than to PID 1, and are reaped when their service ends. It is a process-wide
    setting, and an orphan that also left its service's session (double fork + setsid) is
    never reaped by the supervisor: use it only when the services' orphans stay in their
    sessions. ``aproc up`` leaves it off.

    Example::

        async with aproc.Supervisor([aproc.ChildSpec("web", ["python", "-m", "http.server"])]):
            ...
    """

    def __init__(
        self,
        children: Iterable[ChildSpec] = (),
        *,
        strategy: Strategy = "one_for_one",
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        on_output: OutputCallback | None = None,
        log_output: bool = True,
        kill_timeout: float = 5.0,
        subreaper: bool = False,
    ) -> None:
        if strategy not in ("one_for_one", "one_for_all", "rest_for_one"):
            raise ValueError(
                f"strategy must be 'one_for_one', 'one_for_all' or 'rest_for_one', not {strategy!r}"
            )
        if max_restarts < 0 or max_seconds <= 0:
            raise ValueError("max_restarts must be >= 0 and max_seconds > 0")
        specs = list(children)
        for spec in specs:
            if not isinstance(spec, ChildSpec):
                raise TypeError(f"children must be ChildSpec objects, got {spec!r}")
        self.strategy: Strategy = strategy
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self._on_output = on_output
        self._log_output = log_output
        self._kill_timeout = kill_timeout
        self._subreaper = subreaper
        self._specs = order_by_dependencies(specs)
        self._children: list[_Child] = []
        self._restart_times: collections.deque[float] = collections.deque()
        self._gave_up: SupervisorGaveUp | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._group_lock: anyio.Lock | None = None
        self._done: anyio.Event | None = None
        self._closing = False
        self._operations = 0

    # ----------------------------------------------------------------- public API

    async def __aenter__(self) -> Supervisor:
        if self._tg is not None:
            raise RuntimeError("a Supervisor can only be entered once")
        # Refuse before anything starts when child exits cannot be observed here (SIGCHLD
        # ignored, a reaper that cannot run in this thread): a plain ReaperUnavailableError,
        # not one wrapped in an ExceptionGroup by the first child's runner.
        check_sigchld_disposition()
        current_reaper()
        if self._subreaper and not become_subreaper():
            _log().warning("supervisor.subreaper_unavailable")
        self._group_lock = anyio.Lock()
        self._done = anyio.Event()
        self._children = [
            _Child(instance, spec.name) for spec in self._specs for instance in spec.instances()
        ]
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        try:
            for child in self._children:
                await self._start(child)
        except BaseException as exc:
            if await self.__aexit__(type(exc), exc, exc.__traceback__):
                return self  # unreachable in practice: a swallowed cancel means we gave up
            raise
        self._check_done()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool | None:
        tg = self._tg
        assert tg is not None
        self._closing = True
        with anyio.CancelScope(shield=True):
            await self._stop_all()
        tg.cancel_scope.cancel()
        cancelled = anyio.get_cancelled_exc_class()
        if exc_type is not None and issubclass(exc_type, cancelled):
            # The body was cancelled: by our own give-up (swallow it, raise SupervisorGaveUp)
            # or from outside (let it propagate).
            try:
                swallowed = await tg.__aexit__(exc_type, exc_val, exc_tb)
            except cancelled:
                if self._gave_up is not None:
                    raise self._gave_up from None
                raise
            if swallowed and self._gave_up is not None:
                raise self._gave_up from None
            return swallowed
        # The body's own exception (or none) passes through unwrapped: the task group only
        # holds our runners, which are all finished or cancelled by now.
        await tg.__aexit__(None, None, None)
        if exc_type is None and self._gave_up is not None:
            raise self._gave_up
        return None

    def status(self) -> list[ChildStatus]:
        """A snapshot of every child, in start order."""
        return [child.snapshot() for child in self._children]

    def kill(self) -> None:
        """SIGKILL every running child's process group now, without waiting: the operator's
        second Ctrl-C. Stops already under way then finish at once."""
        for child in self._children:
            proc = child.proc
            if proc is not None and proc.returncode is None:
                proc.signal_group(signal.SIGKILL)

    def __repr__(self) -> str:
        states = ", ".join(f"{c.name}={c.state}" for c in self._children)
        return f"<aproc.Supervisor {self.strategy} [{states}]>"

    async def wait(self) -> None:
        """Return when no child is left to run (all stopped or exited for good).

        Raises :class:`aproc.SupervisorGaveUp` if the restart intensity was exceeded.
        """
        assert self._done is not None, "enter the supervisor with `async with` first"
        await self._done.wait()
        if self._gave_up is not None:
            raise self._gave_up

    async def start_child(self, name: str) -> None:
        """Start a stopped or exited child; returns once it is ready (or has failed)."""
        child = self._child(name)
        if child.state not in _TERMINAL and not child.held:
            return
        with self._operation():
            child.held = False
            child.attempt = 0
            await self._start(child)

    async def stop_child(self, name: str) -> None:
        """Stop a child and keep it stopped: it is not restarted until started again."""
        child = self._child(name)
        with self._operation():
            child.held = True
            await self._stop(child)
            if child.state == "exited":
                # It exited on its own (possibly just as it was being stopped): from now on it
                # is held by the operator, and its state says so (PITFALLS.md 23).
                child.set_state("stopped")

    async def restart_child(self, name: str) -> None:
        """Stop the child (if running) and start it again; returns once it is ready."""
        child = self._child(name)
        with self._operation():
            await self._stop(child)
            child.held = False
            child.attempt = 0
            await self._start(child)

    async def add_child(self, spec: ChildSpec) -> None:
        """Add ``spec`` (all its numprocs instances) and start it."""
        known = {c.name for c in self._children} | {c.group for c in self._children}
        new = spec.instances()
        for instance in new:
            if instance.name in known:
                raise ValueError(f"a child named {instance.name!r} already exists")
        for dep in spec.depends_on:
            if dep not in known:
                raise ValueError(f"child {spec.name!r} depends on unknown child {dep!r}")
        self._specs.append(spec)
        children = [_Child(instance, spec.name) for instance in new]
        with self._operation():
            self._children.extend(children)
            for child in children:
                await self._start(child)

    async def remove_child(self, name: str) -> None:
        """Stop a child and forget it. ``name`` may also be a numprocs group name."""
        targets = [c for c in self._children if name in (c.name, c.group)]
        if not targets:
            raise KeyError(f"no child named {name!r}")
        with self._operation():
            for child in reversed(targets):
                child.held = True
                await self._stop(child)
                self._children.remove(child)

    # ----------------------------------------------------------------- internals

    def _child(self, name: str) -> _Child:
        for child in self._children:
            if child.name == name:
                return child
        raise KeyError(f"no child named {name!r}")

    @contextlib.contextmanager
    def _operation(self) -> Iterator[None]:
        """Bracket an operator action: while one runs, a child it stops on its way to a start
        (a restart) must not make the supervisor look finished to wait()."""
        self._operations += 1
        try:
            yield
        finally:
            self._operations -= 1
            self._check_done()

    def _check_done(self) -> None:
        if self._operations or self._done is None:
            return
        if all(c.state in _TERMINAL for c in self._children):
            self._done.set()

    async def _start(self, child: _Child) -> None:
        """Launch ``child``'s runner; return once its first start is ready or has failed."""
        assert self._tg is not None
        for dep in child.spec.depends_on:
            for other in self._children:
                if other.group == dep or other.name == dep:
                    await other.ready.wait()
        if self._done is not None and self._done.is_set() and self._gave_up is None:
            self._done = anyio.Event()
        child.stopping_on_purpose = False
        child.done = anyio.Event()
        # Not tg.start(): anyio keeps a task started that way in the *caller's* cancel scope
        # until it reports, so a runner's own scope would be tied to whoever started it.
        started = anyio.Event()
        self._tg.start_soon(self._run, child, started)
        await started.wait()

    async def _stop(self, child: _Child) -> None:
        """Stop ``child`` on purpose and wait until its runner has finished."""
        child.stopping_on_purpose = True
        if child.scope is not None:
            child.scope.cancel()
        await child.done.wait()
        if child.state not in _TERMINAL:
            child.set_state("stopped")

    async def _stop_all(self) -> None:
        for child in reversed(self._children):
            await self._stop(child)

    def _record_restart(self) -> bool:
        """Count a restart in the intensity window; False once the limit is exceeded."""
        now = time.monotonic()
        window = self._restart_times
        window.append(now)
        while window and window[0] < now - self.max_seconds:
            window.popleft()
        return len(window) <= self.max_restarts

    async def _run(self, child: _Child, started: anyio.Event) -> None:
        """One child's runner: start, watch, restart (one_for_one) until told to stop."""
        try:
            with anyio.CancelScope() as scope:
                child.scope = scope
                if child.stopping_on_purpose or self._closing:
                    # A stop came after _start() scheduled this runner but before it ran, when
                    # there was no scope to cancel yet: starting now would leave the stopper
                    # waiting for a child nobody stops.
                    return
                while True:
                    returncode, ran_for = await self._run_once(child, started)
                    if child.stopping_on_purpose or self._closing:
                        return
                    if not child.spec.should_restart(returncode):
                        if returncode is not None:
                            child.set_state("exited")
                        return
                    if ran_for >= child.spec.backoff.reset_after:
                        child.attempt = 0
                    child.attempt += 1
                    if not self._record_restart():
                        await self._give_up(child)
                        return
                    child.restarts += 1
                    delay = child.spec.backoff.delay(child.attempt)
                    _log().info(
                        "child.restarting",
                        name=child.name,
                        attempt=child.attempt,
                        delay=round(delay, 3),
                        strategy=self.strategy,
                    )
                    child.set_state("backoff")
                    if self.strategy != "one_for_one":
                        assert self._tg is not None
                        self._tg.start_soon(self._restart_group, child, delay)
                        return
                    await anyio.sleep(delay)
        finally:
            child.scope = None
            started.set()
            if child.state not in _TERMINAL and (child.stopping_on_purpose or self._closing):
                child.set_state("stopped")
            child.done.set()
            self._check_done()

    async def _run_once(self, child: _Child, started: anyio.Event) -> tuple[int | None, float]:
        """Start one incarnation of ``child`` and watch it until it ends.

        Returns ``(returncode, seconds it ran)``; the returncode is None when it could not be
        started. Cancellation (an operator stop, a shutdown) stops the process, bounded.
        """
        spec = child.spec
        child.set_state("starting")
        child.ready = anyio.Event()
        _log().info("child.starting", name=child.name, attempt=child.attempt + 1)
        notify = NotifySocket() if isinstance(spec.ready, ReadyNotify) or spec.watchdog else None
        began = time.monotonic()
        proc: Process | None = None
        try:
            try:
                proc = await spawn(
                    spec.argv,
                    stdin=None,
                    stdout=PIPE if spec.capture_output else None,
                    stderr=PIPE if spec.capture_output else None,
                    cwd=spec.cwd,
                    env=self._env_for(spec, notify),
                    start_new_session=True,
                    # Log lines need no 1 MiB pipes, and hundreds of children holding them
                    # would eat the user's pipe budget (pipe-user-pages-soft).
                    pipe_size=None,
                    parent_death_signal=signal.SIGKILL if spec.die_with_supervisor else None,
                    stop_signal=spec.stop_signal,
                    stop_timeout=spec.stop_timeout,
                )
            except OSError as exc:
                child.returncode = None
                child.set_state("failed")
                _log().error("child.start_failed", name=child.name, error=str(exc), errno=exc.errno)
                started.set()
                return None, 0.0
            child.proc = proc
            returncode = await self._watch(child, proc, notify, started)
            return returncode, time.monotonic() - began
        finally:
            if proc is not None and proc.returncode is None:
                with anyio.CancelScope(shield=True):
                    await self._stop_process(child, proc)
            elif proc is not None:
                # The leader exited on its own, but the rest of its process group (a shell's
                # background jobs) lives on: it must not outlive its service, nor hold the
                # service's port when it restarts (PITFALLS.md 21). stop() of a reaped group
                # leader only SIGKILLs what is left of the group.
                with anyio.CancelScope(shield=True):
                    await proc.stop(timeout=0)
            if proc is not None:
                proc._close_streams()
                with anyio.CancelScope(shield=True):
                    await self._sweep_session(child, proc.pid)
            if notify is not None:
                notify.close()

    async def _sweep_session(self, child: _Child, sid: int) -> None:
        """Kill what the service left in its session outside its process group (a daemon that
        left the group but not the session), and reap those re-parented to us as subreaper.

        Each service runs in a session of its own whose id is its first pid, so whatever still
        carries that session id belongs to the service that just ended.
        """
        me = os.getpid()
        members = [p for p in session_members(sid) if p.pid != me]
        # Zombies are already dead (the group kill got them): only their reaping is left.
        live = [p for p in members if p.state != "Z"]
        if live:
            _log().warning(
                "child.leftovers_killed", name=child.name, sid=sid, pids=[p.pid for p in live]
            )
        kill_all((p.pid for p in live), signal.SIGKILL)
        reaper = current_reaper()
        with anyio.move_on_after(self._kill_timeout):
            for p in members:
                if p.ppid != me:
                    continue  # init (or another subreaper) reaps it
                watch = reaper.watch(p.pid)
                try:
                    await watch.wait()
                except ChildProcessError:
                    pass  # reaped meanwhile by someone else's waitpid
                finally:
                    watch.close()

    async def _watch(
        self,
        child: _Child,
        proc: Process,
        notify: NotifySocket | None,
        started: anyio.Event,
    ) -> int:
        # The output pumps are shielded: a stop from outside (operator, strategy, shutdown)
        # must not cut them off before they have read what the child writes on its way out.
        # They end at EOF, or at the drain deadline set once the child is gone.
        drains = (anyio.CancelScope(shield=True), anyio.CancelScope(shield=True))
        async with anyio.create_task_group() as pumps:
            streams = ((proc.stdout, "stdout"), (proc.stderr, "stderr"))
            for drain, (stream, stream_name) in zip(drains, streams, strict=True):
                if stream is not None:
                    pumps.start_soon(self._pump, child, stream, stream_name, drain)
            try:
                await self._watch_until_exit(child, proc, notify, started)
            finally:
                if proc.returncode is None:
                    with anyio.CancelScope(shield=True):
                        await self._stop_process(child, proc)
                # Output written just before the exit is still in the pipes: read it, bounded,
                # in case a grandchild holds them open.
                deadline = anyio.current_time() + _DRAIN_AFTER_EXIT
                for drain in drains:
                    drain.deadline = deadline
            status = proc.exit_status
            assert status is not None
            returncode = status.returncode
            child.returncode = returncode
            quiet = child.stopping_on_purpose or returncode == 0
            (_log().info if quiet else _log().warning)(
                "child.exited",
                name=child.name,
                pid=proc.pid,
                returncode=returncode,
                signal=status.signal_name,
            )
            if child.state not in ("stopping", "stopped"):
                child.set_state("exited")
        return returncode

    async def _watch_until_exit(
        self,
        child: _Child,
        proc: Process,
        notify: NotifySocket | None,
        started: anyio.Event,
    ) -> None:
        """Readiness, notify messages and the watchdog, until the child exits."""
        spec = child.spec
        exited = anyio.Event()
        watchdog_ping = [anyio.Event()]
        async with anyio.create_task_group() as side:

            async def wait_exit() -> None:
                await proc.wait()
                exited.set()

            side.start_soon(wait_exit)
            if notify is not None:
                side.start_soon(self._listen_notify, child, notify, watchdog_ping)
            try:
                await self._await_ready(child, exited)
            except _StartFailed as exc:
                _log().error("child.start_failed", name=child.name, pid=proc.pid, error=str(exc))
                if proc.returncode is None:
                    await self._stop_process(child, proc, purpose=False)
            else:
                child.set_state("running")
                child.ready.set()
                _log().info("child.ready", name=child.name, pid=proc.pid)
            started.set()
            if spec.watchdog is not None and proc.returncode is None:
                side.start_soon(self._watchdog, child, proc, watchdog_ping)
            await exited.wait()
            side.cancel_scope.cancel()

    async def _await_ready(self, child: _Child, exited: anyio.Event) -> None:
        ready = child.spec.ready
        if ready is None:
            return
        outcome: list[str] = []
        with anyio.move_on_after(child.spec.start_timeout) as timer:
            async with anyio.create_task_group() as tg:

                async def on_exit() -> None:
                    await exited.wait()
                    outcome.append("exited")
                    tg.cancel_scope.cancel()

                async def on_ready() -> None:
                    if isinstance(ready, ReadyTcp):
                        await ready.wait()
                    else:
                        await child.ready.wait()
                    outcome.append("ready")
                    tg.cancel_scope.cancel()

                tg.start_soon(on_exit)
                tg.start_soon(on_ready)
        if timer.cancelled_caught:
            raise _StartFailed(f"not ready within {child.spec.start_timeout} s")
        if outcome and outcome[0] == "exited":
            raise _StartFailed("exited before it was ready")

    async def _pump(
        self,
        child: _Child,
        stream: FdReceiveStream,
        stream_name: str,
        drain: anyio.CancelScope,
    ) -> None:
        ready = child.spec.ready
        check = ready if isinstance(ready, ReadyLine) else None
        log = _log() if self._log_output else None
        with drain:
            await self._pump_lines(child, stream, stream_name, check, log)

    async def _pump_lines(
        self,
        child: _Child,
        stream: FdReceiveStream,
        stream_name: str,
        check: ReadyLine | None,
        log: Any,
    ) -> None:
        try:
            async for line in stream.lines(limit=_OUTPUT_LINE_LIMIT, split_long=True):
                if (
                    check is not None
                    and not child.ready.is_set()
                    and check.matches(stream_name, line)
                ):
                    child.ready.set()
                if self._on_output is not None:
                    self._on_output(child.name, stream_name, line)
                if log is not None:
                    log.info(
                        "child.output",
                        name=child.name,
                        stream=stream_name,
                        line=line.decode(errors="replace"),
                    )
        except (anyio.ClosedResourceError, LineTooLongError):
            pass

    async def _listen_notify(
        self, child: _Child, notify: NotifySocket, watchdog_ping: list[anyio.Event]
    ) -> None:
        try:
            while True:
                message = await notify.receive()
                if message.get("READY") == "1" and isinstance(child.spec.ready, ReadyNotify):
                    child.ready.set()
                if message.get("WATCHDOG") == "1":
                    watchdog_ping[0].set()
        except anyio.ClosedResourceError:
            pass

    async def _watchdog(
        self, child: _Child, proc: Process, watchdog_ping: list[anyio.Event]
    ) -> None:
        interval = child.spec.watchdog
        assert interval is not None
        while True:
            with anyio.move_on_after(interval) as timer:
                await watchdog_ping[0].wait()
            if timer.cancelled_caught:
                _log().warning(
                    "child.watchdog_timeout", name=child.name, pid=proc.pid, interval=interval
                )
                await self._stop_process(child, proc, purpose=False)
                return
            watchdog_ping[0] = anyio.Event()

    async def _stop_process(self, child: _Child, proc: Process, *, purpose: bool = True) -> None:
        spec = child.spec
        if proc.returncode is None:
            if purpose:
                child.set_state("stopping")
            _log().info(
                "child.stopping",
                name=child.name,
                pid=proc.pid,
                signal=signal.Signals(spec.stop_signal).name,
                timeout=spec.stop_timeout,
            )
        try:
            returncode = await proc.stop(kill_timeout=self._kill_timeout)
        except TimeoutError as exc:
            _log().error("child.stop_failed", name=child.name, pid=proc.pid, error=str(exc))
            return
        child.returncode = returncode
        if purpose:
            child.set_state("stopped")
        _log().info("child.stopped", name=child.name, pid=proc.pid, returncode=returncode)

    async def _restart_group(self, failed: _Child, delay: float) -> None:
        """one_for_all / rest_for_one: stop the affected children in reverse start order, wait
        out the failed child's backoff, then start them again in order."""
        assert self._group_lock is not None
        async with self._group_lock:
            if self._closing or self._gave_up is not None:
                return
            if self.strategy == "one_for_all":
                affected = list(self._children)
            else:
                index = self._children.index(failed)
                affected = self._children[index:]
            for other in reversed(affected):
                if other is not failed and other.state not in _TERMINAL:
                    await self._stop(other)
            await anyio.sleep(delay)
            for other in affected:
                if other in self._children and not other.held and not self._closing:
                    await self._start(other)

    async def _give_up(self, child: _Child) -> None:
        restarts = len(self._restart_times)
        _log().error(
            "supervisor.gave_up",
            name=child.name,
            restarts=restarts,
            max_restarts=self.max_restarts,
            max_seconds=self.max_seconds,
            returncode=child.returncode,
        )
        self._gave_up = SupervisorGaveUp(
            child.name, restarts, self.max_restarts, self.max_seconds, child.returncode
        )
        child.set_state("failed")
        self._closing = True
        with anyio.CancelScope(shield=True):
            for other in reversed(self._children):
                if other is not child:
                    await self._stop(other)
        for other in self._children:
            if other is not child and other.state not in _TERMINAL:
                other.set_state("stopped")
        assert self._done is not None
        self._done.set()
        assert self._tg is not None
        self._tg.cancel_scope.cancel()

    def _env_for(self, spec: ChildSpec, notify: NotifySocket | None) -> dict[str, str]:
        env = dict(os.environ)
        if spec.python_unbuffered:
            env["PYTHONUNBUFFERED"] = "1"
        if spec.env:
            env.update(spec.env)
        if notify is not None:
            env["NOTIFY_SOCKET"] = notify.path
        else:
            env.pop("NOTIFY_SOCKET", None)
        if spec.watchdog is not None:
            env["WATCHDOG_USEC"] = str(math.ceil(spec.watchdog * 1_000_000))
        return env
