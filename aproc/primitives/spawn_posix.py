"""The fast launcher: glibc's posix_spawn, called through ctypes.

glibc implements posix_spawn with ``clone(CLONE_VM | CLONE_VFORK)``: the child borrows the
parent's memory until it execs, so the cost does not grow with the parent's size (fork copies
page tables: ~60 ms from a 2 GB parent; PITFALLS.md 2), and glibc reports an exec failure as the
return value after reaping the failed child itself. ``os.posix_spawn`` cannot express two things
every request needs: a working directory and "close every other fd". glibc has both as
``posix_spawn_file_actions_addchdir_np`` (2.29) and ``addclosefrom_np`` (2.34), so this module
calls posix_spawn directly. Where they are missing (musl, macOS, old glibc), :data:`AVAILABLE` is
False and callers use the fork/execve launcher instead.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import stat
from typing import Any

from .fds import close_fds, lift_stdio_sources
from .request import SpawnRequest

__all__ = ["AVAILABLE", "posix_spawn"]

# glibc's <spawn.h> flag values (identical on every architecture glibc supports).
_SETPGROUP = 0x02
_SETSIGDEF = 0x04
_SETSIGMASK = 0x08
_SETSID = 0x80

# sizeof(posix_spawn_file_actions_t) is 80 and sizeof(posix_spawnattr_t) 336 on 64-bit glibc,
# sizeof(sigset_t) 128; the buffers are generous so no architecture can overflow them.
_ACTIONS_SIZE = 256
_ATTR_SIZE = 1024
_SIGSET_SIZE = 256


def _add_signal(sigset: Any, sig: int) -> None:
    """Set ``sig`` in a glibc sigset_t by hand: sigaddset refuses the signals glibc reserves."""
    bits = 8 * ctypes.sizeof(ctypes.c_ulong)
    words = (ctypes.c_ulong * (_SIGSET_SIZE // ctypes.sizeof(ctypes.c_ulong))).from_buffer(sigset)
    words[(sig - 1) // bits] |= 1 << ((sig - 1) % bits)


def _load() -> tuple[Any, Any, Any, Any, Any] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.posix_spawn_file_actions_addclosefrom_np  # noqa: B018 - probe for glibc >= 2.34
        libc.posix_spawn_file_actions_addchdir_np  # noqa: B018
        environ = ctypes.c_void_p.in_dll(libc, "environ")
    except (OSError, AttributeError, ValueError):
        return None
    full = ctypes.create_string_buffer(_SIGSET_SIZE)
    empty = ctypes.create_string_buffer(_SIGSET_SIZE)
    reserved = ctypes.create_string_buffer(_SIGSET_SIZE)
    libc.sigfillset(full)
    libc.sigemptyset(empty)
    libc.sigemptyset(reserved)
    # glibc's sigfillset leaves out the signals it reserves for itself (SIGCANCEL and SIGSETXID,
    # 32 and 33), and its posix_spawn sets every reserved signal that is not in sigdefault to
    # SIG_IGN in the child, a disposition that survives exec. Add them to sigdefault by hand.
    for sig in range(1, signal.NSIG):
        if libc.sigismember(full, sig) == 0:
            _add_signal(full, sig)
            _add_signal(reserved, sig)
    return libc, environ, full, empty, reserved


_loaded = _load()
AVAILABLE: bool = _loaded is not None
"""True when glibc's posix_spawn with addchdir_np and addclosefrom_np can be used here."""


def _cstrings(items: list[bytes]) -> Any:
    array: Any = (ctypes.c_char_p * (len(items) + 1))()
    array[: len(items)] = items
    return array


def _diagnose_cwd(cwd: bytes) -> OSError | None:
    """Return the error chdir(cwd) would raise, or None if it would succeed.

    posix_spawn returns a bare errno for any failed step; when the request had a cwd, this
    tells a chdir failure (filename = the cwd) from an exec failure (filename = the program).
    """
    name = os.fsdecode(cwd)
    try:
        st = os.stat(name)
    except OSError as exc:
        return exc
    if not stat.S_ISDIR(st.st_mode):
        return NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), name)
    if not os.access(name, os.X_OK):
        return PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)
    return None


