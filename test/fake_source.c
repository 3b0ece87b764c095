/* SPDX-License-Identifier: MIT */
/*
 * The scripted fake source of the check_dest* suites: handshake, then serve
 * requests and background pages, break the connection at set points and
 * accept resumes, hold still, answer on an urgent connection, or send one
 * malformed thing; it records what the destination sent.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "fake_source.h"

#define FAKE_FAIL(f) do { if (!(f)->fail_line) (f)->fail_line = __LINE__; } while (0)

static int fake_frame(struct fake *f, uint8_t type, uint8_t kind, uint32_t region,
		      uint32_t count, uint64_t offset, const void *p, uint32_t len,
		      bool corrupt)
{
	struct wire_hdr h = { .magic = PCOPY_WIRE_MAGIC, .type = type, .kind = kind,
			      .region = region, .count = count, .offset = offset,
			      .length = len };
	uint8_t hb[PCOPY_WIRE_HDR_SIZE];
	struct iovec iov[2] = { { hb, sizeof(hb) }, { (void *)(uintptr_t)p, len } };

	wire_hdr_seal(hb, &h, p, len);
	if (corrupt)
		hb[28] ^= 0x40;	/* crc */
	return conn_writev_all(f->fd, iov, len ? 2 : 1);
}

/* Send host page hp of region r as frames: zero runs, raw or zlib runs. */
static int fake_send_hp(struct fake *f, unsigned r, uint64_t hp)
{
	unsigned ntp = (unsigned)(f->ps[r] / TP), t = 0, n, i;
	uint64_t t0 = hp * ntp;
	int rc = 0;

	for (i = 0; i < ntp; i++)
		fill_tp(r, t0 + i, ntp, f->page + (size_t)i * TP);
	while (t < ntp && !rc) {
		bool z = tp_zero(r, t0 + t, ntp);
		unsigned maxrun = 1 + (unsigned)(mix(t0 + t) % 48);

		for (n = 1; t + n < ntp && n < maxrun &&
			    tp_zero(r, t0 + t + n, ntp) == z; n++)
			;
		if (z) {
			rc = fake_frame(f, PCOPY_MSG_PAGE, PCOPY_KIND_ZERO, r, n,
					(t0 + t) * TP, NULL, 0, false);
		} else {
			long c = 0;

			if (f->z && (f->features & PCOPY_FEAT_ZLIB) && mix(t0 + t) % 2)
				c = codec_zlib_compress(f->z, f->page + (size_t)t * TP,
							(size_t)n * TP, f->zbuf,
							PCOPY_WIRE_PAYLOAD_MAX);
			if (c > 0)
				rc = fake_frame(f, PCOPY_MSG_PAGE, PCOPY_KIND_ZLIB, r, n,
						(t0 + t) * TP, f->zbuf, (uint32_t)c, false);
			else
				rc = fake_frame(f, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, r, n,
						(t0 + t) * TP, f->page + (size_t)t * TP,
						n * TP, false);
		}
		t += n;
	}
	if (!rc)
		f->sent[r][hp] = 1;
	return rc;
}

/* Read one message if one is readable within timeout_ms. 1 = got one,
 * 0 = none, -1 = EOF/error. REQs go to the queue. */
