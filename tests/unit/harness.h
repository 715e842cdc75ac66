/* Shared helpers for the unit tests: an event recorder, JSON parsing with a failing assertion,
 * loop utilities and the engine fixtures (start, stop, settle, submit, a log book). Tests use only
 * the public headers. */
#ifndef STAGECOACH_TEST_HARNESS_H
#define STAGECOACH_TEST_HARNESS_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
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

/* ---- reading events ---- */

/* The nth event of a type, parsed; the test fails when there is none. Caller frees with
 * cJSON_Delete(). */
static inline cJSON *event_json(const recorder *r, sc_event_type type, size_t nth) {
  cJSON *j = recorder_json(r, type, nth);
  if (j == NULL)
    fail_msg("no %s #%zu among: %s", sc_event_type_name(type), nth, recorder_types(r, NULL));
  return j;
}

/* The data object of the nth event of a type; the whole event is in *root (caller frees it with
 * cJSON_Delete()). The test fails when there is no such event. */
static inline const cJSON *event_data(const recorder *r, sc_event_type type, size_t nth,
                                      cJSON **root) {
  *root = recorder_json(r, type, nth);
  if (*root == NULL) fail_msg("no %s number %zu", sc_event_type_name(type), nth);
  const cJSON *data = cJSON_GetObjectItemCaseSensitive(*root, "data");
  assert_non_null(data);
  return data;
}

/* Borrowed from obj; NULL when absent. */
static inline const cJSON *member(const cJSON *obj, const char *key) {
  return cJSON_GetObjectItemCaseSensitive(obj, key);
}

/* An event's data object; the test fails when it has none. */
static inline const cJSON *data_of(const cJSON *event) {
  const cJSON *d = member(event, "data");
  assert_true(cJSON_IsObject(d));
  return d;
}

/* obj.key as a string or a number; the test fails when it is not one. */
static inline const char *str_of(const cJSON *obj, const char *key) {
  const cJSON *v = member(obj, key);
  if (!cJSON_IsString(v)) fail_msg("\"%s\" is not a string", key);
  return v->valuestring;
}

static inline double num_of(const cJSON *obj, const char *key) {
  const cJSON *v = member(obj, key);
  if (!cJSON_IsNumber(v)) fail_msg("\"%s\" is not a number", key);
  return v->valuedouble;
}

/* Runs the loop until cond(udata) holds or max_iterations loop turns pass. */
static inline int run_until(uv_loop_t *loop, int (*cond)(void *), void *udata, int max_iterations) {
  for (int i = 0; i < max_iterations; i++) {
    if (cond(udata)) return 1;
    uv_run(loop, UV_RUN_ONCE);
  }
  return cond(udata);
}

/* ---- engines, loops and tasks ---- */

/* Starts an engine on an initialized loop (opts NULL: defaults) with rec attached (rec may be
 * NULL); stop_engine() undoes it. */
static inline sc_engine *start_engine(uv_loop_t *loop, const sc_engine_options *opts,
                                      recorder *rec) {
  sc_engine *e = NULL;
  assert_int_equal(sc_engine_new(loop, opts, &e), SC_OK);
  assert_non_null(e);
  if (rec != NULL) recorder_attach(rec, e);
  return e;
}

/* Frees the engine and the recorder (may be NULL) and checks that nothing was left on the loop. */
static inline void stop_engine(sc_engine *e, recorder *rec, uv_loop_t *loop) {
  sc_engine_free(e);
  if (rec != NULL) recorder_free(rec);
  assert_int_equal(uv_loop_close(loop), 0);
}

/* Runs the loop until nothing holds it: every task finished or waits (a person, a held stage). */
static inline void settle_loop(uv_loop_t *loop) {
  for (int i = 0; i < 1000000 && uv_loop_alive(loop); i++)
    uv_run(loop, UV_RUN_ONCE);
  assert_false(uv_loop_alive(loop));
}

static inline void harness_guard_fired(uv_timer_t *t) {
  *(int *)t->data = 1;
  uv_stop(t->loop);
}

