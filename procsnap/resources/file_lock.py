"""File locks and leases held by the tree (filelocks.img, file_lock_entry).

Found as CRIU finds them, through the ``lock:`` lines of fdinfo: the kernel
prints under an fd each lock whose file is that fd's open file description
(fs/locks.c show_fd_locks).  Which object owns a lock decides where it is
saved and who takes it again:

* POSIX (fcntl F_SETLK) -- owned by a process; the line names its pid.
  The line also shows under fds of other processes that share the
  description, so only the owner's own fd records it; a POSIX lock whose
  owner is outside the tree is refused.
* OFD (F_OFD_SETLK), flock -- owned by the open file description: saved
  once per description, re-taken through the first fd that gets it back,
  and shared by every fd and process that shares it, as before.
* Leases (F_SETLEASE, "ACTIVE") -- owned by the description too.  A lease
  being broken (BREAKING/BREAKER) is refused, as are delegations and any
  kind the kernel adds later.

CRIU saves locks only when asked (``--file-locks``); without it the dump
is refused, naming the pid, fd and lock -- the same option, the same
meaning.  At restore each lock is taken again inside the task that owned
it (injected fcntl/flock), non-blocking: a lock that cannot be had now is
a failed restore, not a tree that waits forever.
"""
from __future__ import annotations

import os
import struct
from ..record import field, record
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from ..errors import ImageError, ParseError, RestoreError, Unsupported
from ..images.pb import file_lock_pb2
from ..inject import InjectError
from ..procfs.parse import LockLine, parse_lock_line
from . import fdaudit

if TYPE_CHECKING:
    from ..tasks import DumpContext
    from ..tasks import RestoreContext, RestoreTask
    from ..tasks import FdCtx

NAME = "filelocks"
# CRIU's criu/include/file-lock.h
FL_POSIX, FL_FLOCK, FL_OFD, FL_LEASE = 1, 2, 4, 8
F_RDLCK, F_WRLCK, F_UNLCK = 0, 1, 2
LEASE_BREAKING = 4
F_SETLK = 6
F_OFD_SETLK = 37
F_SETLEASE = 1024
LOCK_SH, LOCK_EX, LOCK_NB = 1, 2, 4
SEEK_SET = 0
_FLAG = {"POSIX": FL_POSIX, "FLOCK": FL_FLOCK, "OFDLCK": FL_OFD, "LEASE": FL_LEASE}
_TYPE = {"READ": F_RDLCK, "WRITE": F_WRLCK}
_NAMES = {FL_POSIX: "POSIX lock", FL_FLOCK: "flock", FL_OFD: "OFD lock", FL_LEASE: "lease"}
# struct flock on x86_64: short l_type, short l_whence, (pad), off_t l_start,
# off_t l_len, pid_t l_pid, (pad)
_FLOCK = struct.Struct("<hh4xqqi4x")


# Bookkeeping compared by identity, without a generated repr: dataclass()
# compiles __eq__ and __repr__ at import, at every start of procsnap.
@record(eq=False, repr=False)
class _State:
    """The locks met during one dump."""
    entries: list[Any] = field(default_factory=list)
    seen: set[tuple[Any, ...]] = field(default_factory=set)
    # POSIX locks seen under another process's fd: (owner pid, start, end, type) -> where
    foreign: dict[tuple[int, int, int | None, str], str] = field(default_factory=dict)


def _state(ctx: "DumpContext") -> _State:
    st = ctx.kind_state.get(NAME)
    if st is None:
        st = ctx.kind_state[NAME] = _State()
    return st


def describe(lk: LockLine) -> str:
    rng = f"{lk.start}-{'EOF' if lk.end is None else lk.end}"
    if lk.kind == "FLOCK":
        return f"a {lk.type.lower()} flock"
    if lk.kind == "LEASE":
        return f"a {lk.type.lower()} lease ({lk.mode.lower()})"
    if lk.kind in ("POSIX", "OFDLCK"):
        name = "POSIX" if lk.kind == "POSIX" else "OFD"
        return f"a {name} {lk.type.lower()} lock on bytes {rng}"
    return f"a {lk.kind} {lk.mode} {lk.type} lock"


