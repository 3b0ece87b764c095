/* SPDX-License-Identifier: MIT */
/*
 * The fault-injection proxy (test/proxy.h): one thread polls every
 * connection; each direction reads from its sender, passes the bytes through
 * a frame tracker and the corruption rules into an output buffer, and writes
 * that buffer to its receiver, pausing at the positions where rules fire.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "proxy.h"
#include "wire.h"

#define HDR		PCOPY_WIRE_HDR_SIZE
#define READ_CHUNK	(64u << 10)
#define OUT_HIGH	(256u << 10)	/* stop reading while this much is queued */
#define NS		1000000000ull

enum pending { PEND_NONE = 0, PEND_CUT, PEND_SHUT, PEND_EOF };

struct prule {			/* a rule instantiated on one direction */
	struct proxy_rule r;
	uint64_t at;		/* resolved position (random cuts) */
	bool done;		/* one-shot rules that fired */
};

struct pipe_ {
	int in, out;
	enum proxy_dir dir;
	struct prule rules[PROXY_RULES_MAX];
	unsigned nrules;
	bool frame_rules;	/* hold each header until the frame's fate is known */
	bool split;
	uint64_t split_from;	/* output position */
	uint64_t bps;		/* throttle, 0 = none */
	uint64_t t0, sent;	/* throttle clock start, bytes since */

	uint64_t in_pos;	/* input bytes consumed */
	uint64_t limit;		/* CUT_FRAME: cut at this input position */
	bool in_eof;
	bool dead;		/* shut down by a rule: input is discarded */
	bool done;		/* finished: EOF passed on, or dead and EOF */
	enum pending pending;	/* waits for the output to drain */
	uint64_t stall_until;

	uint8_t *buf;		/* output queue [off, len) */
	size_t off, len, cap;

	/* frame tracker */
	uint8_t hdr[HDR];	/* original bytes of the current header */
	size_t hdr_have, hdr_sent;	/* bytes seen / already emitted */
	uint64_t hdr_pos;	/* input position of the header */
	uint64_t frame_left;	/* payload bytes still to come */
	uint8_t frame_type;
	bool drop, dup;
	uint8_t *dupbuf;	/* copy of the frame as emitted */
	size_t dup_len, dup_cap;
	uint64_t type_count[256];

	struct proxy_dir_stats st;
};

struct conn {
	unsigned index;
	int fd[2];		/* a side, b side */
	bool open, failed;
	int error;
	struct pipe_ p[2];
};

struct proxy {
	pthread_mutex_t lock;
	pthread_cond_t cond;	/* a connection closed */
	pthread_t thread;
	bool started, stop;
	int wake;		/* eventfd: new connection or stop */
	uint64_t seed;
	FILE *log;
	struct proxy_rule rules[PROXY_RULES_MAX];
	unsigned nrules;
	struct conn *conns[PROXY_CONNS_MAX];
	unsigned nconns;
	int lfd;
	struct sockaddr_storage up;
	socklen_t uplen;
	uint8_t scratch[READ_CHUNK];
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NS + (uint64_t)ts.tv_nsec;
}

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static const char *dir_name(enum proxy_dir d)
{
	return d == PROXY_A2B ? "a2b" : "b2a";
}

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
static uint64_t corrupt(struct pipe_ *p, uint8_t *b, size_t n, uint64_t pos)
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
static int emit(struct pipe_ *p, const uint8_t *src, size_t n, uint64_t pos)
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
 * frame is known to pass). */
static int flush_header(struct pipe_ *p)
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
static int header_done(struct pipe_ *p)
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
			return flush_header(p);
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
		if (flush_header(p))
			return -ENOMEM;
		p->dup = true;
		return 0;
	}
	return flush_header(p);
}

static int frame_done(struct pipe_ *p)
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

/* Consume n input bytes. The positions used by emit() are the input ones. */
static int feed(struct pipe_ *p, const uint8_t *d, size_t n)
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
				ret = flush_header(p);
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
static uint64_t next_hold(const struct pipe_ *p)
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

static bool want_input(const struct pipe_ *p, uint64_t now)
{
	if (p->done || p->in_eof)
		return false;
	if (p->dead)
		return true;	/* discard */
	return p->pending == PEND_NONE && now >= p->stall_until &&
	       p->len - p->off < OUT_HIGH && next_hold(p) > p->in_pos;
}

