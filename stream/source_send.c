/* SPDX-License-Identifier: MIT */
/*
 * The source's sender thread: requested pages first, the background scan
 * second, each host page sent whole as ZERO / RAW / ZLIB frames; then END,
 * then sleep until the session ends. Also the reader's side of a request.
 */
#include <assert.h>
#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#include "source.h"

#define TP PCOPY_TARGET_PAGE

static bool unsent_test(struct src_region *r, uint64_t p)
{
	uint64_t w = atomic_load_explicit(&r->unsent[p / 64],
					  memory_order_relaxed);

	return w & (UINT64_C(1) << (p % 64));
}

/*
 * Clear the unsent bit of host page p; returns whether it was set. Only the
 * sender clears bits, so a claimed page is sent exactly once; the reader only
 * reads them to skip requests for pages already sent.
 */
static bool unsent_claim(struct pcopy_source *s, struct src_region *r,
			 uint64_t p)
{
	uint64_t bit = UINT64_C(1) << (p % 64);

	if (!(atomic_fetch_and_explicit(&r->unsent[p / 64], ~bit,
					memory_order_relaxed) & bit))
		return false;
	/* Counted at claim time, not after the send: the destination may
	 * read the last page and send DONE before send_host_page returns,
	 * and the reader must then find nothing left. */
	atomic_fetch_sub_explicit(&s->pages_left, 1, memory_order_relaxed);
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

/* One PAGE frame; payload (may be NULL) goes out without a copy. */
static int send_frame(struct pcopy_source *s, uint8_t kind, unsigned ri,
		      size_t off, uint32_t count, const void *payload,
		      size_t len)
{
	struct wire_hdr h;
	int err;

	memset(&h, 0, sizeof(h));
	h.magic = PCOPY_WIRE_MAGIC;
	h.type = PCOPY_MSG_PAGE;
	h.kind = kind;
	h.region = ri;
	h.count = count;
	h.offset = off;
	h.length = (uint32_t)len;
	err = conn_send_msg(s->fd, &h, payload, len);
	if (err)
		return err;
	SRC_STAT_ADD(s, bytes_wire, PCOPY_WIRE_HDR_SIZE + len);
	SRC_STAT_ADD(s, bytes_payload, (uint64_t)count * TP);
	if (kind == PCOPY_KIND_ZERO)
		SRC_STAT_ADD(s, pages_zero, count);
	else if (kind == PCOPY_KIND_RAW)
		SRC_STAT_ADD(s, pages_raw, count);
	else
		SRC_STAT_ADD(s, pages_zlib, count);
	return 0;
}

/* Pending runs of one host page: zeros carry over chunks, RAW data not. */
struct run {
	size_t zero_off, zero_n;	/* zero_n target pages from zero_off */
	size_t raw_off, raw_n;
	const uint8_t *raw_data;
};

static int flush_zero(struct pcopy_source *s, unsigned ri, struct run *rn)
{
	int err = 0;

	if (rn->zero_n)
		err = send_frame(s, PCOPY_KIND_ZERO, ri, rn->zero_off,
				 (uint32_t)rn->zero_n, NULL, 0);
	rn->zero_n = 0;
	return err;
}

static int flush_raw(struct pcopy_source *s, unsigned ri, struct run *rn)
{
	int err = 0;

	if (rn->raw_n)
		err = send_frame(s, PCOPY_KIND_RAW, ri, rn->raw_off,
				 (uint32_t)rn->raw_n, rn->raw_data,
				 rn->raw_n * TP);
	rn->raw_n = 0;
	return err;
}

/* Classify and send one non-zero target page at off (data = its bytes). */
static int page_data(struct pcopy_source *s, unsigned ri, struct run *rn,
		     size_t off, const uint8_t *data)
{
	int err;

	if ((err = flush_zero(s, ri, rn)))
		return err;
	if (s->zlib) {
		long z = codec_zlib_compress(s->zlib, data, TP, s->zbuf, TP);

		if (z < 0)
			return (int)z;
		if (z > 0) {
			if ((err = flush_raw(s, ri, rn)))
				return err;
			return send_frame(s, PCOPY_KIND_ZLIB, ri, off, 1,
					  s->zbuf, (size_t)z);
		}
		/* incompressible: joins the RAW run */
	}
	if (rn->raw_n && rn->raw_off + rn->raw_n * TP == off &&
	    (rn->raw_n + 1) * TP <= SRC_RAW_RUN_MAX) {
		rn->raw_n++;
		return 0;
	}
	if ((err = flush_raw(s, ri, rn)))
		return err;
	rn->raw_off = off;
	rn->raw_n = 1;
	rn->raw_data = data;
	return 0;
}

static int page_zero(struct pcopy_source *s, unsigned ri, struct run *rn,
		     size_t off)
{
	int err;

	if ((err = flush_raw(s, ri, rn)))
		return err;
	if (rn->zero_n && rn->zero_off + rn->zero_n * TP == off) {
		rn->zero_n++;
		return 0;
	}
	if ((err = flush_zero(s, ri, rn)))
		return err;
	rn->zero_off = off;
	rn->zero_n = 1;
	return 0;
}

/*
 * Send host page p of region ri, already claimed: its target pages in order,
 * consecutively, read in chunks of at most one batch (a 2 MiB host page of
 * a file region takes several window fills). Returns 0 or -errno; a send
 * error is returned for the caller to report, a read error has already
 * ended the session.
 */
static int send_host_page(struct pcopy_source *s, unsigned ri, uint64_t p)
{
	struct src_region *r = &s->reg[ri];
	size_t chunk = r->page_size < s->chunk ? r->page_size : s->chunk;
	size_t base = (size_t)p * r->page_size, c, i;
	struct run rn = { 0 };
	struct src_view v;
	int err;

	for (c = 0; c < r->page_size; c += chunk) {
		if (c && atomic_load_explicit(&s->over, memory_order_relaxed))
			return -ECANCELED;
		err = src_backend_view(s, ri, base + c, chunk, &v);
		if (err)
			return err;
		for (i = 0; i < chunk / TP; i++) {
			const uint8_t *d = v.data + i * TP;
			size_t off = base + c + i * TP;
			size_t hb = v.hole_base + i;
			bool zero;

			zero = (v.hole && (v.hole[hb / 64] >> (hb % 64)) & 1) ||
			       codec_is_zero(d, TP);
			err = zero ? page_zero(s, ri, &rn, off)
				   : page_data(s, ri, &rn, off, d);
			if (err)
				return err;
		}
		/* the window may be refilled for the next chunk */
		if ((err = flush_raw(s, ri, &rn)))
			return err;
	}
	if ((err = flush_zero(s, ri, &rn)))
		return err;
	SRC_STAT_ADD(s, host_pages_sent, 1);
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

/* Report a send/encode error unless the session is already over. */
static void send_failed(struct pcopy_source *s, int err)
{
	if (err == -ECANCELED && atomic_load(&s->over))
		return;
	if (err == -EPIPE || err == -ECONNRESET)
		src_end(s, err, false, "sending to the destination: %s",
			strerror(-err));
	else
		src_end(s, err, true, "sending pages: %s", strerror(-err));
}

/* Serve the whole queue. Returns 0 or -errno (session already ended). */
static int serve_requests(struct pcopy_source *s, struct cursor *cur)
{
	uint64_t g;
	int err;

	while (!atomic_load_explicit(&s->over, memory_order_relaxed) &&
	       src_queue_pop(&s->q, &g)) {
		unsigned ri = region_of(s, g);
		uint64_t p = g - s->reg[ri].first;

		if (!unsent_claim(s, &s->reg[ri], p)) {
			/* sent by the scan since it was queued */
			SRC_STAT_ADD(s, duplicates, 1);
			continue;
		}
		err = send_host_page(s, ri, p);
		if (err)
			return err;
		SRC_STAT_ADD(s, requests, 1);
		/* faults cluster: the scan goes on right after it */
		cursor_after(s, cur, ri, p);
	}
	return 0;
}

/* Send END, then sleep until the session ends. */
static void finish(struct pcopy_source *s)
{
	struct wire_hdr h;
	uint64_t g;
	int err;

	/* Entries still queued are for pages sent since: count them before
	 * END, so the stats are final by the time DONE can come back. */
	while (src_queue_pop(&s->q, &g))
		SRC_STAT_ADD(s, duplicates, 1);
	memset(&h, 0, sizeof(h));
	h.magic = PCOPY_WIRE_MAGIC;
	h.type = PCOPY_MSG_END;
	/* Counted first: the destination may answer DONE, and the caller
	 * read the stats, before conn_send_msg even returns here. */
	SRC_STAT_ADD(s, bytes_wire, PCOPY_WIRE_HDR_SIZE);
	err = conn_send_msg(s->fd, &h, NULL, 0);
	if (err)
		atomic_fetch_sub_explicit(&s->st.bytes_wire, PCOPY_WIRE_HDR_SIZE,
					  memory_order_relaxed);
	if (err && err != -EPIPE && err != -ECONNRESET)
		send_failed(s, err);
	/* A destination that has every page may send DONE and close before
	 * reading END, so a broken pipe here is left for the reader to judge
	 * (DONE -> success, EOF without DONE -> failure). */
	while (src_queue_wait_pop(&s->q, &g)) {
		/* everything is sent: whatever was still queued is a
		 * duplicate */
		SRC_STAT_ADD(s, duplicates, 1);
	}
}

/* Tell the destination why the session failed, if nobody has yet. */
static void notify_peer(struct pcopy_source *s)
{
	char msg[PCOPY_ERRMSG_MAX];
	bool notify;
	int err;

	pthread_mutex_lock(&s->lock);
	notify = s->state == SRC_FAILED && s->notify_peer;
	s->notify_peer = false;
	pthread_mutex_unlock(&s->lock);
	if (!notify)
		return;
	pthread_mutex_lock(&s->es.lock);
	err = s->es.err;
	memcpy(msg, s->es.msg, sizeof(msg));
	pthread_mutex_unlock(&s->es.lock);
	msg[sizeof(msg) - 1] = '\0';
	conn_send_error(s->fd, err < 0 ? -err : EPROTO, msg);
}

/*
 * The sender thread: until every host page is sent, serve the request queue,
 * then one background batch of at most s->batch bytes, checking the queue
 * between host pages. Then END, then wait. Returns NULL. Sender thread.
 */
void *src_sender_main(void *arg)
{
	struct pcopy_source *s = arg;
	struct cursor cur = { 0, 0 };
	int err = 0;

	while (!atomic_load_explicit(&s->over, memory_order_relaxed)) {
		size_t budget = s->batch;

		err = serve_requests(s, &cur);
		if (err)
			break;
		if (!atomic_load_explicit(&s->pages_left, memory_order_relaxed)) {
			finish(s);
			break;
		}
		while (!atomic_load_explicit(&s->over, memory_order_relaxed)) {
			unsigned ri;
			uint64_t p;
			size_t ps;

			if (!next_unsent(s, &cur)) {
				/* pages_left > 0 with no unsent bit: only the
				 * sender changes either, so this cannot be */
				assert(!"unsent bitmap and pages_left disagree");
				err = -EFAULT;
				break;
			}
			ri = cur.ri;
			p = cur.p;
			ps = s->reg[ri].page_size;

			unsent_claim(s, &s->reg[ri], p);
			err = send_host_page(s, ri, p);
			if (err)
				break;
			cursor_after(s, &cur, ri, p);
			if (budget <= ps || src_queue_nonempty(&s->q) ||
			    !atomic_load_explicit(&s->pages_left,
						  memory_order_relaxed))
				break;
			budget -= ps;
		}
		if (err)
			break;
	}
	if (err)
		send_failed(s, err);
	notify_peer(s);
	/* The session is over: let the destination see EOF now rather than
	 * at destroy (the reader is stopping too; fd stays open until then). */
	shutdown(s->fd, SHUT_RDWR);
	return NULL;
}
