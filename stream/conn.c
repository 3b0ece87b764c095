/* SPDX-License-Identifier: MIT */
/*
 * Blocking message I/O on a connected stream socket, with deadlines and an
 * optional stop fd, and the handshake both sides run first: HELLOs (the
 * destination speaks first, the source answers), then the optional PSK
 * challenge-response.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "auth.h"
#include "common.h"

/* How long conn_send_error may spend on a peer that does not read. */
#define SEND_ERROR_TIMEOUT_NS	(200ull * 1000000ull)
#define HANDSHAKE_DEFAULT_MS	10000
/* Large enough for the largest HELLO (5088 bytes) and any ERROR. */
#define HANDSHAKE_BUF		8192

__attribute__((format(printf, 4, 5)))
static int fail(int code, char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err && errlen) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return code;
}

/*
 * Wait until fd is ready for `events`, the deadline passes (-ETIMEDOUT,
 * deadline 0 = never) or stop_fd becomes readable (-ECANCELED).
 */
static int wait_fd(int fd, short events, uint64_t deadline_ns, int stop_fd)
{
	struct pollfd pfd[2] = {
		{ .fd = fd, .events = events },
		{ .fd = stop_fd, .events = POLLIN },
	};
	nfds_t nfds = stop_fd >= 0 ? 2 : 1;
	struct timespec ts, *tsp = NULL;
	int ret;

	for (;;) {
		if (deadline_ns) {
			uint64_t now = pcopy_now_ns();
			uint64_t left;

			if (now >= deadline_ns)
				return -ETIMEDOUT;
			left = deadline_ns - now;
			ts.tv_sec = (time_t)(left / 1000000000ull);
			ts.tv_nsec = (long)(left % 1000000000ull);
			tsp = &ts;
		}
		ret = ppoll(pfd, nfds, tsp, NULL);
		if (ret < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (ret == 0)
			continue;	/* re-check the deadline */
		if (nfds == 2 && pfd[1].revents)
			return -ECANCELED;
		if (pfd[0].revents & POLLNVAL)
			return -EBADF;
		/* POLLHUP/POLLERR: let the read or write report it. */
		if (pfd[0].revents)
			return 0;
	}
}

/* Drop `done` bytes from the front of an iovec array; returns new count. */
static int iov_advance(struct iovec **iovp, int cnt, size_t done)
{
	struct iovec *iov = *iovp;

	while (cnt > 0 && done >= iov->iov_len) {
		done -= iov->iov_len;
		iov++;
		cnt--;
	}
	if (cnt > 0) {
		iov->iov_base = (char *)iov->iov_base + done;
		iov->iov_len -= done;
	}
	*iovp = iov;
	return cnt;
}

static int writev_deadline(int fd, struct iovec *iov, int cnt, int flags,
			   uint64_t deadline_ns)
{
	struct msghdr mh;
	ssize_t n;
	int ret;

	/* Skip empty entries so a zero-length tail does not loop. */
	cnt = iov_advance(&iov, cnt, 0);
	while (cnt > 0) {
		memset(&mh, 0, sizeof(mh));
		mh.msg_iov = iov;
		mh.msg_iovlen = (size_t)cnt;
		n = sendmsg(fd, &mh, MSG_NOSIGNAL | flags);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				ret = wait_fd(fd, POLLOUT, deadline_ns, -1);
				if (ret)
					return ret;
				continue;
			}
			return -errno;
		}
		cnt = iov_advance(&iov, cnt, (size_t)n);
	}
	return 0;
}

/*
 * Write every byte of iov (modified in place) with sendmsg(MSG_NOSIGNAL),
 * retrying partial writes and EINTR, waiting if the socket is non-blocking.
 * Returns 0 or -errno. Any thread; one writer per fd at a time.
 */
int conn_writev_all(int fd, struct iovec *iov, int iovcnt)
{
	return writev_deadline(fd, iov, iovcnt, 0, 0);
}

