/* SPDX-License-Identifier: MIT */
/*
 * The source's frame gatherer: many sealed frames, one sendmsg (a 4 KiB page
 * per system call costs half the sender's time), and the token bucket that
 * enforces max_rate_bps by sleeping, never spinning.
 */
#include <errno.h>
#include <linux/sockios.h>
#include <linux/tcp.h>		/* tcpi_bytes_acked (not in glibc's) */
#include <netinet/in.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>

#include "source.h"

#define TP PCOPY_TARGET_PAGE
#define HDRS (SRC_TX_IOV / 2)

/* Background bytes a TCP socket may hold unsent (the kernel wakes a full
 * writer below this). Measured on loopback with 1 GiB: 32, 64 and 128 KiB
 * give the same throughput, 512 KiB and more less. */
#ifndef NOTSENT_LOWAT
#define NOTSENT_LOWAT (64 << 10)
#endif
/* ... and while a paced destination is quiet (see QUEUE_QUIET_NS): then the
 * pacing alone bounds what is queued. */
#define NOTSENT_LOWAT_QUIET (4 << 20)
/* Send buffer of a Unix main connection (the kernel doubles it): a fault's
 * first page comes on the urgent connection, the rest of its cluster from
 * the background stream, behind what that socket holds. Measured with 512
 * MiB over a Unix socket: 64 KiB keeps the throughput of the default
 * (~208 KiB) and serves the hot set faster; 32 KiB halves the throughput.
 * Again, 4 pairs (pcopy-bench -m 512 --link unix -r floor,lib -o none,hot):
 * 256 KiB restores ~12% faster with no toucher (median 2.25 vs 2.0 GB/s)
 * but serves the hot set 1.45x slower (0.097 vs 0.067 s). */
#ifndef UNIX_SNDBUF	/* -DUNIX_SNDBUF=N builds a comparison */
#define UNIX_SNDBUF (64 << 10)
#endif
/* Link time of background data allowed queued in front of a requested page
 * on a TCP path (socket + bottleneck queue), on top of one round trip's
 * worth: requests and the background share that queue whatever connection
 * they use. */
#ifndef QUEUE_NS
#define QUEUE_NS 200000.0
#endif
/* The same while the destination has asked for nothing for REQ_QUIET_NS (an
 * idle guest, or the hot set served): nobody waits behind the queue then,
 * and a 200 us queue leaves a fast link idle between two wake-ups of the
 * sender on a busy machine. Measured on the 10 Gbit/s shaped veth, 1 GiB, no
 * toucher: 1.07-1.09 s with 200 us and a 64 KiB NOTSENT_LOWAT, 0.81 s with
 * 1 ms and 4 MiB, 0.78-0.79 s with 4 ms and 4 MiB; the first request after
 * a quiet spell waits behind at most this much. */
#ifndef QUEUE_QUIET_NS
#define QUEUE_QUIET_NS 1000000.0
#endif
#define REQ_QUIET_NS (50u * 1000000u)
/* Background bytes per batch and per write in a quiet spell, if the batch
 * is smaller: a fast path then takes a quarter of the writes. Measured on
 * the 10 Gbit/s shaped veth, 1 GiB, no toucher: 0.80-0.82 s with 64 KiB,
 * 0.68 s with 256 KiB, which as the batch of a faulting destination also
 * served the hot set 1.3x slower. */
#define QUIET_BATCH (256u << 10)
#define QUEUE_MIN (16u << 10)	/* bytes: never throttle below this */
#define RATE_WINDOW_NS 4000000ull
#define WAIT_MIN_NS 20000ull	/* shortest sleep worth a wake-up */
#define WAIT_MAX_NS 5000000ull

/* Is the peer on this host (127.0.0.0/8, ::1, or ::ffff:127.x)? Loopback
 * has no bottleneck queue for a request to wait in, only socket buffers
 * (TCP_NOTSENT_LOWAT bounds those), so pacing would only cost throughput:
 * measured over tcp loopback, 1 GiB, no toucher, 0.94 GB/s paced against
 * 2.29 GB/s unpaced (bench/run.sh, lib vs lib_nopace). */
