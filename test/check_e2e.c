/* SPDX-License-Identifier: MIT */
/*
 * End-to-end lazy restores: a source in a child process serves the image over
 * TCP loopback or a Unix socket; toucher threads here run on the destination
 * memory while it arrives and verify every page they touch (uffd-stress
 * style), on anonymous, memfd and hugetlbfs memory.
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "postcopy.h"
#include "testlib.h"
#include "threadname.h"

#define TOUCHERS 4

enum order { ORDER_SEQ = 0, ORDER_RANDOM = 1 };

struct toucher {
	pthread_t tid;
	unsigned index;
	enum order order;
	unsigned nregions;
	struct pcopy_region *regions;
	unsigned long touched;
	unsigned long bad;		/* pages with a wrong byte */
	char first_bad[160];
};

static size_t test_bytes(void)
{
	const char *e = getenv("PCOPY_TEST_MB");
	long mb = e ? atol(e) : 32;

	return (size_t)(mb > 0 ? mb : 32) << 20;
}

static void touch_page(struct toucher *t, unsigned r, uint64_t pg)
{
	const char *p = (const char *)t->regions[r].host + pg * TL_PAGE;
	long bad = tl_page_check(r, pg, p);

	t->touched++;
	if (bad >= 0) {
		if (t->bad++ == 0)
			snprintf(t->first_bad, sizeof(t->first_bad),
				 "region %u page %llu byte %ld: 0x%02x", r,
				 (unsigned long long)pg, bad,
				 (unsigned)(unsigned char)p[bad]);
	}
}

/* Each toucher owns the pages with index % TOUCHERS == its index, so all of
 * them fault concurrently across the whole image. */
static void *toucher_main(void *arg)
{
	struct toucher *t = arg;

	for (unsigned r = 0; r < t->nregions; r++) {
		uint64_t npages = t->regions[r].length / TL_PAGE;
		uint64_t mine = (npages + TOUCHERS - 1 - t->index) / TOUCHERS;
		uint64_t *perm = malloc(mine * sizeof(*perm));

		if (!perm) {
			t->bad++;
			return NULL;
		}
		for (uint64_t i = 0; i < mine; i++)
			perm[i] = i * TOUCHERS + t->index;
		if (t->order == ORDER_RANDOM) {
			unsigned seed = 1234 + t->index;
			for (uint64_t i = mine; i > 1; i--) {
				uint64_t j = (uint64_t)rand_r(&seed) % i;
				uint64_t x = perm[i - 1];
				perm[i - 1] = perm[j];
				perm[j] = x;
			}
		}
		for (uint64_t i = 0; i < mine; i++)
			touch_page(t, r, perm[i]);
		free(perm);
	}
	return NULL;
}

struct run {
	struct tl_source_cfg cfg;
	enum tl_mem mem;
	unsigned touchers;
	enum order order;
	struct pcopy_stats st;
};

static void log_to_stderr(void *opaque, enum pcopy_log_level lvl, const char *msg)
{
	(void)opaque;
	if (lvl <= PCOPY_LOG_WARN)
		fprintf(stderr, "libpostcopy: %s\n", msg);
}

/* Run one restore as described; fails the test on any error. Returns false
 * if the case was skipped. */
