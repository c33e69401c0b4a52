"""The one ctypes loader of procsnap.

Every foreign function procsnap calls is declared once, as data, in
``SIGNATURES``; ``ERROR_CHECKERS`` says how a failure is recognised.  The
loader applies both, so a failing call always raises ``OSError`` with the
right errno and the name of the call -- callers never look at ``errno``
themselves.  (pyudev's ``_ctypeslib`` is the model.)

Raw system calls without a glibc wrapper go through :func:`syscall`, which
clears errno before the call for the same reason.
"""
from __future__ import annotations

import ctypes
import os
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any, Callable

from . import structs as S

c_long = ctypes.c_long
c_ulong = ctypes.c_ulong
c_int = ctypes.c_int
c_uint = ctypes.c_uint
c_void_p = ctypes.c_void_p
c_ssize_t = ctypes.c_ssize_t

# name -> (restype, argtypes)
SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    # long ptrace(enum __ptrace_request request, pid_t pid, void *addr, void *data);
    "ptrace": (c_long, [c_long, c_long, c_void_p, c_void_p]),
    # ssize_t process_vm_readv(pid_t, const struct iovec *, unsigned long,
    #                          const struct iovec *, unsigned long, unsigned long);
    "process_vm_readv": (c_ssize_t, [c_int, ctypes.POINTER(S.Iovec), c_ulong,
                                     ctypes.POINTER(S.Iovec), c_ulong, c_ulong]),
    "process_vm_writev": (c_ssize_t, [c_int, ctypes.POINTER(S.Iovec), c_ulong,
                                      ctypes.POINTER(S.Iovec), c_ulong, c_ulong]),
    # int prctl(int option, unsigned long arg2, arg3, arg4, arg5);
    "prctl": (c_int, [c_int, c_ulong, c_ulong, c_ulong, c_ulong]),
    # int syncfs(int fd);
    "syncfs": (c_int, [c_int]),
    # int sync_file_range(int fd, off64_t offset, off64_t nbytes, unsigned int flags);
    "sync_file_range": (c_int, [c_int, ctypes.c_longlong, ctypes.c_longlong, c_uint]),
    # long syscall(long number, ...): variadic, arguments passed as c_long.
    "syscall": (c_long, []),
    # int statfs(const char *path, struct statfs *buf);
    "statfs": (c_int, [ctypes.c_char_p, c_void_p]),
}


def _check_minus_one(result: int, func: Any, args: tuple) -> int:
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{func.__name__}: {os.strerror(err)}")
    return result


def _check_ptrace(result: int, func: Any, args: tuple) -> int:
    # PTRACE_PEEK* return data, so -1 is ambiguous: errno decides, which is
    # why the wrapper below clears errno before every call.
    if result == -1:
        err = ctypes.get_errno()
        if err:
            raise OSError(err, f"ptrace({args[0]:#x}, {args[1]}): {os.strerror(err)}")
    return result


ERROR_CHECKERS: dict[str, Callable[..., int]] = {
    "ptrace": _check_ptrace,
    "process_vm_readv": _check_minus_one,
    "process_vm_writev": _check_minus_one,
    "prctl": _check_minus_one,
    "syscall": _check_minus_one,
    "syncfs": _check_minus_one,
    "sync_file_range": _check_minus_one,
    "statfs": _check_minus_one,
}


def _load() -> ctypes.CDLL:
    lib = ctypes.CDLL("libc.so.6", use_errno=True)
    for name, (restype, argtypes) in SIGNATURES.items():
        func = getattr(lib, name)
        func.restype = restype
        if argtypes:
            func.argtypes = argtypes
        func.errcheck = ERROR_CHECKERS[name]  # type: ignore[assignment]
    return lib


libc = _load()

# The same libc through PyDLL: calls keep the GIL.  Used for clone3, so the
# child never starts life with the GIL owned by a thread it does not have.
_libc_gil = ctypes.PyDLL("libc.so.6", use_errno=True)
_syscall_gil = _libc_gil.syscall
_syscall_gil.restype = c_long
_syscall_gil.errcheck = _check_minus_one  # type: ignore[assignment]


def ptrace(request: int, pid: int, addr: int | None = 0, data: Any = 0) -> int:
    ctypes.set_errno(0)
    return libc.ptrace(request, pid, addr, data)


def syscall(nr: int, *args: int) -> int:
    """Raw system call; raises OSError on failure."""
    ctypes.set_errno(0)
    return libc.syscall(c_long(nr), *[c_long(a) for a in args])


def syscall_holding_gil(nr: int, *args: int) -> int:
    """Raw system call that does not release the GIL (see _libc_gil)."""
    ctypes.set_errno(0)
    return _syscall_gil(c_long(nr), *[c_long(a) for a in args])


def pidfd_getfd(pid: int, fd: int) -> int:
    """Our own copy of fd ``fd`` of process ``pid`` -- the same open file
    description (pidfd_open + pidfd_getfd; needs ptrace rights on pid)."""
    pidfd = os.pidfd_open(pid)
    try:
        return syscall(438, pidfd, fd, 0)  # __NR_pidfd_getfd
    finally:
        os.close(pidfd)


def fs_magic(path: str) -> int:
    """statfs(path).f_type: the magic number of the filesystem the file is
    on (e.g. HUGETLBFS_MAGIC for a MFD_HUGETLB memfd behind /proc/PID/fd/N,
    which stat() alone cannot tell from another internal mount)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs: 120 bytes on x86_64
    ctypes.set_errno(0)
    libc.statfs(os.fsencode(path), buf)
    return int.from_bytes(buf.raw[:8], "little")  # __fsword_t f_type, first


def prctl(option: int, a2: int = 0, a3: int = 0, a4: int = 0, a5: int = 0) -> int:
    return libc.prctl(option, a2, a3, a4, a5)


def address_of(name: str) -> int:
    """Address of a libc function in this process (and in any fork of it)."""
    return ctypes.cast(getattr(libc, name), c_void_p).value or 0


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
    """mount(2); raises OSError (used for a cgroup hierarchy mounted nowhere)."""
    fn = _libc_plain.mount
    fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                   ctypes.c_char_p]
    if fn(os.fsencode(source), os.fsencode(target), fstype.encode(), flags,
          data.encode() or None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def umount2(target: str, flags: int = 0) -> None:
    fn = _libc_plain.umount2
    fn.argtypes = [ctypes.c_char_p, ctypes.c_int]
    if fn(os.fsencode(target), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


_libc_plain = ctypes.CDLL("libc.so.6", use_errno=True)
