"""Unix socket corners: files in flight, ghost names, relative names.

    unix_corners.py scm|ghost|creds|epoll DIR

scm: a dgram pair holding two messages: a pipe's read end (closed here)
and its write end (kept here too, fd 'keep'); a stream pair holding
"d" carrying a file of DIR opened and read 3 bytes in,
then "ghi" (the stream's file comes with a one-byte message: see stream); a dgram pair holding one end of another socketpair (closed
here) with "inner" queued in it; a file kept here (fd below the
sockets) and in flight too (one description: an lseek on one moves the
other).  On SIGTERM: the pipe ends received
work with the kept one (one pipe, one description: O_NONBLOCK set on the
kept end shows on the received one); the stream gives "d" with the
file at offset 3, then "ghi"; the socket in
flight still holds "inner" and talks to its other end.
ghost: a dgram server bound to DIR/sub/g and a client connected to it,
then the name and DIR/sub removed; a listener bound to DIR/l with a
client, its name then replaced by a regular file; a dgram socket bound
to the relative name "rel.sock" from DIR (and 2 datagrams queued on it
from a socket bound to "DIR/snd", which is then removed); a dgram socket
connected to its own name DIR/self.  On SIGTERM: the names, the peers,
that the client still reaches its server, that the listener accepts a
client connecting through /proc/self/fd (its name being gone), the
file at DIR/l, DIR/sub still gone, the queued datagrams.
creds: messages queued with the credentials of a child (which stays)
and of the parent on sockets with SO_PASSCRED: they come with the same
pid, uid and gid.  credsout: the same with the child gone (its pid
outside the tree): refused.  epoll: an epoll fd in flight (sent twice,
closed here) watching a dgram socket of this process and a pipe's read end
with data; on SIGTERM both messages give the same epoll, it names the
same numbers and events (its fdinfo), reports the pipe ready, and the
socket once a datagram comes.  epollout: an epoll in flight watching a
pipe's read end that is itself in flight only: refused.  stream:
"abc" then "def" with a file on a stream (where "def" began cannot be
found by peeking): refused.  relmoved: dgram sockets bound to the relative
names "moved.sock" and "gone.sock" in DIR, the second then replaced by a
FIFO (zdtm fifo_upon_unix_socket01), then the cwd changed to /: on SIGTERM
both still report their relative names, DIR/moved.sock reaches the first,
DIR/gone.sock is still the FIFO.
PASS or FAIL on SIGTERM; output through os.write.
"""
import array
import fcntl
import os
import signal
import socket
import struct
import sys
import time


def say(text: str) -> None:
    os.write(1, (text + "\n").encode())


def send_fds(sk: socket.socket, data: bytes, fds: list[int]) -> None:
    sk.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])


def recv_fds(sk: socket.socket, size: int) -> tuple[bytes, list[int]]:
    data, anc, _f, _a = sk.recvmsg(size, socket.CMSG_SPACE(16 * 4))
    fds = array.array("i")
    for level, typ, payload in anc:
        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) // 4 * 4])
    return data, list(fds)


def scm(d: str):
    # a file kept here and in flight, with a lower fd than the sockets:
    # restored first, then sent from that same description
    path = os.path.join(d, "f")
    with open(path, "wb") as f:
        f.write(b"0123456789")
    kept = os.open(path, os.O_RDONLY)
    a1, a2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    r, w = os.pipe()
    send_fds(a1, b"rd", [r])
    os.close(r)
    send_fds(a1, b"wr", [w])
    keep = w
    b1, b2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    fd = os.open(path, os.O_RDONLY)
    os.read(fd, 3)
    send_fds(b1, b"d", [fd])
    os.close(fd)
    b1.send(b"ghi")
    send_fds(a1, b"kept", [kept])
    c1, c2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    i1, i2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    i2.send(b"inner")
    send_fds(c1, b"sk", [i1.fileno()])
    i1.close()

    def check() -> str | None:
        data, fds = recv_fds(a2, 16)
        if data != b"rd" or len(fds) != 1:
            return f"pipe read end: {data!r} {fds}"
        rd = fds[0]
        data, fds = recv_fds(a2, 16)
        if data != b"wr" or len(fds) != 1:
            return f"pipe write end: {data!r} {fds}"
        fcntl.fcntl(keep, fcntl.F_SETFL, os.O_NONBLOCK)
        if not fcntl.fcntl(fds[0], fcntl.F_GETFL) & os.O_NONBLOCK:
            return "the write end in flight is not the kept one's description"
        os.write(keep, b"through")
        if os.read(rd, 16) != b"through":
            return "pipe does not carry data"
        data, fds = recv_fds(a2, 16)
        if data != b"kept" or len(fds) != 1:
            return f"kept file: {data!r} {fds}"
        os.lseek(kept, 7, os.SEEK_SET)
        if os.lseek(fds[0], 0, os.SEEK_CUR) != 7:
            return "the kept file in flight is not the kept one's description"
        data, fds = recv_fds(b2, 1)
        if data != b"d" or len(fds) != 1:
            return f"stream file: {data!r} {fds}"
        if os.lseek(fds[0], 0, os.SEEK_CUR) != 3 or os.read(fds[0], 16) != b"3456789":
            return "file in flight lost its offset"
        if b2.recv(3) != b"ghi":
            return "stream tail"
        data, fds = recv_fds(c2, 16)
        if data != b"sk" or len(fds) != 1:
            return f"socket in flight: {data!r} {fds}"
        inner = socket.socket(fileno=fds[0])
        if inner.recv(16) != b"inner":
            return "socket in flight lost its queue"
        inner.send(b"back")
        if i2.recv(16) != b"back":
            return "socket in flight lost its peer"
        return None
    return check, [a1, a2, b1, b2, c1, c2, i2]


