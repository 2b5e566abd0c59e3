/*
 * An unmodified /dev/ioasid program, written against <linux/ioasid.h> as it would be against
 * the series' kernel: open(), ioctl(), close(). Run under `ioasidctl wrap` it reaches ioasidsd.
 *
 * Usage: ioasid_client STEP...  Each step prints one line "STEP RESULT", RESULT being the
 * call's non-negative result or the errno's name:
 *   open            open("/dev/ioasid", O_RDWR)
 *   version, info   IOASID_GET_API_VERSION; IOASID_GET_INFO (prints ioasid_bits)
 *   alloc:MIN:MAX   IOASID_REQUEST_ALLOC (the ID is remembered)
 *   free            IOASID_REQUEST_FREE of the last ID allocated; free:N of N
 *   batch:MIN:MAX:N IOASID_REQUEST_ALLOC_BATCH (prints the count and the IDs)
 *   freebatch       IOASID_REQUEST_FREE_BATCH of the IDs of the last batch
 *   bind:DEVID      IOASID_BIND_GPASID of the last ID on PCI function DEVID, gpasid 7
 *   unbind:DEVID    IOASID_UNBIND_GPASID of the last ID from DEVID
 *   badptr          IOASID_REQUEST_ALLOC with an unmapped pointer
 *   readonly        IOASID_GET_INFO into read-only memory
 *   short           IOASID_REQUEST_ALLOC with argsz 8
 *   unknown         an unknown command, _IO('i', 150)
 *   dup             dup() the descriptor and use the copy from now on
 *   close           close() it
 *   fork            fork(): the parent prints "fork CHILD_PID" and exits at once (closing its
 *                   copy of the descriptor); the child goes on with the next steps
 *   wait            print "wait" and block until a line arrives on stdin
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <linux/ioasid.h>

static void result(const char *step, long ret)
{
	if (ret < 0)
		printf("%s %s\n", step, strerrorname_np(errno));
	else
		printf("%s %ld\n", step, ret);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	int fd = -1, last = -1, batched = 0;
	__u32 batch_ids[64];

	for (int i = 1; i < argc; i++) {
		const char *step = argv[i];
		unsigned int lo, hi, n;

		if (!strcmp(step, "open")) {
			fd = open("/dev/ioasid", O_RDWR | O_CLOEXEC);
			result(step, fd < 0 ? -1 : 0);
		} else if (!strcmp(step, "version")) {
			result(step, ioctl(fd, IOASID_GET_API_VERSION));
		} else if (!strcmp(step, "info")) {
			struct ioasid_info info = { .argsz = sizeof(info) };
			int ret = ioctl(fd, IOASID_GET_INFO, &info);

			result(step, ret < 0 ? ret : (long)info.ioasid_bits);
		} else if (sscanf(step, "alloc:%u:%u", &lo, &hi) == 2) {
			struct ioasid_alloc_request req = {
				.argsz = sizeof(req), .range = { .min = lo, .max = hi },
			};
			int ret = ioctl(fd, IOASID_REQUEST_ALLOC, &req);

			if (ret >= 0)
				last = ret;
			result("alloc", ret);
		} else if (!strcmp(step, "free") || sscanf(step, "free:%u", &n) == 1) {
			int id = strcmp(step, "free") ? (int)n : last;

			result("free", ioctl(fd, IOASID_REQUEST_FREE, &id));
		} else if (sscanf(step, "batch:%u:%u:%u", &lo, &hi, &n) == 3) {
			struct ioasid_alloc_batch *b = calloc(1, sizeof(*b) + 4 * n);
			int ret;

			b->argsz = sizeof(*b) + 4 * n;
			b->min = lo;
			b->max = hi;
			b->count = n;
			ret = ioctl(fd, IOASID_REQUEST_ALLOC_BATCH, b);
			if (ret < 0) {
				result("batch", ret);
			} else {
				printf("batch %d", ret);
				batched = ret < 64 ? ret : 64;
				memcpy(batch_ids, b->ids, 4 * batched);
				for (int k = 0; k < ret; k++)
					printf(" %u", b->ids[k]);
				printf("\n");
				fflush(stdout);
			}
			free(b);
		} else if (!strcmp(step, "freebatch")) {
			struct ioasid_free_batch *b = calloc(1, sizeof(*b) + 4 * batched);

			b->argsz = sizeof(*b) + 4 * batched;
			b->count = batched;
			memcpy(b->ids, batch_ids, 4 * batched);
			result(step, ioctl(fd, IOASID_REQUEST_FREE_BATCH, b));
			free(b);
		} else if (sscanf(step, "bind:%u", &n) == 1) {
			struct ioasid_bind_gpasid bind = {
				.argsz = sizeof(bind), .flags = IOASID_BIND_GPASID_VAL,
				.hpasid = last, .gpasid = 7, .devid = n, .addr_width = 48,
				.gpgd = 0x1000,
			};

			result("bind", ioctl(fd, IOASID_BIND_GPASID, &bind));
		} else if (sscanf(step, "unbind:%u", &n) == 1) {
			struct ioasid_unbind_gpasid unbind = {
				.argsz = sizeof(unbind), .hpasid = last, .devid = n,
			};

			result("unbind", ioctl(fd, IOASID_UNBIND_GPASID, &unbind));
		} else if (!strcmp(step, "badptr")) {
			result(step, ioctl(fd, IOASID_REQUEST_ALLOC, (void *)16));
		} else if (!strcmp(step, "readonly")) {
			struct ioasid_info *ro = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
						      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

			ro->argsz = sizeof(*ro);
			mprotect(ro, 4096, PROT_READ);
			result(step, ioctl(fd, IOASID_GET_INFO, ro));
		} else if (!strcmp(step, "short")) {
			struct ioasid_alloc_request req = {
				.argsz = 8, .range = { .min = 1, .max = 100 },
			};

			result(step, ioctl(fd, IOASID_REQUEST_ALLOC, &req));
		} else if (!strcmp(step, "unknown")) {
			result(step, ioctl(fd, _IO(IOASID_TYPE, 150), 0));
		} else if (!strcmp(step, "dup")) {
			int copy = dup(fd);

			close(fd);
			fd = copy;
			result(step, copy < 0 ? -1 : 0);
		} else if (!strcmp(step, "fork")) {
			pid_t child = fork();

			if (child < 0) {
				result(step, -1);
			} else if (child) {
				result(step, child);
				_exit(0);
			}
		} else if (!strcmp(step, "close")) {
			result(step, close(fd));
		} else if (!strcmp(step, "wait")) {
			char line[64];

			printf("wait\n");
			fflush(stdout);
			if (!fgets(line, sizeof(line), stdin))
				return 0;
		} else {
			fprintf(stderr, "unknown step %s\n", step);
			return 2;
		}
	}
	return 0;
}
