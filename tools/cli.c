/* SPDX-License-Identifier: MIT */
/* Helpers shared by the command-line tools: addresses, sockets, sizes. */
#include "cli.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>
#include <time.h>
#include <stdlib.h>
#include <unistd.h>

static int parse_unix(const char *path, struct tool_addr *a, char *err, size_t errlen)
{
	struct sockaddr_un *un = (struct sockaddr_un *)&a->ss;

	if (strlen(path) == 0 || strlen(path) >= sizeof(un->sun_path)) {
		snprintf(err, errlen, "Unix socket path '%s' is empty or longer than %zu bytes",
			 path, sizeof(un->sun_path) - 1);
		return -EINVAL;
	}
	un->sun_family = AF_UNIX;
	strcpy(un->sun_path, path);
	a->len = sizeof(*un);
	a->is_unix = true;
	return 0;
}

static int parse_tcp(const char *hostport, struct tool_addr *a, char *err, size_t errlen)
{
	char host[256];
	const char *colon = strrchr(hostport, ':');
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV };
	struct addrinfo *res = NULL;
	size_t hl;
	int rc;

	if (!colon || colon == hostport || !colon[1]) {
		snprintf(err, errlen, "'%s': expected host:port", hostport);
		return -EINVAL;
	}
	hl = (size_t)(colon - hostport);
	if (hostport[0] == '[' && hl >= 2 && hostport[hl - 1] == ']') {
		hostport++;
		hl -= 2;
	}
	if (hl >= sizeof(host)) {
		snprintf(err, errlen, "'%s': host name too long", hostport);
		return -EINVAL;
	}
	memcpy(host, hostport, hl);
	host[hl] = '\0';
	rc = getaddrinfo(host, colon + 1, &hints, &res);
	if (rc != 0 || !res) {
		snprintf(err, errlen, "'%s': %s", a->text, gai_strerror(rc));
		return -EINVAL;
	}
	memcpy(&a->ss, res->ai_addr, res->ai_addrlen);
	a->len = res->ai_addrlen;
	a->is_unix = false;
	freeaddrinfo(res);
	return 0;
}

int tool_addr_parse(const char *text, struct tool_addr *a, char *err, size_t errlen)
{
	memset(a, 0, sizeof(*a));
	snprintf(a->text, sizeof(a->text), "%s", text);
	if (strncmp(text, "unix:", 5) == 0)
		return parse_unix(text + 5, a, err, errlen);
	if (strncmp(text, "tcp:", 4) == 0)
		return parse_tcp(text + 4, a, err, errlen);
	if (text[0] == '/' || text[0] == '.')
		return parse_unix(text, a, err, errlen);
	return parse_tcp(text, a, err, errlen);
}

bool tool_addr_is_local(const struct tool_addr *a)
{
	if (a->is_unix)
		return true;
	if (a->ss.ss_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)&a->ss;
		return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
	}
	if (a->ss.ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&a->ss;
		return IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr);
	}
	return false;
}

int tool_listen(const struct tool_addr *a)
{
	int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

	if (fd < 0)
		return -errno;
	if (a->is_unix)
		unlink(((const struct sockaddr_un *)&a->ss)->sun_path);
	else
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (const struct sockaddr *)&a->ss, a->len) < 0 || listen(fd, 4) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	return fd;
}

int tool_connect(const struct tool_addr *a, int timeout_ms)
{
	struct timespec pause = { 0, 50 * 1000 * 1000 };
	int waited = 0;

	for (;;) {
		int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

		if (fd < 0)
			return -errno;
		if (connect(fd, (const struct sockaddr *)&a->ss, a->len) == 0) {
			if (!a->is_unix)
				setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
			return fd;
		}
		int e = errno;
		close(fd);
		if ((e != ECONNREFUSED && e != ENOENT) || waited >= timeout_ms)
			return -e;
		nanosleep(&pause, NULL);
		waited += 50;
	}
}

int tool_parse_size(const char *text, unsigned long long *out)
{
	char *end;
	unsigned long long v;
	unsigned shift = 0;

	errno = 0;
	v = strtoull(text, &end, 0);
	if (errno || end == text || text[0] == '-')
		return -EINVAL;
	switch (*end) {
	case 'k': case 'K': shift = 10; end++; break;
	case 'm': case 'M': shift = 20; end++; break;
	case 'g': case 'G': shift = 30; end++; break;
	case 't': case 'T': shift = 40; end++; break;
	default: break;
	}
	if (*end == 'i' && shift)
		end++;
	if (*end == 'B' && shift)
		end++;
	if (*end != '\0' || (shift && v > (~0ULL >> shift)))
		return -EINVAL;
	*out = v << shift;
	return 0;
}

void tool_progress(const char *what, unsigned long long done, unsigned long long total,
		   double secs)
{
	double pct = total ? 100.0 * (double)done / (double)total : 0;

	if (!isatty(STDERR_FILENO))
		return;
	fprintf(stderr, "\r%s %5.1f%%  %llu/%llu MiB  %.1f s  %.0f MB/s   ", what, pct,
		done >> 20, total >> 20, secs, secs > 0 ? (double)done / secs / 1e6 : 0.0);
	if (done >= total)
		fputc('\n', stderr);
}

int tool_check_peer_uid(int fd, long allowed_uid, char *err, size_t errlen)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);

	if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0 || ss.ss_family != AF_UNIX)
		return 0;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
		snprintf(err, errlen, "SO_PEERCRED: %s", strerror(errno));
		return -errno;
	}
	if (cred.uid == 0 || (long)cred.uid == allowed_uid)
		return 0;
	snprintf(err, errlen, "peer pid %ld runs as uid %ld, only uid %ld (or root) may connect",
		 (long)cred.pid, (long)cred.uid, allowed_uid);
	return -EACCES;
}

int tool_read_key(const char *path, unsigned char *key, size_t cap, char *err,
		  size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0) {
		snprintf(err, errlen, "key file %s: %s", path, strerror(errno));
		return -errno;
	}
	n = read(fd, key, cap);
	close(fd);
	if (n < 0) {
		snprintf(err, errlen, "key file %s: %s", path, strerror(errno));
		return -EIO;
	}
	while (n > 0 && (key[n - 1] == '\n' || key[n - 1] == '\r'))
		n--;
	if (n == 0 || (size_t)n == cap) {
		snprintf(err, errlen, "key file %s: must hold 1 to %zu bytes", path, cap - 1);
		return -EINVAL;
	}
	return (int)n;
}
