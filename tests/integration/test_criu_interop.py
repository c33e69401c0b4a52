"""CRIU's image format both ways, live (issue 15).

With a CRIU binary (``PROCSNAP_CRIU=/path/to/criu``, 4.x; CI has none:
these tests are skipped there, with that reason), each kind of state both
tools save is dumped by one tool and restored by the other, both ways:
tests/targets/criu_tiny.c in each of its modes -- a counter, a tree with a
pipe and a unix socketpair holding data, an open deleted file, an
established loopback TCP connection (--tcp-established on both sides),
and pid 1 of its own pid, uts, ipc, net and mount namespaces (alone, and
as the root of the 3-process tree).  The
restored tree must run on (its ticks go on) and pass its own check
(SIGTERM: the queued data, the file, the connection are all there).

Without CRIU: a pagemap whose pages are in a parent image set (criu's
pre-dump chains, which CRIU cannot write on this kernel: no soft-dirty)
is restored from the parent's pages.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from helpers import (
    Target,
    TargetFactory,
    check_ok,
    compile_target,
    describe,
    finish,
    procsnap_cmd,
    reap,
    run_procsnap,
    tree_pids,
    wait_for,
    wait_gone,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

CRIU = os.environ.get("PROCSNAP_CRIU", "")


def _ticks(t: Target) -> int:
    return sum(1 for ln in t.lines() if ln.startswith("tick "))


def _runs_on(t: Target) -> None:
    n = _ticks(t)
    wait_for(lambda: _ticks(t) >= n + 3, 10, f"{t.name} pid {t.pid} to tick on")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_ns(targets: TargetFactory, work: Path, mode: str = "ns") -> Target:
    """criu_tiny MODE as pid 1 of new pid/uts/ipc/net/mount namespaces.  Its
    stdio is opened again inside (criu cannot name a mount of the host's
    namespace), host FUSE mounts are dropped from its copy of the mount
    tree (neither tool dumps those), its session is its own."""
    binary = compile_target("criu_tiny")
    out = work / "ns.out"
    out.touch()
    inner = ("for m in $(awk '$3 ~ /^fuse/ {print $2}' /proc/self/mounts); do umount -l $m; "
             f"done; exec </dev/null >>{out} 2>&1; exec setsid {binary} {mode}")
    p = subprocess.Popen(["unshare", "--fork", "--pid", "--uts", "--ipc", "--net", "--mount",
                          "--mount-proc", "--propagation", "private", "sh", "-c", inner],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True,
                         cwd=work)
    from helpers import _KEEP_POPENS
    _KEEP_POPENS.append(p)
    kids: list[str] = []

    def started() -> bool:
        nonlocal kids
        kids = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
        return bool(kids) and "ready" in out.read_text()
    wait_for(started, 15, "the namespace's init to start")
    t = Target(name="criu_tiny", pid=int(kids[0]), argv=[str(binary), mode], workdir=work,
               out=out, err=out, cmdline=[str(binary), mode])
    targets.targets.append(t)
    return t


def _start(targets: TargetFactory, kind: str) -> tuple[Target, list[str]]:
    """(the target, the options both tools dump and restore it with)."""
    if kind in ("ns", "nstree"):
        return _start_ns(targets, targets.workdir, "ns" if kind == "ns" else "tree"), \
            ["--root", "/"]
    if kind == "tcp":
        return targets.start("criu_tiny", "tcp", str(_free_port())), ["--tcp-established"]
    return targets.start("criu_tiny", kind), []


def _inside_pids(pid: int) -> list[str]:
    """The pids of pid's children as seen inside their pid namespace."""
    out = []
    for k in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        with open(f"/proc/{k}/status") as f:
            out.append(next(ln.split()[-1] for ln in f if ln.startswith("NSpid:")))
    return sorted(out)


