/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * dm-userspace: a device-mapper target whose block map lives in a userspace
 * daemon.  This header is the only definition of the protocol between the
 * target and the daemon; both sides assert the sizes below.
 *
 * Table line:
 *   <start> <len> userspace <key> <block_sectors> <nr_devs> <dev>...
 *       [<#opt_args> <opt_arg>...]
 *   key            1..DMU_KEY_LEN-1 printable characters; binds one daemon
 *                  connection to this device.  A key belongs to one dm device:
 *                  a table of another device naming it is refused.
 *   block_sectors  the mapping granularity in 512-byte sectors (power of two,
 *                  8 .. 2^20); normally the image's cluster size
 *   dev            the data devices (loop devices of the image chain, scratch
 *                  store); messages name them by index 0..nr_devs-1
 *   optional:      daemon_timeout <seconds>   how long I/O waits for a
 *                                             daemon to (re)bind or answer
 *                  max_extents <n>            bound on cached extents
 *                  writable_devs <n>          only devices 0..n-1 may be
 *                                             written (default: all, none
 *                                             in a read-only table); the
 *                                             others are opened read-only
 *                  discard_passdown           discard the data of discarded
 *                                             blocks on their data device
 *
 * A table reload (a new table naming the same key on the same dm device)
 * keeps the target's state: cached extents, pending requests, unpublished
 * DONEs and the bound daemon.  It must name the same data devices in the
 * same order and the same block_sectors.  It may change the length (a
 * shorter target drops the extents past its end), but grow only from a
 * whole number of blocks: a partial last block's tail lies outside the
 * target, never filled nor checked, so no answer for the block holds there.
 *
 * Control device: /dev/dm-userspace (misc, root only).  A daemon opens it,
 * binds to a key with DMU_IOC_BIND, then read()s requests and write()s
 * responses, each a whole number of fixed-size 64-byte messages, and uses
 * poll() to wait for requests.  read() and write() may be called
 * concurrently from different threads.  Closing the file unbinds.
 *
 * Units: "block" = block_sectors sectors, counted from the start of the
 * target; "sector" = 512 bytes on a data device.  An extent maps the virtual
 * blocks [block, block + nr_blocks) linearly onto dev starting at sector.
 *
 * Conversation (kernel -> daemon requests, daemon -> kernel responses):
 *
 *  MAP        the kernel needs blocks [block, block + nr_blocks) for reading
 *             (flags 0), writing (DMU_MAP_WRITE) or discarding
 *             (DMU_MAP_DISCARD).  The daemon answers with any number of
 *             DMU_RSP_EXTENT and DMU_RSP_COPY messages carrying the same id;
 *             the last one has DMU_RSP_FINAL.  Extents may cover more than
 *             was asked (read-ahead of the map); the answer must cover the
 *             first block of the request, or the request's I/O fails with
 *             EIO.  Or the daemon ends the request with DMU_RSP_COMPLETE:
 *             status 0 completes a discard without I/O; a negative errno
 *             fails the request's I/O with it (-EIO, -ENOSPC, -ENODATA
 *             and -EOPNOTSUPP as they are, any other as -EIO), except
 *             reads that joined a write's request: they ask again with a
 *             read MAP of their own.  A request left unanswered
 *             for daemon_timeout seconds fails with EIO.  A discard MAP
 *             names whole blocks only (the kernel rounds inward and drops
 *             its cached extents for them); a daemon without
 *             DMU_FEATURE_DISCARD never sees discards.
 *  COMMIT     a guest flush (or FUA write), or the kernel's own bound on
 *             unpublished DONEs, needs the daemon's metadata durable.  The
 *             kernel has already queued the DONE of every answer applied
 *             before the flush arrived, and flushed every data device a
 *             write completed on since its last flush (so the data of every
 *             DONE read before this COMMIT is on stable storage).  The
 *             daemon answers DMU_RSP_COMMITTED with the same id when the
 *             metadata of every DONE it read before this COMMIT is on
 *             stable storage (status 0), or cannot be (errno).
 *  DONE       reports on an answer once its work is finished: sent for every
 *             answered MAP with DMU_MAP_WRITE (whatever the answer: extents,
 *             COMPLETE, or a bad answer, then -EIO), every answered discard
 *             MAP, and every answer or push that carried DMU_EXT_NEW
 *             extents.  id, flags, block and nr_blocks are those of the MAP
 *             (flags 0, block 0, nr_blocks 0 for a push); status is 0 or the
 *             first error: the errno of a COMPLETE, -EIO for a bad answer,
 *             or that of filling the NEW extents or of the answer's own
 *             writes into them (on error the kernel has dropped those
 *             extents, so nothing uses the space).
 *             Only after DONE may metadata point at the NEW blocks, and
 *             only a COMMIT read after the DONE says their data is on
 *             stable storage (the kernel flushes first): make such
 *             metadata durable in answer to that COMMIT.  A MAP failed by
 *             the timeout gets no DONE (its late answer is refused); an
 *             answer the kernel has no memory to apply is refused too,
 *             like a bad one: a refused answer was not applied, and its
 *             DONE (-EIO) may be lost if the kernel cannot allocate even
 *             that, so a daemon resolves the id when write() refuses it.
 *             A discard's DONE (also one answered with an error) comes
 *             after the DONE of every answer applied before the discard's
 *             answer, and once no I/O that used the discarded blocks' old
 *             mappings is in flight: only then may the daemon reuse the
 *             space those blocks mapped.  Other DONEs may overtake it.
 *             A daemon should not decide a block again (allocate it, or
 *             discard it) before the DONE of its earlier decision about
 *             that block: a daemon restarted in between replays the records
 *             in the order the answers were applied.
 *
 *  EXTENT     one extent.  kind ZERO: reads return zeros without I/O, writes
 *             ask again.  kind REMAP: I/O goes to dev at sector; writes only
 *             when DMU_EXT_WRITABLE, which needs a writable dev.
 *             DMU_EXT_NEW (with WRITABLE) marks a freshly allocated range:
 *             before any I/O may use it, the kernel fills every sector of it
 *             that the waiting writes do not cover, from the COPY messages of
 *             the same answer that describe it, and with zeros where no COPY
 *             does.  A NEW extent that replaces cached extents is filled only
 *             after writes in flight through those extents have landed.
 *  COPY       the old contents of virtual sectors [sector, sector +
 *             nr_sectors) are on src_dev at src_sector (sector granular, so
 *             a block may have several sources).  Only meaningful inside a
 *             DMU_EXT_NEW extent of the same answer.
 *  COMPLETE   ends a MAP request without (more) extents, see MAP.
 *  COMMITTED  answers COMMIT.
 *  INVALIDATE drops cached extents in [block, block + nr_blocks); id 0.
 *             Extents still being filled are left alone.  The write() that
 *             carries INVALIDATE returns only once no I/O that used the
 *             dropped extents is in flight (the wait is at the end of the
 *             write(), so the rest of that write() must not hand out what
 *             the dropped extents mapped).
 *
 * Publishing and daemon restart.  The kernel keeps every answer that must
 * report DONE (an "allocation record") until its DONE has been read and a
 * COMMIT read after that DONE was answered COMMITTED with status 0.  Request
 * ids are never reused (they are unique for the life of the module).  When a
 * daemon goes away (closes the file, dies), the next daemon that binds
 *   1. can list every record not yet published with DMU_IOC_LIST_ALLOCATIONS
 *      (in the order the answers were applied, which is the order the old
 *      daemon made its decisions): the NEW extents of each, or the range of a
 *      successful discard.  It should do so before it answers anything, so
 *      that it never hands out space an unpublished allocation uses, and it
 *      must not use a listed id as a push id of its own;
 *   2. reads again every DONE the old daemon read but that no successful
 *      COMMITTED covered (with or without a record; BIND's redelivered
 *      counts them), in their original order, then every MAP and COMMIT
 *      the old daemon read but did not answer (BIND's resent counts them),
 *      then the rest.  DONE for records
 *      still in flight follows later.
 * A table reload or a suspend keeps all of this (a reload must keep the data
 * devices, block_sectors and writable_devs).  I/O waits for a daemon up
 * to daemon_timeout; a noflush suspend with no daemon bound hands waiting
 * I/O back to device-mapper, which issues it again after resume, and that
 * clock stops until the resume, which gives it a whole daemon_timeout.
 * With a daemon bound it hands back held MAPs, flushes and FUA writes not
 * yet written or waiting for a COMMIT, and waits for the requests the
 * daemon has.
 * While the live table is read-only no device is writable (BIND reports
 * writable_devs 0), whatever the table's writable_devs, and every write
 * and discard fails with EIO, also one from a writer that opened the
 * device before a reload --readonly, on a block cached writable.  A daemon
 * bound before such a reload may still answer with WRITABLE extents on
 * devices below the table's writable_devs: they are cached read-only; a
 * NEW extent is a bad answer, and no discard is passed down.
 *
 * Pushes: the daemon may send EXTENT/COPY messages nobody asked for, under an
 * id of its own choosing with DMU_PUSH_ID set, the batch ending in
 * DMU_RSP_FINAL.  DMU_IOC_LIST_EXTENTS reports which pushed extents were used.
 *
 * Validation: the kernel checks every field of every message (type, flags,
 * kind, device index, sector ranges within the device and the target, lengths
 * non-zero, reserved and unused fields zero, id pending), each when it
 * arrives and all of an answer's again at its FINAL, against the table live
 * then (a reload between them may have made the device read-only or the
 * target shorter: then FINAL is the bad message).  A bad message is
 * counted, fails only the I/O of its request, and ends the write() at that
 * message: write() returns the bytes consumed before it, or -EINVAL if it was
 * the first.  At most 256 messages make one answer or push, answers and
 * pushes without their FINAL yet hold at most 16384 messages together (an
 * answer's room grows by doubling from 8), at most 16 push batches may be
 * open, at most 64 pushes may have NEW extents being filled;
 * a push with NEW extents is also refused while the device is suspended or
 * the answers waiting to be published and the MAP requests out with the
 * daemon reach max_unpublished (a module parameter, 16384 by default); new
 * MAP requests then wait in the kernel (a daemon is not sent them) until a
 * COMMITTED publishes answers, answers that start no tracker (reads without
 * NEW extents) come back, or daemon_timeout fails them.
 * Only one target of a table may name a key.
 * A NEW extent must not overlap one still being filled; other extents are
 * inserted around such extents.  A write() whose length is not a multiple of
 * the message size is refused with -EINVAL before anything is processed.
 */
#ifndef _UAPI_LINUX_DM_USERSPACE_H
#define _UAPI_LINUX_DM_USERSPACE_H

#include <linux/types.h>
#include <linux/ioctl.h>

#define DMU_VERSION_MAJOR	2	/* incompatible changes */
#define DMU_VERSION_MINOR	0	/* compatible additions */
#define DMU_VERSION_PATCH	0

#define DMU_TARGET_NAME		"userspace"
#define DMU_CONTROL_NAME	"dm-userspace"	/* /dev/dm-userspace */
#define DMU_KEY_LEN		64
#define DMU_MSG_SIZE		64

/* Feature bits, negotiated in DMU_IOC_BIND. */
#define DMU_FEATURE_PUSH	(1ULL << 0)	/* pushed extents, LIST_EXTENTS */
#define DMU_FEATURE_COPY	(1ULL << 1)	/* DMU_EXT_NEW and COPY */
#define DMU_FEATURE_DISCARD	(1ULL << 2)	/* MAP with DMU_MAP_DISCARD */
#define DMU_FEATURE_ALL		(DMU_FEATURE_PUSH | DMU_FEATURE_COPY | \
				 DMU_FEATURE_DISCARD)

/* Request types (kernel -> daemon). */
#define DMU_REQ_MAP		1
#define DMU_REQ_COMMIT		2
#define DMU_REQ_DONE		3

/* DMU_REQ_MAP (and DONE) flags */
#define DMU_MAP_WRITE		(1U << 0)
#define DMU_MAP_DISCARD		(1U << 1)

/* Response types (daemon -> kernel). */
#define DMU_RSP_EXTENT		1
#define DMU_RSP_COPY		2
#define DMU_RSP_COMPLETE	3
#define DMU_RSP_COMMITTED	4
#define DMU_RSP_INVALIDATE	5

/* Response flags */
#define DMU_RSP_FINAL		(1U << 0)	/* last message of an answer */

/* Extent kinds */
#define DMU_EXT_ZERO		1
#define DMU_EXT_REMAP		2

/* Extent flags */
#define DMU_EXT_WRITABLE	(1U << 0)
#define DMU_EXT_NEW		(1U << 1)	/* fill before use, then DONE */

/* Ids with this bit belong to the daemon's pushes; kernel ids never have it. */
#define DMU_PUSH_ID		(1ULL << 63)

/* kernel -> daemon, read() from the control device */
struct dmu_request {
	__u32 type;		/* DMU_REQ_* */
	__u32 flags;		/* MAP, DONE: DMU_MAP_* */
	/* MAP, COMMIT: unique, never reused; DONE: the id it reports on */
	__u64 id;
	__u64 block;		/* MAP, DONE: first block */
	__u64 nr_blocks;	/* MAP: blocks the I/O touches, >= 1; DONE */
	__s32 status;		/* DONE: 0 or -errno */
	__u32 reserved0;	/* zero */
	__u64 reserved[3];	/* zero */
};

/* daemon -> kernel, write() to the control device */
struct dmu_response {
	__u32 type;		/* DMU_RSP_* */
	__u32 flags;		/* DMU_RSP_FINAL */
	__u64 id;		/* request answered, push id, or 0 (INVALIDATE) */
	/* EXTENT, INVALIDATE: first virtual block; COPY: first virtual sector */
	__u64 block;
	__u64 nr_blocks;	/* EXTENT, INVALIDATE: blocks; COPY: sectors */
	__u32 kind;		/* EXTENT: DMU_EXT_ZERO or DMU_EXT_REMAP */
	__u32 ext_flags;	/* EXTENT: DMU_EXT_* */
	__u32 dev;		/* EXTENT REMAP: device index; COPY: source */
	__s32 status;		/* COMPLETE, COMMITTED: 0 or -errno */
	/* EXTENT REMAP: sector of 'block' on dev; COPY: source sector on dev */
	__u64 sector;
	__u64 reserved;		/* zero */
};

/*
 * DMU_IOC_BIND: attach this file to the device whose table names key.
 * Errors: -ENOENT no such key, -EBUSY another daemon is bound, -EPROTO the
 * major version differs (the kernel's version is written back first),
 * -EALREADY this file is or was bound (or another BIND on it is under way),
 * -EINVAL a reserved field is set or the key is not NUL-terminated.
 */
struct dmu_bind {
	__u32 version_major;	/* in: daemon's; out: kernel's */
	__u32 version_minor;
	__u32 version_patch;
	__u32 reserved0;	/* zero */
	__u64 features;		/* in: wanted; out: granted */
	char key[DMU_KEY_LEN];	/* in: NUL-terminated */
	__u64 target_sectors;	/* out */
	__u32 block_sectors;	/* out */
	__u32 nr_devs;		/* out */
	__u64 resent;		/* out: unanswered requests queued again */
	__u64 allocations;	/* out: unpublished answers LIST_ALLOCATIONS lists */
	__u32 writable_devs;	/* out: devices 0..n-1 may be written */
	__u32 reserved1;	/* zero */
	__u64 redelivered;	/* out: DONEs read by a daemon that left */
};

/* One cached extent, as DMU_IOC_LIST_EXTENTS reports it. */
struct dmu_extent_info {
	__u64 block;
	__u64 nr_blocks;
	__u64 sector;
	__u32 dev;
	__u32 kind;		/* DMU_EXT_ZERO, DMU_EXT_REMAP */
	__u32 ext_flags;	/* DMU_EXT_WRITABLE */
	__u32 state;		/* DMU_EXTENT_* */
};

#define DMU_EXTENT_PUSHED	(1U << 0)	/* came from a push */
#define DMU_EXTENT_USED		(1U << 1)	/* I/O has used it */
#define DMU_EXTENT_BUSY		(1U << 2)	/* being filled */

/*
 * DMU_IOC_LIST_EXTENTS: copy up to max cached extents that end after
 * start_block, in block order, to the array at buf.  Repeat with
 * start_block = next_block (and count and next_block zero again, as on
 * every call: -EINVAL otherwise) until count < max.
 */
struct dmu_list_extents {
	__u64 start_block;	/* in */
	__u64 buf;		/* in: user pointer to struct dmu_extent_info[] */
	__u32 max;		/* in */
	__u32 count;		/* out; 0 on input */
	__u64 next_block;	/* out; 0 on input */
	__u64 reserved[2];	/* zero */
};

/*
 * One unpublished allocation record, as DMU_IOC_LIST_ALLOCATIONS reports it:
 * a NEW extent of an applied answer (flags 0 or DMU_ALLOC_PUSH), or the
 * range of an applied discard (DMU_ALLOC_DISCARD; dev and sector 0).  id is
 * the request (or push) id its DONE will carry.
 */
struct dmu_allocation {
	__u64 id;
	__u64 block;
	__u64 nr_blocks;
	__u64 sector;
	__u32 dev;
	__u32 flags;		/* DMU_ALLOC_* */
};

#define DMU_ALLOC_DISCARD	(1U << 0)	/* a discard, not an extent */
#define DMU_ALLOC_PUSH		(1U << 1)	/* a NEW extent of a push */
#define DMU_ALLOC_DONE		(1U << 2)	/* its DONE has been queued */
#define DMU_ALLOC_FAILED	(1U << 3)	/* ... with an error: space unused */

/*
 * DMU_IOC_LIST_ALLOCATIONS: copy up to max records, in the order their
 * answers were applied, starting at the opaque cursor start (0 for the
 * first), to the array at buf.  Repeat with start = next (count and next
 * zero again) until count < max.  Records published between two calls are
 * simply no longer listed.
 */
struct dmu_list_allocations {
	__u64 start;		/* in */
	__u64 buf;		/* in: user pointer to struct dmu_allocation[] */
	__u32 max;		/* in */
	__u32 count;		/* out; 0 on input */
	__u64 next;		/* out; 0 on input */
	__u64 reserved[2];	/* zero */
};

/* 0xDC: not in Documentation/userspace-api/ioctl/ioctl-number.rst */
#define DMU_IOC_MAGIC		0xDC
#define DMU_IOC_BIND		_IOWR(DMU_IOC_MAGIC, 0, struct dmu_bind)
#define DMU_IOC_LIST_EXTENTS	_IOWR(DMU_IOC_MAGIC, 1, struct dmu_list_extents)
#define DMU_IOC_LIST_ALLOCATIONS \
	_IOWR(DMU_IOC_MAGIC, 2, struct dmu_list_allocations)

#endif /* _UAPI_LINUX_DM_USERSPACE_H */
