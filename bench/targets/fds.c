/* fds DIR N: N open fds on N regular files in DIR (created here). */
#include "common.h"
#include <fcntl.h>
#include <sys/resource.h>

int main(int argc, char **argv)
{
	long n = strtol(argc > 2 ? argv[2] : "1000", NULL, 10);
	struct rlimit rl;
	char path[4096];

	if (argc < 2)
		return 2;
	if (getrlimit(RLIMIT_NOFILE, &rl))
		die("getrlimit");
	if (rl.rlim_cur < (rlim_t)n + 16) {
		rl.rlim_cur = rl.rlim_max < (rlim_t)n + 16 ? rl.rlim_max : (rlim_t)n + 16;
		if (setrlimit(RLIMIT_NOFILE, &rl))
			die("setrlimit");
	}
	for (long i = 0; i < n; i++) {
		int fd;

		snprintf(path, sizeof(path), "%s/f%ld", argv[1], i);
		fd = open(path, O_RDWR | O_CREAT, 0600);
		if (fd < 0)
			die("open");
		if (write(fd, "x", 1) != 1)
			die("write");
	}
	ready();
	idle();
	return 0;
}
