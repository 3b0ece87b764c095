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
	_Atomic uint64_t breaks, resent_pages, urgent_pages;
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
	struct dest_bitmap received;	/* placed (receiver) or removed (fault thread) */
	struct dest_bitmap removed;	/* UFFD_EVENT_REMOVE seen: zeros, never fetched */
	/* hugetlb only (else empty): claimed by the thread placing it. Two
	 * threads place pages (the receiver, the fault thread for urgent
	 * answers); on hugetlb an EEXIST for a page we never placed means an
	 * empty pool only if no other placer is in the middle of it. */
	struct dest_bitmap placing;
};

/* The host page being assembled from PAGE frames (receiver only). */
struct dest_asm {
	bool active;
	unsigned region;
	uint64_t hp;		/* host page index in the region */
	uint32_t next_tp;	/* next target page expected */
	uint32_t ntp;		/* target pages per host page */
	bool all_zero;		/* every frame so far was ZERO */
	size_t pos;		/* where in staging it is assembled */
};

/*
 * Consecutive whole host pages of one region waiting to be placed with one
 * ioctl: data runs sit at the start of the connection's staging area, zero
 * runs need no data. Placing 64 KiB+ per UFFDIO_COPY instead of 4 KiB is
 * what makes the receiver fast (receiver only).
 */
struct dest_run {
	unsigned region;
	uint64_t hp;		/* first host page */
	uint32_t n;		/* host pages, 0 = empty */
	bool zero;		/* UFFDIO_ZEROPAGE run */
	uint32_t tz;		/* data run: trailing zero pages in it */
	bool wanted;		/* a page in it was requested: place it now */
};

/* One connection to the source as the receiver sees it. */
struct dest_conn {
	int fd;			/* -1: none */
	unsigned idx;		/* DEST_MAIN or DEST_URGENT */
	bool queued;		/* a recv SQE is in flight */
	uint8_t *rbuf;		/* received bytes, cut into messages */
	size_t rcap, head, tail, need;
	uint64_t last_rx_ns;
	struct dest_asm cur;
	struct dest_run run;
	uint8_t *staging;	/* page aligned, scap bytes */
	size_t scap;
	struct codec_zlib *zlib;	/* inflate context (per thread reading) */
	/* The urgent connection lives in the fault thread (urgent.c): */
	bool dead;		/* broke; closed once the receiver unlinked it */
	bool in_input;		/* urg_input is running (a placement may send) */
	char why[PCOPY_ERRMSG_MAX];	/* why it broke */
	/* Placement met EAGAIN (an unread uffd event): let the owner read
	 * events before retrying. NULL: another thread reads them. */
	void (*on_again)(struct pcopy_dest *d, void *arg);
	void *again_arg;
};

enum { DEST_MAIN = 0, DEST_URGENT = 1, DEST_NCONN = 2 };

struct pcopy_dest {
	struct pcopy_logger log;
	struct pcopy_errslot err;
	pcopy_dest_event_fn on_event;
	void *event_opaque;
	enum pcopy_fail_mode fail_mode;
	unsigned flags;		/* PCOPY_DEST_* */
	int handshake_timeout_ms;
	int resume_deadline_ms;	/* < 0: forever */
	int keepalive_ms;
	pcopy_connect_fn connect;
	void *connect_opaque;
	uint8_t psk[256];
	size_t psk_len;		/* 0: no authentication */

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
	int stop_efd;		/* written once by destroy; polled, never read */
	int kick_efd;		/* -> fault thread: "failed, look" */
	int recv_efd;		/* -> receiver: "a connection was handed in" */
	struct wire_hello hello;	/* ours (MAIN) */
	uint32_t features;	/* negotiated PCOPY_FEAT_* */
	uint64_t session_id;	/* from the source's MAIN HELLO */
	bool started;

	/* Writers (REQ, DONE, PING, ERROR) use wfd[] under wlock; -1 while
	 * paused, so the fault thread's sends fail with -ENOTCONN and its
	 * requests stay recorded in the `requested` bitmaps. */
	pthread_mutex_t wlock;
	int wfd[DEST_NCONN];
	bool urg_wpart;		/* the fault thread waits in the middle of a
				   message on wfd[DEST_URGENT]: no PING there */
	_Atomic uint64_t last_tx_ns[DEST_NCONN];