static int fake_poll_msg(struct fake *f, int timeout_ms)
{
	struct pollfd p = { .fd = f->fd, .events = POLLIN };
	struct wire_req req[PCOPY_REQ_MAX_ENTRIES];
	struct wire_region tab[NREG];
	struct wire_hdr h;
	char err[PCOPY_ERRMSG_MAX];
	unsigned i;
	int rc;

	if (poll(&p, 1, timeout_ms) <= 0)
		return 0;
	rc = conn_recv_msg(f->fd, &h, f->rbuf, PCOPY_WIRE_PAYLOAD_MAX,
			   pcopy_now_ns() + 10000000000ull, -1, err, sizeof(err));
	if (rc)
		return -1;
	switch (h.type) {
	case PCOPY_MSG_REQ:
		memset(tab, 0, sizeof(tab));
		for (i = 0; i < f->nreg; i++) {
			tab[i].length = f->len[i];
			tab[i].host_page = (uint32_t)f->ps[i];
		}
		if (wire_req_decode(f->rbuf, h.count, req, tab, f->nreg, err,
				    sizeof(err))) {
			FAKE_FAIL(f);
			return -1;
		}
		f->req_msgs++;
		for (i = 0; i < h.count; i++) {
			f->req_entries++;
			/* atomic: test_remove watches it from its thread */
			__atomic_store_n(&f->reqd[req[i].region][req[i].offset / f->ps[req[i].region]],
					 1, __ATOMIC_RELAXED);
			if (req[i].count * TP != f->ps[req[i].region] ||
			    req[i].offset % f->ps[req[i].region])
				FAKE_FAIL(f);	/* one whole host page per entry */
			if (f->qt - f->qh < f->qcap)
				f->q[f->qt++ % f->qcap] =
					((uint64_t)req[i].region << 48) |
					(req[i].offset / f->ps[req[i].region]);
		}
		return 1;
	case PCOPY_MSG_DONE:
		f->got_done = true;
		return 1;
	case PCOPY_MSG_PING:
		f->pings++;
		return 1;
	case PCOPY_MSG_ERROR:
		f->got_error = true;
		return -1;
	default:
		FAKE_FAIL(f);
		return -1;
	}
}

/* Read until EOF, DONE or 10 s. */
static void fake_drain(struct fake *f)
{
	uint64_t end = pcopy_now_ns() + 10000000000ull;

	while (!f->got_done && pcopy_now_ns() < end) {
		int rc = fake_poll_msg(f, 100);

		if (rc < 0)
			break;
	}
}

static uint64_t fake_total(struct fake *f)
{
	uint64_t n = 0;
	unsigned i;

	for (i = 0; i < f->nreg; i++)
		n += f->len[i] / f->ps[i];
	return n;
}

/* Next host page to send: a queued request not yet sent, else background. */
static bool fake_next(struct fake *f, uint64_t *bg, unsigned *r, uint64_t *hp)
{
	uint64_t total = fake_total(f);

	while (f->qh < f->qt) {
		uint64_t e = f->q[f->qh++ % f->qcap];

		*r = (unsigned)(e >> 48);
		*hp = e & ((1ull << 48) - 1);
		if (!f->sent[*r][*hp])
			return true;
	}
	if (f->wait_first_req && !f->req_msgs)
		return false;
	while (*bg < total) {
		uint64_t k = f->reverse ? total - 1 - *bg : *bg;
		unsigned i;

		(*bg)++;
		for (i = 0; i < f->nreg; i++) {
			uint64_t np = f->len[i] / f->ps[i];

			if (k < np) {
				if (!f->sent[i][k]) {
					*r = i;
					*hp = k;
					return true;
				}
				break;
			}
			k -= np;
		}
	}
	return false;
}

static void fake_serve(struct fake *f)
{
	uint64_t bg = 0, total = fake_total(f), sent = 0;
	unsigned r;
	uint64_t hp;

	while (sent < total) {
		int rc;

		do
			rc = fake_poll_msg(f, 0);
		while (rc > 0);
		if (rc < 0)
			return;
		if (!fake_next(f, &bg, &r, &hp)) {
			if (fake_poll_msg(f, 50) < 0)
				return;
			continue;
		}
		if (fake_send_hp(f, r, hp))
			break;	/* the destination went away: read what it said */
		sent++;
		if (f->sc == SC_DUP && sent == 1 && fake_send_hp(f, r, hp))
			break;
	}
	if (sent == total)
		fake_frame(f, PCOPY_MSG_END, 0, 0, 0, 0, NULL, 0, false);
	fake_drain(f);
}

