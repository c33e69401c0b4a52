/* counter FILE: write 1, 2, 3, ... to FILE every 50 ms (the small process). */
#include "common.h"
#include <fcntl.h>
#include <time.h>

int main(int argc, char **argv)
{
	struct timespec ts = { 0, 50 * 1000 * 1000 };
	unsigned long n = 0;
	char buf[32];
	int fd;

	if (argc < 2)
		return 2;
	fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0640);
	if (fd < 0)
		die("open");
	ready();
	for (;;) {
		int len = snprintf(buf, sizeof(buf), "%lu\n", ++n);

		if (write(fd, buf, len) != len)
			die("write");
		nanosleep(&ts, NULL);
	}
	return 0;
}
