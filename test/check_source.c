/* SPDX-License-Identifier: MIT */
/*
 * check_source: the real SOURCE over a socketpair against a scripted fake
 * destination that verifies every frame against the image's pattern.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "source.h"
#include "threadname.h"

#define TP 4096u
#define MAXR 4
#define MIB (1u << 20)
#define TMO 60		/* per TCase; valgrind is slow */
#define DEST_WAIT_MS 20000

/* ---- pattern: content from (region, target page); ~25% zero pages ---- */

enum pat { PAT_ZERO, PAT_TEXT, PAT_RAND };

static uint64_t mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static enum pat pat_kind(unsigned r, uint64_t tp)
{
	switch (mix(((uint64_t)r << 48) ^ tp) % 4) {
	case 0: return PAT_ZERO;
	case 1: return PAT_TEXT;	/* compresses well */
	default: return PAT_RAND;	/* does not compress */
	}
}

static void pat_fill(unsigned r, uint64_t tp, uint8_t *out)
{
	uint64_t x = mix(((uint64_t)r << 48) ^ tp ^ 0x5555);
	size_t i;

	switch (pat_kind(r, tp)) {
	case PAT_ZERO:
		memset(out, 0, TP);
		break;
	case PAT_TEXT: {
		char line[40];

		memset(line, '.', sizeof(line));
		snprintf(line, sizeof(line), "region %u page %llu",
			 r, (unsigned long long)tp);
		line[strlen(line)] = ' ';
		line[31] = '\n';
		for (i = 0; i < TP; i += 32)
			memcpy(out + i, line, 32);
		break;
	}
	case PAT_RAND:
		for (i = 0; i < TP; i += 8) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			memcpy(out + i, &x, 8);
		}
		break;
	}
}

/* ---- images ---- */

struct image {
	unsigned n;
	struct pcopy_source_region reg[MAXR];
	uint8_t *shadow[MAXR];		/* expected content of each region */
	char name[MAXR][64];
	int fd;				/* snapshot file, or -1 */
	bool written[MAXR][1024];	/* file regions: target page pwritten */
	uint64_t kinds[3];		/* target pages per pat (TEXT/RAND only
					   where the image holds the pattern) */
};

static void image_init(struct image *im)
{
	memset(im, 0, sizeof(*im));
	im->fd = -1;
}

static unsigned image_add(struct image *im, size_t len, size_t ps)
{
	unsigned r = im->n++;
	uint64_t tp;

	ck_assert_uint_le(im->n, MAXR);
	snprintf(im->name[r], sizeof(im->name[r]), "ram%u", r);
	ck_assert_int_eq(posix_memalign((void **)&im->shadow[r], TP, len), 0);
	for (tp = 0; tp < len / TP; tp++) {
		pat_fill(r, tp, im->shadow[r] + tp * TP);
		im->kinds[pat_kind(r, tp)]++;
	}
	im->reg[r].name = im->name[r];
	im->reg[r].mem = im->shadow[r];
	im->reg[r].fd = -1;
	im->reg[r].length = len;
	im->reg[r].page_size = ps;
	return r;
}

/*
 * A region of the snapshot file at file_offset: the non-zero pattern pages
 * of the first `present` target pages are written, zero pages stay holes,
 * and the file ends after `present` pages (the rest reads as zeros).
 */
static void image_add_file(struct image *im, size_t len, size_t ps,
			   off_t file_offset, uint64_t present)
{
	unsigned r = image_add(im, len, ps);
	uint64_t tp;

	ck_assert(present <= len / TP && len / TP <= 1024);
	if (im->fd < 0) {
		char path[] = "/tmp/check_source.XXXXXX";

		im->fd = mkstemp(path);
		ck_assert_int_ge(im->fd, 0);
		unlink(path);
	}
	for (tp = 0; tp < len / TP; tp++) {
		uint8_t *pg = im->shadow[r] + tp * TP;

		if (tp >= present) {
			memset(pg, 0, TP);	/* past EOF */
			continue;
		}
		if (pat_kind(r, tp) == PAT_ZERO)
			continue;		/* a hole */
		ck_assert_int_eq(pwrite(im->fd, pg, TP, file_offset + (off_t)(tp * TP)),
				 (ssize_t)TP);
		im->written[r][tp] = true;
	}
	ck_assert_int_eq(ftruncate(im->fd, file_offset + (off_t)(present * TP)), 0);
	im->reg[r].mem = NULL;
	im->reg[r].fd = im->fd;
	im->reg[r].file_offset = file_offset;
}

static void image_free(struct image *im)
{
	unsigned r;

	for (r = 0; r < im->n; r++)
		free(im->shadow[r]);
	if (im->fd >= 0)
		close(im->fd);
}

static size_t image_bytes(const struct image *im)
{
	size_t b = 0;
	unsigned r;

	for (r = 0; r < im->n; r++)
		b += im->reg[r].length;
	return b;
}

/* ---- the scripted fake destination ---- */

struct fdest {
	/* setup */
	int fd;
	const struct image *im;
	struct wire_hello hello;	/* what we offer; tests may alter it */
	/* script */
	struct wire_req start_req[8];	/* sent right after the handshake */
	unsigned n_start_req;
	int go_fd;			/* >= 0: after them, read only once readable */
	unsigned flood_msgs;		/* REQs of 4000 entries cycling pages */
	bool bad_req;			/* a REQ past the end of region 0 */
	bool huge_reqs;			/* 4096 entries, each all of region 0 */
	int send_error;			/* an ERROR (this errno) after HELLO */
	bool done_early;		/* DONE right after HELLO */
	bool no_read;			/* read nothing until quit_fd */
	int quit_fd;
	long close_after;		/* close after this many PAGE frames; <0 never */
	uint64_t mid_req_after;		/* after this many host pages ... */
	struct wire_req mid_req;	/* ... send this REQ */
	bool after_end_req;		/* after END: REQ 10 sent pages, expect silence */
	bool no_done;
	const void *psk;		/* key for the handshake, or NULL */
	size_t psk_len;
	uint64_t *const *bitmap;	/* RESUME: received bits per region */
	bool bitmap_cut;		/* RESUME: close after the first message */
	bool close_at_end;		/* on END: close without DONE */
	bool check_quiet;		/* before mid_req: nothing for 200 ms? */
	int end_wait_ms;		/* on END: linger this long (PINGs) */
	int send_ping_ms;		/* > 0: PING when the read waits this long */
	/* results */
	int hs_err;
	char hs_msg[PCOPY_ERRMSG_MAX];
	uint32_t features;
	uint8_t *kind[MAXR];		/* per target page: PCOPY_KIND_* seen */
	uint32_t *seen[MAXR];		/* per target page: times received */
	uint64_t *order;		/* host pages as (r << 40 | page), in order */
	uint64_t norder, order_cap;
	uint64_t pages[4];		/* target pages per kind */
	uint64_t frames[4];		/* frames per kind */
	uint64_t nframes;
	bool got_end, got_error, silent;
	int peer_errnum;
	char peer_msg[PCOPY_ERROR_TEXT_MAX + 1];
	uint64_t session;		/* from the source's HELLO */
	unsigned pings;			/* PINGs received */
	int recv_err;
	char fail[512];			/* first verification failure */
};

#define FAILF(d, ...) do { \
	if (!(d)->fail[0]) \
		snprintf((d)->fail, sizeof((d)->fail), __VA_ARGS__); \
} while (0)

static void fdest_init(struct fdest *d, int fd, const struct image *im,
		       uint32_t offer)
{
	uint64_t hp = 0;
	unsigned r;

	memset(d, 0, sizeof(*d));
	d->fd = fd;
	d->im = im;
	d->close_after = -1;
	d->quit_fd = -1;
	d->go_fd = -1;
	d->hello.version = PCOPY_WIRE_VERSION;
	d->hello.role = PCOPY_ROLE_DEST;
	d->hello.conn_kind = PCOPY_CONN_MAIN;
	d->hello.features = offer;
	d->hello.session_id = 0;	/* MAIN: a new session */
	d->hello.target_page = TP;
	d->hello.nregions = im->n;
	for (r = 0; r < im->n; r++) {
		snprintf(d->hello.regions[r].name, 64, "%s", im->reg[r].name);
		d->hello.regions[r].length = im->reg[r].length;
		d->hello.regions[r].host_page = (uint32_t)im->reg[r].page_size;
		d->kind[r] = calloc(im->reg[r].length / TP, 1);
		d->seen[r] = calloc(im->reg[r].length / TP, sizeof(uint32_t));
		hp += im->reg[r].length / im->reg[r].page_size;
	}
	d->order_cap = hp;
	d->order = calloc(hp, sizeof(uint64_t));
}

static void fdest_free(struct fdest *d)
{
	unsigned r;

	for (r = 0; r < d->im->n; r++) {
		free(d->kind[r]);
		free(d->seen[r]);
	}
	free(d->order);
	if (d->fd >= 0)
		close(d->fd);
}

static int send_reqs(struct fdest *d, const struct wire_req *rq, unsigned n)
{
	uint8_t *buf = malloc(n * PCOPY_REQ_ENTRY_SIZE);
	struct wire_hdr h = { .type = PCOPY_MSG_REQ, .count = n };
	int err;

	wire_req_encode(rq, n, buf);
	err = conn_send_msg(d->fd, &h, buf, n * PCOPY_REQ_ENTRY_SIZE);
	free(buf);
	return err;
}

static int send_empty(struct fdest *d, uint8_t type)
{
	struct wire_hdr h = { .type = type };

	return conn_send_msg(d->fd, &h, NULL, 0);
}

/* Host-page contiguity state of the frame checker. */
struct hpstate {
	bool open;
	uint32_t r;
	uint64_t next, end;
};

/* Check one PAGE frame: validity, order inside host pages, content. */
static void check_page(struct fdest *d, struct hpstate *hs,
		       const struct wire_hdr *h, const uint8_t *buf,
		       uint8_t *tmp, struct codec_zlib *z)
{
	char err[PCOPY_ERRMSG_MAX] = "";
	const struct pcopy_source_region *reg;
	uint32_t i;

	if (wire_page_validate(h, d->hello.regions, d->hello.nregions,
			       d->features, err, sizeof(err))) {
		FAILF(d, "invalid PAGE frame: %.400s", err);
		return;
	}
	reg = &d->im->reg[h->region];
	if (hs->open) {
		if (h->region != hs->r || h->offset != hs->next) {
			FAILF(d, "frame r%u+%llu interrupts host page r%u at %llu",
			      h->region, (unsigned long long)h->offset, hs->r,
			      (unsigned long long)hs->next);
			return;
		}
	} else {
		if (h->offset % reg->page_size) {
			FAILF(d, "frame r%u+%llu does not start a host page",
			      h->region, (unsigned long long)h->offset);
			return;
		}
		if (d->norder == d->order_cap) {
			FAILF(d, "more host pages started than exist");
			return;
		}
		d->order[d->norder++] = ((uint64_t)h->region << 40) |
					(h->offset / reg->page_size);
		hs->open = true;
		hs->r = h->region;
		hs->end = h->offset + reg->page_size;
	}
	hs->next = h->offset + (uint64_t)h->count * TP;
	if (hs->next == hs->end)
		hs->open = false;

	d->nframes++;
	d->frames[h->kind]++;
	d->pages[h->kind] += h->count;
	if (h->kind == PCOPY_KIND_ZLIB) {
		if (codec_zlib_decompress(z, buf, h->length, tmp,
					  (size_t)h->count * TP, err, sizeof(err))) {
			FAILF(d, "zlib frame does not inflate: %.400s", err);
			return;
		}
		buf = tmp;
	}
	for (i = 0; i < h->count; i++) {
		uint64_t tp = h->offset / TP + i;
		const uint8_t *want = d->im->shadow[h->region] + tp * TP;

		if (++d->seen[h->region][tp] > 1)
			FAILF(d, "target page r%u/%llu received twice", h->region,
			      (unsigned long long)tp);
		d->kind[h->region][tp] = h->kind;
		if (h->kind == PCOPY_KIND_ZERO) {
			if (!codec_is_zero(want, TP))
				FAILF(d, "r%u/%llu sent as ZERO but is not zero",
				      h->region, (unsigned long long)tp);
		} else if (memcmp(buf + (size_t)i * TP, want, TP)) {
			FAILF(d, "r%u/%llu: wrong content", h->region,
			      (unsigned long long)tp);
		}
	}
}

