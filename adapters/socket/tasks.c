/* The tasks a server has seen (a hash table of small records, for `status` and replay, the
 * finished ones bounded by max_finished_tasks) and the stream's filters. */
#include <stdlib.h>
#include <string.h>

#include "socket_int.h"

/* ---- the task table ---- */

static size_t hash_id(const char *s) {
  size_t h = 1469598103934665603u;
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 1099511628211u;
  return h;
}

sc__sock_task_rec *sc__sock_task_find(sc_socket *s, const char *id) {
  if (s->nbuckets == 0 || id == NULL) return NULL;
  for (sc__sock_task_rec *t = s->buckets[hash_id(id) % s->nbuckets]; t; t = t->next)
    if (strcmp(t->id, id) == 0) return t;
  return NULL;
}

static bool grow_table(sc_socket *s) {
  size_t n = s->nbuckets ? s->nbuckets * 2 : 64;
  sc__sock_task_rec **b = calloc(n, sizeof(*b));
  if (b == NULL) return false;
  sc__queue *q;
  sc__queue_foreach(q, &s->all) {
    sc__sock_task_rec *t = sc__queue_data(q, sc__sock_task_rec, all);
    size_t i = hash_id(t->id) % n;
    t->next = b[i];
    b[i] = t;
  }
  free(s->buckets);
  s->buckets = b;
  s->nbuckets = n;
  return true;
}

static char *dup_or_null(const char *s) {
  return s ? strdup(s) : NULL;
}

sc__sock_task_rec *sc__sock_task_record(sc_socket *s, const sc_event *ev) {
  sc__sock_task_rec *t = s->last_task; /* a task's events come in runs: no hash for those */
  if (t != NULL && strcmp(t->id, ev->task_id) == 0) return t;
  if ((t = sc__sock_task_find(s, ev->task_id)) != NULL) return s->last_task = t;
  if (s->ntasks + 1 > s->nbuckets && !grow_table(s)) return NULL;
  if ((t = calloc(1, sizeof(*t))) == NULL) return NULL;
  t->id = strdup(ev->task_id);
  t->tenant = dup_or_null(ev->tenant_id);
  if (t->id == NULL || (ev->tenant_id && t->tenant == NULL)) {
    free(t->id);
    free(t->tenant);
    free(t);
    return NULL;
  }
  size_t i = hash_id(t->id) % s->nbuckets;
  t->next = s->buckets[i];
  s->buckets[i] = t;
  sc__queue_init(&t->finished);
  sc__queue_insert_tail(&s->all, &t->all);
  s->ntasks++;
  return s->last_task = t;
}

void sc__sock_task_free(sc__sock_task_rec *t) {
  free(t->id);
  free(t->tenant);
  free(t->stage);
  free(t);
}

/* A ring slot no longer names t. */
void sc__sock_ring_release(sc__sock_task_rec *t) {
  if (t != NULL && --t->ring_refs == 0 && t->forgotten) sc__sock_task_free(t);
}

/* Takes the longest finished record out of the table; the ring may still name it (its replay
 * lines), so it is freed with the last slot that does. */
static void forget_oldest(sc_socket *s) {
  sc__sock_task_rec *t = sc__queue_data(sc__queue_head(&s->finished), sc__sock_task_rec, finished);
  for (sc__sock_task_rec **p = &s->buckets[hash_id(t->id) % s->nbuckets]; *p; p = &(*p)->next)
    if (*p == t) {
      *p = t->next;
      break;
    }
  sc__queue_remove(&t->finished);
  sc__queue_remove(&t->all);
  s->nfinished--;
  s->ntasks--;
  s->forgotten++;
  if (s->last_task == t) s->last_task = NULL;
  t->forgotten = true;
  if (t->ring_refs == 0) sc__sock_task_free(t);
}

/* Finished, for the bound: a terminal status, or one a task stays in until someone retries or
 * rolls it back (the engine holds such a task, so status still answers for it). */
static bool finished(sc_task_status st) {
  return sc_task_status_is_terminal(st) || st == SC_TASK_FAILED || st == SC_TASK_ROLLBACK_FAILED;
}

/* Keeps the finished list in step with t's status, and at most max_finished_tasks on it. */
void sc__sock_task_note_status(sc_socket *s, sc__sock_task_rec *t) {
  bool done = finished(t->status);
  if (done == sc__queue_linked(&t->finished)) return;
  if (!done) { /* retried or rolled back: running again */
    sc__queue_remove(&t->finished);
    s->nfinished--;
    return;
  }
  sc__queue_insert_tail(&s->finished, &t->finished);
  s->nfinished++;
  while (s->nfinished > s->o.max_finished_tasks)
    forget_oldest(s);
}

/* ---- filters ---- */

static bool type_matches(const char *pattern, const char *dotted) {
  size_t n = strlen(pattern);
  if (strcmp(pattern, "*") == 0) return true;
  if (n >= 2 && pattern[n - 1] == '*' && pattern[n - 2] == '.')
    return strncmp(pattern, dotted, n - 1) == 0;
  return strcmp(pattern, dotted) == 0;
}

bool sc__sock_filter_match(const sc__sock_filter *f, const char *task_id, const char *tenant,
                           sc_event_type type) {
  if (f->task && strcmp(f->task, task_id) != 0) return false;
  if (f->tenant && (tenant == NULL || strcmp(f->tenant, tenant) != 0)) return false;
  if (f->ntypes == 0) return true;
  const char *dotted = sc_event_type_name(type) + strlen("stagecoach.");
  for (size_t i = 0; i < f->ntypes; i++)
    if (type_matches(f->types[i], dotted)) return true;
  return false;
}

void sc__sock_filter_free(sc__sock_filter *f) {
  free(f->tenant);
  free(f->task);
  for (size_t i = 0; i < f->ntypes; i++)
    free(f->types[i]);
  free(f->types);
  memset(f, 0, sizeof(*f));
}
