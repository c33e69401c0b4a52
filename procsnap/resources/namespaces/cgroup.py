"""The cgroup namespace of a tree whose root lives in its own (unshare
--cgroup, containers): its root cgroup in every hierarchy.

A cgroup namespace is nothing but a root per hierarchy: the cgroups its
tasks were in when it was made.  Dump: the root's cgroups as procsnap sees
them (/proc/PID/cgroup, full paths) and as the root itself sees them (read
from a thread moved into its cgroup namespace for the moment: the paths
are shown relative to the reader's namespace); the namespace's root in a
hierarchy is the outer path less the inner one.  It is recorded as CRIU
does, in cgroup.img: every member of every cg set gets ``cgns_prefix``, the
length of that root in its path (nothing for a hierarchy whose namespace
root is its root).  A task outside its namespace's root (an inner path
"/..") cannot be put back so: the dump is refused, naming it.

Restore (BY_CLONE = False: the namespace's roots are the cgroups its
creator is in at unshare time, so the root's clone3 cannot make it): the
root puppet joins the namespace root of every hierarchy (the cgroups were
made by cgroup.prepare), then unshares CLONE_NEWCGROUP; the cgroup module
later moves it (and every task, all inheriting the namespace) into its own
cgroups below.  --cgroup-root moves the roots with the tree.  Under
--manage-cgroups=ignore the namespace is made where the restorer is (criu's
"pretend they do not exist").  The restore check compares the tasks'
cgroups through the outer paths (verify.check_cgroup); the namespace's
root is checked here, right after the unshare, by reading the root's
cgroups from inside it.
"""
from __future__ import annotations

import os
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time

from ...errors import RestoreError, Unsupported
from ...kernel import consts as C
from ...inject import InjectError
from .. import cgroup as cg

if TYPE_CHECKING:
    from ...tasks import DumpContext, DumpTask, RestoreContext, RestoreTask

NAME = "cgroup"
CLONE_FLAG = C.CLONE_NEWCGROUP
BY_CLONE = False


def dump(ctx: "DumpContext", ns_id: int, task: "DumpTask") -> None:
    who = f"pid {task.pid}"
    base = cg.ns_roots(task.pid)
    for entry in ctx.shared_image("cgroup"):
        for s in entry.sets:
            for m in s.ctls:
                root = base.get(m.name)
                if root is None or root == "/":
                    continue
                if not (m.path + "/").startswith(root + "/"):
                    raise Unsupported(f"{who}: cgroup namespace: a task of the tree is in "
                                      f"{m.name or 'cgroup2'}:{m.path}, outside the "
                                      f"namespace's root {root}")
                m.cgns_prefix = len(root)


def restore(rctx: "RestoreContext", ns_id: int, rt: "RestoreTask") -> None:
    ident = rt.core.tc.cg_set if rt.core.tc.HasField("cg_set") else 0
    members = cg.restore_members(rctx, ident)
    want: dict[str, str] = {}
    for name, path, prefix in members:
        if prefix:
            root = path[:prefix] or "/"
            want[name] = root
            cg.join(rctx, rt, rt.pid, name, root, whole=True)
    try:
        rt.inj.call("unshare", C.CLONE_NEWCGROUP)
    except InjectError as exc:
        raise RestoreError(f"pid {rt.pid}: cannot create a cgroup namespace: "
                           f"{os.strerror(exc.errno or 0)}") from None
    inner = dict(cg.inner_view(rt.pid))
    for name in want:
        if inner.get(name) != "/":
            raise RestoreError(f"pid {rt.pid}: its new cgroup namespace's root in "
                               f"{name or 'cgroup2'} is not {want[name]} (it sees "
                               f"{inner.get(name)})")
