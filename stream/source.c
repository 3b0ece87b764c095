/* SPDX-License-Identifier: MIT */
/*
 * The SOURCE handle: create / start / wait / stats / destroy, the end of a
 * session and its pauses (breaks); connections are in source_conn.c, the
 * sender in source_send.c.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "source.h"

/* Background bytes a TCP socket may hold unsent: a requested page waits
 * behind at most this much (ignored on Unix sockets). Measured on loopback
 * with 1 GiB: 32, 64 and 128 KiB give the same throughput, 512 KiB and more
 * less; smaller means less waiting for a request on the main connection. */
#define SRC_NOTSENT_LOWAT (64 << 10)

/* Fill `o` with defaults. Any thread. */
void pcopy_source_opts_init(struct pcopy_source_opts *o)
{
	if (!o)
		return;
	memset(o, 0, sizeof(*o));
	o->size = sizeof(*o);
}

/* Copy the caller's options over the defaults; older (smaller) structs are
 * fine, unknown bigger ones are not. */
static int opts_copy(struct pcopy_source_opts *dst,
		     const struct pcopy_source_opts *o)
{
	pcopy_source_opts_init(dst);
	if (!o)
		return 0;
	if (o->size < sizeof(size_t) || o->size > sizeof(*dst))
		return -EINVAL;
	memcpy(dst, o, o->size);
	dst->size = sizeof(*dst);
	return 0;
}

static bool is_pow2(size_t x)
{
	return x && !(x & (x - 1));
}

/* Check one region; log why it is wrong. Returns 0 or -EINVAL. */
static int region_check(const struct pcopy_logger *lg, unsigned i,
			const struct pcopy_source_region *r)
{
	const char *nm = r->name ? r->name : "(null)";
	size_t nlen;
	struct stat st;

	if (!r->name || (nlen = strlen(r->name)) == 0 || nlen > PCOPY_NAME_MAX) {
		pcopy_log(lg, PCOPY_LOG_ERROR,
			  "source region %u: name must be 1..%d bytes", i,
			  PCOPY_NAME_MAX);
		return -EINVAL;
	}
	if (!is_pow2(r->page_size) || r->page_size < PCOPY_TARGET_PAGE ||
	    r->page_size > PCOPY_HOST_PAGE_MAX) {
		pcopy_log(lg, PCOPY_LOG_ERROR,
			  "source region %u '%s': page_size %zu is not a power of two in 4096..%u",
			  i, nm, r->page_size, PCOPY_HOST_PAGE_MAX);
		return -EINVAL;
	}
	if (!r->length || r->length % r->page_size ||
	    r->length > (size_t)INT64_MAX) {
		pcopy_log(lg, PCOPY_LOG_ERROR,
			  "source region %u '%s': length %zu is not a non-zero multiple of page_size %zu",
			  i, nm, r->length, r->page_size);
		return -EINVAL;
	}
	if ((r->mem != NULL) == (r->fd >= 0)) {
		pcopy_log(lg, PCOPY_LOG_ERROR,
			  "source region %u '%s': set exactly one of mem (with fd = -1) or fd (with mem = NULL)",
			  i, nm);
		return -EINVAL;
	}
	if (r->mem)
		return 0;
	if (r->file_offset < 0 ||
	    (uint64_t)r->file_offset > (uint64_t)INT64_MAX - r->length) {
		pcopy_log(lg, PCOPY_LOG_ERROR,
			  "source region %u '%s': bad file_offset %lld",
			  i, nm, (long long)r->file_offset);
		return -EINVAL;
	}
	if (fstat(r->fd, &st) < 0 || !(S_ISREG(st.st_mode) || S_ISBLK(st.st_mode))) {
		pcopy_log(lg, PCOPY_LOG_ERROR,
			  "source region %u '%s': fd %d is not a regular file or block device",
			  i, nm, r->fd);
		return -EINVAL;
	}
	return 0;
}

