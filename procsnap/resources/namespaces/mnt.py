"""The mount namespace: its mount tree (CRIU's mountpoints-ID.img) and the
contents of its tmpfs mounts (tmpfs-dev-DEV.tar.gz).

Dump: /proc/PID/mountinfo of a task of the namespace is the tree as the
namespace sees it; every mount becomes one mnt_entry, in the namespace's
own order (creation order: a parent before its children, a bind's source
before the bind).  How each mount comes back is decided by one function,
``plan``, used by both halves:

==========================  ==============================================
the namespace's root mount  bound from ``--root DIR`` (criu's meaning:
                            the container's root file system)
named external              ``--external mnt[MOUNTPOINT]:KEY`` (or criu's
                            ``--ext-mount-map MOUNTPOINT:KEY``, or found by
                            ``--ext-mount-map auto`` in procsnap's own
                            mounts); bound at restore from the path given
                            for KEY
part of an earlier mount    a bind mount of it (same super-block, root
                            inside the earlier mount's root)
proc, sysfs, devpts,        mounted anew by the root puppet itself, so
mqueue, cgroup(2), ...      proc, sysfs and mqueue show its pid, net and
                            ipc namespaces; devpts is a new instance
tmpfs (its root mounted)    mounted anew; contents saved as a tar (made
                            inside the namespace from a detached copy of
                            the mount, so what child mounts hide is kept)
anything else               lives outside the dumped tree (a host bind, a
                            FUSE server such as lxcfs, an overlayfs root):
                            a dump error naming it, unless named external
==========================  ==============================================

Propagation: peer groups (shared:N) and masters (master:N) inside the
namespace are rebuilt with MOVE_MOUNT_SET_GROUP once every mount exists
(all mounts are made private while the tree is built, so no mount event
propagates anywhere while it is built); a group that reaches outside the
namespace (the host's) is refused unless the mount is external.

Restore, in the root puppet just cloned with CLONE_NEWNS (a copy of the
restorer's mounts): everything is made private first, so nothing done
here can reach the host; the tree is built under a temporary directory,
the puppet pivot_root()s into it and the old root is detached.  A cgroup
file system is mounted from procsnap's cgroup namespace (the puppet enters
it for the mount): mounted in the tree's new one, it would be rooted at
that namespace's root rather than at the root the image read (a box's copy
of the host's /sys/fs/cgroup/memory is "/"); --cgroup-root moves a cgroup
mount's root with the tree.  Once the tree is built, every mount's root
(mountinfo field 4, read from outside as at the dump) is checked against
its image (``check_roots``): a root that differs is a restore error naming
the mount and both roots, never a silent change of what the tree sees.  After
the pivot, procsnap's own files (pages images, restorer fds) are opened by
procsnap and handed to the puppet (``RestoreTask.open_in_puppet``), and
the tree's own names that procsnap makes or opens (ghost files, FIFOs, unix
socket files) are reached through an fd on the new root
(``RestoreContext.tree_path``, ``in_tree_root``).
"""
from __future__ import annotations

import ctypes
import fcntl
import os
from ...record import record
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any, Callable

from ... import logs
from ... import images, tmpnames
from ...errors import DumpError, ImageError, RestoreError, Unsupported
from ...images.pb import mnt_pb2
from ...inject import InjectError
from ...kernel import consts as C
from ...kernel.libc import pidfd_getfd, syscall
from ...procfs.parse import MountInfo, parse_mountinfo
from .. import cgroup

log = logs.Logger("procsnap")

if TYPE_CHECKING:
    from ...tasks import DumpContext, DumpTask, RestoreContext, RestoreTask

NAME = "mnt"
CLONE_FLAG = C.CLONE_NEWNS
# mount(2) flags (include/uapi/linux/mount.h)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_SYNCHRONOUS, MS_REMOUNT, MS_MANDLOCK, MS_DIRSYNC, MS_NOSYMFOLLOW = 16, 32, 64, 128, 256
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 1024, 2048, 4096, 16384
MS_UNBINDABLE, MS_PRIVATE, MS_SLAVE, MS_SHARED = 1 << 17, 1 << 18, 1 << 19, 1 << 20
MS_RELATIME, MS_STRICTATIME, MS_LAZYTIME = 1 << 21, 1 << 24, 1 << 25
MNT_DETACH = 2
OPEN_TREE_CLONE = 1
MOVE_MOUNT_F_EMPTY_PATH, MOVE_MOUNT_T_EMPTY_PATH, MOVE_MOUNT_SET_GROUP = 0x4, 0x40, 0x100
AT_EMPTY_PATH = 0x1000
# mount_setattr(2) attributes
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC = 1, 2, 4, 8
MOUNT_ATTR__ATIME, MOUNT_ATTR_NOATIME, MOUNT_ATTR_STRICTATIME = 0x70, 0x10, 0x20
MOUNT_ATTR_NODIRATIME, MOUNT_ATTR_NOSYMFOLLOW = 0x80, 0x200000

# Per-mount options as mountinfo prints them (show_mnt_opts, show_vfsmnt).
MNT_OPTS = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
            "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME,
            "nosymfollow": MS_NOSYMFOLLOW}
# Super-block flags among the super options (show_sb_opts).
SB_OPTS = {"ro": MS_RDONLY, "sync": MS_SYNCHRONOUS, "dirsync": MS_DIRSYNC,
           "mand": MS_MANDLOCK, "lazytime": MS_LAZYTIME}

F = mnt_pb2
FSTYPES = {"proc": F.PROC, "sysfs": F.SYSFS, "devtmpfs": F.DEVTMPFS,
           "binfmt_misc": F.BINFMT_MISC, "tmpfs": F.TMPFS, "devpts": F.DEVPTS,
           "pstore": F.PSTORE, "securityfs": F.SECURITYFS, "fusectl": F.FUSECTL,
           "debugfs": F.DEBUGFS, "cgroup": F.CGROUP, "mqueue": F.MQUEUE, "fuse": F.FUSE,
           "overlay": F.OVERLAYFS, "autofs": F.AUTOFS, "tracefs": F.TRACEFS,
           "cgroup2": F.CGROUP2}
