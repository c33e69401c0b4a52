/*
 * pipe_widowed: pipes whose other end nobody holds any more.
 *
 * - fd 3: read end (O_NONBLOCK) of a pipe holding "tail"; its write end
 *   was closed, so a read gives "tail" and then EOF, and poll says POLLHUP.
 * - fd 4: write end of a pipe sized 8192 (F_SETPIPE_SZ) holding 100 bytes;
 *   its read end was closed, so FIONREAD says 100 and a write fails with
 *   EPIPE (SIGPIPE ignored).
 *
 * Nothing is touched until SIGTERM, which checks all of the above and
 * prints PASS/FAIL.  "tick N" every 100 ms shows the target runs.
 */
#include "tgt.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/ioctl.h>

int main(void)
{
	char buf[64];
	int a[2], b[2], n, tick = 0;
	struct pollfd p;
	ssize_t r;

	tgt_catch_term();
	signal(SIGPIPE, SIG_IGN);
	close_range(3, ~0U, 0);
	/* made at fds 10+ and then moved to 3 and 4 */
	if (pipe2(a, O_NONBLOCK) || pipe(b))
		die("pipe");
	if (write(a[1], "tail", 4) != 4)
		die("write a");
	if (fcntl(b[1], F_SETPIPE_SZ, 8192) < 0)
		die("F_SETPIPE_SZ");
	memset(buf, 'b', sizeof(buf));
	if (write(b[1], buf, 64) != 64 || write(b[1], buf, 36) != 36)
		die("write b");
	if (dup3(a[0], 10, 0) != 10 || dup3(b[1], 11, 0) != 11)
		die("dup3");
	close(a[0]); close(a[1]); close(b[0]); close(b[1]);
	if (dup2(10, 3) != 3 || dup2(11, 4) != 4)
		die("dup2");
	close(10); close(11);
	say("ready");
	while (!test_stop) {
		usleep(100000);
		say("tick %d", ++tick);
	}

	r = read(3, buf, sizeof(buf));
	if (r != 4 || memcmp(buf, "tail", 4))
		fail("fd 3: read gave %zd bytes", r);
	r = read(3, buf, sizeof(buf));
	if (r != 0)
		fail("fd 3: no EOF after the data: read gave %zd (%m)", r);
	p.fd = 3;
	p.events = POLLIN;
	if (poll(&p, 1, 0) != 1 || !(p.revents & POLLHUP))
		fail("fd 3: no POLLHUP (revents %#x)", p.revents);
	if (ioctl(4, FIONREAD, &n) || n != 100)
		fail("fd 4: FIONREAD %d, not 100", n);
	if (fcntl(4, F_GETPIPE_SZ) != 8192)
		fail("fd 4: pipe size %d", fcntl(4, F_GETPIPE_SZ));
	errno = 0;
	if (write(4, "x", 1) != -1 || errno != EPIPE)
		fail("fd 4: write did not fail with EPIPE (%m)");
	return verdict();
}
