"""Event fds across dump/restore: eventfd, signalfd, timerfd, epoll, inotify.

Targets (tests/targets/): ``evloop`` (an epoll loop over an eventfd, a
semaphore eventfd, a periodic 50 ms timerfd and a signalfd for SIGUSR1,
plus an absolute timer and an idle epoll), ``inotify_watch`` (watches with
wds 2 and 3) and ``epoll_reuse`` (an epoll whose registered fd number now
names another file).  Besides each target's own PASS/FAIL, the tests
compare from outside the fd table and the kind-specific fdinfo lines
before and after, and decode every image with crit.
"""
from __future__ import annotations

import os
import re
import signal
import time
from typing import Iterator
from pathlib import Path

import pytest

from helpers import (
    Target,
    TargetFactory,
    assert_one_line_error,
    assert_same_view,
    check_ok,
    crit_decode_all,
    describe,
    finish,
    is_untouched,
    outside_view,
    proc_ppid,
    run_procsnap,
    wait_gone,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]

# fdinfo keys whose values must survive (time left, ticks, ino and the
# kernel's eventfd-id legitimately change).
STABLE_KEYS = ("flags", "eventfd-count", "eventfd-semaphore", "sigmask", "clockid",
               "settime flags", "it_interval")


def fdinfo_state(pid: int, with_ino: bool = True) -> dict[int, dict[str, object]]:
    """Per anon-inode fd: its stable fdinfo keys, epoll targets, inotify watches."""
    out: dict[int, dict[str, object]] = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        fd = int(name)
        link = os.readlink(f"/proc/{pid}/fd/{fd}")
        if not link.startswith("anon_inode:"):
            continue
        with open(f"/proc/{pid}/fdinfo/{fd}") as f:
            lines = f.read().splitlines()
        keys = {}
        tfds, watches = [], []
        for ln in lines:
            k, _, v = ln.partition(":")
            if k in STABLE_KEYS:
                keys[k] = v.strip()
            elif k == "tfd":
                m = re.match(r"tfd:\s*(\d+) events:\s*(\w+) data:\s*(\w+)", ln)
                assert m, ln
                tfds.append(m.groups())
            elif k.startswith("inotify wd"):
                m = re.match(r"inotify wd:(\w+) ino:(\w+) sdev:(\w+) mask:(\w+)", ln)
                assert m, ln
                g = m.groups()
                watches.append(g if with_ino else (g[0], g[2], g[3]))
        out[fd] = {"link": link, **keys, "tfd": sorted(tfds), "watches": sorted(watches)}
    return out


def cycle(targets: TargetFactory, t: Target, images: Path,
          ghost_fds: tuple[int, ...] = ()) -> dict[str, dict]:
    """Dump (killing) and restore under the same pid; same outside view and
    the same event-fd state from outside.  Returns the crit-decoded images.
    ``ghost_fds``: fds of deleted files, restored as ghosts: a new inode
    under the ghost's name (compared by the caller), so inotify watches are
    compared without their inode."""
    volatile = (1, *ghost_fds)

    def ghost_names(view: dict) -> dict:
        for fd in ghost_fds:   # a ghost's fd reads as the ghost's name (as criu's)
            link, pos, flags = view["fds"][fd]
            view["fds"][fd] = (link.endswith(" (deleted)"), pos, flags)
        return view
    before = ghost_names(outside_view(t.pid, volatile_fds=volatile))
    state_before = fdinfo_state(t.pid, with_ino=not ghost_fds)
    res = run_procsnap("dump", "-t", t.pid, "-D", images)
    check_ok(res)
    assert wait_gone(t.pid, 10), f"pid {t.pid} still alive after dump\n" + describe(res)
    decoded = crit_decode_all(images)
    targets.adopt(t.pid, like=t)
    res = run_procsnap("restore", "-D", images, "-d")
    check_ok(res)
    assert t.alive(), f"restored pid {t.pid} is not running\n" + describe(res)
    assert proc_ppid(t.pid) == os.getpid()
    ok, why = is_untouched(t.pid)
    assert ok, f"restored pid {t.pid} is stopped or traced: {why}"
    assert_same_view(before, ghost_names(outside_view(t.pid, volatile_fds=volatile)),
                     f"across dump/restore of {t.name}")
    state_after = fdinfo_state(t.pid, with_ino=not ghost_fds)
    assert state_after == state_before, (
        f"event fds changed:\nbefore {state_before}\nafter  {state_after}")
    return decoded