static bool peer_is_loopback(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	if (getpeername(fd, (struct sockaddr *)&ss, &len) < 0)
		return false;
	if (ss.ss_family == AF_INET) {
		const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;

		return (ntohl(a->sin_addr.s_addr) >> 24) == 127;
	}
	if (ss.ss_family == AF_INET6) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)&ss)->sin6_addr;

		return IN6_IS_ADDR_LOOPBACK(a) ||
		       (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
	}
	return false;
}

/*
 * Options of a connection the source writes to, each best effort (older
 * kernels refuse some). Main connection: a bound on unsent bytes and, unless
 * PCOPY_SOURCE_NO_PACING, BBR (it paces at the path's rate instead of
 * filling its queue), or on a Unix socket a smaller send buffer. Urgent
 * connection: no Nagle (its congestion control is left alone: cubic instead
 * of BBR there made no difference on the 1 Gbit/s shaped veth). Returns whether fd is
 * TCP with pacing on (src_tx_room then bounds the background). Sender
 * thread, or the caller's thread (add_conn).
 */
bool src_sockopts(struct pcopy_source *s, int fd, bool urgent)
{
	bool pace = !(s->opts.flags & PCOPY_SOURCE_NO_PACING);
	int one = 1, lowat = NOTSENT_LOWAT, sndbuf = UNIX_SNDBUF;
	struct tcp_info ti;
	socklen_t len = sizeof(ti);

	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0) {
		/* not TCP (a Unix socket): bound what the background holds
		 * in the socket instead */
		if (!urgent && pace)
			(void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf,
					 sizeof(sndbuf));
		return false;
	}
	if (urgent) {
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one,
				 sizeof(one));
		return true;
	}
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat,
			 sizeof(lowat));
	if (pace && !s->pace_loopback && peer_is_loopback(fd))
		return false;
	if (pace)
		(void)setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, "bbr", 3);
	return pace;
}

/*
 * Bytes that the paced path carries in QUEUE_NS (what a burst on the urgent
 * connection may add to the queue a request waits in); QUEUE_MIN while a
 * paced connection has no measurement (its first 4 ms, or for good without
 * a background stream, which is what measures it); SIZE_MAX when the main
 * connection is not paced (Unix socket, loopback). Urgent thread.
 */
size_t src_link_budget(struct pcopy_source *s)
{
	uint64_t rate = atomic_load_explicit(&s->link_rate,
					     memory_order_relaxed);

	if (rate)
		return (size_t)((double)rate * QUEUE_NS * 1e-9);
	return atomic_load_explicit(&s->main_paced, memory_order_relaxed) ?
	       QUEUE_MIN : SIZE_MAX;
}

/* Has the destination asked for nothing for REQ_QUIET_NS? req_ns is also
 * set when a connection starts: a restore starts with faults. */
static bool requests_quiet(struct pcopy_source *s, uint64_t now)
{
	uint64_t last = atomic_load_explicit(&s->req_ns, memory_order_relaxed);

	return now > last && now - last >= REQ_QUIET_NS;
}

/* Follow the destination into or out of a quiet spell: the unsent bound of
 * the socket goes with the queue the pacing allows. Sender thread. */
static void follow_quiet(struct src_tx *tx, uint64_t now)
{
	bool quiet = requests_quiet(tx->s, now);
	int lowat = quiet ? NOTSENT_LOWAT_QUIET : NOTSENT_LOWAT;

	if (quiet == tx->quiet)
		return;
	(void)setsockopt(tx->fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat,
			 sizeof(lowat));
	tx->quiet = quiet;
}

/* The batch of a quiet spell: the batch, at least QUIET_BATCH. */
static size_t quiet_batch(const struct pcopy_source *s)
{
	return s->batch < QUIET_BATCH ? QUIET_BATCH : s->batch;
}

/* Background bytes the sender gathers before it looks at the path again:
 * the batch, or quiet_batch in a quiet spell. Sender thread. */
size_t src_tx_batch(const struct src_tx *tx)
{
	return tx->quiet ? quiet_batch(tx->s) : tx->s->batch;
}

