/* SPDX-License-Identifier: MIT */
/*
 * Encoding and validation of the wire format (stream/wire.h, doc/PROTOCOL.md):
 * headers, crc, HELLO, REQ and ERROR payloads. Everything is little-endian and
 * done byte by byte, so the code neither depends on host byte order nor reads
 * unaligned memory. Every check that fails names the field and the values.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "crc32c.h"
#include "postcopy.h"
#include "wire.h"

#define HELLO_FIXED_SIZE	32u	/* version .. nregions */
#define HELLO_REGION_FIXED	16u	/* length, host_page, name_len, zero */
#define HELLO_MAX_SIZE	(HELLO_FIXED_SIZE + \
			 PCOPY_REGIONS_MAX * (HELLO_REGION_FIXED + PCOPY_NAME_MAX))
#define ERROR_MIN_SIZE	4u
#define AUTH_PAYLOAD_SIZE	32u	/* nonce or HMAC-SHA256 proof */

/* Payload bytes of a RECV_BITMAP covering count host pages. */
static uint32_t bitmap_bytes(uint32_t count)
{
	return count / 8u + (count % 8u != 0);
}

/* ---- little-endian helpers ---- */

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static void put64(uint8_t *p, uint64_t v)
{
	put32(p, (uint32_t)v);
	put32(p + 4, (uint32_t)(v >> 32));
}

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | ((uint32_t)p[1] << 8) |
	       ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint64_t get64(const uint8_t *p)
{
	return (uint64_t)get32(p) | ((uint64_t)get32(p + 4) << 32);
}

/* Format a message into err (if any) and return code. */
__attribute__((format(printf, 4, 5)))
static int fail(int code, char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err && errlen) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return code;
}

/* A region name fit for a message: printable ASCII, the rest as '?'. */
static const char *safe_name(const char *in, char out[PCOPY_NAME_MAX + 1])
{
	size_t i;

	for (i = 0; i < PCOPY_NAME_MAX && in[i]; i++)
		out[i] = (in[i] >= 0x20 && in[i] < 0x7f) ? in[i] : '?';
	out[i] = '\0';
	return out;
}

static const char *type_name(unsigned t)
{
	switch (t) {
	case PCOPY_MSG_HELLO: return "HELLO";
	case PCOPY_MSG_PAGE: return "PAGE";
	case PCOPY_MSG_END: return "END";
	case PCOPY_MSG_REQ: return "REQ";
	case PCOPY_MSG_DONE: return "DONE";
	case PCOPY_MSG_ERROR: return "ERROR";
	case PCOPY_MSG_RECV_BITMAP: return "RECV_BITMAP";
	case PCOPY_MSG_PING: return "PING";
	case PCOPY_MSG_AUTH: return "AUTH";
	default: return "unknown";
	}
}

/* ---- header ---- */

/* Serialise h into out[32] as is (crc included). Any thread. */
void wire_hdr_encode(uint8_t out[PCOPY_WIRE_HDR_SIZE], const struct wire_hdr *h)
{
	put32(out + 0, h->magic);
	out[4] = h->type;
	out[5] = h->kind;
	put16(out + 6, h->flags);
	put32(out + 8, h->region);
	put32(out + 12, h->count);
	put64(out + 16, h->offset);
	put32(out + 24, h->length);
	put32(out + 28, h->crc);
}

/*
 * RECV_BITMAP: region and offset (a host page index) are checked against the
 * region table by wire_bitmap_apply; alone, a header can check the kind, the
 * count bounds and that the payload is exactly ceil(count / 8) bytes.
 */
static int hdr_check_bitmap(const struct wire_hdr *h, char *err, size_t errlen)
{
	if (h->kind != 0)
		return fail(-EPROTO, err, errlen, "RECV_BITMAP: kind %u, want 0",
			    h->kind);
	if (h->count == 0 || h->count > PCOPY_BITMAP_MAX_BITS)
		return fail(-EPROTO, err, errlen,
			    "RECV_BITMAP: count %" PRIu32 " host pages, want "
			    "1..%u", h->count, PCOPY_BITMAP_MAX_BITS);
	if (h->length != bitmap_bytes(h->count))
		return fail(-EPROTO, err, errlen,
			    "RECV_BITMAP: length %" PRIu32 ", want %" PRIu32
			    " for %" PRIu32 " host pages", h->length,
			    bitmap_bytes(h->count), h->count);
	return 0;
}

