/* SPDX-License-Identifier: MIT */
/*
 * Internals of the fault-injection proxy shared by proxy.c (connections and
 * the poll thread) and proxy_pipe.c (one direction: frame tracker, rules on
 * the byte stream, output queue). Everything here runs on the proxy thread.
 */
#ifndef PCOPY_TEST_PROXY_INT_H
#define PCOPY_TEST_PROXY_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proxy.h"
#include "wire.h"

#define HDR		PCOPY_WIRE_HDR_SIZE
#define READ_CHUNK	(64u << 10)
#define OUT_HIGH	(256u << 10)	/* stop reading while this much is queued */
#define NS		1000000000ull

enum pending { PEND_NONE = 0, PEND_CUT, PEND_SHUT, PEND_EOF };

struct prule {			/* a rule instantiated on one direction */
	struct proxy_rule r;
	uint64_t at;		/* resolved position (random cuts) */
	bool done;		/* one-shot rules that fired */
};

struct proxy_pipe {
	int in, out;
	enum proxy_dir dir;
	struct prule rules[PROXY_RULES_MAX];
	unsigned nrules;
	bool frame_rules;	/* hold each header until the frame's fate is known */
	bool split;
	uint64_t split_from;	/* output position */
	uint64_t bps;		/* throttle, 0 = none */
	uint64_t t0, sent;	/* throttle clock start, bytes since */

	uint64_t in_pos;	/* input bytes consumed */
	uint64_t limit;		/* CUT_FRAME: cut at this input position */
	bool in_eof;
	bool dead;		/* shut down by a rule: input is discarded */
	bool done;		/* finished: EOF passed on, or dead and EOF */
	enum pending pending;	/* waits for the output to drain */
	uint64_t stall_until;

	uint8_t *buf;		/* output queue [off, len) */
	size_t off, len, cap;

	/* frame tracker */
	uint8_t hdr[HDR];	/* original bytes of the current header */
	size_t hdr_have, hdr_sent;	/* bytes seen / already emitted */
	uint64_t hdr_pos;	/* input position of the header */
	uint64_t frame_left;	/* payload bytes still to come */
	uint8_t frame_type;
	bool drop, dup;
	uint8_t *dupbuf;	/* copy of the frame as emitted */
	size_t dup_len, dup_cap;
	uint64_t type_count[256];

	struct proxy_dir_stats st;
};

/* Consume n input bytes: track frames, apply the rules, queue the output.
 * Returns 0 or -ENOMEM. */
int pipe_feed(struct proxy_pipe *p, const uint8_t *d, size_t n);

/* Queue the header bytes the tracker holds (at a hold point or EOF), up to
 * a frame cut. Returns 0 or -ENOMEM. */
int pipe_flush_header(struct proxy_pipe *p);

/* The next input position where reading must pause for a rule. */
uint64_t pipe_next_hold(const struct proxy_pipe *p);

/* Whether to poll the input / output now; want_output lowers *wait_ns to
 * the time the throttle next lets a byte through. */
bool pipe_want_input(const struct proxy_pipe *p, uint64_t now);
bool pipe_want_output(struct proxy_pipe *p, uint64_t now, uint64_t *wait_ns);

/* One non-blocking read (at most cap bytes, never past a hold point) fed
 * through pipe_feed, or one write of the queue. Return 0 or -errno of a
 * socket error (which ends the connection). */
int pipe_read(struct proxy_pipe *p, uint8_t *scratch, size_t cap);
int pipe_write(struct proxy_pipe *p, uint64_t now);

/* Free the queues. */
void pipe_free(struct proxy_pipe *p);

#endif
