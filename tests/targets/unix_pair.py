"""Two processes talking over socketpairs, with data queued both ways.

    unix_pair.py stream|dgram|seqpacket

Pair A (of the given type): before "ready" the child sends 5 messages to
the parent and the parent 5 to the child; nobody reads, so both queues
hold data at the checkpoint.  Pair B (stream, or seqpacket for
seqpacket): the parent sends "tail" and shuts its end down for writing.

On SIGTERM the parent reads and checks its 5 messages, wakes the child
(SIGUSR1), which checks its 5, checks pair B ("tail" then EOF) and that
the pairs still talk both ways, and exits 0 or 1; the parent prints PASS
or FAIL with the reason.  Output goes through os.write (no buffers).
"""
import os
import signal
import socket
import sys
import time

TYPES = {"stream": socket.SOCK_STREAM, "dgram": socket.SOCK_DGRAM,
         "seqpacket": socket.SOCK_SEQPACKET}
N = 5
SIZE = 8


def say(text: str) -> None:
    os.write(1, (text + "\n").encode())


def recv_exact(sk: socket.socket, size: int) -> bytes:
    out = b""
    deadline = time.monotonic() + 10
    while len(out) < size and time.monotonic() < deadline:
        chunk = sk.recv(size - len(out))
        if not chunk:
            break
        out += chunk
    return out


def check(sk: socket.socket, prefix: str) -> str | None:
    for i in range(N):
        got = recv_exact(sk, SIZE)
        want = f"{prefix} {i:04d}".encode()
        if got != want:
            return f"{prefix}: message {i} is {got!r}, want {want!r}"
    return None


def main() -> int:
    typ = TYPES[sys.argv[1]]
    btype = socket.SOCK_SEQPACKET if typ == socket.SOCK_SEQPACKET else socket.SOCK_STREAM
    a, b = socket.socketpair(socket.AF_UNIX, typ)
    pa, pb = socket.socketpair(socket.AF_UNIX, btype)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGUSR2})
    parent = os.getpid()
    child = os.fork()
    if child == 0:
        a.close()
        pa.close()
        for i in range(N):
            b.send(f"c2p {i:04d}".encode())
        os.kill(parent, signal.SIGUSR2)
        signal.sigwait({signal.SIGUSR1})
        err = check(b, "p2c")
        if err is None:
            tail = recv_exact(pb, 4)
            eof = pb.recv(16)
            if tail != b"tail" or eof != b"":
                err = f"pair B: got {tail!r} then {eof!r}, want b'tail' then EOF"
        if err is None:
            b.send(b"c2p back")  # the pair still works both ways
            pb.send(b"half")     # pair B is only half closed
        if err is not None:
            say("child FAIL: " + err)
        os._exit(0 if err is None else 1)
    b.close()
    pb.close()
    for i in range(N):
        a.send(f"p2c {i:04d}".encode())
    pa.send(b"tail")
    pa.shutdown(socket.SHUT_WR)
    signal.sigwait({signal.SIGUSR2})
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    say("ready")
    while not stop:
        time.sleep(0.05)
    err = check(a, "c2p")
    os.kill(child, signal.SIGUSR1)
    _, status = os.waitpid(child, 0)
    if err is None and status != 0:
        err = f"child exited with status {status:#x}"
    if err is None and recv_exact(a, SIZE) != b"c2p back":
        err = "no reply from the child after the restore"
    if err is None and recv_exact(pa, 4) != b"half":
        err = "pair B: the child's data after our shutdown did not arrive"
    say("PASS" if err is None else "FAIL: " + err)
    return 0 if err is None else 1


if __name__ == "__main__":
    sys.exit(main())
