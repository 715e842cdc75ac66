/* Subscribers, masks and the durability barrier; pause, resume and cancel around acks. */
#include "harness.h"

#include <stdbool.h>

/* ---- helpers ---- */

static sc_engine *engine_on(uv_loop_t *loop, logbook *log) {
  sc_engine_options o;
  sc_engine_options_init(&o);
  if (log != NULL) {
    memset(log, 0, sizeof(*log));
    o.log = logbook_cb;
    o.log_udata = log;
  }
  sc_engine *e = start_engine(loop, &o, NULL);
  return e;
}

static void nothing(uv_timer_t *t) {
  (void)t;
}

/* Gives the engine every chance to move: a few non-blocking turns, then a referenced timer of
 * ms milliseconds that keeps the loop running that long. */
static void idle_for(uv_loop_t *loop, uint64_t ms) {
  for (int i = 0; i < 5; i++)
    uv_run(loop, UV_RUN_NOWAIT);
  uv_timer_t t;
  uv_timer_init(loop, &t);
  uv_timer_start(&t, nothing, ms, 0);
  run_bounded(loop, ms + 5000);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
}

static sc_task *submit(sc_engine *e, const char *id, const cJSON *config) {
  return submit_config(e, id, "acme", NULL, config, NULL);
}

/* Subscribes a recorder that only receives the types of mask. */
static void recorder_attach_mask(recorder *r, sc_engine *e, uint64_t mask) {
  memset(r, 0, sizeof(*r));
  sc_subscriber s;
  sc_subscriber_init(&s);
  s.mask = mask;
  s.on_event = recorder_on_event;
  s.udata = r;
  assert_int_equal(sc_engine_subscribe(e, &s, &r->sub), SC_OK);
}

static int fn_noop(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  sc_stage_complete(ctx, NULL);
  return SC_OK;
}

/* Three fn stages a, b, c. */
static const char *three_fn_json =
    "{\"stages\":[{\"name\":\"a\",\"kind\":\"fn\",\"params\":{\"fn\":\"noop\"}},"
    "{\"name\":\"b\",\"kind\":\"fn\",\"params\":{\"fn\":\"noop\"}},"
    "{\"name\":\"c\",\"kind\":\"fn\",\"params\":{\"fn\":\"noop\"}}]}";

static const char *three_fn_events = "task.created,task.started,"
                                     "stage.started,stage.completed,stage.started,stage.completed,"
                                     "stage.started,stage.completed,task.completed";

/* "slow": a timer of params.ms that completes the stage; cancel counts, stops it and fails. */
typedef struct slow_op {
  uv_timer_t timer;
  sc_stage_ctx *ctx;
} slow_op;

typedef struct slow_stats {
  int starts, cancels;
} slow_stats;

static void slow_closed(uv_handle_t *h) {
  free(h); /* the timer is the first member of slow_op */
}

static void slow_fire(uv_timer_t *timer) {
  slow_op *op = (slow_op *)timer;
  uv_close((uv_handle_t *)timer, slow_closed);
  sc_stage_complete(op->ctx, NULL);
}

static int slow_start(sc_stage_ctx *ctx, void *udata) {
  slow_stats *st = udata;
  st->starts++;
  const cJSON *ms = cJSON_GetObjectItemCaseSensitive(sc_stage_params(ctx), "ms");
  slow_op *op = calloc(1, sizeof(*op));
  assert_non_null(op);
  op->ctx = ctx;
  uv_timer_init(sc_stage_loop(ctx), &op->timer);
  sc_stage_set_data(ctx, op);
  uv_timer_start(&op->timer, slow_fire, cJSON_IsNumber(ms) ? (uint64_t)ms->valuedouble : 0, 0);
  return SC_OK;
}

static void slow_cancel(sc_stage_ctx *ctx, void *udata) {
  slow_stats *st = udata;
  st->cancels++;
  slow_op *op = sc_stage_get_data(ctx);
  uv_close((uv_handle_t *)&op->timer, slow_closed);
  sc_stage_fail(ctx, SC_ECANCELLED, "slow cancelled", false);
}

static const sc_stage_kind slow_kind = {SC_STAGE_KIND_VERSION, slow_start, slow_cancel, NULL};

