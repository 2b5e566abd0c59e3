// SPDX-License-Identifier: GPL-2.0
/*
 * libioasids-preload.so: makes unmodified programs see ioasidsd as the kernel of the series.
 *
 * Loaded with LD_PRELOAD (`ioasidctl wrap -- CMD` sets it up), it interposes the libc entry
 * points that open files and ioctl():
 *
 *  - /proc/mounts, /proc/PID/mounts and /proc/PID/mountinfo: the daemon's FUSE mount (type
 *    fuse.ioasids) reads as a cgroup-v1 mount of the "ioasids" controller;
 *  - /proc/cgroups gains an "ioasids" line, /proc/PID/cgroup (and .../task/TID/cgroup) an
 *    ioasids line with the process's cgroup; both carry the same hierarchy id, one above the
 *    highest the kernel shows;
 *  - open("/dev/ioasid") returns a connection to the daemon's socket (ENODEV when no daemon
 *    listens); ioctl() on it is carried over the socket in the uAPI's byte layouts and answers
 *    what the daemon answers. The connection is an ordinary descriptor: dup() and fork() share
 *    it, and the daemon releases the file when its last copy is closed.
 *
 * Everything else goes to libc untouched: a path is compared with "/proc/" and "/dev/ioasid"
 * and nothing more is done for other files. Emulated /proc files are memfds holding the
 * rewritten text, read as the real files are. Configuration, read at each open:
 * IOASIDS_RUNTIME_DIR (the daemon's runtime directory, default /run/ioasidsd) and
 * IOASIDS_MOUNT (the hierarchy's mount point; default: the first fuse.ioasids mount).
 *
 * Errors never crash the program: a bad argument pointer is EFAULT (the kernel copies it, so
 * it is never dereferenced here), a daemon gone under an open descriptor is EIO.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <mntent.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "include/linux/ioasid.h"

#define EXPORT __attribute__((visibility("default")))
#define DEV_IOASID "/dev/ioasid"
#define SOCKET_NAME "ioasid.sock"
#define DEFAULT_RUNTIME_DIR "/run/ioasidsd"
#define MAX_REPLY (1u << 20)

/* ------------------------------------------------------------------ libc's own entry points */

typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);
typedef FILE *(*fopen_fn)(const char *, const char *);
typedef int (*ioctl_fn)(int, unsigned long, ...);

static open_fn real_open;
static openat_fn real_openat;
static fopen_fn real_fopen;
static ioctl_fn real_ioctl;

static void *next(const char *name)
{
	return dlsym(RTLD_NEXT, name);
}

__attribute__((constructor)) static void resolve(void)
{
	real_open = (open_fn)next("open64");
	real_openat = (openat_fn)next("openat64");
	real_fopen = (fopen_fn)next("fopen64");
	real_ioctl = (ioctl_fn)next("ioctl");
}

/* ------------------------------------------------------------------ growing text buffers */

struct text {
	char *buf;
	size_t len, cap;
};

static int text_add(struct text *t, const char *s, size_t n)
{
	if (t->len + n + 1 > t->cap) {
		size_t cap = t->cap ? t->cap * 2 : 4096;
		char *p;

		while (cap < t->len + n + 1)
			cap *= 2;
		p = realloc(t->buf, cap);
		if (!p)
			return -1;
		t->buf = p;
		t->cap = cap;
	}
	memcpy(t->buf + t->len, s, n);
	t->len += n;
	t->buf[t->len] = '\0';
	return 0;
}

static int text_str(struct text *t, const char *s)
{
	return text_add(t, s, strlen(s));
}

/* The whole of file @path through libc's open (not ours). -1 with errno on failure. */
static int slurp(const char *path, struct text *t)
{
	char chunk[8192];
	ssize_t n;
	int fd = real_open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -1;
	while ((n = read(fd, chunk, sizeof(chunk))) != 0) {
		if (n < 0) {
			if (errno == EINTR)
				continue;
			goto fail;
		}
		if (text_add(t, chunk, n))
			goto fail;
	}
	close(fd);
	if (!t->buf && text_add(t, "", 0))
		return -1;
	return 0;
fail:
	n = errno;
	close(fd);
	errno = n;
	return -1;
}

/* ------------------------------------------------------------------ where the hierarchy is */

