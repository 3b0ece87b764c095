/* SPDX-License-Identifier: MIT */
/*
 * postcopy-fc-handler: reading handshake messages from the VMM's stream.
 * A stream has no message boundaries, so a JSON tokenizer finds where each
 * payload ends, and descriptors are paired with payloads in arrival order
 * (the kernel attaches each SCM_RIGHTS batch to the first byte it came with,
 * so a message's descriptor is always in hand when its payload completes).
 */
#include "fc_conn.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <json-c/json.h>

#define FC_RECV_BUF 65536
#define FC_CMSG_FDS 8	/* descriptors one recvmsg can take without MSG_CTRUNC */

/* Returns 0 or -ENOMEM. Caller's thread. */
int fc_reader_init(struct fc_reader *r)
{
	memset(r, 0, sizeof(*r));
	r->tok = json_tokener_new();
	if (!r->tok)
		return -ENOMEM;
	json_tokener_set_flags(r->tok, JSON_TOKENER_STRICT);
	return 0;
}

/* Caller's thread. */
void fc_reader_fini(struct fc_reader *r)
{
	int fd;

	while ((fd = fc_reader_take_fd(r)) >= 0)
		close(fd);
	if (r->tok)
		json_tokener_free(r->tok);
	r->tok = NULL;
}

/* Caller's thread. */
int fc_reader_take_fd(struct fc_reader *r)
{
	int fd;

	if (r->nfds == 0)
		return -1;
	fd = r->fds[0];
	memmove(r->fds, r->fds + 1, (r->nfds - 1) * sizeof(r->fds[0]));
	r->nfds--;
	return fd;
}

/*
 * Queue the descriptors of every SCM_RIGHTS header. Returns how many came,
 * or -EPROTO when they do not fit (the extras are closed: nothing can pair
 * them with a message any more).
 */
static int take_fds(struct fc_reader *r, struct msghdr *mh, char *err, size_t errlen)
{
	struct cmsghdr *c;
	int got = 0, lost = 0;

	for (c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c)) {
		size_t n, i;

		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (i = 0; i < n; i++) {
			int fd;

			memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(fd));
			if (r->nfds < FC_FDS_QUEUE) {
				r->fds[r->nfds++] = fd;
			} else {
				close(fd);
				lost++;
			}
			got++;
		}
	}
	if (mh->msg_flags & MSG_CTRUNC) {
		snprintf(err, errlen,
			 "more than %d file descriptors in one message: expected one (the userfaultfd)",
			 FC_CMSG_FDS);
		return -EPROTO;
	}
	if (lost) {
		snprintf(err, errlen,
			 "%d file descriptors received ahead of their JSON payloads: too many",
			 r->nfds + lost);
		return -EPROTO;
	}
	return got;
}

/* Feed bytes to the tokenizer, delivering each complete value. */
static int feed(struct fc_reader *r, const char *p, size_t len, fc_msg_fn cb,
		void *opaque, char *err, size_t errlen)
{
	while (len > 0) {
		struct json_object *o;
		enum json_tokener_error je;
		size_t used, blank;

		/* Blanks between messages are not part of the next one. */
		if (!r->partial) {
			for (blank = 0; blank < len; blank++)
				if (!strchr(" \t\r\n", p[blank]) || !p[blank])
					break;
			p += blank;
			len -= blank;
			r->stream_pos += blank;
			if (len == 0)
				break;
		}
		r->partial = true;
		o = json_tokener_parse_ex(r->tok, p, (int)(len > INT_MAX ? INT_MAX : len));
		je = json_tokener_get_error(r->tok);
		used = json_tokener_get_parse_end(r->tok);
		if (!o && je == json_tokener_continue) {
			r->msg_bytes += used;
			r->stream_pos += used;
			if (r->msg_bytes > FC_MSG_MAX) {
				snprintf(err, errlen,
					 "a handshake payload longer than %u bytes (not a region table?)",
					 FC_MSG_MAX);
				return -EMSGSIZE;
			}
			p += used;
			len -= used;
			continue;
		}
		if (!o && je != json_tokener_success) {	/* success: null */
			snprintf(err, errlen, "JSON syntax error at byte %llu of the stream: %s",
				 r->stream_pos + used, json_tokener_error_desc(je));
			return -EPROTO;
		}
		r->stream_pos += used;
		p += used;
		len -= used;
		r->msg_bytes = 0;
		r->partial = false;
		json_tokener_reset(r->tok);
		cb(opaque, o, fc_reader_take_fd(r));
	}
	return 0;
}

