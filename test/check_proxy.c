/* SPDX-License-Identifier: MIT */
/*
 * The fault-injection proxy itself (test/proxy.c), against plain sockets:
 * exact bytes delivered, cuts at the right position (fixed, random and
 * replayable from the seed, on the k-th connection), stalls, throttling,
 * one-byte writes, corruption at the right offset, half-close, and frame
 * duplication / dropping on synthetic wire frames.
 */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "proxy.h"
#include "wire.h"

#define TIMEOUT_MS 10000

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint8_t *pattern(size_t n, unsigned seed)
{
	uint8_t *b = malloc(n ? n : 1);
	size_t i;

	ck_assert_ptr_nonnull(b);
	for (i = 0; i < n; i++)
		b[i] = (uint8_t)(i * 131u + (i >> 9) + seed * 7u);
	return b;
}

/* ---- a writer thread and a reader ---- */

struct writer {
	pthread_t t;
	int fd;
	const uint8_t *buf;
	size_t len, chunk;
	bool shut;		/* shutdown(SHUT_WR) when done */
	int err;		/* 0 or -errno of the first failed send */
	size_t sent;
};

static void *writer_main(void *arg)
{
	struct writer *w = arg;

	while (w->sent < w->len) {
		size_t n = w->len - w->sent;
		ssize_t r;

		if (w->chunk && n > w->chunk)
			n = w->chunk;
		r = send(w->fd, w->buf + w->sent, n, MSG_NOSIGNAL);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			w->err = -errno;
			return NULL;
		}
		w->sent += (size_t)r;
	}
	if (w->shut)
		shutdown(w->fd, SHUT_WR);
	return NULL;
}

static void writer_start(struct writer *w, int fd, const uint8_t *buf,
			 size_t len, bool shut)
{
	memset(w, 0, sizeof(*w));
	w->fd = fd;
	w->buf = buf;
	w->len = len;
	w->shut = shut;
	ck_assert_int_eq(pthread_create(&w->t, NULL, writer_main, w), 0);
}

static void writer_join(struct writer *w)
{
	pthread_join(w->t, NULL);
}

/*
 * Read until EOF (or a reset, which counts as the end too) into buf. If
 * mark_ns is given, it gets the time at which byte `mark` arrived. Fails
 * the test if nothing arrives for TIMEOUT_MS. Returns the bytes read.
 */
static size_t read_all(int fd, uint8_t *buf, size_t cap, size_t mark,
		       uint64_t *mark_ms, unsigned *nreads)
{
	size_t got = 0;

	for (;;) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		ssize_t r;

		ck_assert_msg(poll(&pfd, 1, TIMEOUT_MS) == 1,
			      "no data for %d ms after %zu bytes", TIMEOUT_MS,
			      got);
		r = recv(fd, buf + got, cap - got, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && errno == ECONNRESET)
			break;
		ck_assert_msg(r >= 0, "recv: %s", strerror(errno));
		if (r == 0)
			break;
		if (mark_ms && got <= mark && got + (size_t)r > mark)
			*mark_ms = now_ms();
		got += (size_t)r;
		if (nreads)
			(*nreads)++;
		ck_assert_msg(got < cap, "more bytes than expected");
	}
	return got;
}

static struct proxy *make_proxy(uint64_t seed, const char *const *specs)
{
	struct proxy_rule r;
	struct proxy *px;
	char err[256];

	ck_assert_int_eq(proxy_create(&px, seed, NULL), 0);
	for (; specs && *specs; specs++) {
		ck_assert_msg(proxy_parse_rule(*specs, &r, err, sizeof(err)) == 0,
			      "%s", err);
		ck_assert_int_eq(proxy_add_rule(px, &r), 0);
	}
	ck_assert_int_eq(proxy_start(px), 0);
	return px;
}

/* Send len pattern bytes a -> b through a fresh connection; return what b
 * received (in *got) and the connection's number. */
static unsigned one_way(struct proxy *px, const uint8_t *src, size_t len,
			uint8_t *dst, size_t cap, size_t *got)
{
	struct writer w;
	int a, b, k;

	k = proxy_pair(px, &a, &b);
	ck_assert_int_ge(k, 1);
	writer_start(&w, a, src, len, true);
	*got = read_all(b, dst, cap, 0, NULL, NULL);
	writer_join(&w);
	close(a);
	close(b);
	ck_assert_int_eq(proxy_wait_closed(px, (unsigned)k, TIMEOUT_MS), 0);
	return (unsigned)k;
}

