/*
 * The mount's C parts: its `open`, so that an open costs no Python call; its `getattr` and
 * `read`, answered from what the server published; and its loop, so that the file system
 * hears that the loop ended before libfuse tears the session down.
 *
 * Contract of fastopen_main (cgroupfs/fastopen.py calls it where mfusepy calls fuse_main_real,
 * with the same arguments and the same result, 0 or 1):
 * - It mounts, serves with libfuse's multi-threaded loop (or the single-threaded one for -s)
 *   in the foreground until the session ends (an unmount from outside, a signal, fuse_exit),
 *   then calls loop_ended(), then unmounts, forgets the mount's registration
 *   (fastopen_register) and destroys the session: a struct fuse is never registered once freed, so a
 *   mount made later at the same address is never served another mount's handlers, nor loses
 *   its own to the end of this one. A file system that sends
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
 *   is direct_io; any other file opened read-only keeps the kernel's page cache (keep_cache),
 *   and if the table has its text (at most a page) not pushed since it was published, the
 *   open pushes it into the page cache first (push_text), so the read that follows costs no
 *   request; a push that may have raced with a change is dropped again.
 * - It never fails, as the Python handler: the kernel has found the file and checked its mode.
 * Lists are names separated by NUL bytes, ending with an empty name; they are copied.
 *
 * Contract of the published table (one per mount, fastopen_table_new; cgroupfs/kernelcache.py
 * keeps it): Python publishes the attributes of a path, and the text of a file, when it tells
 * them to the kernel; fastopen_getattr and fastopen_read answer from the table with no Python
 * call, and hand what the table lacks to the Python handlers (registered with the mount).
 * - An entry is only ever published for a path the kernel cache holds, and forgotten
 *   (fastopen_forget) under the model's lock when a change may alter it, before the change
 *   returns: so the table never answers with a value older than the last change.
 * - A read is answered from the table only for an entry with text and a handle that is not
 *   cgroup.events' (whose reads Python must see); any offset reads the published text.
 * - A write whose bytes are exactly the published text of a file whose name the table lists
 *   as unchanged by a rewrite (fastopen_table_rewrites: a write of its current text leaves the
 *   model as it is, with nothing to store and nothing to refuse) is answered in C, as written
 *   in full, with no Python call (and the text may be pushed again at the next open: the
 *   kernel drops the pages of a file written directly); any other write goes to the Python
 *   write handler registered with the mount, with the path, the bytes, the handle (the
 *   opener) and the writing thread.
 * - All functions are thread-safe; the table's mutex is held only to copy or compare an entry.
 *
 * Python's thread states: a ctypes callback on a thread Python does not know creates a thread
 * state and deletes it again when it returns, which costs more than a small handler. The C
 * handlers give each libfuse worker a thread state of its own, once, kept until the worker
 * ends (keep_python_thread; a thread-specific key's destructor gives it back, unless Python is
 * finalizing). Python's C API is found in the process that loaded this object (weak symbols:
 * without them, nothing is kept).
 */
#define FUSE_USE_VERSION 312	/* the loop's configuration (libfuse 3.12) */
#define _GNU_SOURCE		/* statx */

#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define LIST_MAX 1024
#define MOUNTS_MAX 64

typedef int (*open_handler)(const char *path, struct fuse_file_info *fi);
typedef int (*getattr_handler)(const char *path, struct stat *st, struct fuse_file_info *fi);
typedef int (*read_handler)(const char *path, char *buf, size_t size, off_t offset,
			    struct fuse_file_info *fi);
typedef int (*write_handler)(const char *path, const char *buf, size_t size, uint64_t fh,
			     int32_t pid);

#define EVENTS_HANDLE (1ULL << 63)	/* cgroupfs.operations.EVENTS_HANDLE */
#define TABLE_MIN 1024

struct entry {
	struct entry *next;
	uint64_t hash;
	uint32_t mode, nlink, uid, gid;
	int64_t atime, mtime, ctime;	/* nanoseconds */
	int64_t size;
	int32_t text_len;		/* -1: attributes only */
	uint32_t path_len;
	uint64_t seq;			/* the table's publication count when published */
	int pushed;			/* its text was pushed into the page cache (push_text) */
	char data[];			/* the path, then the text */
};

struct table {
	pthread_mutex_t lock;
	struct entry **buckets;
	size_t nbuckets, count;
	uint64_t published;		/* publications so far (each entry's seq) */
	uint64_t served[4];		/* getattrs, reads and writes answered from the table, texts
					 * pushed into the page cache at open */
	char rewrites[LIST_MAX];	/* names a write of their text leaves unchanged */
};

