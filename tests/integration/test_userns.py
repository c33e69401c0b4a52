"""User namespaces (issue 9): a tree whose root is the init of a pid
namespace inside a user namespace of its own -- as ``unshare -U
--map-root-user`` makes it, and with a non-identity map written from
outside as newuidmap does (rootless Podman, unprivileged LXC) -- comes back
in a new user namespace with the same maps and setgroups, its tasks with
the same credentials inside (and so the same ids outside), pid 1 inside,
its hostname, counting on; the target checks all of it itself.  What is
still not restored is refused by name with the tree running on.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from helpers import (
    TARGETS_DIR,
    Target,
    TargetFactory,
    assert_one_line_error,
    check_continuity,
    check_ok,
    crit_decode,
    finish,
    is_untouched,
    read_numbers,
    run_procsnap,
    start_under,
    tree_pids,
    wait_for,
    wait_gone,
    wait_numbers,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

MAP = "0 100000 65536"   # inside 0.. -> host 100000..


def _status(pid: int, key: str) -> list[str]:
    with open(f"/proc/{pid}/status") as f:
        return next(ln.split()[1:] for ln in f if ln.startswith(key + ":"))


def _ours(mount: str, keep: str) -> bool:
    """A mount that is the test's: not one another test running on this
    machine at the same time made in /tmp or /var/tmp (a copy of the
    host's table came with the mount namespace; such a mount may be gone,
    or moved, by the restore), but the box at ``keep``."""
    where = mount.split()[1]
    return where == keep or not where.startswith(("/tmp/", "/var/tmp/"))


def _view(root: int, keep: str = "") -> dict[str, object]:
    """What must be equal before and after, as seen from outside."""
    tasks = tree_pids(root)

    def read(name: str) -> str:
        return Path(f"/proc/{root}/{name}").read_text()
    # what is mounted where, from which root, of which type, in which order
    # (mount ids and devices are the kernel's)
    mounts = [m for m in (" ".join(ln.split()[3:5] + ln.split(" - ")[1].split()[:1])
                          for ln in read("mountinfo").splitlines()) if _ours(m, keep)]
    return {
        "mounts": mounts if _ns(root, "mnt") != _ns("self", "mnt") else None,
        "inside pids": [_status(p, "NSpid")[1:] for p in tasks],
        "uids": [_status(p, "Uid") for p in tasks],     # host view: mapped ids
        "gids": [_status(p, "Gid") for p in tasks],
        "groups": [_status(p, "Groups") for p in tasks],
        "caps": [[_status(p, k) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")]
                 for p in tasks],
        "uid_map": read("uid_map"), "gid_map": read("gid_map"),
        "setgroups": read("setgroups"), "cgroup": read("cgroup"),
        "namespaces of its own": [k for k in ("cgroup", "net", "time", "mnt")
                                  if _ns(root, k) != _ns("self", k)],
        "hostname": subprocess.run(["nsenter", "-t", str(root), "-u", "hostname"],
                                   capture_output=True, text=True, check=True,
                                   timeout=10).stdout.strip(),
    }


def _ns(pid: int | str, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def _round_trip(targets: TargetFactory, t: Target, images: Path, numbers: Path,
                mntns: bool, box: Path | None = None) -> None:
    wait_numbers(numbers, 3)
    keep = str(box or "")
    before = _view(t.pid, keep)
    assert not mntns or any(m.split()[1] == keep for m in before["mounts"]), before  # type: ignore[attr-defined]
    assert _ns(t.pid, "user") != _ns("self", "user")
    assert (_ns(t.pid, "mnt") != _ns("self", "mnt")) == mntns
    # the mounts it copied from ours (/, /dev, /dev/shm...) are the host's:
    # named external (auto), bound back at restore
    mopts = ["--ext-mount-map", "auto"] if mntns else []
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", images, *mopts))
    assert wait_gone(t.pid, 10), f"dump left pid {t.pid} alive"
    # CRIU's image: crit decodes the maps
    userns = [f for f in os.listdir(images) if f.startswith("userns-")]
    assert len(userns) == 1, os.listdir(images)
    maps = crit_decode(images / userns[0])["entries"][0]
    assert [(e["first"], e["lower_first"], e["count"]) for e in maps["uid_map"]] == \
        [tuple(int(x) for x in ln.split()) for ln in str(before["uid_map"]).splitlines()]
    check_ok(run_procsnap("restore", "-D", images, "-d", *(mopts + ["--root", "/"] if mntns
                                                           else [])))
    targets.adopt(t.pid, like=t)
    assert t.alive(), f"pid {t.pid} did not come back"
    after = _view(t.pid, keep)
    for key in before:
        assert after[key] == before[key], f"{key}: {before[key]!r} -> {after[key]!r}"
    # (a new one: the old one's inode number may be reused once it is gone)
    assert _ns(t.pid, "user") != _ns("self", "user")
    for kind in ("pid", "uts", "ipc") + (("mnt",) if mntns else ()):
        assert _ns(t.pid, kind) != _ns("self", kind)  # owned by the new user namespace
    n = read_numbers(numbers)[-1]
    check_continuity(wait_numbers(numbers, n + 5))
    finish(t)  # inside: pid, ids, groups, caps, maps, setgroups, hostname, its child


@pytest.mark.parametrize("mntns", [False, True], ids=["no-mntns", "mount-proc"])
def test_userns_map_root_user(targets: TargetFactory, images_dir: Path, tmp_path: Path,
                              mntns: bool) -> None:
    """unshare -U --map-root-user -fp [--mount-proc -m] -u -i: root inside
    is the host's root, setgroups "deny" (unshare writes it); with a mount
    namespace, a tmpfs mounted inside with a file in it."""
    numbers = targets.workdir / "numbers"
    box = tmp_path / "box"
    box.mkdir()
    t = start_under(targets, ["unshare", "-U", "--map-root-user", "-fp", "-u", "-i",
                              *(["--mount-proc", "-m"] if mntns else [])],
                    "userns.py", str(numbers), "userns-box", str(box) if mntns else "-")
    assert Path(f"/proc/{t.pid}/setgroups").read_text().strip() == "deny"
    assert _status(t.pid, "NSpid")[-1] == "1"
    if mntns:
        assert not (box / "data").exists()   # on the tmpfs inside only
    _round_trip(targets, t, images_dir, numbers, mntns, box if mntns else None)
    if mntns:
        assert not (box / "data").exists()


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory the tasks inside a mapped user namespace can reach (a
    test's tmp_path is 0700 root's: host root is nobody in there)."""
    d = Path(tempfile.mkdtemp(prefix="procsnap-userns-", dir="/tmp"))
    os.chmod(d, 0o755)
    box = d / "box"
    box.mkdir()
    os.chown(box, 100000, 100000)   # root inside
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("every", [False, True], ids=["pid-mnt-uts-ipc", "all-kinds"])
def test_userns_written_maps(targets: TargetFactory, images_dir: Path, open_dir: Path,
                             every: bool) -> None:
    """Maps written from outside (0 -> 100000, 65536 ids; setgroups
    "allow"), with a mount namespace and a /proc of its own, a tmpfs
    mounted inside (and with ``every``: its own cgroup, network and time
    namespaces too); the init takes uid/gid 1000 inside with groups 1000 and
    5 and its permitted capabilities kept: outside it is uid 101000."""
    box = open_dir / "box"   # a tmpfs covers it inside
    numbers = open_dir / "numbers"
    numbers.touch()
    os.chmod(numbers, 0o666)
    me = str(TARGETS_DIR / "userns.py")
    # the system's python: root inside (host uid 100000) may not reach
    # an interpreter under /root (pyenv's, the venv's)
    py = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    argv = [py, me, "--own-ns", py, me, str(numbers), "mapped-box", str(box), "1000", "1000"]
    out, err = targets.workdir / "userns.out", targets.workdir / "userns.err"
    with open(out, "wb") as fo, open(err, "wb") as fe:
        env = dict(os.environ, USERNS_ALL="1") if every else None
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fo, stderr=fe, cwd=open_dir,
                             close_fds=True, start_new_session=True, env=env)
    targets.targets.append(Target("own-ns", p.pid, argv, targets.workdir, out, err, argv))
    wait_for(lambda: _ns(p.pid, "user") != _ns("self", "user"), 10, "the wrapper's unshare")
    for name in ("uid_map", "gid_map"):   # as newuidmap / newgidmap
        Path(f"/proc/{p.pid}/{name}").write_text(MAP + "\n")

    def child() -> int:
        kids = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
        return int(kids[0]) if kids else 0
    wait_for(lambda: child() != 0, 10, "the wrapper to fork its child")
    t = Target("userns", child(), argv[3:], targets.workdir, out, err, argv[3:])
    targets.targets.append(t)
    t.wait_ready()
    assert _status(t.pid, "Uid") == ["101000"] * 4, _status(t.pid, "Uid")
    assert sorted(_status(t.pid, "Groups")) == ["100005", "101000"]
    assert Path(f"/proc/{t.pid}/setgroups").read_text().strip() == "allow"
    kinds = ("cgroup", "net", "time")
    assert all((_ns(t.pid, k) != _ns("self", k)) == every for k in kinds)
    mine = Path(f"/proc/{t.pid}/root") / str(box).lstrip("/") / "home" / "mine"
    assert mine.stat().st_uid == 101000   # made by uid 1000 inside, on its tmpfs
    _round_trip(targets, t, images_dir, numbers, True, box)  # it checks the owner inside


