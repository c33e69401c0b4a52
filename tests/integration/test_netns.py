"""A tree in a network namespace of its own (issue 9, net): lo with its
addresses and mtu, routes, rules, sysctls, the nftables ruleset, and the
namespace's TCP/UDP/unix sockets (found with sock_diag from inside it) come
back in a new namespace; a device procsnap cannot make refuses the dump.

Every namespace, address and nft table lives in the target's own network
namespace and dies with it; the host's is checked untouched afterwards.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from helpers import (
    Target,
    TargetFactory,
    assert_one_line_error,
    check_continuity,
    check_ok,
    describe,
    is_untouched,
    read_numbers,
    reap,
    run_procsnap,
    wait_for,
    wait_gone,
    wait_numbers,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(90)]

TARGET = "netns.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _host_state() -> tuple[str, ...]:
    def out(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True).stdout
    with open("/proc/sys/net/ipv4/ip_default_ttl") as f:
        ttl = f.read()
    with open("/proc/sys/net/ipv4/ping_group_range") as f:
        ping = f.read()
    return (out("ip", "-o", "link"), out("ip", "-o", "addr"), out("ip", "rule"),
            out("ip", "-6", "rule"), out("ip", "route", "show", "table", "all"),
            " ".join(ln for ln in out("nft", "list", "tables").splitlines()
                     if "procsnap_" not in ln),  # other runs' network locks come and go
            ttl, ping)


@pytest.fixture(autouse=True)
def host_net_unchanged() -> Iterator[None]:
    """No link, nft table or sysctl of ours left in procsnap's namespace."""
    before = _host_state()
    yield
    assert _host_state() == before, "the host's network namespace changed"


def _netns(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def _connect_inside(pid: int, port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", "-t", str(pid), "-n", "python3", "-c",
         "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), "
         "timeout=5); print('connected')", str(port)],
        capture_output=True, text=True, timeout=30)


def _start(targets: TargetFactory, tmp_path: Path, *extra: str) -> tuple[Target, Path, int]:
    numbers = tmp_path / "numbers"
    port = _free_port()
    t = targets.start(TARGET, str(numbers), str(port), *extra)
    wait_numbers(numbers, 4)
    assert _netns(t.pid) != _netns(os.getpid())
    return t, numbers, port


def _dump_restore(targets: TargetFactory, t: Target, images: Path) -> None:
    old_ns = _netns(t.pid)
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", images))
    assert wait_gone(t.pid, 10), f"dump left pid {t.pid} alive"
    reap()
    names = os.listdir(images)
    for kind in ("netdev", "netns", "ifaddr", "route", "route6", "rule"):
        assert f"{kind}-{old_ns}.img" in names, names
    res = check_ok(run_procsnap("restore", "-D", images, "-d"))
    targets.adopt(t.pid, like=t)
    assert t.alive(), describe(res)
    assert _netns(t.pid) != _netns(os.getpid())  # (the old inode number may come back)


def test_loopback_namespace_with_sockets(targets: TargetFactory, tmp_path: Path,
                                         images_dir: Path) -> None:
    """unshare -n, lo up (mtu, extra v4/v6 addresses), a route in table 100
    with its rule, a v6 route, sysctls (a new socket's TTL follows one), a
    TCP listener, a UDP socket and an abstract unix listener: all the same
    in a new namespace; the listener takes a connection made inside it."""
    t, numbers, port = _start(targets, tmp_path)
    _dump_restore(targets, t, images_dir)
    res = _connect_inside(t.pid, port)
    assert res.stdout.strip() == "connected", res.stderr
    # the dump's network lock (all of the saved ruleset) is not left in it
    rules = subprocess.run(["nsenter", "-t", str(t.pid), "-n", "nft", "list", "ruleset"],
                           capture_output=True, text=True, check=True).stdout
    assert rules.strip() == "", rules
    with open(f"/proc/{t.pid}/root/proc/sys/net/ipv4/ip_default_ttl") as f:
        assert f.read().strip() == "64", "sysctl read through /proc/PID/root follows us"
    ttl = subprocess.run(["nsenter", "-t", str(t.pid), "-n", "cat",
                          "/proc/sys/net/ipv4/ip_default_ttl"], capture_output=True, text=True)
    assert ttl.stdout.strip() == "77"
    last = read_numbers(numbers)[-1]
    check_continuity(wait_numbers(numbers, last + 3))
    assert t.verdict() == "PASS", t.output()


def test_nftables_ruleset(targets: TargetFactory, tmp_path: Path, images_dir: Path) -> None:
    """An nftables table of the namespace is saved (nftables-ID.img) and is
    there again after the restore, inside only."""
    t, numbers, port = _start(targets, tmp_path, "nft")
    old_ns = _netns(t.pid)
    _dump_restore(targets, t, images_dir)
    assert "netns_test" in (images_dir / f"nftables-{old_ns}.img").read_text()
    res = subprocess.run(["nsenter", "-t", str(t.pid), "-n", "nft", "list", "tables"],
                         capture_output=True, text=True)
    assert "inet netns_test" in res.stdout
    assert t.verdict() == "PASS", t.output()


