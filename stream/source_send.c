/* SPDX-License-Identifier: MIT */
/*
 * The source's sender thread: requested pages first, the background scan
 * second, each host page sent whole as ZERO / RAW / ZLIB frames gathered
 * into large writes; then END, then idle (PINGs) until the session ends,
 * parked while a break waits for a resume. Also the reader's side of a
 * request and the host-page encoder the urgent thread shares.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <sched.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "source.h"

#define TP PCOPY_TARGET_PAGE
/* Niceness the background sender adds to its own when the urgent thread
 * serves requests: on a busy machine (2 cores: sender, receiver, urgent
 * thread, fault thread and the application) the urgent thread and the
 * destination's threads then win the CPU over the bulk stream. Measured
 * over a Unix socket, 512 MiB, 2 touchers (hot-set time / random-order
 * restore time / random p99): +0 0.12 s / 0.38 s / 230-340 us, +5 0.08 s /
 * 0.49 s / 140 us, +10 0.07 s / 0.57 s / 180 us: the background then
 * yields too much to the touching threads. */
#ifndef BG_NICE		/* -DBG_NICE=0 builds the comparison */
#define BG_NICE 5
#endif
#define BG_NICE_HOLD_NS (50u * 1000000u)

static bool unsent_test(struct src_region *r, uint64_t p)
{
	uint64_t w = atomic_load_explicit(&r->unsent[p / 64],
					  memory_order_relaxed);

	return w & (UINT64_C(1) << (p % 64));
}

/*
 * Clear the unsent bit of host page p; returns whether it was set. The
 * sender and the urgent thread both claim, atomically, so pages_left drops
 * exactly once per page; the reader only reads bits to skip requests for
 * pages already sent. Sender or urgent thread.
 */
bool src_claim(struct pcopy_source *s, struct src_region *r, uint64_t p)
{
	uint64_t bit = UINT64_C(1) << (p % 64);

	if (!(atomic_fetch_and_explicit(&r->unsent[p / 64], ~bit,
					memory_order_relaxed) & bit))
		return false;
	/* Counted at claim time, not after the send: the destination may
	 * read the last page and send DONE before the send returns, and the
	 * reader must then find nothing left. Release: the urgent thread
	 * counts a page in urg_unsent before claiming it, and the sender must
	 * see that count once it sees pages_left reach 0. */
	atomic_fetch_sub_explicit(&s->pages_left, 1, memory_order_release);
	return true;
}

/* Global host-page index -> region; at most 64 regions, so a linear scan. */
static unsigned region_of(struct pcopy_source *s, uint64_t g)
{
	unsigned i;

	for (i = 1; i < s->n; i++)
		if (g < s->reg[i].first)
			break;
	return i - 1;
}

/*
 * Queue the host pages covered by one validated REQ entry, skipping (and
 * counting as duplicates) those already sent or already queued. Returns 0,
 * -ENOMEM, or -ECANCELED when the session ended meanwhile. Reader thread.
 * Cost: O(host pages covered), 64 at a time where all are sent; a hostile
 * entry can cover a whole region, so the loop also watches for the end of
 * the session to keep destroy prompt.
 */
int src_request(struct pcopy_source *s, const struct wire_req *rq)
{
	struct src_region *r = &s->reg[rq->region];
	uint64_t p = rq->offset / r->page_size;
	uint64_t last = (rq->offset + (uint64_t)rq->count * TP - 1) / r->page_size;
	uint64_t batch[256];
	uint64_t dups = 0, steps = 0;
	size_t k = 0;
	long merged;
	int err = 0;

	while (p <= last) {
		if (++steps % 65536 == 0 && atomic_load(&s->over)) {
			err = -ECANCELED;
			break;
		}
		if (p % 64 == 0 && last - p >= 63 &&
		    !atomic_load_explicit(&r->unsent[p / 64],
					  memory_order_relaxed)) {
			dups += 64;	/* 64 pages, all sent */
			p += 64;
			continue;
		}
		if (!unsent_test(r, p)) {
			dups++;
			p++;
			continue;
		}
		batch[k++] = r->first + p++;
		if (k == 256 || p > last) {
			merged = src_queue_push(&s->q, batch, k);
			k = 0;
			if (merged < 0) {
				err = (int)merged;
				break;
			}
			dups += (uint64_t)merged;
		}
	}
	if (k && !err) {
		merged = src_queue_push(&s->q, batch, k);
		if (merged < 0)
			err = (int)merged;
		else
			dups += (uint64_t)merged;
	}
	SRC_STAT_ADD(s, duplicates, dups);
	return err;
}

