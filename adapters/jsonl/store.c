/* The JSON-lines log behind the store interface (<stagecoach/store.h>): attach is the log's
 * writer, unfinished its scan, and the queries read the log's verified lines. A log is
 * append-only: a finished task's lines go when the log is compacted, not one task at a time
 * (docs/jsonl.md, "The log as a store"). */
#define _GNU_SOURCE /* memmem */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <stagecoach/store.h>

#include "chain.h"

typedef struct jsonl_store {
  sc_store base; /* first: the pointer handed out */
  char *path;
  sc_jsonl_options opts;
  sc_jsonl *log; /* the writer, once attached */
} jsonl_store;

/* The task id of an event line when it is exactly id (the raw "taskid" value, or the parsed one
 * for an id with escapes). */
static bool line_of_task(const char *json, size_t len, const char *id, size_t idlen) {
  static const char key[] = "\"taskid\":\"";
  const char *k = memmem(json, len, key, sizeof(key) - 1);
  if (k == NULL) return false;
  const char *v = k + sizeof(key) - 1, *end = json + len;
  const char *q = memchr(v, '"', (size_t)(end - v));
  if (q == NULL) return false;
  if (memchr(v, '\\', (size_t)(q - v)) == NULL)
    return (size_t)(q - v) == idlen && memcmp(v, id, idlen) == 0;
  sc_event_doc *d = NULL;
  bool same =
      sc_event_parse(json, len, &d) == SC_OK && strcmp(sc_event_doc_event(d)->task_id, id) == 0;
  sc_event_doc_free(d);
  return same;
}

/* ---- checkpoints ---- */

typedef struct collect {
  const char *task;
  size_t tasklen;
  bool with_context; /* every checkpoint gets its verified "context" */
  uint64_t only_seq; /* 0: every checkpoint; else the one of that seq */
  bool known;        /* the log holds a line of the task */
  bool rolling_back;
  cJSON *list;    /* the current run's checkpoints */
  cJSON *context; /* the fold after the last stage.completed */
  int err;
} collect;

static const cJSON *member(const sc_event *ev, const char *name) {
  return cJSON_GetObjectItemCaseSensitive(ev->data, name);
}

static cJSON *dup_or_null(const cJSON *v) {
  return v ? cJSON_Duplicate(v, true) : cJSON_CreateNull();
}

static cJSON *string_or_null(const char *s) {
  return s ? cJSON_CreateString(s) : cJSON_CreateNull();
}

static int fail_oom(collect *c) {
  return c->err = sc_error_set(SC_ENOMEM, "store jsonl: out of memory");
}

/* The checkpoint object of a stage.completed (docs/jsonl.md); NULL without memory. */
static cJSON *checkpoint_of(const sc_event_doc *d, bool rollback) {
  const sc_event *ev = sc_event_doc_event(d);
  const cJSON *id = cJSON_GetObjectItemCaseSensitive(sc_event_doc_json(d), "id");
  const cJSON *time = cJSON_GetObjectItemCaseSensitive(sc_event_doc_json(d), "time");
  const cJSON *digest = member(ev, "digest"), *fingerprint = member(ev, "fingerprint");
  cJSON *o = cJSON_CreateObject();
  if (o == NULL) return NULL;
  bool ok = cJSON_AddItemToObject(o, "id", dup_or_null(id)) &&
            cJSON_AddItemToObject(o, "task", cJSON_CreateString(ev->task_id)) &&
            cJSON_AddItemToObject(o, "tenant", string_or_null(ev->tenant_id)) &&
            cJSON_AddItemToObject(o, "plan", string_or_null(ev->plan_id)) &&
            cJSON_AddItemToObject(o, "stage", string_or_null(ev->stage)) &&
            cJSON_AddNumberToObject(o, "index", ev->stage_index) &&
            cJSON_AddNumberToObject(o, "attempt", ev->attempt) &&
            cJSON_AddNumberToObject(o, "seq", (double)ev->seq) &&
            cJSON_AddNumberToObject(o, "epoch", (double)ev->epoch) &&
            cJSON_AddItemToObject(o, "time", dup_or_null(time)) &&
            cJSON_AddStringToObject(o, "reason", rollback ? "rollback" : "run") &&
            cJSON_AddItemToObject(o, "output", dup_or_null(member(ev, "output"))) &&
            cJSON_AddItemToObject(o, "digest", dup_or_null(digest)) &&
            cJSON_AddItemToObject(o, "fingerprint", dup_or_null(fingerprint));
  if (!ok) {
    cJSON_Delete(o);
    return NULL;
  }
  return o;
}

