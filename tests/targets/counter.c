/*
 * counter: every ~50 ms write the next number, on its own line, to the file
 * named by argv[1] (opened O_WRONLY|O_TRUNC, plain write(2)).
 *
 *   counter FILE [LIMIT]
 *
 * With LIMIT, exit with status 42 after writing LIMIT (self-check first).
 * SIGTERM: check memory patterns (.bss, heap, anonymous rw and read-only
 * mappings), pid and file position, then print PASS/FAIL and exit.
 *
 * The harness checks from outside that the numbers are 1, 2, 3, ... with
 * no gap or repeat across the checkpoint.
 */
#include "tgt.h"

#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

#define BSS_WORDS	(64 * 1024 / 8)
#define HEAP_BYTES	(4 << 20)
#define ANON_BYTES	(1 << 20)

static uint64_t bss[BSS_WORDS];
static uint64_t data_word = 0x0123456789abcdefULL;

static uint64_t pat(uint64_t i, uint64_t seed)
{
	return (i + 1) * 0x9e3779b97f4a7c15ULL ^ seed;
}

static void fill(uint64_t *p, size_t words, uint64_t seed)
{
	for (size_t i = 0; i < words; i++)
		p[i] = pat(i, seed);
}

static int same(const uint64_t *p, size_t words, uint64_t seed, const char *what)
{
	for (size_t i = 0; i < words; i++)
		if (p[i] != pat(i, seed)) {
			fail("%s word %zu is %#lx, expected %#lx", what, i,
			     (unsigned long)p[i], (unsigned long)pat(i, seed));
			return 0;
		}
	return 1;
}

static uint64_t *heap, *anon, *ro;
static pid_t mypid;
static int out_fd;
static off_t written;

static void check(void)
{
	off_t pos;

	same(bss, BSS_WORDS, 1, "bss");
	same(heap, HEAP_BYTES / 8, 2, "heap");
	same(anon, ANON_BYTES / 8, 3, "anon mapping");
	same(ro, 4096 / 8, 4, "read-only mapping");
	if (data_word != 0x0123456789abcdefULL)
		fail(".data word changed: %#lx", (unsigned long)data_word);
	if (getpid() != mypid)
		fail("getpid() = %d, started as %d", getpid(), mypid);
	pos = lseek(out_fd, 0, SEEK_CUR);
	if (pos != written)
		fail("output fd position %ld, wrote %ld bytes", (long)pos, (long)written);
}

int main(int argc, char **argv)
{
	struct timespec ts = { 0, 50 * 1000 * 1000 };
	struct rlimit rl;
	unsigned long n = 0, limit = 0;
	char buf[32];

	if (argc < 2) {
		say("usage: counter FILE [LIMIT]");
		return 2;
	}
	if (argc > 2)
		limit = strtoul(argv[2], NULL, 10);

	/* Some state the outside view compares: umask and a lowered soft limit. */
	umask(027);
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_max >= 777) {
		rl.rlim_cur = 777;
		if (setrlimit(RLIMIT_NOFILE, &rl))
			die("setrlimit");
	}

	out_fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0640);
	if (out_fd < 0)
		die("open %s", argv[1]);

	fill(bss, BSS_WORDS, 1);
	heap = malloc(HEAP_BYTES);
	anon = mmap(NULL, ANON_BYTES, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ro = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
		  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (!heap || anon == MAP_FAILED || ro == MAP_FAILED)
		die("alloc");
	fill(heap, HEAP_BYTES / 8, 2);
	fill(anon, ANON_BYTES / 8, 3);
	fill(ro, 4096 / 8, 4);
	if (mprotect(ro, 4096, PROT_READ))
		die("mprotect");
	mypid = getpid();

	tgt_catch_term();
	say("ready");

	while (!test_stop) {
		size_t len;

		n++;
		len = tgt_utoa(buf, n);
		buf[len++] = '\n';
		tgt_write_all(out_fd, buf, len);
		written += len;
		if (limit && n >= limit) {
			check();
			if (test_failed)
				return 1;
			say("done %lu", n);
			return 42;
		}
		nanosleep(&ts, NULL);
	}
	check();
	return verdict();
}
