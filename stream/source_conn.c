/* SPDX-License-Identifier: MIT */
/*
 * The source's connections: the main connection's request reader (with
 * keepalive), pcopy_source_add_conn (urgent connection, or a resume: see
 * source_resume.c), and the urgent thread, which answers each request on
 * its own socket right away.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "source.h"
#include "sent_window.h"

#define TP PCOPY_TARGET_PAGE
/* Already-sent host pages of one REQ entry that the urgent thread sends
 * again (the copy in flight on the main socket may sit behind a backlog);
 * beyond this an absurd entry costs the peer nothing but its own bandwidth
 * for pages it has not had yet. */
#define URGENT_RESEND_MAX 64u
/* Readahead on the urgent connection: after a request that continues the
 * previous ones (within RA_SLACK host pages), the following unsent pages go
 * out with it, RA_FIRST bytes the first time, doubling up to RA_MAX while
 * the faults stay sequential. A fault elsewhere (a new run) takes
 * RA_ISOLATED with it, but no more than a tenth of what the pacing lets
 * into the path (~20 us of a paced link), so the next fault's answer does
 * not queue behind it: on loopback the neighbours of random faults are
 * touched soon enough that this cut a random-order restore by a fifth and
 * one without background stream by 3.7x. */
#ifndef RA_ISOLATED
#define RA_ISOLATED (16u << 10)
#endif
#ifndef RA_FIRST
#define RA_FIRST (32u << 10)
#endif
#ifndef RA_MAX
#define RA_MAX (256u << 10)
#endif
#define RA_SLACK 16u

static uint64_t now_ns(void)
{
	return pcopy_now_ns();
}

/* Is errnum, as reported by the destination's ERROR, a connection problem
 * a resume repairs (a corrupted frame, a timeout), rather than its end? */
static bool peer_err_resumable(int errnum)
{
	return errnum == EBADMSG || errnum == EPROTO || errnum == ETIMEDOUT ||
	       errnum == ECONNRESET || errnum == EPIPE;
}

/* Handle the destination's ERROR message. */
static void on_error(struct pcopy_source *s, uint64_t gen,
		     const struct wire_hdr *h, const uint8_t *buf)
{
	char text[PCOPY_ERROR_TEXT_MAX + 1] = "";
	int errnum = 0;

	if (wire_error_decode(buf, h->length, &errnum, text, sizeof(text))) {
		src_break(s, gen, -EPROTO, true,
			  "destination sent a malformed ERROR message (%u bytes)",
			  h->length);
		return;
	}
	if (errnum <= 0 || errnum >= 4096)
		errnum = EPROTO;
	if (peer_err_resumable(errnum) && (s->features & PCOPY_FEAT_RESUME)) {
		src_break(s, gen, -errnum, false,
			  "destination reported an error (%d): %s", errnum, text);
		return;
	}
	src_end(s, -errnum, false, "destination reported an error (%d): %s",
		errnum, text);
}

/* Handle one REQ message on the main connection: validate every entry,
 * then queue them. Returns 0 or -errno (the session broke or ended). */
static int on_req(struct pcopy_source *s, uint64_t gen,
		  const struct wire_hdr *h, const uint8_t *buf,
		  struct wire_req *reqs)
{
	char msg[PCOPY_ERRMSG_MAX] = "";
	unsigned i;
	int err;

	if (h->count < 1 || h->count > PCOPY_REQ_MAX_ENTRIES ||
	    h->length != (uint64_t)h->count * PCOPY_REQ_ENTRY_SIZE) {
		src_break(s, gen, -EPROTO, true,
			  "destination sent a REQ with %u entries in %u bytes (1..%u entries of %u bytes expected)",
			  h->count, h->length, PCOPY_REQ_MAX_ENTRIES,
			  PCOPY_REQ_ENTRY_SIZE);
		return -EPROTO;
	}
	err = wire_req_decode(buf, h->count, reqs, s->hello.regions, s->n,
			      msg, sizeof(msg));
	if (err) {
		src_break(s, gen, err, true, "destination sent a bad REQ: %s",
			  msg[0] ? msg : pcopy_strerror(err));
		return err;
	}
	/* before the first push wakes the sender, which reads it */
	atomic_store_explicit(&s->req_ns, pcopy_now_ns(), memory_order_relaxed);
	for (i = 0; i < h->count; i++) {
		err = src_request(s, &reqs[i]);
		if (err == -ECANCELED)
			return err;	/* the session ended meanwhile */
		if (err) {
			src_end(s, err, true, "queueing a request: %s",
				strerror(-err));
			return err;
		}
	}
	/* counted once queued, so a reader of the stats that sees it also
	 * finds its pages queued */
	SRC_STAT_ADD(s, request_msgs, 1);
	return 0;
}