/* Folds a stage.completed onto the running context: its snapshot replaces it, else its output
 * is merged in (the engine's shallow merge). */
static bool fold(collect *c, const sc_event *ev) {
  const cJSON *whole = member(ev, "context");
  if (cJSON_IsObject(whole)) {
    cJSON *copy = cJSON_Duplicate(whole, true);
    if (copy == NULL) return false;
    cJSON_Delete(c->context);
    c->context = copy;
    return true;
  }
  if (c->context == NULL && (c->context = cJSON_CreateObject()) == NULL) return false;
  return sc__jsonl_merge_into(c->context, member(ev, "output"));
}

/* Gives the checkpoint its context after checking the context against its digest. */
static int add_context(collect *c, cJSON *checkpoint) {
  const cJSON *digest = cJSON_GetObjectItemCaseSensitive(checkpoint, "digest");
  const cJSON *id = cJSON_GetObjectItemCaseSensitive(checkpoint, "id");
  char folded[72] = "";
  cJSON *context = c->context ? c->context : cJSON_CreateObject();
  if (context == NULL) return fail_oom(c);
  int rc = sc_json_digest(context, folded);
  if (rc == SC_OK && (!cJSON_IsString(digest) || strcmp(digest->valuestring, folded) != 0))
    rc = sc_error_set(SC_ECORRUPT,
                      "checkpoint %s: the context folded from its snapshot and the outputs after "
                      "it does not match its digest (recorded %s, folded %s): the log was changed",
                      cJSON_IsString(id) ? id->valuestring : "?",
                      cJSON_IsString(digest) ? digest->valuestring : "none", folded);
  cJSON *copy = rc == SC_OK ? cJSON_Duplicate(context, true) : NULL;
  if (context != c->context) cJSON_Delete(context);
  if (rc != SC_OK) return c->err = rc;
  if (copy == NULL || !cJSON_AddItemToObject(checkpoint, "context", copy)) {
    cJSON_Delete(copy);
    return fail_oom(c);
  }
  return SC_OK;
}

static int on_event(const char *json, size_t len, void *udata) {
  collect *c = udata;
  if (!line_of_task(json, len, c->task, c->tasklen)) return 0;
  sc_event_doc *d = NULL;
  if (sc_event_parse(json, len, &d) != SC_OK) return 0; /* verified, but no event of ours */
  const sc_event *ev = sc_event_doc_event(d);
  c->known = true;
  int rc = 0;
  switch (ev->type) {
    case SC_EV_TASK_CREATED: /* a run starts afresh, from its initial context */
      cJSON_Delete(c->list);
      cJSON_Delete(c->context);
      c->list = cJSON_CreateArray();
      c->context = cJSON_IsObject(member(ev, "context"))
                       ? cJSON_Duplicate(member(ev, "context"), true)
                       : NULL;
      c->rolling_back = false;
      if (c->list == NULL) rc = fail_oom(c);
      break;
    case SC_EV_ROLLBACK_STARTED: c->rolling_back = true; break;
    case SC_EV_TASK_STARTED: c->rolling_back = false; break;
    case SC_EV_STAGE_COMPLETED: {
      if (c->list == NULL && (c->list = cJSON_CreateArray()) == NULL) {
        rc = fail_oom(c);
        break;
      }
      if (!fold(c, ev)) {
        rc = fail_oom(c);
        break;
      }
      if (c->only_seq != 0 && ev->seq != c->only_seq) break;
      cJSON *cp = checkpoint_of(d, c->rolling_back);
      if (cp == NULL) {
        rc = fail_oom(c);
        break;
      }
      cJSON_AddItemToArray(c->list, cp);
      if (c->with_context) rc = add_context(c, cp);
      break;
    }
    default: break;
  }
  sc_event_doc_free(d);
  return rc;
}

/* Walks the log for task's checkpoints (of its latest run, in order). */
static int collect_checkpoints(jsonl_store *s, const char *task, collect *c) {
  c->task = task;
  c->tasklen = strlen(task);
  int rc = sc_jsonl_read_events(s->path, on_event, c);
  if (c->err != 0) rc = c->err;
  if (rc == SC_OK && !c->known)
    rc = sc_error_set(SC_ENOTFOUND, "store jsonl: no task %s in %s", task, s->path);
  if (rc != SC_OK) {
    cJSON_Delete(c->list);
    c->list = NULL;
  }
  cJSON_Delete(c->context);
  c->context = NULL;
  return rc;
}

