/* shared_kobjs [share|sibling|vm] DIR: fd tables and fs structs shared
 * between processes (clone CLONE_FILES / CLONE_FS).
 *
 * share: R clones A with CLONE_FILES|CLONE_FS; A clones its child G with
 * CLONE_FILES (G shares R's table, not its fs); R forks C (copies).
 * Prints "tree A G C" and "ready".  On SIGTERM R asks A (SIGUSR1) to open
 * DIR/a as fd 40, chdir to DIR and set umask 027, and G (SIGUSR1) to open
 * DIR/g as fd 41; then R checks it sees fds 40 and 41, that its cwd is DIR
 * and its umask 027, and that C sees neither fd and kept its cwd.
 * sibling: R clones A with CLONE_FILES, A clones B with CLONE_FILES|
 * CLONE_PARENT, then R unshares its table: A and B share one that their
 * parent R does not (refused).  vm: R clones V with CLONE_VM (refused).
 */
#include "tgt.h"
#include <fcntl.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/wait.h>

static const char *dir;
static volatile sig_atomic_t go;
static int done[2];
static char stack_a[65536], stack_g[65536];
static void on_usr1(int s) { (void)s; go = 1; }

static void wait_go(void)
{
	while (!go)
		pause();
	go = 0;
}

static void ack(void) { tgt_write_all(done[1], "x", 1); }

static int grandchild(void *arg)
{
	char p[4096];
	(void)arg;
	wait_go();
	snprintf(p, sizeof(p), "%s/g", dir);
	int fd = open(p, O_RDWR | O_CREAT, 0600);
	if (fd < 0 || dup2(fd, 41) != 41)
		_exit(1);
	close(fd);
	ack();
	for (;;)
		pause();
	return 0;
}

static int child(void *arg)
{
	char p[4096];
	pid_t g;
	(void)arg;
	/* G: A's child, on A's table (so R's), with a copy of the fs */
	g = clone(grandchild, stack_g + sizeof(stack_g), CLONE_FILES | SIGCHLD, NULL);
	tgt_write_all(done[1], (char *)&g, sizeof(g));
	wait_go();
	snprintf(p, sizeof(p), "%s/a", dir);
	int fd = open(p, O_RDWR | O_CREAT, 0600);
	if (fd < 0 || dup2(fd, 40) != 40)
		_exit(1);
	close(fd);
	if (chdir(dir))
		_exit(1);
	umask(027);
	ack();
	for (;;)
		pause();
	return 0;
}

static int idle(void *arg)
{
	(void)arg;
	for (;;)
		pause();
	return 0;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "share";
	pid_t a, g = 0, c;
	char cwd[4096], ccwd[4096], link[64], x;
	int fl = CLONE_FILES;

	if (argc < 3)
		return 2;
	dir = argv[2];
	tgt_catch_term();
	signal(SIGUSR1, on_usr1);
	if (pipe(done))
		die("pipe");
	if (!strcmp(mode, "vm")) {
		a = clone(idle, stack_a + sizeof(stack_a), CLONE_VM | SIGCHLD, NULL);
		say("tree %d 0 0", a);
		say("ready");
		while (!test_stop)
			pause();
		kill(a, SIGKILL);
		waitpid(a, NULL, 0);
		return verdict();
	}
	if (!strcmp(mode, "sibling")) {
		a = clone(idle, stack_a + sizeof(stack_a), CLONE_FILES | SIGCHLD, NULL);
		g = clone(idle, stack_g + sizeof(stack_g), CLONE_FILES | SIGCHLD, NULL);
		if (unshare(CLONE_FILES))
			die("unshare");
		say("tree %d %d 0", a, g);
		say("ready");
		while (!test_stop)
			pause();
		kill(a, SIGKILL);
		kill(g, SIGKILL);
		waitpid(a, NULL, 0);
		waitpid(g, NULL, 0);
		return verdict();
	}
	a = clone(child, stack_a + sizeof(stack_a), CLONE_FILES | CLONE_FS | SIGCHLD, NULL);
	if (a < 0)
		die("clone");
	(void)fl;
	if (read(done[0], &g, sizeof(g)) != sizeof(g))
		die("read");
	c = fork();
	if (c == 0) {
		while (!test_stop)
			pause();
		_exit(fcntl(40, F_GETFD) >= 0 || fcntl(41, F_GETFD) >= 0 ? 3 :
		      !getcwd(ccwd, sizeof(ccwd)) || !strcmp(ccwd, dir) ? 4 : 0);
	}
	say("tree %d %d %d", a, g, c);
	say("ready");
	while (!test_stop)
		pause();
	kill(a, SIGUSR1);
	if (read(done[0], &x, 1) != 1)
		fail("A did not answer");
	kill(g, SIGUSR1);
	if (read(done[0], &x, 1) != 1)
		fail("G did not answer");
	if (fcntl(40, F_GETFD) < 0)
		fail("fd 40 that A opened is not in R's table");
	if (fcntl(41, F_GETFD) < 0)
		fail("fd 41 that G opened is not in R's table");
	if (!getcwd(cwd, sizeof(cwd)) || strcmp(cwd, dir))
		fail("R's cwd is %s, not %s (A's chdir)", cwd, dir);
	mode_t um = umask(0);
	if (um != 027)
		fail("R's umask is %o, not 027 (A's)", um);
	snprintf(link, sizeof(link), "/proc/%d/cwd", g);
	ssize_t n = readlink(link, ccwd, sizeof(ccwd) - 1);
	if (n > 0 && (ccwd[n] = 0, !strcmp(ccwd, dir)))
		fail("G's cwd moved with A's: it has an fs of its own");
	kill(c, SIGTERM);
	int st;
	if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st))
		fail("C (copies of the table and fs): status %#x", st);
	kill(g, SIGKILL);
	kill(a, SIGKILL);
	waitpid(a, NULL, 0);
	return verdict();
}