/* Pending runs of one host page: zeros carry over chunks, RAW data not. */
struct run {
	size_t zero_off, zero_n;	/* zero_n target pages from zero_off */
	size_t raw_off, raw_n;
	const uint8_t *raw_data;
};

static int flush_zero(struct src_tx *tx, unsigned ri, struct run *rn)
{
	int err = 0;

	if (rn->zero_n)
		err = src_tx_frame(tx, PCOPY_KIND_ZERO, ri, rn->zero_off,
				   (uint32_t)rn->zero_n, NULL, 0);
	rn->zero_n = 0;
	return err;
}

static int flush_raw(struct src_tx *tx, unsigned ri, struct run *rn)
{
	int err = 0;

	if (rn->raw_n)
		err = src_tx_frame(tx, PCOPY_KIND_RAW, ri, rn->raw_off,
				   (uint32_t)rn->raw_n, rn->raw_data,
				   rn->raw_n * TP);
	rn->raw_n = 0;
	return err;
}

/* Classify and gather one non-zero target page at off (data = its bytes). */
static int page_data(struct src_tx *tx, unsigned ri, struct run *rn,
		     size_t off, const uint8_t *data)
{
	int err;

	if ((err = flush_zero(tx, ri, rn)))
		return err;
	if (tx->zlib) {
		long zn = codec_zlib_compress(tx->zlib, data, TP, tx->zbuf, TP);
		uint8_t *z;

		if (zn < 0)
			return (int)zn;
		if (zn > 0) {
			/* the RAW run before it goes first; the output moves
			 * to the arena, where it lives until the flush */
			if ((err = flush_raw(tx, ri, rn)))
				return err;
			z = src_tx_arena(tx, (size_t)zn, &err);
			if (!z)
				return err;
			memcpy(z, tx->zbuf, (size_t)zn);
			return src_tx_frame(tx, PCOPY_KIND_ZLIB, ri, off, 1,
					    z, (size_t)zn);
		}
		/* incompressible: joins the RAW run */
	}
	if (rn->raw_n && rn->raw_off + rn->raw_n * TP == off &&
	    (rn->raw_n + 1) * TP <= SRC_RAW_RUN_MAX) {
		rn->raw_n++;
		return 0;
	}
	if ((err = flush_raw(tx, ri, rn)))
		return err;
	rn->raw_off = off;
	rn->raw_n = 1;
	rn->raw_data = data;
	return 0;
}

static int page_zero(struct src_tx *tx, unsigned ri, struct run *rn,
		     size_t off)
{
	int err;

	if ((err = flush_raw(tx, ri, rn)))
		return err;
	if (rn->zero_n && rn->zero_off + rn->zero_n * TP == off) {
		rn->zero_n++;
		return 0;
	}
	if ((err = flush_zero(tx, ri, rn)))
		return err;
	rn->zero_off = off;
	rn->zero_n = 1;
	return 0;
}

/*
 * Gather host page p of region ri into tx: its target pages in order,
 * consecutively, read in chunks of at most one batch (a 2 MiB host page of
 * a file region takes several window fills). Returns 0 or -errno; a send
 * error is returned for the caller to report, a read error has already
 * ended the session. Sender or urgent thread (its own tx).
 */
