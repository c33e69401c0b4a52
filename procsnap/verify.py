"""The restore checks itself before the tree runs.

Once every task is built and its registers are installed, and while every
puppet is still stopped under ptrace, each task's state is read *from
outside* -- from the same /proc files and ptrace requests the dump read --
and compared with the images.  Any difference fails the restore: the
restorer kills everything it created, and one line names the pid and the
field, expected against found:

    restore check: pid 1234: fd 5: flags O_RDWR|O_APPEND expected, O_RDWR found

Each area is one comparator in ``COMPARATORS``: ``check(task) -> [diff]``,
a diff being "what X expected, Y found" without the pid.  A helper
that makes more state exact adds its field to a comparator, or a new
comparator to the list.

What is compared, and why each field is exact (the restore sets it to the
image's value, and nothing moves it while the task is stopped):

- identity: thread ids (clone3 set_tid), comm per thread (PR_SET_NAME),
  parent, process group and session when the image names a task of the
  tree (the root's parent, and a group or session inherited from the
  restoring shell under --shell-job, are chosen at restore time).
- registers: every general register and fs/gs base per thread, read with
  PTRACE_GETREGS (core.final set them with PTRACE_SETREGS).  The xsave
  area is not compared: the kernel rewrites its header (XSTATE_BV, the
  init-optimised components) when it saves the state again.
- mm: the /proc/PID/stat code/data/brk-start/stack/arg/env addresses and
  /proc/PID/auxv (all given to PR_SET_MM_MAP), and the executable's name.
  brk itself is not in /proc.
- maps: each VMA's boundaries, protection, private/shared, kind (anon,
  heap, stack, vdso/vvar/vsyscall, file, memfd, shared anon), and for
  files the offset and the name the kernel prints.  The trampoline page is
  gone by now (unmapped by the last injected call in _finish), so nothing
  of ours is left to tell apart.  Both lists are first merged where the
  kernel would merge them (adjacent, alike in every compared field, file
  offsets contiguous): whether two alike neighbours are one VMA or two
  depends on anon_vma identity, which /proc does not show and a restore
  cannot choose.  VmFlags (smaps) are compared when the image recorded
  them (vma_entry.madv), and smaps is only read then: it walks the pages.
- fds: the set of fd numbers, each fd's kind (readlink: pipe:, socket:,
  anon_inode:[...], path), its open flags (fdinfo flags) including
  O_CLOEXEC, the position of regular files and memfds, and the path of a
  regular file reopened by its name.  Not compared: a terminal's flags
  under --shell-job (the fd is the restoring shell's terminal, by design),
  positions of character devices (the restore never seeks them), and the
  path of a file reopened through a ghost, a link remap or a file handle
  (the name is another on purpose).
- creds, per thread: uids, gids, groups, capability sets (inheritable,
  permitted, effective, bounding) from /proc/PID/task/TID/status.
  Securebits have no outside source (only PR_GET_SECUREBITS in the task).
- sched, per thread: policy (sched_getscheduler from outside: it also
  shows SCHED_RESET_ON_FORK, which stat does not), real-time priority and
  nice from /proc/PID/task/TID/stat (set with sched_setscheduler and
  setpriority).
- task: personality, rlimits (/proc/PID/limits), oom_score_adj, umask,
  THP disabled (status "THP_enabled", set by PR_SET_THP_DISABLE), rseq
  registration (PTRACE_GET_RSEQ_CONFIGURATION) and robust list
  (get_robust_list) per thread.  Not readable from outside and so not
  compared: dumpable, child_subreaper, pdeath_sig, clear-tid address,
  sigaltstack, interval timers (which also move).
- signals: the blocked mask per thread (status SigBlk), which signals are
  caught and which ignored (SigCgt/SigIgn: a handler's address and flags
  are only readable with rt_sigaction in the task), and which are pending
  per thread and process-wide (SigPnd/ShdPnd).  A SIGCHLD pending beyond
  the image is accepted when the task has a zombie child in the image:
  that child was let go to exit before its parent was built, and its
  SIGCHLD may land after the parent's queue was drained.
- fs: cwd and root (same file as the image's path, by device and inode)
  and umask.

Zombies are not compared: they were let go to exit long before.
"""
from __future__ import annotations

