/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for the wire layer: header framing and crc, every validation
 * rule, HELLO/REQ/ERROR payloads, the codecs, socket I/O and the handshake.
 */
#include <check.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zlib.h>

#include "common.h"
#include "crc32c.h"
#include "wire.h"

#define MiB (1024u * 1024u)
#define HOST_2M (2u * MiB)

static char err[PCOPY_ERRMSG_MAX];

#define ck_assert_err_has(sub) \
	ck_assert_msg(strstr(err, (sub)) != NULL, \
		      "message '%s' lacks '%s'", err, (sub))

/* Three regions: 4 KiB pages, 2 MiB pages, a small one. */
static void mk_tab(struct wire_region tab[3])
{
	memset(tab, 0, 3 * sizeof(*tab));
	strcpy(tab[0].name, "ram0");
	tab[0].length = 16 * MiB;
	tab[0].host_page = 4096;
	strcpy(tab[1].name, "huge");
	tab[1].length = 4 * MiB;
	tab[1].host_page = HOST_2M;
	strcpy(tab[2].name, "rom");
	tab[2].length = 65536;
	tab[2].host_page = 4096;
}

static void mk_hello(struct wire_hello *h, uint32_t role)
{
	memset(h, 0, sizeof(*h));
	h->version = PCOPY_WIRE_VERSION;
	h->role = role;
	h->conn_kind = PCOPY_CONN_MAIN;
	h->features = PCOPY_FEAT_ZLIB;
	h->session_id = role == PCOPY_ROLE_SOURCE ? 0x1122334455667788ull : 0;
	h->target_page = PCOPY_TARGET_PAGE;
	h->nregions = 3;
	mk_tab(h->regions);
}

/* ------------------------------------------------------------------ */
/* header + crc                                                        */
/* ------------------------------------------------------------------ */

START_TEST(test_hdr_roundtrip)
{
	struct wire_hdr h = {
		.magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_PAGE,
		.kind = PCOPY_KIND_RAW, .flags = 0, .region = 0x01020304,
		.count = 0x05060708, .offset = 0x1112131415161718ull,
		.length = 4096, .crc = 0xa1b2c3d4,
	}, d;
	uint8_t out[PCOPY_WIRE_HDR_SIZE];

	wire_hdr_encode(out, &h);
	/* Little-endian, byte exact. */
	ck_assert(memcmp(out, "PCFR", 4) == 0);
	ck_assert_int_eq(out[4], PCOPY_MSG_PAGE);
	ck_assert_int_eq(out[5], PCOPY_KIND_RAW);
	ck_assert_int_eq(out[8], 0x04);
	ck_assert_int_eq(out[11], 0x01);
	ck_assert_int_eq(out[12], 0x08);
	ck_assert_int_eq(out[16], 0x18);
	ck_assert_int_eq(out[23], 0x11);
	ck_assert_int_eq(out[24], 0x00);
	ck_assert_int_eq(out[25], 0x10);
	ck_assert_int_eq(out[28], 0xd4);
	ck_assert_int_eq(out[31], 0xa1);

	ck_assert_int_eq(wire_hdr_decode(out, &d, err, sizeof(err)), 0);
	ck_assert_uint_eq(d.magic, h.magic);
	ck_assert_uint_eq(d.type, h.type);
	ck_assert_uint_eq(d.kind, h.kind);
	ck_assert_uint_eq(d.flags, h.flags);
	ck_assert_uint_eq(d.region, h.region);
	ck_assert_uint_eq(d.count, h.count);
	ck_assert(d.offset == h.offset);
	ck_assert_uint_eq(d.length, h.length);
	ck_assert_uint_eq(d.crc, h.crc);
}
END_TEST

/* The known-answer vectors of doc/PROTOCOL.md section 3.1 (computed by an
 * independent bit-by-bit implementation). */
START_TEST(test_hdr_known_answer)
{
	static const uint8_t want[PCOPY_WIRE_HDR_SIZE] = {
		0x50, 0x43, 0x46, 0x52, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x68, 0x4d, 0x26, 0xa7,
	};
	/* REQ for region 1, one page at 0x200000: header then 16 bytes. */
	static const uint8_t want_req[PCOPY_WIRE_HDR_SIZE + 16] = {
		0x50, 0x43, 0x46, 0x52, 0x04, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,
		0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0x2b, 0x5c, 0x1f, 0xe7,
		1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0x20, 0, 0, 0, 0, 0,
	};
	struct wire_hdr h = { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_END };
	struct wire_req r = { .region = 1, .count = 1, .offset = 0x200000 };
	uint8_t out[PCOPY_WIRE_HDR_SIZE], pl[16];

	wire_hdr_seal(out, &h, NULL, 0);
	ck_assert(memcmp(out, want, sizeof(want)) == 0);
	ck_assert_uint_eq(h.crc, 0xa7264d68u);

	h = (struct wire_hdr){ .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_REQ,
			       .count = 1, .length = 16 };
	wire_req_encode(&r, 1, pl);
	wire_hdr_seal(out, &h, pl, sizeof(pl));
	ck_assert(memcmp(out, want_req, PCOPY_WIRE_HDR_SIZE) == 0);
	ck_assert(memcmp(pl, want_req + PCOPY_WIRE_HDR_SIZE, 16) == 0);
	ck_assert_uint_eq(h.crc, 0xe71f5c2bu);

	/* The CRC-32C check value, every implementation. */
	ck_assert_uint_eq(pcopy_crc32c(0, "123456789", 9), 0xe3069283u);
	ck_assert_uint_eq(pcopy_crc32c_sw(0, "123456789", 9), 0xe3069283u);
	if (pcopy_crc32c_hw_available())
		ck_assert_uint_eq(pcopy_crc32c_hw(0, "123456789", 9),
				  0xe3069283u);
	/* Not zlib's crc32 any more (0xcbf43926 for the same input). */
	ck_assert_uint_ne(pcopy_crc32c(0, "123456789", 9),
			  crc32(0, (const Bytef *)"123456789", 9));
}
END_TEST

/* Bit-at-a-time CRC-32C from the definition: the reference for both. */
static uint32_t crc32c_ref(uint32_t crc, const uint8_t *p, size_t n)
{
	unsigned k;

	crc = ~crc;
	while (n--) {
		crc ^= *p++;
		for (k = 0; k < 8; k++)
			crc = (crc >> 1) ^ (0x82f63b78u & (0u - (crc & 1)));
	}
	return ~crc;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

/*
 * Table and SSE4.2 agree with the reference on every length 0..300 at every
 * alignment 0..15, on lengths around each three-stream block size (1360 and
 * 8192 bytes per stream), on megabytes, and when a buffer is fed in pieces.
 */
START_TEST(test_crc32c_agree)
{
	static const size_t big[] = {
		4079, 4080, 4081, 4095, 4096, 4097, 4128, 8160, 8161, 12240,
		24575, 24576, 24577, 24576 + 4080, 49152 + 17, 65536,
		(1u << 20) + 3, (2u << 20) + 4096,
	};
	size_t cap = (2u << 20) + 4096 + 64, len, a, i, cut;
	bool hw = pcopy_crc32c_hw_available();
	uint8_t *buf = malloc(cap);
	uint32_t want, seed;

	ck_assert_ptr_nonnull(buf);
	for (i = 0; i < cap; i++)
		buf[i] = (uint8_t)rng();
	if (!hw)
		printf("SKIP hardware half of test_crc32c_agree: no SSE4.2\n");
	for (len = 0; len <= 300; len++) {
		for (a = 0; a < 16; a++) {
			seed = (uint32_t)rng();
			want = crc32c_ref(seed, buf + a, len);
			ck_assert_msg(pcopy_crc32c_sw(seed, buf + a, len) == want,
				      "table: len %zu align %zu", len, a);
			if (hw)
				ck_assert_msg(pcopy_crc32c_hw(seed, buf + a, len)
					      == want, "hw: len %zu align %zu",
					      len, a);
		}
	}
	for (i = 0; i < sizeof(big) / sizeof(big[0]); i++) {
		for (a = 0; a < 9; a += 3) {
			want = crc32c_ref(0, buf + a, big[i]);
			ck_assert_msg(pcopy_crc32c_sw(0, buf + a, big[i]) == want,
				      "table: len %zu align %zu", big[i], a);
			if (hw)
				ck_assert_msg(pcopy_crc32c_hw(0, buf + a, big[i])
					      == want, "hw: len %zu align %zu",
					      big[i], a);
			ck_assert(pcopy_crc32c(0, buf + a, big[i]) == want);
		}
	}
	/* Chaining: any split gives the checksum of the whole. */
	for (i = 0; i < 50; i++) {
		len = rng() % 70000;
		cut = len ? rng() % len : 0;
		want = crc32c_ref(0, buf, len);
		ck_assert(pcopy_crc32c(pcopy_crc32c(0, buf, cut), buf + cut,
				       len - cut) == want);
	}
	ck_assert_uint_eq(pcopy_crc32c(0x12345678, NULL, 0), 0x12345678);
	free(buf);
}
END_TEST

START_TEST(test_crc_detects_flips)
{
	struct wire_hdr h = {
		.magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_PAGE,
		.kind = PCOPY_KIND_RAW, .region = 1, .count = 1,
		.offset = 8192, .length = 64,
	}, d;
	uint8_t payload[64], out[PCOPY_WIRE_HDR_SIZE], tmp[PCOPY_WIRE_HDR_SIZE];
	unsigned i;

	for (i = 0; i < sizeof(payload); i++)
		payload[i] = (uint8_t)(i * 7 + 1);
	wire_hdr_seal(out, &h, payload, sizeof(payload));
	ck_assert_int_eq(wire_hdr_decode(out, &d, err, sizeof(err)), 0);
	ck_assert_uint_eq(d.crc, h.crc);
	ck_assert_uint_eq(h.crc, wire_crc(out, payload, sizeof(payload)));
	ck_assert_int_eq(wire_crc_check(out, &d, payload, err, sizeof(err)), 0);

	for (i = 0; i < PCOPY_WIRE_HDR_SIZE * 8; i++) {
		memcpy(tmp, out, sizeof(tmp));
		tmp[i / 8] ^= (uint8_t)(1u << (i % 8));
		ck_assert_int_eq(wire_crc_check(tmp, &d, payload, err,
						sizeof(err)), -EBADMSG);
	}
	ck_assert_err_has("crc mismatch");
	for (i = 0; i < sizeof(payload) * 8; i++) {
		payload[i / 8] ^= (uint8_t)(1u << (i % 8));
		ck_assert_int_eq(wire_crc_check(out, &d, payload, err,
						sizeof(err)), -EBADMSG);
		payload[i / 8] ^= (uint8_t)(1u << (i % 8));
	}
	ck_assert_int_eq(wire_crc_check(out, &d, payload, err, sizeof(err)), 0);
}
END_TEST

/* Malformed headers: each breaks exactly one rule of wire_hdr_decode. */
static const struct {
	struct wire_hdr h;
	const char *want;
} bad_hdrs[] = {
	{ { .magic = 0x52464351, .type = PCOPY_MSG_END }, "bad magic" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = 0 }, "unknown message type 0" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = 10 }, "unknown message type 10" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = 255 }, "unknown message type 255" },
	/* PING: no payload, every field 0 */
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_PING, .kind = 1 },
	  "PING: kind 1, want 0" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_PING, .flags = 4 },
	  "PING: unknown flags 0x0004" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_PING, .region = 1 },
	  "PING: region 1, want 0" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_PING, .count = 1 },
	  "PING: count 1, want 0" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_PING, .offset = 8 },
	  "PING: offset 0x8, want 0" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_PING, .length = 1 },
	  "PING: length 1, want 0" },
	/* AUTH: kind NONCE or PROOF, payload exactly 32 */
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_AUTH, .length = 32 },
	  "AUTH: unknown kind 0" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_AUTH, .kind = 3,
	    .length = 32 }, "AUTH: unknown kind 3" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_AUTH, .kind = 1,
	    .length = 31 }, "AUTH: length 31, want 32" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_AUTH, .kind = 2,
	    .length = 33 }, "AUTH: length 33, want 32" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_AUTH, .kind = 2 },
	  "AUTH: length 0, want 32" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_AUTH, .kind = 1,
	    .region = 1, .length = 32 }, "AUTH: region 1, want 0" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_AUTH, .kind = 1,
	    .count = 1, .length = 32 }, "AUTH: count 1, want 0" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_AUTH, .kind = 1,
	    .offset = 4096, .length = 32 }, "AUTH: offset 0x1000, want 0" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_AUTH, .kind = 1,
	    .flags = 1, .length = 32 }, "AUTH: unknown flags" },
	/* RECV_BITMAP: count 1..max, payload ceil(count / 8) */
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_RECV_BITMAP,
	    .kind = 1, .count = 8, .length = 1 }, "RECV_BITMAP: kind 1, want 0" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_RECV_BITMAP },
	  "RECV_BITMAP: count 0 host pages" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_RECV_BITMAP,
	    .count = PCOPY_BITMAP_MAX_BITS + 1, .length = 1 },
	  "RECV_BITMAP: count 16809985 host pages, want 1..16809984" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_RECV_BITMAP,
	    .count = 9, .length = 1 },
	  "RECV_BITMAP: length 1, want 2 for 9 host pages" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_RECV_BITMAP,
	    .count = 8, .length = 2 },
	  "RECV_BITMAP: length 2, want 1 for 8 host pages" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_RECV_BITMAP,
	    .count = 1 }, "RECV_BITMAP: length 0, want 1" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_RECV_BITMAP,
	    .flags = 0x100, .count = 1, .length = 1 },
	  "RECV_BITMAP: unknown flags 0x0100" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_PAGE, .kind = 0,
	    .count = 1 }, "PAGE: unknown kind 0" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_PAGE, .kind = 4,
	    .count = 1 }, "PAGE: unknown kind 4" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_END, .kind = 1 },
	  "END: kind 1, want 0" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_PAGE, .kind = 1,
	    .flags = 0x8000, .count = 1 }, "PAGE: unknown flags 0x8000" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_DONE, .flags = 1 },
	  "DONE: unknown flags 0x0001" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_PAGE, .kind = 2,
	    .count = 1, .length = PCOPY_WIRE_PAYLOAD_MAX + 1 },
	  "exceeds maximum" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_PAGE, .kind = 2,
	    .count = 1, .length = 0xffffffffu }, "length 4294967295 exceeds" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_END, .length = 1 },
	  "END: length 1, want 0" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_DONE, .region = 2 },
	  "DONE: region 2, want 0" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_DONE, .count = 2 },
	  "DONE: count 2, want 0" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_ERROR, .offset = 4096,
	    .length = 4 }, "ERROR: offset 0x1000, want 0" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_REQ, .count = 0 },
	  "REQ: count 0 entries" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_REQ, .count = 4097,
	    .length = 4097 * 16 }, "REQ: count 4097 entries" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_REQ, .count = 2,
	    .length = 16 }, "REQ: length 16, want 32" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_HELLO, .length = 31 },
	  "HELLO: length 31" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_HELLO, .length = 65536 },
	  "HELLO: length 65536" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_ERROR, .length = 3 },
	  "ERROR: length 3" },
	{ { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_ERROR, .length = 1029 },
	  "ERROR: length 1029" },
};

