"""The spawn request: one validated, normalised description of a child to start.

Everything that can be wrong with a request is found here, in the parent, before any fork
(PITFALLS.md 8): an empty argv, a bare string argv, NUL bytes, ``=`` in an environment key, a
program that is not on the child's PATH. The launchers then only have to carry it out.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Union

__all__ = ["SpawnRequest", "StrOrBytesPath", "find_program"]

StrOrBytesPath = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]


def _to_bytes(value: StrOrBytesPath, what: str) -> bytes:
    if isinstance(value, bytes):
        out = value
    elif isinstance(value, (str, os.PathLike)):
        out = os.fsencode(value)
    else:
        raise TypeError(f"{what} must be str, bytes or os.PathLike, not {type(value).__name__}")
    if b"\0" in out:
        raise ValueError(f"{what} contains a NUL byte: {value!r}")
    return out


def _env_pairs(env: Mapping[StrOrBytesPath, StrOrBytesPath]) -> tuple[tuple[bytes, bytes], ...]:
    pairs = []
    for key, value in env.items():
        k = _to_bytes(key, "environment variable name")
        if not k or b"=" in k:
            raise ValueError(f"illegal environment variable name: {key!r}")
        pairs.append((k, _to_bytes(value, f"environment variable {key!r}")))
    return tuple(pairs)


def _env_lookup(env: tuple[tuple[bytes, bytes], ...] | None, name: bytes) -> bytes | None:
    if env is None:
        return os.environb.get(name)
    for key, value in env:
        if key == name:
            return value
    return None


def find_program(program: bytes, *, path: bytes | None, cwd: bytes | None) -> bytes:
    """Resolve ``program`` as execvp would in the child, and return the path to execute.

    A program containing a slash is taken as it is, relative to the child's ``cwd``. Otherwise
    each PATH entry is tried (``path`` is the child's PATH, not necessarily ours; None means
    ``os.defpath``), relative entries against the child's ``cwd``. Raises FileNotFoundError,
    or PermissionError when a match exists but is not executable, with ``filename`` set to the
    program as given.
    """

    def seen_from_here(path: bytes) -> bytes:
        return path if cwd is None or path.startswith(b"/") else os.path.join(cwd, path)

    def for_exec(path: bytes) -> bytes:
        # Both launchers exec after chdir(cwd). Joining a *relative* cwd would apply it twice
        # ("sub/./x" looked up from inside "sub"), so only an absolute cwd is joined in.
        return seen_from_here(path) if cwd is not None and cwd.startswith(b"/") else path

    if b"/" in program:
        return for_exec(program)
    search = path if path is not None else os.fsencode(os.defpath)
    denied = False
    for entry in search.split(b":"):
        candidate = os.path.join(entry or b".", program)
        probe = seen_from_here(candidate)
        try:
            st = os.stat(probe)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        if os.access(probe, os.X_OK):
            return for_exec(candidate)
        denied = True
    name = os.fsdecode(program)
    if denied:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)


@dataclass(frozen=True, slots=True)
class SpawnRequest:
    """A child to start, validated. Build one with :meth:`create`, not the constructor.

    ``program`` is the program as the caller named it and ``executable`` the path resolved on
    the child's PATH. ``stdio`` maps the child's fd 0, 1 and 2 to a parent fd, or None to
    inherit the parent's own. ``pass_fds`` keep their numbers in the child; every other fd
    above 2 is closed.
    ``process_group`` follows ``os.posix_spawn``'s setpgroup: 0 makes the child the leader of a
    new group, N puts it into group N. The child always starts with an empty signal mask;
    ``reset_signals`` puts every signal disposition back to its default. With
    ``parent_death_signal`` (Linux) the kernel sends that signal to the child when the parent
    *thread* that spawned it exits, so a SIGKILLed supervisor leaves no orphans behind.
    """

    argv: tuple[bytes, ...]
    program: bytes
    executable: bytes
    env: tuple[tuple[bytes, bytes], ...] | None = None
    cwd: bytes | None = None
    stdio: tuple[int | None, int | None, int | None] = (None, None, None)
    pass_fds: tuple[int, ...] = ()
    start_new_session: bool = False
    process_group: int | None = None
    reset_signals: bool = True
    umask: int | None = None
    user: int | None = None
    group: int | None = None
    extra_groups: tuple[int, ...] | None = None
    rlimits: tuple[tuple[int, tuple[int, int]], ...] = field(default=())
    parent_death_signal: int | None = None

    @classmethod
    def create(
        cls,
        argv: Sequence[StrOrBytesPath],
        *,
        executable: StrOrBytesPath | None = None,
        env: Mapping[StrOrBytesPath, StrOrBytesPath] | None = None,
        cwd: StrOrBytesPath | None = None,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        pass_fds: Iterable[int] = (),
        start_new_session: bool = False,
        process_group: int | None = None,
        reset_signals: bool = True,
        umask: int | None = None,
        user: int | None = None,
        group: int | None = None,
        extra_groups: Iterable[int] | None = None,
        rlimits: Mapping[int, tuple[int, int]] | None = None,
        parent_death_signal: int | None = None,
    ) -> SpawnRequest:
        """Validate and normalise a request.

        Raises TypeError for a bare ``str``/``bytes`` argv (there is no implicit shell) or
        values of the wrong type, ValueError for an empty argv, NUL bytes, an illegal
        environment name or a negative fd, and FileNotFoundError/PermissionError (``filename``
        = the program) when the program cannot be found on the child's PATH.
        """
        if isinstance(argv, (str, bytes, os.PathLike)):
            raise TypeError(
                "argv must be a sequence of arguments, not a single string; "
                "use aproc.spawn_shell() to run a shell command line"
            )
        args = tuple(_to_bytes(a, f"argv[{i}]") for i, a in enumerate(argv))
        if not args:
            raise ValueError("argv must not be empty")
        env_pairs = None if env is None else _env_pairs(env)
        cwd_b = None if cwd is None else _to_bytes(cwd, "cwd")
        program = args[0] if executable is None else _to_bytes(executable, "executable")
        if not program:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), "")
        resolved = find_program(program, path=_env_lookup(env_pairs, b"PATH"), cwd=cwd_b)
        stdio = (stdin, stdout, stderr)
        fds = tuple(sorted(set(pass_fds)))
        for fd in (*stdio, *fds):
            if fd is not None and (not isinstance(fd, int) or isinstance(fd, bool) or fd < 0):
                raise ValueError(f"file descriptors must be non-negative ints, got {fd!r}")
        if process_group is not None and process_group < 0:
            raise ValueError(f"process_group must be >= 0, got {process_group}")
        return cls(
            argv=args,
            program=program,
            executable=resolved,
            env=env_pairs,
            cwd=cwd_b,
            stdio=stdio,
            pass_fds=tuple(fd for fd in fds if fd > 2),
            start_new_session=start_new_session,
            process_group=process_group,
            reset_signals=reset_signals,
            umask=umask,
            user=user,
            group=group,
            extra_groups=None if extra_groups is None else tuple(extra_groups),
            rlimits=() if rlimits is None else tuple(sorted(rlimits.items())),
            parent_death_signal=parent_death_signal,
        )

    @property
    def program_name(self) -> str:
        """The program as the caller named it: the ``filename`` of exec errors."""
        return os.fsdecode(self.program)

    @property
    def needs_fork(self) -> bool:
        """True when only the fork/execve launcher can carry the request out."""
        return (
            self.umask is not None
            or self.user is not None
            or self.group is not None
            or self.extra_groups is not None
            or bool(self.rlimits)
            or self.parent_death_signal is not None
        )