/*
 * Per-type checks of the fields a header carries alone. Fields a type does
 * not use must be 0, so that a later protocol version can give them a meaning
 * without an old peer misreading them.
 */
static int hdr_check_type(const struct wire_hdr *h, char *err, size_t errlen)
{
	const char *tn = type_name(h->type);

	if (h->type == PCOPY_MSG_PAGE) {
		if (h->kind < PCOPY_KIND_ZERO || h->kind > PCOPY_KIND_ZLIB)
			return fail(-EPROTO, err, errlen,
				    "PAGE: unknown kind %u", h->kind);
		return 0;
	}
	if (h->type == PCOPY_MSG_RECV_BITMAP)
		return hdr_check_bitmap(h, err, errlen);
	if (h->type == PCOPY_MSG_AUTH) {
		if (h->kind != PCOPY_AUTH_NONCE && h->kind != PCOPY_AUTH_PROOF)
			return fail(-EPROTO, err, errlen,
				    "AUTH: unknown kind %u, want %u (NONCE) or "
				    "%u (PROOF)", h->kind, PCOPY_AUTH_NONCE,
				    PCOPY_AUTH_PROOF);
	} else if (h->kind != 0) {
		return fail(-EPROTO, err, errlen, "%s: kind %u, want 0",
			    tn, h->kind);
	}
	if (h->region != 0)
		return fail(-EPROTO, err, errlen, "%s: region %" PRIu32 ", want 0",
			    tn, h->region);
	if (h->offset != 0)
		return fail(-EPROTO, err, errlen,
			    "%s: offset 0x%" PRIx64 ", want 0", tn, h->offset);
	if (h->type == PCOPY_MSG_REQ) {
		if (h->count == 0 || h->count > PCOPY_REQ_MAX_ENTRIES)
			return fail(-EPROTO, err, errlen,
				    "REQ: count %" PRIu32 " entries, want 1..%u",
				    h->count, PCOPY_REQ_MAX_ENTRIES);
		if (h->length != h->count * PCOPY_REQ_ENTRY_SIZE)
			return fail(-EPROTO, err, errlen,
				    "REQ: length %" PRIu32 ", want %" PRIu32
				    " for %" PRIu32 " entries", h->length,
				    h->count * PCOPY_REQ_ENTRY_SIZE, h->count);
		return 0;
	}
	if (h->count != 0)
		return fail(-EPROTO, err, errlen, "%s: count %" PRIu32 ", want 0",
			    tn, h->count);
	switch (h->type) {
	case PCOPY_MSG_HELLO:
		if (h->length < HELLO_FIXED_SIZE || h->length > HELLO_MAX_SIZE)
			return fail(-EPROTO, err, errlen,
				    "HELLO: length %" PRIu32 ", want %u..%u",
				    h->length, HELLO_FIXED_SIZE, HELLO_MAX_SIZE);
		break;
	case PCOPY_MSG_AUTH:
		if (h->length != AUTH_PAYLOAD_SIZE)
			return fail(-EPROTO, err, errlen,
				    "AUTH: length %" PRIu32 ", want %u",
				    h->length, AUTH_PAYLOAD_SIZE);
		break;
	case PCOPY_MSG_END:
	case PCOPY_MSG_DONE:
	case PCOPY_MSG_PING:
		if (h->length != 0)
			return fail(-EPROTO, err, errlen,
				    "%s: length %" PRIu32 ", want 0", tn, h->length);
		break;
	case PCOPY_MSG_ERROR:
		if (h->length < ERROR_MIN_SIZE ||
		    h->length > ERROR_MIN_SIZE + PCOPY_ERROR_TEXT_MAX)
			return fail(-EPROTO, err, errlen,
				    "ERROR: length %" PRIu32 ", want %u..%u",
				    h->length, ERROR_MIN_SIZE,
				    ERROR_MIN_SIZE + PCOPY_ERROR_TEXT_MAX);
		break;
	}
	return 0;
}

/*
 * Parse in[32] into h and check magic, type, kind, flags, the fields unused
 * by the type, and the length bounds of the type. Returns 0 or -EPROTO with a
 * message in err. Any thread.
 */
