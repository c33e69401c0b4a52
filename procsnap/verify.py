"""The restore checks itself before the tree runs.

Once every task is built and its registers are installed, and the
restorer's last hooks have run (``before_detach``: SIGIO owners set, TCP
sockets out of repair mode, SO_REUSEADDR put back), so that what is read
is what the tree will run with, and while every puppet is still stopped
under ptrace, each task's state is read *from
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
  restoring shell under --shell-job, are chosen at restore time); a
  group whose leader was gone at dump time (made by a helper) too.
  Whether the memory, the fd table and the fs struct are the parent's
  (kcmp KCMP_VM/FILES/FS), as vm_id/files_id/fs_id of ids-PID.img say.
- registers: every general register and fs/gs base per thread, read with
  PTRACE_GETREGS (core.final set them with PTRACE_SETREGS).  The xsave
  area is not compared: the kernel rewrites its header (XSTATE_BV, the
  init-optimised components) when it saves the state again.
- mm: the /proc/PID/stat code/data/brk-start/stack/arg/env addresses and
  /proc/PID/auxv (all given to PR_SET_MM_MAP), and the executable's name.
  brk itself is not in /proc.
- maps: each VMA's boundaries, protection, private/shared, kind (anon,
  heap, stack, vdso/vvar/vsyscall, file, memfd, shared anon, System V shm
  with its segment id), and for
  files the offset and the name the kernel prints.  The trampoline page is
  gone by now (unmapped by the last injected call in _finish), so nothing
  of ours is left to tell apart.  Both lists are first merged where the
  kernel would merge them (adjacent, alike in every compared field, file
  offsets contiguous): whether two alike neighbours are one VMA or two
  depends on anon_vma identity, which /proc does not show and a restore
  cannot choose.  The VmFlags the image keeps (memory.VMFLAGS "saved":
  madvise advice in vma_entry.madv -- sr rr dc wf dd hg nh mg -- and
  mmap flags in vma_entry.flags -- gd lo nr dp) are compared from smaps,
  which is read only when the image holds one beyond a stack's gd: it
  walks the page tables (so a flag the restore added unasked to a task
  whose image has none is not seen).
- fs: a cwd in /proc/N of a process gone (PROCFS remap) reads "/proc/N
  (deleted)" and no process has pid N (its helper was reaped).
- fds: the set of fd numbers, each fd's kind (readlink: pipe:, socket:,
  anon_inode:[...], path), its open flags (fdinfo flags) including
  O_CLOEXEC, the position of regular files and memfds, the path of a
  regular file reopened by its name, and the pts a pty fd is on (the
  slave's node, a master's peer opened O_PATH): its index (st_rdev) and
  its devpts instance (st_dev), the one on the tree's /dev/pts -- the
  index alone matches a pts of any instance.  Not compared: a terminal's flags
  under --shell-job (the fd is the restoring shell's terminal, by design),
  positions of character devices (the restore never seeks them), and the
  path of a file reopened through a ghost, a link remap or a file handle
  (the name is another on purpose).
- open file descriptions, once each (through the fd that first got it
  back, on a pidfd_getfd copy): the SIGIO owner (F_GETOWN_EX, with the
  uid/euid of F_GETOWNER_UIDS) and signal (F_GETSIG); for sockets every
  option sockopts.TABLE marks SAVED, with getsockopt (SO_* of sk_opts,
  IP_TOS/TTL/PKTINFO/FREEBIND, IPV6_V6ONLY/RECVPKTINFO, TCP_NODELAY/CORK
  and the keepalive timers, the SOL_PACKET options of a packet socket),
  the classic BPF filter instruction by instruction (SO_GET_FILTER) and
  its lock (SO_LOCK_FILTER).  A TCP buffer size the task never locked
  (SO_BUF_LOCK) is not compared: the kernel tunes it as traffic goes.
  Packet sockets: type, protocol, bound interface and every multicast
  membership with its count, from PACKET_DIAG.  PACKET_STATISTICS is not
  read (reading resets the task's counters).
- locks: the ``lock:`` lines of every fd's fdinfo against filelocks.img
  -- kind, type, range, mode, and the owning pid of a POSIX lock -- per
  open file description, once all tasks were read (a description's
  locks show under the fds of each task sharing it).
- cgroups, per thread: /proc/PID/task/TID/cgroup against the thread's
  cg set in cgroup.img, every hierarchy the set names.
- creds, per thread: uids, gids, groups, capability sets (inheritable,
  permitted, effective, bounding) from /proc/PID/task/TID/status.
  Securebits have no outside source (only PR_GET_SECUREBITS in the task).
- sched, per thread: policy (sched_getscheduler from outside: it also
  shows SCHED_RESET_ON_FORK, which stat does not), real-time priority and
  nice from /proc/PID/task/TID/stat (set with sched_setscheduler and
  setpriority).
- task: personality, rlimits (/proc/PID/limits), oom_score_adj, umask,
  THP disabled (status "THP_enabled", set by PR_SET_THP_DISABLE), rseq
  registration (PTRACE_GET_RSEQ_CONFIGURATION), robust list
  (get_robust_list) and loginuid (/proc/PID/task/TID/loginuid) per
  thread.  Not readable from outside and so not compared: dumpable,
  child_subreaper, pdeath_sig, clear-tid address, sigaltstack, interval
  timers (which also move), membarrier registrations
  (MEMBARRIER_CMD_GET_REGISTRATIONS answers only for the caller's own
  mm, and the check injects nothing: the puppets' trampolines are gone).
- signals: the blocked mask per thread (status SigBlk), which signals are
  caught and which ignored (SigCgt/SigIgn: a handler's address and flags
  are only readable with rt_sigaction in the task), and which are pending
  per thread and process-wide (SigPnd/ShdPnd).  A SIGCHLD pending beyond
  the image is accepted when the task has a zombie child in the image:
  that child was let go to exit before its parent was built, and its
  SIGCHLD may land after the parent's queue was drained.  So is the signal
  of an armed POSIX or interval timer: it may fire between its arming and
  the check.
- fs: cwd and root (same file as the image's path, by device and inode)
  and umask.

Zombies are not compared: they were let go to exit long before.
"""
from __future__ import annotations

import bisect
import ctypes
import fcntl
import os
import signal
import struct
import stat as st_mod
import time
from .record import field, record
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any, Callable

from . import logs
from .errors import RestoreError, Unsupported
from .images.pb import fdinfo_pb2
from .kernel import consts as C
from .kernel import libc, ptrace
from .kernel.structs import USER_REGS_FIELDS
from .procfs import parse
from .procfs.parse import LIMIT_RESOURCES, MapEntry, Stat, Status
from .resources import cgroup, file_lock, memfd, nsfile, regfile, shmem, sysvipc, tty
from .resources.memory import (MADV_BY_VMFLAG, MAP_BY_VMFLAG, VMA_ANON_SHARED, VMA_AREA_AIORING,
                               VMA_AREA_SOCKET, VMA_AREA_GUARD,
                               VMA_AREA_HEAP, VMA_AREA_MEMFD, VMA_AREA_STACK,
                               VMA_AREA_VDSO, VMA_AREA_VSYSCALL, VMA_AREA_VVAR, VMA_FILE_PRIVATE,
                               VMA_FILE_SHARED)
from .resources.signals import SIGCHLD, SIGNALS

if TYPE_CHECKING:
    import socket

    from .tasks import RestoreContext, RestoreTask

log = logs.Logger("procsnap.verify")

PREFIX = "restore check"


# ------------------------------------------------------------- sources ----

