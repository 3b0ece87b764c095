/* SPDX-License-Identifier: MIT */
/*
 * Hostile peers. A scripted SOURCE sends frames crafted with the wire
 * encoders (bad region, offset, length, alignment, zlib streams, kinds,
 * duplicates, lying handshakes) to a real destination whose regions sit
 * between PROT_NONE guard pages; a scripted DESTINATION (recovery_hdst.c)
 * sends bad or absurdly many requests to a real source. Each must end in
 * its specific error, with nothing written outside the regions and bounded
 * memory.
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

/* ---- a hostile destination against a restarted source (ADOPT) ---- */

/*
 * A source created with PCOPY_SOURCE_ADOPT (a restart after the previous
 * source died) takes over the session its first connection RESUMEs. The
 * scripted destination below lies to it in every way that matters there:
 * wrong or missing keys, no session, a region table of another image, a
 * bitmap that never completes, garbage or silence instead of a HELLO. Each
 * must end in its errno, with a message naming what was wrong, no page
 * sent, no busy loop, and a destroy that frees everything. Two honest
 * controls (an adoption, a MAIN connection) show the harness can tell.
 */

#define AD_PAGES 64u
#define AD_LEN (AD_PAGES * TP)		/* 262144 */
#define AD_SID UINT64_C(0x5eed0000a1b2c3d4)
#define AD_HS_MS 1000			/* source handshake timeout */
#define AD_DEADLINE_MS 2500		/* source resume deadline */
#define AD_KEY "the session's key"

enum ad {
	AD_GOOD, AD_MAIN_FIRST, AD_WRONG_KEY, AD_DEST_NO_KEY, AD_SRC_NO_KEY,
	AD_SESSION_ZERO, AD_URGENT_FIRST, AD_TABLE_LENGTH, AD_TABLE_PAGESIZE,
	AD_TABLE_COUNT, AD_TABLE_NAME, AD_GARBAGE, AD_ONE_BYTE, AD_HALF_HELLO,
	AD_SHORT_BITMAP, AD_TRUNCATED_BITMAP, AD_BITMAP_EOF_THEN_HONEST,
	AD_COUNT
};

/*
 * Set to 1 to show two message defects (library, not test): a timeout
 * while reading a handshake message's payload does not say which message
 * (stream/conn.c:341, hs_recv passes recv_body's "reading N payload bytes"
 * on without `what`), and a first resume that times out on an incomplete
 * RECV_BITMAP says only "reading message header: timed out"
 * (stream/source_resume.c:38-42, read_bitmap passes conn_recv_msg's message
 * on without saying it was waiting for the rest of the bitmap). Left out so
 * the suite stays green; the cases still check errno, timing and CPU.
 */
#define AD_SHOW_MSG_DEFECTS 1

