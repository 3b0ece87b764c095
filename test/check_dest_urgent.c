/* SPDX-License-Identifier: MIT */
/*
 * check_dest_urgent: the destination with an urgent connection next to the
 * main one (fake sources from test/fake_source.c): page requests answered
 * there, a bad frame on it, the last-page race between both placers, a
 * flooding urgent source; and REMOVE events (balloon) during a restore.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "fake_source.h"


/* The main connection holds still; page requests go on the urgent one and
 * are answered there; then the main one sends everything again:
 * duplicates, never errors. */
START_TEST(test_urgent)
{
	enum mt t = (enum mt)_i;
	struct mem m[NREG];
	struct toucher tt;
	struct pcopy_dest_opts o;
	struct pcopy_stats st;
	struct pcopy_dest *d;
	struct fake f, u;
	struct timespec ts;
	unsigned i;

	if (huge_skip(t) || !alloc_regions(m, t, false))
		return;
	opts_default(&o);
	d = dest_new(m, NREG, &o);
	fake_start_main(&f, d, m, SC_HOLD, FEAT_ALL, 2);
	ck_assert_int_eq(fake_start_urgent(&u, d, m, SC_URGENT_SRV, 0), 0);
	/* region 0 only: region 1 needs the main connection to complete */
	tt = (struct toucher){ .m = m, .nreg = 1, .order = 7 };
	ck_assert_int_eq(pthread_create(&tt.thr, NULL, toucher_main, &tt), 0);
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 20;
	/* all of region 0 touched while the main connection sends nothing */
	ck_assert_int_eq(pthread_timedjoin_np(tt.thr, NULL, &ts), 0);
	ck_assert_uint_eq(atomic_load(&tt.bad), 0);
	ck_assert_uint_eq(atomic_load(&tt.touched), m[0].len / TP);
	ck_assert_int_eq(pcopy_dest_wait(d, 0), -ETIMEDOUT);
	atomic_store(&f.release, true);
	ck_assert_int_eq(pcopy_dest_wait(d, 20000), 0);
	for (i = 0; i < NREG; i++)
		verify_region(&m[i], i);
	ck_assert_int_eq(pcopy_dest_stats(d, &st), 0);
	atomic_store(&u.release, true);
	pcopy_dest_destroy(d);
	fake_end(&f);
	fake_end(&u);
	ck_assert_int_eq(f.fail_line, 0);
	ck_assert_int_eq(u.fail_line, 0);
	ck_assert_int_eq(u.hs_rc, 0);
	ck_assert_uint_eq(f.req_entries, 0);	/* every REQ went urgent */
	ck_assert_uint_gt(u.req_entries, 0);
	/* region 0 came urgently (its first 2 host pages maybe too, if
	 * touched before they arrived on the main connection) ... */
	ck_assert_uint_ge(st.urgent_pages, m[0].len / m[0].ps - 2);
	ck_assert_uint_le(st.urgent_pages, m[0].len / m[0].ps);
	ck_assert_uint_eq(st.host_pages_received, st.host_pages_total);
	/* ... and again on the main one after the release: all dropped */
	ck_assert_uint_eq(st.duplicates, st.urgent_pages);
	ck_assert_int_eq(atomic_load(&g_event_err), 0);
	for (i = 0; i < NREG; i++)
		mem_free(&m[i]);
}
END_TEST

/*
 * A bad frame on the urgent connection, which the fault thread reads: the
 * whole host pages before it are placed (from that thread), the bad one is
 * not; _i 0: without resume the restore fails with the frame's error (the
 * receiver, told by the fault thread, ends); _i 1: with resume it pauses
 * with the urgent connection's reason and fails at the deadline.
 */