static struct {
	void *fuse;
	open_handler open;
	struct table *table;
	getattr_handler getattr;
	read_handler read;
	write_handler write;
} mounts[MOUNTS_MAX];
static pthread_mutex_t mounts_lock = PTHREAD_MUTEX_INITIALIZER;
static char python_names[LIST_MAX];

/* Python's C API, from the interpreter that loaded this object (weak: absent elsewhere). */
extern int PyGILState_Ensure(void) __attribute__((weak));
extern void PyGILState_Release(int state) __attribute__((weak));
extern void *PyEval_SaveThread(void) __attribute__((weak));
extern void PyEval_RestoreThread(void *tstate) __attribute__((weak));
extern int Py_IsInitialized(void) __attribute__((weak));
extern int _Py_IsFinalizing(void) __attribute__((weak));
extern void PyThreadState_Clear(void *tstate) __attribute__((weak));
extern void PyThreadState_DeleteCurrent(void) __attribute__((weak));

static pthread_key_t python_thread_key;
static pthread_once_t python_thread_once = PTHREAD_ONCE_INIT;
static __thread int python_thread_kept;

struct kept_thread {
	void *tstate;
	int state;
};

static void give_back_python_thread(void *data)
{
	struct kept_thread *kept = data;

	/* Python's own key may already be cleared (destructors run in no set order): the
	 * thread state is deleted directly, not through PyGILState_Release */
	if (Py_IsInitialized() && !(_Py_IsFinalizing && _Py_IsFinalizing())) {
		PyEval_RestoreThread(kept->tstate);
		PyThreadState_Clear(kept->tstate);
		PyThreadState_DeleteCurrent();	/* and lets the GIL go */
	}
	free(kept);
}

static void make_python_thread_key(void)
{
	if (pthread_key_create(&python_thread_key, give_back_python_thread) != 0)
		python_thread_kept = -1;
}

/* Give the calling libfuse worker a Python thread state for its lifetime (see the top). */
static void keep_python_thread(void)
{
	struct kept_thread *kept;

	if (python_thread_kept)
		return;
	python_thread_kept = 1;
	if (!PyGILState_Ensure || !PyGILState_Release || !PyEval_SaveThread ||
	    !PyEval_RestoreThread || !PyThreadState_Clear || !PyThreadState_DeleteCurrent ||
	    !Py_IsInitialized || !Py_IsInitialized())
		return;
	pthread_once(&python_thread_once, make_python_thread_key);
	kept = malloc(sizeof(*kept));
	if (kept == NULL)
		return;
	kept->state = PyGILState_Ensure();
	kept->tstate = PyEval_SaveThread();
	if (pthread_setspecific(python_thread_key, kept) != 0) {
		PyEval_RestoreThread(kept->tstate);
		PyGILState_Release(kept->state);
		free(kept);
	}
}
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

/*
 * The Python handlers and the table of the mount served by `fuse`: 0, or -1 when MOUNTS_MAX
 * are registered. `table` may be NULL (getattr, read and write then always go to Python).
 * Registering `fuse` again replaces what it had.
 */
int fastopen_register(void *fuse, open_handler handler, getattr_handler getattr,
		      read_handler read, write_handler write, struct table *table)
{
	int i, slot = -1;

	pthread_mutex_lock(&mounts_lock);
	for (i = 0; i < MOUNTS_MAX; i++) {
		if (mounts[i].fuse == fuse) {
			slot = i;
			break;
		}
		if (mounts[i].fuse == NULL && slot < 0)
			slot = i;
	}
	if (slot >= 0) {
		mounts[slot].fuse = fuse;
		mounts[slot].open = handler;
		mounts[slot].getattr = getattr;
		mounts[slot].read = read;
		mounts[slot].write = write;
		mounts[slot].table = table;
	}
	pthread_mutex_unlock(&mounts_lock);
	return slot >= 0 ? 0 : -1;
}

