/*
 * memfd_odd: memfds whose sizes are not whole pages.
 *
 * - fd 3: memfd "odd" of 5 bytes ("hello", position 5), mapped shared one
 *   page long; through the mapping "past the end" was written at offset
 *   100, beyond the end of the file (read() cannot see it, the mapping
 *   can).  Prints "map ADDR" (hex) for the harness.
 * - fd 4: memfd "holey" of 3 pages + 10 bytes: "mid" at 2 pages + 5 and
 *   "end" at 3 pages + 7; pages 0 and 1 are holes (never written).
 * - fd 5: shared anonymous memory opened as a file through
 *   /proc/self/map_files (as zdtm shmemfd does), the mapping gone, cut to
 *   0 bytes, O_APPEND, "hello" written, position 3; readlink says
 *   "/dev/zero (deleted)".
 * - fd 6: memfd "exe" holding "#!/bin/true", mode 0751 (fchmod): it must
 *   still run with execveat(AT_EMPTY_PATH), i.e. the fd memfd_create gave
 *   is not counted as a writer (ETXTBSY otherwise).
 *
 * SIGTERM checks sizes, contents, position, the bytes past the end through
 * the mapping, and that the holes are still holes; PASS/FAIL.
 */
#include "tgt.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#define PG 4096

static int run_memfd(int fd)
{
	char *argv[] = { "true", NULL }, *envp[] = { NULL };
	int status;
	pid_t pid = fork();

	if (pid == 0) {
		syscall(SYS_execveat, fd, "", argv, envp, AT_EMPTY_PATH);
		_exit(errno);
	}
	if (pid < 0 || waitpid(pid, &status, 0) != pid)
		return -1;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

static void check_size(int fd, off_t want)
{
	struct stat st;

	if (fstat(fd, &st) || st.st_size != want)
		fail("fd %d: size %lld, not %lld", fd, (long long)st.st_size, (long long)want);
}

int main(void)
{
	char buf[32], *map;
	char path[64], link[64];
	int a, b, z, fl, x, rc;
	struct stat xs;
	off_t d;
	void *anon;

	tgt_catch_term();
	close_range(3, ~0U, 0);
	a = memfd_create("odd", 0);
	b = memfd_create("holey", 0);
	if (a != 3 || b != 4)
		die("memfd_create gave %d %d", a, b);
	if (write(a, "hello", 5) != 5)
		die("write a");
	map = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED, a, 0);
	if (map == MAP_FAILED)
		die("mmap");
	strcpy(map + 100, "past the end");
	if (ftruncate(b, 3 * PG + 10) || pwrite(b, "mid", 3, 2 * PG + 5) != 3 ||
	    pwrite(b, "end", 3, 3 * PG + 7) != 3)
		die("holey");
	anon = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (anon == MAP_FAILED)
		die("mmap anon");
	snprintf(path, sizeof(path), "/proc/self/map_files/%lx-%lx",
		 (unsigned long)anon, (unsigned long)anon + PG);
	z = open(path, O_RDWR);
	if (z != 5 || ftruncate(z, 0) || munmap(anon, PG) || fcntl(z, F_SETFL, O_APPEND) ||
	    write(z, "hello", 5) != 5 || lseek(z, 3, SEEK_SET) != 3)
		die("shmem file (fd %d)", z);
	fl = fcntl(z, F_GETFL);
	x = memfd_create("exe", 0);
	if (x != 6 || write(x, "#!/bin/true\n", 12) != 12 || fchmod(x, 0751))
		die("exe memfd (fd %d)", x);
	if ((rc = run_memfd(x)))
		die("execveat of the memfd before the dump: %s", strerror(rc));
	say("map %lx", (unsigned long)map);
	say("ready");
	while (!test_stop)
		usleep(100000);

	check_size(a, 5);
	if (lseek(a, 0, SEEK_CUR) != 5)
		fail("fd 3: position %lld", (long long)lseek(a, 0, SEEK_CUR));
	if (pread(a, buf, sizeof(buf), 0) != 5 || memcmp(buf, "hello", 5))
		fail("fd 3: contents");
	if (memcmp(map, "hello", 5) || strcmp(map + 100, "past the end"))
		fail("fd 3: the mapping shows \"%.5s\" and \"%.12s\"", map, map + 100);
	for (int i = 5; i < 100; i++)
		if (map[i]) {
			fail("fd 3: byte %d past the end is %#x", i, map[i]);
			break;
		}
	check_size(b, 3 * PG + 10);
	if (pread(b, buf, 3, 2 * PG + 5) != 3 || memcmp(buf, "mid", 3) ||
	    pread(b, buf, 10, 3 * PG) != 10 || memcmp(buf + 7, "end", 3))
		fail("fd 4: contents");
	d = lseek(b, 0, SEEK_DATA);
	if (d != 2 * PG)
		fail("fd 4: first data at %lld, not %d (holes filled)", (long long)d, 2 * PG);
	memset(link, 0, sizeof(link));
	if (readlink("/proc/self/fd/5", link, sizeof(link) - 1) < 0 ||
	    strcmp(link, "/dev/zero (deleted)"))
		fail("fd 5: readlink says %s", link);
	if (fcntl(z, F_GETFL) != fl)
		fail("fd 5: flags %#x, not %#x", fcntl(z, F_GETFL), fl);
	if (lseek(z, 0, SEEK_CUR) != 3)
		fail("fd 5: position %lld", (long long)lseek(z, 0, SEEK_CUR));
	check_size(z, 5);
	if (pread(z, buf, sizeof(buf), 0) != 5 || memcmp(buf, "hello", 5))
		fail("fd 5: contents");
	if (fstat(x, &xs) || (xs.st_mode & 07777) != 0751)
		fail("fd 6: mode %o, not 751", xs.st_mode & 07777);
	if ((rc = run_memfd(x)))
		fail("fd 6: execveat: %s", strerror(rc));
	return verdict();
}
