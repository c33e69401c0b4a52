/*
 * pipe_read: holds both ends of a pipe (read end on fd 7, write end on
 * fd 8) and blocks in read(2) on it.  Pipes are not dumpable yet, so a dump
 * must refuse this process, name the pid and the fd, and leave it running.
 *
 * Whatever is written into the pipe (the harness can write through
 * /proc/PID/fd/8) is echoed as "got DATA": proof the process still works.
 * SIGTERM: print PASS and exit.
 */
#include "tgt.h"

#include <fcntl.h>

int main(void)
{
	char buf[256];
	int p[2];

	if (pipe(p))
		die("pipe");
	if (dup2(p[0], 7) < 0 || dup2(p[1], 8) < 0)
		die("dup2");
	close(p[0]);
	close(p[1]);
	tgt_catch_term();
	say("ready");
	while (!test_stop) {
		ssize_t n = read(7, buf, sizeof(buf) - 1);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("read");
		}
		while (n > 0 && buf[n - 1] == '\n')
			n--;
		buf[n] = 0;
		say("got %s", buf);
	}
	return verdict();
}
