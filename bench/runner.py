"""The benchmark cases and the table.

Rules this runner keeps:

* It only signals processes it started itself (targets) or that procsnap
  restored for it; they are tracked in ``OURS`` and killed at the end,
  even on error or ^C.  It is a child subreaper, so restored processes and
  orphaned tree members become its children and are reaped here.
* Before restoring under the same PID it waits until /proc/PID is gone.
* Containers (the container case) are stopped and removed through their
  own runtimes, with their cgroups and lxcfs, by tests/containers.py's
  context managers, which the integration tests use too.
* procsnap and its baseline run in the same round on the same data, and
  only ratios are compared with targets: absolute times on these virtual
  machines drift by 2-4x from one minute to the next.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
TARGETS = Path(__file__).resolve().parent / "targets"
PR_SET_CHILD_SUBREAPER = 36
MIB = 1 << 20
NOT_SUPPORTED = "not supported yet"

OURS: set[int] = set()          # pids (and process groups) we may kill
Tool = str                      # "procsnap" or "criu"
_BIN: Path | None = None
_CRIU: str | None = None         # --criu PATH: a criu binary to compare with


# ---------------------------------------------------------------- utils ----

def subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}"):
        reap()
        if time.monotonic() > deadline:
            raise TimeoutError(f"pid {pid} still exists after {timeout}s")
        time.sleep(0.002)
    # The members of a killed tree are our children too (subreaper): a
    # zombie left unreaped holds its pid, which a restore of the next
    # round may need ("pid N is already taken ... state Z").
    reap()


def kill_ours(pid: int) -> None:
    """SIGKILL a process we started or restored, with its group (a tree)."""
    if pid not in OURS:
        return
    for kill in (os.killpg, os.kill):
        try:
            if kill is os.killpg and os.getpgid(pid) != pid:
                continue
            kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        wait_gone(pid)
    except TimeoutError:
        pass
    OURS.discard(pid)


def kill_all() -> None:
    for pid in list(OURS):
        kill_ours(pid)
    reap()


def compile_targets() -> Path:
    out = Path(tempfile.mkdtemp(prefix="procsnap-bench-bin."))
    for src in sorted(TARGETS.glob("*.c")):
        cmd = ["gcc", "-O2", "-Wall", "-Werror", "-o", str(out / src.stem), str(src), "-lpthread"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            raise RuntimeError(f"compiling {src.name} failed:\n{res.stderr}")
    return out


def binary(name: str) -> str:
    assert _BIN is not None
    return str(_BIN / name)


def start(workdir: Path, name: str, *args: str, timeout: float = 60) -> int:
    """Start a bench target in its own session; return its pid once ready."""
    log = workdir / f"{name}.{time.monotonic_ns()}.out"
    with open(log, "w") as out:
        p = subprocess.Popen([binary(name), *args], stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.STDOUT, close_fds=True, start_new_session=True,
                             cwd=workdir)
    OURS.add(p.pid)
    deadline = time.monotonic() + timeout
    while "ready" not in log.read_text():
        if p.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"target {name} {' '.join(args)} did not get ready: "
                               f"{log.read_text()[-300:]}")
        time.sleep(0.005)
    return p.pid


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    # An installed package has its .pyc files; without them every run
    # recompiles procsnap and protobuf's generated modules from source.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_child(argv: list[str]) -> tuple[float, str]:
    """Run a command to completion; (wall seconds, stdout)."""
    t = time.monotonic()
    res = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL,
                         env=child_env(), cwd=ROOT, close_fds=True)
    wall = time.monotonic() - t
    if res.returncode:
        raise ChildError(res.stderr.decode(errors="replace").strip()
                         or f"{argv[0]}: exit {res.returncode}")
    return wall, res.stdout.decode()


class ChildError(RuntimeError):
    pass


# Issue 16: "peak RSS of procsnap <= 100 MiB throughout".  Every run of
# procsnap the bench makes records its peak RSS here, under what ran; the
# table ends with one row per entry and a row with the max of them all.
PEAK_RSS: dict[str, list[float]] = {}


def note_rss(what: str, mib: float) -> None:
    PEAK_RSS.setdefault(what, []).append(mib)


def run_child_rss(argv: list[str], what: str) -> tuple[float, float, str]:
    """Like run_child, for a py_api child: (wall, its peak RSS in MiB, stdout).

    The child prints its own VmHWM last (the high-water mark of its
    address space since exec); wait4's ru_maxrss would also do, but it
    counts the high-water mark of the pre-exec copy of this process too.
    The peak is noted in PEAK_RSS under ``what``.
    """
    wall, out = run_child(argv)
    lines = out.split("\n")
    hwm = [x for x in lines if x.startswith("VmHWM:")]
    rss = int(hwm[-1].split()[1]) / 1024
    note_rss(what, rss)
    return wall, rss, "\n".join(x for x in lines if x and x not in hwm)


def run_cli(args: list[str], what: str) -> tuple[float, str]:
    """``python3 -m procsnap ARGS`` to completion through bench/targets/
    maxrss.c (see there why not our own wait4): (wall seconds, stdout); its
    peak RSS is noted in PEAK_RSS under ``what``."""
    out = Path(tempfile.mktemp(prefix="procsnap-bench-rss."))
    try:
        wall, stdout = run_child([binary("maxrss"), str(out), sys.executable, "-m", "procsnap",
                                  *args])
        note_rss(what, int(out.read_text()) / 1024)
    finally:
        out.unlink(missing_ok=True)
    return wall, stdout


def note_own_rss(what: str) -> None:
    """The bench's own peak, for procsnap's API called in this interpreter
    (an upper bound: the bench and its imports are in it)."""
    with open("/proc/self/status") as f:
        hwm = [x for x in f if x.startswith("VmHWM:")][0]
    note_rss(what, int(hwm.split()[1]) / 1024)


def warm_memory(mib: int = 2560) -> None:
    """Touch and free memory before a timed step.

    On these VMs a page the guest has not used for a while costs a host
    fault on first touch (2-4x slower writes into fresh page cache or
    anonymous memory).  Recycling a big block first puts procsnap and its
    baseline on the same footing, whichever runs first.
    """
    # In a child: this process's own high-water mark stays small, and
    # children forked from it do not inherit a huge one.
    run_child([binary("rawio"), "warm", str(mib)])


def py_api(code: str) -> list[str]:
    """A fresh interpreter with procsnap imported before the clock starts."""
    pre = ("import json, sys, time\n"
           "import procsnap\n"
           "dump, restore = procsnap.dump, procsnap.restore\n"
           "import procsnap.dumper, procsnap.restorer, procsnap.resources\n")
    post = "\nprint([x for x in open('/proc/self/status') if x.startswith('VmHWM:')][0])\n"
    return [sys.executable, "-c", pre + code + post]


def criu_dump(pid: int, d: Path) -> float:
    """``criu dump`` of a bench target with criu's defaults; its wall time.

    The target is a session leader started by us (no --shell-job); criu
    kills it after the dump, as procsnap does.  Its log goes to the image
    directory, so a failure shows criu's own last lines.
    """
    assert _CRIU is not None
    return _criu(["dump", "-t", str(pid), "-D", str(d), "-o", "dump.log"], d)


def criu_restore(d: Path) -> float:
    """``criu restore -d`` (detached: the tree is reparented to us, the
    subreaper); its wall time.  Restored pids join OURS."""
    assert _CRIU is not None
    pidfile = d / "criu-restore.pid"
    t = _criu(["restore", "-D", str(d), "-d", "-o", "restore.log",
               "--pidfile", str(pidfile)], d)
    OURS.add(int(pidfile.read_text()))
    return t


def _criu(args: list[str], d: Path) -> float:
    assert _CRIU is not None
    d.mkdir(exist_ok=True)
    t = time.monotonic()
    res = subprocess.run([_CRIU, *args], capture_output=True, stdin=subprocess.DEVNULL,
                         close_fds=True, cwd=ROOT)
    wall = time.monotonic() - t
    if res.returncode:
        log = d / args[args.index("-o") + 1]
        tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
        raise ChildError(f"criu {args[0]}: exit {res.returncode}: " + " | ".join(tail))
    return wall


def images_size(d: Path, prefix: str = "") -> int:
    return sum(f.stat().st_size for f in d.iterdir() if f.name.startswith(prefix))


def is_unsupported(exc: BaseException) -> bool:
    return "not supported" in str(exc)


# ---------------------------------------------------------------- table ----

@dataclass
class Row:
    case: str
    unit: str                      # "s", "ms", "MiB", "x"
    procsnap: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    baseline_name: str = ""
    target: float | None = None    # limit on the ratio (or on the value if no baseline)
    absolute: bool = False         # the target limits the value even with a baseline
    note: str = ""

    def value(self) -> float | None:
        return statistics.median(self.procsnap) if self.procsnap else None

    def base(self) -> float | None:
        return statistics.median(self.baseline) if self.baseline else None

    def ratio(self) -> float | None:
        v, b = self.value(), self.base()
        if v is None or b is None or b == 0:
            return None
        return statistics.median(p / q for p, q in zip(self.procsnap, self.baseline))


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "s":
        return f"{v:.3f} s"
    if unit == "ms":
        return f"{v * 1000:.1f} ms"
    if unit == "MiB":
        return f"{v:.1f} MiB"
    return f"{v:.3f}"


def print_table(rows: list[Row], runs: int) -> None:
    head = ["case", "procsnap", "baseline", "ratio", "target", "ok"]
    lines = []
    for r in rows:
        if r.note:
            lines.append([r.case, r.note, "", "", "", ""])
            continue
        ratio = r.ratio()
        judged = ratio if r.baseline and not r.absolute else r.value()
        if r.target is None or judged is None:
            ok, target = "", ""
        else:
            ok = "yes" if judged <= r.target else "NO"
            target = (f"<= {r.target:g}x" if r.baseline and not r.absolute
                      else f"<= {_fmt(r.target, r.unit)}")
        base = _fmt(r.base(), r.unit) + (f" ({r.baseline_name})" if r.baseline_name else "")
        lines.append([r.case, _fmt(r.value(), r.unit), base if r.baseline else "-",
                      f"{ratio:.2f}x" if ratio is not None else "-", target, ok])
    widths = [max(len(x[i]) for x in lines + [head]) for i in range(len(head))]
    print(f"\nprocsnap bench: median of {runs} runs, {os.cpu_count()} cpus, "
          f"kernel {os.uname().release}")
    for line in [head, ["-" * w for w in widths]] + lines:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())


# ---------------------------------------------------------------- cases ----

def case_memory(work: Path, runs: int, mib: int) -> list[Row]:
    # procsnap's dump, as criu's, leaves its images in the page cache (--sync
    # waits for the disk): the raw baseline writes without fsync too
    dump = Row(f"{mib} MiB anon: dump", "s", baseline_name="write", target=1.3)
    rest = Row(f"{mib} MiB anon: restore", "s", baseline_name="read to fresh mmap", target=1.3)
    size = Row(f"{mib} MiB anon: pages image size", "MiB", baseline_name="touched", target=1.01)
    rss_d = Row(f"{mib} MiB anon: procsnap peak RSS, dump", "MiB", target=100)
    rss_r = Row(f"{mib} MiB anon: procsnap peak RSS, restore", "MiB", target=100)
    c_dump = Row(f"{mib} MiB anon: dump vs CRIU", "s", baseline_name="criu dump", target=1.0)
    c_rest = Row(f"{mib} MiB anon: restore vs CRIU", "s", baseline_name="criu restore -d",
                 target=1.0)
    c_size = Row(f"{mib} MiB anon: pages image size vs CRIU", "MiB", baseline_name="criu",
                 target=1.01)
    for i in range(runs):
        if _CRIU and i % 2 == 1:    # alternate which tool goes first
            _criu_memory_round(work, mib, c_dump, c_rest, c_size)
        d = work / "mem-images"
        raw = work / "raw.img"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        pid = start(work, "mem", str(mib))
        try:
            warm_memory()
            _, out = run_child([binary("rawio"), "write", str(raw), str(mib)])
            dump.baseline.append(float(out))
            warm_memory()
            _, rss, out = run_child_rss(py_api(
                f"t = time.monotonic(); dump({pid}, {str(d)!r}); "
                "print(time.monotonic() - t)"), f"{mib} MiB anon: API dump")
            dump.procsnap.append(float(out))
            rss_d.procsnap.append(rss)
            wait_gone(pid)
            size.procsnap.append(images_size(d, "pages-") / MIB)
            size.baseline.append(float(mib))
            warm_memory()
            _, out = run_child([binary("rawio"), "read", str(raw)])
            rest.baseline.append(float(out))
            warm_memory()
            _, rss, out = run_child_rss(py_api(
                f"t = time.monotonic(); restore({str(d)!r}); "
                "print(time.monotonic() - t)"), f"{mib} MiB anon: API restore")
            rest.procsnap.append(float(out))
            rss_r.procsnap.append(rss)
            c_dump.procsnap.append(dump.procsnap[-1])
            c_rest.procsnap.append(rest.procsnap[-1])
            c_size.procsnap.append(size.procsnap[-1])
        finally:
            kill_ours(pid)
            raw.unlink(missing_ok=True)
            shutil.rmtree(d, ignore_errors=True)
        if _CRIU and i % 2 == 0:
            _criu_memory_round(work, mib, c_dump, c_rest, c_size)
    return [dump, rest, size, rss_d, rss_r] + ([c_dump, c_rest, c_size] if _CRIU else [])


def _criu_memory_round(work: Path, mib: int, dump: Row, rest: Row, size: Row) -> None:
    """One criu dump + restore of a fresh target, warmed like procsnap's steps.

    procsnap's side of these rows is its API time (no interpreter start-up);
    criu's is the wall time of the criu command (a C program: start-up is a
    few ms, nothing next to 1 GiB)."""
    d = work / "criu-mem-images"
    shutil.rmtree(d, ignore_errors=True)
    pid = start(work, "mem", str(mib))
    try:
        warm_memory()
        dump.baseline.append(criu_dump(pid, d))
        wait_gone(pid)
        size.baseline.append(images_size(d, "pages-") / MIB)
        warm_memory()
        rest.baseline.append(criu_restore(d))
    finally:
        kill_ours(pid)
        shutil.rmtree(d, ignore_errors=True)


def case_small(work: Path, runs: int) -> list[Row]:
    cli_d = Row("counter: CLI dump", "ms", baseline_name="python3 -c pass", target=0.200,
                absolute=True)
    cli_r = Row("counter: CLI restore", "ms", baseline_name="python3 -c pass", target=0.200,
                absolute=True)
    api = Row("counter: API dump+restore", "ms", target=0.060)
    # Issue 16's target: the CLI within 2x of criu's, start-up included.
    c_d = Row("counter: CLI dump vs CRIU", "ms", baseline_name="criu dump", target=2.0)
    c_r = Row("counter: CLI restore vs CRIU", "ms", baseline_name="criu restore -d", target=2.0)
    d = work / "counter-images"
    cd = work / "criu-counter-images"
    pid = start(work, "counter", str(work / "counter.txt"))
    cpid = start(work, "counter", str(work / "criu-counter.txt")) if _CRIU else 0
    try:
        for i in range(runs + 1):   # round 0 warms caches (.pyc, page cache)
            if _CRIU and i % 2 == 0:    # alternate which tool goes first
                cpid = _criu_counter_round(cpid, cd, c_d, c_r, i > 0)
            shutil.rmtree(d, ignore_errors=True)
            base, _ = run_child([sys.executable, "-c", "pass"])
            t_d, _ = run_cli(["dump", "-t", str(pid), "-D", str(d)], "counter: CLI dump")
            wait_gone(pid)
            t_r, _ = run_cli(["restore", "-D", str(d), "-d"], "counter: CLI restore")
            # The API in this interpreter: round 0 pays procsnap's lazy
            # imports, the measured rounds do not (no interpreter start-up).
            t_api = sum(_api_cycle(pid, d))
            if i:
                cli_d.procsnap.append(t_d)
                cli_r.procsnap.append(t_r)
                cli_d.baseline.append(base)
                cli_r.baseline.append(base)
                api.procsnap.append(t_api)
                c_d.procsnap.append(t_d)
                c_r.procsnap.append(t_r)
            if _CRIU and i % 2 == 1:
                cpid = _criu_counter_round(cpid, cd, c_d, c_r, i > 0)
    finally:
        kill_ours(pid)
        kill_ours(cpid)
        shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(cd, ignore_errors=True)
    note_own_rss("counter: API, in the bench's interpreter (bench included)")
    return [cli_d, cli_r, api] + ([c_d, c_r] if _CRIU else [])


def _criu_counter_round(pid: int, d: Path, dump: Row, rest: Row, keep: bool) -> int:
    """criu dump + restore -d of the counter; returns the restored pid."""
    shutil.rmtree(d, ignore_errors=True)
    t_d = criu_dump(pid, d)
    wait_gone(pid)
    OURS.discard(pid)
    t_r = criu_restore(d)
    if keep:
        dump.baseline.append(t_d)
        rest.baseline.append(t_r)
    return int((d / "criu-restore.pid").read_text())


def _api_cycle(pid: int, d: Path) -> tuple[float, float]:
    import procsnap
    shutil.rmtree(d, ignore_errors=True)
    t = time.monotonic()
    procsnap.dump(pid, str(d))
    t_dump = time.monotonic() - t
    wait_gone(pid)
    t = time.monotonic()
    procsnap.restore(str(d))
    return t_dump, time.monotonic() - t


def case_scale(work: Path, runs: int, name: str, what: str, small: int, big: int,
               args: Callable[[int], list[str]]) -> list[Row]:
    """dump and restore at two sizes; ratio big/small against <= 12x."""
    rd = Row(f"{what}: dump {small:,} -> {big:,}", "ms", baseline_name=f"{small:,}", target=12)
    rr = Row(f"{what}: restore {small:,} -> {big:,}", "ms", baseline_name=f"{small:,}", target=12)
    d = work / f"{name}-images"
    try:
        for i in range(runs + 1):
            for n, sink_d, sink_r in ((small, rd.baseline, rr.baseline),
                                      (big, rd.procsnap, rr.procsnap)):
                tdir = work / f"{name}-{n}"
                tdir.mkdir(exist_ok=True)
                pid = start(tdir, name, *args(n))
                try:
                    t_d, t_r = _api_cycle(pid, d)
                finally:
                    kill_ours(pid)
                if i:  # round 0 warms imports and caches
                    sink_d.append(t_d)
                    sink_r.append(t_r)
    except Exception as exc:  # procsnap refuses it today: say so, not fail
        if not is_unsupported(exc):
            raise
        rd.note = rr.note = f"{NOT_SUPPORTED} ({str(exc)[:60]}...)"
    finally:
        shutil.rmtree(d, ignore_errors=True)
    note_own_rss(f"{what}: API, in the bench's interpreter (bench included)")
    return [rd, rr]


def case_verify(work: Path, runs: int, mib: int) -> list[Row]:
    """What the restore's self-check (procsnap/verify.py) costs: its own
    stage time against the whole restore's, in the same restore."""
    cases = [("counter", "counter", lambda tdir: [str(tdir / "counter.txt")]),
             (f"{mib} MiB anon", "mem", lambda tdir: [str(mib)]),
             ("200 processes", "tree", lambda tdir: ["200"]),
             ("10,000 open files", "fds", lambda tdir: [".", "10000"])]
    rows = []
    d = work / "verify-images"
    for what, name, args in cases:
        row = Row(f"restore check: {what}", "ms", baseline_name="whole restore", target=0.10)
        tdir = work / f"verify-{name}"
        tdir.mkdir(exist_ok=True)
        try:
            for _ in range(runs):
                shutil.rmtree(d, ignore_errors=True)
                pid = start(tdir, name, *args(tdir))
                try:
                    run_child_rss(py_api(f"dump({pid}, {str(d)!r})"), f"verify {what}: dump")
                    wait_gone(pid)  # reaped: the restore needs its pid free
                    _, _, out = run_child_rss(py_api(
                        f"import procsnap.restorer as r; restore({str(d)!r}); "
                        "print(json.dumps(r.last_stats))"), f"verify {what}: restore")
                    stats = json.loads(out.strip().splitlines()[-1])
                    row.procsnap.append(stats["verify"])
                    row.baseline.append(stats["total"])
                finally:
                    kill_ours(pid)
        except Exception as exc:
            if not is_unsupported(exc):
                raise
            row.note = f"{NOT_SUPPORTED} ({str(exc)[:60]}...)"
        finally:
            shutil.rmtree(d, ignore_errors=True)
        rows.append(row)
    return rows


