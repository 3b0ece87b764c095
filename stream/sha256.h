/* SPDX-License-Identifier: MIT */
/*
 * SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104) in plain C (private), so
 * that authentication works on kernels without AF_ALG and inside sandboxes.
 */
#ifndef PCOPY_STREAM_SHA256_H
#define PCOPY_STREAM_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define PCOPY_SHA256_SIZE	32u
#define PCOPY_SHA256_BLOCK	64u

struct pcopy_sha256 {
	uint32_t h[8];			/* chaining state */
	uint64_t bytes;			/* message bytes hashed so far */
	uint8_t buf[PCOPY_SHA256_BLOCK];	/* partial block */
	size_t fill;			/* bytes in buf */
};

/* Start a hash. Any thread; the context is the caller's. */
void pcopy_sha256_init(struct pcopy_sha256 *c);
/* Hash len more bytes (p may be NULL when len is 0). */
void pcopy_sha256_update(struct pcopy_sha256 *c, const void *p, size_t len);
/* Finish into out and wipe the context. */
void pcopy_sha256_final(struct pcopy_sha256 *c, uint8_t out[PCOPY_SHA256_SIZE]);
/* One-shot SHA-256 of len bytes. */
void pcopy_sha256(const void *p, size_t len, uint8_t out[PCOPY_SHA256_SIZE]);

/* HMAC-SHA256 as init / update / final: the inner and outer hash. */
struct pcopy_hmac_sha256 {
	struct pcopy_sha256 inner, outer;
};

/* Start an HMAC under key (any length; longer than a block is hashed). */
void pcopy_hmac_sha256_init(struct pcopy_hmac_sha256 *m, const void *key,
			    size_t keylen);
void pcopy_hmac_sha256_update(struct pcopy_hmac_sha256 *m, const void *p,
			      size_t len);
/* Finish into out and wipe the context (it held key-derived state). */
void pcopy_hmac_sha256_final(struct pcopy_hmac_sha256 *m,
			     uint8_t out[PCOPY_SHA256_SIZE]);

#endif
