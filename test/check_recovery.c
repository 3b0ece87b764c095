/* SPDX-License-Identifier: MIT */
/*
 * Recovery scenarios end to end: a source child, the destination here, the
 * fault-injection proxy in between cutting, stalling and corrupting the
 * connections; each restore must end with every byte equal to the source's
 * and no toucher thread ever seeing a wrong byte. Cut points come from a
 * seed (PCOPY_TEST_SEED replays a run); PCOPY_TEST_MB scales the image.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "postcopy.h"
#include "proxy.h"
#include "recovery_lib.h"
#include "recovery_scen.h"
#include "testlib.h"
#include "wire.h"

#define TOUCHERS 3
#define DEF_MB 16
#define NCUTS 28		/* connections with a random cut in (a) */

static const char *mem_tag(enum tl_mem m)
{
	return tl_mem_name(m);
}

/* ---- (a) cuts at random points across the restore ---- */

/*
 * _i: 0 anon + connect callback, 1 memfd + manual resume, 2 hugetlb +
 * callback (cuts inside 2 MiB host pages), 3 anon + callback + zlib +
 * urgent connection + PSK authentication on every connection, 4 three
 * memfd regions (the received bitmap spans regions) + manual resume.
 */
START_TEST(test_random_cuts)
{
	static const enum tl_mem mems[] = { TL_MEM_ANON, TL_MEM_MEMFD,
					    TL_MEM_HUGETLB, TL_MEM_ANON,
					    TL_MEM_MEMFD };
	struct tl_source_cfg img;
	struct scen sc;
	char name[64], spec[96];
	uint64_t rng, w, hello, span;
	unsigned k;

	memset(&sc, 0, sizeof(sc));
	sc.mem = mems[_i];
	snprintf(name, sizeof(name), "random-cuts/%s/%s%s", mem_tag(sc.mem),
		 _i == 1 || _i == 4 ? "manual" : "callback",
		 _i == 3 ? "+zlib+urgent+psk" : _i == 4 ? "+3-regions" : "");
	sc.name = name;
	sc.manual = _i == 1 || _i == 4;
	sc.zlib = sc.urgent = _i == 3;
	sc.psk = _i == 3 ? "correct horse battery staple" : NULL;
	sc.touchers = TOUCHERS;
	rs_one_region(&img, sc.mem, rl_test_bytes(DEF_MB));
	if (_i == 4) {
		img.lengths[0] = rl_test_bytes(DEF_MB) / 2;
		img.nregions = 3;
		img.names[1] = "ram-hi";
		img.lengths[1] = rl_test_bytes(DEF_MB) / 4;
		img.page_sizes[1] = TL_PAGE;
		img.names[2] = "vga";
		img.lengths[2] = 1u << 20;
		img.page_sizes[2] = TL_PAGE;
	}
	sc.seed = rl_seed(name);
	rng = sc.seed;
	hello = rl_hello_bytes(&img);
	w = rs_wire_estimate(&img);
	/* 28 cuts whose expected sum is ~60% of the stream: they all fire, and
	 * together reach well into the restore */
	span = w * 12 / 10 / NCUTS;
	fprintf(stderr, "%s: %u connections cut at (b2a byte):", name, NCUTS);
	for (k = 1; k <= NCUTS; k++) {
		uint64_t at = hello + 64 + rl_rand(&rng) % span;

		fprintf(stderr, " %" PRIu64, at);
		snprintf(spec, sizeof(spec), "b2a:cut@%" PRIu64 ",conn=%u", at, k);
		rs_add_rule(&sc, spec);
	}
	fprintf(stderr, "\n");
	/* and a few request-direction cuts (whichever comes first fires) */
	for (k = 2; k <= NCUTS && sc.nrules < PROXY_RULES_MAX; k += 7) {
		snprintf(spec, sizeof(spec), "a2b:cut@%" PRIu64 ",conn=%u",
			 hello + rl_rand(&rng) % 2048, k);
		rs_add_rule(&sc, spec);
	}
	if (!rs_run(&sc, &img))
		return;
	/* with the urgent connection every other connection is an urgent
	 * one, which carries little: fewer of its cuts fire */
	ck_assert_msg(sc.cuts_fired >= (sc.urgent ? 10u : 20u),
		      "%s: only %u cuts fired (seed %llu)", name, sc.cuts_fired,
		      (unsigned long long)sc.seed);
	/* a cut that lands in a resume handshake fails that resume rather
	 * than breaking a running restore: most cuts are breaks, not all */
	ck_assert_msg(sc.st.breaks >= sc.cuts_fired * 2 / 3,
		      "%s: %u cuts but stats.breaks %llu", name, sc.cuts_fired,
		      (unsigned long long)sc.st.breaks);
	ck_assert_msg(sc.st.resent_pages > 0, "%s: %llu breaks, nothing resent", name,
		      (unsigned long long)sc.st.breaks);
	/* the faults' pages came on the urgent connection (unless its
	 * handshake was cut: the destination never had one then) */
	if (sc.urgent && !sc.urgent_cut)
		ck_assert_msg(sc.st.urgent_pages > 0, "%s: stats.urgent_pages 0", name);
}
END_TEST

/* ---- (b) repeated cuts during the resume handshake itself ---- */