def test_unsupported_device_refused(targets: TargetFactory, tmp_path: Path,
                                    images_dir: Path) -> None:
    """An ifb device (a kind procsnap cannot make again): one line naming
    the pid, the namespace and the device; the tree runs on untraced."""
    t, numbers, port = _start(targets, tmp_path, "dummy")
    ns = _netns(t.pid)
    res = run_procsnap("dump", "-t", t.pid, "-D", images_dir)
    line = assert_one_line_error(res, f"pid {t.pid}", f"net namespace {ns}", "ifb7 (ifb")
    assert "cannot be restored" in line
    ok, why = is_untouched(t.pid)
    assert ok, why
    last = read_numbers(numbers)[-1]
    check_continuity(wait_numbers(numbers, last + 3))
    res = _connect_inside(t.pid, port)
    assert res.stdout.strip() == "connected", res.stderr
    assert t.verdict() == "PASS", t.output()


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True)


def test_veth_with_external_peer(targets: TargetFactory, tmp_path: Path,
                                 images_dir: Path) -> None:
    """A veth whose peer is in procsnap's namespace (as a container's eth0):
    the inside end comes back with its address, mtu and state, its peer made
    here under the name --external veth[IN]:OUT gives; without it the
    restore is refused by name.  The host end has no address."""
    inner, outer = f"vin{os.getpid() % 10000}", f"vout{os.getpid() % 10000}"
    numbers = tmp_path / "numbers"
    port = _free_port()
    t = targets.start(TARGET, str(numbers), str(port), "veth", inner)
    try:
        subprocess.run(["ip", "link", "add", outer, "type", "veth", "peer", "name", inner,
                        "netns", str(t.pid)], check=True)
        ns = ["nsenter", "-t", str(t.pid), "-n", "ip"]
        subprocess.run([*ns, "link", "set", inner, "mtu", "1400", "up"], check=True)
        subprocess.run([*ns, "addr", "add", "10.79.0.2/24", "dev", inner], check=True)
        wait_numbers(numbers, 6)
        check_ok(run_procsnap("dump", "-t", t.pid, "-D", images_dir))
        assert wait_gone(t.pid, 10)
        reap()
        # the kernel dismantles a dead namespace in a work queue: soon, not at once
        wait_for(lambda: _ip("link", "show", outer).returncode != 0, 10,
                 "the host end to go with its namespace")
        res = run_procsnap("restore", "-D", images_dir, "-d")
        assert_one_line_error(res, f"veth[{inner}]")
        reap()
        res = check_ok(run_procsnap("restore", "-D", images_dir, "-d",
                                    "--external", f"veth[{inner}]:{outer}"))
        targets.adopt(t.pid, like=t)
        assert t.alive(), describe(res)
        assert _ip("link", "show", outer).returncode == 0, "no host end"
        inside = subprocess.run([*ns, "-o", "link", "show", inner], capture_output=True,
                                text=True).stdout
        assert "mtu 1400" in inside and f"{outer}" not in inside or "@if" in inside, inside
        assert t.verdict() == "PASS", t.output()
    finally:
        _ip("link", "del", outer)


def _nft_tables_inside(pid: int) -> str:
    return subprocess.run(["nsenter", "-t", str(pid), "-n", "nft", "list", "tables"],
                          capture_output=True, text=True, check=True).stdout


def test_tcp_established_in_own_netns(targets: TargetFactory, tmp_path: Path,
                                      images_dir: Path) -> None:
    """A TCP connection with both ends in the tree, inside the tree's own
    network namespace, behind the namespace's stateful nftables firewall
    (zdtm socket-tcp-nft-nfconntrack), with data queued both ways, dumped
    with --tcp-established: the namespace is locked from inside (the lock
    table is in the saved ruleset), the connection comes back through
    TCP_REPAIR in the new namespace, and the lock is gone once the tree
    runs; the unread bytes arrive exactly and the exchange goes on."""
    numbers = tmp_path / "numbers"
    port = _free_port()
    t = targets.start("netns_tcp.py", str(numbers), str(port))
    wait_numbers(numbers, 3)
    old_ns = _netns(t.pid)
    assert old_ns != _netns(os.getpid())
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", images_dir, "--tcp-established"))
    assert wait_gone(t.pid, 10), f"dump left pid {t.pid} alive"
    reap()
    names = os.listdir(images_dir)
    streams = [n for n in names if n.startswith("tcp-stream-")]
    assert len(streams) == 2, names         # both ends of the one connection
    ruleset = (images_dir / f"nftables-{old_ns}.img").read_text()
    lock = f"table inet CRIU-procsnap_{t.pid}"   # named as criu names its own (tcp.table_name)
    assert lock in ruleset and "policy drop" in ruleset, ruleset   # locked inside, then saved
    assert "table ip netns_fw" in ruleset
    res = check_ok(run_procsnap("restore", "-D", images_dir, "-d", "--tcp-established"))
    targets.adopt(t.pid, like=t)
    assert t.alive(), describe(res)
    assert _netns(t.pid) != _netns(os.getpid())
    tables = _nft_tables_inside(t.pid)
    assert "procsnap_" not in tables and "netns_fw" in tables, tables   # unlocked
    ss = subprocess.run(["nsenter", "-t", str(t.pid), "-n", "ss", "-tnH", "state",
                         "established"], capture_output=True, text=True).stdout
    assert ss.count(f":{port}") == 2, ss
    last = read_numbers(numbers)[-1]
    check_continuity(wait_numbers(numbers, last + 60, timeout=30))  # past the bulk, ping-pong
    assert t.verdict() == "PASS", t.output()


