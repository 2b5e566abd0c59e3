/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * The /dev/ioasid user API of the "IOASID extensions for guest SVA" series (V4), as ioasidsd
 * serves it: the series' four commands with its numbers and layouts, then the project's
 * extensions. Written for ioasids from the series' description; a test checks every number,
 * size and offset here against ioasidsd/model/ioasid_uapi.py.
 *
 * Contract: every command takes a pointer to its argument (none for GET_API_VERSION); a
 * successful command returns a non-negative result (REQUEST_ALLOC: the new IOASID), a failed
 * one -1 with errno set. Through the ioasids preload library the descriptor of
 * open("/dev/ioasid") is a connection to the daemon; see docs/preload.md.
 */
#ifndef _UAPI_IOASID_H
#define _UAPI_IOASID_H

#include <linux/types.h>
#include <linux/ioctl.h>

#define IOASID_API_VERSION	0

#define IOASID_TYPE		('i')
#define IOASID_BASE		100

/* Returns IOASID_API_VERSION. No argument. */
#define IOASID_GET_API_VERSION	_IO(IOASID_TYPE, IOASID_BASE + 0)

struct ioasid_info {
	__u32	argsz;		/* sizeof(struct ioasid_info) or more */
	__u32	flags;		/* must be 0 */
	__u32	ioasid_bits;	/* out: the width of an IOASID (31) */
};

/* Fills in ioasid_bits. Argument: struct ioasid_info. */
#define IOASID_GET_INFO		_IO(IOASID_TYPE, IOASID_BASE + 1)

struct ioasid_alloc_request {
	__u32	argsz;		/* sizeof(struct ioasid_alloc_request) or more */
	__u32	flags;		/* must be 0 */
	struct {
		__u32	min;	/* inclusive, below 2^31 */
		__u32	max;	/* inclusive, below 2^31, not below min */
	} range;
};

/* Returns the lowest free IOASID of the range, charged to the caller's ioasids cgroup. */
#define IOASID_REQUEST_ALLOC	_IO(IOASID_TYPE, IOASID_BASE + 2)

/* Frees one IOASID of this file. Argument: a pointer to an int. */
#define IOASID_REQUEST_FREE	_IO(IOASID_TYPE, IOASID_BASE + 3)

/* ---- extensions of ioasids (not in the series): full _IOC encoding, numbers from 0xA0 ---- */

#define IOASID_BATCH_MAX	65536

struct ioasid_alloc_batch {
	__u32	argsz;		/* >= 20 */
	__u32	flags;		/* must be 0 */
	__u32	min, max;	/* as REQUEST_ALLOC */
	__u32	count;		/* 1 .. IOASID_BATCH_MAX */
	__u32	ids[];		/* out (through the preload library): the count IDs, ascending */
};

struct ioasid_free_batch {
	__u32	argsz;		/* >= 12 + 4 * count */
	__u32	flags;		/* must be 0 */
	__u32	count;		/* 1 .. IOASID_BATCH_MAX */
	__u32	ids[];		/* the IDs to free */
};

#define IOASID_BIND_GPASID_VAL	(1 << 0)	/* gpasid is valid: it becomes the SPID */

struct ioasid_bind_gpasid {
	__u32	argsz;		/* >= 32 */
	__u32	flags;		/* IOASID_BIND_GPASID_VAL or 0 */
	__u32	hpasid;		/* an IOASID this process allocated */
	__u32	gpasid;		/* the guest's PASID for it */
	__u32	devid;		/* PCI segment << 16 | bus << 8 | device << 3 | function */
	__u32	addr_width;	/* guest address width */
	__u64	gpgd;		/* guest first-level page-table pointer */
};

struct ioasid_unbind_gpasid {
	__u32	argsz;		/* >= 16 */
	__u32	flags;		/* must be 0 */
	__u32	hpasid;
	__u32	devid;
};

/* All or nothing; returns count. The fixed part is 20 bytes, hence the size encoded. */
#define IOASID_REQUEST_ALLOC_BATCH	_IOWR(IOASID_TYPE, 0xA0, __u8[20])
/* Returns count. */
#define IOASID_REQUEST_FREE_BATCH	_IOW(IOASID_TYPE, 0xA1, __u8[12])
#define IOASID_BIND_GPASID		_IOW(IOASID_TYPE, 0xA2, struct ioasid_bind_gpasid)
#define IOASID_UNBIND_GPASID		_IOW(IOASID_TYPE, 0xA3, struct ioasid_unbind_gpasid)

#endif /* _UAPI_IOASID_H */
