/*
 * seccomp_allow: installs a seccomp filter that allows everything (root
 * may, without no_new_privs), then counts like counter.c into FILE.
 * A dump and restore must keep the filter and the count going.
 */
#include "tgt.h"
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <time.h>

int main(int argc, char **argv)
{
	struct sock_filter allow[] = { BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW) };
	struct sock_fprog prog = { .len = 1, .filter = allow };
	char buf[32];
	if (argc < 2)
		return 2;
	int out = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (out < 0)
		die("open");
	if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog))
		die("seccomp");
	say("ready");
	for (unsigned long n = 1;; n++) {
		struct timespec ts = { 0, 50 * 1000 * 1000 };
		int k = snprintf(buf, sizeof(buf), "%lu\n", n);
		tgt_write_all(out, buf, k);
		nanosleep(&ts, NULL);
	}
}
