/* SPDX-License-Identifier: MIT */
/*
 * pcopy-proxy: the fault-injection proxy (test/proxy.c) as a program, for
 * scripts and manual experiments. Listens, connects each accepted connection
 * to the upstream address, and applies the rules given on the command line.
 *
 *   pcopy-proxy --listen ADDR --connect ADDR [--rule SPEC]... [--seed N]
 *               [--conns K] [--quiet]
 *   ADDR: unix:PATH | tcp:HOST:PORT | HOST:PORT   (port 0: any free port)
 *
 * The a side is the one that connects to the proxy, the b side the upstream.
 * Exits after K connections have ended (--conns), or on SIGINT / SIGTERM,
 * printing what happened on each connection.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "proxy.h"

struct addr {
	struct sockaddr_storage ss;
	socklen_t len;
};

static int parse_addr(const char *s, struct addr *a)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res;
	char host[256];
	const char *colon;
	size_t hl;
	int ret;

	memset(a, 0, sizeof(*a));
	if (!strncmp(s, "unix:", 5)) {
		struct sockaddr_un *un = (struct sockaddr_un *)&a->ss;

		if (strlen(s + 5) >= sizeof(un->sun_path) || !s[5])
			return -EINVAL;
		un->sun_family = AF_UNIX;
		strcpy(un->sun_path, s + 5);
		a->len = sizeof(*un);
		return 0;
	}
	if (!strncmp(s, "tcp:", 4))
		s += 4;
	colon = strrchr(s, ':');
	if (!colon || colon == s)
		return -EINVAL;
	hl = (size_t)(colon - s);
	if (hl >= sizeof(host))
		return -EINVAL;
	memcpy(host, s, hl);
	host[hl] = '\0';
	if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') {
		memmove(host, host + 1, hl - 2);
		host[hl - 2] = '\0';
	}
	ret = getaddrinfo(host, colon + 1, &hints, &res);
	if (ret)
		return -EINVAL;
	memcpy(&a->ss, res->ai_addr, res->ai_addrlen);
	a->len = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

static void describe(const struct sockaddr_storage *ss, char *out, size_t n)
{
	char host[128], port[16];

	if (ss->ss_family == AF_UNIX) {
		snprintf(out, n, "unix:%s",
			 ((const struct sockaddr_un *)ss)->sun_path);
		return;
	}
	if (getnameinfo((const struct sockaddr *)ss, sizeof(*ss), host,
			sizeof(host), port, sizeof(port),
			NI_NUMERICHOST | NI_NUMERICSERV))
		snprintf(out, n, "?");
	else
		snprintf(out, n, ss->ss_family == AF_INET6 ? "tcp:[%s]:%s" :
			 "tcp:%s:%s", host, port);
}

static int open_listener(const struct addr *a, char *desc, size_t dlen)
{
	struct sockaddr_storage bound;
	socklen_t bl = sizeof(bound);
	int fd, one = 1;

	fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (a->ss.ss_family == AF_UNIX)
		unlink(((const struct sockaddr_un *)&a->ss)->sun_path);
	else
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (const struct sockaddr *)&a->ss, a->len) ||
	    listen(fd, 16) ||
	    getsockname(fd, (struct sockaddr *)&bound, &bl)) {
		int e = -errno;

		close(fd);
		return e;
	}
	if (a->ss.ss_family == AF_UNIX)
		bound = a->ss;	/* getsockname may shorten sun_path */
	describe(&bound, desc, dlen);
	return fd;
}

static void usage(const char *argv0)
{
	fprintf(stderr,
		"usage: %s --listen ADDR --connect ADDR [--rule SPEC]... "
		"[--seed N] [--conns K] [--quiet]\n"
		"  ADDR: unix:PATH | tcp:HOST:PORT | HOST:PORT\n"
		"  SPEC: DIR:ACTION[@AT][=ARG][,conn=K][,type=T]\n"
		"        DIR a2b (from the connecting side) or b2a; ACTION cut,\n"
		"        cut-random=END, stall=MS, throttle=BYTES_PER_S, split,\n"
		"        flip=MASK, replace=HEX, dup-frame=N, drop-frame=N,\n"
		"        cut-frame=N (@AT: bytes into frame N), shutdown.\n"
		"        e.g. b2a:cut-random@0=4m  a2b:stall@0=500,conn=2\n",
		argv0);
}

