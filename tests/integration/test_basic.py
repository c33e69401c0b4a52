"""Checkpoint/restore of real processes, zdtm style.

Every test starts a target (tests/targets/), waits for "ready", records the
outside view (maps, fds, cmdline, cwd, exe, limits, creds, umask, signal
masks), dumps it with ``procsnap dump`` (which kills it), restores it with
``procsnap restore -d``, and then checks:

* the restored process has the same pid, is our child (we are the
  subreaper) and is neither stopped nor traced;
* the outside view is the same as before the dump;
* the target's own output goes on where it stopped (counters: no gap, no
  repeat) and its self-check on SIGTERM says PASS.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import time
from pathlib import Path

import pytest

from helpers import (
    Target,
    TargetFactory,
    assert_same_view,
    check_continuity,
    check_ok,
    crit_decode_all,
    describe,
    diff_views,
    finish,
    is_untouched,
    outside_view,
    proc_ppid,
    read_numbers,
    read_text,
    run_procsnap,
    sig_fields,
    wait_for,
    wait_gone,
    wait_numbers,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]

COUNTER_FD = 3  # the fd counter.c / counter.py write their numbers to


# --------------------------------------------------------------------------
# the common cycle
# --------------------------------------------------------------------------

def dump(t: Target, images: Path, *extra: str) -> None:
    """``procsnap dump``; without --leave-running the target must be gone."""
    res = run_procsnap("dump", "-t", t.pid, "-D", images, *extra)
    check_ok(res)
    if "--leave-running" in extra:
        assert t.alive(), f"--leave-running but pid {t.pid} is gone\n" + describe(res)
    else:
        assert wait_gone(t.pid, 10), (
            f"dump succeeded but pid {t.pid} is still alive (must be killed)\n" + describe(res))


def restore(targets: TargetFactory, t: Target, images: Path) -> None:
    """``procsnap restore -d --pidfile``: same pid, alive, our child, untouched."""
    pidfile = images.parent / f"restore-{t.pid}.pid"
    pidfile.unlink(missing_ok=True)
    targets.adopt(t.pid, like=t)
    res = run_procsnap("restore", "-D", images, "-d", "--pidfile", pidfile)
    check_ok(res)
    assert pidfile.exists(), "restore -d --pidfile wrote no pidfile\n" + describe(res)
    assert int(pidfile.read_text().strip()) == t.pid, (
        f"pidfile says {pidfile.read_text()!r}, dumped pid was {t.pid}")
    assert t.alive(), f"restored pid {t.pid} is not running\n" + describe(res)
    assert proc_ppid(t.pid) == os.getpid(), (
        f"restored pid {t.pid} has parent {proc_ppid(t.pid)}, expected the test "
        f"process {os.getpid()} (its subreaper)")
    ok, why = is_untouched(t.pid)
    assert ok, f"restored pid {t.pid} is stopped or traced: {why}"


def cycle(targets: TargetFactory, t: Target, images: Path,
          volatile_fds: tuple[int, ...] = ()) -> None:
    """Dump (killing), wait until gone, restore, compare the outside view."""
    images.mkdir(parents=True, exist_ok=True)
    before = outside_view(t.pid, volatile_fds)
    dump(t, images)
    restore(targets, t, images)
    after = outside_view(t.pid, volatile_fds)
    assert_same_view(before, after, f"across dump/restore of {t.name} pid {t.pid}")


def start_counter(targets: TargetFactory, name: str, *args: str) -> tuple[Target, Path]:
    numbers = targets.workdir / f"{name}.numbers"
    t = targets.start(name, str(numbers), *args)
    wait_numbers(numbers, 5)
    return t, numbers


def assert_counts_on(numbers: Path, after: int, within: float = 5.0) -> list[int]:
    """New numbers appear soon, and the file is 1, 2, 3, ... throughout."""
    t0 = time.monotonic()
    nums = wait_numbers(numbers, after + 5, within)
    check_continuity(nums)
    assert time.monotonic() - t0 < within
    return nums


def _write_pipe(t: Target, word: str) -> None:
    """Write through the target's own pipe (fd 8); it must echo the word."""
    with open(f"/proc/{t.pid}/fd/8", "w") as w:
        w.write(word + "\n")
    t.wait_line(rf"^got {word}$", timeout=10)


