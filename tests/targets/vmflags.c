/*
 * Mappings whose smaps VmFlags, access modes and copy-on-write sharing a
 * restore must keep (issue 17):
 *   one anonymous region per madvise flag (HUGEPAGE, NOHUGEPAGE, DONTFORK,
 *   DONTDUMP, WIPEONFORK, SEQUENTIAL, RANDOM), an mlock()ed region, a
 *   MAP_NORESERVE and a MAP_GROWSDOWN region, a MAP_DROPPABLE region;
 *   FILE opened O_RDWR and mapped MAP_SHARED|PROT_READ (it must stay
 *   mprotect-able to PROT_WRITE) and MAP_PRIVATE|PROT_READ twice side by
 *   side, one half written then made read-only (VM_ACCOUNT), one never
 *   written (so the two stay two VMAs);
 *   a striped region: DONTDUMP on pages 0 (read-write) and 1 (read-only),
 *   none on page 2, DONTDUMP again on page 3 (neighbours alike in their
 *   advice are advised together at restore, and only they);
 *   16 pages written before fork() to a child that then rewrites only
 *   page 0: pages 1-15 stay shared copy-on-write.
 * Prints "ready PARENT CHILD".  SIGTERM: checks the bytes, the sharing
 * (pagemap PFNs of parent and child), that the shared mapping can be made
 * writable, and in a fresh fork that DONTFORK is not inherited and
 * WIPEONFORK is wiped; prints PASS or FAIL.
 */
#include "tgt.h"
#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/wait.h>

#ifndef MAP_DROPPABLE
#define MAP_DROPPABLE 0x08
#endif

#define PG 4096
#define NCOW 16

static const int advice[] = { MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_DONTFORK, MADV_DONTDUMP,
			      MADV_WIPEONFORK, MADV_SEQUENTIAL, MADV_RANDOM };
#define NADV (int)(sizeof(advice) / sizeof(advice[0]))

static char *adv[NADV], *locked, *noreserve, *growsdown, *droppable, *cow;
static char *fshared, *fpriv, *striped;
static pid_t child;

static char *map(size_t len, int prot, int flags)
{
	char *p = mmap(NULL, len, prot, flags | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		die("mmap");
	return p;
}

static uint64_t pfn(pid_t pid, void *addr)
{
	char path[64];
	uint64_t e = 0;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/pagemap", pid);
	fd = open(path, O_RDONLY);
	if (fd < 0 || pread(fd, &e, 8, (uintptr_t)addr / PG * 8) != 8)
		die("pagemap");
	close(fd);
	return e & ((1ULL << 55) - 1);
}

static int filled(const char *p, size_t len, char c)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] != c)
			return 0;
	return 1;
}

int main(int argc, char **argv)
{
	int fd, i, status;

	if (argc < 2)
		die("usage: vmflags FILE");
	fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || ftruncate(fd, 4 * PG))
		die("file");
	for (i = 0; i < NADV; i++) {
		adv[i] = map(4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE);
		memset(adv[i], 'a' + i, 4 * PG);
		if (madvise(adv[i], 4 * PG, advice[i]))
			die("madvise %d", advice[i]);
	}
	locked = map(2 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	memset(locked, 'L', 2 * PG);
	if (mlock(locked, 2 * PG))
		die("mlock");
	noreserve = map(2 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE);
	memset(noreserve, 'N', PG);
	growsdown = map(4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_GROWSDOWN);
	memset(growsdown + 3 * PG, 'G', PG);
	droppable = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_DROPPABLE | MAP_ANONYMOUS, -1, 0);
	if (droppable == MAP_FAILED)
		die("MAP_DROPPABLE");
	memset(droppable, 'D', 2 * PG);
	fshared = mmap(NULL, PG, PROT_READ, MAP_SHARED, fd, 0);
	fpriv = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	if (fshared == MAP_FAILED || fpriv == MAP_FAILED)
		die("file mmap");
	memset(fpriv, 'P', 2 * PG);
	/* the second half: never writable, a VMA of its own (no VM_ACCOUNT) */
	if (munmap(fpriv + 2 * PG, 2 * PG) ||
	    mmap(fpriv + 2 * PG, 2 * PG, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, 2 * PG) == MAP_FAILED ||
	    mprotect(fpriv, 2 * PG, PROT_READ))
		die("fpriv");
	cow = map(NCOW * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	memset(cow, 'C', NCOW * PG);
	striped = map(5 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	memset(striped, 'S', 5 * PG);
	if (madvise(striped, 2 * PG, MADV_DONTDUMP) || mprotect(striped + PG, PG, PROT_READ) ||
	    madvise(striped + 3 * PG, PG, MADV_DONTDUMP))
		die("striped");

	tgt_catch_term();
	child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		cow[0] = 'c';
		while (!test_stop)
			pause();
		_exit(cow[0] == 'c' && filled(cow + PG, (NCOW - 1) * PG, 'C') ? 0 : 1);
	}
	usleep(100000);
	say("ready %d %d", getpid(), child);
	while (!test_stop)
		pause();

	for (i = 0; i < NADV; i++)
		if (!filled(adv[i], 4 * PG, 'a' + i))
			fail("madvise(%d) region changed", advice[i]);
	if (!filled(locked, 2 * PG, 'L') || !filled(noreserve, PG, 'N') ||
	    !filled(growsdown + 3 * PG, PG, 'G') || !filled(fpriv, 2 * PG, 'P'))
		fail("data changed");
	if (!filled(droppable, 2 * PG, 'D') && !filled(droppable, 2 * PG, 0))
		fail("droppable memory neither kept nor dropped");
	if (!filled(striped, 5 * PG, 'S'))
		fail("striped data changed");
	if (cow[0] != 'C' || !filled(cow, NCOW * PG, 'C'))
		fail("cow data changed");
	for (i = 1; i < NCOW; i++)
		if (pfn(getpid(), cow + i * PG) != pfn(child, cow + i * PG))
			fail("cow page %d is not shared with the child", i);
	if (pfn(getpid(), cow) == pfn(child, cow))
		fail("the child's own page 0 is shared");
	if (mprotect(fshared, PG, PROT_READ | PROT_WRITE))
		fail("mprotect(PROT_WRITE) of the shared file mapping: %s", strerror(errno));
	else
		fshared[0] = 'W';
	pid_t g = fork();
	if (g == 0) {
		/* DONTFORK: not mapped here; WIPEONFORK: zeroes */
		if (mprotect(adv[2], PG, PROT_READ) == 0 || errno != ENOMEM)
			_exit(1);
		_exit(filled(adv[4], 4 * PG, 0) ? 0 : 2);
	}
	if (waitpid(g, &status, 0) != g || !WIFEXITED(status) || WEXITSTATUS(status))
		fail("fork after restore: DONTFORK/WIPEONFORK lost (status %#x)", status);
	kill(child, SIGTERM);
	if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status))
		fail("child's check failed (status %#x)", status);
	return verdict();
}
