/* SPDX-License-Identifier: MIT */
/*
 * One recovery scenario (test/check_recovery.c): a destination here, source
 * children, the proxy between them with the scenario's rules; runs the
 * restore, resumes by hand or lets the connect callback do it, and checks
 * what must hold whatever the outcome.
 */
#ifndef PCOPY_TEST_RECOVERY_SCEN_H
#define PCOPY_TEST_RECOVERY_SCEN_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "postcopy.h"
#include "proxy.h"
#include "recovery_lib.h"
#include "testlib.h"

enum outcome {
	OUT_COMPLETE = 0,	/* must complete */
	OUT_COMPLETE_OR_FAIL,	/* complete, or fail cleanly with a message */
};

struct scen;
typedef void (*hook_fn)(struct rl_dest *r, struct scen *sc, uint64_t t_ms);

struct scen {
	const char *name;
	enum tl_mem mem;
	bool manual;		/* resume with pcopy_dest_resume, not the callback */
	bool urgent;		/* add an urgent connection after start */
	bool zlib;
	const char *psk;	/* both sides authenticate every connection */
	unsigned touchers;
	unsigned nsrc;		/* 2: a standby source for a restart */
	bool adopt;		/* the standby adopts the session (PCOPY_SOURCE_ADOPT) */
	bool standby_zlib;	/* the standby offers zlib (source 0 does not
				   unless `zlib`) */
	const struct tl_source_cfg *standby_img;	/* NULL: the same image */
	bool kill_on_complete;	/* SIGKILL source 0 from the completion
				   callback (its DONE must be lost) */
	struct rl_dest *rd;	/* set by rs_run */
	bool confirm;		/* after completion, hand in one more
				   connection (pcopy_dest_resume) so the
				   source hears DONE */
	int confirm_rc;		/* ... its result */
	bool urgent_cut;	/* the urgent handshake was cut: no urgent
				   connection in this restore */
	int dest_keepalive_ms, src_keepalive_ms;
	int dest_deadline_ms, src_deadline_ms;
	enum outcome outcome;
	struct proxy_rule rules[PROXY_RULES_MAX];
	unsigned nrules;
	hook_fn hook;		/* called every ~50 ms while the restore runs */
	uint64_t seed;
	uint64_t hook_arg;
	bool hook_done;
	const char *const *detect;	/* NULL, or up to 5 substrings */

	/* results */
	int rc;
	char err[512];
	struct pcopy_stats st;
	struct rl_src_result src_res;
	int src_res_rc;
	unsigned cuts_fired;
	unsigned resumes_called, resumes_ok;
	unsigned long resident;
	bool detected;		/* a detect substring was logged by either side */
	bool fail_block;	/* PCOPY_FAIL_BLOCK instead of SIGBUS */
	uint64_t t_hook;	/* when the hook acted (ms, monotonic) */
	uint64_t t_end;		/* when the restore ended */
	_Atomic int events;	/* on_event calls ... */
	_Atomic int event_err;	/* ... and the last err */
};

/* CLOCK_MONOTONIC in ms. */
uint64_t rs_now_ms(void);
/* Parse spec (proxy rule syntax) into the scenario; fails the test if bad. */
void rs_add_rule(struct scen *sc, const char *spec);
/* One region named "ram" of len bytes, host pages as `mem` has them. */
void rs_one_region(struct tl_source_cfg *img, enum tl_mem mem, size_t len);
/* Rough wire bytes of the image (non-zero pages + headers). */
uint64_t rs_wire_estimate(const struct tl_source_cfg *img);
/*
 * Run the scenario with image img: fills sc's results and asserts (check
 * framework) that no toucher saw a wrong byte, the image is whole after a
 * completion, a failure was clean, one event callback, no fd leaked.
 * Returns false if skipped (memory type unavailable).
 */
bool rs_run(struct scen *sc, const struct tl_source_cfg *img);

#endif
