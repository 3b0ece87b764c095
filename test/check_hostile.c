/* SPDX-License-Identifier: MIT */
/*
 * Hostile peers. A scripted SOURCE sends frames crafted with the wire
 * encoders (bad region, offset, length, alignment, zlib streams, kinds,
 * duplicates, lying handshakes) to a real destination whose regions sit
 * between PROT_NONE guard pages; a scripted DESTINATION (recovery_hdst.c)
 * sends bad or absurdly many requests to a real source. Each must end in
 * its specific error, with nothing written outside the regions and bounded
 * memory. The hostile peers of a restarted source are in check_adopt.c.
 */
#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zlib.h>

#include "common.h"
#include "postcopy.h"
#include "recovery_hdst.h"
#include "source.h"
#include "wire.h"

#define TP 4096u
#define NREG 2
#define GUARD (64u << 10)
#define BEFORE 2		/* good host pages sent before the bad thing */

static const size_t reg_len[NREG] = { 1u << 20, 256u << 10 };
static const char *const reg_name[NREG] = { "ram0", "ram1" };

/* ---- pattern ---- */

static void fill_page(unsigned r, uint64_t pg, uint8_t *out)
{
	uint64_t x = ((uint64_t)r << 40) ^ (pg * 0x9e3779b97f4a7c15ull) ^ 0xabcdef;

	for (unsigned i = 0; i < TP; i += 8) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		memcpy(out + i, &x, 8);
	}
}

/* ---- guarded destination memory ---- */

struct guarded {
	uint8_t *base;		/* the whole reservation */
	size_t total;
	uint8_t *reg[NREG];	/* each region, a guard on both sides */
};

/* [guard][ram0][guard][ram1][guard], guards PROT_NONE and never touched */
static void guarded_map(struct guarded *g)
{
	uint8_t *p;

	g->total = GUARD * (NREG + 1) + reg_len[0] + reg_len[1];
	g->base = mmap(NULL, g->total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS |
		       MAP_NORESERVE, -1, 0);
	ck_assert_ptr_ne(g->base, MAP_FAILED);
	p = g->base + GUARD;
	for (unsigned i = 0; i < NREG; i++) {
		g->reg[i] = p;
		ck_assert_int_eq(mprotect(p, reg_len[i], PROT_READ | PROT_WRITE), 0);
		p += reg_len[i] + GUARD;
	}
}

static bool resident(const void *p)
{
	unsigned char v = 0;

	ck_assert_int_eq(mincore((void *)p, TP, &v), 0);
	return v & 1;
}

/* No guard page was ever written (a write would have faulted it in). */
static void guards_check(struct guarded *g)
{
	for (unsigned i = 0; i <= NREG; i++) {
		uint8_t *gs = i == 0 ? g->base : g->reg[i - 1] + reg_len[i - 1];

		for (size_t off = 0; off < GUARD; off += TP)
			ck_assert_msg(!resident(gs + off), "guard %u page %zu was written",
				      i, off / TP);
	}
}

/* Guards untouched; exactly the pages in `want` (region 0 pages < nwant)
 * present, with the right bytes. */
static void guarded_check(struct guarded *g, unsigned nwant)
{
	uint8_t want[TP];

	guards_check(g);
	for (unsigned r = 0; r < NREG; r++)
		for (size_t off = 0; off < reg_len[r]; off += TP) {
			bool w = r == 0 && off / TP < nwant;

			ck_assert_msg(resident(g->reg[r] + off) == w,
				      "region %u page %zu resident %d, want %d", r,
				      off / TP, !w, w);
			if (w) {
				fill_page(r, off / TP, want);
				ck_assert_msg(!memcmp(g->reg[r] + off, want, TP),
					      "region %u page %zu has wrong bytes", r,
					      off / TP);
			}
		}
}

/* ---- the hostile source ---- */

