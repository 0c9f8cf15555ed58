"""Configuration files: Procfile, .env and aproc.toml, loaded into the library's ChildSpecs.

A Procfile holds ``name: command`` lines, as honcho and foreman read them. The command is split
with shlex and run directly, or through ``/bin/sh -c`` when it uses shell syntax (pipes,
redirections, ``$VARS``, globs, ``&&``...), so ``web: python -m http.server $PORT`` works as
users expect. ``aproc.toml`` is the full form, one ``[process.NAME]`` table per process.

Every error names the file, the line and the field (``aproc.toml:12: process.web.restart:
expected one of ...``) and is raised as :class:`ConfigError`, never as a traceback from deep
inside.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .readiness import Ready, ReadyCheck
from .supervisor import Backoff, ChildSpec, Strategy, order_by_dependencies

__all__ = [
    "Config",
    "ConfigError",
    "command_argv",
    "load_config",
    "load_dotenv",
    "parse_procfile",
    "parse_toml",
]


class ConfigError(ValueError):
    """A configuration file is malformed. ``str()`` is one line naming file, line and field."""

    def __init__(
        self, path: str | os.PathLike[str], line: int | None, message: str, field: str | None = None
    ) -> None:
        self.path = os.fspath(path)
        self.line = line
        self.field = field
        self.message = message
        where = self.path if line is None else f"{self.path}:{line}"
        what = f"{field}: {message}" if field else message
        super().__init__(f"{where}: {what}")


@dataclass(frozen=True, slots=True)
class Config:
    """A loaded configuration: the children and the supervisor's settings."""

    specs: list[ChildSpec]
    strategy: Strategy = "one_for_one"
    max_restarts: int = 5
    max_seconds: float = 60.0
    source: str = ""
    env: dict[str, str] = field(default_factory=dict)


# Characters and words that only a shell gives meaning to. A command without any of them is
# split with shlex and exec'd directly, which keeps signals going straight to the program.
_SHELL_SYNTAX = re.compile(r"[|&;<>()$`\\*?\[\]{}~]|(^|\s)[A-Za-z_][A-Za-z0-9_]*=|\n")
_SHELL_WORDS = frozenset({"if", "for", "while", "case", "until", "exec", "export", "cd", "."})
# Syntax that makes a command more than one simple command, or changes its environment or
# redirections: with none of it, the shell may `exec` the program instead of forking it.
_COMPOUND = re.compile(r"[|&;<>()`\n]|(^|\s)[A-Za-z_][A-Za-z0-9_]*=")


def command_argv(command: str) -> list[str]:
    """Turn a command line into an argv: shlex words, or ``/bin/sh -c`` for shell syntax
    (``exec``-prefixed when the syntax is only expansions such as ``$PORT``).

    Raises ValueError for an empty command or unbalanced quotes.
    """
    if not command.strip():
        raise ValueError("empty command")
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise ValueError(f"cannot split command: {exc}") from None
    unquoted = _unquoted_parts(command)
    if words[0] in _SHELL_WORDS or any(_SHELL_SYNTAX.search(part) for part in unquoted):
        if words[0] in _SHELL_WORDS or any(_COMPOUND.search(part) for part in unquoted):
            return ["/bin/sh", "-c", command]
        # Only expansions ($PORT, globs): `exec` lets the program replace the shell, so it is
        # the supervised process itself and gets the stop signal directly.
        return ["/bin/sh", "-c", f"exec {command}"]
    return words


def _unquoted_parts(command: str) -> list[str]:
    """The pieces of ``command`` outside single and double quotes."""
    parts: list[str] = []
    current: list[str] = []
    quote: str | None = None
    escaped = False
    for ch in command:
        if escaped:
            escaped = False
            if quote is None:
                current.append("\\")  # an escape outside quotes is itself shell syntax
            continue
        if ch == "\\" and quote != "'":
            escaped = True
            continue
        if quote:
            if ch == quote:
                quote = None
            elif quote == '"' and ch in "$`":
                current.append(ch)  # expansions happen inside double quotes
            continue
        if ch in "'\"":
            quote = ch
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")
_PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_][A-Za-z0-9_-]*)\s*:\s*(.*)$")


