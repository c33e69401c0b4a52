/* threads N: this thread and N-1 more, all sleeping. */
#include "common.h"
#include <pthread.h>

static void *sleeper(void *arg)
{
	(void)arg;
	idle();
	return NULL;
}

int main(int argc, char **argv)
{
	long n = strtol(argc > 1 ? argv[1] : "8", NULL, 10);

	for (long i = 1; i < n; i++) {
		pthread_t t;

		if (pthread_create(&t, NULL, sleeper, NULL))
			die("pthread_create");
	}
	ready();
	idle();
	return 0;
}
