"""The user namespace of a tree whose root lives in one of its own, as
``unshare -U --map-root-user`` / ``--map-users``, unprivileged LXC and
rootless Podman make it (CRIU's userns-ID.img: the uid_map and gid_map
extents; procsnap adds /proc/PID/setgroups).

Dump: the maps of the root's user namespace, read from procsnap's (its
parent's: the lower ids are procsnap's).  As CRIU, credentials are saved
as the task sees them inside its namespace (creds.py translates the host
view /proc shows with ``IdMap``).  Refused by name: a user namespace not
directly below procsnap's (its parent's maps would be lost), a namespace
of the tree owned by another user namespace than the tree's (it would come
back owned by the tree's), and a tree of more than one task or thread
that lives in procsnap's pid namespace: its pids at the host's level can
be chosen only by a task with CAP_CHECKPOINT_RESTORE in the host's user
namespace, and every puppet but the root lives in the new one.

A mount namespace of the tree is rebuilt by namespaces.mnt, which for a
puppet in a new user namespace makes what the puppet may not (binds of
procsnap's paths, sysfs, devtmpfs, cgroup) detached in procsnap's context
and has the puppet move them in; procsnap's own tmpfs mounts copied into
the namespace (locked there: /dev/shm...) are the host's, external.

A puppet inside the new user namespace is not procsnap's root: it may not
pidfd_getfd from procsnap (nor from a puppet whose credentials are
restored), nor open procsnap's images, so procsnap sends it those fds
over a socket pair (RestoreContext.fd_channel, RestoreTask._recv_fd); a
file the task held open from outside the namespace that the puppet may
not open (its stdout, opened by the host's root) is opened the same way.
The namespace's ipc sysctls are written as root inside (ipc.py).

Restore, as CRIU: the root is cloned with CLONE_NEWUSER together with the
other CLONE_NEW* flags, so the new user namespace is made first and owns
every namespace made with it (and those its tasks make later: time,
cgroup, nested pid namespaces).  This module is first in NS_KINDS: the
restorer writes setgroups, uid_map and gid_map from outside (they must be
written from the parent namespace), then the root puppet takes uid and gid
0 inside (CRIU's prepare_userns_creds; creds.py sets every task's own
later) and becomes dumpable again (/proc/self needs it in a user
namespace).

Pids: each level of a task's pid that a pid namespace owned by the new
user namespace holds is set by the puppet's clone3 (set_tid); the host's
level cannot be (see above), so the restorer writes the host's
ns_last_pid just before the clone3 (``hint_host_pid``) and the restorer
takes the pid the kernel gave when another process took it meanwhile (the
host's pids are not the tree's state; criu never sets them).
"""
from __future__ import annotations

import fcntl
import os
from ...record import record
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time

from ... import images
from ...errors import RestoreError, Unsupported
from ...images.pb import userns_pb2
from ...inject import InjectError
from ...kernel import consts as C

if TYPE_CHECKING:
    from ...tasks import DumpContext, DumpTask, RestoreContext, RestoreTask

NAME = "user"
CLONE_FLAG = C.CLONE_NEWUSER

NS_GET_USERNS = 0xB701   # _IO(0xb7, 0x1): the user namespace owning a namespace
NS_GET_PARENT = 0xB702   # _IO(0xb7, 0x2): the parent of a user (or pid) namespace

Extent = tuple[int, int, int]   # first (inside), lower_first (outside), count


def read_map(pid: int | str, name: str) -> list[Extent]:
    """/proc/PID/uid_map or gid_map as procsnap's namespace sees it."""
    with open(f"/proc/{pid}/{name}") as f:
        return [(int(a), int(b), int(c)) for a, b, c in (ln.split() for ln in f if ln.strip())]


def _overflow(kind: str) -> int:
    with open(f"/proc/sys/kernel/overflow{kind}") as f:
        return int(f.read())


