"""counter.py: the Python twin of counter.c, with ~20 MB of heap data.

    python3 counter.py FILE [LIMIT]

Every ~50 ms (time.sleep) writes the next number on its own line to FILE
with os.write.  It holds 20 x 1 MiB bytes objects; each iteration re-checks
one of them (round robin) against its CRC32, and on SIGTERM all of them.
A mismatch prints "FAIL: ..." and exits 1.  With LIMIT it exits 42 after
writing LIMIT.  Prints "ready" first, "PASS" on a clean SIGTERM.
"""
import os
import signal
import sys
import time
import zlib

CHUNKS = 20
CHUNK = 1 << 20


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def make_chunk(i: int) -> bytes:
    # deterministic, not compressible-looking: a repeated 4 KiB block per chunk
    block = bytes((j * 131 + i * 17 + (j >> 8)) & 0xFF for j in range(4096))
    return block * (CHUNK // 4096)


stop = False


def on_term(signum, frame):
    global stop
    stop = True


def main() -> int:
    if len(sys.argv) < 2:
        say("usage: counter.py FILE [LIMIT]")
        return 2
    limit = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    os.umask(0o027)
    data = [make_chunk(i) for i in range(CHUNKS)]
    crcs = [zlib.crc32(c) for c in data]
    # a mutable object too: a dict that grows with the count
    seen = {}
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    mypid = os.getpid()
    written = 0
    signal.signal(signal.SIGTERM, on_term)
    say("ready")

    def check(indexes) -> bool:
        for i in indexes:
            if zlib.crc32(data[i]) != crcs[i] or len(data[i]) != CHUNK:
                say(f"FAIL: chunk {i} checksum changed")
                return False
        if os.getpid() != mypid:
            say(f"FAIL: getpid() {os.getpid()} != {mypid}")
            return False
        if os.lseek(fd, 0, os.SEEK_CUR) != written:
            say(f"FAIL: file position {os.lseek(fd, 0, os.SEEK_CUR)} != {written}")
            return False
        if any(seen[k] != k * k for k in seen) or len(seen) != n:
            say("FAIL: dict contents changed")
            return False
        return True

    n = 0
    while not stop:
        n += 1
        seen[n] = n * n
        line = f"{n}\n".encode()
        written += os.write(fd, line)
        if not check([n % CHUNKS]):
            return 1
        if limit and n >= limit:
            if not check(range(CHUNKS)):
                return 1
            say(f"done {n}")
            return 42
        time.sleep(0.05)
    if not check(range(CHUNKS)):
        return 1
    say("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
