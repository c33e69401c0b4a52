"""kwrites.py: memory written by the kernel, not by the program (read(2)
into a buffer: copy_to_user), between a pre-dump and the dump after it.
A pre-dump's tracker must count those pages as written too.

Prints "ready" with a 32 MiB buffer of zeros touched.  SIGUSR1: reads
1 MiB of a known pattern from a pipe into every other MiB of the buffer
with readv (the kernel writes the pages) and prints "written".  SIGTERM:
checks the whole buffer, prints PASS or "FAIL: ...".
"""
import hashlib
import os
import signal
import time

MIB = 1 << 20
buf = bytearray(32 * MIB)          # touched: zero-filled by bytearray
for i in range(0, len(buf), 4096):
    buf[i] = 0
want = bytearray(len(buf))
flags: list[int] = []
signal.signal(signal.SIGUSR1, lambda *a: flags.append(1))
signal.signal(signal.SIGTERM, lambda *a: flags.append(15))


def chunk(n: int) -> bytes:
    return hashlib.sha256(str(n).encode()).digest() * (MIB // 32)


print("ready", flush=True)
while 15 not in flags:
    if 1 in flags:
        flags.remove(1)
        view = memoryview(buf)
        for n in range(0, 32, 2):
            r, w = os.pipe2(os.O_NONBLOCK)
            os.set_blocking(w, True)
            data = chunk(n)
            pid = os.fork()
            if pid == 0:
                os.write(w, data)
                os._exit(0)
            os.close(w)
            got = 0
            while got < MIB:
                os.set_blocking(r, True)
                got += os.readv(r, [view[n * MIB + got:(n + 1) * MIB]])
            os.close(r)
            os.waitpid(pid, 0)
            want[n * MIB:(n + 1) * MIB] = data
        print("written", flush=True)
    time.sleep(0.02)
bad = [n for n in range(32) if buf[n * MIB:(n + 1) * MIB] != want[n * MIB:(n + 1) * MIB]]
print(f"FAIL: MiB {bad} differ" if bad else "PASS", flush=True)
