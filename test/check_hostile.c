/* SPDX-License-Identifier: MIT */
/*
 * Hostile peers. A scripted SOURCE sends frames crafted with the wire
 * encoders (bad region, offset, length, alignment, zlib streams, kinds,
 * duplicates, lying handshakes) to a real destination whose regions sit
 * between PROT_NONE guard pages; a scripted DESTINATION sends bad or
 * absurdly many requests to a real source. Each must end in its specific
 * error, with nothing written outside the regions and bounded memory.
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
#include <sys/socket.h>
#include <unistd.h>
#include <zlib.h>

#include "common.h"
#include "postcopy.h"
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

/* Guards untouched; exactly the pages in `want` (region 0 pages < nwant)
 * present, with the right bytes. */
static void guarded_check(struct guarded *g, unsigned nwant)
{
	uint8_t *p = g->base, want[TP];

	for (unsigned i = 0; i <= NREG; i++) {
		uint8_t *gs = i == 0 ? g->base : g->reg[i - 1] + reg_len[i - 1];

		for (size_t off = 0; off < GUARD; off += TP)
			ck_assert_msg(!resident(gs + off), "guard %u page %zu was written",
				      i, off / TP);
	}
	(void)p;
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
	for (size_t off = 0; off < GUARD; off += TP)
		ck_assert(!resident(g.base + off));
	pthread_join(s.thr, NULL);
	ck_assert_int_eq(s.fail_line, 0);
	close(sv[1]);
	free(s.buf);
	munmap(g.base, g.total);
}
END_TEST

/* ---- the hostile destination ---- */

#define SRC_LEN (64u << 20)	/* 16384 host pages */

enum hd {
	HD_REGION, HD_OFFSET_END, HD_MISALIGNED, HD_COUNT_ZERO, HD_WRAP,
	HD_TOO_MANY_ENTRIES, HD_LENGTH_MISMATCH, HD_BITMAP_ON_MAIN, HD_HELLO_AGAIN,
	HD_DONE_EARLY, HD_PAGE_FROM_DEST, HD_FLOOD, HD_RESUME_WRONG_SESSION,
	HD_RESUME_BAD_BITMAP, HD_BAD_REQ_EVERY_RESUME, HD_RESUME_WRONG_KEY,
	HD_COUNT
};

static const struct { const char *name; int err; const char *msg; } hd_cases[HD_COUNT] = {
	[HD_REGION] = { "req-region-out-of-range", -EPROTO, "region" },
	[HD_OFFSET_END] = { "req-past-end", -EPROTO, "REQ" },
	[HD_MISALIGNED] = { "req-misaligned", -EPROTO, "align" },
	[HD_COUNT_ZERO] = { "req-count-zero", -EPROTO, "count" },
	[HD_WRAP] = { "req-offset-wraps", -EPROTO, "REQ" },
	[HD_TOO_MANY_ENTRIES] = { "req-5000-entries", -EPROTO, "entries" },
	[HD_LENGTH_MISMATCH] = { "req-length-mismatch", -EPROTO, "REQ" },
	[HD_BITMAP_ON_MAIN] = { "bitmap-on-main", -EPROTO, "type 7" },
	[HD_HELLO_AGAIN] = { "hello-mid-session", -EPROTO, "type 1" },
	[HD_DONE_EARLY] = { "done-early", -EPROTO, "DONE" },
	[HD_PAGE_FROM_DEST] = { "page-from-destination", -EPROTO, "type 2" },
	[HD_FLOOD] = { "request-flood", 0, NULL },
	[HD_RESUME_WRONG_SESSION] = { "resume-wrong-session", 0, NULL },
	[HD_RESUME_BAD_BITMAP] = { "resume-bad-bitmap", 0, NULL },
	[HD_BAD_REQ_EVERY_RESUME] = { "bad-req-after-every-resume", 0, NULL },
	[HD_RESUME_WRONG_KEY] = { "resume-wrong-key", 0, NULL },
};

struct hdst {
	int fd;
	enum hd kind;
	const char *psk;	/* key the source holds, or NULL */
	uint64_t session;
	bool got_error;
	char error_text[PCOPY_ERROR_TEXT_MAX + 1];
	uint8_t *buf;
};

