/* SPDX-License-Identifier: MIT */
/*
 * postcopy-fc-handler: one lazy restore of a VMM's guest memory through the
 * userfaultfd it sent, fed by a local memory file or a remote postcopy-serve.
 */
#ifndef PCOPY_TOOLS_FC_RESTORE_H
#define PCOPY_TOOLS_FC_RESTORE_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "cli.h"
#include "fc_json.h"

/* Where pages come from; shared by every restore of the process. */
struct fc_source_cfg {
	int mem_fd;			/* --mem-file, or -1 */
	const char *mem_path;
	uint64_t mem_size;		/* bytes in the file */
	const struct tool_addr *remote;	/* --connect, or NULL */
	uint64_t max_rate;		/* bytes/s cap for the local source; 0: none */
	bool no_background;		/* local source sends requested pages only */
	int connect_timeout_ms;
	int verbose;			/* 0: warnings, 1: info, 2: debug */
};

struct fc_restore;

/*
 * Start restoring `n` regions into the VMM's memory through `uffd` (already
 * through UFFDIO_API and registered by the VMM). Does not take `uffd`: the
 * caller keeps it open until the restore completes (fc_restore_poll() == 0)
 * or the VMM is gone, so faulting vCPUs never see zeros; the restore works
 * on a duplicate. `notify_fd` (an eventfd) is written when the restore ends
 * either way. Returns 0 and *out, or -errno with a message in err. Caller's
 * thread.
 */
int fc_restore_start(struct fc_restore **out, unsigned id, pid_t peer,
		     const struct fc_region *rg, unsigned n, int uffd,
		     const struct fc_source_cfg *cfg, int notify_fd,
		     char *err, size_t errlen);

/* 0 if complete, -EINPROGRESS while running, or the error that ended it. */
int fc_restore_poll(struct fc_restore *r);

/* Print the one-line summary of a finished (or abandoned) restore. */
void fc_restore_summary(struct fc_restore *r, FILE *f);

/* Stop and free everything; accepts NULL. Caller's thread. */
void fc_restore_destroy(struct fc_restore *r);

#endif
