/*
 * taskstate: task attributes that once came back wrong without a word
 * (zdtm sched_policy00, loginuid, thp_disable, membarrier, sigpending,
 * sigtrap01), all in one process:
 *   - SCHED_RR | SCHED_RESET_ON_FORK, priority 3, on the leader; a second
 *     thread under SCHED_IDLE;
 *   - loginuid 4242;
 *   - PR_SET_THP_DISABLE;
 *   - membarrier registered GLOBAL_EXPEDITED and PRIVATE_EXPEDITED;
 *   - a SIGTRAP handler (not blocked);
 *   - pending and blocked: the SIGCHLD of a zombie child that exited 5
 *     (kept with WNOWAIT), and three SIGRTMIN queued with si_code -10..-12
 *     and a payload each.
 *   - CPU affinity: the leader on CPU 0 only, the thread on CPU 1 only
 *     (CPU 0 if there is one CPU);
 *   - timer slack 2 ms in the thread (the RT leader's is 0);
 *   - NUMA policy: MPOL_PREFERRED node 0 in the leader, MPOL_BIND with
 *     MPOL_F_STATIC_NODES node 0 in the thread;
 *   - personality ADDR_NO_RANDOMIZE added to what it had.
 * Prints "ready"; on SIGTERM checks every item from inside; PASS/FAIL.
 */
#include "tgt.h"

#include <fcntl.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>

#ifndef SCHED_RESET_ON_FORK
#define SCHED_RESET_ON_FORK 0x40000000
#endif
#define GET_REGISTRATIONS (1 << 9)
#define WANT_REGS (MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED | \
		   MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED)

static volatile sig_atomic_t traps;
static pid_t child;
static pid_t idle_tid;
static volatile int idle_stop;

static void on_trap(int sig)
{
	(void)sig;
	traps++;
}

#define MPOL_PREFERRED 1
#define MPOL_BIND 2
#define MPOL_F_STATIC_NODES (1 << 15)

static int thread_cpu(void)
{
	return sysconf(_SC_NPROCESSORS_ONLN) > 1;
}

static void pin(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set))
		die("sched_setaffinity");
}

static int pinned_to(int cpu)
{
	cpu_set_t set;

	return !sched_getaffinity(0, sizeof(set), &set) && CPU_COUNT(&set) == 1 &&
	       CPU_ISSET(cpu, &set);
}

static int policy_is(int want_mode, unsigned long want_nodes)
{
	int mode = -1;
	unsigned long nodes[16] = { 0 };

	if (syscall(SYS_get_mempolicy, &mode, nodes, 1024, 0, 0))
		return 0;
	return mode == want_mode && nodes[0] == want_nodes;
}

static char idle_why[128];

static void *idle_thread(void *arg)
{
	struct sched_param p = { 0 };
	unsigned long node0 = 1;

	(void)arg;
	if (sched_setscheduler(0, SCHED_IDLE, &p))
		die("SCHED_IDLE");
	pin(thread_cpu());
	if (prctl(PR_SET_TIMERSLACK, 2000000, 0, 0, 0))
		die("PR_SET_TIMERSLACK");
	if (syscall(SYS_set_mempolicy, MPOL_BIND | MPOL_F_STATIC_NODES, &node0, 64))
		die("set_mempolicy");
	idle_tid = syscall(SYS_gettid);
	while (!idle_stop)
		usleep(10000);
	if (!pinned_to(thread_cpu()))
		snprintf(idle_why, sizeof(idle_why), "thread affinity lost");
	else if (prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0) != 2000000)
		snprintf(idle_why, sizeof(idle_why), "thread timer slack %d, want 2000000",
			 prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0));
	else if (!policy_is(MPOL_BIND | MPOL_F_STATIC_NODES, 1))
		snprintf(idle_why, sizeof(idle_why), "thread NUMA policy lost");
	return NULL;
}

static int read_loginuid(void)
{
	char buf[32] = "";
	int fd = open("/proc/self/loginuid", O_RDONLY);

	if (fd < 0 || read(fd, buf, sizeof(buf) - 1) < 0)
		die("read loginuid");
	close(fd);
	return (int)strtoul(buf, NULL, 10);
}

static void queue_rt(int n, siginfo_t *info)
{
	memset(info, 0, sizeof(*info));
	info->si_signo = SIGRTMIN;
	info->si_code = -10 - n;
	info->si_pid = 1000 + n;
	info->si_uid = 2000 + n;
	info->si_value.sival_int = 0x5a5a0000 + n;
	if (syscall(SYS_rt_sigqueueinfo, getpid(), SIGRTMIN, info))
		die("rt_sigqueueinfo");
}