static int st_checkpoints(sc_store *base, const char *task_id, cJSON **out) {
  jsonl_store *s = (jsonl_store *)base;
  if (out == NULL) return sc_error_set(SC_EINVAL, "store jsonl: NULL out");
  *out = NULL;
  if (task_id == NULL) return sc_error_set(SC_EINVAL, "store jsonl: NULL task id");
  collect c = {0};
  int rc = collect_checkpoints(s, task_id, &c);
  if (rc != SC_OK) return rc;
  *out = c.list ? c.list : cJSON_CreateArray();
  return *out ? SC_OK : sc_error_set(SC_ENOMEM, "store jsonl: out of memory");
}

/* The last checkpoint of the list, with its context, as the caller's object. */
static int take_last(cJSON *list, const char *what, cJSON **out) {
  int n = cJSON_GetArraySize(list);
  if (n == 0) {
    cJSON_Delete(list);
    return sc_error_set(SC_ENOTFOUND, "store jsonl: %s", what);
  }
  *out = cJSON_DetachItemFromArray(list, n - 1);
  cJSON_Delete(list);
  return SC_OK;
}

/* Only the last checkpoint's context is verified and kept: earlier ones are folded through. */
static int on_event_latest(const char *json, size_t len, void *udata) {
  collect *c = udata;
  int rc = on_event(json, len, udata);
  if (rc != 0 || cJSON_GetArraySize(c->list) < 2) return rc;
  cJSON_DeleteItemFromArray(c->list, 0);
  return 0;
}

static int st_latest(sc_store *base, const char *task_id, cJSON **out) {
  jsonl_store *s = (jsonl_store *)base;
  if (out == NULL) return sc_error_set(SC_EINVAL, "store jsonl: NULL out");
  *out = NULL;
  if (task_id == NULL) return sc_error_set(SC_EINVAL, "store jsonl: NULL task id");
  collect c = {.task = task_id, .tasklen = strlen(task_id)};
  int rc = sc_jsonl_read_events(s->path, on_event_latest, &c);
  if (c.err != 0) rc = c.err;
  if (rc == SC_OK && !c.known)
    rc = sc_error_set(SC_ENOTFOUND, "store jsonl: no task %s in %s", task_id, s->path);
  if (rc == SC_OK && cJSON_GetArraySize(c.list) > 0) {
    cJSON *last = cJSON_GetArrayItem(c.list, 0);
    c.with_context = true;
    rc = add_context(&c, last);
  }
  cJSON_Delete(c.context);
  if (rc != SC_OK) {
    cJSON_Delete(c.list);
    return rc;
  }
  char what[300];
  snprintf(what, sizeof(what), "task %s has no checkpoint in %s", task_id, s->path);
  return take_last(c.list ? c.list : cJSON_CreateArray(), what, out);
}

static int st_checkpoint(sc_store *base, const char *checkpoint_id, cJSON **out) {
  jsonl_store *s = (jsonl_store *)base;
  if (out == NULL) return sc_error_set(SC_EINVAL, "store jsonl: NULL out");
  *out = NULL;
  const char *slash = checkpoint_id ? strrchr(checkpoint_id, '/') : NULL;
  char *end = NULL;
  unsigned long long seq = slash ? strtoull(slash + 1, &end, 10) : 0;
  if (slash == NULL || slash == checkpoint_id || slash[1] < '1' || slash[1] > '9' || *end != '\0')
    return sc_error_set(SC_EINVAL,
                        "store jsonl: '%s' is no checkpoint id (they read TASK/SEQ, as the "
                        "checkpoints list gives them)",
                        checkpoint_id ? checkpoint_id : "(null)");
  char *task = strndup(checkpoint_id, (size_t)(slash - checkpoint_id));
  if (task == NULL) return sc_error_set(SC_ENOMEM, "store jsonl: out of memory");
  collect c = {.with_context = true, .only_seq = (uint64_t)seq};
  int rc = collect_checkpoints(s, task, &c);
  free(task);
  if (rc == SC_ENOTFOUND || rc == SC_OK) {
    char what[300];
    snprintf(what, sizeof(what), "no checkpoint %s in %s", checkpoint_id, s->path);
    return take_last(c.list ? c.list : cJSON_CreateArray(), what, out);
  }
  return rc;
}

/* ---- events ---- */

typedef struct replay {
  const char *task;
  size_t tasklen;
  uint64_t from;
  sc_store_event_fn fn;
  void *udata;
  bool known;
  int ret; /* fn's non-zero return */
} replay;

static uint64_t seq_of(const char *json, size_t len) {
  const char *data = memmem(json, len, "\"data\":{", 8);
  const char *k = memmem(json, data ? (size_t)(data - json) : len, "\"seq\":", 6);
  return k ? strtoull(k + 6, NULL, 10) : 0;
}