START_TEST(test_urgent_bad)
{
	struct mem m[NREG];
	struct pcopy_dest_opts o;
	struct pcopy_stats st;
	struct pcopy_dest *d;
	struct fake f, u;
	uint64_t a;
	unsigned i;
	int rc;

	if (!alloc_regions(m, MT_ANON, false))
		return;
	opts_default(&o);
	if (_i == 0)
		o.flags |= PCOPY_DEST_NO_RESUME;
	o.resume_deadline_ms = 300;
	d = dest_new(m, NREG, &o);
	fake_start_main(&f, d, m, SC_HOLD, FEAT_ALL, 0);
	ck_assert_int_eq(fake_start_urgent(&u, d, m, SC_BAD_CRC, 3), 0);
	if (_i == 1)
		wait_paused(d);
	rc = pcopy_dest_wait(d, 10000);
	ck_assert_msg(rc == (_i == 0 ? -EBADMSG : -ENOLINK), "got %d (%s)", rc,
		      pcopy_dest_error(d));
	/* the urgent connection's reason, also after the pause */
	ck_assert_msg(strstr(pcopy_dest_error(d), "crc"), "%s", pcopy_dest_error(d));
	if (_i == 1)
		ck_assert_msg(strstr(pcopy_dest_error(d), "no new connection"), "%s",
			      pcopy_dest_error(d));
	ck_assert_int_eq(atomic_load(&g_events), 1);
	ck_assert_int_eq(pcopy_dest_stats(d, &st), 0);
	ck_assert_uint_eq(st.breaks, _i == 1 ? 1u : 0u);
	ck_assert_uint_eq(st.host_pages_received, 3);
	ck_assert_uint_eq(st.urgent_pages, 3);
	for (a = 0; a < m[0].len; a += TP)
		ck_assert_msg(page_present(m[0].p + a) == (a < 3 * m[0].ps),
			      "offset 0x%" PRIx64, a);
	for (a = 0; a < 3 * m[0].ps; a += TP) {
		uint8_t want[TP];

		fill_tp(0, a / TP, (unsigned)(m[0].ps / TP), want);
		ck_assert(!memcmp(m[0].p + a, want, TP));
	}
	atomic_store(&f.release, true);
	pcopy_dest_destroy(d);
	fake_end(&f);
	fake_end(&u);
	ck_assert_int_eq(u.hs_rc, 0);
	for (i = 0; i < NREG; i++)
		mem_free(&m[i]);
}
END_TEST

/* Without an urgent offer from the source: -EOPNOTSUPP. */
START_TEST(test_urgent_not_offered)
{
	struct mem m[NREG];
	struct pcopy_dest_opts o;
	struct pcopy_dest *d;
	struct fake f;
	int sv[2];

	if (!alloc_regions(m, MT_ANON, false))
		return;
	opts_default(&o);
	d = dest_new(m, NREG, &o);
	fake_start_main(&f, d, m, SC_NORMAL, PCOPY_FEAT_ZLIB, 0);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	close(sv[1]);
	ck_assert_int_eq(pcopy_dest_add_urgent(d, sv[0]), -EOPNOTSUPP);
	ck_assert_int_eq(pcopy_dest_wait(d, 20000), 0);
	pcopy_dest_destroy(d);
	fake_end(&f);
	mem_free(&m[0]);
	mem_free(&m[1]);
}

struct reader {
	uint8_t *p;
	size_t len;
	atomic_int done;
	uint64_t nonzero;
	pthread_t thr;
};

static void *reader_main(void *arg)
{
	struct reader *rd = arg;
	size_t i;

	for (i = 0; i < rd->len; i++)
		rd->nonzero += rd->p[i] != 0;
	atomic_store(&rd->done, 1);
	return NULL;
}

/*
 * PCOPY_DEST_HANDLE_REMOVE: while the source holds still, the application
 * removes a range (MADV_DONTNEED, or MADV_REMOVE on shared memory) of which
 * some host pages were received and some not, with a thread already blocked
 * on one of the latter. The range reads zeros afterwards (that thread too),
 * nothing in it is requested again, pages of it that arrive later are
 * dropped, everything else is the source's, and the restore completes.
 */
