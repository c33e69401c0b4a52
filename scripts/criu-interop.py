#!/usr/bin/env python3
"""Image interop with a real CRIU (issue 15), a development check, not CI.

    scripts/criu-interop.py --criu /path/to/criu [--crit "CMD"] [--keep DIR]

CI cannot run CRIU (Debian's criu 3.17 fails on this kernel, 4.x is not
packaged), and a test that skips is a failed test here, so this is a script
that a developer runs with a CRIU built from source.  It needs root.

For a C counter and a small C process tree (bench/targets, compiled into a
temporary directory) and the Python counter (tests/targets/counter.py, run
by this interpreter) it checks three things and prints one line each:

  crit      CRIU's own ``crit decode`` reads every image procsnap writes
            (pages-*.img are raw by design and skipped)
  criu<-ps  ``criu restore`` of procsnap's images: the restored task must run
            on (the counter's file grows); else criu's first error line
  ps<-criu  ``procsnap restore`` of criu's images: same check; else
            procsnap's error

The other kinds both tools save (pipes and unix sockets with data, ghost
files, established TCP, a tree in its own namespaces) are checked both ways
by tests/integration/test_criu_interop.py when PROCSNAP_CRIU names a criu
binary; scripts/criu-fixtures.py writes the CRIU image sets under
tests/fixtures/criu-4.2 that CI reads without one.

``--crit`` is the command that runs crit (default: CRIU's own, from the
criu source tree next to the binary: ``python3 -m crit`` with lib/ and
crit/ on PYTHONPATH; it needs ``make lib`` for pycriu's generated modules).
Exit status: the number of failed checks.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.runner import OURS, kill_ours as kill, reap, subreaper, wait_gone  # noqa: E402

TARGETS = ROOT / "bench" / "targets"


def start(bindir: Path, work: Path, name: str, *args: str) -> int:
    log = work / f"{name}.out"
    argv = ([sys.executable, str(ROOT / "tests" / "targets" / "counter.py")]
            if name == "pycounter" else [str(bindir / name)])
    with open(log, "w") as out:
        p = subprocess.Popen(argv + list(args), stdin=subprocess.DEVNULL,
                             stdout=out, stderr=subprocess.STDOUT, close_fds=True,
                             start_new_session=True, cwd=work)
    OURS.add(p.pid)
    end = time.monotonic() + 10
    while "ready" not in log.read_text():
        if p.poll() is not None or time.monotonic() > end:
            raise RuntimeError(f"{name} did not start: {log.read_text()}")
        time.sleep(0.005)
    return p.pid


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          close_fds=True, **kw)


def procsnap(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return run([sys.executable, "-m", "procsnap", *args], env=env, cwd=ROOT)


def first_error(text: str) -> str:
    # criu logs, as an "Error", that it cannot raise its own RLIMIT_NOFILE
    # here (no CAP_SYS_RESOURCE) and goes on: not the reason it failed.
    lines = [x for x in text.splitlines() if ("Error" in x or "error" in x)
             and "Can't setup RLIMIT_NOFILE for self" not in x]
    return (lines[0] if lines else (text.strip().splitlines() or ["(no output)"])[-1]).strip()


def runs_on(counter_file: Path) -> bool:
    """The counter writes a line every 50 ms: does its file keep growing?"""
    n = counter_file.stat().st_size
    time.sleep(0.3)
    return counter_file.stat().st_size > n


def tree_pids(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [pid] + [int(x) for x in f.read().split()]


def tree_runs(pid: int, n: int) -> bool:
    """The tree's root and its n-1 children are alive (none a zombie)."""
    def alive(p: int) -> bool:
        try:
            with open(f"/proc/{p}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
        except OSError:
            return False
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(x) for x in f.read().split()]
    except OSError:
        return False
    return alive(pid) and len(kids) == n - 1 and all(alive(k) for k in kids)


