/* Reading a log: sc_jsonl_verify, and sc_jsonl_scan, which finds the tasks that did not finish
 * and turns each into a ready recovery request.
 *
 * The scan reads a million lines in about a second: each line's chain is checked, but only its
 * type, task id, epoch and status are picked out (the writer puts the envelope attributes before
 * "data" and a bare `"key":` cannot occur inside a JSON string, so the first match is the
 * attribute). The few lines recovery needs — each task's task.created, task.recovered and last
 * stage.completed — are remembered by offset and parsed in full at the end. */
#define _GNU_SOURCE /* memmem */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "chain.h"

typedef struct line_ref {
  size_t off, len; /* len 0: none */
} line_ref;

typedef struct task_state {
  char *id;     /* NUL-terminated; */
  size_t idlen; /* the key is id[0 .. idlen), which a damaged line may give a NUL byte */
  uint64_t order;
  line_ref created, recovered, completed;
  line_ref retried; /* the last task.started of a retry: a restart point of its own */
  line_ref rolled;  /* the last rollback.started: its "intent" */
  bool terminal, superseded, rolling_back, compensating;
  sc_task_status status;
  uint64_t epoch;
} task_state;

/* A small open-addressing map from task id to state. */
typedef struct task_map {
  task_state **slots;
  size_t cap, n;
} task_map;

static uint64_t hash(const char *s, size_t len) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < len; i++)
    h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
  return h;
}

static task_state **map_slot(task_map *m, const char *id, size_t len) {
  for (size_t i = hash(id, len) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
    task_state *t = m->slots[i];
    if (t == NULL || (t->idlen == len && memcmp(t->id, id, len) == 0)) return &m->slots[i];
  }
}

static bool map_grow(task_map *m) {
  size_t cap = m->cap ? m->cap * 2 : 256;
  task_state **slots = calloc(cap, sizeof(*slots));
  if (slots == NULL) return false;
  task_map old = *m;
  m->slots = slots;
  m->cap = cap;
  for (size_t i = 0; i < old.cap; i++)
    if (old.slots[i]) *map_slot(m, old.slots[i]->id, old.slots[i]->idlen) = old.slots[i];
  free(old.slots);
  return true;
}

static task_state *map_get(task_map *m, const char *id, size_t len, bool create) {
  if (m->cap == 0 || (m->n + 1) * 2 > m->cap) {
    if (!create && m->cap == 0) return NULL;
    if (create && !map_grow(m)) return NULL;
  }
  task_state **slot = map_slot(m, id, len);
  if (*slot != NULL || !create) return *slot;
  task_state *t = calloc(1, sizeof(*t));
  if (t == NULL || (t->id = malloc(len + 1)) == NULL) {
    free(t);
    return NULL;
  }
  memcpy(t->id, id, len);
  t->id[len] = '\0';
  t->idlen = len;
  t->order = m->n++;
  *slot = t;
  return t;
}

static void map_free(task_map *m) {
  for (size_t i = 0; i < m->cap; i++)
    if (m->slots[i]) {
      free(m->slots[i]->id);
      free(m->slots[i]);
    }
  free(m->slots);
}

/* The raw string value of the first member named key (a literal with quotes and colon, e.g.
 * "\"type\":\""); NULL when absent or when it has escapes (the caller then parses the line). */
static const char *find_string(const char *p, const char *end, const char *key, size_t keylen,
                               size_t *len) {
  const char *k = memmem(p, (size_t)(end - p), key, keylen);
  if (k == NULL) return NULL;
  const char *v = k + keylen, *q = memchr(v, '"', (size_t)(end - v));
  if (q == NULL || memchr(v, '\\', (size_t)(q - v)) != NULL) return NULL;
  *len = (size_t)(q - v);
  return v;
}
#define FIND(p, end, key, len) find_string((p), (end), key, sizeof(key) - 1, (len))
/* Whether the literal lit occurs in p[0 .. n). */
#define HAS(p, n, lit) (memmem((p), (n), lit, sizeof(lit) - 1) != NULL)

typedef struct scan_state {
  task_map tasks;
  const char *base; /* the mapped log, handed over by walk() */
  size_t mapped;
  int err;
} scan_state;

