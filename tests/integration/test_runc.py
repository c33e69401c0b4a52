"""runc checkpoints and restores a container with procsnap as its criu.

runc never runs criu's command line: ``runc --criu PATH checkpoint`` and
``restore`` start ``PATH swrk FD`` and speak criu's RPC (procsnap/criu/rpc.py),
handing over what their containers need (a root, every bind mount as an
external one, cgroups left to runc, an empty network namespace runc sets
up, ...; ../shared/runc/criu-rpc-runc-1.1.5.txt).  Debian's runc and
busybox-static must be installed (the test installs nothing).

The container: an OCI bundle made by ``runc spec`` over a busybox-static
root file system, no terminal, its process a shell counter appending to
/out/counter.log, /out being a bind mount of a host directory.  runc keeps
its state under a private --root; every container is deleted and its
cgroups removed at teardown.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from typing import Any, Iterator

import pytest

from containers import Runc, log_tail, runc_bundle, runc_missing
from helpers import check_continuity, is_untouched, proc_exists, reap, wait_for, wait_gone

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]


@pytest.fixture
def rc() -> Iterator[Runc]:
    missing = runc_missing()
    if missing:
        pytest.skip("not installed: " + ", ".join(missing) +
                    " (Debian: apt-get install runc busybox-static)")
    with runc_bundle() as r:
        yield r


def _lo(r: Runc, cid: str) -> str:
    """The loopback as the container's own ``ip`` shows it."""
    return r.exec(cid, "ip addr show dev lo")


def _check_lo_up(r: Runc, cid: str) -> None:
    lo = _lo(r, cid)
    first = lo.splitlines()[0]
    assert ",UP" in first and "LOWER_UP" in first, lo
    assert "inet 127.0.0.1/8" in lo and "inet6 ::1/128" in lo, lo


def test_runc_checkpoint_restore(rc: Runc) -> None:
    """Checkpoint (the container stops, runc forgets it), restore -d (the
    same pid runs on, the counter with no gap or repeat), twice; runc exec
    works in the restored container, whose loopback is UP with 127.0.0.1
    and ::1 as before (runc asks for an empty network namespace: criu
    leaves it DOWN)."""
    r = rc
    cid = r.id("c1")
    r.start(cid)
    _check_lo_up(r, cid)
    images = r.base / "images"
    for rnd in range(2):
        pid = r.pid(cid)
        t0 = time.monotonic()
        r.checkpoint(cid, images)
        t_dump = time.monotonic() - t0
        assert r.status(cid) == "absent", f"round {rnd}: {r.status(cid)} after checkpoint"
        wait_for(lambda: (reap(), not proc_exists(pid))[1], 10, f"the dumped init {pid} to go")
        last = r.numbers()[-1]
        time.sleep(0.3)
        assert r.numbers()[-1] == last, f"round {rnd}: the counter runs on after the dump"
        t0 = time.monotonic()
        r.restore(cid, images)
        t_restore = time.monotonic() - t0
        print(f"round {rnd}: runc checkpoint {t_dump:.2f} s, restore {t_restore:.2f} s")
        assert r.status(cid) == "running", f"round {rnd}: {r.status(cid)} after restore"
        assert r.pid(cid) == pid, f"round {rnd}: init is {r.pid(cid)}, was {pid}"
        wait_for(lambda: r.numbers()[-1] >= last + 5, 10, "the counter to go on")
        check_continuity(r.numbers())
        out = r.exec(cid, "tail -n 1 /out/counter.log; grep NoNewPrivs /proc/1/status")
        assert int(out.split()[0]) > last, out
        assert "NoNewPrivs:\t1" in out, out   # runc's spec: noNewPrivileges
        _check_lo_up(r, cid)


def test_runc_leave_running(rc: Runc) -> None:
    """checkpoint --leave-running: the container runs on, untouched; killed
    and restored from those images, it goes on from where the dump saw it."""
    r = rc
    cid = r.id("c1")
    r.start(cid)
    images = r.base / "images"
    before = r.numbers()[-1]
    r.checkpoint(cid, images, "--leave-running")
    after = r.numbers()[-1]
    assert r.status(cid) == "running"
    wait_for(lambda: r.numbers()[-1] >= after + 5, 10, "the counter to run on after the dump")
    pid = r.pid(cid)
    _check_lo_up(r, cid)
    r.runc("delete", "--force", cid)
    wait_for(lambda: (reap(), not proc_exists(pid))[1], 10, f"the killed init {pid} to go")
    n_killed = len(r.numbers())
    check_continuity(r.numbers())
    r.restore(cid, images)
    assert r.status(cid) == "running" and r.pid(cid) == pid
    wait_for(lambda: len(r.numbers()) >= n_killed + 5, 10, "the restored counter")
    resumed = r.numbers()[n_killed:]
    # the restored shell goes on from the value it had at the dump
    assert before + 1 <= resumed[0] <= after + 1, (before, after, resumed[:5])
    check_continuity(resumed, start=resumed[0])
    _check_lo_up(r, cid)


