/* SPDX-License-Identifier: MIT */
/*
 * Writes the fuzzers' seed corpus (test/corpus/{frame,hello,req,handshake}/)
 * with the real encoders, so the seeds are valid streams the decoders accept
 * and the fuzzers start deep inside the parsers. Usage: gen_corpus OUTDIR
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_common.h"
#include "wire.h"

struct sbuf {
	uint8_t *p;
	size_t len, cap;
};

static void die(const char *what)
{
	fprintf(stderr, "gen_corpus: %s\n", what);
	exit(1);
}

static void put(struct sbuf *b, const void *p, size_t n)
{
	if (b->len + n > b->cap) {
		b->cap = (b->len + n) * 2;
		b->p = realloc(b->p, b->cap);
		if (!b->p)
			die("out of memory");
	}
	memcpy(b->p + b->len, p, n);
	b->len += n;
}

/* Append one sealed message: header (crc filled in) + payload. */
static void msg(struct sbuf *b, uint8_t type, uint8_t kind, uint32_t region,
		uint32_t count, uint64_t offset, const void *payload,
		uint32_t len)
{
	struct wire_hdr h = {
		.magic = PCOPY_WIRE_MAGIC, .type = type, .kind = kind,
		.region = region, .count = count, .offset = offset,
		.length = len,
	};
	uint8_t hdr[PCOPY_WIRE_HDR_SIZE];

	wire_hdr_seal(hdr, &h, payload, len);
	put(b, hdr, sizeof(hdr));
	if (len)
		put(b, payload, len);
}

static void write_file(const char *dir, const char *sub, const char *name,
		       const void *p, size_t n)
{
	char path[4096];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, sub);
	if (mkdir(path, 0755) && errno != EEXIST)
		die("mkdir failed");
	snprintf(path, sizeof(path), "%s/%s/%s", dir, sub, name);
	f = fopen(path, "wb");
	if (!f || fwrite(p, 1, n, f) != n || fclose(f))
		die("write failed");
}

/* The fuzzers' fixed table, as a HELLO from `role`. */
static struct wire_hello table_hello(uint32_t role, uint32_t features)
{
	struct wire_hello h;

	memset(&h, 0, sizeof(h));
	h.version = PCOPY_WIRE_VERSION;
	h.role = role;
	h.conn_kind = PCOPY_CONN_MAIN;
	h.features = features;
	h.session_id = 0x1122334455667788ull;
	h.target_page = PCOPY_TARGET_PAGE;
	fuzz_table(h.regions, &h.nregions);
	return h;
}

static void hello_msg(struct sbuf *b, const struct wire_hello *h)
{
	uint8_t buf[8192];
	int n = wire_hello_encode(h, buf, sizeof(buf));

	if (n < 0)
		die("wire_hello_encode failed");
	msg(b, PCOPY_MSG_HELLO, 0, 0, 0, 0, buf, (uint32_t)n);
}

static void page_fill(uint8_t *p, size_t n, unsigned seed)
{
	size_t i;

	/* compressible but not trivial: a varying head per 4 KiB page, then a
	 * run of one byte (keeps a 2 MiB zlib frame small for the corpus) */
	for (i = 0; i < n; i++)
		p[i] = (uint8_t)(i % 4096 < 200 ? i * 7 + seed + i / 4096 : seed);
}

/* A zlib page frame for count pages at offset of region r; 0 if it did not
 * compress. */
static int zlib_msg(struct sbuf *b, struct codec_zlib *z, uint32_t r,
		    uint64_t off, uint32_t count, unsigned seed)
{
	size_t n = (size_t)count * PCOPY_TARGET_PAGE;
	uint8_t *src = malloc(n), *dst = malloc(n);
	long c;

	if (!src || !dst)
		die("out of memory");
	page_fill(src, n, seed);
	c = codec_zlib_compress(z, src, n, dst, n);
	if (c > 0)
		msg(b, PCOPY_MSG_PAGE, PCOPY_KIND_ZLIB, r, count, off, dst,
		    (uint32_t)c);
	free(src);
	free(dst);
	return c > 0;
}

/* RECV_BITMAP messages covering the fuzz table: ram0 (256 host pages) as
 * 101 + 155 with some bits set, huge (2) and small (4) whole. */
