/* A small, fast JSON writer: the event encoder, the canonical form behind fingerprints and
 * digests, and the adapters' line writers share it. Writes into a growable or a fixed buffer. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

void sc__buf_init(sc__buf *b) {
  memset(b, 0, sizeof(*b));
}

void sc__buf_init_fixed(sc__buf *b, char *p, size_t cap) {
  b->p = p;
  b->len = 0;
  b->cap = cap;
  b->fixed = true;
  b->oom = false;
}

void sc__buf_free(sc__buf *b) {
  if (!b->fixed) free(b->p);
  sc__buf_init(b);
}

void sc__buf_reset(sc__buf *b) {
  b->len = 0;
  b->oom = false;
}

bool sc__buf_reserve(sc__buf *b, size_t extra) {
  if (b->len + extra <= b->cap) return true;
  if (b->fixed || b->oom) return false;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < b->len + extra)
    cap *= 2;
  char *p = realloc(b->p, cap);
  if (p == NULL) {
    b->oom = true;
    return false;
  }
  b->p = p;
  b->cap = cap;
  return true;
}

void sc__buf_put_slow(sc__buf *b, const void *p, size_t n) {
  if (sc__buf_reserve(b, n)) {
    memcpy(b->p + b->len, p, n);
  } else if (b->fixed && b->len < b->cap) {
    memcpy(b->p + b->len, p, b->cap - b->len); /* a truncated prefix; the length keeps counting */
  } else if (!b->fixed) {
    return;
  }
  b->len += n;
}

bool sc__buf_cstr(sc__buf *b) {
  if (b->oom) return false;
  if (!sc__buf_reserve(b, 1)) return false;
  b->p[b->len] = '\0';
  return true;
}

static const char hexdigits[] = "0123456789abcdef";

/* The flags of the bytes of a word (loaded from memory as it lies) that need a look: below 0x20,
 * '"', '\\', or not ASCII (to be checked as UTF-8); the high bit of each such byte is set. A byte
 * with its high bit set is flagged anyway, so the subtractions need no mask of their own. Their
 * borrow can flag a byte above a true hit, never one below it: the lowest flag is exact, and a
 * word with no flag is clean. */
static inline uint64_t word_flags(uint64_t v) {
  const uint64_t ones = 0x0101010101010101ull, high = 0x8080808080808080ull;
  uint64_t q = v ^ (ones * '"'), bs = v ^ (ones * '\\');
  return ((v - ones * 0x20) | (q - ones) | (bs - ones) | v) & high;
}

static inline uint32_t word4_flags(uint32_t v) { /* the same over four bytes */
  const uint32_t ones = 0x01010101u, high = 0x80808080u;
  uint32_t q = v ^ (ones * '"'), bs = v ^ (ones * '\\');
  return ((v - ones * 0x20) | (q - ones) | (bs - ones) | v) & high;
}

/* Whether a byte is written as it is: printable ASCII but '"' and '\\'. */
static inline bool plain_byte(unsigned char c) {
  return c >= 0x20 && c < 0x80 && c != '"' && c != '\\';
}

#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define FIRST_FLAG(flags) ((size_t)__builtin_ctzll(flags) / 8) /* the lowest address flagged */
#endif

#if defined(FIRST_FLAG) && defined(__SSE2__)
#include <emmintrin.h>
/* One bit for each byte of s[0 .. 16) that needs a look; a signed compare with 0x20 takes both
 * the control bytes and those that are not ASCII. */
static inline unsigned block_flags(const char *s) {
  __m128i v = _mm_loadu_si128((const __m128i *)(const void *)s);
  __m128i hit =
      _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('"')), _mm_cmpeq_epi8(v, _mm_set1_epi8('\\')));
  hit = _mm_or_si128(hit, _mm_cmplt_epi8(v, _mm_set1_epi8(0x20)));
  return (unsigned)_mm_movemask_epi8(hit);
}
#endif

/* The length of the longest prefix of s[0 .. n) that is written as it is. Blocks of 16 bytes
 * (SSE2) or words of 8 while they last, then the last block or word again (it overlaps bytes
 * known to be clean), so that no string of four bytes or more is walked byte by byte unless it
 * has a byte that needs a look. */
