/* SPDX-License-Identifier: MIT */
/*
 * postcopy-fc-handler: one restore. The VMM's regions become a postcopy
 * destination over the userfaultfd it sent (the memory is in the VMM's
 * process; UFFDIO_COPY reaches it through the descriptor), fed either by a
 * source in this process reading the memory file over a socketpair, or by a
 * remote postcopy-serve. Either way the library's runtime answers faults
 * first and streams the rest in the background.
 */
#include "fc_restore.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <linux/userfaultfd.h>

#include "fc_conn.h"
#include "postcopy.h"

#define FC_NAME "postcopy-fc-handler"

struct fc_restore {
	unsigned id;
	pid_t peer;
	unsigned n;
	struct fc_region rg[FC_REGIONS_MAX];
	char names[FC_REGIONS_MAX][8];	/* "r0", "r1", ... */
	uint64_t bytes;
	int notify_fd;
	int verbose;
	bool remote;
	struct pcopy_dest *d;
	struct pcopy_source *s;
	atomic_bool ended;		/* on_event has run */
};

/* Library log lines, prefixed with the restore. Library threads and ours. */
static void log_fn(void *opaque, enum pcopy_log_level lvl, const char *msg)
{
	struct fc_restore *r = opaque;
	static const char *const lvl_name[] = { "error", "warning", "info", "debug" };

	if ((int)lvl > PCOPY_LOG_WARN + r->verbose)
		return;
	fprintf(stderr, FC_NAME ": restore %u: %s: %s\n", r->id,
		lvl <= PCOPY_LOG_DEBUG ? lvl_name[lvl] : "?", msg);
}

/* The restore ended: wake the main loop. Receiver or fault thread. */
static void event_fn(void *opaque, int err)
{
	struct fc_restore *r = opaque;
	uint64_t one = 1;

	(void)err;
	atomic_store_explicit(&r->ended, true, memory_order_release);
	if (write(r->notify_fd, &one, sizeof(one)) < 0) {
		/* EAGAIN: the counter is saturated, the loop is awake anyway */
	}
}

/*
 * What the VMM set up: the ioctls the kernel offers on this userfaultfd must
 * cover what placing pages needs (more is fine: newer kernels add ioctls),
 * and whether REMOVE events will come. The per-range answer of
 * UFFDIO_REGISTER went to the VMM; fdinfo has the descriptor-wide one.
 */
static int check_uffd(struct fc_restore *r, int uffd, bool *remove_on,
		      char *err, size_t errlen)
{
	static const struct { unsigned bit; const char *name; } need[] = {
		{ _UFFDIO_COPY, "UFFDIO_COPY" },
		{ _UFFDIO_WAKE, "UFFDIO_WAKE" },
		{ _UFFDIO_ZEROPAGE, "UFFDIO_ZEROPAGE" },
	};
	unsigned long long feat, ioctls;
	bool small = false;
	unsigned i;
	int rc;

	for (i = 0; i < r->n; i++)
		small |= r->rg[i].page_size == FC_PAGE_4K;
	rc = fc_uffd_info(uffd, &feat, &ioctls);
	if (rc < 0) {
		fprintf(stderr, FC_NAME ": restore %u: warning: cannot read the userfaultfd's fdinfo (%s): its features are not checked\n",
			r->id, strerror(-rc));
		*remove_on = true;
		return 0;
	}
	for (i = 0; i < sizeof(need) / sizeof(need[0]); i++) {
		/* UFFDIO_ZEROPAGE exists for anonymous and shmem memory only;
		 * hugetlbfs regions are placed with UFFDIO_COPY alone. */
		if (need[i].bit == _UFFDIO_ZEROPAGE && !small)
			continue;
		if (!(ioctls & (1ull << need[i].bit))) {
			snprintf(err, errlen,
				 "the userfaultfd does not offer %s (ioctls 0x%llx): cannot place pages",
				 need[i].name, ioctls);
			return -EOPNOTSUPP;
		}
	}
	*remove_on = (feat & UFFD_FEATURE_EVENT_REMOVE) != 0;
	if (!*remove_on)
		fprintf(stderr, FC_NAME ": restore %u: warning: the VMM did not enable UFFD_FEATURE_EVENT_REMOVE: balloon removals are not reported to the handler\n",
			r->id);
	if (feat & (UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP |
		    UFFD_FEATURE_EVENT_UNMAP))
		fprintf(stderr, FC_NAME ": restore %u: warning: the VMM enabled fork/remap/unmap events (features 0x%llx): the handler does not follow them\n",
			r->id, feat);
	return 0;
}

