/* SPDX-License-Identifier: MIT */
/*
 * The hostile DESTINATION half of test/check_hostile: a scripted
 * destination sends the real source bad requests (out of range, misaligned,
 * overflowing, too many entries, wrong types), floods it with valid ones,
 * and attacks the resume path (foreign session, bad bitmap, wrong key, a bad
 * request after every resume). Each must end in its specific error, with
 * bounded memory, and an honest destination must still be served.
 */
#include <check.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common.h"
#include "postcopy.h"
#include "recovery_hdst.h"
#include "source.h"
#include "wire.h"

#define TP 4096u

#define SRC_LEN (64u << 20)	/* 16384 host pages */

enum hd {
	HD_REGION, HD_OFFSET_END, HD_MISALIGNED, HD_COUNT_ZERO, HD_WRAP,
	HD_TOO_MANY_ENTRIES, HD_LENGTH_MISMATCH, HD_BITMAP_ON_MAIN, HD_HELLO_AGAIN,
	HD_DONE_EARLY, HD_PAGE_FROM_DEST, HD_FLOOD, HD_RESUME_WRONG_SESSION,
	HD_RESUME_BAD_BITMAP, HD_BAD_REQ_EVERY_RESUME, HD_RESUME_WRONG_KEY,
	HD_COUNT
};

static const struct { const char *name; int err; const char *msg; } hd_cases[HD_COUNT] = {
	[HD_REGION] = { "req-region-out-of-range", -EPROTO, "region" },
	[HD_OFFSET_END] = { "req-past-end", -EPROTO, "REQ" },
	[HD_MISALIGNED] = { "req-misaligned", -EPROTO, "align" },
	[HD_COUNT_ZERO] = { "req-count-zero", -EPROTO, "count" },
	[HD_WRAP] = { "req-offset-wraps", -EPROTO, "REQ" },
	[HD_TOO_MANY_ENTRIES] = { "req-5000-entries", -EPROTO, "entries" },
	[HD_LENGTH_MISMATCH] = { "req-length-mismatch", -EPROTO, "REQ" },
	[HD_BITMAP_ON_MAIN] = { "bitmap-on-main", -EPROTO, "type 7" },
	[HD_HELLO_AGAIN] = { "hello-mid-session", -EPROTO, "type 1" },
	[HD_DONE_EARLY] = { "done-early", -EPROTO, "DONE" },
	[HD_PAGE_FROM_DEST] = { "page-from-destination", -EPROTO, "type 2" },
	[HD_FLOOD] = { "request-flood", 0, NULL },
	[HD_RESUME_WRONG_SESSION] = { "resume-wrong-session", 0, NULL },
	[HD_RESUME_BAD_BITMAP] = { "resume-bad-bitmap", 0, NULL },
	[HD_BAD_REQ_EVERY_RESUME] = { "bad-req-after-every-resume", 0, NULL },
	[HD_RESUME_WRONG_KEY] = { "resume-wrong-key", 0, NULL },
};

struct hdst {
	int fd;
	enum hd kind;
	const char *psk;	/* key the source holds, or NULL */
	uint64_t session;
	bool got_error;
	char error_text[PCOPY_ERROR_TEXT_MAX + 1];
	uint8_t *buf;
};

static int req_send(struct hdst *h, const struct wire_req *rq, unsigned n,
		    uint32_t count_field, uint32_t len_field)
{
	uint8_t *p = h->buf;
	struct wire_hdr w = { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_REQ,
			      .count = count_field, .length = len_field };

	wire_req_encode(rq, n, p);
	return conn_send_msg(h->fd, &w, p, len_field);
}

