/* SPDX-License-Identifier: MIT */
/*
 * New connections after start: the urgent connection, and resuming after a
 * break (RESUME handshake, the received bitmap, the pending requests again),
 * by the caller or by the reconnect thread through opts.connect.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define BITMAP_MSG_BYTES (64u << 10)	/* 512 Ki host pages per RECV_BITMAP */
#define RESEND_BATCH 1024u

/* Our HELLO for a connection of this kind. A connection that joins the
 * session offers only what the session negotiated: a restarted source
 * that adopts it then cannot turn on what this session never had (zlib
 * from a source that did not offer it). Any thread. */
void dest_hello_for(const struct pcopy_dest *d, uint32_t kind, struct wire_hello *h)
{
	*h = d->hello;
	h->conn_kind = kind;
	h->session_id = kind == PCOPY_CONN_MAIN ? 0 : d->session_id;
	if (kind != PCOPY_CONN_MAIN)
		h->features &= d->features;
}

/* Remember why a resume attempt failed, for the message if the pause
 * ends at the deadline. A connection that could not even be made does not
 * hide why a source that was reached refused. Any thread, without lock. */
static void note_resume_failure(struct pcopy_dest *d, bool reached,
				const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void note_resume_failure(struct pcopy_dest *d, bool reached,
				const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&d->lock);
	/* Only while paused: a connect that failed after another resume
	 * succeeded must not leave its reason for the next pause. */
	if (atomic_load(&d->paused) && (reached || !d->resume_why[0])) {
		va_start(ap, fmt);
		vsnprintf(d->resume_why, sizeof(d->resume_why), fmt, ap);
		va_end(ap);
	}
	pthread_mutex_unlock(&d->lock);
}

/* Blocking mode, a send timeout (a peer that stops reading cannot hold our
 * locks forever), the handshake. Returns 0 or -errno with err filled. */
static int conn_open(struct pcopy_dest *d, int fd, uint32_t kind, char *err,
		     size_t errlen)
{
	struct conn_hs_params hp = { .psk = d->psk_len ? d->psk : NULL,
				     .psk_len = d->psk_len,
				     .timeout_ms = d->handshake_timeout_ms };
	struct timeval tv = { .tv_sec = d->handshake_timeout_ms / 1000,
			      .tv_usec = (d->handshake_timeout_ms % 1000) * 1000 };
	struct wire_hello ours, peer;
	uint32_t feat = 0;
	int fl, rc;

	fl = fcntl(fd, F_GETFL);
	if (fl >= 0 && (fl & O_NONBLOCK))
		fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	dest_hello_for(d, kind, &ours);
	err[0] = 0;
	rc = conn_handshake2(fd, &ours, &peer, &feat, &hp, err, errlen);
	if (rc < 0) {
		if (!err[0])
			snprintf(err, errlen, "%s", strerror(-rc));
		return rc;
	}
	if (peer.session_id != d->session_id) {
		snprintf(err, errlen, "the source answered with session %016" PRIx64
			 ", ours is %016" PRIx64, peer.session_id, d->session_id);
		return -EPROTO;
	}
	if (peer.conn_kind != kind) {
		snprintf(err, errlen, "the source answered conn_kind %u, we asked for %u",
			 peer.conn_kind, kind);
		return -EPROTO;
	}
	return 0;
}

/* RECV_BITMAP messages covering every region, in order. The bits are read
 * atomically into a plain copy (the fault thread may set removed pages
 * meanwhile; a page it adds later is only sent twice). */
