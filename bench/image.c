/* SPDX-License-Identifier: MIT */
/*
 * The benchmark image: about 25% zero pages, every other page pseudo-random
 * from its index (incompressible), cheap enough to generate and verify at
 * several GB/s so checking every touched page does not dominate the run.
 */
#include "bench.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return x;
}

static uint64_t page_key(uint64_t pg)
{
	return mix64(pg ^ 0xb3ac4b3ac4ULL);
}

bool img_page_is_zero(uint64_t pg)
{
	return (page_key(pg) & 3) == 0;
}

/* xorshift64* stream seeded from the page key: one multiply per word. */
static inline uint64_t next_word(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545f4914f6cdd1dULL;
}

void img_page_fill(uint64_t pg, void *dst)
{
	uint64_t *w = dst;
	uint64_t s;

	if (img_page_is_zero(pg)) {
		memset(dst, 0, B_PAGE);
		return;
	}
	s = page_key(pg) | 1;
	for (unsigned i = 0; i < B_PAGE / 8; i++)
		w[i] = next_word(&s);
}

bool img_page_ok(uint64_t pg, const void *p)
{
	const uint64_t *w = p;
	uint64_t s, acc = 0;

	if (img_page_is_zero(pg)) {
		for (unsigned i = 0; i < B_PAGE / 8; i++)
			acc |= w[i];
		return acc == 0;
	}
	s = page_key(pg) | 1;
	for (unsigned i = 0; i < B_PAGE / 8; i++)
		acc |= w[i] ^ next_word(&s);
	return acc == 0;
}

void img_fill_from(void *dst, uint64_t first_page, size_t len)
{
	for (size_t off = 0; off < len; off += B_PAGE)
		img_page_fill(first_page + off / B_PAGE, (uint8_t *)dst + off);
}

int img_write_file(const char *dir, size_t len)
{
	char path[256];
	uint8_t *buf;
	const size_t chunk = 1u << 20;
	int fd, rc = 0;

	snprintf(path, sizeof(path), "%s/pcopy-bench-snap-XXXXXX", dir);
	fd = mkstemp(path);
	if (fd < 0)
		return -errno;
	unlink(path);
	buf = aligned_alloc(B_PAGE, chunk);
	if (!buf) {
		close(fd);
		return -ENOMEM;
	}
	if (ftruncate(fd, (off_t)len) < 0)
		rc = -errno;
	for (size_t off = 0; rc == 0 && off < len; off += chunk) {
		size_t n = len - off < chunk ? len - off : chunk;

		img_fill_from(buf, off / B_PAGE, n);
		/* Zero pages stay holes, as in a real sparse snapshot. */
		for (size_t p = 0; rc == 0 && p < n; p += B_PAGE) {
			if (img_page_is_zero((off + p) / B_PAGE))
				continue;
			if (pwrite(fd, buf + p, B_PAGE, (off_t)(off + p)) != B_PAGE)
				rc = -EIO;
		}
	}
	free(buf);
	if (rc < 0) {
		close(fd);
		return rc;
	}
	return fd;
}
