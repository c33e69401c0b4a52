"""Cgroup membership: each task's and each thread's cgroup in every
hierarchy, v1 and v2 (CRIU's cgroup.img: cg sets; core's
thread_core.cg_set, and tc.cg_set for the task).

Dump: /proc/PID/task/TID/cgroup, one line per hierarchy
("4:cpu,cpuacct:/a/b", "0::/c" for cgroup2).  Equal lists share one
cg_set id.  The controllers go into cgroup.img as CRIU writes them: for
each hierarchy, one top directory entry per dump root (a task's cgroup,
or the --cgroup-root above it), named by its whole path, with every
directory below it nested; each directory with its owner and mode and the
controllers' *properties* of CRIU's built-in list (memory, cpu, cpuset,
blkio, net_cls, net_prio, pids, devices for v1; for cgroup2 the cgroup.*
globals and memory.max/high/low/min/swap.max, cpu.weight/max, pids.max,
cpuset, io.weight, hugetlb.*.max of the controllers enabled there).  A
property file the kernel does not offer (or will not read) is not state of
that cgroup.  --manage-cgroups=ignore saves no cgroup at all (criu's).

Restore (criu's --manage-cgroups MODE, default soft): each directory is
made when missing, with its owner, mode and properties (written before its
children are made and before any task joins: cpuset.cpus/mems and
cgroup.subtree_control must be there first); an existing one is left as
it is (soft, none), gets its properties (full, props) or is an error
(strict); props and none require every directory to exist.  A property is
written only when it differs from the file's value, in CRIU's order, each
failed write retried once after the others (memory.memsw after
memory.limit); one that still fails is a restore error naming it.
--cgroup-root [CONTROLLER:]/PATH moves each top directory (and the tasks'
paths in it) of that hierarchy, or of every one not named, to PATH.

Each task is then written into ``cgroup.procs`` of its cgroup in every
hierarchy, a thread whose cgroup differs from its leader's into ``tasks``
(v1) or ``cgroup.threads`` (v2).  The hierarchy is found among the
restorer's mounts (a v1 hierarchy by its exact controller set, name=X
included); one mounted nowhere is mounted for the moment on a private
temporary directory.  A cgroup the task cannot join is a restore error
naming it.  It runs after memory (the threads exist by then): the pages
written before are charged to the restorer's cgroup.  The restore check
compares every thread's cgroups (verify.check_cgroup); the properties are
checked as they are written (a write the kernel takes is the value).
"""
from __future__ import annotations

import os
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from .. import images
from ..errors import ImageError, RestoreError, Unsupported
from ..images.pb import cgroup_pb2
from ..kernel import consts as C
from ..kernel import libc
from ..procfs.parse import parse_mountinfo

if TYPE_CHECKING:
    from ..tasks import DumpContext, DumpTask
    from ..tasks import RestoreContext, RestoreTask

NAME = "cgroup"

Members = tuple[tuple[str, str], ...]  # ((controllers, path), ...) in file order

# criu's --manage-cgroups modes
CG_MODES = ("none", "props", "soft", "full", "strict", "ignore")

# CRIU's built-in property lists (criu/cgroup-props.c), in the order they are
# written back: limit_in_bytes before memsw.limit_in_bytes, cpus/mems first.
V1_PROPS: dict[str, tuple[str, ...]] = {
    "cpu": ("cpu.shares", "cpu.cfs_period_us", "cpu.cfs_quota_us", "cpu.rt_period_us",
            "cpu.rt_runtime_us"),
    "memory": ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.swappiness",
               "memory.soft_limit_in_bytes", "memory.move_charge_at_immigrate",
               "memory.oom_control", "memory.use_hierarchy", "memory.kmem.limit_in_bytes",
               "memory.kmem.tcp.limit_in_bytes"),
    "cpuset": ("cpuset.cpus", "cpuset.mems", "cpuset.memory_migrate", "cpuset.cpu_exclusive",
               "cpuset.mem_exclusive", "cpuset.mem_hardwall", "cpuset.memory_spread_page",
               "cpuset.memory_spread_slab", "cpuset.sched_load_balance",
               "cpuset.sched_relax_domain_level"),
    "blkio": ("blkio.weight",),
    "net_cls": ("net_cls.classid",),
    "net_prio": ("net_prio.ifpriomap",),
    "pids": ("pids.max",),
    "devices": ("devices.list",),
}
V1_GLOBAL = ("cgroup.clone_children", "notify_on_release")
V2_GLOBAL = ("cgroup.type", "cgroup.subtree_control", "cgroup.max.descendants",
             "cgroup.max.depth", "cgroup.freeze")
