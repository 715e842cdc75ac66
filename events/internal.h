/* Internals shared by the library's modules (not installed): the error setter, the JSON writer
 * and the event bus. Nothing here is part of the public API. */
#ifndef STAGECOACH_EVENTS_INTERNAL_H
#define STAGECOACH_EVENTS_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "stagecoach/error.h"
#include "stagecoach/events.h"

#if defined(__GNUC__)
#define SC__PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define SC__PRINTF(a, b)
#endif

/* Sets the thread's error message and returns code, so a failure reads `return sc__error(...)`. */
int sc__error(int code, const char *fmt, ...) SC__PRINTF(2, 3);
void sc__error_clear(void);

/* ---- JSON writer (jsonw.c) ---- */

/* A byte buffer that grows, or (fixed) writes what fits into a caller's array and keeps counting.
 */
typedef struct sc__buf {
  char *p;
  size_t len, cap;
  bool fixed; /* caller's array: never reallocated */
  bool oom;   /* a growth failed; the content is incomplete */
} sc__buf;

void sc__buf_init(sc__buf *b);
void sc__buf_init_fixed(sc__buf *b, char *p, size_t cap);
void sc__buf_free(sc__buf *b);
void sc__buf_reset(sc__buf *b); /* len = 0, keeps the memory */
bool sc__buf_reserve(sc__buf *b, size_t extra);
void sc__buf_put_slow(sc__buf *b, const void *p, size_t n);
static inline void sc__buf_put(sc__buf *b, const void *p, size_t n) {
  if (b->len + n <= b->cap) {
    memcpy(b->p + b->len, p, n);
    b->len += n;
  } else {
    sc__buf_put_slow(b, p, n);
  }
}
static inline void sc__buf_putc(sc__buf *b, char c) {
  if (b->len < b->cap)
    b->p[b->len++] = c;
  else
    sc__buf_put(b, &c, 1);
}
#define sc__buf_lit(b, s) sc__buf_put((b), (s), sizeof(s) - 1)
/* Terminates with a NUL that is not counted in len; false when out of memory. */
bool sc__buf_cstr(sc__buf *b);

void sc__json_string(sc__buf *b, const char *s); /* a quoted, escaped JSON string */
void sc__json_uint(sc__buf *b, uint64_t v);
void sc__json_int(sc__buf *b, int64_t v);
void sc__json_number(sc__buf *b, double v); /* integers exactly, others round-trip */
/* Adds item under a constant key (not copied, so the add cannot fail for want of memory); a NULL
 * item is skipped, and an item that cannot be added is freed, so no caller leaks on a failure. */
static inline bool sc__json_put(cJSON *obj, const char *const_key, cJSON *item) {
  if (item == NULL) return false;
  if (obj == NULL || !cJSON_AddItemToObjectCS(obj, const_key, item)) {
    cJSON_Delete(item);
    return false;
  }
  return true;
}

/* The deepest nesting a value may have where it enters the engine (a stage's output, a task's
 * config and context): an event puts it a few levels down (the event, data, context), and the
 * reader of an event line (cJSON) stops at CJSON_NESTING_LIMIT, 1000 levels. A deeper value would
 * be stored in a line that cannot be read back; it is refused instead. */
#define SC__JSON_MAX_DEPTH 512
/* Whether v nests deeper than limit (a scalar is depth 0); looks no deeper than limit + 1. */
bool sc__json_too_deep(const cJSON *v, unsigned limit);

/* Writes a cJSON value compactly; canonical sorts object keys by their bytes. */
void sc__json_value(sc__buf *b, const cJSON *v, bool canonical);

/* ---- SHA-256 (sha.c) ---- */

typedef struct sc__sha sc__sha; /* a reusable digest context */
sc__sha *sc__sha_new(void);
void sc__sha_free(sc__sha *s);
/* "sha256:" + 64 lowercase hex digits + NUL into out[72]. s may be NULL (a one-off context). */
int sc__sha_hex(sc__sha *s, const void *data, size_t len, char out[72]);
int sc__sha_raw(sc__sha *s, const void *data, size_t len, unsigned char out[32]);
void sc__hex(const unsigned char *in, size_t n, char *out); /* 2n hex digits, no NUL */
/* Streaming: begin, feed, finish as "sha256:<hex>". */
int sc__sha_begin(sc__sha *s);
int sc__sha_update(sc__sha *s, const void *data, size_t len);
int sc__sha_end_hex(sc__sha *s, char out[72]);

/* ---- time (codec.c) ---- */
int64_t sc__now_ns(void); /* CLOCK_REALTIME, truncated to microseconds as the JSON carries it */
/* RFC 3339 UTC with microseconds, "2026-11-22T10:30:00.123456Z"; out holds 28 bytes + NUL. */
void sc__format_time(int64_t time_ns, char out[32]);

/* ---- the event bus (bus.c) ---- */

typedef struct sc__bus sc__bus;

/* How a dispatched event settled: every deferred ack done, or a failure. */
typedef void (*sc__bus_settle_fn)(void *owner, sc_event_type type, uint64_t seq, int status,
                                  const char *message, void *udata);

int sc__bus_new(sc__bus_settle_fn settle, void *udata, sc__bus **out);
void sc__bus_free(sc__bus *b);
/* True when some subscriber wants events of this type. */
bool sc__bus_wants(const sc__bus *b, sc_event_type type);
int sc__bus_subscribe(sc__bus *b, const sc_subscriber *sub, sc_subscription **out);
/* Delivers ev to every subscriber that wants it. Returns SC_OK when it settled at once, SC_DEFER
 * when some subscriber deferred (settle(owner, ...) is called once the last ack is done, with the
 * first failure if any), or a negative code when a subscriber failed and none deferred (the
 * message is in sc_error_message()). */
int sc__bus_dispatch(sc__bus *b, const sc_event *ev, void *owner);
/* Detaches every ack still outstanding from its owner: their later sc_ack_done() calls are
 * accepted and ignored. */
void sc__bus_orphan_acks(sc__bus *b, void *owner);
size_t sc__bus_outstanding(const sc__bus *b);

#endif
