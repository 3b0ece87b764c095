/* SPDX-License-Identifier: MIT */
/*
 * The PSK challenge-response primitives (stream/auth.c, stream/sha256.c):
 * SHA-256 against the FIPS 180-4 examples, the built-in HMAC-SHA256 against
 * the RFC 4231 vectors (always run), the kernel's AF_ALG variant against the
 * same vectors where the kernel has it (skipped honestly otherwise), proofs
 * that verify only with the right key, roles, nonces and binding, a clean
 * -EAFNOSUPPORT from the AF_ALG variant when the kernel refuses it (seccomp
 * in a child) while the built-in keeps working there; the SO_PEERCRED check.
 */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <netinet/in.h>
#include <sys/wait.h>
#include <unistd.h>

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

#include "auth.h"
#include "sha256.h"
#include "wire.h"

/* ---- AF_ALG availability: probed once per test, skipped honestly ---- */

static int alg_missing(const char *test)
{
	static const struct iovec iov = { (void *)"x", 1 };
	uint8_t mac[PCOPY_AUTH_MAC_SIZE];
	char err[256] = "";
	int ret = auth_hmac_sha256_kernel("k", 1, &iov, 1, mac, err,
					  sizeof(err));

	if (ret == -EAFNOSUPPORT) {
		printf("SKIP %s: %s\n", test, err);
		fflush(stdout);
		return 1;
	}
	ck_assert_msg(ret == 0, "probe failed: %d %s", ret, err);
	return 0;
}

/* check names test functions name_fn; say the plain name */
#define REQUIRE_ALG(name) do { if (alg_missing(name)) return; } while (0)

static void unhex(const char *hex, uint8_t *out)
{
	size_t i;

	for (i = 0; hex[2 * i]; i++) {
		unsigned v;

		ck_assert(sscanf(hex + 2 * i, "%2x", &v) == 1);
		out[i] = (uint8_t)v;
	}
}

/* ---- RFC 4231 known answers ---- */

struct kat {
	uint8_t key_byte;	/* key = key_len times key_byte, or 1..25 */
	size_t key_len;
	const char *data;	/* NULL: data_len times data_byte */
	uint8_t data_byte;
	size_t data_len;
	const char *mac;
};

static const struct kat kats[] = {
	{ 0x0b, 20, "Hi There", 0, 0,	/* test case 1 */
	  "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7" },
	{ 0, 4, "what do ya want for nothing?", 0, 0,	/* 2: key "Jefe" */
	  "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843" },
	{ 0xaa, 20, NULL, 0xdd, 50,	/* 3 */
	  "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe" },
	{ 0x01, 25, NULL, 0xcd, 50,	/* 4: key 0x01..0x19 */
	  "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b" },
	{ 0xaa, 131, "Test Using Larger Than Block-Size Key - Hash Key First",
	  0, 0,				/* 6 */
	  "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54" },
	{ 0xaa, 131, "This is a test using a larger than block-size key and a "
	  "larger than block-size data. The key needs to be hashed before "
	  "being used by the HMAC algorithm.", 0, 0,	/* 7 */
	  "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2" },
};

#define NKATS (sizeof(kats) / sizeof(kats[0]))

/* Loop index i: vector i % NKATS; i / NKATS: 0 built-in in one piece, 1
 * built-in split into three iovec pieces (one empty), 2 the AF_ALG variant
 * split the same way (skipped where the kernel has no AF_ALG). */
