"""Terminals: pty pairs held in the tree, controlling terminals, /dev/tty,
hung-up slaves (ptys.c checks itself), tmux with two panes, and the
refusals (a pty whose other end is outside the tree, the console)."""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import struct
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest

from helpers import (TargetFactory, assert_one_line_error, check_ok, finish, is_untouched,
                     run_procsnap, tree_pids, wait_gone)


pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]


def _pts(pid: int, fd: int) -> tuple[str, int, int, int]:
    link = os.readlink(f"/proc/{pid}/fd/{fd}")
    st = os.stat(f"/proc/{pid}/fd/{fd}")
    return link, st.st_rdev, st.st_mode & 0o777, st.st_uid


def _wait_tree_gone(pids: list[int]) -> None:
    for p in pids:
        assert wait_gone(p, 15), f"pid {p} still there"


def test_pty_pairs_checked_from_inside(targets: TargetFactory, tmp_path: Path) -> None:
    t = targets.start("ptys")
    ia, ib, ic, child, gchild = map(int, t.lines()[0].split()[1:6])
    tree = tree_pids(t.pid)
    before = {fd: _pts(t.pid, fd) for fd in map(int, os.listdir(f"/proc/{t.pid}/fd"))
              if os.readlink(f"/proc/{t.pid}/fd/{fd}").startswith("/dev/")}
    with open(f"/proc/{child}/stat") as f:
        ctty_before = f.read().rsplit(")", 1)[1].split()[4:6]  # tty_nr, tpgid
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", tmp_path / "img"))
    _wait_tree_gone(tree)
    check_ok(run_procsnap("restore", "-D", tmp_path / "img", "-d"))
    for p in tree:
        targets.adopt(p)
    after = {fd: _pts(t.pid, fd) for fd in before}
    assert after == before
    assert os.path.exists(f"/dev/pts/{ia}") and not os.path.exists(f"/dev/pts/{ic}")
    assert before[next(fd for fd, v in before.items() if v[0] == f"/dev/pts/{ia}")][2:] == \
        (0o600, 4242)
    with open(f"/proc/{child}/stat") as f:
        assert f.read().rsplit(")", 1)[1].split()[4:6] == ctty_before
    assert t.verdict() == "PASS", t.output()


def test_pty_with_outside_master_refused(targets: TargetFactory, tmp_path: Path) -> None:
    import pty
    master, slave = pty.openpty()
    try:
        p = subprocess.Popen(["sleep", "1000"], stdin=slave, stdout=subprocess.DEVNULL,
                             close_fds=True, start_new_session=True)
        targets.adopt(p.pid)
        time.sleep(0.2)
        res = run_procsnap("dump", "-t", p.pid, "-D", tmp_path / "img")
        assert_one_line_error(res, f"pid {p.pid}: fd 0:", "master is outside")
        ok, why = is_untouched(p.pid)
        assert ok, why
    finally:
        os.close(master)
        os.close(slave)


def test_pty_open_outside_refused(targets: TargetFactory, tmp_path: Path) -> None:
    """The tree holds both ends, but another process holds the slave too."""
    code = ("import os,pty,sys,time\nm,s=pty.openpty()\nprint(os.ttyname(s),flush=True)\n"
            "time.sleep(1000)\n")
    out = tmp_path / "out"
    with open(out, "w") as fo:
        p = subprocess.Popen([sys.executable, "-c", code], stdout=fo,
                             stdin=subprocess.DEVNULL, close_fds=True, start_new_session=True)
    targets.adopt(p.pid)
    deadline = time.monotonic() + 10
    while not out.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    name = out.read_text().strip()
    holder = os.open(name, os.O_RDWR | os.O_NOCTTY)
    try:
        res = run_procsnap("dump", "-t", p.pid, "-D", tmp_path / "img")
        line = assert_one_line_error(res, f"pid {p.pid}:")
        assert f"also open in pid {os.getpid()}" in line, line
        ok, why = is_untouched(p.pid)
        assert ok, why
    finally:
        os.close(holder)


