/* The strictness and the positions that cJSON lacks, for the `stagecoach` command's JSON files
 * (a pipeline, a stage's $SC_OUTPUT). cJSON is the one parser that builds the tree; before it, one
 * pass over the text checks what RFC 8259 and our own rules refuse and cJSON would accept or
 * misplace (a leading zero, a raw control character, invalid UTF-8, "\u0000", a lone surrogate,
 * a number out of range, nesting deeper than 512), saying what was expected where; after it, a
 * walk of the tree refuses a duplicate member name. A value's line and column are found when a
 * mistake needs them, by the index path of the item in the tree and a walk of the text along it,
 * so nothing is recorded per value. See docs/design.md, "One JSON parser". */
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <stagecoach/error.h>

#include "jsonpos.h"
#include "../../events/internal.h"

/* Where one value of the tree starts, and its member name (SIZE_MAX: not a member). */
typedef struct spot {
  const cJSON *item;
  size_t value, key;
} spot;

/* What the positions of one tree are found from: the text it was parsed from (borrowed), and the
 * spots of every value, found by one walk when the first position is asked for and sorted by
 * item, so that a file with thousands of mistakes costs n log n, not n per mistake. */
struct cli_jsonpos {
  const unsigned char *s;
  size_t len;
  const cJSON *root;
  spot *spots; /* NULL until asked */
  size_t n;
  size_t *lines; /* the offset where each line starts, with the spots */
  size_t nlines;
};

/* ---- the check of the text ---- */

typedef struct checker {
  const unsigned char *s;
  size_t len, i;
  unsigned depth;
  int rc; /* the first failure wins */
  size_t where;
  char *message;
  size_t message_len;
} checker;

static cli_jsonpos_at position_of(const unsigned char *s, size_t off) {
  cli_jsonpos_at at = {1, 1};
  size_t start = 0;
  for (size_t k = 0; k < off; k++)
    if (s[k] == '\n') {
      at.line++;
      start = k + 1;
    }
  size_t column = off - start + 1;
  at.column = column > UINT32_MAX ? UINT32_MAX : (uint32_t)column;
  return at;
}

static bool fail(checker *c, int rc, size_t off, const char *fmt, ...) SC__PRINTF(4, 5);
static bool fail(checker *c, int rc, size_t off, const char *fmt, ...) {
  if (c->rc != 0) return false;
  c->rc = rc;
  c->where = off;
  if (c->message != NULL && c->message_len > 0) {
    va_list ap;
    va_start(ap, fmt);
    sc__vformat(c->message, c->message_len, fmt, ap);
    va_end(ap);
  }
  return false;
}

static void skip_space(const unsigned char *s, size_t len, size_t *i) {
  while (*i < len && (s[*i] == ' ' || s[*i] == '\t' || s[*i] == '\r' || s[*i] == '\n'))
    (*i)++;
}

