/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer harness for the request parser: wire_req_decode on size / 16
 * entries against the fixed region table. Properties checked (a violation
 * traps): a failure carries a message; every accepted entry lies inside its
 * region, aligned, with count >= 1; accepted entries re-encode to the input.
 * Build: test/fuzz.sh.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct wire_req out[PCOPY_REQ_MAX_ENTRIES];
	static uint8_t re[PCOPY_REQ_MAX_ENTRIES * PCOPY_REQ_ENTRY_SIZE];
	struct wire_region tab[FUZZ_NREGIONS];
	size_t n = size / PCOPY_REQ_ENTRY_SIZE;
	uint32_t ntab;
	char err[512];
	size_t i;
	int ret;

	fuzz_table(tab, &ntab);
	/* Counts above the maximum must be refused before any entry is read:
	 * pass the real count so the decoder, not the harness, decides. */
	if (n > PCOPY_REQ_MAX_ENTRIES) {
		ret = wire_req_decode(data, (unsigned)n, out, tab, ntab, err,
				      sizeof(err));
		if (ret == 0)
			__builtin_trap();
		return 0;
	}
	err[0] = '\0';
	ret = wire_req_decode(data, (unsigned)n, out, tab, ntab, err,
			      sizeof(err));
	if (ret) {
		if (err[0] == '\0')
			__builtin_trap();
		return 0;
	}
	if (n == 0)
		__builtin_trap();	/* zero entries must be refused */
	for (i = 0; i < n; i++) {
		const struct wire_req *r = &out[i];
		uint64_t bytes = (uint64_t)r->count * PCOPY_TARGET_PAGE;

		if (r->region >= ntab || r->count == 0 ||
		    r->offset % PCOPY_TARGET_PAGE ||
		    r->offset > tab[r->region].length ||
		    bytes > tab[r->region].length - r->offset)
			__builtin_trap();
	}
	wire_req_encode(out, (unsigned)n, re);
	if (memcmp(re, data, n * PCOPY_REQ_ENTRY_SIZE) != 0)
		__builtin_trap();
	return 0;
}
