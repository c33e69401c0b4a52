/*
 * creds: runs with non-root, all-different ids and a few capabilities.
 *
 * Started as root, it sets groups {3001,3002,3003}, gids (2001,2002,2003),
 * keeps capabilities across setresuid(1001,1002,1003), then sets
 * permitted = effective = {CAP_KILL, CAP_NET_BIND_SERVICE} and
 * inheritable = {CAP_NET_BIND_SERVICE}, and a parent-death signal.  SIGTERM:
 * check that all of it (and keepcaps, dumpable) is unchanged, print
 * PASS/FAIL, exit.
 */
#include "tgt.h"

#include <grp.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

static const gid_t groups[] = { 3001, 3002, 3003 };

static int capget3(struct __user_cap_data_struct d[2])
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };

	return syscall(SYS_capget, &h, d);
}

static int capset3(struct __user_cap_data_struct d[2])
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };

	return syscall(SYS_capset, &h, d);
}

static void on_usr2(int sig)
{
	(void)sig;
}

int main(void)
{
	struct __user_cap_data_struct want[2], got[2];
	uid_t r, e, s;
	gid_t rg, eg, sg, gl[16];
	int n, dumpable;

	memset(want, 0, sizeof(want));
	want[0].permitted = want[0].effective =
		(1u << CAP_KILL) | (1u << CAP_NET_BIND_SERVICE);
	want[0].inheritable = 1u << CAP_NET_BIND_SERVICE;

	if (setgroups(3, groups))
		die("setgroups");
	if (setresgid(2001, 2002, 2003))
		die("setresgid");
	if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0))
		die("PR_SET_KEEPCAPS");
	if (setresuid(1001, 1002, 1003))
		die("setresuid");
	if (capset3(want))
		die("capset");
	dumpable = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
	/* After the id changes, which clear it (a restore must set it after its
	 * own).  Caught: the parent of a detached restore exits, which fires it. */
	signal(SIGUSR2, on_usr2);
	if (prctl(PR_SET_PDEATHSIG, SIGUSR2, 0, 0, 0))
		die("PR_SET_PDEATHSIG");

	tgt_catch_term();
	say("ready");
	while (!test_stop)
		pause();

	if (getresuid(&r, &e, &s) || r != 1001 || e != 1002 || s != 1003)
		fail("uids are %d %d %d, expected 1001 1002 1003", r, e, s);
	if (getresgid(&rg, &eg, &sg) || rg != 2001 || eg != 2002 || sg != 2003)
		fail("gids are %d %d %d, expected 2001 2002 2003", rg, eg, sg);
	n = getgroups(16, gl);
	if (n != 3 || gl[0] != 3001 || gl[1] != 3002 || gl[2] != 3003)
		fail("supplementary groups changed (%d of them)", n);
	memset(got, 0, sizeof(got));
	if (capget3(got))
		die("capget");
	for (n = 0; n < 2; n++)
		if (got[n].permitted != want[n].permitted ||
		    got[n].effective != want[n].effective ||
		    got[n].inheritable != want[n].inheritable)
			fail("capabilities word %d: prm %#x eff %#x inh %#x, expected %#x %#x %#x",
			     n, got[n].permitted, got[n].effective, got[n].inheritable,
			     want[n].permitted, want[n].effective, want[n].inheritable);
	if (prctl(PR_GET_KEEPCAPS, 0, 0, 0, 0) != 1)
		fail("keepcaps lost");
	if (prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != dumpable)
		fail("dumpable %d, was %d", prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), dumpable);
	if (prctl(PR_GET_PDEATHSIG, &n, 0, 0, 0) || n != SIGUSR2)
		fail("parent-death signal %d, expected %d", n, SIGUSR2);
	return verdict();
}
