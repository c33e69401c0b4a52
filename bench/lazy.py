"""bench case "lazy": issue 16's lazy migration, timed.

A 1 GiB target (tests/targets/lazymem.c: 1 GiB of checksummed memory it
does not touch until its final check; on SIGUSR1 it answers "alive N"
without touching it) is dumped; its images are copied into a network
namespace standing for the source host (a veth pair), where
``page-server --lazy-pages`` serves them; ``lazy-pages --page-server``
runs on this side; then ``restore --lazy-pages`` is timed until the
target answers (it is asked as soon as it runs untraced, before the
restore command has exited), each round once through the CLI and once
through ``procsnap.restore()`` in an interpreter with procsnap imported
before the clock (no start-up), alternating which goes first.  Every
round ends with the daemon done and the target's own check of every
page (PASS), or the round fails.

Rows: the CLI's first answer and the API's, against issue 16's 100 ms
(absolute), with ``python3 -c pass`` timed in the same round beside them
for the machine's pace; the restore itself (the API's restore() until
the tree runs, the restorer's "running" stat) against 100 ms.  The CLI
row minus the API row is the interpreter's start-up and imports.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import runner as R

sys.path.insert(0, str(R.ROOT / "tests"))
from helpers import runs_untraced  # noqa: E402  (pytest-free, as servers.py)

TGT = R.ROOT / "tests" / "targets"


def _compile(work: Path) -> str:
    out = work / "lazymem"
    if not out.exists():
        res = subprocess.run(["gcc", "-O2", "-Wall", "-I", str(TGT), "-o", str(out),
                              str(TGT / "lazymem.c")], capture_output=True, text=True)
        if res.returncode:
            raise RuntimeError(f"compiling lazymem.c failed:\n{res.stderr}")
    return str(out)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class _Source:
    """The source host: a network namespace over a veth pair, serving
    ``images`` with page-server --lazy-pages (one restore's worth)."""

    def __init__(self, work: Path) -> None:
        self.tag = f"pbl{os.getpid() % 100000}"
        sub = f"10.{200 + os.getpid() % 50}.{(os.getpid() // 50) % 250}"
        self.here, self.there = f"{sub}.1", f"{sub}.2"
        _ip("netns", "add", self.tag)
        _ip("link", "add", f"{self.tag}a", "type", "veth", "peer", "name", f"{self.tag}b")
        _ip("link", "set", f"{self.tag}b", "netns", self.tag)
        _ip("addr", "add", f"{self.here}/24", "dev", f"{self.tag}a")
        _ip("link", "set", f"{self.tag}a", "up")
        for cmd in (["addr", "add", f"{self.there}/24", "dev", f"{self.tag}b"],
                    ["link", "set", f"{self.tag}b", "up"], ["link", "set", "lo", "up"]):
            _ip("netns", "exec", self.tag, "ip", *cmd)

    def serve(self, images: Path, port: int) -> subprocess.Popen[bytes]:
        r, w = os.pipe()
        p = subprocess.Popen(["ip", "netns", "exec", self.tag, sys.executable, "-m", "procsnap",
                              "page-server", "-D", str(images), "--address", self.there,
                              "--port", str(port), "--lazy-pages", "--status-fd", str(w)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, pass_fds=(w,), env=R.child_env())
        os.close(w)
        try:
            if os.read(r, 1) != b"\0":
                raise RuntimeError("the page server did not start")
        finally:
            os.close(r)
        return p

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.tag], capture_output=True)
        subprocess.run(["ip", "link", "del", f"{self.tag}a"], capture_output=True)


def _answered(out: Path, n: int) -> bool:
    return f"alive {n}" in out.read_text()


