/* SPDX-License-Identifier: MIT */
/*
 * check_dest_failure: the destination against a fake source (test/fake_source.c)
 * that sends malformed input, over every memory type, and the failure modes:
 * BLOCK then destroy, SIGBUS (also with an on_event callback that takes an
 * application lock), an empty hugetlb pool, destroy mid-restore.
 */
#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fake_source.h"
#include "hugepool.h"


/* ------------------------------------------------------------------ */
/* tests: malformed input                                              */
/* ------------------------------------------------------------------ */

struct bad_case {
	enum script sc;
	int err;
	const char *msg;	/* substring of pcopy_dest_error */
	bool no_zlib;
};

static const struct bad_case bad_cases[] = {
	{ SC_BAD_CRC, -EBADMSG, "crc", false },
	{ SC_BAD_REGION, -EPROTO, "region 2 out of range", false },
	{ SC_BAD_OFFSET_END, -EPROTO, "past end of region", false },
	{ SC_BAD_MISALIGNED, -EPROTO, "not aligned", false },
	{ SC_BAD_RAWLEN, -EPROTO, "raw length", false },
	{ SC_OUT_OF_ORDER, -EPROTO, NULL, false },	/* message depends on the page size */
	{ SC_OTHER_HP_MIDPAGE, -EPROTO, "is incomplete", false },
	{ SC_END_MISSING, -EPROTO, "host pages never sent", false },
	{ SC_UNKNOWN_TYPE, -EPROTO, "bad message header", false },
	{ SC_UNEXPECTED_REQ, -EPROTO, "unexpected REQ", false },
	{ SC_UNEXPECTED_DONE, -EPROTO, "unexpected DONE", false },
	{ SC_UNEXPECTED_HELLO, -EPROTO, "unexpected HELLO", false },
	{ SC_SRC_ERROR, -EIO, "source reported: disk on fire", false },
	{ SC_EOF, -ECONNRESET, "connection closed by source", false },
	{ SC_BAD_ZLIB, -EPROTO, "PAGE region 'ram0'", false },
	{ SC_ZLIB_NOT_NEGOTIATED, -EPROTO, "not negotiated", true },
	{ SC_BAD_MAGIC, -EPROTO, "bad message header", false },
};
#define NBAD (sizeof(bad_cases) / sizeof(bad_cases[0]))

START_TEST(test_bad_input)
{
	const struct bad_case *bc = &bad_cases[_i % NBAD];
	enum mt t = (enum mt)(_i / NBAD);
	struct mem m[NREG];
	struct pcopy_dest_opts o;
	struct pcopy_stats st;
	struct pcopy_dest *d;
	struct fake f;
	unsigned i, before = 2;
	uint64_t a;
	int rc;

	if (bc->sc == SC_OTHER_HP_MIDPAGE && t != MT_HUGE) {
		/* with 4 KiB host pages every frame completes its host page */
		return;
	}
	if (huge_skip(t) || !alloc_regions(m, t, false))
		return;
	opts_default(&o);
	if (bc->no_zlib)
		o.flags |= PCOPY_DEST_NO_ZLIB;
	d = dest_new(m, NREG, &o);
	fake_start_main(&f, d, m, bc->sc, PCOPY_FEAT_ZLIB, before);
	rc = pcopy_dest_wait(d, 10000);
	ck_assert_msg(rc == bc->err, "case %u on %s: got %d (%s), want %d", _i % (unsigned)NBAD,
		      mt_name[t], rc, pcopy_dest_error(d), bc->err);
	if (bc->msg)
		ck_assert_msg(strstr(pcopy_dest_error(d), bc->msg),
			      "message '%s' lacks '%s'", pcopy_dest_error(d), bc->msg);
	else
		ck_assert_str_ne(pcopy_dest_error(d), "");
	ck_assert_int_eq(atomic_load(&g_events), 1);
	ck_assert_int_eq(atomic_load(&g_event_err), bc->err);
	ck_assert_int_eq(pcopy_dest_stats(d, &st), 0);
	ck_assert_uint_eq(st.host_pages_received, before);
	/* Exactly the valid host pages sent before are in memory; not one
	 * byte of the bad frame or of a half-assembled host page. */
	for (i = 0; i < NREG; i++)
		for (a = 0; a < m[i].len; a += TP) {
			bool want = i == 0 && a < before * m[i].ps;

			ck_assert_msg(page_present(m[i].p + a) == want,
				      "region %u offset 0x%" PRIx64 " present=%d", i, a, !want);
		}
	for (a = 0; a < before * m[0].ps; a += TP) {
		uint8_t want[TP];

		fill_tp(0, a / TP, (unsigned)(m[0].ps / TP), want);
		ck_assert(!memcmp(m[0].p + a, want, TP));
	}
	pcopy_dest_destroy(d);
	fake_end(&f);
	ck_assert_int_eq(f.hs_rc, 0);
	ck_assert_int_eq(f.fail_line, 0);
	for (i = 0; i < NREG; i++)
		mem_free(&m[i]);
}
END_TEST