/* See fc_conn.h. Caller's thread. */
int fc_reader_recv(struct fc_reader *r, int sock, fc_msg_fn cb, void *opaque,
		   char *err, size_t errlen)
{
	static_assert(FC_RECV_BUF <= INT_MAX, "tokenizer takes int lengths");
	char buf[FC_RECV_BUF];
	union {
		char b[CMSG_SPACE(FC_CMSG_FDS * sizeof(int))];
		struct cmsghdr align;
	} ctl;
	struct iovec iov = { buf, sizeof(buf) };
	struct msghdr mh = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = ctl.b, .msg_controllen = sizeof(ctl.b),
	};
	unsigned before = r->nfds;
	ssize_t n;
	int rc;

	do
		n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
	while (n < 0 && errno == EINTR);
	if (n < 0) {
		rc = -errno;
		if (rc != -EAGAIN)
			snprintf(err, errlen, "recvmsg: %s", strerror(errno));
		return rc == -EWOULDBLOCK ? -EAGAIN : rc;
	}
	rc = take_fds(r, &mh, err, errlen);
	if (rc < 0)
		return rc;
	if (r->nfds - before > 1) {
		/* The kernel ends a read after the one SCM_RIGHTS batch it
		 * delivers, so two here were sent together in one message. */
		snprintf(err, errlen,
			 "%u file descriptors in one message: expected one (the userfaultfd)",
			 r->nfds - before);
		return -EPROTO;
	}
	if (n == 0) {
		if (r->partial) {
			snprintf(err, errlen,
				 "the stream ended in the middle of a JSON payload (%zu bytes of it received)",
				 r->msg_bytes);
			return -EPROTO;
		}
		return 0;
	}
	if (memchr(buf, '\0', (size_t)n)) {
		snprintf(err, errlen, "a NUL byte in the JSON payload (byte %llu of the stream)",
			 r->stream_pos + (unsigned long long)((char *)memchr(buf, '\0', (size_t)n) - buf));
		return -EPROTO;
	}
	rc = feed(r, buf, (size_t)n, cb, opaque, err, errlen);
	return rc < 0 ? rc : (int)n;
}

/* Caller's thread. */
bool fc_fd_is_uffd(int fd, char *what, size_t whatlen)
{
	char path[64], link[128];
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	n = readlink(path, link, sizeof(link) - 1);
	if (n < 0) {
		snprintf(what, whatlen, "unknown (%s: %s)", path, strerror(errno));
		return false;
	}
	link[n] = '\0';
	snprintf(what, whatlen, "%s", link);
	return strcmp(link, "anon_inode:[userfaultfd]") == 0;
}

/* Caller's thread. */
int fc_uffd_info(int fd, unsigned long long *features, unsigned long long *ioctls)
{
	char path[64], *line = NULL;
	size_t cap = 0;
	int rc = -ENOENT;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	f = fopen(path, "re");
	if (!f)
		return -errno;
	/* "API:\t<api>:<features>:<ioctls>", all hex (fs/userfaultfd.c). */
	while (getline(&line, &cap, f) > 0) {
		unsigned long long api;

		if (sscanf(line, "API: %llx:%llx:%llx", &api, features, ioctls) == 3) {
			rc = 0;
			break;
		}
	}
	free(line);
	fclose(f);
	return rc;
}
