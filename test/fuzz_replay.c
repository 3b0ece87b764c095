/* SPDX-License-Identifier: MIT */
/*
 * The fuzz harnesses (frame, hello, req, handshake) as a regular check suite (program test/check_fuzz), so
 * every `make check` (and the sanitizer build) replays the checked-in corpus
 * and a deterministic mini-fuzz: every prefix of every seed and every single
 * bit flip of the small ones. Also checks that the seeds are still valid
 * streams for the current wire format (regenerate with `test/fuzz.sh gen`).
 */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The three harnesses, each with its entry point renamed. */
#define LLVMFuzzerTestOneInput fuzz_frame_one
#include "fuzz_frame.c"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput fuzz_hello_one
#include "fuzz_hello.c"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput fuzz_req_one
#include "fuzz_req.c"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput fuzz_handshake_one
#include "fuzz_handshake.c"
#undef LLVMFuzzerTestOneInput

#ifndef FUZZ_CORPUS_DIR
#define FUZZ_CORPUS_DIR "test/corpus"
#endif

#define MAX_SEEDS 64
#define FLIP_BYTES 1024	/* bit-flip the first bytes of each seed */
#define PREFIX_ALL 512		/* every prefix up to this length, ... */
#define PREFIX_STEP 61		/* ... then every 61st (big zlib seeds) */

typedef int (*harness_fn)(const uint8_t *data, size_t size);

static const struct {
	const char *dir;
	harness_fn fn;
} harnesses[] = {
	{ "frame", fuzz_frame_one },
	{ "hello", fuzz_hello_one },
	{ "req", fuzz_req_one },
	{ "handshake", fuzz_handshake_one },
};

struct seed {
	char name[256];
	uint8_t *data;
	size_t len;
};

/* Load every file of corpus/<sub>/. */
static unsigned load(const char *sub, struct seed *out)
{
	char path[4096];
	struct dirent *de;
	unsigned n = 0;
	DIR *d;

	snprintf(path, sizeof(path), "%s/%s", FUZZ_CORPUS_DIR, sub);
	d = opendir(path);
	ck_assert_msg(d, "cannot open %s: %s", path, strerror(errno));
	while ((de = readdir(d)) && n < MAX_SEEDS) {
		FILE *f;
		long sz;

		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s/%s", FUZZ_CORPUS_DIR, sub,
			 de->d_name);
		f = fopen(path, "rb");
		ck_assert_msg(f, "cannot open %s", path);
		ck_assert(fseek(f, 0, SEEK_END) == 0);
		sz = ftell(f);
		ck_assert(sz >= 0);
		rewind(f);
		out[n].data = malloc((size_t)sz + 1);
		ck_assert_ptr_nonnull(out[n].data);
		out[n].len = fread(out[n].data, 1, (size_t)sz, f);
		ck_assert_uint_eq(out[n].len, (size_t)sz);
		fclose(f);
		snprintf(out[n].name, sizeof(out[n].name), "%s", de->d_name);
		n++;
	}
	closedir(d);
	return n;
}

static void unload(struct seed *s, unsigned n)
{
	while (n--)
		free(s[n].data);
}

/* Loop index: harness. Each seed whole, then its prefixes (the truncation
 * paths), then every single-bit flip of its first FLIP_BYTES bytes. A
 * violated property traps, which check reports as an error. */
START_TEST(test_replay)
{
	static struct seed seeds[MAX_SEEDS];
	harness_fn fn = harnesses[_i].fn;
	unsigned n = load(harnesses[_i].dir, seeds), i;
	size_t len, bit;

	ck_assert_uint_ge(n, 2);
	for (i = 0; i < n; i++) {
		uint8_t *buf = malloc(seeds[i].len + 1);

		ck_assert_ptr_nonnull(buf);
		fn(seeds[i].data, seeds[i].len);
		/* exact-size copies, so ASan sees any read past the end */
		for (len = 0; len < seeds[i].len;
		     len += len < PREFIX_ALL ? 1 : PREFIX_STEP) {
			uint8_t *p = malloc(len ? len : 1);

			memcpy(p, seeds[i].data, len);
			fn(p, len);
			free(p);
		}
		memcpy(buf, seeds[i].data, seeds[i].len);
		for (bit = 0; bit < seeds[i].len * 8 && bit < FLIP_BYTES * 8;
		     bit++) {
			buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
			fn(buf, seeds[i].len);
			buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		}
		free(buf);
	}
	unload(seeds, n);
}
END_TEST

