"""Sockets across dump/restore: unix (pairs, path and abstract servers,
datagrams), TCP and UDP, live TCP connections (--tcp-established, with
the nftables network lock), and the refusals.

Targets (tests/targets/): ``unix_pair.py`` (two processes, socketpairs
with data queued both ways and a half-closed pair), ``unix_server.py``
(path and abstract listeners with connected clients, queued data, a
connection waiting to be accepted, a dgram socket with 10 queued
messages), ``echo_server.py`` (asyncio echo server with in-tree clients),
``sock_misc.py`` (UDP, listening TCP, a netlink socket, an outside peer).
Every test only uses loopback; every process it starts is killed at
teardown; nftables tables are procsnap's own and are checked gone.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from helpers import (
    Target,
    TargetFactory,
    assert_one_line_error,
    assert_same_view,
    check_ok,
    crit_decode_all,
    describe,
    finish,
    is_untouched,
    outside_view,
    proc_ppid,
    run_procsnap,
    tree_pids,
    wait_gone,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]


def cycle(targets: TargetFactory, t: Target, images: Path, *dump_args: str,
          restore_args: tuple[str, ...] = (), volatile: tuple[int, ...] = (1,)) -> None:
    """Dump (killing) the tree and restore it; same pids and outside view."""
    pids = tree_pids(t.pid)
    before = {p: outside_view(p, volatile_fds=volatile) for p in pids}
    res = run_procsnap("dump", "-t", t.pid, "-D", images, *dump_args, timeout=120)
    check_ok(res)
    for p in pids:
        assert wait_gone(p, 10), f"pid {p} still alive after dump\n" + describe(res)
    targets.adopt(t.pid, like=t)
    res = run_procsnap("restore", "-D", images, "-d", *restore_args, timeout=120)
    check_ok(res)
    assert t.alive(), f"restored pid {t.pid} is not running\n" + describe(res)
    assert proc_ppid(t.pid) == os.getpid()
    assert tree_pids(t.pid) == pids
    for p in pids:
        ok, why = is_untouched(p)
        assert ok, f"restored pid {p} is stopped or traced: {why}"
        assert_same_view(before[p], outside_view(p, volatile_fds=volatile),
                         f"of pid {p} across dump/restore of {t.name}")


# ----------------------------------------------------------------- unix ----

@pytest.mark.parametrize("kind", ["stream", "dgram", "seqpacket"])
def test_socketpair_both_ways(targets: TargetFactory, images_dir: Path, kind: str) -> None:
    t = targets.start("unix_pair.py", kind)
    cycle(targets, t, images_dir)
    decoded = crit_decode_all(images_dir)
    usks = [e["usk"] for e in decoded["files.img"]["entries"] if e["type"] == "UNIXSK"]
    assert len(usks) == 4, usks
    by_ino = {u["ino"]: u for u in usks}
    for u in usks:
        assert by_ino[u["peer"]]["peer"] == u["ino"], f"not a pair: {u}"
    queues = decoded["sk-queues.img"]["entries"]
    # 5 messages each way on pair A, "tail" on pair B
    total = sum(q["length"] for q in queues)
    assert total == 2 * 5 * 8 + 4, queues
    assert any(u.get("shutdown") in ("WRITE", 2) for u in usks), usks
    finish(t)


def test_unix_server_path_abstract_dgram(targets: TargetFactory, images_dir: Path,
                                         tmp_path: Path) -> None:
    sockdir = tmp_path / "socks"
    sockdir.mkdir()
    t = targets.start("unix_server.py", str(sockdir))
    pids = tree_pids(t.pid)
    assert len(pids) == 4
    before = {p: outside_view(p, volatile_fds=(1,)) for p in pids}
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", images_dir, timeout=120))
    for p in pids:
        assert wait_gone(p, 10)
    # the path socket's file is gone: the restore makes it again, mode 0640;
    # the dgram one is left behind (stale): the restore replaces it
    (sockdir / "srv.sock").unlink()
    assert (sockdir / "dgram.sock").exists()
    targets.adopt(t.pid, like=t)
    check_ok(run_procsnap("restore", "-D", images_dir, "-d", timeout=120))
    assert tree_pids(t.pid) == pids
    for p in pids:
        assert_same_view(before[p], outside_view(p, volatile_fds=(1,)), f"of pid {p}")
    decoded = crit_decode_all(images_dir)
    usks = [e["usk"] for e in decoded["files.img"]["entries"] if e["type"] == "UNIXSK"]
    listeners = [u for u in usks if u["state"] == 10]
    assert len(listeners) == 2 and all(u["backlog"] in (8, 4) for u in listeners), listeners
    finish(t)


# -------------------------------------------------------------- TCP/UDP ----

def test_tcp_udp_bound_listening_options(targets: TargetFactory, images_dir: Path,
                                         tmp_path: Path) -> None:
    t = targets.start("sock_misc.py", str(tmp_path / "ports"))
    cycle(targets, t, images_dir)
    decoded = crit_decode_all(images_dir)
    isks = [e["isk"] for e in decoded["files.img"]["entries"] if e["type"] == "INETSK"]
    assert len(isks) == 6, isks
    assert sum(1 for i in isks if i["state"] == 10) == 2, isks
    queued = decoded["sk-queues.img"]["entries"]
    assert sorted(q["length"] for q in queued) == [3, 5, 5, 5], queued
    finish(t)


class EchoClient(threading.Thread):
    """A client outside the tree: numbered lines, each echo checked."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.n = 0
        self.error: str | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        reader = self.sock.makefile("rb")
        try:
            while not self.stop.is_set() and self.n < 1_000_000:
                n = self.n + 1
                self.sock.sendall(f"out {n}\n".encode())
                line = reader.readline()
                if line != f"out {n}\n".encode():
                    self.error = f"echo {n}: got {line!r}"
                    return
                self.n = n
                time.sleep(0.002)
        except OSError as exc:  # a reset or a timeout: the connection broke
            self.error = f"after {self.n} echoes: {exc!r}"

    def finish(self) -> None:
        self.stop.set()
        self.join(30)
        self.sock.close()