def case_tcpq(work: Path, runs: int, mib: int = 4) -> list[Row]:
    """A live TCP connection (--tcp-established) with ``mib`` MiB queued
    each way, the bench holding the other end: dump and restore through
    the API in a fresh interpreter (no start-up in the number), against
    copying 2 * ``mib`` MiB through a unix socketpair, the two alternating
    which goes first.

    The row with the target is procsnap's own stage time of the queues
    (stats["tcp-queues"] of the dump plus that of the restore, the same
    round: procsnap/resources/tcp.py's STAGE, timed around the queues'
    bytes alone and their checks); the whole dump+restore, which adds
    the freeze, the network lock and the process's creation, is shown
    for scale, with no target of its own."""
    base_name = f"{2 * mib} MiB through a socketpair"
    queues = Row(f"TCP {mib} MiB queued each way: the queues (dump+restore)", "ms",
                 baseline_name=base_name, target=3.0)
    q_dump = Row(f"TCP {mib} MiB queued each way: the queues in the dump", "ms")
    q_restore = Row(f"TCP {mib} MiB queued each way: the queues in the restore", "ms")
    # the same steps' CPU time against the copy's (both processes'): what
    # other load on the machine moves least
    q_cpu = Row(f"TCP {mib} MiB queued each way: the queues' CPU (dump+restore)", "ms",
                baseline_name=f"{base_name}, CPU")
    whole = Row(f"TCP {mib} MiB queued each way: whole dump+restore", "ms",
                baseline_name=base_name)
    d = work / "tcpq-images"
    try:
        for i in range(runs + 1):     # round 0 warms imports and caches
            base, base_cpu = 0.0, 0.0
            if i % 2:
                base, base_cpu = _sockpair(mib)
            t_dump, t_restore, s_dump, s_restore = _tcpq_round(work, d, mib)
            if not i % 2:
                base, base_cpu = _sockpair(mib)
            if i:
                whole.procsnap.append(t_dump + t_restore)
                whole.baseline.append(base)
                queues.procsnap.append(s_dump[0] + s_restore[0])
                queues.baseline.append(base)
                q_dump.procsnap.append(s_dump[0])
                q_restore.procsnap.append(s_restore[0])
                q_cpu.procsnap.append(s_dump[1] + s_restore[1])
                q_cpu.baseline.append(base_cpu)
    except Exception as exc:
        if not is_unsupported(exc):
            raise
        whole.note = queues.note = f"{NOT_SUPPORTED} ({str(exc)[:60]}...)"
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return [queues, q_dump, q_restore, q_cpu, whole]


