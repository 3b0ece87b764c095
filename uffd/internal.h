/* SPDX-License-Identifier: MIT */
/*
 * Private state of the destination runtime (uffd/): the handle, its regions
 * and bitmaps, and the functions the uffd/ files call in each other.
 */
#ifndef PCOPY_UFFD_INTERNAL_H
#define PCOPY_UFFD_INTERNAL_H

#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "common.h"
#include "postcopy.h"
#include "wire.h"

/* How the memory behind a region is backed; decides uffd features, whether
 * UFFDIO_ZEROPAGE exists and what -EEXIST from UFFDIO_COPY means. */
enum dest_mem {
	DEST_MEM_ANON = 0,	/* anonymous private */
	DEST_MEM_SHMEM,		/* memfd / shmem / tmpfs (shared or private) */
	DEST_MEM_HUGETLB,	/* hugetlbfs (memfd MFD_HUGETLB, MAP_HUGETLB) */
};

const char *dest_mem_name(enum dest_mem m);

/* ---- bitmap.c: one bit per host page, atomic (two threads touch them) ---- */

struct dest_bitmap {
	_Atomic uint64_t *w;
	uint64_t nbits;
};

int dbm_init(struct dest_bitmap *b, uint64_t nbits);
void dbm_free(struct dest_bitmap *b);
bool dbm_test(const struct dest_bitmap *b, uint64_t i);
/* Sets bit i; returns its previous value. */
bool dbm_test_and_set(struct dest_bitmap *b, uint64_t i);
/* First index >= from whose bit equals `val`, or nbits if none. O(n/64). */
uint64_t dbm_find(const struct dest_bitmap *b, uint64_t from, bool val);

/* ---- stats.c ---- */

#define DEST_HIST_SUB_BITS 4	/* 16 linear sub-buckets per power of two */
#define DEST_HIST_BUCKETS (64 << DEST_HIST_SUB_BITS)

struct dest_hist {
	_Atomic uint64_t bucket[DEST_HIST_BUCKETS];
	_Atomic uint64_t samples;
	_Atomic uint64_t max;
};

struct dest_counters {
	_Atomic uint64_t pages_zero, pages_raw, pages_zlib;
	_Atomic uint64_t bytes_wire, bytes_payload;
	_Atomic uint64_t faults, requests, request_msgs;
	_Atomic uint64_t duplicates, wakes, copy_retries;
	struct dest_hist lat;	/* fault -> placed, ns */
};

/* Relaxed counter bump: statistics need no ordering with anything else. */
#define DEST_STAT_ADD(d, field, v) \
	atomic_fetch_add_explicit(&(d)->st.field, (v), memory_order_relaxed)

void dest_hist_add(struct dest_hist *h, uint64_t ns);
/* Upper bound of the bucket holding quantile q (0..1); 0 if no samples. */
uint64_t dest_hist_quantile(const struct dest_hist *h, double q);

/* ---- regions ---- */

struct dest_region {
	char name[PCOPY_NAME_MAX + 1];
	uint8_t *host;
	size_t length;
	size_t page_size;	/* host page: 4096 or 2 MiB */
	unsigned shift;		/* log2(page_size) */
	enum dest_mem mem;
	uint64_t npages;	/* host pages */
	uint64_t first;		/* index of host page 0 in dest->fault_ns */
	struct dest_bitmap requested;	/* set by the fault thread */
	struct dest_bitmap received;	/* set by the receiver after the ioctl */
};

/* The host page being assembled from PAGE frames (receiver only). */
struct dest_asm {
	bool active;
	unsigned region;
	uint64_t hp;		/* host page index in the region */
	uint32_t next_tp;	/* next target page expected */
	uint32_t ntp;		/* target pages per host page */
	bool all_zero;		/* every frame so far was ZERO */
};

struct pcopy_dest {
	struct pcopy_logger log;
	struct pcopy_errslot err;
	pcopy_dest_event_fn on_event;
	void *event_opaque;
	enum pcopy_fail_mode fail_mode;
	unsigned flags;		/* PCOPY_DEST_* */
	int handshake_timeout_ms;

