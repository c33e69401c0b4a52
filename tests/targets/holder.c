/*
 * holder: hold files open (and mapped) while the test changes their names
 * from outside -- unlink, link, rename, replace -- then checkpoint/restore.
 *
 *   holder SPEC...      one fd per SPEC, from fd 3 up, in order
 *
 *   SPEC = [FLAGS:]PATH, FLAGS a string of
 *     w   open O_RDWR (default O_RDONLY)
 *     m   also mmap the whole file MAP_SHARED read-only
 *     k   a kernel-made file (procfs, sysfs, cgroupfs, lxcfs): contents
 *         change by themselves, so only check it is readable and keeps
 *         its type; never checksum it
 *     d   a directory (O_DIRECTORY)
 *     r   retry the open until it works (a per-caller FUSE file that only
 *         answers this pid once the test has allowed it)
 *
 * At start each fd's mode, size and a checksum of its bytes (holes read as
 * zeros) are recorded.  On SIGTERM every fd must still have them, reads
 * through the mapping must equal reads through the fd, and a write at the
 * end of a "w" file must still land in the same file; then PASS/FAIL.
 * SIGUSR1 prints "nlink FD N" for each fd (what fstat says from inside).
 */
#include "tgt.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#define MAXF 16

static struct held {
	int fd;
	int kernel, rw, dir;
	mode_t mode;
	off_t size;
	unsigned long sum;
	char *map;
	const char *path;
} held[MAXF];
static int nheld;
static volatile sig_atomic_t want_nlink;

static void on_usr1(int sig)
{
	(void)sig;
	want_nlink = 1;
}

/* FNV-1a over the whole file, read with pread (the fd position stays). */
static unsigned long checksum(int fd, off_t size)
{
	static char buf[1 << 16];
	unsigned long h = 1469598103934665603UL;
	off_t off = 0;

	while (off < size) {
		ssize_t n = pread(fd, buf, sizeof(buf), off);

		if (n <= 0)
			return 0;
		for (ssize_t i = 0; i < n; i++) {
			h ^= (unsigned char)buf[i];
			h *= 1099511628211UL;
		}
		off += n;
	}
	return h;
}

static void open_one(const char *spec)
{
	struct held *h = &held[nheld];
	const char *colon = strchr(spec, ':');
	const char *flags = "";
	int oflags = O_RDONLY, retry = 0, fd;
	struct stat st;

	if (colon && colon - spec < 8 && spec[0] != '/') {
		static char fbuf[MAXF][8];

		memcpy(fbuf[nheld], spec, colon - spec);
		flags = fbuf[nheld];
		spec = colon + 1;
	}
	h->path = spec;
	h->rw = strchr(flags, 'w') != NULL;
	h->kernel = strchr(flags, 'k') != NULL;
	h->dir = strchr(flags, 'd') != NULL;
	retry = strchr(flags, 'r') != NULL;
	if (h->rw)
		oflags = O_RDWR;
	if (h->dir)
		oflags |= O_DIRECTORY;
	for (int i = 0;; i++) {
		fd = open(spec, oflags);
		if (fd >= 0 || !retry || i > 500)
			break;
		usleep(20000);
	}
	if (fd < 0)
		die("open %s", spec);
	if (dup2(fd, 3 + nheld) < 0)
		die("dup2");
	if (fd != 3 + nheld)
		close(fd);
	h->fd = 3 + nheld;
	if (fstat(h->fd, &st))
		die("fstat %s", spec);
	h->mode = st.st_mode;
	h->size = st.st_size;
	if (!h->kernel && !h->dir)
		h->sum = checksum(h->fd, st.st_size);
	if (strchr(flags, 'm') && st.st_size) {
		h->map = mmap(NULL, st.st_size, PROT_READ, MAP_SHARED, h->fd, 0);
		if (h->map == MAP_FAILED)
			die("mmap %s", spec);
	}
	nheld++;
}

static void check_one(struct held *h)
{
	struct stat st;
	char c;

	if (fstat(h->fd, &st)) {
		fail("fd %d (%s): fstat: %s", h->fd, h->path, strerror(errno));
		return;
	}
	if ((st.st_mode & S_IFMT) != (h->mode & S_IFMT) ||
	    (!h->kernel && st.st_mode != h->mode))
		fail("fd %d (%s): mode %o, was %o", h->fd, h->path, st.st_mode, h->mode);
	if (h->dir)
		return;
	if (h->kernel) {
		if (pread(h->fd, &c, 1, 0) < 0)
			fail("fd %d (%s): read: %s", h->fd, h->path, strerror(errno));
		return;
	}
	if (st.st_size != h->size)
		fail("fd %d (%s): size %lld, was %lld", h->fd, h->path,
		     (long long)st.st_size, (long long)h->size);
	else if (checksum(h->fd, st.st_size) != h->sum)
		fail("fd %d (%s): contents changed", h->fd, h->path);
	if (h->map) {
		static char buf[1 << 16];
		off_t off = 0;

		while (off < h->size) {
			ssize_t n = pread(h->fd, buf, sizeof(buf), off);

			if (n <= 0 || memcmp(buf, h->map + off, n)) {
				fail("fd %d (%s): mapping differs from the file at %lld",
				     h->fd, h->path, (long long)off);
				break;
			}
			off += n;
		}
	}
	if (h->rw) {
		/* a write through the fd must be seen through the fd */
		const char tail[] = "written after restore\n";
		char back[sizeof(tail)];

		if (pwrite(h->fd, tail, sizeof(tail), st.st_size) != sizeof(tail) ||
		    pread(h->fd, back, sizeof(tail), st.st_size) != sizeof(tail) ||
		    memcmp(back, tail, sizeof(tail)))
			fail("fd %d (%s): write/read back failed", h->fd, h->path);
	}
}

int main(int argc, char **argv)
{
	struct sigaction sa;

	if (argc < 2 || argc - 1 > MAXF) {
		say("usage: holder SPEC...");
		return 2;
	}
	tgt_catch_term();
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sa.sa_flags = SA_RESTART;
	sigaction(SIGUSR1, &sa, NULL);
	for (int i = 1; i < argc; i++)
		open_one(argv[i]);
	say("ready");
	while (!test_stop) {
		if (want_nlink) {
			want_nlink = 0;
			for (int i = 0; i < nheld; i++) {
				struct stat st;

				if (fstat(held[i].fd, &st) == 0)
					say("nlink %d %lu", held[i].fd, (unsigned long)st.st_nlink);
				else
					say("nlink %d error %d", held[i].fd, errno);
			}
		}
		usleep(20000);
	}
	for (int i = 0; i < nheld; i++)
		check_one(&held[i]);
	return verdict();
}
