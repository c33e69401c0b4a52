"""criu's RPC, driven the way go-criu (runc, Podman) drives it.

A Python client built on procsnap's own rpc.proto bindings starts
``criu swrk FD`` on one end of a socketpair(AF_UNIX, SOCK_SEQPACKET) and
speaks criu_req / criu_resp: VERSION, FEATURE_CHECK, CHECK, DUMP with
images_dir_fd (an fd of the client only: swrk must open it through
/proc/<client>/fd/N), RESTORE, the NOTIFY callbacks the client answers,
and malformed requests (garbage, a truncated message, an unknown type,
a pid that does not exist...), each of which gets a failed answer naming
what is wrong while the target runs on untouched.  ``criu service`` is
checked to stay up across bad clients.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from helpers import (REPO_ROOT, Target, TargetFactory, check_continuity, is_untouched,
                     proc_ppid, read_numbers, read_status, reap, wait_for, wait_gone,
                     wait_numbers)
from procsnap.images.pb import rpc_pb2 as R

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"]
                                          if env.get("PYTHONPATH") else "")
    return env


class Swrk:
    """One ``criu swrk FD`` session, as go-criu runs it."""

    def __init__(self) -> None:
        self.sk, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # criu's stdio: /dev/null, as runc's (our stderr is read for tracebacks)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "procsnap.criu", "swrk", str(theirs.fileno())],
            pass_fds=[theirs.fileno()], env=_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        theirs.close()
        self.notes: list[tuple[str, int | None, str]] = []

    def send(self, req: Any) -> None:
        self.sk.send(req if isinstance(req, bytes) else req.SerializeToString())

    def recv(self, timeout: float = 60) -> Any:
        self.sk.settimeout(timeout)
        data = self.sk.recv(1 << 16)
        assert data, "swrk closed the socket without an answer"
        return R.criu_resp.FromString(data)

    def call(self, req: Any, answer: Callable[[str, int | None], bool] | None = None,
             timeout: float = 60) -> Any:
        """Send req; answer NOTIFY messages (answer(script, pid) -> success)
        until the final response, which is returned."""
        self.send(req)
        while True:
            resp = self.recv(timeout)
            if resp.type != R.NOTIFY:
                return resp
            pid = resp.notify.pid if resp.notify.HasField("pid") else None
            ok = answer(resp.notify.script, pid) if answer is not None else True
            self.notes.append((resp.notify.script, pid, "ok" if ok else "no"))
            self.send(R.criu_req(type=R.NOTIFY, notify_success=ok))

    def close(self, timeout: float = 30) -> tuple[int, str]:
        self.sk.close()
        try:
            _, err = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        reap()
        return self.proc.returncode, err.decode(errors="replace")


@pytest.fixture
def swrk() -> Iterator[Callable[[], Swrk]]:
    made: list[Swrk] = []

    def new() -> Swrk:
        s = Swrk()
        made.append(s)
        return s
    yield new
    for s in made:
        if s.proc.poll() is None:
            s.close()


def one_call(swrk: Callable[[], Swrk], req: Any, **kw: Any) -> tuple[Any, Swrk]:
    s = swrk()
    resp = s.call(req, **kw)
    rc, err = s.close()
    assert "Traceback" not in err, err
    assert rc == (0 if resp.success else 1), (rc, resp, err)
    return resp, s


def start_counter(targets: TargetFactory) -> tuple[Target, Path]:
    numbers = targets.workdir / "counter.numbers"
    t = targets.start("counter", str(numbers))
    wait_numbers(numbers, 5)
    return t, numbers


def runs_on(t: Target, numbers: Path) -> None:
    """The target was never frozen for good: untraced, still counting."""
    ok, why = is_untouched(t.pid)
    assert ok and t.alive(), why
    n = read_numbers(numbers)[-1]
    wait_numbers(numbers, n + 3)


def dir_fd(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


def test_version_feature_check_and_check(swrk: Callable[[], Swrk]) -> None:
    resp, _ = one_call(swrk, R.criu_req(type=R.VERSION))
    assert resp.type == R.VERSION and resp.success
    v = resp.version
    assert (v.major_number, v.minor_number) == (4, 2)
    # go-criu's arithmetic (a gitid counts as the next minor): runc and
    # Podman want >= 31100 and print "Using CRIU 40200"
    n = v.major_number * 10000 + v.minor_number * 100 + (v.sublevel if v.HasField("sublevel")
                                                         else 0)
    if v.HasField("gitid"):
        n = n - n % 100 + 100
    assert n == 40200

    resp, _ = one_call(swrk, R.criu_req(type=R.FEATURE_CHECK, features=R.criu_features(
        mem_track=True, lazy_pages=True, pidfd_store=True)))
    assert resp.type == R.FEATURE_CHECK and resp.success
    f = resp.features
    assert all(f.HasField(n) for n in ("mem_track", "lazy_pages", "pidfd_store"))
    assert not f.pidfd_store   # procsnap has no pidfd store
    assert f.mem_track         # pre-dump tracks writes (uffd-wp + PAGEMAP_SCAN: test_predump.py)
    assert f.lazy_pages      # restore with lazy_pages and a lazy-pages daemon (test_lazy.py)

    # keep_open: several requests in one session (criu: VERSION, FEATURE_CHECK)
    s = swrk()
    assert s.call(R.criu_req(type=R.VERSION, keep_open=True)).success
    assert s.call(R.criu_req(type=R.FEATURE_CHECK, features=R.criu_features(),
                             keep_open=True)).success
    resp = s.call(R.criu_req(type=R.CHECK))
    assert resp.type == R.CHECK and resp.success, resp
    assert s.close()[0] == 0


def test_dump_restore_with_images_dir_fd(swrk: Callable[[], Swrk], targets: TargetFactory,
                                         tmp_path: Path) -> None:
    t, numbers = start_counter(targets)
    images, work = tmp_path / "images", tmp_path / "work-dir"
    images.mkdir()
    work.mkdir()
    # fds of this process only (not inherited by swrk): it opens
    # /proc/<our pid>/fd/N, as criu
    ifd, wfd = dir_fd(images), dir_fd(work)
    try:
        resp, _ = one_call(swrk, R.criu_req(type=R.DUMP, opts=R.criu_opts(
            images_dir_fd=ifd, pid=t.pid, log_file="dump.log", log_level=4,
            file_locks=True, manage_cgroups=True)))
        assert resp.type == R.DUMP and resp.success, resp
        assert resp.dump.HasField("restored") and not resp.dump.restored
        assert wait_gone(t.pid, 10), "the dump did not end the tree"
        assert (images / "inventory.img").exists() and (images / "pstree.img").exists()
        log = (images / "dump.log").read_text()   # log_file: in the images dir by default
        assert "Dumping finished successfully" in log and "Error" not in log, log
        at_dump = read_numbers(numbers)

        targets.adopt(t.pid, like=t)
        r, w = os.pipe()                  # status_fd: an fd of ours, reopened by swrk
        try:
            resp, _ = one_call(swrk, R.criu_req(type=R.RESTORE, opts=R.criu_opts(
                images_dir_fd=ifd, work_dir_fd=wfd, log_file="restore.log", log_level=4,
                manage_cgroups_mode=R.SOFT, status_fd=w)))
            os.close(w)
            assert os.read(r, 16) == b"\0"      # criu's: one zero byte once restored
        finally:
            os.close(r)
        assert resp.type == R.RESTORE and resp.success, resp
        assert resp.restore.pid == t.pid
        rlog = (work / "restore.log").read_text()   # relative to work_dir_fd
        assert "Restore finished successfully" in rlog and "Error" not in rlog, rlog
        assert not (images / "restore.log").exists()
        wait_for(t.alive, 5, "the restored counter")
        ok, why = is_untouched(t.pid)
        assert ok, why
        check_continuity(wait_numbers(numbers, at_dump[-1] + 5))
        assert t.verdict().startswith("PASS")
    finally:
        os.close(ifd)
        os.close(wfd)


def test_notify_callbacks_answered_by_the_client(swrk: Callable[[], Swrk],
                                                 targets: TargetFactory,
                                                 tmp_path: Path) -> None:
    t, numbers = start_counter(targets)
    images = tmp_path / "images"
    images.mkdir()
    ifd = dir_fd(images)
    seen: list[tuple[str, str]] = []

    def answer(script: str, pid: int | None) -> bool:
        # at each stage, what the client can see of the tree
        st = read_status(t.pid) if os.path.exists(f"/proc/{t.pid}") else {}
        seen.append((script, "traced" if st.get("TracerPid", "0") != "0" else
                     "running" if st else "gone"))
        return True

    try:
        resp, s = one_call(swrk, R.criu_req(type=R.DUMP, opts=R.criu_opts(
            images_dir_fd=ifd, pid=t.pid, notify_scripts=True)), answer=answer)
        assert resp.success, resp
        # criu's order: pre-dump before the freeze, query-ext-files once
        # frozen, post-dump with the images written and the tree still held
        assert [n[0] for n in s.notes] == ["pre-dump", "query-ext-files", "post-dump"]
        assert seen == [("pre-dump", "running"), ("query-ext-files", "traced"),
                        ("post-dump", "traced")]
        assert all(pid is None for _, pid, _ in s.notes)
        assert wait_gone(t.pid, 10)
        at_dump = read_numbers(numbers)

        seen.clear()
        targets.adopt(t.pid, like=t)
        resp, s = one_call(swrk, R.criu_req(type=R.RESTORE, opts=R.criu_opts(
            images_dir_fd=ifd, notify_scripts=True)), answer=answer)
        assert resp.success and resp.restore.pid == t.pid, resp
        assert [n[0] for n in s.notes] == ["pre-restore", "post-restore", "pre-resume",
                                           "post-resume"]
        # post-restore carries the root's pid (runc takes its init from it)
        assert [n[1] for n in s.notes] == [None, t.pid, None, None]
        assert seen == [("pre-restore", "gone"), ("post-restore", "traced"),
                        ("pre-resume", "traced"), ("post-resume", "running")]
        check_continuity(wait_numbers(numbers, at_dump[-1] + 5))
    finally:
        os.close(ifd)


@pytest.mark.parametrize("refuse_at", ["pre-dump", "query-ext-files", "post-dump"])
def test_notify_failure_at_dump_leaves_the_tree_running(
        swrk: Callable[[], Swrk], targets: TargetFactory, tmp_path: Path,
        refuse_at: str) -> None:
    t, numbers = start_counter(targets)
    images = tmp_path / "images"
    images.mkdir()
    ifd = dir_fd(images)
    try:
        resp, s = one_call(swrk, R.criu_req(type=R.DUMP, opts=R.criu_opts(
            images_dir_fd=ifd, pid=t.pid, notify_scripts=True)),
            answer=lambda script, pid: script != refuse_at)
        assert not resp.success and resp.type == R.DUMP
        assert refuse_at in resp.cr_errmsg and "client answered failure" in resp.cr_errmsg
        assert s.notes[-1] == (refuse_at, None, "no")
        runs_on(t, numbers)
        # no notification after the refused one (criu stops there)
        assert [n[0] for n in s.notes][-1] == refuse_at
    finally:
        os.close(ifd)


def test_notify_failure_at_restore_kills_what_was_made(
        swrk: Callable[[], Swrk], targets: TargetFactory, tmp_path: Path) -> None:
    t, numbers = start_counter(targets)
    images = tmp_path / "images"
    images.mkdir()
    ifd = dir_fd(images)
    try:
        resp, _ = one_call(swrk, R.criu_req(type=R.DUMP, opts=R.criu_opts(
            images_dir_fd=ifd, pid=t.pid)))
        assert resp.success, resp
        assert wait_gone(t.pid, 10)
        targets.adopt(t.pid, like=t)
        made: list[int] = []

        def no_at_pre_resume(script: str, pid: int | None) -> bool:
            if pid is not None:
                made.append(pid)
            return script != "pre-resume"
        resp, s = one_call(swrk, R.criu_req(type=R.RESTORE, opts=R.criu_opts(
            images_dir_fd=ifd, notify_scripts=True)), answer=no_at_pre_resume)
        assert not resp.success and resp.restore.pid == -1
        assert "pre-resume" in resp.cr_errmsg
        assert made == [t.pid] and wait_gone(t.pid, 10), "the restored tree was not killed"
        # the images are intact: the same restore goes through now, the root
        # a sibling of swrk (runc's rst_sibling): the client's own child
        resp, _ = one_call(swrk, R.criu_req(type=R.RESTORE, opts=R.criu_opts(
            images_dir_fd=ifd, notify_scripts=True, rst_sibling=True)))
        assert resp.success and resp.restore.pid == t.pid, resp
        assert proc_ppid(t.pid) == os.getpid()
        wait_for(t.alive, 5, "the restored counter")
        check_continuity(wait_numbers(numbers, read_numbers(numbers)[-1] + 3))
    finally:
        os.close(ifd)


def _bad_requests(t: Target, images: Path, ifd: int) -> list[tuple[str, bytes, int, str]]:
    """(what, raw request, the answer's type, words its errmsg must hold)"""
    dump = R.criu_req(type=R.DUMP, opts=R.criu_opts(images_dir_fd=ifd, pid=t.pid))
    whole = dump.SerializeToString()
    # a criu_opts field number our schema does not have (a newer criu's)
    newer = R.criu_req(type=R.DUMP).SerializeToString() + \
        b"\x12" + bytes([len(b"\x08\x05\xf8\x07\x01")]) + b"\x08\x05\xf8\x07\x01"
    return [
        ("garbage", b"\xff\xfe\x00garbage\x99", R.EMPTY, "malformed criu_req"),
        ("truncated", whole[:len(whole) - 2], R.EMPTY, "malformed criu_req"),
        ("empty type", b"\x08\x00", R.EMPTY, "request EMPTY"),
        ("unknown type", b"\x08\x63", R.EMPTY, "unknown request type 99"),
        ("no type", b"\x18\x01", R.EMPTY, "no type"),
        ("newer field", newer, R.EMPTY, "criu_opts field 127"),
        ("out-of-turn notify", R.criu_req(type=R.NOTIFY, notify_success=True)
         .SerializeToString(), R.NOTIFY, "NOTIFY"),
        ("cpuinfo", R.criu_req(type=R.CPUINFO_DUMP, opts=dump.opts).SerializeToString(),
         R.CPUINFO_DUMP, "CPUINFO_DUMP is not supported"),
        ("page server on an inherited socket", R.criu_req(type=R.PAGE_SERVER, opts=R.criu_opts(
            images_dir_fd=ifd, ps=R.criu_page_server_info(fd=3))).SerializeToString(),
         R.PAGE_SERVER, "ps-socket"),
        ("no such pid", R.criu_req(type=R.DUMP, opts=R.criu_opts(
            images_dir_fd=ifd, pid=_no_pid())).SerializeToString(), R.DUMP,
         "no such process"),
        ("the client itself", R.criu_req(type=R.DUMP, opts=R.criu_opts(
            images_dir_fd=ifd, pid=os.getpid())).SerializeToString(), R.DUMP, "ancestor"),
        ("self dump", R.criu_req(type=R.DUMP, opts=R.criu_opts(images_dir_fd=ifd))
         .SerializeToString(), R.DUMP, "criu_opts.pid"),
        ("no images dir", R.criu_req(type=R.DUMP, opts=R.criu_opts(images_dir_fd=-1,
                                                                    pid=t.pid))
         .SerializeToString(), R.DUMP, "images_dir"),
        ("required field missing", R.criu_req(type=R.DUMP, opts=R.criu_opts(pid=t.pid))
         .SerializePartialToString(), R.EMPTY, "opts.images_dir_fd"),
        ("bad images fd", R.criu_req(type=R.DUMP, opts=R.criu_opts(images_dir_fd=999,
                                                                    pid=t.pid))
         .SerializeToString(), R.DUMP, "images_dir_fd=999"),
        ("refused field", R.criu_req(type=R.DUMP, opts=R.criu_opts(
            images_dir_fd=ifd, pid=t.pid, lsm_profile="apparmor:x")).SerializeToString(),
         R.DUMP, "criu_opts.lsm_profile"),
        ("keep_open dump", R.criu_req(type=R.DUMP, keep_open=True, opts=dump.opts)
         .SerializeToString(), R.DUMP, "keep_open"),
        ("log in a subdir", R.criu_req(type=R.DUMP, opts=R.criu_opts(
            images_dir_fd=ifd, pid=t.pid, log_file="a/b.log")).SerializeToString(),
         R.DUMP, "criu_opts.log_file"),
        ("wait for a stranger", R.criu_req(type=R.WAIT_PID, pid=1).SerializeToString(),
         R.WAIT_PID, "WAIT_PID 1"),
        ("restore, no images", R.criu_req(type=R.RESTORE, opts=R.criu_opts(
            images_dir_fd=ifd)).SerializeToString(), R.RESTORE, "inventory"),
    ]


def _no_pid() -> int:
    """A pid no process can have (above pid_max): not racing anyone for it."""
    with open("/proc/sys/kernel/pid_max") as f:
        return int(f.read()) + 1


def test_malformed_requests_get_a_failed_answer(swrk: Callable[[], Swrk],
                                                targets: TargetFactory,
                                                tmp_path: Path) -> None:
    t, numbers = start_counter(targets)
    images = tmp_path / "images"
    images.mkdir()
    ifd = dir_fd(images)
    try:
        for what, raw, typ, words in _bad_requests(t, images, ifd):
            s = swrk()
            s.send(raw)
            resp = s.recv()
            rc, err = s.close()
            assert not resp.success, f"{what}: {resp}"
            assert resp.type == typ, f"{what}: {resp}"
            assert words in resp.cr_errmsg, f"{what}: {resp.cr_errmsg!r}"
            assert rc == 1 and "Traceback" not in err, f"{what}: rc {rc}\n{err}"
            if typ == R.DUMP:
                assert resp.HasField("dump") and not resp.dump.restored
            if typ == R.RESTORE:
                assert resp.restore.pid == -1
            ok, why = is_untouched(t.pid)
            assert ok and t.alive(), f"{what}: {why}"
        assert not list(images.glob("*.img"))
        errnos = {}
        for what, raw, typ, words in _bad_requests(t, images, ifd):
            s = swrk()
            s.send(raw)
            errnos[what] = s.recv().cr_errno
            s.close()
        assert errnos["no such pid"] == 3                      # ESRCH, as criu
        assert errnos["refused field"] == 56                   # EBADRQC, as criu
        assert errnos["unknown type"] == errnos["cpuinfo"] == 95   # EOPNOTSUPP
        runs_on(t, numbers)
        # a client that goes away mid-dump (at a notification) leaves it running
        s = swrk()
        s.send(R.criu_req(type=R.DUMP, opts=R.criu_opts(images_dir_fd=ifd, pid=t.pid,
                                                        notify_scripts=True)))
        assert s.recv().notify.script == "pre-dump"
        assert s.close()[0] == 1
        runs_on(t, numbers)
    finally:
        os.close(ifd)


def test_service_stays_up(targets: TargetFactory, tmp_path: Path) -> None:
    t, numbers = start_counter(targets)
    addr = tmp_path / "criu.sock"
    srv = subprocess.Popen([sys.executable, "-m", "procsnap.criu", "service", "--address",
                            str(addr), "-o", str(tmp_path / "service.log"), "-v4"],
                           env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    try:
        wait_for(addr.exists, 15, "the service socket")

        def ask(raw: bytes) -> Any:
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as c:
                c.settimeout(60)
                c.connect(str(addr))
                c.send(raw)
                return R.criu_resp.FromString(c.recv(1 << 16))

        images = tmp_path / "images"
        images.mkdir()
        ifd = dir_fd(images)
        try:
            for what, raw, typ, words in _bad_requests(t, images, ifd):
                resp = ask(raw)
                assert not resp.success and words in resp.cr_errmsg, f"{what}: {resp}"
                assert srv.poll() is None, f"the service died at {what}"
            # inherit_fd names fds of criu's own: swrk only, as criu
            resp = ask(R.criu_req(type=R.RESTORE, opts=R.criu_opts(
                images_dir_fd=ifd, inherit_fd=[R.inherit_fd(key="unix[1]", fd=0)]))
                .SerializeToString())
            assert not resp.success and "inherit_fd" in resp.cr_errmsg
            resp = ask(R.criu_req(type=R.VERSION).SerializeToString())
            assert resp.success and resp.version.major_number == 4
            # and a real dump through it
            resp = ask(R.criu_req(type=R.DUMP, opts=R.criu_opts(
                images_dir_fd=ifd, pid=t.pid, leave_running=True)).SerializeToString())
            assert resp.success, resp
            assert (images / "pstree.img").exists()
            runs_on(t, numbers)
        finally:
            os.close(ifd)
        assert srv.poll() is None
    finally:
        srv.send_signal(signal.SIGTERM)
        try:
            srv.wait(10)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()
        reap()


# where a pycriu lives: a CRIU build's lib/ (4.2 here), Debian's criu package
PYCRIU_LIBS = {"built": Path(os.environ.get("PROCSNAP_PYCRIU_LIB", "/work/criu-build/lib")),
               "debian": Path("/usr/lib/python3/dist-packages")}
PYCRIU_CLIENT = """
import os, sys
sys.path.insert(0, sys.argv[1])
import pycriu
c = pycriu.criu()
if sys.argv[2] == "service":
    c.use_sk(sys.argv[3])
else:
    c.use_binary(sys.argv[3])
c.check()
c.opts.images_dir_fd = os.open(sys.argv[5], os.O_DIRECTORY)
c.opts.log_level = 4
if sys.argv[4] == "dump":
    c.opts.pid = int(sys.argv[6])
    c.opts.log_file = "dump.log"
    c.opts.leave_running = sys.argv[2] == "service"
    resp = c.dump()
    print("dumped", resp.restored)
else:
    c.opts.log_file = "restore.log"
    print("restored", c.restore().pid)
"""


@pytest.mark.parametrize("which", list(PYCRIU_LIBS))
def test_crius_own_pycriu_client(targets: TargetFactory, tmp_path: Path, which: str) -> None:
    """CRIU's reference client (pycriu: a CRIU 4.2 build's, and Debian's
    criu package's, on Debian's python3 and protobuf) checks, dumps and
    restores through procsnap's swrk, and dumps through its service."""
    lib = PYCRIU_LIBS[which]
    if not (lib / "pycriu" / "rpc_pb2.py").exists():
        pytest.skip(f"no pycriu under {lib}")
    py = "/usr/bin/python3"
    if subprocess.run([py, "-c", "import google.protobuf"], capture_output=True).returncode:
        pytest.skip(f"{py} has no protobuf for pycriu")
    wrapper = tmp_path / "criu"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m procsnap.criu \"$@\"\n")
    wrapper.chmod(0o755)
    client = tmp_path / "client.py"
    client.write_text(PYCRIU_CLIENT)

    def pycriu(*args: object) -> str:
        res = subprocess.run([py, str(client), str(lib), *map(str, args)], env=_env(),
                             capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL)
        reap()
        assert res.returncode == 0, f"pycriu {args}:\n{res.stdout}\n{res.stderr}"
        return res.stdout.strip()

    t, numbers = start_counter(targets)
    images = tmp_path / "images"
    images.mkdir()
    assert pycriu("swrk", wrapper, "dump", images, t.pid) == "dumped False"
    assert wait_gone(t.pid, 10)
    at_dump = read_numbers(numbers)
    targets.adopt(t.pid, like=t)
    assert pycriu("swrk", wrapper, "restore", images) == f"restored {t.pid}"
    wait_for(t.alive, 5, "the restored counter")
    check_continuity(wait_numbers(numbers, at_dump[-1] + 5))

    addr = tmp_path / "criu.sock"
    srv = subprocess.Popen([str(wrapper), "service", "--address", str(addr)], env=_env(),
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        wait_for(addr.exists, 15, "the service socket")
        again = tmp_path / "again"
        again.mkdir()
        assert pycriu("service", addr, "dump", again, t.pid) == "dumped False"
        assert "Dumping finished successfully" in (again / "dump.log").read_text()
        runs_on(t, numbers)      # leave_running
    finally:
        srv.send_signal(signal.SIGTERM)
        srv.wait(10)
        reap()


def test_libcriu_client(targets: TargetFactory, tmp_path: Path) -> None:
    """libcriu (libcriu.so.2 of Debian's criu package: the C client library
    crun dlopens for its checkpoint and restore) drives procsnap's swrk as
    crun does: criu_set_service_binary, the images directory as an fd of
    the client, the notify callback, criu_dump; then criu_restore_child
    (rst_sibling: the tree comes back as the client's child).  The counter
    goes on with no gap or repeat and checks itself; every action-script
    stage reached the client's callback."""
    from helpers import compile_target
    if not Path("/usr/include/criu/criu.h").exists():
        pytest.skip("no libcriu headers (Debian: the criu package's /usr/include/criu)")
    client = compile_target("libcriu_client")
    wrapper = tmp_path / "criu"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m procsnap.criu \"$@\"\n")
    wrapper.chmod(0o755)

    def libcriu(*args: object) -> list[str]:
        res = subprocess.run([str(client), str(wrapper), *map(str, args)], env=_env(),
                             capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL)
        reap()
        assert res.returncode == 0, f"libcriu {args}:\n{res.stdout}\n{res.stderr}"
        return res.stdout.split("\n")[:-1]

    t, numbers = start_counter(targets)
    images = tmp_path / "images"
    images.mkdir()
    out = libcriu("dump", t.pid, images)
    assert out[-1] == "dumped 0" and "notify post-dump" in out, out
    assert wait_gone(t.pid, 10)
    assert "Dumping finished successfully" in (images / "dump.log").read_text()
    at_dump = read_numbers(numbers)
    targets.adopt(t.pid, like=t)
    out = libcriu("restore", images)
    assert out[-1] == f"restored {t.pid}", out
    assert {"notify pre-restore", "notify post-restore", "notify pre-resume",
            "notify post-resume"} <= set(out), out
    wait_for(t.alive, 5, "the restored counter")
    check_continuity(wait_numbers(numbers, at_dump[-1] + 5))
    assert t.verdict().startswith("PASS")


def test_config_file_as_criu_reads_it(swrk: Callable[[], Swrk], targets: TargetFactory,
                                      tmp_path: Path) -> None:
    """criu_opts.config_file (runc: /etc/criu/runc.conf) is read after the
    RPC's fields and overrides them; one that is not there is no error; an
    option in it procsnap refuses fails the request naming it."""
    t, numbers = start_counter(targets)
    images = tmp_path / "images"
    images.mkdir()
    ifd = dir_fd(images)
    conf = tmp_path / "runc.conf"
    try:
        conf.write_text("# as runc.conf\nleave-running\nlog-file conf.log\n")
        resp, _ = one_call(swrk, R.criu_req(type=R.DUMP, opts=R.criu_opts(
            images_dir_fd=ifd, pid=t.pid, log_file="dump.log", config_file=str(conf))))
        assert resp.success, resp
        runs_on(t, numbers)                     # leave-running from the file
        assert (images / "conf.log").exists() and not (images / "dump.log").exists()

        conf.write_text("lsm-profile apparmor:x\n")
        resp, _ = one_call(swrk, R.criu_req(type=R.DUMP, opts=R.criu_opts(
            images_dir_fd=ifd, pid=t.pid, config_file=str(conf))))
        assert not resp.success and "--lsm-profile" in resp.cr_errmsg, resp
        runs_on(t, numbers)

        resp, _ = one_call(swrk, R.criu_req(type=R.DUMP, opts=R.criu_opts(
            images_dir_fd=ifd, pid=t.pid, leave_running=True,
            config_file=str(tmp_path / "absent.conf"))))
        assert resp.success, resp
        runs_on(t, numbers)
    finally:
        os.close(ifd)



def test_pre_dump_series_then_dump(swrk: Callable[[], Swrk], targets: TargetFactory,
                                   tmp_path: Path) -> None:
    """criu's pre-dump over RPC, where procsnap has pre-dump: PRE_DUMP answered
    and the tree runs on; the same session's DUMP with parent_img (criu's
    series, libcriu's), and a PRE_DUMP alone in its session (runc's
    --pre-dump, pycriu's)."""
    from procsnap.criu import options as O
    if "pre-dump" not in O.COMMANDS:
        resp, _ = one_call(swrk, R.criu_req(type=R.PRE_DUMP, opts=R.criu_opts(
            images_dir_fd=-1, images_dir=str(tmp_path), pid=os.getpid())))
        assert not resp.success and "PRE_DUMP is not supported" in resp.cr_errmsg
        pytest.skip("procsnap has no pre-dump on this branch: PRE_DUMP refused by name")
    t, numbers = start_counter(targets)
    dirs = [tmp_path / n for n in ("pre1", "pre2", "final", "scratch")]
    for d in dirs:
        d.mkdir()
    fds = [dir_fd(d) for d in dirs]
    try:
        # a PRE_DUMP alone in its session: answered, then the client closes
        s = swrk()
        resp = s.call(R.criu_req(type=R.PRE_DUMP, opts=R.criu_opts(
            images_dir_fd=fds[0], pid=t.pid, track_mem=True)))
        assert resp.type == R.PRE_DUMP and resp.success, resp
        s.close()
        runs_on(t, numbers)
        # after a PRE_DUMP only PRE_DUMP or DUMP (criu: "Bad req seq")
        s = swrk()
        resp = s.call(R.criu_req(type=R.PRE_DUMP, opts=R.criu_opts(
            images_dir_fd=fds[3], pid=t.pid, track_mem=True, parent_img="../pre1")))
        assert resp.success, resp
        resp = s.call(R.criu_req(type=R.VERSION))
        assert not resp.success and "Bad req seq" in resp.cr_errmsg, resp
        assert s.close()[0] == 1
        runs_on(t, numbers)
        # a series in one session: PRE_DUMP, then the DUMP
        s = swrk()
        resp = s.call(R.criu_req(type=R.PRE_DUMP, opts=R.criu_opts(
            images_dir_fd=fds[1], pid=t.pid, track_mem=True, parent_img="../pre1")))
        assert resp.type == R.PRE_DUMP and resp.success, resp
        runs_on(t, numbers)
        resp = s.call(R.criu_req(type=R.DUMP, opts=R.criu_opts(
            images_dir_fd=fds[2], pid=t.pid, track_mem=True, parent_img="../pre2")))
        assert resp.type == R.DUMP and resp.success, resp
        assert s.close()[0] == 0
        assert wait_gone(t.pid, 10)
        at_dump = read_numbers(numbers)
        targets.adopt(t.pid, like=t)
        resp, _ = one_call(swrk, R.criu_req(type=R.RESTORE, opts=R.criu_opts(
            images_dir_fd=fds[2])))
        assert resp.success and resp.restore.pid == t.pid, resp
        check_continuity(wait_numbers(numbers, at_dump[-1] + 5))
        assert t.verdict().startswith("PASS")
    finally:
        for fd in fds:
            os.close(fd)