START_TEST(test_rfc4231)
{
	const struct kat *k = &kats[_i % NKATS];
	uint8_t key[256], data[256], want[32], mac[32];
	struct iovec iov[3];
	char err[256] = "";
	size_t dlen, i;
	int n, ret, kernel = _i >= 2 * (int)NKATS;
	int (*mac_fn)(const void *, size_t, const struct iovec *, int,
		      uint8_t *, char *, size_t) =
		kernel ? auth_hmac_sha256_kernel : auth_hmac_sha256;

	if (kernel)
		REQUIRE_ALG("test_rfc4231 (AF_ALG variant)");
	for (i = 0; i < k->key_len; i++)
		key[i] = k->key_byte == 0x01 ? (uint8_t)(i + 1) : k->key_byte;
	if (k->key_byte == 0)
		memcpy(key, "Jefe", 4);
	if (k->data) {
		dlen = strlen(k->data);
		memcpy(data, k->data, dlen);
	} else {
		dlen = k->data_len;
		memset(data, k->data_byte, dlen);
	}
	unhex(k->mac, want);

	if (_i < (int)NKATS) {	/* whole */
		iov[0] = (struct iovec){ data, dlen };
		n = 1;
	} else {
		iov[0] = (struct iovec){ data, 3 };
		iov[1] = (struct iovec){ data + 3, 0 };
		iov[2] = (struct iovec){ data + 3, dlen - 3 };
		n = 3;
	}
	memset(mac, 0, sizeof(mac));
	ret = mac_fn(key, k->key_len, iov, n, mac, err, sizeof(err));
	ck_assert_msg(ret == 0, "vector %d: %d %s", _i, ret, err);
	ck_assert_msg(memcmp(mac, want, 32) == 0, "vector %d: wrong MAC", _i);

	/* A different key gives a different MAC (the key is really used). */
	key[0] ^= 0x01;
	ret = mac_fn(key, k->key_len, iov, n, mac, err, sizeof(err));
	ck_assert_int_eq(ret, 0);
	ck_assert(memcmp(mac, want, 32) != 0);
}
END_TEST

/* ---- SHA-256: FIPS 180-4 / NIST example vectors ---- */

static void hexcmp(const uint8_t *got, const char *hex, const char *what)
{
	uint8_t want[32];

	unhex(hex, want);
	ck_assert_msg(memcmp(got, want, 32) == 0, "%s: wrong digest", what);
}

START_TEST(test_sha256_vectors)
{
	static const char m448[] =
		"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
	static const char m896[] =
		"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmn"
		"hijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu";
	struct pcopy_sha256 c;
	uint8_t d[32], chunk[1000];
	size_t len, cut;
	unsigned i;

	pcopy_sha256("abc", 3, d);
	hexcmp(d, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
	       "abc");
	pcopy_sha256(NULL, 0, d);
	hexcmp(d, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
	       "empty");
	pcopy_sha256(m448, strlen(m448), d);
	hexcmp(d, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
	       "448 bits");
	pcopy_sha256(m896, strlen(m896), d);
	hexcmp(d, "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1",
	       "896 bits");
	/* One million 'a', fed in pieces of 1000. */
	memset(chunk, 'a', sizeof(chunk));
	pcopy_sha256_init(&c);
	for (i = 0; i < 1000; i++)
		pcopy_sha256_update(&c, chunk, sizeof(chunk));
	pcopy_sha256_final(&c, d);
	hexcmp(d, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
	       "million a");
	/* Every split of the 896-bit message (block and padding edges). */
	len = strlen(m896);
	for (cut = 0; cut <= len; cut++) {
		pcopy_sha256_init(&c);
		pcopy_sha256_update(&c, m896, cut);
		pcopy_sha256_update(&c, m896 + cut, len - cut);
		pcopy_sha256_final(&c, d);
		hexcmp(d, "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51"
		       "afac45037afee9d1", "896 bits split");
	}
}
END_TEST

/* Lengths 0..200 around the padding boundaries (55, 56, 63, 64, 119, 120):
 * the built-in HMAC against the kernel's, where the kernel has one. */
