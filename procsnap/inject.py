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
"""
from __future__ import annotations

import os
import signal
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Iterable

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
            out = self._run_to_trap()
        else:
            self._step_to_syscall_stop()  # entry
            self._step_to_syscall_stop()  # exit
            out = ptrace.get_regs(self.pid)
        self.calls += 1
        result = to_signed(out.rax)
        if self.resume_regs is not None:
            ptrace.set_regs(self.pid, self.resume_regs)
        if check and -4096 < result < 0:
            shown = ", ".join(hex(a) for a in args)
            raise InjectError(-result, f"pid {self.pid}: {name}({shown}) in the task: "
                                       f"{os.strerror(-result)}")
        return result

    def _run_to_trap(self) -> UserRegs:
        """Resume until the int3 after the trampoline's syscall: one stop a
        call instead of two (entry and exit) -- half the context switches.
        Only for puppets: were procsnap to die while the call runs, the
        task would return into the int3 with nobody to catch the SIGTRAP
        (a dumped task uses a landing pad instead, see landing_pad); a
        puppet dies with us anyway (PTRACE_O_EXITKILL)."""
        after = self.trap_ip + len(TRAMPOLINE)
        while True:
            ptrace.cont(self.pid)
            status = ptrace.wait_stop(self.pid)
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
        off = (self._scratch_used + align - 1) // align * align
        if off + len(data) > self.scratch_size:
            raise OSError(12, f"pid {self.pid}: scratch area of {self.scratch_size} bytes exhausted")
        self.write_mem(self.scratch + off, data)
        self._scratch_used = off + len(data)
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
