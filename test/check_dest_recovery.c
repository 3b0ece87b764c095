/* SPDX-License-Identifier: MIT */
/*
 * check_dest_recovery: the destination against a fake source
 * (test/fake_source.c) that breaks the connection at many points: resumes
 * (handed in, or by the connect callback) with the received-bitmap checked,
 * the resume deadline, keepalive on a silent source, and the PSK handshake.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fake_source.h"

static atomic_int g_connects;	/* connect_cb calls, reset before each test */

static void reset_all(void)
{
	reset_events();
	atomic_store(&g_connects, 0);
}

/* opts.connect: a new socketpair, one end to the fake. */
static int connect_cb(void *opaque, int urgent)
{
	struct fake *f = opaque;
	int sv[2];

	if (urgent)
		return -EINVAL;
	atomic_fetch_add(&g_connects, 1);
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return -errno;
	fake_hand(f, sv[1]);
	return sv[0];
}

/* Every break: wait until paused, hand in a new connection (unless the
 * connect callback does). Returns the restore's result. */
static int drive_resumes(struct pcopy_dest *d, struct fake *f, bool by_callback,
			 unsigned *failed_resumes)
{
	uint64_t end = pcopy_now_ns() + 40000000000ull;
	int rc;

	while ((rc = pcopy_dest_wait(d, 10)) == -ETIMEDOUT && pcopy_now_ns() < end) {
		int sv[2];

		if (by_callback || !pcopy_dest_paused(d))
			continue;
		ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
		fake_hand(f, sv[1]);
		rc = pcopy_dest_resume(d, sv[0]);
		if (rc < 0) {
			(*failed_resumes)++;
			ck_assert_int_eq(pcopy_dest_paused(d), 1);	/* still paused */
		}
	}
	return rc;
}

/* Breaks at several points of one restore: after whole host pages (then a
 * resume connection closed unanswered), mid-frame, corrupted frame, mid host
 * page, right after a resume, silence (keepalive). The fake checks the
 * bitmap is exactly what it sent whole and the first REQ after each resume
 * holds every pending request; the toucher and a full check see every byte;
 * nothing is received twice. */
static void run_resume(enum mt t, bool by_callback)
{
	static const struct cut cuts[] = {
		{ CUT_EOF, 3, true }, { CUT_MIDFRAME, 5, false },
		{ CUT_CORRUPT, 4, false }, { CUT_MIDHP, 2, false },
		{ CUT_EOF, 0, false }, { CUT_SILENT, 3, false },
	};
	unsigned i, failed = 0;
	struct mem m[NREG];
	struct toucher tt;
	struct pcopy_dest_opts o;
	struct pcopy_stats st;
	struct pcopy_dest *d;
	struct fake f;
	int fd;

	if (huge_skip(t) || !alloc_regions(m, t, false))
		return;
	opts_default(&o);
	o.keepalive_ms = 300;
	if (by_callback) {
		o.connect = connect_cb;
		o.connect_opaque = &f;
	}
	d = dest_new(m, NREG, &o);
	fd = fake_start(&f, m, NREG, SC_RESUME);
	f.offer = FEAT_ALL;
	f.wait_first_req = true;
	f.ncuts = sizeof(cuts) / sizeof(cuts[0]);
	for (i = 0; i < f.ncuts; i++) {
		f.cuts[i] = cuts[i];
		/* hugetlb: 6 host pages in all, one between cuts */
		f.cuts[i].after = t == MT_HUGE ? cuts[i].after != 0 : cuts[i].after * 20;
	}
	tt = (struct toucher){ .m = m, .nreg = NREG, .order = 5 };
	ck_assert_int_eq(pthread_create(&tt.thr, NULL, toucher_main, &tt), 0);
	fake_run(&f);
	ck_assert_int_eq(pcopy_dest_start(d, fd), 0);
	ck_assert_int_eq(drive_resumes(d, &f, by_callback, &failed), 0);
	pthread_join(tt.thr, NULL);
	ck_assert_uint_eq(atomic_load(&tt.bad), 0);
	for (i = 0; i < NREG; i++)
		verify_region(&m[i], i);
	ck_assert_int_eq(pcopy_dest_stats(d, &st), 0);
	ck_assert_int_eq(pcopy_dest_paused(d), 0);
	ck_assert_int_eq(atomic_load(&g_events), 1);
	ck_assert_int_eq(atomic_load(&g_event_err), 0);
	/* complete: a resume now only re-sends DONE (issue 4), which needs a
	 * stream socket */
	ck_assert_int_eq(pcopy_dest_resume(d, dup(2)), -ENOTSOCK);
	pcopy_dest_destroy(d);
	fake_end(&f);
	ck_assert_int_eq(f.fail_line, 0);
	ck_assert_uint_eq(f.resumes, f.ncuts);
	ck_assert_uint_eq(f.bitmap_checks, f.ncuts);
	ck_assert_uint_eq(f.refused, 1);
	ck_assert_uint_gt(f.pings, 0);	/* the silent cut: the destination pinged */
	ck_assert_uint_eq(st.breaks, f.ncuts);
	ck_assert_uint_eq(st.duplicates, 0);	/* the bitmap was exact */
	ck_assert_uint_eq(st.host_pages_received, st.host_pages_total);
	ck_assert_uint_ge(st.resent_pages, f.post_resume_reqs ? 1 : 0);
	if (by_callback)
		ck_assert_int_ge(atomic_load(&g_connects), (int)f.ncuts + 1);
	else
		ck_assert_uint_eq(failed, 1);
	for (i = 0; i < NREG; i++)
		mem_free(&m[i]);
}

