/*
 * The memory pattern the page-copy targets (memcheck, lazymem) fill and
 * check: a distinct word per 8 bytes, seeded per region, so that no page is
 * zero or mergeable and a page restored at the wrong place or from the
 * wrong region fails its check.  Include after tgt.h (fail()).
 */
#ifndef PROCSNAP_PATTERN_H
#define PROCSNAP_PATTERN_H

#include <stdint.h>
#include <sys/mman.h>

#define PAGE 4096UL

static inline uint64_t pat(uint64_t i, uint64_t seed)
{
	return (i + 1) * 0x9e3779b97f4a7c15ULL ^ seed;
}

static inline void fill(void *p, size_t bytes, uint64_t seed)
{
	uint64_t *w = p;

	for (size_t i = 0; i < bytes / 8; i++)
		w[i] = pat(i, seed);
}

/* 1 if [p, p+bytes) holds the pattern of seed; else fail() says where. */
static inline int check_fill(const void *p, size_t bytes, uint64_t seed, const char *what)
{
	const uint64_t *w = p;

	for (size_t i = 0; i < bytes / 8; i++)
		if (w[i] != pat(i, seed)) {
			fail("%s: word %zu is %#lx, expected %#lx", what, i,
			     (unsigned long)w[i], (unsigned long)pat(i, seed));
			return 0;
		}
	return 1;
}

/* 1 if every byte is zero (memory never written, or dropped). */
static inline int check_zero(const char *p, size_t bytes, const char *what)
{
	for (size_t i = 0; i < bytes; i++)
		if (p[i]) {
			fail("%s: byte %zu is not zero", what, i);
			return 0;
		}
	return 1;
}

static inline void *map_anon(size_t bytes)
{
	void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		die("mmap");
	return p;
}

#endif