int wire_hdr_decode(const uint8_t in[PCOPY_WIRE_HDR_SIZE], struct wire_hdr *h,
		    char *err, size_t errlen)
{
	h->magic = get32(in + 0);
	h->type = in[4];
	h->kind = in[5];
	h->flags = get16(in + 6);
	h->region = get32(in + 8);
	h->count = get32(in + 12);
	h->offset = get64(in + 16);
	h->length = get32(in + 24);
	h->crc = get32(in + 28);

	if (h->magic != PCOPY_WIRE_MAGIC)
		return fail(-EPROTO, err, errlen,
			    "header: bad magic 0x%08" PRIx32 " (want 0x%08x)",
			    h->magic, PCOPY_WIRE_MAGIC);
	if (h->type < PCOPY_MSG_HELLO || h->type > PCOPY_MSG_TYPE_MAX)
		return fail(-EPROTO, err, errlen,
			    "header: unknown message type %u", h->type);
	if (h->flags != 0)
		return fail(-EPROTO, err, errlen,
			    "%s: unknown flags 0x%04x", type_name(h->type),
			    h->flags);
	if (h->length > PCOPY_WIRE_PAYLOAD_MAX)
		return fail(-EPROTO, err, errlen,
			    "%s: length %" PRIu32 " exceeds maximum %u",
			    type_name(h->type), h->length, PCOPY_WIRE_PAYLOAD_MAX);
	return hdr_check_type(h, err, errlen);
}

/*
 * CRC-32C of the header with its crc field zeroed, then the payload (the
 * SSE4.2 instruction where present: ~0.04 s per GiB instead of zlib crc32's
 * ~0.3 s, on each side). Any thread.
 */
uint32_t wire_crc(const uint8_t hdr[PCOPY_WIRE_HDR_SIZE], const void *payload,
		  size_t len)
{
	uint8_t tmp[PCOPY_WIRE_HDR_SIZE];
	uint32_t c;

	memcpy(tmp, hdr, sizeof(tmp));
	memset(tmp + 28, 0, 4);
	c = pcopy_crc32c(0, tmp, sizeof(tmp));
	return pcopy_crc32c(c, payload, len);
}

/* Fill h->crc for this header and payload, then encode into out. Any thread. */
void wire_hdr_seal(uint8_t out[PCOPY_WIRE_HDR_SIZE], struct wire_hdr *h,
		   const void *payload, size_t len)
{
	h->crc = 0;
	wire_hdr_encode(out, h);
	h->crc = wire_crc(out, payload, len);
	put32(out + 28, h->crc);
}

/* Returns 0 if the crc in hdr matches, else -EBADMSG with a message. */
int wire_crc_check(const uint8_t hdr[PCOPY_WIRE_HDR_SIZE],
		   const struct wire_hdr *h, const void *payload,
		   char *err, size_t errlen)
{
	uint32_t want = wire_crc(hdr, payload, h->length);
	uint32_t got = get32(hdr + 28);

	if (got != want)
		return fail(-EBADMSG, err, errlen,
			    "%s: crc mismatch: frame says 0x%08" PRIx32
			    ", computed 0x%08" PRIx32 " over %" PRIu32
			    " payload bytes", type_name(h->type), got, want,
			    h->length);
	return 0;
}

/*
 * Shared by PAGE and REQ: region index, 4096 alignment, count >= 1, and
 * [offset, offset + count * 4096) inside the region. count * 4096 < 2^44, so
 * the product cannot overflow 64 bits; offset + bytes can, hence the
 * subtraction form.
 */
static int check_range(const char *what, uint32_t region, uint64_t offset,
		       uint32_t count, const struct wire_region *tab,
		       unsigned n, char *err, size_t errlen)
{
	char nm[PCOPY_NAME_MAX + 1];
	uint64_t bytes, rlen;

	if (region >= n)
		return fail(-EPROTO, err, errlen,
			    "%s: region %" PRIu32 " out of range (%u regions)",
			    what, region, n);
	if (offset % PCOPY_TARGET_PAGE)
		return fail(-EPROTO, err, errlen,
			    "%s: offset 0x%" PRIx64 " not aligned to %u",
			    what, offset, PCOPY_TARGET_PAGE);
	if (count == 0)
		return fail(-EPROTO, err, errlen, "%s: count 0 pages", what);
	bytes = (uint64_t)count * PCOPY_TARGET_PAGE;
	rlen = tab[region].length;
	if (offset > rlen || bytes > rlen - offset)
		return fail(-EPROTO, err, errlen,
			    "%s: offset 0x%" PRIx64 " + %" PRIu32 " pages past "
			    "end of region %" PRIu32 " '%s' (length %" PRIu64 ")",
			    what, offset, count, region,
			    safe_name(tab[region].name, nm), rlen);
	return 0;
}

