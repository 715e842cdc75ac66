/* The in-memory store: every event an attached engine emits is kept as its JSON line, in order;
 * the queries read those lines (checkpoints folded from the last snapshot and the outputs after
 * it, verified like the durable stores'), and the unfinished tasks come from the log's scan. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../events/internal.h"
#include "stagecoach/memory.h"
#include "store_int.h"

typedef struct mem_event {
  char *task_id;
  uint64_t seq;
  sc_event_type type;
  char *json;
  size_t len;
} mem_event;

typedef struct sc_memory_store {
  sc_store store; /* first */
  sc_subscription *sub;
  mem_event *v;
  size_t n, cap;
} sc_memory_store;

#define MEM(s) ((sc_memory_store *)(s))

static int grow(sc_memory_store *m) {
  size_t cap = m->cap ? m->cap * 2 : 64;
  mem_event *v = realloc(m->v, cap * sizeof(*v));
  if (v == NULL) return sc_error_set(SC_ENOMEM, "store memory: out of memory");
  m->v = v;
  m->cap = cap;
  return SC_OK;
}

static int on_event(const sc_event *ev, sc_ack *ack, void *udata) {
  (void)ack;
  sc_memory_store *m = udata;
  if (m->n == m->cap && grow(m) != SC_OK) return SC_ENOMEM;
  mem_event *e = &m->v[m->n];
  e->json = sc_event_to_json(ev, &e->len);
  e->task_id = strdup(ev->task_id);
  if (e->json == NULL || e->task_id == NULL) {
    free(e->json);
    free(e->task_id);
    return sc_error_set(SC_ENOMEM, "store memory: out of memory");
  }
  e->seq = ev->seq;
  e->type = ev->type;
  m->n++;
  return SC_OK;
}

int sc_memory_store_add(sc_store *s, const char *json, size_t len) {
  if (s == NULL || json == NULL || s->name == NULL || strcmp(s->name, "memory") != 0)
    return sc_error_set(SC_EINVAL, "sc_memory_store_add: not a memory store");
  sc_event_doc *d;
  int rc = sc_event_parse(json, len, &d);
  if (rc != SC_OK) return rc;
  sc_memory_store *m = MEM(s);
  const sc_event *ev = sc_event_doc_event(d);
  rc = m->n == m->cap ? grow(m) : SC_OK;
  mem_event *e = &m->v[m->n];
  if (rc == SC_OK) {
    e->json = strndup(json, len);
    e->task_id = strdup(ev->task_id);
    e->len = len;
    e->seq = ev->seq;
    e->type = ev->type;
    if (e->json == NULL || e->task_id == NULL) {
      free(e->json);
      free(e->task_id);
      rc = sc_error_set(SC_ENOMEM, "store memory: out of memory");
    } else {
      m->n++;
    }
  }
  sc_event_doc_free(d);
  return rc;
}

static int m_attach(sc_store *s, sc_engine *e) {
  sc_memory_store *m = MEM(s);
  if (m->sub) return sc_error_set(SC_EBUSY, "store memory: attached already");
  sc_subscriber sub;
  sc_subscriber_init(&sub);
  sub.on_event = on_event;
  sub.udata = m;
  return sc_engine_subscribe(e, &sub, &m->sub);
}

static int m_unfinished(sc_store *s, sc_unfinished **out, size_t *n) {
  sc_memory_store *m = MEM(s);
  if (out == NULL || n == NULL) return sc_error_set(SC_EINVAL, "store memory: NULL argument");
  sc__eventlog log;
  int rc = sc__eventlog_init(&log);
  for (size_t i = 0; rc == SC_OK && i < m->n; i++)
    rc = sc__eventlog_add(&log, m->v[i].json, m->v[i].len);
  if (rc == SC_OK) rc = sc__eventlog_unfinished(&log, "memory", out, n);
  sc__eventlog_free(&log);
  return rc;
}

