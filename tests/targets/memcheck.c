/*
 * memcheck [MIB [UID]]: memory of every shape the page copy must get right, each
 * filled with a known pattern and checked on SIGTERM (PASS/FAIL):
 *
 *  - MIB MiB (default 256) of touched anonymous memory (one big run);
 *  - a 64 MiB mapping with every 7th page touched (many small runs, the
 *    untouched pages must still read as zero);
 *  - a mapping with a hole punched in the middle (munmap);
 *  - a PROT_NONE mapping holding data (the target cannot read it itself);
 *  - a read-only mapping holding data;
 *  - a MAP_PRIVATE file mapping with some pages written (private copies
 *    saved, the rest still the file's);
 *  - two read-only views of that file side by side, the file's second
 *    quarter before its first (alike but for their offsets: the restore
 *    may map neighbours in one call only where the offsets follow on).
 *
 * With UID, it drops to that uid/gid once set up: it can then not open a
 * root-owned image itself, so the dump copies its pages the slow way.
 */
#include "tgt.h"
#include "pattern.h"

#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>

#define SPARSE_PAGES (64UL << 20) / PAGE
#define HOLE_PAGES 64
#define FILE_PAGES 16

int main(int argc, char **argv)
{
	size_t big_bytes = (size_t)strtoul(argc > 1 ? argv[1] : "256", NULL, 10) << 20;
	char *big, *sparse, *holed, *none, *ro, *fmap, *views;
	char path[] = "memcheck.data";
	int fd;

	big = map_anon(big_bytes);
	fill(big, big_bytes, 1);

	sparse = map_anon(SPARSE_PAGES * PAGE);
	for (size_t i = 0; i < SPARSE_PAGES; i += 7)
		fill(sparse + i * PAGE, PAGE, 100 + i);

	holed = map_anon(3 * HOLE_PAGES * PAGE);
	fill(holed, HOLE_PAGES * PAGE, 3);
	fill(holed + 2 * HOLE_PAGES * PAGE, HOLE_PAGES * PAGE, 6);
	if (munmap(holed + HOLE_PAGES * PAGE, HOLE_PAGES * PAGE))
		die("munmap");

	none = map_anon(8 * PAGE);
	fill(none, 8 * PAGE, 4);
	if (mprotect(none, 8 * PAGE, PROT_NONE))
		die("mprotect none");

	ro = map_anon(8 * PAGE);
	fill(ro, 8 * PAGE, 5);
	if (mprotect(ro, 8 * PAGE, PROT_READ))
		die("mprotect ro");

	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
		die("open");
	for (int i = 0; i < FILE_PAGES; i++) {
		static char page[PAGE];

		fill(page, PAGE, 200 + i);
		if (write(fd, page, PAGE) != (ssize_t)PAGE)
			die("write");
	}
	fmap = mmap(NULL, FILE_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	if (fmap == MAP_FAILED)
		die("mmap file");
	views = map_anon(FILE_PAGES / 2 * PAGE);
	if (mmap(views, FILE_PAGES / 4 * PAGE, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd,
		 FILE_PAGES / 4 * PAGE) != views ||
	    mmap(views + FILE_PAGES / 4 * PAGE, FILE_PAGES / 4 * PAGE, PROT_READ,
		 MAP_PRIVATE | MAP_FIXED, fd, 0) != views + FILE_PAGES / 4 * PAGE)
		die("mmap file views");
	close(fd);
	for (int i = 0; i < FILE_PAGES; i += 2)   /* private copies of even pages */
		fill(fmap + i * PAGE, PAGE, 300 + i);

	if (argc > 2) {
		uid_t uid = (uid_t)strtoul(argv[2], NULL, 10);

		if (setresgid(uid, uid, uid) || setresuid(uid, uid, uid))
			die("setresuid");
	}
	tgt_catch_term();
	say("ready");
	while (!test_stop)
		pause();

	check_fill(big, big_bytes, 1, "big mapping");
	for (size_t i = 0; i < SPARSE_PAGES; i++) {
		if (i % 7 == 0) {
			check_fill(sparse + i * PAGE, PAGE, 100 + i, "sparse page");
		} else {
			check_zero(sparse + i * PAGE, PAGE, "untouched sparse page");
		}
	}
	check_fill(holed, HOLE_PAGES * PAGE, 3, "before the hole");
	check_fill(holed + 2 * HOLE_PAGES * PAGE, HOLE_PAGES * PAGE, 6, "after the hole");
	/* The hole must still be a hole: mapping it without REPLACE works. */
	if (mmap(holed + HOLE_PAGES * PAGE, PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS |
		 MAP_FIXED_NOREPLACE, -1, 0) != holed + HOLE_PAGES * PAGE)
		fail("the hole at %p is mapped", holed + HOLE_PAGES * PAGE);
	if (mprotect(none, 8 * PAGE, PROT_READ))
		die("mprotect");
	check_fill(none, 8 * PAGE, 4, "PROT_NONE mapping");
	check_fill(ro, 8 * PAGE, 5, "read-only mapping");
	for (int i = 0; i < FILE_PAGES; i++)
		check_fill(fmap + i * PAGE, PAGE, (i % 2 ? 200 : 300) + i, "file mapping page");
	for (int i = 0; i < FILE_PAGES / 2; i++)
		check_fill(views + i * PAGE, PAGE, 200 + (i + FILE_PAGES / 4) % (FILE_PAGES / 2),
			   "file view page");
	return verdict();
}