static int check_file(struct fc_restore *r, const struct fc_source_cfg *cfg,
		      char *err, size_t errlen)
{
	unsigned i;

	for (i = 0; i < r->n; i++) {
		const struct fc_region *g = &r->rg[i];

		if (g->offset > cfg->mem_size || g->size > cfg->mem_size - g->offset) {
			snprintf(err, errlen,
				 "region %u: [%" PRIu64 ", +%" PRIu64 ") runs past the end of the memory file %s (%" PRIu64 " bytes)",
				 i, g->offset, g->size, cfg->mem_path, cfg->mem_size);
			return -EINVAL;
		}
	}
	return 0;
}

struct src_start {
	struct pcopy_source *s;
	int fd;
	int rc;
};

static void *src_start_main(void *arg)
{
	struct src_start *st = arg;

	st->rc = pcopy_source_start(st->s, st->fd);
	return NULL;
}

/* The in-process source over the memory file, and its handshake with d. */
static int start_local(struct fc_restore *r, const struct fc_source_cfg *cfg,
		       char *err, size_t errlen)
{
	struct pcopy_source_region sr[FC_REGIONS_MAX];
	struct pcopy_source_opts so;
	struct src_start st;
	pthread_t thr;
	int sv[2], rc;
	unsigned i;

	for (i = 0; i < r->n; i++)
		sr[i] = (struct pcopy_source_region){
			.name = r->names[i], .mem = NULL, .fd = cfg->mem_fd,
			.file_offset = (off_t)r->rg[i].offset,
			.length = r->rg[i].size, .page_size = r->rg[i].page_size,
		};
	pcopy_source_opts_init(&so);
	so.log = log_fn;
	so.log_opaque = r;
	so.max_rate_bps = cfg->max_rate;
	if (cfg->no_background)
		so.flags |= PCOPY_SOURCE_NO_BACKGROUND;
	rc = pcopy_source_create(&r->s, sr, r->n, &so);
	if (rc < 0) {
		snprintf(err, errlen, "memory file source: %s", pcopy_strerror(rc));
		return rc;
	}
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
		rc = -errno;
		snprintf(err, errlen, "socketpair: %s", strerror(errno));
		return rc;
	}
	/* Both handshakes block until they meet: the source's on a thread. */
	st = (struct src_start){ .s = r->s, .fd = sv[1], .rc = 0 };
	rc = -pthread_create(&thr, NULL, src_start_main, &st);
	if (rc < 0) {
		close(sv[0]);
		close(sv[1]);
		snprintf(err, errlen, "pthread_create: %s", strerror(-rc));
		return rc;
	}
	rc = pcopy_dest_start(r->d, sv[0]);
	if (rc < 0) {
		snprintf(err, errlen, "handshake with the memory file source: %s: %s",
			 pcopy_strerror(rc), pcopy_dest_error(r->d));
		/* Closing our end ends the source's handshake too. */
		pcopy_dest_destroy(r->d);
		r->d = NULL;
	}
	pthread_join(thr, NULL);
	if (rc == 0 && st.rc < 0) {
		rc = st.rc;
		snprintf(err, errlen, "memory file source: %s: %s", pcopy_strerror(rc),
			 pcopy_source_error(r->s));
	}
	return rc;
}

static int start_remote(struct fc_restore *r, const struct fc_source_cfg *cfg,
			char *err, size_t errlen)
{
	int fd = tool_connect(cfg->remote, cfg->connect_timeout_ms), rc;

	if (fd < 0) {
		snprintf(err, errlen, "connect to %s: %s", cfg->remote->text, strerror(-fd));
		return fd;
	}
	rc = pcopy_dest_start(r->d, fd);
	if (rc < 0)
		snprintf(err, errlen, "handshake with %s: %s: %s", cfg->remote->text,
			 pcopy_strerror(rc), pcopy_dest_error(r->d));
	return rc;
}

