/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for stream/sent_window.h: the urgent thread's record of the
 * pages it sent in a readahead run (marking, the window sliding forward,
 * forgetting what falls out of it, reset).
 */
#include <check.h>
#include <stdlib.h>

#include "sent_window.h"

START_TEST(test_reset_is_empty)
{
	struct sent_window w;

	sent_window_reset(&w, 1000);
	ck_assert_uint_eq(w.lo, 960);	/* rounded down to 64 */
	for (uint64_t g = 900; g < 3000; g++)
		ck_assert_msg(!sent_window_test(&w, g), "page %llu", (unsigned long long)g);
}
END_TEST

/* Only the pages marked test true: neighbours, other words, do not. */
START_TEST(test_mark_exact)
{
	struct sent_window w;
	const uint64_t marked[] = { 960, 961, 1023, 1024, 1500, 960 + SENT_WINDOW_PAGES - 1 };

	sent_window_reset(&w, 960);
	for (unsigned i = 0; i < sizeof(marked) / sizeof(marked[0]); i++)
		sent_window_mark(&w, marked[i]);
	ck_assert_uint_eq(w.lo, 960);	/* all fit: nothing slid */
	for (uint64_t g = 900; g < 960 + SENT_WINDOW_PAGES + 100; g++) {
		bool want = false;

		for (unsigned i = 0; i < sizeof(marked) / sizeof(marked[0]); i++)
			want |= marked[i] == g;
		ck_assert_msg(sent_window_test(&w, g) == want, "page %llu: %d",
			      (unsigned long long)g, !want);
	}
}
END_TEST

/* Pages before the window are neither recorded nor reported. */
START_TEST(test_before_window_ignored)
{
	struct sent_window w;

	sent_window_reset(&w, 4096);
	sent_window_mark(&w, 4095);
	sent_window_mark(&w, 0);
	ck_assert(!sent_window_test(&w, 4095));
	ck_assert(!sent_window_test(&w, 0));
	ck_assert_uint_eq(w.lo, 4096);
}
END_TEST

/* A mark one word past the end slides by one word: the first word's
 * pages are forgotten, the rest keep their bits at their new place. */
START_TEST(test_slide_one_word)
{
	struct sent_window w;
	uint64_t end = SENT_WINDOW_PAGES;

	sent_window_reset(&w, 0);
	sent_window_mark(&w, 5);		/* in the word that falls out */
	sent_window_mark(&w, 64);		/* first page of the second word */
	sent_window_mark(&w, 700);
	sent_window_mark(&w, end - 1);
	sent_window_mark(&w, end + 3);	/* one word past: slide by 64 */
	ck_assert_uint_eq(w.lo, 64);
	ck_assert(!sent_window_test(&w, 5));
	ck_assert(sent_window_test(&w, 64));
	ck_assert(sent_window_test(&w, 700));
	ck_assert(sent_window_test(&w, end - 1));
	ck_assert(sent_window_test(&w, end + 3));
	ck_assert(!sent_window_test(&w, end + 2));
	ck_assert(!sent_window_test(&w, end + 4));
	ck_assert(!sent_window_test(&w, 65));
}
END_TEST

/* Several words at once, and a jump past the whole window. */
START_TEST(test_slide_far)
{
	struct sent_window w;
	uint64_t end = SENT_WINDOW_PAGES;

	sent_window_reset(&w, 0);
	sent_window_mark(&w, 10);
	sent_window_mark(&w, 300);
	sent_window_mark(&w, end + 200);	/* drops (200 / 64) + 1 = 4 words */
	ck_assert_uint_eq(w.lo, 256);
	ck_assert(!sent_window_test(&w, 10));
	ck_assert(sent_window_test(&w, 300));
	ck_assert(sent_window_test(&w, end + 200));
	sent_window_mark(&w, 10 * end);		/* far: everything forgotten */
	ck_assert(!sent_window_test(&w, 300));
	ck_assert(!sent_window_test(&w, end + 200));
	ck_assert(sent_window_test(&w, 10 * end));
	ck_assert(w.lo <= 10 * end && 10 * end - w.lo < SENT_WINDOW_PAGES);
	for (uint64_t g = w.lo; g < w.lo + SENT_WINDOW_PAGES; g++)
		ck_assert(sent_window_test(&w, g) == (g == 10 * end));
}
END_TEST

/* Marking every page of a long run in order keeps the last window's worth. */
START_TEST(test_long_run)
{
	struct sent_window w;
	const uint64_t first = 123, n = 10 * SENT_WINDOW_PAGES + 17;

	sent_window_reset(&w, first);
	for (uint64_t g = first; g < first + n; g++) {
		sent_window_mark(&w, g);
		ck_assert(sent_window_test(&w, g));
	}
	for (uint64_t g = first; g < first + n; g++) {
		bool in = g >= w.lo;

		ck_assert_msg(sent_window_test(&w, g) == in, "page %llu", (unsigned long long)g);
	}
	ck_assert_uint_gt(first + n - w.lo, SENT_WINDOW_PAGES - 64);
	ck_assert(!sent_window_test(&w, first + n));
}
END_TEST

static Suite *make_suite(void)
{
	Suite *s = suite_create("sent_window");
	TCase *tc = tcase_create("window");

	tcase_add_test(tc, test_reset_is_empty);
	tcase_add_test(tc, test_mark_exact);
	tcase_add_test(tc, test_before_window_ignored);
	tcase_add_test(tc, test_slide_one_word);
	tcase_add_test(tc, test_slide_far);
	tcase_add_test(tc, test_long_run);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(make_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
