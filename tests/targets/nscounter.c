/*
 * nscounter: the init of its own pid (and uts, maybe time) namespace, with
 * children; as a container's init does.  Started by
 *
 *   unshare -fp -u [-T --monotonic S --boottime S] nscounter FILE HOST NCHILD
 *
 * it becomes a session leader, sets the hostname to HOST, forks NCHILD
 * children and writes the next number to FILE every ~50 ms.  Every task
 * checks, each round, that getpid()/getppid() and the hostname are what they
 * were, and that CLOCK_MONOTONIC and CLOCK_BOOTTIME neither went back nor
 * jumped (more than 60 s between two rounds): a restore outside its time
 * namespace makes them jump.  A child that sees a difference prints
 * "FAIL: ..." and exits 1.  Prints "ready pids P C1 C2..." (the pids as seen
 * inside) and "clock MONO" once set up; SIGTERM: stop the children, collect
 * their exit statuses, print PASS or FAIL.
 */
#include "tgt.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <time.h>

static char host[65];

static long long now(clockid_t c)
{
	struct timespec ts;

	clock_gettime(c, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long long last_mono, last_boot;

static void round_check(pid_t mypid, pid_t myppid, const char *who)
{
	char h[65] = "";
	long long m = now(CLOCK_MONOTONIC), b = now(CLOCK_BOOTTIME);

	if (getpid() != mypid)
		fail("%s: getpid() = %d, was %d", who, getpid(), mypid);
	if (getppid() != myppid)
		fail("%s: getppid() = %d, was %d", who, getppid(), myppid);
	gethostname(h, sizeof(h));
	if (strcmp(h, host))
		fail("%s: hostname is '%s', was '%s'", who, h, host);
	if (last_mono && (m < last_mono || m - last_mono > 60000000000LL))
		fail("%s: CLOCK_MONOTONIC went from %lld to %lld", who, last_mono, m);
	if (last_boot && (b < last_boot || b - last_boot > 60000000000LL))
		fail("%s: CLOCK_BOOTTIME went from %lld to %lld", who, last_boot, b);
	last_mono = m;
	last_boot = b;
}

static void child_loop(void)
{
	struct timespec ts = { 0, 50 * 1000 * 1000 };
	pid_t me = getpid(), parent = getppid();

	while (!test_stop && !test_failed) {
		round_check(me, parent, "child");
		nanosleep(&ts, NULL);
	}
	exit(test_failed ? 1 : 0);
}

int main(int argc, char **argv)
{
	struct timespec ts = { 0, 50 * 1000 * 1000 };
	pid_t kids[16], me;
	int nkids, fd, i;
	unsigned long n = 0;
	char buf[256];
	int len;

	if (argc < 4) {
		say("usage: nscounter FILE HOST NCHILD");
		return 2;
	}
	nkids = atoi(argv[3]);
	if (nkids > 16)
		nkids = 16;
	setsid();
	snprintf(host, sizeof(host), "%s", argv[2]);
	if (sethostname(host, strlen(host))) {
		say("FAIL: sethostname: %s", strerror(errno));
		return 1;
	}
	tgt_catch_term();
	fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		return 2;
	me = getpid();
	len = snprintf(buf, sizeof(buf), "ready pids %d", me);
	for (i = 0; i < nkids; i++) {
		kids[i] = fork();
		if (kids[i] == 0)
			child_loop();
		len += snprintf(buf + len, sizeof(buf) - len, " %d", kids[i]);
	}
	round_check(me, getppid(), "init");
	say("%s", buf);
	say("clock %lld", now(CLOCK_MONOTONIC));
	while (!test_stop) {
		len = snprintf(buf, sizeof(buf), "%lu\n", ++n);
		tgt_write_all(fd, buf, len);
		round_check(me, getppid(), "init");
		nanosleep(&ts, NULL);
	}
	for (i = 0; i < nkids; i++)
		kill(kids[i], SIGTERM);
	for (i = 0; i < nkids; i++) {
		int st;

		if (waitpid(kids[i], &st, 0) != kids[i])
			fail("waitpid(%d): %s", kids[i], strerror(errno));
		else if (!WIFEXITED(st) || WEXITSTATUS(st))
			fail("child %d ended with status %#x", kids[i], st);
	}
	return verdict();
}
