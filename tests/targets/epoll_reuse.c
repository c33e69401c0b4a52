/*
 * epoll_reuse: an epoll set whose registered fd number now names another
 * file -- the case a dump must refuse rather than restore wrongly.
 *
 *   epoll_reuse
 *
 * An eventfd is added to epoll (fd 5) as fd 3, duplicated to fd 4, and
 * fd 3 closed and reopened as /dev/null: epoll still watches the eventfd,
 * registered as "fd 3".  Every 50 ms it adds 1 to the eventfd (through
 * fd 4), waits for the epoll event, reads the counter back and prints
 * "tick N".
 * SIGTERM: PASS if every tick came through epoll.
 */
#include "tgt.h"

#include <fcntl.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>

int main(void)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 77 };
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
	close(3);
	if (open("/dev/null", O_RDONLY) != 3)
		die("reopen fd 3");
	say("ready");
	while (!test_stop) {
		struct epoll_event got;

		if (write(4, &one, 8) != 8)
			die("write");
		if (epoll_wait(5, &got, 1, 1000) != 1 || got.data.u64 != 77) {
			if (test_stop)
				break;
			fail("no epoll event for tick %lu", ticks + 1);
			break;
		}
		if (read(4, &got_v, 8) != 8)
			die("read");
		say("tick %lu", ++ticks);
		usleep(50000);
	}
	return verdict();
}
