/*
 * A named FIFO between two processes (issue 4): the child writes numbered
 * records into DIR/fifo as fast as it can (the FIFO stays full), the
 * parent reads them slowly and checks none is lost or repeated, printing
 * "read N" every 1000 records.  SIGTERM: PASS/FAIL.
 */
#include "tgt.h"
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

int main(int argc, char **argv)
{
	char path[4096];
	if (argc < 2)
		return 2;
	snprintf(path, sizeof(path), "%s/fifo", argv[1]);
	if (mkfifo(path, 0600))
		die("mkfifo");
	tgt_catch_term();
	pid_t c = fork();
	if (c == 0) {
		signal(SIGTERM, SIG_DFL);
		int w = open(path, O_WRONLY);
		if (w < 0)
			die("open w");
		for (unsigned n = 0;; n++)
			tgt_write_all(w, (char *)&n, sizeof(n));
	}
	int r = open(path, O_RDONLY);
	if (r < 0)
		die("open r");
	say("ready");
	unsigned expect = 0;
	while (!test_stop) {
		unsigned v;
		ssize_t got = read(r, &v, sizeof(v));
		if (got < 0 && errno == EINTR)
			continue;
		if (got != sizeof(v)) {
			fail("short read %zd", got);
			break;
		}
		if (v != expect) {
			fail("record %u where %u was due", v, expect);
			break;
		}
		if (++expect % 1000 == 0) {
			say("read %u", expect);
			struct timespec ts = { 0, 20000000 };
			nanosleep(&ts, NULL);
		}
	}
	kill(c, SIGKILL);
	waitpid(c, NULL, 0);
	return verdict();
}
