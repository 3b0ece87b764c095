/* SPDX-License-Identifier: MIT */
/*
 * The destination handle: create (validate, arm the userfaultfd), start
 * (handshake, the fault thread, the receiver, the optional reconnect
 * thread), wait, completion and failure, destroy.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define HUGE_2M (2u << 20)

/* Fill o with defaults. Any thread. */
void pcopy_dest_opts_init(struct pcopy_dest_opts *o)
{
	if (!o)
		return;
	memset(o, 0, sizeof(*o));
	o->size = sizeof(*o);
	o->uffd = -1;
	o->fail_mode = PCOPY_FAIL_BLOCK;
}

/* ---- completion and failure ---- */

/* Any thread. */
uint64_t dest_missing(const struct pcopy_dest *d)
{
	return d->total_pages -
	       atomic_load_explicit(&d->received, memory_order_acquire);
}

/* Best effort. Any thread. */
void dest_kick(int efd)
{
	uint64_t one = 1;

	if (efd >= 0 && write(efd, &one, sizeof(one)) < 0) {
		/* EAGAIN: the counter is saturated, the reader is awake anyway */
	}
}

/* The callback runs before waiters return, so a caller that waited sees
 * whatever the callback recorded. */
static void release_waiters(struct pcopy_dest *d, int result)
{
	pthread_mutex_lock(&d->lock);
	d->done = true;
	d->result = result;
	pthread_cond_broadcast(&d->cond);
	pthread_mutex_unlock(&d->lock);
}

/*
 * pcopy_dest_wait's -ETIMEDOUT means "your timeout passed, still running":
 * a restore that failed because the source went silent, or did not come
 * back before the resume deadline, or never answered the handshake, ends
 * with -ENOLINK instead. A pause that ends at the deadline also says why
 * its last resume attempt failed (a refusal names the source's reason).
 */
static void fail_record(struct pcopy_dest *d, int err, bool notify,
			const char *fmt, va_list ap)
{
	char msg[PCOPY_ERRMSG_MAX];
	bool defer;

	vsnprintf(msg, sizeof(msg), fmt, ap);
	if (err == -ETIMEDOUT)
		err = -ENOLINK;
	if (atomic_load(&d->stopping)) {
		pcopy_log(&d->log, PCOPY_LOG_DEBUG, "during destroy: %s", msg);
		return;
	}
	pthread_mutex_lock(&d->lock);
	if (d->finishing) {
		pthread_mutex_unlock(&d->lock);
		pcopy_log(&d->log, PCOPY_LOG_WARN, "after the restore ended: %s", msg);
		return;
	}
	d->finishing = true;
	/* on_event may take a lock that an application thread holds while it
	 * waits for a page; in SIGBUS mode only the fault thread can release
	 * that thread. Called there, the callback could deadlock it: the
	 * receiver calls it (and only then releases waiters, as below). */
	defer = notify && d->recv_live &&
		atomic_load(&d->fault_tid) == (int)syscall(SYS_gettid);
	if (defer) {
		d->event_pending = true;
		d->event_err = err;
	}
	if (atomic_load(&d->paused) && d->resume_why[0])
		pcopy_errslot_set(&d->err, &d->log, err,
				  "the last resume attempt failed: %s; %s",
				  d->resume_why, msg);
	else
		pcopy_errslot_set(&d->err, &d->log, err, "%s", msg);
	atomic_store_explicit(&d->failed, true, memory_order_release);
	pthread_cond_broadcast(&d->rc_cond);	/* the reconnect thread gives up */
	pthread_mutex_unlock(&d->lock);
	dest_kick(d->kick_efd);	/* SIGBUS mode: the fault thread wakes the waiters */
	if (defer) {
		dest_kick(d->recv_efd);
		return;
	}
	if (notify && d->on_event)
		d->on_event(d->event_opaque, err);
	release_waiters(d, err);
}

