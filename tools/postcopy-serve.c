/* SPDX-License-Identifier: MIT */
/*
 * postcopy-serve: serve snapshot files (one per region) to one destination
 * over a Unix socket or TCP, until the destination reports it is complete.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "postcopy.h"

struct serve_region {
	char name[PCOPY_NAME_MAX + 1];
	char path[4096];
	unsigned long long offset, length, page_size;
};

struct serve_opts {
	struct serve_region regions[PCOPY_REGIONS_MAX];
	unsigned nregions;
	const char *listen;
	bool zlib, allow_remote, quiet, adopt;
	unsigned long long max_rate;
	const char *key_file;
	long peer_uid;
};

static void usage(FILE *f, const char *argv0)
{
	fprintf(f,
		"usage: %s -l ADDR -r NAME:FILE[:OFFSET[:LENGTH[:PAGESIZE]]] [-r ...] [options]\n"
		"Serve memory-image snapshot files to one postcopy destination.\n\n"
		"  -l, --listen ADDR      unix:/path, /path, tcp:HOST:PORT or HOST:PORT\n"
		"  -r, --region SPEC      a region backed by FILE from OFFSET (default 0),\n"
		"                         LENGTH bytes (default: to the end of the file,\n"
		"                         rounded up to the page size), host page size\n"
		"                         PAGESIZE (4K or 2M; default 4K); repeat per region,\n"
		"                         in the destination's order; sizes take K/M/G\n"
		"  -z, --zlib             offer zlib compression\n"
		"      --adopt            restarted after a crash: resume the session of a\n"
		"                         destination that reconnects (same image only)\n"
		"      --max-rate BYTES   send at most BYTES per second (K/M/G suffixes)\n"
		"      --allow-remote     listen on a non-loopback address (the image may\n"
		"                         hold secrets: only on a trusted network)\n"
		"      --key-file FILE    pre-shared key: the peer must prove it knows it\n"
		"      --peer-uid UID     on a Unix socket, also accept peers running as UID\n"
		"                         (default: only our own uid and root)\n"
		"  -q, --quiet            no progress line\n"
		"  -V, --version          print the library version\n", argv0);
}

static int parse_region(const char *spec, struct serve_region *r)
{
	char buf[4200], *fields[5] = { 0 }, *save = NULL, *tok;
	unsigned n = 0;

	if (strlen(spec) >= sizeof(buf))
		return -EINVAL;
	strcpy(buf, spec);
	for (tok = strtok_r(buf, ":", &save); tok && n < 5; tok = strtok_r(NULL, ":", &save))
		fields[n++] = tok;
	if (n < 2 || strtok_r(NULL, ":", &save) || strlen(fields[0]) > PCOPY_NAME_MAX)
		return -EINVAL;
	snprintf(r->name, sizeof(r->name), "%s", fields[0]);
	snprintf(r->path, sizeof(r->path), "%s", fields[1]);
	r->offset = r->length = 0;
	r->page_size = 4096;
	if (n > 2 && tool_parse_size(fields[2], &r->offset) < 0)
		return -EINVAL;
	if (n > 3 && tool_parse_size(fields[3], &r->length) < 0)
		return -EINVAL;
	if (n > 4 && tool_parse_size(fields[4], &r->page_size) < 0)
		return -EINVAL;
	return 0;
}

static int parse_args(int argc, char **argv, struct serve_opts *o)
{
	static const struct option longopts[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "region", required_argument, NULL, 'r' },
		{ "zlib", no_argument, NULL, 'z' },
		{ "adopt", no_argument, NULL, 'A' },
		{ "max-rate", required_argument, NULL, 'M' },
		{ "allow-remote", no_argument, NULL, 'R' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "key-file", required_argument, NULL, 'K' },
		{ "peer-uid", required_argument, NULL, 'P' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	int c;

	memset(o, 0, sizeof(*o));
	o->peer_uid = (long)geteuid();
	while ((c = getopt_long(argc, argv, "l:r:zqVh", longopts, NULL)) != -1) {
		switch (c) {
		case 'l': o->listen = optarg; break;
		case 'r':
			if (o->nregions == PCOPY_REGIONS_MAX ||
			    parse_region(optarg, &o->regions[o->nregions]) < 0) {
				fprintf(stderr, "postcopy-serve: bad region '%s'\n", optarg);
				return -1;
			}
			o->nregions++;
			break;
		case 'z': o->zlib = true; break;
		case 'A': o->adopt = true; break;
		case 'M':
			if (tool_parse_size(optarg, &o->max_rate) < 0 || o->max_rate == 0) {
				fprintf(stderr, "postcopy-serve: bad --max-rate '%s'\n", optarg);
				return -1;
			}
			break;
		case 'R': o->allow_remote = true; break;
		case 'q': o->quiet = true; break;
		case 'K': o->key_file = optarg; break;
		case 'P': o->peer_uid = strtol(optarg, NULL, 10); break;
		case 'V': printf("libpostcopy %s\n", pcopy_version()); exit(0);
		case 'h': usage(stdout, argv[0]); exit(0);
		default: usage(stderr, argv[0]); return -1;
		}
	}
	if (!o->listen || o->nregions == 0 || optind != argc) {
		usage(stderr, argv[0]);
		return -1;
	}
	return 0;
}

static void log_stderr(void *opaque, enum pcopy_log_level lvl, const char *msg)
{
	(void)opaque;
	if (lvl <= PCOPY_LOG_WARN)
		fprintf(stderr, "postcopy-serve: %s\n", msg);
}

/* Open each file and work out default lengths. */
static int open_regions(struct serve_opts *o, struct pcopy_source_region *out, int *fds)
{
	for (unsigned i = 0; i < o->nregions; i++) {
		struct serve_region *r = &o->regions[i];
		struct stat st;

		fds[i] = open(r->path, O_RDONLY | O_CLOEXEC);
		if (fds[i] < 0 || fstat(fds[i], &st) < 0) {
			fprintf(stderr, "postcopy-serve: %s: %s\n", r->path, strerror(errno));
			return -1;
		}
		if (r->length == 0) {
			if ((unsigned long long)st.st_size <= r->offset) {
				fprintf(stderr, "postcopy-serve: %s: offset %llu is past the end\n",
					r->path, r->offset);
				return -1;
			}
			r->length = (unsigned long long)st.st_size - r->offset;
			r->length = (r->length + r->page_size - 1) / r->page_size * r->page_size;
		}
		out[i] = (struct pcopy_source_region){
			.name = r->name, .mem = NULL, .fd = fds[i],
			.file_offset = (off_t)r->offset, .length = r->length,
			.page_size = r->page_size,
		};
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct serve_opts o;
	struct pcopy_source_region regions[PCOPY_REGIONS_MAX];
	int fds[PCOPY_REGIONS_MAX];
	struct pcopy_source_opts so;
	struct pcopy_source *s = NULL;
	struct tool_addr addr;
	struct pcopy_stats st;
	unsigned long long total = 0;
	char err[256];
	unsigned char key[4097];
	int lfd, fd, rc;

	for (unsigned i = 0; i < PCOPY_REGIONS_MAX; i++)
		fds[i] = -1;
	if (parse_args(argc, argv, &o) < 0)
		return 2;
	if (tool_addr_parse(o.listen, &addr, err, sizeof(err)) < 0) {
		fprintf(stderr, "postcopy-serve: %s\n", err);
		return 2;
	}
	if (!tool_addr_is_local(&addr) && !o.allow_remote) {
		fprintf(stderr, "postcopy-serve: %s is not a Unix socket or loopback address;"
			" the image may hold secrets: pass --allow-remote to serve it there\n",
			o.listen);
		return 2;
	}
	if (open_regions(&o, regions, fds) < 0)
		return 1;
	for (unsigned i = 0; i < o.nregions; i++)
		total += regions[i].length;

	pcopy_source_opts_init(&so);
	so.log = log_stderr;
	if (o.key_file) {
		rc = tool_read_key(o.key_file, key, sizeof(key), err, sizeof(err));
		if (rc < 0) {
			fprintf(stderr, "postcopy-serve: %s\n", err);
			return 2;
		}
		so.psk = key;
		so.psk_len = (size_t)rc;
	}
	if (o.zlib)
		so.flags |= PCOPY_SOURCE_ZLIB;
	if (o.adopt)
		so.flags |= PCOPY_SOURCE_ADOPT;
	so.max_rate_bps = o.max_rate;
	rc = pcopy_source_create(&s, regions, o.nregions, &so);
	if (rc < 0) {
		fprintf(stderr, "postcopy-serve: %s\n", pcopy_strerror(rc));
		return 1;
	}
	lfd = tool_listen(&addr);
	if (lfd < 0) {
		fprintf(stderr, "postcopy-serve: listen on %s: %s\n", o.listen, strerror(-lfd));
		return 1;
	}
	if (!o.quiet)
		fprintf(stderr, "postcopy-serve: %u region(s), %llu MiB, listening on %s\n",
			o.nregions, total >> 20, o.listen);
	for (;;) {
		fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0) {
			fprintf(stderr, "postcopy-serve: accept: %s\n", strerror(errno));
			return 1;
		}
		if (tool_check_peer_uid(fd, o.peer_uid, err, sizeof(err)) == 0)
			break;
		fprintf(stderr, "postcopy-serve: refused: %s\n", err);
		close(fd);
	}
	rc = pcopy_source_start(s, fd);
	/* Keep listening: the destination's urgent connection, and its resumed
	 * connections after a break, join the session. */
	while (rc == 0 && (rc = pcopy_source_wait(s, 0)) == -ETIMEDOUT) {
		struct pollfd pfd = { .fd = lfd, .events = POLLIN };

		rc = 0;
		if (poll(&pfd, 1, 250) == 1) {
			int extra = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);

			if (extra >= 0 && tool_check_peer_uid(extra, o.peer_uid, err, sizeof(err)) < 0) {
				fprintf(stderr, "postcopy-serve: refused: %s\n", err);
				close(extra);
			} else if (extra >= 0 && pcopy_source_add_conn(s, extra) < 0 && !o.quiet)
				fprintf(stderr, "postcopy-serve: refused a connection\n");
		}
		pcopy_source_stats(s, &st);
		if (!o.quiet)
			tool_progress("serving", st.bytes_payload, total, st.elapsed_ns / 1e9);
	}
	close(lfd);
	if (addr.is_unix)
		unlink(((struct sockaddr_un *)&addr.ss)->sun_path);
	pcopy_source_stats(s, &st);
	if (rc < 0) {
		fprintf(stderr, "postcopy-serve: %s: %s\n", pcopy_strerror(rc), pcopy_source_error(s));
	} else if (!o.quiet) {
		tool_progress("serving", total, total, st.elapsed_ns / 1e9);
		fprintf(stderr, "postcopy-serve: done: %llu requests, %.1f MiB on the wire\n",
			(unsigned long long)st.requests, st.bytes_wire / 1048576.0);
	}
	pcopy_source_destroy(s);
	for (unsigned i = 0; i < o.nregions; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	return rc < 0 ? 1 : 0;
}
