"""Stream a child's output line by line while it runs, on any anyio backend.

python examples/stream_lines.py [asyncio|trio]
"""

import sys

import anyio

import aproc


async def main() -> None:
    script = "for i in 1 2 3; do echo line $i; done; printf 'no newline at the end'"
    async with await aproc.spawn(["sh", "-c", script], stdout=aproc.PIPE) as proc:
        assert proc.stdout is not None
        async for line in proc.stdout.lines():
            print(f"[pid {proc.pid}] {line.decode()}")
    print(f"exited with {proc.returncode}")


if __name__ == "__main__":
    anyio.run(main, backend=sys.argv[1] if len(sys.argv) > 1 else "asyncio")
