"""fuse_reader.py: a reader part way through a file a FUSE server makes.

    python3 fuse_reader.py PATH N

Opens PATH, reads its first N bytes, prints "ready", waits for SIGTERM,
then reads on from where it was (plain read(2), the file position it had).
lxcfs fills its answer only on a read at offset 0: a file reopened at a
position past 0 would read EOF.  PASS when the rest is not empty and the
whole looks like one answer (its first line is complete, it ends in a
newline); else FAIL with what was read.
"""
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
    path, n = sys.argv[1], int(sys.argv[2])
    signal.signal(signal.SIGTERM, on_term)
    fd = os.open(path, os.O_RDONLY)
    head = os.read(fd, n)
    say("ready")
    while not stop:
        signal.pause()
    rest = b""
    while chunk := os.read(fd, 65536):
        rest += chunk
    if not rest:
        say(f"FAIL: EOF after {len(head)} bytes of {path}")
        return 1
    if b"\n" not in head + rest[:200] or not rest.endswith(b"\n"):
        say(f"FAIL: {head!r} then {rest[:80]!r}")
        return 1
    say("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
