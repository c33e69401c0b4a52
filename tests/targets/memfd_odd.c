/*
 * memfd_odd: memfds whose sizes are not whole pages.
 *
 * - fd 3: memfd "odd" of 5 bytes ("hello", position 5), mapped shared one
 *   page long; through the mapping "past the end" was written at offset
 *   100, beyond the end of the file (read() cannot see it, the mapping
 *   can).  Prints "map ADDR" (hex) for the harness.
 * - fd 4: memfd "holey" of 3 pages + 10 bytes: "mid" at 2 pages + 5 and
 *   "end" at 3 pages + 7; pages 0 and 1 are holes (never written).
 *
 * SIGTERM checks sizes, contents, position, the bytes past the end through
 * the mapping, and that the holes are still holes; PASS/FAIL.
 */
#include "tgt.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#define PG 4096

static void check_size(int fd, off_t want)
{
	struct stat st;

	if (fstat(fd, &st) || st.st_size != want)
		fail("fd %d: size %lld, not %lld", fd, (long long)st.st_size, (long long)want);
}

int main(void)
{
	char buf[32], *map;
	int a, b;
	off_t d;

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
	return verdict();
}
