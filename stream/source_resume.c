/* SPDX-License-Identifier: MIT */
/*
 * The source's side of a resume after a break: wait for the old
 * connection's threads to park or exit, read the destination's received
 * bitmap, mark everything else unsent again, queue the re-sent requests
 * ahead of the background, then let a new generation run. Also a restarted
 * source adopting the session its first (RESUME) connection names.
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

#include "source.h"


/*
 * Read the destination's RECV_BITMAP messages on fd into rec (one bitmap
 * per region) until they cover every region. Returns 0, or -errno with a
 * message (the peer has been told of a protocol error).
 */
static int read_bitmap(struct pcopy_source *s, int fd, uint8_t *buf,
		       uint64_t **rec, uint64_t deadline, char *msg,
		       size_t len)
{
	uint32_t next_region = 0;
	uint64_t next_page = 0;
	struct wire_hdr h;
	int err;

	for (;;) {
		msg[0] = '\0';
		err = conn_recv_msg(fd, &h, buf, PCOPY_WIRE_PAYLOAD_MAX,
				    deadline, s->stop_fd, msg, len);
		if (err) {
			char why[200];

			/* say what we were waiting for: a timeout or a cut
			 * reads the same anywhere else */
			snprintf(why, sizeof(why), "%s", msg[0] ? msg : strerror(-err));
			snprintf(msg, len, "resume: waiting for RECV_BITMAP: %s", why);
			break;
		}
		if (h.type == PCOPY_MSG_PING)
			continue;
		if (h.type != PCOPY_MSG_RECV_BITMAP) {
			snprintf(msg, len,
				 "resume: expected RECV_BITMAP, got message type %u",
				 h.type);
			err = -EPROTO;
			break;
		}
		err = wire_bitmap_apply(&h, buf, s->hello.regions, s->n,
					&next_region, &next_page, rec, msg,
					len);
		if (err < 0)
			break;
		if (err == 1)
			return 0;
	}
	if (err == -EPROTO || err == -EBADMSG)
		conn_send_error(fd, -err, msg);
	return err;
}

/*
 * unsent = NOT received, for every host page; count what goes out again.
 * Every sending thread is parked or gone, so plain stores are safe.
 */
static void apply_bitmap(struct pcopy_source *s, uint64_t *const *rec)
{
	uint64_t left = 0, resent = 0;
	unsigned i;

	for (i = 0; i < s->n; i++) {
		struct src_region *r = &s->reg[i];
		uint64_t nw = (r->npages + 63) / 64, w;

		for (w = 0; w < nw; w++) {
			uint64_t mask = ~UINT64_C(0), old, nu;

			if (w == nw - 1 && r->npages % 64)
				mask = (UINT64_C(1) << (r->npages % 64)) - 1;
			old = atomic_load(&r->unsent[w]);
			nu = ~rec[i][w] & mask;
			resent += (uint64_t)__builtin_popcountll(~old & nu);
			left += (uint64_t)__builtin_popcountll(nu);
			atomic_store(&r->unsent[w], nu);
		}
	}
	atomic_store(&s->pages_left, left);
	SRC_STAT_ADD(s, resent_pages, resent);
}

/*
 * Read what the destination sent right behind its bitmap (its re-sent
 * requests), so they are queued before the sender wakes: requests first.
 * Waits up to 2 ms for each message; the rest is the reader's.
 */
static void drain_requests(struct pcopy_source *s, uint64_t gen, int fd,
			   uint8_t *buf, struct wire_req *reqs,
			   uint64_t deadline)
{
	char msg[PCOPY_ERRMSG_MAX];
	struct wire_hdr h;
	unsigned k;
	int err;

	for (k = 0; k < 256 && src_live(s, gen); k++) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };

		if (poll(&pfd, 1, 2) <= 0 || !(pfd.revents & POLLIN))
			return;
		msg[0] = '\0';
		err = conn_recv_msg(fd, &h, buf, PCOPY_WIRE_PAYLOAD_MAX,
				    deadline, s->stop_fd, msg, sizeof(msg));
		if (err) {
			src_break(s, gen, err, err == -EPROTO || err == -EBADMSG,
				  "resume: reading the re-sent requests: %s",
				  msg[0] ? msg : strerror(-err));
			return;
		}
		atomic_store(&s->main.last_rx_ns, pcopy_now_ns());
		if (src_handle_msg(s, gen, fd, &h, buf, reqs))
			return;
	}
}

/*
 * Make fd (handshake done, kind RESUME) the main connection: pause now if
 * the break has not been seen here yet, wait for every thread of the old
 * connection to park or exit, read the bitmap, set unsent = NOT received,
 * queue the re-sent requests, then let the sender and a new reader go.
 * Takes ownership of fd. Returns 0 or -errno (still paused unless the
 * session ended). Caller's thread, with conn_lock.
 */
