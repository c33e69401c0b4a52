/*
 * batchreads: threads whose per-thread state procsnap asks of each thread
 * in one batch of injected calls (inject.Injector.batch), each thread's
 * values its own, so that an answer given to the wrong thread or lost
 * shows:
 *
 *   batchreads [NUMBERS]
 *
 * Every thread: PR_SET_PDEATHSIG, a sigaltstack, a timer slack and (the
 * second one) securebits of its own.  The process catches SIGURG (a
 * batch's preferred end signal): its handler must never run; it sets
 * SIGWINCH to SIG_IGN (traced, a thread still stops for it).  Thread 2
 * blocks SIGWINCH (its batch ends with SIGCHLD); thread 3 blocks SIGWINCH
 * and SIGCHLD (no batch: one call at a time).  Thread 4 blocks SIGWINCH
 * but sleeps in sigsuspend() with nothing blocked, as a shell's wait does:
 * the mask its batch runs with is its own, not sigsuspend's (SIGCHLD
 * then, not SIGWINCH, which would never stop it).  With NUMBERS the main
 * thread writes 1, 2, 3... there every ~20 ms (continuity across a killed
 * dump).  Each thread prints "tid N: K" (its index) at start.  SIGTERM:
 * every thread checks its own state, the main thread prints PASS/FAIL.
 */
#include "tgt.h"

#include <fcntl.h>
#include <linux/securebits.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>

#define NTHREADS 5

static volatile sig_atomic_t urg_count;
static volatile int started;
static char stacks[NTHREADS][65536];

static void on_urg(int sig)
{
	(void)sig;
	urg_count++;
}

static void on_pdeath(int sig)
{
	(void)sig;
}

static int pdeath_of(int i) { return i ? SIGRTMIN + i : SIGUSR2; }
static unsigned long slack_of(int i) { return 70000 + 1000 * i; }
static size_t ss_size_of(int i) { return 16384 + 4096 * i; }
static int secbits_of(int i) { return i == 1 ? SECBIT_KEEP_CAPS | SECBIT_NO_SETUID_FIXUP : 0; }

static void setup(int i)
{
	stack_t ss = { .ss_sp = stacks[i], .ss_size = ss_size_of(i), .ss_flags = 0 };
	sigset_t set;

	if (prctl(PR_SET_PDEATHSIG, pdeath_of(i), 0, 0, 0))
		die("PR_SET_PDEATHSIG");
	if (sigaltstack(&ss, NULL))
		die("sigaltstack");
	if (prctl(PR_SET_TIMERSLACK, slack_of(i), 0, 0, 0))
		die("PR_SET_TIMERSLACK");
	if (secbits_of(i) && prctl(PR_SET_SECUREBITS, secbits_of(i), 0, 0, 0))
		die("PR_SET_SECUREBITS");
	sigemptyset(&set);
	if (i >= 2)
		sigaddset(&set, SIGWINCH);
	if (i == 3)
		sigaddset(&set, SIGCHLD);
	if (pthread_sigmask(SIG_BLOCK, &set, NULL))
		die("pthread_sigmask");
	say("tid %ld: %d", (long)syscall(SYS_gettid), i);
}

static void check(int i)
{
	stack_t ss;
	int sig = -1;
	long slack, bits;

	if (prctl(PR_GET_PDEATHSIG, &sig, 0, 0, 0) || sig != pdeath_of(i))
		fail("thread %d: pdeath signal %d, expected %d", i, sig, pdeath_of(i));
	if (sigaltstack(NULL, &ss))
		die("sigaltstack");
	if (ss.ss_sp != stacks[i] || ss.ss_size != ss_size_of(i) || ss.ss_flags)
		fail("thread %d: sigaltstack %p+%zu flags %#x, expected %p+%zu", i,
		     ss.ss_sp, ss.ss_size, ss.ss_flags, (void *)stacks[i], ss_size_of(i));
	slack = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
	if (slack != (long)slack_of(i))
		fail("thread %d: timer slack %ld, expected %lu", i, slack, slack_of(i));
	bits = prctl(PR_GET_SECUREBITS, 0, 0, 0, 0);
	if (bits != secbits_of(i))
		fail("thread %d: securebits %#lx, expected %#x", i, bits, secbits_of(i));
}

static void *thread_main(void *arg)
{
	int i = (int)(long)arg;
	struct timespec ts = { 0, 10 * 1000 * 1000 };

	sigset_t none;

	setup(i);
	sigemptyset(&none);
	__atomic_add_fetch(&started, 1, __ATOMIC_SEQ_CST);
	while (!test_stop)
		if (i == 4)
			sigsuspend(&none);
		else
			nanosleep(&ts, NULL);
	check(i);
	return NULL;
}

int main(int argc, char **argv)
{
	struct timespec ts = { 0, 20 * 1000 * 1000 };
	struct sigaction sa;
	pthread_t th[NTHREADS];
	unsigned long n = 0;
	char buf[32];
	int fd = -1, i;

	tgt_catch_term();
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_urg;
	if (sigaction(SIGURG, &sa, NULL))
		die("sigaction(SIGURG)");
	sa.sa_handler = SIG_IGN;
	if (sigaction(SIGWINCH, &sa, NULL))
		die("sigaction(SIGWINCH)");
	sa.sa_handler = on_pdeath;
	for (i = 0; i < NTHREADS; i++)
		if (sigaction(pdeath_of(i), &sa, NULL))
			die("sigaction(%d)", pdeath_of(i));
	if (argc > 1 && (fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644)) < 0)
		die("open %s", argv[1]);
	setup(0);
	for (i = 1; i < NTHREADS; i++)
		if (pthread_create(&th[i], NULL, thread_main, (void *)(long)i))
			die("pthread_create");
	while (__atomic_load_n(&started, __ATOMIC_SEQ_CST) < NTHREADS - 1)
		nanosleep(&ts, NULL);
	say("ready");
	while (!test_stop) {
		if (fd >= 0) {
			size_t len = tgt_utoa(buf, ++n);

			buf[len++] = '\n';
			tgt_write_all(fd, buf, len);
		}
		nanosleep(&ts, NULL);
	}
	/* a SIGTERM wakes one thread: wake the others */
	for (i = 1; i < NTHREADS; i++)
		pthread_kill(th[i], SIGTERM);
	for (i = 1; i < NTHREADS; i++)
		pthread_join(th[i], NULL);
	check(0);
	if (urg_count)
		fail("the SIGURG handler ran %d times", (int)urg_count);
	return verdict();
}