/* Build header + payload iovecs; the header sets magic and length itself. */
static int send_msg(int fd, struct wire_hdr *h, const void *payload,
		    size_t len, int flags, uint64_t deadline_ns)
{
	uint8_t hdr[PCOPY_WIRE_HDR_SIZE];
	struct iovec iov[2];

	if (len > PCOPY_WIRE_PAYLOAD_MAX)
		return -EMSGSIZE;
	h->magic = PCOPY_WIRE_MAGIC;
	h->length = (uint32_t)len;
	wire_hdr_seal(hdr, h, payload, len);
	iov[0].iov_base = hdr;
	iov[0].iov_len = sizeof(hdr);
	iov[1].iov_base = (void *)(uintptr_t)payload;
	iov[1].iov_len = len;
	return writev_deadline(fd, iov, len ? 2 : 1, flags, deadline_ns);
}

/*
 * Seal and send one message (magic, length and crc filled in): one sendmsg
 * in the common case. Returns 0, -EMSGSIZE, or -errno. Any thread; one writer
 * per fd at a time.
 */
int conn_send_msg(int fd, struct wire_hdr *h, const void *payload, size_t len)
{
	return send_msg(fd, h, payload, len, 0, 0);
}

/*
 * Best-effort ERROR to the peer: non-blocking sends, at most 200 ms waiting
 * for room, every failure ignored (the peer may be gone already). Any thread.
 */
void conn_send_error(int fd, int errnum, const char *text)
{
	uint8_t buf[4 + PCOPY_ERROR_TEXT_MAX];
	struct wire_hdr h = { .type = PCOPY_MSG_ERROR };
	size_t len;

	len = wire_error_encode(errnum, text, buf, sizeof(buf));
	(void)send_msg(fd, &h, buf, len, MSG_DONTWAIT,
		       pcopy_now_ns() + SEND_ERROR_TIMEOUT_NS);
}

/*
 * Read exactly n bytes before deadline_ns (0 = none); a readable stop_fd
 * (if >= 0) aborts with -ECANCELED. Tries a non-blocking read first, so a
 * busy stream costs one syscall per call, and polls only when it must wait.
 * Returns 0, -ETIMEDOUT, -ECONNRESET on EOF, or -errno. Any thread.
 */
int conn_read_exact(int fd, void *buf, size_t n, uint64_t deadline_ns,
		    int stop_fd)
{
	char *p = buf;
	bool is_sock = true;
	ssize_t r;
	int ret;

	while (n > 0) {
		if (is_sock) {
			r = recv(fd, p, n, MSG_DONTWAIT);
			if (r < 0 && errno == ENOTSOCK) {
				is_sock = false;	/* a pipe: poll, then read */
				continue;
			}
		} else {
			ret = wait_fd(fd, POLLIN, deadline_ns, stop_fd);
			if (ret)
				return ret;
			r = read(fd, p, n);
		}
		if (r > 0) {
			p += r;
			n -= (size_t)r;
			continue;
		}
		if (r == 0)
			return -ECONNRESET;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return -errno;
		ret = wait_fd(fd, POLLIN, deadline_ns, stop_fd);
		if (ret)
			return ret;
	}
	return 0;
}

static const char *io_what(int ret)
{
	switch (ret) {
	case -ETIMEDOUT: return "timed out";
	case -ECONNRESET: return "connection closed by peer";
	case -ECANCELED: return "cancelled";
	default: return strerror(-ret);
	}
}

/* Read and decode a header (no crc check yet: that needs the payload). */
static int recv_hdr(int fd, uint8_t raw[PCOPY_WIRE_HDR_SIZE], struct wire_hdr *h,
		    uint64_t deadline_ns, int stop_fd, char *err, size_t errlen)
{
	int ret = conn_read_exact(fd, raw, PCOPY_WIRE_HDR_SIZE, deadline_ns,
				  stop_fd);

	if (ret)
		return fail(ret, err, errlen, "reading message header: %s",
			    io_what(ret));
	return wire_hdr_decode(raw, h, err, errlen);
}

