/* SPDX-License-Identifier: MIT */
/*
 * postcopy-fc-handler: the region table of Firecracker's page-fault handler
 * handshake (a JSON array of guest memory mappings), parsed with json-c.
 */
#ifndef PCOPY_TOOLS_FC_JSON_H
#define PCOPY_TOOLS_FC_JSON_H

#include <stddef.h>
#include <stdint.h>

struct json_object;

/* One guest memory region as the VMM describes it. */
struct fc_region {
	uint64_t host;		/* base_host_virt_addr: in the VMM's address space */
	uint64_t size;		/* bytes, a multiple of page_size */
	uint64_t offset;	/* where the region's contents start in the memory file */
	uint64_t page_size;	/* host page size in bytes: 4096 or 2 MiB */
};

#define FC_REGIONS_MAX 64	/* = PCOPY_REGIONS_MAX */
#define FC_PAGE_4K 4096ull
#define FC_PAGE_2M (2ull << 20)

/*
 * Validate one handshake payload and fill out[0..n). The payload is an array
 * of objects with base_host_virt_addr, size, offset and a page size given as
 * page_size (bytes) and/or the deprecated page_size_kib (which Firecracker
 * fills with bytes despite its name; a value that is a page size in KiB is
 * accepted too). Unknown keys are ignored. Returns the number of regions
 * (1..max), or -EINVAL with a message naming the region and field in err.
 * Any thread.
 */
int fc_json_regions(struct json_object *payload, struct fc_region *out,
		    unsigned max, char *err, size_t errlen);

/*
 * Parse a complete JSON text (strict RFC 8259, nothing after it) and
 * validate it as above. Returns the number of regions or -EINVAL with a
 * message. Any thread.
 */
int fc_json_parse_text(const char *text, size_t len, struct fc_region *out,
		       unsigned max, char *err, size_t errlen);

#endif
