/*
 * tcpq PORT MIB: one TCP connection to 127.0.0.1:PORT (the bench holds the
 * other end and does not read) with MIB MiB queued each way: the bench
 * sends MIB MiB that we do not read (our receive queue), and we write
 * until MIB MiB wait in our send queue behind the bench's full receive
 * window.  "ready" once both are there.
 */
#include "common.h"
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>

int main(int argc, char **argv)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	struct timespec ts = { 0, 1000 * 1000 };
	size_t want, sent = 0;
	int sk, buf, inq = 0, outq = 0;
	static char chunk[1 << 16];

	if (argc != 3)
		return 2;
	want = (size_t)strtoul(argv[2], NULL, 10) << 20;
	buf = (int)(want * 2 + (4 << 20));
	sk = socket(AF_INET, SOCK_STREAM, 0);
	if (sk < 0)
		die("socket");
	/* before connect: the window scale is chosen from these */
	if (setsockopt(sk, SOL_SOCKET, SO_RCVBUFFORCE, &buf, sizeof(buf)) ||
	    setsockopt(sk, SOL_SOCKET, SO_SNDBUFFORCE, &buf, sizeof(buf)))
		die("setsockopt");
	sa.sin_port = htons(atoi(argv[1]));
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(sk, (struct sockaddr *)&sa, sizeof(sa)))
		die("connect");
	fcntl(sk, F_SETFL, O_NONBLOCK);
	for (size_t i = 0; i < sizeof(chunk); i++)
		chunk[i] = (char)(i * 7 + 3);
	for (int idle = 0; outq < (int)want || inq < (int)want;) {
		if (outq < (int)want) {
			ssize_t n = write(sk, chunk, sizeof(chunk));

			if (n > 0)
				sent += n;
		}
		if (ioctl(sk, SIOCOUTQ, &outq) || ioctl(sk, SIOCINQ, &inq))
			die("ioctl");
		if (++idle > 200000)
			die("queues did not fill");
		nanosleep(&ts, NULL);
	}
	ready();
	idle();
	return 0;
}
