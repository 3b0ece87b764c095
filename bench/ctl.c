/* SPDX-License-Identifier: MIT */
/*
 * The control protocol between the benchmark's two sides, so the server can
 * run in a child process or in another network namespace (--serve): per
 * session a control connection (request, "ready", final figures) and one data
 * connection that carries the run itself (raw round trips or the library).
 */
#include "bench.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

struct server_image {
	uint8_t *mem;
	size_t len;
	int file_fd;			/* snapshot file, built on first use */
	const char *tmpdir;
};

/* Build (or keep) the image of the requested size: generating 1 GiB takes a
 * while, so it is done once, outside any timed section. */
static int image_prepare(struct server_image *im, const struct ctl_req *rq)
{
	if (rq->image_bytes == 0 || rq->image_bytes % B_PAGE ||
	    rq->image_bytes > (1ull << 40))
		return -EINVAL;
	if (im->mem && im->len != rq->image_bytes) {
		munmap(im->mem, im->len);
		im->mem = NULL;
		if (im->file_fd >= 0)
			close(im->file_fd);
		im->file_fd = -1;
	}
	if (!im->mem) {
		im->mem = mmap(NULL, rq->image_bytes, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (im->mem == MAP_FAILED) {
			im->mem = NULL;
			return -errno;
		}
		im->len = rq->image_bytes;
		img_fill_from(im->mem, 0, im->len);
	}
	if ((rq->flags & CTL_F_SOURCE_FILE) && im->file_fd < 0) {
		int fd = img_write_file(im->tmpdir, im->len);

		if (fd < 0)
			return fd;
		im->file_fd = fd;
	}
	return 0;
}

static int serve_session(int lfd, int ctl, struct server_image *im)
{
	struct ctl_req rq;
	struct ctl_done done;
	uint64_t c0, base;
	int rc, fd;

	memset(&done, 0, sizeof(done));
	done.magic = CTL_MAGIC;
	rc = b_read_all(ctl, &rq, sizeof(rq));
	if (rc < 0 || rq.magic != CTL_MAGIC)
		return rc < 0 ? rc : -EPROTO;
	if (rq.kind == CTL_QUIT)
		return 1;
	if (rq.kind != CTL_RAW && rq.kind != CTL_LIB)
		return -EPROTO;
	done.rc = image_prepare(im, &rq);
	/* "ready" (or why not) */
	rc = b_write_all(ctl, &done, sizeof(done));
	if (rc < 0 || done.rc < 0)
		return rc < 0 ? rc : 0;
	fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (rq.flags & CTL_F_SRC_NODELAY) {
		int one = 1;

		/* fails harmlessly on a Unix socket */
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	b_reset_hwm();
	base = b_vm_rss();
	c0 = b_proc_cpu_ns();
	if (rq.kind == CTL_RAW) {
		done.rc = serve_raw(fd, im->mem, im->len, &done.served);
		close(fd);
	} else {
		/* The library owns fd from here on. */
		done.rc = serve_lib(lfd, fd, im->mem, im->len,
				    (rq.flags & CTL_F_SOURCE_FILE) ? im->file_fd : -1,
				    rq.flags, &done);
	}
	done.cpu_ns = b_proc_cpu_ns() - c0;
	done.mem_overhead = b_vm_hwm() > base ? b_vm_hwm() - base : 0;
	return b_write_all(ctl, &done, sizeof(done));
}

int b_serve(int lfd, const struct b_opts *o)
{
	struct server_image im = { .file_fd = -1, .tmpdir = o->tmpdir };
	int status = 0;

	for (;;) {
		int ctl = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		int rc;

		if (ctl < 0) {
			if (errno == EINTR)
				continue;
			status = 1;
			break;
		}
		rc = serve_session(lfd, ctl, &im);
		close(ctl);
		if (rc == 1)
			break;
		if (rc < 0)
			fprintf(stderr, "pcopy-bench server: session: %s\n", strerror(-rc));
	}
	if (im.mem)
		munmap(im.mem, im.len);
	if (im.file_fd >= 0)
		close(im.file_fd);
	return status;
}

int ctl_open(const struct b_addr *srv, enum ctl_kind kind, const struct b_opts *o,
	     uint32_t flags, size_t warm_bytes, int *ctl_fd, int *data_fd)
{
	struct ctl_req rq = {
		.magic = CTL_MAGIC,
		.kind = kind,
		.image_bytes = o->image_bytes,
		.flags = flags | (o->source_file ? CTL_F_SOURCE_FILE : 0) |
			 (o->src_nodelay ? CTL_F_SRC_NODELAY : 0),
	};
	struct ctl_done ready;
	int ctl, fd, rc;

	ctl = b_connect(srv);
	if (ctl < 0)
		return ctl;
	rc = b_write_all(ctl, &rq, sizeof(rq));
	if (rc == 0)
		rc = b_read_all(ctl, &ready, sizeof(ready));
	if (rc == 0 && (ready.magic != CTL_MAGIC || ready.rc < 0))
		rc = ready.magic != CTL_MAGIC ? -EPROTO : ready.rc;
	if (rc < 0) {
		close(ctl);
		return rc;
	}
	/* Now: the server built its image (first use) and would otherwise
	 * take the warmed pages; its handshake timer starts only when the
	 * data connection below is accepted. */
	if (warm_bytes)
		b_warm_memory(warm_bytes);
	fd = b_connect(srv);
	if (fd < 0) {
		close(ctl);
		return fd;
	}
	*ctl_fd = ctl;
	*data_fd = fd;
	return 0;
}

int ctl_finish(int ctl_fd, struct ctl_done *done)
{
	int rc = b_read_all(ctl_fd, done, sizeof(*done));

	if (rc == 0 && done->magic != CTL_MAGIC)
		rc = -EPROTO;
	done->err[sizeof(done->err) - 1] = 0;
	done->threads[sizeof(done->threads) - 1] = 0;
	return rc;
}

void ctl_quit(const struct b_addr *srv)
{
	struct ctl_req rq = { .magic = CTL_MAGIC, .kind = CTL_QUIT };
	int fd = b_connect(srv);

	if (fd < 0)
		return;
	b_write_all(fd, &rq, sizeof(rq));
	close(fd);
}
