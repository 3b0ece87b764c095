/* SPDX-License-Identifier: MIT */
/*
 * One direction of a proxied connection: the frame tracker that finds wire
 * frame boundaries (to drop, duplicate or cut at frames), the FLIP/REPLACE
 * corruption by input position, the output queue, and the throttled,
 * optionally one-byte-at-a-time writes. Proxy thread only.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "proxy_int.h"

static size_t min_sz(size_t a, uint64_t b)
{
	return b < a ? (size_t)b : a;
}

/* ---- output queue ---- */

static int reserve(uint8_t **buf, size_t *cap, size_t need)
{
	size_t ncap = *cap ? *cap : 4096;
	uint8_t *nb;

	if (need <= *cap)
		return 0;
	while (ncap < need)
		ncap *= 2;
	nb = realloc(*buf, ncap);
	if (!nb)
		return -ENOMEM;
	*buf = nb;
	*cap = ncap;
	return 0;
}

/* Apply FLIP / REPLACE rules to n bytes that sat at input position pos. */
static uint64_t corrupt(struct proxy_pipe *p, uint8_t *b, size_t n, uint64_t pos)
{
	uint64_t hits = 0, i;
	unsigned k;

	for (k = 0; k < p->nrules; k++) {
		const struct proxy_rule *r = &p->rules[k].r;

		if (r->action == PROXY_FLIP && r->at >= pos && r->at < pos + n) {
			b[r->at - pos] ^= (uint8_t)r->arg;
			hits++;
		} else if (r->action == PROXY_REPLACE) {
			for (i = 0; i < r->len; i++) {
				uint64_t at = r->at + i;

				if (at >= pos && at < pos + n) {
					b[at - pos] = r->data[i];
					hits++;
				}
			}
		}
	}
	return hits;
}

/* Queue n input bytes from position pos for the receiver, corrupted as the
 * rules say, and copy them into the duplicate buffer if the frame is to be
 * sent twice. */
static int emit(struct proxy_pipe *p, const uint8_t *src, size_t n, uint64_t pos)
{
	uint8_t *dst;

	if (p->off == p->len)
		p->off = p->len = 0;
	else if (p->off > p->cap / 2) {
		memmove(p->buf, p->buf + p->off, p->len - p->off);
		p->len -= p->off;
		p->off = 0;
	}
	if (reserve(&p->buf, &p->cap, p->len + n))
		return -ENOMEM;
	dst = p->buf + p->len;
	memcpy(dst, src, n);
	p->st.bytes_corrupted += corrupt(p, dst, n, pos);
	p->len += n;
	if (p->dup) {
		if (reserve(&p->dupbuf, &p->dup_cap, p->dup_len + n))
			return -ENOMEM;
		memcpy(p->dupbuf + p->dup_len, dst, n);
		p->dup_len += n;
	}
	return 0;
}

/* Emit the header bytes not yet emitted (at a hold point, EOF, or once the
 * frame is known to pass), never past a frame cut. Returns 0 or -ENOMEM. */
int pipe_flush_header(struct proxy_pipe *p)
{
	size_t have = p->hdr_have, n;
	int ret;

	if (p->limit < p->hdr_pos + have)	/* a cut inside this header */
		have = p->limit > p->hdr_pos ? (size_t)(p->limit - p->hdr_pos) : 0;
	n = have > p->hdr_sent ? have - p->hdr_sent : 0;
	if (!n || p->drop)
		return 0;
	ret = emit(p, p->hdr + p->hdr_sent, n, p->hdr_pos + p->hdr_sent);
	p->hdr_sent = have;
	return ret;
}

/* ---- frame tracker ---- */

static uint32_t le32(const uint8_t *b)
{
	return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
	       (uint32_t)b[3] << 24;
}