static int note_recovery(scan_state *s, const char *line, size_t len, task_state *t) {
  sc_event_doc *d;
  if (sc_event_parse(line, len, &d) != SC_OK) return SC_OK; /* verified but not ours: skip */
  const cJSON *from =
      cJSON_GetObjectItemCaseSensitive(sc_event_doc_event(d)->data, "recovered_from");
  if (cJSON_IsString(from) && strcmp(from->valuestring, t->id) != 0) { /* not itself, recovered
                                                                          under its own id */
    task_state *old = map_get(&s->tasks, from->valuestring, strlen(from->valuestring), true);
    if (old == NULL) {
      sc_event_doc_free(d);
      return SC_ENOMEM;
    }
    old->superseded = true;
  }
  const cJSON *mode = cJSON_GetObjectItemCaseSensitive(sc_event_doc_event(d)->data, "mode");
  if (cJSON_IsString(mode)) {
    t->compensating = strcmp(mode->valuestring, "compensate") == 0;
    t->rolling_back = t->compensating || strcmp(mode->valuestring, "rollback") == 0;
  }
  sc_event_doc_free(d);
  return SC_OK;
}

static int take_line(scan_state *s, const char *line, size_t len, uint64_t offset, const char *type,
                     size_t tlen, const char *id, size_t idlen, const char *data) {
  const char *end = line + len;
  size_t slen;
  char name[32];
  if (tlen >= sizeof(name)) return SC_OK;
  memcpy(name, type, tlen);
  name[tlen] = '\0';
  sc_event_type ev;
  if (sc_event_type_from_name(name, &ev) != SC_OK) return SC_OK;
  task_state *t = map_get(&s->tasks, id, idlen, true);
  if (t == NULL) return sc_error_set(SC_ENOMEM, "scan: out of memory");
  const char *status = FIND(data, end, "\"status\":\"", &slen);
  if (status != NULL && slen < sizeof(name)) {
    memcpy(name, status, slen);
    name[slen] = '\0';
    sc_task_status_from_name(name, &t->status);
  }
  const char *epoch = memmem(line, (size_t)(data - line), "\"epoch\":", 8);
  if (epoch != NULL) t->epoch = strtoull(epoch + 8, NULL, 10);
  line_ref ref = {(size_t)offset, len};
  switch (ev) {
    case SC_EV_TASK_CREATED:
      if (t->created.len) { /* the id is used again: a new run, whatever the old one did */
        task_state fresh = {.id = t->id,
                            .idlen = t->idlen,
                            .order = t->order,
                            .status = t->status,
                            .epoch = t->epoch};
        *t = fresh;
      }
      t->created = ref;
      break;
    case SC_EV_TASK_RECOVERED: t->recovered = ref; return note_recovery(s, line, len, t);
    case SC_EV_STAGE_COMPLETED:
      if (!t->rolling_back) t->completed = ref; /* the forward run's checkpoints only */
      break;
    case SC_EV_ROLLBACK_STARTED:
      t->rolling_back = true;
      t->rolled = ref;
      t->compensating = HAS(line, len, "\"strategy\":\"compensate\"");
      break;
    case SC_EV_TASK_STARTED: /* the first start, or a retry after a failure */
      t->rolling_back = t->compensating = false;
      if (HAS(data, (size_t)(end - data), "\"retry\":true")) t->retried = ref;
      break;
    case SC_EV_TASK_COMPLETED:
    case SC_EV_TASK_CANCELLED:
    case SC_EV_ROLLBACK_COMPLETED: t->terminal = true; break;
    default: break;
  }
  return SC_OK;
}

static int on_line(const char *line, size_t len, uint64_t offset, uint64_t lineno, void *udata) {
  (void)lineno;
  scan_state *s = udata;
  const char *end = line + len;
  size_t tlen = 0, idlen = 0;
  const char *type = FIND(line, end, "\"type\":\"stagecoach.", &tlen);
  const char *id = FIND(line, end, "\"taskid\":\"", &idlen);
  const char *data = memmem(line, len, "\"data\":{", 8);
  sc_event_doc *doc = NULL;
  if (id == NULL && type != NULL && data != NULL && sc_event_parse(line, len, &doc) == SC_OK) {
    id = sc_event_doc_event(doc)->task_id; /* an id with escapes: the parser unescapes it */
    idlen = strlen(id);
  }
  int rc = id == NULL || type == NULL || data == NULL
               ? SC_OK /* not an event of ours */
               : take_line(s, line, len, offset, type, tlen, id, idlen, data);
  sc_event_doc_free(doc);
  return rc;
}