START_TEST(test_remove)
{
	enum mt t = (enum mt)_i;
	bool huge = t == MT_HUGE;
	/* host pages: sent before holding, removed range [r0, r1), blocked one */
	uint64_t before = huge ? 2 : 64, r0 = huge ? 1 : 32, r1 = huge ? 3 : 96;
	uint64_t blk = huge ? 2 : 80, hp, a, k;
	struct mem m[NREG];
	struct pcopy_dest_opts o;
	struct pcopy_stats st;
	struct pcopy_dest *d;
	struct reader blocked, after;
	struct fake f;
	size_t ps;
	uint8_t want[TP];

	if (huge_skip(t) || !alloc_regions(m, t, false))
		return;
	ps = m[0].ps;
	opts_default(&o);
	o.flags |= PCOPY_DEST_HANDLE_REMOVE;
	d = dest_new(m, NREG, &o);
	fake_start_main(&f, d, m, SC_HOLD, FEAT_ALL, (unsigned)before);
	wait_received(d, before, &st);
	/* a thread blocks on a page not received, inside the range-to-be */
	blocked = (struct reader){ .p = m[0].p + blk * ps, .len = ps };
	ck_assert_int_eq(pthread_create(&blocked.thr, NULL, reader_main, &blocked), 0);
	for (k = 0; k < 5000 && !__atomic_load_n(&f.reqd[0][blk], __ATOMIC_RELAXED); k++)
		usleep(1000);
	ck_assert(__atomic_load_n(&f.reqd[0][blk], __ATOMIC_RELAXED));
	ck_assert_int_eq(atomic_load(&blocked.done), 0);
	/* the balloon */
	ck_assert_int_eq(madvise(m[0].p + r0 * ps, (r1 - r0) * ps,
				 t == MT_ANON ? MADV_DONTNEED : MADV_REMOVE), 0);
	pthread_join(blocked.thr, NULL);
	ck_assert_uint_eq(blocked.nonzero, 0);
	after = (struct reader){ .p = m[0].p + r0 * ps, .len = (r1 - r0) * ps };
	reader_main(&after);
	ck_assert_uint_eq(after.nonzero, 0);
	for (hp = r0; hp < r1; hp++)
		ck_assert_msg(hp == blk || !__atomic_load_n(&f.reqd[0][hp], __ATOMIC_RELAXED), "removed host page %" PRIu64 " requested", hp);
	atomic_store(&f.release, true);
	ck_assert_int_eq(pcopy_dest_wait(d, 20000), 0);
	/* zeros stay zeros; the rest is the source's */
	after.nonzero = 0;
	reader_main(&after);
	ck_assert_uint_eq(after.nonzero, 0);
	for (a = 0; a < m[0].len; a += TP) {
		if (a >= r0 * ps && a < r1 * ps)
			continue;
		fill_tp(0, a / TP, (unsigned)(ps / TP), want);
		ck_assert_msg(!memcmp(m[0].p + a, want, TP), "offset 0x%" PRIx64, a);
	}
	verify_region(&m[1], 1);
	ck_assert_int_eq(pcopy_dest_stats(d, &st), 0);
	ck_assert_uint_eq(st.host_pages_received, st.host_pages_total);
	/* the unreceived removed pages came later and were dropped */
	ck_assert_uint_ge(st.duplicates, r1 - before);
	pcopy_dest_destroy(d);
	fake_end(&f);
	ck_assert_int_eq(f.fail_line, 0);
	mem_free(&m[0]);
	mem_free(&m[1]);
}
END_TEST

/*
 * The restore completes during a pause with no deadline, on the fault
 * thread: the application removed every missing page (REMOVE events). The
 * receiver, asleep in the pause, must notice (it has completion work: the
 * DONE for the source) and leave it; it used to sleep there until destroy.
 */
START_TEST(test_remove_completes_pause)
{
	struct mem m[NREG];
	struct pcopy_dest_opts o;
	struct pcopy_stats st;
	struct pcopy_dest *d;
	struct fake f;
	uint64_t t0;
	unsigned i;

	if (!alloc_regions(m, MT_ANON, false))
		return;
	opts_default(&o);
	o.flags |= PCOPY_DEST_HANDLE_REMOVE;
	o.resume_deadline_ms = -1;
	d = dest_new(m, NREG, &o);
	fake_start_main(&f, d, m, SC_EOF, FEAT_ALL, 2);
	wait_paused(d);
	/* the balloon takes everything that is missing */
	ck_assert_int_eq(madvise(m[0].p + 2 * m[0].ps, m[0].len - 2 * m[0].ps,
				 MADV_DONTNEED), 0);
	ck_assert_int_eq(madvise(m[1].p, m[1].len, MADV_DONTNEED), 0);
	ck_assert_int_eq(pcopy_dest_wait(d, 10000), 0);
	ck_assert_int_eq(atomic_load(&g_events), 1);
	ck_assert_int_eq(atomic_load(&g_event_err), 0);
	/* the receiver left the pause (nothing to resume for) */
	t0 = pcopy_now_ns();
	while (pcopy_dest_paused(d) && pcopy_now_ns() - t0 < 3000000000ull)
		usleep(1000);
	ck_assert_int_eq(pcopy_dest_paused(d), 0);
	ck_assert_int_eq(pcopy_dest_stats(d, &st), 0);
	ck_assert_uint_eq(st.host_pages_received, st.host_pages_total);
	ck_assert_uint_eq(st.breaks, 1);
	pcopy_dest_destroy(d);
	fake_end(&f);
	for (i = 0; i < NREG; i++)
		mem_free(&m[i]);
}
END_TEST

