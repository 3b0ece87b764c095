/* SPDX-License-Identifier: MIT */
/*
 * Links between the benchmark's two sides: "unix:/path" or "tcp:A.B.C.D:PORT"
 * addresses, listening, connecting, and whole-buffer reads and writes.
 */
#include "bench.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int b_addr_parse(const char *s, struct b_addr *a)
{
	memset(a, 0, sizeof(*a));
	if (strncmp(s, "unix:", 5) == 0) {
		struct sockaddr_un *un = (struct sockaddr_un *)a->sa;

		if (strlen(s + 5) >= sizeof(un->sun_path))
			return -ENAMETOOLONG;
		un->sun_family = AF_UNIX;
		strcpy(un->sun_path, s + 5);
		a->family = AF_UNIX;
		a->salen = sizeof(*un);
	} else if (strncmp(s, "tcp:", 4) == 0) {
		struct sockaddr_in *in = (struct sockaddr_in *)a->sa;
		char host[64];
		const char *colon = strrchr(s + 4, ':');
		char *end;
		long port;

		if (!colon || (size_t)(colon - (s + 4)) >= sizeof(host))
			return -EINVAL;
		memcpy(host, s + 4, (size_t)(colon - (s + 4)));
		host[colon - (s + 4)] = 0;
		port = strtol(colon + 1, &end, 10);
		if (*end || port < 0 || port > 65535)
			return -EINVAL;
		in->sin_family = AF_INET;
		in->sin_port = htons((uint16_t)port);
		if (inet_pton(AF_INET, host[0] ? host : "0.0.0.0", &in->sin_addr) != 1)
			return -EINVAL;
		a->family = AF_INET;
		a->salen = sizeof(*in);
	} else {
		return -EINVAL;
	}
	snprintf(a->text, sizeof(a->text), "%s", s);
	return 0;
}

int b_listen(struct b_addr *a)
{
	int one = 1, fd = socket(a->family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	socklen_t len = a->salen;

	if (fd < 0)
		return -errno;
	if (a->family == AF_UNIX)
		unlink(((struct sockaddr_un *)a->sa)->sun_path);
	else
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)a->sa, a->salen) < 0 || listen(fd, 8) < 0 ||
	    getsockname(fd, (struct sockaddr *)a->sa, &len) < 0) {
		int e = -errno;

		close(fd);
		return e;
	}
	if (a->family == AF_INET) {
		struct sockaddr_in *in = (struct sockaddr_in *)a->sa;
		char host[32];

		inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
		snprintf(a->text, sizeof(a->text), "tcp:%s:%u", host,
			 (unsigned)ntohs(in->sin_port));
	}
	return fd;
}

int b_connect(const struct b_addr *a)
{
	int fd;

	/* The server may still be starting (run.sh launches both sides): retry
	 * for up to 5 s, with a fresh socket each time. */
	for (int tries = 0;; tries++) {
		fd = socket(a->family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return -errno;
		if (connect(fd, (const struct sockaddr *)a->sa, a->salen) == 0)
			break;
		int e = -errno;

		close(fd);
		if ((e != -ECONNREFUSED && e != -ENOENT) || tries >= 100)
			return e;
		usleep(50000);
	}
	if (a->family == AF_INET) {
		int one = 1;

		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	return fd;
}

int b_write_all(int fd, const void *buf, size_t n)
{
	const uint8_t *p = buf;

	while (n) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

int b_read_all(int fd, void *buf, size_t n)
{
	uint8_t *p = buf;

	while (n) {
		ssize_t r = read(fd, p, n);

		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			return -ECONNRESET;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}
