/* SPDX-License-Identifier: MIT */
/*
 * Run 4, the library: pcopy_dest_* here with toucher threads on the memory,
 * pcopy_source_* in the server process (a child, or --serve elsewhere); as
 * shipped (urgent connection + background stream) or with one switched off.
 */
#include "bench.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "postcopy.h"

static void log_stderr(void *opaque, enum pcopy_log_level lvl, const char *msg)
{
	(void)opaque;
	if (lvl <= PCOPY_LOG_WARN)
		fprintf(stderr, "libpostcopy: %s\n", msg);
}

/* Verify the whole image after the restore (not timed). */
static uint64_t verify_all(const uint8_t *base, size_t len)
{
	uint64_t bad = 0;

	for (size_t pg = 0; pg < len / B_PAGE; pg++)
		if (!img_page_ok(pg, base + pg * B_PAGE))
			bad++;
	return bad;
}

static const char *const variant_names[LIBV_COUNT] = { "lib", "lib_nourg", "lib_nobg",
								     "lib_nopace" };

int run_lib(const struct b_opts *o, const struct b_addr *srv, enum b_order ord,
	    enum b_lib_variant v, struct b_result *r)
{
	uint32_t flags = v == LIBV_NOURG ? CTL_F_NO_URGENT :
			 v == LIBV_NOBG ? CTL_F_NO_BG :
			 v == LIBV_NOPACE ? CTL_F_NO_PACING : 0;
	/* Without the background stream only a run that touches every page
	 * completes; the hot order shows what not streaming costs the hot set
	 * and then ends without completing. */
	bool incomplete = v == LIBV_NOBG && ord == ORDER_HOT;
	size_t len = o->image_bytes;
	struct b_touch_plan plan = { 0 };
	struct b_touch_result tr;
	struct b_touchers *tp = NULL;
	struct pcopy_region reg = { .name = "ram", .length = len, .page_size = B_PAGE };
	struct pcopy_dest_opts dopts;
	struct pcopy_dest *d = NULL;
	struct pcopy_stats st;
	struct ctl_done done;
	struct b_task_sampler *ts = NULL;
	uint8_t *mem;
	uint64_t t0, t_end, c0, c1, base, hwm, img_rss;
	int ctl = -1, fd = -1, rc, wrc;

	memset(r, 0, sizeof(*r));
	memset(&tr, 0, sizeof(tr));
	memset(&st, 0, sizeof(st));
	snprintf(r->run, sizeof(r->run), "%s", variant_names[v]);
	snprintf(r->order, sizeof(r->order), "%s", b_order_name(ord));
	r->touchers = ord == ORDER_NONE ? 0 : o->touchers;
	r->first_touch_s = r->hot_s = -1;
	/* Guarded: the library unregisters at completion, and the VMA must
	 * not merge with a neighbour before smaps is read. */
	mem = b_map_guarded(len);
	if (!mem) {
		rc = -ENOMEM;
		goto out;
	}
	reg.host = mem;
	plan.base = mem;
	plan.npages = len / B_PAGE;
	rc = b_plan_build(&plan, ord, o);
	if (rc < 0)
		goto out_unmap;
	/* The warm-up comes before the memory high-water mark is reset: it
	 * is not the library's. */
	rc = ctl_open(srv, CTL_LIB, o, flags, len, &ctl, &fd);
	if (rc < 0) {
		snprintf(r->note, sizeof(r->note), "server: %s", strerror(-rc));
		goto out_plan;
	}
	pcopy_dest_opts_init(&dopts);
	dopts.log = log_stderr;
	b_reset_hwm();
	base = b_vm_rss();
	rc = pcopy_dest_create(&d, &reg, 1, &dopts);
	if (rc < 0) {
		snprintf(r->note, sizeof(r->note), "dest_create: %s", pcopy_strerror(rc));
		close(fd);
		fd = -1;
		goto out_ctl;
	}
	ts = b_task_sampler_start();
	c0 = b_proc_cpu_ns();
	t0 = b_now_ns();
	rc = pcopy_dest_start(d, fd);	/* takes fd, even on failure */
	fd = -1;
	if (rc < 0) {
		snprintf(r->note, sizeof(r->note), "dest_start: %s: %s",
			 pcopy_strerror(rc), pcopy_dest_error(d));
		goto out_ctl;
	}
	if (v != LIBV_NOURG) {
		/* The urgent connection joins before any toucher runs, so every
		 * fault can use it; its handshake counts in start_ms and in
		 * first_ms as the first one's does. */
		int ufd = b_connect(srv);

		rc = ufd < 0 ? ufd : pcopy_dest_add_urgent(d, ufd);
		if (rc < 0) {
			snprintf(r->note, sizeof(r->note), "add_urgent: %s: %s",
				 pcopy_strerror(rc), pcopy_dest_error(d));
			goto out_ctl;
		}
	}
	r->start_ms = (b_now_ns() - t0) / 1e6;
	if (plan.threads) {
		rc = b_touch_start(&tp, &plan);
		if (rc == 0)
			b_touch_join(tp, &tr);
		if (ord == ORDER_HOT && tr.t_last_ns)
			r->hot_s = (tr.t_last_ns - t0) / 1e9;
	}
	wrc = incomplete ? 0 : pcopy_dest_wait(d, 600000);
	t_end = b_now_ns();
	c1 = b_proc_cpu_ns();
	b_task_sampler_stop(ts, r->dst_threads, sizeof(r->dst_threads));
	ts = NULL;
	hwm = b_vm_hwm();
	img_rss = b_region_rss(mem, len);
	if (wrc < 0) {
		snprintf(r->note, sizeof(r->note), "dest_wait: %s: %s",
			 pcopy_strerror(wrc), pcopy_dest_error(d));
		if (rc == 0)
			rc = wrc;
	}
	pcopy_dest_stats(d, &st);
	if (tr.t_last_ns > t_end)
		t_end = tr.t_last_ns;
	r->total_s = (t_end - t0) / 1e9;
	r->gbps = (double)len / (r->total_s * 1e9);
	if (incomplete) {
		r->incomplete = true;
		r->total_s = r->gbps = NAN;
		snprintf(r->note, sizeof(r->note), "no background: never completes");
	}
	r->first_touch_s = tr.t_first_ns ? (tr.t_first_ns - t0) / 1e9 : -1;
	r->dst_cpu_s = (c1 - c0) / 1e9;
	r->dst_lib_cpu_s = (c1 - c0 - (tr.cpu_ns < c1 - c0 ? tr.cpu_ns : 0)) / 1e9;
	/* Beyond the image and the bench's own latency arrays. */
	r->mem_overhead_mib = ((double)hwm - (double)base - (double)img_rss -
			       (double)plan.threads * plan.norder * 4) / 1048576.0;
	r->lib_faults = st.faults;
	r->lib_requests = st.requests;
	r->lib_dups = st.duplicates;
	r->wire_bytes = st.bytes_wire;
	r->lib_p99_us = st.lat_p99_ns / 1e3;
	b_result_fill_lat(r, &tr.lat);
	r->bad_pages = tr.bad;
	if (wrc == 0 && !incomplete)
		r->bad_pages += verify_all(mem, len);
out_ctl:
	b_task_sampler_stop(ts, r->dst_threads, sizeof(r->dst_threads));
	/* The source ends its session when the destination is done (or gone):
	 * destroy first, then collect the server's figures. */
	pcopy_dest_destroy(d);
	d = NULL;
	if (ctl_finish(ctl, &done) == 0) {
		r->src_cpu_s = done.cpu_ns / 1e9;
		r->src_mem_overhead_mib = done.mem_overhead / 1048576.0;
		snprintf(r->src_threads, sizeof(r->src_threads), "%s", done.threads);
		/* An incomplete run ends with the destination going away:
		 * the source's error then is expected. */
		if (done.rc < 0 && !r->note[0])
			snprintf(r->note, sizeof(r->note), "source: %.100s (%s)", done.err,
				 strerror(-done.rc));
		if (rc == 0 && done.rc < 0 && !incomplete)
			rc = done.rc;
	}
	close(ctl);
	pcopy_dest_destroy(d);
out_plan:
	b_lat_free(&tr.lat);
	b_plan_free(&plan);
out_unmap:
	b_unmap_guarded(mem, len);
out:
	r->rc = rc;
	return rc;
}

