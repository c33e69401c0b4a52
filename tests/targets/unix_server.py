"""A unix server with clients in its tree, data queued everywhere.

    unix_server.py DIR

* a stream listener on DIR/srv.sock (mode 0640) and one on an abstract
  name; client 1 connected to the path, client 2 to the abstract name,
  both accepted; each client sent "hello N" and the server "welcome N",
  nobody has read yet;
* client 3 connected to the path listener but is not accepted yet (it
  waits in the accept queue), and sent 10 datagrams to a dgram socket
  bound to DIR/dgram.sock, none read yet.

On SIGTERM the server checks its queues, the datagrams (order and
content), the socket file's mode, its listeners' names, accepts client 3
and says "late" to it, wakes the clients (SIGUSR1), which check what they
were sent and answer; PASS or FAIL.  Output through os.write.
"""
import os
import signal
import socket
import stat
import sys
import time

DGRAMS = 10


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


def client(n: int, addr: "str | bytes") -> None:
    sk = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sk.connect(addr)
    sk.sendall(f"hello {n}".encode())
    os.kill(os.getppid(), signal.SIGUSR2)
    signal.sigwait({signal.SIGUSR1})
    got = recv_exact(sk, 9)
    if got != f"welcome {n}".encode():
        say(f"client {n} FAIL: got {got!r}")
        os._exit(1)
    sk.sendall(f"bye {n}".encode())
    os._exit(0)


def late_client(path: str, dgram: str) -> None:
    d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    for i in range(DGRAMS):
        d.sendto(f"dgram {i:02d}".encode(), dgram)
    sk = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sk.connect(path)
    os.kill(os.getppid(), signal.SIGUSR2)
    signal.sigwait({signal.SIGUSR1})
    got = recv_exact(sk, 4)
    os._exit(0 if got == b"late" else 1)


def main() -> int:
    d = sys.argv[1]
    path, dpath = os.path.join(d, "srv.sock"), os.path.join(d, "dgram.sock")
    abstract = b"\0procsnap-test-" + str(os.getpid()).encode()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGUSR2})
    l1 = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    l1.bind(path)
    os.chmod(path, 0o640)
    l1.listen(8)
    l2 = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    l2.bind(abstract)
    l2.listen(4)
    dg = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dg.bind(dpath)
    kids = []
    conns = []
    for n, (lsk, addr) in enumerate(((l1, path), (l2, abstract)), 1):
        pid = os.fork()
        if pid == 0:
            client(n, addr)
        kids.append(pid)
        signal.sigwait({signal.SIGUSR2})
        conn, _ = lsk.accept()
        conn.sendall(f"welcome {n}".encode())
        conns.append(conn)
    pid = os.fork()
    if pid == 0:
        late_client(path, dpath)
    kids.append(pid)
    signal.sigwait({signal.SIGUSR2})
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    say("ready")
    while not stop:
        time.sleep(0.05)
    err = None
    for n, conn in enumerate(conns, 1):
        got = recv_exact(conn, 7)
        if got != f"hello {n}".encode():
            err = err or f"server: connection {n} gave {got!r}"
    dg.setblocking(False)
    for i in range(DGRAMS):
        try:
            got = dg.recv(64)
        except BlockingIOError:
            got = b"<empty>"
        if got != f"dgram {i:02d}".encode():
            err = err or f"datagram {i} is {got!r}"
    try:
        extra = dg.recv(64)
        err = err or f"an 11th datagram {extra!r}"
    except BlockingIOError:
        pass
    st = os.stat(path)
    if not stat.S_ISSOCK(st.st_mode) or stat.S_IMODE(st.st_mode) != 0o640:
        err = err or f"{path}: mode {st.st_mode:o}"
    if l1.getsockname() != path or l2.getsockname() != abstract:
        err = err or f"listener names {l1.getsockname()!r} {l2.getsockname()!r}"
    l1.settimeout(5)
    try:
        late, _ = l1.accept()
        late.sendall(b"late")
    except OSError as exc:
        err = err or f"accept of the waiting client: {exc}"
    for pid in kids:
        os.kill(pid, signal.SIGUSR1)
    for pid in kids:
        _, status = os.waitpid(pid, 0)
        if status:
            err = err or f"client pid {pid} exited with {status:#x}"
    for n, conn in enumerate(conns, 1):
        got = recv_exact(conn, 5)
        if got != f"bye {n}".encode():
            err = err or f"server: no bye from client {n}: {got!r}"
    say("PASS" if err is None else "FAIL: " + err)
    return 0 if err is None else 1


if __name__ == "__main__":
    sys.exit(main())