def _sockpair(mib: int) -> tuple[float, float]:
    """The baseline: 2 * ``mib`` MiB through a unix socketpair (wall, CPU)."""
    warm_memory(512)
    _, out = run_child([binary("rawio"), "sockpair", str(2 * mib)])
    wall, cpu = out.split()
    return float(wall), float(cpu)


def _tcpq_round(work: Path, d: Path, mib: int) -> tuple[float, float, tuple[float, float],
                                                        tuple[float, float]]:
    """One dump + restore of a tcpq target: the two API times, then the
    ``tcp-queues`` stage of each, wall and CPU (seconds)."""
    shutil.rmtree(d, ignore_errors=True)
    lis = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # a small receive buffer we never read: the target's sends stay in
    # its own send queue once it is full
    lis.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    lis.bind(("127.0.0.1", 0))
    lis.listen(1)
    pid = 0
    conn = None
    try:
        log = work / f"tcpq.{time.monotonic_ns()}.out"
        with open(log, "w") as out:
            p = subprocess.Popen([binary("tcpq"), str(lis.getsockname()[1]), str(mib)],
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 close_fds=True, start_new_session=True, cwd=work)
        pid = p.pid
        OURS.add(pid)
        lis.settimeout(30)
        conn, _ = lis.accept()
        conn.sendall(bytes(mib << 20))     # into the target's receive queue
        deadline = time.monotonic() + 60
        while "ready" not in log.read_text():
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tcpq {mib}: {log.read_text()[-300:]}")
            time.sleep(0.005)
        warm_memory(512)   # as the memory case: fresh pages cost a host fault here
        # (sock_diag's module is imported before the clock too: start-up)
        _, _, out_d = run_child_rss(py_api(
            "import procsnap.resources.sockdiag\n"
            f"t = time.monotonic(); s = dump({pid}, {str(d)!r}, tcp_established=True); "
            "print(json.dumps([time.monotonic() - t, s]))"), "TCP queues: API dump")
        wait_gone(pid)
        warm_memory(512)
        _, _, out_r = run_child_rss(py_api(
            f"t = time.monotonic(); restore({str(d)!r}); t = time.monotonic() - t; "
            "print(json.dumps([t, procsnap.restorer.last_stats]))"),
            "TCP queues: API restore")
        t_d, s_d = json.loads(out_d.strip().splitlines()[-1])
        t_r, s_r = json.loads(out_r.strip().splitlines()[-1])
        # (a dump that saved no queue has no such stage: a defect here)
        return (t_d, t_r, (s_d["tcp-queues"], s_d["tcp-queues-cpu"]),
                (s_r["tcp-queues"], s_r["tcp-queues-cpu"]))
    except BaseException:
        # a failed restore keeps the network lock for a retry: not here
        if (d / "inventory.img").exists():
            subprocess.run([sys.executable, "-m", "procsnap", "network-unlock", str(d)],
                           env=child_env(), capture_output=True, cwd=ROOT)
        raise
    finally:
        if pid:
            kill_ours(pid)
        if conn is not None:
            conn.close()
        lis.close()