static void source_free(struct pcopy_source *s)
{
	unsigned i;

	for (i = 0; i < s->n; i++)
		free(s->reg[i].unsent);
	src_queue_fini(&s->q);
	src_tx_free(s->tx);
	src_tx_free(s->rtx);
	if (s->main.fd >= 0)
		close(s->main.fd);
	if (s->urg.fd >= 0)
		close(s->urg.fd);
	if (s->stop_fd >= 0)
		close(s->stop_fd);
	if (s->psk) {
		explicit_bzero(s->psk, s->opts.psk_len);
		free(s->psk);
	}
	pcopy_errslot_destroy(&s->es);
	pthread_cond_destroy(&s->cond);
	pthread_mutex_destroy(&s->lock);
	pthread_mutex_destroy(&s->conn_lock);
	pthread_mutex_destroy(&s->rate_lock);
	free(s);
}

/*
 * Create a source over n regions (nothing is read yet). Returns 0 and sets
 * *sp, or -EINVAL (bad argument, logged) / -ENOMEM. Caller's thread.
 */
int pcopy_source_create(struct pcopy_source **sp,
			const struct pcopy_source_region *regions, unsigned n,
			const struct pcopy_source_opts *opts)
{
	struct pcopy_source_opts o;
	struct pcopy_logger lg = { NULL, NULL };
	struct pcopy_source *s;
	pthread_condattr_t ca;
	bool any_file = false;
	uint64_t total = 0;
	unsigned i;
	int err;

	if (sp)
		*sp = NULL;
	if (opts_copy(&o, opts))
		return -EINVAL;	/* no trustworthy logger either */
	lg.fn = o.log;
	lg.opaque = o.log_opaque;
	if (!sp || !regions || n == 0 || n > PCOPY_REGIONS_MAX) {
		pcopy_log(&lg, PCOPY_LOG_ERROR,
			  "pcopy_source_create: need a handle pointer and 1..%d regions (got %u)",
			  PCOPY_REGIONS_MAX, n);
		return -EINVAL;
	}
	if (o.flags & ~(unsigned)(PCOPY_SOURCE_ZLIB | PCOPY_SOURCE_NO_BACKGROUND |
				  PCOPY_SOURCE_NO_URGENT | PCOPY_SOURCE_NO_RESUME |
				  PCOPY_SOURCE_NO_PACING | PCOPY_SOURCE_ADOPT) ||
	    o.zlib_level < 0 || o.zlib_level > 9) {
		pcopy_log(&lg, PCOPY_LOG_ERROR,
			  "pcopy_source_create: bad options (flags 0x%x, zlib_level %d)",
			  o.flags, o.zlib_level);
		return -EINVAL;
	}
	if ((o.psk && (o.psk_len == 0 || o.psk_len > 1024)) ||
	    (!o.psk && o.psk_len)) {
		pcopy_log(&lg, PCOPY_LOG_ERROR,
			  "pcopy_source_create: psk_len %zu (1..1024 bytes with a key, 0 without)",
			  o.psk_len);
		return -EINVAL;
	}
	for (i = 0; i < n; i++) {
		err = region_check(&lg, i, &regions[i]);
		if (err)
			return err;
		total += regions[i].length / regions[i].page_size;
		any_file |= regions[i].mem == NULL;
	}

	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->lg = lg;
	s->opts = o;
	if (!s->opts.zlib_level)
		s->opts.zlib_level = 1;
	if (s->opts.handshake_timeout_ms <= 0) /* as the destination does */
		s->opts.handshake_timeout_ms = 10000;
	s->batch = o.batch_bytes ? o.batch_bytes : SRC_BATCH_DEFAULT;
	if (s->batch > SRC_BATCH_MAX)
		s->batch = SRC_BATCH_MAX;
	s->batch = (s->batch + PCOPY_TARGET_PAGE - 1) & ~(size_t)(PCOPY_TARGET_PAGE - 1);
	s->urgent_grace_ns = SRC_URGENT_GRACE_NS;
	s->chunk = PCOPY_TARGET_PAGE;
	while (s->chunk * 2 <= s->batch)
		s->chunk *= 2;
	s->main.fd = -1;
	s->urg.fd = -1;
	s->stop_fd = -1;
	s->n = n;
	s->total_pages = total;
	s->any_file = any_file;
	s->keepalive_ns = o.keepalive_ms < 0 ? 0 :
		(uint64_t)(o.keepalive_ms ? o.keepalive_ms
					  : SRC_KEEPALIVE_DEFAULT_MS) * 1000000ull;
	s->deadline_ns = o.resume_deadline_ms < 0 ? UINT64_MAX :
		(uint64_t)(o.resume_deadline_ms ? o.resume_deadline_ms
						: SRC_RESUME_DEFAULT_MS) * 1000000ull;
	pcopy_errslot_init(&s->es);
	pthread_mutex_init(&s->lock, NULL);
	pthread_mutex_init(&s->conn_lock, NULL);
	src_rate_init(s);
	atomic_init(&s->live_gen, 0);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->cond, &ca);
	pthread_condattr_destroy(&ca);
	atomic_init(&s->over, false);
	atomic_init(&s->pages_left, total);

	s->hello.version = PCOPY_WIRE_VERSION;
	s->hello.role = PCOPY_ROLE_SOURCE;
	s->hello.conn_kind = PCOPY_CONN_MAIN;
	s->hello.features = (o.flags & PCOPY_SOURCE_ZLIB) ? PCOPY_FEAT_ZLIB : 0;
	if (!(o.flags & PCOPY_SOURCE_NO_URGENT))
		s->hello.features |= PCOPY_FEAT_URGENT;
	if (!(o.flags & PCOPY_SOURCE_NO_RESUME))
		s->hello.features |= PCOPY_FEAT_RESUME;
	if (o.psk)
		s->hello.features |= PCOPY_FEAT_AUTH;
	s->hello.target_page = PCOPY_TARGET_PAGE;
	s->hello.nregions = n;
	total = 0;
	for (i = 0; i < n; i++) {
		const struct pcopy_source_region *u = &regions[i];
		struct src_region *r = &s->reg[i];
		uint64_t w, nw;

		snprintf(r->name, sizeof(r->name), "%s", u->name);
		r->mem = u->mem;
		r->fd = u->mem ? -1 : u->fd;
		r->file_offset = u->file_offset;
		r->length = u->length;
		r->page_size = u->page_size;
		r->npages = u->length / u->page_size;
		r->first = total;
		total += r->npages;
		nw = (r->npages + 63) / 64;
		r->unsent = calloc(nw, sizeof(*r->unsent));
		if (!r->unsent) {
			s->n = i;
			source_free(s);
			return -ENOMEM;
		}
		/* all ones, except past the last page: the scan relies on it */
		for (w = 0; w < nw; w++)
			atomic_init(&r->unsent[w], ~UINT64_C(0));
		if (r->npages % 64)
			atomic_init(&r->unsent[nw - 1],
				    (UINT64_C(1) << (r->npages % 64)) - 1);
		snprintf(s->hello.regions[i].name, sizeof(s->hello.regions[i].name),
			 "%s", u->name);
		s->hello.regions[i].length = u->length;
		s->hello.regions[i].host_page = (uint32_t)u->page_size;
	}
	err = src_queue_init(&s->q, s->total_pages);
	if (!err && o.psk) {
		s->psk = malloc(o.psk_len);
		if (s->psk)
			memcpy(s->psk, o.psk, o.psk_len);
		else
			err = -ENOMEM;
	}
	s->opts.psk = s->psk;
	if (err) {
		source_free(s);
		return err;
	}
	*sp = s;
	return 0;
}

