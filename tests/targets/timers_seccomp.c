/*
 * timers_seccomp: POSIX timers, seccomp filter chains, no_new_privs and
 * ambient capabilities, which procsnap once refused (zdtm posix_timers,
 * pthread_timers, seccomp_filter_*, seccomp_no_new_privs, caps01):
 *   POSIX timers (ids 0..4 made, id 1 deleted: the ids have a hole)
 *   - A (id 0): CLOCK_MONOTONIC, SIGUSR1, sival 0x1234, first expiry in
 *     100 s, then every 50 ms;
 *   - B (id 2): CLOCK_REALTIME, SIGRTMIN+1 to the second thread
 *     (SIGEV_THREAD_ID), one shot in 30 s;
 *   - C (id 3): CLOCK_BOOTTIME, SIGUSR2, sival 0x5678, one shot that
 *     fired: its signal is pending (blocked);
 *   - D (id 4): CLOCK_MONOTONIC, SIGRTMIN+2, every 10 s, fired once and
 *     pending: exactly one instance must be pending right after the
 *     restore (not 10 s later), and the timer still periodic.
 *   seccomp (errno filters on syscalls nobody else uses)
 *   - F1 (flag LOG) before the thread exists, so both threads inherit it:
 *     syslog -> 11;
 *   - F2 from the leader with TSYNC: sysinfo -> 12 in both threads;
 *   - F3 in the second thread alone: times -> 13;
 *   after the restore, the second thread installs F4 (getpgrp -> 14)
 *   with TSYNC, which only works if the leader's chain is still the very
 *   ancestor of the thread's (shared, not a copy), and F4 must then reach
 *   the leader too.
 *   no_new_privs in the second thread only; CAP_NET_BIND_SERVICE ambient
 *   in the leader.
 * Prints "ready timers A B C D"; on SIGTERM checks from inside; PASS/FAIL.
 */
#include "tgt.h"

#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>

static pid_t thread_tid;
static volatile int phase;   /* 1: thread set up; 2: check; 3: thread checked */
static int thread_bad;
static char thread_why[256];

static int install(int nr, int err, unsigned flags)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (unsigned)err),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = 4, .filter = f };

	return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
}

/* the errno a raw syscall ends with (0: it worked) */
static int err_of(long nr)
{
	errno = 0;
	if (syscall(nr, 0, 0, 0) < 0)
		return errno;
	return 0;
}

static void *second(void *arg)
{
	(void)arg;
	thread_tid = syscall(SYS_gettid);
	while (phase < 1)
		usleep(1000);
	if (install(SYS_times, 13, 0))
		die("F3");
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		die("no_new_privs");
	phase = 2;
	while (phase < 3)
		usleep(1000);
	/* checks of this thread, in it */
	if (err_of(SYS_syslog) != 11 || err_of(SYS_sysinfo) != 12 || err_of(SYS_times) != 13) {
		thread_bad = 1;
		snprintf(thread_why, sizeof(thread_why), "thread: syslog %d sysinfo %d times %d, "
			 "want 11 12 13", err_of(SYS_syslog), err_of(SYS_sysinfo), err_of(SYS_times));
	} else if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1) {
		thread_bad = 1;
		snprintf(thread_why, sizeof(thread_why), "thread: no_new_privs lost");
	} else if (install(SYS_getpgrp, 14, SECCOMP_FILTER_FLAG_TSYNC)) {
		thread_bad = 1;
		snprintf(thread_why, sizeof(thread_why), "thread: TSYNC install failed (%s, %d): "
			 "the shared chain came back as copies", strerror(errno), errno);
	}
	phase = 4;
	return NULL;
}

static timer_t mk(clockid_t clock, int notify, int sig, long value, pid_t tid)
{
	struct sigevent sev;
	timer_t t;

	memset(&sev, 0, sizeof(sev));
	sev.sigev_notify = notify;
	sev.sigev_signo = sig;
	sev.sigev_value.sival_ptr = (void *)value;
	if (notify & SIGEV_THREAD_ID)
		sev._sigev_un._tid = tid;
	if (timer_create(clock, &sev, &t))
		die("timer_create");
	return t;
}

static void arm(timer_t t, long v_ms, long i_ms)
{
	struct itimerspec its = {
		.it_value = { v_ms / 1000, (v_ms % 1000) * 1000000 },
		.it_interval = { i_ms / 1000, (i_ms % 1000) * 1000000 },
	};

	if (timer_settime(t, 0, &its, NULL))
		die("timer_settime");
}

static int ids_in_proc(char *out, size_t len)
{
	char buf[4096];
	FILE *f = fopen("/proc/self/timers", "r");
	size_t n = 0;

	out[0] = 0;
	if (!f)
		return -1;
	while (fgets(buf, sizeof(buf), f))
		if (!strncmp(buf, "ID: ", 4))
			n += snprintf(out + n, len - n, "%s ", strtok(buf + 4, "\n"));
	fclose(f);
	return 0;
}