V2_PROPS: dict[str, tuple[str, ...]] = {
    "cpuset": ("cpuset.cpus", "cpuset.mems", "cpuset.cpus.partition"),
    "cpu": ("cpu.weight", "cpu.max", "cpu.max.burst", "cpu.idle"),
    "memory": ("memory.max", "memory.high", "memory.low", "memory.min", "memory.swap.max",
               "memory.zswap.max", "memory.oom.group"),
    "pids": ("pids.max",),
    "io": ("io.weight", "io.max"),
}


def parse_cgroup_root(text: str) -> tuple[str | None, str]:
    """criu's --cgroup-root "[CONTROLLER:]/PATH" -> (controller or None, path)."""
    ctl, sep, path = text.rpartition(":")
    if not path.startswith("/"):
        raise ValueError("not [CONTROLLER:]/PATH")
    return (ctl if sep else None), "/" + path.strip("/")


def _root_for(roots: tuple[str, ...], name: str) -> str | None:
    """The --cgroup-root of the hierarchy ``name`` ("cpu,cpuacct", "" for
    cgroup2): one naming any of its controllers, else the one naming none."""
    cnames = set(name.split(",")) if name else {""}
    general = None
    for text in roots:
        ctl, path = parse_cgroup_root(text)
        if ctl is None:
            general = path
        elif ctl in cnames or (ctl == "cgroup2" and not name):
            return path
    return general


def parse_cgroup(text: str, path: str = "/proc/PID/cgroup") -> Members:
    """/proc/PID/cgroup: "ID:controllers:path" lines (controllers "" for v2)."""
    out = []
    for line in text.split("\n"):
        if not line:
            continue
        parts = line.split(":", 2)
        if len(parts) != 3:
            raise ImageError(path, f"not a cgroup line: {line!r}")
        out.append((parts[1], parts[2]))
    return tuple(out)


def _read(pid: int, tid: int) -> Members:
    path = f"/proc/{pid}/task/{tid}/cgroup"
    with open(path) as f:
        return parse_cgroup(f.read(), path)


def dump(ctx: "DumpContext", task: "DumpTask") -> None:
    sets: dict[Members, int] = ctx.kind_state.setdefault(NAME, {})
    for th in task.threads:
        members = _read(task.pid, th.tid)
        ident = sets.setdefault(members, len(sets) + 1)
        th.core.thread_core.cg_set = ident
        if th.tid == task.pid:
            task.core.tc.cg_set = ident


