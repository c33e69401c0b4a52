"""The page server (criu's page-server, dump --page-server): a dump's pages
go over TCP to a server that writes the pagemap and pages images into its
own images dir; the dump writes every other image locally.  The wire
protocol is CRIU's (criu/page-xfer.c), so procsnap's dump talks to CRIU
4.2's page server and CRIU's dump to procsnap's (the criu_binary tests).

Targets: memcheck (memory of every shape, each page checked against its
pattern on SIGTERM) and dirtier (rewrites pages while pre-dumps run; every
page checked against its last generation).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from test_shmem import huge_pages  # noqa: F401 -- a fixture
from helpers import (REPO_ROOT, Target, TargetFactory, assert_one_line_error, check_ok,
                     describe, is_untouched, procsnap_cmd, reap, run_procsnap,
                     wait_for, wait_gone)

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

CRIU = os.environ.get("PROCSNAP_CRIU", "")
PSI = struct.Struct("=I4xQQQ")
PS_IOV_OPEN2, PS_IOV_ADD_F, PS_IOV_GET, PS_IOV_CLOSE = 4, 6, 7, 0x1023
PE_PARENT, PE_PRESENT = 1, 4
PAGE = 4096


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class NetNS:
    name: str
    addr: str          # the page server's address, inside the namespace

    def cmd(self, *argv: object) -> list[str]:
        return ["ip", "netns", "exec", self.name, *map(str, argv)]


@pytest.fixture
def netns() -> Iterator[NetNS]:
    """A network namespace joined to ours by a veth pair (10.231.N.1 here,
    .2 there); removed afterwards."""
    n = os.getpid() % 100000
    name, here, there = f"psnap-ps{n}", f"psa{n}", f"psb{n}"
    net = f"10.231.{n % 250}."
    steps = [["ip", "netns", "add", name],
             ["ip", "link", "add", here, "type", "veth", "peer", "name", there],
             ["ip", "link", "set", there, "netns", name],
             ["ip", "addr", "add", net + "1/30", "dev", here],
             ["ip", "link", "set", here, "up"],
             ["ip", "-n", name, "addr", "add", net + "2/30", "dev", there],
             ["ip", "-n", name, "link", "set", there, "up"],
             ["ip", "-n", name, "link", "set", "lo", "up"]]
    try:
        for s in steps:
            subprocess.run(s, check=True, capture_output=True)
        yield NetNS(name, net + "2")
    finally:
        subprocess.run(["ip", "link", "del", here], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def servers() -> Iterator[list[int]]:
    """Pids of the page servers a test started (daemons, ours): whatever is
    left at the end is killed."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        wait_gone(pid, 10)
    reap()


def _start_server(servers: list[int], d: Path, port: int, *extra: object,
                  ns: NetNS | None = None, criu: bool = False) -> int:
    """A page server daemon (-d) on ``d``; returns its pid."""
    pidfile = d.parent / f"{d.name}.ps.pid"
    d.mkdir(parents=True, exist_ok=True)   # criu wants it there
    argv = ([CRIU, "page-server", "-o", d.parent / f"{d.name}.ps.log", "-v4"] if criu
            else procsnap_cmd("page-server"))
    argv = [*map(str, argv), "-D", str(d), "--port", str(port), "-d", "--pidfile",
            str(pidfile), *map(str, extra)]
    if ns is not None:
        argv = ns.cmd(*argv)
    res = subprocess.run(argv, capture_output=True, text=True, env=_env(),
                         stdin=subprocess.DEVNULL, timeout=30)
    check_ok(res)
    pid = int(pidfile.read_text())
    servers.append(pid)
    return pid


def _merge(local: Path, server: Path) -> None:
    """What a migration does after the dump: the local images join the
    server's pagemaps and pages."""
    for f in local.iterdir():
        if f.is_file():
            shutil.copy(f, server / f.name)


def _pagemap(path: Path) -> list[tuple[int, int, int]]:
    """(vaddr, nr_pages, flags) of a pagemap image, whoever wrote it."""
    from procsnap.images import iter_entries
    from procsnap.images.parent import flags_of
    entries = [e.msg for e in iter_entries(str(path))][1:]
    return [(e.vaddr, e.nr_pages, flags_of(e)) for e in entries]


