/* Reading a log: sc_jsonl_verify, and sc_jsonl_scan, which finds the tasks that did not finish
 * and turns each into a ready recovery request.
 *
 * The scan reads a million lines in about a second: each line's chain is checked, but only its
 * type, task id, epoch and status are picked out (the writer puts the envelope attributes before
 * "data" and a bare `"key":` cannot occur inside a JSON string, so the first match is the
 * attribute). The few lines recovery needs — each task's task.created, task.recovered, and the
 * stage.completed lines from its last context snapshot on — are remembered by offset and parsed
 * in full at the end, where the outputs are folded onto the snapshot (docs/jsonl.md). */
#define _GNU_SOURCE /* memmem */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chain.h"

/* The array sc_jsonl_scan hands back keeps its element size for the whole soversion: a field added
 * to sc_unfinished, or to the request it holds, takes its bytes from the reserved room. */
#if UINTPTR_MAX == UINT64_MAX
_Static_assert(sizeof(sc_unfinished) == SC_UNFINISHED_SIZE,
               "sc_unfinished changed size: take the bytes from its reserved room");
#endif

typedef struct line_ref {
  size_t off, len; /* len 0: none */
} line_ref;

typedef struct task_state {
  char *id;     /* NUL-terminated; */
  size_t idlen; /* the key is id[0 .. idlen), which a damaged line may give a NUL byte */
  uint64_t order;
  line_ref created, recovered, completed;
  /* The forward run's stage.completed lines from the last one that carries the whole context
   * on (that one first; every line when none was seen to carry it, as in an older log). */
  line_ref *folds;
  size_t nfolds, capfolds;
  line_ref retried; /* the last task.started of a retry: a restart point of its own */
  line_ref rolled;  /* the last rollback.started: its "intent" */
  bool terminal, superseded, rolling_back, compensating;
  sc_task_status status;
  uint64_t epoch;
} task_state;

/* The tasks by id, in the library's map (the id's bytes are the key: a damaged line may give it
 * a NUL byte); order is the order of first sight, which the scan returns them in. */
static task_state *map_get(sc__map *m, const char *id, size_t len, bool create) {
  task_state *t = sc__map_get_n(m, id, len);
  if (t != NULL || !create) return t;
  t = calloc(1, sizeof(*t));
  if (t == NULL || (t->id = malloc(len + 1)) == NULL) {
    free(t);
    return NULL;
  }
  memcpy(t->id, id, len);
  t->id[len] = '\0';
  t->idlen = len;
  t->order = m->n;
  if (sc__map_put_n(m, t->id, len, t) != 0) {
    free(t->id);
    free(t);
    return NULL;
  }
  return t;
}

static void map_free(sc__map *m) {
  SC__MAP_FOREACH(m, slot) {
    task_state *t = slot->value;
    free(t->id);
    free(t->folds);
    free(t);
  }
  sc__map_free(m);
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
  sc__map tasks;
  const char *base; /* the mapped log, handed over by walk() */
  size_t mapped;
  int err;
} scan_state;

/* A task.recovered, or a task.created that carries its recovery point: the task it names is
 * superseded, and the mode says whether this one rolls back. */
