"""verify_socks.py: sockets with options a restore must give back, for the
restore check's tests (tests/integration/test_verify.py).

A TCP listener with TCP_NODELAY, SO_KEEPALIVE and TCP_KEEPIDLE 77; a UDP
socket with IP_TOS 0x10 and a locked 64 KiB receive buffer; a unix
datagram socket with SO_PASSCRED.  Prints "ready", then idles; on SIGTERM
checks the options from inside and prints PASS or FAIL.
"""
import os
import signal
import socket
import time


def say(text: str) -> None:
    os.write(1, (text + "\n").encode())


tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.bind(("127.0.0.1", 0))
tcp.listen(4)
tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 77)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0x10)
udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 15)
unix = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
unix.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
WANT = {(tcp, socket.IPPROTO_TCP, socket.TCP_NODELAY): 1,
        (tcp, socket.SOL_SOCKET, socket.SO_KEEPALIVE): 1,
        (tcp, socket.IPPROTO_TCP, socket.TCP_KEEPIDLE): 77,
        (udp, socket.IPPROTO_IP, socket.IP_TOS): 0x10,
        (udp, socket.SOL_SOCKET, socket.SO_RCVBUF): 1 << 16,
        (unix, socket.SOL_SOCKET, socket.SO_PASSCRED): 1}
stop = False


def on_term(sig, frame) -> None:
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)
say("ready")
while not stop:
    time.sleep(0.05)
bad = [f"{level}/{opt}: {sk.getsockopt(level, opt)} != {v}"
       for (sk, level, opt), v in WANT.items() if sk.getsockopt(level, opt) != v]
say("FAIL: " + "; ".join(bad) if bad else "PASS")
