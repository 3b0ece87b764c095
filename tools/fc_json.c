/* SPDX-License-Identifier: MIT */
/*
 * postcopy-fc-handler: validation of the JSON region table a VMM sends with
 * its userfaultfd. Every field is checked; a bad one is named in the message.
 */
#include "fc_json.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <json-c/json.h>

/* Largest region we accept (128 TiB), and the top of any user address space
 * (57 bits with 5-level paging): keeps host + size from overflowing. */
#define FC_SIZE_MAX (1ull << 47)
#define FC_ADDR_MAX (1ull << 57)

static bool is_page_size(uint64_t v)
{
	return v == FC_PAGE_4K || v == FC_PAGE_2M;
}

/*
 * Read key `name` of region object `o` as a non-negative integer. Returns 1
 * and *v, 0 if the key is absent, or -EINVAL with a message.
 */
static int get_u64(struct json_object *o, unsigned idx, const char *name,
		   uint64_t *v, char *err, size_t errlen)
{
	struct json_object *f;

	if (!json_object_object_get_ex(o, name, &f))
		return 0;
	/* json-c gives doubles, strings and booleans their own types: "4096",
	 * 4096.0 and true are all refused rather than converted. */
	if (json_object_get_type(f) != json_type_int ||
	    json_object_get_int64(f) < 0) {
		snprintf(err, errlen, "region %u: \"%s\" must be a non-negative integer, got %s",
			 idx, name, json_object_to_json_string_ext(f, JSON_C_TO_STRING_PLAIN));
		return -EINVAL;
	}
	*v = json_object_get_uint64(f);
	return 1;
}

/* The page size from page_size and/or page_size_kib. Returns 0 or -EINVAL. */
static int get_page_size(struct json_object *o, unsigned idx, uint64_t *ps,
			 char *err, size_t errlen)
{
	uint64_t bytes = 0, kib = 0, from_kib = 0;
	int hb, hk;

	hb = get_u64(o, idx, "page_size", &bytes, err, errlen);
	if (hb < 0)
		return hb;
	hk = get_u64(o, idx, "page_size_kib", &kib, err, errlen);
	if (hk < 0)
		return hk;
	if (!hb && !hk) {
		snprintf(err, errlen, "region %u: neither \"page_size\" nor \"page_size_kib\" is given",
			 idx);
		return -EINVAL;
	}
	if (hk) {
		/* Firecracker writes bytes into page_size_kib (its own code
		 * calls the name wrong); older writers and its prose say KiB.
		 * The two readings never collide for 4 KiB and 2 MiB pages. */
		if (is_page_size(kib))
			from_kib = kib;
		else if (kib <= FC_PAGE_2M && is_page_size(kib * 1024))
			from_kib = kib * 1024;
		else {
			snprintf(err, errlen,
				 "region %u: \"page_size_kib\" %" PRIu64 " is not a supported page size (4 KiB or 2 MiB, in bytes or KiB)",
				 idx, kib);
			return -EINVAL;
		}
	}
	if (hb && !is_page_size(bytes)) {
		snprintf(err, errlen,
			 "region %u: \"page_size\" %" PRIu64 " is not a supported page size (4096 or 2097152)",
			 idx, bytes);
		return -EINVAL;
	}
	if (hb && hk && bytes != from_kib) {
		snprintf(err, errlen,
			 "region %u: \"page_size\" %" PRIu64 " and \"page_size_kib\" %" PRIu64 " disagree",
			 idx, bytes, kib);
		return -EINVAL;
	}
	*ps = hb ? bytes : from_kib;
	return 0;
}