/* Runs the loop until it has nothing referenced left, or fails the test after limit_ms. */
static inline void run_bounded(uv_loop_t *loop, uint64_t limit_ms) {
  uv_timer_t guard;
  int fired = 0;
  uv_timer_init(loop, &guard);
  guard.data = &fired;
  uv_timer_start(&guard, harness_guard_fired, limit_ms, 0);
  uv_unref((uv_handle_t *)&guard);
  uv_run(loop, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&guard, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
  if (fired) fail_msg("the loop was still busy after %llu ms", (unsigned long long)limit_ms);
}

typedef struct harness_status_wait {
  const sc_task *t;
  sc_task_status status;
} harness_status_wait;

static inline int harness_has_status(void *udata) {
  harness_status_wait *w = udata;
  return sc_task_get_status(w->t) == w->status;
}

/* Runs single loop turns until the task has a status; for tasks whose timers keep the loop
 * alive. */
static inline void run_until_status(uv_loop_t *loop, const sc_task *t, sc_task_status status) {
  harness_status_wait w = {t, status};
  if (!run_until(loop, harness_has_status, &w, 1000))
    fail_msg("task is %s, not %s", sc_task_status_name(sc_task_get_status(t)),
             sc_task_status_name(status));
}

typedef struct harness_event_wait {
  const recorder *r;
  sc_event_type type;
} harness_event_wait;

static inline int harness_has_event(void *udata) {
  harness_event_wait *w = udata;
  return recorder_count(w->r, w->type, NULL) > 0;
}

/* Runs single loop turns until an event of the type was recorded (at most max_turns). */
static inline void run_until_event(uv_loop_t *loop, const recorder *r, sc_event_type type,
                                   int max_turns) {
  harness_event_wait w = {r, type};
  if (!run_until(loop, harness_has_event, &w, max_turns))
    fail_msg("no %s after %d loop turns", sc_event_type_name(type), max_turns);
}

/* Submits a task and fails the test, with the engine's message, when it is refused. */
static inline sc_task *submit_or_fail(sc_engine *e, const sc_task_spec *s) {
  sc_task *t = NULL;
  int rc = sc_task_submit(e, s, &t);
  if (rc != SC_OK)
    fail_msg("submit %s: %s: %s", s->task_id ? s->task_id : "(null)", sc_err_name(rc),
             sc_error_message());
  assert_non_null(t);
  return t;
}

/* Submits a task of config and context (borrowed; tenant, plan_id and context may be NULL). */
static inline sc_task *submit_config(sc_engine *e, const char *id, const char *tenant,
                                     const char *plan_id, const cJSON *config,
                                     const cJSON *context) {
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.task_id = id;
  spec.tenant_id = tenant;
  spec.plan_id = plan_id;
  spec.config = config;
  spec.context = context;
  return submit_or_fail(e, &spec);
}

/* Submits a task of config and previous (JSON text; previous may be NULL). */
static inline sc_task *submit_text(sc_engine *e, const char *id, const char *tenant,
                                   const char *plan_id, const char *config, const char *previous) {
  cJSON *c = json_or_die(config);
  cJSON *pc = previous ? json_or_die(previous) : NULL;
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.task_id = id;
  spec.tenant_id = tenant;
  spec.plan_id = plan_id;
  spec.config = c;
  spec.previous_config = pc;
  sc_task *t = submit_or_fail(e, &spec);
  cJSON_Delete(pc);
  cJSON_Delete(c);
  return t;
}

/* What an engine reports through its log option. */
typedef struct logbook {
  int n;
  char messages[32][512];
} logbook;

static inline void logbook_cb(sc_engine *e, sc_log_level level, const char *message, void *udata) {
  (void)e;
  (void)level;
  logbook *l = udata;
  if (l->n < 32) snprintf(l->messages[l->n], sizeof(l->messages[0]), "%s", message);
  l->n++;
}

static inline int logbook_has(const logbook *l, const char *needle) {
  for (int i = 0; i < l->n && i < 32; i++)
    if (strstr(l->messages[i], needle) != NULL) return 1;
  return 0;
}

/* Options whose log goes to l (cleared). */
static inline void logbook_options(sc_engine_options *o, logbook *l) {
  sc_engine_options_init(o);
  memset(l, 0, sizeof(*l));
  o->log = logbook_cb;
  o->log_udata = l;
}

/* Fails the test unless sc_error_message() contains needle. */
static inline void assert_error_has(const char *needle) {
  if (strstr(sc_error_message(), needle) == NULL)
    fail_msg("message \"%s\" lacks \"%s\"", sc_error_message(), needle);
}

#endif
