/*
 * The reference of bench/bench_cgroupfs.py: a minimal libfuse3 (high-level API) file system
 * holding one file, "/value", that keeps the last write and reads it back.
 *
 * Contract: default libfuse options plus direct_io (every open of the file is direct_io, as
 * LXCFS serves its files), so every read and write reaches this process; open, read, write and
 * truncate are served, nothing else is kept. Written for the bench, in the simplest way a C
 * file system serves one small file: one buffer under one mutex.
 *
 * Usage: onefile_fuse MOUNTPOINT [libfuse options] (the bench adds -f).
 */
#define FUSE_USE_VERSION 31

#include <errno.h>
#include <fuse.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>

#define VALUE_PATH "/value"
#define VALUE_MAX 4096

static char value[VALUE_MAX] = "0\n";
static size_t value_len = 2;
static pthread_mutex_t value_lock = PTHREAD_MUTEX_INITIALIZER;

static void *onefile_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
	(void)conn;
	cfg->direct_io = 1;
	return NULL;
}

static int onefile_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	(void)fi;
	memset(st, 0, sizeof(*st));
	if (strcmp(path, "/") == 0) {
		st->st_mode = S_IFDIR | 0755;
		st->st_nlink = 2;
		return 0;
	}
	if (strcmp(path, VALUE_PATH) != 0)
		return -ENOENT;
	st->st_mode = S_IFREG | 0644;
	st->st_nlink = 1;
	return 0;
}

static int onefile_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t offset,
			   struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
	(void)offset;
	(void)fi;
	(void)flags;
	if (strcmp(path, "/") != 0)
		return -ENOTDIR;
	fill(buf, ".", NULL, 0, 0);
	fill(buf, "..", NULL, 0, 0);
	fill(buf, VALUE_PATH + 1, NULL, 0, 0);
	return 0;
}

static int onefile_open(const char *path, struct fuse_file_info *fi)
{
	if (strcmp(path, VALUE_PATH) != 0)
		return -ENOENT;
	fi->direct_io = 1;
	return 0;
}

static int onefile_read(const char *path, char *buf, size_t size, off_t offset,
			struct fuse_file_info *fi)
{
	size_t n = 0;

	(void)path;
	(void)fi;
	pthread_mutex_lock(&value_lock);
	if ((size_t)offset < value_len) {
		n = value_len - (size_t)offset;
		if (n > size)
			n = size;
		memcpy(buf, value + offset, n);
	}
	pthread_mutex_unlock(&value_lock);
	return (int)n;
}

static int onefile_write(const char *path, const char *buf, size_t size, off_t offset,
			 struct fuse_file_info *fi)
{
	(void)path;
	(void)offset;
	(void)fi;
	if (size > VALUE_MAX)
		return -E2BIG;
	pthread_mutex_lock(&value_lock);
	memcpy(value, buf, size);
	value_len = size;
	pthread_mutex_unlock(&value_lock);
	return (int)size;
}

static int onefile_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
	(void)fi;
	(void)size;
	return strcmp(path, VALUE_PATH) == 0 ? 0 : -ENOENT;
}

static const struct fuse_operations onefile_ops = {
	.init = onefile_init,
	.getattr = onefile_getattr,
	.readdir = onefile_readdir,
	.open = onefile_open,
	.read = onefile_read,
	.write = onefile_write,
	.truncate = onefile_truncate,
};

int main(int argc, char *argv[])
{
	return fuse_main(argc, argv, &onefile_ops, NULL);
}