def num(v: object) -> int:
    """crit prints hex fields as strings only with --pretty."""
    return int(v, 0) if isinstance(v, str) else int(v)  # type: ignore[call-overload]


def files_of(decoded: dict[str, dict], kind: str) -> list[dict]:
    return [e for e in decoded["files.img"]["entries"] if e["type"] == kind]


def test_event_loop(targets: TargetFactory, images_dir: Path) -> None:
    t = targets.start("evloop")
    time.sleep(0.3)  # let the timer tick a few times first
    decoded = cycle(targets, t, images_dir)

    efds = {e["efd"]["counter"]: e["efd"] for e in files_of(decoded, "EVENTFD")}
    assert set(efds) == {42, 3}, efds
    assert efds[3]["flags"] & 1, "EFD_SEMAPHORE not recorded in eventfd flags bit 0"
    [sg] = files_of(decoded, "SIGNALFD")
    assert num(sg["sgfd"]["sigmask"]) == 1 << (signal.SIGUSR1 - 1)
    tfds = sorted((e["tfd"] for e in files_of(decoded, "TIMERFD")), key=lambda x: x["clockid"])
    assert [x["clockid"] for x in tfds] == [0, 1]
    assert num(tfds[0]["settime_flags"]) == 1 and tfds[0]["vsec"] > 3500
    assert (tfds[1]["isec"], tfds[1]["insec"]) == (0, 50_000_000)
    eps = sorted((e["epfd"] for e in files_of(decoded, "EVENTPOLL")),
                 key=lambda x: len(x.get("tfd", [])))
    assert [len(e.get("tfd", [])) for e in eps] == [0, 4]
    assert sorted(x["tfd"] for x in eps[1]["tfd"]) == [3, 4, 5, 6]

    # SIGUSR1 (blocked) must come out of the restored signalfd, and the
    # timer measurement restarts from there.
    time.sleep(0.2)
    t.signal(signal.SIGUSR1)
    t.wait_line(r"^usr1 1 via signalfd$", 5)
    time.sleep(1.5)
    finish(t)
    m = re.search(r"^timer (\d+) ticks in (\d+) ms$", t.output(), re.M)
    assert m, t.output()
    ticks, ms = int(m.group(1)), int(m.group(2))
    assert ms >= 1400 and abs(ticks * 50 - ms) <= 150, f"period broken: {m.group(0)}"


def test_inotify_watch(targets: TargetFactory, images_dir: Path, tmp_path: Path) -> None:
    watched = tmp_path / "watched"
    watched.mkdir()
    t = targets.start("inotify_watch", str(watched))
    decoded = cycle(targets, t, images_dir)

    [ify] = files_of(decoded, "INOTIFY")
    wds = {w["wd"]: w for w in ify["ify"]["wd"]}
    assert sorted(wds) == [2, 3]
    assert wds[2]["f_handle"]["path"] == str(watched)
    assert wds[3]["f_handle"]["path"] == str(watched / "file")

    (watched / "after-restore").write_text("x")
    t.wait_line(r"^created after-restore wd 2$", 5)
    with open(watched / "file", "a") as f:
        f.write("more\n")
    t.wait_line(r"^modified wd 3$", 5)
    finish(t)


def test_inotify_watch_follows_rename(targets: TargetFactory, images_dir: Path,
                                      tmp_path: Path) -> None:
    """A watch is on an inode, not a name: the dump finds the current name."""
    watched = tmp_path / "watched"
    watched.mkdir()
    t = targets.start("inotify_watch", str(watched))
    moved = tmp_path / "moved"
    os.rename(watched, moved)
    decoded = cycle(targets, t, images_dir)
    [ify] = files_of(decoded, "INOTIFY")
    assert sorted(w["f_handle"]["path"] for w in ify["ify"]["wd"]) == [
        str(moved), str(moved / "file")]
    (moved / "new").write_text("x")
    t.wait_line(r"^created new wd 2$", 5)
    finish(t)


