/* SPDX-License-Identifier: MIT */
/*
 * Pre-shared-key challenge-response (private): HMAC-SHA256 (our own
 * stream/sha256.c; the kernel's AF_ALG variant is kept for cross-checks),
 * nonces from getrandom, and the proof each side sends to show it knows the
 * key.
 *
 * Design (conn_handshake2 in conn.c carries it; doc/PROTOCOL.md 4.3):
 *   1. each side sends a fresh 32-byte nonce (auth_nonce);
 *   2. each side sends proof = HMAC(key, "pcopy-auth-v1" || u8 role ||
 *      own nonce || peer nonce || binding), where role is the sender's
 *      PCOPY_ROLE_* and binding is session data both sides know (for example
 *      auth_bind_session(), or the two HELLO payloads);
 *   3. each side checks the peer's proof with auth_verify (constant time)
 *      and refuses the connection before any page moves if it is wrong.
 * The role byte stops a peer from reflecting our own proof back at us; the
 * two nonces make every proof fresh, so a recorded one cannot be replayed.
 */
#ifndef PCOPY_STREAM_AUTH_H
#define PCOPY_STREAM_AUTH_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#define PCOPY_AUTH_NONCE_SIZE	32u
#define PCOPY_AUTH_MAC_SIZE	32u	/* HMAC-SHA256 */
#define PCOPY_AUTH_KEY_MAX	1024u	/* longest key accepted, bytes */
#define PCOPY_AUTH_BIND_MAX	16384u	/* longest binding accepted, bytes */
#define PCOPY_AUTH_LABEL	"pcopy-auth-v1"	/* domain separation, no NUL */
#define PCOPY_AUTH_SESSION_BIND_SIZE 16u

/*
 * HMAC-SHA256 of the concatenation of iov[0..iovcnt) under key (1..
 * PCOPY_AUTH_KEY_MAX bytes), computed in-process (stream/sha256.c): works on
 * every kernel and under any seccomp policy. Returns 0 or -EINVAL (bad key
 * length or iovcnt) with a message in err. Any thread; no shared state.
 */
int auth_hmac_sha256(const void *key, size_t keylen, const struct iovec *iov,
		     int iovcnt, uint8_t out[PCOPY_AUTH_MAC_SIZE],
		     char *err, size_t errlen);

/*
 * The same MAC computed by the kernel through AF_ALG (hmac(sha256)), used by
 * the tests to cross-check the built-in one. Returns 0, -EINVAL,
 * -EAFNOSUPPORT (kernel without AF_ALG or hmac(sha256)), or another -errno;
 * err gets a message on failure. Any thread.
 */
int auth_hmac_sha256_kernel(const void *key, size_t keylen,
			    const struct iovec *iov, int iovcnt,
			    uint8_t out[PCOPY_AUTH_MAC_SIZE], char *err,
			    size_t errlen);

/* Fill nonce with 32 random bytes (getrandom). Returns 0 or -errno. */
int auth_nonce(uint8_t nonce[PCOPY_AUTH_NONCE_SIZE]);

/* Encode session_id and conn_kind as a binding (16 bytes, little-endian:
 * u64 session_id, u32 conn_kind, u32 wire version). */
void auth_bind_session(uint64_t session_id, uint32_t conn_kind,
		       uint8_t out[PCOPY_AUTH_SESSION_BIND_SIZE]);

/*
 * The proof that `role` (PCOPY_ROLE_SOURCE or PCOPY_ROLE_DEST) knows key:
 * HMAC(key, label || role || own_nonce || peer_nonce || bind). bind may be
 * NULL when bind_len is 0. Returns 0 or -EINVAL with a message in err. Any
 * thread.
 */
int auth_proof(const void *key, size_t keylen, uint32_t role,
	       const uint8_t own_nonce[PCOPY_AUTH_NONCE_SIZE],
	       const uint8_t peer_nonce[PCOPY_AUTH_NONCE_SIZE],
	       const void *bind, size_t bind_len,
	       uint8_t proof[PCOPY_AUTH_MAC_SIZE], char *err, size_t errlen);

/*
 * Check a proof received from the peer, whose role is peer_role: recompute
 * it from the peer's point of view (its nonce first) and compare in constant
 * time. Returns 0 if it matches, -EACCES ("wrong key or tampered
 * handshake") if not, or the error of auth_proof. Any thread.
 */
int auth_verify(const void *key, size_t keylen, uint32_t peer_role,
		const uint8_t peer_nonce[PCOPY_AUTH_NONCE_SIZE],
		const uint8_t own_nonce[PCOPY_AUTH_NONCE_SIZE],
		const void *bind, size_t bind_len,
		const uint8_t proof[PCOPY_AUTH_MAC_SIZE],
		char *err, size_t errlen);

/*
 * For a connected Unix socket: check that the peer process runs as uid
 * `want` (SO_PEERCRED, the credentials at connect time). Returns 0, -EACCES
 * (another uid), -EOPNOTSUPP (not a Unix socket: the uid is unknowable), or
 * -errno, with a message in err. Any thread.
 */
int auth_check_peer_uid(int fd, uid_t want, char *err, size_t errlen);

/* 1 if the n bytes at a and b are equal, else 0; time independent of where
 * they differ. */
int auth_equal(const void *a, const void *b, size_t n);

#endif
