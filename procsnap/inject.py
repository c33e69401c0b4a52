"""Running system calls inside a stopped, ptrace-seized task.

Both halves of procsnap need it: the dumper asks a frozen target for state
only the target itself can report (brk, signal handlers, sigaltstack, the
clear-tid address, itimers), and the restorer drives a forked "puppet"
through the whole rebuild of its address space.

How one call is made: point the saved registers' rip at a ``syscall``
instruction (0f 05) somewhere in the task, put the number in rax and the
arguments in rdi, rsi, rdx, r10, r8, r9, and resume with PTRACE_SYSCALL
twice: once to the syscall-entry stop, once to the exit stop, where rax
holds the result.  orig_rax is set to -1 so that, if we resume from a stop
that interrupted a real system call, the kernel's restart logic does not
rewrite our registers (it only acts when orig_rax >= 0).

Signals that arrive for the task meanwhile are held (not delivered) and
handed back by :meth:`Injector.detach`.

A batch (:meth:`Injector.batch`) runs several independent calls in one
stop instead of two stops each: see batch_code for how its end stops the
task under ptrace yet is harmless should procsnap die meanwhile.
:class:`Read` declares a read-only call asked of each thread of a dumped
task, so that the driver can ask them all in one batch a thread.
"""
from __future__ import annotations

import os
import signal
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Iterable, Sequence

from .kernel import consts as C
from .kernel import ptrace
from .kernel.structs import UserRegs

_MASK64 = (1 << 64) - 1
SYSCALL_INSN = b"\x0f\x05"
# A trampoline of our own: syscall; int3 -- the task stops right after the
# call returns (see Injector._run_to_trap).
TRAMPOLINE = b"\x0f\x05\xcc"

# x86_64 encodings of the landing pad below
_MOVABS_RSP = b"\x48\xbc"          # movabs rsp, imm64
_POPS = bytes.fromhex(              # the first 15 words of user_regs_struct, in order
    "415f" "415e" "415d" "415c"     # pop r15, r14, r13, r12
    "5d" "5b"                       # pop rbp, rbx
    "415b" "415a" "4159" "4158"     # pop r11, r10, r9, r8
    "58" "59" "5a" "5e" "5f")       # pop rax, rcx, rdx, rsi, rdi
_IRETQ = b"\x48\xcf"               # pops rip, cs, rflags, rsp, ss
LANDING_SIZE = 512
_REGS_AT = 128


def landing_pad(addr: int, resume: UserRegs) -> bytes:
    """``syscall`` followed by a way home, for a slot at ``addr``.

    Injected calls run from here, stopping at syscall entry and exit.
    Should procsnap die while the task is inside the call (a long pwritev
    of its pages, say), nobody is there to put the registers back when it
    returns -- so the bytes after the syscall do it: point rsp at the saved
    registers, pop the general ones, and iretq (allowed in user mode)
    loads rip, cs, rflags, rsp and ss.  The task goes on at ``resume`` as
    if nothing happened.  Never runs while we trace the task.
    """
    raw = bytes(resume)
    words = raw[:15 * 8] + raw[16 * 8:21 * 8]  # r15..rdi, then rip, cs, eflags, rsp, ss
    code = (SYSCALL_INSN + _MOVABS_RSP + (addr + _REGS_AT).to_bytes(8, "little")
            + _POPS + _IRETQ)
    assert len(code) <= _REGS_AT
    return code.ljust(_REGS_AT, b"\xcc") + words


# -- batches -----------------------------------------------------------------
# x86_64 encodings of the straight-line code of a batch
_MOVABS = {"rax": b"\x48\xb8", "rdi": b"\x48\xbf", "rsi": b"\x48\xbe", "rdx": b"\x48\xba",
           "r10": b"\x49\xba", "r8": b"\x49\xb8", "r9": b"\x49\xb9"}  # movabs reg, imm64
_ARG_REGS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")
_STORE_RAX = b"\x48\xa3"          # movabs [moffs64], rax
_MOV_RDI_RAX = b"\x48\x89\xc7"     # mov rdi, rax
_MOV_RSI_RAX = b"\x48\x89\xc6"     # mov rsi, rax
_JMP_REL32 = b"\xe9"               # jmp rel32 (from the end of the instruction)
HOME_OFFSET = len(SYSCALL_INSN)    # a landing pad's way home: right after its syscall
# Signals whose default action is to ignore them, in order of preference:
# the end of a batch sends one of them to the thread itself.
BATCH_SIGNALS = (23, 28, 17)       # SIGURG, SIGWINCH, SIGCHLD
_SI_TKILL = -6
# Room a batch needs in the scratch area: at most, for each call, six
# arguments, the number, the syscall, the store and its result slot; for
# its end, the getpid..jmp, its result slot and the alignments.
_BATCH_CALL = 7 * 10 + 2 + 10 + 8
_BATCH_END = 128


