"""A shell-style pipeline wired with OS pipes: no byte passes through Python.

python examples/pipeline.py [asyncio|trio]
"""

import sys

import anyio

import aproc


async def main() -> None:
    result = await aproc.run_pipeline(
        [["printf", "pear\\napple\\nfig\\napple\\n"], ["sort"], ["uniq", "-c"]]
    )
    print(result.stdout.decode(), end="")
    print(f"returncodes per stage: {result.returncodes}")

    # pipefail: the last non-zero code wins, as with `set -o pipefail`.
    failing = await aproc.run_pipeline([["sh", "-c", "exit 3"], ["cat"]], check=False)
    print(f"{failing.command!r} -> {failing.returncode}")


if __name__ == "__main__":
    anyio.run(main, backend=sys.argv[1] if len(sys.argv) > 1 else "asyncio")
