/* SPDX-License-Identifier: MIT */
/*
 * Shared by the check_dest* suites: test memory of every type and its
 * expected content, destination set-up, toucher threads, waits on the
 * destination's state, the hugetlb gate (test/hugepool.c) and main().
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/userfaultfd.h>
#include <valgrind/valgrind.h>

#include "common.h"
#include "check_dest_util.h"
#include "hugepool.h"

const char *const mt_name[MT_N] = { "anon", "memfd", "hugetlb" };
const size_t mt_pages[MT_N][NREG] = { { 384, 128 }, { 384, 128 }, { 4, 2 } };

atomic_int g_events, g_event_err;

/* Test-process state, set once in dest_suite_main before any test runs. */
static bool g_huge_ok;		/* enough free huge pages */
static char g_huge_why[256];

/* ------------------------------------------------------------------ */
/* memory and content                                                  */
/* ------------------------------------------------------------------ */

size_t mt_ps(enum mt m)
{
	return m == MT_HUGE ? HUGE_PS : TP;
}

bool mem_alloc(struct mem *m, enum mt t, size_t pages, bool noreserve)
{
	int flags = MAP_SHARED | (noreserve ? MAP_NORESERVE : 0);

	m->ps = mt_ps(t);
	m->len = pages * m->ps;
	m->fd = -1;
	if (t == MT_ANON) {
		m->p = mmap(NULL, m->len, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	} else {
		m->fd = memfd_create("check_dest",
				    MFD_CLOEXEC | (t == MT_HUGE ? MFD_HUGETLB : 0));
		ck_assert_int_ge(m->fd, 0);
		ck_assert_int_eq(ftruncate(m->fd, (off_t)m->len), 0);
		m->p = mmap(NULL, m->len, PROT_READ | PROT_WRITE, flags, m->fd, 0);
	}
	if (m->p == MAP_FAILED) {
		m->p = NULL;
		return false;
	}
	return true;
}

void mem_free(struct mem *m)
{
	if (m->p)
		munmap(m->p, m->len);
	if (m->fd >= 0)
		close(m->fd);
	m->p = NULL;
	m->fd = -1;
}

uint64_t mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* ~25% of host pages are all zero; in huge pages, 25% of the target pages
 * of the others too (mixed host pages). */
bool tp_zero(unsigned r, uint64_t t, unsigned ntp)
{
	if (mix(((uint64_t)r << 48) ^ (t / ntp) ^ 0x5a5a) % 4 == 0)
		return true;
	return ntp > 1 && mix(((uint64_t)r << 48) ^ t ^ 0xa5a5) % 4 == 0;
}

/* Target page t of region r: zeros, a compressible repeated block, or noise. */
void fill_tp(unsigned r, uint64_t t, unsigned ntp, uint8_t *out)
{
	uint64_t s = mix(((uint64_t)r << 48) ^ t), *w = (uint64_t *)out;
	unsigned i;

	if (tp_zero(r, t, ntp)) {
		memset(out, 0, TP);
		return;
	}
	for (i = 0; i < TP / 8; i++)
		w[i] = mix(s + (s % 3 == 0 ? i % 8 : i));
	w[0] |= 1;	/* never all zero */
}

/* /proc/self/pagemap "present": a page nobody placed cannot be mapped
 * (touching it would block in the fault), so this shows what was written. */
bool page_present(const void *addr)
{
	uint64_t e = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pread(fd, &e, 8, (off_t)((uintptr_t)addr / TP) * 8), 8);
	close(fd);
	return (e >> 63) & 1;
}

/* Permissions of the mapping holding addr, e.g. "rw-s", from /proc/self/maps. */
void addr_perms(const void *addr, char perms[8])
{
	FILE *f = fopen("/proc/self/maps", "re");
	unsigned long lo, hi;
	char line[512], p[8];

	strcpy(perms, "????");
	ck_assert_ptr_nonnull(f);
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%lx-%lx %7s", &lo, &hi, p) == 3 &&
		    (uintptr_t)addr >= lo && (uintptr_t)addr < hi) {
			strcpy(perms, p);
			break;
		}
	}
	fclose(f);
}

bool huge_skip(enum mt t)
{
	long avail;

	if (t != MT_HUGE)
		return false;
	if (!g_huge_ok) {
		fprintf(stderr, "SKIP hugetlb case: %s\n", g_huge_why);
		return true;
	}
	/* the pool is global: concurrent test programs may hold it */
	avail = tl_hugetlb_free();
	if (avail < 8) {
		fprintf(stderr, "SKIP hugetlb case: only %ld unreserved 2 MiB pages free (pool in use elsewhere)\n",
			avail);
		return true;
	}
	return false;
}

/* ------------------------------------------------------------------ */
/* destination helpers                                                 */
/* ------------------------------------------------------------------ */

static pthread_mutex_t g_log_lock = PTHREAD_MUTEX_INITIALIZER;

void log_cb(void *opaque, enum pcopy_log_level lvl, const char *msg)
{
	(void)opaque;
	if (lvl > PCOPY_LOG_WARN && !getenv("CHECK_DEST_VERBOSE"))
		return;
	pthread_mutex_lock(&g_log_lock);
	fprintf(stderr, "  [dest %d] %s\n", (int)lvl, msg);
	pthread_mutex_unlock(&g_log_lock);
}

void event_cb(void *opaque, int err)
{
	(void)opaque;
	atomic_fetch_add(&g_events, 1);
	atomic_store(&g_event_err, err);
}

static void regions_of(struct mem *m, unsigned n, struct pcopy_region *rg, char names[][16])
{
	unsigned i;

	for (i = 0; i < n; i++) {
		snprintf(names[i], 16, "ram%u", i);
		rg[i] = (struct pcopy_region){ names[i], m[i].p, m[i].len, m[i].ps };
	}
}