/* The header is whole: learn the payload length and the frame's fate. */
static int header_done(struct proxy_pipe *p)
{
	struct wire_hdr h;
	char err[160];
	unsigned k;

	/* A header the decoder rejects for its type or fields still has a
	 * usable length if magic and length are sane (read from the bytes:
	 * wire.h does not promise h is filled on failure); track it anyway so
	 * a test can drop or duplicate malformed frames too. */
	if (wire_hdr_decode(p->hdr, &h, err, sizeof(err))) {
		h.magic = le32(p->hdr);
		h.type = p->hdr[4];
		h.length = le32(p->hdr + 24);
		if (h.magic != PCOPY_WIRE_MAGIC ||
		    h.length > PCOPY_WIRE_PAYLOAD_MAX) {
			p->st.desync = true;
			return pipe_flush_header(p);
		}
	}
	p->frame_left = h.length;
	p->frame_type = h.type;
	for (k = 0; k < p->nrules; k++) {
		struct prule *r = &p->rules[k];
		uint64_t nth;

		if (r->done || (r->r.action != PROXY_DUP_FRAME &&
				r->r.action != PROXY_DROP_FRAME &&
				r->r.action != PROXY_CUT_FRAME))
			continue;
		if (r->r.type && r->r.type != h.type)
			continue;
		nth = r->r.type ? p->type_count[h.type] : p->st.frames;
		if (nth != r->r.arg)
			continue;
		r->done = true;
		if (r->r.action == PROXY_CUT_FRAME &&
		    p->hdr_pos + r->r.at < p->limit)
			p->limit = p->hdr_pos + r->r.at;
		/* Part of the header left already (a stall mid-header):
		 * too late to drop the frame cleanly; let it pass. */
		if (r->r.action == PROXY_DROP_FRAME && p->hdr_sent == 0)
			p->drop = true;
		else if (r->r.action == PROXY_DUP_FRAME)
			p->dup = true;
	}
	if (p->dup) {
		/* The duplicate starts with the whole header as emitted. */
		if (reserve(&p->dupbuf, &p->dup_cap, HDR))
			return -ENOMEM;
		memcpy(p->dupbuf, p->hdr, HDR);
		corrupt(p, p->dupbuf, HDR, p->hdr_pos);
		p->dup_len = HDR;
		/* flush_header below must not copy the header a second time */
		p->dup = false;
		if (pipe_flush_header(p))
			return -ENOMEM;
		p->dup = true;
		return 0;
	}
	return pipe_flush_header(p);
}

static int frame_done(struct proxy_pipe *p)
{
	int ret = 0;

	if (p->drop)
		p->st.frames_dropped++;
	if (p->dup) {
		p->dup = false;
		ret = emit(p, p->dupbuf, p->dup_len, UINT64_MAX / 2);
		p->st.frames_duplicated++;
		p->dup_len = 0;
	}
	p->st.frames++;
	p->type_count[p->frame_type]++;
	p->drop = false;
	p->hdr_have = p->hdr_sent = 0;
	return ret;
}

/* Consume n input bytes. The positions used by emit() are the input ones.
 * Returns 0 or -ENOMEM. */
int pipe_feed(struct proxy_pipe *p, const uint8_t *d, size_t n)
{
	size_t take;
	int ret = 0;

	while (n && !ret) {
		if (p->in_pos >= p->limit) {
			/* read past a frame cut: the connection is about to
			 * be cut, these bytes never arrive */
			p->in_pos += n;
			break;
		}
		if (p->st.desync) {
			take = min_sz(n, p->limit - p->in_pos);
			ret = emit(p, d, take, p->in_pos);
			p->in_pos += take;
			d += take;
			n -= take;
			continue;
		}
		if (p->hdr_have < HDR) {
			if (p->hdr_have == 0)
				p->hdr_pos = p->in_pos;
			take = min_sz(n, HDR - p->hdr_have);
			memcpy(p->hdr + p->hdr_have, d, take);
			p->hdr_have += take;
			if (!p->frame_rules)
				ret = pipe_flush_header(p);
			if (!ret && p->hdr_have == HDR)
				ret = header_done(p);
		} else {
			take = min_sz(n, p->frame_left);
			if (!p->drop)
				ret = emit(p, d, min_sz(take, p->limit - p->in_pos),
					   p->in_pos);
			p->frame_left -= take;
		}
		p->in_pos += take;
		d += take;
		n -= take;
		if (!ret && !p->st.desync && p->hdr_have == HDR &&
		    p->frame_left == 0)
			ret = frame_done(p);
	}
	return ret;
}

/* ---- one direction ---- */

