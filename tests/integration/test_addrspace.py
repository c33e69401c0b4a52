"""Special parts of an address space (issue 14): a task that unmapped its
vDSO gets none back (zdtm vdso02); one that unmapped only part of it is
refused, and runs on.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers import (
    TargetFactory,
    assert_one_line_error,
    is_untouched,
    proc_exists,
    run_procsnap,
    wait_for,
)
from integration.test_tree import adopt_tree, dump_tree, restore_tree, start_argv

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

# Unmaps [vvar], [vvar_vclock] and [vdso] (all, or only [vdso] with
# argv[1] == "part"), then waits; SIGTERM: checks its maps has no vDSO
# and prints PASS.  No libc time call after the unmap: glibc would jump
# into the vDSO it cached.
_NOVDSO = r"""
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
static volatile sig_atomic_t stop;
static void on_term(int s) { (void)s; stop = 1; }
static int has_vdso(int drop, int all)
{
	char line[512];
	int found = 0;
	FILE *f = fopen("/proc/self/maps", "r");
	unsigned long a, b;
	while (fgets(line, sizeof(line), f)) {
		if (!strstr(line, "[vdso]") && !strstr(line, "[vvar"))
			continue;
		found = 1;
		if (drop && (all || strstr(line, "[vdso]")) && sscanf(line, "%lx-%lx", &a, &b) == 2)
			munmap((void *)a, b - a);
	}
	fclose(f);
	return found;
}
int main(int argc, char **argv)
{
	signal(SIGTERM, on_term);
	has_vdso(1, argc < 2);
	printf("ready\n");
	fflush(stdout);
	while (!stop)
		pause();
	printf(has_vdso(0, 0) ? "FAIL: a vDSO is back\n" : "PASS\n");
	return 0;
}
"""


def _build(tmp_path: Path) -> str:
    src = tmp_path / "novdso.c"
    src.write_text(_NOVDSO)
    exe = tmp_path / "novdso"
    subprocess.run(["gcc", "-O1", "-o", str(exe), str(src)], check=True)
    return str(exe)


def _maps(pid: int) -> list[str]:
    with open(f"/proc/{pid}/maps") as f:
        return [" ".join(x.split()) for x in f if "[vsyscall]" not in x]


def test_unmapped_vdso_stays_unmapped(targets: TargetFactory, tmp_path: Path) -> None:
    t = start_argv(targets, [_build(tmp_path)], "novdso")
    wait_for(lambda: t.out.exists() and "ready" in t.out.read_text(), 10, "novdso to start")
    adopt_tree(targets, t)
    before = _maps(t.pid)
    assert not any("[vdso]" in x or "[vvar" in x for x in before), before
    pids = dump_tree(t.pid, tmp_path / "images")
    restore_tree(targets, t, tmp_path / "images", pids)
    assert _maps(t.pid) == before
    os.kill(t.pid, signal.SIGTERM)
    wait_for(lambda: "PASS" in t.out.read_text() or "FAIL" in t.out.read_text(), 10, "verdict")
    assert "PASS" in t.out.read_text(), t.out.read_text()


def test_part_of_vdso_unmapped_is_refused(targets: TargetFactory, tmp_path: Path) -> None:
    t = start_argv(targets, [_build(tmp_path), "part"], "partvdso")
    wait_for(lambda: t.out.exists() and "ready" in t.out.read_text(), 10, "partvdso to start")
    res = run_procsnap("dump", "-t", t.pid, "-D", tmp_path / "images")
    line = assert_one_line_error(res, f"pid {t.pid}")
    assert "vDSO/vvar mappings ['[vvar]', '[vvar_vclock]']" in line, line
    ok, why = is_untouched(t.pid)
    assert ok, why
    assert proc_exists(t.pid)


# Guard pages (MADV_GUARD_INSTALL) in private anonymous and private file
# memory, around written pages.  SIGTERM: every guard must still fault and
# every other page hold its bytes; prints PASS or FAIL.
_GUARDS = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#define PG 4096
static volatile sig_atomic_t stop;
static sigjmp_buf jb;
static void on_term(int s) { (void)s; stop = 1; }
static void on_segv(int s) { (void)s; siglongjmp(jb, 1); }
static int faults(volatile char *p)
{
	if (sigsetjmp(jb, 1))
		return 1;
	*p = 'x';
	return 0;
}
/* pages 1, 2 and 5 of each 8-page region are guards */
static const int guard[8] = { 0, 1, 1, 0, 0, 1, 0, 0 };
int main(int argc, char **argv)
{
	int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0600), i, k, bad = 0;
	char *r[2];
	if (fd < 0 || ftruncate(fd, 8 * PG))
		return 2;
	r[0] = mmap(NULL, 8 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	r[1] = mmap(NULL, 8 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	for (k = 0; k < 2; k++) {
		memset(r[k], 'a' + k, 8 * PG);
		for (i = 0; i < 8; i++)
			if (guard[i] && madvise(r[k] + i * PG, PG, 102))
				return 3;
	}
	signal(SIGTERM, on_term);
	signal(SIGSEGV, on_segv);
	printf("ready %p %p\n", r[0], r[1]);
	fflush(stdout);
	while (!stop)
		pause();
	for (k = 0; k < 2; k++)
		for (i = 0; i < 8; i++)
			if (guard[i] ? !faults(r[k] + i * PG) : (r[k][i * PG] != 'a' + k || faults(r[k] + i * PG)))
				bad++;
	printf(bad ? "FAIL: %d pages\n" : "PASS\n", bad);
	return 0;
}
"""