static int req_send(struct hdst *h, const struct wire_req *rq, unsigned n,
		    uint32_t count_field, uint32_t len_field)
{
	uint8_t *p = h->buf;
	struct wire_hdr w = { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_REQ,
			      .count = count_field, .length = len_field };

	wire_req_encode(rq, n, p);
	return conn_send_msg(h->fd, &w, p, len_field);
}

/* Read messages until ERROR, EOF, or `pages` host pages and END arrived. */
static uint64_t dst_read(struct hdst *h, int timeout_ms, bool until_end)
{
	uint64_t end = pcopy_now_ns() + (uint64_t)timeout_ms * 1000000ull, pages = 0;
	char err[PCOPY_ERRMSG_MAX];
	struct wire_hdr w;

	for (;;) {
		int rc = conn_recv_msg(h->fd, &w, h->buf, PCOPY_WIRE_PAYLOAD_MAX,
				       end, -1, err, sizeof(err));
		int en = 0;

		if (rc)
			return pages;
		if (w.type == PCOPY_MSG_PAGE)
			pages += w.count;
		if (w.type == PCOPY_MSG_ERROR) {
			h->got_error = true;
			wire_error_decode(h->buf, w.length, &en, h->error_text,
					  sizeof(h->error_text));
			return pages;
		}
		if (w.type == PCOPY_MSG_END && until_end)
			return pages;
	}
}

static long rss_kib(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[128];
	long v = -1;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %ld", &v) == 1)
			break;
	fclose(f);
	return v;
}

struct src_start {
	struct pcopy_source *s;
	int fd, rc;
};

static void *start_main(void *arg)
{
	struct src_start *ss = arg;

	ss->rc = pcopy_source_start(ss->s, ss->fd);
	return NULL;
}

struct add_conn {
	struct pcopy_source *s;
	int fd, rc;
};

static void *add_conn_main(void *arg)
{
	struct add_conn *ac = arg;

	ac->rc = pcopy_source_add_conn(ac->s, ac->fd);
	return NULL;
}

/* Our HELLO; the malformed-input cases do not offer RESUME, so the source
 * ends the session at the first protocol error instead of pausing. */
static void dest_hello(struct wire_hello *h, uint32_t kind, uint64_t session,
		       bool resume)
{
	memset(h, 0, sizeof(*h));
	h->version = PCOPY_WIRE_VERSION;
	h->role = PCOPY_ROLE_DEST;
	h->conn_kind = kind;
	h->features = resume ? PCOPY_FEAT_RESUME : 0;
	h->session_id = session;
	h->target_page = TP;
	h->nregions = 1;
	snprintf(h->regions[0].name, sizeof(h->regions[0].name), "ram");
	h->regions[0].length = SRC_LEN;
	h->regions[0].host_page = TP;
}


/* The handshake, with the AUTH exchange when key != NULL. */
static int hs(int fd, const struct wire_hello *ours, struct wire_hello *peer,
	      const char *key, char *err, size_t errlen)
{
	struct conn_hs_params p = { .psk = key, .psk_len = key ? strlen(key) : 0,
				    .timeout_ms = 5000 };
	uint32_t feat;

	return conn_handshake2(fd, ours, peer, &feat, &p, err, errlen);
}

/* Wait up to ms for the source to pause. */
static bool wait_paused(struct pcopy_source *s, int ms)
{
	for (int i = 0; i < ms / 10; i++) {
		if (pcopy_source_paused(s) == 1)
			return true;
		usleep(10000);
	}
	return false;
}

/*
 * Open a RESUME connection through pcopy_source_add_conn and send the
 * received bitmap (all zero; `extra` host pages more than the region has,
 * when hostile). Returns the new fd (the caller closes it) with *add_rc the
 * result of add_conn, or -1 if the handshake itself failed.
 */