def _one_restore(images: Path, src: _Source, port: int, pid: int, out: Path,
                 api: bool) -> tuple[float, float]:
    """One lazy restore of ``images`` to the target's first answer and on to
    its last page; (seconds to the answer, restore()'s "running")."""
    ps = src.serve(images / "source", port)
    d = subprocess.Popen([sys.executable, "-m", "procsnap", "lazy-pages", "-D", str(images),
                          "--page-server", "--address", src.there, "--port", str(port)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=R.child_env(), close_fds=True)
    try:
        while not (images / "lazy-pages.socket").exists():
            if d.poll() is not None:
                raise RuntimeError("the lazy-pages daemon did not start")
            time.sleep(0.005)
        if api:
            code = (f"t = time.monotonic(); sys.stdout.write(f'{{t}}\\n'); sys.stdout.flush()\n"
                    f"restore({str(images)!r}, detached=True, lazy_pages=True)\n"
                    "from procsnap.restorer import last_stats\n"
                    "print('running', last_stats['running'])\n")
            cmd = subprocess.Popen(R.py_api(code), stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   env=R.child_env(), cwd=R.ROOT, close_fds=True, text=True)
            assert cmd.stdout is not None
            t0 = float(cmd.stdout.readline())   # the clock starts after the imports
        else:
            t0 = time.monotonic()
            cmd = subprocess.Popen([sys.executable, "-m", "procsnap", "restore", "-D", str(images),
                                    "-d", "--lazy-pages", "-v"],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, env=R.child_env(), cwd=R.ROOT,
                                   close_fds=True, text=True)
        R.OURS.add(pid)
        while not runs_untraced(pid):
            if cmd.poll() not in (None, 0) or time.monotonic() - t0 > 60:
                raise RuntimeError(f"restore failed: {cmd.communicate()[1][-500:]}")
            time.sleep(0.0005)
        # asked again every 10 ms: a signal that lands as the restored
        # task re-enters its pause() is handled before it and does not end it
        asked = 0.0
        while not _answered(out, 1):
            if time.monotonic() - asked > 0.01:
                os.kill(pid, signal.SIGUSR1)
                asked = time.monotonic()
            if time.monotonic() - t0 > 60:
                raise RuntimeError("the restored target did not answer")
            time.sleep(0.0005)
        answer = time.monotonic() - t0
        so, se = cmd.communicate(timeout=60)
        if cmd.returncode:
            raise RuntimeError(f"restore failed: {se[-500:]}")
        m = re.search(r"running ([\d.]+)( ms)?", so + se)
        running = float(m.group(1)) / (1000 if m.group(2) else 1) if m else float("nan")
        if d.wait(timeout=300) or ps.wait(timeout=30):
            raise RuntimeError("the lazy-pages daemon or the page server failed")
        return answer, running
    finally:
        for p in (d, ps):
            if p.poll() is None:
                p.kill()
                p.wait()


def case_lazy(work: Path, runs: int, mib: int) -> list[Any]:
    cli = R.Row(f"{mib} MiB lazy migration (page server in a netns): CLI restore -> "
                "first answer", "s", baseline_name="python3 -c pass", target=0.1, absolute=True)
    api = R.Row(f"{mib} MiB lazy migration: restore() -> first answer (no start-up)", "s",
                baseline_name="python3 -c pass", target=0.1, absolute=True)
    own = R.Row(f"{mib} MiB lazy migration: restore() until the tree runs (API)", "s",
                target=0.1, absolute=True)
    binary = _compile(work)
    src = _Source(work)
    try:
        for rnd in range(runs):
            for use_api in ((False, True) if rnd % 2 else (True, False)):
                d = work / f"lazy.{rnd}.{int(use_api)}"
                out = d.with_suffix(".out")
                with open(out, "w") as f:
                    p = subprocess.Popen([binary, str(mib)], stdin=subprocess.DEVNULL,
                                         stdout=f, stderr=subprocess.STDOUT, close_fds=True,
                                         start_new_session=True, cwd=work)
                R.OURS.add(p.pid)
                while "ready" not in out.read_text():
                    if p.poll() is not None:
                        raise RuntimeError(f"lazymem: {out.read_text()[-300:]}")
                    time.sleep(0.01)
                R.run_child([sys.executable, "-m", "procsnap", "dump", "-t", str(p.pid),
                             "-D", str(d)])
                p.wait()
                shutil.copytree(d, d / "source", ignore=shutil.ignore_patterns("source"))
                R.warm_memory()
                pace, _ = R.run_child([sys.executable, "-c", "pass"])
                answer, running = _one_restore(d, src, 27100 + rnd * 2 + int(use_api),
                                               p.pid, out, use_api)
                row = api if use_api else cli
                row.procsnap.append(answer)
                row.baseline.append(pace)
                if use_api:   # the CLI's restore() imports modules as it goes
                    own.procsnap.append(running)
                os.kill(p.pid, signal.SIGTERM)   # its check of every page
                deadline = time.monotonic() + 120
                while not re.search(r"^(PASS|FAIL)", out.read_text(), re.M):
                    if time.monotonic() > deadline:
                        raise RuntimeError("the restored target did not check itself")
                    time.sleep(0.05)
                if "PASS" not in out.read_text():
                    raise RuntimeError(f"lazymem: {out.read_text()[-300:]}")
                R.wait_gone(p.pid, 30)
                R.OURS.discard(p.pid)
                shutil.rmtree(d, ignore_errors=True)
    finally:
        src.close()
    return [cli, api, own]
