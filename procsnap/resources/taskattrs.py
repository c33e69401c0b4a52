"""Per-task attributes that are neither memory, files nor signals:
personality, comm, rlimits, interval timers, POSIX timers, robust futex list, clear-tid
address, rseq registration, parent-death signal, subreaper flag,
scheduling (policy with SCHED_RESET_ON_FORK, rt priority, nice), CPU
affinity, timer slack and NUMA memory policy (per thread),
oom_score_adj, loginuid and membarrier registrations (THP-disable is
mm state: memory restores it).

What the kernel shows from outside is read from outside (prlimit with a
pid, get_robust_list with a pid, PTRACE_GET_RSEQ_CONFIGURATION); the rest
is asked of the frozen task with injected calls.
"""
from __future__ import annotations

import ctypes
import functools
import os
import resource
import struct
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from ..errors import RestoreError, Unsupported
from ..images.pb import rlimit_pb2, rseq_pb2, timer_pb2
from ..inject import Out, Read
from ..kernel import consts as C
from ..kernel import ptrace
from ..kernel.libc import syscall
from ..kernel.structs import Itimerval
from ..procfs.parse import LIMIT_RESOURCES
from . import signals
from .core import TASK_ALIVE, TASK_STOPPED

if TYPE_CHECKING:
    from ..tasks import DumpContext, DumpTask, DumpThread
    from ..tasks import RestoreContext, RestoreTask

NAME = "task"

RLIM_NAMES = ["CPU", "FSIZE", "DATA", "STACK", "CORE", "RSS", "NPROC", "NOFILE", "MEMLOCK",
              "AS", "LOCKS", "SIGPENDING", "MSGQUEUE", "NICE", "RTPRIO", "RTTIME"]


def _prctl_out(option: int, leader_only: bool = False) -> Read:
    """A prctl that writes its answer through a pointer."""
    return Read("prctl", option, Out(0), 0, 0, 0, out=8, leader_only=leader_only)