def parse_procfile(text: str, path: str = "Procfile") -> list[tuple[str, str, int]]:
    """Parse Procfile text into ``(name, command, line number)`` entries.

    Blank lines and ``#`` comments are skipped. Raises ConfigError for a line that is not
    ``name: command``, an empty command, or a name used twice.
    """
    entries: list[tuple[str, str, int]] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _PROCFILE_LINE.match(line)
        if match is None:
            raise ConfigError(
                path, number, f"expected 'name: command', got {line[:60]!r}", field="line"
            )
        name, command = match.group(1), match.group(2).strip()
        if not command:
            raise ConfigError(path, number, "empty command", field=name)
        if name in seen:
            raise ConfigError(
                path, number, f"process {name!r} is already defined on line {seen[name]}", name
            )
        seen[name] = number
        entries.append((name, command, number))
    if not entries:
        raise ConfigError(path, None, "no processes defined")
    return entries


_DOTENV_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")


def load_dotenv(text: str, path: str = ".env") -> dict[str, str]:
    """Parse ``.env`` text: ``KEY=VALUE`` lines, optional ``export``, ``#`` comments, single or
    double quotes (double quotes understand ``\\n``, ``\\t``, ``\\"`` and ``\\\\``).

    Raises ConfigError naming the line for anything else.
    """
    env: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _DOTENV_LINE.match(line)
        if match is None:
            raise ConfigError(path, number, f"expected KEY=VALUE, got {line[:60]!r}", "line")
        key, value = match.group(1), match.group(2).strip()
        if value[:1] in ("'", '"'):
            quote = value[0]
            end = _closing_quote(value, quote)
            if end < 0:
                raise ConfigError(path, number, "unterminated quote", key)
            rest = value[end + 1 :].strip()
            if rest and not rest.startswith("#"):
                raise ConfigError(path, number, "text after the closing quote", key)
            value = value[1:end]
            if quote == '"':
                value = re.sub(
                    r"\\(.)",
                    lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)),
                    value,
                )
        else:
            value = re.sub(r"\s+#.*$", "", value)
        if "\0" in value:
            raise ConfigError(path, number, "NUL byte in value", key)
        env[key] = value
    return env


def _closing_quote(value: str, quote: str) -> int:
    i = 1
    while i < len(value):
        if value[i] == "\\" and quote == '"':
            i += 2
            continue
        if value[i] == quote:
            return i
        i += 1
    return -1


# ------------------------------------------------------------------------------- TOML

_SUPERVISOR_KEYS = {"strategy", "max_restarts", "max_seconds"}
_PROCESS_KEYS = {
    "cmd",
    "cwd",
    "env",
    "restart",
    "numprocs",
    "stop_signal",
    "stop_timeout",
    "ready",
    "depends_on",
    "backoff",
    "start_timeout",
    "watchdog",
    "python_unbuffered",
    "capture_output",
}
_BACKOFF_KEYS = {"initial", "factor", "maximum", "jitter", "reset_after"}
_READY_KEYS = {"tcp", "host", "line", "stream", "notify"}


def _key_pattern(name: str) -> str:
    """A regex for ``name`` written as a TOML key: bare, "basic" or 'literal'."""
    forms = {
        name,
        json.dumps(name, ensure_ascii=False),
        json.dumps(name),
        f"'{name}'",
    }
    return "(?:" + "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True)) + ")"


def _dotted_pattern(names: Sequence[str]) -> str:
    return r"\s*\.\s*".join(_key_pattern(n) for n in names)


def _show_key(name: str) -> str:
    """``name`` as it reads in a dotted field: bare when it can be, else a quoted TOML key
    (so a key holding a newline cannot break the one-line error)."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


class _Locator:
    """Finds the line of a table or key in TOML source, for error messages (tomllib keeps
    no positions)."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def table(self, *names: str) -> int | None:
        pattern = re.compile(r"^\s*\[\s*" + _dotted_pattern(names) + r"\s*\]\s*(#.*)?$")
        for number, line in enumerate(self.lines, start=1):
            if pattern.match(line):
                return number
        return None

    def key(self, table: tuple[str, ...], key: str) -> int | None:
        """The line of ``key =`` (or ``key.sub =``) inside ``table``, or of a ``[table.key]``
        header anywhere; else the table's own line."""
        start = self.table(*table) if table else 0
        if start is None:
            return None
        assignment = re.compile(r"^\s*" + _key_pattern(key) + r"\s*[=.]")
        header = re.compile(r"^\s*\[\[?\s*" + _dotted_pattern((*table, key)) + r"\s*[.\]]")
        inside = True  # still in the table's own section (the top level, for table == ())
        for number in range(start + 1, len(self.lines) + 1):
            line = self.lines[number - 1]
            if re.match(r"^\s*\[", line):
                if header.match(line):
                    return number
                inside = False
            elif inside and assignment.match(line):
                return number
        return start or None


