/* The internal utility layer (not installed), shared by the engine, the adapters and the command:
 * the error setter, formatting, the growable buffer, the JSON writer, UTF-8, reading a file, the
 * names of effects and actions, SHA-256, time, the hash map (map.h) and the list (queue.h); and the
 * event bus. events/ depends on nothing else of ours, so every module may use it. Nothing here is
 * part of the public API, and nothing here is exported from the shared library. */
#ifndef STAGECOACH_EVENTS_INTERNAL_H
#define STAGECOACH_EVENTS_INTERNAL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "stagecoach/error.h"
#include "stagecoach/events.h"

#include "map.h"
#include "queue.h"

#if defined(__GNUC__)
#define SC__PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define SC__PRINTF(a, b)
#endif

/* ---- errors and formatting (error.c, util.c) ---- */

/* Sets the thread's error message and returns code, so a failure reads `return sc__error(...)`:
 * the public sc_error_set() under the name the library's files use. */
#define sc__error(...) sc_error_set(__VA_ARGS__)
void sc__error_clear(void);

/* vsnprintf into buf[0 .. cap) that always terminates (when cap > 0) and returns the length
 * written, cut to what fits: never negative, never more than cap - 1. */
size_t sc__vformat(char *buf, size_t cap, const char *fmt, va_list ap);
size_t sc__format(char *buf, size_t cap, const char *fmt, ...) SC__PRINTF(3, 4);
/* Appends at *off (advanced by what was written) in buf[0 .. cap), cut when it is full. */
void sc__format_append(char *buf, size_t cap, size_t *off, const char *fmt, ...) SC__PRINTF(4, 5);
/* The body of a printf-style wrapper: formats the arguments that follow fmt, the last named
 * parameter of the calling function, into the array buf (cut to fit, always terminated). */
#define SC__FORMAT_ARGS(buf, fmt)                                                                  \
  do {                                                                                             \
    va_list sc__args_;                                                                             \
    va_start(sc__args_, fmt);                                                                      \
    sc__vformat((buf), sizeof(buf), (fmt), sc__args_);                                             \
    va_end(sc__args_);                                                                             \
  } while (0)

/* ---- the growable buffer (jsonw.c) ---- */

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
/* The string forms: append and keep the content NUL-terminated (the NUL not counted in len), so
 * that b->p is a C string after every successful call; false when out of memory (the content is
 * then incomplete until sc__buf_reset). */
static inline bool sc__buf_add(sc__buf *b, const void *p, size_t n) {
  if (n > 0) sc__buf_put(b, p, n); /* an empty buffer has no array to copy nothing into */
  return sc__buf_cstr(b);
}
static inline bool sc__buf_adds(sc__buf *b, const char *s) {
  return sc__buf_add(b, s, strlen(s));
}
/* Hands the allocated bytes over (the caller frees them with free()) and leaves b empty; NULL
 * when nothing was ever allocated. */
static inline char *sc__buf_take(sc__buf *b) {
  char *p = b->p;
  sc__buf_init(b);
  return p;
}

/* Makes room for need elements of elem bytes in the array *items points at (a T ** passed as
 * void *), whose capacity is *cap: doubles it, from first when it is 0. False when out of memory,
 * with the array and *cap unchanged. The one growth rule of the library's arrays. */
bool sc__grow(void *items, size_t *cap, size_t need, size_t elem, size_t first);

/* ---- UTF-8 ---- */

/* The length of the well-formed UTF-8 sequence at s[0 .. n) that starts with a byte >= 0x80, or
 * 0 when it is not one (RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF).
 * Inline: the JSON writer calls it for every non-ASCII character. */
static inline size_t sc__utf8_length(const unsigned char *s, size_t n) {
  size_t len = s[0] >= 0xC2 && s[0] <= 0xDF   ? 2
               : s[0] >= 0xE0 && s[0] <= 0xEF ? 3
               : s[0] >= 0xF0 && s[0] <= 0xF4 ? 4
                                              : 0;
  if (len == 0 || len > n) return 0;
  for (size_t i = 1; i < len; i++)
    if ((s[i] & 0xC0) != 0x80) return 0;
  if ((s[0] == 0xE0 && s[1] < 0xA0) || (s[0] == 0xED && s[1] > 0x9F) ||
      (s[0] == 0xF0 && s[1] < 0x90) || (s[0] == 0xF4 && s[1] > 0x8F))
    return 0;
  return len;
}

/* ---- files (util.c) ---- */

#define SC__READ_NOT_REGULAR                                                                       \
  (-1) /* sc__read_file: regular_only, and the path is something else                              \
        */

/* Reads a whole file into *text (NUL-terminated, caller frees; NULL for an empty file) and *len.
 * Returns 0, SC__READ_NOT_REGULAR, or an errno value (the file's open or read error; EFBIG past
 * max_bytes, at once for a regular file whose size says so; ENOMEM). regular_only: the file is
 * opened without blocking and read only when it is a regular file, so that a FIFO or a terminal put
 * in its place never stalls the caller. */
int sc__read_file(const char *path, size_t max_bytes, bool regular_only, char **text, size_t *len);

/* ---- names (util.c) ---- */

/* The words of sc_effect and sc_approval_action (<stagecoach/engine.h>), indexed by the enum
 * values, as pipelines and events spell them; tests/unit/test_util.c checks the order. */
extern const char *const sc__effect_names[3]; /* idempotent, compensable, irreversible */
extern const char *const sc__action_names[4]; /* approve, reject, fail, cancel */
const char *sc__effect_name(int effect);      /* out of range: "idempotent" */
const char *sc__action_name(int action);      /* out of range: "cancel" */
/* The index of word in names[0 .. n), or -1. */
int sc__name_index(const char *const *names, size_t n, const char *word);

/* ---- JSON writer (jsonw.c) ---- */

void sc__json_string(sc__buf *b, const char *s);             /* a quoted, escaped JSON string */
void sc__json_string_n(sc__buf *b, const char *s, size_t n); /* the same of s[0 .. n) */
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

/* Why v could not be written into an event and read back as the same value, or NULL when it
 * can: a cJSON_Raw item (its text would be written unchecked), a string or a member name that is
 * not valid UTF-8, a number that is not finite, an item of no JSON type, nesting deeper than
 * SC__JSON_MAX_DEPTH. path[cap] gets the JSON path of the first such item inside v ("" for v
 * itself; "a.b[2]", a["odd name"]), cut to fit. The one check of a value where it enters the
 * engine; a NULL v is fit. */
const char *sc__json_unfit(const cJSON *v, char *path, size_t cap);

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
int sc__sha_end_raw(sc__sha *s, unsigned char out[32]);

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

#endif
