"""epoll (fd kind EVENTPOLL, inline in files.img as file_entry.epfd).

Every registered file is one fdinfo "tfd:" line: the fd number it was
added under, the events (hex, with the EPOLLET/ONESHOT/... bits) and the
user data (hex).  CRIU 4.x keeps them inline in eventpoll_file_entry.tfd;
the separate eventpoll-tfd.img is an old format we do not write.

The fd number is only what the file was registered *under*.  If that fd
was closed and the number reused, while the registered file stays open
through another fd, the line still names the old number; re-adding that
number at restore would watch the wrong file.  So each target is checked
by identity with kcmp(KCMP_EPOLL_TFD): "is fd T of the task the file
registered in epoll E under number T?".  When it is not, the same kcmp
asked of every other fd of the task finds the fd that holds the file now
(``holder_fd``, a procsnap field); a file no fd of the task holds (only
another process, or nothing but a mapping) is a dump error.  CRIU
renumbers such a registration to the holder's fd; procsnap keeps the
number, since EPOLL_CTL_MOD/DEL and fdinfo name it.

At restore the epoll fd is created at once and its targets are added in
the after-all pass, once every fd they refer to is in place.  A target
with a holder is registered through its old number made a temporary
copy of the holder (dup3), and whatever held that number is put back
afterwards (with its FD_CLOEXEC): epoll keys a registration by (file,
number), and closing a number does not end a registration while the
file stays open.

An epoll in flight (in a queued SCM_RIGHTS message, zdtm scm05) has no
fd table: its targets are found among the files of the dump by identity
(kcmp of every fd of the tree on the same inode) and named by file id
(``target_id``, a procsnap field).  At restore it is sent empty, and once
every task is built the restorer registers each target on its own copy,
under the dumped number made the target for the call.  A target no task
of the tree holds is refused.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from ..errors import DumpError, RestoreError, Unsupported
from ..images.pb import eventpoll_pb2, fdinfo_pb2
from ..inject import InjectError
from ..kernel import consts as C
from ..kernel.libc import pidfd_getfd, syscall
from ..procfs.parse import fdinfo_records
from . import anonfd
from . import fdaudit

if TYPE_CHECKING:
    from ..tasks import RestoreContext, RestoreTask
    from ..tasks import FdCtx

NAME = "eventpoll"
FDINFO = {
    "tfd": fdaudit.saved("one eventpoll_tfd_entry per watched fd"),
}
TYPE = fdinfo_pb2.EVENTPOLL
_EVENT = struct.Struct("<IQ")  # struct epoll_event is packed on x86_64


class KcmpEpollSlot(ctypes.Structure):
    """struct kcmp_epoll_slot (include/uapi/linux/kcmp.h)."""
    _fields_ = [("efd", ctypes.c_uint32), ("tfd", ctypes.c_uint32),
                ("toff", ctypes.c_uint32)]


def matches(fd: "FdCtx") -> bool:
    # An idle epoll has no tfd lines: its readlink and the absence of
    # every other kind's keys is all there is.
    return fd.link == "anon_inode:[eventpoll]" and fd.info is not None


def _registered_as(pid: int, epfd: int, tfd: int, toff: int, cand: int | None = None) -> bool:
    """Is fd ``cand`` (default: ``tfd``) of ``pid`` the file epoll ``epfd``
    watches under number ``tfd``?"""
    slot = KcmpEpollSlot(epfd, tfd, toff)
    try:
        return syscall(C.NR["kcmp"], pid, pid, C.KCMP_EPOLL_TFD, tfd if cand is None else cand,
                       ctypes.addressof(slot)) == 0
    except OSError as exc:
        if exc.errno == errno.EBADF:
            return False  # no fd with that number any more
        raise DumpError(f"pid {pid}: fd {epfd}: kcmp(KCMP_EPOLL_TFD) on target {tfd}: "
                        f"{exc.strerror}") from None


def _holder(fd: "FdCtx", tfd: int, toff: int) -> int | None:
    """The fd of the task that holds the file epoll ``fd`` registered
    under number ``tfd`` (the toff-th such registration), or None."""
    pid = fd.task.pid
    for cand in fd.task.proc.fds():
        if cand != tfd and cand != fd.fd and _registered_as(pid, fd.fd, tfd, toff, cand):
            return cand
    return None


def dump(fd: "FdCtx", fid: int) -> Any:
    assert fd.info is not None
    pid = fd.task.pid
    flags = anonfd.file_flags(fd, "epoll")
    targets = []
    seen: dict[int, int] = {}
    for rec in fdinfo_records(fd.info, "tfd"):
        try:
            tfd = int(rec["tfd"])
            entry = eventpoll_pb2.eventpoll_tfd_entry(
                id=fid, tfd=tfd, events=int(rec["events"], 16), data=int(rec["data"], 16))
            if "pos" in rec:
                entry.pos = int(rec["pos"])
            if "ino" in rec:
                entry.inode = int(rec["ino"], 16)
            if "sdev" in rec:
                entry.dev = int(rec["sdev"], 16)
        except (KeyError, ValueError) as exc:
            raise DumpError(f"pid {pid}: fd {fd.fd}: epoll fdinfo line {rec}: {exc}") from None
        # The n-th registration under the same number, in the order the
        # kernel walks them for both fdinfo and kcmp.
        toff = seen.get(tfd, 0)
        seen[tfd] = toff + 1
        if not _registered_as(pid, fd.fd, tfd, toff):
            holder = _holder(fd, tfd, toff)
            if holder is None:
                raise DumpError(
                    f"pid {pid}: fd {fd.fd}: epoll watches a file registered as fd {tfd}, "
                    f"but fd {tfd} is now another file or closed and no fd of pid {pid} "
                    "holds that file (it stays open only in another process or a "
                    "mapping); cannot restore it")
            entry.holder_fd = holder
        targets.append(entry)
    return fdinfo_pb2.file_entry(
        type=TYPE, id=fid,
        epfd=eventpoll_pb2.eventpoll_file_entry(id=fid, flags=flags, fown=anonfd.no_owner(),
                                                tfd=targets))


def dump_in_flight(fd: "FdCtx", fid: int) -> Any:
    """An epoll in flight (a queued SCM_RIGHTS message; ``fd`` is the
    dumper's own copy).  Its targets were registered under fd numbers of
    some table, not ours: each is found among the files of the dump by
    identity, kcmp(KCMP_EPOLL_TFD) of every fd of the tree on the same
    inode against our copy's registration, and named by its file id."""
    assert fd.info is not None
    me = fd.task.pid
    ctx = fd.ctx
    flags = anonfd.file_flags(fd, "epoll")
    targets = []
    seen: dict[int, int] = {}
    for rec in fdinfo_records(fd.info, "tfd"):
        try:
            tfd = int(rec["tfd"])
            ino = int(rec["ino"], 16)
            entry = eventpoll_pb2.eventpoll_tfd_entry(
                id=fid, tfd=tfd, events=int(rec["events"], 16), data=int(rec["data"], 16),
                inode=ino, dev=int(rec["sdev"], 16), pos=int(rec.get("pos", "0")))
        except (KeyError, ValueError) as exc:
            raise DumpError(f"epoll in flight: fdinfo line {rec}: {exc}") from None
        toff = seen.get(tfd, 0)
        seen[tfd] = toff + 1
        slot = KcmpEpollSlot(fd.fd, tfd, toff)
        target = None
        for (_dev, st_ino), holders in ctx.open_files.items():
            if st_ino != ino:
                continue
            for pid, hfd, hfid in holders:
                try:
                    same = syscall(C.NR["kcmp"], pid, me, C.KCMP_EPOLL_TFD, hfd,
                                   ctypes.addressof(slot)) == 0
                except OSError:
                    same = False
                if same:
                    target = hfid
                    break
            if target is not None:
                break
        if target is None:
            # (files.dump_in_flight puts "pid N: fd M: <the socket>... is" before)
            raise Unsupported(f"an epoll watching a file (inode {ino}, registered as fd "
                              f"{tfd}) that no task of the tree holds; not supported")
        entry.target_id = target
        targets.append(entry)
    return fdinfo_pb2.file_entry(
        type=TYPE, id=fid,
        epfd=eventpoll_pb2.eventpoll_file_entry(id=fid, flags=flags, fown=anonfd.no_owner(),
                                                tfd=targets))


def open_fd(rctx: "RestoreContext", rt: "RestoreTask", entry: Any) -> int:
    fd = rt.inj.call("epoll_create1", 0)
    anonfd.set_nonblock(rt, fd, entry.epfd.flags)
    if any(t.HasField("target_id") for t in entry.epfd.tfd):
        # in flight: its targets once every file is in place
        rctx.before_detach.append(lambda: _add_in_flight(rctx, entry))
    return fd


def _add_in_flight(rctx: "RestoreContext", entry: Any) -> None:
    """Register the targets of an epoll restored in flight, from the
    restorer: each target file is made our fd number ``tfd`` for the one
    epoll_ctl call (the number is part of the registration), then whatever
    we held there is put back."""
    fid = entry.epfd.id
    what = f"epoll in flight (file {fid})"
    if fid not in rctx.placed:
        raise RestoreError(f"{what}: it was never sent")
    copies = []

    def ours(file_id: int) -> int:
        if file_id not in rctx.placed:
            raise RestoreError(f"{what}: its target, file {file_id}, was not restored")
        owner, ofd = rctx.placed[file_id]
        if owner == os.getpid():
            return int(ofd)
        got = pidfd_getfd(owner, ofd)
        copies.append(got)
        return got

    try:
        ep0 = ours(fid)
        for t in entry.epfd.tfd:
            base = max(1024, t.tfd + 1)   # neither copy may sit on the number
            ep = fcntl.fcntl(ep0, fcntl.F_DUPFD_CLOEXEC, base)
            copies.append(ep)
            tgt = fcntl.fcntl(ours(t.target_id), fcntl.F_DUPFD_CLOEXEC, base)
            copies.append(tgt)
            try:
                saved = fcntl.fcntl(t.tfd, fcntl.F_DUPFD_CLOEXEC, base)
                cloexec = bool(fcntl.fcntl(t.tfd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
            except OSError:
                saved, cloexec = None, False   # the number is free here
            os.dup2(tgt, t.tfd, inheritable=True)
            ev = ctypes.create_string_buffer(_EVENT.pack(t.events, t.data))
            try:
                syscall(C.NR["epoll_ctl"], ep, C.EPOLL_CTL_ADD, t.tfd, ctypes.addressof(ev))
            except OSError as exc:
                raise RestoreError(f"{what}: cannot add its target (file {t.target_id}) "
                                   f"as fd {t.tfd}: {exc.strerror}") from None
            finally:
                if saved is None:
                    os.close(t.tfd)
                else:
                    os.dup2(saved, t.tfd, inheritable=not cloexec)
                    os.close(saved)
    finally:
        for c in copies:
            os.close(c)


def after_all(rctx: "RestoreContext", rt: "RestoreTask", entry: Any, fd: int) -> None:
    inj = rt.inj
    for t in entry.epfd.tfd:
        ev = inj.put(_EVENT.pack(t.events, t.data), align=8)
        try:
            if t.HasField("holder_fd"):
                _add_through(rctx, rt, fd, t, ev)
            else:
                inj.call("epoll_ctl", fd, C.EPOLL_CTL_ADD, t.tfd, ev)
        except InjectError as exc:
            raise RestoreError(f"pid {rt.pid}: epoll fd {fd}: cannot add fd {t.tfd} "
                               f"(events {t.events:#x}): {exc.strerror}") from None
        inj.reset_scratch()


def _add_through(rctx: "RestoreContext", rt: "RestoreTask", epfd: int, t: Any, ev: int) -> None:
    """Register the file of fd ``t.holder_fd`` under number ``t.tfd``: that
    number is made a copy of the holder for the one epoll_ctl call, and
    what held it (if anything; the epoll fd itself too) is put back."""
    inj = rt.inj
    saved = None
    cloexec = False
    try:
        with open(f"/proc/{rt.pid}/fdinfo/{t.tfd}") as f:
            cloexec = any(line.startswith("flags:") and int(line.split()[1], 8) & C.O_CLOEXEC
                          for line in f)
        saved = inj.call("fcntl", t.tfd, C.F_DUPFD_CLOEXEC, rctx.spare_fd_base)
    except FileNotFoundError:
        pass  # the number is free
    inj.call("dup3", t.holder_fd, t.tfd, 0)
    inj.call("epoll_ctl", saved if epfd == t.tfd and saved is not None else epfd,
             C.EPOLL_CTL_ADD, t.tfd, ev)
    if saved is None:
        inj.call("close", t.tfd)
    else:
        inj.call("dup3", saved, t.tfd, C.O_CLOEXEC if cloexec else 0)
        inj.call("close", saved)