static int send_bitmaps(struct pcopy_dest *d, int fd)
{
	uint8_t *buf = malloc(BITMAP_MSG_BYTES);
	uint64_t *bits = NULL;
	unsigned i;
	int rc = 0;

	if (!buf)
		return -ENOMEM;
	for (i = 0; i < d->nreg && !rc; i++) {
		struct dest_region *r = &d->reg[i];
		uint64_t w, nw = (r->npages + 63) / 64, first = 0;

		free(bits);
		bits = malloc(nw * sizeof(*bits));
		if (!bits) {
			rc = -ENOMEM;
			break;
		}
		for (w = 0; w < nw; w++)
			bits[w] = atomic_load_explicit(&r->received.w[w],
						       memory_order_acquire);
		while (first < r->npages) {
			struct wire_hdr h = { .magic = PCOPY_WIRE_MAGIC };
			int len = wire_bitmap_encode(i, bits, r->npages, first, &h,
						     buf, BITMAP_MSG_BYTES);

			if (len < 0 || h.count == 0) {
				rc = len < 0 ? len : -EINVAL;
				break;
			}
			h.magic = PCOPY_WIRE_MAGIC;
			h.type = PCOPY_MSG_RECV_BITMAP;
			h.region = i;
			h.offset = first;
			h.length = (uint32_t)len;
			rc = conn_send_msg(fd, &h, buf, (size_t)len);
			if (rc < 0)
				break;
			first += h.count;
		}
	}
	free(bits);
	free(buf);
	return rc;
}

/* REQ for every requested host page not received. Called with wlock held,
 * so the fault thread's next request goes out after these. Returns host
 * pages re-requested or -errno. */
static int64_t send_pending(struct pcopy_dest *d, int fd)
{
	struct wire_req *req = malloc(RESEND_BATCH * sizeof(*req));
	uint8_t *buf = malloc(RESEND_BATCH * PCOPY_REQ_ENTRY_SIZE);
	int64_t total = 0;
	unsigned i, n = 0;
	int rc = 0;

	if (!req || !buf) {
		free(req);
		free(buf);
		return -ENOMEM;
	}
	for (i = 0; i < d->nreg && !rc; i++) {
		struct dest_region *r = &d->reg[i];
		uint64_t hp = 0;

		while (!rc && (hp = dbm_find(&r->requested, hp, true)) < r->npages) {
			if (!dbm_test(&r->received, hp)) {
				req[n++] = (struct wire_req){
					.region = i,
					.count = (uint32_t)(r->page_size / PCOPY_TARGET_PAGE),
					.offset = hp << r->shift,
				};
				total++;
			}
			hp++;
			if (n == RESEND_BATCH) {
				struct wire_hdr h = { .magic = PCOPY_WIRE_MAGIC,
						      .type = PCOPY_MSG_REQ, .count = n,
						      .length = n * PCOPY_REQ_ENTRY_SIZE };

				wire_req_encode(req, n, buf);
				rc = conn_send_msg(fd, &h, buf, h.length);
				n = 0;
			}
		}
	}
	if (!rc && n) {
		struct wire_hdr h = { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_REQ,
				      .count = n, .length = n * PCOPY_REQ_ENTRY_SIZE };

		wire_req_encode(req, n, buf);
		rc = conn_send_msg(fd, &h, buf, h.length);
	}
	free(req);
	free(buf);
	return rc < 0 ? rc : total;
}

/* The error to give a caller whose session is over. Under d->lock. */
static int ended_rc(struct pcopy_dest *d)
{
	return d->done && d->result < 0 ? d->result : -EALREADY;
}