static int on_replay(const char *json, size_t len, void *udata) {
  replay *r = udata;
  if (r->task != NULL && !line_of_task(json, len, r->task, r->tasklen)) return 0;
  uint64_t seq = seq_of(json, len);
  if (seq == 0) return 0; /* no event of a task (a compacted log's first line) */
  r->known = true;
  if (seq < r->from) return 0;
  int rc = r->fn(json, len, r->udata);
  if (rc != 0) r->ret = rc;
  return rc;
}

/* One line of a verified log handed to the replay as its event's JSON. */
typedef struct deliver {
  replay *r;
  sc__buf line;
  int err;
} deliver;

static int deliver_line(const char *line, size_t len, uint64_t offset, uint64_t lineno,
                        void *udata) {
  (void)offset;
  (void)lineno;
  deliver *d = udata;
  size_t event_len;
  const char *hex;
  if (!sc__chain_split(line, len, &event_len, &hex)) return SC_OK; /* the walk verified it */
  sc__buf_reset(&d->line);
  if (!sc__buf_add(&d->line, line, event_len) || !sc__buf_add(&d->line, "}", 1))
    return d->err = sc_error_set(SC_ENOMEM, "store jsonl: out of memory");
  return on_replay(d->line.p, d->line.len, d->r);
}

/* The whole log is read once and verified before the first event is handed on: a log that
 * breaks at line 20 gives no event at all (a failed call never calls its callback). */
static int replay_verified(const char *path, replay *r) {
  sc__log l;
  int rc = sc__log_map(path, &l);
  if (rc == SC_ENOTFOUND) return sc_error_set(rc, "store jsonl: no such log %s", path);
  if (rc == SC_EPARSE) return sc_error_set(rc, "store jsonl: %s is not a stagecoach log", path);
  if (rc != SC_OK) return sc_error_set(rc, "store jsonl: read %s: %s", path, strerror(errno));
  sc__chain c;
  sc_jsonl_report report;
  deliver d = {r, {0}, 0};
  if (sc__chain_init(&c) != SC_OK) {
    sc__log_unmap(&l);
    return sc_error_set(SC_ENOMEM, "store jsonl: out of memory");
  }
  rc = sc__log_walk(path, &l, &c, NULL, NULL, &report);
  sc__chain_free(&c);
  if (rc == SC_OK && sc__chain_init(&c) != SC_OK)
    rc = sc_error_set(SC_ENOMEM, "store jsonl: out of memory");
  else if (rc == SC_OK) {
    rc = sc__log_walk(path, &l, &c, deliver_line, &d, &report);
    sc__chain_free(&c);
  }
  if (d.err != 0 && r->ret == 0) rc = d.err;
  sc__buf_free(&d.line);
  sc__log_unmap(&l);
  return rc;
}

static int st_events(sc_store *base, const char *task_id, uint64_t from_seq, sc_store_event_fn fn,
                     void *udata) {
  jsonl_store *s = (jsonl_store *)base;
  if (fn == NULL) return sc_error_set(SC_EINVAL, "store jsonl: NULL callback");
  replay r = {task_id, task_id ? strlen(task_id) : 0, from_seq, fn, udata, false, 0};
  int rc = replay_verified(s->path, &r);
  if (r.ret != 0) return r.ret;
  if (rc == SC_OK && task_id != NULL && !r.known)
    rc = sc_error_set(SC_ENOTFOUND, "store jsonl: no task %s in %s", task_id, s->path);
  return rc;
}

/* ---- tasks and approvals: one walk that keeps each task's latest run ---- */

typedef struct approval {
  char *stage, *reason;
  int index;
  int64_t requested_ns, deadline_ns; /* deadline 0: none */
  double approvals, needed;
} approval;

typedef struct summary {
  char *id, *tenant, *plan, *stage, *recovered_from, *error;
  char created[40], updated[40];
  const char *status;
  int index;
  double retry_count;
  uint64_t epoch;
  bool finished;
  bool superseded; /* a later recovery named it: the scan returns it no more (scan.c) */
  approval *pending;
  size_t npending;
} summary;

typedef struct summaries {
  summary *v;
  size_t n, cap;
  size_t *slots; /* index + 1 into v; 0: empty */
  size_t nslots;
  int err;
} summaries;

static uint64_t hash_str(const char *s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
  return h;
}

static size_t *slot_of(summaries *m, const char *id) {
  for (size_t i = hash_str(id) & (m->nslots - 1);; i = (i + 1) & (m->nslots - 1))
    if (m->slots[i] == 0 || strcmp(m->v[m->slots[i] - 1].id, id) == 0) return &m->slots[i];
}

