"""shmem_private.py: shared anonymous memory mapped a second time privately,
through /proc/self/map_files (zdtm shmemfd-priv), which procsnap refuses.

Prints "ready", then on SIGTERM checks that the private mapping still
follows the object where it has not written (the state a dump refused
must have left alone) and prints PASS or FAIL.
"""
import mmap
import os
import signal
import sys

stop = False


def on_term(signum, frame):
    global stop
    stop = True


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def main() -> int:
    signal.signal(signal.SIGTERM, on_term)
    size = 4 * mmap.PAGESIZE
    shared = mmap.mmap(-1, size)  # MAP_SHARED | MAP_ANONYMOUS
    shared[0:5] = b"first"
    import ctypes
    addr = ctypes.addressof(ctypes.c_char.from_buffer(shared))
    fd = os.open(f"/proc/self/map_files/{addr:x}-{addr + size:x}", os.O_RDWR)
    private = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE)
    private[mmap.PAGESIZE:mmap.PAGESIZE + 3] = b"own"
    say("ready")
    while not stop:
        signal.pause()
    shared[2 * mmap.PAGESIZE:2 * mmap.PAGESIZE + 5] = b"later"
    if private[2 * mmap.PAGESIZE:2 * mmap.PAGESIZE + 5] != b"later" or \
            private[0:5] != b"first" or private[mmap.PAGESIZE:mmap.PAGESIZE + 3] != b"own":
        say("FAIL: the private mapping no longer follows the object")
        return 1
    say("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
