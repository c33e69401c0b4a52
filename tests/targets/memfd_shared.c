/*
 * A sealed memfd, a memfd counter and a /dev/shm file shared by two
 * processes (issue 4).  The child increments both counters through its
 * MAP_SHARED mappings; the parent prints "count N" every 100 ms.  SIGTERM: check the sealed memfd's
 * contents, name, seals (write must fail), and that the child's increments
 * are still seen; print PASS/FAIL.
 */
#include "tgt.h"
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>

#define SEALS (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL)

int main(void)
{
	tgt_catch_term();
	int mfd = memfd_create("procsnap-sealed", MFD_ALLOW_SEALING);
	if (mfd < 0 || ftruncate(mfd, 3 * 4096))
		die("memfd");
	char *p = mmap(NULL, 3 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	if (p == MAP_FAILED)
		die("mmap");
	strcpy(p, "hello from memfd");
	strcpy(p + 2 * 4096, "last page");   /* the middle page stays a hole */
	munmap(p, 3 * 4096);
	if (fcntl(mfd, F_ADD_SEALS, SEALS))
		die("seal");
	char *ro = mmap(NULL, 3 * 4096, PROT_READ, MAP_SHARED, mfd, 0);
	int cfd = memfd_create("procsnap-counter", 0);
	if (cfd < 0 || ftruncate(cfd, 4096))
		die("memfd counter");
	volatile long *cnt = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, cfd, 0);
	if (ro == MAP_FAILED || cnt == MAP_FAILED)
		die("mmap 2");
	char shm_path[64];
	snprintf(shm_path, sizeof(shm_path), "/dev/shm/procsnap-test-%d", getpid());
	int sfd = open(shm_path, O_RDWR | O_CREAT | O_EXCL, 0600);
	if (sfd < 0 || ftruncate(sfd, 4096))
		die("%s", shm_path);
	volatile long *shm = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, sfd, 0);
	close(sfd);
	if (shm == MAP_FAILED)
		die("mmap %s", shm_path);
	pid_t c = fork();
	if (c == 0) {
		signal(SIGTERM, SIG_DFL);
		for (;;) {
			(*shm)++;
			(*cnt)++;
			struct timespec ts = { 0, 5000000 };
			nanosleep(&ts, NULL);
		}
	}
	say("ready");
	long last = -1;
	while (!test_stop) {
		say("count %ld", *cnt);
		struct timespec ts = { 0, 100000000 };
		nanosleep(&ts, NULL);
	}
	long now = *cnt;
	struct timespec ts = { 0, 50000000 };
	nanosleep(&ts, NULL);
	if (*cnt <= now)
		fail("the child's increments are not seen (%ld)", *cnt);
	long s1 = *shm;
	nanosleep(&ts, NULL);
	if (*shm <= s1)
		fail("the child's increments of %s are not seen", shm_path);
	unlink(shm_path);
	(void)last;
	if (strcmp(ro, "hello from memfd") || strcmp(ro + 2 * 4096, "last page"))
		fail("sealed memfd contents changed");
	for (int i = 0; i < 4096; i++)
		if (ro[4096 + i])
			fail("the hole is not zero at %d", i);
	if (fcntl(mfd, F_GET_SEALS) != SEALS)
		fail("seals are %#x, want %#x", fcntl(mfd, F_GET_SEALS), SEALS);
	if (write(mfd, "x", 1) >= 0)
		fail("write to a F_SEAL_WRITE memfd succeeded");
	char link[64], target[256];
	snprintf(link, sizeof(link), "/proc/self/fd/%d", mfd);
	ssize_t n = readlink(link, target, sizeof(target) - 1);
	target[n > 0 ? n : 0] = 0;
	if (!strstr(target, "memfd:procsnap-sealed"))
		fail("memfd name is %s", target);
	kill(c, SIGKILL);
	waitpid(c, NULL, 0);
	return verdict();
}
