/* SPDX-License-Identifier: MIT */
/*
 * From bytes to placed pages: cut a connection's buffer into messages, check
 * every PAGE frame (table, crc) before touching its payload, assemble host
 * pages in the connection's staging area and gather consecutive whole host
 * pages into runs that place.c puts in with one ioctl. Also END, ERROR, PING,
 * and the decision whether a bad stream is a break (pause) or fatal.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

/* Zero runs: no data to stage, only bounded so one ioctl stays short. */
#define ZERO_RUN_MAX 512u
/* Trailing zero pages that turn a data run's tail into a zero run. */
#define ZERO_SPLIT 16u

static const char *type_name(unsigned t)
{
	static const char *const n[] = { "?", "HELLO", "PAGE", "END", "REQ",
					 "DONE", "ERROR", "RECV_BITMAP", "PING",
					 "AUTH" };

	return t < sizeof(n) / sizeof(n[0]) ? n[t] : "?";
}

/* c: the connection at fault, or NULL for the receiver's main one. The
 * urgent connection is read by the fault thread: its reason goes to c->why
 * (break_why belongs to the receiver), and after completion it only ends. */
static enum recv_end break_v(struct pcopy_dest *d, struct dest_conn *c, int err,
			     const char *fmt, va_list ap)
{
	bool urgent = c && c->idx == DEST_URGENT;
	char *why = urgent ? c->why : d->break_why;

	vsnprintf(why, PCOPY_ERRMSG_MAX, fmt, ap);
	if (dest_missing(d) == 0)
		/* complete: the receiver decides whether DONE needs re-sending */
		return urgent || d->done_acked ? RECV_STOP : RECV_BREAK;
	if ((d->flags & PCOPY_DEST_NO_RESUME) || !(d->features & PCOPY_FEAT_RESUME)) {
		dest_fail(d, err, "%s", why);
		return RECV_FAIL;
	}
	return RECV_BREAK;
}

/* dest_break for connection c (see internal.h). Thread owning c. */
enum recv_end dest_conn_break(struct pcopy_dest *d, struct dest_conn *c, int err,
			      const char *fmt, ...)
{
	enum recv_end e;
	va_list ap;

	va_start(ap, fmt);
	e = break_v(d, c, err, fmt, ap);
	va_end(ap);
	return e;
}

/*
 * A connection is unusable: a pause when both sides can resume, else the
 * restore fails with this message. Returns RECV_BREAK, RECV_FAIL or
 * RECV_STOP (nothing was missing anyway). Receiver thread.
 */
enum recv_end dest_break(struct pcopy_dest *d, int err, const char *fmt, ...)
{
	enum recv_end e;
	va_list ap;

	va_start(ap, fmt);
	e = break_v(d, NULL, err, fmt, ap);
	va_end(ap);
	return e;
}

/* A bad message on c: place the whole host pages received before it (they
 * passed every check), then break. */