/* The next input position where reading must pause for a rule. */
uint64_t pipe_next_hold(const struct proxy_pipe *p)
{
	uint64_t h = p->limit;
	unsigned k;

	for (k = 0; k < p->nrules; k++) {
		const struct prule *r = &p->rules[k];

		switch (r->r.action) {
		case PROXY_CUT:
		case PROXY_CUT_RANDOM:
		case PROXY_STALL:
		case PROXY_SHUTDOWN:
			if (!r->done && r->at >= p->in_pos && r->at < h)
				h = r->at;
			break;
		default:
			break;
		}
	}
	return h;
}

/* True if the input should be read now (not stalled, not at a hold point,
 * queue not full). */
bool pipe_want_input(const struct proxy_pipe *p, uint64_t now)
{
	if (p->done || p->in_eof)
		return false;
	if (p->dead)
		return true;	/* discard */
	return p->pending == PEND_NONE && now >= p->stall_until &&
	       p->len - p->off < OUT_HIGH && pipe_next_hold(p) > p->in_pos;
}

/* Bytes the throttle lets through now; *wait_ns gets the time until one
 * more byte may go when it is 0. */
static uint64_t throttle_allow(struct proxy_pipe *p, uint64_t now, uint64_t *wait_ns)
{
	uint64_t burst = p->bps / 50, budget, elapsed;

	if (!p->bps)
		return UINT64_MAX;
	if (burst < 1)
		burst = 1;
	if (burst > (64u << 10))
		burst = 64u << 10;
	if (!p->t0)
		p->t0 = now;
	elapsed = now - p->t0;
	budget = (uint64_t)((unsigned __int128)p->bps * elapsed / NS) + burst;
	if (budget > p->sent)
		return budget - p->sent;
	*wait_ns = (uint64_t)((unsigned __int128)(p->sent - burst + 1) * NS /
			      p->bps) + 1 - elapsed;
	return 0;
}

/* True if there is output the throttle lets through now. */
bool pipe_want_output(struct proxy_pipe *p, uint64_t now, uint64_t *wait_ns)
{
	uint64_t w = 0;

	if (p->done || p->off == p->len)
		return false;
	if (throttle_allow(p, now, &w) == 0) {
		if (w < *wait_ns)
			*wait_ns = w;
		return false;
	}
	return true;
}

/* One read, fed through the tracker. Returns 0 or -errno (ends the conn). */
int pipe_read(struct proxy_pipe *p, uint8_t *scratch, size_t cap)
{
	size_t room = cap;
	ssize_t n;

	if (!p->dead)
		room = min_sz(room, pipe_next_hold(p) - p->in_pos);
	n = recv(p->in, scratch, room, MSG_DONTWAIT);
	if (n < 0)
		return (errno == EAGAIN || errno == EINTR) ? 0 : -errno;
	if (n == 0) {
		p->in_eof = true;
		return 0;
	}
	p->st.bytes_in += (uint64_t)n;
	if (p->dead) {
		p->in_pos += (uint64_t)n;
		return 0;
	}
	return pipe_feed(p, scratch, (size_t)n);
}

/* One write of the queue (one byte if splitting). Returns 0 or -errno. */
int pipe_write(struct proxy_pipe *p, uint64_t now)
{
	size_t n = p->len - p->off;
	uint64_t w = 0, allow;
	ssize_t done;

	if (p->split && p->st.bytes_out >= p->split_from)
		n = 1;
	else if (p->split)	/* whole writes up to where splitting starts */
		n = min_sz(n, p->split_from - p->st.bytes_out);
	allow = throttle_allow(p, now, &w);
	n = min_sz(n, allow);
	if (!n)
		return 0;
	done = send(p->out, p->buf + p->off, n, MSG_DONTWAIT | MSG_NOSIGNAL);
	if (done < 0)
		return (errno == EAGAIN || errno == EINTR) ? 0 : -errno;
	p->off += (size_t)done;
	p->st.bytes_out += (uint64_t)done;
	p->st.writes++;
	p->sent += (uint64_t)done;
	return 0;
}

/* Free the queues; the pipe can be dropped after. */
void pipe_free(struct proxy_pipe *p)
{
	free(p->buf);
	free(p->dupbuf);
	p->buf = p->dupbuf = NULL;
	p->off = p->len = p->cap = 0;
	p->dup_len = p->dup_cap = 0;
}
