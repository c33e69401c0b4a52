"""One target in a namespace of every kind procsnap saves, at once:
``unshare --fork --pid --mount-proc --mount --uts --ipc --net --cgroup
--time`` (with clock offsets), with state in each (issue 9's combined
test).  Restored into new namespaces of the same shape (under --root /):
checked from outside -- pids at every level, the hostname, the tmpfs
file, the System V objects, lo's address, the time offsets, the mount
tree as seen inside -- and by the target itself, which counts on.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from helpers import (
    Target,
    TargetFactory,
    check_continuity,
    check_ok,
    read_numbers,
    run_procsnap,
    start_under,
    tree_pids,
    wait_for,
    wait_gone,
    wait_numbers,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

KINDS = ("pid", "mnt", "uts", "ipc", "net", "cgroup", "time")


def _start(targets: TargetFactory, *args: str) -> Target:
    return start_under(targets, ["unshare", "--fork", "--pid", "--mount-proc", "--mount", "--uts",
                                 "--ipc", "--net", "--cgroup", "--time", "--monotonic", "1000",
                                 "--boottime", "2000"], "nsall.py", *args)


def _inside(pid: int, flag: str, *argv: str) -> str:
    return subprocess.run(["nsenter", "-t", str(pid), flag, *argv], capture_output=True,
                          text=True, check=True, timeout=30).stdout


def _view(pid: int, mnt: Path) -> dict[str, object]:
    """What must be equal before and after, as seen from outside."""
    nspid = {}
    for p in tree_pids(pid):
        with open(f"/proc/{p}/status") as f:
            nspid[p] = next(ln.split()[1:] for ln in f if ln.startswith("NSpid:"))
    with open(f"/proc/{pid}/mountinfo") as f:
        # mount ids and device numbers are the kernel's; what is mounted
        # where, how, from which root (field 4: a cgroup mount's root is
        # shown relative to the reader's cgroup namespace, ours both times),
        # and in which order is the tree's
        mounts = [" ".join(ln.split()[3:5] + ln.split(" - ")[1].split()[:1]) for ln in f]
    ipcs = sorted(ln.split()[1] for ln in _inside(pid, "-i", "ipcs").splitlines()
                  if ln.startswith("0x"))
    with open(f"/proc/{pid}/timens_offsets") as f:
        offsets = {ln.split()[0]: int(ln.split()[1]) * 10**9 + int(ln.split()[2]) for ln in f}
    return {"nspid": nspid, "hostname": _inside(pid, "-u", "hostname").strip(),
            "tmpfs": (Path(f"/proc/{pid}/root") / str(mnt).lstrip("/") / "data").read_text(),
            "ipc ids": ipcs, "lo": _inside(pid, "-n", "ip", "-o", "-4", "addr", "show", "lo"),
            "mounts": mounts, "timens_offsets": offsets}


def _offsets_ok(before: dict[str, int], after: dict[str, int]) -> None:
    """As CRIU: the clocks inside go on from where they were at the dump,
    so each offset is smaller by the time the tree was away (under 60 s)."""
    for clock in ("monotonic", "boottime"):
        gap = before[clock] - after[clock]
        assert 0 <= gap < 60 * 10**9, (clock, before, after)


def test_all_namespaces_at_once(targets: TargetFactory, tmp_path: Path, images_dir: Path) -> None:
    numbers = tmp_path / "numbers"
    mnt = tmp_path / "box"
    mnt.mkdir()
    t = _start(targets, str(numbers), str(mnt))
    wait_numbers(numbers, 3)
    before = _view(t.pid, mnt)
    assert len(before["ipc ids"]) == 3 and "10.88.0.1/32" in str(before["lo"]), before  # type: ignore[arg-type]
    assert before["timens_offsets"] == {"monotonic": 1000 * 10**9,  # type: ignore[comparison-overlap]
                                        "boottime": 2000 * 10**9}
    assert [v[-1] for v in before["nspid"].values()] == ["1", "2", "3"]  # type: ignore[attr-defined]
    ours = {k: os.readlink(f"/proc/self/ns/{k}") for k in KINDS}
    assert all(os.readlink(f"/proc/{t.pid}/ns/{k}") != ours[k] for k in KINDS)
    assert not (mnt / "data").exists()   # the tmpfs is inside only
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", images_dir))
    assert wait_gone(t.pid, 10)
    check_ok(run_procsnap("restore", "-D", images_dir, "-d", "--root", "/"))
    targets.adopt(t.pid, like=t)
    after = _view(t.pid, mnt)
    for key in before:
        if key != "timens_offsets":
            assert after[key] == before[key], f"{key}: {before[key]!r} -> {after[key]!r}"
    _offsets_ok(before["timens_offsets"], after["timens_offsets"])  # type: ignore[arg-type]
    assert all(os.readlink(f"/proc/{t.pid}/ns/{k}") != ours[k] for k in KINDS)
    assert not (mnt / "data").exists()
    last = read_numbers(numbers)[-1]
    check_continuity(wait_numbers(numbers, last + 3))
    assert t.verdict() == "PASS", t.output()