# ----------------------------------------------------------------- sync ----

def case_sync(work: Path, runs: int, sizes: list[int]) -> list[Row]:
    """``procsnap dump --sync`` (the CLI, start-up included) of a fresh
    ``mem`` target: against write(2)+fsync of the same size, and with
    --criu against ``criu dump`` followed by ``sync`` (issue 16: <= 1.1x),
    alternating which tool goes first; round 0 warms caches."""
    rows: list[Row] = []
    for mib in sizes:
        raw = Row(f"{mib} MiB anon: CLI dump --sync", "s", baseline_name="write+fsync",
                  target=1.3)
        cmp = Row(f"{mib} MiB anon: CLI dump --sync vs CRIU", "s",
                  baseline_name="criu dump; sync", target=1.1)
        for i in range(runs + 1):
            tools = ["procsnap", "criu"] if _CRIU else ["procsnap"]
            if i % 2:
                tools.reverse()
            got = {tool: _sync_dump(work, mib, tool) for tool in tools}
            f = work / "raw.img"
            try:
                warm_memory()
                run_child(["sync"])
                _, out = run_child([binary("rawio"), "write", str(f), str(mib), "fsync"])
            finally:
                f.unlink(missing_ok=True)
            if i:
                raw.procsnap.append(got["procsnap"])
                raw.baseline.append(float(out))
                if _CRIU:
                    cmp.procsnap.append(got["procsnap"])
                    cmp.baseline.append(got["criu"])
        rows += [raw] + ([cmp] if _CRIU else [])
    return rows