/* ---- plain forwarding ---- */

START_TEST(test_passthrough)
{
	const size_t n1 = 4u << 20, n2 = 1u << 20;
	uint8_t *s1 = pattern(n1, 1), *s2 = pattern(n2, 2);
	uint8_t *d1 = malloc(n1 + 1), *d2 = malloc(n2 + 1);
	struct proxy_conn_stats st;
	struct writer wa, wb;
	struct proxy *px = make_proxy(1, NULL);
	size_t g1, g2;
	int a, b;

	ck_assert_int_eq(proxy_pair(px, &a, &b), 1);
	/* both directions at once, in odd-sized writes */
	writer_start(&wa, a, s1, n1, true);
	wa.chunk = 12345;
	writer_start(&wb, b, s2, n2, true);
	g2 = read_all(a, d2, n2 + 1, 0, NULL, NULL);
	g1 = read_all(b, d1, n1 + 1, 0, NULL, NULL);
	writer_join(&wa);
	writer_join(&wb);
	ck_assert_uint_eq(g1, n1);
	ck_assert_uint_eq(g2, n2);
	ck_assert(memcmp(s1, d1, n1) == 0);
	ck_assert(memcmp(s2, d2, n2) == 0);
	ck_assert_int_eq(proxy_wait_closed(px, 1, TIMEOUT_MS), 0);
	ck_assert_int_eq(proxy_stats(px, 1, &st), 0);
	ck_assert(!st.open && !st.failed);
	ck_assert_uint_eq(st.dir[PROXY_A2B].bytes_in, n1);
	ck_assert_uint_eq(st.dir[PROXY_A2B].bytes_out, n1);
	ck_assert_uint_eq(st.dir[PROXY_B2A].bytes_out, n2);
	ck_assert(!st.dir[0].cut && !st.dir[1].cut);
	ck_assert_int_eq(proxy_stats(px, 2, &st), -ENOENT);
	close(a);
	close(b);
	proxy_destroy(px);
	free(s1); free(s2); free(d1); free(d2);
}
END_TEST

/* ---- cuts ---- */

static const uint64_t cut_points[] = { 0, 1, 31, 32, 4096, 100000, 262143 };

START_TEST(test_cut)
{
	const size_t n = 256u << 10;
	uint64_t at = cut_points[_i];
	uint8_t *src = pattern(n, 3), *dst = malloc(n + 1);
	char spec[64];
	const char *specs[] = { spec, NULL };
	struct proxy_conn_stats st;
	struct proxy *px;
	uint8_t x;
	size_t got;
	int a, b;
	struct writer w;

	snprintf(spec, sizeof(spec), "a2b:cut@%llu", (unsigned long long)at);
	px = make_proxy(1, specs);
	ck_assert_int_eq(proxy_pair(px, &a, &b), 1);
	writer_start(&w, a, src, n, true);
	got = read_all(b, dst, n + 1, 0, NULL, NULL);
	ck_assert_uint_eq(got, at);
	ck_assert(memcmp(src, dst, got) == 0);
	ck_assert_int_eq(proxy_wait_closed(px, 1, TIMEOUT_MS), 0);
	writer_join(&w);
	/* The sender's side was cut too: it cannot have sent everything
	 * unless it all fitted in socket buffers, and it reads EOF. */
	ck_assert_int_le(recv(a, &x, 1, 0), 0);
	ck_assert_int_eq(proxy_stats(px, 1, &st), 0);
	ck_assert(st.dir[PROXY_A2B].cut);
	ck_assert_uint_eq(st.dir[PROXY_A2B].cut_at, at);
	ck_assert_uint_eq(st.dir[PROXY_A2B].bytes_out, at);
	close(a);
	close(b);
	proxy_destroy(px);
	free(src);
	free(dst);
}
END_TEST

/* Random cut: inside the range, exactly where the stats say, and the same
 * position again for the same seed and connection number. */