/* ------------------------------------------------------------------ */
/* tests: failure modes                                                */
/* ------------------------------------------------------------------ */

struct blocked {
	volatile uint8_t *addr;
	atomic_int state;	/* 0 started, 1 returned from the access */
	uint8_t seen;
	pthread_t thr;
};

static void *blocked_main(void *arg)
{
	struct blocked *b = arg;

	b->seen = *b->addr;
	atomic_store(&b->state, 1);
	return NULL;
}

/*
 * BLOCK mode: after the failure a faulting thread stays blocked; destroy
 * turns it into SIGSEGV, never a zero page. In a child process, which
 * reports each stage over a pipe before it dies.
 */
static int g_segv_fd = -1;
static volatile uintptr_t g_segv_addr;

/* The expected end of block_child: SIGSEGV (SEGV_ACCERR: PROT_NONE) on the
 * page the thread was blocked on. Own handler, so ASan builds agree. */
static void segv_handler(int sig, siginfo_t *si, void *uc)
{
	bool ok = si->si_code == SEGV_ACCERR &&
		  ((uintptr_t)si->si_addr & ~(uintptr_t)(TP - 1)) ==
			  (g_segv_addr & ~(uintptr_t)(TP - 1));

	(void)sig;
	(void)uc;
	if (write(g_segv_fd, ok ? "S" : "s", 1) != 1)
		_exit(50);
	_exit(ok ? 0 : 51);
}

static void block_child(enum mt t, int wfd)
{
	struct sigaction sa;

	struct mem m[NREG];
	struct pcopy_dest_opts o;
	struct pcopy_dest *d;
	struct blocked b;
	struct fake f;
	int fd, rc;

	if (!alloc_regions(m, t, false))
		_exit(3);
	opts_default(&o);
	d = dest_new(m, NREG, &o);
	fd = fake_start(&f, m, NREG, SC_WAIT_REQ_BAD);
	f.bad = SC_BAD_CRC;
	f.before = 1;
	b = (struct blocked){ .addr = m[1].p + m[1].len - 1 };
	g_segv_fd = wfd;
	g_segv_addr = (uintptr_t)b.addr;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = segv_handler;
	sa.sa_flags = SA_SIGINFO;
	sigaction(SIGSEGV, &sa, NULL);
	pthread_create(&b.thr, NULL, blocked_main, &b);
	fake_run(&f);
	pthread_detach(f.thr);	/* this process ends in the SIGSEGV handler */
	if (pcopy_dest_start(d, fd))
		_exit(4);
	rc = pcopy_dest_wait(d, 10000);
	if (rc != -EBADMSG)
		_exit(5);
	usleep(200000);
	if (atomic_load(&b.state) != 0)
		_exit(6);
	if (write(wfd, "B", 1) != 1)	/* blocked after the failure */
		_exit(7);
	pcopy_dest_destroy(d);
	/* The blocked thread must now die of SIGSEGV, taking us along. */
	usleep(2000000);
	if (write(wfd, b.seen == 0 ? "Z" : "V", 1) != 1)
		_exit(8);
	_exit(9);
}

START_TEST(test_block_then_destroy)
{
	enum mt t = (enum mt)_i;
	int p[2], st;
	char buf[8] = { 0 };
	pid_t pid;
	ssize_t n;

	if (huge_skip(t))
		return;
	ck_assert_int_eq(pipe(p), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		close(p[0]);
		block_child(t, p[1]);
	}
	close(p[1]);
	n = 0;
	while (n < (ssize_t)sizeof(buf) - 1) {
		ssize_t k = read(p[0], buf + n, sizeof(buf) - 1 - (size_t)n);

		if (k <= 0)
			break;
		n += k;
	}
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	close(p[0]);
	/* B: still blocked after the failure; S: then SIGSEGV on that page */
	ck_assert_msg(!strcmp(buf, "BS") && WIFEXITED(st) && WEXITSTATUS(st) == 0,
		      "child stages '%s' status 0x%x (exit %d)", buf, st,
		      WIFEXITED(st) ? WEXITSTATUS(st) : -1);
}
END_TEST