def test_console_and_vt_reopened(targets: TargetFactory, tmp_path: Path,
                                 images_dir: Path) -> None:
    """/dev/console and a virtual console held open, the VT the session's
    controlling terminal with a child's group in the foreground (zdtm
    console, vt): reopened by their paths, the VT taken again by the
    session leader; checked from outside (fds, stat's tty_nr and tpgid) and
    inside."""
    t = targets.start("console_vt.py", str(tmp_path))

    def view() -> tuple:
        with open(f"/proc/{t.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (os.readlink(f"/proc/{t.pid}/fd/3"), os.readlink(f"/proc/{t.pid}/fd/4"),
                fields[4], fields[5])

    before = view()
    assert before[2] == str(os.makedev(4, 5)), before
    pids = tree_pids(t.pid)
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", images_dir))
    for p in pids:
        assert wait_gone(p, 10)
    targets.adopt(t.pid, like=t)
    check_ok(run_procsnap("restore", "-D", images_dir, "-d"))
    assert view() == before
    finish(t)


def test_vt_in_process_mode_refused(targets: TargetFactory, tmp_path: Path) -> None:
    """A VT in VT_PROCESS mode signals its owner on console switches: refused."""
    node = tmp_path / "vt"
    os.mknod(node, 0o600 | 0o020000, os.makedev(4, 5))
    fd = os.open(node, os.O_RDWR | os.O_NOCTTY)
    try:
        import fcntl
        import struct
        old = fcntl.ioctl(fd, 0x5601, bytes(8))                   # VT_GETMODE
        fcntl.ioctl(fd, 0x5602, struct.pack("bbhhh", 1, 0, 10, 12, 0))  # VT_SETMODE VT_PROCESS
        try:
            p = subprocess.Popen(["sleep", "1000"], stdin=fd, stdout=subprocess.DEVNULL,
                                 close_fds=True, start_new_session=True)
            targets.adopt(p.pid)
            time.sleep(0.2)
            res = run_procsnap("dump", "-t", p.pid, "-D", tmp_path / "img")
            line = assert_one_line_error(res, f"pid {p.pid}: fd 0:")
            assert "VT_PROCESS" in line, line
            ok, why = is_untouched(p.pid)
            assert ok, why
        finally:
            fcntl.ioctl(fd, 0x5602, old)
    finally:
        os.close(fd)


