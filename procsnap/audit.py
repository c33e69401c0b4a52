"""The audit of task state: every item procsnap can see in a task, and what
becomes of it.

Each item of a source (a /proc file, a call) is exactly one of:

* ``SAVED``: a resource module saves and restores it exactly (``note``
  names the module);
* ``REFUSED``: restorable only in its default state; when the task's
  value is not that, the dump is refused with one line naming the pid
  and the state (``note`` is the reason after the ';');
* ``IRRELEVANT``: nothing to save, for the reason written in ``note``
  (statistics, consequences of other saved state, ...).

The dumper calls :func:`check` for every task under the freeze, before
memory is copied, so a refusal costs no page copying.  Sources whose
items are named by the kernel (``status`` lines, ``stat`` fields,
``ns/*`` and ``attr/*`` entries) are checked name by name: a name this
table does not know -- a new kernel's field -- is refused as unknown,
never skipped.

``python3 -m procsnap.audit`` prints the table as markdown rows (the
README's table is made from it).
"""
from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable
from .record import record
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from .errors import Unsupported
from .inject import Out, Read
from .kernel import consts as C
from .kernel.libc import prctl as own_prctl
from .kernel.libc import syscall
from .procfs.parse import _STAT_NUMERIC, parse_status
from .resources.namespaces import saved_names as saved_ns_names

if TYPE_CHECKING:
    from .tasks import DumpContext, DumpTask, DumpThread

SAVED = "saved"
REFUSED = "refused"
IRRELEVANT = "irrelevant"

# A refusal predicate: (the task's value, procsnap's own value of the same
# item, or None) -> a description of the state when it cannot be restored,
# None when it can.  "procsnap's own" is the default a restored task gets:
# a puppet is a fork of the restorer and inherits it.
if TYPE_CHECKING:
    Refuse = Callable[[Any, Any], "str | None"]


@record(frozen=True)
class Item:
    """One row of the audit: a piece of state and its verdict."""
    source: str
    name: str
    kind: str
    note: str
    refuse: Refuse | None = None

    def row(self) -> str:
        return f"| `{self.source}` | {self.name} | {self.kind} | {self.note} |"


def _s(source: str, names: str, note: str) -> list[Item]:
    return [Item(source, n, SAVED, note) for n in names.split()]


def _i(source: str, names: str, note: str) -> list[Item]:
    return [Item(source, n, IRRELEVANT, note) for n in names.split()]


def _r(source: str, name: str, note: str, refuse: Refuse) -> Item:
    return Item(source, name, REFUSED, note, refuse)


def _nonzero(what: str, base: int = 10) -> Refuse:
    def pred(v: Any, own: Any) -> str | None:
        n = int(str(v).split()[0], base) if not isinstance(v, int) else v
        return f"{what} ({v})" if n else None
    return pred


def _not_own(what: str) -> Refuse:
    def pred(v: Any, own: Any) -> str | None:
        return None if v == own else f"{what} {v!r} (a restored task gets {own!r})"
    return pred


# -- /proc/PID/status: every line, by name (proc_pid_status) ----------------

_SPEC_TASK = ("thread mitigated", "thread force mitigated")


def _spec(what: str) -> Refuse:
    # "thread (force) mitigated" is a PR_SET_SPECULATION_CTRL choice of the
    # task (or of seccomp); the others follow the system-wide mode.
    return lambda v, own: f"{what} {v!r}" if v in _SPEC_TASK else None