START_TEST(test_hdr_invalid)
{
	uint8_t out[PCOPY_WIRE_HDR_SIZE];
	struct wire_hdr d;

	wire_hdr_encode(out, &bad_hdrs[_i].h);
	err[0] = '\0';
	ck_assert_int_eq(wire_hdr_decode(out, &d, err, sizeof(err)), -EPROTO);
	ck_assert_err_has(bad_hdrs[_i].want);
}
END_TEST

START_TEST(test_hdr_valid_types)
{
	static const struct wire_hdr ok[] = {
		{ .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_HELLO, .length = 32 },
		{ .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_PAGE, .kind = 3,
		  .count = 512, .region = 9, .offset = 1ull << 40,
		  .length = PCOPY_WIRE_PAYLOAD_MAX },
		{ .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_END },
		{ .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_REQ, .count = 4096,
		  .length = 4096 * 16 },
		{ .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_DONE },
		{ .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_ERROR, .length = 1028 },
		{ .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_PING },
		{ .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_AUTH,
		  .kind = PCOPY_AUTH_NONCE, .length = 32 },
		{ .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_AUTH,
		  .kind = PCOPY_AUTH_PROOF, .length = 32 },
		/* region and offset are checked against the table later */
		{ .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_RECV_BITMAP,
		  .region = 70, .offset = 1ull << 50, .count = 1, .length = 1 },
		{ .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_RECV_BITMAP,
		  .count = PCOPY_BITMAP_MAX_BITS,
		  .length = PCOPY_BITMAP_MAX_BITS / 8 },
		{ .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_RECV_BITMAP,
		  .count = 17, .length = 3 },
	};
	uint8_t out[PCOPY_WIRE_HDR_SIZE];
	struct wire_hdr d;
	unsigned i;

	for (i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		wire_hdr_encode(out, &ok[i]);
		ck_assert_msg(wire_hdr_decode(out, &d, err, sizeof(err)) == 0,
			      "valid header %u rejected: %s", i, err);
	}
}
END_TEST

/* ------------------------------------------------------------------ */
/* PAGE validation                                                     */
/* ------------------------------------------------------------------ */

static const struct {
	uint8_t kind;
	uint32_t region, count, length;
	uint64_t offset;
	uint32_t features;
	const char *want;	/* NULL: must pass */
} page_cases[] = {
	/* valid */
	{ PCOPY_KIND_RAW, 0, 1, 4096, 0, 0, NULL },
	{ PCOPY_KIND_RAW, 0, 1, 4096, 16 * MiB - 4096, 0, NULL },
	{ PCOPY_KIND_RAW, 1, 512, HOST_2M, HOST_2M, 0, NULL },
	{ PCOPY_KIND_ZERO, 1, 512, 0, 0, 0, NULL },
	{ PCOPY_KIND_ZERO, 1, 3, 0, HOST_2M - 3 * 4096, 0, NULL },
	{ PCOPY_KIND_ZLIB, 2, 1, 4095, 4096, PCOPY_FEAT_ZLIB, NULL },
	{ PCOPY_KIND_ZLIB, 1, 512, 1, 0, PCOPY_FEAT_ZLIB, NULL },
	/* invalid: one rule each */
	{ PCOPY_KIND_RAW, 7, 1, 4096, 0, 0, "PAGE: region 7 out of range (3 regions)" },
	{ PCOPY_KIND_RAW, 3, 1, 4096, 0, 0, "PAGE: region 3 out of range (3 regions)" },
	{ PCOPY_KIND_RAW, 0, 1, 4096, 100, 0, "PAGE: offset 0x64 not aligned to 4096" },
	{ PCOPY_KIND_RAW, 0, 1, 4096, 2048, 0, "not aligned" },
	{ PCOPY_KIND_ZERO, 0, 0, 0, 0, 0, "PAGE: count 0" },
	{ PCOPY_KIND_RAW, 2, 1, 4096, 65536, 0, "past end of region 2 'rom' (length 65536)" },
	{ PCOPY_KIND_ZERO, 2, 17, 0, 0, 0, "past end of region 2" },
	{ PCOPY_KIND_ZERO, 0, 2, 0, 0xfffffffffffff000ull, 0,
	  "offset 0xfffffffffffff000 + 2 pages past end" },
	{ PCOPY_KIND_ZERO, 0, 0xffffffffu, 0, 4096, 0, "past end of region 0" },
	{ PCOPY_KIND_ZERO, 0, 0xffffffffu, 0, 0xfffffffffffff000ull, 0, "past end" },
	{ PCOPY_KIND_ZERO, 1, 2, 0, HOST_2M - 4096, 0,
	  "PAGE: offset 0x1ff000 + 2 pages crosses host page boundary (host page 2097152)" },
	{ PCOPY_KIND_ZERO, 0, 2, 0, 4096, 0, "crosses host page boundary (host page 4096)" },
	{ PCOPY_KIND_ZERO, 1, 513, 0, 0, 0, "crosses host page" },
	{ PCOPY_KIND_RAW, 0, 1, 4095, 0, 0, "PAGE: raw length 4095, want 4096" },
	{ PCOPY_KIND_RAW, 1, 2, 4096, 0, 0, "PAGE: raw length 4096, want 8192" },
	{ PCOPY_KIND_RAW, 0, 1, 0, 0, 0, "raw length 0" },
	{ PCOPY_KIND_ZERO, 0, 1, 1, 0, 0, "PAGE: zero page with length 1, want 0" },
	{ PCOPY_KIND_ZLIB, 0, 1, 100, 0, 0, "zlib was not negotiated" },
	{ PCOPY_KIND_ZLIB, 0, 1, 100, 0, PCOPY_FEAT_URGENT, "zlib was not negotiated" },
	{ PCOPY_KIND_ZLIB, 0, 1, 4096, 0, PCOPY_FEAT_ZLIB, "PAGE: zlib length 4096" },
	{ PCOPY_KIND_ZLIB, 0, 1, 5000, 0, PCOPY_FEAT_ZLIB, "zlib length 5000" },
	{ PCOPY_KIND_ZLIB, 0, 1, 0, 0, PCOPY_FEAT_ZLIB, "zlib length 0" },
	{ 0, 0, 1, 0, 0, 0, "unknown kind 0" },
	{ 4, 0, 1, 0, 0, 0, "unknown kind 4" },
};

START_TEST(test_page_validate)
{
	struct wire_region tab[3];
	struct wire_hdr h = {
		.magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_PAGE,
		.kind = page_cases[_i].kind, .region = page_cases[_i].region,
		.count = page_cases[_i].count, .offset = page_cases[_i].offset,
		.length = page_cases[_i].length,
	};
	int ret;

	mk_tab(tab);
	err[0] = '\0';
	ret = wire_page_validate(&h, tab, 3, page_cases[_i].features, err,
				 sizeof(err));
	if (!page_cases[_i].want) {
		ck_assert_msg(ret == 0, "case %d rejected: %s", _i, err);
	} else {
		ck_assert_int_eq(ret, -EPROTO);
		ck_assert_err_has(page_cases[_i].want);
	}
}
END_TEST

START_TEST(test_page_flags_rejected)
{
	struct wire_region tab[3];
	struct wire_hdr h = {
		.magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_PAGE,
		.kind = PCOPY_KIND_ZERO, .count = 1, .flags = 2,
	};

	mk_tab(tab);
	ck_assert_int_eq(wire_page_validate(&h, tab, 3, 0, err, sizeof(err)),
			 -EPROTO);
	ck_assert_err_has("flags");
	h.flags = 0;
	h.type = PCOPY_MSG_END;
	ck_assert_int_eq(wire_page_validate(&h, tab, 3, 0, err, sizeof(err)),
			 -EPROTO);
}
END_TEST

/* ------------------------------------------------------------------ */
/* RECV_BITMAP                                                         */
/* ------------------------------------------------------------------ */

/* Per-region received bitmaps for mk_tab: 4096, 2 and 16 host pages, each
 * with a guard word after the region's words. */
struct bm {
	uint64_t w0[64 + 1], w1[1 + 1], w2[1 + 1];
	uint64_t *bits[3];
};

static void bm_init(struct bm *b, uint64_t fill)
{
	memset(b->w0, (int)(fill & 0xff), sizeof(b->w0));
	memset(b->w1, (int)(fill & 0xff), sizeof(b->w1));
	memset(b->w2, (int)(fill & 0xff), sizeof(b->w2));
	b->bits[0] = b->w0;
	b->bits[1] = b->w1;
	b->bits[2] = b->w2;
}

static struct wire_hdr bm_hdr(uint32_t region, uint64_t offset, uint32_t count)
{
	return (struct wire_hdr){ .magic = PCOPY_WIRE_MAGIC,
				  .type = PCOPY_MSG_RECV_BITMAP,
				  .region = region, .offset = offset,
				  .count = count,
				  .length = (count + 7) / 8 };
}

/* A complete, valid sequence: region 0 in two pieces (the first ends in the
 * middle of a byte and a word), then regions 1 and 2; the bits land where
 * they belong, zeros clear what was set, guard words stay untouched. */
