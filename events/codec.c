/* The CloudEvents 1.0 JSON codec for stagecoach events: a direct writer (no cJSON tree is built
 * for the envelope) and a parser that reads every attribute back. The schema is docs/events.md. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

#define DATASCHEMA "urn:stagecoach:event:1"

int64_t sc__now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + (ts.tv_nsec / 1000) * 1000;
}

/* Days since 1970-01-01 of a civil date, and back (proleptic Gregorian calendar). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = (unsigned)(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d) {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const unsigned doe = (unsigned)(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  *d = doy - (153 * mp + 2) / 5 + 1;
  *m = mp < 10 ? mp + 3 : mp - 9;
  *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

/* "2026-11-22T10:30:00.123456Z", quoted. The part up to the seconds is cached per thread: events
 * come in bursts. */
static void put_time(sc__buf *b, int64_t time_ns) {
  static _Thread_local int64_t cached_sec = INT64_MIN;
  static _Thread_local char cached[48]; /* the opening quote and 19 characters */
  int64_t sec = time_ns / 1000000000, ns = time_ns % 1000000000;
  if (ns < 0) {
    ns += 1000000000;
    sec -= 1;
  }
  if (sec != cached_sec) {
    int64_t days = sec / 86400, rem = sec % 86400, y;
    if (rem < 0) {
      rem += 86400;
      days -= 1;
    }
    unsigned m, d;
    civil_from_days(days, &y, &m, &d);
    snprintf(cached, sizeof(cached), "\"%04lld-%02u-%02uT%02u:%02u:%02u", (long long)y, m, d,
             (unsigned)(rem / 3600), (unsigned)(rem / 60 % 60), (unsigned)(rem % 60));
    cached_sec = sec;
  }
  char out[30];
  memcpy(out, cached, 20);
  out[20] = '.';
  unsigned us = (unsigned)(ns / 1000);
  for (int i = 26; i >= 21; i--) {
    out[i] = (char)('0' + us % 10);
    us /= 10;
  }
  out[27] = 'Z';
  out[28] = '"';
  sc__buf_put(b, out, 29);
}

void sc__format_time(int64_t time_ns, char out[32]) {
  sc__buf b;
  sc__buf_init_fixed(&b, out, 31);
  put_time(&b, time_ns);
  memmove(out, out + 1, 27); /* drop the quotes */
  out[27] = '\0';
}

static bool is_common_member(const char *k) {
  if (k == NULL) return false;
  switch (k[0]) {
    case 's': return strcmp(k, "stage") == 0 || strcmp(k, "status") == 0;
    case 'i': return strcmp(k, "index") == 0;
    case 'a': return strcmp(k, "attempt") == 0;
    default: return false;
  }
}

static void put_attr(sc__buf *b, const char *lit, size_t litlen, const char *value) {
  if (value == NULL) return;
  sc__buf_put(b, lit, litlen);
  sc__json_string(b, value);
}
#define PUT_ATTR(b, name, value)                                                                   \
  put_attr((b), ",\"" name "\":", sizeof(",\"" name "\":") - 1, (value))

/* One of the library's own names (an event type, a task status), quoted: they are plain ASCII
 * with nothing to escape (test_codec holds the encoder to a reference that escapes them). */
static void put_name(sc__buf *b, const char *name) {
  size_t n = strlen(name);
  if (b->len + n + 2 <= b->cap) {
    char *d = b->p + b->len;
    d[0] = '"';
    memcpy(d + 1, name, n);
    d[n + 1] = '"';
    b->len += n + 2;
  } else {
    sc__json_string_n(b, name, n);
  }
}

/* The task id goes out three times (id, subject, taskid): it is escaped once, and the later two
 * copy its opening quote and text from where they were written, when all of them are there (a
 * fixed buffer may have cut them off; s is escaped again then). */
typedef struct written {
  size_t at, len;
} written;

static void put_again(sc__buf *b, written w, const char *s) {
  if (!b->oom && w.at + w.len <= b->cap &&
      (b->len + w.len + 1 <= b->cap || sc__buf_reserve(b, w.len + 1))) {
    memcpy(b->p + b->len, b->p + w.at, w.len); /* after the reserve: p may have moved */
    b->len += w.len;
    b->p[b->len++] = '"';
  } else {
    sc__json_string(b, s);
  }
}

