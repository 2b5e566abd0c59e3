/*
 * The `open` of the cgroup file system in C, so that an open costs no Python call.
 *
 * Contract (cgroupfs/fastopen.py loads this and installs fastopen_open as the mount's `open`):
 * - fi->fh is the opener's credentials, uid | gid << 32, as cgroupfs.operations.opener_handle
 *   packs them (from fuse_get_context(), the opener's fsuid and fsgid).
 * - A file whose name is in the "python" list is opened by the Python handler registered for
 *   its mount (fastopen_register, keyed by the mount's struct fuse: it needs a handle of its
 *   own, such as cgroup.events); -ENODEV if none is registered.
 * - A file whose name is in the "direct" list (the process lists), and every open for writing,
 *   is direct_io; any other file opened read-only keeps the kernel's page cache (keep_cache).
 * - It never fails, as the Python handler: the kernel has found the file and checked its mode.
 * Lists are names separated by NUL bytes, ending with an empty name; they are copied.
 */
#define FUSE_USE_VERSION 31

#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#define LIST_MAX 1024
#define MOUNTS_MAX 64

typedef int (*open_handler)(const char *path, struct fuse_file_info *fi);

static struct {
	void *fuse;
	open_handler open;
} mounts[MOUNTS_MAX];
static pthread_mutex_t mounts_lock = PTHREAD_MUTEX_INITIALIZER;
static char python_names[LIST_MAX];
static char direct_names[LIST_MAX];

static int listed(const char *list, const char *name)
{
	for (const char *n = list; *n; n += strlen(n) + 1)
		if (strcmp(n, name) == 0)
			return 1;
	return 0;
}

static int copy_list(char *dst, const char *src, size_t len)
{
	if (len + 2 > LIST_MAX)
		return -1;
	memcpy(dst, src, len);
	dst[len] = '\0';
	dst[len + 1] = '\0';
	return 0;
}

int fastopen_configure(const char *python, size_t python_len, const char *direct,
		       size_t direct_len)
{
	if (copy_list(python_names, python, python_len) || copy_list(direct_names, direct, direct_len))
		return -1;
	return 0;
}

/* The Python open of the mount served by `fuse`: 0, or -1 when MOUNTS_MAX are registered. */
int fastopen_register(void *fuse, open_handler handler)
{
	int i, done = -1;

	pthread_mutex_lock(&mounts_lock);
	for (i = 0; i < MOUNTS_MAX && done < 0; i++) {
		if (mounts[i].fuse == NULL || mounts[i].fuse == fuse) {
			mounts[i].fuse = fuse;
			mounts[i].open = handler;
			done = 0;
		}
	}
	pthread_mutex_unlock(&mounts_lock);
	return done;
}

void fastopen_unregister(void *fuse)
{
	int i;

	pthread_mutex_lock(&mounts_lock);
	for (i = 0; i < MOUNTS_MAX; i++)
		if (mounts[i].fuse == fuse)
			mounts[i].fuse = NULL;
	pthread_mutex_unlock(&mounts_lock);
}

static open_handler python_open_of(void *fuse)
{
	open_handler found = NULL;
	int i;

	pthread_mutex_lock(&mounts_lock);
	for (i = 0; i < MOUNTS_MAX && !found; i++)
		if (mounts[i].fuse == fuse)
			found = mounts[i].open;
	pthread_mutex_unlock(&mounts_lock);
	return found;
}

int fastopen_open(const char *path, struct fuse_file_info *fi)
{
	const char *slash = strrchr(path, '/');
	const char *name = slash ? slash + 1 : path;
	struct fuse_context *ctx = fuse_get_context();

	if (listed(python_names, name)) {
		open_handler handler = python_open_of(ctx->fuse);

		return handler ? handler(path, fi) : -ENODEV;
	}
	fi->fh = (uint64_t)ctx->uid | (uint64_t)ctx->gid << 32;
	if ((fi->flags & O_ACCMODE) == O_RDONLY && !listed(direct_names, name))
		fi->keep_cache = 1;
	else
		fi->direct_io = 1;
	return 0;
}
