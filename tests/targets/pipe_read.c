/*
 * pipe_read: pipes, including one with data in flight.
 *
 * - pipe A: read end on fd 7, write end on fd 8; the target blocks in
 *   read(7).  Whatever is written into it (the harness writes through
 *   /proc/PID/fd/8) is echoed as "got DATA".
 * - pipe B: read end on fd 9 (O_NONBLOCK), write end on fd 10, with
 *   BUFBYTES bytes written at start and never read until the check.
 *
 * SIGTERM: check both ends of each pipe are still one pipe, the flags, and
 * that pipe B holds exactly the bytes written at start; print PASS/FAIL.
 */
#include "tgt.h"

#include <fcntl.h>
#include <sys/stat.h>

#define BUFBYTES 5000

static unsigned char pat(int i)
{
	return (unsigned char)(i * 13 + 5);
}

static int same_pipe(int a, int b)
{
	struct stat sa, sb;

	return !fstat(a, &sa) && !fstat(b, &sb) && S_ISFIFO(sa.st_mode) &&
	       sa.st_ino == sb.st_ino && sa.st_dev == sb.st_dev;
}

int main(void)
{
	unsigned char big[BUFBYTES + 16];
	char buf[256];
	int p[2], q[2], i;
	ssize_t n;

	if (pipe(p) || pipe2(q, O_NONBLOCK))
		die("pipe");
	if (dup2(p[0], 7) < 0 || dup2(p[1], 8) < 0 || dup2(q[0], 9) < 0 || dup2(q[1], 10) < 0)
		die("dup2");
	close(p[0]);
	close(p[1]);
	close(q[0]);
	close(q[1]);
	if (fcntl(10, F_SETFL, 0))  /* the write end blocks; the read end does not */
		die("fcntl");
	for (i = 0; i < BUFBYTES; i++)
		big[i] = pat(i);
	tgt_write_all(10, (char *)big, BUFBYTES);

	tgt_catch_term();
	say("ready");
	while (!test_stop) {
		n = read(7, buf, sizeof(buf) - 1);
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

	if (!same_pipe(7, 8) || !same_pipe(9, 10))
		fail("the two ends are no longer one pipe");
	if (same_pipe(7, 9))
		fail("pipes A and B became one pipe");
	if ((fcntl(7, F_GETFL) & (O_ACCMODE | O_NONBLOCK)) != O_RDONLY ||
	    (fcntl(8, F_GETFL) & (O_ACCMODE | O_NONBLOCK)) != O_WRONLY ||
	    (fcntl(9, F_GETFL) & (O_ACCMODE | O_NONBLOCK)) != (O_RDONLY | O_NONBLOCK) ||
	    (fcntl(10, F_GETFL) & (O_ACCMODE | O_NONBLOCK)) != O_WRONLY)
		fail("pipe fd flags changed: %#o %#o %#o %#o", fcntl(7, F_GETFL),
		     fcntl(8, F_GETFL), fcntl(9, F_GETFL), fcntl(10, F_GETFL));
	n = read(9, big, sizeof(big));
	if (n != BUFBYTES) {
		fail("pipe B held %zd bytes, expected %d", n, BUFBYTES);
	} else {
		for (i = 0; i < BUFBYTES; i++)
			if (big[i] != pat(i)) {
				fail("pipe B byte %d is %d, expected %d", i, big[i], pat(i));
				break;
			}
		if (read(9, big, 1) != -1 || errno != EAGAIN)
			fail("pipe B has more data than was written");
	}
	return verdict();
}