static void encode(sc__buf *b, const sc_event *ev) {
  sc__buf_lit(b, "{\"specversion\":\"1.0\",\"id\":");
  written id = {b->len, 0};
  sc__json_string(b, ev->task_id);
  /* Reopen the string to append "/<seq>". A growable buffer whose first growth failed holds
   * nothing: its length must not wrap below 0 (the line is dropped as out of memory anyway). */
  if (b->len > id.at) b->len--;
  id.len = b->len - id.at;
  sc__buf_putc(b, '/');
  sc__json_uint(b, ev->seq);
  sc__buf_putc(b, '"');
  sc__buf_lit(b, ",\"source\":");
  if (ev->source != NULL)
    sc__json_string(b, ev->source);
  else
    sc__buf_lit(b, "\"stagecoach\"");
  sc__buf_lit(b, ",\"type\":");
  put_name(b, sc_event_type_name(ev->type));
  sc__buf_lit(b, ",\"time\":");
  put_time(b, ev->time_ns);
  sc__buf_lit(b, ",\"subject\":");
  put_again(b, id, ev->task_id);
  sc__buf_lit(b, ",\"datacontenttype\":\"application/json\",\"dataschema\":\"" DATASCHEMA "\"");
  sc__buf_lit(b, ",\"taskid\":");
  put_again(b, id, ev->task_id);
  PUT_ATTR(b, "tenantid", ev->tenant_id);
  PUT_ATTR(b, "planid", ev->plan_id);
  sc__buf_lit(b, ",\"seq\":");
  sc__json_uint(b, ev->seq);
  sc__buf_lit(b, ",\"epoch\":");
  sc__json_uint(b, ev->epoch);
  PUT_ATTR(b, "traceparent", ev->traceparent);
  sc__buf_lit(b, ",\"data\":{");
  if (ev->stage != NULL) {
    sc__buf_lit(b, "\"stage\":");
    sc__json_string(b, ev->stage);
    sc__buf_putc(b, ',');
  }
  if (ev->stage != NULL || ev->stage_index != -1) {
    sc__buf_lit(b, "\"index\":");
    sc__json_int(b, ev->stage_index);
    sc__buf_putc(b, ',');
  }
  if (ev->stage != NULL || ev->attempt != 0) {
    sc__buf_lit(b, "\"attempt\":");
    sc__json_uint(b, ev->attempt);
    sc__buf_putc(b, ',');
  }
  sc__buf_lit(b, "\"status\":");
  put_name(b, sc_task_status_name(ev->status));
  if (ev->data != NULL && cJSON_IsObject(ev->data)) {
    for (const cJSON *c = ev->data->child; c != NULL; c = c->next) {
      if (is_common_member(c->string)) continue;
      sc__buf_putc(b, ',');
      sc__json_string(b, c->string ? c->string : "");
      sc__buf_putc(b, ':');
      sc__json_value(b, c, false);
    }
  }
  sc__buf_lit(b, "}}");
}

static int check_event(const sc_event *ev) {
  if (ev == NULL || ev->task_id == NULL) return sc__error(SC_EINVAL, "event: missing task id");
  if ((unsigned)ev->type >= SC_EV__COUNT)
    return sc__error(SC_EINVAL, "event: type %d out of range", (int)ev->type);
  if ((unsigned)ev->status >= SC_TASK__COUNT)
    return sc__error(SC_EINVAL, "event: status %d out of range", (int)ev->status);
  return SC_OK;
}

char *sc_event_to_json(const sc_event *ev, size_t *len) {
  if (len) *len = 0;
  if (check_event(ev) != SC_OK) return NULL;
  sc__buf b;
  sc__buf_init(&b);
  sc__buf_reserve(&b, 512);
  encode(&b, ev);
  if (!sc__buf_cstr(&b)) {
    sc__buf_free(&b);
    sc__error(SC_ENOMEM, "event: out of memory");
    return NULL;
  }
  if (len) *len = b.len;
  return b.p;
}

long sc_event_encode(const sc_event *ev, char *buf, size_t cap) {
  int rc = check_event(ev);
  if (rc != SC_OK) return rc;
  sc__buf b;
  sc__buf_init_fixed(&b, buf, cap);
  encode(&b, ev);
  return (long)b.len;
}

/* ---- parsing ---- */

struct sc_event_doc {
  cJSON *root;
  sc_event ev;
};