static const struct ad_case {
	const char *name;
	int start_err;		/* pcopy_source_start */
	int wait_err;		/* pcopy_source_wait afterwards */
	const char *msg[3];	/* each a substring of pcopy_source_error() */
	const char *told;	/* substring of what the destination was told */
	const char *want;	/* should be in the message, is not (see
				   AD_SHOW_MSG_DEFECTS) */
} ad_cases[AD_COUNT] = {
	[AD_GOOD] = { "adopt-honest", 0, 0, { NULL }, NULL, NULL },
	[AD_MAIN_FIRST] = { "adopt-flag-main-first", 0, 0, { NULL }, NULL, NULL },
	[AD_WRONG_KEY] = { "adopt-wrong-key", -EACCES, -EACCES,
			   { "adopting a session", "authentication failed" },
			   "authentication failed", NULL },
	[AD_DEST_NO_KEY] = { "adopt-dest-has-no-key", -EACCES, -EACCES,
			     { "adopting a session", "offers no authentication" },
			     NULL, NULL },
	[AD_SRC_NO_KEY] = { "adopt-source-has-no-key", -EACCES, -EACCES,
			    { "adopting a session", "requires a pre-shared key" },
			    NULL, NULL },
	[AD_SESSION_ZERO] = { "adopt-session-0", -EPROTO, -EPROTO,
			      { "RESUME", "unknown session 0x0000000000000000" },
			      "unknown session", NULL },
	[AD_URGENT_FIRST] = { "adopt-urgent-first", -EPROTO, -EPROTO,
			      { "URGENT", "unknown session" }, "unknown session",
			      NULL },
	[AD_TABLE_LENGTH] = { "adopt-table-length", -EPROTO, -EPROTO,
			      { "cannot adopt", "length 262144 here, 524288 at the peer" },
			      "length 262144 here, 524288 at the peer", NULL },
	[AD_TABLE_PAGESIZE] = { "adopt-table-page-size", -EPROTO, -EPROTO,
				{ "cannot adopt", "host page 4096 here, 8192 at the peer" },
				"host page 4096 here, 8192 at the peer", NULL },
	[AD_TABLE_COUNT] = { "adopt-table-region-count", -EPROTO, -EPROTO,
			     { "cannot adopt", "region count: 1 here, 2 at the peer" },
			     "region count: 1 here, 2 at the peer", NULL },
	[AD_TABLE_NAME] = { "adopt-table-name", -EPROTO, -EPROTO,
			    { "cannot adopt", "name 'ram' here, 'rom' at the peer" },
			    "name 'ram' here, 'rom' at the peer", NULL },
	[AD_GARBAGE] = { "adopt-garbage-not-hello", -EPROTO, -EPROTO,
			 { "handshake failed", "bad magic" }, "bad magic", NULL },
	/* the handshake's -ETIMEDOUT; the session ends with -ENOLINK, as
	 * pcopy_source_wait keeps -ETIMEDOUT for "your timeout passed" */
	[AD_ONE_BYTE] = { "adopt-one-byte-then-silence", -ETIMEDOUT, -ENOLINK,
			  { "handshake failed", "HELLO", "timed out" }, NULL, NULL },
	[AD_HALF_HELLO] = { "adopt-half-hello-then-silence", -ETIMEDOUT, -ENOLINK,
			    { "handshake failed", "payload", "timed out" }, NULL,
			    "HELLO" },
	/* adopted (start returns 0, paused), then the resume deadline */
	[AD_SHORT_BITMAP] = { "adopt-bitmap-half-then-silence", 0, -ENOLINK,
			      { "did not resume within 2500 ms",
				"first resume failed", "timed out" }, NULL,
			      "RECV_BITMAP" },
	[AD_TRUNCATED_BITMAP] = { "adopt-bitmap-message-truncated", 0, -ENOLINK,
				  { "did not resume within 2500 ms",
				    "first resume failed", "timed out" }, NULL,
				  "RECV_BITMAP" },
	/* the first resume ends at EOF mid-bitmap: still paused, and an
	 * honest resume (pcopy_source_add_conn) completes the session */
	[AD_BITMAP_EOF_THEN_HONEST] = { "adopt-bitmap-eof-then-honest-resume", 0, 0,
					{ NULL }, NULL, NULL },
};

struct ad_start {
	struct pcopy_source *s;
	int fd, rc;
	uint64_t wall_ns, cpu_ns;	/* of pcopy_source_start */
};

static uint64_t cpu_ns_self(void)
{
	struct rusage ru;

	ck_assert_int_eq(getrusage(RUSAGE_SELF, &ru), 0);
	return ((uint64_t)ru.ru_utime.tv_sec + (uint64_t)ru.ru_stime.tv_sec) *
		1000000000ull + ((uint64_t)ru.ru_utime.tv_usec +
				 (uint64_t)ru.ru_stime.tv_usec) * 1000ull;
}

/* The whole process's CPU time is measured: every thread of the source,
 * and the scripted destination, which sleeps in a blocking call meanwhile. */
static void *ad_start_main(void *arg)
{
	struct ad_start *a = arg;
	uint64_t t0 = pcopy_now_ns(), c0 = cpu_ns_self();

	a->rc = pcopy_source_start(a->s, a->fd);
	a->cpu_ns = cpu_ns_self() - c0;
	a->wall_ns = pcopy_now_ns() - t0;
	return NULL;
}