static void clear_run(summary *t) {
  free(t->tenant);
  free(t->plan);
  free(t->stage);
  free(t->recovered_from);
  free(t->error);
  for (size_t i = 0; i < t->npending; i++) {
    free(t->pending[i].stage);
    free(t->pending[i].reason);
  }
  free(t->pending);
  char *id = t->id;
  memset(t, 0, sizeof(*t));
  t->id = id;
  t->index = -1;
}

static summary *summary_of(summaries *m, const char *id) {
  if ((m->n + 1) * 2 > m->nslots) {
    size_t n = m->nslots ? m->nslots * 2 : 256;
    size_t *v = calloc(n, sizeof(*v));
    if (v == NULL) return NULL;
    free(m->slots);
    m->slots = v;
    m->nslots = n;
    for (size_t i = 0; i < m->n; i++)
      *slot_of(m, m->v[i].id) = i + 1;
  }
  size_t *slot = slot_of(m, id);
  if (*slot) return &m->v[*slot - 1];
  if (m->n == m->cap) {
    size_t cap = m->cap ? m->cap * 2 : 64;
    summary *v = realloc(m->v, cap * sizeof(*v));
    if (v == NULL) return NULL;
    m->v = v;
    m->cap = cap;
  }
  summary *t = &m->v[m->n];
  memset(t, 0, sizeof(*t));
  t->index = -1;
  if ((t->id = strdup(id)) == NULL) return NULL;
  *slot = ++m->n;
  return t;
}

static void summaries_free(summaries *m) {
  for (size_t i = 0; i < m->n; i++) {
    clear_run(&m->v[i]);
    free(m->v[i].id);
  }
  free(m->v);
  free(m->slots);
}

static bool replace(char **field, const char *value) {
  char *copy = value ? strdup(value) : NULL;
  if (value && copy == NULL) return false;
  free(*field);
  *field = copy;
  return true;
}

static const char *string_in(const cJSON *o, const char *name) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

static double number_in(const cJSON *o, const char *name, double otherwise) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
  return cJSON_IsNumber(v) ? v->valuedouble : otherwise;
}

/* An approval decision: a grant short of the number needed leaves it pending. */
static void decide(summary *t, const sc_event *ev) {
  for (size_t i = 0; i < t->npending; i++) {
    approval *a = &t->pending[i];
    if (strcmp(a->stage, ev->stage) != 0) continue;
    a->approvals = number_in(ev->data, "approvals", a->approvals);
    double needed = number_in(ev->data, "approvers_needed", a->needed);
    if (ev->type == SC_EV_APPROVAL_GRANTED && a->approvals < needed) return;
    free(a->stage);
    free(a->reason);
    t->pending[i] = t->pending[--t->npending];
    return;
  }
}

static bool request(summary *t, const sc_event *ev) {
  approval *v = realloc(t->pending, (t->npending + 1) * sizeof(*v));
  if (v == NULL) return false;
  t->pending = v;
  approval *a = &v[t->npending];
  memset(a, 0, sizeof(*a));
  double timeout = number_in(ev->data, "timeout_ms", 0);
  a->index = ev->stage_index;
  a->requested_ns = ev->time_ns;
  a->deadline_ns = timeout > 0 ? ev->time_ns + (int64_t)timeout * 1000000 : 0;
  a->needed = number_in(ev->data, "approvers_needed", 1);
  if (!replace(&a->stage, ev->stage) || !replace(&a->reason, string_in(ev->data, "reason"))) {
    free(a->stage);
    return false;
  }
  t->npending++;
  return true;
}

