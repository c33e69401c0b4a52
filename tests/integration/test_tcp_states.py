"""TCP connections in every state the kernel can freeze them in, with the
peer outside the tree (this test process): FIN_WAIT1, FIN_WAIT2,
CLOSE_WAIT, LAST_ACK, CLOSING and a closed connection with unread data,
over IPv4, IPv6 and v4-mapped IPv6 (target tests/targets/tcp_state.py).

Each side checks a numbered stream after the restore: no byte lost or
repeated, the FIN delivered exactly once, no RST.  Also the refusals
without --tcp-established, and criu's dump --tcp-close.
"""
from __future__ import annotations

import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Iterator

import pytest

from helpers import (
    TargetFactory,
    assert_one_line_error,
    check_ok,
    describe,
    is_untouched,
    run_procsnap,
    tree_pids,
    wait_gone,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

STATES = ["FIN_WAIT1", "FIN_WAIT2", "CLOSE_WAIT", "LAST_ACK", "CLOSING", "CLOSE"]


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


def nft_table_exists(name: str) -> bool:
    import subprocess
    return subprocess.run(["nft", "list", "table", "inet", name], capture_output=True,
                          timeout=30).returncode == 0


@pytest.fixture
def nft_tables() -> Iterator[list[str]]:
    """Tables a test expects procsnap to create: removed at teardown if left."""
    import subprocess
    names: list[str] = []
    yield names
    for name in names:
        if shutil.which("nft") and nft_table_exists(name):
            subprocess.run(["nft", "delete", "table", "inet", name], timeout=30)


@pytest.fixture
def listener(request: pytest.FixtureRequest) -> Iterator[socket.socket]:
    fam = getattr(request, "param", "4")
    if fam == "4":
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.bind(("127.0.0.1", 0))
    else:
        srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        srv.bind(("::1" if fam == "6" else "::", 0))
    srv.listen(4)
    yield srv
    srv.close()


def fill(sk: socket.socket) -> int:
    sk.setblocking(False)
    sent = idle = 0
    while idle < 20:
        try:
            sent += sk.send(pattern(sent, 65536))
            idle = 0
        except BlockingIOError:
            idle += 1
            time.sleep(0.01)
    sk.setblocking(True)
    return sent


def read_all(sk: socket.socket) -> bytes:
    sk.settimeout(20)
    chunks = []
    while True:
        data = sk.recv(1 << 16)   # ECONNRESET (an RST) fails the test here
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def setup_state(targets: TargetFactory, srv: socket.socket, state: str,
                fam: str) -> tuple[object, socket.socket, int, int]:
    """Start the target and do the peer's part; (target, peer socket, bytes
    the peer sent before the dump, bytes the target sent)."""
    t = targets.start("tcp_state.py", state, fam, str(srv.getsockname()[1]))
    peer, _ = srv.accept()
    peer_sent = 0
    if state in ("CLOSE_WAIT", "CLOSE"):
        peer.sendall(pattern(0, 1000))
        peer_sent = 1000
        peer.shutdown(socket.SHUT_WR)
    elif state == "LAST_ACK":
        t.wait_line("^filled")
        peer.sendall(pattern(0, 1000))
        peer_sent = 1000
        peer.shutdown(socket.SHUT_WR)
    elif state == "CLOSING":
        t.wait_line("^filled")
        # the target reads this to our FIN; its own FIN stays behind the
        # stream we do not read
        peer.sendall(pattern(0, 200000))
        peer_sent = 200000
        peer.shutdown(socket.SHUT_WR)
    line = t.wait_line("^(state|FAIL)")
    assert line.startswith(f"state {state} "), line
    return t, peer, peer_sent, int(line.split()[-1])


@pytest.mark.parametrize("listener", ["4", "6", "46"], indirect=True)
@pytest.mark.parametrize("state", STATES)
def test_tcp_state_outside_peer(targets: TargetFactory, images_dir: Path, listener: socket.socket,
                                state: str, nft_tables: list[str], request: pytest.FixtureRequest
                                ) -> None:
    if shutil.which("nft") is None:
        pytest.fail("nft not found: install nftables (apt-get install -y nftables)")
    fam = request.node.callspec.params["listener"]
    t, peer, peer_sent, target_sent = setup_state(targets, listener, state, fam)
    try:
        nft_tables.append(f"procsnap_{t.pid}")
        pids = tree_pids(t.pid)
        res = run_procsnap("dump", "-t", t.pid, "-D", images_dir, "--tcp-established",
                           timeout=120)
        check_ok(res)
        for p in pids:
            assert wait_gone(p, 10), describe(res)
        targets.adopt(t.pid, like=t)
        res = run_procsnap("restore", "-D", images_dir, "-d", "--tcp-established", timeout=120)
        check_ok(res)
        assert not nft_table_exists(f"procsnap_{t.pid}"), "the lock outlived the restore"
        if state in ("FIN_WAIT1", "FIN_WAIT2"):
            # the peer had not closed its side: it does now
            peer.sendall(pattern(0, 1000))
            peer_sent = 1000
            peer.shutdown(socket.SHUT_WR)
        t.signal(signal.SIGUSR1)
        got = read_all(peer)
        want = pattern(0, target_sent) + (b"tail" if state == "CLOSE_WAIT" else b"")
        assert len(got) == len(want), f"peer got {len(got)} bytes, want {len(want)}"
        assert got == want, "the peer's stream is broken"
        assert peer.recv(1) == b"", "a second EOF expected, not data"
        line = t.wait_line("^(got|FAIL)", 30)
        assert line == f"got {peer_sent} eof", f"{line} (the peer sent {peer_sent})"
    finally:
        peer.close()


@pytest.fixture
def syn_drop(listener: socket.socket) -> Iterator[str]:
    """An nftables table of the test's own that drops what is sent to the
    listener's port: a connect() to it stays in SYN_SENT."""
    import subprocess
    if shutil.which("nft") is None:
        pytest.fail("nft not found: install nftables (apt-get install -y nftables)")
    port = listener.getsockname()[1]
    name = f"fdk_test_syn_{port}"
    script = (f"add table inet {name}\n"
              f"add chain inet {name} input {{ type filter hook input priority 0 ; }}\n"
              f"add rule inet {name} input tcp dport {port} drop\n")
    subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True, timeout=30)
    yield name
    if nft_table_exists(name):
        subprocess.run(["nft", "delete", "table", "inet", name], timeout=30)


