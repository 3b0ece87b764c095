/* SPDX-License-Identifier: MIT */
/*
 * postcopy-restore: the destination side for a plain memory image. Maps the
 * regions, restores them lazily from a postcopy source, optionally writes the
 * result to a file and checks a crc32, and prints a summary (or JSON).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <zlib.h>

#include "cli.h"
#include "postcopy.h"

#ifndef MFD_HUGETLB
#define MFD_HUGETLB 0x0004U
#endif

struct restore_opts {
	struct pcopy_region regions[PCOPY_REGIONS_MAX];
	char names[PCOPY_REGIONS_MAX][PCOPY_NAME_MAX + 1];
	unsigned nregions;
	const char *connect, *output;
	bool check_crc, json, quiet, no_urgent;
	const char *key_file;
	unsigned long crc_want;
	int timeout_s;
};

static void usage(FILE *f, const char *argv0)
{
	fprintf(f,
		"usage: %s -c ADDR -r NAME:SIZE[:PAGESIZE] [-r ...] [options]\n"
		"Restore a memory image lazily from a postcopy source.\n\n"
		"  -c, --connect ADDR     unix:/path, /path, tcp:HOST:PORT or HOST:PORT\n"
		"  -r, --region SPEC      region NAME of SIZE bytes (K/M/G suffixes), host page\n"
		"                         size PAGESIZE (4K, or 2M for hugetlbfs; default 4K);\n"
		"                         repeat per region, in the source's order\n"
		"  -o, --output FILE      write the restored regions, concatenated, to FILE\n"
		"      --crc32 HEX        fail unless the concatenated regions have this crc32\n"
		"  -t, --timeout SECONDS  give up after this long (default: no limit)\n"
		"  -U, --no-urgent        no second (urgent) connection for page requests\n"
		"  -j, --json             print the summary as one JSON object\n"
		"      --key-file FILE    pre-shared key: the peer must prove it knows it\n"
		"  -q, --quiet            no progress line\n"
		"  -V, --version          print the library version\n", argv0);
}

static int parse_region(const char *spec, struct restore_opts *o)
{
	unsigned i = o->nregions;
	char buf[256], *save = NULL, *name, *size, *psize;
	unsigned long long len, ps = 4096;

	if (i == PCOPY_REGIONS_MAX || strlen(spec) >= sizeof(buf))
		return -EINVAL;
	strcpy(buf, spec);
	name = strtok_r(buf, ":", &save);
	size = strtok_r(NULL, ":", &save);
	psize = strtok_r(NULL, ":", &save);
	if (!name || !size || strtok_r(NULL, ":", &save) || strlen(name) > PCOPY_NAME_MAX ||
	    tool_parse_size(size, &len) < 0 || (psize && tool_parse_size(psize, &ps) < 0) ||
	    (ps != 4096 && ps != (2u << 20)) || len == 0 || len % ps)
		return -EINVAL;
	strcpy(o->names[i], name);
	o->regions[i] = (struct pcopy_region){ .name = o->names[i], .length = len,
					       .page_size = ps };
	o->nregions++;
	return 0;
}

static int parse_args(int argc, char **argv, struct restore_opts *o)
{
	static const struct option longopts[] = {
		{ "connect", required_argument, NULL, 'c' },
		{ "region", required_argument, NULL, 'r' },
		{ "output", required_argument, NULL, 'o' },
		{ "crc32", required_argument, NULL, 'C' },
		{ "timeout", required_argument, NULL, 't' },
		{ "json", no_argument, NULL, 'j' },
		{ "no-urgent", no_argument, NULL, 'U' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "key-file", required_argument, NULL, 'K' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	int c;

	memset(o, 0, sizeof(*o));
	o->timeout_s = -1;
	while ((c = getopt_long(argc, argv, "c:r:o:t:jqUVh", longopts, NULL)) != -1) {
		switch (c) {
		case 'c': o->connect = optarg; break;
		case 'r':
			if (parse_region(optarg, o) < 0) {
				fprintf(stderr, "postcopy-restore: bad region '%s'\n", optarg);
				return -1;
			}
			break;
		case 'o': o->output = optarg; break;
		case 'C': o->check_crc = true; o->crc_want = strtoul(optarg, NULL, 16); break;
		case 't': o->timeout_s = atoi(optarg); break;
		case 'j': o->json = true; break;
		case 'U': o->no_urgent = true; break;
		case 'q': o->quiet = true; break;
		case 'K': o->key_file = optarg; break;
		case 'V': printf("libpostcopy %s\n", pcopy_version()); exit(0);
		case 'h': usage(stdout, argv[0]); exit(0);
		default: usage(stderr, argv[0]); return -1;
		}
	}
	if (!o->connect || o->nregions == 0 || optind != argc) {
		usage(stderr, argv[0]);
		return -1;
	}
	return 0;
}

/* Anonymous memory for 4 KiB regions, a hugetlbfs memfd for 2 MiB ones. */
static int map_regions(struct restore_opts *o)
{
	for (unsigned i = 0; i < o->nregions; i++) {
		struct pcopy_region *r = &o->regions[i];
		void *p;

		if (r->page_size == 4096) {
			p = mmap(NULL, r->length, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		} else {
			int fd = memfd_create(r->name, MFD_CLOEXEC | MFD_HUGETLB);

			if (fd < 0 || ftruncate(fd, (off_t)r->length) < 0) {
				fprintf(stderr, "postcopy-restore: hugetlbfs memory for '%s': %s"
					" (reserve pages in /proc/sys/vm/nr_hugepages)\n",
					r->name, strerror(errno));
				return -1;
			}
			p = mmap(NULL, r->length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
			close(fd);
		}
		if (p == MAP_FAILED) {
			fprintf(stderr, "postcopy-restore: mmap %zu bytes: %s\n", r->length,
				strerror(errno));
			return -1;
		}
		r->host = p;
	}
	return 0;
}

static int write_output(const struct restore_opts *o)
{
	int fd = open(o->output, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	if (fd < 0)
		goto fail;
	for (unsigned i = 0; i < o->nregions; i++) {
		const char *p = o->regions[i].host;
		size_t left = o->regions[i].length;

		while (left) {
			ssize_t n = write(fd, p, left > (1u << 30) ? (1u << 30) : left);
			if (n < 0) {
				if (errno == EINTR)
					continue;
				close(fd);
				goto fail;
			}
			p += n;
			left -= (size_t)n;
		}
	}
	if (close(fd) == 0)
		return 0;
fail:
	fprintf(stderr, "postcopy-restore: writing %s: %s\n", o->output, strerror(errno));
	return -1;
}

static unsigned long image_crc(const struct restore_opts *o)
{
	unsigned long crc = crc32(0, NULL, 0);

	for (unsigned i = 0; i < o->nregions; i++)
		for (size_t off = 0; off < o->regions[i].length; off += 1u << 30) {
			size_t n = o->regions[i].length - off;
			crc = crc32(crc, (const Bytef *)o->regions[i].host + off,
				    (uInt)(n > (1u << 30) ? (1u << 30) : n));
		}
	return crc;
}

static void print_summary(const struct restore_opts *o, const struct pcopy_stats *st,
			  int rc, const char *err, unsigned long crc)
{
	double secs = st->elapsed_ns / 1e9;
	unsigned long long total = 0;

	for (unsigned i = 0; i < o->nregions; i++)
		total += o->regions[i].length;
	if (o->json) {
		printf("{\"ok\":%s,\"error\":\"%s\",\"bytes\":%llu,\"seconds\":%.6f,"
		       "\"pages_zero\":%llu,\"pages_raw\":%llu,\"pages_zlib\":%llu,"
		       "\"bytes_wire\":%llu,\"faults\":%llu,\"requests\":%llu,"
		       "\"duplicates\":%llu,\"lat_p50_ns\":%llu,\"lat_p99_ns\":%llu,"
		       "\"lat_p999_ns\":%llu,\"breaks\":%llu,\"resent_pages\":%llu,"
		       "\"urgent_pages\":%llu,\"crc32\":\"%08lx\"}\n",
		       rc == 0 ? "true" : "false", rc == 0 ? "" : pcopy_strerror(rc), total, secs,
		       (unsigned long long)st->pages_zero, (unsigned long long)st->pages_raw,
		       (unsigned long long)st->pages_zlib, (unsigned long long)st->bytes_wire,
		       (unsigned long long)st->faults, (unsigned long long)st->requests,
		       (unsigned long long)st->duplicates, (unsigned long long)st->lat_p50_ns,
		       (unsigned long long)st->lat_p99_ns, (unsigned long long)st->lat_p999_ns,
		       (unsigned long long)st->breaks, (unsigned long long)st->resent_pages,
		       (unsigned long long)st->urgent_pages, crc);
		return;
	}
	if (rc < 0) {
		fprintf(stderr, "postcopy-restore: %s: %s\n", pcopy_strerror(rc), err);
		return;
	}
	printf("restored %llu MiB in %.3f s (%.2f GB/s): %llu zero, %llu raw, %llu zlib pages;"
	       " %llu faults; crc32 %08lx\n", total >> 20, secs,
	       secs > 0 ? (double)total / secs / 1e9 : 0.0,
	       (unsigned long long)st->pages_zero, (unsigned long long)st->pages_raw,
	       (unsigned long long)st->pages_zlib, (unsigned long long)st->faults, crc);
}

/* After a break the library calls this to reconnect (with backoff). */
static int reconnect(void *opaque, int urgent)
{
	(void)urgent;
	return tool_connect(opaque, 1000);
}

int main(int argc, char **argv)
{
	struct restore_opts o;
	struct tool_addr addr;
	struct pcopy_dest_opts dopts;
	struct pcopy_dest *d = NULL;
	struct pcopy_stats st;
	unsigned long long total = 0;
	unsigned long crc = 0;
	char err[256];
	unsigned char key[4097];
	int fd, rc, waited_ms = 0;

	if (parse_args(argc, argv, &o) < 0)
		return 2;
	if (tool_addr_parse(o.connect, &addr, err, sizeof(err)) < 0) {
		fprintf(stderr, "postcopy-restore: %s\n", err);
		return 2;
	}
	if (map_regions(&o) < 0)
		return 1;
	for (unsigned i = 0; i < o.nregions; i++)
		total += o.regions[i].length;
	pcopy_dest_opts_init(&dopts);
	if (o.key_file) {
		rc = tool_read_key(o.key_file, key, sizeof(key), err, sizeof(err));
		if (rc < 0) {
			fprintf(stderr, "postcopy-restore: %s\n", err);
			return 2;
		}
		dopts.psk = key;
		dopts.psk_len = (size_t)rc;
	}
	dopts.connect = reconnect;
	dopts.connect_opaque = &addr;
	rc = pcopy_dest_create(&d, o.regions, o.nregions, &dopts);
	if (rc < 0) {
		fprintf(stderr, "postcopy-restore: %s\n", pcopy_strerror(rc));
		return 1;
	}
	fd = tool_connect(&addr, 10000);
	if (fd < 0) {
		fprintf(stderr, "postcopy-restore: connect %s: %s\n", o.connect, strerror(-fd));
		pcopy_dest_destroy(d);
		return 1;
	}
	rc = pcopy_dest_start(d, fd);
	if (rc == 0 && !o.no_urgent) {
		/* Requests and their pages on a second connection, so a fault never
		 * waits behind background data; optional. */
		int ufd = tool_connect(&addr, 1000);

		if (ufd >= 0 && pcopy_dest_add_urgent(d, ufd) < 0 && !o.quiet)
			fprintf(stderr, "postcopy-restore: no urgent connection: %s\n",
				pcopy_dest_error(d));
	}
	while (rc == 0 && (rc = pcopy_dest_wait(d, 500)) == -ETIMEDOUT) {
		pcopy_dest_stats(d, &st);
		if (!o.quiet && !o.json)
			tool_progress("restoring", st.host_pages_received * total /
				      (st.host_pages_total ? st.host_pages_total : 1),
				      total, st.elapsed_ns / 1e9);
		waited_ms += 500;
		rc = (o.timeout_s >= 0 && waited_ms >= o.timeout_s * 1000) ? -ETIMEDOUT : 0;
	}
	pcopy_dest_stats(d, &st);
	if (rc == 0) {
		crc = image_crc(&o);
		if (o.check_crc && crc != o.crc_want) {
			snprintf(err, sizeof(err), "crc32 of the image is %08lx, expected %08lx",
				 crc, o.crc_want);
			rc = -EBADMSG;
		} else if (o.output && write_output(&o) < 0) {
			rc = -EIO;
		}
	}
	print_summary(&o, &st, rc, rc == -EBADMSG ? err : pcopy_dest_error(d), crc);
	/* An incomplete restore's memory is never read back as zeros: destroy
	 * makes the missing pages inaccessible before closing the uffd. */
	pcopy_dest_destroy(d);
	return rc < 0 ? 1 : 0;
}
