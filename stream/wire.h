/* SPDX-License-Identifier: MIT */
/*
 * The wire format shared by source and destination (private). The normative
 * description is doc/PROTOCOL.md; keep the two in step.
 *
 * Every message, in both directions, is a 32-byte header followed by
 * `length` payload bytes. All integers are little-endian.
 *
 *   off size field
 *    0   4   magic    PCOPY_WIRE_MAGIC ("PCFR")
 *    4   1   type     PCOPY_MSG_*
 *    5   1   kind     PAGE: PCOPY_KIND_*; other types: 0
 *    6   2   flags    must be 0 (reserved; unknown flags are rejected)
 *    8   4   region   PAGE: region index; other types: 0
 *   12   4   count    PAGE: target pages covered; REQ: entries; else 0
 *   16   8   offset   PAGE: byte offset in the region; else 0
 *   24   4   length   payload bytes that follow (<= PCOPY_WIRE_PAYLOAD_MAX)
 *   28   4   crc      CRC-32C (Castagnoli) of the header with crc = 0,
 *                     then the payload (stream/crc32c.h)
 */
#ifndef PCOPY_STREAM_WIRE_H
#define PCOPY_STREAM_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PCOPY_WIRE_MAGIC	0x52464350u	/* bytes "PCFR" */
#define PCOPY_WIRE_VERSION	1u
#define PCOPY_WIRE_HDR_SIZE	32u
#define PCOPY_TARGET_PAGE	4096u		/* unit of offsets and counts */
#define PCOPY_HOST_PAGE_MAX	(1u << 30)	/* largest host page accepted */
/* Largest payload of any message: a 2 MiB raw run plus slack. */
#define PCOPY_WIRE_PAYLOAD_MAX	((2u << 20) + 4096u)
#define PCOPY_REQ_ENTRY_SIZE	16u
#define PCOPY_REQ_MAX_ENTRIES	4096u		/* per REQ message */
#define PCOPY_ERROR_TEXT_MAX	1024u

enum pcopy_msg_type {
	PCOPY_MSG_HELLO       = 1, /* both ways, first message: struct wire_hello */
	PCOPY_MSG_PAGE        = 2, /* src -> dst: pages of one host page */
	PCOPY_MSG_END         = 3, /* src -> dst: every page has been sent */
	PCOPY_MSG_REQ         = 4, /* dst -> src: count entries of wire_req */
	PCOPY_MSG_DONE        = 5, /* dst -> src: every page received; bye */
	PCOPY_MSG_ERROR       = 6, /* both ways: u32 errno, then UTF-8 text */
	PCOPY_MSG_RECV_BITMAP = 7, /* dst -> src on a RESUME connection: see below */
	PCOPY_MSG_PING        = 8, /* both ways, no payload: keepalive */
	PCOPY_MSG_AUTH        = 9, /* both ways after HELLO when PCOPY_FEAT_AUTH:
				      kind PCOPY_AUTH_NONCE then PCOPY_AUTH_PROOF,
				      32-byte payload each */
	PCOPY_MSG_TYPE_MAX    = 9,
};

enum pcopy_auth_kind { PCOPY_AUTH_NONCE = 1, PCOPY_AUTH_PROOF = 2 };

/*
 * RECV_BITMAP: region = region index, offset = index of the first HOST page
 * covered, count = host pages covered (>= 1), payload = ceil(count / 8)
 * bytes, bit i (LSB first within each byte) set = host page offset + i was
 * received. Unused high bits of the last byte must be 0. After a RESUME
 * handshake the destination sends, for every region in order, messages that
 * cover it completely, in increasing offset with no gap or overlap; the source
 * knows the bitmap is complete when the last host page of the last region is
 * covered. The destination then re-sends every pending request as REQ.
 */
#define PCOPY_BITMAP_MAX_BITS	(PCOPY_WIRE_PAYLOAD_MAX / 4096u * 4096u * 8u)

enum pcopy_page_kind {
	PCOPY_KIND_ZERO = 1,	/* no payload; count pages of zeros */
	PCOPY_KIND_RAW  = 2,	/* payload = count * 4096 bytes */
	PCOPY_KIND_ZLIB = 3,	/* payload = zlib stream inflating to exactly
				   count * 4096 bytes; shorter than that */
};

/* Feature bits in wire_hello.features (negotiated: the intersection). */
#define PCOPY_FEAT_ZLIB		(1u << 0)
#define PCOPY_FEAT_URGENT	(1u << 1)	/* second, urgent connection */
#define PCOPY_FEAT_RESUME	(1u << 2)	/* resume after a break */
#define PCOPY_FEAT_AUTH		(1u << 3)	/* PSK challenge-response; a side that has
						   a key refuses a peer without this bit */