def test_runc_restore_under_new_id(rc: Runc) -> None:
    """A checkpoint restored under another container id (as when a container
    moves): runc knows it by the new id, exec works there, the counter goes on."""
    r = rc
    c1, c2 = r.id("c1"), r.id("c2")
    r.start(c1)
    images = r.base / "images"
    pid = r.pid(c1)
    r.checkpoint(c1, images)
    wait_for(lambda: (reap(), not proc_exists(pid))[1], 10, f"the dumped init {pid} to go")
    last = r.numbers()[-1]
    r.restore(c2, images)
    assert r.status(c1) == "absent"
    assert r.status(c2) == "running" and r.pid(c2) == pid
    wait_for(lambda: r.numbers()[-1] >= last + 5, 10, "the counter to go on")
    check_continuity(r.numbers())
    assert int(r.exec(c2, "tail -n 1 /out/counter.log").split()[0]) > last
    _check_lo_up(r, c2)


def test_runc_restore_second_copy_while_first_runs(rc: Runc) -> None:
    """checkpoint --leave-running, then restore the images as c2 while c1
    runs on: the copy keeps its pids inside its pid namespace (its init is
    pid 1 there) and takes free host pids, as with criu; both count."""
    r = rc
    c1, c2 = r.id("c1"), r.id("c2")
    r.start(c1)
    images = r.base / "images"
    r.checkpoint(c1, images, "--leave-running")
    c1_pid = r.pid(c1)
    r.restore(c2, images)
    assert r.status(c1) == "running" and r.pid(c1) == c1_pid
    assert r.status(c2) == "running"
    c2_pid = r.pid(c2)
    assert c2_pid != c1_pid
    assert r.exec(c2, "grep NSpid /proc/1/status").split() == ["NSpid:", "1"]
    with open(f"/proc/{c2_pid}/status") as f:
        nspid = next(line.split()[1:] for line in f if line.startswith("NSpid:"))
    assert nspid == [str(c2_pid), "1"], nspid
    n = len(r.numbers())
    wait_for(lambda: len(r.numbers()) >= n + 20, 10, "two counters")
    _check_lo_up(r, c2)


def test_runc_stdio_pipe_handed_back(rc: Runc) -> None:
    """A container whose stdout is a pipe held outside it (by the test, as
    Podman's conmon holds one): the checkpoint saves that end as external;
    a restore that is not given the pipe back is refused naming it
    (descriptors.json edited so runc passes no --inherit-fd) and leaves
    nothing running; runc's own restore hands the new pipe over
    (--inherit-fd fd[1]:pipe:[INO]) and what the init writes to its fd 1
    reaches the test's new pipe."""
    r = rc
    cid = r.id("c1")
    rd, wr = os.pipe()
    try:
        res = subprocess.run(["runc", "--root", r.state, "--log", r.base / "runc.log", "run",
                              "-d", "--bundle", r.bundle, cid], stdin=subprocess.DEVNULL,
                             stdout=wr, stderr=subprocess.DEVNULL, timeout=60)
    finally:
        os.close(wr)
    try:
        # the test holds the read end across the checkpoint (a dump with
        # bytes in flight in it would be refused; none are written)
        assert res.returncode == 0, log_tail(r.base / "runc.log")
        wait_for(lambda: len(r.numbers()) >= 5, 20, "the container's counter")
        pid = r.pid(cid)
        link = os.readlink(f"/proc/{pid}/fd/1")
        assert link.startswith("pipe:["), link
        images = r.base / "images"
        r.checkpoint(cid, images)
    finally:
        os.close(rd)
    wait_for(lambda: (reap(), not proc_exists(pid))[1], 10, f"the dumped init {pid} to go")
    desc_path = images / "descriptors.json"
    desc = json.loads(desc_path.read_text())
    assert desc[1] == link, desc
    desc_path.write_text(json.dumps([d if i != 1 else "/dev/null" for i, d in enumerate(desc)]))
    res = r.runc("restore", "-d", "--image-path", images, "--bundle", r.bundle, cid,
                 detached=True, check=False)
    assert res.returncode != 0  # type: ignore[attr-defined]
    log = (images / "restore.log").read_text()
    assert f"{link}: its write end was held by the tree" in log and \
        f"--inherit-fd fd[N]:{link}" in log, log[-2000:]
    # what the failed restore made is killed (a zombie of ours at most)
    wait_for(lambda: (reap(), not proc_exists(pid))[1], 10, f"the failed restore's {pid}")
    assert r.status(cid) == "absent"
    desc_path.write_text(json.dumps(desc))
    rd, wr = os.pipe()
    try:
        res2 = subprocess.run(["runc", "--root", r.state, "--criu", r.criu, "--log",
                               r.base / "runc.log", "restore", "-d", "--image-path", images,
                               "--bundle", r.bundle, cid], stdin=subprocess.DEVNULL,
                              stdout=wr, stderr=subprocess.DEVNULL, timeout=120)
        os.close(wr)
        wr = -1
        assert res2.returncode == 0, log_tail(images / "restore.log", r.base / "runc.log")
        assert r.status(cid) == "running"
        r.exec(cid, "echo from-the-restored-init > /proc/1/fd/1")
        os.set_blocking(rd, False)
        got = b""
        deadline = time.monotonic() + 10
        while b"\n" not in got and time.monotonic() < deadline:
            try:
                got += os.read(rd, 4096)
            except BlockingIOError:
                time.sleep(0.05)
        assert got == b"from-the-restored-init\n", got
    finally:
        if wr >= 0:
            os.close(wr)
        os.close(rd)