/* Bytes the throttle lets through now; *wait_ns gets the time until one
 * more byte may go when it is 0. */
static uint64_t throttle_allow(struct pipe_ *p, uint64_t now, uint64_t *wait_ns)
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

static bool want_output(struct pipe_ *p, uint64_t now, uint64_t *wait_ns)
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

static int pipe_read(struct proxy *px, struct pipe_ *p)
{
	size_t room = READ_CHUNK;
	ssize_t n;

	if (!p->dead)
		room = min_sz(room, next_hold(p) - p->in_pos);
	n = recv(p->in, px->scratch, room, MSG_DONTWAIT);
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
	return feed(p, px->scratch, (size_t)n);
}

static int pipe_write(struct pipe_ *p, uint64_t now)
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

static void conn_close(struct proxy *px, struct conn *c, int err)
{
	unsigned i;

	if (!c->open)
		return;
	for (i = 0; i < 2; i++) {
		close(c->fd[i]);
		c->fd[i] = -1;
		free(c->p[i].buf);
		free(c->p[i].dupbuf);
		c->p[i].buf = c->p[i].dupbuf = NULL;
		c->p[i].off = c->p[i].len = c->p[i].cap = 0;
		c->p[i].dup_len = c->p[i].dup_cap = 0;
	}
	c->open = false;
	if (err) {
		c->failed = true;
		c->error = err;
		fprintf(px->log, "proxy: conn %u failed: %s\n", c->index,
			strerror(-err));
	}
	pthread_cond_broadcast(&px->cond);
}

/*
 * Fire the rules sitting at the current input position, and finish a cut,
 * shutdown or EOF once everything before it has been written. Returns
 * false if the connection was closed.
 */
static bool pipe_progress(struct proxy *px, struct conn *c, struct pipe_ *p,
			  uint64_t now)
{
	unsigned k;

	if (p->done)
		return true;
	if (!p->dead && p->pending == PEND_NONE) {
		for (k = 0; k < p->nrules && p->pending == PEND_NONE; k++) {
			struct prule *r = &p->rules[k];

			if (r->done || r->at != p->in_pos)
				continue;
			switch (r->r.action) {
			case PROXY_STALL:
				r->done = true;
				p->stall_until = now + r->r.arg * 1000000ull;
				p->st.stalled = true;
				break;
			case PROXY_CUT:
			case PROXY_CUT_RANDOM:
				r->done = true;
				p->pending = PEND_CUT;
				break;
			case PROXY_SHUTDOWN:
				r->done = true;
				p->pending = PEND_SHUT;
				break;
			default:
				break;
			}
		}
		if (p->pending == PEND_NONE && p->in_pos >= p->limit)
			p->pending = PEND_CUT;
		if (p->pending == PEND_NONE && p->in_eof)
			p->pending = PEND_EOF;
		/* Bytes before the hold point must all arrive: a header the
		 * tracker is holding goes out now. */
		if ((p->pending != PEND_NONE || now < p->stall_until) &&
		    flush_header(p)) {
			conn_close(px, c, -ENOMEM);
			return false;
		}
	}
	if (p->dead && p->in_eof)
		p->done = true;
	if (p->pending == PEND_NONE || p->off != p->len)
		return true;
	switch (p->pending) {
	case PEND_CUT:
		p->st.cut = true;
		p->st.cut_at = p->in_pos < p->limit ? p->in_pos : p->limit;
		fprintf(px->log, "proxy: conn %u %s: cut at byte %" PRIu64
			" (seed %" PRIu64 ")\n", c->index, dir_name(p->dir),
			p->st.cut_at, px->seed);
		conn_close(px, c, 0);
		return false;
	case PEND_SHUT:
		shutdown(p->out, SHUT_WR);
		p->st.shut = true;
		p->dead = true;
		p->done = p->in_eof;
		break;
	case PEND_EOF:
		shutdown(p->out, SHUT_WR);
		p->done = true;
		break;
	default:
		break;
	}
	p->pending = PEND_NONE;
	return true;
}

/* ---- connections ---- */

static void set_nodelay(int fd)
{
	int one = 1;

	/* fails harmlessly on Unix sockets */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static int set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	return 0;
}

