/* SPDX-License-Identifier: MIT */
/*
 * Helpers shared by the tools. Addresses: "unix:/path",
 * "/path" (Unix), "tcp:host:port" or "host:port" (TCP, IPv4 or [IPv6]).
 */
#ifndef PCOPY_TOOLS_CLI_H
#define PCOPY_TOOLS_CLI_H

#include <stdbool.h>
#include <sys/socket.h>

struct tool_addr {
	struct sockaddr_storage ss;
	socklen_t len;
	bool is_unix;
	char text[256];		/* as given, for messages */
};

/* Parse text into a; returns 0 or -EINVAL with a message in err. */
int tool_addr_parse(const char *text, struct tool_addr *a, char *err, size_t errlen);

/* True for Unix sockets and loopback TCP addresses. */
bool tool_addr_is_local(const struct tool_addr *a);

/* Listen (unlinking a stale Unix socket first); returns fd or -errno. */
int tool_listen(const struct tool_addr *a);

/* Connect, retrying for up to timeout_ms while the peer is not listening yet;
 * returns fd or -errno. */
int tool_connect(const struct tool_addr *a, int timeout_ms);

/* Parse "4096", "64K", "1M", "2G" (powers of 1024); returns 0 or -EINVAL. */
int tool_parse_size(const char *text, unsigned long long *out);

/* Print a one-line progress bar to stderr when it is a terminal ("\r"). */
void tool_progress(const char *what, unsigned long long done, unsigned long long total,
		   double secs);

/*
 * For a Unix socket: 0 if the peer's uid (SO_PEERCRED) is `allowed_uid` or
 * root, else -EACCES with the uid in err. TCP sockets pass.
 */
int tool_check_peer_uid(int fd, long allowed_uid, char *err, size_t errlen);

/* Read a pre-shared key (1..4096 bytes, trailing newline dropped) from a
 * file; returns its length or -errno with a message in err. */
int tool_read_key(const char *path, unsigned char *key, size_t cap, char *err,
		  size_t errlen);

#endif