int src_resume(struct pcopy_source *s, int fd, char *msg, size_t len)
{
	uint64_t deadline = pcopy_now_ns() +
		(uint64_t)s->opts.handshake_timeout_ms * 1000000ull;
	uint64_t *rec[PCOPY_REGIONS_MAX] = { 0 };
	uint8_t *buf = malloc(PCOPY_WIRE_PAYLOAD_MAX);
	struct wire_req *reqs = malloc(PCOPY_REQ_MAX_ENTRIES * sizeof(*reqs));
	uint64_t gen;
	unsigned i;
	int err = 0;

	for (i = 0; i < s->n && buf && reqs; i++)
		if (!(rec[i] = calloc((s->reg[i].npages + 63) / 64, 8)))
			break;
	if (!buf || !reqs || i < s->n) {
		snprintf(msg, len, "resume: out of memory");
		err = -ENOMEM;
		goto fail;
	}
	pthread_mutex_lock(&s->lock);
	gen = s->gen;
	pthread_mutex_unlock(&s->lock);
	/* the destination saw a break we have not seen (yet) */
	src_break(s, gen, -ECONNRESET, false,
		  "the destination opened a resume connection");

	pthread_mutex_lock(&s->lock);
	while (s->state == SRC_PAUSED &&
	       (!s->sender_parked || s->main.live || s->urg.live))
		pthread_cond_wait(&s->cond, &s->lock);
	err = s->state == SRC_PAUSED ? 0 : -ESHUTDOWN;
	pthread_mutex_unlock(&s->lock);
	if (err) {
		snprintf(msg, len, "resume: the session is over");
		goto fail;
	}
	src_conn_reap(s, &s->main);
	src_conn_reap(s, &s->urg);

	err = read_bitmap(s, fd, buf, rec, deadline, msg, len);
	if (err)
		goto fail;
	src_queue_reset(&s->q);

	pthread_mutex_lock(&s->lock);
	if (s->state != SRC_PAUSED) {
		pthread_mutex_unlock(&s->lock);
		snprintf(msg, len, "resume: the session ended meanwhile");
		err = -ESHUTDOWN;
		goto fail;
	}
	apply_bitmap(s, rec);
	/* live for the drain, but the sender waits for `resuming` */
	s->resuming = true;
	s->state = SRC_RUNNING;
	gen = ++s->gen;
	s->main.fd = fd;
	s->main.gen = gen;
	atomic_store(&s->main.last_rx_ns, pcopy_now_ns());
	atomic_store(&s->live_gen, gen);
	pthread_mutex_unlock(&s->lock);
	fd = -1;

	drain_requests(s, gen, s->main.fd, buf, reqs, deadline);

	pthread_mutex_lock(&s->lock);
	s->resuming = false;
	if (src_live(s, gen)) {
		s->main.live = true;
		err = src_thread_start(&s->main.thread, src_reader_main, s);
		s->main.started = !err;
		s->main.live = !err;
	}
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	if (err)
		src_end(s, err, false, "cannot start the request reader: %s",
			strerror(-err));
	else
		pcopy_log(&s->lg, PCOPY_LOG_INFO,
			  "source: resumed (break %llu), %llu host pages to send again",
			  (unsigned long long)atomic_load(&s->st.breaks),
			  (unsigned long long)atomic_load(&s->pages_left));
fail:
	if (fd >= 0)
		close(fd);
	for (i = 0; i < s->n; i++)
		free(rec[i]);
	free(buf);
	free(reqs);
	return err;
}

/* ---- a restarted source adopting a session (PCOPY_SOURCE_ADOPT) ---- */

/* Largest HELLO looked at before the handshake: 64 regions of 63-byte
 * names fit (24 + 64 * 79 payload bytes); a bigger one is not adopted and
 * the handshake judges it. */
#define PEEK_MAX (PCOPY_WIRE_HDR_SIZE + 8192u)

/*
 * Wait until `want` bytes can be peeked at on fd (nothing consumed), or
 * the deadline. Returns 0, -ECONNRESET on EOF, -ETIMEDOUT or -errno. With
 * part of it there poll() would not wait, so then sleep, 1 ms at first and
 * doubling up to 64 ms: the destination's HELLO comes in one write and only
 * trickles through a proxy that splits writes, while a peer that sends one
 * byte and goes quiet must not wake us 1000 times a second.
 */
static int peek_exact(int fd, uint8_t *buf, size_t want, uint64_t deadline)
{
	long nap_ns = 1000000;

	for (;;) {
		ssize_t n = recv(fd, buf, want, MSG_PEEK | MSG_DONTWAIT);
		uint64_t now;

		if (n == (ssize_t)want)
			return 0;
		if (n == 0)
			return -ECONNRESET;
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
			return -errno;
		now = pcopy_now_ns();
		if (now >= deadline)
			return -ETIMEDOUT;
		if (n < 0) {
			struct pollfd p = { .fd = fd, .events = POLLIN };
			uint64_t ms = (deadline - now) / 1000000 + 1;

			(void)poll(&p, 1, ms > 1000 ? 1000 : (int)ms);
		} else {
			struct timespec ts = { 0, nap_ns };

			nanosleep(&ts, NULL);
			if (nap_ns < 64000000)
				nap_ns *= 2;
		}
	}
}

