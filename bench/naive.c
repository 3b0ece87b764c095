/* SPDX-License-Identifier: MIT */
/*
 * Baseline 3, the naive handler most VM managers ship: one thread, blocking
 * read() of the userfaultfd, one 4 KiB UFFDIO_COPY per fault from a local
 * mmap of the snapshot file, no background stream. Pages nobody touches never
 * arrive, so its "restore" is only as complete as the touch order.
 */
#include "bench.h"

#include <errno.h>
#include <linux/userfaultfd.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

struct naive_handler {
	pthread_t tid;
	int uffd;
	uint8_t *base;
	const uint8_t *file;		/* the snapshot, mapped */
	size_t len;			/* image; the stop page follows */
	int rc;
	uint64_t cpu_ns, copies;
};

static void *naive_main(void *arg)
{
	struct naive_handler *h = arg;

	for (;;) {
		struct uffd_msg m;
		ssize_t n = read(h->uffd, &m, sizeof(m));
		uint8_t *addr;
		int rc;

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
			h->rc = bu_zeropage(h->uffd, addr, B_PAGE);
			break;
		}
		rc = bu_copy(h->uffd, addr, h->file + (addr - h->base), B_PAGE, false);
		if (rc < 0 && h->rc == 0)
			h->rc = rc;
		h->copies++;
	}
	h->cpu_ns = b_thread_cpu_ns();
	return NULL;
}

int run_naive(const struct b_opts *o, int file_fd, enum b_order ord,
	      struct b_result *r)
{
	size_t len = o->image_bytes;
	struct naive_handler h = { .uffd = -1, .len = len };
	struct b_touch_plan plan = { 0 };
	struct b_touch_result tr;
	struct b_touchers *tp = NULL;
	uint64_t t0, c0, c1, base;
	int rc;

	memset(r, 0, sizeof(*r));
	memset(&tr, 0, sizeof(tr));
	snprintf(r->run, sizeof(r->run), "naive");
	snprintf(r->order, sizeof(r->order), "%s", b_order_name(ord));
	r->touchers = o->touchers;
	r->first_touch_s = r->hot_s = -1;
	h.file = mmap(NULL, len, PROT_READ, MAP_SHARED, file_fd, 0);
	if (h.file == MAP_FAILED) {
		rc = -errno;
		goto out;
	}
	h.base = mmap(NULL, len + B_PAGE, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (h.base == MAP_FAILED) {
		rc = -errno;
		goto out_file;
	}
	h.uffd = bu_open(false);
	if (h.uffd < 0) {
		rc = h.uffd;
		goto out_unmap;
	}
	rc = bu_register(h.uffd, h.base, len + B_PAGE);
	if (rc < 0)
		goto out_close;
	plan.base = h.base;
	plan.npages = len / B_PAGE;
	rc = b_plan_build(&plan, ord, o);
	if (rc < 0)
		goto out_close;
	b_reset_hwm();
	base = b_vm_rss();
	c0 = b_proc_cpu_ns();
	t0 = b_now_ns();
	rc = -pthread_create(&h.tid, NULL, naive_main, &h);
	if (rc < 0)
		goto out_plan;
	rc = b_touch_start(&tp, &plan);
	if (rc == 0)
		b_touch_join(tp, &tr);
	(void)*(volatile uint8_t *)(h.base + len);	/* stop the handler */
	pthread_join(h.tid, NULL);
	c1 = b_proc_cpu_ns();
	if (rc == 0)
		rc = h.rc;
	r->total_s = ((tr.t_last_ns ? tr.t_last_ns : b_now_ns()) - t0) / 1e9;
	if (ord == ORDER_HOT)
		r->hot_s = r->total_s;
	r->first_touch_s = tr.t_first_ns ? (tr.t_first_ns - t0) / 1e9 : -1;
	r->gbps = (double)tr.touched * B_PAGE / (r->total_s * 1e9);
	r->dst_cpu_s = (c1 - c0) / 1e9;
	r->dst_lib_cpu_s = h.cpu_ns / 1e9;
	/* Bench-owned memory: the latency arrays, T * touched pages * 4 B. */
	r->mem_overhead_mib = ((double)b_vm_hwm() - (double)base -
			       (double)b_region_rss(h.base, len + B_PAGE) -
			       (double)plan.threads * plan.norder * 4) / 1048576.0;
	r->bad_pages = tr.bad;
	b_result_fill_lat(r, &tr.lat);
	snprintf(r->note, sizeof(r->note), "%llu of %zu pages placed (no background)",
		 (unsigned long long)h.copies, len / B_PAGE);
out_plan:
	b_lat_free(&tr.lat);
	b_plan_free(&plan);
out_close:
	close(h.uffd);
out_unmap:
	munmap(h.base, len + B_PAGE);
out_file:
	munmap((void *)h.file, len);
out:
	r->rc = rc;
	return rc;
}