START_TEST(test_bitmap_apply_ok)
{
	struct wire_region tab[3];
	uint8_t pl[512];
	struct wire_hdr h;
	uint32_t nr = 0;
	uint64_t np = 0, i;
	struct bm b;

	mk_tab(tab);
	bm_init(&b, 0xff);	/* everything "received": apply must clear */
	memset(pl, 0, sizeof(pl));
	pl[0] = 0x05;		/* pages 0 and 2 */
	pl[12] = 0x08;		/* page 99 (last of the first piece) */
	h = bm_hdr(0, 0, 100);
	ck_assert_int_eq(wire_bitmap_apply(&h, pl, tab, 3, &nr, &np, b.bits,
					   err, sizeof(err)), 0);
	ck_assert_uint_eq(nr, 0);
	ck_assert(np == 100);
	memset(pl, 0, sizeof(pl));
	pl[0] = 0x01;		/* page 100 */
	pl[(4095 - 100) / 8] = (uint8_t)(1u << ((4095 - 100) % 8)); /* 4095 */
	h = bm_hdr(0, 100, 3996);
	ck_assert_int_eq(wire_bitmap_apply(&h, pl, tab, 3, &nr, &np, b.bits,
					   err, sizeof(err)), 0);
	ck_assert_uint_eq(nr, 1);
	ck_assert(np == 0);
	for (i = 0; i < 4096; i++) {
		bool want = i == 0 || i == 2 || i == 99 || i == 100 || i == 4095;

		ck_assert_msg(!!(b.w0[i / 64] & (1ull << (i % 64))) == want,
			      "page %llu", (unsigned long long)i);
	}
	ck_assert(b.w0[64] == ~0ull);	/* guard */

	pl[0] = 0x02;
	h = bm_hdr(1, 0, 2);
	ck_assert_int_eq(wire_bitmap_apply(&h, pl, tab, 3, &nr, &np, b.bits,
					   err, sizeof(err)), 0);
	ck_assert(b.w1[0] == (~0ull << 2 | 0x2));	/* only bits 0..1 */
	ck_assert(b.w1[1] == ~0ull);
	pl[0] = 0xff;
	pl[1] = 0x80;
	h = bm_hdr(2, 0, 16);
	ck_assert_int_eq(wire_bitmap_apply(&h, pl, tab, 3, &nr, &np, b.bits,
					   err, sizeof(err)), 1);
	ck_assert_uint_eq(nr, 3);
	ck_assert(b.w2[0] == (~0ull << 16 | 0x80ff));

	/* Validate-only: NULL bits. */
	nr = 0;
	np = 0;
	memset(pl, 0, sizeof(pl));
	h = bm_hdr(0, 0, 4096);
	{
		uint8_t big[512] = { 0 };

		ck_assert_int_eq(wire_bitmap_apply(&h, big, tab, 3, &nr, &np,
						   NULL, err, sizeof(err)), 0);
	}
	ck_assert_uint_eq(nr, 1);
}
END_TEST

/* One broken message each; the position never moves on an error. */
static const struct {
	uint32_t pre;		/* valid messages applied first (see below) */
	uint32_t region, count, length;
	uint64_t offset;
	uint8_t last;		/* last payload byte */
	uint8_t type;		/* 0: RECV_BITMAP */
	const char *want;
} bm_bad[] = {
	{ 0, 0, 8, 1, 1, 0, 0, "gap: region 0 offset 1, want host page 0" },
	{ 0, 1, 2, 1, 0, 0, 0, "region 1, want region 0" },
	{ 0, 5, 2, 1, 0, 0, 0, "region 5, want region 0" },
	{ 1, 0, 8, 1, 99, 0, 0, "overlap: region 0 offset 99" },
	{ 1, 0, 8, 1, 0, 0, 0, "overlap: region 0 offset 0" },
	{ 1, 0, 8, 1, 101, 0, 0, "gap: region 0 offset 101, want host page 100" },
	{ 1, 0, 3997, 500, 100, 0, 0, "offset 100 + 3997 host pages past the "
	  "end of region 0 'ram0' (4096 host pages)" },
	{ 2, 1, 3, 1, 0, 0, 0, "past the end of region 1 'huge' (2 host pages)" },
	{ 2, 2, 1, 1, 0, 0, 0, "region 2, want region 1" },
	{ 2, 1, 2, 1, 0, 0x04, 0, "stray bits in the last byte 0x04" },
	{ 2, 1, 2, 1, 0, 0x80, 0, "only its low 2 bits" },
	{ 3, 2, 16, 2, 0, 0, 0, "region 2 offset 0 after the bitmap was "
	  "already complete" },
	{ 0, 0, 0, 0, 0, 0, 0, "count 0 host pages" },
	{ 0, 0, 9, 1, 0, 0, 0, "length 1, want 2 for 9 host pages" },
	{ 0, 0, 8, 1, 0, 0, PCOPY_MSG_REQ, "got message type 4 (REQ)" },
};

START_TEST(test_bitmap_apply_bad)
{
	struct wire_region tab[3];
	uint8_t pl[600];
	struct wire_hdr h;
	uint32_t nr = 0, i;
	uint64_t np = 0, save_p;
	uint32_t save_r;
	struct bm b;

	mk_tab(tab);
	bm_init(&b, 0);
	memset(pl, 0, sizeof(pl));
	/* pre 1: region 0 pages 0..99; pre 2: + rest of region 0; pre 3: all
	 * but region 2, then region 2 (complete). */
	for (i = 0; i < bm_bad[_i].pre; i++) {
		static const uint32_t r[3] = { 0, 0, 1 }, c[3] = { 100, 3996, 2 };
		static const uint64_t o[3] = { 0, 100, 0 };

		h = bm_hdr(r[i], o[i], c[i]);
		ck_assert_int_ge(wire_bitmap_apply(&h, pl, tab, 3, &nr, &np,
						   b.bits, err, sizeof(err)), 0);
	}
	if (bm_bad[_i].pre == 3) {
		h = bm_hdr(2, 0, 16);
		ck_assert_int_eq(wire_bitmap_apply(&h, pl, tab, 3, &nr, &np,
						   b.bits, err, sizeof(err)), 1);
	}
	h = bm_hdr(bm_bad[_i].region, bm_bad[_i].offset, bm_bad[_i].count);
	h.length = bm_bad[_i].length;
	if (bm_bad[_i].type)
		h.type = bm_bad[_i].type;
	if (h.length)
		pl[h.length - 1] = bm_bad[_i].last;
	save_r = nr;
	save_p = np;
	err[0] = '\0';
	ck_assert_int_eq(wire_bitmap_apply(&h, pl, tab, 3, &nr, &np, b.bits,
					   err, sizeof(err)), -EPROTO);
	ck_assert_err_has(bm_bad[_i].want);
	ck_assert_uint_eq(nr, save_r);
	ck_assert(np == save_p);
	/* Nothing was written for the rejected message. */
	for (i = 0; i < 2; i++)
		ck_assert(b.w1[i] == 0);
}
END_TEST

/*
 * Encode every region of a table with random bits in messages of at most
 * `cap` payload bytes, apply them on the other side, compare. Regions of
 * 1003 (not a multiple of 8), 5, 64, 1 and 70000 host pages.
 */
START_TEST(test_bitmap_roundtrip)
{
	static const size_t caps[] = { 1, 7, 9, 125, 4096 };
	static const uint64_t pages[] = { 1003, 5, 64, 1, 70000 };
	static const uint32_t hp[] = { 4096, HOST_2M, 4096, 1u << 30, 4096 };
	struct wire_region tab[5];
	uint64_t *src[5], *dst[5], nwords[5];
	uint8_t pl[4096];
	size_t cap = caps[_i];
	uint32_t nr = 0, r, nmsg = 0;
	uint64_t np = 0, first, i;
	struct wire_hdr h, d;
	uint8_t raw[PCOPY_WIRE_HDR_SIZE];
	int len, ret = 0;

	memset(tab, 0, sizeof(tab));
	for (r = 0; r < 5; r++) {
		snprintf(tab[r].name, sizeof(tab[r].name), "r%u", r);
		tab[r].host_page = hp[r];
		tab[r].length = pages[r] * hp[r];
		nwords[r] = (pages[r] + 63) / 64 + 1;	/* + guard */
		src[r] = malloc(nwords[r] * 8);
		dst[r] = malloc(nwords[r] * 8);
		for (i = 0; i < nwords[r]; i++) {
			src[r][i] = rng();
			dst[r][i] = rng();
		}
	}
	for (r = 0; r < 5; r++) {
		for (first = 0; first < pages[r]; first += h.count) {
			len = wire_bitmap_encode(r, src[r], pages[r], first, &h,
						 pl, cap);
			ck_assert_int_gt(len, 0);
			ck_assert_uint_le((unsigned)len, cap);
			ck_assert(h.offset == first);
			ck_assert_uint_eq(h.length, (unsigned)len);
			/* Through the real header path: seal, decode, crc. */
			wire_hdr_seal(raw, &h, pl, (size_t)len);
			ck_assert_int_eq(wire_hdr_decode(raw, &d, err,
							 sizeof(err)), 0);
			ck_assert_int_eq(wire_crc_check(raw, &d, pl, err,
							sizeof(err)), 0);
			ck_assert_int_eq(ret, 0);	/* not complete early */
			ret = wire_bitmap_apply(&d, pl, tab, 5, &nr, &np, dst,
						err, sizeof(err));
			ck_assert_msg(ret >= 0, "%s", err);
			nmsg++;
		}
	}
	ck_assert_int_eq(ret, 1);
	for (r = 0; r < 5; r++) {
		for (i = 0; i < pages[r]; i++)
			ck_assert_msg(!!(src[r][i / 64] & (1ull << (i % 64))) ==
				      !!(dst[r][i / 64] & (1ull << (i % 64))),
				      "cap %zu region %u page %llu", cap, r,
				      (unsigned long long)i);
		free(src[r]);
		free(dst[r]);
	}
	if (cap == 4096)
		ck_assert_uint_eq(nmsg, 4 + 3);	/* 70000 bits need 3 */
	if (cap == 1)
		ck_assert_uint_eq(nmsg, 126 + 1 + 8 + 1 + 8750);
}
END_TEST

START_TEST(test_bitmap_encode_limits)
{
	uint64_t bits[2] = { ~0ull, ~0ull };
	struct wire_hdr h;
	uint8_t pl[16], *big;
	uint64_t *many;
	int len;

	ck_assert_int_eq(wire_bitmap_encode(0, bits, 100, 100, &h, pl, 16),
			 -EINVAL);
	ck_assert_int_eq(wire_bitmap_encode(0, bits, 100, 0, &h, pl, 0),
			 -ENOSPC);
	/* 13 pages: 2 bytes, the 3 unused high bits zero. */
	len = wire_bitmap_encode(3, bits, 13, 0, &h, pl, sizeof(pl));
	ck_assert_int_eq(len, 2);
	ck_assert_uint_eq(pl[0], 0xff);
	ck_assert_uint_eq(pl[1], 0x1f);
	ck_assert_uint_eq(h.count, 13);
	ck_assert_uint_eq(h.region, 3);
	ck_assert_uint_eq(h.type, PCOPY_MSG_RECV_BITMAP);
	/* From the middle of a word to the end of the next. */
	bits[0] = 0x8000000000000000ull;
	bits[1] = 0x1;
	len = wire_bitmap_encode(0, bits, 65, 63, &h, pl, sizeof(pl));
	ck_assert_int_eq(len, 1);
	ck_assert_uint_eq(pl[0], 0x03);
	ck_assert_uint_eq(h.count, 2);
	ck_assert(h.offset == 63);

	/* No message exceeds PCOPY_BITMAP_MAX_BITS, whatever cap allows. */
	big = malloc(PCOPY_WIRE_PAYLOAD_MAX + 100);
	many = calloc((PCOPY_BITMAP_MAX_BITS + 1000) / 64 + 1, 8);
	len = wire_bitmap_encode(0, many, PCOPY_BITMAP_MAX_BITS + 1000, 0, &h,
				 big, PCOPY_WIRE_PAYLOAD_MAX + 100);
	ck_assert_int_eq(len, PCOPY_BITMAP_MAX_BITS / 8);
	ck_assert_uint_eq(h.count, PCOPY_BITMAP_MAX_BITS);
	ck_assert_uint_le(h.length, PCOPY_WIRE_PAYLOAD_MAX);
	free(big);
	free(many);
}
END_TEST

/* ------------------------------------------------------------------ */
/* HELLO                                                               */
/* ------------------------------------------------------------------ */