static void bitmap_msgs(struct sbuf *b)
{
	struct wire_region tab[FUZZ_NREGIONS];
	uint64_t bits[4] = { 0x00ff00ff00ff00ffull, 0x8000000000000001ull,
			     0x0123456789abcdefull, ~0ull };
	uint8_t pl[64];
	struct wire_hdr h;
	uint64_t first, pages, cap;
	uint32_t n, r;
	int len;

	fuzz_table(tab, &n);
	for (r = 0; r < n; r++) {
		pages = tab[r].length / tab[r].host_page;
		for (first = 0; first < pages; first += h.count) {
			cap = (r == 0 && first == 0) ? 13 : sizeof(pl);
			len = wire_bitmap_encode(r, bits, pages, first, &h, pl,
						 cap);
			if (len <= 0)
				die("wire_bitmap_encode failed");
			if (r == 0 && first == 0)	/* end mid-byte */
				h.count = 101, len = 13, pl[12] &= 0x1f;
			msg(b, PCOPY_MSG_RECV_BITMAP, 0, r, h.count, first, pl,
			    (uint32_t)len);
		}
	}
}

static void gen_frames(const char *dir)
{
	static uint8_t page[4 * PCOPY_TARGET_PAGE];
	struct wire_hello src = table_hello(PCOPY_ROLE_SOURCE, PCOPY_FEAT_ZLIB);
	struct wire_hello dst = table_hello(PCOPY_ROLE_DEST, PCOPY_FEAT_ZLIB);
	struct wire_req reqs[3] = {
		{ 0, 1, 0 }, { 1, 512, 2u << 20 }, { 2, 4, 16384 },
	};
	uint8_t rq[sizeof(reqs) / sizeof(reqs[0]) * PCOPY_REQ_ENTRY_SIZE];
	uint8_t ebuf[128];
	struct codec_zlib *z;
	struct sbuf b = { 0 };
	uint8_t mode = FUZZ_MODE_ZLIB | FUZZ_MODE_STRICT_CRC;
	size_t el;

	if (codec_zlib_new(&z, true, 6))
		die("codec_zlib_new failed");

	/* A whole small source stream: HELLO, zero, raw, zlib pages, END. */
	put(&b, &mode, 1);
	hello_msg(&b, &src);
	msg(&b, PCOPY_MSG_PAGE, PCOPY_KIND_ZERO, 0, 1, 0, NULL, 0);
	page_fill(page, PCOPY_TARGET_PAGE, 1);
	msg(&b, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, 0, 1, 4096, page, 4096);
	if (!zlib_msg(&b, z, 0, 8192, 1, 2))
		die("page did not compress");
	msg(&b, PCOPY_MSG_END, 0, 0, 0, 0, NULL, 0);
	write_file(dir, "frame", "source-stream", b.p, b.len);

	/* Pages of each region shape: multi-page raw in the 16 KiB region,
	 * a whole 2 MiB huge page as zlib, a zero huge page. */
	b.len = 0;
	put(&b, &mode, 1);
	page_fill(page, sizeof(page), 3);
	msg(&b, PCOPY_MSG_PAGE, PCOPY_KIND_RAW, 2, 4, 16384, page, sizeof(page));
	if (!zlib_msg(&b, z, 1, 2u << 20, 512, 4))
		die("huge page did not compress");
	msg(&b, PCOPY_MSG_PAGE, PCOPY_KIND_ZERO, 1, 512, 0, NULL, 0);
	msg(&b, PCOPY_MSG_PAGE, PCOPY_KIND_ZERO, 1, 3, (4u << 20) - 3 * 4096,
	    NULL, 0);
	write_file(dir, "frame", "pages-mixed", b.p, b.len);

	/* The destination's direction: HELLO, REQ, DONE. */
	b.len = 0;
	put(&b, &mode, 1);
	hello_msg(&b, &dst);
	wire_req_encode(reqs, 3, rq);
	msg(&b, PCOPY_MSG_REQ, 0, 0, 3, 0, rq, sizeof(rq));
	msg(&b, PCOPY_MSG_DONE, 0, 0, 0, 0, NULL, 0);
	write_file(dir, "frame", "dest-stream", b.p, b.len);

	/* ERROR messages, and a zlib page in a stream that did not negotiate
	 * zlib (mode without FUZZ_MODE_ZLIB). */
	b.len = 0;
	mode = FUZZ_MODE_STRICT_CRC;
	put(&b, &mode, 1);
	el = wire_error_encode(EPROTO, "region 1 'ram1': length differs",
			       ebuf, sizeof(ebuf));
	msg(&b, PCOPY_MSG_ERROR, 0, 0, 0, 0, ebuf, (uint32_t)el);
	zlib_msg(&b, z, 0, 0, 1, 5);
	write_file(dir, "frame", "error-nozlib", b.p, b.len);

	/* Non-strict mode (crc ignored) with one page of each kind. */
	b.len = 0;
	mode = FUZZ_MODE_ZLIB;
	put(&b, &mode, 1);
	msg(&b, PCOPY_MSG_PAGE, PCOPY_KIND_ZERO, 2, 4, 0, NULL, 0);
	zlib_msg(&b, z, 2, 16384, 4, 6);
	write_file(dir, "frame", "lax-pages", b.p, b.len);

	/* A resumed destination: HELLO (RESUME), the received bitmap of the
	 * whole table (ram0 in two pieces, the first ending mid-byte), the
	 * pending requests, a keepalive. */
	b.len = 0;
	mode = FUZZ_MODE_ZLIB | FUZZ_MODE_STRICT_CRC;
	put(&b, &mode, 1);
	dst.conn_kind = PCOPY_CONN_RESUME;
	dst.session_id = 0x1122334455667788ull;
	dst.features |= PCOPY_FEAT_RESUME;
	hello_msg(&b, &dst);
	bitmap_msgs(&b);
	msg(&b, PCOPY_MSG_REQ, 0, 0, 3, 0, rq, sizeof(rq));
	msg(&b, PCOPY_MSG_PING, 0, 0, 0, 0, NULL, 0);
	write_file(dir, "frame", "resume-stream", b.p, b.len);

	/* AUTH nonce and proof, then keepalives and END. */
	b.len = 0;
	put(&b, &mode, 1);
	memset(ebuf, 0xa5, 32);
	msg(&b, PCOPY_MSG_AUTH, PCOPY_AUTH_NONCE, 0, 0, 0, ebuf, 32);
	memset(ebuf, 0x5a, 32);
	msg(&b, PCOPY_MSG_AUTH, PCOPY_AUTH_PROOF, 0, 0, 0, ebuf, 32);
	msg(&b, PCOPY_MSG_PING, 0, 0, 0, 0, NULL, 0);
	msg(&b, PCOPY_MSG_END, 0, 0, 0, 0, NULL, 0);
	write_file(dir, "frame", "auth-ping", b.p, b.len);

	codec_zlib_free(z);
	free(b.p);
}

