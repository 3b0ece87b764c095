/* SPDX-License-Identifier: MIT */
/*
 * Private state of the SOURCE (stream/source*.c): the handle, its regions,
 * connections, the request queue, the frame gatherer, the memory /
 * snapshot-file backends and the functions the source files call in each other.
 */
#ifndef PCOPY_STREAM_SOURCE_H
#define PCOPY_STREAM_SOURCE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "common.h"
#include "postcopy.h"
#include "wire.h"

#define SRC_BATCH_DEFAULT	(64u << 10)	/* opts.batch_bytes == 0 */
#define SRC_BATCH_MAX		(64u << 20)	/* larger values are clamped */
#define SRC_RAW_RUN_MAX		(64u << 10)	/* largest RAW frame payload */
#define SRC_QUEUE_INITIAL	1024u		/* first ring size (entries) */
#define SRC_URGENT_GRACE_NS	5000000u	/* see await_urgent, source_send.c */
#define SRC_TX_MIN		(16u << 10)	/* wire bytes gathered per sendmsg: */
#define SRC_TX_MAX		(1u << 20)	/* the batch, clamped to these */
#define SRC_TX_IOV		1024u		/* iovecs per sendmsg (IOV_MAX) */
#define SRC_TX_ARENA		(64u << 10)	/* zlib output held until a flush */
#define SRC_RESUME_DEFAULT_MS	60000
#define SRC_KEEPALIVE_DEFAULT_MS 10000
#define SRC_PROTO_BREAKS_MAX	16		/* protocol errors survived */

/* ---- request queue (source_queue.c) ---- */

/*
 * FIFO of global host-page indices waiting to be sent ahead of the background
 * scan. A `queued` bit per host page merges duplicates, so the ring never
 * holds more entries than there are host pages: it starts small and doubles,
 * bounded by that number, whatever the destination sends.
 */
struct src_queue {
	pthread_mutex_t lock;
	pthread_cond_t cond;		/* signalled on push, kick and close */
	uint64_t *ring;			/* cap entries */
	size_t cap, head, len;		/* under lock */
	size_t limit;			/* total host pages: cap never exceeds it */
	uint64_t *queued;		/* bitmap over global host pages, under lock */
	bool closed;			/* under lock; no more waiting */
	unsigned kicks;			/* under lock; src_queue_kick */
	_Atomic size_t pending;		/* == len, read without the lock */
};

int src_queue_init(struct src_queue *q, uint64_t total_pages);
void src_queue_fini(struct src_queue *q);
long src_queue_push(struct src_queue *q, const uint64_t *pages, size_t n);
bool src_queue_nonempty(struct src_queue *q);
bool src_queue_pop(struct src_queue *q, uint64_t *page);
int src_queue_wait_pop(struct src_queue *q, uint64_t *page,
		       uint64_t deadline_ns);
void src_queue_wait(struct src_queue *q, uint64_t deadline_ns);
void src_queue_close(struct src_queue *q);
void src_queue_kick(struct src_queue *q);
void src_queue_reset(struct src_queue *q);
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
	_Atomic uint64_t *unsent;	/* 1 bit per host page; cleared by
					   whoever claims the page to send it
					   (atomic), set again only by a resume
					   while every sending thread is parked */
};

/*
 * A read window of the file backend: up to `cap` bytes of one region read
 * ahead, with a bit per 4 KiB target page that lay entirely in a hole (known
 * zero without reading), and the last data/hole extent found with
 * SEEK_DATA/SEEK_HOLE. One per sending thread.
 */
struct src_window {
	uint8_t *buf;
	size_t cap;			/* bytes, multiple of 4096 */
	uint64_t *hole;			/* cap / 4096 bits */
	int region;			/* -1: empty */
	size_t lo, len;			/* region byte range held */
	int ext_region;			/* -1: no extent cached */
	bool ext_data;
	off_t ext_lo, ext_hi;		/* file offsets */
	_Atomic uint64_t *bytes_read;	/* the handle's counter (tests) */
};

/* What the sender sees of [off, off + len) of a region. */
struct src_view {
	const uint8_t *data;		/* len bytes */
	const uint64_t *hole;		/* NULL, or hole bits for the target pages */
	size_t hole_base;		/* bit of the view's first target page */
};

struct src_tx;
int src_window_init(struct src_window *w, size_t cap,
		    _Atomic uint64_t *bytes_read);
void src_window_fini(struct src_window *w);
int src_backend_view(struct pcopy_source *s, struct src_tx *tx, unsigned ri,
		     size_t off, size_t len, struct src_view *v);

/* ---- frame gathering and sending (source_tx.c) ---- */

/*
 * Frames gathered for one sendmsg: sealed headers and pointers to their
 * payloads (caller memory, the window, or the zlib arena), so a whole batch
 * of 4 KiB pages costs one system call. One per sending thread and
 * connection; the payloads must stay put until the flush (the window flushes
 * before it refills, the arena flushes when full).
 */