START_TEST(test_hello_roundtrip)
{
	struct wire_hello a, b;
	uint8_t buf[8192];
	int len, i;

	mk_hello(&a, PCOPY_ROLE_SOURCE);
	a.features = 0xf0000001u;	/* unknown bits travel unchanged */
	len = wire_hello_encode(&a, buf, sizeof(buf));
	ck_assert_int_eq(len, 32 + 3 * 16 + 4 + 4 + 3);
	ck_assert_int_eq(wire_hello_decode(buf, (size_t)len, &b, err,
					   sizeof(err)), 0);
	ck_assert_uint_eq(b.version, PCOPY_WIRE_VERSION);
	ck_assert_uint_eq(b.role, PCOPY_ROLE_SOURCE);
	ck_assert_uint_eq(b.conn_kind, PCOPY_CONN_MAIN);
	ck_assert_uint_eq(b.features, 0xf0000001u);
	ck_assert(b.session_id == 0x1122334455667788ull);
	ck_assert_uint_eq(b.target_page, 4096);
	ck_assert_uint_eq(b.nregions, 3);
	for (i = 0; i < 3; i++) {
		ck_assert_str_eq(b.regions[i].name, a.regions[i].name);
		ck_assert(b.regions[i].length == a.regions[i].length);
		ck_assert_uint_eq(b.regions[i].host_page, a.regions[i].host_page);
	}
	ck_assert_int_eq(wire_hello_compare(&a, &b, err, sizeof(err)), 0);

	/* Every truncated buffer is refused by the encoder. */
	for (i = 0; i < len; i++)
		ck_assert_int_eq(wire_hello_encode(&a, buf, (size_t)i), -ENOSPC);

	/* 64 regions with 63-byte names: the largest HELLO. */
	a.nregions = 64;
	for (i = 0; i < 64; i++) {
		memset(a.regions[i].name, 'a' + i % 26, 63);
		a.regions[i].name[63] = '\0';
		a.regions[i].length = 4096 * (uint64_t)(i + 1);
		a.regions[i].host_page = 4096;
	}
	len = wire_hello_encode(&a, buf, sizeof(buf));
	ck_assert_int_eq(len, 32 + 64 * (16 + 63));
	ck_assert_int_eq(wire_hello_decode(buf, (size_t)len, &b, err,
					   sizeof(err)), 0);
	ck_assert_int_eq(wire_hello_compare(&a, &b, err, sizeof(err)), 0);
	a.nregions = 65;
	ck_assert_int_eq(wire_hello_encode(&a, buf, sizeof(buf)), -EINVAL);
}
END_TEST

static void put32le(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}

/* Encoded layout of mk_hello: region 0 at 32 (name "ram0" at 48), region 1
 * at 52 (host_page at 60), region 2 at 72. */
enum {
	H_VERSION, H_ROLE, H_CONN, H_TPAGE, H_NREG0, H_NREG65, H_NREG4,
	H_SHORT4, H_SHORT31, H_TRUNC, H_TRAIL, H_NAMELEN0, H_NAMELEN64,
	H_NAMENUL, H_HP3000, H_HP12K, H_HP2G, H_HP2K, H_LEN0, H_LENODD,
	H_RESERVED, H_NCASES
};

static const char *const hello_want[H_NCASES] = {
	[H_VERSION] = "HELLO: version mismatch: peer speaks 2, we speak 1",
	[H_ROLE] = "HELLO: unknown role 2",
	[H_CONN] = "HELLO: unknown connection kind 3",
	[H_TPAGE] = "HELLO: target page 8192, want 4096",
	[H_NREG0] = "HELLO: 0 regions, want 1..64",
	[H_NREG65] = "HELLO: 65 regions",
	[H_NREG4] = "payload ends inside region 3",
	[H_SHORT4] = "want at least 32",
	[H_SHORT31] = "HELLO: payload 31 bytes, want at least 32",
	[H_TRUNC] = "payload ends inside the name of region 2",
	[H_TRAIL] = "HELLO: 1 trailing bytes",
	[H_NAMELEN0] = "region 0: name length 0, want 1..63",
	[H_NAMELEN64] = "region 0: name length 64",
	[H_NAMENUL] = "region 0: name contains NUL",
	[H_HP3000] = "region 1: host page 3000",
	[H_HP12K] = "region 1: host page 12288",
	[H_HP2G] = "region 1: host page 2147483648",
	[H_HP2K] = "region 1: host page 2048",
	[H_LEN0] = "region 0: length 0 not a non-zero multiple",
	[H_LENODD] = "region 1: length 4198400 not a non-zero multiple of host page 2097152",
	[H_RESERVED] = "region 0: reserved field 0x0001",
};

START_TEST(test_hello_invalid)
{
	struct wire_hello a, b;
	uint8_t buf[8192];
	size_t len;
	int n;

	mk_hello(&a, PCOPY_ROLE_DEST);
	n = wire_hello_encode(&a, buf, sizeof(buf));
	ck_assert_int_gt(n, 0);
	len = (size_t)n;
	switch (_i) {
	case H_VERSION: put32le(buf, 2); break;
	case H_ROLE: put32le(buf + 4, 2); break;
	case H_CONN: put32le(buf + 8, 3); break;
	case H_TPAGE: put32le(buf + 24, 8192); break;
	case H_NREG0: put32le(buf + 28, 0); break;
	case H_NREG65: put32le(buf + 28, 65); break;
	case H_NREG4: put32le(buf + 28, 4); break;
	case H_SHORT4: len = 4; break;
	case H_SHORT31: len = 31; break;
	case H_TRUNC: len -= 1; break;
	case H_TRAIL: buf[len++] = 0; break;
	case H_NAMELEN0: buf[44] = 0; break;
	case H_NAMELEN64: buf[44] = 64; break;
	case H_NAMENUL: buf[49] = 0; break;
	case H_HP3000: put32le(buf + 60, 3000); break;
	case H_HP12K: put32le(buf + 60, 12288); break;
	case H_HP2G: put32le(buf + 60, 1u << 31); break;
	case H_HP2K: put32le(buf + 60, 2048); break;
	case H_LEN0: put32le(buf + 32, 0); break;
	case H_LENODD: put32le(buf + 52, 4 * MiB + 4096); break;
	case H_RESERVED: buf[46] = 1; break;
	}
	err[0] = '\0';
	ck_assert_int_eq(wire_hello_decode(buf, len, &b, err, sizeof(err)),
			 -EPROTO);
	ck_assert_err_has(hello_want[_i]);
}
END_TEST

START_TEST(test_hello_tiny)
{
	struct wire_hello b;
	uint8_t buf[4] = { 1, 0, 0, 0 };

	ck_assert_int_eq(wire_hello_decode(buf, 0, &b, err, sizeof(err)), -EPROTO);
	ck_assert_err_has("too short");
	ck_assert_int_eq(wire_hello_decode(buf, 3, &b, err, sizeof(err)), -EPROTO);
	ck_assert_int_eq(wire_hello_decode(buf, 4, &b, err, sizeof(err)), -EPROTO);
	ck_assert_err_has("want at least 32");
}
END_TEST

START_TEST(test_hello_compare)
{
	struct wire_hello a, b;

	mk_hello(&a, PCOPY_ROLE_SOURCE);
	mk_hello(&b, PCOPY_ROLE_DEST);
	ck_assert_int_eq(wire_hello_compare(&a, &b, err, sizeof(err)), 0);

	b.nregions = 2;
	ck_assert_int_eq(wire_hello_compare(&a, &b, err, sizeof(err)), -EPROTO);
	ck_assert_err_has("region count: 3 here, 2 at the peer");

	mk_hello(&b, PCOPY_ROLE_DEST);
	strcpy(b.regions[1].name, "hug\x01");
	ck_assert_int_eq(wire_hello_compare(&a, &b, err, sizeof(err)), -EPROTO);
	ck_assert_err_has("region 1: name 'huge' here, 'hug?' at the peer");

	mk_hello(&b, PCOPY_ROLE_DEST);
	b.regions[1].length = 2 * MiB;
	ck_assert_int_eq(wire_hello_compare(&a, &b, err, sizeof(err)), -EPROTO);
	ck_assert_err_has("region 1 'huge': length 4194304 here, 2097152 at the peer");

	mk_hello(&b, PCOPY_ROLE_DEST);
	b.regions[2].host_page = 65536;
	ck_assert_int_eq(wire_hello_compare(&a, &b, err, sizeof(err)), -EPROTO);
	ck_assert_err_has("region 2 'rom': host page 4096 here, 65536 at the peer");
}
END_TEST

/* ------------------------------------------------------------------ */
/* REQ                                                                 */
/* ------------------------------------------------------------------ */

START_TEST(test_req_roundtrip)
{
	struct wire_region tab[3];
	struct wire_req in[3] = {
		{ .region = 0, .count = 1, .offset = 16 * MiB - 4096 },
		{ .region = 1, .count = 1024, .offset = 0 },
		{ .region = 2, .count = 16, .offset = 0 },
	}, out[3];
	uint8_t buf[3 * 16];

	mk_tab(tab);
	wire_req_encode(in, 3, buf);
	ck_assert_int_eq(buf[16], 1);	/* entry 1 region, LE */
	ck_assert_int_eq(buf[20], 0x00);
	ck_assert_int_eq(buf[21], 0x04);	/* count 1024 */
	ck_assert_int_eq(wire_req_decode(buf, 3, out, tab, 3, err,
					 sizeof(err)), 0);
	ck_assert(memcmp(in, out, sizeof(in)) == 0);
}
END_TEST

static const struct {
	struct wire_req r;
	const char *want;
} bad_reqs[] = {
	{ { 3, 1, 0 }, "REQ entry 1: region 3 out of range (3 regions)" },
	{ { 0xffffffffu, 1, 0 }, "REQ entry 1: region 4294967295 out of range" },
	{ { 0, 1, 4097 }, "REQ entry 1: offset 0x1001 not aligned to 4096" },
	{ { 0, 0, 4096 }, "REQ entry 1: count 0" },
	{ { 2, 2, 65536 - 4096 }, "REQ entry 1: offset 0xf000 + 2 pages past end of region 2 'rom'" },
	{ { 0, 0xffffffffu, 0xfffffffffffff000ull }, "REQ entry 1: offset 0xfffffffffffff000" },
	{ { 1, 0xffffffffu, 0 }, "past end of region 1 'huge'" },
};

START_TEST(test_req_invalid)
{
	struct wire_region tab[3];
	struct wire_req in[2] = { { 0, 1, 0 }, bad_reqs[_i].r }, out[2];
	uint8_t buf[2 * 16];

	mk_tab(tab);
	wire_req_encode(in, 2, buf);
	err[0] = '\0';
	ck_assert_int_eq(wire_req_decode(buf, 2, out, tab, 3, err, sizeof(err)),
			 -EPROTO);
	ck_assert_err_has(bad_reqs[_i].want);
	ck_assert_int_eq(wire_req_decode(buf, 0, out, tab, 3, err, sizeof(err)),
			 -EPROTO);
}
END_TEST

/* ------------------------------------------------------------------ */
/* ERROR                                                               */
/* ------------------------------------------------------------------ */

START_TEST(test_error_roundtrip)
{
	uint8_t buf[4 + PCOPY_ERROR_TEXT_MAX];
	char text[PCOPY_ERROR_TEXT_MAX + 1];
	size_t len;
	int e = 0;

	len = wire_error_encode(-EACCES, "not allowed", buf, sizeof(buf));
	ck_assert_uint_eq(len, 4 + 11);
	ck_assert_int_eq(buf[0], EACCES);	/* sent positive */
	ck_assert_int_eq(wire_error_decode(buf, len, &e, text, sizeof(text)), 0);
	ck_assert_int_eq(e, EACCES);
	ck_assert_str_eq(text, "not allowed");

	len = wire_error_encode(EPROTO, NULL, buf, sizeof(buf));
	ck_assert_uint_eq(len, 4);
	ck_assert_int_eq(wire_error_decode(buf, len, &e, text, sizeof(text)), 0);
	ck_assert_int_eq(e, EPROTO);
	ck_assert_str_eq(text, "");
	ck_assert_uint_eq(wire_error_encode(1, "x", buf, 3), 0);
	ck_assert_uint_eq(wire_error_encode(1, "xyz", buf, 5), 5);
}
END_TEST

START_TEST(test_error_hostile)
{
	uint8_t buf[4 + PCOPY_ERROR_TEXT_MAX + 16];
	char text[PCOPY_ERROR_TEXT_MAX + 1], small[8];
	static const uint8_t hostile[] = { 'a', 0, '\n', 0x1b, '[', '2', 'J',
					   0xff, 0xc3, 0xa9, 0x7f, 'z' };
	char *big;
	size_t len;
	int e = 0;

	/* No NUL, control characters, non-ASCII: all replaced. */
	put32le(buf, EIO);
	memcpy(buf + 4, hostile, sizeof(hostile));
	ck_assert_int_eq(wire_error_decode(buf, 4 + sizeof(hostile), &e, text,
					   sizeof(text)), 0);
	ck_assert_int_eq(e, EIO);
	ck_assert_str_eq(text, "a???[2J????z");

	/* Truncation to the caller's buffer. */
	ck_assert_int_eq(wire_error_decode(buf, 4 + sizeof(hostile), &e, small,
					   sizeof(small)), 0);
	ck_assert_str_eq(small, "a???[2J");

	/* Overlong text: encoder truncates to 1024, decoder refuses more. */
	big = malloc(5000);
	ck_assert_ptr_nonnull(big);
	memset(big, 'q', 4999);
	big[4999] = '\0';
	len = wire_error_encode(EIO, big, buf, sizeof(buf));
	ck_assert_uint_eq(len, 4 + PCOPY_ERROR_TEXT_MAX);
	ck_assert_int_eq(wire_error_decode(buf, len, &e, text, sizeof(text)), 0);
	ck_assert_uint_eq(strlen(text), PCOPY_ERROR_TEXT_MAX);
	free(big);
	ck_assert_int_eq(wire_error_decode(buf, len + 1, &e, text,
					   sizeof(text)), -EPROTO);
	ck_assert_int_eq(wire_error_decode(buf, 3, &e, text, sizeof(text)),
			 -EPROTO);

	/* Absurd errno values come out as EPROTO, never negative/huge. */
	put32le(buf, 0);
	ck_assert_int_eq(wire_error_decode(buf, 4, &e, text, sizeof(text)), 0);
	ck_assert_int_eq(e, EPROTO);
	put32le(buf, 0xffffffffu);
	ck_assert_int_eq(wire_error_decode(buf, 4, &e, text, sizeof(text)), 0);
	ck_assert_int_eq(e, EPROTO);
	put32le(buf, 0x80000000u);
	ck_assert_int_eq(wire_error_decode(buf, 4, &e, text, sizeof(text)), 0);
	ck_assert_int_eq(e, EPROTO);
	len = wire_error_encode(INT_MIN, "x", buf, sizeof(buf));
	ck_assert_int_eq(wire_error_decode(buf, len, &e, text, sizeof(text)), 0);
	ck_assert_int_eq(e, EPROTO);
}
END_TEST

