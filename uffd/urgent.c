/* SPDX-License-Identifier: MIT */
/*
 * The urgent connection, read by the fault thread: it sent the request, so
 * it also receives and places the answer, which saves a hand-off to the
 * receiver (a cross-vCPU wake-up) on every fault. Breaks go to the receiver,
 * which pauses and resumes both connections as before.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"

/*
 * Ownership: once taken from handoff[DEST_URGENT], conn[DEST_URGENT] (fd,
 * buffers, assembly) belongs to the fault thread alone. The receiver unlinks
 * the connection on a pause (wfd[DEST_URGENT] = -1, under lock and wlock,
 * after shutting it down) and kicks the fault thread, which then places the
 * whole pages it holds and closes the fd. Nobody else closes it before
 * destroy joined the threads.
 */

static void urg_close(struct pcopy_dest *d, struct dest_conn *c)
{
	/* Whole, checked host pages: keep them (not after a failure: the
	 * restore is over, and placing could meet the same error). */
	if (c->run.n && !atomic_load(&d->failed))
		place_run(d, c);
	asm_reset(c);
	close(c->fd);
	c->fd = -1;
	c->dead = false;
	c->head = c->tail = 0;
	c->need = PCOPY_WIRE_HDR_SIZE;
	atomic_store_explicit(&d->urgent_rx_ns, 0, memory_order_relaxed);
}

/* Take a handed-in urgent connection, close one the receiver unlinked.
 * Fault thread. */
void urg_sync(struct pcopy_dest *d)
{
	struct dest_conn *c = &d->conn[DEST_URGENT];
	bool unlinked;
	int nfd = -1;

	pthread_mutex_lock(&d->lock);
	/* wfd[DEST_URGENT] changes only under both locks: d->lock suffices
	 * to read it. A new fd never equals c->fd while c->fd is open. */
	unlinked = c->fd >= 0 && d->wfd[DEST_URGENT] != c->fd;
	if ((c->fd < 0 || unlinked) && d->handoff[DEST_URGENT] >= 0) {
		nfd = d->handoff[DEST_URGENT];
		d->handoff[DEST_URGENT] = -1;
	}
	pthread_mutex_unlock(&d->lock);
	if (unlinked)
		urg_close(d, c);
	if (nfd < 0)
		return;
	asm_reset(c);
	c->fd = nfd;
	c->dead = false;
	c->head = c->tail = 0;
	c->need = PCOPY_WIRE_HDR_SIZE;
	c->last_rx_ns = pcopy_now_ns();
	atomic_store_explicit(&d->urgent_rx_ns, c->last_rx_ns, memory_order_relaxed);
}

/* Returns the fd to poll, or -1. Fault thread. */
int urg_fd(const struct pcopy_dest *d)
{
	const struct dest_conn *c = &d->conn[DEST_URGENT];

	return c->dead || atomic_load_explicit(&d->failed, memory_order_relaxed) ?
	       -1 : c->fd;
}

/* The restore is complete and the urgent connection ended (or misbehaved):
 * it is of no use any more; take it from the writers and close it. */
static void urg_retire(struct pcopy_dest *d, struct dest_conn *c)
{
	pthread_mutex_lock(&d->lock);
	pthread_mutex_lock(&d->wlock);
	if (d->wfd[DEST_URGENT] == c->fd)
		d->wfd[DEST_URGENT] = -1;
	pthread_mutex_unlock(&d->wlock);
	pthread_mutex_unlock(&d->lock);
	shutdown(c->fd, SHUT_RDWR);
	urg_close(d, c);
}

/*
 * The connection broke (e: RECV_BREAK with c->why, RECV_FAIL after
 * dest_fail, RECV_PEER_FAIL): stop reading it and hand the rest to the
 * receiver, which pauses (and unlinks it) or ends. Unless it was unlinked
 * already: then the receiver is pausing for its own reason.
 */