/* The destination's HELLO, with the lie of case c. */
static void ad_hello(struct wire_hello *h, enum ad c)
{
	memset(h, 0, sizeof(*h));
	h->version = PCOPY_WIRE_VERSION;
	h->role = PCOPY_ROLE_DEST;
	h->conn_kind = c == AD_MAIN_FIRST ? PCOPY_CONN_MAIN :
		c == AD_URGENT_FIRST ? PCOPY_CONN_URGENT : PCOPY_CONN_RESUME;
	h->features = PCOPY_FEAT_RESUME | PCOPY_FEAT_URGENT;
	h->session_id = c == AD_MAIN_FIRST || c == AD_SESSION_ZERO ? 0 : AD_SID;
	h->target_page = TP;
	h->nregions = 1;
	snprintf(h->regions[0].name, sizeof(h->regions[0].name), "%s",
		 c == AD_TABLE_NAME ? "rom" : "ram");
	h->regions[0].length = c == AD_TABLE_LENGTH ? 2 * AD_LEN : AD_LEN;
	h->regions[0].host_page = c == AD_TABLE_PAGESIZE ? 2 * TP : TP;
	if (c == AD_TABLE_COUNT) {
		h->nregions = 2;
		snprintf(h->regions[1].name, sizeof(h->regions[1].name), "extra");
		h->regions[1].length = AD_LEN;
		h->regions[1].host_page = TP;
	}
}

/* What the scripted destination saw on its connection. */
struct ad_seen {
	unsigned pages;		/* host pages received */
	unsigned wrong;		/* ... with wrong bytes, or marked received */
	bool end, got_error;
	char error_text[PCOPY_ERROR_TEXT_MAX + 1];
};

/*
 * Read until END, ERROR, EOF or timeout_ms, checking every page against the
 * source's memory; a page whose bit is set in `have` (the bitmap we sent)
 * must not come again.
 */
static void ad_read(int fd, uint8_t *buf, const uint8_t *mem, uint64_t have,
		    int timeout_ms, struct ad_seen *seen)
{
	uint64_t end = pcopy_now_ns() + (uint64_t)timeout_ms * 1000000ull;
	char err[PCOPY_ERRMSG_MAX];
	struct wire_hdr w;
	int en;

	while (conn_recv_msg(fd, &w, buf, PCOPY_WIRE_PAYLOAD_MAX, end, -1, err,
			     sizeof(err)) == 0) {
		if (w.type == PCOPY_MSG_ERROR) {
			seen->got_error = true;
			wire_error_decode(buf, w.length, &en, seen->error_text,
					  sizeof(seen->error_text));
			return;
		}
		if (w.type == PCOPY_MSG_END) {
			seen->end = true;
			return;
		}
		if (w.type != PCOPY_MSG_PAGE)
			continue;
		for (uint32_t i = 0; i < w.count; i++) {
			uint64_t pg = w.offset / TP + i;
			uint8_t zero[TP] = { 0 };
			const uint8_t *got = w.kind == PCOPY_KIND_RAW ?
				buf + (size_t)i * TP : zero;

			seen->pages++;
			if (w.region != 0 || pg >= AD_PAGES ||
			    (have >> pg & 1) || memcmp(got, mem + pg * TP, TP))
				seen->wrong++;
		}
	}
}

/* Send RECV_BITMAP for host pages 0 .. nbits - 1 of `bits`; with `cut`,
 * only the header and half the payload it announces. */
static void ad_bitmap(int fd, uint64_t bits, unsigned nbits, bool cut)
{
	uint8_t payload[64], hb[PCOPY_WIRE_HDR_SIZE];
	struct wire_hdr w;
	struct iovec iov[2];
	int len;

	memset(&w, 0, sizeof(w));
	len = wire_bitmap_encode(0, &bits, nbits, 0, &w, payload, sizeof(payload));
	ck_assert_int_gt(len, 1);
	w.magic = PCOPY_WIRE_MAGIC;
	w.type = PCOPY_MSG_RECV_BITMAP;
	w.length = (uint32_t)len;
	if (!cut) {
		ck_assert_int_eq(conn_send_msg(fd, &w, payload, (size_t)len), 0);
		return;
	}
	wire_hdr_seal(hb, &w, payload, (size_t)len);
	iov[0] = (struct iovec){ hb, sizeof(hb) };
	iov[1] = (struct iovec){ payload, (size_t)len / 2 };
	ck_assert_int_eq(conn_writev_all(fd, iov, 2), 0);
}