# File systems whose contents the kernel makes up: mounted anew at restore.
CGROUP_FS = ("cgroup", "cgroup2")
FRESH = {"proc", "sysfs", "devpts", "mqueue", "cgroup", "cgroup2", "binfmt_misc",
         "devtmpfs", "securityfs", "debugfs", "tracefs", "pstore", "fusectl", "configfs",
         "efivarfs"}
# ... and among them those with one super-block for the whole system: mounted
# with no options, so a new mount never reconfigures the host's.
SINGLETON = {"devtmpfs", "securityfs", "debugfs", "tracefs", "pstore", "fusectl",
             "configfs", "efivarfs"}


def kdev(major: int, minor: int) -> int:
    """The kernel's internal dev_t (MKKDEV), as CRIU's root_dev."""
    return (major << 20) | minor


def _flags(opts: str, table: dict[str, int]) -> tuple[int, list[str]]:
    flags, rest = 0, []
    for o in opts.split(","):
        if o in table:
            flags |= table[o]
        elif o not in ("rw", ""):
            rest.append(o)
    return flags, rest


def mount_flags(m: MountInfo) -> int:
    flags, _ = _flags(m.mount_options, MNT_OPTS)
    if not flags & (MS_NOATIME | MS_RELATIME):
        flags |= MS_STRICTATIME  # no atime word: the mount is strictatime
    return flags


def entry_of(m: MountInfo) -> Any:
    """One mnt_entry from one mountinfo line (ext_key is set by the caller)."""
    sb_flags, opts = _flags(m.super_options, SB_OPTS)
    e = mnt_pb2.mnt_entry(
        fstype=FSTYPES.get(m.fstype, F.AUTO), mnt_id=m.mnt_id,
        root_dev=kdev(m.major, m.minor), parent_mnt_id=m.parent_id,
        flags=mount_flags(m), root=m.root, mountpoint=m.mount_point, source=m.source,
        options=",".join(opts), sb_flags=sb_flags)
    if e.fstype == F.AUTO:
        # only then, as criu: its restore refuses an fsname beside a known
        # fstype ("fsname can be set only for FSTYPE__AUTO mounts")
        e.fsname = m.fstype
    for tag in m.optional:
        key, _, val = tag.partition(":")
        if key == "shared":
            e.shared_id = int(val)
        elif key == "master":
            e.master_id = int(val)
        elif key == "unbindable":
            e.flags |= MS_UNBINDABLE
    return e


def fsname(e: Any) -> str:
    if e.HasField("fsname") and e.fsname:
        return str(e.fsname)
    for name, code in FSTYPES.items():
        if code == e.fstype:
            return name
    return "?"


def _under(root: str, outer: str) -> str | None:
    """``root`` relative to ``outer`` ("" for the same), None if outside."""
    if outer == "/":
        return root.lstrip("/")
    if root == outer:
        return ""
    if root.startswith(outer.rstrip("/") + "/"):
        return root[len(outer.rstrip("/")) + 1:]
    return None


@record
class Step:
    """How one mount comes back: ``how`` is root, external, bind, fresh or
    tmpfs; a bind names its source mount and the path inside it."""
    entry: Any
    how: str
    src: Any = None
    rel: str = ""


def root_entry(entries: list[Any]) -> Any:
    ids = {e.mnt_id for e in entries}
    roots = [e for e in entries if e.parent_mnt_id not in ids or e.parent_mnt_id == e.mnt_id]
    if len(roots) != 1 or roots[0].mountpoint != "/":
        where = ", ".join(f"{e.mnt_id} at {e.mountpoint}" for e in roots) or "none"
        raise ValueError(f"the mount tree has no single root mount at / ({where})")
    return roots[0]


def ordered(entries: list[Any]) -> list[Any]:
    """Parents before children, otherwise in the namespace's own order."""
    root = root_entry(entries)
    kids: dict[int, list[Any]] = {}
    for e in entries:
        if e is not root:
            kids.setdefault(e.parent_mnt_id, []).append(e)
    rank = {e.mnt_id: n for n, e in enumerate(entries)}
    out, ready = [root], list(kids.get(root.mnt_id, []))
    while ready:
        ready.sort(key=lambda e: rank[e.mnt_id])
        e = ready.pop(0)
        out.append(e)
        ready += kids.get(e.mnt_id, [])
    return out


def plan(entries: list[Any]) -> tuple[list[Step], list[Any]]:
    """Steps in creation order, and the mounts that come from nowhere
    (outside the tree, not named external)."""
    steps: list[Step] = []
    lost: list[Any] = []
    done: list[Any] = []
    for n, e in enumerate(ordered(entries)):
        name = fsname(e)
        step: Step | None = None
        if n == 0:
            step = Step(e, "root")
        elif e.HasField("ext_key") and e.ext_key:
            step = Step(e, "external")
        else:
            for s in done:  # the first earlier mount of the fs that holds it
                if s.root_dev == e.root_dev and fsname(s) == name:
                    rel = _under(e.root, s.root)
                    if rel is not None:
                        step = Step(e, "bind", s, rel)
                        break
            if step is None and name in FRESH:
                step = Step(e, "fresh")
            elif step is None and name == "tmpfs" and e.root == "/":
                step = Step(e, "tmpfs")
        if step is None:
            lost.append(e)
            continue
        steps.append(step)
        done.append(e)
    return steps, lost


# ------------------------------------------------------------------ dump ----

def _externals(ctx: "DumpContext") -> dict[str, str]:
    """mountpoint -> key from --external mnt[MOUNTPOINT]:KEY."""
    out = {}
    for x in ctx.opts.external:
        if x.startswith("mnt[") and "]" in x:
            mp, _, key = x[4:].partition("]")
            out[mp] = key[1:] if key.startswith(":") and len(key) > 1 else mp
    return out


def _auto_key(e: Any, own: list[MountInfo]) -> str | None:
    """--ext-mount-map auto: the path in procsnap's own mounts that shows
    the same file system at the same root, if there is one."""
    for m in own:
        if kdev(m.major, m.minor) != e.root_dev or m.fstype != fsname(e):
            continue
        rel = _under(e.root, m.root)
        if rel is not None:
            path = os.path.join(m.mount_point, rel) if rel else m.mount_point
            if os.path.lexists(path):
                return path
    return None


