/*
 * maps N: N separate one-page anonymous mappings, each touched.  Adjacent
 * ones alternate protections so the kernel cannot merge them into fewer
 * VMAs; a guard gap would double the count of maps lines for nothing.
 */
#include "common.h"
#include <sys/mman.h>

int main(int argc, char **argv)
{
	long n = strtol(argc > 1 ? argv[1] : "1000", NULL, 10);
	long page = sysconf(_SC_PAGESIZE);
	char *base = mmap(NULL, n * page, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (base == MAP_FAILED)
		die("mmap");
	for (long i = 0; i < n; i++) {
		char *p = base + i * page;

		p[0] = (char)i;
		p[page - 1] = (char)(i >> 8);
		if (i % 2 && mprotect(p, page, PROT_READ))
			die("mprotect");
	}
	ready();
	idle();
	return 0;
}