/*
 * Check a PAGE header against the negotiated region table (see wire.h).
 * Returns 0 or -EPROTO with a message. Receiver thread.
 */
int wire_page_validate(const struct wire_hdr *h, const struct wire_region *tab,
		       unsigned n, uint32_t features, char *err, size_t errlen)
{
	uint64_t bytes, hp;
	int ret;

	if (h->type != PCOPY_MSG_PAGE)
		return fail(-EPROTO, err, errlen, "PAGE: message type %u (%s)",
			    h->type, type_name(h->type));
	if (h->kind < PCOPY_KIND_ZERO || h->kind > PCOPY_KIND_ZLIB)
		return fail(-EPROTO, err, errlen, "PAGE: unknown kind %u",
			    h->kind);
	if (h->flags != 0)
		return fail(-EPROTO, err, errlen, "PAGE: unknown flags 0x%04x",
			    h->flags);
	if (h->kind == PCOPY_KIND_ZLIB && !(features & PCOPY_FEAT_ZLIB))
		return fail(-EPROTO, err, errlen,
			    "PAGE: zlib page but zlib was not negotiated");
	ret = check_range("PAGE", h->region, h->offset, h->count, tab, n,
			  err, errlen);
	if (ret)
		return ret;

	bytes = (uint64_t)h->count * PCOPY_TARGET_PAGE;
	hp = tab[h->region].host_page;
	if (hp == 0)	/* tables are validated; never divide by zero anyway */
		return fail(-EPROTO, err, errlen, "PAGE: region %" PRIu32
			    " has host page 0", h->region);
	/* offset + bytes <= region length here, so no overflow. */
	if (h->offset / hp != (h->offset + bytes - 1) / hp)
		return fail(-EPROTO, err, errlen,
			    "PAGE: offset 0x%" PRIx64 " + %" PRIu32 " pages "
			    "crosses host page boundary (host page %" PRIu64 ")",
			    h->offset, h->count, hp);

	switch (h->kind) {
	case PCOPY_KIND_ZERO:
		if (h->length != 0)
			return fail(-EPROTO, err, errlen,
				    "PAGE: zero page with length %" PRIu32
				    ", want 0", h->length);
		break;
	case PCOPY_KIND_RAW:
		if (h->length != bytes)
			return fail(-EPROTO, err, errlen,
				    "PAGE: raw length %" PRIu32 ", want %" PRIu64,
				    h->length, bytes);
		break;
	case PCOPY_KIND_ZLIB:
		if (h->length == 0 || h->length >= bytes)
			return fail(-EPROTO, err, errlen,
				    "PAGE: zlib length %" PRIu32 ", want 1..%"
				    PRIu64 " (below raw size)", h->length,
				    bytes - 1);
		break;
	}
	return 0;
}

/* ---- HELLO ---- */

/*
 * Encode the HELLO payload into buf. Returns bytes written, -ENOSPC if cap is
 * too small, or -EINVAL for a table that cannot be encoded (nregions > 64, a
 * name without NUL in 64 bytes). Any thread.
 */
int wire_hello_encode(const struct wire_hello *hello, uint8_t *buf, size_t cap)
{
	size_t pos = HELLO_FIXED_SIZE;
	uint32_t i;

	if (hello->nregions > PCOPY_REGIONS_MAX)
		return -EINVAL;
	if (cap < HELLO_FIXED_SIZE)
		return -ENOSPC;
	put32(buf + 0, hello->version);
	put32(buf + 4, hello->role);
	put32(buf + 8, hello->conn_kind);
	put32(buf + 12, hello->features);
	put64(buf + 16, hello->session_id);
	put32(buf + 24, hello->target_page);
	put32(buf + 28, hello->nregions);
	for (i = 0; i < hello->nregions; i++) {
		const struct wire_region *r = &hello->regions[i];
		size_t nl = strnlen(r->name, sizeof(r->name));

		if (nl > PCOPY_NAME_MAX)
			return -EINVAL;
		if (cap - pos < HELLO_REGION_FIXED + nl)
			return -ENOSPC;
		put64(buf + pos, r->length);
		put32(buf + pos + 8, r->host_page);
		put16(buf + pos + 12, (uint16_t)nl);
		put16(buf + pos + 14, 0);
		memcpy(buf + pos + 16, r->name, nl);
		pos += HELLO_REGION_FIXED + nl;
	}
	return (int)pos;
}