/* See internal.h. Receiver thread. */
void dest_recv_live(struct pcopy_dest *d, bool live)
{
	bool pending;
	int err;

	pthread_mutex_lock(&d->lock);
	d->recv_live = live;
	pending = d->event_pending;
	err = d->event_err;
	d->event_pending = false;
	pthread_mutex_unlock(&d->lock);
	if (!pending)
		return;
	/* Recorded before destroy began: the waiters must return anyway. */
	if (d->on_event && !atomic_load(&d->stopping))
		d->on_event(d->event_opaque, err);
	release_waiters(d, err);
}

/* Record a fatal error (see internal.h). Library threads. */
void dest_fail(struct pcopy_dest *d, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fail_record(d, err, true, fmt, ap);
	va_end(ap);
}

/* Same, from the caller's thread: no on_event (the caller gets the error). */
static void fail_sync(struct pcopy_dest *d, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void fail_sync(struct pcopy_dest *d, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fail_record(d, err, false, fmt, ap);
	va_end(ap);
}

/* Every page is in: tell the source, unregister (only now: unregistered
 * missing pages would read as zeros), wake waiters, report. Receiver, or
 * the fault thread (urgent answers, removed pages). */
static void complete(struct pcopy_dest *d)
{
	struct wire_hdr h = { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_DONE };
	int rc;

	pthread_mutex_lock(&d->lock);
	if (d->finishing) {
		pthread_mutex_unlock(&d->lock);
		return;
	}
	d->finishing = true;
	pthread_mutex_unlock(&d->lock);

	rc = dest_send(d, DEST_MAIN, &h, NULL, 0);
	if (rc < 0)
		pcopy_log(&d->log, PCOPY_LOG_WARN,
			  "restore complete, but sending DONE failed: %s",
			  strerror(-rc));
	/* Only now may the receiver stop and close the main connection (it
	 * sees the last page counted earlier: stopping then cut DONE off).
	 * It has completion work (DONE after a pause, the linger for the
	 * echo) and may sleep on a quiet connection or in a pause with no
	 * deadline: when another thread completes, it must look. */
	atomic_store(&d->done_sent, true);
	dest_kick(d->recv_efd);
	dest_uffd_unregister(d);
	atomic_store(&d->end_ns, pcopy_now_ns());
	pcopy_log(&d->log, PCOPY_LOG_INFO, "restore complete: %" PRIu64 " host pages",
		  d->total_pages);

	if (d->on_event)
		d->on_event(d->event_opaque, 0);
	release_waiters(d, 0);
}

/* Receiver thread (placement) or fault thread (removed pages). */
void dest_pages_received(struct pcopy_dest *d, uint64_t n)
{
	uint64_t v = atomic_fetch_add_explicit(&d->received, n,
					       memory_order_acq_rel) + n;

	if (n && v == d->total_pages)
		complete(d);
}

/* Returns 0 or -errno (-ENOTCONN while paused). Any library thread. */
int dest_send(struct pcopy_dest *d, unsigned which, struct wire_hdr *h,
	      const void *p, size_t len)
{
	int rc, fd;

	pthread_mutex_lock(&d->wlock);
	fd = d->wfd[which];
	if (fd < 0 && which == DEST_URGENT)
		fd = d->wfd[which = DEST_MAIN];
	rc = fd >= 0 ? conn_send_msg(fd, h, p, len) : -ENOTCONN;
	if (rc == 0)
		atomic_store_explicit(&d->last_tx_ns[which], pcopy_now_ns(),
				      memory_order_relaxed);
	else if (fd >= 0)
		/* The connection is broken: make sure the receiver sees it
		 * too (it pauses, or fails without resume). */
		shutdown(fd, SHUT_RDWR);
	pthread_mutex_unlock(&d->wlock);
	return rc;
}

/* Binary search over regions sorted by address. Any thread. */
struct dest_region *dest_find_region(struct pcopy_dest *d, uint64_t addr)
{
	unsigned lo = 0, hi = d->nreg;

	while (lo < hi) {
		unsigned mid = (lo + hi) / 2;
		struct dest_region *r = &d->reg[d->order[mid]];

		if (addr < (uintptr_t)r->host)
			hi = mid;
		else if (addr >= (uintptr_t)r->host + r->length)
			lo = mid + 1;
		else
			return r;
	}
	return NULL;
}

/* ---- create ---- */

static int check_regions(const struct pcopy_logger *lg,
			 const struct pcopy_region *rg, unsigned n)
{
	unsigned i, j;

	if (!rg || n == 0 || n > PCOPY_REGIONS_MAX) {
		pcopy_log(lg, PCOPY_LOG_ERROR, "need 1..%u regions, got %u%s",
			  PCOPY_REGIONS_MAX, n, rg ? "" : " (NULL table)");
		return -EINVAL;
	}
	for (i = 0; i < n; i++) {
		const struct pcopy_region *r = &rg[i];
		size_t nl = r->name ? strnlen(r->name, PCOPY_NAME_MAX + 1) : 0;

		if (nl == 0 || nl > PCOPY_NAME_MAX) {
			pcopy_log(lg, PCOPY_LOG_ERROR,
				  "region %u: name %s (1..%u bytes)", i,
				  nl ? "too long" : "missing or empty", PCOPY_NAME_MAX);
			return -EINVAL;
		}
		if (r->page_size != 4096 && r->page_size != HUGE_2M) {
			pcopy_log(lg, PCOPY_LOG_ERROR,
				  "region '%s': page_size %zu (must be 4096 or 2 MiB)",
				  r->name, r->page_size);
			return -EINVAL;
		}
		if (!r->host || ((uintptr_t)r->host & (r->page_size - 1))) {
			pcopy_log(lg, PCOPY_LOG_ERROR,
				  "region '%s': host %p is %s", r->name, r->host,
				  r->host ? "not aligned to page_size" : "NULL");
			return -EINVAL;
		}
		if (!r->length || (r->length & (r->page_size - 1)) ||
		    (uintptr_t)r->host + r->length < (uintptr_t)r->host) {
			pcopy_log(lg, PCOPY_LOG_ERROR,
				  "region '%s': length %zu is not a non-zero multiple of page_size %zu",
				  r->name, r->length, r->page_size);
			return -EINVAL;
		}
		for (j = 0; j < i; j++) {
			uintptr_t a = (uintptr_t)r->host, b = (uintptr_t)rg[j].host;

			if (a < b + rg[j].length && b < a + r->length) {
				pcopy_log(lg, PCOPY_LOG_ERROR,
					  "regions '%s' and '%s' overlap",
					  rg[j].name, r->name);
				return -EINVAL;
			}
		}
	}
	return 0;
}

static int cmp_host(const void *a, const void *b, void *arg)
{
	const struct pcopy_dest *d = arg;
	uintptr_t x = (uintptr_t)d->reg[*(const unsigned *)a].host;
	uintptr_t y = (uintptr_t)d->reg[*(const unsigned *)b].host;

	return x < y ? -1 : x > y;
}

static int setup_regions(struct pcopy_dest *d, const struct pcopy_region *rg,
			 unsigned n)
{
	unsigned i;
	int rc;

	d->nreg = n;
	d->hello.version = PCOPY_WIRE_VERSION;
	d->hello.role = PCOPY_ROLE_DEST;
	d->hello.conn_kind = PCOPY_CONN_MAIN;
	d->hello.features = PCOPY_FEAT_URGENT;
	if (!(d->flags & PCOPY_DEST_NO_ZLIB))
		d->hello.features |= PCOPY_FEAT_ZLIB;
	if (!(d->flags & PCOPY_DEST_NO_RESUME))
		d->hello.features |= PCOPY_FEAT_RESUME;
	if (d->psk_len)
		d->hello.features |= PCOPY_FEAT_AUTH;
	d->hello.target_page = PCOPY_TARGET_PAGE;
	d->hello.nregions = n;
	for (i = 0; i < n; i++) {
		struct dest_region *r = &d->reg[i];

		snprintf(r->name, sizeof(r->name), "%s", rg[i].name);
		r->host = rg[i].host;
		r->length = rg[i].length;
		r->page_size = rg[i].page_size;
		r->shift = (unsigned)__builtin_ctzll(r->page_size);
		r->npages = r->length >> r->shift;
		r->first = d->total_pages;
		d->total_pages += r->npages;
		if (r->page_size > d->max_page)
			d->max_page = r->page_size;
		rc = dbm_init(&r->requested, r->npages);
		if (!rc)
			rc = dbm_init(&r->received, r->npages);
		if (!rc)
			rc = dbm_init(&r->removed, r->npages);
		if (rc)
			return rc;
		snprintf(d->hello.regions[i].name, sizeof(d->hello.regions[i].name),
			 "%s", r->name);
		d->hello.regions[i].length = r->length;
		d->hello.regions[i].host_page = (uint32_t)r->page_size;
		d->order[i] = i;
	}
	qsort_r(d->order, n, sizeof(d->order[0]), cmp_host, d);
	d->fault_ns_bytes = d->total_pages * sizeof(uint64_t);
	d->fault_ns = mmap(NULL, d->fault_ns_bytes, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (d->fault_ns == MAP_FAILED) {
		d->fault_ns = NULL;
		return -ENOMEM;
	}
	return 0;
}

/*
 * Returns 0 and *out, or -errno (logged). Takes ownership of opts->uffd even
 * on failure. Caller's thread. Not thread-safe with respect to the regions.
 */
int pcopy_dest_create(struct pcopy_dest **out, const struct pcopy_region *regions,
		      unsigned n, const struct pcopy_dest_opts *opts)
{
	struct pcopy_dest_opts o;
	struct pcopy_logger lg;
	struct pcopy_dest *d;
	pthread_condattr_t ca;
	unsigned i;
	int rc, uffd_in;

	pcopy_dest_opts_init(&o);
	if (opts) {
		if (opts->size < offsetof(struct pcopy_dest_opts, uffd) + sizeof(int)) {
			if (opts->size >= sizeof(size_t) + sizeof(unsigned))
				o.flags = opts->flags;
			rc = -EINVAL;
			goto fail_early;
		}
		memcpy(&o, opts, opts->size < sizeof(o) ? opts->size : sizeof(o));
		o.size = sizeof(o);
	}
	lg = (struct pcopy_logger){ o.log, o.log_opaque };
	uffd_in = o.uffd;
	if (!out) {
		rc = -EINVAL;
		goto fail_early;
	}
	*out = NULL;
	rc = check_regions(&lg, regions, n);
	if (rc)
		goto fail_early;
	if (o.fail_mode != PCOPY_FAIL_BLOCK && o.fail_mode != PCOPY_FAIL_SIGBUS) {
		pcopy_log(&lg, PCOPY_LOG_ERROR, "unknown fail_mode %d", (int)o.fail_mode);
		rc = -EINVAL;
		goto fail_early;
	}
	if ((o.flags & PCOPY_DEST_UFFD_REGISTERED) && uffd_in < 0) {
		pcopy_log(&lg, PCOPY_LOG_ERROR,
			  "PCOPY_DEST_UFFD_REGISTERED without a userfaultfd in opts.uffd");
		rc = -EINVAL;
		goto fail_early;
	}
	if (o.psk_len > 256 || (o.psk_len && !o.psk) || (!o.psk_len && o.psk)) {
		pcopy_log(&lg, PCOPY_LOG_ERROR,
			  "psk: %zu bytes at %p (need 1..256 bytes, or NULL and 0)",
			  o.psk_len, o.psk);
		rc = -EINVAL;
		goto fail_early;
	}
	d = calloc(1, sizeof(*d));
	if (!d) {
		rc = -ENOMEM;
		goto fail_early;
	}
	if (o.psk_len)
		memcpy(d->psk, o.psk, o.psk_len);
	d->psk_len = o.psk_len;
	d->resume_deadline_ms = o.resume_deadline_ms ? o.resume_deadline_ms : 60000;
	d->keepalive_ms = o.keepalive_ms > 0 ? o.keepalive_ms : 10000;
	d->connect = o.connect;
	d->connect_opaque = o.connect_opaque;
	d->log = lg;
	d->on_event = o.on_event;
	d->event_opaque = o.event_opaque;
	d->fail_mode = o.fail_mode;
	d->flags = o.flags;
	d->handshake_timeout_ms = o.handshake_timeout_ms > 0 ? o.handshake_timeout_ms
							     : 10000;
	d->uffd = d->stop_efd = d->kick_efd = d->recv_efd = -1;
	for (i = 0; i < DEST_NCONN; i++) {
		d->wfd[i] = d->handoff[i] = d->conn[i].fd = -1;
		d->conn[i].idx = i;
	}
	pcopy_errslot_init(&d->err);
	pthread_mutex_init(&d->lock, NULL);
	pthread_mutex_init(&d->wlock, NULL);
	pthread_mutex_init(&d->resume_lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&d->cond, &ca);
	pthread_cond_init(&d->rc_cond, &ca);
	pthread_condattr_destroy(&ca);

	rc = setup_regions(d, regions, n);
	if (rc)
		goto fail;
	d->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	d->kick_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	d->recv_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (d->stop_efd < 0 || d->kick_efd < 0 || d->recv_efd < 0) {
		rc = -errno;
		goto fail;
	}
	rc = dest_uffd_setup(d, uffd_in);	/* owns uffd_in from here */
	uffd_in = -1;
	if (rc)
		goto fail;
	*out = d;
	return 0;
fail:
	if (uffd_in >= 0)
		close(uffd_in);
	pcopy_dest_destroy(d);
	return rc;
fail_early:
	if (o.uffd >= 0)
		close(o.uffd);
	return rc;
}

/* ---- start ---- */

/* Library threads take no asynchronous signals meant for the app.
 * Returns 0 or -errno. Caller's thread. */
int dest_start_thread(struct pcopy_dest *d, pthread_t *t, void *(*fn)(void *))
{
	sigset_t all, old;
	int rc;

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = pthread_create(t, NULL, fn, d);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return -rc;
}

/* Returns 0 or -errno (message in pcopy_dest_error). Caller's thread. */
int pcopy_dest_start(struct pcopy_dest *d, int fd)
{
	char err[PCOPY_ERRMSG_MAX];
	struct conn_hs_params hp;
	struct wire_hello peer;
	uint32_t feat = 0;
	int rc, fl;

	if (!d || fd < 0) {
		if (fd >= 0)
			close(fd);
		return -EINVAL;
	}
	if (d->started || d->finishing) {
		close(fd);
		return -EALREADY;
	}
	d->started = true;
	/* Writes (REQ) block rather than fail with EAGAIN; destroy unblocks
	 * them with shutdown(). */
	fl = fcntl(fd, F_GETFL);
	if (fl >= 0 && (fl & O_NONBLOCK))
		fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
	err[0] = 0;
	hp = (struct conn_hs_params){ .psk = d->psk_len ? d->psk : NULL,
				      .psk_len = d->psk_len,
				      .timeout_ms = d->handshake_timeout_ms };
	rc = conn_handshake2(fd, &d->hello, &peer, &feat, &hp, err, sizeof(err));
	if (rc < 0) {
		close(fd);
		fail_sync(d, rc, "handshake: %s", err[0] ? err : strerror(-rc));
		return rc;
	}
	d->features = feat;
	d->session_id = peer.session_id;
	rc = dest_recv_init(d);
	if (rc < 0) {
		close(fd);
		fail_sync(d, rc, "receiver setup: %s", strerror(-rc));
		return rc;
	}
	d->wfd[DEST_MAIN] = fd;
	d->conn[DEST_MAIN].fd = fd;
	d->conn[DEST_MAIN].last_rx_ns = pcopy_now_ns();
	atomic_store(&d->last_tx_ns[DEST_MAIN], pcopy_now_ns());
	atomic_store(&d->start_ns, pcopy_now_ns());
	/* Before the fault thread can record a failure: from now on its
	 * failures are the receiver's to report (see fail_record), even if
	 * the receiver has not run yet. */
	pthread_mutex_lock(&d->lock);
	d->recv_live = true;
	pthread_mutex_unlock(&d->lock);
	rc = dest_start_thread(d, &d->fault_thr, dest_fault_main);
	if (rc < 0) {
		dest_recv_live(d, false);
		fail_sync(d, rc, "starting the fault thread: %s", strerror(-rc));
		return rc;
	}
	d->fault_thr_on = true;
	rc = dest_start_thread(d, &d->recv_thr, dest_recv_main);
	if (rc < 0) {
		/* no receiver: deliver what the fault thread left for it */
		dest_recv_live(d, false);
		fail_sync(d, rc, "starting the receiver: %s", strerror(-rc));
		return rc;
	}
	d->recv_thr_on = true;
	if (d->connect) {
		rc = dest_start_thread(d, &d->rc_thr, dest_reconnect_main);
		if (rc < 0) {
			fail_sync(d, rc, "starting the reconnect thread: %s",
				  strerror(-rc));
			return rc;
		}
		d->rc_thr_on = true;
	}
	pcopy_log(&d->log, PCOPY_LOG_INFO,
		  "restore started: %u regions, %" PRIu64 " host pages, features 0x%x, session %016" PRIx64,
		  d->nreg, d->total_pages, feat, d->session_id);
	return 0;
}

/* ---- wait / accessors ---- */

/* Returns 0, -ETIMEDOUT (timeout_ms passed, the restore goes on) or the
 * error that ended it (never -ETIMEDOUT, see fail_record). Any thread. */
int pcopy_dest_wait(struct pcopy_dest *d, int timeout_ms)
{
	struct timespec dl;
	int rc = 0;

	if (!d)
		return -EINVAL;
	if (timeout_ms >= 0) {
		clock_gettime(CLOCK_MONOTONIC, &dl);
		dl.tv_sec += timeout_ms / 1000;
		dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
		if (dl.tv_nsec >= 1000000000L) {
			dl.tv_sec++;
			dl.tv_nsec -= 1000000000L;
		}
	}
	pthread_mutex_lock(&d->lock);
	while (!d->done && rc != ETIMEDOUT) {
		if (timeout_ms < 0)
			pthread_cond_wait(&d->cond, &d->lock);
		else
			rc = pthread_cond_timedwait(&d->cond, &d->lock, &dl);
	}
	rc = d->done ? d->result : -ETIMEDOUT;
	pthread_mutex_unlock(&d->lock);
	return rc;
}

/* Any thread; the message is set once, so the pointer stays valid. */
const char *pcopy_dest_error(struct pcopy_dest *d)
{
	if (!d)
		return "";
	pcopy_errslot_get(&d->err);	/* orders us after the writer */
	return d->err.msg;
}

/* Any thread. */
int pcopy_dest_uffd(const struct pcopy_dest *d)
{
	return d ? d->uffd : -EINVAL;
}

/* ---- destroy ---- */

/* Unreceived memory becomes PROT_NONE before the uffd closes: closing wakes
 * blocked faults, and without registration they would map zero pages. */
static void protect_unreceived(struct pcopy_dest *d)
{
	unsigned i;

	for (i = 0; i < d->nreg; i++) {
		struct dest_region *r = &d->reg[i];
		uint64_t s = 0, e;

		while ((s = dbm_find(&r->received, s, false)) < r->npages) {
			e = dbm_find(&r->received, s, true);
			if (mprotect(r->host + (s << r->shift), (e - s) << r->shift,
				     PROT_NONE) < 0) {
				/* Typically ENOMEM: too many VMAs from a
				 * fragmented bitmap. Lose the received pages
				 * too rather than expose zeros. */
				pcopy_log(&d->log, PCOPY_LOG_WARN,
					  "mprotect region '%s' pages %" PRIu64 "-%" PRIu64 ": %s; protecting the whole region",
					  r->name, s, e, strerror(errno));
				if (mprotect(r->host, r->length, PROT_NONE) < 0)
					pcopy_log(&d->log, PCOPY_LOG_ERROR,
						  "mprotect region '%s': %s; its unreceived pages will read as zeros",
						  r->name, strerror(errno));
				break;
			}
			s = e;
		}
	}
}

/* Accepts NULL. Caller's thread, never a library callback. */
void pcopy_dest_destroy(struct pcopy_dest *d)
{
	bool linger;
	unsigned i;

	if (!d)
		return;
	/* Complete: the receiver may still be making sure the source saw
	 * our DONE; it gives up after handshake_timeout_ms by itself. */
	pthread_mutex_lock(&d->lock);
	linger = d->recv_thr_on && d->done && d->result == 0;
	pthread_mutex_unlock(&d->lock);
	if (linger) {
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += d->handshake_timeout_ms / 1000 + 1;
		if (pthread_timedjoin_np(d->recv_thr, NULL, &ts) == 0)
			d->recv_thr_on = false;
	}
	atomic_store(&d->stopping, true);
	dest_kick(d->stop_efd);
	pthread_mutex_lock(&d->lock);
	pthread_cond_broadcast(&d->rc_cond);
	pthread_mutex_unlock(&d->lock);
	/* Unblocks a DONE/PING write stuck on a full socket. Not under wlock:
	 * the writer stuck holds it. The main fds stay open until the joins.
	 * The urgent one is the fault thread's, which closes it at any time
	 * (the number may be reused): it is read under d->lock, where a
	 * non-negative wfd[DEST_URGENT] is still open, and conn[DEST_URGENT]
	 * is left alone (the fault thread never blocks on it and reacts to
	 * stop_efd). */
	if (d->wfd[DEST_MAIN] >= 0)
		shutdown(d->wfd[DEST_MAIN], SHUT_RDWR);
	if (d->conn[DEST_MAIN].fd >= 0)
		shutdown(d->conn[DEST_MAIN].fd, SHUT_RDWR);
	pthread_mutex_lock(&d->lock);
	if (d->wfd[DEST_URGENT] >= 0)
		shutdown(d->wfd[DEST_URGENT], SHUT_RDWR);
	pthread_mutex_unlock(&d->lock);
	if (d->rc_thr_on)
		pthread_join(d->rc_thr, NULL);
	if (d->fault_thr_on)
		pthread_join(d->fault_thr, NULL);
	if (d->recv_thr_on)
		pthread_join(d->recv_thr, NULL);
	dest_recv_fini(d);
	if (d->uffd >= 0) {
		if (dest_missing(d) != 0 && !d->foreign)
			protect_unreceived(d);
		else if (dest_missing(d) != 0)
			pcopy_log(&d->log, PCOPY_LOG_WARN,
				  "destroyed with %" PRIu64 " host pages missing in another process's memory: it must keep its own userfaultfd open (or unmap them), or they will read as zeros",
				  dest_missing(d));
		close(d->uffd);
	}
	for (i = 0; i < DEST_NCONN; i++) {
		/* wfd[i] is conn[i].fd or a connection the receiver never
		 * took; handoff[i] likewise */
		if (d->conn[i].fd >= 0)
			close(d->conn[i].fd);
		if (d->wfd[i] >= 0 && d->wfd[i] != d->conn[i].fd &&
		    d->wfd[i] != d->handoff[i])
			close(d->wfd[i]);
		if (d->handoff[i] >= 0 && d->handoff[i] != d->conn[i].fd)
			close(d->handoff[i]);
	}
	if (d->stop_efd >= 0)
		close(d->stop_efd);
	if (d->kick_efd >= 0)
		close(d->kick_efd);
	if (d->recv_efd >= 0)
		close(d->recv_efd);
	for (i = 0; i < d->nreg; i++) {
		dbm_free(&d->reg[i].requested);
		dbm_free(&d->reg[i].received);
		dbm_free(&d->reg[i].removed);
	}
	if (d->fault_ns)
		munmap(d->fault_ns, d->fault_ns_bytes);
	pthread_cond_destroy(&d->cond);
	pthread_cond_destroy(&d->rc_cond);
	pthread_mutex_destroy(&d->resume_lock);
	pthread_mutex_destroy(&d->wlock);
	pthread_mutex_destroy(&d->lock);
	pcopy_errslot_destroy(&d->err);
	free(d);
}
