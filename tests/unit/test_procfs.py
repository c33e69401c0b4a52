"""Tests for procsnap.procfs: parsers on recorded /proc text, pagemap
decoding on synthetic entries, ProcReader on live and fake processes.

Fixtures are in tests/unit/data/proc (see its README for which files are
recorded and which are hand-made edge cases).
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from procsnap.errors import AccessDenied, NoSuchProcess, ParseError, ZombieProcess
from procsnap.procfs import pagemap, parse
from procsnap.procfs.pagemap import dump_runs
from procsnap.procfs.parse import RLIM_INFINITY
from procsnap.procfs.reader import PF_KTHREAD, ProcReader, is_kernel_thread

DATA = Path(__file__).parent / "data" / "proc"


def text(name: str) -> str:
    return (DATA / name).read_bytes().decode("utf-8", "surrogateescape")


# ==========================================================================
# maps
# ==========================================================================

class TestMaps:
    def test_recorded(self) -> None:
        maps = parse.parse_maps(text("self_maps.txt"))
        assert len(maps) == text("self_maps.txt").count("\n")
        assert all(a.end <= b.start for a, b in zip(maps, maps[1:], strict=False))
        by_path = {m.path: m for m in maps}
        for special in ("[heap]", "[stack]", "[vdso]", "[vvar]",
                        "[vvar_vclock]", "[vsyscall]"):
            assert special in by_path, special
        assert by_path["[vdso]"].prot == parse.PROT_READ | parse.PROT_EXEC
        assert by_path["[vsyscall]"].start == 0xFFFFFFFFFF600000
        assert by_path["[vsyscall]"].perms == "--xp"
        memfd = by_path["/memfd:procsnap-memfd (deleted)"]
        assert memfd.shared and memfd.perms == "rw-s" and memfd.size == 8192
        # Anonymous memory: no name, no device.
        anon = [m for m in maps if m.path == ""]
        assert anon and all(m.ino == 0 and m.dev_major == 0 for m in anon)

    def test_recorded_names_kept_raw(self) -> None:
        paths = [m.path for m in parse.parse_maps(text("self_maps.txt"))]
        tails = [p.rsplit("/", 1)[-1] for p in paths if "procsnap rec" in p]
        # The deleted file and the live file *named* "x (deleted)" print
        # the same way; the parser must not guess which is which.
        assert sorted(tails) == ["gone.bin (deleted)", "with space.bin", "x (deleted)"]

    def test_file_backed_fields(self) -> None:
        libc = next(m for m in parse.parse_maps(text("self_maps.txt"))
                    if m.path.endswith("libc.so.6") and "x" in m.perms)
        assert (libc.dev_major, libc.dev_minor) == (0xFE, 0)
        assert libc.ino > 0 and libc.pgoff > 0 and not libc.shared

    def test_edge_cases(self) -> None:
        maps = parse.parse_maps(text("maps_edge.txt"))
        paths = [m.path for m in maps]
        assert paths == [
            "/opt/my app/bin/run",
            "/opt/my app/bin/run",
            "/tmp/x (deleted)",
            "/tmp/x (deleted) (deleted)",
            "/memfd:my memfd (deleted)",
            "[anon:my name]",
            "/SYSV0000162e (deleted)",
            "/tmp/trailing  ",
            "/tmp/new\\012line",
            "/tmp/vt\x0bff\x0cname",
            "",
            "",
            "anon_inode:[perf_event]",
            "/big/dev",
            "[stack]",
            "[vsyscall]",
        ]
        assert maps[0].start == 0x400000 and maps[0].end == 0x401000
        assert maps[1].pgoff == 0x1000 and maps[1].prot == 3
        assert maps[10].prot == parse.PROT_NONE
        big = maps[13]
        assert (big.dev_major, big.dev_minor) == (0x103, 0x2A)
        assert big.ino == 2**64 - 1

    def test_empty(self) -> None:
        assert parse.parse_maps("") == []

    @pytest.mark.parametrize("bad", [
        "garbage\n",
        "00400000-00401000 r-xq 00000000 08:01 1 /x\n",   # bad perms
        "00400000 r-xp 00000000 08:01 1 /x\n",            # no end
        "00401000-00400000 r-xp 00000000 08:01 1 /x\n",   # end < start
        "00400000-00401000 r-xp 00000000 08:01\n",        # no inode
    ])
    def test_malformed(self, bad: str) -> None:
        with pytest.raises(ParseError) as exc:
            parse.parse_maps(bad, "/proc/77/maps")
        assert exc.value.path == "/proc/77/maps"
        assert "/proc/77/maps" in str(exc.value)


    @pytest.mark.parametrize("name", ["self_maps.txt", "maps_edge.txt"])
    def test_ranges_as_parse_maps(self, name: str) -> None:
        # the restorer's quick read of a puppet's layout (free range for
        # its trampoline) sees exactly the VMAs parse_maps sees
        full = parse.parse_maps(text(name))
        assert parse.maps_ranges(text(name)) == [(m.start, m.end) for m in full]
        assert parse.maps_ranges("") == []

    @pytest.mark.parametrize("bad", ["garbage\n", "00400000 r-xp 00000000 08:01 1 /x\n",
                                     "00401000-00400000 r-xp 00000000 08:01 1 /x\n",
                                     "0040zz00-00401000 r-xp 00000000 08:01 1 /x\n"])
    def test_ranges_malformed(self, bad: str) -> None:
        with pytest.raises(ParseError) as exc:
            parse.maps_ranges(bad, "/proc/77/maps")
        assert exc.value.path == "/proc/77/maps"

    def test_named(self) -> None:
        names = ("[vvar]", "[vvar_vclock]", "[vdso]")
        full = parse.parse_maps(text("self_maps.txt"))
        assert parse.parse_maps_named(text("self_maps.txt"), names) == \
            [m for m in full if m.path in names]
        # a file whose name ends like one is not one; a broken line says so
        odd = "7f0000000000-7f0000001000 r--p 00000000 fe:00 1234   /tmp/x [vdso]\n"
        assert parse.parse_maps_named(odd, names) == []
        with pytest.raises(ParseError):
            parse.parse_maps_named("7f00-7e00 r--p 00000000 00:00 0   [vdso]\n", names)


# ==========================================================================
# stat
# ==========================================================================

class TestStat:
    def test_recorded(self) -> None:
        st = parse.parse_stat(text("self_stat.txt"))
        assert st.comm == "python3" and st.state == "R"
        assert st.pid > 0 and st.ppid > 0 and st.tpgid == -1
        assert st.num_threads == 1
        assert st.rsslim == 2**64 - 1
        assert st.startcode < st.endcode
        assert st.start_data < st.end_data <= st.start_brk
        assert st.arg_start < st.arg_end <= st.env_start < st.env_end
        assert st.exit_signal == 17 and st.exit_code == 0
        assert not st.flags & PF_KTHREAD

    def test_kernel_thread(self) -> None:
        st = parse.parse_stat(text("stat_kthreadd.txt"))
        assert st.pid == 2 and st.comm == "kthreadd" and st.ppid == 0
        assert st.flags & PF_KTHREAD
        assert st.vsize == 0 and st.start_data == 0

    def test_comm_with_parens_and_spaces(self) -> None:
        st = parse.parse_stat(text("stat_weird_comm.txt"))
        assert st.pid == 1234
        assert st.comm == "a) (b )c"
        assert st.state == "S" and st.ppid == 1 and st.pgrp == 1234
        assert st.priority == 20 and st.num_threads == 2
        assert st.start_data == 6299000 and st.env_end == 140722000002000

    def test_comm_with_newline(self) -> None:
        st = parse.parse_stat(text("stat_newline_comm.txt"))
        assert st.comm == "new\nline" and st.pid == 1235

    def test_truncated_before_start_data(self) -> None:
        st = parse.parse_stat(text("stat_truncated.txt"))
        assert st.comm == "old" and st.cguest_time == 0 and st.starttime == 9999
        assert (st.start_data, st.end_data, st.start_brk, st.arg_start,
                st.arg_end, st.env_start, st.env_end, st.exit_code) == (0,) * 8

    @pytest.mark.parametrize("name", ["stat_too_short.txt", "garbage.txt"])
    def test_malformed_fixture(self, name: str) -> None:
        with pytest.raises(ParseError) as exc:
            parse.parse_stat(text(name), "/proc/9/stat")
        assert exc.value.path == "/proc/9/stat"

    @pytest.mark.parametrize("bad", [
        "",
        "12 (x S 1 2 3",                                  # no ')'
        "x (comm) " + "S " + "1 " * 60,                   # pid not a number
        "12 (comm) " + "S " + "1 " * 20 + "zz " + "1 " * 30,  # bad number
        "12 (comm) " + "SS " + "1 " * 60,                 # bad state
    ])
    def test_malformed(self, bad: str) -> None:
        with pytest.raises(ParseError):
            parse.parse_stat(bad)


# ==========================================================================
# status
# ==========================================================================

class TestStatus:
    def test_recorded(self) -> None:
        st = parse.parse_status(text("self_status.txt"))
        assert st.name == "python3" and st.state == "R"
        assert st.umask == 0o022
        assert st.tgid == st.pid and st.ppid > 0 and st.tracer_pid == 0
        assert st.uids == (0, 0, 0, 0) and st.gids == (0, 0, 0, 0)
        assert st.groups == []
        assert st.nstgid == [st.tgid] and st.nspid == [st.pid]
        assert st.threads == 1 and st.sig_q[1] > 0
        assert st.sig_ign == 0x1001000 and st.sig_cgt == 0x2  # python's defaults
        assert st.cap_eff == st.cap_prm == 0x1FFFEFFFFFF and st.cap_amb == 0
        assert st.no_new_privs == 0 and st.seccomp == 0
        assert st.raw["Cpus_allowed_list"] == "0-1"
        assert st.raw["VmExe"].endswith("kB")

    def test_old_kernel_and_escaped_name(self) -> None:
        st = parse.parse_status(text("status_old_kernel.txt"))
        assert st.name == "old\nname\\x"
        assert st.umask is None and st.cap_amb is None
        assert st.no_new_privs is None and st.seccomp is None
        assert st.nspid == [] and st.nssid == []
        assert st.uids == (1000, 1001, 1002, 1003)
        assert st.gids == (100, 101, 102, 103)
        assert st.groups == [4, 24, 27]
        assert st.sig_q == (2, 7812)
        assert st.shd_pnd == 0x100 and st.sig_blk == 0x10000
        assert st.sig_cgt == 0x180004002 and st.cap_bnd == 0x3FFFFFFFFF

    def test_missing_required_line(self) -> None:
        lines = text("self_status.txt").split("\n")
        without_uid = "\n".join(x for x in lines if not x.startswith("Uid:"))
        with pytest.raises(ParseError, match="'Uid'"):
            parse.parse_status(without_uid, "/proc/5/status")

    @pytest.mark.parametrize("line,repl", [
        ("Uid:", "Uid:\t0\t0\t0\n"),
        ("SigBlk:", "SigBlk:\tnothex\n"),
        ("SigQ:", "SigQ:\t12\n"),
        ("Threads:", "Threads:\t1 2\n"),
    ])
    def test_bad_values(self, line: str, repl: str) -> None:
        lines = text("self_status.txt").splitlines(keepends=True)
        bad = "".join(repl if x.startswith(line) else x for x in lines)
        with pytest.raises(ParseError):
            parse.parse_status(bad)

    def test_garbage(self) -> None:
        with pytest.raises(ParseError, match="/proc/3/status"):
            parse.parse_status(text("garbage.txt"), "/proc/3/status")


# ==========================================================================
# fdinfo
# ==========================================================================

class TestFdinfo:
    def test_plain(self) -> None:
        info = parse.parse_fdinfo(text("fdinfo_stdin.txt"))
        assert info.pos == 0 and info.flags == 0o100000  # O_LARGEFILE (0 in Python)
        assert info.mnt_id == 24 and info.ino == 3 and info.extra == {}

    def test_eventfd(self) -> None:
        info = parse.parse_fdinfo(text("fdinfo_eventfd.txt"))
        assert info.flags == os.O_CLOEXEC | os.O_RDWR
        assert info.extra["eventfd-count"] == "7"
        assert info.extra["eventfd-semaphore"] == "0"

    def test_epoll_records(self) -> None:
        info = parse.parse_fdinfo(text("fdinfo_epoll.txt"))
        (rec,) = parse.fdinfo_records(info, "tfd")
        assert rec["tfd"] == "5" and int(rec["events"], 16) == 0x19
        assert set(rec) == {"tfd", "events", "data", "pos", "ino", "sdev"}

    def test_inotify_records(self) -> None:
        info = parse.parse_fdinfo(text("fdinfo_inotify.txt"))
        (rec,) = parse.fdinfo_records(info, "inotify")
        assert rec["wd"] == "1" and int(rec["mask"], 16) == 0x100
        assert rec["fhandle-bytes"] == "8" and len(rec["f_handle"]) == 16
        assert parse.fdinfo_records(info, "fanotify") == []

    def test_timerfd_and_signalfd(self) -> None:
        tfd = parse.parse_fdinfo(text("fdinfo_timerfd.txt"))
        assert tfd.extra["clockid"] == "1"
        assert tfd.extra["settime flags"] == "00"
        assert tfd.extra["it_interval"] == "(0, 0)"
        sfd = parse.parse_fdinfo(text("fdinfo_signalfd.txt"))
        assert int(sfd.extra["sigmask"], 16) == 1 << 9  # SIGUSR1

    def test_old_kernel(self) -> None:
        info = parse.parse_fdinfo(text("fdinfo_old_kernel.txt"))
        assert info.pos == 4096 and info.flags == 0o100002
        assert info.mnt_id is None and info.ino is None

    def test_repeated_keys_kept_in_lines(self) -> None:
        info = parse.parse_fdinfo(text("fdinfo_locks.txt"))
        assert info.extra["lock"].startswith("1: POSIX")
        locks = [x for x in info.lines if x.startswith("lock:")]
        assert len(locks) == 2 and "FLOCK" in locks[1]

    @pytest.mark.parametrize("bad", ["flags:\t02\n", "pos:\t0\nflags:\t09\n",
                                     "pos:\tx\nflags:\t0\n", "pos 0\n"])
    def test_malformed(self, bad: str) -> None:
        with pytest.raises(ParseError, match="/proc/1/fdinfo/3"):
            parse.parse_fdinfo(bad, "/proc/1/fdinfo/3")


# ==========================================================================
# mountinfo
# ==========================================================================

class TestMountinfo:
    def test_recorded(self) -> None:
        mounts = parse.parse_mountinfo(text("self_mountinfo.txt"))
        assert len(mounts) == text("self_mountinfo.txt").count("\n")
        proc = next(m for m in mounts if m.mount_point == "/proc")
        assert proc.fstype == "proc" and proc.source == "proc"
        assert proc.mount_options.startswith("rw")
        ids = {m.mnt_id for m in mounts}
        # Every mount but the root hangs off another one we can see.
        assert sum(m.parent_id not in ids for m in mounts) == 1

    def test_escapes_and_optional_fields(self) -> None:
        root, sub, tab, fuse, unb = parse.parse_mountinfo(text("mountinfo_escaped.txt"))
        assert root.optional == ["shared:1"] and root.mount_point == "/"
        assert (sub.major, sub.minor) == (8, 2)
        assert sub.root == "/sub dir" and sub.mount_point == "/mnt/with space"
        assert sub.optional == ["shared:5", "master:2"]
        assert sub.super_options == "rw,errors=remount-ro"
        assert tab.mount_point == "/mnt/tab\tand\nnewline"
        assert tab.source == "" and tab.fstype == "tmpfs"
        assert fuse.mount_point == "/mnt/back\\slash"
        assert fuse.fstype == "fuse.sshfs" and fuse.source == "user@host:/a b"
        assert unb.optional == ["unbindable"]

    @pytest.mark.parametrize("bad", [
        "21 1 8:1 / / rw shared:1 ext4 /dev/sda1 rw\n",   # no separator
        "21 1 8:1 / / rw - ext4\n",                        # too few after '-'
        "x 1 8:1 / / rw - ext4 /dev/sda1 rw\n",           # bad id
        "21 1 81 / / rw - ext4 /dev/sda1 rw\n",           # bad device
    ])
    def test_malformed(self, bad: str) -> None:
        with pytest.raises(ParseError, match="/proc/4/mountinfo"):
            parse.parse_mountinfo(bad, "/proc/4/mountinfo")

    def test_unescape_octal(self) -> None:
        assert parse.unescape_octal(r"a\040b\134c\011") == "a b\\c\t"
        assert parse.unescape_octal(r"no\escape") == r"no\escape"


# ==========================================================================
# limits, auxv, timers
# ==========================================================================

class TestLimits:
    def test_recorded(self) -> None:
        limits = parse.parse_limits(text("self_limits.txt"))
        assert list(limits) == list(parse.LIMIT_RESOURCES)
        assert limits["Max cpu time"] == (RLIM_INFINITY, RLIM_INFINITY)
        assert limits["Max stack size"] == (8388608, RLIM_INFINITY)
        assert limits["Max nice priority"] == (0, 0)  # row without a unit
        soft, hard = limits["Max open files"]
        assert 0 < soft <= hard

    def test_resource_numbers_match_python(self) -> None:
        import resource
        for title, number in parse.LIMIT_RESOURCES.items():
            name = "RLIMIT_" + {
                "Max cpu time": "CPU", "Max file size": "FSIZE",
                "Max data size": "DATA", "Max stack size": "STACK",
                "Max core file size": "CORE", "Max resident set": "RSS",
                "Max processes": "NPROC", "Max open files": "NOFILE",
                "Max locked memory": "MEMLOCK", "Max address space": "AS",
                "Max file locks": "LOCKS", "Max pending signals": "SIGPENDING",
                "Max msgqueue size": "MSGQUEUE", "Max nice priority": "NICE",
                "Max realtime priority": "RTPRIO",
                "Max realtime timeout": "RTTIME"}[title]
            if hasattr(resource, name):
                assert getattr(resource, name) == number, title

    @pytest.mark.parametrize("name", ["garbage.txt", "self_stat.txt"])
    def test_malformed(self, name: str) -> None:
        with pytest.raises(ParseError):
            parse.parse_limits(text(name))

    def test_bad_row(self) -> None:
        bad = text("self_limits.txt").replace("20000", "lots", 1)
        with pytest.raises(ParseError, match="line"):
            parse.parse_limits(bad)


class TestAuxv:
    def test_recorded(self) -> None:
        data = (DATA / "self_auxv.bin").read_bytes()
        auxv = parse.parse_auxv(data)
        assert len(auxv) % 2 == 0 and auxv[-2:] == [0, 0]
        pairs = dict(zip(auxv[::2], auxv[1::2], strict=True))
        assert pairs[6] == 4096          # AT_PAGESZ
        assert pairs[17] == 100          # AT_CLKTCK
        assert 0 not in auxv[:-2:2]      # exactly one AT_NULL, at the end

    def test_stops_at_at_null(self) -> None:
        words = [6, 4096, 0, 0, 99, 99]
        data = b"".join(w.to_bytes(8, sys.byteorder) for w in words)
        assert parse.parse_auxv(data) == [6, 4096, 0, 0]

    def test_empty_and_malformed(self) -> None:
        assert parse.parse_auxv(b"") == []
        with pytest.raises(ParseError, match="multiple"):
            parse.parse_auxv(b"\0" * 12)
        with pytest.raises(ParseError, match="AT_NULL"):
            parse.parse_auxv((6).to_bytes(8, sys.byteorder) * 2, "/proc/8/auxv")


class TestTimers:
    def test_recorded(self) -> None:
        (t,) = parse.parse_timers(text("self_timers.txt"))
        assert (t.id, t.signo, t.notify, t.notify_tid, t.clock_id) == (0, 14, "signal", False, 1)
        assert t.sigev_notify == parse.SIGEV_SIGNAL

    def test_several(self) -> None:
        timers = parse.parse_timers(text("timers_several.txt"))
        assert [t.id for t in timers] == [0, 1, 2, 3]
        assert timers[1].notify_tid and timers[1].notify_pid == 4001
        assert timers[1].sigev_value == 0x7F00DEADBEEF
        assert timers[1].sigev_notify == parse.SIGEV_SIGNAL | parse.SIGEV_THREAD_ID
        assert timers[2].sigev_notify == parse.SIGEV_NONE and timers[2].clock_id == 7
        assert timers[3].sigev_notify == parse.SIGEV_THREAD

    def test_empty_and_malformed(self) -> None:
        assert parse.parse_timers("") == []
        with pytest.raises(ParseError, match="/proc/6/timers"):
            parse.parse_timers(text("garbage.txt"), "/proc/6/timers")
        cut = "\n".join(text("timers_several.txt").split("\n")[:6])
        with pytest.raises(ParseError):
            parse.parse_timers(cut)


# ==========================================================================
# pagemap
# ==========================================================================

PRESENT = 1 << 63
SWAPPED = 1 << 62
FILE = 1 << 61
EXCLUSIVE = 1 << 56
SOFT_DIRTY = 1 << 55


def entries(*values: int) -> bytes:
    return b"".join(v.to_bytes(8, sys.byteorder) for v in values)


def reference_runs(data: bytes, anon_only: bool) -> list[tuple[int, int]]:
    """Obvious per-page implementation to check the fast one against."""
    runs: list[tuple[int, int]] = []
    for i in range(len(data) // 8):
        e = int.from_bytes(data[i * 8:i * 8 + 8], sys.byteorder)
        want = bool(e & (PRESENT | SWAPPED)) and not (anon_only and e & FILE)
        if want:
            if runs and runs[-1][0] + runs[-1][1] == i:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((i, 1))
    return runs


class TestDumpRuns:
    def test_runs_at_start_middle_end(self) -> None:
        p = PRESENT | EXCLUSIVE | 0x1234  # PFN bits must not matter
        data = entries(p, p, 0, 0, p, SOFT_DIRTY, 0, p, p)
        assert dump_runs(data, anon_only=False) == [(0, 2), (4, 1), (7, 2)]

    def test_swapped_pages_count(self) -> None:
        data = entries(0, SWAPPED | 0xABC, PRESENT, SWAPPED, 0)
        assert dump_runs(data, anon_only=False) == [(1, 3)]
        assert dump_runs(data, anon_only=True) == [(1, 3)]

    def test_file_pages_excluded_when_anon_only(self) -> None:
        data = entries(PRESENT | FILE, PRESENT, PRESENT | FILE, PRESENT | FILE,
                       PRESENT, SWAPPED, PRESENT | FILE)
        assert dump_runs(data, anon_only=True) == [(1, 1), (4, 2)]
        assert dump_runs(data, anon_only=False) == [(0, 7)]

    def test_file_bit_alone_is_not_present(self) -> None:
        assert dump_runs(entries(FILE, FILE | SOFT_DIRTY), anon_only=False) == []

    def test_all_empty(self) -> None:
        assert dump_runs(bytes(8 * 512), anon_only=False) == []
        assert dump_runs(b"", anon_only=True) == []

    def test_accepts_buffers(self) -> None:
        data = entries(0, PRESENT)
        assert dump_runs(bytearray(data), anon_only=False) == [(1, 1)]
        assert dump_runs(memoryview(data), anon_only=False) == [(1, 1)]

    def test_bad_length(self) -> None:
        with pytest.raises(ParseError):
            dump_runs(b"\0" * 12, anon_only=False)

    def test_one_gib_vma(self) -> None:
        n = 262_144
        rng = random.Random(1234)
        # Random top bytes over the interesting flag combinations, with
        # long empty and long full stretches so runs of every size occur.
        flags = [0, 0x80, 0x40, 0xA0, 0x20, 0x81, 0xE1]
        tops = bytearray(rng.choice(flags) for _ in range(n))
        tops[1000:50000] = b"\x80" * 49000
        tops[60000:120000] = bytes(60000)
        buf = bytearray(n * 8)
        buf[7 if sys.byteorder == "little" else 0::8] = tops
        low = rng.randbytes(n)  # PFN noise in the low byte
        buf[0 if sys.byteorder == "little" else 7::8] = low
        data = bytes(buf)
        for anon_only in (False, True):
            t0 = time.perf_counter()
            runs = dump_runs(data, anon_only=anon_only)
            elapsed = time.perf_counter() - t0
            assert runs == reference_runs(data, anon_only)
            # A few ms in practice; generous bound for loaded CI machines.
            assert elapsed < 0.5, elapsed

    def test_one_gib_vma_all_present_is_fast(self) -> None:
        data = entries(PRESENT) * 262_144
        t0 = time.perf_counter()
        assert dump_runs(data, anon_only=False) == [(0, 262_144)]
        assert time.perf_counter() - t0 < 0.1


class TestReadPagemap:
    def test_own_memory(self) -> None:
        pages = 64
        buf = mmap.mmap(-1, pages * mmap.PAGESIZE,
                        flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            for i in (0, 1, 2, 3, 10, 63):
                buf[i * mmap.PAGESIZE] = 1
            addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
            end = addr + pages * mmap.PAGESIZE
            data = pagemap.read_pagemap(os.getpid(), addr, end)
            assert len(data) == pages * 8
            want = [(0, 4), (10, 1), (63, 1)]
            assert dump_runs(data, anon_only=False) == want
            # Chunks of 3 pages: the run 0..3 crosses a chunk boundary.
            runs = pagemap.vma_dump_runs(os.getpid(), addr, end,
                                         anon_only=False, chunk_pages=3)
            assert runs == [(addr + i * mmap.PAGESIZE, n) for i, n in want]
        finally:
            del data
            buf.close()

    def test_errors(self) -> None:
        with pytest.raises(ValueError):
            pagemap.read_pagemap(os.getpid(), 1, 4096)
        with pytest.raises(NoSuchProcess):
            pagemap.read_pagemap(unused_pid(), 0, 4096)


# ==========================================================================
# ProcReader
# ==========================================================================

def unused_pid() -> int:
    """A pid that cannot exist: one above the kernel's pid_max."""
    with open("/proc/sys/kernel/pid_max") as f:
        return int(f.read()) + 1