static int resume_locked(struct pcopy_dest *d, int fd)
{
	char err[PCOPY_ERRMSG_MAX];
	int64_t resent;
	int rc;

	pthread_mutex_lock(&d->lock);
	rc = d->finishing ? ended_rc(d) :
	     !atomic_load(&d->paused) || d->handoff[DEST_MAIN] >= 0 ? -EALREADY : 0;
	pthread_mutex_unlock(&d->lock);
	if (rc < 0)
		goto out_close;
	rc = conn_open(d, fd, PCOPY_CONN_RESUME, err, sizeof(err));
	if (rc < 0) {
		pcopy_log(&d->log, PCOPY_LOG_WARN, "resume handshake: %s", err);
		note_resume_failure(d, true, "resume handshake: %s", err);
		goto out_close;
	}
	rc = send_bitmaps(d, fd);
	if (rc < 0) {
		pcopy_log(&d->log, PCOPY_LOG_WARN, "resume: sending the received bitmap: %s",
			  strerror(-rc));
		note_resume_failure(d, true, "sending the received bitmap: %s",
				    strerror(-rc));
		goto out_close;
	}
	/* Atomic with respect to the fault thread: a request it records
	 * before we hold wlock is in the scan, one after goes to this fd. */
	pthread_mutex_lock(&d->lock);
	pthread_mutex_lock(&d->wlock);
	if (d->finishing || !atomic_load(&d->paused)) {
		rc = d->finishing ? ended_rc(d) : -EALREADY;
		pthread_mutex_unlock(&d->wlock);
		pthread_mutex_unlock(&d->lock);
		goto out_close;
	}
	resent = send_pending(d, fd);
	if (resent < 0) {
		rc = (int)resent;
		pthread_mutex_unlock(&d->wlock);
		pthread_mutex_unlock(&d->lock);
		pcopy_log(&d->log, PCOPY_LOG_WARN, "resume: re-sending requests: %s",
			  strerror(-rc));
		note_resume_failure(d, true, "re-sending requests: %s",
				    strerror(-rc));
		goto out_close;
	}
	DEST_STAT_ADD(d, resent_pages, (uint64_t)resent);
	d->resume_why[0] = '\0';	/* the next pause starts afresh */
	d->wfd[DEST_MAIN] = fd;
	atomic_store(&d->last_tx_ns[DEST_MAIN], pcopy_now_ns());
	d->handoff[DEST_MAIN] = fd;
	atomic_store(&d->paused, 0);
	pthread_mutex_unlock(&d->wlock);
	pthread_mutex_unlock(&d->lock);
	dest_kick(d->recv_efd);
	pcopy_log(&d->log, PCOPY_LOG_INFO,
		  "resume: bitmap sent, %" PRId64 " pending host pages requested again",
		  resent);
	return 0;
out_close:
	close(fd);
	return rc;
}

/*
 * Resume on fd with the (full) received bitmap and DONE right after it.
 * Returns fd, or -errno (the peer's errno if it refused; fd closed).
 */
static int relink_on(struct pcopy_dest *d, int fd)
{
	struct wire_hdr h = { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_DONE };
	char err[PCOPY_ERRMSG_MAX];
	int rc;

	rc = conn_open(d, fd, PCOPY_CONN_RESUME, err, sizeof(err));
	if (rc < 0) {
		pcopy_log(&d->log, PCOPY_LOG_INFO, "re-sending DONE: resume handshake: %s",
			  err);
		goto out_close;
	}
	rc = send_bitmaps(d, fd);
	if (!rc)
		rc = conn_send_msg(fd, &h, NULL, 0);
	if (rc < 0) {
		pcopy_log(&d->log, PCOPY_LOG_INFO, "re-sending DONE: %s", strerror(-rc));
		goto out_close;
	}
	return fd;
out_close:
	close(fd);
	return rc;
}

/*
 * Every page is in, DONE went out, but the main connection broke before
 * the source echoed it: the source may never have seen DONE and would wait
 * out its resume deadline, then fail. Resume once more with the (full)
 * received bitmap and send DONE again. Returns the new main fd, or -errno
 * (the fd is closed). Receiver thread, only with opts.connect.
 */
int dest_relink(struct pcopy_dest *d)
{
	int fd = d->connect(d->connect_opaque, 0);

	return fd < 0 ? fd : relink_on(d, fd);
}

/*
 * pcopy_dest_resume after completion: tell the source DONE again on fd
 * (relink_on) and wait, up to the handshake timeout, for its echo. Returns
 * 0 once the source confirmed, -EALREADY if it had ended its session
 * already (it heard DONE before), or -errno. Closes fd. Caller's thread.
 */
