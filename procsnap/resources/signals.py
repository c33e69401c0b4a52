"""Signal dispositions, blocked mask, pending queues and sigaltstack.

Handlers live only in the kernel, so the dumper asks the frozen task
itself: one injected rt_sigaction(sig, NULL, &old) per signal.  The order
of ``tc.sigactions`` is CRIU's: signals 1..64 without SIGKILL and SIGSTOP.

Pending signals are peeked (not dequeued) with PTRACE_PEEKSIGINFO, for the
thread and for the process-wide queue, and re-queued at restore by the
puppet to itself with rt_(tg)sigqueueinfo while every signal is blocked, so
none is delivered before the final mask is in place.
"""
from __future__ import annotations

import ctypes
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time

from ..images.pb import core_pb2, sa_pb2, siginfo_pb2
from ..kernel import consts as C
from ..kernel import ptrace
from ..inject import Out, Read
from ..kernel.structs import KSigaction, StackT

if TYPE_CHECKING:
    from ..tasks import DumpContext, DumpTask
    from ..tasks import RestoreContext, RestoreTask

NAME = "signals"
SIGNALS = [s for s in range(1, C.NSIG + 1) if s not in (C.SIGKILL, C.SIGSTOP)]
SIGCHLD = 17
# Asked by the driver in one batch a thread (dumper._ask_threads): the
# leader's disposition of every signal (62 cheap calls in one stop rather
# than two stops for each one worth asking), each thread's sigaltstack.
SIGACTIONS = {sig: Read("rt_sigaction", sig, 0, Out(0), 8, out=ctypes.sizeof(KSigaction),
                        leader_only=True) for sig in SIGNALS}
SIGALTSTACK = Read("sigaltstack", 0, Out(0), out=ctypes.sizeof(StackT))
THREAD_READS = [*SIGACTIONS.values(), SIGALTSTACK]


def dump(ctx: "DumpContext", task: "DumpTask") -> None:
    core = task.core
    leader = task.threads[0]
    status = task.status
    assert status is not None
    for sig in SIGNALS:
        if not _worth_asking(sig, status.sig_cgt | status.sig_ign):
            core.tc.sigactions.append(sa_pb2.sa_entry(sigaction=0, flags=0, restorer=0, mask=0))
            continue
        sa = KSigaction.from_buffer_copy(leader.read(SIGACTIONS[sig]).data)
        core.tc.sigactions.append(sa_pb2.sa_entry(sigaction=sa.sa_handler, flags=sa.sa_flags,
                                                  restorer=sa.sa_restorer, mask=sa.sa_mask))
    core.tc.blk_sigset = ptrace.get_sigmask(task.pid)
    core.tc.signals_s.SetInParent()
    for raw in ptrace.peek_siginfo(task.pid, True):
        core.tc.signals_s.signals.append(siginfo_pb2.siginfo_entry(siginfo=raw))
    for thread in task.threads:
        stack = StackT.from_buffer_copy(thread.read(SIGALTSTACK).data)
        th = thread.core.thread_core
        th.blk_sigset = ptrace.get_sigmask(thread.tid)
        th.sas.CopyFrom(core_pb2.thread_sas_entry(ss_sp=stack.ss_sp, ss_size=stack.ss_size,
                                                  ss_flags=stack.ss_flags))
        th.signals_p.SetInParent()
        for raw in ptrace.peek_siginfo(thread.tid, False):
            th.signals_p.signals.append(siginfo_pb2.siginfo_entry(siginfo=raw))


def _worth_asking(sig: int, nondefault: int) -> bool:
    """Does this signal's disposition need an injected call to read or set?

    /proc/PID/status says which signals are caught (SigCgt) or ignored
    (SigIgn); any other one is SIG_DFL, whose flags and mask change nothing
    -- except SIGCHLD's SA_NOCLDWAIT/SA_NOCLDSTOP, so SIGCHLD is always
    asked.  This spares 60-odd injected calls per process.
    """
    return sig == SIGCHLD or bool(nondefault & (1 << (sig - 1)))


def _own_nondefault() -> int:
    """Signals the restorer (and so a fresh puppet) does not leave at SIG_DFL."""
    cgt = ign = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("SigCgt:"):
                cgt = int(line.split()[1], 16)
            elif line.startswith("SigIgn:"):
                ign = int(line.split()[1], 16)
    return cgt | ign