START_TEST(test_cuts_in_resume)
{
	struct tl_source_cfg img;
	struct scen sc;
	char name[64], spec[96];
	uint64_t rng, w, hello;
	unsigned k = 1, i;

	memset(&sc, 0, sizeof(sc));
	sc.mem = _i == 2 ? TL_MEM_HUGETLB : TL_MEM_ANON;
	snprintf(name, sizeof(name), "cuts-in-resume/%s/%s", mem_tag(sc.mem),
		 _i == 1 ? "manual" : "callback");
	sc.name = name;
	sc.manual = _i == 1;
	sc.touchers = TOUCHERS;
	rs_one_region(&img, sc.mem, rl_test_bytes(DEF_MB));
	sc.seed = rl_seed(name);
	rng = sc.seed;
	hello = rl_hello_bytes(&img);
	w = rs_wire_estimate(&img);

	for (unsigned round = 0; round < 2; round++) {
		/* a break in the middle of the stream ... */
		snprintf(spec, sizeof(spec), "b2a:cut@%" PRIu64 ",conn=%u",
			 hello + w / 5 + rl_rand(&rng) % (w / 10), k++);
		rs_add_rule(&sc, spec);
		/* ... then every resume attempt dies somewhere in its
		 * handshake: in the source's HELLO, in ours, in the received
		 * bitmap, right after it, in the first resent frame */
		for (i = 0; i < 6; i++, k++) {
			uint64_t at;

			switch (i) {
			case 0:	/* source HELLO */
				at = rl_rand(&rng) % hello;
				snprintf(spec, sizeof(spec), "b2a:cut@%" PRIu64 ",conn=%u", at, k);
				break;
			case 1:	/* our HELLO */
				at = rl_rand(&rng) % hello;
				snprintf(spec, sizeof(spec), "a2b:cut@%" PRIu64 ",conn=%u", at, k);
				break;
			case 2:	/* inside the RECV_BITMAP header */
				snprintf(spec, sizeof(spec),
					 "a2b:cut-frame@%u=0,type=%u,conn=%u",
					 (unsigned)(rl_rand(&rng) % 32),
					 PCOPY_MSG_RECV_BITMAP, k);
				break;
			case 3:	/* inside the bitmap payload */
				snprintf(spec, sizeof(spec),
					 "a2b:cut-frame@%u=0,type=%u,conn=%u",
					 33 + (unsigned)(rl_rand(&rng) % 64),
					 PCOPY_MSG_RECV_BITMAP, k);
				break;
			case 4:	/* zero or one byte after the handshake */
				snprintf(spec, sizeof(spec), "b2a:cut@%" PRIu64 ",conn=%u",
					 hello + rl_rand(&rng) % 2, k);
				break;
			default: /* inside the first resent frame */
				snprintf(spec, sizeof(spec), "b2a:cut@%" PRIu64 ",conn=%u",
					 hello + 1 + rl_rand(&rng) % 4096, k);
				break;
			}
			rs_add_rule(&sc, spec);
		}
	}
	if (!rs_run(&sc, &img))
		return;
	ck_assert_msg(sc.cuts_fired >= 12, "%s: only %u cuts fired", name,
		      sc.cuts_fired);
	ck_assert_uint_ge(sc.st.breaks, 2);
}
END_TEST

/* ---- (c) corruption: payload, header, request ---- */

struct corrupt_case {
	const char *name;
	enum proxy_dir dir;
	long off;		/* from the end of the HELLO; < 0: random payload */
	unsigned mask;
	const char *detect[5];	/* one of these in a log or error message */
};

static const struct corrupt_case corrupt_cases[] = {
	/* a random byte of the stream is nearly always payload, but may be a
	 * frame header (zero pages are header-only frames): any detection */
	{ "page-payload", PROXY_B2A, -1, 0x01, { "crc", "integrity", "header", "PAGE", NULL } },
	{ "header-magic", PROXY_B2A, 0, 0x20, { "magic", "header", NULL } },
	{ "header-type", PROXY_B2A, 4, 0x40, { "type", "header", NULL } },
	{ "header-region", PROXY_B2A, 8, 0x01, { "crc", "region", NULL } },
	{ "header-length", PROXY_B2A, 27, 0x80, { "length", "header", NULL } },
	{ "request-entry", PROXY_A2B, 32 + 1, 0x10, { "crc", "REQ", "request" } },
	{ "request-header", PROXY_A2B, 4, 0x40, { "type", "header", "REQ" } },
};
#define NCORRUPT (sizeof(corrupt_cases) / sizeof(corrupt_cases[0]))

#define CORRUPT_REPEAT 6	/* the outcome may depend on timing: try a few */