def ghost(d: str):
    sub = os.path.join(d, "sub")
    os.mkdir(sub)
    g = os.path.join(sub, "g")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(g)
    cli = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    cli.connect(g)
    os.unlink(g)
    os.rmdir(sub)
    lpath = os.path.join(d, "l")
    lis = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lis.bind(lpath)
    lis.listen(4)
    lcli = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lcli.connect(lpath)
    acc, _ = lis.accept()
    with open(lpath + ".new", "w") as f:
        f.write("not a socket")
    os.rename(lpath + ".new", lpath)
    os.chdir(d)
    rel = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rel.bind("rel.sock")
    snd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    snd.bind(os.path.join(d, "snd"))
    snd.sendto(b"one", "rel.sock")
    snd.sendto(b"two", "rel.sock")
    os.unlink(os.path.join(d, "snd"))
    me = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    me.bind(os.path.join(d, "self"))
    me.connect(os.path.join(d, "self"))
    me.send(b"me")
    lfd = None

    def check() -> str | None:
        if srv.getsockname() != g or cli.getpeername() != g:
            return f"ghost names: {srv.getsockname()!r} {cli.getpeername()!r}"
        cli.send(b"hi")
        if srv.recv(8) != b"hi":
            return "client does not reach its ghost server"
        if os.path.exists(sub):
            return f"{sub} came back"
        if lis.getsockname() != lpath or lcli.getpeername() != lpath:
            return f"listener names: {lis.getsockname()!r} {lcli.getpeername()!r}"
        with open(lpath) as f:
            if f.read() != "not a socket":
                return f"{lpath} is not the file put over the name"
        lcli.send(b"x")
        if acc.recv(1) != b"x":
            return "accepted connection lost"
        if rel.getsockname() != "rel.sock":
            return f"relative name: {rel.getsockname()!r}"
        got = [rel.recv(8), rel.recv(8)]
        if got != [b"one", b"two"]:
            return f"relative queue: {got!r}"
        if os.path.exists(os.path.join(d, "snd")):
            return "snd came back"
        if me.getpeername() != os.path.join(d, "self") or me.recv(8) != b"me":
            return "self-connected socket"
        me.send(b"again")
        if me.recv(8) != b"again":
            return "self-connected socket does not talk to itself"
        return None
    return check, [srv, cli, lis, lcli, acc, rel, snd, me]


