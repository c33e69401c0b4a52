#!/usr/bin/env python3
"""Write tests/fixtures/criu-4.2/: image sets dumped by a real CRIU (issue 15).

    scripts/criu-fixtures.py --criu /path/to/criu-4.2 [--out DIR] [CASE...]

CI has no CRIU, so the images CRIU writes are checked in:
tests/unit/test_criu_fixtures.py reads them with procsnap, and
tests/integration/test_criu_fixtures_restore.py restores them with procsnap
(no CRIU needed).  Each case runs tests/targets/criu_tiny.c (a static
binary of raw syscalls: its images are a few KiB) in one mode as pid 1 of a
pid namespace of its own (so its pids are free wherever it is restored;
the tcp case in a network namespace of its own too, so its addresses are),
and lets CRIU dump it:

  counter   a single task
  tree      3 tasks, a pipe and a unix socketpair with queued data
  ghost     an open deleted file (ghost-file image)
  tcp       an established loopback TCP connection (--tcp-established)
  shmem     shared anonymous memory also open through map_files and mapped
            privately (CRIU saves all of it as a memfd named /dev/zero)
  ns        pid 1 of new pid, uts, ipc, net and mount namespaces, with a
            tmpfs mounted inside (its tarball image)

The binary is built by tests/helpers.criu_tiny_fixed() in
/tmp/procsnap-criu-tiny (the same path and build-id when a test builds it
again), which is also every target's cwd and where its output goes.
CRIU's log is left out; CMDLINE in each directory says how it was made.
Run as root, on a quiet machine.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from bench.runner import OURS, kill_ours as kill, reap, subreaper, wait_gone  # noqa: E402
from helpers import criu_tiny_fixed  # noqa: E402

TCP_PORT = "40713"


# The targets' whole environment, the same on every machine: its strings
# are on the stack, so the stack's pages in the images do not depend on
# who ran this.  The padding makes the counter's stack at least three pages, which
# tests/unit/test_criu_fixtures.py's parent-chain tests split up.
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CRIU_TINY_PAD": "x" * 6000}


def start(argv: list[str], work: Path, out: Path) -> subprocess.Popen:
    with open(out, "a") as f:  # O_APPEND: a restore may start it empty
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                             close_fds=True, start_new_session=True, cwd=work, env=ENV)
    OURS.add(p.pid)
    end = time.monotonic() + 10
    while "ready" not in out.read_text():
        if p.poll() is not None or time.monotonic() > end:
            raise RuntimeError(f"{argv} did not start: {out.read_text()}")
        time.sleep(0.01)
    return p


def ns_child(pid: int) -> int:
    """unshare --fork: the target is unshare's only child."""
    end = time.monotonic() + 5
    while time.monotonic() < end:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if kids:
            return int(kids[0])
        time.sleep(0.01)
    raise RuntimeError("unshare's child did not appear")


CASES: dict[str, tuple[list[str], list[str]]] = {
    # name: (target argv after the binary, extra criu dump options)
    "counter": (["counter"], []),
    "tree": (["tree"], []),
    "ghost": (["ghost"], []),
    "tcp": (["tcp", TCP_PORT], ["--tcp-established"]),
    "shmem": (["shmem"], []),
    "ns": (["ns"], []),
}
HOW = {
    "ns": "pid 1 of unshare --fork --pid --uts --ipc --net --mount --mount-proc",
    "tcp": "pid 1 of unshare --fork --pid --net, lo up",
}


def in_pidns(binary: Path, name: str, args: list[str]) -> list[str]:
    """argv running the target as pid 1 of a new pid namespace (and for tcp
    a new network namespace with lo up), in a session of its own."""
    if name == "tcp":
        return ["unshare", "--fork", "--pid", "--net", "sh", "-c",
                f"ip link set lo up && exec setsid {binary} {' '.join(args)}"]
    return ["unshare", "--fork", "--pid", "setsid", str(binary), *args]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--criu", required=True)
    ap.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "criu-4.2"))
    ap.add_argument("cases", nargs="*", default=list(CASES))
    a = ap.parse_args()
    criu = os.path.abspath(a.criu)
    subreaper()
    binary = criu_tiny_fixed()
    work = binary.parent  # every target's cwd, output and ghost file are here
    dumps = Path(tempfile.mkdtemp(prefix="procsnap-fixtures."))
    out_root = Path(a.out)
    failed = 0
    try:
        for name in a.cases:
            args, opts = CASES[name]
            argv = in_pidns(binary, name, args)
            if name == "ns":
                # A tmpfs of the namespace's own, so the dump carries a
                # tarball of it; /proc of the new pid namespace on top.  Its
                # fds are opened again inside (criu cannot name a mount of
                # the host's mount namespace), its session is its own.
                inner = ("for m in $(awk '$3 ~ /^fuse/ {print $2}' /proc/self/mounts); do "
                         "umount -l $m; done; "  # a host's FUSE mount (criu refuses those)
                         f"mount -t tmpfs -o size=64k tiny {work}/mnt && "
                         f"echo tmpfs-data > {work}/mnt/file && exec </dev/null >>{work}/ns.out "
                         f"2>&1 && exec setsid {binary} ns")
                (work / "mnt").mkdir(exist_ok=True)
                argv = ["unshare", "--fork", "--pid", "--uts", "--ipc", "--net", "--mount",
                        "--mount-proc", "--propagation", "private", "sh", "-c", inner]
            out = work / f"{name}.out"
            out.unlink(missing_ok=True)
            p = start(argv, work, out)
            pid = ns_child(p.pid)
            OURS.add(pid)
            d = dumps / name
            d.mkdir()
            cmd = [criu, "dump", "-t", str(pid), "-D", str(d), "-v4", "-o", "dump.log", *opts]
            res = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
            log = (d / "dump.log").read_text(errors="replace")
            if res.returncode:
                err = [x for x in log.splitlines() if "Error" in x]
                print(f"FAIL {name}: {err[:3] or log[-500:]}")
                failed += 1
                kill(pid)  # the namespace's init too: unshare's end does not end it
                kill(p.pid)
                continue
            wait_gone(pid)
            kill(p.pid)
            (d / "dump.log").unlink()
            (d / "CMDLINE").write_text(
                f"{binary} " + " ".join(args)
                + f" ({HOW.get(name, 'pid 1 of unshare --fork --pid')}; cwd and stdout in "
                f"{work})"
                + "\ncriu dump -t PID -D DIR -v4 " + " ".join(opts) + "\nby CRIU "
                + subprocess.run([criu, "--version"], capture_output=True, text=True)
                .stdout.split()[1] + "\n")
            dest = out_root / name
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(d, dest)
            size = sum(f.stat().st_size for f in dest.iterdir())
            print(f"ok   {name}: {len(list(dest.iterdir()))} files, {size} bytes -> {dest}")
    finally:
        for pid in list(OURS):
            kill(pid)
        reap()
        shutil.rmtree(dumps, ignore_errors=True)
    return failed


if __name__ == "__main__":
    sys.exit(main())
