/* proc_cwd: a cwd in /proc/N of a child that was killed and reaped (an
 * unhashed proc directory, zdtm unhashed_proc).  Prints "dead N" and
 * "ready"; on SIGTERM checks getcwd fails with ENOENT, /proc/self/cwd
 * still reads "/proc/N (deleted)" and pid N does not exist.
 */
#include "tgt.h"
#include <limits.h>
#include <sys/wait.h>

int main(void)
{
	char want[64], got[PATH_MAX], buf[PATH_MAX];
	pid_t pid;
	ssize_t n;

	tgt_catch_term();
	pid = fork();
	if (pid == 0) {
		for (;;)
			pause();
	}
	snprintf(want, sizeof(want), "/proc/%d", pid);
	if (chdir(want))
		die("chdir %s", want);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	strcat(want, " (deleted)");
	say("dead %d", pid);
	say("ready");
	while (!test_stop)
		pause();
	if (getcwd(buf, sizeof(buf)) || errno != ENOENT)
		fail("getcwd: %s", strerror(errno));
	n = readlink("/proc/self/cwd", got, sizeof(got) - 1);
	if (n < 0)
		fail("readlink: %s", strerror(errno));
	else if (got[n] = 0, strcmp(got, want))
		fail("cwd %s, want %s", got, want);
	if (kill(pid, 0) == 0 || errno != ESRCH)
		fail("pid %d exists", pid);
	return verdict();
}