def test_inotify_watch_on_deleted_file(targets: TargetFactory, images_dir: Path,
                                       tmp_path: Path) -> None:
    """A watch on a deleted file the task holds open (zdtm inotify00): it
    comes back on the file the task's fd has (a ghost made again), with its
    wd, and no event of the restore's own ghost name -- which comes and
    goes in the watched directory -- reaches the queue (the target fails
    on any event it did not cause)."""
    watched = tmp_path / "watched"
    watched.mkdir()
    t = targets.start("inotify_watch", str(watched), "deleted")
    decoded = cycle(targets, t, images_dir, ghost_fds=(4,))
    [ify] = files_of(decoded, "INOTIFY")
    wds = {w["wd"]: w for w in ify["ify"]["wd"]}
    assert sorted(wds) == [2, 3, 4] and "path" not in wds[4]["f_handle"], wds
    # from outside: wd 4 is on the inode fd 4 holds now
    with open(f"/proc/{t.pid}/fdinfo/3") as f:
        m = re.search(r"inotify wd:4 ino:(\w+) ", f.read())
    assert m and int(m.group(1), 16) == os.stat(f"/proc/{t.pid}/fd/4").st_ino
    # (a ghost's fd reads as its ghost name, as under criu)
    assert os.readlink(f"/proc/{t.pid}/fd/4").endswith(" (deleted)")
    assert os.stat(f"/proc/{t.pid}/fd/4").st_nlink == 0
    assert sorted(os.listdir(watched)) == ["a", "file"], os.listdir(watched)  # no ghost left
    t.signal(signal.SIGUSR2)
    t.wait_line(r"^modified gone wd 4$", 5)
    (watched / "after").write_text("x")
    t.wait_line(r"^created after wd 2$", 5)
    finish(t)


def test_inotify_watch_on_deleted_mapped_file_is_refused(targets: TargetFactory,
                                                         images_dir: Path,
                                                         tmp_path: Path) -> None:
    """A deleted file only a mapping keeps: no fd to put the watch on."""
    watched = tmp_path / "watched"
    watched.mkdir()
    t = targets.start("inotify_watch", str(watched), "mapped")
    res = run_procsnap("dump", "-t", t.pid, "-D", images_dir)
    line = assert_one_line_error(res, f"pid {t.pid}: fd 3: inotify watch 4")
    assert "deleted and no fd of the tree holds it" in line, line
    ok, why = is_untouched(t.pid)
    assert ok, why
    (watched / "later").write_text("x")
    t.wait_line(r"^created later wd 2$", 5)
    finish(t)


@pytest.mark.parametrize("mode", ["reuse", "free"])
def test_epoll_with_reused_fd_number(targets: TargetFactory, images_dir: Path, mode: str) -> None:
    """The eventfd registered as fd 3 is held at fd 4 now (fd 3 is
    /dev/null, or closed): found by kcmp, registered as fd 3 again through
    a temporary fd 3, and fd 3 is what it was.  cycle() compares the tfd
    lines (number, events, data) and the fd table before and after."""
    from procsnap import images

    t = targets.start("epoll_reuse", mode)
    t.wait_line(r"^tick 2$")
    cycle(targets, t, images_dir)
    [ep] = [e.epfd for e in images.read_image(str(images_dir), "files") if e.HasField("epfd")]
    assert [(x.tfd, x.holder_fd) for x in ep.tfd] == [(3, 4)], ep
    assert ("3" in os.listdir(f"/proc/{t.pid}/fd")) == (mode == "reuse")
    n = len(re.findall(r"^tick", t.output(), re.M))
    t.wait_line(r"^tick", 5, count=n + 3)  # events still come through epoll
    finish(t)


def test_epoll_target_held_only_elsewhere_is_refused(targets: TargetFactory,
                                                     images_dir: Path) -> None:
    """The registered file is held by another process only: refused, one
    line naming pid and epoll fd, and the tree runs on."""
    t = targets.start("epoll_reuse", "elsewhere")
    t.wait_line(r"^tick 2$")
    res = run_procsnap("dump", "-t", t.pid, "-D", images_dir)
    line = assert_one_line_error(res, f"pid {t.pid}")
    assert "fd 5" in line and "fd 3" in line and "another process" in line, line
    assert list(images_dir.iterdir()) == [], "a refused dump left images behind"
    assert t.alive()
    ok, why = is_untouched(t.pid)
    assert ok, f"pid {t.pid} left stopped or traced: {why}"
    n = len(re.findall(r"^tick", t.output(), re.M))
    t.wait_line(r"^tick", 5, count=n + 3)  # its epoll loop still runs
    finish(t)