def _sync_dump(work: Path, mib: int, tool: Tool) -> float:
    """One dump of a fresh ``mem`` target that waits for the disk: its wall
    time (criu's: ``criu dump`` + ``sync``, as a user without --sync would)."""
    d = work / f"sync-images-{tool}"
    shutil.rmtree(d, ignore_errors=True)
    pid = start(work, "mem", str(mib))
    try:
        warm_memory()
        run_child(["sync"])      # nothing dirty of ours before the clock
        if tool == "procsnap":
            t, _ = run_cli(["dump", "-t", str(pid), "-D", str(d), "--sync"],
                           f"{mib} MiB anon: CLI dump --sync")
        else:
            t = criu_dump(pid, d) + run_child(["sync"])[0]
        wait_gone(pid)
        OURS.discard(pid)
        got = images_size(d, "pages-")
        if got < mib * MIB:
            raise ChildError(f"{tool}: {mib} MiB dumped into {got} bytes of pages")
        return t
    finally:
        kill_ours(pid)
        shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------ memcached ----
#
# tests/integration/test_servers.py's memcached test, timed: memcached
# with 4 worker threads and 10,000 keys set over one connection the bench
# holds (a live client outside the tree), dumped with --tcp-established
# and restored; the round counts only if that same connection then reads
# every key back and sets more.

MEMCACHED = shutil.which("memcached") or "/usr/bin/memcached"
MEMCACHED_KEYS = {f"key{i}": f"value-{i}-{'x' * (i % 50)}".encode() for i in range(10000)}


