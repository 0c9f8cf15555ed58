"""The synchronous primitives on their own: spawn with a pipe, read, reap, decode.

python examples/primitives_spawn.py
"""

import os

from aproc.primitives import SpawnRequest, close_fds, pipe, spawn, wait_blocking


def main() -> None:
    read_end, write_end = pipe()
    try:
        request = SpawnRequest.create(["sh", "-c", "echo hello from $0; exit 3"], stdout=write_end)
        pid = spawn(request)  # posix_spawn here; fork/execve when the request needs it
    finally:
        close_fds(write_end)  # the parent's copy: the reader sees EOF when the child exits
    output = b""
    while chunk := os.read(read_end, 65536):
        output += chunk
    close_fds(read_end)
    status = wait_blocking(pid)
    print(f"child {pid} wrote {output!r} and exited with {status.returncode}")

    try:
        spawn(SpawnRequest.create(["no-such-program"]))
    except FileNotFoundError as exc:
        print(f"exec failure surfaces at spawn: {exc.strerror}: {exc.filename!r}")


if __name__ == "__main__":
    main()
