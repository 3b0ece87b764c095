/* SPDX-License-Identifier: MIT */
/*
 * A fault-injection proxy for tests: sits between two stream sockets (the
 * "a" side and the "b" side), forwards both directions from one poll()
 * thread, and on request cuts, stalls, throttles, splits, corrupts,
 * duplicates or drops protocol frames, or half-closes one direction.
 *
 * Connections are numbered 1, 2, ... in the order they reach the proxy
 * (accepted on a listener, or handed in with proxy_attach / proxy_pair), so a
 * rule can target "the k-th connection", e.g. a resume after a cut.
 *
 * Byte positions ("at") count the bytes the sender wrote into that direction
 * of that connection, before any rule changed them. Random choices come from
 * one seed (printed at creation; PCOPY_PROXY_SEED overrides it) so a failing
 * run can be replayed exactly.
 */
#ifndef PCOPY_TEST_PROXY_H
#define PCOPY_TEST_PROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

enum proxy_dir {
	PROXY_A2B = 0,	/* bytes written by the a side, read by the b side */
	PROXY_B2A = 1,
};

enum proxy_action {
	PROXY_CUT = 1,		/* deliver bytes [0, at), then close both sockets
				   of the connection (both peers see EOF / reset) */
	PROXY_CUT_RANDOM,	/* PROXY_CUT at a position drawn from the seed in
				   [at, arg) (per connection) */
	PROXY_STALL,		/* deliver [0, at), then hold the rest arg ms */
	PROXY_THROTTLE,		/* deliver at most arg bytes per second */
	PROXY_SPLIT,		/* write one byte per write() from position at */
	PROXY_FLIP,		/* xor the byte at position at with arg (1..255) */
	PROXY_REPLACE,		/* overwrite len bytes from position at with data */
	PROXY_DUP_FRAME,	/* send frame number arg twice */
	PROXY_DROP_FRAME,	/* do not send frame number arg */
	PROXY_SHUTDOWN,		/* deliver [0, at), then shutdown(SHUT_WR) towards
				   the receiver; later bytes are read and discarded,
				   the other direction keeps working */
	PROXY_CUT_FRAME,	/* PROXY_CUT at `at` bytes after the start of
				   frame number arg (0: right before it; 10:
				   inside its header; 32: after the header) */
};

#define PROXY_DATA_MAX 64	/* bytes a REPLACE rule can carry */
#define PROXY_RULES_MAX 32
#define PROXY_CONNS_MAX 256	/* connections over the proxy's lifetime */

struct proxy_rule {
	enum proxy_action action;
	enum proxy_dir dir;
	unsigned conn;		/* 0: every connection; k: only the k-th */
	uint64_t at;		/* byte position (see above) */
	uint64_t arg;		/* ms, bytes/s, xor mask, frame number, or the
				   end of a random range */
	unsigned type;		/* DUP/DROP/CUT_FRAME: 0 counts every frame;
				   else only frames of this PCOPY_MSG_* type */
	uint8_t data[PROXY_DATA_MAX];	/* REPLACE */
	unsigned len;
};

/* What happened in one direction of one connection. */
struct proxy_dir_stats {
	uint64_t bytes_in;	/* read from the sender */
	uint64_t bytes_out;	/* written to the receiver */
	uint64_t writes;	/* send() calls that wrote something */
	uint64_t frames;	/* whole frames seen in the input */
	uint64_t frames_dropped;
	uint64_t frames_duplicated;
	uint64_t bytes_corrupted;	/* flipped or replaced */
	bool cut;		/* this direction's CUT fired ... */
	uint64_t cut_at;	/* ... at this input position */
	bool shut;		/* SHUTDOWN fired */
	bool stalled;		/* a STALL fired */
	bool desync;		/* the input stopped parsing as frames */
};

struct proxy_conn_stats {
	bool open;		/* still forwarding */
	bool failed;		/* ended by a socket error (not by a rule/EOF) */
	int error;		/* -errno of that failure */
	struct proxy_dir_stats dir[2];
};

struct proxy;

/*
 * Create a stopped proxy. seed 0 picks one at random; the environment
 * variable PCOPY_PROXY_SEED, if set, wins over both. The seed and every
 * random cut position are printed to log (stderr if NULL; pass a FILE opened
 * on /dev/null to silence). Returns 0 or -errno.
 */
int proxy_create(struct proxy **pp, uint64_t seed, FILE *log);

/* The seed in use. */
uint64_t proxy_seed(const struct proxy *p);

/* Check a rule's fields (direction, action, ranges). Returns 0 or -EINVAL. */
int proxy_rule_check(const struct proxy_rule *r);

/* Add a rule; it applies to connections created after the call. Returns 0,
 * -EINVAL (bad rule) or -ENOSPC. */
int proxy_add_rule(struct proxy *p, const struct proxy_rule *r);

/*
 * Parse a rule from text, as the standalone program takes it:
 *   DIR:ACTION[@AT][=ARG][,conn=K][,type=T]
 * DIR is a2b or b2a; ACTION one of cut, cut-random (=END: cut in [AT, END)),
 * stall (=MS), throttle (=BYTES_PER_S), split, flip (=MASK, default 0x01),
 * replace (=HEXBYTES), dup-frame (=N), drop-frame (=N), cut-frame (=N;
 * @AT = bytes into that frame), shutdown.
 * Numbers are decimal or 0x-hex, with optional k/m/g suffix (KiB...).
 * Examples: "b2a:cut@65536", "a2b:stall@0=500,conn=2", "b2a:drop-frame=3,type=2",
 * "b2a:cut-frame@100=5,type=2" (100 bytes into the sixth PAGE).
 * Returns 0 or -EINVAL with a message in err.
 */
int proxy_parse_rule(const char *spec, struct proxy_rule *r, char *err,
		     size_t errlen);

/* Start the forwarding thread. Returns 0 or -errno. */
int proxy_start(struct proxy *p);

/*
 * Hand the proxy a connection: fd_a and fd_b (connected stream sockets; the
 * proxy owns them from now on, even on failure). Returns the connection
 * number (>= 1) or -errno.
 */
int proxy_attach(struct proxy *p, int fd_a, int fd_b);

/*
 * Make a connection out of two socketpairs and attach the inner ends:
 * *a_end and *b_end receive the outer ends (the caller closes them).
 * Returns the connection number or -errno.
 */
int proxy_pair(struct proxy *p, int *a_end, int *b_end);

/*
 * Accept connections on listen_fd (the proxy owns it); for each, connect a
 * new socket to `up` and forward between them. Returns 0 or -errno.
 */
int proxy_listen(struct proxy *p, int listen_fd, const struct sockaddr *up,
		 socklen_t uplen);

/*
 * Wait until connection k has ended (both directions done, or cut, or
 * failed). Returns 0, -ETIMEDOUT, or -ENOENT if there is no such connection
 * yet when the timeout passes. timeout_ms < 0 waits forever.
 */
int proxy_wait_closed(struct proxy *p, unsigned k, int timeout_ms);

/* Number of connections seen so far. */
unsigned proxy_conns(struct proxy *p);

/* Copy the statistics of connection k. Returns 0 or -ENOENT. */
int proxy_stats(struct proxy *p, unsigned k, struct proxy_conn_stats *st);

/* Stop the thread, close every socket, free. Accepts NULL. */
void proxy_destroy(struct proxy *p);

#endif