def _memcache(port: int) -> Any:
    """tests/servers.py's memcached client (the one test_servers.py uses)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from servers import Memcache
    return Memcache(port)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def _rounds(runs: int, cmp: bool, one_round: Callable[[Tool], Any], failed: list[str],
            rows: list[Row]) -> Iterator[dict[Tool, Any]]:
    """The rounds of a case that runs procsnap and, with --criu, criu in
    the same rounds: each round's results by tool, alternating which goes
    first, round 0 (warming caches) not yielded.  criu failing once is not
    asked again (its error appended to ``failed``); procsnap meeting state
    it does not support ends the case with the rows so noted."""
    for i in range(runs + 1):
        tools: list[Tool] = ["procsnap", "criu"] if cmp and not failed else ["procsnap"]
        if i % 2:
            tools.reverse()
        got: dict[Tool, Any] = {}
        for tool in tools:
            try:
                got[tool] = one_round(tool)
            except Exception as exc:
                if tool == "criu":
                    failed.append(" ".join(str(exc).split())[:200])
                    continue
                if is_unsupported(exc):
                    for r in rows:
                        r.note = f"{NOT_SUPPORTED} ({str(exc)[:60]}...)"
                    return
                raise
        if i:
            yield got


def case_memcached(work: Path, runs: int) -> list[Row]:
    """procsnap's CLI (start-up included) and, with --criu, the criu binary
    in the same rounds, each on a memcached of its own, alternating which
    goes first; round 0 warms caches.  Without --criu the rows show
    ``python3 -c pass`` for scale (no target)."""
    what = "memcached 4 threads, 10,000 keys, live client"
    if not os.path.exists(MEMCACHED):
        return [Row(what, "s", note="not installed: memcached")]
    cmp = _CRIU is not None
    base = "criu 4.2" if cmp else "python3 -c pass"
    target = 2.0 if cmp else None
    dump = Row(f"{what}: CLI dump", "s", baseline_name=base, target=target)
    rest = Row(f"{what}: CLI restore", "s", baseline_name=base, target=target)
    both = Row(f"{what}: both", "s", baseline_name=base, target=target)
    rows = [dump, rest, both]
    failed: list[str] = []
    for got in _rounds(runs, cmp, lambda tool: _memcached_round(work, tool), failed, rows):
        t_d, t_r = got["procsnap"]
        dump.procsnap.append(t_d)
        rest.procsnap.append(t_r)
        both.procsnap.append(t_d + t_r)
        if not cmp:
            t_pass = run_child([sys.executable, "-c", "pass"])[0]
            for r in rows:
                r.baseline.append(t_pass)
        elif "criu" in got:
            c_d, c_r = got["criu"]
            dump.baseline.append(c_d)
            rest.baseline.append(c_r)
            both.baseline.append(c_d + c_r)
    if failed:
        for r in rows:
            r.baseline.clear()
            r.baseline_name = ""
            r.target = None
        rows.append(Row(f"{what}: criu 4.2", "s", note=f"failed: {failed[0][:100]}"))
    return rows


def _memcached_round(work: Path, tool: Tool) -> tuple[float, float]:
    """Start a memcached, fill it over a connection the bench keeps, dump
    it with --tcp-established and restore it with ``tool``; check the
    restored one through the same connection; kill it and remove the
    network lock if one is left.  (dump, restore) wall times."""
    d = work / f"memcached-{tool}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    port = _free_port()
    # -u root, not test_servers.py's nobody: criu 4.2 cannot read the
    # rlimits of a task of another uid here (prlimit: EPERM), procsnap can
    p = subprocess.Popen([MEMCACHED, "-u", "root", "-t", "4", "-l", "127.0.0.1",
                          "-p", str(port), "-U", "0", "-m", "64"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True)
    pid = p.pid
    OURS.add(pid)
    client = None
    try:
        _going_on(lambda: _listening(port), f"{tool}: memcached to listen", 30)
        threads = len(os.listdir(f"/proc/{pid}/task"))
        client = _memcache(port)
        client.set_many(MEMCACHED_KEYS)
        if client.stat("curr_items") != "10000":
            raise ChildError(f"{tool}: memcached holds {client.stat('curr_items')} items")
        if tool == "procsnap":
            t_d, _ = run_cli(["dump", "-t", str(pid), "-D", str(d), "--tcp-established"],
                             "memcached: CLI dump")
        else:
            t_d = _criu(["dump", "-t", str(pid), "-D", str(d), "-o", "dump.log",
                         "--tcp-established"], d)
        wait_gone(pid)
        if tool == "procsnap":
            t_r, _ = run_cli(["restore", "-D", str(d), "-d", "--tcp-established"],
                             "memcached: CLI restore")
        else:
            t_r = _criu(["restore", "-D", str(d), "-d", "-o", "restore.log",
                         "--tcp-established", "--pidfile", str(d / "pid")], d)
            if int((d / "pid").read_text()) != pid:
                raise ChildError(f"criu restored memcached {pid} as {(d / 'pid').read_text()}")
        # the round counts only if memcached goes on, all of it, on the same connection
        if len(os.listdir(f"/proc/{pid}/task")) != threads:
            raise ChildError(f"{tool}: memcached restored with "
                             f"{len(os.listdir(f'/proc/{pid}/task'))} threads of {threads}")
        if client.get_many(list(MEMCACHED_KEYS)) != MEMCACHED_KEYS:
            raise ChildError(f"{tool}: the restored memcached lost keys")
        more = {f"more{i}": f"later-{i}".encode() for i in range(100)}
        client.set_many(more)
        if client.get_many(list(more)) != more or client.stat("curr_items") != "10100":
            raise ChildError(f"{tool}: the restored memcached does not take new keys")
        return t_d, t_r
    finally:
        if client is not None:
            client.close()
        kill_ours(pid)
        _unlock(d, pid, port)
        shutil.rmtree(d, ignore_errors=True)


def _unlock(d: Path, pid: int, port: int) -> None:
    """Remove a network lock a dump of ``pid`` left (a failed restore
    keeps it for a retry): procsnap's nftables table ``CRIU-procsnap_PID``,
    criu's table named by the run id in its inventory (its nftables
    method), criu's iptables rules (its default method) for our port.
    Nothing else: other tables and rules are not ours.  Says so on stderr
    when a tool left a lock after a successful restore."""
    tables = [f"CRIU-procsnap_{pid}"]
    if (d / "inventory.img").exists():
        try:
            from procsnap import images
            run_id = images.read_one(str(d), "inventory").dump_criu_run_id
            if run_id:
                tables.append(f"CRIU-{run_id}")
        except Exception:
            pass
    listed = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    for line in listed.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] in tables:
            print(f"bench: removing network lock table {parts[1]} {parts[2]}", file=sys.stderr)
            subprocess.run(["nft", "delete", "table", parts[1], parts[2]], capture_output=True)
    for chain in ("INPUT", "OUTPUT"):
        rules = subprocess.run(["iptables", "-w", "-S", chain], capture_output=True,
                               text=True).stdout
        for rule in rules.splitlines():
            words = rule.split()
            ports = {words[i + 1] for i, w in enumerate(words[:-1]) if w in ("--sport", "--dport")}
            if words[:2] == ["-A", chain] and str(port) in ports:
                print(f"bench: removing network lock rule {rule}", file=sys.stderr)
                subprocess.run(["iptables", "-w", "-D", *words[1:]], capture_output=True)


# ------------------------------------------------------------ containers ----
#
# The containers are tests/containers.py's, the ones test_lxc.py and
# test_runc.py check: one copy of the set-up and clean-up.

@dataclass
class ContainerRound:
    dump: float        # wall time of the runtime's checkpoint command
    restore: float     # wall time of its restore command
    frozen: float      # the tool's stats-dump frozen_time
    start: float       # wall time of the runtime's start of that container


def _containers() -> Any:
    """tests/containers.py (it imports tests/helpers.py, no pytest)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import containers
    return containers