	/* Hand-off of new connections to the receiver, under `lock`. */
	int handoff[DEST_NCONN];
	pthread_mutex_t resume_lock;	/* one resume / add_urgent at a time */
	bool had_urgent;		/* reconnect the urgent one too */
	_Atomic int paused;
	uint64_t paused_ns;		/* when the current pause began (under lock) */
	pthread_cond_t rc_cond;		/* reconnect thread sleeps here (lock) */

	bool fault_thr_on, recv_thr_on, rc_thr_on;
	pthread_t fault_thr, recv_thr, rc_thr;

	/* receiver state (receiver thread only once started) */
	struct io_uring ring;
	bool ring_on;
	struct dest_conn conn[DEST_NCONN];
	uint8_t *zero;		/* PROT_READ anonymous: reads as zeros, costs nothing */
	char break_why[PCOPY_ERRMSG_MAX];	/* why the current pause began */
	/* The fault thread reads the urgent connection itself (one wake-up
	 * less per fault); what it cannot handle goes to the receiver: */
	_Atomic int urgent_end;	/* enum recv_end to act on (under lock) */
	char urgent_why[PCOPY_ERRMSG_MAX];	/* its break_why (under lock) */
	_Atomic uint64_t urgent_rx_ns;	/* last bytes on it, 0: none (keepalive) */
	char resume_why[PCOPY_ERRMSG_MAX];	/* why the last resume attempt of
						   this pause failed ("": none;
						   under lock) */
	bool done_acked;	/* the source echoed our DONE */
	uint64_t linger_until;	/* complete: wait for the echo until (ns) */

	_Atomic uint64_t received;	/* host pages received, all regions */
	_Atomic bool failed;	/* the restore failed; fault thread checks it */

