/* SPDX-License-Identifier: MIT */
/*
 * Baseline 2, the raw round trip, no library: one toucher faults, a handler
 * thread reads the userfaultfd (blocking), sends a 16-byte request over the
 * link, the server replies with one 4 KiB page, the handler places it with
 * UFFDIO_COPY. The toucher's view of that is the latency to beat.
 */
#include "bench.h"

#include <errno.h>
#include <linux/userfaultfd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

struct raw_req {
	uint64_t offset;
	uint64_t seq;
};

struct raw_handler {
	pthread_t tid;
	int uffd, fd;
	uint8_t *base;
	size_t len;			/* pages served remotely; the stop page follows */
	int rc;
	uint64_t cpu_ns;
};

static void *raw_handler_main(void *arg)
{
	struct raw_handler *h = arg;
	uint8_t *buf = aligned_alloc(B_PAGE, B_PAGE);
	uint64_t seq = 0;

	if (!buf) {
		h->rc = -ENOMEM;
		return NULL;
	}
	for (;;) {
		struct uffd_msg m;
		ssize_t n = read(h->uffd, &m, sizeof(m));
		uint8_t *addr;
		struct raw_req rq;

		if (n < 0 && errno == EINTR)
			continue;
		if (n != (ssize_t)sizeof(m)) {
			h->rc = n < 0 ? -errno : -EIO;
			break;
		}
		if (m.event != UFFD_EVENT_PAGEFAULT)
			continue;
		addr = (uint8_t *)(uintptr_t)(m.arg.pagefault.address & ~(uint64_t)(B_PAGE - 1));
		if (addr >= h->base + h->len) {
			/* The stop page: the main thread is done. */
			h->rc = bu_zeropage(h->uffd, addr, B_PAGE);
			break;
		}
		rq.offset = (uint64_t)(addr - h->base);
		rq.seq = seq++;
		h->rc = b_write_all(h->fd, &rq, sizeof(rq));
		if (h->rc == 0)
			h->rc = b_read_all(h->fd, buf, B_PAGE);
		if (h->rc == 0)
			h->rc = bu_copy(h->uffd, addr, buf, B_PAGE, false);
		if (h->rc < 0) {
			/* Keep the toucher from blocking forever: zero-fill is
			 * fine here, the toucher's verification will say so. */
			bu_zeropage(h->uffd, addr, B_PAGE);
		}
	}
	free(buf);
	h->cpu_ns = b_thread_cpu_ns();
	return NULL;
}

int run_raw(const struct b_opts *o, const struct b_addr *srv, struct b_result *r)
{
	size_t pages = o->image_bytes / B_PAGE;
	struct b_opts one = *o;
	struct b_touch_plan plan = { 0 };
	struct b_touch_result tr;
	struct b_touchers *tp = NULL;
	struct raw_handler h = { .uffd = -1, .fd = -1 };
	struct ctl_done done;
	int ctl = -1, rc;
	uint64_t t0, c0, c1;

	memset(r, 0, sizeof(*r));
	memset(&tr, 0, sizeof(tr));
	snprintf(r->run, sizeof(r->run), "raw_rtt");
	snprintf(r->order, sizeof(r->order), "random");
	r->touchers = 1;
	r->first_touch_s = r->hot_s = -1;
	if (pages > o->raw_faults)
		pages = o->raw_faults;
	h.len = pages * B_PAGE;
	h.base = mmap(NULL, h.len + B_PAGE, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (h.base == MAP_FAILED) {
		rc = -errno;
		goto out;
	}
	h.uffd = bu_open(false);
	if (h.uffd < 0) {
		rc = h.uffd;
		goto out_unmap;
	}
	rc = bu_register(h.uffd, h.base, h.len + B_PAGE);
	if (rc < 0)
		goto out_close;
	one.touchers = 1;
	plan.base = h.base;
	plan.npages = pages;
	rc = b_plan_build(&plan, ORDER_RANDOM, &one);
	if (rc < 0)
		goto out_close;
	rc = ctl_open(srv, CTL_RAW, o, 0, h.len + (64u << 20), &ctl, &h.fd);
	if (rc < 0)
		goto out_plan;
	c0 = b_proc_cpu_ns();
	t0 = b_now_ns();
	rc = -pthread_create(&h.tid, NULL, raw_handler_main, &h);
	if (rc < 0)
		goto out_ctl;
	rc = b_touch_start(&tp, &plan);
	if (rc == 0)
		b_touch_join(tp, &tr);
	/* Release the handler through the stop page. */
	(void)*(volatile uint8_t *)(h.base + h.len);
	pthread_join(h.tid, NULL);
	c1 = b_proc_cpu_ns();
	if (rc == 0)
		rc = h.rc;
	close(h.fd);
	h.fd = -1;
	if (ctl_finish(ctl, &done) == 0) {
		r->src_cpu_s = done.cpu_ns / 1e9;
		r->src_mem_overhead_mib = done.mem_overhead / 1048576.0;
		if (rc == 0 && done.rc < 0)
			rc = done.rc;
	}
	r->total_s = (tr.t_last_ns - t0) / 1e9;
	r->gbps = (double)h.len / (r->total_s * 1e9);
	r->first_touch_s = tr.t_first_ns ? (tr.t_first_ns - t0) / 1e9 : -1;
	r->dst_cpu_s = (c1 - c0) / 1e9;
	r->dst_lib_cpu_s = h.cpu_ns / 1e9;
	r->bad_pages = tr.bad;
	b_result_fill_lat(r, &tr.lat);
	snprintf(r->note, sizeof(r->note), "%zu faults, one outstanding", pages);
out_ctl:
	if (h.fd >= 0)
		close(h.fd);
	close(ctl);
out_plan:
	b_lat_free(&tr.lat);
	b_plan_free(&plan);
out_close:
	close(h.uffd);
out_unmap:
	munmap(h.base, h.len + B_PAGE);
out:
	r->rc = rc;
	return rc;
}

int serve_raw(int fd, const uint8_t *image, size_t len, uint64_t *served)
{
	for (;;) {
		struct raw_req rq;
		int rc = b_read_all(fd, &rq, sizeof(rq));

		if (rc == -ECONNRESET)
			return 0;	/* the client is done */
		if (rc < 0)
			return rc;
		if (rq.offset % B_PAGE || rq.offset >= len)
			return -EPROTO;
		rc = b_write_all(fd, image + rq.offset, B_PAGE);
		if (rc < 0)
			return rc;
		(*served)++;
	}
}
