"""One stage of a shell pipeline (issue 4): `pipeline.py produce`,
`pipeline.py filter`, `pipeline.py consume OUT`.

The producer writes numbered lines as fast as the pipe takes them, so every
pipe is full when the tree is dumped; the filter passes lines on slowly;
the consumer checks that none is lost or repeated and appends "ok N" every
500 lines (or "FAIL ...") to OUT."""
import os
import sys
import time


def produce():
    n = 0
    out = os.fdopen(1, "wb", buffering=0)
    while True:
        out.write(b"%d\n" % n)
        n += 1


def filter_():
    inp = os.fdopen(0, "rb")
    out = os.fdopen(1, "wb", buffering=0)
    for i, line in enumerate(inp):
        out.write(line)
        if i % 100 == 0:
            time.sleep(0.01)


def consume(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, b"ready\n")
    expect = 0
    for line in os.fdopen(0, "rb"):
        n = int(line)
        if n != expect:
            os.write(fd, b"FAIL: expected %d, got %d\n" % (expect, n))
            sys.exit(1)
        expect += 1
        if n % 500 == 0:
            os.write(fd, b"ok %d\n" % n)


if __name__ == "__main__":
    {"produce": produce, "filter": filter_}.get(sys.argv[1], lambda: consume(sys.argv[2]))()