#define PCOPY_FEAT_KNOWN	(PCOPY_FEAT_ZLIB | PCOPY_FEAT_URGENT | \
				 PCOPY_FEAT_RESUME | PCOPY_FEAT_AUTH)

enum pcopy_role { PCOPY_ROLE_SOURCE = 0, PCOPY_ROLE_DEST = 1 };

/*
 * Which connection of a session a HELLO opens; the DESTINATION's HELLO decides
 * (the source echoes it). MAIN starts a session (dest session_id 0; the
 * source's HELLO carries the new random session_id). URGENT and RESUME carry
 * the session_id of the session they join and are refused with an ERROR if it
 * does not match. On URGENT the destination sends REQ and the source answers
 * with PAGE frames of the requested host pages only. On RESUME the
 * destination sends RECV_BITMAP, then REQs; the source resends every host
 * page not marked received, requested ones first, then END.
 */
enum pcopy_conn_kind {
	PCOPY_CONN_MAIN   = 0,
	PCOPY_CONN_URGENT = 1,
	PCOPY_CONN_RESUME = 2,
};

struct wire_hdr {
	uint32_t magic;
	uint8_t type;
	uint8_t kind;
	uint16_t flags;
	uint32_t region;
	uint32_t count;
	uint64_t offset;
	uint32_t length;
	uint32_t crc;
};

/* One region in the HELLO region table. */
struct wire_region {
	char name[64];		/* NUL-terminated, <= 63 bytes */
	uint64_t length;	/* bytes, multiple of host_page */
	uint32_t host_page;	/* power of two, 4096 .. PCOPY_HOST_PAGE_MAX */
};

/*
 * HELLO payload, little-endian:
 *   u32 version, u32 role, u32 conn_kind, u32 features, u64 session_id,
 *   u32 target_page (4096), u32 nregions,
 *   then per region: u64 length, u32 host_page, u16 name_len, u16 zero,
 *   name_len bytes of name (no NUL).
 */
struct wire_hello {
	uint32_t version;
	uint32_t role;
	uint32_t conn_kind;
	uint32_t features;
	uint64_t session_id;
	uint32_t target_page;
	uint32_t nregions;
	struct wire_region regions[64];	/* PCOPY_REGIONS_MAX */
};

/* One REQ entry: u32 region, u32 count (target pages), u64 offset (bytes). */
struct wire_req {
	uint32_t region;
	uint32_t count;
	uint64_t offset;
};

/* ---- header ---- */

/* Serialise h into out[32] as is (crc included). */
void wire_hdr_encode(uint8_t out[PCOPY_WIRE_HDR_SIZE], const struct wire_hdr *h);

/*
 * Parse and check what a header can check alone: magic, known type, kind
 * valid for the type, flags == 0, length <= PCOPY_WIRE_PAYLOAD_MAX.
 * Returns 0 or -EPROTO with a message in err.
 */
int wire_hdr_decode(const uint8_t in[PCOPY_WIRE_HDR_SIZE], struct wire_hdr *h,
		    char *err, size_t errlen);

/* CRC-32C of a message: header bytes with the crc field zeroed, then
 * payload. */
uint32_t wire_crc(const uint8_t hdr[PCOPY_WIRE_HDR_SIZE], const void *payload,
		  size_t len);

/* Fill h->crc for this header and payload, then encode into out. */
void wire_hdr_seal(uint8_t out[PCOPY_WIRE_HDR_SIZE], struct wire_hdr *h,
		   const void *payload, size_t len);

/* Returns 0 if the crc in hdr matches, else -EBADMSG with a message. */
int wire_crc_check(const uint8_t hdr[PCOPY_WIRE_HDR_SIZE],
		   const struct wire_hdr *h, const void *payload,
		   char *err, size_t errlen);

/*
 * Check a PAGE header against the negotiated region table: region index,
 * offset aligned to 4096, count >= 1, [offset, offset + count*4096) inside the
 * region without overflow and inside one host page, length exact for ZERO and
 * RAW, 0 < length < count*4096 for ZLIB, and ZLIB only if negotiated.
 * Returns 0 or -EPROTO with a message.
 */
int wire_page_validate(const struct wire_hdr *h, const struct wire_region *tab,
		       unsigned n, uint32_t features, char *err, size_t errlen);

/* ---- HELLO ---- */