enum bad {
	B_REGION_OOB, B_REGION_HUGE, B_OFFSET_END, B_OFFSET_WRAP, B_COUNT_WRAP,
	B_RAW_COUNT_U32, B_LENGTH_HUGE, B_MISALIGNED, B_ZLIB_NOT_SHORTER,
	B_ZLIB_OVERSIZED, B_ZLIB_SHORT, B_ZLIB_BOMB, B_ZLIB_GARBAGE,
	B_ZLIB_TRAILING, B_KIND_UNKNOWN, B_TYPE_UNKNOWN, B_FLAGS, B_ZERO_PAYLOAD,
	B_COUNT_ZERO, B_RAW_SHORT, B_CRC, B_END_EARLY, B_SPAN_HOST_PAGES,
	/* handshake lies */
	B_HELLO_LENGTH, B_HELLO_PAGESIZE, B_HELLO_EXTRA_REGION, B_HELLO_NAME,
	B_HELLO_NREGIONS_LIE, B_HELLO_TRUNCATED,
	/* not errors: the restore must complete with the right bytes */
	B_TWICE_SAME, B_TWICE_DIFFERENT,
	B_COUNT
};

struct bad_case {
	const char *name;
	int err;		/* 0: completes */
	const char *msg;	/* substring of pcopy_dest_error() */
};

static const struct bad_case cases[B_COUNT] = {
	[B_REGION_OOB] = { "region-out-of-range", -EPROTO, "region 2" },
	[B_REGION_HUGE] = { "region-4294967295", -EPROTO, "region 4294967295" },
	[B_OFFSET_END] = { "offset-past-end", -EPROTO, "past end" },
	[B_OFFSET_WRAP] = { "offset-wraps", -EPROTO, "past end" },
	[B_COUNT_WRAP] = { "count-wraps", -EPROTO, "past end" },
	[B_RAW_COUNT_U32] = { "raw-count-times-4096-wraps-u32", -EPROTO, "past end" },
	[B_LENGTH_HUGE] = { "length-0xffffffff", -EPROTO, "length" },
	[B_MISALIGNED] = { "misaligned-offset", -EPROTO, "align" },
	[B_ZLIB_NOT_SHORTER] = { "zlib-not-shorter", -EPROTO, "zlib length" },
	[B_ZLIB_OVERSIZED] = { "zlib-oversized", -EPROTO, "zlib length" },
	[B_ZLIB_SHORT] = { "zlib-inflates-short", -EPROTO, "output 2048" },
	[B_ZLIB_BOMB] = { "zlib-bomb", -EPROTO, "longer" },
	[B_ZLIB_GARBAGE] = { "zlib-garbage", -EPROTO, "corrupt" },
	[B_ZLIB_TRAILING] = { "zlib-trailing-bytes", -EPROTO, "trailing" },
	[B_KIND_UNKNOWN] = { "unknown-kind", -EPROTO, "kind" },
	[B_TYPE_UNKNOWN] = { "unknown-type", -EPROTO, "type 77" },
	[B_FLAGS] = { "unknown-flags", -EPROTO, "flags" },
	[B_ZERO_PAYLOAD] = { "zero-with-payload", -EPROTO, "length 4096" },
	[B_COUNT_ZERO] = { "count-zero", -EPROTO, "count" },
	[B_RAW_SHORT] = { "raw-short", -EPROTO, "raw length" },
	[B_CRC] = { "crc", -EBADMSG, "crc" },
	[B_END_EARLY] = { "end-early", -EPROTO, "never sent" },
	[B_SPAN_HOST_PAGES] = { "frame-spans-host-pages", -EPROTO, "host page" },
	[B_HELLO_LENGTH] = { "hello-length-lie", -EPROTO, "length" },
	[B_HELLO_PAGESIZE] = { "hello-page-size-lie", -EPROTO, "8192" },
	[B_HELLO_EXTRA_REGION] = { "hello-unregistered-region", -EPROTO, "region count" },
	[B_HELLO_NAME] = { "hello-name-lie", -EPROTO, "name" },
	[B_HELLO_NREGIONS_LIE] = { "hello-nregions-lie", -EPROTO, "HELLO: payload" },
	[B_HELLO_TRUNCATED] = { "hello-truncated", -EPROTO, "HELLO: payload" },
	[B_TWICE_SAME] = { "page-twice-same", 0, NULL },
	[B_TWICE_DIFFERENT] = { "page-twice-different", 0, NULL },
};