static inline size_t plain_prefix(const char *s, size_t n) {
  size_t i = 0;
#ifdef FIRST_FLAG
#ifdef __SSE2__
  if (n >= 16) {
    unsigned m;
    for (; i + 16 <= n; i += 16)
      if ((m = block_flags(s + i)) != 0) return i + (size_t)__builtin_ctz(m);
    if (i == n) return n;
    m = block_flags(s + n - 16);
    return m ? n - 16 + (size_t)__builtin_ctz(m) : n;
  }
#endif
  uint64_t v, flags;
  if (n >= 8) {
    for (; i + 8 <= n; i += 8) {
      memcpy(&v, s + i, 8);
      if ((flags = word_flags(v)) != 0) return i + FIRST_FLAG(flags);
    }
    if (i == n) return n;
    memcpy(&v, s + n - 8, 8);
    return (flags = word_flags(v)) != 0 ? n - 8 + FIRST_FLAG(flags) : n;
  }
  if (n >= 4) {
    uint32_t w, f;
    memcpy(&w, s, 4);
    if ((f = word4_flags(w)) != 0) return FIRST_FLAG(f);
    memcpy(&w, s + n - 4, 4);
    return (f = word4_flags(w)) != 0 ? n - 4 + FIRST_FLAG(f) : n;
  }
#else
  /* Another byte order, or another compiler: clean words are skipped, the rest is looked at
   * byte by byte. */
  for (; i + 8 <= n; i += 8) {
    uint64_t v;
    memcpy(&v, s + i, 8);
    if (word_flags(v) != 0) break;
  }
#endif
  while (i < n && plain_byte((unsigned char)s[i]))
    i++;
  return i;
}

static void escape_byte(sc__buf *b, unsigned char c) {
  switch (c) {
    case '"': sc__buf_lit(b, "\\\""); break;
    case '\\': sc__buf_lit(b, "\\\\"); break;
    case '\n': sc__buf_lit(b, "\\n"); break;
    case '\r': sc__buf_lit(b, "\\r"); break;
    case '\t': sc__buf_lit(b, "\\t"); break;
    case '\b': sc__buf_lit(b, "\\b"); break;
    case '\f': sc__buf_lit(b, "\\f"); break;
    default: {
      char esc[6] = {'\\', 'u', '0', '0', hexdigits[c >> 4], hexdigits[c & 15]};
      sc__buf_put(b, esc, 6);
    }
  }
}

/* s[i .. n) from a byte that needs a look: well-formed UTF-8 is copied as it is, in runs with
 * the clean bytes around it; the rest is escaped. */
static void put_rest(sc__buf *b, const char *s, size_t i, size_t n) {
  size_t run = i;
  while (i < n) {
    unsigned char c = (unsigned char)s[i];
    size_t seq = c >= 0x80 ? sc__utf8_length((const unsigned char *)s + i, n - i) : 0;
    if (seq > 0) {
      i += seq;
    } else {
      /* JSON text is UTF-8: a byte that is not is written as U+FFFD, the replacement
       * character, in its UTF-8 form, the form it has when the text is read back and written
       * again (so that a digest over it comes out the same). */
      if (i > run) sc__buf_put(b, s + run, i - run);
      if (c >= 0x80)
        sc__buf_lit(b, "\xef\xbf\xbd");
      else
        escape_byte(b, c);
      run = ++i;
    }
    i += plain_prefix(s + i, n - i);
  }
  if (n > run) sc__buf_put(b, s + run, n - run);
}

/* memcpy of a few bytes without the call: most strings and every number here are short. */
static inline void copy_short(char *d, const char *s, size_t n) {
  if (n >= 8 && n <= 16) {
    memcpy(d, s, 8); /* two copies of 8 that overlap in the middle */
    memcpy(d + n - 8, s + n - 8, 8);
  } else if (n >= 4 && n < 8) {
    memcpy(d, s, 4);
    memcpy(d + n - 4, s + n - 4, 4);
  } else if (n < 4) {
    for (size_t i = 0; i < n; i++)
      d[i] = s[i];
  } else {
    memcpy(d, s, n);
  }
}

/* The string that does not go in one copy: kept out of line, so that the common case stays a
 * short function with little to save and restore. */