START_TEST(test_hmac_cross_kernel)
{
	uint8_t data[200], a[32], b[32];
	struct iovec iov;
	char err[256] = "";
	size_t len;

	REQUIRE_ALG("test_hmac_cross_kernel");
	for (len = 0; len < sizeof(data); len++)
		data[len] = (uint8_t)(len * 131 + 7);
	for (len = 0; len <= sizeof(data); len++) {
		iov = (struct iovec){ data, len };
		ck_assert_int_eq(auth_hmac_sha256(data, 1 + len % 150, &iov, 1,
						  a, err, sizeof(err)), 0);
		ck_assert_int_eq(auth_hmac_sha256_kernel(data, 1 + len % 150,
							 &iov, 1, b, err,
							 sizeof(err)), 0);
		ck_assert_msg(memcmp(a, b, 32) == 0, "length %zu", len);
	}
}
END_TEST

START_TEST(test_bad_args)
{
	static const struct iovec iov = { (void *)"x", 1 };
	uint8_t big[PCOPY_AUTH_KEY_MAX + 1], mac[32], n1[32], n2[32];
	char err[256] = "";

	memset(big, 7, sizeof(big));
	memset(n1, 1, sizeof(n1));
	memset(n2, 2, sizeof(n2));
	/* Argument checks come before any hashing, so they run everywhere. */
	ck_assert_int_eq(auth_hmac_sha256("k", 0, &iov, 1, mac, err, sizeof(err)),
			 -EINVAL);
	ck_assert_msg(strstr(err, "key of 0 bytes"), "%s", err);
	ck_assert_int_eq(auth_hmac_sha256(big, sizeof(big), &iov, 1, mac, err,
					  sizeof(err)), -EINVAL);
	ck_assert_int_eq(auth_hmac_sha256("k", 1, &iov, -1, mac, err,
					  sizeof(err)), -EINVAL);
	ck_assert_int_eq(auth_hmac_sha256_kernel("k", 0, &iov, 1, mac, err,
						 sizeof(err)), -EINVAL);
	ck_assert_int_eq(auth_hmac_sha256_kernel(big, sizeof(big), &iov, 1,
						 mac, err, sizeof(err)),
			 -EINVAL);
	ck_assert_int_eq(auth_proof("k", 1, 7, n1, n2, NULL, 0, mac, err,
				    sizeof(err)), -EINVAL);
	ck_assert_msg(strstr(err, "role 7"), "%s", err);
	ck_assert_int_eq(auth_proof("k", 1, PCOPY_ROLE_SOURCE, n1, n2, NULL, 5,
				    mac, err, sizeof(err)), -EINVAL);
}
END_TEST

START_TEST(test_nonce)
{
	uint8_t a[32], b[32], zero[32] = { 0 };

	ck_assert_int_eq(auth_nonce(a), 0);
	ck_assert_int_eq(auth_nonce(b), 0);
	ck_assert(memcmp(a, b, 32) != 0);
	ck_assert(memcmp(a, zero, 32) != 0);
}
END_TEST

START_TEST(test_equal)
{
	uint8_t a[32], b[32];

	memset(a, 0x5a, sizeof(a));
	memcpy(b, a, sizeof(b));
	ck_assert_int_eq(auth_equal(a, b, 32), 1);
	b[31] ^= 0x80;
	ck_assert_int_eq(auth_equal(a, b, 32), 0);
	b[31] ^= 0x80;
	b[0] ^= 0x01;
	ck_assert_int_eq(auth_equal(a, b, 32), 0);
	ck_assert_int_eq(auth_equal(a, b, 0), 1);
}
END_TEST

/* ---- proofs: a source and a destination with the same key ---- */

struct pair {
	uint8_t ns[32], nd[32];		/* source's and destination's nonces */
	uint8_t bind[PCOPY_AUTH_SESSION_BIND_SIZE];
	uint8_t ps[32], pd[32];		/* their proofs */
};

static const char key_ok[] = "correct horse battery staple";
static const char key_bad[] = "correct horse battery stapler";