def syn_sent_here(port: int) -> bool:
    """A socket of this host in SYN_SENT to ``port`` (/proc/net/tcp, tcp6)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for row in f.readlines()[1:]:
                cols = row.split()
                if int(cols[2].split(":")[1], 16) == port and cols[3] == "02":
                    return True
    return False


@pytest.mark.parametrize("listener", ["4", "6", "46"], indirect=True)
def test_tcp_syn_sent(targets: TargetFactory, images_dir: Path, listener: socket.socket,
                      syn_drop: str, nft_tables: list[str],
                      request: pytest.FixtureRequest) -> None:
    """A connect() still in SYN_SENT (its SYN dropped) comes back in
    SYN_SENT, sends its SYN again from the same sequence number once the
    drop goes, and the connection then carries a numbered stream both ways."""
    import subprocess
    fam = request.node.callspec.params["listener"]
    port = listener.getsockname()[1]
    t = targets.start("tcp_state.py", "SYN_SENT", fam, str(port))
    line = t.wait_line("^(state|FAIL)")
    assert line == "state SYN_SENT sent 0", line
    nft_tables.append(f"procsnap_{t.pid}")
    res = check_ok(run_procsnap("dump", "-t", t.pid, "-D", images_dir, "--tcp-established",
                                timeout=120))
    assert wait_gone(t.pid, 10), describe(res)
    assert not syn_sent_here(port), "the dumped socket outlived its tree"
    targets.adopt(t.pid, like=t)
    check_ok(run_procsnap("restore", "-D", images_dir, "-d", timeout=120))
    assert not nft_table_exists(f"procsnap_{t.pid}"), "the lock outlived the restore"
    assert syn_sent_here(port), "no socket in SYN_SENT after the restore"
    t.signal(signal.SIGUSR1)
    assert t.wait_line("^(after|FAIL)") == "after SYN_SENT"
    subprocess.run(["nft", "delete", "table", "inet", syn_drop], check=True, timeout=30)
    listener.settimeout(20)   # the SYN's retransmission (1 s after the restore)
    peer, _ = listener.accept()
    try:
        peer.sendall(pattern(0, 1000))
        peer.shutdown(socket.SHUT_WR)
        assert read_all(peer) == b"tail"
        assert t.wait_line("^(got|FAIL)", 30) == "got 1000 eof"
    finally:
        peer.close()


def test_tcp_state_needs_option(targets: TargetFactory, images_dir: Path,
                                listener: socket.socket) -> None:
    t, peer, _, _ = setup_state(targets, listener, "FIN_WAIT2", "4")
    try:
        res = run_procsnap("dump", "-t", t.pid, "-D", images_dir)
        line = assert_one_line_error(res, f"pid {t.pid}: fd 5")
        assert "state FIN_WAIT2" in line and "--tcp-established" in line, line
        ok, why = is_untouched(t.pid)
        assert ok, why
        assert not list(images_dir.iterdir())
        peer.sendall(pattern(0, 10))
        peer.shutdown(socket.SHUT_WR)
        t.signal(signal.SIGUSR1)
        assert read_all(peer) == pattern(0, 1000)
        assert t.wait_line("^(got|FAIL)") == "got 10 eof"
    finally:
        peer.close()


def test_closed_with_unread_data_needs_option(targets: TargetFactory, images_dir: Path,
                                              listener: socket.socket) -> None:
    t, peer, _, _ = setup_state(targets, listener, "CLOSE", "4")
    try:
        res = run_procsnap("dump", "-t", t.pid, "-D", images_dir)
        line = assert_one_line_error(res, f"pid {t.pid}: fd 5")
        assert "closed TCP connection with 1000 unread byte(s)" in line, line
        assert "--tcp-established" in line, line
        ok, why = is_untouched(t.pid)
        assert ok, why
        t.signal(signal.SIGUSR1)
        assert t.wait_line("^(got|FAIL)") == "got 1000 eof"
    finally:
        peer.close()


def test_dump_tcp_close(targets: TargetFactory, images_dir: Path,
                        listener: socket.socket) -> None:
    """criu's dump --tcp-close: not dumped, back closed (EOF), no lock."""
    t, peer, _, _ = setup_state(targets, listener, "CLOSE_WAIT", "4")
    try:
        res = check_ok(run_procsnap("dump", "-t", t.pid, "-D", images_dir, "--tcp-close"))
        assert wait_gone(t.pid, 10), describe(res)
        assert not nft_table_exists(f"procsnap_{t.pid}")
        assert not list(images_dir.glob("tcp-stream-*.img"))
        targets.adopt(t.pid, like=t)
        check_ok(run_procsnap("restore", "-D", images_dir, "-d"))
        t.signal(signal.SIGUSR1)
        # closed both ways: EOF at once, and "tail" cannot be sent
        line = t.wait_line("^(got|FAIL)")
        assert line.startswith("FAIL: send tail") and "BrokenPipe" in line, line
    finally:
        peer.close()


