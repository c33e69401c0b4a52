"""eventfd (fd kind EVENTFD, inline in files.img as file_entry.efd).

The state is the 64-bit counter and the EFD_SEMAPHORE mode, both printed in
fdinfo ("eventfd-count" in hex, "eventfd-semaphore" since 6.5).

EFD_SEMAPHORE has no field in CRIU's eventfd_file_entry, and CRIU does not
keep it.  We carry it in bit 0 of ``flags``: an eventfd is always O_RDWR,
so that bit (O_WRONLY) is otherwise never set, and CRIU's restore hands
the flags to F_SETFL, which ignores access-mode bits -- it restores the
fd as CRIU always did, only without semaphore mode.

At restore the counter is not passed to eventfd2(): its initval is an
unsigned int, the counter a u64.  The fd is created empty and the value
written into it, as a write(2) by the owner would.
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from ..errors import DumpError, RestoreError
from ..images.pb import eventfd_pb2, fdinfo_pb2
from ..kernel import consts as C
from . import anonfd
from . import fdaudit

if TYPE_CHECKING:
    from ..tasks import RestoreContext, RestoreTask
    from ..tasks import FdCtx

NAME = "eventfd"
FDINFO = {
    "eventfd-count": fdaudit.saved("eventfd_file_entry.counter"),
    "eventfd-semaphore": fdaudit.saved("EFD_SEMAPHORE, bit 0 of eventfd_file_entry.flags"),
    "eventfd-id": fdaudit.irrelevant("a number the kernel hands out to tell eventfds apart "
                                     "in fdinfo; nothing can ask for it"),
}
TYPE = fdinfo_pb2.EVENTFD
COUNTER_MAX = 2**64 - 2  # eventfd_write refuses 2^64-1


def matches(fd: "FdCtx") -> bool:
    return anonfd.is_anon(fd, "[eventfd]", "eventfd-count")


def dump(fd: "FdCtx", fid: int) -> Any:
    assert fd.info is not None
    extra = fd.info.extra
    flags = anonfd.file_flags(fd, "eventfd")
    try:
        counter = int(extra["eventfd-count"], 16)
        semaphore = int(extra.get("eventfd-semaphore", "0"))
    except ValueError as exc:
        raise DumpError(f"pid {fd.task.pid}: fd {fd.fd}: eventfd fdinfo: {exc}") from None
    if "eventfd-semaphore" not in extra:
        # Before 6.5 the kernel did not say; guessing would change how
        # reads behave after the restore.
        raise DumpError(f"pid {fd.task.pid}: fd {fd.fd}: eventfd: this kernel does not "
                        "report EFD_SEMAPHORE in fdinfo")
    if semaphore:
        flags |= C.EFD_SEMAPHORE
    return fdinfo_pb2.file_entry(
        type=TYPE, id=fid,
        efd=eventfd_pb2.eventfd_file_entry(id=fid, flags=flags, fown=anonfd.no_owner(),
                                           counter=counter))


def open_fd(rctx: "RestoreContext", rt: "RestoreTask", entry: Any) -> int:
    efd = entry.efd
    if efd.counter > COUNTER_MAX:
        raise RestoreError(f"{rt.image_name('fdinfo')}: eventfd {efd.id}: counter "
                           f"{efd.counter:#x} is out of range")
    create = efd.flags & (C.O_NONBLOCK | C.EFD_SEMAPHORE)
    fd = rt.inj.call("eventfd2", 0, create)
    if efd.counter:
        n = rt.inj.call("write", fd, anonfd.put_u64(rt, efd.counter), 8)
        if n != 8:
            raise RestoreError(f"pid {rt.pid}: eventfd {efd.id}: short write of its counter")
    return fd