/* A slow first stage and a quick second one. */
static const char *slow_then_fn_json =
    "{\"stages\":[{\"name\":\"wait\",\"kind\":\"slow\",\"params\":{\"ms\":%d}},"
    "{\"name\":\"after\",\"kind\":\"fn\",\"params\":{\"fn\":\"noop\"}}]}";

static cJSON *slow_then_fn(int ms) {
  char buf[512];
  snprintf(buf, sizeof(buf), slow_then_fn_json, ms);
  return json_or_die(buf);
}

/* ---- delivery ---- */

static void every_subscriber_gets_every_event_in_order(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL);
  assert_int_equal(sc_engine_register_fn(e, "noop", fn_noop, NULL), SC_OK);
  recorder r1, r2;
  recorder_attach(&r1, e);
  recorder_attach(&r2, e);
  cJSON *config = json_or_die(three_fn_json);
  submit(e, "all", config);
  run_bounded(&loop, 5000);

  assert_string_equal(recorder_types(&r1, NULL), three_fn_events);
  assert_int_equal(r1.n, r2.n);
  for (size_t i = 0; i < r1.n; i++) {
    assert_string_equal(r1.lines[i], r2.lines[i]);
    cJSON *ev = cJSON_Parse(r1.lines[i]);
    assert_int_equal((int)num_of(ev, "seq"), (int)i + 1);
    cJSON_Delete(ev);
  }

  cJSON_Delete(config);
  sc_engine_free(e);
  recorder_free(&r1);
  recorder_free(&r2);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void mask_filters_event_types(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL);
  assert_int_equal(sc_engine_register_fn(e, "noop", fn_noop, NULL), SC_OK);
  recorder all, some, started_only;
  recorder_attach(&all, e);
  recorder_attach_mask(&some, e, 1ull << SC_EV_STAGE_COMPLETED | 1ull << SC_EV_TASK_COMPLETED);
  recorder_attach_mask(&started_only, e, 1ull << SC_EV_TASK_STARTED);
  cJSON *config = json_or_die(three_fn_json);
  submit(e, "masked", config);
  run_bounded(&loop, 5000);

  assert_string_equal(recorder_types(&all, NULL), three_fn_events);
  assert_string_equal(recorder_types(&some, NULL),
                      "stage.completed,stage.completed,stage.completed,task.completed");
  assert_string_equal(recorder_types(&started_only, NULL), "task.started");
  /* The filtered subscriber sees the same seq numbers as the unfiltered one. */
  cJSON *ev = recorder_json(&some, SC_EV_TASK_COMPLETED, 0);
  assert_int_equal((int)num_of(ev, "seq"), 9);
  cJSON_Delete(ev);

  cJSON_Delete(config);
  sc_engine_free(e);
  recorder_free(&all);
  recorder_free(&some);
  recorder_free(&started_only);
  assert_int_equal(uv_loop_close(&loop), 0);
}

typedef struct tagger {
  char tag;
  char *log;
} tagger;

static int tag_event(const sc_event *ev, sc_ack *ack, void *udata) {
  (void)ev;
  (void)ack;
  tagger *t = udata;
  size_t len = strlen(t->log);
  if (len < 255) {
    t->log[len] = t->tag;
    t->log[len + 1] = '\0';
  }
  return SC_OK;
}

static void subscription_order_is_delivery_order(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL);
  assert_int_equal(sc_engine_register_fn(e, "noop", fn_noop, NULL), SC_OK);
  char log[256] = "";
  tagger tags[3] = {{'A', log}, {'B', log}, {'C', log}};
  for (int i = 0; i < 3; i++) {
    sc_subscriber s;
    sc_subscriber_init(&s);
    s.on_event = tag_event;
    s.udata = &tags[i];
    assert_int_equal(sc_engine_subscribe(e, &s, NULL), SC_OK);
  }
  cJSON *config = json_or_die(three_fn_json);
  submit(e, "ordered", config);
  run_bounded(&loop, 5000);

  char expected[256] = "";
  for (int i = 0; i < 9; i++) /* nine events */
    strcat(expected, "ABC");
  assert_string_equal(log, expected);

  cJSON_Delete(config);
  stop_engine(e, NULL, &loop);
}

typedef struct self_canceller {
  sc_subscription *sub;
  size_t n;
  sc_event_type cancel_on;
} self_canceller;