static int walk(const char *path, bool stop_at_good, sc__line_fn fn, void *udata,
                sc_jsonl_report *r) {
  sc_jsonl_report local;
  if (r == NULL) r = &local;
  sc__log l;
  int rc = sc__log_map(path, &l);
  if (rc != SC_OK) {
    memset(r, 0, sizeof(*r));
    return sc_error_set(rc == SC_ENOTFOUND ? SC_ENOTFOUND : SC_EIO, "open %s: %s", path,
                        strerror(errno));
  }
  sc__chain c;
  if (sc__chain_init(&c) != SC_OK) {
    sc__log_unmap(&l);
    return sc_error_set(SC_ENOMEM, "scan: out of memory");
  }
  if (fn != NULL) ((scan_state *)udata)->base = l.data;
  rc = sc__log_walk(path, &l, &c, fn, udata, r);
  if (rc == SC_ECORRUPT && stop_at_good) rc = SC_OK;
  if (rc == SC_OK && fn != NULL) rc = ((scan_state *)udata)->err;
  sc__chain_free(&c);
  /* The caller needs the text for the final parse: keep the mapping in the state. */
  if (fn != NULL && rc == SC_OK) {
    ((scan_state *)udata)->base = l.data;
    ((scan_state *)udata)->mapped = l.mapped; /* handed over: unmapped by the caller */
    return SC_OK;
  }
  sc__log_unmap(&l);
  return rc;
}

int sc_jsonl_verify(const char *path, sc_jsonl_report *r) {
  if (path == NULL) return sc_error_set(SC_EINVAL, "verify: NULL path");
  return walk(path, false, NULL, NULL, r);
}

void sc_jsonl_scan_options_init(sc_jsonl_scan_options *o) {
  memset(o, 0, sizeof(*o));
  o->version = SC_JSONL_SCAN_OPTIONS_VERSION;
}

static char *dup_str(const char *s) {
  return s ? strdup(s) : NULL;
}

static const cJSON *member(const sc_event *ev, const char *name) {
  return cJSON_GetObjectItemCaseSensitive(ev->data, name);
}

static cJSON *dup_object(const cJSON *v) {
  return cJSON_IsObject(v) ? cJSON_Duplicate(v, true) : NULL;
}