static void make_pair(struct pair *p)
{
	char err[256] = "";

	ck_assert_int_eq(auth_nonce(p->ns), 0);
	ck_assert_int_eq(auth_nonce(p->nd), 0);
	auth_bind_session(0x0123456789abcdefull, PCOPY_CONN_MAIN, p->bind);
	ck_assert_int_eq(auth_proof(key_ok, strlen(key_ok), PCOPY_ROLE_SOURCE,
				    p->ns, p->nd, p->bind, sizeof(p->bind),
				    p->ps, err, sizeof(err)), 0);
	ck_assert_int_eq(auth_proof(key_ok, strlen(key_ok), PCOPY_ROLE_DEST,
				    p->nd, p->ns, p->bind, sizeof(p->bind),
				    p->pd, err, sizeof(err)), 0);
}

/* The destination checks the source's proof (and vice versa). */
static int dest_checks(const struct pair *p, const char *key,
		       const uint8_t *ns, const uint8_t *nd,
		       const uint8_t *bind, const uint8_t *proof, char *err)
{
	return auth_verify(key, strlen(key), PCOPY_ROLE_SOURCE, ns, nd, bind,
			   sizeof(p->bind), proof, err, 256);
}

START_TEST(test_proof_ok)
{
	struct pair p;
	char err[256] = "";

	make_pair(&p);
	ck_assert_int_eq(dest_checks(&p, key_ok, p.ns, p.nd, p.bind, p.ps, err), 0);
	ck_assert_int_eq(auth_verify(key_ok, strlen(key_ok), PCOPY_ROLE_DEST,
				     p.nd, p.ns, p.bind, sizeof(p.bind), p.pd,
				     err, sizeof(err)), 0);
	/* The two proofs differ: one side's proof is useless to the other. */
	ck_assert(memcmp(p.ps, p.pd, 32) != 0);
}
END_TEST

START_TEST(test_wrong_key)
{
	struct pair p;
	char err[256] = "";

	make_pair(&p);
	ck_assert_int_eq(dest_checks(&p, key_bad, p.ns, p.nd, p.bind, p.ps, err),
			 -EACCES);
	ck_assert_msg(strstr(err, "wrong key"), "%s", err);
	/* and a source that used the wrong key is refused by a good dest */
	ck_assert_int_eq(auth_proof(key_bad, strlen(key_bad), PCOPY_ROLE_SOURCE,
				    p.ns, p.nd, p.bind, sizeof(p.bind), p.ps,
				    err, sizeof(err)), 0);
	ck_assert_int_eq(dest_checks(&p, key_ok, p.ns, p.nd, p.bind, p.ps, err),
			 -EACCES);
}
END_TEST

/* The proof's exact layout, pinned by values computed independently
 * (Python's hmac module) so that another implementation can interoperate:
 * HMAC(key, "pcopy-auth-v1" || role || own || peer || u64 session_id ||
 * u32 conn_kind || u32 version). */
START_TEST(test_proof_layout)
{
	static const char *const want[2] = {
		"81ed522adc5ef697ae15e2d4c914bc42fcc3e9ccf1af30045dbd743f80e407f1",
		"3cfff1b04a635167ce8a8aaa7b52dcc7730c0afb8dff2104dd73b8342688e767",
	};
	uint8_t own[32], peer[32], bind[PCOPY_AUTH_SESSION_BIND_SIZE];
	uint8_t proof[32], w[32];
	char err[256] = "";
	unsigned i, role;

	auth_bind_session(0x0123456789abcdefull, PCOPY_CONN_MAIN, bind);
	ck_assert(memcmp(bind, "\xef\xcd\xab\x89\x67\x45\x23\x01"
			 "\0\0\0\0\x01\0\0\0", sizeof(bind)) == 0);
	for (i = 0; i < 32; i++) {
		own[i] = (uint8_t)i;
		peer[i] = (uint8_t)(32 + i);
	}
	for (role = 0; role < 2; role++) {
		ck_assert_int_eq(auth_proof(key_ok, strlen(key_ok), role, own,
					    peer, bind, sizeof(bind), proof,
					    err, sizeof(err)), 0);
		unhex(want[role], w);
		ck_assert_msg(memcmp(proof, w, 32) == 0, "role %u", role);
	}
}
END_TEST

