"""Open files whose names lie: deleted, linked elsewhere, renamed, replaced,
on tmpfs, ext4 (a loop image made here), overlayfs and FUSE (a per-caller
server of our own, and Debian's lxcfs), plus kernel-made files.

The target is tests/targets/holder.c: it holds one fd per argument,
records mode, size and a checksum of every file, and on SIGTERM checks
them all (and its shared mappings against the fd) and says PASS/FAIL.
The test changes names from outside between "ready" and the dump.

Every mount is made under tmp_path and unmounted in teardown even when
the test failed; every process started here is killed by its fixture.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from helpers import (
    Target,
    TargetFactory,
    assert_one_line_error,
    assert_same_view,
    check_ok,
    crit_decode_all,
    describe,
    finish,
    is_untouched,
    kill_when,
    outside_view,
    procsnap_cmd,
    run_procsnap,
    wait_for,
    wait_gone,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

TESTS = Path(__file__).resolve().parent.parent
MiB = 1 << 20


# --------------------------------------------------------------------------
# mounts
# --------------------------------------------------------------------------

def _umount(path: Path) -> None:
    """Unmount what we mounted; lazily if something still holds it."""
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


@pytest.fixture(params=["tmpfs", "ext4", "overlay"])
def fsdir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A fresh directory on the file system named by the parameter."""
    kind = request.param
    mnt = tmp_path / f"mnt-{kind}"
    mnt.mkdir()
    if kind == "tmpfs":
        cmd = ["mount", "-t", "tmpfs", "-o", "size=512m", "tmpfs", str(mnt)]
    elif kind == "ext4":
        if shutil.which("mkfs.ext4") is None:
            pytest.skip("mkfs.ext4 not installed (e2fsprogs)")
        img = tmp_path / "ext4.img"
        with open(img, "wb") as f:
            f.truncate(400 * MiB)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True, capture_output=True)
        cmd = ["mount", "-o", "loop", str(img), str(mnt)]
    else:
        ov = tmp_path / "ov"  # not "work": the targets fixture owns that name
        for d in ("lower", "upper", "work"):
            (ov / d).mkdir(parents=True)
        opts = f"lowerdir={ov / 'lower'},upperdir={ov / 'upper'},workdir={ov / 'work'}"
        cmd = ["mount", "-t", "overlay", "overlay", "-o", opts, str(mnt)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount {kind}: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        _umount(mnt)


# --------------------------------------------------------------------------
# the cycle
# --------------------------------------------------------------------------

def start(targets: TargetFactory, *specs: str) -> Target:
    return targets.start("holder", *specs)


def dump_ok(t: Target, images: Path, *extra: str) -> None:
    res = run_procsnap("dump", "-t", t.pid, "-D", images, *extra)
    check_ok(res)
    assert wait_gone(t.pid, 10), f"pid {t.pid} still alive after dump\n" + describe(res)


def restore_ok(targets: TargetFactory, t: Target, images: Path, *extra: str) -> None:
    targets.adopt(t.pid, like=t)
    res = run_procsnap("restore", "-D", images, "-d", *extra)
    check_ok(res)
    assert t.alive(), f"restored pid {t.pid} is not running\n" + describe(res)


def verdict_pass(t: Target) -> None:
    line = t.verdict()
    assert line == "PASS", f"{line}\n{t.output()}"


def fd_link(t: Target, fd: int) -> str:
    return os.readlink(f"/proc/{t.pid}/fd/{fd}")


def fd_stat(t: Target, fd: int) -> os.stat_result:
    return os.stat(f"/proc/{t.pid}/fd/{fd}")


def make_sparse(path: Path) -> None:
    """100 MiB, two written 4 KiB blocks, holes elsewhere."""
    with open(path, "wb") as f:
        f.truncate(100 * MiB)
        f.seek(4096)
        f.write(b"A" * 4096)
        f.seek(60 * MiB)
        f.write(b"B" * 4096)


def listing(d: Path) -> list[str]:
    return sorted(os.listdir(d))


# --------------------------------------------------------------------------
# deleted, linked, renamed, replaced
# --------------------------------------------------------------------------

def test_unlinked_sparse_and_mapped(targets: TargetFactory, images_dir: Path, fsdir: Path) -> None:
    """nlink 0: ghosts bring back bytes, size and holes; the fd stays unlinked."""
    make_sparse(fsdir / "sparse")
    (fsdir / "mapped").write_bytes(b"mapped and deleted\n" * 2000)
    t = start(targets, f"{fsdir}/sparse", f"m:{fsdir}/mapped")
    os.unlink(fsdir / "sparse")
    os.unlink(fsdir / "mapped")
    before = listing(fsdir)
    dump_ok(t, images_dir)
    assert (images_dir / "ghost-file-1.img").exists() and (images_dir / "remap-fpath.img").exists()
    assert (images_dir / "ghost-file-1.img").stat().st_size < MiB, "holes were stored as data"
    restore_ok(targets, t, images_dir)
    st = fd_stat(t, 3)
    assert fd_link(t, 3).endswith(" (deleted)"), fd_link(t, 3)
    assert st.st_nlink == 0 and st.st_size == 100 * MiB
    assert st.st_blocks * 512 <= 4 * 8192, f"holes lost: {st.st_blocks} blocks allocated"
    with open(f"/proc/{t.pid}/fd/3", "rb") as f:
        assert f.read(4096) == bytes(4096)
        assert f.read(4096) == b"A" * 4096
        f.seek(60 * MiB)
        assert f.read(4096) == b"B" * 4096
    assert fd_stat(t, 4).st_nlink == 0
    assert listing(fsdir) == before, "a ghost name was left behind"
    verdict_pass(t)


def test_deleted_directory(targets: TargetFactory, images_dir: Path, tmp_path: Path) -> None:
    """A directory fd whose directory was removed: a ghost directory."""
    d = tmp_path / "gone"
    d.mkdir(mode=0o751)
    t = start(targets, f"d:{d}")
    d.rmdir()
    before = listing(tmp_path)
    dump_ok(t, images_dir)
    assert (images_dir / "ghost-file-1.img").exists()
    restore_ok(targets, t, images_dir)
    assert fd_link(t, 3).endswith(" (deleted)"), fd_link(t, 3)
    st = fd_stat(t, 3)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o751
    assert listing(tmp_path) == before, "the ghost directory was left behind"
    verdict_pass(t)


def test_linked_elsewhere(targets: TargetFactory, images_dir: Path, fsdir: Path) -> None:
    """Open, link to a second name, unlink the first: the fd keeps that inode."""
    (fsdir / "first").write_bytes(b"one inode, two names\n" * 50)
    t = start(targets, f"w:{fsdir}/first")
    os.link(fsdir / "first", fsdir / "second")
    os.unlink(fsdir / "first")
    before = listing(fsdir)
    res = run_procsnap("dump", "-t", t.pid, "-D", images_dir)
    if res.returncode != 0:
        # No file handles on this fs (overlayfs): a link remap is needed,
        # and only with --link-remap, as in criu.
        assert_one_line_error(res, "--link-remap")
        assert t.alive() and is_untouched(t.pid)[0]
        assert listing(fsdir) == before
        dump_ok(t, images_dir, "--link-remap")
    else:
        assert wait_gone(t.pid, 10)
        assert listing(fsdir) == before, "the dump changed the directory"
    restore_ok(targets, t, images_dir)
    assert fd_stat(t, 3).st_ino == os.stat(fsdir / "second").st_ino
    assert not (fsdir / "first").exists(), "the original name came back"
    assert listing(fsdir) == before, "something was left in the directory"
    verdict_pass(t)


def test_renamed_after_open(targets: TargetFactory, images_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "old").write_bytes(b"renamed\n" * 10)
    t = start(targets, f"{tmp_path}/old")
    os.rename(tmp_path / "old", tmp_path / "new")
    dump_ok(t, images_dir)
    restore_ok(targets, t, images_dir)
    assert fd_link(t, 3) == f"{tmp_path}/new"
    assert fd_stat(t, 3).st_ino == os.stat(tmp_path / "new").st_ino
    verdict_pass(t)


def test_replaced_is_a_ghost(targets: TargetFactory, images_dir: Path, tmp_path: Path) -> None:
    """Replaced by rename (nlink 0 now): the open file is deleted, so it is
    a ghost, and the new file under its old name is left alone."""
    (tmp_path / "data").write_bytes(b"the original\n")
    t = start(targets, f"{tmp_path}/data")
    (tmp_path / "data.new").write_bytes(b"the replacement\n")
    os.rename(tmp_path / "data.new", tmp_path / "data")
    new = os.stat(tmp_path / "data")
    dump_ok(t, images_dir)
    assert (images_dir / "ghost-file-1.img").exists()
    restore_ok(targets, t, images_dir)
    assert fd_stat(t, 3).st_nlink == 0
    assert (tmp_path / "data").read_bytes() == b"the replacement\n"
    assert os.stat(tmp_path / "data").st_ino == new.st_ino
    assert not [n for n in os.listdir(tmp_path) if ".ghost" in n], "a ghost was left behind"
    verdict_pass(t)


def test_replaced_fails_clearly(targets: TargetFactory, images_dir: Path, tmp_path: Path) -> None:
    """Still linked elsewhere (nlink 1) while its name now names another
    file: refused, naming both inodes."""
    (tmp_path / "data").write_bytes(b"the original\n")
    t = start(targets, f"{tmp_path}/data")
    orig = os.stat(tmp_path / "data")
    os.link(tmp_path / "data", tmp_path / "data.kept")
    (tmp_path / "data.new").write_bytes(b"the replacement\n")
    os.rename(tmp_path / "data.new", tmp_path / "data")
    new = os.stat(tmp_path / "data")
    res = run_procsnap("dump", "-t", t.pid, "-D", images_dir)
    line = assert_one_line_error(res, "now names another file")
    for part in (f"pid {t.pid}", "fd 3", f"{tmp_path}/data",
                 f"expected {os.major(orig.st_dev)}:{os.minor(orig.st_dev)}:{orig.st_ino}",
                 f"found {os.major(new.st_dev)}:{os.minor(new.st_dev)}:{new.st_ino}"):
        assert part in line, f"{part!r} missing from: {line}"
    assert t.alive() and is_untouched(t.pid)[0]
    assert os.listdir(images_dir) == [], os.listdir(images_dir)
    verdict_pass(t)


def test_name_ending_in_deleted(targets: TargetFactory, images_dir: Path, tmp_path: Path) -> None:
    """A live file literally named "data (deleted)" is a plain path."""
    name = tmp_path / "data (deleted)"
    name.write_bytes(b"I am not deleted\n")
    t = start(targets, str(name))
    dump_ok(t, images_dir)
    assert not (images_dir / "remap-fpath.img").exists()
    restore_ok(targets, t, images_dir)
    assert fd_link(t, 3) == str(name)
    assert fd_stat(t, 3).st_nlink == 1
    verdict_pass(t)


def test_ghost_over_limit(targets: TargetFactory, images_dir: Path, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(os.urandom(3 * MiB))
    t = start(targets, str(big))
    os.unlink(big)
    res = run_procsnap("dump", "-t", t.pid, "-D", images_dir)
    line = assert_one_line_error(res, "--ghost-limit")
    assert str(big) in line and str(3 * MiB) in line, line
    assert t.alive() and is_untouched(t.pid)[0], "the target was not left as it was"
    assert os.listdir(images_dir) == [], os.listdir(images_dir)
    # with room enough it goes through
    dump_ok(t, images_dir, "--ghost-limit", "4M")
    restore_ok(targets, t, images_dir)
    verdict_pass(t)


def test_changed_file_refused(targets: TargetFactory, images_dir: Path, tmp_path: Path) -> None:
    f = tmp_path / "grows"
    f.write_bytes(b"12345\n")
    t = start(targets, str(f))
    dump_ok(t, images_dir)
    f.write_bytes(b"1234567890\n")
    res = run_procsnap("restore", "-D", images_dir, "-d")
    assert_one_line_error(res, "size changed", "--skip-file-check")
    assert wait_gone(t.pid, 10)
    restore_ok(targets, t, images_dir, "--skip-file-check")


# --------------------------------------------------------------------------
# kernel-made files and FUSE
# --------------------------------------------------------------------------

def test_kernel_files(targets: TargetFactory, images_dir: Path) -> None:
    """procfs, sysfs and cgroupfs files are reopened by name, never ghosted."""
    specs = ["k:/proc/self/status", "k:/proc/self/stat", "k:/proc/cpuinfo",
             "k:/sys/kernel/mm/transparent_hugepage/enabled"]
    for cg in ("/sys/fs/cgroup/unified/cgroup.controllers", "/sys/fs/cgroup/cgroup.controllers",
               "/sys/fs/cgroup/freezer/freezer.state"):
        if os.path.exists(cg):
            specs.append(f"k:{cg}")
    specs.append("d:/sys/fs/cgroup")
    t = start(targets, *specs)
    dump_ok(t, images_dir)
    assert not (images_dir / "remap-fpath.img").exists()
    restore_ok(targets, t, images_dir)
    assert fd_link(t, 3) == f"/proc/{t.pid}/status"
    verdict_pass(t)


class FuseServer:
    """tests/fuse_server.py on a mount point of ours."""

    def __init__(self, mnt: Path, allow: Path) -> None:
        self.mnt, self.allow = mnt, allow
        allow.write_text("")
        self.log = open(mnt.parent / "fuse.log", "wb")
        self.proc = subprocess.Popen([sys.executable, str(TESTS / "fuse_server.py"), str(mnt),
                                      str(allow)], stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, close_fds=True,
                                     start_new_session=True)
        try:
            wait_for(lambda: _mounted(mnt) or self.proc.poll() is not None, 15, "the FUSE mount")
        except TimeoutError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            self.stop()
            pytest.skip(f"FUSE server did not start: {(mnt.parent / 'fuse.log').read_text()}")

    def stop(self) -> None:
        if _mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True)
            if _mounted(self.mnt):
                _umount(self.mnt)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.log.close()


@pytest.fixture
def fuse_mount(tmp_path: Path) -> Iterator[FuseServer]:
    pytest.importorskip("mfusepy", reason="pip package mfusepy (with Debian's libfuse3-3)")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse")
    mnt = tmp_path / "fuse"
    mnt.mkdir()
    srv = FuseServer(mnt, tmp_path / "allow")
    try:
        yield srv
    finally:
        srv.stop()


def test_fuse_per_caller_looks_deleted(targets: TargetFactory, images_dir: Path,
                                       fuse_mount: FuseServer) -> None:
    """The seed: a live FUSE file that looks deleted to everyone but the target."""
    path = fuse_mount.mnt / "data"
    t = targets.start("holder", f"rwm:{path}", wait_ready=False)
    fuse_mount.allow.write_text(f"{t.pid}\n")
    t.wait_ready()
    # Anybody else's lookup fails and makes the kernel drop the name.
    with pytest.raises(FileNotFoundError):
        os.stat(path)
    assert fd_link(t, 3) == f"{path} (deleted)", "the setup did not reproduce the lxcfs case"
    with pytest.raises(FileNotFoundError):
        os.stat(f"/proc/{t.pid}/fd/3")  # even fstat through the fd fails for us
    dump_ok(t, images_dir)
    assert not (images_dir / "remap-fpath.img").exists(), "a live FUSE file was remapped"
    assert not list(images_dir.glob("ghost-file-*.img"))
    restore_ok(targets, t, images_dir)
    verdict_pass(t)


@pytest.fixture
def lxcfs_mount(tmp_path: Path) -> Iterator[Path]:
    exe = shutil.which("lxcfs")
    if exe is None:
        pytest.skip("lxcfs not installed (Debian package lxcfs)")
    mnt = tmp_path / "lxcfs"
    mnt.mkdir()
    log = open(tmp_path / "lxcfs.log", "wb")
    proc = subprocess.Popen([exe, "-f", "--pidfile", str(tmp_path / "lxcfs.pid"), str(mnt)],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            close_fds=True, start_new_session=True)
    try:
        try:
            wait_for(lambda: (mnt / "proc" / "cpuinfo").exists() or proc.poll() is not None,
                     15, "lxcfs to mount")
        except TimeoutError:
            pytest.skip("lxcfs did not come up")
        if proc.poll() is not None:
            pytest.skip(f"lxcfs exited: {(tmp_path / 'lxcfs.log').read_text()[-400:]}")
        yield mnt
    finally:
        if _mounted(mnt):
            subprocess.run(["fusermount", "-u", str(mnt)], capture_output=True)
            if _mounted(mnt):
                _umount(mnt)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()


def test_lxcfs_files(targets: TargetFactory, images_dir: Path, lxcfs_mount: Path) -> None:
    specs = [f"k:{lxcfs_mount}/proc/cpuinfo", f"k:{lxcfs_mount}/proc/meminfo",
             f"k:{lxcfs_mount}/proc/uptime"]
    t = start(targets, *specs)
    dump_ok(t, images_dir)
    assert not (images_dir / "remap-fpath.img").exists()
    restore_ok(targets, t, images_dir)
    assert fd_link(t, 3) == f"{lxcfs_mount}/proc/cpuinfo"
    verdict_pass(t)


def test_lxcfs_file_read_part_way(targets: TargetFactory, images_dir: Path,
                                  lxcfs_mount: Path) -> None:
    """A reader 10 bytes into lxcfs's meminfo reads on after restore (lxcfs
    answers only a read at offset 0: reopened and sought past 0, it gave EOF)."""
    t = targets.start("fuse_reader.py", f"{lxcfs_mount}/proc/meminfo", "10")
    dump_ok(t, images_dir)
    restore_ok(targets, t, images_dir)
    verdict_pass(t)


# --------------------------------------------------------------------------
# a dump killed halfway
# --------------------------------------------------------------------------

@pytest.mark.parametrize("fsdir", ["overlay"], indirect=True)
def test_dump_killed_halfway(targets: TargetFactory, images_dir: Path, fsdir: Path) -> None:
    """SIGKILL to procsnap after it made a link remap: the target runs on,
    the next run reports the leftover and ``procsnap cleanup`` removes it."""
    (fsdir / "first").write_bytes(b"linked elsewhere\n")
    (fsdir / "big").write_bytes(os.urandom(192 * MiB))  # a slow ghost to copy
    t = start(targets, f"{fsdir}/first", f"{fsdir}/big")
    os.link(fsdir / "first", fsdir / "second")
    os.unlink(fsdir / "first")
    os.unlink(fsdir / "big")
    before = listing(fsdir)
    env = dict(os.environ, PYTHONPATH=str(TESTS.parent))
    dumper = subprocess.Popen(procsnap_cmd("dump", "-t", t.pid, "-D", images_dir, "--link-remap",
                                           "--ghost-limit", "1G"),
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, close_fds=True, env=env)
    kill_when(dumper, lambda: any(n.startswith(".ghost-file") for n in os.listdir(images_dir)),
              "the dump to start copying the ghost")
    wait_for(lambda: is_untouched(t.pid)[0], 10, f"pid {t.pid} to run on untraced")
    assert any(n.startswith("link_remap.") for n in listing(fsdir)), listing(fsdir)
    # the next run says what is left ...
    res = run_procsnap("restore", "-D", images_dir, "-d")
    assert res.returncode != 0 and "procsnap cleanup" in res.stderr, describe(res)
    # ... and cleanup removes it
    res = check_ok(run_procsnap("cleanup", images_dir))
    assert "link_remap." in res.stdout, describe(res)
    assert listing(fsdir) == before
    assert not [n for n in os.listdir(images_dir) if n.endswith(".part")]
    time.sleep(0.1)
    verdict_pass(t)


def test_rebuilt_program_refused(targets: TargetFactory, images_dir: Path, tmp_path: Path) -> None:
    """The executable is replaced, in place, by another build of the same
    size (only its GNU build-id differs): size and mode say nothing, the
    build-id recorded at dump refuses it -- unless --skip-file-check."""
    src = TESTS / "targets" / "counter.c"
    builds = []
    for tag in ("11", "22"):
        out = tmp_path / f"counter-{tag}"
        subprocess.run(["gcc", "-O1", "-o", str(out), str(src), f"-Wl,--build-id=0x{tag * 20}"],
                       check=True, capture_output=True, timeout=120)
        builds.append(out)
    assert builds[0].stat().st_size == builds[1].stat().st_size
    prog = tmp_path / "prog"
    shutil.copy(builds[0], prog)
    numbers = tmp_path / "numbers"
    proc = subprocess.Popen([str(prog), str(numbers)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            close_fds=True, start_new_session=True)
    t = Target(name="prog", pid=proc.pid, argv=[str(prog)], workdir=tmp_path,
               out=tmp_path / "none", err=tmp_path / "none", cmdline=[str(prog), str(numbers)])
    targets.targets.append(t)
    wait_for(lambda: numbers.exists() and numbers.stat().st_size > 4, 10, "the counter to count")
    dump_ok(t, images_dir)
    with open(builds[1], "rb") as f, open(prog, "r+b") as out:  # same inode, new bytes
        out.write(f.read())
    res = run_procsnap("restore", "-D", images_dir, "-d")
    line = assert_one_line_error(res, str(prog))
    assert "build-id" in line and "--skip-file-check" in line, line
    assert wait_gone(t.pid, 10)
    restore_ok(targets, t, images_dir, "--skip-file-check")
    size = numbers.stat().st_size
    wait_for(lambda: numbers.stat().st_size > size, 5, "the restored counter to count on")


def test_deleted_fifo_and_device_node(targets: TargetFactory, tmp_path: Path) -> None:
    """A FIFO (with bytes queued) and a device node, both unlinked while
    open, come back as ghosts: made again under a temporary name, opened,
    unlinked -- same readlink, mode, rdev, one FIFO for both ends, and no
    name left behind in the directory."""
    d = tmp_path / "nodes"
    d.mkdir()
    t = targets.start("deleted_nodes", str(d))
    links = {fd: os.readlink(f"/proc/{t.pid}/fd/{fd}") for fd in (3, 4, 5)}
    assert links == {3: f"{d}/fifo (deleted)", 4: f"{d}/fifo (deleted)",
                     5: f"{d}/null (deleted)"}, links
    modes = {fd: os.stat(f"/proc/{t.pid}/fd/{fd}") for fd in (3, 5)}
    images = tmp_path / "images"
    images.mkdir()
    before = outside_view(t.pid)
    res = run_procsnap("dump", "-t", t.pid, "-D", images)
    check_ok(res)
    assert wait_gone(t.pid, 10), describe(res)
    decoded = crit_decode_all(images)
    ghosts = sorted(int(e["entries"][0]["mode"]) for n, e in decoded.items()
                    if n.startswith("ghost-file-"))
    assert ghosts == sorted([modes[3].st_mode, modes[5].st_mode]), ghosts
    targets.adopt(t.pid, like=t)
    check_ok(run_procsnap("restore", "-D", images, "-d"))
    after = outside_view(t.pid)
    # As with CRIU, readlink names the ghost: "NAME.cr.ID.ghost (deleted)".
    ghost_name = re.compile(r"^(.*)\.cr\.[0-9a-f]+\.ghost( \(deleted\))$")
    for fd in (3, 4, 5):
        link, *rest = after["fds"][fd]  # type: ignore[index]
        assert ghost_name.match(link), link
        after["fds"][fd] = (ghost_name.sub(r"\1\2", link), *rest)  # type: ignore[index]
    assert_same_view(before, after, "across dump/restore")
    for fd in (3, 5):
        st = os.stat(f"/proc/{t.pid}/fd/{fd}")
        assert (st.st_mode, st.st_rdev, st.st_nlink) == (
            modes[fd].st_mode, modes[fd].st_rdev, 0), fd
    assert list(d.iterdir()) == [], "a ghost name was left behind"
    finish(t)
