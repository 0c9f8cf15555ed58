"""A small supervised system, with its lifecycle logged through structlog.

- "web" serves HTTP on a free port and counts as ready once the port accepts connections;
- "poller" depends on "web", so it starts only when "web" is ready, and fetches a page now and
  then;
- "flaky" does a little work and crashes now and then: it is restarted with capped exponential
  backoff, and the supervisor gives up only if crashes come faster than the restart intensity.

After ``--seconds`` the supervisor stops everything in reverse start order and the script
exits 0.

    python examples/supervise_workers.py [asyncio|trio] [--seconds 3]
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys

import anyio
import structlog

import aproc

FLAKY = """
import random, sys, time
for step in range(random.randint(1, 3)):
    time.sleep(0.2)
    print(f"working, step {step}")
print("oops, crashing")
sys.exit(1)
"""

POLLER = """
import sys, time, urllib.request
while True:
    with urllib.request.urlopen(sys.argv[1]) as response:
        print(f"GET {sys.argv[1]} -> {response.status}")
    time.sleep(1)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def main(seconds: float) -> None:
    port = free_port()
    py = sys.executable
    children = [
        aproc.ChildSpec(
            "web",
            [py, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
            ready=aproc.Ready.tcp(port),
            start_timeout=10,
            stop_timeout=2,
        ),
        aproc.ChildSpec(
            "poller", [py, "-c", POLLER, f"http://127.0.0.1:{port}/"], depends_on=["web"]
        ),
        aproc.ChildSpec(
            "flaky",
            [py, "-c", FLAKY],
            backoff=aproc.Backoff(initial=0.2, maximum=2.0, reset_after=2.0),
        ),
    ]
    async with aproc.Supervisor(children, max_restarts=10, max_seconds=10) as sup:
        with anyio.move_on_after(seconds):
            await sup.wait()
        for child in sup.status():
            print(f"{child.name}: {child.state}, pid {child.pid}, {child.restarts} restarts")
    print("all children stopped")


def configure_logging() -> None:
    # The library never configures structlog; an application does, here for the console and
    # without the debug-level process.spawned / process.exited events.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S.%f"),
            structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty()),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backend", nargs="?", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument("--seconds", type=float, default=3.0, help="how long to run (default 3)")
    args = parser.parse_args()
    configure_logging()
    anyio.run(main, args.seconds, backend=args.backend)