/* After END: ask for 10 pages already sent, expect nothing back. */
static void after_end(struct fdest *d)
{
	struct wire_req rq = { .region = 0, .count = 10, .offset = 0 };
	struct pollfd pfd = { .fd = d->fd, .events = POLLIN };

	if (send_reqs(d, &rq, 1))
		FAILF(d, "sending REQ after END failed");
	d->silent = poll(&pfd, 1, 300) == 0;
}

/* After END: read for end_wait_ms, counting PINGs; anything else fails. */
static void linger(struct fdest *d, uint8_t *buf)
{
	uint64_t until = pcopy_now_ns() + (uint64_t)d->end_wait_ms * 1000000ull;
	char err[PCOPY_ERRMSG_MAX];
	struct wire_hdr h;

	for (;;) {
		uint64_t dl = until, now = pcopy_now_ns();
		int e;

		if (now >= until)
			break;
		if (d->send_ping_ms &&
		    now + (uint64_t)d->send_ping_ms * 1000000ull < until)
			dl = now + (uint64_t)d->send_ping_ms * 1000000ull;
		e = conn_recv_msg(d->fd, &h, buf, PCOPY_WIRE_PAYLOAD_MAX, dl, -1,
				  err, sizeof(err));
		if (e == -ETIMEDOUT) {
			if (d->send_ping_ms)
				send_empty(d, PCOPY_MSG_PING);
			continue;
		}
		if (e)
			break;
		if (h.type == PCOPY_MSG_PING)
			d->pings++;
		else
			FAILF(d, "message type %u after END", h.type);
	}
}

/* RESUME: the received bitmap, region by region, in one message each (or
 * only the first one, then close: a break during the resume). */
static int send_bitmap(struct fdest *d)
{
	static uint8_t pay[PCOPY_WIRE_PAYLOAD_MAX];
	unsigned r;

	for (r = 0; r < d->im->n; r++) {
		uint64_t nb = d->im->reg[r].length / d->im->reg[r].page_size;
		struct wire_hdr h;
		int len;

		memset(&h, 0, sizeof(h));
		len = wire_bitmap_encode(r, d->bitmap[r], nb, 0, &h, pay,
					 sizeof(pay));
		ck_assert_int_gt(len, 0);
		ck_assert_uint_eq(h.count, nb);
		h.type = PCOPY_MSG_RECV_BITMAP;
		if (conn_send_msg(d->fd, &h, pay, (size_t)len)) {
			FAILF(d, "sending RECV_BITMAP failed");
			return -1;
		}
		if (d->bitmap_cut) {
			close(d->fd);
			d->fd = -1;
			return -1;
		}
	}
	return 0;
}

static void *fdest_main(void *arg)
{
	struct fdest *d = arg;
	uint8_t *buf = malloc(PCOPY_WIRE_PAYLOAD_MAX);
	uint8_t *tmp = malloc(PCOPY_WIRE_PAYLOAD_MAX);
	struct codec_zlib *z = NULL;
	struct wire_hello *peer = malloc(sizeof(*peer));
	struct hpstate hs = { 0 };
	bool mid_sent = false;
	char err[PCOPY_ERRMSG_MAX];
	unsigned i;

	{
		struct conn_hs_params hp = { .psk = d->psk, .psk_len = d->psk_len,
					     .timeout_ms = 5000 };

		d->hs_err = conn_handshake2(d->fd, &d->hello, peer, &d->features,
					    &hp, d->hs_msg, sizeof(d->hs_msg));
	}
	if (d->hs_err)
		goto out;
	d->session = peer->session_id;
	if (d->bitmap && send_bitmap(d))
		goto out;
	ck_assert_int_eq(codec_zlib_new(&z, false, 0), 0);
	if (d->n_start_req && send_reqs(d, d->start_req, d->n_start_req))
		FAILF(d, "sending REQ failed");
	if (d->go_fd >= 0) {
		struct pollfd pfd = { .fd = d->go_fd, .events = POLLIN };

		poll(&pfd, 1, DEST_WAIT_MS);
	}
	for (i = 0; i < d->flood_msgs; i++) {
		static struct wire_req rq[4000];
		const struct pcopy_source_region *r0 = &d->im->reg[0];
		uint64_t np = r0->length / TP;
		unsigned k;

		for (k = 0; k < 4000; k++) {
			rq[k].region = 0;
			rq[k].count = 1;
			rq[k].offset = ((i * 4000ull + k) * 7 % np) * TP;
		}
		if (send_reqs(d, rq, 4000)) {
			FAILF(d, "flood REQ %u failed", i);
			break;
		}
	}
	if (d->bad_req) {
		struct wire_req rq = { .region = 0, .count = 1,
				       .offset = d->im->reg[0].length };

		send_reqs(d, &rq, 1);
	}
	if (d->huge_reqs) {
		static struct wire_req rq[PCOPY_REQ_MAX_ENTRIES];

		for (i = 0; i < PCOPY_REQ_MAX_ENTRIES; i++)
			rq[i] = (struct wire_req){ .region = 0, .offset = 0,
				.count = (uint32_t)(d->im->reg[0].length / TP) };
		if (send_reqs(d, rq, PCOPY_REQ_MAX_ENTRIES))
			FAILF(d, "sending huge REQ failed");
	}
	if (d->send_error)
		conn_send_error(d->fd, d->send_error, "disk on fire");
	if (d->done_early)
		send_empty(d, PCOPY_MSG_DONE);
	if (d->no_read) {
		struct pollfd pfd = { .fd = d->quit_fd, .events = POLLIN };

		poll(&pfd, 1, DEST_WAIT_MS);
		goto out;
	}
	for (;;) {
		struct wire_hdr h;

		err[0] = '\0';
		if (d->send_ping_ms) {
			struct pollfd pfd = { .fd = d->fd, .events = POLLIN };

			if (poll(&pfd, 1, d->send_ping_ms) == 0) {
				send_empty(d, PCOPY_MSG_PING);
				continue;
			}
		}
		d->recv_err = conn_recv_msg(d->fd, &h, buf, PCOPY_WIRE_PAYLOAD_MAX,
					    pcopy_now_ns() + DEST_WAIT_MS * 1000000ull,
					    -1, err, sizeof(err));
		if (d->recv_err)
			break;
		if (h.type == PCOPY_MSG_PING) {
			d->pings++;
			continue;
		}
		if (h.type == PCOPY_MSG_ERROR) {
			d->got_error = true;
			wire_error_decode(buf, h.length, &d->peer_errnum,
					  d->peer_msg, sizeof(d->peer_msg));
			break;
		}
		if (h.type == PCOPY_MSG_END && d->bad_req) {
			/* the source may finish before it reads the bad REQ;
			 * its ERROR comes after END then */
			d->got_end = true;
			continue;
		}
		if (h.type == PCOPY_MSG_END) {
			d->got_end = true;
			if (hs.open)
				FAILF(d, "END inside a host page");
			if (d->after_end_req)
				after_end(d);
			if (d->end_wait_ms)
				linger(d, buf);
			if (d->close_at_end) {
				close(d->fd);
				d->fd = -1;
				break;
			}
			if (!d->no_done && send_empty(d, PCOPY_MSG_DONE))
				FAILF(d, "sending DONE failed");
			break;
		}
		if (h.type != PCOPY_MSG_PAGE) {
			FAILF(d, "unexpected message type %u", h.type);
			break;
		}
		check_page(d, &hs, &h, buf, tmp, z);
		if (d->close_after >= 0 && (long)d->nframes >= d->close_after) {
			close(d->fd);
			d->fd = -1;
			break;
		}
		if (d->mid_req_after && !mid_sent && !hs.open &&
		    d->norder >= d->mid_req_after) {
			mid_sent = true;
			if (d->check_quiet) {
				struct pollfd pfd = { .fd = d->fd, .events = POLLIN };

				d->silent = poll(&pfd, 1, 200) == 0;
			}
			if (send_reqs(d, &d->mid_req, 1))
				FAILF(d, "sending mid-stream REQ failed");
		}
	}
out:
	if (z)
		codec_zlib_free(z);
	free(peer);
	free(buf);
	free(tmp);
	return NULL;
}

/* Every target page arrived exactly once. */
static void check_complete(const struct fdest *d)
{
	unsigned r;
	uint64_t tp;

	for (r = 0; r < d->im->n; r++)
		for (tp = 0; tp < d->im->reg[r].length / TP; tp++)
			ck_assert_msg(d->seen[r][tp] == 1,
				      "r%u/%llu received %u times", r,
				      (unsigned long long)tp, d->seen[r][tp]);
}

/* ---- running a session ---- */

struct session {
	struct pcopy_source *s;
	struct fdest d;
	pthread_t t;
	int start_err;
	int wait_err;
	struct pcopy_stats st;
};

struct logbuf {
	pthread_mutex_t lock;
	char last[512];
	unsigned count;
};

static void log_cb(void *opaque, enum pcopy_log_level lvl, const char *msg)
{
	struct logbuf *lb = opaque;

	if (lvl > PCOPY_LOG_WARN)
		return;
	pthread_mutex_lock(&lb->lock);
	snprintf(lb->last, sizeof(lb->last), "%s", msg);
	lb->count++;
	pthread_mutex_unlock(&lb->lock);
}

/* Create the source (options o) and the fake destination (not started). */
static void session_setup_o(struct session *ss, const struct image *im,
			    const struct pcopy_source_opts *o,
			    uint32_t dest_offer)
{
	int sv[2];

	memset(ss, 0, sizeof(*ss));
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	ck_assert_int_eq(pcopy_source_create(&ss->s, im->reg, im->n, o), 0);
	fdest_init(&ss->d, sv[1], im, dest_offer);
	ss->start_err = sv[0];	/* stashed until session_start */
}

/* Create the source and the fake destination (not started yet). */
static void session_setup(struct session *ss, const struct image *im,
			  unsigned src_flags, uint32_t dest_offer,
			  size_t batch)
{
	struct pcopy_source_opts o;

	pcopy_source_opts_init(&o);
	o.flags = src_flags;
	o.batch_bytes = batch;
	session_setup_o(ss, im, &o, dest_offer);
}

static void session_start(struct session *ss)
{
	int fd = ss->start_err;

	ck_assert_int_eq(pthread_create(&ss->t, NULL, fdest_main, &ss->d), 0);
	ss->start_err = pcopy_source_start(ss->s, fd);
}

static void session_finish(struct session *ss, int wait_ms)
{
	ss->wait_err = pcopy_source_wait(ss->s, wait_ms);
	pthread_join(ss->t, NULL);
	ck_assert_int_eq(pcopy_source_stats(ss->s, &ss->st), 0);
}

static void session_free(struct session *ss)
{
	pcopy_source_destroy(ss->s);
	fdest_free(&ss->d);
}

static void assert_clean_run(struct session *ss)
{
	ck_assert_msg(ss->d.fail[0] == '\0', "destination: %s", ss->d.fail);
	ck_assert_int_eq(ss->start_err, 0);
	ck_assert_msg(ss->d.got_end, "no END (recv %d)", ss->d.recv_err);
	ck_assert_msg(ss->wait_err == 0, "wait: %d %s", ss->wait_err,
		      pcopy_source_error(ss->s));
	check_complete(&ss->d);
}

static bool pos_of(const struct fdest *d, uint64_t id, uint64_t *pos)
{
	uint64_t i;

	for (i = 0; i < d->norder; i++)
		if (d->order[i] == id) {
			*pos = i;
			return true;
		}
	return false;
}

/* ---- tests ---- */

