/*
 * Shared bits of the procsnap test targets, after CRIU's zdtm lib:
 * a target prints "ready" on stdout when its state is set up, waits (or
 * works) until SIGTERM, then checks itself and prints "PASS" or
 * "FAIL: reason" and exits 0 or 1.  Everything goes through write(2) so no
 * stdio buffer can hide or duplicate output across a checkpoint.
 */
#ifndef PROCSNAP_TGT_H
#define PROCSNAP_TGT_H

#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t test_stop;
static int test_failed;

static void tgt_on_term(int sig)
{
	(void)sig;
	test_stop = 1;
}

/* SIGTERM = "check yourself and exit"; no SA_RESTART so sleeps end. */
__attribute__((unused))
static void tgt_catch_term(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = tgt_on_term;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTERM, &sa, NULL)) {
		perror("sigaction(SIGTERM)");
		exit(2);
	}
}

static void tgt_write_all(int fd, const char *buf, size_t len)
{
	while (len) {
		ssize_t n = write(fd, buf, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			exit(3);
		}
		buf += n;
		len -= n;
	}
}

/* One line on stdout (newline added). */
__attribute__((format(printf, 1, 2)))
static void say(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if (n > (int)sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	tgt_write_all(1, buf, n);
}

/* Record a failed self-check; the verdict becomes FAIL. */
#define fail(fmt, ...) do { \
		test_failed = 1; \
		say("FAIL: " fmt " (%s:%d)", ##__VA_ARGS__, __FILE__, __LINE__); \
	} while (0)

#define die(fmt, ...) do { \
		say("ERROR: " fmt ": %s", ##__VA_ARGS__, strerror(errno)); \
		exit(2); \
	} while (0)

__attribute__((unused))
static int verdict(void)
{
	if (test_failed)
		return 1;
	say("PASS");
	return 0;
}

/* Async-signal-safe decimal formatting for handlers. */
__attribute__((unused))
static size_t tgt_utoa(char *out, unsigned long v)
{
	char tmp[24];
	size_t n = 0, i;

	do {
		tmp[n++] = '0' + v % 10;
		v /= 10;
	} while (v);
	for (i = 0; i < n; i++)
		out[i] = tmp[n - 1 - i];
	return n;
}

#endif