static void fake_bad(struct fake *f, enum script sc)
{
	uint64_t hp = f->before, ntp = f->ps[0] / TP;
	uint64_t off = hp * f->ps[0];
	uint8_t buf[64];
	size_t n;
	unsigned i;

	memset(f->page, 0x77, TP);
	for (i = 0; i < f->before; i++)
		if (fake_send_hp(f, 0, i))
			return;
	switch (sc) {
	case SC_BAD_CRC:
		fake_frame(f, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, 0, 1, off, f->page, TP, true);
		break;
	case SC_BAD_REGION:
		fake_frame(f, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, f->nreg, 1, 0, f->page, TP, false);
		break;
	case SC_BAD_OFFSET_END:
		fake_frame(f, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, 0, 1, f->len[0], f->page, TP, false);
		break;
	case SC_BAD_MISALIGNED:
		fake_frame(f, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, 0, 1, off + 8, f->page, TP, false);
		break;
	case SC_BAD_RAWLEN:
		fake_frame(f, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, 0, 1, off, f->page, TP - 1, false);
		break;
	case SC_OUT_OF_ORDER:
		/* target page 1 of host page hp first; with 4 KiB host pages
		 * the only way to disorder is a frame spanning two of them */
		if (ntp > 1)
			fake_frame(f, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, 0, 1, off + TP, f->page, TP, false);
		else
			fake_frame(f, PCOPY_MSG_PAGE, PCOPY_KIND_ZERO, 0, 2, off, NULL, 0, false);
		break;
	case SC_OTHER_HP_MIDPAGE:
		/* half of host page hp, then host page hp + 1 */
		fake_frame(f, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, 0, 1, off, f->page, TP, false);
		fake_frame(f, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, 0, 1, off + f->ps[0], f->page, TP, false);
		break;
	case SC_END_MISSING:
		fake_frame(f, PCOPY_MSG_END, 0, 0, 0, 0, NULL, 0, false);
		break;
	case SC_UNKNOWN_TYPE:
		fake_frame(f, 99, 0, 0, 0, 0, NULL, 0, false);
		break;
	case SC_UNEXPECTED_REQ: {
		struct wire_req rq = { 0, 1, 0 };

		wire_req_encode(&rq, 1, buf);
		fake_frame(f, PCOPY_MSG_REQ, 0, 0, 1, 0, buf, PCOPY_REQ_ENTRY_SIZE, false);
		break;
	}
	case SC_UNEXPECTED_DONE:
		fake_frame(f, PCOPY_MSG_DONE, 0, 0, 0, 0, NULL, 0, false);
		break;
	case SC_UNEXPECTED_HELLO: {
		/* a second HELLO mid-stream, well formed */
		struct wire_hello hl;
		uint8_t hb[2048];
		int len;

		memset(&hl, 0, sizeof(hl));
		hl.version = PCOPY_WIRE_VERSION;
		hl.role = PCOPY_ROLE_SOURCE;
		hl.target_page = TP;
		hl.nregions = 1;
		strcpy(hl.regions[0].name, "ram0");
		hl.regions[0].length = f->len[0];
		hl.regions[0].host_page = (uint32_t)f->ps[0];
		len = wire_hello_encode(&hl, hb, sizeof(hb));
		if (len <= 0)
			FAKE_FAIL(f);
		else
			fake_frame(f, PCOPY_MSG_HELLO, 0, 0, 0, 0, hb, (uint32_t)len, false);
		break;
	}
	case SC_SRC_ERROR:
		n = wire_error_encode(EIO, "disk on fire", buf, sizeof(buf));
		fake_frame(f, PCOPY_MSG_ERROR, 0, 0, 0, 0, buf, (uint32_t)n, false);
		break;
	case SC_EOF: {
		/* a whole header and part of the payload, then the end */
		struct wire_hdr h = { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_PAGE,
				      .kind = PCOPY_KIND_RAW, .count = 1, .offset = off,
				      .length = TP };
		uint8_t hb[PCOPY_WIRE_HDR_SIZE];
		struct iovec iov[2] = { { hb, sizeof(hb) }, { f->page, 100 } };

		wire_hdr_seal(hb, &h, f->page, TP);
		conn_writev_all(f->fd, iov, 2);
		shutdown(f->fd, SHUT_WR);
		break;
	}
	case SC_BAD_ZLIB:
		memset(buf, 0x5a, sizeof(buf));
		fake_frame(f, PCOPY_MSG_PAGE, PCOPY_KIND_ZLIB, 0, 1, off, buf, sizeof(buf), false);
		break;
	case SC_ZLIB_NOT_NEGOTIATED:
		n = (size_t)codec_zlib_compress(f->z, f->page, TP, f->zbuf, PCOPY_WIRE_PAYLOAD_MAX);
		fake_frame(f, PCOPY_MSG_PAGE, PCOPY_KIND_ZLIB, 0, 1, off, f->zbuf, (uint32_t)n, false);
		break;
	case SC_BAD_MAGIC: {
		struct wire_hdr h = { .magic = 0x11223344, .type = PCOPY_MSG_END };
		uint8_t hb[PCOPY_WIRE_HDR_SIZE];
		struct iovec iov = { hb, sizeof(hb) };

		wire_hdr_seal(hb, &h, NULL, 0);
		conn_writev_all(f->fd, &iov, 1);
		break;
	}
	default:
		FAKE_FAIL(f);
	}
	fake_drain(f);
}