CHILD = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
tid = ctypes.c_void_p()
assert libc.timer_create(1, None, ctypes.byref(tid)) == 0  # CLOCK_MONOTONIC
os.chdir("/")
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, "arg one", "two"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, close_fds=True,
        env={"PROCSNAP_TEST": "a=b", "PATH": os.environ.get("PATH", "")},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def wait_for_state(pid: int, states: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ProcReader(pid).stat().state in states:
            return
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} never reached state {states!r}")


class TestProcReaderLive:
    def test_stat_and_status(self, child: subprocess.Popen[bytes]) -> None:
        r = ProcReader(child.pid)
        st = r.stat()
        assert st.pid == child.pid and st.ppid == os.getpid()
        assert st.state in "SR" and st.num_threads == 1
        assert st.start_data > 0  # we may ptrace it, so addresses are shown
        status = r.status()
        assert status.pid == status.tgid == child.pid
        assert status.ppid == os.getpid()
        assert status.uids[1] == os.geteuid()
        assert r.comm() == status.name == st.comm
        assert not is_kernel_thread(child.pid)

    def test_memory(self, child: subprocess.Popen[bytes]) -> None:
        r = ProcReader(child.pid)
        maps = r.maps()
        paths = {m.path for m in maps}
        assert "[stack]" in paths and "[heap]" in paths
        exe = os.path.realpath(sys.executable)
        assert r.exe() == exe
        auxv = r.auxv()
        pairs = dict(zip(auxv[::2], auxv[1::2], strict=True))
        assert auxv[-2:] == [0, 0] and pairs[6] == mmap.PAGESIZE
        # AT_ENTRY lies in a mapping of the executable (or its loader).
        assert any(m.start <= pairs[9] < m.end and "x" in m.perms for m in maps)

    def test_files_and_links(self, child: subprocess.Popen[bytes]) -> None:
        r = ProcReader(child.pid)
        fds = r.fds()
        assert fds[:3] == [0, 1, 2] and fds == sorted(fds)
        assert r.fd_link(0) == "/dev/null"
        assert r.fd_link(1).startswith("pipe:[")
        info = r.fdinfo(1)
        assert info.flags & os.O_ACCMODE == os.O_WRONLY
        assert info.ino == os.fstat(child.stdout.fileno()).st_ino  # type: ignore[union-attr]
        assert r.cwd() == "/" and r.root() == "/"
        with pytest.raises(FileNotFoundError):
            r.fd_link(999)
        with pytest.raises(FileNotFoundError):
            r.fdinfo(999)

    def test_misc(self, child: subprocess.Popen[bytes]) -> None:
        r = ProcReader(child.pid)
        assert r.cmdline() == [sys.executable, "-c", CHILD, "arg one", "two"]
        assert r.environ()["PROCSNAP_TEST"] == "a=b"
        assert r.tids() == [child.pid]
        assert r.personality() == 0
        (timer,) = r.timers()
        assert timer.clock_id == 1 and timer.notify_pid == child.pid
        assert r.limits() == parse.parse_limits(open(f"/proc/{child.pid}/limits").read())
        assert any(m.mount_point == "/proc" for m in r.mountinfo())

    def test_gone_after_kill(self, child: subprocess.Popen[bytes]) -> None:
        r = ProcReader(child.pid)
        child.kill()
        child.wait()
        with pytest.raises(NoSuchProcess) as exc:
            r.maps()
        assert exc.value.pid == child.pid