/* Shut down the connections (not close: their threads may still be in a
 * call on them; they are closed once joined). Called with s->lock. */
static void shutdown_conns(struct pcopy_source *s)
{
	if (s->main.fd >= 0)
		shutdown(s->main.fd, SHUT_RDWR);
	if (s->urg.fd >= 0)
		shutdown(s->urg.fd, SHUT_RDWR);
}

/* See source.h. The state changes under s->lock, after the error slot is
 * filled, so a waiter that sees FAILED also sees the message. */
void src_end(struct pcopy_source *s, int err, bool notify, const char *fmt, ...)
{
	char msg[PCOPY_ERRMSG_MAX];
	uint64_t one = 1;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	/* pcopy_source_wait's -ETIMEDOUT means "your timeout passed": a
	 * session that ended because the peer went silent or did not come
	 * back in time says so with its own errno */
	if (err == -ETIMEDOUT)
		err = -ENOLINK;

	pthread_mutex_lock(&s->lock);
	if (s->state == SRC_DONE || s->state == SRC_FAILED) {
		pthread_mutex_unlock(&s->lock);
		if (err)
			pcopy_log(&s->lg, PCOPY_LOG_DEBUG,
				  "after the end of the session: %s", msg);
		return;
	}
	/* the message is in place before any waiter can see the state */
	if (err)
		pcopy_errslot_set(&s->es, &s->lg, err, "%s", msg);
	else
		pcopy_log(&s->lg, PCOPY_LOG_INFO, "%s", msg);
	/* while paused there is no connection to tell */
	s->notify_peer = err && notify && s->state == SRC_RUNNING;
	s->state = err ? SRC_FAILED : SRC_DONE;
	s->t_end = pcopy_now_ns();
	atomic_store(&s->live_gen, 0);
	atomic_store(&s->over, true);
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);

	src_queue_close(&s->q);	/* wakes a sender waiting after END */
	if (s->stop_fd >= 0 && write(s->stop_fd, &one, sizeof(one)) < 0) {
		/* an eventfd write only fails on counter overflow: it is
		 * readable then anyway */
	}
}

