/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer harness for the frame decoding path a receiver runs on a byte
 * stream: wire_hdr_decode, wire_crc_check, wire_page_validate against a fixed
 * region table, then the payload decoders, with zlib inflating into a buffer
 * of exactly the validated size (so ASan sees any write past it); RECV_BITMAP
 * through wire_bitmap_apply into exact-size bitmaps, checked by re-encoding.
 * Input: one mode byte (FUZZ_MODE_*), then the stream. Build: test/fuzz.sh.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Process one validated PAGE: check independently that it lies inside one
 * host page of its region, then decode its payload into a buffer of exactly
 * count pages; anything else the validator let through is a bug. */
static int decode_page(struct codec_zlib *z, const struct wire_hdr *h,
		       const uint8_t *payload, const struct wire_region *tab,
		       uint32_t ntab)
{
	size_t want = (size_t)h->count * PCOPY_TARGET_PAGE;
	uint64_t hp;
	char err[256];
	uint8_t *dst;
	int ret = 0;

	if (h->region >= ntab || h->count == 0 ||
	    h->offset % PCOPY_TARGET_PAGE)
		__builtin_trap();
	hp = tab[h->region].host_page;
	if (h->offset >= tab[h->region].length ||
	    want > tab[h->region].length - h->offset ||
	    h->offset / hp != (h->offset + want - 1) / hp)
		__builtin_trap();
	/* The validator bounds count by one host page (<= 2 MiB here). */
	if (want > (2u << 20))
		__builtin_trap();
	dst = malloc(want);
	if (!dst)
		return -1;
	switch (h->kind) {
	case PCOPY_KIND_ZERO:
		if (h->length != 0)
			__builtin_trap();
		memset(dst, 0, want);
		break;
	case PCOPY_KIND_RAW:
		if (h->length != want)
			__builtin_trap();
		memcpy(dst, payload, want);
		break;
	case PCOPY_KIND_ZLIB:
		err[0] = '\0';
		ret = codec_zlib_decompress(z, payload, h->length, dst, want,
					    err, sizeof(err));
		/* A failure must come with a message. */
		if (ret != 0 && err[0] == '\0')
			__builtin_trap();
		break;
	default:
		__builtin_trap();
	}
	free(dst);
	return ret;
}

/* Received bitmaps of the fuzz table (256, 2 and 4 host pages), each
 * malloc'ed at its exact word count so ASan sees a write past one, and the
 * position of the RECV_BITMAP sequence. */
struct bitmap_state {
	uint64_t *bits[FUZZ_NREGIONS];
	uint64_t pages[FUZZ_NREGIONS];
	uint32_t next_region;
	uint64_t next_page;
};

static int bitmap_init(struct bitmap_state *b, const struct wire_region *tab)
{
	unsigned r;

	memset(b, 0, sizeof(*b));
	for (r = 0; r < FUZZ_NREGIONS; r++) {
		b->pages[r] = tab[r].length / tab[r].host_page;
		b->bits[r] = calloc((b->pages[r] + 63) / 64, 8);
		if (!b->bits[r])
			return -1;
	}
	return 0;
}

static void bitmap_free(struct bitmap_state *b)
{
	unsigned r;

	for (r = 0; r < FUZZ_NREGIONS; r++)
		free(b->bits[r]);
}

/*
 * Apply one RECV_BITMAP. On success the message covered exactly
 * [offset, offset + count) of the expected region, so re-encoding that range
 * from the bitmap must give back the payload byte for byte (stray bits were
 * refused); on failure the position must not have moved. After a complete
 * bitmap start over, so later messages exercise the checks again.
 */
