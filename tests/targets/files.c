/*
 * files: a table of ordinary fds whose state a restore must bring back.
 *
 *   files DIR        (DIR: a scratch directory; files are created in it)
 *
 *   fd  3  DIR/log.txt      O_WRONLY|O_APPEND
 *   fd  4  DIR/data.bin     O_RDONLY, position 123
 *   fd  5  DIR/rw.bin       O_RDWR, 1000 bytes, position 500
 *   fd  6  DIR              O_RDONLY|O_DIRECTORY
 *   fd  7  /dev/null        O_WRONLY
 *   fd  8  /dev/zero        O_RDONLY
 *   fd  9  /dev/urandom     O_RDONLY
 *   fd 10  DIR/data.bin     O_RDONLY|O_CLOEXEC, position 7
 *   fd 11  DIR/data.bin     O_RDONLY|O_NONBLOCK
 *   fd 42  dup of fd 4      (shares the file description and its position)
 *
 * SIGTERM: check flags (F_GETFL, F_GETFD), positions, identity (st_dev,
 * st_ino), contents read at the position, that fd 42 still shares fd 4's
 * position, that O_APPEND writes land at the end, /dev/zero reads zeros;
 * print PASS/FAIL.
 */
#include "tgt.h"

#include <fcntl.h>
#include <sys/stat.h>

#define NFD 10

static const struct {
	int fd;
	const char *name;	/* relative to DIR; NULL = DIR; "/..." absolute */
	int flags;
	off_t pos;
} spec[NFD] = {
	{ 3, "log.txt", O_WRONLY | O_APPEND | O_CREAT, -1 },
	{ 4, "data.bin", O_RDONLY, 123 },
	{ 5, "rw.bin", O_RDWR | O_CREAT | O_TRUNC, 500 },
	{ 6, NULL, O_RDONLY | O_DIRECTORY, -1 },
	{ 7, "/dev/null", O_WRONLY, -1 },
	{ 8, "/dev/zero", O_RDONLY, -1 },
	{ 9, "/dev/urandom", O_RDONLY, -1 },
	{ 10, "data.bin", O_RDONLY | O_CLOEXEC, 7 },
	{ 11, "data.bin", O_RDONLY | O_NONBLOCK, -1 },
	{ 42, NULL, 0, -1 },	/* dup(4) */
};

static struct {
	int flags, fdflags;
	off_t pos;
	dev_t dev;
	ino_t ino;
} saved[NFD];

static unsigned char data_byte(off_t i)
{
	return (unsigned char)((i * 7 + 3) % 251);
}

static void write_file(const char *dir, const char *name, size_t len)
{
	unsigned char buf[4096];
	char path[4096];
	int fd;

	for (size_t i = 0; i < len && i < sizeof(buf); i++)
		buf[i] = data_byte(i);
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		die("create %s", path);
	tgt_write_all(fd, (char *)buf, len);
	close(fd);
}

static void snap(int i)
{
	struct stat stt;
	int fd = spec[i].fd;

	saved[i].flags = fcntl(fd, F_GETFL);
	saved[i].fdflags = fcntl(fd, F_GETFD);
	saved[i].pos = lseek(fd, 0, SEEK_CUR);
	if (fstat(fd, &stt))
		die("fstat %d", fd);
	saved[i].dev = stt.st_dev;
	saved[i].ino = stt.st_ino;
}

