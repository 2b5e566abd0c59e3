/*
 * The framing of ioasidsd's /dev/ioasid socket, written from docs/ioasid-protocol.md only:
 * connecting reads a greeting {ret, len}; a request is a header {cmd, len} followed by len
 * bytes of argument, sent in one write; its reply is {ret, len} followed by len bytes, which
 * are copied back over the argument when ret is not negative, as copy_to_user would.
 *
 * Shared by tests/userapi/c_client.c and bench/preload_bench.c. Every failure of the socket
 * ends the program: exit status 2 for a failed read or write, 3 for a reply or an argument
 * larger than the buffers here.
 */
#ifndef IOASID_SOCK_H
#define IOASID_SOCK_H

#include <linux/types.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

struct ioasid_sock_req { __u32 cmd; __u32 len; };
struct ioasid_sock_rep { __s32 ret; __u32 len; };

static inline void io_full(int fd, void *buf, size_t n, int writing)
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

/* Connect to the socket at path and read its greeting (its ret in *opened); -1 if the
 * connection is refused (errno says why). */
static inline int ioasid_sock_connect(const char *path, int *opened)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct ioasid_sock_rep greeting;
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);

	if (fd < 0)
		return -1;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa))) {
		close(fd);
		return -1;
	}
	io_full(fd, &greeting, sizeof(greeting), 0);
	*opened = greeting.ret;
	return fd;
}

/* One request: its return value; its output (if any) is copied over arg. */
static inline int ioasid_sock_ioctl(int fd, __u32 cmd, void *arg, __u32 len)
{
	struct { struct ioasid_sock_req h; char arg[256]; } req;
	struct ioasid_sock_rep rep;
	char data[4096];

	if (len > sizeof(req.arg))
		exit(3);
	req.h.cmd = cmd;
	req.h.len = len;
	if (len)
		memcpy(req.arg, arg, len);
	io_full(fd, &req, sizeof(req.h) + len, 1);
	io_full(fd, &rep, sizeof(rep), 0);
	if (rep.len > sizeof(data))
		exit(3);
	io_full(fd, data, rep.len, 0);
	if (rep.ret >= 0 && rep.len && rep.len <= len)
		memcpy(arg, data, rep.len);
	return rep.ret;
}

#endif