static void urg_broke(struct pcopy_dest *d, struct dest_conn *c, enum recv_end e)
{
	c->dead = true;
	shutdown(c->fd, SHUT_RDWR);	/* the source sees it at once */
	pthread_mutex_lock(&d->lock);
	if (d->wfd[DEST_URGENT] == c->fd &&
	    atomic_load_explicit(&d->urgent_end, memory_order_relaxed) == RECV_GO) {
		if (e == RECV_BREAK)
			memcpy(d->urgent_why, c->why, sizeof(d->urgent_why));
		atomic_store_explicit(&d->urgent_end, (int)e, memory_order_release);
	}
	pthread_mutex_unlock(&d->lock);
	dest_kick(d->recv_efd);
}

static void urg_end(struct pcopy_dest *d, struct dest_conn *c, enum recv_end e)
{
	if (e == RECV_STOP)
		urg_retire(d, c);	/* complete */
	else
		urg_broke(d, c, e);
}

/* recv() returned 0 (EOF) or -errno. */
static enum recv_end urg_ended(struct pcopy_dest *d, struct dest_conn *c, int res)
{
	bool mid = c->tail != c->head || c->cur.active;

	if (dest_missing(d) == 0)
		return RECV_STOP;
	if (res == 0 || res == -ECONNRESET || res == -EPIPE)
		return dest_conn_break(d, c, -ECONNRESET,
				       "urgent connection closed by source with %" PRIu64 " host pages missing%s",
				       dest_missing(d),
				       mid ? " (in the middle of a message)" : "");
	return dest_conn_break(d, c, res,
			       "receiving from the source (urgent connection): %s (%" PRIu64 " host pages missing)",
			       strerror(-res), dest_missing(d));
}

/*
 * Read what is there (never waits), cut it into messages, place the pages
 * (hp_complete places urgent pages at once, which wakes their faults).
 * Fault thread, when poll() says the urgent fd is ready.
 */
void urg_input(struct pcopy_dest *d)
{
	struct dest_conn *c = &d->conn[DEST_URGENT];
	enum recv_end e = RECV_GO;
	bool complete = dest_missing(d) == 0;

	while (c->fd >= 0 && !c->dead) {
		size_t want;
		ssize_t n;

		dest_conn_compact(c);
		want = c->rcap - c->tail;
		n = recv(c->fd, c->rbuf + c->tail, want, MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		if (n <= 0) {
			e = urg_ended(d, c, n < 0 ? -errno : 0);
			break;
		}
		DEST_STAT_ADD(d, bytes_wire, (uint64_t)n);
		c->tail += (size_t)n;
		c->last_rx_ns = pcopy_now_ns();
		atomic_store_explicit(&d->urgent_rx_ns, c->last_rx_ns,
				      memory_order_relaxed);
		e = asm_parse(d, c);
		if (e != RECV_GO || (size_t)n < want)
			break;	/* a short read: the socket is empty */
	}
	if (e != RECV_GO)
		urg_end(d, c, e);
	/* This thread placed the last page: the receiver may be asleep on a
	 * quiet main connection; it has completion work (linger, DONE). */
	if (!complete && dest_missing(d) == 0)
		dest_kick(d->recv_efd);
}

/* Returns what the fault thread asked for, RECV_GO if nothing; with
 * RECV_BREAK, break_why holds its reason. Receiver thread. */
enum recv_end urg_collect(struct pcopy_dest *d)
{
	enum recv_end e;

	if (atomic_load_explicit(&d->urgent_end, memory_order_acquire) == RECV_GO)
		return RECV_GO;
	pthread_mutex_lock(&d->lock);
	e = (enum recv_end)atomic_exchange(&d->urgent_end, RECV_GO);
	if (e == RECV_BREAK)
		memcpy(d->break_why, d->urgent_why, sizeof(d->break_why));
	pthread_mutex_unlock(&d->lock);
	return e;
}