@record
class IdMap:
    """A user namespace's maps: ids as procsnap sees them -> as seen inside."""
    uid_map: list[Extent]
    gid_map: list[Extent]

    @staticmethod
    def _in(ext: list[Extent], host: int) -> int | None:
        for first, lower, count in ext:
            if lower <= host < lower + count:
                return first + host - lower
        return None

    def uid(self, host: int) -> int | None:
        """None: not mapped (the task sees the overflow uid)."""
        return self._in(self.uid_map, host)

    def gid(self, host: int) -> int | None:
        return self._in(self.gid_map, host)


def own_ns(pid: int | str) -> bool:
    """Does ``pid`` live in another user namespace than procsnap's?"""
    return os.stat(f"/proc/{pid}/ns/user").st_ino != os.stat("/proc/self/ns/user").st_ino


def id_map(pid: int | str) -> IdMap | None:
    """The maps of ``pid``'s user namespace, or None when it is procsnap's."""
    if not own_ns(pid):
        return None
    return IdMap(read_map(pid, "uid_map"), read_map(pid, "gid_map"))


def root_ids(pid: int | str) -> tuple[int, int]:
    """(uid, gid) as procsnap sees them of root inside ``pid``'s user
    namespace: who owns its ipc and net sysctls (written as their owner,
    for procsnap's root is "other" to them).  (0, 0) for procsnap's own."""
    m = id_map(pid)
    if m is None:
        return 0, 0
    uid = next((lo for first, lo, n in m.uid_map if first == 0), None)
    gid = next((lo for first, lo, n in m.gid_map if first == 0), None)
    if uid is None or gid is None:
        raise RestoreError(f"pid {pid}: its user namespace maps no root (uid/gid 0); its "
                           "sysctls cannot be written")
    return uid, gid


def inside_ids(pid: int, tid: int, host_ids: tuple[int, ...], kind: str,
               m: IdMap) -> tuple[int, ...]:
    """uids or gids read from /proc (procsnap's view) as the task sees them;
    an id not mapped inside cannot be named there, so it cannot be set
    again: refused by name."""
    out = []
    for h in host_ids:
        v = m.uid(h) if kind == "uid" else m.gid(h)
        if v is None:
            raise Unsupported(f"pid {pid}: thread {tid}: {kind} {h} is not mapped in its user "
                              f"namespace (it sees {_overflow(kind)}); procsnap cannot set "
                              "an unmapped id inside it again")
        out.append(v)
    return tuple(out)


def inside_groups(host_groups: list[int], m: IdMap) -> list[int]:
    """Supplementary groups as the task sees them: an unmapped one reads as
    the overflow gid, as getgroups() inside returns it (CRIU's parasite
    saves the same).  No task inside can change such a group (setgroups
    would drop it); the restore keeps a puppet's list only when it reads
    the same inside (creds.py)."""
    over = _overflow("gid")
    return [over if (v := m.gid(g)) is None else v for g in host_groups]


def _ns_fd_ino(path: str, request: int) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        other = fcntl.ioctl(fd, request)
    finally:
        os.close(fd)
    try:
        return os.fstat(other).st_ino
    finally:
        os.close(other)


def owner(pid: int | str, kind: str) -> int:
    """The id (inode) of the user namespace owning ``pid``'s namespace of ``kind``."""
    return _ns_fd_ino(f"/proc/{pid}/ns/{kind}", NS_GET_USERNS)


# ------------------------------------------------------------------ dump ----

def check_owners(ctx: "DumpContext", kinds: list[str]) -> None:
    """Every namespace of the tree procsnap saves (``kinds``: those of the
    root unlike procsnap's) is made again by the restore from the tree's
    user namespace, so it must be owned by it now."""
    root = ctx.tasks[0]
    mine = os.stat(f"/proc/{root.pid}/ns/user").st_ino
    for kind in kinds:
        if kind == NAME:
            continue
        got = owner(root.pid, kind)
        if got != mine:
            raise Unsupported(f"pid {root.pid}: its {kind} namespace is owned by user namespace "
                              f"{got}, not by its own ({mine}); procsnap restores every "
                              "namespace of a tree owned by the tree's user namespace")


