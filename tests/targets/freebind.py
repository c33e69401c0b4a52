"""UDP sockets bound to addresses this host does not have (IP_FREEBIND).

    freebind.py

Four UDP sockets, bound with IP_FREEBIND on: 192.0.2.55 and
[2001:db8::ff00:42:8329] (documentation addresses, on no interface), one
of each family then with IP_FREEBIND turned off again (as zdtm
sk-freebind-false), the other kept on.  Prints "ports P4 P6" (the ports,
the same for each pair: SO_REUSEADDR), then "ready".  On SIGTERM each socket must have
its address, port and IP_FREEBIND value: PASS or FAIL.
"""
import os
import signal
import socket
import sys
import time

IP_FREEBIND = 15


def say(text: str) -> None:
    os.write(1, (text + "\n").encode())


def main() -> int:
    socks = []
    for fam, addr in ((socket.AF_INET, "192.0.2.55"), (socket.AF_INET6, "2001:db8::ff00:42:8329")):
        port = 0
        for keep in (0, 1):
            sk = socket.socket(fam, socket.SOCK_DGRAM)
            sk.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sk.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
            sk.bind((addr, port))
            port = sk.getsockname()[1]
            sk.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, keep)
            socks.append((sk, sk.getsockname()[:2], keep))
    say(f"ports {socks[0][1][1]} {socks[2][1][1]}")
    say("ready")
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop:
        time.sleep(0.05)
    for sk, name, keep in socks:
        got = (sk.getsockname()[:2], sk.getsockopt(socket.IPPROTO_IP, IP_FREEBIND))
        if got != (name, keep):
            say(f"FAIL: socket {name} freebind {keep}: now {got}")
            return 1
    say("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
