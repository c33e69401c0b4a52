"""Read one process's files under /proc, turning errno into procsnap errors.

All errno handling is in one place, ``proc_errors`` (used by the
``wrap_exceptions`` decorator on every ``ProcReader`` method and by
``pagemap.read_pagemap``):

* ESRCH, or ENOENT when /proc/PID itself is gone → ``NoSuchProcess``.
* ESRCH or ENOENT while the process is a zombie → ``ZombieProcess`` (a
  zombie has no mm, no fds, no exe link; the kernel says ESRCH for some
  files and ENOENT for others).
* ENOENT while /proc/PID is still there otherwise → the plain
  ``FileNotFoundError`` is re-raised.  That is the "this one object went
  away" case: an fd closed between ``fds()`` and ``fd_link()``, or a file
  an older kernel does not have.  Callers catch it on purpose.
* EPERM/EACCES → ``AccessDenied`` naming the pid and the file.
* ``ParseError`` and anything else pass through untouched.

Races are expected, not exceptional: the process may exit, close fds or
unmap memory between two reads unless the caller has frozen it.  This
module does not detect pid reuse; the dumper works on a seized tree.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import os
from collections.abc import Callable, Iterator
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Concatenate, ParamSpec, TypeVar

from procsnap.errors import AccessDenied, NoSuchProcess, ParseError, ZombieProcess
from procsnap.procfs import parse
from procsnap.procfs.parse import FdInfo, MapEntry, MountInfo, PosixTimer, Stat, Status

__all__ = ["ProcReader", "proc_errors", "wrap_exceptions", "is_kernel_thread",
           "PF_KTHREAD"]

# include/linux/sched.h
PF_KTHREAD = 0x00200000

if TYPE_CHECKING:
    _P = ParamSpec("_P")
    _R = TypeVar("_R")


def _is_zombie(pid: int, proc_root: str) -> bool:
    try:
        with open(f"{proc_root}/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    # State is the first field after the last ')' (comm may hold ')').
    tail = data[data.rfind(b")") + 1:].split(None, 1)
    return bool(tail) and tail[0] in (b"Z", b"X")


@contextlib.contextmanager
def proc_errors(pid: int, proc_root: str = "/proc") -> Iterator[None]:
    """Translate an ``OSError`` raised inside the block (see module doc)."""
    try:
        yield
    except PermissionError as err:
        where = err.filename or f"{proc_root}/{pid}"
        raise AccessDenied(pid, f"pid {pid}: permission denied reading {where}") from err
    except ProcessLookupError as err:
        # ESRCH also means "no mm" for files opened through mm_access()
        # (auxv, mem, environ, pagemap) while the task is a zombie.
        if _is_zombie(pid, proc_root):
            raise ZombieProcess(pid) from err
        raise NoSuchProcess(pid) from err
    except FileNotFoundError:
        # Same test as psutil: the entry is missing, but is the process?
        if not os.path.exists(f"{proc_root}/{pid}"):
            raise NoSuchProcess(pid) from None
        if _is_zombie(pid, proc_root):
            raise ZombieProcess(pid) from None
        raise
    except OSError as err:
        # EPERM/EACCES arrive as PermissionError and ESRCH as
        # ProcessLookupError; a few paths report ESRCH as a plain OSError.
        if err.errno == errno.ESRCH:
            if _is_zombie(pid, proc_root):
                raise ZombieProcess(pid) from err
            raise NoSuchProcess(pid) from err
        raise


def wrap_exceptions(
    method: Callable[Concatenate[ProcReader, _P], _R],
) -> Callable[Concatenate[ProcReader, _P], _R]:
    """Run a ``ProcReader`` method inside ``proc_errors`` for its pid."""

    @functools.wraps(method)
    def wrapper(self: ProcReader, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with proc_errors(self.pid, self.proc_root):
            return method(self, *args, **kwargs)

    return wrapper


class ProcReader:
    """Typed access to /proc/PID.

    Every method reads the file afresh (no caching): the dumper reads a
    stopped process once per item, and a stale cache would hide races.
    Text is decoded with surrogateescape so non-UTF-8 paths survive.
    """

    __slots__ = ("pid", "proc_root", "_base")

    def __init__(self, pid: int, proc_root: str = "/proc") -> None:
        self.pid = pid
        self.proc_root = proc_root
        self._base = f"{proc_root}/{pid}"

    def __repr__(self) -> str:
        return f"ProcReader(pid={self.pid}, proc_root={self.proc_root!r})"

    def path(self, name: str) -> str:
        """The full path of /proc/PID/``name``."""
        return f"{self._base}/{name}"

    # -- raw access; callers outside this class go through the methods -----

    def _read_bytes(self, name: str) -> bytes:
        with open(self.path(name), "rb") as f:
            return f.read()

    def _read_text(self, name: str) -> str:
        return os.fsdecode(self._read_bytes(name))

    def _readlink(self, name: str) -> str:
        return os.readlink(self.path(name))

    def _raise_if_zombie(self) -> None:
        """An empty mm file means no mm: say ZombieProcess when that's why."""
        if _is_zombie(self.pid, self.proc_root):
            raise ZombieProcess(self.pid)

    # -- parsed files -------------------------------------------------------

    @wrap_exceptions
    def stat(self) -> Stat:
        return parse.parse_stat(self._read_text("stat"), self.path("stat"))

    @wrap_exceptions
    def status(self) -> Status:
        return parse.parse_status(self._read_text("status"), self.path("status"))

    @wrap_exceptions
    def thread_stat(self, tid: int) -> Stat:
        name = f"task/{tid}/stat"
        return parse.parse_stat(self._read_text(name), self.path(name))

    @wrap_exceptions
    def thread_status(self, tid: int) -> Status:
        name = f"task/{tid}/status"
        return parse.parse_status(self._read_text(name), self.path(name))

    @wrap_exceptions
    def maps(self) -> list[MapEntry]:
        """VMAs in address order; ``ZombieProcess`` for a zombie.

        A kernel thread has no VMAs and gives an empty list.
        """
        text = self._read_text("maps")
        if not text:
            self._raise_if_zombie()
        return parse.parse_maps(text, self.path("maps"))

    @wrap_exceptions
    def smaps(self) -> list[MapEntry]:
        """VMAs as ``maps()`` gives them, with their VmFlags and protection
        key.  Costly for big processes (the kernel walks every page table
        to count Rss): read it once per task."""
        text = self._read_text("smaps")
        if not text:
            self._raise_if_zombie()
        return parse.parse_smaps(text, self.path("smaps"))

    @wrap_exceptions
    def auxv(self) -> list[int]:
        data = self._read_bytes("auxv")
        if not data:
            self._raise_if_zombie()
        return parse.parse_auxv(data, self.path("auxv"))

    @wrap_exceptions
    def mountinfo(self) -> list[MountInfo]:
        return parse.parse_mountinfo(self._read_text("mountinfo"), self.path("mountinfo"))

    @wrap_exceptions
    def limits(self) -> dict[str, tuple[int, int]]:
        return parse.parse_limits(self._read_text("limits"), self.path("limits"))

    @wrap_exceptions
    def timers(self) -> list[PosixTimer]:
        return parse.parse_timers(self._read_text("timers"), self.path("timers"))

    @wrap_exceptions
    def comm(self) -> str:
        # Only the one newline the kernel appends is dropped: comm may
        # legitimately end in spaces.
        return self._read_text("comm").removesuffix("\n")

    @wrap_exceptions
    def personality(self) -> int:
        """personality(2) value; reading it needs ptrace-attach rights."""
        text = self._read_text("personality")
        try:
            return int(text, 16)
        except ValueError:
            raise ParseError(self.path("personality"), f"not hex: {text!r}") from None

    @wrap_exceptions
    def cmdline(self) -> list[str]:
        """argv; empty for kernel threads, ``ZombieProcess`` for zombies."""
        data = self._read_text("cmdline")
        if not data:
            self._raise_if_zombie()
            return []
        args = data.split("\0")
        # argv ends in NUL, so the last item is empty; a process that
        # rewrote its argv area (setproctitle) may not end in NUL.
        if args[-1] == "":
            args.pop()
        return args

    @wrap_exceptions
    def environ(self) -> dict[str, str]:
        """Initial environment; entries without '=' are skipped."""
        data = self._read_text("environ")
        if not data:
            self._raise_if_zombie()
        env: dict[str, str] = {}
        for item in data.split("\0"):
            key, sep, value = item.partition("=")
            if sep:
                env[key] = value
        return env

    # -- fds ----------------------------------------------------------------

    @wrap_exceptions
    def fds(self) -> list[int]:
        """Open fd numbers, sorted.  A zombie has none (``ZombieProcess``)."""
        fds = sorted(int(name) for name in os.listdir(self.path("fd")))
        if not fds:
            self._raise_if_zombie()
        return fds

    @wrap_exceptions
    def fd_link(self, fd: int) -> str:
        """readlink of /proc/PID/fd/FD; ``FileNotFoundError`` if fd closed."""
        return self._readlink(f"fd/{fd}")

    @wrap_exceptions
    def fdinfo(self, fd: int) -> FdInfo:
        """/proc/PID/fdinfo/FD; ``FileNotFoundError`` if fd closed."""
        name = f"fdinfo/{fd}"
        return parse.parse_fdinfo(self._read_text(name), self.path(name))

    # -- links and directories ----------------------------------------------

    @wrap_exceptions
    def cwd(self) -> str:
        return self._readlink("cwd")

    @wrap_exceptions
    def root(self) -> str:
        return self._readlink("root")

    @wrap_exceptions
    def exe(self) -> str:
        """Executable path as the kernel prints it (may end " (deleted)").

        Kernel threads have no exe: ``FileNotFoundError``.
        """
        return self._readlink("exe")

    @wrap_exceptions
    def tids(self) -> list[int]:
        """Thread ids (/proc/PID/task), sorted; the leader's tid is pid."""
        return sorted(int(name) for name in os.listdir(self.path("task")))


def is_kernel_thread(pid: int, proc_root: str = "/proc") -> bool:
    """True when pid is a kernel thread (PF_KTHREAD in its stat flags)."""
    return bool(ProcReader(pid, proc_root).stat().flags & PF_KTHREAD)