/*
 * Decode and check a HELLO payload (see wire.h). The version is checked
 * before the length, so that a peer speaking another version gets "version
 * mismatch" rather than a confusing length error. Any thread.
 */
int wire_hello_decode(const uint8_t *buf, size_t len, struct wire_hello *hello,
		      char *err, size_t errlen)
{
	size_t pos = HELLO_FIXED_SIZE;
	uint32_t i;

	memset(hello, 0, sizeof(*hello));
	if (len < 4)
		return fail(-EPROTO, err, errlen,
			    "HELLO: payload %zu bytes, too short", len);
	hello->version = get32(buf);
	if (hello->version != PCOPY_WIRE_VERSION)
		return fail(-EPROTO, err, errlen,
			    "HELLO: version mismatch: peer speaks %" PRIu32
			    ", we speak %u", hello->version, PCOPY_WIRE_VERSION);
	if (len < HELLO_FIXED_SIZE)
		return fail(-EPROTO, err, errlen,
			    "HELLO: payload %zu bytes, want at least %u",
			    len, HELLO_FIXED_SIZE);
	hello->role = get32(buf + 4);
	hello->conn_kind = get32(buf + 8);
	hello->features = get32(buf + 12);
	hello->session_id = get64(buf + 16);
	hello->target_page = get32(buf + 24);
	hello->nregions = get32(buf + 28);

	if (hello->role != PCOPY_ROLE_SOURCE && hello->role != PCOPY_ROLE_DEST)
		return fail(-EPROTO, err, errlen, "HELLO: unknown role %" PRIu32,
			    hello->role);
	if (hello->conn_kind > PCOPY_CONN_RESUME)
		return fail(-EPROTO, err, errlen,
			    "HELLO: unknown connection kind %" PRIu32,
			    hello->conn_kind);
	if (hello->target_page != PCOPY_TARGET_PAGE)
		return fail(-EPROTO, err, errlen,
			    "HELLO: target page %" PRIu32 ", want %u",
			    hello->target_page, PCOPY_TARGET_PAGE);
	if (hello->nregions < 1 || hello->nregions > PCOPY_REGIONS_MAX)
		return fail(-EPROTO, err, errlen,
			    "HELLO: %" PRIu32 " regions, want 1..%u",
			    hello->nregions, PCOPY_REGIONS_MAX);

	for (i = 0; i < hello->nregions; i++) {
		struct wire_region *r = &hello->regions[i];
		uint16_t nl, zero;

		if (len - pos < HELLO_REGION_FIXED)
			return fail(-EPROTO, err, errlen,
				    "HELLO: payload ends inside region %" PRIu32
				    " (%zu bytes)", i, len);
		r->length = get64(buf + pos);
		r->host_page = get32(buf + pos + 8);
		nl = get16(buf + pos + 12);
		zero = get16(buf + pos + 14);
		pos += HELLO_REGION_FIXED;
		if (zero != 0)
			return fail(-EPROTO, err, errlen,
				    "HELLO: region %" PRIu32 ": reserved field "
				    "0x%04x, want 0", i, zero);
		if (nl < 1 || nl > PCOPY_NAME_MAX)
			return fail(-EPROTO, err, errlen,
				    "HELLO: region %" PRIu32 ": name length %u, "
				    "want 1..%u", i, nl, PCOPY_NAME_MAX);
		if (len - pos < nl)
			return fail(-EPROTO, err, errlen,
				    "HELLO: payload ends inside the name of "
				    "region %" PRIu32, i);
		if (memchr(buf + pos, 0, nl))
			return fail(-EPROTO, err, errlen,
				    "HELLO: region %" PRIu32 ": name contains NUL",
				    i);
		memcpy(r->name, buf + pos, nl);
		r->name[nl] = '\0';
		pos += nl;
		if (r->host_page < PCOPY_TARGET_PAGE ||
		    r->host_page > PCOPY_HOST_PAGE_MAX ||
		    (r->host_page & (r->host_page - 1)))
			return fail(-EPROTO, err, errlen,
				    "HELLO: region %" PRIu32 ": host page %" PRIu32
				    ", want a power of two in %u..%u", i,
				    r->host_page, PCOPY_TARGET_PAGE,
				    PCOPY_HOST_PAGE_MAX);
		if (r->length == 0 || r->length % r->host_page)
			return fail(-EPROTO, err, errlen,
				    "HELLO: region %" PRIu32 ": length %" PRIu64
				    " not a non-zero multiple of host page %"
				    PRIu32, i, r->length, r->host_page);
	}
	if (pos != len)
		return fail(-EPROTO, err, errlen,
			    "HELLO: %zu trailing bytes after %" PRIu32 " regions",
			    len - pos, hello->nregions);
	return 0;
}

