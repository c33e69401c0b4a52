"""Cgroup membership: each task's and each thread's cgroup in every
hierarchy, v1 and v2 (CRIU's cgroup.img: cg sets; core's
thread_core.cg_set, and tc.cg_set for the task).

Dump: /proc/PID/task/TID/cgroup, one line per hierarchy
("4:cpu,cpuacct:/a/b", "0::/c" for cgroup2).  Equal lists share one
cg_set id.  The controllers' layout (cnames, and the directories in use)
goes into cgroup.img as CRIU writes it; controller *properties* (limits,
weights) are not saved yet, so nothing here depends on them.

Restore: each task is written into ``cgroup.procs`` of its cgroup in every
hierarchy, a thread whose cgroup differs from its leader's into ``tasks``
(v1) or ``cgroup.threads`` (v2).  The hierarchy is found among the
restorer's mounts (a v1 hierarchy by its exact controller set, name=X
included); one mounted nowhere is mounted for the moment on a private
temporary directory.  A missing cgroup directory is created (as criu's
default "soft" mode does).  A cgroup the task cannot join is a restore
error naming it.  It runs after memory (the threads exist by then): the
pages written before are charged to the restorer's cgroup.
"""
from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING, Any

from .. import images
from ..errors import ImageError, RestoreError
from ..images.pb import cgroup_pb2
from ..kernel import libc
from ..procfs.parse import parse_mountinfo

if TYPE_CHECKING:
    from ..tasks import DumpContext, DumpTask
    from ..tasks import RestoreContext, RestoreTask

NAME = "cgroup"

Members = tuple[tuple[str, str], ...]  # ((controllers, path), ...) in file order


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


def finish(ctx: "DumpContext") -> None:
    sets: dict[Members, int] = ctx.kind_state.get(NAME, {})
    if not sets:
        return
    entry = cgroup_pb2.cgroup_entry()
    used: dict[str, set[str]] = {}
    for members, ident in sets.items():
        entry.sets.append(cgroup_pb2.cg_set_entry(
            id=ident, ctls=[cgroup_pb2.cg_member_entry(name=n, path=p) for n, p in members]))
        for name, path in members:
            used.setdefault(name, set()).add(path)
    for name, paths in used.items():
        ctl = entry.controllers.add(cnames=name.split(",") if name else [""])
        below_root = sorted(p for p in paths if p != "/")
        if not below_root:
            continue  # a hierarchy's root always exists: nothing to create
        with _hierarchy(name) as (root_dir, mnt_root):
            for path in below_root:
                d = _dir_of(root_dir, mnt_root, path)
                if d is not None:
                    _add_tree(ctl.dirs, path, d)
    ctx.add_shared("cgroup", entry)


def _perms(st: os.stat_result) -> Any:
    return cgroup_pb2.cgroup_perms(mode=st.st_mode, uid=st.st_uid, gid=st.st_gid)


def _add_tree(dirs: Any, path: str, d: str) -> None:
    """The directory of a cgroup in use and every one below it (empty
    cgroups are state too), as CRIU's nested cgroup_dir_entry, each with
    its owner and mode, and the files whose owner or mode was changed
    (as perms-only properties: controller values are not saved yet)."""
    level, node = dirs, None
    for part in [p for p in path.split("/") if p]:
        for node in level:
            if node.dir_name == part:
                break
        else:
            node = level.add(dir_name=part)
        level = node.children
    if node is None:
        level_dirs = dirs  # the hierarchy's root: only its children
    else:
        level_dirs = node.children
        _fill(node, d)
    try:
        names = sorted(os.listdir(d))
    except OSError:
        return
    for name in names:
        sub = os.path.join(d, name)
        if os.path.isdir(sub) and not os.path.islink(sub):
            if not any(c.dir_name == name for c in level_dirs):
                _add_tree(dirs, f"{path.rstrip('/')}/{name}", sub)


def _fill(node: Any, d: str) -> None:
    if node.HasField("dir_perms"):
        return
    st = os.stat(d)
    node.dir_perms.CopyFrom(_perms(st))
    for name in sorted(os.listdir(d)):
        f = os.path.join(d, name)
        try:
            fst = os.lstat(f)
        except OSError:
            continue
        # a file given away (delegation): its owner and mode are state
        if not os.path.isdir(f) and (fst.st_uid, fst.st_gid) != (0, 0):
            node.properties.add(name=name, value="", perms=_perms(fst))