def _describe(e: Any) -> str:
    return (f"mount {e.mnt_id} at {e.mountpoint} ({fsname(e)} {e.source or '-'}, root "
            f"{e.root})")


def dump(ctx: "DumpContext", ns_id: int, task: "DumpTask") -> None:
    pid = task.pid
    mounts = task.proc.mountinfo()
    own = parse_mountinfo(open("/proc/self/mountinfo").read(), "/proc/self/mountinfo")
    named = _externals(ctx)
    auto = getattr(ctx.opts, "ext_mount_auto", False)
    entries = []
    for m in mounts:
        if m.mount_point.endswith("//deleted"):
            raise Unsupported(f"pid {pid}: mount {m.mnt_id} at {m.mount_point}: its mountpoint "
                              "was deleted; it cannot be mounted again")
        if m.root.endswith("//deleted") and m.mount_point not in named:
            # a bind of a file or directory since removed (a pts gone, as
            # a leaked /dev/console bind): no name reaches it any more
            raise Unsupported(f"pid {pid}: mount {m.mnt_id} at {m.mount_point} ({m.fstype}): "
                              f"its root {m.root[:-len('//deleted')]} was deleted; it cannot "
                              "be mounted again (name it with --external mnt[...] to bind "
                              "something in its place)")
        e = entry_of(m)
        if m.mount_point in named:
            e.ext_mount, e.ext_key = True, named.pop(m.mount_point)
        entries.append(e)
    for mp in sorted(named):
        # As criu: the external mounts named are a map consulted for the
        # mounts found; one naming no mount names no state.  runc names
        # every /dev node of its spec, which are mknod'ed files unless
        # runc runs in a user namespace.
        log.info("pid %d: --external mnt[%s]: no mount there in its mount namespace "
                 "(not used)", pid, mp)
    try:
        steps, lost = plan(entries)
    except ValueError as exc:
        raise Unsupported(f"pid {pid}: mount namespace: {exc}") from None
    from . import user
    if user.owner(pid, "mnt") != os.stat("/proc/self/ns/user").st_ino:
        # A namespace of another user namespace holds the mounts it copied
        # from procsnap's locked, as they are: procsnap's own tmpfs there
        # (/dev/shm, ...) is the host's, not the tree's, and a copy made
        # inside could not even hold its files (their owners are not
        # mapped there): external, as a host bind is.
        lost += [s.entry for s in steps if s.how == "tmpfs" and _auto_key(s.entry, own)]
    for e in list(lost):
        key = _auto_key(e, own) if auto else None
        if key is not None:
            e.ext_mount, e.ext_key = True, key
            lost.remove(e)
    if lost:
        e = lost[0]
        raise Unsupported(f"pid {pid}: {_describe(e)} lives outside the dumped tree (a bind of "
                          "a host path, FUSE, overlayfs...): name it with --external "
                          f"mnt[{e.mountpoint}]:KEY (criu's --ext-mount-map; or "
                          "--ext-mount-map auto)")
    steps, _ = plan(entries)  # again: the mounts found by auto are external now
    _check_propagation(pid, entries, own)
    for s in steps:
        if s.how == "tmpfs":
            path = images.image_path(ctx.images_dir, "tmpfs-dev", s.entry.root_dev)
            ctx.created.append(path)
            _tar_tmpfs(pid, s.entry, path)
    for e in entries:
        ctx.add_shared("mountpoints", e, ns_id)


def _check_propagation(pid: int, entries: list[Any], own: list[MountInfo]) -> None:
    """A peer group or master reaching outside the namespace would be lost."""
    ours = set()
    for m in own:
        for tag in m.optional:
            if tag.startswith("shared:"):
                ours.add(int(tag[7:]))
    groups = {e.shared_id for e in entries if e.HasField("shared_id") and e.shared_id}
    for e in entries:
        if e.HasField("shared_id") and e.shared_id in ours:
            raise Unsupported(f"pid {pid}: {_describe(e)} is in peer group {e.shared_id} with "
                              "mounts outside its mount namespace; propagation to and from "
                              "the host is not restored (make it private or a slave "
                              "inside the namespace)")
        if e.HasField("master_id") and e.master_id and e.master_id not in groups:
            raise Unsupported(f"pid {pid}: {_describe(e)} is a slave of peer group "
                              f"{e.master_id} outside its mount namespace; that propagation "
                              "is not restored")


def _tar_tmpfs(pid: int, e: Any, path: str) -> None:
    """tmpfs-dev-DEV.tar.gz: the whole tmpfs, tarred by a child of ours
    that enters the target's mount namespace (another namespace's mount
    cannot be copied from outside: EINVAL), copies it into a namespace of
    its own, and tars a detached copy of the mount: no child mounts, so
    what they hide is kept, as CRIU does."""
    # tarfile (5 ms of import: not paid by trees without a tmpfs) imports
    # gzip lazily; the child tars inside the target's mount namespace, where
    # Python's library may not be: both are imported here, before the fork.
    import gzip  # noqa: F401
    import tarfile  # noqa: F401
    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    nsfd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        why = _in_child(lambda: _tar_child(nsfd, out, e))
    finally:
        os.close(out)
        os.close(nsfd)
    if why is not None:
        raise DumpError(f"pid {pid}: {_describe(e)}: cannot save the tmpfs contents: {why}")


def _in_child(body: Callable[[], int]) -> str | None:
    """Run ``body`` in a forked child of ours (it enters namespaces procsnap
    must not); None if it returned 0, else why not, one line: its exception
    as it reported it through a pipe, or its exit status."""
    r, w = os.pipe()
    try:
        child = os.fork()
        if child == 0:
            code = 1
            try:
                os.close(r)
                code = body()
            except BaseException as exc:  # reported to the parent, one line
                os.write(w, f"{type(exc).__name__}: {exc}".encode()[:4000])
            finally:
                os._exit(code)
        os.close(w)
        w = -1
        with os.fdopen(r, "rb") as f:
            r = -1
            why = f.read().decode(errors="replace")
        _, status = os.waitpid(child, 0)
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)
    return None if status == 0 else (why or f"helper status {status}")