struct hsrc {
	int fd;
	enum bad bad;
	pthread_t thr;
	int hs_rc;
	char hs_err[PCOPY_ERRMSG_MAX];
	bool got_error;		/* the destination answered with ERROR */
	int fail_line;
	uint8_t *buf;		/* PCOPY_WIRE_PAYLOAD_MAX */
};

static int frame(struct hsrc *s, uint8_t type, uint8_t kind, uint16_t flags,
		 uint32_t region, uint32_t count, uint64_t offset, const void *p,
		 uint32_t len)
{
	struct wire_hdr h = { .magic = PCOPY_WIRE_MAGIC, .type = type, .kind = kind,
			      .flags = flags, .region = region, .count = count,
			      .offset = offset, .length = len };
	uint8_t hb[PCOPY_WIRE_HDR_SIZE];
	struct iovec iov[2] = { { hb, sizeof(hb) }, { (void *)(uintptr_t)p, len } };

	wire_hdr_seal(hb, &h, p, len);
	return conn_writev_all(s->fd, iov, len ? 2 : 1);
}

static int raw_page(struct hsrc *s, unsigned r, uint64_t pg)
{
	uint8_t page[TP];

	fill_page(r, pg, page);
	return frame(s, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, 0, r, 1, pg * TP, page, TP);
}

static void hello_table(struct wire_hello *h)
{
	memset(h, 0, sizeof(*h));
	h->version = PCOPY_WIRE_VERSION;
	h->role = PCOPY_ROLE_SOURCE;
	h->conn_kind = PCOPY_CONN_MAIN;
	h->features = PCOPY_FEAT_ZLIB;
	h->session_id = 0x1234;
	h->target_page = TP;
	h->nregions = NREG;
	for (unsigned i = 0; i < NREG; i++) {
		snprintf(h->regions[i].name, sizeof(h->regions[i].name), "%s",
			 reg_name[i]);
		h->regions[i].length = reg_len[i];
		h->regions[i].host_page = TP;
	}
}

/* Read until EOF or 10 s: note whether the destination sent an ERROR. */
static void drain(struct hsrc *s)
{
	uint64_t end = pcopy_now_ns() + 10000000000ull;
	char err[PCOPY_ERRMSG_MAX];
	struct wire_hdr h;

	while (pcopy_now_ns() < end) {
		int rc = conn_recv_msg(s->fd, &h, s->buf, PCOPY_WIRE_PAYLOAD_MAX,
				       end, -1, err, sizeof(err));

		if (rc)
			return;
		if (h.type == PCOPY_MSG_ERROR)
			s->got_error = true;
	}
}

/* A lying HELLO, sent raw (the encoder would refuse some of the lies). */
static void lying_hello(struct hsrc *s)
{
	struct wire_hello h;
	uint8_t buf[8192];
	int n;

	hello_table(&h);
	switch (s->bad) {
	case B_HELLO_LENGTH:
		h.regions[0].length = 2 * reg_len[0];
		break;
	case B_HELLO_PAGESIZE:
		h.regions[0].host_page = 8192;
		break;
	case B_HELLO_EXTRA_REGION:
		h.nregions = 3;
		snprintf(h.regions[2].name, sizeof(h.regions[2].name), "secret");
		h.regions[2].length = 1u << 20;
		h.regions[2].host_page = TP;
		break;
	case B_HELLO_NAME:
		snprintf(h.regions[1].name, sizeof(h.regions[1].name), "ram9");
		break;
	default:
		break;
	}
	n = wire_hello_encode(&h, buf, sizeof(buf));
	if (n <= 0) {
		s->fail_line = __LINE__;
		return;
	}
	if (s->bad == B_HELLO_NREGIONS_LIE)
		buf[28] = 3;	/* nregions says 3, the table holds 2 */
	if (s->bad == B_HELLO_TRUNCATED)
		n -= 5;		/* the last name is cut short */
	frame(s, PCOPY_MSG_HELLO, 0, 0, 0, 0, 0, buf, (uint32_t)n);
	drain(s);
}

static void zlib_of(const void *src, size_t n, uint8_t *out, size_t cap,
		    uLongf *outlen)
{
	*outlen = cap;
	ck_assert_int_eq(compress2(out, outlen, src, n, 9), Z_OK);
}