/* Loop index: which bit of what to tamper with. */
START_TEST(test_tampered)
{
	struct pair p;
	char err[256] = "";
	uint8_t *what;

	make_pair(&p);
	switch (_i) {
	case 0: what = p.ns; break;		/* the source's nonce */
	case 1: what = p.nd + 31; break;	/* the destination's nonce */
	case 2: what = p.bind + 8; break;	/* the connection kind */
	default: what = p.ps + 17; break;	/* the proof itself */
	}
	*what ^= 0x04;
	ck_assert_int_eq(dest_checks(&p, key_ok, p.ns, p.nd, p.bind, p.ps, err),
			 -EACCES);
	ck_assert_msg(strstr(err, "does not match"), "%s", err);
	*what ^= 0x04;
	ck_assert_int_eq(dest_checks(&p, key_ok, p.ns, p.nd, p.bind, p.ps, err), 0);
}
END_TEST

/* A peer reflecting our proof, or our nonce, is refused. */
START_TEST(test_reflection)
{
	struct pair p;
	char err[256] = "";

	make_pair(&p);
	/* the destination's own proof presented as the source's */
	ck_assert_int_eq(dest_checks(&p, key_ok, p.ns, p.nd, p.bind, p.pd, err),
			 -EACCES);
	/* the destination's nonce echoed as the source's */
	ck_assert_int_eq(dest_checks(&p, key_ok, p.nd, p.nd, p.bind, p.ps, err),
			 -EACCES);
	ck_assert_msg(strstr(err, "own nonce"), "%s", err);
}
END_TEST

/* ---- AF_ALG unavailable: a child whose socket(AF_ALG) / bind fail ---- */

#if defined(__x86_64__)
#define TEST_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define TEST_AUDIT_ARCH AUDIT_ARCH_AARCH64
#endif

#ifdef TEST_AUDIT_ARCH
/* Make syscall nr fail with errnum: for socket only when the family is
 * AF_ALG, for any other nr on every call. */
static int deny(int nr, int errnum)
{
	bool is_socket = nr == __NR_socket;
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
			 offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TEST_AUDIT_ARCH, 0, 5),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
			 offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr, 0, 3),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
			 offsetof(struct seccomp_data, args[0])),
		/* not socket: always taken; socket: only for AF_ALG */
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_ALG, 0, is_socket ? 1 : 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (unsigned)errnum),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { sizeof(f) / sizeof(f[0]), f };

	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		return -errno;
	if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog))
		return -errno;
	return 0;
}

/* Child exit codes: 0 = as expected, 1 = wrong code, 2 = wrong message,
 * 3 = filter not installed, 4 = the built-in MAC failed in the sandbox. */
