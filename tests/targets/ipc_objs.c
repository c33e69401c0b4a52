/*
 * System V IPC and POSIX message queues (issue 9).
 *
 *   ipc_objs ns   - unshare(CLONE_NEWIPC) first: a shm segment with data on
 *                   pages 0 and 2 (page 1 never touched), attached twice
 *                   (read-write and SHM_RDONLY), an unattached IPC_PRIVATE
 *                   segment with data, a semaphore set with values, a
 *                   message queue with 5 messages, a POSIX queue with 3
 *                   messages of different priorities (closed), sysctls
 *                   changed (msgmnb, shm_next_id);
 *   ipc_objs host KEY - in the host's namespace: one segment of key KEY,
 *                   attached, with data.
 * Prints "ids SHM SEM MSG PRIV" then "ready"; counts while it waits; on
 * SIGTERM checks every object from inside and prints PASS or FAIL.
 */
#include "tgt.h"

#include <fcntl.h>
#include <mqueue.h>
#include <sched.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>

#define PG 4096
#define SEGSZ (3 * PG + 100)

static const unsigned short semvals[4] = { 3, 0, 7, 42 };

struct mbuf {
	long mtype;
	char text[64];
};

static void put_sysctl(const char *path, const char *val)
{
	int fd = open(path, O_WRONLY);

	if (fd < 0 || write(fd, val, strlen(val)) < 0) {
		say("FAIL: write %s: %s", path, strerror(errno));
		exit(2);
	}
	close(fd);
}

static long get_sysctl(const char *path)
{
	char buf[64] = "";
	int fd = open(path, O_RDONLY);

	if (fd < 0 || read(fd, buf, sizeof(buf) - 1) < 0)
		return -2;
	close(fd);
	return atol(buf);
}

static void fill(char *p)
{
	memset(p, 'A', PG);
	memset(p + 2 * PG, 'C', 100);
	memcpy(p + 3 * PG, "tail-of-segment", 16); /* inside the last, short page */
}

static void check_data(const char *p, const char *what)
{
	int i;

	for (i = 0; i < PG; i++)
		if (p[i] != 'A') {
			fail("%s: byte %d is %d", what, i, p[i]);
			return;
		}
	for (i = PG; i < 2 * PG; i++)
		if (p[i]) {
			fail("%s: untouched page has byte %d = %d", what, i, p[i]);
			return;
		}
	for (i = 2 * PG; i < 2 * PG + 100; i++)
		if (p[i] != 'C') {
			fail("%s: byte %d is %d", what, i, p[i]);
			return;
		}
	if (memcmp(p + 3 * PG, "tail-of-segment", 16))
		fail("%s: tail lost", what);
}

