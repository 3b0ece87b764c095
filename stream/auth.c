/* SPDX-License-Identifier: MIT */
/*
 * Pre-shared-key challenge-response primitives (stream/auth.h): HMAC-SHA256
 * (built in; an AF_ALG variant for cross-checks), random nonces, and the
 * proof / constant-time verification both sides of a handshake use.
 *
 * Why the built-in MAC always, not AF_ALG first: the result is identical, a
 * handshake hashes ~100 bytes (cost is irrelevant), and AF_ALG only adds ways
 * to fail: kernels built without CONFIG_CRYPTO_USER_API_HASH (this one),
 * seccomp sandboxes that deny socket(AF_ALG), fd exhaustion, three syscalls
 * per MAC. One code path that is always there is also one path to test.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <linux/if_alg.h>

#include "auth.h"
#include "sha256.h"
#include "wire.h"

#ifndef SOL_ALG
#define SOL_ALG 279
#endif

#define AUTH_IOV_MAX 64		/* far above what auth_proof needs */

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
 * Open an AF_ALG hmac(sha256) transform with key set. A kernel without
 * AF_ALG (socket: EAFNOSUPPORT) or without the algorithm (bind: ENOENT) is
 * reported as -EAFNOSUPPORT, so callers have one code for "not available".
 */