struct src_tx {
	struct pcopy_source *s;
	int fd;				/* connection written to */
	uint64_t gen;			/* its session generation */
	bool urgent;			/* urgent connection: rate debt, no wait */
	unsigned niov, nhdr;
	size_t bytes;			/* wire bytes gathered */
	size_t limit_busy, limit_quiet;	/* flush at this many: while
					   requests come, in a quiet spell */
	struct iovec *iov;		/* SRC_TX_IOV */
	uint8_t (*hdr)[PCOPY_WIRE_HDR_SIZE];	/* SRC_TX_IOV / 2 */
	uint8_t *arena;			/* SRC_TX_ARENA of zlib output */
	size_t arena_used;
	uint8_t *zbuf;			/* one target page of zlib output */
	uint64_t pages[4];		/* gathered target pages per kind */
	uint64_t payload;		/* gathered image bytes */
	uint64_t host_pages;		/* gathered host pages (stats) */
	uint64_t last_tx_ns;		/* last successful send */
	uint64_t flushes;		/* successful flushes so far */
	bool paced;			/* TCP, pacing on: src_tx_room bounds the background */
	double bw;			/* TCP delivery rate estimate, bytes/ns */
	bool quiet;			/* paced for a destination that asks
					   for nothing (src_tx_room) */
	uint64_t rate_t, rate_acked;	/* its window: start, bytes acked then */
	struct src_window win;
	struct codec_zlib *zlib;	/* when PCOPY_FEAT_ZLIB was negotiated */
};

int src_tx_new(struct pcopy_source *s, bool urgent, struct src_tx **out);
void src_tx_free(struct src_tx *tx);
void src_tx_drop(struct src_tx *tx);
int src_tx_frame(struct src_tx *tx, uint8_t kind, unsigned ri, size_t off,
		 uint32_t count, const void *payload, size_t len);
uint8_t *src_tx_arena(struct src_tx *tx, size_t need, int *err);
int src_tx_flush(struct src_tx *tx);
int src_tx_simple(struct src_tx *tx, uint8_t type);
bool src_sockopts(struct pcopy_source *s, int fd, bool urgent);
size_t src_tx_room(struct src_tx *tx, uint64_t *wait_ns);
size_t src_tx_batch(const struct src_tx *tx);
size_t src_link_budget(struct pcopy_source *s);
void src_rate_init(struct pcopy_source *s);
int src_rate_wait(struct pcopy_source *s, uint64_t gen, size_t bytes);
void src_rate_debt(struct pcopy_source *s, size_t bytes);

/* ---- the handle (source.c) ---- */

enum src_state {
	SRC_INIT = 0,		/* created, not started */
	SRC_RUNNING,		/* a main connection is live */
	SRC_PAUSED,		/* the connection broke: waiting for a resume */
	SRC_DONE,		/* destination sent DONE */
	SRC_FAILED,		/* an error ended the session */
};

struct src_counters {
	_Atomic uint64_t pages_zero, pages_raw, pages_zlib;
	_Atomic uint64_t bytes_wire, bytes_payload;
	_Atomic uint64_t requests, request_msgs, duplicates;
	_Atomic uint64_t host_pages_sent;
	_Atomic uint64_t breaks, resent_pages, urgent_pages;
	_Atomic uint64_t proto_breaks;	/* breaks caused by a protocol error */
};

#define SRC_STAT_ADD(s, field, v) \
	atomic_fetch_add_explicit(&(s)->st.field, (v), memory_order_relaxed)

/* A connection served by one library thread (the main one's reader, or the
 * urgent one's request server). */
struct src_conn {
	int fd;				/* owned, or -1 */
	uint64_t gen;			/* session generation it belongs to */
	pthread_t thread;
	bool started;			/* thread to join */
	bool live;			/* thread running (under s->lock) */
	_Atomic uint64_t last_rx_ns;	/* keepalive: last message read */
};

struct pcopy_source {
	struct pcopy_logger lg;
	struct pcopy_errslot es;
	struct pcopy_source_opts opts;	/* defaults filled in */
	uint8_t *psk;			/* our copy of opts.psk */
	size_t batch;			/* background bytes per batch */
	size_t chunk;			/* largest power of two <= batch: host
					   pages are read in chunks of it */
	bool any_file;			/* some region is a snapshot file */
	uint64_t keepalive_ns;		/* 0: off */
	uint64_t deadline_ns;		/* resume deadline; UINT64_MAX: forever */

	unsigned n;
	struct src_region reg[PCOPY_REGIONS_MAX];
	uint64_t total_pages;
	struct wire_hello hello;	/* ours: its region table validates REQs */
	uint32_t features;		/* negotiated on the main connection */

	int stop_fd;			/* eventfd: readable -> the session is over */
	struct src_queue q;
	struct src_tx *tx;		/* the sender's: background */
	struct src_tx *rtx;		/* the sender's: requested pages */
	_Atomic uint64_t file_bytes_read;