def note(fd: "FdCtx", fid: int) -> None:
    """Record the locks fdinfo shows under ``fd`` (file id ``fid``)."""
    assert fd.info is not None
    pid = fd.task.pid
    for line in fd.info.lines:
        if fdaudit.fdinfo_key(line) != "lock":
            continue
        try:
            lk = parse_lock_line(line, f"/proc/{pid}/fdinfo/{fd.fd}")
        except ParseError as exc:
            raise Unsupported(f"pid {pid}: fd {fd.fd}: {fd.link}: {exc}") from None
        what = f"pid {pid}: fd {fd.fd}: {fd.link} holds {describe(lk)}"
        flag = _FLAG.get(lk.kind)
        if flag is None or lk.type not in _TYPE:
            raise Unsupported(f"{what}; procsnap does not know how to restore it")
        if flag == FL_LEASE and lk.mode != "ACTIVE":
            raise Unsupported(f"{what}, which is being broken; not supported")
        if not fd.ctx.opts.file_locks:
            raise Unsupported(f"{what}; dump it with --file-locks")
        st = _state(fd.ctx)
        if flag == FL_POSIX:
            if lk.pid != pid:
                # The owner's own fd on this description shows it too.
                st.foreign.setdefault((lk.pid, lk.start, lk.end, lk.type), what)
                continue
            key: tuple[Any, ...] = (flag, pid, lk.start, lk.end, lk.type)
        else:
            key = (flag, fid, lk.start, lk.end, lk.type)
        if key in st.seen:
            continue  # another fd on the same description, or the POSIX owner's other fd
        st.seen.add(key)
        length = 0 if lk.end is None else lk.end + 1 - lk.start
        st.entries.append(file_lock_pb2.file_lock_entry(
            flag=flag, type=_TYPE[lk.type], pid=pid, fd=fd.fd, start=lk.start, len=length))


def finish(ctx: "DumpContext") -> None:
    st = ctx.kind_state.get(NAME)
    if st is None:
        return
    for (owner, start, end, typ), what in st.foreign.items():
        if (FL_POSIX, owner, start, end, typ) not in st.seen:
            raise Unsupported(f"{what}, owned by pid {owner} outside the dumped tree; "
                              "after restore nobody would hold it")
    for e in st.entries:
        ctx.add_shared(NAME, e)


# ------------------------------------------------------------- restore ----

def _entries(rctx: "RestoreContext") -> dict[int, list[Any]]:
    by_pid = rctx.kind_state.get(NAME)
    if by_pid is None:
        by_pid = rctx.kind_state[NAME] = {}
        for e in rctx.payload_entries(NAME):
            by_pid.setdefault(rctx.outside_pid(e.msg.pid), []).append(e.msg)
    return by_pid


def restore_task(rctx: "RestoreContext", rt: "RestoreTask") -> None:
    """Take again, inside ``rt``, every lock it owned (its fds are all placed)."""
    mine = _entries(rctx).get(rctx.dumped_pid(rt.pid), [])
    fds = {fe.fd for fe in rt.fdinfos}
    for e in mine:
        if e.fd not in fds or e.flag not in _NAMES or e.type not in (F_RDLCK, F_WRLCK):
            raise ImageError(rt.image_name(NAME), f"lock entry {e} does not match the "
                             f"fds of pid {rt.pid}")
        what = (f"pid {rt.pid}: fd {e.fd}: {_NAMES[e.flag]} "
                f"({'write' if e.type == F_WRLCK else 'read'}, {e.start}+{e.len or 'EOF'})")
        inj = rt.inj
        try:
            if e.flag in (FL_POSIX, FL_OFD):
                buf = inj.put(_FLOCK.pack(e.type, SEEK_SET, e.start, e.len, 0), align=8)
                inj.call("fcntl", e.fd, F_SETLK if e.flag == FL_POSIX else F_OFD_SETLK, buf)
            elif e.flag == FL_FLOCK:
                inj.call("flock", e.fd, (LOCK_EX if e.type == F_WRLCK else LOCK_SH) | LOCK_NB)
            else:
                inj.call("fcntl", e.fd, F_SETLEASE, e.type)
        except InjectError as exc:
            raise RestoreError(f"{what}: cannot be taken again: "
                               f"{os.strerror(exc.errno or 0)}") from None
        finally:
            inj.reset_scratch()
