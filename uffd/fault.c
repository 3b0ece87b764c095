/* SPDX-License-Identifier: MIT */
/*
 * The fault thread: drains userfaultfd messages (events first), turns the
 * first fault on each host page into a REQ entry (one REQ message per batch,
 * on the urgent connection if any), reads and places the answers that come
 * back on the urgent connection (urgent.c), wakes faults on pages that
 * landed meanwhile, zero-fills removed pages, and after a fatal error holds
 * the faulting threads (BLOCK) or sends them SIGBUS (SIGBUS).
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "uffd_compat.h"

#define FAULT_MSGS 256	/* uffd_msg held between two resolutions */
#define FAULT_BATCH 256	/* REQ entries per message */

struct fault_batch {
	struct wire_req req[FAULT_BATCH];
	unsigned n;
	bool warned_ptid;
};

/* Faults read but not resolved yet (they wait for an event to be read). */
struct fault_queue {
	struct uffd_msg m[FAULT_MSGS];
	unsigned n;
	struct fault_batch *b;
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

static void pause_1ms(void)
{
	struct timespec ts = { 0, 1000000 };

	nanosleep(&ts, NULL);
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
	/* Counted first: the answer may be placed (and its latency sampled)
	 * before urg_send returns here. */
	DEST_STAT_ADD(d, requests, b->n);
	DEST_STAT_ADD(d, request_msgs, 1);
	/* The urgent connection when there is one: its answers do not queue
	 * behind background data. */
	rc = urg_send(d, &h, buf, h.length);
	/* -ENOTCONN: paused; another error: the send shut the connection
	 * down and the receiver pauses. Either way the `requested` bits keep
	 * these pages, and a resume sends them again. */
	if (rc < 0 && rc != -ENOTCONN)
		pcopy_log(&d->log, PCOPY_LOG_DEBUG,
			  "sending a request for %u host pages: %s (resent after a resume)",
			  b->n, strerror(-rc));
	b->n = 0;
}

/* Returns 0, or -EAGAIN if an unread event must be drained first. */
static int handle_fault(struct pcopy_dest *d, struct fault_batch *b,
			const struct uffd_msg *m)
{
	uint64_t addr = m->arg.pagefault.address;
	struct dest_region *r = dest_find_region(d, addr);
	uint64_t hp, base;

	if (!r) {
		pcopy_log(&d->log, PCOPY_LOG_WARN,
			  "fault at 0x%" PRIx64 " outside every region: ignored", addr);
		return 0;
	}
	hp = (addr - (uintptr_t)r->host) >> r->shift;
	base = (uintptr_t)r->host + (hp << r->shift);
	if (dbm_test(&r->removed, hp))
		/* Removed by the application (balloon): zeros, locally. */
		return ev_zero_fill(d, r, hp);
	if (dbm_test(&r->received, hp)) {
		/* Placed between the fault and our read(): the COPY's own
		 * wake-up may have come before this thread slept. */
		place_wake(d, base, r->page_size, true);
		return 0;
	}
	if (atomic_load_explicit(&d->failed, memory_order_acquire)) {
		if (d->fail_mode == PCOPY_FAIL_SIGBUS)
			sigbus_thread(d, b, m);
		return 0;	/* BLOCK: the thread waits until destroy */
	}
	if (dbm_test_and_set(&r->requested, hp))
		return 0;	/* already asked for; its arrival wakes everyone */
	atomic_store_explicit(&d->fault_ns[r->first + hp], pcopy_now_ns(),
			      memory_order_relaxed);
	if (dbm_test(&r->received, hp)) {
		/* Landed just now, maybe placed with DONTWAKE before the
		 * receiver could see our `requested` bit. */
		place_wake(d, base, r->page_size, true);
		return 0;
	}
	b->req[b->n++] = (struct wire_req){
		.region = (uint32_t)(r - d->reg),
		.count = (uint32_t)(r->page_size / PCOPY_TARGET_PAGE),
		.offset = hp << r->shift,
	};
	if (b->n == FAULT_BATCH)
		send_batch(d, b);
	return 0;
}

/*
 * Read every message available, handling events (REMOVE, UNMAP, ...) at
 * once and queueing faults behind *nf: the kernel hands out pending faults
 * before events, and while a REMOVE is unread UFFDIO_COPY/ZEROPAGE fail
 * with EAGAIN, so no fault is resolved before everything was read.
 * Returns true if the last read filled the buffer (there may be more).
 */
static bool drain(struct pcopy_dest *d, struct uffd_msg *faults, unsigned *nf)
{
	struct uffd_msg msg[32];
	bool more = false;
	int i;

	while (*nf + 32 <= FAULT_MSGS) {
		ssize_t n = read(d->uffd, msg, sizeof(msg));

		more = false;
		if (n <= 0) {
			if (n < 0 && errno != EAGAIN && errno != EINTR) {
				pcopy_log(&d->log, PCOPY_LOG_ERROR,
					  "fault thread: read(userfaultfd): %s",
					  strerror(errno));
				pause_1ms();
			}
			break;
		}
		for (i = 0; i < (int)(n / (ssize_t)sizeof(msg[0])); i++) {
			if (msg[i].event == UFFD_EVENT_PAGEFAULT) {
				DEST_STAT_ADD(d, faults, 1);
				faults[(*nf)++] = msg[i];
			} else {
				ev_handle(d, &msg[i]);
			}
		}
		more = (size_t)n == sizeof(msg);
		if (!more)
			break;
	}
	return more;
}

/* Resolve the queued faults; those that meet an unread event go back to the
 * queue and wait for the next drain. */
static void resolve(struct pcopy_dest *d, struct fault_batch *b,
		    struct uffd_msg *faults, unsigned *nf)
{
	unsigned i, keep = 0;

