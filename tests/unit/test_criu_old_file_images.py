"""CRIU's older layout of open files (one image per kind, before files.img)
read by procsnap: restore's reading stage and ``procsnap show`` (issue 15).

The image sets are made by hand from the CRIU 4.2 fixtures: files.img is
split into the per-kind images CRIU wrote before it (reg-files.img,
pipes.img, unixsk.img, ... and eventpoll-tfd.img / inotify-wd.img for the
lists), which CRIU 4.x still reads when there is no files.img.
tests/integration/test_criu_fixtures_restore.py restores such a set.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from procsnap import restorer
from procsnap.errors import ImageError
from procsnap.images import legacy, read_image, write_image
from procsnap.images.pb import eventpoll_pb2, fdinfo_pb2, tun_pb2
from procsnap.images.show import decode_dir
from procsnap.tasks import RestoreContext, RestoreOptions

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "criu-4.2"
FIELDS = {field: kind for kind, field, _ in legacy.KINDS}


def to_old_layout(src: Path, dst: Path) -> list[str]:
    """Copy image set ``src`` to ``dst`` with files.img split into CRIU's
    per-kind images; returns the images written."""
    shutil.copytree(src, dst)
    per_kind: dict[str, list] = {}
    lists: dict[str, list] = {}
    for fe in read_image(str(src), "files"):
        (fd, msg), = [(f, v) for f, v in fe.ListFields() if f.name not in ("type", "id")]
        for kind, fld, name in legacy.LISTS:
            if fld == fd.name and getattr(msg, name):
                lists.setdefault(kind, []).extend(getattr(msg, name))
                msg.ClearField(name)
        per_kind.setdefault(FIELDS[fd.name], []).append(msg)
    os.unlink(dst / "files.img")
    for kind, entries in {**per_kind, **lists}.items():
        write_image(str(dst), kind, entries)
    return sorted({**per_kind, **lists})


def _same(a: list, b: list) -> None:
    key = lambda m: m.id  # noqa: E731
    assert [m.SerializeToString(deterministic=True) for m in sorted(a, key=key)] == \
        [m.SerializeToString(deterministic=True) for m in sorted(b, key=key)]


@pytest.mark.parametrize("case", ["tree", "ghost", "tcp", "ns"])
def test_old_layout_reads_as_files_img(tmp_path: Path, case: str) -> None:
    old = tmp_path / "old"
    written = to_old_layout(FIXTURES / case, old)
    assert "reg-files" in written and not (old / "files.img").exists()
    assert legacy.is_old_layout(str(old))
    _same(legacy.file_entries(str(old)), read_image(str(FIXTURES / case), "files"))
    # the restore's reading stage takes the set whole
    rctx = RestoreContext(str(old), RestoreOptions())
    restorer._collect(rctx, check_pids=False)
    assert rctx.tasks and rctx.files
    # and procsnap show decodes every file, the per-kind ones included
    shown = decode_dir(str(old))
    assert {f"{k}.img" if k != "tty-files" else "tty.img" for k in written} <= set(shown)
    res = subprocess.run([sys.executable, "-m", "procsnap", "show", str(old)],
                         capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(FIXTURES.parent.parent.parent)))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["pipes.img" if case == "tree" else "reg-files.img"]["entries"]


def test_tree_kinds_split() -> None:
    kinds = {fdinfo_pb2.fd_types.Name(f.type) for f in read_image(str(FIXTURES / "tree"), "files")}
    assert {"REG", "PIPE", "UNIXSK"} <= kinds


def _epoll_set(tmp_path: Path, tfd_ids: list[int], twice: bool = False) -> Path:
    d = tmp_path / "ep"
    to_old_layout(FIXTURES / "counter", d)
    ep = eventpoll_pb2.eventpoll_file_entry(id=900, flags=2)
    ep.fown.uid = ep.fown.euid = ep.fown.signum = ep.fown.pid_type = ep.fown.pid = 0
    write_image(str(d), "eventpoll", [ep])
    write_image(str(d), "eventpoll-tfd", [
        eventpoll_pb2.eventpoll_tfd_entry(id=i, tfd=7 + n, events=1, data=n)
        for n, i in enumerate(tfd_ids)])
    if twice:  # a reg-files id used again
        reg = read_image(str(d), "reg-files")[0]
        write_image(str(d), "eventfd", [fdinfo_pb2.file_entry().efd.__class__(
            id=reg.id, flags=0, counter=0, fown=ep.fown)])
    return d


def test_eventpoll_targets_from_their_own_image(tmp_path: Path) -> None:
    d = _epoll_set(tmp_path, [900, 900])
    (ep,) = [f for f in legacy.file_entries(str(d)) if f.type == fdinfo_pb2.EVENTPOLL]
    assert [(t.tfd, t.data) for t in ep.epfd.tfd] == [(7, 0), (8, 1)]


def test_list_entry_of_no_file_is_named(tmp_path: Path) -> None:
    d = _epoll_set(tmp_path, [901])
    with pytest.raises(ImageError, match="eventpoll-tfd.img: an entry for file id 901, which no "
                       "eventpoll.img entry describes"):
        legacy.file_entries(str(d))


def test_file_id_twice_is_named(tmp_path: Path) -> None:
    d = _epoll_set(tmp_path, [900], twice=True)
    with pytest.raises(ImageError, match=r"eventfd.img: file id \d+ is described twice "
                       r"\(also as REG\)"):
        legacy.file_entries(str(d))


def test_tun_files_are_refused_by_name(tmp_path: Path) -> None:
    d = tmp_path / "tun"
    to_old_layout(FIXTURES / "counter", d)
    write_image(str(d), "tunfile", [tun_pb2.tunfile_entry(id=950, netdev="tun0")])
    with pytest.raises(ImageError, match="tunfile.img: tun device files: procsnap does not "
                       "restore them"):
        legacy.file_entries(str(d))


def test_files_img_wins(tmp_path: Path) -> None:
    """With files.img there, the per-kind images are not looked at (as in
    CRIU: files_collected())."""
    d = tmp_path / "both"
    shutil.copytree(FIXTURES / "tree", d)
    write_image(str(d), "tunfile", [tun_pb2.tunfile_entry(id=950, netdev="tun0")])
    assert not legacy.is_old_layout(str(d))
    _same(legacy.file_entries(str(d)), read_image(str(FIXTURES / "tree"), "files"))