START_TEST(test_whole_image)
{
	struct image im;
	struct session ss;
	uint64_t zero_pages;

	image_init(&im);
	image_add(&im, 1 * MIB, TP);
	image_add(&im, 3 * MIB + 64 * 1024, TP);
	image_add(&im, 256 * 1024, TP);
	session_setup(&ss, &im, 0, 0, 0);
	session_start(&ss);
	session_finish(&ss, 30000);
	assert_clean_run(&ss);
	zero_pages = im.kinds[PAT_ZERO];
	/* background order: region by region, page by page */
	for (uint64_t i = 1; i < ss.d.norder; i++)
		ck_assert_msg(ss.d.order[i] > ss.d.order[i - 1],
			      "host pages out of order at %llu",
			      (unsigned long long)i);
	ck_assert_uint_eq(ss.d.pages[PCOPY_KIND_ZERO], zero_pages);
	ck_assert_uint_eq(ss.d.pages[PCOPY_KIND_ZLIB], 0);
	ck_assert_uint_eq(ss.st.pages_zero, zero_pages);
	ck_assert_uint_eq(ss.st.pages_raw + ss.st.pages_zero,
			  image_bytes(&im) / TP);
	ck_assert_uint_eq(ss.st.bytes_payload, image_bytes(&im));
	ck_assert_uint_eq(ss.st.host_pages_total, image_bytes(&im) / TP);
	ck_assert_uint_eq(ss.st.host_pages_received, image_bytes(&im) / TP);
	/* every frame and END: header + payload */
	ck_assert_uint_eq(ss.st.bytes_wire,
			  (ss.d.nframes + 1) * PCOPY_WIRE_HDR_SIZE +
			  ss.d.pages[PCOPY_KIND_RAW] * TP);
	ck_assert_uint_eq(ss.st.requests, 0);
	ck_assert_uint_eq(ss.st.request_msgs, 0);
	ck_assert_uint_gt(ss.st.elapsed_ns, 0);
	ck_assert_str_eq(pcopy_source_error(ss.s), "");
	session_free(&ss);
	image_free(&im);
}
END_TEST

START_TEST(test_request_first)
{
	struct image im;
	struct session ss;
	uint64_t pos, want = (1ull << 40) | 1500, one = 1;
	int i;

	image_init(&im);
	image_add(&im, 8 * MIB, TP);	/* 2048 host pages */
	image_add(&im, 8 * MIB, TP);
	session_setup(&ss, &im, 0, 0, 0);
	ss.d.start_req[0] = (struct wire_req){ .region = 1, .count = 1,
					       .offset = 1500 * TP };
	ss.d.n_start_req = 1;
	ss.d.go_fd = eventfd(0, EFD_CLOEXEC);
	session_start(&ss);
	/* the destination reads nothing until the REQ is queued: the sender
	 * fills the socket buffer and waits in sendmsg meanwhile */
	for (i = 0; i < 20000; i++) {
		ck_assert_int_eq(pcopy_source_stats(ss.s, &ss.st), 0);
		if (ss.st.request_msgs)
			break;
		usleep(1000);
	}
	ck_assert_uint_eq(ss.st.request_msgs, 1);
	ck_assert_int_eq(write(ss.d.go_fd, &one, 8), 8);
	session_finish(&ss, 30000);
	close(ss.d.go_fd);
	assert_clean_run(&ss);
	ck_assert(pos_of(&ss.d, want, &pos));
	/* the background scan reaches it only after 2048 + 1500 pages; the
	 * request waits behind a socket buffer of them (~50) at most */
	ck_assert_msg(pos < 200, "requested page came at position %llu",
		      (unsigned long long)pos);
	/* and the scan goes on right after it, behind at most one batch
	 * gathered before the request came: 64 KiB is 16 raw pages, but zero
	 * pages travel as bare headers, so a batch can hold more of them.
	 * Without the jump, page want + 1 would come ~2000 pages later. */
	{
		uint64_t next;

		ck_assert(pos_of(&ss.d, want + 1, &next));
		ck_assert_msg(next > pos && next <= pos + 1 + 64,
			      "request at %llu, the page after it at %llu",
			      (unsigned long long)pos, (unsigned long long)next);
	}
	ck_assert_uint_eq(ss.st.requests, 1);
	ck_assert_uint_eq(ss.st.request_msgs, 1);
	ck_assert_uint_eq(ss.st.duplicates, 0);
	session_free(&ss);
	image_free(&im);
}
END_TEST

START_TEST(test_request_sent_pages)
{
	struct image im;
	struct session ss;

	image_init(&im);
	image_add(&im, 4 * MIB, TP);
	session_setup(&ss, &im, 0, 0, 0);
	/* page 0 was read by then: skipped, never sent twice */
	ss.d.mid_req_after = 100;
	ss.d.mid_req = (struct wire_req){ .region = 0, .count = 1, .offset = 0 };
	ss.d.after_end_req = true;
	session_start(&ss);
	session_finish(&ss, 30000);
	assert_clean_run(&ss);
	ck_assert_msg(ss.d.silent, "pages sent after END for a sent page");
	ck_assert_uint_eq(ss.st.request_msgs, 2);
	ck_assert_uint_eq(ss.st.duplicates, 1 + 10);
	ck_assert_uint_eq(ss.st.requests, 0);
	session_free(&ss);
	image_free(&im);
}
END_TEST

START_TEST(test_zlib)
{
	struct image im;
	struct session ss;

	image_init(&im);
	image_add(&im, 2 * MIB, TP);
	image_add(&im, 4 * MIB, 2 * MIB);
	session_setup(&ss, &im, PCOPY_SOURCE_ZLIB, PCOPY_FEAT_ZLIB, 0);
	session_start(&ss);
	session_finish(&ss, 30000);
	assert_clean_run(&ss);
	ck_assert_uint_eq(ss.d.features, PCOPY_FEAT_ZLIB);
	ck_assert_uint_eq(ss.d.pages[PCOPY_KIND_ZLIB], im.kinds[PAT_TEXT]);
	ck_assert_uint_eq(ss.d.pages[PCOPY_KIND_RAW], im.kinds[PAT_RAND]);
	ck_assert_uint_eq(ss.d.pages[PCOPY_KIND_ZERO], im.kinds[PAT_ZERO]);
	ck_assert_uint_eq(ss.st.pages_zlib, im.kinds[PAT_TEXT]);
	ck_assert_uint_eq(ss.st.pages_raw, im.kinds[PAT_RAND]);
	ck_assert_uint_lt(ss.st.bytes_wire, image_bytes(&im) * 3 / 4);
	session_free(&ss);
	image_free(&im);
}
END_TEST

START_TEST(test_zlib_not_offered)
{
	struct image im;
	struct session ss;

	image_init(&im);
	image_add(&im, 2 * MIB, TP);
	session_setup(&ss, &im, PCOPY_SOURCE_ZLIB, 0, 0);
	session_start(&ss);
	session_finish(&ss, 30000);
	assert_clean_run(&ss);
	ck_assert_uint_eq(ss.d.features, 0);
	ck_assert_uint_eq(ss.d.pages[PCOPY_KIND_ZLIB], 0);
	ck_assert_uint_eq(ss.st.pages_zlib, 0);
	ck_assert_uint_eq(ss.d.pages[PCOPY_KIND_RAW],
			  im.kinds[PAT_TEXT] + im.kinds[PAT_RAND]);
	session_free(&ss);
	image_free(&im);
}
END_TEST

START_TEST(test_file_holes)
{
	struct image im;
	struct session ss;
	uint64_t written = 0, tp;
	unsigned r;

	image_init(&im);
	/* 8 KiB of junk before the first region: file_offset must count */
	image_add_file(&im, 1 * MIB, TP, 8192, 256);
	ck_assert_int_eq(pwrite(im.fd, "JUNKJUNK", 8, 100), 8);
	/* the file ends 48 pages into this one: the rest reads as zeros */
	image_add_file(&im, 256 * 1024, TP, 8192 + 2 * MIB, 48);
	session_setup(&ss, &im, 0, 0, 0);
	session_start(&ss);
	session_finish(&ss, 30000);
	assert_clean_run(&ss);
	for (r = 0; r < im.n; r++)
		for (tp = 0; tp < im.reg[r].length / TP; tp++) {
			uint8_t want = im.written[r][tp] ? PCOPY_KIND_RAW
							 : PCOPY_KIND_ZERO;

			written += im.written[r][tp];
			ck_assert_msg(ss.d.kind[r][tp] == want,
				      "r%u/%llu came as kind %u, want %u", r,
				      (unsigned long long)tp, ss.d.kind[r][tp], want);
		}
	ck_assert_uint_gt(written, 100);
	/* holes and the part past EOF were never read */
	ck_assert_uint_eq(src_debug_file_bytes_read(ss.s), written * TP);
	session_free(&ss);
	image_free(&im);
}
END_TEST

START_TEST(test_file_unaligned_huge)
{
	struct image im;
	struct session ss;

	image_init(&im);
	/* 2 MiB host pages read in 64 KiB windows, at an odd file offset */
	image_add_file(&im, 4 * MIB, 2 * MIB, 12345, 1024);
	session_setup(&ss, &im, 0, 0, 0);
	ss.d.start_req[0] = (struct wire_req){ .region = 0, .count = 1,
					       .offset = 2 * MIB + 8192 };
	ss.d.n_start_req = 1;
	session_start(&ss);
	session_finish(&ss, 30000);
	assert_clean_run(&ss);
	ck_assert_uint_le(src_debug_file_bytes_read(ss.s), 4 * MIB);
	session_free(&ss);
	image_free(&im);
}
END_TEST

START_TEST(test_table_mismatch)
{
	struct image im;
	struct session ss;

	image_init(&im);
	image_add(&im, 1 * MIB, TP);
	session_setup(&ss, &im, 0, 0, 0);
	ss.d.hello.regions[0].length = 2 * MIB;
	session_start(&ss);
	ck_assert_int_eq(ss.start_err, -EPROTO);
	ck_assert_msg(strstr(pcopy_source_error(ss.s), "length"),
		      "message: %s", pcopy_source_error(ss.s));
	session_finish(&ss, 5000);
	ck_assert_int_eq(ss.wait_err, -EPROTO);
	ck_assert_int_ne(ss.d.hs_err, 0);
	ck_assert_uint_eq(ss.st.bytes_payload, 0);
	session_free(&ss);
	image_free(&im);
}
END_TEST

START_TEST(test_hostile_req)
{
	struct image im;
	struct session ss;

	image_init(&im);
	image_add(&im, 4 * MIB, TP);
	session_setup(&ss, &im, 0, 0, 0);
	ss.d.bad_req = true;
	session_start(&ss);
	ck_assert_int_eq(ss.start_err, 0);
	session_finish(&ss, 30000);
	ck_assert_int_eq(ss.wait_err, -EPROTO);
	ck_assert_msg(strstr(pcopy_source_error(ss.s), "REQ"), "message: %s",
		      pcopy_source_error(ss.s));
	/* the destination was told why */
	ck_assert_msg(ss.d.got_error, "no ERROR (recv %d)", ss.d.recv_err);
	ck_assert_int_eq(ss.d.peer_errnum, EPROTO);
	ck_assert_msg(strstr(ss.d.peer_msg, "REQ"), "peer got: %s", ss.d.peer_msg);
	ck_assert_msg(ss.d.fail[0] == '\0', "destination: %s", ss.d.fail);
	session_free(&ss);
	image_free(&im);
}
END_TEST

START_TEST(test_duplicate_flood)
{
	struct image im;
	struct session ss;
	size_t cap;

	image_init(&im);
	image_add(&im, 8 * MIB, TP);	/* 2048 host pages */
	session_setup(&ss, &im, 0, 0, 0);
	ss.d.flood_msgs = 25;		/* 100000 entries */
	session_start(&ss);
	session_finish(&ss, 30000);
	assert_clean_run(&ss);
	cap = src_debug_queue_capacity(ss.s);
	ck_assert_uint_le(cap, 2048);
	ck_assert_uint_eq(ss.st.request_msgs, 25);
	/* each entry was either sent on request or found already sent/queued */
	ck_assert_uint_eq(ss.st.requests + ss.st.duplicates, 100000);
	ck_assert_uint_gt(ss.st.requests, 0);
	session_free(&ss);
	image_free(&im);
}
END_TEST

START_TEST(test_dest_closes)
{
	struct image im;
	struct session ss;

	image_init(&im);
	image_add(&im, 16 * MIB, TP);
	session_setup(&ss, &im, 0, 0, 0);
	ss.d.close_after = 20;
	session_start(&ss);
	ck_assert_int_eq(ss.start_err, 0);
	session_finish(&ss, 30000);
	ck_assert_msg(ss.wait_err == -EPIPE || ss.wait_err == -ECONNRESET,
		      "wait: %d", ss.wait_err);
	ck_assert_str_ne(pcopy_source_error(ss.s), "");
	ck_assert_uint_lt(ss.st.bytes_payload, image_bytes(&im));
	session_free(&ss);
	image_free(&im);
}
END_TEST