static void *hsrc_main(void *arg)
{
	struct hsrc *s = arg;
	struct wire_hello ours, peer;
	uint32_t feat = 0;
	uint8_t page[TP];
	uint8_t *z = s->buf;
	uLongf zl;
	unsigned i;

	if (s->bad >= B_HELLO_LENGTH && s->bad <= B_HELLO_TRUNCATED) {
		lying_hello(s);
		return NULL;
	}
	hello_table(&ours);
	s->hs_rc = conn_handshake(s->fd, &ours, &peer, &feat, 5000, s->hs_err,
				  sizeof(s->hs_err));
	if (s->hs_rc)
		return NULL;
	for (i = 0; i < BEFORE; i++)
		if (raw_page(s, 0, i))
			return NULL;
	fill_page(0, BEFORE, page);
	switch (s->bad) {
	case B_REGION_OOB:
		frame(s, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, 0, NREG, 1, 0, page, TP);
		break;
	case B_REGION_HUGE:
		frame(s, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, 0, UINT32_MAX, 1, 0, page, TP);
		break;
	case B_OFFSET_END:	/* one page past ram0: the guard */
		frame(s, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, 0, 0, 1, reg_len[0], page, TP);
		break;
	case B_OFFSET_WRAP:	/* offset + 4096 wraps to 0 */
		frame(s, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, 0, 0, 1,
		      UINT64_MAX - TP + 1, page, TP);
		break;
	case B_COUNT_WRAP:	/* count * 4096 overflows 32 and 64 bits at an offset */
		frame(s, PCOPY_MSG_PAGE, PCOPY_KIND_ZERO, 0, 0, UINT32_MAX,
		      (uint64_t)BEFORE * TP, NULL, 0);
		break;
	case B_RAW_COUNT_U32:	/* 2^20 pages: count * 4096 == 2^32 == 0 in u32 */
		frame(s, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, 0, 0, 1u << 20,
		      (uint64_t)BEFORE * TP, NULL, 0);
		break;
	case B_LENGTH_HUGE: {
		struct wire_hdr h = { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_PAGE,
				      .kind = PCOPY_KIND_RAW, .count = 1,
				      .offset = (uint64_t)BEFORE * TP,
				      .length = UINT32_MAX };
		uint8_t hb[PCOPY_WIRE_HDR_SIZE];
		struct iovec iov[2] = { { hb, sizeof(hb) }, { page, TP } };

		wire_hdr_seal(hb, &h, page, TP);
		conn_writev_all(s->fd, iov, 2);
		break;
	}
	case B_MISALIGNED:
		frame(s, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, 0, 0, 1,
		      (uint64_t)BEFORE * TP + 512, page, TP);
		break;
	case B_ZLIB_NOT_SHORTER:	/* as long as the raw page */
		frame(s, PCOPY_MSG_PAGE, PCOPY_KIND_ZLIB, 0, 0, 1,
		      (uint64_t)BEFORE * TP, page, TP);
		break;
	case B_ZLIB_OVERSIZED: {	/* a valid stream, longer than raw */
		zlib_of(page, TP, z, PCOPY_WIRE_PAYLOAD_MAX, &zl);
		ck_assert_uint_gt(zl, TP);
		frame(s, PCOPY_MSG_PAGE, PCOPY_KIND_ZLIB, 0, 0, 1,
		      (uint64_t)BEFORE * TP, z, (uint32_t)zl);
		break;
	}
	case B_ZLIB_SHORT:	/* inflates to 2048 bytes, not 4096 */
		memset(page, 0x41, TP);
		zlib_of(page, TP / 2, z, PCOPY_WIRE_PAYLOAD_MAX, &zl);
		frame(s, PCOPY_MSG_PAGE, PCOPY_KIND_ZLIB, 0, 0, 1,
		      (uint64_t)BEFORE * TP, z, (uint32_t)zl);
		break;
	case B_ZLIB_BOMB: {	/* 4 MiB of zeros in < 4 KiB, for one page */
		z_stream zs;
		uint8_t *zeros = calloc(1, 1u << 20);

		ck_assert_ptr_nonnull(zeros);
		memset(&zs, 0, sizeof(zs));
		ck_assert_int_eq(deflateInit(&zs, 9), Z_OK);
		zs.next_out = z;
		zs.avail_out = PCOPY_WIRE_PAYLOAD_MAX;
		for (i = 0; i < 4; i++) {
			zs.next_in = zeros;
			zs.avail_in = 1u << 20;
			ck_assert_int_eq(deflate(&zs, i == 3 ? Z_FINISH : Z_NO_FLUSH),
					 i == 3 ? Z_STREAM_END : Z_OK);
		}
		zl = zs.total_out;
		/* short enough to pass the length check: inflating must stop */
		ck_assert_uint_lt(zl, TP);
		deflateEnd(&zs);
		free(zeros);
		frame(s, PCOPY_MSG_PAGE, PCOPY_KIND_ZLIB, 0, 0, 1,
		      (uint64_t)BEFORE * TP, z, (uint32_t)zl);
		break;
	}
	case B_ZLIB_GARBAGE:
		for (i = 0; i < 100; i++)
			z[i] = (uint8_t)(i * 37 + 11);
		frame(s, PCOPY_MSG_PAGE, PCOPY_KIND_ZLIB, 0, 0, 1,
		      (uint64_t)BEFORE * TP, z, 100);
		break;
	case B_ZLIB_TRAILING:
		memset(page, 0x41, TP);
		zlib_of(page, TP, z, PCOPY_WIRE_PAYLOAD_MAX, &zl);
		memset(z + zl, 0x99, 8);
		frame(s, PCOPY_MSG_PAGE, PCOPY_KIND_ZLIB, 0, 0, 1,
		      (uint64_t)BEFORE * TP, z, (uint32_t)zl + 8);
		break;
	case B_KIND_UNKNOWN:
		frame(s, PCOPY_MSG_PAGE, 9, 0, 0, 1, (uint64_t)BEFORE * TP, page, TP);
		break;
	case B_TYPE_UNKNOWN:
		frame(s, 77, 0, 0, 0, 0, 0, NULL, 0);
		break;
	case B_FLAGS:
		frame(s, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, 0x8000, 0, 1,
		      (uint64_t)BEFORE * TP, page, TP);
		break;
	case B_ZERO_PAYLOAD:
		frame(s, PCOPY_MSG_PAGE, PCOPY_KIND_ZERO, 0, 0, 1,
		      (uint64_t)BEFORE * TP, page, TP);
		break;
	case B_COUNT_ZERO:
		frame(s, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, 0, 0, 0,
		      (uint64_t)BEFORE * TP, NULL, 0);
		break;
	case B_RAW_SHORT:
		frame(s, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, 0, 0, 1,
		      (uint64_t)BEFORE * TP, page, TP - 1);
		break;
	case B_CRC: {
		struct wire_hdr h = { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_PAGE,
				      .kind = PCOPY_KIND_RAW, .count = 1,
				      .offset = (uint64_t)BEFORE * TP, .length = TP };
		uint8_t hb[PCOPY_WIRE_HDR_SIZE];
		struct iovec iov[2] = { { hb, sizeof(hb) }, { page, TP } };

		wire_hdr_seal(hb, &h, page, TP);
		page[100] ^= 1;	/* after sealing: the payload no longer matches */
		conn_writev_all(s->fd, iov, 2);
		break;
	}
	case B_END_EARLY:
		frame(s, PCOPY_MSG_END, 0, 0, 0, 0, 0, NULL, 0);
		break;
	case B_SPAN_HOST_PAGES: {	/* one RAW frame over two 4 KiB host pages */
		uint8_t two[2 * TP];

		fill_page(0, BEFORE, two);
		fill_page(0, BEFORE + 1, two + TP);
		frame(s, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, 0, 0, 2,
		      (uint64_t)BEFORE * TP, two, 2 * TP);
		break;
	}
	case B_TWICE_SAME:
	case B_TWICE_DIFFERENT:
		/* everything, with page BEFORE sent twice; the second copy
		 * differs in the hostile variant and must not land */
		for (unsigned r = 0; r < NREG; r++)
			for (uint64_t pg = r ? 0 : BEFORE; pg < reg_len[r] / TP; pg++) {
				if (raw_page(s, r, pg))
					return NULL;
				if (r == 0 && pg == BEFORE) {
					if (s->bad == B_TWICE_DIFFERENT)
						memset(page, 0xEE, TP);
					if (frame(s, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, 0, 0,
						  1, pg * TP, page, TP))
						return NULL;
				}
			}
		frame(s, PCOPY_MSG_END, 0, 0, 0, 0, 0, NULL, 0);
		break;
	default:
		s->fail_line = __LINE__;
	}
	drain(s);
	return NULL;
}