STATUS: list[Item] = [
    *_s("status", "Name", "taskattrs (comm, per thread)"),
    *_s("status", "Umask", "fs"),
    *_s("status", "State", "core (running, stopped with its signal, zombie)"),
    *_s("status", "Tgid Pid PPid Threads", "core (pstree, thread list; same pids)"),
    *_s("status", "Uid Gid Groups CapInh CapPrm CapEff CapBnd", "creds (per thread)"),
    *_s("status", "SigBlk SigIgn SigCgt", "signals"),
    *_s("status", "SigPnd ShdPnd", "signals (each siginfo, per thread and shared)"),
    _r("status", "SigPnd/ShdPnd: SIGTRAP", "a pending SIGTRAP cannot be told from the traps "
       "of the dump and restore (as CRIU)",
       lambda v, own: "a pending SIGTRAP" if v & (1 << (C.SIGTRAP - 1)) else None),
    *_i("status", "Ngid", "NUMA balancing group: a scheduler heuristic the kernel rebuilds"),
    *_i("status", "TracerPid", "procsnap itself while frozen; a task traced by another cannot "
        "be seized and fails the freeze"),
    *_i("status", "FDSize", "size of the fd table's allocation, grows on demand"),
    *_s("status", "NStgid NSpid NSpgid NSsid", "namespaces.pid (every task's pid at each "
        "level, pid namespaces nested in the tree included: their inits are cloned with "
        "CLONE_NEWPID; a task in one that is not its init's child is refused there)"),
    _r("status", "Kthread", "kernel threads cannot be dumped", _nonzero("a kernel thread")),
    *_i("status", "VmPeak VmSize VmHWM VmRSS RssAnon RssFile RssShmem VmData VmStk VmExe "
        "VmLib VmPTE VmSwap HugetlbPages",
        "memory sizes: consequences of the mappings and pages memory saves"),
    *_i("status", "VmLck", "consequence of VM_LOCKED mappings (smaps VmFlags, memory)"),
    *_i("status", "VmPin", "pages pinned by an fd (io_uring, RDMA): audited with that fd"),
    _r("status", "CoreDumping", "a task dumping core is exiting", _nonzero("dumping core")),
    *_s("status", "THP_enabled", "memory (PR_SET_THP_DISABLE, mm_entry.thp_disabled)"),
    _r("status", "untag_mask", "x86 linear address masking (ARCH_ENABLE_TAGGED_ADDR) is not "
       "restored", lambda v, own: None if int(v, 16) == (1 << 64) - 1 else f"LAM untag mask {v}"),
    _r("status", "x86_Thread_features", "x86 shadow stack is not restored",
       lambda v, own: f"x86 thread features {v!r}" if v.strip() else None),
    _r("status", "x86_Thread_features_locked", "x86 shadow stack is not restored",
       lambda v, own: f"x86 locked thread features {v!r}" if v.strip() else None),
    *_i("status", "SigQ", "count of queued signals (saved one by one, signals) / "
        "RLIMIT_SIGPENDING (taskattrs)"),
    *_s("status", "CapAmb NoNewPrivs", "creds (per thread: creds_entry cap_amb, no_new_privs)"),
    *_s("status", "Seccomp Seccomp_filters", "seccomp (strict mode and filter chains per "
        "thread, seccomp.img; a filter that can return SECCOMP_RET_USER_NOTIF is refused)"),
    _r("status", "Speculation_Store_Bypass", "PR_SET_SPECULATION_CTRL is not restored",
       _spec("speculative store bypass")),
    _r("status", "SpeculationIndirectBranch", "PR_SET_SPECULATION_CTRL is not restored",
       _spec("indirect branch speculation")),
    *_s("status", "Cpus_allowed", "taskattrs (sched_getaffinity/sched_setaffinity per thread; "
        "the cpuset part comes with the cgroup)"),
    *_i("status", "Cpus_allowed_list", "Cpus_allowed in other words"),
    _r("status", "Mems_allowed", "the memory nodes of its cpuset: cpuset properties are not "
       "saved (the thread's own NUMA policy is, see mempolicy)", _not_own("allowed memory nodes")),
    *_i("status", "Mems_allowed_list", "Mems_allowed in other words"),
    *_i("status", "voluntary_ctxt_switches nonvoluntary_ctxt_switches", "statistics"),
]


def _expand(items: list[Item]) -> list[Item]:
    """One item per name where a row stands for several (NStgid NSpid ...)."""
    out = []
    for it in items:
        if it.kind == REFUSED and " " in it.name and ":" not in it.name:
            out += [Item(it.source, n, it.kind, it.note, it.refuse) for n in it.name.split()]
        else:
            out.append(it)
    return out


STATUS = _expand(STATUS)


# -- /proc/PID/stat: every field, by proc(5)'s name -------------------------

def _exit_signal(v: int, own: Any) -> str | None:
    return None if v == C.SIGCHLD else f"exit signal {v} to its parent (not SIGCHLD)"


