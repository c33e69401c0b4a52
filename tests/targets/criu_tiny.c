/* procsnap-cflags: -static -nostdlib -fno-stack-protector -fno-builtin -fno-pie -no-pie
 *
 * criu_tiny MODE: the smallest targets both procsnap and CRIU dump, for the
 * CRIU-written fixtures (tests/fixtures/criu-4.2) and the live interop test.
 * No libc: a static binary of raw syscalls, so its images hold a page or
 * two of stack and data and nothing else (a few KiB a process).
 *
 * Every mode prints "ready" on stdout when its state is set up, appends a
 * line "tick N" to stdout every 50 ms (it runs on after a restore) and on
 * SIGTERM checks its state, prints PASS or "FAIL: what" and exits 0 or 1.
 *
 *   counter   only the ticks
 *   tree      3 processes: a pipe holding "pipe-data" unread, a unix
 *             socketpair holding "to-child" and "to-parent" unread in each
 *             direction, shared by a child; a second child holds a pipe end
 *   ghost     an open file, unlinked, holding "ghost-content" at offset 3
 *   tcp       a listener on 127.0.0.1:PORT (argv[2]), a client connected to
 *             it and the accepted end, "c2s" and "s2c" queued unread
 *   shmem     shared anonymous memory (3 pages) opened through
 *             /proc/self/map_files and mapped again privately, the private
 *             mapping's second page written (its own copy); the untouched
 *             pages must keep following the object (zdtm shmemfd-priv)
 *   ns        the ticks, run as pid 1 of new namespaces (the caller does
 *             that) with hostname "tiny-ns", and a pipe whose SIGIO owner
 *             (F_SETOWN) is itself: pid 1 inside
 */
#define SYS_read 0
#define SYS_write 1
#define SYS_open 2
#define SYS_close 3
#define SYS_lseek 8
#define SYS_rt_sigaction 13
#define SYS_pread64 17
#define SYS_pwrite64 18
#define SYS_mmap 9
#define SYS_pipe 22
#define SYS_nanosleep 35
#define SYS_socket 41
#define SYS_connect 42
#define SYS_accept 43
#define SYS_sendto 44
#define SYS_recvfrom 45
#define SYS_bind 49
#define SYS_listen 50
#define SYS_socketpair 53
#define SYS_setsockopt 54
#define SYS_fcntl 72
#define SYS_fork 57
#define SYS_exit 60
#define SYS_kill 62
#define SYS_unlink 87
#define SYS_getpid 39
#define SYS_getppid 110
#define SYS_sethostname 170
#define SYS_exit_group 231