START_TEST(test_cut_random)
{
	const size_t n = 256u << 10;
	const char *specs[] = { "b2a:cut-random@1000=200000", NULL };
	uint8_t *src = pattern(n, 4), *dst = malloc(n + 1);
	struct proxy_conn_stats st;
	uint64_t first[3], again;
	struct proxy *px;
	struct writer w;
	size_t got;
	unsigned k;
	int a, b;

	unsetenv("PCOPY_PROXY_SEED");
	px = make_proxy(424242, specs);
	ck_assert_uint_eq(proxy_seed(px), 424242);
	for (k = 1; k <= 3; k++) {
		ck_assert_int_eq(proxy_pair(px, &a, &b), (int)k);
		writer_start(&w, b, src, n, true);
		got = read_all(a, dst, n + 1, 0, NULL, NULL);
		writer_join(&w);
		ck_assert_int_eq(proxy_wait_closed(px, k, TIMEOUT_MS), 0);
		ck_assert_int_eq(proxy_stats(px, k, &st), 0);
		ck_assert(st.dir[PROXY_B2A].cut);
		first[k - 1] = st.dir[PROXY_B2A].cut_at;
		ck_assert_uint_eq(got, first[k - 1]);
		ck_assert_uint_ge(got, 1000);
		ck_assert_uint_lt(got, 200000);
		ck_assert(memcmp(src, dst, got) == 0);
		close(a);
		close(b);
	}
	/* connections draw different positions */
	ck_assert(first[0] != first[1] || first[1] != first[2]);
	proxy_destroy(px);

	/* replay through the environment variable, as a failing run says */
	setenv("PCOPY_PROXY_SEED", "424242", 1);
	px = make_proxy(7, specs);
	unsetenv("PCOPY_PROXY_SEED");
	ck_assert_uint_eq(proxy_seed(px), 424242);
	for (k = 1; k <= 2; k++) {
		ck_assert_int_eq(proxy_pair(px, &a, &b), (int)k);
		writer_start(&w, b, src, n, true);
		got = read_all(a, dst, n + 1, 0, NULL, NULL);
		writer_join(&w);
		ck_assert_int_eq(proxy_wait_closed(px, k, TIMEOUT_MS), 0);
		ck_assert_int_eq(proxy_stats(px, k, &st), 0);
		again = st.dir[PROXY_B2A].cut_at;
		ck_assert_uint_eq(again, first[k - 1]);
		ck_assert_uint_eq(got, again);
		close(a);
		close(b);
	}
	proxy_destroy(px);
	free(src);
	free(dst);
}
END_TEST

/* A rule for the k-th connection leaves the others alone: the resume case. */
START_TEST(test_kth_conn)
{
	const size_t n = 64u << 10;
	const char *specs[] = { "a2b:cut@10,conn=2", "a2b:flip@5=0xff,conn=3",
				NULL };
	uint8_t *src = pattern(n, 5), *dst = malloc(n + 1);
	struct proxy *px = make_proxy(1, specs);
	size_t got;

	ck_assert_uint_eq(one_way(px, src, n, dst, n + 1, &got), 1);
	ck_assert_uint_eq(got, n);
	ck_assert(memcmp(src, dst, n) == 0);
	ck_assert_uint_eq(one_way(px, src, n, dst, n + 1, &got), 2);
	ck_assert_uint_eq(got, 10);
	ck_assert_uint_eq(one_way(px, src, n, dst, n + 1, &got), 3);
	ck_assert_uint_eq(got, n);
	ck_assert_uint_eq(dst[5], (uint8_t)(src[5] ^ 0xff));
	dst[5] ^= 0xff;
	ck_assert(memcmp(src, dst, n) == 0);
	ck_assert_uint_eq(one_way(px, src, n, dst, n + 1, &got), 4);
	ck_assert_uint_eq(got, n);
	ck_assert(memcmp(src, dst, n) == 0);
	ck_assert_uint_eq(proxy_conns(px), 4);
	proxy_destroy(px);
	free(src);
	free(dst);
}
END_TEST

/* ---- timing: stall, throttle, split ---- */

START_TEST(test_stall)
{
	const size_t n = 8192;
	const char *specs[] = { "a2b:stall@1000=300", NULL };
	uint8_t *src = pattern(n, 6), *dst = malloc(n + 1);
	struct proxy *px = make_proxy(1, specs);
	uint64_t t0, t_mark = 0;
	struct writer w;
	size_t got;
	int a, b;

	ck_assert_int_eq(proxy_pair(px, &a, &b), 1);
	t0 = now_ms();
	writer_start(&w, a, src, n, true);
	got = read_all(b, dst, n + 1, 1000, &t_mark, NULL);
	writer_join(&w);
	ck_assert_uint_eq(got, n);
	ck_assert(memcmp(src, dst, n) == 0);
	/* byte 1000 is held at least the 300 ms (a lower bound: never flaky) */
	ck_assert_msg(t_mark - t0 >= 290, "byte 1000 after %llu ms",
		      (unsigned long long)(t_mark - t0));
	close(a);
	close(b);
	proxy_destroy(px);
	free(src);
	free(dst);
}
END_TEST

