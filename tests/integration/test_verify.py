"""The restore checks itself before the tree runs (procsnap/verify.py).

A good dump of a real target is damaged on purpose -- decoded with
procsnap.images, one field changed, re-encoded -- so that the image holds
a value the restore code silently does not reproduce, as a restore that
forgot a field would.  The restore must then fail with one line naming the
pid and the field, and leave no process behind; with --no-verify the very
same images restore (so it is the check that caught it).

Then a fuzzing round: many images damaged at random (numbers changed in
decoded messages, bytes flipped); every restore either works or fails with
one line, never a traceback, and never leaves a process behind.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from helpers import (
    Target,
    TargetFactory,
    assert_one_line_error,
    check_ok,
    children_of,
    describe,
    finish,
    reap,
    run_procsnap,
    REPO_ROOT,
    tree_pids,
    wait_gone,
    wait_numbers,
)
from procsnap import images as img

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

O_NOCTTY = 0o400


@pytest.fixture
def dumped(targets: TargetFactory, tmp_path: Path) -> tuple[Target, Path]:
    """A real image set of the C counter (dumped, and so killed)."""
    numbers = targets.workdir / "numbers"
    t = targets.start("counter", str(numbers))
    wait_numbers(numbers, 3)
    images = tmp_path / "images"
    images.mkdir()
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", images))
    assert wait_gone(t.pid, 10), f"dump left pid {t.pid} alive"
    return t, images


def _restore_fails(targets: TargetFactory, t: Target, images: Path, *names: str) -> str:
    kids = children_of(os.getpid())
    targets.adopt(t.pid, like=t)  # should it wrongly come back
    res = run_procsnap("restore", "-D", images, "-d")
    line = assert_one_line_error(res, *names)
    reap()
    assert wait_gone(t.pid, 5), f"a failed check left pid {t.pid} running\n" + describe(res)
    assert children_of(os.getpid()) - kids == set(), "a failed check left processes behind"
    return line


def _restores_without_check(targets: TargetFactory, t: Target, images: Path) -> None:
    res = run_procsnap("restore", "-D", images, "-d", "--no-verify")
    check_ok(res)
    targets.adopt(t.pid, like=t)
    assert os.path.exists(f"/proc/{t.pid}"), describe(res)
    os.kill(t.pid, signal.SIGKILL)
    assert wait_gone(t.pid, 10)


def _edit(images: Path, kind: str, ident: int | None, change: Callable[[Any], None]) -> None:
    entries = img.read_image(str(images), kind, ident)
    change(entries)
    img.write_image(str(images), kind, entries, ident)


def test_damaged_sched_policy(targets: TargetFactory, dumped: tuple[Target, Path]) -> None:
    """SCHED_BATCH with real-time priority 3: the kernel takes priority 0
    for every policy but FIFO/RR, and the restore hands it only the policy."""
    t, images = dumped

    def change(cores: list[Any]) -> None:
        tc = cores[0].thread_core
        assert tc.sched_policy == 0 and tc.sched_prio == 0, (tc.sched_policy, tc.sched_prio)
        tc.sched_policy, tc.sched_prio = 3, 3   # SCHED_BATCH, priority 3

    _edit(images, "core", t.pid, change)
    line = _restore_fails(targets, t, images, rf"re:restore check: pid {t.pid}: sched priority "
                          r"3 expected, 0 found")
    assert "Traceback" not in line
    _restores_without_check(targets, t, images)


def test_damaged_mapping_protection(targets: TargetFactory, dumped: tuple[Target, Path]) -> None:
    """[vdso] said read-only: the restore maps the vDSO itself (arch_prctl),
    so it stays r-x -- only the check sees the image disagree."""
    t, images = dumped
    where: list[str] = []

    def change(mms: list[Any]) -> None:
        vdso = [v for v in mms[0].vmas if v.status & (1 << 3)]  # VMA_AREA_VDSO
        assert len(vdso) == 1 and vdso[0].prot == 5, [(v.start, v.prot) for v in vdso]
        vdso[0].prot = 1   # PROT_READ
        where.append(f"{vdso[0].start:#x}-{vdso[0].end:#x}")

    _edit(images, "mm", t.pid, change)
    _restore_fails(targets, t, images, rf"re:restore check: pid {t.pid}: mapping {where[0]}: "
                   r"protection r-- expected, r-x found")
    _restores_without_check(targets, t, images)


def test_damaged_fd_flags(targets: TargetFactory, dumped: tuple[Target, Path]) -> None:
    """O_NOCTTY in the counter's output file flags: open(2) takes it and the
    kernel never keeps it, so the restored fd comes back without it."""
    t, images = dumped
    fdinfos = img.read_image(str(images), "fdinfo", img.read_one(str(images), "core", t.pid)
                             .ids.files_id)
    fd3 = next(f for f in fdinfos if f.fd == 3)

    def change(files: list[Any]) -> None:
        entry = next(f for f in files if f.id == fd3.id)
        assert entry.reg.flags & 3 == os.O_WRONLY, oct(entry.reg.flags)
        entry.reg.flags |= O_NOCTTY

    _edit(images, "files", None, change)
    _restore_fails(targets, t, images, rf"re:restore check: pid {t.pid}: fd 3: flags "
                   r"O_WRONLY\|O_NOCTTY\|O_LARGEFILE expected, O_WRONLY\|O_LARGEFILE found")
    _restores_without_check(targets, t, images)


# ------------------------------------------------- broken restores ----
#
# State the restore reproduces from any image cannot be damaged in the
# image: the restore would faithfully build the damage.  So the restore
# itself is broken instead -- one function of procsnap replaced, in the
# restoring process only, by one that forgets its field, as a bug would --
# and the check must name the pid and the field.

def _restore_with(patch: str, images: Path, *extra: str) -> subprocess.CompletedProcess:
    """``procsnap restore -D images -d`` with ``patch`` (Python) run first
    in the restoring process."""
    code = (f"import runpy, sys\n{patch}\n"
            f"sys.argv = ['procsnap', 'restore', '-D', {str(images)!r}, '-d', *{list(extra)!r}]\n"
            "runpy.run_module('procsnap', run_name='__main__', alter_sys=True)\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"]
                                          if env.get("PYTHONPATH") else "")
    res = subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=60, close_fds=True, env=env)
    reap()
    return res


def _broken_restore_caught(targets: TargetFactory, t: Target, images: Path, patch: str,
                           pattern: str, pids: tuple[int, ...] = ()) -> str:
    """The broken restore fails with one line matching ``pattern`` and
    leaves nothing; with --no-verify the same broken restore "works"
    (so the check caught it); a restore that is not broken passes the check."""
    everyone = (t.pid,) + pids
    kids = children_of(os.getpid())
    targets.adopt(t.pid, like=t)   # should they wrongly come back
    for pid in pids:
        targets.adopt(pid)
    res = _restore_with(patch, images)
    line = assert_one_line_error(res, "re:" + pattern)
    assert "Traceback" not in line
    for pid in everyone:
        assert wait_gone(pid, 5), f"a failed check left pid {pid} running\n" + describe(res)
    assert children_of(os.getpid()) - kids == set(), "a failed check left processes behind"
    res = _restore_with(patch, images, "--no-verify")
    check_ok(res)
    for pid in reversed(everyone):
        if os.path.exists(f"/proc/{pid}"):
            os.kill(pid, signal.SIGKILL)
    for pid in everyone:
        assert wait_gone(pid, 10)
    check_ok(run_procsnap("restore", "-D", images, "-d"))   # no false positive
    targets.adopt(t.pid, like=t)
    return line


def _dump(t: Target, images: Path, *extra: str) -> None:
    images.mkdir(exist_ok=True)
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", images, *extra))
    assert wait_gone(t.pid, 10), f"dump left pid {t.pid} alive"


def test_broken_file_lock(targets: TargetFactory, tmp_path: Path) -> None:
    """A restore that forgets one lock (the first of each task's)."""
    d = tmp_path / "files"
    d.mkdir()
    t = targets.start("fdstate.py", str(d))
    _dump(t, tmp_path / "images", "--file-locks")
    patch = ("import procsnap.resources.file_lock as m\n"
             "orig = m._entries\n"
             "m._entries = lambda rctx: {p: es[1:] for p, es in orig(rctx).items()}")
    _broken_restore_caught(targets, t, tmp_path / "images", patch,
                           rf"restore check: pid {t.pid}: fd 3: a POSIX write lock on bytes "
                           rf"0-9 of pid {t.pid} expected, none found")
    finish(t)


def test_broken_sigio_owner(targets: TargetFactory, tmp_path: Path) -> None:
    """A restore that never sets the SIGIO owner (F_SETOWN_EX) of fd 7."""
    d = tmp_path / "files"
    d.mkdir()
    t = targets.start("fdstate.py", str(d))
    _dump(t, tmp_path / "images", "--file-locks")
    patch = "import procsnap.resources.fown as m\nm.set_owner = lambda *a: None"
    _broken_restore_caught(targets, t, tmp_path / "images", patch,
                           rf"restore check: pid {t.pid}: fd 7: SIGIO owner \(F_GETOWN_EX\) "
                           rf"process {t.pid} \(uid 0, euid 0\) expected, none found")
    finish(t)


def test_broken_sigio_signal(targets: TargetFactory, tmp_path: Path) -> None:
    """A restore that forgets F_SETSIG (fd 7's SIGUSR2)."""
    d = tmp_path / "files"
    d.mkdir()
    t = targets.start("fdstate.py", str(d))
    _dump(t, tmp_path / "images", "--file-locks")
    patch = ("import procsnap.resources.fown as m\n"
             "m.F_SETSIG = 1  # F_GETFD: does nothing")
    _broken_restore_caught(targets, t, tmp_path / "images", patch,
                           rf"restore check: pid {t.pid}: fd 7: F_GETSIG signal 12 expected, "
                           r"0 found")
    finish(t)


def test_broken_socket_options(targets: TargetFactory, tmp_path: Path) -> None:
    """A restore that forgets TCP options (tcp_opts): TCP_NODELAY lost."""
    t = targets.start("verify_socks.py")
    _dump(t, tmp_path / "images")
    patch = "import procsnap.resources.sockets as m\nm.restore_tcp_opts = lambda sk, ie: None"
    _broken_restore_caught(targets, t, tmp_path / "images", patch,
                           rf"restore check: pid {t.pid}: fd \d+: TCP_NODELAY 1 expected, "
                           r"0 found")
    finish(t)


def test_broken_socket_buffer(targets: TargetFactory, tmp_path: Path) -> None:
    """A restore that leaves the buffer sizes and their lock alone (the UDP
    socket's locked 64 KiB receive buffer comes back at the default)."""
    t = targets.start("verify_socks.py")
    _dump(t, tmp_path / "images")
    patch = ("import procsnap.resources.sockets as m\n"
             "# SO_PRIORITY instead: set again right after\n"
             "m.SO_RCVBUFFORCE = m.SO_SNDBUFFORCE = m.SO_BUF_LOCK = 12")
    _broken_restore_caught(targets, t, tmp_path / "images", patch,
                           rf"restore check: pid {t.pid}: fd \d+: SO_(SND|RCV)BUF \d+ expected, "
                           r"\d+ found")
    finish(t)


@pytest.fixture
def cgroup2_group() -> Any:
    g = Path("/sys/fs/cgroup/unified") / f"procsnap-verify-{os.getpid()}"
    g.mkdir()
    yield g
    for _ in range(50):
        try:
            g.rmdir()
            break
        except OSError:
            import time
            time.sleep(0.1)


def test_broken_cgroup(targets: TargetFactory, tmp_path: Path, cgroup2_group: Path) -> None:
    """A restore that forgets to join the task's cgroups: it stays in the
    restorer's."""
    numbers = targets.workdir / "numbers"
    t = targets.start("counter", str(numbers))
    (cgroup2_group / "cgroup.procs").write_text(str(t.pid))
    _dump(t, tmp_path / "images")
    patch = "import procsnap.resources.cgroup as m\nm.restore = lambda rctx, rt: None"
    _broken_restore_caught(targets, t, tmp_path / "images", patch,
                           rf"restore check: pid {t.pid}: cgroup cgroup2: path "
                           rf"'/{cgroup2_group.name}' expected, '[^']*' found")
    assert f"0::/{cgroup2_group.name}" in Path(f"/proc/{t.pid}/cgroup").read_text()
    finish(t)


def test_broken_vmflags(targets: TargetFactory, tmp_path: Path) -> None:
    """A restore that forgets madvise() and mlock(): the first advised
    mapping is named."""
    t = targets.start("vmflags", str(targets.workdir / "vmflags.file"))
    parent, child = (int(x) for x in t.wait_line(r"^ready ").split()[1:3])
    _dump(t, tmp_path / "images")
    assert wait_gone(child, 10)
    patch = "import procsnap.resources.memory as m\nm._restore_vmflags = lambda rt: None"
    _broken_restore_caught(targets, t, tmp_path / "images", patch,
                           rf"restore check: pid ({parent}|{child}): mapping 0x[0-9a-f]+-"
                           r"0x[0-9a-f]+: (madvise|mmap) flags \(VmFlags\) \S+ expected, "
                           r"none found", pids=(child,))
    finish(t)


def test_broken_loginuid(targets: TargetFactory, tmp_path: Path) -> None:
    """A restore that never writes the loginuid (4242)."""
    t = targets.start("taskstate")
    _dump(t, tmp_path / "images")
    patch = "import procsnap.resources.taskattrs as m\nm._set_loginuid = lambda *a: None"
    _broken_restore_caught(targets, t, tmp_path / "images", patch,
                           rf"restore check: pid {t.pid}: loginuid 4242 expected, \d+ found")
    finish(t)


def test_broken_sched_reset_on_fork(targets: TargetFactory, tmp_path: Path) -> None:
    """A restore that drops SCHED_RESET_ON_FORK from the policy it sets."""
    t = targets.start("taskstate")
    _dump(t, tmp_path / "images")
    patch = ("import os, types, procsnap.resources.taskattrs as m\n"
             "o = types.ModuleType('os'); o.__dict__.update(os.__dict__)\n"
             "o.sched_setscheduler = lambda tid, pol, prm: "
             "os.sched_setscheduler(tid, pol & ~0x40000000, prm)\n"
             "m.os = o")
    _broken_restore_caught(targets, t, tmp_path / "images", patch,
                           rf"restore check: pid {t.pid}: sched policy "
                           r"SCHED_RR\|SCHED_RESET_ON_FORK expected, SCHED_RR found")
    finish(t)


# ------------------------------------------------------------------ fuzz ----

def _numbers(msg: Any, path: str = "") -> list[tuple[Any, Any, str]]:
    """(message, field, path) of every scalar numeric field set in msg."""
    out: list[tuple[Any, Any, str]] = []
    for fd, value in msg.ListFields():
        p = f"{path}.{fd.name}"
        repeated = not isinstance(value, (int, float, bool, str, bytes)) and \
            hasattr(value, "__len__")
        if fd.type == fd.TYPE_MESSAGE:
            items = value if repeated else [value]
            for i, m in enumerate(items):
                out += _numbers(m, f"{p}[{i}]")
        elif not repeated and fd.type not in (fd.TYPE_STRING, fd.TYPE_BYTES):
            out.append((msg, fd, p))
    return out


_INTERESTING = [0, 1, 2, 3, 5, 7, 0o400, 0o2000, 0o4000, 0x1000, 0xFFFF, 2**31 - 1]


def _damage(rng: random.Random, images: Path) -> str:
    names = sorted(n for n in os.listdir(images) if n.endswith(".img") and
                   not n.startswith("pages-"))
    name = rng.choice(names)
    path = images / name
    if rng.random() < 0.2:
        data = bytearray(path.read_bytes())
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
        return f"{name}: bit flipped at byte {i}"
    entries = list(img.iter_entries(str(path)))
    fields = [f for e in entries for f in _numbers(e.msg)]
    if not fields:
        return f"{name}: nothing to change"
    msg, fd, p = rng.choice(fields)
    old = getattr(msg, fd.name)
    if fd.type == fd.TYPE_BOOL:
        new: Any = not old
    elif fd.enum_type is not None:
        new = rng.choice([v.number for v in fd.enum_type.values])
    else:
        new = rng.choice([old ^ (1 << rng.randrange(12)), rng.choice(_INTERESTING), old + 4096])
        if fd.type in (fd.TYPE_UINT32, fd.TYPE_FIXED32):
            new &= 0xFFFFFFFF
        elif fd.type in (fd.TYPE_UINT64, fd.TYPE_FIXED64):
            new &= 2**64 - 1
        elif fd.type in (fd.TYPE_INT32, fd.TYPE_SINT32, fd.TYPE_SFIXED32):
            new = max(-2**31, min(new, 2**31 - 1))
    setattr(msg, fd.name, new)
    _rewrite(path, entries)
    return f"{name}: {p} {old} -> {new}"


def _rewrite(path: Path, entries: list[Any]) -> None:
    """Re-encode entries in place, keeping the magic words and raw tails."""
    data = path.read_bytes()
    out = bytearray(data[:entries[0].offset])
    for e in entries:
        body = e.msg.SerializeToString()
        out += len(body).to_bytes(4, "little") + body + e.payload
    path.write_bytes(bytes(out))


@pytest.mark.timeout(600)
def test_fuzzed_images_fail_cleanly(targets: TargetFactory, dumped: tuple[Target, Path],
                                    tmp_path: Path) -> None:
    """60 damaged copies of one image set: 0 tracebacks, 0 processes left."""
    t, good = dumped
    rng = random.Random(int(os.environ.get("PROCSNAP_FUZZ_SEED", "17")))
    rounds = int(os.environ.get("PROCSNAP_FUZZ_ROUNDS", "60"))
    kids = children_of(os.getpid())
    outcomes: dict[str, int] = {"restored": 0, "refused": 0, "check": 0}
    for i in range(rounds):
        images = tmp_path / f"fuzz-{i}"
        shutil.copytree(good, images)
        what = _damage(rng, images)
        targets.adopt(t.pid, like=t)
        res = run_procsnap("restore", "-D", images, "-d", timeout=60)
        assert "Traceback" not in res.stderr, f"round {i} ({what}):\n" + describe(res)
        if res.returncode == 0:
            outcomes["restored"] += 1
        else:
            line = assert_one_line_error(res, "re:.")
            outcomes["check" if line.startswith("procsnap: restore check:") or
                     "restore check:" in line else "refused"] += 1
        # Whatever came back (the same pid, or another one a damaged
        # pstree named) is ours: kill it and wait until it is gone.
        reap()
        for pid in children_of(os.getpid()) - kids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            assert res.returncode == 0, (f"round {i} ({what}): a failed restore left pid "
                                         f"{pid}\n" + describe(res))
        if os.path.exists(f"/proc/{t.pid}"):
            assert res.returncode == 0, f"round {i} ({what}): pid {t.pid} left\n" + describe(res)
            os.kill(t.pid, signal.SIGKILL)
        reap()
        assert wait_gone(t.pid, 10)
        shutil.rmtree(images)
    assert outcomes["check"] > 0, outcomes  # the check is what caught some of them
    print(outcomes)


def test_broken_pty_of_another_devpts_instance(targets: TargetFactory, tmp_path: Path) -> None:
    """A restore that makes the pty pairs in another devpts instance, at
    the same indices: the index (st_rdev) is the same in every instance,
    only the instance (st_dev) tells them apart."""
    t = targets.start("ptys")
    others = tuple(p for p in tree_pids(t.pid) if p != t.pid)
    _dump(t, tmp_path / "images")
    other = tmp_path / "pts"
    other.mkdir()
    subprocess.run(["mount", "-t", "devpts", "-o", "newinstance,ptmxmode=0666", "procsnap-test",
                    str(other)], check=True)
    try:
        patch = ("import procsnap.resources.tty as m\n"
                 "orig = m._open_noctty\n"
                 "def other(rt, path, flags):\n"
                 "    if path == '/dev/ptmx' or path.startswith('/dev/pts/'):\n"
                 f"        path = {str(other)!r} + '/' + ('ptmx' if path == '/dev/ptmx' "
                 "else path[len('/dev/pts/'):])\n"
                 "    return orig(rt, path, flags)\n"
                 "m._open_noctty = other")
        _broken_restore_caught(targets, t, tmp_path / "images", patch,
                               r"restore check: pid \d+: fd \d+: pty (master|slave): devpts "
                               r"instance \(st_dev\) \d+:\d+ expected, \d+:\d+ found",
                               pids=others)
    finally:
        if subprocess.run(["umount", str(other)]).returncode != 0:
            subprocess.run(["umount", "-l", str(other)])
    finish(t)
