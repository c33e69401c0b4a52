"""``procsnap demo``: checkpoint and restore a small counter, step by step.

The counter is a Python program that appends the next number to a file
every 100 ms.  The demo dumps it (which kills it), restores it under the
same PID, and checks that the numbers in the file go on with no gap and
no repeat.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from .kernel.consts import PR_SET_CHILD_SUBREAPER
from .kernel.libc import prctl

COUNTER = r"""
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
n = 0
while True:
    os.write(fd, b"%d\n" % n)
    n += 1
    time.sleep(0.1)
"""


def _numbers(path: str) -> list[int]:
    with open(path) as f:
        return [int(x) for x in f.read().split()]


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < end:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.02)


def run_demo() -> int:
    from . import dump, restore

    if os.geteuid() != 0:
        print("procsnap demo: must run as root (ptrace and clone3 set_tid need it)",
              file=sys.stderr)
        return 1
    # Become a subreaper so the restored counter is our child and we can
    # reap it at the end.
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    work = tempfile.mkdtemp(prefix="procsnap-demo-")
    out = os.path.join(work, "count.txt")
    images_dir = os.path.join(work, "images")
    proc = subprocess.Popen([sys.executable, "-c", COUNTER, out], close_fds=True,
                            start_new_session=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid = proc.pid
    restored = None
    try:
        print(f"1. started a counter, pid {pid}, writing to {out}")
        time.sleep(1.0)
        before = _numbers(out)
        print(f"   it has counted to {before[-1]}")
        stats = dump(pid, images_dir)
        proc.wait()
        last = _numbers(out)[-1]
        size = sum(os.path.getsize(os.path.join(images_dir, f)) for f in os.listdir(images_dir))
        print(f"2. dumped it to {images_dir} in {stats['total'] * 1000:.0f} ms "
              f"({len(os.listdir(images_dir))} images, {size / 1e6:.1f} MB); "
              f"it is gone, last number {last}")
        _wait_gone(pid)
        time.sleep(0.5)
        restored = restore(images_dir)
        print(f"3. restored it: pid {restored} is running again")
        time.sleep(1.0)
        nums = _numbers(out)
        ok = nums == list(range(len(nums))) and nums[-1] > last
        after = nums[nums.index(last):][:4]
        print(f"4. it counts on: ... {' '.join(map(str, after))} ... {nums[-1]}")
        print("   no gap, no repeat: OK" if ok else "   the count is broken: FAIL")
        return 0 if ok and restored == pid else 1
    finally:
        for p in (pid, restored):
            if p:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in (pid, restored):
            if p:
                try:
                    os.waitpid(p, 0)
                except ChildProcessError:
                    pass
        shutil.rmtree(work, ignore_errors=True)
