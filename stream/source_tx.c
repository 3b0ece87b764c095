/* SPDX-License-Identifier: MIT */
/*
 * The source's frame gatherer: many sealed frames, one sendmsg (a 4 KiB page
 * per system call costs half the sender's time), and the token bucket that
 * enforces max_rate_bps by sleeping, never spinning.
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "source.h"

#define TP PCOPY_TARGET_PAGE
#define HDRS (SRC_TX_IOV / 2)

/*
 * A gatherer for one sending thread (urgent: the urgent connection's).
 * Returns 0 and *out, or -ENOMEM. Caller's thread (start / add_conn).
 */
int src_tx_new(struct pcopy_source *s, bool urgent, struct src_tx **out)
{
	struct src_tx *tx = calloc(1, sizeof(*tx));
	int err = -ENOMEM;

	*out = NULL;
	if (!tx)
		return -ENOMEM;
	tx->s = s;
	tx->fd = -1;
	tx->urgent = urgent;
	/* one write per batch: 64 KiB by default, as fast as 256 KiB on
	 * loopback, and a request waits behind less of it */
	tx->limit = s->batch < SRC_TX_MIN ? SRC_TX_MIN :
		    s->batch > SRC_TX_MAX ? SRC_TX_MAX : s->batch;
	/* a rate cap also caps a burst: one flush never exceeds the bucket */
	if (s->opts.max_rate_bps && s->burst < (double)tx->limit)
		tx->limit = s->burst < 2.0 * TP ? 2 * TP : (size_t)s->burst;
	tx->iov = calloc(SRC_TX_IOV, sizeof(*tx->iov));
	tx->hdr = calloc(HDRS, PCOPY_WIRE_HDR_SIZE);
	tx->arena = malloc(SRC_TX_ARENA);
	tx->zbuf = malloc(TP);
	if (!tx->iov || !tx->hdr || !tx->arena || !tx->zbuf)
		goto fail;
	err = src_window_init(&tx->win, s->any_file ? s->batch : 0,
			      &s->file_bytes_read);
	if (err)
		goto fail;
	if (s->features & PCOPY_FEAT_ZLIB) {
		err = codec_zlib_new(&tx->zlib, true, s->opts.zlib_level);
		if (err)
			goto fail;
	}
	*out = tx;
	return 0;
fail:
	src_tx_free(tx);
	return err;
}

/* Free a gatherer (NULL is fine). Its owner, or destroy. */
void src_tx_free(struct src_tx *tx)
{
	if (!tx)
		return;
	if (tx->zlib)
		codec_zlib_free(tx->zlib);
	src_window_fini(&tx->win);
	free(tx->iov);
	free(tx->hdr);
	free(tx->arena);
	free(tx->zbuf);
	free(tx);
}

/* Forget everything gathered (the connection broke). Owner thread. */
void src_tx_drop(struct src_tx *tx)
{
	tx->niov = 0;
	tx->nhdr = 0;
	tx->bytes = 0;
	tx->arena_used = 0;
	tx->host_pages = 0;
	tx->payload = 0;
	memset(tx->pages, 0, sizeof(tx->pages));
}

/*
 * sendmsg all of iov[0..cnt) (modified in place), counting bytes_wire as
 * the kernel takes them, so the stats show progress while a slow peer
 * holds a large write: non-blocking sends, and poll for POLLOUT when the
 * socket is full (a shutdown on a break wakes the poll).
 */
static int send_all(struct pcopy_source *s, int fd, struct iovec *iov,
		    unsigned cnt)
{
	struct msghdr mh;
	ssize_t n;

	while (cnt) {
		memset(&mh, 0, sizeof(mh));
		mh.msg_iov = iov;
		mh.msg_iovlen = cnt;
		n = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0) {
			struct pollfd pfd = { .fd = fd, .events = POLLOUT };

			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				return -errno;
			if (poll(&pfd, 1, -1) < 0 && errno != EINTR)
				return -errno;
			continue;
		}
		SRC_STAT_ADD(s, bytes_wire, (uint64_t)n);
		while (cnt && (size_t)n >= iov->iov_len) {
			n -= (ssize_t)iov->iov_len;
			iov++;
			cnt--;
		}
		if (cnt) {
			iov->iov_base = (uint8_t *)iov->iov_base + n;
			iov->iov_len -= (size_t)n;
		}
	}
	return 0;
}

/*
 * Send everything gathered in one sendmsg (more only when the socket takes
 * it in pieces), then count it. With a rate cap the background sender sleeps
 * here first; the urgent one runs into debt instead, which the background
 * then pays. Returns 0 or -errno (-EPIPE, -ECONNRESET, -ECANCELED when the
 * connection's generation ended while waiting). Owner thread.
 */
int src_tx_flush(struct src_tx *tx)
{
	struct pcopy_source *s = tx->s;
	int err;

	if (!tx->niov)
		return 0;
	if (s->opts.max_rate_bps) {
		if (tx->urgent) {
			src_rate_debt(s, tx->bytes);
		} else {
			err = src_rate_wait(s, tx->gen, tx->bytes);
			if (err)
				return err;
		}
	}
	err = send_all(s, tx->fd, tx->iov, tx->niov);
	if (err)
		return err;
	/* counted before END can go out, so the stats are final by the time
	 * the destination can answer DONE */
	SRC_STAT_ADD(s, bytes_payload, tx->payload);
	SRC_STAT_ADD(s, pages_zero, tx->pages[PCOPY_KIND_ZERO]);
	SRC_STAT_ADD(s, pages_raw, tx->pages[PCOPY_KIND_RAW]);
	SRC_STAT_ADD(s, pages_zlib, tx->pages[PCOPY_KIND_ZLIB]);
	tx->last_tx_ns = pcopy_now_ns();
	tx->flushes++;
	src_tx_drop(tx);
	return 0;
}

