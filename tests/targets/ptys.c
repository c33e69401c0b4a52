/* ptys.c: pseudo-terminal pairs of every shape the dump must keep.
 *
 * A (index a): raw slave (no ICANON/ECHO), custom c_cc, 10x33 window,
 *     packet mode on the master, exclusive slave, the slave node chmod 0600
 *     and chowned 4242:4343; 11 bytes queued for the slave ("to-slave\0\1\2")
 *     and 10 for the master ("from-slave").
 * B (index b): canonical slave with a complete line "line1\n" and a partial
 *     line "part" queued; master re-locked (TIOCSPTLCK 1) after the slave
 *     was opened; the slave is the controlling terminal of a child session
 *     leader whose foreground group is a grandchild's own group; the child
 *     holds /dev/tty.
 * C (index c): master closed, slave hung up (its node deleted).
 *
 * prints "ready A B C CHILD GRANDCHILD"; on SIGTERM checks everything and
 * prints PASS or FAIL: reason.  The child checks its side on SIGUSR1 and
 * answers on a pipe.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

static volatile sig_atomic_t got_term, got_usr1;
static void on_term(int s) { (void)s; got_term = 1; }
static void on_usr1(int s) { (void)s; got_usr1 = 1; }

static int fail(const char *what)
{
	printf("FAIL: %s (errno %d)\n", what, errno);
	fflush(stdout);
	return 1;
}

static int pair(int *m, int *s, int *idx)
{
	*m = posix_openpt(O_RDWR | O_NOCTTY);
	if (*m < 0 || grantpt(*m) || unlockpt(*m) || ioctl(*m, TIOCGPTN, idx))
		return -1;
	*s = ioctl(*m, TIOCGPTPEER, O_RDWR | O_NOCTTY);
	return *s < 0 ? -1 : 0;
}

static const char to_slave[] = "to-slave\0\1\2";
static const char from_slave[] = "from-slave";

static int child_side(int sb, int pgrp_expect, int answer)
{
	/* session leader with B's slave as its controlling terminal */
	int tty = open("/dev/tty", O_RDWR);
	char r = 'y';
	if (tty < 0)
		return 1;
	signal(SIGUSR1, on_usr1);
	signal(SIGHUP, SIG_IGN);
	while (!got_usr1)
		pause();
	struct stat a, b;
	if (tcgetsid(sb) != getpid())
		r = 's';
	else if (tcgetpgrp(tty) != pgrp_expect)
		r = 'g';
	else if (fstat(tty, &a) || fstat(sb, &b) || a.st_rdev != 0x500)
		r = 't';
	else if (b.st_rdev == 0 || ttyname(sb) == NULL)
		r = 'n';
	if (write(answer, &r, 1) != 1)
		return 1;
	return 0;
}

