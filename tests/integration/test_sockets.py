"""Sockets across dump/restore: unix (pairs, path and abstract servers,
datagrams), TCP and UDP, live TCP connections (--tcp-established, with
the nftables network lock), and the refusals.

Targets (tests/targets/): ``unix_pair.py`` (two processes, socketpairs
with data queued both ways and a half-closed pair), ``unix_server.py``
(path and abstract listeners with connected clients, queued data, a
connection waiting to be accepted, a dgram socket with 10 queued
messages), ``echo_server.py`` (asyncio echo server with in-tree clients),
``sock_misc.py`` (UDP, listening TCP, a netlink socket, an outside peer).
Every test only uses loopback; every process it starts is killed at
teardown; nftables tables are procsnap's own and are checked gone.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
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
    describe,
    exit_code,
    is_untouched,
    outside_view,
    proc_ppid,
    run_procsnap,
    wait_exit,
    wait_gone,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]


def crit_decode(images: Path, name: str) -> dict:
    crit = shutil.which("crit")
    if crit is None:
        pytest.fail("crit not found: install Debian's criu package (apt-get install -y criu)")
    res = subprocess.run([crit, "decode", "-i", str(images / name)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, f"crit cannot decode {name}:\n{res.stderr}"
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def crit_all(images: Path) -> dict[str, dict]:
    return {p.name: crit_decode(images, p.name) for p in sorted(images.glob("*.img"))
            if not p.name.startswith("pages-")}


def tree_pids(root: int) -> list[int]:
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                todo += [int(x) for x in f.read().split()]
    return sorted(out)


def cycle(targets: TargetFactory, t: Target, images: Path, *dump_args: str,
          restore_args: tuple[str, ...] = (), volatile: tuple[int, ...] = (1,)) -> None:
    """Dump (killing) the tree and restore it; same pids and outside view."""
    pids = tree_pids(t.pid)
    before = {p: outside_view(p, volatile_fds=volatile) for p in pids}
    res = run_procsnap("dump", "-t", t.pid, "-D", images, *dump_args, timeout=120)
    check_ok(res)
    for p in pids:
        assert wait_gone(p, 10), f"pid {p} still alive after dump\n" + describe(res)
    targets.adopt(t.pid, like=t)
    res = run_procsnap("restore", "-D", images, "-d", *restore_args, timeout=120)
    check_ok(res)
    assert t.alive(), f"restored pid {t.pid} is not running\n" + describe(res)
    assert proc_ppid(t.pid) == os.getpid()
    assert tree_pids(t.pid) == pids
    for p in pids:
        ok, why = is_untouched(p)
        assert ok, f"restored pid {p} is stopped or traced: {why}"
        assert_same_view(before[p], outside_view(p, volatile_fds=volatile),
                         f"of pid {p} across dump/restore of {t.name}")


def finish(t: Target) -> None:
    line = t.verdict()
    assert line == "PASS", f"{t.name}: {line}\n--- stdout ---\n{t.output()}"
    status = wait_exit(t.pid, 10)
    if status is not None:
        assert exit_code(status) == 0


# ----------------------------------------------------------------- unix ----

@pytest.mark.parametrize("kind", ["stream", "dgram", "seqpacket"])
def test_socketpair_both_ways(targets: TargetFactory, images_dir: Path, kind: str) -> None:
    t = targets.start("unix_pair.py", kind)
    cycle(targets, t, images_dir)
    decoded = crit_all(images_dir)
    usks = [e["usk"] for e in decoded["files.img"]["entries"] if e["type"] == "UNIXSK"]
    assert len(usks) == 4, usks
    by_ino = {u["ino"]: u for u in usks}
    for u in usks:
        assert by_ino[u["peer"]]["peer"] == u["ino"], f"not a pair: {u}"
    queues = decoded["sk-queues.img"]["entries"]
    # 5 messages each way on pair A, "tail" on pair B
    total = sum(q["length"] for q in queues)
    assert total == 2 * 5 * 8 + 4, queues
    assert any(u.get("shutdown") in ("WRITE", 2) for u in usks), usks
    finish(t)