/* See source.h. */
void src_break(struct pcopy_source *s, uint64_t gen, int err, bool proto,
	       const char *fmt, ...)
{
	char msg[PCOPY_ERRMSG_MAX];
	uint64_t nproto = 0;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);

	pthread_mutex_lock(&s->lock);
	if (s->state != SRC_RUNNING || s->gen != gen) {
		pthread_mutex_unlock(&s->lock);
		pcopy_log(&s->lg, PCOPY_LOG_DEBUG, "after a break: %s", msg);
		return;
	}
	if (proto)
		nproto = SRC_STAT_ADD(s, proto_breaks, 1) + 1;
	if (!(s->features & PCOPY_FEAT_RESUME) ||
	    nproto > SRC_PROTO_BREAKS_MAX) {
		pthread_mutex_unlock(&s->lock);
		/* a peer that merely went away needs no ERROR */
		src_end(s, err, proto || (err != -ECONNRESET && err != -EPIPE),
			"%s%s", msg, nproto > SRC_PROTO_BREAKS_MAX ?
			" (too many protocol errors to resume again)" : "");
		return;
	}
	s->state = SRC_PAUSED;
	atomic_store(&s->live_gen, 0);
	s->t_pause = pcopy_now_ns();
	snprintf(s->break_msg, sizeof(s->break_msg), "%s", msg);
	SRC_STAT_ADD(s, breaks, 1);
	/* No ERROR to the destination, even for a protocol error: an ERROR
	 * means "the session is over" to it, while a closed connection means
	 * "resume". */
	shutdown_conns(s);
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	src_queue_close(&s->q);	/* the sender parks */
	pcopy_log(&s->lg, PCOPY_LOG_WARN,
		  "connection to the destination broken%s (%s); paused, waiting for it to resume",
		  proto ? " by a protocol error" : "", msg);
}

