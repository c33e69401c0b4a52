/* procsnap-libs: -lcriu
 *
 * libcriu_client: criu's C client library (libcriu.so.2, which crun
 * dlopens and which CRIU ships for C programs) driving CRIU's RPC, as
 * crun does: it starts SERVICE swrk on a socketpair of its own.
 *
 *   libcriu_client SERVICE dump PID DIR
 *   libcriu_client SERVICE restore DIR
 *
 * dump: criu_set_pid, the images directory as an fd of ours
 * (criu_set_images_dir_fd), a log file, the notify callback (every
 * action-script stage comes back to us; each is printed as "notify NAME"),
 * criu_dump.  restore: the same, then criu_restore_child (the tree comes
 * back as our child: rst_sibling), prints "restored PID".  Any failure:
 * "FAIL: WHAT RET" and exit status 1.
 */
#include <criu/criu.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int notified(char *action, criu_notify_arg_t na)
{
	(void)na;
	printf("notify %s\n", action);
	fflush(stdout);
	return 0;
}

static int setup(const char *service, const char *dir, const char *log)
{
	int fd, ret;

	ret = criu_init_opts();
	if (ret < 0) {
		printf("FAIL: criu_init_opts %d\n", ret);
		return -1;
	}
	criu_set_service_binary(service);
	fd = open(dir, O_RDONLY | O_DIRECTORY);
	if (fd < 0) {
		perror(dir);
		return -1;
	}
	criu_set_images_dir_fd(fd);
	criu_set_log_file(log);
	criu_set_log_level(4);
	criu_set_notify_cb(notified);
	return 0;
}

int main(int argc, char **argv)
{
	int ret;

	if (argc == 5 && strcmp(argv[2], "dump") == 0) {
		if (setup(argv[1], argv[4], "dump.log"))
			return 1;
		criu_set_pid(atoi(argv[3]));
		ret = criu_dump();
		if (ret < 0) {
			printf("FAIL: criu_dump %d\n", ret);
			return 1;
		}
		printf("dumped %d\n", ret);
		return 0;
	}
	if (argc == 4 && strcmp(argv[2], "restore") == 0) {
		if (setup(argv[1], argv[3], "restore.log"))
			return 1;
		ret = criu_restore_child();
		if (ret <= 0) {
			printf("FAIL: criu_restore_child %d\n", ret);
			return 1;
		}
		printf("restored %d\n", ret);
		return 0;
	}
	fprintf(stderr, "usage: %s SERVICE dump PID DIR | SERVICE restore DIR\n", argv[0]);
	return 2;
}