def _tar_child(nsfd: int, out: int, e: Any) -> int:
    import tarfile  # loaded by _tar_tmpfs before the fork
    syscall(C.NR["setns"], nsfd, C.CLONE_NEWNS)
    # A copy of the namespace of our own, private, so that mounts covering
    # this one (stacked on its mountpoint) can be taken off in the copy only.
    syscall(C.NR["unshare"], C.CLONE_NEWNS)
    root = ctypes.c_char_p(b"/")
    syscall(C.NR["mount"], 0, ctypes.cast(root, ctypes.c_void_p).value or 0, 0,
            MS_REC | MS_PRIVATE, 0)
    path = ctypes.c_char_p(e.mountpoint.encode("utf-8", "surrogateescape"))
    addr = ctypes.cast(path, ctypes.c_void_p).value or 0
    for _ in range(64):
        st = os.stat(e.mountpoint)
        if kdev(os.major(st.st_dev), os.minor(st.st_dev)) == e.root_dev:
            break
        syscall(C.NR["umount2"], addr, MNT_DETACH)
    tree = syscall(C.NR["open_tree"], C.AT_FDCWD, addr, OPEN_TREE_CLONE | os.O_CLOEXEC)
    st = os.fstat(tree)
    if kdev(os.major(st.st_dev), os.minor(st.st_dev)) != e.root_dev:
        raise DumpError(f"{e.mountpoint}: found {os.major(st.st_dev)}:{os.minor(st.st_dev)} "
                        "there, not the tmpfs")
    os.fchdir(tree)

    def clean(ti: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if ti.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE,
                           tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE):
            return None  # a socket file: nothing a tar can hold (tar skips them too)
        ti.uname = ti.gname = ""  # numeric owners, as CRIU's tar --numeric-owner
        return ti

    with os.fdopen(out, "wb", closefd=False) as f:
        with tarfile.open(fileobj=f, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:
            tar.add(".", filter=clean)
        f.flush()
        os.fsync(f.fileno())
    return 0


# --------------------------------------------------------------- restore ----

def collect(rctx: "RestoreContext", ns_id: int) -> list[Step]:
    """Read and check the image before anything is created."""
    d = rctx.images_dir
    img = images.image_path(d, "mountpoints", ns_id)
    if not os.path.exists(img):
        raise ImageError(img, "no such image: the mount namespace was not saved")
    entries = images.read_image(d, "mountpoints", ns_id)
    root = getattr(rctx.opts, "root", None)
    if not root:
        raise RestoreError(f"the tree lives in a mount namespace of its own ({len(entries)} "
                           "mounts): restore it with --root DIR (its root file system, e.g. "
                           "--root / for one that was the host's)")
    if not os.path.isdir(root):
        raise RestoreError(f"--root {root}: not a directory")
    try:
        steps, lost = plan(entries)
    except ValueError as exc:
        raise ImageError(img, str(exc)) from None
    if lost:
        raise ImageError(img, f"{_describe(lost[0])}: no way to mount it again")
    for s in steps:
        if s.how == "external":
            _ext_path(rctx, s.entry)
        elif s.how == "tmpfs":
            tar = _tmpfs_image(d, s.entry.root_dev)
            if not os.path.exists(tar):
                raise ImageError(tar, f"no such image (the contents of {_describe(s.entry)})")
    return steps


def _ext_path(rctx: "RestoreContext", e: Any) -> str:
    key = e.ext_key
    maps = getattr(rctx.opts, "ext_mount_map", {}) or {}
    path = maps.get(key)
    if path is None and getattr(rctx.opts, "ext_mount_auto", False) and key.startswith("/"):
        path = key  # --ext-mount-map auto at dump recorded the host path as the key
    if path is None:
        raise RestoreError(f"external {_describe(e)} (key {key}): give its path with "
                           f"--external mnt[{key}]:PATH (or --ext-mount-map {key}:PATH)")
    if not os.path.lexists(path):
        raise RestoreError(f"external {_describe(e)}: {path}: no such file or directory")
    return path


class _Yard:
    """The puppet's side of the build: injected calls, paths under the
    temporary directory, and our view of them through /proc/PID/root."""

    def __init__(self, rt: "RestoreTask", base: str) -> None:
        self.rt, self.inj, self.base = rt, rt.inj, base
        self.root = os.path.join(base, "root")   # the new root, pivoted into
        self.scratch = os.path.join(base, "tmp")  # fresh mounts of a sub-directory
        self.fds: dict[int, int] = {}             # mnt_id -> O_PATH fd in the puppet
        # (its own, procsnap's) cgroup namespace fds in the puppet, when the
        # two differ: cgroup mounts are made from procsnap's (see _make)
        self.cgns: tuple[int, int] | None = None

    def path(self, e: Any) -> str:
        return self.root + ("" if e.mountpoint == "/" else e.mountpoint)

    def ours(self, path: str) -> str:
        return f"/proc/{self.rt.pid}/root{path}"

    def call(self, name: str, *args: int | str | None, what: str) -> int:
        inj = self.inj
        raw = [0 if a is None else inj.put_str(a) if isinstance(a, str) else a for a in args]
        try:
            return inj.call(name, *raw)
        except InjectError as exc:
            raise RestoreError(f"mount namespace: {what}: {name} failed: "
                               f"{os.strerror(exc.errno or 0)}") from None
        finally:
            inj.reset_scratch()

    def mount(self, src: str | None, dst: str, fs: str | None, flags: int, data: str | None,
              what: str) -> None:
        self.call("mount", src, dst, fs, flags, data or None, what=what)


def restore(rctx: "RestoreContext", ns_id: int, rt: "RestoreTask") -> None:
    steps = collect(rctx, ns_id)
    pid = rt.pid
    if os.stat(f"/proc/{pid}/ns/mnt").st_ino == os.stat("/proc/self/ns/mnt").st_ino:
        raise RestoreError(f"pid {pid}: not in a mount namespace of its own; the mount tree "
                           "would be built in procsnap's")
    inj = rt.inj
    # First of all: nothing done in this namespace may propagate to the host.
    inj.call("mount", 0, inj.put_str("/"), 0, MS_REC | MS_PRIVATE, 0)
    inj.reset_scratch()
    base = f"/tmp/.procsnap-mnt.{pid}.{os.urandom(4).hex()}"
    y = _Yard(rt, base)
    made = _make_dirs(rctx, [base, y.root, y.scratch])
    if rctx.fd_channel is not None:
        # the puppet is root of a new user namespace, maybe not the host's
        # root: the yard is its to walk and mount on
        from . import user
        for path in made:
            os.chown(path, *user.root_ids(pid))
    try:
        rctx.puppet_pivoted = True
        if (rctx.fd_channel is None  # else procsnap mounts cgroups itself (_fresh_outside)
                and any(fsname(s.entry) in CGROUP_FS for s in steps)
                and os.stat(f"/proc/{pid}/ns/cgroup").st_ino
                != os.stat("/proc/self/ns/cgroup").st_ino):
            # /proc is still procsnap's here (the pivot comes below)
            y.cgns = (y.call("openat", C.AT_FDCWD & (2**64 - 1), f"/proc/{pid}/ns/cgroup",
                             os.O_RDONLY | os.O_CLOEXEC, 0, what="its cgroup namespace"),
                      y.call("openat", C.AT_FDCWD & (2**64 - 1),
                             f"/proc/{os.getpid()}/ns/cgroup",
                             os.O_RDONLY | os.O_CLOEXEC, 0, what="procsnap's cgroup namespace"))
        for s in steps:
            _make(rctx, y, s)
        if y.cgns is not None:
            for fd in y.cgns:
                inj.call("close", fd)
            y.cgns = None
        for s in steps:
            _set_flags(y, s.entry)
        # pivot_root(".", ".") stacks the old root on the new one; the
        # detach drops it (pivot_root(2)); no directory is needed for it.
        # Before the peer groups are made: pivot_root refuses (EINVAL) a
        # shared new root, and a container's root often is shared (LXC's).
        y.call("chdir", y.root, what=y.root)
        y.call("pivot_root", ".", ".", what="pivot_root")
        y.call("umount2", ".", MNT_DETACH, what="detach the old root")
        y.call("chdir", "/", what="/")
        # procsnap's handle on the tree's names (RestoreContext.tree_path):
        # the puppet's root now, before any task chroots
        rctx.tree_root_fd = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        rctx.own_fds.append(rctx.tree_root_fd)
        _propagation(y, steps)  # through the mounts' fds, valid after the pivot
        for fd in y.fds.values():
            inj.call("close", fd)
        y.fds.clear()
        check_roots(rctx, pid, steps)
    finally:
        # Our directories in the host's file system (the mounts on them are
        # the puppet's own and leave with the pivot or with the puppet).
        for path in reversed(made):
            try:
                tmpnames.remove(rctx.images_dir, path, is_dir=True)
            except OSError:
                pass


def mount_root(rctx: "RestoreContext", e: Any) -> str:
    """The root a new instance of mount ``e`` gets: its image's, a cgroup
    mount's moved with the tree by --cgroup-root."""
    if fsname(e) in CGROUP_FS and rctx.opts.cgroup_root:
        return cgroup.moved_mount_root(rctx, fsname(e), e.options or "", e.root)
    return str(e.root)


def check_roots(rctx: "RestoreContext", pid: int, steps: list[Step],
                mountinfo: str | None = None) -> None:
    """Every mount of the new tree has the root its image says (mountinfo
    field 4, read from outside as at the dump: a cgroup mount's root is
    shown relative to the reader's cgroup namespace): a root that differs
    would change what the tree sees there, silently.  A new instance
    (fresh, tmpfs) has its image's root; a bind, its source's root with its
    path inside it; the root mount and external mounts are what the user
    gave (--root, --external), so their own roots are not the image's to
    say.  Mounts are matched by mountpoint and file system, stacked ones in
    order."""
    path = f"/proc/{pid}/mountinfo"
    if mountinfo is None:
        with open(path) as f:
            mountinfo = f.read()
    got = parse_mountinfo(mountinfo, path)
    lines: dict[tuple[str, str], list[MountInfo]] = {}
    for m in got:
        lines.setdefault((m.mount_point, m.fstype), []).append(m)
    made: dict[int, str] = {}  # mnt_id in the image -> its restored root
    for s in steps:
        e = s.entry
        row = lines.get((e.mountpoint, fsname(e)), [])
        if not row:
            continue  # not found by this key (a file system named otherwise)
        root = row.pop(0).root
        made[e.mnt_id] = root
        if s.how in ("fresh", "tmpfs"):
            want: str | None = mount_root(rctx, e)
        elif s.how == "bind" and s.src.mnt_id in made:
            base = made[s.src.mnt_id]
            want = base if not s.rel else base.rstrip("/") + "/" + s.rel
        else:
            want = None
        if want is not None and root != want:
            raise RestoreError(f"pid {pid}: {_describe(e)}: restored with root {root}, "
                               f"not {want} (its image's)")


def _make_dirs(rctx: "RestoreContext", paths: list[str]) -> list[str]:
    """Create our temporary directories, each journaled first (innermost
    first, so ``procsnap cleanup`` can remove them in the journal's order)."""
    try:
        tmpnames.note(rctx.images_dir, "+", *reversed(paths))
    except OSError:
        pass  # a read-only images dir: no journal, still removed at the end
    made: list[str] = []
    try:
        for path in paths:
            os.mkdir(path, 0o700)
            made.append(path)
    except OSError as exc:
        for path in reversed(made):
            tmpnames.remove(None, path, is_dir=True)
        raise RestoreError(f"mount namespace: cannot create {path}: {exc.strerror}") from None
    return made


def _ensure(y: _Yard, target: str, is_dir: bool, what: str) -> None:
    """The mountpoint exists in the new tree (made as the tar or the root
    file system left it, else created: a directory, or a file for a file)."""
    ours = y.ours(target)
    if os.path.lexists(ours):
        return
    try:
        os.makedirs(os.path.dirname(ours), exist_ok=True)
        if is_dir:
            os.mkdir(ours, 0o755)
        else:
            os.close(os.open(ours, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
    except OSError as exc:
        raise RestoreError(f"mount namespace: {what}: cannot create its mountpoint: "
                           f"{exc.strerror}") from None


# RestoreContext.kind_state key: pty index -> its master, an fd of the root
# puppet, made with the mount tree for a pts bound elsewhere; taken by the
# terminals (tty.prepare_root for a pair of the tree, tty.prepare_orphans
# for an orphan pts, which closes what nobody took)
from . import PREMADE  # noqa: E402  (the registry's: tty reads it without loading this module)


def _pts_for_bind(rctx: "RestoreContext", y: _Yard, devpts: str, index: int,
                  what: str) -> None:
    """A bind of a pts (runc's /dev/console is its terminal's pts): in the
    new devpts instance it exists once a pty with its index does, as
    criu's devpts_restore makes it -- /dev/pts/ptmx of the instance opened
    until the kernel hands out ``index`` (the lower ones closed again).
    The master is kept in the root puppet (kind_state PREMADE) for the
    terminals (tty.prepare_orphans: criu's orphan pts master), which close
    what they do not use before any task is forked."""
    from ...kernel.libc import pidfd_getfd
    junk: list[int] = []
    try:
        while True:
            fd = y.call("openat", C.AT_FDCWD & (2**64 - 1), devpts + "/ptmx",
                        os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC, 0,
                        what=f"{what}: a pty of index {index}")
            copy = pidfd_getfd(y.rt.pid, fd)
            try:
                got = int.from_bytes(fcntl.ioctl(copy, C.TIOCGPTN, bytes(4)), "little")
            finally:
                os.close(copy)
            if got == index:
                break
            junk.append(fd)
            if got > index:
                raise RestoreError(f"mount namespace: {what}: pty index {index} is taken in "
                                   "its new devpts instance")
        high = y.call("fcntl", fd, C.F_DUPFD_CLOEXEC, rctx.spare_fd_base, what=what)
        y.call("close", fd, what=what)
        rctx.kind_state.setdefault(PREMADE, {})[index] = high
    finally:
        for fd in junk:
            y.call("close", fd, what=what)


def _make(rctx: "RestoreContext", y: _Yard, s: Step) -> None:
    e = s.entry
    what = _describe(e)
    target = y.path(e)
    name = fsname(e)
    outside = rctx.fd_channel is not None  # the puppet is in a new user namespace
    if s.how == "root":
        if outside:
            _bind_outside(y, rctx.opts.root or "/", target, what)
        else:
            y.mount(rctx.opts.root, target, None, MS_BIND, None, what)
    elif s.how == "external":
        src = _ext_path(rctx, e)
        _ensure(y, target, os.path.isdir(src), what)
        if outside:
            _bind_outside(y, src, target, what)
        else:
            y.mount(src, target, None, MS_BIND, None, what)
    elif s.how == "bind":
        src = y.path(s.src) + ("/" + s.rel if s.rel else "")
        if fsname(s.src) == "devpts" and s.rel.isdigit() and not os.path.lexists(y.ours(src)):
            _pts_for_bind(rctx, y, y.path(s.src), int(s.rel), what)
        _ensure(y, target, os.path.isdir(y.ours(src)), what)
        y.mount(src, target, None, MS_BIND, None, what)
    elif s.how in ("fresh", "tmpfs"):
        _ensure(y, target, True, what)
        single = name in SINGLETON
        sb = 0 if single else e.sb_flags & ~(MS_RDONLY if s.how == "tmpfs" else 0)
        data = None if single else e.options
        if outside and data and s.how == "tmpfs" or outside and name == "devpts":
            data = _inside_opts(y, data)
        cgns = y.cgns if name in CGROUP_FS else None
        if outside and s.how == "fresh" and (name in CGROUP_FS or not _puppet_mounts(
                y, e.source or name, target, name, sb, data, mount_root(rctx, e))):
            # a file system the puppet may not mount in its user namespace
            # (cgroup from procsnap's cgroup namespace, as below; sysfs of
            # a network namespace it does not own, devtmpfs): procsnap makes
            # it and the puppet moves it in
            _fresh_outside(y, name, e.source or name, sb, data, mount_root(rctx, e), target,
                           what)
            cgns = None
        elif outside and s.how == "fresh":
            cgns = None  # made by _puppet_mounts
        elif cgns is not None:
            # A cgroup file system mounted in a cgroup namespace has the
            # namespace's root as its root; the image's root is the dumper's
            # view (procsnap's cgroup namespace, the restorer's too): mount
            # from there, then bind the image's root, for the same root
            # (the box's copy of the host's /sys/fs/cgroup/memory is "/",
            # not the new namespace's root).
            y.call("setns", cgns[1], C.CLONE_NEWCGROUP, what=what + ": enter our cgroup ns")
        root = mount_root(rctx, e)
        try:
            if outside and s.how == "fresh":
                pass  # made above
            elif root == "/":
                y.mount(e.source or name, target, name, sb, data, what)
            else:
                # A sub-directory of a new instance (a cgroup seen from a
                # container, through its cgroup namespace or not).
                y.mount(e.source or name, y.scratch, name, sb, data, what)
                y.mount(y.scratch + root, target, None, MS_BIND, None, what)
                y.call("umount2", y.scratch, MNT_DETACH, what=what)
        finally:
            if cgns is not None:
                y.call("setns", cgns[0], C.CLONE_NEWCGROUP, what=what + ": back to its cgroup ns")
        if s.how == "tmpfs":
            _untar(rctx, y, e, target)
            if e.sb_flags & MS_RDONLY:
                y.mount(None, target, None, MS_REMOUNT | e.sb_flags, e.options, what)
    else:
        raise RestoreError(f"mount namespace: {what}: unknown step {s.how}")
    # It is private (the namespace was made so before anything was
    # mounted): its own propagation comes once every mount exists.
    if outside:
        # opened by procsnap through the puppet's root (see _move_in)
        try:
            mine = os.open(y.ours(target), os.O_PATH | os.O_CLOEXEC)
        except OSError as exc:
            raise RestoreError(f"mount namespace: {what}: {target}: {exc.strerror}") from None
        try:
            y.fds[e.mnt_id] = y.rt._recv_fd(mine)
        finally:
            os.close(mine)
        return
    y.fds[e.mnt_id] = y.call("openat", C.AT_FDCWD & (2**64 - 1), target,
                             os.O_PATH | os.O_CLOEXEC, 0, what=what)


def _inside_opts(y: _Yard, data: str | None) -> str | None:
    """tmpfs and devpts show their uid=/gid= options as the initial user
    namespace sees them; a puppet in a new one mounts with its own ids."""
    from . import user

    m = user.id_map(y.rt.pid)
    if not data or m is None:
        return data
    out = []
    for opt in data.split(","):
        key, eq, val = opt.partition("=")
        if eq and key in ("uid", "gid") and val.isdigit():
            got = m.uid(int(val)) if key == "uid" else m.gid(int(val))
            if got is None:
                raise RestoreError(f"mount namespace: option {opt}: {key} {val} is not mapped "
                                   "in the tree's user namespace")
            opt = f"{key}={got}"
        out.append(opt)
    return ",".join(out)


def _bind_outside(y: _Yard, src: str, target: str, what: str) -> None:
    """A bind mount of ``src`` (procsnap's path) on ``target`` for a puppet
    in a new user namespace: there every mount copied from procsnap's
    namespace is locked and a bind of one with child mounts is refused
    (EINVAL), so procsnap clones it detached (open_tree, no children) in
    its own namespace and the puppet moves the copy in (move_mount)."""
    raw = ctypes.c_char_p(src.encode("utf-8", "surrogateescape"))
    try:
        tree = syscall(C.NR["open_tree"], C.AT_FDCWD, ctypes.cast(raw, ctypes.c_void_p).value or 0,
                       OPEN_TREE_CLONE | os.O_CLOEXEC)
    except OSError as exc:
        raise RestoreError(f"mount namespace: {what}: cannot clone {src}: "
                           f"{exc.strerror}") from None
    _move_in(y, tree, target, what)


def _move_in(y: _Yard, tree: int, target: str, what: str) -> None:
    """Send procsnap's detached mount ``tree`` to the puppet (closing ours),
    which moves it onto ``target``."""
    try:
        fd = y.rt._recv_fd(tree)
    finally:
        os.close(tree)
    try:
        # the mountpoint opened by procsnap through the puppet's root: a
        # root inside that is not the host's may not walk every path of
        # the host's file system it was bound from (/tmp/x 0700)
        mine = os.open(y.ours(target), os.O_PATH | os.O_CLOEXEC)
        try:
            at = y.rt._recv_fd(mine)
        finally:
            os.close(mine)
        try:
            y.call("move_mount", fd, "", at, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
                   what=what)
        finally:
            y.inj.call("close", at)
    except OSError as exc:
        raise RestoreError(f"mount namespace: {what}: {target}: {exc.strerror}") from None
    finally:
        y.inj.call("close", fd)


def _puppet_mounts(y: _Yard, src: str, target: str, name: str, sb: int, data: str | None,
                   root: str) -> bool:
    """Try the mount in the puppet; False when its user namespace may not
    (EPERM: not its namespace's to mount, or not mountable there)."""
    inj = y.inj
    try:
        if root == "/":
            y.inj.call("mount", inj.put_str(src), inj.put_str(target), inj.put_str(name), sb,
                       inj.put_str(data) if data else 0)
        else:
            y.inj.call("mount", inj.put_str(src), inj.put_str(y.scratch), inj.put_str(name),
                       sb, inj.put_str(data) if data else 0)
            inj.reset_scratch()
            y.mount(y.scratch + root, target, None, MS_BIND, None, f"{name} at {target}")
            y.call("umount2", y.scratch, MNT_DETACH, what=f"{name} at {target}")
    except InjectError as exc:
        if exc.errno in (1, 13):
            return False
        raise RestoreError(f"mount namespace: {name} at {target}: mount failed: "
                           f"{os.strerror(exc.errno or 0)}") from None
    finally:
        inj.reset_scratch()
    return True


FSCONFIG_SET_FLAG, FSCONFIG_SET_STRING, FSCONFIG_CMD_CREATE = 0, 1, 6


def _fresh_outside(y: _Yard, name: str, src: str, sb: int, data: str | None, root: str,
                   target: str, what: str) -> None:
    """A new mount of file system ``name`` made by procsnap (fsopen,
    fsconfig, fsmount: detached, in no namespace, nothing propagates), its
    sub-directory ``root`` cloned if not "/", moved in by the puppet."""
    def cstr(text: str) -> int:
        buf = ctypes.create_string_buffer(text.encode("utf-8", "surrogateescape"))
        keep.append(buf)
        return ctypes.addressof(buf)
    keep: list[Any] = []
    try:
        fs = syscall(C.NR["fsopen"], cstr(name), 1)  # FSOPEN_CLOEXEC
        try:
            syscall(C.NR["fsconfig"], fs, FSCONFIG_SET_STRING, cstr("source"), cstr(src), 0)
            opts = [o for o in (data or "").split(",") if o] + (["ro"] if sb & MS_RDONLY else [])
            for opt in opts:
                key, eq, val = opt.partition("=")
                if eq:
                    syscall(C.NR["fsconfig"], fs, FSCONFIG_SET_STRING, cstr(key), cstr(val), 0)
                else:
                    syscall(C.NR["fsconfig"], fs, FSCONFIG_SET_FLAG, cstr(key), 0, 0)
            syscall(C.NR["fsconfig"], fs, FSCONFIG_CMD_CREATE, 0, 0, 0)
            tree = syscall(C.NR["fsmount"], fs, 1, 0)  # FSMOUNT_CLOEXEC
        finally:
            os.close(fs)
        if root != "/":
            try:
                sub = syscall(C.NR["open_tree"], tree, cstr(root.lstrip("/")),
                              OPEN_TREE_CLONE | os.O_CLOEXEC)
            finally:
                os.close(tree)
            tree = sub
    except OSError as exc:
        raise RestoreError(f"mount namespace: {what}: procsnap cannot mount {name} for a "
                           f"puppet in a new user namespace: {exc.strerror}") from None
    _move_in(y, tree, target, what)


def _tmpfs_image(images_dir: str, dev: int) -> str:
    """tmpfs-dev-DEV.tar.gz.img (CRIU's name); procsnap's images before
    2026-11-30 named it without the .img."""
    path = images.image_path(images_dir, "tmpfs-dev", dev)
    old = path[:-len(".img")]
    return old if not os.path.exists(path) and os.path.exists(old) else path


def _untar(rctx: "RestoreContext", y: _Yard, e: Any, target: str) -> None:
    import tarfile
    tar = _tmpfs_image(rctx.images_dir, e.root_dev)
    if rctx.fd_channel is not None:
        _untar_inside(y, e, tar, target)
        return
    try:
        with tarfile.open(tar, "r:gz") as t:
            # Our own archive, written inside the namespace at dump: its
            # owners, modes and device nodes are what the tmpfs held.
            t.extractall(y.ours(target), numeric_owner=True, filter="fully_trusted")
    except (OSError, tarfile.TarError) as exc:
        raise ImageError(tar, f"cannot unpack into {e.mountpoint}: {exc}") from None


def _untar_inside(y: _Yard, e: Any, tar: str, target: str) -> None:
    """A tmpfs of a mount namespace in a new user namespace is unpacked by a
    child of ours that enters the puppet's user and mount namespaces: a
    file there can be owned only by an id mapped in it (procsnap's root
    gets EOVERFLOW), and the archive's owners (procsnap's view) are
    translated to the ids inside."""
    # before the fork: the child unpacks inside the tree's mount namespace,
    # where Python's library may not be (tarfile opens gzip lazily)
    import gzip  # noqa: F401
    import tarfile

    from . import user

    m = user.id_map(y.rt.pid)
    assert m is not None
    fds = [os.open(f"/proc/{y.rt.pid}/ns/{k}", os.O_RDONLY | os.O_CLOEXEC) for k in ("user", "mnt")]

    def unpack() -> int:
        archive = open(tar, "rb")  # procsnap's file: before we are root inside
        syscall(C.NR["setns"], fds[0], C.CLONE_NEWUSER)
        syscall(C.NR["setns"], fds[1], C.CLONE_NEWNS)
        # root inside (our ids, not mapped there, can own nothing)
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)

        def inside(ti: tarfile.TarInfo) -> tarfile.TarInfo:
            uid, gid = m.uid(ti.uid), m.gid(ti.gid)
            if uid is None or gid is None:
                raise ValueError(f"{ti.name}: owner {ti.uid}:{ti.gid} is not mapped "
                                 "in the tree's user namespace")
            ti.uid, ti.gid = uid, gid
            return ti
        with tarfile.open(fileobj=archive, mode="r:gz") as t:
            t.extractall(target, numeric_owner=True, filter=lambda ti, _: inside(ti))
        return 0

    try:
        why = _in_child(unpack)
    finally:
        for fd in fds:
            os.close(fd)
    if why is not None:
        raise ImageError(tar, f"cannot unpack into {e.mountpoint}: {why}")


def _propagation(y: _Yard, steps: list[Step]) -> None:
    """Peer groups and masters, as in the namespace.  Every mount is
    private now; the first member of a group is made shared and the others
    join it (MOVE_MOUNT_SET_GROUP, which also gives them its master); a
    slave joins its master's group, then turns slave (and shared anew if it
    leads a group of its own)."""
    rep: dict[int, int] = {}  # group -> mnt_id of a member already in it
    todo = [s.entry for s in steps
            if (s.entry.HasField("shared_id") and s.entry.shared_id)
            or (s.entry.HasField("master_id") and s.entry.master_id)]
    while todo:
        later = []
        for e in todo:
            shared = e.shared_id if e.HasField("shared_id") else 0
            master = e.master_id if e.HasField("master_id") else 0
            if shared in rep:
                _set_group(y, rep[shared], e)
            elif master and master not in rep:
                later.append(e)  # its master's group is not made yet
                continue
            else:
                if master:
                    _set_group(y, rep[master], e)
                    _setattr(y, e, 0, 0, MS_SLAVE)
                if shared:
                    _setattr(y, e, 0, 0, MS_SHARED)
            if shared:
                rep.setdefault(shared, e.mnt_id)
        if len(later) == len(todo):
            e = later[0]
            raise RestoreError(f"mount namespace: {_describe(e)}: its master, peer group "
                               f"{e.master_id}, is not in the image")
        todo = later
    for s in steps:
        if s.entry.flags & MS_UNBINDABLE:
            _setattr(y, s.entry, 0, 0, MS_UNBINDABLE)


def _set_group(y: _Yard, src: int, e: Any) -> None:
    y.call("move_mount", y.fds[src], "", y.fds[e.mnt_id], "",
           MOVE_MOUNT_SET_GROUP | MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
           what=f"{_describe(e)}: join the propagation of mount {src}")


def _setattr(y: _Yard, e: Any, attr_set: int, attr_clr: int, propagation: int) -> None:
    """mount_setattr on the mount itself (its fd), never on a path that a
    later mount may cover."""
    attr = (attr_set.to_bytes(8, "little") + attr_clr.to_bytes(8, "little")
            + propagation.to_bytes(8, "little") + bytes(8))
    inj = y.inj
    try:
        inj.call("mount_setattr", y.fds[e.mnt_id], inj.put(b"\0"), AT_EMPTY_PATH,
                 inj.put(attr, align=8), len(attr))
    except InjectError as exc:
        raise RestoreError(f"mount namespace: {_describe(e)}: mount_setattr failed: "
                           f"{os.strerror(exc.errno or 0)}") from None
    finally:
        inj.reset_scratch()


def _set_flags(y: _Yard, e: Any) -> None:
    """Per-mount flags (ro, nosuid, nodev, noexec, atime...), last: a
    read-only mount would have refused the mountpoints of its children."""
    f = e.flags
    on = ((MOUNT_ATTR_RDONLY if f & MS_RDONLY else 0) | (MOUNT_ATTR_NOSUID if f & MS_NOSUID else 0)
          | (MOUNT_ATTR_NODEV if f & MS_NODEV else 0) | (MOUNT_ATTR_NOEXEC if f & MS_NOEXEC else 0)
          | (MOUNT_ATTR_NODIRATIME if f & MS_NODIRATIME else 0)
          | (MOUNT_ATTR_NOSYMFOLLOW if f & MS_NOSYMFOLLOW else 0))
    atime = MOUNT_ATTR_NOATIME if f & MS_NOATIME else \
        MOUNT_ATTR_STRICTATIME if f & MS_STRICTATIME else 0
    off = (MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC
           | MOUNT_ATTR_NODIRATIME | MOUNT_ATTR_NOSYMFOLLOW) & ~on
    _setattr(y, e, on | atime, off | MOUNT_ATTR__ATIME, 0)

