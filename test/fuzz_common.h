/* SPDX-License-Identifier: MIT */
/*
 * Shared by the libFuzzer harnesses and gen_corpus: the fixed region table
 * the decoders are checked against, and the mode byte that opens every
 * fuzz_frame input.
 */
#ifndef PCOPY_FUZZ_COMMON_H
#define PCOPY_FUZZ_COMMON_H

#include <stdint.h>
#include <string.h>

#include "postcopy.h"
#include "wire.h"

/* First byte of a fuzz_frame input. */
#define FUZZ_MODE_ZLIB		0x01	/* zlib negotiated */
#define FUZZ_MODE_STRICT_CRC	0x02	/* stop at a crc mismatch, as the
					   receiver does; without it the crc is
					   checked but ignored, so mutated
					   frames still reach the deeper code */

#define FUZZ_NREGIONS 3u

/* ram0: 1 MiB of 4 KiB pages; huge: 4 MiB of 2 MiB pages; small: 64 KiB of
 * 16 KiB pages. Three host page sizes, so host-page boundaries matter. */
static inline void fuzz_table(struct wire_region *tab, uint32_t *n)
{
	static const struct {
		const char *name;
		uint64_t length;
		uint32_t host_page;
	} t[FUZZ_NREGIONS] = {
		{ "ram0", 1u << 20, 4096 },
		{ "huge", 4u << 20, 2u << 20 },
		{ "small", 64u << 10, 16u << 10 },
	};
	unsigned i;

	for (i = 0; i < FUZZ_NREGIONS; i++) {
		memset(&tab[i], 0, sizeof(tab[i]));
		strcpy(tab[i].name, t[i].name);
		tab[i].length = t[i].length;
		tab[i].host_page = t[i].host_page;
	}
	*n = FUZZ_NREGIONS;
}

#endif