static void print_stats(struct proxy *px)
{
	unsigned k, d, n = proxy_conns(px);
	struct proxy_conn_stats st;

	for (k = 1; k <= n; k++) {
		if (proxy_stats(px, k, &st))
			continue;
		for (d = 0; d < 2; d++) {
			const struct proxy_dir_stats *s = &st.dir[d];

			printf("conn %u %s: in %" PRIu64 " out %" PRIu64
			       " frames %" PRIu64 " dropped %" PRIu64
			       " duplicated %" PRIu64 " corrupted %" PRIu64
			       "%s%s%s%s\n", k, d ? "b2a" : "a2b", s->bytes_in,
			       s->bytes_out, s->frames, s->frames_dropped,
			       s->frames_duplicated, s->bytes_corrupted,
			       s->cut ? " CUT" : "", s->shut ? " SHUT" : "",
			       s->stalled ? " STALLED" : "",
			       s->desync ? " (not frames)" : "");
		}
		if (st.failed)
			printf("conn %u: ended by error: %s\n", k,
			       strerror(-st.error));
	}
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "connect", required_argument, NULL, 'c' },
		{ "rule", required_argument, NULL, 'r' },
		{ "seed", required_argument, NULL, 's' },
		{ "conns", required_argument, NULL, 'n' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct proxy_rule rules[PROXY_RULES_MAX];
	const char *listen_s = NULL, *connect_s = NULL;
	struct addr la, ca;
	struct proxy *px;
	unsigned nrules = 0, i, conns = 0, k;
	uint64_t seed = 0;
	char err[256], desc[160];
	FILE *log = stderr;
	sigset_t sigs;
	struct timespec zero = { 0, 0 };
	int c, lfd, ret, sig = 0;

	while ((c = getopt_long(argc, argv, "l:c:r:s:n:qh", opts, NULL)) != -1) {
		switch (c) {
		case 'l': listen_s = optarg; break;
		case 'c': connect_s = optarg; break;
		case 'r':
			if (nrules >= PROXY_RULES_MAX) {
				fprintf(stderr, "pcopy-proxy: too many rules\n");
				return 2;
			}
			if (proxy_parse_rule(optarg, &rules[nrules], err,
					     sizeof(err))) {
				fprintf(stderr, "pcopy-proxy: %s\n", err);
				return 2;
			}
			nrules++;
			break;
		case 's': seed = strtoull(optarg, NULL, 0); break;
		case 'n': conns = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'q': log = NULL; break;
		case 'h': usage(argv[0]); return 0;
		default: usage(argv[0]); return 2;
		}
	}
	if (!listen_s || !connect_s || optind != argc) {
		usage(argv[0]);
		return 2;
	}
	if (parse_addr(listen_s, &la) || parse_addr(connect_s, &ca)) {
		fprintf(stderr, "pcopy-proxy: bad address\n");
		return 2;
	}
	if (!log)
		log = fopen("/dev/null", "w");

	/* Signals are taken with sigwait by this thread only. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);

	lfd = open_listener(&la, desc, sizeof(desc));
	if (lfd < 0) {
		fprintf(stderr, "pcopy-proxy: listen on %s: %s\n", listen_s,
			strerror(-lfd));
		return 1;
	}
	ret = proxy_create(&px, seed, log);
	for (i = 0; !ret && i < nrules; i++)
		ret = proxy_add_rule(px, &rules[i]);
	if (!ret)
		ret = proxy_listen(px, lfd, (struct sockaddr *)&ca.ss, ca.len);
	if (!ret)
		ret = proxy_start(px);
	if (ret) {
		fprintf(stderr, "pcopy-proxy: %s\n", strerror(-ret));
		return 1;
	}
	printf("pcopy-proxy: listening on %s, forwarding to %s, seed %" PRIu64
	       "\n", desc, connect_s, proxy_seed(px));
	fflush(stdout);

	if (conns) {
		for (k = 1; k <= conns && !sig; ) {
			if (proxy_wait_closed(px, k, 200) == 0)
				k++;
			sig = sigtimedwait(&sigs, NULL, &zero);
			if (sig < 0)
				sig = 0;
		}
	} else {
		sigwait(&sigs, &sig);
	}
	print_stats(px);
	proxy_destroy(px);
	if (la.ss.ss_family == AF_UNIX)
		unlink(((struct sockaddr_un *)&la.ss)->sun_path);
	if (log != stderr)
		fclose(log);
	return 0;
}
