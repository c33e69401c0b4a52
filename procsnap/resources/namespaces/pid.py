"""The pid namespace of a tree whose root is its init (pid 1 inside), as
``unshare --fork --pid`` and every container make it.

Dump: each task's and thread's pid at every level (the NSpid lines, from
the dumper's view inward) go into procsnap's own pstree fields; the ids
CRIU keys its images by stay the dumper's view of the pids, so every
other module reads /proc/PID and names images as before.

Restore: the root is cloned with CLONE_NEWPID and a set_tid array (1
inside, its old pid outside); every other task and thread is cloned by
its parent puppet with its pids at every level.  Pids the puppets name in
injected calls (setpgid, kill, pidfd_open, rt_tgsigqueueinfo) are the
inner ones: ``RestoreContext.vpid`` translates.  pidns-ID.img is not
written: CRIU writes one only for an external pid namespace.
"""
from __future__ import annotations

import os
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time

from ...errors import DumpError, Unsupported
from ...kernel import consts as C

if TYPE_CHECKING:
    from ...tasks import DumpContext, DumpTask, RestoreContext, RestoreTask

NAME = "pid"
CLONE_FLAG = C.CLONE_NEWPID


def nspid(pid: int, tid: int | None = None) -> list[int]:
    """The NSpid line of a task or thread: its pid at every level."""
    path = f"/proc/{pid}/status" if tid is None else f"/proc/{pid}/task/{tid}/status"
    with open(path) as f:
        for line in f:
            if line.startswith("NSpid:"):
                return [int(x) for x in line.split()[1:]]
    return [tid or pid]


def dump(ctx: "DumpContext", ns_id: int, task: "DumpTask") -> None:
    _record(ctx, len(nspid(task.pid)))


def _ino(pid: int, name: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{name}").st_ino
    except FileNotFoundError:
        return None  # a zombie; or pid_for_children of a new namespace without its init


def record_nested(ctx: "DumpContext") -> None:
    """A tree in procsnap's own pid namespace: each task's pids are
    recorded only if some task lives in a pid namespace nested in it (or
    would start its children in one)."""
    levels = len(nspid(ctx.tasks[0].pid))
    if any(len(nspid(t.pid)) > levels or _ino(t.pid, "pid") != _ino(t.pid, "pid_for_children")
           for t in ctx.tasks if not t.zombie):
        _record(ctx, levels)


def _record(ctx: "DumpContext", levels: int) -> None:
    """Every task's and thread's pid at each level.  A task deeper than its
    parent is the init of a pid namespace nested in the tree (unshare -fp,
    clone(CLONE_NEWPID)): one level deeper, pid 1 inside; the restore
    clones it with CLONE_NEWPID.  Anything else (a task that entered a pid
    namespace by setns, whose init is not its parent) is refused."""
    by_pid = {t.pid: t for t in ctx.tasks}
    for t in ctx.tasks:
        e = t.pstree
        e.ns_pid[:] = nspid(t.pid)
        flat: list[int] = []
        for tid in e.threads:
            ids = nspid(t.pid, tid) if tid != t.pid else list(e.ns_pid)
            flat += ids
        mine = len(e.ns_pid)
        parent = by_pid.get(e.ppid) if t is not ctx.tasks[0] else None
        above = len(parent.pstree.ns_pid) if parent is not None else levels
        if mine < levels or len(flat) != mine * len(e.threads):
            raise DumpError(f"pid {t.pid}: its pids {e.ns_pid} span fewer pid namespace "
                            f"levels than the root's ({levels})")
        nested = mine != above or (parent is not None and not t.zombie and not parent.zombie
                                   and _ino(t.pid, "pid") != _ino(parent.pid, "pid"))
        if parent is not None and nested and (mine != above + 1 or e.ns_pid[-1] != 1):
            raise Unsupported(f"pid {t.pid}: lives in a pid namespace nested in the tree "
                              f"(its pids {'/'.join(map(str, e.ns_pid))}) but is not its "
                              f"init, a child of a task of the namespace above; procsnap "
                              "cannot restore that")
        e.ns_threads[:] = flat
    for t in ctx.tasks:
        if t.zombie:
            continue
        own, pfc = _ino(t.pid, "pid"), _ino(t.pid, "pid_for_children")
        if own == pfc:
            continue
        # its next child starts in that namespace: one whose init is a
        # child of this task (unshare -fp) is made again by setns at restore
        kid = next((c for c in ctx.tasks if c.pstree.ppid == t.pid and not c.zombie
                    and c is not ctx.tasks[0] and _ino(c.pid, "pid") == pfc
                    and c.pstree.ns_pid[-1] == 1), None)
        if kid is None:
            raise Unsupported(f"pid {t.pid}: its children would start in a pid namespace "
                              "whose init is not its child in the tree (pid_for_children "
                              f"{pfc or 'new, no process yet'}, its pid {own}); procsnap "
                              "cannot restore that")
        t.pstree.pid_for_children = kid.pid


def enter_children_ns(rctx: "RestoreContext") -> None:
    """Once every task exists: a task whose children started in the pid
    namespace of one of its children (pid_for_children) enters it again
    (setns(CLONE_NEWPID) sets only that, for the children it forks next)."""
    for rt in rctx.tasks:
        kid = rt.pstree.pid_for_children
        if rt.zombie or not rt.pstree.HasField("pid_for_children"):
            continue
        mine = os.open(f"/proc/{kid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        try:
            fd = rt.grab_fd(os.getpid(), mine)
        finally:
            os.close(mine)
        rt.inj.call("setns", fd, C.CLONE_NEWPID)
        rt.inj.call("close", fd)


def restore(rctx: "RestoreContext", ns_id: int, rt: "RestoreTask") -> None:
    # The clone3 of the root made the namespace with the root as its pid 1
    # (set_tid); nothing else lives in a pid namespace itself.
    got = rt.inj.call("getpid")
    if got != rctx.vpid(rt.pid):
        from ...errors import RestoreError
        raise RestoreError(f"pid {rt.pid}: is pid {got} in its new pid namespace, "
                           f"not {rctx.vpid(rt.pid)}")
