"""System V IPC and POSIX message queues (issue 9).

The ipc_objs target either lives in an ipc namespace of its own (every
object of it is saved and made again under the same id in a new one) or
in the host's (only its attached segment is the tree's: it comes back
under its old id, or the restore fails naming it).  Checked from outside
(ipcs and the ipc sysctls as seen inside the namespace) and from inside
(the target checks contents, values, messages and both attachments).
"""
from __future__ import annotations

import ctypes
import os
import random
import subprocess
from pathlib import Path

import pytest

from helpers import TargetFactory, assert_one_line_error, run_procsnap
from integration.test_tree import dump_tree, restore_tree

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

_SYSCTLS = ["kernel/msgmnb", "kernel/msgmax", "kernel/shm_next_id", "kernel/sem_next_id",
            "kernel/msg_next_id", "kernel/sem", "kernel/shmmni", "fs/mqueue/msg_max"]


def _ns_view(pid: int) -> str:
    """ipcs and the ipc sysctls, from inside the target's ipc namespace."""
    out = subprocess.run(["nsenter", "-t", str(pid), "-i", "ipcs"], capture_output=True,
                         text=True, check=True).stdout
    for name in _SYSCTLS:
        out += name + " = " + subprocess.run(
            ["nsenter", "-t", str(pid), "-i", "cat", f"/proc/sys/{name}"],
            capture_output=True, text=True, check=True).stdout
    return out


def _ids(t) -> list[int]:
    return [int(x) for x in t.wait_line(r"^ids ").split()[1:]]


def test_ipc_namespace_restored_whole(targets: TargetFactory, tmp_path: Path) -> None:
    """shm (two attachments, an unattached private segment, a hole), a
    semaphore set, a queue of 5 messages, a POSIX queue and the sysctls
    come back with the same ids in a new ipc namespace."""
    t = targets.start("ipc_objs", "ns")
    ns_before = os.stat(f"/proc/{t.pid}/ns/ipc").st_ino
    before = _ns_view(t.pid)
    assert "0x5eed0001 4242" in before
    images = tmp_path / "images"
    pids = dump_tree(t.pid, images)
    assert sorted(p.name for p in images.glob("ipcns-*")) == [
        f"ipcns-{k}-{ns_before}.img" for k in ("mq", "msg", "sem", "shm", "var")]
    restore_tree(targets, t, images, pids)
    assert os.stat(f"/proc/{t.pid}/ns/ipc").st_ino != os.stat("/proc/self/ns/ipc").st_ino
    assert _ns_view(t.pid) == before
    assert t.verdict() == "PASS"


def _shm_stat(shmid: int) -> tuple[int, int, int] | None:
    """(key, size, nattch) of a host segment, None if there is none."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(112)
    if libc.shmctl(shmid, 2, buf) < 0:
        return None
    key = int.from_bytes(buf.raw[0:4], "little")
    size = int.from_bytes(buf.raw[48:56], "little")
    nattch = int.from_bytes(buf.raw[88:96], "little")
    return key, size, nattch


def _rmid(shmid: int) -> None:
    ctypes.CDLL(None, use_errno=True).shmctl(shmid, 0, None)


@pytest.fixture
def host_key():
    key = random.randrange(0x10000000, 0x7fffffff)
    made: list[int] = []
    yield key, made
    for shmid in made:
        _rmid(shmid)


@pytest.mark.parametrize("removed", [False, True], ids=["left-behind", "removed"])
def test_host_segment_same_id(targets: TargetFactory, tmp_path: Path, host_key, removed: bool) -> None:
    """In the host's namespace the attached segment comes back under its
    old id: taken over when the dump left it behind, made again through
    kernel.shm_next_id when it was removed."""
    key, made = host_key
    t = targets.start("ipc_objs", "host", hex(key))
    shmid = _ids(t)[0]
    made.append(shmid)
    images = tmp_path / "images"
    pids = dump_tree(t.pid, images)
    assert _shm_stat(shmid) == (key, 3 * 4096 + 100, 0)
    if removed:
        _rmid(shmid)
        assert _shm_stat(shmid) is None
    restore_tree(targets, t, images, pids)
    assert _shm_stat(shmid) == (key, 3 * 4096 + 100, 1)
    assert t.verdict() == "PASS"


def test_host_segment_id_taken(targets: TargetFactory, tmp_path: Path, host_key) -> None:
    """The old id held by another segment: the restore fails naming it."""
    key, made = host_key
    t = targets.start("ipc_objs", "host", hex(key))
    shmid = _ids(t)[0]
    made.append(shmid)
    images = tmp_path / "images"
    dump_tree(t.pid, images)
    _rmid(shmid)
    with open("/proc/sys/kernel/shm_next_id", "w") as f:
        f.write(str(shmid))
    libc = ctypes.CDLL(None, use_errno=True)
    other = libc.shmget(key + 1, 4096, 0o1600)
    assert other == shmid
    res = run_procsnap("restore", "-D", images, "-d", timeout=60)
    assert res.returncode != 0
    assert_one_line_error(res, f"re:System V shm segment {shmid} \\(key {key:#x}, .*the id is taken")
    assert _shm_stat(shmid) == (key + 1, 4096, 0)  # the other one is untouched
