/*
 * A tree of N processes (argv[1], default 200), each node forking up to 3
 * children until N exist; every process then sleeps.  The root prints
 * "ready" once all N have started (counted in a shared page).
 */
#include "tgt.h"
#include <sys/mman.h>
#include <time.h>

static long *count;

static void grow(long n)
{
	/* this process heads a subtree of n processes (itself included) */
	long rest = n - 1;
	for (int k = 3; k > 0 && rest > 0; k--) {
		long part = (rest + k - 1) / k;
		rest -= part;
		pid_t c = fork();
		if (c < 0)
			die("fork");
		if (c == 0) {
			__atomic_add_fetch(count, 1, __ATOMIC_SEQ_CST);
			grow(part);
			signal(SIGTERM, SIG_DFL);
			for (;;)
				pause();
		}
	}
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 200;
	count = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (count == MAP_FAILED)
		die("mmap");
	*count = 1;
	grow(n);
	while (__atomic_load_n(count, __ATOMIC_SEQ_CST) < n) {
		struct timespec ts = { 0, 5000000 };
		nanosleep(&ts, NULL);
	}
	say("ready %ld", n);
	for (;;)
		pause();
}