START_TEST(test_corrupt)
{
	const struct corrupt_case *cc = &corrupt_cases[_i];
	struct tl_source_cfg img;
	char name[64], spec[96];
	uint64_t seed, rng, at, hello;

	snprintf(name, sizeof(name), "corrupt/%s", cc->name);
	rs_one_region(&img, TL_MEM_ANON, rl_test_bytes(DEF_MB / 2));
	seed = rl_seed(name);
	hello = rl_hello_bytes(&img);
	for (unsigned rep = 0; rep < CORRUPT_REPEAT; rep++) {
		struct scen sc;

		memset(&sc, 0, sizeof(sc));
		sc.mem = TL_MEM_ANON;
		sc.name = name;
		sc.touchers = TOUCHERS;
		sc.outcome = OUT_COMPLETE_OR_FAIL;
		sc.dest_deadline_ms = 5000;
		sc.src_deadline_ms = 5000;
		sc.seed = seed + rep;
		rng = sc.seed;
		if (cc->off < 0)	/* nearly all of the stream is page payload */
			at = hello + (64u << 10) +
			     rl_rand(&rng) % (rs_wire_estimate(&img) / 2);
		else
			at = hello + (uint64_t)cc->off;
		snprintf(spec, sizeof(spec), "%s:flip@%" PRIu64 "=%u,conn=1",
			 cc->dir == PROXY_A2B ? "a2b" : "b2a", at, cc->mask);
		fprintf(stderr, "%s #%u: %s\n", name, rep, spec);
		rs_add_rule(&sc, spec);
		sc.detect = cc->detect;
		if (!rs_run(&sc, &img))
			return;
		ck_assert_msg(sc.detected, "%s #%u: corruption at byte %llu was not "
			      "detected: rc %d '%s', breaks %llu, source '%s'", name,
			      rep, (unsigned long long)at, sc.rc, sc.err,
			      (unsigned long long)sc.st.breaks, sc.src_res.msg);
		if (sc.rc == 0) {
			/* resumed: the bad frame was dropped, not placed. A fast
			 * restore may complete before the corrupted message
			 * (a PING after DONE): the source breaks then, and the
			 * destination's DONE comes again on a resume, which is
			 * not counted as a break of the restore */
			ck_assert_msg(sc.st.breaks >= 1 || sc.src_res.conns >= 2,
				      "%s #%u: completed without a break (stats.breaks "
				      "0, source connections %d): was the corrupt frame "
				      "noticed?", name, rep, sc.src_res.conns);
			continue;
		}
		ck_assert_msg(sc.rc == -EBADMSG || sc.rc == -EPROTO,
			      "%s #%u: failed with %s, want EBADMSG or EPROTO: %s",
			      name, rep, pcopy_strerror(sc.rc), sc.err);
		/* Failing is clean only if both sides end: a source left paused
		 * for a destination that gave up holds its resources until its
		 * resume deadline (and the two sides disagree on the design). */
		ck_assert_msg(sc.src_res_rc == 0 && sc.src_res.rc < 0,
			      "%s #%u: the destination failed (%s) but the source "
			      "did not end within 3 s (still paused for a resume: "
			      "result %d, rc %d '%s')", name, rep, sc.err,
			      sc.src_res_rc, sc.src_res.rc, sc.src_res.msg);
	}
}
END_TEST

/* ---- (d) source killed with SIGKILL, restarted, resumed ---- */

/* Kill source 0 once its first connection has delivered hook_arg bytes,
 * and point new connections at the standby source 1 (started with
 * PCOPY_SOURCE_ADOPT: a restarted source on the same image). */
static void kill_source(struct rl_dest *r, struct scen *sc, uint64_t t)
{
	struct proxy_conn_stats st;

	(void)t;
	if (sc->hook_done || proxy_stats(r->px, 1, &st) != 0 ||
	    st.dir[PROXY_B2A].bytes_out < sc->hook_arg)
		return;
	sc->hook_done = true;
	fprintf(stderr, "%s: SIGKILL source pid %d after %llu bytes\n", sc->name,
		(int)r->src[0].pid,
		(unsigned long long)st.dir[PROXY_B2A].bytes_out);
	if (r->nsrc > 1)
		atomic_store(&r->cur, 1);
	kill(r->src[0].pid, SIGKILL);
	sc->t_hook = rs_now_ms();
}

/* Kill source 0 once the destination has hook_arg host pages (whichever
 * connection brought them), then as kill_source. */
static void kill_at_pages(struct rl_dest *r, struct scen *sc, uint64_t t)
{
	struct pcopy_stats st;

	(void)t;
	if (sc->hook_done || pcopy_dest_stats(r->d, &st) != 0 ||
	    st.host_pages_received < sc->hook_arg)
		return;
	sc->hook_done = true;
	fprintf(stderr, "%s: SIGKILL source pid %d with %llu of %llu host pages in\n",
		sc->name, (int)r->src[0].pid,
		(unsigned long long)st.host_pages_received,
		(unsigned long long)st.host_pages_total);
	atomic_store(&r->cur, 1);
	kill(r->src[0].pid, SIGKILL);
	sc->t_hook = rs_now_ms();
}

/* Where the source dies. */
enum kill_point {
	KILL_BEFORE_PAGE,	/* after the handshake, before any page arrived */
	KILL_MID,		/* mid-stream, at a random point (seeded) */
	KILL_AFTER_END,		/* after END: the destination has every page,
				   its DONE never reached the source */
	KILL_POINTS,
};

static const char *const kill_names[KILL_POINTS] = { "before-page", "mid-stream",
						     "after-end" };