static int note_recovery(scan_state *s, const char *line, size_t len, task_state *t) {
  sc_event_doc *d;
  if (sc_event_parse(line, len, &d) != SC_OK) return SC_OK; /* verified but not ours: skip */
  const cJSON *data = sc_event_doc_event(d)->data;
  const cJSON *from = cJSON_GetObjectItemCaseSensitive(data, "recovered_from");
  const cJSON *point = cJSON_GetObjectItemCaseSensitive(data, "recovery");
  if (sc_event_doc_event(d)->type == SC_EV_TASK_CREATED && !cJSON_IsObject(point)) {
    sc_event_doc_free(d); /* a new task whose config happens to hold the word */
    return SC_OK;
  }
  if (cJSON_IsString(from) && strcmp(from->valuestring, t->id) != 0) { /* not itself, recovered
                                                                          under its own id */
    task_state *old = map_get(&s->tasks, from->valuestring, strlen(from->valuestring), true);
    if (old == NULL) {
      sc_event_doc_free(d);
      return SC_ENOMEM;
    }
    old->superseded = true;
  }
  const cJSON *mode =
      cJSON_GetObjectItemCaseSensitive(cJSON_IsObject(point) ? point : data, "mode");
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
                            .folds = t->folds,
                            .capfolds = t->capfolds,
                            .status = t->status,
                            .epoch = t->epoch};
        *t = fresh;
      }
      t->created = ref;
      t->nfolds = 0;
      if (HAS(data, (size_t)(end - data), "\"recovered_from\":"))
        return note_recovery(s, line, len, t);
      break;
    case SC_EV_TASK_RECOVERED: t->recovered = ref; return note_recovery(s, line, len, t);
    case SC_EV_STAGE_COMPLETED:
      if (t->rolling_back) break; /* the forward run's checkpoints only */
      t->completed = ref;
      /* The writer puts the whole context, when a line carries it, right after the status. */
      if (status != NULL && (size_t)(end - (status + slen)) > 12 &&
          memcmp(status + slen, "\",\"context\":{", 13) == 0)
        t->nfolds = 0;
      if (!sc__grow(&t->folds, &t->capfolds, t->nfolds + 1, sizeof(*t->folds), 4))
        return sc_error_set(SC_ENOMEM, "scan: out of memory");
      t->folds[t->nfolds++] = ref;
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
    case SC_EV_ROLLBACK_COMPLETED:
      t->terminal = true;
      t->nfolds = 0; /* a finished task needs no fold: its memory goes back at once */
      t->capfolds = 0;
      free(t->folds);
      t->folds = NULL;
      break;
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

/* Maps the log at path (read only, no lock) with the message a caller shows. */
static int map_path(const char *path, sc__log *l) {
  int rc = sc__log_map(path, l);
  if (rc == SC_OK) return SC_OK;
  if (rc == SC_EPARSE)
    return sc_error_set(SC_EPARSE,
                        "%s is not a stagecoach log (a device, FIFO or socket, not a file)", path);
  return sc_error_set(rc == SC_ENOTFOUND ? SC_ENOTFOUND : SC_EIO, "open %s: %s", path,
                      strerror(errno));
}

static int walk(const char *path, const sc__log *l, bool stop_at_good, sc__line_fn fn, void *udata,
                sc_jsonl_report *r) {
  sc__chain c;
  if (sc__chain_init(&c) != SC_OK) return sc_error_set(SC_ENOMEM, "scan: out of memory");
  if (fn != NULL) ((scan_state *)udata)->base = l->data;
  int rc = sc__log_walk(path, l, &c, fn, udata, r);
  if (rc == SC_ECORRUPT && stop_at_good) rc = SC_OK;
  if (rc == SC_OK && fn != NULL) rc = ((scan_state *)udata)->err;
  sc__chain_free(&c);
  return rc;
}

