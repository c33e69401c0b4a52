"""PostgreSQL 15 (Debian's postgresql package), a real server: its
postmaster and every background process, its System V shared memory
segment and a backend serving a live client connection, dumped with
--tcp-established and restored -- once in the host's ipc namespace (the
segment comes back under its old id) and once in an ipc namespace of its
own (unshare -i).

The client (psql, outside the tree, fed through a pipe) keeps its one
connection across the dump and restore: its session's temporary table,
application_name and backend pid are still there afterwards, and a new
connection works too.  The server is stopped cleanly at the end (it
removes its segment), and the data directory goes.
"""
from __future__ import annotations

import os
import pwd
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from helpers import check_ok, reap, run_procsnap, tree_pids, wait_for, wait_gone

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

PGBIN = Path("/usr/lib/postgresql/15/bin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Psql:
    """One psql session over TCP, driven line by line through a pipe."""

    def __init__(self, port: int) -> None:
        self.p = subprocess.Popen(
            ["runuser", "-u", "nobody", "--", str(PGBIN / "psql"), "-X", "-q", "-A", "-t",
             "-h", "127.0.0.1", "-p", str(port), "-U", "nobody", "-d", "postgres",
             "-v", "ON_ERROR_STOP=0"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)   # its own group: close() kills runuser and psql
        self.n = 0
        self.buf = b""

    def run(self, sql: str, timeout: float = 30) -> list[str]:
        """The output lines of ``sql`` (up to a marker echoed after it)."""
        assert self.p.stdin is not None and self.p.stdout is not None
        self.n += 1
        mark = f"--done {self.n}--"
        self.p.stdin.write(f"{sql}\n\\echo {mark}\n")
        self.p.stdin.flush()
        out: list[str] = []
        end = time.monotonic() + timeout
        fd = self.p.stdout.fileno()
        while time.monotonic() < end:
            if b"\n" not in self.buf:
                # our own buffer: select() on the fd says nothing of lines
                # a file object has read ahead already
                ready, _, _ = select.select([fd], [], [], max(end - time.monotonic(), 0))
                if not ready:
                    break
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"psql ended: {out}")
                self.buf += chunk
                continue
            raw, self.buf = self.buf.split(b"\n", 1)
            line = raw.decode()
            if line.strip() == mark:
                return out
            out.append(line)
        raise AssertionError(f"psql: no answer to {sql!r}")

    def close(self) -> None:
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.p.wait()


@pytest.fixture
def pgdata() -> Iterator[Path]:
    if not (PGBIN / "postgres").exists():
        pytest.skip("PostgreSQL 15 is not installed (apt-get install -y postgresql)")
    nobody = pwd.getpwnam("nobody")
    top = Path(tempfile.mkdtemp(prefix="procsnap-pg."))
    os.chmod(top, 0o755)
    data = top / "data"
    data.mkdir()
    os.chown(data, nobody.pw_uid, nobody.pw_gid)
    os.chmod(data, 0o700)
    sock = top / "sock"
    sock.mkdir()
    os.chown(sock, nobody.pw_uid, nobody.pw_gid)
    try:
        subprocess.run(["runuser", "-u", "nobody", "--", str(PGBIN / "initdb"), "-D", str(data),
                        "-A", "trust", "-U", "nobody"], check=True, capture_output=True,
                       timeout=120)
        yield data
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _start(data: Path, port: int, ipcns: bool) -> subprocess.Popen[bytes]:
    """The postmaster: setpriv and unshare exec in place, so the Popen pid
    is the postmaster, leader of a session of its own (no terminal)."""
    argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
            str(PGBIN / "postgres"), "-D", str(data), "-p", str(port),
            "-k", str(data.parent / "sock"), "-c", "listen_addresses=127.0.0.1",
            "-c", "shared_buffers=16MB", "-c", "dynamic_shared_memory_type=sysv"]
    if ipcns:
        argv = ["unshare", "-i", *argv]
    with open(data.parent / "server.log", "ab") as log:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, cwd=data.parent)


def _shm_ids(pid: int) -> list[str]:
    """The System V segments in the postmaster's ipc namespace."""
    out = subprocess.run(["nsenter", "-t", str(pid), "-i", "ipcs", "-m"], capture_output=True,
                         text=True, check=True).stdout
    return sorted(ln.split()[1] for ln in out.splitlines() if ln.startswith("0x"))


@pytest.mark.parametrize("ipcns", [False, True], ids=["host-ipc", "own-ipc"])
def test_postgres_with_a_live_client(pgdata: Path, images_dir: Path, ipcns: bool) -> None:
    port = _free_port()
    runner = _start(pgdata, port, ipcns)
    client = None
    pm = 0
    try:
        pm = runner.pid
        wait_for(lambda: subprocess.run([str(PGBIN / "pg_isready"), "-h", "127.0.0.1", "-p",
                                         str(port)], capture_output=True).returncode == 0,
                 60, "the server to accept connections")
        client = Psql(port)
        client.run("CREATE TABLE kept (n int); INSERT INTO kept VALUES (1), (2);")
        client.run("CREATE TEMP TABLE session_only (n int); "
                   "INSERT INTO session_only VALUES (10), (20), (30); "
                   "SET application_name = 'procsnap-test';")
        backend = client.run("SELECT pg_backend_pid();")
        shm = _shm_ids(pm)
        assert shm, "the postmaster holds no System V segment"
        if ipcns:
            assert os.stat(f"/proc/{pm}/ns/ipc").st_ino != os.stat("/proc/self/ns/ipc").st_ino
        pids = tree_pids(pm)
        assert len(pids) >= 5, pids   # postmaster, background workers, the backend
        check_ok(run_procsnap("dump", "-t", pm, "-D", images_dir, "--tcp-established",
                              timeout=120))
        assert wait_gone(pm, 15)
        assert not any(os.path.exists(f"/proc/{p}") for p in pids if p != pm)
        res = check_ok(run_procsnap("restore", "-D", images_dir, "-d", "--tcp-established",
                                    timeout=120))
        assert tree_pids(pm) == pids, res.stderr
        assert _shm_ids(pm) == shm        # the same segment ids
        # the same session on the same connection
        assert client.run("SELECT pg_backend_pid();") == backend
        assert client.run("SELECT sum(n) FROM session_only;") == ["60"]
        assert client.run("SHOW application_name;") == ["procsnap-test"]
        client.run("INSERT INTO kept VALUES (3);")
        assert client.run("SELECT count(*) FROM kept;") == ["3"]
        # and a new connection
        new = subprocess.run(["runuser", "-u", "nobody", "--", str(PGBIN / "psql"), "-X", "-A",
                              "-t", "-h", "127.0.0.1", "-p", str(port), "-U", "nobody", "-d",
                              "postgres", "-c", "SELECT count(*) FROM kept;"],
                             capture_output=True, text=True, timeout=60)
        assert new.stdout.strip() == "3", new.stderr
    finally:
        if client is not None:
            client.close()
        if pm and os.path.exists(f"/proc/{pm}"):
            os.kill(pm, signal.SIGINT)     # fast shutdown: it removes its segment
            if not wait_gone(pm, 30):
                for p in tree_pids(pm):
                    os.kill(p, signal.SIGKILL)
        if runner.poll() is None:
            try:
                runner.wait(10)
            except subprocess.TimeoutExpired:
                runner.kill()
                runner.wait()
        reap()