int main(int argc, char **argv)
{
	unsigned char buf[64], rw[1000];
	struct stat stt;
	off_t log_size;
	int i;

	if (argc < 2) {
		say("usage: files DIR");
		return 2;
	}
	write_file(argv[1], "data.bin", 4096);

	for (i = 0; i < NFD; i++) {
		char path[4096];
		const char *name = spec[i].name;
		int fd;

		if (spec[i].fd == 42) {
			if (dup2(4, 42) != 42)
				die("dup2");
			continue;
		}
		if (!name)
			snprintf(path, sizeof(path), "%s", argv[1]);
		else if (name[0] == '/')
			snprintf(path, sizeof(path), "%s", name);
		else
			snprintf(path, sizeof(path), "%s/%s", argv[1], name);
		fd = open(path, spec[i].flags, 0644);
		if (fd < 0)
			die("open %s", path);
		if (fd != spec[i].fd) {
			/* dup3 keeps close-on-exec where the spec asks for it */
			if (dup3(fd, spec[i].fd, spec[i].flags & O_CLOEXEC) < 0)
				die("dup3");
			close(fd);
		}
	}
	tgt_write_all(3, "start\n", 6);
	for (i = 0; i < 1000; i++)
		rw[i] = data_byte(i);
	tgt_write_all(5, (char *)rw, 1000);
	for (i = 0; i < NFD; i++)
		if (spec[i].pos >= 0 && lseek(spec[i].fd, spec[i].pos, SEEK_SET) != spec[i].pos)
			die("lseek fd %d", spec[i].fd);
	for (i = 0; i < NFD; i++)
		snap(i);

	tgt_catch_term();
	say("ready");
	while (!test_stop)
		pause();

	for (i = 0; i < NFD; i++) {
		int fd = spec[i].fd;

		if (fcntl(fd, F_GETFL) != saved[i].flags)
			fail("fd %d: F_GETFL %#o, expected %#o", fd, fcntl(fd, F_GETFL), saved[i].flags);
		if (fcntl(fd, F_GETFD) != saved[i].fdflags)
			fail("fd %d: F_GETFD %#x, expected %#x", fd, fcntl(fd, F_GETFD), saved[i].fdflags);
		if (lseek(fd, 0, SEEK_CUR) != saved[i].pos)
			fail("fd %d: position %ld, expected %ld", fd,
			     (long)lseek(fd, 0, SEEK_CUR), (long)saved[i].pos);
		if (fstat(fd, &stt) || stt.st_dev != saved[i].dev || stt.st_ino != saved[i].ino)
			fail("fd %d: now refers to another file", fd);
	}
	if (test_failed)
		return verdict();

	/* contents at the restored position */
	if (read(4, buf, 10) != 10)
		fail("read fd 4: %s", strerror(errno));
	for (i = 0; i < 10; i++)
		if (buf[i] != data_byte(123 + i)) {
			fail("fd 4: byte %d is %d, expected %d", 123 + i, buf[i], data_byte(123 + i));
			break;
		}
	/* fd 42 shares fd 4's file description */
	if (lseek(42, 0, SEEK_CUR) != 133)
		fail("fd 42 position %ld after reading fd 4, expected 133 (shared description)",
		     (long)lseek(42, 0, SEEK_CUR));
	if (read(5, buf, 8) != 8 || buf[0] != data_byte(500))
		fail("fd 5: wrong data at 500");
	/* O_APPEND: a write lands at the end */
	fstat(3, &stt);
	log_size = stt.st_size;
	tgt_write_all(3, "after\n", 6);
	fstat(3, &stt);
	if (stt.st_size != log_size + 6 || lseek(3, 0, SEEK_CUR) != log_size + 6)
		fail("fd 3: append did not land at the end");
	if (read(8, buf, sizeof(buf)) != sizeof(buf))
		fail("read /dev/zero");
	for (i = 0; i < (int)sizeof(buf); i++)
		if (buf[i]) {
			fail("/dev/zero gave a non-zero byte");
			break;
		}
	if (read(9, buf, 16) != 16)
		fail("read /dev/urandom");
	if (write(7, "x", 1) != 1)
		fail("write /dev/null");
	if (fstat(6, &stt) || !S_ISDIR(stt.st_mode))
		fail("fd 6 is not a directory");
	i = openat(6, "data.bin", O_RDONLY);
	if (i < 0)
		fail("openat(fd 6, data.bin): %s", strerror(errno));
	else
		close(i);
	return verdict();
}