#if defined(__GNUC__)
__attribute__((noinline))
#endif
static void
put_string_slowly(sc__buf *b, const char *s, size_t n, size_t clean) {
  sc__buf_putc(b, '"');
  sc__buf_put(b, s, clean);
  if (clean < n) put_rest(b, s, clean, n);
  sc__buf_putc(b, '"');
}

void sc__json_string_n(sc__buf *b, const char *s, size_t n) {
  size_t clean = plain_prefix(s, n);
  if (clean == n && b->len + n + 2 <= b->cap) { /* the common case: one copy between quotes */
    char *d = b->p + b->len;
    d[0] = '"';
    copy_short(d + 1, s, n);
    d[n + 1] = '"';
    b->len += n + 2;
    return;
  }
  put_string_slowly(b, s, n, clean);
}

void sc__json_string(sc__buf *b, const char *s) {
  if (s == NULL) {
    sc__buf_lit(b, "null");
    return;
  }
  sc__json_string_n(b, s, strlen(s));
}

/* "00" .. "99": two digits per division. */
static const char digit_pairs[201] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

/* Writes the decimal digits of v to end back from end; returns where they start. */
static inline char *digits_before(char *end, uint64_t v) {
  while (v >= 100) {
    unsigned r = (unsigned)(v % 100);
    v /= 100;
    *--end = digit_pairs[2 * r + 1];
    *--end = digit_pairs[2 * r];
  }
  if (v >= 10) {
    *--end = digit_pairs[2 * v + 1];
    *--end = digit_pairs[2 * v];
  } else {
    *--end = (char)('0' + v);
  }
  return end;
}

static const uint64_t powers_of_ten[20] = {1ull,
                                           10ull,
                                           100ull,
                                           1000ull,
                                           10000ull,
                                           100000ull,
                                           1000000ull,
                                           10000000ull,
                                           100000000ull,
                                           1000000000ull,
                                           10000000000ull,
                                           100000000000ull,
                                           1000000000000ull,
                                           10000000000000ull,
                                           100000000000000ull,
                                           1000000000000000ull,
                                           10000000000000000ull,
                                           100000000000000000ull,
                                           1000000000000000000ull,
                                           10000000000000000000ull};

void sc__json_uint(sc__buf *b, uint64_t v) {
  if (v < 100 && b->len + 2 <= b->cap) { /* epochs, attempts, indexes: mostly one or two digits */
    if (v < 10) {
      b->p[b->len++] = (char)('0' + v);
    } else {
      memcpy(b->p + b->len, digit_pairs + 2 * v, 2);
      b->len += 2;
    }
    return;
  }
  size_t n = 1;
  while (n < 20 && v >= powers_of_ten[n])
    n++;
  if (b->len + n <= b->cap) { /* the digits go straight into place */
    digits_before(b->p + b->len + n, v);
    b->len += n;
  } else {
    char tmp[20];
    digits_before(tmp + n, v);
    sc__buf_put_slow(b, tmp, n);
  }
}

void sc__json_int(sc__buf *b, int64_t v) {
  if (v < 0) {
    sc__buf_putc(b, '-');
    sc__json_uint(b, (uint64_t)0 - (uint64_t)v);
  } else {
    sc__json_uint(b, (uint64_t)v);
  }
}

void sc__json_number(sc__buf *b, double v) {
  if (isnan(v) || isinf(v)) {
    sc__buf_lit(b, "null"); /* JSON has no such numbers; cJSON writes null too */
    return;
  }
  if (v == 0 && signbit(v)) { /* -0 stays -0, which reads back as itself: a value of its own */
    sc__buf_lit(b, "-0");
    return;
  }
  if (v == floor(v) && fabs(v) < 9007199254740992.0) {
    sc__json_int(b, (int64_t)v);
    return;
  }
  /* The shortest of 15 or 17 significant digits that reads back as the same double. */
  char tmp[32];
  int n = snprintf(tmp, sizeof(tmp), "%.15g", v);
  if (strtod(tmp, NULL) != v) n = snprintf(tmp, sizeof(tmp), "%.17g", v);
  sc__buf_put(b, tmp, (size_t)n);
}

typedef struct keyed {
  const cJSON *node;
  size_t position; /* breaks ties between duplicate keys (cJSON allows them) deterministically */
} keyed;

