/* SPDX-License-Identifier: MIT */
/*
 * The receiver: one io_uring with a recv in flight on the main connection
 * (the fault thread reads the urgent one, urgent.c), waited for in poll() on
 * the ring fd, keepalive of both, and the pause after a break of either: tear
 * the connections down, wait for new ones or the deadline.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"

/* Bytes asked for per recv: large, so a busy stream costs few syscalls. */
#define RECV_CHUNK (1u << 20)
#define RECV_CHUNK_URGENT (256u << 10)
#define RECV_MSG_MAX (PCOPY_WIRE_HDR_SIZE + PCOPY_WIRE_PAYLOAD_MAX)
/* Placement runs: 512 KiB of 4 KiB pages per UFFDIO_COPY at most. */
#define STAGING_BYTES (512u << 10)
#define TAG_RECV 16	/* + connection index */

static void *map_anon(size_t len, int prot)
{
	void *p = mmap(NULL, len, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

/* Allocate the receive buffers, staging areas, zero page and the ring.
 * Returns 0 or -errno (logged). Caller's thread (start). */
int dest_recv_init(struct pcopy_dest *d)
{
	unsigned i;
	int rc;

	for (i = 0; i < DEST_NCONN; i++) {
		struct dest_conn *c = &d->conn[i];

		/* Room for one whole largest message plus a chunk: after
		 * moving a partial message to the front, the rest fits. */
		c->rcap = (RECV_MSG_MAX + (i == DEST_MAIN ? RECV_CHUNK : RECV_CHUNK_URGENT) +
			   4095) & ~(size_t)4095;
		c->scap = d->max_page > STAGING_BYTES ? d->max_page : STAGING_BYTES;
		c->rbuf = map_anon(c->rcap, PROT_READ | PROT_WRITE);
		c->staging = map_anon(c->scap, PROT_READ | PROT_WRITE);
		c->need = PCOPY_WIRE_HDR_SIZE;
		if (!c->rbuf || !c->staging)
			goto nomem;
	}
	d->zero = map_anon(d->max_page, PROT_READ);
	if (!d->zero)
		goto nomem;
	for (i = 0; i < d->nreg; i++)
		if (d->reg[i].mem == DEST_MEM_HUGETLB &&
		    dbm_init(&d->reg[i].placing, d->reg[i].npages) < 0)
			goto nomem;
	/* One inflate context per connection: the fault thread decodes the
	 * urgent one while the receiver decodes the main one. */
	for (i = 0; i < DEST_NCONN && (d->features & PCOPY_FEAT_ZLIB); i++) {
		rc = codec_zlib_new(&d->conn[i].zlib, false, 0);
		if (rc < 0) {
			pcopy_log(&d->log, PCOPY_LOG_ERROR, "zlib inflate context: %s",
				  strerror(-rc));
			return rc;
		}
	}
	rc = io_uring_queue_init(8, &d->ring, 0);
	if (rc < 0) {
		pcopy_log(&d->log, PCOPY_LOG_ERROR, "io_uring_queue_init: %s",
			  strerror(-rc));
		return rc;
	}
	d->ring_on = true;
	return 0;
nomem:
	pcopy_log(&d->log, PCOPY_LOG_ERROR, "receiver buffers: %s", strerror(ENOMEM));
	return -ENOMEM;
}

/* Free what dest_recv_init made; after the receiver thread ended (it left
 * no recv in flight). Destroy only. */
void dest_recv_fini(struct pcopy_dest *d)
{
	unsigned i;

	if (d->ring_on)
		io_uring_queue_exit(&d->ring);
	d->ring_on = false;
	for (i = 0; i < DEST_NCONN; i++) {
		struct dest_conn *c = &d->conn[i];

		if (c->rbuf)
			munmap(c->rbuf, c->rcap);
		if (c->staging)
			munmap(c->staging, c->scap);
		c->rbuf = c->staging = NULL;
		codec_zlib_free(c->zlib);
		c->zlib = NULL;
	}
	if (d->zero)
		munmap(d->zero, d->max_page);
	d->zero = NULL;
	for (i = 0; i < d->nreg; i++)
		dbm_free(&d->reg[i].placing);
}

/* Move a partial message to the front when the rest of it would not fit,
 * or the free tail got small. Thread owning c. */
void dest_conn_compact(struct dest_conn *c)
{
	if (c->head == c->tail) {
		c->head = c->tail = 0;
	} else if (c->rcap - c->head < c->need ||
		   c->rcap - c->tail < (c->rcap - RECV_MSG_MAX) / 4) {
		memmove(c->rbuf, c->rbuf + c->head, c->tail - c->head);
		c->tail -= c->head;
		c->head = 0;
	}
}

static int queue_recv(struct pcopy_dest *d, struct dest_conn *c)
{
	struct io_uring_sqe *sqe;

	dest_conn_compact(c);
	sqe = io_uring_get_sqe(&d->ring);
	if (!sqe)
		return -EBUSY;
	io_uring_prep_recv(sqe, c->fd, c->rbuf + c->tail, c->rcap - c->tail, 0);
	io_uring_sqe_set_data64(sqe, TAG_RECV + c->idx);
	c->queued = true;
	return 0;
}

/* The main stream ended (res 0 = EOF, or -errno). */
static enum recv_end conn_ended(struct pcopy_dest *d, struct dest_conn *c, int res)
{
	const char *which = "connection";
	bool mid = c->tail != c->head || c->cur.active;

	if (dest_missing(d) == 0)
		/* complete: the end, or a DONE to tell again (linger) */
		return dest_break(d, res ? res : -ECONNRESET,
				  "connection closed before the source confirmed DONE (%s)",
				  res ? strerror(-res) : "EOF");
	if (res == 0 || res == -ECONNRESET || res == -EPIPE)
		return dest_break(d, -ECONNRESET,
				  "%s closed by source with %" PRIu64 " host pages missing%s",
				  which, dest_missing(d),
				  mid ? " (in the middle of a message)" : "");
	return dest_break(d, res,
			  "receiving from the source (%s): %s (%" PRIu64 " host pages missing)",
			  which, strerror(-res), dest_missing(d));
}

/* Wait (poll on the ring fd, valgrind-friendly) until no recv is in flight;
 * the sockets were shut down, so they complete at once. */
static void drain_recvs(struct pcopy_dest *d)
{
	struct io_uring_cqe *cqe;
	unsigned left, spins = 0;

	for (;;) {
		left = d->conn[DEST_MAIN].queued;
		if (!left || spins++ > 5000)
			break;
		io_uring_submit(&d->ring);
		while (io_uring_peek_cqe(&d->ring, &cqe) == 0) {
			uint64_t tag = io_uring_cqe_get_data64(cqe);

			io_uring_cqe_seen(&d->ring, cqe);
			if (tag >= TAG_RECV && tag < TAG_RECV + DEST_NCONN)
				d->conn[tag - TAG_RECV].queued = false;
		}
		if (left) {
			struct pollfd p = { .fd = d->ring.ring_fd, .events = POLLIN };

			poll(&p, 1, 1);
		}
	}
}

/* Forget everything about connection c (its fd is already shut down). */
static void conn_drop(struct pcopy_dest *d, struct dest_conn *c)
{
	if (c->run.n)
		place_run(d, c);	/* whole, checked host pages: keep them */
	asm_reset(c);
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->head = c->tail = 0;
	c->need = PCOPY_WIRE_HDR_SIZE;
}

static void conn_take(struct dest_conn *c, int fd)
{
	asm_reset(c);
	c->fd = fd;
	c->head = c->tail = 0;
	c->need = PCOPY_WIRE_HDR_SIZE;
	c->last_rx_ns = pcopy_now_ns();
}

/* A main connection handed in by pcopy_dest_resume (the fault thread takes
 * the urgent one). Receiver. */
static void take_handoffs(struct pcopy_dest *d)
{
	struct dest_conn *c = &d->conn[DEST_MAIN];

	pthread_mutex_lock(&d->lock);
	if (d->handoff[DEST_MAIN] >= 0) {
		if (c->fd >= 0 && c->fd != d->handoff[DEST_MAIN])
			/* cannot happen: a new one comes only after a pause */
			pcopy_log(&d->log, PCOPY_LOG_WARN,
				  "receiver: main connection handed in twice");
		else
			conn_take(c, d->handoff[DEST_MAIN]);
		d->handoff[DEST_MAIN] = -1;
	}
	pthread_mutex_unlock(&d->lock);
}

/* Shut every connection down and take it from the writers; close what
 * nobody took. Shuts down before taking d->lock, so that a writer stuck on
 * a full socket (the fault thread holding wlock) gets EPIPE and lets go.
 * The urgent fd the fault thread took is its to close: it is kicked and
 * does so once it sees it unlinked. Call without d->lock; returns with it
 * held. Receiver thread. */
static void conns_unlink(struct pcopy_dest *d)
{
	struct dest_conn *m = &d->conn[DEST_MAIN];
	unsigned i;

	if (m->fd >= 0)
		shutdown(m->fd, SHUT_RDWR);
	pthread_mutex_lock(&d->lock);
	pthread_mutex_lock(&d->wlock);
	for (i = 0; i < DEST_NCONN; i++) {
		if (d->wfd[i] >= 0)
			shutdown(d->wfd[i], SHUT_RDWR);
		if (i == DEST_MAIN && d->wfd[i] >= 0 && d->wfd[i] != m->fd &&
		    d->wfd[i] != d->handoff[i])
			close(d->wfd[i]);
		d->wfd[i] = -1;
		if (d->handoff[i] >= 0) {
			/* handed in a moment ago, never taken */
			close(d->handoff[i]);
			d->handoff[i] = -1;
		}
	}
	pthread_mutex_unlock(&d->wlock);
	/* One pause for both: a break the fault thread reported is this one. */
	if (atomic_load(&d->urgent_end) == RECV_BREAK)
		atomic_store(&d->urgent_end, RECV_GO);
	atomic_store(&d->urgent_rx_ns, 0);
	dest_kick(d->kick_efd);
}

/* Take a broken urgent connection from the writers after completion; the
 * fault thread, kicked, closes it. The main one is left alone. Receiver. */
static void urg_unlink(struct pcopy_dest *d)
{
	pthread_mutex_lock(&d->lock);
	pthread_mutex_lock(&d->wlock);
	if (d->wfd[DEST_URGENT] >= 0)
		shutdown(d->wfd[DEST_URGENT], SHUT_RDWR);
	d->wfd[DEST_URGENT] = -1;
	pthread_mutex_unlock(&d->wlock);
	pthread_mutex_unlock(&d->lock);
	atomic_store(&d->urgent_rx_ns, 0);
	dest_kick(d->kick_efd);
}

/*
 * Complete, but the main connection broke (or the source went silent)
 * before the source echoed our DONE: it may never have seen it, and would
 * wait out its resume deadline and then fail. Resume once more with the
 * full bitmap and DONE (dest_relink), with backoff, until linger_until or
 * destroy. Only with RESUME and opts.connect. Returns RECV_GO on the new
 * main connection, else RECV_STOP. Receiver thread.
 */
static enum recv_end linger_relink(struct pcopy_dest *d)
{
	unsigned backoff = 10;
	uint64_t now = pcopy_now_ns();

	if (!d->linger_until)
		d->linger_until = now + (uint64_t)d->handshake_timeout_ms * 1000000ull;
	conns_unlink(d);
	atomic_store(&d->paused, 0);	/* complete: nothing to resume for */
	pthread_mutex_unlock(&d->lock);
	drain_recvs(d);
	conn_drop(d, &d->conn[DEST_MAIN]);
	if (d->done_acked || atomic_load(&d->failed) || atomic_load(&d->stopping))
		return RECV_STOP;
	if (!d->connect || (d->flags & PCOPY_DEST_NO_RESUME) ||
	    !(d->features & PCOPY_FEAT_RESUME)) {
		pcopy_log(&d->log, PCOPY_LOG_DEBUG,
			  "complete; the connection ended before the source confirmed DONE: %s",
			  d->break_why);
		return RECV_STOP;
	}
	pcopy_log(&d->log, PCOPY_LOG_INFO,
		  "complete, but the connection broke before the source confirmed DONE (%s): telling it again",
		  d->break_why);
	for (;;) {
		struct pollfd p = { .fd = d->stop_efd, .events = POLLIN };
		int fd, left;

		now = pcopy_now_ns();
		if (now >= d->linger_until)
			break;
		fd = dest_relink(d);
		if (fd >= 0) {
			pthread_mutex_lock(&d->wlock);
			d->wfd[DEST_MAIN] = fd;
			atomic_store(&d->last_tx_ns[DEST_MAIN], pcopy_now_ns());
			pthread_mutex_unlock(&d->wlock);
			conn_take(&d->conn[DEST_MAIN], fd);
			return RECV_GO;
		}
		/* A refused handshake: the source has no such session any
		 * more, so it ended (after our DONE, or failed anyway). */
		if (fd == -EPROTO || fd == -EACCES || fd == -EBADMSG ||
		    atomic_load(&d->stopping))
			return RECV_STOP;
		now = pcopy_now_ns();
		if (now >= d->linger_until)
			break;
		left = (int)((d->linger_until - now) / 1000000) + 1;
		if (poll(&p, 1, left < (int)backoff ? left : (int)backoff) > 0)
			return RECV_STOP;	/* destroy */
		backoff = backoff * 2 > 1000 ? 1000 : backoff * 2;
	}
	pcopy_log(&d->log, PCOPY_LOG_WARN,
		  "complete, but the source did not confirm DONE within %d ms; it may still fail at its resume deadline",
		  d->handshake_timeout_ms);
	return RECV_STOP;
}

/* After a break: stop writers, shut both connections down, place what is
 * whole, drop the rest, then wait for a new main connection, the deadline
 * or destroy. Returns RECV_GO once resumed, else why to stop. */
static enum recv_end pause_and_wait(struct pcopy_dest *d)
{
	uint64_t t0 = pcopy_now_ns(), dl = 0, now;

	conns_unlink(d);
	atomic_store(&d->paused, 1);
	d->paused_ns = t0;
	DEST_STAT_ADD(d, breaks, 1);
	pthread_cond_broadcast(&d->rc_cond);
	pthread_mutex_unlock(&d->lock);

	drain_recvs(d);
	conn_drop(d, &d->conn[DEST_MAIN]);
	pcopy_log(&d->log, PCOPY_LOG_WARN,
		  "paused: %s; waiting for a new connection (%s%d ms)", d->break_why,
		  d->resume_deadline_ms < 0 ? "no deadline, " : "deadline ",
		  d->resume_deadline_ms < 0 ? 0 : d->resume_deadline_ms);
	if (d->resume_deadline_ms >= 0)
		dl = t0 + (uint64_t)d->resume_deadline_ms * 1000000ull;

	for (;;) {
		struct pollfd p[2] = {
			{ .fd = d->stop_efd, .events = POLLIN },
			{ .fd = d->recv_efd, .events = POLLIN },
		};
		int timeout = -1, main_fd;
		bool fin, failed;
		uint64_t v;

		pthread_mutex_lock(&d->lock);
		main_fd = d->handoff[DEST_MAIN];
		fin = d->finishing;
		failed = atomic_load(&d->failed);
		pthread_mutex_unlock(&d->lock);
		if (fin)
			/* completed (the missing pages were removed) or failed;
			 * the DONE of a completion while paused went nowhere */
			return failed ? RECV_PEER_FAIL :
			       dest_missing(d) == 0 ? RECV_BREAK : RECV_STOP;
		if (main_fd >= 0) {
			take_handoffs(d);
			pcopy_log(&d->log, PCOPY_LOG_INFO, "resumed after %" PRIu64 " ms paused",
				  (pcopy_now_ns() - t0) / 1000000);
			return RECV_GO;
		}
		now = pcopy_now_ns();
		if (dl && now >= dl) {
			dest_fail(d, -ETIMEDOUT,
				  "no new connection to the source within %d ms after a break (%s); %" PRIu64 " host pages missing",
				  d->resume_deadline_ms, d->break_why, dest_missing(d));
			return RECV_PEER_FAIL;
		}
		if (dl)
			timeout = (int)((dl - now) / 1000000) + 1;
		if (poll(p, 2, timeout) < 0 && errno != EINTR)
			return RECV_PEER_FAIL;
		if (p[0].revents)
			return RECV_STOP;
		if (p[1].revents && read(d->recv_efd, &v, sizeof(v)) < 0) {
			/* EAGAIN: someone else consumed it; we re-check anyway */
		}
	}
}

/* PING a connection nothing was sent on for a third of the keepalive.
 * Never blocks on wlock: whoever holds it is sending anyway. */
static void maybe_ping(struct pcopy_dest *d, unsigned i, uint64_t now)
{
	struct wire_hdr h = { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_PING };
	uint64_t third = (uint64_t)d->keepalive_ms * 1000000ull / 3;

	if (now - atomic_load_explicit(&d->last_tx_ns[i], memory_order_relaxed) < third)
		return;
	if (pthread_mutex_trylock(&d->wlock) != 0)
		return;
	if (d->wfd[i] >= 0 && !(i == DEST_URGENT && d->urg_wpart) &&
	    conn_send_msg(d->wfd[i], &h, NULL, 0) == 0)
		atomic_store_explicit(&d->last_tx_ns[i], now, memory_order_relaxed);
	pthread_mutex_unlock(&d->wlock);
}

/* Keepalive: silence longer than keepalive_ms is a break. Returns the
 * poll timeout (ms) until the next keepalive duty, via *timeout. The urgent
 * connection's last receive comes from the fault thread (urgent_rx_ns). */
static enum recv_end keepalive(struct pcopy_dest *d, int *timeout)
{
	uint64_t ka = (uint64_t)d->keepalive_ms * 1000000ull, now = pcopy_now_ns();
	uint64_t next = UINT64_MAX;
	unsigned i;

	for (i = 0; i < DEST_NCONN; i++) {
		uint64_t t, rx;

		if (i == DEST_MAIN) {
			if (d->conn[i].fd < 0)
				continue;
			rx = d->conn[i].last_rx_ns;
		} else {
			rx = atomic_load_explicit(&d->urgent_rx_ns, memory_order_relaxed);
			if (!rx)
				continue;
		}
		/* rx may be a moment newer than now (urgent: another thread) */
		if (now > rx && now - rx > ka)
			return dest_break(d, -ETIMEDOUT,
					  "nothing from the source on the %s connection for %" PRIu64 " ms (keepalive %d ms)",
					  i == DEST_URGENT ? "urgent" : "main",
					  (now - rx) / 1000000, d->keepalive_ms);
		maybe_ping(d, i, now);
		t = rx + ka;
		if (t < next)
			next = t;
		t = atomic_load_explicit(&d->last_tx_ns[i], memory_order_relaxed) + ka / 3;
		if (t < next)
			next = t;
	}
	*timeout = next == UINT64_MAX ? -1 :
		   next <= now ? 1 : (int)((next - now) / 1000000) + 1;
	return RECV_GO;
}

/* Reap every completion; parse what arrived. */
static enum recv_end reap(struct pcopy_dest *d)
{
	struct io_uring_cqe *cqe;
	enum recv_end e = RECV_GO;

	while (e == RECV_GO && io_uring_peek_cqe(&d->ring, &cqe) == 0) {
		uint64_t tag = io_uring_cqe_get_data64(cqe);
		int res = cqe->res;
		struct dest_conn *c;

		io_uring_cqe_seen(&d->ring, cqe);
		if (tag != TAG_RECV + DEST_MAIN)
			continue;
		c = &d->conn[DEST_MAIN];
		c->queued = false;
		if (res == -EINTR || res == -EAGAIN)
			continue;
		if (res <= 0) {
			e = conn_ended(d, c, res);
			break;
		}
		DEST_STAT_ADD(d, bytes_wire, (uint64_t)res);
		c->tail += (size_t)res;
		c->last_rx_ns = pcopy_now_ns();
		e = asm_parse(d, c);
	}
	return e;
}

/*
 * Complete: wait for the source's echo of DONE (section 8) on the main
 * connection, at most handshake_timeout_ms, and only if there is any point
 * (RESUME negotiated). Returns false when the receiver should stop; else
 * true with *ms = the time left. Receiver thread.
 */
static bool linger_check(struct pcopy_dest *d, int *ms)
{
	uint64_t now = pcopy_now_ns();

	if (d->done_acked || (d->flags & PCOPY_DEST_NO_RESUME) ||
	    !(d->features & PCOPY_FEAT_RESUME) || d->conn[DEST_MAIN].fd < 0)
		return false;
	if (!d->linger_until)
		d->linger_until = now + (uint64_t)d->handshake_timeout_ms * 1000000ull;
	if (now >= d->linger_until) {
		pcopy_log(&d->log, PCOPY_LOG_WARN,
			  "complete, but no DONE from the source within %d ms",
			  d->handshake_timeout_ms);
		return false;
	}
	*ms = (int)((d->linger_until - now) / 1000000) + 1;
	return true;
}

static enum recv_end recv_loop(struct pcopy_dest *d)
{
	struct dest_conn *m = &d->conn[DEST_MAIN];
	enum recv_end e = RECV_GO;
	int rc, timeout = -1, linger_ms = -1;

	for (;;) {
		struct pollfd p[3] = {
			{ .fd = d->ring.ring_fd, .events = POLLIN },
			{ .fd = d->stop_efd, .events = POLLIN },
			{ .fd = d->recv_efd, .events = POLLIN },
		};

		if (e == RECV_GO) {
			e = urg_collect(d);
			if (e == RECV_BREAK && dest_missing(d) == 0) {
				/* The urgent connection broke, but the restore
				 * completed meanwhile: nothing to resume for,
				 * and the main one waits for the DONE echo. */
				urg_unlink(d);
				e = RECV_GO;
			}
		}
		/* Failed on another thread (the fault thread placing urgent
		 * answers): end, tell the source, deliver on_event. */
		if (e == RECV_GO && atomic_load(&d->failed))
			e = RECV_FAIL;
		while (e == RECV_BREAK)
			e = dest_missing(d) == 0 ? linger_relink(d) : pause_and_wait(d);
		if (e != RECV_GO)
			return e;
		if (atomic_load(&d->done_sent) && !linger_check(d, &linger_ms))
			return RECV_STOP;
		if (m->fd >= 0 && !m->queued && queue_recv(d, m) < 0) {
			dest_fail(d, -EBUSY, "io_uring: no submission entry");
			return RECV_FAIL;
		}
		/* Submit without waiting: a blocking io_uring_enter would
		 * hold valgrind's big lock; poll() below does the waiting. */
		rc = io_uring_submit(&d->ring);
		if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
			dest_fail(d, rc, "io_uring_submit: %s", strerror(-rc));
			return RECV_FAIL;
		}
		e = reap(d);
		if (e != RECV_GO)
			continue;
		if (m->fd >= 0 && !m->queued)
			continue;	/* a recv completed inline: queue the next */
		e = keepalive(d, &timeout);
		if (e != RECV_GO)
			continue;
		if (linger_ms >= 0 && (timeout < 0 || linger_ms < timeout))
			timeout = linger_ms;
		if (io_uring_cq_ready(&d->ring))
			continue;
		if (poll(p, 3, timeout) < 0 && errno != EINTR) {
			dest_fail(d, -errno, "receiver: poll: %s", strerror(errno));
			return RECV_FAIL;
		}
		if (p[1].revents)
			return RECV_STOP;
		if (p[2].revents) {
			uint64_t v;

			if (read(d->recv_efd, &v, sizeof(v)) < 0) {
				/* EAGAIN: nothing to do */
			}
			take_handoffs(d);
		}
	}
}

/*
 * Thread body: from pcopy_dest_start until END after completion, a fatal
 * error, or destroy; pauses inside after breaks. On an error of ours tells
 * the source why (best effort). Returns NULL. Receiver thread.
 */
void *dest_recv_main(void *arg)
{
	struct pcopy_dest *d = arg;
	enum recv_end e;
	int err;

	(void)pthread_setname_np(pthread_self(), "pcopy-recv");	/* top -H, perf */
	dest_recv_live(d, true);
	e = recv_loop(d);

	if (e == RECV_FAIL) {
		err = pcopy_errslot_get(&d->err);
		pthread_mutex_lock(&d->wlock);
		if (err < 0 && d->wfd[DEST_MAIN] >= 0)
			conn_send_error(d->wfd[DEST_MAIN], -err, d->err.msg);
		pthread_mutex_unlock(&d->wlock);
	}
	/* Leave no recv in flight on buffers destroy will unmap. */
	if (d->conn[DEST_MAIN].queued && d->conn[DEST_MAIN].fd >= 0)
		shutdown(d->conn[DEST_MAIN].fd, SHUT_RDWR);
	drain_recvs(d);
	dest_recv_live(d, false);	/* a failure of the fault thread's */
	return NULL;
}
