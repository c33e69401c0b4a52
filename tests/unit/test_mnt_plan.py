"""How each mount of a mount namespace comes back (namespaces.mnt.plan),
from mountinfo lines: the decisions both the dump and the restore make."""
from __future__ import annotations

import pytest

from procsnap.procfs.parse import parse_mountinfo
from procsnap.resources.namespaces import mnt

HOST = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 27 0:60 / /var/lib/lxcfs rw,nosuid,nodev,relatime - fuse.lxcfs lxcfs rw,user_id=0
"""

NS = """\
100 99 254:0 /srv/rootfs / rw,relatime - ext4 /dev/vda rw
101 100 0:70 / /proc rw,nosuid - proc proc rw
102 100 0:71 / /tmp rw shared:5 - tmpfs tmpfs rw,size=1024k
103 100 0:71 /sub /mnt/b rw shared:5 - tmpfs tmpfs rw,size=1024k
104 100 254:0 /srv/rootfs/data /data ro,nosuid,relatime master:5 - ext4 /dev/vda rw
105 101 0:60 /proc/meminfo /proc/meminfo rw,nosuid,nodev,relatime - fuse.lxcfs lxcfs rw,user_id=0
106 100 254:0 /usr/lib /usr/lib ro,relatime - ext4 /dev/vda rw
107 100 0:72 /lxc/c1 /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
"""


def entries(text: str) -> list:
    return [mnt.entry_of(m) for m in parse_mountinfo(text)]


def test_entry_fields() -> None:
    es = {e.mnt_id: e for e in entries(NS)}
    e = es[104]
    assert e.flags & mnt.MS_RDONLY and e.flags & mnt.MS_NOSUID and e.flags & mnt.MS_RELATIME
    assert e.master_id == 5 and e.root == "/srv/rootfs/data"
    assert es[102].shared_id == 5 and es[102].options == "size=1024k"
    assert es[101].flags & mnt.MS_STRICTATIME  # no atime word
    assert es[105].fstype == mnt.F.AUTO and mnt.fsname(es[105]) == "fuse.lxcfs"
    assert es[102].root_dev == mnt.kdev(0, 71)


def test_plan_kinds_and_outside_mounts() -> None:
    steps, lost = mnt.plan(entries(NS))
    how = {s.entry.mnt_id: (s.how, s.src.mnt_id if s.src else None, s.rel) for s in steps}
    assert how[100] == ("root", None, "")
    assert how[101] == ("fresh", None, "")
    assert how[102] == ("tmpfs", None, "")
    assert how[103] == ("bind", 102, "sub")
    assert how[104] == ("bind", 100, "data")
    assert how[107] == ("fresh", None, "")
    # lxcfs and a host directory outside the container's root: outside the tree
    assert sorted(e.mnt_id for e in lost) == [105, 106]


def test_named_external_and_auto() -> None:
    es = entries(NS)
    for e in es:
        if e.mountpoint == "/usr/lib":
            e.ext_mount, e.ext_key = True, "usrlib"
    steps, lost = mnt.plan(es)
    assert [e.mnt_id for e in lost] == [105]
    assert {s.entry.mnt_id: s.how for s in steps}[106] == "external"
    own = parse_mountinfo(HOST)
    assert mnt._auto_key(lost[0], own) in (None, "/var/lib/lxcfs/proc/meminfo")


def test_parents_first_and_single_root() -> None:
    es = entries("11 10 0:5 / /a rw - tmpfs t rw\n10 9 0:4 / / rw - tmpfs r rw\n")
    assert [e.mnt_id for e in mnt.ordered(es)] == [10, 11]
    with pytest.raises(ValueError):
        mnt.root_entry(entries("10 9 0:4 / /x rw - tmpfs r rw\n"))


class _Opts:
    cgroup_root: tuple[str, ...] = ()


class _Rctx:
    def __init__(self, *cgroup_root: str) -> None:
        self.opts = _Opts()
        self.opts.cgroup_root = cgroup_root
        self.kind_state: dict = {}


def test_check_roots_refuses_a_mount_with_another_root() -> None:
    """The restored tree's mountinfo (read from outside) against the image:
    a cgroup mount made anew in a new cgroup namespace is rooted at the
    namespace's root, not at its image's: refused, naming both roots."""
    steps, _ = mnt.plan(entries(NS))
    same = NS.replace("/srv/rootfs /", "/elsewhere /").replace("/srv/rootfs/data", "/elsewhere/data")
    mnt.check_roots(_Rctx(), 7, steps, same)  # the root mount (--root) and its binds move together
    moved = NS.replace("/lxc/c1 /sys/fs/cgroup/pids", "/lxc/c1/ns /sys/fs/cgroup/pids")
    with pytest.raises(mnt.RestoreError, match=r"pid 7: mount 107 at /sys/fs/cgroup/pids "
                       r".*restored with root /lxc/c1/ns, not /lxc/c1 \(its image's\)"):
        mnt.check_roots(_Rctx(), 7, steps, moved)
    bind = NS.replace("/sub /mnt/b", "/other /mnt/b")
    with pytest.raises(mnt.RestoreError, match=r"mount 103 at /mnt/b .*root /other, not /sub"):
        mnt.check_roots(_Rctx(), 7, steps, bind)


def test_cgroup_root_moves_a_cgroup_mounts_root() -> None:
    """--cgroup-root moves a cgroup mount of the moved tree as it moves the
    tasks' cgroups (only in that hierarchy)."""
    from procsnap.resources import cgroup
    r = _Rctx("pids:/new")
    r.kind_state["cgroup.img"] = []
    r.kind_state["cgroup.moves"] = {"pids": [("/lxc", "/new")], "": [("/lxc", "/v2")]}
    assert cgroup.moved_mount_root(r, "cgroup", "pids", "/lxc/c1") == "/new/c1"  # type: ignore[arg-type]
    assert cgroup.moved_mount_root(r, "cgroup", "memory", "/lxc/c1") == "/lxc/c1"  # type: ignore[arg-type]
    assert cgroup.moved_mount_root(r, "cgroup2", "", "/lxc") == "/v2"  # type: ignore[arg-type]
    assert cgroup.moved_mount_root(r, "cgroup", "pids", "/lxcX") == "/lxcX"  # type: ignore[arg-type]