STAT: list[Item] = [
    *_s("stat", "pid comm state ppid pgrp session num_threads", "core (pstree, comm, state)"),
    *_s("stat", "tty_nr tpgid", "tty (controlling terminal; --shell-job; "
        "--external tty[RDEV:DEV]; --orphan-pts-master)"),
    *_i("stat", "flags", "PF_* flags: kernel bookkeeping (PF_KTHREAD is refused, see "
        "Kthread)"),
    *_i("stat", "minflt cminflt majflt cmajflt utime stime cutime cstime guest_time cguest_time "
        "delayacct_blkio_ticks nswap cnswap starttime processor wchan itrealvalue "
        "kstkesp kstkeip", "statistics and instantaneous values"),
    *_s("stat", "priority nice rt_priority policy", "taskattrs (see sched)"),
    *_i("stat", "vsize rss", "consequences of the mappings memory saves"),
    *_s("stat", "rsslim", "taskattrs (RLIMIT_RSS)"),
    *_s("stat", "startcode endcode startstack start_data end_data start_brk arg_start arg_end "
        "env_start env_end", "memory (mm_entry, PR_SET_MM_MAP)"),
    *_s("stat", "signal blocked sigignore sigcatch", "signals"),
    _r("stat", "exit_signal", "the restore forks every task with SIGCHLD", _exit_signal),
    *_s("stat", "exit_code", "core (zombies)"),
]


# -- scheduling: sched_getattr(2) from outside (/proc/PID/sched is its
#    statistics: irrelevant) ---------------------------------------------

def _policy(v: int, own: Any) -> str | None:
    return "SCHED_DEADLINE" if v == C.SCHED_DEADLINE else None


def _sched_flags(v: int, own: Any) -> str | None:
    extra = v & ~1  # RESET_ON_FORK is saved with the policy
    return f"sched flags {extra:#x}" if extra else None


SCHED: list[Item] = [
    *_s("sched", "policy priority nice reset_on_fork", "taskattrs (per thread, "
        "sched_setscheduler with SCHED_RESET_ON_FORK, setpriority)"),
    _r("sched", "policy: SCHED_DEADLINE", "deadline scheduling is not saved", _policy),
    _r("sched", "flags", "sched_setattr flags are not saved", _sched_flags),
    _r("sched", "runtime deadline period", "custom slices and deadline parameters are not "
       "saved", _not_own("scheduling runtime/deadline/period")),
    _r("sched", "util_min util_max", "utilization clamps are not saved",
       _not_own("utilization clamp")),
    _r("sched", "core_cookie", "core scheduling cookies (PR_SCHED_CORE) are not saved",
       _nonzero("a core scheduling cookie")),
    *_i("sched", "/proc/PID/sched", "scheduler statistics (vruntime, switches, NUMA faults)"),
]


# -- other files ----------------------------------------------------------

FILES: list[Item] = [
    Item("timers", "POSIX timers", SAVED, "taskattrs (id, clock, sigevent, interval, time "
         "left; task_timers_entry.posix; a pending timer signal is queued by its timer again)"),
    _r("timers", "POSIX timer overrun", "timer_getoverrun() cannot be set: it comes back 0",
       lambda v, own: f"POSIX timer {v[0]:#x}: overrun count {v[1]} of its last expiry"
       if v else None),
    Item("cgroup", "membership in every hierarchy, v1 and v2, per thread", SAVED,
         "cgroup (cgroup.img, cg_set; the cgroups' owners, modes and controller properties, "
         "written as --manage-cgroups MODE says; --cgroup-root moves them)"),
    *_s("loginuid", "loginuid", "taskattrs (written by the task at restore)"),
    _r("loginuid", "loginuid of a thread", "the loginuid is saved once per process",
       lambda v, own: None if v is None else f"a thread with loginuid {v} unlike its leader's"),
    *_i("sessionid", "sessionid", "the audit session id: the kernel hands out a new one at "
        "every loginuid write and none can be chosen; the restored task starts a new audit "
        "session, as after a new login (CRIU does the same)"),
    *_s("personality", "personality", "taskattrs"),
    Item("limits", "every row", SAVED, "taskattrs (rlimits)"),
    *_s("oom_score_adj", "oom_score_adj", "taskattrs"),
]

_ATTR_NOTE = "LSM labels are not saved; the restored task would get procsnap's"
ATTR: list[Item] = [
    _r("attr", name, _ATTR_NOTE, _not_own(f"LSM attr/{name}"))
    for name in ("current", "prev", "exec", "fscreate", "keycreate", "sockcreate")
]