START_TEST(test_resume_breaks)
{
	run_resume((enum mt)_i, false);
}
END_TEST

START_TEST(test_resume_callback)
{
	run_resume((enum mt)_i, true);
}
END_TEST

/* Nobody hands in a new connection: the deadline fails the restore. */
START_TEST(test_resume_deadline)
{
	struct mem m[NREG];
	struct pcopy_dest_opts o;
	struct pcopy_stats st;
	struct pcopy_dest *d;
	struct fake f;
	uint64_t t0, dt;
	int rc;

	if (!alloc_regions(m, MT_ANON, false))
		return;
	opts_default(&o);
	o.resume_deadline_ms = 300;
	d = dest_new(m, NREG, &o);
	fake_start_main(&f, d, m, SC_EOF, FEAT_ALL, 2);
	wait_paused(d);
	t0 = pcopy_now_ns();
	rc = pcopy_dest_wait(d, 10000);
	dt = pcopy_now_ns() - t0;
	/* failed at the deadline: not -ETIMEDOUT, which means "still running" */
	ck_assert_int_eq(rc, -ENOLINK);
	ck_assert_msg(dt > 200000000ull && dt < 3000000000ull, "failed after %" PRIu64 " ns", dt);
	ck_assert_msg(strstr(pcopy_dest_error(d), "no new connection"), "%s", pcopy_dest_error(d));
	ck_assert_int_eq(atomic_load(&g_events), 1);
	ck_assert_int_eq(atomic_load(&g_event_err), -ENOLINK);
	ck_assert_int_eq(pcopy_dest_stats(d, &st), 0);
	ck_assert_uint_eq(st.breaks, 1);
	ck_assert_uint_eq(st.host_pages_received, 2);
	ck_assert_int_lt(pcopy_dest_resume(d, dup(2)), 0);	/* over */
	pcopy_dest_destroy(d);
	fake_end(&f);
	mem_free(&m[0]);
	mem_free(&m[1]);
}
END_TEST

/* A source that goes silent (no close): the keepalive (300 ms) notices, and
 * the destination pinged meanwhile. Without resume that is fatal. */
