/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer harness for the handshake (conn_handshake2): the input is what
 * the peer says on the socket. First byte: bit 0 = we are the source (else
 * the destination), bit 1 = we have a pre-shared key, bit 2 = the source
 * expects session 0x1122334455667788; then the peer's bytes, after which the
 * peer half-closes. Properties: a failure always comes with a message, never
 * a hang (EOF ends every wait) and never success with a peer that could not
 * know the key. Build: test/fuzz.sh.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common.h"
#include "fuzz_common.h"

#define FUZZ_HS_SOURCE	0x01
#define FUZZ_HS_PSK	0x02
#define FUZZ_HS_SESSION	0x04
#define FUZZ_HS_SID	0x1122334455667788ull

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Write all of p to fd, blocking; the handshake side reads concurrently only
 * after this returns, so inputs are limited to what the socket buffer holds
 * (max_len 8192 in fuzz.sh; a Unix socket holds far more). */
static int feed(int fd, const uint8_t *p, size_t n)
{
	while (n) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);

		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct wire_hello ours, peer;	/* large; off the stack */
	struct conn_hs_params p = { NULL, 0, 0, 2000 };
	uint32_t features = 0xdeadbeef, ntab;
	char err[PCOPY_ERRMSG_MAX];
	uint8_t mode;
	int sv[2], ret;

	if (size < 1 || size > 65536)
		return 0;
	mode = data[0];
	data++;
	size--;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
		return 0;
	/* room for the input, our HELLO and ERROR, whatever the defaults */
	{
		int sz = 1 << 20;

		setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
		setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
		setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
		setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
	}
	if (feed(sv[1], data, size)) {
		close(sv[0]);
		close(sv[1]);
		return 0;
	}
	shutdown(sv[1], SHUT_WR);

	memset(&ours, 0, sizeof(ours));
	ours.version = PCOPY_WIRE_VERSION;
	ours.role = (mode & FUZZ_HS_SOURCE) ? PCOPY_ROLE_SOURCE : PCOPY_ROLE_DEST;
	ours.features = PCOPY_FEAT_KNOWN;
	ours.session_id = (mode & FUZZ_HS_SOURCE) ? FUZZ_HS_SID : 0;
	ours.target_page = PCOPY_TARGET_PAGE;
	fuzz_table(ours.regions, &ntab);
	ours.nregions = ntab;
	if (mode & FUZZ_HS_PSK) {
		p.psk = "fuzz key";
		p.psk_len = 8;
	}
	if (mode & FUZZ_HS_SESSION)
		p.expect_session = FUZZ_HS_SID;

	err[0] = '\0';
	ret = conn_handshake2(sv[0], &ours, &peer, &features, &p, err,
			      sizeof(err));
	if (ret < 0 && err[0] == '\0')
		__builtin_trap();
	/* The peer's nonce-bound proof cannot be guessed: a keyed handshake
	 * that succeeds against fuzzer bytes is a broken check. */
	if (ret == 0 && (mode & FUZZ_HS_PSK))
		__builtin_trap();
	if (ret == 0) {
		if (features != (ours.features & ~PCOPY_FEAT_AUTH &
				 peer.features))
			__builtin_trap();
		if (peer.role == ours.role)
			__builtin_trap();
		if ((mode & FUZZ_HS_SOURCE) && peer.conn_kind != PCOPY_CONN_MAIN &&
		    peer.session_id != FUZZ_HS_SID)
			__builtin_trap();
	}
	if (ret > 0)
		__builtin_trap();
	close(sv[0]);
	close(sv[1]);
	return 0;
}