static int cancel_self(const sc_event *ev, sc_ack *ack, void *udata) {
  (void)ack;
  self_canceller *c = udata;
  c->n++;
  if (ev->type == c->cancel_on) sc_subscription_cancel(c->sub);
  return SC_OK;
}

static void subscriber_cancelling_itself_in_callback_gets_no_more_events(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL);
  assert_int_equal(sc_engine_register_fn(e, "noop", fn_noop, NULL), SC_OK);
  recorder before, after;
  recorder_attach(&before, e);
  self_canceller c = {NULL, 0, SC_EV_TASK_STARTED};
  sc_subscriber s;
  sc_subscriber_init(&s);
  s.on_event = cancel_self;
  s.udata = &c;
  assert_int_equal(sc_engine_subscribe(e, &s, &c.sub), SC_OK);
  recorder_attach(&after, e);
  cJSON *config = json_or_die(three_fn_json);
  submit(e, "self-cancel", config);
  run_bounded(&loop, 5000);

  assert_int_equal(c.n, 2); /* task.created, task.started */
  assert_string_equal(recorder_types(&before, NULL), three_fn_events);
  assert_string_equal(recorder_types(&after, NULL), three_fn_events);

  cJSON_Delete(config);
  sc_engine_free(e);
  recorder_free(&before);
  recorder_free(&after);
  assert_int_equal(uv_loop_close(&loop), 0);
}

typedef struct adder {
  sc_engine *e;
  recorder *late;
  bool added;
} adder;

static int add_on_stage_started(const sc_event *ev, sc_ack *ack, void *udata) {
  (void)ack;
  adder *a = udata;
  if (ev->type == SC_EV_STAGE_STARTED && !a->added) {
    a->added = true;
    sc_subscriber s;
    sc_subscriber_init(&s);
    s.on_event = recorder_on_event;
    s.udata = a->late;
    if (sc_engine_subscribe(a->e, &s, &a->late->sub) != SC_OK) a->added = false;
  }
  return SC_OK;
}

static void subscriber_added_in_callback_sees_only_later_events(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL);
  assert_int_equal(sc_engine_register_fn(e, "noop", fn_noop, NULL), SC_OK);
  recorder all, late;
  recorder_attach(&all, e);
  memset(&late, 0, sizeof(late));
  adder a = {e, &late, false};
  sc_subscriber s;
  sc_subscriber_init(&s);
  s.on_event = add_on_stage_started;
  s.udata = &a;
  assert_int_equal(sc_engine_subscribe(e, &s, NULL), SC_OK);
  cJSON *config = json_or_die(three_fn_json);
  submit(e, "late-join", config);
  run_bounded(&loop, 5000);

  assert_true(a.added);
  assert_string_equal(recorder_types(&all, NULL), three_fn_events);
  /* Added during the first stage.started (seq 3): it sees seq 4 onwards. */
  assert_string_equal(recorder_types(&late, NULL), "stage.completed,stage.started,stage.completed,"
                                                   "stage.started,stage.completed,task.completed");
  cJSON *ev = cJSON_Parse(late.lines[0]);
  assert_int_equal((int)num_of(ev, "seq"), 4);
  cJSON_Delete(ev);

  cJSON_Delete(config);
  sc_engine_free(e);
  recorder_free(&all);
  recorder_free(&late);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* ---- the barrier ---- */