/* Called with the lock held. Takes ownership of both fds. */
static int conn_add(struct proxy *px, int fd_a, int fd_b)
{
	struct conn *c;
	unsigned i, d;
	uint64_t rng;
	int ret;

	if (px->nconns >= PROXY_CONNS_MAX) {
		ret = -ENOSPC;
		goto fail;
	}
	if ((ret = set_nonblock(fd_a)) || (ret = set_nonblock(fd_b)))
		goto fail;
	c = calloc(1, sizeof(*c));
	if (!c) {
		ret = -ENOMEM;
		goto fail;
	}
	set_nodelay(fd_a);
	set_nodelay(fd_b);
	c->index = px->nconns + 1;
	c->fd[0] = fd_a;
	c->fd[1] = fd_b;
	c->open = true;
	for (d = 0; d < 2; d++) {
		c->p[d].dir = (enum proxy_dir)d;
		c->p[d].in = c->fd[d];
		c->p[d].out = c->fd[1 - d];
		c->p[d].limit = UINT64_MAX;
	}
	/* Each connection draws its random positions from its own stream of
	 * the seed, so connection k cuts at the same place on every replay. */
	rng = px->seed ^ ((uint64_t)c->index * 0xd1b54a32d192ed03ull);
	for (i = 0; i < px->nrules; i++) {
		const struct proxy_rule *r = &px->rules[i];
		struct pipe_ *p = &c->p[r->dir];
		struct prule *pr;

		if (r->conn && r->conn != c->index)
			continue;
		pr = &p->rules[p->nrules++];
		pr->r = *r;
		pr->at = r->at;
		if (r->action == PROXY_CUT_RANDOM) {
			pr->at = r->at + splitmix64(&rng) % (r->arg - r->at);
			fprintf(px->log, "proxy: conn %u %s: random cut at byte %"
				PRIu64 " (seed %" PRIu64 ")\n", c->index,
				dir_name(r->dir), pr->at, px->seed);
		}
		if (r->action == PROXY_DUP_FRAME ||
		    r->action == PROXY_DROP_FRAME ||
		    r->action == PROXY_CUT_FRAME)
			p->frame_rules = true;
		if (r->action == PROXY_SPLIT) {
			p->split = true;
			p->split_from = r->at;
		}
		if (r->action == PROXY_THROTTLE)
			p->bps = r->arg;
	}
	px->conns[px->nconns++] = c;
	return (int)c->index;
fail:
	close(fd_a);
	close(fd_b);
	return ret;
}