def test_userns_single_task_in_host_pid_ns(targets: TargetFactory, images_dir: Path) -> None:
    """unshare -U --map-root-user (no pid namespace): one task, whose host
    pid the restorer's own clone3 sets: restored in a new user namespace
    with its pid, maps and setgroups."""
    numbers = targets.workdir / "numbers"
    t = start_under(targets, ["unshare", "-U", "--map-root-user", "--fork", "setsid"], "counter.py",
                    str(numbers))
    wait_numbers(numbers, 3)
    before = {k: Path(f"/proc/{t.pid}/{k}").read_text() for k in ("uid_map", "gid_map",
                                                                  "setgroups")}
    assert _ns(t.pid, "user") != _ns("self", "user") and _ns(t.pid, "pid") == _ns("self", "pid")
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", images_dir))
    assert wait_gone(t.pid, 10)
    check_ok(run_procsnap("restore", "-D", images_dir, "-d"))
    targets.adopt(t.pid, like=t)
    assert {k: Path(f"/proc/{t.pid}/{k}").read_text() for k in before} == before
    assert _ns(t.pid, "user") != _ns("self", "user")
    n = read_numbers(numbers)[-1]
    check_continuity(wait_numbers(numbers, n + 5))
    finish(t)


def _refused(targets: TargetFactory, t: Target, images: Path, numbers: Path, *names: str) -> None:
    wait_numbers(numbers, 3)
    res = run_procsnap("dump", "-t", t.pid, "-D", images)
    assert_one_line_error(res, *names)
    for pid in tree_pids(t.pid):
        ok, why = is_untouched(pid)
        assert ok, f"pid {pid}: {why}"
    assert not [f for f in os.listdir(images) if f.endswith(".img")]
    n = read_numbers(numbers)[-1]
    check_continuity(wait_numbers(numbers, n + 5))