/*
 * Both threads place pages: the receiver (main connection, everything) and
 * the fault thread (urgent answers). When one places the last page, the
 * memory is unregistered and the other's copy of the same page meets
 * ENOENT: a duplicate, not a failure (it used to end the linger for the
 * DONE echo with an ERROR to the source and a "after the restore ended"
 * warning). A race, not forced: many small restores whose faults hit the
 * pages the main connection sends last.
 */
static atomic_int g_warn_after;

static void log_count_cb(void *opaque, enum pcopy_log_level lvl, const char *msg)
{
	if (lvl <= PCOPY_LOG_WARN && strstr(msg, "after the restore ended"))
		atomic_fetch_add(&g_warn_after, 1);
	if (!strstr(msg, "no DONE from the source"))	/* expected here */
		log_cb(opaque, lvl, msg);
}

START_TEST(test_urgent_last_page_race)
{
	unsigned round, i, rounds = 30, raced = 0;
	int warned;

	atomic_store(&g_warn_after, 0);
	for (round = 0; round < rounds; round++) {
		struct mem m[NREG];
		struct pcopy_dest_opts o;
		struct pcopy_dest *d;
		struct toucher tt;
		struct fake f, u;
		int rc;

		reset_events();
		if (!alloc_regions(m, MT_ANON, false))
			return;
		opts_default(&o);
		o.log = log_count_cb;
		o.handshake_timeout_ms = 200;	/* the fake never echoes DONE */
		d = dest_new(m, NREG, &o);
		fake_start_main(&f, d, m, SC_NORMAL, FEAT_ALL, 0);
		rc = fake_start_urgent(&u, d, m, SC_URGENT_SRV, 0);
		/* the main connection may have been quicker: then no race */
		ck_assert_msg(rc == 0 || (rc == -EALREADY && pcopy_dest_wait(d, 0) == 0),
			      "add_urgent: %d", rc);
		/* from the end: the pages the main connection sends last */
		tt = (struct toucher){ .m = m, .nreg = NREG, .order = 1 };
		ck_assert_int_eq(pthread_create(&tt.thr, NULL, toucher_main, &tt), 0);
		ck_assert_int_eq(pcopy_dest_wait(d, 20000), 0);
		pthread_join(tt.thr, NULL);
		ck_assert_uint_eq(atomic_load(&tt.bad), 0);
		for (i = 0; i < NREG; i++)
			verify_region(&m[i], i);
		/* the linger got the echo: the source saw DONE, no ERROR */
		pcopy_dest_destroy(d);
		atomic_store(&u.release, true);
		fake_end(&f);
		fake_end(&u);
		ck_assert_int_eq(f.fail_line, 0);
		ck_assert_int_eq(u.fail_line, 0);
		ck_assert(f.got_done);
		ck_assert(!f.got_error);
		ck_assert(!u.got_error);
		raced += rc == 0;
		ck_assert_int_eq(atomic_load(&g_events), 1);
		ck_assert_int_eq(atomic_load(&g_event_err), 0);
		warned = atomic_load(&g_warn_after);
		ck_assert_msg(warned == 0, "round %u: a failure recorded after completion", round);
		for (i = 0; i < NREG; i++)
			mem_free(&m[i]);
	}
	ck_assert_uint_gt(raced, rounds / 2);	/* the urgent one came in time */
}


/*
 * The fault thread is the urgent connection's only writer of REQs and its
 * only reader. A source that answers (here: floods) without reading while
 * REQs pile up must not get both sides stuck in a write until the send
 * timeout (1 s here), which breaks the connection: the fault thread keeps
 * reading while it waits for room. Many threads fault at once so the REQs
 * overflow a small send buffer.
 */
