/*
 * Sessions and process groups (issue 4).  The root (a session leader, and
 * a child subreaper) builds:
 *   A  - leads its own process group;  B - A's child, in A's group;
 *   D  - its parent C exited, so D was reparented to the root;
 *   Z  - a zombie child, exited with status 7, not yet reaped.
 * On SIGUSR1 the root reaps Z and prints "zombie PID status N".
 * On SIGTERM it checks groups, sessions and D's parent, kills the others
 * and prints PASS/FAIL.  "tree A B D Z" lists the pids at start.
 */
#include "tgt.h"
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>

static volatile sig_atomic_t got_usr1;
static void on_usr1(int s) { (void)s; got_usr1 = 1; }

static void nap(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

static void idle(void)
{
	signal(SIGTERM, SIG_DFL);
	for (;;)
		pause();
}

static pid_t ppid_of(pid_t pid)
{
	char path[64], buf[512];
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	char *p = strrchr(buf, ')');
	int ppid;
	if (!p || sscanf(p + 2, "%*c %d", &ppid) != 1)
		return -1;
	return ppid;
}

int main(void)
{
	int p[2];
	pid_t me = getpid(), a, b, d, z;
	if (prctl(PR_SET_CHILD_SUBREAPER, 1))
		die("subreaper");
	tgt_catch_term();
	signal(SIGUSR1, on_usr1);
	if (pipe(p))
		die("pipe");
	a = fork();
	if (a == 0) {
		setpgid(0, 0);
		pid_t bb = fork();
		if (bb == 0)
			idle();
		tgt_write_all(p[1], (char *)&bb, sizeof(bb));
		idle();
	}
	setpgid(a, a);  /* no race with A's own call */
	if (read(p[0], &b, sizeof(b)) != sizeof(b))
		die("read b");
	pid_t c = fork();
	if (c == 0) {
		pid_t dd = fork();
		if (dd == 0)
			idle();
		tgt_write_all(p[1], (char *)&dd, sizeof(dd));
		_exit(0);  /* D is orphaned: the subreaper (root) adopts it */
	}
	if (read(p[0], &d, sizeof(d)) != sizeof(d))
		die("read d");
	waitpid(c, NULL, 0);
	z = fork();
	if (z == 0)
		_exit(7);
	close(p[0]);
	close(p[1]);
	while (ppid_of(d) != me)
		nap(5);
	/* wait until Z is a zombie, without reaping it */
	siginfo_t si;
	memset(&si, 0, sizeof(si));
	waitid(P_PID, z, &si, WEXITED | WNOWAIT);
	say("tree %d %d %d %d", a, b, d, z);
	say("ready");
	while (!test_stop) {
		if (got_usr1) {
			int status;
			got_usr1 = 0;
			if (waitpid(z, &status, 0) == z)
				say("zombie %d status %d", z, WEXITSTATUS(status));
			else
				fail("zombie %d could not be reaped", z);
		}
		pause();
	}
	if (getpgid(a) != a)
		fail("A %d in group %d", a, getpgid(a));
	if (getpgid(b) != a)
		fail("B %d in group %d, not A's %d", b, getpgid(b), a);
	if (getsid(a) != me || getsid(b) != me || getsid(d) != me)
		fail("sessions: A %d B %d D %d, want %d", getsid(a), getsid(b), getsid(d), me);
	if (ppid_of(d) != me)
		fail("D %d has parent %d, not the root", d, ppid_of(d));
	kill(a, SIGKILL);
	kill(b, SIGKILL);
	kill(d, SIGKILL);
	while (waitpid(-1, NULL, 0) > 0)
		;
	return verdict();
}