/* Whether `fuse` is registered (for tests: a mount's registration ends with its loop). */
int fastopen_registered(void *fuse)
{
	int i, found = 0;

	pthread_mutex_lock(&mounts_lock);
	for (i = 0; i < MOUNTS_MAX; i++)
		if (mounts[i].fuse == fuse)
			found = 1;
	pthread_mutex_unlock(&mounts_lock);
	return found;
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


/* ------------------------------------------------------------------ the published table */
static uint64_t hash_of(const char *path, size_t len)
{
	uint64_t h = 14695981039346656037ULL;	/* FNV-1a */

	for (size_t i = 0; i < len; i++)
		h = (h ^ (unsigned char)path[i]) * 1099511628211ULL;
	return h;
}

struct table *fastopen_table_new(void)
{
	struct table *t = calloc(1, sizeof(*t));

	if (t == NULL)
		return NULL;
	t->buckets = calloc(TABLE_MIN, sizeof(*t->buckets));
	if (t->buckets == NULL) {
		free(t);
		return NULL;
	}
	t->nbuckets = TABLE_MIN;
	pthread_mutex_init(&t->lock, NULL);
	return t;
}

static struct entry **slot_of(struct table *t, const char *path, size_t len, uint64_t h)
{
	struct entry **e = &t->buckets[h & (t->nbuckets - 1)];

	for (; *e; e = &(*e)->next)
		if ((*e)->hash == h && (*e)->path_len == len && memcmp((*e)->data, path, len) == 0)
			break;
	return e;
}

static void grow(struct table *t)
{
	size_t n = t->nbuckets * 2;
	struct entry **b = calloc(n, sizeof(*b));

	if (b == NULL)
		return;	/* longer chains, still correct */
	for (size_t i = 0; i < t->nbuckets; i++) {
		struct entry *e = t->buckets[i], *next;

		for (; e; e = next) {
			next = e->next;
			e->next = b[e->hash & (n - 1)];
			b[e->hash & (n - 1)] = e;
		}
	}
	free(t->buckets);
	t->buckets = b;
	t->nbuckets = n;
}

/* Forget every entry (the mount ended). */
void fastopen_table_clear(struct table *t)
{
	pthread_mutex_lock(&t->lock);
	for (size_t i = 0; i < t->nbuckets; i++) {
		struct entry *e = t->buckets[i], *next;

		for (; e; e = next) {
			next = e->next;
			free(e);
		}
		t->buckets[i] = NULL;
	}
	t->count = 0;
	pthread_mutex_unlock(&t->lock);
}

void fastopen_table_free(struct table *t)
{
	if (t == NULL)
		return;
	fastopen_table_clear(t);
	pthread_mutex_destroy(&t->lock);
	free(t->buckets);
	free(t);
}

/*
 * Publish `path`'s attributes (`stat`: mode, nlink, uid, gid, size, atime, mtime, ctime, in
 * that order, times in nanoseconds) and, with text_len >= 0, its text; replaces what was
 * published for it. 0, or -1 without memory (nothing published).
 */
int fastopen_publish(struct table *t, const char *path, size_t path_len, const int64_t *stat,
		     const char *text, int32_t text_len)
{
	size_t text_size = text_len > 0 ? (size_t)text_len : 0;
	struct entry *e = malloc(sizeof(*e) + path_len + text_size), **slot;
	uint64_t h = hash_of(path, path_len);

	if (e == NULL)
		return -1;
	e->hash = h;
	e->mode = (uint32_t)stat[0];
	e->nlink = (uint32_t)stat[1];
	e->uid = (uint32_t)stat[2];
	e->gid = (uint32_t)stat[3];
	e->size = stat[4];
	e->atime = stat[5];
	e->mtime = stat[6];
	e->ctime = stat[7];
	e->text_len = text_len;
	e->path_len = (uint32_t)path_len;
	e->pushed = 0;
	memcpy(e->data, path, path_len);
	if (text_size)
		memcpy(e->data + path_len, text, text_size);
	pthread_mutex_lock(&t->lock);
	e->seq = ++t->published;
	slot = slot_of(t, path, path_len, h);
	if (*slot) {
		struct entry *old = *slot;

		e->next = old->next;
		*slot = e;
		free(old);
	} else {
		e->next = NULL;
		*slot = e;
		if (++t->count > t->nbuckets)
			grow(t);
	}
	pthread_mutex_unlock(&t->lock);
	return 0;
}

/* Forget the entries of `paths` (NUL-terminated paths one after the other, `len` bytes). */
void fastopen_forget(struct table *t, const char *paths, size_t len)
{
	const char *p = paths, *end = paths + len;

	pthread_mutex_lock(&t->lock);
	while (p < end) {
		size_t n = strnlen(p, (size_t)(end - p));
		struct entry **slot = slot_of(t, p, n, hash_of(p, n));

		if (*slot) {
			struct entry *gone = *slot;

			*slot = gone->next;
			free(gone);
			t->count--;
		}
		p += n + 1;
	}
	pthread_mutex_unlock(&t->lock);
}

size_t fastopen_table_count(struct table *t)
{
	size_t n;

	pthread_mutex_lock(&t->lock);
	n = t->count;
	pthread_mutex_unlock(&t->lock);
	return n;
}

/* The getattrs (which 0), reads (1) or writes (2) answered from the table so far, or the
 * texts pushed into the page cache at open (3). */
uint64_t fastopen_table_served(struct table *t, int which)
{
	uint64_t n;

	if (which < 0 || which > 3)
		return 0;
	pthread_mutex_lock(&t->lock);
	n = t->served[which];
	pthread_mutex_unlock(&t->lock);
	return n;
}

/*
 * The names of the files of this mount that a write of exactly their published text leaves
 * unchanged (see the top), as fastopen_configure's lists; 0, or -1 for a list too long.
 */
int fastopen_table_rewrites(struct table *t, const char *names, size_t len)
{
	char copy[LIST_MAX];

	if (copy_list(copy, names, len))
		return -1;
	pthread_mutex_lock(&t->lock);
	memcpy(t->rewrites, copy, sizeof(copy));
	pthread_mutex_unlock(&t->lock);
	return 0;
}

struct handlers {
	struct table *table;
	getattr_handler getattr;
	read_handler read;
	write_handler write;
};

static struct handlers handlers_of(void *fuse)
{
	struct handlers found = { NULL, NULL, NULL, NULL };
	int i;

	pthread_mutex_lock(&mounts_lock);
	for (i = 0; i < MOUNTS_MAX; i++) {
		if (mounts[i].fuse == fuse) {
			found.table = mounts[i].table;
			found.getattr = mounts[i].getattr;
			found.read = mounts[i].read;
			found.write = mounts[i].write;
			break;
		}
	}
	pthread_mutex_unlock(&mounts_lock);
	return found;
}

static void set_time(struct timespec *ts, int64_t ns)
{
	ts->tv_sec = ns / 1000000000;
	ts->tv_nsec = ns % 1000000000;
}

int fastopen_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	struct handlers h = handlers_of(fuse_get_context()->fuse);

	keep_python_thread();
	if (h.table && path) {
		size_t n = strlen(path);
		struct entry *e;

		pthread_mutex_lock(&h.table->lock);
		e = *slot_of(h.table, path, n, hash_of(path, n));
		if (e) {
			memset(st, 0, sizeof(*st));
			st->st_mode = e->mode;
			st->st_nlink = e->nlink;
			st->st_uid = e->uid;
			st->st_gid = e->gid;
			st->st_size = e->size;
			set_time(&st->st_atim, e->atime);
			set_time(&st->st_mtim, e->mtime);
			set_time(&st->st_ctim, e->ctime);
			h.table->served[0]++;
		}
		pthread_mutex_unlock(&h.table->lock);
		if (e)
			return 0;
	}
	return h.getattr ? h.getattr(path, st, fi) : -ENODEV;
}

