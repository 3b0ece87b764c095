/* SPDX-License-Identifier: MIT */
/*
 * The receiver: an io_uring loop reading the source's byte stream, cutting
 * it into messages, checking every PAGE frame (table, crc) before touching
 * its payload, assembling host pages in a staging buffer and placing each
 * whole host page once. Also handles END, ERROR and the end of the stream.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <string.h>
#include <sys/mman.h>

#include "internal.h"

#define RECV_CHUNK (1u << 20)		/* typical recv size */
#define RECV_MSG_MAX (PCOPY_WIRE_HDR_SIZE + PCOPY_WIRE_PAYLOAD_MAX)
#define TAG_STOP 1
#define TAG_RECV 2

/* Why the loop ended. */
enum recv_end { RECV_GO = 0, RECV_STOP, RECV_FAIL, RECV_PEER_FAIL };

static void *map_anon(size_t len, int prot)
{
	void *p = mmap(NULL, len, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

/* Allocate the receive buffer, staging page, zero page and the ring.
 * Returns 0 or -errno (logged). Caller's thread (start). */
int dest_recv_init(struct pcopy_dest *d)
{
	int rc;

	/* Room for one whole largest message plus a chunk: after moving a
	 * partial message to the front, the rest of it always fits. */
	d->rcap = (RECV_MSG_MAX + RECV_CHUNK + 4095) & ~(size_t)4095;
	d->rbuf = map_anon(d->rcap, PROT_READ | PROT_WRITE);
	d->staging = map_anon(d->max_page, PROT_READ | PROT_WRITE);
	d->zero = map_anon(d->max_page, PROT_READ);
	if (!d->rbuf || !d->staging || !d->zero) {
		pcopy_log(&d->log, PCOPY_LOG_ERROR, "receiver buffers: %s",
			  strerror(ENOMEM));
		return -ENOMEM;
	}
	if (d->features & PCOPY_FEAT_ZLIB) {
		rc = codec_zlib_new(&d->zlib, false, 0);
		if (rc < 0) {
			pcopy_log(&d->log, PCOPY_LOG_ERROR, "zlib inflate context: %s",
				  strerror(-rc));
			return rc;
		}
	}
	rc = io_uring_queue_init(4, &d->ring, 0);
	if (rc < 0) {
		pcopy_log(&d->log, PCOPY_LOG_ERROR, "io_uring_queue_init: %s",
			  strerror(-rc));
		return rc;
	}
	d->ring_on = true;
	return 0;
}

/* Free what dest_recv_init made; after the receiver thread ended (its
 * exit cancelled its pending recv). Destroy only. */
void dest_recv_fini(struct pcopy_dest *d)
{
	if (d->ring_on)
		io_uring_queue_exit(&d->ring);
	d->ring_on = false;
	if (d->rbuf)
		munmap(d->rbuf, d->rcap);
	if (d->staging)
		munmap(d->staging, d->max_page);
	if (d->zero)
		munmap(d->zero, d->max_page);
	d->rbuf = d->staging = d->zero = NULL;
	codec_zlib_free(d->zlib);
	d->zlib = NULL;
}

static const char *type_name(unsigned t)
{
	static const char *const n[] = { "?", "HELLO", "PAGE", "END", "REQ",
					 "DONE", "ERROR", "RECV_BITMAP", "PING" };

	return t < sizeof(n) / sizeof(n[0]) ? n[t] : "?";
}

/* The whole host page is in staging (or known zero): place it. */
static int finish_host_page(struct pcopy_dest *d, struct dest_region *r,
			    uint64_t hp, const void *src)
{
	if (dbm_test(&r->received, hp)) {
		/* The receiver is the only setter, so this is the source
		 * sending a page twice: harmless. */
		DEST_STAT_ADD(d, duplicates, 1);
		return 0;
	}
	/* ZEROPAGE maps the shared zero page: no memory, faster than COPY.
	 * A non-ZERO frame full of zeros is rare and the scan stops at the
	 * first non-zero word, so checking costs little. */
	if (src && r->mem != DEST_MEM_HUGETLB && codec_is_zero(src, r->page_size))
		src = NULL;
	return place_host_page(d, r, hp, src) < 0 ? -1 : 0;
}

static int handle_page(struct pcopy_dest *d, const uint8_t *hb,
		       const struct wire_hdr *h, const uint8_t *payload)
{
	struct dest_asm *c = &d->cur;
	struct dest_region *r;
	char err[PCOPY_ERRMSG_MAX];
	uint64_t hp, n;
	uint32_t tp;
	uint8_t *dst;
	const void *src;
	int rc;

	rc = wire_page_validate(h, d->hello.regions, d->nreg, d->features, err,
				sizeof(err));
	if (rc < 0) {
		dest_fail(d, rc, "bad PAGE frame from the source: %s", err);
		return -1;
	}
	rc = wire_crc_check(hb, h, payload, err, sizeof(err));
	if (rc < 0) {
		dest_fail(d, rc, "PAGE frame region %u offset 0x%" PRIx64 ": %s",
			  h->region, h->offset, err);
		return -1;
	}
	r = &d->reg[h->region];
	hp = h->offset >> r->shift;
	tp = (uint32_t)((h->offset & (r->page_size - 1)) / PCOPY_TARGET_PAGE);
	n = (uint64_t)h->count * PCOPY_TARGET_PAGE;

	if (c->active && (c->region != h->region || c->hp != hp)) {
		dest_fail(d, -EPROTO,
			  "PAGE for region '%s' offset 0x%" PRIx64 " while the host page at region '%s' offset 0x%" PRIx64 " is incomplete (%u of %u target pages): the pages of a host page must be consecutive",
			  r->name, h->offset, d->reg[c->region].name,
			  c->hp << d->reg[c->region].shift, c->next_tp, c->ntp);
		return -1;
	}
	if (!c->active) {
		*c = (struct dest_asm){ .active = true, .region = h->region,
					.hp = hp, .next_tp = 0,
					.ntp = (uint32_t)(r->page_size / PCOPY_TARGET_PAGE),
					.all_zero = true };
	}
	if (tp != c->next_tp) {
		dest_fail(d, -EPROTO,
			  "PAGE region '%s' offset 0x%" PRIx64 ": target page %u of host page 0x%" PRIx64 " arrived, expected %u (out of order)",
			  r->name, h->offset, tp, hp << r->shift, c->next_tp);
		return -1;
	}

	dst = d->staging + (size_t)tp * PCOPY_TARGET_PAGE;
	src = d->staging;
	if (h->kind != PCOPY_KIND_ZERO && c->all_zero && tp > 0)
		memset(d->staging, 0, (size_t)tp * PCOPY_TARGET_PAGE);
	switch (h->kind) {
	case PCOPY_KIND_ZERO:
		/* While every frame is ZERO the staging content is unused. */
		if (!c->all_zero)
			memset(dst, 0, n);
		DEST_STAT_ADD(d, pages_zero, h->count);
		break;
	case PCOPY_KIND_RAW:
		if (c->ntp == 1 && !((uintptr_t)payload & 4095))
			src = payload;	/* UFFDIO_COPY straight from rbuf */
		else
			memcpy(dst, payload, n);
		DEST_STAT_ADD(d, pages_raw, h->count);
		break;
	case PCOPY_KIND_ZLIB:
		rc = codec_zlib_decompress(d->zlib, payload, h->length, dst, n,
					   err, sizeof(err));
		if (rc < 0) {
			c->active = false;
			dest_fail(d, rc, "PAGE region '%s' offset 0x%" PRIx64 ": %s",
				  r->name, h->offset, err);
			return -1;
		}
		DEST_STAT_ADD(d, pages_zlib, h->count);
		break;
	default:	/* wire_page_validate rejects other kinds */
		dest_fail(d, -EPROTO, "PAGE kind %u", h->kind);
		return -1;
	}
	if (h->kind != PCOPY_KIND_ZERO)
		c->all_zero = false;
	DEST_STAT_ADD(d, bytes_payload, n);
	c->next_tp += h->count;
	if (c->next_tp < c->ntp)
		return 0;
	c->active = false;
	return finish_host_page(d, r, hp, c->all_zero ? NULL : src);
}

/* One complete message. Returns RECV_GO, or why the loop must end. */
static enum recv_end handle_msg(struct pcopy_dest *d, const uint8_t *hb,
				const struct wire_hdr *h, const uint8_t *payload)
{
	char err[PCOPY_ERRMSG_MAX], text[PCOPY_ERROR_TEXT_MAX + 1];
	int rc, errnum;

	if (h->type == PCOPY_MSG_PAGE)
		return handle_page(d, hb, h, payload) < 0 ? RECV_FAIL : RECV_GO;
	rc = wire_crc_check(hb, h, payload, err, sizeof(err));
	if (rc < 0) {
		dest_fail(d, rc, "%s message from the source: %s",
			  type_name(h->type), err);
		return RECV_FAIL;
	}
	switch (h->type) {
	case PCOPY_MSG_END:
		if (dest_missing(d) == 0)
			return RECV_STOP;
		dest_fail(d, -EPROTO,
			  "source ended the stream with %" PRIu64 " host pages never sent",
			  dest_missing(d));
		return RECV_FAIL;
	case PCOPY_MSG_ERROR:
		rc = wire_error_decode(payload, h->length, &errnum, text,
				       sizeof(text));
		if (rc < 0) {
			dest_fail(d, -EPROTO, "malformed ERROR message from the source");
			return RECV_FAIL;
		}
		if (errnum < 0)
			errnum = -errnum;
		if (errnum <= 0 || errnum >= 4096)
			errnum = EPROTO;
		dest_fail(d, -errnum, "source reported: %s", text);
		return RECV_PEER_FAIL;
	default:
		dest_fail(d, -EPROTO, "unexpected %s message (type %u) from the source",
			  type_name(h->type), h->type);
		return RECV_FAIL;
	}
}

/*
 * Cut [*head, tail) into messages and handle the whole ones; a partial one
 * stays for the next recv. Returns RECV_GO or why to stop.
 */
static enum recv_end parse(struct pcopy_dest *d, size_t *head, size_t tail,
			   size_t *need)
{
	char err[PCOPY_ERRMSG_MAX];
	struct wire_hdr h;
	enum recv_end e;

	*need = PCOPY_WIRE_HDR_SIZE;
	while (tail - *head >= PCOPY_WIRE_HDR_SIZE) {
		const uint8_t *hb = d->rbuf + *head;

		if (wire_hdr_decode(hb, &h, err, sizeof(err)) < 0) {
			dest_fail(d, -EPROTO, "bad message header from the source: %s",
				  err);
			return RECV_FAIL;
		}
		*need = PCOPY_WIRE_HDR_SIZE + (size_t)h.length;
		if (h.length > PCOPY_WIRE_PAYLOAD_MAX) {	/* decode checks it too */
			dest_fail(d, -EPROTO, "message length %u too large", h.length);
			return RECV_FAIL;
		}
		if (tail - *head < *need)
			return RECV_GO;
		e = handle_msg(d, hb, &h, hb + PCOPY_WIRE_HDR_SIZE);
		*head += *need;
		*need = PCOPY_WIRE_HDR_SIZE;
		if (e != RECV_GO)
			return e;
	}
	return RECV_GO;
}

static int queue_recv(struct pcopy_dest *d, size_t tail)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&d->ring);

	if (!sqe)
		return -EBUSY;
	io_uring_prep_recv(sqe, d->fd, d->rbuf + tail, d->rcap - tail, 0);
	io_uring_sqe_set_data64(sqe, TAG_RECV);
	return 0;
}

