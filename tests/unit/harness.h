/* Shared helpers for the unit tests: an event recorder, JSON parsing with a failing assertion,
 * and loop utilities. Tests use only the public headers. */
#ifndef STAGECOACH_TEST_HARNESS_H
#define STAGECOACH_TEST_HARNESS_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <uv.h>

#include <stagecoach/stagecoach.h>

/* Records every event it receives as its JSON line (sc_event_to_json) plus the short type name.
 * With defer set, it returns SC_DEFER and keeps the acks in `acks` for the test to complete. */
typedef struct recorder {
  char **lines;
  sc_event_type *types;
  char **task_ids;
  char **contexts; /* ev->context as JSON (the whole context in process), or NULL */
  size_t n, cap;
  int defer;           /* 1: return SC_DEFER for every event */
  uint64_t defer_mask; /* with defer: only these types (0: all) */
  sc_ack **acks;
  size_t nacks, acks_cap;
  int fail_with; /* < 0: return this from on_event */
  sc_subscription *sub;
} recorder;

static inline int recorder_on_event(const sc_event *ev, sc_ack *ack, void *udata) {
  recorder *r = udata;
  if (r->n == r->cap) {
    r->cap = r->cap ? r->cap * 2 : 64;
    r->lines = realloc(r->lines, r->cap * sizeof(*r->lines));
    r->types = realloc(r->types, r->cap * sizeof(*r->types));
    r->task_ids = realloc(r->task_ids, r->cap * sizeof(*r->task_ids));
    r->contexts = realloc(r->contexts, r->cap * sizeof(*r->contexts));
  }
  r->contexts[r->n] = ev->context ? cJSON_PrintUnformatted(ev->context) : NULL;
  r->lines[r->n] = sc_event_to_json(ev, NULL);
  r->types[r->n] = ev->type;
  r->task_ids[r->n] = strdup(ev->task_id);
  r->n++;
  if (r->fail_with < 0) return r->fail_with;
  if (r->defer && (r->defer_mask == 0 || (r->defer_mask >> ev->type & 1))) {
    if (r->nacks == r->acks_cap) {
      r->acks_cap = r->acks_cap ? r->acks_cap * 2 : 64;
      r->acks = realloc(r->acks, r->acks_cap * sizeof(*r->acks));
    }
    r->acks[r->nacks++] = ack;
    return SC_DEFER;
  }
  return SC_OK;
}

static inline void recorder_attach(recorder *r, sc_engine *e) {
  memset(r, 0, sizeof(*r));
  sc_subscriber s;
  sc_subscriber_init(&s);
  s.on_event = recorder_on_event;
  s.udata = r;
  assert_int_equal(sc_engine_subscribe(e, &s, &r->sub), SC_OK);
}

/* Completes every held ack with status; returns how many. */
static inline size_t recorder_ack_all(recorder *r, int status) {
  size_t n = r->nacks;
  sc_ack **acks = r->acks;
  r->acks = NULL;
  r->nacks = r->acks_cap = 0;
  for (size_t i = 0; i < n; i++)
    sc_ack_done(acks[i], status);
  free(acks);
  return n;
}

static inline void recorder_free(recorder *r) {
  for (size_t i = 0; i < r->n; i++) {
    free(r->lines[i]);
    free(r->task_ids[i]);
    free(r->contexts[i]);
  }
  free(r->contexts);
  free(r->lines);
  free(r->types);
  free(r->task_ids);
  free(r->acks);
  memset(r, 0, sizeof(*r));
}

/* Number of events of a type (for one task when task_id is not NULL). */
static inline size_t recorder_count(const recorder *r, sc_event_type type, const char *task_id) {
  size_t c = 0;
  for (size_t i = 0; i < r->n; i++)
    if (r->types[i] == type && (task_id == NULL || strcmp(r->task_ids[i], task_id) == 0)) c++;
  return c;
}

/* The short type names joined by commas ("task.created,task.started,..."); for one task when
 * task_id is not NULL. Static buffer. */
static inline const char *recorder_types(const recorder *r, const char *task_id) {
  static char buf[65536];
  size_t off = 0;
  buf[0] = '\0';
  for (size_t i = 0; i < r->n && off < sizeof(buf) - 64; i++) {
    if (task_id && strcmp(r->task_ids[i], task_id) != 0) continue;
    off += (size_t)snprintf(buf + off, sizeof(buf) - off, "%s%s", off ? "," : "",
                            sc_event_type_name(r->types[i]) + strlen("stagecoach."));
  }
  return buf;
}

/* The parsed JSON of the nth (0-based) event of a type; caller frees with cJSON_Delete. */
static inline cJSON *recorder_json(const recorder *r, sc_event_type type, size_t nth) {
  for (size_t i = 0; i < r->n; i++)
    if (r->types[i] == type && nth-- == 0) return cJSON_Parse(r->lines[i]);
  return NULL;
}

/* The whole context an in-process subscriber got with the nth (0-based) event of a type
 * (sc_event.context), parsed; NULL when it had none. Caller frees with cJSON_Delete. */
static inline cJSON *recorder_context(const recorder *r, sc_event_type type, size_t nth) {
  for (size_t i = 0; i < r->n; i++)
    if (r->types[i] == type && nth-- == 0)
      return r->contexts[i] ? cJSON_Parse(r->contexts[i]) : NULL;
  return NULL;
}

static inline cJSON *json_or_die(const char *text) {
  cJSON *j = cJSON_Parse(text);
  if (j == NULL) fail_msg("bad JSON in test: %s", text);
  return j;
}

/* Runs the loop until cond(udata) holds or max_iterations loop turns pass. */
static inline int run_until(uv_loop_t *loop, int (*cond)(void *), void *udata, int max_iterations) {
  for (int i = 0; i < max_iterations; i++) {
    if (cond(udata)) return 1;
    uv_run(loop, UV_RUN_ONCE);
  }
  return cond(udata);
}

#endif
