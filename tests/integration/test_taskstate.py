"""Task state that must come back exactly or be refused at dump (issue 17).

Restore tests: a target sets the state up and checks it from inside after
the restore (and the test checks what is visible from outside).  Refusal
tests: the dump fails with one line naming the pid and the state, and the
target runs on untouched and counting.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from helpers import (
    Target,
    TargetFactory,
    assert_one_line_error,
    check_continuity,
    check_ok,
    describe,
    finish,
    is_untouched,
    mount_named_cgroup,
    proc_cmdline,
    read_numbers,
    remove_named_cgroup,
    run_procsnap,
    wait_gone,
    wait_numbers,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]

SCHED_RR = 2
SCHED_RESET_ON_FORK = 0x40000000


def _cycle(targets: TargetFactory, t: Target, images: Path) -> None:
    images.mkdir(parents=True, exist_ok=True)
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", images))
    assert wait_gone(t.pid, 10), f"dump left pid {t.pid} alive"
    targets.adopt(t.pid, like=t)
    res = run_procsnap("restore", "-D", images, "-d")
    check_ok(res)
    assert t.alive(), f"restored pid {t.pid} is not running\n" + describe(res)
    ok, why = is_untouched(t.pid)
    assert ok, f"restored pid {t.pid} is stopped or traced: {why}"


def test_task_attributes_restored(targets: TargetFactory, tmp_path: Path) -> None:
    """sched policy with SCHED_RESET_ON_FORK, a thread's own policy,
    loginuid, THP-disable, membarrier registrations, a SIGTRAP handler, and
    the exact siginfo of a zombie's SIGCHLD and of queued RT signals."""
    t = targets.start("taskstate")
    assert os.sched_getscheduler(t.pid) == SCHED_RR | SCHED_RESET_ON_FORK
    _cycle(targets, t, tmp_path / "images")
    assert os.sched_getscheduler(t.pid) == SCHED_RR | SCHED_RESET_ON_FORK
    assert os.sched_getparam(t.pid).sched_priority == 3
    assert Path(f"/proc/{t.pid}/loginuid").read_text() == "4242"
    tids = sorted(int(x) for x in os.listdir(f"/proc/{t.pid}/task"))
    assert [os.sched_getaffinity(tid) for tid in tids] == [{0}, {1 if os.cpu_count() > 1 else 0}]
    finish(t)


def _timers(pid: int) -> list[tuple[str, ...]]:
    """(ID, signal/value, notify, ClockID) of each POSIX timer, from outside."""
    lines = Path(f"/proc/{pid}/timers").read_text().splitlines()
    return [tuple(lines[i:i + 4]) for i in range(0, len(lines), 4)]