static int resume_conn(struct hdst *h, struct pcopy_source *s, unsigned extra,
		       const char *key, int *add_rc)
{
	static const uint64_t zeros[(SRC_LEN / TP + 64 + 63) / 64];
	const uint64_t *bits = zeros;
	struct add_conn ac = { s, -1, 1 };
	struct wire_hello ours, peer;
	struct wire_hdr w;
	uint8_t *payload = malloc(PCOPY_WIRE_PAYLOAD_MAX);
	char err[PCOPY_ERRMSG_MAX];
	pthread_t thr;
	int sv[2], rc, len;

	ck_assert_ptr_nonnull(payload);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	ac.fd = sv[0];
	ck_assert_int_eq(pthread_create(&thr, NULL, add_conn_main, &ac), 0);
	dest_hello(&ours, PCOPY_CONN_RESUME, h->session, true);
	rc = hs(sv[1], &ours, &peer, key, err, sizeof(err));
	if (rc == 0) {
		memset(&w, 0, sizeof(w));
		len = wire_bitmap_encode(0, bits, SRC_LEN / TP + extra, 0, &w,
					 payload, PCOPY_WIRE_PAYLOAD_MAX);
		ck_assert_int_gt(len, 0);
		w.magic = PCOPY_WIRE_MAGIC;
		w.type = PCOPY_MSG_RECV_BITMAP;
		conn_send_msg(sv[1], &w, payload, (size_t)len);
	}
	pthread_join(thr, NULL);
	free(payload);
	*add_rc = ac.rc;
	if (rc) {
		close(sv[1]);
		return -1;
	}
	return sv[1];
}

