/* SPDX-License-Identifier: MIT */
/*
 * Placing host pages: UFFDIO_COPY / UFFDIO_ZEROPAGE with every result the
 * kernel can give (partial copies, EAGAIN, EEXIST, a vanished address
 * space), and UFFDIO_WAKE for faults on pages that are already present.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "uffd_compat.h"


/* UFFDIO_WAKE [addr, addr+len); counted in stats.wakes if `present` (the
 * statistic is about pages found present). Returns 0 or -errno (logged).
 * Any thread. */
int place_wake(struct pcopy_dest *d, uint64_t addr, uint64_t len, bool present)
{
	struct uffdio_range rg = { .start = addr, .len = len };

	if (ioctl(d->uffd, UFFDIO_WAKE, &rg) < 0) {
		int e = errno;

		pcopy_log(&d->log, PCOPY_LOG_WARN, "UFFDIO_WAKE 0x%" PRIx64 " +%" PRIu64 ": %s",
			  addr, len, strerror(e));
		return -e;
	}
	if (present)
		DEST_STAT_ADD(d, wakes, 1);
	return 0;
}

/*
 * Host pages [hp, hp + n) of r are in place: mark them received (after the
 * ioctl, so a reader of the bit sees a present page), take latency samples
 * of requested ones, count them. Returns true if a page was requested:
 * placed with DONTWAKE, its waiters need a UFFDIO_WAKE. The fault thread
 * sets `requested` before re-reading `received` (seq_cst on both sides), so
 * either it sees the page present or we see the request.
 */
static bool pages_done(struct pcopy_dest *d, struct dest_region *r, uint64_t hp,
		       uint64_t n)
{
	uint64_t i, fresh = 0, now = 0;
	bool req = false;

	for (i = hp; i < hp + n; i++) {
		if (dbm_test_and_set(&r->received, i))
			continue;	/* removed meanwhile: counted there */
		fresh++;
		if (dbm_test(&r->requested, i)) {
			/* 0 if the fault thread set `requested` but has not
			 * stored the time yet: that sample is lost. */
			uint64_t t = atomic_exchange_explicit(&d->fault_ns[r->first + i],
							      0, memory_order_relaxed);

			req = true;
			if (t) {
				if (!now)
					now = pcopy_now_ns();
				dest_hist_add(&d->st.lat, now - t);
			}
		}
	}
	dest_pages_received(d, fresh);
	return req;
}

/* Free huge pages of this size, or -1 if unknown; for the error message. */
static long hugetlb_free(size_t page_size)
{
	char path[96];
	long v = -1;
	FILE *f;

	snprintf(path, sizeof(path),
		 "/sys/kernel/mm/hugepages/hugepages-%zukB/free_hugepages",
		 page_size / 1024);
	f = fopen(path, "re");
	if (!f)
		return -1;
	if (fscanf(f, "%ld", &v) != 1)
		v = -1;
	fclose(f);
	return v;
}

static void tiny_sleep(void)
{
	struct timespec ts = { 0, 10000 };

	nanosleep(&ts, NULL);
}

/* Nothing left to place here: removed by the application, or placed by
 * the other placer meanwhile. */
static bool settled(const struct dest_region *r, uint64_t hp)
{
	return dbm_test(&r->received, hp) || dbm_test(&r->removed, hp);
}

/* EAGAIN without progress: the mm is changing (a REMOVE/UNMAP event not
 * yet read by the fault thread) or a transient failure. How long to retry. */
#define PLACE_EAGAIN_NS (5ull * 1000000000ull)

/*
 * Place host pages [hp, hp + n) of r from src (page aligned, n host pages)
 * or zeros (src NULL), with one ioctl where the kernel allows. `wake`: the
 * ioctl wakes waiters; else DONTWAKE and one UFFDIO_WAKE only if a page
 * turns out requested. Returns 0 or -errno after dest_fail. Thread owning
 * c (the receiver, or the fault thread for the urgent connection).
 */
