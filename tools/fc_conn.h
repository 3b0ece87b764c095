/* SPDX-License-Identifier: MIT */
/*
 * postcopy-fc-handler: splitting the VMM's Unix stream into handshake
 * messages (one JSON value each, with one file descriptor by SCM_RIGHTS).
 */
#ifndef PCOPY_TOOLS_FC_CONN_H
#define PCOPY_TOOLS_FC_CONN_H

#include <stdbool.h>
#include <stddef.h>

struct json_object;
struct json_tokener;

#define FC_MSG_MAX (1u << 20)	/* bytes of one JSON payload, at most */
#define FC_FDS_QUEUE 8		/* descriptors received ahead of their JSON */

struct fc_reader {
	struct json_tokener *tok;
	int fds[FC_FDS_QUEUE];	/* received, not yet paired with a message */
	unsigned nfds;
	size_t msg_bytes;	/* bytes of the message being parsed so far */
	bool partial;		/* non-blank bytes of an unfinished message seen */
	unsigned long long stream_pos;	/* bytes read from the stream, for messages */
};

/*
 * A complete message: `payload` (the callee owns it: json_object_put) and
 * the descriptor that came with it, or -1 if none did (the callee owns it).
 */
typedef void (*fc_msg_fn)(void *opaque, struct json_object *payload, int fd);

/* Returns 0 or -ENOMEM. */
int fc_reader_init(struct fc_reader *r);

/* Frees the tokenizer and closes descriptors still queued (take them first
 * with fc_reader_take_fd to keep them). Accepts a zeroed reader. */
void fc_reader_fini(struct fc_reader *r);

/* Pop a queued descriptor (one whose message never completed), or -1. */
int fc_reader_take_fd(struct fc_reader *r);

/*
 * One recvmsg() on the non-blocking stream socket `sock`; every message
 * completed by these bytes goes to cb, in order, paired with the k-th
 * descriptor received. Returns the number of bytes read (> 0), 0 at end of
 * stream, -EAGAIN if nothing was there, or a fatal error for this stream
 * with a message in err: -EPROTO (bad JSON, NUL byte, several descriptors
 * in one message, truncated at EOF), -EMSGSIZE (payload over FC_MSG_MAX),
 * or -errno from recvmsg. After an error the descriptors received so far
 * stay queued. Caller's thread (the handler's main loop).
 */
int fc_reader_recv(struct fc_reader *r, int sock, fc_msg_fn cb, void *opaque,
		   char *err, size_t errlen);

/*
 * True if `fd` is a userfaultfd (by its /proc/self/fd link); otherwise
 * false with what it is in `what`.
 */
bool fc_fd_is_uffd(int fd, char *what, size_t whatlen);

/*
 * What the VMM enabled on its userfaultfd, from /proc/self/fdinfo: the
 * feature bits and the ioctls the kernel offers for it (UFFDIO_API answer,
 * including the range ioctls). Returns 0, or -errno if unreadable.
 */
int fc_uffd_info(int fd, unsigned long long *features, unsigned long long *ioctls);

#endif
