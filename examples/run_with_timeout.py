"""run(): capture output, check the exit code, and stop a child that takes too long.

python examples/run_with_timeout.py [asyncio|trio]
"""

import subprocess
import sys

import anyio

import aproc


async def main() -> None:
    result = await aproc.run(["uname", "-s"])
    print(f"uname says {result.stdout.decode().strip()!r}")

    try:
        await aproc.run(["sh", "-c", "echo to stderr >&2; exit 4"])
    except subprocess.CalledProcessError as exc:
        print(f"exit {exc.returncode}, stderr {exc.stderr!r}")

    try:
        await aproc.run(["sh", "-c", "echo working; exec sleep 60"], timeout=0.5)
    except aproc.ProcessTimeoutError as exc:  # also a TimeoutError and a TimeoutExpired
        print(f"stopped after {exc.timeout} s; it had printed {exc.stdout!r}")


if __name__ == "__main__":
    anyio.run(main, backend=sys.argv[1] if len(sys.argv) > 1 else "asyncio")