START_TEST(test_throttle)
{
	const size_t n = 64u << 10;
	const char *specs[] = { "a2b:throttle=128k", NULL };
	uint8_t *src = pattern(n, 7), *dst = malloc(n + 1);
	struct proxy *px = make_proxy(1, specs);
	uint64_t t0, el;
	size_t got;

	t0 = now_ms();
	one_way(px, src, n, dst, n + 1, &got);
	el = now_ms() - t0;
	ck_assert_uint_eq(got, n);
	ck_assert(memcmp(src, dst, n) == 0);
	/* 64 KiB at 128 KiB/s with a 20 ms burst: at least ~480 ms */
	ck_assert_msg(el >= 450, "64 KiB took only %llu ms",
		      (unsigned long long)el);
	proxy_destroy(px);
	free(src);
	free(dst);
}
END_TEST

START_TEST(test_split)
{
	const size_t n = 3000;
	const char *specs[] = { "b2a:split@1000", NULL };
	uint8_t *src = pattern(n, 8), *dst = malloc(n + 1);
	struct proxy *px = make_proxy(1, specs);
	struct proxy_conn_stats st;
	struct writer w;
	size_t got;
	int a, b;

	ck_assert_int_eq(proxy_pair(px, &a, &b), 1);
	writer_start(&w, b, src, n, true);	/* one 3000-byte send */
	got = read_all(a, dst, n + 1, 0, NULL, NULL);
	writer_join(&w);
	ck_assert_uint_eq(got, n);
	ck_assert(memcmp(src, dst, n) == 0);
	close(a);	/* the connection ends when both directions have */
	close(b);
	ck_assert_int_eq(proxy_wait_closed(px, 1, TIMEOUT_MS), 0);
	ck_assert_int_eq(proxy_stats(px, 1, &st), 0);
	/* the first 1000 bytes in few writes, then one write per byte */
	ck_assert_uint_ge(st.dir[PROXY_B2A].writes, 2000 + 1);
	ck_assert_uint_le(st.dir[PROXY_B2A].writes, 2000 + 1000);
	proxy_destroy(px);
	free(src);
	free(dst);
}
END_TEST

/* ---- corruption ---- */

START_TEST(test_corrupt)
{
	const size_t n = 100000;
	const char *specs[] = { "a2b:flip@0", "a2b:flip@4095=0x80",
				"a2b:replace@65534=deadbeef", "b2a:flip@3=0x10",
				NULL };
	uint8_t *src = pattern(n, 9), *want = pattern(n, 9);
	uint8_t *dst = malloc(n + 1);
	struct proxy *px = make_proxy(1, specs);
	struct proxy_conn_stats st;
	size_t got;

	want[0] ^= 0x01;
	want[4095] ^= 0x80;
	memcpy(want + 65534, "\xde\xad\xbe\xef", 4);
	one_way(px, src, n, dst, n + 1, &got);
	ck_assert_uint_eq(got, n);
	ck_assert(memcmp(want, dst, n) == 0);
	ck_assert_int_eq(proxy_stats(px, 1, &st), 0);
	ck_assert_uint_eq(st.dir[PROXY_A2B].bytes_corrupted, 6);
	ck_assert_uint_eq(st.dir[PROXY_B2A].bytes_corrupted, 0);
	proxy_destroy(px);
	free(src);
	free(want);
	free(dst);
}
END_TEST

/* Several rules on one direction: flip, then a stall, then a cut. */
START_TEST(test_combined)
{
	const size_t n = 10000;
	const char *specs[] = { "a2b:cut@200", "a2b:flip@50=0x0f",
				"a2b:stall@100=100", "a2b:flip@300", NULL };
	uint8_t *src = pattern(n, 10), *dst = malloc(n + 1);
	struct proxy *px = make_proxy(1, specs);
	struct proxy_conn_stats st;
	size_t got;

	one_way(px, src, n, dst, n + 1, &got);
	ck_assert_uint_eq(got, 200);
	ck_assert_uint_eq(dst[50], (uint8_t)(src[50] ^ 0x0f));
	dst[50] = src[50];
	ck_assert(memcmp(src, dst, 200) == 0);
	ck_assert_int_eq(proxy_stats(px, 1, &st), 0);
	ck_assert(st.dir[PROXY_A2B].stalled && st.dir[PROXY_A2B].cut);
	ck_assert_uint_eq(st.dir[PROXY_A2B].bytes_corrupted, 1);
	proxy_destroy(px);
	free(src);
	free(dst);
}
END_TEST