/* ------------------------------------------------------------------ */
/* codecs                                                              */
/* ------------------------------------------------------------------ */

static void fill_pattern(uint8_t *p, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		p[i] = (uint8_t)((i / 64) ^ (i % 7));
}

static void fill_random(uint8_t *p, size_t n, uint32_t seed)
{
	size_t i;

	for (i = 0; i < n; i++) {
		seed = seed * 1103515245u + 12345u;
		p[i] = (uint8_t)(seed >> 16);
	}
}

START_TEST(test_zlib_roundtrip)
{
	struct codec_zlib *c, *d;
	uint8_t *src = malloc(8 * 4096), *z = malloc(8 * 4096),
		*out = malloc(8 * 4096);
	long n;
	int round;

	ck_assert_int_eq(codec_zlib_new(&c, true, 1), 0);
	ck_assert_int_eq(codec_zlib_new(&d, false, 0), 0);
	/* Reuse both contexts: reset must make every round independent. */
	for (round = 0; round < 3; round++) {
		fill_pattern(src, 8 * 4096);
		src[round] ^= 0x55;
		n = codec_zlib_compress(c, src, 8 * 4096, z, 8 * 4096);
		ck_assert_int_gt(n, 0);
		ck_assert_int_lt(n, 8 * 4096);
		memset(out, 0xee, 8 * 4096);
		ck_assert_int_eq(codec_zlib_decompress(d, z, (size_t)n, out,
						       8 * 4096, err, sizeof(err)), 0);
		ck_assert(memcmp(src, out, 8 * 4096) == 0);
	}
	/* Incompressible: not shorter, so 0 (send RAW). */
	fill_random(src, 4096, 42);
	ck_assert_int_eq(codec_zlib_compress(c, src, 4096, z, 8 * 4096), 0);
	/* Compressor still usable afterwards. */
	memset(src, 0, 4096);
	n = codec_zlib_compress(c, src, 4096, z, 8 * 4096);
	ck_assert_int_gt(n, 0);
	ck_assert_int_eq(codec_zlib_decompress(d, z, (size_t)n, out, 4096,
					       err, sizeof(err)), 0);
	ck_assert(codec_is_zero(out, 4096));

	codec_zlib_free(c);
	ck_assert_int_eq(codec_zlib_new(&c, true, 10), -EINVAL);
	ck_assert_ptr_null(c);
	codec_zlib_free(NULL);
	codec_zlib_free(d);
	ck_assert_int_eq(codec_zlib_new(&c, true, Z_DEFAULT_COMPRESSION), 0);
	codec_zlib_free(c);
	free(src);
	free(z);
	free(out);
}
END_TEST

/* A compressed 4096-byte pattern page in z (returns length). */
static size_t compressed_page(uint8_t *z, size_t cap)
{
	struct codec_zlib *c;
	uint8_t src[4096];
	long n;

	fill_pattern(src, sizeof(src));
	ck_assert_int_eq(codec_zlib_new(&c, true, 6), 0);
	n = codec_zlib_compress(c, src, sizeof(src), z, cap);
	codec_zlib_free(c);
	ck_assert_int_gt(n, 8);
	return (size_t)n;
}

START_TEST(test_zlib_corrupt)
{
	struct codec_zlib *d;
	uint8_t z[8192], zz[8192], ref[4096];
	uint8_t *out = malloc(4096);	/* exact size: ASan/valgrind catch overruns */
	size_t n = compressed_page(z, sizeof(z)), i;
	int bad = 0;

	ck_assert_int_eq(codec_zlib_new(&d, false, 0), 0);
	ck_assert_int_eq(codec_zlib_decompress(d, z, n, out, 4096, err,
					       sizeof(err)), 0);

	/* Bad header byte. */
	memcpy(zz, z, n);
	zz[0] ^= 0xff;
	ck_assert_int_eq(codec_zlib_decompress(d, zz, n, out, 4096, err,
					       sizeof(err)), -EPROTO);
	ck_assert_err_has("corrupt");
	/* Bad adler32 trailer. */
	memcpy(zz, z, n);
	zz[n - 1] ^= 0x01;
	ck_assert_int_eq(codec_zlib_decompress(d, zz, n, out, 4096, err,
					       sizeof(err)), -EPROTO);
	ck_assert_err_has("corrupt");
	/*
	 * Every single-byte corruption is refused or, when it only hits the
	 * padding bits after the final deflate block, harmless: the output is
	 * then exactly the original page (adler32 guarantees it).
	 */
	fill_pattern(ref, sizeof(ref));
	for (i = 0; i < n; i++) {
		memcpy(zz, z, n);
		zz[i] ^= 0x20;
		memset(out, 0, 4096);
		if (codec_zlib_decompress(d, zz, n, out, 4096, err,
					  sizeof(err)) == -EPROTO)
			bad++;
		else
			ck_assert_msg(memcmp(out, ref, 4096) == 0,
				      "flip at %zu accepted with wrong data", i);
	}
	ck_assert_int_ge(bad, (int)n - 2);
	/* Random garbage. */
	fill_random(zz, 500, 7);
	ck_assert_int_eq(codec_zlib_decompress(d, zz, 500, out, 4096, err,
					       sizeof(err)), -EPROTO);
	/* The context still works after all those failures. */
	ck_assert_int_eq(codec_zlib_decompress(d, z, n, out, 4096, err,
					       sizeof(err)), 0);
	codec_zlib_free(d);
	free(out);
}
END_TEST

START_TEST(test_zlib_truncated)
{
	struct codec_zlib *d;
	uint8_t z[8192];
	uint8_t *out = malloc(4096);
	size_t n = compressed_page(z, sizeof(z)), cut;

	ck_assert_int_eq(codec_zlib_new(&d, false, 0), 0);
	for (cut = 0; cut < n; cut++) {
		err[0] = '\0';
		ck_assert_int_eq(codec_zlib_decompress(d, z, cut, out, 4096,
						       err, sizeof(err)), -EPROTO);
	}
	ck_assert_err_has("truncated");
	codec_zlib_free(d);
	free(out);
}
END_TEST

START_TEST(test_zlib_bomb)
{
	struct codec_zlib *c, *d;
	uint8_t *zeros = calloc(1, MiB), *z = malloc(MiB);
	uint8_t *out = malloc(4096), *out2 = malloc(8192);
	long n;

	ck_assert_int_eq(codec_zlib_new(&c, true, 9), 0);
	ck_assert_int_eq(codec_zlib_new(&d, false, 0), 0);
	n = codec_zlib_compress(c, zeros, MiB, z, MiB);
	ck_assert_int_gt(n, 0);
	ck_assert_int_lt(n, 4096);
	/* 1 MiB of zeros into a 4096-byte buffer: refused, no overrun. */
	ck_assert_int_eq(codec_zlib_decompress(d, z, (size_t)n, out, 4096, err,
					       sizeof(err)), -EPROTO);
	ck_assert_err_has("longer than 4096");

	/* One byte too many is also too long. */
	n = codec_zlib_compress(c, zeros, 4097, z, MiB);
	ck_assert_int_gt(n, 0);
	ck_assert_int_eq(codec_zlib_decompress(d, z, (size_t)n, out, 4096, err,
					       sizeof(err)), -EPROTO);
	ck_assert_err_has("longer than 4096");

	/* Too short: 4096 bytes where 8192 are wanted. */
	n = codec_zlib_compress(c, zeros, 4096, z, MiB);
	ck_assert_int_gt(n, 0);
	ck_assert_int_eq(codec_zlib_decompress(d, z, (size_t)n, out2, 8192, err,
					       sizeof(err)), -EPROTO);
	ck_assert_err_has("output 4096 bytes, want 8192");
	ck_assert_int_eq(codec_zlib_decompress(d, z, (size_t)n, out, 4096, err,
					       sizeof(err)), 0);
	codec_zlib_free(c);
	codec_zlib_free(d);
	free(zeros);
	free(z);
	free(out);
	free(out2);
}
END_TEST

START_TEST(test_zlib_trailing)
{
	struct codec_zlib *d;
	uint8_t z[8192];
	uint8_t *out = malloc(4096);
	size_t n = compressed_page(z, sizeof(z));

	ck_assert_int_eq(codec_zlib_new(&d, false, 0), 0);
	z[n] = 0;
	ck_assert_int_eq(codec_zlib_decompress(d, z, n + 1, out, 4096, err,
					       sizeof(err)), -EPROTO);
	ck_assert_err_has("1 trailing bytes");
	/* A second complete stream appended is trailing garbage too. */
	memcpy(z + n, z, n);
	ck_assert_int_eq(codec_zlib_decompress(d, z, 2 * n, out, 4096, err,
					       sizeof(err)), -EPROTO);
	ck_assert_err_has("trailing");
	codec_zlib_free(d);
	free(out);
}
END_TEST

START_TEST(test_is_zero)
{
	uint8_t *p = calloc(1, 8192 + 8);
	size_t i;

	ck_assert(codec_is_zero(p, 4096));
	ck_assert(codec_is_zero(p, 0));
	ck_assert(codec_is_zero(p + 1, 4096));	/* unaligned */
	for (i = 0; i < 4096; i++) {
		p[i] = 0x80;
		ck_assert_msg(!codec_is_zero(p, 4096), "byte %zu missed", i);
		p[i] = 0;
	}
	p[4096] = 1;	/* just past the end: must not be looked at */
	ck_assert(codec_is_zero(p, 4096));
	ck_assert(!codec_is_zero(p, 4104));
	ck_assert(codec_is_zero(p + 4097, 4096));
	p[4] = 1;
	ck_assert(!codec_is_zero(p, 8));
	ck_assert(codec_is_zero(p + 8, 8));
	free(p);
}
END_TEST

/* ------------------------------------------------------------------ */
/* log, errslot, version                                               */
/* ------------------------------------------------------------------ */

struct log_rec {
	int calls;
	enum pcopy_log_level last_lvl;
	char last[256];
};

static void rec_log(void *opaque, enum pcopy_log_level lvl, const char *msg)
{
	struct log_rec *r = opaque;

	r->calls++;
	r->last_lvl = lvl;
	snprintf(r->last, sizeof(r->last), "%s", msg);
}

START_TEST(test_log_errslot)
{
	struct log_rec rec = { 0 };
	struct pcopy_logger lg = { rec_log, &rec }, none = { NULL, NULL };
	struct pcopy_errslot e;
	uint64_t t0, t1;

	pcopy_log(&lg, PCOPY_LOG_INFO, "hello %d\n", 42);
	ck_assert_int_eq(rec.calls, 1);
	ck_assert_str_eq(rec.last, "hello 42");
	ck_assert_int_eq(rec.last_lvl, PCOPY_LOG_INFO);
	pcopy_log(&none, PCOPY_LOG_INFO, "dropped");
	pcopy_log(NULL, PCOPY_LOG_INFO, "dropped");

	pcopy_errslot_init(&e);
	ck_assert_int_eq(pcopy_errslot_get(&e), 0);
	ck_assert_str_eq(e.msg, "");
	ck_assert_int_eq(pcopy_errslot_set(&e, &lg, -EPROTO, "first %s", "bad"),
			 -EPROTO);
	ck_assert_int_eq(rec.last_lvl, PCOPY_LOG_ERROR);
	ck_assert_str_eq(rec.last, "first bad");
	ck_assert_int_eq(pcopy_errslot_set(&e, &lg, -EPIPE, "second"), -EPROTO);
	ck_assert_int_eq(rec.calls, 3);	/* later errors still logged */
	ck_assert_str_eq(rec.last, "second");
	ck_assert_int_eq(pcopy_errslot_get(&e), -EPROTO);
	ck_assert_str_eq(e.msg, "first bad");
	pcopy_errslot_destroy(&e);

	pcopy_errslot_init(&e);
	ck_assert_int_eq(pcopy_errslot_set(&e, NULL, 0, "bogus"), -EIO);
	pcopy_errslot_destroy(&e);

	t0 = pcopy_now_ns();
	usleep(2000);
	t1 = pcopy_now_ns();
	ck_assert(t1 - t0 >= 2000000ull);
}
END_TEST