static void barrier_holds_next_stage_until_ack(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL);
  assert_int_equal(sc_engine_register_fn(e, "noop", fn_noop, NULL), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  r.defer = 1;
  r.defer_mask = 1ull << SC_EV_STAGE_COMPLETED;
  cJSON *config = json_or_die(three_fn_json);
  sc_task *t = submit(e, "barrier", config);
  run_bounded(&loop, 5000);
  idle_for(&loop, 20);

  assert_string_equal(recorder_types(&r, NULL),
                      "task.created,task.started,stage.started,stage.completed");
  assert_int_equal(r.nacks, 1);
  assert_int_equal(sc_task_get_status(t), SC_TASK_RUNNING);
  assert_int_equal(sc_task_stage_index(t), 1);

  /* Each ack lets exactly one more stage run. */
  assert_int_equal(recorder_ack_all(&r, SC_OK), 1);
  run_bounded(&loop, 5000);
  idle_for(&loop, 20);
  assert_int_equal(recorder_count(&r, SC_EV_STAGE_STARTED, NULL), 2);
  assert_int_equal(recorder_count(&r, SC_EV_STAGE_COMPLETED, NULL), 2);
  assert_int_equal(r.nacks, 1);

  r.defer = 0;
  assert_int_equal(recorder_ack_all(&r, SC_OK), 1);
  run_bounded(&loop, 5000);
  assert_string_equal(recorder_types(&r, NULL), three_fn_events);
  assert_null(sc_engine_find_task(e, "barrier"));

  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

static void deferred_non_barrier_event_does_not_block_progress(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL);
  assert_int_equal(sc_engine_register_fn(e, "noop", fn_noop, NULL), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  r.defer = 1;
  r.defer_mask = 1ull << SC_EV_STAGE_STARTED;
  cJSON *config = json_or_die(three_fn_json);
  submit(e, "non-barrier", config);
  run_bounded(&loop, 5000);

  assert_string_equal(recorder_types(&r, NULL), three_fn_events);
  assert_int_equal(r.nacks, 3);
  assert_int_equal(recorder_ack_all(&r, SC_OK), 3);
  run_bounded(&loop, 5000);
  assert_null(sc_engine_find_task(e, "non-barrier"));
  assert_string_equal(recorder_types(&r, NULL), three_fn_events);

  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

static void barrier_waits_for_every_deferring_subscriber(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL);
  assert_int_equal(sc_engine_register_fn(e, "noop", fn_noop, NULL), SC_OK);
  recorder r1, r2;
  recorder_attach(&r1, e);
  recorder_attach(&r2, e);
  r1.defer = r2.defer = 1;
  r1.defer_mask = r2.defer_mask = 1ull << SC_EV_STAGE_COMPLETED;
  cJSON *config = json_or_die(three_fn_json);
  submit(e, "two-acks", config);
  run_bounded(&loop, 5000);
  assert_int_equal(r1.nacks, 1);
  assert_int_equal(r2.nacks, 1);

  r1.defer = 0;
  assert_int_equal(recorder_ack_all(&r1, SC_OK), 1);
  run_bounded(&loop, 5000);
  idle_for(&loop, 20);
  assert_int_equal(recorder_count(&r1, SC_EV_STAGE_STARTED, NULL), 1);
  assert_int_equal(recorder_count(&r2, SC_EV_STAGE_STARTED, NULL), 1);

  r2.defer = 0;
  assert_int_equal(recorder_ack_all(&r2, SC_OK), 1);
  run_bounded(&loop, 5000);
  assert_string_equal(recorder_types(&r1, NULL), three_fn_events);
  assert_string_equal(recorder_types(&r2, NULL), three_fn_events);

  cJSON_Delete(config);
  sc_engine_free(e);
  recorder_free(&r1);
  recorder_free(&r2);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* Runs a two-stage task whose first stage.completed is deferred, fails that ack with fail(),
 * checks the pause, resumes and checks completion. */
static void check_failed_ack_pauses(void (*fail_ack)(sc_ack *), const char *expected_message) {
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL);
  assert_int_equal(sc_engine_register_fn(e, "noop", fn_noop, NULL), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  r.defer = 1;
  r.defer_mask = 1ull << SC_EV_STAGE_COMPLETED;
  cJSON *config = json_or_die(three_fn_json);
  sc_task *t = submit(e, "ack-fail", config);
  run_bounded(&loop, 5000);
  assert_int_equal(r.nacks, 1);

  sc_ack *ack = r.acks[0];
  r.nacks = 0;
  r.defer = 0;
  fail_ack(ack);
  run_bounded(&loop, 5000);

  assert_string_equal(recorder_types(&r, NULL),
                      "task.created,task.started,stage.started,stage.completed,task.paused");
  assert_int_equal(sc_task_get_status(t), SC_TASK_PAUSED);
  cJSON *root;
  const cJSON *data = event_data(&r, SC_EV_TASK_PAUSED, 0, &root);
  assert_string_equal(str_of(data, "reason"), "ack-failed");
  assert_string_equal(str_of(data, "paused_from"), "RUNNING");
  assert_string_equal(str_of(data, "status"), "PAUSED");
  const cJSON *err = cJSON_GetObjectItemCaseSensitive(data, "error");
  assert_non_null(err);
  assert_string_equal(str_of(err, "message"), expected_message);
  assert_int_equal((int)num_of(err, "code"), SC_EIO);
  cJSON_Delete(root);

  /* Nothing runs while paused. */
  size_t n = r.n;
  idle_for(&loop, 20);
  assert_int_equal(r.n, n);
  assert_int_equal(sc_task_get_status(t), SC_TASK_PAUSED);

  assert_int_equal(sc_task_resume(t), SC_OK);
  run_bounded(&loop, 5000);
  assert_string_equal(recorder_types(&r, NULL),
                      "task.created,task.started,stage.started,stage.completed,task.paused,"
                      "task.resumed,stage.started,stage.completed,stage.started,stage.completed,"
                      "task.completed");
  assert_null(sc_engine_find_task(e, "ack-fail"));

  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

static void fail_with_message(sc_ack *ack) {
  sc_ack_fail(ack, SC_EIO, "disk full");
}

static void done_with_negative_status(sc_ack *ack) {
  sc_ack_done(ack, SC_EIO);
}

static void failed_ack_with_message_pauses_task_until_resume(void **state) {
  (void)state;
  check_failed_ack_pauses(fail_with_message, "disk full");
}

static void ack_done_with_negative_status_pauses_task_until_resume(void **state) {
  (void)state;
  check_failed_ack_pauses(done_with_negative_status, sc_strerror(SC_EIO));
}

typedef struct refuser {
  int refused;
} refuser;

/* Fails the first stage.completed synchronously. */
static int refuse_first_completion(const sc_event *ev, sc_ack *ack, void *udata) {
  (void)ack;
  refuser *f = udata;
  if (ev->type == SC_EV_STAGE_COMPLETED && f->refused++ == 0) return SC_EIO;
  return SC_OK;
}

static void subscriber_returning_error_pauses_task(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL);
  assert_int_equal(sc_engine_register_fn(e, "noop", fn_noop, NULL), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  refuser f = {0};
  sc_subscriber s;
  sc_subscriber_init(&s);
  s.on_event = refuse_first_completion;
  s.udata = &f;
  assert_int_equal(sc_engine_subscribe(e, &s, NULL), SC_OK);
  cJSON *config = json_or_die(three_fn_json);
  sc_task *t = submit(e, "sync-refuse", config);
  run_bounded(&loop, 5000);

  assert_string_equal(recorder_types(&r, NULL),
                      "task.created,task.started,stage.started,stage.completed,task.paused");
  assert_int_equal(sc_task_get_status(t), SC_TASK_PAUSED);
  cJSON *root;
  const cJSON *data = event_data(&r, SC_EV_TASK_PAUSED, 0, &root);
  assert_string_equal(str_of(data, "reason"), "ack-failed");
  assert_int_equal((int)num_of(cJSON_GetObjectItemCaseSensitive(data, "error"), "code"), SC_EIO);
  cJSON_Delete(root);

  assert_int_equal(sc_task_resume(t), SC_OK);
  run_bounded(&loop, 5000);
  assert_int_equal(recorder_count(&r, SC_EV_TASK_RESUMED, NULL), 1);
  assert_int_equal(recorder_count(&r, SC_EV_TASK_COMPLETED, NULL), 1);
  assert_int_equal(recorder_count(&r, SC_EV_STAGE_COMPLETED, NULL), 3);

  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

static void failed_ack_of_task_completed_is_logged_not_fatal(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  logbook log;
  sc_engine *e = engine_on(&loop, &log);
  assert_int_equal(sc_engine_register_fn(e, "noop", fn_noop, NULL), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  r.defer = 1;
  r.defer_mask = 1ull << SC_EV_TASK_COMPLETED;
  cJSON *config = json_or_die(three_fn_json);
  sc_task *t = submit(e, "late-fail", config);
  run_bounded(&loop, 5000);
  assert_int_equal(r.nacks, 1);
  assert_int_equal(sc_task_get_status(t), SC_TASK_COMPLETED);

  sc_ack *ack = r.acks[0];
  r.nacks = 0;
  sc_ack_fail(ack, SC_EIO, "disk full");
  run_bounded(&loop, 5000);

  assert_string_equal(recorder_types(&r, NULL), three_fn_events);
  assert_true(log.n >= 1);
  assert_true(logbook_has(&log, "disk full"));
  assert_true(logbook_has(&log, "late-fail"));
  assert_null(sc_engine_find_task(e, "late-fail"));

  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

static int ack_then_defer(const sc_event *ev, sc_ack *ack, void *udata) {
  (void)ev;
  size_t *n = udata;
  (*n)++;
  sc_ack_done(ack, SC_OK);
  return SC_DEFER;
}

static void ack_done_inside_callback_before_defer_works(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL);
  assert_int_equal(sc_engine_register_fn(e, "noop", fn_noop, NULL), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  size_t n = 0;
  sc_subscriber s;
  sc_subscriber_init(&s);
  s.on_event = ack_then_defer;
  s.udata = &n;
  assert_int_equal(sc_engine_subscribe(e, &s, NULL), SC_OK);
  cJSON *config = json_or_die(three_fn_json);
  submit(e, "eager-ack", config);
  run_bounded(&loop, 5000);

  assert_string_equal(recorder_types(&r, NULL), three_fn_events);
  assert_int_equal(n, 9);
  assert_null(sc_engine_find_task(e, "eager-ack"));

  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

static void task_stays_findable_until_task_completed_is_acked(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL);
  assert_int_equal(sc_engine_register_fn(e, "noop", fn_noop, NULL), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  r.defer = 1;
  r.defer_mask = 1ull << SC_EV_TASK_COMPLETED;
  cJSON *config = json_or_die(three_fn_json);
  sc_task *t = submit(e, "held", config);
  run_bounded(&loop, 5000);
  idle_for(&loop, 10);

  assert_string_equal(recorder_types(&r, NULL), three_fn_events);
  assert_ptr_equal(sc_engine_find_task(e, "held"), t);
  assert_int_equal(sc_task_get_status(t), SC_TASK_COMPLETED);
  assert_int_equal(sc_engine_task_count(e), 1);

  assert_int_equal(recorder_ack_all(&r, SC_OK), 1);
  run_bounded(&loop, 5000);
  assert_null(sc_engine_find_task(e, "held"));
  assert_int_equal(sc_engine_task_count(e), 0);

  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

/* ---- pause, resume, cancel ---- */

static void pause_takes_effect_at_next_stage_boundary_and_resume_continues(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL);
  assert_int_equal(sc_engine_register_fn(e, "noop", fn_noop, NULL), SC_OK);
  slow_stats slow = {0, 0};
  assert_int_equal(sc_engine_register_kind(e, "slow", &slow_kind, &slow), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  cJSON *config = slow_then_fn(30);
  sc_task *t = submit(e, "pausable", config);
  run_until_event(&loop, &r, SC_EV_STAGE_STARTED, 100);

  assert_int_equal(sc_task_pause(t), SC_OK);
  run_bounded(&loop, 5000);

  assert_string_equal(recorder_types(&r, NULL),
                      "task.created,task.started,stage.started,stage.completed,task.paused");
  assert_int_equal(slow.cancels, 0); /* the running stage was let finish */
  assert_int_equal(sc_task_get_status(t), SC_TASK_PAUSED);
  cJSON *root;
  const cJSON *data = event_data(&r, SC_EV_TASK_PAUSED, 0, &root);
  assert_string_equal(str_of(data, "paused_from"), "RUNNING");
  assert_string_equal(str_of(data, "reason"), "requested");
  assert_null(cJSON_GetObjectItemCaseSensitive(data, "error"));
  cJSON_Delete(root);

  assert_int_equal(sc_task_resume(t), SC_OK);
  run_bounded(&loop, 5000);
  assert_string_equal(recorder_types(&r, NULL),
                      "task.created,task.started,stage.started,stage.completed,task.paused,"
                      "task.resumed,stage.started,stage.completed,task.completed");

  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

static void pause_of_paused_and_resume_of_running_are_refused(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL);
  assert_int_equal(sc_engine_register_fn(e, "noop", fn_noop, NULL), SC_OK);
  slow_stats slow = {0, 0};
  assert_int_equal(sc_engine_register_kind(e, "slow", &slow_kind, &slow), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  cJSON *config = slow_then_fn(20);
  sc_task *t = submit(e, "refusals", config);
  run_until_event(&loop, &r, SC_EV_STAGE_STARTED, 100);

  assert_int_equal(sc_task_get_status(t), SC_TASK_RUNNING);
  assert_int_equal(sc_task_resume(t), SC_ETRANSITION);
  assert_non_null(strstr(sc_error_message(), "RUNNING"));

  assert_int_equal(sc_task_pause(t), SC_OK);
  run_bounded(&loop, 5000);
  assert_int_equal(sc_task_get_status(t), SC_TASK_PAUSED);
  size_t n = r.n;
  assert_int_equal(sc_task_pause(t), SC_ETRANSITION);
  assert_non_null(strstr(sc_error_message(), "PAUSED"));
  run_bounded(&loop, 5000);
  assert_int_equal(r.n, n); /* the refusal changed nothing */
  assert_int_equal(sc_task_get_status(t), SC_TASK_PAUSED);

  assert_int_equal(sc_task_resume(t), SC_OK);
  run_bounded(&loop, 5000);
  assert_int_equal(recorder_count(&r, SC_EV_TASK_COMPLETED, NULL), 1);

  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

static void cancel_of_running_task_cancels_stage_and_runs_nothing_more(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  logbook log;
  sc_engine *e = engine_on(&loop, &log);
  assert_int_equal(sc_engine_register_fn(e, "noop", fn_noop, NULL), SC_OK);
  slow_stats slow = {0, 0};
  assert_int_equal(sc_engine_register_kind(e, "slow", &slow_kind, &slow), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  cJSON *config = slow_then_fn(60000);
  sc_task *t = submit(e, "cancel-running", config);
  run_until_event(&loop, &r, SC_EV_STAGE_STARTED, 100);

  assert_int_equal(sc_task_cancel(t, "operator abort"), SC_OK);
  uint64_t t0 = uv_hrtime();
  run_bounded(&loop, 5000);
  assert_true(uv_hrtime() - t0 < 5000000000ull); /* the 60 s stage did not hold the loop */

  assert_int_equal(slow.starts, 1);
  assert_int_equal(slow.cancels, 1);
  assert_string_equal(recorder_types(&r, NULL),
                      "task.created,task.started,stage.started,task.cancelled");
  cJSON *root;
  const cJSON *data = event_data(&r, SC_EV_TASK_CANCELLED, 0, &root);
  assert_string_equal(str_of(data, "reason"), "operator abort");
  assert_string_equal(str_of(data, "status"), "CANCELLED");
  cJSON_Delete(root);
  assert_null(sc_engine_find_task(e, "cancel-running"));

  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

static void cancel_of_running_sleep_stage_stops_its_timer(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  logbook log;
  sc_engine *e = engine_on(&loop, &log);
  assert_int_equal(sc_engine_register_fn(e, "noop", fn_noop, NULL), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  cJSON *config =
      json_or_die("{\"stages\":[{\"name\":\"nap\",\"kind\":\"sleep\",\"params\":{\"ms\":60000}},"
                  "{\"name\":\"after\",\"kind\":\"fn\",\"params\":{\"fn\":\"noop\"}}]}");
  sc_task *t = submit(e, "cancel-sleep", config);
  run_until_event(&loop, &r, SC_EV_STAGE_STARTED, 100);

  assert_int_equal(sc_task_cancel(t, "too slow"), SC_OK);
  run_bounded(&loop, 5000); /* returns at once: the sleep's cancel closed its 60 s timer */

  assert_string_equal(recorder_types(&r, NULL),
                      "task.created,task.started,stage.started,task.cancelled");
  cJSON *root;
  const cJSON *data = event_data(&r, SC_EV_TASK_CANCELLED, 0, &root);
  assert_string_equal(str_of(data, "reason"), "too slow");
  assert_string_equal(str_of(data, "status"), "CANCELLED");
  cJSON_Delete(root);
  /* The sleep kind's cancel finished the stage; that late result is logged, not acted on. */
  assert_true(logbook_has(&log, "not acted on"));
  assert_null(sc_engine_find_task(e, "cancel-sleep"));

  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

static void cancel_while_waiting_for_deferred_ack_applies_after_ack(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL);
  assert_int_equal(sc_engine_register_fn(e, "noop", fn_noop, NULL), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  r.defer = 1;
  r.defer_mask = 1ull << SC_EV_STAGE_COMPLETED;
  cJSON *config = json_or_die(three_fn_json);
  sc_task *t = submit(e, "cancel-barrier", config);
  run_bounded(&loop, 5000);
  assert_int_equal(r.nacks, 1);

  assert_int_equal(sc_task_cancel(t, "changed my mind"), SC_OK);
  idle_for(&loop, 20);
  /* The barrier holds: no step, not even the cancellation, before the ack. */
  assert_string_equal(recorder_types(&r, NULL),
                      "task.created,task.started,stage.started,stage.completed");

  r.defer = 0;
  assert_int_equal(recorder_ack_all(&r, SC_OK), 1);
  run_bounded(&loop, 5000);
  assert_string_equal(recorder_types(&r, NULL),
                      "task.created,task.started,stage.started,stage.completed,task.cancelled");
  cJSON *root;
  const cJSON *data = event_data(&r, SC_EV_TASK_CANCELLED, 0, &root);
  assert_string_equal(str_of(data, "reason"), "changed my mind");
  assert_string_equal(str_of(data, "status"), "CANCELLED");
  cJSON_Delete(root);
  assert_null(sc_engine_find_task(e, "cancel-barrier"));

  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

static void cancel_of_paused_task_cancels_it(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL);
  assert_int_equal(sc_engine_register_fn(e, "noop", fn_noop, NULL), SC_OK);
  slow_stats slow = {0, 0};
  assert_int_equal(sc_engine_register_kind(e, "slow", &slow_kind, &slow), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  cJSON *config = slow_then_fn(10);
  sc_task *t = submit(e, "cancel-paused", config);
  run_until_event(&loop, &r, SC_EV_STAGE_STARTED, 100);
  assert_int_equal(sc_task_pause(t), SC_OK);
  run_bounded(&loop, 5000);
  assert_int_equal(sc_task_get_status(t), SC_TASK_PAUSED);

  assert_int_equal(sc_task_cancel(t, "not needed"), SC_OK);
  run_bounded(&loop, 5000);
  assert_string_equal(recorder_types(&r, NULL), "task.created,task.started,stage.started,"
                                                "stage.completed,task.paused,task.cancelled");
  cJSON *root;
  const cJSON *data = event_data(&r, SC_EV_TASK_CANCELLED, 0, &root);
  assert_string_equal(str_of(data, "reason"), "not needed");
  assert_string_equal(str_of(data, "status"), "CANCELLED");
  cJSON_Delete(root);
  assert_int_equal(slow.cancels, 0); /* nothing was running */
  assert_null(sc_engine_find_task(e, "cancel-paused"));

  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(every_subscriber_gets_every_event_in_order),
      cmocka_unit_test(mask_filters_event_types),
      cmocka_unit_test(subscription_order_is_delivery_order),
      cmocka_unit_test(subscriber_cancelling_itself_in_callback_gets_no_more_events),
      cmocka_unit_test(subscriber_added_in_callback_sees_only_later_events),
      cmocka_unit_test(barrier_holds_next_stage_until_ack),
      cmocka_unit_test(deferred_non_barrier_event_does_not_block_progress),
      cmocka_unit_test(barrier_waits_for_every_deferring_subscriber),
      cmocka_unit_test(failed_ack_with_message_pauses_task_until_resume),
      cmocka_unit_test(ack_done_with_negative_status_pauses_task_until_resume),
      cmocka_unit_test(subscriber_returning_error_pauses_task),
      cmocka_unit_test(failed_ack_of_task_completed_is_logged_not_fatal),
      cmocka_unit_test(ack_done_inside_callback_before_defer_works),
      cmocka_unit_test(task_stays_findable_until_task_completed_is_acked),
      cmocka_unit_test(pause_takes_effect_at_next_stage_boundary_and_resume_continues),
      cmocka_unit_test(pause_of_paused_and_resume_of_running_are_refused),
      cmocka_unit_test(cancel_of_running_task_cancels_stage_and_runs_nothing_more),
      cmocka_unit_test(cancel_of_running_sleep_stage_stops_its_timer),
      cmocka_unit_test(cancel_while_waiting_for_deferred_ack_applies_after_ack),
      cmocka_unit_test(cancel_of_paused_task_cancels_it),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
