/* The event encoder against a reference: a plain byte-at-a-time writer that follows
 * docs/events.md literally. The library's encoder is tuned for speed; these cases hold it to the
 * exact bytes of the reference (the log's hash chain depends on them) over every event type and
 * status, absent fields, unicode, bytes that are not UTF-8, every escape, awkward numbers, deep
 * and big data, and buffers too small for the line. */
#include <float.h>
#include <math.h>
#include <pthread.h>

#include "harness.h"

/* ---- the reference writer ---- */

typedef struct ref {
  char *p;
  size_t len, cap;
} ref;

static void ref_put(ref *r, const void *p, size_t n) {
  if (r->len + n + 1 > r->cap) {
    while (r->len + n + 1 > r->cap)
      r->cap = r->cap ? r->cap * 2 : 1024;
    r->p = realloc(r->p, r->cap);
    assert_non_null(r->p);
  }
  memcpy(r->p + r->len, p, n);
  r->len += n;
  r->p[r->len] = '\0';
}

static void ref_puts(ref *r, const char *s) {
  ref_put(r, s, strlen(s));
}

static void ref_putc(ref *r, char c) {
  ref_put(r, &c, 1);
}

/* The length of a well-formed UTF-8 sequence at s (RFC 3629), 0 when there is none. */
static size_t ref_utf8(const unsigned char *s) {
  unsigned lo = 0x80, hi = 0xBF;
  size_t len;
  if (s[0] >= 0xC2 && s[0] <= 0xDF) {
    len = 2;
  } else if (s[0] >= 0xE0 && s[0] <= 0xEF) {
    len = 3;
    if (s[0] == 0xE0) lo = 0xA0;
    if (s[0] == 0xED) hi = 0x9F;
  } else if (s[0] >= 0xF0 && s[0] <= 0xF4) {
    len = 4;
    if (s[0] == 0xF0) lo = 0x90;
    if (s[0] == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (s[1] < lo || s[1] > hi) return 0;
  for (size_t i = 2; i < len; i++)
    if (s[i] < 0x80 || s[i] > 0xBF) return 0;
  return len;
}

static void ref_string(ref *r, const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  ref_putc(r, '"');
  while (*p) {
    unsigned char c = *p;
    char esc[8];
    if (c == '"' || c == '\\') {
      ref_putc(r, '\\');
      ref_putc(r, (char)c);
    } else if (c == '\n') {
      ref_puts(r, "\\n");
    } else if (c == '\r') {
      ref_puts(r, "\\r");
    } else if (c == '\t') {
      ref_puts(r, "\\t");
    } else if (c == '\b') {
      ref_puts(r, "\\b");
    } else if (c == '\f') {
      ref_puts(r, "\\f");
    } else if (c < 0x20) {
      snprintf(esc, sizeof(esc), "\\u%04x", c);
      ref_puts(r, esc);
    } else if (c >= 0x80) {
      size_t n = ref_utf8(p);
      if (n == 0) {
        ref_puts(r, "\xef\xbf\xbd");
        n = 1;
      } else {
        ref_put(r, p, n);
      }
      p += n;
      continue;
    } else {
      ref_putc(r, (char)c);
    }
    p++;
  }
  ref_putc(r, '"');
}

static void ref_number(ref *r, double v) {
  char tmp[40];
  if (isnan(v) || isinf(v)) {
    ref_puts(r, "null");
  } else if (v == 0 && signbit(v)) { /* -0 is a value of its own (docs/events.md) */
    ref_puts(r, "-0");
  } else if (v == floor(v) && fabs(v) < 9007199254740992.0) {
    snprintf(tmp, sizeof(tmp), "%lld", (long long)v);
    ref_puts(r, tmp);
  } else {
    snprintf(tmp, sizeof(tmp), "%.15g", v);
    if (strtod(tmp, NULL) != v) snprintf(tmp, sizeof(tmp), "%.17g", v);
    ref_puts(r, tmp);
  }
}

static void ref_value(ref *r, const cJSON *v) {
  switch (v->type & 0xFF) {
    case cJSON_False: ref_puts(r, "false"); break;
    case cJSON_True: ref_puts(r, "true"); break;
    case cJSON_Number: ref_number(r, v->valuedouble); break;
    case cJSON_String: ref_string(r, v->valuestring ? v->valuestring : ""); break;
    case cJSON_Raw: ref_puts(r, v->valuestring); break;
    case cJSON_Array:
    case cJSON_Object: {
      bool object = (v->type & 0xFF) == cJSON_Object;
      ref_putc(r, object ? '{' : '[');
      for (const cJSON *c = v->child; c != NULL; c = c->next) {
        if (object) {
          ref_string(r, c->string ? c->string : "");
          ref_putc(r, ':');
        }
        ref_value(r, c);
        if (c->next) ref_putc(r, ',');
      }
      ref_putc(r, object ? '}' : ']');
      break;
    }
    default: ref_puts(r, "null"); break; /* cJSON_NULL and anything invalid */
  }
}

static void ref_time(ref *r, int64_t time_ns) {
  int64_t sec = time_ns / 1000000000, ns = time_ns % 1000000000;
  if (ns < 0) ns += 1000000000, sec -= 1;
  int64_t days = sec / 86400, rem = sec % 86400;
  if (rem < 0) rem += 86400, days -= 1;
  /* Walk the calendar a year at a time from 1970: slow and plainly right. */
  int64_t year = 1970;
  for (;;) {
    int64_t y = days < 0 ? year - 1 : year;
    int64_t len = (y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)) ? 366 : 365;
    if (days < 0) {
      days += len;
      year--;
    } else if (days >= len) {
      days -= len;
      year++;
    } else {
      break;
    }
  }
  bool leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
  int month_len[] = {31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  int month = 0;
  while (days >= month_len[month])
    days -= month_len[month++];
  char tmp[64];
  snprintf(tmp, sizeof(tmp), "\"%04lld-%02d-%02lldT%02lld:%02lld:%02lld.%06lldZ\"", (long long)year,
           month + 1, (long long)days + 1, (long long)(rem / 3600), (long long)(rem / 60 % 60),
           (long long)(rem % 60), (long long)(ns / 1000));
  ref_puts(r, tmp);
}

static bool ref_common(const char *k) {
  return k != NULL && (strcmp(k, "stage") == 0 || strcmp(k, "status") == 0 ||
                       strcmp(k, "index") == 0 || strcmp(k, "attempt") == 0);
}

static void ref_attr(ref *r, const char *name, const char *value) {
  if (value == NULL) return;
  ref_puts(r, ",\"");
  ref_puts(r, name);
  ref_puts(r, "\":");
  ref_string(r, value);
}

static void ref_event(ref *r, const sc_event *ev) {
  char tmp[64];
  ref_puts(r, "{\"specversion\":\"1.0\",\"id\":");
  ref_string(r, ev->task_id);
  r->len--;
  snprintf(tmp, sizeof(tmp), "/%llu\"", (unsigned long long)ev->seq);
  ref_puts(r, tmp);
  ref_puts(r, ",\"source\":");
  ref_string(r, ev->source ? ev->source : "stagecoach");
  ref_puts(r, ",\"type\":");
  ref_string(r, sc_event_type_name(ev->type));
  ref_puts(r, ",\"time\":");
  ref_time(r, ev->time_ns);
  ref_attr(r, "subject", ev->task_id);
  ref_puts(r,
           ",\"datacontenttype\":\"application/json\",\"dataschema\":\"urn:stagecoach:event:1\"");
  ref_attr(r, "taskid", ev->task_id);
  ref_attr(r, "tenantid", ev->tenant_id);
  ref_attr(r, "planid", ev->plan_id);
  snprintf(tmp, sizeof(tmp), ",\"seq\":%llu,\"epoch\":%llu", (unsigned long long)ev->seq,
           (unsigned long long)ev->epoch);
  ref_puts(r, tmp);
  ref_attr(r, "traceparent", ev->traceparent);
  ref_puts(r, ",\"data\":{");
  if (ev->stage != NULL) {
    ref_puts(r, "\"stage\":");
    ref_string(r, ev->stage);
    ref_putc(r, ',');
  }
  if (ev->stage != NULL || ev->stage_index != -1) {
    snprintf(tmp, sizeof(tmp), "\"index\":%d,", (int)ev->stage_index);
    ref_puts(r, tmp);
  }
  if (ev->stage != NULL || ev->attempt != 0) {
    snprintf(tmp, sizeof(tmp), "\"attempt\":%u,", (unsigned)ev->attempt);
    ref_puts(r, tmp);
  }
  ref_puts(r, "\"status\":");
  ref_string(r, sc_task_status_name(ev->status));
  if (ev->data != NULL && cJSON_IsObject(ev->data)) {
    for (const cJSON *c = ev->data->child; c != NULL; c = c->next) {
      if (ref_common(c->string)) continue;
      ref_putc(r, ',');
      ref_string(r, c->string ? c->string : "");
      ref_putc(r, ':');
      ref_value(r, c);
    }
  }
  ref_puts(r, "}}");
}

/* ---- a deterministic generator of awkward values ---- */

static uint64_t rng_state;

static uint64_t rng(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

static unsigned pick(unsigned n) {
  return (unsigned)(rng() % n);
}

/* Pieces a string is made of: plain text, every escape, UTF-8 of each length, and bytes that are
 * not UTF-8 (lone continuations, overlong forms, surrogates, beyond U+10FFFF, cut sequences). */
static const char *const pieces[] = {
    "a",
    "deploy",
    "0190f5d2-7c3e-7a11",
    "/",
    " ",
    "~",
    "\x7f",
    "\"",
    "\\",
    "\n",
    "\r",
    "\t",
    "\b",
    "\f",
    "\x01",
    "\x1f",
    "\x1b[0m",
    "\xc3\xa9",
    "\xc2\x80",
    "\xdf\xbf",
    "\xe2\x80\x94",
    "\xe0\xa0\x80",
    "\xed\x9f\xbf",
    "\xef\xbf\xbf",
    "\xf0\x9f\x98\x80",
    "\xf0\x90\x80\x80",
    "\xf4\x8f\xbf\xbf",
    "\x80",
    "\xbf",
    "\xc0\x80",
    "\xc1\xbf",
    "\xe0\x80\x80",
    "\xed\xa0\x80",
    "\xf0\x80\x80\x80",
    "\xf4\x90\x80\x80",
    "\xf5\x80\x80\x80",
    "\xff",
    "\xfe",
    "\xc3",
    "\xe2\x80",
    "\xf0\x9f\x98",
    "sha256:9f2c1d0b8e7a6f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b",
};

/* A string of about want bytes into out[cap]: mostly clean text with some pieces mixed in at a
 * rate that varies from string to string. */
static char *random_string(char *out, size_t cap, size_t want) {
  size_t len = 0;
  unsigned dirt = pick(4); /* 0: clean ASCII only */
  while (len < want) {
    const char *p;
    char letter[2] = {(char)('a' + pick(26)), '\0'};
    if (dirt == 0 || pick(8) >= dirt)
      p = letter;
    else
      p = pieces[pick(sizeof(pieces) / sizeof(pieces[0]))];
    size_t n = strlen(p);
    if (len + n >= cap) break;
    memcpy(out + len, p, n);
    len += n;
  }
  out[len] = '\0';
  return out;
}

static size_t random_length(void) {
  switch (pick(4)) {
    case 0: return pick(17); /* around one 8- or 16-byte word */
    case 1: return pick(80);
    case 2: return pick(400);
    default: return pick(3000);
  }
}

static double random_number(void) {
  static const double special[] = {0.0,
                                   -0.0,
                                   1.0,
                                   -1.0,
                                   0.1,
                                   1.0 / 3.0,
                                   -2.5,
                                   9007199254740991.0,
                                   -9007199254740991.0,
                                   9007199254740992.0,
                                   -9007199254740992.0,
                                   1e15,
                                   1e16,
                                   123456789012345678.0,
                                   1e300,
                                   -1e-300,
                                   DBL_MAX,
                                   -DBL_MAX,
                                   DBL_MIN,
                                   5e-324,
                                   4503599627370495.5,
                                   0.30000000000000004};
  switch (pick(5)) {
    case 0: return special[pick(sizeof(special) / sizeof(special[0]))];
    case 1: return (double)(int64_t)(rng() >> pick(64)) * (pick(2) ? 1 : -1);
    case 2: return (double)(rng() >> 11) / (double)(1ull << pick(60));
    case 3: {
      double d;
      uint64_t bits = rng();
      memcpy(&d, &bits, sizeof(d)); /* any bit pattern: NaNs, infinities, subnormals */
      return d;
    }
    default: return (double)pick(100000);
  }
}

static cJSON *random_value(unsigned depth, size_t *budget);

static cJSON *random_string_value(void) {
  static char buf[4096];
  return cJSON_CreateString(random_string(buf, sizeof(buf), random_length()));
}

static cJSON *random_container(bool object, unsigned depth, size_t *budget) {
  cJSON *c = object ? cJSON_CreateObject() : cJSON_CreateArray();
  unsigned n = pick(pick(8) == 0 ? 40 : 6);
  for (unsigned i = 0; i<n && * budget> 0; i++) {
    cJSON *v = random_value(depth + 1, budget);
    if (!object) {
      cJSON_AddItemToArray(c, v);
    } else if (pick(40) == 0) {
      cJSON_AddItemToArray(c, v); /* an object member without a key: written as "" */
    } else {
      char key[128];
      static const char *const common[] = {"stage", "status", "index", "attempt", "stag", ""};
      const char *k = pick(6) == 0 ? common[pick(6)] : random_string(key, sizeof(key), pick(20));
      cJSON_AddItemToObject(c, k, v);
    }
  }
  return c;
}

static cJSON *random_value(unsigned depth, size_t *budget) {
  *budget -= *budget > 0;
  unsigned kind = depth > 6 ? pick(6) : pick(10);
  switch (kind) {
    case 0: return cJSON_CreateNull();
    case 1: return cJSON_CreateBool(pick(2));
    case 2: return cJSON_CreateNumber(random_number());
    case 3:
    case 4: return random_string_value();
    case 5: {
      if (pick(4) != 0) return cJSON_CreateRaw("{\"raw\":[1,2,3]}");
      cJSON *v = random_string_value();
      free(v->valuestring); /* a string node with no text: written as "" */
      v->valuestring = NULL;
      return v;
    }
    case 6:
    case 7: return random_container(false, depth, budget);
    default: return random_container(true, depth, budget);
  }
}

/* ---- the cases ---- */

static const char *random_or_null(char *buf, size_t cap) {
  return pick(4) == 0 ? NULL : random_string(buf, cap, random_length() % 200);
}

static int64_t random_time(int64_t previous) {
  if (previous > INT64_MAX - 4000000000LL) previous = 1795861800123456000LL;
  switch (pick(4)) {
    case 0: return previous + (int64_t)pick(1000) * 1000; /* the same second, mostly */
    case 1: return previous + (int64_t)pick(3) * 1000000000;
    case 2: return (int64_t)rng(); /* anywhere in 1677 .. 2262, either side of 1970 */
    default: return pick(2) ? INT64_MAX - (int64_t)pick(1000) : INT64_MIN + (int64_t)pick(1000);
  }
}

static void assert_encodes_as_reference(const sc_event *ev) {
  ref want = {0};
  ref_event(&want, ev);
  size_t len = 0;
  char *got = sc_event_to_json(ev, &len);
  assert_non_null(got);
  if (len != want.len || memcmp(got, want.p, len) != 0) {
    size_t at = 0;
    while (at < len && at < want.len && got[at] == want.p[at])
      at++;
    fail_msg("encoder and reference differ at byte %zu of %zu/%zu:\n got  %.120s\n want %.120s", at,
             len, want.len, got + (at > 20 ? at - 20 : 0), want.p + (at > 20 ? at - 20 : 0));
  }
  assert_int_equal(got[len], '\0');
  /* The same bytes into a caller's buffer: every size around the line's and some far below. */
  size_t caps[] = {want.len + 1, want.len, want.len - 1, pick((unsigned)want.len + 1), 0, 1};
  char *buf = malloc(want.len + 64);
  assert_non_null(buf);
  for (size_t i = 0; i < sizeof(caps) / sizeof(caps[0]); i++) {
    memset(buf, 0x5a, want.len + 64);
    long n = sc_event_encode(ev, buf, caps[i]);
    assert_int_equal(n, (long)want.len);
    size_t written = caps[i] < want.len ? caps[i] : want.len;
    assert_memory_equal(buf, want.p, written);
    for (size_t k = written; k < want.len + 64; k++)
      if (buf[k] != 0x5a) fail_msg("byte %zu written past the %zu that fit", k, caps[i]);
  }
  free(buf);
  free(got);
  free(want.p);
}

static void every_type_and_status_encodes_as_the_reference(void **state) {
  (void)state;
  cJSON *data = json_or_die("{\"output\":{\"a\":[1,2.5,null,true]},\"digest\":\"sha256:00\","
                            "\"stage\":\"ignored\",\"status\":\"ignored\",\"index\":9,"
                            "\"attempt\":9,\"context\":{\"k\":\"v\\u00e9\"}}");
  for (int t = 0; t < SC_EV__COUNT; t++) {
    for (int s = 0; s < SC_TASK__COUNT; s++) {
      for (int variant = 0; variant < 4; variant++) {
        sc_event ev = {0};
        ev.type = (sc_event_type)t;
        ev.status = (sc_task_status)s;
        ev.seq = 1 + (uint64_t)t * 977 + (uint64_t)s;
        ev.epoch = (uint64_t)variant;
        ev.time_ns = 1795861800123456000LL + (int64_t)t * 1000000000LL + s * 1000;
        ev.task_id = "0190f5d2-7c3e-7a11-9b2c-3d4e5f607182";
        ev.stage_index = variant & 1 ? 2 : -1;
        ev.attempt = variant & 2 ? 1u : 0u;
        if (variant == 3) {
          ev.tenant_id = "acme";
          ev.plan_id = "tenant-deploy";
          ev.traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
          ev.stage = "deploy";
          ev.source = "https://example.com/engine";
        }
        ev.data = variant == 0 ? NULL : data;
        assert_encodes_as_reference(&ev);
      }
    }
  }
  cJSON_Delete(data);
}

static void random_events_encode_as_the_reference(void **state) {
  (void)state;
  rng_state = 0x9e3779b97f4a7c15ull;
  char task[512], tenant[512], plan[512], trace[512], stage[512], source[512];
  int64_t time_ns = 1795861800123456000LL;
  for (int i = 0; i < 1500; i++) {
    size_t budget = pick(10) == 0 ? 3000 : 60;
    cJSON *data = pick(10) == 0 ? NULL : random_value(0, &budget);
    if (data != NULL && pick(3) != 0 && !cJSON_IsObject(data)) {
      cJSON_Delete(data);
      data = random_container(true, 0, &budget);
    }
    sc_event ev = {0};
    ev.type = (sc_event_type)pick(SC_EV__COUNT);
    ev.status = (sc_task_status)pick(SC_TASK__COUNT);
    ev.seq = pick(3) == 0 ? rng() : 1 + pick(1000);
    ev.epoch = pick(3) == 0 ? rng() >> pick(64) : pick(3);
    ev.time_ns = time_ns = random_time(time_ns);
    ev.task_id = random_string(task, sizeof(task), random_length() % 300);
    ev.tenant_id = random_or_null(tenant, sizeof(tenant));
    ev.plan_id = random_or_null(plan, sizeof(plan));
    ev.traceparent = random_or_null(trace, sizeof(trace));
    ev.stage = random_or_null(stage, sizeof(stage));
    ev.source = random_or_null(source, sizeof(source));
    ev.stage_index = pick(4) == 0 ? (int32_t)(uint32_t)rng() : (int32_t)pick(20) - 1;
    ev.attempt = pick(4) == 0 ? (uint32_t)rng() : pick(4);
    ev.data = data;
    assert_encodes_as_reference(&ev);
    cJSON_Delete(data);
  }
}

static void every_string_length_around_the_word_size_encodes_as_the_reference(void **state) {
  (void)state;
  /* One piece that needs a look at each position of clean strings of 0 .. 40 bytes. */
  static const char *const dirty[] = {"\"",
                                      "\\",
                                      "\n",
                                      "\x01",
                                      "\x1f",
                                      "\x7f",
                                      "\xc3\xa9",
                                      "\xe2\x80\x94",
                                      "\xf0\x9f\x98\x80",
                                      "\x80",
                                      "\xc3",
                                      "\xe2\x80",
                                      "\xed\xa0\x80",
                                      " "};
  char s[64];
  sc_event ev = {0};
  ev.type = SC_EV_STAGE_COMPLETED;
  ev.seq = 1;
  ev.stage_index = -1;
  for (size_t len = 0; len <= 40; len++) {
    for (size_t d = 0; d < sizeof(dirty) / sizeof(dirty[0]); d++) {
      for (size_t at = 0; at <= len; at++) {
        size_t dl = strlen(dirty[d]);
        memset(s, 'x', len);
        memcpy(s + at, dirty[d], dl);
        memset(s + at + dl, 'y', len - at);
        s[len + dl] = '\0';
        ev.task_id = s;
        ev.stage = s;
        assert_encodes_as_reference(&ev);
      }
    }
  }
}

static void a_big_context_encodes_as_the_reference(void **state) {
  (void)state;
  rng_state = 12345;
  cJSON *context = cJSON_CreateObject();
  char key[32], value[2048];
  for (int i = 0; i < 2000; i++) {
    snprintf(key, sizeof(key), "k%04d", i);
    cJSON_AddItemToObject(context, key,
                          i % 3 ? cJSON_CreateString(random_string(value, sizeof(value), 300))
                                : cJSON_CreateNumber(random_number()));
  }
  cJSON *data = cJSON_CreateObject();
  cJSON_AddItemToObject(data, "context", context);
  cJSON_AddItemToObject(data, "output", cJSON_CreateString(random_string(value, 2048, 2000)));
  sc_event ev = {0};
  ev.type = SC_EV_TASK_CREATED;
  ev.seq = 1;
  ev.stage_index = -1;
  ev.task_id = "t";
  ev.data = data;
  assert_encodes_as_reference(&ev);
  cJSON_Delete(data);
}

/* The growable form under a failing allocator (test_codec is linked with --wrap=realloc, the one
 * call the line's buffer grows by): each growth fails in turn until one run gets through; every
 * run gives either NULL (out of memory) or the reference's bytes, never a line with a hole. */
void *__real_realloc(void *p, size_t n);
static long realloc_countdown = -1; /* reallocs left before the one that fails; -1: never */

void *__wrap_realloc(void *p, size_t n) {
  if (realloc_countdown >= 0 && realloc_countdown-- == 0) return NULL;
  return __real_realloc(p, n);
}

static void to_json_under_failing_growth_is_the_reference_or_nothing(void **state) {
  (void)state;
  char big[3000];
  memset(big, 'x', sizeof(big) - 1);
  big[sizeof(big) - 1] = '\0';
  cJSON *data = cJSON_CreateObject();
  cJSON_AddStringToObject(data, "output", big);
  sc_event ev = {0};
  ev.type = SC_EV_STAGE_COMPLETED;
  ev.seq = 3;
  ev.stage_index = 1;
  ev.stage = "deploy";
  ev.task_id = big + sizeof(big) - 1 - 600; /* 600 bytes, three times in the line */
  ev.data = data;
  ref want = {0};
  ref_event(&want, &ev);
  bool succeeded = false;
  for (long n = 0; n < 64 && !succeeded; n++) {
    size_t len = 0;
    realloc_countdown = n;
    char *got = sc_event_to_json(&ev, &len);
    realloc_countdown = -1;
    if (got == NULL) {
      assert_non_null(strstr(sc_error_message(), "out of memory"));
      assert_int_equal(len, 0);
      continue;
    }
    assert_int_equal(len, want.len);
    assert_memory_equal(got, want.p, len);
    free(got);
    succeeded = n > 0; /* the first runs failed a growth; this one had all it asked for */
  }
  assert_true(succeeded);
  free(want.p);
  cJSON_Delete(data);
}

/* The date and time up to the second is cached per thread: two threads that encode at once, each
 * in seconds of its own, still get their own times. */
typedef struct encoder_thread {
  pthread_t thread;
  int64_t base_ns;
  int mismatches;
} encoder_thread;

static void *encode_in_a_thread(void *arg) {
  encoder_thread *t = arg;
  sc_event ev = {0};
  ev.type = SC_EV_STAGE_STARTED;
  ev.task_id = "0190f5d2-7c3e-7a11-9b2c-3d4e5f607182";
  ev.stage = "deploy";
  ev.stage_index = 1;
  ev.attempt = 1;
  char buf[1024];
  for (int i = 0; i < 20000; i++) {
    ev.seq = (uint64_t)i + 1;
    ev.time_ns = t->base_ns + (int64_t)(i % 3) * 86400 * 1000000000LL + (int64_t)i * 1000;
    ref want = {0};
    ref_event(&want, &ev);
    long n = sc_event_encode(&ev, buf, sizeof(buf));
    if (n != (long)want.len || memcmp(buf, want.p, want.len) != 0) t->mismatches++;
    free(want.p);
  }
  return NULL;
}

static void threads_encoding_at_once_each_get_their_own_times(void **state) {
  (void)state;
  encoder_thread t[2] = {{.base_ns = 1795861800123456000LL}, {.base_ns = 946684799999999000LL}};
  for (int i = 0; i < 2; i++)
    assert_int_equal(pthread_create(&t[i].thread, NULL, encode_in_a_thread, &t[i]), 0);
  for (int i = 0; i < 2; i++) {
    assert_int_equal(pthread_join(t[i].thread, NULL), 0);
    assert_int_equal(t[i].mismatches, 0);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(every_type_and_status_encodes_as_the_reference),
      cmocka_unit_test(random_events_encode_as_the_reference),
      cmocka_unit_test(every_string_length_around_the_word_size_encodes_as_the_reference),
      cmocka_unit_test(a_big_context_encodes_as_the_reference),
      cmocka_unit_test(threads_encoding_at_once_each_get_their_own_times),
      cmocka_unit_test(to_json_under_failing_growth_is_the_reference_or_nothing),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