static bool run_restore(struct run *run, const char *name)
{
	struct tl_mapping maps[4];
	struct pcopy_region regions[4];
	struct tl_source_proc sp;
	struct toucher ts[TOUCHERS];
	struct pcopy_dest_opts o;
	struct pcopy_dest *d = NULL;
	char why[256];
	int rc, reserved = 0;

	if (run->mem == TL_MEM_HUGETLB) {
		unsigned long need = 0;
		for (unsigned r = 0; r < run->cfg.nregions; r++)
			need += run->cfg.lengths[r] / TL_HUGE;
		reserved = tl_hugetlb_reserve(need, why, sizeof(why));
		if (reserved < 0) {
			tl_skip(name, why);
			return false;
		}
	}
	for (unsigned r = 0; r < run->cfg.nregions; r++) {
		/* The hugetlb pool is machine-wide: another test program may have
		 * taken the pages we saw free. Top it up again and retry. */
		for (int attempt = 0;; attempt++) {
			rc = tl_map(run->mem, run->cfg.lengths[r], &maps[r]);
			if (rc != -ENOMEM || run->mem != TL_MEM_HUGETLB || attempt == 20)
				break;
			if (tl_hugetlb_reserve(run->cfg.lengths[r] / TL_HUGE, why, sizeof(why)) > 0)
				reserved = 1;
			usleep(100000);
		}
		ck_assert_msg(rc == 0, "map %s: %s", tl_mem_name(run->mem), strerror(-rc));
	}
	tl_regions(&run->cfg, maps, regions);

	pcopy_dest_opts_init(&o);
	o.log = log_to_stderr;
	rc = pcopy_dest_create(&d, regions, run->cfg.nregions, &o);
	ck_assert_msg(rc == 0, "dest_create: %s", pcopy_strerror(rc));

	/* Fork the source while this process is still single-threaded: a child
	 * forked while a toucher holds an allocator lock would inherit it locked. */
	rc = tl_source_spawn(&run->cfg, &sp);
	ck_assert_msg(rc == 0, "spawn source: %s", strerror(-rc));

	/* Touchers start before the restore does: their faults wait. */
	memset(ts, 0, sizeof(ts));
	for (unsigned i = 0; i < run->touchers; i++) {
		ts[i].index = i;
		ts[i].order = run->order;
		ts[i].nregions = run->cfg.nregions;
		ts[i].regions = regions;
		ck_assert(pthread_create(&ts[i].tid, NULL, toucher_main, &ts[i]) == 0);
	}

	rc = pcopy_dest_start(d, sp.fd);
	ck_assert_msg(rc == 0, "dest_start: %s: %s", pcopy_strerror(rc),
		      pcopy_dest_error(d));
	/* the library's threads say what they are (top -H, perf): each names
	 * itself when it starts; the receiver ends with the restore, which a
	 * small one may reach first */
	for (int i = 0; i < 200 && !tl_thread_named("pcopy-fault"); i++)
		usleep(5000);
	ck_assert(tl_thread_named("pcopy-fault"));
	for (int i = 0; i < 200 && !tl_thread_named("pcopy-recv") &&
			pcopy_dest_wait(d, 0) != 0; i++)
		usleep(5000);
	ck_assert(tl_thread_named("pcopy-recv") || pcopy_dest_wait(d, 0) == 0);
	if (sp.urgent_fd >= 0) {
		rc = pcopy_dest_add_urgent(d, sp.urgent_fd);
		ck_assert_msg(rc == 0, "dest_add_urgent: %s: %s", pcopy_strerror(rc),
			      pcopy_dest_error(d));
	}
	rc = pcopy_dest_wait(d, 120000);
	ck_assert_msg(rc == 0, "dest_wait: %s: %s", pcopy_strerror(rc),
		      pcopy_dest_error(d));

	for (unsigned i = 0; i < run->touchers; i++) {
		pthread_join(ts[i].tid, NULL);
		ck_assert_msg(ts[i].bad == 0, "toucher %u saw %lu wrong pages; first %s",
			      i, ts[i].bad, ts[i].first_bad);
	}
	ck_assert_int_eq(tl_source_wait(&sp), 0);

	/* The whole image, byte for byte, after completion. */
	for (unsigned r = 0; r < run->cfg.nregions; r++)
		for (uint64_t pg = 0; pg < run->cfg.lengths[r] / TL_PAGE; pg++) {
			long bad = tl_page_check(r, pg, (char *)maps[r].addr + pg * TL_PAGE);
			ck_assert_msg(bad < 0, "region %u page %llu byte %ld wrong after restore",
				      r, (unsigned long long)pg, bad);
		}

	ck_assert_int_eq(pcopy_dest_stats(d, &run->st), 0);
	ck_assert_uint_eq(run->st.host_pages_received, run->st.host_pages_total);
	if (run->touchers) {
		ck_assert_uint_gt(run->st.faults, 0);
		ck_assert_uint_gt(run->st.requests, 0);
	}
	pcopy_dest_destroy(d);
	for (unsigned r = 0; r < run->cfg.nregions; r++)
		tl_unmap(&maps[r]);
	if (reserved > 0)
		tl_hugetlb_release();
	return true;
}

static void one_region(struct run *run, enum tl_mem mem, size_t len)
{
	memset(run, 0, sizeof(*run));
	run->mem = mem;
	run->cfg.nregions = 1;
	run->cfg.names[0] = "ram";
	run->cfg.lengths[0] = len;
	run->cfg.page_sizes[0] = tl_mem_page_size(mem);
}

/* _i encodes memory type x link x order. */
START_TEST(test_touchers)
{
	enum tl_mem mem = (enum tl_mem)(_i / 4);
	enum tl_link link = (enum tl_link)((_i / 2) % 2);
	enum order order = (enum order)(_i % 2);
	char name[96];
	struct run run;

	snprintf(name, sizeof(name), "touchers/%s/%s/%s", tl_mem_name(mem),
		 link == TL_LINK_TCP ? "tcp" : "unix", order ? "random" : "seq");
	one_region(&run, mem, test_bytes());
	run.cfg.link = link;
	run.cfg.urgent = link == TL_LINK_TCP;	/* both paths, over both links below */
	run.touchers = TOUCHERS;
	run.order = order;
	if (run_restore(&run, name)) {
		uint64_t got = run.st.pages_zero + run.st.pages_raw + run.st.pages_zlib;

		/* Without the urgent path every page arrives exactly once; with
		 * it, a requested page may also come on the urgent connection
		 * (placed once, the other copy dropped). */
		if (run.cfg.urgent) {
			ck_assert_uint_ge(got, test_bytes() / TL_PAGE);
		} else {
			ck_assert_uint_eq(got, test_bytes() / TL_PAGE);
			ck_assert_uint_eq(run.st.duplicates, 0);
		}
	}
}
END_TEST

