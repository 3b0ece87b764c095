/* SPDX-License-Identifier: MIT */
/*
 * Shared by the check_dest* suites (test/check_dest_util.c): test memory of
 * every type, its expected content, destination set-up, toucher threads, the
 * hugetlb gate and the common main().
 */
#ifndef PCOPY_TEST_CHECK_DEST_UTIL_H
#define PCOPY_TEST_CHECK_DEST_UTIL_H

#include <check.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>

#include "postcopy.h"

#define TP 4096u
#define HUGE_PS (2u << 20)
#define NREG 2
#define FEAT_ALL (PCOPY_FEAT_ZLIB | PCOPY_FEAT_URGENT | PCOPY_FEAT_RESUME)

enum mt { MT_ANON, MT_MEMFD, MT_HUGE, MT_N };
extern const char *const mt_name[MT_N];
/* Host pages per region, per memory type (region 0, region 1). */
extern const size_t mt_pages[MT_N][NREG];

/* Counted by event_cb; reset before every test by reset_events(). */
extern atomic_int g_events, g_event_err;

struct mem {
	uint8_t *p;
	size_t len, ps;
	int fd;
};

struct toucher {
	struct mem *m;
	unsigned nreg;
	unsigned order;		/* 0 sequential, 1 reverse, 2+ random */
	atomic_uint_fast64_t bad, touched;
	pthread_t thr;
};

/*
 * Test-side helpers; any test thread may call them unless said otherwise.
 * Functions that assert (ck_assert) run in a test's process only.
 */

/* Host page size of memory type m. */
size_t mt_ps(enum mt m);
/* Map `pages` host pages of type t; false if the mapping failed. */
bool mem_alloc(struct mem *m, enum mt t, size_t pages, bool noreserve);
void mem_free(struct mem *m);
/* Content: a bit mixer; whether target page t of region r is all zero;
 * target page t of region r into out (TP bytes). */
uint64_t mix(uint64_t x);
bool tp_zero(unsigned r, uint64_t t, unsigned ntp);
void fill_tp(unsigned r, uint64_t t, unsigned ntp, uint8_t *out);
/* Whether the page at addr is mapped (/proc/self/pagemap), without
 * touching it. */
bool page_present(const void *addr);
/* Permissions of the mapping holding addr, e.g. "rw-s". */
void addr_perms(const void *addr, char perms[8]);
/* True (after printing "SKIP ... reason") if t is hugetlb and the pool
 * is not usable now. */
bool huge_skip(enum mt t);

/* Library callbacks: log to stderr (warnings and errors, everything with
 * CHECK_DEST_VERBOSE set); count events into g_events / g_event_err. */
void log_cb(void *opaque, enum pcopy_log_level lvl, const char *msg);
void event_cb(void *opaque, int err);
/* Checked fixture: zero g_events and g_event_err. */
void reset_events(void);
/* Options with log_cb, event_cb and a 5 s handshake timeout. */
void opts_default(struct pcopy_dest_opts *o);
/* Both regions of type t; false (after a SKIP line) if they cannot be mapped. */
bool alloc_regions(struct mem *m, enum mt t, bool noreserve);
/* A destination for the n regions of m (asserted to succeed). */
struct pcopy_dest *dest_new(struct mem *m, unsigned n, struct pcopy_dest_opts *o);
/* Asserts every byte of region r is the source's. */
void verify_region(struct mem *m, unsigned r);
/* Thread body: touch and check every target page (struct toucher). */
void *toucher_main(void *arg);
/* A fresh userfaultfd (syscall, else /dev/userfaultfd), -1 if none. */
int raw_uffd(void);
/* Asserts d pauses within 5 s (a break with resume on). */
void wait_paused(struct pcopy_dest *d);
/* Asserts d has received exactly n host pages within 5 s; *st gets the
 * stats last read. */
void wait_received(struct pcopy_dest *d, uint64_t n, struct pcopy_stats *st);

/*
 * main() of a check_dest* program: skips (77) without userfaultfd, reserves
 * huge pages (else the hugetlb cases skip with the reason), runs the suite
 * make(under_valgrind) builds, gives the pool back. Returns the exit status.
 * Called by the main thread.
 */
int dest_suite_main(const char *prog, Suite *(*make)(bool vg));

#endif
