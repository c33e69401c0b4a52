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

from typing import TYPE_CHECKING

from ...errors import DumpError
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
    levels = len(nspid(task.pid))
    for t in ctx.tasks:
        e = t.pstree
        e.ns_pid[:] = nspid(t.pid)
        flat: list[int] = []
        for tid in e.threads:
            ids = nspid(t.pid, tid) if tid != t.pid else list(e.ns_pid)
            flat += ids
        if len(e.ns_pid) != levels or len(flat) != levels * len(e.threads):
            # the audit refuses nested pid namespaces first; this is its guard
            raise DumpError(f"pid {t.pid}: its pids {e.ns_pid} span other pid namespace "
                            f"levels than the root's ({levels})")
        e.ns_threads[:] = flat


def restore(rctx: "RestoreContext", ns_id: int, rt: "RestoreTask") -> None:
    # The clone3 of the root made the namespace with the root as its pid 1
    # (set_tid); nothing else lives in a pid namespace itself.
    got = rt.inj.call("getpid")
    if got != rctx.vpid(rt.pid):
        from ...errors import RestoreError
        raise RestoreError(f"pid {rt.pid}: is pid {got} in its new pid namespace, "
                           f"not {rctx.vpid(rt.pid)}")
