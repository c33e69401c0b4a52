"""Special parts of an address space (issue 14): a task that unmapped its
vDSO gets none back (zdtm vdso02); one that unmapped only part of it is
refused, and runs on.
"""
from __future__ import annotations

import os
import signal
import subprocess
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