/*
 * Look at the destination's first HELLO on fd without consuming it. If it
 * is a RESUME of a session (non-zero id) whose region table equals ours,
 * return 1 with *sid: the caller adopts it and runs the handshake as for
 * any RESUME. If the tables differ, read the HELLO, send the destination an
 * ERROR saying which region differs, and return -EPROTO with the same
 * message. Anything else (a MAIN connection, a HELLO too malformed to
 * judge here, EOF, a silent peer) returns 0: the handshake reads it and
 * reports. Caller's thread (pcopy_source_start).
 */
int src_adopt_check(struct pcopy_source *s, int fd, uint64_t deadline,
		    uint64_t *sid, char *msg, size_t len)
{
	uint8_t *buf = malloc(PEEK_MAX);
	struct wire_hello *peer = malloc(sizeof(*peer));
	char why[PCOPY_ERRMSG_MAX];
	struct wire_hdr h;
	int ret = 0;

	if (!buf || !peer)
		goto out;
	if (peek_exact(fd, buf, PCOPY_WIRE_HDR_SIZE, deadline) ||
	    wire_hdr_decode(buf, &h, why, sizeof(why)) ||
	    h.type != PCOPY_MSG_HELLO ||
	    h.length > PEEK_MAX - PCOPY_WIRE_HDR_SIZE ||
	    peek_exact(fd, buf, PCOPY_WIRE_HDR_SIZE + h.length, deadline) ||
	    wire_crc_check(buf, &h, buf + PCOPY_WIRE_HDR_SIZE, why,
			   sizeof(why)) ||
	    wire_hello_decode(buf + PCOPY_WIRE_HDR_SIZE, h.length, peer, why,
			      sizeof(why)) ||
	    peer->role != PCOPY_ROLE_DEST ||
	    peer->conn_kind != PCOPY_CONN_RESUME || peer->session_id == 0)
		goto out;
	*sid = peer->session_id;
	if (wire_hello_compare(&s->hello, peer, why, sizeof(why)) == 0) {
		ret = 1;
		goto out;
	}
	/* Refuse it ourselves, naming the difference: consume the HELLO
	 * first, so closing does not reset the connection under our ERROR. */
	snprintf(msg, len,
		 "restarted source cannot adopt session %016" PRIx64
		 ": its image differs (%s; 'here' is the source)",
		 *sid, why);
	if (conn_read_exact(fd, buf, PCOPY_WIRE_HDR_SIZE + h.length, deadline,
			    -1) == 0)
		conn_send_error(fd, EPROTO, msg);
	ret = -EPROTO;
out:
	free(buf);
	free(peer);
	return ret;
}

/*
 * Adopt the session whose RESUME handshake just succeeded on fd: the
 * session starts paused, as if the connection had broken, with the sender
 * parked; then the resume runs as for any break (bitmap, unsent = NOT
 * received, pending requests first). Takes ownership of fd. Returns 0 once
 * adopted, even if that first resume broke off (the session then waits
 * for the next one until the resume deadline, as after any break), or
 * -errno if the sender cannot start. Caller's thread (pcopy_source_start),
 * tx/rtx allocated, before any other thread of the session exists.
 */
int src_adopt(struct pcopy_source *s, int fd)
{
	char msg[PCOPY_ERRMSG_MAX] = "";
	int err;

	pthread_mutex_lock(&s->lock);
	s->main.fd = -1;		/* src_resume takes fd over */
	s->state = SRC_PAUSED;
	s->gen = 0;
	atomic_store(&s->live_gen, 0);
	s->t_pause = pcopy_now_ns();
	snprintf(s->break_msg, sizeof(s->break_msg),
		 "restarted source adopting session %016" PRIx64,
		 s->hello.session_id);
	pthread_mutex_unlock(&s->lock);

	err = src_thread_start(&s->sender, src_sender_main, s);
	if (err) {
		close(fd);
		src_end(s, err, false, "cannot start the sender: %s",
			strerror(-err));
		return err;
	}
	s->sender_started = true;
	pthread_mutex_lock(&s->conn_lock);
	err = src_resume(s, fd, msg, sizeof(msg));
	pthread_mutex_unlock(&s->conn_lock);
	if (!err) {
		pcopy_log(&s->lg, PCOPY_LOG_INFO,
			  "source: adopted session %016" PRIx64 " of a previous source",
			  s->hello.session_id);
		return 0;
	}
	pthread_mutex_lock(&s->lock);
	if (s->state == SRC_PAUSED)
		snprintf(s->break_msg, sizeof(s->break_msg),
			 "restarted source adopting session %016" PRIx64
			 ": its first resume failed: %s", s->hello.session_id,
			 msg[0] ? msg : strerror(-err));
	pthread_mutex_unlock(&s->lock);
	pcopy_log(&s->lg, PCOPY_LOG_WARN,
		  "adopting session %016" PRIx64 ": first resume failed (%s); paused, waiting for the destination to resume",
		  s->hello.session_id, msg[0] ? msg : strerror(-err));
	return 0;
}
