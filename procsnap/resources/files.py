"""The fd table (fdinfo-N.img) and the fd kinds behind it (files.img).

Like CRIU's dump_one_file, the kind of every fd is decided by one ordered
chain, ``FD_KINDS``; an fd no kind claims is refused with the pid, the fd,
its flags and what readlink says it is -- never skipped.  A new fd kind is
one module with ``TYPE``, ``matches(fd)``, ``dump(fd, id)`` and
``open_fd(rctx, rt, entry)`` plus one line in ``FD_KINDS``.

Several fds that share one open file description (dup, inheritance) are
detected with kcmp(KCMP_FILE) and get one files.img entry; at restore the
description is opened once and duplicated, so offsets and flags stay
shared.
"""
from __future__ import annotations

import os
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from ..errors import RestoreError, Unsupported
from ..images.pb import fdinfo_pb2
from ..kernel.libc import syscall
from ..kernel import consts as C
from ..procfs.parse import FdInfo
from ..procfs.reader import ProcReader
from ..tasks import DumpTask, FdCtx
import importlib
import sys
from types import ModuleType

from . import fifo, memfd, nsfile, pipe, regfile, tty
from . import core, fdaudit, file_lock, fown

if TYPE_CHECKING:
    from ..tasks import DumpContext
    from ..tasks import RestoreContext, RestoreTask

NAME = "files"
KCMP_FILE = 0
KCMP_FILES = 2

# Order matters: the first kind whose matches() is true owns the fd
# (inetsk, last, also refuses by name every other socket family).
# nsfile before regfile: an nsfs inode is a regular file to stat.
_ORDER = ["tty", "memfd", "nsfile", "regfile", "pipe", "fifo", "eventfd", "signalfd", "timerfd",
          "eventpoll", "inotify", "fanotify", "pidfd", "unixsk", "netlinksk", "packetsk",
          "inetsk"]
# Kinds imported only when a dump meets an fd that may be one (what the
# link of every fd of theirs starts with) or a restore an entry of their
# type: a small process pays nothing for sockets and event fds.  (tty is
# always there: its finish settles controlling terminals, fd or not.)
_LAZY_PREFIX = {"eventfd": "anon_inode:", "signalfd": "anon_inode:", "timerfd": "anon_inode:",
                "eventpoll": "anon_inode:", "inotify": "anon_inode:", "fanotify": "anon_inode:",
                "pidfd": "anon_inode:",
                "unixsk": "socket:", "netlinksk": "socket:", "packetsk": "socket:",
                "inetsk": "socket:"}
_LAZY_TYPE: dict[int, str] = {fdinfo_pb2.EVENTFD: "eventfd", fdinfo_pb2.SIGNALFD: "signalfd",
              fdinfo_pb2.TIMERFD: "timerfd", fdinfo_pb2.EVENTPOLL: "eventpoll",
              fdinfo_pb2.INOTIFY: "inotify", fdinfo_pb2.FANOTIFY: "fanotify",
              fdinfo_pb2.PIDFD: "pidfd",
              fdinfo_pb2.UNIXSK: "unixsk", fdinfo_pb2.NETLINKSK: "netlinksk",
              fdinfo_pb2.PACKETSK: "packetsk", fdinfo_pb2.INETSK: "inetsk"}


def _kind_module(name: str) -> ModuleType:
    return importlib.import_module(f"{__package__}.{name}")


def _loaded(name: str) -> ModuleType | None:
    return sys.modules.get(f"{__package__}.{name}")


def kind_of(fdctx: FdCtx) -> Any:
    """The first kind in _ORDER that claims the fd (None: no kind does)."""
    for name in _ORDER:
        prefix = _LAZY_PREFIX.get(name)
        if prefix is not None and not fdctx.link.startswith(prefix):
            continue
        kind = _kind_module(name)
        if kind.matches(fdctx):
            return kind
    return None


def kind_by_type(t: int) -> Any:
    """The kind of files.img entries of type ``t``, or None."""
    name = _LAZY_TYPE.get(t)
    if name is not None:
        return _kind_module(name)
    return _EAGER_BY_TYPE.get(t)