START_TEST(test_version_strerror)
{
	ck_assert_str_eq(pcopy_version(), PCOPY_VERSION_STRING);
	ck_assert_str_eq(pcopy_strerror(-EPROTO),
			 "protocol error: invalid message from peer");
	ck_assert_str_eq(pcopy_strerror(EPROTO), pcopy_strerror(-EPROTO));
	ck_assert_str_eq(pcopy_strerror(-EBADMSG),
			 "integrity check failed (crc mismatch)");
	ck_assert_str_eq(pcopy_strerror(-ENOENT), "No such file or directory");
	ck_assert_ptr_nonnull(pcopy_strerror(0));
	ck_assert_ptr_nonnull(pcopy_strerror(INT_MIN));
	ck_assert_ptr_nonnull(pcopy_strerror(INT_MAX));
	ck_assert_ptr_nonnull(pcopy_strerror(-99999));
	ck_assert_ptr_nonnull(pcopy_strerror(-133));
}
END_TEST

/* ------------------------------------------------------------------ */
/* socket I/O                                                          */
/* ------------------------------------------------------------------ */

static void mk_pair(int sv[2])
{
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
}

struct big_send {
	int fd;
	uint8_t *payload;
	int ret;
};

static void *big_sender(void *arg)
{
	struct big_send *b = arg;
	struct wire_hdr h = { .type = PCOPY_MSG_PAGE, .kind = PCOPY_KIND_RAW,
			      .region = 1, .count = 512 };

	b->ret = conn_send_msg(b->fd, &h, b->payload, HOST_2M);
	return NULL;
}

START_TEST(test_conn_big_message)
{
	struct big_send b;
	struct wire_hdr h;
	struct wire_region tab[3];
	uint8_t *buf = malloc(PCOPY_WIRE_PAYLOAD_MAX);
	pthread_t t;
	int sv[2];

	mk_pair(sv);
	mk_tab(tab);
	b.fd = sv[0];
	b.payload = malloc(HOST_2M);
	fill_pattern(b.payload, HOST_2M);
	/* 2 MiB cannot fit in the socket buffer: partial writes happen. */
	pthread_create(&t, NULL, big_sender, &b);
	ck_assert_int_eq(conn_recv_msg(sv[1], &h, buf, PCOPY_WIRE_PAYLOAD_MAX,
				       pcopy_now_ns() + 5000000000ull, -1, err,
				       sizeof(err)), 0);
	pthread_join(t, NULL);
	ck_assert_int_eq(b.ret, 0);
	ck_assert_uint_eq(h.length, HOST_2M);
	ck_assert_int_eq(wire_page_validate(&h, tab, 3, 0, err, sizeof(err)), 0);
	ck_assert(memcmp(buf, b.payload, HOST_2M) == 0);
	ck_assert_int_eq(conn_send_msg(sv[0], &h, b.payload,
				       PCOPY_WIRE_PAYLOAD_MAX + 1), -EMSGSIZE);
	free(b.payload);
	free(buf);
	close(sv[0]);
	close(sv[1]);
}
END_TEST

START_TEST(test_conn_recv_errors)
{
	struct wire_hdr h = { .type = PCOPY_MSG_ERROR };
	uint8_t raw[PCOPY_WIRE_HDR_SIZE], buf[64], payload[20] = "abc";
	int sv[2], efd[2];
	uint64_t t0;

	mk_pair(sv);
	/* Payload larger than the caller's buffer. */
	ck_assert_int_eq(conn_send_msg(sv[0], &h, payload, 20), 0);
	ck_assert_int_eq(conn_recv_msg(sv[1], &h, buf, 10, 0, -1, err,
				       sizeof(err)), -EPROTO);
	ck_assert_err_has("exceeds buffer");
	close(sv[0]);
	close(sv[1]);

	/* Corrupted payload in flight: -EBADMSG. */
	mk_pair(sv);
	h.type = PCOPY_MSG_ERROR;
	h.length = 20;
	h.magic = PCOPY_WIRE_MAGIC;
	wire_hdr_seal(raw, &h, payload, 20);
	payload[5] ^= 1;
	ck_assert_int_eq(write(sv[0], raw, sizeof(raw)), (ssize_t)sizeof(raw));
	ck_assert_int_eq(write(sv[0], payload, 20), 20);
	ck_assert_int_eq(conn_recv_msg(sv[1], &h, buf, sizeof(buf), 0, -1, err,
				       sizeof(err)), -EBADMSG);
	ck_assert_err_has("crc mismatch");

	/* Header only, then EOF: reset while reading the payload. */
	ck_assert_int_eq(write(sv[0], raw, sizeof(raw)), (ssize_t)sizeof(raw));
	shutdown(sv[0], SHUT_WR);
	ck_assert_int_eq(conn_recv_msg(sv[1], &h, buf, sizeof(buf), 0, -1, err,
				       sizeof(err)), -ECONNRESET);
	ck_assert_err_has("reading 20 payload bytes: connection closed by peer");
	ck_assert_int_eq(conn_read_exact(sv[1], buf, 1, 0, -1), -ECONNRESET);
	close(sv[0]);
	close(sv[1]);

	/* Stop fd aborts a wait, deadline expires a wait. */
	mk_pair(sv);
	ck_assert_int_eq(pipe(efd), 0);
	ck_assert_int_eq(write(efd[1], "x", 1), 1);
	ck_assert_int_eq(conn_read_exact(sv[1], buf, 1, 0, efd[0]), -ECANCELED);
	t0 = pcopy_now_ns();
	ck_assert_int_eq(conn_read_exact(sv[1], buf, 1, t0 + 50000000ull, -1),
			 -ETIMEDOUT);
	ck_assert(pcopy_now_ns() - t0 >= 50000000ull);
	ck_assert(pcopy_now_ns() - t0 < 2000000000ull);
	/* Data present wins over nothing; pipes work too. */
	ck_assert_int_eq(write(sv[0], "hi", 2), 2);
	ck_assert_int_eq(conn_read_exact(sv[1], buf, 2, 0, -1), 0);
	ck_assert(memcmp(buf, "hi", 2) == 0);
	ck_assert_int_eq(conn_read_exact(efd[0], buf, 1, 0, -1), 0);
	ck_assert_int_eq(buf[0], 'x');
	close(efd[0]);
	close(efd[1]);
	close(sv[0]);
	close(sv[1]);
}
END_TEST

/* ------------------------------------------------------------------ */
/* handshake                                                           */
/* ------------------------------------------------------------------ */

struct hs {
	int fd;
	struct wire_hello ours, peer;
	uint32_t features;
	int timeout_ms;
	int v2;				/* conn_handshake2 with p */
	struct conn_hs_params p;
	int ret;
	char err[PCOPY_ERRMSG_MAX];
};

static void *hs_thread(void *arg)
{
	struct hs *s = arg;

	if (s->v2) {
		s->p.timeout_ms = s->timeout_ms;
		s->ret = conn_handshake2(s->fd, &s->ours, &s->peer,
					 &s->features, &s->p, s->err,
					 sizeof(s->err));
	} else {
		s->ret = conn_handshake(s->fd, &s->ours, &s->peer,
					&s->features, s->timeout_ms, s->err,
					sizeof(s->err));
	}
	return NULL;
}

static void hs_init(struct hs *s, int fd, uint32_t role)
{
	memset(s, 0, sizeof(*s));
	s->fd = fd;
	s->timeout_ms = 5000;
	mk_hello(&s->ours, role);
	s->features = 0xdeadbeef;
}

/* Run both handshakes at once, one per thread. */
static void hs_run_pair(struct hs *a, struct hs *b)
{
	pthread_t ta, tb;

	pthread_create(&ta, NULL, hs_thread, a);
	pthread_create(&tb, NULL, hs_thread, b);
	pthread_join(ta, NULL);
	pthread_join(tb, NULL);
}

/* The next message on fd (after the peer's HELLO, if any) must be an ERROR
 * with errno `want_errno` whose text contains `want`. */
static void expect_error_errno(int fd, int want_errno, const char *want)
{
	uint8_t buf[8192];
	char text[PCOPY_ERROR_TEXT_MAX + 1];
	struct wire_hdr h;
	int e;

	ck_assert_int_eq(conn_recv_msg(fd, &h, buf, sizeof(buf),
				       pcopy_now_ns() + 2000000000ull, -1, err,
				       sizeof(err)), 0);
	if (h.type == PCOPY_MSG_HELLO)	/* skip the peer's HELLO */
		ck_assert_int_eq(conn_recv_msg(fd, &h, buf, sizeof(buf),
					       pcopy_now_ns() + 2000000000ull,
					       -1, err, sizeof(err)), 0);
	ck_assert_int_eq(h.type, PCOPY_MSG_ERROR);
	ck_assert_int_eq(wire_error_decode(buf, h.length, &e, text,
					   sizeof(text)), 0);
	ck_assert_int_eq(e, want_errno);
	ck_assert_msg(strstr(text, want), "ERROR text '%s' lacks '%s'", text,
		      want);
}

static void expect_error_msg(int fd, const char *want)
{
	expect_error_errno(fd, EPROTO, want);
}

START_TEST(test_hs_success)
{
	struct hs a, b;
	int sv[2];

	mk_pair(sv);
	hs_init(&a, sv[0], PCOPY_ROLE_SOURCE);
	hs_init(&b, sv[1], PCOPY_ROLE_DEST);
	a.ours.features = PCOPY_FEAT_ZLIB | PCOPY_FEAT_URGENT | (1u << 20);
	b.ours.features = PCOPY_FEAT_ZLIB | PCOPY_FEAT_RESUME;
	hs_run_pair(&a, &b);
	ck_assert_msg(a.ret == 0, "source: %d %s", a.ret, a.err);
	ck_assert_msg(b.ret == 0, "dest: %d %s", b.ret, b.err);
	ck_assert_uint_eq(a.features, PCOPY_FEAT_ZLIB);
	ck_assert_uint_eq(b.features, PCOPY_FEAT_ZLIB);
	ck_assert_uint_eq(a.peer.role, PCOPY_ROLE_DEST);
	ck_assert_uint_eq(b.peer.role, PCOPY_ROLE_SOURCE);
	ck_assert(b.peer.session_id == 0x1122334455667788ull);
	ck_assert_str_eq(b.peer.regions[1].name, "huge");

	/* Nothing in common: features 0, still a session. */
	close(sv[0]);
	close(sv[1]);
	mk_pair(sv);
	hs_init(&a, sv[0], PCOPY_ROLE_SOURCE);
	hs_init(&b, sv[1], PCOPY_ROLE_DEST);
	b.ours.features = 0;
	hs_run_pair(&a, &b);
	ck_assert_int_eq(a.ret, 0);
	ck_assert_int_eq(b.ret, 0);
	ck_assert_uint_eq(a.features, 0);
	ck_assert_uint_eq(b.features, 0);
	close(sv[0]);
	close(sv[1]);
}
END_TEST

START_TEST(test_hs_region_mismatch)
{
	struct hs a, b;
	int sv[2];

	mk_pair(sv);
	hs_init(&a, sv[0], PCOPY_ROLE_SOURCE);
	hs_init(&b, sv[1], PCOPY_ROLE_DEST);
	b.ours.regions[0].length = 8 * MiB;
	hs_run_pair(&a, &b);
	ck_assert_int_eq(a.ret, -EPROTO);
	ck_assert_int_eq(b.ret, -EPROTO);
	ck_assert_msg(strstr(a.err, "region 0 'ram0': length 16777216 here, "
			     "8388608 at the peer"), "source: %s", a.err);
	ck_assert_msg(strstr(b.err, "region 0 'ram0': length 8388608 here, "
			     "16777216 at the peer"), "dest: %s", b.err);
	/* Each side also told the other why. */
	expect_error_msg(sv[0], "length 8388608 here");
	expect_error_msg(sv[1], "length 16777216 here");
	close(sv[0]);
	close(sv[1]);
}
END_TEST