/* ---- resume / hold / urgent scripts ---- */

static void fake_urgent(struct fake *f)
{
	unsigned r;
	uint64_t hp, bg;

	f->wait_first_req = true;
	while (!atomic_load(&f->release)) {
		if (fake_poll_msg(f, 20) < 0)
			return;
		bg = fake_total(f);	/* requests only */
		while (fake_next(f, &bg, &r, &hp))
			if (fake_send_hp(f, r, hp))
				return;
	}
}

/* The test hands the fake its next connection (resume or urgent). */
void fake_hand(struct fake *f, int fd)
{
	pthread_mutex_lock(&f->hand_lock);
	if (f->next_fd >= 0)
		close(f->next_fd);
	f->next_fd = fd;
	pthread_cond_broadcast(&f->hand_cond);
	pthread_mutex_unlock(&f->hand_lock);
}

/* Wait up to 10 s for the next connection; -1 if none came. */
static int fake_take(struct fake *f)
{
	struct timespec ts;
	int fd;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 10;
	pthread_mutex_lock(&f->hand_lock);
	while (f->next_fd < 0 &&
	       pthread_cond_timedwait(&f->hand_cond, &f->hand_lock, &ts) == 0)
		;
	fd = f->next_fd;
	f->next_fd = -1;
	pthread_mutex_unlock(&f->hand_lock);
	return fd;
}

/* Send the first `ntp_max` target pages of host page hp of r (raw), not
 * marking it sent. */
static void fake_send_partial(struct fake *f, unsigned r, uint64_t hp, unsigned ntp_max)
{
	unsigned ntp = (unsigned)(f->ps[r] / TP), i;

	for (i = 0; i < ntp_max && i < ntp; i++) {
		fill_tp(r, hp * ntp + i, ntp, f->page);
		fake_frame(f, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, r, 1,
			   (hp * ntp + i) * TP, f->page, TP, false);
	}
}

/* Break the current connection as `c` says, read what the destination
 * still sends (its REQs count) until it hangs up, close. */
static void fake_cut(struct fake *f, const struct cut *c)
{
	unsigned r = 0;
	uint64_t hp = 0, bg = 0;
	bool have = fake_next(f, &bg, &r, &hp);

	switch (c->kind) {
	case CUT_EOF:
		break;
	case CUT_MIDFRAME:
		if (have) {
			struct wire_hdr h = { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_PAGE,
					      .kind = PCOPY_KIND_RAW, .region = r, .count = 1,
					      .offset = hp * f->ps[r], .length = TP };
			uint8_t hb[PCOPY_WIRE_HDR_SIZE];
			struct iovec iov[2] = { { hb, sizeof(hb) }, { f->page, 1000 } };

			fill_tp(r, hp * (f->ps[r] / TP), (unsigned)(f->ps[r] / TP), f->page);
			wire_hdr_seal(hb, &h, f->page, TP);
			conn_writev_all(f->fd, iov, 2);
		}
		break;
	case CUT_MIDHP:
		if (have)
			fake_send_partial(f, r, hp, (unsigned)(f->ps[r] / TP / 2));
		break;
	case CUT_CORRUPT:
		if (have) {
			unsigned ntp = (unsigned)(f->ps[r] / TP);

			fill_tp(r, hp * ntp, ntp, f->page);
			f->page[100] ^= 1;	/* payload no longer matches... */
			fake_frame(f, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, r, 1, hp * f->ps[r],
				   f->page, TP, true);	/* ...nor the crc */
		}
		break;
	case CUT_SILENT:
		break;
	}
	if (have) {
		/* put it back: it was taken from the queue, not sent */
		f->q[f->qt++ % f->qcap] = ((uint64_t)r << 48) | hp;
	}
	if (c->kind != CUT_SILENT && c->kind != CUT_CORRUPT)
		shutdown(f->fd, SHUT_WR);
	/* the destination closes its end when it pauses */
	while (fake_poll_msg(f, 100) >= 0)
		if (f->got_done)
			break;
	close(f->fd);
	f->fd = -1;
}