/* Read messages until ERROR, EOF, or `pages` host pages and END arrived. */
static uint64_t dst_read(struct hdst *h, int timeout_ms, bool until_end)
{
	uint64_t end = pcopy_now_ns() + (uint64_t)timeout_ms * 1000000ull, pages = 0;
	char err[PCOPY_ERRMSG_MAX];
	struct wire_hdr w;

	for (;;) {
		int rc = conn_recv_msg(h->fd, &w, h->buf, PCOPY_WIRE_PAYLOAD_MAX,
				       end, -1, err, sizeof(err));
		int en = 0;

		if (rc)
			return pages;
		if (w.type == PCOPY_MSG_PAGE)
			pages += w.count;
		if (w.type == PCOPY_MSG_ERROR) {
			h->got_error = true;
			wire_error_decode(h->buf, w.length, &en, h->error_text,
					  sizeof(h->error_text));
			return pages;
		}
		if (w.type == PCOPY_MSG_END && until_end)
			return pages;
	}
}

static long rss_kib(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[128];
	long v = -1;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %ld", &v) == 1)
			break;
	fclose(f);
	return v;
}

struct src_start {
	struct pcopy_source *s;
	int fd, rc;
};

static void *start_main(void *arg)
{
	struct src_start *ss = arg;

	ss->rc = pcopy_source_start(ss->s, ss->fd);
	return NULL;
}

struct add_conn {
	struct pcopy_source *s;
	int fd, rc;
};

static void *add_conn_main(void *arg)
{
	struct add_conn *ac = arg;

	ac->rc = pcopy_source_add_conn(ac->s, ac->fd);
	return NULL;
}

/* Our HELLO; the malformed-input cases do not offer RESUME, so the source
 * ends the session at the first protocol error instead of pausing. */
static void dest_hello(struct wire_hello *h, uint32_t kind, uint64_t session,
		       bool resume)
{
	memset(h, 0, sizeof(*h));
	h->version = PCOPY_WIRE_VERSION;
	h->role = PCOPY_ROLE_DEST;
	h->conn_kind = kind;
	h->features = resume ? PCOPY_FEAT_RESUME : 0;
	h->session_id = session;
	h->target_page = TP;
	h->nregions = 1;
	snprintf(h->regions[0].name, sizeof(h->regions[0].name), "ram");
	h->regions[0].length = SRC_LEN;
	h->regions[0].host_page = TP;
}


/* The handshake, with the AUTH exchange when key != NULL. */
static int hs(int fd, const struct wire_hello *ours, struct wire_hello *peer,
	      const char *key, char *err, size_t errlen)
{
	struct conn_hs_params p = { .psk = key, .psk_len = key ? strlen(key) : 0,
				    .timeout_ms = 5000 };
	uint32_t feat;

	return conn_handshake2(fd, ours, peer, &feat, &p, err, errlen);
}

/* Wait up to ms for the source to pause. */
static bool wait_paused(struct pcopy_source *s, int ms)
{
	for (int i = 0; i < ms / 10; i++) {
		if (pcopy_source_paused(s) == 1)
			return true;
		usleep(10000);
	}
	return false;
}

/*
 * Open a RESUME connection through pcopy_source_add_conn and send the
 * received bitmap (all zero; `extra` host pages more than the region has,
 * when hostile). Returns the new fd (the caller closes it) with *add_rc the
 * result of add_conn, or -1 if the handshake itself failed.
 */
static int resume_conn(struct hdst *h, struct pcopy_source *s, unsigned extra,
		       const char *key, int *add_rc)
{
	static const uint64_t zeros[(SRC_LEN / TP + 64 + 63) / 64];
	const uint64_t *bits = zeros;
	struct add_conn ac = { s, -1, 1 };
	struct wire_hello ours, peer;
	struct wire_hdr w;
	uint8_t *payload = malloc(PCOPY_WIRE_PAYLOAD_MAX);
	char err[PCOPY_ERRMSG_MAX];
	pthread_t thr;
	int sv[2], rc, len;

	ck_assert_ptr_nonnull(payload);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	ac.fd = sv[0];
	ck_assert_int_eq(pthread_create(&thr, NULL, add_conn_main, &ac), 0);
	dest_hello(&ours, PCOPY_CONN_RESUME, h->session, true);
	rc = hs(sv[1], &ours, &peer, key, err, sizeof(err));
	if (rc == 0) {
		memset(&w, 0, sizeof(w));
		len = wire_bitmap_encode(0, bits, SRC_LEN / TP + extra, 0, &w,
					 payload, PCOPY_WIRE_PAYLOAD_MAX);
		ck_assert_int_gt(len, 0);
		w.magic = PCOPY_WIRE_MAGIC;
		w.type = PCOPY_MSG_RECV_BITMAP;
		conn_send_msg(sv[1], &w, payload, (size_t)len);
	}
	pthread_join(thr, NULL);
	free(payload);
	*add_rc = ac.rc;
	if (rc) {
		close(sv[1]);
		return -1;
	}
	return sv[1];
}

