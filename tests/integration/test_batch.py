"""Batches of injected calls (inject.Injector.batch): a dumped thread
answers all the per-thread reads the modules declare in one ptrace stop.

The batch's end stops the thread with a signal ignored by default
(SIGURG, SIGWINCH or SIGCHLD) that it neither blocks nor catches; a thread
with none of them free is asked one call at a time.  Each thread's answers
are its own (the images say so, and the restored target checks itself);
a procsnap killed while a batch runs leaves the target running on,
untraced, its count without a gap and no handler of ours run.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import (
    REPO_ROOT,
    TargetFactory,
    check_continuity,
    check_ok,
    describe,
    finish,
    is_untouched,
    read_numbers,
    run_procsnap,
    wait_for,
    wait_gone,
    wait_numbers,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(90)]

SIGURG, SIGWINCH, SIGCHLD = 23, 28, 17
SECBIT_NO_SETUID_FIXUP, SECBIT_KEEP_CAPS = 1 << 2, 1 << 4

# Runs procsnap's CLI with its batches logged (and, with a delay, a poll()
# put first in every batch: a batch that takes that long to run).
_DRIVER = '''
import json, sys
import procsnap.inject as inj
from procsnap import audit
from procsnap.kernel import consts
log_path, delay = sys.argv[1], int(sys.argv[2])
if delay:
    consts.NR["poll"] = 7
    audit.THREAD_READS.insert(0, inj.Read("poll", 0, 0, delay, check=False))
orig = inj.Injector.batch
def batch(self, calls):
    with open(log_path, "a") as f:
        f.write(json.dumps({"tid": self.pid, "sig": self.batch_sig,
                            "calls": [c[0] for c in calls]}) + "\\n")
    return orig(self, calls)
inj.Injector.batch = batch
sys.argv = ["procsnap"] + sys.argv[3:]
from procsnap.cli import run
run()
'''


def _driver(tmp_path: Path, log: Path, delay_ms: int, *args: object) -> list[str]:
    script = tmp_path / "driver.py"
    script.write_text(_DRIVER)
    return [sys.executable, str(script), str(log), str(delay_ms), *map(str, args)]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO_ROOT))


def _tids(output: str) -> dict[int, int]:
    """thread index -> tid, as the target printed them."""
    return {int(i): int(tid) for tid, i in re.findall(r"^tid (\d+): (\d+)$", output, re.M)}


def test_batch_answers_are_each_threads_own(targets: TargetFactory, tmp_path: Path) -> None:
    """Five threads, each with its own pdeath signal, sigaltstack, timer
    slack (one its own securebits); SIGURG caught.  Threads 0-1 end their
    batch with SIGWINCH, thread 2 (SIGWINCH blocked) with SIGCHLD, thread 3
    (both blocked) has no batch, thread 4 (SIGWINCH blocked, frozen in a
    sigsuspend that blocks nothing) SIGCHLD: its own mask counts.  The images hold each thread's values and
    the restored threads find theirs."""
    from procsnap.images import read_one

    t = targets.start("batchreads")
    tids = _tids(t.output())
    assert sorted(tids) == [0, 1, 2, 3, 4], t.output()
    images = tmp_path / "images"
    images.mkdir()
    log = tmp_path / "batches"
    res = subprocess.run(_driver(tmp_path, log, 0, "dump", "-t", t.pid, "-D", images),
                         stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         timeout=60, env=_env())
    check_ok(res)
    assert wait_gone(t.pid, 10), f"dump left pid {t.pid} alive"
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    batches = [b for b in logged if b["sig"]]  # the others are asked one call at a time
    by_tid = {b["tid"]: b for b in batches}
    assert len(by_tid) == len(batches), f"more than one batch for a thread: {batches}"
    assert by_tid[tids[0]]["sig"] == SIGWINCH and by_tid[tids[1]]["sig"] == SIGWINCH
    assert by_tid[tids[2]]["sig"] == SIGCHLD and by_tid[tids[4]]["sig"] == SIGCHLD
    assert tids[3] not in by_tid, "a thread with no free end signal ran a batch"
    singles = [b["calls"] for b in logged if b["tid"] == tids[3]]
    assert len(singles) == 10 and all(len(c) == 1 for c in singles), singles
    leader = by_tid[tids[0]]["calls"]
    assert leader.count("rt_sigaction") == 62 and "sigaltstack" in leader
    assert by_tid[tids[1]]["calls"].count("prctl") == 8  # 4 audit, 3 taskattrs, 1 creds
    for i, tid in tids.items():
        core = read_one(str(images), "core", tid)
        th = core.thread_core
        want_pdeath = signal.SIGUSR2 if i == 0 else signal.SIGRTMIN + i
        assert th.pdeath_sig == want_pdeath, (i, th.pdeath_sig)
        assert th.sas.ss_size == 16384 + 4096 * i and th.sas.ss_flags == 0, (i, th.sas)
        assert th.timer_slack_ns == 70000 + 1000 * i, (i, th.timer_slack_ns)
        want_bits = SECBIT_KEEP_CAPS | SECBIT_NO_SETUID_FIXUP if i == 1 else 0
        assert th.creds.secbits == want_bits, (i, th.creds.secbits)
    sas = {i: read_one(str(images), "core", tid).thread_core.sas.ss_sp for i, tid in tids.items()}
    assert len(set(sas.values())) == 5, f"sigaltstacks not each thread's own: {sas}"
    targets.adopt(t.pid, like=t)
    res = run_procsnap("restore", "-D", images, "-d")
    check_ok(res)
    assert t.alive(), f"restored pid {t.pid} is not running\n" + describe(res)
    finish(t)


def test_killed_during_a_batch(targets: TargetFactory, tmp_path: Path) -> None:
    """SIGKILL to procsnap while a batch runs (every batch made to take
    300 ms by a poll() put first, the kill sent while the leader is in it): the target runs on untraced where it was,
    its count without gap or repeat, its SIGURG handler never run, every
    thread's state as it was (its self-check passes)."""
    numbers = targets.workdir / "numbers"
    t = targets.start("batchreads", str(numbers))
    wait_numbers(numbers, 3)
    log = tmp_path / "batches"
    images = tmp_path / "images"
    p = subprocess.Popen(_driver(tmp_path, log, 300, "dump", "-t", t.pid, "-D", images),
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, close_fds=True, env=_env())
    try:
        # the leader is inside the poll of its batch (syscall 7)
        wait_for(lambda: log.exists() and log.read_text().strip()
                 and Path(f"/proc/{t.pid}/syscall").read_text().split()[0] == "7", 30,
                 f"pid {t.pid} to be in its batch's poll", interval=0.005)
    finally:
        p.kill()
        p.wait(10)
    assert len(log.read_text().splitlines()) == 1, "the kill came after the first batch"
    wait_for(lambda: not t.alive() or is_untouched(t.pid)[0], 10,
             f"pid {t.pid} to be released")
    assert t.alive(), f"killing procsnap mid-batch killed pid {t.pid}"
    ok, why = is_untouched(t.pid)
    assert ok, f"pid {t.pid} left stopped or traced: {why}"
    time.sleep(0.4)  # the batch ends untraced meanwhile: its tgkill, its way home
    last = read_numbers(numbers)[-1]
    check_continuity(wait_numbers(numbers, last + 5))
    finish(t)