static int parse_digits(const char **p, int n, unsigned *out) {
  unsigned v = 0;
  for (int i = 0; i < n; i++, (*p)++) {
    if (**p < '0' || **p > '9') return -1;
    v = v * 10 + (unsigned)(**p - '0');
  }
  *out = v;
  return 0;
}

/* RFC 3339: "YYYY-MM-DDTHH:MM:SS[.frac](Z|+hh:mm|-hh:mm)". */
static int parse_time(const char *s, int64_t *out) {
  unsigned y, mo, d, h, mi, se, oh = 0, om = 0;
  const char *p = s;
  if (parse_digits(&p, 4, &y) || *p++ != '-' || parse_digits(&p, 2, &mo) || *p++ != '-' ||
      parse_digits(&p, 2, &d) || (*p != 'T' && *p != 't' && *p != ' ') || !*p++ ||
      parse_digits(&p, 2, &h) || *p++ != ':' || parse_digits(&p, 2, &mi) || *p++ != ':' ||
      parse_digits(&p, 2, &se))
    return -1;
  static const unsigned days_in[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  if (mo < 1 || mo > 12 || h > 23 || mi > 59 || se > 60) return -1;
  if (d < 1 || d > days_in[mo - 1] + (mo == 2 && leap)) return -1;
  int64_t ns = 0;
  if (*p == '.') {
    p++;
    int digits = 0;
    int64_t scale = 100000000;
    for (; *p >= '0' && *p <= '9'; p++, digits++) {
      ns += (*p - '0') * scale;
      scale /= 10;
    }
    if (digits == 0) return -1;
  }
  int sign = 0;
  if (*p == 'Z' || *p == 'z') {
    p++;
  } else if (*p == '+' || *p == '-') {
    sign = *p++ == '+' ? 1 : -1;
    if (parse_digits(&p, 2, &oh) || *p++ != ':' || parse_digits(&p, 2, &om)) return -1;
  } else {
    return -1;
  }
  if (*p != '\0') return -1;
  int64_t sec = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se;
  sec -= sign * (int64_t)(oh * 3600 + om * 60);
  /* time_ns counts nanoseconds in an int64: 1677-09-21 to 2262-04-11. */
  if (sec >= INT64_MAX / 1000000000 || sec <= INT64_MIN / 1000000000) return -1;
  *out = sec * 1000000000 + ns;
  return 0;
}

static const char *get_string(const cJSON *o, const char *name) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* An optional string attribute: absent is fine (*out NULL), any other type is refused. */
static bool get_optional_string(const cJSON *o, const char *name, const char **out) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
  *out = cJSON_IsString(v) ? v->valuestring : NULL;
  return v == NULL || cJSON_IsString(v);
}

/* A non-negative integer member; -1 missing, -2 present but not such a number. */
static int get_count(const cJSON *o, const char *name, double max, double *out) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
  if (v == NULL) return -1;
  if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > max ||
      v->valuedouble != (double)(int64_t)v->valuedouble)
    return -2;
  *out = v->valuedouble;
  return 0;
}

static int parse_fail(sc_event_doc *d, const char *what, const char *name) {
  sc_event_doc_free(d);
  return sc__error(SC_EPARSE, "event: %s \"%s\"", what, name);
}

static int read_data(sc_event_doc *d, const cJSON *data) {
  sc_event *ev = &d->ev;
  double num;
  if (!cJSON_IsObject(data)) return parse_fail(d, "missing or non-object member", "data");
  ev->data = data;
  const cJSON *context = cJSON_GetObjectItemCaseSensitive(data, "context");
  ev->context = cJSON_IsObject(context) ? context : NULL;
  const char *status = get_string(data, "status");
  if (status == NULL) return parse_fail(d, "missing or non-string member", "data.status");
  if (sc_task_status_from_name(status, &ev->status) != SC_OK)
    return parse_fail(d, "unknown status in", "data.status");
  const cJSON *stage = cJSON_GetObjectItemCaseSensitive(data, "stage");
  if (stage != NULL && !cJSON_IsString(stage) && !cJSON_IsNull(stage))
    return parse_fail(d, "non-string member", "data.stage");
  ev->stage = cJSON_IsString(stage) ? stage->valuestring : NULL;
  const cJSON *index = cJSON_GetObjectItemCaseSensitive(data, "index");
  if (index != NULL) {
    if (!cJSON_IsNumber(index) || index->valuedouble < -1 || index->valuedouble > INT32_MAX ||
        index->valuedouble != (double)(int32_t)index->valuedouble)
      return parse_fail(d, "bad integer in", "data.index");
    ev->stage_index = (int32_t)index->valuedouble;
  }
  int rc = get_count(data, "attempt", UINT32_MAX, &num);
  if (rc == -2) return parse_fail(d, "bad integer in", "data.attempt");
  if (rc == 0) ev->attempt = (uint32_t)num;
  return SC_OK;
}