class _ConsoleSocket:
    """A console socket (runc's --console-socket): runc sends the pty master
    of a container with a terminal to it (SCM_RIGHTS); ``master()`` waits
    for it.  Closed (with the master) at the end."""

    def __init__(self, path: Any) -> None:
        self.path = path
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(str(path))
        self.srv.listen(1)
        self.masters: list[int] = []
        self.th = threading.Thread(target=self._serve, daemon=True)
        self.th.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.srv.accept()
        except OSError:
            return
        with conn:
            _, anc, _, _ = conn.recvmsg(4096, socket.CMSG_LEN(4))
            for level, typ, data in anc:
                if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                    self.masters.append(int.from_bytes(data[:4], "little"))

    def master(self) -> int:
        self.th.join(20)
        assert self.masters, "runc sent no pty master"
        return self.masters[0]

    def close(self) -> None:
        self.srv.close()
        for fd in self.masters:
            os.close(fd)


# The process of a container with a terminal: the counter in the
# background, and, once /out/go exists, a loop echoing every line read
# from the terminal (until then what is typed stays queued).
TERMINAL_SCRIPT = ("(i=0; while :; do i=$((i+1)); echo $i >> /out/counter.log; sleep 0.05; "
                   "done) </dev/null & until [ -e /out/go ]; do sleep 0.05; done; "
                   "while read -r l; do echo \"echo: $l\"; done")


def _terminal_bundle(r: Runc) -> None:
    cfg_path = r.bundle / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["process"]["terminal"] = True
    cfg["process"]["args"] = ["/bin/sh", "-c", TERMINAL_SCRIPT]
    cfg_path.write_text(json.dumps(cfg, indent=1))


def _echoes(master: int, line: str, timeout: float = 10) -> str:
    """Type ``line`` on the container's terminal; what it answered."""
    import select
    os.write(master, line.encode() + b"\n")
    got = b""
    want = f"echo: {line}".encode()
    deadline = time.monotonic() + timeout
    while want not in got:
        left = deadline - time.monotonic()
        assert left > 0, f"no {want!r} from the container's terminal: {got[-300:]!r}"
        ready, _, _ = select.select([master], [], [], left)
        if ready:
            got += os.read(master, 4096)
    return got.decode(errors="replace")