class TestProcReaderErrors:
    def test_no_such_process(self) -> None:
        pid = unused_pid()
        r = ProcReader(pid)
        for call in (r.stat, r.status, r.maps, r.fds, r.exe, r.cwd, r.tids,
                     r.cmdline, r.auxv, r.timers, lambda: r.fd_link(0)):
            with pytest.raises(NoSuchProcess) as exc:
                call()
            assert exc.value.pid == pid
            assert not isinstance(exc.value, ZombieProcess)
        with pytest.raises(NoSuchProcess):
            is_kernel_thread(pid)

    def test_zombie(self) -> None:
        proc = subprocess.Popen([sys.executable, "-c", "pass"], close_fds=True)
        try:
            wait_for_state(proc.pid, "Z")
            r = ProcReader(proc.pid)
            assert r.stat().state == "Z"
            for call in (r.maps, r.auxv, r.exe, r.cmdline, r.fds):
                with pytest.raises(ZombieProcess) as exc:
                    call()
                assert exc.value.pid == proc.pid
        finally:
            proc.kill()
            proc.wait()

    def test_kernel_thread(self) -> None:
        try:
            st = ProcReader(2).stat()
        except NoSuchProcess:
            pytest.skip("no pid 2 visible (pid namespace)")
        if not st.flags & PF_KTHREAD:
            pytest.skip("pid 2 is not a kernel thread here")
        assert is_kernel_thread(2)
        assert ProcReader(2).maps() == []
        assert ProcReader(2).cmdline() == []
        with pytest.raises(FileNotFoundError):
            ProcReader(2).exe()

    def test_access_denied_translation(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def denied(self: ProcReader, name: str) -> bytes:
            raise PermissionError(errno.EACCES, "Permission denied", self.path(name))

        monkeypatch.setattr(ProcReader, "_read_bytes", denied)
        with pytest.raises(AccessDenied) as exc:
            ProcReader(os.getpid()).environ()
        assert exc.value.pid == os.getpid()
        assert str(exc.value) == (f"pid {os.getpid()}: permission denied reading "
                                  f"/proc/{os.getpid()}/environ")

    def test_esrch_translation(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def gone(self: ProcReader, name: str) -> bytes:
            raise ProcessLookupError(errno.ESRCH, "No such process")

        monkeypatch.setattr(ProcReader, "_read_bytes", gone)
        with pytest.raises(NoSuchProcess):
            ProcReader(os.getpid()).stat()

    def test_parse_error_passes_through(self, tmp_path: Path) -> None:
        (tmp_path / "42").mkdir()
        (tmp_path / "42" / "stat").write_text("garbage\n")
        with pytest.raises(ParseError) as exc:
            ProcReader(42, str(tmp_path)).stat()
        assert exc.value.path == f"{tmp_path}/42/stat"

    @pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to nobody")
    def test_access_denied_real(self) -> None:
        # As an unprivileged user another user's environ is EACCES.  Fork
        # (no exec: the interpreter may not be reachable for nobody), drop
        # to nobody and report through the exit status.
        target = subprocess.Popen(["sleep", "30"], close_fds=True)
        try:
            pid = os.fork()
            if pid == 0:
                status = 3
                try:
                    os.setgroups([])
                    os.setgid(65534)
                    os.setuid(65534)
                    ProcReader(target.pid).environ()
                    status = 1
                except AccessDenied as err:
                    ok = (err.pid == target.pid
                          and f"/proc/{target.pid}/environ" in str(err))
                    status = 0 if ok else 2
                finally:
                    os._exit(status)
            _, wstatus = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(wstatus) == 0
        finally:
            target.kill()
            target.wait()


class TestProcReaderFakeRoot:
    """ProcReader on a directory shaped like /proc, built from fixtures."""

    @pytest.fixture
    def root(self, tmp_path: Path) -> Path:
        base = tmp_path / "77"
        (base / "fd").mkdir(parents=True)
        (base / "fdinfo").mkdir()
        (base / "task" / "77").mkdir(parents=True)
        (base / "task" / "80").mkdir()
        shutil.copy(DATA / "stat_weird_comm.txt", base / "stat")
        shutil.copy(DATA / "maps_edge.txt", base / "maps")
        shutil.copy(DATA / "mountinfo_escaped.txt", base / "mountinfo")
        shutil.copy(DATA / "fdinfo_eventfd.txt", base / "fdinfo" / "3")
        shutil.copy(DATA / "self_personality.txt", base / "personality")
        os.symlink("anon_inode:[eventfd]", base / "fd" / "3")
        os.symlink("/x", base / "fd" / "10")
        (base / "cmdline").write_bytes(b"prog\0with space\0\0")
        (base / "environ").write_bytes(b"A=1\0NOEQUALS\0B=x=y\0")
        (base / "comm").write_bytes(b"a) (b )c\n")
        return tmp_path

    def test_reads(self, root: Path) -> None:
        r = ProcReader(77, str(root))
        assert r.stat().comm == "a) (b )c" == r.comm()
        assert r.maps()[2].path == "/tmp/x (deleted)"
        assert r.mountinfo()[1].mount_point == "/mnt/with space"
        assert r.fds() == [3, 10]
        assert r.fd_link(3) == "anon_inode:[eventfd]"
        assert r.fdinfo(3).extra["eventfd-count"] == "7"
        assert r.tids() == [77, 80]
        assert r.personality() == 0
        assert r.cmdline() == ["prog", "with space", ""]
        assert r.environ() == {"A": "1", "B": "x=y"}
        assert not is_kernel_thread(77, str(root))

    def test_fd_gone_is_file_not_found(self, root: Path) -> None:
        r = ProcReader(77, str(root))
        os.unlink(root / "77" / "fd" / "10")
        with pytest.raises(FileNotFoundError):
            r.fd_link(10)
        with pytest.raises(FileNotFoundError):
            r.fdinfo(10)

    def test_missing_process_dir(self, root: Path) -> None:
        with pytest.raises(NoSuchProcess) as exc:
            ProcReader(78, str(root)).fd_link(3)
        assert exc.value.pid == 78

    def test_bad_personality(self, root: Path) -> None:
        (root / "77" / "personality").write_text("zz\n")
        with pytest.raises(ParseError, match=re.escape(f"{root}/77/personality")):
            ProcReader(77, str(root)).personality()