static int place_range(struct pcopy_dest *d, struct dest_region *r, uint64_t hp,
		       uint64_t n, const void *src, bool wake, struct dest_conn *c)
{
	uint64_t dst = (uintptr_t)r->host + (hp << r->shift);
	uint64_t len = n << r->shift, done = 0, t_again = 0;
	bool zero = src == NULL, need_wake = false;
	const char *op;
	long hfree;
	int ret;

	/* hugetlb has no UFFDIO_ZEROPAGE: copy from the read-only zero
	 * mapping (one huge page), which costs no memory and no memset. */
	if (zero && r->mem == DEST_MEM_HUGETLB) {
		uint64_t i;

		for (i = 0; i < n; i++) {
			int rc = place_range(d, r, hp + i, 1, d->zero, wake, c);

			if (rc < 0)
				return rc;
		}
		return 0;
	}
	op = zero ? "UFFDIO_ZEROPAGE" : "UFFDIO_COPY";
	while (done < len) {
		uint64_t pg = hp + (done >> r->shift);
		int64_t res;
		int rc, e;

		if (zero) {
			struct uffdio_zeropage z = {
				.range = { .start = dst + done, .len = len - done },
				.mode = wake ? 0 : UFFDIO_ZEROPAGE_MODE_DONTWAKE,
			};

			rc = ioctl(d->uffd, UFFDIO_ZEROPAGE, &z);
			res = z.zeropage;
		} else {
			struct uffdio_copy cp = {
				.dst = dst + done,
				.src = (uintptr_t)src + done,
				.len = len - done,
				.mode = wake ? 0 : UFFDIO_COPY_MODE_DONTWAKE,
			};

			rc = ioctl(d->uffd, UFFDIO_COPY, &cp);
			res = cp.copy;
		}
		if (rc == 0) {
			need_wake |= pages_done(d, r, pg, (len - done) >> r->shift);
			done = len;
			break;
		}
		e = errno;
		/* The signed result field carries the progress of a partial
		 * copy (then the ioctl says EAGAIN) or -errno. Progress is
		 * whole pages except on hugetlb mid-failure: round down. */
		if (res > 0 && (uint64_t)res <= len - done) {
			uint64_t whole = ((uint64_t)res >> r->shift) << r->shift;

			need_wake |= pages_done(d, r, pg, whole >> r->shift);
			done += whole;
			pg = hp + (done >> r->shift);
			if (whole)
				t_again = 0;
		}
		switch (e) {
		case EAGAIN:
			DEST_STAT_ADD(d, copy_retries, 1);
			if (res > 0)
				continue;	/* progress: retry at once */
			if (!t_again)
				t_again = pcopy_now_ns();
			if (atomic_load(&d->stopping)) {
				ret = -ECANCELED;
				goto out;
			}
			if (pcopy_now_ns() - t_again > PLACE_EAGAIN_NS) {
				dest_fail(d, -EAGAIN,
					  "%s region '%s' offset 0x%" PRIx64 ": still EAGAIN after %llu s",
					  op, r->name, pg << r->shift,
					  PLACE_EAGAIN_NS / 1000000000ull);
				ret = -EAGAIN;
				goto out;
			}
			/* The fault thread reads the pending event (here, if
			 * it is the one placing); pages it marks removed, or
			 * the other placer placed, are skipped on the next
			 * pass. */
			if (c->on_again)
				c->on_again(d, c->again_arg);
			tiny_sleep();
			while (done < len && settled(r, hp + (done >> r->shift))) {
				DEST_STAT_ADD(d, duplicates, 1);
				done += r->page_size;
			}
			continue;
		case EEXIST:
			if (r->mem == DEST_MEM_HUGETLB &&
			    !dbm_test(&r->received, pg) && !dbm_test(&r->removed, pg)) {
				/* We never placed it and it was not removed:
				 * on hugetlb this is how an empty pool shows
				 * up. Trusting it would leave the faulting
				 * threads blocked on a page that never comes. */
				hfree = hugetlb_free(r->page_size);
				dest_fail(d, -ENOMEM,
					  "hugetlb pool exhausted: UFFDIO_COPY region '%s' offset 0x%" PRIx64 " returned EEXIST for a huge page never placed (free %zu kB huge pages: %ld)",
					  r->name, pg << r->shift, r->page_size / 1024, hfree);
				ret = -ENOMEM;
				goto out;
			}
			/* Present already (placed by someone else sharing
			 * the memory, or zero-filled after a REMOVE): fine,
			 * but wake whoever waits on it. */
			DEST_STAT_ADD(d, duplicates, 1);
			place_wake(d, dst + done, r->page_size, true);
			pages_done(d, r, pg, 1);
			done += r->page_size;
			continue;
		case ENOMEM:
			if (r->mem == DEST_MEM_HUGETLB) {
				hfree = hugetlb_free(r->page_size);
				dest_fail(d, -ENOMEM,
					  "hugetlb pool exhausted: UFFDIO_COPY region '%s' offset 0x%" PRIx64 ": ENOMEM (free %zu kB huge pages: %ld)",
					  r->name, pg << r->shift, r->page_size / 1024, hfree);
				ret = -ENOMEM;
				goto out;
			}
			dest_fail(d, -ENOMEM, "%s region '%s' offset 0x%" PRIx64 ": out of memory",
				  op, r->name, pg << r->shift);
			ret = -ENOMEM;
			goto out;
		case ENOENT:
			/* Unmapped by the application (announced), or placed
			 * by the other placer (receiver / fault thread), whose
			 * last page completed the restore and unregistered
			 * the memory: nothing left to do for this page. */
			if (settled(r, pg)) {
				DEST_STAT_ADD(d, duplicates, 1);
				done += r->page_size;
				continue;
			}
			dest_fail(d, -ENOENT,
				  "%s region '%s' offset 0x%" PRIx64 ": range no longer registered or mapped (unmapped by the application?)",
				  op, r->name, pg << r->shift);
			ret = -ENOENT;
			goto out;
		case ESRCH:
			dest_fail(d, -ESRCH,
				  "%s region '%s' offset 0x%" PRIx64 ": the address space is gone (process exited?)",
				  op, r->name, pg << r->shift);
			ret = -ESRCH;
			goto out;
		default:
			dest_fail(d, -e,
				  "%s dst 0x%" PRIx64 " len %" PRIu64 " (region '%s' offset 0x%" PRIx64 "): %s",
				  op, dst + done, len - done, r->name,
				  pg << r->shift, strerror(e));
			ret = -e;
			goto out;
		}
	}
	ret = 0;
out:
	/* After an error too: the pages placed before it with DONTWAKE are
	 * received, so nothing else wakes their waiters (wake_unreceived
	 * skips them). */
	if (!wake && need_wake && done)
		place_wake(d, dst, done, false);
	return ret;
}