/* The next character of a NUL-terminated string as it is written: its UTF-8 bytes, or those of
 * U+FFFD for a byte that is not UTF-8. Returns how many bytes went into out; 0 at the end. */
static size_t next_written(const unsigned char **p, unsigned char out[4]) {
  const unsigned char *s = *p;
  if (*s == 0) return 0;
  size_t len =
      *s < 0x80 ? 1 : sc__utf8_length(s, 4); /* stops at a NUL: it is no continuation byte */
  if (len == 0) {
    memcpy(out, "\xef\xbf\xbd", 3);
    *p = s + 1;
    return 3;
  }
  memcpy(out, s, len);
  *p = s + len;
  return len;
}

/* strcmp of two strings as they are written, so that canonical JSON sorts keys the same way
 * before and after a key with a stray byte went through a log. */
static int written_cmp(const char *a, const char *b) {
  const unsigned char *x = (const unsigned char *)a, *y = (const unsigned char *)b;
  /* ASCII, as almost every key is, is written as it is: strcmp up to the first other byte. */
  while (*x != 0 && *x == *y && *x < 0x80)
    x++, y++;
  if (*x < 0x80 && *y < 0x80) return (*x > *y) - (*x < *y);
  unsigned char bx[4], by[4];
  size_t nx = 0, ny = 0, ix = 0, iy = 0;
  for (;;) {
    if (ix == nx) nx = next_written(&x, bx), ix = 0;
    if (iy == ny) ny = next_written(&y, by), iy = 0;
    if (nx == 0 || ny == 0) return (nx != 0) - (ny != 0);
    if (bx[ix] != by[iy]) return bx[ix] < by[iy] ? -1 : 1;
    ix++, iy++;
  }
}

static int keyed_cmp(const void *a, const void *b) {
  const keyed *x = a, *y = b;
  int c =
      written_cmp(x->node->string ? x->node->string : "", y->node->string ? y->node->string : "");
  if (c != 0) return c;
  return x->position < y->position ? -1 : x->position > y->position;
}

static void json_member(sc__buf *b, const cJSON *c, bool canonical) {
  sc__json_string(b, c->string ? c->string : "");
  sc__buf_putc(b, ':');
  sc__json_value(b, c, canonical);
}

static void json_object(sc__buf *b, const cJSON *v, bool canonical) {
  sc__buf_putc(b, '{');
  const cJSON *c = v->child;
  if (!canonical || c == NULL || c->next == NULL) {
    for (; c != NULL; c = c->next) {
      json_member(b, c, canonical);
      if (c->next) sc__buf_putc(b, ',');
    }
  } else {
    keyed local[32], *sorted = local;
    size_t n = 0;
    for (const cJSON *k = c; k != NULL; k = k->next)
      n++;
    if (n > 32 && (sorted = malloc(n * sizeof(*sorted))) == NULL) {
      b->oom = true;
      return;
    }
    n = 0;
    for (const cJSON *k = c; k != NULL; k = k->next, n++)
      sorted[n] = (keyed){k, n};
    qsort(sorted, n, sizeof(*sorted), keyed_cmp);
    for (size_t i = 0; i < n; i++) {
      json_member(b, sorted[i].node, canonical);
      if (i + 1 < n) sc__buf_putc(b, ',');
    }
    if (sorted != local) free(sorted);
  }
  sc__buf_putc(b, '}');
}

bool sc__json_too_deep(const cJSON *v, unsigned limit) {
  if (v == NULL || !(cJSON_IsObject(v) || cJSON_IsArray(v))) return false;
  if (limit == 0) return true;
  for (const cJSON *c = v->child; c != NULL; c = c->next)
    if (sc__json_too_deep(c, limit - 1)) return true;
  return false;
}

/* Appends one step to the path in p[*len .. cap): "[3]", ".name", or ["name"] for a name that is
 * not a plain identifier (JSON-escaped; a stray byte shows as U+FFFD). The path is cut to fit. */