NS_KINDS = ("cgroup", "ipc", "mnt", "net", "pid", "pid_for_children", "time",
            "time_for_children", "user", "uts")
# The kinds resources.namespaces saves (with their _for_children twins): a
# tree has one namespace of each -- procsnap's own or the root's -- and
# every task must share the root's.
SAVED_NS = tuple(k for k in NS_KINDS if k.removesuffix("_for_children") in saved_ns_names())
# saved per task, nested in the tree's (namespaces.pid checks their shape)
NESTED_NS = ("pid", "pid_for_children")


# Why a kind is not saved, where there is more to say (none left: every
# kind of /proc/PID/ns is saved for the tree's root).
_NOT_SAVED: dict[str, str] = {}


def _ns(kind: str) -> Refuse:
    def pred(v: str, own: str) -> str | None:
        if v == own:
            return None
        if kind.endswith("_for_children"):
            return (f"its children would start in another {kind[:-13]} namespace "
                    f"({kind} {v}, procsnap's {own})")
        return f"lives in its own {kind} namespace ({v}, procsnap's {own})"
    return pred


def _ns_unlike_root(kind: str) -> Refuse:
    def pred(v: str, root: str) -> str | None:
        if v == root:
            return None
        if kind.endswith("_for_children"):
            return (f"its children would start in another {kind[:-13]} namespace than the "
                    f"root's ({kind} {v}, the root's {root})")
        return f"lives in another {kind} namespace than the root's ({v}, the root's {root})"
    return pred


def _ns_unlike_own(kind: str) -> Refuse:
    base = kind.removesuffix("_for_children")

    def pred(v: str, its: str) -> str | None:
        if v.split(":", 1)[-1] == its.split(":", 1)[-1]:
            return None
        return (f"its children would start in another {base} namespace than its own "
                f"({kind} {v}, its {base} {its})")
    return pred


def _pid_root_not_init(v: str, own: Any) -> str | None:
    return None if v == "1" else (f"lives in a pid namespace whose init is not in the tree "
                                  f"(the root is pid {v} inside)")


NS: list[Item] = [
    *[_r("ns", k, _NOT_SAVED.get(k, "this kind of namespace is not saved yet"), _ns(k))
      for k in NS_KINDS if k not in SAVED_NS],
    *[Item("ns", k, SAVED, f"namespaces ({k.removesuffix('_for_children')}: the tree's own, "
           "created anew for the root at restore)") for k in SAVED_NS],
    *[_r("ns", f"{k}: unlike the root's", "one namespace of a kind per tree: nested "
         "namespaces are not saved yet", _ns_unlike_root(k)) for k in SAVED_NS
      if k not in NESTED_NS],
    *[_r("ns", f"{k}: unlike its own", "a task whose children would start in another "
         "namespace than its own (unshare without a fork) is not saved", _ns_unlike_own(k))
      for k in SAVED_NS if k.endswith("_for_children") and k not in NESTED_NS],
    *[Item("ns", f"{k}: unlike the root's", SAVED, "namespaces.pid (a pid namespace nested "
           "in the tree, whose init is a child of a task of the namespace above, is made "
           "again (clone3 CLONE_NEWPID with the task's pids at every level); a parent whose "
           "pid_for_children is such a child's namespace (unshare -fp) enters it again "
           "(setns); any other shape is refused by name)") for k in NESTED_NS],
    _r("ns", "pid: the root is not its init", "a pid namespace is restored anew with the "
       "root as its pid 1", _pid_root_not_init),
]


# -- prctl values (injected in the task: they answer for the caller) ----------

@record(frozen=True)
class Prctl:
    """A prctl value read by injection in the task."""
    option: int
    arg: int = 0
    per_thread: bool = True
    by_pointer: bool = False     # the value comes back through arg2


