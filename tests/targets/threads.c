/*
 * 8 pthreads, each incrementing its own counter under one shared mutex,
 * plus a shared total (issue 4).  Every 100 ms the main thread prints
 * "total N" with a consistency check.  SIGTERM: stop and join every
 * thread, check sum(counters) == total, print PASS/FAIL.  Each thread
 * (and main) also checks that it has no parent-death signal and no
 * alternate signal stack, as it never set one (the restore skips those
 * calls for threads the kernel creates without them).
 */
#include "tgt.h"
#include <pthread.h>
#include <sys/prctl.h>
#include <time.h>

#define N 8
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static long counters[N], total;
static volatile int stop;

static void check_unset(const char *who)
{
	int sig = -1;
	stack_t ss;

	if (prctl(PR_GET_PDEATHSIG, &sig, 0, 0, 0) || sig != 0)
		fail("%s: parent-death signal %d, expected none", who, sig);
	if (sigaltstack(NULL, &ss) || !(ss.ss_flags & SS_DISABLE))
		fail("%s: alternate signal stack sp=%p size=%zu flags=%#x, expected none",
		     who, ss.ss_sp, ss.ss_size, ss.ss_flags);
}

static void *worker(void *arg)
{
	long i = (long)arg;
	char name[16];
	snprintf(name, sizeof(name), "worker%ld", i);
	pthread_setname_np(pthread_self(), name);
	while (!stop) {
		pthread_mutex_lock(&mu);
		counters[i]++;
		total++;
		pthread_mutex_unlock(&mu);
		struct timespec ts = { 0, 5000000 };
		nanosleep(&ts, NULL);
	}
	check_unset(name);
	return (void *)counters[i];
}

int main(void)
{
	pthread_t t[N];
	long last = -1;
	tgt_catch_term();
	for (long i = 0; i < N; i++)
		if (pthread_create(&t[i], NULL, worker, (void *)i))
			die("pthread_create");
	say("ready");
	while (!test_stop) {
		pthread_mutex_lock(&mu);
		long sum = 0;
		for (int i = 0; i < N; i++)
			sum += counters[i];
		if (sum != total)
			fail("sum %ld != total %ld", sum, total);
		long now = total;
		pthread_mutex_unlock(&mu);
		if (now < last)
			fail("total went back from %ld to %ld", last, now);
		last = now;
		say("total %ld", now);
		struct timespec ts = { 0, 100000000 };
		nanosleep(&ts, NULL);
	}
	stop = 1;
	check_unset("main");
	long joined = 0;
	for (int i = 0; i < N; i++) {
		void *ret;
		if (pthread_join(t[i], &ret))
			fail("join %d", i);
		joined += (long)ret;
	}
	if (joined != total)
		fail("threads report %ld, total %ld", joined, total);
	return verdict();
}
