/*
 * pidfd_child: holds a pidfd (fd 5) on a child of its own, which sleeps.
 * SIGUSR1: kill the child through the pidfd (pidfd_send_signal), wait for
 * the pidfd to become readable (it does when the child exits), reap the
 * child and print "child gone STATUS".  SIGTERM: PASS/FAIL.
 */
#include "tgt.h"
#include <poll.h>
#include <sys/syscall.h>
#include <sys/wait.h>

static volatile sig_atomic_t got_usr1;
static void on_usr1(int s) { (void)s; got_usr1 = 1; }

int main(void)
{
	tgt_catch_term();
	signal(SIGUSR1, on_usr1);
	pid_t c = fork();
	if (c == 0) {
		signal(SIGTERM, SIG_DFL);
		for (;;)
			pause();
	}
	int fd = syscall(SYS_pidfd_open, c, 0);
	if (fd < 0 || dup2(fd, 5) != 5)
		die("pidfd_open");
	close(fd);
	say("ready");
	int done = 0;
	while (!test_stop) {
		if (got_usr1 && !done) {
			if (syscall(SYS_pidfd_send_signal, 5, SIGKILL, NULL, 0))
				fail("pidfd_send_signal: %s", strerror(errno));
			struct pollfd p = { .fd = 5, .events = POLLIN };
			if (poll(&p, 1, 5000) != 1)
				fail("the pidfd did not report the exit");
			int status;
			if (waitpid(c, &status, 0) != c)
				fail("waitpid");
			say("child gone %d", WIFSIGNALED(status) ? WTERMSIG(status) : -1);
			done = 1;
		}
		pause();
	}
	if (!done)
		kill(c, SIGKILL);
	return verdict();
}
