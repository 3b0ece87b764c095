/* SPDX-License-Identifier: MIT */
/*
 * libpostcopy: userfaultfd-based lazy restore of memory images.
 *
 * A DESTINATION registers memory with userfaultfd and starts using it before
 * the image has arrived; a SOURCE serves the image over a connected stream
 * socket (TCP or Unix), answering page requests ahead of a background scan.
 *
 * Conventions (liburing style):
 *  - every function returns 0 (or a count) on success and -errno on failure;
 *    errno is never left for the caller to read;
 *  - the library never prints, exits or installs signal handlers; messages go
 *    to an optional log callback;
 *  - handles are opaque; options structs start with their own size so they can
 *    grow without breaking callers (pass sizeof(struct ...));
 *  - destroy functions accept NULL.
 *
 * Protocol errors are reported as -EPROTO (malformed or invalid frame),
 * -EBADMSG (integrity check failed), -ECONNRESET / -EPIPE (peer went away),
 * -ETIMEDOUT; pcopy_*_error() returns the message that says exactly what
 * was wrong.
 */
#ifndef POSTCOPY_H
#define POSTCOPY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(PCOPY_BUILDING_LIBRARY)
#define PCOPY_API __attribute__((visibility("default")))
#else
#define PCOPY_API
#endif

#define PCOPY_VERSION_MAJOR 0
#define PCOPY_VERSION_MINOR 1
#define PCOPY_VERSION_PATCH 0
#define PCOPY_VERSION_STRING "0.1.0"

/* The library's version string, e.g. "0.1.0". Thread-safe. */
PCOPY_API const char *pcopy_version(void);

/*
 * A static, human-readable description of an error returned by this library
 * (negative or positive errno value). Never returns NULL. Thread-safe.
 */
PCOPY_API const char *pcopy_strerror(int err);

/* ------------------------------------------------------------------ */
/* Logging                                                             */
/* ------------------------------------------------------------------ */

enum pcopy_log_level {
	PCOPY_LOG_ERROR = 0,
	PCOPY_LOG_WARN  = 1,
	PCOPY_LOG_INFO  = 2,
	PCOPY_LOG_DEBUG = 3,
};

/*
 * Log callback. Called from the caller's thread (create/start) or from a
 * library-owned thread (fault thread, receiver, sender, request reader); it
 * must be thread-safe and must not call back into the same handle. `msg` is
 * NUL-terminated, without a trailing newline, valid only during the call.
 */
typedef void (*pcopy_log_fn)(void *opaque, enum pcopy_log_level level,
			     const char *msg);

/* ------------------------------------------------------------------ */
/* Regions                                                             */
/* ------------------------------------------------------------------ */

#define PCOPY_NAME_MAX 63	/* longest region name, bytes, excluding NUL */
#define PCOPY_REGIONS_MAX 64	/* most regions per restore */

/*
 * A destination region: page-aligned memory the caller owns (anonymous
 * private, memfd/shmem, or hugetlbfs). `page_size` is the host page size of
 * the mapping: 4096, or 2 MiB for hugetlbfs. `length` is a multiple of it.
 * Source and destination must agree on name, length and page_size of every
 * region, in the same order.
 */
struct pcopy_region {
	const char *name;
	void *host;
	size_t length;
	size_t page_size;
};

/* ------------------------------------------------------------------ */
/* Statistics                                                          */
/* ------------------------------------------------------------------ */

