/* SPDX-License-Identifier: MIT */
/*
 * Running one recovery scenario: fork the sources, set up the destination
 * and the proxy, touch memory from several threads while the restore runs
 * through the proxy's faults, then check the outcome.
 */
#include "recovery_scen.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define RUN_LIMIT_MS 45000	/* a restore that takes longer has hung */

uint64_t rs_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int count_fds(void)
{
	int n = 0;

	for (int fd = 0; fd < 4096; fd++)
		if (fcntl(fd, F_GETFD) >= 0)
			n++;
	return n;
}

void rs_add_rule(struct scen *sc, const char *spec)
{
	char err[256];

	ck_assert_uint_lt(sc->nrules, PROXY_RULES_MAX);
	ck_assert_msg(proxy_parse_rule(spec, &sc->rules[sc->nrules], err,
				       sizeof(err)) == 0, "rule %s: %s", spec, err);
	sc->nrules++;
}

void rs_one_region(struct tl_source_cfg *img, enum tl_mem mem, size_t len)
{
	memset(img, 0, sizeof(*img));
	img->nregions = 1;
	img->names[0] = "ram";
	img->lengths[0] = len;
	img->page_sizes[0] = tl_mem_page_size(mem);
}

/* Wire bytes the image costs roughly: the non-zero pages (ZERO frames are
 * headers only). Cut positions are spread over it. */
uint64_t rs_wire_estimate(const struct tl_source_cfg *img)
{
	uint64_t w = 0;

	for (unsigned r = 0; r < img->nregions; r++)
		for (uint64_t pg = 0; pg < img->lengths[r] / TL_PAGE; pg++)
			w += tl_page_is_zero(r, pg) ? 32 : TL_PAGE + 32;
	return w;
}

static unsigned count_cuts(struct proxy *px)
{
	unsigned n = 0, k, conns = proxy_conns(px);
	struct proxy_conn_stats st;

	for (k = 1; k <= conns; k++)
		if (proxy_stats(px, k, &st) == 0 &&
		    (st.dir[PROXY_A2B].cut || st.dir[PROXY_B2A].cut))
			n++;
	return n;
}

static void on_event(void *opaque, int err)
{
	struct scen *sc = opaque;

	/* the restore is complete, its DONE lost: the source dies before it
	 * hears of it, and the standby must confirm it */
	if (err == 0 && sc->kill_on_complete && sc->rd && !sc->hook_done) {
		sc->hook_done = true;
		atomic_store(&sc->rd->cur, 1);
		kill(sc->rd->src[0].pid, SIGKILL);
		sc->t_hook = rs_now_ms();
		fprintf(stderr, "%s: complete; SIGKILL source pid %d\n", sc->name,
			(int)sc->rd->src[0].pid);
	}

	atomic_store(&sc->event_err, err);
	atomic_fetch_add(&sc->events, 1);
}

/*
 * Run one restore as described by sc, with the image img. Fills the result
 * fields of sc; asserts the invariants that hold whatever the outcome: no
 * toucher saw a wrong byte, resident memory is right, nothing leaked.
 * Returns false if skipped.
 */
