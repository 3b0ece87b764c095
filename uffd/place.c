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

#define PLACE_MAX_RETRIES 1000	/* EAGAIN without progress, ~10 us apart */

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

/* Mark hp received (after the ioctl, so a reader of the bit sees a present
 * page), take the latency sample if it was requested, count it. */
static void page_done(struct pcopy_dest *d, struct dest_region *r, uint64_t hp)
{
	if (dbm_test_and_set(&r->received, hp))
		return;	/* cannot happen: the receiver is the only setter */
	if (dbm_test(&r->requested, hp)) {
		/* 0 if the fault thread set `requested` but has not stored
		 * the time yet: that sample is simply lost. */
		uint64_t t = atomic_exchange_explicit(&d->fault_ns[r->first + hp],
						      0, memory_order_relaxed);

		if (t)
			dest_hist_add(&d->st.lat, pcopy_now_ns() - t);
	}
	dest_page_received(d);
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

/*
 * Place host page hp of r from src (page aligned, one host page) or zeros
 * (src NULL). Returns 0 placed, 1 already present (counted as duplicate and
 * woken), or -errno after dest_fail. Receiver thread.
 */
int place_host_page(struct pcopy_dest *d, struct dest_region *r, uint64_t hp,
		    const void *src)
{
	uint64_t dst = (uintptr_t)r->host + (hp << r->shift);
	uint64_t len = r->page_size, done = 0;
	unsigned tries = 0;
	bool zero = src == NULL;
	const char *op;
	long hfree;

	/* hugetlb has no UFFDIO_ZEROPAGE: copy from the read-only zero
	 * mapping, which costs no memory and no memset. */
	if (zero && r->mem == DEST_MEM_HUGETLB) {
		src = d->zero;
		zero = false;
	}
	op = zero ? "UFFDIO_ZEROPAGE" : "UFFDIO_COPY";
	while (done < len) {
		int64_t res;
		int rc, e;

		if (zero) {
			struct uffdio_zeropage z = {
				.range = { .start = dst + done, .len = len - done },
			};

			rc = ioctl(d->uffd, UFFDIO_ZEROPAGE, &z);
			res = z.zeropage;
		} else {
			struct uffdio_copy c = {
				.dst = dst + done,
				.src = (uintptr_t)src + done,
				.len = len - done,
			};

			rc = ioctl(d->uffd, UFFDIO_COPY, &c);
			res = c.copy;
		}
		if (rc == 0)
			break;
		e = errno;
		/* The signed result field carries the progress of a partial
		 * copy (then the ioctl says EAGAIN) or -errno. */
		if (res > 0 && (uint64_t)res <= len - done)
			done += (uint64_t)res;
		switch (e) {
		case EAGAIN:
			DEST_STAT_ADD(d, copy_retries, 1);
			if (res > 0)
				continue;	/* progress: retry at once */
			if (++tries > PLACE_MAX_RETRIES) {
				dest_fail(d, -EAGAIN,
					  "%s region '%s' offset 0x%" PRIx64 ": still EAGAIN after %u retries",
					  op, r->name, hp << r->shift, PLACE_MAX_RETRIES);
				return -EAGAIN;
			}
			tiny_sleep();
			continue;
		case EEXIST:
			if (r->mem == DEST_MEM_HUGETLB) {
				/* We never placed it (received is clear, or
				 * we would not be here): on hugetlb this is
				 * how an empty pool shows up. Trusting it
				 * would leave the faulting threads blocked
				 * on a page that never comes. */
				hfree = hugetlb_free(r->page_size);
				dest_fail(d, -ENOMEM,
					  "hugetlb pool exhausted: UFFDIO_COPY region '%s' offset 0x%" PRIx64 " returned EEXIST for a huge page never placed (free %zu kB huge pages: %ld)",
					  r->name, hp << r->shift, r->page_size / 1024, hfree);
				return -ENOMEM;
			}
			/* Present already (placed by someone else sharing
			 * the memory): fine, but wake whoever waits on it. */
			DEST_STAT_ADD(d, duplicates, 1);
			place_wake(d, dst, len, true);
			page_done(d, r, hp);
			return 1;
		case ENOMEM:
			if (r->mem == DEST_MEM_HUGETLB) {
				hfree = hugetlb_free(r->page_size);
				dest_fail(d, -ENOMEM,
					  "hugetlb pool exhausted: UFFDIO_COPY region '%s' offset 0x%" PRIx64 ": ENOMEM (free %zu kB huge pages: %ld)",
					  r->name, hp << r->shift, r->page_size / 1024, hfree);
				return -ENOMEM;
			}
			dest_fail(d, -ENOMEM, "%s region '%s' offset 0x%" PRIx64 ": out of memory",
				  op, r->name, hp << r->shift);
			return -ENOMEM;
		case ENOENT:
			dest_fail(d, -ENOENT,
				  "%s region '%s' offset 0x%" PRIx64 ": range no longer registered or mapped (unmapped by the application?)",
				  op, r->name, hp << r->shift);
			return -ENOENT;
		case ESRCH:
			dest_fail(d, -ESRCH,
				  "%s region '%s' offset 0x%" PRIx64 ": the address space is gone (process exited?)",
				  op, r->name, hp << r->shift);
			return -ESRCH;
		default:
			dest_fail(d, -e,
				  "%s dst 0x%" PRIx64 " len %" PRIu64 " (region '%s' offset 0x%" PRIx64 "): %s",
				  op, dst + done, len - done, r->name,
				  hp << r->shift, strerror(e));
			return -e;
		}
	}
	page_done(d, r, hp);
	return 0;
}
