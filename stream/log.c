/* SPDX-License-Identifier: MIT */
/*
 * Logging through the user's callback, the per-handle "first fatal error"
 * slot, and the monotonic clock every deadline in the library is based on.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "common.h"

/* Messages longer than this are truncated; the callback never sees more. */
#define LOG_LINE_MAX 1024

/* Drop trailing newlines: the callback contract says "no trailing newline". */
static void strip_newline(char *s)
{
	size_t n = strlen(s);

	while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r'))
		s[--n] = '\0';
}

static void log_emit(const struct pcopy_logger *lg, enum pcopy_log_level lvl,
		     char *line)
{
	strip_newline(line);
	lg->fn(lg->opaque, lvl, line);
}

/*
 * printf-style message to the user's callback; nothing happens without one.
 * Any thread: the line is formatted on this thread's stack.
 */
void pcopy_log(const struct pcopy_logger *lg, enum pcopy_log_level lvl,
	       const char *fmt, ...)
{
	char line[LOG_LINE_MAX];
	va_list ap;

	if (!lg || !lg->fn)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	log_emit(lg, lvl, line);
}

/* Prepare an empty slot. Caller's thread, before any other thread uses it. */
void pcopy_errslot_init(struct pcopy_errslot *e)
{
	pthread_mutex_init(&e->lock, NULL);
	e->err = 0;
	e->msg[0] = '\0';
}

/* Release the slot's lock. Caller's thread, after every user is gone. */
void pcopy_errslot_destroy(struct pcopy_errslot *e)
{
	pthread_mutex_destroy(&e->lock);
}

/*
 * Record err with a message unless the slot already holds an error. The
 * first error is logged at ERROR level; later ones, usually consequences of
 * the first (a reset after a stop, ...), at WARN. Returns the error now held
 * (the first one). Any thread. err >= 0 is a caller bug and is stored as -EIO
 * so the slot never reads as "no error" after a set.
 */
int pcopy_errslot_set(struct pcopy_errslot *e, const struct pcopy_logger *lg,
		      int err, const char *fmt, ...)
{
	char line[PCOPY_ERRMSG_MAX];
	va_list ap;
	bool first = false;
	int now;

	if (err >= 0)
		err = -EIO;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	strip_newline(line);

	pthread_mutex_lock(&e->lock);
	if (e->err == 0) {
		/* msg is written before err becomes visible under the lock;
		 * once set it never changes, so readers may use it freely. */
		memcpy(e->msg, line, sizeof(e->msg));
		e->err = err;
		first = true;
	}
	now = e->err;
	pthread_mutex_unlock(&e->lock);

	/* Log outside the lock: the callback may be slow or take its own. */
	if (lg && lg->fn)
		log_emit(lg, first ? PCOPY_LOG_ERROR : PCOPY_LOG_WARN, line);
	return now;
}

/* The recorded error (0 if none). Any thread. */
int pcopy_errslot_get(struct pcopy_errslot *e)
{
	int err;

	pthread_mutex_lock(&e->lock);
	err = e->err;
	pthread_mutex_unlock(&e->lock);
	return err;
}

/* CLOCK_MONOTONIC in nanoseconds. Any thread. */
uint64_t pcopy_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