/* Read the payload announced by h into buf, then check the crc. */
static int recv_body(int fd, const uint8_t raw[PCOPY_WIRE_HDR_SIZE],
		     const struct wire_hdr *h, uint8_t *buf, size_t cap,
		     uint64_t deadline_ns, int stop_fd, char *err,
		     size_t errlen)
{
	int ret;

	if (h->length > cap)
		return fail(-EPROTO, err, errlen,
			    "message payload %" PRIu32 " bytes exceeds buffer "
			    "of %zu", h->length, cap);
	ret = conn_read_exact(fd, buf, h->length, deadline_ns, stop_fd);
	if (ret)
		return fail(ret, err, errlen, "reading %" PRIu32 " payload "
			    "bytes: %s", h->length, io_what(ret));
	return wire_crc_check(raw, h, buf, err, errlen);
}

/*
 * Read one whole message: header (decoded, checked), payload into buf
 * (capacity cap), crc. Returns 0 or -errno with a message in err. Any thread;
 * one reader per fd at a time.
 */
int conn_recv_msg(int fd, struct wire_hdr *h, uint8_t *buf, size_t cap,
		  uint64_t deadline_ns, int stop_fd, char *err, size_t errlen)
{
	uint8_t raw[PCOPY_WIRE_HDR_SIZE];
	int ret;

	ret = recv_hdr(fd, raw, h, deadline_ns, stop_fd, err, errlen);
	if (ret)
		return ret;
	return recv_body(fd, raw, h, buf, cap, deadline_ns, stop_fd, err,
			 errlen);
}

static const char *role_str(uint32_t r)
{
	return r == PCOPY_ROLE_SOURCE ? "source" : "destination";
}

static const char *kind_str(uint32_t k)
{
	switch (k) {
	case PCOPY_CONN_MAIN: return "MAIN";
	case PCOPY_CONN_URGENT: return "URGENT";
	case PCOPY_CONN_RESUME: return "RESUME";
	default: return "unknown";
	}
}

/* Refuse the peer: tell it why (ERROR, best effort), return code. */
static int refuse(int fd, int code, char *err)
{
	conn_send_error(fd, -code, err);
	return code;
}

/* Put "handshake: <what>: " before err, so a timeout or a cut inside a
 * message's payload says which message it was. */
static void prefix_what(char *err, size_t errlen, const char *what)
{
	char tail[256];

	snprintf(tail, sizeof(tail), "%s", err);
	snprintf(err, errlen, "handshake: %s: %s", what, tail);
}

/*
 * Receive one handshake message of type `want` (and, for AUTH, kind
 * `want_kind`) into buf. An ERROR from the peer becomes its errno with "peer
 * refused: <text>"; anything else unexpected is refused with an ERROR.
 * Returns 0 or -errno with a message.
 */
static int hs_recv(int fd, unsigned want, unsigned want_kind,
		   struct wire_hdr *h, uint8_t *buf, size_t cap,
		   uint64_t deadline, const char *what, char *err,
		   size_t errlen)
{
	uint8_t raw[PCOPY_WIRE_HDR_SIZE];
	char text[PCOPY_ERROR_TEXT_MAX + 1];
	int ret, perr;

	ret = conn_read_exact(fd, raw, PCOPY_WIRE_HDR_SIZE, deadline, -1);
	if (ret)
		return fail(ret, err, errlen, "handshake: waiting for %s: %s",
			    what, io_what(ret));
	ret = wire_hdr_decode(raw, h, err, errlen);
	if (ret)
		return refuse(fd, ret, err);
	if (h->type != want && h->type != PCOPY_MSG_ERROR) {
		fail(-EPROTO, err, errlen, "handshake: expected %s, got "
		     "message type %u", what, h->type);
		return refuse(fd, -EPROTO, err);
	}
	ret = recv_body(fd, raw, h, buf, cap, deadline, -1, err, errlen);
	if (ret) {
		if (ret == -EPROTO || ret == -EBADMSG)
			conn_send_error(fd, -ret, err);
		else
			prefix_what(err, errlen, what);
		return ret;
	}
	if (h->type == PCOPY_MSG_ERROR) {
		if (wire_error_decode(buf, h->length, &perr, text, sizeof(text)))
			return fail(-EPROTO, err, errlen,
				    "handshake: malformed ERROR from peer");
		return fail(-perr, err, errlen, "peer refused: %s",
			    text[0] ? text : "(no reason given)");
	}
	if (h->type == PCOPY_MSG_AUTH && h->kind != want_kind) {
		fail(-EPROTO, err, errlen, "handshake: expected %s, got AUTH "
		     "kind %u", what, h->kind);
		return refuse(fd, -EPROTO, err);
	}
	return 0;
}

