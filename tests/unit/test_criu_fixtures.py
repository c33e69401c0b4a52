"""Image sets written by CRIU 4.2 (tests/fixtures/criu-4.2, made by
scripts/criu-fixtures.py from tests/targets/criu_tiny.c) read by procsnap,
with no CRIU binary: each image decodes with our schemas and re-encodes
byte for byte (so no field CRIU wrote is unknown to us), ``procsnap show``
decodes every file, the restore's collect stage accepts each set, and
each kind's own reader finds the state the target set up.

The restore of each set is tests/integration/test_criu_fixtures_restore.py
(the binary rebuilt at the path and with the build-id the images name)."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from procsnap import restorer
from procsnap.images import framing, read_image, read_one
from procsnap.images.magic import kind_by_file_name
from procsnap.images.show import decode_dir, decode_file
from procsnap.resources import ghost, memory
from procsnap.tasks import RestoreContext, RestoreOptions

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "criu-4.2"
CASES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
IMAGES = [(c, f.name) for c in CASES for f in sorted((FIXTURES / c).iterdir())
          if f.name != "CMDLINE"]


def test_every_case_is_there() -> None:
    assert CASES == ["counter", "ghost", "ns", "shmem", "tcp", "tree"]


def _unknown(msg: Any) -> list[str]:
    """Fields of msg (and of its sub-messages) our schema does not know."""
    from google.protobuf import unknown_fields
    out = [f"{msg.DESCRIPTOR.name}: field {u.field_number}"
           for u in unknown_fields.UnknownFieldSet(msg)]
    for fd, val in msg.ListFields():
        if fd.message_type is None:
            continue
        for sub in (val if fd.is_repeated else [val]):
            out += _unknown(sub)
    return out


@pytest.mark.parametrize("case,name", IMAGES)
def test_image_round_trips(case: str, name: str) -> None:
    """Decoded with our schemas and encoded again, the file is the same
    bytes; no field is unknown to us."""
    path = FIXTURES / case / name
    k = kind_by_file_name(name)
    assert k is not None, f"{name}: not an image name procsnap knows"
    raw = path.read_bytes()
    if k.header == "raw":
        return  # no framing: decode_file summarises it (test below)
    out = raw[:k.header_bytes]
    unknown: list[str] = []
    for e in framing.iter_entries(str(path)):
        body = e.msg.SerializeToString()
        out += struct.pack("<I", len(body)) + body + e.payload
        unknown += _unknown(e.msg)
    assert out == raw
    assert not unknown, f"{name}: fields CRIU wrote that our schema lacks: {unknown}"


@pytest.mark.parametrize("case", CASES)
def test_show_decodes_every_file(case: str) -> None:
    d = FIXTURES / case
    shown = decode_dir(str(d))
    assert set(shown) == {f.name for f in d.iterdir()} - {"CMDLINE"}
    for name, img in shown.items():
        assert img["magic"] != "PAGES" or name.startswith("pages-"), name
    # and the command itself, as a user runs it
    res = subprocess.run([sys.executable, "-m", "procsnap", "show", str(d)],
                         capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(FIXTURES.parent.parent.parent)))
    assert res.returncode == 0, res.stderr
    assert set(json.loads(res.stdout)) == set(shown)


def _collect(case: str) -> RestoreContext:
    rctx = RestoreContext(str(FIXTURES / case), RestoreOptions())
    restorer._collect(rctx, check_pids=False)
    return rctx


@pytest.mark.parametrize("case", CASES)
def test_collect_accepts(case: str) -> None:
    """The restore's reading stage takes each set whole: pstree, core, ids,
    mm, pagemap (with the pages file long enough), fs, fdinfo and every
    file entry they name."""
    rctx = _collect(case)
    assert rctx.tasks
    for rt in rctx.tasks:
        # criu's [vvar]+[vvar_vclock] as one VMA, then [vdso]: the form
        # procsnap compares with this kernel's
        vv = [(v.status, v.start, v.end) for v in rt.mm.vmas
              if v.status & (memory.VMA_AREA_VVAR | memory.VMA_AREA_VDSO)]
        assert len(memory._vdso_layout(vv)) == 2, vv


def test_tree_pipe_and_unix_data() -> None:
    rctx = _collect("tree")
    assert len(rctx.tasks) == 3
    # one entry a pipe, the empty one too
    pipes = rctx.payload_entries("pipes-data")
    assert sorted(e.payload for e in pipes) == [b"", b"pipe-data"]
    queued = sorted(e.payload for e in rctx.payload_entries("sk-queues"))
    assert queued == [b"to-child", b"to-parent"]
    kinds = {f.type for f in rctx.files.values()}
    assert {"PIPE", "UNIXSK", "REG"} <= {_ftype(t) for t in kinds}


def _ftype(t: int) -> str:
    from procsnap.images.pb import fdinfo_pb2
    return fdinfo_pb2.fd_types.Name(t)


def test_ghost_file() -> None:
    rctx = _collect("ghost")
    regs = [f.reg for f in rctx.files.values() if f.HasField("reg")]
    gone = [r for r in regs if r.name.endswith("tiny-ghost.tmp")]
    assert len(gone) == 1 and gone[0].pos == 3
    remap = read_image(rctx.images_dir, "remap-fpath")
    assert [r.orig_id for r in remap] == [gone[0].id]
    g = ghost.entry(rctx.images_dir, remap[0].remap_id)
    assert g.mode & 0o777 == 0o600 and not g.chunks  # the contents follow the entry whole
    entries = framing.read_entries(rctx.images_dir, "ghost-file", remap[0].remap_id)
    assert b"".join(e.payload for e in entries) == b"xx ghost-content"


def test_tcp_streams() -> None:
    rctx = _collect("tcp")
    inet = [f.isk for f in rctx.files.values() if f.HasField("isk")]
    est = [s for s in inet if s.state == 1]  # TCP_ESTABLISHED
    assert len(est) == 2 and len(inet) == 3
    queued = set()
    for s in est:
        (e,) = framing.read_entries(rctx.images_dir, "tcp-stream", s.ino)
        queued.add(e.payload[:e.msg.inq_len])
    assert queued == {b"c2s", b"s2c"}


def test_namespaces() -> None:
    rctx = _collect("ns")
    (rt,) = rctx.tasks
    # criu records pids as seen inside the pid namespace: the reader gives
    # the root a free outside pid and keeps 1 inside (and in the image names)
    assert rt.pstree.ns_pid[-1] == 1 and rctx.vpid(rt.pid) == 1
    assert rctx.set_tid(rt.pid) == [1, rt.pid] and rt.pid != 1
    assert rt.image_name("core").endswith("/core-1.img")
    # the pipe whose SIGIO owner is the task itself: pid 1 in CRIU's image
    owned = [f for f in rctx.files.values() if f.HasField("pipe") and f.pipe.fown.pid]
    assert [f.pipe.fown.pid for f in owned] == [rt.pid]
    uts = read_one(rctx.images_dir, "utsns", rt.ids.uts_ns_id)
    assert uts.nodename == "tiny-ns"
    read_one(rctx.images_dir, "ipcns-var", rt.ids.ipc_ns_id)
    read_one(rctx.images_dir, "netns", rt.ids.net_ns_id)
    mounts = read_image(rctx.images_dir, "mountpoints", rt.ids.mnt_ns_id)
    tmpfs = [m for m in mounts if m.mountpoint.endswith("/mnt") and m.fstype == 5]  # FSTYPE__TMPFS
    assert len(tmpfs) == 1
    tar = decode_file(str(FIXTURES / "ns" / f"tmpfs-dev-{tmpfs[0].root_dev}.tar.gz.img"))
    assert tar["magic"] == "TMPFS_DEV" and "./file" in tar["files"]


def test_cet_shadow_stack_refused() -> None:
    """criu 4.x saves a thread's CET state; an enabled shadow stack is
    something procsnap does not make: the restore names it."""
    from procsnap.errors import RestoreError
    rctx = _collect("counter")
    rt = rctx.tasks[0]
    core = rt.core
    restorer._check_live_core(rt, core, rt.pid)  # zeroes, as criu wrote them: fine
    core.thread_info.fpregs.xsave.cet.cet = 1
    with pytest.raises(RestoreError, match=f"pid {rt.pid}: thread {rt.pid}: a CET shadow stack"):
        restorer._check_live_core(rt, core, rt.pid)


# --- pagemaps that point into a parent image set (criu pre-dump chains) ---
# CRIU cannot write these on this kernel (pre-dump needs soft-dirty bits,
# which it lacks), so a chain is made from the counter fixture: its set
# becomes the parent, and a child set says which runs are in the parent.

def _chain(tmp_path: Path, child_entries: list[tuple[int, int, int | None, bool]],
           child_pages: bytes) -> tuple[Path, int, bytes]:
    """(child dir, pid, the parent's pages of its last run: the 3-page
    stack) with the child's pagemap made of (page index into that run,
    count, flags, old in_parent)."""
    import shutil
    from procsnap.images import write_image
    from procsnap.images.pb import pagemap_pb2
    parent = tmp_path / "parent-set"
    shutil.copytree(FIXTURES / "counter", parent)
    child = tmp_path / "child-set"
    shutil.copytree(FIXTURES / "counter", child)
    rc = _collect("counter")
    rt = rc.tasks[0]
    pid = rc.vpid(rt.pid)  # images are named by the pid inside its pid namespace
    first = rt.pagemap[-1]
    assert first.nr_pages >= 3  # the stack (3 or 4 pages: where ASLR puts its top)
    skip = sum(e.nr_pages for e in rt.pagemap[:-1]) * 4096
    parent_bytes = (parent / f"pages-{rt.pages_id}.img").read_bytes()[skip:]
    (child / "parent").symlink_to("../parent-set")
    ents: list[Any] = [pagemap_pb2.pagemap_head(pages_id=rt.pages_id)]
    for idx, n, flags, old in child_entries:
        e = pagemap_pb2.pagemap_entry(vaddr=first.vaddr + idx * 4096, nr_pages=n)
        if flags is not None:
            e.flags = flags
        if old:
            e.in_parent = True
        ents.append(e)
    (child / f"pagemap-{pid}.img").unlink()
    write_image(str(child), "pagemap", ents, pid)
    (child / f"pages-{rt.pages_id}.img").write_bytes(child_pages)
    return child, pid, parent_bytes


def _task_bytes(rt: Any) -> bytes:
    """The task's page bytes, in address order, as the restore reads them
    (through the parent chain)."""
    from procsnap.resources import memory
    f = memory._PageFiles(rt.page_files)
    try:
        return b"".join(f.pread(place, size) for _, size, place in memory._page_runs(rt).runs)
    finally:
        f.close()


def test_pages_in_parent_are_read_from_the_parent(tmp_path: Path) -> None:
    from procsnap.images import PE_PARENT, PE_PRESENT
    new = b"N" * 4096
    child, pid, par = _chain(tmp_path, [(0, 1, PE_PARENT, False), (1, 1, PE_PRESENT, False),
                                        (2, 1, None, True)], new)
    rctx = RestoreContext(str(child), RestoreOptions())
    try:
        restorer._collect(rctx, check_pids=False)
        rt = rctx.tasks[0]
        got = _task_bytes(rt)
        # page 0 and page 2 from the parent's file, page 1 from the child's
        assert got == par[:4096] + new + par[8192:12288]
    finally:
        for fd in rctx.own_fds:
            os.close(fd)


def test_pages_two_sets_up(tmp_path: Path) -> None:
    """A parent that says PE_PARENT again sends the reader one more set up."""
    from procsnap.images import PE_PARENT, PE_PRESENT, write_image
    from procsnap.images.pb import pagemap_pb2
    child, pid, par = _chain(tmp_path, [(0, 2, PE_PARENT, False)], b"")
    # the middle set holds page 0 itself and sends page 1 further up
    mid = tmp_path / "parent-set"
    top = tmp_path / "top-set"
    import shutil
    shutil.copytree(mid, top)
    rt = _collect("counter").tasks[0]
    base = rt.pagemap[-1].vaddr
    (mid / f"pagemap-{pid}.img").unlink()
    write_image(str(mid), "pagemap", [
        pagemap_pb2.pagemap_head(pages_id=rt.pages_id),
        pagemap_pb2.pagemap_entry(vaddr=base, nr_pages=1, flags=PE_PRESENT),
        pagemap_pb2.pagemap_entry(vaddr=base + 4096, nr_pages=1, flags=PE_PARENT)], pid)
    (mid / f"pages-{rt.pages_id}.img").write_bytes(b"M" * 4096)
    (mid / "parent").symlink_to("../top-set")
    rctx = RestoreContext(str(child), RestoreOptions())
    try:
        restorer._collect(rctx, check_pids=False)
        assert _task_bytes(rctx.tasks[0]) == b"M" * 4096 + par[4096:8192]
    finally:
        for fd in rctx.own_fds:
            os.close(fd)


@pytest.mark.parametrize("what", ["lazy", "no-parent", "hole"])
def test_pages_not_in_any_file_are_named(tmp_path: Path, what: str) -> None:
    from procsnap.errors import ImageError
    from procsnap.images import PE_LAZY, PE_PARENT
    if what == "lazy":
        child, *_ = _chain(tmp_path, [(0, 1, PE_LAZY, False)], b"")
        msg = r"are lazy \(flags 0x2: on a page server"
    elif what == "no-parent":
        child, *_ = _chain(tmp_path, [(0, 1, PE_PARENT, False)], b"")
        (child / "parent").unlink()
        msg = "are in the parent images, but there is no parent link"
    else:
        child, *_ = _chain(tmp_path, [(-4, 1, PE_PARENT, False)], b"")
        msg = "are in the parent images, which do not hold them all"
    rctx = RestoreContext(str(child), RestoreOptions())
    with pytest.raises(ImageError, match=msg):
        restorer._collect(rctx, check_pids=False)
    for fd in rctx.own_fds:
        os.close(fd)


def test_shared_memory_pages_in_parent_are_refused() -> None:
    from procsnap.errors import ImageError
    from procsnap.images import PE_PARENT, PE_PRESENT, parent
    from procsnap.images.pb import pagemap_pb2
    ok = pagemap_pb2.pagemap_entry(vaddr=0, nr_pages=1, flags=PE_PRESENT)
    old = pagemap_pb2.pagemap_entry(vaddr=0x1000, nr_pages=1, compat_nr_pages=1)
    parent.all_present("shmem-pagemap-7.img", [ok, old])
    up = pagemap_pb2.pagemap_entry(vaddr=0x2000, nr_pages=1, flags=PE_PARENT)
    with pytest.raises(ImageError, match="pages at offset 0x2000 are in the parent image set"):
        parent.all_present("shmem-pagemap-7.img", [ok, up])


@pytest.mark.parametrize("what", ["tls", "compat", "plugins"])
def test_criu_state_procsnap_lacks_is_named(tmp_path: Path, what: str) -> None:
    """State criu saves and procsnap does not restore fails the reading of
    the images with one line naming it (never a quiet drop)."""
    import shutil
    from procsnap.errors import ProcsnapError
    from procsnap.images import write_one
    d = tmp_path / "set"
    shutil.copytree(FIXTURES / "counter", d)
    rctx = _collect("counter")
    rt = rctx.tasks[0]
    if what == "plugins":
        inv = read_one(str(d), "inventory")
        inv.plugins_entry.plugins.append("amdgpu_plugin")
        (d / "inventory.img").unlink()
        write_one(str(d), "inventory", inv)
        msg = r"needs criu plugins \(amdgpu_plugin\)"
    else:
        core = rt.core
        if what == "tls":
            core.thread_info.tls[0].seg_not_present = False
            msg = "GDT TLS entry 12 \\(set_thread_area\\) is in use"
        else:
            core.tc.sigactions[0].compat_sigaction = True
            msg = "signal handlers of a 32-bit \\(compat\\) task"
        (d / f"core-{rctx.vpid(rt.pid)}.img").unlink()
        write_one(str(d), "core", core, rctx.vpid(rt.pid))
    with pytest.raises(ProcsnapError, match=msg):
        restorer._collect(RestoreContext(str(d), RestoreOptions()), check_pids=False)


def test_criu_inside_pids_in_file_entries(tmp_path: Path) -> None:
    """A SIGIO owner in CRIU's images of a pid namespace is an inside pid;
    the reader turns it into the outside pid of the same task."""
    import shutil
    from procsnap.images import write_image
    d = tmp_path / "set"
    shutil.copytree(FIXTURES / "ns", d)
    files = read_image(str(d), "files")
    reg = next(f for f in files if f.HasField("reg"))
    reg.reg.fown.pid = 1
    reg.reg.fown.signum = 29
    (d / "files.img").unlink()
    write_image(str(d), "files", files)
    rctx = RestoreContext(str(d), RestoreOptions())
    restorer._collect(rctx, check_pids=False)
    root = rctx.tasks[0]
    assert root.pid != 1 and rctx.files[reg.id].reg.fown.pid == root.pid


def test_lock_owners_in_criu_images_are_inside_pids(tmp_path: Path) -> None:
    """A file lock's owner in CRIU's images of a pid namespace is an inside
    pid: the restore finds the task by it (procsnap's own name it by the
    outside pid)."""
    import shutil
    from procsnap.images import write_image
    from procsnap.images.pb import file_lock_pb2
    from procsnap.resources import file_lock
    d = tmp_path / "set"
    shutil.copytree(FIXTURES / "ns", d)
    write_image(str(d), file_lock.NAME, [file_lock_pb2.file_lock_entry(
        flag=1, type=1, pid=1, fd=0, start=0, len=0)])
    rctx = RestoreContext(str(d), RestoreOptions())
    restorer._collect(rctx, check_pids=False)
    root = rctx.tasks[0]
    assert rctx.all_inside and rctx.outside_pid(1) == root.pid
    assert [e.pid for e in file_lock._entries(rctx)[root.pid]] == [1]
    own = RestoreContext(str(d), RestoreOptions())
    own.inside_pids = {1: root.pid}  # an older image: pids outside the pstree are outside ones
    assert own.outside_pid(1) == 1