/* ---- half close ---- */

START_TEST(test_shutdown)
{
	const size_t n = 50000;
	const char *specs[] = { "a2b:shutdown@100", NULL };
	uint8_t *src = pattern(n, 11), *back = pattern(n, 12);
	uint8_t *dst = malloc(n + 1);
	struct proxy *px = make_proxy(1, specs);
	struct proxy_conn_stats st;
	struct writer wa, wb;
	size_t got;
	int a, b;

	ck_assert_int_eq(proxy_pair(px, &a, &b), 1);
	writer_start(&wa, a, src, n, true);
	got = read_all(b, dst, n + 1, 0, NULL, NULL);
	ck_assert_uint_eq(got, 100);	/* EOF right after byte 99 */
	ck_assert(memcmp(src, dst, 100) == 0);
	/* the other direction still works, all of it */
	writer_start(&wb, b, back, n, true);
	got = read_all(a, dst, n + 1, 0, NULL, NULL);
	ck_assert_uint_eq(got, n);
	ck_assert(memcmp(back, dst, n) == 0);
	writer_join(&wa);
	writer_join(&wb);
	ck_assert_int_eq(wa.err, 0);	/* the sender was not cut off */
	ck_assert_int_eq(proxy_wait_closed(px, 1, TIMEOUT_MS), 0);
	ck_assert_int_eq(proxy_stats(px, 1, &st), 0);
	ck_assert(st.dir[PROXY_A2B].shut && !st.dir[PROXY_A2B].cut);
	ck_assert_uint_eq(st.dir[PROXY_A2B].bytes_in, n);	/* drained */
	ck_assert_uint_eq(st.dir[PROXY_A2B].bytes_out, 100);
	close(a);
	close(b);
	proxy_destroy(px);
	free(src);
	free(back);
	free(dst);
}
END_TEST

/* ---- frames ---- */

#define NFRAMES 8

struct frames {
	uint8_t *buf;
	size_t len;
	size_t off[NFRAMES + 1];	/* frame i is [off[i], off[i+1]) */
};

/* PAGE raw, PAGE zero, REQ, PAGE raw, ERROR, PAGE raw, END, DONE. */
static void make_frames(struct frames *f)
{
	static const uint8_t types[NFRAMES] = {
		PCOPY_MSG_PAGE, PCOPY_MSG_PAGE, PCOPY_MSG_REQ, PCOPY_MSG_PAGE,
		PCOPY_MSG_ERROR, PCOPY_MSG_PAGE, PCOPY_MSG_END, PCOPY_MSG_DONE,
	};
	unsigned i;

	f->buf = malloc(NFRAMES * (PCOPY_WIRE_HDR_SIZE + 4096));
	f->len = 0;
	for (i = 0; i < NFRAMES; i++) {
		struct wire_hdr h = { .magic = PCOPY_WIRE_MAGIC, .type = types[i] };
		uint8_t pl[4096];
		size_t j;

		for (j = 0; j < sizeof(pl); j++)
			pl[j] = (uint8_t)(i * 17 + j);
		if (i == 1) {
			h.kind = PCOPY_KIND_ZERO;
			h.count = 1;
			h.offset = 4096;
		} else if (types[i] == PCOPY_MSG_PAGE) {
			h.kind = PCOPY_KIND_RAW;
			h.count = 1;
			h.offset = (uint64_t)i * 4096;
			h.length = 4096;
		} else if (types[i] == PCOPY_MSG_REQ) {
			h.count = 2;
			h.length = 32;
		} else if (types[i] == PCOPY_MSG_ERROR) {
			h.length = 20;
		}
		f->off[i] = f->len;
		wire_hdr_seal(f->buf + f->len, &h, pl, h.length);
		memcpy(f->buf + f->len + PCOPY_WIRE_HDR_SIZE, pl, h.length);
		f->len += PCOPY_WIRE_HDR_SIZE + h.length;
	}
	f->off[NFRAMES] = f->len;
}