struct pcopy_stats {
	uint64_t host_pages_total;	/* host pages in all regions */
	uint64_t host_pages_received;	/* host pages placed (or found present) */
	uint64_t pages_zero;		/* 4 KiB target pages received as ZERO */
	uint64_t pages_raw;		/* ... as RAW */
	uint64_t pages_zlib;		/* ... as ZLIB */
	uint64_t bytes_wire;		/* bytes read (dest) / written (source) */
	uint64_t bytes_payload;		/* decoded page bytes (dest) / image bytes sent (source) */
	uint64_t faults;		/* userfaultfd page-fault messages read */
	uint64_t requests;		/* host pages requested (dest) / request entries served (source) */
	uint64_t request_msgs;		/* REQ messages sent (dest) / received (source) */
	uint64_t duplicates;		/* host pages received that were already present */
	uint64_t wakes;			/* UFFDIO_WAKE issued for pages already present */
	uint64_t copy_retries;		/* EAGAIN / partial UFFDIO_COPY retries */
	/* fault latency: fault message read -> host page placed, requested pages only */
	uint64_t lat_samples;
	uint64_t lat_p50_ns;
	uint64_t lat_p99_ns;
	uint64_t lat_p999_ns;
	uint64_t lat_max_ns;
	uint64_t elapsed_ns;		/* start() -> complete (or now if not complete) */
	uint64_t breaks;		/* connections lost and resumed */
	uint64_t resent_pages;		/* host pages sent again after a resume */
	uint64_t urgent_pages;		/* host pages sent/received on the urgent connection */
};

/* ------------------------------------------------------------------ */
/* Destination                                                         */
/* ------------------------------------------------------------------ */

struct pcopy_dest;

/* What happens to threads that fault on unreceived memory after a fatal error. */
enum pcopy_fail_mode {
	PCOPY_FAIL_BLOCK  = 0,	/* they stay blocked until destroy (then SIGSEGV, never zeros) */
	PCOPY_FAIL_SIGBUS = 1,	/* they get SIGBUS (needs UFFD_FEATURE_THREAD_ID) */
};

/* pcopy_dest_opts.flags */
#define PCOPY_DEST_UFFD_REGISTERED (1u << 0) /* opts.uffd already had UFFDIO_API
					       and every region registered
					       MISSING (Firecracker style) */
#define PCOPY_DEST_NO_ZLIB         (1u << 1) /* refuse compressed pages */
#define PCOPY_DEST_NO_RESUME       (1u << 2) /* a broken connection fails the
					       restore at once instead of pausing */
#define PCOPY_DEST_HANDLE_REMOVE   (1u << 3) /* the uffd reports UFFD_EVENT_REMOVE
					       (MADV_DONTNEED, balloons): removed
					       ranges read back as zeros and are
					       never fetched again */

/*
 * Connect callback for automatic reconnection after a break: return a newly
 * connected stream socket to the source (ownership passes to the library) or
 * -errno. Called on the library's reconnect thread, with exponential backoff
 * (10 ms .. 1 s) until resume_deadline_ms passes.
 */
typedef int (*pcopy_connect_fn)(void *opaque, int urgent);

/*
 * Event callback: called once, from a library-owned thread, when the restore
 * completes (err == 0) or fails (err < 0; pcopy_dest_error() has the
 * message). Completion: the receiver or the fault thread (by then every
 * page is in). Failure: the receiver thread, also for failures the fault
 * thread finds (it hands them over), so the callback may take a lock that
 * an application thread blocked on a missing page holds: the fault thread
 * stays free to release that thread (PCOPY_FAIL_SIGBUS). Must not destroy
 * the handle.
 */
typedef void (*pcopy_dest_event_fn)(void *opaque, int err);

struct pcopy_dest_opts {
	size_t size;			/* sizeof(struct pcopy_dest_opts) */
	unsigned flags;			/* PCOPY_DEST_* */
	int uffd;			/* -1: the library opens one; else the caller's
					   (the library takes ownership and closes it) */
	enum pcopy_fail_mode fail_mode;
	int handshake_timeout_ms;	/* 0: 10000 */
	pcopy_log_fn log;
	void *log_opaque;
	pcopy_dest_event_fn on_event;
	void *event_opaque;
	/* --- recovery (0 / NULL: defaults) --- */
	int resume_deadline_ms;		/* after a break, how long to wait for a new
					   connection (pcopy_dest_resume or the connect
					   callback) before failing; 0: 60000; < 0: forever */
	int keepalive_ms;		/* silence longer than this on a connection is a
					   break; PINGs are sent at a third of it; 0: 10000 */
	pcopy_connect_fn connect;	/* optional: reconnect by itself after a break */
	void *connect_opaque;
	/* --- security --- */
	const void *psk;		/* pre-shared key: both sides must prove it
					   (HMAC-SHA256 challenge-response) before any
					   page moves; NULL: no authentication */
	size_t psk_len;
};

