/*
 * ttycounter: writes 0, 1, 2, ... one a line to stdout every 50 ms -- for
 * the --shell-job test, where stdout is a terminal.  Prints no "ready".
 */
#include "tgt.h"
#include <time.h>

int main(void)
{
	struct timespec ts = { 0, 50 * 1000 * 1000 };

	for (unsigned long n = 0;; n++) {
		say("%lu", n);
		nanosleep(&ts, NULL);
	}
}
