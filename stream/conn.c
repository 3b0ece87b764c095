/* SPDX-License-Identifier: MIT */
/*
 * Blocking message I/O on a connected stream socket, with deadlines and an
 * optional stop fd, and the symmetric HELLO handshake both sides run first.
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

/* Check the peer's decoded HELLO against ours; -EPROTO with the reason. */
static int check_peer_hello(const struct wire_hello *ours,
			    const struct wire_hello *peer, char *err,
			    size_t errlen)
{
	if (peer->role == ours->role)
		return fail(-EPROTO, err, errlen,
			    "HELLO: peer is a %s too; a session needs one "
			    "source and one destination", role_str(peer->role));
	if (peer->conn_kind != ours->conn_kind)
		return fail(-EPROTO, err, errlen,
			    "HELLO: connection kind %" PRIu32 " at the peer, %"
			    PRIu32 " here", peer->conn_kind, ours->conn_kind);
	return wire_hello_compare(ours, peer, err, errlen);
}

/*
 * The symmetric handshake (see common.h). Both sides send HELLO before
 * reading, and a HELLO fits in any socket buffer, so it cannot deadlock.
 * timeout_ms: 0 means the default (10 s), < 0 no deadline. Returns 0 and
 * *features_out, -EPROTO (refused by us: the peer was told why), the peer's
 * errno (negative) if it refused us, or an I/O error. Caller's thread.
 */
int conn_handshake(int fd, const struct wire_hello *ours,
		   struct wire_hello *peer, uint32_t *features_out,
		   int timeout_ms, char *err, size_t errlen)
{
	uint8_t buf[HANDSHAKE_BUF];
	uint8_t raw[PCOPY_WIRE_HDR_SIZE];
	char text[PCOPY_ERROR_TEXT_MAX + 1];
	struct wire_hdr h = { .type = PCOPY_MSG_HELLO };
	uint64_t deadline = 0;
	int len, ret, perr;

	if (err && errlen)
		err[0] = '\0';
	if (timeout_ms == 0)
		timeout_ms = HANDSHAKE_DEFAULT_MS;
	if (timeout_ms > 0)
		deadline = pcopy_now_ns() + (uint64_t)timeout_ms * 1000000ull;

	len = wire_hello_encode(ours, buf, sizeof(buf));
	if (len < 0)
		return fail(len, err, errlen, "HELLO: cannot encode our region "
			    "table: %s", strerror(-len));
	ret = send_msg(fd, &h, buf, (size_t)len, 0, deadline);
	if (ret)
		return fail(ret, err, errlen, "sending HELLO: %s", io_what(ret));

	ret = recv_hdr(fd, raw, &h, deadline, -1, err, errlen);
	if (ret == -EPROTO) {
		conn_send_error(fd, EPROTO, err);
		return ret;
	}
	if (ret)
		return ret;
	if (h.type != PCOPY_MSG_HELLO && h.type != PCOPY_MSG_ERROR) {
		ret = fail(-EPROTO, err, errlen, "handshake: expected HELLO, "
			   "got message type %u", h.type);
		conn_send_error(fd, EPROTO, err);
		return ret;
	}
	ret = recv_body(fd, raw, &h, buf, sizeof(buf), deadline, -1, err,
			errlen);
	if (ret) {
		if (ret == -EPROTO || ret == -EBADMSG)
			conn_send_error(fd, -ret, err);
		return ret;
	}

	if (h.type == PCOPY_MSG_ERROR) {
		ret = wire_error_decode(buf, h.length, &perr, text, sizeof(text));
		if (ret)
			return fail(-EPROTO, err, errlen,
				    "handshake: malformed ERROR from peer");
		return fail(-perr, err, errlen, "peer refused: %s",
			    text[0] ? text : "(no reason given)");
	}

	ret = wire_hello_decode(buf, h.length, peer, err, errlen);
	if (ret == 0)
		ret = check_peer_hello(ours, peer, err, errlen);
	if (ret) {
		conn_send_error(fd, -ret, err);
		return ret;
	}
	*features_out = ours->features & peer->features;
	return 0;
}