_MAXNODE = 1024  # bits of nodemask passed to get/set_mempolicy (>= nr_node_ids)
_MPOL_DEFAULT = 0
# What only the task can say, asked of it by the driver in one batch a
# thread (dumper._ask_threads): per thread, then of the leader only
TID_ADDRESS = _prctl_out(C.PR_GET_TID_ADDRESS)
PDEATHSIG = _prctl_out(C.PR_GET_PDEATHSIG)
TIMERSLACK = Read("prctl", C.PR_GET_TIMERSLACK, 0, 0, 0, 0)
MEMPOLICY = Read("get_mempolicy", Out(0), Out(8), _MAXNODE, 0, 0, out=8 + _MAXNODE // 8)
ITIMERS = [Read("getitimer", which, Out(0), out=32, leader_only=True)
           for which in range(3)]  # ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF
CHILD_SUBREAPER = _prctl_out(C.PR_GET_CHILD_SUBREAPER, leader_only=True)
MEMBARRIER = Read("membarrier", C.MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0, check=False,
                  leader_only=True)
THREAD_READS = [TID_ADDRESS, PDEATHSIG, TIMERSLACK, MEMPOLICY, *ITIMERS, CHILD_SUBREAPER,
                MEMBARRIER]


def read_loginuid(tid: int) -> int:
    """The audit login uid of a task (4294967295: never set)."""
    with open(f"/proc/{tid}/loginuid") as f:
        return int(f.read())


_MEMBARRIER_REGISTER = (C.MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED,
                        C.MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,
                        C.MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE,
                        C.MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ)


def membarrier_registrations(leader: "DumpThread") -> int:
    """The REGISTER_* commands the task's mm has issued (CRIU's
    membarrier_registration_mask).  Linux 6.3+ reports them
    (MEMBARRIER_CMD_GET_REGISTRATIONS); before that, as CRIU does, an
    expedited barrier succeeds only when registered -- which cannot see
    GLOBAL_EXPEDITED, hence the new call first."""
    inj = leader.need_inj()
    got = leader.read(MEMBARRIER).result
    if got >= 0:
        return got
    mask = 0
    for reg in _MEMBARRIER_REGISTER[1:]:
        if inj.call("membarrier", reg >> 1, 0, 0, check=False) == 0:
            mask |= reg
    return mask


def dump(ctx: "DumpContext", task: "DumpTask") -> None:
    inj = task.need_inj()
    pid = task.pid
    stat = task.stat
    assert stat is not None
    core = task.core
    tc = core.tc
    # A job-control stopped task (SIGSTOP, SIGTSTP...) comes back stopped.
    stop = task.threads[0].stop_signo
    tc.task_state = TASK_STOPPED if stop else TASK_ALIVE
    if stop:
        tc.stop_signo = stop
    tc.exit_code = 0
    tc.personality = task.proc.personality()
    tc.flags = stat.flags
    tc.comm = task.proc.comm()
    # /proc/PID/limits, not prlimit(pid): that needs matching uids or
    # CAP_SYS_RESOURCE, which this machine's root lacks.
    by_number = {LIMIT_RESOURCES[name]: v for name, v in task.proc.limits().items()
                 if name in LIMIT_RESOURCES}
    for res in range(C.RLIM_NLIMITS):
        if res not in by_number:
            raise Unsupported(f"pid {pid}: /proc/{pid}/limits has no row for "
                              f"RLIMIT_{RLIM_NAMES[res]}")
        cur, mx = by_number[res]
        tc.rlimits.rlimits.append(rlimit_pb2.rlimit_entry(cur=cur, max=mx))
    timers = []
    leader = task.threads[0]
    for read in ITIMERS:
        it = Itimerval.from_buffer_copy(leader.read(read).data)
        timers.append(timer_pb2.itimer_entry(isec=it.interval_sec, iusec=it.interval_usec,
                                             vsec=it.value_sec, vusec=it.value_usec))
    tc.timers.real.CopyFrom(timers[0])
    tc.timers.virt.CopyFrom(timers[1])
    tc.timers.prof.CopyFrom(timers[2])
    _dump_posix_timers(task, inj)
    tc.child_subreaper = bool(leader.read(CHILD_SUBREAPER).u64())
    with open(f"/proc/{pid}/oom_score_adj") as f:
        tc.oom_score_adj = int(f.read())
    tc.loginuid = read_loginuid(pid)
    mask = membarrier_registrations(leader)
    if mask:
        tc.membarrier_registration_mask = mask
    for thread in task.threads:
        _dump_thread(task, thread)


_ITIMERSPEC = 32  # struct itimerspec: interval then value, each {sec, nsec}
_SIGEVENT = 64


def _dump_posix_timers(task: "DumpTask", inj: Any) -> None:
    """/proc/PID/timers names them (id, signal, sival, notify, clock); the
    times come from timer_gettime in the task.  Their overrun count is
    judged by the audit (procsnap/audit.py): it cannot be set again."""
    for t in task.proc.timers():
        addr = inj.put(bytes(_ITIMERSPEC), align=8)
        inj.call("timer_gettime", t.id, addr)
        isec, insec, vsec, vnsec = struct.unpack("<4q", inj.read_mem(addr, _ITIMERSPEC))
        inj.reset_scratch()
        ent = timer_pb2.posix_timer_entry(
            it_id=t.id, clock_id=t.clock_id & 0xFFFFFFFF, si_signo=t.signo,
            it_sigev_notify=t.sigev_notify, sival_ptr=t.sigev_value, overrun=0,
            isec=isec, insec=insec, vsec=vsec, vnsec=vnsec)
        if t.notify_tid:
            ent.notify_thread_id = t.notify_pid
        task.core.tc.timers.posix.append(ent)


def _create_posix_timers(rt: "RestoreTask") -> None:
    """timer_create each timer with its id: PR_TIMER_CREATE_RESTORE_IDS
    (Linux 6.17+) lets the caller choose it; before that ids are handed out
    in order from 0 in a new process, so create (and delete) until the id
    comes up, as CRIU does."""
    inj = rt.inj
    timers = sorted(rt.core.tc.timers.posix, key=lambda t: t.it_id)
    if not timers:
        return
    chosen = inj.call("prctl", C.PR_TIMER_CREATE_RESTORE_IDS, C.PR_TIMER_CREATE_RESTORE_IDS_ON,
                      0, 0, 0, check=False) == 0
    next_id = 0
    for t in timers:
        # the thread as the puppet names it (inside its pid namespace)
        tid = rt._rctx.vpid(rt._rctx.outside_pid(t.notify_thread_id)) \
            if t.HasField("notify_thread_id") and rt._rctx is not None else 0
        sev = struct.pack("<QiiI", t.sival_ptr, t.si_signo, t.it_sigev_notify, tid)
        sev_addr = inj.put(sev.ljust(_SIGEVENT, b"\0"), align=8)
        id_addr = inj.put(struct.pack("<i", t.it_id if chosen else 0), align=8)
        clock = _signed32(t.clock_id)
        while True:
            try:
                inj.call("timer_create", clock, sev_addr, id_addr)
            except OSError as exc:
                raise RestoreError(f"{rt.image_name('core')}: POSIX timer {t.it_id:#x} "
                                   f"(clock {clock}): timer_create: "
                                   f"{os.strerror(exc.errno or 0)}") from None
            got = struct.unpack("<i", inj.read_mem(id_addr, 4))[0]
            if chosen or got == t.it_id:
                break
            if got != next_id or got > t.it_id:
                raise RestoreError(f"{rt.image_name('core')}: POSIX timer {t.it_id:#x}: the "
                                   f"kernel handed out id {got:#x}, not ids in order")
            inj.call("timer_delete", got)
            next_id += 1
        if got != t.it_id:
            raise RestoreError(f"{rt.image_name('core')}: POSIX timer {t.it_id:#x} "
                               f"came back as {got:#x}")
        next_id = got + 1
        inj.reset_scratch()
    if chosen:
        inj.call("prctl", C.PR_TIMER_CREATE_RESTORE_IDS, C.PR_TIMER_CREATE_RESTORE_IDS_OFF,
                 0, 0, 0)


def _arm_posix_timers(rt: "RestoreTask") -> None:
    """Last of this module's work: the time left runs from here.  A timer
    whose signal was pending is armed to expire at once, so that it queues
    its own signal again (signals.timer_of says why)."""
    inj = rt.inj
    pending = signals.pending_timers(rt)
    for t in rt.core.tc.timers.posix:
        value = t.vsec * _NS + t.vnsec
        interval = t.isec * _NS + t.insec
        flags = 0
        if t.it_id in pending and interval and value:
            # A periodic timer with its signal pending is not re-armed until
            # the signal is taken; timer_gettime showed the time to its next
            # period.  Expire it one period earlier, in the past: it fires at
            # once, and the re-arm at delivery keeps the period's phase.
            ts = inj.put(bytes(16), align=8)
            inj.call("clock_gettime", _signed32(t.clock_id), ts)
            sec, nsec = struct.unpack("<2q", inj.read_mem(ts, 16))
            value = max(sec * _NS + nsec + value - interval, 1)
            flags = C.TFD_TIMER_ABSTIME  # TIMER_ABSTIME, the same bit
        elif t.it_id in pending and not value:
            value = 1  # a one-shot that fired: fire again, at once
        if not value:
            continue  # disarmed
        spec = struct.pack("<4q", t.isec, t.insec, value // _NS, value % _NS)
        inj.call("timer_settime", t.it_id, flags, inj.put(spec, align=8), 0)
        inj.reset_scratch()


_NS = 1_000_000_000


def _signed32(v: int) -> int:
    """A clock id as the kernel reads it (CPU clocks are negative)."""
    return v - (1 << 32) if v & 0x80000000 else v


def _dump_thread(task: "DumpTask", thread: "DumpThread") -> None:
    """What each thread has of its own (the kernel keeps these per task_struct)."""
    tid = thread.tid
    core = thread.core
    th = core.thread_core
    core.thread_info.clear_tid_addr = thread.read(TID_ADDRESS).u64()
    th.pdeath_sig = thread.read(PDEATHSIG).u64()
    head, length = ctypes.c_uint64(), ctypes.c_size_t()
    syscall(C.NR["get_robust_list"], tid, ctypes.addressof(head), ctypes.addressof(length))
    th.futex_rla, th.futex_rla_len = head.value, length.value
    tstat = task.proc.thread_stat(tid) if tid != task.pid else task.stat
    assert tstat is not None
    th.sched_nice = tstat.nice
    # stat's policy lacks SCHED_RESET_ON_FORK; sched_getscheduler has it.
    th.sched_policy = os.sched_getscheduler(tid)
    th.sched_prio = os.sched_getparam(tid).sched_priority
    th.comm = tstat.comm if tid != task.pid else task.core.tc.comm
    # CPU affinity from outside; timer slack and NUMA policy answer for the
    # calling thread only: asked in it (procsnap's own thread_core fields).
    th.cpu_affinity = _cpus_to_mask(os.sched_getaffinity(tid))
    th.timer_slack_ns = thread.read(TIMERSLACK).result
    policy = thread.read(MEMPOLICY)
    mode = policy.u32()
    if mode != _MPOL_DEFAULT:
        th.mempolicy_mode = mode
        th.mempolicy_nodes = policy.data[8:].rstrip(b"\0")
    rseq = ptrace.get_rseq(tid)
    if rseq.rseq_abi_pointer:
        th.rseq_entry.CopyFrom(rseq_pb2.rseq_entry(rseq_abi_pointer=rseq.rseq_abi_pointer,
                                                   rseq_abi_size=rseq.rseq_abi_size,
                                                   signature=rseq.signature))


@functools.lru_cache(maxsize=None)
def _own_rlimit(res: int) -> tuple[int, int]:
    cur, mx = resource.getrlimit(res)
    return cur & (2**64 - 1), mx & (2**64 - 1)


def restore(rctx: "RestoreContext", rt: "RestoreTask") -> None:
    inj = rt.inj
    core = rt.core
    tc = core.tc
    pid = rt.pid
    if tc.personality != _personality_now(pid):
        inj.call("personality", tc.personality)
    for res, lim in enumerate(tc.rlimits.rlimits):
        if res >= C.RLIM_NLIMITS:
            break
        if (lim.cur, lim.max) == _own_rlimit(res):
            continue  # inherited from the restorer as it must be
        addr = inj.put(lim.cur.to_bytes(8, "little") + lim.max.to_bytes(8, "little"), align=8)
        try:
            inj.call("prlimit64", 0, res, addr, 0)
        except OSError as exc:
            raise RestoreError(f"{rt.image_name('core')}: cannot set RLIMIT_{RLIM_NAMES[res]} "
                               f"to {lim.cur}/{lim.max}: {os.strerror(exc.errno or 0)}") from None
    inj.reset_scratch()
    if tc.HasField("timers"):
        for which, it in enumerate((tc.timers.real, tc.timers.virt, tc.timers.prof)):
            if it.vsec or it.vusec or it.isec or it.iusec:
                vsec, vusec = it.vsec, it.vusec
                if not (vsec or vusec):
                    # Expired, its signal not taken yet: ITIMER_REAL is
                    # reloaded only when SIGALRM is dequeued, so it reads
                    # 0 left with its interval; a zero value would disarm
                    # it (and drop the interval).  As criu: one interval.
                    vsec, vusec = it.isec, it.iusec
                val = Itimerval(interval_sec=it.isec, interval_usec=it.iusec,
                                value_sec=vsec, value_usec=vusec)
                inj.call("setitimer", which, inj.put(bytes(val), align=8), 0)
        inj.reset_scratch()
    if tc.HasField("timers"):
        _create_posix_timers(rt)
    if tc.HasField("child_subreaper") and tc.child_subreaper:
        inj.call("prctl", C.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    if tc.HasField("membarrier_registration_mask"):
        for reg in _MEMBARRIER_REGISTER:
            if tc.membarrier_registration_mask & reg:
                try:
                    inj.call("membarrier", reg, 0, 0)
                except OSError as exc:
                    raise RestoreError(f"{rt.image_name('core')}: membarrier registration "
                                       f"{reg:#x}: {os.strerror(exc.errno or 0)}") from None
    for thread in rt.threads:
        _restore_thread(rt, thread)
        if tc.HasField("loginuid") and tc.loginuid != read_loginuid(thread.tid):
            _set_loginuid(rt, thread, tc.loginuid)
    if tc.HasField("oom_score_adj"):
        with open(f"/proc/{pid}/oom_score_adj", "w") as f:
            f.write(str(tc.oom_score_adj))
    if tc.HasField("timers"):
        _arm_posix_timers(rt)


def _set_loginuid(rt: "RestoreTask", thread: Any, value: int) -> None:
    """Only the task itself may write its loginuid (proc_loginuid_write)."""
    tinj = thread.inj
    try:
        fd = tinj.call("open", tinj.put(b"/proc/thread-self/loginuid\0"), os.O_WRONLY, 0)
        try:
            data = str(value).encode()
            tinj.call("write", fd, tinj.put(data), len(data))
        finally:
            tinj.call("close", fd)
    except OSError as exc:
        raise RestoreError(f"{rt.image_name('core')}: thread {thread.tid}: cannot set loginuid "
                           f"{value}: {os.strerror(exc.errno or 0)}") from None
    tinj.reset_scratch()


def _restore_thread(rt: "RestoreTask", thread: Any) -> None:
    tinj = thread.inj
    tid = thread.tid
    core = thread.core
    th = core.thread_core
    # Scheduling is set from outside: no injection needed.
    if th.HasField("sched_policy") and th.sched_policy not in (0, 3, 5):  # OTHER/BATCH/IDLE
        os.sched_setscheduler(tid, th.sched_policy, os.sched_param(th.sched_prio))
    elif th.HasField("sched_policy") and th.sched_policy != 0:
        os.sched_setscheduler(tid, th.sched_policy, os.sched_param(0))
    if th.HasField("sched_nice"):
        os.setpriority(os.PRIO_PROCESS, tid, th.sched_nice)
    if th.HasField("cpu_affinity"):
        cpus = _mask_to_cpus(th.cpu_affinity)
        if cpus != os.sched_getaffinity(tid):
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError as exc:
                raise RestoreError(f"{rt.image_name('core', tid)}: CPU affinity "
                                   f"{sorted(cpus)}: {exc.strerror}") from None
    comm = (th.comm if th.HasField("comm") else rt.core.tc.comm).encode()[:15]
    # in one batch (one stop)
    calls: list[tuple[str, tuple[int, ...]]] = [
        ("prctl", (C.PR_SET_NAME, tinj.put(comm + b"\0"), 0, 0, 0))]
    if th.futex_rla:
        calls.append(("set_robust_list", (th.futex_rla, th.futex_rla_len)))
    # A thread other than the leader was cloned by the leader puppet
    # (restorer._create_threads) with its clear-tid address
    # (CLONE_CHILD_CLEARTID), and the kernel gave it no parent-death
    # signal (copy_process), so a zero needs no call.  The leader is a
    # fork of the restorer: its own are set always (its parent-death
    # signal is SIGKILL, to die with us).
    fresh = tid != rt.pid
    if not fresh:
        calls.append(("set_tid_address", (core.thread_info.clear_tid_addr,)))
    pdeath = th.pdeath_sig if th.HasField("pdeath_sig") else 0
    if pdeath or not fresh:
        calls.append(("prctl", (C.PR_SET_PDEATHSIG, pdeath, 0, 0, 0)))
    if th.HasField("rseq_entry") and th.rseq_entry.rseq_abi_pointer:
        r = th.rseq_entry
        calls.append(("rseq", (r.rseq_abi_pointer, r.rseq_abi_size, 0, r.signature)))
    # The slack, after the policy (set above): an RT policy sets it to 0
    # itself (6.7+), and PR_SET_TIMERSLACK 0 would mean "the default" instead.
    slack = th.timer_slack_ns if th.HasField("timer_slack_ns") else 0
    if slack and slack != _timer_slack(tinj, tid):
        calls.append(("prctl", (C.PR_SET_TIMERSLACK, slack, 0, 0, 0)))
    tinj.run(calls)
    tinj.reset_scratch()
    if th.HasField("mempolicy_mode"):
        nodes = bytes(th.mempolicy_nodes)
        addr = tinj.put(nodes.ljust(_MAXNODE // 8, b"\0"), align=8)
        try:
            tinj.call("set_mempolicy", th.mempolicy_mode, addr, _MAXNODE)
        except OSError as exc:
            raise RestoreError(f"{rt.image_name('core', tid)}: NUMA policy "
                               f"{th.mempolicy_mode:#x} nodes {nodes.hex()}: "
                               f"{os.strerror(exc.errno or 0)}") from None
        tinj.reset_scratch()


def _personality_now(pid: int) -> int | None:
    """The puppet's personality (the restorer's, inherited), read from
    /proc: no injected call when it is the image's already."""
    try:
        with open(f"/proc/{pid}/personality", "rb") as f:
            return int(f.read(), 16)
    except (OSError, ValueError):
        return None


def _timer_slack(tinj: Any, tid: int) -> int:
    """The thread's timer slack now, read from outside (/proc/TID, the
    thread's own directory: one read instead of an injected call per
    thread); asked in the thread where /proc does not say."""
    try:
        with open(f"/proc/{tid}/timerslack_ns", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return tinj.call("prctl", C.PR_GET_TIMERSLACK, 0, 0, 0, 0)


def _cpus_to_mask(cpus: set[int]) -> bytes:
    n = sum(1 << c for c in cpus)
    return n.to_bytes((max(cpus, default=0) // 64 + 1) * 8, "little")


def _mask_to_cpus(mask: bytes) -> set[int]:
    n = int.from_bytes(mask, "little")
    return {i for i in range(len(mask) * 8) if n >> i & 1}