int main(int argc, char **argv)
{
	int ns = argc > 1 && !strcmp(argv[1], "ns");
	key_t key = ns ? 0x5eed0001 : (key_t)strtoul(argc > 2 ? argv[2] : "0", NULL, 0);
	int shm, sem = -1, msg = -1, priv = -1, i;
	char *rw, *ro = NULL, *pp = NULL;
	mqd_t mq;
	struct shmid_ds ds;
	unsigned long n = 0;

	tgt_catch_term();
	if (ns) {
		if (unshare(CLONE_NEWIPC)) {
			say("FAIL: unshare: %s", strerror(errno));
			return 2;
		}
		put_sysctl("/proc/sys/kernel/msgmnb", "20000");
		put_sysctl("/proc/sys/kernel/shm_next_id", "4242");
	}
	shm = shmget(key, SEGSZ, IPC_CREAT | IPC_EXCL | 0640);
	if (shm < 0) {
		say("FAIL: shmget: %s", strerror(errno));
		return 2;
	}
	rw = shmat(shm, NULL, 0);
	if (rw == (void *)-1) {
		say("FAIL: shmat: %s", strerror(errno));
		return 2;
	}
	fill(rw);
	if (ns) {
		ro = shmat(shm, NULL, SHM_RDONLY);
		priv = shmget(IPC_PRIVATE, 2 * PG, 0600);
		pp = shmat(priv, NULL, 0);
		strcpy(pp + PG, "private data");
		shmdt(pp);
		sem = semget(0x5eed0002, 4, IPC_CREAT | 0600);
		if (semctl(sem, 0, SETALL, semvals))
			say("FAIL: SETALL: %s", strerror(errno));
		msg = msgget(0x5eed0003, IPC_CREAT | 0620);
		for (i = 1; i <= 5; i++) {
			struct mbuf m = { .mtype = i * 10 };

			snprintf(m.text, sizeof(m.text), "message %d of 5", i);
			if (msgsnd(msg, &m, strlen(m.text) + 1, 0))
				say("FAIL: msgsnd: %s", strerror(errno));
		}
		struct mq_attr at = { .mq_maxmsg = 8, .mq_msgsize = 128 };
		mq = mq_open("/procsnap-q", O_CREAT | O_EXCL | O_RDWR, 0640, &at);
		if (mq < 0) {
			say("FAIL: mq_open: %s", strerror(errno));
			return 2;
		}
		mq_send(mq, "low", 4, 1);
		mq_send(mq, "high", 5, 9);
		mq_send(mq, "low2", 5, 1);
		mq_close(mq);
	}
	say("ids %d %d %d %d", shm, sem, msg, priv);
	say("ready");
	while (!test_stop) {
		n++;
		usleep(10000);
	}

	check_data(rw, "read-write attachment");
	if (ro) {
		check_data(ro, "read-only attachment");
		rw[5000] = 'Z';
		if (ro[5000] != 'Z')
			fail("the two attachments are not one segment");
		rw[5000] = 0;
	}
	if (shmctl(shm, IPC_STAT, &ds))
		fail("IPC_STAT: %s", strerror(errno));
	else if (ds.shm_perm.__key != key || ds.shm_segsz != SEGSZ || (ds.shm_perm.mode & 0777) != 0640
		 || ds.shm_nattch != (ns ? 2 : 1))
		fail("segment: key %x size %zu mode %o nattch %lu", ds.shm_perm.__key, ds.shm_segsz,
		     ds.shm_perm.mode, ds.shm_nattch);
	if (ns) {
		unsigned short got[4];
		struct mbuf m;
		char buf[128];
		unsigned prio;

		pp = shmat(priv, NULL, SHM_RDONLY);
		if (pp == (void *)-1 || strcmp(pp + PG, "private data"))
			fail("unattached private segment lost its data");
		if (semctl(sem, 0, GETALL, got) || memcmp(got, semvals, sizeof(got)))
			fail("semaphore values %d %d %d %d", got[0], got[1], got[2], got[3]);
		for (i = 1; i <= 5; i++) {
			char want[64];

			snprintf(want, sizeof(want), "message %d of 5", i);
			if (msgrcv(msg, &m, sizeof(m.text), 0, IPC_NOWAIT) < 0) {
				fail("message %d: %s", i, strerror(errno));
				break;
			}
			if (m.mtype != i * 10 || strcmp(m.text, want))
				fail("message %d: type %ld '%s'", i, m.mtype, m.text);
		}
		if (get_sysctl("/proc/sys/kernel/msgmnb") != 20000)
			fail("msgmnb %ld", get_sysctl("/proc/sys/kernel/msgmnb"));
		mq = mq_open("/procsnap-q", O_RDONLY | O_NONBLOCK);
		if (mq < 0) {
			fail("mq_open: %s", strerror(errno));
		} else {
			const char *want[] = { "high", "low", "low2" };
			const unsigned wprio[] = { 9, 1, 1 };

			for (i = 0; i < 3; i++) {
				if (mq_receive(mq, buf, sizeof(buf), &prio) < 0) {
					fail("mq_receive %d: %s", i, strerror(errno));
					break;
				}
				if (strcmp(buf, want[i]) || prio != wprio[i])
					fail("mqueue message %d: '%s' prio %u", i, buf, prio);
			}
		}
	} else {
		shmctl(shm, IPC_RMID, NULL);
	}
	say("counted %lu", n);
	return verdict();
}