static int hs_send(int fd, struct wire_hdr *h, const void *payload,
		   size_t len, uint64_t deadline, const char *what,
		   char *err, size_t errlen)
{
	int ret = send_msg(fd, h, payload, len, 0, deadline);

	if (ret)
		return fail(ret, err, errlen, "handshake: sending %s: %s", what,
			    io_what(ret));
	return 0;
}

static int send_hello(int fd, const struct wire_hello *me, uint64_t deadline,
		      char *err, size_t errlen)
{
	uint8_t buf[HANDSHAKE_BUF];
	struct wire_hdr h = { .type = PCOPY_MSG_HELLO };
	int len = wire_hello_encode(me, buf, sizeof(buf));

	if (len < 0)
		return fail(len, err, errlen, "HELLO: cannot encode our region "
			    "table: %s", strerror(-len));
	return hs_send(fd, &h, buf, (size_t)len, deadline, "HELLO", err,
		       errlen);
}

/* Receive and decode the peer's HELLO; a bad one is refused with an ERROR. */
static int recv_hello(int fd, struct wire_hello *peer, uint64_t deadline,
		      char *err, size_t errlen)
{
	uint8_t buf[HANDSHAKE_BUF];
	struct wire_hdr h;
	int ret;

	ret = hs_recv(fd, PCOPY_MSG_HELLO, 0, &h, buf, sizeof(buf), deadline,
		      "HELLO", err, errlen);
	if (ret)
		return ret;
	ret = wire_hello_decode(buf, h.length, peer, err, errlen);
	if (ret)
		return refuse(fd, ret, err);
	return 0;
}

/*
 * The source's checks of the destination's HELLO that decide whether to
 * answer with a HELLO at all: role, connection kind, feature, session.
 * Returns 0 or -errno with a message (the caller sends the ERROR).
 */
static int source_admit(const struct wire_hello *me,
			const struct wire_hello *peer,
			const struct conn_hs_params *p, char *err,
			size_t errlen)
{
	uint32_t need;

	if (peer->role == me->role)
		return fail(-EPROTO, err, errlen,
			    "HELLO: peer is a %s too; a session needs one "
			    "source and one destination", role_str(peer->role));
	if (peer->conn_kind == PCOPY_CONN_MAIN) {
		if (peer->session_id != 0)
			return fail(-EPROTO, err, errlen,
				    "HELLO: MAIN connection with session id "
				    "0x%016" PRIx64 ", want 0 (a new session)",
				    peer->session_id);
		return 0;
	}
	need = peer->conn_kind == PCOPY_CONN_URGENT ? PCOPY_FEAT_URGENT :
						      PCOPY_FEAT_RESUME;
	if (!(me->features & need))
		return fail(-EOPNOTSUPP, err, errlen,
			    "HELLO: %s connection, but this source does not "
			    "offer it", kind_str(peer->conn_kind));
	if (!(peer->features & need))
		return fail(-EOPNOTSUPP, err, errlen,
			    "HELLO: %s connection without the %s feature bit",
			    kind_str(peer->conn_kind),
			    kind_str(peer->conn_kind));
	if (p->expect_session == 0 || peer->session_id != p->expect_session)
		return fail(-EPROTO, err, errlen,
			    "HELLO: %s connection for unknown session "
			    "0x%016" PRIx64, kind_str(peer->conn_kind),
			    peer->session_id);
	return 0;
}

