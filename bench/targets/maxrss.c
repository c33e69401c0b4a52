/*
 * maxrss: run a command and report its peak RSS.
 *
 *   maxrss OUT CMD [ARG...]
 *
 * Forks, execs CMD (stdin/stdout/stderr passed through), waits for it with
 * wait4 and writes its ru_maxrss (KiB) to the file OUT; exits with CMD's
 * status (128 + signal if killed).  The bench runs procsnap's CLI through
 * it: wait4's ru_maxrss of a child the bench forked itself would count the
 * high-water mark of the bench's own pre-exec copy (exec keeps the larger
 * of the old and the new address space's), but this program is small.
 * The number is CMD's high-water mark, or that of a child it waited for
 * (nft, a helper), whichever is larger: an upper bound on procsnap's.
 */
#include "common.h"
#include <sys/resource.h>
#include <sys/wait.h>

int main(int argc, char **argv)
{
	struct rusage ru;
	FILE *out;
	pid_t pid;
	int status;

	if (argc < 3) {
		fprintf(stderr, "usage: maxrss OUT CMD [ARG...]\n");
		return 2;
	}
	pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		execvp(argv[2], argv + 2);
		die("exec");
	}
	if (wait4(pid, &status, 0, &ru) != pid)
		die("wait4");
	out = fopen(argv[1], "w");
	if (!out || fprintf(out, "%ld\n", ru.ru_maxrss) < 0 || fclose(out))
		die(argv[1]);
	if (WIFSIGNALED(status))
		return 128 + WTERMSIG(status);
	return WEXITSTATUS(status);
}