/*
 * Compare the region tables of two HELLOs (ours first): count, then per
 * region name, length, host page. Returns 0 or -EPROTO naming the first
 * difference. Any thread.
 */
int wire_hello_compare(const struct wire_hello *ours,
		       const struct wire_hello *peer, char *err, size_t errlen)
{
	char a[PCOPY_NAME_MAX + 1], b[PCOPY_NAME_MAX + 1];
	uint32_t i;

	if (ours->nregions != peer->nregions)
		return fail(-EPROTO, err, errlen,
			    "region count: %" PRIu32 " here, %" PRIu32
			    " at the peer", ours->nregions, peer->nregions);
	for (i = 0; i < ours->nregions && i < PCOPY_REGIONS_MAX; i++) {
		const struct wire_region *o = &ours->regions[i];
		const struct wire_region *p = &peer->regions[i];

		if (strncmp(o->name, p->name, sizeof(o->name)) != 0)
			return fail(-EPROTO, err, errlen,
				    "region %" PRIu32 ": name '%s' here, '%s' "
				    "at the peer", i, safe_name(o->name, a),
				    safe_name(p->name, b));
		if (o->length != p->length)
			return fail(-EPROTO, err, errlen,
				    "region %" PRIu32 " '%s': length %" PRIu64
				    " here, %" PRIu64 " at the peer", i,
				    safe_name(o->name, a), o->length, p->length);
		if (o->host_page != p->host_page)
			return fail(-EPROTO, err, errlen,
				    "region %" PRIu32 " '%s': host page %" PRIu32
				    " here, %" PRIu32 " at the peer", i,
				    safe_name(o->name, a), o->host_page,
				    p->host_page);
	}
	return 0;
}

/* ---- REQ ---- */

/* Encode n entries into buf (n * 16 bytes). Fault thread. */
void wire_req_encode(const struct wire_req *reqs, unsigned n, uint8_t *buf)
{
	unsigned i;

	for (i = 0; i < n; i++, buf += PCOPY_REQ_ENTRY_SIZE) {
		put32(buf, reqs[i].region);
		put32(buf + 4, reqs[i].count);
		put64(buf + 8, reqs[i].offset);
	}
}

/*
 * Decode and validate n entries (see wire.h). Returns 0 or -EPROTO with a
 * message naming the entry. Request reader thread.
 */
int wire_req_decode(const uint8_t *buf, unsigned n, struct wire_req *out,
		    const struct wire_region *tab, unsigned ntab,
		    char *err, size_t errlen)
{
	char what[32];
	unsigned i;
	int ret;

	if (n == 0 || n > PCOPY_REQ_MAX_ENTRIES)
		return fail(-EPROTO, err, errlen, "REQ: %u entries, want 1..%u",
			    n, PCOPY_REQ_MAX_ENTRIES);
	for (i = 0; i < n; i++, buf += PCOPY_REQ_ENTRY_SIZE) {
		out[i].region = get32(buf);
		out[i].count = get32(buf + 4);
		out[i].offset = get64(buf + 8);
		snprintf(what, sizeof(what), "REQ entry %u", i);
		ret = check_range(what, out[i].region, out[i].offset,
				  out[i].count, tab, ntab, err, errlen);
		if (ret)
			return ret;
	}
	return 0;
}

/* ---- ERROR ---- */

/* An errno that can travel: 1..4095, else EPROTO. */
static uint32_t sane_errno(int64_t e)
{
	if (e < 0)
		e = -e;
	return (e >= 1 && e <= 4095) ? (uint32_t)e : EPROTO;
}

/*
 * Encode errnum (either sign; sent positive) and text, truncated to
 * PCOPY_ERROR_TEXT_MAX and to cap. Returns the payload length (0 if cap < 4).
 * Any thread.
 */
