/*
 * Shared memory objects seen in part, and hugetlb memory (issue 14):
 *   A: a 64 MiB MAP_SHARED|MAP_ANONYMOUS object the child maps whole; the
 *      parent unmaps its first page and a page in the middle, moves its
 *      upper half elsewhere with mremap, and maps one page of it again
 *      through its map_files link at offset 20 pages (as zdtm maps01);
 *   H: a 4 MiB MAP_SHARED|MAP_ANONYMOUS|MAP_HUGETLB object (2 MiB pages),
 *      written at both ends, inherited by the child;
 *   P: a 4 MiB MAP_PRIVATE|MAP_HUGETLB region, written before fork; the
 *      child then rewrites its own copy of the first huge page.
 * Prints "ready PARENT CHILD".  SIGTERM: the parent writes new bytes
 * through its parts of A and H, the child must see them through its own
 * mappings (the objects are still shared), every byte is checked; prints
 * PASS or FAIL.
 */
#include "tgt.h"
#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/wait.h>

#define PG 4096UL
#define ASZ (64UL << 20)
#define HSZ (4UL << 20)
#define OFF3 (20 * PG)

static char *a, *a_hi, *a2, *h, *p;
static int pipefd[2];

static int pat(char *x, unsigned long off)
{
	return x[off] == (char)(off / PG * 7 + 1);
}

/* x[off] holds what was put at offset objoff of the object */
static int pat_at(char *x, unsigned long off, unsigned long objoff)
{
	return x[off] == (char)(objoff / PG * 7 + 1);
}

static void put(char *x, unsigned long off)
{
	x[off] = (char)(off / PG * 7 + 1);
}

int main(void)
{
	char path[128];
	int fd, status;
	pid_t child;

	a = mmap(NULL, ASZ, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	h = mmap(NULL, HSZ, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
	p = mmap(NULL, HSZ, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
	a_hi = mmap(NULL, ASZ / 2, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (a == MAP_FAILED || h == MAP_FAILED || p == MAP_FAILED || a_hi == MAP_FAILED)
		die("mmap");
	put(a, PG);
	put(a, OFF3);
	put(a, ASZ / 2 + 3 * PG);
	put(a, ASZ - PG);
	put(h, 0);
	put(h, HSZ - 1);
	memset(p, 'p', HSZ);
	if (pipe(pipefd))
		die("pipe");

	tgt_catch_term();
	child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		char c;

		memset(p, 'q', 2 << 20);
		/* written by the child: seen by the parent through its parts */
		put(a, 5 * PG);
		while (!test_stop)
			pause();
		/* the parent has written again; wait for its word */
		if (read(pipefd[0], &c, 1) != 1)
			_exit(9);
		if (!pat(a, PG) || !pat(a, OFF3) || !pat(a, ASZ / 2 + 3 * PG) || !pat(a, ASZ - PG))
			_exit(1);
		if (a[ASZ / 2 + 7 * PG] != 'N' || a[OFF3 + 1] != 'M' || h[HSZ / 2] != 'N')
			_exit(2); /* the parent's new writes are not seen: not shared */
		if (!pat(h, 0) || !pat(h, HSZ - 1))
			_exit(3);
		for (unsigned long i = 0; i < HSZ; i++)
			if (p[i] != (i < (2UL << 20) ? 'q' : 'p'))
				_exit(4);
		_exit(0);
	}
	/* the parent: only parts of A */
	usleep(50000);
	if (munmap(a, PG) || munmap(a + 10 * PG, PG))
		die("munmap");
	if (mremap(a + ASZ / 2, ASZ / 2, ASZ / 2, MREMAP_FIXED | MREMAP_MAYMOVE, a_hi) != a_hi)
		die("mremap");
	snprintf(path, sizeof(path), "/proc/self/map_files/%lx-%lx",
		 (unsigned long)a + 11 * PG, (unsigned long)a + ASZ / 2);
	fd = open(path, O_RDWR);
	if (fd < 0)
		die("open %s", path);
	a2 = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, OFF3);
	if (a2 == MAP_FAILED)
		die("mmap of a part");
	close(fd);
	say("ready %d %d", getpid(), child);
	while (!test_stop)
		pause();

	if (!pat(a, PG) || !pat_at(a2, 0, OFF3) || !pat_at(a_hi, 3 * PG, ASZ / 2 + 3 * PG) ||
	    !pat_at(a_hi, ASZ / 2 - PG, ASZ - PG))
		fail("A changed");
	if (!pat(a, 5 * PG))
		fail("A: the child's write is lost");
	if (!pat(h, 0) || !pat(h, HSZ - 1))
		fail("H changed");
	for (unsigned long i = 0; i < HSZ; i++)
		if (p[i] != 'p') {
			fail("P changed at %lu", i);
			break;
		}
	a_hi[7 * PG] = 'N';
	a2[1] = 'M';
	h[HSZ / 2] = 'N';
	kill(child, SIGTERM);
	if (write(pipefd[1], "x", 1) != 1)
		fail("pipe");
	if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status))
		fail("child's check failed (status %#x)", status);
	return verdict();
}
