"""Test harness helpers for procsnap (no pytest imports here).

Modelled on CRIU's ``test/zdtm.py``: a target sets up state, says "ready",
gets checkpointed and restored, then checks itself and prints PASS/FAIL; the
harness also compares what is visible from outside (maps, fds, creds, ...)
before the dump and after the restore.

Rules this module keeps:

* Only processes that the tests started (or that procsnap restored for them)
  are ever signalled, and only after checking they are still ours.
* Nothing here traces a process; reading /proc is all we do from outside.
* The test process is a child subreaper, so processes that ``procsnap
  restore -d`` leaves behind become our children and are reaped at once.
"""
from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

REPO_ROOT = Path(__file__).resolve().parent.parent
TARGETS_DIR = Path(__file__).resolve().parent / "targets"

PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37

_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong, ctypes.c_ulong]
_libc.prctl.restype = ctypes.c_int


# --------------------------------------------------------------------------
# subreaper and reaping
# --------------------------------------------------------------------------

def set_child_subreaper() -> None:
    """Make this process the subreaper of everything it (indirectly) forks."""
    if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(e)}")


def is_child_subreaper() -> bool:
    val = ctypes.c_int(0)
    prctl = _libc.prctl
    if prctl(PR_GET_CHILD_SUBREAPER, ctypes.addressof(val), 0, 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return val.value == 1


# pid -> raw wait status of the most recent child of that pid we reaped.
REAPED: dict[int, int] = {}


def reap() -> list[tuple[int, int]]:
    """waitpid(-1, WNOHANG) until nothing is left to reap.

    Every status is recorded in REAPED so a later ``wait_exit`` still finds
    it.  Returns what was reaped in this call.
    """
    got: list[tuple[int, int]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        REAPED[pid] = status
        got.append((pid, status))
    return got


def proc_exists(pid: int) -> bool:
    """True while /proc/PID exists (a zombie still counts)."""
    return os.path.exists(f"/proc/{pid}")


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    """Wait until /proc/PID is gone, reaping our own children meanwhile.

    A same-PID restore right after a kill fails with EEXIST until the zombie
    is reaped; as subreaper we reap it ourselves instead of waiting for init.
    """
    deadline = time.monotonic() + timeout
    while True:
        reap()
        if not proc_exists(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def wait_exit(pid: int, timeout: float = 10.0) -> int | None:
    """Wait for our child PID to exit; return its raw wait status.

    Returns None when it is gone but was not our child (status unknown), and
    raises TimeoutError when it is still there after ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        reap()
        if pid in REAPED:
            return REAPED.pop(pid)
        if not proc_exists(pid):
            return None
        if time.monotonic() >= deadline:
            raise TimeoutError(f"pid {pid} still running after {timeout}s")
        time.sleep(0.01)


def exit_code(status: int) -> int:
    """Raw wait status -> shell-style code (128+sig for a signal death)."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


# --------------------------------------------------------------------------
# reading /proc (read-only; never signals, never traces)
# --------------------------------------------------------------------------

def read_status(pid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, val = line.partition(":")
            out[key] = val.strip()
    return out


def proc_ppid(pid: int) -> int | None:
    try:
        return int(read_status(pid)["PPid"])
    except (FileNotFoundError, ProcessLookupError, KeyError):
        return None


def proc_cmdline(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]


def is_untouched(pid: int) -> tuple[bool, str]:
    """A process we did not stop: running or sleeping, not traced."""
    st = read_status(pid)
    state = st.get("State", "?")
    tracer = st.get("TracerPid", "?")
    ok = state[:1] not in ("t", "T", "Z", "X") and tracer == "0"
    return ok, f"State={state!r} TracerPid={tracer}"


def children_of(pid: int) -> set[int]:
    """Every live pid whose parent is PID (read from /proc, no races fatal)."""
    kids: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # comm may hold spaces or parens: fields restart after the last ')'
        rest = stat[stat.rfind(")") + 2:].split()
        if len(rest) > 2 and int(rest[1]) == pid and rest[0] not in ("Z", "X"):
            kids.add(int(name))
    return kids


def unused_pid() -> int:
    """A pid that no process or thread holds right now (read-only search)."""
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    for pid in range(pid_max - 1, 300, -1):
        if not proc_exists(pid) and not os.path.exists(f"/proc/{pid}/task"):
            return pid
    raise RuntimeError("no free pid found")


_INODE_LINK = re.compile(r"^(pipe|socket|anon_inode:\[[^\]]*\]|[a-z_]+):\[(\d+)\]$")


def _norm_link(target: str) -> str:
    # pipe:[1234] / socket:[1234] carry an inode that a restore may change
    m = _INODE_LINK.match(target)
    if m:
        return f"{m.group(1)}:[]"
    return target


def read_fds(pid: int, volatile_pos: Iterable[int] = ()) -> dict[int, tuple]:
    """fd -> (readlink target, pos, flags in octal) from /proc/PID/fd[info]."""
    volatile = set(volatile_pos)
    table: dict[int, tuple] = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        fd = int(name)
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            info: dict[str, str] = {}
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    k, _, v = line.partition(":")
                    info[k.strip()] = v.strip()
        except FileNotFoundError:
            continue  # closed while we looked
        pos = None if fd in volatile else int(info.get("pos", "-1"))
        table[fd] = (_norm_link(link), pos, info.get("flags"))
    return table


def read_maps(pid: int) -> list[tuple]:
    """/proc/PID/maps as (start, end, perms, pgoff, dev, inode, path).

    dev/inode are dropped for anonymous mappings (inode 0).  Adjacent entries
    that differ only by the split point (same perms, same file, contiguous
    offsets) are merged, as zdtm.py does: a restore may legitimately produce
    the same memory as one VMA where the original had two, or the reverse.
    """
    out: list[list] = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            perms, pgoff, dev, inode = parts[1], int(parts[2], 16), parts[3], int(parts[4])
            path = parts[5].strip() if len(parts) > 5 else ""
            if inode == 0:
                dev = ""
            if out:
                p = out[-1]
                file_contig = (inode == 0 and p[5] == 0) or (
                    p[5] == inode and p[3] + (p[1] - p[0]) == pgoff)
                if (p[1] == lo and p[2] == perms and p[4] == dev and p[6] == path
                        and file_contig):
                    p[1] = hi
                    continue
            if inode == 0:
                pgoff = 0  # pgoff of anonymous memory is its address: noise
            out.append([lo, hi, perms, pgoff, dev, inode, path])
    return [tuple(m) for m in out]


def format_map(m: tuple) -> str:
    return f"{m[0]:x}-{m[1]:x} {m[2]} {m[3]:x} {m[4]} {m[5]} {m[6]}"


CRED_KEYS = ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd",
             "CapAmb", "NoNewPrivs")
SIGMASK_KEYS = ("SigBlk", "SigIgn", "SigCgt")


def outside_view(pid: int, volatile_fds: Iterable[int] = ()) -> dict[str, object]:
    """What zdtm.py compares from outside, for one process.

    ``volatile_fds``: fds whose file position moves while the target runs
    (e.g. the counter's output file); their pos is not compared.
    """
    st = read_status(pid)
    with open(f"/proc/{pid}/limits") as f:
        limits = f.read()
    with open(f"/proc/{pid}/comm") as f:
        comm = f.read().strip()
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    rest = stat[stat.rfind(")") + 2:].split()
    return {
        "maps": read_maps(pid),
        "fds": read_fds(pid, volatile_fds),
        "cmdline": proc_cmdline(pid),
        "comm": comm,
        "pgid_sid": (int(rest[2]), int(rest[3])),
        "cwd": os.readlink(f"/proc/{pid}/cwd"),
        "exe": os.readlink(f"/proc/{pid}/exe"),
        "root": os.readlink(f"/proc/{pid}/root"),
        "limits": limits,
        "creds": {k: st.get(k) for k in CRED_KEYS},
        "umask": st.get("Umask"),
        "sigmasks": {k: st.get(k) for k in SIGMASK_KEYS},
    }


def diff_views(before: dict, after: dict) -> list[str]:
    """Human-readable differences between two outside_view() results."""
    problems: list[str] = []
    for key in before:
        a, b = before[key], after.get(key)
        if a == b:
            continue
        if key == "maps":
            sa, sb = set(a), set(b)
            for m in sorted(sa - sb):
                problems.append(f"maps: lost   {format_map(m)}")
            for m in sorted(sb - sa):
                problems.append(f"maps: gained {format_map(m)}")
            if sa == sb:
                problems.append("maps: same set, different order")
        elif key == "fds":
            for fd in sorted(set(a) | set(b)):
                if a.get(fd) != b.get(fd):
                    problems.append(f"fd {fd}: before {a.get(fd)} after {b.get(fd)}")
        elif isinstance(a, dict):
            for k in a:
                if a[k] != b.get(k):
                    problems.append(f"{key}.{k}: before {a[k]!r} after {b.get(k)!r}")
        else:
            problems.append(f"{key}: before {a!r} after {b!r}")
    return problems


def assert_same_view(before: dict, after: dict, what: str = "") -> None:
    problems = diff_views(before, after)
    assert not problems, (f"outside view changed {what}:\n  " + "\n  ".join(problems))


def sig_fields(pid: int) -> dict[str, str]:
    st = read_status(pid)
    return {k: st[k] for k in ("SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")}


# --------------------------------------------------------------------------
# targets: compile and run
# --------------------------------------------------------------------------

_COMPILED: dict[str, Path] = {}


def bin_dir() -> Path:
    d = TARGETS_DIR / "bin"
    try:
        d.mkdir(exist_ok=True)
        if os.access(d, os.W_OK):
            return d
    except OSError:
        pass
    d = Path(tempfile.gettempdir()) / f"procsnap-targets-{os.getuid()}"
    d.mkdir(exist_ok=True)
    return d


def compile_target(name: str) -> Path:
    """Compile tests/targets/NAME.c with gcc (-O1 -g), once per session.

    A first line holding ``procsnap-cflags: FLAGS`` adds FLAGS (criu_tiny.c
    is static and without libc, so it does not take -lm); one holding
    ``procsnap-libs: LIBS`` links LIBS after the source (libcriu_client.c)."""
    if name in _COMPILED:
        return _COMPILED[name]
    src = TARGETS_DIR / f"{name}.c"
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such target source")
    out = bin_dir() / name
    tmp = out.with_name(f".{name}.{os.getpid()}.tmp")
    first = src.read_text().split("\n", 1)[0]
    extra = first.split("procsnap-cflags:", 1)[1].split() if "procsnap-cflags:" in first else []
    libs = [] if "-nostdlib" in extra else ["-lm"]
    if "procsnap-libs:" in first:
        libs = first.split("procsnap-libs:", 1)[1].replace("*/", "").split() + libs
    cmd = ["gcc", "-O1", "-g", "-Wall", "-Werror", *extra, "-o", str(tmp), str(src), *libs]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise RuntimeError("gcc not found: install it (apt-get install -y gcc)") from None
    if res.returncode != 0:
        raise RuntimeError(f"compiling {src} failed:\n{res.stderr}")
    os.replace(tmp, out)
    _COMPILED[name] = out
    return out


# The CRIU-written fixtures that are restored (tests/fixtures/criu-4.2,
# scripts/criu-fixtures.py) name their executable, cwd, output files and
# ghost file by absolute path, and the executable's build-id: the same
# binary must be at the same place when a test restores them.  It is built
# here from tests/targets/criu_tiny.c, copied in and compiled from inside
# this directory without -g, so nothing of the checkout's path goes into
# it: the same source and gcc give the same bytes and build-id.
CRIU_TINY_DIR = Path("/tmp/procsnap-criu-tiny")


def criu_tiny_fixed() -> Path:
    """CRIU_TINY_DIR/criu_tiny, built (once per session) as the fixtures'
    binary was; the directory and binary modes are fixed too (a restore
    compares them with the images)."""
    if "criu_tiny@fixed" in _COMPILED:
        return _COMPILED["criu_tiny@fixed"]
    d = CRIU_TINY_DIR
    d.mkdir(mode=0o755, exist_ok=True)
    os.chmod(d, 0o755)
    src = TARGETS_DIR / "criu_tiny.c"
    first = src.read_text().split("\n", 1)[0]
    extra = first.split("procsnap-cflags:", 1)[1].split()
    tmp = f".criu_tiny.{os.getpid()}"
    shutil.copyfile(src, d / f"{tmp}.c")
    # the source is compiled under its final name (the file name is in the
    # binary's symbol table)
    os.replace(d / f"{tmp}.c", d / "criu_tiny.c")
    res = subprocess.run(["gcc", "-O1", "-Wall", "-Werror", *extra, "-o", tmp, "criu_tiny.c"],
                         capture_output=True, text=True, timeout=120, cwd=d)
    if res.returncode != 0:
        raise RuntimeError(f"compiling {src} in {d} failed:\n{res.stderr}")
    os.chmod(d / tmp, 0o755)
    os.replace(d / tmp, d / "criu_tiny")
    _COMPILED["criu_tiny@fixed"] = d / "criu_tiny"
    return d / "criu_tiny"


def target_argv(name: str, *args: str) -> list[str]:
    """argv for a target: "NAME" compiles NAME.c, "NAME.py" runs under python3."""
    if name.endswith(".py"):
        py = TARGETS_DIR / name
        if not py.exists():
            raise FileNotFoundError(f"{py}: no such target")
        return [sys.executable, str(py), *args]
    return [str(compile_target(name)), *args]


def read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return ""


def wait_for(cond: Callable[[], bool], timeout: float, what: str,
             interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Target:
    """One target process and everything the test needs to know about it."""

    name: str
    pid: int
    argv: list[str]
    workdir: Path
    out: Path          # its stdout file
    err: Path          # its stderr file
    cmdline: list[str] = field(default_factory=list)

    def output(self) -> str:
        return read_text(self.out)

    def lines(self) -> list[str]:
        return self.output().splitlines()

    def wait_line(self, pattern: str, timeout: float = 15.0, count: int = 1) -> str:
        """Wait until ``count`` stdout lines match the regex; return the last."""
        rx = re.compile(pattern)

        def found() -> bool:
            return sum(1 for ln in self.lines() if rx.search(ln)) >= count

        try:
            wait_for(found, timeout, f"{self.name} pid {self.pid} to print {pattern!r}")
        except TimeoutError as e:
            raise AssertionError(
                f"{e}\n--- stdout ---\n{self.output()}\n--- stderr ---\n"
                f"{read_text(self.err)}\nalive={proc_exists(self.pid)}") from None
        return [ln for ln in self.lines() if rx.search(ln)][count - 1]

    def wait_ready(self, timeout: float = 15.0) -> None:
        self.wait_line(r"^ready", timeout)

    def alive(self) -> bool:
        if not proc_exists(self.pid):
            return False
        try:
            return read_status(self.pid)["State"][:1] not in ("Z", "X")
        except (FileNotFoundError, ProcessLookupError):
            return False

    def is_ours(self) -> bool:
        """Still the process we started or restored (not a recycled pid)."""
        if not proc_exists(self.pid):
            return False
        if proc_ppid(self.pid) == os.getpid():
            return True
        # restored under another parent: same pid and same non-empty cmdline
        return bool(self.cmdline) and proc_cmdline(self.pid) == self.cmdline

    def signal(self, sig: int) -> None:
        assert self.is_ours(), f"pid {self.pid} is not our {self.name} any more"
        os.kill(self.pid, sig)

    def verdict(self, timeout: float = 15.0) -> str:
        """zdtm-style end: SIGTERM asks the target to check itself and exit."""
        self.signal(signal.SIGTERM)
        line = self.wait_line(r"^(PASS|FAIL)", timeout)
        return line


class TargetFactory:
    """Starts targets and cleans up every pid it started or adopted."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.targets: list[Target] = []
        self._popens: list[subprocess.Popen] = []
        self._n = 0

    def start(self, name: str, *args: str, wait_ready: bool = True,
              env: dict[str, str] | None = None) -> Target:
        argv = target_argv(name, *args)
        self._n += 1
        out = self.workdir / f"{name}.{self._n}.out"
        err = self.workdir / f"{name}.{self._n}.err"
        with open(out, "wb") as fo, open(err, "wb") as fe:
            # its own session, as zdtm's test_daemon does: a dump without
            # --shell-job wants the session (and group) inside the tree
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fo,
                                 stderr=fe, close_fds=True, cwd=self.workdir,
                                 env=env, start_new_session=True)
        # Keep the Popen alive for the whole session so its __del__ never
        # queues a waitpid() on a pid that a restore may reuse; our reaper
        # collects the status instead.
        _KEEP_POPENS.append(p)
        OUR_PIDS.add(p.pid)
        t = Target(name=name, pid=p.pid, argv=argv, workdir=self.workdir,
                   out=out, err=err, cmdline=list(argv))
        self.targets.append(t)
        if wait_ready:
            t.wait_ready()
            t.cmdline = proc_cmdline(t.pid) or t.cmdline
        return t

    def adopt(self, pid: int, like: Target | None = None) -> None:
        """Record a pid procsnap restored for us, so teardown kills it."""
        REAPED.pop(pid, None)
        OUR_PIDS.add(pid)
        if like is not None and like.pid == pid:
            return  # already tracked under the same pid
        t = Target(name=like.name if like else "restored", pid=pid,
                   argv=like.argv if like else [], workdir=self.workdir,
                   out=like.out if like else self.workdir / "none",
                   err=like.err if like else self.workdir / "none",
                   cmdline=like.cmdline if like else (proc_cmdline(pid) or []))
        self.targets.append(t)

    def cleanup(self) -> list[str]:
        """SIGKILL and reap every tracked pid that is still ours."""
        notes: list[str] = []
        for t in self.targets:
            if t.is_ours():
                try:
                    os.kill(t.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                if not wait_gone(t.pid, 10):
                    notes.append(f"pid {t.pid} ({t.name}) did not go away")
        reap()
        return notes


_KEEP_POPENS: list[subprocess.Popen] = []
# every pid this run started or adopted: what it may find named after them
# on the host (a network lock table) is its own
OUR_PIDS: set[int] = set()


def start_under(targets: TargetFactory, wrapper: list[str], name: str, *args: str) -> Target:
    """Target NAME (see target_argv) run by ``WRAPPER`` -- ``unshare -fp
    ...``, which forks it as the init of a new pid namespace: returns the
    target; the wrapper, its parent, stays outside and is killed at
    teardown too."""
    tgt = target_argv(name, *args)
    argv = [*wrapper, *tgt]
    stem = Path(name).stem
    out = targets.workdir / f"{stem}.out"
    err = targets.workdir / f"{stem}.err"
    with open(out, "wb") as fo, open(err, "wb") as fe:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fo, stderr=fe,
                             close_fds=True, cwd=targets.workdir, start_new_session=True)
    _KEEP_POPENS.append(p)
    targets.targets.append(Target(wrapper[0], p.pid, argv, targets.workdir, out, err,
                                  proc_cmdline(p.pid) or argv))

    def child() -> int:
        try:
            with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
                kids = f.read().split()
        except FileNotFoundError:
            return 0
        return int(kids[0]) if kids else 0

    wait_for(lambda: child() != 0, 10, f"{wrapper[0]} to fork its child")
    t = Target(stem, child(), tgt, targets.workdir, out, err, tgt)
    targets.targets.append(t)
    t.wait_ready()
    return t


# --------------------------------------------------------------------------
# running procsnap
# --------------------------------------------------------------------------

def procsnap_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "procsnap", *map(str, args)]


def run_procsnap(*args: object, timeout: float = 60,
                 cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """Run the CLI; stdin is /dev/null, output captured as text."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    res = subprocess.run(procsnap_cmd(*map(str, args)), stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=timeout,
                         close_fds=True, cwd=cwd, env=env)
    reap()
    return res


def describe(res: subprocess.CompletedProcess) -> str:
    return (f"$ {' '.join(map(str, res.args))}\nexit {res.returncode}\n"
            f"--- stdout ---\n{res.stdout}\n--- stderr ---\n{res.stderr}")


def check_ok(res: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert res.returncode == 0, describe(res)
    return res


def assert_one_line_error(res: subprocess.CompletedProcess, *names: str) -> str:
    """Non-zero exit, exactly one stderr line, no traceback, naming one of NAMES.

    A name starting with ``re:`` is a regular expression.
    """
    assert res.returncode != 0, "expected failure\n" + describe(res)
    assert "Traceback" not in res.stderr, "traceback on stderr\n" + describe(res)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected exactly one stderr line, got {len(lines)}\n" + describe(res)
    line = lines[0]
    if names:
        def hit(n: str) -> bool:
            return bool(re.search(n[3:], line)) if n.startswith("re:") else n in line
        assert any(hit(n) for n in names), (
            f"error line does not name any of {names}\n" + describe(res))
    return line


# --------------------------------------------------------------------------
# counter output
# --------------------------------------------------------------------------

def read_numbers(path: Path) -> list[int]:
    """The counter file's complete lines as ints (a torn last line is dropped)."""
    text = read_text(path)
    lines = text.split("\n")
    if lines and lines[-1] != "":
        lines = lines[:-1]  # written but not yet newline-terminated
    nums = []
    for ln in lines:
        if ln == "":
            continue
        nums.append(int(ln))
    return nums


def check_continuity(nums: list[int], start: int = 1) -> None:
    """1, 2, 3, ... with no gap and no repeat; points at the first break."""
    assert nums, "counter file is empty"
    for i, n in enumerate(nums):
        expected = start + i
        if n != expected:
            ctx = nums[max(0, i - 3):i + 3]
            raise AssertionError(
                f"counter broken at line {i + 1}: expected {expected}, got {n} "
                f"(around: {ctx}; {len(nums)} lines)")


def wait_numbers(path: Path, at_least: int, timeout: float = 15.0) -> list[int]:
    wait_for(lambda: (read_numbers(path) or [0])[-1] >= at_least, timeout,
             f"{path} to reach {at_least}")
    return read_numbers(path)


def errno_name(e: int) -> str:
    return errno.errorcode.get(e, str(e))


# --------------------------------------------------------------------------
# shared by the integration tests
# --------------------------------------------------------------------------

def finish(t: Target, timeout: float = 30.0) -> None:
    """zdtm-style end: SIGTERM, expect PASS, and exit status 0 when we see it."""
    line = t.verdict(timeout)
    assert line == "PASS", f"{t.name} self-check: {line}\n--- stdout ---\n{t.output()}"
    status = wait_exit(t.pid, timeout)
    if status is not None:
        assert exit_code(status) == 0, f"{t.name} exited with {exit_code(status)}"


def tree_pids(root: int) -> list[int]:
    """root and every descendant, zombies included, parents first."""
    out, i = [root], 0
    seen = {root}
    while i < len(out):
        pid = out[i]
        i += 1
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    for x in f.read().split():
                        if int(x) not in seen:
                            seen.add(int(x))
                            out.append(int(x))
        except FileNotFoundError:
            pass
    return out


def kill_when(proc: subprocess.Popen, seen: Callable[[], bool], what: str,
              timeout: float = 30, interval: float = 0.002) -> None:
    """SIGKILL ``proc`` (a procsnap command) as soon as ``seen()`` is true --
    in the middle of its work -- and reap it; it is killed and reaped on
    any failure too.  Fails if the command ended before it could be killed."""
    try:
        wait_for(lambda: seen() or proc.poll() is not None, timeout, what, interval=interval)
        assert proc.poll() is None, f"the command ended before it could be killed ({what})"
        proc.kill()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def runs_untraced(pid: int, sig: int = signal.SIGUSR1) -> bool:
    """A restored target runs on its own: its handler of ``sig`` is in
    place (the restore sets it while the task is still traced) and no one
    traces it any more (the restore detached).  (The lazy tests and the
    bench's lazy case ask it by that signal as soon as this is true.)"""
    try:
        with open(f"/proc/{pid}/status") as f:
            st = dict(ln.split(":", 1) for ln in f.read().splitlines() if ":" in ln)
    except OSError:
        return False
    return int(st["TracerPid"]) == 0 and int(st["SigCgt"], 16) & (1 << (sig - 1)) != 0


def crit_decode(path: Path) -> dict:
    """Debian's crit (CRIU's own decoder, the test oracle) on one image."""
    import json
    import shutil

    crit = shutil.which("crit")
    assert crit is not None, ("crit not found: it is the test oracle for image files; "
                              "install Debian's criu package (apt-get install -y criu)")
    res = subprocess.run([crit, "decode", "-i", str(path)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, f"crit cannot decode {path.name}:\n{res.stderr}"
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def crit_decode_all(images: Path) -> dict[str, dict]:
    """Every image of a directory but pages-*.img (raw by design), by name."""
    return {p.name: crit_decode(p) for p in sorted(images.glob("*.img"))
            if not p.name.startswith("pages-")}


# --------------------------------------------------------------------------
# host state the tests make: named cgroup v1 hierarchies, cgroup2 controllers
# --------------------------------------------------------------------------

def named_hierarchies() -> set[str]:
    """The v1 hierarchies with a name (``name=X``) alive on the host: every
    task is in every hierarchy, so /proc/self/cgroup lists them all, mounted
    or not."""
    with open("/proc/self/cgroup") as f:
        return {line.split(":")[1][5:] for line in f
                if line.split(":")[1].startswith("name=")}


def mounted_named_hierarchies() -> set[str]:
    """Names of the v1 named hierarchies mounted somewhere in our mount namespace."""
    out = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            post = line.split(" - ", 1)[1].split()
            if post[0] == "cgroup":
                out |= {o[5:] for o in post[2].split(",") if o.startswith("name=")}
    return out


def mount_named_cgroup(mnt: Path, name: str) -> None:
    """Mount (making it if need be) the v1 hierarchy of no controller named NAME."""
    subprocess.run(["mount", "-t", "cgroup", "none", str(mnt), "-o", f"none,name={name}"],
                   check=True, timeout=30)


def remove_named_cgroup(mnt: Path, name: str, timeout: float = 10.0) -> None:
    """Remove the v1 hierarchy NAME mounted (only) at MNT: every cgroup below
    its root (tasks of ours still in one go to the root first), the mount,
    and the hierarchy itself.

    The kernel destroys a v1 hierarchy at the unmount of its last mount only
    if its root has no child cgroup then (cgroup_kill_sb); a cgroup removed
    with rmdir a moment before is still a child until its release, which
    runs later (RCU, a workqueue).  So an unmount right after the rmdir
    leaves the hierarchy alive, unmounted and empty, for good: every new
    task joins it (its name in /proc/self/cgroup), and criu's dump of a
    container then meets it.  Mounting it again and unmounting, once the
    children are released, destroys it: done until it is gone."""
    deadline = time.monotonic() + timeout
    while True:
        for sub in sorted(mnt.glob("*/**/"), key=lambda p: -len(p.parts)):
            for pid in (sub / "cgroup.procs").read_text().split():
                try:
                    (mnt / "cgroup.procs").write_text(pid)
                except OSError:
                    pass  # gone meanwhile
            sub.rmdir()
        subprocess.run(["umount", str(mnt)], check=True, timeout=30)
        for _ in range(5):
            if name not in named_hierarchies():
                return
            time.sleep(0.01)
        if time.monotonic() > deadline:
            raise AssertionError(f"cgroup hierarchy name={name} outlives its unmount")
        mount_named_cgroup(mnt, name)


CGROUP2_STATE = Path(tempfile.gettempdir()) / "procsnap-tests-cgroup2-subtree.json"


def _cgroup2_users(root: Path, update: Callable[[dict], None]) -> None:
    """Run UPDATE on the shared record of the test runs that use
    controllers of ROOT's cgroup.subtree_control, under a file lock: runs
    at the same time (or a run killed before its teardown) share it."""
    import fcntl
    import json
    with open(f"{CGROUP2_STATE}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            state = json.loads(CGROUP2_STATE.read_text())
        except (FileNotFoundError, ValueError):
            state = {}
        state = state if state.get("root") == str(root) else {"root": str(root)}
        state["users"] = [p for p in state.get("users", []) if proc_exists(p)]
        update(state)
        tmp = CGROUP2_STATE.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(CGROUP2_STATE)


def cgroup2_enable(root: Path, wanted: Iterable[str]) -> None:
    """Enable controllers WANTED in ROOT's cgroup.subtree_control for this
    run; ``cgroup2_release`` takes them back once no run uses them.

    The first user (no live run recorded) notes the controllers enabled
    before it, and the last one to leave restores exactly that: a run that
    finds a controller enabled by a concurrent run neither disables it
    under that run's feet nor leaves it enabled after both."""
    ctl = root / "cgroup.subtree_control"

    def enter(state: dict) -> None:
        # a run killed before its teardown left "before" with no live user:
        # it still holds, the controllers enabled now are that run's
        state.setdefault("before", ctl.read_text().split())
        have = ctl.read_text().split()
        add = [c for c in wanted if c not in have]
        if add:
            ctl.write_text(" ".join("+" + c for c in add))
        if os.getpid() not in state["users"]:
            state["users"].append(os.getpid())
    _cgroup2_users(root, enter)


def cgroup2_release(root: Path) -> None:
    """This run no longer uses the controllers it enabled (see cgroup2_enable)."""
    ctl = root / "cgroup.subtree_control"

    def leave(state: dict) -> None:
        state["users"] = [p for p in state["users"] if p != os.getpid()]
        if not state["users"] and "before" in state:
            _cgroup2_restore(ctl, state.pop("before"))
    _cgroup2_users(root, leave)


def _cgroup2_restore(ctl: Path, before: list[str]) -> None:
    extra = [c for c in ctl.read_text().split() if c not in before]
    if extra:
        ctl.write_text(" ".join("-" + c for c in extra))


# --------------------------------------------------------------------------
# what a test run may leave on the host
# --------------------------------------------------------------------------

OUR_PREFIXES = ("procsnap", "zdtm")


def stale_hierarchies(mine: bool = False) -> set[str]:
    """Named v1 hierarchies of ours (procsnap*, zdtm*; with MINE, only
    those named with this run's pid) alive but mounted nowhere in our mount
    namespace: left by a test (see remove_named_cgroup)."""
    return {n for n in named_hierarchies() - mounted_named_hierarchies()
            if n.startswith(OUR_PREFIXES) and (not mine or str(os.getpid()) in n)}


def remove_stale_hierarchy(name: str) -> None:
    """Destroy an unmounted named hierarchy: mounted on a temporary dir,
    emptied and unmounted by remove_named_cgroup."""
    mnt = Path(tempfile.mkdtemp(prefix="procsnap-stale-cg-"))
    try:
        mount_named_cgroup(mnt, name)
        remove_named_cgroup(mnt, name)
    finally:
        mnt.rmdir()


def mounts_under(base: Path) -> set[str]:
    """Mount points at or below BASE (a test's temporary dirs)."""
    out = set()
    prefix = str(base).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if (mp + "/").startswith(prefix):
                out.add(mp)
    return out


def _lines(argv: list[str]) -> list[str]:
    if shutil.which(argv[0]) is None:
        return []
    res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    return res.stdout.splitlines() if res.returncode == 0 else []


def host_leftovers(base: Path) -> set[str]:
    """State of ours on the host, one line each: named cgroup hierarchies
    (unmounted), mounts below BASE, nft tables, network namespaces (ip
    netns), iptables rules of a network lock (criu's mark 0xc114, its CRIU
    chain), cgroups named procsnap*, and this run's hold on cgroup2
    controllers.  Names are procsnap*, CRIU*, zdtm*."""
    out = {f"cgroup hierarchy name={n}, unmounted" for n in stale_hierarchies()}
    out |= {f"mount {m}" for m in mounts_under(base)}
    out |= {f"nft {t}" for t in _lines(["nft", "list", "tables"])
            if "procsnap" in t or "CRIU" in t or "zdtm" in t}
    out |= {f"netns {n.split()[0]}" for n in _lines(["ip", "netns", "list"])
            if n.startswith(OUR_PREFIXES)}
    for cmd in ("iptables", "ip6tables"):
        out |= {f"{cmd} {r}" for r in _lines([cmd, "-w", "-S"])
                if "0xc114" in r or " CRIU" in r}
    out |= {f"cgroup {d}" for d in Path("/sys/fs/cgroup").glob("*/*")
            if d.name.startswith(OUR_PREFIXES) and d.is_dir()}
    try:
        import json
        if os.getpid() in json.loads(CGROUP2_STATE.read_text()).get("users", []):
            out.add(f"cgroup2 controllers still held by {os.getpid()} in {CGROUP2_STATE}")
    except (FileNotFoundError, ValueError):
        pass
    return out


def _this_run(item: str) -> bool:
    """Whether a host_leftovers line is this run's: below its temporary
    dirs, named with its pid (test names carry os.getpid()), or a network
    lock table of a tree it started (CRIU-procsnap_PID, CRIU-PID); rules of
    criu's iptables lock carry no pid and count as ours when they stay."""
    if item.startswith(("mount ", "iptables ", "ip6tables ")):
        return True
    if re.search(rf"\D{os.getpid()}(\D|$)", item):
        return True
    m = re.search(r"CRIU-(?:procsnap_)?(\d+)", item)
    return m is not None and int(m.group(1)) in OUR_PIDS


def new_host_leftovers(before: set[str], base: Path, settle: float = 10.0) -> set[str]:
    """host_leftovers of this run, not in BEFORE, that stay for SETTLE
    seconds (a test of a run at the same time may hold a lock that long)."""
    deadline = time.monotonic() + settle
    while True:
        left = {x for x in host_leftovers(base) - before if _this_run(x)}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)