_EAGER_BY_TYPE: dict[int, Any] = {k.TYPE: k for k in (tty, memfd, nsfile, regfile, pipe, fifo)}


def __getattr__(name: str) -> Any:
    """FD_KINDS and BY_TYPE, for who wants every kind (the audit tables,
    tests): importing all of them."""
    if name == "FD_KINDS":
        return [_kind_module(n) for n in _ORDER]
    if name == "BY_TYPE":
        return {k.TYPE: k for k in (_kind_module(n) for n in _ORDER)}
    raise AttributeError(name)

# fdinfo lines every kind prints (fs/proc/fd.c seq_show); a kind's own
# FDINFO may override one (see fdaudit for the rules).
COMMON_FDINFO = {
    "pos": fdaudit.saved("file position, in the kind's entry where it has one"),
    "flags": fdaudit.saved("open(2) flags: O_CLOEXEC in fdinfo.img, the rest in the kind's entry"),
    "mnt_id": fdaudit.irrelevant("names the mount to find the file by at dump; "
                                 "the restore opens by path in its own mounts"),
    "ino": fdaudit.irrelevant("the inode number the kind identifies the file by at dump"),
}


def _describe(link: str) -> str:
    if link.startswith("pipe:"):
        return "a pipe"
    if link.startswith("socket:"):
        return "a socket"
    if link.startswith("anon_inode:"):
        return f"an {link[len('anon_inode:'):].strip('[]')} fd"
    return "a file of an unsupported kind"


def _find_shared(known: list[tuple[int, int, int]], pid: int, fd: int) -> tuple[int, int | None]:
    """Binary search of ``known`` -- the descriptions already seen on one
    inode, kept in kcmp order -- for the one fd ``fd`` of ``pid`` uses.

    kcmp(KCMP_FILE) orders open file descriptions (0 same, 1 less, 2
    greater, by the kernel's own pointer order), so a process holding one
    file opened 10,000 times costs log2 kcmp calls an fd, not 10,000.
    Returns (insertion index, file id or None)."""
    lo, hi = 0, len(known)
    while lo < hi:
        mid = (lo + hi) // 2
        opid, ofd, fid = known[mid]
        try:
            order = syscall(C.NR["kcmp"], pid, opid, KCMP_FILE, fd, ofd)
        except OSError:
            order = 1
        if order == 0:
            return mid, fid
        if order == 1:
            hi = mid
        else:
            lo = mid + 1
    return lo, None


def dump(ctx: "DumpContext", task: "DumpTask") -> None:
    files_id = task.ids.files_id
    if core.shares_with_parent(ctx, task, "files_id"):
        return  # one table (CLONE_FILES): saved once, by the task it was seen in first
    entries: list[Any] = []
    seen = ctx.open_files
    for fd in task.proc.fds():
        try:
            link = task.proc.fd_link(fd)
            info = task.proc.fdinfo(fd)
        except FileNotFoundError:
            continue  # closed while... cannot happen under freeze, but be exact
        # ours, or the target's own fstat where a per-caller fs (FUSE) refuses us
        st = regfile.fd_stat(task, fd, info.mnt_id, info.ino)
        fdctx = FdCtx(ctx, task, fd, link, info, st)
        fd_flags = 1 if info.flags & os.O_CLOEXEC else 0
        shared_id = None
        at = 0
        known: list[tuple[int, int, int]] = []
        if st is not None:
            known = seen.setdefault((st.st_dev, st.st_ino), [])
            at, shared_id = _find_shared(known, task.pid, fd)
        # O_PATH: a name, whatever it names (see regfile.is_opath)
        kind = regfile if regfile.is_opath(fdctx) else kind_of(fdctx)
        if kind is None:
            raise Unsupported(f"pid {task.pid}: fd {fd} (flags {info.flags:o}) is {_describe(link)}: "
                              f"{link}: not supported yet")
        audit_fdinfo(kind, task.pid, fd, link, info)
        if shared_id is None:
            fid = ctx.new_file_id()
            entry = kind.dump(fdctx, fid)
            fown.attach(fdctx, entry)
            ctx.files.append(entry)
            if st is not None:
                known.insert(at, (task.pid, fd, fid))
        else:
            fid = shared_id
            note = getattr(kind, "note_shared", None)
            if note is not None:
                note(fdctx, fid)
        file_lock.note(fdctx, fid)
        entries.append(fdinfo_pb2.fdinfo_entry(id=fid, flags=fd_flags, type=kind.TYPE, fd=fd))
    task.extra_images.append(("fdinfo", files_id, entries))