static bool note_task(summary *t, const sc_event_doc *d) {
  const sc_event *ev = sc_event_doc_event(d);
  const char *time = string_in(sc_event_doc_json(d), "time");
  if (ev->type == SC_EV_TASK_CREATED) { /* a run starts afresh */
    clear_run(t);
    snprintf(t->created, sizeof(t->created), "%s", time ? time : "");
    if (!replace(&t->tenant, ev->tenant_id) || !replace(&t->plan, ev->plan_id) ||
        !replace(&t->recovered_from, string_in(ev->data, "recovered_from")))
      return false;
  }
  snprintf(t->updated, sizeof(t->updated), "%s", time ? time : "");
  t->status = sc_task_status_name(ev->status);
  t->epoch = ev->epoch;
  if (ev->stage) {
    if (!replace(&t->stage, ev->stage)) return false;
    t->index = ev->stage_index;
  }
  if (ev->type == SC_EV_TASK_COMPLETED || ev->type == SC_EV_TASK_CANCELLED ||
      ev->type == SC_EV_ROLLBACK_COMPLETED)
    t->finished = true;
  if (ev->type == SC_EV_TASK_STARTED) t->retry_count = number_in(ev->data, "retry_count", 0);
  const cJSON *error = cJSON_GetObjectItemCaseSensitive(ev->data, "error");
  const char *message = cJSON_IsString(error) ? error->valuestring : string_in(error, "message");
  if (message &&
      (ev->type == SC_EV_TASK_FAILED || ev->type == SC_EV_TASK_PAUSED ||
       ev->type == SC_EV_ROLLBACK_FAILED) &&
      !replace(&t->error, message))
    return false;
  if (ev->type == SC_EV_APPROVAL_REQUESTED && ev->stage) return request(t, ev);
  if ((ev->type == SC_EV_APPROVAL_GRANTED || ev->type == SC_EV_APPROVAL_REJECTED ||
       ev->type == SC_EV_APPROVAL_TIMED_OUT) &&
      ev->stage)
    decide(t, ev);
  return true;
}

/* A recovery (a task.recovered, or a task.created that carries its recovery point) supersedes
 * the task it names, as the scan rules: that one is unfinished no more. */
static bool note_recovery(summaries *m, const sc_event *ev) {
  if (ev->type != SC_EV_TASK_RECOVERED &&
      !(ev->type == SC_EV_TASK_CREATED &&
        cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(ev->data, "recovery"))))
    return true;
  const char *from = string_in(ev->data, "recovered_from");
  if (from == NULL || strcmp(from, ev->task_id) == 0) return true;
  summary *old = summary_of(m, from);
  if (old == NULL) return false;
  old->superseded = true;
  return true;
}

static int on_summary(const char *json, size_t len, void *udata) {
  summaries *m = udata;
  sc_event_doc *d = NULL;
  if (sc_event_parse(json, len, &d) != SC_OK) return 0; /* no task's event */
  summary *t = summary_of(m, sc_event_doc_event(d)->task_id);
  bool ok = t != NULL && note_task(t, d) && note_recovery(m, sc_event_doc_event(d));
  sc_event_doc_free(d);
  return ok ? 0 : (m->err = sc_error_set(SC_ENOMEM, "store jsonl: out of memory"));
}

static int summarize(jsonl_store *s, summaries *m) {
  int rc = sc_jsonl_read_events(s->path, on_summary, m);
  return m->err ? m->err : rc;
}

static int by_id(const void *a, const void *b) {
  return strcmp(((const summary *)a)->id, ((const summary *)b)->id);
}

static void format_ns(int64_t ns, char out[40]) {
  time_t secs = (time_t)(ns / 1000000000);
  struct tm tm;
  gmtime_r(&secs, &tm);
  char base[24];
  strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(out, 40, "%s.%06ldZ", base, (long)(ns % 1000000000 / 1000));
}

static cJSON *task_item(const summary *t) {
  cJSON *o = cJSON_CreateObject();
  if (o == NULL) return NULL;
  bool ok = cJSON_AddItemToObject(o, "task", cJSON_CreateString(t->id)) &&
            cJSON_AddItemToObject(o, "tenant", string_or_null(t->tenant)) &&
            cJSON_AddItemToObject(o, "plan", string_or_null(t->plan)) &&
            cJSON_AddItemToObject(o, "status", string_or_null(t->status)) &&
            cJSON_AddItemToObject(o, "stage", string_or_null(t->stage)) &&
            cJSON_AddNumberToObject(o, "index", t->index) &&
            cJSON_AddNumberToObject(o, "retry_count", t->retry_count) &&
            cJSON_AddNumberToObject(o, "epoch", (double)t->epoch) &&
            cJSON_AddItemToObject(o, "recovered_from", string_or_null(t->recovered_from)) &&
            cJSON_AddItemToObject(o, "created", string_or_null(*t->created ? t->created : NULL)) &&
            cJSON_AddItemToObject(o, "updated", string_or_null(*t->updated ? t->updated : NULL)) &&
            cJSON_AddItemToObject(o, "error", string_or_null(t->error));
  if (!ok) cJSON_Delete(o);
  return ok ? o : NULL;
}