class _TomlReader:
    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.where = _Locator(text)

    def error(self, table: tuple[str, ...], key: str | None, message: str) -> ConfigError:
        line = self.where.key(table, key) if key else self.where.table(*table)
        dotted = ".".join(_show_key(k) for k in ((*table, key) if key else table))
        return ConfigError(self.path, line, message, dotted)

    def expect(
        self, table: tuple[str, ...], key: str, value: Any, kinds: tuple[type, ...], what: str
    ) -> Any:
        if isinstance(value, bool) and bool not in kinds:
            raise self.error(table, key, f"expected {what}, got {value!r}")
        if not isinstance(value, kinds):
            raise self.error(table, key, f"expected {what}, got {type(value).__name__} {value!r}")
        return value

    def number(self, table: tuple[str, ...], key: str, value: Any, minimum: float = 0) -> float:
        self.expect(table, key, value, (int, float), "a number")
        if value != value:  # NaN
            raise self.error(table, key, "expected a number, got nan")
        if value < minimum:
            raise self.error(table, key, f"must be >= {minimum}, got {value!r}")
        return float(value)

    def unknown_keys(
        self, table: tuple[str, ...], data: Mapping[str, Any], known: set[str]
    ) -> None:
        for key in data:
            if key not in known:
                hint = ", ".join(sorted(known))
                raise self.error(table, key, f"unknown key {key!r} (known keys: {hint})")


def parse_signal(value: str | int) -> int:
    """``"TERM"``, ``"SIGTERM"``, ``"term"`` or ``15`` -> 15. Raises ValueError."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"expected a signal name or number, got {value!r}")
    if isinstance(value, int):
        try:
            return int(signal.Signals(value))
        except ValueError:
            raise ValueError(f"no signal number {value}") from None
    name = value.strip().upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise ValueError(f"unknown signal name {value!r}") from None


def parse_toml(text: str, path: str = "aproc.toml", base_dir: str | None = None) -> Config:
    """Parse ``aproc.toml`` text into a :class:`Config`. Raises ConfigError."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        raise ConfigError(
            path, int(match.group(1)) if match else None, f"invalid TOML: {exc}"
        ) from None
    except RecursionError:  # tomllib recurses once per level of nested arrays/tables
        raise ConfigError(path, None, "invalid TOML: values nested too deeply") from None
    reader = _TomlReader(path, text)
    for key in data:
        if key not in ("supervisor", "process"):
            raise reader.error((), key, f"unknown table {key!r} (expected supervisor, process)")
    sup = data.get("supervisor", {})
    reader.expect((), "supervisor", sup, (dict,), "a table")
    reader.unknown_keys(("supervisor",), sup, _SUPERVISOR_KEYS)
    strategy = sup.get("strategy", "one_for_one")
    if strategy not in ("one_for_one", "one_for_all", "rest_for_one"):
        raise reader.error(
            ("supervisor",),
            "strategy",
            f"expected 'one_for_one', 'one_for_all' or 'rest_for_one', got {strategy!r}",
        )
    max_restarts = sup.get("max_restarts", 5)
    reader.expect(("supervisor",), "max_restarts", max_restarts, (int,), "an integer")
    if max_restarts < 0:
        raise reader.error(("supervisor",), "max_restarts", "must be >= 0")
    max_seconds = reader.number(("supervisor",), "max_seconds", sup.get("max_seconds", 60))
    if max_seconds <= 0:
        raise reader.error(("supervisor",), "max_seconds", "must be > 0")

    processes = data.get("process")
    if processes is None:
        raise ConfigError(path, None, "no [process.NAME] tables defined")
    reader.expect((), "process", processes, (dict,), "[process.NAME] tables")
    specs: list[ChildSpec] = []
    for name, table in processes.items():
        where = ("process", name)
        if not _NAME.match(name):
            raise reader.error(where, None, f"invalid process name {name!r}")
        reader.expect(("process",), name, table, (dict,), "a table")
        specs.append(_process_spec(reader, name, table, base_dir))
    known = {spec.name for spec in specs}
    for spec in specs:
        for dep in spec.depends_on:
            if dep not in known:
                raise reader.error(("process", spec.name), "depends_on", f"unknown process {dep!r}")
    try:
        order_by_dependencies(specs)
    except ValueError as exc:
        # "dependency cycle: a -> b -> a": blame the first process of the cycle.
        first = str(exc).partition(": ")[2].split(" -> ")[0]
        table = ("process", first) if first in known else ()
        raise reader.error(table, "depends_on", str(exc)) from None
    return Config(specs, strategy, max_restarts, max_seconds, source=path)