def audit_fdinfo(kind: Any, pid: int, fd: int, link: str, info: FdInfo) -> None:
    """Every fdinfo line of ``fd`` is saved, irrelevant, or refused by the
    kind that owns it (``kind.FDINFO`` over ``COMMON_FDINFO``); a key
    neither declares is refused: a kernel that prints something new about
    an fd must not have it dropped silently."""
    rules = {**COMMON_FDINFO, **kind.FDINFO}
    for line in info.lines:
        key = fdaudit.fdinfo_key(line)
        rule = rules.get(key)
        value = line.partition(":")[2].strip()
        if rule is None:
            raise Unsupported(f"pid {pid}: fd {fd}: {link} ({kind.NAME}): fdinfo line {line!r} "
                              "is not known to procsnap; it would be lost")
        if rule.verdict == "refused" and rule.when is not None and rule.when(value):
            raise Unsupported(f"pid {pid}: fd {fd}: {link}: " + rule.message.format(value=value))


# Kinds of files that may be dumped in flight (in a unix socket's queued
# SCM_RIGHTS message): those whose dump does not read the holder's fd
# table, or that have a dump_in_flight of their own (an epoll names its
# targets by fd number of a table).
IN_FLIGHT = ("pipe", "fifo", "regfile", "memfd", "eventfd", "unixsk", "inetsk", "eventpoll")


def dump_in_flight(ctx: "DumpContext", fd: int, what: str) -> int:
    """File ``fd`` of the dumper itself -- a copy of a file in flight,
    which peeking a queue installed in us -- as a file of the dump (CRIU's
    dump_my_file): the same kind chain, one entry per open file
    description (kcmp finds it if a task holds it too).  Returns its id."""
    me = ctx.kind_state.get("files.me")
    if me is None:
        me = ctx.kind_state["files.me"] = DumpTask(os.getpid(), ProcReader(os.getpid()))
    link = me.proc.fd_link(fd)
    info = me.proc.fdinfo(fd)
    st = regfile.fd_stat(me, fd, info.mnt_id, info.ino)
    fdctx = FdCtx(ctx, me, fd, link, info, st)
    known: list[tuple[int, int, int]] = []
    at, shared_id = 0, None
    if st is not None:
        known = ctx.open_files.setdefault((st.st_dev, st.st_ino), [])
        at, shared_id = _find_shared(known, me.pid, fd)
    kind = kind_of(fdctx)
    if kind is None or kind.__name__.rsplit(".", 1)[1] not in IN_FLIGHT:
        raise Unsupported(f"{what} is {_describe(link)} ({link}); files of this kind in "
                          "flight are not supported")
    audit_fdinfo(kind, me.pid, fd, link, info)
    if shared_id is not None:
        note = getattr(kind, "note_shared", None)
        if note is not None:
            note(fdctx, shared_id)
        return shared_id
    fid = ctx.new_file_id()
    # (an epoll's own dump reads the holder's table; in flight it has none)
    try:
        entry = getattr(kind, "dump_in_flight", kind.dump)(fdctx, fid)
    except Unsupported as exc:
        if hasattr(kind, "dump_in_flight"):
            raise Unsupported(f"{what} is {exc}") from None
        raise
    fown.attach(fdctx, entry)
    ctx.files.append(entry)
    if st is not None:
        known.insert(at, (me.pid, fd, fid))
    file_lock.note(fdctx, fid)
    return fid