int main(void)
{
	int ma, sa, ia, mb, sb, ib, mc, sc, ic;
	struct termios t, ta, tb;
	struct winsize ws = { .ws_row = 10, .ws_col = 33, .ws_xpixel = 7, .ws_ypixel = 9 };
	int one = 1, p[2];
	char cname[64];

	signal(SIGTERM, on_term);
	if (pair(&ma, &sa, &ia) || pair(&mb, &sb, &ib) || pair(&mc, &sc, &ic))
		return fail("pairs");
	/* A */
	tcgetattr(sa, &t);
	cfmakeraw(&t);
	t.c_cc[VMIN] = 1;
	t.c_cc[VTIME] = 0;
	t.c_cc[VINTR] = 7;
	cfsetspeed(&t, B9600);
	if (tcsetattr(sa, TCSANOW, &t) || ioctl(ma, TIOCSWINSZ, &ws) || ioctl(ma, TIOCPKT, &one)
	    || ioctl(sa, TIOCEXCL) || fchmod(sa, 0600) || fchown(sa, 4242, 4343))
		return fail("setup A");
	memset(&ta, 0, sizeof(ta));	/* padding: memcmp below */
	tcgetattr(sa, &ta);
	if (write(ma, to_slave, sizeof(to_slave) - 1) != sizeof(to_slave) - 1 ||
	    write(sa, from_slave, sizeof(from_slave) - 1) != sizeof(from_slave) - 1)
		return fail("write A");
	/* B */
	memset(&tb, 0, sizeof(tb));
	tcgetattr(sb, &tb);
	if (!(tb.c_lflag & ICANON))
		return fail("B not canonical");
	tb.c_lflag &= ~ECHO;
	tcsetattr(sb, TCSANOW, &tb);
	if (write(mb, "line1\npart", 10) != 10)
		return fail("write B");
	/* C */
	snprintf(cname, sizeof(cname), "/dev/pts/%d", ic);
	close(mc);

	if (pipe(p))
		return fail("pipe");
	pid_t child = fork();
	if (child == 0) {
		close(p[0]);
		setsid();
		if (ioctl(sb, TIOCSCTTY, 0))
			_exit(fail("TIOCSCTTY"));
		pid_t gc = fork();
		if (gc == 0) {
			setpgid(0, 0);
			signal(SIGTTOU, SIG_IGN);
			for (;;)
				pause();
		}
		setpgid(gc, gc);
		if (tcsetpgrp(sb, gc))
			_exit(fail("tcsetpgrp"));
		char msg[32];
		snprintf(msg, sizeof(msg), "%d\n", gc);
		if (write(p[1], msg, strlen(msg)) < 0)
			_exit(1);
		int rc = child_side(sb, gc, p[1]);
		kill(gc, SIGKILL);
		waitpid(gc, NULL, 0);
		_exit(rc);
	}
	close(p[1]);
	char gcs[32] = {0};
	if (read(p[0], gcs, sizeof(gcs) - 1) <= 0)
		return fail("child");
	usleep(100000);
	int lock = 1;
	if (ioctl(mb, TIOCSPTLCK, &lock))
		return fail("relock");
	printf("ready %d %d %d %d %d\n", ia, ib, ic, child, atoi(gcs));
	fflush(stdout);

	while (!got_term)
		pause();

	/* indices */
	int n;
	if (ioctl(ma, TIOCGPTN, &n) || n != ia || ioctl(mb, TIOCGPTN, &n) || n != ib)
		return fail("index");
	char buf[64];
	struct stat st;
	if (fstat(sa, &st) || st.st_rdev != makedev(136 + ia / 256, ia % 256) ||
	    (st.st_mode & 0777) != 0600 || st.st_uid != 4242 || st.st_gid != 4343)
		return fail("A node");
	/* A's state */
	struct termios g;
	struct winsize gw;
	memset(&g, 0, sizeof(g));
	if (tcgetattr(sa, &g) || memcmp(&g, &ta, sizeof(g)))
		return fail("A termios");
	if (ioctl(ma, TIOCGWINSZ, &gw) || memcmp(&gw, &ws, sizeof(ws)))
		return fail("A winsize");
	if (ioctl(ma, TIOCGPKT, &n) || n != 1)
		return fail("A packet mode");
	if (ioctl(sa, TIOCGEXCL, &n) || n != 1 || ioctl(ma, TIOCGEXCL, &n) || n != 0)
		return fail("A exclusive");
	if (ioctl(ma, TIOCGPTLCK, &n) || n != 0)
		return fail("A lock");
	fcntl(sa, F_SETFL, O_NONBLOCK);
	if (read(sa, buf, sizeof(buf)) != sizeof(to_slave) - 1 ||
	    memcmp(buf, to_slave, sizeof(to_slave) - 1))
		return fail("A input");
	fcntl(ma, F_SETFL, O_NONBLOCK);
	n = read(ma, buf, sizeof(buf));
	if (n != sizeof(from_slave) || buf[0] != 0 || memcmp(buf + 1, from_slave, n - 1))
		return fail("A output");
	/* B */
	if (ioctl(mb, TIOCGPTLCK, &n) || n != 1)
		return fail("B lock");
	memset(&g, 0, sizeof(g));
	if (tcgetattr(sb, &g) || memcmp(&g, &tb, sizeof(g)))
		return fail("B termios");
	fcntl(sb, F_SETFL, O_NONBLOCK);
	n = read(sb, buf, sizeof(buf));
	if (n != 6 || memcmp(buf, "line1\n", 6))
		return fail("B complete line");
	if (read(sb, buf, sizeof(buf)) >= 0 || errno != EAGAIN)
		return fail("B partial line readable");
	if (write(mb, "\n", 1) != 1 || read(sb, buf, sizeof(buf)) != 5 || memcmp(buf, "part\n", 5))
		return fail("B partial line");
	if (tcgetsid(mb) != child)
		return fail("B session");
	if (tcgetpgrp(mb) != atoi(gcs))
		return fail("B foreground");
	/* C: hung up */
	if (access(cname, F_OK) == 0 || errno != ENOENT)
		return fail("C node exists");
	if (read(sc, buf, 1) != 0 && errno != EIO)
		return fail("C not hung up");
	/* the child's side */
	kill(child, SIGUSR1);
	char r = 0;
	if (read(p[0], &r, 1) != 1 || r != 'y') {
		errno = r;
		return fail("child side");
	}
	int status;
	waitpid(child, &status, 0);
	if (!WIFEXITED(status) || WEXITSTATUS(status))
		return fail("child status");
	printf("PASS\n");
	fflush(stdout);
	return 0;
}
