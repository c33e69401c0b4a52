/*
 * forker: forks a short-lived child every 5 ms and reaps them, so a dump
 * always meets children being born, running, exiting and waiting to be
 * reaped (issue 4: "a task forking during the freeze is caught").  Each
 * child adds 1 to a shared counter before it exits with status 3.
 * Prints "forked N" every 100 children; SIGTERM: every child reaped had
 * status 3 and the shared counter equals the number reaped -> PASS.
 */
#include "tgt.h"
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>

int main(void)
{
	long *done = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	long forked = 0, reaped = 0;
	if (done == MAP_FAILED)
		die("mmap");
	tgt_catch_term();
	say("ready");
	while (!test_stop) {
		pid_t c = fork();
		if (c < 0)
			die("fork");
		if (c == 0) {
			struct timespec ts = { 0, 3000000 };
			nanosleep(&ts, NULL);
			__atomic_add_fetch(done, 1, __ATOMIC_SEQ_CST);
			_exit(3);
		}
		if (++forked % 100 == 0)
			say("forked %ld", forked);
		struct timespec ts = { 0, 5000000 };
		nanosleep(&ts, NULL);
		int status;
		pid_t p;
		while ((p = waitpid(-1, &status, WNOHANG)) > 0) {
			reaped++;
			if (!WIFEXITED(status) || WEXITSTATUS(status) != 3)
				fail("child %d ended with status %#x", p, status);
		}
	}
	int status;
	pid_t p;
	while ((p = waitpid(-1, &status, 0)) > 0) {
		reaped++;
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 3)
			fail("child %d ended with status %#x", p, status);
	}
	if (reaped != forked)
		fail("forked %ld, reaped %ld", forked, reaped);
	if (*done != reaped)
		fail("%ld children counted, %ld reaped", *done, reaped);
	return verdict();
}