	struct dest_region reg[PCOPY_REGIONS_MAX];
	unsigned nreg;
	unsigned order[PCOPY_REGIONS_MAX];	/* region indexes by host address */
	uint64_t total_pages;	/* host pages in all regions */
	size_t max_page;	/* largest host page */
	/* First fault time per host page (ns, 0 = none). mmap'd NORESERVE:
	 * only the parts around faulted pages ever get memory. */
	_Atomic uint64_t *fault_ns;
	size_t fault_ns_bytes;
	uint64_t uffd_features;	/* enabled by UFFDIO_API; 0 if the caller did it */
	bool foreign;		/* the regions live in another process (the
				   caller's uffd came from it): no mprotect,
				   no tgkill possible from here */

	int uffd;
	int fd;			/* the connection, -1 before start */
	int stop_efd;		/* written once by destroy; polled, never read */
	int kick_efd;		/* receiver -> fault thread: "failed, look" */
	struct wire_hello hello;	/* ours */
	uint32_t features;	/* negotiated PCOPY_FEAT_* */

	pthread_mutex_t wlock;	/* serialises writes to fd (REQ, DONE, ERROR) */
	bool fault_thr_on, recv_thr_on;
	pthread_t fault_thr, recv_thr;

	/* receiver state (receiver thread only once started) */
	struct io_uring ring;
	bool ring_on;
	uint8_t *rbuf;
	size_t rcap;
	uint8_t *staging;	/* one host page, page aligned */
	uint8_t *zero;		/* PROT_READ anonymous: reads as zeros, costs nothing */
	struct codec_zlib *zlib;
	struct dest_asm cur;

	_Atomic uint64_t received;	/* host pages received, all regions */
	_Atomic bool failed;	/* the restore failed; fault thread checks it */

	pthread_mutex_t lock;	/* protects finishing/done/result; waiters sleep on cond */
	pthread_cond_t cond;
	bool finishing;		/* completion or failure claimed (first wins) */
	bool done;		/* ... and finished: waiters may return */
	_Atomic bool stopping;	/* destroy has begun: errors are not recorded */
	int result;
	_Atomic uint64_t start_ns;
	_Atomic uint64_t end_ns;
	struct dest_counters st;
};

/* ---- dest.c ---- */

/* Record a fatal error (first one wins; none after completion), tell the
 * fault thread, wake waiters, call on_event once. Any library thread. */
void dest_fail(struct pcopy_dest *d, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* Host pages not yet received. Any thread. */
uint64_t dest_missing(const struct pcopy_dest *d);
/* Count one received host page; completes the restore on the last. Receiver. */
void dest_page_received(struct pcopy_dest *d);
/* Send one message on the connection under wlock. Any library thread. */
int dest_send(struct pcopy_dest *d, struct wire_hdr *h, const void *p, size_t len);
/* The region holding addr, or NULL. Lock-free, O(log n). */
struct dest_region *dest_find_region(struct pcopy_dest *d, uint64_t addr);

/* ---- uffd_open.c ---- */

/* Detect memory types, open the uffd (or adopt opts->uffd), UFFDIO_API and
 * register every region. Caller's thread (create). */
int dest_uffd_setup(struct pcopy_dest *d, int uffd_in);
/* UFFDIO_UNREGISTER every region (after completion only). */
void dest_uffd_unregister(struct pcopy_dest *d);

/* ---- place.c (receiver thread, except place_wake) ---- */

/* Place host page hp of r from src (a host page, page aligned), or zeros if
 * src is NULL. Returns 0 placed, 1 already present (duplicate), or -errno
 * after recording the error with dest_fail. */
int place_host_page(struct pcopy_dest *d, struct dest_region *r, uint64_t hp,
		    const void *src);
/* UFFDIO_WAKE [addr, addr+len). Returns 0 or -errno (logged). Any thread. */
int place_wake(struct pcopy_dest *d, uint64_t addr, uint64_t len, bool present);

/* ---- fault.c / receiver.c ---- */

void *dest_fault_main(void *arg);
int dest_recv_init(struct pcopy_dest *d);
void dest_recv_fini(struct pcopy_dest *d);
void *dest_recv_main(void *arg);

#endif