int fastopen_read(const char *path, char *buf, size_t size, off_t offset,
		  struct fuse_file_info *fi)
{
	struct handlers h = handlers_of(fuse_get_context()->fuse);

	keep_python_thread();
	if (h.table && path && !(fi->fh & EVENTS_HANDLE) && offset >= 0) {
		size_t n = strlen(path), len = 0;
		struct entry *e;
		int hit = 0;

		pthread_mutex_lock(&h.table->lock);
		e = *slot_of(h.table, path, n, hash_of(path, n));
		if (e && e->text_len >= 0) {
			if ((size_t)offset < (size_t)e->text_len) {
				len = (size_t)e->text_len - (size_t)offset;
				if (len > size)
					len = size;
				memcpy(buf, e->data + e->path_len + offset, len);
			}
			h.table->served[1]++;
			hit = 1;
		}
		pthread_mutex_unlock(&h.table->lock);
		if (hit)
			return (int)len;
	}
	return h.read ? h.read(path, buf, size, offset, fi) : -ENODEV;
}

int fastopen_write(const char *path, const char *buf, size_t size, off_t offset,
		   struct fuse_file_info *fi)
{
	struct fuse_context *ctx = fuse_get_context();
	struct handlers h = handlers_of(ctx->fuse);

	(void)offset;	/* each write is one value, whatever its offset */
	keep_python_thread();
	if (h.table && path && size && !(fi->fh & EVENTS_HANDLE)) {
		const char *slash = strrchr(path, '/');
		size_t n = strlen(path);
		struct entry *e;
		int same = 0;

		pthread_mutex_lock(&h.table->lock);
		if (listed(h.table->rewrites, slash ? slash + 1 : path)) {
			e = *slot_of(h.table, path, n, hash_of(path, n));
			if (e && e->text_len >= 0 && (size_t)e->text_len == size &&
			    memcmp(e->data + e->path_len, buf, size) == 0) {
				h.table->served[2]++;
				e->pushed = 0;	/* the kernel drops a page written directly */
				same = 1;
			}
		}
		pthread_mutex_unlock(&h.table->lock);
		if (same)
			return (int)size;
	}
	return h.write ? h.write(path, buf, size, fi->fh, ctx->pid) : -ENODEV;
}