/*
 * _i = kill point * 4 + variant; variant bit 0: manual resume (else the
 * connect callback), bit 1: the urgent connection, PSK authentication, and
 * a cut of the adopted session's first connection (a further resume to the
 * restarted source). Variant 0 offers zlib on both sources; variant 1 only
 * on the restarted one, which must not use it (the session never had it).
 * Memory cycles anon / memfd / hugetlb. After END by hand, the application
 * confirms DONE with pcopy_dest_resume after completion.
 */
START_TEST(test_source_killed)
{
	static const enum tl_mem mems[] = { TL_MEM_ANON, TL_MEM_MEMFD,
					    TL_MEM_HUGETLB };
	enum kill_point kp = (enum kill_point)(_i / 4);
	bool manual = _i & 1, urgent = _i & 2;
	struct tl_source_cfg img;
	uint64_t hello, w, rng, total;
	char name[96], spec[96];
	unsigned nconn0;
	struct scen sc;

	memset(&sc, 0, sizeof(sc));
	sc.mem = mems[_i % 3];
	snprintf(name, sizeof(name), "source-killed/%s/%s/%s%s", kill_names[kp],
		 mem_tag(sc.mem), manual ? "manual" : "callback",
		 urgent ? "+urgent+psk+cut" : manual ? "+zlib-restarted-only" : "+zlib");
	sc.name = name;
	sc.manual = manual;
	sc.urgent = urgent;
	sc.psk = urgent ? "restarted, same key" : NULL;
	sc.zlib = !urgent && !manual;
	sc.standby_zlib = !urgent && manual;
	sc.touchers = TOUCHERS;
	sc.nsrc = 2;
	sc.adopt = true;
	rs_one_region(&img, sc.mem, rl_test_bytes(DEF_MB / 2));
	sc.seed = rl_seed(name);
	rng = sc.seed;
	/* where pages start: the HELLO, then with a key two AUTH messages
	 * of 32 + 32 bytes */
	hello = rl_hello_bytes(&img) + (sc.psk ? 128 : 0);
	w = rs_wire_estimate(&img);
	total = img.lengths[0] / img.page_sizes[0];
	nconn0 = urgent ? 2 : 1;	/* connections to source 0 */
	switch (kp) {
	case KILL_BEFORE_PAGE:
		/* nothing after the HELLO gets through; the keepalive sees
		 * the silence, the standby adopts the session */
		for (unsigned k = 1; k <= nconn0; k++) {
			snprintf(spec, sizeof(spec), "b2a:stall@%" PRIu64 "=30000,conn=%u",
				 hello, k);
			rs_add_rule(&sc, spec);
		}
		sc.dest_keepalive_ms = 400;
		sc.hook = kill_source;
		sc.hook_arg = hello;
		break;
	case KILL_MID:
		/* slow enough that the kill lands mid-restore (the urgent
		 * connection too, or the touchers fetch it all there) */
		for (unsigned k = 1; k <= nconn0; k++) {
			snprintf(spec, sizeof(spec), "b2a:throttle=8m,conn=%u", k);
			rs_add_rule(&sc, spec);
		}
		sc.hook = kill_at_pages;
		sc.hook_arg = 1 + total / 10 + rl_rand(&rng) % (total / 2);
		break;
	default:
		/* DONE goes nowhere; the source is killed when the restore
		 * completes */
		snprintf(spec, sizeof(spec), "a2b:drop-frame=0,type=%u,conn=1",
			 PCOPY_MSG_DONE);
		rs_add_rule(&sc, spec);
		sc.kill_on_complete = true;
		sc.confirm = manual;
		break;
	}
	if (urgent && kp != KILL_AFTER_END) {
		/* the adopted session's first connection breaks too: it
		 * resumes again, to the restarted source */
		snprintf(spec, sizeof(spec), "b2a:cut@%" PRIu64 ",conn=%u",
			 hello + 4096 + rl_rand(&rng) % (w / 16), nconn0 + 1);
		rs_add_rule(&sc, spec);
	}
	if (!rs_run(&sc, &img))
		return;
	ck_assert_msg(sc.hook_done, "%s: the restore ended before the kill", name);
	ck_assert_msg(sc.rc == 0, "%s: %s", name, sc.err);
	ck_assert_msg(sc.src_res_rc == 0 && sc.src_res.rc == 0,
		      "%s: the restarted source did not end with success: %d %d %s",
		      name, sc.src_res_rc, sc.src_res.rc, sc.src_res.msg);
	/* a kill before completion is a break the destination resumes from;
	 * after END nothing is cut before completion, and confirming DONE
	 * afterwards (linger or pcopy_dest_resume) is not a break */
	if (kp == KILL_AFTER_END)
		ck_assert_msg(sc.st.breaks == 0, "%s: %llu breaks, but the source "
			      "died only after the restore completed", name,
			      (unsigned long long)sc.st.breaks);
	else
		ck_assert_msg(sc.st.breaks >= 1, "%s: the source was killed "
			      "mid-restore but the destination counted no break",
			      name);
	ck_assert_msg(strstr(sc.src_res.log, "adopt") == NULL,
		      "%s: the restarted source warned: %s", name, sc.src_res.log);
	switch (kp) {
	case KILL_BEFORE_PAGE:
		/* nothing had arrived on the main connection: the restarted
		 * source sent it all (some twice after the cut), except what
		 * the first one's urgent thread answered before it died (it
		 * is not stalled), which the destination counts as urgent */
		ck_assert_msg(urgent ? sc.src_res.st.host_pages_received +
				       sc.st.urgent_pages >= total
				     : sc.src_res.st.host_pages_received == total,
			      "%s: the restarted source sent %llu of %llu host pages",
			      name, (unsigned long long)sc.src_res.st.host_pages_received,
			      (unsigned long long)total);
		break;
	case KILL_MID:
		/* only what was missing */
		ck_assert_msg(sc.src_res.st.host_pages_received > 0 &&
			      sc.src_res.st.host_pages_received < total,
			      "%s: the restarted source sent %llu of %llu host pages",
			      name, (unsigned long long)sc.src_res.st.host_pages_received,
			      (unsigned long long)total);
		break;
	default:
		/* everything was there: the new source only heard DONE */
		ck_assert_uint_eq(sc.src_res.st.host_pages_received, 0);
		ck_assert_int_eq(sc.src_res.conns, 1);
		if (manual)
			ck_assert_msg(sc.confirm_rc == 0, "%s: pcopy_dest_resume after "
				      "completion: %s", name, pcopy_strerror(sc.confirm_rc));
		break;
	}
	if (sc.standby_zlib)	/* zlib was not the session's: not used */
		ck_assert_msg(sc.st.pages_zlib == 0 && sc.src_res.st.pages_zlib == 0,
			      "%s: %llu zlib pages in a session without zlib", name,
			      (unsigned long long)sc.st.pages_zlib);
	if (urgent && kp != KILL_AFTER_END) {
		ck_assert_msg(sc.src_res.st.breaks >= 1,
			      "%s: the adopted session was never cut and resumed", name);
		/* by hand, only the main connection is resumed */
		ck_assert_msg(sc.src_res.conns >= (manual ? 2 : 4),
			      "%s: the restarted source saw %d connections "
			      "(adopting resume, %sresume%s)", name, sc.src_res.conns,
			      manual ? "" : "urgent, ", manual ? "" : ", urgent");
	}
}
END_TEST