/* Handshake seeds: mode byte (fuzz_handshake.c) then what the peer says. */
#define HS_SOURCE	0x01
#define HS_PSK		0x02
#define HS_SESSION	0x04

static void hs_seed(const char *dir, const char *name, uint8_t mode,
		    uint32_t peer_role, uint32_t kind, uint32_t features,
		    int auth)
{
	struct wire_hello h = table_hello(peer_role, features);
	struct sbuf b = { 0 };
	uint8_t junk[32];

	put(&b, &mode, 1);
	h.conn_kind = kind;
	if (peer_role == PCOPY_ROLE_DEST && kind == PCOPY_CONN_MAIN)
		h.session_id = 0;
	hello_msg(&b, &h);
	if (auth) {
		memset(junk, 0x11, sizeof(junk));
		msg(&b, PCOPY_MSG_AUTH, PCOPY_AUTH_NONCE, 0, 0, 0, junk, 32);
		memset(junk, 0x22, sizeof(junk));
		msg(&b, PCOPY_MSG_AUTH, PCOPY_AUTH_PROOF, 0, 0, 0, junk, 32);
	}
	write_file(dir, "handshake", name, b.p, b.len);
	free(b.p);
}

static void gen_handshakes(const char *dir)
{
	const uint32_t all = PCOPY_FEAT_ZLIB | PCOPY_FEAT_URGENT |
			     PCOPY_FEAT_RESUME;
	struct sbuf b = { 0 };
	uint8_t ebuf[128], mode = 0;
	size_t el;

	/* We are the source: a destination opens MAIN, URGENT, RESUME. */
	hs_seed(dir, "src-main", HS_SOURCE, PCOPY_ROLE_DEST, PCOPY_CONN_MAIN,
		all, 0);
	hs_seed(dir, "src-urgent", HS_SOURCE | HS_SESSION, PCOPY_ROLE_DEST,
		PCOPY_CONN_URGENT, all, 0);
	hs_seed(dir, "src-resume", HS_SOURCE | HS_SESSION, PCOPY_ROLE_DEST,
		PCOPY_CONN_RESUME, all, 0);
	hs_seed(dir, "src-psk", HS_SOURCE | HS_PSK, PCOPY_ROLE_DEST,
		PCOPY_CONN_MAIN, all | PCOPY_FEAT_AUTH, 1);
	/* We are the destination: the source answers. */
	hs_seed(dir, "dst-main", 0, PCOPY_ROLE_SOURCE, PCOPY_CONN_MAIN, all, 0);
	hs_seed(dir, "dst-psk", HS_PSK, PCOPY_ROLE_SOURCE, PCOPY_CONN_MAIN,
		all | PCOPY_FEAT_AUTH, 1);
	/* The source refuses with an ERROR. */
	put(&b, &mode, 1);
	el = wire_error_encode(EPROTO, "HELLO: URGENT connection for unknown "
			       "session 0x0000000000000001", ebuf, sizeof(ebuf));
	msg(&b, PCOPY_MSG_ERROR, 0, 0, 0, 0, ebuf, (uint32_t)el);
	write_file(dir, "handshake", "dst-refused", b.p, b.len);
	free(b.p);
}