# name -> how to read it; only what the table must judge is read
PRCTL_READ: dict[str, Prctl] = {
    "PR_GET_THP_DISABLE": Prctl(C.PR_GET_THP_DISABLE, per_thread=False),
    "PR_GET_TSC": Prctl(C.PR_GET_TSC, by_pointer=True),
    "PR_GET_SPECULATION_CTRL(L1D_FLUSH)": Prctl(C.PR_GET_SPECULATION_CTRL, C.PR_SPEC_L1D_FLUSH),
    "PR_GET_IO_FLUSHER": Prctl(C.PR_GET_IO_FLUSHER),
    "PR_GET_MEMORY_MERGE": Prctl(C.PR_GET_MEMORY_MERGE, per_thread=False),
    "PR_MCE_KILL_GET": Prctl(C.PR_MCE_KILL_GET),
    "PR_GET_MDWE": Prctl(C.PR_GET_MDWE, per_thread=False),
}

# ... asked of each thread (the leader only for a per-process value) in
# the driver's one batch a thread (dumper._ask_threads); errors are values
_PRCTL_ASKED = {
    name: Read("prctl", how.option, Out(0), 0, 0, 0, out=8, check=False,
               leader_only=not how.per_thread) if how.by_pointer
    else Read("prctl", how.option, how.arg, 0, 0, 0, check=False, leader_only=not how.per_thread)
    for name, how in PRCTL_READ.items()}
THREAD_READS = list(_PRCTL_ASKED.values())


PRCTL: list[Item] = [
    *_s("prctl", "PR_GET_DUMPABLE", "memory (mm_entry.dumpable), set by creds"),
    *_s("prctl", "PR_GET_KEEPCAPS PR_GET_SECUREBITS PR_CAPBSET_READ", "creds"),
    *_s("prctl", "PR_GET_CHILD_SUBREAPER PR_GET_PDEATHSIG PR_GET_NAME PR_GET_TID_ADDRESS",
        "taskattrs"),
    *_s("prctl", "PR_GET_AUXV", "memory (mm_saved_auxv)"),
    Item("prctl", "PR_GET_THP_DISABLE", SAVED, "memory (mm_entry.thp_disabled)"),
    _r("prctl", "PR_GET_THP_DISABLE: EXCEPT_ADVISED", "mm_entry.thp_disabled has no room for "
       "PR_THP_DISABLE_EXCEPT_ADVISED",
       lambda v, own: "THP disabled except where advised"
       if v > 0 and v & C.PR_THP_DISABLE_EXCEPT_ADVISED else None),
    *_i("prctl", "PR_GET_NO_NEW_PRIVS PR_GET_SECCOMP PR_CAP_AMBIENT_IS_SET",
        "judged from status (NoNewPrivs, Seccomp, CapAmb)"),
    *_i("prctl", "PR_GET_SPECULATION_CTRL(STORE_BYPASS, INDIRECT_BRANCH)",
        "judged from status (Speculation_Store_Bypass, SpeculationIndirectBranch)"),
    _r("prctl", "PR_GET_SPECULATION_CTRL(L1D_FLUSH)", "PR_SET_SPECULATION_CTRL is not restored",
       lambda v, own: None if v < 0 or v == own else f"L1D flush control {v:#x}"),
    Item("prctl", "PR_GET_TIMERSLACK", SAVED, "taskattrs (per thread; 0 under an RT policy "
         "comes with the policy)"),
    _r("prctl", "PR_GET_TSC", "PR_SET_TSC is not restored (but seccomp strict mode sets it, "
       "and is restored)",
       lambda v, own: None if v in (-1, C.PR_TSC_ENABLE) else "rdtsc made to SIGSEGV (PR_SET_TSC)"),
    _r("prctl", "PR_GET_IO_FLUSHER", "PR_SET_IO_FLUSHER needs CAP_SYS_RESOURCE",
       lambda v, own: "an IO flusher (PR_SET_IO_FLUSHER)" if v > 0 else None),
    _r("prctl", "PR_GET_MEMORY_MERGE", "PR_SET_MEMORY_MERGE needs CAP_SYS_RESOURCE",
       lambda v, own: "KSM merging of all its memory (PR_SET_MEMORY_MERGE)" if v > 0 else None),
    _r("prctl", "PR_MCE_KILL_GET", "PR_MCE_KILL is not restored",
       lambda v, own: None if v < 0 or v == C.PR_MCE_KILL_DEFAULT
       else f"machine-check kill policy {v}"),
    _r("prctl", "PR_GET_MDWE", "memory-deny-write-execute cannot be undone and forbids the "
       "restore's own code pages", lambda v, own: f"MDWE flags {v:#x}" if v > 0 else None),
    *_i("prctl", "PR_GET_TIMING", "always PR_TIMING_STATISTICAL"),
    *_i("prctl", "PR_GET_FUTEX_HASH", "the private futex hash size: a performance knob "
        "that changes no result"),
    *_i("prctl", "PR_GET_UNALIGN PR_GET_FPEMU PR_GET_FPEXC PR_GET_ENDIAN PR_GET_FP_MODE "
        "PR_GET_TAGGED_ADDR_CTRL PR_SVE_GET_VL PR_SME_GET_VL PR_PAC_GET_ENABLED_KEYS "
        "PR_RISCV_V_GET_CONTROL PR_GET_SHADOW_STACK_STATUS", "not on x86_64 (EINVAL)"),
]

