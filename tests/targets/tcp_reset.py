"""TCP connections that were reset, each with its error still pending.

    tcp_reset.py FAMILY [etimedout]

FAMILY is 4 (127.0.0.1), 6 (::1) or 46 (IPv6 sockets to ::ffff:127.0.0.1).
The target makes both ends itself and closes the far ones:

    fd 5  reset while ESTABLISHED, 1000 unread bytes: ECONNRESET
    fd 6  reset in CLOSE_WAIT (the peer sent 500 bytes and its FIN,
          then an RST): EPIPE
    fd 7  a non-blocking connect() refused by an RST: ECONNREFUSED

With "etimedout" there is only fd 8 instead: a connection that timed out
(TCP_USER_TIMEOUT while its zero-window probes went unanswered: the far
end does not read): ETIMEDOUT, an error no RST makes.

It prints "ready" once every socket reports POLLERR.  On SIGUSR1 (after a
restore, or a refused dump) it checks what a program sees of each -- the
data, then the error exactly once (recv, send or SO_ERROR), then EOF --
and prints PASS or "FAIL: ..." lines.
"""
import errno
import os
import select
import signal
import socket
import struct
import sys
import time

go = False


def on_usr1(signum, frame):
    global go
    go = True


def say(text: str) -> None:
    os.write(1, (text + "\n").encode())


def place(sk: socket.socket, fd: int) -> socket.socket:
    os.dup2(sk.fileno(), fd)
    sk.close()
    return socket.socket(fileno=fd)


def pollerr(sk: socket.socket) -> bool:
    p = select.poll()
    p.register(sk.fileno(), select.POLLERR)
    return bool(p.poll(0))


def wait_err(sk: socket.socket, what: str) -> None:
    end = time.monotonic() + 10
    while not pollerr(sk):
        if time.monotonic() > end:
            say(f"FAIL: setup: {what} has no pending error")
            sys.exit(1)
        time.sleep(0.01)


def rst_close(sk: socket.socket) -> None:
    sk.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sk.close()


def main() -> int:
    fam = sys.argv[1]
    if fam == "4":
        af, host, lhost = socket.AF_INET, "127.0.0.1", "127.0.0.1"
    elif fam == "6":
        af, host, lhost = socket.AF_INET6, "::1", "::1"
    else:
        af, host, lhost = socket.AF_INET6, "::ffff:127.0.0.1", "::"
    signal.signal(signal.SIGUSR1, on_usr1)
    srv = socket.socket(af, socket.SOCK_STREAM)
    srv.bind((lhost, 0))
    srv.listen(4)
    port = srv.getsockname()[1]

    a = b = c = None
    if sys.argv[2:] != ["etimedout"]:
        a = socket.socket(af, socket.SOCK_STREAM)
        a.connect((host, port))
        far, _ = srv.accept()
        far.sendall(bytes(range(250)) * 4)
        time.sleep(0.05)
        rst_close(far)
        a = place(a, 5)

        b = socket.socket(af, socket.SOCK_STREAM)
        b.connect((host, port))
        far, _ = srv.accept()
        far.sendall(b"x" * 500)
        far.shutdown(socket.SHUT_WR)
        time.sleep(0.05)
        rst_close(far)
        b = place(b, 6)
        srv.close()

        c = socket.socket(af, socket.SOCK_STREAM)
        c.setblocking(False)
        err = c.connect_ex((host, port))   # nobody listens there any more
        if err not in (0, errno.EINPROGRESS, errno.ECONNREFUSED):
            say(f"FAIL: setup: connect gave {errno.errorcode.get(err, err)}")
            return 1
        c = place(c, 7)
        for sk, what in ((a, "fd 5"), (b, "fd 6"), (c, "fd 7")):
            wait_err(sk, what)
    aborted = None
    if sys.argv[2:] == ["etimedout"]:
        srv = socket.socket(af, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        srv.bind((lhost, 0))
        srv.listen(1)
        d = socket.socket(af, socket.SOCK_STREAM)
        d.connect((host, srv.getsockname()[1]))
        far, _ = srv.accept()
        srv.close()
        d.setsockopt(socket.IPPROTO_TCP, 18, 300)   # TCP_USER_TIMEOUT, ms
        d.setblocking(False)
        try:
            while True:
                d.send(b"z" * 65536)
        except BlockingIOError:
            pass
        wait_err(d, "fd 8")
        d.setsockopt(socket.IPPROTO_TCP, 18, 0)   # (an option of its own, not the point here)
        far.close()
        aborted = place(d, 8)
    say("ready")
    while not go:
        time.sleep(0.05)

    bad = []

    def expect(what: str, call, want) -> None:
        try:
            got = call()
        except OSError as exc:
            got = errno.errorcode.get(exc.errno, exc.errno)
        if got != want:
            bad.append(f"{what}: {got!r}, expected {want!r}")

    def so_error(sk: socket.socket):
        e = sk.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        return errno.errorcode.get(e, e) if e else 0

    if a is not None:
        for sk, name in ((a, "fd 5"), (b, "fd 6"), (c, "fd 7")):
            if not pollerr(sk):
                bad.append(f"{name}: no pending error (POLLERR)")
        # reset while established: the data, then the error, then EOF
        expect("fd 5 recv", lambda: a.recv(4000), bytes(range(250)) * 4)
        expect("fd 5 recv after the data", lambda: a.recv(10), "ECONNRESET")
        expect("fd 5 SO_ERROR after", lambda: so_error(a), 0)
        expect("fd 5 recv at the end", lambda: a.recv(10), b"")
        expect("fd 5 send", lambda: a.send(b"y"), "EPIPE")
        # reset in CLOSE_WAIT: the data and the FIN; the error shows in SO_ERROR
        expect("fd 6 recv", lambda: b.recv(4000), b"x" * 500)
        expect("fd 6 recv after the data", lambda: b.recv(10), b"")
        expect("fd 6 SO_ERROR", lambda: so_error(b), "EPIPE")
        expect("fd 6 SO_ERROR again", lambda: so_error(b), 0)
        # refused connect: SO_ERROR, as a non-blocking connect()er reads it
        expect("fd 7 SO_ERROR", lambda: so_error(c), "ECONNREFUSED")
        expect("fd 7 SO_ERROR again", lambda: so_error(c), 0)
    if aborted is not None:
        expect("fd 8 SO_ERROR", lambda: so_error(aborted), "ETIMEDOUT")
    for line in bad:
        say("FAIL: " + line)
    if not bad:
        say("PASS")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