static int alg_open(const void *key, size_t keylen, char *err, size_t errlen)
{
	struct sockaddr_alg sa;
	int tfm, e;

	memset(&sa, 0, sizeof(sa));
	sa.salg_family = AF_ALG;
	memcpy(sa.salg_type, "hash", sizeof("hash"));
	memcpy(sa.salg_name, "hmac(sha256)", sizeof("hmac(sha256)"));

	tfm = socket(AF_ALG, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (tfm < 0) {
		e = errno;
		if (e == EAFNOSUPPORT)
			return fail(-EAFNOSUPPORT, err, errlen,
				    "auth: the kernel has no AF_ALG sockets "
				    "(CONFIG_CRYPTO_USER_API_HASH)");
		return fail(-e, err, errlen, "auth: socket(AF_ALG): %s",
			    strerror(e));
	}
	if (bind(tfm, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		e = errno;
		close(tfm);
		if (e == ENOENT)
			return fail(-EAFNOSUPPORT, err, errlen,
				    "auth: the kernel has no hmac(sha256)");
		return fail(-e, err, errlen, "auth: bind hmac(sha256): %s",
			    strerror(e));
	}
	if (setsockopt(tfm, SOL_ALG, ALG_SET_KEY, key, (socklen_t)keylen) < 0) {
		e = errno;
		close(tfm);
		return fail(-e, err, errlen, "auth: setting the %zu-byte key: %s",
			    keylen, strerror(e));
	}
	return tfm;
}

static int check_args(size_t keylen, int iovcnt, char *err, size_t errlen)
{
	if (keylen < 1 || keylen > PCOPY_AUTH_KEY_MAX)
		return fail(-EINVAL, err, errlen,
			    "auth: key of %zu bytes, want 1..%u", keylen,
			    PCOPY_AUTH_KEY_MAX);
	if (iovcnt < 0 || iovcnt > AUTH_IOV_MAX)
		return fail(-EINVAL, err, errlen, "auth: %d message pieces",
			    iovcnt);
	return 0;
}

/*
 * HMAC-SHA256 of iov[0..iovcnt) under key, in-process. Returns 0 or -EINVAL
 * with a message. Any thread (all state is on the stack).
 */
int auth_hmac_sha256(const void *key, size_t keylen, const struct iovec *iov,
		     int iovcnt, uint8_t out[PCOPY_AUTH_MAC_SIZE],
		     char *err, size_t errlen)
{
	struct pcopy_hmac_sha256 m;
	int i, ret;

	ret = check_args(keylen, iovcnt, err, errlen);
	if (ret)
		return ret;
	pcopy_hmac_sha256_init(&m, key, keylen);
	for (i = 0; i < iovcnt; i++)
		pcopy_hmac_sha256_update(&m, iov[i].iov_base, iov[i].iov_len);
	pcopy_hmac_sha256_final(&m, out);
	return 0;
}

/*
 * HMAC-SHA256 of iov[0..iovcnt) under key through AF_ALG: one transform
 * socket per call (no state is kept between calls, so any thread may call
 * this concurrently). Returns 0 or -errno with a message.
 */
int auth_hmac_sha256_kernel(const void *key, size_t keylen,
			    const struct iovec *iov, int iovcnt,
			    uint8_t out[PCOPY_AUTH_MAC_SIZE], char *err,
			    size_t errlen)
{
	struct msghdr mh;
	size_t total = 0;
	ssize_t n;
	int tfm, op, i, ret;

	ret = check_args(keylen, iovcnt, err, errlen);
	if (ret)
		return ret;
	for (i = 0; i < iovcnt; i++)
		total += iov[i].iov_len;

	tfm = alg_open(key, keylen, err, errlen);
	if (tfm < 0)
		return tfm;
	op = accept4(tfm, NULL, NULL, SOCK_CLOEXEC);
	if (op < 0) {
		ret = fail(-errno, err, errlen, "auth: accept on AF_ALG: %s",
			   strerror(errno));
		goto out_tfm;
	}

	/* One sendmsg without MSG_MORE: the kernel hashes every piece and
	 * finalises; a zero-length message is valid too. */
	memset(&mh, 0, sizeof(mh));
	mh.msg_iov = (struct iovec *)(uintptr_t)iov;	/* not written */
	mh.msg_iovlen = (size_t)iovcnt;
	do
		n = sendmsg(op, &mh, 0);
	while (n < 0 && errno == EINTR);
	if (n < 0) {
		ret = fail(-errno, err, errlen, "auth: hashing: %s",
			   strerror(errno));
		goto out_op;
	}
	if ((size_t)n != total) {
		ret = fail(-EIO, err, errlen,
			   "auth: kernel hashed %zd of %zu bytes", n, total);
		goto out_op;
	}
	do
		n = read(op, out, PCOPY_AUTH_MAC_SIZE);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		ret = fail(-errno, err, errlen, "auth: reading the digest: %s",
			   strerror(errno));
	else if (n != PCOPY_AUTH_MAC_SIZE)
		ret = fail(-EIO, err, errlen, "auth: digest of %zd bytes, want %u",
			   n, PCOPY_AUTH_MAC_SIZE);
out_op:
	close(op);
out_tfm:
	close(tfm);
	return ret;
}

/* 32 random bytes from the kernel's CSPRNG. Returns 0 or -errno. Any thread. */
int auth_nonce(uint8_t nonce[PCOPY_AUTH_NONCE_SIZE])
{
	size_t got = 0;
	ssize_t n;

	while (got < PCOPY_AUTH_NONCE_SIZE) {
		n = getrandom(nonce + got, PCOPY_AUTH_NONCE_SIZE - got, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		got += (size_t)n;
	}
	return 0;
}

/* u64 session_id, u32 conn_kind, u32 wire version, little-endian. */
void auth_bind_session(uint64_t session_id, uint32_t conn_kind,
		       uint8_t out[PCOPY_AUTH_SESSION_BIND_SIZE])
{
	unsigned i;

	for (i = 0; i < 8; i++)
		out[i] = (uint8_t)(session_id >> (8 * i));
	for (i = 0; i < 4; i++) {
		out[8 + i] = (uint8_t)(conn_kind >> (8 * i));
		out[12 + i] = (uint8_t)(PCOPY_WIRE_VERSION >> (8 * i));
	}
}

/*
 * proof = HMAC(key, label || role || own_nonce || peer_nonce || bind).
 * Returns 0 or -EINVAL with a message. Any thread.
 */
int auth_proof(const void *key, size_t keylen, uint32_t role,
	       const uint8_t own_nonce[PCOPY_AUTH_NONCE_SIZE],
	       const uint8_t peer_nonce[PCOPY_AUTH_NONCE_SIZE],
	       const void *bind, size_t bind_len,
	       uint8_t proof[PCOPY_AUTH_MAC_SIZE], char *err, size_t errlen)
{
	uint8_t role_byte = (uint8_t)role;
	struct iovec iov[5] = {
		{ (void *)(uintptr_t)PCOPY_AUTH_LABEL, sizeof(PCOPY_AUTH_LABEL) - 1 },
		{ &role_byte, 1 },
		{ (void *)(uintptr_t)own_nonce, PCOPY_AUTH_NONCE_SIZE },
		{ (void *)(uintptr_t)peer_nonce, PCOPY_AUTH_NONCE_SIZE },
		{ (void *)(uintptr_t)bind, bind_len },
	};

	if (role != PCOPY_ROLE_SOURCE && role != PCOPY_ROLE_DEST)
		return fail(-EINVAL, err, errlen, "auth: unknown role %u", role);
	if (bind_len > PCOPY_AUTH_BIND_MAX || (bind_len && !bind))
		return fail(-EINVAL, err, errlen,
			    "auth: binding of %zu bytes, want 0..%u", bind_len,
			    PCOPY_AUTH_BIND_MAX);
	return auth_hmac_sha256(key, keylen, iov, bind_len ? 5 : 4, proof,
				err, errlen);
}

/* Constant time: every byte is looked at, whatever differs first. */
int auth_equal(const void *a, const void *b, size_t n)
{
	const volatile uint8_t *x = a, *y = b;
	uint8_t d = 0;
	size_t i;

	for (i = 0; i < n; i++)
		d |= (uint8_t)(x[i] ^ y[i]);
	return d == 0;
}

/*
 * Recompute the peer's proof (its role, its nonce first) and compare in
 * constant time. Returns 0, -EACCES on a mismatch, or auth_proof's error.
 * Any thread.
 */
int auth_verify(const void *key, size_t keylen, uint32_t peer_role,
		const uint8_t peer_nonce[PCOPY_AUTH_NONCE_SIZE],
		const uint8_t own_nonce[PCOPY_AUTH_NONCE_SIZE],
		const void *bind, size_t bind_len,
		const uint8_t proof[PCOPY_AUTH_MAC_SIZE],
		char *err, size_t errlen)
{
	uint8_t want[PCOPY_AUTH_MAC_SIZE];
	int ret, same;

	/* A peer that echoes our nonce is replaying or reflecting our own
	 * challenge; a fresh nonce never collides. */
	if (auth_equal(peer_nonce, own_nonce, PCOPY_AUTH_NONCE_SIZE))
		return fail(-EACCES, err, errlen,
			    "auth: the peer sent our own nonce back");
	ret = auth_proof(key, keylen, peer_role, peer_nonce, own_nonce, bind,
			 bind_len, want, err, errlen);
	if (ret)
		return ret;
	same = auth_equal(want, proof, sizeof(want));
	explicit_bzero(want, sizeof(want));
	if (!same)
		return fail(-EACCES, err, errlen,
			    "auth: the peer's proof does not match: wrong key "
			    "or tampered handshake");
	return 0;
}

/* SO_PEERCRED check of a Unix socket's peer. Returns 0 or -errno. */
int auth_check_peer_uid(int fd, uid_t want, char *err, size_t errlen)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	struct ucred cred;
	socklen_t cl = sizeof(cred);

	if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
		return fail(-errno, err, errlen, "auth: getsockname: %s",
			    strerror(errno));
	if (ss.ss_family != AF_UNIX)
		return fail(-EOPNOTSUPP, err, errlen,
			    "auth: peer uid is only known on Unix sockets");
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0)
		return fail(-errno, err, errlen, "auth: SO_PEERCRED: %s",
			    strerror(errno));
	if (cred.uid != want)
		return fail(-EACCES, err, errlen,
			    "auth: peer pid %d runs as uid %u, want uid %u",
			    (int)cred.pid, (unsigned)cred.uid, (unsigned)want);
	return 0;
}
