/* A strict JSON parser that builds a cJSON tree and records where each value and each member
 * name starts, so that a mistake in a pipeline file can be reported as FILE:LINE:COLUMN. cJSON's
 * own parser gives neither a position nor the reason, and accepts duplicate member names. */
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <stagecoach/error.h>

#include "jsonpos.h"

typedef struct entry {
  const cJSON *item;
  cli_jsonpos_at value;
  cli_jsonpos_at key; /* line 0: not an object member */
} entry;

/* Looked up only to report a mistake, a handful of times per file, so a plain array searched
 * from the start is enough. */
struct cli_jsonpos {
  entry *entries;
  size_t n, cap;
};

/* Every member name seen so far, keyed by (object serial, name), so that a duplicate is found
 * in constant time however large an object is: open addressing, at most half full. */
typedef struct seen_name {
  uint64_t hash;
  uint32_t object;  /* 0: an empty slot */
  const char *name; /* the member's own string, owned by the tree */
  cli_jsonpos_at at;
} seen_name;

typedef struct seen_names {
  seen_name *slots;
  size_t n, cap;
} seen_names;

typedef struct parser {
  const unsigned char *s;
  size_t len, i;
  uint32_t line;     /* the line that starts at line_start */
  size_t line_start; /* offset of the first byte of the current line */
  unsigned depth;
  uint32_t objects; /* serial of the last object opened */
  cli_jsonpos *table;
  seen_names names;
  char *buf; /* the string being decoded */
  size_t buf_len, buf_cap;
  int rc; /* the first failure wins */
  cli_jsonpos_at where;
  char *message;
  size_t message_len;
} parser;

static const cli_jsonpos_at no_key = {0, 0};

static uint32_t clamp_u32(size_t v) {
  return v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
}

/* Whitespace is the only place a line break can be (one in a string is refused), so the current
 * line is tracked there; an earlier offset is found by counting from the start. */
static cli_jsonpos_at position(const parser *p, size_t off) {
  cli_jsonpos_at at = {p->line, 0};
  size_t start = p->line_start;
  if (off < p->line_start) {
    at.line = 1;
    start = 0;
    for (size_t k = 0; k < off; k++)
      if (p->s[k] == '\n') {
        at.line++;
        start = k + 1;
      }
  }
  at.column = clamp_u32(off - start + 1);
  return at;
}

static cli_jsonpos_at here(const parser *p) {
  return position(p, p->i);
}

static bool fail(parser *p, int rc, size_t off, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

static bool fail(parser *p, int rc, size_t off, const char *fmt, ...) {
  if (p->rc != 0) return false;
  p->rc = rc;
  p->where = position(p, off);
  if (p->message != NULL && p->message_len > 0) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->message, p->message_len, fmt, ap);
    va_end(ap);
  }
  return false;
}

static bool out_of_memory(parser *p) {
  return fail(p, SC_ENOMEM, p->i, "out of memory");
}

static void skip_space(parser *p) {
  while (p->i < p->len) {
    unsigned char c = p->s[p->i];
    if (c == '\n') {
      p->i++;
      p->line++;
      p->line_start = p->i;
    } else if (c == ' ' || c == '\t' || c == '\r') {
      p->i++;
    } else {
      break;
    }
  }
}

static bool remember(parser *p, const cJSON *item, cli_jsonpos_at value, cli_jsonpos_at key) {
  cli_jsonpos *t = p->table;
  if (t->n == t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 64;
    entry *entries = realloc(t->entries, cap * sizeof(*entries));
    if (entries == NULL) return out_of_memory(p);
    t->entries = entries;
    t->cap = cap;
  }
  t->entries[t->n++] = (entry){item, value, key};
  return true;
}

/* ---- member names seen ---- */

static uint64_t name_hash(uint32_t object, const char *name) {
  uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
  for (int k = 0; k < 4; k++) {
    h ^= (object >> (8 * k)) & 0xff;
    h *= 0x100000001b3ull;
  }
  for (const unsigned char *c = (const unsigned char *)name; *c; c++) {
    h ^= *c;
    h *= 0x100000001b3ull;
  }
  return h;
}