START_TEST(test_destroy_full_socket)
{
	struct image im;
	struct session ss;
	uint64_t t0, t1;
	uint64_t one = 1;

	image_init(&im);
	image_add(&im, 16 * MIB, TP);
	session_setup(&ss, &im, 0, 0, 0);
	ss.d.no_read = true;
	ss.d.quit_fd = eventfd(0, EFD_CLOEXEC);
	session_start(&ss);
	ck_assert_int_eq(ss.start_err, 0);
	/* the sender fills the socket buffer and blocks in sendmsg */
	ck_assert_int_eq(pcopy_source_wait(ss.s, 300), -ETIMEDOUT);
	ck_assert_int_eq(pcopy_source_stats(ss.s, &ss.st), 0);
	ck_assert_uint_gt(ss.st.bytes_wire, 0);
	ck_assert_uint_lt(ss.st.bytes_payload, image_bytes(&im) / 4);
	t0 = pcopy_now_ns();
	pcopy_source_destroy(ss.s);
	t1 = pcopy_now_ns();
	ss.s = NULL;
	ck_assert_msg(t1 - t0 < 2000000000ull, "destroy took %llu ms",
		      (unsigned long long)((t1 - t0) / 1000000));
	ck_assert_int_eq(write(ss.d.quit_fd, &one, 8), 8);
	pthread_join(ss.t, NULL);
	close(ss.d.quit_fd);
	fdest_free(&ss.d);
	image_free(&im);
}
END_TEST

/* Whole-region requests over a 4 GiB region keep the reader busy for a long
 * time; destroy must still return promptly. */
START_TEST(test_destroy_busy_reader)
{
	const size_t len = (size_t)4 << 30;
	struct image im;
	struct session ss;
	uint64_t t0, t1, one = 1;
	void *mem;

	mem = mmap(NULL, len, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS |
		   MAP_NORESERVE, -1, 0);
	ck_assert_ptr_ne(mem, MAP_FAILED);
	image_init(&im);
	im.n = 1;
	snprintf(im.name[0], sizeof(im.name[0]), "big");
	im.reg[0] = (struct pcopy_source_region){ .name = im.name[0],
		.mem = mem, .fd = -1, .length = len, .page_size = TP };
	session_setup(&ss, &im, 0, 0, 0);
	ss.d.huge_reqs = true;
	ss.d.no_read = true;
	ss.d.quit_fd = eventfd(0, EFD_CLOEXEC);
	session_start(&ss);
	ck_assert_int_eq(ss.start_err, 0);
	ck_assert_int_eq(pcopy_source_wait(ss.s, 300), -ETIMEDOUT);
	/* bounded: the ring never outgrows the host-page count */
	ck_assert_uint_le(src_debug_queue_capacity(ss.s), len / TP);
	t0 = pcopy_now_ns();
	pcopy_source_destroy(ss.s);
	t1 = pcopy_now_ns();
	ss.s = NULL;
	ck_assert_msg(t1 - t0 < 2000000000ull, "destroy took %llu ms",
		      (unsigned long long)((t1 - t0) / 1000000));
	ck_assert_int_eq(write(ss.d.quit_fd, &one, 8), 8);
	pthread_join(ss.t, NULL);
	close(ss.d.quit_fd);
	fdest_free(&ss.d);
	munmap(mem, len);
}
END_TEST

START_TEST(test_handshake_timeout)
{
	static uint8_t mem[8192] __attribute__((aligned(4096)));
	struct pcopy_source_region r = { .name = "ram", .mem = mem, .fd = -1,
					 .length = sizeof(mem), .page_size = 4096 };
	struct pcopy_source_opts o;
	struct pcopy_source *s;
	int sv[2];

	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	pcopy_source_opts_init(&o);
	o.handshake_timeout_ms = 200;
	ck_assert_int_eq(pcopy_source_create(&s, &r, 1, &o), 0);
	/* the peer never answers */
	ck_assert_int_eq(pcopy_source_start(s, sv[0]), -ETIMEDOUT);
	ck_assert_str_ne(pcopy_source_error(s), "");
	/* the session is over: wait does not say "still running" */
	ck_assert_int_eq(pcopy_source_wait(s, 0), -ENOLINK);
	/* a second start is refused, and the fd is still taken over */
	ck_assert_int_eq(pcopy_source_start(s, dup(sv[1])), -EINVAL);
	pcopy_source_destroy(s);
	close(sv[1]);
}
END_TEST

START_TEST(test_huge_host_page)
{
	struct image im;
	struct session ss;
	uint64_t pos;

	image_init(&im);
	image_add(&im, 8 * MIB, 2 * MIB);
	session_setup(&ss, &im, 0, 0, 0);
	ss.d.start_req[0] = (struct wire_req){ .region = 0, .count = 2,
					       .offset = 3 * 2 * MIB + 4096 };
	ss.d.n_start_req = 1;
	session_start(&ss);
	session_finish(&ss, 30000);
	/* the checker fails any frame that interrupts or reorders a host
	 * page, so a clean run means 512 target pages in order each time */
	assert_clean_run(&ss);
	ck_assert_uint_eq(ss.d.norder, 4);
	ck_assert(pos_of(&ss.d, 3, &pos));
	ck_assert_uint_eq(ss.st.requests + ss.st.duplicates, 1);
	/* runs are merged inside a host page: fewer frames than pages */
	ck_assert_uint_lt(ss.d.frames[PCOPY_KIND_ZERO], ss.d.pages[PCOPY_KIND_ZERO]);
	ck_assert_uint_lt(ss.d.frames[PCOPY_KIND_RAW], ss.d.pages[PCOPY_KIND_RAW]);
	session_free(&ss);
	image_free(&im);
}
END_TEST

START_TEST(test_peer_error)
{
	struct image im;
	struct session ss;

	image_init(&im);
	image_add(&im, 1 * MIB, TP);
	session_setup(&ss, &im, 0, 0, 0);
	ss.d.send_error = ENOSPC;
	session_start(&ss);
	session_finish(&ss, 30000);
	ck_assert_int_eq(ss.wait_err, -ENOSPC);
	ck_assert_msg(strstr(pcopy_source_error(ss.s), "disk on fire"),
		      "message: %s", pcopy_source_error(ss.s));
	session_free(&ss);
	image_free(&im);
}
END_TEST

START_TEST(test_done_early)
{
	struct image im;
	struct session ss;

	image_init(&im);
	image_add(&im, 16 * MIB, TP);
	session_setup(&ss, &im, 0, 0, 0);
	ss.d.done_early = true;
	session_start(&ss);
	session_finish(&ss, 30000);
	ck_assert_int_eq(ss.wait_err, -EPROTO);
	ck_assert_msg(strstr(pcopy_source_error(ss.s), "DONE"), "message: %s",
		      pcopy_source_error(ss.s));
	session_free(&ss);
	image_free(&im);
}
END_TEST

START_TEST(test_two_sources)
{
	struct image im[2];
	struct session ss[2];
	int i;

	for (i = 0; i < 2; i++) {
		image_init(&im[i]);
		image_add(&im[i], 2 * MIB, TP);
		image_add(&im[i], 2 * MIB, 2 * MIB);
		session_setup(&ss[i], &im[i], i ? PCOPY_SOURCE_ZLIB : 0,
			      PCOPY_FEAT_ZLIB, 16384);
	}
	/* both handshakes need their destination thread running */
	for (i = 0; i < 2; i++)
		session_start(&ss[i]);
	for (i = 0; i < 2; i++) {
		session_finish(&ss[i], 30000);
		assert_clean_run(&ss[i]);
	}
	ck_assert_uint_eq(ss[0].st.pages_zlib, 0);
	ck_assert_uint_gt(ss[1].st.pages_zlib, 0);
	for (i = 0; i < 2; i++) {
		session_free(&ss[i]);
		image_free(&im[i]);
	}
}
END_TEST

START_TEST(test_create_args)
{
	static uint8_t mem[4 * 8192] __attribute__((aligned(4096)));
	struct pcopy_source_region r = { .name = "ram", .mem = mem, .fd = -1,
					 .length = sizeof(mem), .page_size = 4096 };
	struct pcopy_source_region bad, many[PCOPY_REGIONS_MAX + 1];
	struct logbuf lb = { .lock = PTHREAD_MUTEX_INITIALIZER };
	struct pcopy_source_opts o;
	struct pcopy_source *s = (void *)1;
	char longname[80];
	unsigned i, before;

	pcopy_source_opts_init(&o);
	o.log = log_cb;
	o.log_opaque = &lb;
	memset(longname, 'x', 64);
	longname[64] = '\0';

	ck_assert_int_eq(pcopy_source_create(NULL, &r, 1, &o), -EINVAL);
	ck_assert_int_eq(pcopy_source_create(&s, NULL, 1, &o), -EINVAL);
	ck_assert_ptr_null(s);
	ck_assert_int_eq(pcopy_source_create(&s, &r, 0, &o), -EINVAL);
	for (i = 0; i <= PCOPY_REGIONS_MAX; i++)
		many[i] = r;
	ck_assert_int_eq(pcopy_source_create(&s, many, PCOPY_REGIONS_MAX + 1, &o),
			 -EINVAL);
#define BAD(field, value) do { \
	bad = r; bad.field = value; before = lb.count; \
	ck_assert_int_eq(pcopy_source_create(&s, &bad, 1, &o), -EINVAL); \
	ck_assert_msg(lb.count > before, "no log for " #field); \
} while (0)
	BAD(name, NULL);
	BAD(name, "");
	BAD(name, longname);
	BAD(length, 0);
	BAD(length, 8192 + 100);
	BAD(page_size, 2048);
	BAD(page_size, 12288);
	BAD(page_size, (size_t)2 << 30);
	BAD(fd, 0);		/* both mem and fd */
	BAD(mem, NULL);		/* neither */
	bad = r;
	bad.page_size = 8192;
	bad.length = 8192 * 3 + 4096;
	ck_assert_int_eq(pcopy_source_create(&s, &bad, 1, &o), -EINVAL);
	ck_assert_msg(strstr(lb.last, "multiple"), "log: %s", lb.last);
	/* a pipe is no snapshot file */
	{
		int p[2];

		ck_assert_int_eq(pipe(p), 0);
		bad = r;
		bad.mem = NULL;
		bad.fd = p[0];
		ck_assert_int_eq(pcopy_source_create(&s, &bad, 1, &o), -EINVAL);
		close(p[0]);
		close(p[1]);
	}
	o.size = sizeof(o) + 8;
	ck_assert_int_eq(pcopy_source_create(&s, &r, 1, &o), -EINVAL);
	o.size = sizeof(o);
	o.flags = 0x80;
	ck_assert_int_eq(pcopy_source_create(&s, &r, 1, &o), -EINVAL);
	o.flags = 0;

	/* a good one: wait before start, destroy before start */
	ck_assert_int_eq(pcopy_source_create(&s, &r, 1, &o), 0);
	ck_assert_int_eq(pcopy_source_wait(s, 0), -EINVAL);
	ck_assert_str_eq(pcopy_source_error(s), "");
	pcopy_source_destroy(s);
	pcopy_source_destroy(NULL);
	/* NULL options are the defaults */
	ck_assert_int_eq(pcopy_source_create(&s, &r, 1, NULL), 0);
	pcopy_source_destroy(s);
}
END_TEST

/* ---- urgent connection, resume, keepalive, PSK, ablations, rate ---- */

#define OFFER_ALL (PCOPY_FEAT_URGENT | PCOPY_FEAT_RESUME)

/* A further connection of the same session, driven by a fake destination
 * thread while the test thread calls pcopy_source_add_conn. */
struct stage {
	struct fdest d;
	pthread_t t;
	int src_fd;
};

static void stage_open(struct stage *st, const struct image *im,
		       uint32_t kind, uint64_t session)
{
	int sv[2];

	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	fdest_init(&st->d, sv[1], im, OFFER_ALL);
	st->d.hello.conn_kind = kind;
	st->d.hello.session_id = session;
	st->src_fd = sv[0];
}

/* Start the fake side, hand the source its end; returns add_conn's result
 * after the fake side is done. */
