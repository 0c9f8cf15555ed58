"""The control socket: operate a running supervisor from another process (``aproc ctl``).

Security follows from where and how the socket is made (PITFALLS.md 27): a local Unix socket
only, never TCP; mode 0600 inside a directory only its owner can enter (by default under
``$XDG_RUNTIME_DIR``, never a world-writable ``/tmp`` path that cleaners sweep); and every
connection's peer credentials (SO_PEERCRED) checked: the same uid, or root.

The protocol is one JSON object per line, versioned::

    -> {"v": 1, "cmd": "status"}
    <- {"v": 1, "ok": true, "result": [{"name": "web", "state": "running", ...}]}
    -> {"v": 1, "cmd": "restart", "name": "web"}
    <- {"v": 1, "ok": false, "error": "no child named 'web'"}

A malformed request gets an error answer (or, past the size limit, a closed connection); it can
never crash the supervisor. Each connection is served by its own task and there is no global
lock, so a slow stop of one child never holds up a command for another (PITFALLS.md 24).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import structlog

from .supervisor import Supervisor

__all__ = [
    "PROTOCOL_VERSION",
    "ControlError",
    "ControlServer",
    "default_socket_path",
    "request",
]

PROTOCOL_VERSION = 1
MAX_REQUEST_BYTES = 64 * 1024
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class ControlError(Exception):
    """The control socket cannot be used: unsafe directory, another instance, no server."""


def default_socket_path() -> Path:
    """``$XDG_RUNTIME_DIR/aproc/aproc.sock``, or ``~/.local/state/aproc/aproc.sock``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime else Path.home() / ".local" / "state"
    return base / "aproc" / "aproc.sock"


def _prepare_directory(directory: Path) -> None:
    """Create ``directory`` with mode 0700, or check that an existing one is private."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=False)
        return
    except FileExistsError:
        pass
    st = directory.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise ControlError(f"{directory} exists and is not a directory")
    if st.st_uid != os.getuid():
        raise ControlError(f"{directory} belongs to uid {st.st_uid}, not to us")
    if st.st_mode & 0o077:
        raise ControlError(
            f"{directory} is accessible to other users (mode {stat.S_IMODE(st.st_mode):o}); "
            "the control socket needs a directory only its owner can enter (chmod 700)"
        )


def _claim_path(path: Path) -> None:
    """Remove a stale socket at ``path``; refuse if a live server answers there."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # nobody listens: left over from a crash
        return
    finally:
        probe.close()
    raise ControlError(f"another aproc is already listening on {path}")


def _peer_uid(stream: anyio.abc.SocketStream) -> int:
    raw: socket.socket = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    _, uid, _ = _PEERCRED.unpack(
        raw.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    )
    return int(uid)


Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class ControlServer:
    """Serves the control protocol for ``supervisor`` on the Unix socket at ``path``.

    ``async with ControlServer(sup, path): ...`` listens for as long as the block runs, then
    removes the socket. Raises :class:`ControlError` if the path is unsafe or taken.
    """

    def __init__(self, supervisor: Supervisor, path: str | os.PathLike[str]) -> None:
        self.supervisor = supervisor
        self.path = Path(path)
        self._tg: anyio.abc.TaskGroup | None = None
        self._listener: anyio.abc.SocketListener | None = None
        self._handlers: dict[str, Handler] = {
            "status": self._status,
            "start": self._named(supervisor.start_child),
            "stop": self._named(supervisor.stop_child),
            "restart": self._named(supervisor.restart_child),
        }

    async def __aenter__(self) -> ControlServer:
        _prepare_directory(self.path.parent)
        _claim_path(self.path)
        listener = await anyio.create_unix_listener(self.path, mode=0o600)
        self._listener = listener
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        tg.start_soon(listener.serve, self._serve_connection, tg)
        structlog.get_logger("aproc").info("control.listening", path=str(self.path))
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        assert self._tg is not None
        assert self._listener is not None
        self._tg.cancel_scope.cancel()
        try:
            await self._tg.__aexit__(None, None, None)
        finally:
            await self._listener.aclose()
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    async def _serve_connection(self, stream: anyio.abc.SocketStream) -> None:
        log = structlog.get_logger("aproc")
        async with stream:
            try:
                uid = _peer_uid(stream)
            except OSError as exc:
                log.warning("control.rejected", reason=f"no peer credentials: {exc}")
                return
            if uid not in (os.getuid(), 0):
                log.warning("control.rejected", reason="foreign uid", uid=uid)
                try:
                    await _send(stream, _error("forbidden"))
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass  # it hung up first; letting this escape would take the server down
                return
            buffer = b""
            try:
                while True:
                    chunk = await stream.receive(65536)
                    buffer += chunk
                    while b"\n" in buffer:
                        line, _, buffer = buffer.partition(b"\n")
                        await _send(stream, await self._answer(line))
                    if len(buffer) > MAX_REQUEST_BYTES:
                        await _send(
                            stream,
                            {"v": PROTOCOL_VERSION, "ok": False, "error": "request too large"},
                        )
                        return
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            req = json.loads(line)
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: [[[[...
            return _error("malformed request: not JSON")
        if not isinstance(req, dict):
            return _error("malformed request: expected a JSON object")
        if req.get("v") != PROTOCOL_VERSION:
            return _error(f"unsupported protocol version {req.get('v')!r}")
        cmd = req.get("cmd")
        handler = self._handlers.get(cmd) if isinstance(cmd, str) else None
        if handler is None:
            return _error(f"unknown command {cmd!r} (known: {', '.join(self._handlers)})")
        try:
            result = await handler(req)
        except KeyError as exc:
            return _error(str(exc.args[0]) if exc.args else "not found")
        except (ValueError, TypeError) as exc:
            return _error(str(exc))
        except Exception as exc:  # a request must never take the supervisor down
            structlog.get_logger("aproc").exception("control.failed", cmd=cmd)
            return _error(f"internal error: {type(exc).__name__}: {exc}")
        return {"v": PROTOCOL_VERSION, "ok": True, "result": result}

    async def _status(self, req: dict[str, Any]) -> Any:
        return [dataclasses.asdict(s) for s in self.supervisor.status()]

    def _named(self, action: Callable[[str], Awaitable[None]]) -> Handler:
        async def handle(req: dict[str, Any]) -> Any:
            name = req.get("name")
            if not isinstance(name, str) or not name:
                raise ValueError("this command needs a child 'name'")
            await action(name)
            return {"name": name}

        return handle


def _error(message: str) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "ok": False, "error": message}


async def _send(stream: anyio.abc.SocketStream, message: dict[str, Any]) -> None:
    await stream.send(json.dumps(message).encode() + b"\n")


def request(path: str | os.PathLike[str], cmd: str, timeout: float = 60.0, **fields: Any) -> Any:
    """Send one command to the server at ``path`` and return its result (blocking client).

    Raises ControlError when no server answers, and RuntimeError with the server's message
    when the command failed.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(os.fspath(path))
        except OSError as exc:
            raise ControlError(f"cannot connect to {os.fspath(path)}: {exc.strerror}") from None
        sock.sendall(json.dumps({"v": PROTOCOL_VERSION, "cmd": cmd, **fields}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ControlError("the server closed the connection without an answer")
            data += chunk
    finally:
        sock.close()
    answer = json.loads(data)
    if not answer.get("ok"):
        raise RuntimeError(answer.get("error", "unknown error"))
    return answer.get("result")
