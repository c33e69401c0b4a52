"""Re-record the real /proc fixtures in this directory.

Run as ``python tests/unit/data/proc/record.py`` on a Linux host.  The
process sets up the state the parsers must cope with (a memfd, a deleted
file, a path with spaces, a file literally named "x (deleted)", a named
anonymous mapping, a POSIX timer, eventfd/epoll/inotify/timerfd/signalfd
descriptors) and then copies its own /proc files here verbatim.  The files
are checked in, so the unit tests never depend on the host they run on.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import select
import shutil
import signal
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
libc = ctypes.CDLL(None, use_errno=True)


def copy(name: str, dest: str) -> None:
    with open(f"/proc/self/{name}", "rb") as src:
        data = src.read()
    with open(os.path.join(HERE, dest), "wb") as out:
        out.write(data)


def map_file(path: str, size: int = 4096) -> mmap.mmap:
    with open(path, "wb") as f:
        f.write(b"\0" * size)
    fd = os.open(path, os.O_RDONLY)
    try:
        return mmap.mmap(fd, size, prot=mmap.PROT_READ, flags=mmap.MAP_PRIVATE)
    finally:
        os.close(fd)


def main() -> None:
    keep: list[object] = []
    tmp = tempfile.mkdtemp(prefix="procsnap rec ")
    try:
        memfd = os.memfd_create("procsnap-memfd")
        os.ftruncate(memfd, 8192)
        keep.append(mmap.mmap(memfd, 8192))
        keep.append(map_file(os.path.join(tmp, "with space.bin")))
        keep.append(map_file(os.path.join(tmp, "x (deleted)")))
        gone = os.path.join(tmp, "gone.bin")
        keep.append(map_file(gone))
        os.unlink(gone)
        # PR_SET_VMA / PR_SET_VMA_ANON_NAME: "[anon:procsnap name]"
        anon = mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        keep.append(anon)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(anon))
        libc.prctl(0x53564D41, 0, ctypes.c_ulong(addr), ctypes.c_ulong(4096),
                   ctypes.c_char_p(b"procsnap name"))

        timer_id = ctypes.c_void_p()
        libc.timer_create(1, None, ctypes.byref(timer_id))  # CLOCK_MONOTONIC

        efd = os.eventfd(7)
        ep = select.epoll()
        ep.register(efd, select.EPOLLIN)
        ino = libc.inotify_init1(0)
        libc.inotify_add_watch(ino, tmp.encode(), 0x100)  # IN_CREATE
        tfd = libc.timerfd_create(1, 0)
        mask = (ctypes.c_ulong * 16)()
        mask[0] = 1 << (signal.SIGUSR1 - 1)
        sfd = libc.signalfd(-1, ctypes.byref(mask), 0)

        for name in ("maps", "stat", "status", "mountinfo", "limits",
                     "auxv", "timers", "personality"):
            copy(name, f"self_{name}.txt" if name != "auxv" else "self_auxv.bin")
        for label, fd in (("stdin", 0), ("eventfd", efd), ("epoll", ep.fileno()),
                          ("inotify", ino), ("timerfd", tfd), ("signalfd", sfd)):
            copy(f"fdinfo/{fd}", f"fdinfo_{label}.txt")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    sys.exit(main())