/* The destination's checks of the source's answer. */
static int dest_check(const struct wire_hello *me,
		      const struct wire_hello *peer, char *err, size_t errlen)
{
	uint32_t need;

	if (peer->role == me->role)
		return fail(-EPROTO, err, errlen,
			    "HELLO: peer is a %s too; a session needs one "
			    "source and one destination", role_str(peer->role));
	if (peer->conn_kind != me->conn_kind)
		return fail(-EPROTO, err, errlen,
			    "HELLO: connection kind %" PRIu32 " at the peer, %"
			    PRIu32 " here", peer->conn_kind, me->conn_kind);
	if (me->conn_kind == PCOPY_CONN_MAIN)
		return 0;
	if (peer->session_id != me->session_id)
		return fail(-EPROTO, err, errlen,
			    "HELLO: %s connection: the source answers for "
			    "session 0x%016" PRIx64 ", we asked for 0x%016"
			    PRIx64, kind_str(me->conn_kind), peer->session_id,
			    me->session_id);
	need = me->conn_kind == PCOPY_CONN_URGENT ? PCOPY_FEAT_URGENT :
						    PCOPY_FEAT_RESUME;
	if (!(me->features & peer->features & need))
		return fail(-EOPNOTSUPP, err, errlen,
			    "HELLO: %s connection, but the %s feature is not "
			    "offered by both sides", kind_str(me->conn_kind),
			    kind_str(me->conn_kind));
	return 0;
}

/*
 * The PSK exchange after the HELLOs, both sides alike: send our nonce, read
 * the peer's, send our proof, read the peer's and verify it. Every message
 * is 32 bytes and written before the matching read, so the exchange cannot
 * deadlock. A wrong proof is refused with ERROR "authentication failed".
 */
static int auth_exchange(int fd, const struct wire_hello *me,
			 uint64_t session_id, uint32_t conn_kind,
			 const struct conn_hs_params *p, uint64_t deadline,
			 char *err, size_t errlen)
{
	uint8_t own[PCOPY_AUTH_NONCE_SIZE], theirs[PCOPY_AUTH_NONCE_SIZE];
	uint8_t proof[PCOPY_AUTH_MAC_SIZE], buf[64];
	uint8_t bind[PCOPY_AUTH_SESSION_BIND_SIZE];
	uint32_t peer_role = me->role == PCOPY_ROLE_SOURCE ? PCOPY_ROLE_DEST :
							      PCOPY_ROLE_SOURCE;
	struct wire_hdr h;
	char why[256];
	int ret;

	ret = auth_nonce(own);
	if (ret)
		return fail(ret, err, errlen, "handshake: no random nonce: %s",
			    strerror(-ret));
	auth_bind_session(session_id, conn_kind, bind);

	h = (struct wire_hdr){ .type = PCOPY_MSG_AUTH, .kind = PCOPY_AUTH_NONCE };
	ret = hs_send(fd, &h, own, sizeof(own), deadline, "AUTH nonce", err,
		      errlen);
	if (ret)
		goto out;
	ret = hs_recv(fd, PCOPY_MSG_AUTH, PCOPY_AUTH_NONCE, &h, buf,
		      sizeof(buf), deadline, "AUTH nonce", err, errlen);
	if (ret)
		goto out;
	memcpy(theirs, buf, sizeof(theirs));

	ret = auth_proof(p->psk, p->psk_len, me->role, own, theirs, bind,
			 sizeof(bind), proof, err, errlen);
	if (ret) {
		conn_send_error(fd, EACCES, "authentication failed");
		goto out;
	}
	h = (struct wire_hdr){ .type = PCOPY_MSG_AUTH, .kind = PCOPY_AUTH_PROOF };
	ret = hs_send(fd, &h, proof, sizeof(proof), deadline, "AUTH proof",
		      err, errlen);
	if (ret)
		goto out;
	ret = hs_recv(fd, PCOPY_MSG_AUTH, PCOPY_AUTH_PROOF, &h, buf,
		      sizeof(buf), deadline, "AUTH proof", err, errlen);
	if (ret)
		goto out;
	ret = auth_verify(p->psk, p->psk_len, peer_role, theirs, own, bind,
			  sizeof(bind), buf, why, sizeof(why));
	if (ret) {
		fail(ret, err, errlen, "authentication failed: %s", why);
		conn_send_error(fd, EACCES, "authentication failed: the "
				"peer's proof does not match our key");
		ret = -EACCES;
	}
out:
	explicit_bzero(proof, sizeof(proof));
	return ret;
}

/* conn_handshake with no key and no session to join. Caller's thread. */
int conn_handshake(int fd, const struct wire_hello *ours,
		   struct wire_hello *peer, uint32_t *features_out,
		   int timeout_ms, char *err, size_t errlen)
{
	struct conn_hs_params p = { NULL, 0, 0, timeout_ms };

	return conn_handshake2(fd, ours, peer, features_out, &p, err, errlen);
}

