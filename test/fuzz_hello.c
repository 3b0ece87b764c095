/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer harness for the HELLO parser: wire_hello_decode on the raw
 * payload, then wire_hello_compare against the fixed table and against
 * itself. Properties checked (a violation traps): a failure carries a
 * message; an accepted HELLO obeys every documented bound and re-encodes to
 * exactly the input bytes (the encoding is canonical); a table equals itself.
 * Build: test/fuzz.sh.
 */
#include <stdint.h>
#include <string.h>

#include "fuzz_common.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_bounds(const struct wire_hello *h)
{
	uint32_t i;

	if (h->version != PCOPY_WIRE_VERSION ||
	    h->target_page != PCOPY_TARGET_PAGE ||
	    h->nregions < 1 || h->nregions > PCOPY_REGIONS_MAX ||
	    (h->role != PCOPY_ROLE_SOURCE && h->role != PCOPY_ROLE_DEST))
		__builtin_trap();
	for (i = 0; i < h->nregions; i++) {
		const struct wire_region *r = &h->regions[i];
		size_t nl = strnlen(r->name, sizeof(r->name));

		if (nl < 1 || nl > PCOPY_NAME_MAX)
			__builtin_trap();
		if (r->host_page < PCOPY_TARGET_PAGE ||
		    r->host_page > PCOPY_HOST_PAGE_MAX ||
		    (r->host_page & (r->host_page - 1)))
			__builtin_trap();
		if (r->length == 0 || r->length % r->host_page)
			__builtin_trap();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct wire_hello h, ours;
	static uint8_t re[16384];
	char err[512];
	int n;

	err[0] = '\0';
	if (wire_hello_decode(data, size, &h, err, sizeof(err))) {
		if (err[0] == '\0')
			__builtin_trap();
		return 0;
	}
	check_bounds(&h);

	n = wire_hello_encode(&h, re, sizeof(re));
	if (n < 0 || (size_t)n != size || memcmp(re, data, size) != 0)
		__builtin_trap();

	if (wire_hello_compare(&h, &h, err, sizeof(err)) != 0)
		__builtin_trap();
	memset(&ours, 0, sizeof(ours));
	ours.version = PCOPY_WIRE_VERSION;
	ours.target_page = PCOPY_TARGET_PAGE;
	fuzz_table(ours.regions, &ours.nregions);
	err[0] = '\0';
	if (wire_hello_compare(&ours, &h, err, sizeof(err)) != 0 &&
	    err[0] == '\0')
		__builtin_trap();
	if (wire_hello_compare(&h, &ours, err, sizeof(err)) != 0 &&
	    err[0] == '\0')
		__builtin_trap();
	return 0;
}