int main(void)
{
	struct sched_param p = { .sched_priority = 3 };
	struct sigaction sa;
	siginfo_t sent[3], got;
	struct timespec zero = { 0, 0 };
	sigset_t block;
	pthread_t th;
	int fd, i, pers;

	/* blocked in every thread: the queued signals stay pending */
	sigemptyset(&block);
	sigaddset(&block, SIGCHLD);
	sigaddset(&block, SIGRTMIN);
	if (sigprocmask(SIG_BLOCK, &block, NULL))
		die("sigprocmask");
	{
		unsigned long node0 = 1;

		if (syscall(SYS_set_mempolicy, MPOL_PREFERRED, &node0, 64))
			die("set_mempolicy");
	}
	pers = personality(0xffffffff) | ADDR_NO_RANDOMIZE;
	if (personality(pers) < 0)
		die("personality");
	pin(0);
	if (sched_setscheduler(0, SCHED_RR | SCHED_RESET_ON_FORK, &p))
		die("sched_setscheduler");
	/* before the thread: loginuid is per task, inherited at clone */
	fd = open("/proc/self/loginuid", O_WRONLY);
	if (fd < 0 || write(fd, "4242", 4) != 4)
		die("write loginuid");
	close(fd);
	if (pthread_create(&th, NULL, idle_thread, NULL))
		die("pthread_create");
	if (prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0))
		die("PR_SET_THP_DISABLE");
	if (syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED, 0, 0) ||
	    syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0))
		die("membarrier register");
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_trap;
	if (sigaction(SIGTRAP, &sa, NULL))
		die("sigaction SIGTRAP");

	child = fork();
	if (child < 0)
		die("fork");
	if (child == 0)
		_exit(5);
	if (waitid(P_PID, child, &got, WEXITED | WNOWAIT))
		die("waitid");
	for (i = 0; i < 3; i++)
		queue_rt(i, &sent[i]);
	while (!idle_tid)
		usleep(1000);

	tgt_catch_term();
	say("ready");
	while (!test_stop)
		pause();

	if (sched_getscheduler(0) != (SCHED_RR | SCHED_RESET_ON_FORK))
		fail("policy %d, want SCHED_RR|SCHED_RESET_ON_FORK", sched_getscheduler(0));
	if (sched_getparam(0, &p) || p.sched_priority != 3)
		fail("rt priority %d, want 3", p.sched_priority);
	if (sched_getscheduler(idle_tid) != SCHED_IDLE)
		fail("thread %d policy %d, want SCHED_IDLE", idle_tid, sched_getscheduler(idle_tid));
	if (read_loginuid() != 4242)
		fail("loginuid %d, want 4242", read_loginuid());
	if (prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) != 1)
		fail("THP disable %d, want 1", prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0));
	i = syscall(SYS_membarrier, GET_REGISTRATIONS, 0, 0);
	if ((i & WANT_REGS) != WANT_REGS)
		fail("membarrier registrations %#x, want %#x", i, WANT_REGS);
	if (syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0))
		fail("membarrier(PRIVATE_EXPEDITED): %s", strerror(errno));
	if (sigaction(SIGTRAP, NULL, &sa) || sa.sa_handler != on_trap)
		fail("SIGTRAP handler lost");
	raise(SIGTRAP);
	if (traps != 1)
		fail("SIGTRAP handler ran %d times, want 1", (int)traps);
	if (sigtimedwait(&block, &got, &zero) != SIGCHLD)
		fail("no pending SIGCHLD first: %s", strerror(errno));
	else if (got.si_code != CLD_EXITED || got.si_pid != child || got.si_status != 5)
		fail("SIGCHLD siginfo code %d pid %d status %d, want %d %d 5",
		     got.si_code, got.si_pid, got.si_status, CLD_EXITED, child);
	for (i = 0; i < 3; i++) {
		if (sigtimedwait(&block, &got, &zero) != SIGRTMIN) {
			fail("SIGRTMIN %d not pending", i);
			break;
		}
		if (got.si_code != sent[i].si_code || got.si_pid != sent[i].si_pid ||
		    got.si_uid != sent[i].si_uid ||
		    got.si_value.sival_int != sent[i].si_value.sival_int)
			fail("SIGRTMIN %d siginfo differs (code %d pid %d uid %d value %#x)", i,
			     got.si_code, got.si_pid, got.si_uid, got.si_value.sival_int);
	}
	if (sigtimedwait(&block, &got, &zero) > 0)
		fail("an extra pending signal %d (code %d)", got.si_signo, got.si_code);
	if (personality(0xffffffff) != pers)
		fail("personality %#x, want %#x", personality(0xffffffff), pers);
	if (!pinned_to(0))
		fail("leader affinity lost");
	if (!policy_is(MPOL_PREFERRED, 1))
		fail("leader NUMA policy lost");
	idle_stop = 1;
	pthread_join(th, NULL);
	if (idle_why[0])
		fail("%s", idle_why);
	return verdict();
}