def inner_view(pid: int) -> Members:
    """/proc/PID/cgroup as a reader in PID's cgroup namespace sees it."""
    own = os.open("/proc/thread-self/ns/cgroup", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(f"/proc/{pid}/ns/cgroup", os.O_RDONLY | os.O_CLOEXEC)
        try:
            libc.syscall(C.NR["setns"], target, C.CLONE_NEWCGROUP)
        finally:
            os.close(target)
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                return parse_cgroup(f.read(), f"/proc/{pid}/cgroup")
        finally:
            libc.syscall(C.NR["setns"], own, C.CLONE_NEWCGROUP)
    finally:
        os.close(own)


def roots(outer: Members, inner: Members, who: str) -> dict[str, str]:
    """The namespace's root cgroup in each hierarchy: outer path less inner."""
    inside = dict(inner)
    out = {}
    for name, path in outer:
        ipath = inside.get(name)
        what = f"{name or 'cgroup2'}:{path}"
        if ipath is None or ipath.startswith("/.."):
            raise Unsupported(f"{who}: cgroup namespace: its cgroup {what} is outside the "
                              f"namespace's root (seen as {ipath} inside)")
        if ipath == "/":
            out[name] = path
        elif path.endswith(ipath):
            out[name] = path[:len(path) - len(ipath)] or "/"
        else:
            raise Unsupported(f"{who}: cgroup namespace: its cgroup {what} is seen as {ipath} "
                              "inside: no root of the namespace fits")
    return out


def ns_roots(pid: int) -> dict[str, str]:
    """The roots of ``pid``'s cgroup namespace in every hierarchy (empty
    when it shares procsnap's)."""
    if os.stat(f"/proc/{pid}/ns/cgroup").st_ino == os.stat("/proc/self/ns/cgroup").st_ino:
        return {}
    return roots(_read(pid, pid), inner_view(pid), f"pid {pid}")


def finish(ctx: "DumpContext") -> None:
    sets: dict[Members, int] = ctx.kind_state.get(NAME, {})
    if not sets or ctx.opts.manage_cgroups == "ignore":
        return
    entry = cgroup_pb2.cgroup_entry()
    used: dict[str, set[str]] = {}
    for members, ident in sets.items():
        entry.sets.append(cgroup_pb2.cg_set_entry(
            id=ident, ctls=[cgroup_pb2.cg_member_entry(name=n, path=p) for n, p in members]))
        for name, path in members:
            used.setdefault(name, set()).add(path)
    # a tree in a cgroup namespace of its own: the namespace's root is part
    # of its state, saved (and moved by --cgroup-root) with what is below
    nsroots = ns_roots(ctx.tasks[0].pid)
    for name, paths in used.items():
        ctl = entry.controllers.add(cnames=name.split(",") if name else [""])
        base = _root_for(ctx.opts.cgroup_root, name)
        tops = set()
        for p in paths:
            for top in (base, nsroots.get(name)):
                if top is not None and (p + "/").startswith(top.rstrip("/") + "/"):
                    p = top
            tops.add(p)
        # a root inside another is saved as part of it; a hierarchy's root
        # always exists and holds the whole machine: it is not saved
        tops = {t for t in tops if t != "/" and not any(
            o != t and (t + "/").startswith(o.rstrip("/") + "/") and o != "/" for o in tops)}
        if not tops:
            continue
        with _hierarchy(name) as (root_dir, mnt_root):
            for top in sorted(tops):
                d = _dir_of(root_dir, mnt_root, top)
                if d is not None and os.path.isdir(d):
                    node = ctl.dirs.add(dir_name=top.strip("/"))
                    _add_tree(name, node, d)
    ctx.add_shared("cgroup", entry)


def _perms(st: os.stat_result) -> Any:
    return cgroup_pb2.cgroup_perms(mode=st.st_mode, uid=st.st_uid, gid=st.st_gid)


def _add_tree(name: str, node: Any, d: str) -> None:
    """A directory (empty cgroups are state too) and every one below it,
    as CRIU's nested cgroup_dir_entry: owner, mode, properties."""
    _fill(name, node, d)
    try:
        names = sorted(os.listdir(d))
    except OSError:
        return
    for sub in names:
        p = os.path.join(d, sub)
        if os.path.isdir(p) and not os.path.islink(p):
            _add_tree(name, node.children.add(dir_name=sub), p)


def prop_names(name: str, d: str) -> list[str]:
    """The property files of directory ``d`` of hierarchy ``name`` that are
    saved, in the order they are written back."""
    if name:
        out = [p for c in name.split(",") for p in V1_PROPS.get(c, ())]
        return out + list(V1_GLOBAL)
    out = list(V2_GLOBAL)
    try:
        with open(os.path.join(d, "cgroup.controllers")) as f:
            ctls = f.read().split()
    except OSError:
        ctls = []
    for c in ctls:
        out += V2_PROPS.get(c, ())
        if c == "hugetlb":
            out += sorted(f for f in os.listdir(d) if f.startswith("hugetlb.")
                          and (f.endswith(".max") or f.endswith(".rsvd.max")))
    return out


def _read_prop(path: str, prop: str) -> str | None:
    try:
        with open(path) as f:
            value = f.read()
    except OSError:
        return None  # a file this kernel does not have, or will not read
    value = value.rstrip("\n")
    if prop == "memory.oom_control":
        # "oom_kill_disable 0\nunder_oom 0...": the one writable field (as CRIU)
        first = value.split("\n", 1)[0].split()
        return first[1] if len(first) == 2 else None
    return value


def _fill(name: str, node: Any, d: str) -> None:
    st = os.stat(d)
    node.dir_perms.CopyFrom(_perms(st))
    saved = set()
    for prop in prop_names(name, d):
        f = os.path.join(d, prop)
        if not os.path.exists(f):
            continue
        value = _read_prop(f, prop)
        if value is None:
            continue
        entry = node.properties.add(name=prop, value=value)
        entry.perms.CopyFrom(_perms(os.lstat(f)))
        saved.add(prop)
    for fname in sorted(os.listdir(d)):
        if fname in saved:
            continue
        f = os.path.join(d, fname)
        try:
            fst = os.lstat(f)
        except OSError:
            continue
        # a file given away (delegation): its owner and mode are state
        if not os.path.isdir(f) and (fst.st_uid, fst.st_gid) != (0, 0):
            node.properties.add(name=fname, value="", perms=_perms(fst))


def _dir_of(root_dir: str, mnt_root: str, path: str) -> str | None:
    if mnt_root != "/" and not (path + "/").startswith(mnt_root.rstrip("/") + "/"):
        return None
    return os.path.join(root_dir, path[len(mnt_root.rstrip("/")):].lstrip("/"))


# ----------------------------------------------------------------- restore

def _entries(rctx: "RestoreContext") -> list[Any]:
    """cgroup.img with --cgroup-root applied (read once): each moved top
    directory renamed, the paths of the sets in it rewritten."""
    state = rctx.kind_state.get(NAME + ".img")
    if state is not None:
        return state  # type: ignore[no-any-return]
    state = []
    moves: dict[str, list[tuple[str, str]]] = {}  # hierarchy -> (old top, new top)
    rctx.kind_state[NAME + ".moves"] = moves
    if rctx.opts.manage_cgroups != "ignore" and \
            os.path.exists(images.image_path(rctx.images_dir, "cgroup", None)):
        state = list(images.read_image(rctx.images_dir, "cgroup"))
    for entry in state:
        for ctl in entry.controllers:
            name = ",".join(ctl.cnames)
            new = _root_for(rctx.opts.cgroup_root, name)
            if new is None:
                continue
            for top in ctl.dirs:
                old = "/" + top.dir_name
                moves.setdefault(name, []).append((old, new))
                for s in entry.sets:
                    for m in s.ctls:
                        if m.name == name and (m.path + "/").startswith(old + "/"):
                            m.path = (new.rstrip("/") + m.path[len(old):]) or "/"
                            if m.cgns_prefix:
                                # the cgroup namespace's root moves with the tree
                                # (or is the new root when it was above the old one)
                                m.cgns_prefix = max(m.cgns_prefix - len(old), 0) + \
                                    len(new.rstrip("/"))
                top.dir_name = new.strip("/")
    rctx.kind_state[NAME + ".img"] = state
    return state


def moved_mount_root(rctx: "RestoreContext", fstype: str, options: str, root: str) -> str:
    """The root of a cgroup mount (``fstype`` cgroup or cgroup2, its super
    block ``options``) as --cgroup-root moves the tree: a mount of a moved
    cgroup (a container's own, seen from outside) follows it, as the
    tasks' cgroups do."""
    _entries(rctx)
    moves: dict[str, list[tuple[str, str]]] = rctx.kind_state.get(NAME + ".moves", {})
    opts = set(options.split(","))
    for name, pairs in moves.items():
        mine = (not name) if fstype == "cgroup2" else bool(name) and set(name.split(",")) <= opts
        if not mine:
            continue
        for old, new in pairs:
            if (root + "/").startswith(old + "/"):
                return (new.rstrip("/") + root[len(old):]) or "/"
    return root


def restore_sets(rctx: "RestoreContext") -> dict[int, Members]:
    """The cg sets as the restore places the tasks: id -> members (none
    under --manage-cgroups=ignore)."""
    state = rctx.kind_state.get(NAME)
    if state is None:
        state = {}
        for entry in _entries(rctx):
            for s in entry.sets:
                state[s.id] = tuple((m.name, m.path) for m in s.ctls)
        rctx.kind_state[NAME] = state
    return state  # type: ignore[no-any-return]


_sets = restore_sets


def restore_members(rctx: "RestoreContext", ident: int) -> list[tuple[str, str, int]]:
    """The members of cg set ``ident`` as the restore places them:
    (controllers, path, cgns_prefix)."""
    for entry in _entries(rctx):
        for s in entry.sets:
            if s.id == ident:
                return [(m.name, m.path, m.cgns_prefix) for m in s.ctls]
    return []


def restore(rctx: "RestoreContext", rt: "RestoreTask") -> None:
    sets = _sets(rctx)
    if not sets:
        return  # an image set without cgroup.img, or --manage-cgroups=ignore
    leader: Members | None = None
    for th in rt.threads:
        tc = th.core.thread_core
        ident = tc.cg_set if tc.HasField("cg_set") else rt.core.tc.cg_set
        if not ident:
            continue
        want = sets.get(ident)
        if want is None:
            raise ImageError(rt.image_name("core", th.tid), f"cg_set {ident} is not in cgroup.img")
        is_leader = th.tid == rt.pid
        if is_leader:
            leader = want
        elif want == leader:
            continue  # cloned from the leader after it joined: already there
        have = dict(_read(rt.pid, th.tid))
        for name, path in want:
            if have.get(name) != path:
                join(rctx, rt, th.tid, name, path, whole=is_leader)


def prepare(rctx: "RestoreContext") -> None:
    """Make the saved cgroup directories of every hierarchy (with their
    properties, as --manage-cgroups says) before any task is created, as
    CRIU does: a task's fd may be open on one (zdtm cgroup02)."""
    names = {",".join(c.cnames) for e in _entries(rctx) for c in e.controllers if c.dirs}
    for name in sorted(names):
        with _hierarchy(name) as (root_dir, mnt_root):
            _make_dirs(rctx, name, root_dir, mnt_root)


def join(rctx: "RestoreContext", rt: "RestoreTask", tid: int, name: str, path: str,
         whole: bool) -> None:
    """Move task ``rt`` (``whole``) or its thread ``tid`` into cgroup
    ``path`` of hierarchy ``name`` (made first, if saved, per the mode)."""
    what = f"{name or 'cgroup2'}:{path}"
    who = f"pid {rt.pid}" if whole else f"pid {rt.pid}: thread {tid}"
    with _hierarchy(name) as (root_dir, mnt_root):
        d = _dir_of(root_dir, mnt_root, path)
        if d is None:
            raise RestoreError(f"{who}: cgroup {what} is outside the mounted part "
                               f"{mnt_root} of its hierarchy")
        _make_dirs(rctx, name, root_dir, mnt_root)
        try:
            fname = "cgroup.procs" if whole else ("cgroup.threads" if not name else "tasks")
            with open(os.path.join(d, fname), "w") as f:
                f.write(str(tid if not whole else rt.pid))
        except OSError as exc:
            raise RestoreError(f"{who}: cannot join cgroup {what} ({d}): "
                               f"{exc.strerror or exc}") from None


def _make_dirs(rctx: "RestoreContext", name: str, root_dir: str, mnt_root: str) -> None:
    """The saved directories of the hierarchy, once, as --manage-cgroups says."""
    done = rctx.kind_state.setdefault(NAME + ".made", set())
    if name in done:
        return
    done.add(name)
    mode = rctx.opts.manage_cgroups
    for ctl in _controllers(rctx, name):
        _make_level(name, mode, ctl.dirs, "", root_dir, mnt_root)


def _make_level(name: str, mode: str, dirs: Any, path: str, root_dir: str,
                mnt_root: str) -> None:
    for node in dirs:
        sub = f"{path.rstrip('/')}/{node.dir_name}" if node.dir_name else (path or "/")
        what = f"cgroup {name or 'cgroup2'}:{sub}"
        d = _dir_of(root_dir, mnt_root, sub)
        if d is None:
            raise RestoreError(f"{what} is outside the mounted part {mnt_root} of its hierarchy")
        if not os.path.isdir(d):
            if mode in ("none", "props"):
                raise RestoreError(f"{what} does not exist (--manage-cgroups={mode} "
                                   "requires it to)")
            try:
                os.makedirs(d)
            except OSError as exc:
                raise RestoreError(f"cannot make {what} ({d}): {exc.strerror or exc}") from None
            _set_dir(what, d, node, props=True)
        elif mode == "strict" and node.dir_name:
            raise RestoreError(f"{what} exists (--manage-cgroups=strict restores cgroups "
                               "from scratch)")
        elif mode in ("full", "props"):
            _set_dir(what, d, node, props=True)
        elif mode == "soft" and node.dir_name:
            _set_dir(what, d, node, props=False)  # as CRIU: owner and mode only
        _make_level(name, mode, node.children, sub, root_dir, mnt_root)


def _set_dir(what: str, d: str, node: Any, props: bool) -> None:
    """Owner, mode and properties of directory ``d``, before its children
    are made (cpuset.cpus/mems, cgroup.subtree_control) and tasks join."""
    try:
        if node.HasField("dir_perms"):
            _apply(d, node.dir_perms)
        for prop in node.properties:
            if prop.HasField("perms") and os.path.exists(os.path.join(d, prop.name)):
                _apply(os.path.join(d, prop.name), prop.perms)
    except OSError as exc:
        raise RestoreError(f"{what}: cannot set owner/mode: {exc.strerror or exc}") from None
    if not props:
        return
    todo = [p for p in node.properties if p.value or p.name == "devices.list"
            or p.name in V1_GLOBAL or p.name in V2_GLOBAL]
    failed: list[tuple[Any, OSError]] = []
    for prop in todo:
        try:
            _write_prop(d, prop.name, prop.value)
        except OSError as exc:
            failed.append((prop, exc))
    for prop, _ in list(failed):  # one more round: an order the kernel needed
        try:
            _write_prop(d, prop.name, prop.value)
            failed = [f for f in failed if f[0] is not prop]
        except OSError:
            pass
    if failed:
        bad, err = failed[0]
        raise RestoreError(f"{what}: cannot set {bad.name} to {bad.value!r}: "
                           f"{err.strerror or err}")


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _write_prop(d: str, prop: str, value: str) -> None:
    """One property, when the file differs from it; multi-line values one
    line a write (the kernel parses only the first)."""
    f = os.path.join(d, prop)
    if not os.path.exists(f):
        if prop in V2_GLOBAL or prop.startswith("cgroup."):
            return  # a global this kernel lacks: nothing was limited by it
        raise OSError(2, "the file is missing (its controller is not enabled here?)")
    if _read_prop(f, prop) == value:
        return
    if prop == "devices.list":
        # a whitelist: deny all, then allow each saved line (as CRIU)
        _write(os.path.join(d, "devices.deny"), "a")
        for line in value.split("\n"):
            if line:
                _write(os.path.join(d, "devices.allow"), line)
    elif prop == "cgroup.subtree_control":
        have = set((_read_prop(f, prop) or "").split())
        want = set(value.split())
        change = [f"-{c}" for c in sorted(have - want)] + [f"+{c}" for c in sorted(want - have)]
        if change:
            _write(f, " ".join(change))
    elif prop == "cgroup.type":
        if value == "threaded":
            _write(f, value)
    elif prop == "net_prio.ifpriomap":
        for line in value.split("\n"):
            if line:
                try:
                    _write(f, line)
                except OSError:
                    pass  # an interface this network namespace lacks
    else:
        _write(f, value)


def _apply(path: str, perms: Any) -> None:
    os.chown(path, perms.uid, perms.gid)
    os.chmod(path, perms.mode & 0o7777)


def _controllers(rctx: "RestoreContext", name: str) -> list[Any]:
    want = name.split(",") if name else [""]
    out = []
    for entry in _entries(rctx):
        out += [c for c in entry.controllers if list(c.cnames) == want]
    return out


# procsnap's /proc/self/mountinfo as last read, and its parse
_MOUNTS: list[Any] = [None, []]


class _hierarchy:
    """The restorer's mount of a hierarchy, or a temporary one: (dir, root)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.tmp: str | None = None

    def __enter__(self) -> tuple[str, str]:
        want = set(self.name.split(",")) if self.name else None
        with open("/proc/self/mountinfo") as f:
            text = f.read()
        if _MOUNTS[0] != text:   # parsed again only when it changed (20 looks a restore)
            _MOUNTS[:] = [text, parse_mountinfo(text, "/proc/self/mountinfo")]
        mounts = _MOUNTS[1]
        best = None
        for m in mounts:
            if want is None and m.fstype == "cgroup2":
                pass
            elif want is not None and m.fstype == "cgroup" and \
                    want == {o for o in m.super_options.split(",") if o not in _NOT_CONTROLLERS
                             and not o.startswith("release_agent=")}:
                pass
            else:
                continue
            if best is None or len(m.root) < len(best.root):
                best = m
        if best is not None:
            return best.mount_point, best.root
        import tempfile  # only where no hierarchy is mounted: 4 ms of start-up otherwise
        self.tmp = tempfile.mkdtemp(prefix="procsnap-cgroup-")
        # a hierarchy of no controller (name=X only) is mounted with "none"
        named_only = want is not None and all(c.startswith("name=") for c in want)
        fstype, opts = ("cgroup2", "") if want is None else \
            ("cgroup", ("none," if named_only else "") + self.name)
        try:
            libc.mount("none", self.tmp, fstype, 0, opts)
        except OSError as exc:
            os.rmdir(self.tmp)
            raise RestoreError(f"cannot mount cgroup hierarchy {self.name or 'cgroup2'}: "
                               f"{exc.strerror or exc}") from None
        return self.tmp, "/"

    def __exit__(self, *exc: Any) -> None:
        if self.tmp is not None:
            libc.umount2(self.tmp, 2)  # MNT_DETACH
            os.rmdir(self.tmp)


# super options of a v1 cgroup mount that are not controllers
_NOT_CONTROLLERS = {"rw", "ro", "none", "noprefix", "xattr", "clone_children",
                    "cpuset_v2_mode", "favordynmods", "nsdelegate", "memory_recursiveprot",
                    "memory_localevents", "memory_hugetlb_accounting"}