/* Accept a resume: handshake, the bitmap must say exactly which host pages
 * were sent whole, then the first REQ must hold every requested page not
 * received. Returns 0, or -1 if this connection failed (the test retries). */
static int fake_accept_resume(struct fake *f, const struct wire_hello *ours, bool refuse)
{
	struct conn_hs_params hp = { f->psk, f->psk_len, f->session, 5000 };
	struct wire_region tab[NREG];
	struct wire_hello peer;
	struct wire_hdr h;
	uint64_t *bits[NREG], np, next_page = 0, i;
	uint32_t next_region = 0, feat;
	char err[PCOPY_ERRMSG_MAX];
	unsigned r;
	int rc = 0, fd = fake_take(f);

	if (fd < 0) {
		FAKE_FAIL(f);
		return -1;
	}
	if (refuse) {
		f->refused++;
		close(fd);
		return -1;
	}
	f->fd = fd;
	if (conn_handshake2(fd, ours, &peer, &feat, &hp, err, sizeof(err)) ||
	    peer.conn_kind != PCOPY_CONN_RESUME || peer.session_id != f->session) {
		FAKE_FAIL(f);
		return -1;
	}
	memset(tab, 0, sizeof(tab));
	for (r = 0; r < f->nreg; r++) {
		tab[r].length = f->len[r];
		tab[r].host_page = (uint32_t)f->ps[r];
		bits[r] = calloc((f->len[r] / f->ps[r] + 63) / 64, 8);
	}
	do {
		rc = conn_recv_msg(fd, &h, f->rbuf, PCOPY_WIRE_PAYLOAD_MAX,
				   pcopy_now_ns() + 5000000000ull, -1, err, sizeof(err));
		if (!rc && h.type != PCOPY_MSG_RECV_BITMAP)
			rc = -EPROTO;
		if (!rc)
			rc = wire_bitmap_apply(&h, f->rbuf, tab, f->nreg, &next_region,
					       &next_page, bits, err, sizeof(err));
	} while (rc == 0);
	if (rc != 1) {
		fprintf(stderr, "fake: bitmap: %d %s\n", rc, err);
		FAKE_FAIL(f);
	}
	/* exactly what was sent whole; and that is what we resend from */
	for (r = 0; r < f->nreg && rc == 1; r++) {
		np = f->len[r] / f->ps[r];
		for (i = 0; i < np; i++) {
			bool b = (bits[r][i / 64] >> (i % 64)) & 1;

			if (b != (f->sent[r][i] != 0)) {
				fprintf(stderr, "fake: bitmap region %u host page %" PRIu64
					": dest says %d, sent %d\n", r, i, b, f->sent[r][i]);
				FAKE_FAIL(f);
			}
		}
	}
	f->bitmap_checks++;
	for (r = 0; r < f->nreg; r++)
		free(bits[r]);
	/* The first REQ (if anything requested is missing) re-sends all of it. */
	{
		uint64_t want = 0, got = 0;
		struct wire_req req[PCOPY_REQ_MAX_ENTRIES];

		for (r = 0; r < f->nreg; r++)
			for (i = 0; i < f->len[r] / f->ps[r]; i++)
				want += f->reqd[r][i] && !f->sent[r][i];
		if (want) {
			rc = conn_recv_msg(fd, &h, f->rbuf, PCOPY_WIRE_PAYLOAD_MAX,
					   pcopy_now_ns() + 5000000000ull, -1, err, sizeof(err));
			if (rc || h.type != PCOPY_MSG_REQ ||
			    wire_req_decode(f->rbuf, h.count, req, tab, f->nreg, err,
					    sizeof(err))) {
				FAKE_FAIL(f);
				return -1;
			}
			for (i = 0; i < h.count; i++) {
				r = req[i].region;
				np = req[i].offset / f->ps[r];
				if (f->sent[r][np])
					FAKE_FAIL(f);	/* requested what it has */
				got += f->reqd[r][np];
				f->reqd[r][np] = 1;
				f->q[f->qt++ % f->qcap] = ((uint64_t)r << 48) | np;
			}
			f->post_resume_reqs += h.count;
			if (got != want) {
				fprintf(stderr, "fake: first REQ after resume covers %" PRIu64
					" of %" PRIu64 " pending pages\n", got, want);
				FAKE_FAIL(f);
			}
		}
	}
	f->resumes++;
	return 0;
}