START_TEST(test_no_touch)
{
	enum tl_mem mem = (enum tl_mem)_i;
	char name[64];
	struct run run;

	snprintf(name, sizeof(name), "no-touch/%s", tl_mem_name(mem));
	one_region(&run, mem, test_bytes());
	run.touchers = 0;
	if (run_restore(&run, name)) {
		ck_assert_uint_eq(run.st.faults, 0);
		ck_assert_uint_gt(run.st.pages_zero, 0);
		ck_assert_uint_gt(run.st.pages_raw, 0);
	}
}
END_TEST

START_TEST(test_sparse_file)
{
	struct run run;

	one_region(&run, TL_MEM_ANON, test_bytes());
	run.cfg.from_file = true;
	run.cfg.link = TL_LINK_UNIX;
	run.touchers = TOUCHERS;
	run.order = ORDER_RANDOM;
	run_restore(&run, "sparse-file");
	ck_assert_uint_gt(run.st.pages_zero, 0);
}
END_TEST

START_TEST(test_zlib)
{
	struct run run;

	one_region(&run, TL_MEM_ANON, test_bytes());
	run.cfg.zlib = true;
	run.touchers = TOUCHERS;
	run.order = ORDER_RANDOM;
	run_restore(&run, "zlib");
	ck_assert_uint_gt(run.st.pages_zlib, 0);
	ck_assert_uint_gt(run.st.pages_raw, 0);	/* random pages fall back to raw */
}
END_TEST

START_TEST(test_multi_region)
{
	struct run run;

	one_region(&run, TL_MEM_MEMFD, test_bytes() / 2);
	run.cfg.nregions = 3;
	run.cfg.names[1] = "ram-hi";
	run.cfg.lengths[1] = test_bytes() / 4;
	run.cfg.page_sizes[1] = TL_PAGE;
	run.cfg.urgent = true;
	run.cfg.link = TL_LINK_UNIX;
	run.cfg.names[2] = "vga";
	run.cfg.lengths[2] = 1u << 20;
	run.cfg.page_sizes[2] = TL_PAGE;
	run.touchers = TOUCHERS;
	run.order = ORDER_RANDOM;
	run_restore(&run, "multi-region");
}
END_TEST

/* Only requested pages move, all on the urgent connection, and the source
 * ends at the first break (no resume, so the destination does not linger
 * for an echo): the fault thread places the last page and sends DONE while
 * the receiver sees the count complete. The receiver once stopped and shut
 * the main connection before DONE went out ("destination closed the
 * connection before DONE" at the source, about 1 run in 4); the source's
 * exit status 0 in run_restore says DONE arrived, every round. */
START_TEST(test_done_from_fault_thread)
{
	for (int round = 0; round < 12; round++) {
		struct run run;

		one_region(&run, TL_MEM_ANON, 4u << 20);
		run.cfg.urgent = true;
		run.cfg.link = TL_LINK_UNIX;
		run.cfg.source_flags = PCOPY_SOURCE_NO_BACKGROUND | PCOPY_SOURCE_NO_RESUME;
		run.touchers = TOUCHERS;
		run.order = ORDER_RANDOM;
		run_restore(&run, "done-from-fault-thread");
		ck_assert_uint_gt(run.st.urgent_pages, 0);
	}
}
END_TEST

/* Reserve the hugetlb pool once, in the runner process, so a failing test
 * child cannot leave nr_hugepages raised; tests that find it short skip. */
static int suite_reserved;

static void hugetlb_setup(void)
{
	char why[256];

	suite_reserved = tl_hugetlb_reserve(test_bytes() / TL_HUGE, why, sizeof(why));
}

static void hugetlb_teardown(void)
{
	if (suite_reserved > 0)
		tl_hugetlb_release();
}

static Suite *make_e2e_suite(void)
{
	Suite *s = suite_create("e2e");
	TCase *tc = tcase_create("touchers");

	tcase_set_timeout(tc, 300);
	tcase_add_unchecked_fixture(tc, hugetlb_setup, hugetlb_teardown);
	tcase_add_loop_test(tc, test_touchers, 0, TL_MEM_COUNT * 4);
	suite_add_tcase(s, tc);

	tc = tcase_create("no-touch");
	tcase_set_timeout(tc, 300);
	tcase_add_unchecked_fixture(tc, hugetlb_setup, hugetlb_teardown);
	tcase_add_loop_test(tc, test_no_touch, 0, TL_MEM_COUNT);
	suite_add_tcase(s, tc);

	tc = tcase_create("variants");
	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, test_sparse_file);
	tcase_add_test(tc, test_zlib);
	tcase_add_test(tc, test_multi_region);
	tcase_add_test(tc, test_done_from_fault_thread);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(make_e2e_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
