/* reaped_leader [gone|alive|outside]: a process group whose leader is not
 * in the tree (zdtm zombie01, with a live member too).
 *
 * gone (default): the root R forks L; L makes group L and clones (with
 * CLONE_PARENT, so they are R's children) a live member M and a member Z
 * that exits 5 at once; L exits and R reaps it.  Prints "tree L M Z" and
 * "ready".  On SIGTERM R checks: M and the zombie Z are still in group L,
 * no process has pid L (the restore's helper is gone and reaped), no
 * SIGCHLD came from anything but Z, and kill(-L, SIGUSR1) reaches M (it
 * exits 42); then it reaps M (42) and Z (5).
 *
 * alive: L (group leader) runs on outside the tree: R's child X forks L
 * and exits; R forks M into L's group.  Prints "outside L".
 * outside: as gone, but L also forks O, which outlives L outside the tree
 * (reparented away) in group L.  Prints "outside O".
 * In both, SIGTERM kills the outsider and the verdict is PASS if M is
 * still in group L.
 */
#include "tgt.h"
#include <sched.h>
#include <sys/syscall.h>
#include <sys/wait.h>

static volatile sig_atomic_t chld;

static void on_chld(int s) { (void)s; chld++; }
static void on_usr1(int s) { (void)s; _exit(42); }

static pid_t clone_parent(void)
{
	/* fork-like (no new stack): the child is R's, not L's */
	return syscall(SYS_clone, CLONE_PARENT | SIGCHLD, 0, 0, 0, 0);
}

static void member(void)
{
	signal(SIGUSR1, on_usr1);
	for (;;)
		pause();
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "gone";
	int rep[2];
	pid_t l, m = 0, z = 0, o = 0;
	int status;

	tgt_catch_term();
	if (pipe(rep))
		die("pipe");
	if (!strcmp(mode, "alive")) {
		pid_t x = fork();

		if (x == 0) {
			l = fork();
			if (l == 0) {
				setpgid(0, 0);
				close(rep[0]);
				close(rep[1]);
				for (;;)
					pause();
			}
			setpgid(l, l);
			tgt_write_all(rep[1], (char *)&l, sizeof(l));
			_exit(0);
		}
		if (read(rep[0], &l, sizeof(l)) != sizeof(l))
			die("read");
		waitpid(x, &status, 0);
		m = fork();
		if (m == 0) {
			if (setpgid(0, l))
				die("setpgid");
			member();
		}
		setpgid(m, l);
		say("outside %d", l);
		o = l;
	} else {
		l = fork();
		if (l == 0) {
			pid_t k[3] = {0, 0, 0};

			if (setpgid(0, 0))
				die("setpgid");
			k[0] = clone_parent();
			if (k[0] == 0)
				member();
			k[1] = clone_parent();
			if (k[1] == 0)
				_exit(5);
			if (!strcmp(mode, "outside")) {
				k[2] = fork();
				if (k[2] == 0) {
					close(rep[0]);
					close(rep[1]);
					for (;;)
						pause();
				}
			}
			tgt_write_all(rep[1], (char *)k, sizeof(k));
			_exit(0);
		}
		pid_t k[3];

		if (read(rep[0], k, sizeof(k)) != sizeof(k))
			die("read");
		m = k[0], z = k[1], o = k[2];
		waitpid(l, &status, 0);
		/* Z is a zombie of ours once it exited */
		siginfo_t si;
		memset(&si, 0, sizeof(si));
		if (waitid(P_PID, z, &si, WEXITED | WNOWAIT))
			die("waitid");
		if (o)
			say("outside %d", o);
	}
	close(rep[0]);
	close(rep[1]);
	signal(SIGCHLD, on_chld);
	chld = 0;
	say("tree %d %d %d", l, m, z);
	say("ready");
	while (!test_stop)
		pause();
	if (getpgid(m) != l)
		fail("member %d is in group %d, not %d", m, getpgid(m), l);
	if (o) {
		kill(o, SIGKILL);
		kill(m, SIGKILL);
		waitpid(m, &status, 0);
		return verdict();
	}
	if (getpgid(z) != l)
		fail("zombie %d is in group %d, not %d", z, getpgid(z), l);
	if (kill(l, 0) == 0 || errno != ESRCH)
		fail("pid %d (the group's old leader) exists", l);
	/* the restored zombie's exit may have signalled us once; nothing else */
	if (chld > 1)
		fail("%d SIGCHLD since ready", (int)chld);
	if (kill(-l, SIGUSR1))
		fail("kill(-%d): %s", l, strerror(errno));
	if (waitpid(m, &status, 0) != m || !WIFEXITED(status) || WEXITSTATUS(status) != 42)
		fail("member %d: status %#x, want exit 42", m, status);
	if (waitpid(z, &status, 0) != z || !WIFEXITED(status) || WEXITSTATUS(status) != 5)
		fail("zombie %d: status %#x, want exit 5", z, status);
	return verdict();
}