int serve_lib(int lfd, int fd, const uint8_t *image, size_t len, int file_fd,
	      uint32_t flags, struct ctl_done *done)
{
	struct pcopy_source_region reg = {
		.name = "ram", .mem = file_fd < 0 ? image : NULL, .fd = file_fd,
		.file_offset = 0, .length = len, .page_size = B_PAGE,
	};
	struct pcopy_source_opts so;
	struct pcopy_source *s = NULL;
	int rc;

	struct b_task_sampler *ts = b_task_sampler_start();

	pcopy_source_opts_init(&so);
	so.log = log_stderr;
	if (flags & CTL_F_NO_URGENT)
		so.flags |= PCOPY_SOURCE_NO_URGENT;
	if (flags & CTL_F_NO_PACING)
		so.flags |= PCOPY_SOURCE_NO_PACING;
	/* No background: a hot-order run ends with the destination leaving
	 * mid-restore, which must end the session now, not after a resume
	 * deadline. */
	if (flags & CTL_F_NO_BG)
		so.flags |= PCOPY_SOURCE_NO_BACKGROUND | PCOPY_SOURCE_NO_RESUME;
	rc = pcopy_source_create(&s, &reg, 1, &so);
	if (rc < 0) {
		snprintf(done->err, sizeof(done->err), "source_create: %s",
			 pcopy_strerror(rc));
		close(fd);
		b_task_sampler_stop(ts, done->threads, sizeof(done->threads));
		return rc;
	}
	rc = pcopy_source_start(s, fd);
	/* Keep accepting on the listener: the urgent connection joins the
	 * session there. poll() sleeps; the 50 ms only bounds how late the
	 * end of the session is noticed (untimed). */
	for (int waited = 0; rc == 0; waited += 50) {
		struct pollfd pfd = { .fd = lfd, .events = POLLIN };

		rc = pcopy_source_wait(s, 0);
		if (rc != -ETIMEDOUT)
			break;
		rc = 0;
		if (waited >= 600000) {
			rc = -ETIMEDOUT;
			break;
		}
		if (poll(&pfd, 1, 50) == 1) {
			int extra = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);

			if (extra < 0)
				continue;
			if (flags & CTL_F_SRC_NODELAY) {
				int one = 1;

				(void)setsockopt(extra, IPPROTO_TCP, TCP_NODELAY,
						 &one, sizeof(one));
			}
			if (pcopy_source_add_conn(s, extra) < 0)
				fprintf(stderr, "pcopy-bench server: add_conn: %s\n",
					pcopy_source_error(s));
		}
	}
	if (rc < 0)
		snprintf(done->err, sizeof(done->err), "%s", pcopy_source_error(s));
	b_task_sampler_stop(ts, done->threads, sizeof(done->threads));
	pcopy_source_destroy(s);
	return rc;
}