/* Start a thread with every signal blocked: the caller's handlers never run
 * on library threads. Returns 0 or -errno. Caller's thread. */
int src_thread_start(pthread_t *t, void *(*fn)(void *), void *arg)
{
	sigset_t all, old;
	int err;

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	err = pthread_create(t, NULL, fn, arg);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return -err;
}

static uint64_t session_id(const struct pcopy_source *s)
{
	uint64_t id;

	if (getrandom(&id, sizeof(id), GRND_NONBLOCK) == (ssize_t)sizeof(id) &&
	    id)
		return id;
	/* no entropy yet: unique enough to tell sessions apart */
	return (pcopy_now_ns() ^ ((uint64_t)getpid() << 32) ^ (uintptr_t)s) | 1;
}

/*
 * Handshake over fd (blocking, up to handshake_timeout_ms), then start the
 * request reader and the sender. Takes ownership of fd in every case (closed
 * now on a misuse error, else at destroy). Returns 0, or -errno with a
 * message in pcopy_source_error() (-EPROTO when the region tables differ,
 * -EACCES when the key is wrong); a failed start also makes
 * pcopy_source_wait() return the error. Caller's thread.
 */
int pcopy_source_start(struct pcopy_source *s, int fd)
{
	char msg[PCOPY_ERRMSG_MAX] = "";
	struct conn_hs_params hp;
	struct wire_hello *peer = NULL;
	uint32_t features = 0;
	uint64_t sid = 0, t0;
	bool adopt = false;
	int err, lowat = SRC_NOTSENT_LOWAT;

	if (!s || fd < 0) {
		if (fd >= 0)
			close(fd);
		return -EINVAL;
	}
	pthread_mutex_lock(&s->lock);
	err = (s->state != SRC_INIT || s->main.fd >= 0) ? -EINVAL : 0;
	if (!err)
		s->main.fd = fd;
	pthread_mutex_unlock(&s->lock);
	if (err) {
		pcopy_log(&s->lg, PCOPY_LOG_ERROR,
			  "pcopy_source_start: already started");
		close(fd);
		return err;
	}
	s->t_start = t0 = pcopy_now_ns();
	/* Bound background data queued in the kernel so a requested page does
	 * not wait behind megabytes of it. Only TCP has this; ignore failure. */
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat,
			 sizeof(lowat));
	s->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	peer = malloc(sizeof(*peer));
	if (s->stop_fd < 0 || !peer) {
		err = s->stop_fd < 0 ? -errno : -ENOMEM;
		src_end(s, err, false, "pcopy_source_start: %s", strerror(-err));
		goto out;
	}
	memset(&hp, 0, sizeof(hp));
	hp.timeout_ms = s->opts.handshake_timeout_ms;
	if ((s->opts.flags & PCOPY_SOURCE_ADOPT) &&
	    !(s->opts.flags & PCOPY_SOURCE_NO_RESUME)) {
		/* a restarted source: is this the RESUME of a session? */
		err = src_adopt_check(s, fd, t0 + (uint64_t)hp.timeout_ms * 1000000ull,
				      &sid, msg, sizeof(msg));
		if (err < 0) {
			src_end(s, err, false, "%s", msg);
			goto out;
		}
		adopt = err == 1;
		/* one deadline for the look and the handshake */
		err = (int)((pcopy_now_ns() - t0) / 1000000);
		hp.timeout_ms = err < hp.timeout_ms ? hp.timeout_ms - err : 1;
	}
	s->hello.session_id = adopt ? sid : session_id(s);
	hp.psk = s->psk;
	hp.psk_len = s->psk ? s->opts.psk_len : 0;
	hp.expect_session = adopt ? sid : 0;
	err = conn_handshake2(fd, &s->hello, peer, &features, &hp, msg,
			      sizeof(msg));
	if (!err && peer->conn_kind !=
		    (adopt ? PCOPY_CONN_RESUME : PCOPY_CONN_MAIN)) {
		snprintf(msg, sizeof(msg),
			 "the destination opened connection kind %u, but a session starts with a MAIN connection",
			 peer->conn_kind);
		conn_send_error(fd, EPROTO, msg);
		err = -EPROTO;
	}
	if (err) {
		src_end(s, err, false, "%s: %s", adopt ?
			"adopting a session: handshake failed" : "handshake failed",
			msg[0] ? msg : pcopy_strerror(err));
		goto out;
	}
	s->features = features & s->hello.features;
	err = src_tx_new(s, false, &s->tx);
	if (!err)
		err = src_tx_new(s, false, &s->rtx);
	if (err) {
		src_end(s, err, true, "sender setup failed: %s", strerror(-err));
		goto out;
	}
	pcopy_log(&s->lg, PCOPY_LOG_INFO,
		  "source: %ssession %016llx, %u regions, %llu host pages, zlib %s, urgent %s, resume %s",
		  adopt ? "adopting " : "",
		  (unsigned long long)s->hello.session_id, s->n,
		  (unsigned long long)s->total_pages,
		  s->features & PCOPY_FEAT_ZLIB ? "on" : "off",
		  s->features & PCOPY_FEAT_URGENT ? "offered" : "off",
		  s->features & PCOPY_FEAT_RESUME ? "on" : "off");
	if (adopt) {
		err = src_adopt(s, fd);
		goto out;
	}

	pthread_mutex_lock(&s->lock);
	if (s->state == SRC_INIT) {
		s->state = SRC_RUNNING;
		s->gen = 1;
		s->main.gen = 1;
		s->main.live = true;
		atomic_store(&s->main.last_rx_ns, pcopy_now_ns());
		atomic_store(&s->live_gen, 1);
	}
	pthread_mutex_unlock(&s->lock);
	err = src_thread_start(&s->main.thread, src_reader_main, s);
	if (err) {
		pthread_mutex_lock(&s->lock);
		s->main.live = false;
		pthread_mutex_unlock(&s->lock);
		src_end(s, err, true, "cannot start the request reader: %s",
			strerror(-err));
		goto out;
	}
	s->main.started = true;
	err = src_thread_start(&s->sender, src_sender_main, s);
	if (err) {
		src_end(s, err, false, "cannot start the sender: %s",
			strerror(-err));
		goto out;
	}
	s->sender_started = true;