/*
 * A restarted source with a different image (half the size) refuses to
 * adopt, saying why; the destination fails cleanly at its deadline with
 * that reason. _i: 0 connect callback, 1 manual resume.
 */
START_TEST(test_source_killed_mismatch)
{
	struct tl_source_cfg img, other;
	struct scen sc;
	char name[64];

	memset(&sc, 0, sizeof(sc));
	sc.mem = TL_MEM_ANON;
	snprintf(name, sizeof(name), "source-killed/other-image/%s",
		 _i ? "manual" : "callback");
	sc.name = name;
	sc.manual = _i == 1;
	sc.touchers = TOUCHERS;
	sc.nsrc = 2;
	sc.adopt = true;
	sc.outcome = OUT_COMPLETE_OR_FAIL;
	sc.dest_deadline_ms = 1500;
	rs_one_region(&img, sc.mem, rl_test_bytes(DEF_MB / 2));
	other = img;
	other.lengths[0] /= 2;
	sc.standby_img = &other;
	sc.seed = rl_seed(name);
	rs_add_rule(&sc, "b2a:throttle=8m,conn=1");
	sc.hook = kill_source;
	sc.hook_arg = rs_wire_estimate(&img) / 4;
	if (!rs_run(&sc, &img))
		return;
	ck_assert_msg(sc.hook_done, "%s: the restore ended before the kill", name);
	ck_assert_msg(sc.rc == -ENOLINK, "%s: rc %d (%s): %s", name, sc.rc,
		      pcopy_strerror(sc.rc), sc.err);
	/* the destination's error carries the refusal, not just "no new
	 * connection" */
	ck_assert_msg(strstr(sc.err, "cannot adopt") && strstr(sc.err, "length"),
		      "%s: the error does not give the refusal: %s", name, sc.err);
	ck_assert_msg(strstr(sc.err, "1500 ms"), "%s: no deadline in: %s", name,
		      sc.err);
	ck_assert_msg(sc.t_end - sc.t_hook >= 1500 * 9 / 10 &&
		      sc.t_end - sc.t_hook <= 1500 + 2500,
		      "%s: failed %llu ms after the kill (deadline 1500 ms)", name,
		      (unsigned long long)(sc.t_end - sc.t_hook));
	ck_assert_uint_gt(sc.resident, 0);
	/* and the restarted source said so and ended */
	ck_assert_int_eq(sc.src_res_rc, 0);
	ck_assert_int_eq(sc.src_res.rc, -EPROTO);
	ck_assert_msg(strstr(sc.src_res.msg, "cannot adopt"), "%s: source: %s",
		      name, sc.src_res.msg);
}
END_TEST

/*
 * The resume deadline: the source dies for good (nothing listens any more),
 * the destination must fail after resume_deadline_ms with the reason, in
 * both failure modes: _i 0 SIGBUS (blocked threads get SIGBUS), 1 BLOCK
 * (they stay blocked, never see a zero page, and get SIGSEGV at destroy).
 */