def _untouched_and_passes(t: Target) -> None:
    assert t.alive(), f"a failed dump killed pid {t.pid}"
    ok, why = is_untouched(t.pid)
    assert ok, f"a failed dump left pid {t.pid} stopped or traced: {why}"
    assert t.verdict(timeout=60) == "PASS", t.output()


# ------------------------------------------------------------ migration ----

def test_dump_to_a_page_server_in_another_netns_restores_there(
        targets: TargetFactory, tmp_path: Path, netns: NetNS, servers: list[int]) -> None:
    t = targets.start("memcheck", "64")
    srv, loc = tmp_path / "srv", tmp_path / "loc"
    server = _start_server(servers, srv, 8676, "--address", netns.addr, ns=netns)
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", loc, "--page-server",
                          "--address", netns.addr, "--port", 8676))
    assert wait_gone(t.pid) and wait_gone(server), "the dump or the server is still there"
    reap()
    # the server wrote the pagemap and pages, the dump everything else
    assert sorted(p.name for p in srv.iterdir() if p.suffix == ".img") == \
        [f"pagemap-{t.pid}.img", "pages-65537.img"]
    assert not list(loc.glob("pagemap-*")) and not list(loc.glob("pages-*"))
    assert (loc / f"mm-{t.pid}.img").exists()
    pm = _pagemap(srv / f"pagemap-{t.pid}.img")
    assert sum(n for _, n, _ in pm) * PAGE == (srv / "pages-65537.img").stat().st_size
    assert sum(n for _, n, _ in pm) * PAGE > 64 << 20
    # the dump's own dir alone cannot be restored: it says where the pages are
    assert_one_line_error(run_procsnap("restore", "-D", loc, "-d"), "sent its pages to a page server")
    _merge(loc, srv)
    res = subprocess.run(netns.cmd(*procsnap_cmd("restore", "-D", str(srv), "-d")),
                         capture_output=True, text=True, env=_env(), timeout=60)
    reap()
    check_ok(res)
    targets.adopt(t.pid, like=t)
    # restored there: in the server's network namespace
    assert os.stat(f"/proc/{t.pid}/ns/net").st_ino == os.stat(f"/run/netns/{netns.name}").st_ino
    assert t.verdict(timeout=60) == "PASS", t.output()


def test_pre_dump_then_dump_through_the_page_server(targets: TargetFactory, tmp_path: Path,
                                                   servers: list[int]) -> None:
    """Pages unchanged since the pre-dump stay in the server's parent
    images (PE_PARENT); the restore from the server's dir reads them there."""
    t = targets.start("dirtier", "128", "2048")     # rewriting 2 MiB/s
    srv, loc = tmp_path / "srv", tmp_path / "loc"
    port = _free_port()
    s1 = _start_server(servers, srv / "p1", port)
    check_ok(run_procsnap("pre-dump", "-t", t.pid, "-D", loc / "p1", "--page-server",
                          "--address", "127.0.0.1", "--port", port))
    assert wait_gone(s1)
    assert t.alive()
    assert (srv / "p1" / f"pagemap-{t.pid}.img").exists()
    port = _free_port()
    _start_server(servers, srv / "d", port, "--prev-images-dir", "../p1")
    t.signal(signal.SIGUSR1)
    before = int(t.wait_line(r"^gen ").split()[1])
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", loc / "d", "--prev-images-dir", "../p1",
                          "--page-server", "--address", "127.0.0.1", "--port", port))
    assert wait_gone(t.pid)
    pm = _pagemap(srv / "d" / f"pagemap-{t.pid}.img")
    in_parent = sum(n for _, n, f in pm if f & PE_PARENT)
    copied = sum(n for _, n, f in pm if f & PE_PRESENT)
    # (it maps 1 MiB every 100 ms, up to 16, while the server starts)
    assert in_parent > 4 * copied, (in_parent, copied)
    _merge(loc / "d", srv / "d")
    reap()
    check_ok(run_procsnap("restore", "-D", srv / "d", "-d"))
    targets.adopt(t.pid, like=t)
    n = len([ln for ln in t.lines() if ln.startswith("gen ")])
    t.signal(signal.SIGUSR1)
    assert int(t.wait_line(r"^gen ", count=n + 1).split()[1]) >= before
    assert t.verdict(timeout=60).startswith("PASS"), t.output()


# -------------------------------------------------------------- failures ----