@pytest.mark.parametrize("listener", ["4", "6", "46"], indirect=True)
def test_peer_sends_while_dumped(targets: TargetFactory, images_dir: Path,
                                 listener: socket.socket, nft_tables: list[str],
                                 request: pytest.FixtureRequest) -> None:
    """The network lock holds what the peer sends between dump and restore
    (the kernel retransmits it afterwards): no RST for a socket that is
    gone.  v4-mapped ("46"): an IPv6 socket with IPv4 on the wire, which
    ip6 rules never matched."""
    if shutil.which("nft") is None:
        pytest.fail("nft not found: install nftables (apt-get install -y nftables)")
    fam = request.node.callspec.params["listener"]
    t, peer, _, target_sent = setup_state(targets, listener, "FIN_WAIT2", fam)
    try:
        nft_tables.append(f"procsnap_{t.pid}")
        res = check_ok(run_procsnap("dump", "-t", t.pid, "-D", images_dir, "--tcp-established"))
        assert wait_gone(t.pid, 10), describe(res)
        # nobody holds the target's end now: the lock must keep this back
        peer.sendall(pattern(0, 1000))
        peer.shutdown(socket.SHUT_WR)
        time.sleep(0.5)   # past the first transmission (loopback: at once)
        targets.adopt(t.pid, like=t)
        check_ok(run_procsnap("restore", "-D", images_dir, "-d", "--tcp-established"))
        t.signal(signal.SIGUSR1)
        assert read_all(peer) == pattern(0, target_sent)   # ECONNRESET fails here
        assert t.wait_line("^(got|FAIL)", 30) == "got 1000 eof"
    finally:
        peer.close()