static uint64_t fake_count_sent(struct fake *f)
{
	uint64_t n = 0, i;
	unsigned r;

	for (r = 0; r < f->nreg; r++)
		for (i = 0; i < f->len[r] / f->ps[r]; i++)
			n += f->sent[r][i] != 0;
	return n;
}

/* Serve, breaking the connection at each cut and accepting the resume. */
static void fake_serve_resume(struct fake *f, const struct wire_hello *ours)
{
	uint64_t bg = 0, total = fake_total(f), on_conn = 0;
	unsigned ci = 0, r;
	uint64_t hp;

	while (fake_count_sent(f) < total || ci < f->ncuts) {
		int rc;

		if (ci < f->ncuts && on_conn >= f->cuts[ci].after) {
			bool refuse = f->cuts[ci].refuse_next;

			fake_cut(f, &f->cuts[ci++]);
			while (fake_accept_resume(f, ours, refuse) < 0) {
				if (f->fail_line || f->refused > 5)
					return;
				refuse = false;
			}
			on_conn = 0;
			bg = 0;
			continue;
		}
		do
			rc = fake_poll_msg(f, 0);
		while (rc > 0);
		if (rc < 0)
			return;
		if (!fake_next(f, &bg, &r, &hp)) {
			if (fake_count_sent(f) == total && ci < f->ncuts) {
				on_conn = f->cuts[ci].after;	/* cut now */
				continue;
			}
			if (fake_poll_msg(f, 20) < 0)
				return;
			continue;
		}
		if (fake_send_hp(f, r, hp))
			return;
		on_conn++;
	}
	fake_frame(f, PCOPY_MSG_END, 0, 0, 0, 0, NULL, 0, false);
	fake_drain(f);
}

/* `before` host pages, read only until `release`, then every page not sent
 * on this connection (the urgent one may have sent some: duplicates). */
static void fake_hold(struct fake *f)
{
	uint64_t bg = 0, total = fake_total(f);
	unsigned r;
	uint64_t hp;

	while (fake_count_sent(f) < f->before && fake_next(f, &bg, &r, &hp))
		if (fake_send_hp(f, r, hp))
			return;
	while (!atomic_load(&f->release))
		if (fake_poll_msg(f, 20) < 0)
			return;
	while (fake_count_sent(f) < total) {
		int rc;

		do
			rc = fake_poll_msg(f, 0);
		while (rc > 0);
		if (rc < 0 || !fake_next(f, &bg, &r, &hp) || fake_send_hp(f, r, hp))
			return;
	}
	fake_frame(f, PCOPY_MSG_END, 0, 0, 0, 0, NULL, 0, false);
	fake_drain(f);
}