	for (i = 0; i < *nf; i++)
		if (handle_fault(d, b, &faults[i]) == -EAGAIN)
			faults[keep++] = faults[i];
	*nf = keep;
	if (b->n)
		send_batch(d, b);
}

/*
 * Placement of an urgent page met EAGAIN: an event (REMOVE, ...) is unread,
 * and this thread is the one that reads them. Read them now (faults join the
 * queue; a full queue is resolved first, which only requests or wakes).
 */
static void fault_again(struct pcopy_dest *d, void *arg)
{
	struct fault_queue *q = arg;

	if (q->n + 32 > FAULT_MSGS)
		resolve(d, q->b, q->m, &q->n);
	drain(d, q->m, &q->n);
}

/*
 * The fault thread waits twice per fault (for the fault, for the answer):
 * epoll keeps the four fds registered instead of setting up four wait
 * queues per poll(). poll() stays as the fallback when epoll fails.
 */
struct fault_wait {
	int ep;		/* -1: use poll() */
	int reg;	/* urgent fd registered, -1: none */
};

static void fwait_init(struct pcopy_dest *d, struct fault_wait *w)
{
	const int fds[3] = { d->uffd, d->stop_efd, d->kick_efd };
	unsigned i;

	w->reg = -1;
	w->ep = epoll_create1(EPOLL_CLOEXEC);
	for (i = 0; i < 3 && w->ep >= 0; i++) {
		struct epoll_event ev = { .events = EPOLLIN, .data.u32 = i };

		if (epoll_ctl(w->ep, EPOLL_CTL_ADD, fds[i], &ev) < 0) {
			close(w->ep);
			w->ep = -1;
		}
	}
}

/* Watch urgent fd `fd` (-1: none). `changed`: the connection may have been
 * replaced by one with the same number (a closed fd leaves epoll by itself,
 * its successor is not in it). */
static void fwait_urgent(struct fault_wait *w, int fd, bool changed)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.u32 = 3 };

	if (w->ep < 0 || (fd == w->reg && !changed))
		return;
	if (w->reg >= 0)	/* EBADF/ENOENT if it was closed: fine */
		(void)epoll_ctl(w->ep, EPOLL_CTL_DEL, w->reg, NULL);
	w->reg = -1;
	if (fd >= 0 && epoll_ctl(w->ep, EPOLL_CTL_ADD, fd, &ev) == 0)
		w->reg = fd;
}

/* Fill p[i].revents like poll() would. Returns poll()'s result. */
static int fwait(struct fault_wait *w, struct pollfd *p, int timeout)
{
	struct epoll_event ev[4];
	int n, i;

	if (w->ep < 0 || w->reg != p[3].fd)
		return poll(p, 4, timeout);
	n = epoll_wait(w->ep, ev, 4, timeout);
	for (i = 0; i < 4; i++)
		p[i].revents = 0;
	for (i = 0; i < n; i++)
		if (ev[i].data.u32 < 4)
			p[ev[i].data.u32].revents = (short)ev[i].events;
	return n;
}

/*
 * Thread body: runs from pcopy_dest_start until destroy writes stop_efd,
 * even after completion or failure (it must keep holding or signalling the
 * faulting threads, and reading events). Returns NULL. Fault thread.
 */
void *dest_fault_main(void *arg)
{
	struct pcopy_dest *d = arg;
	struct fault_batch b = { .n = 0 };
	struct fault_queue q = { .n = 0, .b = &b };
	struct uffd_msg *faults = q.m;
	unsigned *nfp = &q.n;
	bool woke_all = false, sync = true;
	struct fault_wait w;
	struct pollfd p[4] = {
		{ .fd = d->uffd, .events = POLLIN },
		{ .fd = d->stop_efd, .events = POLLIN },
		{ .fd = d->kick_efd, .events = POLLIN },
		{ .fd = -1, .events = POLLIN },
	};

	atomic_store(&d->fault_tid, (int)syscall(SYS_gettid));
	(void)pthread_setname_np(pthread_self(), "pcopy-fault");	/* top -H, perf */
	d->conn[DEST_URGENT].on_again = fault_again;
	d->conn[DEST_URGENT].again_arg = &q;
	fwait_init(d, &w);
	for (;;) {
		if (sync)
			urg_sync(d);
		p[3].fd = urg_fd(d);
		fwait_urgent(&w, p[3].fd, sync);
		sync = false;
		/* Faults waiting on an unread event: look again soon. */
		if (fwait(&w, p, *nfp ? 1 : -1) < 0) {
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
			sync = true;	/* an urgent connection came or went */
		}
		/* Answers first: a queued fault on a page placed now only
		 * needs a wake, not a request. */
		if (p[3].fd >= 0 && p[3].revents)
			urg_input(d);
		if (!woke_all && d->fail_mode == PCOPY_FAIL_SIGBUS &&
		    atomic_load_explicit(&d->failed, memory_order_acquire)) {
			woke_all = true;
			wake_unreceived(d);
		}
		if ((p[0].revents & (POLLIN | POLLERR | POLLHUP)) || *nfp) {
			while (drain(d, faults, nfp) && *nfp < FAULT_MSGS - 32)
				;
			resolve(d, &b, faults, nfp);
		}
	}
	if (w.ep >= 0)
		close(w.ep);
	return NULL;
}
