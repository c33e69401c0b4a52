"""Thin ptrace wrappers: one function per request, errors as OSError.

Only PTRACE_SEIZE-style tracing is used: it does not send SIGSTOP, so the
tracee's job-control state is not disturbed, and PTRACE_INTERRUPT gives a
stop we can leave without a trace.
"""
from __future__ import annotations

import ctypes
import os

from . import consts as C
from . import structs as S
from .libc import ptrace


def seize(pid: int, options: int = C.PTRACE_O_TRACESYSGOOD) -> None:
    ptrace(C.PTRACE_SEIZE, pid, 0, options)


def interrupt(pid: int) -> None:
    ptrace(C.PTRACE_INTERRUPT, pid, 0, 0)


def detach(pid: int, sig: int = 0) -> None:
    ptrace(C.PTRACE_DETACH, pid, 0, sig)


def cont(pid: int, sig: int = 0) -> None:
    ptrace(C.PTRACE_CONT, pid, 0, sig)


def syscall_step(pid: int, sig: int = 0) -> None:
    """Resume until the next syscall entry or exit (PTRACE_SYSCALL)."""
    ptrace(C.PTRACE_SYSCALL, pid, 0, sig)


def get_regs(pid: int) -> S.UserRegs:
    regs = S.UserRegs()
    ptrace(C.PTRACE_GETREGS, pid, 0, ctypes.addressof(regs))
    return regs


def set_regs(pid: int, regs: S.UserRegs) -> None:
    ptrace(C.PTRACE_SETREGS, pid, 0, ctypes.addressof(regs))


# Large enough for any xsave layout we know (AMX tiles make it ~11 KiB).
_XSTATE_MAX = 16384


def get_xstate(pid: int) -> bytes:
    """NT_X86_XSTATE in the standard (non-compacted) XSAVE layout.

    The kernel silently truncates to the buffer it is given, so read with a
    large buffer and keep exactly what it reports it wrote.
    """
    buf = ctypes.create_string_buffer(_XSTATE_MAX)
    iov = S.Iovec(ctypes.addressof(buf), _XSTATE_MAX)
    ptrace(C.PTRACE_GETREGSET, pid, C.NT_X86_XSTATE, ctypes.addressof(iov))
    return buf.raw[: iov.iov_len]


def set_xstate(pid: int, data: bytes) -> None:
    """PTRACE_SETREGSET demands the full size the kernel uses (EFAULT else)."""
    buf = ctypes.create_string_buffer(data, len(data))
    iov = S.Iovec(ctypes.addressof(buf), len(data))
    ptrace(C.PTRACE_SETREGSET, pid, C.NT_X86_XSTATE, ctypes.addressof(iov))


def get_sigmask(pid: int) -> int:
    mask = ctypes.c_uint64()
    ptrace(C.PTRACE_GETSIGMASK, pid, 8, ctypes.addressof(mask))
    return mask.value


def set_sigmask(pid: int, mask: int) -> None:
    val = ctypes.c_uint64(mask)
    ptrace(C.PTRACE_SETSIGMASK, pid, 8, ctypes.addressof(val))


def get_siginfo(pid: int) -> bytes:
    """The siginfo of the signal a tracee is stopped for (PTRACE_GETSIGINFO)."""
    buf = ctypes.create_string_buffer(S.SIGINFO_SIZE)
    ptrace(C.PTRACE_GETSIGINFO, pid, 0, ctypes.addressof(buf))
    return buf.raw


def peek_siginfo(pid: int, shared: bool) -> list[bytes]:
    """Every queued siginfo of the thread (or the process-wide queue)."""
    out: list[bytes] = []
    batch = 32
    buf = ctypes.create_string_buffer(S.SIGINFO_SIZE * batch)
    while True:
        args = S.PeekSiginfoArgs(len(out), C.PTRACE_PEEKSIGINFO_SHARED if shared else 0, batch)
        n = ptrace(C.PTRACE_PEEKSIGINFO, pid, ctypes.addressof(args), ctypes.addressof(buf))
        for i in range(n):
            out.append(buf.raw[i * S.SIGINFO_SIZE:(i + 1) * S.SIGINFO_SIZE])
        if n < batch:
            return out


def get_rseq(pid: int) -> S.RseqConfiguration:
    conf = S.RseqConfiguration()
    ptrace(C.PTRACE_GET_RSEQ_CONFIGURATION, pid, ctypes.sizeof(conf), ctypes.addressof(conf))
    return conf


def wait_stop(pid: int) -> int:
    """waitpid for one state change of a traced task; returns the raw status.

    Raises ProcessLookupError if the task died instead of stopping.
    """
    while True:
        try:
            _, status = os.waitpid(pid, C.WALL)
        except InterruptedError:
            continue
        if os.WIFSTOPPED(status):
            return status
        raise ProcessLookupError(f"pid {pid} exited while traced (status {status:#x})")


def stop_event(status: int) -> int:
    return (status >> 16) & 0xFF


def set_options(pid: int, options: int) -> None:
    ptrace(C.PTRACE_SETOPTIONS, pid, 0, options)


def seccomp_filter(pid: int, index: int) -> bytes | None:
    """The ``index``-th seccomp filter of a stopped tracee (0: the first
    installed, the root of its chain) as sock_filter bytes; None past the
    last (ENOENT)."""
    try:
        n = ptrace(C.PTRACE_SECCOMP_GET_FILTER, pid, index, 0)
    except FileNotFoundError:
        return None
    buf = ctypes.create_string_buffer(8 * n)
    ptrace(C.PTRACE_SECCOMP_GET_FILTER, pid, index, ctypes.addressof(buf))
    return buf.raw


def seccomp_flags(pid: int, index: int) -> int:
    """The flags (SECCOMP_FILTER_FLAG_LOG) the ``index``-th filter was made with."""
    meta = (ctypes.c_uint64 * 2)(index, 0)
    ptrace(C.PTRACE_SECCOMP_GET_METADATA, pid, ctypes.sizeof(meta), ctypes.addressof(meta))
    return meta[1]
