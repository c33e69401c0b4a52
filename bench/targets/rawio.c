/*
 * rawio: the raw baselines of the 1 GiB case, timed inside (no process
 * start-up in the number), printed as seconds on stdout.
 *
 *   rawio write FILE MIB [fsync]
 *                          fill a MIB MiB buffer (untimed), then time
 *                          write(2) of it to FILE in 64 MiB calls (+ fsync)
 *   rawio read FILE        time mmap of fresh anonymous memory and read(2)
 *                          of FILE into it in 64 MiB calls
 *   rawio warm MIB         touch MIB MiB and free it (see warm_memory in
 *                          bench/runner.py)
 *   rawio sockpair MIB     time MIB MiB through a unix stream socketpair
 *                          (a child writes, we read)
 */
#include "common.h"
#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#define STEP (64UL << 20)

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if ((argc == 4 || argc == 5) && !strcmp(argv[1], "write")) {
		size_t size = (size_t)strtoul(argv[3], NULL, 10) << 20;
		uint64_t *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
				   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		double t;
		int fd;

		if (p == MAP_FAILED)
			die("mmap");
		for (size_t i = 0; i < size / 8; i++)
			p[i] = i * 0x9e3779b97f4a7c15ULL;
		t = now();
		fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0600);
		if (fd < 0)
			die("open");
		for (size_t off = 0; off < size;) {
			size_t n = size - off < STEP ? size - off : STEP;
			ssize_t w = write(fd, (char *)p + off, n);

			if (w <= 0)
				die("write");
			off += w;
		}
		if (argc == 5 && fsync(fd))
			die("fsync");
		close(fd);
		printf("%.6f\n", now() - t);
		return 0;
	}
	if (argc == 3 && !strcmp(argv[1], "read")) {
		double t = now();
		struct stat st;
		char *p;
		int fd = open(argv[2], O_RDONLY);

		if (fd < 0 || fstat(fd, &st))
			die("open");
		p = mmap(NULL, st.st_size, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED)
			die("mmap");
		for (size_t off = 0; off < (size_t)st.st_size;) {
			size_t left = st.st_size - off;
			ssize_t r = read(fd, p + off, left < STEP ? left : STEP);

			if (r <= 0)
				die("read");
			off += r;
		}
		printf("%.6f\n", now() - t);
		return 0;
	}
	if (argc == 3 && !strcmp(argv[1], "warm")) {
		size_t size = (size_t)strtoul(argv[2], NULL, 10) << 20;

		if (mmap(NULL, size, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0) == MAP_FAILED)
			die("mmap");
		return 0;
	}
	if (argc == 3 && !strcmp(argv[1], "sockpair")) {
		/* MIB MiB through a unix stream socket pair, written by a child
		 * and read here: the baseline of the TCP queues case */
		size_t size = (size_t)strtoul(argv[2], NULL, 10) << 20;
		static char buf[1 << 16];
		int sv[2];
		double t = now();
		pid_t child;

		if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv))
			die("socketpair");
		child = fork();
		if (child < 0)
			die("fork");
		if (child == 0) {
			close(sv[0]);
			for (size_t off = 0; off < size;) {
				size_t n = size - off < sizeof(buf) ? size - off : sizeof(buf);
				ssize_t w = write(sv[1], buf, n);

				if (w <= 0)
					_exit(1);
				off += w;
			}
			_exit(0);
		}
		close(sv[1]);
		for (size_t got = 0; got < size;) {
			ssize_t r = read(sv[0], buf, sizeof(buf));

			if (r <= 0)
				die("read");
			got += r;
		}
		waitpid(child, NULL, 0);
		printf("%.6f\n", now() - t);
		return 0;
	}
	fprintf(stderr, "usage: rawio write FILE MIB | read FILE | warm MIB | sockpair MIB\n");
	return 2;
}