static void bitmap_msg(struct bitmap_state *b, const struct wire_hdr *h,
		       const uint8_t *payload, const struct wire_region *tab)
{
	uint8_t enc[32];	/* 256 host pages: the largest region here */
	uint32_t r0 = b->next_region;
	uint64_t p0 = b->next_page;
	struct wire_hdr e;
	char err[256];
	int ret, len;

	err[0] = '\0';
	ret = wire_bitmap_apply(h, payload, tab, FUZZ_NREGIONS,
				&b->next_region, &b->next_page, b->bits, err,
				sizeof(err));
	if (ret < 0) {
		if (err[0] == '\0' || b->next_region != r0 ||
		    b->next_page != p0)
			__builtin_trap();
		return;
	}
	if (h->region != r0 || h->offset != p0 || h->count == 0 ||
	    h->count > b->pages[r0] - p0 || (h->count + 7) / 8 > sizeof(enc))
		__builtin_trap();
	/* nbits = the end of this message's range: encode exactly it */
	len = wire_bitmap_encode(r0, b->bits[r0], p0 + h->count, p0, &e, enc,
				 sizeof(enc));
	if (len < 0 || (uint32_t)len != h->length || e.count != h->count ||
	    memcmp(enc, payload, (size_t)len) != 0)
		__builtin_trap();
	if (ret == 1) {
		if (b->next_region != FUZZ_NREGIONS)
			__builtin_trap();
		b->next_region = 0;
		b->next_page = 0;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct bitmap_state bm;
	struct wire_region tab[FUZZ_NREGIONS];
	static struct wire_hello hello;		/* large; keep it off the stack */
	static struct wire_req reqs[PCOPY_REQ_MAX_ENTRIES];
	struct codec_zlib *z;
	struct wire_hdr h;
	uint32_t features, ntab;
	bool strict;
	char err[512], text[PCOPY_ERROR_TEXT_MAX + 1];
	int errnum;

	if (size < 1)
		return 0;
	features = (data[0] & FUZZ_MODE_ZLIB) ? PCOPY_FEAT_ZLIB : 0;
	strict = data[0] & FUZZ_MODE_STRICT_CRC;
	data++;
	size--;
	fuzz_table(tab, &ntab);
	if (bitmap_init(&bm, tab)) {
		bitmap_free(&bm);
		return 0;
	}
	if (codec_zlib_new(&z, false, 0)) {
		bitmap_free(&bm);
		return 0;
	}

	while (size >= PCOPY_WIRE_HDR_SIZE) {
		const uint8_t *hdr = data, *payload = data + PCOPY_WIRE_HDR_SIZE;

		err[0] = '\0';
		if (wire_hdr_decode(hdr, &h, err, sizeof(err))) {
			if (err[0] == '\0')
				__builtin_trap();
			break;	/* a receiver drops the connection here */
		}
		if (h.length > PCOPY_WIRE_PAYLOAD_MAX)
			__builtin_trap();
		if (size - PCOPY_WIRE_HDR_SIZE < h.length)
			break;	/* truncated stream */
		if (wire_crc_check(hdr, &h, payload, err, sizeof(err)) && strict)
			break;

		switch (h.type) {
		case PCOPY_MSG_PAGE:
			if (wire_page_validate(&h, tab, ntab, features, err,
					       sizeof(err)) == 0)
				decode_page(z, &h, payload, tab, ntab);
			break;
		case PCOPY_MSG_HELLO:
			if (wire_hello_decode(payload, h.length, &hello, err,
					      sizeof(err)) == 0) {
				struct wire_hello ours = hello;

				ours.nregions = ntab;
				memcpy(ours.regions, tab, sizeof(tab));
				wire_hello_compare(&ours, &hello, err, sizeof(err));
			}
			break;
		case PCOPY_MSG_REQ:
			/* the header check guarantees length == count * 16 */
			if (h.length != (uint64_t)h.count * PCOPY_REQ_ENTRY_SIZE)
				__builtin_trap();
			wire_req_decode(payload, h.count, reqs, tab, ntab, err,
					sizeof(err));
			break;
		case PCOPY_MSG_ERROR:
			wire_error_decode(payload, h.length, &errnum, text,
					  sizeof(text));
			break;
		case PCOPY_MSG_RECV_BITMAP:
			/* the header check guarantees the exact length */
			if (h.count == 0 || h.length != (h.count + 7) / 8)
				__builtin_trap();
			bitmap_msg(&bm, &h, payload, tab);
			break;
		case PCOPY_MSG_PING:
			if (h.length || h.kind || h.region || h.count || h.offset)
				__builtin_trap();
			break;
		case PCOPY_MSG_AUTH:
			if (h.length != 32 || (h.kind != PCOPY_AUTH_NONCE &&
					       h.kind != PCOPY_AUTH_PROOF))
				__builtin_trap();
			break;
		default:
			break;
		}
		data += PCOPY_WIRE_HDR_SIZE + h.length;
		size -= PCOPY_WIRE_HDR_SIZE + h.length;
	}
	codec_zlib_free(z);
	bitmap_free(&bm);
	return 0;
}