size_t wire_error_encode(int errnum, const char *text, uint8_t *buf, size_t cap)
{
	size_t tl;

	if (cap < ERROR_MIN_SIZE)
		return 0;
	put32(buf, sane_errno(errnum));
	tl = text ? strnlen(text, PCOPY_ERROR_TEXT_MAX) : 0;
	if (tl > cap - ERROR_MIN_SIZE)
		tl = cap - ERROR_MIN_SIZE;
	if (tl)
		memcpy(buf + ERROR_MIN_SIZE, text, tl);
	return ERROR_MIN_SIZE + tl;
}

/*
 * Decode an ERROR payload. *errnum gets the positive errno (EPROTO if the
 * peer sent 0 or something out of range); text gets the message,
 * NUL-terminated, truncated to textlen - 1, with every byte that is not
 * printable ASCII replaced by '?' (the text ends up in logs). Returns 0 or
 * -EPROTO for a bad length. Any thread.
 */
int wire_error_decode(const uint8_t *buf, size_t len, int *errnum,
		      char *text, size_t textlen)
{
	size_t tl, i;

	if (text && textlen)
		text[0] = '\0';
	if (len < ERROR_MIN_SIZE || len > ERROR_MIN_SIZE + PCOPY_ERROR_TEXT_MAX)
		return -EPROTO;
	*errnum = (int)sane_errno((int64_t)get32(buf));
	if (!text || !textlen)
		return 0;
	tl = len - ERROR_MIN_SIZE;
	if (tl > textlen - 1)
		tl = textlen - 1;
	for (i = 0; i < tl; i++) {
		uint8_t c = buf[ERROR_MIN_SIZE + i];

		text[i] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
	}
	text[tl] = '\0';
	return 0;
}

/* ---- RECV_BITMAP ---- */

/* Host pages of region r of a validated table (length is a non-zero multiple
 * of host_page, host_page a power of two >= 4096). */
static uint64_t region_pages(const struct wire_region *r)
{
	return r->host_page ? r->length / r->host_page : 0;
}

/*
 * Store the k (1..8) low bits of v at bit position pos of the word array w,
 * replacing what was there. The bits may straddle two words.
 */
static void bits_store(uint64_t *w, uint64_t pos, unsigned v, unsigned k)
{
	uint64_t mask = (1ull << k) - 1, val = (uint64_t)v & mask;
	uint64_t *p = &w[pos / 64];
	unsigned s = (unsigned)(pos % 64);

	p[0] = (p[0] & ~(mask << s)) | (val << s);
	if (s + k > 64) {
		unsigned lo = 64 - s;	/* bits that went into p[0] */

		p[1] = (p[1] & ~(mask >> lo)) | (val >> lo);
	}
}

/* The k (1..8) bits at bit position pos of the word array w. */
static unsigned bits_load(const uint64_t *w, uint64_t pos, unsigned k)
{
	const uint64_t *p = &w[pos / 64];
	unsigned s = (unsigned)(pos % 64);
	uint64_t v = p[0] >> s;

	if (s + k > 64)
		v |= p[1] << (64 - s);
	return (unsigned)(v & ((1ull << k) - 1));
}

/*
 * Check one RECV_BITMAP message against the region table and the expected
 * position, then copy its bits into bits[region] (bits or bits[region] may be
 * NULL: validate only). The position moves only on success. Returns 1 when
 * the last host page of the last region is covered, 0 if more must follow, or
 * -EPROTO with a message. Source's connection thread (resume handshake).
 */