static void do_accept(struct proxy *px)
{
	int fd, up;

	fd = accept4(px->lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	if (fd < 0)
		return;
	up = socket(px->up.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (up < 0 || connect(up, (struct sockaddr *)&px->up, px->uplen) < 0) {
		fprintf(px->log, "proxy: connecting upstream: %s\n",
			strerror(errno));
		if (up >= 0)
			close(up);
		close(fd);
		return;
	}
	conn_add(px, fd, up);
}

/* ---- the thread ---- */

#define POLL_MAX (2 + 2 * PROXY_CONNS_MAX)

static void *proxy_main(void *arg)
{
	struct proxy *px = arg;
	struct pollfd pfd[POLL_MAX];
	struct conn *pc[POLL_MAX];
	uint64_t now, wait_ns, v;
	unsigned i, d, n, npolled;
	struct timespec ts;
	int ret;

	pthread_mutex_lock(&px->lock);
	while (!px->stop) {
		now = now_ns();
		for (i = 0; i < px->nconns; i++) {
			struct conn *c = px->conns[i];

			for (d = 0; d < 2 && c->open; d++)
				if (!pipe_progress(px, c, &c->p[d], now))
					break;
			if (c->open && c->p[0].done && c->p[1].done)
				conn_close(px, c, 0);
		}

		/* Build the poll set: an fd is in it only for what its
		 * directions can do now, so POLLHUP cannot make us spin. */
		wait_ns = UINT64_MAX;
		pfd[0] = (struct pollfd){ .fd = px->wake, .events = POLLIN };
		pfd[1] = (struct pollfd){ .fd = px->lfd, .events = POLLIN };
		n = 2;
		for (i = 0; i < px->nconns; i++) {
			struct conn *c = px->conns[i];

			if (!c->open)
				continue;
			for (d = 0; d < 2; d++) {
				struct pipe_ *p = &c->p[d];
				struct pipe_ *q = &c->p[1 - d];	/* writes to fd[d] */
				short ev = 0;

				if (want_input(p, now))
					ev |= POLLIN;
				else if (!p->done && now < p->stall_until &&
					 p->stall_until - now < wait_ns)
					wait_ns = p->stall_until - now;
				if (want_output(q, now, &wait_ns))
					ev |= POLLOUT;
				pfd[n] = (struct pollfd){
					.fd = ev ? c->fd[d] : -1, .events = ev };
				pc[n++] = c;
			}
		}
		npolled = n;
		pthread_mutex_unlock(&px->lock);
		if (wait_ns != UINT64_MAX) {
			ts.tv_sec = (time_t)(wait_ns / NS);
			ts.tv_nsec = (long)(wait_ns % NS);
		}
		ret = ppoll(pfd, npolled, wait_ns == UINT64_MAX ? NULL : &ts, NULL);
		pthread_mutex_lock(&px->lock);
		if (ret < 0)
			continue;	/* EINTR */
		if (pfd[0].revents)
			(void)!read(px->wake, &v, sizeof(v));
		if (px->lfd >= 0 && pfd[1].revents)
			do_accept(px);
		now = now_ns();
		for (i = 2; i < npolled; i++) {
			struct conn *c = pc[i];
			unsigned fdi = (i - 2) % 2;
			short re = pfd[i].revents;

			if (!re || !c->open)
				continue;
			/* fd[fdi] is the input of pipe fdi and the output of
			 * pipe 1 - fdi */
			if ((pfd[i].events & POLLIN) && (re & (POLLIN | POLLHUP | POLLERR)))
				ret = pipe_read(px, &c->p[fdi]);
			else
				ret = 0;
			if (!ret && (pfd[i].events & POLLOUT) &&
			    (re & (POLLOUT | POLLHUP | POLLERR)))
				ret = pipe_write(&c->p[1 - fdi], now);
			if (ret)
				conn_close(px, c, ret);
		}
	}
	pthread_mutex_unlock(&px->lock);
	return NULL;
}

/* ---- API ---- */

int proxy_create(struct proxy **pp, uint64_t seed, FILE *log)
{
	const char *env = getenv("PCOPY_PROXY_SEED");
	pthread_condattr_t ca;
	struct proxy *px;

	*pp = NULL;
	px = calloc(1, sizeof(*px));
	if (!px)
		return -ENOMEM;
	px->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (px->wake < 0) {
		free(px);
		return -errno;
	}
	pthread_mutex_init(&px->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&px->cond, &ca);
	pthread_condattr_destroy(&ca);
	px->lfd = -1;
	px->log = log ? log : stderr;
	if (env && *env)
		seed = strtoull(env, NULL, 0);
	while (!seed && getrandom(&seed, sizeof(seed), 0) != sizeof(seed))
		;
	if (!seed)
		seed = now_ns();
	px->seed = seed;
	fprintf(px->log, "proxy: seed %" PRIu64 " (replay with "
		"PCOPY_PROXY_SEED=%" PRIu64 ")\n", seed, seed);
	*pp = px;
	return 0;
}

uint64_t proxy_seed(const struct proxy *p)
{
	return p->seed;
}

static int rule_check(const struct proxy_rule *r)
{
	if (r->dir != PROXY_A2B && r->dir != PROXY_B2A)
		return -EINVAL;
	switch (r->action) {
	case PROXY_CUT:
	case PROXY_SPLIT:
	case PROXY_SHUTDOWN:
		return 0;
	case PROXY_CUT_RANDOM:
		return r->arg > r->at ? 0 : -EINVAL;
	case PROXY_STALL:
		return r->arg >= 1 && r->arg <= 3600000 ? 0 : -EINVAL;
	case PROXY_THROTTLE:
		return r->arg >= 1 ? 0 : -EINVAL;
	case PROXY_FLIP:
		return r->arg >= 1 && r->arg <= 255 ? 0 : -EINVAL;
	case PROXY_REPLACE:
		return r->len >= 1 && r->len <= PROXY_DATA_MAX ? 0 : -EINVAL;
	case PROXY_DUP_FRAME:
	case PROXY_DROP_FRAME:
	case PROXY_CUT_FRAME:
		return r->type <= 255 ? 0 : -EINVAL;
	}
	return -EINVAL;
}

int proxy_add_rule(struct proxy *px, const struct proxy_rule *r)
{
	int ret = rule_check(r);

	if (ret)
		return ret;
	pthread_mutex_lock(&px->lock);
	if (px->nrules >= PROXY_RULES_MAX)
		ret = -ENOSPC;
	else
		px->rules[px->nrules++] = *r;
	pthread_mutex_unlock(&px->lock);
	return ret;
}

int proxy_start(struct proxy *px)
{
	int ret;

	if (px->started)
		return -EALREADY;
	ret = -pthread_create(&px->thread, NULL, proxy_main, px);
	if (!ret)
		px->started = true;
	return ret;
}

static void kick(struct proxy *px)
{
	uint64_t one = 1;

	(void)!write(px->wake, &one, sizeof(one));
}

int proxy_attach(struct proxy *px, int fd_a, int fd_b)
{
	int ret;

	pthread_mutex_lock(&px->lock);
	ret = conn_add(px, fd_a, fd_b);
	pthread_mutex_unlock(&px->lock);
	kick(px);
	return ret;
}

int proxy_pair(struct proxy *px, int *a_end, int *b_end)
{
	int sa[2], sb[2], ret;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sa))
		return -errno;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sb)) {
		ret = -errno;
		close(sa[0]);
		close(sa[1]);
		return ret;
	}
	ret = proxy_attach(px, sa[1], sb[1]);
	if (ret < 0) {
		close(sa[0]);
		close(sb[0]);
		return ret;
	}
	*a_end = sa[0];
	*b_end = sb[0];
	return ret;
}