def _movabs(reg: str, value: int) -> bytes:
    return _MOVABS[reg] + (value & _MASK64).to_bytes(8, "little")


def batch_code(addr: int, calls: Sequence[tuple[int, Sequence[int]]], results: int,
               sig: int = 0, home: int = 0) -> tuple[bytes, int]:
    """Straight-line code, to run at ``addr``, for a batch of system calls
    (number, arguments): each call's rax goes to the 8-byte slot
    ``results + 8 * i``.  Returns the code and the offset in it of the
    end stop (where rip is at the stop).

    A puppet's batch (``sig`` 0) ends with int3, as its trampoline does (a
    puppet dies with procsnap: nobody is left to mind the SIGTRAP).  A
    dumped thread's end: getpid (stored after the results, for the check of the
    siginfo), gettid, tgkill(pid, tid, sig), then a jump to ``home`` (the
    thread's landing pad's way home: its saved registers reloaded).  ``sig``
    is ignored by default, not blocked by the thread nor caught by the
    process: traced, the thread stops for it (the kernel's sig_ignored()
    is false under ptrace) right after the tgkill -- the end stop.
    Untraced (procsnap was killed), the kernel discards it and the thread
    goes home and on where it was frozen, its registers as they were.
    """
    code = bytearray()
    for i, (nr, args) in enumerate(calls):
        if len(args) > len(_ARG_REGS):
            raise ValueError(f"system call {nr}: {len(args)} arguments, at most 6")
        for reg, val in zip(_ARG_REGS, args):
            code += _movabs(reg, val)
        code += _movabs("rax", nr) + SYSCALL_INSN + _STORE_RAX
        code += (results + 8 * i).to_bytes(8, "little")
    if not sig:
        code += b"\xcc"  # int3
        return bytes(code), len(code)
    code += _movabs("rax", C.NR["getpid"]) + SYSCALL_INSN + _STORE_RAX
    code += (results + 8 * len(calls)).to_bytes(8, "little") + _MOV_RDI_RAX
    code += _movabs("rax", C.NR["gettid"]) + SYSCALL_INSN + _MOV_RSI_RAX
    code += _movabs("rdx", sig) + _movabs("rax", C.NR["tgkill"]) + SYSCALL_INSN
    end = len(code)
    code += _JMP_REL32 + ((home - (addr + end + 5)) & 0xFFFFFFFF).to_bytes(4, "little")
    if not -(1 << 31) <= home - (addr + end + 5) < (1 << 31):
        raise ValueError(f"landing pad {home:#x} out of a jump's reach from {addr:#x}")
    return bytes(code), end


def batch_signal(blocked: int, caught: int, pending: int) -> int:
    """The signal a batch may end with for a thread (0: none fits): ignored
    by default, and neither blocked by the thread, nor caught by the
    process (a handler would run, untraced), nor pending (ours would
    coalesce with it)."""
    for sig in BATCH_SIGNALS:
        if not (blocked | caught | pending) & (1 << (sig - 1)):
            return sig
    return 0


class Out(int):
    """An argument of a :class:`Read`: the address of its output buffer,
    plus this offset."""


class Read:
    """A system call that only reads state, asked of each thread of a dumped
    task (``leader_only``: of its leader only).  ``out`` bytes of zeroed
    scratch are its output buffer; pass :class:`Out` for its address.
    Declared once at module level, so that the driver asks every thread all
    of them in one batch; with ``check`` an error return is an InjectError
    when the answer is read, as :meth:`Injector.call` raises it."""

    __slots__ = ("name", "args", "out", "check", "leader_only")

    def __init__(self, name: str, *args: int, out: int = 0, check: bool = True,
                 leader_only: bool = False) -> None:
        self.name, self.args, self.out = name, args, out
        self.check, self.leader_only = check, leader_only

    def __repr__(self) -> str:
        return f"Read({self.name}{tuple(self.args)!r})"


