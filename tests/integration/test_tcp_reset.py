"""TCP connections that were reset, with their error still pending
(target tests/targets/tcp_reset.py): ECONNRESET (reset while established,
unread data queued), EPIPE (reset in CLOSE_WAIT) and ECONNREFUSED (a
refused non-blocking connect), over IPv4, IPv6 and v4-mapped IPv6.

The error can only be read by clearing it (SO_ERROR), so procsnap reads it
at the dump's commit point -- every other image written, the tree about
to be killed -- and recreates it at restore with an injected RST.  The
target checks afterwards what a program sees: the data, then the error
exactly once, then EOF.  Refused by name: the same with --leave-running
(reading would clear it in the running tree), without --tcp-established,
and an error no RST makes (ETIMEDOUT), which is found only when read.
"""
from __future__ import annotations

import signal
from pathlib import Path

import pytest

from helpers import (
    TargetFactory,
    assert_one_line_error,
    check_ok,
    describe,
    is_untouched,
    run_procsnap,
    wait_gone,
)
from procsnap import images

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]


@pytest.mark.parametrize("fam", ["4", "6", "46"])
def test_reset_connections_keep_their_errors(targets: TargetFactory, images_dir: Path,
                                             fam: str) -> None:
    t = targets.start("tcp_reset.py", fam)
    res = check_ok(run_procsnap("dump", "-t", t.pid, "-D", images_dir, "--tcp-established"))
    assert wait_gone(t.pid, 10), describe(res)
    errs = sorted(images.read_entries(str(images_dir), "tcp-stream", int(p.stem.split("-")[-1],
                                                                            16))[0].msg.so_error
                  for p in images_dir.glob("tcp-stream-*.img"))
    assert errs == sorted([104, 32, 111]), errs   # ECONNRESET, EPIPE, ECONNREFUSED
    targets.adopt(t.pid, like=t)
    check_ok(run_procsnap("restore", "-D", images_dir, "-d", "--tcp-established"))
    t.signal(signal.SIGUSR1)
    assert t.wait_line("^(PASS|FAIL)") == "PASS", t.output()


def test_reset_refused_with_leave_running(targets: TargetFactory, images_dir: Path) -> None:
    t = targets.start("tcp_reset.py", "4")
    res = run_procsnap("dump", "-t", t.pid, "-D", images_dir, "--tcp-established", "-R")
    line = assert_one_line_error(res, f"pid {t.pid}: fd 5")
    assert "reset TCP connection" in line and "--leave-running" in line, line
    ok, why = is_untouched(t.pid)
    assert ok, why
    t.signal(signal.SIGUSR1)
    assert t.wait_line("^(PASS|FAIL)") == "PASS", t.output()   # every error still there


def test_reset_refused_without_tcp_established(targets: TargetFactory,
                                               images_dir: Path) -> None:
    t = targets.start("tcp_reset.py", "4")
    res = run_procsnap("dump", "-t", t.pid, "-D", images_dir)
    line = assert_one_line_error(res, f"pid {t.pid}: fd 5")
    assert "reset TCP connection" in line and "1000 unread" in line, line
    assert "--tcp-established" in line, line
    ok, why = is_untouched(t.pid)
    assert ok, why
    t.signal(signal.SIGUSR1)
    assert t.wait_line("^(PASS|FAIL)") == "PASS", t.output()


def test_timed_out_connection_refused_at_commit(targets: TargetFactory,
                                                images_dir: Path) -> None:
    """ETIMEDOUT: no RST makes it.  Which error is pending shows only when
    it is read, at the commit point: the dump then fails naming it, the
    tree runs on, and the error is gone from it -- said in the message,
    and seen by the target."""
    t = targets.start("tcp_reset.py", "4", "etimedout")
    res = run_procsnap("dump", "-t", t.pid, "-D", images_dir, "--tcp-established")
    line = assert_one_line_error(res, f"pid {t.pid}: fd 8")
    assert "ETIMEDOUT" in line and "no longer reports it" in line, line
    ok, why = is_untouched(t.pid)
    assert ok, why
    assert not list(images_dir.iterdir())
    t.signal(signal.SIGUSR1)
    assert t.wait_line("^(PASS|FAIL)") == "FAIL: fd 8 SO_ERROR: 0, expected 'ETIMEDOUT'", t.output()
