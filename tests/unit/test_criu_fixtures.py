"""Image sets written by CRIU 4.2 (tests/fixtures/criu-4.2, made by
scripts/criu-fixtures.py from tests/targets/criu_tiny.c) read by procsnap,
with no CRIU binary: each image decodes with our schemas and re-encodes
byte for byte (so no field CRIU wrote is unknown to us), ``procsnap show``
decodes every file, the restore's collect stage accepts each set, and
each kind's own reader finds the state the target set up.

A restore from these is not tried here: the images name this kernel's
vDSO and the fixture binary's build-id (tests/integration/
test_criu_interop.py does it live when a CRIU binary is given)."""
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
    assert CASES == ["counter", "ghost", "ns", "tcp", "tree"]


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
    assert rt.pstree.pid == 1, "criu records pids as seen inside the pid namespace"
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
