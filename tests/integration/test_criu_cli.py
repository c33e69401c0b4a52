"""procsnap in place of criu: invoked as ``criu`` through a symlink on PATH.

The symlink lives in a temporary directory put first on PATH (a real criu
elsewhere is not touched).  A C counter is dumped and restored with criu's
options; the log, the stats images (decoded by Debian's crit), action
scripts and their environment, refusals (one line, exit 1, the tree runs
on untraced) and config files are checked.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import (REPO_ROOT, Target, TargetFactory, check_continuity, crit_decode,
                     describe, is_untouched, read_numbers, reap, wait_for, wait_gone,
                     wait_numbers)

pytestmark = [pytest.mark.root, pytest.mark.timeout(90)]


@pytest.fixture
def criu_path(tmp_path: Path) -> Path:
    """A bin directory holding procsnap's entry point and ``criu`` -> it."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    entry = bindir / "procsnap"
    entry.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(REPO_ROOT)!r})\n"
                     "from procsnap.cli import main\nsys.exit(main())\n")
    entry.chmod(0o755)
    (bindir / "criu").symlink_to("procsnap")
    return bindir


def criu(bindir: Path, *args: object, env: dict[str, str] | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess:
    e = dict(os.environ if env is None else env)
    e["PATH"] = f"{bindir}{os.pathsep}{e.get('PATH', '')}"
    assert shutil.which("criu", path=e["PATH"]) == str(bindir / "criu")
    res = subprocess.run(["criu", *map(str, args)], env=e, stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=timeout, close_fds=True)
    reap()
    return res


def start_counter(targets: TargetFactory) -> tuple[Target, Path]:
    numbers = targets.workdir / "counter.numbers"
    t = targets.start("counter", str(numbers))
    wait_numbers(numbers, 5)
    return t, numbers


def one_line(res: subprocess.CompletedProcess, *names: str) -> str:
    assert res.returncode == 1, describe(res)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, describe(res)
    for n in names:
        assert n in lines[0], f"{n!r} not named\n" + describe(res)
    return lines[0]


def test_version_and_check(criu_path: Path) -> None:
    res = criu(criu_path, "--version")
    assert res.returncode == 0, describe(res)
    # LXC reads the first line "Version: X.Y" and wants a recent criu
    assert res.stdout.splitlines()[0].startswith("Version: ")
    major, minor = res.stdout.splitlines()[0].split()[1].split(".")[:2]
    assert (int(major), int(minor)) >= (4, 0)
    res = criu(criu_path, "check")
    assert res.returncode == 0 and "Looks good." in res.stdout, describe(res)
    res = criu(criu_path, "check", "--no-default-config", "-verbosity=0", "--feature", "mnt_id")
    assert res.returncode == 0 and res.stdout.strip() == "mnt_id is supported", describe(res)
    one_line(criu(criu_path, "check", "--feature", "tun"), "tun", "not supported")
    one_line(criu(criu_path, "check", "--feature", "nosuchthing"), "Unknown feature nosuchthing")
    one_line(criu(criu_path, "page-server"), "page-server")
    # the same command line through procsnap's own command
    res = subprocess.run([str(criu_path / "procsnap"), "criu", "--version"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and res.stdout.startswith("Version: "), describe(res)


def test_dump_restore_with_criu_options(criu_path: Path, targets: TargetFactory,
                                        tmp_path: Path) -> None:
    t, numbers = start_counter(targets)
    images = tmp_path / "images"
    images.mkdir()
    res = criu(criu_path, "dump", "-t", t.pid, "-D", images, "-o", "dump.log", "-v4",
               "--log-pid", "--file-locks", "--tcp-established", "--skip-in-flight",
               "--timeout", "10", "--manage-cgroups", "--network-lock", "nftables")
    assert res.returncode == 0, describe(res) + (images / "dump.log").read_text()
    assert wait_gone(t.pid, 10), "criu dump did not kill the tree"
    log = (images / "dump.log").read_text()
    assert "Error" not in log, log
    # criu's layout: "(SS.UUUUUU) PID: text", info and debug lines at -v4
    lines = log.splitlines()
    assert all(ln.startswith("(") and ln[3] == "." and ln[10] == ")" for ln in lines
               if ln[:1] == "("), log
    assert f"Dumping processes (pid: {t.pid})" in log and "Dumping finished successfully" in log
    assert f") {os.getpid():6d}: " not in log and ": Dumping" in log  # --log-pid: procsnap's pid
    at_dump = read_numbers(numbers)

    work = tmp_path / "work-dir"
    work.mkdir()
    targets.adopt(t.pid, like=t)
    res = criu(criu_path, "restore", "-D", images, "-W", work, "-o", "restore.log",
               "-v4", "-d", "--pidfile", "restore.pid", "--tcp-established", "--file-locks")
    assert res.returncode == 0, describe(res) + (work / "restore.log").read_text()
    # -o and a relative --pidfile land in the work directory (-W)
    assert int((work / "restore.pid").read_text()) == t.pid
    rlog = (work / "restore.log").read_text()
    assert "Restore finished successfully" in rlog and "Error" not in rlog, rlog
    ok, why = is_untouched(t.pid)
    assert ok, why
    nums = wait_numbers(numbers, at_dump[-1] + 5)
    check_continuity(nums)

    # the stats images, as criu writes them, read by criu's own crit
    sd = crit_decode(images / "stats-dump")["entries"][0]["dump"]
    pages = sum(p.stat().st_size for p in images.glob("pages-*.img")) // 4096
    assert int(sd["pages_written"]) + int(sd["shpages_written"]) == pages > 0
    assert int(sd["frozen_time"]) > 0 and int(sd["freezing_time"]) > 0
    # criu writes its stats in its cwd, the work directory (-W): the
    # restore's is not the images directory (Podman reads them there)
    assert not (images / "stats-restore").exists()
    sr = crit_decode(work / "stats-restore")["entries"][0]["restore"]
    assert int(sr["pages_restored"]) == pages and int(sr["forking_time"]) > 0


def test_unknown_or_refused_option_freezes_nothing(criu_path: Path, targets: TargetFactory,
                                                   tmp_path: Path) -> None:
    t, numbers = start_counter(targets)
    images = tmp_path / "images"
    one_line(criu(criu_path, "dump", "-t", t.pid, "-D", images, "--bogus-option"),
             "--bogus-option")
    assert not images.exists()
    images.mkdir()
    line = one_line(criu(criu_path, "dump", "-t", t.pid, "-D", images, "-o", "dump.log",
                         "--leave-stopped"), "--leave-stopped", "not supported")
    assert "Error" in (images / "dump.log").read_text() and "--leave-stopped" in line
    one_line(criu(criu_path, "dump", "-t", t.pid, "-D", images, "--external", "dev[1/2]:x"),
             "--external dev[1/2]:x")
    one_line(criu(criu_path, "dump", "-t", t.pid, "-D", images, "--manage-cgroups=sloppy"),
             "Unknown cgroups mode `sloppy'")
    assert not list(images.glob("*.img"))
    ok, why = is_untouched(t.pid)
    assert ok and t.alive(), why
    n = read_numbers(numbers)[-1]
    wait_numbers(numbers, n + 3)


SCRIPT = """#!/bin/sh
echo "$CRTOOLS_SCRIPT_ACTION ${CRTOOLS_INIT_PID:-none} $(readlink "$CRTOOLS_IMAGE_DIR")" >> {out}
[ "$CRTOOLS_SCRIPT_ACTION" = post-dump ] && [ -e {refuse} ] && exit 7
exit 0
"""


def test_action_scripts(criu_path: Path, targets: TargetFactory, tmp_path: Path) -> None:
    t, numbers = start_counter(targets)
    images = tmp_path / "images"
    images.mkdir()
    out, refuse = tmp_path / "actions", tmp_path / "refuse"
    script = tmp_path / "script.sh"
    script.write_text(SCRIPT.replace("{out}", str(out)).replace("{refuse}", str(refuse)))
    script.chmod(0o755)

    # a post-dump script that says no: criu exits with its status, the
    # tree runs on untraced, the images stay
    refuse.touch()
    res = criu(criu_path, "dump", "-t", t.pid, "-D", images, "-o", "dump.log",
               "--action-script", script)
    assert res.returncode == 7, describe(res)
    ok, why = is_untouched(t.pid)
    assert ok and t.alive(), why
    assert (images / "inventory.img").exists()
    assert out.read_text().splitlines() == [f"pre-dump {t.pid} {images}",
                                            f"post-dump {t.pid} {images}"]
    refuse.unlink()
    out.unlink()
    shutil.rmtree(images)
    images.mkdir()

    res = criu(criu_path, "dump", "-t", t.pid, "-D", images, "--action-script", script)
    assert res.returncode == 0, describe(res)
    assert wait_gone(t.pid, 10)
    targets.adopt(t.pid, like=t)
    res = criu(criu_path, "restore", "-D", images, "-d", "--action-script", script)
    assert res.returncode == 0, describe(res)
    assert out.read_text().splitlines() == [
        f"pre-dump {t.pid} {images}", f"post-dump {t.pid} {images}",
        f"pre-restore none {images}",   # criu knows no pid before the tasks exist
        f"post-restore {t.pid} {images}", f"pre-resume {t.pid} {images}",
        f"post-resume {t.pid} {images}"]
    wait_for(t.alive, 5, "the restored counter")
    check_continuity(wait_numbers(numbers, read_numbers(numbers)[-1] + 3))


def test_config_file_options(criu_path: Path, targets: TargetFactory, tmp_path: Path) -> None:
    t, numbers = start_counter(targets)
    images = tmp_path / "images"
    images.mkdir()
    cfg = tmp_path / "criu.conf"
    cfg.write_text("# as criu reads it\nleave-running\nlog-file from-config.log\n")
    res = criu(criu_path, "dump", "-t", t.pid, "-D", images, "--config", cfg)
    assert res.returncode == 0, describe(res)
    assert t.alive() and is_untouched(t.pid)[0], "leave-running from the config was lost"
    assert "Error" not in (images / "from-config.log").read_text()
    # a refused option in $CRIU_CONFIG_FILE is refused like one on the command line
    bad = tmp_path / "bad.conf"
    bad.write_text("lazy-pages\n")
    env = dict(os.environ, CRIU_CONFIG_FILE=str(bad))
    one_line(criu(criu_path, "dump", "-t", t.pid, "-D", tmp_path / "img2", env=env),
             "--lazy-pages")
    assert t.alive() and is_untouched(t.pid)[0]


def test_restore_sibling_makes_the_root_our_parent_s_child(criu_path: Path,
                                                           targets: TargetFactory,
                                                           tmp_path: Path) -> None:
    """--restore-sibling (LXC passes it): the restored root is a child of
    criu's parent, not of criu; criu returns without waiting for it."""
    t, numbers = start_counter(targets)
    images = tmp_path / "images"
    images.mkdir()
    res = criu(criu_path, "dump", "-t", t.pid, "-D", images)
    assert res.returncode == 0, describe(res)
    assert wait_gone(t.pid, 10)
    at_dump = read_numbers(numbers)
    targets.adopt(t.pid, like=t)
    # A shell runs criu and reports its own pid and the root's parent while
    # it still lives (after it, the root goes to us, the child subreaper).
    script = (f"criu restore -D {images} --restore-sibling || exit 9; "
              f"echo $$ $(cut -d' ' -f4 /proc/{t.pid}/stat)")
    e = dict(os.environ)
    e["PATH"] = f"{criu_path}{os.pathsep}{e.get('PATH', '')}"
    res = subprocess.run(["sh", "-c", script], env=e, stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=60, close_fds=True)
    assert res.returncode == 0, describe(res)
    shell, parent = res.stdout.split()
    assert parent == shell, f"root's parent {parent}, criu's parent {shell}"
    nums = wait_numbers(numbers, at_dump[-1] + 5)
    check_continuity(nums)
