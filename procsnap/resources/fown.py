"""Async I/O owners of open file descriptions (fown_entry in each kind's
file entry): F_SETOWN_EX (who gets SIGIO/SIGURG: a thread, a process or a
process group), F_SETSIG (which signal), and the uid/euid the owner was
set with (the kernel checks them before it signals, sigio_perm).

Read as CRIU's parasite reads them, only from our side: a pidfd_getfd
copy of the fd is the same open file description, and F_GETOWN_EX,
F_GETSIG and F_GETOWNER_UIDS (CONFIG_CHECKPOINT_RESTORE) ask the
description.  An owner outside the dumped tree is refused: after restore
that number would name another process, or none.

At restore, in the task that first places the description, once all its
fds are in place: F_SETSIG and O_ASYNC inside the puppet (so the fd number
the kernel records for SIGIO's si_fd is the task's own), then the owner
from the restorer just before the tree runs, when every thread exists,
under the saved uid/euid (a short-lived fork of the restorer switches to
them, as CRIU's restore_fown does with setresuid).
"""
from __future__ import annotations

import fcntl
import functools
import os
import struct
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from ..errors import RestoreError, Unsupported
from ..images.pb import fown_pb2
from ..kernel.libc import pidfd_getfd

if TYPE_CHECKING:
    from ..tasks import RestoreContext, RestoreTask
    from ..tasks import FdCtx

NAME = "fown"
F_SETSIG, F_GETSIG = 10, 11
F_SETOWN_EX, F_GETOWN_EX = 15, 16
F_GETOWNER_UIDS = 17
F_OWNER_TID, F_OWNER_PID, F_OWNER_PGRP = 0, 1, 2
O_ASYNC = 0o20000
O_PATH = 0o10000000
_OWNER = struct.Struct("<ii")
_TYPES = {F_OWNER_TID: "thread", F_OWNER_PID: "process", F_OWNER_PGRP: "process group"}


def read(fd: "FdCtx") -> Any:
    """The fown_entry of ``fd``'s open file description."""
    assert fd.info is not None
    if fd.info.flags & O_PATH:
        return fown_pb2.fown_entry(uid=0, euid=0, signum=0, pid_type=0, pid=0)
    pid = fd.task.pid
    copy = pidfd_getfd(pid, fd.fd)
    try:
        signum = fcntl.fcntl(copy, F_GETSIG)
        ptype, opid = _OWNER.unpack(fcntl.fcntl(copy, F_GETOWN_EX, bytes(_OWNER.size)))
        uid = euid = 0
        if opid:
            uid, euid = struct.unpack("<II", fcntl.fcntl(copy, F_GETOWNER_UIDS, bytes(8)))
    finally:
        os.close(copy)
    if opid:
        tasks = fd.ctx.tasks
        inside = ({th.tid for t in tasks for th in t.threads} if ptype == F_OWNER_TID
                  else {t.pid for t in tasks})
        if opid not in inside or ptype not in _TYPES:
            raise Unsupported(f"pid {pid}: fd {fd.fd}: {fd.link}: its SIGIO owner (F_SETOWN) is "
                              f"{_TYPES.get(ptype, f'type {ptype}')} {opid}, outside the dumped "
                              "tree; after restore that number would name another process")
    return fown_pb2.fown_entry(uid=uid, euid=euid, signum=signum, pid_type=ptype, pid=opid)


def _sub(entry: Any) -> Any:
    """The kind's message inside a file_entry (reg, pipe, efd, ...)."""
    for desc, value in entry.ListFields():
        if desc.message_type is not None and "fown" in desc.message_type.fields_by_name:
            return value
    return None


def has_owner(fown: Any) -> bool:
    return bool(fown.pid or fown.signum)


def attach(fd: "FdCtx", entry: Any) -> None:
    """Put the description's owner into the kind's entry; a kind whose
    entry has no fown field refuses an fd that has one."""
    fown = read(fd)
    sub = _sub(entry)
    if sub is None:
        if has_owner(fown):
            raise Unsupported(f"pid {fd.task.pid}: fd {fd.fd}: {fd.link}: has a SIGIO owner "
                              f"(pid {fown.pid}, signal {fown.signum}) that its kind cannot keep")
        return
    sub.fown.CopyFrom(fown)


# ------------------------------------------------------------- restore ----

def _flags_of(sub: Any) -> int:
    return int(getattr(sub, "flags", 0))


def restore_task(rctx: "RestoreContext", rt: "RestoreTask") -> None:
    """F_SETSIG and O_ASYNC in the puppet; the owner is queued for later."""
    inj = rt.inj
    for fe in rt.fdinfos:
        if rctx.placed.get(fe.id) != (rt.pid, fe.fd):
            continue  # not the first fd of its description
        sub = _sub(rctx.file_entry(fe.id))
        if sub is None:
            continue
        fown = sub.fown
        if fown.signum:
            inj.call("fcntl", fe.fd, F_SETSIG, fown.signum)
        if _flags_of(sub) & O_ASYNC:
            # Set here, by the task on its own fd number: the kernel keeps
            # that number for SIGIO's si_fd.
            cur = inj.call("fcntl", fe.fd, fcntl.F_GETFL, 0)
            inj.call("fcntl", fe.fd, fcntl.F_SETFL, (cur & ~O_ASYNC))
            inj.call("fcntl", fe.fd, fcntl.F_SETFL, cur | O_ASYNC)
        if fown.pid:
            if rctx.host_pid(fown.pid) != fown.pid:   # an owner restored under a new host pid
                fown = type(sub.fown)()
                fown.CopyFrom(sub.fown)
                fown.pid = rctx.host_pid(sub.fown.pid)
            rctx.before_detach.append(functools.partial(set_owner, rt.pid, fe.fd, fown))


def set_owner(pid: int, fd: int, fown: Any) -> None:
    """F_SETOWN_EX on fd ``fd`` of ``pid`` as uid/euid ``fown.uid/euid``."""
    copy = pidfd_getfd(pid, fd)
    try:
        arg = _OWNER.pack(fown.pid_type, fown.pid)
        if (fown.uid, fown.euid) == (os.getuid(), os.geteuid()):
            try:
                fcntl.fcntl(copy, F_SETOWN_EX, arg)
            except OSError as exc:
                err = exc.errno or 1
            else:
                err = 0
        else:
            child = os.fork()
            if child == 0:  # pragma: no cover (a fork of the restorer)
                code = 1
                try:
                    os.setresuid(fown.uid, fown.euid, -1)
                    fcntl.fcntl(copy, F_SETOWN_EX, arg)
                    code = 0
                except OSError as exc:
                    code = exc.errno or 1
                finally:
                    os._exit(code)
            _, status = os.waitpid(child, 0)
            err = os.waitstatus_to_exitcode(status)
        if err:
            raise RestoreError(f"pid {pid}: fd {fd}: cannot set its SIGIO owner to "
                               f"{_TYPES.get(fown.pid_type, fown.pid_type)} {fown.pid}: "
                               f"{os.strerror(err) if err > 0 else 'killed'}")
    finally:
        os.close(copy)