START_TEST(test_hs_same_role)
{
	struct hs a, b;
	int sv[2];

	mk_pair(sv);
	hs_init(&a, sv[0], PCOPY_ROLE_DEST);
	hs_init(&b, sv[1], PCOPY_ROLE_DEST);
	hs_run_pair(&a, &b);
	ck_assert_int_eq(a.ret, -EPROTO);
	ck_assert_int_eq(b.ret, -EPROTO);
	ck_assert_msg(strstr(a.err, "peer is a destination too"), "%s", a.err);
	close(sv[0]);
	close(sv[1]);
}
END_TEST

/* Write a raw HELLO message with a patched field. */
static void send_raw_hello(int fd, uint32_t version, uint32_t conn_kind)
{
	struct wire_hello h;
	struct wire_hdr hd = { .type = PCOPY_MSG_HELLO };
	uint8_t buf[8192];
	int n;

	mk_hello(&h, PCOPY_ROLE_SOURCE);
	h.conn_kind = conn_kind;
	n = wire_hello_encode(&h, buf, sizeof(buf));
	put32le(buf, version);
	ck_assert_int_eq(conn_send_msg(fd, &hd, buf, (size_t)n), 0);
}

START_TEST(test_hs_version_and_kind)
{
	struct hs b;
	int sv[2];

	mk_pair(sv);
	hs_init(&b, sv[1], PCOPY_ROLE_DEST);
	send_raw_hello(sv[0], 2, PCOPY_CONN_MAIN);
	hs_thread(&b);
	ck_assert_int_eq(b.ret, -EPROTO);
	ck_assert_msg(strstr(b.err, "version mismatch: peer speaks 2, we speak 1"),
		      "%s", b.err);
	expect_error_msg(sv[0], "version mismatch");
	close(sv[0]);
	close(sv[1]);

	mk_pair(sv);
	hs_init(&b, sv[1], PCOPY_ROLE_DEST);
	send_raw_hello(sv[0], 1, PCOPY_CONN_URGENT);
	hs_thread(&b);
	ck_assert_int_eq(b.ret, -EPROTO);
	ck_assert_msg(strstr(b.err, "connection kind 1 at the peer, 0 here"),
		      "%s", b.err);
	close(sv[0]);
	close(sv[1]);
}
END_TEST

START_TEST(test_hs_peer_error)
{
	struct hs b;
	int sv[2];

	mk_pair(sv);
	hs_init(&b, sv[1], PCOPY_ROLE_DEST);
	conn_send_error(sv[0], EACCES, "busy: \x01" "already serving");
	hs_thread(&b);
	ck_assert_int_eq(b.ret, -EACCES);
	ck_assert_str_eq(b.err, "peer refused: busy: ?already serving");
	ck_assert_uint_eq(b.features, 0xdeadbeef);	/* untouched */
	close(sv[0]);
	close(sv[1]);
}
END_TEST

START_TEST(test_hs_garbage)
{
	struct hs b;
	struct wire_hdr h = { .type = PCOPY_MSG_END };
	uint8_t junk[64];
	int sv[2];

	/* Not our protocol at all. */
	mk_pair(sv);
	hs_init(&b, sv[1], PCOPY_ROLE_DEST);
	memset(junk, 0xab, sizeof(junk));
	ck_assert_int_eq(write(sv[0], junk, sizeof(junk)), (ssize_t)sizeof(junk));
	hs_thread(&b);
	ck_assert_int_eq(b.ret, -EPROTO);
	ck_assert_msg(strstr(b.err, "bad magic 0xabababab"), "%s", b.err);
	expect_error_msg(sv[0], "bad magic");
	close(sv[0]);
	close(sv[1]);

	/* A valid message, but not HELLO. */
	mk_pair(sv);
	hs_init(&b, sv[1], PCOPY_ROLE_DEST);
	ck_assert_int_eq(conn_send_msg(sv[0], &h, NULL, 0), 0);
	hs_thread(&b);
	ck_assert_int_eq(b.ret, -EPROTO);
	ck_assert_msg(strstr(b.err, "expected HELLO, got message type 3"), "%s",
		      b.err);
	close(sv[0]);
	close(sv[1]);

	/* A HELLO with a bad crc. */
	mk_pair(sv);
	hs_init(&b, sv[1], PCOPY_ROLE_DEST);
	{
		struct wire_hello hl;
		struct wire_hdr hd = { .magic = PCOPY_WIRE_MAGIC,
				       .type = PCOPY_MSG_HELLO };
		uint8_t pl[8192], raw[PCOPY_WIRE_HDR_SIZE];
		int n;

		mk_hello(&hl, PCOPY_ROLE_SOURCE);
		n = wire_hello_encode(&hl, pl, sizeof(pl));
		hd.length = (uint32_t)n;
		wire_hdr_seal(raw, &hd, pl, (size_t)n);
		pl[40] ^= 4;
		ck_assert_int_eq(write(sv[0], raw, sizeof(raw)), (ssize_t)sizeof(raw));
		ck_assert_int_eq(write(sv[0], pl, (size_t)n), n);
	}
	hs_thread(&b);
	ck_assert_int_eq(b.ret, -EBADMSG);
	ck_assert_msg(strstr(b.err, "HELLO: crc mismatch"), "%s", b.err);
	close(sv[0]);
	close(sv[1]);
}
END_TEST

START_TEST(test_hs_peer_closes)
{
	struct hs b;
	struct wire_hdr h = { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_HELLO,
			      .length = 100 };
	uint8_t raw[PCOPY_WIRE_HDR_SIZE];
	int sv[2];

	/* Closed before anything: our HELLO hits a dead socket. */
	mk_pair(sv);
	hs_init(&b, sv[1], PCOPY_ROLE_DEST);
	close(sv[0]);
	hs_thread(&b);
	ck_assert_msg(b.ret == -EPIPE || b.ret == -ECONNRESET, "%d %s", b.ret,
		      b.err);
	close(sv[1]);

	/* Closed after half a HELLO. */
	mk_pair(sv);
	hs_init(&b, sv[1], PCOPY_ROLE_DEST);
	wire_hdr_encode(raw, &h);
	ck_assert_int_eq(write(sv[0], raw, sizeof(raw)), (ssize_t)sizeof(raw));
	shutdown(sv[0], SHUT_WR);
	hs_thread(&b);
	ck_assert_int_eq(b.ret, -ECONNRESET);
	ck_assert_msg(strstr(b.err, "connection closed by peer"), "%s", b.err);
	close(sv[0]);
	close(sv[1]);
}
END_TEST

START_TEST(test_hs_timeout)
{
	struct hs b;
	uint64_t t0, dt;
	int sv[2];

	mk_pair(sv);
	hs_init(&b, sv[1], PCOPY_ROLE_DEST);
	b.timeout_ms = 200;
	t0 = pcopy_now_ns();
	hs_thread(&b);	/* the peer never says anything */
	dt = pcopy_now_ns() - t0;
	ck_assert_int_eq(b.ret, -ETIMEDOUT);
	ck_assert_msg(strstr(b.err, "timed out"), "%s", b.err);
	ck_assert_msg(dt >= 190000000ull && dt < 1500000000ull,
		      "took %llu ns", (unsigned long long)dt);
	close(sv[0]);
	close(sv[1]);
}
END_TEST

/* ---- handshake2: connection kinds, sessions, features, PSK ---- */

#define SID 0x1122334455667788ull	/* mk_hello's source session id */

/* A source and a destination with handshake2 parameters; the destination
 * asks for `kind` in session `sid`, the source expects `expect`. */
static void hs2_init(struct hs *src, struct hs *dst, int sv[2], uint32_t kind,
		     uint64_t sid, uint64_t expect)
{
	mk_pair(sv);
	hs_init(src, sv[0], PCOPY_ROLE_SOURCE);
	hs_init(dst, sv[1], PCOPY_ROLE_DEST);
	src->v2 = dst->v2 = 1;
	src->ours.features = dst->ours.features =
		PCOPY_FEAT_ZLIB | PCOPY_FEAT_URGENT | PCOPY_FEAT_RESUME;
	dst->ours.conn_kind = kind;
	dst->ours.session_id = sid;
	src->p.expect_session = expect;
}

static void hs2_close(int sv[2])
{
	close(sv[0]);
	close(sv[1]);
}

#define ck_hs(s, code, sub) \
	ck_assert_msg((s).ret == (code) && strstr((s).err, (sub)), \
		      "%s: got %d '%s', want %d '%s'", #s, (s).ret, (s).err, \
		      (code), (sub))

/* Loop: URGENT, RESUME. The right session joins; the source learns the kind
 * from peer.conn_kind; the destination sees its session echoed. */
START_TEST(test_hs2_join)
{
	uint32_t kind = _i ? PCOPY_CONN_RESUME : PCOPY_CONN_URGENT;
	struct hs a, b;
	int sv[2];

	hs2_init(&a, &b, sv, kind, SID, SID);
	hs_run_pair(&a, &b);
	ck_assert_msg(a.ret == 0, "source: %d %s", a.ret, a.err);
	ck_assert_msg(b.ret == 0, "dest: %d %s", b.ret, b.err);
	ck_assert_uint_eq(a.peer.conn_kind, kind);
	ck_assert_uint_eq(b.peer.conn_kind, kind);
	ck_assert(b.peer.session_id == SID);
	ck_assert(a.peer.session_id == SID);
	ck_assert_uint_eq(a.features, PCOPY_FEAT_ZLIB | PCOPY_FEAT_URGENT |
			  PCOPY_FEAT_RESUME);
	hs2_close(sv);

	/* A MAIN connection: the source's new session id comes back. */
	hs2_init(&a, &b, sv, PCOPY_CONN_MAIN, 0, SID);
	hs_run_pair(&a, &b);
	ck_assert_int_eq(a.ret, 0);
	ck_assert_int_eq(b.ret, 0);
	ck_assert_uint_eq(a.peer.conn_kind, PCOPY_CONN_MAIN);
	ck_assert(b.peer.session_id == SID);
	hs2_close(sv);
}
END_TEST

/* Loop: URGENT, RESUME with a wrong session, or a source with none. */
START_TEST(test_hs2_unknown_session)
{
	uint32_t kind = _i ? PCOPY_CONN_RESUME : PCOPY_CONN_URGENT;
	struct hs a, b;
	int sv[2];

	hs2_init(&a, &b, sv, kind, SID + 1, SID);
	hs_run_pair(&a, &b);
	ck_hs(a, -EPROTO, "connection for unknown session 0x1122334455667789");
	ck_hs(b, -EPROTO, "peer refused: HELLO: ");
	ck_hs(b, -EPROTO, "unknown session");
	hs2_close(sv);

	hs2_init(&a, &b, sv, kind, SID, 0);	/* no session yet */
	hs_run_pair(&a, &b);
	ck_hs(a, -EPROTO, "unknown session");
	ck_hs(b, -EPROTO, "unknown session");
	hs2_close(sv);

	/* MAIN must not claim a session. */
	hs2_init(&a, &b, sv, PCOPY_CONN_MAIN, SID, SID);
	hs_run_pair(&a, &b);
	ck_hs(a, -EPROTO, "MAIN connection with session id 0x1122334455667788, "
	      "want 0");
	ck_hs(b, -EPROTO, "peer refused");
	hs2_close(sv);
}
END_TEST

/* Loop: (URGENT, RESUME) x (source lacks it, destination lacks it). */
START_TEST(test_hs2_feature_missing)
{
	uint32_t kind = (_i & 1) ? PCOPY_CONN_RESUME : PCOPY_CONN_URGENT;
	uint32_t bit = (_i & 1) ? PCOPY_FEAT_RESUME : PCOPY_FEAT_URGENT;
	const char *kn = (_i & 1) ? "RESUME" : "URGENT";
	char want[128];
	struct hs a, b;
	int sv[2];

	hs2_init(&a, &b, sv, kind, SID, SID);
	if (_i & 2) {
		b.ours.features &= ~bit;
		snprintf(want, sizeof(want), "%s connection without the %s "
			 "feature bit", kn, kn);
	} else {
		a.ours.features &= ~bit;
		snprintf(want, sizeof(want), "%s connection, but this source "
			 "does not offer it", kn);
	}
	hs_run_pair(&a, &b);
	ck_hs(a, -EOPNOTSUPP, want);
	ck_hs(b, -EOPNOTSUPP, "peer refused");
	ck_hs(b, -EOPNOTSUPP, want);
	hs2_close(sv);
}
END_TEST

static const char psk1[] = "correct horse battery staple";
static const char psk2[] = "correct horse battery stapler";

static void set_psk(struct hs *s, const char *k)
{
	s->p.psk = k;
	s->p.psk_len = k ? strlen(k) : 0;
}