def _dir_of(root_dir: str, mnt_root: str, path: str) -> str | None:
    if mnt_root != "/" and not (path + "/").startswith(mnt_root.rstrip("/") + "/"):
        return None
    return os.path.join(root_dir, path[len(mnt_root.rstrip("/")):].lstrip("/"))


# ----------------------------------------------------------------- restore

def _sets(rctx: "RestoreContext") -> dict[int, Members]:
    state = rctx.kind_state.get(NAME)
    if state is None:
        state = {}
        if os.path.exists(images.image_path(rctx.images_dir, "cgroup", None)):
            for entry in images.read_image(rctx.images_dir, "cgroup"):
                for s in entry.sets:
                    state[s.id] = tuple((m.name, m.path) for m in s.ctls)
        rctx.kind_state[NAME] = state
    return state


def restore(rctx: "RestoreContext", rt: "RestoreTask") -> None:
    sets = _sets(rctx)
    if not sets:
        return  # an image set without cgroup.img: nothing was recorded
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
                _join(rctx, rt, th.tid, name, path, whole=is_leader)


def _join(rctx: "RestoreContext", rt: "RestoreTask", tid: int, name: str, path: str,
          whole: bool) -> None:
    what = f"{name or 'cgroup2'}:{path}"
    who = f"pid {rt.pid}" if whole else f"pid {rt.pid}: thread {tid}"
    with _hierarchy(name) as (root_dir, mnt_root):
        d = _dir_of(root_dir, mnt_root, path)
        if d is None:
            raise RestoreError(f"{who}: cgroup {what} is outside the mounted part "
                               f"{mnt_root} of its hierarchy")
        try:
            _make_dirs(rctx, name, path, root_dir, mnt_root)
            fname = "cgroup.procs" if whole else ("cgroup.threads" if not name else "tasks")
            with open(os.path.join(d, fname), "w") as f:
                f.write(str(tid if not whole else rt.pid))
        except OSError as exc:
            raise RestoreError(f"{who}: cannot join cgroup {what} ({d}): "
                               f"{exc.strerror or exc}") from None


def _has_properties(name: str, parent: str) -> bool:
    """Would a new cgroup here hold controller values we did not save?"""
    if not name:
        try:
            with open(os.path.join(parent, "cgroup.subtree_control")) as f:
                return bool(f.read().strip())
        except OSError:
            return False
    return any(not c.startswith("name=") for c in name.split(","))


def _make_dirs(rctx: "RestoreContext", name: str, path: str, root_dir: str,
               mnt_root: str) -> None:
    """Create the saved directory tree of the hierarchy below the mount
    (criu's soft mode: only what is missing), owners and modes included."""
    done = rctx.kind_state.setdefault(NAME + ".made", set())
    if name in done:
        return
    done.add(name)
    for entry in _controllers(rctx, name):
        _make_level(name, entry.dirs, "", root_dir, mnt_root)


def _make_level(name: str, dirs: Any, path: str, root_dir: str, mnt_root: str) -> None:
    for node in dirs:
        sub = f"{path}/{node.dir_name}"
        d = _dir_of(root_dir, mnt_root, sub)
        if d is not None and not os.path.isdir(d):
            if _has_properties(name, os.path.dirname(d)):
                raise OSError(0, f"it is missing, and procsnap does not save controller "
                                 f"properties yet (criu's --manage-cgroups): a new {sub} "
                                 "would lose its limits")
            os.mkdir(d)
            if node.HasField("dir_perms"):
                _apply(d, node.dir_perms)
            for prop in node.properties:
                if prop.HasField("perms"):
                    _apply(os.path.join(d, prop.name), prop.perms)
        _make_level(name, node.children, sub, root_dir, mnt_root)


def _apply(path: str, perms: Any) -> None:
    os.chown(path, perms.uid, perms.gid)
    os.chmod(path, perms.mode & 0o7777)


def _controllers(rctx: "RestoreContext", name: str) -> list[Any]:
    want = name.split(",") if name else [""]
    out = []
    if os.path.exists(images.image_path(rctx.images_dir, "cgroup", None)):
        for entry in images.read_image(rctx.images_dir, "cgroup"):
            out += [c for c in entry.controllers if list(c.cnames) == want]
    return out


class _hierarchy:
    """The restorer's mount of a hierarchy, or a temporary one: (dir, root)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.tmp: str | None = None

    def __enter__(self) -> tuple[str, str]:
        want = set(self.name.split(",")) if self.name else None
        with open("/proc/self/mountinfo") as f:
            mounts = parse_mountinfo(f.read(), "/proc/self/mountinfo")
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
