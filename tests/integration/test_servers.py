"""Real servers from Debian, each with a live client connection from
outside the tree, dumped and restored with --tcp-established:

- nginx (nginx-light): a master and two workers on their own config,
  prefix and port, with the accept mutex on (a lock in shared anonymous
  memory) and the master--worker channels (socketpairs with O_ASYNC and a
  SIGIO owner).  An idle keep-alive client gets a correct second answer on
  the same connection; every socket keeps its status flags, SIGIO owner
  and signal; and a graceful stop afterwards goes through the channels.
- memcached: four worker threads, 10,000 keys set over one connection;
  after restore that connection reads every key back and sets more.

Each test kills what it spawned, by pid, with timeouts.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from helpers import check_ok, reap, run_procsnap, tree_pids, wait_for, wait_gone
from servers import Memcache
from procsnap.kernel.libc import pidfd_getfd

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
MEMCACHED = shutil.which("memcached") or "/usr/bin/memcached"
F_GETSIG, F_GETOWN_EX = 11, 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kill_tree(pids: list[int], runner: subprocess.Popen[bytes]) -> None:
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if runner.poll() is None:
        runner.kill()
    try:
        runner.wait(10)
    except subprocess.TimeoutExpired:
        pass
    for p in pids:
        wait_gone(p, 10)
    reap()


def _socket_fown(pids: list[int]) -> dict[tuple[int, int], tuple[int, int, int, int]]:
    """(pid, fd) -> (status flags, owner type, owner pid, SIGIO signal) of
    every socket the tree holds, read on a pidfd_getfd copy (the same open
    file description)."""
    out = {}
    for pid in pids:
        for name in os.listdir(f"/proc/{pid}/fd"):
            fd = int(name)
            try:
                if not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    continue
            except FileNotFoundError:
                continue
            copy = pidfd_getfd(pid, fd)
            try:
                fl = fcntl.fcntl(copy, fcntl.F_GETFL)
                ptype, opid = struct.unpack("<ii", fcntl.fcntl(copy, F_GETOWN_EX, bytes(8)))
                out[(pid, fd)] = (fl, ptype, opid, fcntl.fcntl(copy, F_GETSIG))
            finally:
                os.close(copy)
    return out


# ------------------------------------------------------------------ nginx ----

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 2;
pid {top}/nginx.pid;
error_log {top}/logs/error.log info;
events {{
    worker_connections 64;
    accept_mutex on;
    accept_mutex_delay 50ms;
}}
http {{
    access_log {top}/logs/access.log;
    client_body_temp_path {top}/body;
    proxy_temp_path {top}/proxy;
    fastcgi_temp_path {top}/fastcgi;
    uwsgi_temp_path {top}/uwsgi;
    scgi_temp_path {top}/scgi;
    keepalive_timeout 600s;
    keepalive_requests 1000;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type text/plain;
            return 200 "hello $request_uri from $pid\\n";
        }}
    }}
}}
"""


class Http:
    """One keep-alive HTTP/1.1 connection, read by Content-Length."""

    def __init__(self, port: int) -> None:
        self.s = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""

    def get(self, path: str) -> tuple[str, dict[str, str], bytes]:
        self.s.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        hdrs = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        n = int(hdrs["content-length"])
        while len(self.buf) < n:
            self._more()
        body, self.buf = self.buf[:n], self.buf[n:]
        return lines[0], hdrs, body

    def _more(self) -> None:
        chunk = self.s.recv(65536)
        if not chunk:
            raise AssertionError(f"the server closed the connection ({self.buf!r})")
        self.buf += chunk

    def close(self) -> None:
        self.s.close()