/* Undo the octal escapes of a /proc/PID/mountinfo field (\040 for a space...), in place. */
static void unescape(char *s)
{
	char *out = s;

	for (; *s; s++) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' &&
		    s[3] >= '0' && s[3] <= '7') {
			*out++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
			s += 3;
		} else {
			*out++ = *s;
		}
	}
	*out = '\0';
}

/* Whether the mount at @point (unescaped) with type @fstype is the hierarchy. */
static int is_ours(const char *point, const char *fstype, const char *wanted)
{
	if (strcmp(fstype, "fuse.ioasids"))
		return 0;
	return !wanted || !strcmp(point, wanted);
}

/* The hierarchy's mount point into @out (PATH_MAX bytes): $IOASIDS_MOUNT if set and mounted,
 * else the first fuse.ioasids mount. 0, or -1 when there is none. */
static int find_mount(char *out)
{
	const char *wanted = getenv("IOASIDS_MOUNT");
	struct text info = { 0 };
	char *line, *save = NULL;
	int found = -1;

	if (wanted && !*wanted)
		wanted = NULL;
	if (slurp("/proc/self/mountinfo", &info))
		return -1;
	for (line = strtok_r(info.buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char point[PATH_MAX], fstype[256];
		const char *dash = strstr(line, " - ");

		if (!dash || sscanf(line, "%*s %*s %*s %*s %4095s", point) != 1 ||
		    sscanf(dash + 3, "%255s", fstype) != 1)
			continue;
		unescape(point);
		if (is_ours(point, fstype, wanted)) {
			strcpy(out, point);
			found = 0;
			break;
		}
	}
	free(info.buf);
	return found;
}

/* The hierarchy id shown for ioasids: one above the highest id of /proc/self/cgroup, so that
 * /proc/cgroups and every /proc/PID/cgroup agree. */
static int hierarchy_id(void)
{
	struct text t = { 0 };
	char *line, *save = NULL;
	int id = 0;

	if (slurp("/proc/self/cgroup", &t))
		return 1;
	for (line = strtok_r(t.buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		int n = atoi(line);

		if (n > id)
			id = n;
	}
	free(t.buf);
	return id + 1;
}

/* Calls @fn on every cgroup directory under @dir (not @dir itself), depth first; stops at the
 * first non-zero result and returns it. @dir is a PATH_MAX buffer, restored on return. */
static int walk(char *dir, int (*fn)(const char *, void *), void *arg)
{
	size_t len = strlen(dir);
	struct dirent *de;
	DIR *d;
	int fd = real_open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int ret = 0;

	if (fd < 0)
		return 0;
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		return 0;
	}
	while (!ret && (de = readdir(d))) {
		if (de->d_type != DT_DIR || de->d_name[0] == '.')
			continue;
		if (len + 1 + strlen(de->d_name) >= PATH_MAX)
			continue;
		dir[len] = '/';
		strcpy(dir + len + 1, de->d_name);
		ret = fn(dir, arg);
		if (!ret)
			ret = walk(dir, fn, arg);
		dir[len] = '\0';
	}
	closedir(d);
	return ret;
}

static int count_one(const char *dir, void *arg)
{
	(void)dir;
	++*(int *)arg;
	return 0;
}

struct member {
	pid_t pid;
	char path[PATH_MAX];
};

/* 1 when the cgroup at @dir lists the pid in its cgroup.procs (then its path is kept). */
static int has_member(const char *dir, void *arg)
{
	struct member *m = arg;
	struct text t = { 0 };
	char procs[PATH_MAX + 16];
	char *line, *save = NULL;
	int found = 0;

	snprintf(procs, sizeof(procs), "%s/cgroup.procs", dir);
	if (slurp(procs, &t))
		return 0;
	for (line = strtok_r(t.buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		if (atoi(line) == m->pid) {
			snprintf(m->path, sizeof(m->path), "%s", dir);
			found = 1;
			break;
		}
	}
	free(t.buf);
	return found;
}

/* ------------------------------------------------------------------ the rewritten /proc files */

/* The mount's options kept for the cgroup line: the generic ones (rw, nosuid...), not FUSE's. */
static void generic_options(const char *opts, struct text *out)
{
	static const char *const keep[] = { "rw", "ro", "nosuid", "nodev", "noexec", "sync",
					    "dirsync", "noatime", "nodiratime", "relatime",
					    "strictatime", "lazytime", NULL };
	char copy[1024], *opt, *save = NULL;
	int first = 1;

	snprintf(copy, sizeof(copy), "%s", opts);
	for (opt = strtok_r(copy, ",", &save); opt; opt = strtok_r(NULL, ",", &save)) {
		for (const char *const *k = keep; *k; k++) {
			if (!strcmp(opt, *k)) {
				if (!first)
					text_str(out, ",");
				text_str(out, opt);
				first = 0;
			}
		}
	}
	if (first)
		text_str(out, "rw");
}

/* /proc/PID/mounts: "SOURCE POINT TYPE OPTIONS 0 0" lines; ours becomes a cgroup line. */
static int rewrite_mounts(struct text *in, struct text *out, const char *mount)
{
	char *line, *save = NULL;

	for (line = strtok_r(in->buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char point[PATH_MAX], raw[PATH_MAX], fstype[256], opts[1024];

		if (sscanf(line, "%*s %4095s %255s %1023s", raw, fstype, opts) == 3) {
			strcpy(point, raw);
			unescape(point);
			if (is_ours(point, fstype, mount)) {
				text_str(out, "cgroup ");
				text_str(out, raw);
				text_str(out, " cgroup ");
				generic_options(opts, out);
				text_str(out, ",ioasids 0 0\n");
				continue;
			}
		}
		text_str(out, line);
		text_str(out, "\n");
	}
	return 0;
}

/* /proc/PID/mountinfo: "ID PARENT MAJ:MIN ROOT POINT OPTS [TAGS] - TYPE SOURCE SUPER"; ours
 * keeps its first part and gets "- cgroup cgroup rw,ioasids". */
static int rewrite_mountinfo(struct text *in, struct text *out, const char *mount)
{
	char *line, *save = NULL;

	for (line = strtok_r(in->buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char point[PATH_MAX], fstype[256], super[1024];
		char *dash = strstr(line, " - ");

		if (dash && sscanf(line, "%*s %*s %*s %*s %4095s", point) == 1 &&
		    sscanf(dash + 3, "%255s %*s %1023s", fstype, super) == 2) {
			unescape(point);
			if (is_ours(point, fstype, mount)) {
				text_add(out, line, dash - line);
				text_str(out, " - cgroup cgroup ");
				text_str(out, strncmp(super, "ro", 2) || (super[2] && super[2] != ',')
						      ? "rw" : "ro");
				text_str(out, ",ioasids\n");
				continue;
			}
		}
		text_str(out, line);
		text_str(out, "\n");
	}
	return 0;
}

/* /proc/cgroups: the kernel's lines and "ioasids ID NUM_CGROUPS 1". */
static int rewrite_cgroups(struct text *in, struct text *out, const char *mount)
{
	char line[64], dir[PATH_MAX];
	int n = 1;

	text_add(out, in->buf, in->len);
	snprintf(dir, sizeof(dir), "%s", mount);
	walk(dir, count_one, &n);
	snprintf(line, sizeof(line), "ioasids\t%d\t%d\t1\n", hierarchy_id(), n);
	text_str(out, line);
	return 0;
}

/* /proc/PID/cgroup: the kernel's lines (highest hierarchy id first) with ours on top. */
static int rewrite_cgroup(struct text *in, struct text *out, const char *mount, pid_t pid)
{
	struct member m = { .pid = pid };
	char dir[PATH_MAX], line[64];
	size_t root = strlen(mount);

	snprintf(dir, sizeof(dir), "%s", mount);
	snprintf(line, sizeof(line), "%d:ioasids:", hierarchy_id());
	text_str(out, line);
	if (walk(dir, has_member, &m) == 1)
		text_str(out, m.path + root);
	else
		text_str(out, "/");
	text_str(out, "\n");
	text_add(out, in->buf, in->len);
	return 0;
}

enum proc_kind { NOT_PROC, MOUNTS, MOUNTINFO, CGROUPS, CGROUP };

/* What @path names among the files rewritten, and for /proc/PID/cgroup the pid. */
static enum proc_kind classify(const char *path, pid_t *pid)
{
	const char *rest, *name;
	char *end;

	if (strncmp(path, "/proc/", 6))
		return NOT_PROC;
	rest = path + 6;
	if (!strcmp(rest, "cgroups"))
		return CGROUPS;
	if (!strcmp(rest, "mounts"))
		return MOUNTS;
	if (!strncmp(rest, "self/", 5)) {
		*pid = getpid();
		name = rest + 5;
	} else if (!strncmp(rest, "thread-self/", 12)) {
		*pid = getpid();
		name = rest + 12;
	} else if (*rest >= '1' && *rest <= '9') {
		*pid = (pid_t)strtol(rest, &end, 10);
		if (*end != '/')
			return NOT_PROC;
		name = end + 1;
	} else {
		return NOT_PROC;
	}
	if (!strncmp(name, "task/", 5)) {  /* threads are members through their process */
		strtol(name + 5, &end, 10);
		if (end == name + 5 || *end != '/')
			return NOT_PROC;
		name = end + 1;
	}
	if (!strcmp(name, "mounts"))
		return MOUNTS;
	if (!strcmp(name, "mountinfo"))
		return MOUNTINFO;
	if (!strcmp(name, "cgroup"))
		return CGROUP;
	return NOT_PROC;
}

/* A descriptor reading the rewritten file, or -2 when @path is not rewritten (or the hierarchy
 * is not mounted): the caller opens the real file then. -1 with errno as the real open's. */
static int open_proc(const char *path, int flags)
{
	enum proc_kind kind;
	struct text in = { 0 }, out = { 0 };
	char mount[PATH_MAX];
	pid_t pid = 0;
	int fd = -2;

	if ((flags & O_ACCMODE) != O_RDONLY)
		return -2;
	kind = classify(path, &pid);
	if (kind == NOT_PROC || find_mount(mount))
		return -2;
	if (slurp(path, &in))
		return -1;
	switch (kind) {
	case MOUNTS:
		rewrite_mounts(&in, &out, mount);
		break;
	case MOUNTINFO:
		rewrite_mountinfo(&in, &out, mount);
		break;
	case CGROUPS:
		rewrite_cgroups(&in, &out, mount);
		break;
	default:
		rewrite_cgroup(&in, &out, mount, pid);
		break;
	}
	fd = memfd_create("ioasids-proc", (flags & O_CLOEXEC) ? MFD_CLOEXEC : 0);
	if (fd >= 0) {
		size_t done = 0;

		while (done < out.len) {
			ssize_t n = write(fd, out.buf + done, out.len - done);

			if (n <= 0)
				break;
			done += n;
		}
		lseek(fd, 0, SEEK_SET);
	}
	free(in.buf);
	free(out.buf);
	return fd;
}

/* /etc/mtab, where it is the usual symbolic link to the kernel's mount list, reads as that. */
static int open_mtab(int flags)
{
	static const char *const links[] = { "proc/self/mounts", "proc/mounts", NULL };
	char target[64];
	ssize_t n = readlink("/etc/mtab", target, sizeof(target) - 1);

	if (n <= 0)
		return -2;
	target[n] = '\0';
	for (const char *const *l = links; *l; l++) {
		size_t len = strlen(*l);

		if ((size_t)n >= len && !strcmp(target + n - len, *l))
			return open_proc("/proc/self/mounts", flags);
	}
	return -2;
}

/* ------------------------------------------------------------------ /dev/ioasid */

/* One ioctl at a time on a connection: threads of a process by the mutex, processes sharing
 * an inherited descriptor by a POSIX lock on it (taken only once this process has forked or
 * was forked, since before that nobody else can hold the descriptor). */
static pthread_mutex_t wire = PTHREAD_MUTEX_INITIALIZER;
static int forked;

static void before_fork(void)
{
	pthread_mutex_lock(&wire);
}

static void after_fork(void)
{
	forked = 1;
	pthread_mutex_unlock(&wire);
}

__attribute__((constructor)) static void fork_handlers(void)
{
	pthread_atfork(before_fork, after_fork, after_fork);
}

#define FD_SLOTS 4096
/* The socket inode of each descriptor opened as /dev/ioasid here (0: none). A descriptor that
 * is not listed (dup'ed, inherited over exec) is recognised by its peer's name instead. */
static ino_t ioasid_fds[FD_SLOTS];

static const char *socket_path(char *buf, size_t size)
{
	const char *dir = getenv("IOASIDS_RUNTIME_DIR");

	snprintf(buf, size, "%s/" SOCKET_NAME, dir && *dir ? dir : DEFAULT_RUNTIME_DIR);
	return buf;
}

static int read_full(int fd, void *buf, size_t n)
{
	char *p = buf;

	while (n) {
		ssize_t r = read(fd, p, n);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		p += r;
		n -= r;
	}
	return 0;
}

struct reply {
	int32_t ret;
	uint32_t len;
};

/* Reads one reply: its header into @rep, up to @cap bytes of data into @data (the rest is
 * skipped). 0, or -1 when the connection broke. */
static int read_reply(int fd, struct reply *rep, void *data, size_t cap)
{
	char sink[512];
	size_t left;

	if (read_full(fd, rep, sizeof(*rep)) || rep->len > MAX_REPLY)
		return -1;
	left = rep->len;
	if (cap > left)
		cap = left;
	if (cap && read_full(fd, data, cap))
		return -1;
	left -= cap;
	while (left) {
		size_t n = left < sizeof(sink) ? left : sizeof(sink);

		if (read_full(fd, sink, n))
			return -1;
		left -= n;
	}
	return 0;
}

/* open("/dev/ioasid"): a connection to the daemon, whose greeting is open()'s result. */
static int open_ioasid(int flags)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct reply greeting;
	struct stat st;
	int fd, err;

	socket_path(sa.sun_path, sizeof(sa.sun_path));
	fd = socket(AF_UNIX, SOCK_STREAM | ((flags & O_CLOEXEC) ? SOCK_CLOEXEC : 0), 0);
	if (fd < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa))) {
		close(fd);
		errno = ENODEV;  /* no daemon: as a kernel without the device */
		return -1;
	}
	if (read_reply(fd, &greeting, NULL, 0)) {
		close(fd);
		errno = ENODEV;
		return -1;
	}
	if (greeting.ret < 0) {
		close(fd);
		errno = -greeting.ret;
		return -1;
	}
	if (fd < FD_SLOTS) {
		err = errno;
		if (!fstat(fd, &st))
			ioasid_fds[fd] = st.st_ino;
		errno = err;
	}
	return fd;
}

/* Whether @fd is a connection to an ioasidsd socket (one not opened here: dup'ed, inherited). */
static int is_ioasid_socket(int fd)
{
	struct sockaddr_un sa;
	socklen_t len = sizeof(sa);
	size_t n, tail = strlen("/" SOCKET_NAME);
	int err = errno, ok;

	memset(&sa, 0, sizeof(sa));
	ok = !getpeername(fd, (struct sockaddr *)&sa, &len) && sa.sun_family == AF_UNIX &&
	     len > offsetof(struct sockaddr_un, sun_path);
	if (ok) {
		n = strnlen(sa.sun_path, len - offsetof(struct sockaddr_un, sun_path));
		ok = n >= tail && !memcmp(sa.sun_path + n - tail, "/" SOCKET_NAME, tail);
	}
	errno = err;
	return ok;
}

/* Whether @fd is listed as opened here and still is that socket. */
static int listed(int fd)
{
	struct stat st;

	if (fd < 0 || fd >= FD_SLOTS || !ioasid_fds[fd])
		return 0;
	if (!fstat(fd, &st) && S_ISSOCK(st.st_mode) && st.st_ino == ioasid_fds[fd])
		return 1;
	ioasid_fds[fd] = 0;  /* closed behind our back and reused */
	return 0;
}

static int fail(int err)
{
	errno = err;
	return -1;
}

/* Copies @n bytes at @addr of this process into @buf without touching them here: EFAULT for a
 * bad address instead of a crash. */
static int peek(void *buf, const void *addr, size_t n)
{
	struct iovec local = { buf, n }, remote = { (void *)addr, n };

	if (process_vm_readv(getpid(), &local, 1, &remote, 1, 0) == (ssize_t)n)
		return 0;
	return -1;
}

static int poke(void *addr, const void *buf, size_t n)
{
	struct iovec local = { (void *)buf, n }, remote = { addr, n };

	if (process_vm_writev(getpid(), &local, 1, &remote, 1, 0) == (ssize_t)n)
		return 0;
	return -1;
}

/* Bytes of argument command @cmd reads from @arg (the kernel's copy_from_user); -1 (EFAULT) if
 * the variable part's count cannot be read. Unknown commands read nothing. */
static long arg_size(unsigned long cmd, const void *arg)
{
	uint32_t count;

	switch (cmd) {
	case IOASID_GET_API_VERSION:
		return 0;
	case IOASID_GET_INFO:
		return sizeof(struct ioasid_info);
	case IOASID_REQUEST_ALLOC:
		return sizeof(struct ioasid_alloc_request);
	case IOASID_REQUEST_FREE:
		return sizeof(int);
	case IOASID_REQUEST_ALLOC_BATCH:
		return sizeof(struct ioasid_alloc_batch);
	case IOASID_REQUEST_FREE_BATCH:
		if (peek(&count, (const char *)arg + 8, sizeof(count)))
			return -1;
		if (count > IOASID_BATCH_MAX)  /* the daemon refuses it from the header alone */
			count = 0;
		return sizeof(struct ioasid_free_batch) + 4L * count;
	case IOASID_BIND_GPASID:
		return sizeof(struct ioasid_bind_gpasid);
	case IOASID_UNBIND_GPASID:
		return sizeof(struct ioasid_unbind_gpasid);
	default:
		return 0;
	}
}

/* Where the reply's output goes (copy_to_user), and how much of it fits. */
static void *out_place(unsigned long cmd, void *arg, size_t *cap)
{
	uint32_t count;

	switch (cmd) {
	case IOASID_GET_INFO:
		*cap = sizeof(struct ioasid_info);
		return arg;
	case IOASID_REQUEST_ALLOC_BATCH:
		if (peek(&count, (char *)arg + 16, sizeof(count)) || count > IOASID_BATCH_MAX)
			count = 0;
		*cap = 4L * count;
		return (char *)arg + sizeof(struct ioasid_alloc_batch);
	default:
		*cap = 0;
		return NULL;
	}
}

/* One ioctl carried over the connection @fd. */
static int forward(int fd, unsigned long cmd, void *arg)
{
	struct { uint32_t cmd, len; } hdr;
	struct iovec iov[2];
	struct msghdr msg = { .msg_iov = iov };
	struct reply rep;
	struct flock lk = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
	size_t cap = 0;
	void *out, *data = NULL;
	long len = arg_size(cmd, arg);
	int ret, err = 0, locked = 0;

	if (len < 0)
		return fail(EFAULT);
	out = out_place(cmd, arg, &cap);
	if (cap) {  /* the output must be writable before the daemon acts on the request */
		data = malloc(cap);
		if (!data)
			return fail(ENOMEM);
		if (peek(data, out, cap) || poke(out, data, cap)) {
			free(data);
			return fail(EFAULT);
		}
	}
	hdr.cmd = (uint32_t)cmd;
	hdr.len = (uint32_t)len;
	iov[0] = (struct iovec){ &hdr, sizeof(hdr) };
	iov[1] = (struct iovec){ arg, (size_t)len };
	msg.msg_iovlen = len ? 2 : 1;

	pthread_mutex_lock(&wire);
	if (forked) {
		while ((ret = fcntl(fd, F_SETLKW, &lk)) && errno == EINTR)
			;
		locked = !ret;
	}
	/* the kernel copies the argument: a bad pointer fails here with EFAULT, nothing sent */
	do
		ret = (int)sendmsg(fd, &msg, MSG_NOSIGNAL);
	while (ret < 0 && errno == EINTR);
	if (ret < 0)
		err = errno == EFAULT ? EFAULT : EIO;
	else if (ret != (int)(sizeof(hdr) + len))
		err = EIO;  /* a partial request: the connection cannot be trusted any more */
	else if (read_reply(fd, &rep, data, cap))
		err = EIO;
	if (locked) {
		lk.l_type = F_UNLCK;
		fcntl(fd, F_SETLK, &lk);
	}
	pthread_mutex_unlock(&wire);

	if (!err && rep.ret >= 0 && cap && rep.len) {
		if (rep.len < cap)
			cap = rep.len;
		if (poke(out, data, cap))
			err = EFAULT;
	}
	free(data);
	if (err)
		return fail(err);
	if (rep.ret < 0)
		return fail(-rep.ret);
	return rep.ret;
}

/* ------------------------------------------------------------------ the interposed calls */

static int wants_mode(int flags)
{
	return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE;
}

/* Our answer to opening @path, or -2 to let libc open it. */
static int intercept(const char *path, int flags)
{
	if (!path || path[0] != '/')
		return -2;
	if (path[1] == 'p')
		return open_proc(path, flags);
	if (path[1] == 'd' && !strcmp(path, DEV_IOASID))
		return open_ioasid(flags);
	if (path[1] == 'e' && !strcmp(path, "/etc/mtab"))
		return open_mtab(flags);
	return -2;
}

static int do_open(const char *path, int flags, mode_t mode)
{
	int fd;

	if (!real_open)
		resolve();
	fd = intercept(path, flags);
	if (fd != -2)
		return fd;
	return real_open(path, flags, mode);
}

static int do_openat(int dirfd, const char *path, int flags, mode_t mode)
{
	int fd;

	if (!real_openat)
		resolve();
	fd = intercept(path, flags);  /* absolute paths only: dirfd does not matter for them */
	if (fd != -2)
		return fd;
	return real_openat(dirfd, path, flags, mode);
}

#define MODE_ARG(flags, mode)                         \
	do {                                          \
		if (wants_mode(flags)) {              \
			va_list ap;                   \
			va_start(ap, flags);          \
			mode = va_arg(ap, mode_t);    \
			va_end(ap);                   \
		}                                     \
	} while (0)

EXPORT int open(const char *path, int flags, ...)
{
	mode_t mode = 0;

	MODE_ARG(flags, mode);
	return do_open(path, flags, mode);
}

EXPORT int open64(const char *path, int flags, ...)
{
	mode_t mode = 0;

	MODE_ARG(flags, mode);
	return do_open(path, flags, mode);
}

EXPORT int __open_2(const char *path, int flags)
{
	return do_open(path, flags, 0);
}

EXPORT int __open64_2(const char *path, int flags)
{
	return do_open(path, flags, 0);
}

EXPORT int openat(int dirfd, const char *path, int flags, ...)
{
	mode_t mode = 0;

	MODE_ARG(flags, mode);
	return do_openat(dirfd, path, flags, mode);
}

EXPORT int openat64(int dirfd, const char *path, int flags, ...)
{
	mode_t mode = 0;

	MODE_ARG(flags, mode);
	return do_openat(dirfd, path, flags, mode);
}

EXPORT int __openat_2(int dirfd, const char *path, int flags)
{
	return do_openat(dirfd, path, flags, 0);
}

EXPORT int __openat64_2(int dirfd, const char *path, int flags)
{
	return do_openat(dirfd, path, flags, 0);
}

/* fopen() and setmntent() open inside libc, past the interposed open(): they are wrapped
 * themselves. Only read modes are rewritten. */
static FILE *do_fopen(const char *path, const char *mode)
{
	int fd;
	FILE *f;

	if (!real_fopen)
		resolve();
	if (!mode || mode[0] != 'r' || strchr(mode, '+'))
		return real_fopen(path, mode);
	fd = intercept(path, O_RDONLY | (strchr(mode, 'e') ? O_CLOEXEC : 0));
	if (fd == -2)
		return real_fopen(path, mode);
	if (fd < 0)
		return NULL;
	f = fdopen(fd, mode);
	if (!f) {
		int err = errno;

		close(fd);
		errno = err;
	}
	return f;
}

EXPORT FILE *fopen(const char *path, const char *mode)
{
	return do_fopen(path, mode);
}

EXPORT FILE *fopen64(const char *path, const char *mode)
{
	return do_fopen(path, mode);
}

EXPORT FILE *setmntent(const char *path, const char *mode)
{
	char m[8];

	snprintf(m, sizeof(m), "%se", mode ? mode : "r");  /* as libc: close on exec */
	return do_fopen(path, m);
}

EXPORT FILE *__setmntent(const char *path, const char *mode)
{
	return setmntent(path, mode);
}

EXPORT int ioctl(int fd, unsigned long request, ...)
{
	va_list ap;
	void *arg;
	int ret, err;

	va_start(ap, request);
	arg = va_arg(ap, void *);
	va_end(ap);
	if (!real_ioctl)
		resolve();
	if (listed(fd))
		return forward(fd, request, arg);
	ret = real_ioctl(fd, request, arg);
	if (ret < 0 && errno == ENOTTY && _IOC_TYPE(request) == IOASID_TYPE) {
		/* a socket knows no such request: is it a connection to the daemon? */
		err = errno;
		if (is_ioasid_socket(fd))
			return forward(fd, request, arg);
		errno = err;
	}
	return ret;
}
