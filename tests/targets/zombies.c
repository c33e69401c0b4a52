/*
 * Zombies of every kind of death, left unreaped across a checkpoint:
 * one exited with status 3, one killed by SIGKILL, one killed by SIGSEGV
 * (its handler reset to the default), one killed by SIGTERM while it had a
 * handler for SIGUSR2.  On SIGUSR1 the root reaps each and prints
 * "reaped PID exit N" or "reaped PID signal N"; SIGTERM checks and exits.
 */
#include "tgt.h"
#include <sys/resource.h>
#include <sys/wait.h>

static volatile sig_atomic_t got_usr1;

static void on_usr1(int sig)
{
	(void)sig;
	got_usr1 = 1;
}

int main(void)
{
	static const int how[] = { -3, SIGKILL, SIGSEGV, SIGTERM };
	pid_t kids[4];
	struct rlimit nocore = { 0, 0 };

	tgt_catch_term();
	signal(SIGUSR1, on_usr1);
	setrlimit(RLIMIT_CORE, &nocore);  /* no core dump flag in the status */
	for (int i = 0; i < 4; i++) {
		kids[i] = fork();
		if (kids[i] < 0)
			die("fork");
		if (kids[i] == 0) {
			if (how[i] < 0)
				_exit(-how[i]);
			signal(SIGTERM, SIG_DFL);
			kill(getpid(), how[i]);
			_exit(13);
		}
		siginfo_t si;
		memset(&si, 0, sizeof(si));
		waitid(P_PID, kids[i], &si, WEXITED | WNOWAIT);
	}
	say("zombies %d %d %d %d", kids[0], kids[1], kids[2], kids[3]);
	say("ready");
	while (!test_stop) {
		if (got_usr1) {
			got_usr1 = 0;
			for (int i = 0; i < 4; i++) {
				int status;
				if (waitpid(kids[i], &status, 0) != kids[i])
					fail("zombie %d could not be reaped", kids[i]);
				else if (WIFEXITED(status))
					say("reaped %d exit %d", kids[i], WEXITSTATUS(status));
				else
					say("reaped %d signal %d", kids[i], WTERMSIG(status));
			}
		}
		pause();
	}
	return verdict();
}