int src_send_host_page(struct src_tx *tx, unsigned ri, uint64_t p)
{
	struct pcopy_source *s = tx->s;
	struct src_region *r = &s->reg[ri];
	size_t chunk = r->page_size < s->chunk ? r->page_size : s->chunk;
	size_t base = (size_t)p * r->page_size, c, i;
	uint64_t flushes = tx->flushes;
	struct run rn = { 0 };
	struct src_view v;
	int err;

	for (c = 0; c < r->page_size; c += chunk) {
		if (c && !src_live(s, tx->gen))
			return -ECANCELED;
		err = src_backend_view(s, tx, ri, base + c, chunk, &v);
		if (err)
			return err;
		for (i = 0; i < chunk / TP; i++) {
			const uint8_t *d = v.data + i * TP;
			size_t off = base + c + i * TP;
			size_t hb = v.hole_base + i;
			bool zero;

			zero = (v.hole && (v.hole[hb / 64] >> (hb % 64)) & 1) ||
			       codec_is_zero(d, TP);
			err = zero ? page_zero(tx, ri, &rn, off)
				   : page_data(tx, ri, &rn, off, d);
			if (err)
				return err;
		}
		/* RAW runs end at a chunk: the window may be refilled */
		if ((err = flush_raw(tx, ri, &rn)))
			return err;
	}
	if ((err = flush_zero(tx, ri, &rn)))
		return err;
	/* Part of this host page went out already: send the rest now, so
	 * that tx never holds the tail of a host page and frames of another
	 * gatherer on the same socket cannot land inside it. */
	if (tx->flushes != flushes && tx->niov)
		return src_tx_flush(tx);
	return 0;
}

/* Background cursor: region index and host page. */
struct cursor {
	unsigned ri;
	uint64_t p;
};

static void cursor_after(struct pcopy_source *s, struct cursor *cur,
			 unsigned ri, uint64_t p)
{
	cur->ri = ri;
	cur->p = p + 1;
	if (cur->p == s->reg[ri].npages) {
		cur->ri = (ri + 1) % s->n;
		cur->p = 0;
	}
}

/*
 * First unsent host page at or after the cursor, wrapping around once.
 * Returns false if there is none. O(bitmap words) in the worst case,
 * amortised O(1) while the scan moves forward.
 */
static bool next_unsent(struct pcopy_source *s, struct cursor *cur)
{
	unsigned k;

	for (k = 0; k <= s->n; k++) {
		unsigned ri = (cur->ri + k) % s->n;
		struct src_region *r = &s->reg[ri];
		uint64_t p = k ? 0 : cur->p;
		uint64_t nw = (r->npages + 63) / 64;

		while (p < r->npages) {
			uint64_t w = atomic_load_explicit(&r->unsent[p / 64],
							  memory_order_relaxed);

			w &= ~UINT64_C(0) << (p % 64);
			if (w) {
				cur->ri = ri;
				cur->p = (p / 64) * 64 + (uint64_t)__builtin_ctzll(w);
				return true;
			}
			p = (p / 64 + 1) * 64;
			if (p / 64 >= nw)
				break;
		}
	}
	return false;
}

static uint64_t pages_left(struct pcopy_source *s)
{
	return atomic_load_explicit(&s->pages_left, memory_order_acquire);
}

/* Move the cursor to where the urgent thread last served a request, if it
 * did since the last look. */
static void follow_hint(struct pcopy_source *s, struct cursor *cur)
{
	uint64_t h;
	unsigned ri;

	if (!atomic_load_explicit(&s->bg_hint, memory_order_relaxed))
		return;
	h = atomic_exchange_explicit(&s->bg_hint, 0, memory_order_relaxed);
	if (!h || h - 1 >= s->total_pages)
		return;
	ri = region_of(s, h - 1);
	cur->ri = ri;
	cur->p = h - 1 - s->reg[ri].first;
}