static void *ad_add_main(void *arg)
{
	struct ad_start *a = arg;

	a->rc = pcopy_source_add_conn(a->s, a->fd);
	return NULL;
}

/* An honest RESUME of session AD_SID on a new connection: bitmap with the
 * even pages received, then the odd ones must come, END, and DONE ends the
 * session. Returns our end of the connection (closed by the caller). */
static int ad_resume_honest(struct pcopy_source *s, const uint8_t *mem,
			    uint8_t *buf, struct ad_seen *seen)
{
	struct conn_hs_params hp = { AD_KEY, strlen(AD_KEY), 0, 5000 };
	struct wire_hdr dn = { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_DONE };
	uint64_t have = UINT64_C(0x5555555555555555);
	struct wire_hello ours, peer;
	struct ad_start ad = { s, -1, 1, 0, 0 };
	char err[PCOPY_ERRMSG_MAX];
	pthread_t thr;
	uint32_t feat;
	int sv[2], rc;

	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	ad.fd = sv[0];
	ck_assert_int_eq(pthread_create(&thr, NULL, ad_add_main, &ad), 0);
	ad_hello(&ours, AD_GOOD);
	rc = conn_handshake2(sv[1], &ours, &peer, &feat, &hp, err, sizeof(err));
	ck_assert_msg(rc == 0, "honest resume: handshake %d: %s", rc, err);
	ad_bitmap(sv[1], have, AD_PAGES, false);
	pthread_join(thr, NULL);
	ck_assert_msg(ad.rc == 0, "honest resume refused: %d (%s): %s", ad.rc,
		      pcopy_strerror(ad.rc), pcopy_source_error(s));
	ad_read(sv[1], buf, mem, have, 10000, seen);
	ck_assert_msg(seen->end && !seen->wrong && seen->pages == AD_PAGES / 2,
		      "honest resume: END %d, %u pages, %u wrong or not wanted",
		      seen->end, seen->pages, seen->wrong);
	ck_assert_int_eq(conn_send_msg(sv[1], &dn, NULL, 0), 0);
	return sv[1];
}

