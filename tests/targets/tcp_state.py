"""One TCP connection to an outside peer, brought into a given state.

    tcp_state.py STATE FAMILY PORT

FAMILY is 4 (127.0.0.1), 6 (::1) or 46 (an IPv6 socket to ::ffff:127.0.0.1).
The connection is fd 5.  Both sides send a numbered stream (byte i is
pattern(i)), so that a lost, repeated or reordered byte shows.  The peer
(the test) does its part of each state; this side does:

    FIN_WAIT1   fill the peer's window (it does not read), shut down writing
    FIN_WAIT2   send 1000 bytes, shut down writing (the peer reads them)
    CLOSE_WAIT  nothing (the peer sends, then its FIN)
    LAST_ACK    fill the peer's window, wait for its FIN, shut down writing
    CLOSING     fill the peer's window (the peer fills ours), shut down
                writing, read until the peer's FIN
    CLOSE       send 1000 bytes, wait for the peer's data and FIN, shut down
                writing: the peer acknowledges: closed, its data unread
    SYN_SENT    a non-blocking connect() whose SYN the peer's firewall drops;
                on SIGUSR1 it prints "after SYN_SENT" (its state, seen from
                inside) and waits until the connection is made

It prints "ready", then "state NAME sent N", with the number of bytes it
queued.  On SIGUSR1 (after the restore) it finishes: reads everything up
to the peer's FIN, checks it, sends "tail" if it may still write (and
then shuts down), and prints "got N eof" (or "FAIL: ...").
"""
import os
import select
import signal
import socket
import sys
import time

STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 7: "CLOSE", 8: "CLOSE_WAIT",
          9: "LAST_ACK", 11: "CLOSING"}


def say(text: str) -> None:
    os.write(1, (text + "\n").encode())


_CYCLE = bytes((i * 7 + 3) % 251 for i in range(251)) * 300


def pattern(start: int, n: int) -> bytes:
    """Bytes start..start+n of the numbered stream: byte i is (7i + 3) mod 251."""
    out = []
    while n > 0:
        off = start % 251
        take = min(n, len(_CYCLE) - off)
        out.append(_CYCLE[off:off + take])
        start += take
        n -= take
    return b"".join(out)


def state_of(sk: socket.socket) -> str:
    st = sk.getsockopt(socket.IPPROTO_TCP, 11, 8)[0]   # TCP_INFO: tcpi_state
    return STATES.get(st, str(st))


def fill(sk: socket.socket) -> int:
    """Send the numbered stream until the socket takes no more."""
    sk.setblocking(False)
    sent = 0
    idle = 0
    while idle < 20:
        try:
            sent += sk.send(pattern(sent, 65536))
            idle = 0
        except BlockingIOError:
            idle += 1
            time.sleep(0.01)
    sk.setblocking(True)
    return sent


def read_all(sk: socket.socket, start: int) -> tuple[int, str | None]:
    """Read to EOF checking the numbered stream; (bytes, error)."""
    n = start
    sk.settimeout(20)
    while True:
        try:
            data = sk.recv(1 << 16)
        except OSError as exc:
            return n, f"recv after {n} bytes: {exc!r}"
        if not data:
            return n, None
        if data != pattern(n, len(data)):
            return n, f"stream broken at byte {n}"
        n += len(data)


def wait_state(sk: socket.socket, name: str) -> None:
    deadline = time.monotonic() + 10
    while state_of(sk) != name and time.monotonic() < deadline:
        time.sleep(0.01)


def main() -> int:
    want, fam, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if want == "SYN_SENT":
        sk = socket.socket(socket.AF_INET if fam == "4" else socket.AF_INET6,
                           socket.SOCK_STREAM)
        sk.setblocking(False)
        dst = {"4": "127.0.0.1", "6": "::1", "46": "::ffff:127.0.0.1"}[fam]
        err = sk.connect_ex((dst, port))
        if err != 115:   # EINPROGRESS
            say(f"FAIL: connect: {os.strerror(err)}")
            return 1
    elif fam == "4":
        sk = socket.create_connection(("127.0.0.1", port))
    elif fam == "6":
        sk = socket.create_connection(("::1", port))
    else:
        sk = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sk.connect(("::ffff:127.0.0.1", port))
    os.dup2(sk.fileno(), 5)
    sk.close()
    sk = socket.socket(fileno=5)
    go: list[int] = []
    signal.signal(signal.SIGUSR1, lambda *_: go.append(1))
    say("ready")
    got = 0
    sent = 0
    can_write = True
    if want == "FIN_WAIT1":
        sent = fill(sk)
        sk.shutdown(socket.SHUT_WR)
        can_write = False
    elif want == "FIN_WAIT2":
        sk.sendall(pattern(0, 1000))
        sent = 1000
        sk.shutdown(socket.SHUT_WR)
        can_write = False
    elif want == "CLOSE_WAIT":
        wait_state(sk, want)
    elif want == "LAST_ACK":
        sent = fill(sk)
        say(f"filled {sent}")
        wait_state(sk, "CLOSE_WAIT")
        sk.shutdown(socket.SHUT_WR)
        can_write = False
    elif want == "CLOSING":
        sent = fill(sk)
        say(f"filled {sent}")
        sk.shutdown(socket.SHUT_WR)
        can_write = False
        got, err = read_all(sk, 0)   # the peer's stream, then its FIN
        if err:
            say(f"FAIL: {err}")
    elif want == "CLOSE":
        sk.sendall(pattern(0, 1000))
        sent = 1000
        wait_state(sk, "CLOSE_WAIT")
        sk.shutdown(socket.SHUT_WR)
        can_write = False
    wait_state(sk, want)
    say(f"state {state_of(sk)} sent {sent}")
    while not go:
        time.sleep(0.02)
    if want == "SYN_SENT":
        say(f"after {state_of(sk)}")
        _, w, _ = select.select([], [sk], [], 30)
        err = sk.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if not w or err:
            say(f"FAIL: connect after restore: {os.strerror(err) if err else 'timeout'}")
            return 1
        sk.setblocking(True)
    got, err = read_all(sk, got)
    if err:
        say(f"FAIL: {err}")
        return 1
    if can_write:
        try:
            sk.sendall(b"tail")
            sk.shutdown(socket.SHUT_WR)
        except OSError as exc:
            say(f"FAIL: send tail: {exc!r}")
            return 1
    # nothing may follow the EOF
    r, _, _ = select.select([sk], [], [], 0.2)
    if r and sk.recv(1):
        say("FAIL: data after EOF")
        return 1
    say(f"got {got} eof")
    while True:
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
