/*
 * A C client of ioasidsd's /dev/ioasid socket, written from docs/ioasid-protocol.md only.
 * Usage: c_client SOCKET [MIN MAX]. Prints one line per step: "<step> <ret>".
 */
#include <linux/types.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define IOASID_GET_API_VERSION  0x6964
#define IOASID_GET_INFO         0x6965
#define IOASID_REQUEST_ALLOC    0x6966
#define IOASID_REQUEST_FREE     0x6967

struct ioasid_sock_req { __u32 cmd; __u32 len; };
struct ioasid_sock_rep { __s32 ret; __u32 len; };
struct ioasid_info { __u32 argsz; __u32 flags; __u32 ioasid_bits; };
struct ioasid_alloc_request {
	__u32 argsz;
	__u32 flags;
	struct { __u32 min; __u32 max; } range;
};

static void io_full(int fd, void *buf, size_t n, int writing)
{
	char *p = buf;
	while (n) {
		ssize_t r = writing ? write(fd, p, n) : read(fd, p, n);
		if (r <= 0) {
			perror(writing ? "write" : "read");
			exit(2);
		}
		p += r;
		n -= r;
	}
}

/* One request; the output (if any) is copied over the argument, like copy_to_user. */
static int ioctl_sock(int fd, __u32 cmd, void *arg, __u32 len)
{
	struct ioasid_sock_req req = { cmd, len };
	struct ioasid_sock_rep rep;
	char data[4096];

	io_full(fd, &req, sizeof(req), 1);
	if (len)
		io_full(fd, arg, len, 1);
	io_full(fd, &rep, sizeof(rep), 0);
	if (rep.len > sizeof(data))
		exit(3);
	io_full(fd, data, rep.len, 0);
	if (rep.ret >= 0 && rep.len && rep.len <= len)
		memcpy(arg, data, rep.len);
	return rep.ret;
}

int main(int argc, char **argv)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct ioasid_sock_rep greeting;
	struct ioasid_info info = { sizeof(info), 0, 0 };
	struct ioasid_alloc_request alloc = { sizeof(alloc), 0, { 1, 1000 } };
	int fd, id, ret;

	if (argc < 2)
		return 2;
	if (argc == 4) {
		alloc.range.min = strtoul(argv[2], NULL, 0);
		alloc.range.max = strtoul(argv[3], NULL, 0);
	}
	strncpy(sa.sun_path, argv[1], sizeof(sa.sun_path) - 1);
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa))) {
		perror("connect");
		return 2;
	}
	io_full(fd, &greeting, sizeof(greeting), 0);
	printf("open %d\n", greeting.ret);
	printf("version %d\n", ioctl_sock(fd, IOASID_GET_API_VERSION, NULL, 0));
	ret = ioctl_sock(fd, IOASID_GET_INFO, &info, sizeof(info));
	printf("info %d %u\n", ret, info.ioasid_bits);
	id = ioctl_sock(fd, IOASID_REQUEST_ALLOC, &alloc, sizeof(alloc));
	printf("alloc %d\n", id);
	alloc.flags = 1;
	printf("badflags %d\n", ioctl_sock(fd, IOASID_REQUEST_ALLOC, &alloc, sizeof(alloc)));
	printf("free %d\n", ioctl_sock(fd, IOASID_REQUEST_FREE, &id, sizeof(id)));
	printf("free %d\n", ioctl_sock(fd, IOASID_REQUEST_FREE, &id, sizeof(id)));
	fflush(stdout);
	close(fd);
	return 0;
}
