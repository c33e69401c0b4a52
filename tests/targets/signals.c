/*
 * signals: handlers, masks, pending signals and the alternate stack.
 *
 *   signals [expect-pending]
 *
 * - SIGUSR1: SA_SIGINFO|SA_RESTART|SA_ONSTACK handler with SIGWINCH in its
 *   sa_mask; each delivery prints "usr1 N altstack" where N counts them,
 *   or "FAIL: ..." if it did not run on the alternate stack.
 * - SIGUSR2 and SIGRTMIN are blocked (handlers installed, so a delivery
 *   after unblocking is counted); SIGHUP is ignored.
 * - SIGTERM: check that the handlers, flags, sa_mask, blocked mask, ignored
 *   SIGHUP and sigaltstack are as set up.  With "expect-pending": also that
 *   SIGUSR2 and SIGRTMIN are pending; then unblock them and check that
 *   exactly one SIGUSR2 and two SIGRTMIN (queued: the harness sends two)
 *   are delivered.  Print PASS/FAIL.
 */
#include "tgt.h"

#define ALTSTACK_SIZE (64 * 1024)

static char altstack[ALTSTACK_SIZE] __attribute__((aligned(16)));
static volatile sig_atomic_t usr1_count, usr2_count, rtmin_count;

static void on_usr1(int sig, siginfo_t *si, void *uc)
{
	char here, buf[64];
	size_t n = 0;
	int on_alt = &here >= altstack && &here < altstack + ALTSTACK_SIZE;

	(void)uc;
	usr1_count++;
	if (!on_alt || sig != SIGUSR1 || si->si_signo != SIGUSR1) {
		static const char msg[] = "FAIL: usr1 handler not on altstack or bad siginfo\n";

		tgt_write_all(1, msg, sizeof(msg) - 1);
		return;
	}
	memcpy(buf, "usr1 ", 5);
	n = 5;
	n += tgt_utoa(buf + n, usr1_count);
	memcpy(buf + n, " altstack\n", 10);
	n += 10;
	tgt_write_all(1, buf, n);
}

static void on_other(int sig, siginfo_t *si, void *uc)
{
	(void)si;
	(void)uc;
	if (sig == SIGUSR2)
		usr2_count++;
	else if (sig == SIGRTMIN)
		rtmin_count++;
}

static void install(int sig, void (*fn)(int, siginfo_t *, void *), int flags,
		    int extra_mask)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = fn;
	sa.sa_flags = SA_SIGINFO | flags;
	sigemptyset(&sa.sa_mask);
	if (extra_mask)
		sigaddset(&sa.sa_mask, extra_mask);
	if (sigaction(sig, &sa, NULL))
		die("sigaction(%d)", sig);
}

int main(int argc, char **argv)
{
	int expect_pending = argc > 1 && !strcmp(argv[1], "expect-pending");
	struct sigaction cur;
	sigset_t block, now, pend;
	stack_t ss, oss;

	ss.ss_sp = altstack;
	ss.ss_size = ALTSTACK_SIZE;
	ss.ss_flags = 0;
	if (sigaltstack(&ss, NULL))
		die("sigaltstack");

	install(SIGUSR1, on_usr1, SA_RESTART | SA_ONSTACK, SIGWINCH);
	install(SIGUSR2, on_other, 0, 0);
	install(SIGRTMIN, on_other, 0, 0);
	signal(SIGHUP, SIG_IGN);
	tgt_catch_term();

	sigemptyset(&block);
	sigaddset(&block, SIGUSR2);
	sigaddset(&block, SIGRTMIN);
	if (sigprocmask(SIG_BLOCK, &block, NULL))
		die("sigprocmask");

	say("ready");
	while (!test_stop)
		pause();

	/* handlers and flags */
	sigaction(SIGUSR1, NULL, &cur);
	if (cur.sa_sigaction != on_usr1)
		fail("SIGUSR1 handler is %p, expected %p", (void *)cur.sa_sigaction, (void *)on_usr1);
	if ((cur.sa_flags & (SA_SIGINFO | SA_RESTART | SA_ONSTACK)) !=
	    (SA_SIGINFO | SA_RESTART | SA_ONSTACK))
		fail("SIGUSR1 sa_flags %#x", cur.sa_flags);
	if (!sigismember(&cur.sa_mask, SIGWINCH) || sigismember(&cur.sa_mask, SIGINT))
		fail("SIGUSR1 sa_mask changed");
	sigaction(SIGRTMIN, NULL, &cur);
	if (cur.sa_sigaction != on_other || (cur.sa_flags & SA_RESTART))
		fail("SIGRTMIN action changed");
	sigaction(SIGHUP, NULL, &cur);
	if (cur.sa_handler != SIG_IGN)
		fail("SIGHUP no longer ignored");

	/* alternate stack */
	if (sigaltstack(NULL, &oss))
		die("sigaltstack query");
	if (oss.ss_sp != altstack || oss.ss_size != ALTSTACK_SIZE || (oss.ss_flags & SS_DISABLE))
		fail("sigaltstack is sp=%p size=%zu flags=%#x, expected sp=%p size=%d",
		     oss.ss_sp, oss.ss_size, oss.ss_flags, (void *)altstack, ALTSTACK_SIZE);

	/* blocked mask */
	sigprocmask(SIG_BLOCK, NULL, &now);
	if (!sigismember(&now, SIGUSR2) || !sigismember(&now, SIGRTMIN))
		fail("SIGUSR2/SIGRTMIN no longer blocked");
	if (sigismember(&now, SIGUSR1) || sigismember(&now, SIGTERM))
		fail("SIGUSR1/SIGTERM became blocked");

	/* pending signals */
	sigpending(&pend);
	if (expect_pending) {
		if (!sigismember(&pend, SIGUSR2))
			fail("SIGUSR2 no longer pending");
		if (!sigismember(&pend, SIGRTMIN))
			fail("SIGRTMIN no longer pending");
		sigprocmask(SIG_UNBLOCK, &block, NULL);
		/* unblocked pending signals are delivered before sigprocmask returns */
		if (usr2_count != 1)
			fail("SIGUSR2 delivered %d times after unblock, expected 1", usr2_count);
		if (rtmin_count != 2)
			fail("SIGRTMIN delivered %d times after unblock, expected 2 (queued)", rtmin_count);
	} else if (sigismember(&pend, SIGUSR2) || sigismember(&pend, SIGRTMIN)) {
		fail("unexpected pending signals");
	}
	say("usr1 total %d", usr1_count);
	return verdict();
}
