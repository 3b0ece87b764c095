/* SPDX-License-Identifier: MIT */
/*
 * SHA-256 (FIPS 180-4 section 6.2) and HMAC-SHA256 (RFC 2104), written from
 * the standards. Byte-oriented and endian-neutral; speed is irrelevant here
 * (a handshake hashes a few hundred bytes), clarity and constant time are not.
 */
#include <string.h>

#include "sha256.h"

/* FIPS 180-4 4.2.2: the first 32 bits of the fractional parts of the cube
 * roots of the first 64 primes. */
static const uint32_t K[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1,
	0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3,
	0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
	0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
	0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
	0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
	0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
	0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
	0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t ror(uint32_t x, unsigned n)
{
	return (x >> n) | (x << (32 - n));
}

/* Process one 64-byte block (FIPS 180-4 6.2.2). */
static void compress(uint32_t h[8], const uint8_t *blk)
{
	uint32_t w[64], a, b, c, d, e, f, g, hh, t1, t2;
	unsigned i;

	for (i = 0; i < 16; i++)
		w[i] = (uint32_t)blk[4 * i] << 24 | (uint32_t)blk[4 * i + 1] << 16 |
		       (uint32_t)blk[4 * i + 2] << 8 | blk[4 * i + 3];
	for (i = 16; i < 64; i++) {
		uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^
			      (w[i - 15] >> 3);
		uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^
			      (w[i - 2] >> 10);

		w[i] = w[i - 16] + s0 + w[i - 7] + s1;
	}
	a = h[0]; b = h[1]; c = h[2]; d = h[3];
	e = h[4]; f = h[5]; g = h[6]; hh = h[7];
	for (i = 0; i < 64; i++) {
		t1 = hh + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) +
		     ((e & f) ^ (~e & g)) + K[i] + w[i];
		t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) +
		     ((a & b) ^ (a & c) ^ (b & c));
		hh = g; g = f; f = e; e = d + t1;
		d = c; c = b; b = a; a = t1 + t2;
	}
	h[0] += a; h[1] += b; h[2] += c; h[3] += d;
	h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
	/* The schedule is derived from the message (a key block in HMAC). */
	explicit_bzero(w, sizeof(w));
}

/* FIPS 180-4 5.3.3: initial hash value. Any thread. */
void pcopy_sha256_init(struct pcopy_sha256 *c)
{
	static const uint32_t iv[8] = {
		0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
		0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
	};

	memcpy(c->h, iv, sizeof(iv));
	c->bytes = 0;
	c->fill = 0;
}

/* Buffer partial blocks, compress whole ones straight from p. Any thread. */
void pcopy_sha256_update(struct pcopy_sha256 *c, const void *p, size_t len)
{
	const uint8_t *in = p;
	size_t take;

	if (len == 0)	/* p may be NULL then */
		return;
	c->bytes += len;
	if (c->fill) {
		take = PCOPY_SHA256_BLOCK - c->fill;
		if (take > len)
			take = len;
		memcpy(c->buf + c->fill, in, take);
		c->fill += take;
		in += take;
		len -= take;
		if (c->fill < PCOPY_SHA256_BLOCK)
			return;
		compress(c->h, c->buf);
		c->fill = 0;
	}
	for (; len >= PCOPY_SHA256_BLOCK; in += PCOPY_SHA256_BLOCK,
	     len -= PCOPY_SHA256_BLOCK)
		compress(c->h, in);
	if (len) {
		memcpy(c->buf, in, len);
		c->fill = len;
	}
}

/* Pad (0x80, zeros, 64-bit big-endian bit length), emit, wipe. Any thread. */
void pcopy_sha256_final(struct pcopy_sha256 *c, uint8_t out[PCOPY_SHA256_SIZE])
{
	uint64_t bits = c->bytes * 8;
	unsigned i;

	c->buf[c->fill++] = 0x80;
	if (c->fill > PCOPY_SHA256_BLOCK - 8) {
		memset(c->buf + c->fill, 0, PCOPY_SHA256_BLOCK - c->fill);
		compress(c->h, c->buf);
		c->fill = 0;
	}
	memset(c->buf + c->fill, 0, PCOPY_SHA256_BLOCK - 8 - c->fill);
	for (i = 0; i < 8; i++)
		c->buf[PCOPY_SHA256_BLOCK - 1 - i] = (uint8_t)(bits >> (8 * i));
	compress(c->h, c->buf);
	for (i = 0; i < 8; i++) {
		out[4 * i] = (uint8_t)(c->h[i] >> 24);
		out[4 * i + 1] = (uint8_t)(c->h[i] >> 16);
		out[4 * i + 2] = (uint8_t)(c->h[i] >> 8);
		out[4 * i + 3] = (uint8_t)c->h[i];
	}
	explicit_bzero(c, sizeof(*c));
}

/* One-shot hash. Any thread. */
void pcopy_sha256(const void *p, size_t len, uint8_t out[PCOPY_SHA256_SIZE])
{
	struct pcopy_sha256 c;

	pcopy_sha256_init(&c);
	pcopy_sha256_update(&c, p, len);
	pcopy_sha256_final(&c, out);
}

/*
 * RFC 2104: K0 = key (hashed first if longer than a block) padded with zeros
 * to a block; inner = H((K0 ^ ipad) || text); mac = H((K0 ^ opad) || inner).
 * Both hashes start here so update only feeds the inner one. Any thread.
 */
void pcopy_hmac_sha256_init(struct pcopy_hmac_sha256 *m, const void *key,
			    size_t keylen)
{
	uint8_t k0[PCOPY_SHA256_BLOCK], pad[PCOPY_SHA256_BLOCK];
	unsigned i;

	memset(k0, 0, sizeof(k0));
	if (keylen > PCOPY_SHA256_BLOCK)
		pcopy_sha256(key, keylen, k0);
	else if (keylen)
		memcpy(k0, key, keylen);

	for (i = 0; i < PCOPY_SHA256_BLOCK; i++)
		pad[i] = k0[i] ^ 0x36;
	pcopy_sha256_init(&m->inner);
	pcopy_sha256_update(&m->inner, pad, sizeof(pad));
	for (i = 0; i < PCOPY_SHA256_BLOCK; i++)
		pad[i] = k0[i] ^ 0x5c;
	pcopy_sha256_init(&m->outer);
	pcopy_sha256_update(&m->outer, pad, sizeof(pad));
	explicit_bzero(k0, sizeof(k0));
	explicit_bzero(pad, sizeof(pad));
}

void pcopy_hmac_sha256_update(struct pcopy_hmac_sha256 *m, const void *p,
			      size_t len)
{
	pcopy_sha256_update(&m->inner, p, len);
}

void pcopy_hmac_sha256_final(struct pcopy_hmac_sha256 *m,
			     uint8_t out[PCOPY_SHA256_SIZE])
{
	uint8_t ih[PCOPY_SHA256_SIZE];

	pcopy_sha256_final(&m->inner, ih);
	pcopy_sha256_update(&m->outer, ih, sizeof(ih));
	pcopy_sha256_final(&m->outer, out);
	explicit_bzero(ih, sizeof(ih));
}