def dump(ctx: "DumpContext", ns_id: int, task: "DumpTask") -> None:
    pid = task.pid
    parent = _ns_fd_ino(f"/proc/{pid}/ns/user", NS_GET_PARENT)
    own = os.stat("/proc/self/ns/user").st_ino
    if parent != own:
        raise Unsupported(f"pid {pid}: lives in user namespace {ns_id}, nested in another "
                          f"({parent}) below procsnap's ({own}); procsnap restores a user "
                          "namespace directly below its own only")
    if os.stat(f"/proc/{pid}/ns/pid").st_ino == os.stat("/proc/self/ns/pid").st_ino and \
            (len(ctx.tasks) > 1 or len(task.threads) > 1):
        raise Unsupported(f"pid {pid}: a tree of {len(ctx.tasks)} tasks in its own user "
                          "namespace but in procsnap's pid namespace; its tasks' pids could "
                          "not be chosen at restore (clone3 set_tid needs "
                          "CAP_CHECKPOINT_RESTORE in the user namespace owning the pid "
                          "namespace, which tasks inside a new user namespace lack for the "
                          "host's); give it a pid namespace of its own (unshare -U -p)")
    with open(f"/proc/{pid}/setgroups") as f:
        deny = f.read().strip() == "deny"

    def exts(name: str) -> list[userns_pb2.uid_gid_extent]:
        return [userns_pb2.uid_gid_extent(first=a, lower_first=b, count=c)
                for a, b, c in read_map(pid, name)]
    e = userns_pb2.userns_entry(uid_map=exts("uid_map"), gid_map=exts("gid_map"))
    if deny:
        e.setgroups_deny = True
    ctx.add_shared("userns", e, ns_id)


# --------------------------------------------------------------- restore ----

def _write(path: str, text: str) -> None:
    # One write: the kernel takes a map only whole, and only once.
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def restore(rctx: "RestoreContext", ns_id: int, rt: "RestoreTask") -> None:
    e = images.read_one(rctx.images_dir, "userns", ns_id)
    pid = rt.pid
    try:
        # setgroups only before gid_map; both maps from the parent namespace
        if e.HasField("setgroups_deny") and e.setgroups_deny:
            _write(f"/proc/{pid}/setgroups", "deny")
        for name, ext in (("uid_map", e.uid_map), ("gid_map", e.gid_map)):
            if ext:
                _write(f"/proc/{pid}/{name}",
                       "".join(f"{x.first} {x.lower_first} {x.count}\n" for x in ext))
    except OSError as exc:
        raise RestoreError(f"pid {pid}: cannot write the maps of its new user namespace: "
                           f"{exc.strerror}") from None
    # From now on every puppet is inside: the host's pid level is hinted.
    rctx.host_pid_unset = True
    inj = rt.inj
    try:
        # CRIU's prepare_userns_creds: ids that exist inside before anything
        # is made (an unmapped fsuid cannot create a file); creds.py sets the
        # task's own at the end.
        if any(x.first == 0 for x in e.gid_map):
            inj.call("setresgid", 0, 0, 0)
            if not (e.HasField("setgroups_deny") and e.setgroups_deny):
                inj.call("setgroups", 0, 0)
        if any(x.first == 0 for x in e.uid_map):
            inj.call("setresuid", 0, 0, 0)
        # an id change made it undumpable: /proc/self would be the host
        # root's, out of its reach inside
        inj.call("prctl", C.PR_SET_DUMPABLE, 1, 0, 0, 0)
    except InjectError as exc:
        raise RestoreError(f"pid {pid}: cannot take uid/gid 0 in its new user namespace: "
                           f"{exc}") from None


def hint_host_pid(pid: int) -> None:
    """The host's next pid is ``pid`` (ns_last_pid, written by the restorer,
    which has the capability): the clone3 of a puppet inside the new user
    namespace sets every level but the host's."""
    try:
        _write("/proc/sys/kernel/ns_last_pid", str(pid - 1))
    except OSError as exc:
        raise RestoreError(f"pid {pid}: cannot write the host's ns_last_pid: "
                           f"{exc.strerror}") from None
