/*
 * epoll_reuse: an epoll set whose registered fd number was closed or now
 * names another file, while the registered file stays open.
 *
 *   epoll_reuse [reuse|free|elsewhere]
 *
 * An eventfd is added to epoll (fd 5) as fd 3, then:
 *   reuse      (default) duplicated to fd 4, fd 3 closed and reopened as
 *              /dev/null: epoll still watches the eventfd, registered as
 *              "fd 3"; the dump finds it at fd 4 (kcmp) and the restore
 *              registers it as fd 3 again through a temporary fd 3;
 *   free       the same, but fd 3 stays closed;
 *   elsewhere  a child keeps the eventfd (as fd 3) and the parent closes
 *              it: only another process holds the file -- refused.
 * Every 50 ms it adds 1 to the eventfd (the holder), waits for the epoll
 * event, reads the counter back and prints "tick N".
 * SIGTERM: PASS if every tick came through epoll.
 */
#include "tgt.h"

#include <fcntl.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>

int main(int argc, char **argv)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 77 };
	const char *mode = argc > 1 ? argv[1] : "reuse";
	int elsewhere = !strcmp(mode, "elsewhere");
	pid_t child = -1;
	unsigned long ticks = 0;
	uint64_t one = 1, got_v;

	tgt_catch_term();
	close_range(3, ~0U, 0);
	if (eventfd(0, 0) != 3)
		die("eventfd");
	if (dup2(3, 4) != 4)
		die("dup2");
	if (epoll_create1(0) != 5)
		die("epoll_create1");
	if (epoll_ctl(5, EPOLL_CTL_ADD, 3, &ev))
		die("epoll_ctl");
	if (elsewhere) {
		child = fork();

		if (child < 0)
			die("fork");
		if (child == 0) {
			/* the only holder of the eventfd: fd 3 of this child */
			close(4);
			close(5);
			while (!test_stop) {
				if (write(3, &one, 8) != 8)
					die("child write");
				usleep(50000);
			}
			_exit(0);
		}
		close(4);
	}
	close(3);
	if (!strcmp(mode, "reuse") && open("/dev/null", O_RDONLY) != 3)
		die("reopen fd 3");
	say("ready");
	while (!test_stop) {
		struct epoll_event got;

		if (!elsewhere && write(4, &one, 8) != 8)
			die("write");
		if (epoll_wait(5, &got, 1, 1000) != 1 || got.data.u64 != 77) {
			if (test_stop)
				break;
			fail("no epoll event for tick %lu", ticks + 1);
			break;
		}
		if (!elsewhere && read(4, &got_v, 8) != 8)
			die("read");
		if (elsewhere)
			usleep(60000); /* level-triggered: let the child tick */
		say("tick %lu", ++ticks);
		usleep(50000);
	}
	if (child > 0) {
		kill(child, SIGTERM);
		waitpid(child, NULL, 0);
	}
	return verdict();
}