	pthread_mutex_t lock;	/* protects finishing/done/result, hand-off; waiters sleep on cond */
	pthread_cond_t cond;
	bool finishing;		/* completion or failure claimed (first wins) */
	_Atomic bool done_sent;	/* complete() has tried to send DONE: the
				   receiver may stop (or linger) only then,
				   not as soon as the last page is counted */
	/* A failure recorded on the fault thread: the receiver calls on_event
	 * and releases the waiters (under lock; see fail_record). */
	bool recv_live;		/* the receiver runs (or is about to: set
				   by start before any thread) and will look */
	bool event_pending;
	int event_err;
	_Atomic int fault_tid;	/* the fault thread's tid, 0 before it runs */
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
/* Count n newly received host pages; completes the restore on the last.
 * Receiver or fault thread (removed pages). */
void dest_pages_received(struct pcopy_dest *d, uint64_t n);
/* Send one message on connection `which` (falls back to MAIN if there is
 * no urgent one) under wlock. -ENOTCONN while paused. Any library thread. */
int dest_send(struct pcopy_dest *d, unsigned which, struct wire_hdr *h,
	      const void *p, size_t len);
/* The region holding addr, or NULL. Lock-free, O(log n). */
struct dest_region *dest_find_region(struct pcopy_dest *d, uint64_t addr);
/* Start a library thread with every signal blocked. Returns 0 or -errno. */
int dest_start_thread(struct pcopy_dest *d, pthread_t *t, void *(*fn)(void *));
/* Write 1 to an eventfd (best effort). */
void dest_kick(int efd);
/* Start sets it live before any thread runs; the receiver sets it again
 * when it starts and clears it when it ends (or start, when the threads
 * could not be started): while live, failures recorded on the fault thread
 * are the receiver's to report (on_event); clearing it delivers one still
 * pending. */
void dest_recv_live(struct pcopy_dest *d, bool live);

/* ---- uffd_open.c ---- */

/* Detect memory types, open the uffd (or adopt opts->uffd), UFFDIO_API and
 * register every region. Caller's thread (create). */
int dest_uffd_setup(struct pcopy_dest *d, int uffd_in);
/* UFFDIO_UNREGISTER every region (after completion only). */
void dest_uffd_unregister(struct pcopy_dest *d);

/* ---- place.c (receiver thread, except place_wake) ---- */

/* Place the run of conn c (data from c->staging) and empty it. Pages
 * received or removed meanwhile are skipped. Returns 0 or -errno after
 * recording the error with dest_fail. Thread owning c. */
int place_run(struct pcopy_dest *d, struct dest_conn *c);
/* UFFDIO_WAKE [addr, addr+len). Returns 0 or -errno (logged). Any thread. */
int place_wake(struct pcopy_dest *d, uint64_t addr, uint64_t len, bool present);

/* ---- assemble.c (receiver thread) ---- */

/* Why the receive loop must stop or pause. */
enum recv_end {
	RECV_GO = 0,	/* carry on */
	RECV_STOP,	/* complete, or destroy */
	RECV_FAIL,	/* fatal: dest_fail was called, tell the source */
	RECV_PEER_FAIL,	/* fatal, the source said so or left: do not answer */
	RECV_BREAK,	/* the connection is unusable: pause (break_why says why) */
};

/* Cut c's buffered bytes into messages and handle the whole ones. */
enum recv_end asm_parse(struct pcopy_dest *d, struct dest_conn *c);
/* Drop the partial host page and the unplaced run (after a break). */
void asm_reset(struct dest_conn *c);
/* Record why a connection broke; returns RECV_BREAK, or RECV_FAIL after
 * dest_fail when resuming is impossible. Receiver thread. */
enum recv_end dest_break(struct pcopy_dest *d, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* The same for connection c: the urgent one's reason goes to c->why, and
 * after completion it just ends (RECV_STOP). Thread owning c. */
enum recv_end dest_conn_break(struct pcopy_dest *d, struct dest_conn *c, int err,
			      const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* ---- events.c (fault thread) ---- */

struct uffd_msg;

/* Handle a non-fault userfaultfd message (REMOVE, UNMAP, REMAP, FORK). */
void ev_handle(struct pcopy_dest *d, const struct uffd_msg *m);
/* Resolve a fault on a removed host page with zeros. Returns 0, or -EAGAIN
 * when an event must be read first. Fault thread. */
int ev_zero_fill(struct pcopy_dest *d, struct dest_region *r, uint64_t hp);

/* ---- resume.c ---- */

/* Thread body of the reconnect thread (opts.connect set). */
void *dest_reconnect_main(void *arg);
/* Our HELLO for a connection of this kind. */
void dest_hello_for(const struct pcopy_dest *d, uint32_t kind,
		    struct wire_hello *h);
/* After completion, the connection broke before the source echoed DONE:
 * connect (opts.connect), RESUME handshake, the (full) received bitmap,
 * DONE again. Returns the new main fd, or -errno. Receiver thread. */
int dest_relink(struct pcopy_dest *d);

/* ---- urgent.c: the urgent connection, read by the fault thread ---- */

/* Take a handed-in urgent connection, close one the receiver unlinked.
 * Fault thread, after each kick_efd. */
void urg_sync(struct pcopy_dest *d);
/* The fd to poll for urgent replies, or -1. Fault thread. */
int urg_fd(const struct pcopy_dest *d);
/* Read, check and place what arrived on the urgent connection; on a
 * break, tell the receiver (urgent_end). Fault thread. */
void urg_input(struct pcopy_dest *d);
/* Send one message on the urgent connection without blocking on it
 * (reads answers while it is full), or like dest_send if this thread has
 * none. Returns 0 or -errno. Fault thread. */
int urg_send(struct pcopy_dest *d, struct wire_hdr *h, const void *p, size_t len);
/* What the fault thread asked the receiver to do (RECV_GO: nothing);
 * a RECV_BREAK comes with break_why filled. Receiver thread. */
enum recv_end urg_collect(struct pcopy_dest *d);

/* ---- fault.c / receiver.c ---- */

void *dest_fault_main(void *arg);
int dest_recv_init(struct pcopy_dest *d);
void dest_recv_fini(struct pcopy_dest *d);
void *dest_recv_main(void *arg);
/* Make room at the end of c->rbuf for the next receive (moves a partial
 * message to the front). Thread owning c. */
void dest_conn_compact(struct dest_conn *c);

#endif