/*
 * Wait until the urgent thread has written every page it claimed, so that
 * END follows the last page on any connection. Returns false if the
 * generation ended meanwhile. Sender thread.
 */
static bool wait_urgent_written(struct pcopy_source *s, uint64_t gen)
{
	struct timespec ts;
	uint64_t until;

	pthread_mutex_lock(&s->lock);
	while (src_live(s, gen) && atomic_load(&s->urg_unsent)) {
		/* the urgent thread broadcasts when it reaches 0; the timeout
		 * only bounds a missed wake-up */
		until = pcopy_now_ns() + 10000000ull;
		ts.tv_sec = (time_t)(until / 1000000000ull);
		ts.tv_nsec = (long)(until % 1000000000ull);
		pthread_cond_timedwait(&s->cond, &s->lock, &ts);
	}
	pthread_mutex_unlock(&s->lock);
	return src_live(s, gen);
}

/* Gather one queued host page g unless it was sent since it was queued. */
static int serve_one(struct pcopy_source *s, struct src_tx *tx,
		     struct cursor *cur, uint64_t g)
{
	unsigned ri = region_of(s, g);
	uint64_t p = g - s->reg[ri].first;
	int err;

	if (!src_claim(s, &s->reg[ri], p)) {
		SRC_STAT_ADD(s, duplicates, 1);
		return 0;
	}
	err = src_send_host_page(tx, ri, p);
	if (err)
		return err;
	SRC_STAT_ADD(s, requests, 1);
	SRC_STAT_ADD(s, host_pages_sent, 1);
	/* faults cluster: the scan goes on right after it */
	cursor_after(s, cur, ri, p);
	return 0;
}

/*
 * Serve the whole queue (first: an entry already taken, or UINT64_MAX) into
 * the request gatherer and send it at once, ahead of background frames
 * gathered but not yet sent (those are whole host pages, so frames may be
 * reordered between them). Returns 0 or -errno.
 */
static int serve_requests(struct pcopy_source *s, struct src_tx *rtx,
			  struct cursor *cur, uint64_t first)
{
	bool any = first != UINT64_MAX;
	uint64_t g;
	int err;

	if (any && (err = serve_one(s, rtx, cur, first)))
		return err;
	while (src_live(s, rtx->gen) && src_queue_pop(&s->q, &g)) {
		any = true;
		err = serve_one(s, rtx, cur, g);
		if (err)
			return err;
	}
	return any ? src_tx_flush(rtx) : 0;
}

/*
 * Idle on the main connection: wait for a request, sending a PING whenever
 * nothing went out for a third of the keepalive (unless `quiet`: the
 * connection already failed a write and the reader will judge it). Returns
 * 1 with *g set, 0 when the queue was closed (break or end), or -errno of a
 * failed PING.
 */
static int idle_wait(struct pcopy_source *s, struct src_tx *tx, uint64_t *g,
		     bool quiet)
{
	for (;;) {
		uint64_t deadline = 0;
		int r;

		if (s->keepalive_ns && !quiet)
			deadline = tx->last_tx_ns + s->keepalive_ns / 3;
		r = src_queue_wait_pop(&s->q, g, deadline);
		if (r != -ETIMEDOUT)
			return r;
		if (!src_live(s, tx->gen))
			return 0;
		r = src_tx_simple(tx, PCOPY_MSG_PING);
		if (r)
			return r;
	}
}

/* Wait (on the handle's condvar) until generation gen is no longer live. */
static void wait_not_live(struct pcopy_source *s, uint64_t gen)
{
	pthread_mutex_lock(&s->lock);
	while (src_live(s, gen))
		pthread_cond_wait(&s->cond, &s->lock);
	pthread_mutex_unlock(&s->lock);
}