/* See fc_restore.h. Caller's thread. */
int fc_restore_start(struct fc_restore **out, unsigned id, pid_t peer,
		     const struct fc_region *rg, unsigned n, int uffd,
		     const struct fc_source_cfg *cfg, int notify_fd,
		     char *err, size_t errlen)
{
	struct pcopy_region dr[FC_REGIONS_MAX];
	struct pcopy_dest_opts o;
	struct fc_restore *r;
	bool remove_on = false;
	unsigned i;
	int rc;

	*out = NULL;
	if (n == 0 || n > FC_REGIONS_MAX)
		return -EINVAL;
	r = calloc(1, sizeof(*r));
	if (!r) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	r->id = id;
	r->peer = peer;
	r->n = n;
	r->notify_fd = notify_fd;
	r->verbose = cfg->verbose;
	r->remote = cfg->remote != NULL;
	memcpy(r->rg, rg, n * sizeof(rg[0]));
	for (i = 0; i < n; i++) {
		snprintf(r->names[i], sizeof(r->names[i]), "r%u", i);
		dr[i] = (struct pcopy_region){
			.name = r->names[i], .host = (void *)(uintptr_t)rg[i].host,
			.length = rg[i].size, .page_size = rg[i].page_size,
		};
		r->bytes += rg[i].size;
	}
	rc = check_uffd(r, uffd, &remove_on, err, errlen);
	if (rc == 0 && !r->remote)
		rc = check_file(r, cfg, err, errlen);
	if (rc < 0)
		goto fail;

	pcopy_dest_opts_init(&o);
	o.flags = PCOPY_DEST_UFFD_REGISTERED;
	if (remove_on)
		o.flags |= PCOPY_DEST_HANDLE_REMOVE;
	if (!r->remote)
		o.flags |= PCOPY_DEST_NO_RESUME;
	o.log = log_fn;
	o.log_opaque = r;
	o.on_event = event_fn;
	o.event_opaque = r;
	/* The library owns (and closes) what it is given; the caller keeps
	 * the original so the VMM's faults stay blocked if this fails. */
	o.uffd = fcntl(uffd, F_DUPFD_CLOEXEC, 3);
	if (o.uffd < 0) {
		rc = -errno;
		snprintf(err, errlen, "dup(userfaultfd): %s", strerror(errno));
		goto fail;
	}
	rc = pcopy_dest_create(&r->d, dr, n, &o);
	if (rc < 0) {
		snprintf(err, errlen, "destination: %s (see the messages above)",
			 pcopy_strerror(rc));
		goto fail;
	}
	rc = r->remote ? start_remote(r, cfg, err, errlen)
		       : start_local(r, cfg, err, errlen);
	if (rc < 0)
		goto fail;
	*out = r;
	return 0;
fail:
	fc_restore_destroy(r);
	return rc;
}

/* Caller's thread. */
int fc_restore_poll(struct fc_restore *r)
{
	int rc;

	/* on_event runs just before the library releases its waiters: once
	 * it has, the wait below returns at once. */
	if (!atomic_load_explicit(&r->ended, memory_order_acquire))
		return -EINPROGRESS;
	rc = pcopy_dest_wait(r->d, 5000);
	return rc == -ETIMEDOUT ? -EINPROGRESS : rc;
}

static double us(uint64_t ns)
{
	return (double)ns / 1e3;
}

/* Caller's thread. */
void fc_restore_summary(struct fc_restore *r, FILE *f)
{
	struct pcopy_stats st;
	int rc = fc_restore_poll(r);

	memset(&st, 0, sizeof(st));
	pcopy_dest_stats(r->d, &st);
	if (rc == 0) {
		fprintf(f, FC_NAME ": restore %u (pid %d): complete: %u region(s), %.1f MiB in %.3f s; "
			"%" PRIu64 " faults, %" PRIu64 " host pages requested, fault latency p50 %.0f us p99 %.0f us max %.0f us; "
			"pages: %" PRIu64 " zero, %" PRIu64 " raw, %" PRIu64 " zlib\n",
			r->id, (int)r->peer, r->n, (double)r->bytes / 1048576.0,
			(double)st.elapsed_ns / 1e9, st.faults, st.requests,
			us(st.lat_p50_ns), us(st.lat_p99_ns), us(st.lat_max_ns),
			st.pages_zero, st.pages_raw, st.pages_zlib);
		return;
	}
	fprintf(f, FC_NAME ": restore %u (pid %d): %s after %.3f s: %s%s%s; %" PRIu64 " of %" PRIu64 " host pages placed\n",
		r->id, (int)r->peer, rc == -EINPROGRESS ? "INCOMPLETE" : "FAILED",
		(double)st.elapsed_ns / 1e9,
		rc == -EINPROGRESS ? "stopped by the handler" : pcopy_strerror(rc),
		rc == -EINPROGRESS ? "" : ": ",
		rc == -EINPROGRESS ? "" : pcopy_dest_error(r->d),
		st.host_pages_received, st.host_pages_total);
}

/* Accepts NULL. Caller's thread. */
void fc_restore_destroy(struct fc_restore *r)
{
	if (!r)
		return;
	/* The destination first: it stops asking; then the source. */
	pcopy_dest_destroy(r->d);
	if (r->s) {
		/* It has seen DONE (or the end of the socketpair) by now. */
		pcopy_source_wait(r->s, 1000);
		pcopy_source_destroy(r->s);
	}
	free(r);
}