START_TEST(test_hostile_dest)
{
	enum hd kind = (enum hd)_i;
	struct pcopy_source_region reg = { "ram", NULL, -1, 0, SRC_LEN, TP };
	struct pcopy_source_opts so;
	struct src_start ss;
	struct wire_hello ours, peer;
	struct wire_req rq[8];
	struct hdst h;
	pthread_t thr;
	uint32_t feat;
	char err[PCOPY_ERRMSG_MAX];
	uint8_t *mem;
	int sv[2], rc;
	long rss0 = 0, rss1 = 0;

	mem = mmap(NULL, SRC_LEN, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(mem, MAP_FAILED);
	for (size_t off = 0; off < SRC_LEN; off += TP * 3)
		mem[off] = (uint8_t)(off >> 12);
	reg.mem = mem;
	pcopy_source_opts_init(&so);
	so.resume_deadline_ms = 2000;
	if (kind == HD_RESUME_WRONG_KEY) {
		so.psk = "the right key";
		so.psk_len = strlen(so.psk);
	}
	ck_assert_int_eq(pcopy_source_create(&ss.s, &reg, 1, &so), 0);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	ss.fd = sv[0];
	memset(&h, 0, sizeof(h));
	h.fd = sv[1];
	h.kind = kind;
	h.psk = kind == HD_RESUME_WRONG_KEY ? "the right key" : NULL;
	h.buf = malloc(PCOPY_WIRE_PAYLOAD_MAX);
	ck_assert_ptr_nonnull(h.buf);
	ck_assert_int_eq(pthread_create(&thr, NULL, start_main, &ss), 0);
	dest_hello(&ours, PCOPY_CONN_MAIN, 0, kind >= HD_FLOOD);
	rc = hs(h.fd, &ours, &peer, h.psk, err, sizeof(err));
	pthread_join(thr, NULL);
	ck_assert_msg(rc == 0, "handshake: %s", err);
	ck_assert_int_eq(ss.rc, 0);
	h.session = peer.session_id;

	memset(rq, 0, sizeof(rq));
	switch (kind) {
	case HD_REGION:
		rq[0] = (struct wire_req){ 1, 1, 0 };
		req_send(&h, rq, 1, 1, 16);
		break;
	case HD_OFFSET_END:
		rq[0] = (struct wire_req){ 0, 1, SRC_LEN };
		req_send(&h, rq, 1, 1, 16);
		break;
	case HD_MISALIGNED:
		rq[0] = (struct wire_req){ 0, 1, 100 };
		req_send(&h, rq, 1, 1, 16);
		break;
	case HD_COUNT_ZERO:
		rq[0] = (struct wire_req){ 0, 0, 0 };
		req_send(&h, rq, 1, 1, 16);
		break;
	case HD_WRAP:
		rq[0] = (struct wire_req){ 0, 2, UINT64_MAX - TP + 1 };
		req_send(&h, rq, 1, 1, 16);
		break;
	case HD_TOO_MANY_ENTRIES: {
		struct wire_req *many = calloc(5000, sizeof(*many));

		for (unsigned i = 0; i < 5000; i++)
			many[i] = (struct wire_req){ 0, 1, (uint64_t)i * TP };
		wire_req_encode(many, 5000, h.buf);
		{
			struct wire_hdr w = { .magic = PCOPY_WIRE_MAGIC,
					      .type = PCOPY_MSG_REQ, .count = 5000,
					      .length = 5000 * 16 };
			conn_send_msg(h.fd, &w, h.buf, 5000 * 16);
		}
		free(many);
		break;
	}
	case HD_LENGTH_MISMATCH:
		rq[0] = (struct wire_req){ 0, 1, 0 };
		rq[1] = (struct wire_req){ 0, 1, TP };
		req_send(&h, rq, 2, 3, 32);
		break;
	case HD_BITMAP_ON_MAIN: {
		struct wire_hdr w = { .magic = PCOPY_WIRE_MAGIC,
				      .type = PCOPY_MSG_RECV_BITMAP, .count = 8,
				      .length = 1 };
		uint8_t b = 0xff;

		conn_send_msg(h.fd, &w, &b, 1);
		break;
	}
	case HD_HELLO_AGAIN: {
		uint8_t hb[4096];
		int n = wire_hello_encode(&ours, hb, sizeof(hb));
		struct wire_hdr w = { .magic = PCOPY_WIRE_MAGIC,
				      .type = PCOPY_MSG_HELLO, .length = (uint32_t)n };

		conn_send_msg(h.fd, &w, hb, (size_t)n);
		break;
	}
	case HD_DONE_EARLY: {
		struct wire_hdr w = { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_DONE };

		conn_send_msg(h.fd, &w, NULL, 0);
		break;
	}
	case HD_PAGE_FROM_DEST: {
		uint8_t page[TP] = { 0 };
		struct wire_hdr w = { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_PAGE,
				      .kind = PCOPY_KIND_RAW, .count = 1, .length = TP };

		conn_send_msg(h.fd, &w, page, TP);
		break;
	}
	case HD_FLOOD: {
		/* 2000 REQs of 4096 entries each (512 MiB worth of pages asked
		 * 16 times over) while reading nothing: the sender blocks on
		 * the full socket, the reader must keep up without growing */
		struct wire_req *many = calloc(PCOPY_REQ_MAX_ENTRIES, sizeof(*many));
		uint64_t x = 99;
		struct wire_hdr w = { .magic = PCOPY_WIRE_MAGIC, .type = PCOPY_MSG_REQ,
				      .count = PCOPY_REQ_MAX_ENTRIES,
				      .length = PCOPY_REQ_MAX_ENTRIES * 16 };

		ck_assert_ptr_nonnull(many);
		rss0 = rss_kib();
		for (unsigned m = 0; m < 2000; m++) {
			for (unsigned i = 0; i < PCOPY_REQ_MAX_ENTRIES; i++) {
				x = x * 6364136223846793005ull + 1442695040888963407ull;
				many[i] = (struct wire_req){ 0, 1,
					((x >> 33) % (SRC_LEN / TP)) * TP };
			}
			wire_req_encode(many, PCOPY_REQ_MAX_ENTRIES, h.buf);
			ck_assert_int_eq(conn_send_msg(h.fd, &w, h.buf, w.length), 0);
		}
		free(many);
		rss1 = rss_kib();
		ck_assert_uint_le(src_debug_queue_capacity(ss.s), SRC_LEN / TP);
		/* then behave: take every page, say DONE */
		ck_assert_uint_eq(dst_read(&h, 20000, true), SRC_LEN / TP);
		{
			struct wire_hdr dn = { .magic = PCOPY_WIRE_MAGIC,
					       .type = PCOPY_MSG_DONE };

			ck_assert_int_eq(conn_send_msg(h.fd, &dn, NULL, 0), 0);
		}
		break;
	}
	case HD_RESUME_WRONG_SESSION: {
		/* a second connection claiming to resume another session is
		 * refused, and the real session goes on undisturbed */
		struct wire_hello bad, bpeer;
		struct add_conn ac = { ss.s, -1, 1 };
		int sv2[2];

		ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv2), 0);
		ac.fd = sv2[0];
		ck_assert_int_eq(pthread_create(&thr, NULL, add_conn_main, &ac), 0);
		dest_hello(&bad, PCOPY_CONN_RESUME, h.session ^ 0x5a5a, true);
		rc = conn_handshake(sv2[1], &bad, &bpeer, &feat, 5000, err, sizeof(err));
		pthread_join(thr, NULL);
		fprintf(stderr, "hostile dest resume-wrong-session: add_conn %d (%s), "
			"peer saw %d '%s'\n", ac.rc, pcopy_strerror(ac.rc), rc, err);
		ck_assert_msg(ac.rc < 0, "a RESUME for session %llx was accepted by "
			      "session %llx", (unsigned long long)(h.session ^ 0x5a5a),
			      (unsigned long long)h.session);
		ck_assert_int_ne(rc, 0);
		close(sv2[1]);
		ck_assert_uint_eq(dst_read(&h, 20000, true), SRC_LEN / TP);
		{
			struct wire_hdr dn = { .magic = PCOPY_WIRE_MAGIC,
					       .type = PCOPY_MSG_DONE };

			ck_assert_int_eq(conn_send_msg(h.fd, &dn, NULL, 0), 0);
		}
		ck_assert_int_eq(pcopy_source_wait(ss.s, 10000), 0);
		break;
	}
	case HD_RESUME_BAD_BITMAP: {
		/* break, then a resume whose bitmap covers more host pages
		 * than the region has: refused, the session stays paused and
		 * an honest resume still completes it */
		int add_rc, fd;

		shutdown(h.fd, SHUT_RDWR);
		ck_assert_msg(wait_paused(ss.s, 5000), "no pause after EOF");
		fd = resume_conn(&h, ss.s, 8, h.psk, &add_rc);
		fprintf(stderr, "hostile dest resume-bad-bitmap: add_conn %d (%s): %s\n",
			add_rc, pcopy_strerror(add_rc), pcopy_source_error(ss.s));
		if (fd >= 0)
			close(fd);
		ck_assert_msg(add_rc < 0, "a bitmap past the region was accepted");
		ck_assert_msg(wait_paused(ss.s, 2000), "the session did not stay paused "
			      "after a refused resume: %s", pcopy_source_error(ss.s));
		fd = resume_conn(&h, ss.s, 0, h.psk, &add_rc);
		ck_assert_msg(fd >= 0 && add_rc == 0, "honest resume refused: %d %s",
			      add_rc, pcopy_source_error(ss.s));
		close(h.fd);
		h.fd = fd;
		ck_assert_uint_eq(dst_read(&h, 20000, true), SRC_LEN / TP);
		{
			struct wire_hdr dn = { .magic = PCOPY_WIRE_MAGIC,
					       .type = PCOPY_MSG_DONE };

			ck_assert_int_eq(conn_send_msg(h.fd, &dn, NULL, 0), 0);
		}
		ck_assert_int_eq(pcopy_source_wait(ss.s, 10000), 0);
		break;
	}
	case HD_RESUME_WRONG_KEY: {
		/* after a break, a resume with the wrong key (and one with no
		 * key) is refused before any page; the right key resumes */
		int add_rc, fd;

		shutdown(h.fd, SHUT_RDWR);
		ck_assert_msg(wait_paused(ss.s, 5000), "no pause after EOF");
		fd = resume_conn(&h, ss.s, 0, "the wrong key", &add_rc);
		fprintf(stderr, "hostile dest resume-wrong-key: add_conn %d (%s), fd %d\n",
			add_rc, pcopy_strerror(add_rc), fd);
		ck_assert_msg(add_rc < 0 && fd < 0, "a wrong key resumed the session");
		fd = resume_conn(&h, ss.s, 0, NULL, &add_rc);
		ck_assert_msg(add_rc < 0 && fd < 0, "no key resumed the session");
		ck_assert(wait_paused(ss.s, 2000));
		fd = resume_conn(&h, ss.s, 0, h.psk, &add_rc);
		ck_assert_msg(fd >= 0 && add_rc == 0, "the right key was refused: %d %s",
			      add_rc, pcopy_source_error(ss.s));
		close(h.fd);
		h.fd = fd;
		ck_assert_uint_eq(dst_read(&h, 20000, true), SRC_LEN / TP);
		{
			struct wire_hdr dn = { .magic = PCOPY_WIRE_MAGIC,
					       .type = PCOPY_MSG_DONE };

			ck_assert_int_eq(conn_send_msg(h.fd, &dn, NULL, 0), 0);
		}
		ck_assert_int_eq(pcopy_source_wait(ss.s, 10000), 0);
		break;
	}
	case HD_BAD_REQ_EVERY_RESUME: {
		/* a destination that resumes only to send a bad REQ again must
		 * not hold the source forever: it gives up after a bound */
		unsigned tries = 0;
		int add_rc, fd = -1;

		rq[0] = (struct wire_req){ 7, 1, 0 };
		req_send(&h, rq, 1, 1, 16);
		for (tries = 0; tries < 64; tries++) {
			if (!wait_paused(ss.s, 3000))
				break;
			if (fd >= 0)
				close(fd);
			fd = resume_conn(&h, ss.s, 0, h.psk, &add_rc);
			if (fd < 0 || add_rc < 0)
				break;
			{
				int main_fd = h.fd;

				h.fd = fd;	/* the bad REQ goes on the resumed one */
				req_send(&h, rq, 1, 1, 16);
				h.fd = main_fd;
			}
		}
		if (fd >= 0)
			close(fd);
		rc = pcopy_source_wait(ss.s, 10000);
		fprintf(stderr, "hostile dest bad-req-after-every-resume: %u resumes, "
			"then %d (%s): %s\n", tries, rc, pcopy_strerror(rc),
			pcopy_source_error(ss.s));
		ck_assert_msg(tries < 64, "the source accepted 64 resumes that each "
			      "sent a bad request");
		ck_assert_int_eq(rc, -EPROTO);
		ck_assert_ptr_nonnull(strcasestr(pcopy_source_error(ss.s), "region"));
		break;
	}
	default:
		break;
	}

	if (hd_cases[kind].err) {
		/* take what comes until the source's ERROR or EOF */
		dst_read(&h, 10000, false);
		rc = pcopy_source_wait(ss.s, 10000);
		fprintf(stderr, "hostile dest %-28s -> %d (%s): %s | peer told: %s\n",
			hd_cases[kind].name, rc, pcopy_strerror(rc),
			pcopy_source_error(ss.s), h.error_text);
		ck_assert_msg(rc == hd_cases[kind].err, "%s: source ended with %d (%s): %s",
			      hd_cases[kind].name, rc, pcopy_strerror(rc),
			      pcopy_source_error(ss.s));
		ck_assert_msg(strcasestr(pcopy_source_error(ss.s), hd_cases[kind].msg),
			      "%s: '%s' does not name '%s'", hd_cases[kind].name,
			      pcopy_source_error(ss.s), hd_cases[kind].msg);
		ck_assert_msg(h.got_error, "%s: the source did not send an ERROR",
			      hd_cases[kind].name);
	} else if (kind == HD_FLOOD) {
		rc = pcopy_source_wait(ss.s, 10000);
		fprintf(stderr, "hostile dest %-28s -> %d; RSS %ld -> %ld KiB, queue %zu\n",
			hd_cases[kind].name, rc, rss0, rss1,
			src_debug_queue_capacity(ss.s));
		ck_assert_int_eq(rc, 0);
		ck_assert_msg(rss1 - rss0 < 48 * 1024, "RSS grew %ld KiB under the flood",
			      rss1 - rss0);
	}
	pcopy_source_destroy(ss.s);
	close(h.fd);
	free(h.buf);
	munmap(mem, SRC_LEN);
}
END_TEST


TCase *hostile_dest_tcase(void)
{
	TCase *tc = tcase_create("destination");

	tcase_set_timeout(tc, 60);
	tcase_add_loop_test(tc, test_hostile_dest, 0, HD_COUNT);
	return tc;
}
