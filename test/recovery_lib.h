/* SPDX-License-Identifier: MIT */
/*
 * Helpers for the recovery scenarios (test/check_recovery.c): a replayable
 * seed, a source child that keeps accepting connections (start, then
 * add_conn for every resume), toucher threads that survive SIGBUS, and a
 * destination harness whose connections all run through the test proxy.
 */
#ifndef PCOPY_TEST_RECOVERY_LIB_H
#define PCOPY_TEST_RECOVERY_LIB_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

#include "postcopy.h"
#include "proxy.h"
#include "testlib.h"

/* ---- seed ---- */

/* The run's seed: PCOPY_TEST_SEED if set, else random. Printed once per
 * call with `what`, so a failing case can be replayed. */
uint64_t rl_seed(const char *what);
/* Next value of a splitmix64 stream. */
uint64_t rl_rand(uint64_t *state);
/* Image bytes per test: PCOPY_TEST_MB (default def_mb) MiB, at least 2 MiB. */
size_t rl_test_bytes(unsigned def_mb);

/* ---- source child ---- */

struct rl_src_opts {
	int resume_deadline_ms;	/* 0: library default */
	int keepalive_ms;	/* 0: library default */
	bool zlib;
	bool no_resume;
	bool adopt;		/* PCOPY_SOURCE_ADOPT: a restarted source */
	const char *psk;	/* pre-shared key (NUL-terminated), or NULL */
	unsigned tag;		/* printed in its log lines */
};

/* What the child reports through its result pipe before it exits. */
struct rl_src_result {
	int rc;			/* pcopy_source_wait() (or start) result */
	int conns;		/* connections accepted */
	int add_errors;		/* pcopy_source_add_conn failures */
	int fds_before;		/* open fds before create ... */
	int fds_after;		/* ... and after destroy */
	int wait_ms;		/* last break (EOF seen by child) -> end */
	struct pcopy_stats st;
	char msg[256];		/* pcopy_source_error() */
	char add_msg[256];	/* first add_conn failure's message */
	char log[2048];		/* its WARN / ERROR log lines, '\n' separated */
};

struct rl_src {
	pid_t pid;
	int res_fd;		/* read end of the result pipe */
	struct sockaddr_un addr;	/* abstract Unix socket it listens on */
	socklen_t alen;
};

/*
 * Fork a child serving the pattern image of `img` (memory backend) on an
 * abstract Unix socket: the first connection goes to pcopy_source_start,
 * every later one to pcopy_source_add_conn, until the session ends. Call
 * before any thread exists in this process. Returns 0 or -errno.
 */
int rl_src_spawn(const struct tl_source_cfg *img, const struct rl_src_opts *o,
		 struct rl_src *out);
/* Read the child's result (waiting up to timeout_ms) and reap it. Returns 0,
 * -ETIMEDOUT (the child is then killed) or -EPIPE (it died without one). */
int rl_src_result(struct rl_src *s, int timeout_ms, struct rl_src_result *r);
/* SIGKILL and reap. */
void rl_src_kill(struct rl_src *s);
/* A new connected socket to the child's listener, or -errno. */
int rl_src_connect(const struct rl_src *s);

/* ---- touchers ---- */

struct rl_toucher {
	pthread_t tid;
	bool started;
	unsigned index, nthreads;
	unsigned nregions;
	const struct pcopy_region *regions;
	bool random_order;
	_Atomic bool finished;
	unsigned long touched;
	unsigned long bad;	/* pages with a wrong byte */
	int sig;		/* SIGBUS / SIGSEGV that ended it, or 0 */
	char first_bad[160];
};

/* Install the SIGBUS / SIGSEGV handlers the touchers rely on (SIGSEGV only
 * for addresses inside [lo, hi)); once per test process. */
void rl_signals_install(uintptr_t lo, uintptr_t hi);
/* Start n touchers over the regions; each verifies every page it touches. */
void rl_touchers_start(struct rl_toucher *t, unsigned n, unsigned nregions,
		       const struct pcopy_region *regions, bool random_order);
/* Join touchers that finish within timeout_ms; returns how many are still
 * running (blocked on memory that never arrived). */
unsigned rl_touchers_join(struct rl_toucher *t, unsigned n, int timeout_ms);

/* ---- log capture ---- */

struct rl_log {
	pthread_mutex_t lock;
	char *buf;		/* every WARN/ERROR message, '\n' separated */
	size_t len, cap;
	const char *prefix;	/* printed to stderr with each line */
	bool echo;
};

void rl_log_init(struct rl_log *l, const char *prefix);
void rl_log_fini(struct rl_log *l);
/* pcopy_log_fn: records and echoes messages of level <= INFO. */
void rl_log_fn(void *opaque, enum pcopy_log_level lvl, const char *msg);
/* True if some recorded message contains s (case-insensitive). */
bool rl_log_has(struct rl_log *l, const char *s);

/* ---- destination harness ---- */

#define RL_MAX_SRC 2

struct rl_dest {
	struct tl_source_cfg img;
	enum tl_mem mem;
	struct tl_mapping maps[4];
	struct pcopy_region regions[4];
	struct pcopy_dest *d;
	struct proxy *px;
	struct rl_src src[RL_MAX_SRC];
	unsigned nsrc;
	_Atomic unsigned cur;		/* source the next connection goes to */
	_Atomic unsigned connects;	/* successful rl_connect calls */
	_Atomic unsigned connect_fails;
	struct rl_log log;
	int huge_reserved;
};

/* Map the destination regions of `img` as `mem`. Returns 0, or 1 if the
 * memory type is unavailable here (skip; reason printed), or -errno. */
int rl_dest_map(struct rl_dest *r, const struct tl_source_cfg *img,
		enum tl_mem mem, const char *name);
/* Unmap everything, destroy dest and proxy, release the hugetlb pool. */
void rl_dest_fini(struct rl_dest *r);

/*
 * pcopy_connect_fn: a socketpair whose far end and a new connection to the
 * current source are handed to the proxy (so rules apply to it); returns
 * the destination's end. opaque is a struct rl_dest.
 */
int rl_connect(void *opaque, int urgent);

/* Verify every page of every region; returns the number of wrong pages and
 * describes the first in `why`. */
unsigned long rl_verify_all(const struct rl_dest *r, char *why, size_t whylen);
/* Verify the pages that are resident (mincore) without touching the others:
 * for a failed restore. Returns wrong pages; *present gets resident ones. */
unsigned long rl_verify_present(const struct rl_dest *r, uint64_t *present,
				char *why, size_t whylen);

/* Bytes of a HELLO message (header + payload) for the image's region table:
 * where the first frame after the handshake starts on either side. */
size_t rl_hello_bytes(const struct tl_source_cfg *img);

#endif
