/*
 * A C client of ioasidsd's /dev/ioasid socket, written from docs/ioasid-protocol.md only.
 * Usage: c_client SOCKET [MIN MAX]. Prints one line per step: "<step> <ret>". The framing
 * is in ioasid_sock.h.
 */
#include <stdio.h>
#include <stdlib.h>

#include "ioasid_sock.h"

#define IOASID_GET_API_VERSION  0x6964
#define IOASID_GET_INFO         0x6965
#define IOASID_REQUEST_ALLOC    0x6966
#define IOASID_REQUEST_FREE     0x6967

struct ioasid_info { __u32 argsz; __u32 flags; __u32 ioasid_bits; };
struct ioasid_alloc_request {
	__u32 argsz;
	__u32 flags;
	struct { __u32 min; __u32 max; } range;
};

int main(int argc, char **argv)
{
	struct ioasid_info info = { sizeof(info), 0, 0 };
	struct ioasid_alloc_request alloc = { sizeof(alloc), 0, { 1, 1000 } };
	int fd, id, ret, opened;

	if (argc < 2)
		return 2;
	if (argc == 4) {
		alloc.range.min = strtoul(argv[2], NULL, 0);
		alloc.range.max = strtoul(argv[3], NULL, 0);
	}
	fd = ioasid_sock_connect(argv[1], &opened);
	if (fd < 0) {
		perror("connect");
		return 2;
	}
	printf("open %d\n", opened);
	printf("version %d\n", ioasid_sock_ioctl(fd, IOASID_GET_API_VERSION, NULL, 0));
	ret = ioasid_sock_ioctl(fd, IOASID_GET_INFO, &info, sizeof(info));
	printf("info %d %u\n", ret, info.ioasid_bits);
	id = ioasid_sock_ioctl(fd, IOASID_REQUEST_ALLOC, &alloc, sizeof(alloc));
	printf("alloc %d\n", id);
	alloc.flags = 1;
	printf("badflags %d\n", ioasid_sock_ioctl(fd, IOASID_REQUEST_ALLOC, &alloc, sizeof(alloc)));
	printf("free %d\n", ioasid_sock_ioctl(fd, IOASID_REQUEST_FREE, &id, sizeof(id)));
	printf("free %d\n", ioasid_sock_ioctl(fd, IOASID_REQUEST_FREE, &id, sizeof(id)));
	fflush(stdout);
	close(fd);
	return 0;
}
