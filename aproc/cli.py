"""The ``aproc`` command: a thin client of the library.

    aproc up [-f Procfile|aproc.toml] [-c web=2,worker=1] [-e .env] [--socket [PATH]]
    aproc run [--restart always|on-failure|never] [--timeout S] -- CMD ARGS...
    aproc init -- CMD ARGS...
    aproc check FILE
    aproc ctl [--socket PATH] status [--json] | start NAME | stop NAME | restart NAME

Unlike the library, the command configures structlog: lifecycle events go to stderr, rendered
for a console on a TTY and as JSON lines otherwise (``--log-format`` chooses). Children's
output goes to stdout, each line prefixed with the time and the child's name.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import anyio
import structlog

from . import __version__
from .config import Config, ConfigError, load_config
from .control import ControlError, ControlServer, default_socket_path, request
from .errors import SupervisorGaveUp
from .init import exit_code, run_init
from .primitives import ExitStatus
from .supervisor import ChildSpec, Supervisor

__all__ = ["main"]

EXIT_OK = 0
EXIT_GAVE_UP = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 124
EXIT_NOT_FOUND = 127

_COLOURS = ["36", "33", "32", "35", "34", "96", "93", "92", "95", "94"]


def configure_logging(fmt: str, stream: TextIO) -> None:
    """Route structlog to ``stream``: console rendering or JSON lines; INFO and up."""
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    processors: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=False),
    ]
    if fmt == "json":
        processors.append(structlog.processors.JSONRenderer())
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=stream.isatty()))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        # WriteLogger writes "event\n" in one write(); print() writes the newline separately,
        # and a child sharing stderr (`aproc run`) could land its output mid-line in between.
        logger_factory=structlog.WriteLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )


class OutputPrinter:
    """Writes ``HH:MM:SS name | line`` for each line of children's output."""

    def __init__(self, names: Sequence[str], stream: TextIO, colour: bool) -> None:
        self.width = max((len(n) for n in names), default=0)
        self.stream = stream
        self.colour = colour
        self.colours = {n: _COLOURS[i % len(_COLOURS)] for i, n in enumerate(names)}

    def __call__(self, name: str, stream_name: str, line: bytes) -> None:
        prefix = f"{time.strftime('%H:%M:%S')} {name.ljust(self.width)} |"
        if self.colour:
            prefix = f"\x1b[{self.colours.get(name, '0')}m{prefix}\x1b[0m"
        self.stream.write(f"{prefix} {line.decode(errors='replace')}\n")
        self.stream.flush()


def _parse_concurrency(text: str) -> dict[str, int]:
    result: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, count = item.partition("=")
        if not sep or not name or not count.isdigit():
            raise argparse.ArgumentTypeError(f"expected name=N[,name=N...], got {item!r}")
        result[name] = int(count)
    return result


def _default_config_file() -> Path:
    for candidate in ("Procfile", "aproc.toml"):
        if Path(candidate).is_file():
            return Path(candidate)
    return Path("Procfile")


def _instance_names(config: Config) -> list[str]:
    return [instance.name for spec in config.specs for instance in spec.instances()]


async def _supervise(
    sup: Supervisor, socket_path: Path | None, timeout: float | None = None
) -> tuple[str, SupervisorGaveUp | None]:
    """Run ``sup`` until its children are done, a timeout, or SIGINT/SIGTERM (a second SIGINT
    kills). Returns why it ended ("done", "signal", "timeout") and the give-up, if any."""
    log = structlog.get_logger("aproc")
    stop_requested = anyio.Event()
    reason = "done"
    gave_up: SupervisorGaveUp | None = None
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as outer:

            async def watch_signals() -> None:
                async for sig in signals:
                    if not stop_requested.is_set():
                        log.info("aproc.stopping", signal=signal.Signals(sig).name)
                        stop_requested.set()
                    else:
                        log.warning("aproc.killing", signal=signal.Signals(sig).name)
                        sup.kill()

            outer.start_soon(watch_signals)
            try:
                async with sup, contextlib.AsyncExitStack() as stack:
                    if socket_path is not None:
                        await stack.enter_async_context(ControlServer(sup, socket_path))
                    async with anyio.create_task_group() as inner:

                        async def on_signal() -> None:
                            nonlocal reason
                            await stop_requested.wait()
                            reason = "signal"
                            inner.cancel_scope.cancel()

                        async def on_done() -> None:
                            try:
                                await sup.wait()
                            except SupervisorGaveUp:
                                # Raised again when the supervisor block is left.
                                inner.cancel_scope.cancel()
                                return
                            if socket_path is None:
                                # With a control socket an operator may start children
                                # again, so only a signal (or a give-up) ends the command.
                                inner.cancel_scope.cancel()

                        inner.start_soon(on_signal)
                        inner.start_soon(on_done)
                        if timeout is not None:
                            with anyio.move_on_after(timeout) as timer:
                                await anyio.sleep_forever()
                            if timer.cancelled_caught:
                                reason = "timeout"
                                log.info("aproc.timeout", seconds=timeout)
                                inner.cancel_scope.cancel()
            except SupervisorGaveUp as exc:
                gave_up = exc
            finally:
                outer.cancel_scope.cancel()
    return reason, gave_up


