/* SPDX-License-Identifier: MIT */
/*
 * The fault thread: reads userfaultfd page-fault messages in batches, turns
 * the first fault on each host page into a REQ entry (one REQ message per
 * batch), wakes faults on pages that landed meanwhile, and after a fatal
 * error holds the faulting threads (BLOCK) or sends them SIGBUS (SIGBUS).
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "uffd_compat.h"

#define FAULT_BATCH 64	/* uffd_msg per read(); also REQ entries per message */

struct fault_batch {
	struct wire_req req[FAULT_BATCH];
	unsigned n;
	bool warned_ptid;
};

/* After a failure in SIGBUS mode, the threads already waiting cannot be
 * enumerated; wake every unreceived range once so they retry the access,
 * fault again and show up as new messages, which get SIGBUS. */
static void wake_unreceived(struct pcopy_dest *d)
{
	unsigned i;

	for (i = 0; i < d->nreg; i++) {
		struct dest_region *r = &d->reg[i];
		uint64_t s = 0, e;

		while ((s = dbm_find(&r->received, s, false)) < r->npages) {
			e = dbm_find(&r->received, s, true);
			place_wake(d, (uintptr_t)r->host + (s << r->shift),
				   (e - s) << r->shift, false);
			s = e;
		}
	}
}

static void sigbus_thread(struct pcopy_dest *d, struct fault_batch *b,
			  const struct uffd_msg *m)
{
	pid_t tid = (pid_t)m->arg.pagefault.feat.ptid;

	if (d->foreign) {
		/* The thread id is another process's: tgkill cannot reach it
		 * (and must not hit one of ours). */
		if (!b->warned_ptid)
			pcopy_log(&d->log, PCOPY_LOG_ERROR,
				  "PCOPY_FAIL_SIGBUS: the faulting threads belong to another process: they stay blocked");
		b->warned_ptid = true;
		return;
	}
	if (!tid) {
		/* The caller's uffd was set up without THREAD_ID. */
		if (!b->warned_ptid)
			pcopy_log(&d->log, PCOPY_LOG_ERROR,
				  "PCOPY_FAIL_SIGBUS: fault messages carry no thread id (UFFD_FEATURE_THREAD_ID off): faulting threads stay blocked");
		b->warned_ptid = true;
		return;
	}
	pcopy_log(&d->log, PCOPY_LOG_DEBUG, "SIGBUS to thread %d (fault at 0x%llx)",
		  (int)tid, (unsigned long long)m->arg.pagefault.address);
	if (syscall(SYS_tgkill, getpid(), tid, SIGBUS) < 0)
		pcopy_log(&d->log, PCOPY_LOG_WARN, "tgkill(%d, SIGBUS): %s",
			  (int)tid, strerror(errno));
}

static void handle_fault(struct pcopy_dest *d, struct fault_batch *b,
			 const struct uffd_msg *m)
{
	uint64_t addr = m->arg.pagefault.address;
	struct dest_region *r = dest_find_region(d, addr);
	uint64_t hp, base;

	DEST_STAT_ADD(d, faults, 1);
	if (!r) {
		pcopy_log(&d->log, PCOPY_LOG_WARN,
			  "fault at 0x%" PRIx64 " outside every region: ignored", addr);
		return;
	}
	hp = (addr - (uintptr_t)r->host) >> r->shift;
	base = (uintptr_t)r->host + (hp << r->shift);
	if (dbm_test(&r->received, hp)) {
		/* Placed between the fault and our read(): the COPY's own
		 * wake-up may have come before this thread slept. */
		place_wake(d, base, r->page_size, true);
		return;
	}
	if (atomic_load_explicit(&d->failed, memory_order_acquire)) {
		if (d->fail_mode == PCOPY_FAIL_SIGBUS)
			sigbus_thread(d, b, m);
		return;	/* BLOCK: the thread waits until destroy */
	}
	if (dbm_test_and_set(&r->requested, hp))
		return;	/* already asked for; its arrival wakes everyone */
	atomic_store_explicit(&d->fault_ns[r->first + hp], pcopy_now_ns(),
			      memory_order_relaxed);
	b->req[b->n++] = (struct wire_req){
		.region = (uint32_t)(r - d->reg),
		.count = (uint32_t)(r->page_size / PCOPY_TARGET_PAGE),
		.offset = hp << r->shift,
	};
}