def _frozen(work_dir: Path) -> float:
    """frozen_time of the stats-dump a dump left there (procsnap's or
    criu's: the same image, read with procsnap's own reader)."""
    from procsnap import images
    return float(images.read_one(str(work_dir), "stats").dump.frozen_time) / 1e6


def _criu_as_criu(work: Path) -> Path:
    """A directory whose ``criu`` is the --criu binary (LXC runs the criu
    first on PATH)."""
    assert _CRIU is not None
    d = work / "criu-4-bin"
    d.mkdir(exist_ok=True)
    if not (d / "criu").exists():
        (d / "criu").symlink_to(_CRIU)
    return d


def _container_rows(what: str, runs: int, start_name: str,
                    one_round: Callable[[Tool], ContainerRound],
                    dump_name: str, restore_name: str) -> list[Row]:
    """procsnap (and criu with --criu) through a runtime, one fresh
    container per tool per round, alternating which tool goes first; round
    0 warms caches (.pyc, page cache) and is not counted.  With --criu the
    rows are procsnap/CRIU against 1.5x (issues 9 and 11); without, the
    runtime's own start of the same container is shown for scale, with no
    target."""
    cmp = _CRIU is not None
    base = "criu 4.2" if cmp else start_name
    target = 1.5 if cmp else None
    dump = Row(f"{what}: {dump_name}", "s", baseline_name=base, target=target)
    rest = Row(f"{what}: {restore_name}", "s", baseline_name=base, target=target)
    both = Row(f"{what}: both", "s", baseline_name=base, target=target)
    frozen = Row(f"{what}: frozen in dump (stats-dump)", "s",
                 baseline_name="criu 4.2" if cmp else "", target=target)
    rows = [dump, rest, both, frozen]
    failed: list[str] = []
    for got in _rounds(runs, cmp, one_round, failed, rows):
        p = got["procsnap"]
        dump.procsnap.append(p.dump)
        rest.procsnap.append(p.restore)
        both.procsnap.append(p.dump + p.restore)
        frozen.procsnap.append(p.frozen)
        if not cmp:
            for r in (dump, rest, both):
                r.baseline.append(p.start)
        elif "criu" in got:
            c = got["criu"]
            dump.baseline.append(c.dump)
            rest.baseline.append(c.restore)
            both.baseline.append(c.dump + c.restore)
            frozen.baseline.append(c.frozen)
    if failed:
        for r in rows:
            r.baseline.clear()
            r.baseline_name = ""
        rows.append(Row(f"{what}: criu 4.2", "s", note=f"failed: {failed[0]}"))
    return rows


def case_container(work: Path, runs: int) -> list[Row]:
    ct = _containers()
    # the procsnap wrapper's interpreter runs with its .pyc (child_env's reason)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    rows: list[Row] = []
    missing = ct.lxc_missing()
    if missing:
        rows.append(Row("LXC busybox+lxcfs", "s", note="not installed: " + ", ".join(missing)))
    else:
        rows += _container_rows("LXC busybox+lxcfs", runs, "lxc-start",
                                lambda tool: _lxc_round(ct, work, tool),
                                "lxc-checkpoint -s", "lxc-checkpoint -r")
    missing = ct.runc_missing()
    if missing:
        rows.append(Row("runc busybox", "s", note="not installed: " + ", ".join(missing)))
    else:
        with ct.runc_bundle() as r:
            rows += _container_rows("runc busybox", runs, "runc run -d",
                                    lambda tool: _runc_round(ct, r, work, tool),
                                    "runc checkpoint", "runc restore -d")
    return rows


def _lxc_round(ct: Any, work: Path, tool: Tool) -> ContainerRound:
    """lxc-checkpoint -s then -r of a fresh container (test_lxc's, except
    what CRIU 4.2 cannot restore: the template's binds of the /lib and
    /lib64 symlinks, and lxcfs files held open by the init), with ``tool``
    first on PATH as criu."""
    with ct.lxc_container(ct.LXC_PLAIN_COUNTER, symlink_binds=False) as c:
        c.env.pop("PYTHONDONTWRITEBYTECODE", None)
        if tool == "criu":
            c.env["PATH"] = f"{_criu_as_criu(work)}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        d = c.base / "images"
        old = c.pid()

        def step(flag: str, log: str) -> float:
            t = time.monotonic()
            res = c.lxc("lxc-checkpoint", flag, "-D", d, check=False)
            wall = time.monotonic() - t
            if res.returncode:
                tail = (d / log).read_text(errors="replace").strip().splitlines()[-3:] \
                    if (d / log).exists() else []
                raise ChildError(f"{tool}: lxc-checkpoint {flag}: exit {res.returncode}: "
                                 + " | ".join(tail or [res.stderr.strip()[-300:]]))
            return wall

        t_d = step("-s", "dump.log")
        if c.state() != "STOPPED":
            raise ChildError(f"{tool}: the container is {c.state()} after lxc-checkpoint -s")
        # the dumped init's zombie comes to us (subreaper): its pid is to be free
        wait_gone(old)
        last = c.numbers()[-1]
        t_r = step("-r", "restore.log")
        _going_on(lambda: c.state() == "RUNNING" and c.numbers()[-1] >= last + 3,
                  f"{tool}: the restored LXC container's counter")
        return ContainerRound(t_d, t_r, _frozen(d), c.start_time)