	pthread_mutex_t conn_lock;	/* serialises pcopy_source_add_conn */
	pthread_t sender;
	bool sender_started;

	pthread_mutex_t lock;		/* everything below that is not atomic */
	pthread_cond_t cond;		/* state changes (CLOCK_MONOTONIC) */
	enum src_state state;
	struct src_conn main;		/* main connection + its reader */
	struct src_conn urg;		/* urgent connection + its thread */
	uint64_t gen;			/* bumped by each resume */
	_Atomic uint64_t live_gen;	/* gen while RUNNING, else 0 */
	bool sender_parked;		/* sender waits for a connection */
	bool resuming;			/* RUNNING, but the sender waits: a
					   resume still queues requests */
	uint64_t t_pause;		/* when the pause began */
	char break_msg[PCOPY_ERRMSG_MAX];	/* why */
	_Atomic bool over;		/* state is DONE or FAILED: threads stop */
	bool notify_peer;		/* failure the peer has not heard about */
	uint64_t t_start, t_end;

	/* token bucket of max_rate_bps (rate_lock) */
	pthread_mutex_t rate_lock;
	double tokens;			/* bytes; negative = debt */
	double burst;
	uint64_t rate_t;		/* last refill */

	_Atomic uint64_t pages_left;	/* host pages not yet claimed to send */
	_Atomic uint64_t urg_unsent;	/* host pages the urgent thread claimed
					   and has not written yet: END waits
					   for 0 (source_conn.c) */
	_Atomic uint64_t link_rate;	/* bytes/s the paced main connection
					   delivers; 0: unknown or not paced */
	_Atomic bool main_paced;	/* the main connection is paced (its
					   rate may be unknown yet) */
	_Atomic uint64_t bg_hint;	/* 1 + global host page where the
					   background scan goes on (set by the
					   urgent thread: faults cluster); 0:
					   none */
	_Atomic uint64_t req_ns;	/* when a REQ was last read on either
					   connection, or the main connection
					   started (the pacing follows it,
					   source_tx.c) */
	_Atomic uint64_t urg_req_ns;	/* when the urgent thread last read a
					   REQ; 0: never (the sender's priority
					   follows it, source_send.c) */
	uint64_t urgent_grace_ns;	/* the background waits this long for
					   the urgent connection (source_send.c);
					   tests change it */
	bool pace_loopback;		/* tests only: pace a loopback peer too
					   (set before start) */
	int bg_nice_base;		/* sender thread only: its niceness */
	bool bg_niced, bg_nice_stuck;	/* sender thread only */
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

/*
 * A connection of generation `gen` failed with err. With resume negotiated
 * the session pauses (every connection is shut down, threads park); without,
 * it ends. `proto`: the peer broke the protocol (counted; too many end the
 * session, and then the peer is told why). Stale generations are ignored.
 * Any library thread.
 */
void src_break(struct pcopy_source *s, uint64_t gen, int err, bool proto,
	       const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* True while generation gen is the live one (no break, no end). */
static inline bool src_live(struct pcopy_source *s, uint64_t gen)
{
	return atomic_load_explicit(&s->live_gen, memory_order_acquire) == gen;
}

int src_thread_start(pthread_t *t, void *(*fn)(void *), void *arg);

/* ---- connections (source_conn.c) ---- */

void *src_reader_main(void *arg);
void src_conn_reap(struct pcopy_source *s, struct src_conn *c);
/* Resume on fd (handshake done, kind RESUME): source_resume.c. Caller's
 * thread, with conn_lock. */
int src_resume(struct pcopy_source *s, int fd, char *msg, size_t len);
/* A restarted source (PCOPY_SOURCE_ADOPT), source_resume.c: may the first
 * connection's HELLO be adopted (1, *sid), refused (-EPROTO, the peer was
 * told), or is it for the plain handshake (0)? Then adopt the session on
 * fd once its RESUME handshake succeeded. Caller's thread, from start. */
int src_adopt_check(struct pcopy_source *s, int fd, uint64_t deadline,
		    uint64_t *sid, char *msg, size_t len);
int src_adopt(struct pcopy_source *s, int fd);
int src_handle_msg(struct pcopy_source *s, uint64_t gen, int fd,
		   const struct wire_hdr *h, const uint8_t *buf,
		   struct wire_req *reqs);

/* ---- sender (source_send.c) ---- */

void *src_sender_main(void *arg);
/* Mark the host pages of one validated REQ entry for sending. Reader thread. */
int src_request(struct pcopy_source *s, const struct wire_req *rq);
bool src_claim(struct pcopy_source *s, struct src_region *r, uint64_t p);
int src_send_host_page(struct src_tx *tx, unsigned ri, uint64_t p);

/* ---- white-box accessors for test/check_source.c ---- */

size_t src_debug_queue_capacity(struct pcopy_source *s);
uint64_t src_debug_file_bytes_read(struct pcopy_source *s);

#endif