static long sc(long n, long a, long b, long c, long d, long e, long f)
{
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	register long r9 __asm__("r9") = f;
	long ret;

	__asm__ volatile("syscall" : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return ret;
}
#define sc3(n, a, b, c) sc(n, (long)(a), (long)(b), (long)(c), 0, 0, 0)

__asm__(".text\n.global _start\n_start:\n"
	"  mov %rsp, %rdi\n  and $-16, %rsp\n  call cmain\n  hlt\n"
	".global sig_restorer\nsig_restorer:\n  mov $15, %eax\n  syscall\n");
void sig_restorer(void);

static volatile int terminated;
static long ticks;

static unsigned long slen(const char *s)
{
	unsigned long n = 0;

	while (s[n])
		n++;
	return n;
}

static int same(const char *a, const char *b, long n)
{
	for (long i = 0; i < n; i++)
		if (a[i] != b[i])
			return 0;
	return 1;
}

static void say(const char *s)
{
	sc3(SYS_write, 1, s, slen(s));
}

static void say_num(const char *pre, long v)
{
	char buf[48];
	int i = sizeof(buf);

	buf[--i] = '\n';
	do {
		buf[--i] = '0' + v % 10;
		v /= 10;
	} while (v);
	for (long k = slen(pre); k; k--)
		buf[--i] = pre[k - 1];
	sc3(SYS_write, 1, buf + i, sizeof(buf) - i);
}

static void die(const char *what)
{
	say("FAIL: ");
	say(what);
	say("\n");
	sc3(SYS_exit_group, 1, 0, 0);
}

static void on_term(int sig)
{
	(void)sig;
	terminated = 1;
}

struct ksigaction {
	void (*handler)(int);
	unsigned long flags;
	void (*restorer)(void);
	unsigned long mask;
};

static void catch_term(void)
{
	struct ksigaction sa = { on_term, 0x04000000 /* SA_RESTORER */, sig_restorer, 0 };

	if (sc(SYS_rt_sigaction, 15, (long)&sa, 0, 8, 0, 0))
		die("rt_sigaction");
}

/* Sleep in 50 ms steps until SIGTERM; the ticks show it runs. */
static void run(int tick)
{
	struct { long s, ns; } t = { 0, 50000000 };

	while (!terminated) {
		sc3(SYS_nanosleep, &t, 0, 0);
		if (tick && !terminated)
			say_num("tick ", ++ticks);
	}
}

/* Read exactly n bytes now (the data is queued: never blocks long). */
static void expect(int fd, const char *want, const char *what)
{
	char buf[64];
	long n = slen(want), got = 0;

	while (got < n) {
		long r = sc3(SYS_read, fd, buf + got, n - got);

		if (r <= 0)
			die(what);
		got += r;
	}
	if (!same(buf, want, n))
		die(what);
}

static void put(int fd, const char *s)
{
	if (sc3(SYS_write, fd, s, slen(s)) != (long)slen(s))
		die("write");
}

static int mode_is(const char *m, const char *want)
{
	return same(m, want, slen(want) + 1);
}

static void tree(void)
{
	int p[2], q[2], s[2];
	long kid[2];

	if (sc3(SYS_pipe, p, 0, 0) || sc3(SYS_pipe, q, 0, 0) ||
	    sc(SYS_socketpair, 1 /* AF_UNIX */, 1 /* SOCK_STREAM */, 0, (long)s, 0, 0))
		die("pipe/socketpair");
	put(p[1], "pipe-data");
	for (int i = 0; i < 2; i++) {
		kid[i] = sc3(SYS_fork, 0, 0, 0);
		if (kid[i] < 0)
			die("fork");
		if (kid[i] == 0) {
			if (i == 0) {	/* the socket's other end */
				sc3(SYS_close, s[0], 0, 0);
				put(s[1], "to-parent");
				run(0);
				expect(s[1], "to-child", "child: socket data");
			} else {	/* holds the second pipe's write end */
				sc3(SYS_close, q[0], 0, 0);
				run(0);
				put(q[1], "q");
			}
			sc3(SYS_exit, 0, 0, 0);
		}
	}
	sc3(SYS_close, s[1], 0, 0);
	sc3(SYS_close, q[1], 0, 0);
	put(s[0], "to-child");
	say("ready\n");
	run(1);
	expect(p[0], "pipe-data", "pipe data");
	expect(s[0], "to-parent", "socket data");
	for (int i = 0; i < 2; i++)
		sc3(SYS_kill, kid[i], 15, 0);
	expect(q[0], "q", "second child's pipe");
}

static void ghost(void)
{
	const char *name = "tiny-ghost.tmp";
	char buf[32];
	int fd = sc3(SYS_open, name, 0102 /* O_CREAT|O_RDWR */, 0600);

	if (fd < 0)
		die("open");
	put(fd, "xx ghost-content");
	sc3(SYS_lseek, fd, 3, 0);
	if (sc3(SYS_unlink, name, 0, 0))
		die("unlink");
	say("ready\n");
	run(1);
	if (sc(SYS_pread64, fd, (long)buf, 13, 3, 0, 0) != 13 || !same(buf, "ghost-content", 13))
		die("ghost content");
	expect(fd, "ghost-content", "ghost offset");
}

struct sin { unsigned short family, port; unsigned int addr; char zero[8]; };

static void tcp(const char *port_s)
{
	struct sin a = { 2, 0, 0x0100007f, {0} };
	int one = 1, l, c, s;
	long port = 0;

	while (*port_s)
		port = port * 10 + (*port_s++ - '0');
	a.port = (unsigned short)((port >> 8) | ((port & 0xff) << 8));
	l = sc3(SYS_socket, 2, 1, 0);
	c = sc3(SYS_socket, 2, 1, 0);
	if (l < 0 || c < 0)
		die("socket");
	sc(SYS_setsockopt, l, 1 /* SOL_SOCKET */, 2 /* SO_REUSEADDR */, (long)&one, 4, 0);
	if (sc3(SYS_bind, l, &a, sizeof(a)) || sc3(SYS_listen, l, 4, 0) ||
	    sc3(SYS_connect, c, &a, sizeof(a)))
		die("bind/listen/connect");
	s = sc3(SYS_accept, l, 0, 0);
	if (s < 0)
		die("accept");
	put(c, "c2s");
	put(s, "s2c");
	say("ready\n");
	run(1);
	expect(s, "c2s", "tcp client to server");
	expect(c, "s2c", "tcp server to client");
	put(c, "more");	/* the connection still carries data */
	expect(s, "more", "tcp after restore");
}

static char *hex(char *p, unsigned long v)
{
	char buf[16];
	int n = 0;

	do {
		buf[n++] = "0123456789abcdef"[v & 15];
		v >>= 4;
	} while (v);
	while (n)
		*p++ = buf[--n];
	return p;
}

static void shmem(void)
{
	const long pg = 4096, len = 3 * 4096;
	char path[64] = "/proc/self/map_files/", *e = path + 21;
	char *a, *p;
	int fd;

	a = (char *)sc(SYS_mmap, 0, len, 3 /* RW */, 0x21 /* MAP_SHARED|MAP_ANONYMOUS */, -1, 0);
	if ((long)a < 0 && (long)a > -4096)
		die("mmap shared");
	for (int i = 0; i < 5; i++) {
		a[i] = "first"[i];
		a[pg + i] = "other"[i];
	}
	e = hex(e, (unsigned long)a);
	*e++ = '-';
	*hex(e, (unsigned long)a + len) = 0;
	fd = sc3(SYS_open, path, 2 /* O_RDWR */, 0);
	if (fd < 0)
		die("open map_files");
	p = (char *)sc(SYS_mmap, 0, len, 3, 0x02 /* MAP_PRIVATE */, fd, 0);
	if ((long)p < 0 && (long)p > -4096)
		die("mmap private");
	p[pg] = 'O';	/* its own copy of the second page */
	say("ready\n");
	run(1);
	if (!same(p, "first", 5) || !same(p + pg, "Other", 5) || !same(a + pg, "other", 5))
		die("shmem contents");
	for (int i = 0; i < 5; i++)
		a[2 * pg + i] = "later"[i];
	if (!same(p + 2 * pg, "later", 5))
		die("the private mapping no longer follows the object");
	if (sc(SYS_pwrite64, fd, (long)"viafd", 5, 2 * pg + 100, 0, 0) != 5 ||
	    !same(a + 2 * pg + 100, "viafd", 5) || !same(p + 2 * pg + 100, "viafd", 5))
		die("the fd is not the object any more");
}

void cmain(long *sp)
{
	int argc = (int)sp[0];
	char **argv = (char **)(sp + 1);

	if (argc < 2)
		die("usage: criu_tiny counter|tree|ghost|tcp PORT|shmem|ns");
	catch_term();
	if (mode_is(argv[1], "counter")) {
		say("ready\n");
		run(1);
	} else if (mode_is(argv[1], "tree")) {
		tree();
	} else if (mode_is(argv[1], "ghost")) {
		ghost();
	} else if (mode_is(argv[1], "tcp") && argc > 2) {
		tcp(argv[2]);
	} else if (mode_is(argv[1], "shmem")) {
		shmem();
	} else if (mode_is(argv[1], "ns")) {
		int p[2];

		if (sc3(SYS_sethostname, "tiny-ns", 7, 0))
			die("sethostname");
		if (sc3(SYS_pipe, p, 0, 0) || sc3(SYS_fcntl, p[0], 8 /* F_SETOWN */,
						  sc3(SYS_getpid, 0, 0, 0)))
			die("pipe/F_SETOWN");
		say("ready\n");
		run(1);
		if (sc3(SYS_fcntl, p[0], 9 /* F_GETOWN */, 0) != sc3(SYS_getpid, 0, 0, 0))
			die("SIGIO owner");
	} else {
		die("unknown mode");
	}
	say("PASS\n");
	sc3(SYS_exit_group, 0, 0, 0);
}