static const seen_name *names_find(const seen_names *t, uint32_t object, uint64_t h,
                                   const char *name) {
  if (t->cap == 0) return NULL;
  for (size_t k = (size_t)h & (t->cap - 1);; k = (k + 1) & (t->cap - 1)) {
    const seen_name *s = &t->slots[k];
    if (s->object == 0) return NULL;
    if (s->hash == h && s->object == object && strcmp(s->name, name) == 0) return s;
  }
}

static void names_put(seen_name *slots, size_t cap, const seen_name *s) {
  size_t k = (size_t)s->hash & (cap - 1);
  while (slots[k].object != 0)
    k = (k + 1) & (cap - 1);
  slots[k] = *s;
}

static bool names_add(parser *p, uint32_t object, uint64_t h, const char *name, cli_jsonpos_at at) {
  seen_names *t = &p->names;
  if ((t->n + 1) * 2 > t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 64;
    seen_name *slots = calloc(cap, sizeof(*slots));
    if (slots == NULL) return out_of_memory(p);
    for (size_t k = 0; k < t->cap; k++)
      if (t->slots[k].object != 0) names_put(slots, cap, &t->slots[k]);
    free(t->slots);
    t->slots = slots;
    t->cap = cap;
  }
  seen_name s = {h, object, name, at};
  names_put(t->slots, t->cap, &s);
  t->n++;
  return true;
}

/* ---- strings ---- */

static bool buf_reserve(parser *p, size_t more) {
  if (p->buf_cap - p->buf_len > more) return true; /* room for the NUL too */
  size_t cap = p->buf_cap ? p->buf_cap : 64;
  while (cap - p->buf_len <= more) {
    if (cap > SIZE_MAX / 2) return out_of_memory(p);
    cap *= 2;
  }
  char *buf = realloc(p->buf, cap);
  if (buf == NULL) return out_of_memory(p);
  p->buf = buf;
  p->buf_cap = cap;
  return true;
}

static bool buf_append(parser *p, const void *bytes, size_t n) {
  if (!buf_reserve(p, n)) return false;
  memcpy(p->buf + p->buf_len, bytes, n);
  p->buf_len += n;
  return true;
}

