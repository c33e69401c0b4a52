"""--shell-job: a job of an interactive shell, writing to its terminal.

The test plays the shell: a session leader whose controlling terminal is
the slave side of a pty it made runs the counter as a job (its own process
group, stdio on the terminal).  The job is dumped with --shell-job and
restored with --shell-job by a procsnap whose stdio is that same terminal;
the numbers read from the pty's master side go on with no gap or repeat.
"""
from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import TargetFactory, check_ok, compile_target, run_procsnap, wait_gone

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]

SHELL = """
import os, sys, time
job = os.fork()
if job == 0:
    os.setpgid(0, 0)
    os.execv(sys.argv[1], [sys.argv[1], "-"])
os.waitpid(job, 0)   # a shell reaps its job
time.sleep(1000)
"""


def _drain(master: int, seconds: float) -> bytes:
    out = b""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ready, _, _ = select.select([master], [], [], 0.05)
        if ready:
            try:
                out += os.read(master, 65536)
            except OSError:
                break
    return out


def _numbers(raw: bytes) -> list[int]:
    return [int(x) for x in raw.replace(b"\r", b"").split(b"\n")[:-1] if x.strip().isdigit()]


def test_shell_job_keeps_its_terminal(targets: TargetFactory, tmp_path: Path) -> None:
    counter = compile_target("ttycounter")
    master, slave = pty.openpty()
    shell = subprocess.Popen([sys.executable, "-c", SHELL, str(counter)], stdin=slave,
                             stdout=slave, stderr=slave, start_new_session=True,
                             close_fds=True)
    targets.adopt(shell.pid)
    try:
        time.sleep(0.5)
        with open(f"/proc/{shell.pid}/task/{shell.pid}/children") as f:
            job = int(f.read().split()[0])
        targets.adopt(job)
        seen = _drain(master, 0.5)
        res = run_procsnap("dump", "-t", job, "-D", tmp_path / "plain")
        assert res.returncode != 0 and "--shell-job" in res.stderr, res.stderr
        check_ok(run_procsnap("dump", "-t", job, "-D", tmp_path / "images", "--shell-job"))
        assert wait_gone(job, 10)
        seen += _drain(master, 0.2)
        res = subprocess.run([sys.executable, "-m", "procsnap", "restore", "-D",
                              str(tmp_path / "images"), "-d", "--shell-job"],
                             stdin=slave, stdout=slave, stderr=subprocess.PIPE, text=True,
                             timeout=60, close_fds=True)
        assert res.returncode == 0, res.stderr
        assert os.readlink(f"/proc/{job}/fd/1") == os.ttyname(slave)
        seen += _drain(master, 1.0)
        nums = _numbers(seen)
        assert len(nums) > 20, seen[-200:]
        assert nums == list(range(nums[0], nums[0] + len(nums))), (
            f"the count on the terminal broke: {nums}")
    finally:
        os.close(master)
        os.close(slave)