static int stage_run(struct stage *st, struct pcopy_source *s)
{
	int err;

	ck_assert_int_eq(pthread_create(&st->t, NULL, fdest_main, &st->d), 0);
	err = pcopy_source_add_conn(s, st->src_fd);
	pthread_join(st->t, NULL);
	return err;
}

static void wait_paused(struct pcopy_source *s)
{
	int i;

	for (i = 0; i < 10000; i++) {
		if (pcopy_source_paused(s))
			return;
		usleep(1000);
	}
	ck_abort_msg("the source never paused (error: %s)",
		     pcopy_source_error(s));
}

/* Received bitmaps per region from what fdest(s) saw; `drop` marks every
 * page with index % 3 == 1 as lost even if it arrived. */
struct bitmaps {
	uint64_t *w[MAXR];
	uint64_t *const *ptr;
};

static void bitmaps_init(struct bitmaps *b, const struct image *im)
{
	unsigned r;

	for (r = 0; r < im->n; r++)
		b->w[r] = calloc((im->reg[r].length / TP + 63) / 64, 8);
	b->ptr = b->w;
}

static void bitmaps_mark(struct bitmaps *b, const struct fdest *d, bool drop,
			 uint64_t *nmarked)
{
	unsigned r;
	uint64_t tp;

	for (r = 0; r < d->im->n; r++)
		for (tp = 0; tp < d->im->reg[r].length / TP; tp++) {
			if (!d->seen[r][tp] || (drop && tp % 3 == 1))
				continue;
			if (!(b->w[r][tp / 64] & (1ull << (tp % 64))))
				(*nmarked)++;
			b->w[r][tp / 64] |= 1ull << (tp % 64);
		}
}

static bool bit(const struct bitmaps *b, unsigned r, uint64_t tp)
{
	return b->w[r][tp / 64] >> (tp % 64) & 1;
}

static void bitmaps_free(struct bitmaps *b, const struct image *im)
{
	unsigned r;

	for (r = 0; r < im->n; r++)
		free(b->w[r]);
}

static void resume_image(struct image *im)
{
	image_init(im);
	image_add(im, 2 * MIB, TP);	/* 512 host pages */
	image_add(im, 1 * MIB, TP);	/* 256 */
}

/* Where the first stage cuts: after N frames, or at END (-1). */
static const long cut_points[] = { 1, 37, 400, -1 };

START_TEST(test_resume_cut)
{
	struct image im;
	struct session ss;
	struct stage st;
	struct bitmaps b;
	uint64_t marked = 0, want_req = (1ull << 40) | 250, pos, tp, unrec = 0;
	uint64_t lost_sent = 0;
	unsigned r;

	resume_image(&im);
	session_setup(&ss, &im, 0, OFFER_ALL, 0);
	if (cut_points[_i] >= 0)
		ss.d.close_after = cut_points[_i];
	else
		ss.d.close_at_end = true;
	session_start(&ss);
	ck_assert_int_eq(ss.start_err, 0);
	pthread_join(ss.t, NULL);
	wait_paused(ss.s);
	/* a pause is not an end */
	ck_assert_int_eq(pcopy_source_wait(ss.s, 50), -ETIMEDOUT);

	bitmaps_init(&b, &im);
	bitmaps_mark(&b, &ss.d, true, &marked);
	for (r = 0; r < im.n; r++)
		for (tp = 0; tp < im.reg[r].length / TP; tp++)
			lost_sent += ss.d.seen[r][tp] && !bit(&b, r, tp);
	/* page 250 of region 1 is never received before the resume */
	b.w[1][250 / 64] &= ~(1ull << (250 % 64));
	stage_open(&st, &im, PCOPY_CONN_RESUME, ss.s->hello.session_id);
	st.d.bitmap = b.ptr;
	st.d.start_req[0] = (struct wire_req){ .region = 1, .count = 1,
					       .offset = 250 * TP };
	st.d.n_start_req = 1;
	ck_assert_int_eq(stage_run(&st, ss.s), 0);
	ck_assert_int_eq(pcopy_source_wait(ss.s, 20000), 0);
	ck_assert_msg(st.d.fail[0] == '\0', "destination: %s", st.d.fail);
	ck_assert(st.d.got_end);
	/* exactly the pages not marked received, each once */
	for (r = 0; r < im.n; r++)
		for (tp = 0; tp < im.reg[r].length / TP; tp++) {
			ck_assert_msg(st.d.seen[r][tp] == !bit(&b, r, tp),
				      "cut %ld: r%u/%llu marked %d, sent %u times",
				      cut_points[_i], r, (unsigned long long)tp,
				      bit(&b, r, tp), st.d.seen[r][tp]);
			unrec += !bit(&b, r, tp);
		}
	ck_assert_uint_eq(st.d.norder, unrec);
	/* the re-sent request first */
	ck_assert(pos_of(&st.d, want_req, &pos));
	ck_assert_uint_eq(pos, 0);
	ck_assert_int_eq(pcopy_source_stats(ss.s, &ss.st), 0);
	ck_assert_uint_eq(ss.st.breaks, 1);
	/* pages the source had sent and the bitmap calls lost go again */
	ck_assert_uint_ge(ss.st.resent_pages, lost_sent);
	ck_assert_uint_le(ss.st.resent_pages, unrec);
	ck_assert_int_eq(pcopy_source_paused(ss.s), 0);
	fdest_free(&st.d);
	bitmaps_free(&b, &im);
	session_free(&ss);
	image_free(&im);
}
END_TEST

/* Wrong session, a break inside the resume handshake, a second break after
 * a resume, then completion: every page exactly once over all stages. */
START_TEST(test_resume_twice)
{
	struct image im;
	struct session ss;
	struct stage bad, cut, st2, st3;
	struct bitmaps b;
	uint64_t marked = 0, tp;
	unsigned r;
	int err;

	resume_image(&im);
	session_setup(&ss, &im, 0, OFFER_ALL, 0);
	ss.d.close_after = 100;
	session_start(&ss);
	pthread_join(ss.t, NULL);
	wait_paused(ss.s);

	/* another session's id is refused, and the pause goes on */
	stage_open(&bad, &im, PCOPY_CONN_RESUME, ss.s->hello.session_id ^ 0x1234);
	err = stage_run(&bad, ss.s);
	ck_assert_int_eq(err, -EPROTO);
	ck_assert_int_ne(bad.d.hs_err, 0);
	ck_assert_msg(strstr(bad.d.hs_msg, "session"), "dest saw: %s",
		      bad.d.hs_msg);
	ck_assert_int_eq(pcopy_source_paused(ss.s), 1);

	/* the connection breaks in the middle of the bitmap */
	bitmaps_init(&b, &im);
	bitmaps_mark(&b, &ss.d, false, &marked);
	stage_open(&cut, &im, PCOPY_CONN_RESUME, ss.s->hello.session_id);
	cut.d.bitmap = b.ptr;
	cut.d.bitmap_cut = true;
	err = stage_run(&cut, ss.s);
	ck_assert_msg(err == -ECONNRESET || err == -EPIPE, "err %d", err);
	ck_assert_int_eq(pcopy_source_paused(ss.s), 1);

	/* a resume that breaks again */
	stage_open(&st2, &im, PCOPY_CONN_RESUME, ss.s->hello.session_id);
	st2.d.bitmap = b.ptr;
	st2.d.close_after = 150;
	ck_assert_int_eq(stage_run(&st2, ss.s), 0);
	wait_paused(ss.s);
	ck_assert_msg(st2.d.fail[0] == '\0', "destination: %s", st2.d.fail);

	bitmaps_mark(&b, &st2.d, false, &marked);
	stage_open(&st3, &im, PCOPY_CONN_RESUME, ss.s->hello.session_id);
	st3.d.bitmap = b.ptr;
	ck_assert_int_eq(stage_run(&st3, ss.s), 0);
	ck_assert_int_eq(pcopy_source_wait(ss.s, 20000), 0);
	ck_assert_msg(st3.d.fail[0] == '\0', "destination: %s", st3.d.fail);
	for (r = 0; r < im.n; r++)
		for (tp = 0; tp < im.reg[r].length / TP; tp++)
			ck_assert_msg(ss.d.seen[r][tp] + st2.d.seen[r][tp] +
				      st3.d.seen[r][tp] == 1,
				      "r%u/%llu received %u+%u+%u times", r,
				      (unsigned long long)tp, ss.d.seen[r][tp],
				      st2.d.seen[r][tp], st3.d.seen[r][tp]);
	ck_assert_int_eq(pcopy_source_stats(ss.s, &ss.st), 0);
	ck_assert_uint_eq(ss.st.breaks, 2);
	fdest_free(&bad.d);
	fdest_free(&cut.d);
	fdest_free(&st2.d);
	fdest_free(&st3.d);
	bitmaps_free(&b, &im);
	session_free(&ss);
	image_free(&im);
}
END_TEST

/* A corrupted frame reported by the destination (ERROR EBADMSG) is a break
 * too; a fatal ERROR is not. */
START_TEST(test_resume_after_peer_error)
{
	struct image im;
	struct session ss;

	resume_image(&im);
	session_setup(&ss, &im, 0, OFFER_ALL, 0);
	ss.d.send_error = EBADMSG;
	ss.d.no_read = true;
	ss.d.quit_fd = eventfd(0, EFD_CLOEXEC);
	session_start(&ss);
	wait_paused(ss.s);
	ck_assert_int_eq(pcopy_source_stats(ss.s, &ss.st), 0);
	ck_assert_uint_eq(ss.st.breaks, 1);
	{
		uint64_t one = 1;

		ck_assert_int_eq(write(ss.d.quit_fd, &one, 8), 8);
	}
	pthread_join(ss.t, NULL);
	close(ss.d.quit_fd);
	session_free(&ss);
	image_free(&im);
}
END_TEST

START_TEST(test_resume_deadline)
{
	struct pcopy_source_opts o;
	struct image im;
	struct session ss;
	uint64_t t0, ms;

	resume_image(&im);
	pcopy_source_opts_init(&o);
	o.resume_deadline_ms = 300;
	session_setup_o(&ss, &im, &o, OFFER_ALL);
	ss.d.close_after = 10;
	session_start(&ss);
	pthread_join(ss.t, NULL);
	wait_paused(ss.s);
	t0 = pcopy_now_ns();
	ck_assert_int_eq(pcopy_source_wait(ss.s, -1), -ENOLINK);
	ms = (pcopy_now_ns() - t0) / 1000000;
	ck_assert_msg(ms < 5000, "deadline took %llu ms", (unsigned long long)ms);
	ck_assert_msg(strstr(pcopy_source_error(ss.s), "did not resume"),
		      "message: %s", pcopy_source_error(ss.s));
	ck_assert_int_eq(pcopy_source_paused(ss.s), 0);
	/* too late now */
	{
		struct stage st;

		stage_open(&st, &im, PCOPY_CONN_RESUME, ss.s->hello.session_id);
		ck_assert_int_eq(stage_run(&st, ss.s), -ESHUTDOWN);
		fdest_free(&st.d);
	}
	session_free(&ss);
	image_free(&im);
}
END_TEST

START_TEST(test_no_resume)
{
	struct image im;
	struct session ss;

	resume_image(&im);
	session_setup(&ss, &im, PCOPY_SOURCE_NO_RESUME, OFFER_ALL, 0);
	ss.d.close_after = 10;
	session_start(&ss);
	pthread_join(ss.t, NULL);
	ss.wait_err = pcopy_source_wait(ss.s, 20000);
	ck_assert_msg(ss.wait_err == -ECONNRESET || ss.wait_err == -EPIPE,
		      "wait: %d", ss.wait_err);
	ck_assert_int_eq(pcopy_source_paused(ss.s), 0);
	ck_assert_int_eq(pcopy_source_stats(ss.s, &ss.st), 0);
	ck_assert_uint_eq(ss.st.breaks, 0);
	ck_assert_uint_eq(ss.d.features & PCOPY_FEAT_RESUME, 0);
	session_free(&ss);
	image_free(&im);
}
END_TEST

/* The destination goes silent (no reads, no PINGs): a break after the
 * keepalive; with NO_RESUME (loop 0) the end, else (loop 1) a pause. */
