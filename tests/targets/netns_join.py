"""netns_join.py: a counter that lives in a network namespace it did not
make (criu's zdtm netns_lock test: a namespace kept by a file under
/run/netns, with a server of its own that is not in the tree).

    python3 netns_join.py FILE NSFILE

Enters the network namespace of NSFILE (setns), prints "ready", and every
~50 ms writes the next number to FILE.  On SIGTERM it checks that it still
lives in that namespace (same inode as NSFILE) and prints PASS or
"FAIL: ..." and exits.
"""
import ctypes
import os
import signal
import sys
import time

CLONE_NEWNET = 0x40000000


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def main() -> int:
    out, nsfile = sys.argv[1], sys.argv[2]
    fd = os.open(nsfile, os.O_RDONLY)
    if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
        say(f"FAIL: setns: {os.strerror(ctypes.get_errno())}")
        return 1
    os.close(fd)
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    say("ready")
    n = 0
    with open(out, "a") as f:
        while not stop:
            n += 1
            f.write(f"{n}\n")
            f.flush()
            time.sleep(0.05)
    if os.stat("/proc/self/ns/net").st_ino != os.stat(nsfile).st_ino:
        say("FAIL: not in the namespace of " + nsfile)
        return 1
    say("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
