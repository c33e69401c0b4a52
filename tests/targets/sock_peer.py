"""A socket whose peer is outside the tree, or a socket procsnap refuses.

    sock_peer.py unix ADDR     connected to the abstract unix name ADDR
    sock_peer.py dgram PATH    a dgram socket connected to the unix name PATH
                               (on SIGUSR1 it sends "ping" and prints
                               "sent ok PEERNAME", its peer's name seen
                               from inside)
    sock_peer.py tcp PORT      connected to 127.0.0.1:PORT
    sock_peer.py packet        holds an AF_VSOCK socket (a refused family)

The socket is fd 5 in every mode.  On SIGUSR1 it sends "ping" and waits
(5 s) for "pong", printing "pong ok" or "pong bad"; on SIGTERM it prints
PASS (the socket is still open) and exits.
"""
import os
import signal
import socket
import sys
import time


def say(text: str) -> None:
    os.write(1, (text + "\n").encode())


def main() -> int:
    mode = sys.argv[1]
    if mode == "unix":
        sk = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sk.connect(b"\0" + sys.argv[2].encode())
    elif mode == "dgram":
        sk = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sk.connect(sys.argv[2])
    elif mode == "tcp":
        sk = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
    else:
        # a family procsnap refuses (netlink and packet are saved since issue 12)
        sk = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM, 0)
    os.dup2(sk.fileno(), 5)
    sk.close()
    sk = socket.socket(fileno=5)
    pings = []
    stop = []
    signal.signal(signal.SIGUSR1, lambda *_: pings.append(1))
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    say("ready")
    while not stop:
        if pings:
            pings.pop()
            if mode == "dgram":
                try:
                    sk.send(b"ping")
                    say(f"sent ok {sk.getpeername()}")
                except OSError as exc:
                    say(f"FAIL: send: {exc!r}")
                continue
            sk.settimeout(5)
            try:
                sk.sendall(b"ping")
                got = sk.recv(4)
            except OSError as exc:
                got = repr(exc).encode()
            say("pong ok" if got == b"pong" else f"pong bad {got!r}")
        time.sleep(0.05)
    say("PASS" if sk.fileno() == 5 else "FAIL: socket closed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