@pytest.fixture
def nginx_top() -> Iterator[Path]:
    if not os.path.exists(NGINX):
        pytest.skip("nginx is not installed (apt-get install -y nginx-light)")
    top = Path(tempfile.mkdtemp(prefix="procsnap-nginx."))
    (top / "logs").mkdir()
    try:
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_nginx_keepalive_client(nginx_top: Path, images_dir: Path) -> None:
    port = _free_port()
    (nginx_top / "nginx.conf").write_text(NGINX_CONF.format(top=nginx_top, port=port))
    with open(nginx_top / "logs" / "out", "ab") as log:
        runner = subprocess.Popen([NGINX, "-p", str(nginx_top), "-c", str(nginx_top / "nginx.conf")],
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                  start_new_session=True, cwd=nginx_top)
    master = runner.pid   # daemon off: the master is the process we started
    pids = [master]
    client = None
    try:
        wait_for(lambda: len(tree_pids(master)) == 3, 30, "the master and two workers")
        pids = tree_pids(master)

        def answers() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2):
                    return True
            except OSError:
                return False
        wait_for(answers, 30, "nginx to listen")
        client = Http(port)
        status, hdrs, body = client.get("/one")
        assert status == "HTTP/1.1 200 OK" and hdrs.get("connection") == "keep-alive", hdrs
        assert body.startswith(b"hello /one from "), body
        worker = int(body.split()[-1])
        assert worker in pids[1:], (worker, pids)
        before = _socket_fown(pids)
        channels = [v for v in before.values() if v[0] & os.O_ASYNC]
        assert channels, f"no socket with O_ASYNC in nginx's tree: {before}"
        assert any(v[2] == master for v in channels), before   # SIGIO to the master

        check_ok(run_procsnap("dump", "-t", master, "-D", images_dir, "--tcp-established",
                              timeout=120))
        for p in pids:
            assert wait_gone(p, 15), f"pid {p} still there after dump"
        res = check_ok(run_procsnap("restore", "-D", images_dir, "-d", "--tcp-established",
                                    timeout=120))
        assert tree_pids(master) == pids, res.stderr
        assert _socket_fown(pids) == before

        # the same idle connection, served by the same worker
        status, hdrs, body = client.get("/two")
        assert status == "HTTP/1.1 200 OK" and hdrs.get("connection") == "keep-alive", hdrs
        assert body == f"hello /two from {worker}\n".encode(), body
        status, _, body = client.get("/three")
        assert body == f"hello /three from {worker}\n".encode(), body
        # new connections: the listening socket and the accept mutex work
        for i in range(6):
            other = Http(port)
            try:
                status, _, body = other.get(f"/new{i}")
            finally:
                other.close()
            assert status == "HTTP/1.1 200 OK" and int(body.split()[-1]) in pids[1:], body
        # a graceful stop: the master tells its workers over the channels
        client.close()
        client = None
        os.kill(master, signal.SIGQUIT)
        for p in pids:
            assert wait_gone(p, 30), f"pid {p} did not stop after SIGQUIT to the master"
        log = (nginx_top / "logs" / "error.log").read_text()
        assert "[alert]" not in log and "[emerg]" not in log, log
    finally:
        if client is not None:
            client.close()
        _kill_tree(pids, runner)


# -------------------------------------------------------------- memcached ----

def test_memcached_4_threads_10000_keys(images_dir: Path) -> None:
    if not os.path.exists(MEMCACHED):
        pytest.skip("memcached is not installed (apt-get install -y memcached)")
    port = _free_port()
    runner = subprocess.Popen([MEMCACHED, "-u", "nobody", "-t", "4", "-l", "127.0.0.1",
                               "-p", str(port), "-U", "0", "-m", "64"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    pid = runner.pid
    client = None
    try:
        def up() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2):
                    return True
            except OSError:
                return False
        wait_for(up, 30, "memcached to listen")
        threads = len(os.listdir(f"/proc/{pid}/task"))
        assert threads >= 5, threads   # main, 4 workers, and its helpers
        client = Memcache(port)
        keys = {f"key{i}": f"value-{i}-{'x' * (i % 50)}".encode() for i in range(10000)}
        client.set_many(keys)
        assert client.stat("curr_items") == "10000"

        check_ok(run_procsnap("dump", "-t", pid, "-D", images_dir, "--tcp-established",
                              timeout=120))
        assert wait_gone(pid, 15)
        res = check_ok(run_procsnap("restore", "-D", images_dir, "-d", "--tcp-established",
                                    timeout=120))
        assert len(os.listdir(f"/proc/{pid}/task")) == threads, res.stderr

        assert client.get_many(list(keys)) == keys
        more = {f"more{i}": f"later-{i}".encode() for i in range(1000)}
        client.set_many(more)
        assert client.get_many(list(more)) == more
        assert client.stat("curr_items") == "11000"
        # and another client
        other = Memcache(port)
        try:
            assert other.get_many(["key42", "more7"]) == {"key42": keys["key42"],
                                                         "more7": more["more7"]}
        finally:
            other.close()
    finally:
        if client is not None:
            client.close()
        _kill_tree([pid], runner)