def test_inotify_with_queued_events_is_refused(targets: TargetFactory, images_dir: Path,
                                               tmp_path: Path) -> None:
    """Queued events can be neither peeked nor queued again: the dump is
    refused, naming the bytes queued, and the events are still there for the
    tree to read afterwards."""
    watched = tmp_path / "watched"
    watched.mkdir()
    t = targets.start("inotify_watch", str(watched))
    t.signal(signal.SIGUSR1)
    t.wait_line(r"^paused$", 5)
    (watched / "queued-name").write_text("x")
    time.sleep(0.05)
    res = run_procsnap("dump", "-t", t.pid, "-D", images_dir)
    # one event, its name padded: 16 bytes of header plus 16 of name
    line = assert_one_line_error(res, f"pid {t.pid}: fd 3: inotify")
    assert "32 bytes of events are queued" in line, line
    assert list(images_dir.iterdir()) == [], "a refused dump left images behind"
    assert t.alive()
    ok, why = is_untouched(t.pid)
    assert ok, f"pid {t.pid} left stopped or traced: {why}"
    # the refusal took nothing from the queue, and the loop runs on
    t.signal(signal.SIGUSR1)
    t.wait_line(r"^resumed$", 5)
    t.wait_line(r"^created queued-name wd 2$", 5)
    (watched / "later").write_text("x")
    t.wait_line(r"^created later wd 2$", 5)
    finish(t)


@pytest.fixture
def tmpfs_mount(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of the test's own: a fanotify mount mark there sees only
    what the test does (the host's / sees every process)."""
    import subprocess
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "fdk-fanotify", str(mnt)],
                   check=True, timeout=30)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], timeout=30)


def _fanotify_lines(pid: int) -> list[str]:
    with open(f"/proc/{pid}/fdinfo/3") as f:
        return [ln for ln in f.read().splitlines() if ln.startswith("fanotify")]


def wait_events(t: Target, bits: int) -> None:
    """Wait until "event MASK" lines of ``t`` (new ones) cover ``bits``."""
    seen = 0
    deadline = time.monotonic() + 5
    while seen & bits != bits:
        assert time.monotonic() < deadline, f"events {seen:#x}, want {bits:#x}\n{t.output()}"
        seen = 0
        for m in re.findall(r"^event (\w+)$", t.output(), re.M):
            seen |= int(m, 16)
        time.sleep(0.05)


def test_fanotify_marks(targets: TargetFactory, images_dir: Path, tmp_path: Path,
                        tmpfs_mount: Path) -> None:
    """A fanotify group with an inode mark and a mount mark (an ignore mask
    that survives modification): the same group flags and marks (fdinfo,
    from outside and inside), and events flow again."""
    watched = tmp_path / "file"
    watched.write_text("x")
    t = targets.start("fanotify_marks", str(watched), str(tmpfs_mount))
    before = _fanotify_lines(t.pid)
    assert len(before) == 3, before
    decoded = cycle(targets, t, images_dir)
    [ffy] = files_of(decoded, "FANOTIFY")
    assert sorted(m["type"] for m in ffy["ffy"]["mark"]) == ["INODE", "MOUNT"], ffy
    assert _fanotify_lines(t.pid) == before
    with open(watched, "a") as f:
        f.write("more")
    wait_events(t, 0x2 | 0x8)     # FAN_MODIFY, FAN_CLOSE_WRITE (maybe merged)
    (tmpfs_mount / "new").write_text("y")
    wait_events(t, 0x20)          # FAN_OPEN on the mount
    t.signal(signal.SIGUSR1)
    t.wait_line(r"^fdinfo same$", 5)
    finish(t)


def test_fanotify_with_queued_events_is_refused(targets: TargetFactory, images_dir: Path,
                                                tmp_path: Path, tmpfs_mount: Path) -> None:
    watched = tmp_path / "file"
    watched.write_text("x")
    t = targets.start("fanotify_marks", str(watched), str(tmpfs_mount))
    os.kill(t.pid, signal.SIGSTOP)
    try:
        with open(watched, "a") as f:
            f.write("queued")
        res = run_procsnap("dump", "-t", t.pid, "-D", images_dir)
        line = assert_one_line_error(res, f"pid {t.pid}: fd 3: fanotify")
        assert "bytes of events are queued" in line, line
        assert list(images_dir.iterdir()) == []
    finally:
        os.kill(t.pid, signal.SIGCONT)
    wait_events(t, 0x2)   # still queued for the tree
    ok, why = is_untouched(t.pid)
    assert ok, why
    finish(t)
