"""The registry of namespace kinds: the third level of state, beside the
per-task kinds (``resources.DUMP_ORDER``) and the per-fd kinds
(``files.FD_KINDS``).

A namespace kind is one module here with both halves::

    NAME = "uts"              # the /proc/PID/ns/<NAME> name
    CLONE_FLAG = C.CLONE_NEWUTS
    def dump(ctx: DumpContext, ns_id: int, task: DumpTask) -> None
        # once per namespace (ns_id = the inode of /proc/PID/ns/NAME), with a
        # task of the tree that lives in it; writes its images via ctx
    def restore(rctx: RestoreContext, ns_id: int, rt: RestoreTask) -> None
        # once per namespace, inside the first puppet created in it, after
        # the namespace was created (clone3/unshare flags) and before any
        # task is built

and optionally ``BY_CLONE = False`` for a kind the clone3 of the root must
not create because its ``restore`` makes it itself (time: its offsets can
only be written before any task has entered it).

Which namespaces are saved (as CRIU does): a kind is saved for the tree
when the root lives in a namespace of that kind unlike the dumper's; every
task of the tree must then share the root's (nested namespaces are not
saved yet, the audit refuses them), and the restore creates one new
namespace of the kind for the root, which every other task inherits.  A
kind not listed here is refused by the audit whenever a task's namespace
differs from procsnap's own.

Namespace ids are the kernel's (the inode of /proc/PID/ns/NAME, which fits
CRIU's uint32 ids); every task's are recorded in ``ids-PID.img``
(task_kobj_ids_entry.<NAME>_ns_id) and the dumper's own in the inventory's
``root_ids``, so -- exactly as CRIU decides -- the restore creates the
kinds whose ids differ between the root task and the inventory.
"""
from __future__ import annotations

import os
import sys
from types import ModuleType
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from ...errors import ImageError

if TYPE_CHECKING:
    from ...tasks import DumpContext, RestoreContext, RestoreTask

# Restore order of the kinds made for the root, and why:
#  user - first: the root's clone3 made it with the others (it owns them);
#         its maps are written from outside and the root takes ids inside
#         it before anything else is made in it;
#  pid  - nothing to rebuild: the clone3 of the root made it, pid 1 inside;
#  uts  - hostname and domainname, set in the root before its children fork;
#  ipc  - sysctls, System V objects and POSIX queues, made from the restorer
#         entering the new namespace (before any task attaches a segment);
#  time - unshared and entered by the root before any child is forked into it;
#         needs /proc as the restorer mounted it (before mnt pivots);
#  cgroup - the root joins the namespace's root cgroups (made by
#         cgroup.prepare) and unshares; before mnt: the restorer's cgroup
#         mounts are the paths it joins through;
#  net  - links, addresses, routes, sysctls, firewall, made from procsnap's
#         thread entered into it (it stays there until the tasks are built:
#         their sockets are born there; see net.leave);
#  (mnt goes last: after it the puppet sees the restored tree's root.)
# By name: each module's NAME is its module name here.  A kind's module is
# imported only when a tree has (or an image asks for) a namespace of that
# kind: a tree without namespaces of its own, the common small case, loads
# none of them (they were ~10 ms of every start of the command line).
# NS_KINDS, the modules, imports them all.
NS_NAMES: list[str] = ["user", "pid", "uts", "ipc", "time", "cgroup", "net", "mnt"]


def kind_module(name: str) -> ModuleType:
    """The module of the namespace kind NAME, imported on first use."""
    full = f"{__name__}.{name}"
    __import__(full)  # not importlib's: -X importtime sees this one
    return sys.modules[full]


