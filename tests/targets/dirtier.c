/*
 * dirtier [MIB [KIB_PER_SEC]]: MIB MiB (default 128) of anonymous memory,
 * every page filled with a pattern of (page, generation); then it keeps
 * rewriting pages at about KIB_PER_SEC KiB/s (default 10240: 10 MiB/s),
 * walking the buffer with a stride, each rewrite bumping the page's
 * generation (kept in a separate table, also in memory).  It also
 * mmaps a new 1 MiB region every ~100 ms (up to 16): memory that did not
 * exist at the last pre-dump.
 *
 * SIGUSR1: prints "gen N" (the number of rewrites so far, kept in memory).
 * SIGUSR2: closes every fd from 3 up (as daemons do), prints "closed".
 * SIGTERM: every page of the buffer and of the new regions must hold the
 * pattern of its current generation (a checksum of every page), else FAIL.
 * That is what a dump over pre-dumps must get right: pages rewritten since
 * a pre-dump come from the last images, the others from the parents'.
 */
#include "tgt.h"

#include <stdint.h>
#include <sys/mman.h>
#include <time.h>

#define PAGE 4096UL
#define NEW_MAX 16
#define NEW_PAGES 256

static volatile sig_atomic_t want_gen, want_close;
/* The count of rewrites lives at the end of the generation table, in
 * anonymous memory (not in a register, nor in .bss, which is part of the
 * executable's file mapping): a dump that took a stale copy of that memory
 * shows a count lower than one printed before it. */
static volatile unsigned long *rewrites_at;
#define rewrites (*rewrites_at)

static void on_usr1(int sig)
{
	(void)sig;
	want_gen = 1;
}

static void on_usr2(int sig)
{
	(void)sig;
	want_close = 1;
}

static void fill(uint64_t *w, uint64_t page, uint64_t gen)
{
	for (size_t i = 0; i < PAGE / 8; i++)
		w[i] = (page * 0x9e3779b97f4a7c15ULL) ^ (gen << 32) ^ (i * 0x100000001b3ULL);
}

static int check(const uint64_t *w, uint64_t page, uint64_t gen)
{
	for (size_t i = 0; i < PAGE / 8; i++)
		if (w[i] != ((page * 0x9e3779b97f4a7c15ULL) ^ (gen << 32) ^ (i * 0x100000001b3ULL)))
			return 0;
	return 1;
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 0) : 128;
	unsigned long kps = argc > 2 ? strtoul(argv[2], NULL, 0) : 10240;
	size_t npages = (mib << 20) / PAGE;
	unsigned char *buf;
	uint32_t *gens;
	unsigned char *fresh[NEW_MAX];
	int nfresh = 0;
	unsigned long pos = 0, ticks = 0;
	/* pages per 10 ms tick */
	unsigned long per_tick = kps / 4 / 100 ? kps / 4 / 100 : 1;
	struct timespec tick = { 0, 10 * 1000 * 1000 };
	struct sigaction sa;

	tgt_catch_term();
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = on_usr2;
	sigaction(SIGUSR2, &sa, NULL);

	buf = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	gens = mmap(NULL, npages * sizeof(*gens) + PAGE, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED || gens == MAP_FAILED)
		die("mmap");
	rewrites_at = (volatile unsigned long *)(gens + npages);
	for (size_t p = 0; p < npages; p++)
		fill((uint64_t *)(buf + p * PAGE), p, 0);
	say("ready %zu", npages);

	while (!test_stop) {
		for (unsigned long k = 0; k < per_tick; k++) {
			/* a stride that visits every page (npages is a power of two
			 * times 256; 7919 is odd, so coprime) */
			size_t p = pos % npages;

			pos += 7919;
			gens[p]++;
			fill((uint64_t *)(buf + p * PAGE), p, gens[p]);
			rewrites++;
		}
		if (++ticks % 10 == 0 && nfresh < NEW_MAX) {
			unsigned char *m = mmap(NULL, NEW_PAGES * PAGE, PROT_READ | PROT_WRITE,
						MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

			if (m == MAP_FAILED)
				die("mmap new");
			for (size_t p = 0; p < NEW_PAGES; p++)
				fill((uint64_t *)(m + p * PAGE), 1000000 + nfresh * NEW_PAGES + p, 7);
			fresh[nfresh++] = m;
		}
		if (want_close) {
			want_close = 0;
			for (int fd = 3; fd < 65536; fd++)
				close(fd);
			say("closed");
		}
		if (want_gen) {
			want_gen = 0;
			say("gen %lu", rewrites);
		}
		nanosleep(&tick, NULL);
	}
	{
		size_t bad = 0, first = 0;

		for (size_t p = 0; p < npages; p++)
			if (!check((uint64_t *)(buf + p * PAGE), p, gens[p]) && !bad++)
				first = p;
		for (int f = 0; f < nfresh; f++)
			for (size_t p = 0; p < NEW_PAGES; p++)
				if (!check((uint64_t *)(fresh[f] + p * PAGE),
					   1000000 + f * NEW_PAGES + p, 7) && !bad++)
					first = npages + f * NEW_PAGES + p;
		if (bad)
			fail("%zu pages wrong, the first: page %zu", bad, first);
	}
	return verdict();
}
