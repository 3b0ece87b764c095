/* SPDX-License-Identifier: MIT */
/*
 * Helpers shared by source and destination (private): logging through the
 * user's callback, the per-handle error slot, blocking message I/O on a
 * socket with a deadline, and the handshake.
 */
#ifndef PCOPY_STREAM_COMMON_H
#define PCOPY_STREAM_COMMON_H

#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <sys/uio.h>

#include "postcopy.h"
#include "wire.h"

#define PCOPY_ERRMSG_MAX 512

#define PCOPY_HIDDEN __attribute__((visibility("hidden")))

/* ---- log + error slot (stream/log.c) ---- */

struct pcopy_logger {
	pcopy_log_fn fn;	/* may be NULL: messages are dropped */
	void *opaque;
};

/* printf-style message to the callback, if any. Any thread. */
void pcopy_log(const struct pcopy_logger *lg, enum pcopy_log_level lvl,
	       const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/*
 * The first fatal error of a handle. Set once (later errors are logged but do
 * not overwrite it); read with pcopy_errslot_get. Thread-safe.
 */
struct pcopy_errslot {
	pthread_mutex_t lock;
	int err;			/* 0 or -errno */
	char msg[PCOPY_ERRMSG_MAX];
};

void pcopy_errslot_init(struct pcopy_errslot *e);
void pcopy_errslot_destroy(struct pcopy_errslot *e);
/* Record err (< 0) with a message unless an error is already recorded; also
 * logs it at ERROR level. Returns the error now in the slot. */
int pcopy_errslot_set(struct pcopy_errslot *e, const struct pcopy_logger *lg,
		      int err, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
int pcopy_errslot_get(struct pcopy_errslot *e);

/* ---- time ---- */

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t pcopy_now_ns(void);

/* ---- blocking socket I/O (stream/conn.c) ---- */

/*
 * Write all iov bytes (sendmsg with MSG_NOSIGNAL, retrying partial writes and
 * EINTR). Returns 0 or -errno (-EPIPE, -ECONNRESET, ...).
 */
int conn_writev_all(int fd, struct iovec *iov, int iovcnt);

/* Seal and send one message: header (crc filled in) + payload, one sendmsg. */
int conn_send_msg(int fd, struct wire_hdr *h, const void *payload, size_t len);

/* Send an ERROR message (best effort: errors ignored, short timeout). */
void conn_send_error(int fd, int errnum, const char *text);

/*
 * Read exactly n bytes, waiting at most until deadline_ns (pcopy_now_ns()
 * clock; 0 = no deadline). Returns 0, -ETIMEDOUT, -ECONNRESET on EOF, or
 * -errno. If `stop_fd` >= 0, readable stop_fd aborts with -ECANCELED.
 */
int conn_read_exact(int fd, void *buf, size_t n, uint64_t deadline_ns,
		    int stop_fd);

/*
 * Read one whole message: header (decoded and checked), then payload into
 * buf (capacity cap >= PCOPY_WIRE_PAYLOAD_MAX recommended), then crc check.
 * Returns 0, or -EPROTO / -EBADMSG / -ETIMEDOUT / -ECONNRESET ... with a
 * message in err.
 */
int conn_recv_msg(int fd, struct wire_hdr *h, uint8_t *buf, size_t cap,
		  uint64_t deadline_ns, int stop_fd, char *err, size_t errlen);

/*
 * The symmetric handshake: send our HELLO, read the peer's, check it (role
 * must be the other one, version, region tables equal). On a mismatch send
 * the peer an ERROR saying why and return -EPROTO. If the peer sent an ERROR
 * instead, return its errno with "peer refused: <text>". On success
 * *features_out = ours.features & peer.features.
 */
int conn_handshake(int fd, const struct wire_hello *ours,
		   struct wire_hello *peer, uint32_t *features_out,
		   int timeout_ms, char *err, size_t errlen);

/*
 * Handshake parameters beyond the HELLO (issue 4). For the DESTINATION,
 * ours->conn_kind and ours->session_id say what this connection is; for the
 * SOURCE, `expect_session` (0 = none yet) is checked against a URGENT/RESUME
 * HELLO and the source adopts the destination's conn_kind (returned in
 * peer->conn_kind). With psk != NULL both sides run the AUTH exchange after
 * the HELLOs (nonces, then proofs bound to role, both nonces and session_id);
 * a peer without PCOPY_FEAT_AUTH, or a wrong proof, is refused with an ERROR
 * ("authentication failed") and -EACCES before any page moves.
 */
struct conn_hs_params {
	const void *psk;
	size_t psk_len;
	uint64_t expect_session;	/* source: session a URGENT/RESUME must join */
	int timeout_ms;
};

int conn_handshake2(int fd, const struct wire_hello *ours,
		    struct wire_hello *peer, uint32_t *features_out,
		    const struct conn_hs_params *p, char *err, size_t errlen);

#endif