int proxy_listen(struct proxy *px, int listen_fd, const struct sockaddr *up,
		 socklen_t uplen)
{
	int ret;

	if (uplen > sizeof(px->up)) {
		close(listen_fd);
		return -EINVAL;
	}
	ret = set_nonblock(listen_fd);
	if (ret) {
		close(listen_fd);
		return ret;
	}
	pthread_mutex_lock(&px->lock);
	if (px->lfd >= 0) {
		pthread_mutex_unlock(&px->lock);
		close(listen_fd);
		return -EBUSY;
	}
	memcpy(&px->up, up, uplen);
	px->uplen = uplen;
	px->lfd = listen_fd;
	pthread_mutex_unlock(&px->lock);
	kick(px);
	return 0;
}

int proxy_wait_closed(struct proxy *px, unsigned k, int timeout_ms)
{
	uint64_t deadline = now_ns() + (uint64_t)(timeout_ms < 0 ? 0 : timeout_ms) * 1000000ull;
	struct timespec ts = { .tv_sec = (time_t)(deadline / NS),
			       .tv_nsec = (long)(deadline % NS) };
	int ret = 0;

	pthread_mutex_lock(&px->lock);
	while (k == 0 || k > px->nconns || px->conns[k - 1]->open) {
		if (timeout_ms < 0)
			pthread_cond_wait(&px->cond, &px->lock);
		else if (pthread_cond_timedwait(&px->cond, &px->lock, &ts) ==
			 ETIMEDOUT) {
			ret = (k == 0 || k > px->nconns) ? -ENOENT : -ETIMEDOUT;
			break;
		}
	}
	pthread_mutex_unlock(&px->lock);
	return ret;
}

unsigned proxy_conns(struct proxy *px)
{
	unsigned n;

	pthread_mutex_lock(&px->lock);
	n = px->nconns;
	pthread_mutex_unlock(&px->lock);
	return n;
}

int proxy_stats(struct proxy *px, unsigned k, struct proxy_conn_stats *st)
{
	int ret = -ENOENT;

	pthread_mutex_lock(&px->lock);
	if (k >= 1 && k <= px->nconns) {
		const struct conn *c = px->conns[k - 1];

		st->open = c->open;
		st->failed = c->failed;
		st->error = c->error;
		st->dir[0] = c->p[0].st;
		st->dir[1] = c->p[1].st;
		ret = 0;
	}
	pthread_mutex_unlock(&px->lock);
	return ret;
}

void proxy_destroy(struct proxy *px)
{
	unsigned i;

	if (!px)
		return;
	if (px->started) {
		pthread_mutex_lock(&px->lock);
		px->stop = true;
		pthread_mutex_unlock(&px->lock);
		kick(px);
		pthread_join(px->thread, NULL);
	}
	for (i = 0; i < px->nconns; i++) {
		conn_close(px, px->conns[i], 0);
		free(px->conns[i]);
	}
	if (px->lfd >= 0)
		close(px->lfd);
	close(px->wake);
	pthread_cond_destroy(&px->cond);
	pthread_mutex_destroy(&px->lock);
	free(px);
}

