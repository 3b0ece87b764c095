/* SPDX-License-Identifier: MIT */
/*
 * The urgent connection, read by the fault thread: it sent the request, so
 * it also receives and places the answer, which saves a hand-off to the
 * receiver (a cross-vCPU wake-up) on every fault. Breaks go to the receiver,
 * which pauses and resumes both connections as before.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
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
	if (c->run.n && !atomic_load(&d->failed)) {
		/* A placement may send REQs (on_again): no reading into the
		 * staging area it places from. */
		c->in_input = true;
		place_run(d, c);
		c->in_input = false;
	}
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
	/* Complete. A failure recorded now (the other placer's last page
	 * ended the restore under us) came after it and changed nothing:
	 * the receiver must go on waiting for the DONE echo. */
	if (e == RECV_STOP || (e == RECV_FAIL && dest_missing(d) == 0))
		urg_retire(d, c);
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

	if (c->in_input)
		return;	/* urg_send from a placement of ours: no recursion */
	c->in_input = true;
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
	c->in_input = false;
	if (e != RECV_GO)
		urg_end(d, c, e);
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

/* Wait for room on the urgent socket, or for answers to read. */
static int urg_wait(struct pcopy_dest *d, int fd, bool read_too)
{
	struct pollfd p[2] = {
		{ .fd = fd, .events = POLLOUT | (read_too ? POLLIN : 0) },
		{ .fd = d->stop_efd, .events = POLLIN },
	};

	if (poll(p, 2, 1000) < 0 && errno != EINTR)
		return -errno;
	if (p[1].revents)
		return -ECANCELED;
	if ((p[0].revents & POLLIN) && read_too)
		urg_input(d);
	return 0;
}

/*
 * Send a REQ on the urgent connection without ever blocking on it: this
 * thread is its only reader, and if it slept in a write while the source
 * slept writing answers to us, both would wait for SO_SNDTIMEO. While the
 * socket is full it reads and places answers (not when called from inside
 * urg_input: then it only waits for room). Falls back to dest_send when the
 * urgent connection is not this thread's (none: MAIN; handed in, not taken
 * yet). Returns 0 or -errno (-ENOTCONN: gone meanwhile). Fault thread.
 */
int urg_send(struct pcopy_dest *d, struct wire_hdr *h, const void *p, size_t len)
{
	struct dest_conn *c = &d->conn[DEST_URGENT];
	uint8_t hb[PCOPY_WIRE_HDR_SIZE];
	size_t total = sizeof(hb) + len, off = 0;
	int fd = c->fd, rc = 0;

	if (len > PCOPY_WIRE_PAYLOAD_MAX)
		return -EMSGSIZE;
	pthread_mutex_lock(&d->wlock);
	if (fd < 0 || c->dead || d->wfd[DEST_URGENT] != fd) {
		/* broke, not unlinked yet: the receiver is pausing */
		bool broken = fd >= 0 && c->dead && d->wfd[DEST_URGENT] == fd;

		pthread_mutex_unlock(&d->wlock);
		return broken ? -ENOTCONN : dest_send(d, DEST_URGENT, h, p, len);
	}
	h->magic = PCOPY_WIRE_MAGIC;
	h->length = (uint32_t)len;
	wire_hdr_seal(hb, h, p, len);
	while (off < total) {
		struct iovec iov[2];
		struct msghdr mh = { .msg_iov = iov };
		ssize_t n;

		if (off < sizeof(hb)) {
			iov[0] = (struct iovec){ hb + off, sizeof(hb) - off };
			iov[1] = (struct iovec){ (void *)(uintptr_t)p, len };
			mh.msg_iovlen = len ? 2 : 1;
		} else {
			iov[0] = (struct iovec){ (uint8_t *)(uintptr_t)p + (off - sizeof(hb)),
						 total - off };
			mh.msg_iovlen = 1;
		}
		n = sendmsg(fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n > 0) {
			off += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
			rc = n < 0 ? -errno : -EPIPE;
			shutdown(fd, SHUT_RDWR);	/* the receiver pauses */
			break;
		}
		/* Full. A message begun must not be interleaved with a PING:
		 * urg_wpart tells the receiver to leave the socket alone. */
		d->urg_wpart = off > 0;
		pthread_mutex_unlock(&d->wlock);
		rc = urg_wait(d, fd, !c->in_input);
		pthread_mutex_lock(&d->wlock);
		d->urg_wpart = false;
		if (rc == 0 && (c->fd != fd || c->dead || d->wfd[DEST_URGENT] != fd))
			rc = -ENOTCONN;	/* broke or unlinked meanwhile */
		if (rc < 0) {
			if (off && d->wfd[DEST_URGENT] == fd && c->fd == fd)
				shutdown(fd, SHUT_RDWR);	/* half a message */
			break;
		}
	}
	if (!rc)
		atomic_store_explicit(&d->last_tx_ns[DEST_URGENT], pcopy_now_ns(),
				      memory_order_relaxed);
	pthread_mutex_unlock(&d->wlock);
	return rc;
}
