"""netns_tcp.py: a TCP connection inside a network namespace of its own,
both ends in the tree, behind a stateful firewall (zdtm's
socket-tcp-nft-nfconntrack, as a container's server and client).

    python3 netns_tcp.py FILE PORT

Re-executes itself under ``unshare -n`` (same pid), sets lo up and an
nftables table "ip netns_fw" whose input chain accepts only TCP on lo in
conntrack state new or established and drops everything else (so a
connection the restore brought back without its conntrack entry must be
picked up again).  Then it listens on 127.0.0.1:PORT and forks a child
that connects; the child first sends 200000 bytes of a numbered stream
that the parent leaves unread (they wait in the parent's receive queue and
the child's send queue at the dump), then both play ping-pong: the child
sends a number, the parent answers it plus one.  Every ~50 ms the parent
writes the next exchange's number to FILE.  Prints "ready" once set up.

On SIGTERM the parent reads the 200000 bytes and checks them byte for
byte, checks that the firewall table is still there and that no other
table is (procsnap's network lock must be gone), then prints PASS or
"FAIL: ..." and exits; the child dies with it (PR_SET_PDEATHSIG).
"""
import ctypes
import os
import signal
import socket
import struct
import subprocess
import sys
import time

BULK = 200000
FW = """table ip netns_fw {
  chain input {
    type filter hook input priority 0; policy accept;
    iifname "lo" ip protocol tcp ct state new,established counter accept
    counter drop
  }
}
"""


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def pattern(n: int) -> bytes:
    return bytes((i * 7 + 3) % 251 for i in range(n))


def recv_exact(sk: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        got = sk.recv(n - len(buf))
        if not got:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += got
    return buf


def child(port: int) -> None:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    sk = socket.create_connection(("127.0.0.1", port))
    sk.sendall(pattern(BULK))
    n = 0
    while True:
        sk.sendall(struct.pack("!Q", n))
        back = struct.unpack("!Q", recv_exact(sk, 8))[0]
        if back != n + 1:
            os._exit(3)
        n += 2
        time.sleep(0.05)


def main() -> int:
    out, port = sys.argv[1], int(sys.argv[2])
    if os.environ.get("NETNS_INSIDE") != "1":
        os.environ["NETNS_INSIDE"] = "1"
        os.execvp("unshare", ["unshare", "-n", sys.executable, *sys.argv])
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["nft", "-f", "-"], input=FW, text=True, check=True)
    fw = subprocess.run(["nft", "list", "table", "ip", "netns_fw"], capture_output=True,
                        text=True, check=True).stdout
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    srv.bind(("127.0.0.1", port))
    srv.listen(1)
    if os.fork() == 0:
        srv.close()
        child(port)
    conn, _ = srv.accept()
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    say("ready")
    count = 0
    bulk = b""
    with open(out, "a") as f:
        while not stop:
            try:
                if len(bulk) < BULK:
                    # read slowly: for the first 2-3 s part of it is queued
                    # (in the parent's receive and the child's send queue);
                    # the ping-pong comes after it in the stream
                    bulk += conn.recv(min(4000, BULK - len(bulk)))
                    count += 1
                    f.write(f"{count}\n")
                    f.flush()
                    time.sleep(0.05)
                    continue
                n = struct.unpack("!Q", recv_exact(conn, 8))[0]
                conn.sendall(struct.pack("!Q", n + 1))
            except InterruptedError:
                continue
            count += 1
            f.write(f"{count}\n")
            f.flush()
    try:
        while len(bulk) < BULK:
            bulk += conn.recv(BULK - len(bulk))
        if bulk != pattern(BULK):
            say("FAIL: the bulk stream differs")
            return 1
        conn.settimeout(5)
        n = struct.unpack("!Q", recv_exact(conn, 8))[0]
        conn.sendall(struct.pack("!Q", n + 1))
    except OSError as exc:
        say(f"FAIL: the connection: {exc}")
        return 1
    now = subprocess.run(["nft", "list", "table", "ip", "netns_fw"], capture_output=True,
                         text=True).stdout
    if now.replace(" ", "").split("counter")[0] != fw.replace(" ", "").split("counter")[0]:
        say(f"FAIL: firewall changed: {now!r}")
        return 1
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True,
                            text=True).stdout.split("\n")
    others = [t for t in tables if t.strip() and "netns_fw" not in t]
    if others:
        say(f"FAIL: other tables in the namespace: {others}")
        return 1
    say("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