static const char *string_member(const sc_event *ev, const char *name) {
  const cJSON *v = member(ev, name);
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

static uint32_t intent_of(const sc_event *ev) {
  const cJSON *v = member(ev, "intent");
  return cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble <= 4294967295.0
             ? (uint32_t)v->valuedouble
             : 0;
}

/* Fills one recovery request from a task's remembered lines. */
static int build(const char *base, const task_state *t, sc_unfinished *u) {
  memset(u, 0, sizeof(*u));
  sc_recovery_request *req = &u->request;
  sc_recovery_request_init(req);
  u->status = t->status;
  req->epoch = t->epoch;
  req->mode = t->compensating   ? SC_RECOVER_COMPENSATE
              : t->rolling_back ? SC_RECOVER_ROLLBACK
                                : SC_RECOVER_RETRY;
  req->recovered_from = dup_str(t->id);
  sc_event_doc *d = NULL;
  if (sc_event_parse(base + t->created.off, t->created.len, &d) != SC_OK) return SC_EPARSE;
  const sc_event *ev = sc_event_doc_event(d);
  req->tenant_id = dup_str(ev->tenant_id);
  req->plan_id = dup_str(ev->plan_id);
  req->traceparent = dup_str(ev->traceparent);
  req->tracestate = dup_str(string_member(ev, "tracestate"));
  req->config = dup_object(member(ev, "config"));
  req->previous_config = dup_object(member(ev, "previous_config"));
  req->plan_fingerprint = dup_str(string_member(ev, "fingerprint"));
  req->context = dup_object(member(ev, "context"));
  req->context_digest = req->context ? dup_str(string_member(ev, "digest")) : NULL;
  /* The idempotency key's root and intent (docs/design.md): the chain's first task, and the
   * deliberate retries and rollbacks recorded last (task.created, then the later of a retry's
   * task.started and rollback.started). */
  const char *root = string_member(ev, "root_task_id");
  req->root_task_id = dup_str(root ? root : t->id);
  req->intent = intent_of(ev);
  sc_event_doc_free(d);
  const line_ref *later = t->retried.off > t->rolled.off ? &t->retried : &t->rolled;
  if (later->len && later->off > t->created.off &&
      sc_event_parse(base + later->off, later->len, &d) == SC_OK) {
    req->intent = intent_of(sc_event_doc_event(d));
    sc_event_doc_free(d);
  }
  if (t->recovered.len) {
    /* A recovered run that completed no stage of its own carries on where its recovery began. */
    if (sc_event_parse(base + t->recovered.off, t->recovered.len, &d) == SC_OK) {
      const char *last = string_member(sc_event_doc_event(d), "last_completed_stage");
      if (last && !t->completed.len) req->last_completed_stage = dup_str(last);
      sc_event_doc_free(d);
    }
  }
  if (t->completed.len && sc_event_parse(base + t->completed.off, t->completed.len, &d) == SC_OK) {
    ev = sc_event_doc_event(d);
    free((char *)req->last_completed_stage);
    req->last_completed_stage = dup_str(ev->stage);
    cJSON_Delete((cJSON *)req->context);
    free((char *)req->context_digest);
    req->context = dup_object(member(ev, "context"));
    req->context_digest = dup_str(string_member(ev, "digest"));
    sc_event_doc_free(d);
  }
  /* A retry after the last checkpoint restarts there: at the stage after the one it names, and
   * with an empty context when it reset the context. */
  bool retry_last = t->retried.len && (!t->completed.len || t->retried.off > t->completed.off) &&
                    (!t->recovered.len || t->retried.off > t->recovered.off);
  if (retry_last && sc_event_parse(base + t->retried.off, t->retried.len, &d) == SC_OK) {
    ev = sc_event_doc_event(d);
    const cJSON *last = member(ev, "last_completed_stage");
    const cJSON *start = member(ev, "start_index");
    if (cJSON_IsString(last) || cJSON_IsNull(last) ||
        (cJSON_IsNumber(start) && start->valuedouble == 0)) {
      free((char *)req->last_completed_stage);
      req->last_completed_stage = cJSON_IsString(last) ? dup_str(last->valuestring) : NULL;
    }
    if (cJSON_IsTrue(member(ev, "reset_context"))) {
      cJSON_Delete((cJSON *)req->context);
      free((char *)req->context_digest);
      req->context = NULL;
      req->context_digest = NULL;
    }
    sc_event_doc_free(d);
  }
  return req->config && req->recovered_from && req->root_task_id ? SC_OK : SC_ENOMEM;
}

static int by_order(const void *a, const void *b) {
  const task_state *x = *(task_state *const *)a, *y = *(task_state *const *)b;
  return x->order < y->order ? -1 : x->order > y->order;
}

int sc_jsonl_scan_ex(const char *path, const sc_jsonl_scan_options *o, sc_unfinished **out,
                     size_t *n, sc_jsonl_report *r) {
  if (out) *out = NULL;
  if (n) *n = 0;
  if (path == NULL || out == NULL || n == NULL)
    return sc_error_set(SC_EINVAL, "scan: NULL argument");
  if (o != NULL && (o->version < 1 || o->version > SC_JSONL_SCAN_OPTIONS_VERSION))
    return sc_error_set(SC_EINVAL, "scan: unsupported sc_jsonl_scan_options version %u",
                        o->version);
  scan_state s = {0};
  int rc = walk(path, o && o->stop_at_last_good_line, on_line, &s, r);
  if (rc != SC_OK) {
    map_free(&s.tasks);
    return rc;
  }
  size_t mapped = s.mapped;
  size_t count = 0;
  task_state **list = s.tasks.n ? malloc(s.tasks.n * sizeof(*list)) : NULL;
  for (size_t i = 0; i < s.tasks.cap; i++) {
    task_state *t = s.tasks.slots[i];
    if (t && !t->terminal && !t->superseded && t->created.len) list[count++] = t;
  }
  if (count > 1) qsort(list, count, sizeof(*list), by_order);
  sc_unfinished *u = count ? calloc(count, sizeof(*u)) : NULL;
  rc = count && u == NULL ? SC_ENOMEM : SC_OK;
  for (size_t i = 0; i < count && rc == SC_OK; i++) {
    rc = build(s.base, list[i], &u[i]);
    if (rc != SC_OK) {
      sc_unfinished_free(u, i + 1);
      u = NULL;
      rc = sc_error_set(rc, "scan %s: cannot rebuild task %s from its task.created line", path,
                        list[i]->id);
    }
  }
  free(list);
  sc__log l = {(char *)s.base, mapped, mapped};
  sc__log_unmap(&l);
  map_free(&s.tasks);
  if (rc != SC_OK) return rc;
  *out = u;
  *n = count;
  return SC_OK;
}

int sc_jsonl_scan(const char *path, sc_unfinished **out, size_t *n, sc_jsonl_report *r) {
  return sc_jsonl_scan_ex(path, NULL, out, n, r);
}

void sc_unfinished_free(sc_unfinished *u, size_t n) {
  if (u == NULL) return;
  for (size_t i = 0; i < n; i++) {
    sc_recovery_request *q = &u[i].request;
    free((char *)q->task_id);
    free((char *)q->recovered_from);
    free((char *)q->tenant_id);
    free((char *)q->plan_id);
    free((char *)q->last_completed_stage);
    free((char *)q->context_digest);
    free((char *)q->plan_fingerprint);
    free((char *)q->traceparent);
    free((char *)q->root_task_id);
    free((char *)q->tracestate);
    cJSON_Delete((cJSON *)q->config);
    cJSON_Delete((cJSON *)q->previous_config);
    cJSON_Delete((cJSON *)q->context);
  }
  free(u);
}