def nft_table_exists(name: str) -> bool:
    res = subprocess.run(["nft", "list", "table", "inet", name], capture_output=True,
                         timeout=30)
    return res.returncode == 0


@pytest.fixture
def outside_clients() -> Iterator[list[EchoClient]]:
    clients: list[EchoClient] = []
    yield clients
    for c in clients:
        c.finish()


@pytest.fixture
def nft_tables() -> Iterator[list[str]]:
    """Tables a test expects procsnap to create: removed at teardown if left."""
    names: list[str] = []
    yield names
    for name in names:
        if shutil.which("nft") and nft_table_exists(name):
            subprocess.run(["nft", "delete", "table", "inet", name], timeout=30)


def read_port(path: Path) -> list[int]:
    deadline = time.monotonic() + 10
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return [int(x) for x in path.read_text().split()]


def test_asyncio_echo_established(targets: TargetFactory, images_dir: Path, tmp_path: Path,
                                  outside_clients: list[EchoClient],
                                  nft_tables: list[str]) -> None:
    if shutil.which("nft") is None:
        pytest.fail("nft not found: install nftables (apt-get install -y nftables)")
    t = targets.start("echo_server.py", str(tmp_path / "port"))
    [port] = read_port(tmp_path / "port")
    out = EchoClient(port)
    outside_clients.append(out)
    out.start()
    wait_until = time.monotonic() + 10
    while out.n < 50 and out.error is None and time.monotonic() < wait_until:
        time.sleep(0.01)
    table = f"CRIU-procsnap_{t.pid}"
    nft_tables.append(table)
    pids = tree_pids(t.pid)
    res = run_procsnap("dump", "-t", t.pid, "-D", images_dir, "--tcp-established", timeout=120)
    check_ok(res)
    for p in pids:
        assert wait_gone(p, 10)
    assert nft_table_exists(table), "no network lock while the tree is down"
    at_dump = out.n
    time.sleep(0.5)
    assert out.n <= at_dump + 1, "the outside client got echoes while the server was down"
    targets.adopt(t.pid, like=t)
    check_ok(run_procsnap("restore", "-D", images_dir, "-d", timeout=120))
    assert not nft_table_exists(table), "the network lock outlived the restore"
    assert tree_pids(t.pid) == pids
    deadline = time.monotonic() + 30
    while out.n < at_dump + 100 and out.error is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert out.error is None, f"outside client: {out.error}"
    assert out.n >= at_dump + 100, f"outside client stuck at {out.n} (dump at {at_dump})"
    decoded = crit_decode_all(images_dir)
    streams = [n for n in decoded if n.startswith("tcp-stream-")]
    assert len(streams) == 5, streams  # 2 in-tree pairs + the outside client's server end
    out.finish()  # before the server exits, which resets the connection
    assert out.error is None, f"outside client: {out.error}"
    finish(t)