START_TEST(test_hostile_source)
{
	const struct bad_case *bc = &cases[_i];
	struct pcopy_region rg[NREG];
	struct pcopy_dest_opts o;
	struct pcopy_dest *d;
	struct pcopy_stats st;
	struct guarded g;
	struct hsrc s;
	int sv[2], rc;

	guarded_map(&g);
	for (unsigned i = 0; i < NREG; i++)
		rg[i] = (struct pcopy_region){ reg_name[i], g.reg[i], reg_len[i], TP };
	pcopy_dest_opts_init(&o);
	o.flags = PCOPY_DEST_NO_RESUME;
	o.handshake_timeout_ms = 5000;
	ck_assert_int_eq(pcopy_dest_create(&d, rg, NREG, &o), 0);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	memset(&s, 0, sizeof(s));
	s.fd = sv[1];
	s.bad = (enum bad)_i;
	s.buf = malloc(PCOPY_WIRE_PAYLOAD_MAX + 64);
	ck_assert_ptr_nonnull(s.buf);
	ck_assert_int_eq(pthread_create(&s.thr, NULL, hsrc_main, &s), 0);

	rc = pcopy_dest_start(d, sv[0]);
	if (rc == 0)
		rc = pcopy_dest_wait(d, 15000);
	fprintf(stderr, "hostile source %-32s -> %d (%s): %s\n", bc->name, rc,
		pcopy_strerror(rc), pcopy_dest_error(d));
	ck_assert_msg(rc == bc->err, "%s: got %d (%s) '%s', want %d", bc->name, rc,
		      pcopy_strerror(rc), pcopy_dest_error(d), bc->err);
	if (bc->msg)
		ck_assert_msg(strcasestr(pcopy_dest_error(d), bc->msg),
			      "%s: message '%s' does not name '%s'", bc->name,
			      pcopy_dest_error(d), bc->msg);
	ck_assert_int_eq(pcopy_dest_stats(d, &st), 0);
	if (bc->err == 0) {
		uint8_t want[TP];

		ck_assert_uint_ge(st.duplicates, 1);
		for (unsigned r = 0; r < NREG; r++)
			for (size_t off = 0; off < reg_len[r]; off += TP) {
				fill_page(r, off / TP, want);
				ck_assert_msg(!memcmp(g.reg[r] + off, want, TP),
					      "%s: region %u page %zu wrong", bc->name,
					      r, off / TP);
			}
	} else {
		/* the handshake lies fail before any page; the rest after
		 * exactly BEFORE good pages, and not one byte more */
		bool hello = _i >= B_HELLO_LENGTH && _i <= B_HELLO_TRUNCATED;

		guarded_check(&g, hello ? 0 : BEFORE);
		ck_assert_uint_eq(st.host_pages_received, hello ? 0 : BEFORE);
	}
	pcopy_dest_destroy(d);
	/* guards still untouched after destroy (PROT_NONE on the rest) */
	guards_check(&g);
	pthread_join(s.thr, NULL);
	ck_assert_int_eq(s.fail_line, 0);
	close(sv[1]);
	free(s.buf);
	munmap(g.base, g.total);
}
END_TEST

static Suite *make_hostile_suite(void)
{
	Suite *s = suite_create("hostile");
	TCase *tc = tcase_create("source");

	tcase_set_timeout(tc, 60);
	tcase_add_loop_test(tc, test_hostile_source, 0, B_COUNT);
	suite_add_tcase(s, tc);

	suite_add_tcase(s, hostile_dest_tcase());
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(make_hostile_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
