/*
 * evloop: an event loop over one epoll set, after CRIU's zdtm eventfs tests.
 *
 *   evloop
 *
 * The epoll set (fd 7) holds, each with its own u64 data tag:
 * - an eventfd (fd 3) with counter 42, EPOLLIN|EPOLLET: reported, never read;
 * - a semaphore eventfd (fd 4, EFD_SEMAPHORE|EFD_NONBLOCK) with counter 3,
 *   EPOLLOUT|EPOLLET;
 * - a periodic 50 ms CLOCK_MONOTONIC timerfd (fd 5), read on every event;
 * - a signalfd (fd 6) for SIGUSR1 (blocked), O_NONBLOCK.
 * Outside the set: an absolute CLOCK_REALTIME one-shot timerfd (fd 8) one
 * hour ahead, and an idle epoll (fd 9).
 *
 * Each SIGUSR1 read from the signalfd prints "usr1 N via signalfd" and
 * (re)starts the timer measurement; SIGTERM checks the counters, the
 * semaphore mode, the data tags seen, the timer period since the last
 * SIGUSR1 ("timer T ticks in M ms"), the absolute timer, then PASS/FAIL.
 */
#include "tgt.h"

#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <time.h>

#define TAG_EFD   0xE0E0E0E000000001ULL
#define TAG_SEM   0xE0E0E0E000000002ULL
#define TAG_TIMER 0xE0E0E0E000000003ULL
#define TAG_SIG   0xE0E0E0E000000004ULL
#define PERIOD_MS 50

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000ULL + ts.tv_nsec / 1000000;
}

static void put_at(int fd, int want)
{
	if (fd != want) {
		if (dup2(fd, want) != want)
			die("dup2 %d -> %d", fd, want);
		close(fd);
	}
}

static void add(int ep, int fd, uint32_t events, uint64_t tag)
{
	struct epoll_event ev = { .events = events, .data.u64 = tag };

	if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev))
		die("epoll_ctl(%d)", fd);
}

int main(void)
{
	uint64_t v, ticks = 0, mark_ticks = 0, mark_ms = 0, abs_expiry;
	unsigned long usr1 = 0, efd_events = 0, bad_tags = 0;
	struct itimerspec its = { { 0, PERIOD_MS * 1000000 }, { 0, PERIOD_MS * 1000000 } };
	struct itimerspec abs = { { 0, 0 }, { 0, 0 } }, cur;
	struct epoll_event evs[8];
	struct timespec rt;
	sigset_t usr1_set;
	int i, n;

	tgt_catch_term();
	close_range(3, ~0U, 0);	/* whatever a shell leaked to us */
	put_at(eventfd(42, 0), 3);
	put_at(eventfd(3, EFD_SEMAPHORE | EFD_NONBLOCK), 4);
	put_at(timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC), 5);
	sigemptyset(&usr1_set);
	sigaddset(&usr1_set, SIGUSR1);
	if (sigprocmask(SIG_BLOCK, &usr1_set, NULL))
		die("sigprocmask");
	put_at(signalfd(-1, &usr1_set, SFD_NONBLOCK), 6);
	put_at(epoll_create1(0), 7);
	put_at(timerfd_create(CLOCK_REALTIME, 0), 8);
	put_at(epoll_create1(EPOLL_CLOEXEC), 9);

	clock_gettime(CLOCK_REALTIME, &rt);
	abs_expiry = rt.tv_sec + 3600;
	abs.it_value.tv_sec = abs_expiry;
	if (timerfd_settime(8, TFD_TIMER_ABSTIME, &abs, NULL))
		die("timerfd_settime abs");
	if (timerfd_settime(5, 0, &its, NULL))
		die("timerfd_settime");
	add(7, 3, EPOLLIN | EPOLLET, TAG_EFD);
	add(7, 4, EPOLLOUT | EPOLLET, TAG_SEM);
	add(7, 5, EPOLLIN, TAG_TIMER);
	add(7, 6, EPOLLIN, TAG_SIG);
	mark_ms = now_ms();
	say("ready");

	while (!test_stop) {
		n = epoll_wait(7, evs, 8, 1000);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("epoll_wait");
		}
		for (i = 0; i < n; i++) {
			uint64_t tag = evs[i].data.u64;

			if (tag == TAG_TIMER) {
				if (read(5, &v, 8) == 8)
					ticks += v;
			} else if (tag == TAG_EFD) {
				efd_events++;
			} else if (tag == TAG_SIG) {
				struct signalfd_siginfo si;

				while (read(6, &si, sizeof(si)) == sizeof(si)) {
					if (si.ssi_signo != SIGUSR1)
						fail("signalfd gave signal %u", si.ssi_signo);
					usr1++;
					mark_ms = now_ms();
					mark_ticks = ticks;
					say("usr1 %lu via signalfd", usr1);
				}
			} else if (tag == TAG_SEM) {
				/* writable once: nothing to do */
			} else {
				bad_tags++;
			}
		}
	}

	{
		uint64_t ms = now_ms() - mark_ms, t = ticks - mark_ticks;

		say("timer %llu ticks in %llu ms", (unsigned long long)t,
		    (unsigned long long)ms);
		if (t * PERIOD_MS > ms + 2 * PERIOD_MS || t * PERIOD_MS + 3 * PERIOD_MS < ms)
			fail("timer: %llu ticks in %llu ms, period %d ms",
			     (unsigned long long)t, (unsigned long long)ms, PERIOD_MS);
	}
	if (bad_tags)
		fail("%lu events with an unknown data tag", bad_tags);
	if (!efd_events)
		fail("eventfd never reported");
	if (read(3, &v, 8) != 8 || v != 42)
		fail("eventfd counter %llu, want 42", (unsigned long long)v);
	for (i = 0; i < 3; i++)
		if (read(4, &v, 8) != 8 || v != 1)
			fail("semaphore read %d gave %llu", i, (unsigned long long)v);
	if (read(4, &v, 8) != -1 || errno != EAGAIN)
		fail("semaphore eventfd not empty after 3 reads");
	if (timerfd_gettime(8, &cur))
		fail("timerfd_gettime: %s", strerror(errno));
	clock_gettime(CLOCK_REALTIME, &rt);
	/*
	 * Still armed about an hour ahead.  Not exactly at abs_expiry: the
	 * image holds the time left (CRIU's format has no dump timestamp), so
	 * the time spent dumped moves the deadline later, never earlier.
	 */
	if (cur.it_value.tv_sec + rt.tv_sec + 1 < (time_t)abs_expiry ||
	    cur.it_value.tv_sec + rt.tv_sec > (time_t)abs_expiry + 60)
		fail("absolute timer: %ld s left, expiry was %llu, now %ld",
		     (long)cur.it_value.tv_sec, (unsigned long long)abs_expiry, (long)rt.tv_sec);
	return verdict();
}