/*
 * Handle one message read from the main connection of generation gen:
 * REQ -> queue, PING -> nothing, DONE -> success, ERROR -> the peer's
 * failure or a break, anything else -> a protocol break. Returns 0 to go
 * on reading, 1 when the session ended, or -errno. Reader thread, or the
 * caller's thread while a resume reads what came with the bitmap.
 */
int src_handle_msg(struct pcopy_source *s, uint64_t gen, int fd,
		   const struct wire_hdr *h, const uint8_t *buf,
		   struct wire_req *reqs)
{
	uint64_t left;

	(void)fd;
	switch (h->type) {
	case PCOPY_MSG_REQ:
		return on_req(s, gen, h, buf, reqs);
	case PCOPY_MSG_PING:
		return 0;
	case PCOPY_MSG_DONE:
		left = atomic_load(&s->pages_left);
		if (left)
			src_end(s, -EPROTO, true,
				"destination sent DONE with %llu host pages not sent yet",
				(unsigned long long)left);
		else
			src_end(s, 0, false,
				"destination reports the restore complete");
		return 1;
	case PCOPY_MSG_ERROR:
		on_error(s, gen, h, buf);
		return 1;
	default:
		src_break(s, gen, -EPROTO, true,
			  "unexpected message type %u from the destination",
			  h->type);
		return -EPROTO;
	}
}

/* Deadline for the next read on a connection: keepalive silence. */
static uint64_t rx_deadline(struct pcopy_source *s, struct src_conn *c)
{
	if (!s->keepalive_ns)
		return 0;
	return atomic_load(&c->last_rx_ns) + s->keepalive_ns;
}

/*
 * The main connection's reader, one per generation: hands each message to
 * src_handle_msg; EOF, a reset, an I/O or integrity error and keepalive
 * silence are breaks. Exits when its generation ends. Returns NULL. Reader
 * thread.
 */