def creds(d: str, stay: bool = True):
    a1, a2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a2.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    s1, s2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    s2.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    pid = os.fork()
    if pid == 0:
        a1.send(b"who")
        s1.send(b"child")
        while stay:
            time.sleep(1)
        os._exit(0)
    while len(s2.recv(16, socket.MSG_PEEK)) < 5:  # the child's comes first
        time.sleep(0.01)
    if not stay:
        os.waitpid(pid, 0)
    s1.send(b"parent")

    def check() -> str | None:
        try:
            return check_creds()
        finally:
            if stay:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)

    def check_creds() -> str | None:
        data, anc, _f, _a = a2.recvmsg(8, socket.CMSG_SPACE(12))
        got = [struct.unpack("iII", p) for lv, ty, p in anc if ty == socket.SCM_CREDENTIALS]
        if data != b"who" or got != [(pid, 0, 0)]:
            return f"dgram credentials: {data!r} {got} (child {pid})"
        seen = []
        for _ in range(2):
            data, anc, _f, _a = s2.recvmsg(16, socket.CMSG_SPACE(12))
            seen.append((data, [struct.unpack("iII", p)[0] for lv, ty, p in anc
                                if ty == socket.SCM_CREDENTIALS]))
        if seen != [(b"child", [pid]), (b"parent", [os.getpid()])]:
            return f"stream credentials: {seen} (child {pid})"
        return None
    return check, [a1, a2, s1, s2]


def _tfds(fd: int) -> list[tuple[int, int]]:
    """(fd number, events) of each registration, from our own fdinfo."""
    out = []
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("tfd:"):
                w = line.split()
                out.append((int(w[1]), int(w[3], 16)))
    return sorted(out)


def epoll(d: str):
    import select
    a1, a2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    r, w = os.pipe()
    os.write(w, b"x")
    ep = select.epoll()
    ep.register(a2.fileno(), select.EPOLLIN)
    ep.register(r, select.EPOLLIN | select.EPOLLET)
    want = _tfds(ep.fileno())
    send_fds(a1, b"ep", [ep.fileno()])
    send_fds(a1, b"ep", [ep.fileno()])
    ep.close()

    def check() -> str | None:
        _d1, fds1 = recv_fds(a2, 16)
        _d2, fds2 = recv_fds(a2, 16)
        if len(fds1) != 1 or len(fds2) != 1:
            return f"epoll messages carry {fds1} {fds2}"
        if os.fstat(fds1[0]).st_ino != os.fstat(fds2[0]).st_ino:
            return "the two messages carry two epolls"
        got = _tfds(fds1[0])
        if got != want:
            return f"registrations {got}, want {want}"
        e = select.epoll.fromfd(fds1[0])
        ready = sorted(fd for fd, _ev in e.poll(0))
        if ready != [r]:
            return f"ready {ready}, want the pipe {r}"
        a1.send(b"more")
        ready = sorted(fd for fd, _ev in e.poll(1))
        if ready != sorted([r, a2.fileno()]) and ready != [a2.fileno()]:
            return f"ready {ready} after a datagram, want the socket {a2.fileno()}"
        return None
    return check, [a1, a2, r, w]


def epollout(d: str):
    import select
    a1, a2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    r, w = os.pipe()
    ep = select.epoll()
    ep.register(r, select.EPOLLIN)
    send_fds(a1, b"ep", [ep.fileno()])
    send_fds(a1, b"rd", [r])
    ep.close()
    os.close(r)
    return (lambda: None), [a1, a2, w]


def relmoved(d: str):
    import stat
    os.chdir(d)
    rel = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rel.bind("moved.sock")
    gone = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    gone.bind("gone.sock")
    os.unlink("gone.sock")
    os.mkfifo("gone.sock")
    os.chdir("/")

    def check() -> str | None:
        if (rel.getsockname(), gone.getsockname()) != ("moved.sock", "gone.sock"):
            return f"names {rel.getsockname()!r} {gone.getsockname()!r}"
        if not stat.S_ISFIFO(os.stat(f"{d}/gone.sock").st_mode):
            return "the FIFO on gone.sock is gone"
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.sendto(b"hi", f"{d}/moved.sock")
        rel.settimeout(2)
        if rel.recv(16) != b"hi":
            return "moved.sock does not reach its socket"
        return None
    return check, [rel, gone]


def stream(d: str):
    a1, a2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a1.send(b"abc")
    send_fds(a1, b"def", [0])
    return (lambda: None), [a1, a2]


def main() -> int:
    mode, d = sys.argv[1], sys.argv[2]
    check, keep = {"scm": scm, "ghost": ghost, "creds": creds, "epoll": epoll,
                   "epollout": epollout,
                    "credsout": lambda d: creds(d, stay=False),
                    "stream": stream, "relmoved": relmoved}[mode](d)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    say("ready")
    while not stop:
        time.sleep(0.05)
    try:
        err = check()
    except Exception as exc:  # a failure of the check is a FAIL, with why
        err = repr(exc)
    say("FAIL " + err if err else "PASS")
    return 1 if err else 0


if __name__ == "__main__":
    sys.exit(main())
