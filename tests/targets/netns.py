"""netns.py: a counter in a network namespace of its own, as a container has.

    python3 netns.py FILE PORT [dummy] [nft] [veth NAME]

Re-executes itself under ``unshare -n`` (same pid), then sets up in its
namespace: lo up with mtu 16384 and extra addresses 10.77.0.1/32 and
fd77::1/128, a route 10.78.0.0/16 via lo in table 100 and a rule sending
10.77.0.1 there, a v6 route fd78::/64 via lo and a v6 rule sending
fd77::1 to table 100 (beside the new namespace's default v6 rules); sysctls ip_default_ttl=77,
ping_group_range "0 1000", lo's ipv4 conf accept_local=1; a TCP socket
listening on 127.0.0.1:PORT, a UDP socket bound to 127.0.0.1:PORT, an
abstract unix socket listening on "@netns-PORT".  With "dummy" an ifb
device (a kind procsnap cannot restore); with "nft" an nftables table
"inet netns_test" with a counter rule; with "veth NAME" nothing more: the
test moves a veth end named NAME in and configures it.

Every ~50 ms it writes the next number to FILE.  Prints "ready" once set
up.  On SIGTERM it checks that all of the above is still what it was (the
sockets by using them: a connection to its own listener, a datagram to its
own UDP socket) and prints PASS or "FAIL: ..." and exits.
"""
import os
import signal
import socket
import subprocess
import sys
import time

SYSCTLS = {"ipv4/ip_default_ttl": "77", "ipv4/ping_group_range": "0\t1000",
           "ipv4/conf/lo/accept_local": "1"}


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def state(extra: list[str]) -> dict[str, object]:
    """What must be the same after the restore (as seen inside)."""
    s: dict[str, object] = {
        "lo": sh("ip", "-o", "link", "show", "lo").split("\\")[0].split(" qdisc")[0],
        "mtu": open("/sys/class/net/lo/mtu").read().strip(),
        "addr": sorted(ln.split()[3] for ln in sh("ip", "-o", "addr", "show").splitlines()),
        "route": sorted(sh("ip", "route", "show", "table", "all").splitlines()),
        "route6": sorted(sh("ip", "-6", "route", "show", "table", "all").splitlines()),
        "rule": sh("ip", "rule", "show").splitlines(),
        "rule6": sh("ip", "-6", "rule", "show").splitlines(),
        "sysctl": {k: open(f"/proc/sys/net/{k}").read().strip() for k in SYSCTLS},
    }
    if "nft" in extra:
        s["nft"] = sh("nft", "list", "table", "inet", "netns_test")
    return s


def _veth_ready(extra: list[str]) -> bool:
    if "veth" not in extra:
        return True
    name = extra[extra.index("veth") + 1]
    try:
        return "10.79.0.2/24" in sh("ip", "-o", "addr", "show", "dev", name)
    except subprocess.CalledProcessError:
        return False


def main() -> int:
    out, port = sys.argv[1], int(sys.argv[2])
    extra = sys.argv[3:]
    if os.environ.get("NETNS_INSIDE") != "1":
        os.environ["NETNS_INSIDE"] = "1"
        os.execvp("unshare", ["unshare", "-n", sys.executable, *sys.argv])
    sh("ip", "link", "set", "lo", "mtu", "16384")
    sh("ip", "link", "set", "lo", "up")
    sh("ip", "addr", "add", "10.77.0.1/32", "dev", "lo")
    sh("ip", "-6", "addr", "add", "fd77::1/128", "dev", "lo")
    sh("ip", "route", "add", "10.78.0.0/16", "dev", "lo", "table", "100")
    sh("ip", "rule", "add", "from", "10.77.0.1", "table", "100")
    sh("ip", "-6", "route", "add", "fd78::/64", "dev", "lo")
    sh("ip", "-6", "rule", "add", "from", "fd77::1", "table", "100")
    for k, v in SYSCTLS.items():
        with open(f"/proc/sys/net/{k}", "w") as f:
            f.write(v)
    if "dummy" in extra:
        sh("ip", "link", "add", "ifb7", "type", "ifb")
    if "nft" in extra:
        sh("nft", "add table inet netns_test; add chain inet netns_test input "
           "{ type filter hook input priority 0 ; policy accept ; }; "
           "add rule inet netns_test input tcp dport 9 counter drop")
    lsk = socket.socket()
    lsk.bind(("127.0.0.1", port))
    lsk.listen(8)
    usk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    usk.bind(("127.0.0.1", port))
    xsk = socket.socket(socket.AF_UNIX)
    xsk.bind(f"\0netns-{port}")
    xsk.listen(4)
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    cfd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    say("ready")
    before = None
    n = 0
    while not stop:
        if before is None and n >= 2 and _veth_ready(extra):
            before = state(extra)  # once the veth of the test is in too
        n += 1
        os.write(cfd, f"{n}\n".encode())
        time.sleep(0.05)
    after = state(extra)
    if before is None:
        say("FAIL: the veth never came in")
        return 1
    if after != before:
        diff = {k: (before.get(k), after.get(k)) for k in after if  # type: ignore[union-attr]
                before.get(k) != after.get(k)}  # type: ignore[union-attr]
        say(f"FAIL: namespace state differs: {diff}")
        return 1
    ttl = socket.socket().getsockopt(socket.IPPROTO_IP, socket.IP_TTL)
    if ttl != 77:
        say(f"FAIL: a new socket's TTL is {ttl}, not the namespace's 77")
        return 1
    c = socket.create_connection(("127.0.0.1", port), timeout=5)
    c.sendall(b"tcp")
    for _ in range(4):  # the test's own connections from outside come first
        a, _ = lsk.accept()
        a.settimeout(5)
        if a.recv(3) == b"tcp":
            break
    else:
        say("FAIL: TCP listener")
        return 1
    c2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c2.sendto(b"udp", ("127.0.0.1", port))
    usk.settimeout(5)
    if usk.recv(3) != b"udp":
        say("FAIL: UDP socket")
        return 1
    c3 = socket.socket(socket.AF_UNIX)
    c3.connect(f"\0netns-{port}")
    xsk.accept()
    say("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