/*
 * Send END, then idle until the generation ends: whatever is still queued
 * was sent since (a duplicate). A destination that has every page may send
 * DONE and close before reading END, so a broken pipe here is left for the
 * reader to judge (DONE -> success, EOF without DONE -> a break).
 */
static int finish(struct src_tx *tx)
{
	struct pcopy_source *s = tx->s;
	bool quiet = false;
	uint64_t g;
	int err;

	err = src_tx_flush(tx);
	if (err)
		return err;
	if (!wait_urgent_written(s, tx->gen))
		return 0;
	/* counted before END, so the stats are final when DONE comes back */
	while (src_queue_pop(&s->q, &g))
		SRC_STAT_ADD(s, duplicates, 1);
	err = src_tx_simple(tx, PCOPY_MSG_END);
	if (err && err != -EPIPE && err != -ECONNRESET)
		return err;
	quiet = err != 0;
	for (;;) {
		err = idle_wait(s, tx, &g, quiet);
		if (err == 1) {
			/* a later resume would bring it back as unsent */
			SRC_STAT_ADD(s, duplicates, 1);
			continue;
		}
		if (err == 0)
			return 0;
		if (err != -EPIPE && err != -ECONNRESET)
			return err;
		quiet = true;
	}
}

/*
 * Every destination offers the urgent connection, and one that uses it adds
 * it right after the main one. Its handshake then competes with a
 * background stream that keeps both CPUs busy: it took 2.6-5.3 ms instead
 * of about 0.4 in 5 of 18 runs here (pcopy-bench --link tcp -r lib,
 * start_ms), and the first fault waited for it; 0.31-0.50 ms in 10 of 10
 * with this wait. So the background waits for the urgent connection,
 * at most urgent_grace_ns after the main connection started (t_conn);
 * requests are served meanwhile. Returns whether it waited. Sender thread.
 */
static bool await_urgent(struct pcopy_source *s, uint64_t t_conn)
{
	uint64_t now = pcopy_now_ns();
	bool live;

	if (!(s->features & PCOPY_FEAT_URGENT) ||
	    now - t_conn >= s->urgent_grace_ns)
		return false;
	pthread_mutex_lock(&s->lock);
	live = s->urg.live;
	pthread_mutex_unlock(&s->lock);
	if (live)
		return false;
	src_queue_wait(&s->q, t_conn + s->urgent_grace_ns);
	return true;
}

/*
 * One generation of the main connection: requests first, then background
 * batches of at most s->batch bytes (the queue is checked between host
 * pages), gathered into writes of one batch; requests go through
 * their own gatherer, flushed at once; then END and idle.
 * Returns 0 when the generation ended (break or end of session), or -errno.
 */
static void background_priority(struct pcopy_source *s);

static int stream(struct pcopy_source *s, struct src_tx *tx,
		  struct src_tx *rtx)
{
	bool nobg = s->opts.flags & PCOPY_SOURCE_NO_BACKGROUND;
	struct cursor cur = { 0, 0 };
	uint64_t g, t_conn = pcopy_now_ns();
	unsigned misses = 0;
	int err;