static bool known(const sc_memory_store *m, const char *task_id) {
  for (size_t i = 0; i < m->n; i++)
    if (strcmp(m->v[i].task_id, task_id) == 0) return true;
  return false;
}

static const cJSON *member(const cJSON *o, const char *name) {
  return cJSON_GetObjectItemCaseSensitive(o, name);
}

/* The checkpoint object of a parsed stage.completed (without context). */
static cJSON *checkpoint_json(const sc_event *ev) {
  cJSON *o = cJSON_CreateObject();
  size_t idlen = strlen(ev->task_id) + 24;
  char *id = malloc(idlen);
  if (id == NULL) {
    cJSON_Delete(o);
    return NULL;
  }
  snprintf(id, idlen, "%s/%" PRIu64, ev->task_id, ev->seq);
  cJSON_AddStringToObject(o, "id", id);
  free(id);
  cJSON_AddStringToObject(o, "task", ev->task_id);
  cJSON_AddItemToObject(o, "tenant",
                        ev->tenant_id ? cJSON_CreateString(ev->tenant_id) : cJSON_CreateNull());
  cJSON_AddItemToObject(o, "plan",
                        ev->plan_id ? cJSON_CreateString(ev->plan_id) : cJSON_CreateNull());
  cJSON_AddStringToObject(o, "stage", ev->stage ? ev->stage : "");
  cJSON_AddNumberToObject(o, "index", ev->stage_index);
  cJSON_AddNumberToObject(o, "attempt", ev->attempt);
  cJSON_AddNumberToObject(o, "seq", (double)ev->seq);
  cJSON_AddNumberToObject(o, "epoch", (double)ev->epoch);
  char time[32];
  sc__format_time(ev->time_ns, time);
  cJSON_AddStringToObject(o, "time", time);
  cJSON_AddStringToObject(o, "reason", ev->status == SC_TASK_ROLLING_BACK ? "rollback" : "run");
  const cJSON *output = member(ev->data, "output");
  cJSON_AddItemToObject(o, "output", output ? cJSON_Duplicate(output, true) : cJSON_CreateNull());
  const cJSON *digest = member(ev->data, "digest"), *fp = member(ev->data, "fingerprint");
  cJSON_AddItemToObject(o, "digest",
                        cJSON_IsString(digest) ? cJSON_CreateString(digest->valuestring)
                                               : cJSON_CreateNull());
  cJSON_AddItemToObject(o, "fingerprint",
                        cJSON_IsString(fp) ? cJSON_CreateString(fp->valuestring)
                                           : cJSON_CreateNull());
  return o;
}

/* Walks a task's events up to seq (0: all): every checkpoint into list (may be NULL), and the
 * context after the one at seq into *context (may be NULL). The last checkpoint seen is *last. */
static int walk_task(const sc_memory_store *m, const char *task_id, uint64_t upto, cJSON *list,
                     cJSON **last, cJSON **context) {
  cJSON *ctx = cJSON_CreateObject();
  int rc = SC_OK;
  for (size_t i = 0; i < m->n && rc == SC_OK; i++) {
    const mem_event *e = &m->v[i];
    if (strcmp(e->task_id, task_id) != 0) continue;
    if (upto && e->seq > upto) break;
    if (e->type != SC_EV_TASK_CREATED && e->type != SC_EV_STAGE_COMPLETED) continue;
    sc_event_doc *d;
    if (sc_event_parse(e->json, e->len, &d) != SC_OK) continue;
    const sc_event *ev = sc_event_doc_event(d);
    if (ev->type == SC_EV_TASK_CREATED) {
      const cJSON *point = member(ev->data, "recovery");
      const cJSON *initial = member(cJSON_IsObject(point) ? point : ev->data, "context");
      cJSON_Delete(ctx);
      ctx = cJSON_IsObject(initial) ? cJSON_Duplicate(initial, true) : cJSON_CreateObject();
    } else {
      const cJSON *whole = member(ev->data, "context");
      if (cJSON_IsObject(whole)) {
        cJSON_Delete(ctx);
        ctx = cJSON_Duplicate(whole, true);
      } else if (!sc__context_merge(ctx, member(ev->data, "output"))) {
        rc = sc_error_set(SC_ENOMEM, "store memory: out of memory");
      }
      cJSON *c = checkpoint_json(ev);
      if (list) cJSON_AddItemToArray(list, cJSON_Duplicate(c, true));
      cJSON_Delete(*last);
      *last = c;
    }
    sc_event_doc_free(d);
  }
  if (context && rc == SC_OK)
    *context = ctx;
  else
    cJSON_Delete(ctx);
  return rc;
}