import bisect
import ctypes
import logging
import os
import stat as st_mod
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from .errors import RestoreError
from .images.pb import fdinfo_pb2
from .kernel import consts as C
from .kernel import libc, ptrace
from .kernel.structs import USER_REGS_FIELDS
from .procfs import parse
from .procfs.parse import LIMIT_RESOURCES, MapEntry, Stat, Status
from .resources import memfd, regfile, shmem, tty
from .resources.memory import (VMA_ANON_SHARED, VMA_AREA_AIORING, VMA_AREA_GUARD, VMA_AREA_HEAP, VMA_AREA_MEMFD, VMA_AREA_STACK,
                               VMA_AREA_VDSO, VMA_AREA_VSYSCALL, VMA_AREA_VVAR, VMA_FILE_PRIVATE,
                               VMA_FILE_SHARED)
from .resources.signals import SIGCHLD, SIGNALS

if TYPE_CHECKING:
    from .tasks import RestoreContext, RestoreTask

log = logging.getLogger("procsnap.verify")

PREFIX = "restore check"


# ------------------------------------------------------------- sources ----

@dataclass
class Found:
    """What one task shows from outside, each /proc file read at most once."""
    rctx: "RestoreContext"
    rt: "RestoreTask"
    _cache: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.rt.pid

    def _once(self, key: str, read: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = read()
        return self._cache[key]

    def text(self, name: str) -> str:
        def read() -> str:
            with open(f"/proc/{self.pid}/{name}", "rb") as f:
                return os.fsdecode(f.read())
        return self._once(name, read)

    def stat(self, tid: int) -> Stat:
        name = f"task/{tid}/stat"
        return self._once("p:" + name, lambda: parse.parse_stat(self.text(name)))

    def status(self, tid: int) -> Status:
        name = f"task/{tid}/status"
        return self._once("p:" + name, lambda: parse.parse_status(self.text(name)))

    def fds(self) -> list[int]:
        return self._once("fds", lambda: sorted(int(n) for n in os.listdir(f"/proc/{self.pid}/fd")))

    def link(self, name: str) -> str:
        return self._once("l:" + name, lambda: os.readlink(f"/proc/{self.pid}/{name}"))


# --------------------------------------------------------------- words ----

_OPEN_FLAGS = [(0o100, "O_CREAT"), (0o200, "O_EXCL"), (0o400, "O_NOCTTY"), (0o1000, "O_TRUNC"),
               (0o2000, "O_APPEND"), (0o4000, "O_NONBLOCK"), (0o4010000, "O_SYNC"),
               (0o10000, "O_DSYNC"), (0o20000, "O_ASYNC"), (0o40000, "O_DIRECT"),
               (0o100000, "O_LARGEFILE"), (0o200000, "O_DIRECTORY"), (0o400000, "O_NOFOLLOW"),
               (0o1000000, "O_NOATIME"), (0o2000000, "O_CLOEXEC"), (0o10000000, "O_PATH")]


def open_flags(flags: int) -> str:
    """O_RDWR|O_APPEND|... (octal for bits without a name)."""
    words = [{0: "O_RDONLY", 1: "O_WRONLY", 2: "O_RDWR"}.get(flags & 3, "O_ACCMODE")]
    rest = flags & ~3
    for bit, name in _OPEN_FLAGS:
        if rest & bit == bit:
            words.append(name)
            rest &= ~bit
    if rest:
        words.append(f"{rest:#o}")
    return "|".join(words)


def _prot(prot: int) -> str:
    rwx = "".join(c if prot & b else "-" for c, b in (("r", 1), ("w", 2), ("x", 4)))
    return rwx if not prot & ~7 else f"{rwx}+{prot & ~7:#x}"


def _sigs(mask: int) -> str:
    return "{" + ",".join(str(s) for s in range(1, 65) if mask & (1 << (s - 1))) + "}"


def _differ(what: str, expected: Any, found: Any, fmt: Callable[[Any], str] = str) -> list[str]:
    if expected == found:
        return []
    return [f"{what} {fmt(expected)} expected, {fmt(found)} found"]


# --------------------------------------------------------- comparators ----

def check_identity(f: Found) -> list[str]:
    rt, rctx = f.rt, f.rctx
    out: list[str] = []
    tids = sorted(int(t) for t in os.listdir(f"/proc/{f.pid}/task"))
    out += _differ("threads", sorted(th.tid for th in rt.threads), tids)
    if out:
        return out
    for th in rt.threads:
        tc = th.core.thread_core
        want = tc.comm if th.tid != rt.pid and tc.HasField("comm") else rt.core.tc.comm
        what = "comm" if th.tid == rt.pid else f"thread {th.tid}: comm"
        out += _differ(what, want.encode()[:15].decode(errors="replace"), f.stat(th.tid).comm,
                       repr)
    st = f.stat(rt.pid)
    ps = rt.pstree
    if ps.ppid in rctx.by_pid:
        out += _differ("ppid", ps.ppid, st.ppid)
    if ps.pgid in rctx.by_pid:
        out += _differ("pgid", ps.pgid, st.pgrp)
    if ps.sid in rctx.by_pid:
        out += _differ("sid", ps.sid, st.session)
    return out


_REG_NAMES = {"rbp": "bp", "rbx": "bx", "rax": "ax", "rcx": "cx", "rdx": "dx", "rsi": "si",
              "rdi": "di", "orig_rax": "orig_ax", "rip": "ip", "eflags": "flags", "rsp": "sp"}


def check_regs(f: Found) -> list[str]:
    out: list[str] = []
    for th in f.rt.threads:
        regs = ptrace.get_regs(th.tid)
        img = th.core.thread_info.gpregs
        where = "" if th.tid == f.pid else f"thread {th.tid}: "
        for n in USER_REGS_FIELDS:
            want = getattr(img, _REG_NAMES.get(n, n))
            got = getattr(regs, n)
            if n == "eflags":
                # The kernel keeps only the user-settable flags (FLAG_MASK)
                # and may set RF/reserved bit 1: compare what it keeps.
                want, got = want & 0x3F7FD5, got & 0x3F7FD5
            out += _differ(f"{where}register {n}", want, got, hex)
    return out


def check_mm(f: Found) -> list[str]:
    mm = f.rt.mm
    st = f.stat(f.pid)
    out: list[str] = []
    for img_field, stat_field in (("mm_start_code", "startcode"), ("mm_end_code", "endcode"),
                                  ("mm_start_data", "start_data"), ("mm_end_data", "end_data"),
                                  ("mm_start_stack", "startstack"), ("mm_start_brk", "start_brk"),
                                  ("mm_arg_start", "arg_start"), ("mm_arg_end", "arg_end"),
                                  ("mm_env_start", "env_start"), ("mm_env_end", "env_end")):
        out += _differ(img_field[3:], getattr(mm, img_field), getattr(st, stat_field), hex)
    with open(f"/proc/{f.pid}/auxv", "rb") as fh:
        raw = fh.read()
    auxv = [int.from_bytes(raw[i:i + 8], "little") for i in range(0, len(raw) - 7, 8)]
    want = list(mm.mm_saved_auxv)
    if auxv[:len(want)] != want or any(auxv[len(want):]):
        out.append("auxv: differs from mm.img's mm_saved_auxv")
    exe = _by_name(f.rctx, f.rctx.file_entry(mm.exe_file_id))
    if exe is not None:
        out += _differ("exe", exe, f.link("exe"), repr)
    return out


def _reopened_by_name(rctx: "RestoreContext", entry: Any) -> bool:
    """A REG entry the restore opened by its own name (no ghost, link
    remap or file handle), so the kernel prints that name for it."""
    return _by_name(rctx, entry) is not None


def _by_name(rctx: "RestoreContext", entry: Any) -> str | None:
    """The name the kernel prints for a REG entry reopened by its name, as
    a maps line or fd link escapes it; None for any other entry.  Decided
    once per file id (10,000 fds on one file ask 10,000 times)."""
    cache = rctx.kind_state.get("verify")
    if cache is None:
        fh = {int(n[7:-4], 16) for n in os.listdir(rctx.images_dir)
              if n.startswith("reg-fh-") and n.endswith(".img")}
        known: dict[int, str | None] = {}
        cache = rctx.kind_state["verify"] = (known, fh, regfile._rstate(rctx).remaps)
    names: dict[int, str | None] = cache[0]
    fh, remaps = cache[1], cache[2]
    fid = entry.id
    if fid not in names:
        if entry.type != fdinfo_pb2.REG or not entry.HasField("reg") or fid in remaps \
                or fid in fh:
            names[fid] = None
        else:
            names[fid] = _escape(regfile.restore_path(rctx, entry))
    return names[fid]


def _escape(path: str) -> str:
    # maps and fd links print '\n' as "\012" (seq_file_path escapes "\n").
    return path.replace("\n", "\\012")


@dataclass
class _Vma:
    start: int
    end: int
    prot: int
    shared: bool
    kind: str
    name: str     # for files: the path; else ""
    pgoff: int    # for files: offset in bytes; else 0
    madv: int | None = None

    def key(self) -> tuple[Any, ...]:
        return (self.prot, self.shared, self.kind, self.name, self.madv)


def _img_vma(rctx: "RestoreContext", v: Any) -> _Vma:
    s = v.status
    name, pgoff = "", 0
    if s & VMA_AREA_VSYSCALL:
        kind = "[vsyscall]"
    elif s & VMA_AREA_VDSO:
        kind = "[vdso]"
    elif s & VMA_AREA_VVAR:
        kind = "[vvar]"
    elif s & VMA_ANON_SHARED:
        kind = "shared anon"
    elif s & VMA_AREA_AIORING:
        kind = "[aio]"
    elif s & VMA_AREA_MEMFD:
        kind, pgoff = "memfd", v.pgoff
    elif s & (VMA_FILE_PRIVATE | VMA_FILE_SHARED):
        kind, pgoff = "file", v.pgoff
        name = _by_name(rctx, rctx.file_entry(v.shmid)) or ""
    elif s & VMA_AREA_HEAP:
        kind = "[heap]"
    elif s & VMA_AREA_STACK:
        kind = "[stack]"
    else:
        kind = "anon"
    shared = bool(s & (VMA_FILE_SHARED | VMA_ANON_SHARED | VMA_AREA_AIORING))
    madv = v.madv if v.HasField("madv") else None
    return _Vma(v.start, v.end, v.prot, shared, kind, name, pgoff, madv)


_PROT = {"r": 1, "w": 2, "x": 4}


def _found_vmas(text: str) -> list[_Vma]:
    """/proc/PID/maps, split by hand: parse_maps' regex and MapEntry cost
    more than the rest of the check for a tree of 200 small processes."""
    out = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5 or len(parts[1]) != 4:
            return [_found_vma(m) for m in parse.parse_maps(text)]  # says what is wrong
        rng, perms, off, dev, ino = parts[:5]
        path = parts[5] if len(parts) > 5 else ""
        start, _, end = rng.partition("-")
        m = MapEntry(int(start, 16), int(end, 16), perms,
                     sum(_PROT.get(c, 0) for c in perms[:3]), perms[3] == "s", int(off, 16),
                     int(dev.partition(":")[0], 16), int(dev.partition(":")[2], 16), int(ino),
                     path)
        out.append(_found_vma(m))
    return out


def _found_vma(m: MapEntry) -> _Vma:
    name, pgoff = "", 0
    if m.path in ("[vvar]", "[vvar_vclock]"):
        kind = "[vvar]"
    elif m.path in ("[vdso]", "[vsyscall]", "[heap]", "[stack]"):
        kind = m.path
    elif shmem.is_anon_shared(m):
        kind = "shared anon"
    elif m.path == "/anon_hugepage (deleted)":
        # MAP_HUGETLB anonymous memory (maps shows no VmFlags to tell more)
        kind = "shared anon" if m.shared else "anon"
    elif m.path.startswith("/[aio]"):
        kind = "[aio]"
    elif memfd.is_memfd_mapping(m.path):
        kind, pgoff = "memfd", m.pgoff
    elif m.path.startswith("/") and m.ino:
        kind, pgoff = "file", m.pgoff
        name = m.path
    else:
        kind = "anon"   # also [anon:NAME]: the label is not kept (README)
    return _Vma(m.start, m.end, m.prot, m.shared, kind, name, pgoff)


def _merge(vmas: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Merge neighbours the kernel may or may not have merged (see above).
    Items: (start, end, pgoff, prot, shared, kind, name, madv)."""
    out: list[tuple[Any, ...]] = []
    for v in vmas:
        if out:
            p = out[-1]
            if p[1] == v[0] and p[3:] == v[3:] and p[5] not in _SPECIAL and \
                    (p[5] not in ("file", "memfd") or p[2] + (p[1] - p[0]) == v[2]):
                out[-1] = (p[0], v[1]) + p[2:]
                continue
        out.append(v)
    return out


_SPECIAL = ("[vdso]", "[vvar]", "[vsyscall]")


def _madv_of(smaps: str) -> dict[int, int]:
    """VMA start -> madvise bits, from the VmFlags lines (CRIU's mapping)."""
    from .resources.memory import MADV_BY_VMFLAG  # the bits the dump records
    bits = {flag: 1 << advice for flag, advice in MADV_BY_VMFLAG.items()}
    out: dict[int, int] = {}
    start = 0
    for line in smaps.splitlines():
        if line[:1] in "0123456789abcdef" and "-" in line.split(" ", 1)[0]:
            start = int(line.split("-", 1)[0], 16)
        elif line.startswith("VmFlags:"):
            out[start] = sum(b for k, b in bits.items() if k in line.split()[1:])
    return out


def check_maps(f: Found) -> list[str]:
    rctx = f.rctx
    # guard regions live inside other VMAs (MADV_GUARD_INSTALL makes none)
    img = [_img_vma(rctx, v) for v in f.rt.mm.vmas if not v.status & VMA_AREA_GUARD]
    found = _found_vmas(f.text("maps"))
    # A file's name is compared only where the restore reopened it by that
    # name (the image VMA covering the found one has a name).
    starts = [v.start for v in img]
    for v in found:
        if v.kind == "file":
            i = bisect.bisect_right(starts, v.start) - 1
            if i < 0 or not img[i].name or img[i].end <= v.start:
                v.name = ""
    if any(v.madv is not None for v in img):
        madv = _madv_of(f.text("smaps"))
        # The kernel's own mappings carry flags it sets itself ([vvar] is
        # VM_DONTDUMP); the dump does not record them, nor do we compare.
        special = ("[vvar]", "[vdso]", "[vsyscall]")
        for v in found:
            v.madv = 0 if v.kind in special else madv.get(v.start, 0)
        for v in img:
            v.madv = 0 if v.kind in special else v.madv or 0
    def tup(vs: list[_Vma]) -> list[tuple[Any, ...]]:
        return [(v.start, v.end, v.pgoff) + v.key() for v in vs]
    ta, tb = tup(img), tup(found)
    if ta == tb:
        return []   # the same VMAs, no merging to decide
    a = [_Vma(x[0], x[1], x[3], x[4], x[5], x[6], x[2], x[7]) for x in _merge(ta)]
    b = [_Vma(x[0], x[1], x[3], x[4], x[5], x[6], x[2], x[7]) for x in _merge(tb)]
    for e, g in zip(a, b):
        where = f"mapping {e.start:#x}-{e.end:#x}"
        if (e.start, e.end) != (g.start, g.end):
            return [f"{where}: found {g.start:#x}-{g.end:#x} ({g.kind})"]
        out = _differ(f"{where}: kind", e.kind, g.kind)
        out += _differ(f"{where}: protection", e.prot, g.prot, _prot)
        out += _differ(f"{where}: sharing", e.shared, g.shared,
                       lambda s: "shared" if s else "private")
        out += _differ(f"{where}: file offset", e.pgoff, g.pgoff, hex)
        out += _differ(f"{where}: file", e.name, g.name, repr)
        out += _differ(f"{where}: madvise flags", e.madv, g.madv,
                       lambda m: "none" if m is None else hex(m))
        if out:
            return out
    if len(a) != len(b):
        extra = a[len(b)] if len(a) > len(b) else b[len(a)]
        state = "missing" if len(a) > len(b) else "not in the image"
        return [f"mapping {extra.start:#x}-{extra.end:#x} ({extra.kind}): {state}"]
    return []


# readlink prefix -> fd kinds it may be
_ANON_KINDS = {"[eventfd]": fdinfo_pb2.EVENTFD, "[eventpoll]": fdinfo_pb2.EVENTPOLL,
               "[signalfd]": fdinfo_pb2.SIGNALFD, "[timerfd]": fdinfo_pb2.TIMERFD,
               "inotify": fdinfo_pb2.INOTIFY, "[pidfd]": fdinfo_pb2.PIDFD,
               "[fanotify]": fdinfo_pb2.FANOTIFY}
_SOCKETS = {fdinfo_pb2.UNIXSK, fdinfo_pb2.INETSK, fdinfo_pb2.PACKETSK, fdinfo_pb2.NETLINKSK}


_FILES: set[int] = {fdinfo_pb2.REG, fdinfo_pb2.FIFO, fdinfo_pb2.TTY}


def _kind_of_link(link: str) -> set[int]:
    if link == "/dev/zero (deleted)":
        # shared anonymous memory opened through map_files is saved as a
        # memfd named /dev/zero (as CRIU), and comes back as what it was
        return {fdinfo_pb2.MEMFD, fdinfo_pb2.REG}
    if link.startswith("/") and not link.startswith("/memfd:"):
        return _FILES
    if link.startswith("pipe:"):
        return {fdinfo_pb2.PIPE}
    if link.startswith("socket:"):
        return set(_SOCKETS)
    if link.startswith("anon_inode:"):
        k = _ANON_KINDS.get(link[len("anon_inode:"):])
        return {k} if k is not None else set()
    if link.startswith("pidfd:"):
        return {fdinfo_pb2.PIDFD}
    if memfd.is_memfd_mapping(link):
        return {fdinfo_pb2.MEMFD}
    return _FILES


def _kind_name(t: int) -> str:
    return fdinfo_pb2.fd_types.Name(t) if t in fdinfo_pb2.fd_types.values() else str(t)


def _expected_fd(rctx: "RestoreContext", entry: Any) -> tuple[int | None, int | None]:
    """(open flags without O_CLOEXEC, position) the image gives an fd;
    None where that kind's value is not compared."""
    t = entry.type
    if t == fdinfo_pb2.REG:
        reg = entry.reg
        pos = None if st_mod.S_ISCHR(reg.mode or 0) else reg.pos
        return reg.flags, pos
    if t == fdinfo_pb2.MEMFD:
        return entry.memfd.flags, entry.memfd.pos
    if t == fdinfo_pb2.FIFO:
        return rctx.file_entry(entry.fifo.regf_id).reg.flags, None
    if t == fdinfo_pb2.EVENTFD:
        return entry.efd.flags & ~C.EFD_SEMAPHORE, None  # bit 0 carries EFD_SEMAPHORE
    if t == fdinfo_pb2.TTY:
        return tty.expected_flags(rctx, entry), None  # None: the shell job's terminal
    for part in ("pipe", "usk", "isk", "sgfd", "tfd", "epfd", "ify", "pidfd"):
        if entry.HasField(part):
            return getattr(entry, part).flags, None
    return None, None


def _fdinfo_head(dirfd: int, fd: int) -> tuple[int, int]:
    """(pos, flags) from the first two lines of fdinfo/FD (``dirfd`` is
    /proc/PID/fdinfo), which every kind prints first ("pos:\t%lli",
    "flags:\t0%o"): three short system calls, for 10,000 fds."""
    h = os.open(str(fd), os.O_RDONLY | os.O_CLOEXEC, dir_fd=dirfd)
    try:
        data = os.read(h, 256)
    finally:
        os.close(h)
    lines = data.split(b"\n", 2)
    if len(lines) < 3 or not lines[0].startswith(b"pos:") or not lines[1].startswith(b"flags:"):
        info = parse.parse_fdinfo(os.fsdecode(data), f"fdinfo/{fd}")  # says what is wrong
        return info.pos, info.flags
    return int(lines[0][4:]), int(lines[1][6:], 8)


def check_files(f: Found) -> list[str]:
    rctx, rt = f.rctx, f.rt
    pid = f.pid
    want = {fe.fd: fe for fe in rt.fdinfos}
    have = f.fds()
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    if missing:
        return [f"fd {missing[0]}: missing ({_kind_name(want[missing[0]].type)} expected)"]
    if extra:
        return [f"fd {extra[0]}: open, not in the image ({f.link(f'fd/{extra[0]}')})"]
    # Both directories opened once: each fd then costs a short lookup,
    # not a walk from /proc (10,000 fds).
    fd_dir = os.open(f"/proc/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        info_dir = os.open(f"/proc/{pid}/fdinfo", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return _check_fds(rctx, have, want, fd_dir, info_dir)
        finally:
            os.close(info_dir)
    finally:
        os.close(fd_dir)


def _check_fds(rctx: "RestoreContext", have: list[int], want: dict[int, Any], fd_dir: int,
               info_dir: int) -> list[str]:
    # What the image says of each file id, worked out once per id.
    expect: dict[int, tuple[Any, int | None, int | None, str | None]] = {}
    for fd in have:
        fe = want[fd]
        e = expect.get(fe.id)
        if e is None:
            entry = rctx.file_entry(fe.id)
            flags, pos = _expected_fd(rctx, entry)
            e = expect[fe.id] = (entry.type, flags, pos, _by_name(rctx, entry))
        kind, flags, pos, name = e
        link = os.readlink(str(fd), dir_fd=fd_dir)
        if kind not in _kind_of_link(link):
            return [f"fd {fd}: kind {_kind_name(kind)} expected, {link} found"]
        got_pos, got_flags = _fdinfo_head(info_dir, fd)
        cloexec = os.O_CLOEXEC if fe.flags & 1 else 0
        out: list[str] = []
        if flags is None:
            out += _differ(f"fd {fd}: O_CLOEXEC", bool(cloexec), bool(got_flags & os.O_CLOEXEC))
        else:
            out += _differ(f"fd {fd}: flags", flags | cloexec, got_flags, open_flags)
        if pos is not None:
            out += _differ(f"fd {fd}: position", pos, got_pos)
        if name is not None:
            out += _differ(f"fd {fd}: file", name, link, repr)
        if out:
            return out
    return []


def check_creds(f: Found) -> list[str]:
    out: list[str] = []
    for th in f.rt.threads:
        tc = th.core.thread_core
        if not tc.HasField("creds"):
            continue
        c = tc.creds
        st = f.status(th.tid)
        where = "" if th.tid == f.pid else f"thread {th.tid}: "

        def mask(words: Any) -> int:
            w = list(words) + [0, 0]
            return w[0] | (w[1] << 32)

        out += _differ(f"{where}uids", (c.uid, c.euid, c.suid, c.fsuid), st.uids)
        out += _differ(f"{where}gids", (c.gid, c.egid, c.sgid, c.fsgid), st.gids)
        out += _differ(f"{where}groups", sorted(c.groups), sorted(st.groups))
        for name, words, got in (("CapInh", c.cap_inh, st.cap_inh),
                                 ("CapPrm", c.cap_prm, st.cap_prm),
                                 ("CapEff", c.cap_eff, st.cap_eff),
                                 ("CapBnd", c.cap_bnd, st.cap_bnd)):
            out += _differ(f"{where}{name}", mask(words), got, hex)
    return out


_POLICIES = {0: "SCHED_OTHER", 1: "SCHED_FIFO", 2: "SCHED_RR", 3: "SCHED_BATCH",
             5: "SCHED_IDLE", 6: "SCHED_DEADLINE"}
SCHED_RESET_ON_FORK = 0x40000000


def _policy(p: int) -> str:
    name = _POLICIES.get(p & ~SCHED_RESET_ON_FORK, str(p & ~SCHED_RESET_ON_FORK))
    return name + ("|SCHED_RESET_ON_FORK" if p & SCHED_RESET_ON_FORK else "")


def check_sched(f: Found) -> list[str]:
    out: list[str] = []
    for th in f.rt.threads:
        tc = th.core.thread_core
        st = f.stat(th.tid)
        where = "" if th.tid == f.pid else f"thread {th.tid}: "
        if tc.HasField("sched_policy"):
            # sched_getscheduler, not stat: it also shows SCHED_RESET_ON_FORK.
            out += _differ(f"{where}sched policy", tc.sched_policy,
                           os.sched_getscheduler(th.tid), _policy)
        if tc.HasField("sched_prio"):
            out += _differ(f"{where}sched priority", tc.sched_prio, st.rt_priority)
        if tc.HasField("sched_nice"):
            out += _differ(f"{where}nice", tc.sched_nice, st.nice)
    return out


def check_task(f: Found) -> list[str]:
    rt = f.rt
    tc = rt.core.tc
    out: list[str] = []
    out += _differ("personality", tc.personality, int(f.text("personality"), 16), hex)
    limits = parse.parse_limits(f.text("limits"))
    by_number = {LIMIT_RESOURCES[n]: v for n, v in limits.items() if n in LIMIT_RESOURCES}
    from .resources.taskattrs import RLIM_NAMES
    for res, lim in enumerate(tc.rlimits.rlimits):
        if res in by_number:
            out += _differ(f"RLIMIT_{RLIM_NAMES[res]}", (lim.cur, lim.max), by_number[res])
    if tc.HasField("oom_score_adj"):
        out += _differ("oom_score_adj", tc.oom_score_adj, int(f.text("oom_score_adj")))
    status = f.status(rt.pid)
    if rt.mm.HasField("thp_disabled") and "THP_enabled" in status.raw:
        out += _differ("THP disabled (PR_SET_THP_DISABLE)", bool(rt.mm.thp_disabled),
                       status.raw["THP_enabled"].strip() == "0")
    for th in rt.threads:
        where = "" if th.tid == f.pid else f"thread {th.tid}: "
        tcore = th.core.thread_core
        conf = ptrace.get_rseq(th.tid)
        if tcore.HasField("rseq_entry") and tcore.rseq_entry.rseq_abi_pointer:
            r = tcore.rseq_entry
            want = (r.rseq_abi_pointer, r.rseq_abi_size, r.signature)
        else:
            want = (0, 0, 0)
        got = (conf.rseq_abi_pointer, conf.rseq_abi_size if conf.rseq_abi_pointer else 0,
               conf.signature if conf.rseq_abi_pointer else 0)
        out += _differ(f"{where}rseq (area, size, signature)", want, got,
                       lambda t: f"({t[0]:#x}, {t[1]}, {t[2]:#x})")
        head, length = ctypes.c_uint64(), ctypes.c_size_t()
        libc.syscall(C.NR["get_robust_list"], th.tid, ctypes.addressof(head),
                     ctypes.addressof(length))
        if tcore.futex_rla:
            out += _differ(f"{where}robust list", (tcore.futex_rla, tcore.futex_rla_len),
                           (head.value, length.value), lambda t: f"({t[0]:#x}, {t[1]})")
    return out


def check_signals(f: Found) -> list[str]:
    from .resources.signals import final_mask
    rt = f.rt
    tc = rt.core.tc
    out: list[str] = []
    cgt = ign = 0
    for sig, sa in zip(SIGNALS, tc.sigactions):
        if sa.sigaction == 1:   # SIG_IGN
            ign |= 1 << (sig - 1)
        elif sa.sigaction > 1:
            cgt |= 1 << (sig - 1)
    leader = f.status(rt.pid)
    out += _differ("caught signals (SigCgt)", cgt, leader.sig_cgt, _sigs)
    out += _differ("ignored signals (SigIgn)", ign, leader.sig_ign, _sigs)
    # A zombie child's SIGCHLD may land after the parent's queue was drained.
    zombie_child = any(t.zombie and t.pstree.ppid == rt.pid for t in f.rctx.tasks)
    slack = (1 << (SIGCHLD - 1)) if zombie_child else 0

    def queued(q: Any) -> int:
        m = 0
        for e in q.signals:
            signo = int.from_bytes(e.siginfo[0:4], "little", signed=True)
            if 0 < signo <= 64:
                m |= 1 << (signo - 1)
        return m

    shared = queued(tc.signals_s) if tc.HasField("signals_s") else 0
    out += _differ("pending signals (ShdPnd)", shared, leader.shd_pnd & ~(slack & ~shared), _sigs)
    for th in rt.threads:
        where = "" if th.tid == f.pid else f"thread {th.tid}: "
        st = f.status(th.tid)
        out += _differ(f"{where}blocked signals", final_mask(rt, th), st.sig_blk, _sigs)
        tcore = th.core.thread_core
        own = queued(tcore.signals_p) if tcore.HasField("signals_p") else 0
        out += _differ(f"{where}pending signals (SigPnd)", own, st.sig_pnd, _sigs)
    return out


def check_fs(f: Found) -> list[str]:
    rctx, rt = f.rctx, f.rt
    out: list[str] = []
    for what, fid in (("cwd", rt.fs.cwd_id), ("root", rt.fs.root_id)):
        entry = rctx.file_entry(fid)
        if not _reopened_by_name(rctx, entry):
            continue
        path = regfile.restore_path(rctx, entry)
        got = os.stat(f"/proc/{f.pid}/{what}")
        idents = rctx.kind_state.setdefault("verify-fs", {})
        if fid not in idents:   # a tree of 200 shares one cwd: one stat
            try:
                want = os.stat(path)
                idents[fid] = (want.st_dev, want.st_ino)
            except OSError:
                idents[fid] = None
        same = idents[fid] == (got.st_dev, got.st_ino)
        if not same:
            out.append(f"{what}: {path!r} expected, {f.link(what)!r} "
                       f"(inode {got.st_dev:#x}:{got.st_ino}) found")
    status = f.status(rt.pid)
    if status.umask is not None:
        out += _differ("umask", rt.fs.umask, status.umask, oct)
    return out


COMPARATORS: list[Callable[[Found], list[str]]] = [
    check_identity, check_regs, check_mm, check_maps, check_files, check_creds, check_sched,
    check_task, check_signals, check_fs,
]


def differences(rctx: "RestoreContext", rt: "RestoreTask") -> list[str]:
    """Every difference between task ``rt`` as it is now and its images."""
    f = Found(rctx, rt)
    out: list[str] = []
    for check in COMPARATORS:
        out += check(f)
    return out


def verify(rctx: "RestoreContext") -> None:
    """Compare every live task with its images; RestoreError on the first
    task that differs (each of its differences is logged)."""
    t = time.monotonic()
    for rt in rctx.tasks:
        if rt.zombie:
            continue
        diffs = differences(rctx, rt)
        if diffs:
            for d in diffs[1:]:
                log.warning("%s: pid %d: %s", PREFIX, rt.pid, d)
            more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
            raise RestoreError(f"{PREFIX}: pid {rt.pid}: {diffs[0]}{more}")
    rctx.stats["verify"] = time.monotonic() - t