	while (src_live(s, tx->gen)) {
		size_t budget, room = SIZE_MAX;
		uint64_t wait;

		background_priority(s);
		err = serve_requests(s, rtx, &cur, UINT64_MAX);
		if (err)
			return err;
		if (!pages_left(s))
			return finish(tx);
		if (!nobg && await_urgent(s, t_conn))
			continue;
		if (!nobg)
			room = src_tx_room(tx, &wait);	/* may begin or end a quiet spell */
		budget = src_tx_batch(tx);
		if (room < budget) {
			if (!room) {
				/* the path holds enough: sleep, unless a
				 * request comes */
				src_queue_wait(&s->q, pcopy_now_ns() + wait);
				continue;
			}
			budget = room;
		}
		if (nobg) {
			/* only what is asked for: idle until it is */
			err = idle_wait(s, tx, &g, false);
			if (err == 1)
				err = serve_requests(s, rtx, &cur, g);
			if (err < 0)
				return err;
			continue;
		}
		while (src_live(s, tx->gen)) {
			unsigned ri;
			uint64_t p;

			follow_hint(s, &cur);
			if (!next_unsent(s, &cur)) {
				/* the urgent thread claimed the last pages
				 * and is about to count them: pages_left
				 * drops right after the bit */
				if (++misses > 1000000) {
					assert(!"unsent bitmap and pages_left disagree");
					return -EFAULT;
				}
				sched_yield();
				break;
			}
			misses = 0;
			ri = cur.ri;
			p = cur.p;
			cursor_after(s, &cur, ri, p);
			if (!src_claim(s, &s->reg[ri], p))
				continue;	/* the urgent thread has it */
			err = src_send_host_page(tx, ri, p);
			if (err)
				return err;
			SRC_STAT_ADD(s, host_pages_sent, 1);
			if (budget <= s->reg[ri].page_size ||
			    src_queue_nonempty(&s->q) || !pages_left(s))
				break;
			budget -= s->reg[ri].page_size;
		}
		/* paced: what the room allowed goes out now, so the next
		 * look at the socket sees it */
		if (tx->paced && (err = src_tx_flush(tx)))
			return err;
	}
	return 0;
}

/*
 * Park until a connection of a new generation is live: returns true with
 * tx->fd / tx->gen set, or false once the session is over. While paused,
 * this is also where the resume deadline expires.
 */
static bool next_conn(struct pcopy_source *s, struct src_tx *tx)
{
	char why[PCOPY_ERRMSG_MAX];
	struct timespec ts;
	uint64_t until;

	pthread_mutex_lock(&s->lock);
	for (;;) {
		if (atomic_load(&s->over))
			break;
		if (s->state == SRC_RUNNING && s->gen != tx->gen &&
		    !s->resuming) {
			tx->gen = s->gen;
			tx->fd = s->main.fd;
			s->sender_parked = false;
			pthread_mutex_unlock(&s->lock);
			return true;
		}
		if (!s->sender_parked) {
			s->sender_parked = true;
			pthread_cond_broadcast(&s->cond);
		}
		if (s->state != SRC_PAUSED || s->deadline_ns == UINT64_MAX) {
			pthread_cond_wait(&s->cond, &s->lock);
			continue;
		}
		until = s->t_pause + s->deadline_ns;
		if (pcopy_now_ns() >= until) {
			snprintf(why, sizeof(why), "%s", s->break_msg);
			pthread_mutex_unlock(&s->lock);
			src_end(s, -ETIMEDOUT, false,
				"the destination did not resume within %llu ms after the connection broke (%s)",
				(unsigned long long)(s->deadline_ns / 1000000),
				why);
			pthread_mutex_lock(&s->lock);
			continue;
		}
		ts.tv_sec = (time_t)(until / 1000000000ull);
		ts.tv_nsec = (long)(until % 1000000000ull);
		pthread_cond_timedwait(&s->cond, &s->lock, &ts);
	}
	s->sender_parked = true;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	return false;
}

/* Tell the destination why the session failed, if nobody has yet. */
static void notify_peer(struct pcopy_source *s, int fd)
{
	char msg[PCOPY_ERRMSG_MAX];
	bool notify;
	int err;

	pthread_mutex_lock(&s->lock);
	notify = s->state == SRC_FAILED && s->notify_peer;
	s->notify_peer = false;
	pthread_mutex_unlock(&s->lock);
	if (!notify || fd < 0)
		return;
	pthread_mutex_lock(&s->es.lock);
	err = s->es.err;
	memcpy(msg, s->es.msg, sizeof(msg));
	pthread_mutex_unlock(&s->es.lock);
	msg[sizeof(msg) - 1] = '\0';
	conn_send_error(fd, err < 0 ? -err : EPROTO, msg);
}

