/* SPDX-License-Identifier: MIT */
/*
 * userfaultfd events other than page faults (PCOPY_DEST_HANDLE_REMOVE, the
 * Firecracker balloon case): ranges the application removed read back as
 * zeros, are never fetched, and count as received. Fault thread only.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "uffd_compat.h"

#ifndef UFFD_EVENT_FORK
#define UFFD_EVENT_FORK 0x13
#endif
#ifndef UFFD_EVENT_REMAP
#define UFFD_EVENT_REMAP 0x14
#endif
#ifndef UFFD_EVENT_REMOVE
#define UFFD_EVENT_REMOVE 0x15
#endif
#ifndef UFFD_EVENT_UNMAP
#define UFFD_EVENT_UNMAP 0x16
#endif

/*
 * Mark the host pages of [start, end) removed in every region it touches.
 * A host page partly inside counts whole: the kernel zaps hugetlb ranges in
 * whole huge pages anyway. Pages not received yet become received: the
 * source's copy is stale, and the restore must still complete.
 */
static void mark_removed(struct pcopy_dest *d, uint64_t start, uint64_t end,
			 const char *why)
{
	uint64_t fresh = 0, marked = 0;
	unsigned i;

	for (i = 0; i < d->nreg; i++) {
		struct dest_region *r = &d->reg[i];
		uint64_t lo = (uintptr_t)r->host, hi = lo + r->length, a, b, hp;

		if (end <= lo || start >= hi)
			continue;
		a = (start > lo ? start : lo) - lo;
		b = (end < hi ? end : hi) - lo;
		for (hp = a >> r->shift; hp < (b + r->page_size - 1) >> r->shift; hp++) {
			dbm_test_and_set(&r->removed, hp);
			marked++;
			if (!dbm_test_and_set(&r->received, hp))
				fresh++;
		}
		/* Threads blocked on a page of the range would wait for a
		 * page that is now dropped on arrival: wake them, they fault
		 * again and get zeros. */
		a = (a >> r->shift) << r->shift;
		b = ((b + r->page_size - 1) >> r->shift) << r->shift;
		place_wake(d, lo + a, b - a, false);
	}
	pcopy_log(&d->log, PCOPY_LOG_DEBUG,
		  "%s [0x%" PRIx64 ", 0x%" PRIx64 "): %" PRIu64 " host pages removed, %" PRIu64 " of them never received",
		  why, start, end, marked, fresh);
	dest_pages_received(d, fresh);
}

/* A non-fault message. Fault thread. */
void ev_handle(struct pcopy_dest *d, const struct uffd_msg *m)
{
	switch (m->event) {
	case UFFD_EVENT_REMOVE:
		mark_removed(d, m->arg.remove.start, m->arg.remove.end, "REMOVE");
		break;
	case UFFD_EVENT_UNMAP:
		/* Nothing can fault there any more; whatever is mapped there
		 * later is not ours to restore. */
		mark_removed(d, m->arg.remove.start, m->arg.remove.end, "UNMAP");
		break;
	case UFFD_EVENT_REMAP:
		pcopy_log(&d->log, PCOPY_LOG_ERROR,
			  "mremap of restored memory [0x%llx, +%llu) to 0x%llx is not supported: the old range is treated as removed and the new one is not restored",
			  (unsigned long long)m->arg.remap.from,
			  (unsigned long long)m->arg.remap.len,
			  (unsigned long long)m->arg.remap.to);
		mark_removed(d, m->arg.remap.from, m->arg.remap.from + m->arg.remap.len,
			     "REMAP");
		break;
	case UFFD_EVENT_FORK:
		/* We never ask for fork events; a caller's uffd might. The
		 * child's memory is not ours: close its new uffd, so the
		 * child's faults are not left waiting on it. */
		pcopy_log(&d->log, PCOPY_LOG_WARN,
			  "fork of the restored process: the child's copy is not restored");
		if ((int)m->arg.fork.ufd >= 0)
			close((int)m->arg.fork.ufd);
		break;
	default:
		pcopy_log(&d->log, PCOPY_LOG_DEBUG, "ignoring userfaultfd event 0x%x",
			  m->event);
	}
}

/*
 * A fault on a removed host page: zeros, as after MADV_DONTNEED, never a
 * request. Returns 0, or -EAGAIN while an event is unread (the caller drains
 * and retries). Fault thread.
 */
int ev_zero_fill(struct pcopy_dest *d, struct dest_region *r, uint64_t hp)
{
	uint64_t dst = (uintptr_t)r->host + (hp << r->shift);
	int rc;

	if (r->mem == DEST_MEM_HUGETLB) {
		/* no UFFDIO_ZEROPAGE on hugetlb: copy the zero mapping */
		struct uffdio_copy c = { .dst = dst, .src = (uintptr_t)d->zero,
					 .len = r->page_size };

		rc = ioctl(d->uffd, UFFDIO_COPY, &c);
	} else {
		struct uffdio_zeropage z = { .range = { dst, r->page_size } };

		rc = ioctl(d->uffd, UFFDIO_ZEROPAGE, &z);
	}
	if (rc == 0)
		return 0;
	switch (errno) {
	case EAGAIN:
		DEST_STAT_ADD(d, copy_retries, 1);
		return -EAGAIN;
	case EEXIST:
		place_wake(d, dst, r->page_size, true);
		return 0;
	case ENOENT:
	case ESRCH:
		return 0;	/* unmapped, or the process is gone */
	default:
		pcopy_log(&d->log, PCOPY_LOG_WARN,
			  "zero-filling removed page region '%s' offset 0x%" PRIx64 ": %s",
			  r->name, hp << r->shift, strerror(errno));
		return 0;
	}
}