/* The expected stream: frame i appears times[i] times, in order. */
static size_t expect(const struct frames *f, const unsigned *times,
		     uint8_t *out)
{
	size_t n = 0;
	unsigned i, t;

	for (i = 0; i < NFRAMES; i++)
		for (t = 0; t < times[i]; t++) {
			memcpy(out + n, f->buf + f->off[i], f->off[i + 1] - f->off[i]);
			n += f->off[i + 1] - f->off[i];
		}
	return n;
}

/*
 * Loop index: 0 = the stream written in one piece to the frame proxy;
 * 1 = through a splitting proxy first, so the frame proxy reads it in tiny
 * pieces and must reassemble headers across reads.
 */
START_TEST(test_frames)
{
	/* drop frame 2 (the REQ), duplicate frame 3, drop PAGE number 3
	 * counting PAGEs only (frames 0, 1, 3, 5: frame 5), duplicate END
	 * number 0 (frame 6) */
	const char *specs[] = { "a2b:drop-frame=2", "a2b:dup-frame=3",
				"a2b:drop-frame=3,type=2", "a2b:dup-frame=0,type=3",
				NULL };
	const char *split_specs[] = { "a2b:split", NULL };
	static const unsigned times[NFRAMES] = { 1, 1, 0, 2, 1, 0, 2, 1 };
	struct proxy *px = make_proxy(1, specs), *pre = NULL;
	struct proxy_conn_stats st;
	struct frames f;
	struct writer w;
	uint8_t *want, *dst;
	size_t wn, got;
	int a, b;

	make_frames(&f);
	want = malloc(2 * f.len);
	dst = malloc(2 * f.len);
	wn = expect(&f, times, want);

	if (_i == 0) {
		ck_assert_int_eq(proxy_pair(px, &a, &b), 1);
	} else {
		/* a -> [pre: split] -> x -> [px: frames] -> fds[0] = b */
		int fds[2], x;

		pre = make_proxy(2, split_specs);
		ck_assert_int_eq(proxy_pair(pre, &a, &x), 1);
		ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
		ck_assert_int_eq(proxy_attach(px, x, fds[0]), 1);
		b = fds[1];
	}
	writer_start(&w, a, f.buf, f.len, true);
	got = read_all(b, dst, 2 * f.len, 0, NULL, NULL);
	writer_join(&w);
	ck_assert_uint_eq(got, wn);
	ck_assert(memcmp(want, dst, wn) == 0);
	close(a);
	close(b);

	ck_assert_int_eq(proxy_wait_closed(px, 1, TIMEOUT_MS), 0);
	ck_assert_int_eq(proxy_stats(px, 1, &st), 0);
	ck_assert_uint_eq(st.dir[PROXY_A2B].frames, NFRAMES);
	ck_assert_uint_eq(st.dir[PROXY_A2B].frames_dropped, 2);
	ck_assert_uint_eq(st.dir[PROXY_A2B].frames_duplicated, 2);
	ck_assert(!st.dir[PROXY_A2B].desync);
	if (pre) {
		/* the split proxy really wrote one byte at a time */
		ck_assert_int_eq(proxy_wait_closed(pre, 1, TIMEOUT_MS), 0);
		ck_assert_int_eq(proxy_stats(pre, 1, &st), 0);
		ck_assert_uint_eq(st.dir[PROXY_A2B].writes, f.len);
	}
	proxy_destroy(px);
	proxy_destroy(pre);
	free(f.buf);
	free(want);
	free(dst);
}
END_TEST

/* A cut in the middle of a header the tracker holds: the bytes before the
 * cut still arrive; frame corruption and dropping compose. */
START_TEST(test_frames_cut)
{
	struct frames f;
	char s_cut[64];
	const char *specs[] = { "a2b:drop-frame=1", s_cut, "a2b:flip@40", NULL };
	struct proxy *px;
	uint8_t *dst;
	size_t got, at;
	static const unsigned times[NFRAMES] = { 1, 0, 1, 1, 1, 1, 1, 1 };
	uint8_t *want;

	make_frames(&f);
	at = f.off[3] + 10;	/* inside the header of frame 3 */
	snprintf(s_cut, sizeof(s_cut), "a2b:cut@%zu", at);
	px = make_proxy(1, specs);
	dst = malloc(f.len + 1);
	want = malloc(2 * f.len);
	expect(&f, times, want);
	want[40] ^= 0x01;	/* inside frame 0's payload */
	one_way(px, f.buf, f.len, dst, f.len + 1, &got);
	/* everything before the cut except frame 1 */
	ck_assert_uint_eq(got, at - (f.off[2] - f.off[1]));
	ck_assert(memcmp(want, dst, got) == 0);
	proxy_destroy(px);
	free(f.buf);
	free(dst);
	free(want);
}
END_TEST