def test_established_needs_option(targets: TargetFactory, images_dir: Path) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    try:
        port = srv.getsockname()[1]
        t = targets.start("sock_peer.py", "tcp", str(port))
        conn, _ = srv.accept()
        res = run_procsnap("dump", "-t", t.pid, "-D", images_dir)
        line = assert_one_line_error(res, f"pid {t.pid}: fd 5")
        assert f"127.0.0.1:{port}" in line and "--tcp-established" in line, line
        ok, why = is_untouched(t.pid)
        assert ok, why
        assert not list(images_dir.iterdir())
        t.signal(signal.SIGUSR1)
        assert conn.recv(4) == b"ping"
        conn.sendall(b"pong")
        t.wait_line("^pong ok$", 10)
        conn.close()
        finish(t)
    finally:
        srv.close()


def test_unsupported_family_refused(targets: TargetFactory, images_dir: Path) -> None:
    t = targets.start("sock_peer.py", "packet")
    res = run_procsnap("dump", "-t", t.pid, "-D", images_dir)
    line = assert_one_line_error(res, f"pid {t.pid}: fd 5")
    assert "AF_VSOCK" in line and "socket:[" in line, line
    ok, why = is_untouched(t.pid)
    assert ok, why
    finish(t)


def test_unix_external_peer(targets: TargetFactory, images_dir: Path, tmp_path: Path) -> None:
    name = f"procsnap-ext-{os.getpid()}-{time.monotonic_ns()}"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(b"\0" + name.encode())
    srv.listen(1)
    mine: list[socket.socket] = [srv]
    try:
        t = targets.start("sock_peer.py", "unix", name)
        conn, _ = srv.accept()
        mine.append(conn)
        ino = os.stat(f"/proc/{t.pid}/fd/5").st_ino
        res = run_procsnap("dump", "-t", t.pid, "-D", images_dir)
        line = assert_one_line_error(res, f"pid {t.pid}: fd 5")
        assert f"unix[{ino}]" in line and f"pid {os.getpid()}" in line, line
        ok, why = is_untouched(t.pid)
        assert ok, why
        # marked external: dumped; restored on a socket we hand over
        check_ok(run_procsnap("dump", "-t", t.pid, "-D", images_dir,
                              "--external", f"unix[{ino}]"))
        assert wait_gone(t.pid, 10)
        ours, theirs = socket.socketpair()
        mine += [ours, theirs]
        targets.adopt(t.pid, like=t)
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
        res = subprocess.run(
            [sys.executable, "-m", "procsnap", "restore", "-D", str(images_dir), "-d",
             "--inherit-fd", f"fd[{theirs.fileno()}]:unix[{ino}]"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
            pass_fds=[theirs.fileno()], env=env)
        check_ok(res)
        theirs.close()
        t.signal(signal.SIGUSR1)
        ours.settimeout(10)
        assert ours.recv(4) == b"ping"
        ours.sendall(b"pong")
        t.wait_line("^pong ok$", 10)
        # without --inherit-fd the restore says what it needs
        finish(t)
    finally:
        for s in mine:
            s.close()


def test_unix_ext_unix_sk(targets: TargetFactory, images_dir: Path, tmp_path: Path) -> None:
    """criu's --ext-unix-sk: a dgram socket connected to a named dgram socket
    outside the tree (held by this test) is connected to that name again;
    a restore without the option says it needs it; a stream peer is refused."""
    path = str(tmp_path / "ext.sock")
    outside = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    outside.bind(path)
    try:
        t = targets.start("sock_peer.py", "dgram", path)
        ino = os.stat(f"/proc/{t.pid}/fd/5").st_ino
        peer_ino = os.fstat(outside.fileno()).st_ino
        check_ok(run_procsnap("dump", "-t", t.pid, "-D", images_dir, "--ext-unix-sk"))
        assert wait_gone(t.pid, 10)
        targets.adopt(t.pid, like=t)
        res = run_procsnap("restore", "-D", images_dir, "-d")
        line = assert_one_line_error(res, f"unix dgram socket {ino}")
        assert f"unix dgram socket {peer_ino}" in line and "--ext-unix-sk" in line, line
        assert wait_gone(t.pid, 10)
        check_ok(run_procsnap("restore", "-D", images_dir, "-d", "--ext-unix-sk"))
        # from outside: the restored socket is connected to our name
        new_ino = os.stat(f"/proc/{t.pid}/fd/5").st_ino
        ss = subprocess.run(["ss", "-xaH"], capture_output=True, text=True, timeout=30).stdout
        assert any(r.split()[-3:-2] == [str(new_ino)] and r.split()[-1] == str(peer_ino)
                   for r in ss.splitlines()), f"socket {new_ino} is not connected to ours"
        t.signal(signal.SIGUSR1)
        assert t.wait_line("^(sent|FAIL)", 10) == f"sent ok {path}"
        outside.settimeout(10)
        assert outside.recv(16) == b"ping"
        finish(t)
    finally:
        outside.close()
    # a stream peer outside: --ext-unix-sk does not take it (criu's rule)
    name = f"procsnap-ext-{os.getpid()}-{time.monotonic_ns()}"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(b"\0" + name.encode())
    srv.listen(1)
    try:
        t = targets.start("sock_peer.py", "unix", name)
        conn, _ = srv.accept()
        res = run_procsnap("dump", "-t", t.pid, "-D", images_dir, "--ext-unix-sk")
        line = assert_one_line_error(res, f"pid {t.pid}: fd 5")
        assert "--ext-unix-sk takes datagram sockets only" in line, line
        ok, why = is_untouched(t.pid)
        assert ok, why
        conn.close()
    finally:
        srv.close()


def test_unix_external_restore_needs_inherit_fd(targets: TargetFactory,
                                                images_dir: Path) -> None:
    name = f"procsnap-ext-{os.getpid()}-{time.monotonic_ns()}"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(b"\0" + name.encode())
    srv.listen(1)
    try:
        t = targets.start("sock_peer.py", "unix", name)
        conn, _ = srv.accept()
        ino = os.stat(f"/proc/{t.pid}/fd/5").st_ino
        check_ok(run_procsnap("dump", "-t", t.pid, "-D", images_dir,
                              "--external", f"unix[{ino}]"))
        assert wait_gone(t.pid, 10)
        res = run_procsnap("restore", "-D", images_dir, "-d")
        assert_one_line_error(res, f"--inherit-fd fd[N]:unix[{ino}]")
        assert wait_gone(t.pid, 10)
        conn.close()
    finally:
        srv.close()


# ------------------------------------------------------- real servers ----

def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _spawn(targets: TargetFactory, argv: list[str], name: str) -> Target:
    """A program that is not one of our targets, tracked for teardown."""
    workdir = targets.workdir
    out = workdir / f"{name}.out"
    with open(out, "wb") as fo:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fo, stderr=subprocess.STDOUT,
                             close_fds=True, cwd=workdir, start_new_session=True)
    _POPENS.append(p)
    t = Target(name=name, pid=p.pid, argv=argv, workdir=workdir, out=out, err=out,
               cmdline=list(argv))
    targets.targets.append(t)
    return t