def _process_spec(
    reader: _TomlReader, name: str, table: Mapping[str, Any], base_dir: str | None
) -> ChildSpec:
    where = ("process", name)
    reader.unknown_keys(where, table, _PROCESS_KEYS)
    if "cmd" not in table:
        raise reader.error(where, None, "missing required key 'cmd'")
    cmd = table["cmd"]
    if isinstance(cmd, str):
        try:
            argv = command_argv(cmd)
        except ValueError as exc:
            raise reader.error(where, "cmd", str(exc)) from None
    elif isinstance(cmd, list) and cmd and all(isinstance(a, str) for a in cmd):
        argv = list(cmd)
    else:
        raise reader.error(where, "cmd", "expected a string or a non-empty list of strings")
    kwargs: dict[str, Any] = {}
    if "cwd" in table:
        cwd = reader.expect(where, "cwd", table["cwd"], (str,), "a string")
        kwargs["cwd"] = os.path.normpath(os.path.join(base_dir or ".", cwd))
    if "env" in table:
        env = reader.expect(where, "env", table["env"], (dict,), "a table of strings")
        for key, value in env.items():
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise reader.error(where, "env", f"value of {key!r} must be a string")
            if "=" in key or not key:
                raise reader.error(where, "env", f"invalid variable name {key!r}")
        kwargs["env"] = {k: str(v) for k, v in env.items()}
    if "restart" in table:
        restart = table["restart"]
        if restart not in ("permanent", "transient", "temporary"):
            raise reader.error(
                where,
                "restart",
                f"expected 'permanent', 'transient' or 'temporary', got {restart!r}",
            )
        kwargs["restart"] = restart
    if "numprocs" in table:
        numprocs = reader.expect(where, "numprocs", table["numprocs"], (int,), "an integer")
        if numprocs < 1:
            raise reader.error(where, "numprocs", "must be >= 1")
        kwargs["numprocs"] = numprocs
    if "stop_signal" in table:
        try:
            kwargs["stop_signal"] = parse_signal(table["stop_signal"])
        except (ValueError, AttributeError) as exc:
            raise reader.error(where, "stop_signal", str(exc)) from None
    for key in ("stop_timeout", "start_timeout", "watchdog"):
        if key in table:
            kwargs[key] = reader.number(where, key, table[key])
    if kwargs.get("watchdog") == 0:
        raise reader.error(where, "watchdog", "must be > 0 seconds")
    for key in ("python_unbuffered", "capture_output"):
        if key in table:
            kwargs[key] = reader.expect(where, key, table[key], (bool,), "true or false")
    if "depends_on" in table:
        deps = table["depends_on"]
        if isinstance(deps, str):
            deps = [deps]
        if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
            raise reader.error(where, "depends_on", "expected a list of process names")
        if name in deps:
            raise reader.error(where, "depends_on", f"process {name!r} depends on itself")
        kwargs["depends_on"] = deps
    if "backoff" in table:
        backoff = reader.expect(where, "backoff", table["backoff"], (dict,), "a table")
        for key in backoff:
            if key not in _BACKOFF_KEYS:
                known = ", ".join(sorted(_BACKOFF_KEYS))
                raise reader.error(where, "backoff", f"unknown key {key!r} (known: {known})")
            reader.number(where, "backoff", backoff[key])
        try:
            kwargs["backoff"] = Backoff(**{k: float(v) for k, v in backoff.items()})
        except ValueError as exc:
            raise reader.error(where, "backoff", str(exc)) from None
    if "ready" in table:
        kwargs["ready"] = _ready(reader, where, table["ready"])
    try:
        return ChildSpec(name, argv, **kwargs)
    except (ValueError, TypeError) as exc:
        raise reader.error(where, None, str(exc)) from None


