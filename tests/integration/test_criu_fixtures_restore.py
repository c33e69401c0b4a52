"""Image sets CRIU 4.2 wrote, restored by procsnap, with no CRIU (issue 15).

tests/fixtures/criu-4.2 holds what CRIU 4.2 dumped of tests/targets/
criu_tiny.c (scripts/criu-fixtures.py; tests/unit/test_criu_fixtures.py
decodes them).  Each target ran as pid 1 of a pid namespace of its own, so
the pids inside are free wherever the set is restored (procsnap gives the
root a free pid outside); the tcp one also in a network namespace of its
own, so its addresses are.  The binary is built again here from our source
to the same path and build-id (helpers.criu_tiny_fixed), its output file
and cwd made where the images name them.

Each set is restored by procsnap; the restored tree must run on (its ticks
go on, in the output file the images name), have its pids inside as CRIU
saved them, and pass its own check on SIGTERM: the queued pipe and socket
data, the ghost file's contents and offset, the TCP connection's queued
bytes both ways and a new exchange, the hostname and SIGIO owner in its
namespaces.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import (
    CRIU_TINY_DIR,
    Target,
    TargetFactory,
    criu_tiny_fixed,
    describe,
    finish,
    run_procsnap,
    wait_for,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "criu-4.2"

# case: (criu_tiny's arguments, restore options, the pids inside)
CASES: dict[str, tuple[list[str], list[str], list[int]]] = {
    "counter": (["counter"], [], [1]),
    "tree": (["tree"], [], [1, 2, 3]),
    "ghost": (["ghost"], [], [1]),
    "tcp": (["tcp", "40713"], ["--tcp-established"], [1]),
    # CRIU's memfd named /dev/zero for shared anonymous memory, mapped
    # shared and privately (zdtm shmemfd-priv)
    "shmem": (["shmem"], [], [1]),
    "ns": (["ns"], ["--root", "/"], [1]),
    # the tree's set with files.img split into CRIU's older per-kind images
    # (reg-files.img, pipes.img, unixsk.img: tests/unit/test_criu_old_file_images.py)
    "tree-old-files": (["tree"], [], [1, 2, 3]),
}


def _ticks(t: Target) -> int:
    return sum(1 for ln in t.lines() if ln.startswith("tick "))


def _nspids(root: int) -> list[int]:
    """Every task's pid inside its pid namespace, root first, by tree walk."""
    out, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        with open(f"/proc/{pid}/status") as f:
            out.append(int(next(ln.split()[-1] for ln in f if ln.startswith("NSpid:"))))
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            todo += [int(x) for x in f.read().split()]
    return sorted(out)


@pytest.mark.parametrize("case", sorted(CASES))
def test_criu_fixture_restores(targets: TargetFactory, tmp_path: Path, case: str) -> None:
    args, opts, inside = CASES[case]
    fixture = case.removesuffix("-old-files")
    binary = criu_tiny_fixed()
    assert (FIXTURES / fixture / "CMDLINE").read_text().startswith(f"{binary} "), \
        f"{case}: the fixture was made from another binary path; remake it"
    out = CRIU_TINY_DIR / f"{fixture}.out"
    out.write_bytes(b"")  # the images name it (opened O_APPEND): it must exist
    if case == "ns":
        (CRIU_TINY_DIR / "mnt").mkdir(exist_ok=True)  # the tmpfs' mountpoint
    images = tmp_path / "images"
    if case.endswith("-old-files"):
        from unit.test_criu_old_file_images import to_old_layout
        assert "pipes" in to_old_layout(FIXTURES / fixture, images)
    else:
        shutil.copytree(FIXTURES / case, images)
    pidfile = tmp_path / "restored.pid"
    res = run_procsnap("restore", "-D", images, "-d", "--pidfile", pidfile, *opts)
    assert res.returncode == 0, describe(res)
    pid = int(pidfile.read_text())
    t = Target(name=f"criu_tiny {case}", pid=pid, argv=[str(binary), *args],
               workdir=CRIU_TINY_DIR, out=out, err=out, cmdline=[str(binary), *args])
    targets.adopt(pid, like=t)  # (forgets any old status of this pid)
    targets.targets.append(t)
    wait_for(lambda: _ticks(t) >= 3, 10, f"restored {case} (pid {pid}) to tick on")
    assert _nspids(pid) == inside
    if case == "ns":
        host = subprocess.run(["nsenter", "-t", str(pid), "-u", "hostname"],
                              capture_output=True, text=True).stdout.strip()
        assert host == "tiny-ns"
    finish(t)
