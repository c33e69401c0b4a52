"""pidfds (fd kind PIDFD): an fd that names a process.

A pidfd can only be given back if the process it names is recreated with
the same pid, that is if it belongs to the dumped tree (a pid outside it
would, after restore, name whatever process has that number there).
fdinfo says which pid ("Pid:", -1 once reaped) and the flags
(PIDFD_NONBLOCK is O_NONBLOCK, PIDFD_THREAD is O_EXCL).  At restore the
puppet opens it itself with pidfd_open() -- every task of the tree exists
by then, all created before any is rebuilt.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..errors import RestoreError, Unsupported
from ..images.pb import fdinfo_pb2, pidfd_pb2
from . import anonfd
from . import fdaudit

if TYPE_CHECKING:
    from ..tasks import RestoreContext, RestoreTask
    from ..tasks import FdCtx

NAME = "pidfd"
FDINFO = {
    "Pid": fdaudit.saved("pidfd_entry.nspid (the same pid is restored)"),
    "NSpid": fdaudit.saved("pidfd_entry.nspid (one pid namespace)"),
}
TYPE = fdinfo_pb2.PIDFD
PIDFD_THREAD = os.O_EXCL
PIDFD_NONBLOCK = os.O_NONBLOCK


def matches(fd: "FdCtx") -> bool:
    return anonfd.is_anon(fd, "[pidfd]", "Pid:")


def dump(fd: "FdCtx", fid: int) -> Any:
    assert fd.info is not None and fd.st is not None
    pid = int(fd.info.extra["Pid"])
    where = f"pid {fd.task.pid}: fd {fd.fd}: pidfd"
    if pid < 0:
        raise Unsupported(f"{where} names a process that was already reaped; not supported")
    tree = {t.pid for t in fd.ctx.tasks} | {th.tid for t in fd.ctx.tasks for th in t.threads}
    if pid not in tree:
        raise Unsupported(f"{where} names pid {pid}, outside the dumped tree: after restore "
                          "that number would name another process")
    flags = fd.info.flags & ~os.O_CLOEXEC
    if flags & ~(os.O_ACCMODE | PIDFD_NONBLOCK | PIDFD_THREAD | os.O_LARGEFILE):
        raise Unsupported(f"{where} has flags {flags:o} procsnap cannot restore")
    return fdinfo_pb2.file_entry(type=TYPE, id=fid, pidfd=pidfd_pb2.pidfd_entry(
        id=fid, ino=fd.st.st_ino, flags=flags, nspid=pid, fown=anonfd.no_owner()))


def open_fd(rctx: "RestoreContext", rt: "RestoreTask", entry: Any) -> int:
    p = entry.pidfd
    if p.nspid <= 0 or p.nspid not in rctx.all_ids():
        raise RestoreError(f"{rt.image_name('fdinfo')}: pidfd {p.id} names pid {p.nspid}, "
                           "which this restore does not create")
    return rt.inj.call("pidfd_open", rctx.vpid(p.nspid), p.flags & (PIDFD_NONBLOCK | PIDFD_THREAD))