static int st_tasks(sc_store *base, const sc_store_task_query *q, cJSON **out) {
  jsonl_store *s = (jsonl_store *)base;
  if (out == NULL) return sc_error_set(SC_EINVAL, "store jsonl: NULL out");
  *out = NULL;
  if (q && (q->version < 1 || q->version > SC_STORE_TASK_QUERY_VERSION))
    return sc_error_set(SC_EINVAL, "store jsonl: unsupported sc_store_task_query version %u",
                        q->version);
  summaries m = {0};
  int rc = summarize(s, &m);
  if (rc != SC_OK) {
    summaries_free(&m);
    return rc;
  }
  if (m.n > 1) qsort(m.v, m.n, sizeof(*m.v), by_id);
  uint32_t limit = q && q->limit ? q->limit : 100, count = 0;
  bool unfinished = q && q->status && strcmp(q->status, "unfinished") == 0;
  cJSON *page = cJSON_CreateObject(), *list = cJSON_AddArrayToObject(page, "tasks");
  const char *next = NULL;
  for (size_t i = 0; list && i < m.n; i++) {
    const summary *t = &m.v[i];
    if (t->status == NULL || (q && q->after && strcmp(t->id, q->after) <= 0) ||
        (q && q->tenant_id && (!t->tenant || strcmp(t->tenant, q->tenant_id) != 0)) ||
        (unfinished && (t->finished || t->superseded)) ||
        (q && q->status && !unfinished && strcmp(t->status, q->status) != 0))
      continue;
    if (count == limit) { /* there is more: the cursor is the last one listed */
      next = string_in(cJSON_GetArrayItem(list, (int)count - 1), "task");
      break;
    }
    cJSON *item = task_item(t);
    if (item == NULL || !cJSON_AddItemToArray(list, item)) {
      cJSON_Delete(item);
      list = NULL;
      break;
    }
    count++;
  }
  if (list == NULL || !cJSON_AddItemToObject(page, "next", string_or_null(next))) {
    cJSON_Delete(page);
    summaries_free(&m);
    return sc_error_set(SC_ENOMEM, "store jsonl: out of memory");
  }
  summaries_free(&m);
  *out = page;
  return SC_OK;
}

typedef struct pending_ref {
  const summary *t;
  const approval *a;
} pending_ref;

static int by_request(const void *x, const void *y) {
  const pending_ref *a = x, *b = y;
  if (a->a->requested_ns != b->a->requested_ns)
    return a->a->requested_ns < b->a->requested_ns ? -1 : 1;
  return strcmp(a->t->id, b->t->id);
}

static int st_approvals(sc_store *base, const char *task_id, cJSON **out) {
  jsonl_store *s = (jsonl_store *)base;
  if (out == NULL) return sc_error_set(SC_EINVAL, "store jsonl: NULL out");
  *out = NULL;
  summaries m = {0};
  int rc = summarize(s, &m);
  size_t n = 0;
  for (size_t i = 0; rc == SC_OK && i < m.n; i++)
    n += m.v[i].npending;
  pending_ref *refs = n ? calloc(n, sizeof(*refs)) : NULL;
  cJSON *list = rc == SC_OK ? cJSON_CreateArray() : NULL;
  if (rc == SC_OK && (list == NULL || (n && refs == NULL)))
    rc = sc_error_set(SC_ENOMEM, "store jsonl: out of memory");
  size_t k = 0;
  for (size_t i = 0; rc == SC_OK && i < m.n; i++) {
    const summary *t = &m.v[i];
    if (t->finished || t->superseded || (task_id && strcmp(t->id, task_id) != 0)) continue;
    for (size_t j = 0; j < t->npending; j++)
      refs[k++] = (pending_ref){t, &t->pending[j]};
  }
  if (k > 1) qsort(refs, k, sizeof(*refs), by_request);
  for (size_t i = 0; rc == SC_OK && i < k; i++) {
    const approval *a = refs[i].a;
    char requested[40], deadline[40];
    format_ns(a->requested_ns, requested);
    format_ns(a->deadline_ns, deadline);
    cJSON *o = cJSON_CreateObject();
    bool ok =
        o != NULL && cJSON_AddItemToArray(list, o) &&
        cJSON_AddItemToObject(o, "task", cJSON_CreateString(refs[i].t->id)) &&
        cJSON_AddItemToObject(o, "tenant", string_or_null(refs[i].t->tenant)) &&
        cJSON_AddItemToObject(o, "stage", cJSON_CreateString(a->stage)) &&
        cJSON_AddNumberToObject(o, "index", a->index) &&
        cJSON_AddItemToObject(o, "reason", string_or_null(a->reason)) &&
        cJSON_AddItemToObject(o, "requested", cJSON_CreateString(requested)) &&
        cJSON_AddItemToObject(o, "deadline", string_or_null(a->deadline_ns ? deadline : NULL)) &&
        cJSON_AddNumberToObject(o, "approvals", a->approvals) &&
        cJSON_AddNumberToObject(o, "approvers_needed", a->needed);
    if (!ok) rc = sc_error_set(SC_ENOMEM, "store jsonl: out of memory");
  }
  free(refs);
  summaries_free(&m);
  if (rc != SC_OK) {
    cJSON_Delete(list);
    return rc;
  }
  *out = list;
  return SC_OK;
}

