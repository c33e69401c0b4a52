/*
 * manymaps [N]: N (default 10000) one-page anonymous mappings side by side,
 * alternately read-write and read-only so the kernel keeps them apart,
 * each holding its own index.  SIGTERM: check every page, PASS/FAIL.
 */
#include "tgt.h"

#include <stdint.h>
#include <sys/mman.h>

#define PAGE 4096L

int main(int argc, char **argv)
{
	long n = strtol(argc > 1 ? argv[1] : "10000", NULL, 10);
	char *base = mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (base == MAP_FAILED)
		die("mmap");
	for (long i = 0; i < n; i++) {
		long *p = (long *)(base + i * PAGE);

		p[0] = i;
		p[PAGE / sizeof(long) - 1] = ~i;
		if (i % 2 && mprotect(p, PAGE, PROT_READ))
			die("mprotect");
	}
	tgt_catch_term();
	say("ready");
	while (!test_stop)
		pause();
	for (long i = 0; i < n; i++) {
		long *p = (long *)(base + i * PAGE);

		if (p[0] != i || p[PAGE / sizeof(long) - 1] != ~i) {
			fail("page %ld holds %ld/%ld", i, p[0], p[PAGE / sizeof(long) - 1]);
			break;
		}
	}
	return verdict();
}