/* Loop: MAIN, URGENT, RESUME with the same key on both sides. */
START_TEST(test_hs2_psk_ok)
{
	struct hs a, b;
	int sv[2];

	hs2_init(&a, &b, sv, (uint32_t)_i, _i ? SID : 0, SID);
	set_psk(&a, psk1);
	set_psk(&b, psk1);
	hs_run_pair(&a, &b);
	ck_assert_msg(a.ret == 0, "source: %d %s", a.ret, a.err);
	ck_assert_msg(b.ret == 0, "dest: %d %s", b.ret, b.err);
	/* FEAT_AUTH follows the key, whatever ours.features said. */
	ck_assert(a.features & PCOPY_FEAT_AUTH);
	ck_assert(b.features & PCOPY_FEAT_AUTH);
	ck_assert(!(a.ours.features & PCOPY_FEAT_AUTH));
	hs2_close(sv);
}
END_TEST

/* Wrong key: both sides refuse, each with its own message. */
START_TEST(test_hs2_psk_wrong)
{
	struct hs a, b;
	int sv[2];

	hs2_init(&a, &b, sv, PCOPY_CONN_MAIN, 0, SID);
	set_psk(&a, psk1);
	set_psk(&b, psk2);
	hs_run_pair(&a, &b);
	ck_hs(a, -EACCES, "authentication failed");
	ck_hs(b, -EACCES, "authentication failed");
	ck_hs(a, -EACCES, "does not match");
	hs2_close(sv);

	/* A key of the wrong size is the caller's error. */
	mk_pair(sv);
	hs_init(&b, sv[1], PCOPY_ROLE_DEST);
	b.v2 = 1;
	b.p.psk = psk1;
	b.p.psk_len = 0;
	hs_thread(&b);
	ck_hs(b, -EINVAL, "pre-shared key of 0 bytes");
	hs2_close(sv);
}
END_TEST

/* Loop: key only at the source (0) or only at the destination (1). */
START_TEST(test_hs2_psk_missing)
{
	struct hs a, b, *keyed, *bare;
	int sv[2];

	hs2_init(&a, &b, sv, PCOPY_CONN_MAIN, 0, SID);
	keyed = _i ? &b : &a;
	bare = _i ? &a : &b;
	set_psk(keyed, psk1);
	hs_run_pair(&a, &b);
	ck_hs(*keyed, -EACCES, "peer offers no authentication");
	ck_hs(*bare, -EACCES, "peer requires a pre-shared key");
	hs2_close(sv);
}
END_TEST

/* Read messages from fd (raw, as a fake peer) until EOF or timeout; fail if
 * any is not one of the allowed handshake types. Returns how many. */
static unsigned drain_only_handshake(int fd)
{
	uint8_t buf[8192];
	struct wire_hdr h;
	unsigned n = 0;

	while (conn_recv_msg(fd, &h, buf, sizeof(buf),
			     pcopy_now_ns() + 300000000ull, -1, err,
			     sizeof(err)) == 0) {
		ck_assert_msg(h.type == PCOPY_MSG_HELLO ||
			      h.type == PCOPY_MSG_AUTH ||
			      h.type == PCOPY_MSG_ERROR,
			      "message type %u before authentication", h.type);
		n++;
	}
	return n;
}

/*
 * A fake destination that claims FEAT_AUTH but knows no key: it answers
 * the nonce with a made-up proof (loop 0), with the source's own proof
 * reflected (1), or skips AUTH and sends a REQ (2). The real source
 * refuses each with -EACCES / -EPROTO and sends nothing but HELLO, AUTH and
 * ERROR.
 */
START_TEST(test_hs2_auth_before_data)
{
	struct wire_hello fake;
	struct wire_hdr h = { .type = PCOPY_MSG_HELLO };
	uint8_t buf[8192], nonce[32], junk[32];
	struct hs a;
	pthread_t t;
	int sv[2], n;

	mk_pair(sv);
	hs_init(&a, sv[0], PCOPY_ROLE_SOURCE);
	a.v2 = 1;
	set_psk(&a, psk1);
	pthread_create(&t, NULL, hs_thread, &a);

	mk_hello(&fake, PCOPY_ROLE_DEST);
	fake.features |= PCOPY_FEAT_AUTH;
	n = wire_hello_encode(&fake, buf, sizeof(buf));
	ck_assert_int_eq(conn_send_msg(sv[1], &h, buf, (size_t)n), 0);
	/* The source's HELLO, then its nonce. */
	ck_assert_int_eq(conn_recv_msg(sv[1], &h, buf, sizeof(buf), 0, -1,
				       err, sizeof(err)), 0);
	ck_assert_uint_eq(h.type, PCOPY_MSG_HELLO);
	ck_assert_int_eq(conn_recv_msg(sv[1], &h, buf, sizeof(buf), 0, -1,
				       err, sizeof(err)), 0);
	ck_assert_uint_eq(h.type, PCOPY_MSG_AUTH);
	ck_assert_uint_eq(h.kind, PCOPY_AUTH_NONCE);
	memcpy(nonce, buf, 32);
	if (_i == 2) {
		struct wire_req r = { 0, 1, 0 };

		wire_req_encode(&r, 1, buf);
		h = (struct wire_hdr){ .type = PCOPY_MSG_REQ, .count = 1 };
		ck_assert_int_eq(conn_send_msg(sv[1], &h, buf, 16), 0);
	} else {
		/* Our nonce: fresh unless reflecting. */
		memset(junk, 0x3c, sizeof(junk));
		h = (struct wire_hdr){ .type = PCOPY_MSG_AUTH,
				       .kind = PCOPY_AUTH_NONCE };
		ck_assert_int_eq(conn_send_msg(sv[1], &h, junk, 32), 0);
		/* The source's proof. */
		ck_assert_int_eq(conn_recv_msg(sv[1], &h, buf, sizeof(buf), 0,
					       -1, err, sizeof(err)), 0);
		ck_assert_uint_eq(h.type, PCOPY_MSG_AUTH);
		ck_assert_uint_eq(h.kind, PCOPY_AUTH_PROOF);
		if (_i == 0)
			memset(buf, 0x77, 32);
		h = (struct wire_hdr){ .type = PCOPY_MSG_AUTH,
				       .kind = PCOPY_AUTH_PROOF };
		ck_assert_int_eq(conn_send_msg(sv[1], &h, buf, 32), 0);
	}
	pthread_join(t, NULL);
	if (_i == 2) {
		ck_hs(a, -EPROTO, "expected AUTH nonce, got message type 4");
	} else {
		ck_hs(a, -EACCES, "authentication failed");
		expect_error_errno(sv[1], EACCES, "authentication failed");
	}
	shutdown(sv[0], SHUT_WR);
	drain_only_handshake(sv[1]);
	hs2_close(sv);
}
END_TEST

/* A fake source that skips AUTH and sends a PAGE right after its HELLO:
 * the keyed destination refuses it. */
START_TEST(test_hs2_dest_refuses_early_page)
{
	struct wire_hello fake;
	struct wire_hdr h = { .type = PCOPY_MSG_HELLO };
	uint8_t buf[8192];
	struct hs b;
	pthread_t t;
	int sv[2], n;

	mk_pair(sv);
	hs_init(&b, sv[1], PCOPY_ROLE_DEST);
	b.v2 = 1;
	set_psk(&b, psk1);
	pthread_create(&t, NULL, hs_thread, &b);
	ck_assert_int_eq(conn_recv_msg(sv[0], &h, buf, sizeof(buf), 0, -1,
				       err, sizeof(err)), 0);
	ck_assert_uint_eq(h.type, PCOPY_MSG_HELLO);
	mk_hello(&fake, PCOPY_ROLE_SOURCE);
	fake.features |= PCOPY_FEAT_AUTH;
	n = wire_hello_encode(&fake, buf, sizeof(buf));
	h = (struct wire_hdr){ .type = PCOPY_MSG_HELLO };
	ck_assert_int_eq(conn_send_msg(sv[0], &h, buf, (size_t)n), 0);
	memset(buf, 0x41, 4096);
	h = (struct wire_hdr){ .type = PCOPY_MSG_PAGE, .kind = PCOPY_KIND_RAW,
			       .count = 1 };
	ck_assert_int_eq(conn_send_msg(sv[0], &h, buf, 4096), 0);
	pthread_join(t, NULL);
	ck_hs(b, -EPROTO, "expected AUTH nonce, got message type 2");
	hs2_close(sv);
}
END_TEST

/* Two sources both wait for the destination's HELLO: a timeout that says
 * what it waited for (not a hang). */
START_TEST(test_hs2_two_sources)
{
	struct hs a, b;
	int sv[2];

	mk_pair(sv);
	hs_init(&a, sv[0], PCOPY_ROLE_SOURCE);
	hs_init(&b, sv[1], PCOPY_ROLE_SOURCE);
	a.timeout_ms = b.timeout_ms = 200;
	hs_run_pair(&a, &b);
	ck_hs(a, -ETIMEDOUT, "waiting for HELLO: timed out");
	ck_hs(b, -ETIMEDOUT, "waiting for HELLO: timed out");
	hs2_close(sv);
}
END_TEST

Suite *make_wire_suite(void);

Suite *make_wire_suite(void)
{
	Suite *s = suite_create("wire");
	TCase *tc;

	tc = tcase_create("header");
	tcase_add_test(tc, test_hdr_roundtrip);
	tcase_add_test(tc, test_hdr_known_answer);
	tcase_add_test(tc, test_crc_detects_flips);
	tcase_add_test(tc, test_crc32c_agree);
	tcase_add_loop_test(tc, test_hdr_invalid, 0,
			    sizeof(bad_hdrs) / sizeof(bad_hdrs[0]));
	tcase_add_test(tc, test_hdr_valid_types);
	tcase_add_loop_test(tc, test_page_validate, 0,
			    sizeof(page_cases) / sizeof(page_cases[0]));
	tcase_add_test(tc, test_page_flags_rejected);
	suite_add_tcase(s, tc);

	tc = tcase_create("bitmap");
	tcase_add_test(tc, test_bitmap_apply_ok);
	tcase_add_loop_test(tc, test_bitmap_apply_bad, 0,
			    sizeof(bm_bad) / sizeof(bm_bad[0]));
	tcase_add_loop_test(tc, test_bitmap_roundtrip, 0, 5);
	tcase_add_test(tc, test_bitmap_encode_limits);
	suite_add_tcase(s, tc);

	tc = tcase_create("payloads");
	tcase_add_test(tc, test_hello_roundtrip);
	tcase_add_loop_test(tc, test_hello_invalid, 0, H_NCASES);
	tcase_add_test(tc, test_hello_tiny);
	tcase_add_test(tc, test_hello_compare);
	tcase_add_test(tc, test_req_roundtrip);
	tcase_add_loop_test(tc, test_req_invalid, 0,
			    sizeof(bad_reqs) / sizeof(bad_reqs[0]));
	tcase_add_test(tc, test_error_roundtrip);
	tcase_add_test(tc, test_error_hostile);
	suite_add_tcase(s, tc);

	tc = tcase_create("codec");
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_zlib_roundtrip);
	tcase_add_test(tc, test_zlib_corrupt);
	tcase_add_test(tc, test_zlib_truncated);
	tcase_add_test(tc, test_zlib_bomb);
	tcase_add_test(tc, test_zlib_trailing);
	tcase_add_test(tc, test_is_zero);
	suite_add_tcase(s, tc);

	tc = tcase_create("misc");
	tcase_add_test(tc, test_log_errslot);
	tcase_add_test(tc, test_version_strerror);
	suite_add_tcase(s, tc);

	tc = tcase_create("conn");
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_conn_big_message);
	tcase_add_test(tc, test_conn_recv_errors);
	tcase_add_test(tc, test_hs_success);
	tcase_add_test(tc, test_hs_region_mismatch);
	tcase_add_test(tc, test_hs_same_role);
	tcase_add_test(tc, test_hs_version_and_kind);
	tcase_add_test(tc, test_hs_peer_error);
	tcase_add_test(tc, test_hs_garbage);
	tcase_add_test(tc, test_hs_peer_closes);
	tcase_add_test(tc, test_hs_timeout);
	tcase_add_loop_test(tc, test_hs2_join, 0, 2);
	tcase_add_loop_test(tc, test_hs2_unknown_session, 0, 2);
	tcase_add_loop_test(tc, test_hs2_feature_missing, 0, 4);
	tcase_add_loop_test(tc, test_hs2_psk_ok, 0, 3);
	tcase_add_test(tc, test_hs2_psk_wrong);
	tcase_add_loop_test(tc, test_hs2_psk_missing, 0, 2);
	tcase_add_loop_test(tc, test_hs2_auth_before_data, 0, 3);
	tcase_add_test(tc, test_hs2_dest_refuses_early_page);
	tcase_add_test(tc, test_hs2_two_sources);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(make_wire_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
