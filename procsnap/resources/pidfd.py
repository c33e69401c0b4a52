"""pidfds (fd kind PIDFD): an fd that names a process.

A pidfd can only be given back if the process it names is recreated with
the same pid, that is if it belongs to the dumped tree (a pid outside it
would, after restore, name whatever process has that number there).
fdinfo says which pid ("Pid:", -1 once reaped) and the flags
(PIDFD_NONBLOCK is O_NONBLOCK, PIDFD_THREAD is O_EXCL).  At restore the
puppet opens it itself with pidfd_open() -- every task of the tree exists
by then, all created before any is rebuilt.

A pidfd whose process was already reaped ("Pid: -1") names nothing a
restore could recreate, but it is still a pidfd: polling it says the
process exited, and pidfds of one dead process share one pidfs inode
(statx tells two dead processes apart).  As CRIU does, it is saved with
nspid -1 and its inode; at restore the restorer forks one short-lived
helper per inode, opens every pidfd the images hold on it while the
helper is a zombie, reaps it, and the puppets take theirs with
pidfd_getfd.
"""
from __future__ import annotations

import os
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from ..errors import RestoreError, Unsupported
from ..kernel import consts as C
from ..kernel.libc import syscall
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
    tree = {t.pid for t in fd.ctx.tasks} | {th.tid for t in fd.ctx.tasks for th in t.threads}
    if pid < 0:
        pid = -1  # reaped: a dead pidfd (see above)
    elif pid not in tree:
        raise Unsupported(f"{where} names pid {pid}, outside the dumped tree: after restore "
                          "that number would name another process")
    flags = fd.info.flags & ~os.O_CLOEXEC
    if flags & ~(os.O_ACCMODE | PIDFD_NONBLOCK | PIDFD_THREAD | os.O_LARGEFILE):
        raise Unsupported(f"{where} has flags {flags:o} procsnap cannot restore")
    return fdinfo_pb2.file_entry(type=TYPE, id=fid, pidfd=pidfd_pb2.pidfd_entry(
        id=fid, ino=fd.st.st_ino, flags=flags, nspid=pid, fown=anonfd.no_owner()))


def _dead_pidfds(rctx: "RestoreContext", ino: int) -> dict[int, int]:
    """file id -> a restorer fd: a pidfd of a reaped process, one per
    pidfd entry of inode ``ino`` (all opened on one helper, so they share
    its inode, as the dumped ones shared theirs)."""
    made: dict[int, dict[int, int]] = rctx.kind_state.setdefault(NAME + "-dead", {})
    if ino in made:
        return made[ino]
    wanted = [e for e in rctx.files.values() if e.type == TYPE and e.HasField("pidfd")
              and e.pidfd.nspid == -1 and e.pidfd.ino == ino]
    child = os.fork()
    if child == 0:
        os._exit(0)  # a zombie until reaped below: pidfd_open still finds it
    fds: dict[int, int] = {}
    try:
        for e in wanted:
            fd = syscall(C.NR["pidfd_open"], child, e.pidfd.flags & (PIDFD_NONBLOCK | PIDFD_THREAD))
            rctx.own_fds.append(fd)
            os.set_inheritable(fd, False)
            fds[e.id] = fd
    finally:
        os.waitpid(child, 0)
    made[ino] = fds
    return fds


def open_fd(rctx: "RestoreContext", rt: "RestoreTask", entry: Any) -> int:
    p = entry.pidfd
    if p.nspid == -1:
        try:
            mine = _dead_pidfds(rctx, p.ino)[p.id]
        except OSError as exc:
            raise RestoreError(f"pid {rt.pid}: pidfd of a reaped process: cannot make one: "
                               f"{exc.strerror}") from None
        return rt.grab_fd(os.getpid(), mine)
    if p.nspid <= 0 or p.nspid not in rctx.all_ids():
        raise RestoreError(f"{rt.image_name('fdinfo')}: pidfd {p.id} names pid {p.nspid}, "
                           "which this restore does not create")
    return rt.inj.call("pidfd_open", rctx.vpid(p.nspid, rt.pid), p.flags & (PIDFD_NONBLOCK | PIDFD_THREAD))