/* Encode the HELLO payload into buf; returns bytes written or -ENOSPC. */
int wire_hello_encode(const struct wire_hello *hello, uint8_t *buf, size_t cap);

/*
 * Decode and check a HELLO payload: exact length, version, role, target page
 * 4096, nregions 1..64, name lengths 1..63 without NUL, host page a power of
 * two in range, length a non-zero multiple of host_page. -EPROTO + message.
 */
int wire_hello_decode(const uint8_t *buf, size_t len, struct wire_hello *hello,
		      char *err, size_t errlen);

/*
 * Compare the region tables of two HELLOs (ours first). Returns 0 if they
 * agree, else -EPROTO with a message naming the first difference, e.g.
 * "region 1 'ram1': length 1073741824 here, 536870912 at the peer".
 */
int wire_hello_compare(const struct wire_hello *ours,
		       const struct wire_hello *peer, char *err, size_t errlen);

/* ---- REQ ---- */

/* Encode n entries into buf (n * 16 bytes). */
void wire_req_encode(const struct wire_req *reqs, unsigned n, uint8_t *buf);

/*
 * Decode and validate n entries from buf: region index, offset aligned to
 * 4096, count >= 1, range inside the region without overflow. Returns 0 or
 * -EPROTO with a message naming the entry.
 */
int wire_req_decode(const uint8_t *buf, unsigned n, struct wire_req *out,
		    const struct wire_region *tab, unsigned ntab,
		    char *err, size_t errlen);

/* ---- ERROR ---- */

/* Encode errno + text (truncated to PCOPY_ERROR_TEXT_MAX); returns length. */
size_t wire_error_encode(int errnum, const char *text, uint8_t *buf, size_t cap);

/* Decode an ERROR payload; text is NUL-terminated, non-printables replaced. */
int wire_error_decode(const uint8_t *buf, size_t len, int *errnum,
		      char *text, size_t textlen);

/* ---- RECV_BITMAP ---- */

/*
 * Check a RECV_BITMAP header + payload against the region table and the
 * expected next position (*next_region, *next_page: where the previous message
 * ended; start at 0/0). On success copies the bits into `bits` (the region's
 * received bitmap as u64 words, bit n = host page n), advances the position,
 * and returns 1 when the whole table has been covered, else 0. -EPROTO with a
 * message on any violation (gap, overlap, wrong region order, count past the
 * region, wrong payload length, stray high bits, a message after the bitmap
 * was complete); the position does not move then. `bits` (or one region's
 * entry) may be NULL to validate only.
 */
int wire_bitmap_apply(const struct wire_hdr *h, const uint8_t *payload,
		      const struct wire_region *tab, unsigned n,
		      uint32_t *next_region, uint64_t *next_page,
		      uint64_t *const *bits, char *err, size_t errlen);

/*
 * Encode host pages first .. nbits - 1 of `bits` (region `region`; nbits =
 * host pages in the region), as many as fit in cap payload bytes and
 * PCOPY_BITMAP_MAX_BITS, into h (magic, type, region, count, offset = first,
 * length; crc left for conn_send_msg) + payload. Returns the payload length
 * (h->count host pages), -ENOSPC if cap is 0, -EINVAL if first >= nbits.
 */
int wire_bitmap_encode(uint32_t region, const uint64_t *bits, uint64_t nbits,
		       uint64_t first, struct wire_hdr *h, uint8_t *payload,
		       size_t cap);

/* ---- page codecs (stream/codec.c) ---- */

/* True if the n bytes at p are all zero (n a multiple of 8). */
bool codec_is_zero(const void *p, size_t n);

struct codec_zlib;	/* a deflate or inflate context, reused */

int codec_zlib_new(struct codec_zlib **z, bool compress, int level);
void codec_zlib_free(struct codec_zlib *z);

/*
 * Compress n bytes from src into dst (capacity cap). Returns the compressed
 * length, or 0 if the result would not be shorter than n (send RAW instead),
 * or -errno.
 */
long codec_zlib_compress(struct codec_zlib *z, const void *src, size_t n,
			 void *dst, size_t cap);

/*
 * Inflate src (len bytes) into dst, which must come out at exactly `want`
 * bytes with the zlib stream ending exactly at the end of src. Never writes
 * past dst + want. Returns 0 or -EPROTO with a message (corrupt stream,
 * too short, too long, trailing garbage).
 */
int codec_zlib_decompress(struct codec_zlib *z, const void *src, size_t len,
			  void *dst, size_t want, char *err, size_t errlen);

#endif