void opts_default(struct pcopy_dest_opts *o)
{
	pcopy_dest_opts_init(o);
	o->log = log_cb;
	o->on_event = event_cb;
	o->handshake_timeout_ms = 5000;
}

bool alloc_regions(struct mem *m, enum mt t, bool noreserve)
{
	unsigned i;

	for (i = 0; i < NREG; i++)
		if (!mem_alloc(&m[i], t, mt_pages[t][i], noreserve)) {
			fprintf(stderr, "SKIP %s: cannot map region %u: %s\n",
				mt_name[t], i, strerror(errno));
			while (i--)
				mem_free(&m[i]);
			return false;
		}
	return true;
}

struct pcopy_dest *dest_new(struct mem *m, unsigned n, struct pcopy_dest_opts *o)
{
	struct pcopy_region rg[NREG];
	char names[NREG][16];
	struct pcopy_dest *d = NULL;

	regions_of(m, n, rg, names);
	ck_assert_int_eq(pcopy_dest_create(&d, rg, n, o), 0);
	ck_assert_ptr_nonnull(d);
	return d;
}

/* Every byte of every target page of region r as expected. */
void verify_region(struct mem *m, unsigned r)
{
	uint8_t want[TP];
	unsigned ntp = (unsigned)(m->ps / TP);
	uint64_t t;

	for (t = 0; t < m->len / TP; t++) {
		fill_tp(r, t, ntp, want);
		if (memcmp(m->p + t * TP, want, TP))
			ck_abort_msg("region %u target page %" PRIu64 " differs", r, t);
	}
}

void *toucher_main(void *arg)
{
	struct toucher *t = arg;
	uint64_t n = 0, i, *idx;
	uint8_t want[TP];
	unsigned r;

	for (r = 0; r < t->nreg; r++)
		n += t->m[r].len / TP;
	idx = malloc(n * sizeof(*idx));
	for (i = 0; i < n; i++)
		idx[i] = t->order == 1 ? n - 1 - i : i;
	if (t->order >= 2) {
		uint64_t s = t->order;

		for (i = n - 1; i > 0; i--) {
			uint64_t j = mix(s++) % (i + 1), x = idx[i];

			idx[i] = idx[j];
			idx[j] = x;
		}
	}
	for (i = 0; i < n; i++) {
		uint64_t k = idx[i];

		for (r = 0; k >= t->m[r].len / TP; r++)
			k -= t->m[r].len / TP;
		fill_tp(r, k, (unsigned)(t->m[r].ps / TP), want);
		if (memcmp(t->m[r].p + k * TP, want, TP))
			atomic_fetch_add(&t->bad, 1);
		atomic_fetch_add(&t->touched, 1);
	}
	free(idx);
	return NULL;
}

/* A fresh userfaultfd: the syscall, else /dev/userfaultfd (valgrind 3.19
 * does not know the syscall). */
int raw_uffd(void)
{
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK), dev;

	if (fd >= 0)
		return fd;
	dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (dev < 0)
		return -1;
	fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
	close(dev);
	return fd;
}

void reset_events(void)
{
	atomic_store(&g_events, 0);
	atomic_store(&g_event_err, 0);
}

/* Wait up to 5 s for d to pause after a break; asserts it did. */
void wait_paused(struct pcopy_dest *d)
{
	uint64_t t0 = pcopy_now_ns();

	while (!pcopy_dest_paused(d) && pcopy_now_ns() - t0 < 5000000000ull &&
	       pcopy_dest_wait(d, 0) == -ETIMEDOUT)
		usleep(1000);
	ck_assert_int_eq(pcopy_dest_paused(d), 1);
}

/* Wait up to 5 s until d has received n host pages; asserts exactly n (the
 * fake sends n, then holds still). *st gets the last stats. */
void wait_received(struct pcopy_dest *d, uint64_t n, struct pcopy_stats *st)
{
	int k;

	for (k = 0; k < 5000; k++) {
		pcopy_dest_stats(d, st);
		if (st->host_pages_received >= n)
			break;
		usleep(1000);
	}
	ck_assert_uint_eq(st->host_pages_received, n);
}

int dest_suite_main(const char *prog, Suite *(*make)(bool vg))
{
	/*
	 * Valgrind 3.19 holds its big lock across a blocking io_uring_enter;
	 * the receiver never makes one (it submits without waiting and sleeps
	 * in poll()), so the runtime runs under valgrind. A thread blocked in
	 * a userfaultfd page fault holds that lock too, though, so under
	 * valgrind only the tests where no thread touches missing memory run.
	 */
	bool vg = RUNNING_ON_VALGRIND;
	SRunner *sr;
	int failed, probe, reserved;

	probe = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
	if (probe < 0)
		probe = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (probe < 0) {
		fprintf(stderr, "SKIP %s: no userfaultfd (%s)\n", prog, strerror(errno));
		return 77;
	}
	close(probe);
	/* some 2 MiB huge pages for the hugetlb cases (raised when root,
	 * put back at exit), else those cases skip */
	reserved = tl_hugetlb_reserve(16, g_huge_why, sizeof(g_huge_why));
	g_huge_ok = reserved >= 0;
	if (!g_huge_ok)
		fprintf(stderr, "hugetlb cases will be skipped: %s\n", g_huge_why);
	if (vg)
		fprintf(stderr, "valgrind: running only the tests where no thread blocks in a "
			"userfaultfd fault (it would hold valgrind's big lock)\n");
	sr = srunner_create(make(vg));
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	if (reserved > 0)
		tl_hugetlb_release();
	return failed ? 1 : 0;
}