static enum recv_end bad(struct pcopy_dest *d, struct dest_conn *c, int err,
			 const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static enum recv_end bad(struct pcopy_dest *d, struct dest_conn *c, int err,
			 const char *fmt, ...)
{
	enum recv_end e;
	va_list ap;

	c->cur.active = false;
	if (c->run.n && place_run(d, c) < 0)
		return RECV_FAIL;
	va_start(ap, fmt);
	e = break_v(d, c, err, fmt, ap);
	va_end(ap);
	return e;
}

/* Drop the partial host page and the unplaced run. Receiver thread. */
void asm_reset(struct dest_conn *c)
{
	c->cur.active = false;
	c->run.n = 0;
	c->run.wanted = false;
}

/* Host page hp of region r is whole in staging at c->cur.pos: add it to the
 * run (or drop it as a duplicate). */
static enum recv_end hp_complete(struct pcopy_dest *d, struct dest_conn *c,
				 struct dest_region *r, uint64_t hp)
{
	struct dest_run *run = &c->run;
	const uint8_t *data = c->staging + c->cur.pos;
	bool zero;

	if (c->idx == DEST_URGENT)
		DEST_STAT_ADD(d, urgent_pages, 1);
	if (dbm_test(&r->received, hp) || dbm_test(&r->removed, hp)) {
		/* Sent twice (urgent and background, or after a resume), or
		 * removed by the application: never placed again. */
		DEST_STAT_ADD(d, duplicates, 1);
		return RECV_GO;
	}
	/* ZEROPAGE maps the shared zero page: no memory, faster than COPY.
	 * The scan stops at the first non-zero word, so it costs little. */
	zero = c->cur.all_zero ||
	       (r->mem != DEST_MEM_HUGETLB && codec_is_zero(data, r->page_size));
	/* A data page after a zero run was assembled at 0, where a data run
	 * starts: placing the zero run leaves it in place. */
	if (run->n && run->zero && !zero && place_run(d, c) < 0)
		return RECV_FAIL;
	if (!run->n)
		*run = (struct dest_run){ .region = (unsigned)(r - d->reg), .hp = hp,
					  .zero = zero };
	else if (!run->zero && zero && c->cur.all_zero)
		/* A lone zero page inside data goes in as data: a quarter of
		 * a typical image is zero pages, scattered, and splitting
		 * runs at each would cut them to ~4 pages per ioctl. */
		memset(c->staging + c->cur.pos, 0, r->page_size);
	run->n++;
	if (dbm_test(&r->requested, hp))
		run->wanted = true;
	if (!run->zero) {
		run->tz = zero ? run->tz + 1 : 0;
		if (run->tz >= ZERO_SPLIT) {
			/* A real stretch of zeros: the data before it goes
			 * now, the zeros continue as a ZEROPAGE run (no
			 * memory used for them). */
			struct dest_run z = { .region = run->region,
					      .hp = run->hp + run->n - run->tz,
					      .n = run->tz, .zero = true,
					      .wanted = run->wanted };

			run->n -= run->tz;
			if (run->n && place_run(d, c) < 0)
				return RECV_FAIL;
			*run = z;
		}
	}
	if (run->wanted || c->idx == DEST_URGENT ||
	    (!run->zero && ((size_t)run->n + 1) * r->page_size > c->scap) ||
	    (run->zero && run->n >= ZERO_RUN_MAX))
		return place_run(d, c) < 0 ? RECV_FAIL : RECV_GO;
	return RECV_GO;
}

static enum recv_end handle_page(struct pcopy_dest *d, struct dest_conn *c,
				 const uint8_t *hb, const struct wire_hdr *h,
				 const uint8_t *payload)
{
	struct dest_asm *a = &c->cur;
	struct dest_run *run = &c->run;
	struct dest_region *r;
	char err[PCOPY_ERRMSG_MAX];
	uint64_t hp, n;
	uint32_t tp;
	uint8_t *dst;
	int rc;

	rc = wire_page_validate(h, d->hello.regions, d->nreg, d->features, err,
				sizeof(err));
	if (rc < 0)
		return bad(d, c, rc, "bad PAGE frame from the source: %s", err);
	rc = wire_crc_check(hb, h, payload, err, sizeof(err));
	if (rc < 0)
		return bad(d, c, rc, "PAGE frame region %u offset 0x%" PRIx64 ": %s",
			   h->region, h->offset, err);
	r = &d->reg[h->region];
	hp = h->offset >> r->shift;
	tp = (uint32_t)((h->offset & (r->page_size - 1)) / PCOPY_TARGET_PAGE);
	n = (uint64_t)h->count * PCOPY_TARGET_PAGE;

	if (a->active && (a->region != h->region || a->hp != hp))
		return bad(d, c, -EPROTO,
			   "PAGE for region '%s' offset 0x%" PRIx64 " while the host page at region '%s' offset 0x%" PRIx64 " is incomplete (%u of %u target pages): the pages of a host page must be consecutive",
			   r->name, h->offset, d->reg[a->region].name,
			   a->hp << d->reg[a->region].shift, a->next_tp, a->ntp);
	if (!a->active) {
		/* A new host page: it extends the run or the run goes now. */
		if (run->n && (run->region != h->region || run->hp + run->n != hp ||
			       (!run->zero &&
				((size_t)run->n + 1) * r->page_size > c->scap)) &&
		    place_run(d, c) < 0)
			return RECV_FAIL;
		*a = (struct dest_asm){ .active = true, .region = h->region,
					.hp = hp, .next_tp = 0,
					.ntp = (uint32_t)(r->page_size / PCOPY_TARGET_PAGE),
					.all_zero = true,
					.pos = run->n && !run->zero ?
					       (size_t)run->n * r->page_size : 0 };
	}
	if (tp != a->next_tp)
		return bad(d, c, -EPROTO,
			   "PAGE region '%s' offset 0x%" PRIx64 ": target page %u of host page 0x%" PRIx64 " arrived, expected %u (out of order)",
			   r->name, h->offset, tp, hp << r->shift, a->next_tp);

	dst = c->staging + a->pos + (size_t)tp * PCOPY_TARGET_PAGE;
	if (h->kind != PCOPY_KIND_ZERO && a->all_zero && tp > 0)
		memset(c->staging + a->pos, 0, (size_t)tp * PCOPY_TARGET_PAGE);
	switch (h->kind) {
	case PCOPY_KIND_ZERO:
		/* While every frame is ZERO the staging content is unused. */
		if (!a->all_zero)
			memset(dst, 0, n);
		DEST_STAT_ADD(d, pages_zero, h->count);
		break;
	case PCOPY_KIND_RAW:
		memcpy(dst, payload, n);
		DEST_STAT_ADD(d, pages_raw, h->count);
		break;
	case PCOPY_KIND_ZLIB:
		rc = codec_zlib_decompress(c->zlib, payload, h->length, dst, n,
					   err, sizeof(err));
		if (rc < 0)
			return bad(d, c, rc, "PAGE region '%s' offset 0x%" PRIx64 ": %s",
				   r->name, h->offset, err);
		DEST_STAT_ADD(d, pages_zlib, h->count);
		break;
	default:	/* wire_page_validate rejects other kinds */
		return bad(d, c, -EPROTO, "PAGE kind %u", h->kind);
	}
	if (h->kind != PCOPY_KIND_ZERO)
		a->all_zero = false;
	DEST_STAT_ADD(d, bytes_payload, n);
	a->next_tp += h->count;
	if (a->next_tp < a->ntp)
		return RECV_GO;
	a->active = false;
	return hp_complete(d, c, r, hp);
}

/*
 * Errors the source reports about the connection rather than the restore:
 * it is going away or timed out and will take a RESUME. Anything else in an
 * ERROR message (bad request, I/O error on the image, refused) is fatal:
 * resuming would meet the same problem.
 */
static bool transient(int errnum)
{
	switch (errnum) {
	case ECONNRESET:
	case ECONNABORTED:
	case ETIMEDOUT:
	case EPIPE:
	case ESHUTDOWN:
	case EAGAIN:
		return true;
	default:
		return false;
	}
}

/* One complete message. Returns RECV_GO, or why the loop must end. */
static enum recv_end handle_msg(struct pcopy_dest *d, struct dest_conn *c,
				const uint8_t *hb, const struct wire_hdr *h,
				const uint8_t *payload)
{
	char err[PCOPY_ERRMSG_MAX], text[PCOPY_ERROR_TEXT_MAX + 1];
	int rc, errnum;
	bool urgent;

	if (h->type == PCOPY_MSG_PAGE)
		return handle_page(d, c, hb, h, payload);
	rc = wire_crc_check(hb, h, payload, err, sizeof(err));
	if (rc < 0)
		return bad(d, c, rc, "%s message from the source: %s",
			   type_name(h->type), err);
	switch (h->type) {
	case PCOPY_MSG_PING:
		return RECV_GO;	/* last_rx_ns was updated by the recv */
	case PCOPY_MSG_END:
		if (c->run.n && place_run(d, c) < 0)
			return RECV_FAIL;
		if (dest_missing(d) == 0)
			/* keep reading for the echo of our DONE (section 8) */
			return RECV_GO;
		if (c->idx == DEST_URGENT)
			return bad(d, c, -EPROTO, "END on the urgent connection");
		/*
		 * The source marks a page sent when its urgent thread answers a
		 * request, and may then send END on the main connection before
		 * we have read that answer from the urgent one: the two sockets
		 * are not ordered. Those pages are still on their way.
		 */
		pthread_mutex_lock(&d->lock);
		urgent = d->wfd[DEST_URGENT] >= 0;	/* in use, or handed off */
		pthread_mutex_unlock(&d->lock);
		if (urgent) {
			pcopy_log(&d->log, PCOPY_LOG_DEBUG,
				  "END with %" PRIu64 " host pages still on the urgent connection",
				  dest_missing(d));
			return RECV_GO;
		}
		dest_fail(d, -EPROTO,
			  "source ended the stream with %" PRIu64 " host pages never sent",
			  dest_missing(d));
		return RECV_FAIL;
	case PCOPY_MSG_DONE:
		if (c->idx == DEST_URGENT || dest_missing(d) != 0)
			return bad(d, c, -EPROTO,
				   "unexpected DONE from the source on the %s connection (%" PRIu64 " host pages missing)",
				   c->idx == DEST_URGENT ? "urgent" : "main",
				   dest_missing(d));
		d->done_acked = true;	/* the source has seen our DONE */
		return RECV_STOP;
	case PCOPY_MSG_ERROR:
		rc = wire_error_decode(payload, h->length, &errnum, text,
				       sizeof(text));
		if (rc < 0)
			return bad(d, c, -EPROTO, "malformed ERROR message from the source");
		if (errnum < 0)
			errnum = -errnum;
		if (errnum <= 0 || errnum >= 4096)
			errnum = EPROTO;
		if (c->run.n && place_run(d, c) < 0)
			return RECV_FAIL;
		if (transient(errnum)) {
			enum recv_end e = dest_conn_break(d, c, -errnum,
						     "source reported: %s", text);

			return e == RECV_FAIL ? RECV_PEER_FAIL : e;
		}
		dest_fail(d, -errnum, "source reported: %s", text);
		return RECV_PEER_FAIL;
	default:
		return bad(d, c, -EPROTO,
			   "unexpected %s message (type %u) from the source",
			   type_name(h->type), h->type);
	}
}

/*
 * Cut c's [head, tail) into messages and handle the whole ones; a partial
 * one stays for the next recv. The run is placed before returning, so no
 * whole page waits for more bytes. Returns RECV_GO or why to stop/pause.
 * Receiver thread.
 */
enum recv_end asm_parse(struct pcopy_dest *d, struct dest_conn *c)
{
	char err[PCOPY_ERRMSG_MAX];
	struct wire_hdr h;
	enum recv_end e;

	c->need = PCOPY_WIRE_HDR_SIZE;
	while (c->tail - c->head >= PCOPY_WIRE_HDR_SIZE) {
		const uint8_t *hb = c->rbuf + c->head;

		if (wire_hdr_decode(hb, &h, err, sizeof(err)) < 0)
			return bad(d, c, -EPROTO, "bad message header from the source: %s",
				   err);
		if (h.length > PCOPY_WIRE_PAYLOAD_MAX)	/* decode checks it too */
			return bad(d, c, -EPROTO, "message length %u too large", h.length);
		c->need = PCOPY_WIRE_HDR_SIZE + (size_t)h.length;
		if (c->tail - c->head < c->need)
			break;
		e = handle_msg(d, c, hb, &h, hb + PCOPY_WIRE_HDR_SIZE);
		c->head += c->need;
		c->need = PCOPY_WIRE_HDR_SIZE;
		if (e != RECV_GO)
			return e;
	}
	if (c->run.n && place_run(d, c) < 0)
		return RECV_FAIL;
	return RECV_GO;
}