# --------------------------------------------------------------------------
# each target unchanged by checkpoint/restore
# --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["counter", "counter.py"])
def test_counter_dump_restore(targets: TargetFactory, tmp_path: Path, name: str) -> None:
    t, numbers = start_counter(targets, name)
    cycle(targets, t, tmp_path / "images", volatile_fds=(COUNTER_FD,))
    # everything written before the dump is there, then it goes on from it
    at_dump = read_numbers(numbers)
    check_continuity(at_dump)
    assert_counts_on(numbers, at_dump[-1])
    finish(t)
    check_continuity(read_numbers(numbers))


def test_fpu_registers_survive(targets: TargetFactory, tmp_path: Path) -> None:
    t = targets.start("fpu")
    t.signal(signal.SIGUSR2)
    t.wait_line(r"^check ok", count=1)
    cycle(targets, t, tmp_path / "images")
    time.sleep(0.3)  # let it run on restored registers
    t.signal(signal.SIGUSR2)
    line = t.wait_line(r"^(check ok|FAIL)", count=2)
    assert line.startswith("check ok"), t.output()
    before, after = (int(ln.split()[2]) for ln in t.lines() if ln.startswith("check ok"))
    assert after > before, "the loop made no progress after restore"
    finish(t)


def _tgkill(pid: int, sig: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(234, pid, pid, sig) != 0:  # SYS_tgkill on x86_64
        e = ctypes.get_errno()
        raise OSError(e, f"tgkill({pid}, {sig}): {os.strerror(e)}")


def _make_signals_pending(t: Target) -> None:
    t.signal(signal.SIGUSR2)          # process-wide: ShdPnd
    assert t.is_ours()
    _tgkill(t.pid, signal.SIGRTMIN)   # thread-directed: SigPnd, queued twice
    _tgkill(t.pid, signal.SIGRTMIN)
    usr2, rtmin = 1 << (signal.SIGUSR2 - 1), 1 << (signal.SIGRTMIN - 1)
    wait_for(lambda: int(sig_fields(t.pid)["ShdPnd"], 16) & usr2
             and int(sig_fields(t.pid)["SigPnd"], 16) & rtmin, 5, "signals pending")


def test_signals_masks_pending_altstack(targets: TargetFactory, tmp_path: Path) -> None:
    t = targets.start("signals", "expect-pending")
    t.signal(signal.SIGUSR1)
    t.wait_line(r"^usr1 1 altstack$")
    _make_signals_pending(t)
    sig_before = sig_fields(t.pid)
    cycle(targets, t, tmp_path / "images")
    assert sig_fields(t.pid) == sig_before, "pending/blocked/ignored/caught signals changed"
    t.signal(signal.SIGUSR1)
    line = t.wait_line(r"^(usr1 2|FAIL)")
    assert line == "usr1 2 altstack", t.output()
    finish(t)  # also checks 1 SIGUSR2 and 2 queued SIGRTMIN get delivered


def test_files_positions_flags(targets: TargetFactory, tmp_path: Path) -> None:
    d = targets.workdir / "files-dir"
    d.mkdir()
    t = targets.start("files", str(d))
    cycle(targets, t, tmp_path / "images")
    finish(t)
    assert (d / "log.txt").read_text() == "start\nafter\n"


def test_creds(targets: TargetFactory, tmp_path: Path) -> None:
    t = targets.start("creds")
    st = outside_view(t.pid)["creds"]
    assert st["Uid"].split() == ["1001", "1002", "1003", "1002"], st  # the target did its part
    cycle(targets, t, tmp_path / "images")
    finish(t)


def test_pipes_dump_restore(targets: TargetFactory, tmp_path: Path) -> None:
    """A task blocked in read() on a pipe, and a pipe with 5000 bytes in it."""
    t = targets.start("pipe_read")
    _write_pipe(t, "first")
    links = {fd: os.readlink(f"/proc/{t.pid}/fd/{fd}") for fd in (7, 8, 9, 10)}
    assert links[7] == links[8] != links[9] == links[10], links
    cycle(targets, t, tmp_path / "images")
    after = {fd: os.readlink(f"/proc/{t.pid}/fd/{fd}") for fd in (7, 8, 9, 10)}
    assert after[7] == after[8] != after[9] == after[10], f"pipe ends regrouped: {after}"
    _write_pipe(t, "again")  # the restored reader wakes up and echoes it
    finish(t)  # checks the 5000 buffered bytes of the second pipe


# --------------------------------------------------------------------------
# modes of the CLI
# --------------------------------------------------------------------------

def test_leave_running(targets: TargetFactory, tmp_path: Path) -> None:
    t, numbers = start_counter(targets, "counter")
    images = tmp_path / "images"
    images.mkdir()
    before = outside_view(t.pid, (COUNTER_FD,))
    dump(t, images, "--leave-running")
    ok, why = is_untouched(t.pid)
    assert ok, f"after --leave-running the target is stopped or traced: {why}"
    last = read_numbers(numbers)[-1]
    assert_counts_on(numbers, last)  # it keeps counting, no gap
    assert_same_view(before, outside_view(t.pid, (COUNTER_FD,)), "by dump --leave-running")
    # the image of a left-running process restores too: kill it, restore it;
    # it rewrites the same numbers from the dumped file position onwards
    t.signal(signal.SIGKILL)
    assert wait_gone(t.pid, 10)
    restore(targets, t, images)
    assert_counts_on(numbers, read_numbers(numbers)[-1])
    finish(t)
    check_continuity(read_numbers(numbers))


def test_dump_restore_twice(targets: TargetFactory, tmp_path: Path) -> None:
    t, numbers = start_counter(targets, "counter")
    for i in range(2):
        cycle(targets, t, tmp_path / f"images-{i}", volatile_fds=(COUNTER_FD,))
        assert_counts_on(numbers, read_numbers(numbers)[-1])
    finish(t)
    check_continuity(read_numbers(numbers))


def test_restore_foreground_exit_status(targets: TargetFactory, tmp_path: Path) -> None:
    """Without -d, restore waits for the process and exits with its status."""
    limit = 40
    t, numbers = start_counter(targets, "counter", str(limit))
    images = tmp_path / "images"
    images.mkdir()
    dump(t, images)
    assert read_numbers(numbers)[-1] < limit, "counter finished before the dump"
    targets.adopt(t.pid, like=t)
    res = run_procsnap("restore", "-D", images, timeout=30)
    assert res.returncode == 42, "restore should exit with the target's status 42\n" + describe(res)
    assert read_numbers(numbers) == list(range(1, limit + 1))
    assert t.output().splitlines()[-1] == f"done {limit}", t.output()
    assert wait_gone(t.pid, 5)


def test_python_api(targets: TargetFactory, tmp_path: Path) -> None:
    import procsnap

    t, numbers = start_counter(targets, "counter")
    images = tmp_path / "images"
    images.mkdir()
    before = outside_view(t.pid, (COUNTER_FD,))
    procsnap.dump(t.pid, str(images))
    assert wait_gone(t.pid, 10), f"procsnap.dump() left pid {t.pid} alive"
    targets.adopt(t.pid, like=t)
    pid = procsnap.restore(str(images), detached=True)
    assert pid == t.pid
    assert t.alive()
    ok, why = is_untouched(pid)
    assert ok, why
    assert_same_view(before, outside_view(pid, (COUNTER_FD,)), "across the Python API")
    assert_counts_on(numbers, read_numbers(numbers)[-1])
    finish(t)


# --------------------------------------------------------------------------
# the images
# --------------------------------------------------------------------------

@pytest.fixture
def dumped_counter(targets: TargetFactory, tmp_path: Path) -> tuple[Target, Path]:
    """A counter dumped with --leave-running (it stays for teardown)."""
    t, _ = start_counter(targets, "counter")
    images = tmp_path / "images"
    images.mkdir()
    dump(t, images, "--leave-running")
    return t, images


def test_show_json(dumped_counter: tuple[Target, Path]) -> None:
    t, images = dumped_counter
    res = check_ok(run_procsnap("show", images))
    data = json.loads(res.stdout)
    names = set(data) if isinstance(data, dict) else {
        (e if isinstance(e, str) else e.get("file") or e.get("name")) for e in data}
    assert f"core-{t.pid}.img" in names, f"no core-{t.pid}.img in show output: {sorted(names)}"
    res = check_ok(run_procsnap("show", images, f"core-{t.pid}.img"))
    core = json.loads(res.stdout)
    assert '"X86_64"' in json.dumps(core), "core image does not say mtype X86_64"


def _addr(v: object) -> int:
    return int(v, 0) if isinstance(v, str) else int(v)  # type: ignore[arg-type]


def test_images_decode_with_crit(dumped_counter: tuple[Target, Path]) -> None:
    t, images = dumped_counter
    decoded = crit_decode_all(images)
    for must in ("inventory.img", "pstree.img", f"core-{t.pid}.img", f"mm-{t.pid}.img"):
        assert must in decoded, f"{must} missing from {sorted(decoded)}"

    assert decoded["pstree.img"]["entries"][0]["pid"] == t.pid
    assert decoded[f"core-{t.pid}.img"]["entries"][0]["mtype"] == "X86_64"
    # every VMA of the live process (but [vsyscall]) is covered by mm-PID.img
    vmas = sorted((_addr(v["start"]), _addr(v["end"]))
                  for v in decoded[f"mm-{t.pid}.img"]["entries"][0]["vmas"])
    with open(f"/proc/{t.pid}/maps") as f:
        live = [tuple(int(x, 16) for x in ln.split()[0].split("-"))
                for ln in f if not ln.rstrip().endswith("[vsyscall]")]
    for lo, hi in live:
        assert any(a <= lo and hi <= b for a, b in vmas), (
            f"live VMA {lo:x}-{hi:x} not in mm-{t.pid}.img")


# --------------------------------------------------------------------------
# negative controls: the checks above can fail
# --------------------------------------------------------------------------

def test_control_fpu_detects_corrupt_xstate(targets: TargetFactory, tmp_path: Path) -> None:
    """Zero the upper ymm halves in the image: the fpu target must say FAIL."""
    from procsnap.images import read_one, write_one

    t = targets.start("fpu")
    images = tmp_path / "images"
    images.mkdir()
    dump(t, images)
    core = read_one(str(images), "core", t.pid)
    ymmh = core.thread_info.fpregs.xsave.ymmh_space
    assert any(ymmh), "the dumped upper ymm halves are all zero: nothing to corrupt"
    for i in range(len(ymmh)):
        ymmh[i] = 0
    write_one(str(images), "core", core, t.pid)
    restore(targets, t, images)
    t.signal(signal.SIGUSR2)
    line = t.wait_line(r"^(check ok|FAIL)")
    assert line.startswith("FAIL"), f"corrupted ymm state went unnoticed: {line}"


def test_control_view_detects_umask_change(targets: TargetFactory, tmp_path: Path) -> None:
    """Change the umask in fs-PID.img: the outside-view comparison must object."""
    from procsnap.images import read_one, write_one

    t, _ = start_counter(targets, "counter")
    images = tmp_path / "images"
    images.mkdir()
    before = outside_view(t.pid, (COUNTER_FD,))
    dump(t, images)
    fs = read_one(str(images), "fs", t.pid)
    assert fs.umask == 0o027
    fs.umask = 0o022
    write_one(str(images), "fs", fs, t.pid)
    restore(targets, t, images)
    problems = diff_views(before, outside_view(t.pid, (COUNTER_FD,)))
    assert problems == ["umask: before '0027' after '0022'"], problems


# --------------------------------------------------------------------------
# the other commands, and the targets themselves
# --------------------------------------------------------------------------

def test_check_command() -> None:
    check_ok(run_procsnap("check"))


@pytest.mark.timeout(120)
def test_demo_command() -> None:
    check_ok(run_procsnap("demo", timeout=110))
    # no_stray_children (conftest) fails the test if the demo left processes




@pytest.mark.parametrize("name", ["counter", "counter.py", "fpu", "signals",
                                  "files", "creds", "pipe_read", "perf_fd"])
def test_target_baseline(targets: TargetFactory, name: str) -> None:
    """Each target passes its own check without any checkpoint.

    So a FAIL after a restore is procsnap's doing, not the target's.
    """
    args: list[str] = []
    if name.startswith("counter") or name == "perf_fd":
        args = [str(targets.workdir / "numbers")]
    elif name == "files":
        (targets.workdir / "fd").mkdir()
        args = [str(targets.workdir / "fd")]
    elif name == "signals":
        args = ["expect-pending"]
    t = targets.start(name, *args)
    if name == "signals":
        t.signal(signal.SIGUSR1)
        t.wait_line(r"^usr1 1 altstack$")
        _make_signals_pending(t)
    elif name == "fpu":
        t.signal(signal.SIGUSR2)
        t.wait_line(r"^check ok")
    elif name == "pipe_read":
        _write_pipe(t, "hello")
    elif name.startswith("counter") or name == "perf_fd":
        wait_numbers(targets.workdir / "numbers", 3)
    finish(t)
    if name.startswith("counter") or name == "perf_fd":
        check_continuity(read_numbers(targets.workdir / "numbers"))
    assert read_text(t.err) == "", f"{name} wrote to stderr: {read_text(t.err)}"


def test_stopped_process_comes_back_stopped(targets: TargetFactory, tmp_path: Path) -> None:
    """A job-control stopped process (SIGSTOP) is restored stopped, counts
    nothing until SIGCONT, then goes on with no gap."""
    t, numbers = start_counter(targets, "counter")
    t.signal(signal.SIGSTOP)
    wait_for(lambda: Path(f"/proc/{t.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T",
             5, "the target to stop")
    images = tmp_path / "images"
    images.mkdir()
    dump(t, images)
    targets.adopt(t.pid, like=t)
    check_ok(run_procsnap("restore", "-D", images, "-d"))
    state = Path(f"/proc/{t.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    assert state == "T", f"restored in state {state}, not stopped"
    at = read_numbers(numbers)
    time.sleep(0.3)
    assert read_numbers(numbers) == at, "a stopped process counted"
    t.signal(signal.SIGCONT)
    assert_counts_on(numbers, at[-1])
    finish(t)


def test_python_api_python_target(targets: TargetFactory, tmp_path: Path) -> None:
    """procsnap.restore() called in this (pytest's) process, whose
    faulthandler has an alternate signal stack, for a Python target without
    one: the restored task must not keep the restorer's (a forked puppet
    inherits it).  CPython installs its handlers with SA_ONSTACK, so with
    the inherited stack -- not mapped in the target -- the SIGTERM of the
    verdict killed it with SIGSEGV instead of running its handler."""
    import procsnap

    numbers = tmp_path / "numbers"
    t = targets.start("counter.py", str(numbers))
    images = tmp_path / "images"
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", images))
    assert wait_gone(t.pid, 10)
    targets.adopt(t.pid, like=t)
    assert procsnap.restore(str(images), detached=True) == t.pid
    with open(f"/proc/{t.pid}/status") as f:
        assert "SigCgt:" in f.read()
    assert t.verdict().startswith("PASS"), t.output()
