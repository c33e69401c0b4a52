"""An armed interval timer (setitimer) may fire between its restore and
the restore check: its signal pending then is the timer going on, not a
state the images lacked (zdtm timers: "pending signals (ShdPnd) {}
expected, {14} found")."""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers import TargetFactory, check_ok, reap, run_procsnap, wait_gone

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]


def test_interval_timer_firing_during_restore(targets: TargetFactory, images_dir: Path) -> None:
    t = targets.start("itimer.py")
    # several rounds: the timer fires every 10 ms, a restore takes longer,
    # so its SIGALRM is pending at the check nearly every time
    for n in range(3):
        d = images_dir / str(n)
        check_ok(run_procsnap("dump", "-t", t.pid, "-D", d))
        assert wait_gone(t.pid, 10)
        reap()
        check_ok(run_procsnap("restore", "-D", d, "-d"))
        targets.adopt(t.pid, like=t)
    assert t.verdict() == "PASS", t.output()


def test_expired_interval_timer_with_its_signal_pending(targets: TargetFactory,
                                                       images_dir: Path) -> None:
    """ITIMER_REAL expired with SIGALRM blocked: it reads 0 left and its
    interval until the signal is taken (the kernel reloads it then).  The
    restore must not set a zero value, which disarms it: after restore the
    pending SIGALRM is taken and the timer goes on every 10 ms (the target
    checks)."""
    t = targets.start("itimer.py", "blocked")
    t.wait_line(r"^ready")
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", images_dir))
    assert wait_gone(t.pid, 10)
    reap()
    check_ok(run_procsnap("restore", "-D", images_dir, "-d"))
    targets.adopt(t.pid, like=t)
    assert t.verdict() == "PASS", t.output()
