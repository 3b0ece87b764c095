/* SPDX-License-Identifier: MIT */
/*
 * Baseline 1, the floor: what placing the image costs with no network and
 * no faults. memcpy into fresh anonymous memory, and UFFDIO_COPY of the
 * whole image by one thread (4 KiB and 64 KiB per ioctl, and 4 KiB with
 * UFFDIO_ZEROPAGE for zero pages, which is what a page-wise restorer does).
 */
#include "bench.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

enum floor_kind { F_MEMCPY, F_UFFD4K, F_UFFD64K, F_UFFD4K_ZERO, F_COUNT };

static const char *const floor_names[F_COUNT] = {
	"floor_memcpy", "floor_uffd4k", "floor_uffd64k", "floor_uffd4k_zp",
};

static int one_floor(enum floor_kind k, const uint8_t *image, size_t len,
		     struct b_result *r)
{
	uint8_t *dst;
	int uffd = -1, rc = 0;
	uint64_t t0, t1, c0, c1, base;

	memset(r, 0, sizeof(*r));
	snprintf(r->run, sizeof(r->run), "%s", floor_names[k]);
	snprintf(r->order, sizeof(r->order), "-");
	r->first_touch_s = r->hot_s = -1;
	dst = mmap(NULL, len, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (dst == MAP_FAILED)
		return -errno;
	if (k != F_MEMCPY) {
		uffd = bu_open(false);
		if (uffd < 0) {
			rc = uffd;
			goto out;
		}
		rc = bu_register(uffd, dst, len);
		if (rc < 0)
			goto out;
	}
	b_reset_hwm();
	base = b_vm_rss();
	c0 = b_proc_cpu_ns();
	t0 = b_now_ns();
	switch (k) {
	case F_MEMCPY:
		memcpy(dst, image, len);
		break;
	case F_UFFD4K:
	case F_UFFD64K: {
		size_t step = k == F_UFFD4K ? B_PAGE : 16 * B_PAGE;

		for (size_t off = 0; rc == 0 && off < len; off += step)
			rc = bu_copy(uffd, dst + off, image + off,
				     len - off < step ? len - off : step, false);
		break;
	}
	case F_UFFD4K_ZERO:
		for (size_t off = 0; rc == 0 && off < len; off += B_PAGE)
			rc = img_page_is_zero(off / B_PAGE)
				? bu_zeropage(uffd, dst + off, B_PAGE)
				: bu_copy(uffd, dst + off, image + off, B_PAGE, false);
		break;
	default:
		break;
	}
	t1 = b_now_ns();
	c1 = b_proc_cpu_ns();
	r->total_s = (t1 - t0) / 1e9;
	r->gbps = len / ((t1 - t0) / 1e9) / 1e9;
	r->dst_cpu_s = r->dst_lib_cpu_s = (c1 - c0) / 1e9;
	r->mem_overhead_mib = ((double)b_vm_hwm() - (double)base -
			       (double)b_region_rss(dst, len)) / 1048576.0;
	/* Spot-check that the copy did what it says. */
	for (size_t pg = 0; pg < len / B_PAGE; pg += 997)
		if (!img_page_ok(pg, dst + pg * B_PAGE))
			r->bad_pages++;
out:
	r->rc = rc;
	if (uffd >= 0)
		close(uffd);
	munmap(dst, len);
	return rc;
}

/* Best of FLOOR_REPS: on this VM freed guest memory goes back to the host
 * (free page reporting) and the next first touch of it is slow, so one
 * repetition can be 2-3x off; the floor is the best the machine can do. */
#define FLOOR_REPS 3

int run_floor(const struct b_opts *o, const uint8_t *image,
	      struct b_result *res, unsigned *nres)
{
	int rc = 0;

	for (int k = 0; k < F_COUNT && *nres < B_RESULTS_MAX; k++) {
		struct b_result best, cur;
		int r = 0;

		for (int rep = 0; rep < FLOOR_REPS && r == 0; rep++) {
			b_warm_memory(o->image_bytes);
			r = one_floor((enum floor_kind)k, image, o->image_bytes, &cur);
			if (rep == 0 || cur.total_s < best.total_s)
				best = cur;
		}
		if (r < 0) {
			rc = r;
			best = cur;
		}
		snprintf(best.note, sizeof(best.note), "best of %d", FLOOR_REPS);
		res[(*nres)++] = best;
	}
	return rc;
}