START_TEST(test_keepalive_silence)
{
	struct pcopy_source_opts o;
	struct image im;
	struct session ss;
	uint64_t t0, ms, one = 1;

	image_init(&im);
	image_add(&im, 16 * MIB, TP);
	pcopy_source_opts_init(&o);
	o.keepalive_ms = 300;
	o.flags = _i ? 0 : PCOPY_SOURCE_NO_RESUME;
	session_setup_o(&ss, &im, &o, OFFER_ALL);
	ss.d.no_read = true;
	ss.d.quit_fd = eventfd(0, EFD_CLOEXEC);
	t0 = pcopy_now_ns();
	session_start(&ss);
	if (_i) {
		wait_paused(ss.s);
	} else {
		ck_assert_int_eq(pcopy_source_wait(ss.s, 10000), -ENOLINK);
		ck_assert_msg(strstr(pcopy_source_error(ss.s), "keepalive"),
			      "message: %s", pcopy_source_error(ss.s));
	}
	ms = (pcopy_now_ns() - t0) / 1000000;
	ck_assert_msg(ms >= 250 && ms < 5000, "silence noticed after %llu ms",
		      (unsigned long long)ms);
	ck_assert_int_eq(write(ss.d.quit_fd, &one, 8), 8);
	pthread_join(ss.t, NULL);
	close(ss.d.quit_fd);
	session_free(&ss);
	image_free(&im);
}
END_TEST

/* An idle source PINGs at a third of the keepalive, and a destination that
 * PINGs back keeps the session alive. */
START_TEST(test_keepalive_ping)
{
	struct pcopy_source_opts o;
	struct image im;
	struct session ss;

	image_init(&im);
	image_add(&im, 256 * 1024, TP);
	pcopy_source_opts_init(&o);
	o.keepalive_ms = 300;
	session_setup_o(&ss, &im, &o, OFFER_ALL);
	ss.d.end_wait_ms = 1000;
	ss.d.send_ping_ms = 50;
	session_start(&ss);
	session_finish(&ss, 20000);
	assert_clean_run(&ss);
	ck_assert_uint_ge(ss.d.pings, 4);
	ck_assert_uint_eq(ss.st.breaks, 0);
	session_free(&ss);
	image_free(&im);
}
END_TEST

/* loop 0: same key; 1: wrong key; 2: the destination has none. */
START_TEST(test_psk)
{
	static const char key[] = "correct horse battery staple";
	struct pcopy_source_opts o;
	struct image im;
	struct session ss;

	image_init(&im);
	image_add(&im, 1 * MIB, TP);
	pcopy_source_opts_init(&o);
	o.psk = key;
	o.psk_len = sizeof(key) - 1;
	session_setup_o(&ss, &im, &o, OFFER_ALL);
	if (_i == 0) {
		ss.d.psk = key;
		ss.d.psk_len = sizeof(key) - 1;
	} else if (_i == 1) {
		ss.d.psk = "correct horse battery stapler";
		ss.d.psk_len = sizeof(key);
	}
	session_start(&ss);
	session_finish(&ss, 20000);
	if (_i == 0) {
		assert_clean_run(&ss);
		ck_assert_uint_ne(ss.d.features & PCOPY_FEAT_AUTH, 0);
	} else {
		ck_assert_int_eq(ss.start_err, -EACCES);
		ck_assert_int_eq(ss.wait_err, -EACCES);
		ck_assert_int_ne(ss.d.hs_err, 0);
		ck_assert_uint_eq(ss.d.nframes, 0);
		ck_assert_uint_eq(ss.st.bytes_payload, 0);
	}
	session_free(&ss);
	image_free(&im);
}
END_TEST

/* An urgent connection needs the key too: wrong (loop 0) or right (1). */
START_TEST(test_psk_urgent)
{
	static const char key[] = "k3y";
	struct pcopy_source_opts o;
	struct image im;
	struct session ss;
	struct stage u;
	uint64_t one = 1;

	image_init(&im);
	image_add(&im, 16 * MIB, TP);
	pcopy_source_opts_init(&o);
	o.psk = key;
	o.psk_len = 3;
	session_setup_o(&ss, &im, &o, OFFER_ALL);
	ss.d.psk = key;
	ss.d.psk_len = 3;
	ss.d.no_read = true;
	ss.d.quit_fd = eventfd(0, EFD_CLOEXEC);
	session_start(&ss);
	ck_assert_int_eq(ss.start_err, 0);
	stage_open(&u, &im, PCOPY_CONN_URGENT, ss.s->hello.session_id);
	u.d.psk = _i ? key : "k3Y";
	u.d.psk_len = 3;
	u.d.start_req[0] = (struct wire_req){ .region = 0, .count = 1,
					      .offset = 3000 * TP };
	u.d.n_start_req = 1;
	u.d.close_after = 1;
	if (_i) {
		ck_assert_int_eq(stage_run(&u, ss.s), 0);
		ck_assert_uint_eq(u.d.norder, 1);
		ck_assert_uint_eq(u.d.order[0], 3000);
	} else {
		ck_assert_int_eq(stage_run(&u, ss.s), -EACCES);
		ck_assert_uint_eq(u.d.nframes, 0);
	}
	ck_assert_int_eq(pcopy_source_paused(ss.s), 0);
	ck_assert_int_eq(write(ss.d.quit_fd, &one, 8), 8);
	pthread_join(ss.t, NULL);
	close(ss.d.quit_fd);
	fdest_free(&u.d);
	session_free(&ss);
	image_free(&im);
}
END_TEST

START_TEST(test_no_background)
{
	struct image im;
	struct session ss;
	uint64_t i;

	image_init(&im);
	image_add(&im, 1 * MIB, TP);	/* 256 host pages */
	session_setup(&ss, &im, PCOPY_SOURCE_NO_BACKGROUND, OFFER_ALL, 0);
	ss.d.start_req[0] = (struct wire_req){ .region = 0, .count = 10,
					       .offset = 100 * TP };
	ss.d.n_start_req = 1;
	/* after those 10: is the source quiet? then ask for everything */
	ss.d.mid_req_after = 10;
	ss.d.check_quiet = true;
	ss.d.mid_req = (struct wire_req){ .region = 0, .count = 256, .offset = 0 };
	session_start(&ss);
	session_finish(&ss, 20000);
	assert_clean_run(&ss);
	ck_assert_msg(ss.d.silent, "pages were sent without a request");
	for (i = 0; i < 10; i++)
		ck_assert_uint_eq(ss.d.order[i], 100 + i);
	ck_assert_uint_eq(ss.st.requests, 256);
	ck_assert_uint_eq(ss.st.duplicates, 10);
	session_free(&ss);
	image_free(&im);
}
END_TEST

/* The cap holds on average: no faster than about the rate (the bucket
 * starts full: 20 ms of it, at least 16 KiB). Lenient by 2x. */
START_TEST(test_max_rate)
{
	const uint64_t rate = 8u << 20;
	struct pcopy_source_opts o;
	struct image im;
	struct session ss;
	double secs, want;

	image_init(&im);
	image_add(&im, 4 * MIB, TP);
	pcopy_source_opts_init(&o);
	o.max_rate_bps = rate;
	session_setup_o(&ss, &im, &o, OFFER_ALL);
	session_start(&ss);
	session_finish(&ss, 20000);
	assert_clean_run(&ss);
	secs = (double)ss.st.elapsed_ns * 1e-9;
	want = (double)(ss.st.bytes_wire - rate / 50 - SRC_TX_MAX) / (double)rate;
	ck_assert_msg(secs >= want / 2, "%llu bytes in %.3f s at a cap of %llu B/s",
		      (unsigned long long)ss.st.bytes_wire, secs,
		      (unsigned long long)rate);
	ck_assert_msg(secs < want * 2 + 1.0, "too slow: %.3f s for %.3f", secs,
		      want);
	session_free(&ss);
	image_free(&im);
}
END_TEST

/* Requests on the urgent connection are answered there, even for a page
 * the background already sent, while the main connection's buffers are
 * full because the destination does not read them. Each is an isolated
 * fault: its page, then 16 KiB of unsent pages after it (none after page
 * 0: the background has them). */
START_TEST(test_urgent)
{
	struct image im;
	struct session ss;
	struct stage u;
	uint64_t one = 1;
	int i;

	image_init(&im);
	image_add(&im, 16 * MIB, TP);	/* 4096 host pages */
	session_setup(&ss, &im, 0, OFFER_ALL, 0);
	ss.d.no_read = true;
	ss.d.quit_fd = eventfd(0, EFD_CLOEXEC);
	session_start(&ss);
	ck_assert_int_eq(ss.start_err, 0);
	/* the sender fills the main socket and blocks */
	for (i = 0; i < 200; i++) {
		ck_assert_int_eq(pcopy_source_stats(ss.s, &ss.st), 0);
		if (ss.st.bytes_wire > 64 * 1024)
			break;
		usleep(5000);
	}
	ck_assert_uint_gt(ss.st.bytes_wire, 64 * 1024);
	stage_open(&u, &im, PCOPY_CONN_URGENT, ss.s->hello.session_id);
	u.d.start_req[0] = (struct wire_req){ .region = 0, .count = 1,
					      .offset = 4000 * TP };
	u.d.start_req[1] = (struct wire_req){ .region = 0, .count = 1,
					      .offset = 0 };
	u.d.n_start_req = 2;
	u.d.close_after = 6;	/* one frame per 4 KiB host page */
	ck_assert_int_eq(stage_run(&u, ss.s), 0);
	ck_assert_msg(u.d.fail[0] == '\0', "urgent: %s", u.d.fail);
	ck_assert_uint_eq(u.d.norder, 6);
	for (i = 0; i < 5; i++)
		ck_assert_uint_eq(u.d.order[i], 4000 + (uint64_t)i);
	ck_assert_uint_eq(u.d.order[5], 0);
	ck_assert_int_eq(pcopy_source_stats(ss.s, &ss.st), 0);
	ck_assert_uint_eq(ss.st.urgent_pages, 6);
	ck_assert_uint_eq(ss.st.request_msgs, 1);
	/* the urgent connection closing is no break */
	usleep(50000);
	ck_assert_int_eq(pcopy_source_paused(ss.s), 0);
	ck_assert_int_eq(pcopy_source_wait(ss.s, 0), -ETIMEDOUT);
	ck_assert_int_eq(write(ss.d.quit_fd, &one, 8), 8);
	pthread_join(ss.t, NULL);
	close(ss.d.quit_fd);
	fdest_free(&u.d);
	session_free(&ss);
	image_free(&im);
}
END_TEST

/* A bad REQ on the urgent connection breaks the session (it resumes), and
 * no ERROR goes out: to the destination that would mean "over". */
START_TEST(test_urgent_bad_req)
{
	struct image im;
	struct session ss;
	struct stage u;
	uint64_t one = 1;

	image_init(&im);
	image_add(&im, 4 * MIB, TP);
	session_setup(&ss, &im, 0, OFFER_ALL, 0);
	ss.d.no_read = true;
	ss.d.quit_fd = eventfd(0, EFD_CLOEXEC);
	session_start(&ss);
	ck_assert_int_eq(ss.start_err, 0);
	stage_open(&u, &im, PCOPY_CONN_URGENT, ss.s->hello.session_id);
	u.d.bad_req = true;
	ck_assert_int_eq(stage_run(&u, ss.s), 0);
	wait_paused(ss.s);
	ck_assert_msg(!u.d.got_error, "ERROR sent: %s", u.d.peer_msg);
	ck_assert_int_eq(pcopy_source_stats(ss.s, &ss.st), 0);
	ck_assert_uint_eq(ss.st.breaks, 1);
	ck_assert_int_eq(write(ss.d.quit_fd, &one, 8), 8);
	pthread_join(ss.t, NULL);
	close(ss.d.quit_fd);
	fdest_free(&u.d);
	session_free(&ss);
	image_free(&im);
}
END_TEST

/* Urgent with a full restore: the urgent pages (the two asked for and the
 * four of the isolated fault's readahead) are marked sent, so the main
 * stream skips them; NO_URGENT refuses the connection. */