int wire_bitmap_apply(const struct wire_hdr *h, const uint8_t *payload,
		      const struct wire_region *tab, unsigned n,
		      uint32_t *next_region, uint64_t *next_page,
		      uint64_t *const *bits, char *err, size_t errlen)
{
	char nm[PCOPY_NAME_MAX + 1];
	uint64_t pages, left, pos;
	uint32_t i, nbytes;
	unsigned tail;
	int ret;

	if (h->type != PCOPY_MSG_RECV_BITMAP)
		return fail(-EPROTO, err, errlen,
			    "RECV_BITMAP: got message type %u (%s)", h->type,
			    type_name(h->type));
	/* Repeat the header checks: callers may come here without decode. */
	if (h->flags != 0)
		return fail(-EPROTO, err, errlen,
			    "RECV_BITMAP: unknown flags 0x%04x", h->flags);
	ret = hdr_check_bitmap(h, err, errlen);
	if (ret)
		return ret;
	if (*next_region >= n)
		return fail(-EPROTO, err, errlen,
			    "RECV_BITMAP: region %" PRIu32 " offset %" PRIu64
			    " after the bitmap was already complete", h->region,
			    h->offset);
	if (h->region != *next_region)
		return fail(-EPROTO, err, errlen,
			    "RECV_BITMAP: region %" PRIu32 ", want region %"
			    PRIu32 " (regions in order, each covered completely)",
			    h->region, *next_region);
	if (h->offset > *next_page)
		return fail(-EPROTO, err, errlen,
			    "RECV_BITMAP: gap: region %" PRIu32 " offset %"
			    PRIu64 ", want host page %" PRIu64, h->region,
			    h->offset, *next_page);
	if (h->offset < *next_page)
		return fail(-EPROTO, err, errlen,
			    "RECV_BITMAP: overlap: region %" PRIu32 " offset %"
			    PRIu64 ", host pages up to %" PRIu64 " already "
			    "covered", h->region, h->offset, *next_page);
	pages = region_pages(&tab[h->region]);
	if (*next_page >= pages)	/* only a caller's bad state gets here */
		return fail(-EPROTO, err, errlen,
			    "RECV_BITMAP: region %" PRIu32 " position %" PRIu64
			    " outside its %" PRIu64 " host pages", h->region,
			    *next_page, pages);
	left = pages - *next_page;
	if (h->count > left)
		return fail(-EPROTO, err, errlen,
			    "RECV_BITMAP: offset %" PRIu64 " + %" PRIu32
			    " host pages past the end of region %" PRIu32
			    " '%s' (%" PRIu64 " host pages)", h->offset,
			    h->count, h->region,
			    safe_name(tab[h->region].name, nm), pages);
	nbytes = bitmap_bytes(h->count);
	tail = h->count % 8u;
	if (tail && (payload[nbytes - 1] >> tail))
		return fail(-EPROTO, err, errlen,
			    "RECV_BITMAP: stray bits in the last byte 0x%02x "
			    "(only its low %u bits are host pages)",
			    payload[nbytes - 1], tail);

	if (bits && bits[h->region]) {
		pos = h->offset;
		for (i = 0; i < nbytes; i++, pos += 8) {
			unsigned k = (i + 1 < nbytes || !tail) ? 8 : tail;

			bits_store(bits[h->region], pos, payload[i], k);
		}
	}
	*next_page += h->count;
	if (*next_page == pages) {
		/* Every region has at least one host page, so a new position
		 * always has next_page < pages. */
		(*next_region)++;
		*next_page = 0;
	}
	return *next_region == n ? 1 : 0;
}

/*
 * Fill h and payload with the bits of host pages first .. of region `region`
 * (nbits host pages in the region), as many as fit in cap bytes and
 * PCOPY_BITMAP_MAX_BITS. Returns the payload length (h->count host pages,
 * h->offset = first), -ENOSPC if cap is 0, -EINVAL if first >= nbits. The
 * caller sends with conn_send_msg (which seals the header). Any thread.
 */
int wire_bitmap_encode(uint32_t region, const uint64_t *bits, uint64_t nbits,
		       uint64_t first, struct wire_hdr *h, uint8_t *payload,
		       size_t cap)
{
	uint64_t count = nbits - first, i, pos;
	uint32_t nbytes;

	if (first >= nbits)
		return -EINVAL;
	if (cap == 0)
		return -ENOSPC;
	if (count > PCOPY_BITMAP_MAX_BITS)
		count = PCOPY_BITMAP_MAX_BITS;
	if (count / 8 > cap || (count / 8 == cap && count % 8))
		count = (uint64_t)cap * 8;	/* cap < 2^61 here */
	nbytes = bitmap_bytes((uint32_t)count);
	for (i = 0, pos = first; i < nbytes; i++, pos += 8) {
		unsigned k = (i + 1 < nbytes || count % 8 == 0) ?
			     8 : (unsigned)(count % 8);

		payload[i] = (uint8_t)bits_load(bits, pos, k);
	}
	memset(h, 0, sizeof(*h));
	h->magic = PCOPY_WIRE_MAGIC;
	h->type = PCOPY_MSG_RECV_BITMAP;
	h->region = region;
	h->count = (uint32_t)count;
	h->offset = first;
	h->length = nbytes;
	return (int)nbytes;
}