START_TEST(test_deadline)
{
	const int deadline = 1000;
	struct tl_source_cfg img;
	struct scen sc;
	char name[64];

	memset(&sc, 0, sizeof(sc));
	sc.mem = TL_MEM_ANON;
	snprintf(name, sizeof(name), "deadline/%s", _i ? "block" : "sigbus");
	sc.name = name;
	sc.touchers = TOUCHERS;
	sc.fail_block = _i == 1;
	sc.outcome = OUT_COMPLETE_OR_FAIL;
	sc.dest_deadline_ms = deadline;
	rs_one_region(&img, sc.mem, rl_test_bytes(DEF_MB));
	sc.seed = rl_seed(name);
	rs_add_rule(&sc, "b2a:throttle=8m,conn=1");
	sc.hook = kill_source;
	sc.hook_arg = rs_wire_estimate(&img) / 4;
	if (!rs_run(&sc, &img))
		return;
	ck_assert_msg(sc.hook_done, "%s: the restore ended before the kill", name);
	ck_assert_msg(sc.rc == -ENOLINK, "%s: rc %d (%s), want -ENOLINK", name,
		      sc.rc, pcopy_strerror(sc.rc));
	ck_assert_msg(strstr(sc.err, "1000 ms"), "%s: the reason does not name the "
		      "deadline: %s", name, sc.err);
	ck_assert_msg(sc.t_end - sc.t_hook >= (uint64_t)deadline * 9 / 10 &&
		      sc.t_end - sc.t_hook <= (uint64_t)deadline + 2500,
		      "%s: failed %llu ms after the kill (deadline %d ms)", name,
		      (unsigned long long)(sc.t_end - sc.t_hook), deadline);
	ck_assert_uint_gt(sc.resident, 0);
}
END_TEST

/* ---- (e) destination killed: the source notices and lets go ---- */

static void dest_child(const struct tl_source_cfg *img, int fd)
{
	struct tl_mapping maps[4];
	struct pcopy_region regions[4];
	struct pcopy_dest_opts o;
	struct pcopy_dest *d;
	struct rl_toucher ts[2];

	for (unsigned i = 0; i < img->nregions; i++)
		if (tl_map(TL_MEM_ANON, img->lengths[i], &maps[i]))
			_exit(2);
	tl_regions(img, maps, regions);
	pcopy_dest_opts_init(&o);
	o.keepalive_ms = 300;
	if (pcopy_dest_create(&d, regions, img->nregions, &o))
		_exit(3);
	rl_touchers_start(ts, 2, img->nregions, regions, true);
	if (pcopy_dest_start(d, fd))
		_exit(4);
	pcopy_dest_wait(d, 60000);
	_exit(5);
}

/* _i: 0 SIGKILL (the source sees EOF), 1 SIGSTOP (only the keepalive can
 * tell: the socket stays open), 2 SIGKILL with PCOPY_SOURCE_NO_RESUME (the
 * source ends at once). */
START_TEST(test_dest_killed)
{
	const int deadline = 1000, keepalive = 300;
	struct tl_source_cfg img;
	struct rl_src src;
	struct rl_src_result res;
	struct rl_src_opts so = { .resume_deadline_ms = deadline,
				  .keepalive_ms = keepalive, .no_resume = _i == 2 };
	const char *what = _i == 0 ? "kill" : _i == 1 ? "stop" : "kill-no-resume";
	struct proxy_conn_stats st;
	struct proxy_rule rule;
	struct proxy *px;
	char err[128];
	uint64_t t_kill, t_end;
	pid_t dpid;
	int sv[2], up, rc;

	rs_one_region(&img, TL_MEM_ANON, rl_test_bytes(DEF_MB));
	/* the source child must not inherit the destination's socket, or
	 * killing the destination would not close it */
	ck_assert_int_eq(rl_src_spawn(&img, &so, &src), 0);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	dpid = fork();
	ck_assert_int_ge(dpid, 0);
	if (dpid == 0) {
		close(sv[1]);
		dest_child(&img, sv[0]);
	}
	close(sv[0]);
	up = rl_src_connect(&src);
	ck_assert_int_ge(up, 0);
	ck_assert_int_eq(proxy_create(&px, 0, stderr), 0);
	ck_assert_int_eq(proxy_parse_rule("b2a:throttle=4m", &rule, err, sizeof(err)), 0);
	ck_assert_int_eq(proxy_add_rule(px, &rule), 0);
	ck_assert_int_eq(proxy_start(px), 0);
	ck_assert_int_eq(proxy_attach(px, sv[1], up), 1);

	/* kill once pages are flowing */
	t_kill = rs_now_ms() + 20000;
	while (rs_now_ms() < t_kill) {
		if (proxy_stats(px, 1, &st) == 0 &&
		    st.dir[PROXY_B2A].bytes_out >= (512u << 10))
			break;
		usleep(10000);
	}
	ck_assert_uint_ge(st.dir[PROXY_B2A].bytes_out, 512u << 10);
	t_kill = rs_now_ms();
	kill(dpid, _i == 1 ? SIGSTOP : SIGKILL);
	rc = rl_src_result(&src, deadline + keepalive * 3 + 10000, &res);
	t_end = rs_now_ms();
	kill(dpid, SIGKILL);
	waitpid(dpid, NULL, 0);
	proxy_destroy(px);
	ck_assert_msg(rc == 0, "source child gave no result (%d)", rc);
	fprintf(stderr, "dest-killed/%s: source ended after %llu ms (paused %d ms): "
		"rc %d (%s) '%s'; fds %d -> %d\n", what,
		(unsigned long long)(t_end - t_kill), res.wait_ms, res.rc,
		pcopy_strerror(res.rc), res.msg, res.fds_before, res.fds_after);
	ck_assert_msg(res.rc < 0, "the source did not fail (%d)", res.rc);
	ck_assert_msg(_i == 2 ? res.rc == -ECONNRESET || res.rc == -EPIPE
			      : res.rc == -ENOLINK,
		      "unexpected error %s: %s", pcopy_strerror(res.rc), res.msg);
	ck_assert_str_ne(res.msg, "");
	ck_assert_int_eq(res.fds_after, res.fds_before);
	if (_i == 2) {
		/* no resume: no pause, the end comes with the EOF */
		ck_assert_msg(res.wait_ms < 0, "paused %d ms without resume", res.wait_ms);
		ck_assert_msg(t_end - t_kill < (uint64_t)deadline,
			      "the source took %llu ms to notice",
			      (unsigned long long)(t_end - t_kill));
		ck_assert_msg(strstr(res.msg, "closed"), "reason: %s", res.msg);
		return;
	}
	/* it waited for the destination to come back, then gave up */
	ck_assert_msg(res.wait_ms >= deadline * 8 / 10,
		      "the source paused only %d ms (deadline %d)", res.wait_ms, deadline);
	ck_assert_msg(t_end - t_kill <= (uint64_t)(deadline + keepalive * 2 + 3000),
		      "the source took %llu ms to let go",
		      (unsigned long long)(t_end - t_kill));
	/* and it knew why: EOF for a dead process, silence for a stopped one */
	ck_assert_msg(strstr(res.msg, _i ? "keepalive" : "closed"),
		      "the source's reason does not say '%s': %s",
		      _i ? "keepalive" : "closed", res.msg);
	ck_assert_int_eq(res.fds_after, res.fds_before);
}
END_TEST