START_TEST(test_urgent_skip)
{
	struct image im;
	struct session ss;
	struct stage u;
	uint64_t one = 1, tp;

	image_init(&im);
	image_add(&im, 8 * MIB, TP);	/* 2048 host pages */
	session_setup(&ss, &im, _i ? PCOPY_SOURCE_NO_URGENT : 0, OFFER_ALL, 0);
	ss.d.go_fd = eventfd(0, EFD_CLOEXEC);	/* main reads after urgent */
	session_start(&ss);
	ck_assert_int_eq(ss.start_err, 0);
	stage_open(&u, &im, PCOPY_CONN_URGENT, ss.s->hello.session_id);
	u.d.start_req[0] = (struct wire_req){ .region = 0, .count = 2,
					      .offset = 2000 * TP };
	u.d.n_start_req = 1;
	u.d.close_after = 6;
	if (_i) {
		ck_assert_int_eq(stage_run(&u, ss.s), -EOPNOTSUPP);
		ck_assert_int_ne(u.d.hs_err, 0);
	} else {
		ck_assert_int_eq(stage_run(&u, ss.s), 0);
		ck_assert_uint_eq(u.d.norder, 6);
	}
	ck_assert_int_eq(write(ss.d.go_fd, &one, 8), 8);
	session_finish(&ss, 20000);
	close(ss.d.go_fd);
	ck_assert_msg(ss.d.fail[0] == '\0', "destination: %s", ss.d.fail);
	ck_assert_int_eq(ss.wait_err, 0);
	ck_assert(ss.d.got_end);
	/* every page once: the urgent ones on urgent only */
	for (tp = 0; tp < 2048; tp++)
		ck_assert_msg(ss.d.seen[0][tp] + (_i ? 0 : u.d.seen[0][tp]) == 1,
			      "page %llu: %u on main, %u on urgent",
			      (unsigned long long)tp, ss.d.seen[0][tp],
			      u.d.seen[0][tp]);
	ck_assert_uint_eq(ss.st.urgent_pages, _i ? 0 : 6);
	fdest_free(&u.d);
	session_free(&ss);
	image_free(&im);
}
END_TEST

/* Wait until stats field `f` of source s is above v (5 s at most). */
#define WAIT_STAT_GT(s, st, f, v) do { \
	int w_; \
	for (w_ = 0; w_ < 1000; w_++) { \
		ck_assert_int_eq(pcopy_source_stats((s), (st)), 0); \
		if ((st)->f > (v)) \
			break; \
		usleep(5000); \
	} \
	ck_assert_uint_gt((st)->f, (v)); \
} while (0)


/* A session whose destination reads its main connection only once go_fd
 * is written: the sender fills the socket and blocks with fewer than
 * max_sent host pages sent (so urgent requests find pages unsent). */
static void start_stalled_main(struct session *ss, struct image *im,
			       size_t bytes, uint64_t max_sent)
{
	image_init(im);
	image_add(im, bytes, TP);
	session_setup(ss, im, 0, OFFER_ALL, 0);
	ss->d.go_fd = eventfd(0, EFD_CLOEXEC);
	session_start(ss);
	ck_assert_int_eq(ss->start_err, 0);
	WAIT_STAT_GT(ss->s, &ss->st, bytes_wire, 64 * 1024);
	usleep(20000);
	ck_assert_int_eq(pcopy_source_stats(ss->s, &ss->st), 0);
	ck_assert_uint_lt(atomic_load(&ss->s->st.host_pages_sent), max_sent);
}

/* Let the stalled main connection read, finish the session, and check that
 * both ends are clean and every page of the 16 MiB image arrived: exactly
 * once over both connections (`once`), or at least once. */
static void finish_stalled_main(struct session *ss, const struct stage *u, bool once)
{
	uint64_t one = 1, i;

	ck_assert_int_eq(write(ss->d.go_fd, &one, 8), 8);
	session_finish(ss, 20000);
	close(ss->d.go_fd);
	ck_assert_msg(ss->d.fail[0] == '\0', "destination: %s", ss->d.fail);
	ck_assert_int_eq(ss->wait_err, 0);
	for (i = 0; i < 4096; i++) {
		unsigned m = ss->d.seen[0][i], g = u->d.seen[0][i];

		if (once)
			ck_assert_msg(m + g == 1, "page %llu: %u on main, %u on urgent",
				      (unsigned long long)i, m, g);
		else
			ck_assert_msg(m + g >= 1, "page %llu never arrived",
				      (unsigned long long)i);
	}
}
/*
 * Readahead on the urgent connection: a single request sends its page and
 * the next 16 KiB; the next one continuing it sends the 32 KiB after those
 * (its own page went out already); a request elsewhere sends its page and
 * 16 KiB again. And the background scan goes on after the urgent window,
 * not where it was.
 */
START_TEST(test_urgent_readahead)
{
	struct image im;
	struct session ss;
	struct stage u;
	uint64_t i, pos_near, pos_far;
	struct wire_req rq[3] = {
		{ .region = 0, .count = 1, .offset = 3000 * TP },
		{ .region = 0, .count = 1, .offset = 3001 * TP },
		{ .region = 0, .count = 1, .offset = 3500 * TP },
	};

	/* 4096 host pages; the sender blocks far before 3000 */
	start_stalled_main(&ss, &im, 16 * MIB, 2000);
	stage_open(&u, &im, PCOPY_CONN_URGENT, ss.s->hello.session_id);
	memcpy(u.d.start_req, rq, sizeof(rq));
	u.d.n_start_req = 3;
	/* 3000 + 4 read ahead, 8 more after 3001, 3500 + 4 */
	u.d.close_after = 18;
	ck_assert_int_eq(stage_run(&u, ss.s), 0);
	ck_assert_msg(u.d.fail[0] == '\0', "urgent: %s", u.d.fail);
	ck_assert_uint_eq(u.d.norder, 18);
	for (i = 0; i < 13; i++)
		ck_assert_uint_eq(u.d.order[i], 3000 + i);
	for (i = 0; i < 5; i++)
		ck_assert_uint_eq(u.d.order[13 + i], 3500 + i);
	finish_stalled_main(&ss, &u, true);
	ck_assert_uint_eq(ss.st.urgent_pages, 18);
	/* the scan went on after the last urgent window (3500..3504), not
	 * from where the main connection blocked (before 2000) */
	ck_assert(pos_of(&ss.d, 3505, &pos_near));
	ck_assert(pos_of(&ss.d, 2000, &pos_far));
	ck_assert_uint_lt(pos_near, pos_far);
	fdest_free(&u.d);
	session_free(&ss);
	image_free(&im);
}
END_TEST

/*
 * A page the background already claimed (it sits in the stalled main
 * socket) is answered on the urgent connection even when it lies inside
 * the run's readahead window: that window had no page of its own to send.
 * The background claims pages 0..32 and more (62 here) before any request;
 * REQ 4 starts a run, REQ 5 continues it (the readahead windows after them,
 * 5..16 and 17..32 for REQ 7, find nothing unsent: nothing of theirs can
 * follow on the urgent socket after the fake destination stopped reading),
 * REQ 7 must still be answered (a build that took the whole window for the
 * urgent connection's own never answered it: the fault waited on main).
 */