def _criu(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    res = subprocess.run([CRIU, *map(str, args)], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, close_fds=True, cwd=cwd, timeout=60)
    reap()
    return res


def _criu_log(d: Path, name: str) -> str:
    log = d / name
    text = log.read_text(errors="replace") if log.exists() else ""
    errs = [x for x in text.splitlines() if "Error" in x and "RLIMIT_NOFILE" not in x]
    return "\n".join(errs[:5]) or text[-2000:]


def _locks_gone(port_hint: Target) -> None:
    """No network lock of either tool is left."""
    nft = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert f"procsnap_{port_hint.pid}" not in nft, nft
    ipt = subprocess.run(["iptables", "-S"], capture_output=True, text=True).stdout
    port = port_hint.argv[-1]
    assert not [r for r in ipt.splitlines() if "0xc114" in r and f" {port} " in f"{r} "], ipt


@pytest.mark.criu_binary
@pytest.mark.skipif(not CRIU, reason="set PROCSNAP_CRIU=/path/to/criu (CRIU 4.x built from "
                    "source) to restore across procsnap and CRIU")
@pytest.mark.parametrize("kind", ["counter", "tree", "ghost", "tcp", "ns", "nstree"])
@pytest.mark.parametrize("way", ["procsnap-to-criu", "criu-to-procsnap"])
def test_restore_across_tools(targets: TargetFactory, images_dir: Path, kind: str,
                              way: str) -> None:
    t, opts = _start(targets, kind)
    pids = tree_pids(t.pid)
    before = _inside_pids(t.pid)
    _runs_on(t)
    pidfile = images_dir / "restored.pid"
    if way == "procsnap-to-criu":
        check_ok(run_procsnap("dump", "-t", t.pid, "-D", images_dir,
                              *[o for o in opts if o != "--root" and o != "/"]))
    else:
        res = _criu("dump", "-t", t.pid, "-D", images_dir, "-v4", "-o", "dump.log",
                    *[o for o in opts if o not in ("--root", "/")], cwd=images_dir)
        assert res.returncode == 0, _criu_log(images_dir, "dump.log")
    for p in pids:
        assert wait_gone(p), f"pid {p} is still there after the dump"
    reap()
    if way == "procsnap-to-criu":
        res = _criu("restore", "-D", images_dir, "-d", "-v4", "-o", "restore.log",
                    "--pidfile", pidfile, *opts, cwd=images_dir)
        assert res.returncode == 0, _criu_log(images_dir, "restore.log")
    else:
        check_ok(run_procsnap("restore", "-D", images_dir, "-d", "--pidfile", pidfile, *opts))
    pid = int(pidfile.read_text())
    if not kind.startswith("ns"):
        assert pid == t.pid
    restored = Target(name=t.name, pid=pid, argv=t.argv, workdir=t.workdir, out=t.out,
                      err=t.err, cmdline=t.cmdline)
    targets.adopt(pid, like=restored)
    targets.targets.append(restored)
    _runs_on(restored)
    if kind.startswith("ns"):
        with open(f"/proc/{pid}/status") as f:
            nspid = next(ln.split()[1:] for ln in f if ln.startswith("NSpid:"))
        assert nspid[-1] == "1", nspid
    if kind == "nstree":
        assert _inside_pids(pid) == before  # the children's pids inside, exactly
    if kind == "ns":
        host = subprocess.run(["nsenter", "-t", str(pid), "-u", "hostname"],
                              capture_output=True, text=True).stdout.strip()
        assert host == "tiny-ns"
    if kind.startswith("ns") and way == "criu-to-procsnap":
        # criu's network lock, restored with the namespace's ruleset (its
        # iptables chain CRIU), is gone once the tree runs.  (The other way
        # round criu 4.2's restore leaves procsnap's nft lock table.)
        rules = subprocess.run(["nsenter", "-t", str(pid), "-n", "nft", "list", "ruleset"],
                               capture_output=True, text=True, check=True).stdout
        assert "CRIU" not in rules and "0xc114" not in rules, rules
    finish(restored)
    if kind == "tcp":
        _locks_gone(t)


def test_pages_in_parent_restored(targets: TargetFactory, tmp_path: Path) -> None:
    """A dump whose pagemap says every page is in the parent image set
    (PE_PARENT, as criu's dump after a pre-dump writes it for pages that
    did not change) restores with the parent's pages: the restore finds
    them through the ``parent`` link."""
    from procsnap.images import PE_PARENT, read_image, write_image
    from procsnap.images.pb import pagemap_pb2
    t = targets.start("criu_tiny", "counter")
    parent = tmp_path / "pre"
    parent.mkdir()
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", parent))
    assert wait_gone(t.pid)
    reap()
    child = tmp_path / "dump"
    shutil.copytree(parent, child)
    (child / "parent").symlink_to("../pre")
    pm = read_image(str(child), "pagemap", t.pid)
    assert len(pm) > 1
    (child / f"pagemap-{t.pid}.img").unlink()
    write_image(str(child), "pagemap", [pm[0]] + [
        pagemap_pb2.pagemap_entry(vaddr=e.vaddr, nr_pages=e.nr_pages, flags=PE_PARENT)
        for e in pm[1:]], t.pid)
    (child / f"pages-{pm[0].pages_id}.img").write_bytes(b"")
    res = run_procsnap("restore", "-D", child, "-d")
    assert res.returncode == 0, describe(res)
    targets.adopt(t.pid, like=t)
    _runs_on(t)
    finish(t)


def test_older_procsnap_pidns_images_restore(targets: TargetFactory, images_dir: Path) -> None:
    """procsnap's images of a pid namespace from before 2026-11-30 name pids
    by the dumper's view (pstree, image names, files.img): made here from a
    new dump by turning it back, they restore as before."""
    from procsnap.images import pidview, read_image, write_image
    t = _start_ns(targets, targets.workdir)
    _runs_on(t)
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", images_dir))
    assert wait_gone(t.pid)
    reap()
    d = str(images_dir)
    tree = read_image(d, "pstree")
    assert pidview.is_inside_form(tree) and tree[0].pid == 1
    image_pids = pidview.to_outside(tree)       # outside -> inside
    (images_dir / "pstree.img").unlink()
    write_image(d, "pstree", tree)
    for outside, inside in image_pids.items():
        for kind in ("core", "ids", "mm", "fs", "pagemap"):
            f = images_dir / f"{kind}-{inside}.img"
            if f.exists():
                f.rename(images_dir / f"{kind}-{outside}.img")
    files = [pidview.map_file_pids(f, {i: o for o, i in image_pids.items()})
             for f in read_image(d, "files")]
    assert any(f.HasField("pipe") and f.pipe.fown.pid == t.pid for f in files)
    (images_dir / "files.img").unlink()
    write_image(d, "files", files)
    assert not pidview.is_inside_form(read_image(d, "pstree"))
    pidfile = images_dir / "restored.pid"
    res = run_procsnap("restore", "-D", images_dir, "-d", "--root", "/", "--pidfile", pidfile)
    assert res.returncode == 0, describe(res)
    assert int(pidfile.read_text()) == t.pid  # the old form: its outside pid again
    restored = Target(name=t.name, pid=t.pid, argv=t.argv, workdir=t.workdir, out=t.out,
                      err=t.err, cmdline=t.cmdline)
    targets.adopt(t.pid, like=restored)
    _runs_on(restored)
    finish(restored)


def _lazymem(targets: TargetFactory, mib: str) -> tuple[Target, int, int]:
    t = targets.start("lazymem", mib, wait_ready=False)
    t.wait_ready(timeout=60)
    big = t.wait_line(r"^big ").split()
    return t, int(big[1], 16), int(big[2])


def _lazy_marked(images: Path, pid: int) -> tuple[int, int]:
    """(pages marked PE_LAZY|PE_PRESENT, pages PE_PRESENT alone) in pagemap-PID.img."""
    from procsnap import images as img
    lazy = plain = 0
    for e in img.read_image(str(images), "pagemap", pid)[1:]:
        if e.flags == img.PE_LAZY | img.PE_PRESENT:
            lazy += e.nr_pages
        elif e.flags == img.PE_PRESENT:
            plain += e.nr_pages
    return lazy, plain


def _criu_lazy_pages(images_dir: Path) -> subprocess.Popen[bytes]:
    """CRIU's lazy-pages daemon on images_dir (its log: lazy-pages.log
    there), once its socket is up."""
    log = images_dir / "lazy-pages.log"
    d = subprocess.Popen([CRIU, "lazy-pages", "-D", str(images_dir), "-v4", "-o", str(log)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, close_fds=True, cwd=images_dir)
    try:
        wait_for(lambda: (images_dir / "lazy-pages.socket").exists() or d.poll() is not None,
                 30, "criu's lazy-pages socket")
    except BaseException:
        d.kill()
        d.wait()
        raise
    return d


@pytest.mark.criu_binary
@pytest.mark.skipif(not CRIU, reason="set PROCSNAP_CRIU=/path/to/criu (CRIU 4.x built from "
                    "source) to serve procsnap's images with CRIU's lazy-pages daemon")
@pytest.mark.parametrize("restorer", ["procsnap", "criu"])
def test_criu_lazy_pages_serves_a_procsnap_dump(targets: TargetFactory, images_dir: Path,
                                                restorer: str) -> None:
    """A procsnap dump marks its lazy-able pages PE_LAZY|PE_PRESENT as
    criu's dump does, so CRIU's own lazy-pages daemon serves them: to
    procsnap's restore --lazy-pages and to CRIU's.  The target (lazymem)
    checks every page of its 32 MiB and of its sparse, dropped and moved
    mappings at the end."""
    t, big, size = _lazymem(targets, "32")
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", images_dir))
    assert wait_gone(t.pid, 10)
    lazy, plain = _lazy_marked(images_dir, t.pid)
    assert lazy >= size // 4096 and plain > 0, (lazy, plain)   # the stack, mlocked, files: not lazy
    d = _criu_lazy_pages(images_dir)
    try:
        assert d.poll() is None, _criu_log(images_dir, "lazy-pages.log")
        if restorer == "procsnap":
            check_ok(run_procsnap("restore", "-D", images_dir, "-d", "--lazy-pages"))
        else:
            res = _criu("restore", "-D", images_dir, "-d", "--lazy-pages", "-v4",
                        "-o", "restore.log", cwd=images_dir)
            assert res.returncode == 0, _criu_log(images_dir, "restore.log")
        targets.adopt(t.pid, like=t)
        t.signal(10)   # SIGUSR1: it answers before its memory has arrived
        t.wait_line(r"^alive 1")
        t.signal(1)    # SIGHUP: drops and moves memory still lazy
        assert t.wait_line(r"^dropped ", timeout=30) == "dropped 1", t.output()
        assert d.wait(timeout=120) == 0, _criu_log(images_dir, "lazy-pages.log")
    finally:
        if d.poll() is None:
            d.kill()
            d.wait()
    # criu's daemon copied the pages itself
    log = (images_dir / "lazy-pages.log").read_text(errors="replace")
    assert log.count("uffd_copy") > 0, _criu_log(images_dir, "lazy-pages.log")
    assert t.verdict(timeout=60).startswith("PASS"), t.output()


@pytest.mark.criu_binary
@pytest.mark.skipif(not CRIU, reason="set PROCSNAP_CRIU=/path/to/criu (CRIU 4.x built from "
                    "source) to restore CRIU's lazily marked images")
@pytest.mark.parametrize("lazily", [False, True])
def test_procsnap_restores_criu_s_lazily_marked_pages(targets: TargetFactory, images_dir: Path,
                                                     lazily: bool) -> None:
    """CRIU's dump marks private anonymous pages PE_LAZY|PE_PRESENT; procsnap
    restores them eagerly, and lazily with its own lazy-pages daemon."""
    t, big, size = _lazymem(targets, "32")
    res = _criu("dump", "-t", t.pid, "-D", images_dir, "-v4", "-o", "dump.log", cwd=images_dir)
    assert res.returncode == 0, _criu_log(images_dir, "dump.log")
    assert wait_gone(t.pid, 10)
    lazy, plain = _lazy_marked(images_dir, t.pid)
    assert lazy >= size // 4096, (lazy, plain)
    d = None
    try:
        if lazily:
            d = subprocess.Popen(procsnap_cmd("lazy-pages", "-D", str(images_dir)),
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, close_fds=True)
            wait_for(lambda: (images_dir / "lazy-pages.socket").exists() or d.poll() is not None,
                     30, "the lazy-pages socket")
        check_ok(run_procsnap("restore", "-D", images_dir, "-d",
                              *(["--lazy-pages"] if lazily else [])))
        targets.adopt(t.pid, like=t)
        t.signal(10)
        t.wait_line(r"^alive 1")
        if d is not None:
            assert d.wait(timeout=120) == 0
    finally:
        if d is not None and d.poll() is None:
            d.kill()
            d.wait()
    assert t.verdict(timeout=60).startswith("PASS"), t.output()


@pytest.mark.criu_binary
@pytest.mark.skipif(not CRIU, reason="set PROCSNAP_CRIU=/path/to/criu (CRIU 4.x built from "
                    "source) to serve procsnap's images with CRIU's lazy-pages daemon")
def test_criu_lazy_pages_serves_a_procsnap_tree(targets: TargetFactory,
                                                images_dir: Path) -> None:
    """A 3-process tree (criu_tiny tree: forked, so parent and children
    have memory at the same places): the dump leaves PE_LAZY off what they
    may share copy-on-write, which procsnap's restore fills before the
    fork; criu's daemon (which pushes every marked page until it is in)
    serves the rest to procsnap's restore --lazy-pages, and ends."""
    t, _ = _start(targets, "tree")
    pids = tree_pids(t.pid)
    _runs_on(t)
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", images_dir))
    for p in pids:
        assert wait_gone(p), f"pid {p} is still there after the dump"
    reap()
    d = _criu_lazy_pages(images_dir)
    try:
        check_ok(run_procsnap("restore", "-D", images_dir, "-d", "--lazy-pages"))
        targets.adopt(t.pid, like=t)
        for p in set(tree_pids(t.pid)) - {t.pid}:
            targets.adopt(p)   # killed at teardown if the test fails
        _runs_on(t)
        assert d.wait(timeout=60) == 0, _criu_log(images_dir, "lazy-pages.log")
    finally:
        if d.poll() is None:
            d.kill()
            d.wait()
    finish(t)
