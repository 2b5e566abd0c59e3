/*
 * The C side of bench/bench_preload.py. Prints one line: "<operations> <seconds>".
 *
 *   preload_bench raw SOCKET SECONDS   ALLOC+FREE pairs over the raw socket, framed by hand as
 *                                      tests/userapi/c_client.c does (its ioasid_sock.h: one
 *                                      write, then read)
 *   preload_bench ioctl SECONDS        the same pairs as ioctl()s on open("/dev/ioasid"),
 *                                      to be run under the preload library
 *   preload_bench files DIR SECONDS    open(), read() and close() of DIR/0..DIR/15 in turn,
 *                                      then fopen()/fread()/fclose() of the same
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <linux/ioasid.h>

#include "ioasid_sock.h"

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	struct ioasid_alloc_request alloc = { sizeof(alloc), 0, { 1, (1u << 31) - 1 } };
	long n = 0;
	double t0, seconds, deadline;

	if (argc >= 4 && !strcmp(argv[1], "raw")) {
		int opened;
		int fd = ioasid_sock_connect(argv[2], &opened);

		if (fd < 0 || opened < 0)
			return 2;
		seconds = atof(argv[3]);
		t0 = now();
		deadline = t0 + seconds;
		do {
			for (int k = 0; k < 64; k++, n++) {
				int id = ioasid_sock_ioctl(fd, IOASID_REQUEST_ALLOC, &alloc, sizeof(alloc));

				if (id < 0 || ioasid_sock_ioctl(fd, IOASID_REQUEST_FREE, &id, sizeof(id)))
					return 4;
			}
		} while (now() < deadline);
	} else if (argc >= 3 && !strcmp(argv[1], "ioctl")) {
		int fd = open("/dev/ioasid", O_RDWR);

		if (fd < 0) {
			perror("open /dev/ioasid");
			return 2;
		}
		seconds = atof(argv[2]);
		t0 = now();
		deadline = t0 + seconds;
		do {
			for (int k = 0; k < 64; k++, n++) {
				int id = ioctl(fd, IOASID_REQUEST_ALLOC, &alloc);

				if (id < 0 || ioctl(fd, IOASID_REQUEST_FREE, &id))
					return 4;
			}
		} while (now() < deadline);
	} else if (argc >= 4 && !strcmp(argv[1], "files")) {
		char path[4096], buf[8192];

		seconds = atof(argv[3]);
		t0 = now();
		deadline = t0 + seconds;
		do {
			for (int k = 0; k < 16; k++, n += 2) {
				FILE *f;
				int fd;

				snprintf(path, sizeof(path), "%s/%d", argv[2], k);
				fd = open(path, O_RDONLY);
				if (fd < 0 || read(fd, buf, sizeof(buf)) < 0)
					return 4;
				close(fd);
				f = fopen(path, "r");
				if (!f || !fread(buf, 1, sizeof(buf), f))
					return 4;
				fclose(f);
			}
		} while (now() < deadline);
	} else {
		fprintf(stderr, "usage: see the comment at the top\n");
		return 2;
	}
	printf("%ld %.6f\n", n, now() - t0);
	return 0;
}