_attribute_cache: dict[tuple[bool, bool, int | None], Any] = {}


def _attributes(reset_signals: bool, new_session: bool, process_group: int | None) -> Any:
    """The posix_spawnattr_t for these settings, built once and reused: posix_spawn only reads
    it, and a spawn should not pay for 60-odd sigset operations every time."""
    key = (reset_signals, new_session, process_group)
    attr = _attribute_cache.get(key)
    if attr is not None:
        return attr
    assert _loaded is not None
    libc, _, full, empty, reserved = _loaded
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    libc.posix_spawnattr_init(attr)
    flags = _SETSIGMASK | _SETSIGDEF
    rc = libc.posix_spawnattr_setsigmask(attr, empty)
    # reset_signals puts every signal back to SIG_DFL; without it, only the ones glibc reserves
    # (see _load), which the parent never ignores but glibc would leave ignored.
    rc = rc or libc.posix_spawnattr_setsigdefault(attr, full if reset_signals else reserved)
    if new_session:
        flags |= _SETSID
    if process_group is not None:
        flags |= _SETPGROUP
        rc = rc or libc.posix_spawnattr_setpgroup(attr, process_group)
    rc = rc or libc.posix_spawnattr_setflags(attr, ctypes.c_short(flags))
    if rc:
        libc.posix_spawnattr_destroy(attr)
        raise OSError(rc, os.strerror(rc))
    if process_group in (None, 0):  # joining group N is rare and N varies: don't hoard those
        _attribute_cache[key] = attr
    return attr


def posix_spawn(request: SpawnRequest) -> int:
    """Start ``request`` with posix_spawn; return the child's pid.

    Raises the exec failure as the exact OSError (errno, strerror, ``filename`` = the program,
    or the cwd when the working directory is the problem); the failed child has already been
    reaped by glibc. Raises RuntimeError if the request needs the fork launcher
    (``request.needs_fork``) or posix_spawn is not :data:`AVAILABLE`.
    """
    if _loaded is None:
        raise RuntimeError("glibc posix_spawn with addchdir_np/addclosefrom_np is not available")
    if request.needs_fork:
        raise RuntimeError("this request needs the fork/execve launcher")
    libc, environ, _, _, _ = _loaded
    attr = _attributes(request.reset_signals, request.start_new_session, request.process_group)
    stdio, temps = lift_stdio_sources(request.stdio)
    actions = ctypes.create_string_buffer(_ACTIONS_SIZE)
    libc.posix_spawn_file_actions_init(actions)
    try:
        rc = 0
        if request.cwd is not None:
            rc = rc or libc.posix_spawn_file_actions_addchdir_np(actions, request.cwd)
        for target, src in enumerate(stdio):
            # glibc >= 2.29 clears close-on-exec for adddup2(fd, fd), which is what we want
            # when a source already sits on its target.
            if src is not None:
                rc = rc or libc.posix_spawn_file_actions_adddup2(actions, src, target)
        keep = request.pass_fds
        for fd in keep:
            rc = rc or libc.posix_spawn_file_actions_adddup2(actions, fd, fd)
        if keep:
            # Close the gaps below the highest kept fd one by one (glibc ignores EBADF for an
            # fd that was not open), then everything above it in one close_range.
            kept = set(keep)
            for fd in range(3, keep[-1]):
                if fd not in kept:
                    rc = rc or libc.posix_spawn_file_actions_addclose(actions, fd)
        rc = rc or libc.posix_spawn_file_actions_addclosefrom_np(
            actions, (keep[-1] + 1) if keep else 3
        )
        if rc:
            raise OSError(rc, os.strerror(rc))
        argv = _cstrings(list(request.argv))
        envp = environ if request.env is None else _cstrings([k + b"=" + v for k, v in request.env])
        pid = ctypes.c_int(0)
        rc = libc.posix_spawn(ctypes.byref(pid), request.executable, actions, attr, argv, envp)
    finally:
        libc.posix_spawn_file_actions_destroy(actions)
        close_fds(*temps)
    if rc:
        if request.cwd is not None:
            cwd_error = _diagnose_cwd(request.cwd)
            if cwd_error is not None:
                raise cwd_error
        raise OSError(rc, os.strerror(rc), request.program_name)
    return pid.value
