/* SPDX-License-Identifier: MIT */
/*
 * Test helpers shared by the end-to-end suites: the deterministic image
 * pattern, destination memory backends (anon, memfd, hugetlb), hugetlb pool
 * reservation, and a source served from a child process.
 */
#ifndef PCOPY_TESTLIB_H
#define PCOPY_TESTLIB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "postcopy.h"

#define TL_PAGE 4096u
#define TL_HUGE (2u << 20)

/* ---- pattern: page contents derived from (region, page index) ---- */

/* True if 4 KiB page `page` of region `region` is a zero page (~25%). */
bool tl_page_is_zero(unsigned region, uint64_t page);
/* Write the expected contents of one 4 KiB page into dst. */
void tl_page_fill(unsigned region, uint64_t page, void *dst);
/*
 * Compare one 4 KiB page with its expected contents. Returns -1 if equal,
 * else the index of the first wrong byte.
 */
long tl_page_check(unsigned region, uint64_t page, const void *p);
/* Fill a whole buffer (len a multiple of 4 KiB) as region `region`. */
void tl_fill(unsigned region, void *dst, size_t len);

/* ---- memory backends ---- */

enum tl_mem { TL_MEM_ANON = 0, TL_MEM_MEMFD = 1, TL_MEM_HUGETLB = 2, TL_MEM_COUNT };

const char *tl_mem_name(enum tl_mem m);
size_t tl_mem_page_size(enum tl_mem m);

struct tl_mapping {
	void *addr;
	size_t length;
	int fd;		/* memfd, or -1 */
};

/* Map len bytes of the given type; returns 0 or -errno. */
int tl_map(enum tl_mem m, size_t len, struct tl_mapping *out);
void tl_unmap(struct tl_mapping *mp);

#include "hugepool.h"

/* Print "SKIP <name>: <why>" to stdout; .ci/run counts these lines. */
void tl_skip(const char *name, const char *why);

/* ---- a source in a child process ---- */

enum tl_link { TL_LINK_TCP = 0, TL_LINK_UNIX = 1 };

struct tl_source_cfg {
	unsigned nregions;
	size_t lengths[4];
	size_t page_sizes[4];
	const char *names[4];
	bool zlib;
	bool from_file;		/* serve a sparse snapshot file, not memory */
	enum tl_link link;
	bool urgent;		/* also connect the urgent connection */
	unsigned source_flags;	/* more PCOPY_SOURCE_* for the source */
};

struct tl_source_proc {
	pid_t pid;
	int fd;			/* destination's end of the connection */
	int urgent_fd;		/* its urgent connection (cfg->urgent), or -1 */
	char path[108];		/* Unix socket path, removed on wait */
};

/*
 * Fork a child that builds the image (pattern, or a sparse file holding the
 * pattern with its zero pages as holes), listens, and serves one destination
 * (its first connection starts the source; later ones, urgent or resumed, go
 * to pcopy_source_add_conn); connect to it. Returns 0 with sp->fd connected
 * (and sp->urgent_fd when cfg->urgent), or -errno. Hand sp->urgent_fd to
 * pcopy_dest_add_urgent after pcopy_dest_start.
 */
int tl_source_spawn(const struct tl_source_cfg *cfg, struct tl_source_proc *sp);
/* Wait for the child; returns its exit status (0 = served to completion). */
int tl_source_wait(struct tl_source_proc *sp);

/* Build pcopy_region entries for mappings laid out as in cfg. */
void tl_regions(const struct tl_source_cfg *cfg, struct tl_mapping *maps,
		struct pcopy_region *out);

#endif
