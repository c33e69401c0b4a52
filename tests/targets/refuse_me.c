/*
 * refuse_me: takes on one piece of task state procsnap must refuse (see
 * procsnap/audit.py), then counts like counter.c (1, 2, 3, ... to FILE
 * every ~50 ms).  A dump must fail with one line naming the pid and the
 * state, and leave it counting.
 *
 *   refuse_me WHAT FILE
 *
 * WHAT: uts, net, ipc, cgroup, time (unshare: its own namespace; time
 * namespaces take effect for children only: time_for_children), pid
 * (unshare: pid_for_children), pidns-child (unshare CLONE_NEWPID, fork:
 * the child, pid 1 inside, counts and prints "child PID" as the host
 * sees it), sigtrap (a pending, blocked SIGTRAP), timer-overrun (POSIX
 * timer 0, 1 ms, whose last delivered signal carried overruns: its
 * timer_getoverrun() cannot be set again), usernotif (a seccomp filter
 * returning SECCOMP_RET_USER_NOTIF for syslog, with a listener fd),
 * tsc (PR_SET_TSC SIGSEGV), mce
 * (PR_MCE_KILL early).
 */
#include "tgt.h"

#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

static int count(const char *file)
{
	struct timespec ts = { 0, 50 * 1000 * 1000 };
	unsigned long n = 0;
	char buf[32];
	int out = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0644);

	if (out < 0)
		die("open %s", file);
	tgt_catch_term();
	say("ready");
	while (!test_stop) {
		size_t len = tgt_utoa(buf, ++n);

		buf[len++] = '\n';
		tgt_write_all(out, buf, len);
		nanosleep(&ts, NULL);
	}
	return verdict();
}

int main(int argc, char **argv)
{
	static const struct { const char *name; int flag; } ns[] = {
		{ "uts", CLONE_NEWUTS }, { "net", CLONE_NEWNET }, { "ipc", CLONE_NEWIPC },
		{ "cgroup", CLONE_NEWCGROUP }, { "time", CLONE_NEWTIME }, { "pid", CLONE_NEWPID },
	};
	const char *what;
	unsigned i;

	if (argc < 3) {
		say("usage: refuse_me WHAT FILE");
		return 2;
	}
	what = argv[1];
	for (i = 0; i < sizeof(ns) / sizeof(ns[0]); i++) {
		if (!strcmp(what, ns[i].name)) {
			if (unshare(ns[i].flag))
				die("unshare %s", what);
			return count(argv[2]);
		}
	}
	if (!strcmp(what, "pidns-child")) {
		pid_t pid;
		int st;

		if (unshare(CLONE_NEWPID))
			die("unshare pid");
		pid = fork();
		if (pid < 0)
			die("fork");
		if (pid == 0) {
			setsid();
			return count(argv[2]);
		}
		say("child %d", pid);
		waitpid(pid, &st, 0);
		return 0;
	}
	if (!strcmp(what, "sigtrap")) {
		sigset_t set;

		sigemptyset(&set);
		sigaddset(&set, SIGTRAP);
		if (sigprocmask(SIG_BLOCK, &set, NULL) || kill(getpid(), SIGTRAP))
			die("pending SIGTRAP");
	} else if (!strcmp(what, "timer-overrun")) {
		struct sigevent sev = { .sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGUSR1 };
		struct itimerspec its = { { 0, 1000000 }, { 0, 1000000 } };
		sigset_t set;
		timer_t t;

		/* blocked for good: one delivery by sigwaitinfo, with overruns */
		sigemptyset(&set);
		sigaddset(&set, SIGUSR1);
		if (sigprocmask(SIG_BLOCK, &set, NULL))
			die("sigprocmask");
		if (timer_create(CLOCK_MONOTONIC, &sev, &t) || timer_settime(t, 0, &its, NULL))
			die("timer");
		usleep(20000);
		if (sigwaitinfo(&set, NULL) != SIGUSR1 || timer_getoverrun(t) < 1)
			die("no overrun");
	} else if (!strcmp(what, "usernotif")) {
		struct sock_filter f[] = {
			BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
			BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_syslog, 0, 1),
			BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
			BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		};
		struct sock_fprog prog = { .len = 4, .filter = f };

		if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
			    SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog) < 0)
			die("seccomp");
	} else if (!strcmp(what, "tsc")) {
		if (prctl(PR_SET_TSC, PR_TSC_SIGSEGV, 0, 0, 0))
			die("PR_SET_TSC");
	} else if (!strcmp(what, "mce")) {
		if (prctl(PR_MCE_KILL, PR_MCE_KILL_SET, PR_MCE_KILL_EARLY, 0, 0))
			die("PR_MCE_KILL");
	} else {
		say("unknown WHAT %s", what);
		return 2;
	}
	return count(argv[2]);
}