def _guard_bits(pid: int, addr: int) -> list[bool]:
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek(addr // 4096 * 8)
        data = f.read(8 * 8)
    return [bool(int.from_bytes(data[i:i + 8], "little") >> 58 & 1) for i in range(0, 64, 8)]


def test_guard_regions_come_back(targets: TargetFactory, tmp_path: Path) -> None:
    src = tmp_path / "guards.c"
    src.write_text(_GUARDS)
    exe = tmp_path / "guards"
    subprocess.run(["gcc", "-O1", "-o", str(exe), str(src)], check=True)
    t = start_argv(targets, [str(exe), str(tmp_path / "guards.file")], "guards")
    wait_for(lambda: t.out.exists() and "ready" in t.out.read_text(), 10, "guards to start")
    adopt_tree(targets, t)
    regions = [int(x, 16) for x in t.out.read_text().split()[1:3]]
    want = [False, True, True, False, False, True, False, False]
    before = (_maps(t.pid), [_guard_bits(t.pid, a) for a in regions])
    assert before[1] == [want, want], before[1]
    pids = dump_tree(t.pid, tmp_path / "images")
    restore_tree(targets, t, tmp_path / "images", pids)
    assert (_maps(t.pid), [_guard_bits(t.pid, a) for a in regions]) == before
    os.kill(t.pid, signal.SIGTERM)
    wait_for(lambda: "PASS" in t.out.read_text() or "FAIL" in t.out.read_text(), 10, "verdict")
    assert "PASS" in t.out.read_text(), t.out.read_text()


# An io_setup() ring with completed events not yet reaped (tail != head
# after more than a full turn).  With argv[1] == "fork": a child forked
# after io_setup (it has the ring mapping but not the context).
# SIGTERM: head, tail and nr unchanged, the unreaped events come out of
# io_getevents with their aio_data, a new request completes; PASS or FAIL.
_AIO = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
struct ring { unsigned id, nr, head, tail, magic, cf, icf, hl; };
static volatile sig_atomic_t stop;
static void on_term(int s) { (void)s; stop = 1; }
int main(int argc, char **argv)
{
	aio_context_t ctx = 0;
	struct iocb cb, *cbp = &cb;
	struct io_event ev[8];
	char buf[1];
	unsigned i, nr, head, tail, got;
	volatile struct ring *r;
	int fd = open("/dev/null", O_WRONLY), bad = 0;
	if (syscall(__NR_io_setup, 16, &ctx) < 0)
		return 2;
	r = (struct ring *)ctx;
	nr = r->nr;
	memset(&cb, 0, sizeof(cb));
	cb.aio_fildes = fd;
	cb.aio_buf = (unsigned long)buf;
	cb.aio_nbytes = 1;
	cb.aio_lio_opcode = IOCB_CMD_PWRITE;
	/* more than a turn: the tail wraps; leave 5 events unreaped */
	for (i = 0; i < nr + 3; i++) {
		cb.aio_data = 1000 + i;
		if (syscall(__NR_io_submit, ctx, 1, &cbp) != 1)
			return 3;
		if (i < nr - 2 && syscall(__NR_io_getevents, ctx, 1, 1, ev, NULL) != 1)
			return 4;
	}
	head = r->head;
	tail = r->tail;
	if (argc > 1 && fork() == 0) {
		for (;;)
			pause();
	}
	signal(SIGTERM, on_term);
	printf("ready %llx %u %u %u\n", (unsigned long long)ctx, nr, head, tail);
	fflush(stdout);
	while (!stop)
		pause();
	if (r->head != head || r->tail != tail || r->nr != nr)
		bad |= 1;
	got = syscall(__NR_io_getevents, ctx, 5, 8, ev, NULL);
	if (got != 5)
		bad |= 2;
	for (i = 0; i < got; i++)
		if (ev[i].data != 1000 + nr - 2 + i || ev[i].res != 1)
			bad |= 4;
	cb.aio_data = 7;
	if (syscall(__NR_io_submit, ctx, 1, &cbp) != 1 ||
	    syscall(__NR_io_getevents, ctx, 1, 1, ev, NULL) != 1 || ev[0].data != 7)
		bad |= 8;
	if (bad)
		printf("FAIL: %#x (head %u->%u tail %u->%u)\n", bad, head, r->head, tail, r->tail);
	else
		printf("PASS\n");
	return 0;
}
"""


def _aio_target(targets: TargetFactory, tmp_path: Path, *args: str):  # type: ignore[no-untyped-def]
    src = tmp_path / "aio.c"
    src.write_text(_AIO)
    exe = tmp_path / "aio"
    subprocess.run(["gcc", "-O1", "-o", str(exe), str(src)], check=True)
    t = start_argv(targets, [str(exe), *args], "aio")
    wait_for(lambda: t.out.exists() and "ready" in t.out.read_text(), 10, "aio to start")
    return t


def test_aio_ring_comes_back(targets: TargetFactory, tmp_path: Path) -> None:
    t = _aio_target(targets, tmp_path)
    adopt_tree(targets, t)
    ctx, nr, head, tail = t.out.read_text().split()[1:5]
    assert int(tail) < int(head), "the target's tail did not wrap"
    before = _maps(t.pid)
    assert any(x.startswith(f"{ctx}-") and x.endswith("/[aio] (deleted)") for x in before), before
    pids = dump_tree(t.pid, tmp_path / "images")
    restore_tree(targets, t, tmp_path / "images", pids)
    # the ring is a new aio file: its inode differs, the rest does not
    strip = [(x.rsplit(" ", 3)[0], x.rsplit(" ", 2)[-2:]) if "[aio]" in x else (x, None)
             for x in before]
    after = _maps(t.pid)
    assert [(x.rsplit(" ", 3)[0], x.rsplit(" ", 2)[-2:]) if "[aio]" in x else (x, None)
            for x in after] == strip
    os.kill(t.pid, signal.SIGTERM)
    wait_for(lambda: "PASS" in t.out.read_text() or "FAIL" in t.out.read_text(), 10, "verdict")
    assert "PASS" in t.out.read_text(), t.out.read_text()


def test_aio_ring_without_context_is_refused(targets: TargetFactory, tmp_path: Path) -> None:
    t = _aio_target(targets, tmp_path, "fork")
    adopt_tree(targets, t)
    ctx = int(t.out.read_text().split()[1], 16)
    res = run_procsnap("dump", "-t", t.pid, "-D", tmp_path / "images")
    line = assert_one_line_error(res, "aio ring")
    assert f"{ctx:#x}" in line and "without its aio context" in line, line
    ok, why = is_untouched(t.pid)
    assert ok, why
    assert proc_exists(t.pid)


_SELFSTOP = r"""
#include <signal.h>
#include <unistd.h>
int main(void)
{
	write(1, "ready\n", 6);
	kill(getpid(), SIGSTOP);
	write(1, "ran\n", 4);
	for (;;)
		pause();
}
"""


def test_stopped_task_runs_nothing_after_restore(targets: TargetFactory, tmp_path: Path) -> None:
    """A task that stopped itself (as vdso02's child) comes back stopped
    before it runs one instruction: it writes "ran" the moment it runs."""
    src = tmp_path / "selfstop.c"
    src.write_text(_SELFSTOP)
    exe = tmp_path / "selfstop"
    subprocess.run(["gcc", "-O1", "-o", str(exe), str(src)], check=True)
    for i in range(5):  # the old race lost about one time in three
        t = start_argv(targets, [str(exe)], f"selfstop{i}")
        state = lambda: Path(f"/proc/{t.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]  # noqa: E731
        wait_for(lambda: state() == "T", 10, "selfstop to stop")
        dump_tree(t.pid, tmp_path / f"images{i}")
        targets.adopt(t.pid, like=t)
        res = run_procsnap("restore", "-D", tmp_path / f"images{i}", "-d")
        assert res.returncode == 0, res.stderr
        wait_for(lambda: state() == "T", 5, "the restored task to be stopped")
        time.sleep(0.1)
        assert "ran" not in t.out.read_text(), f"round {i}: the stopped task ran after the restore"
        os.kill(t.pid, signal.SIGCONT)
        wait_for(lambda: "ran" in t.out.read_text(), 5, "the task to run on SIGCONT")
        os.kill(t.pid, signal.SIGKILL)
