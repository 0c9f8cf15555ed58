"""Readiness checks: how a supervisor knows a child is ready to serve.

A child is *started* when its exec succeeds, and *ready* when it says so: a line on its output
matching a pattern, a TCP port accepting connections, or sd_notify's ``READY=1`` on the socket
named by ``NOTIFY_SOCKET`` (the protocol systemd services already speak). Dependents are started
only once their dependencies are ready (PITFALLS.md 24).
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
from dataclasses import dataclass
from typing import Literal

import anyio

__all__ = ["NotifySocket", "Ready", "ReadyCheck", "ReadyLine", "ReadyNotify", "ReadyTcp"]


@dataclass(frozen=True, slots=True)
class ReadyLine:
    """Ready once a line of the child's output matches ``pattern`` (``re.search``)."""

    pattern: re.Pattern[bytes]
    stream: Literal["stdout", "stderr", "any"] = "any"

    def matches(self, stream: str, line: bytes) -> bool:
        return (self.stream == "any" or self.stream == stream) and bool(self.pattern.search(line))


@dataclass(frozen=True, slots=True)
class ReadyTcp:
    """Ready once ``host:port`` accepts a TCP connection.

    It is checked with connection attempts spaced from 10 ms up to ``interval``, only while the
    child is starting; a running child is never probed.
    """

    port: int
    host: str = "127.0.0.1"
    interval: float = 0.2

    async def wait(self) -> None:
        delay = 0.01
        while True:
            try:
                stream = await anyio.connect_tcp(self.host, self.port)
            except OSError:
                await anyio.sleep(delay)
                delay = min(delay * 2, self.interval)
            else:
                await stream.aclose()
                return


@dataclass(frozen=True, slots=True)
class ReadyNotify:
    """Ready once the child sends ``READY=1`` to ``$NOTIFY_SOCKET`` (sd_notify)."""


ReadyCheck = ReadyLine | ReadyTcp | ReadyNotify


class Ready:
    """Constructors for readiness checks: ``Ready.line(...)``, ``Ready.tcp(...)``,
    ``Ready.notify()``."""

    @staticmethod
    def line(
        pattern: str | bytes | re.Pattern[bytes],
        stream: Literal["stdout", "stderr", "any"] = "any",
    ) -> ReadyLine:
        """Ready when an output line matches ``pattern`` (a regex, searched anywhere in the
        line) on ``stream``."""
        if isinstance(pattern, str):
            pattern = pattern.encode()
        if isinstance(pattern, bytes):
            pattern = re.compile(pattern)
        if stream not in ("stdout", "stderr", "any"):
            raise ValueError(f"stream must be 'stdout', 'stderr' or 'any', not {stream!r}")
        return ReadyLine(pattern, stream)

    @staticmethod
    def tcp(port: int, host: str = "127.0.0.1", *, interval: float = 0.2) -> ReadyTcp:
        """Ready when ``host:port`` accepts a connection."""
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"port must be an int in 1..65535, not {port!r}")
        return ReadyTcp(port, host, interval)

    @staticmethod
    def notify() -> ReadyNotify:
        """Ready when the child sends ``READY=1`` over sd_notify (``NOTIFY_SOCKET``)."""
        return ReadyNotify()


class NotifySocket:
    """A private sd_notify datagram socket for one child.

    It lives in a fresh directory only this user can enter, so no other user can forge a
    ``READY=1``; one socket per child means every message is known to come from that child's
    process tree without checking credentials.
    """

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="aproc-notify-")
        self.path = os.path.join(self._dir, "notify.sock")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._sock.bind(self.path)
            self._sock.setblocking(False)
        except BaseException:
            self.close()
            raise

    async def receive(self) -> dict[str, str]:
        """The next message, as its ``KEY=VALUE`` lines."""
        while True:
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                await anyio.wait_readable(self._sock)
                continue
            fields: dict[str, str] = {}
            for line in data.decode(errors="replace").splitlines():
                key, sep, value = line.partition("=")
                if sep:
                    fields[key] = value
            return fields

    def close(self) -> None:
        if self._sock.fileno() >= 0:
            try:
                anyio.notify_closing(self._sock)
            except Exception:
                pass  # no event loop in this thread: nobody can be waiting on it
            self._sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        try:
            os.rmdir(self._dir)
        except OSError:
            pass