bool rs_run(struct scen *sc, const struct tl_source_cfg *img)
{
	struct rl_toucher ts[8];
	struct rl_dest r;
	struct pcopy_dest_opts o;
	char why[256] = "";
	uintptr_t lo = UINTPTR_MAX, hi = 0;
	uint64_t t0, end;
	int fds0, rc;
	unsigned left;

	memset(&r, 0, sizeof(r));
	ck_assert_uint_le(sc->touchers, 8);
	fds0 = count_fds();
	rc = rl_dest_map(&r, img, sc->mem, sc->name);
	if (rc == 1)
		return false;
	ck_assert_msg(rc == 0, "map: %s", strerror(-rc));
	rl_log_init(&r.log, sc->name);
	sc->rd = &r;

	pcopy_dest_opts_init(&o);
	o.log = rl_log_fn;
	o.log_opaque = &r.log;
	o.fail_mode = sc->fail_block ? PCOPY_FAIL_BLOCK : PCOPY_FAIL_SIGBUS;
	o.on_event = on_event;
	o.event_opaque = sc;
	o.resume_deadline_ms = sc->dest_deadline_ms ? sc->dest_deadline_ms : 20000;
	o.keepalive_ms = sc->dest_keepalive_ms;
	if (sc->psk) {
		o.psk = sc->psk;
		o.psk_len = strlen(sc->psk);
	}
	if (!sc->manual) {
		o.connect = rl_connect;
		o.connect_opaque = &r;
	}
	/* Every child is forked while this process is still single-threaded,
	 * and before the userfaultfd exists (a child must not hold it open). */
	r.nsrc = sc->nsrc ? sc->nsrc : 1;
	for (unsigned i = 0; i < r.nsrc; i++) {
		struct rl_src_opts so = {
			.resume_deadline_ms = sc->src_deadline_ms ? sc->src_deadline_ms : 20000,
			.keepalive_ms = sc->src_keepalive_ms,
			.zlib = sc->zlib || (i > 0 && sc->standby_zlib),
			.psk = sc->psk,
			.adopt = i > 0 && sc->adopt,
			.tag = i,
		};

		rc = rl_src_spawn(i > 0 && sc->standby_img ? sc->standby_img : img,
				  &so, &r.src[i]);
		ck_assert_msg(rc == 0, "spawn source: %s", strerror(-rc));
	}

	rc = pcopy_dest_create(&r.d, r.regions, img->nregions, &o);
	ck_assert_msg(rc == 0, "dest_create: %s", pcopy_strerror(rc));

	ck_assert_int_eq(proxy_create(&r.px, sc->seed, stderr), 0);
	for (unsigned i = 0; i < sc->nrules; i++)
		ck_assert_int_eq(proxy_add_rule(r.px, &sc->rules[i]), 0);
	ck_assert_int_eq(proxy_start(r.px), 0);

	for (unsigned i = 0; i < img->nregions; i++) {
		uintptr_t a = (uintptr_t)r.maps[i].addr;

		lo = a < lo ? a : lo;
		hi = a + img->lengths[i] > hi ? a + img->lengths[i] : hi;
	}
	rl_signals_install(lo, hi);
	rl_touchers_start(ts, sc->touchers, img->nregions, r.regions, true);

	t0 = rs_now_ms();
	rc = rl_connect(&r, 0);
	ck_assert_msg(rc >= 0, "connect: %s", strerror(-rc));
	rc = pcopy_dest_start(r.d, rc);
	ck_assert_msg(rc == 0, "%s: dest_start: %s: %s", sc->name,
		      pcopy_strerror(rc), pcopy_dest_error(r.d));
	if (sc->urgent) {
		/* the first connection may already be cut (-ENOTCONN: paused):
		 * try again once the reconnect thread has resumed */
		for (unsigned tries = 0; tries < 250; tries++) {
			rc = rl_connect(&r, 1);
			ck_assert_msg(rc >= 0, "connect urgent: %s", strerror(-rc));
			rc = pcopy_dest_add_urgent(r.d, rc);
			if (rc != -ENOTCONN)
				break;
			usleep(20000);
		}
		/* A cut may also land inside the urgent handshake itself: the
		 * restore then goes on without it (or the reconnect thread adds
		 * it back); it must still complete with every byte right. */
		if (rc == -ECONNRESET || rc == -EPIPE || rc == -ETIMEDOUT) {
			fprintf(stderr, "%s: urgent handshake cut (%s); continuing\n",
				sc->name, pcopy_strerror(rc));
			sc->urgent_cut = true;
		}
		else
			ck_assert_msg(rc == 0 || (rc == -EALREADY && pcopy_dest_wait(r.d, 0) == 0),
				      "%s: add_urgent: %s: %s", sc->name,
				      pcopy_strerror(rc), pcopy_dest_error(r.d));
	}

	end = t0 + RUN_LIMIT_MS;
	for (;;) {
		rc = pcopy_dest_wait(r.d, 50);
		/* -ETIMEDOUT only ever means "still running": a restore that
		 * failed at its resume deadline ends with -ENOLINK */
		if (rc != -ETIMEDOUT || rs_now_ms() > end)
			break;
		/* The message is set just before the end is published, so a
		 * non-empty message with -ETIMEDOUT is a race, not a defect:
		 * the end must follow promptly. */
		if (pcopy_dest_error(r.d)[0])
			ck_assert_msg(pcopy_dest_wait(r.d, 2000) != -ETIMEDOUT,
				      "%s: wait still says -ETIMEDOUT (running) 2 s "
				      "after the restore failed: %s", sc->name,
				      pcopy_dest_error(r.d));
		if (sc->hook)
			sc->hook(&r, sc, rs_now_ms() - t0);
		if (sc->manual && pcopy_dest_paused(r.d) == 1) {
			int fd = rl_connect(&r, 0);

			if (fd >= 0) {
				sc->resumes_called++;
				if (pcopy_dest_resume(r.d, fd) == 0)
					sc->resumes_ok++;
			}
		}
	}
	if (rc == 0 && sc->confirm) {
		int fd = rl_connect(&r, 0);

		sc->confirm_rc = fd >= 0 ? pcopy_dest_resume(r.d, fd) : fd;
		fprintf(stderr, "%s: confirming DONE by hand: %d (%s)\n", sc->name,
			sc->confirm_rc, pcopy_strerror(sc->confirm_rc));
	}
	sc->rc = rc;
	sc->t_end = rs_now_ms();
	snprintf(sc->err, sizeof(sc->err), "%s", pcopy_dest_error(r.d));
	pcopy_dest_stats(r.d, &sc->st);
	sc->cuts_fired = count_cuts(r.px);
	fprintf(stderr, "%s: rc %d (%s) after %llu ms; %s; breaks %llu, resent %llu, "
		"cuts fired %u, connects %u (%u refused), resumes %u/%u\n",
		sc->name, rc, pcopy_strerror(rc),
		(unsigned long long)(rs_now_ms() - t0), sc->err,
		(unsigned long long)sc->st.breaks,
		(unsigned long long)sc->st.resent_pages, sc->cuts_fired,
		atomic_load(&r.connects), atomic_load(&r.connect_fails),
		sc->resumes_ok, sc->resumes_called);
	ck_assert_msg(rc != -ETIMEDOUT,
		      "%s: restore still running after %d ms "
		      "(paused %d, %llu/%llu host pages; seed %llu)", sc->name,
		      RUN_LIMIT_MS, pcopy_dest_paused(r.d),
		      (unsigned long long)sc->st.host_pages_received,
		      (unsigned long long)sc->st.host_pages_total,
		      (unsigned long long)sc->seed);

	if (rc == 0) {
		left = rl_touchers_join(ts, sc->touchers, 30000);
		ck_assert_msg(left == 0, "%s: %u touchers still blocked after completion",
			      sc->name, left);
		ck_assert_msg(rl_verify_all(&r, why, sizeof(why)) == 0,
			      "%s: wrong image after restore: %s (seed %llu)",
			      sc->name, why, (unsigned long long)sc->seed);
		ck_assert_uint_eq(sc->st.host_pages_received, sc->st.host_pages_total);
	} else {
		ck_assert_msg(sc->outcome == OUT_COMPLETE_OR_FAIL,
			      "%s: restore failed: %s: %s (seed %llu)", sc->name,
			      pcopy_strerror(rc), sc->err, (unsigned long long)sc->seed);
		ck_assert_msg(sc->err[0], "%s: failed (%d) without a message",
			      sc->name, rc);
		if (sc->fail_block) {
			/* BLOCK mode: they stay blocked (no zero page) until
			 * destroy makes the rest PROT_NONE: then SIGSEGV */
			left = rl_touchers_join(ts, sc->touchers, 500);
			ck_assert_msg(left > 0, "%s: every toucher returned after the "
				      "failure in BLOCK mode", sc->name);
			ck_assert_msg(rl_verify_present(&r, &sc->resident, why,
							sizeof(why)) == 0,
				      "%s: wrong byte in received memory: %s",
				      sc->name, why);
			pcopy_dest_destroy(r.d);
			r.d = NULL;
			left = rl_touchers_join(ts, sc->touchers, 10000);
			ck_assert_msg(left == 0, "%s: %u touchers still blocked after "
				      "destroy", sc->name, left);
			for (unsigned i = 0; i < sc->touchers; i++)
				ck_assert_msg(ts[i].sig == 0 || ts[i].sig == SIGSEGV,
					      "%s: toucher %u got signal %d in BLOCK mode",
					      sc->name, i, ts[i].sig);
		} else {
			/* SIGBUS mode: every blocked toucher is released */
			left = rl_touchers_join(ts, sc->touchers, 10000);
			ck_assert_msg(left == 0, "%s: %u touchers still blocked %d ms "
				      "after the failure in SIGBUS mode", sc->name,
				      left, 10000);
			ck_assert_msg(rl_verify_present(&r, &sc->resident, why,
							sizeof(why)) == 0,
				      "%s: wrong byte in received memory: %s",
				      sc->name, why);
		}
	}
	/* the event callback ran exactly once, with the result */
	ck_assert_msg(atomic_load(&sc->events) == 1, "%s: %d event callbacks",
		      sc->name, atomic_load(&sc->events));
	ck_assert_msg(atomic_load(&sc->event_err) == rc, "%s: event said %d, wait %d",
		      sc->name, atomic_load(&sc->event_err), rc);
	for (unsigned i = 0; i < sc->touchers; i++)
		ck_assert_msg(ts[i].bad == 0, "%s: toucher %u saw %lu wrong pages; "
			      "first %s (seed %llu)", sc->name, i, ts[i].bad,
			      ts[i].first_bad, (unsigned long long)sc->seed);

	pcopy_dest_destroy(r.d);
	r.d = NULL;
	/* the source of the session that ended last reports */
	{
		unsigned cur = atomic_load(&r.cur);

		sc->src_res_rc = rl_src_result(&r.src[cur < r.nsrc ? cur : 0],
					       rc == 0 ? 15000 : 3000, &sc->src_res);
		if (sc->src_res_rc == 0)
			fprintf(stderr, "%s: source: rc %d conns %d add_errors %d%s%s %s\n",
				sc->name, sc->src_res.rc, sc->src_res.conns,
				sc->src_res.add_errors,
				sc->src_res.add_msg[0] ? " first: " : "",
				sc->src_res.add_msg, sc->src_res.msg);
	}
	for (unsigned i = 0; sc->detect && i < 5 && sc->detect[i]; i++)
		if (rl_log_has(&r.log, sc->detect[i]) ||
		    strcasestr(sc->err, sc->detect[i]) ||
		    strcasestr(sc->src_res.log, sc->detect[i]))
			sc->detected = true;
	if (rc == 0) {
		ck_assert_msg(sc->src_res_rc == 0, "%s: the destination completed, "
			      "the source gave no result within 15 s (%d): still paused?",
			      sc->name, sc->src_res_rc);
		ck_assert_msg(sc->src_res.rc == 0, "%s: the destination completed, the "
			      "source ended with %s: %s", sc->name,
			      pcopy_strerror(sc->src_res.rc), sc->src_res.msg);
	}
	rl_dest_fini(&r);
	sc->rd = NULL;
	rl_log_fini(&r.log);
	ck_assert_int_eq(count_fds(), fds0);
	return true;
}