/*
 * How many more background bytes the main connection may take now: at most
 * QUEUE_NS (QUEUE_QUIET_NS in a quiet spell) of the delivery rate plus two
 * round trips' worth (BBR's in-flight) may sit unacknowledged or unsent,
 * because a requested page, on either connection, queues behind them at
 * the bottleneck. Returns the room, SIZE_MAX when there is no limit (not
 * TCP, no estimate yet), or 0 with *wait_ns: how long until about half the
 * limit has drained. Sender thread.
 */
size_t src_tx_room(struct src_tx *tx, uint64_t *wait_ns)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);
	double lim, rtt_ns, wait, sample;
	uint64_t now;
	int outq;

	*wait_ns = 0;
	if (!tx->paced)
		return SIZE_MAX;
	memset(&ti, 0, sizeof(ti));
	if (getsockopt(tx->fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0 ||
	    len < offsetof(struct tcp_info, tcpi_min_rtt) +
		  sizeof(ti.tcpi_min_rtt) ||
	    ioctl(tx->fd, SIOCOUTQ, &outq) < 0)
		return SIZE_MAX;
	/* The rate over windows of RATE_WINDOW_NS: the kernel's per-ACK
	 * samples overshoot several times after a token-bucket shaper's
	 * burst. Up at once, down slowly (a window may have been idle). */
	now = pcopy_now_ns();
	if (!tx->rate_t) {
		tx->rate_t = now;
		tx->rate_acked = ti.tcpi_bytes_acked;
	} else if (now - tx->rate_t >= RATE_WINDOW_NS) {
		sample = (double)(ti.tcpi_bytes_acked - tx->rate_acked) /
			 (double)(now - tx->rate_t);
		if (sample > tx->bw)
			tx->bw = sample;
		else
			tx->bw += (sample - tx->bw) / 8;
		tx->rate_t = now;
		tx->rate_acked = ti.tcpi_bytes_acked;
	}
	if (tx->bw <= 0.0)
		return SIZE_MAX;
	follow_quiet(tx, now);	/* with a rate: the pacing bounds the queue */
	atomic_store_explicit(&tx->s->link_rate, (uint64_t)(tx->bw * 1e9),
			      memory_order_relaxed);
	rtt_ns = (double)ti.tcpi_min_rtt * 1e3;
	lim = tx->bw * ((tx->quiet ? QUEUE_QUIET_NS : QUEUE_NS) + 2.0 * rtt_ns);
	if (lim < QUEUE_MIN)
		lim = QUEUE_MIN;
	/* The receiver acknowledges every second full segment, else after
	 * its delayed-ACK timer (40 ms): waiting with less than that in
	 * flight stalls (on loopback a segment is 64 KiB). */
	if (lim < 4.0 * ti.tcpi_snd_mss)
		lim = 4.0 * ti.tcpi_snd_mss;
	if ((double)outq < lim)
		return (size_t)(lim - (double)outq);
	wait = ((double)outq - lim / 2) / tx->bw;
	*wait_ns = wait < WAIT_MIN_NS ? WAIT_MIN_NS :
		   wait > WAIT_MAX_NS ? WAIT_MAX_NS : (uint64_t)wait;
	return 0;
}

/* Wire bytes per write for batches of batch bytes: clamped, and a rate cap
 * also caps a burst (one flush never exceeds the bucket). */
static size_t write_limit(const struct pcopy_source *s, size_t batch)
{
	size_t l = batch < SRC_TX_MIN ? SRC_TX_MIN :
		   batch > SRC_TX_MAX ? SRC_TX_MAX : batch;

	if (s->opts.max_rate_bps && s->burst < (double)l)
		l = s->burst < 2.0 * TP ? 2 * TP : (size_t)s->burst;
	return l;
}

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
	tx->limit_busy = write_limit(s, s->batch);
	tx->limit_quiet = write_limit(s, quiet_batch(s));
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
	if (tx->bytes >= (tx->quiet ? tx->limit_quiet : tx->limit_busy))
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