/* volatile: the stores around the faulting access must not be merged away */
static __thread sigjmp_buf *volatile tl_jmp;
static atomic_int g_sigbus_count;

static void sigbus_handler(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)si;
	(void)uc;
	atomic_fetch_add(&g_sigbus_count, 1);
	if (tl_jmp)
		siglongjmp(*tl_jmp, 1);
	{
		char m[96];
		int n = snprintf(m, sizeof(m), "SIGBUS in tid %d code %d pid %d\n",
				 (int)syscall(SYS_gettid), si->si_code, (int)si->si_pid);
		if (write(2, m, (size_t)n) < 0)
			_exit(41);
	}
	_exit(40);
}

struct sb_toucher {
	volatile uint8_t *addr;
	atomic_int result;	/* 1 SIGBUS, 2 returned with data */
	pthread_t thr;
};

/* Touch s->addr once; s->result says how it ended (SIGBUS or data). */
static void sb_touch(struct sb_toucher *s)
{
	sigjmp_buf jb;

	if (sigsetjmp(jb, 1) == 0) {
		tl_jmp = &jb;
		(void)*s->addr;
		tl_jmp = NULL;
		atomic_store(&s->result, 2);
	} else {
		tl_jmp = NULL;
		atomic_store(&s->result, 1);
	}
}

static void *sb_main(void *arg)
{
	sb_touch(arg);
	return NULL;
}

/* SIGBUS mode, in a child: exit 0 if a thread blocked at the failure and a
 * thread touching afterwards both get SIGBUS, received pages stay readable. */
static void sigbus_child(enum mt t)
{
	struct mem m[NREG];
	struct pcopy_dest_opts o;
	struct pcopy_dest *d;
	struct sb_toucher a, b;
	struct sigaction sa;
	uint8_t want[TP];
	struct fake f;
	int fd, i;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = sigbus_handler;
	sa.sa_flags = SA_SIGINFO;
	sigaction(SIGBUS, &sa, NULL);
	if (!alloc_regions(m, t, false))
		_exit(3);
	opts_default(&o);
	o.fail_mode = PCOPY_FAIL_SIGBUS;
	d = dest_new(m, NREG, &o);
	fd = fake_start(&f, m, NREG, SC_WAIT_REQ_BAD);
	f.bad = SC_BAD_REGION;
	f.before = 1;
	a = (struct sb_toucher){ .addr = m[1].p + TP };
	pthread_create(&a.thr, NULL, sb_main, &a);
	fake_run(&f);
	if (pcopy_dest_start(d, fd))
		_exit(4);
	if (pcopy_dest_wait(d, 10000) != -EPROTO)
		_exit(5);
	for (i = 0; i < 5000 && !atomic_load(&a.result); i++)
		usleep(1000);
	if (atomic_load(&a.result) != 1)
		_exit(10 + atomic_load(&a.result));	/* 10: still blocked */
	/* a new touch after the failure */
	b = (struct sb_toucher){ .addr = m[0].p + m[0].len - 1 };
	pthread_create(&b.thr, NULL, sb_main, &b);
	pthread_join(b.thr, NULL);
	if (atomic_load(&b.result) != 1)
		_exit(20 + atomic_load(&b.result));
	pthread_join(a.thr, NULL);
	/* received before the failure: still there, intact */
	fill_tp(0, 0, (unsigned)(m[0].ps / TP), want);
	if (memcmp(m[0].p, want, TP))
		_exit(30);
	if (atomic_load(&g_sigbus_count) < 2)
		_exit(31);
	pcopy_dest_destroy(d);
	fake_end(&f);
	_exit(0);
}

START_TEST(test_sigbus_mode)
{
	enum mt t = (enum mt)_i;
	pid_t pid;
	int st;

	if (huge_skip(t))
		return;
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0)
		sigbus_child(t);
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
		      "child status 0x%x exit %d", st, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
}
END_TEST

