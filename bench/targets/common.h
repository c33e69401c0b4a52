/*
 * Shared bits of the bench targets: set up state, print "ready" on stdout
 * (write(2), no stdio buffer to duplicate across a checkpoint), then sleep
 * until killed.  The bench only measures; correctness checks live in
 * tests/integration/.
 */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

__attribute__((unused))
static void ready(void)
{
	static const char msg[] = "ready\n";

	if (write(1, msg, sizeof(msg) - 1) < 0)
		_exit(3);
}

__attribute__((unused))
static void die(const char *what)
{
	perror(what);
	_exit(2);
}

/* Sleep forever; the bench kills us (nanosleep restarts after a restore). */
__attribute__((unused))
static void idle(void)
{
	for (;;)
		sleep(3600);
}
#endif