_SAVED_ELSEWHERE = [
    Item("mempolicy", "get_mempolicy: mode, flags, nodemask", SAVED, "taskattrs (per "
         "thread, set_mempolicy injected; the per-mapping policies of mbind are memory's)"),
    *_s("membarrier", "MEMBARRIER_CMD_GET_REGISTRATIONS", "taskattrs "
        "(core's membarrier_registration_mask, re-registered at restore)"),
]

TABLE: list[Item] = [*STATUS, *STAT, *SCHED, *FILES, *ATTR, *NS, *PRCTL, *_SAVED_ELSEWHERE]

_BY_KEY: dict[tuple[str, str], list[Item]] = {}
for _it in TABLE:
    _BY_KEY.setdefault((_it.source, _it.name), []).append(_it)


def items(source: str, name: str) -> list[Item]:
    return _BY_KEY.get((source, name), [])


# -- procsnap's own values: what a restored task gets by default --------------

@functools.lru_cache(maxsize=1)
def _own_status() -> dict[str, str]:
    with open("/proc/self/status") as f:
        return parse_status(f.read(), "/proc/self/status").raw


@functools.lru_cache(maxsize=1)
def _own_ns() -> dict[str, str]:
    return {k: os.readlink(f"/proc/self/ns/{k}") for k in os.listdir("/proc/self/ns")}


@functools.lru_cache(maxsize=None)
def _own_attr(name: str) -> str | None:
    return _read_attr(f"/proc/self/attr/{name}")


@functools.lru_cache(maxsize=None)
def _own_prctl(name: str) -> int:
    how = PRCTL_READ[name]
    if how.by_pointer:
        val = ctypes.c_int(0)
        try:
            own_prctl(how.option, ctypes.addressof(val))
        except OSError:
            return -1
        return val.value
    try:
        return own_prctl(how.option, how.arg)
    except OSError:
        return -1


class SchedAttr(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint32), ("policy", ctypes.c_uint32),
                ("flags", ctypes.c_uint64), ("nice", ctypes.c_int32),
                ("priority", ctypes.c_uint32), ("runtime", ctypes.c_uint64),
                ("deadline", ctypes.c_uint64), ("period", ctypes.c_uint64),
                ("util_min", ctypes.c_uint32), ("util_max", ctypes.c_uint32)]


def sched_values(tid: int) -> dict[str, Any]:
    """sched_getattr(2) of any task, from outside, by the table's names."""
    attr = SchedAttr()
    syscall(C.NR["sched_getattr"], tid, ctypes.addressof(attr), ctypes.sizeof(attr), 0)
    cookie = ctypes.c_uint64(0)
    try:
        own_prctl(C.PR_SCHED_CORE, C.PR_SCHED_CORE_GET, tid, 0, ctypes.addressof(cookie))
    except OSError:
        pass  # no CONFIG_SCHED_CORE: no cookie can exist
    return {"policy": attr.policy, "policy: SCHED_DEADLINE": attr.policy, "flags": attr.flags,
            "runtime deadline period": (attr.runtime, attr.deadline, attr.period),
            "util_min util_max": (attr.util_min, attr.util_max),
            "core_cookie": cookie.value}


@functools.lru_cache(maxsize=1)
def _own_sched() -> dict[str, Any]:
    return sched_values(os.getpid())