static bool buf_append_code_point(parser *p, uint32_t cp) {
  unsigned char u[4];
  size_t n;
  if (cp < 0x80) {
    u[0] = (unsigned char)cp;
    n = 1;
  } else if (cp < 0x800) {
    u[0] = (unsigned char)(0xC0 | cp >> 6);
    u[1] = (unsigned char)(0x80 | (cp & 0x3F));
    n = 2;
  } else if (cp < 0x10000) {
    u[0] = (unsigned char)(0xE0 | cp >> 12);
    u[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
    u[2] = (unsigned char)(0x80 | (cp & 0x3F));
    n = 3;
  } else {
    u[0] = (unsigned char)(0xF0 | cp >> 18);
    u[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
    u[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
    u[3] = (unsigned char)(0x80 | (cp & 0x3F));
    n = 4;
  }
  return buf_append(p, u, n);
}

/* The length of the well-formed UTF-8 sequence at s (RFC 3629: no overlong forms, no
 * surrogates, nothing above U+10FFFF), or 0. */
static size_t utf8_length(const unsigned char *s, size_t avail) {
  unsigned char c = s[0];
  size_t n;
  unsigned char lo = 0x80, hi = 0xBF; /* the range of the second byte */
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (avail < n || s[1] < lo || s[1] > hi) return 0;
  for (size_t k = 2; k < n; k++)
    if (s[k] < 0x80 || s[k] > 0xBF) return 0;
  return n;
}

bool cli_utf8_valid(const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  size_t left = strlen(s);
  while (left > 0) {
    size_t n = *p < 0x80 ? 1 : utf8_length(p, left);
    if (n == 0) return false;
    p += n;
    left -= n;
  }
  return true;
}

static int hex_value(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* The four hex digits of the \u escape whose backslash is at `at`. */
static bool hex4(parser *p, size_t at, size_t open, uint32_t *cp) {
  *cp = 0;
  for (size_t k = 0; k < 4; k++) {
    size_t off = at + 2 + k;
    if (off >= p->len) return fail(p, SC_EPARSE, open, "unterminated string");
    int v = hex_value(p->s[off]);
    if (v < 0)
      return fail(p, SC_EPARSE, at, "invalid escape: \\u must be followed by four hex digits");
    *cp = *cp << 4 | (uint32_t)v;
  }
  return true;
}

static bool unicode_escape(parser *p, size_t open) {
  size_t at = p->i;
  uint32_t cp, low = 0;
  if (!hex4(p, at, open, &cp)) return false;
  p->i = at + 6;
  if (cp == 0)
    return fail(p, SC_EPARSE, at,
                "invalid escape: \\u0000 is not allowed (a string cannot hold NUL)");
  if (cp >= 0xD800 && cp <= 0xDFFF) {
    /* A high surrogate must be followed by the escape of a low one: together one code point. */
    bool paired = cp <= 0xDBFF && p->i + 1 < p->len && p->s[p->i] == '\\' && p->s[p->i + 1] == 'u';
    if (paired && !hex4(p, p->i, open, &low)) return false;
    if (!paired || low < 0xDC00 || low > 0xDFFF)
      return fail(p, SC_EPARSE, at, "invalid escape: \\u%04X is an unpaired UTF-16 surrogate",
                  (unsigned)cp);
    cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
    p->i += 6;
  }
  return buf_append_code_point(p, cp);
}

static bool escape(parser *p, size_t open) {
  size_t at = p->i;
  if (at + 1 >= p->len) return fail(p, SC_EPARSE, open, "unterminated string");
  unsigned char c = p->s[at + 1], out;
  switch (c) {
    case '"': out = '"'; break;
    case '\\': out = '\\'; break;
    case '/': out = '/'; break;
    case 'b': out = '\b'; break;
    case 'f': out = '\f'; break;
    case 'n': out = '\n'; break;
    case 'r': out = '\r'; break;
    case 't': out = '\t'; break;
    case 'u': return unicode_escape(p, open);
    default:
      if (c > 0x20 && c < 0x7F)
        return fail(p, SC_EPARSE, at,
                    "invalid escape \"\\%c\" (expected \\\", \\\\, \\/, \\b, \\f, \\n, \\r, \\t or "
                    "\\uXXXX)",
                    c);
      return fail(p, SC_EPARSE, at,
                  "invalid escape (expected \\\", \\\\, \\/, \\b, \\f, \\n, \\r, \\t or \\uXXXX "
                  "after a backslash)");
  }
  p->i += 2;
  return buf_append(p, &out, 1);
}

static bool control_character(parser *p, unsigned char c) {
  if (c == '\n')
    return fail(p, SC_EPARSE, p->i,
                "control character in a string (a line break: is the closing quote missing?)");
  if (c == '\t')
    return fail(p, SC_EPARSE, p->i, "control character in a string (a tab: write \\t)");
  return fail(p, SC_EPARSE, p->i, "control character in a string (U+%04X: write \\u%04x)",
              (unsigned)c, (unsigned)c);
}

/* Decodes the string whose opening quote is at p->i into p->buf, NUL-terminated. */
static bool parse_string(parser *p) {
  size_t open = p->i++;
  p->buf_len = 0;
  for (;;) {
    size_t run = p->i; /* plain ASCII is copied a run at a time */
    while (run < p->len && p->s[run] >= 0x20 && p->s[run] < 0x80 && p->s[run] != '"' &&
           p->s[run] != '\\')
      run++;
    if (run > p->i && !buf_append(p, p->s + p->i, run - p->i)) return false;
    p->i = run;
    if (p->i >= p->len) return fail(p, SC_EPARSE, open, "unterminated string");
    unsigned char c = p->s[p->i];
    if (c == '"') {
      p->i++;
      break;
    }
    if (c < 0x20) return control_character(p, c);
    if (c == '\\') {
      if (!escape(p, open)) return false;
      continue;
    }
    size_t n = utf8_length(p->s + p->i, p->len - p->i);
    if (n == 0) return fail(p, SC_EPARSE, p->i, "invalid UTF-8 in a string");
    if (!buf_append(p, p->s + p->i, n)) return false;
    p->i += n;
  }
  if (!buf_reserve(p, 0)) return false;
  p->buf[p->buf_len] = '\0';
  return true;
}

/* ---- numbers and literals ---- */

static bool is_digit(const parser *p, size_t k) {
  return k < p->len && p->s[k] >= '0' && p->s[k] <= '9';
}

/* strtod() reads the locale's decimal point, so the '.' is swapped for it first. */
static bool number_value(parser *p, size_t start, size_t end, double *out) {
  const char *point = localeconv()->decimal_point;
  size_t point_len = point && *point ? strlen(point) : 1;
  char local[128], *text = local;
  size_t need = end - start + point_len + 1;
  if (need > sizeof(local) && (text = malloc(need)) == NULL) return out_of_memory(p);
  size_t o = 0;
  for (size_t k = start; k < end; k++) {
    if (p->s[k] == '.' && point && *point) {
      memcpy(text + o, point, point_len);
      o += point_len;
    } else {
      text[o++] = (char)p->s[k];
    }
  }
  text[o] = '\0';
  *out = strtod(text, NULL);
  if (text != local) free(text);
  if (!isfinite(*out))
    return fail(p, SC_EPARSE, start, "number out of range (it does not fit a double)");
  return true;
}

/* RFC 8259: [-] (0 | [1-9][0-9]*) [. [0-9]+] [(e|E) [+|-] [0-9]+] */
static cJSON *parse_number(parser *p) {
  size_t start = p->i, k = p->i;
  if (p->s[k] == '-' && !is_digit(p, ++k)) {
    fail(p, SC_EPARSE, k, "invalid number: expected a digit after '-'");
    return NULL;
  }
  if (p->s[k] == '0') {
    if (is_digit(p, ++k)) {
      fail(p, SC_EPARSE, start, "invalid number: leading zeros are not allowed");
      return NULL;
    }
  } else {
    while (is_digit(p, k))
      k++;
  }
  if (k < p->len && p->s[k] == '.') {
    if (!is_digit(p, ++k)) {
      fail(p, SC_EPARSE, k, "invalid number: expected a digit after '.'");
      return NULL;
    }
    while (is_digit(p, k))
      k++;
  }
  if (k < p->len && (p->s[k] == 'e' || p->s[k] == 'E')) {
    k++;
    if (k < p->len && (p->s[k] == '+' || p->s[k] == '-')) k++;
    if (!is_digit(p, k)) {
      fail(p, SC_EPARSE, k, "invalid number: expected a digit in the exponent");
      return NULL;
    }
    while (is_digit(p, k))
      k++;
  }
  double v;
  if (!number_value(p, start, k, &v)) return NULL;
  p->i = k;
  cJSON *item = cJSON_CreateNumber(v);
  if (item == NULL) out_of_memory(p);
  return item;
}

static bool is_word_byte(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

/* true, false or null, standing alone ("nullx" is not null followed by garbage). */
static bool literal(parser *p, const char *word) {
  size_t n = strlen(word);
  if (p->len - p->i < n || memcmp(p->s + p->i, word, n) != 0) return false;
  if (p->i + n < p->len && is_word_byte(p->s[p->i + n])) return false;
  p->i += n;
  return true;
}

/* ---- values ---- */

static cJSON *parse_value(parser *p, cli_jsonpos_at key);

static bool parse_members(parser *p, cJSON *object) {
  uint32_t serial = ++p->objects;
  bool after_comma = false;
  p->i++; /* '{' */
  skip_space(p);
  if (p->i < p->len && p->s[p->i] == '}') {
    p->i++;
    return true;
  }
  for (;;) {
    if (p->i >= p->len || p->s[p->i] != '"') {
      if (after_comma && p->i < p->len && p->s[p->i] == '}')
        return fail(p, SC_EPARSE, p->i,
                    "expected a member name after ',' (a trailing comma is not allowed)");
      return fail(p, SC_EPARSE, p->i,
                  after_comma ? "expected a member name (a string) after ','"
                              : "expected a member name (a string) or '}'");
    }
    size_t key_off = p->i;
    cli_jsonpos_at key_at = here(p);
    if (!parse_string(p)) return false;
    uint64_t h = name_hash(serial, p->buf);
    const seen_name *first = names_find(&p->names, serial, h, p->buf);
    if (first != NULL) {
      char quoted[128];
      return fail(p, SC_EPARSE, key_off, "duplicate member %s (first at %u:%u)",
                  cli_jsonpos_quote(quoted, sizeof(quoted), p->buf), (unsigned)first->at.line,
                  (unsigned)first->at.column);
    }
    char *name = malloc(p->buf_len + 1);
    if (name == NULL) return out_of_memory(p);
    memcpy(name, p->buf, p->buf_len + 1);
    skip_space(p);
    cJSON *value = NULL;
    if (p->i >= p->len || p->s[p->i] != ':') {
      fail(p, SC_EPARSE, p->i, "expected ':' after a member name");
    } else {
      p->i++;
      skip_space(p);
      value = parse_value(p, key_at);
    }
    if (value != NULL && !cJSON_AddItemToObject(object, name, value)) {
      cJSON_Delete(value);
      value = NULL;
      out_of_memory(p);
    }
    free(name);
    if (value == NULL || !names_add(p, serial, h, value->string, key_at)) return false;
    skip_space(p);
    if (p->i < p->len && p->s[p->i] == ',') {
      p->i++;
      skip_space(p);
      after_comma = true;
      continue;
    }
    if (p->i < p->len && p->s[p->i] == '}') {
      p->i++;
      return true;
    }
    return fail(p, SC_EPARSE, p->i, "expected ',' or '}' after an object member");
  }
}

static bool parse_elements(parser *p, cJSON *array) {
  bool after_comma = false;
  p->i++; /* '[' */
  skip_space(p);
  if (p->i < p->len && p->s[p->i] == ']') {
    p->i++;
    return true;
  }
  for (;;) {
    if (p->i < p->len && p->s[p->i] == ']')
      return fail(p, SC_EPARSE, p->i,
                  "expected a value after ',' (a trailing comma is not allowed)");
    if (p->i >= p->len || strchr("{[\"-0123456789tfn", p->s[p->i]) == NULL || p->s[p->i] == 0)
      return fail(p, SC_EPARSE, p->i, after_comma ? "expected a value" : "expected a value or ']'");
    cJSON *value = parse_value(p, no_key);
    if (value == NULL) return false;
    if (!cJSON_AddItemToArray(array, value)) {
      cJSON_Delete(value);
      return out_of_memory(p);
    }
    skip_space(p);
    if (p->i < p->len && p->s[p->i] == ',') {
      p->i++;
      skip_space(p);
      after_comma = true;
      continue;
    }
    if (p->i < p->len && p->s[p->i] == ']') {
      p->i++;
      return true;
    }
    return fail(p, SC_EPARSE, p->i, "expected ',' or ']' after an array element");
  }
}

static cJSON *parse_container(parser *p, bool is_object, cli_jsonpos_at at, cli_jsonpos_at key) {
  if (p->depth >= CLI_JSONPOS_MAX_DEPTH) {
    fail(p, SC_EPARSE, p->i, "nesting deeper than %d levels", CLI_JSONPOS_MAX_DEPTH);
    return NULL;
  }
  cJSON *item = is_object ? cJSON_CreateObject() : cJSON_CreateArray();
  if (item == NULL) {
    out_of_memory(p);
    return NULL;
  }
  p->depth++;
  bool ok =
      remember(p, item, at, key) && (is_object ? parse_members(p, item) : parse_elements(p, item));
  p->depth--;
  if (!ok) {
    cJSON_Delete(item);
    return NULL;
  }
  return item;
}

/* The value at p->i (not whitespace). NULL on failure, with the reason recorded. */
static cJSON *parse_value(parser *p, cli_jsonpos_at key) {
  if (p->i >= p->len) {
    fail(p, SC_EPARSE, p->i, "expected a value");
    return NULL;
  }
  cli_jsonpos_at at = here(p);
  unsigned char c = p->s[p->i];
  cJSON *item = NULL;
  if (c == '{' || c == '[') return parse_container(p, c == '{', at, key);
  if (c == '"') {
    if (!parse_string(p)) return NULL;
    item = cJSON_CreateString(p->buf);
  } else if (c == '-' || (c >= '0' && c <= '9')) {
    if ((item = parse_number(p)) == NULL) return NULL;
  } else if (literal(p, "true")) {
    item = cJSON_CreateTrue();
  } else if (literal(p, "false")) {
    item = cJSON_CreateFalse();
  } else if (literal(p, "null")) {
    item = cJSON_CreateNull();
  } else {
    fail(p, SC_EPARSE, p->i, "expected a value");
    return NULL;
  }
  if (item == NULL) {
    out_of_memory(p);
    return NULL;
  }
  if (!remember(p, item, at, key)) {
    cJSON_Delete(item);
    return NULL;
  }
  return item;
}

int cli_jsonpos_parse(const char *text, size_t len, cJSON **out, cli_jsonpos **positions,
                      cli_jsonpos_at *where, char *message, size_t message_len) {
  *out = NULL;
  *positions = NULL;
  if (where) *where = (cli_jsonpos_at){0, 0};
  if (message && message_len) message[0] = '\0';
  parser p;
  memset(&p, 0, sizeof(p));
  p.s = (const unsigned char *)text;
  p.len = text ? len : 0;
  p.line = 1;
  p.message = message;
  p.message_len = message_len;
  cJSON *root = NULL;
  if (p.len >= 3 && memcmp(p.s, "\xEF\xBB\xBF", 3) == 0) p.i = 3;
  skip_space(&p);
  if (p.i >= p.len) {
    fail(&p, SC_EPARSE, 0, "the file is empty"); /* also when it holds only whitespace */
    goto out;
  }
  if ((p.table = calloc(1, sizeof(*p.table))) == NULL) {
    out_of_memory(&p);
    goto out;
  }
  if ((root = parse_value(&p, no_key)) == NULL) goto out;
  skip_space(&p);
  if (p.i < p.len) fail(&p, SC_EPARSE, p.i, "trailing text after the top-level value");
out:
  free(p.names.slots);
  free(p.buf);
  if (p.rc != 0) {
    cJSON_Delete(root);
    cli_jsonpos_free(p.table);
    if (where) *where = p.where;
    return p.rc;
  }
  *out = root;
  *positions = p.table;
  return 0;
}

static const entry *find(const cli_jsonpos *t, const cJSON *item) {
  if (t == NULL || item == NULL) return NULL;
  for (size_t k = 0; k < t->n; k++)
    if (t->entries[k].item == item) return &t->entries[k];
  return NULL;
}

bool cli_jsonpos_value(const cli_jsonpos *positions, const cJSON *item, cli_jsonpos_at *at) {
  const entry *e = find(positions, item);
  if (e == NULL) return false;
  *at = e->value;
  return true;
}

bool cli_jsonpos_key(const cli_jsonpos *positions, const cJSON *item, cli_jsonpos_at *at) {
  const entry *e = find(positions, item);
  if (e == NULL || e->key.line == 0) return false;
  *at = e->key;
  return true;
}

void cli_jsonpos_free(cli_jsonpos *positions) {
  if (positions == NULL) return;
  free(positions->entries);
  free(positions);
}

char *cli_jsonpos_quote(char *out, size_t cap, const char *s) {
  static const char hex[] = "0123456789abcdef";
  if (cap < 8) {
    if (cap) out[0] = '\0';
    return out;
  }
  size_t o = 0;
  out[o++] = '"';
  for (const unsigned char *c = (const unsigned char *)s; *c;) {
    char piece[8];
    size_t n = 0;
    if (*c == '"' || *c == '\\') {
      piece[n++] = '\\';
      piece[n++] = (char)*c++;
    } else if (*c < 0x20 || *c == 0x7F) {
      memcpy(piece, "\\u00", 4);
      piece[4] = hex[*c >> 4];
      piece[5] = hex[*c & 0xF];
      n = 6;
      c++;
    } else {
      /* a whole UTF-8 sequence, so that a cut never splits a character */
      size_t seq = *c >= 0xF0 ? 4 : *c >= 0xE0 ? 3 : *c >= 0xC0 ? 2 : 1;
      while (n < seq && c[0] != '\0' && (n == 0 || (*c & 0xC0) == 0x80))
        piece[n++] = (char)*c++;
    }
    if (o + n + 5 > cap) { /* room for `..."` and the NUL */
      memcpy(out + o, "...", 3);
      o += 3;
      break;
    }
    memcpy(out + o, piece, n);
    o += n;
  }
  out[o++] = '"';
  out[o] = '\0';
  return out;
}