int sc_event_parse(const char *json, size_t len, sc_event_doc **out) {
  if (out == NULL || json == NULL) return sc__error(SC_EINVAL, "event: NULL argument");
  *out = NULL;
  sc_event_doc *d = calloc(1, sizeof(*d));
  if (d == NULL) return sc__error(SC_ENOMEM, "event: out of memory");
  const char *end = NULL;
  d->root = cJSON_ParseWithLengthOpts(json, len, &end, false);
  if (d->root == NULL) {
    size_t at = end != NULL && end >= json ? (size_t)(end - json) : 0;
    sc_event_doc_free(d);
    return sc__error(SC_EPARSE, "event: malformed JSON at byte %zu", at);
  }
  /* Only whitespace may follow the object. */
  while (end != NULL && (size_t)(end - json) < len &&
         (*end == ' ' || *end == '\n' || *end == '\r' || *end == '\t'))
    end++;
  if (end != NULL && (size_t)(end - json) < len && *end != '\0') {
    size_t at = (size_t)(end - json);
    sc_event_doc_free(d);
    return sc__error(SC_EPARSE, "event: unexpected text after the JSON object at byte %zu", at);
  }
  const cJSON *root = d->root;
  sc_event *ev = &d->ev;
  ev->stage_index = -1;
  if (!cJSON_IsObject(root)) return parse_fail(d, "not an object:", "(root)");
  const char *specversion = get_string(root, "specversion");
  if (specversion == NULL || strcmp(specversion, "1.0") != 0)
    return parse_fail(d, "missing or unsupported", "specversion");
  if (get_string(root, "id") == NULL) return parse_fail(d, "missing or non-string attribute", "id");
  if ((ev->source = get_string(root, "source")) == NULL)
    return parse_fail(d, "missing or non-string attribute", "source");
  const char *type = get_string(root, "type");
  if (type == NULL) return parse_fail(d, "missing or non-string attribute", "type");
  if (sc_event_type_from_name(type, &ev->type) != SC_OK)
    return parse_fail(d, "unknown event type in", "type");
  if ((ev->task_id = get_string(root, "taskid")) == NULL)
    return parse_fail(d, "missing or non-string attribute", "taskid");
  if (!get_optional_string(root, "tenantid", &ev->tenant_id))
    return parse_fail(d, "non-string attribute", "tenantid");
  if (!get_optional_string(root, "planid", &ev->plan_id))
    return parse_fail(d, "non-string attribute", "planid");
  if (!get_optional_string(root, "traceparent", &ev->traceparent))
    return parse_fail(d, "non-string attribute", "traceparent");
  double num;
  if (get_count(root, "seq", 9007199254740992.0, &num) != 0 || num < 1)
    return parse_fail(d, "missing or non-positive integer attribute", "seq");
  ev->seq = (uint64_t)num;
  int rc = get_count(root, "epoch", 9007199254740992.0, &num);
  if (rc == -2) return parse_fail(d, "bad integer in attribute", "epoch");
  ev->epoch = rc == 0 ? (uint64_t)num : 0;
  const char *time;
  if (!get_optional_string(root, "time", &time))
    return parse_fail(d, "non-string attribute", "time");
  if (time != NULL && parse_time(time, &ev->time_ns) != 0)
    return parse_fail(d, "malformed RFC 3339 timestamp in", "time");
  rc = read_data(d, cJSON_GetObjectItemCaseSensitive(root, "data"));
  if (rc != SC_OK) return rc;
  *out = d;
  return SC_OK;
}

const sc_event *sc_event_doc_event(const sc_event_doc *d) {
  return d ? &d->ev : NULL;
}

const cJSON *sc_event_doc_json(const sc_event_doc *d) {
  return d ? d->root : NULL;
}

void sc_event_doc_free(sc_event_doc *d) {
  if (d == NULL) return;
  cJSON_Delete(d->root);
  free(d);
}