/* Fill `o` with defaults (uffd = -1, everything else off). */
PCOPY_API void pcopy_dest_opts_init(struct pcopy_dest_opts *o);

/*
 * Create a destination for `n` regions and register them with userfaultfd
 * (MISSING mode), so that from return on a touch of a missing page blocks
 * until the page arrives. `opts` may be NULL for defaults. Returns 0 and sets
 * *d, or -errno: -EINVAL (bad region), -ENOSYS/-EPERM (no userfaultfd),
 * -EOPNOTSUPP (a feature this memory type needs is missing; the log says which).
 * Caller's thread.
 */
PCOPY_API int pcopy_dest_create(struct pcopy_dest **d,
				const struct pcopy_region *regions, unsigned n,
				const struct pcopy_dest_opts *opts);

/*
 * Handshake with the source over the connected stream socket `fd` (blocking,
 * up to handshake_timeout_ms), then start the fault thread and the receiver.
 * The library takes ownership of `fd`. Returns 0, or -errno (-EPROTO with a
 * message when the region tables differ). Caller's thread.
 */
PCOPY_API int pcopy_dest_start(struct pcopy_dest *d, int fd);

/*
 * Add the optional urgent connection (a second connected socket to the same
 * source, after pcopy_dest_start): page requests and the pages that answer
 * them travel on it, so they never queue behind background data. Handshake
 * is blocking. Takes ownership of `fd`. Returns 0 or -errno (-EOPNOTSUPP if
 * the source does not offer it). Caller's thread.
 */
PCOPY_API int pcopy_dest_add_urgent(struct pcopy_dest *d, int fd);

/*
 * Hand in a new connection after a break (the restore is paused: faulting
 * threads stay blocked, requests keep being recorded). Performs the resume
 * handshake, sends the received bitmap and re-sends every pending request;
 * the source resends everything not received. Takes ownership of `fd`.
 * Returns 0, -EALREADY if the session is not paused, or -errno. May be
 * called any number of times in one restore. Caller's thread.
 */
PCOPY_API int pcopy_dest_resume(struct pcopy_dest *d, int fd);

/* True (1) while the restore is paused waiting for a new connection. */
PCOPY_API int pcopy_dest_paused(struct pcopy_dest *d);

/*
 * Wait until the restore completes or fails. timeout_ms < 0 waits forever.
 * Returns 0 when complete, -ETIMEDOUT, or the error that ended the restore.
 * Any thread; several may wait at once.
 */
PCOPY_API int pcopy_dest_wait(struct pcopy_dest *d, int timeout_ms);

/* Copy the current statistics into *st. Any thread. */
PCOPY_API int pcopy_dest_stats(struct pcopy_dest *d, struct pcopy_stats *st);

/* Message of the error that ended the restore, or "" if none. Any thread;
 * valid until destroy. */
PCOPY_API const char *pcopy_dest_error(struct pcopy_dest *d);

/* The userfaultfd in use (owned by the library). */
PCOPY_API int pcopy_dest_uffd(const struct pcopy_dest *d);

/*
 * Stop every library thread, free everything, close the userfaultfd and the
 * connection. If the restore did not complete, unreceived pages are made
 * inaccessible (PROT_NONE) before the userfaultfd is closed, so a thread
 * touching them later gets SIGSEGV rather than a zero page. Accepts NULL.
 * Must not be called from a library callback.
 */
PCOPY_API void pcopy_dest_destroy(struct pcopy_dest *d);

/* ------------------------------------------------------------------ */
/* Source                                                              */
/* ------------------------------------------------------------------ */

struct pcopy_source;

/*
 * A source region, backed either by memory (`mem` != NULL) or by a snapshot
 * file (`mem` == NULL, `fd` >= 0, `file_offset`: where the region starts in
 * the file). File holes are found with SEEK_DATA/SEEK_HOLE and sent as ZERO
 * pages without reading them. The source does not take ownership of `fd`.
 */
