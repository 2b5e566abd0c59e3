/*
 * The mount's C parts: its `open`, so that an open costs no Python call, and its loop, so that
 * the file system hears that the loop ended before libfuse tears the session down.
 *
 * Contract of fastopen_main (cgroupfs/fastopen.py calls it where mfusepy calls fuse_main_real,
 * with the same arguments and the same result, 0 or 1):
 * - It mounts, serves with libfuse's multi-threaded loop (or the single-threaded one for -s)
 *   in the foreground until the session ends (an unmount from outside, a signal, fuse_exit),
 *   then calls loop_ended(), then unmounts and destroys the session. A file system that sends
 *   notifications (fuse_invalidate_path) from threads of its own stops in loop_ended(): once
 *   it returns, libfuse frees its node table, closes the device and frees the struct fuse, and
 *   a notification after that reads freed memory or writes into a reused descriptor.
 * - loop_ended() runs on the calling thread with no libfuse worker left; it may block.
 *
 * Contract of the open (cgroupfs/fastopen.py installs fastopen_open as the mount's `open`):
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
#define FUSE_USE_VERSION 312	/* the loop's configuration (libfuse 3.12) */

#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
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

typedef void (*loop_ended_handler)(void);

int fastopen_main(int argc, char *argv[], const struct fuse_operations *op, size_t op_size,
		  void *user_data, loop_ended_handler loop_ended)
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_cmdline_opts opts;
	struct fuse_loop_config *config;
	struct fuse_session *se;
	struct fuse *fuse;
	int res = 1;

	memset(&opts, 0, sizeof(opts));
	if (fuse_parse_cmdline(&args, &opts) != 0)
		return 1;
	if (opts.mountpoint == NULL || !opts.foreground || opts.show_help || opts.show_version)
		goto out_args;	/* mfusepy always names a mount point and asks for -f */
	fuse = fuse_new(&args, op, op_size, user_data);
	if (fuse == NULL)
		goto out_args;
	if (fuse_mount(fuse, opts.mountpoint) != 0)
		goto out_fuse;
	se = fuse_get_session(fuse);
	if (fuse_set_signal_handlers(se) != 0)
		goto out_unmount;
	if (opts.singlethread) {
		res = fuse_loop(fuse);
	} else {
		config = fuse_loop_cfg_create();
		if (config == NULL) {
			res = 1;
		} else {
			fuse_loop_cfg_set_clone_fd(config, opts.clone_fd);
			if (opts.max_idle_threads != UINT_MAX)	/* set only when asked for */
				fuse_loop_cfg_set_idle_threads(config, opts.max_idle_threads);
			fuse_loop_cfg_set_max_threads(config, opts.max_threads);
			res = fuse_loop_mt(fuse, config);
			fuse_loop_cfg_destroy(config);
		}
	}
	loop_ended();
	fuse_remove_signal_handlers(se);
	res = res != 0;
out_unmount:
	fuse_unmount(fuse);
out_fuse:
	fuse_destroy(fuse);
out_args:
	free(opts.mountpoint);
	fuse_opt_free_args(&args);
	return res;
}
