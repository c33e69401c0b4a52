/*
 * deleted_nodes DIR: a FIFO and a device node, open and unlinked.
 *
 * - fd 3 (O_RDONLY|O_NONBLOCK) and fd 4 (O_WRONLY): DIR/fifo, "queued"
 *   written into it, then unlinked;
 * - fd 5 (O_RDWR): DIR/null, a character device 1:3 (/dev/null) made with
 *   mknod, then unlinked.
 *
 * SIGTERM checks: fds 3 and 4 are one FIFO with no name (nlink 0) holding
 * "queued"; fd 5 is still the 1:3 device with no name, writes succeed and
 * reads give EOF; PASS/FAIL.
 */
#include "tgt.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

int main(int argc, char **argv)
{
	char fifo[4096], node[4096], buf[32];
	struct stat a, b, c;
	ssize_t n;

	if (argc < 2)
		die("usage: deleted_nodes DIR");
	tgt_catch_term();
	close_range(3, ~0U, 0);
	umask(0);
	snprintf(fifo, sizeof(fifo), "%s/fifo", argv[1]);
	snprintf(node, sizeof(node), "%s/null", argv[1]);
	if (mkfifo(fifo, 0640) || mknod(node, S_IFCHR | 0620, makedev(1, 3)))
		die("mkfifo/mknod");
	if (open(fifo, O_RDONLY | O_NONBLOCK) != 3 || open(fifo, O_WRONLY) != 4 ||
	    open(node, O_RDWR) != 5)
		die("open");
	if (write(4, "queued", 6) != 6)
		die("write");
	if (unlink(fifo) || unlink(node))
		die("unlink");
	say("ready");
	while (!test_stop)
		usleep(100000);

	if (fstat(3, &a) || fstat(4, &b) || fstat(5, &c))
		fail("fstat");
	if (!S_ISFIFO(a.st_mode) || a.st_ino != b.st_ino || a.st_dev != b.st_dev)
		fail("fds 3 and 4 are no longer one FIFO");
	if (a.st_nlink || c.st_nlink)
		fail("nlink %ld and %ld, not 0", (long)a.st_nlink, (long)c.st_nlink);
	if ((a.st_mode & 07777) != 0640 || (c.st_mode & 07777) != 0620)
		fail("modes %o %o", a.st_mode & 07777, c.st_mode & 07777);
	n = read(3, buf, sizeof(buf));
	if (n != 6 || memcmp(buf, "queued", 6))
		fail("fifo: read gave %zd bytes", n);
	if (!S_ISCHR(c.st_mode) || c.st_rdev != makedev(1, 3))
		fail("fd 5: not the 1:3 device");
	if (write(5, "x", 1) != 1 || read(5, buf, 1) != 0)
		fail("fd 5: does not act as /dev/null");
	return verdict();
}