def _status_of(pid: int, tid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/task/{tid}/status").read_text()
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def test_timers_seccomp_restored(targets: TargetFactory, tmp_path: Path) -> None:
    """POSIX timers with their ids (one deleted: a hole), clocks, sigevents
    (SIGEV_THREAD_ID too), intervals and time left, a pending timer signal
    once; seccomp chains per thread with the shared part still shared (a
    TSYNC after the restore works); no_new_privs in one thread; an
    ambient capability.  Checked from outside and from inside."""
    from procsnap import images

    t = targets.start("timers_seccomp")
    tids = sorted(int(x) for x in os.listdir(f"/proc/{t.pid}/task"))
    timers = _timers(t.pid)
    assert sorted(x[0] for x in timers) == ["ID: 0", "ID: 2", "ID: 3", "ID: 4"], timers
    before = {tid: _status_of(t.pid, tid) for tid in tids}
    _cycle(targets, t, tmp_path / "images")
    assert _timers(t.pid) == timers
    for tid in tids:
        st = _status_of(t.pid, tid)
        for key in ("Seccomp", "Seccomp_filters", "NoNewPrivs", "CapAmb", "CapInh"):
            assert st[key] == before[tid][key], (tid, key, st[key], before[tid][key])
    assert [_status_of(t.pid, tid)["Seccomp_filters"] for tid in tids] == ["2", "3"]
    # one chain in the image: F1 (LOG) <- F2 <- F3, the leader naming F2
    ent = images.read_image(str(tmp_path / "images"), "seccomp")[0]
    assert len(ent.seccomp_filters) == 3
    assert [f.flags for f in ent.seccomp_filters] == [2, 0, 0]
    assert [f.prev if f.HasField("prev") else None for f in ent.seccomp_filters] == [None, 0, 1]
    finish(t)


def test_seccomp_counter_runs_on(targets: TargetFactory, tmp_path: Path) -> None:
    """A counter under an allow-all seccomp filter (once refused) is dumped
    and restored under its filter, and counts on without a gap."""
    numbers = targets.workdir / "numbers"
    t = targets.start("seccomp_allow", str(numbers))
    wait_numbers(numbers, 3)
    _cycle(targets, t, tmp_path / "images")
    st = _status_of(t.pid, t.pid)
    assert (st["Seccomp"], st["Seccomp_filters"]) == ("2", "1"), st
    last = read_numbers(numbers)[-1]
    check_continuity(wait_numbers(numbers, last + 3))


# (what the target does, a word the one-line refusal must hold)
REFUSALS = [
    ("pid", r"\bpid_for_children\b"),
    ("time", r"\btime_for_children\b"),
    ("sigtrap", r"\bSIGTRAP\b"),
    ("timer-overrun", r"\bPOSIX timer 0x0: overrun count [1-9]"),
    ("usernotif", r"\bSECCOMP_RET_USER_NOTIF\b"),
    ("tsc", r"\bPR_SET_TSC\b"),
    ("mce", r"\bmachine-check kill policy\b"),
]


def _refused(t: Target, numbers: Path, tmp_path: Path, pattern: str) -> None:
    wait_numbers(numbers, 3)
    res = run_procsnap("dump", "-t", t.pid, "-D", tmp_path / "images")
    line = assert_one_line_error(res, rf"re:\b{t.pid}\b")
    assert re.search(pattern, line), f"the refusal does not name the state: {line!r}"
    assert t.alive(), f"a refused dump killed pid {t.pid}"
    ok, why = is_untouched(t.pid)
    assert ok, f"a refused dump left pid {t.pid} stopped or traced: {why}"
    last = read_numbers(numbers)[-1]
    check_continuity(wait_numbers(numbers, last + 3))
    assert not list((tmp_path / "images").glob("*.img")), "a refused dump left images"


@pytest.mark.parametrize("what,pattern", REFUSALS, ids=[w for w, _ in REFUSALS])
def test_task_state_refused(targets: TargetFactory, tmp_path: Path, what: str,
                            pattern: str) -> None:
    numbers = targets.workdir / "numbers"
    t = targets.start("refuse_me", what, str(numbers))
    _refused(t, numbers, tmp_path, pattern)
    finish(t)


# this run's own hierarchy: a concurrent run has its own cgroups /a and /b
CGNAME = f"procsnaptst{os.getpid()}"


@pytest.fixture
def cgroups(tmp_path: Path):
    """A v1 named hierarchy mounted on a temporary dir, and a cgroup2 group;
    removed afterwards."""
    mnt = tmp_path / "cg"
    mnt.mkdir()
    mount_named_cgroup(mnt, CGNAME)
    v2 = Path("/sys/fs/cgroup/unified") / f"procsnap-test-{os.getpid()}"
    try:
        yield mnt, v2
    finally:
        remove_named_cgroup(mnt, CGNAME)
        if v2.exists():  # a failed test's target, not yet killed, leaves it first
            for pid in (v2 / "cgroup.procs").read_text().split():
                try:
                    (v2.parent / "cgroup.procs").write_text(pid)
                except OSError:
                    pass  # gone meanwhile
            v2.rmdir()


def _cg(pid: int, tid: int | None = None) -> dict[str, str]:
    path = f"/proc/{pid}/task/{tid or pid}/cgroup"
    return {line.split(":")[1]: line.split(":", 2)[2]
            for line in Path(path).read_text().splitlines()}


def test_cgroups_restored(targets: TargetFactory, tmp_path: Path, cgroups) -> None:
    """A process in a v1 cgroup and a cgroup2 group, one thread of it in
    another v1 cgroup, and an empty cgroup below: all removed after the
    dump (as zdtm's hooks do) and back after the restore."""
    mnt, v2 = cgroups
    t = targets.start("pythreads.py")
    (mnt / "a" / "empty").mkdir(parents=True)
    (mnt / "b").mkdir()
    v2.mkdir()
    tid = max(int(x) for x in os.listdir(f"/proc/{t.pid}/task"))
    assert tid != t.pid
    (mnt / "a" / "cgroup.procs").write_text(str(t.pid))
    (mnt / "b" / "tasks").write_text(str(tid))
    (v2 / "cgroup.procs").write_text(str(t.pid))
    want = (_cg(t.pid), _cg(t.pid, tid))
    assert want[0][f"name={CGNAME}"] == "/a" and want[1][f"name={CGNAME}"] == "/b"
    images = tmp_path / "images"
    images.mkdir()
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", images))
    assert wait_gone(t.pid, 10)
    for d in (mnt / "a" / "empty", mnt / "a", mnt / "b", v2):
        d.rmdir()
    targets.adopt(t.pid, like=t)
    check_ok(run_procsnap("restore", "-D", images, "-d"))
    assert (_cg(t.pid), _cg(t.pid, tid)) == want
    assert (mnt / "a" / "empty").is_dir(), "the empty cgroup below was not recreated"
    finish(t)