/* ---- a slow urgent connection: END on the main one overtakes it ---- */

/*
 * Requested pages go out on the urgent connection (here throttled to a
 * trickle) while the main one finishes the background and sends END: the
 * destination must wait for the pages still on their way, not call END a
 * protocol error.
 */
START_TEST(test_urgent_slow)
{
	struct tl_source_cfg img;
	struct scen sc;

	memset(&sc, 0, sizeof(sc));
	sc.mem = TL_MEM_ANON;
	sc.name = "urgent-slow";
	sc.touchers = TOUCHERS;
	sc.urgent = true;
	rs_one_region(&img, sc.mem, rl_test_bytes(DEF_MB / 4));
	sc.seed = rl_seed(sc.name);
	/* the main connection not so fast that every page is there before
	 * the first request goes out on the urgent one */
	rs_add_rule(&sc, "b2a:throttle=4m,conn=1");
	rs_add_rule(&sc, "b2a:throttle=64k,conn=2");
	if (!rs_run(&sc, &img))
		return;
	ck_assert_uint_gt(sc.st.urgent_pages, 0);
}
END_TEST

/* ---- the last message lost: DONE never reaches the source ---- */

/*
 * The destination has every page and sends DONE; the connection breaks
 * right before DONE gets through (_i 0) or inside it (_i 1). The restore is
 * complete, so the source must end with success too, not sit paused until
 * its resume deadline and then report a failure.
 */
START_TEST(test_done_lost)
{
	struct tl_source_cfg img;
	struct scen sc;
	char name[64], spec[96];

	memset(&sc, 0, sizeof(sc));
	sc.mem = TL_MEM_ANON;
	snprintf(name, sizeof(name), "done-lost/%s%s", _i & 1 ? "inside" : "before",
		 _i & 2 ? "/manual" : "");
	sc.name = name;
	/* without a connect callback the application confirms DONE: one
	 * more connection handed in after completion */
	sc.manual = sc.confirm = _i & 2;
	sc.touchers = TOUCHERS;
	sc.src_deadline_ms = 3000;
	rs_one_region(&img, sc.mem, rl_test_bytes(DEF_MB / 4));
	sc.seed = rl_seed(name);
	snprintf(spec, sizeof(spec), "a2b:cut-frame@%u=0,type=%u,conn=1",
		 _i & 1 ? 10u : 0u, PCOPY_MSG_DONE);
	rs_add_rule(&sc, spec);
	if (!rs_run(&sc, &img))
		return;
	/* rs_run has checked both ends succeeded. The cut may fire after
	 * pcopy_dest_wait returned (it does not wait for the echo), so
	 * sc.cuts_fired can still be 0 here; the source's second connection
	 * shows that the cut came and DONE went again on a resume. */
	ck_assert_msg(sc.src_res.conns == 2, "%s: the source saw %d connections, "
		      "want 2 (the cut one, the resume)", name, sc.src_res.conns);
	if (sc.confirm)
		ck_assert_msg(sc.confirm_rc == 0, "%s: pcopy_dest_resume after "
			      "completion: %s", name, pcopy_strerror(sc.confirm_rc));
}
END_TEST

/* ---- (f) stalls longer than the keepalive ---- */