/* ---- the rest ---- */

static int st_attach(sc_store *base, sc_engine *e) {
  jsonl_store *s = (jsonl_store *)base;
  if (e == NULL) return sc_error_set(SC_EINVAL, "store jsonl: NULL engine");
  if (s->log != NULL)
    return sc_error_set(SC_EBUSY, "store jsonl: %s is attached to an engine already", s->path);
  return sc_jsonl_open(e, s->path, &s->opts, &s->log);
}

static int st_unfinished(sc_store *base, sc_unfinished **out, size_t *n) {
  jsonl_store *s = (jsonl_store *)base;
  /* Attached: through the writer's locked descriptor, what the lock holder sees. */
  return s->log ? sc_jsonl_unfinished(s->log, out, n) : sc_jsonl_scan(s->path, out, n, NULL);
}

static int st_delete_task(sc_store *base, const char *task_id) {
  jsonl_store *s = (jsonl_store *)base;
  if (task_id == NULL) return sc_error_set(SC_EINVAL, "store jsonl: NULL task id");
  sc_unfinished *u = NULL;
  size_t n = 0;
  int rc = st_unfinished(base, &u, &n);
  bool open = false;
  for (size_t i = 0; rc == SC_OK && i < n; i++)
    open = open || strcmp(u[i].request.recovered_from, task_id) == 0;
  sc_unfinished_free(u, n);
  if (rc != SC_OK) return rc;
  if (open)
    return sc_error_set(SC_EBUSY, "store jsonl: task %s has not finished (recovery needs it)",
                        task_id);
  replay probe = {task_id, strlen(task_id), UINT64_MAX, NULL, NULL, false, 0};
  rc = sc_jsonl_read_events(s->path, on_replay, &probe);
  if (rc != SC_OK) return rc;
  if (!probe.known)
    return sc_error_set(SC_ENOTFOUND, "store jsonl: no task %s in %s", task_id, s->path);
  return sc_error_set(
      SC_EINVAL,
      "store jsonl: a log is append-only and forgets no task on its own: `stagecoach "
      "compact %s` (sc_jsonl_compact) drops every finished task's lines at once",
      s->path);
}

static int st_close(sc_store *base) {
  jsonl_store *s = (jsonl_store *)base;
  int rc = sc_jsonl_close(s->log);
  free(s->path);
  free(s);
  return rc;
}

int sc_jsonl_store_open(const char *path, const sc_jsonl_options *o, struct sc_store **out) {
  if (out == NULL) return sc_error_set(SC_EINVAL, "jsonl_store_open: NULL out");
  *out = NULL;
  if (path == NULL || !*path) return sc_error_set(SC_EINVAL, "jsonl_store_open: NULL path");
  if (o != NULL && (o->version < 1 || o->version > SC_JSONL_OPTIONS_VERSION))
    return sc_error_set(SC_EINVAL, "jsonl_store_open: unsupported sc_jsonl_options version %u",
                        o->version);
  jsonl_store *s = calloc(1, sizeof(*s));
  if (s == NULL || (s->path = strdup(path)) == NULL) {
    free(s);
    return sc_error_set(SC_ENOMEM, "jsonl_store_open: out of memory");
  }
  sc_jsonl_options_init(&s->opts);
  if (o != NULL)
    memcpy(&s->opts, o, o->version >= 2 ? sizeof(*o) : offsetof(sc_jsonl_options, existing));
  s->opts.version = SC_JSONL_OPTIONS_VERSION;
  s->base.version = SC_STORE_VERSION;
  s->base.name = "jsonl";
  s->base.attach = st_attach;
  s->base.unfinished = st_unfinished;
  s->base.checkpoints = st_checkpoints;
  s->base.latest = st_latest;
  s->base.checkpoint = st_checkpoint;
  s->base.events = st_events;
  s->base.delete_task = st_delete_task;
  s->base.tasks = st_tasks;
  s->base.approvals = st_approvals;
  s->base.close = st_close;
  *out = &s->base;
  return SC_OK;
}

sc_jsonl *sc_jsonl_store_log(struct sc_store *s) {
  return s != NULL && s->name != NULL && strcmp(s->name, "jsonl") == 0 ? ((jsonl_store *)s)->log
                                                                       : NULL;
}