int main(void)
{
	struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct caps[2];
	struct itimerspec its;
	struct timespec zero = { 0, 0 };
	timer_t a, b, c, d, gone;
	char before[256], after[256];
	sigset_t block;
	siginfo_t si;
	pthread_t th;

	sigemptyset(&block);
	sigaddset(&block, SIGUSR1);
	sigaddset(&block, SIGUSR2);
	sigaddset(&block, SIGRTMIN + 1);
	sigaddset(&block, SIGRTMIN + 2);
	if (sigprocmask(SIG_BLOCK, &block, NULL))
		die("sigprocmask");

	/* ambient CAP_NET_BIND_SERVICE: it must be inheritable first */
	if (syscall(SYS_capget, &hdr, caps))
		die("capget");
	caps[0].inheritable |= 1u << CAP_NET_BIND_SERVICE;
	if (syscall(SYS_capset, &hdr, caps))
		die("capset");
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0))
		die("ambient raise");

	if (install(SYS_syslog, 11, SECCOMP_FILTER_FLAG_LOG))
		die("F1");
	if (pthread_create(&th, NULL, second, NULL))
		die("pthread_create");
	while (!thread_tid)
		usleep(1000);
	if (install(SYS_sysinfo, 12, SECCOMP_FILTER_FLAG_TSYNC))
		die("F2");
	phase = 1;
	while (phase < 2)
		usleep(1000);

	a = mk(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGUSR1, 0x1234, 0);
	gone = mk(CLOCK_MONOTONIC, SIGEV_NONE, 0, 0, 0);
	b = mk(CLOCK_REALTIME, SIGEV_THREAD_ID | SIGEV_SIGNAL, SIGRTMIN + 1, 0, thread_tid);
	if (timer_delete(gone))
		die("timer_delete");
	c = mk(CLOCK_BOOTTIME, SIGEV_SIGNAL, SIGUSR2, 0x5678, 0);
	d = mk(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGRTMIN + 2, 0x9abc, 0);
	arm(a, 100000, 50);
	arm(b, 30000, 0);
	arm(c, 1, 0);
	arm(d, 1, 10000);
	usleep(20000);  /* C and D fire; their signals stay pending */
	ids_in_proc(before, sizeof(before));

	tgt_catch_term();
	say("ready timers %ld %ld %ld %ld", (long)a, (long)b, (long)c, (long)d);
	while (!test_stop)
		pause();

	ids_in_proc(after, sizeof(after));
	if (strcmp(before, after))
		fail("timer ids [%s], want [%s]", after, before);
	if (timer_gettime(a, &its))
		fail("timer A: %s", strerror(errno));
	else if (its.it_interval.tv_sec || its.it_interval.tv_nsec != 50000000 ||
		 its.it_value.tv_sec > 100 || its.it_value.tv_sec < 60)
		fail("timer A: interval %ld.%09ld value %ld s", its.it_interval.tv_sec,
		     its.it_interval.tv_nsec, its.it_value.tv_sec);
	if (timer_gettime(b, &its))
		fail("timer B: %s", strerror(errno));
	else if (its.it_interval.tv_sec || its.it_interval.tv_nsec ||
		 its.it_value.tv_sec > 30 || its.it_value.tv_sec < 1)
		fail("timer B: interval %ld value %ld s", its.it_interval.tv_sec,
		     its.it_value.tv_sec);
	/* C: one shot, fired: pending once, with its value; disarmed */
	if (sigtimedwait(&block, &si, &zero) != SIGUSR2)
		fail("timer C: no pending SIGUSR2 (%s)", strerror(errno));
	else if (si.si_code != SI_TIMER || si.si_value.sival_ptr != (void *)0x5678 ||
		 si.si_timerid != (int)(long)c)
		fail("timer C: siginfo code %d value %p timer %d", si.si_code,
		     si.si_value.sival_ptr, si.si_timerid);
	/* D: periodic, fired: one instance pending, then it goes on */
	if (sigtimedwait(&block, &si, &zero) != SIGRTMIN + 2)
		fail("timer D: no pending SIGRTMIN+2 (%s)", strerror(errno));
	else if (si.si_code != SI_TIMER || si.si_value.sival_ptr != (void *)0x9abc)
		fail("timer D: siginfo code %d value %p", si.si_code, si.si_value.sival_ptr);
	if (sigtimedwait(&block, &si, &zero) > 0)
		fail("an extra pending signal %d (code %d, timer %d)", si.si_signo, si.si_code,
		     si.si_timerid);
	if (timer_gettime(d, &its))
		fail("timer D: %s", strerror(errno));
	else if (its.it_interval.tv_sec != 10 || its.it_value.tv_sec > 10 ||
		 !(its.it_value.tv_sec || its.it_value.tv_nsec))
		fail("timer D: interval %ld s value %ld s", its.it_interval.tv_sec,
		     its.it_value.tv_sec);
	/* seccomp, leader side */
	if (err_of(SYS_syslog) != 11 || err_of(SYS_sysinfo) != 12 || err_of(SYS_times) != 0)
		fail("leader: syslog %d sysinfo %d times %d, want 11 12 0", err_of(SYS_syslog),
		     err_of(SYS_sysinfo), err_of(SYS_times));
	if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 0)
		fail("leader: no_new_privs set, only the thread had it");
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, CAP_NET_BIND_SERVICE, 0, 0) != 1)
		fail("leader: ambient CAP_NET_BIND_SERVICE lost");
	phase = 3;
	while (phase < 4)
		usleep(1000);
	if (thread_bad)
		fail("%s", thread_why);
	else if (err_of(SYS_getpgrp) != 14)
		fail("leader: the thread's TSYNC filter did not reach it (getpgrp %d)",
		     err_of(SYS_getpgrp));
	pthread_join(th, NULL);
	return verdict();
}