out:
	free(peer);
	return err;
}

/*
 * Wait for the end of the session: 0 when the destination sent DONE, the
 * error that ended it, -ETIMEDOUT after timeout_ms (< 0: forever), or
 * -EINVAL if never started. A pause is not an end: waiting goes on through
 * it. Any thread; several may wait at once.
 */
int pcopy_source_wait(struct pcopy_source *s, int timeout_ms)
{
	struct timespec ts;
	int err = 0;

	if (!s)
		return -EINVAL;
	if (timeout_ms >= 0) {
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_sec += timeout_ms / 1000;
		ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
	}
	pthread_mutex_lock(&s->lock);
	while ((s->state == SRC_RUNNING || s->state == SRC_PAUSED) && !err) {
		if (timeout_ms < 0)
			pthread_cond_wait(&s->cond, &s->lock);
		else if (pthread_cond_timedwait(&s->cond, &s->lock, &ts) == ETIMEDOUT)
			err = -ETIMEDOUT;
	}
	if (s->state == SRC_INIT)
		err = -EINVAL;
	else if (s->state == SRC_DONE)
		err = 0;
	else if (s->state == SRC_FAILED)
		err = pcopy_errslot_get(&s->es);
	pthread_mutex_unlock(&s->lock);
	return err;
}

/* 1 while paused waiting for the destination to resume, else 0 (also for
 * NULL). Any thread. */