int sc_jsonl_verify(const char *path, sc_jsonl_report *r) {
  sc_jsonl_report local;
  if (r == NULL) r = &local;
  memset(r, 0, sizeof(*r));
  if (path == NULL) return sc_error_set(SC_EINVAL, "verify: NULL path");
  sc__log l;
  int rc = map_path(path, &l);
  if (rc != SC_OK) return rc;
  rc = walk(path, &l, false, NULL, NULL, r);
  sc__log_unmap(&l);
  return rc;
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

/* Merges the members of output into context, as the engine does (a member of the same name is
 * replaced in place, a new one appended). */
bool sc__jsonl_merge_into(cJSON *context, const cJSON *output) {
  for (const cJSON *m = cJSON_IsObject(output) ? output->child : NULL; m != NULL; m = m->next) {
    cJSON *item = cJSON_Duplicate(m, true);
    if (item == NULL) return false;
    if (cJSON_GetObjectItemCaseSensitive(context, m->string) != NULL) {
      cJSON_ReplaceItemInObjectCaseSensitive(context, m->string, item);
    } else if (!cJSON_AddItemToObject(context, m->string, item)) {
      cJSON_Delete(item);
      return false;
    }
  }
  return true;
}

/* The context after a task's last forward stage.completed: the last line that carries it whole,
 * or the last snapshot with the outputs after it folded on, checked against the line's digest.
 * base is the context before the first stage (task.created). On success req->context,
 * req->context_digest and req->last_completed_stage are set from the last line. */
static int fold_context(const char *base, const task_state *t, const cJSON *initial,
                        sc_recovery_request *req, char *why, size_t whylen) {
  sc_event_doc *d = NULL;
  const line_ref *last = &t->folds[t->nfolds - 1];
  if (sc_event_parse(base + last->off, last->len, &d) != SC_OK) return SC_EPARSE;
  const sc_event *ev = sc_event_doc_event(d);
  free((char *)req->last_completed_stage);
  req->last_completed_stage = dup_str(ev->stage);
  free((char *)req->context_digest);
  req->context_digest = dup_str(string_member(ev, "digest"));
  cJSON *context = dup_object(member(ev, "context"));
  sc_event_doc_free(d);
  if (context == NULL && req->context_digest == NULL) {
    /* Every stage.completed the writer writes carries its digest: without one and without a
     * snapshot, the context it recorded cannot be told. */
    snprintf(why, whylen,
             "the stage.completed of '%s' carries neither the context nor its digest (a changed "
             "line)",
             req->last_completed_stage ? req->last_completed_stage : "?");
    return SC_ECORRUPT;
  }
  if (context != NULL) { /* a whole snapshot: nothing to fold */
    cJSON_Delete((cJSON *)req->context);
    req->context = context;
    return SC_OK;
  }
  context = initial ? cJSON_Duplicate(initial, true) : cJSON_CreateObject();
  for (size_t i = 0; context != NULL && i < t->nfolds; i++) {
    if (sc_event_parse(base + t->folds[i].off, t->folds[i].len, &d) != SC_OK) continue;
    const cJSON *whole = member(sc_event_doc_event(d), "context");
    if (cJSON_IsObject(whole)) {
      cJSON_Delete(context);
      context = cJSON_Duplicate(whole, true);
    } else if (!sc__jsonl_merge_into(context, member(sc_event_doc_event(d), "output"))) {
      cJSON_Delete(context);
      context = NULL;
    }
    sc_event_doc_free(d);
  }
  if (context == NULL) return SC_ENOMEM;
  char digest[72];
  if (sc_json_digest(context, digest) != SC_OK || strcmp(digest, req->context_digest) != 0) {
    snprintf(why, whylen,
             "the context folded from its snapshot and the outputs after it does not match the "
             "digest of its stage.completed of '%s' (recorded %s, folded %s)",
             req->last_completed_stage ? req->last_completed_stage : "?", req->context_digest,
             digest);
    cJSON_Delete(context);
    return SC_ECORRUPT;
  }
  cJSON_Delete((cJSON *)req->context);
  req->context = context;
  return SC_OK;
}

static uint32_t intent_of(const sc_event *ev) {
  const cJSON *v = member(ev, "intent");
  return cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble <= 4294967295.0
             ? (uint32_t)v->valuedouble
             : 0;
}

/* Fills one recovery request from a task's remembered lines. */
static int build(const char *base, const task_state *t, sc_unfinished *u, char *why,
                 size_t whylen) {
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
  /* A recovered task's task.created carries the point it recovered to: a task that stopped
   * right after it carries on from that same point. */
  const cJSON *point = member(ev, "recovery");
  bool has_point = cJSON_IsObject(point); /* point dies with d, freed below */
  const cJSON *holder = has_point ? point : ev->data;
  req->context = dup_object(cJSON_GetObjectItemCaseSensitive(holder, "context"));
  const cJSON *digest = cJSON_GetObjectItemCaseSensitive(holder, "digest");
  req->context_digest =
      req->context && cJSON_IsString(digest) ? dup_str(digest->valuestring) : NULL;
  const cJSON *point_last = cJSON_GetObjectItemCaseSensitive(point, "last_completed_stage");
  if (cJSON_IsString(point_last) && !t->completed.len)
    req->last_completed_stage = dup_str(point_last->valuestring);
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
  if (t->recovered.len && !has_point) {
    /* An older log: the recovery point is in task.recovered only. */
    if (sc_event_parse(base + t->recovered.off, t->recovered.len, &d) == SC_OK) {
      const char *last = string_member(sc_event_doc_event(d), "last_completed_stage");
      if (last && !t->completed.len) req->last_completed_stage = dup_str(last);
      sc_event_doc_free(d);
    }
  }
  if (t->nfolds > 0) {
    cJSON *initial = (cJSON *)req->context;
    req->context = NULL;
    int rc = fold_context(base, t, initial, req, why, whylen);
    cJSON_Delete(initial);
    if (rc != SC_OK) return rc;
  }
  /* A retry after the last checkpoint restarts there: at the stage after the one it names, and
   * with an empty context when it reset the context. */
  bool retry_last = t->retried.len && (!t->completed.len || t->retried.off > t->completed.off) &&
                    (!t->recovered.len || t->retried.off > t->recovered.off) &&
                    t->retried.off > t->created.off;
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

int sc__jsonl_scan_log(const char *path, const sc__log *l, bool stop_at_good, sc_unfinished **out,
                       size_t *n, sc_jsonl_report *r) {
  sc_jsonl_report local;
  if (r == NULL) r = &local;
  *out = NULL;
  *n = 0;
  scan_state s = {0};
  int rc = walk(path, l, stop_at_good, on_line, &s, r);
  if (rc != SC_OK) {
    map_free(&s.tasks);
    return rc;
  }
  size_t count = 0;
  task_state **list = s.tasks.n ? malloc(s.tasks.n * sizeof(*list)) : NULL;
  if (s.tasks.n && list == NULL) {
    map_free(&s.tasks);
    return sc_error_set(SC_ENOMEM, "scan: out of memory");
  }
  SC__MAP_FOREACH(&s.tasks, slot) {
    task_state *t = slot->value;
    if (!t->terminal && !t->superseded && t->created.len) list[count++] = t;
  }
  if (count > 1) qsort(list, count, sizeof(*list), by_order);
  sc_unfinished *u = count ? calloc(count, sizeof(*u)) : NULL;
  rc = count && u == NULL ? sc_error_set(SC_ENOMEM, "scan: out of memory") : SC_OK;
  for (size_t i = 0; i < count && rc == SC_OK; i++) {
    char why[400] = "";
    rc = build(l->data, list[i], &u[i], why, sizeof(why));
    u[i].scanned = u[i].request;
    if (rc != SC_OK) {
      sc_unfinished_free(u, i + 1);
      u = NULL;
      rc = *why ? sc_error_set(rc, "scan %s: task %s: %s", path, list[i]->id, why)
                : sc_error_set(rc, "scan %s: cannot rebuild task %s from its lines", path,
                               list[i]->id);
    }
  }
  free(list);
  map_free(&s.tasks);
  if (rc != SC_OK) return rc;
  *out = u;
  *n = count;
  return SC_OK;
}

int sc_jsonl_scan_ex(const char *path, const sc_jsonl_scan_options *o, sc_unfinished **out,
                     size_t *n, sc_jsonl_report *r) {
  if (out) *out = NULL;
  if (n) *n = 0;
  if (r) memset(r, 0, sizeof(*r));
  if (path == NULL || out == NULL || n == NULL)
    return sc_error_set(SC_EINVAL, "scan: NULL argument");
  if (o != NULL && (o->version < 1 || o->version > SC_JSONL_SCAN_OPTIONS_VERSION))
    return sc_error_set(SC_EINVAL, "scan: unsupported sc_jsonl_scan_options version %u",
                        o->version);
  sc__log l;
  int rc = map_path(path, &l);
  if (rc != SC_OK) return rc;
  rc = sc__jsonl_scan_log(path, &l, o && o->stop_at_last_good_line, out, n, r);
  sc__log_unmap(&l);
  return rc;
}

int sc_jsonl_scan(const char *path, sc_unfinished **out, size_t *n, sc_jsonl_report *r) {
  return sc_jsonl_scan_ex(path, NULL, out, n, r);
}

void sc_unfinished_free(sc_unfinished *u, size_t n) {
  if (u == NULL) return;
  for (size_t i = 0; i < n; i++) {
    sc_recovery_request *q = &u[i].scanned; /* what the scan allocated, whatever request holds */
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