/* hugetlb with an empty pool: a clean -ENOMEM, no retry loop. */
START_TEST(test_hugetlb_pool_empty)
{
	struct mem m[NREG];
	struct pcopy_dest_opts o;
	struct pcopy_stats st;
	struct pcopy_dest *d;
	struct fake f;
	long freep = 0, over = 0;
	void *eat = NULL;
	size_t eatlen;
	FILE *fp;
	int rc;
	unsigned i;

	freep = tl_hugetlb_free();
	if (freep < 0) {
		fprintf(stderr, "SKIP hugetlb pool test: no 2 MiB hugetlb pool (HugePages_Free unreadable)\n");
		return;
	}
	fp = fopen("/proc/sys/vm/nr_overcommit_hugepages", "re");
	if (fp) {
		if (fscanf(fp, "%ld", &over) != 1)
			over = 0;
		fclose(fp);
	}
	if (over > 0) {
		fprintf(stderr, "SKIP hugetlb pool test: nr_overcommit_hugepages=%ld refills the pool\n", over);
		return;
	}
	/* Eat every free huge page, then map the regions without reserving. */
	eatlen = (size_t)freep * HUGE_PS;
	if (freep > 0) {
		eat = mmap(NULL, eatlen, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE, -1, 0);
		ck_assert_ptr_ne(eat, MAP_FAILED);
	}
	if (!alloc_regions(m, MT_HUGE, true)) {
		if (eat)
			munmap(eat, eatlen);
		return;
	}
	opts_default(&o);
	d = dest_new(m, NREG, &o);
	fake_start_main(&f, d, m, SC_NORMAL, PCOPY_FEAT_ZLIB, 0);
	rc = pcopy_dest_wait(d, 10000);
	ck_assert_msg(rc == -ENOMEM, "got %d: %s", rc, pcopy_dest_error(d));
	ck_assert_msg(strstr(pcopy_dest_error(d), "hugetlb pool exhausted"), "%s",
		      pcopy_dest_error(d));
	pcopy_dest_stats(d, &st);
	ck_assert_uint_eq(st.host_pages_received, 0);
	ck_assert_uint_eq(st.copy_retries, 0);
	pcopy_dest_destroy(d);
	fake_end(&f);
	for (i = 0; i < NREG; i++)
		mem_free(&m[i]);
	if (eat)
		munmap(eat, eatlen);
}

START_TEST(test_destroy_mid_restore)
{
	enum mt t = (enum mt)_i;
	struct mem m[NREG];
	struct pcopy_dest_opts o;
	struct pcopy_stats st;
	struct pcopy_dest *d;
	struct fake f;
	unsigned i;
	char perms[8];
	int k;

	if (huge_skip(t) || !alloc_regions(m, t, false))
		return;
	opts_default(&o);
	/* the source stalls after 2 host pages */
	d = dest_new(m, NREG, &o);
	fake_start_main(&f, d, m, SC_STALL, PCOPY_FEAT_ZLIB, 2);
	wait_received(d, 2, &st);
	ck_assert_int_eq(pcopy_dest_wait(d, 0), -ETIMEDOUT);
	pcopy_dest_destroy(d);
	fake_end(&f);
	ck_assert_int_eq(atomic_load(&g_events), 0);	/* destroy is no failure */
	/* received pages intact and accessible, the rest PROT_NONE */
	addr_perms(m[0].p, perms);
	ck_assert_msg(perms[0] == 'r', "%s", perms);
	for (k = 0; k < 2; k++) {
		uint8_t want[TP];
		uint64_t a;

		for (a = (uint64_t)k * m[0].ps; a < (uint64_t)(k + 1) * m[0].ps; a += TP) {
			fill_tp(0, a / TP, (unsigned)(m[0].ps / TP), want);
			ck_assert(!memcmp(m[0].p + a, want, TP));
		}
	}
	addr_perms(m[0].p + 2 * m[0].ps, perms);
	ck_assert_msg(perms[0] == '-' && perms[1] == '-', "%s", perms);
	addr_perms(m[1].p, perms);
	ck_assert_msg(perms[0] == '-' && perms[1] == '-', "%s", perms);
	for (i = 0; i < NREG; i++)
		mem_free(&m[i]);
}


/*
 * SIGBUS mode, a failure found by the fault thread (a bad frame on the
 * urgent connection), and an on_event callback that takes a lock held by an
 * application thread blocked on a missing page. Only the fault thread can
 * send that thread its SIGBUS: the callback must not run there, or neither
 * ever goes on. In a child: exit 0 if the thread got SIGBUS and the
 * callback ran (on another thread) and the wait returned the error.
 */
