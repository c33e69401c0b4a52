/* tree N: this process and N-1 children, all sleeping. */
#include "common.h"

int main(int argc, char **argv)
{
	long n = strtol(argc > 1 ? argv[1] : "20", NULL, 10);

	for (long i = 1; i < n; i++) {
		pid_t pid = fork();

		if (pid < 0)
			die("fork");
		if (pid == 0)
			idle();
	}
	ready();
	idle();
	return 0;
}