def _runc_round(ct: Any, r: Any, work: Path, tool: Tool) -> ContainerRound:
    """runc checkpoint then restore -d of a fresh container of test_runc's
    bundle, with ``tool`` as runc's --criu; its own --work-path (where the
    stats-dump is left: runc's default is inside the state it deletes)."""
    cid = r.id(f"{tool}{len(r.ids)}")
    r.criu = Path(_CRIU or "") if tool == "criu" else r.base / "criu-bin" / "criu"
    images, wd = r.base / f"images-{cid}", r.base / f"work-{cid}"
    wd.mkdir()
    try:
        r.start(cid)
        pid = r.pid(cid)
        t = time.monotonic()
        try:
            r.checkpoint(cid, images, "--work-path", wd)
        except AssertionError as exc:
            raise ChildError(f"{tool}: {exc}") from None
        t_d = time.monotonic() - t
        wait_gone(pid)
        n = len(r.numbers())
        t = time.monotonic()
        try:
            r.restore(cid, images, "--work-path", wd)
        except AssertionError as exc:
            raise ChildError(f"{tool}: {exc}") from None
        t_r = time.monotonic() - t
        _going_on(lambda: r.status(cid) == "running" and len(r.numbers()) >= n + 3,
                  f"{tool}: the restored runc container's counter")
        return ContainerRound(t_d, t_r, _frozen(wd), r.start_time)
    finally:
        r.runc("delete", "--force", cid, check=False, timeout=60)
        ct.remove_cgroups(cid)
        reap()
        shutil.rmtree(images, ignore_errors=True)
        shutil.rmtree(wd, ignore_errors=True)


def _going_on(cond: Callable[[], bool], what: str, timeout: float = 10) -> None:
    """A timed restore counts only if the container runs on after it."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise ChildError(f"timed out waiting for {what}")
        time.sleep(0.02)


CASES = ["memory", "small", "maps", "fds", "tree", "threads", "verify", "tcpq", "container",
         "sync", "memcached", "lazy"]


def main(argv: list[str]) -> int:
    global _BIN, _CRIU
    ap = argparse.ArgumentParser(prog="python3 -m bench", description=__doc__)
    ap.add_argument("-n", "--runs", type=int, default=3, help="rounds per case (median)")
    ap.add_argument("--only", nargs="+", choices=CASES, help="run only these cases")
    ap.add_argument("--mib", type=int, default=1024, help="size of the memory case")
    ap.add_argument("--json", metavar="FILE", help="also write the raw numbers here")
    ap.add_argument("--criu", metavar="PATH",
                    help="a criu binary: the memory, counter, container, sync and memcached cases also run "
                         "criu in the same rounds and print procsnap/CRIU ratios "
                         "(the bench builds nothing itself)")
    a = ap.parse_args(argv)
    if a.criu:
        _CRIU = os.path.abspath(a.criu)
        if not os.access(_CRIU, os.X_OK):
            print(f"bench: --criu {a.criu}: not an executable", file=sys.stderr)
            return 1
    if os.geteuid() != 0:
        print("bench: must run as root (ptrace, clone3 with set_tid)", file=sys.stderr)
        return 1
    sys.path.insert(0, str(ROOT))
    subreaper()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, f: sys.exit(128 + s))
    work = Path(tempfile.mkdtemp(prefix="procsnap-bench.", dir=os.environ.get("BENCH_DIR")))
    rows: list[Row] = []
    cases = a.only or CASES
    t0 = time.monotonic()
    try:
        _BIN = compile_targets()
        for case in cases:
            print(f"bench: {case} ...", file=sys.stderr, flush=True)
            if case == "memory":
                rows += case_memory(work, a.runs, a.mib)
            elif case == "small":
                rows += case_small(work, a.runs)
            elif case == "maps":
                rows += case_scale(work, a.runs, "maps", "mappings", 1000, 10000,
                                   lambda n: [str(n)])
            elif case == "fds":
                rows += case_scale(work, a.runs, "fds", "open files", 1000, 10000,
                                   lambda n: [".", str(n)])
            elif case == "tree":
                rows += case_scale(work, a.runs, "tree", "process tree", 20, 200,
                                   lambda n: [str(n)])
            elif case == "verify":
                rows += case_verify(work, a.runs, a.mib)
            elif case == "tcpq":
                rows += case_tcpq(work, a.runs)
            elif case == "container":
                rows += case_container(work, a.runs)
            elif case == "sync":
                rows += case_sync(work, a.runs, sorted({256, a.mib}))
            elif case == "memcached":
                rows += case_memcached(work, a.runs)
            elif case == "lazy":  # bench/lazy.py
                from bench.lazy import case_lazy
                rows += case_lazy(work, a.runs, a.mib)
            elif case == "threads":
                rows += case_scale(work, a.runs, "threads", "threads", 8, 64,
                                   lambda n: [str(n)])
    finally:
        kill_all()
        _adopted_cleanup()
        shutil.rmtree(work, ignore_errors=True)
        if _BIN is not None:
            shutil.rmtree(_BIN, ignore_errors=True)
    rows += rss_rows()
    print_table(rows, a.runs)
    print(f"({time.monotonic() - t0:.0f} s)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump([r.__dict__ for r in rows], f, indent=1)
    bad = [r for r in rows if not r.note and r.target is not None and
           ((r.ratio() if r.baseline and not r.absolute else r.value()) or 0) > r.target]
    return 1 if bad else 0


def rss_rows() -> list[Row]:
    """One row per kind of procsnap run the cases made (its largest peak
    RSS), and the largest of all: issue 16's "<= 100 MiB throughout"."""
    rows = [Row(f"procsnap peak RSS: {what}", "MiB", procsnap=[max(v)])
            for what, v in PEAK_RSS.items()]
    if PEAK_RSS:
        rows.append(Row(f"procsnap peak RSS: max of all {sum(map(len, PEAK_RSS.values()))} runs",
                        "MiB", procsnap=[max(map(max, PEAK_RSS.values()))], target=100))
    return rows


def _adopted_cleanup() -> None:
    """Kill what procsnap restored and we adopted as subreaper.

    Only our own children qualify: processes whose parent is us are ones we
    started or ones procsnap (run by us) restored.
    """
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me:
            OURS.add(int(name))
            kill_ours(int(name))
    reap()