static pthread_mutex_t g_app_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int g_locked_event_err, g_locked_event_tid;

static void locked_event_cb(void *opaque, int err)
{
	(void)opaque;
	pthread_mutex_lock(&g_app_lock);
	atomic_store(&g_locked_event_err, err);
	atomic_store(&g_locked_event_tid, (int)syscall(SYS_gettid));
	pthread_mutex_unlock(&g_app_lock);
}

static void *locked_toucher(void *arg)
{
	pthread_mutex_lock(&g_app_lock);
	sb_touch(arg);
	pthread_mutex_unlock(&g_app_lock);
	return NULL;
}

static void sigbus_lock_child(void)
{
	struct mem m[NREG];
	struct pcopy_dest_opts o;
	struct pcopy_dest *d;
	struct sb_toucher a;
	struct sigaction sa;
	struct fake f, u;
	int fd, ufd, i, rc;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = sigbus_handler;
	sa.sa_flags = SA_SIGINFO;
	sigaction(SIGBUS, &sa, NULL);
	if (!alloc_regions(m, MT_ANON, false))
		_exit(3);
	opts_default(&o);
	o.fail_mode = PCOPY_FAIL_SIGBUS;
	o.flags |= PCOPY_DEST_NO_RESUME;
	o.on_event = locked_event_cb;
	d = dest_new(m, NREG, &o);
	fd = fake_start(&f, m, NREG, SC_HOLD);
	f.offer = FEAT_ALL;
	fake_run(&f);
	if (pcopy_dest_start(d, fd))
		_exit(4);
	/* the urgent source answers the first request with a bad frame */
	ufd = fake_start(&u, m, NREG, SC_WAIT_REQ_BAD);
	u.offer = FEAT_ALL;
	u.bad = SC_BAD_CRC;
	fake_run(&u);
	if (pcopy_dest_add_urgent(d, ufd))
		_exit(6);
	a = (struct sb_toucher){ .addr = m[1].p + TP };
	pthread_create(&a.thr, NULL, locked_toucher, &a);
	rc = pcopy_dest_wait(d, 10000);
	if (rc != -EBADMSG)
		_exit(rc == -ETIMEDOUT ? 7 : 8);	/* 7: the callback is stuck */
	for (i = 0; i < 5000 && !atomic_load(&a.result); i++)
		usleep(1000);
	if (atomic_load(&a.result) != 1)
		_exit(10 + atomic_load(&a.result));
	pthread_join(a.thr, NULL);
	if (atomic_load(&g_locked_event_err) != -EBADMSG)
		_exit(20);
	atomic_store(&f.release, true);
	pcopy_dest_destroy(d);
	fake_end(&f);
	fake_end(&u);
	_exit(0);
}

START_TEST(test_sigbus_event_lock)
{
	pid_t pid;
	int st;

	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0)
		sigbus_lock_child();
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
		      "child status 0x%x exit %d", st, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
}

static Suite *make_suite(bool vg)
{
	Suite *s = suite_create("dest_failure");
	TCase *tc;

	if (vg) {
		tc = tcase_create("valgrind_runtime");
		tcase_add_checked_fixture(tc, reset_events, NULL);
		tcase_set_timeout(tc, 600);
		tcase_add_loop_test(tc, test_bad_input, 0, (int)(MT_N * NBAD));
		tcase_add_loop_test(tc, test_destroy_mid_restore, 0, MT_N);
		suite_add_tcase(s, tc);
		return s;
	}

	tc = tcase_create("bad_input");
	tcase_add_checked_fixture(tc, reset_events, NULL);
	tcase_set_timeout(tc, 30);
	tcase_add_loop_test(tc, test_bad_input, 0, (int)(MT_N * NBAD));
	suite_add_tcase(s, tc);

	tc = tcase_create("failure");
	tcase_add_checked_fixture(tc, reset_events, NULL);
	tcase_set_timeout(tc, 30);
	tcase_add_loop_test(tc, test_block_then_destroy, 0, MT_N);
	tcase_add_loop_test(tc, test_sigbus_mode, 0, MT_N);
	tcase_add_test(tc, test_sigbus_event_lock);
	tcase_add_test(tc, test_hugetlb_pool_empty);
	tcase_add_loop_test(tc, test_destroy_mid_restore, 0, MT_N);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return dest_suite_main("check_dest_failure", make_suite);
}