START_TEST(test_urgent_resends_background_claimed)
{
	struct image im;
	struct session ss;
	struct stage u;
	struct timeval tv = { .tv_sec = 5 };
	struct wire_req rq[3] = {
		{ .region = 0, .count = 1, .offset = 4 * TP },
		{ .region = 0, .count = 1, .offset = 5 * TP },
		{ .region = 0, .count = 1, .offset = 7 * TP },
	};

	start_stalled_main(&ss, &im, 16 * MIB, 2000);
	/* the background got past every window before any request came */
	ck_assert_uint_gt(atomic_load(&ss.s->st.host_pages_sent), 32);
	stage_open(&u, &im, PCOPY_CONN_URGENT, ss.s->hello.session_id);
	/* a missing answer fails the read instead of hanging the test */
	ck_assert_int_eq(setsockopt(u.d.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
	memcpy(u.d.start_req, rq, sizeof(rq));
	u.d.n_start_req = 3;
	u.d.close_after = 3;
	ck_assert_int_eq(stage_run(&u, ss.s), 0);
	ck_assert_msg(u.d.fail[0] == '\0', "urgent: %s", u.d.fail);
	ck_assert_uint_eq(u.d.norder, 3);
	ck_assert_uint_eq(u.d.order[0], 4);
	ck_assert_uint_eq(u.d.order[1], 5);
	ck_assert_uint_eq(u.d.order[2], 7);
	finish_stalled_main(&ss, &u, false);
	fdest_free(&u.d);
	session_free(&ss);
	image_free(&im);
}
END_TEST

/*
 * On a paced link the urgent readahead stays within what the pacing lets
 * into the path (200 us of the link rate): an isolated fault gets a tenth of
 * that (nothing at 1 Gbit/s), a sequential one at most all of it. While the
 * paced connection has no measured rate yet (without a background stream it
 * never gets one), the budget is 16 KiB, not unlimited. _i = 0: a measured
 * 1 Gbit/s (25000 bytes: 6 pages); 1: paced, rate unknown (16 KiB: 4 pages,
 * nothing for an isolated fault).
 */
START_TEST(test_urgent_readahead_paced)
{
	struct image im;
	struct session ss;
	struct stage u;
	uint64_t i, n = _i ? 4 : 6;
	struct wire_req rq[2] = {
		{ .region = 0, .count = 1, .offset = 3000 * TP },
		{ .region = 0, .count = 1, .offset = 3001 * TP },
	};

	start_stalled_main(&ss, &im, 16 * MIB, 2000);
	/* white box: the pacer's figures, as a paced main connection has them
	 * (this one is a socketpair, which the sender never measures) */
	atomic_store(&ss.s->main_paced, true);
	atomic_store(&ss.s->link_rate, _i ? 0 : 125000000u);
	stage_open(&u, &im, PCOPY_CONN_URGENT, ss.s->hello.session_id);
	memcpy(u.d.start_req, rq, sizeof(rq));
	u.d.n_start_req = 2;
	u.d.close_after = (long)(2 + n);	/* 3000 alone, 3001 + n after it */
	ck_assert_int_eq(stage_run(&u, ss.s), 0);
	ck_assert_msg(u.d.fail[0] == '\0', "urgent: %s", u.d.fail);
	ck_assert_uint_eq(u.d.norder, 2 + n);
	for (i = 0; i < 2 + n; i++)
		ck_assert_uint_eq(u.d.order[i], 3000 + i);
	finish_stalled_main(&ss, &u, true);
	/* nothing more went out on the urgent connection than those */
	ck_assert_uint_eq(ss.st.urgent_pages, 2 + n);
	fdest_free(&u.d);
	session_free(&ss);
	image_free(&im);
}
END_TEST

/*
 * END follows the last page actually written on any connection: the urgent
 * thread has claimed pages it cannot write (its peer does not read) while
 * the main connection delivers everything else; END must wait for those
 * writes, and come once the urgent peer reads.
 */
START_TEST(test_end_after_urgent)
{
	struct image im;
	struct session ss;
	struct stage u;
	uint64_t one = 1, i, on_urgent;
	bool early_end;

	start_stalled_main(&ss, &im, 4 * MIB, 200);	/* 1024 host pages */
	/* the urgent peer asks for pages 200.. and reads nothing yet */
	stage_open(&u, &im, PCOPY_CONN_URGENT, ss.s->hello.session_id);
	u.d.start_req[0] = (struct wire_req){ .region = 0, .count = 824,
					      .offset = 200 * TP };
	u.d.n_start_req = 1;
	u.d.go_fd = eventfd(0, EFD_CLOEXEC);
	ck_assert_int_eq(pthread_create(&u.t, NULL, fdest_main, &u.d), 0);
	ck_assert_int_eq(pcopy_source_add_conn(ss.s, u.src_fd), 0);
	WAIT_STAT_GT(ss.s, &ss.st, urgent_pages, 0);
	/* the library's threads say what they are (top -H, perf) */
	ck_assert(tl_thread_named("pcopy-src-read"));
	ck_assert(tl_thread_named("pcopy-src-send"));
	ck_assert(tl_thread_named("pcopy-src-urg"));
	usleep(50000);	/* its socket is full now */
	/* the main peer reads: the background sends all the rest */
	ck_assert_int_eq(write(ss.d.go_fd, &one, 8), 8);
	/* every page claimed (white box): the urgent ones are unwritten */
	for (i = 0; i < 1000 && atomic_load(&ss.s->pages_left); i++)
		usleep(5000);
	ck_assert_uint_eq(atomic_load(&ss.s->pages_left), 0);
	ck_assert_uint_gt(atomic_load(&ss.s->urg_unsent), 0);
	usleep(200000);
	early_end = __atomic_load_n(&ss.d.got_end, __ATOMIC_ACQUIRE);
	ck_assert_int_eq(write(u.d.go_fd, &one, 8), 8);
	session_finish(&ss, 20000);
	pthread_join(u.t, NULL);
	close(ss.d.go_fd);
	close(u.d.go_fd);
	ck_assert_msg(!early_end, "END came before the urgent pages were written");
	ck_assert_msg(ss.d.fail[0] == '\0', "destination: %s", ss.d.fail);
	ck_assert_msg(u.d.fail[0] == '\0', "urgent: %s", u.d.fail);
	ck_assert_int_eq(ss.wait_err, 0);
	ck_assert(ss.d.got_end);
	on_urgent = 0;
	for (i = 0; i < 1024; i++) {
		ck_assert_msg(ss.d.seen[0][i] + u.d.seen[0][i] >= 1,
			      "page %llu never arrived", (unsigned long long)i);
		on_urgent += u.d.seen[0][i];
	}
	ck_assert_uint_gt(on_urgent, 0);
	fdest_free(&u.d);
	session_free(&ss);
	image_free(&im);
}
END_TEST

/*
 * A destination that offers the urgent connection gets the background
 * stream once that connection joins, or after urgent_grace_ns (white box:
 * 3 s here, under the keepalive; 5 ms in the library), so that the urgent
 * handshake does not compete with a busy stream. Loop 0: nothing goes out
 * for 200 ms, then the urgent connection joins and the background follows
 * at once. Loop 1: a 150 ms grace and no urgent connection: the restore
 * completes, but not before the grace.
 */
START_TEST(test_background_awaits_urgent)
{
	struct image im;
	struct session ss;
	struct stage u;
	uint64_t t0, t_join, i;

	image_init(&im);
	image_add(&im, 4 * MIB, TP);
	session_setup(&ss, &im, 0, OFFER_ALL, 0);
	ss.s->urgent_grace_ns = _i ? 150000000u : 3000000000u;
	t0 = pcopy_now_ns();
	session_start(&ss);
	ck_assert_int_eq(ss.start_err, 0);
	if (!_i) {
		usleep(200000);
		ck_assert_int_eq(pcopy_source_stats(ss.s, &ss.st), 0);
		ck_assert_uint_eq(ss.st.bytes_payload, 0);	/* nothing sent */
		/* the urgent peer asks for page 0 and reads until the end */
		stage_open(&u, &im, PCOPY_CONN_URGENT, ss.s->hello.session_id);
		u.d.start_req[0] = (struct wire_req){ .region = 0, .count = 1 };
		u.d.n_start_req = 1;
		ck_assert_int_eq(pthread_create(&u.t, NULL, fdest_main, &u.d), 0);
		ck_assert_int_eq(pcopy_source_add_conn(ss.s, u.src_fd), 0);
		t_join = pcopy_now_ns();
		/* more than the urgent answer: the background goes, well
		 * before the grace would have let it */
		while (pcopy_source_stats(ss.s, &ss.st) == 0 &&
		       ss.st.bytes_payload <= 64 * 1024 &&
		       pcopy_now_ns() - t_join < 1500000000u)
			usleep(2000);
		ck_assert_uint_gt(ss.st.bytes_payload, 64 * 1024);
		ck_assert_uint_lt(pcopy_now_ns() - t0, 2500000000u);
	}
	session_finish(&ss, 20000);
	ck_assert_msg(ss.d.fail[0] == '\0', "destination: %s", ss.d.fail);
	ck_assert_int_eq(ss.wait_err, 0);
	ck_assert(ss.d.got_end);
	if (_i) {
		assert_clean_run(&ss);
		ck_assert_uint_ge(pcopy_now_ns() - t0, 150000000u);
	} else {
		pthread_join(u.t, NULL);
		ck_assert_msg(u.d.fail[0] == '\0', "urgent: %s", u.d.fail);
		for (i = 0; i < 1024; i++)
			ck_assert_msg(ss.d.seen[0][i] + u.d.seen[0][i] >= 1,
				      "page %llu never arrived", (unsigned long long)i);
		ck_assert_uint_ge(u.d.seen[0][0], 1);
		fdest_free(&u.d);
	}
	session_free(&ss);
	image_free(&im);
}
END_TEST

/* Swap the session's socketpair for a TCP loopback connection, paced like a
 * remote peer (the source paces loopback peers only when a test asks).
 * Returns the source's end. */
static int session_use_tcp(struct session *ss)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t al = sizeof(a);
	int lfd, cfd, sfd;

	lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(lfd, 0);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ck_assert_int_eq(bind(lfd, (struct sockaddr *)&a, sizeof(a)), 0);
	ck_assert_int_eq(listen(lfd, 1), 0);
	ck_assert_int_eq(getsockname(lfd, (struct sockaddr *)&a, &al), 0);
	cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert_int_eq(connect(cfd, (struct sockaddr *)&a, sizeof(a)), 0);
	sfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	ck_assert_int_ge(sfd, 0);
	close(lfd);
	close(ss->d.fd);
	close(ss->start_err);
	ss->d.fd = cfd;
	ss->start_err = sfd;
	ss->s->pace_loopback = true;
	return sfd;
}

/* A restore over TCP loopback, paced and with PCOPY_SOURCE_NO_PACING: both
 * complete; only the paced one measures the link's delivery rate. */
START_TEST(test_no_pacing_tcp)
{
	struct image im;
	struct session ss;

	image_init(&im);
	image_add(&im, 64 * MIB, TP);	/* long enough for several 4 ms rate windows */
	session_setup(&ss, &im, _i ? PCOPY_SOURCE_NO_PACING : 0, 0, 0);
	session_use_tcp(&ss);
	session_start(&ss);
	session_finish(&ss, 20000);
	assert_clean_run(&ss);
	if (_i)
		ck_assert_uint_eq(atomic_load(&ss.s->link_rate), 0);
	else
		ck_assert_msg(atomic_load(&ss.s->link_rate) > 0,
			      "paced, but no delivery rate was measured");
	session_free(&ss);
	image_free(&im);
}
END_TEST

/* The source's bound on unsent bytes of its main socket (sfd), sampled
 * every millisecond until it is want or deadline_ns passes; with
 * requests_ns, the test records a request for the whole window first
 * (white box: the readers store that time for each REQ), so that the
 * destination is never quiet, however late this thread runs. */
static bool lowat_becomes(struct session *ss, int sfd, int want,
			  uint64_t deadline_ns, bool requests)
{
	for (;;) {
		int lowat = 0;
		socklen_t len = sizeof(lowat);

		if (requests)
			atomic_store(&ss->s->req_ns, deadline_ns);
		ck_assert_int_eq(getsockopt(sfd, IPPROTO_TCP, TCP_NOTSENT_LOWAT,
					    &lowat, &len), 0);
		if (lowat == want)
			return true;
		if (pcopy_now_ns() > deadline_ns)
			return false;
		usleep(1000);
	}
}

/*
 * A paced destination that has asked for nothing for 50 ms gets a deeper
 * queue (source_tx.c, QUEUE_QUIET_NS): the sender lifts its socket's bound
 * on unsent bytes from 64 KiB to 4 MiB with it, keeps it there while the
 * destination stays quiet, and puts it back once a request comes. Loop 1:
 * requests all along; the bound is never lifted.
 */
START_TEST(test_paced_quiet_spell)
{
	const int tight = 64 << 10, loose = 4 << 20;
	const uint64_t ms = 1000000;
	struct pcopy_source_opts o;
	struct image im;
	struct session ss;
	uint64_t t0;
	int sfd;

	image_init(&im);
	image_add(&im, 32 * MIB, TP);
	pcopy_source_opts_init(&o);
	/* the session outlasts every deadline below (2 s at least), even
	 * under valgrind: the bound is only read while the source owns sfd */
	o.max_rate_bps = 16u << 20;
	session_setup_o(&ss, &im, &o, 0);
	sfd = session_use_tcp(&ss);
	session_start(&ss);
	ck_assert_int_eq(ss.start_err, 0);
	t0 = pcopy_now_ns();
	if (_i) {
		ck_assert_msg(!lowat_becomes(&ss, sfd, loose, t0 + 400 * ms, true),
			      "unsent bound lifted while requests came");
	} else {
		ck_assert_msg(lowat_becomes(&ss, sfd, loose, t0 + 1000 * ms, false),
			      "no request for 1 s, yet the unsent bound stays");
		ck_assert_msg(!lowat_becomes(&ss, sfd, tight,
					     pcopy_now_ns() + 100 * ms, false),
			      "the unsent bound went back with no request");
		ck_assert_msg(lowat_becomes(&ss, sfd, tight,
					    pcopy_now_ns() + 500 * ms, true),
			      "a request came, yet the unsent bound stays lifted");
	}
	session_finish(&ss, 20000);
	assert_clean_run(&ss);
	session_free(&ss);
	image_free(&im);
}
END_TEST

static Suite *make_source_suite(void)
{
	Suite *su = suite_create("source");
	TCase *tc;

	tc = tcase_create("args");
	tcase_set_timeout(tc, TMO);
	tcase_add_test(tc, test_create_args);
	suite_add_tcase(su, tc);

	tc = tcase_create("stream");
	tcase_set_timeout(tc, TMO);
	tcase_add_test(tc, test_whole_image);
	tcase_add_test(tc, test_request_first);
	tcase_add_test(tc, test_request_sent_pages);
	tcase_add_test(tc, test_zlib);
	tcase_add_test(tc, test_zlib_not_offered);
	tcase_add_test(tc, test_huge_host_page);
	tcase_add_test(tc, test_two_sources);
	suite_add_tcase(su, tc);

	tc = tcase_create("file");
	tcase_set_timeout(tc, TMO);
	tcase_add_test(tc, test_file_holes);
	tcase_add_test(tc, test_file_unaligned_huge);
	suite_add_tcase(su, tc);

	tc = tcase_create("errors");
	tcase_set_timeout(tc, TMO);
	tcase_add_test(tc, test_table_mismatch);
	tcase_add_test(tc, test_hostile_req);
	tcase_add_test(tc, test_duplicate_flood);
	tcase_add_test(tc, test_dest_closes);
	tcase_add_test(tc, test_destroy_full_socket);
	tcase_add_test(tc, test_destroy_busy_reader);
	tcase_add_test(tc, test_handshake_timeout);
	tcase_add_test(tc, test_peer_error);
	tcase_add_test(tc, test_done_early);
	suite_add_tcase(su, tc);

	tc = tcase_create("resume");
	tcase_set_timeout(tc, TMO);
	tcase_add_loop_test(tc, test_resume_cut, 0,
			    (int)(sizeof(cut_points) / sizeof(cut_points[0])));
	tcase_add_test(tc, test_resume_twice);
	tcase_add_test(tc, test_resume_after_peer_error);
	tcase_add_test(tc, test_resume_deadline);
	tcase_add_test(tc, test_no_resume);
	tcase_add_loop_test(tc, test_keepalive_silence, 0, 2);
	tcase_add_test(tc, test_keepalive_ping);
	suite_add_tcase(su, tc);

	tc = tcase_create("features");
	tcase_set_timeout(tc, TMO);
	tcase_add_loop_test(tc, test_psk, 0, 3);
	tcase_add_loop_test(tc, test_psk_urgent, 0, 2);
	tcase_add_test(tc, test_no_background);
	tcase_add_test(tc, test_max_rate);
	tcase_add_test(tc, test_urgent);
	tcase_add_loop_test(tc, test_urgent_skip, 0, 2);
	tcase_add_test(tc, test_urgent_bad_req);
	tcase_add_test(tc, test_urgent_readahead);
	tcase_add_test(tc, test_urgent_resends_background_claimed);
	tcase_add_loop_test(tc, test_urgent_readahead_paced, 0, 2);
	tcase_add_test(tc, test_end_after_urgent);
	tcase_add_loop_test(tc, test_no_pacing_tcp, 0, 2);
	tcase_add_loop_test(tc, test_paced_quiet_spell, 0, 2);
	tcase_add_loop_test(tc, test_background_awaits_urgent, 0, 2);
	suite_add_tcase(su, tc);
	return su;
}

int main(void)
{
	SRunner *sr = srunner_create(make_source_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
