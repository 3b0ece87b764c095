/* SPDX-License-Identifier: MIT */
/*
 * CRC-32C (Castagnoli, the iSCSI / ext4 polynomial) of the frame checksum
 * (private): SSE4.2 crc32 instructions where the CPU has them, a table
 * otherwise. Same convention as zlib's crc32(): start with 0, chain calls.
 */
#ifndef PCOPY_STREAM_CRC32C_H
#define PCOPY_STREAM_CRC32C_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * CRC-32C of len bytes at buf, continuing from crc (0 for a new checksum;
 * crc32c(crc32c(0, a), b) == crc32c of a then b). buf may be NULL if len is 0.
 * Picks the fastest implementation this CPU supports. Any thread.
 */
uint32_t pcopy_crc32c(uint32_t crc, const void *buf, size_t len);

/* The portable table implementation (for tests and other CPUs). */
uint32_t pcopy_crc32c_sw(uint32_t crc, const void *buf, size_t len);

/* True if the CPU has the SSE4.2 crc32 instruction. */
bool pcopy_crc32c_hw_available(void);

/* The SSE4.2 implementation; only call it if pcopy_crc32c_hw_available(). */
uint32_t pcopy_crc32c_hw(uint32_t crc, const void *buf, size_t len);

#endif
