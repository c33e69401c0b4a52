"""Namespace files (fd kind NS, CRIU's ns_file_entry): an fd opened on
/proc/PID/ns/KIND, as ``ip netns``, container runtimes and zdtm proc-self
hold one (readlink shows ``net:[INODE]``).

Such an fd keeps a namespace alive and names it; after the restore it
must name the namespace that stands for it.  So it is saved only when a
task of the dumped tree lives in that namespace (the tree's own, made
anew at restore, or one it shares with procsnap, which it finds again):
the image records the namespace's id (its inode, the ids of ids-PID.img),
its CLONE_NEW* flag and the open flags, as CRIU.  At restore the
restorer opens /proc/PID/ns/KIND of a restored task with that id and the
puppet takes the fd.  An fd on a namespace no task of the tree lives in
(another container's, one kept by a bind mount) refuses the dump by name:
after a restore it would name nothing, or a namespace of the restorer's
choosing.  (CRIU fails such a dump too: "No NS ID with kid".)
"""
from __future__ import annotations

import os
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from ..errors import RestoreError, Unsupported
from ..lazyre import LazyPattern
from ..images.pb import fdinfo_pb2, ns_pb2
from ..kernel import consts as C

if TYPE_CHECKING:
    from ..tasks import FdCtx, RestoreContext, RestoreTask

NAME = "nsfile"
TYPE = fdinfo_pb2.NS
FDINFO: dict[str, Any] = {}   # an nsfs fd prints only the common lines

# readlink name -> (the /proc/PID/ns name that opens it, its CLONE_NEW* flag);
# pid_for_children and time_for_children read as pid:[..] and time:[..]
KINDS = {"net": ("net", C.CLONE_NEWNET), "uts": ("uts", C.CLONE_NEWUTS),
         "ipc": ("ipc", C.CLONE_NEWIPC), "pid": ("pid", C.CLONE_NEWPID),
         "mnt": ("mnt", C.CLONE_NEWNS), "user": ("user", C.CLONE_NEWUSER),
         "cgroup": ("cgroup", C.CLONE_NEWCGROUP), "time": ("time", C.CLONE_NEWTIME)}
BY_FLAG = {flag: name for name, flag in KINDS.values()}
_LINK = LazyPattern(r"^([a-z]+):\[(\d+)\]$")


def _parse(link: str) -> tuple[str, int] | None:
    m = _LINK.match(link)
    if m is None or m.group(1) not in KINDS:
        return None
    return m.group(1), int(m.group(2))


def matches_link(link: str) -> bool:
    return _parse(link) is not None


def matches(fd: "FdCtx") -> bool:
    return matches_link(fd.link)


def _holder(tasks: Any, name: str, ino: int) -> int | None:
    for t in tasks:
        if t.zombie:
            continue
        try:
            if os.stat(f"/proc/{t.pid}/ns/{name}").st_ino == ino:
                return int(t.pid)
        except OSError:
            continue
    return None


def dump(fd: "FdCtx", fid: int) -> Any:
    parsed = _parse(fd.link)
    assert parsed is not None and fd.info is not None
    kind, ino = parsed
    name, flag = KINDS[kind]
    if _holder(fd.ctx.tasks, name, ino) is None:
        raise Unsupported(f"pid {fd.task.pid}: fd {fd.fd}: {fd.link}: a {kind} namespace no "
                          "task of the dumped tree lives in; after a restore the fd would "
                          "name another namespace or none")
    return fdinfo_pb2.file_entry(type=TYPE, id=fid, nsf=ns_pb2.ns_file_entry(
        id=fid, ns_id=ino, ns_cflag=flag, flags=fd.info.flags & ~os.O_CLOEXEC))


def restored_path(rctx: "RestoreContext", rt: "RestoreTask", entry: Any) -> str:
    """/proc/PID/ns/KIND of a restored task in the namespace ``entry`` names."""
    nsf = entry.nsf
    name = BY_FLAG.get(nsf.ns_cflag)
    if name is None:
        raise RestoreError(f"{rt.image_name('fdinfo')}: namespace file {nsf.id}: unknown "
                           f"clone flag {nsf.ns_cflag:#x}")
    field = f"{name}_ns_id"
    holder = next((t for t in rctx.tasks if not t.zombie and t.ids is not None
                   and t.ids.HasField(field) and getattr(t.ids, field) == nsf.ns_id), None)
    if holder is None:
        raise RestoreError(f"{rt.image_name('fdinfo')}: namespace file {nsf.id}: no task of "
                           f"the tree lives in {name} namespace {nsf.ns_id}")
    return f"/proc/{holder.pid}/ns/{name}"


def open_fd(rctx: "RestoreContext", rt: "RestoreTask", entry: Any) -> int:
    nsf = entry.nsf
    path = restored_path(rctx, rt, entry)
    name = BY_FLAG[nsf.ns_cflag]
    try:
        mine = os.open(path, nsf.flags | os.O_CLOEXEC)
    except OSError as exc:
        raise RestoreError(f"pid {rt.pid}: namespace file {name}:[{nsf.ns_id}]: {path}: "
                           f"{exc.strerror}") from None
    try:
        return rt.grab_fd(os.getpid(), mine)
    finally:
        os.close(mine)