def cmd_up(args: argparse.Namespace) -> int:
    configure_logging(args.log_format, sys.stderr)
    try:
        config = load_config(
            args.file or _default_config_file(),
            env_file=args.env,
            concurrency=args.concurrency,
            base_port=args.port,
        )
    except ConfigError as exc:
        print(f"aproc: {exc}", file=sys.stderr)
        return EXIT_USAGE
    colour = sys.stdout.isatty() and not args.no_color
    printer = OutputPrinter(_instance_names(config), sys.stdout, colour)
    sup = Supervisor(
        config.specs,
        strategy=config.strategy,
        max_restarts=config.max_restarts,
        max_seconds=config.max_seconds,
        on_output=printer,
        log_output=False,
        # Not a subreaper: an orphan that also left its service's session (double fork +
        # setsid) would re-parent to us and, once it exits, stay a zombie until aproc exits,
        # since nothing here waits on pids it does not know. PID 1 reaps those; `aproc init`
        # is the tool for containers whose PID 1 does not.
        subreaper=False,
    )
    socket_path = Path(args.socket) if args.socket else None
    try:
        _, gave_up = anyio.run(_supervise, sup, socket_path, backend=args.backend)
    except (ControlError, BaseExceptionGroup) as exc:
        # The server fails inside task groups, so the error arrives wrapped in a group.
        error = _find_control_error(exc)
        if error is None:
            raise
        print(f"aproc: {error}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_GAVE_UP if gave_up is not None else EXIT_OK


def _find_control_error(exc: BaseException) -> ControlError | None:
    if isinstance(exc, ControlError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find_control_error(inner)
            if found is not None:
                return found
    return None


_RESTART = {"always": "permanent", "on-failure": "transient", "never": "temporary"}


def cmd_run(args: argparse.Namespace) -> int:
    configure_logging(args.log_format, sys.stderr)
    command = _command(args)
    spec = ChildSpec(
        os.path.basename(command[0]) or "run",
        command,
        restart=_RESTART[args.restart],  # type: ignore[arg-type]
        capture_output=False,
        stop_timeout=args.stop_timeout,
        python_unbuffered=False,
    )
    sup = Supervisor(
        [spec], max_restarts=args.max_restarts, max_seconds=args.max_seconds, log_output=False
    )
    reason, _ = anyio.run(_supervise, sup, None, args.timeout, backend=args.backend)
    returncode = sup.status()[0].returncode
    if reason == "timeout":
        return EXIT_TIMEOUT
    if returncode is None:  # it never started: the error was logged as child.start_failed
        return EXIT_NOT_FOUND
    return exit_code(ExitStatus(returncode))


def cmd_init(args: argparse.Namespace) -> int:
    try:
        return run_init(_command(args), grace=args.grace)
    except OSError as exc:
        print(f"aproc init: cannot run {exc.filename!r}: {exc.strerror}", file=sys.stderr)
        return EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else 126


def cmd_check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file, env_file=args.env)
    except ConfigError as exc:
        print(f"aproc: {exc}", file=sys.stderr)
        return 1
    names = ", ".join(_instance_names(config))
    print(f"{args.file}: ok ({len(config.specs)} processes: {names})")
    return EXIT_OK


def cmd_ctl(args: argparse.Namespace) -> int:
    path = Path(args.socket) if args.socket else default_socket_path()
    fields = {"name": args.name} if getattr(args, "name", None) else {}
    try:
        result = request(path, args.action, **fields)
    except ControlError as exc:
        print(f"aproc ctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as exc:
        print(f"aproc ctl: {exc}", file=sys.stderr)
        return 1
    if args.action != "status":
        print(f"{args.action}: {result['name']}: ok")
        return EXIT_OK
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    now = time.time()
    rows = [("NAME", "STATE", "PID", "RESTARTS", "EXIT", "FOR")]
    for child in result:
        rows.append(
            (
                child["name"],
                child["state"],
                "-" if child["pid"] is None else str(child["pid"]),
                str(child["restarts"]),
                "-" if child["returncode"] is None else str(child["returncode"]),
                _duration(now - child["since"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _command(args: argparse.Namespace) -> list[str]:
    command: list[str] = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        args.parser.error("a command is required after --")
    return command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aproc",
        description="Run, supervise and control processes: a Procfile/TOML runner, a "
        "supervised `run`, a PID-1 init, and a control client.",
    )
    parser.add_argument("--version", action="version", version=f"aproc {__version__}")
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)

    def logging_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--log-format",
            choices=("auto", "console", "json"),
            default="auto",
            help="how lifecycle events are written to stderr (default: console on a TTY, "
            "else JSON lines)",
        )
        p.add_argument(
            "--backend",
            choices=("asyncio", "trio"),
            default="asyncio",
            help="event loop to run on (default: asyncio)",
        )

    up = sub.add_parser(
        "up",
        help="run and supervise the processes of a Procfile or aproc.toml",
        description="Start every process of a Procfile (+ .env) or aproc.toml, prefix their "
        "output with time and name, restart them as configured. SIGINT/SIGTERM stop "
        "everything gracefully; a second SIGINT kills. Exit 0 after a clean stop, 1 when the "
        "supervisor gave up, 2 for a bad configuration.",
    )
    up.add_argument(
        "-f",
        "--file",
        type=Path,
        help="Procfile or aproc.toml (default: ./Procfile, else ./aproc.toml)",
    )
    up.add_argument(
        "-c",
        "--concurrency",
        type=_parse_concurrency,
        default={},
        metavar="NAME=N,...",
        help="how many of each process to run, e.g. web=2,worker=1",
    )
    up.add_argument(
        "-e", "--env", type=Path, help="a .env file (default: .env beside the config, if any)"
    )
    up.add_argument(
        "-p",
        "--port",
        type=int,
        default=5000,
        help="base of the PORT given to Procfile processes (default 5000; +100 per process "
        "type, +1 per instance)",
    )
    up.add_argument(
        "--socket",
        nargs="?",
        const=str(default_socket_path()),
        metavar="PATH",
        help=f"serve the control socket (default path: {default_socket_path()})",
    )
    up.add_argument("--no-color", action="store_true", help="never colour the output")
    logging_options(up)
    up.set_defaults(func=cmd_up)

    run = sub.add_parser(
        "run",
        help="run one command under supervision",
        description="Run CMD, restarting it as --restart says; exit with its exit code "
        "(128+N when killed by signal N, 124 on --timeout).",
    )
    run.add_argument("--restart", choices=tuple(_RESTART), default="never")
    run.add_argument("--timeout", type=float, help="stop the command after this many seconds")
    run.add_argument("--stop-timeout", type=float, default=10.0, help="grace before SIGKILL")
    run.add_argument("--max-restarts", type=int, default=5)
    run.add_argument("--max-seconds", type=float, default=60.0)
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ARGS")
    logging_options(run)
    run.set_defaults(func=cmd_run, parser=run)

    init = sub.add_parser(
        "init",
        help="act as PID 1 / subreaper for CMD (containers)",
        description="Run CMD as an init would: forward signals to its process group, reap "
        "every orphan, and when CMD exits stop (SIGTERM, --grace, SIGKILL) and reap what it "
        "left behind. Exits with CMD's code (128+N when killed by signal N).",
    )
    init.add_argument("--grace", type=float, default=5.0, help="seconds before SIGKILL")
    init.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ARGS")
    init.set_defaults(func=cmd_init, parser=init)

    check = sub.add_parser(
        "check",
        help="validate a Procfile or aproc.toml",
        description="Check a configuration file; errors name the file, line and field.",
    )
    check.add_argument("file", type=Path)
    check.add_argument("-e", "--env", type=Path, help="a .env file to check as well")
    check.set_defaults(func=cmd_check)

    ctl = sub.add_parser(
        "ctl",
        help="control a running `aproc up --socket`",
        description="Talk to a running supervisor over its control socket.",
    )
    ctl.add_argument("--socket", metavar="PATH", help=f"default: {default_socket_path()}")
    actions = ctl.add_subparsers(dest="action", metavar="ACTION", required=True)
    status = actions.add_parser("status", help="list children and their state")
    status.add_argument("--json", action="store_true", help="print JSON")
    for action in ("start", "stop", "restart"):
        p = actions.add_parser(action, help=f"{action} one child")
        p.add_argument("name")
    ctl.set_defaults(func=cmd_ctl)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aproc`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except BrokenPipeError:
        # The reader went away (`aproc ctl status | head`): say nothing more, like cat does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    return code


if __name__ == "__main__":
    sys.exit(main())