static void path_step(char *p, size_t cap, size_t *len, const cJSON *item, size_t index,
                      bool member) {
  if (*len >= cap) return;
  size_t room = cap - *len;
  int n;
  if (!member) {
    n = snprintf(p + *len, room, "[%zu]", index);
  } else {
    const char *name = item->string;
    bool plain = name != NULL && *name != '\0' && !(*name >= '0' && *name <= '9');
    for (const char *c = name; plain && *c; c++)
      plain = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              *c == '_';
    if (plain) {
      n = snprintf(p + *len, room, "%s%s", *len > 0 ? "." : "", name);
    } else {
      char quoted[160];
      sc__buf q;
      sc__buf_init_fixed(&q, quoted, sizeof(quoted) - 1);
      sc__json_string(&q, name ? name : "");
      quoted[q.len < sizeof(quoted) - 1 ? q.len : sizeof(quoted) - 1] = '\0';
      n = snprintf(p + *len, room, "[%s]", quoted);
    }
  }
  if (n < 0) return;
  *len = (size_t)n < room ? *len + (size_t)n : cap - 1;
}

static bool utf8_valid(const char *s) {
  const unsigned char *u = (const unsigned char *)s;
  size_t n = strlen(s);
  for (size_t i = 0; i < n;) {
    if (u[i] < 0x80) {
      i++;
      continue;
    }
    size_t len = sc__utf8_length(u + i, n - i);
    if (len == 0) return false;
    i += len;
  }
  return true;
}

static const char *unfit(const cJSON *v, unsigned limit, char *path, size_t cap, size_t *len) {
  switch (v->type & 0xFF) {
    case cJSON_False:
    case cJSON_True:
    case cJSON_NULL: return NULL;
    case cJSON_Number:
      return isfinite(v->valuedouble) ? NULL
                                      : "is not a finite number (JSON has no NaN or Infinity)";
    case cJSON_String:
      if (v->valuestring == NULL) return "is a string without text";
      return utf8_valid(v->valuestring) ? NULL : "is a string that is not valid UTF-8";
    case cJSON_Raw: return "is raw JSON text (cJSON_Raw), which is not taken as a value";
    case cJSON_Array:
    case cJSON_Object: break;
    default: return "is not a JSON value (an item of no known cJSON type)";
  }
  _Static_assert(SC__JSON_MAX_DEPTH == 512, "the message below names the limit");
  if (limit == 0) return "nests deeper than 512 levels";
  bool object = cJSON_IsObject(v);
  size_t index = 0, mark = *len;
  for (const cJSON *c = v->child; c != NULL; c = c->next, index++) {
    *len = mark;
    if (cap > 0) path[mark < cap ? mark : cap - 1] = '\0';
    path_step(path, cap, len, c, index, object);
    if (object && c->string == NULL) return "is a member without a name";
    if (object && !utf8_valid(c->string)) return "is a member whose name is not valid UTF-8";
    const char *why = unfit(c, limit - 1, path, cap, len);
    if (why != NULL) return why;
  }
  *len = mark;
  if (cap > 0) path[mark < cap ? mark : cap - 1] = '\0';
  return NULL;
}

const char *sc__json_unfit(const cJSON *v, char *path, size_t cap) {
  size_t len = 0;
  if (cap > 0) path[0] = '\0';
  if (v == NULL) return NULL;
  return unfit(v, SC__JSON_MAX_DEPTH, path, cap, &len);
}

void sc__json_value(sc__buf *b, const cJSON *v, bool canonical) {
  if (v == NULL) {
    sc__buf_lit(b, "null");
    return;
  }
  switch (v->type & 0xFF) {
    case cJSON_False: sc__buf_lit(b, "false"); break;
    case cJSON_True: sc__buf_lit(b, "true"); break;
    case cJSON_NULL: sc__buf_lit(b, "null"); break;
    case cJSON_Number: sc__json_number(b, v->valuedouble); break;
    case cJSON_String: sc__json_string(b, v->valuestring ? v->valuestring : ""); break;
    case cJSON_Raw: sc__buf_put(b, v->valuestring, strlen(v->valuestring)); break;
    case cJSON_Array:
      sc__buf_putc(b, '[');
      for (const cJSON *c = v->child; c != NULL; c = c->next) {
        sc__json_value(b, c, canonical);
        if (c->next) sc__buf_putc(b, ',');
      }
      sc__buf_putc(b, ']');
      break;
    case cJSON_Object: json_object(b, v, canonical); break;
    default: sc__buf_lit(b, "null"); break;
  }
}