def _ready(reader: _TomlReader, where: tuple[str, ...], value: Any) -> ReadyCheck:
    reader.expect(where, "ready", value, (dict,), "a table like { tcp = 8000 }")
    for key in value:
        if key not in _READY_KEYS:
            raise reader.error(where, "ready", f"unknown key {key!r} (use tcp, line or notify)")
    kinds = [k for k in ("tcp", "line", "notify") if k in value]
    if len(kinds) != 1:
        raise reader.error(where, "ready", "give exactly one of tcp, line or notify")
    try:
        if kinds[0] == "tcp":
            port = value["tcp"]
            if not isinstance(port, int) or isinstance(port, bool):
                raise ValueError(f"tcp must be a port number, got {port!r}")
            host = value.get("host", "127.0.0.1")
            if not isinstance(host, str):
                raise ValueError("host must be a string")
            return Ready.tcp(port, host)
        if kinds[0] == "line":
            pattern = value["line"]
            if not isinstance(pattern, str):
                raise ValueError("line must be a regular expression string")
            try:
                compiled = re.compile(pattern.encode())
            except (re.error, OverflowError, RecursionError) as exc:
                raise ValueError(f"bad regular expression {pattern!r}: {exc}") from None
            stream = value.get("stream", "any")
            return Ready.line(compiled, stream)
        if value["notify"] is not True:
            raise ValueError("notify must be true")
        return Ready.notify()
    except ValueError as exc:
        raise reader.error(where, "ready", str(exc)) from None


# ------------------------------------------------------------------------------- loading


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, None, "file not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, None, f"not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise ConfigError(path, None, exc.strerror or str(exc)) from None


def load_config(
    path: str | os.PathLike[str],
    *,
    env_file: str | os.PathLike[str] | None = None,
    concurrency: Mapping[str, int] | None = None,
    base_port: int | None = 5000,
) -> Config:
    """Load a Procfile or an ``aproc.toml`` (by its ``.toml`` suffix) into a :class:`Config`.

    ``env_file`` (a ``.env``; by default the one beside the file, if present) is added to every
    child's environment. ``concurrency`` overrides ``numprocs`` per process name. For a
    Procfile, ``base_port`` gives honcho's ``PORT``: ``base_port + 100 * index`` for the index-th
    process type, plus the instance number minus one. Raises ConfigError.
    """
    file = Path(path)
    text = _read(file)
    base_dir = str(file.resolve().parent)
    if env_file is None:
        default_env = file.parent / ".env"
        dotenv = load_dotenv(_read(default_env), str(default_env)) if default_env.is_file() else {}
    else:
        dotenv = load_dotenv(_read(Path(env_file)), os.fspath(env_file))
    if file.suffix == ".toml":
        config = parse_toml(text, str(file), base_dir)
        specs = config.specs
    else:
        specs = []
        for index, (name, command, number) in enumerate(parse_procfile(text, str(file))):
            try:
                argv = command_argv(command)
            except ValueError as exc:
                raise ConfigError(file, number, str(exc), name) from None
            specs.append(
                ChildSpec(
                    name,
                    argv,
                    cwd=base_dir,
                    base_port=None if base_port is None else base_port + 100 * index,
                )
            )
        config = Config(specs, source=str(file))
    specs = _apply(specs, dotenv, concurrency or {}, file)
    return Config(
        specs, config.strategy, config.max_restarts, config.max_seconds, str(file), dotenv
    )


def _apply(
    specs: Sequence[ChildSpec],
    dotenv: Mapping[str, str],
    concurrency: Mapping[str, int],
    file: Path,
) -> list[ChildSpec]:
    names = {s.name for s in specs}
    for name, count in concurrency.items():
        if name not in names:
            raise ConfigError(file, None, f"-c names unknown process {name!r}", "concurrency")
        if count < 0:
            raise ConfigError(file, None, f"count for {name!r} must be >= 0", "concurrency")
    out = []
    for spec in specs:
        count = concurrency.get(spec.name, spec.numprocs)
        if count == 0:
            continue
        env = {**dotenv, **(spec.env or {})}
        out.append(replace(spec, numprocs=count, env=env or None))
    return out