static void gen_hellos(const char *dir)
{
	struct wire_hello h = table_hello(PCOPY_ROLE_SOURCE, PCOPY_FEAT_ZLIB);
	uint8_t buf[8192];
	char name[32];
	unsigned i;
	int n;

	n = wire_hello_encode(&h, buf, sizeof(buf));
	write_file(dir, "hello", "source-table", buf, (size_t)n);
	h.role = PCOPY_ROLE_DEST;
	h.features = 0;
	n = wire_hello_encode(&h, buf, sizeof(buf));
	write_file(dir, "hello", "dest-table", buf, (size_t)n);

	/* One region, and the largest table: 64 regions, 63-byte names. */
	h.nregions = 1;
	snprintf(h.regions[0].name, sizeof(h.regions[0].name), "r");
	n = wire_hello_encode(&h, buf, sizeof(buf));
	write_file(dir, "hello", "one-region", buf, (size_t)n);
	h.nregions = PCOPY_REGIONS_MAX;
	for (i = 0; i < PCOPY_REGIONS_MAX; i++) {
		memset(h.regions[i].name, 'a' + i % 26, PCOPY_NAME_MAX);
		h.regions[i].name[PCOPY_NAME_MAX] = '\0';
		h.regions[i].host_page = i % 2 ? 4096 : 2u << 20;
		h.regions[i].length = (uint64_t)h.regions[i].host_page * (i + 1);
	}
	h.conn_kind = PCOPY_CONN_RESUME;
	n = wire_hello_encode(&h, buf, sizeof(buf));
	write_file(dir, "hello", "max-table", buf, (size_t)n);

	/* A 1 GiB host page region (the largest accepted). */
	h.nregions = 2;
	h.regions[1].host_page = PCOPY_HOST_PAGE_MAX;
	h.regions[1].length = (uint64_t)PCOPY_HOST_PAGE_MAX * 3;
	snprintf(name, sizeof(name), "giant");
	memcpy(h.regions[1].name, name, strlen(name) + 1);
	n = wire_hello_encode(&h, buf, sizeof(buf));
	write_file(dir, "hello", "giant-page", buf, (size_t)n);
}

static void gen_reqs(const char *dir)
{
	struct wire_req r[4] = {
		{ 0, 1, 0 },
		{ 0, 256, 0 },			/* the whole 1 MiB region */
		{ 1, 512, 2u << 20 },		/* the second huge page */
		{ 2, 1, 65536 - 4096 },		/* last page of region 2 */
	};
	uint8_t buf[sizeof(r) / sizeof(r[0]) * PCOPY_REQ_ENTRY_SIZE];

	wire_req_encode(r, 1, buf);
	write_file(dir, "req", "one", buf, PCOPY_REQ_ENTRY_SIZE);
	wire_req_encode(r, 4, buf);
	write_file(dir, "req", "four", buf, sizeof(buf));
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s OUTDIR\n", argv[0]);
		return 2;
	}
	if (mkdir(argv[1], 0755) && errno != EEXIST)
		die("cannot create OUTDIR");
	gen_frames(argv[1]);
	gen_hellos(argv[1]);
	gen_reqs(argv[1]);
	gen_handshakes(argv[1]);
	return 0;
}
