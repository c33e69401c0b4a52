/*
 * fanotify_marks: a fanotify group with an inode mark and a mount mark.
 *
 *   fanotify_marks FILE MOUNTPOINT
 *
 * fd 3 is fanotify_init(FAN_CLASS_NOTIF | FAN_NONBLOCK, O_RDONLY |
 * O_LARGEFILE); marks: FILE (FAN_MODIFY | FAN_CLOSE_WRITE), MOUNTPOINT as
 * a mount (FAN_OPEN | FAN_ONDIR, and an ignore mask FAN_CLOSE_NOWRITE that
 * survives modification).  Its own fdinfo lines (minus mnt_id and sdev)
 * are kept from the start.  Every event read is printed "event MASK" (its
 * fd closed).  On SIGUSR1 it compares its fdinfo with the start: "fdinfo
 * same" or a FAIL.  SIGTERM: PASS/FAIL.
 */
#define _GNU_SOURCE
#include "tgt.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/fanotify.h>

static volatile sig_atomic_t check;

static void on_usr1(int sig)
{
	(void)sig;
	check = 1;
}

/* fdinfo lines of fd 3 from "fanotify", mnt_id:/sdev: fields cut out */
static void marks(char *out, size_t size)
{
	char line[1024];
	FILE *f = fopen("/proc/self/fdinfo/3", "r");
	size_t n = 0;

	if (!f)
		die("fdinfo");
	out[0] = 0;
	while (fgets(line, sizeof(line), f)) {
		char *w, *save = NULL;

		if (strncmp(line, "fanotify", 8))
			continue;
		for (w = strtok_r(line, " \n", &save); w; w = strtok_r(NULL, " \n", &save)) {
			if (!strncmp(w, "mnt_id:", 7) || !strncmp(w, "sdev:", 5))
				continue;
			n += snprintf(out + n, size - n, "%s ", w);
		}
		n += snprintf(out + n, size - n, "| ");
	}
	fclose(f);
}

int main(int argc, char **argv)
{
	char before[4096], after[4096];
	char buf[4096] __attribute__((aligned(8)));
	int fd;

	if (argc < 3)
		die("usage: fanotify_marks FILE MOUNTPOINT");
	tgt_catch_term();
	signal(SIGUSR1, on_usr1);
	close_range(3, ~0U, 0);
	fd = fanotify_init(FAN_CLASS_NOTIF | FAN_NONBLOCK, O_RDONLY | O_LARGEFILE);
	if (fd != 3)
		die("fanotify_init gave %d", fd);
	if (fanotify_mark(fd, FAN_MARK_ADD, FAN_MODIFY | FAN_CLOSE_WRITE, AT_FDCWD, argv[1]))
		die("mark %s", argv[1]);
	if (fanotify_mark(fd, FAN_MARK_ADD | FAN_MARK_MOUNT, FAN_OPEN | FAN_ONDIR, AT_FDCWD, argv[2]))
		die("mark mount %s", argv[2]);
	if (fanotify_mark(fd, FAN_MARK_ADD | FAN_MARK_MOUNT | FAN_MARK_IGNORED_MASK |
			  FAN_MARK_IGNORED_SURV_MODIFY, FAN_CLOSE_NOWRITE, AT_FDCWD, argv[2]))
		die("ignore mark %s", argv[2]);
	marks(before, sizeof(before));
	say("ready");
	while (!test_stop) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		struct fanotify_event_metadata *ev;
		ssize_t n;

		if (check) {
			check = 0;
			marks(after, sizeof(after));
			if (strcmp(before, after))
				fail("fdinfo was [%s], is [%s]", before, after);
			else
				say("fdinfo same");
		}
		if (poll(&p, 1, 20) <= 0)
			continue;
		n = read(fd, buf, sizeof(buf));
		for (ev = (void *)buf; n > 0 && FAN_EVENT_OK(ev, n); ev = FAN_EVENT_NEXT(ev, n)) {
			say("event %llx", (unsigned long long)ev->mask);
			if (ev->fd >= 0)
				close(ev->fd);
		}
	}
	return verdict();
}