START_TEST(test_hostile_adopt)
{
	enum ad c = (enum ad)_i;
	const struct ad_case *ac = &ad_cases[c];
	bool src_key = c != AD_SRC_NO_KEY;
	const char *dst_key = c == AD_WRONG_KEY ? "not the session's key" :
		c == AD_DEST_NO_KEY ? NULL : AD_KEY;
	struct pcopy_source_region reg = { "ram", NULL, -1, 0, AD_LEN, TP };
	struct conn_hs_params hp = { dst_key, dst_key ? strlen(dst_key) : 0, 0,
				     5000 };
	struct pcopy_source_opts so;
	struct wire_hello ours, peer;
	struct pcopy_stats st;
	struct ad_start as;
	struct ad_seen seen;
	char derr[PCOPY_ERRMSG_MAX] = "", smsg[PCOPY_ERRMSG_MAX];
	uint8_t *mem, *buf, hb[8192 + PCOPY_WIRE_HDR_SIZE];
	uint64_t have = 0, t0;
	uint32_t feat;
	pthread_t thr;
	int sv[2], drc = 1, rc, n, fd2 = -1;

	mem = malloc(AD_LEN);
	buf = malloc(PCOPY_WIRE_PAYLOAD_MAX);
	ck_assert(mem && buf);
	for (unsigned pg = 0; pg < AD_PAGES; pg++)
		fill_page(7, pg, mem + (size_t)pg * TP);
	reg.mem = mem;
	pcopy_source_opts_init(&so);
	so.flags = PCOPY_SOURCE_ADOPT;
	so.handshake_timeout_ms = AD_HS_MS;
	so.resume_deadline_ms = AD_DEADLINE_MS;
	if (src_key) {
		so.psk = AD_KEY;
		so.psk_len = strlen(AD_KEY);
	}
	memset(&as, 0, sizeof(as));
	memset(&seen, 0, sizeof(seen));
	ck_assert_int_eq(pcopy_source_create(&as.s, &reg, 1, &so), 0);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	as.fd = sv[0];
	ck_assert_int_eq(pthread_create(&thr, NULL, ad_start_main, &as), 0);

	ad_hello(&ours, c);
	switch (c) {
	case AD_GARBAGE: {	/* a client of another protocol */
		static const char http[] = "GET / HTTP/1.1\r\nHost: pcopy\r\n\r\n"
					   "GET / HTTP/1.1\r\n";

		ck_assert_int_eq(write(sv[1], http, sizeof(http) - 1),
				 (ssize_t)sizeof(http) - 1);
		break;
	}
	case AD_ONE_BYTE:
	case AD_HALF_HELLO: {	/* then silence, the connection left open */
		struct wire_hdr w = { .magic = PCOPY_WIRE_MAGIC,
				      .type = PCOPY_MSG_HELLO };

		n = wire_hello_encode(&ours, hb + PCOPY_WIRE_HDR_SIZE,
				      sizeof(hb) - PCOPY_WIRE_HDR_SIZE);
		ck_assert_int_gt(n, 0);
		w.length = (uint32_t)n;
		wire_hdr_seal(hb, &w, hb + PCOPY_WIRE_HDR_SIZE, (size_t)n);
		n = c == AD_ONE_BYTE ? 1 : PCOPY_WIRE_HDR_SIZE + n / 2;
		ck_assert_int_eq(write(sv[1], hb, (size_t)n), n);
		break;
	}
	default:
		drc = conn_handshake2(sv[1], &ours, &peer, &feat, &hp, derr,
				      sizeof(derr));
		break;
	}
	if (drc == 0) {
		/* a MAIN connection starts a new session; a RESUME joins ours */
		ck_assert_msg(c == AD_MAIN_FIRST ? peer.session_id != 0 &&
			      peer.session_id != AD_SID : peer.session_id == AD_SID,
			      "%s: the source answered for session %016llx", ac->name,
			      (unsigned long long)peer.session_id);
		switch (c) {
		case AD_GOOD:	/* the even pages arrived before the old source died */
			have = UINT64_C(0x5555555555555555);
			ad_bitmap(sv[1], have, AD_PAGES, false);
			break;
		case AD_SHORT_BITMAP:	/* covers half the region, then nothing */
			ad_bitmap(sv[1], ~UINT64_C(0), AD_PAGES / 2, false);
			break;
		case AD_TRUNCATED_BITMAP:
			ad_bitmap(sv[1], ~UINT64_C(0), AD_PAGES, true);
			break;
		case AD_BITMAP_EOF_THEN_HONEST:
			ad_bitmap(sv[1], ~UINT64_C(0), AD_PAGES / 2, false);
			shutdown(sv[1], SHUT_RDWR);
			break;
		default:
			break;
		}
		if (c == AD_GOOD || c == AD_MAIN_FIRST) {
			struct wire_hdr dn = { .magic = PCOPY_WIRE_MAGIC,
					       .type = PCOPY_MSG_DONE };

			ad_read(sv[1], buf, mem, have, 10000, &seen);
			ck_assert_msg(seen.end && !seen.wrong,
				      "%s: END %d, %u pages, %u wrong or not wanted; '%s'",
				      ac->name, seen.end, seen.pages, seen.wrong,
				      seen.error_text);
			ck_assert_uint_eq(seen.pages, c == AD_GOOD ? AD_PAGES / 2 :
					  AD_PAGES);
			ck_assert_int_eq(conn_send_msg(sv[1], &dn, NULL, 0), 0);
		}
	}
	pthread_join(thr, NULL);

	t0 = pcopy_now_ns();
	if (ac->start_err == 0 && (ac->wait_err || c == AD_BITMAP_EOF_THEN_HONEST))
		ck_assert_msg(pcopy_source_paused(as.s) == 1, "%s: adopted but not "
			      "paused after its first resume failed", ac->name);
	if (c == AD_BITMAP_EOF_THEN_HONEST)
		fd2 = ad_resume_honest(as.s, mem, buf, &seen);
	rc = pcopy_source_wait(as.s, 10000);
	snprintf(smsg, sizeof(smsg), "%s", pcopy_source_error(as.s));
	fprintf(stderr, "hostile adopt %-32s -> start %d (%s) in %llu ms (CPU %llu "
		"ms), wait %d (%s) after %llu ms more: %s | destination: %d '%s'\n",
		ac->name, as.rc, pcopy_strerror(as.rc),
		(unsigned long long)(as.wall_ns / 1000000),
		(unsigned long long)(as.cpu_ns / 1000000), rc, pcopy_strerror(rc),
		(unsigned long long)((pcopy_now_ns() - t0) / 1000000), smsg, drc,
		derr);
	ck_assert_msg(as.rc == ac->start_err, "%s: start returned %d (%s), want %d: %s",
		      ac->name, as.rc, pcopy_strerror(as.rc), ac->start_err, smsg);
	ck_assert_msg(rc == ac->wait_err, "%s: wait returned %d (%s), want %d: %s",
		      ac->name, rc, pcopy_strerror(rc), ac->wait_err, smsg);
	for (unsigned i = 0; i < 3 && ac->msg[i]; i++)
		ck_assert_msg(strstr(smsg, ac->msg[i]), "%s: '%s' does not say '%s'",
			      ac->name, smsg, ac->msg[i]);
#if AD_SHOW_MSG_DEFECTS
	if (ac->want)
		ck_assert_msg(strstr(smsg, ac->want), "%s: '%s' does not say '%s'",
			      ac->name, smsg, ac->want);
#endif
	if (ac->wait_err == 0)
		ck_assert_msg(!smsg[0], "%s: an error after success: %s", ac->name,
			      smsg);
	ck_assert_int_eq(pcopy_source_stats(as.s, &st), 0);
	if (ac->wait_err) {
		/* nothing of the image went to a peer that failed */
		ck_assert_uint_eq(st.host_pages_received, 0);
		ck_assert_uint_eq(st.bytes_payload, 0);
	} else {
		ck_assert_uint_eq(st.host_pages_received, seen.pages);
	}
	if (c == AD_ONE_BYTE || c == AD_HALF_HELLO) {
		/* gave up at the handshake timeout, not before, and waited
		 * without burning a CPU (a generous bound, not a speed test) */
		ck_assert_msg(as.wall_ns >= AD_HS_MS * 900000ull,
			      "%s: gave up after %llu ms, before its %d ms timeout",
			      ac->name, (unsigned long long)(as.wall_ns / 1000000),
			      AD_HS_MS);
		ck_assert_msg(as.wall_ns < (AD_HS_MS + 5000) * 1000000ull,
			      "%s: still waiting %llu ms into a %d ms timeout",
			      ac->name, (unsigned long long)(as.wall_ns / 1000000),
			      AD_HS_MS);
		ck_assert_msg(as.cpu_ns * 5 < as.wall_ns,
			      "%s: %llu ms of CPU in %llu ms of waiting for a HELLO",
			      ac->name, (unsigned long long)(as.cpu_ns / 1000000),
			      (unsigned long long)(as.wall_ns / 1000000));
	}
	pcopy_source_destroy(as.s);

	/* after destroy the connection is closed: read what is left */
	if (ac->wait_err) {
		ad_read(sv[1], buf, mem, 0, 5000, &seen);
		ck_assert_msg(seen.pages == 0 && !seen.end, "%s: %u pages (END %d) "
			      "sent to a destination that failed", ac->name,
			      seen.pages, seen.end);
		ck_assert_msg(drc != 0 || ac->start_err == 0, "%s: the destination's "
			      "handshake succeeded", ac->name);
	}
	if (ac->told)
		ck_assert_msg(strstr(derr, ac->told) || strstr(seen.error_text, ac->told),
			      "%s: the destination was told '%s' / '%s', not '%s'",
			      ac->name, derr, seen.error_text, ac->told);
	if (c == AD_WRONG_KEY || c == AD_DEST_NO_KEY || c == AD_SRC_NO_KEY)
		ck_assert_msg(drc == -EACCES, "%s: the destination's handshake "
			      "returned %d: %s", ac->name, drc, derr);
	close(sv[1]);
	if (fd2 >= 0)
		close(fd2);
	free(buf);
	free(mem);
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

	tc = tcase_create("adopt");
	tcase_set_timeout(tc, 60);
	tcase_add_loop_test(tc, test_hostile_adopt, 0, AD_COUNT);
	suite_add_tcase(s, tc);
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