START_TEST(test_hostile_dest)
{
	enum hd kind = (enum hd)_i;
	struct pcopy_source_region reg = { "ram", NULL, -1, 0, SRC_LEN, TP };
	struct pcopy_source_opts so;
	struct src_start ss;
	struct wire_hello ours, peer;
	struct wire_req rq[8];
	struct hdst h;
	pthread_t thr;
	uint32_t feat;
	char err[PCOPY_ERRMSG_MAX];
	uint8_t *mem;
	int sv[2], rc;
	long rss0 = 0, rss1 = 0;

	mem = mmap(NULL, SRC_LEN, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(mem, MAP_FAILED);
	for (size_t off = 0; off < SRC_LEN; off += TP * 3)
		mem[off] = (uint8_t)(off >> 12);
	reg.mem = mem;
	pcopy_source_opts_init(&so);
	so.resume_deadline_ms = 2000;
	if (kind == HD_RESUME_WRONG_KEY) {
		so.psk = "the right key";
		so.psk_len = strlen(so.psk);
	}
	ck_assert_int_eq(pcopy_source_create(&ss.s, &reg, 1, &so), 0);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	ss.fd = sv[0];
	memset(&h, 0, sizeof(h));
	h.fd = sv[1];
	h.kind = kind;
	h.psk = kind == HD_RESUME_WRONG_KEY ? "the right key" : NULL;
	h.buf = malloc(PCOPY_WIRE_PAYLOAD_MAX);
	ck_assert_ptr_nonnull(h.buf);
	ck_assert_int_eq(pthread_create(&thr, NULL, start_main, &ss), 0);
	dest_hello(&ours, PCOPY_CONN_MAIN, 0, kind >= HD_FLOOD);
	rc = hs(h.fd, &ours, &peer, h.psk, err, sizeof(err));
	pthread_join(thr, NULL);
	ck_assert_msg(rc == 0, "handshake: %s", err);
	ck_assert_int_eq(ss.rc, 0);
	h.session = peer.session_id;

	memset(rq, 0, sizeof(rq));
	switch (kind) {
	case HD_REGION:
		rq[0] = (struct wire_req){ 1, 1, 0 };
		req_send(&h, rq, 1, 1, 16);
		break;
	case HD_OFFSET_END:
		rq[0] = (struct wire_req){ 0, 1, SRC_LEN };
		req_send(&h, rq, 1, 1, 16);
		break;
	case HD_MISALIGNED:
		rq[0] = (struct wire_req){ 0, 1, 100 };
		req_send(&h, rq, 1, 1, 16);
		break;
	case HD_COUNT_ZERO:
		rq[0] = (struct wire_req){ 0, 0, 0 };
		req_send(&h, rq, 1, 1, 16);
		break;
	case HD_WRAP:
		rq[0] = (struct wire_req){ 0, 2, UINT64_MAX - TP + 1 };
		req_send(&h, rq, 1, 1, 16);
		break;
	case HD_TOO_MANY_ENTRIES: {
		struct wire_req *many = calloc(5000, sizeof(*many));

		for (unsigned i = 0; i < 5000; i++)
			many[i] = (struct wire_req){ 0, 1, (uint64_t)i * TP };
		wire_req_encode(many, 5000, h.buf);
		{
			struct wire_hdr w = { .magic = PCOPY_WIRE_MAGIC,
					      .type = PCOPY_MSG_REQ, .count = 5000,
					      .length = 5000 * 16 };
			conn_send_msg(h.fd, &w, h.buf, 5000 * 16);
		}
		free(many);
		break;
	}
	case HD_LENGTH_MISMATCH:
		rq[0] = (struct wire_req){ 0, 1, 0 };
		rq[1] = (struct wire_req){ 0, 1, TP };
		req_send(&h, rq, 2, 3, 32);
		break;
	case HD_BITMAP_ON_MAIN: {
		struct wire_hdr w = { .magic = PCOPY_WIRE_MAGIC,
				      .type = PCOPY_MSG_RECV_BITMAP, .count = 8,
				      .length = 1 };
		uint8_t b = 0xff;

		conn_send_msg(h.fd, &w, &b, 1);
		break;
	}
	case HD_HELLO_AGAIN: {
		uint8_t hb[4096];
		int n = wire_hello_encode(&ours, hb, sizeof(hb));
		struct wire_hdr w = { .magic = PCOPY_WIRE_MAGIC,
				      .type = PCOPY_MSG_HELLO, .length = (uint32_t)n };

		conn_send_msg(h.fd, &w, hb, (size_t)n);
		break;
	}
	case HD_DONE_EARLY: {
		struct wire_hdr w = { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_DONE };

		conn_send_msg(h.fd, &w, NULL, 0);
		break;
	}
	case HD_PAGE_FROM_DEST: {
		uint8_t page[TP] = { 0 };
		struct wire_hdr w = { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_PAGE,
				      .kind = PCOPY_KIND_RAW, .count = 1, .length = TP };

		conn_send_msg(h.fd, &w, page, TP);
		break;
	}
	case HD_FLOOD: {
		/* 2000 REQs of 4096 entries each (512 MiB worth of pages asked
		 * 16 times over) while reading nothing: the sender blocks on
		 * the full socket, the reader must keep up without growing */
		struct wire_req *many = calloc(PCOPY_REQ_MAX_ENTRIES, sizeof(*many));
		uint64_t x = 99;
		struct wire_hdr w = { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_REQ,
				      .count = PCOPY_REQ_MAX_ENTRIES,
				      .length = PCOPY_REQ_MAX_ENTRIES * 16 };

		ck_assert_ptr_nonnull(many);
		rss0 = rss_kib();
		for (unsigned m = 0; m < 2000; m++) {
			for (unsigned i = 0; i < PCOPY_REQ_MAX_ENTRIES; i++) {
				x = x * 6364136223846793005ull + 1442695040888963407ull;
				many[i] = (struct wire_req){ 0, 1,
					((x >> 33) % (SRC_LEN / TP)) * TP };
			}
			wire_req_encode(many, PCOPY_REQ_MAX_ENTRIES, h.buf);
			ck_assert_int_eq(conn_send_msg(h.fd, &w, h.buf, w.length), 0);
		}
		free(many);
		rss1 = rss_kib();
		ck_assert_uint_le(src_debug_queue_capacity(ss.s), SRC_LEN / TP);
		/* then behave: take every page, say DONE */
		ck_assert_uint_eq(dst_read(&h, 20000, true), SRC_LEN / TP);
		{
			struct wire_hdr dn = { .magic = PCOPY_WIRE_MAGIC,
					       .type = PCOPY_MSG_DONE };

			ck_assert_int_eq(conn_send_msg(h.fd, &dn, NULL, 0), 0);
		}
		break;
	}
	case HD_RESUME_WRONG_SESSION: {
		/* a second connection claiming to resume another session is
		 * refused, and the real session goes on undisturbed */
		struct wire_hello bad, bpeer;
		struct add_conn ac = { ss.s, -1, 1 };
		int sv2[2];

		ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv2), 0);
		ac.fd = sv2[0];
		ck_assert_int_eq(pthread_create(&thr, NULL, add_conn_main, &ac), 0);
		dest_hello(&bad, PCOPY_CONN_RESUME, h.session ^ 0x5a5a, true);
		rc = conn_handshake(sv2[1], &bad, &bpeer, &feat, 5000, err, sizeof(err));
		pthread_join(thr, NULL);
		fprintf(stderr, "hostile dest resume-wrong-session: add_conn %d (%s), "
			"peer saw %d '%s'\n", ac.rc, pcopy_strerror(ac.rc), rc, err);
		ck_assert_msg(ac.rc < 0, "a RESUME for session %llx was accepted by "
			      "session %llx", (unsigned long long)(h.session ^ 0x5a5a),
			      (unsigned long long)h.session);
		ck_assert_int_ne(rc, 0);
		close(sv2[1]);
		ck_assert_uint_eq(dst_read(&h, 20000, true), SRC_LEN / TP);
		{
			struct wire_hdr dn = { .magic = PCOPY_WIRE_MAGIC,
					       .type = PCOPY_MSG_DONE };

			ck_assert_int_eq(conn_send_msg(h.fd, &dn, NULL, 0), 0);
		}
		ck_assert_int_eq(pcopy_source_wait(ss.s, 10000), 0);
		break;
	}
	case HD_RESUME_BAD_BITMAP: {
		/* break, then a resume whose bitmap covers more host pages
		 * than the region has: refused, the session stays paused and
		 * an honest resume still completes it */
		int add_rc, fd;

		shutdown(h.fd, SHUT_RDWR);
		ck_assert_msg(wait_paused(ss.s, 5000), "no pause after EOF");
		fd = resume_conn(&h, ss.s, 8, h.psk, &add_rc);
		fprintf(stderr, "hostile dest resume-bad-bitmap: add_conn %d (%s): %s\n",
			add_rc, pcopy_strerror(add_rc), pcopy_source_error(ss.s));
		if (fd >= 0)
			close(fd);
		ck_assert_msg(add_rc < 0, "a bitmap past the region was accepted");
		ck_assert_msg(wait_paused(ss.s, 2000), "the session did not stay paused "
			      "after a refused resume: %s", pcopy_source_error(ss.s));
		fd = resume_conn(&h, ss.s, 0, h.psk, &add_rc);
		ck_assert_msg(fd >= 0 && add_rc == 0, "honest resume refused: %d %s",
			      add_rc, pcopy_source_error(ss.s));
		close(h.fd);
		h.fd = fd;
		ck_assert_uint_eq(dst_read(&h, 20000, true), SRC_LEN / TP);
		{
			struct wire_hdr dn = { .magic = PCOPY_WIRE_MAGIC,
					       .type = PCOPY_MSG_DONE };

			ck_assert_int_eq(conn_send_msg(h.fd, &dn, NULL, 0), 0);
		}
		ck_assert_int_eq(pcopy_source_wait(ss.s, 10000), 0);
		break;
	}
	case HD_RESUME_WRONG_KEY: {
		/* after a break, a resume with the wrong key (and one with no
		 * key) is refused before any page; the right key resumes */
		int add_rc, fd;

		shutdown(h.fd, SHUT_RDWR);
		ck_assert_msg(wait_paused(ss.s, 5000), "no pause after EOF");
		fd = resume_conn(&h, ss.s, 0, "the wrong key", &add_rc);
		fprintf(stderr, "hostile dest resume-wrong-key: add_conn %d (%s), fd %d\n",
			add_rc, pcopy_strerror(add_rc), fd);
		ck_assert_msg(add_rc < 0 && fd < 0, "a wrong key resumed the session");
		fd = resume_conn(&h, ss.s, 0, NULL, &add_rc);
		ck_assert_msg(add_rc < 0 && fd < 0, "no key resumed the session");
		ck_assert(wait_paused(ss.s, 2000));
		fd = resume_conn(&h, ss.s, 0, h.psk, &add_rc);
		ck_assert_msg(fd >= 0 && add_rc == 0, "the right key was refused: %d %s",
			      add_rc, pcopy_source_error(ss.s));
		close(h.fd);
		h.fd = fd;
		ck_assert_uint_eq(dst_read(&h, 20000, true), SRC_LEN / TP);
		{
			struct wire_hdr dn = { .magic = PCOPY_WIRE_MAGIC,
					       .type = PCOPY_MSG_DONE };

			ck_assert_int_eq(conn_send_msg(h.fd, &dn, NULL, 0), 0);
		}
		ck_assert_int_eq(pcopy_source_wait(ss.s, 10000), 0);
		break;
	}
	case HD_BAD_REQ_EVERY_RESUME: {
		/* a destination that resumes only to send a bad REQ again must
		 * not hold the source forever: it gives up after a bound */
		unsigned tries = 0;
		int add_rc, fd = -1;

		rq[0] = (struct wire_req){ 7, 1, 0 };
		req_send(&h, rq, 1, 1, 16);
		for (tries = 0; tries < 64; tries++) {
			if (!wait_paused(ss.s, 3000))
				break;
			if (fd >= 0)
				close(fd);
			fd = resume_conn(&h, ss.s, 0, h.psk, &add_rc);
			if (fd < 0 || add_rc < 0)
				break;
			{
				int main_fd = h.fd;

				h.fd = fd;	/* the bad REQ goes on the resumed one */
				req_send(&h, rq, 1, 1, 16);
				h.fd = main_fd;
			}
		}
		if (fd >= 0)
			close(fd);
		rc = pcopy_source_wait(ss.s, 10000);
		fprintf(stderr, "hostile dest bad-req-after-every-resume: %u resumes, "
			"then %d (%s): %s\n", tries, rc, pcopy_strerror(rc),
			pcopy_source_error(ss.s));
		ck_assert_msg(tries < 64, "the source accepted 64 resumes that each "
			      "sent a bad request");
		ck_assert_int_eq(rc, -EPROTO);
		ck_assert_ptr_nonnull(strcasestr(pcopy_source_error(ss.s), "region"));
		break;
	}
	default:
		break;
	}

	if (hd_cases[kind].err) {
		/* take what comes until the source's ERROR or EOF */
		dst_read(&h, 10000, false);
		rc = pcopy_source_wait(ss.s, 10000);
		fprintf(stderr, "hostile dest %-28s -> %d (%s): %s | peer told: %s\n",
			hd_cases[kind].name, rc, pcopy_strerror(rc),
			pcopy_source_error(ss.s), h.error_text);
		ck_assert_msg(rc == hd_cases[kind].err, "%s: source ended with %d (%s): %s",
			      hd_cases[kind].name, rc, pcopy_strerror(rc),
			      pcopy_source_error(ss.s));
		ck_assert_msg(strcasestr(pcopy_source_error(ss.s), hd_cases[kind].msg),
			      "%s: '%s' does not name '%s'", hd_cases[kind].name,
			      pcopy_source_error(ss.s), hd_cases[kind].msg);
		ck_assert_msg(h.got_error, "%s: the source did not send an ERROR",
			      hd_cases[kind].name);
	} else if (kind == HD_FLOOD) {
		rc = pcopy_source_wait(ss.s, 10000);
		fprintf(stderr, "hostile dest %-28s -> %d; RSS %ld -> %ld KiB, queue %zu\n",
			hd_cases[kind].name, rc, rss0, rss1,
			src_debug_queue_capacity(ss.s));
		ck_assert_int_eq(rc, 0);
		ck_assert_msg(rss1 - rss0 < 48 * 1024, "RSS grew %ld KiB under the flood",
			      rss1 - rss0);
	}
	pcopy_source_destroy(ss.s);
	close(h.fd);
	free(h.buf);
	munmap(mem, SRC_LEN);
}
END_TEST

static Suite *make_hostile_suite(void)
{
	Suite *s = suite_create("hostile");
	TCase *tc = tcase_create("source");

	tcase_set_timeout(tc, 60);
	tcase_add_loop_test(tc, test_hostile_source, 0, B_COUNT);
	suite_add_tcase(s, tc);

	tc = tcase_create("destination");
	tcase_set_timeout(tc, 60);
	tcase_add_loop_test(tc, test_hostile_dest, 0, HD_COUNT);
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