class Answer:
    """What a thread answered to a :class:`Read`: the call's result, its
    output buffer and the arguments it was called with."""

    __slots__ = ("result", "data", "args")

    def __init__(self, result: int, data: bytes = b"", args: Sequence[int] = ()) -> None:
        self.result, self.data, self.args = result, data, args

    def u32(self, off: int = 0) -> int:
        return int.from_bytes(self.data[off:off + 4], "little")

    def u64(self, off: int = 0) -> int:
        return int.from_bytes(self.data[off:off + 8], "little")


def to_signed(value: int) -> int:
    value &= _MASK64
    return value - (1 << 64) if value & (1 << 63) else value


class InjectError(OSError):
    """An injected system call failed inside the task (errno of the call)."""


class Injector:
    """Executes system calls in task ``pid``, stopped under our ptrace.

    ``regs`` are the registers the task had at the stop; every call starts
    from a copy of them, so the task's own state is untouched until the
    caller installs final registers.
    """

    def __init__(self, pid: int, syscall_ip: int, regs: UserRegs) -> None:
        self.pid = pid
        self.syscall_ip = syscall_ip
        self.base = regs.copy()
        self.held_signals: list[int] = []
        # Registers put back after every call, if set: should procsnap die
        # (kill -9) between two calls, the kernel detaches the task, which
        # then resumes from these -- not from our last injected syscall.
        self.resume_regs: UserRegs | None = None
        self.calls = 0
        self.stops = 0  # ptrace stops our calls took (waitpid returns)
        # A batch's end signal (batch_signal) and the address it goes home
        # to (a landing pad's way home); 0: calls one at a time.
        self.batch_sig = 0
        self.batch_home = 0
        self.trap_ip = 0  # address of a TRAMPOLINE, when the task has one
        self._mem_fd = os.open(f"/proc/{pid}/mem", os.O_RDWR | os.O_CLOEXEC)
        # scratch memory inside the task for arguments passed by pointer
        self.scratch = 0
        self.scratch_size = 0
        self._scratch_used = 0

    # -- system calls -------------------------------------------------------
    def call(self, name: str, *args: int, check: bool = True, last: bool = False) -> int:
        """Run one system call in the task; ``last``: it removes the code it
        runs from (the trampoline's munmap), so stop at its exit."""
        nr = C.NR[name]
        regs = self.base.copy()
        fast = bool(self.trap_ip) and not last
        regs.rip = self.trap_ip if fast else self.syscall_ip
        regs.rax = nr
        regs.orig_rax = _MASK64  # -1: no syscall restart on resume
        for reg, val in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args):
            setattr(regs, reg, val & _MASK64)
        ptrace.set_regs(self.pid, regs)
        if fast:
            out = self._run_to_trap(self.trap_ip + len(TRAMPOLINE))
        else:
            self._step_to_syscall_stop()  # entry
            self._step_to_syscall_stop()  # exit
            out = ptrace.get_regs(self.pid)
        self.calls += 1
        result = to_signed(out.rax)
        if self.resume_regs is not None:
            ptrace.set_regs(self.pid, self.resume_regs)
        if check:
            self.check(name, args, result)
        return result

    def check(self, name: str, args: Sequence[int], result: int) -> None:
        """An error return of call ``name`` as the InjectError it is."""
        if -4096 < result < 0:
            shown = ", ".join(hex(a) for a in args)
            raise InjectError(-result, f"pid {self.pid}: {name}({shown}) in the task: "
                                       f"{os.strerror(-result)}")

    def batch(self, calls: Sequence[tuple[str, Sequence[int]]]) -> list[int]:
        """Run calls (name, arguments) in the task in one stop, in order:
        their results, unchecked.  Each call's arguments are fixed before
        any runs: no call may need an earlier one's result.  A puppet runs
        them from its trampoline's memory; a dumped thread only with a
        batch signal (see batch_code; the driver decides), else they are
        made one at a time."""
        if not calls:
            return []
        if not self.batch_sig and not (self.trap_ip and self.scratch):
            return [self.call(name, *args, check=False) for name, args in calls]
        # As many calls a batch as the scratch area holds the code of
        fit = (self.scratch_size - self._scratch_used - _BATCH_END) // _BATCH_CALL
        if fit < 1:
            return [self.call(name, *args, check=False) for name, args in calls]
        if len(calls) > fit:
            out: list[int] = []
            for i in range(0, len(calls), fit):
                out += self.batch(calls[i:i + fit])
            return out
        nums = [(C.NR[name], args) for name, args in calls]
        probe, _ = batch_code(0, nums, 0, self.batch_sig, 0)
        used = self._scratch_used  # the code and results are ours only meanwhile
        at = self._reserve(len(probe) + 8 * (len(calls) + 1), 16)
        self._scratch_used = used
        results = at + (len(probe) + 7) // 8 * 8
        code, end = batch_code(at, nums, results, self.batch_sig, self.batch_home)
        self.write_mem(at, code.ljust(results - at, b"\xcc") + bytes(8 * (len(calls) + 1)))
        regs = self.base.copy()
        regs.rip = at
        regs.orig_rax = _MASK64  # -1: no syscall restart on resume
        ptrace.set_regs(self.pid, regs)
        if self.batch_sig:
            info = self._run_to_end(at + end)
        else:
            self._run_to_trap(at + end)
        self.calls += len(calls)
        raw = self.read_mem(results, 8 * (len(calls) + 1))
        if self.resume_regs is not None:
            ptrace.set_regs(self.pid, self.resume_regs)
        out = [to_signed(int.from_bytes(raw[i:i + 8], "little")) for i in range(0, len(raw), 8)]
        pid = out.pop()  # the getpid of the end, as the task sees its pid
        if self.batch_sig:
            si_code = int.from_bytes(info[8:12], "little", signed=True)
            if si_code != _SI_TKILL or int.from_bytes(info[16:20], "little", signed=True) != pid:
                # Someone else's signal coalesced with ours: it is theirs, kept.
                self.held_signals.append(self.batch_sig)
        return out

    def run(self, calls: Sequence[tuple[str, Sequence[int]]]) -> list[int]:
        """:meth:`batch`, each result checked as :meth:`call` checks it: the
        first error is raised (in a batch the calls after it ran too -- a
        failed restore kills the puppet anyway)."""
        results = self.batch(calls)
        for (name, args), result in zip(calls, results):
            self.check(name, args, result)
        return results

    def _run_to_end(self, end: int) -> bytes:
        """Resume a batch until its end stop: the signal-delivery-stop of our
        batch signal at ``end``; returns its siginfo.  The signal is
        suppressed (the next resume passes 0); any other signal is held, as
        _step_to_syscall_stop holds it."""
        sig = self.batch_sig
        while True:
            ptrace.cont(self.pid)
            status = ptrace.wait_stop(self.pid)
            self.stops += 1
            if ptrace.stop_event(status):
                continue  # a group-stop, our interrupt
            got = os.WSTOPSIG(status)
            if got == sig and ptrace.get_regs(self.pid).rip == end:
                return ptrace.get_siginfo(self.pid)
            self.held_signals.append(got)

    # -- reads of a dumped thread ---------------------------------------------
    def ask(self, reads: Sequence[Read]) -> list[Answer]:
        """Ask the thread these reads, in one batch where it can; the scratch
        area is as before afterwards.  Errors are for the reader to check
        (:meth:`answer`)."""
        used = self._scratch_used
        try:
            size = sum((r.out + 7) // 8 * 8 for r in reads)
            base = self.put(bytes(size), align=8) if size else 0
            calls, off = [], base
            for r in reads:
                calls.append((r.name, [off + a if isinstance(a, Out) else a for a in r.args]))
                off += (r.out + 7) // 8 * 8
            results = self.batch(calls)
            data = self.read_mem(base, size) if size else b""
        finally:
            self._scratch_used = used
        out, off = [], 0
        for r, res, (_, args) in zip(reads, results, calls):
            out.append(Answer(res, data[off:off + r.out], args))
            off += (r.out + 7) // 8 * 8
        return out

    def answer(self, read: Read, got: Answer | None = None) -> Answer:
        """The answer to ``read`` (asked now unless ``got``), its error
        raised if the read is checked."""
        if got is None:
            got = self.ask([read])[0]
        if read.check:
            self.check(read.name, got.args, got.result)
        return got

    def _run_to_trap(self, after: int) -> UserRegs:
        """Resume until the int3 after the trampoline's syscall: one stop a
        call instead of two (entry and exit) -- half the context switches.
        Only for puppets: were procsnap to die while the call runs, the
        task would return into the int3 with nobody to catch the SIGTRAP
        (a dumped task uses a landing pad instead, see landing_pad); a
        puppet dies with us anyway (PTRACE_O_EXITKILL).  ``after``: the
        address right after the int3."""
        while True:
            ptrace.cont(self.pid)
            status = ptrace.wait_stop(self.pid)
            self.stops += 1
            sig = os.WSTOPSIG(status)
            if ptrace.stop_event(status):
                continue  # our interrupt, or the fork/clone event of a clone3 we run
            if sig == signal.SIGTRAP:
                regs = ptrace.get_regs(self.pid)
                if regs.rip == after:
                    return regs
            self.held_signals.append(sig)

    def _step_to_syscall_stop(self) -> None:
        while True:
            ptrace.syscall_step(self.pid)
            status = ptrace.wait_stop(self.pid)
            self.stops += 1
            sig = os.WSTOPSIG(status)
            if sig == (signal.SIGTRAP | 0x80):
                return
            if ptrace.stop_event(status):
                # PTRACE_EVENT_STOP (a group-stop, our interrupt) or a
                # fork/clone event of a call we injected: just go on.
                continue
            # A signal was sent to the task while we work in it: keep it
            # for later rather than let it run a handler mid-surgery.
            self.held_signals.append(sig)

    # -- memory -------------------------------------------------------------
    def write_mem(self, addr: int, data: bytes) -> None:
        # /proc/PID/mem writes with FOLL_FORCE: read-only pages work too.
        view = memoryview(data)
        while view:
            n = os.pwrite(self._mem_fd, view, addr)
            view = view[n:]
            addr += n

    def read_mem(self, addr: int, size: int) -> bytes:
        out = bytearray()
        while len(out) < size:
            chunk = os.pread(self._mem_fd, size - len(out), addr + len(out))
            if not chunk:
                raise OSError(5, f"pid {self.pid}: short read of memory at {addr:#x}")
            out += chunk
        return bytes(out)

    def use_scratch(self, addr: int, size: int) -> None:
        self.scratch, self.scratch_size, self._scratch_used = addr, size, 0

    def put(self, data: bytes, align: int = 16) -> int:
        """Copy ``data`` into the scratch area; returns its address there."""
        addr = self._reserve(len(data), align)
        self.write_mem(addr, data)
        return addr

    def _reserve(self, size: int, align: int) -> int:
        off = (self._scratch_used + align - 1) // align * align
        if off + size > self.scratch_size:
            raise OSError(12, f"pid {self.pid}: scratch area of {self.scratch_size} bytes exhausted")
        self._scratch_used = off + size
        return self.scratch + off

    def put_str(self, text: str | bytes) -> int:
        raw = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
        return self.put(raw + b"\0")

    def reset_scratch(self) -> None:
        self._scratch_used = 0

    # -- leaving ------------------------------------------------------------
    def close(self) -> None:
        if self._mem_fd >= 0:
            os.close(self._mem_fd)
            self._mem_fd = -1

    def detach(self) -> None:
        """Detach, re-delivering the first held signal; re-send the rest."""
        self.close()
        first = self.held_signals[0] if self.held_signals else 0
        ptrace.detach(self.pid, first)
        for sig in self.held_signals[1:]:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


def find_syscall_insn(pid: int, ranges: Iterable[tuple[int, int]]) -> int:
    """Address of a ``syscall`` instruction in one of the given code ranges.

    Any two bytes 0f 05 will do, even inside another instruction: we only
    ever jump straight to them.
    """
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for start, end in ranges:
            try:
                mem.seek(start)
                data = mem.read(end - start)
            except OSError:
                continue
            idx = data.find(SYSCALL_INSN) if data else -1
            if idx >= 0:
                return start + idx
    raise OSError(2, f"pid {pid}: no syscall instruction found in its code")


def restart_fixup(regs: UserRegs) -> UserRegs:
    """Registers as they must be to resume a syscall our freeze interrupted.

    At the freeze the kernel left rax = -ERESTART* and orig_rax = the call.
    Resuming from an injected syscall's exit stop bypasses the kernel's own
    restart logic, so do what it would: step back over the 2-byte syscall
    instruction and reload the number.  ERESTART_RESTARTBLOCK's restart
    block dies with the task, so that call is simply issued again (a
    relative sleep then starts over; absolute sleeps are exact).
    """
    out = regs.copy()
    orig = out.orig_rax
    if orig >= (1 << 63):
        return out
    err = (1 << 64) - out.rax if out.rax >= (1 << 63) else 0
    if err in C.RESTART_CODES:
        out.rip -= 2
        out.rax = orig
    return out