static void send_batch(struct pcopy_dest *d, struct fault_batch *b)
{
	uint8_t buf[FAULT_BATCH * PCOPY_REQ_ENTRY_SIZE];
	struct wire_hdr h = {
		.magic = PCOPY_WIRE_MAGIC,
		.type = PCOPY_MSG_REQ,
		.count = b->n,
		.length = b->n * PCOPY_REQ_ENTRY_SIZE,
	};
	int rc;

	if (atomic_load_explicit(&d->failed, memory_order_acquire)) {
		b->n = 0;	/* nobody will answer them usefully */
		return;
	}
	wire_req_encode(b->req, b->n, buf);
	rc = dest_send(d, &h, buf, h.length);
	if (rc < 0)
		dest_fail(d, rc,
			  "sending a request for %u host pages to the source: %s (%" PRIu64 " host pages missing)",
			  b->n, strerror(-rc), dest_missing(d));
	DEST_STAT_ADD(d, requests, b->n);
	DEST_STAT_ADD(d, request_msgs, 1);
	b->n = 0;
}

static void pause_1ms(void)
{
	struct timespec ts = { 0, 1000000 };

	nanosleep(&ts, NULL);
}

/*
 * Thread body: runs from pcopy_dest_start until destroy writes stop_efd,
 * even after completion or failure (it must keep holding or signalling the
 * faulting threads). Returns NULL. Fault thread.
 */
void *dest_fault_main(void *arg)
{
	struct pcopy_dest *d = arg;
	struct uffd_msg msg[FAULT_BATCH];
	struct fault_batch b = { .n = 0 };
	bool woke_all = false;
	struct pollfd p[3] = {
		{ .fd = d->uffd, .events = POLLIN },
		{ .fd = d->stop_efd, .events = POLLIN },
		{ .fd = d->kick_efd, .events = POLLIN },
	};

	for (;;) {
		ssize_t n;
		int i;

		if (poll(p, 3, -1) < 0) {
			if (errno != EINTR) {
				pcopy_log(&d->log, PCOPY_LOG_ERROR,
					  "fault thread: poll: %s", strerror(errno));
				pause_1ms();
			}
			continue;
		}
		if (p[1].revents)
			break;
		if (p[2].revents) {
			uint64_t v;

			if (read(d->kick_efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
				pcopy_log(&d->log, PCOPY_LOG_WARN,
					  "fault thread: eventfd read: %s", strerror(errno));
		}
		if (!woke_all && d->fail_mode == PCOPY_FAIL_SIGBUS &&
		    atomic_load_explicit(&d->failed, memory_order_acquire)) {
			woke_all = true;
			wake_unreceived(d);
		}
		if (!(p[0].revents & (POLLIN | POLLERR | POLLHUP)))
			continue;
		n = read(d->uffd, msg, sizeof(msg));
		if (n < 0) {
			if (errno != EAGAIN && errno != EINTR) {
				pcopy_log(&d->log, PCOPY_LOG_ERROR,
					  "fault thread: read(userfaultfd): %s",
					  strerror(errno));
				pause_1ms();
			}
			continue;
		}
		for (i = 0; i < (int)(n / (ssize_t)sizeof(msg[0])); i++) {
			if (msg[i].event != UFFD_EVENT_PAGEFAULT) {
				pcopy_log(&d->log, PCOPY_LOG_DEBUG,
					  "ignoring userfaultfd event %u", msg[i].event);
				continue;
			}
			handle_fault(d, &b, &msg[i]);
		}
		if (b.n)
			send_batch(d, &b);
	}
	return NULL;
}