def _tmux(sock: Path, home: Path, *args: str) -> str:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "TERM": "xterm", "SHELL": "/bin/sh"}
    return subprocess.run(["tmux", "-S", str(sock), "-f", "/dev/null", *args], env=env,
                          capture_output=True, text=True, check=True, close_fds=True,
                          timeout=30).stdout


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed (apt: tmux)")
def test_tmux_two_panes(targets: TargetFactory, tmp_path: Path) -> None:
    sock = tmp_path / "sock"
    _tmux(sock, tmp_path, "new-session", "-d", "-s", "t", "-x", "80", "-y", "24", "sh")
    server = int(_tmux(sock, tmp_path, "display", "-p", "#{pid}"))
    targets.adopt(server)
    try:
        _tmux(sock, tmp_path, "split-window", "-t", "t",
              'i=0; while :; do i=$((i+1)); echo "n $i"; sleep 0.05; done')
        _tmux(sock, tmp_path, "send-keys", "-t", "t:0.0", "seq 1 200", "Enter")
        time.sleep(1)
        tree = tree_pids(server)
        pane_tty = _tmux(sock, tmp_path, "list-panes", "-t", "t", "-F", "#{pane_tty}").split()
        check_ok(run_procsnap("dump", "-t", server, "-D", tmp_path / "img"))
        _wait_tree_gone(tree)
        check_ok(run_procsnap("restore", "-D", tmp_path / "img", "-d"))
        for p in tree:
            targets.adopt(p)
        assert _tmux(sock, tmp_path, "list-panes", "-t", "t", "-F",
                     "#{pane_tty}").split() == pane_tty
        hist = _tmux(sock, tmp_path, "capture-pane", "-p", "-S", "-", "-t", "t:0.0")
        assert [ln for ln in hist.splitlines() if ln.isdigit()] == \
            [str(i) for i in range(1, 201)]
        time.sleep(1)
        counter = _tmux(sock, tmp_path, "capture-pane", "-p", "-S", "-", "-t", "t:0.1")
        nums = [int(ln.split()[1]) for ln in counter.splitlines() if ln.startswith("n ")]
        assert nums == list(range(1, len(nums) + 1)) and len(nums) > 25, nums
        _tmux(sock, tmp_path, "send-keys", "-t", "t:0.0", "echo after-$((6*7))", "Enter")
        deadline = time.monotonic() + 10
        while "after-42" not in _tmux(sock, tmp_path, "capture-pane", "-p", "-t", "t:0.0"):
            assert time.monotonic() < deadline, "send-keys had no effect"
            time.sleep(0.1)
    finally:
        left = tree_pids(server) if os.path.exists(f"/proc/{server}") else []
        subprocess.run(["tmux", "-S", str(sock), "kill-server"], capture_output=True,
                       timeout=30)
        # the server and its pane shells exit after kill-server returns: wait,
        # so the check for processes left behind does not race them
        _wait_tree_gone(left)


def _canon_target(tmp_path: Path, targets: TargetFactory, queued: bytes) -> tuple[Any, Path]:
    """A python target with a canonical pty (echo off) and ``queued`` on
    its slave; SIGUSR1: read it all and print got/extra/rest."""
    code = ("import os,pty,sys,time,termios,signal\nm,s=pty.openpty()\n"
            "a=termios.tcgetattr(s); a[3]&=~termios.ECHO; termios.tcsetattr(s,0,a)\n"
            f"os.write(m,{queued!r})\n"
            "print('ready',flush=True)\n"
            "signal.sigwait([signal.SIGUSR1])\n"
            "os.set_blocking(s,False)\n"
            "got=os.read(s,100)\n"
            "try:\n    os.read(s,100); extra=True\nexcept BlockingIOError:\n    extra=False\n"
            "os.write(m,b'\\n'); rest=os.read(s,100)\n"
            "print('got',repr((got,extra,rest)),flush=True)\n")
    out = tmp_path / "out"
    with open(out, "w") as fo:
        p = subprocess.Popen([sys.executable, "-c", code], stdout=fo,
                             stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             close_fds=True, start_new_session=True,
                             preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_BLOCK,
                                                                       [signal.SIGUSR1]))
    targets.adopt(p.pid)
    _wait_text(out, "ready")
    return p, out


def _wait_text(out: Path, what: str) -> str:
    deadline = time.monotonic() + 15
    while what not in out.read_text():
        assert time.monotonic() < deadline, out.read_text()
        time.sleep(0.05)
    return out.read_text()


def test_canonical_input_with_literal_kept(targets: TargetFactory, tmp_path: Path) -> None:
    """A complete line holding a literal DEL (typed after ^V) and a partial
    line, queued in canonical mode: restored exactly (two reads, the
    partial line still partial)."""
    p, out = _canon_target(tmp_path, targets, b"ab\x16\x7fc\nxy")
    check_ok(run_procsnap("dump", "-t", p.pid, "-D", tmp_path / "img"))
    assert wait_gone(p.pid, 15)
    check_ok(run_procsnap("restore", "-D", tmp_path / "img", "-d"))
    os.kill(p.pid, signal.SIGUSR1)
    text = _wait_text(out, "got")
    assert "got (b'ab\\x7fc\\n', False, b'xy\\n')" in text, text


