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
registered in epoll E under number T?".  Anything else is a dump error.

At restore the epoll fd is created at once and its targets are added in
the after-all pass, once every fd they refer to is in place.
"""
from __future__ import annotations

import ctypes
import errno
import struct
from typing import TYPE_CHECKING, Any

from ..errors import DumpError, RestoreError
from ..images.pb import eventpoll_pb2, fdinfo_pb2
from ..inject import InjectError
from ..kernel import consts as C
from ..kernel.libc import syscall
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


def _registered_as(pid: int, epfd: int, tfd: int, toff: int) -> bool:
    """Is fd ``tfd`` of ``pid`` the file epoll ``epfd`` watches under that number?"""
    slot = KcmpEpollSlot(epfd, tfd, toff)
    try:
        return syscall(C.NR["kcmp"], pid, pid, C.KCMP_EPOLL_TFD, tfd,
                       ctypes.addressof(slot)) == 0
    except OSError as exc:
        if exc.errno == errno.EBADF:
            return False  # no fd with that number any more
        raise DumpError(f"pid {pid}: fd {epfd}: kcmp(KCMP_EPOLL_TFD) on target {tfd}: "
                        f"{exc.strerror}") from None


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
            raise DumpError(
                f"pid {pid}: fd {fd.fd}: epoll watches a file registered as fd {tfd}, "
                f"but fd {tfd} is now another file or closed (the number was reused or "
                "the fd closed while the file stays open elsewhere); cannot restore it")
        targets.append(entry)
    return fdinfo_pb2.file_entry(
        type=TYPE, id=fid,
        epfd=eventpoll_pb2.eventpoll_file_entry(id=fid, flags=flags, fown=anonfd.no_owner(),
                                                tfd=targets))


def open_fd(rctx: "RestoreContext", rt: "RestoreTask", entry: Any) -> int:
    fd = rt.inj.call("epoll_create1", 0)
    anonfd.set_nonblock(rt, fd, entry.epfd.flags)
    return fd


def after_all(rctx: "RestoreContext", rt: "RestoreTask", entry: Any, fd: int) -> None:
    inj = rt.inj
    for t in entry.epfd.tfd:
        ev = inj.put(_EVENT.pack(t.events, t.data), align=8)
        try:
            inj.call("epoll_ctl", fd, C.EPOLL_CTL_ADD, t.tfd, ev)
        except InjectError as exc:
            raise RestoreError(f"pid {rt.pid}: epoll fd {fd}: cannot add fd {t.tfd} "
                               f"(events {t.events:#x}): {exc.strerror}") from None
        inj.reset_scratch()
