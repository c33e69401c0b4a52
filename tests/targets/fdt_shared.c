/* fdt_shared: a parent and a child made with clone(CLONE_FILES) share one
 * fd table.  Both count into FILE (the child opens it after the clone, so
 * the parent writes through the fd the child opened: only a shared table
 * makes that work).  Prints "ready"; on SIGTERM the parent checks that
 * the child's fd is still visible to it, kills the child, says PASS/FAIL.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static const char *path;
static int report[2];

static void on_term(int s) { (void)s; stop = 1; }

static int child(void *arg)
{
	(void)arg;
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);

	if (write(report[1], &fd, sizeof(fd)) != sizeof(fd))
		_exit(1);
	for (;;)
		pause();
	return 0;
}

int main(int argc, char **argv)
{
	static char stack[64 * 1024];
	char line[32];
	int n = 0, pid, status, child_fd;

	if (argc < 2)
		return 2;
	path = argv[1];
	signal(SIGTERM, on_term);
	if (pipe(report))
		return 1;
	pid = clone(child, stack + sizeof(stack), CLONE_FILES | SIGCHLD, NULL);
	if (pid < 0) {
		perror("clone");
		return 1;
	}
	if (read(report[0], &child_fd, sizeof(child_fd)) != sizeof(child_fd))
		return 1;
	close(report[0]);
	close(report[1]);
	printf("ready\n");
	fflush(stdout);
	while (!stop) {
		int len = snprintf(line, sizeof(line), "%d\n", ++n);
		if (write(child_fd, line, len) != len) {
			printf("FAIL: write to the child's fd %d\n", child_fd);
			return 1;
		}
		usleep(50000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	printf("%s\n", fcntl(child_fd, F_GETFD) < 0 ? "FAIL: child's fd gone" : "PASS");
	return 0;
}