@record
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
            # os.open/os.read: no buffered file object per /proc file
            fd = os.open(f"/proc/{self.pid}/{name}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                chunks = []
                while chunk := os.read(fd, 65536):
                    chunks.append(chunk)
            finally:
                os.close(fd)
            return os.fsdecode(b"".join(chunks))
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

    def copy(self, fd: int) -> int:
        """Our own copy of the task's fd ``fd`` (pidfd_getfd: the same open
        file description), for what only fcntl/getsockopt on it tell."""
        pidfd = self._cache.get("pidfd")
        if pidfd is None:
            pidfd = self._cache["pidfd"] = os.pidfd_open(self.pid)
        # straight through ctypes (small ints pass as they are): one per
        # open file description, 10,000 of them in a 10,000-fd task
        return int(libc.libc.syscall(438, pidfd, fd, 0))  # __NR_pidfd_getfd

    def close(self) -> None:
        pidfd = self._cache.pop("pidfd", None)
        if pidfd is not None:
            os.close(pidfd)


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


def _madv_words(m: int | None) -> str:
    names = {C.MADV_SEQUENTIAL: "MADV_SEQUENTIAL", C.MADV_RANDOM: "MADV_RANDOM",
             C.MADV_DONTFORK: "MADV_DONTFORK", C.MADV_WIPEONFORK: "MADV_WIPEONFORK",
             C.MADV_DONTDUMP: "MADV_DONTDUMP", C.MADV_HUGEPAGE: "MADV_HUGEPAGE",
             C.MADV_NOHUGEPAGE: "MADV_NOHUGEPAGE", C.MADV_MERGEABLE: "MADV_MERGEABLE"}
    if not m:
        return "none"
    return "|".join(n for b, n in sorted(names.items()) if m & (1 << b)) or hex(m)


def _mflag_words(m: int | None) -> str:
    names = {C.MAP_GROWSDOWN: "MAP_GROWSDOWN", C.MAP_LOCKED: "MAP_LOCKED",
             C.MAP_NORESERVE: "MAP_NORESERVE", C.MAP_DROPPABLE: "MAP_DROPPABLE"}
    if not m:
        return "none"
    return "|".join(n for b, n in sorted(names.items()) if m & b) or hex(m)


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
    if ps.pgid in rctx.by_pid or ps.pgid in rctx.group_helpers:
        out += _differ("pgid", ps.pgid, st.pgrp)
    if ps.sid in rctx.by_pid:
        out += _differ("sid", ps.sid, st.session)
    out += _check_shared_kobjs(rctx, rt)
    return out


_KCMP = (("memory", "vm_id", 1), ("fd table", "files_id", 2), ("fs struct", "fs_id", 3))


def _check_shared_kobjs(rctx: "RestoreContext", rt: "RestoreTask") -> list[str]:
    """Shared with the parent (kcmp 0) exactly when the ids say so: a task
    can only share what it was cloned with from its parent, so the parent
    is the one task to ask."""
    parent = rctx.by_pid.get(rt.pstree.ppid)
    if parent is None or parent.zombie or parent.ids is None:
        return []
    out: list[str] = []
    for what, name, kind in _KCMP:
        want = getattr(rt.ids, name) == getattr(parent.ids, name)
        try:
            found = libc.syscall(C.NR["kcmp"], rt.pid, parent.pid, kind, 0, 0) == 0
        except OSError as exc:
            out.append(f"kcmp of its {what} with pid {parent.pid}: {exc.strerror}")
            continue
        out += _differ(f"{what} shared with pid {parent.pid}", want, found)
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
    names: dict[int, str | None] = rctx.kind_state.setdefault("verify", {})
    fid = entry.id
    if fid not in names:
        if entry.type != fdinfo_pb2.REG or not entry.HasField("reg") \
                or not regfile.reopened_by_name(rctx, entry):
            names[fid] = None
        else:
            names[fid] = _escape(regfile.restore_path(rctx, entry))
    return names[fid]


def _escape(path: str) -> str:
    # maps and fd links print '\n' as "\012" (seq_file_path escapes "\n").
    return path.replace("\n", "\\012")


@record
class _Vma:
    """A mapping as the restored task has it."""
    start: int
    end: int
    prot: int
    shared: bool
    kind: str
    name: str     # for files: the path; else ""
    pgoff: int    # for files: offset in bytes; else 0
    madv: int | None = None    # madvise bits (vma_entry.madv)
    mflags: int | None = None  # the mmap flags VmFlags show (vma_entry.flags & _VM_MAP_FLAGS)

    def key(self) -> tuple[Any, ...]:
        return (self.prot, self.shared, self.kind, self.name, self.madv, self.mflags)


# The check works on plain tuples in _merge's layout (a record per VMA,
# made several times over per task, cost more than the rest of the check
# for a tree of 200 small processes); _Vma only names a difference.
_S, _E, _OFF, _PROT_I, _SHARED, _KIND, _NAME, _MADV, _MFLAGS = range(9)


def _vma_of(t: tuple[Any, ...]) -> _Vma:
    """The _Vma of a tuple in _merge's layout."""
    return _Vma(t[_S], t[_E], t[_PROT_I], t[_SHARED], t[_KIND], t[_NAME], t[_OFF], t[_MADV],
                t[_MFLAGS])


def _tuple_of(v: _Vma) -> tuple[Any, ...]:
    return (v.start, v.end, v.pgoff, v.prot, v.shared, v.kind, v.name, v.madv, v.mflags)


def _img_tuple(cache: dict[tuple[Any, ...], tuple[Any, ...]], rctx: "RestoreContext",
               v: Any) -> tuple[Any, ...]:
    # A tree of forked processes holds the same VMAs again and again:
    # each distinct one is worked out once.
    madv = v.madv if v.HasField("madv") else None
    key = (v.start, v.end, v.status, v.prot, v.flags, v.pgoff, v.shmid, madv)
    t = cache.get(key)
    if t is None:
        t = cache[key] = _tuple_of(_img_vma1(rctx, v, madv))
    return t


def _img_vma1(rctx: "RestoreContext", v: Any, madv: int | None) -> _Vma:
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
    elif s & VMA_AREA_SOCKET:
        kind = "socket"   # a packet socket's rings (its inode is a new one)
    elif s & sysvipc.VMA_AREA_SYSVIPC:
        kind, name, pgoff = "sysv shm", f"id {v.shmid}", v.pgoff  # the same segment id
    elif s & VMA_AREA_MEMFD and s & VMA_FILE_SHARED and memfd.names_zero(rctx, v.shmid):
        # CRIU saves MAP_SHARED|MAP_ANONYMOUS memory as a memfd named
        # /dev/zero: restored, it is shared anonymous memory again
        kind = "shared anon"
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
    shared = bool(s & (VMA_FILE_SHARED | VMA_ANON_SHARED | VMA_AREA_AIORING
                       | sysvipc.VMA_AREA_SYSVIPC)) or bool(s & VMA_AREA_SOCKET
                                                          and v.flags & C.MAP_SHARED)
    return _Vma(v.start, v.end, v.prot, shared, kind, name, pgoff, madv, v.flags & _VM_MAP_FLAGS)


_PROT = {"r": 1, "w": 2, "x": 4}


def _found_vmas(text: str, cache: dict[str, tuple[Any, ...]] | None = None) -> list[_Vma]:
    """/proc/PID/maps as _Vma records (see _found_tuples)."""
    return [_vma_of(t) for t in _found_tuples(text, {} if cache is None else cache)]


def _found_tuples(text: str, cache: dict[str, tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """/proc/PID/maps, split by hand, as tuples in _merge's layout:
    parse_maps' regex and MapEntry cost more than the rest of the check
    for a tree of 200 small processes; ``cache``: line -> tuple, shared by
    the tasks of a tree (forked processes print the same lines)."""
    out = []
    get = cache.get
    for line in text.splitlines():
        t = get(line)
        if t is not None:
            out.append(t)
            continue
        parts = line.split(None, 5)
        if len(parts) < 5 or len(parts[1]) != 4:
            # says what is wrong
            return [_tuple_of(_found_vma(m)) for m in parse.parse_maps(text)]
        rng, perms, off, dev, ino = parts[:5]
        path = parts[5] if len(parts) > 5 else ""
        start, _, end = rng.partition("-")
        m = MapEntry(int(start, 16), int(end, 16), perms,
                     sum(_PROT.get(c, 0) for c in perms[:3]), perms[3] == "s", int(off, 16),
                     int(dev.partition(":")[0], 16), int(dev.partition(":")[2], 16), int(ino),
                     path)
        t = cache[line] = _tuple_of(_found_vma(m))
        out.append(t)
    return out


def _found_vma(m: MapEntry) -> _Vma:
    name, pgoff = "", 0
    if m.path in ("[vvar]", "[vvar_vclock]"):
        kind = "[vvar]"
    elif m.path in ("[vdso]", "[vsyscall]", "[heap]", "[stack]"):
        kind = m.path
    elif shmem.is_anon_shared(m):
        kind = "shared anon"
    elif sysvipc.is_sysv(m):
        kind, name, pgoff = "sysv shm", f"id {m.ino}", m.pgoff
    elif m.path == "/anon_hugepage (deleted)":
        # MAP_HUGETLB anonymous memory (maps shows no VmFlags to tell more)
        kind = "shared anon" if m.shared else "anon"
    elif m.path.startswith("/[aio]"):
        kind = "[aio]"
    elif m.path.startswith("socket:["):
        kind = "socket"
    elif memfd.is_memfd_mapping(m.path) or (m.path == "/dev/zero (deleted)"
                                            and (m.dev_major, m.dev_minor) == (0, 1)):
        # (MAP_PRIVATE of shared anonymous memory: a memfd named /dev/zero)
        kind, pgoff = "memfd", m.pgoff
    elif m.path.startswith("/") and m.ino:
        kind, pgoff = "file", m.pgoff
        name = m.path
    else:
        kind = "anon"   # also [anon:NAME]: the label is not kept (README)
    return _Vma(m.start, m.end, m.prot, m.shared, kind, name, pgoff)


def _merge(vmas: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Merge neighbours the kernel may or may not have merged (see above).
    Items: (start, end, pgoff, prot, shared, kind, name, madv, mflags)."""
    out: list[tuple[Any, ...]] = []
    for v in vmas:
        if out:
            p = out[-1]
            # [vvar] + [vvar_vclock] are one VVAR VMA in criu's images
            if p[1] == v[0] and p[3:] == v[3:] and (p[5] not in _SPECIAL or p[5] == "[vvar]") and \
                    (p[5] not in ("file", "memfd") or p[2] + (p[1] - p[0]) == v[2]):
                out[-1] = (p[0], v[1]) + p[2:]
                continue
        out.append(v)
    return out


_SPECIAL = ("[vdso]", "[vvar]", "[vsyscall]")


# VmFlags that the image keeps (memory.VMFLAGS "saved" rows, CRIU's
# __parse_vmflags): madvise advice in vma_entry.madv, mmap flags in
# vma_entry.flags.
_VM_MADV = MADV_BY_VMFLAG
_VM_MAP = MAP_BY_VMFLAG
_VM_MAP_FLAGS = C.MAP_GROWSDOWN | C.MAP_LOCKED | C.MAP_NORESERVE | C.MAP_DROPPABLE


def _vmflags_of(smaps: str) -> dict[int, tuple[int, int]]:
    """VMA start -> (madvise bits, mmap flags), from the VmFlags lines.

    The kernel prints each VMA as its maps line, its counters, and its
    VmFlags line last (show_smap): found by searching for the VmFlags
    lines, not by looking at each of the ~25 lines of a VMA."""
    out: dict[int, tuple[int, int]] = {}
    block = 0
    while block < len(smaps):
        at = smaps.find("\nVmFlags:", block)
        if at < 0:
            break
        head = smaps[block:smaps.find(" ", block)]
        lo, dash, _ = head.partition("-")
        end = smaps.find("\n", at + 1)
        end = len(smaps) if end < 0 else end
        try:
            start = int(lo, 16)
        except ValueError:
            dash = ""
        if not dash:
            return _vmflags_by_line(smaps)   # not the layout above: line by line
        madv = mflags = 0
        for word in smaps[at + 9:end].split():
            bits = _VM_BITS.get(word)
            if bits is not None:
                madv |= bits[0]
                mflags |= bits[1]
        out[start] = (madv, mflags)
        block = end + 1
    return out


# VmFlags word -> (its madvise bit, its mmap flag)
_VM_BITS = {k: ((1 << _VM_MADV[k]) if k in _VM_MADV else 0, _VM_MAP.get(k, 0))
            for k in list(_VM_MADV) + list(_VM_MAP)}


def _vmflags_by_line(smaps: str) -> dict[int, tuple[int, int]]:
    out: dict[int, tuple[int, int]] = {}
    start = 0
    for line in smaps.splitlines():
        if line[:1] in "0123456789abcdef" and "-" in line.split(" ", 1)[0]:
            start = int(line.split("-", 1)[0], 16)
        elif line.startswith("VmFlags:"):
            words = line.split()[1:]
            out[start] = (sum(1 << b for k, b in _VM_MADV.items() if k in words),
                          sum(b for k, b in _VM_MAP.items() if k in words))
    return out


def _wants_vmflags(img: list[tuple[Any, ...]]) -> bool:
    """smaps walks every page table: read only when the image holds a
    VmFlag beyond a stack's growsdown (a lost one is caught; one the
    restore added unasked to an image without any is not)."""
    return any(t[_MADV] or (t[_MFLAGS] or 0) & ~C.MAP_GROWSDOWN or
               (t[_MFLAGS] and t[_KIND] != "[stack]") for t in img)


def check_maps(f: Found) -> list[str]:
    rctx = f.rctx
    cache = rctx.kind_state.setdefault("verify-vmas", {})
    # guard regions live inside other VMAs (MADV_GUARD_INSTALL makes none)
    img = [_img_tuple(cache, rctx, v) for v in f.rt.mm.vmas if not v.status & VMA_AREA_GUARD]
    # criu does not set VMA_AREA_STACK; the kernel labels [stack] the VMA
    # holding mm->start_stack (vma_is_initial_stack), whoever wrote the image.
    sp = f.rt.mm.mm_start_stack
    for i, t in enumerate(img):
        if t[_KIND] == "anon" and t[_S] <= sp <= t[_E]:
            img[i] = t[:_KIND] + ("[stack]",) + t[_KIND + 1:]
    found = _found_tuples(f.text("maps"), rctx.kind_state.setdefault("verify-maps-lines", {}))
    # A file's name is compared only where the restore reopened it by that
    # name (the image VMA covering the found one has a name).
    starts = [t[_S] for t in img]
    for j, t in enumerate(found):
        if t[_KIND] == "file":
            i = bisect.bisect_right(starts, t[_S]) - 1
            if i < 0 or not img[i][_NAME] or img[i][_E] <= t[_S]:
                found[j] = t[:_NAME] + ("",) + t[_NAME + 1:]
    if _wants_vmflags(img):
        vmflags = _vmflags_of(f.text("smaps"))
        # the kernel's own mappings are remade by the kernel, flags and all
        found = [t[:_MADV] + ((0, 0) if t[_KIND] in _SPECIAL else vmflags.get(t[_S], (0, 0)))
                 for t in found]
        img = [t[:_MADV] + ((0, 0) if t[_KIND] in _SPECIAL else (t[_MADV] or 0, t[_MFLAGS]))
               for t in img]
    else:
        # found tuples carry None for both (maps shows no VmFlags)
        img = [t if t[_MADV] is None and t[_MFLAGS] is None else t[:_MADV] + (None, None)
               for t in img]
    if img == found:
        return []   # the same VMAs, no merging to decide
    ma, mb = _merge(img), _merge(found)
    if ma == mb:
        return []   # the same once merged where the kernel may merge
    a = [_vma_of(x) for x in ma]
    b = [_vma_of(x) for x in mb]
    for e, g in zip(a, b):
        where = f"mapping {e.start:#x}-{e.end:#x}"
        if e.start != g.start:
            return [f"{where}: found {g.start:#x}-{g.end:#x} ({g.kind})"]
        # Ends that differ: the fields first -- a lost flag is why the
        # kernel merged (or split) what it did not before.
        out = _differ(f"{where}: kind", e.kind, g.kind)
        out += _differ(f"{where}: protection", e.prot, g.prot, _prot)
        out += _differ(f"{where}: sharing", e.shared, g.shared,
                       lambda s: "shared" if s else "private")
        out += _differ(f"{where}: file offset", e.pgoff, g.pgoff, hex)
        out += _differ(f"{where}: file", e.name, g.name, repr)
        out += _differ(f"{where}: madvise flags (VmFlags)", e.madv, g.madv, _madv_words)
        out += _differ(f"{where}: mmap flags (VmFlags)", e.mflags, g.mflags, _mflag_words)
        if out:
            return out
        if e.end != g.end:
            return [f"{where}: found {g.start:#x}-{g.end:#x} ({g.kind})"]
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
    if nsfile.matches_link(link):
        return {fdinfo_pb2.NS}
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
    for part in ("pipe", "usk", "isk", "nlsk", "psk", "sgfd", "tfd", "epfd", "ify", "pidfd",
                 "nsf"):
        if entry.HasField(part):
            return getattr(entry, part).flags, None
    return None, None


def _fdinfo(dirfd: int, fd: int) -> tuple[int, int, list[str]]:
    """(pos, flags, lock lines) from fdinfo/FD (``dirfd`` is
    /proc/PID/fdinfo): every kind prints "pos:\t%lli" and "flags:\t0%o"
    first, and the locks on the description last ("lock:\t...",
    fs/locks.c show_fd_locks).  Three short system calls for most fds
    (10,000 fds); only a longer fdinfo is read on."""
    h = os.open(str(fd), os.O_RDONLY | os.O_CLOEXEC, dir_fd=dirfd)
    try:
        data = os.read(h, 4096)
        if len(data) == 4096:
            more = [data]
            while chunk := os.read(h, 65536):
                more.append(chunk)
            data = b"".join(more)
    finally:
        os.close(h)
    lines = data.split(b"\n", 2)
    if len(lines) < 3 or not lines[0].startswith(b"pos:") or not lines[1].startswith(b"flags:"):
        info = parse.parse_fdinfo(os.fsdecode(data), f"fdinfo/{fd}")  # says what is wrong
        return info.pos, info.flags, [ln for ln in info.lines if ln.startswith("lock:")]
    locks = []
    if b"lock:" in data:
        locks = [os.fsdecode(ln) for ln in data.split(b"\n") if ln.startswith(b"lock:")]
    return int(lines[0][4:]), int(lines[1][6:], 8), locks


def check_files(f: Found) -> list[str]:
    rt = f.rt
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
            return _check_fds(f, have, want, fd_dir, info_dir)
        finally:
            os.close(info_dir)
    finally:
        os.close(fd_dir)


def _check_fds(f: Found, have: list[int], want: dict[int, Any], fd_dir: int,
               info_dir: int) -> list[str]:
    rctx, pid = f.rctx, f.pid
    # What the image says of each file id, worked out once per id.
    expect: dict[int, tuple[Any, int | None, int | None, str | None]] = {}
    found_locks = _found_locks(rctx)
    for fd in have:
        fe = want[fd]
        e = expect.get(fe.id)
        if e is None:
            entry = rctx.file_entry(fe.id)
            flags, pos = _expected_fd(rctx, entry)
            e = expect[fe.id] = (entry, flags, pos, _by_name(rctx, entry))
        entry, flags, pos, name = e
        kind = entry.type
        link = os.readlink(str(fd), dir_fd=fd_dir)
        if kind not in _kind_of_link(link):
            return [f"fd {fd}: kind {_kind_name(kind)} expected, {link} found"]
        got_pos, got_flags, locks = _fdinfo(info_dir, fd)
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
        if kind == fdinfo_pb2.TTY:
            out += _check_pts(f, fd, entry)
        if kind == fdinfo_pb2.NS:
            # the namespace the restored tree lives in, not merely one of the kind
            out += _differ(f"fd {fd}: namespace", os.readlink(
                nsfile.restored_path(rctx, f.rt, entry)), link, repr)
        for line in locks:
            lk = parse.parse_lock_line(line, f"/proc/{pid}/fdinfo/{fd}")
            found_locks.setdefault(fe.id, {}).setdefault(_lock_key(lk), (pid, fd))
        if rctx.placed.get(fe.id) == (pid, fd) and not got_flags & os.O_PATH:
            # What the open file description holds, read once per
            # description (through the fd that first got it back).
            out += _check_description(f, fd, entry)
        if out:
            return out
    return []


def _check_pts(f: Found, fd: int, entry: Any) -> list[str]:
    """A pty fd is on its pts: the index (st_rdev) and the devpts instance
    (st_dev) the restore made it in, read from the fd's own node or, for a
    master, from its peer's."""
    want = tty.restored_pts(f.rctx, entry)
    if want is None:
        return []
    rdev, dev, master = want
    copy = f.copy(fd)
    try:
        st = tty.pts_node(copy, master)
    finally:
        os.close(copy)
    what = f"fd {fd}: pty {'master' if master else 'slave'}"
    return _differ(f"{what}: pts device", _devno(rdev), _devno(st.st_rdev)) or \
        _differ(f"{what}: devpts instance (st_dev)", _devno(dev), _devno(st.st_dev))


def _devno(dev: int) -> str:
    return f"{os.major(dev)}:{os.minor(dev)}"


# ----------------------------------------------- open file descriptions ----

F_GETSIG, F_GETOWN_EX, F_GETOWNER_UIDS = 11, 16, 17  # (10 is F_SETSIG)
_OWNER = struct.Struct("<ii")
_OWNER_TYPES = {0: "thread", 1: "process", 2: "process group"}


def _fown_of(entry: Any) -> Any:
    """The fown_entry inside a file entry's kind message, or None."""
    for desc, value in entry.ListFields():
        if desc.message_type is not None and "fown" in desc.message_type.fields_by_name:
            return value.fown if value.HasField("fown") else None
    return None


def _check_description(f: Found, fd: int, entry: Any) -> list[str]:
    fown = _fown_of(entry)
    sk_kind = entry.type in (fdinfo_pb2.INETSK, fdinfo_pb2.UNIXSK, fdinfo_pb2.NETLINKSK,
                             fdinfo_pb2.PACKETSK)
    if fown is None and not sk_kind:
        return []
    copy = f.copy(fd)
    try:
        out = [] if fown is None else _check_fown(fd, copy, fown)
        if sk_kind:
            out += _check_sockopts(f.rctx, fd, copy, entry)
        if entry.type == fdinfo_pb2.NETLINKSK:
            out += _check_netlink(fd, copy, entry.nlsk)
        if entry.type == fdinfo_pb2.PACKETSK:
            out += _check_packet(f, fd, copy, entry.psk)
        return out
    finally:
        os.close(copy)


def _owner(t: tuple[int, int, int, int]) -> str:
    if not t[1]:
        return "none"
    return f"{_OWNER_TYPES.get(t[0], f'type {t[0]}')} {t[1]} (uid {t[2]}, euid {t[3]})"


def _check_fown(fd: int, copy: int, fown: Any) -> list[str]:
    """F_SETSIG and F_SETOWN_EX (with the uids it was set under) of the
    description; O_ASYNC is in its flags, compared above."""
    out = _differ(f"fd {fd}: F_GETSIG signal", fown.signum, fcntl.fcntl(copy, F_GETSIG))
    ptype, opid = _OWNER.unpack(fcntl.fcntl(copy, F_GETOWN_EX, bytes(_OWNER.size)))
    uid = euid = 0
    if opid:
        uid, euid = struct.unpack("<II", fcntl.fcntl(copy, F_GETOWNER_UIDS, bytes(8)))
    else:
        ptype = 0   # no owner: its type means nothing
    want = (fown.pid_type, fown.pid, fown.uid, fown.euid) if fown.pid else (0, 0, 0, 0)
    out += _differ(f"fd {fd}: SIGIO owner (F_GETOWN_EX)", want, (ptype, opid, uid, euid), _owner)
    return out


# -------------------------------------------------------------- locks ----

def _found_locks(rctx: "RestoreContext") -> dict[int, dict[tuple[Any, ...], tuple[int, int]]]:
    """file id -> lock key -> (pid, fd) it was first seen under, filled
    as each task's fds are read, compared once every task was."""
    return rctx.kind_state.setdefault("verify-locks", {})  # type: ignore[no-any-return]


_LOCK_KINDS = {file_lock.FL_POSIX: "POSIX", file_lock.FL_FLOCK: "FLOCK",
               file_lock.FL_OFD: "OFDLCK", file_lock.FL_LEASE: "LEASE"}
_LOCK_TYPES = {file_lock.F_RDLCK: "READ", file_lock.F_WRLCK: "WRITE"}


def _lock_key(lk: Any) -> tuple[Any, ...]:
    """What makes a lock: kind, type, range, mode, and for a POSIX lock its
    owner (a process; the others are owned by the open file description,
    which the file id names, and the pid the kernel prints for them is
    only whoever took them)."""
    return (lk.kind, lk.type, lk.start, lk.end, lk.mode, lk.pid if lk.kind == "POSIX" else None)


def _lock_words(key: tuple[Any, ...]) -> str:
    kind, typ, start, end, mode, owner = key
    from .procfs.parse import LockLine
    words = file_lock.describe(LockLine(kind, mode, typ, owner or 0, "", 0, start, end))
    return words + (f" of pid {owner}" if owner is not None else "")


def check_locks(rctx: "RestoreContext") -> list[tuple[int, str]]:
    """Every lock and lease of filelocks.img held again -- same kind, type,
    range and owner, on the open file description of the fd it names --
    and none else on the tree's descriptions.  (pid, difference) pairs."""
    want: dict[int, dict[tuple[Any, ...], tuple[int, int]]] = {}
    for e in rctx.payload_entries(file_lock.NAME):
        e = e.msg
        rt = rctx.by_pid.get(rctx.outside_pid(e.pid))
        fe = None if rt is None else next((x for x in rt.fdinfos if x.fd == e.fd), None)
        if fe is None or e.flag not in _LOCK_KINDS or e.type not in _LOCK_TYPES:
            return [(e.pid, f"fd {e.fd}: lock entry {_LOCK_KINDS.get(e.flag, e.flag)} of "
                             "filelocks.img names no fd of the tree")]
        kind = _LOCK_KINDS[e.flag]
        end = None if e.len == 0 else e.start + e.len - 1
        key = (kind, _LOCK_TYPES[e.type], e.start, end,
               "ACTIVE" if e.flag == file_lock.FL_LEASE else "ADVISORY",
               rctx.outside_pid(e.pid) if e.flag == file_lock.FL_POSIX else None)
        want.setdefault(fe.id, {})[key] = (rctx.outside_pid(e.pid), e.fd)
    got = _found_locks(rctx)
    out: list[tuple[int, str]] = []
    for fid in sorted(set(want) | set(got)):
        w, g = want.get(fid, {}), got.get(fid, {})
        for key, (pid, fd) in w.items():
            if key not in g:
                others = ", ".join(_lock_words(k) for k in g if k not in w) or "none"
                out.append((pid, f"fd {fd}: {_lock_words(key)} expected, {others} found"))
        for key, (pid, fd) in g.items():
            if key not in w:
                out.append((pid, f"fd {fd}: {_lock_words(key)} held, not in filelocks.img"))
    return out


# ------------------------------------------------------ socket options ----

SO_NO_CHECK, SO_PASSSEC, SO_BUF_LOCK = 11, 34, 72
IP_PKTINFO, IP_FREEBIND = 8, 15
SOCK_SNDBUF_LOCK, SOCK_RCVBUF_LOCK = 1, 2
# SOL_SOCKET, IPPROTO_IP, IPPROTO_IPV6, IPPROTO_TCP (socket is imported by the
# functions that check sockets: its enums cost every restore ~1 % of start-up)
_SOL, _IP, _IP6, _TCP = 1, 0, 41, 6


def _get(sk: socket.socket, level: int, num: int, size: int = 0) -> Any:
    return sk.getsockopt(level, num, size) if size else sk.getsockopt(level, num)


def _timeo(sec: int, usec: int) -> bytes:
    return struct.pack("qq", sec, usec)


def _sockopt_expect(rctx: "RestoreContext", entry: Any,
                    sk: socket.socket) -> list[tuple[str, int, int, int, Any]]:
    """(option, level, number, read size (0: an int), value) the image
    gives a socket: each option sockopts.TABLE marks SAVED, as the
    restore sets it (unset fields: what a fresh socket has)."""
    import socket
    inet = entry.type == fdinfo_pb2.INETSK
    o = (entry.isk if inet else entry.nlsk if entry.type == fdinfo_pb2.NETLINKSK
         else entry.psk if entry.type == fdinfo_pb2.PACKETSK else entry.usk).opts
    ie: Any = entry.isk
    tcp = inet and ie.proto == _TCP
    lock = o.so_buf_lock if o.HasField("so_buf_lock") else None
    out: list[tuple[str, int, int, int, Any]] = [
        ("SO_REUSEADDR", _SOL, socket.SO_REUSEADDR, 0, int(o.reuseaddr)),
        ("SO_DONTROUTE", _SOL, socket.SO_DONTROUTE, 0, int(o.so_dontroute)),
        ("SO_NO_CHECK", _SOL, SO_NO_CHECK, 0, int(o.so_no_check)),
        ("SO_SNDTIMEO", _SOL, socket.SO_SNDTIMEO, 16, _timeo(o.so_snd_tmo_sec, o.so_snd_tmo_usec)),
        ("SO_RCVTIMEO", _SOL, socket.SO_RCVTIMEO, 16, _timeo(o.so_rcv_tmo_sec, o.so_rcv_tmo_usec)),
        ("SO_MARK", _SOL, socket.SO_MARK, 0, o.so_mark),
        ("SO_BINDTODEVICE", _SOL, socket.SO_BINDTODEVICE, 16, o.so_bound_dev),
        # size -1: read by sockets.get_filter (SO_GET_FILTER counts instructions)
        ("SO_GET_FILTER", _SOL, 26, -1, list(o.so_filter)),
        ("SO_LOCK_FILTER", _SOL, 44, 0, int(o.so_lock_filter)),
    ]
    # A TCP buffer the task never sized is the kernel's to grow
    # (tcp_sndbuf_expand, rcv space tuning): compared only when locked.
    if not tcp or (lock or 0) & SOCK_SNDBUF_LOCK:
        out.append(("SO_SNDBUF", _SOL, socket.SO_SNDBUF, 0, o.so_sndbuf))
    if not tcp or (lock or 0) & SOCK_RCVBUF_LOCK:
        out.append(("SO_RCVBUF", _SOL, socket.SO_RCVBUF, 0, o.so_rcvbuf))
    if lock is not None:
        out.append(("SO_BUF_LOCK", _SOL, SO_BUF_LOCK, 0, lock & (SOCK_SNDBUF_LOCK |
                                                               SOCK_RCVBUF_LOCK)))
    if o.HasField("so_priority"):
        out.append(("SO_PRIORITY", _SOL, socket.SO_PRIORITY, 0, o.so_priority))
    if o.HasField("so_rcvlowat"):
        out.append(("SO_RCVLOWAT", _SOL, socket.SO_RCVLOWAT, 0, o.so_rcvlowat))
    if entry.type == fdinfo_pb2.PACKETSK:
        return out + _packet_expect(entry.psk)
    if not inet:
        out += [("SO_PASSCRED", _SOL, socket.SO_PASSCRED, 0, int(o.so_passcred)),
                ("SO_PASSSEC", _SOL, SO_PASSSEC, 0, int(o.so_passsec))]
        return out
    linger = struct.pack("ii", 1, o.so_linger) if o.HasField("so_linger") else None
    out += [("SO_REUSEPORT", _SOL, socket.SO_REUSEPORT, 0, int(o.so_reuseport)),
            ("SO_BROADCAST", _SOL, socket.SO_BROADCAST, 0, int(o.so_broadcast)),
            ("SO_KEEPALIVE", _SOL, socket.SO_KEEPALIVE, 0, int(o.so_keepalive)),
            ("SO_OOBINLINE", _SOL, socket.SO_OOBINLINE, 0, int(bool(o.so_oobinline))),
            ("SO_LINGER", _SOL, socket.SO_LINGER, 8, linger)]
    ip = ie.ip_opts if ie.HasField("ip_opts") else None
    if ip is not None:
        if ie.family == socket.AF_INET6 and ie.type == socket.SOCK_RAW:
            out.append(("IPV6_FREEBIND", _IP6, 78, 0, int(ip.freebind)))  # no SOL_IP there
        else:
            out.append(("IP_FREEBIND", _IP, IP_FREEBIND, 0, int(ip.freebind)))
        if ie.family == socket.AF_INET6:
            out.append(("IPV6_RECVPKTINFO", _IP6, socket.IPV6_RECVPKTINFO, 0, int(ip.pktinfo)))
        else:
            out += [("IP_PKTINFO", _IP, IP_PKTINFO, 0, int(ip.pktinfo)),
                    ("IP_TOS", _IP, socket.IP_TOS, 0, ip.tos),
                    ("IP_TTL", _IP, socket.IP_TTL, 0,
                     ip.ttl if ip.HasField("ttl") else _default(rctx, sk, _IP, socket.IP_TTL))]
    if ip is not None and ie.type == socket.SOCK_RAW and ip.HasField("raw"):
        out += _raw_expect(ie.family, ie.proto, ip.raw)
    if ie.family == socket.AF_INET6 and not (ie.v6only is False and _bound_v6_only(ie)):
        out.append(("IPV6_V6ONLY", _IP6, socket.IPV6_V6ONLY, 0, int(ie.v6only)))
    if tcp and ie.HasField("tcp_opts"):
        t = ie.tcp_opts
        out += [("TCP_NODELAY", _TCP, socket.TCP_NODELAY, 0, int(t.nodelay)),
                ("TCP_CORK", _TCP, socket.TCP_CORK, 0, int(t.cork))]
        for name, num, fld in (("TCP_KEEPCNT", socket.TCP_KEEPCNT, "keepcnt"),
                               ("TCP_KEEPIDLE", socket.TCP_KEEPIDLE, "keepidle"),
                               ("TCP_KEEPINTVL", socket.TCP_KEEPINTVL, "keepintvl")):
            if t.HasField(fld) and getattr(t, fld):
                out.append((name, _TCP, num, 0, getattr(t, fld)))
    return out


def _bound_v6_only(ie: Any) -> bool:
    """A connection whose IPv6 source is a specific address that is not
    v4-mapped: binding it (which the restore must do, to get its port back)
    makes the kernel set IPV6_V6ONLY (inet6_bind), and it cannot be cleared
    once bound.  On a connected socket the flag changes nothing: it only
    decides which addresses a socket may still bind or accept."""
    import socket
    from .resources.tcp import unpack_addr
    if not ie.dst_port:
        return False
    # (the 16 bytes, not ipaddress: its import was ~3 % of a small restore)
    raw = socket.inet_pton(socket.AF_INET6, unpack_addr(socket.AF_INET6, ie.src_addr))
    return any(raw) and raw[:12] != b"\0" * 10 + b"\xff\xff"  # not :: nor ::ffff:a.b.c.d


def _check_netlink(fd: int, copy: int, ne: Any) -> list[str]:
    """A netlink socket's port id, every group it is in, and its peer."""
    import socket
    from .resources import netlinksk
    sk = socket.socket(fileno=copy)
    try:
        portid, _low = sk.getsockname()
        peer = tuple(sk.getpeername())
        out = _differ(f"fd {fd}: netlink port id", ne.portid, portid)
        out += _differ(f"fd {fd}: netlink groups", list(ne.groups), netlinksk.groups_of(sk))
        out += _differ(f"fd {fd}: netlink peer", (ne.dst_portid, ne.dst_group), peer)
        return out
    finally:
        sk.detach()   # the copy is closed by the caller


def _packet_expect(pe: Any) -> list[tuple[str, int, int, int, Any]]:
    """The SOL_PACKET options of packet_sock_entry (a SOCK_PACKET socket
    has none: it answers no SOL_PACKET option)."""
    if pe.type == 10:
        return []
    from .resources import packetsk as P
    vnet = P.VNET_HDR_LEN if pe.vnet_hdr else 0
    fanout = pe.fanout if pe.HasField("fanout") and pe.fanout != P.NO_FANOUT else 0
    return [("PACKET_VERSION", P.SOL_PACKET, P.PACKET_VERSION, 0, pe.version),
            ("PACKET_RESERVE", P.SOL_PACKET, P.PACKET_RESERVE, 0, pe.reserve),
            ("PACKET_TIMESTAMP", P.SOL_PACKET, P.PACKET_TIMESTAMP, 0, pe.timestamp),
            ("PACKET_COPY_THRESH", P.SOL_PACKET, P.PACKET_COPY_THRESH, 0, pe.copy_thresh),
            ("PACKET_AUXDATA", P.SOL_PACKET, P.PACKET_AUXDATA, 0, int(pe.aux_data)),
            ("PACKET_ORIGDEV", P.SOL_PACKET, P.PACKET_ORIGDEV, 0, int(pe.orig_dev)),
            ("PACKET_VNET_HDR", P.SOL_PACKET, P.PACKET_VNET_HDR, 0, int(pe.vnet_hdr)),
            ("PACKET_VNET_HDR_SZ", P.SOL_PACKET, P.PACKET_VNET_HDR_SZ, 0, vnet),
            ("PACKET_LOSS", P.SOL_PACKET, P.PACKET_LOSS, 0, int(pe.loss)),
            # getsockopt reports the group id and mode flags of the group
            # (pkt_sk(sk)->fanout), as the diag does: the same word
            ("PACKET_FANOUT", P.SOL_PACKET, P.PACKET_FANOUT, 0, fanout)]


def _check_packet(f: Found, fd: int, copy: int, pe: Any) -> list[str]:
    """A packet socket's type, protocol, bound interface and memberships
    (PACKET_DIAG in the task's network namespace)."""
    from .resources import packetsk
    d = packetsk.diag_of(os.fstat(copy).st_ino, f.pid)
    if d is None:
        return [f"fd {fd}: packet socket expected, packet_diag does not list it"]
    want_mc = sorted((m.index, m.type, bytes(m.addr)) for m in pe.mclist)
    got_mc = sorted((i, t, a) for i, n, t, a in d.mclist for _ in range(n))
    out = _differ(f"fd {fd}: packet socket type", pe.type, d.type)
    out += _differ(f"fd {fd}: packet socket protocol", pe.protocol, d.protocol)
    out += _differ(f"fd {fd}: packet socket interface", pe.ifindex, d.info[0] if d.info else None)
    out += _differ(f"fd {fd}: packet memberships", want_mc, got_mc)
    return out


def _raw_expect(family: int, proto: int, r: Any) -> list[tuple[str, int, int, int, Any]]:
    """A raw socket's ip_opts.raw: header-include, no-defrag and the ICMP
    type filter (read as bytes, compared as the image's words)."""
    import socket
    if family == socket.AF_INET6:
        out: list[tuple[str, int, int, int, Any]] = [
            ("IPV6_HDRINCL", _IP6, 36, 0, int(r.hdrincl))]
        if proto == socket.IPPROTO_ICMPV6 and r.icmpv_filter:
            out.append(("ICMPV6_FILTER", 58, 1, 32, struct.pack("8I", *r.icmpv_filter)))
        return out
    out = [("IP_HDRINCL", _IP, socket.IP_HDRINCL, 0, int(r.hdrincl)),
           ("IP_NODEFRAG", _IP, 22, 0, int(r.nodefrag))]
    if proto == socket.IPPROTO_ICMP and r.icmpv_filter:
        out.append(("ICMP_FILTER", 255, 1, 4, struct.pack("I", r.icmpv_filter[0])))
    return out


def _default(rctx: "RestoreContext", sk: socket.socket, level: int, num: int) -> Any:
    """What a fresh socket like ``sk`` reports (a default that follows a sysctl)."""
    import socket
    from .kernel import netns
    defaults = rctx.kind_state.setdefault("verify-sockdefaults", {})
    nsfd = netns.of_socket(sk.fileno())
    try:
        # made in the socket's own network namespace: defaults follow its sysctls
        key = (os.fstat(nsfd).st_ino, sk.family, sk.type, sk.proto, level, num)
        if key not in defaults:
            with netns.inside_fd(nsfd), socket.socket(sk.family, sk.type, sk.proto) as fresh:
                defaults[key] = fresh.getsockopt(level, num)
    finally:
        os.close(nsfd)
    return defaults[key]


def _show_opt(v: Any) -> str:
    if isinstance(v, bytes) and len(v) in (4, 32):
        return "0x" + v.hex()
    if isinstance(v, bytes) and len(v) == 16:
        sec, usec = struct.unpack("qq", v)
        return f"{sec}.{usec:06d}s"
    if isinstance(v, bytes) and len(v) == 8:
        on, secs = struct.unpack("ii", v)
        return f"on, {secs}s" if on else "off"
    if v is None:
        return "off"
    return repr(v) if isinstance(v, str) else str(v)


def _check_filter(fd: int, sk: socket.socket, want: list[int]) -> list[str]:
    """The classic BPF program attached, instruction by instruction."""
    from .resources import sockets  # only for a tree with sockets
    try:
        got = sockets.get_filter(sk, f"fd {fd}")
    except Unsupported:
        return [f"fd {fd}: SO_GET_FILTER: a classic filter of {len(want)} instructions "
                "expected, an eBPF program found"]
    if len(got) != len(want):
        return [f"fd {fd}: SO_GET_FILTER: a filter of {len(want)} instructions expected, "
                f"{len(got)} found"]
    return [] if got == want else [f"fd {fd}: SO_GET_FILTER: the filter's instructions differ"]


def _check_sockopts(rctx: "RestoreContext", fd: int, copy: int, entry: Any) -> list[str]:
    import socket
    sk = socket.socket(fileno=copy)
    try:
        out: list[str] = []
        for name, level, num, size, want in _sockopt_expect(rctx, entry, sk):
            if name == "SO_GET_FILTER":
                out += _check_filter(fd, sk, want)
                continue
            got = _get(sk, level, num, size)
            if name == "SO_BINDTODEVICE":
                got = got.split(b"\0", 1)[0].decode()
            elif name == "SO_LINGER" and not struct.unpack("ii", got)[0]:
                got = None
            elif name == "SO_MARK":
                got &= 0xFFFFFFFF
            out += _differ(f"fd {fd}: {name}", want, got, _show_opt)
        return out
    finally:
        sk.detach()   # the copy is closed by the caller


def _own_ns_ino(rctx: "RestoreContext", kind: str) -> int:
    """The inode of procsnap's own namespace of ``kind``, stat'ed once."""
    key = "verify-own-ns-" + kind
    ino = rctx.kind_state.get(key)
    if ino is None:
        ino = rctx.kind_state[key] = os.stat(f"/proc/self/ns/{kind}").st_ino
    return ino  # type: ignore[no-any-return]


def _id_map(f: Found) -> Any:
    """user.id_map of the task: its user namespace's maps (None when it is
    procsnap's), read once per namespace -- the maps belong to it."""
    ino = os.stat(f"/proc/{f.pid}/ns/user").st_ino
    if ino == _own_ns_ino(f.rctx, "user"):
        return None
    from .resources.namespaces import user   # (loaded only for a tree that has one)
    maps = f.rctx.kind_state.setdefault("verify-idmaps", {})
    if ino not in maps:
        maps[ino] = user.IdMap(user.read_map(f.pid, "uid_map"), user.read_map(f.pid, "gid_map"))
    return maps[ino]


def check_creds(f: Found) -> list[str]:
    out: list[str] = []
    idmap = _id_map(f)  # images hold ids as seen inside (namespaces.user)
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

        uids, gids, groups = tuple(st.uids), tuple(st.gids), list(st.groups)
        if idmap is not None:
            from .resources.namespaces import user
            uids = tuple(-1 if (v := idmap.uid(x)) is None else v for x in uids)
            gids = tuple(-1 if (v := idmap.gid(x)) is None else v for x in gids)
            groups = user.inside_groups(groups, idmap)
        out += _differ(f"{where}uids", (c.uid, c.euid, c.suid, c.fsuid), uids)
        out += _differ(f"{where}gids", (c.gid, c.egid, c.sgid, c.fsgid), gids)
        out += _differ(f"{where}groups", sorted(c.groups), sorted(groups))
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
    # Parsed once per distinct text: a tree's tasks mostly print the same.
    parsed = f.rctx.kind_state.setdefault("verify-limits", {})
    text = f.text("limits")
    by_number = parsed.get(text)
    if by_number is None:
        limits = parse.parse_limits(text)
        by_number = parsed[text] = {LIMIT_RESOURCES[n]: v for n, v in limits.items()
                                    if n in LIMIT_RESOURCES}
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
        if tc.HasField("loginuid"):
            # per task_struct; taskattrs writes it in each thread
            out += _differ(f"{where}loginuid", tc.loginuid,
                           int(f.text(f"task/{th.tid}/loginuid")))
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
    parents = f.rctx.kind_state.get("verify-zombie-parents")
    if parents is None:   # once, not a walk of the tree per task (200 tasks)
        parents = f.rctx.kind_state["verify-zombie-parents"] = \
            {t.pstree.ppid for t in f.rctx.tasks if t.zombie}
    zombie_child = rt.pid in parents
    slack = (1 << (SIGCHLD - 1)) if zombie_child else 0
    # An armed POSIX timer may fire between its arming and this check: its
    # signal, pending beyond the image, is the timer going on, not a loss.
    # So may an armed interval timer (setitimer: zdtm timers arms one to
    # fire 100 us ahead): its SIGALRM, SIGVTALRM or SIGPROF.
    timer_sigs = 0
    if tc.HasField("timers"):
        for pt in tc.timers.posix:
            if pt.si_signo and (pt.vsec or pt.vnsec or pt.isec or pt.insec):
                timer_sigs |= 1 << (pt.si_signo - 1)
        for it, signo in ((tc.timers.real, signal.SIGALRM), (tc.timers.virt, signal.SIGVTALRM),
                          (tc.timers.prof, signal.SIGPROF)):
            if it.vsec or it.vusec:
                timer_sigs |= 1 << (signo - 1)

    def queued(q: Any) -> int:
        m = 0
        for e in q.signals:
            signo = int.from_bytes(e.siginfo[0:4], "little", signed=True)
            if 0 < signo <= 64:
                m |= 1 << (signo - 1)
        return m

    shared = queued(tc.signals_s) if tc.HasField("signals_s") else 0
    extra = (slack | timer_sigs) & ~shared
    out += _differ("pending signals (ShdPnd)", shared, leader.shd_pnd & ~extra, _sigs)
    for th in rt.threads:
        where = "" if th.tid == f.pid else f"thread {th.tid}: "
        st = f.status(th.tid)
        out += _differ(f"{where}blocked signals", final_mask(rt, th), st.sig_blk, _sigs)
        tcore = th.core.thread_core
        own = queued(tcore.signals_p) if tcore.HasField("signals_p") else 0
        out += _differ(f"{where}pending signals (SigPnd)", own, st.sig_pnd & ~(timer_sigs & ~own),
                       _sigs)
    return out


def _in_root(rctx: "RestoreContext", pid: int, path: str) -> str:
    """``path`` seen from task ``pid``'s root when its mount namespace is not ours."""
    if os.stat(f"/proc/{pid}/ns/mnt").st_ino == _own_ns_ino(rctx, "mnt"):
        return path
    return f"/proc/{pid}/root{path}"


def check_fs(f: Found) -> list[str]:
    rctx, rt = f.rctx, f.rt
    out: list[str] = []
    for what, fid in (("cwd", rt.fs.cwd_id), ("root", rt.fs.root_id)):
        entry = rctx.file_entry(fid)
        dead = regfile.dead_pid(rctx, fid)
        if dead is not None:
            # /proc/N of a process gone: the name, unhashed again (helper reaped)
            want_link = entry.reg.name + " (deleted)"
            # (N as the tree's /proc names it: through its root, when its own)
            if f.link(what) != want_link or os.path.exists(rctx.tree_path(f"/proc/{dead}")):
                out.append(f"{what}: {want_link!r} with pid {dead} gone expected, "
                           f"{f.link(what)!r} found")
            continue
        if not _reopened_by_name(rctx, entry):
            continue
        path = regfile.restore_path(rctx, entry)
        got = os.stat(f"/proc/{f.pid}/{what}")
        idents = rctx.kind_state.setdefault("verify-fs", {})
        # The path as the task sees it: a tree restored in a mount
        # namespace of its own (a container) names files in its root.
        # Through the namespace's root, not the task's own (a chrooted
        # task's names start at the namespace's root too).
        seen = rctx.tree_path(path) if rctx.tree_root_fd is not None \
            else _in_root(rctx, f.pid, path)
        if seen not in idents:   # a tree of 200 shares one cwd (under 200 file ids): one stat
            try:
                want = os.stat(seen)
                idents[seen] = (want.st_dev, want.st_ino)
            except OSError:
                idents[seen] = None
        same = idents[seen] == (got.st_dev, got.st_ino)
        if not same:
            out.append(f"{what}: {path!r} expected, {f.link(what)!r} "
                       f"(inode {got.st_dev:#x}:{got.st_ino}) found")
    status = f.status(rt.pid)
    if status.umask is not None:
        out += _differ("umask", rt.fs.umask, status.umask, oct)
    return out


def _cg_sets(rctx: "RestoreContext") -> dict[int, tuple[tuple[str, str], ...]]:
    """cgroup.img's cg sets as the restore placed them: id -> ((controllers,
    path), ...), with --cgroup-root applied; none under --manage-cgroups=ignore."""
    return cgroup.restore_sets(rctx)


def check_cgroup(f: Found) -> list[str]:
    """Each thread's cgroup in every hierarchy of its cg set
    (/proc/PID/task/TID/cgroup, as the dump read it)."""
    sets = _cg_sets(f.rctx)
    if not sets:
        return []   # no cgroup.img: nothing was recorded
    rt = f.rt
    out: list[str] = []
    for th in rt.threads:
        tc = th.core.thread_core
        ident = tc.cg_set if tc.HasField("cg_set") else rt.core.tc.cg_set
        if not ident:
            continue
        where = "" if th.tid == f.pid else f"thread {th.tid}: "
        want = sets.get(ident)
        if want is None:
            out.append(f"{where}cg_set {ident} is not in cgroup.img")
            continue
        name = f"task/{th.tid}/cgroup"
        got = dict(cgroup.parse_cgroup(f.text(name), f"/proc/{f.pid}/{name}"))
        for ctl, path in want:
            out += _differ(f"{where}cgroup {ctl or 'cgroup2'}: path", path, got.get(ctl, "none"),
                           repr)
    return out


COMPARATORS: list[Callable[[Found], list[str]]] = [
    check_identity, check_regs, check_mm, check_maps, check_files, check_creds, check_sched,
    check_task, check_signals, check_fs, check_cgroup,
]


def differences(rctx: "RestoreContext", rt: "RestoreTask") -> list[str]:
    """Every difference between task ``rt`` as it is now and its images."""
    f = Found(rctx, rt)
    out: list[str] = []
    try:
        for check in COMPARATORS:
            out += check(f)
    finally:
        f.close()
    return out


def _fail(pid: int, diffs: list[str]) -> None:
    for d in diffs[1:]:
        log.info("%s: pid %d: %s", PREFIX, pid, d)  # shown with -vv: one line by default
    more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
    raise RestoreError(f"{PREFIX}: pid {pid}: {diffs[0]}{more}")


def verify(rctx: "RestoreContext") -> None:
    """Compare every live task with its images; RestoreError on the first
    task that differs (each of its differences is logged)."""
    t = time.monotonic()
    for rt in rctx.tasks:
        if rt.zombie:
            continue
        diffs = differences(rctx, rt)
        if diffs:
            _fail(rt.pid, diffs)
    # Locks: a description's locks show under the fds of every task that
    # shares it, so they are compared once all were read.
    lock_diffs = check_locks(rctx)
    if lock_diffs:
        pid = lock_diffs[0][0]
        _fail(pid, [d for p, d in lock_diffs if p == pid])
    rctx.stats["verify"] = time.monotonic() - t