int pcopy_source_paused(struct pcopy_source *s)
{
	int p;

	if (!s)
		return 0;
	pthread_mutex_lock(&s->lock);
	p = s->state == SRC_PAUSED;
	pthread_mutex_unlock(&s->lock);
	return p;
}

/* Copy the counters into *st (source meaning of each field in postcopy.h;
 * host_pages_received counts host pages sent, again after a resume;
 * requests counts host pages sent on request, urgent ones included).
 * Returns 0 or -EINVAL. Any thread. */
int pcopy_source_stats(struct pcopy_source *s, struct pcopy_stats *st)
{
	uint64_t t0, t1;

	if (!s || !st)
		return -EINVAL;
	memset(st, 0, sizeof(*st));
	st->host_pages_total = s->total_pages;
	st->host_pages_received = atomic_load(&s->st.host_pages_sent);
	st->pages_zero = atomic_load(&s->st.pages_zero);
	st->pages_raw = atomic_load(&s->st.pages_raw);
	st->pages_zlib = atomic_load(&s->st.pages_zlib);
	st->bytes_wire = atomic_load(&s->st.bytes_wire);
	st->bytes_payload = atomic_load(&s->st.bytes_payload);
	st->requests = atomic_load(&s->st.requests);
	st->request_msgs = atomic_load(&s->st.request_msgs);
	st->duplicates = atomic_load(&s->st.duplicates);
	st->breaks = atomic_load(&s->st.breaks);
	st->resent_pages = atomic_load(&s->st.resent_pages);
	st->urgent_pages = atomic_load(&s->st.urgent_pages);
	pthread_mutex_lock(&s->lock);
	t0 = s->t_start;
	t1 = s->t_end;
	pthread_mutex_unlock(&s->lock);
	if (t0)
		st->elapsed_ns = (t1 ? t1 : pcopy_now_ns()) - t0;
	return 0;
}

/* Message of the error that ended the session, or "". Valid until destroy.
 * Any thread. */
const char *pcopy_source_error(struct pcopy_source *s)
{
	if (!s)
		return "";
	if (!pcopy_errslot_get(&s->es))
		return "";
	return s->es.msg;
}

/*
 * Stop every thread (shutdown() unblocks a sender stuck on a full socket,
 * stop_fd the readers, the condvar a parked sender), join them, close the
 * connections, free everything. Accepts NULL; any moment. Caller's thread,
 * never a library callback, not concurrently with another call on s.
 */
void pcopy_source_destroy(struct pcopy_source *s)
{
	bool done;

	if (!s)
		return;
	if (s->main.started || s->sender_started)
		src_end(s, -ECANCELED, false, "source destroyed");
	/* After DONE the sender echoes it (without blocking) and exits: let
	 * it do so before the connections go down. Bounded: it may still be
	 * in a write the destination does not read any more. */
	pthread_mutex_lock(&s->lock);
	done = s->state == SRC_DONE;
	pthread_mutex_unlock(&s->lock);
	if (done && s->sender_started) {
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += 1;
		if (pthread_timedjoin_np(s->sender, NULL, &ts) == 0)
			s->sender_started = false;
	}
	pthread_mutex_lock(&s->lock);
	shutdown_conns(s);
	pthread_mutex_unlock(&s->lock);
	if (s->main.started)
		pthread_join(s->main.thread, NULL);
	if (s->urg.started)
		pthread_join(s->urg.thread, NULL);
	if (s->sender_started)
		pthread_join(s->sender, NULL);
	source_free(s);
}

/* Ring capacity of the request queue (test/check_source.c). */
size_t src_debug_queue_capacity(struct pcopy_source *s)
{
	return src_queue_capacity(&s->q);
}

/* File bytes read by the snapshot-file backends (test/check_source.c). */
uint64_t src_debug_file_bytes_read(struct pcopy_source *s)
{
	return atomic_load(&s->file_bytes_read);
}
