"""``procsnap check``: probe, without side effects, every kernel feature
procsnap relies on, and say plainly what is missing and what it is for."""
from __future__ import annotations

import ctypes
import os
import signal
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Callable

from .kernel import consts as C
from .kernel.libc import pidfd_getfd, prctl, syscall
from .kernel.structs import CloneArgs


def _root() -> None:
    if os.geteuid() != 0:
        raise OSError(1, "not running as root")


def _clone3_set_tid() -> None:
    # Ask for our own PID: it is always taken, so a kernel that supports
    # set_tid answers EEXIST and creates nothing.
    tid = (ctypes.c_int32 * 1)(os.getpid())
    args = CloneArgs(exit_signal=signal.SIGCHLD, set_tid=ctypes.addressof(tid), set_tid_size=1)
    try:
        syscall(C.NR["clone3"], ctypes.addressof(args), ctypes.sizeof(args))
    except OSError as exc:
        if exc.errno == 17:
            return
        raise
    raise OSError(0, "clone3 unexpectedly created a process")


def _mm_map() -> None:
    size = ctypes.c_uint32()
    prctl(C.PR_SET_MM, C.PR_SET_MM_MAP_SIZE, ctypes.addressof(size), 0, 0)
    if size.value != 104:
        raise OSError(0, f"struct prctl_mm_map is {size.value} bytes, expected 104")


def _kcmp() -> None:
    syscall(C.NR["kcmp"], os.getpid(), os.getpid(), 0, 0, 0)


def _map_files() -> None:
    os.listdir("/proc/self/map_files")


def _cpuid() -> None:
    from .kernel import xsave
    xsave.layout()


def _vdso_layout() -> None:
    names = [line.split()[-1] for line in open("/proc/self/maps") if line.rstrip().endswith("]")]
    if "[vdso]" not in names:
        raise OSError(0, "no [vdso] mapping")


def _process_vm_readv() -> None:
    buf = ctypes.create_string_buffer(8)
    from .kernel.libc import libc
    from .kernel.structs import Iovec
    local = Iovec(ctypes.addressof(buf), 8)
    remote = Iovec(ctypes.addressof(buf), 8)
    libc.process_vm_readv(os.getpid(), ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)


def _ptrace_scope() -> None:
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            scope = int(f.read())
    except FileNotFoundError:
        return
    if scope >= 3:
        raise OSError(1, f"yama ptrace_scope is {scope}: ptrace is disabled")


def _pidfd_getfd() -> None:
    os.close(pidfd_getfd(os.getpid(), 0 if _fd_open(0) else 1))


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def _sock_diag() -> None:
    import socket
    # NETLINK_SOCK_DIAG = 4: the socket family is enough to know it is there
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 4)
    s.close()


def _nft() -> None:
    import shutil
    if shutil.which("nft") is None:
        raise OSError(2, "the nft command is not installed (Debian package nftables)")


CHECKS: list[tuple[str, str, Callable[[], None]]] = [
    ("root", "tracing other processes and setting their PIDs", _root),
    ("ptrace allowed", "freezing processes and driving the restore", _ptrace_scope),
    ("clone3 set_tid", "restoring a process under its own PID", _clone3_set_tid),
    ("PR_SET_MM_MAP", "restoring mm fields (cmdline, brk, auxv, exe)", _mm_map),
    ("kcmp", "finding fds that share one open file", _kcmp),
    ("/proc/PID/map_files", "identifying mapped files", _map_files),
    ("CPUID leaf 0xD", "laying out the FPU/AVX state (/dev/cpu/0/cpuid, else the instruction)",
     _cpuid),
    ("vdso", "putting the vDSO back in place", _vdso_layout),
    ("process_vm_readv", "reading memory", _process_vm_readv),
    ("pidfd_getfd", "sharing pipes, sockets and files between restored processes", _pidfd_getfd),
    ("sock_diag netlink", "finding socket peers and queues", _sock_diag),
]

# Needed only for some dumps: reported, but not a failure.
OPTIONAL: list[tuple[str, str, Callable[[], None]]] = [
    ("nft", "--tcp-established (the network lock)", _nft),
]


def run_checks() -> int:
    missing = 0
    for name, why, probe in CHECKS:
        try:
            probe()
            print(f"  ok       {name}")
        except OSError as exc:
            missing += 1
            print(f"  MISSING  {name}: {exc.strerror or exc} -- needed for {why}")
    for name, why, probe in OPTIONAL:
        try:
            probe()
            print(f"  ok       {name}")
        except OSError as exc:
            print(f"  absent   {name}: {exc.strerror or exc} -- needed only for {why}")
    if missing:
        print(f"procsnap check: {missing} feature(s) missing")
        return 1
    print("procsnap check: looks good")
    return 0