def test_page_server_killed_halfway_fails_the_dump(targets: TargetFactory, tmp_path: Path,
                                                   servers: list[int]) -> None:
    t = targets.start("memcheck", "512", wait_ready=True)
    srv, loc = tmp_path / "srv", tmp_path / "loc"
    port = _free_port()
    server = _start_server(servers, srv, port)
    dump = subprocess.Popen(procsnap_cmd("dump", "-t", str(t.pid), "-D", str(loc),
                                         "--page-server", "--address", "127.0.0.1",
                                         "--port", str(port)),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    pages = srv / "pages-65537.img"

    def receiving() -> bool:
        return pages.exists() and pages.stat().st_size > 1 << 20
    wait_for(receiving, 30, "the page server to receive pages")
    os.kill(server, signal.SIGSTOP)     # the dump blocks on a full socket...
    time.sleep(0.3)
    os.kill(server, signal.SIGKILL)     # ... and the server dies under it
    out, err = dump.communicate(timeout=60)
    reap()
    res = subprocess.CompletedProcess(dump.args, dump.returncode, out, err)
    assert_one_line_error(res, "page server 127.0.0.1:")
    assert not any(loc.iterdir()) if loc.exists() else True, sorted(os.listdir(loc))
    assert not list(srv.glob("pagemap-*"))
    _untouched_and_passes(t)


def _bad_session(sk: socket.socket, case: str) -> None:
    dst = (4242 << 8) | 1
    if case == "unknown command":
        sk.sendall(PSI.pack(0x99, 0, 0, 0))
        return
    sk.sendall(PSI.pack(PS_IOV_OPEN2, 0, 0, dst))
    assert sk.recv(1) == b"\0"          # no parent image here
    if case == "overlap":
        sk.sendall(PSI.pack(PE_PRESENT << 16 | PS_IOV_ADD_F, 1, 0x2000, dst) + bytes(PAGE))
        sk.sendall(PSI.pack(PE_PRESENT << 16 | PS_IOV_ADD_F, 1, 0x1000, dst) + bytes(PAGE))
    elif case == "no parent":
        sk.sendall(PSI.pack(PE_PARENT << 16 | PS_IOV_ADD_F, 4, 0x1000, dst))
    elif case == "cut short":
        sk.sendall(PSI.pack(PE_PRESENT << 16 | PS_IOV_ADD_F, 4, 0x1000, dst) + bytes(PAGE))
    elif case == "no close":
        sk.sendall(PSI.pack(PE_PRESENT << 16 | PS_IOV_ADD_F, 1, 0x1000, dst) + bytes(PAGE))


@pytest.mark.parametrize("case,expect", [
    ("unknown command", "unknown command 0x99"),
    ("overlap", "overlap or come before"),
    ("no parent", "no parent image"),
    ("cut short", "in the middle of a run of pages"),
    ("no close", "no PS_IOV_CLOSE"),
])
def test_bad_peer_data_to_the_page_server(tmp_path: Path, case: str, expect: str) -> None:
    """One line naming what was wrong, exit 1, and no image kept."""
    srv = tmp_path / "srv"
    port = _free_port()
    r, w = os.pipe()
    p = subprocess.Popen(procsnap_cmd("page-server", "-D", str(srv), "--port", str(port),
                                      "--address", "::1" if case == "overlap" else "127.0.0.1",
                                      "--status-fd", str(w)),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, pass_fds=[w],
                         stderr=subprocess.PIPE, text=True, env=_env())
    os.close(w)
    try:
        # --status-fd: a zero byte once it listens (then the pipe closes)
        with os.fdopen(r, "rb") as status:
            assert status.read() == b"\0"
        sk = socket.socket(socket.AF_INET6 if case == "overlap" else socket.AF_INET)
        sk.connect(("::1" if case == "overlap" else "127.0.0.1", port))
        try:
            _bad_session(sk, case)
        finally:
            sk.close()
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    res = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    assert_one_line_error(res, expect)
    assert not [f for f in srv.iterdir() if f.suffix == ".img"], sorted(os.listdir(srv))


def _fake_server(port: int, case: str) -> threading.Thread:
    """A peer that speaks the protocol wrongly."""
    lsk = socket.socket()
    lsk.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsk.bind(("127.0.0.1", port))
    lsk.listen(1)

    def run() -> None:
        sk, _ = lsk.accept()
        lsk.close()
        with sk:
            if case == "hangs up":
                sk.recv(PSI.size, socket.MSG_WAITALL)     # OPEN2, never answered
                return
            while True:                                   # swallow it all, then say no
                raw = sk.recv(PSI.size, socket.MSG_WAITALL)
                if len(raw) < PSI.size:
                    return
                cmd, n, _, _ = PSI.unpack(raw)
                if cmd == PS_IOV_OPEN2:
                    sk.sendall(b"\0")
                elif cmd & 0xffff == PS_IOV_ADD_F and cmd >> 16 & PE_PRESENT:
                    left = n * PAGE
                    while left:
                        left -= len(sk.recv(min(left, 1 << 20)))
                elif cmd == PS_IOV_CLOSE:
                    sk.sendall(struct.pack("=i", 5))
                    sk.recv(1)
                    return
    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


@pytest.mark.parametrize("case,expect", [("hangs up", "closed the connection"),
                                         ("says no at the end", "status 5")])
def test_bad_peer_data_to_the_dump(targets: TargetFactory, tmp_path: Path, case: str,
                                   expect: str) -> None:
    t = targets.start("memcheck", "16")
    port = _free_port()
    th = _fake_server(port, case)
    res = run_procsnap("dump", "-t", t.pid, "-D", tmp_path / "loc", "--page-server",
                       "--address", "127.0.0.1", "--port", port)
    th.join(10)
    line = assert_one_line_error(res, expect)
    assert f"page server 127.0.0.1:{port}" in line, line
    assert not any((tmp_path / "loc").iterdir())
    _untouched_and_passes(t)


def test_dump_without_a_page_server_fails_before_the_freeze(targets: TargetFactory,
                                                            tmp_path: Path) -> None:
    t = targets.start("memcheck", "16")
    port = _free_port()
    res = run_procsnap("dump", "-t", t.pid, "-D", tmp_path / "loc", "--page-server",
                       "--address", "127.0.0.1", "--port", port)
    assert_one_line_error(res, f"page server 127.0.0.1:{port}: cannot connect")
    _untouched_and_passes(t)


@pytest.mark.parametrize("opt", ["--tls", "--tls-cert=x", "--tls-key=x", "--tls-cacert=x",
                                 "--tls-cacrl=x", "--tls-no-cn-verify", "--ps-socket=3"])
def test_tls_and_ps_socket_refused_by_name(targets: TargetFactory, tmp_path: Path,
                                           opt: str) -> None:
    t = targets.start("memcheck", "16")
    res = run_procsnap("criu", "dump", "-t", t.pid, "-D", tmp_path / "loc", "--page-server",
                       "--address", "127.0.0.1", "--port", "1", opt)
    assert_one_line_error(res, opt.split("=")[0])
    res = run_procsnap("criu", "page-server", "-D", tmp_path / "srv", "--port", "1", opt)
    assert_one_line_error(res, opt.split("=")[0])
    _untouched_and_passes(t)


# ----------------------------------------------------------- lazy pages ----

def test_lazy_page_server_serves_pages_on_demand(targets: TargetFactory, tmp_path: Path,
                                                 servers: list[int]) -> None:
    """page-server --lazy-pages on an images dir answers PS_IOV_GET with the
    saved bytes (fewer pages when the run ends; none where there are none)."""
    from procsnap import images
    t = targets.start("memcheck", "16")
    d = tmp_path / "d"
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", d))
    assert wait_gone(t.pid)
    pm = images.read_image(str(d), "pagemap", t.pid)
    pages = (d / f"pages-{pm[0].pages_id}.img").read_bytes()
    entries, off = [], 0
    for e in pm[1:]:
        entries.append((e.vaddr, e.nr_pages, off))
        off += e.nr_pages * PAGE
    port = _free_port()
    server = _start_server(servers, d, port, "--lazy-pages", "--address", "127.0.0.1")
    with socket.create_connection(("127.0.0.1", port)) as sk:
        def get(addr: int, n: int) -> tuple[int, bytes]:
            sk.sendall(PSI.pack(PS_IOV_GET, n, addr, t.pid))
            cmd, got, vaddr, dst = PSI.unpack(sk.recv(PSI.size, socket.MSG_WAITALL))
            assert (cmd, vaddr, dst) == (PE_PRESENT << 16 | PS_IOV_ADD_F, addr, t.pid)
            return got, sk.recv(got * PAGE, socket.MSG_WAITALL) if got else b""
        big = max(entries, key=lambda e: e[1])
        # the middle of the largest run, asking past its end
        addr = big[0] + (big[1] // 2) * PAGE
        want = big[1] - big[1] // 2
        got, data = get(addr, want + 7)
        assert got == want
        start = big[2] + (big[1] // 2) * PAGE
        assert data == pages[start:start + want * PAGE]
        for vaddr, n, o in entries[:50]:
            got, data = get(vaddr, 1)
            assert got == 1 and data == pages[o:o + PAGE], hex(vaddr)
        assert get(0x1000, 4) == (0, b"")   # nothing there
    assert wait_gone(server)


# ------------------------------------------------------------- CRIU 4.2 ----

@pytest.mark.criu_binary
@pytest.mark.skipif(not CRIU, reason="set PROCSNAP_CRIU=/path/to/criu (CRIU 4.x built from "
                    "source) to test against CRIU's page server and dump")
@pytest.mark.parametrize("way", ["procsnap-dump-to-criu-server",
                                 "criu-dump-to-procsnap-server"])
def test_page_server_with_criu(targets: TargetFactory, tmp_path: Path, servers: list[int],
                               way: str) -> None:
    t = targets.start("memcheck", "32")
    srv, loc = tmp_path / "srv", tmp_path / "loc"
    loc.mkdir()
    port = _free_port()
    server = _start_server(servers, srv, port, "--address", "127.0.0.1",
                           criu=way.startswith("procsnap"))
    if way.startswith("procsnap"):
        check_ok(run_procsnap("dump", "-t", t.pid, "-D", loc, "--page-server",
                              "--address", "127.0.0.1", "--port", port))
    else:
        res = subprocess.run([CRIU, "dump", "-t", str(t.pid), "-D", str(loc), "-o", "dump.log",
                              "-v4", "--page-server", "--address", "127.0.0.1",
                              "--port", str(port)],
                             capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
        reap()
        assert res.returncode == 0, describe(res) + (loc / "dump.log").read_text()[-3000:]
    assert wait_gone(t.pid) and wait_gone(server)
    reap()
    assert (srv / f"pagemap-{t.pid}.img").exists() and (srv / "pages-65537.img").exists()
    _merge(loc, srv)
    # each dir restores with the other tool's images in it: procsnap's restore
    check_ok(run_procsnap("restore", "-D", srv, "-d"))
    targets.adopt(t.pid, like=t)
    assert t.verdict(timeout=60) == "PASS", t.output()


# ------------------------------------------------------------------ RPC ----

def test_rpc_page_server_then_dump_to_it(targets: TargetFactory, tmp_path: Path) -> None:
    """criu's RPC as a client drives a migration: PAGE_SERVER starts a page
    server on the images dir (port 0: any, answered with its pid), DUMP
    with criu_opts.ps sends the pages there."""
    from procsnap.images.pb import rpc_pb2 as R
    from test_rpc import Swrk
    t = targets.start("memcheck", "16")
    srv, loc = tmp_path / "srv", tmp_path / "loc"
    srv.mkdir()
    loc.mkdir()
    sfd, lfd = os.open(srv, os.O_RDONLY), os.open(loc, os.O_RDONLY)
    try:
        s = Swrk()
        resp = s.call(R.criu_req(type=R.PAGE_SERVER, opts=R.criu_opts(
            images_dir_fd=sfd, ps=R.criu_page_server_info(address="127.0.0.1", port=0))))
        rc, err = s.close()
        assert resp.success and resp.ps.port > 0 and resp.ps.pid > 0, (resp, err)
        server = resp.ps.pid
        s = Swrk()
        resp = s.call(R.criu_req(type=R.DUMP, opts=R.criu_opts(
            images_dir_fd=lfd, pid=t.pid, ps=R.criu_page_server_info(
                address="127.0.0.1", port=resp.ps.port))))
        rc, err = s.close()
        assert resp.success, (resp, err)
    finally:
        os.close(sfd)
        os.close(lfd)
    assert wait_gone(t.pid) and wait_gone(server)
    reap()
    assert (srv / f"pagemap-{t.pid}.img").exists() and not list(loc.glob("pagemap-*"))
    _merge(loc, srv)
    check_ok(run_procsnap("restore", "-D", srv, "-d"))
    targets.adopt(t.pid, like=t)
    assert t.verdict(timeout=60) == "PASS", t.output()


# --------------------------------------------------------- shared memory ----

@pytest.mark.parametrize("target", ["shmem_parts", "memfd_shared", "shmem_private.py"])
def test_shared_memory_through_the_page_server(targets: TargetFactory, tmp_path: Path,
                                               servers: list[int], target: str,
                                               request: pytest.FixtureRequest) -> None:
    """Shared anonymous memory (hugetlb too) and memfd contents go to the
    server as shmem pagemaps (dst_id type 2), as CRIU sends them; an object
    also held as a memfd (shmem_private.py: zdtm shmemfd-priv) goes once."""
    from helpers import finish, tree_pids
    if target == "shmem_parts":
        request.getfixturevalue("huge_pages")
    t = targets.start(target)
    if target == "shmem_parts":
        t.wait_line(r"^ready ")
    elif target == "shmem_private.py":
        t.wait_line(r"^ready")
    else:
        t.wait_line(r"^count ", count=2)
    pids = tree_pids(t.pid)
    for pid in pids[1:]:
        targets.adopt(pid)
    srv, loc = tmp_path / "srv", tmp_path / "loc"
    port = _free_port()
    server = _start_server(servers, srv, port)
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", loc, "--page-server",
                          "--address", "127.0.0.1", "--port", port))
    assert all(wait_gone(p) for p in pids) and wait_gone(server)
    reap()
    assert list(srv.glob("pagemap-shmem-*.img")), sorted(os.listdir(srv))
    assert not list(loc.glob("pagemap*")) and not list(loc.glob("pages-*"))
    _merge(loc, srv)
    check_ok(run_procsnap("restore", "-D", srv, "-d"))
    targets.adopt(t.pid, like=t)  # the dumped one's SIGKILL status is not this one's
    if target in ("shmem_parts", "shmem_private.py"):
        finish(t)
    else:
        n = len([ln for ln in t.lines() if ln.startswith("count ")])
        t.wait_line(r"^count ", count=n + 3)
        finish(t)


# ---------------------------------------------------- criu's command line ----

def test_criu_command_line(targets: TargetFactory, tmp_path: Path, servers: list[int]) -> None:
    """procsnap as criu: page-server -d --pidfile (relative: to -W/-D),
    dump --page-server; --address without --page-server is an error."""
    t = targets.start("memcheck", "16")
    srv, loc = tmp_path / "srv", tmp_path / "loc"
    res = run_procsnap("criu", "dump", "-t", t.pid, "-D", loc, "--address", "127.0.0.1")
    assert_one_line_error(res, "--address/--port")
    port = _free_port()
    check_ok(run_procsnap("criu", "page-server", "-D", srv, "--address", "127.0.0.1",
                          "--port", port, "-d", "--pidfile", "ps.pid"))
    server = int((srv / "ps.pid").read_text())
    servers.append(server)
    check_ok(run_procsnap("criu", "dump", "-t", t.pid, "-D", loc, "-o", "dump.log", "-v4",
                          "--page-server", "--address", "127.0.0.1", "--port", port))
    assert wait_gone(t.pid) and wait_gone(server)
    reap()
    # stats-dump counts the pages sent (zdtm.py checks them against pages-*.img)
    from procsnap import images
    st = images.read_one(str(loc), "stats").dump
    pm = _pagemap(srv / f"pagemap-{t.pid}.img")
    assert st.pages_written == sum(n for _, n, f in pm if f & PE_PRESENT) > 0, st
    assert st.pages_written * PAGE == (srv / "pages-65537.img").stat().st_size
    _merge(loc, srv)
    check_ok(run_procsnap("criu", "restore", "-D", srv, "-d"))
    targets.adopt(t.pid, like=t)
    assert t.verdict(timeout=60) == "PASS", t.output()


@pytest.mark.criu_binary
@pytest.mark.skipif(not CRIU, reason="set PROCSNAP_CRIU=/path/to/criu (CRIU 4.x built from "
                    "source) to test against CRIU's page server")
def test_pre_dump_and_dump_to_crius_page_server(targets: TargetFactory, tmp_path: Path,
                                                servers: list[int]) -> None:
    """procsnap's pre-dump then dump, both to CRIU 4.2's page server (its
    second run with --prev-images-dir): CRIU's server checks every hole
    against its parent images, the restore reads them there."""
    t = targets.start("dirtier", "64")
    srv, loc = tmp_path / "srv", tmp_path / "loc"
    port = _free_port()
    s1 = _start_server(servers, srv / "p1", port, "--address", "127.0.0.1", criu=True)
    check_ok(run_procsnap("pre-dump", "-t", t.pid, "-D", loc / "p1", "--page-server",
                          "--address", "127.0.0.1", "--port", port))
    assert wait_gone(s1)
    port = _free_port()
    s2 = _start_server(servers, srv / "d", port, "--address", "127.0.0.1",
                       "--prev-images-dir", "../p1", criu=True)
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", loc / "d", "--prev-images-dir", "../p1",
                          "--page-server", "--address", "127.0.0.1", "--port", port))
    assert wait_gone(t.pid) and wait_gone(s2)
    reap()
    pm = _pagemap(srv / "d" / f"pagemap-{t.pid}.img")
    assert sum(n for _, n, f in pm if f & PE_PARENT) > sum(n for _, n, f in pm if f & PE_PRESENT)
    _merge(loc / "d", srv / "d")
    check_ok(run_procsnap("restore", "-D", srv / "d", "-d"))
    targets.adopt(t.pid, like=t)
    assert t.verdict(timeout=60).startswith("PASS"), t.output()


