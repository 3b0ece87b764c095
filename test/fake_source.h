/* SPDX-License-Identifier: MIT */
/*
 * A scripted fake source for the check_dest* suites (test/fake_source.c):
 * it runs in a thread on one end of a socketpair and serves, breaks or
 * corrupts the stream as its script says, checking what the destination sends.
 */
#ifndef PCOPY_TEST_FAKE_SOURCE_H
#define PCOPY_TEST_FAKE_SOURCE_H

#include "check_dest_util.h"
#include "common.h"
#include "wire.h"

/* ------------------------------------------------------------------ */
/* fake source                                                         */
/* ------------------------------------------------------------------ */

enum script {
	SC_NORMAL,	/* requests first, background otherwise, END, wait DONE */
	SC_DUP,		/* NORMAL, but host page 0 of region 0 is sent twice */
	SC_STALL,	/* `before` host pages, then only read */
	SC_WAIT_REQ_BAD,/* wait for a REQ, `before` pages, then the bad thing */
	/* `before` host pages of region 0, then one bad thing: */
	SC_BAD_CRC, SC_BAD_REGION, SC_BAD_OFFSET_END, SC_BAD_MISALIGNED,
	SC_BAD_RAWLEN, SC_OUT_OF_ORDER, SC_OTHER_HP_MIDPAGE, SC_END_MISSING,
	SC_UNKNOWN_TYPE, SC_UNEXPECTED_REQ, SC_SRC_ERROR, SC_EOF, SC_BAD_ZLIB,
	SC_ZLIB_NOT_NEGOTIATED, SC_BAD_MAGIC, SC_UNEXPECTED_HELLO, SC_UNEXPECTED_DONE,
	SC_RESUME,	/* serve with the cuts in `cuts`, accept resumes */
	SC_HOLD,	/* `before` host pages, then only read until `release`,
			   then everything not sent on this connection */
	SC_URGENT_SRV,	/* an urgent connection: answer REQs until `release` */
	SC_URGENT_FLOOD,/* urgent: after the first REQ, send region 1 again and
			   again without reading until `flood_end`, then as
			   SC_URGENT_SRV */
};

/* How the fake source breaks a connection (SC_RESUME). */
enum cut_kind {
	CUT_EOF,	/* after whole host pages: shutdown(SHUT_WR) */
	CUT_MIDFRAME,	/* a header and part of its payload, then EOF */
	CUT_MIDHP,	/* the first target pages of a host page, then EOF */
	CUT_CORRUPT,	/* a frame with a bad crc; the destination hangs up */
	CUT_SILENT,	/* stop sending, keep reading: keepalive must notice */
};

struct cut {
	enum cut_kind kind;
	unsigned after;		/* host pages sent on this connection first */
	bool refuse_next;	/* close the next connection unanswered */
};

struct fake {
	int fd;
	unsigned nreg;
	size_t len[NREG], ps[NREG];
	uint32_t offer;		/* features offered */
	size_t len0_override;	/* != 0: lie about region 0's length */
	enum script sc;
	unsigned before;	/* host pages sent before the bad thing */
	enum script bad;	/* for SC_WAIT_REQ_BAD */
	bool wait_first_req;	/* no background until a REQ came */
	bool reverse;		/* background from the end */
	const void *psk;	/* handshake key, or NULL */
	size_t psk_len;
	struct cut cuts[6];	/* SC_RESUME */
	unsigned ncuts;
	atomic_bool release;	/* SC_HOLD: go on */
	atomic_bool flood_end;	/* SC_URGENT_FLOOD: serve requests now */
	/* the next connection (resume / urgent), handed in by the test */
	pthread_mutex_t hand_lock;
	pthread_cond_t hand_cond;
	int next_fd;
	/* results */
	int hs_rc;
	char hs_err[PCOPY_ERRMSG_MAX];
	uint64_t req_entries, req_msgs;
	uint64_t pings, resumes, refused, bitmap_checks, post_resume_reqs;
	bool got_done, got_error;
	int fail_line;		/* != 0: the fake itself hit a problem here */
	/* state */
	uint32_t features;
	uint64_t session;
	uint8_t *sent[NREG];
	uint8_t *reqd[NREG];	/* every host page ever requested */
	uint8_t *page;		/* one host page */
	uint8_t *zbuf;
	struct codec_zlib *z;
	uint64_t *q;
	size_t qh, qt, qcap;
	uint8_t *rbuf;		/* PCOPY_WIRE_PAYLOAD_MAX */
	pthread_t thr;
};

/* Set up a fake for the regions of m[], on a socketpair; returns the
 * destination's end. Set fields (offer, before, ...) before fake_run. */
int fake_start(struct fake *f, struct mem *m, unsigned nreg, enum script sc);
/* Start the fake's thread. */
void fake_run(struct fake *f);
/* Join the fake's thread and free it; its results stay readable. */
void fake_end(struct fake *f);
/* The test hands the fake its next connection (resume or urgent). */
void fake_hand(struct fake *f, int fd);

/* The main connection: a fake with script sc offering `offer` that sends
 * `before` host pages first, run and started as d's connection (asserted). */
void fake_start_main(struct fake *f, struct pcopy_dest *d, struct mem *m,
		     enum script sc, uint32_t offer, unsigned before);
/* An urgent connection: a fake with script sc offering FEAT_ALL that sends
 * `before` host pages first, run and added to d. Returns what
 * pcopy_dest_add_urgent returned. */
int fake_start_urgent(struct fake *u, struct pcopy_dest *d, struct mem *m,
		      enum script sc, unsigned before);

#endif
