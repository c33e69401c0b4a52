"""Process trees, threads and what they share (issue 4), zdtm style.

Each test starts a real tree, records from outside who is whose parent,
which session and group, which threads, which fds share one open file
(kcmp), dumps it, waits until every process is gone, restores it and
compares; then the targets check themselves and print PASS.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import (
    TARGETS_DIR,
    Target,
    TargetFactory,
    assert_one_line_error,
    assert_same_view,
    check_ok,
    compile_target,
    describe,
    finish,
    is_untouched,
    outside_view,
    proc_exists,
    read_numbers,
    read_text,
    run_procsnap,
    tree_pids,
    wait_for,
    wait_gone,
    wait_numbers,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

_libc = ctypes.CDLL(None, use_errno=True)


# --------------------------------------------------------------------------
# the outside view of a tree
# --------------------------------------------------------------------------

def _stat(pid: int) -> tuple[str, int, int, int]:
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    rest = s[s.rfind(")") + 2:].split()
    return rest[0], int(rest[1]), int(rest[2]), int(rest[3])


def tree_view(root: int) -> dict[int, tuple]:
    """pid -> (state class, ppid, pgid, sid, sorted tids, thread names)."""
    view = {}
    for pid in tree_pids(root):
        state, ppid, pgid, sid = _stat(pid)
        try:
            tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
            names = [Path(f"/proc/{pid}/task/{t}/comm").read_text().strip() for t in tids]
        except FileNotFoundError:
            tids, names = [], []
        view[pid] = ("zombie" if state == "Z" else "live", ppid, pgid, sid, tids, names)
    return view


def kcmp_same_file(pid1: int, fd1: int, pid2: int, fd2: int) -> bool:
    return _libc.syscall(312, pid1, pid2, 0, fd1, fd2) == 0  # SYS_kcmp, KCMP_FILE


def dump_tree(root: int, images: Path, *extra: str) -> list[int]:
    pids = tree_pids(root)
    res = run_procsnap("dump", "-t", root, "-D", images, *extra, timeout=120)
    check_ok(res)
    for pid in pids:
        assert wait_gone(pid, 15), f"pid {pid} still exists after the dump\n" + describe(res)
    return pids


def restore_tree(targets: TargetFactory, root: Target, images: Path, pids: list[int]) -> None:
    for pid in pids:
        targets.adopt(pid, like=root if pid == root.pid else None)
    res = run_procsnap("restore", "-D", images, "-d", timeout=120)
    check_ok(res)
    ok, why = is_untouched(root.pid)
    assert ok, f"restored root {root.pid} is stopped or traced: {why}"


def adopt_tree(targets: TargetFactory, root: Target) -> None:
    """Track every process of the tree so teardown kills them all."""
    for pid in tree_pids(root.pid):
        if pid != root.pid:
            targets.adopt(pid)


def cycle_tree(targets: TargetFactory, root: Target, images: Path) -> dict[int, tuple]:
    adopt_tree(targets, root)
    before = tree_view(root.pid)
    pids = dump_tree(root.pid, images)
    restore_tree(targets, root, images, pids)
    after = tree_view(root.pid)
    assert after == before, _diff_trees(before, after)
    return after


def _diff_trees(before: dict, after: dict) -> str:
    lines = ["the tree changed across dump/restore:"]
    for pid in sorted(set(before) | set(after)):
        if before.get(pid) != after.get(pid):
            lines.append(f"  {pid}: before {before.get(pid)} after {after.get(pid)}")
    return "\n".join(lines)


def start_argv(targets: TargetFactory, argv: list[str], name: str) -> Target:
    """A target that is not a single program of tests/targets (a shell line)."""
    out = targets.workdir / f"{name}.out"
    err = targets.workdir / f"{name}.err"
    with open(out, "wb") as fo, open(err, "wb") as fe:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fo, stderr=fe,
                             close_fds=True, cwd=targets.workdir, start_new_session=True)
    t = Target(name=name, pid=p.pid, argv=argv, workdir=targets.workdir, out=out, err=err,
               cmdline=list(argv))
    targets.targets.append(t)
    return t


# --------------------------------------------------------------------------
# the tests
# --------------------------------------------------------------------------

def test_shell_pipeline_with_bytes_in_flight(targets: TargetFactory, tmp_path: Path) -> None:
    """sh -c 'produce | filter | consume': no line lost or repeated, with
    every pipe full at dump time."""
    log = targets.workdir / "consumer.log"
    stage = f"{sys.executable} {TARGETS_DIR / 'pipeline.py'}"
    t = start_argv(targets, ["sh", "-c", f"{stage} produce | {stage} filter | "
                                         f"{stage} consume {log}"], "pipeline")
    wait_for(lambda: "ok 2000" in read_text(log), 30, "the consumer to reach 2000")
    images = tmp_path / "images"
    cycle_tree(targets, t, images)
    from procsnap import images as img
    in_flight = sum(e.msg.bytes for e in img.read_entries(str(images), "pipes-data"))
    assert in_flight > 4096, f"only {in_flight} bytes were in the pipes at dump time"
    last = max(int(ln.split()[1]) for ln in read_text(log).split("\n") if ln.startswith("ok "))
    wait_for(lambda: f"ok {last + 3000}" in read_text(log), 30,
             f"the consumer to go on past {last + 3000}")
    assert "FAIL" not in read_text(log), read_text(log)


def test_server_with_workers(targets: TargetFactory, tmp_path: Path) -> None:
    """Workers share an inherited file offset and an anonymous shared page;
    after restore the parent reaps a worker that exits (SIGCHLD, waitpid)."""
    records = targets.workdir / "records"
    t = targets.start("tree_server", str(records))
    time.sleep(0.3)
    workers = [p for p in tree_pids(t.pid) if p != t.pid]
    assert len(workers) == 4
    assert all(kcmp_same_file(t.pid, 3, w, 3) for w in workers)
    cycle_tree(targets, t, tmp_path / "images")
    # still one open file description for the five of them
    assert all(kcmp_same_file(t.pid, 3, w, 3) for w in workers), "fd 3 is no longer shared"
    os.kill(workers[3], signal.SIGUSR1)
    t.wait_line(rf"^reaped {workers[3]} 13$", timeout=10)
    time.sleep(0.3)
    finish(t)


def test_sessions_groups_orphan_zombie(targets: TargetFactory, tmp_path: Path) -> None:
    t = targets.start("sessions")
    a, b, d, z = (int(x) for x in t.wait_line(r"^tree ").split()[1:])
    view = cycle_tree(targets, t, tmp_path / "images")
    assert view[z][0] == "zombie"
    assert view[a][2] == a and view[b][2] == a, "process groups"
    assert view[d][1] == t.pid, "the orphan's parent"
    t.signal(signal.SIGUSR1)
    t.wait_line(rf"^zombie {z} status 7$", timeout=10)
    finish(t)


def test_zombies_of_every_death(targets: TargetFactory, tmp_path: Path) -> None:
    """Zombies that exited, or were killed by SIGKILL, SIGSEGV, SIGTERM, are
    zombies again after restore and are reaped with the same status."""
    t = targets.start("zombies")
    kids = [int(x) for x in t.wait_line(r"^zombies ").split()[1:]]
    view = cycle_tree(targets, t, tmp_path / "images")
    assert all(view[k][0] == "zombie" for k in kids)
    t.signal(signal.SIGUSR1)
    want = ["exit 3", f"signal {signal.SIGKILL}", f"signal {signal.SIGSEGV}",
            f"signal {signal.SIGTERM}"]
    for k, w in zip(kids, want):
        t.wait_line(rf"^reaped {k} {w}$", timeout=10)
    finish(t)


def test_pthreads_under_one_mutex(targets: TargetFactory, tmp_path: Path) -> None:
    t = targets.start("threads")
    t.wait_line(r"^total ", count=3)
    cycle_tree(targets, t, tmp_path / "images")
    n = len([ln for ln in t.lines() if ln.startswith("total ")])
    t.wait_line(r"^total ", count=n + 5)
    totals = [int(ln.split()[1]) for ln in t.lines() if ln.startswith("total ")]
    assert totals[-1] > totals[n - 1], "the threads made no progress after restore"
    finish(t)


def test_python_threads_and_queue(targets: TargetFactory, tmp_path: Path) -> None:
    t = targets.start("pythreads.py")
    t.wait_line(r"^round \d+ ok", count=3)
    cycle_tree(targets, t, tmp_path / "images")
    n = len([ln for ln in t.lines() if ln.startswith("round ")])
    t.wait_line(r"^round \d+ ok", count=n + 5)
    finish(t)


def test_multiprocessing_pool(targets: TargetFactory, tmp_path: Path) -> None:
    t = targets.start("mp_pool.py")
    t.wait_line(r"^round \d+ ok", count=3)
    cycle_tree(targets, t, tmp_path / "images")
    n = len([ln for ln in t.lines() if ln.startswith("round ")])
    t.wait_line(r"^round \d+ ok", count=n + 5, timeout=30)
    finish(t)


def test_memfd_shared_and_sealed(targets: TargetFactory, tmp_path: Path) -> None:
    t = targets.start("memfd_shared")
    t.wait_line(r"^count ", count=2)
    cycle_tree(targets, t, tmp_path / "images")
    n = len([ln for ln in t.lines() if ln.startswith("count ")])
    t.wait_line(r"^count ", count=n + 3)
    finish(t)


def test_dump_restore_twice(targets: TargetFactory, tmp_path: Path) -> None:
    records = targets.workdir / "records"
    t = targets.start("tree_server", str(records))
    time.sleep(0.2)
    cycle_tree(targets, t, tmp_path / "images1")
    time.sleep(0.3)
    cycle_tree(targets, t, tmp_path / "images2")
    time.sleep(0.3)
    finish(t)


def test_tree_of_200(targets: TargetFactory, tmp_path: Path) -> None:
    t = targets.start("bigtree", "200", wait_ready=False)
    t.wait_line(r"^ready 200$", timeout=30)
    assert len(tree_pids(t.pid)) == 200
    view = cycle_tree(targets, t, tmp_path / "images")
    assert len(view) == 200


def test_tree_with_unsupported_member_runs_on(targets: TargetFactory, tmp_path: Path) -> None:
    """One process of the tree holds a perf event fd: the dump names it, and
    every process of the tree runs on untouched."""
    perf = compile_target("perf_fd")
    nums = targets.workdir / "perf.numbers"
    t = start_argv(targets, ["sh", "-c", f"{perf} {nums} & sleep 1000 & wait"], "sh-tree")
    wait_for(lambda: len(tree_pids(t.pid)) == 3 and nums.exists(), 10, "the tree to start")
    adopt_tree(targets, t)
    pids = tree_pids(t.pid)
    perf_pid = next(p for p in pids if Path(f"/proc/{p}/exe").resolve() == perf.resolve())
    # perf_fd's fd 3 is its counter file: its position moves by itself
    before = {p: outside_view(p, (3,)) for p in pids}
    res = run_procsnap("dump", "-t", t.pid, "-D", tmp_path / "images")
    line = assert_one_line_error(res, f"pid {perf_pid}")
    assert "fd 7" in line, line
    for p in pids:
        ok, why = is_untouched(p)
        assert ok, f"pid {p} after the failed dump: {why}"
        assert_same_view(before[p], outside_view(p, (3,)), f"pid {p} after the failed dump")
    size = nums.stat().st_size
    wait_for(lambda: nums.stat().st_size > size, 5, "the perf_fd target to count on")
    leftover = [f for f in os.listdir(tmp_path / "images")] if (tmp_path / "images").exists() else []
    assert not [f for f in leftover if f.endswith(".img")], f"images left behind: {leftover}"
    assert proc_exists(t.pid)


def test_named_fifo_with_bytes_in_flight(targets: TargetFactory, tmp_path: Path) -> None:
    d = targets.workdir / "fifo-dir"
    d.mkdir()
    t = targets.start("fifo_pair", str(d))
    t.wait_line(r"^read ", count=3)
    images = tmp_path / "images"
    cycle_tree(targets, t, images)
    from procsnap import images as img
    in_flight = sum(e.msg.bytes for e in img.read_entries(str(images), "fifo-data"))
    assert in_flight > 1000, f"only {in_flight} bytes were in the FIFO at dump time"
    n = len([ln for ln in t.lines() if ln.startswith("read ")])
    t.wait_line(r"^read ", count=n + 5)
    finish(t)


@pytest.mark.parametrize("round_", range(3))
def test_forking_during_the_freeze(targets: TargetFactory, tmp_path: Path, round_: int) -> None:
    """Children are born and die all the time: whatever the freeze meets
    (running, exiting, zombie) comes back, and every one is reaped with its
    status after restore."""
    t = targets.start("forker")
    t.wait_line(r"^forked ", count=2)
    adopt_tree(targets, t)
    pids = dump_tree(t.pid, tmp_path / "images")
    restore_tree(targets, t, tmp_path / "images", pids)
    adopt_tree(targets, t)
    n = len([ln for ln in t.lines() if ln.startswith("forked ")])
    t.wait_line(r"^forked ", count=n + 3)
    finish(t)


def test_pidfd_to_a_child(targets: TargetFactory, tmp_path: Path) -> None:
    """A pidfd names a process of the tree: after restore it still names it
    (pidfd_send_signal kills it, poll() sees the exit)."""
    t = targets.start("pidfd_child")
    cycle_tree(targets, t, tmp_path / "images")
    assert os.readlink(f"/proc/{t.pid}/fd/5") == "anon_inode:[pidfd]"
    t.signal(signal.SIGUSR1)
    t.wait_line(r"^child gone 9$", timeout=10)
    finish(t)


def test_pidfd_outside_the_tree_refused(targets: TargetFactory, tmp_path: Path) -> None:
    outsider = targets.start("bigtree", "1", wait_ready=False)
    t = start_argv(targets, [sys.executable, "-c",
                             f"import os, time\nfd = os.pidfd_open({outsider.pid})\n"
                             "print('ready', flush=True)\ntime.sleep(1000)"], "pidfd-holder")
    t.wait_ready()
    res = run_procsnap("dump", "-t", t.pid, "-D", tmp_path / "images")
    line = assert_one_line_error(res, f"pid {t.pid}")
    assert f"pid {outsider.pid}" in line and "outside" in line, line
    ok, why = is_untouched(t.pid)
    assert ok, why


def test_same_file_opened_many_times(targets: TargetFactory, tmp_path: Path) -> None:
    """One file opened 40 times, some fds dup'ed: after restore exactly the
    same fds share an open file description (kcmp), each with its offset."""
    data = targets.workdir / "data"
    data.write_bytes(bytes(range(256)) * 16)
    code = (f"import os, time\nfds = [os.open({str(data)!r}, os.O_RDONLY) for _ in range(40)]\n"
            "for i, fd in enumerate(fds):\n    os.lseek(fd, i * 7, 0)\n"
            "os.dup2(fds[3], 100)\nos.dup2(fds[3], 101)\nos.dup2(fds[17], 102)\n"
            "print('ready', flush=True)\ntime.sleep(1000)\n")
    t = start_argv(targets, [sys.executable, "-c", code], "many-opens")
    t.wait_ready()
    fds = sorted(int(x) for x in os.listdir(f"/proc/{t.pid}/fd")
                 if os.readlink(f"/proc/{t.pid}/fd/{x}") == str(data))

    def classes() -> set[frozenset[int]]:
        out: list[set[int]] = []
        for fd in fds:
            for c in out:
                if kcmp_same_file(t.pid, fd, t.pid, next(iter(c))):
                    c.add(fd)
                    break
            else:
                out.append({fd})
        return {frozenset(c) for c in out}

    before = classes()
    assert len(before) == 40 and len(fds) == 43
    pos = {fd: Path(f"/proc/{t.pid}/fdinfo/{fd}").read_text().split()[1] for fd in fds}
    cycle_tree(targets, t, tmp_path / "images")
    assert classes() == before
    assert {fd: Path(f"/proc/{t.pid}/fdinfo/{fd}").read_text().split()[1] for fd in fds} == pos


def test_group_of_a_reaped_leader(targets: TargetFactory, tmp_path: Path) -> None:
    """zdtm zombie01 with a live member: the group's leader exited and was
    reaped; a live member and a zombie stay in its group.  The restore
    makes the group with a helper of the leader's pid, which is gone
    again (and left no SIGCHLD) when the tree runs."""
    t = targets.start("reaped_leader")
    leader, m, z = (int(x) for x in t.wait_line(r"^tree ").split()[1:])
    assert not proc_exists(leader)
    view = cycle_tree(targets, t, tmp_path / "images")
    assert view[m][2] == leader and view[z][2] == leader, "process groups"
    assert view[z][0] == "zombie"
    assert not proc_exists(leader), "the group's helper is still there"
    assert t.verdict() == "PASS", t.output()


@pytest.mark.parametrize("mode", ["alive", "outside"])
def test_group_with_members_outside_refused(targets: TargetFactory, tmp_path: Path,
                                            mode: str) -> None:
    """A group led from outside the tree (alive), or whose leader is gone
    but that holds a process outside the tree, is refused by name."""
    t = targets.start("reaped_leader", mode)
    outsider = int(t.wait_line(r"^outside ").split()[1])
    leader, m, _ = (int(x) for x in t.wait_line(r"^tree ").split()[1:])
    res = run_procsnap("dump", "-t", t.pid, "-D", tmp_path / "images")
    line = assert_one_line_error(res, f"pid {m}")
    assert f"process group {leader}" in line, line
    assert ("led from outside" if mode == "alive" else f"holds pid {outsider}") in line, line
    ok, why = is_untouched(t.pid)
    assert ok, why
    assert t.verdict() == "PASS", t.output()
    assert wait_gone(outsider, 10)


def test_fd_table_shared_with_a_child(targets: TargetFactory, tmp_path: Path) -> None:
    """clone(CLONE_FILES): the parent writes through the fd its child
    opened after the clone; one table after restore too (kcmp)."""
    numbers = targets.workdir / "numbers"
    t = targets.start("fdt_shared", str(numbers))
    wait_numbers(numbers, 3)
    (child,) = [p for p in tree_pids(t.pid) if p != t.pid]
    assert _libc.syscall(312, t.pid, child, 2, 0, 0) == 0  # KCMP_FILES
    cycle_tree(targets, t, tmp_path / "images")
    assert _libc.syscall(312, t.pid, child, 2, 0, 0) == 0, "the fd table is no longer shared"
    last = read_numbers(numbers)[-1]
    wait_numbers(numbers, last + 3)
    assert t.verdict() == "PASS", t.output()


def test_fd_tables_and_fs_shared(targets: TargetFactory, tmp_path: Path) -> None:
    """A shares R's fd table and fs (cwd, root, umask), A's child G R's
    table only, C has copies: after restore, what A and G open and where A
    goes R sees, and C does not."""
    d = tmp_path / "dir"
    d.mkdir()
    t = targets.start("shared_kobjs", "share", str(d))
    a, g, c = (int(x) for x in t.wait_line(r"^tree ").split()[1:])
    same = {(p, k): _libc.syscall(312, t.pid, p, k, 0, 0) == 0 for p in (a, g, c) for k in (2, 3)}
    assert same == {(a, 2): True, (a, 3): True, (g, 2): True, (g, 3): False,
                    (c, 2): False, (c, 3): False}
    cycle_tree(targets, t, tmp_path / "images")
    after = {(p, k): _libc.syscall(312, t.pid, p, k, 0, 0) == 0 for p in (a, g, c) for k in (2, 3)}
    assert after == same
    assert t.verdict() == "PASS", t.output()


@pytest.mark.parametrize("mode,what", [("sibling", "fd table"), ("vm", "memory")])
def test_sharing_not_with_the_parent_refused(targets: TargetFactory, tmp_path: Path,
                                             mode: str, what: str) -> None:
    """Two children sharing a table their parent left (unshare), or a
    child sharing its parent's memory (CLONE_VM): refused by name."""
    t = targets.start("shared_kobjs", mode, str(tmp_path))
    a, g, _ = (int(x) for x in t.wait_line(r"^tree ").split()[1:])
    res = run_procsnap("dump", "-t", t.pid, "-D", tmp_path / "images")
    line = assert_one_line_error(res, f"pid {g if mode == 'sibling' else a}")
    assert f"shares its {what}" in line, line
    ok, why = is_untouched(t.pid)
    assert ok, why
    assert t.verdict() == "PASS", t.output()


def test_cwd_in_the_proc_dir_of_a_dead_process(targets: TargetFactory, tmp_path: Path) -> None:
    """zdtm unhashed_proc: a cwd in /proc/N of a reaped child comes back
    unhashed (a helper with pid N exists for the chdir, then is reaped)."""
    t = targets.start("proc_cwd")
    dead = int(t.wait_line(r"^dead ").split()[1])
    cycle_tree(targets, t, tmp_path / "images")
    assert os.readlink(f"/proc/{t.pid}/cwd") == f"/proc/{dead} (deleted)"
    assert not proc_exists(dead)
    assert t.verdict() == "PASS", t.output()