def test_netns_lock_removed_when_tree_runs_on(targets: TargetFactory, tmp_path: Path,
                                              images_dir: Path) -> None:
    """dump --leave-running of a tree in its own namespace: the lock set
    inside it is removed again and the connection goes on (no lock table
    left in the namespace, none in the host's)."""
    numbers = tmp_path / "numbers"
    port = _free_port()
    t = targets.start("netns_tcp.py", str(numbers), str(port))
    wait_numbers(numbers, 3)
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", images_dir, "--tcp-established", "-R"))
    ok, why = is_untouched(t.pid)
    assert ok, why
    assert "procsnap_" not in _nft_tables_inside(t.pid)
    last = read_numbers(numbers)[-1]
    check_continuity(wait_numbers(numbers, last + 60, timeout=30))
    assert t.verdict() == "PASS", t.output()


_PROBE = """
import socket, sys
port, mark = int(sys.argv[1]), int(sys.argv[2])
sk = socket.socket()
sk.settimeout(0.5)
if mark:
    sk.setsockopt(socket.SOL_SOCKET, 36, 0xC114)   # SO_MARK, criu's SOCCR_MARK
try:
    sk.connect(("127.0.0.1", port))
    print("connected")
except socket.timeout:
    print("timeout")
except OSError as exc:
    print("error", exc)
"""


def _probe(ns: str, port: int, mark: bool) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", _PROBE, str(port),
                           str(int(mark))], capture_output=True, text=True,
                          timeout=30).stdout.strip()


def test_join_ns_lock_held_between_dump_and_restore(targets: TargetFactory, tmp_path: Path,
                                                    images_dir: Path) -> None:
    """zdtm netns_lock_nftables: a tree in a network namespace kept by a file
    (ip netns add), with a server of the namespace outside the tree.  After
    the dump the namespace stays locked: a connection times out (no RST),
    one marked with criu's SOCCR_MARK passes; restore --join-ns
    net:/run/netns/NAME puts the tree back into that very namespace and
    removes the lock: connections pass again."""
    ns = f"procsnap-join-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    server = None
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        port = _free_port()
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c",
             # its replies are marked too (as zdtm's hook does for its marked client)
             "import socket,sys\ns=socket.socket()\ns.setsockopt(1, 36, 0xC114)\n"
             "s.bind(('127.0.0.1',int(sys.argv[1])))\n"
             "s.listen(64)\nprint('up',flush=True)\n"
             "while True: s.accept()[0].close()", str(port)],
            stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "up"
        nsfile = f"/run/netns/{ns}"
        numbers = tmp_path / "numbers"
        t = targets.start("netns_join.py", str(numbers), nsfile)
        wait_numbers(numbers, 3)
        assert _netns(t.pid) == os.stat(nsfile).st_ino
        assert _probe(ns, port, False) == "connected"
        check_ok(run_procsnap("dump", "-t", t.pid, "-D", images_dir, "--tcp-established"))
        assert wait_gone(t.pid, 10)
        reap()
        assert _probe(ns, port, False) == "timeout"     # locked: dropped, not refused
        assert _probe(ns, port, True) == "connected"    # the restore's own segments pass
        res = check_ok(run_procsnap("restore", "-D", images_dir, "-d",
                                    "--join-ns", f"net:{nsfile}"))
        targets.adopt(t.pid, like=t)
        assert t.alive(), describe(res)
        assert _netns(t.pid) == os.stat(nsfile).st_ino
        assert _probe(ns, port, False) == "connected"   # unlocked once the tree runs
        last = read_numbers(numbers)[-1]
        check_continuity(wait_numbers(numbers, last + 3))
        assert t.verdict() == "PASS", t.output()
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_join_ns_other_kind_refused(images_dir: Path) -> None:
    """--join-ns of a kind procsnap cannot join: one line naming it."""
    res = run_procsnap("restore", "-D", images_dir, "-d", "--join-ns", "ipc:/proc/1/ns/ipc")
    assert res.returncode != 0
    assert "procsnap joins only a network namespace" in res.stderr, res.stderr