def restore(rctx: "RestoreContext", rt: "RestoreTask") -> None:
    inj = rt.inj
    core = rt.core
    # The puppet starts with the restorer's dispositions: set those, and
    # every one the image says is not the default.
    inherited = _own_nondefault()
    calls = []  # in one batch (one stop)
    for sig, sa in zip(SIGNALS, core.tc.sigactions):
        if not (sa.sigaction or sa.flags or sa.mask or _worth_asking(sig, inherited)):
            continue
        act = KSigaction(sa_handler=sa.sigaction, sa_flags=sa.flags,
                         sa_restorer=sa.restorer, sa_mask=sa.mask)
        calls.append(("rt_sigaction", (sig, inj.put(bytes(act), align=8), 0, 8)))
    inj.run(calls)
    inj.reset_scratch()
    # Queue pending signals with everything blocked; the final mask is set
    # with the registers, just before the puppet is let go.  First drop
    # whatever the puppet collected while it was built (a SIGCHLD from a
    # zombie child we recreated, say): only the image's signals count.
    # Everything but SIGTRAP: the puppet's trampoline ends in int3, and the
    # kernel forcing that SIGTRAP on a task that blocks it resets its
    # handler to SIG_DFL (force_sig_info_to_task) -- the task's own SIGTRAP
    # handler would be lost.  Unblocked, the trap just stops for us.
    # (A pending SIGTRAP is refused at dump, as CRIU does.)
    for thread in rt.threads:
        ptrace.set_sigmask(thread.tid, ((1 << 64) - 1) & ~(1 << (C.SIGTRAP - 1)))
    for thread in rt.threads:
        if _has_pending(rt.pid, thread.tid):
            _drain(thread.inj)
        # Signals the puppet stopped with while it was built (the SIGCHLD
        # of a zombie child we recreated) were taken off its queue by the
        # stop; re-sent at detach they would arrive as SI_KERNEL and push
        # the image's own siginfo out (a second SIGCHLD is not queued).
        thread.inj.held_signals.clear()
    for thread in rt.threads:
        tinj = thread.inj
        th = thread.core.thread_core
        # A thread other than the leader was cloned with CLONE_VM by the
        # leader puppet (restorer._create_threads): the kernel gave it no
        # alternate stack (copy_process), so SS_DISABLE needs no call.
        fresh = thread.tid != rt.pid
        if th.HasField("sas") and not (th.sas.ss_flags & 2 and fresh):
            st = StackT(ss_sp=th.sas.ss_sp, ss_flags=th.sas.ss_flags, ss_size=th.sas.ss_size)
            if st.ss_flags & 2:
                # SS_DISABLE, but a forked puppet inherits its parent's
                # alternate stack (the restorer's: Python's faulthandler
                # installs one, as under pytest), which is not mapped in
                # the restored task: a handler with SA_ONSTACK (every
                # handler CPython installs) would then die of SIGSEGV.
                st = StackT(ss_sp=0, ss_flags=2, ss_size=0)
            else:
                # SS_ONSTACK is a state, not a request: the kernel refuses it.
                st.ss_flags &= ~1
            tinj.call("sigaltstack", tinj.put(bytes(st), align=8), 0)
            tinj.reset_scratch()
        queues = [(False, th.signals_p if th.HasField("signals_p") else None)]
        if thread.tid == rt.pid:
            queues.append((True, core.tc.signals_s if core.tc.HasField("signals_s") else None))
        timers = {t.it_id for t in core.tc.timers.posix} if core.tc.HasField("timers") else set()
        for shared, queue in queues:
            if queue is None:
                continue
            for entry in queue.signals:
                raw = entry.siginfo
                if timer_of(raw) in timers:
                    continue  # the timer queues it again itself (taskattrs)
                signo = int.from_bytes(raw[0:4], "little", signed=True)
                addr = tinj.put(raw, align=8)
                if shared:
                    tinj.call("rt_sigqueueinfo", rctx.vpid(rt.pid, rt.pid), signo, addr)
                else:
                    tinj.call("rt_tgsigqueueinfo", rctx.vpid(rt.pid, rt.pid), rctx.vpid(thread.tid, rt.pid), signo,
                               addr)
                tinj.reset_scratch()


def timer_of(raw: bytes) -> int | None:
    """The POSIX timer id a queued siginfo came from (si_code SI_TIMER), or None.

    Such a signal is the timer's own preallocated one: while it is pending
    the timer counts overruns instead of queueing another, and its delivery
    re-arms a periodic timer.  Queued back as a plain siginfo it would do
    neither (the timer would queue a second one), so a restored timer with
    a pending signal is armed to expire at once instead, and queues its
    own (see taskattrs)."""
    if int.from_bytes(raw[8:12], "little", signed=True) != C.SI_TIMER:
        return None
    return int.from_bytes(raw[16:20], "little", signed=True)  # _sigfault._timer.si_tid


def pending_timers(rt: "RestoreTask") -> set[int]:
    """Ids of the POSIX timers whose signal is queued, in any queue of the task."""
    tc = rt.core.tc
    raws = [e.siginfo for e in tc.signals_s.signals] if tc.HasField("signals_s") else []
    for thread in rt.threads:
        th = thread.core.thread_core
        if th.HasField("signals_p"):
            raws += [e.siginfo for e in th.signals_p.signals]
    return {t for t in map(timer_of, raws) if t is not None}


def _has_pending(pid: int, tid: int) -> bool:
    """Has the thread any signal pending, its own or its process's
    (SigPnd, ShdPnd)?  Read from outside: most puppets have none, and an
    injected rt_sigtimedwait that finds nothing costs a round trip."""
    try:
        with open(f"/proc/{pid}/task/{tid}/status", "rb") as f:
            text = f.read()
    except OSError:
        return True   # ask the thread itself
    for key in (b"\nSigPnd:", b"\nShdPnd:"):
        at = text.find(key)
        if at < 0:
            return True
        if int(text[at + len(key):text.index(b"\n", at + 1)], 16):
            return True
    return False


def _drain(inj) -> None:
    """Dequeue every pending signal of the calling thread, without waiting."""
    mask = inj.put(b"\xff" * 8, align=8)
    zero = inj.put(bytes(16), align=8)
    for _ in range(256):
        got = inj.call("rt_sigtimedwait", mask, 0, zero, 8, check=False)
        if got < 0:
            break
    inj.reset_scratch()


def final_mask(rt: "RestoreTask", thread) -> int:
    th = thread.core.thread_core
    if th.HasField("blk_sigset"):
        return th.blk_sigset
    return rt.core.tc.blk_sigset