def test_runc_terminal_container(rc: Runc) -> None:
    """A container whose process has a terminal (terminal: true: runc sends
    the pty master to the console socket the test holds; the pts is in the
    container's own devpts, the init's controlling terminal).  runc asks
    criu for orphan_pts_master: checkpoint saves the pts, restore makes a
    new pair in the container's new devpts and sends the master over the
    RPC socket (SCM_RIGHTS with the orphan-pts-master notification); runc
    hands it to the new console socket.  Twice: the counter goes on, the
    init's fds 0-2 and controlling terminal are the new pts, and a line
    typed on the new master is read by the container's shell and echoed;
    a line typed before the first checkpoint, not read yet, is read after
    the restore."""
    r = rc
    _terminal_bundle(r)
    cons = _ConsoleSocket(r.base / "console.sock")
    socks = [cons]
    cid = r.id("t1")
    try:
        res = r.runc("run", "-d", "--console-socket", cons.path, "--bundle", r.bundle, cid,
                     detached=True, check=False)
        assert res.returncode == 0, log_tail(r.base / "runc.log")  # type: ignore[attr-defined]
        wait_for(lambda: len(r.numbers()) >= 5, 20, "the container's counter")
        os.write(cons.master(), b"typed before the checkpoint\n")  # queued: /out/go is absent
        images = r.base / "images"
        for rnd in range(2):
            pid = r.pid(cid)
            r.checkpoint(cid, images)
            assert r.status(cid) == "absent"
            assert wait_gone(pid, 10)
            last = r.numbers()[-1]
            cons = _ConsoleSocket(r.base / f"console{rnd}.sock")
            socks.append(cons)
            r.restore(cid, images, "--console-socket", cons.path)
            assert r.status(cid) == "running" and r.pid(cid) == pid
            wait_for(lambda: r.numbers()[-1] >= last + 5, 10, "the counter to go on")
            check_continuity(r.numbers())
            m = cons.master()
            pts = {os.stat(f"/proc/{pid}/fd/{n}").st_rdev for n in (0, 1, 2)}
            with open(f"/proc/{pid}/stat") as f:
                tty_nr = int(f.read().rsplit(")", 1)[1].split()[4])
            assert len(pts) == 1 and tty_nr in pts, (pts, tty_nr)
            assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/pts/0"
            if rnd == 0:
                (r.out / "go").write_text("")
                assert "echo: typed before the checkpoint" in _echoes(m, "first")
            assert f"echo: round {rnd}" in _echoes(m, f"round {rnd}")
            assert int(r.exec(cid, "tail -n 1 /out/counter.log").split()[0]) > last
    finally:
        for c in socks:
            c.close()


def test_runc_terminal_container_refused(rc: Runc) -> None:
    """The same container dumped by criu's command line without
    --orphan-pts-master (its pts lives in the container's devpts, its
    master is runc's): refused naming the pid, the fd and the pts, and the
    container runs on untouched (counter, runc exec, its terminal)."""
    import subprocess
    r = rc
    _terminal_bundle(r)
    cons = _ConsoleSocket(r.base / "console.sock")
    cid = r.id("t1")
    try:
        res = r.runc("run", "-d", "--console-socket", cons.path, "--bundle", r.bundle, cid,
                     detached=True, check=False)
        assert res.returncode == 0, log_tail(r.base / "runc.log")  # type: ignore[attr-defined]
        wait_for(lambda: len(r.numbers()) >= 5, 20, "the container's counter")
        pid = r.pid(cid)
        images = r.base / "images"
        res = subprocess.run([str(r.criu), "dump", "-t", str(pid), "-D", str(images),
                              "--root", str(r.bundle / "rootfs"), "--ext-mount-map", "auto"],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode != 0, res.stderr
        errors = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(errors) == 1 and f"pid {pid}: fd 0: " in errors[0] \
            and "/dev/pts/0" in errors[0] and "--orphan-pts-master" in errors[0], res.stderr
        assert r.status(cid) == "running" and r.pid(cid) == pid
        ok, why = is_untouched(pid)
        assert ok, why
        n = r.numbers()[-1]
        wait_for(lambda: r.numbers()[-1] >= n + 5, 10, "the counter to run on")
        assert int(r.exec(cid, "tail -n 1 /out/counter.log").split()[0]) > n
        (r.out / "go").write_text("")
        assert "echo: still" in _echoes(cons.master(), "still")
    finally:
        cons.close()


def test_runc_pre_dump_then_checkpoint(rc: Runc) -> None:
    """``runc checkpoint --pre-dump`` (runc asks FEATURE_CHECK mem_track
    first: procsnap tracks writes with userfaultfd write-protect), then the
    final checkpoint with ``--parent-path``: the images link the pre-dump
    as their parent, the restored counter goes on without a gap."""
    r = rc
    cid = r.id("c1")
    r.start(cid)
    pre, images = r.base / "pre", r.base / "images"
    r.checkpoint(cid, pre, "--pre-dump")
    assert r.status(cid) == "running", r.status(cid)
    assert (pre / "inventory.img").exists() and list(pre.glob("pages-*.img"))
    before = r.numbers()[-1]
    wait_for(lambda: r.numbers()[-1] >= before + 3, 10, "the counter to run on after the pre-dump")
    pid = r.pid(cid)
    r.checkpoint(cid, images, "--parent-path", "../pre")
    assert os.readlink(images / "parent") == "../pre"
    assert r.status(cid) == "absent"
    wait_for(lambda: (reap(), not proc_exists(pid))[1], 10, f"the dumped init {pid} to go")
    last = r.numbers()[-1]
    r.restore(cid, images)
    assert r.status(cid) == "running" and r.pid(cid) == pid
    wait_for(lambda: r.numbers()[-1] >= last + 5, 10, "the counter to go on")
    check_continuity(r.numbers())