/*
 * The session ended with the destination's DONE: send DONE back, so that it
 * knows we saw it (a DONE lost in a break would otherwise leave us paused
 * until the resume deadline). Never blocks: the sender is the only writer
 * now, and a peer that does not read anymore does not need it.
 */
static void echo_done(int fd)
{
	struct wire_hdr h = { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_DONE };
	uint8_t b[PCOPY_WIRE_HDR_SIZE];

	wire_hdr_seal(b, &h, NULL, 0);
	if (send(fd, b, sizeof(b), MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
		/* gone or not reading: it ends on the EOF instead */
	}
}

/*
 * While the urgent thread is serving requests (one read within the last
 * BG_NICE_HOLD_NS), run the bulk stream BG_NICE lower so that thread and
 * the application win the CPU; otherwise at the caller's priority, since
 * with nothing faulting a niced sender only slows the restore down.
 * Best effort, this thread only: without CAP_SYS_NICE (or RLIMIT_NICE) the
 * niceness cannot be lowered again, and then it stays raised. Sender thread.
 */
static void background_priority(struct pcopy_source *s)
{
	uint64_t last = atomic_load_explicit(&s->urg_req_ns, memory_order_relaxed);
	bool want = last && pcopy_now_ns() - last < BG_NICE_HOLD_NS;
	id_t tid;

	if (want == s->bg_niced || s->bg_nice_stuck)
		return;
	tid = (id_t)syscall(SYS_gettid);
	if (!s->bg_niced) {
		errno = 0;
		s->bg_nice_base = getpriority(PRIO_PROCESS, tid);
		if (s->bg_nice_base == -1 && errno)
			return;
	}
	if (setpriority(PRIO_PROCESS, tid, s->bg_nice_base + (want ? BG_NICE : 0)) < 0) {
		s->bg_nice_stuck = s->bg_niced;	/* could not lower it again */
		return;
	}
	s->bg_niced = want;
}

/*
 * The sender thread: for each live generation of the main connection, run
 * stream(); park between generations (no connection: no spinning). A write
 * that finds the peer gone is left to the reader, which sees the same EOF
 * after any DONE the destination sent; other errors break the connection.
 * Returns NULL. Sender thread.
 */
void *src_sender_main(void *arg)
{
	struct pcopy_source *s = arg;
	struct src_tx *tx = s->tx, *rtx = s->rtx;
	bool done;
	int err;

	(void)pthread_setname_np(pthread_self(), "pcopy-src-send");	/* top -H, perf */
	while (next_conn(s, tx)) {
		src_tx_drop(tx);
		src_tx_drop(rtx);
		tx->paced = src_sockopts(s, tx->fd, false);
		tx->bw = 0.0;
		tx->quiet = false;
		atomic_store(&s->req_ns, pcopy_now_ns());	/* faults come first */
		tx->rate_t = 0;
		atomic_store(&s->link_rate, 0);
		atomic_store(&s->main_paced, tx->paced);
		rtx->fd = tx->fd;
		rtx->gen = tx->gen;
		tx->last_tx_ns = pcopy_now_ns();
		err = stream(s, tx, rtx);
		if (err == -EPIPE || err == -ECONNRESET)
			wait_not_live(s, tx->gen);
		else if (err && err != -ECANCELED)
			src_break(s, tx->gen, err, false,
				  "sending pages: %s", strerror(-err));
		else if (err)
			wait_not_live(s, tx->gen);
	}
	pthread_mutex_lock(&s->lock);
	err = s->main.fd;
	done = s->state == SRC_DONE;
	pthread_mutex_unlock(&s->lock);
	notify_peer(s, err);
	if (done && err >= 0)
		echo_done(err);
	/* The session is over: let the destination see EOF now rather than
	 * at destroy (the fd stays open until then). */
	if (err >= 0)
		shutdown(err, SHUT_RDWR);
	return NULL;
}