/*
 * The handshake (see common.h and doc/PROTOCOL.md section 4): the
 * destination sends its HELLO and reads the answer; the source reads first,
 * decides (kind, session, features), then answers with its HELLO (echoing
 * the connection kind; for URGENT/RESUME also the session id) or an ERROR.
 * Both compare the region tables, then run AUTH when either side has a key:
 * FEAT_AUTH in a HELLO means "I have a key", set here from p->psk whatever
 * ours->features says. timeout_ms: 0 means the default (10 s), < 0 no
 * deadline. Returns 0 and *features_out, or -errno with a message:
 * -EPROTO/-EOPNOTSUPP (refused by us: the peer was told why), -EACCES
 * (authentication), the peer's errno if it refused us, or an I/O error.
 * Caller's thread.
 */
int conn_handshake2(int fd, const struct wire_hello *ours,
		    struct wire_hello *peer, uint32_t *features_out,
		    const struct conn_hs_params *p, char *err, size_t errlen)
{
	struct wire_hello me = *ours;
	uint64_t deadline = 0, sid;
	int timeout_ms = p->timeout_ms, ret;
	uint32_t mine, theirs;

	if (err && errlen)
		err[0] = '\0';
	if (p->psk && (p->psk_len < 1 || p->psk_len > PCOPY_AUTH_KEY_MAX))
		return fail(-EINVAL, err, errlen, "handshake: pre-shared key "
			    "of %zu bytes, want 1..%u", p->psk_len,
			    PCOPY_AUTH_KEY_MAX);
	if (timeout_ms == 0)
		timeout_ms = HANDSHAKE_DEFAULT_MS;
	if (timeout_ms > 0)
		deadline = pcopy_now_ns() + (uint64_t)timeout_ms * 1000000ull;
	if (p->psk)
		me.features |= PCOPY_FEAT_AUTH;
	else
		me.features &= ~PCOPY_FEAT_AUTH;

	if (me.role == PCOPY_ROLE_DEST) {
		ret = send_hello(fd, &me, deadline, err, errlen);
		if (ret)
			return ret;
		ret = recv_hello(fd, peer, deadline, err, errlen);
		if (ret)
			return ret;
		ret = dest_check(&me, peer, err, errlen);
		if (ret == 0)
			ret = wire_hello_compare(&me, peer, err, errlen);
		if (ret)
			return refuse(fd, ret, err);
		sid = peer->session_id;
	} else {
		ret = recv_hello(fd, peer, deadline, err, errlen);
		if (ret)
			return ret;
		ret = source_admit(&me, peer, p, err, errlen);
		if (ret)
			return refuse(fd, ret, err);
		me.conn_kind = peer->conn_kind;
		if (peer->conn_kind != PCOPY_CONN_MAIN)
			me.session_id = peer->session_id;
		ret = send_hello(fd, &me, deadline, err, errlen);
		if (ret)
			return ret;
		/* The destination runs the same comparison and tells us its
		 * view too; our ERROR says it from our side. */
		ret = wire_hello_compare(&me, peer, err, errlen);
		if (ret)
			return refuse(fd, ret, err);
		sid = me.session_id;
	}

	mine = me.features & PCOPY_FEAT_AUTH;
	theirs = peer->features & PCOPY_FEAT_AUTH;
	if (mine && !theirs) {
		fail(-EACCES, err, errlen, "handshake: peer offers no "
		     "authentication, but a pre-shared key is configured here");
		return refuse(fd, -EACCES, err);
	}
	if (!mine && theirs) {
		fail(-EACCES, err, errlen, "handshake: peer requires a "
		     "pre-shared key, none is configured here");
		return refuse(fd, -EACCES, err);
	}
	if (mine) {
		/* me.conn_kind is the destination's on both sides now. */
		ret = auth_exchange(fd, &me, sid, me.conn_kind, p, deadline,
				    err, errlen);
		if (ret)
			return ret;
	}
	*features_out = me.features & peer->features;
	return 0;
}
