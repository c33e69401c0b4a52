"""memfd_huge.py: a MFD_HUGETLB memfd (zdtm memfd02-hugetlb), 4 MiB (two
2 MiB huge pages, only the first ever written: the second is a hole),
mapped shared whole and privately whole; the private mapping wrote its
first huge page (a copy of its own), not its second.

Its contents are bigger than --ghost-limit's default and exist nowhere but
in the kernel: a dump must save them anyway (as CRIU does).

Prints "ready", then on SIGTERM checks the bytes through the fd and both
mappings, that the shared mapping and the fd are still one file, that the
private mapping kept its own page and still follows the file where it did
not write, and prints PASS or FAIL: what.
"""
import mmap
import os
import signal
import sys

MFD_HUGETLB = 4
HP = 2 << 20
stop = False


def on_term(signum, frame):
    global stop
    stop = True


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def main() -> int:
    signal.signal(signal.SIGTERM, on_term)
    fd = os.memfd_create("huge-one", os.MFD_CLOEXEC | MFD_HUGETLB)
    os.ftruncate(fd, 2 * HP)
    shared = mmap.mmap(fd, 2 * HP, flags=mmap.MAP_SHARED)
    shared[0:6] = b"write1"
    shared[HP - 4:HP] = b"tail"
    private = mmap.mmap(fd, 2 * HP, flags=mmap.MAP_PRIVATE)
    private[100:103] = b"own"
    say("ready")
    while not stop:
        signal.pause()
    bad = []
    if os.pread(fd, 6, 0) != b"write1" or shared[HP - 4:HP] != b"tail":
        bad.append("contents changed")
    if os.pread(fd, 16, HP) != bytes(16):
        bad.append("the hole has data")
    if private[100:103] != b"own" or private[0:6] != b"write1" or shared[100:103] == b"own":
        bad.append("the private mapping's own page is lost")
    shared[0:6] = b"write2"
    if os.pread(fd, 6, 0) != b"write2":
        bad.append("the shared mapping is not the fd's file")
    shared[HP + 10:HP + 15] = b"later"
    if private[HP + 10:HP + 15] != b"later":
        bad.append("the private mapping no longer follows the file")
    say("FAIL: " + "; ".join(bad) if bad else "PASS")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
