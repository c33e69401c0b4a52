/*
 * inotify_watch: an inotify fd whose watches have non-consecutive wds.
 *
 *   inotify_watch DIR [deleted]
 *
 * Watches DIR/a (added first, wd 1, then removed), DIR (IN_CREATE, wd 2)
 * and DIR/file (IN_MODIFY, wd 3), so a restore must give back wds 2 and 3
 * exactly.  Every event is printed as "created NAME wd N" or
 * "modified wd N"; an event on an unexpected wd is a FAIL.  The fd
 * (fd 3, O_NONBLOCK) is polled every 20 ms.  SIGUSR1 toggles a pause:
 * while paused ("paused" printed) nothing is read, so events stay queued;
 * the next SIGUSR1 prints "resumed" and reading goes on.  SIGTERM:
 * PASS/FAIL.
 *
 * deleted: also DIR/gone, opened (fd 4), watched (IN_MODIFY | IN_ATTRIB |
 * IN_DELETE_SELF, wd 4) and then unlinked: a watch on a deleted file.  On
 * SIGUSR2 it writes to fd 4: "modified gone wd 4" must follow.  Any other
 * event (a restore's temporary names coming and going in DIR, the file's
 * link count changing) is a FAIL.  mapped: the same, but the deleted file
 * is then only mapped (fd 4 closed): a dump must refuse it.
 */
#include "tgt.h"

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/stat.h>

static volatile sig_atomic_t paused, poke;

static void on_usr2(int sig)
{
	(void)sig;
	poke = 1;
}

static void on_usr1(int sig)
{
	(void)sig;
	paused = !paused;
}

int main(int argc, char **argv)
{
	char buf[4096] __attribute__((aligned(8))), path[PATH_MAX];
	int fd, wd_gone, wd_dir, wd_file, f, g = -1, wd_del = -1;

	if (argc < 2)
		die("usage: inotify_watch DIR");
	tgt_catch_term();
	signal(SIGUSR1, on_usr1);
	close_range(3, ~0U, 0);
	fd = inotify_init1(IN_NONBLOCK);
	if (fd != 3)
		die("inotify_init1 gave %d", fd);
	snprintf(path, sizeof(path), "%s/a", argv[1]);
	if (mkdir(path, 0755) && errno != EEXIST)
		die("mkdir %s", path);
	wd_gone = inotify_add_watch(fd, path, IN_ALL_EVENTS);
	wd_dir = inotify_add_watch(fd, argv[1], IN_CREATE | IN_ONLYDIR);
	snprintf(path, sizeof(path), "%s/file", argv[1]);
	f = open(path, O_CREAT | O_WRONLY, 0644);
	if (f < 0)
		die("open %s", path);
	close(f);
	wd_file = inotify_add_watch(fd, path, IN_MODIFY | IN_EXCL_UNLINK);
	if (wd_gone != 1 || wd_dir != 2 || wd_file != 3)
		die("wds %d %d %d", wd_gone, wd_dir, wd_file);
	if (inotify_rm_watch(fd, wd_gone))
		die("inotify_rm_watch");
	if (argc > 2 && (!strcmp(argv[2], "deleted") || !strcmp(argv[2], "mapped"))) {
		signal(SIGUSR2, on_usr2);
		snprintf(path, sizeof(path), "%s/gone", argv[1]);
		g = open(path, O_CREAT | O_RDWR, 0644);
		if (g != 4)
			die("open %s gave %d", path, g);
		if (write(g, "abc", 3) != 3)
			die("write");
		wd_del = inotify_add_watch(fd, path, IN_MODIFY | IN_ATTRIB | IN_DELETE_SELF);
		if (wd_del != 4)
			die("wd %d for the deleted file", wd_del);
		if (unlink(path))
			die("unlink %s", path);
		if (!strcmp(argv[2], "mapped")) {
			if (mmap(NULL, 4096, PROT_READ, MAP_SHARED, g, 0) == MAP_FAILED)
				die("mmap");
			close(g);
		}
	}
	/* drop what our own setup queued (IN_CREATE of "file", IN_IGNORED) */
	usleep(10000);
	while (read(fd, buf, sizeof(buf)) > 0)
		;
	say("ready");

	while (!test_stop) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		ssize_t n, off;
		static int was_paused;

		if (paused != was_paused) {
			was_paused = paused;
			say(paused ? "paused" : "resumed");
		}
		if (paused) {
			usleep(20000);
			continue;
		}
		if (poke) {
			poke = 0;
			if (write(g, "d", 1) != 1)
				fail("write to the deleted file");
		}
		if (poll(&p, 1, 20) <= 0)
			continue;
		n = read(fd, buf, sizeof(buf));
		for (off = 0; n > 0 && off < n; ) {
			struct inotify_event *ev = (struct inotify_event *)(buf + off);

			if (ev->wd == wd_dir && (ev->mask & IN_CREATE))
				say("created %s wd %d", ev->len ? ev->name : "?", ev->wd);
			else if (ev->wd == wd_file && (ev->mask & IN_MODIFY))
				say("modified wd %d", ev->wd);
			else if (ev->wd == wd_del && ev->mask == IN_MODIFY)
				say("modified gone wd %d", ev->wd);
			else
				fail("event mask %#x on wd %d", ev->mask, ev->wd);
			off += sizeof(*ev) + ev->len;
		}
	}
	return verdict();
}