START_TEST(test_keepalive)
{
	struct mem m[NREG];
	struct pcopy_dest_opts o;
	struct pcopy_dest *d;
	struct fake f;
	uint64_t t0, dt;
	int fd, rc;

	if (!alloc_regions(m, MT_ANON, false))
		return;
	opts_default(&o);
	o.keepalive_ms = 300;
	o.flags |= PCOPY_DEST_NO_RESUME;
	d = dest_new(m, NREG, &o);
	fd = fake_start(&f, m, NREG, SC_STALL);
	f.offer = FEAT_ALL;
	f.before = 2;
	fake_run(&f);
	t0 = pcopy_now_ns();
	ck_assert_int_eq(pcopy_dest_start(d, fd), 0);
	rc = pcopy_dest_wait(d, 10000);
	dt = pcopy_now_ns() - t0;
	ck_assert_int_eq(rc, -ENOLINK);
	ck_assert_msg(dt > 250000000ull && dt < 3000000000ull, "after %" PRIu64 " ns", dt);
	ck_assert_msg(strstr(pcopy_dest_error(d), "keepalive"), "%s", pcopy_dest_error(d));
	ck_assert_int_eq(pcopy_dest_paused(d), 0);
	pcopy_dest_destroy(d);
	fake_end(&f);
	ck_assert_uint_gt(f.pings, 0);
	mem_free(&m[0]);
	mem_free(&m[1]);
}


/* PSK: the right key restores; a wrong or missing one is refused before
 * any page moves. */
START_TEST(test_psk)
{
	static const char *const keys[][2] = {	/* dest, source */
		{ "correct horse battery", "correct horse battery" },
		{ "correct horse battery", "wrong key" },
		{ "correct horse battery", NULL },
		{ NULL, "correct horse battery" },
	};
	const char *dk = keys[_i][0], *sk = keys[_i][1];
	bool ok = dk && sk && !strcmp(dk, sk);
	struct mem m[NREG];
	struct pcopy_dest_opts o;
	struct pcopy_stats st;
	struct pcopy_dest *d;
	struct fake f;
	uint64_t a;
	int fd, rc;

	if (!alloc_regions(m, MT_ANON, false))
		return;
	opts_default(&o);
	o.psk = dk;
	o.psk_len = dk ? strlen(dk) : 0;
	d = dest_new(m, NREG, &o);
	fd = fake_start(&f, m, NREG, SC_NORMAL);
	f.psk = sk;
	f.psk_len = sk ? strlen(sk) : 0;
	fake_run(&f);
	rc = pcopy_dest_start(d, fd);
	if (ok) {
		ck_assert_int_eq(rc, 0);
		ck_assert_int_eq(pcopy_dest_wait(d, 20000), 0);
		verify_region(&m[0], 0);
		verify_region(&m[1], 1);
	} else {
		ck_assert_msg(rc == -EACCES, "start: %d (%s)", rc, pcopy_dest_error(d));
		ck_assert_int_eq(pcopy_dest_stats(d, &st), 0);
		ck_assert_uint_eq(st.host_pages_received, 0);
		for (a = 0; a < m[0].len; a += TP)
			ck_assert(!page_present(m[0].p + a));
	}
	pcopy_dest_destroy(d);
	fake_end(&f);
	if (!ok)
		ck_assert_int_ne(f.hs_rc, 0);
	mem_free(&m[0]);
	mem_free(&m[1]);
}

static Suite *make_suite(bool vg)
{
	Suite *s = suite_create("dest_recovery");
	TCase *tc;

	if (vg) {
		tc = tcase_create("valgrind_runtime");
		tcase_add_checked_fixture(tc, reset_all, NULL);
		tcase_set_timeout(tc, 600);
		tcase_add_test(tc, test_resume_deadline);
		tcase_add_test(tc, test_keepalive);
		tcase_add_loop_test(tc, test_psk, 0, 4);
		suite_add_tcase(s, tc);
		return s;
	}

	tc = tcase_create("recovery");
	tcase_add_checked_fixture(tc, reset_all, NULL);
	tcase_set_timeout(tc, 60);
	tcase_add_loop_test(tc, test_resume_breaks, 0, MT_N);
	tcase_add_loop_test(tc, test_resume_callback, 0, MT_N);
	tcase_add_test(tc, test_resume_deadline);
	tcase_add_test(tc, test_keepalive);
	tcase_add_loop_test(tc, test_psk, 0, 4);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return dest_suite_main("check_dest_recovery", make_suite);
}