/* ---- rule text ---- */

static int parse_num(const char *s, const char **end, uint64_t *v)
{
	char *e;

	errno = 0;
	if (*s < '0' || *s > '9')
		return -EINVAL;
	*v = strtoull(s, &e, 0);
	if (errno)
		return -EINVAL;
	switch (*e) {
	case 'k': case 'K': *v <<= 10; e++; break;
	case 'm': case 'M': *v <<= 20; e++; break;
	case 'g': case 'G': *v <<= 30; e++; break;
	}
	*end = e;
	return 0;
}

static int parse_hex(const char *s, const char **end, struct proxy_rule *r)
{
	unsigned hi, lo;

	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
		s += 2;
	r->len = 0;
	while (s[0] && s[0] != ',') {
		if (r->len >= PROXY_DATA_MAX || !s[1] ||
		    sscanf(s, "%1x%1x", &hi, &lo) != 2)
			return -EINVAL;
		r->data[r->len++] = (uint8_t)(hi << 4 | lo);
		s += 2;
	}
	*end = s;
	return r->len ? 0 : -EINVAL;
}

__attribute__((format(printf, 3, 4)))
static int bad(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err && errlen) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return -EINVAL;
}

int proxy_parse_rule(const char *spec, struct proxy_rule *r, char *err,
		     size_t errlen)
{
	static const struct { const char *name; enum proxy_action a; } acts[] = {
		{ "cut-random", PROXY_CUT_RANDOM }, { "cut-frame", PROXY_CUT_FRAME },
		{ "cut", PROXY_CUT },
		{ "stall", PROXY_STALL }, { "throttle", PROXY_THROTTLE },
		{ "split", PROXY_SPLIT }, { "flip", PROXY_FLIP },
		{ "replace", PROXY_REPLACE }, { "dup-frame", PROXY_DUP_FRAME },
		{ "drop-frame", PROXY_DROP_FRAME }, { "shutdown", PROXY_SHUTDOWN },
	};
	const char *s = spec;
	bool has_arg = false;
	unsigned i;
	uint64_t v;

	memset(r, 0, sizeof(*r));
	if (!strncmp(s, "a2b:", 4))
		r->dir = PROXY_A2B;
	else if (!strncmp(s, "b2a:", 4))
		r->dir = PROXY_B2A;
	else
		return bad(err, errlen, "rule '%s': want a2b: or b2a:", spec);
	s += 4;
	for (i = 0; i < sizeof(acts) / sizeof(acts[0]); i++) {
		size_t n = strlen(acts[i].name);

		if (!strncmp(s, acts[i].name, n) &&
		    (s[n] == '\0' || s[n] == '@' || s[n] == '=' || s[n] == ',')) {
			r->action = acts[i].a;
			s += n;
			break;
		}
	}
	if (!r->action)
		return bad(err, errlen, "rule '%s': unknown action", spec);
	if (*s == '@' && parse_num(s + 1, &s, &r->at))
		return bad(err, errlen, "rule '%s': bad position", spec);
	if (*s == '=') {
		has_arg = true;
		if (r->action == PROXY_REPLACE ? parse_hex(s + 1, &s, r) :
		    parse_num(s + 1, &s, &r->arg))
			return bad(err, errlen, "rule '%s': bad value", spec);
	}
	while (*s == ',') {
		if (!strncmp(s, ",conn=", 6) && !parse_num(s + 6, &s, &v) &&
		    v <= PROXY_CONNS_MAX)
			r->conn = (unsigned)v;
		else if (!strncmp(s, ",type=", 6) && !parse_num(s + 6, &s, &v) &&
			 v <= 255)
			r->type = (unsigned)v;
		else
			return bad(err, errlen, "rule '%s': bad option at '%s'",
				   spec, s);
	}
	if (*s)
		return bad(err, errlen, "rule '%s': trailing '%s'", spec, s);
	if (r->action == PROXY_FLIP && !has_arg)
		r->arg = 0x01;
	if (rule_check(r))
		return bad(err, errlen, "rule '%s': value out of range", spec);
	return 0;
}