def __getattr__(name: str) -> Any:
    """NS_KINDS (every kind's module, for who wants all: tests, docs) and
    each kind's module as an attribute, as when they were imported here."""
    if name == "NS_KINDS":
        return [kind_module(n) for n in NS_NAMES]
    if name in NS_NAMES:
        return kind_module(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# RestoreContext.kind_state key of the pty masters mnt makes with the mount
# tree for a bind of their pts (see mnt._pts_for_bind); here, so that tty,
# which takes them, does not load mnt for a tree without a mount namespace.
PREMADE = "devpts-premade"

# every namespace field of task_kobj_ids_entry, saved or not
ID_KINDS = ("pid", "net", "ipc", "uts", "mnt", "user", "cgroup", "time")


def saved_names() -> set[str]:
    """The /proc/PID/ns names of the kinds procsnap saves."""
    return set(NS_NAMES)


def ns_inode(pid: int | str, name: str) -> int:
    """The kernel's id of a namespace of a task (``pid`` may be "self")."""
    return os.stat(f"/proc/{pid}/ns/{name}").st_ino


# ------------------------------------------------------------------ dump ----

def own_ids(ids: Any) -> None:
    """Fill the namespace ids of ``ids`` with the dumper's own (the inventory's
    root_ids: what the restore compares the root with)."""
    for kind in ID_KINDS:
        try:
            setattr(ids, f"{kind}_ns_id", ns_inode("self", kind))
        except FileNotFoundError:
            pass  # a kernel without that kind


def dump(ctx: "DumpContext") -> None:
    """The dumper's hook, after the per-task modules: every task's namespace
    ids into its ids, then each saved kind's namespace once, with the root."""
    root = ctx.tasks[0]
    for task in ctx.tasks:
        if task.zombie or task.ids is None:
            continue  # a zombie has no namespaces left (as CRIU: no ids)
        for kind in ID_KINDS:
            try:
                setattr(task.ids, f"{kind}_ns_id", ns_inode(task.pid, kind))
            except FileNotFoundError:
                pass
        task.core.ids.CopyFrom(task.ids)
    own = [n for n in NS_NAMES if ns_inode(root.pid, n) != ns_inode("self", n)]
    if own:
        # each is made again from the tree's user namespace: it must own them
        kind_module("user").check_owners(ctx, own)
    for name in own:
        kind_module(name).dump(ctx, ns_inode(root.pid, name), root)
    if ns_inode(root.pid, "pid") == ns_inode("self", "pid"):
        kind_module("pid").record_nested(ctx)  # pid namespaces nested in a tree of procsnap's


# --------------------------------------------------------------- restore ----

def parse_join(text: str) -> tuple[str, str]:
    """criu's --join-ns NS:PID|NS_FILE[,EXTRA]: (kind, path of the namespace
    file).  procsnap joins a network namespace only (the one criu's netns
    lock tests and container managers hand in); other kinds, and criu's
    extra options (a user namespace's uid,gid), raise ValueError."""
    kind, sep, where = text.partition(":")
    if not sep or not where:
        raise ValueError(f"--join-ns {text}: not NS:PID|NS_FILE")
    if kind != "net":
        raise ValueError(f"--join-ns {text}: procsnap joins only a network namespace "
                         "(net:PATH or net:PID)")
    if "," in where:
        raise ValueError(f"--join-ns {text}: extra options are for a user namespace")
    path = f"/proc/{where}/ns/net" if where.isdigit() else where
    return kind, path


def join(rctx: "RestoreContext") -> None:
    """Before the root is cloned: this thread enters each namespace named by
    --join-ns (the clone inherits it, and the sockets the restorer makes
    for the tasks are born in it), instead of the root making a new one."""
    for kind, path in rctx.opts.join_ns.items():
        kind_module(kind).join(rctx, path)


def new_kinds(rctx: "RestoreContext") -> list[tuple[ModuleType, int]]:
    """(module, ns id) of each kind the root is restored in a new namespace
    of, in restore order; an image asking for a kind procsnap cannot make
    is refused."""
    root = rctx.tasks[0]
    base = rctx.root_ids
    if base is None or root.ids is None:
        return []
    out = []
    for kind in ID_KINDS:
        field = f"{kind}_ns_id"
        if not (root.ids.HasField(field) and base.HasField(field)):
            continue
        if getattr(root.ids, field) == getattr(base, field):
            continue
        if kind in rctx.opts.join_ns:
            continue  # joined (join), not made
        if kind not in NS_NAMES:
            raise ImageError(root.image_name("ids"), f"pid {root.pid} lives in its own {kind} "
                             "namespace; procsnap cannot restore that kind of namespace")
        out.append((kind_module(kind), getattr(root.ids, field)))
    order = {n: i for i, n in enumerate(NS_NAMES)}
    return sorted(out, key=lambda p: order[p[0].NAME])


def clone_flags(rctx: "RestoreContext") -> int:
    """The CLONE_NEW* flags the root's clone3 creates its namespaces with."""
    flags = 0
    for mod, _ in new_kinds(rctx):
        if getattr(mod, "BY_CLONE", True):
            flags |= mod.CLONE_FLAG
    return flags


def restore(rctx: "RestoreContext", root: "RestoreTask") -> None:
    """The restorer's hook: in the root puppet, just created (with
    ``clone_flags``), before any child is forked."""
    for mod, ns_id in new_kinds(rctx):
        mod.restore(rctx, ns_id, root)


def setup_done(rctx: "RestoreContext", root: "RestoreTask") -> None:
    """The restorer's hook once the caller's setup-namespaces action ran
    (criu's stage, where a container runtime configures what it owns): a kind
    with a ``setup_done(rctx, ns_id, rt)`` finishes its restore there."""
    for mod, ns_id in new_kinds(rctx):
        hook = getattr(mod, "setup_done", None)
        if hook is not None:
            hook(rctx, ns_id, root)


def enter_children_ns(rctx: "RestoreContext") -> None:
    """The restorer's hook once every task exists: tasks whose children
    live in another pid namespace enter it (pid.enter_children_ns).  The
    pid kind is loaded only for a tree that has such a task."""
    if any(rt.pstree.HasField("pid_for_children") for rt in rctx.tasks):
        kind_module("pid").enter_children_ns(rctx)


def leave(rctx: "RestoreContext") -> None:
    """The restorer's hook once the restore ended, well or not: a kind that
    moved procsnap's own thread into the tree's namespace takes it back."""
    for name in NS_NAMES:
        # a kind never imported in this process moved nothing
        mod = sys.modules.get(f"{__name__}.{name}")
        hook = getattr(mod, "leave", None)
        if hook is not None:
            hook(rctx)


__all__ = ["NS_KINDS", "NS_NAMES", "PREMADE", "kind_module", "enter_children_ns", "leave", "setup_done", "parse_join", "join", "ID_KINDS", "saved_names",
           "ns_inode", "own_ids", "dump",
           "new_kinds", "clone_flags", "restore"]