/*
 * _i: 0 the page stream stalls 4 s (the destination's keepalive, 300 ms,
 * must fire); 1 the request stream stalls 4 s while pages flow slowly (the
 * source's keepalive must fire); 2 a 100 ms stall with a 2 s keepalive
 * (no break may happen).
 */
START_TEST(test_stall)
{
	struct tl_source_cfg img;
	struct scen sc;
	char name[64], spec[96];
	uint64_t hello, w;

	memset(&sc, 0, sizeof(sc));
	sc.mem = TL_MEM_ANON;
	snprintf(name, sizeof(name), "stall/%s",
		 _i == 0 ? "pages" : _i == 1 ? "requests" : "short");
	sc.name = name;
	sc.touchers = TOUCHERS;
	rs_one_region(&img, sc.mem, rl_test_bytes(DEF_MB));
	sc.seed = rl_seed(name);
	hello = rl_hello_bytes(&img);
	w = rs_wire_estimate(&img);
	switch (_i) {
	case 0:
		sc.dest_keepalive_ms = 300;
		sc.src_keepalive_ms = 300;
		snprintf(spec, sizeof(spec), "b2a:stall@%" PRIu64 "=4000,conn=1",
			 hello + w / 4);
		rs_add_rule(&sc, spec);
		break;
	case 1:
		sc.dest_keepalive_ms = 300;
		sc.src_keepalive_ms = 300;
		rs_add_rule(&sc, "b2a:throttle=2m,conn=1");
		snprintf(spec, sizeof(spec), "a2b:stall@%" PRIu64 "=4000,conn=1", hello);
		rs_add_rule(&sc, spec);
		break;
	default:
		sc.dest_keepalive_ms = 2000;
		sc.src_keepalive_ms = 2000;
		snprintf(spec, sizeof(spec), "b2a:stall@%" PRIu64 "=100,conn=1",
			 hello + w / 4);
		rs_add_rule(&sc, spec);
		break;
	}
	if (!rs_run(&sc, &img))
		return;
	if (_i == 2) {
		ck_assert_msg(sc.st.breaks == 0, "%s: a 100 ms stall broke the "
			      "connection with a 2 s keepalive", name);
		return;
	}
	ck_assert_msg(sc.st.breaks >= 1, "%s: the stall was not detected", name);
	/* recovered by resuming, not by waiting the stall out */
	ck_assert_msg(sc.st.elapsed_ns < 3500000000ull,
		      "%s: took %llu ms: the stall was waited out", name,
		      (unsigned long long)(sc.st.elapsed_ns / 1000000));
}
END_TEST

static int suite_reserved;

static void hugetlb_setup(void)
{
	char why[256];

	suite_reserved = tl_hugetlb_reserve(rl_test_bytes(DEF_MB) / TL_HUGE, why,
					    sizeof(why));
}

static void hugetlb_teardown(void)
{
	if (suite_reserved > 0)
		tl_hugetlb_release();
}

static Suite *make_recovery_suite(void)
{
	Suite *s = suite_create("recovery");
	TCase *tc;

	tc = tcase_create("random-cuts");
	tcase_set_timeout(tc, 120);
	tcase_add_unchecked_fixture(tc, hugetlb_setup, hugetlb_teardown);
	tcase_add_loop_test(tc, test_random_cuts, 0, 5);
	suite_add_tcase(s, tc);

	tc = tcase_create("cuts-in-resume");
	tcase_set_timeout(tc, 120);
	tcase_add_unchecked_fixture(tc, hugetlb_setup, hugetlb_teardown);
	tcase_add_loop_test(tc, test_cuts_in_resume, 0, 3);
	suite_add_tcase(s, tc);

	tc = tcase_create("corrupt");
	tcase_set_timeout(tc, 120);
	tcase_add_loop_test(tc, test_corrupt, 0, NCORRUPT);
	suite_add_tcase(s, tc);

	tc = tcase_create("source-killed");
	tcase_set_timeout(tc, 120);
	tcase_add_unchecked_fixture(tc, hugetlb_setup, hugetlb_teardown);
	tcase_add_loop_test(tc, test_source_killed, 0, KILL_POINTS * 4);
	tcase_add_loop_test(tc, test_source_killed_mismatch, 0, 2);
	suite_add_tcase(s, tc);

	tc = tcase_create("deadline");
	tcase_set_timeout(tc, 120);
	tcase_add_loop_test(tc, test_deadline, 0, 2);
	suite_add_tcase(s, tc);

	tc = tcase_create("dest-killed");
	tcase_set_timeout(tc, 120);
	tcase_add_loop_test(tc, test_dest_killed, 0, 3);
	suite_add_tcase(s, tc);

	tc = tcase_create("urgent-slow");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_urgent_slow);
	suite_add_tcase(s, tc);

	/* issue 4: the source echoes DONE; a destination that loses the
	 * connection before the echo resumes once more to send DONE again */
	tc = tcase_create("done-lost");
	tcase_set_timeout(tc, 120);
	tcase_add_loop_test(tc, test_done_lost, 0, 4);
	suite_add_tcase(s, tc);

	tc = tcase_create("stall");
	tcase_set_timeout(tc, 120);
	tcase_add_loop_test(tc, test_stall, 0, 3);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(make_recovery_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