static void run_denied(int nr, int errnum, const char *want_msg)
{
	int status;
	pid_t pid;

	fflush(NULL);
	pid = fork();
	ck_assert(pid >= 0);
	if (pid == 0) {
		static const struct iovec iov = { (void *)"x", 1 };
		uint8_t mac[32];
		char err[256] = "";
		int ret;

		uint8_t want[32];

		/* HMAC("k", "x"), computed before the sandbox closes. */
		if (auth_hmac_sha256("k", 1, &iov, 1, want, err, sizeof(err)))
			_exit(4);
		if (deny(nr, errnum))
			_exit(3);
		ret = auth_hmac_sha256_kernel("k", 1, &iov, 1, mac, err,
					      sizeof(err));
		if (ret != -EAFNOSUPPORT)
			_exit(1);
		if (!strstr(err, want_msg))
			_exit(2);
		memset(mac, 0, sizeof(mac));
		if (auth_hmac_sha256("k", 1, &iov, 1, mac, err, sizeof(err)) ||
		    memcmp(mac, want, 32) != 0)
			_exit(4);
		_exit(0);
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_msg(WIFEXITED(status), "child died, status 0x%x", status);
	ck_assert_msg(WEXITSTATUS(status) != 3, "seccomp filter refused");
	ck_assert_msg(WEXITSTATUS(status) == 0, "child exit %d (1 = wrong code, "
		      "2 = wrong message, 4 = built-in failed)",
		      WEXITSTATUS(status));
}
#endif

/* A kernel without AF_ALG: the real answer on kernels built without
 * CONFIG_CRYPTO_USER_API_HASH (like this test machine's), forced here by
 * seccomp so the message is checked on every kernel. */
START_TEST(test_no_af_alg)
{
#ifdef TEST_AUDIT_ARCH
	run_denied(__NR_socket, EAFNOSUPPORT, "no AF_ALG");
#else
	printf("SKIP test_no_af_alg: no seccomp arch for this machine\n");
#endif
}
END_TEST

/* AF_ALG without hmac(sha256): bind fails with ENOENT. */
START_TEST(test_no_hmac)
{
	REQUIRE_ALG("test_no_hmac");
#ifdef TEST_AUDIT_ARCH
	run_denied(__NR_bind, ENOENT, "no hmac(sha256)");
#else
	printf("SKIP test_no_hmac: no seccomp arch for this machine\n");
#endif
}
END_TEST

/* SO_PEERCRED: our own uid passes, another is refused, TCP is unknowable. */
START_TEST(test_peer_uid)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	socklen_t sl = sizeof(sin);
	char err[256] = "";
	int sp[2], ls, cl, sv;

	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sp), 0);
	ck_assert_int_eq(auth_check_peer_uid(sp[0], getuid(), err, sizeof(err)), 0);
	ck_assert_int_eq(auth_check_peer_uid(sp[1], getuid() + 1, err,
					     sizeof(err)), -EACCES);
	ck_assert_msg(strstr(err, "runs as uid"), "%s", err);
	close(sp[0]);
	close(sp[1]);

	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ls = socket(AF_INET, SOCK_STREAM, 0);
	ck_assert(bind(ls, (struct sockaddr *)&sin, sizeof(sin)) == 0);
	ck_assert(listen(ls, 1) == 0);
	ck_assert(getsockname(ls, (struct sockaddr *)&sin, &sl) == 0);
	cl = socket(AF_INET, SOCK_STREAM, 0);
	ck_assert(connect(cl, (struct sockaddr *)&sin, sizeof(sin)) == 0);
	sv = accept(ls, NULL, NULL);
	ck_assert_int_ge(sv, 0);
	ck_assert_int_eq(auth_check_peer_uid(sv, getuid(), err, sizeof(err)),
			 -EOPNOTSUPP);
	ck_assert_int_eq(auth_check_peer_uid(-1, getuid(), err, sizeof(err)),
			 -EBADF);
	close(sv);
	close(cl);
	close(ls);
}
END_TEST

static Suite *make_auth_suite(void)
{
	Suite *s = suite_create("auth");
	TCase *tc = tcase_create("hmac");

	tcase_add_test(tc, test_sha256_vectors);
	tcase_add_loop_test(tc, test_rfc4231, 0, 3 * NKATS);
	tcase_add_test(tc, test_hmac_cross_kernel);
	tcase_add_test(tc, test_bad_args);
	tcase_add_test(tc, test_nonce);
	tcase_add_test(tc, test_equal);
	tcase_add_test(tc, test_no_af_alg);
	tcase_add_test(tc, test_no_hmac);
	tcase_add_test(tc, test_peer_uid);
	suite_add_tcase(s, tc);

	tc = tcase_create("proof");
	tcase_add_test(tc, test_proof_ok);
	tcase_add_test(tc, test_proof_layout);
	tcase_add_test(tc, test_wrong_key);
	tcase_add_loop_test(tc, test_tampered, 0, 4);
	tcase_add_test(tc, test_reflection);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(make_auth_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