_POPENS: list[subprocess.Popen] = []


def _wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open("/proc/net/tcp") as f:
            if any(ln.split()[1].endswith(f":{port:04X}") and ln.split()[3] == "0A"
                   for ln in f.readlines()[1:]):
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


def _http_get(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk


def test_http_server_idle(targets: TargetFactory, images_dir: Path, tmp_path: Path) -> None:
    port = _free_port()
    www = tmp_path / "www"
    www.mkdir()
    (www / "hello.txt").write_text("hi\n")
    t = _spawn(targets, [sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                         "--directory", str(www), str(port)], "http.server")
    _wait_port(port)
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", images_dir, timeout=120))
    assert wait_gone(t.pid, 10)
    check_ok(run_procsnap("restore", "-D", images_dir, "-d", timeout=120))
    reply = _http_get(port)
    assert reply.startswith(b"HTTP/1.0 200"), reply[:200]
    assert b"hello.txt" in reply


def _resp(*args: bytes) -> bytes:
    out = b"*%d\r\n" % len(args)
    for a in args:
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


class RedisWriter(threading.Thread):
    """An outside client that keeps writing (SET w:N N) and checks replies."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.n = 0
        self.error: str | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        reader = self.sock.makefile("rb")
        try:
            while not self.stop.is_set() and self.n < 1_000_000:
                n = self.n + 1
                self.sock.sendall(_resp(b"SET", b"w:%d" % n, b"%d" % n))
                line = reader.readline()
                if line != b"+OK\r\n":
                    self.error = f"SET {n}: {line!r}"
                    return
                self.n = n
                time.sleep(0.002)
        except OSError as exc:
            self.error = f"after {self.n} writes: {exc!r}"

    def finish(self) -> None:
        self.stop.set()
        self.join(30)
        self.sock.close()


def _redis_query(port: int, *cmds: tuple[bytes, ...]) -> list[bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"".join(_resp(*c) for c in cmds))
        reader = s.makefile("rb")
        out = []
        for _ in cmds:
            line = reader.readline()
            if line.startswith(b"$") and line != b"$-1\r\n":
                out.append(reader.read(int(line[1:]) + 2)[:-2])
            else:
                out.append(line.rstrip())
        return out


def test_redis_100k_keys_outside_writer(targets: TargetFactory, images_dir: Path,
                                        nft_tables: list[str]) -> None:
    redis = shutil.which("redis-server")
    if redis is None:
        pytest.fail("redis-server not found: install it (apt-get install -y redis-server)")
    port = _free_port()
    t = _spawn(targets, [redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                         "--appendonly", "no", "--daemonize", "no", "--protected-mode", "no",
                         "--dir", str(targets.workdir)], "redis-server")
    _wait_port(port)
    keys = 100_000
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        batch = 5000
        reader = s.makefile("rb")
        for start in range(0, keys, batch):
            s.sendall(b"".join(_resp(b"SET", b"key:%d" % i, b"value-%d" % i)
                               for i in range(start, start + batch)))
            for _ in range(batch):
                assert reader.readline() == b"+OK\r\n"
    assert _redis_query(port, (b"DBSIZE",)) == [b":%d" % keys]
    writer = RedisWriter(port)
    writer.start()
    try:
        deadline = time.monotonic() + 10
        while writer.n < 50 and writer.error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        nft_tables.append(f"CRIU-procsnap_{t.pid}")
        check_ok(run_procsnap("dump", "-t", t.pid, "-D", images_dir, "--tcp-established",
                              timeout=300))
        assert wait_gone(t.pid, 10)
        at_dump = writer.n
        check_ok(run_procsnap("restore", "-D", images_dir, "-d", timeout=300))
        deadline = time.monotonic() + 30
        while writer.n < at_dump + 100 and writer.error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert writer.error is None, f"outside writer: {writer.error}"
        assert writer.n >= at_dump + 100, f"writer stuck at {writer.n} (dump at {at_dump})"
    finally:
        writer.finish()
    assert writer.error is None, f"outside writer: {writer.error}"
    got = _redis_query(port, (b"DBSIZE",), (b"GET", b"key:0"), (b"GET", b"key:99999"),
                       (b"GET", b"key:54321"), (b"GET", b"w:%d" % writer.n))
    assert got == [b":%d" % (keys + writer.n), b"value-0", b"value-99999", b"value-54321",
                   b"%d" % writer.n], got


def test_network_unlock_after_abandoned_restore(targets: TargetFactory, images_dir: Path,
                                                tmp_path: Path, nft_tables: list[str]) -> None:
    t = targets.start("echo_server.py", str(tmp_path / "port"))
    table = f"CRIU-procsnap_{t.pid}"
    nft_tables.append(table)
    pids = tree_pids(t.pid)
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", images_dir, "--tcp-established"))
    for p in pids:
        assert wait_gone(p, 10)
    assert nft_table_exists(table)
    res = check_ok(run_procsnap("network-unlock", images_dir))
    assert "network lock removed" in res.stderr, describe(res)
    assert not nft_table_exists(table)
    res = check_ok(run_procsnap("network-unlock", images_dir))
    assert "no network lock" in res.stderr, describe(res)


def test_leave_running_releases_repair_and_lock(targets: TargetFactory, images_dir: Path,
                                                tmp_path: Path, nft_tables: list[str]) -> None:
    t = targets.start("echo_server.py", str(tmp_path / "port"))
    nft_tables.append(f"CRIU-procsnap_{t.pid}")
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", images_dir, "--tcp-established",
                          "--leave-running"))
    assert not nft_table_exists(f"CRIU-procsnap_{t.pid}")
    for p in tree_pids(t.pid):
        ok, why = is_untouched(p)
        assert ok, why
    time.sleep(0.5)  # the clients go on: their checker fails on any stall or loss
    finish(t)


# ------------------------------------------------------- unix corners ----

def test_unix_files_in_flight(targets: TargetFactory, images_dir: Path, tmp_path: Path) -> None:
    """SCM_RIGHTS in queued messages: a pipe's ends (one also held), a file
    with its offset on a stream's one-byte message, a socket with
    its own queue; all come back, the same descriptions."""
    t = targets.start("unix_corners.py", "scm", str(tmp_path))
    cycle(targets, t, images_dir)
    decoded = crit_decode_all(images_dir)
    scms = [q["scm"] for q in decoded["sk-queues.img"]["entries"] if q.get("scm")]
    assert len(scms) == 5, decoded["sk-queues.img"]["entries"]
    finish(t)


def test_unix_epoll_in_flight(targets: TargetFactory, images_dir: Path,
                              tmp_path: Path) -> None:
    """An epoll in flight (sent twice, as zdtm scm05), watching a socket and
    a pipe of the task: one epoll again, same numbers, events, readiness."""
    t = targets.start("unix_corners.py", "epoll", str(tmp_path))
    cycle(targets, t, images_dir)
    decoded = crit_decode_all(images_dir)
    eps = [f for f in decoded["files.img"]["entries"] if f["type"] == "EVENTPOLL"]
    assert len(eps) == 1 and len(eps[0]["epfd"]["tfd"]) == 2, eps
    finish(t)


def test_unix_relative_names_after_chdir(targets: TargetFactory, images_dir: Path,
                                         tmp_path: Path) -> None:
    """Relative names bound in DIR, one then replaced by a FIFO, and the
    cwd changed since (zdtm fifo_upon_unix_socket01): where they were
    bound comes from the sockets' own files (SIOCUNIXFILE)."""
    t = targets.start("unix_corners.py", "relmoved", str(tmp_path))
    cycle(targets, t, images_dir)
    decoded = crit_decode_all(images_dir)
    dirs = sorted((f["usk"]["name"], f["usk"].get("name_dir"), f["usk"].get("deleted", False))
                  for f in decoded["files.img"]["entries"] if f["type"] == "UNIXSK")
    assert dirs == [("gone.sock", str(tmp_path), True), ("moved.sock", str(tmp_path), False)], dirs
    finish(t)


def test_unix_queued_credentials(targets: TargetFactory, images_dir: Path,
                                 tmp_path: Path) -> None:
    """SCM_CREDENTIALS of queued messages (a child's, the parent's) are
    the senders', not the restorer's."""
    t = targets.start("unix_corners.py", "creds", str(tmp_path))
    cycle(targets, t, images_dir)
    # (crit 3.17 does not know sk_packet_entry.ucred: the target checks)
    finish(t)


def test_unix_ghost_relative_self(targets: TargetFactory, images_dir: Path,
                                  tmp_path: Path) -> None:
    """Names deleted (with their directory), replaced by a regular file,
    relative to a cwd, and a datagram socket connected to its own name."""
    d = tmp_path / "d"
    d.mkdir()
    t = targets.start("unix_corners.py", "ghost", str(d))
    cycle(targets, t, images_dir)
    assert sorted(os.listdir(d)) == ["l", "rel.sock", "self"], os.listdir(d)
    finish(t)


@pytest.mark.parametrize("mode,what", [
    ("credsout", "(SCM_CREDENTIALS), outside the dumped tree"),
    ("epollout", "a file in flight in a queued message is an epoll watching a file (inode "),
    ("stream", "in a stream queue with other bytes in the same read (6 bytes)"),
])
def test_unix_in_flight_refused(targets: TargetFactory, images_dir: Path, tmp_path: Path,
                                mode: str, what: str) -> None:
    t = targets.start("unix_corners.py", mode, str(tmp_path))
    res = run_procsnap("dump", "-t", t.pid, "-D", images_dir)
    line = assert_one_line_error(res, f"pid {t.pid}: fd ")
    assert what in line and "unix " in line, line
    ok, why = is_untouched(t.pid)
    assert ok, why
    finish(t)


def test_bound_with_freebind(targets: TargetFactory, images_dir: Path) -> None:
    """Addresses the host does not have, bound with IP_FREEBIND which was
    then turned off again (zdtm sk-freebind-false) or kept: bound again,
    the flag as the task left it (checked inside), the bindings seen from
    outside (/proc/net/udp, udp6)."""
    t = targets.start("freebind.py")
    import re
    m = re.search(r"^ports (\d+) (\d+)$", t.output(), re.M)
    assert m, t.output()
    p4, p6 = int(m.group(1)), int(m.group(2))

    def bound() -> list[str]:
        rows = []
        for table in ("/proc/net/udp", "/proc/net/udp6"):
            with open(table) as f:
                rows += [r.split()[1] for r in f.read().splitlines()[1:]]
        return sorted(r for r in rows if int(r.split(":")[1], 16) in (p4, p6))

    before = bound()
    assert len(before) == 4, before
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", images_dir))
    assert wait_gone(t.pid, 10)
    targets.adopt(t.pid, like=t)
    check_ok(run_procsnap("restore", "-D", images_dir, "-d"))
    assert bound() == before
    finish(t)
