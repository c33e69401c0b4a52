/* mem MIB: one anonymous mapping of MIB MiB, every page touched (non-zero). */
#include "common.h"
#include <stdint.h>
#include <sys/mman.h>

int main(int argc, char **argv)
{
	size_t size = (size_t)strtoul(argc > 1 ? argv[1] : "1024", NULL, 10) << 20;
	uint64_t *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		die("mmap");
	/* A distinct word per 8 bytes: no page is zero or mergeable. */
	for (size_t i = 0; i < size / 8; i++)
		p[i] = i * 0x9e3779b97f4a7c15ULL;
	ready();
	idle();
	return 0;
}
