/*
 * lazymem [MIB]: memory for restore --lazy-pages, each part filled with a
 * known pattern and checked on SIGTERM (PASS/FAIL):
 *
 *  - MIB MiB (default 256) of anonymous memory, never touched again until
 *    the final check (the daemon must push it all);
 *  - 16 MiB with every 7th page written (the rest must read as zero);
 *  - kinds restored eagerly, not lazily: a PROT_NONE mapping, an mlock()ed
 *    one, a MADV_WIPEONFORK one, a private file mapping with written pages,
 *    and the stack;
 *  - "drop": 1 MiB dropped with MADV_DONTNEED on SIGHUP (must then read
 *    zero: the daemon may not put the image's bytes back), and "move":
 *    4 MiB moved with mremap on SIGHUP (its pages follow it).
 *
 * It prints "big ADDR BYTES" and "ready".  SIGUSR1: prints "alive N" without
 * touching the big mapping (the answer of a process that runs before its
 * memory arrived).  SIGUSR2: forks a child that checks the big and sparse
 * mappings and exits; prints "child PASS" or "child FAIL".
 */
#include "tgt.h"
#include "pattern.h"

#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/wait.h>

#define SPARSE_BYTES (16UL << 20)
#define DROP_BYTES (1UL << 20)
#define MOVE_BYTES (4UL << 20)
#define SMALL (8 * PAGE)

static volatile sig_atomic_t want_answer, want_fork, want_drop;

static void on_sig(int sig)
{
	if (sig == SIGUSR1)
		want_answer = 1;
	else if (sig == SIGUSR2)
		want_fork = 1;
	else
		want_drop = 1;
}

static char *big, *sparse;
static size_t big_bytes;

static int check_big(void)
{
	int ok = check_fill(big, big_bytes, 1, "big mapping");

	for (size_t i = 0; i < SPARSE_BYTES / PAGE; i++) {
		if (i % 7 == 0)
			ok &= check_fill(sparse + i * PAGE, PAGE, 100 + i, "sparse page");
		else
			ok &= check_zero(sparse + i * PAGE, PAGE, "untouched sparse page");
	}
	return ok;
}

int main(int argc, char **argv)
{
	char *none, *locked, *wipe, *fmap, *drop, *move, *target;
	char path[] = "lazymem.data";
	volatile char stack_data[4 * PAGE];
	unsigned long answers = 0;
	int dropped = 0, fd;
	struct sigaction sa;

	big_bytes = (size_t)strtoul(argc > 1 ? argv[1] : "256", NULL, 10) << 20;
	/* first: mappings go top-down, the daemon pushes bottom-up, so these
	 * are pushed last, after the big one (dropped and moved before that) */
	drop = map_anon(DROP_BYTES);
	fill(drop, DROP_BYTES, 8);
	move = map_anon(MOVE_BYTES);
	fill(move, MOVE_BYTES, 9);
	/* a place to move it to, kept free until then */
	target = mmap(NULL, MOVE_BYTES, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (target == MAP_FAILED)
		die("mmap target");
	big = map_anon(big_bytes);
	fill(big, big_bytes, 1);
	sparse = map_anon(SPARSE_BYTES);
	for (size_t i = 0; i < SPARSE_BYTES / PAGE; i += 7)
		fill(sparse + i * PAGE, PAGE, 100 + i);

	none = map_anon(SMALL);
	fill(none, SMALL, 4);
	if (mprotect(none, SMALL, PROT_NONE))
		die("mprotect none");
	locked = map_anon(SMALL);
	fill(locked, SMALL, 5);
	if (mlock(locked, SMALL))
		die("mlock");
	wipe = map_anon(SMALL);
	fill(wipe, SMALL, 6);
	if (madvise(wipe, SMALL, MADV_WIPEONFORK))
		die("madvise wipeonfork");
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || ftruncate(fd, SMALL))
		die("file");
	fmap = mmap(NULL, SMALL, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	if (fmap == MAP_FAILED)
		die("mmap file");
	close(fd);
	fill(fmap, SMALL, 7);
	for (size_t i = 0; i < sizeof(stack_data); i++)
		stack_data[i] = (char)(i * 7 + 1);


	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_sig;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGUSR1, &sa, NULL) || sigaction(SIGUSR2, &sa, NULL) ||
	    sigaction(SIGHUP, &sa, NULL))
		die("sigaction");
	tgt_catch_term();
	say("big %p %zu", (void *)big, big_bytes);
	say("ready");
	while (!test_stop) {
		pause();
		if (want_answer) {
			want_answer = 0;
			say("alive %lu", ++answers);
		}
		if (want_fork) {
			pid_t pid;
			int st = 0;

			want_fork = 0;
			pid = fork();
			if (pid < 0)
				die("fork");
			if (pid == 0)
				_exit(check_big() && check_zero(wipe, SMALL, "wipe-on-fork in child") ? 0 : 1);
			if (waitpid(pid, &st, 0) != pid)
				die("waitpid");
			say("child %s", WIFEXITED(st) && WEXITSTATUS(st) == 0 ? "PASS" : "FAIL");
		}
		if (want_drop) {
			want_drop = 0;
			if (madvise(drop, DROP_BYTES, MADV_DONTNEED))
				die("madvise dontneed");
			dropped = 1;
			if (mremap(move, MOVE_BYTES, MOVE_BYTES, MREMAP_MAYMOVE | MREMAP_FIXED,
				   target) != target)
				die("mremap");
			move = target;
			say("dropped %d", check_zero(drop, DROP_BYTES, "dropped memory"));
		}
	}

	check_big();
	if (mprotect(none, SMALL, PROT_READ))
		die("mprotect");
	check_fill(none, SMALL, 4, "PROT_NONE mapping");
	check_fill(locked, SMALL, 5, "locked mapping");
	check_fill(wipe, SMALL, 6, "wipe-on-fork mapping");
	check_fill(fmap, SMALL, 7, "file mapping");
	for (size_t i = 0; i < sizeof(stack_data); i++)
		if (stack_data[i] != (char)(i * 7 + 1)) {
			fail("stack byte %zu", i);
			break;
		}
	if (dropped)
		check_zero(drop, DROP_BYTES, "dropped memory");
	else
		check_fill(drop, DROP_BYTES, 8, "drop mapping");
	check_fill(move, MOVE_BYTES, 9, "moved mapping");
	return verdict();
}
