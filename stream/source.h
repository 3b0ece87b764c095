/* SPDX-License-Identifier: MIT */
/*
 * Private state of the SOURCE (stream/source*.c): the handle, its regions,
 * the request queue, the memory / snapshot-file backends and the functions
 * the source files call in each other.
 */
#ifndef PCOPY_STREAM_SOURCE_H
#define PCOPY_STREAM_SOURCE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "common.h"
#include "postcopy.h"
#include "wire.h"

#define SRC_BATCH_DEFAULT	(64u << 10)	/* opts.batch_bytes == 0 */
#define SRC_BATCH_MAX		(64u << 20)	/* larger values are clamped */
#define SRC_RAW_RUN_MAX		(64u << 10)	/* largest RAW frame payload */
#define SRC_QUEUE_INITIAL	1024u		/* first ring size (entries) */

/* ---- request queue (source_queue.c) ---- */

/*
 * FIFO of global host-page indices waiting to be sent ahead of the background
 * scan. A `queued` bit per host page merges duplicates, so the ring never
 * holds more entries than there are host pages: it starts small and doubles,
 * bounded by that number, whatever the destination sends.
 */
struct src_queue {
	pthread_mutex_t lock;
	pthread_cond_t cond;		/* signalled on push and on close */
	uint64_t *ring;			/* cap entries */
	size_t cap, head, len;		/* under lock */
	size_t limit;			/* total host pages: cap never exceeds it */
	uint64_t *queued;		/* bitmap over global host pages, under lock */
	bool closed;			/* under lock; no more waiting */
	_Atomic size_t pending;		/* == len, read without the lock */
};

int src_queue_init(struct src_queue *q, uint64_t total_pages);
void src_queue_fini(struct src_queue *q);
long src_queue_push(struct src_queue *q, const uint64_t *pages, size_t n);
bool src_queue_nonempty(struct src_queue *q);
bool src_queue_pop(struct src_queue *q, uint64_t *page);
int src_queue_wait_pop(struct src_queue *q, uint64_t *page);
void src_queue_close(struct src_queue *q);
size_t src_queue_capacity(struct src_queue *q);

/* ---- regions and backends (source_backend.c) ---- */

struct src_region {
	char name[PCOPY_NAME_MAX + 1];
	const uint8_t *mem;		/* memory backend, or NULL */
	int fd;				/* file backend (not owned), or -1 */
	off_t file_offset;		/* where the region starts in the file */
	size_t length;
	size_t page_size;		/* host page */
	uint64_t npages;		/* host pages */
	uint64_t first;			/* global index of host page 0 */
	_Atomic uint64_t *unsent;	/* 1 bit per host page; only the sender clears */
	/* file backend: the last data/hole extent found with SEEK_DATA/HOLE,
	 * in file offsets; sender thread only */
	bool ext_valid;
	bool ext_data;
	off_t ext_lo, ext_hi;
};

/*
 * A read window of the file backend: up to `cap` bytes of one region read
 * ahead, with a bit per 4 KiB target page that lay entirely in a hole (known
 * zero without reading). Sender thread only.
 */
struct src_window {
	uint8_t *buf;
	size_t cap;			/* bytes, multiple of 4096 */
	uint64_t *hole;			/* cap / 4096 bits */
	int region;			/* -1: empty */
	size_t lo, len;			/* region byte range held */
	_Atomic uint64_t bytes_read;	/* file bytes read so far (tests) */
};

/* What the sender sees of [off, off + len) of a region. */
struct src_view {
	const uint8_t *data;		/* len bytes */
	const uint64_t *hole;		/* NULL, or hole bits for the target pages */
	size_t hole_base;		/* bit of the view's first target page */
};

int src_window_init(struct src_window *w, size_t cap);
void src_window_fini(struct src_window *w);
int src_backend_view(struct pcopy_source *s, unsigned ri, size_t off,
		     size_t len, struct src_view *v);

/* ---- the handle (source.c) ---- */

enum src_state {
	SRC_INIT = 0,		/* created, not started */
	SRC_RUNNING,		/* threads running */
	SRC_DONE,		/* destination sent DONE */
	SRC_FAILED,		/* an error ended the session */
};

struct src_counters {
	_Atomic uint64_t pages_zero, pages_raw, pages_zlib;
	_Atomic uint64_t bytes_wire, bytes_payload;
	_Atomic uint64_t requests, request_msgs, duplicates;
	_Atomic uint64_t host_pages_sent;
};

#define SRC_STAT_ADD(s, field, v) \
	atomic_fetch_add_explicit(&(s)->st.field, (v), memory_order_relaxed)

struct pcopy_source {
	struct pcopy_logger lg;
	struct pcopy_errslot es;
	struct pcopy_source_opts opts;	/* defaults filled in */
	size_t batch;			/* background bytes per batch */
	size_t chunk;			/* largest power of two <= batch: host
					   pages are read in chunks of it */

	unsigned n;
	struct src_region reg[PCOPY_REGIONS_MAX];
	uint64_t total_pages;
	struct wire_hello hello;	/* ours: its region table validates REQs */

	int fd;				/* the connection (owned), or -1 */
	int stop_fd;			/* eventfd: readable -> reader stops */
	uint32_t features;		/* negotiated */

	struct src_queue q;
	struct src_window win;
	struct codec_zlib *zlib;	/* when PCOPY_FEAT_ZLIB was negotiated */
	uint8_t *zbuf;			/* compressed output, one target page */

	pthread_t reader, sender;
	bool reader_started, sender_started;

	pthread_mutex_t lock;		/* state, result, t_end */
	pthread_cond_t cond;		/* state changes (CLOCK_MONOTONIC) */
	enum src_state state;
	_Atomic bool over;		/* state is DONE or FAILED: threads stop */
	bool notify_peer;		/* failure the peer has not heard about */
	uint64_t t_start, t_end;

	_Atomic uint64_t pages_left;	/* host pages not yet claimed to send */
	struct src_counters st;
};

/*
 * End the session with err (0: success, the destination sent DONE). The
 * first call wins; err < 0 needs a message (fmt) for the error slot.
 * `notify` asks the sender to tell the destination with an ERROR message.
 * Any library thread or the caller's thread.
 */
void src_end(struct pcopy_source *s, int err, bool notify, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* ---- sender (source_send.c) ---- */

void *src_sender_main(void *arg);
/* Mark the host pages of one validated REQ entry for sending. Reader thread. */
int src_request(struct pcopy_source *s, const struct wire_req *rq);

/* ---- white-box accessors for test/check_source.c ---- */

size_t src_debug_queue_capacity(struct pcopy_source *s);
uint64_t src_debug_file_bytes_read(struct pcopy_source *s);

#endif