/* Cut relative to a frame: before it, inside its header, right after the
 * header, inside its payload; counting all frames or one type only. */
START_TEST(test_cut_frame)
{
	static const struct { const char *spec; unsigned frame; size_t at; }
	cases[] = {
		{ "a2b:cut-frame=3", 3, 0 },
		{ "a2b:cut-frame@10=3", 3, 10 },
		{ "a2b:cut-frame@32=3", 3, 32 },
		{ "a2b:cut-frame@1000=3", 3, 1000 },
		{ "a2b:cut-frame@5=0,type=4", 2, 5 },	/* the REQ */
		{ "a2b:cut-frame@40=2,type=2", 3, 40 },	/* third PAGE */
	};
	const char *specs[] = { cases[_i].spec, NULL };
	struct proxy_conn_stats st;
	struct frames f;
	struct proxy *px;
	uint8_t *dst;
	size_t got, want;

	make_frames(&f);
	want = f.off[cases[_i].frame] + cases[_i].at;
	px = make_proxy(1, specs);
	dst = malloc(f.len + 1);
	one_way(px, f.buf, f.len, dst, f.len + 1, &got);
	ck_assert_uint_eq(got, want);
	ck_assert(memcmp(f.buf, dst, got) == 0);
	ck_assert_int_eq(proxy_stats(px, 1, &st), 0);
	ck_assert(st.dir[PROXY_A2B].cut);
	ck_assert_uint_eq(st.dir[PROXY_A2B].cut_at, want);
	proxy_destroy(px);
	free(f.buf);
	free(dst);
}
END_TEST

/* Bytes that are not frames pass untouched; the tracker gives up. */
START_TEST(test_not_frames)
{
	const size_t n = 20000;
	const char *specs[] = { "a2b:drop-frame=0", "a2b:dup-frame=1", NULL };
	uint8_t *src = pattern(n, 13), *dst = malloc(n + 1);
	struct proxy *px = make_proxy(1, specs);
	struct proxy_conn_stats st;
	size_t got;

	one_way(px, src, n, dst, n + 1, &got);
	ck_assert_uint_eq(got, n);
	ck_assert(memcmp(src, dst, n) == 0);
	ck_assert_int_eq(proxy_stats(px, 1, &st), 0);
	ck_assert(st.dir[PROXY_A2B].desync);
	ck_assert_uint_eq(st.dir[PROXY_A2B].frames, 0);
	proxy_destroy(px);
	free(src);
	free(dst);
}
END_TEST

/* ---- listener mode over TCP ---- */

START_TEST(test_listen_tcp)
{
	const size_t n = 1u << 20;
	const char *specs[] = { "b2a:flip@777=0x40", NULL };
	uint8_t *src = pattern(n, 14), *dst = malloc(n + 1);
	struct sockaddr_in up = { .sin_family = AF_INET }, pa = up;
	socklen_t sl = sizeof(up);
	struct proxy *px = make_proxy(1, specs);
	struct writer w;
	int ls, pl, cl, srv;
	size_t got;

	up.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	pa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	/* the upstream server */
	ls = socket(AF_INET, SOCK_STREAM, 0);
	ck_assert(bind(ls, (struct sockaddr *)&up, sizeof(up)) == 0);
	ck_assert(listen(ls, 4) == 0);
	ck_assert(getsockname(ls, (struct sockaddr *)&up, &sl) == 0);
	/* the proxy's listener */
	pl = socket(AF_INET, SOCK_STREAM, 0);
	ck_assert(bind(pl, (struct sockaddr *)&pa, sizeof(pa)) == 0);
	ck_assert(listen(pl, 4) == 0);
	sl = sizeof(pa);
	ck_assert(getsockname(pl, (struct sockaddr *)&pa, &sl) == 0);
	ck_assert_int_eq(proxy_listen(px, pl, (struct sockaddr *)&up,
				      sizeof(up)), 0);

	cl = socket(AF_INET, SOCK_STREAM, 0);
	ck_assert(connect(cl, (struct sockaddr *)&pa, sizeof(pa)) == 0);
	srv = accept(ls, NULL, NULL);
	ck_assert_int_ge(srv, 0);
	writer_start(&w, srv, src, n, true);
	got = read_all(cl, dst, n + 1, 0, NULL, NULL);
	writer_join(&w);
	ck_assert_uint_eq(got, n);
	ck_assert_uint_eq(dst[777], (uint8_t)(src[777] ^ 0x40));
	dst[777] = src[777];
	ck_assert(memcmp(src, dst, n) == 0);
	ck_assert_uint_eq(proxy_conns(px), 1);
	close(cl);
	close(srv);
	close(ls);
	proxy_destroy(px);
	free(src);
	free(dst);
}
END_TEST