def test_userns_host_tmpfs_not_named_refused(targets: TargetFactory, images_dir: Path) -> None:
    """Without --ext-mount-map auto, the host's mounts a mount namespace of
    a user namespace copied (locked: /dev/shm, ...) are named, not copied."""
    numbers = targets.workdir / "numbers"
    t = start_under(targets, ["unshare", "-U", "--map-root-user", "-fp", "--mount-proc",
                              "-m", "-u", "-i"], "userns.py", str(numbers), "userns-mnt", "-")
    _refused(targets, t, images_dir, numbers,
             f"re:pid {t.pid}: mount \\d+ at .* lives outside the dumped tree .* "
             "--ext-mount-map auto")
    finish(t)


def test_userns_in_host_pid_ns_refused(targets: TargetFactory, images_dir: Path) -> None:
    """A user namespace whose tree of two tasks lives in the host's pid
    namespace: the child's pid could not be chosen at restore."""
    numbers = targets.workdir / "numbers"
    t = start_under(targets, ["unshare", "-U", "--map-root-user", "--fork", "-u"],
                    "nscounter", str(numbers), "userns-hostpid", "1")
    _refused(targets, t, images_dir, numbers,
             f"pid {t.pid}: a tree of 2 tasks in its own user namespace but in procsnap's "
             "pid namespace")
    finish(t)


def test_nested_userns_refused(targets: TargetFactory, images_dir: Path) -> None:
    """A task of the tree in a user namespace nested in the tree's."""
    numbers = targets.workdir / "numbers"
    t = start_under(targets, ["unshare", "-U", "--map-root-user", "-fp", "-u", "sh", "-c",
                              'unshare -U sleep 1000 & exec "$0" "$@"'],
                    "nscounter", str(numbers), "userns-nested", "0")
    kid = next(p for p in tree_pids(t.pid) if p != t.pid)
    wait_for(lambda: _ns(kid, "user") != _ns(t.pid, "user"), 10, "the nested unshare -U")
    _refused(targets, t, images_dir, numbers,
             f"pid {kid}: lives in another user namespace than the root's")
    finish(t)


def test_mount_of_deleted_file_refused(targets: TargetFactory, images_dir: Path) -> None:
    """A bind mount whose source was deleted (mountinfo root ".../x//deleted",
    as a leaked bind of a pts on /dev/console) cannot be mounted again: the
    dump names it, the tree runs on."""
    numbers = targets.workdir / "numbers"
    src, dst = targets.workdir / "src", targets.workdir / "dst"
    t = start_under(targets, ["unshare", "-U", "--map-root-user", "-fp", "--mount-proc", "-m",
                              "-u", "-i", "sh", "-c",
                              f'touch {src} {dst} && mount --bind {src} {dst} && rm {src} && '
                              'exec "$0" "$@"'],
                    "nscounter", str(numbers), "userns-deleted", "0")
    _refused(targets, t, images_dir, numbers,
             f"re:^procsnap: pid {t.pid}: mount \\d+ at {re.escape(str(dst))} \\(\\S+\\): its "
             f"root {re.escape(str(src))} was deleted")
    finish(t)