static enum recv_end stream_ended(struct pcopy_dest *d, int res, size_t left)
{
	if (dest_missing(d) == 0)
		return RECV_STOP;	/* complete: the source may just leave */
	if (res == 0 || res == -ECONNRESET || res == -EPIPE)
		dest_fail(d, -ECONNRESET,
			  "connection closed by source with %" PRIu64 " host pages missing%s",
			  dest_missing(d), left ? " (in the middle of a message)" : "");
	else
		dest_fail(d, res, "receiving from the source: %s (%" PRIu64 " host pages missing)",
			  strerror(-res), dest_missing(d));
	return RECV_PEER_FAIL;
}

static enum recv_end recv_loop(struct pcopy_dest *d)
{
	size_t head = 0, tail = 0, need = PCOPY_WIRE_HDR_SIZE;
	struct io_uring_sqe *sqe;
	struct io_uring_cqe *cqe;
	bool recv_queued = false;
	enum recv_end e = RECV_GO;
	int rc;

	sqe = io_uring_get_sqe(&d->ring);
	io_uring_prep_poll_add(sqe, d->stop_efd, POLLIN);
	io_uring_sqe_set_data64(sqe, TAG_STOP);
	while (e == RECV_GO) {
		if (!recv_queued) {
			/* Move a partial message to the front when the rest
			 * of it would not fit, or the free tail got small. */
			if (head == tail) {
				head = tail = 0;
			} else if (d->rcap - head < need ||
				   d->rcap - tail < RECV_CHUNK / 4) {
				memmove(d->rbuf, d->rbuf + head, tail - head);
				tail -= head;
				head = 0;
			}
			if (queue_recv(d, tail) < 0) {
				dest_fail(d, -EBUSY, "io_uring: no submission entry");
				return RECV_FAIL;
			}
			recv_queued = true;
		}
		rc = io_uring_submit_and_wait(&d->ring, 1);
		if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
			dest_fail(d, rc, "io_uring_submit_and_wait: %s", strerror(-rc));
			return RECV_FAIL;
		}
		while (e == RECV_GO && io_uring_peek_cqe(&d->ring, &cqe) == 0) {
			uint64_t tag = io_uring_cqe_get_data64(cqe);
			int res = cqe->res;

			io_uring_cqe_seen(&d->ring, cqe);
			if (tag == TAG_STOP)
				return RECV_STOP;
			recv_queued = false;
			if (res == -EINTR || res == -EAGAIN)
				continue;
			if (res <= 0)
				return stream_ended(d, res, tail - head);
			DEST_STAT_ADD(d, bytes_wire, (uint64_t)res);
			tail += (size_t)res;
			e = parse(d, &head, tail, &need);
		}
	}
	return e;
}

/*
 * Thread body: from pcopy_dest_start until END after completion, the end of
 * the stream, a fatal error, or destroy. On an error of ours, tells the
 * source why (best effort). Returns NULL. Receiver thread.
 */
void *dest_recv_main(void *arg)
{
	struct pcopy_dest *d = arg;
	enum recv_end e = recv_loop(d);
	int err;

	if (e == RECV_FAIL) {
		err = pcopy_errslot_get(&d->err);
		if (err < 0) {
			pthread_mutex_lock(&d->wlock);
			conn_send_error(d->fd, -err, d->err.msg);
			pthread_mutex_unlock(&d->wlock);
		}
	}
	return NULL;
}