@pytest.mark.criu_binary
@pytest.mark.skipif(not CRIU, reason="set PROCSNAP_CRIU=/path/to/criu (CRIU 4.x built from "
                    "source) to feed CRIU's lazy-pages daemon")
def test_crius_lazy_restore_fed_by_our_page_server(targets: TargetFactory, tmp_path: Path,
                                                   servers: list[int]) -> None:
    """PS_IOV_GET with CRIU 4.2 as the client: procsnap dumps a counter; a
    copy of the images marks its private anonymous pages lazy (PE_LAZY, no
    bytes: CRIU's dump --lazy-pages writes them so); CRIU's lazy-pages
    daemon fetches them from ``procsnap page-server --lazy-pages`` on the
    full images while CRIU's restore --lazy-pages runs the counter."""
    from procsnap import images
    t = targets.start("criu_tiny", "counter")
    full, lazy = tmp_path / "full", tmp_path / "lazy"
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", full))
    assert wait_gone(t.pid)
    reap()
    shutil.copytree(full, lazy)
    mm = images.read_one(str(lazy), "mm", t.pid)
    anon = [(v.start, v.end) for v in mm.vmas
            if v.status & (1 << 9) and v.status & 1 and not v.status & (1 << 3 | 1 << 12)]
    pm = images.read_image(str(lazy), "pagemap", t.pid)
    data = (full / f"pages-{pm[0].pages_id}.img").read_bytes()
    kept, off, n_lazy = b"", 0, 0
    for e in pm[1:]:
        size = e.nr_pages * PAGE
        if any(a <= e.vaddr < b for a, b in anon):
            e.flags, n_lazy = 2, n_lazy + e.nr_pages      # PE_LAZY
        else:
            kept += data[off:off + size]
        off += size
    assert n_lazy >= 2, "no private anonymous page to serve lazily"
    (lazy / f"pages-{pm[0].pages_id}.img").write_bytes(kept)
    images.write_image(str(lazy), "pagemap", pm, t.pid)
    port = _free_port()
    server = _start_server(servers, full, port, "--lazy-pages", "--address", "127.0.0.1")
    res = subprocess.run([CRIU, "lazy-pages", "--page-server", "--address", "127.0.0.1",
                          "--port", str(port), "-D", str(lazy), "-d", "-o", "lp.log", "-v4",
                          "--pidfile", str(tmp_path / "lp.pid")],
                         capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
    assert res.returncode == 0, describe(res)
    servers.append(int((tmp_path / "lp.pid").read_text()))
    res = subprocess.run([CRIU, "restore", "--lazy-pages", "-D", str(lazy), "-d", "-o",
                          "r.log", "-v4"], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=60)
    reap()
    assert res.returncode == 0, describe(res) + (lazy / "r.log").read_text()[-3000:]
    targets.adopt(t.pid, like=t)
    n = sum(1 for ln in t.lines() if ln.startswith("tick "))
    t.wait_line(r"^tick ", count=n + 3)
    assert wait_gone(server, 20), (lazy / "lp.log").read_text()[-3000:]
    assert "UFFD transferred pages: (%d/%d)" % (n_lazy, n_lazy) in (lazy / "lp.log").read_text()
    assert t.verdict(timeout=30) == "PASS", t.output()
