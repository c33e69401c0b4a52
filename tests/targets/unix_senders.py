"""unix_senders.py DIR: unix datagrams queued with their senders' names.

Receivers (fds 100, 101, 102):
  100  bound to the abstract name @procsnap-us-PID-r, unconnected, with
       datagrams from: an unnamed socket; S2 (@...-s2, still open here);
       S3 (DIR/s3.sock, closed and its file removed since); S4 (@...-s4,
       closed since); S5 (autobound: SO_PASSCRED, still open)
  101  bound to DIR/r.sock: from S2 and from an unnamed socket
  102  one end of a socketpair, from its peer (103)
Prints "ready", then "r NAME" with the name of 100 (the test may queue
one of its own there).  On SIGUSR1 reads every queue with recvfrom and
checks data and sender, prints PASS or "FAIL: ..." lines.
"""
import os
import signal
import socket
import sys
import time

go = False


def on_usr1(signum, frame):
    global go
    go = True


def say(text: str) -> None:
    os.write(1, (text + "\n").encode())


def main() -> int:
    d = sys.argv[1]
    signal.signal(signal.SIGUSR1, on_usr1)
    base = f"\0procsnap-us-{os.getpid()}"
    keep = []
    r = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    r.bind(base + "-r")
    rname = r.getsockname()
    r2 = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    r2.bind(f"{d}/r.sock")
    expect = {100: [], 101: [], 102: []}

    def send(s, data, to, fd):
        s.sendto(data, to)
        expect[fd].append((data, s.getsockname() or None))  # recvfrom: None, unnamed

    s1 = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    send(s1, b"unnamed", rname, 100)
    s2 = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s2.bind(base + "-s2")
    keep.append(s2)
    send(s2, b"from s2", rname, 100)
    s3 = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s3.bind(f"{d}/s3.sock")
    send(s3, b"from s3, gone", rname, 100)
    s3.close()
    os.unlink(f"{d}/s3.sock")
    s4 = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s4.bind(base + "-s4")
    send(s4, b"from s4, closed", rname, 100)
    s4.close()
    s5 = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s5.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    s5.sendto(b"from s5, autobound", rname)     # the send binds it
    expect[100].append((b"from s5, autobound", s5.getsockname()))
    keep.append(s5)
    send(s1, b"unnamed again", rname, 100)
    send(s2, b"s2 to r2", f"{d}/r.sock", 101)
    send(s1, b"unnamed to r2", f"{d}/r.sock", 101)
    s1.close()
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b.send(b"pair")
    expect[102].append((b"pair", b.getsockname() or None))
    recv = {}
    for fd, sk in ((100, r), (101, r2), (102, a), (103, b)):
        os.dup2(sk.fileno(), fd)
        sk.close()
        recv[fd] = socket.socket(fileno=fd)
    say("ready")
    say(f"r {rname[1:].decode() if isinstance(rname, bytes) else rname}")
    while not go:
        time.sleep(0.05)
    bad = []
    for fd, want in expect.items():
        sk = recv[fd]
        sk.setblocking(False)
        for data, sender in want:
            try:
                got, addr = sk.recvfrom(1000)
            except BlockingIOError:
                bad.append(f"fd {fd}: {data!r} missing")
                break
            if got != data or addr != sender:
                bad.append(f"fd {fd}: {got!r} from {addr!r}, expected {data!r} from {sender!r}")
        else:
            try:
                bad.append(f"fd {fd}: an extra datagram {sk.recvfrom(1000)!r}")
            except BlockingIOError:
                pass
    for line in bad:
        say("FAIL: " + line)
    if not bad:
        say("PASS")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