/* The frame seeds are valid streams for the current wire format: every
 * frame decodes, passes its crc and validation, and zlib pages inflate,
 * except the one frame the "error-nozlib" seed is about. */
START_TEST(test_frame_seeds_valid)
{
	static struct seed seeds[MAX_SEEDS];
	static uint8_t page[2u << 20];
	struct wire_region tab[FUZZ_NREGIONS];
	struct codec_zlib *z;
	unsigned n = load("frame", seeds), i, frames;
	uint32_t ntab;
	char err[512];

	fuzz_table(tab, &ntab);
	ck_assert_int_eq(codec_zlib_new(&z, false, 0), 0);
	for (i = 0; i < n; i++) {
		const uint8_t *d = seeds[i].data + 1;
		size_t left = seeds[i].len - 1;
		uint32_t feat = (seeds[i].data[0] & FUZZ_MODE_ZLIB) ?
				PCOPY_FEAT_ZLIB : 0;
		bool nozlib = strcmp(seeds[i].name, "error-nozlib") == 0;

		ck_assert_uint_ge(seeds[i].len, 1 + PCOPY_WIRE_HDR_SIZE);
		for (frames = 0; left; frames++) {
			struct wire_hdr h;
			int ret;

			ck_assert_uint_ge(left, PCOPY_WIRE_HDR_SIZE);
			ck_assert_msg(wire_hdr_decode(d, &h, err, sizeof(err)) == 0,
				      "%s frame %u: %s", seeds[i].name, frames, err);
			ck_assert_uint_ge(left - PCOPY_WIRE_HDR_SIZE, h.length);
			ck_assert_msg(wire_crc_check(d, &h, d + PCOPY_WIRE_HDR_SIZE,
						     err, sizeof(err)) == 0,
				      "%s frame %u: %s", seeds[i].name, frames, err);
			if (h.type == PCOPY_MSG_PAGE) {
				ret = wire_page_validate(&h, tab, ntab, feat, err,
							 sizeof(err));
				if (nozlib && h.kind == PCOPY_KIND_ZLIB) {
					ck_assert_int_eq(ret, -EPROTO);
				} else {
					ck_assert_msg(ret == 0, "%s frame %u: %s",
						      seeds[i].name, frames, err);
					if (h.kind == PCOPY_KIND_ZLIB)
						ck_assert_msg(codec_zlib_decompress(
							z, d + PCOPY_WIRE_HDR_SIZE,
							h.length, page,
							(size_t)h.count * 4096, err,
							sizeof(err)) == 0, "%s: %s",
							seeds[i].name, err);
				}
			}
			d += PCOPY_WIRE_HDR_SIZE + h.length;
			left -= PCOPY_WIRE_HDR_SIZE + h.length;
		}
		ck_assert_uint_ge(frames, 2);
	}
	codec_zlib_free(z);
	unload(seeds, n);
}
END_TEST

/* The hello and req seeds are accepted as they are. */
START_TEST(test_small_seeds_valid)
{
	static struct seed seeds[MAX_SEEDS];
	static struct wire_hello h;
	static struct wire_req reqs[PCOPY_REQ_MAX_ENTRIES];
	struct wire_region tab[FUZZ_NREGIONS];
	unsigned n, i;
	uint32_t ntab;
	char err[512];

	n = load("hello", seeds);
	for (i = 0; i < n; i++)
		ck_assert_msg(wire_hello_decode(seeds[i].data, seeds[i].len, &h,
						err, sizeof(err)) == 0,
			      "%s: %s", seeds[i].name, err);
	unload(seeds, n);
	fuzz_table(tab, &ntab);
	n = load("req", seeds);
	for (i = 0; i < n; i++) {
		ck_assert_uint_eq(seeds[i].len % PCOPY_REQ_ENTRY_SIZE, 0);
		ck_assert_msg(wire_req_decode(seeds[i].data,
					      (unsigned)(seeds[i].len /
							 PCOPY_REQ_ENTRY_SIZE),
					      reqs, tab, ntab, err,
					      sizeof(err)) == 0,
			      "%s: %s", seeds[i].name, err);
	}
	unload(seeds, n);
}
END_TEST

static Suite *make_fuzz_suite(void)
{
	Suite *s = suite_create("fuzz-corpus");
	TCase *tc = tcase_create("replay");

	tcase_set_timeout(tc, 600);	/* valgrind makes the flips slow */
	tcase_add_loop_test(tc, test_replay, 0,
			    sizeof(harnesses) / sizeof(harnesses[0]));
	tcase_add_test(tc, test_frame_seeds_valid);
	tcase_add_test(tc, test_small_seeds_valid);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(make_fuzz_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
