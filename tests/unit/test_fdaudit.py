"""The per-kind fdinfo audit (files.audit_fdinfo) and the lock-line reader,
on fdinfo text recorded from this kernel (tests/unit/data/proc)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from procsnap.errors import Unsupported
from procsnap.procfs.parse import parse_fdinfo, parse_lock_line
from procsnap.resources import (eventfd, eventpoll, fdaudit, file_lock, files, inetsk, inotify,
                                memfd, pidfd, pipe, regfile, signalfd, timerfd, tty, unixsk)

DATA = Path(__file__).parent / "data" / "proc"


def info(name: str, extra: str = ""):
    return parse_fdinfo((DATA / name).read_text() + extra)


@pytest.mark.parametrize("kind,fixture", [
    (regfile, "fdinfo_stdin.txt"), (regfile, "fdinfo_locks.txt"), (regfile, "fdinfo_ofd.txt"),
    (regfile, "fdinfo_lease.txt"), (eventfd, "fdinfo_eventfd.txt"),
    (eventpoll, "fdinfo_epoll.txt"), (inotify, "fdinfo_inotify.txt"),
    (timerfd, "fdinfo_timerfd.txt"), (signalfd, "fdinfo_signalfd.txt"),
    (pidfd, "fdinfo_pidfd.txt"), (unixsk, "fdinfo_unix.txt"), (tty, "fdinfo_ptmx.txt"),
    (inetsk, "fdinfo_stdin.txt"), (pipe, "fdinfo_old_kernel.txt"),
])
def test_every_recorded_line_is_classified(kind, fixture: str) -> None:
    files.audit_fdinfo(kind, 42, 7, "x", info(fixture))


def test_every_kind_declares_its_lines() -> None:
    for kind in files.FD_KINDS:
        assert isinstance(kind.FDINFO, dict), kind.NAME
        for key, rule in kind.FDINFO.items():
            assert isinstance(rule, fdaudit.Rule) and rule.why, (kind.NAME, key)
            assert rule.verdict in ("saved", "irrelevant", "refused"), (kind.NAME, key)


def test_unknown_key_refused_naming_pid_and_fd() -> None:
    with pytest.raises(Unsupported) as e:
        files.audit_fdinfo(eventfd, 42, 7, "anon_inode:[eventfd]",
                           info("fdinfo_eventfd.txt", "eventfd-newfield: 3\n"))
    msg = str(e.value)
    assert msg.startswith("pid 42: fd 7: ") and "eventfd-newfield: 3" in msg, msg
    assert "\n" not in msg


@pytest.mark.parametrize("kind", [eventfd, eventpoll, signalfd, timerfd, inotify, pidfd, unixsk,
                                  inetsk, tty])
def test_lock_lines_refused_where_locks_are_not_kept(kind) -> None:
    with pytest.raises(Unsupported, match=r"^pid 42: fd 7: .*'lock:"):
        files.audit_fdinfo(kind, 42, 7, "x", info("fdinfo_locks.txt"))


@pytest.mark.parametrize("kind", [regfile, memfd, pipe])
def test_lock_lines_known_where_locks_are_kept(kind) -> None:
    files.audit_fdinfo(kind, 42, 7, "x", info("fdinfo_locks.txt"))


def test_refused_by_predicate() -> None:
    # a kind whose rule refuses a value (unixsk saves scm_fds now: a
    # stand-in keeps the mechanism tested)
    class Kind:
        NAME = "unixsk"
        FDINFO = {"scm_fds": fdaudit.refused(fdaudit.nonzero, "unix socket with {value} fds "
                                             "in flight", "0: none")}
    text = (DATA / "fdinfo_unix.txt").read_text().replace("scm_fds: 0", "scm_fds: 2")
    with pytest.raises(Unsupported, match=r"^pid 42: fd 7: socket:\[1\]: unix socket with 2 fds"):
        files.audit_fdinfo(Kind, 42, 7, "socket:[1]", parse_fdinfo(text))


def test_unix_fds_in_flight_saved() -> None:
    text = (DATA / "fdinfo_unix.txt").read_text().replace("scm_fds: 0", "scm_fds: 2")
    files.audit_fdinfo(unixsk, 42, 7, "socket:[1]", parse_fdinfo(text))


def test_lock_lines_parsed() -> None:
    posix, flock = [parse_lock_line(x) for x in info("fdinfo_locks.txt").lines[4:]]
    assert (posix.kind, posix.type, posix.pid, posix.start, posix.end) == ("POSIX", "WRITE", 4321, 0, 9)
    assert (flock.kind, flock.type, flock.end, flock.ino) == ("FLOCK", "READ", None, 77)
    rd, wr = [parse_lock_line(x) for x in info("fdinfo_ofd.txt").lines[4:]]
    assert (rd.kind, rd.pid, rd.start, rd.end, wr.end) == ("OFDLCK", -1, 10, 29, None)
    (lease,) = [parse_lock_line(x) for x in info("fdinfo_lease.txt").lines[4:]]
    assert (lease.kind, lease.mode, lease.type) == ("LEASE", "ACTIVE", "READ")
    # /proc/locks, a waiter
    w = parse_lock_line("1: -> FLOCK  ADVISORY  WRITE 555 fe:00:77 0 EOF")
    assert (w.kind, w.pid) == ("FLOCK", 555)


def _fdctx(fixture: str, file_locks: bool, pid: int = 4321):
    ctx = SimpleNamespace(opts=SimpleNamespace(file_locks=file_locks), kind_state={})
    return SimpleNamespace(ctx=ctx, task=SimpleNamespace(pid=pid), fd=3, link="/f",
                           info=info(fixture))


def test_locks_refused_without_file_locks() -> None:
    with pytest.raises(Unsupported) as e:
        file_lock.note(_fdctx("fdinfo_locks.txt", False), 1)
    assert str(e.value) == ("pid 4321: fd 3: /f holds a POSIX write lock on bytes 0-9; "
                            "dump it with --file-locks")


def test_locks_saved_with_file_locks() -> None:
    fd = _fdctx("fdinfo_locks.txt", True)
    file_lock.note(fd, 1)
    file_lock.note(fd, 1)  # the same description seen again: no second entry
    posix, flock = fd.ctx.kind_state[file_lock.NAME].entries
    assert (posix.flag, posix.type, posix.pid, posix.fd, posix.start, posix.len) == (
        file_lock.FL_POSIX, file_lock.F_WRLCK, 4321, 3, 0, 10)
    assert (flock.flag, flock.type, flock.len) == (file_lock.FL_FLOCK, file_lock.F_RDLCK, 0)


def test_posix_lock_of_a_process_outside_refused() -> None:
    fd = _fdctx("fdinfo_locks.txt", True, pid=99)  # the line names pid 4321
    file_lock.note(fd, 1)
    with pytest.raises(Unsupported, match=r"^pid 99: fd 3: .* owned by pid 4321 outside"):
        file_lock.finish(fd.ctx)


def test_breaking_lease_refused() -> None:
    text = (DATA / "fdinfo_lease.txt").read_text().replace("ACTIVE  ", "BREAKING")
    fd = _fdctx("fdinfo_lease.txt", True)
    fd.info = parse_fdinfo(text)
    with pytest.raises(Unsupported, match=r"^pid 4321: fd 3: .*being broken"):
        file_lock.note(fd, 1)


def test_memfd_names() -> None:
    """A memfd's name loses its prefix; the /dev/zero kind of shmem file keeps
    its path; a memfd literally named /dev/zero is refused (CRIU's image
    would not tell it from the other)."""
    assert memfd._name("pid 1: fd 3", "/memfd:foo (deleted)") == "foo"
    assert memfd._name("pid 1: fd 3", "/dev/zero (deleted)") == "/dev/zero"
    with pytest.raises(Unsupported, match=r"^pid 7: fd 4: memfd named '/dev/zero'"):
        memfd._name("pid 7: fd 4", "/memfd:/dev/zero (deleted)")