def _read_attr(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().rstrip(b"\0\n").decode(errors="surrogateescape")
    except OSError:
        return None  # no LSM answers for it (EINVAL): nothing to restore


# -- the check ------------------------------------------------------------

def _judge(pid: int, where: str, source: str, name: str, value: Any, own: Any,
           path: str) -> None:
    found = items(source, name)
    if not found:
        raise Unsupported(f"pid {pid}: {where}{path} has {name!r} ({value}), a field procsnap "
                          "does not know; it cannot tell whether the restore would keep it")
    for it in found:
        if it.refuse is None:
            continue
        state = it.refuse(value, own)
        if state:
            raise Unsupported(f"pid {pid}: {where}{state}; {it.note}")


_NS_STATUS = ("NStgid", "NSpid", "NSpgid", "NSsid")


def check_status(pid: int, where: str, raw: dict[str, str], path: str,
                 root: dict[str, str] | None = None) -> None:
    """Every line of a status file, against the table.  The pid namespace
    lines are compared with the root's (``root``, the tree's root task's
    status) when given, else with procsnap's own."""
    own = _own_status()
    for key, value in raw.items():
        base = root if root is not None and key in _NS_STATUS else own
        _judge(pid, where, "status", key, value, base.get(key), path)
    pending = int(raw.get("SigPnd", "0"), 16) | int(raw.get("ShdPnd", "0"), 16)
    _judge(pid, where, "status", "SigPnd/ShdPnd: SIGTRAP", pending, None, path)


def check_stat_fields(pid: int, values: list[str], path: str) -> None:
    """A stat line longer than the fields the table knows is refused."""
    known = 1 + len(_STAT_NUMERIC)  # after "pid (comm)": state, then the numbers
    if len(values) > known:
        _judge(pid, "", "stat", f"field {known + 3}", values[known], None, path)


def check_all(ctx: "DumpContext") -> None:
    """The dumper's one call: every task of the frozen tree, in tree order."""
    for task in ctx.tasks:
        check(ctx, task)


def check(ctx: "DumpContext", task: "DumpTask") -> None:
    """Refuse the dump when the task holds state the table says is lost."""
    pid = task.pid
    status = task.status
    if task.zombie:
        # A zombie has no mm, files or namespaces left; only its pids count.
        st = task.proc.status()
        _judge(pid, "", "status", "NSpid", st.raw.get("NSpid", ""),
               _root_status(ctx).get("NSpid"), f"/proc/{pid}/status")
        return
    assert status is not None and task.stat is not None
    with open(f"/proc/{pid}/stat") as f:
        check_stat_fields(pid, f.read().rsplit(")", 1)[1].split(), f"/proc/{pid}/stat")
    _judge(pid, "", "stat", "exit_signal", task.stat.exit_signal, None, f"/proc/{pid}/stat")
    _check_timers(pid, task)
    root_ns = _ns_links(f"/proc/{ctx.tasks[0].pid}")
    if task is ctx.tasks[0] and root_ns.get("pid") != _own_ns().get("pid"):
        inner = status.raw.get("NSpid", "").split()[-1:] or ["?"]
        _judge(pid, "", "ns", "pid: the root is not its init", inner[0], None, f"/proc/{pid}/status")
    leader_login = _read_int(f"/proc/{pid}/loginuid")
    for th in task.threads:
        tid = th.tid
        where = "" if tid == pid else f"thread {tid}: "
        base = f"/proc/{pid}/task/{tid}"
        raw = task.thread_status(tid).raw
        _check_ns(pid, where, base, root_ns)  # first: the most telling reason
        check_status(pid, where, raw, f"{base}/status", _root_status(ctx))
        _check_sched(pid, where, tid)
        _check_attr(pid, where, base)
        if tid != pid:
            login = _read_int(f"{base}/loginuid")
            _judge(pid, where, "loginuid", "loginuid of a thread",
                   None if login == leader_login else login, None, f"{base}/loginuid")
        _check_prctl(pid, where, th, leader=tid == pid, strict=raw.get("Seccomp") == "1")


def _check_timers(pid: int, task: "DumpTask") -> None:
    timers = task.proc.timers()
    if not timers:
        return
    inj = task.threads[0].need_inj()
    for t in timers:
        over = inj.call("timer_getoverrun", t.id)
        _judge(pid, "", "timers", "POSIX timer overrun", (t.id, over) if over else None, None,
               f"/proc/{pid}/timers")


def _read_int(path: str) -> int:
    with open(path) as f:
        return int(f.read())


def _ns_links(base: str) -> dict[str, str]:
    out = {}
    for kind in os.listdir(f"{base}/ns"):
        try:
            out[kind] = os.readlink(f"{base}/ns/{kind}")
        except FileNotFoundError:
            # pid_for_children of a task that unshared CLONE_NEWPID and has
            # not forked yet: a new namespace without its init.
            out[kind] = f"{kind}:[new, no process yet]"
    return out


def _root_status(ctx: "DumpContext") -> dict[str, str]:
    root = ctx.tasks[0]
    assert root.status is not None
    return root.status.raw


def _check_ns(pid: int, where: str, base: str, root: dict[str, str]) -> None:
    """A kind procsnap saves must be the root's (one namespace of a kind per
    tree); any other kind must be procsnap's own."""
    own = _own_ns()
    links = _ns_links(base)
    for kind, link in links.items():
        path = f"{base}/ns/"
        if kind in NESTED_NS:
            continue  # namespaces.pid (dump) checks the nesting: a shape it cannot restore is refused there
        if kind in SAVED_NS:
            _judge(pid, where, "ns", kind, link, root.get(kind), path)
            _judge(pid, where, "ns", f"{kind}: unlike the root's", link, root.get(kind), path)
            if kind.endswith("_for_children"):
                its = links.get(kind.removesuffix("_for_children"), "")
                _judge(pid, where, "ns", f"{kind}: unlike its own", link, its, path)
        else:
            _judge(pid, where, "ns", kind, link, own.get(kind), path)


def _check_sched(pid: int, where: str, tid: int) -> None:
    own = _own_sched()
    vals = sched_values(tid)
    rt = vals["policy"] in (1, 2)  # SCHED_FIFO, SCHED_RR
    for name, value in vals.items():
        if name == "util_min util_max" and rt:
            continue  # an RT task's default minimum clamp differs; set by its policy
        if name == "runtime deadline period" and vals["policy"] not in (0, 3):
            continue  # only fair tasks carry a custom slice in runtime
        _judge(pid, where, "sched", name, value, own[name], f"sched_getattr({tid})")


def _check_attr(pid: int, where: str, base: str) -> None:
    try:
        names = os.listdir(f"{base}/attr")
    except FileNotFoundError:
        return  # no LSM support in the kernel at all
    for name in names:
        path = f"{base}/attr/{name}"
        if os.path.isdir(path):
            # one directory per LSM (apparmor, smack, ...): the same labels
            for sub in os.listdir(path):
                value = _read_attr(f"{path}/{sub}")
                if value:
                    _judge(pid, where, "attr", f"{name}/{sub}", value, None, path)
            continue
        value = _read_attr(path)
        _judge(pid, where, "attr", name, value, _own_attr(name), path)


def _check_prctl(pid: int, where: str, th: "DumpThread", leader: bool, strict: bool) -> None:
    for name, how in PRCTL_READ.items():
        if not how.per_thread and not leader:
            continue
        if name == "PR_GET_TSC" and strict:
            continue  # strict mode sets it, and its restore does again
        got = th.read(_PRCTL_ASKED[name])
        value = got.u32() if how.by_pointer and got.result >= 0 else got.result
        own = _own_prctl(name)
        for it in items("prctl", name):
            if it.refuse is not None and (state := it.refuse(value, own)):
                raise Unsupported(f"pid {pid}: {where}{state}; {it.note}")
        if name == "PR_GET_THP_DISABLE":
            _judge(pid, where, "prctl", "PR_GET_THP_DISABLE: EXCEPT_ADVISED", value, own, name)


def table_rows() -> list[str]:
    head = ["| source | item | kind | module / refused because / why irrelevant |",
            "| --- | --- | --- | --- |"]
    rows: list[Item] = []
    for it in TABLE:  # one row for consecutive items of one source, kind and note
        last = rows[-1] if rows else None
        if last and (last.source, last.kind, last.note) == (it.source, it.kind, it.note):
            rows[-1] = Item(it.source, f"{last.name}, {it.name}", it.kind, it.note)
        else:
            rows.append(it)
    return head + [it.row() for it in rows]


if __name__ == "__main__":
    print("\n".join(table_rows()))