static int m_checkpoints(sc_store *s, const char *task_id, cJSON **out) {
  sc_memory_store *m = MEM(s);
  if (task_id == NULL || out == NULL) return sc_error_set(SC_EINVAL, "store memory: NULL argument");
  if (!known(m, task_id)) return sc_error_set(SC_ENOTFOUND, "store memory: no task '%s'", task_id);
  cJSON *list = cJSON_CreateArray(), *last = NULL;
  int rc = walk_task(m, task_id, 0, list, &last, NULL);
  cJSON_Delete(last);
  if (rc != SC_OK) {
    cJSON_Delete(list);
    return rc;
  }
  *out = list;
  return SC_OK;
}

static int with_context(sc_memory_store *m, const char *task_id, uint64_t seq, cJSON **out) {
  cJSON *last = NULL, *context = NULL;
  int rc = walk_task(m, task_id, seq, NULL, &last, &context);
  if (rc == SC_OK && (last == NULL || (seq && member(last, "seq")->valuedouble != (double)seq)))
    rc = seq ? sc_error_set(SC_ENOTFOUND, "store memory: no checkpoint '%s/%" PRIu64 "'", task_id,
                            seq)
             : sc_error_set(SC_ENOTFOUND, "store memory: task '%s' has no checkpoint", task_id);
  if (rc == SC_OK) {
    const cJSON *digest = member(last, "digest");
    rc = sc__context_verify(context, cJSON_IsString(digest) ? digest->valuestring : NULL, "memory",
                            member(last, "id")->valuestring);
    if (rc == SC_OK)
      rc = sc__output_verify(context, member(last, "output"), "memory",
                             member(last, "id")->valuestring);
  }
  if (rc != SC_OK) {
    cJSON_Delete(last);
    cJSON_Delete(context);
    return rc;
  }
  cJSON_AddItemToObject(last, "context", context);
  *out = last;
  return SC_OK;
}

static int m_latest(sc_store *s, const char *task_id, cJSON **out) {
  if (task_id == NULL || out == NULL) return sc_error_set(SC_EINVAL, "store memory: NULL argument");
  if (!known(MEM(s), task_id))
    return sc_error_set(SC_ENOTFOUND, "store memory: no task '%s'", task_id);
  return with_context(MEM(s), task_id, 0, out);
}

static int m_checkpoint(sc_store *s, const char *id, cJSON **out) {
  if (out == NULL) return sc_error_set(SC_EINVAL, "store memory: NULL argument");
  char *task;
  uint64_t seq;
  int rc = sc__checkpoint_id_split(id, &task, &seq);
  if (rc != SC_OK) return rc;
  rc = with_context(MEM(s), task, seq, out);
  free(task);
  return rc;
}

static int m_events(sc_store *s, const char *task_id, uint64_t from_seq, sc_store_event_fn fn,
                    void *udata) {
  sc_memory_store *m = MEM(s);
  if (fn == NULL) return sc_error_set(SC_EINVAL, "store memory: NULL argument");
  if (task_id && !known(m, task_id))
    return sc_error_set(SC_ENOTFOUND, "store memory: no task '%s'", task_id);
  for (size_t i = 0; i < m->n; i++) {
    const mem_event *e = &m->v[i];
    if ((task_id && strcmp(e->task_id, task_id) != 0) || e->seq < from_seq) continue;
    int rc = fn(e->json, e->len, udata);
    if (rc != 0) return rc;
  }
  return SC_OK;
}