void *src_reader_main(void *arg)
{
	struct pcopy_source *s = arg;
	uint8_t *buf = malloc(PCOPY_WIRE_PAYLOAD_MAX);
	struct wire_req *reqs = malloc(PCOPY_REQ_MAX_ENTRIES * sizeof(*reqs));
	char msg[PCOPY_ERRMSG_MAX];
	struct wire_hdr h;
	uint64_t gen;
	int fd, err;

	(void)pthread_setname_np(pthread_self(), "pcopy-src-read");	/* top -H, perf */
	pthread_mutex_lock(&s->lock);
	gen = s->main.gen;
	fd = s->main.fd;
	pthread_mutex_unlock(&s->lock);
	if (!buf || !reqs) {
		src_end(s, -ENOMEM, true, "request reader: out of memory");
		goto out;
	}
	while (src_live(s, gen)) {
		msg[0] = '\0';
		err = conn_recv_msg(fd, &h, buf, PCOPY_WIRE_PAYLOAD_MAX,
				    rx_deadline(s, &s->main), s->stop_fd, msg,
				    sizeof(msg));
		if (!src_live(s, gen) || err == -ECANCELED)
			break;
		if (err == -ETIMEDOUT) {
			src_break(s, gen, -ETIMEDOUT, false,
				  "keepalive: nothing from the destination for %llu ms",
				  (unsigned long long)(s->keepalive_ns / 1000000));
			break;
		}
		if (err == -ECONNRESET || err == -EPIPE) {
			src_break(s, gen, err, false,
				  "destination closed the connection before DONE (%s)",
				  msg[0] ? msg : strerror(-err));
			break;
		}
		if (err) {
			src_break(s, gen, err, err == -EPROTO || err == -EBADMSG,
				  "receiving from the destination: %s",
				  msg[0] ? msg : strerror(-err));
			break;
		}
		atomic_store(&s->main.last_rx_ns, now_ns());
		if (src_handle_msg(s, gen, fd, &h, buf, reqs))
			break;
	}
out:
	free(buf);
	free(reqs);
	pthread_mutex_lock(&s->lock);
	s->main.live = false;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

/* ---- the urgent connection ---- */

struct urgent {
	struct pcopy_source *s;
	struct src_conn *c;
	struct src_tx *tx;
	uint8_t *buf;
	struct wire_req *reqs;
	uint64_t claimed;		/* pages in urg_unsent, this REQ */
	/* the sequential run being read ahead, global host pages: requests
	 * since [run_lo, last_req], pages sent up to ra_end (exclusive) */
	uint64_t run_lo, last_req, ra_end;
	size_t ra_bytes;		/* window; 0: none */
	bool isolated;			/* the run is one request so far */
	struct sent_window own;		/* pages of the run sent here */
};

static bool unsent_bit(struct src_region *r, uint64_t p)
{
	return atomic_load_explicit(&r->unsent[p / 64], memory_order_relaxed) &
	       (UINT64_C(1) << (p % 64));
}

static unsigned region_index(struct pcopy_source *s, const struct wire_req *rq)
{
	return rq->region;	/* validated by wire_req_decode */
}

/*
 * Claim host page p of region r for the urgent connection, counting it in
 * urg_unsent first (the sender waits for that count before END, and must
 * never see pages_left at 0 without it). Urgent thread.
 */
static bool urgent_claim(struct urgent *u, struct src_region *r, uint64_t p)
{
	atomic_fetch_add(&u->s->urg_unsent, 1);
	if (src_claim(u->s, r, p)) {
		u->claimed++;
		return true;
	}
	atomic_fetch_sub(&u->s->urg_unsent, 1);
	return false;
}

/* The pages claimed for this REQ are written (or never will be: the
 * connection failed): uncount them and wake a sender waiting to send END. */
static void urgent_written(struct urgent *u)
{
	struct pcopy_source *s = u->s;

	if (!u->claimed)
		return;
	if (atomic_fetch_sub(&s->urg_unsent, u->claimed) == u->claimed &&
	    !atomic_load(&s->pages_left)) {
		pthread_mutex_lock(&s->lock);
		pthread_cond_broadcast(&s->cond);
		pthread_mutex_unlock(&s->lock);
	}
	u->claimed = 0;
}

/*
 * Follow the run with a request for global host pages [g, g_last]: one that
 * continues it grows the readahead window, one elsewhere starts a new run
 * with the isolated fault's window (and forgets what this connection sent).
 * Urgent thread.
 */
static void urgent_sequential(struct urgent *u, uint64_t g, uint64_t g_last)
{
	bool seq = u->ra_end && g + RA_SLACK >= u->run_lo &&
		   g <= u->ra_end + RA_SLACK;

	if (!seq) {
		u->run_lo = g;
		u->ra_end = g_last + 1;
		u->ra_bytes = RA_ISOLATED;
		u->isolated = true;
		sent_window_reset(&u->own, g);
	} else {
		u->ra_bytes = u->ra_bytes < RA_FIRST ? RA_FIRST :
			      u->ra_bytes >= RA_MAX / 2 ? RA_MAX :
			      2 * u->ra_bytes;
		u->isolated = false;
		if (g < u->run_lo)
			u->run_lo = g;
	}
	u->last_req = g_last;
}

/* Claim and send the unsent host pages [p, end) of region ri. */
static int urgent_range(struct urgent *u, unsigned ri, uint64_t p,
			uint64_t end)
{
	struct pcopy_source *s = u->s;
	struct src_region *r = &s->reg[ri];
	int err;

	for (; p < end; p++) {
		if (!unsent_bit(r, p) || !urgent_claim(u, r, p))
			continue;
		err = src_send_host_page(u->tx, ri, p);
		if (err)
			return err;
		sent_window_mark(&u->own, r->first + p);
		SRC_STAT_ADD(s, host_pages_sent, 1);
		SRC_STAT_ADD(s, urgent_pages, 1);
	}
	return 0;
}

/*
 * The readahead of a sequential run around a request for host pages
 * [first, last] of region ri: the unsent pages of the run just before it
 * (up to RA_SLACK: other threads touch them next), then ra_bytes after what
 * the run already sent, within the region. Returns 0 or -errno. Urgent
 * thread.
 */
static int urgent_readahead(struct urgent *u, unsigned ri, uint64_t first,
			    uint64_t last)
{
	struct src_region *r = &u->s->reg[ri];
	size_t bytes = u->ra_bytes, budget = src_link_budget(u->s);
	uint64_t n, p, end;
	int err;

	/* on a slow path, a large window would queue ahead of the next
	 * request as the background does: no more than the pacing allows,
	 * and a tenth of that for a fault that may be a random one */
	if (u->isolated)
		budget /= 10;
	if (bytes > budget)
		bytes = budget;
	n = bytes / r->page_size;

	p = first > RA_SLACK ? first - RA_SLACK : 0;
	if (u->run_lo > r->first + p)
		p = u->run_lo - r->first;
	if ((err = urgent_range(u, ri, p, first)))
		return err;
	p = last + 1;
	if (u->ra_end > r->first + p)
		p = u->ra_end - r->first;
	end = p + n < r->npages ? p + n : r->npages;
	if ((err = urgent_range(u, ri, p, end)))
		return err;
	if (r->first + end > u->ra_end)
		u->ra_end = r->first + end;
	return 0;
}

/*
 * Answer one validated REQ entry on the urgent socket: every host page it
 * covers, claimed or not (a copy on the main connection may wait behind its
 * backlog; the destination drops duplicates), up to URGENT_RESEND_MAX
 * already-sent ones, except those this connection sent itself as part of
 * the current run (they are ahead of this answer on the same socket); then
 * the readahead of a sequential run; then point the background scan past
 * it (faults cluster). Returns 0 or -errno.
 */
static int urgent_entry(struct urgent *u, const struct wire_req *rq)
{
	struct pcopy_source *s = u->s;
	unsigned ri = region_index(s, rq);
	struct src_region *r = &s->reg[ri];
	uint64_t p = rq->offset / r->page_size, first = p;
	uint64_t last = (rq->offset + (uint64_t)rq->count * TP - 1) / r->page_size;
	unsigned resent = 0;
	/* A paced main connection holds little ahead of a page it sent: a
	 * copy here would queue at the same bottleneck behind it, so it
	 * would only add a duplicate. */
	bool paced = src_link_budget(s) != SIZE_MAX;
	int err;

	urgent_sequential(u, r->first + p, r->first + last);
	for (; p <= last; p++) {
		bool claimed;

		if (!src_live(s, u->tx->gen))
			return -ECANCELED;
		/* past the resend budget, 64 sent pages cost one load */
		if (resent >= URGENT_RESEND_MAX && p % 64 == 0 && last - p >= 63 &&
		    !atomic_load_explicit(&r->unsent[p / 64],
					  memory_order_relaxed)) {
			SRC_STAT_ADD(s, duplicates, 64);
			p += 63;
			continue;
		}
		claimed = urgent_claim(u, r, p);
		/* a page this connection sent in the run is ahead of this
		 * answer on the same socket; one the background claimed is
		 * not, and may sit behind the main socket's backlog */
		if (!claimed && (paced || sent_window_test(&u->own, r->first + p))) {
			SRC_STAT_ADD(s, duplicates, 1);
			continue;
		}
		if (!claimed && resent++ >= URGENT_RESEND_MAX) {
			SRC_STAT_ADD(s, duplicates, 1);
			continue;
		}
		err = src_send_host_page(u->tx, ri, p);
		if (err)
			return err;
		sent_window_mark(&u->own, r->first + p);
		if (claimed)
			SRC_STAT_ADD(s, host_pages_sent, 1);
		SRC_STAT_ADD(s, urgent_pages, 1);
		SRC_STAT_ADD(s, requests, 1);
	}
	if (u->ra_bytes && (err = urgent_readahead(u, ri, first, last)))
		return err;
	atomic_store_explicit(&s->bg_hint,
			      (u->ra_end > r->first + last + 1 ?
			       u->ra_end : r->first + last + 1) + 1,
			      memory_order_relaxed);
	return 0;
}

/* One REQ on the urgent connection. 0, or -errno (the connection ends). */
static int urgent_req(struct urgent *u, const struct wire_hdr *h)
{
	struct pcopy_source *s = u->s;
	char msg[PCOPY_ERRMSG_MAX] = "";
	uint64_t t;
	unsigned i;
	int err;

	if (h->count < 1 || h->count > PCOPY_REQ_MAX_ENTRIES ||
	    h->length != (uint64_t)h->count * PCOPY_REQ_ENTRY_SIZE) {
		src_break(s, u->c->gen, -EPROTO, true,
			  "destination sent a REQ with %u entries in %u bytes on the urgent connection",
			  h->count, h->length);
		return -EPROTO;
	}
	err = wire_req_decode(u->buf, h->count, u->reqs, s->hello.regions,
			      s->n, msg, sizeof(msg));
	if (err) {
		src_break(s, u->c->gen, err, true,
			  "destination sent a bad REQ on the urgent connection: %s",
			  msg[0] ? msg : pcopy_strerror(err));
		return err;
	}
	SRC_STAT_ADD(s, request_msgs, 1);
	t = pcopy_now_ns();
	atomic_store_explicit(&s->urg_req_ns, t, memory_order_relaxed);
	atomic_store_explicit(&s->req_ns, t, memory_order_relaxed);
	for (i = 0; i < h->count; i++) {
		err = urgent_entry(u, &u->reqs[i]);
		if (err)
			break;
	}
	if (!err)
		err = src_tx_flush(u->tx);
	urgent_written(u);
	return err;
}

/* Drop the urgent connection alone (the destination closed it, or it went
 * quiet): the main connection carries on; requests go there. */
static void urgent_lost(struct urgent *u, const char *why)
{
	pcopy_log(&u->s->lg, PCOPY_LOG_INFO, "urgent connection closed: %s",
		  why);
}

/*
 * The urgent connection's only thread: reads REQs and answers each on the
 * same socket (TCP_NODELAY), PINGs when idle. EOF or silence drops just
 * this connection; a protocol error or a failed write breaks the session
 * (the destination resumes). Returns NULL. Urgent thread.
 */
static void *urgent_main(void *arg)
{
	struct urgent *u = arg;
	struct pcopy_source *s = u->s;
	struct src_conn *c = u->c;
	char msg[PCOPY_ERRMSG_MAX];
	struct wire_hdr h;
	int err = 0;

	(void)pthread_setname_np(pthread_self(), "pcopy-src-urg");	/* top -H, perf */
	while (src_live(s, c->gen)) {
		uint64_t dl = rx_deadline(s, c), ping = 0;

		if (s->keepalive_ns) {
			ping = u->tx->last_tx_ns + s->keepalive_ns / 3;
			if (ping < dl)
				dl = ping;
		}
		msg[0] = '\0';
		err = conn_recv_msg(c->fd, &h, u->buf, PCOPY_WIRE_PAYLOAD_MAX,
				    dl, s->stop_fd, msg, sizeof(msg));
		if (!src_live(s, c->gen) || err == -ECANCELED)
			break;
		if (err == -ETIMEDOUT &&
		    now_ns() < rx_deadline(s, c)) {
			/* only the PING deadline */
			err = src_tx_simple(u->tx, PCOPY_MSG_PING);
			if (err) {
				urgent_lost(u, strerror(-err));
				break;
			}
			continue;
		}
		if (err == -ETIMEDOUT) {
			urgent_lost(u, "keepalive: the destination went quiet");
			break;
		}
		if (err == -ECONNRESET || err == -EPIPE) {
			urgent_lost(u, msg[0] ? msg : strerror(-err));
			break;
		}
		if (err) {
			src_break(s, c->gen, err, err == -EPROTO || err == -EBADMSG,
				  "receiving on the urgent connection: %s",
				  msg[0] ? msg : strerror(-err));
			break;
		}
		atomic_store(&c->last_rx_ns, now_ns());
		if (h.type == PCOPY_MSG_REQ) {
			err = urgent_req(u, &h);
			if (err == -EPIPE || err == -ECONNRESET) {
				urgent_lost(u, strerror(-err));
				break;
			}
			if (err && err != -ECANCELED && err != -EPROTO)
				src_break(s, c->gen, err, false,
					  "sending on the urgent connection: %s",
					  strerror(-err));
			if (err)
				break;
		} else if (h.type == PCOPY_MSG_PING) {
			continue;
		} else if (h.type == PCOPY_MSG_DONE || h.type == PCOPY_MSG_ERROR) {
			src_handle_msg(s, c->gen, c->fd, &h, u->buf, u->reqs);
			break;
		} else {
			src_break(s, c->gen, -EPROTO, true,
				  "unexpected message type %u on the urgent connection",
				  h.type);
			break;
		}
	}
	/* no more writes here: the destination sees EOF; the fd is closed
	 * when the thread is joined */
	shutdown(c->fd, SHUT_RDWR);
	src_tx_free(u->tx);
	free(u->buf);
	free(u->reqs);
	free(u);
	pthread_mutex_lock(&s->lock);
	c->live = false;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

/* Join a connection's exited (or exiting: its fd is shut down) thread and
 * close its fd. Caller's thread, with conn_lock, without s->lock. */
void src_conn_reap(struct pcopy_source *s, struct src_conn *c)
{
	int fd;

	if (c->started) {
		pthread_join(c->thread, NULL);
		c->started = false;
	}
	pthread_mutex_lock(&s->lock);
	fd = c->fd;
	c->fd = -1;
	pthread_mutex_unlock(&s->lock);
	if (fd >= 0)
		close(fd);
}

/* Start the urgent thread on fd. Caller's thread, with conn_lock. */
static int add_urgent(struct pcopy_source *s, int fd)
{
	struct urgent *u;
	int err;
	bool busy, paused;

	pthread_mutex_lock(&s->lock);
	busy = s->urg.live;
	paused = s->state == SRC_PAUSED;
	pthread_mutex_unlock(&s->lock);
	if (busy || paused) {
		conn_send_error(fd, busy ? EBUSY : EAGAIN, busy ?
				"this session has an urgent connection already" :
				"the session is paused: resume it first");
		close(fd);
		return busy ? -EBUSY : -EAGAIN;
	}
	src_conn_reap(s, &s->urg);	/* a previous, dropped one */
	(void)src_sockopts(s, fd, true);
	u = calloc(1, sizeof(*u));
	err = u ? src_tx_new(s, true, &u->tx) : -ENOMEM;
	if (!err) {
		u->buf = malloc(PCOPY_WIRE_PAYLOAD_MAX);
		u->reqs = malloc(PCOPY_REQ_MAX_ENTRIES * sizeof(*u->reqs));
		if (!u->buf || !u->reqs)
			err = -ENOMEM;
	}
	if (err) {
		if (u) {
			src_tx_free(u->tx);
			free(u->buf);
			free(u->reqs);
			free(u);
		}
		close(fd);
		return err;
	}
	u->s = s;
	u->c = &s->urg;
	pthread_mutex_lock(&s->lock);
	if (s->state != SRC_RUNNING) {
		pthread_mutex_unlock(&s->lock);
		src_tx_free(u->tx);
		free(u->buf);
		free(u->reqs);
		free(u);
		close(fd);
		return -EAGAIN;
	}
	s->urg.fd = fd;
	s->urg.gen = s->gen;
	s->urg.live = true;
	u->tx->fd = fd;
	u->tx->gen = s->gen;
	u->tx->last_tx_ns = now_ns();
	atomic_store(&s->urg.last_rx_ns, now_ns());
	err = src_thread_start(&s->urg.thread, urgent_main, u);
	s->urg.started = !err;
	if (err)
		s->urg.live = false;
	pthread_mutex_unlock(&s->lock);
	if (!err)
		src_queue_kick(&s->q);	/* a held background goes now */
	if (err) {
		src_tx_free(u->tx);
		free(u->buf);
		free(u->reqs);
		free(u);
		return err;
	}
	pcopy_log(&s->lg, PCOPY_LOG_INFO, "source: urgent connection added");
	return 0;
}

/*
 * Another connection from the destination (see postcopy.h): handshake
 * (blocking, with the session id and key), then by the kind the
 * destination declared: URGENT -> its own thread; RESUME -> resume().
 * Takes ownership of fd. Returns 0, -EINVAL (not started), -ESHUTDOWN (the
 * session is over), -EOPNOTSUPP (kind not offered), -EBUSY / -EAGAIN
 * (urgent while one exists / while paused), or the handshake's error.
 * Caller's thread; calls are serialised.
 */
int pcopy_source_add_conn(struct pcopy_source *s, int fd)
{
	char msg[PCOPY_ERRMSG_MAX] = "";
	struct wire_hello *peer;
	struct conn_hs_params hp;
	uint32_t feats = 0;
	enum src_state st;
	int err;

	if (!s || fd < 0) {
		if (fd >= 0)
			close(fd);
		return -EINVAL;
	}
	peer = malloc(sizeof(*peer));
	if (!peer) {
		close(fd);
		return -ENOMEM;
	}
	pthread_mutex_lock(&s->conn_lock);
	pthread_mutex_lock(&s->lock);
	st = s->state;
	pthread_mutex_unlock(&s->lock);
	if (st == SRC_INIT || st == SRC_DONE || st == SRC_FAILED) {
		err = st == SRC_INIT ? -EINVAL : -ESHUTDOWN;
		snprintf(msg, sizeof(msg), "%s",
			 st == SRC_INIT ? "the source was not started"
					: "the session is over");
		conn_send_error(fd, -err, msg);
		close(fd);
		goto out;
	}
	memset(&hp, 0, sizeof(hp));
	hp.psk = s->psk;
	hp.psk_len = s->psk ? s->opts.psk_len : 0;
	hp.expect_session = s->hello.session_id;
	hp.timeout_ms = s->opts.handshake_timeout_ms;
	err = conn_handshake2(fd, &s->hello, peer, &feats, &hp, msg,
			      sizeof(msg));
	if (err) {
		close(fd);
		goto out;
	}
	feats &= s->hello.features;
	switch (peer->conn_kind) {
	case PCOPY_CONN_URGENT:
		if (!(feats & PCOPY_FEAT_URGENT)) {
			snprintf(msg, sizeof(msg), "this source does not offer an urgent connection");
			err = -EOPNOTSUPP;
			break;
		}
		err = add_urgent(s, fd);
		fd = -1;
		if (err)
			snprintf(msg, sizeof(msg), "urgent connection refused: %s",
				 strerror(-err));
		break;
	case PCOPY_CONN_RESUME:
		if (!(feats & PCOPY_FEAT_RESUME) ||
		    !(s->features & PCOPY_FEAT_RESUME)) {
			snprintf(msg, sizeof(msg), "this session cannot be resumed (resume was not negotiated)");
			err = -EOPNOTSUPP;
			break;
		}
		err = src_resume(s, fd, msg, sizeof(msg));
		fd = -1;
		break;
	default:
		snprintf(msg, sizeof(msg),
			 "a %s connection cannot join a running session",
			 peer->conn_kind == PCOPY_CONN_MAIN ? "MAIN" : "unknown");
		err = -EPROTO;
		break;
	}
	if (fd >= 0) {
		conn_send_error(fd, -err, msg);
		close(fd);
	}
out:
	pthread_mutex_unlock(&s->conn_lock);
	if (err)
		pcopy_log(&s->lg, PCOPY_LOG_WARN, "pcopy_source_add_conn: %s",
			  msg[0] ? msg : pcopy_strerror(err));
	free(peer);
	return err;
}
