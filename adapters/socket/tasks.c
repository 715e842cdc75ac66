/* The tasks a server has seen (a hash table of small records, for `status` and replay, the
 * finished ones bounded by max_finished_tasks) and the stream's filters. */
#include <stdlib.h>
#include <string.h>

#include "socket_int.h"

/* ---- the task table ---- */

sc__sock_task_rec *sc__sock_task_find(sc_socket *s, const char *id) {
  return id == NULL ? NULL : sc__map_get(&s->tasks, id);
}

static char *dup_or_null(const char *s) {
  return s ? strdup(s) : NULL;
}

sc__sock_task_rec *sc__sock_task_record(sc_socket *s, const sc_event *ev) {
  sc__sock_task_rec *t = s->last_task; /* a task's events come in runs: no hash for those */
  if (t != NULL && strcmp(t->id, ev->task_id) == 0) return t;
  if ((t = sc__sock_task_find(s, ev->task_id)) != NULL) return s->last_task = t;
  if ((t = calloc(1, sizeof(*t))) == NULL) return NULL;
  t->id = strdup(ev->task_id);
  t->tenant = dup_or_null(ev->tenant_id);
  if (t->id == NULL || (ev->tenant_id && t->tenant == NULL)) {
    free(t->id);
    free(t->tenant);
    free(t);
    return NULL;
  }
  if (sc__map_put(&s->tasks, t->id, t) != 0) {
    sc__sock_task_free(t);
    return NULL;
  }
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
  sc__map_del(&s->tasks, t->id);
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