struct pcopy_source_region {
	const char *name;
	const void *mem;
	int fd;
	off_t file_offset;
	size_t length;
	size_t page_size;
};

/* pcopy_source_opts.flags */
#define PCOPY_SOURCE_ZLIB          (1u << 0) /* offer zlib compression */
#define PCOPY_SOURCE_NO_BACKGROUND (1u << 1) /* serve requested pages only
						(for measurements: the restore
						completes only if every page is
						requested) */
#define PCOPY_SOURCE_NO_URGENT     (1u << 2) /* do not offer the urgent connection */
#define PCOPY_SOURCE_NO_RESUME     (1u << 3) /* a break ends the session at once */
#define PCOPY_SOURCE_NO_PACING     (1u << 4) /* keep the system's congestion
						control and socket buffers and let
						the background stream fill the
						path (by default, on TCP, the main
						connection uses BBR and keeps at
						most ~200 us of the link's rate
						queued, so that requested pages do
						not wait behind it; on a Unix
						socket, a 64 KiB send buffer) */
#define PCOPY_SOURCE_ADOPT         (1u << 5) /* a restarted source: if the first
						connection is a RESUME, adopt that
						session (its id, the destination's
						received bitmap, its pending
						requests) instead of refusing it.
						Only the region table is checked:
						the caller promises the image is
						the one the session started with */

struct pcopy_source_opts {
	size_t size;			/* sizeof(struct pcopy_source_opts) */
	unsigned flags;			/* PCOPY_SOURCE_* */
	int zlib_level;			/* 0: Z_BEST_SPEED (1) */
	int handshake_timeout_ms;	/* 0: 10000 */
	size_t batch_bytes;		/* background bytes between request checks; 0: 64 KiB */
	pcopy_log_fn log;
	void *log_opaque;
	int resume_deadline_ms;		/* after a break, how long to wait for the
					   destination to come back; 0: 60000; < 0: forever */
	int keepalive_ms;		/* as in pcopy_dest_opts; 0: 10000 */
	const void *psk;		/* pre-shared key, or NULL (see pcopy_dest_opts) */
	size_t psk_len;
	uint64_t max_rate_bps;		/* cap on bytes per second sent; 0: none */
};

PCOPY_API void pcopy_source_opts_init(struct pcopy_source_opts *o);

/* Create a source over `n` regions. Caller's thread. */
PCOPY_API int pcopy_source_create(struct pcopy_source **s,
				  const struct pcopy_source_region *regions,
				  unsigned n, const struct pcopy_source_opts *opts);

/*
 * Handshake over the connected stream socket `fd` (blocking), then start the
 * sender and the request reader. Takes ownership of `fd`. Caller's thread.
 */
PCOPY_API int pcopy_source_start(struct pcopy_source *s, int fd);

/*
 * Hand the source another connection from the same destination: its urgent
 * connection, or, after a break, the resumed one (the destination's HELLO says
 * which; its session id must match). Blocking handshake; takes ownership of
 * `fd`. Returns 0 or -errno. Caller's thread, any time after start.
 */
PCOPY_API int pcopy_source_add_conn(struct pcopy_source *s, int fd);

/* True (1) while the source is paused waiting for the destination to
 * reconnect. */
PCOPY_API int pcopy_source_paused(struct pcopy_source *s);

/*
 * Wait until the destination reports the restore complete (0), an error ends
 * the session (-errno), or timeout_ms passes (-ETIMEDOUT; < 0 waits forever).
 */
PCOPY_API int pcopy_source_wait(struct pcopy_source *s, int timeout_ms);

PCOPY_API int pcopy_source_stats(struct pcopy_source *s, struct pcopy_stats *st);
PCOPY_API const char *pcopy_source_error(struct pcopy_source *s);

/* Stop the threads, close the connection, free everything. Accepts NULL. */
PCOPY_API void pcopy_source_destroy(struct pcopy_source *s);

#ifdef __cplusplus
}
#endif
#endif /* POSTCOPY_H */
