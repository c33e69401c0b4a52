"""shmem_private.py: shared anonymous memory held three ways at once
(zdtm shmemfd-priv): a MAP_SHARED|MAP_ANONYMOUS mapping, an fd opened on
it through /proc/self/map_files, a second MAP_SHARED mapping of that fd at
an offset, and a MAP_PRIVATE mapping of the fd that wrote one page of its
own.

Prints "ready", then on SIGTERM checks that after the restore
  - the private mapping kept its own page, and the object did not get it;
  - the private mapping's untouched pages still follow the object: a
    write through the first mapping and one through the fd show there;
  - the two shared mappings and the fd are still one object;
and prints PASS or FAIL: what.
"""
import ctypes
import mmap
import os
import signal
import sys

stop = False
PG = mmap.PAGESIZE


def on_term(signum, frame):
    global stop
    stop = True


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def main() -> int:
    signal.signal(signal.SIGTERM, on_term)
    size = 5 * PG
    shared = mmap.mmap(-1, size)  # MAP_SHARED | MAP_ANONYMOUS
    shared[0:5] = b"first"
    shared[PG:PG + 6] = b"second"
    shared[2 * PG:2 * PG + 5] = b"third"
    addr = ctypes.addressof(ctypes.c_char.from_buffer(shared))
    fd = os.open(f"/proc/self/map_files/{addr:x}-{addr + size:x}", os.O_RDWR)
    private = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE)
    second = mmap.mmap(fd, 3 * PG, flags=mmap.MAP_SHARED, offset=2 * PG)
    private[PG:PG + 3] = b"own"
    say("ready")
    while not stop:
        signal.pause()
    bad = []
    if private[PG:PG + 3] != b"own":
        bad.append("the private mapping lost its own page")
    if shared[PG:PG + 6] != b"second":
        bad.append("the private mapping's page went into the object")
    if private[0:5] != b"first" or second[0:5] != b"third":
        bad.append("contents changed")
    shared[3 * PG:3 * PG + 5] = b"later"
    if private[3 * PG:3 * PG + 5] != b"later":
        bad.append("the private mapping no longer follows the object")
    if second[PG:PG + 5] != b"later":
        bad.append("the second shared mapping is not the object any more")
    os.pwrite(fd, b"viafd", 4 * PG)
    if private[4 * PG:4 * PG + 5] != b"viafd" or shared[4 * PG:4 * PG + 5] != b"viafd":
        bad.append("the fd is not the object any more")
    say("FAIL: " + "; ".join(bad) if bad else "PASS")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