bool cli_utf8_valid(const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  size_t left = strlen(s);
  while (left > 0) {
    size_t n = *p < 0x80 ? 1 : sc__utf8_length(p, left);
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
static bool hex4(checker *c, size_t at, size_t open, uint32_t *cp) {
  *cp = 0;
  for (size_t k = 0; k < 4; k++) {
    size_t off = at + 2 + k;
    if (off >= c->len) return fail(c, SC_EPARSE, open, "unterminated string");
    int v = hex_value(c->s[off]);
    if (v < 0)
      return fail(c, SC_EPARSE, at, "invalid escape: \\u must be followed by four hex digits");
    *cp = *cp << 4 | (uint32_t)v;
  }
  return true;
}

static bool unicode_escape(checker *c, size_t open) {
  size_t at = c->i;
  uint32_t cp, low = 0;
  if (!hex4(c, at, open, &cp)) return false;
  c->i = at + 6;
  if (cp == 0)
    return fail(c, SC_EPARSE, at,
                "invalid escape: \\u0000 is not allowed (a string cannot hold NUL)");
  if (cp >= 0xD800 && cp <= 0xDFFF) {
    /* A high surrogate must be followed by the escape of a low one: together one code point. */
    bool paired = cp <= 0xDBFF && c->i + 1 < c->len && c->s[c->i] == '\\' && c->s[c->i + 1] == 'u';
    if (paired && !hex4(c, c->i, open, &low)) return false;
    if (!paired || low < 0xDC00 || low > 0xDFFF)
      return fail(c, SC_EPARSE, at, "invalid escape: \\u%04X is an unpaired UTF-16 surrogate",
                  (unsigned)cp);
    c->i += 6;
  }
  return true;
}

static bool escape(checker *c, size_t open) {
  size_t at = c->i;
  if (at + 1 >= c->len) return fail(c, SC_EPARSE, open, "unterminated string");
  unsigned char e = c->s[at + 1];
  if (e == 'u') return unicode_escape(c, open);
  if (strchr("\"\\/bfnrt", e) == NULL || e == 0) {
    if (e > 0x20 && e < 0x7F)
      return fail(c, SC_EPARSE, at,
                  "invalid escape \"\\%c\" (expected \\\", \\\\, \\/, \\b, \\f, \\n, \\r, \\t or "
                  "\\uXXXX)",
                  e);
    return fail(c, SC_EPARSE, at,
                "invalid escape (expected \\\", \\\\, \\/, \\b, \\f, \\n, \\r, \\t or \\uXXXX "
                "after a backslash)");
  }
  c->i += 2;
  return true;
}

static bool control_character(checker *c, unsigned char ch) {
  if (ch == '\n')
    return fail(c, SC_EPARSE, c->i,
                "control character in a string (a line break: is the closing quote missing?)");
  if (ch == '\t')
    return fail(c, SC_EPARSE, c->i, "control character in a string (a tab: write \\t)");
  return fail(c, SC_EPARSE, c->i, "control character in a string (U+%04X: write \\u%04x)",
              (unsigned)ch, (unsigned)ch);
}

/* The string whose opening quote is at c->i. */
static bool check_string(checker *c) {
  size_t open = c->i++;
  for (;;) {
    while (c->i < c->len && c->s[c->i] >= 0x20 && c->s[c->i] < 0x80 && c->s[c->i] != '"' &&
           c->s[c->i] != '\\')
      c->i++;
    if (c->i >= c->len) return fail(c, SC_EPARSE, open, "unterminated string");
    unsigned char ch = c->s[c->i];
    if (ch == '"') {
      c->i++;
      return true;
    }
    if (ch < 0x20) return control_character(c, ch);
    if (ch == '\\') {
      if (!escape(c, open)) return false;
      continue;
    }
    size_t n = sc__utf8_length(c->s + c->i, c->len - c->i);
    if (n == 0) return fail(c, SC_EPARSE, c->i, "invalid UTF-8 in a string");
    c->i += n;
  }
}

static bool is_digit(const checker *c, size_t k) {
  return k < c->len && c->s[k] >= '0' && c->s[k] <= '9';
}

/* Whether the number text[start .. end) fits a double; strtod() reads the locale's decimal
 * point, so the '.' is swapped for it first. */
static bool number_fits(checker *c, size_t start, size_t end) {
  const char *point = localeconv()->decimal_point;
  size_t point_len = point && *point ? strlen(point) : 1;
  char local[128], *text = local;
  size_t need = end - start + point_len + 1;
  if (need > sizeof(local) && (text = malloc(need)) == NULL)
    return fail(c, SC_ENOMEM, start, "out of memory");
  size_t o = 0;
  for (size_t k = start; k < end; k++) {
    if (c->s[k] == '.' && point && *point) {
      memcpy(text + o, point, point_len);
      o += point_len;
    } else {
      text[o++] = (char)c->s[k];
    }
  }
  text[o] = '\0';
  double v = strtod(text, NULL);
  if (text != local) free(text);
  if (!isfinite(v))
    return fail(c, SC_EPARSE, start, "number out of range (it does not fit a double)");
  return true;
}

/* RFC 8259: [-] (0 | [1-9][0-9]*) [. [0-9]+] [(e|E) [+|-] [0-9]+] */
static bool check_number(checker *c) {
  size_t start = c->i, k = c->i;
  if (c->s[k] == '-' && !is_digit(c, ++k))
    return fail(c, SC_EPARSE, k, "invalid number: expected a digit after '-'");
  if (c->s[k] == '0') {
    if (is_digit(c, ++k))
      return fail(c, SC_EPARSE, start, "invalid number: leading zeros are not allowed");
  } else {
    while (is_digit(c, k))
      k++;
  }
  if (k < c->len && c->s[k] == '.') {
    if (!is_digit(c, ++k))
      return fail(c, SC_EPARSE, k, "invalid number: expected a digit after '.'");
    while (is_digit(c, k))
      k++;
  }
  if (k < c->len && (c->s[k] == 'e' || c->s[k] == 'E')) {
    k++;
    if (k < c->len && (c->s[k] == '+' || c->s[k] == '-')) k++;
    if (!is_digit(c, k))
      return fail(c, SC_EPARSE, k, "invalid number: expected a digit in the exponent");
    while (is_digit(c, k))
      k++;
  }
  if (!number_fits(c, start, k)) return false;
  c->i = k;
  return true;
}

static bool is_word_byte(unsigned char ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
         ch == '_';
}

/* true, false or null, standing alone ("nullx" is not null followed by garbage). */
static bool literal(checker *c, const char *word) {
  size_t n = strlen(word);
  if (c->len - c->i < n || memcmp(c->s + c->i, word, n) != 0) return false;
  if (c->i + n < c->len && is_word_byte(c->s[c->i + n])) return false;
  c->i += n;
  return true;
}

static bool check_value(checker *c);

static bool check_members(checker *c) {
  bool after_comma = false;
  c->i++; /* '{' */
  skip_space(c->s, c->len, &c->i);
  if (c->i < c->len && c->s[c->i] == '}') {
    c->i++;
    return true;
  }
  for (;;) {
    if (c->i >= c->len || c->s[c->i] != '"') {
      if (after_comma && c->i < c->len && c->s[c->i] == '}')
        return fail(c, SC_EPARSE, c->i,
                    "expected a member name after ',' (a trailing comma is not allowed)");
      return fail(c, SC_EPARSE, c->i,
                  after_comma ? "expected a member name (a string) after ','"
                              : "expected a member name (a string) or '}'");
    }
    if (!check_string(c)) return false;
    skip_space(c->s, c->len, &c->i);
    if (c->i >= c->len || c->s[c->i] != ':')
      return fail(c, SC_EPARSE, c->i, "expected ':' after a member name");
    c->i++;
    skip_space(c->s, c->len, &c->i);
    if (!check_value(c)) return false;
    skip_space(c->s, c->len, &c->i);
    if (c->i < c->len && c->s[c->i] == ',') {
      c->i++;
      skip_space(c->s, c->len, &c->i);
      after_comma = true;
      continue;
    }
    if (c->i < c->len && c->s[c->i] == '}') {
      c->i++;
      return true;
    }
    return fail(c, SC_EPARSE, c->i, "expected ',' or '}' after an object member");
  }
}

static bool check_elements(checker *c) {
  bool after_comma = false;
  c->i++; /* '[' */
  skip_space(c->s, c->len, &c->i);
  if (c->i < c->len && c->s[c->i] == ']') {
    c->i++;
    return true;
  }
  for (;;) {
    if (c->i < c->len && c->s[c->i] == ']')
      return fail(c, SC_EPARSE, c->i,
                  "expected a value after ',' (a trailing comma is not allowed)");
    if (c->i >= c->len || strchr("{[\"-0123456789tfn", c->s[c->i]) == NULL || c->s[c->i] == 0)
      return fail(c, SC_EPARSE, c->i, after_comma ? "expected a value" : "expected a value or ']'");
    if (!check_value(c)) return false;
    skip_space(c->s, c->len, &c->i);
    if (c->i < c->len && c->s[c->i] == ',') {
      c->i++;
      skip_space(c->s, c->len, &c->i);
      after_comma = true;
      continue;
    }
    if (c->i < c->len && c->s[c->i] == ']') {
      c->i++;
      return true;
    }
    return fail(c, SC_EPARSE, c->i, "expected ',' or ']' after an array element");
  }
}

/* The value at c->i (not whitespace). */
static bool check_value(checker *c) {
  if (c->i >= c->len) return fail(c, SC_EPARSE, c->i, "expected a value");
  unsigned char ch = c->s[c->i];
  if (ch == '{' || ch == '[') {
    if (c->depth >= CLI_JSONPOS_MAX_DEPTH)
      return fail(c, SC_EPARSE, c->i, "nesting deeper than %d levels", CLI_JSONPOS_MAX_DEPTH);
    c->depth++;
    bool ok = ch == '{' ? check_members(c) : check_elements(c);
    c->depth--;
    return ok;
  }
  if (ch == '"') return check_string(c);
  if (ch == '-' || (ch >= '0' && ch <= '9')) return check_number(c);
  if (literal(c, "true") || literal(c, "false") || literal(c, "null")) return true;
  return fail(c, SC_EPARSE, c->i, "expected a value");
}

/* ---- where a value of the tree is in the text ---- */

/* The end of the value that starts at i, in text that checked. */
static size_t skip_value(const unsigned char *s, size_t len, size_t i) {
  if (i >= len) return len;
  if (s[i] == '"') {
    for (i++; i < len && s[i] != '"'; i++)
      if (s[i] == '\\') i++;
    return i < len ? i + 1 : len;
  }
  if (s[i] == '{' || s[i] == '[') {
    size_t depth = 0;
    for (; i < len; i++) {
      if (s[i] == '"') {
        i = skip_value(s, len, i) - 1;
      } else if (s[i] == '{' || s[i] == '[') {
        depth++;
      } else if ((s[i] == '}' || s[i] == ']') && --depth == 0) {
        return i + 1;
      }
    }
    return len;
  }
  while (i < len && s[i] != ',' && s[i] != '}' && s[i] != ']' && s[i] != ' ' && s[i] != '\t' &&
         s[i] != '\r' && s[i] != '\n')
    i++;
  return i;
}

static size_t count_values(const cJSON *node) {
  size_t n = 1;
  for (const cJSON *c = node->child; (cJSON_IsObject(node) || cJSON_IsArray(node)) && c != NULL;
       c = c->next)
    n += count_values(c);
  return n;
}

/* Walks the text of node, which starts at i, with the tree: cJSON built the tree from this text,
 * so its children are the text's values in order. Returns the offset past node. */
static size_t walk(cli_jsonpos *p, const cJSON *node, size_t i, size_t key) {
  const unsigned char *s = p->s;
  p->spots[p->n++] = (spot){node, i, key};
  if (i >= p->len) return p->len; /* cannot happen with a tree of this text; never read past it */
  if (!(cJSON_IsObject(node) || cJSON_IsArray(node))) return skip_value(s, p->len, i);
  bool object = s[i] == '{';
  i++;
  for (const cJSON *child = node->child; child != NULL && i < p->len; child = child->next) {
    skip_space(s, p->len, &i);
    size_t name = SIZE_MAX;
    if (object) {
      name = i;
      i = skip_value(s, p->len, i);
      skip_space(s, p->len, &i);
      i++; /* ':' */
      skip_space(s, p->len, &i);
    }
    i = walk(p, child, i, name);
    skip_space(s, p->len, &i);
    if (i < p->len && s[i] == ',') i++;
  }
  skip_space(s, p->len, &i);
  return i + 1; /* past '}' or ']' */
}

static int by_item(const void *a, const void *b) {
  const cJSON *x = ((const spot *)a)->item, *y = ((const spot *)b)->item;
  return x < y ? -1 : x > y;
}

static const spot *find(const cli_jsonpos *positions, const cJSON *item) {
  cli_jsonpos *p = (cli_jsonpos *)positions; /* the spots are a cache of what the text says */
  if (p == NULL || item == NULL) return NULL;
  if (p->spots == NULL) {
    if ((p->spots = malloc(count_values(p->root) * sizeof(*p->spots))) == NULL) return NULL;
    size_t i = p->len >= 3 && memcmp(p->s, "\xEF\xBB\xBF", 3) == 0 ? 3 : 0;
    skip_space(p->s, p->len, &i);
    p->n = 0;
    walk(p, p->root, i, SIZE_MAX);
    qsort(p->spots, p->n, sizeof(*p->spots), by_item);
    size_t n = 1;
    for (size_t k = 0; k < p->len; k++)
      n += p->s[k] == '\n';
    if ((p->lines = malloc(n * sizeof(*p->lines))) != NULL) {
      p->lines[p->nlines++] = 0;
      for (size_t k = 0; k < p->len; k++)
        if (p->s[k] == '\n') p->lines[p->nlines++] = k + 1;
    }
  }
  spot want = {item, 0, 0};
  return bsearch(&want, p->spots, p->n, sizeof(*p->spots), by_item);
}

/* The line and column of offset off, by a binary search of the line starts. */
static cli_jsonpos_at at_offset(const cli_jsonpos *p, size_t off) {
  if (p->lines == NULL) return position_of(p->s, off);
  size_t lo = 0, hi = p->nlines; /* the last line start <= off is in [lo, hi) */
  while (hi - lo > 1) {
    size_t mid = lo + (hi - lo) / 2;
    if (p->lines[mid] <= off)
      lo = mid;
    else
      hi = mid;
  }
  size_t column = off - p->lines[lo] + 1;
  cli_jsonpos_at at = {lo + 1 > UINT32_MAX ? UINT32_MAX : (uint32_t)(lo + 1),
                       column > UINT32_MAX ? UINT32_MAX : (uint32_t)column};
  return at;
}

bool cli_jsonpos_value(const cli_jsonpos *positions, const cJSON *item, cli_jsonpos_at *at) {
  const spot *found = find(positions, item);
  if (found == NULL) return false;
  *at = at_offset(positions, found->value);
  return true;
}

bool cli_jsonpos_key(const cli_jsonpos *positions, const cJSON *item, cli_jsonpos_at *at) {
  const spot *found = find(positions, item);
  if (found == NULL || found->key == SIZE_MAX) return false;
  *at = at_offset(positions, found->key);
  return true;
}

/* ---- duplicate member names ---- */

typedef struct named {
  const char *name;
  size_t index;
} named;

static int by_name(const void *a, const void *b) {
  const named *x = a, *y = b;
  int c = strcmp(x->name, y->name);
  return c != 0 ? c : x->index < y->index ? -1 : x->index > y->index;
}

/* The first duplicate in the order of the text under node: *dup is the member that repeats the
 * name of *first. Members are sorted by name, so an object of any size costs n log n. */
static int find_duplicate(const cJSON *node, const cJSON **first, const cJSON **dup) {
  if (!(cJSON_IsObject(node) || cJSON_IsArray(node))) return 0;
  size_t n = 0, at = SIZE_MAX, first_index = 0;
  for (const cJSON *c = node->child; c != NULL; c = c->next)
    n++;
  if (cJSON_IsObject(node) && n > 1) {
    named *list = malloc(n * sizeof(*list));
    if (list == NULL) return SC_ENOMEM;
    size_t k = 0;
    for (const cJSON *c = node->child; c != NULL; c = c->next, k++)
      list[k] = (named){c->string ? c->string : "", k};
    qsort(list, n, sizeof(*list), by_name);
    for (k = 1; k < n; k++)
      if (strcmp(list[k - 1].name, list[k].name) == 0 && list[k].index < at &&
          (k < 2 || strcmp(list[k - 2].name, list[k].name) != 0)) {
        at = list[k].index;
        first_index = list[k - 1].index;
      }
    free(list);
  }
  /* A duplicate inside an earlier member's value comes first in the text. */
  size_t k = 0;
  for (const cJSON *c = node->child; c != NULL && k < at; c = c->next, k++) {
    int rc = find_duplicate(c, first, dup);
    if (rc != 0 || *dup != NULL) return rc;
  }
  if (at != SIZE_MAX) {
    *first = cJSON_GetArrayItem(node, (int)first_index);
    *dup = cJSON_GetArrayItem(node, (int)at);
  }
  return 0;
}

/* ---- parsing ---- */

int cli_jsonpos_parse(const char *text, size_t len, cJSON **out, cli_jsonpos **positions,
                      cli_jsonpos_at *where, char *message, size_t message_len) {
  *out = NULL;
  *positions = NULL;
  if (where) *where = (cli_jsonpos_at){0, 0};
  if (message && message_len) message[0] = '\0';
  checker c = {(const unsigned char *)text, text ? len : 0, 0, 0, 0, 0, message, message_len};
  if (c.len >= 3 && memcmp(c.s, "\xEF\xBB\xBF", 3) == 0) c.i = 3;
  skip_space(c.s, c.len, &c.i);
  size_t start = c.i;
  if (c.i >= c.len) {
    fail(&c, SC_EPARSE, 0, "the file is empty"); /* also when it holds only whitespace */
  } else if (check_value(&c)) {
    skip_space(c.s, c.len, &c.i);
    if (c.i < c.len) fail(&c, SC_EPARSE, c.i, "trailing text after the top-level value");
  }
  cJSON *root = NULL;
  cli_jsonpos *p = NULL;
  if (c.rc == 0) {
    /* The text checked, so cJSON accepts it; its parse end says where if it does not. */
    const char *end = NULL;
    root = cJSON_ParseWithLengthOpts(text + start, c.len - start, &end, false);
    if (root == NULL) {
      size_t off = end != NULL && end >= text + start ? (size_t)(end - text) : start;
      fail(&c, SC_ENOMEM, off, "the JSON parser stopped here (out of memory?)");
    }
  }
  if (c.rc == 0 && (p = malloc(sizeof(*p))) == NULL) fail(&c, SC_ENOMEM, 0, "out of memory");
  if (c.rc == 0) {
    *p = (cli_jsonpos){c.s, c.len, root, NULL, 0, NULL, 0};
    const cJSON *first = NULL, *dup = NULL;
    cli_jsonpos_at first_at = {0, 0};
    int rc = find_duplicate(root, &first, &dup);
    if (rc != 0) {
      fail(&c, rc, 0, "out of memory");
    } else if (dup != NULL) {
      const spot *second = find(p, dup);
      char quoted[128];
      if (second == NULL || !cli_jsonpos_key(p, first, &first_at))
        fail(&c, SC_ENOMEM, 0, "out of memory"); /* the spots could not be made */
      else
        fail(&c, SC_EPARSE, second->key, "duplicate member %s (first at %u:%u)",
             cli_jsonpos_quote(quoted, sizeof(quoted), dup->string), (unsigned)first_at.line,
             (unsigned)first_at.column);
    }
  }
  if (c.rc != 0) {
    cJSON_Delete(root);
    cli_jsonpos_free(p);
    if (where) *where = position_of(c.s, c.where);
    return c.rc;
  }
  *out = root;
  *positions = p;
  return 0;
}

void cli_jsonpos_free(cli_jsonpos *positions) {
  if (positions == NULL) return;
  free(positions->spots);
  free(positions->lines);
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