/* ------------------------------------------------------------------ pushing texts at open */
static struct {
	void *fuse;
	char path[PATH_MAX];
	unsigned major, minor;	/* the mount's device (fastopen_set_device); 0, 0: not known */
} roots[MOUNTS_MAX];	/* each served mount's mount point (fastopen_main) */
static pthread_mutex_t roots_lock = PTHREAD_MUTEX_INITIALIZER;

static void set_root(void *fuse, const char *path, void *was)
{
	pthread_mutex_lock(&roots_lock);
	for (int i = 0; i < MOUNTS_MAX; i++) {
		if (roots[i].fuse == was) {
			roots[i].fuse = fuse;
			roots[i].major = roots[i].minor = 0;
			if (path)
				snprintf(roots[i].path, sizeof(roots[i].path), "%s", path);
			break;
		}
	}
	pthread_mutex_unlock(&roots_lock);
}

/*
 * The device of the mount served by `fuse`, as its mount point showed it once the mount was
 * live (cgroupfs.mount): a path under the mount point is only taken for one of this mount's
 * files while it shows that device (not if something was mounted over it since). 0, or -1
 * for a mount not served here.
 */
int fastopen_set_device(void *fuse, unsigned major, unsigned minor)
{
	int found = -1;

	pthread_mutex_lock(&roots_lock);
	for (int i = 0; i < MOUNTS_MAX && found < 0; i++) {
		if (roots[i].fuse == fuse) {
			roots[i].major = major;
			roots[i].minor = minor;
			found = 0;
		}
	}
	pthread_mutex_unlock(&roots_lock);
	return found;
}

/*
 * The inode number and device the kernel gives `path`, without asking a FUSE server for its
 * attributes (statx's AT_STATX_DONT_SYNC): 0, or -1 if there is none. The walk to it may ask
 * a server for the names and directories the kernel lacks, unless `cached_only`: then the
 * path is resolved from the kernel's caches only (openat2's RESOLVE_CACHED, Linux 5.12), and
 * -1 if it cannot be. A handler of a mount must pass `cached_only` for its own mount: waiting
 * for it, it would hold a worker another must serve it with, and enough such handlers at
 * once would leave none. Without openat2 (before Linux 5.6) the full walk is made by statx.
 */
int fastopen_kernel_inode(const char *path, int cached_only, uint64_t *ino, unsigned *major,
			  unsigned *minor)
{
	struct open_how how = {
		.flags = O_PATH | O_NOFOLLOW | O_CLOEXEC,
		.resolve = RESOLVE_NO_SYMLINKS | (cached_only ? RESOLVE_CACHED : 0),
	};
	struct statx stx;
	int fd, res;

	fd = (int)syscall(SYS_openat2, AT_FDCWD, path, &how, sizeof(how));
	if (fd >= 0) {
		res = statx(fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_INO, &stx);
		close(fd);
	} else if (errno == ENOSYS && !cached_only) {
		res = statx(AT_FDCWD, path, AT_SYMLINK_NOFOLLOW | AT_STATX_DONT_SYNC, STATX_INO,
			    &stx);
	} else {
		return -1;
	}
	if (res != 0 || !(stx.stx_mask & STATX_INO))
		return -1;
	*ino = stx.stx_ino;
	*major = stx.stx_dev_major;
	*minor = stx.stx_dev_minor;
	return 0;
}

/* Whether this kernel resolves a path from its caches only (RESOLVE_CACHED, Linux 5.12). */
int fastopen_cached_walks(void)
{
	struct open_how how = { .flags = O_PATH | O_CLOEXEC, .resolve = RESOLVE_CACHED };
	int fd = (int)syscall(SYS_openat2, AT_FDCWD, "/", &how, sizeof(how));

	if (fd < 0)
		return errno != ENOSYS && errno != EINVAL && errno != E2BIG;
	close(fd);
	return 1;
}