static int parse_region(struct json_object *o, unsigned idx, struct fc_region *r,
			char *err, size_t errlen)
{
	static const char *const need[] = { "base_host_virt_addr", "size", "offset" };
	uint64_t *dst[] = { &r->host, &r->size, &r->offset };
	unsigned i;
	int rc;

	if (json_object_get_type(o) != json_type_object) {
		snprintf(err, errlen, "region %u: expected a JSON object, got %s", idx,
			 json_type_to_name(json_object_get_type(o)));
		return -EINVAL;
	}
	for (i = 0; i < 3; i++) {
		rc = get_u64(o, idx, need[i], dst[i], err, errlen);
		if (rc < 0)
			return rc;
		if (rc == 0) {
			snprintf(err, errlen, "region %u: \"%s\" is missing", idx, need[i]);
			return -EINVAL;
		}
	}
	rc = get_page_size(o, idx, &r->page_size, err, errlen);
	if (rc < 0)
		return rc;
	if (r->host == 0 || (r->host & (r->page_size - 1))) {
		snprintf(err, errlen,
			 "region %u: \"base_host_virt_addr\" 0x%" PRIx64 " is %s",
			 idx, r->host, r->host ? "not aligned to the page size" : "zero");
		return -EINVAL;
	}
	if (r->size == 0 || r->size > FC_SIZE_MAX || (r->size & (r->page_size - 1))) {
		snprintf(err, errlen,
			 "region %u: \"size\" %" PRIu64 " is not a non-zero multiple of the page size %" PRIu64 " (at most 128 TiB)",
			 idx, r->size, r->page_size);
		return -EINVAL;
	}
	if (r->host > FC_ADDR_MAX - r->size) {
		snprintf(err, errlen,
			 "region %u: [0x%" PRIx64 ", +%" PRIu64 ") is not a user-space address range",
			 idx, r->host, r->size);
		return -EINVAL;
	}
	/* The file is read in 4 KiB pages; Firecracker's offsets are sums of
	 * region sizes, so always aligned. */
	if ((r->offset & (FC_PAGE_4K - 1)) || r->offset > UINT64_MAX / 2) {
		snprintf(err, errlen,
			 "region %u: \"offset\" %" PRIu64 " is not a multiple of 4096",
			 idx, r->offset);
		return -EINVAL;
	}
	return 0;
}

/* Returns the count or -EINVAL. Any thread. */
int fc_json_regions(struct json_object *payload, struct fc_region *out,
		    unsigned max, char *err, size_t errlen)
{
	size_t n, i, j;
	int rc;

	if (json_object_get_type(payload) != json_type_array) {
		snprintf(err, errlen, "expected a JSON array of regions, got %s",
			 json_type_to_name(json_object_get_type(payload)));
		return -EINVAL;
	}
	n = json_object_array_length(payload);
	if (n == 0 || n > max) {
		snprintf(err, errlen, "%zu regions in the array: need 1..%u", n, max);
		return -EINVAL;
	}
	for (i = 0; i < n; i++) {
		rc = parse_region(json_object_array_get_idx(payload, i), (unsigned)i,
				  &out[i], err, errlen);
		if (rc < 0)
			return rc;
		for (j = 0; j < i; j++) {
			if (out[i].host < out[j].host + out[j].size &&
			    out[j].host < out[i].host + out[i].size) {
				snprintf(err, errlen,
					 "regions %zu and %zu overlap in the VMM's address space",
					 j, i);
				return -EINVAL;
			}
		}
	}
	return (int)n;
}

/* Returns the count or -EINVAL. Any thread. */
int fc_json_parse_text(const char *text, size_t len, struct fc_region *out,
		       unsigned max, char *err, size_t errlen)
{
	struct json_tokener *tok = json_tokener_new();
	struct json_object *o;
	enum json_tokener_error je;
	size_t end;
	int rc;

	if (!tok) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
	if (memchr(text, '\0', len)) {
		snprintf(err, errlen, "JSON text contains a NUL byte");
		json_tokener_free(tok);
		return -EINVAL;
	}
	o = json_tokener_parse_ex(tok, text, (int)len);
	je = json_tokener_get_error(tok);
	end = json_tokener_get_parse_end(tok);
	if (!o && je == json_tokener_continue) {
		/* A NUL terminator tells the tokenizer the text has ended
		 * (a top-level number or literal waits for it). */
		o = json_tokener_parse_ex(tok, "", 1);
		je = json_tokener_get_error(tok);
		end = len;
	}
	if (!o && je != json_tokener_success) {	/* success: the value null */
		snprintf(err, errlen, "JSON syntax error at byte %zu: %s",
			 end, je == json_tokener_continue ? "unexpected end of text"
						     : json_tokener_error_desc(je));
		json_tokener_free(tok);
		return -EINVAL;
	}
	for (size_t i = end; i < len; i++) {
		if (!strchr(" \t\r\n", text[i])) {
			snprintf(err, errlen, "unexpected data after the JSON value at byte %zu", i);
			json_object_put(o);
			json_tokener_free(tok);
			return -EINVAL;
		}
	}
	rc = fc_json_regions(o, out, max, err, errlen);
	json_object_put(o);
	json_tokener_free(tok);
	return rc;
}