def check_crit(crit: list[str], d: Path) -> tuple[bool, str]:
    bad = []
    imgs = sorted(f for f in d.iterdir() if f.suffix == ".img" and not f.name.startswith("pages-"))
    for f in imgs:
        res = run(crit + ["decode", "-i", str(f), "-o", "/dev/null"])
        if res.returncode:
            bad.append(f"{f.name}: {(res.stderr.strip().splitlines() or ['?'])[-1]}")
    if bad:
        return False, f"{len(bad)}/{len(imgs)} images fail: " + "; ".join(bad)
    return True, f"all {len(imgs)} images decode"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--criu", required=True, help="a criu binary (4.x)")
    ap.add_argument("--crit", help="command running crit (default: from --criu's source tree)")
    ap.add_argument("--keep", help="keep the image directories under this directory")
    a = ap.parse_args()
    criu = os.path.abspath(a.criu)
    if a.crit:
        crit = shlex.split(a.crit)
    else:
        src = Path(criu).resolve().parent.parent
        crit = ["env", f"PYTHONPATH={src / 'lib'}:{src / 'crit'}", "/usr/bin/python3", "-m", "crit"]
    subreaper()  # restored trees come to us
    work = Path(a.keep or tempfile.mkdtemp(prefix="procsnap-interop."))
    work.mkdir(parents=True, exist_ok=True)
    bindir = work / "bin"
    bindir.mkdir(exist_ok=True)
    for name in ("counter", "tree"):
        subprocess.run(["gcc", "-O2", "-o", str(bindir / name), str(TARGETS / f"{name}.c")],
                       check=True)
    results: list[tuple[str, bool, str]] = []
    try:
        for name, args in (("counter", ["counter.txt"]), ("tree", ["3"]),
                           ("pycounter", ["counter.txt"])):
            # 1. procsnap dumps; crit decodes; criu restores.
            d = work / f"{name}-procsnap"
            shutil.rmtree(d, ignore_errors=True)
            pid = start(bindir, work, name, *args)
            pids = tree_pids(pid)
            res = procsnap("dump", "-t", str(pid), "-D", str(d))
            if res.returncode:
                results.append((f"{name}: procsnap dump", False, first_error(res.stderr)))
                kill(pid)
                continue
            for p in pids:      # the same pids are restored: all must be free
                wait_gone(p)
            if os.environ.get("INTEROP_DEBUG"):
                print("after dump:", pids, [(x, os.path.exists(f"/proc/{x}")) for x in pids])
            ok, msg = check_crit(crit, d)
            results.append((f"{name}: crit decode of procsnap's images", ok, msg))
            if os.environ.get("INTEROP_DEBUG"):
                print("before criu restore:", [(x, os.path.exists(f"/proc/{x}")) for x in pids])
            res = run([criu, "restore", "-D", str(d), "-d", "-v4", "-o", "criu-restore.log",
                       "--pidfile", str(d / "criu.pid")], cwd=work)
            log = (d / "criu-restore.log").read_text(errors="replace") if (d / "criu-restore.log").exists() else res.stderr
            if res.returncode:
                results.append((f"{name}: criu restore of procsnap's images", False, first_error(log)))
            else:
                OURS.add(int((d / "criu.pid").read_text()))
                ok = runs_on(work / "counter.txt") if name != "tree" else tree_runs(pid, 3)
                results.append((f"{name}: criu restore of procsnap's images", ok,
                                "restored, runs on" if ok else "restored but does not run"))
            kill(pid)
            for p in pids:
                wait_gone(p)
            # 2. criu dumps; procsnap restores.
            d = work / f"{name}-criu"
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir()
            pid = start(bindir, work, name, *args)
            pids = tree_pids(pid)
            res = run([criu, "dump", "-t", str(pid), "-D", str(d), "-v4", "-o", "criu-dump.log"])
            if res.returncode:
                results.append((f"{name}: criu dump", False,
                                first_error((d / "criu-dump.log").read_text(errors="replace"))))
                kill(pid)
                continue
            for p in pids:
                wait_gone(p)
            ok, msg = check_crit(crit, d)
            results.append((f"{name}: crit decode of criu's images (control)", ok, msg))
            res = procsnap("restore", "-D", str(d), "-d")
            if res.returncode:
                results.append((f"{name}: procsnap restore of criu's images", False,
                                first_error(res.stderr)))
            else:
                ok = runs_on(work / "counter.txt") if name != "tree" else tree_runs(pid, 3)
                results.append((f"{name}: procsnap restore of criu's images", ok,
                                "restored, runs on" if ok else "restored but does not run"))
            OURS.add(pid)
            kill(pid)
    finally:
        for pid in list(OURS):
            kill(pid)
        reap()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    for what, ok, msg in results:
        print(f"{'ok  ' if ok else 'FAIL'}  {what}: {msg}")
    return sum(1 for _, ok, _ in results if not ok)


if __name__ == "__main__":
    sys.exit(main())