/* The inode number of `path` on the mount served by `fuse` (libfuse's node id: no use_ino),
 * found from the kernel's caches only (fastopen_kernel_inode: this runs in a handler); 0 if
 * it cannot be, or if the mount's device is not known or not the one the path shows. */
static uint64_t kernel_inode(void *fuse, const char *path)
{
	char full[PATH_MAX];
	unsigned major = 0, minor = 0, dev_major, dev_minor;
	uint64_t ino;
	int found = 0;

	pthread_mutex_lock(&roots_lock);
	for (int i = 0; i < MOUNTS_MAX && !found; i++) {
		if (roots[i].fuse == fuse && (roots[i].major || roots[i].minor)) {
			found = snprintf(full, sizeof(full), "%s%s", roots[i].path, path) <
				(int)sizeof(full);
			major = roots[i].major;
			minor = roots[i].minor;
		}
	}
	pthread_mutex_unlock(&roots_lock);
	if (!found || fastopen_kernel_inode(full, 1, &ino, &dev_major, &dev_minor) != 0 ||
	    dev_major != major || dev_minor != minor)
		return 0;
	return ino;
}

/*
 * An open for reading of a file whose text is published and not yet pushed: the text goes
 * into the kernel's page cache now (fuse_lowlevel_notify_store), so the read that follows
 * costs no request. The text is copied, pushed without the table's lock (pushing waits for a
 * read of the page in flight, whose handler takes that lock), and checked again after: if a
 * change forgot or replaced the entry meanwhile, the page pushed may be older than it, and the
 * kernel is told to drop it (the change's own invalidation may have come before the push).
 * A change that forgets the entry later invalidates the page after the push. Texts longer
 * than a page are left to the read.
 */
static void push_text(void *fuse, struct table *t, const char *path)
{
	char text[4096];
	size_t n = strlen(path);
	uint64_t h = hash_of(path, n), seq = 0, ino;
	struct fuse_session *se;
	struct entry *e;
	int32_t len = -1;
	int same;

	pthread_mutex_lock(&t->lock);
	e = *slot_of(t, path, n, h);
	if (e && !e->pushed && e->text_len > 0 && (size_t)e->text_len <= sizeof(text) &&
	    e->size == e->text_len) {
		len = e->text_len;
		memcpy(text, e->data + e->path_len, (size_t)len);
		seq = e->seq;
		e->pushed = 1;
	}
	pthread_mutex_unlock(&t->lock);
	if (len < 0)
		return;
	ino = kernel_inode(fuse, path);
	se = fuse_get_session(fuse);
	if (ino != 0) {
		struct fuse_bufvec bufv = FUSE_BUFVEC_INIT((size_t)len);

		bufv.buf[0].mem = text;
		if (fuse_lowlevel_notify_store(se, ino, 0, &bufv, 0) != 0)
			ino = 0;
	}
	pthread_mutex_lock(&t->lock);
	e = *slot_of(t, path, n, h);
	same = e && e->seq == seq;
	if (same && ino == 0)
		e->pushed = 0;	/* not pushed: the read will ask */
	if (same && ino != 0)
		t->served[3]++;
	pthread_mutex_unlock(&t->lock);
	if (!same && ino != 0)
		fuse_lowlevel_notify_inval_inode(se, ino, 0, 0);
}

int fastopen_open(const char *path, struct fuse_file_info *fi)
{
	const char *slash = strrchr(path, '/');
	const char *name = slash ? slash + 1 : path;
	struct fuse_context *ctx = fuse_get_context();

	keep_python_thread();
	if (listed(python_names, name)) {
		open_handler handler = python_open_of(ctx->fuse);

		return handler ? handler(path, fi) : -ENODEV;
	}
	fi->fh = (uint64_t)ctx->uid | (uint64_t)ctx->gid << 32;
	if ((fi->flags & O_ACCMODE) == O_RDONLY && !listed(direct_names, name)) {
		struct handlers h = handlers_of(ctx->fuse);

		fi->keep_cache = 1;
		if (h.table)
			push_text(ctx->fuse, h.table, path);
	} else {
		fi->direct_io = 1;
	}
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
	set_root(fuse, opts.mountpoint, NULL);
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
	fastopen_unregister(fuse);	/* before it is freed (see the top) */
	set_root(NULL, NULL, fuse);
	fuse_destroy(fuse);
out_args:
	free(opts.mountpoint);
	fuse_opt_free_args(&args);
	return res;
}