static bool finished(const sc_memory_store *m, const char *task_id) {
  bool done = false;
  for (size_t i = 0; i < m->n; i++)
    if (strcmp(m->v[i].task_id, task_id) == 0) {
      sc_event_type t = m->v[i].type;
      if (t == SC_EV_TASK_CREATED) done = false;
      if (t == SC_EV_TASK_COMPLETED || t == SC_EV_TASK_CANCELLED || t == SC_EV_ROLLBACK_COMPLETED)
        done = true;
    }
  return done;
}

/* The unfinished task that task_id recovered (its task.created's recovered_from): a copy, or
 * NULL. */
static char *superseded(const sc_memory_store *m, const char *task_id) {
  for (size_t i = 0; i < m->n; i++) {
    const mem_event *e = &m->v[i];
    if (e->type != SC_EV_TASK_CREATED || strcmp(e->task_id, task_id) != 0) continue;
    sc_event_doc *d;
    if (sc_event_parse(e->json, e->len, &d) != SC_OK) continue;
    const cJSON *from = member(sc_event_doc_event(d)->data, "recovered_from");
    char *out = NULL;
    if (cJSON_IsString(from) && strcmp(from->valuestring, task_id) != 0 &&
        known(m, from->valuestring) && !finished(m, from->valuestring))
      out = strdup(from->valuestring);
    sc_event_doc_free(d);
    return out;
  }
  return NULL;
}

static int m_delete(sc_store *s, const char *task_id) {
  sc_memory_store *m = MEM(s);
  if (task_id == NULL) return sc_error_set(SC_EINVAL, "store memory: NULL argument");
  if (!known(m, task_id)) return sc_error_set(SC_ENOTFOUND, "store memory: no task '%s'", task_id);
  if (!finished(m, task_id))
    return sc_error_set(SC_EBUSY, "store memory: task %s has not finished: recovery needs it",
                        task_id);
  /* The unfinished tasks it recovered go with it: left alone, they would be unfinished again. */
  char *task = strdup(task_id);
  for (size_t hops = 0; task != NULL && hops <= m->n; hops++) {
    char *prev = superseded(m, task);
    size_t keep = 0;
    for (size_t i = 0; i < m->n; i++) {
      if (strcmp(m->v[i].task_id, task) == 0) {
        free(m->v[i].task_id);
        free(m->v[i].json);
      } else {
        m->v[keep++] = m->v[i];
      }
    }
    m->n = keep;
    free(task);
    task = prev;
  }
  free(task);
  return SC_OK;
}

static int m_close(sc_store *s) {
  sc_memory_store *m = MEM(s);
  sc_subscription_cancel(m->sub);
  for (size_t i = 0; i < m->n; i++) {
    free(m->v[i].task_id);
    free(m->v[i].json);
  }
  free(m->v);
  free(m);
  return SC_OK;
}

int sc_memory_store_new(sc_store **out) {
  if (out == NULL) return sc_error_set(SC_EINVAL, "store memory: NULL argument");
  *out = NULL;
  sc_memory_store *m = calloc(1, sizeof(*m));
  if (m == NULL) return sc_error_set(SC_ENOMEM, "store memory: out of memory");
  m->store = (sc_store){.version = SC_STORE_VERSION,
                        .name = "memory",
                        .attach = m_attach,
                        .unfinished = m_unfinished,
                        .checkpoints = m_checkpoints,
                        .latest = m_latest,
                        .checkpoint = m_checkpoint,
                        .events = m_events,
                        .delete_task = m_delete,
                        .close = m_close};
  *out = &m->store;
  return SC_OK;
}