static int confirm_done(struct pcopy_dest *d, int fd)
{
	uint64_t dl = pcopy_now_ns() + (uint64_t)d->handshake_timeout_ms * 1000000ull;
	char err[PCOPY_ERRMSG_MAX] = "";
	int rc, type = 0;
	socklen_t tl = sizeof(type);
	uint8_t *buf;
	struct wire_hdr h;

	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) < 0 ||
	    type != SOCK_STREAM) {
		close(fd);
		return -ENOTSOCK;
	}
	fd = relink_on(d, fd);
	if (fd < 0)
		return fd == -ESHUTDOWN ? -EALREADY : fd;
	buf = malloc(PCOPY_WIRE_PAYLOAD_MAX);
	rc = buf ? 1 : -ENOMEM;
	/* END and PING may come first; no PAGE: every bit was set */
	while (rc == 1) {
		rc = conn_recv_msg(fd, &h, buf, PCOPY_WIRE_PAYLOAD_MAX, dl, d->stop_efd,
				   err, sizeof(err));
		if (rc == 0 && h.type == PCOPY_MSG_DONE)
			break;
		if (rc == 0 && h.type == PCOPY_MSG_ERROR) {
			char why[256];
			int e = 0;

			rc = wire_error_decode(buf, h.length, &e, why, sizeof(why));
			snprintf(err, sizeof(err), "source refused: %s",
				 rc == 0 ? why : "(undecodable ERROR)");
			if (e < 0)
				e = -e;
			rc = rc == 0 && e > 0 && e < 4096 ? -e : -EPROTO;
			break;
		}
		if (rc == 0 && h.type != PCOPY_MSG_END && h.type != PCOPY_MSG_PING) {
			snprintf(err, sizeof(err), "message type %u instead of the DONE echo",
				 h.type);
			rc = -EPROTO;
		}
		if (rc == 0)
			rc = 1;
	}
	free(buf);
	close(fd);
	if (rc < 0)
		pcopy_log(&d->log, PCOPY_LOG_WARN, "confirming DONE: %s",
			  err[0] ? err : strerror(-rc));
	else
		pcopy_log(&d->log, PCOPY_LOG_INFO, "the source confirmed DONE");
	return rc;
}

/* Returns 0, -EALREADY if not paused, or -errno; the restore stays paused
 * after an error. After completion: make sure the source heard DONE
 * (confirm_done). Caller's thread (or the reconnect thread). */
int pcopy_dest_resume(struct pcopy_dest *d, int fd)
{
	bool complete;
	int rc;

	if (!d || fd < 0) {
		if (fd >= 0)
			close(fd);
		return -EINVAL;
	}
	if (!d->started) {
		close(fd);
		return -EALREADY;
	}
	if ((d->flags & PCOPY_DEST_NO_RESUME) || !(d->features & PCOPY_FEAT_RESUME)) {
		close(fd);
		return -EOPNOTSUPP;
	}
	pthread_mutex_lock(&d->lock);
	complete = d->done && d->result == 0;
	pthread_mutex_unlock(&d->lock);
	if (complete)
		return confirm_done(d, fd);
	pthread_mutex_lock(&d->resume_lock);
	rc = resume_locked(d, fd);
	pthread_mutex_unlock(&d->resume_lock);
	return rc;
}

/* Returns 0 or -errno (-EOPNOTSUPP: the source offers none; -ENOTCONN:
 * paused, resume first). Caller's thread (or the reconnect thread). */