/* Not received, not removed, and (hugetlb) claimed by this thread: the
 * claim is kept, the page is placed or the restore fails. */
static bool placeable(struct dest_region *r, uint64_t hp)
{
	if (dbm_test(&r->received, hp) || dbm_test(&r->removed, hp))
		return false;
	return !r->placing.w || !dbm_test_and_set(&r->placing, hp);
}

/*
 * Place c's run and empty it; pages received or removed since they joined
 * it are skipped (counted as duplicates). Returns 0 or -errno after
 * dest_fail. Thread owning c.
 */
int place_run(struct pcopy_dest *d, struct dest_conn *c)
{
	struct dest_run run = c->run;
	struct dest_region *r = &d->reg[run.region];
	uint64_t i = 0, j;
	int rc;

	c->run.n = 0;
	c->run.wanted = false;
	while (i < run.n) {
		if (!placeable(r, run.hp + i)) {
			DEST_STAT_ADD(d, duplicates, 1);
			i++;
			continue;
		}
		for (j = i + 1; j < run.n && placeable(r, run.hp + j); j++)
			;
		rc = place_range(d, r, run.hp + i, j - i,
				 run.zero ? NULL : c->staging + (i << r->shift),
				 run.wanted, c);
		if (rc < 0)
			return rc;
		i = j;
	}
	return 0;
}