def test_canonical_eof_refused_and_kept(targets: TargetFactory, tmp_path: Path) -> None:
    """An end of file typed (^D) is queued as a NUL: refused, and the bytes
    read at the dump are back as they were."""
    p, out = _canon_target(tmp_path, targets, b"ab\x04xy")
    res = run_procsnap("dump", "-t", p.pid, "-D", tmp_path / "img")
    assert_one_line_error(res, f"pid {p.pid}:", "canonical mode")
    ok, why = is_untouched(p.pid)
    assert ok, why
    os.kill(p.pid, signal.SIGUSR1)
    text = _wait_text(out, "got")
    assert "got (b'ab', False, b'xy\\n')" in text, text


def _criu(*args: object, pass_fds: tuple[int, ...] = ()) -> subprocess.CompletedProcess:
    """procsnap as criu (python3 -m procsnap.criu), handing ``pass_fds`` on."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return subprocess.run([sys.executable, "-m", "procsnap.criu", *map(str, args)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60, pass_fds=pass_fds, env=env)


def _read_until(fd: int, want: bytes, timeout: float = 10.0) -> bytes:
    import select
    got = b""
    deadline = time.monotonic() + timeout
    while want not in got:
        left = deadline - time.monotonic()
        assert left > 0, f"{want!r} not read in {timeout} s: {got[-300:]!r}"
        r, _, _ = select.select([fd], [], [], left)
        if r:
            got += os.read(fd, 4096)
    return got


def _ticks(data: bytes) -> list[int]:
    return [int(w.split()[1]) for w in data.decode(errors="replace").splitlines()
            if w.startswith("tick ") and len(w.split()) == 2 and w.split()[1].isdigit()]


def test_external_tty_inherited(targets: TargetFactory, tmp_path: Path) -> None:
    """criu's --external tty[RDEV:DEV] / --inherit-fd fd[N]:tty[RDEV:DEV]
    (LXC's console): a session whose controlling terminal is a pts whose
    master the test holds.  Dumped with the pts named external; restored
    with a new pty's slave handed in: the session leader's fds 0-2 are it,
    it is their controlling terminal with the child's group in the
    foreground, ECHO off and 33x77 as saved (checked from outside and
    inside); its ticks go on on the new master; a line typed before the
    dump and not read yet is read after the restore, and a line written to
    the new master is read by the foreground child and echoed."""
    import pty
    import termios
    m1, s1 = pty.openpty()
    m2 = s2 = -1
    try:
        t = targets.start("ext_tty.py", os.ttyname(s1), str(tmp_path / "go"))
        os.close(s1)
        child = int(t.lines()[0].split()[1])
        _read_until(m1, b"tick 3\r\n")
        os.write(m1, b"typed before the dump\n")   # queued: the child does not read yet
        st = os.stat(f"/proc/{t.pid}/fd/0")
        key = f"tty[{st.st_rdev:x}:{st.st_dev:x}]"
        check_ok(_criu("dump", "-t", t.pid, "-D", tmp_path / "img", "-o", "dump.log",
                       "--external", key))
        _wait_tree_gone([t.pid, child])
        os.close(m1)
        m1 = -1
        m2, s2 = pty.openpty()
        assert termios.tcgetattr(s2)[3] & termios.ECHO   # a new pty echoes
        check_ok(_criu("restore", "-D", tmp_path / "img", "-o", "restore.log",
                       "--restore-detached", "--inherit-fd", f"fd[{s2}]:{key}",
                       pass_fds=(s2,)))
        targets.adopt(t.pid, like=t)
        targets.adopt(child)
        rdev2 = os.fstat(s2).st_rdev
        os.close(s2)
        s2 = -1
        with open(f"/proc/{t.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        assert (int(fields[4]), int(fields[5])) == (rdev2, child), fields[:6]
        assert os.stat(f"/proc/{t.pid}/fd/0").st_rdev == rdev2
        got = _read_until(m2, b"\r\n")
        got += _read_until(m2, b"\r\n")    # a whole line at least
        ticks = _ticks(got.replace(b"\r", b""))
        assert ticks and ticks[-1] > 3, got
        assert not termios.tcgetattr(m2)[3] & termios.ECHO   # as saved
        (tmp_path / "go").write_text("")
        _read_until(m2, b"echo: typed before the dump\r\n")
        os.write(m2, b"hello after restore\n")
        _read_until(m2, b"echo: hello after restore\r\n")
        assert t.verdict() == "PASS", t.output()
    finally:
        for fd in (m1, m2, s2):
            if fd >= 0:
                os.close(fd)


def test_external_tty_restore_refusals(targets: TargetFactory, tmp_path: Path) -> None:
    """A dump with --external tty[RDEV:DEV] restored without the terminal
    that stands for it (no --inherit-fd), with a handed-in fd that is no
    terminal, and criu's --orphan-pts-master on the command line (the new
    master can only go to an RPC client): each one line naming what is
    missing (pid, fd and the terminal), exit 1, nothing left running."""
    import pty
    m1, s1 = pty.openpty()
    try:
        t = targets.start("ext_tty.py", os.ttyname(s1), str(tmp_path / "go"))
        os.close(s1)
        s1 = -1
        child = int(t.lines()[0].split()[1])
        st = os.stat(f"/proc/{t.pid}/fd/0")
        key = f"tty[{st.st_rdev:x}:{st.st_dev:x}]"
        img = tmp_path / "img"
        check_ok(_criu("dump", "-t", t.pid, "-D", img, "--external", key))
        _wait_tree_gone([t.pid, child])
        res = _criu("restore", "-D", img, "--restore-detached")
        line = assert_one_line_error(res, f"pid {t.pid}: fd 0: {key}:", "--inherit-fd")
        assert "outside the dumped tree" in line, line
        assert not os.path.exists(f"/proc/{t.pid}") and not os.path.exists(f"/proc/{child}")
        r, w = os.pipe()
        try:
            res = _criu("restore", "-D", img, "--restore-detached", "--inherit-fd",
                        f"fd[{r}]:{key}", pass_fds=(r,))
        finally:
            os.close(r)
            os.close(w)
        assert_one_line_error(res, f"pid {t.pid}: fd 0: --inherit-fd fd[{r}]:{key}: "
                                   "not a terminal")
        assert not os.path.exists(f"/proc/{t.pid}")
        res = _criu("restore", "-D", img, "--restore-detached", "--orphan-pts-master")
        assert_one_line_error(res, "--orphan-pts-master", "RPC")
        assert not os.path.exists(f"/proc/{t.pid}")
    finally:
        os.close(m1)
        if s1 >= 0:
            os.close(s1)


def test_orphan_pts_master_through_the_api(targets: TargetFactory, tmp_path: Path) -> None:
    """criu's --orphan-pts-master without a container: the session's
    terminal is a pts of the host whose master the test holds.  Dumped
    with --orphan-pts-master; restored through procsnap.restore() -- first
    without an action to take the new master (refused, one line naming the
    pid, the fd and the pts; nothing left), then with one: it is called as
    action("orphan-pts-master", fd) with the new master, at the old index;
    the tree's fds 0-2 and controlling terminal are its slave, with the
    child's group in the foreground, ECHO off and 33x77 (checked inside); a
    line typed before the dump is read after it, one typed on the new
    master is echoed."""
    import pty
    import procsnap
    from procsnap.errors import ProcsnapError
    m1, s1 = pty.openpty()
    index = int(os.ttyname(s1).rsplit("/", 1)[1])
    got: list[int] = []
    try:
        t = targets.start("ext_tty.py", os.ttyname(s1), str(tmp_path / "go"))
        os.close(s1)
        s1 = -1
        child = int(t.lines()[0].split()[1])
        _read_until(m1, b"tick 3\r\n")
        os.write(m1, b"typed before the dump\n")
        img = tmp_path / "img"
        check_ok(_criu("dump", "-t", t.pid, "-D", img, "--orphan-pts-master"))
        _wait_tree_gone([t.pid, child])
        with pytest.raises(ProcsnapError) as exc:
            procsnap.restore(str(img), detached=True, orphan_pts_master=True)
        msg = str(exc.value)
        assert "\n" not in msg and f"pid {t.pid}: fd 0: /dev/pts/{index}:" in msg, msg
        assert not os.path.exists(f"/proc/{t.pid}")
        # The index is free again (on the host's devpts, where other
        # processes may take it: right before the restore that needs it)
        os.close(m1)
        m1 = -1

        def action(name: str, fd: int | None = None) -> int:
            if name == "orphan-pts-master":
                assert fd is not None
                got.append(os.dup(fd))
            return 0
        pid = procsnap.restore(str(img), detached=True, orphan_pts_master=True,
                               action=action)
        assert pid == t.pid
        targets.adopt(t.pid, like=t)
        targets.adopt(child)
        assert len(got) == 1
        m2 = got[0]
        slave = os.stat(f"/proc/{pid}/fd/0").st_rdev
        assert slave == os.makedev(136 + index // 256, index % 256)
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        assert (int(fields[4]), int(fields[5])) == (slave, child), fields[:6]
        _read_until(m2, b"tick")
        (tmp_path / "go").write_text("")
        _read_until(m2, b"echo: typed before the dump\r\n")
        os.write(m2, b"hello after restore\n")
        _read_until(m2, b"echo: hello after restore\r\n")
        assert t.verdict() == "PASS", t.output()
    finally:
        for fd in got + [m1, s1]:
            if fd >= 0:
                os.close(fd)


def test_orphan_pts_with_a_terminal_of_another_devpts_instance_refused(
        targets: TargetFactory, tmp_path: Path) -> None:
    """--orphan-pts-master: fds 0-2 are a pts of the host (the orphan,
    its master the test's), the controlling terminal a pts at the same
    index of another devpts instance (stat's tty_nr is the same number):
    refused by name, not restored with the orphan as its terminal; the
    tree runs on untraced."""
    import pty
    other = tmp_path / "pts"
    other.mkdir()
    subprocess.run(["mount", "-t", "devpts", "-o", "newinstance,ptmxmode=0666", "procsnap-test",
                    str(other)], check=True)
    fds: list[int] = []
    try:
        m1, s1 = pty.openpty()
        fds += [m1, s1]
        index = int(os.ttyname(s1).rsplit("/", 1)[1])
        while True:  # the same index in the other instance
            m2 = os.open(other / "ptmx", os.O_RDWR | os.O_NOCTTY)
            fds.append(m2)
            got = struct.unpack("I", fcntl.ioctl(m2, 0x80045430, bytes(4)))[0]  # TIOCGPTN
            if got == index:
                break
            assert got < index
        fcntl.ioctl(m2, 0x40045431, struct.pack("i", 0))  # TIOCSPTLCK: unlocked
        t = targets.start("ext_tty.py", os.ttyname(s1), str(tmp_path / "go"),
                          str(other / str(index)))
        with open(f"/proc/{t.pid}/stat") as f:
            tty_nr = int(f.read().rsplit(")", 1)[1].split()[4])
        assert tty_nr == os.stat(f"/proc/{t.pid}/fd/0").st_rdev
        res = _criu("dump", "-t", t.pid, "-D", tmp_path / "img", "--orphan-pts-master")
        assert_one_line_error(res, f"pid {t.pid}: its controlling terminal is pts {index} "
                              "of another devpts instance")
        assert is_untouched(t.pid)[0]   # (killed by the fixture: it prints no verdict)
    finally:
        for fd in fds:
            os.close(fd)
        if subprocess.run(["umount", str(other)]).returncode != 0:
            subprocess.run(["umount", "-l", str(other)])