def finish(ctx: "DumpContext") -> None:
    """Let each fd kind settle what spans processes, once every task is seen.
    Kinds that find files in flight (FINISH_FIRST: unix sockets' queues)
    go first, so the files they add are settled with the rest."""
    ctx.kind_state["files.in_flight"] = lambda fd, what: dump_in_flight(ctx, fd, what)
    # Only the kinds this dump met (a kind not imported has no state):
    # those that find files in flight first, then the others -- including
    # kinds the files in flight brought in.
    for first in (True, False):
        for name in _ORDER:
            kind = _loaded(name)
            if kind is None or bool(getattr(kind, "FINISH_FIRST", False)) != first:
                continue
            done = getattr(kind, "finish", None)
            if done is not None:
                done(ctx)
    file_lock.finish(ctx)


def open_for(rctx: "RestoreContext", rt: "RestoreTask", fid: int) -> int:
    """Open file ``fid`` in task ``rt`` as its kind does (a temporary fd of
    the task's); for a file in flight, which unixsk sends along."""
    entry = rctx.file_entry(fid)
    kind = kind_by_type(entry.type)
    if kind is None:
        raise RestoreError(f"files.img: file {fid} in flight has type {entry.type}, "
                           "which procsnap cannot restore")
    return int(kind.open_fd(rctx, rt, entry))


def restore(rctx: "RestoreContext", rt: "RestoreTask") -> None:
    if rt.shares_files:
        return  # cloned with CLONE_FILES: its parent placed every fd already
    inj = rt.inj
    rctx.kind_state["files.open_for"] = lambda t, fid: open_for(rctx, t, fid)
    placed = rctx.placed  # file id -> (pid, fd) that first got it
    for fe in rt.fdinfos:
        entry = rctx.file_entry(fe.id)
        cloexec = os.O_CLOEXEC if fe.flags & 1 else 0
        if fe.id in placed:
            # One open file description shared by several fds: take it
            # from whoever has it (ourselves: dup; another task: pidfd_getfd).
            owner, ofd = placed[fe.id]
            tmp = ofd if owner == rt.pid else rt.grab_fd(owner, ofd)
            _place(inj, tmp, fe.fd, cloexec, keep_tmp=owner == rt.pid)
            continue
        kind = kind_by_type(entry.type)
        if kind is None:
            raise RestoreError(f"{rt.image_name('fdinfo')}: fd {fe.fd} has file type "
                               f"{fdinfo_pb2.fd_types.Name(entry.type) if entry.type in fdinfo_pb2.fd_types.values() else entry.type}, "
                               "which procsnap cannot restore yet")
        rt.open_cloexec = bool(cloexec)
        try:
            tmp = kind.open_fd(rctx, rt, entry)
        finally:
            rt.open_cloexec = False
        _place(inj, tmp, fe.fd, cloexec)
        placed[fe.id] = (rt.pid, fe.fd)
        inj.reset_scratch()
    # Kinds with an after_all(rctx, rt, entry, fd) finish once every fd of
    # the task is in place: epoll adds its targets by number, timers are
    # armed last.
    for fid in dict.fromkeys(fe.id for fe in rt.fdinfos):
        owner, fd = placed[fid]
        entry = rctx.file_entry(fid)
        after = getattr(kind_by_type(entry.type), "after_all", None)
        if after is not None and owner == rt.pid:
            after(rctx, rt, entry, fd)
            inj.reset_scratch()
    # Locks and leases once the task has every fd; owners last (a lease
    # sets the owner of its file to the task that takes it).
    file_lock.restore_task(rctx, rt)
    fown.restore_task(rctx, rt)


def _place(inj: Any, tmp: int, fd: int, cloexec: int, keep_tmp: bool = False) -> None:
    """Move (or copy) fd ``tmp`` to its number ``fd`` with the right FD_CLOEXEC."""
    if tmp != fd:
        inj.call("dup3", tmp, fd, cloexec)
        if not keep_tmp:
            inj.call("close", tmp)
    elif _has_cloexec(inj.pid, fd) != bool(cloexec):
        # (fdinfo, read from outside, spares the call when it is right already)
        inj.call("fcntl", fd, C.F_SETFD, 1 if cloexec else 0)


def _has_cloexec(pid: int, fd: int) -> bool:
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("flags:"):
                return bool(int(line.split()[1], 8) & os.O_CLOEXEC)
    return False
