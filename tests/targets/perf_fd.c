/*
 * perf_fd: counts like counter.c (numbers to FILE every ~50 ms) while
 * holding a perf event fd (anon_inode:[perf_event]) on fd 7 -- a kind of
 * fd procsnap does not checkpoint (CRIU does not either).  A dump must
 * refuse it, name the pid and fd 7, and leave the process counting.
 *
 *   perf_fd FILE
 *
 * SIGTERM: check the perf fd still counts task-clock time; PASS/FAIL.
 */
#include "tgt.h"

#include <fcntl.h>
#include <linux/perf_event.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>

int main(int argc, char **argv)
{
	struct timespec ts = { 0, 50 * 1000 * 1000 };
	struct perf_event_attr attr;
	unsigned long n = 0;
	uint64_t v1 = 0, v2 = 0;
	char buf[32];
	int fd, out;

	if (argc < 2) {
		say("usage: perf_fd FILE");
		return 2;
	}
	memset(&attr, 0, sizeof(attr));
	attr.size = sizeof(attr);
	attr.type = PERF_TYPE_SOFTWARE;
	attr.config = PERF_COUNT_SW_TASK_CLOCK;
	fd = syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0);
	if (fd < 0)
		die("perf_event_open");
	if (dup2(fd, 7) != 7)
		die("dup2");
	close(fd);
	out = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (out < 0)
		die("open %s", argv[1]);

	tgt_catch_term();
	say("ready");
	while (!test_stop) {
		size_t len = tgt_utoa(buf, ++n);

		buf[len++] = '\n';
		tgt_write_all(out, buf, len);
		nanosleep(&ts, NULL);
	}
	if (read(7, &v1, sizeof(v1)) != sizeof(v1))
		fail("read perf fd: %s", strerror(errno));
	for (volatile int i = 0; i < 10000000; i++)
		;
	if (read(7, &v2, sizeof(v2)) != sizeof(v2) || v2 <= v1)
		fail("perf fd stopped counting (%lu -> %lu)", (unsigned long)v1, (unsigned long)v2);
	return verdict();
}