static void *fake_main(void *arg)
{
	struct fake *f = arg;
	struct wire_hello ours, peer;
	unsigned i;

	struct conn_hs_params hp = { f->psk, f->psk_len, f->session, 5000 };

	memset(&ours, 0, sizeof(ours));
	ours.version = PCOPY_WIRE_VERSION;
	ours.role = PCOPY_ROLE_SOURCE;
	ours.conn_kind = PCOPY_CONN_MAIN;
	ours.session_id = f->session;
	ours.features = f->offer;
	ours.target_page = TP;
	ours.nregions = f->nreg;
	for (i = 0; i < f->nreg; i++) {
		snprintf(ours.regions[i].name, sizeof(ours.regions[i].name), "ram%u", i);
		ours.regions[i].length = i == 0 && f->len0_override ? f->len0_override
								   : f->len[i];
		ours.regions[i].host_page = (uint32_t)f->ps[i];
	}
	f->hs_rc = conn_handshake2(f->fd, &ours, &peer, &f->features, &hp,
				   f->hs_err, sizeof(f->hs_err));
	if (f->hs_rc)
		return NULL;
	if ((f->features & PCOPY_FEAT_ZLIB) || f->sc == SC_ZLIB_NOT_NEGOTIATED)
		codec_zlib_new(&f->z, true, 1);
	switch (f->sc) {
	case SC_NORMAL:
	case SC_DUP:
		fake_serve(f);
		break;
	case SC_STALL:
		for (i = 0; i < f->before; i++)
			if (fake_send_hp(f, 0, i))
				return NULL;
		fake_drain(f);
		break;
	case SC_WAIT_REQ_BAD:
		while (!f->req_msgs)
			if (fake_poll_msg(f, 100) < 0)
				return NULL;
		fake_bad(f, f->bad);
		break;
	case SC_RESUME:
		fake_serve_resume(f, &ours);
		break;
	case SC_HOLD:
		fake_hold(f);
		break;
	case SC_URGENT_FLOOD:
		while (!f->req_msgs)
			if (fake_poll_msg(f, 100) < 0)
				return NULL;
		for (i = 0; !atomic_load(&f->flood_end); i++)
			if (fake_send_hp(f, 1, i % (f->len[1] / f->ps[1])))
				return NULL;
		/* fall through */
	case SC_URGENT_SRV:
		fake_urgent(f);
		break;
	default:
		fake_bad(f, f->sc);
	}
	return NULL;
}

/* Set up a fake for the regions of m[], start it on a socketpair; returns
 * the destination's end. */
int fake_start(struct fake *f, struct mem *m, unsigned nreg, enum script sc)
{
	int sv[2];
	unsigned i;

	memset(f, 0, sizeof(*f));
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	f->fd = sv[1];
	f->nreg = nreg;
	f->sc = sc;
	f->offer = PCOPY_FEAT_ZLIB;
	for (i = 0; i < nreg; i++) {
		f->len[i] = m[i].len;
		f->ps[i] = m[i].ps;
		f->sent[i] = calloc(m[i].len / m[i].ps, 1);
	}
	f->session = 0x5e5510a0c0ffee01ull;
	f->next_fd = -1;
	pthread_mutex_init(&f->hand_lock, NULL);
	pthread_cond_init(&f->hand_cond, NULL);
	for (i = 0; i < nreg; i++)
		f->reqd[i] = calloc(m[i].len / m[i].ps, 1);
	f->qcap = 1 << 16;
	f->q = calloc(f->qcap, sizeof(*f->q));
	f->page = aligned_alloc(TP, HUGE_PS);
	f->zbuf = malloc(PCOPY_WIRE_PAYLOAD_MAX);
	f->rbuf = malloc(PCOPY_WIRE_PAYLOAD_MAX);
	return sv[0];
}

void fake_run(struct fake *f)
{
	ck_assert_int_eq(pthread_create(&f->thr, NULL, fake_main, f), 0);
}

void fake_end(struct fake *f)
{
	unsigned i;

	pthread_join(f->thr, NULL);
	if (f->fd >= 0)
		close(f->fd);
	if (f->next_fd >= 0)
		close(f->next_fd);
	pthread_mutex_destroy(&f->hand_lock);
	pthread_cond_destroy(&f->hand_cond);
	for (i = 0; i < f->nreg; i++) {
		free(f->sent[i]);
		free(f->reqd[i]);
	}
	free(f->q);
	free(f->page);
	free(f->zbuf);
	free(f->rbuf);
	codec_zlib_free(f->z);
}

void fake_start_main(struct fake *f, struct pcopy_dest *d, struct mem *m,
		     enum script sc, uint32_t offer, unsigned before)
{
	int fd = fake_start(f, m, NREG, sc);

	f->offer = offer;
	f->before = before;
	fake_run(f);
	ck_assert_int_eq(pcopy_dest_start(d, fd), 0);
}

int fake_start_urgent(struct fake *u, struct pcopy_dest *d, struct mem *m,
		      enum script sc, unsigned before)
{
	int ufd = fake_start(u, m, NREG, sc);

	u->offer = FEAT_ALL;
	u->before = before;
	fake_run(u);
	return pcopy_dest_add_urgent(d, ufd);
}