/*
 * Gather one PAGE frame; the payload (may be NULL) is not copied and must
 * stay valid until the next flush. Flushes first when the iovec array is
 * full and after when the batch is. Returns 0 or -errno. Owner thread.
 */
int src_tx_frame(struct src_tx *tx, uint8_t kind, unsigned ri, size_t off,
		 uint32_t count, const void *payload, size_t len)
{
	struct wire_hdr h;
	uint8_t *hb;
	int err;

	if (tx->nhdr == HDRS || tx->niov + 2 > SRC_TX_IOV) {
		err = src_tx_flush(tx);
		if (err)
			return err;
	}
	memset(&h, 0, sizeof(h));
	h.magic = PCOPY_WIRE_MAGIC;
	h.type = PCOPY_MSG_PAGE;
	h.kind = kind;
	h.region = ri;
	h.count = count;
	h.offset = off;
	h.length = (uint32_t)len;
	hb = tx->hdr[tx->nhdr++];
	wire_hdr_seal(hb, &h, payload, len);
	tx->iov[tx->niov].iov_base = hb;
	tx->iov[tx->niov++].iov_len = PCOPY_WIRE_HDR_SIZE;
	if (len) {
		tx->iov[tx->niov].iov_base = (void *)(uintptr_t)payload;
		tx->iov[tx->niov++].iov_len = len;
	}
	tx->bytes += PCOPY_WIRE_HDR_SIZE + len;
	tx->pages[kind] += count;
	tx->payload += (uint64_t)count * TP;
	if (tx->bytes >= tx->limit)
		return src_tx_flush(tx);
	return 0;
}

/*
 * Room for `need` bytes of zlib output that lives until the next flush
 * (flushing first when the arena is full). Returns the pointer, or NULL with
 * *err set. Owner thread.
 */
uint8_t *src_tx_arena(struct src_tx *tx, size_t need, int *err)
{
	uint8_t *p;

	if (tx->arena_used + need > SRC_TX_ARENA) {
		*err = src_tx_flush(tx);
		if (*err)
			return NULL;
	}
	p = tx->arena + tx->arena_used;
	tx->arena_used += need;
	*err = 0;
	return p;
}

/* Flush, then send one payload-less message (END, PING). Returns 0 or
 * -errno. Owner thread. */
int src_tx_simple(struct src_tx *tx, uint8_t type)
{
	struct wire_hdr h;
	int err = src_tx_flush(tx);

	if (err)
		return err;
	memset(&h, 0, sizeof(h));
	h.type = type;
	/* Counted first: after END the destination may answer DONE, and the
	 * caller read the stats, before conn_send_msg even returns here. */
	SRC_STAT_ADD(tx->s, bytes_wire, PCOPY_WIRE_HDR_SIZE);
	err = conn_send_msg(tx->fd, &h, NULL, 0);
	if (err)
		atomic_fetch_sub_explicit(&tx->s->st.bytes_wire,
					  PCOPY_WIRE_HDR_SIZE,
					  memory_order_relaxed);
	else
		tx->last_tx_ns = pcopy_now_ns();
	return err;
}

/* ---- token bucket ---- */

/* Set up the bucket: full, holding 20 ms of the rate (at least 16 KiB).
 * Caller's thread (create). */
void src_rate_init(struct pcopy_source *s)
{
	double rate = (double)s->opts.max_rate_bps;

	pthread_mutex_init(&s->rate_lock, NULL);
	s->burst = rate / 50.0;
	if (s->burst < 16384.0)
		s->burst = 16384.0;
	s->tokens = s->burst;
	s->rate_t = pcopy_now_ns();
}

/* Add the tokens earned since the last refill. Called with rate_lock. */
static void rate_refill(struct pcopy_source *s)
{
	uint64_t now = pcopy_now_ns();

	s->tokens += (double)(now - s->rate_t) * 1e-9 *
		     (double)s->opts.max_rate_bps;
	if (s->tokens > s->burst)
		s->tokens = s->burst;
	s->rate_t = now;
}

/* The urgent sender takes bytes without waiting; the debt delays the
 * background. Urgent thread. */
void src_rate_debt(struct pcopy_source *s, size_t bytes)
{
	pthread_mutex_lock(&s->rate_lock);
	rate_refill(s);
	s->tokens -= (double)bytes;
	pthread_mutex_unlock(&s->rate_lock);
}

/*
 * Take `bytes` from the bucket, then sleep (on the handle's condvar, so a
 * break or the end of the session cuts it short) until the balance is no
 * longer negative. Returns 0, or -ECANCELED once generation gen is not live.
 * Sender thread.
 */
int src_rate_wait(struct pcopy_source *s, uint64_t gen, size_t bytes)
{
	double debt;
	uint64_t until;
	struct timespec ts;

	pthread_mutex_lock(&s->rate_lock);
	rate_refill(s);
	s->tokens -= (double)bytes;
	debt = s->tokens < 0 ? -s->tokens : 0;
	pthread_mutex_unlock(&s->rate_lock);
	if (debt <= 0)
		return 0;
	until = pcopy_now_ns() +
		(uint64_t)(debt * 1e9 / (double)s->opts.max_rate_bps);
	ts.tv_sec = (time_t)(until / 1000000000ull);
	ts.tv_nsec = (long)(until % 1000000000ull);
	pthread_mutex_lock(&s->lock);
	while (src_live(s, gen) && pcopy_now_ns() < until)
		if (pthread_cond_timedwait(&s->cond, &s->lock, &ts) == ETIMEDOUT)
			break;
	pthread_mutex_unlock(&s->lock);
	return src_live(s, gen) ? 0 : -ECANCELED;
}