/* ---- rule text ---- */

START_TEST(test_parse)
{
	struct proxy_rule r;
	char err[256];

	ck_assert_int_eq(proxy_parse_rule("b2a:cut@64k", &r, err, sizeof(err)), 0);
	ck_assert(r.action == PROXY_CUT && r.dir == PROXY_B2A && r.at == 65536);
	ck_assert_int_eq(proxy_parse_rule("a2b:cut-random@0x10=4m,conn=3", &r,
					  err, sizeof(err)), 0);
	ck_assert(r.action == PROXY_CUT_RANDOM && r.at == 16 &&
		  r.arg == (4u << 20) && r.conn == 3);
	ck_assert_int_eq(proxy_parse_rule("a2b:replace@5=0a0B", &r, err,
					  sizeof(err)), 0);
	ck_assert(r.len == 2 && r.data[0] == 0x0a && r.data[1] == 0x0b);
	ck_assert_int_eq(proxy_parse_rule("b2a:drop-frame=4,type=2", &r, err,
					  sizeof(err)), 0);
	ck_assert(r.action == PROXY_DROP_FRAME && r.arg == 4 && r.type == 2);
	ck_assert_int_eq(proxy_parse_rule("b2a:cut-frame@7=2", &r, err,
					  sizeof(err)), 0);
	ck_assert(r.action == PROXY_CUT_FRAME && r.at == 7 && r.arg == 2);
	ck_assert_int_eq(proxy_parse_rule("a2b:flip@9", &r, err, sizeof(err)), 0);
	ck_assert_uint_eq(r.arg, 1);

	ck_assert_int_eq(proxy_parse_rule("x2y:cut", &r, err, sizeof(err)), -EINVAL);
	ck_assert_msg(strstr(err, "a2b"), "%s", err);
	ck_assert_int_eq(proxy_parse_rule("a2b:chop", &r, err, sizeof(err)), -EINVAL);
	ck_assert_int_eq(proxy_parse_rule("a2b:cut-random@10=5", &r, err,
					  sizeof(err)), -EINVAL);
	ck_assert_int_eq(proxy_parse_rule("a2b:flip@1=256", &r, err, sizeof(err)),
			 -EINVAL);
	ck_assert_int_eq(proxy_parse_rule("a2b:replace@1=abc", &r, err,
					  sizeof(err)), -EINVAL);
	ck_assert_int_eq(proxy_parse_rule("a2b:stall=0", &r, err, sizeof(err)),
			 -EINVAL);
	ck_assert_int_eq(proxy_parse_rule("a2b:cut@5,bogus=1", &r, err,
					  sizeof(err)), -EINVAL);
	ck_assert_int_eq(proxy_parse_rule("a2b:cut@5x", &r, err, sizeof(err)),
			 -EINVAL);
}
END_TEST

static Suite *make_proxy_suite(void)
{
	Suite *s = suite_create("proxy");
	TCase *tc = tcase_create("forward");

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_passthrough);
	tcase_add_loop_test(tc, test_cut, 0,
			    sizeof(cut_points) / sizeof(cut_points[0]));
	tcase_add_test(tc, test_cut_random);
	tcase_add_test(tc, test_kth_conn);
	tcase_add_test(tc, test_shutdown);
	tcase_add_test(tc, test_listen_tcp);
	tcase_add_test(tc, test_parse);
	suite_add_tcase(s, tc);

	tc = tcase_create("timing");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_stall);
	tcase_add_test(tc, test_throttle);
	tcase_add_test(tc, test_split);
	suite_add_tcase(s, tc);

	tc = tcase_create("corrupt");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_corrupt);
	tcase_add_test(tc, test_combined);
	tcase_add_loop_test(tc, test_frames, 0, 2);
	tcase_add_test(tc, test_frames_cut);
	tcase_add_loop_test(tc, test_cut_frame, 0, 6);
	tcase_add_test(tc, test_not_frames);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(make_proxy_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