#define FLOOD_THREADS 256

START_TEST(test_urgent_req_backlog)
{
	struct mem m[NREG];
	struct reader rd[FLOOD_THREADS];
	struct pcopy_dest_opts o;
	struct pcopy_stats st;
	struct pcopy_dest *d;
	struct fake f, u;
	int ufd, sndbuf = 1;
	uint64_t t0;
	unsigned i, k;

	if (!alloc_regions(m, MT_ANON, false))
		return;
	ck_assert_uint_ge(m[0].len / m[0].ps, FLOOD_THREADS);
	opts_default(&o);
	o.handshake_timeout_ms = 1000;	/* also the send timeout */
	o.resume_deadline_ms = 300;
	d = dest_new(m, NREG, &o);
	fake_start_main(&f, d, m, SC_HOLD, FEAT_ALL, 0);
	ufd = fake_start(&u, m, NREG, SC_URGENT_FLOOD);
	u.offer = FEAT_ALL;
	/* the smallest send buffer: a few REQ messages fill it */
	ck_assert_int_eq(setsockopt(ufd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)), 0);
	fake_run(&u);
	ck_assert_int_eq(pcopy_dest_add_urgent(d, ufd), 0);
	for (i = 0; i < FLOOD_THREADS; i++) {
		rd[i] = (struct reader){ .p = m[0].p + i * m[0].ps, .len = 1 };
		ck_assert_int_eq(pthread_create(&rd[i].thr, NULL, reader_main, &rd[i]), 0);
	}
	/* well past the send timeout */
	usleep(2500000);
	ck_assert_int_eq(pcopy_dest_stats(d, &st), 0);
	ck_assert_uint_eq(st.breaks, 0);
	ck_assert_int_eq(pcopy_dest_wait(d, 0), -ETIMEDOUT);
	atomic_store(&u.flood_end, true);
	t0 = pcopy_now_ns();
	for (i = k = 0; i < FLOOD_THREADS; i++) {
		while (!atomic_load(&rd[i].done) && pcopy_now_ns() - t0 < 10000000000ull)
			usleep(1000);
		k += atomic_load(&rd[i].done) != 0;
	}
	ck_assert_uint_eq(k, FLOOD_THREADS);
	for (i = 0; i < FLOOD_THREADS; i++)
		pthread_join(rd[i].thr, NULL);
	atomic_store(&f.release, true);
	ck_assert_int_eq(pcopy_dest_wait(d, 20000), 0);
	for (i = 0; i < NREG; i++)
		verify_region(&m[i], i);
	ck_assert_int_eq(pcopy_dest_stats(d, &st), 0);
	ck_assert_uint_eq(st.breaks, 0);
	atomic_store(&u.release, true);
	pcopy_dest_destroy(d);
	fake_end(&f);
	fake_end(&u);
	ck_assert_int_eq(f.fail_line, 0);
	ck_assert_int_eq(u.fail_line, 0);
	for (i = 0; i < NREG; i++)
		mem_free(&m[i]);
}

static Suite *make_suite(bool vg)
{
	Suite *s = suite_create("dest_urgent");
	TCase *tc;

	if (vg) {
		tc = tcase_create("valgrind_runtime");
		tcase_add_checked_fixture(tc, reset_events, NULL);
		tcase_set_timeout(tc, 600);
		tcase_add_test(tc, test_urgent_not_offered);
		tcase_add_test(tc, test_remove_completes_pause);
		suite_add_tcase(s, tc);
		return s;
	}

	tc = tcase_create("urgent_remove");
	tcase_add_checked_fixture(tc, reset_events, NULL);
	tcase_set_timeout(tc, 60);
	tcase_add_loop_test(tc, test_urgent, 0, MT_N);
	tcase_add_loop_test(tc, test_urgent_bad, 0, 2);
	tcase_add_test(tc, test_urgent_not_offered);
	tcase_add_loop_test(tc, test_remove, 0, MT_N);
	tcase_add_test(tc, test_remove_completes_pause);
	tcase_add_test(tc, test_urgent_last_page_race);
	tcase_add_test(tc, test_urgent_req_backlog);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return dest_suite_main("check_dest_urgent", make_suite);
}