int pcopy_dest_add_urgent(struct pcopy_dest *d, int fd)
{
	char err[PCOPY_ERRMSG_MAX];
	int rc, one = 1;

	if (!d || fd < 0) {
		if (fd >= 0)
			close(fd);
		return -EINVAL;
	}
	if (!d->started || !(d->features & PCOPY_FEAT_URGENT)) {
		close(fd);
		return d->started ? -EOPNOTSUPP : -EALREADY;
	}
	pthread_mutex_lock(&d->resume_lock);
	pthread_mutex_lock(&d->lock);
	rc = d->finishing ? ended_rc(d) : atomic_load(&d->paused) ? -ENOTCONN :
	     d->wfd[DEST_URGENT] >= 0 ? -EALREADY : 0;
	pthread_mutex_unlock(&d->lock);
	if (rc < 0)
		goto out_close;
	rc = conn_open(d, fd, PCOPY_CONN_URGENT, err, sizeof(err));
	if (rc < 0) {
		pcopy_log(&d->log, PCOPY_LOG_WARN, "urgent connection handshake: %s", err);
		goto out_close;
	}
	/* Small REQs out at once (no Nagle); fails harmlessly on Unix sockets. */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	pthread_mutex_lock(&d->lock);
	pthread_mutex_lock(&d->wlock);
	rc = d->finishing ? ended_rc(d) : atomic_load(&d->paused) ? -ENOTCONN : 0;
	if (!rc) {
		d->wfd[DEST_URGENT] = fd;
		d->handoff[DEST_URGENT] = fd;
		atomic_store(&d->last_tx_ns[DEST_URGENT], pcopy_now_ns());
		d->had_urgent = true;
	}
	pthread_mutex_unlock(&d->wlock);
	pthread_mutex_unlock(&d->lock);
	if (rc < 0)
		goto out_close;
	pthread_mutex_unlock(&d->resume_lock);
	/* The fault thread reads the urgent connection (urgent.c). */
	dest_kick(d->kick_efd);
	pcopy_log(&d->log, PCOPY_LOG_INFO, "urgent connection added");
	return 0;
out_close:
	pthread_mutex_unlock(&d->resume_lock);
	close(fd);
	return rc;
}

/* 1 while paused, else 0. Any thread. */
int pcopy_dest_paused(struct pcopy_dest *d)
{
	return d ? atomic_load(&d->paused) : 0;
}

/* Sleep ms on rc_cond (destroy and failure wake it). Under d->lock. */
static void rc_sleep(struct pcopy_dest *d, unsigned ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_cond_timedwait(&d->rc_cond, &d->lock, &ts);
}

static bool rc_wanted(struct pcopy_dest *d)
{
	return !atomic_load(&d->stopping) && !d->finishing &&
	       atomic_load(&d->paused) && d->handoff[DEST_MAIN] < 0;
}

/*
 * Thread body (only with opts.connect): after each break, connect and
 * resume with exponential backoff 10 ms .. 1 s until it works, the receiver
 * gives up at the deadline, or destroy; then re-add the urgent connection
 * if there was one. Returns NULL. Reconnect thread.
 */
void *dest_reconnect_main(void *arg)
{
	struct pcopy_dest *d = arg;

	(void)pthread_setname_np(pthread_self(), "pcopy-reconnect");	/* top -H, perf */
	pthread_mutex_lock(&d->lock);
	while (!atomic_load(&d->stopping)) {
		unsigned backoff = 10, attempt = 0;
		bool resumed = false, urgent;
		int fd, rc;

		if (!rc_wanted(d)) {
			pthread_cond_wait(&d->rc_cond, &d->lock);
			continue;
		}
		while (rc_wanted(d)) {
			pthread_mutex_unlock(&d->lock);
			attempt++;
			fd = d->connect(d->connect_opaque, 0);
			rc = fd >= 0 ? pcopy_dest_resume(d, fd) : fd;
			if (fd < 0)
				note_resume_failure(d, false, "connect: %s",
						    strerror(-fd));
			if (rc == 0) {
				resumed = true;
				pthread_mutex_lock(&d->lock);
				break;
			}
			pcopy_log(&d->log, PCOPY_LOG_INFO,
				  "reconnect attempt %u: %s; next in %u ms", attempt,
				  strerror(rc < 0 ? -rc : EINVAL), backoff);
			pthread_mutex_lock(&d->lock);
			if (rc_wanted(d))
				rc_sleep(d, backoff);
			backoff = backoff * 2 > 1000 ? 1000 : backoff * 2;
		}
		urgent = d->had_urgent;
		if (!resumed || !urgent)
			continue;
		pthread_mutex_unlock(&d->lock);
		fd = d->connect(d->connect_opaque, 1);
		rc = fd >= 0 ? pcopy_dest_add_urgent(d, fd) : fd;
		if (rc < 0)
			pcopy_log(&d->log, PCOPY_LOG_WARN,
				  "reconnecting the urgent connection: %s (requests use the main one)",
				  strerror(-rc));
		pthread_mutex_lock(&d->lock);
	}
	pthread_mutex_unlock(&d->lock);
	return NULL;
}
