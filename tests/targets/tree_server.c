/*
 * A server with 4 forked workers (issue 4).  They share, from the parent:
 *  - one open file (argv[1]), so one file offset: each worker appends
 *    "w<i> <n>" records with write(2) and none may overwrite another;
 *  - one anonymous shared page with the counters (MAP_SHARED|MAP_ANONYMOUS).
 * SIGUSR1 to a worker: it exits with status 10+i; the parent gets SIGCHLD,
 * reaps it with waitpid() and prints "reaped PID STATUS".
 * SIGTERM to the parent: stop the workers, reap them, check the shared
 * counters against each other and against the file, print PASS/FAIL.
 */
#include "tgt.h"
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>

#define NW 4

struct shared {
	long total;
	long per[NW];
	int stop;
};

static volatile sig_atomic_t got_chld;
static volatile sig_atomic_t worker_quit;
static void on_chld(int s) { (void)s; got_chld = 1; }
static void on_usr1(int s) { (void)s; worker_quit = 1; }

static void nap(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

static void worker(int i, int fd, struct shared *sh)
{
	char buf[64];
	signal(SIGTERM, SIG_DFL);
	signal(SIGUSR1, on_usr1);
	while (!sh->stop) {
		if (worker_quit)
			_exit(10 + i);
		int n = snprintf(buf, sizeof(buf), "w%d %ld\n", i, sh->per[i]);
		tgt_write_all(fd, buf, n);
		__atomic_add_fetch(&sh->per[i], 1, __ATOMIC_SEQ_CST);
		__atomic_add_fetch(&sh->total, 1, __ATOMIC_SEQ_CST);
		nap(20);
	}
	_exit(0);
}

int main(int argc, char **argv)
{
	pid_t w[NW];
	int alive[NW];
	if (argc < 2)
		return 2;
	int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		die("open %s", argv[1]);
	struct shared *sh = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
				 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED)
		die("mmap");
	tgt_catch_term();
	struct sigaction sa = { .sa_handler = on_chld };
	sigaction(SIGCHLD, &sa, NULL);
	for (int i = 0; i < NW; i++) {
		w[i] = fork();
		if (w[i] < 0)
			die("fork");
		if (w[i] == 0)
			worker(i, fd, sh);
		alive[i] = 1;
	}
	say("ready");
	while (!test_stop) {
		if (got_chld) {
			got_chld = 0;
			int status;
			pid_t p;
			while ((p = waitpid(-1, &status, WNOHANG)) > 0) {
				for (int i = 0; i < NW; i++)
					if (w[i] == p)
						alive[i] = 0;
				say("reaped %d %d", p, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
			}
		}
		nap(20);
	}
	sh->stop = 1;
	for (int i = 0; i < NW; i++) {
		pid_t r;
		if (!alive[i])
			continue;
		while ((r = waitpid(w[i], NULL, 0)) < 0 && errno == EINTR)
			;  /* SIGCHLD of another worker */
		if (r != w[i])
			fail("worker %d not reaped", w[i]);
	}
	long sum = 0;
	for (int i = 0; i < NW; i++)
		sum += sh->per[i];
	if (sum != sh->total)
		fail("shared counters disagree: sum %ld total %ld", sum, sh->total);
	/* the shared file: every worker's records 0,1,2... in order, none lost */
	long next[NW] = { 0 };
	char buf[1 << 16];
	size_t have = 0;
	ssize_t n;
	lseek(fd, 0, SEEK_SET);
	while ((n = read(fd, buf + have, sizeof(buf) - have - 1)) > 0) {
		have += n;
		buf[have] = 0;
		char *line = buf, *nl;
		while ((nl = strchr(line, '\n'))) {
			int wi;
			long v;
			*nl = 0;
			if (sscanf(line, "w%d %ld", &wi, &v) != 2 || wi < 0 || wi >= NW)
				fail("bad record '%s'", line);
			else if (v != next[wi])
				fail("worker %d: record %ld where %ld was due", wi, v, next[wi]);
			else
				next[wi]++;
			line = nl + 1;
		}
		have = strlen(line);
		memmove(buf, line, have);
	}
	for (int i = 0; i < NW; i++)
		if (next[i] != sh->per[i])
			fail("worker %d wrote %ld records, counted %ld", i, next[i], sh->per[i]);
	say("records %ld", sum);
	return verdict();
}
