/* Stage execution on real libuv timers: ordering, retries, timeouts, outputs, tenants, posting. */
#include "harness.h"

#include <ctype.h>
#include <math.h>
#include <stdbool.h>

/* ---- helpers shared by the cases ---- */

static sc_engine *engine_on(uv_loop_t *loop, logbook *log, uint32_t max_active_tasks) {
  sc_engine_options o;
  sc_engine_options_init(&o);
  o.max_active_tasks = max_active_tasks;
  if (log != NULL) {
    memset(log, 0, sizeof(*log));
    o.log = logbook_cb;
    o.log_udata = log;
  }
  sc_engine *e = start_engine(loop, &o, NULL);
  return e;
}

static sc_task *submit(sc_engine *e, const char *id, const char *tenant, const cJSON *config,
                       const cJSON *context) {
  return submit_config(e, id, tenant, "test-plan", config, context);
}

/* The position of the nth event of a type of one task in the recording; -1 when absent. */
static long event_pos(const recorder *r, sc_event_type type, const char *task_id, size_t nth) {
  for (size_t i = 0; i < r->n; i++)
    if (r->types[i] == type && strcmp(r->task_ids[i], task_id) == 0 && nth-- == 0) return (long)i;
  return -1;
}

/* Checks that one task's events carry seq 1..N without a gap; returns N. */
static size_t check_seq(const recorder *r, const char *task_id) {
  size_t expected = 1;
  for (size_t i = 0; i < r->n; i++) {
    if (strcmp(r->task_ids[i], task_id) != 0) continue;
    cJSON *ev = cJSON_Parse(r->lines[i]);
    assert_non_null(ev);
    double seq = num_of(ev, "seq");
    cJSON_Delete(ev);
    if (seq != (double)expected) fail_msg("event %zu of %s has seq %.0f", i, task_id, seq);
    expected++;
  }
  return expected - 1;
}

static void loop_elapsed_start(uv_loop_t *loop, uint64_t *t0) {
  uv_update_time(loop);
  *t0 = uv_now(loop);
}

static uint64_t loop_elapsed(uv_loop_t *loop, uint64_t t0) {
  uv_update_time(loop);
  return uv_now(loop) - t0;
}

/* A config of n "fn" stages s0..s(n-1) calling fn_name, built programmatically. */
static cJSON *fn_plan(size_t n, const char *fn_name) {
  cJSON *config = cJSON_CreateObject();
  cJSON *stages = cJSON_AddArrayToObject(config, "stages");
  for (size_t i = 0; i < n; i++) {
    char name[32];
    snprintf(name, sizeof(name), "s%zu", i);
    cJSON *st = cJSON_CreateObject();
    cJSON_AddStringToObject(st, "name", name);
    cJSON_AddStringToObject(st, "kind", "fn");
    cJSON *params = cJSON_AddObjectToObject(st, "params");
    cJSON_AddStringToObject(params, "fn", fn_name);
    cJSON_AddItemToArray(stages, st);
  }
  return config;
}

/* ---- stage functions and kinds ---- */

static int fn_noop(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  sc_stage_complete(ctx, NULL);
  return SC_OK;
}

/* Appends the stage name to a string, then completes. */
static int fn_record(sc_stage_ctx *ctx, void *udata) {
  char *log = udata;
  size_t len = strlen(log);
  snprintf(log + len, 256 - len, "%s%s", len ? "," : "", sc_stage_name(ctx));
  sc_stage_complete(ctx, NULL);
  return SC_OK;
}

/* Fails (retryable) the first fail_times calls, then completes. */
typedef struct flaky {
  int calls, fail_times;
  bool retryable;
} flaky;

static int fn_flaky(sc_stage_ctx *ctx, void *udata) {
  flaky *f = udata;
  f->calls++;
  if (f->calls <= f->fail_times) {
    char msg[32];
    snprintf(msg, sizeof(msg), "boom %d", f->calls);
    sc_stage_fail(ctx, SC_EIO, msg, f->retryable);
    return SC_OK;
  }
  sc_stage_complete(ctx, NULL);
  return SC_OK;
}

/* Records the context it sees (sc_stage_context and sc_task_context) per stage index, then
 * completes with a copy of params.output (NULL when absent). */
typedef struct emitter {
  cJSON *seen_stage_ctx[8];
  cJSON *seen_task_ctx[8];
} emitter;

static int fn_emit(sc_stage_ctx *ctx, void *udata) {
  emitter *em = udata;
  int i = sc_stage_index(ctx);
  if (i >= 0 && i < 8) {
    em->seen_stage_ctx[i] = cJSON_Duplicate(sc_stage_context(ctx), true);
    em->seen_task_ctx[i] = cJSON_Duplicate(sc_task_context(sc_stage_task(ctx)), true);
  }
  const cJSON *out = cJSON_GetObjectItemCaseSensitive(sc_stage_params(ctx), "output");
  sc_stage_complete(ctx, out ? cJSON_Duplicate(out, true) : NULL);
  return SC_OK;
}

static void emitter_free(emitter *em) {
  for (int i = 0; i < 8; i++) {
    cJSON_Delete(em->seen_stage_ctx[i]);
    cJSON_Delete(em->seen_task_ctx[i]);
  }
}

/* Completes twice inside start. */
static int fn_twice(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  cJSON *first = cJSON_CreateObject(), *second = cJSON_CreateObject();
  cJSON_AddNumberToObject(first, "first", 1);
  cJSON_AddNumberToObject(second, "second", 2);
  sc_stage_complete(ctx, first);
  sc_stage_complete(ctx, second); /* refused: the stage finished already */
  return SC_OK;
}

/* What the accessors said while the stage ran. */
typedef struct inspection {
  bool ran, is_rollback, cancelled, config_matches;
  char name[32], color[32];
  int index;
  unsigned attempt;
  sc_task *task;
  uv_loop_t *loop;
  const cJSON *expected_config;
  cJSON *context;
} inspection;

static int fn_inspect(sc_stage_ctx *ctx, void *udata) {
  inspection *in = udata;
  in->ran = true;
  snprintf(in->name, sizeof(in->name), "%s", sc_stage_name(ctx));
  in->index = sc_stage_index(ctx);
  in->attempt = sc_stage_attempt(ctx);
  const cJSON *color = cJSON_GetObjectItemCaseSensitive(sc_stage_params(ctx), "color");
  snprintf(in->color, sizeof(in->color), "%s", cJSON_IsString(color) ? color->valuestring : "");
  in->config_matches =
      in->expected_config != NULL && cJSON_Compare(sc_stage_config(ctx), in->expected_config, true);
  cJSON_Delete(in->context);
  in->context = cJSON_Duplicate(sc_stage_context(ctx), true);
  in->is_rollback = sc_stage_is_rollback(ctx);
  in->cancelled = sc_stage_cancelled(ctx);
  in->task = sc_stage_task(ctx);
  in->loop = sc_stage_loop(ctx);
  sc_stage_complete(ctx, NULL);
  return SC_OK;
}

/* "later": completes from a uv_timer callback after params.ms, with a copy of params.output;
 * with params.twice it completes a second time in the same callback. */
typedef struct later_op {
  uv_timer_t timer;
  sc_stage_ctx *ctx;
} later_op;

typedef struct later_stats {
  int starts, cancels;
} later_stats;

static void later_closed(uv_handle_t *h) {
  free(h); /* the timer is the first member of later_op */
}

static void later_fire(uv_timer_t *timer) {
  later_op *op = (later_op *)timer;
  sc_stage_ctx *ctx = op->ctx;
  const cJSON *params = sc_stage_params(ctx);
  const cJSON *out = cJSON_GetObjectItemCaseSensitive(params, "output");
  bool twice = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(params, "twice"));
  uv_close((uv_handle_t *)timer, later_closed);
  cJSON *output = out ? cJSON_Duplicate(out, true) : NULL;
  if (!twice) {
    sc_stage_complete(ctx, output);
    return;
  }
  cJSON *again = cJSON_CreateObject();
  cJSON_AddBoolToObject(again, "second", true);
  sc_stage_complete(ctx, output);
  sc_stage_complete(ctx, again); /* refused: the stage finished already */
}

static int later_start(sc_stage_ctx *ctx, void *udata) {
  later_stats *st = udata;
  st->starts++;
  const cJSON *ms = cJSON_GetObjectItemCaseSensitive(sc_stage_params(ctx), "ms");
  later_op *op = calloc(1, sizeof(*op));
  assert_non_null(op);
  op->ctx = ctx;
  uv_timer_init(sc_stage_loop(ctx), &op->timer);
  sc_stage_set_data(ctx, op);
  uv_timer_start(&op->timer, later_fire, cJSON_IsNumber(ms) ? (uint64_t)ms->valuedouble : 0, 0);
  return SC_OK;
}

static void later_cancel(sc_stage_ctx *ctx, void *udata) {
  later_stats *st = udata;
  st->cancels++;
  later_op *op = sc_stage_get_data(ctx);
  uv_close((uv_handle_t *)&op->timer, later_closed);
  sc_stage_fail(ctx, SC_ECANCELLED, "later cancelled", false);
}

static const sc_stage_kind later_kind = {SC_STAGE_KIND_VERSION, later_start, later_cancel, NULL};

/* "never": starts and never finishes by itself. cancel records the call; with finish_in_cancel
 * it fails the stage there, otherwise the test delivers a late result itself. */
typedef struct never_state {
  int starts, cancels;
  bool finish_in_cancel, cancelled_flag_seen;
  sc_stage_ctx *last;
} never_state;

static int never_start(sc_stage_ctx *ctx, void *udata) {
  never_state *st = udata;
  st->starts++;
  st->last = ctx;
  return SC_OK;
}

static void never_cancel(sc_stage_ctx *ctx, void *udata) {
  never_state *st = udata;
  st->cancels++;
  st->cancelled_flag_seen = sc_stage_cancelled(ctx);
  if (st->finish_in_cancel) {
    st->last = NULL;
    sc_stage_fail(ctx, SC_ECANCELLED, "never cancelled", false);
  }
}

static const sc_stage_kind never_kind = {SC_STAGE_KIND_VERSION, never_start, never_cancel, NULL};

/* "broken": start returns an error without finishing the stage. */
static int broken_start(sc_stage_ctx *ctx, void *udata) {
  (void)ctx;
  (void)udata;
  return SC_EAUTH;
}

static const sc_stage_kind broken_kind = {SC_STAGE_KIND_VERSION, broken_start, NULL, NULL};

/* ---- ordering ---- */

static void sync_fn_stages_run_in_order_with_gapless_seq(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL, 0);
  char order[256] = "";
  assert_int_equal(sc_engine_register_fn(e, "record", fn_record, order), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  cJSON *config = fn_plan(5, "record");
  submit(e, "ordered", NULL, config, NULL);
  assert_string_equal(recorder_types(&r, NULL), "task.created");
  run_bounded(&loop, 5000);

  assert_string_equal(order, "s0,s1,s2,s3,s4");
  assert_string_equal(recorder_types(&r, NULL),
                      "task.created,task.started,"
                      "stage.started,stage.completed,stage.started,stage.completed,"
                      "stage.started,stage.completed,stage.started,stage.completed,"
                      "stage.started,stage.completed,task.completed");
  assert_int_equal(check_seq(&r, "ordered"), 13);
  for (size_t i = 0; i < 5; i++) {
    cJSON *root;
    const cJSON *data = event_data(&r, SC_EV_STAGE_STARTED, i, &root);
    char name[8];
    snprintf(name, sizeof(name), "s%zu", i);
    assert_string_equal(str_of(data, "stage"), name);
    assert_int_equal((int)num_of(data, "index"), (int)i);
    assert_int_equal((int)num_of(data, "attempt"), 1);
    cJSON_Delete(root);
  }
  assert_null(sc_engine_find_task(e, "ordered"));

  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

/* Counts events without encoding them, and checks the seq of each. */
typedef struct counter {
  size_t n, stage_completed, task_completed;
  uint64_t next_seq;
  bool seq_ok;
} counter;

static int count_event(const sc_event *ev, sc_ack *ack, void *udata) {
  (void)ack;
  counter *c = udata;
  if (ev->seq != c->next_seq) c->seq_ok = false;
  c->next_seq = ev->seq + 1;
  c->n++;
  if (ev->type == SC_EV_STAGE_COMPLETED) c->stage_completed++;
  if (ev->type == SC_EV_TASK_COMPLETED) c->task_completed++;
  return SC_OK;
}

static void hundred_thousand_sync_stages_complete_without_stack_growth(void **state) {
  (void)state;
  enum { N = 100000 };
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL, 0);
  assert_int_equal(sc_engine_register_fn(e, "noop", fn_noop, NULL), SC_OK);
  counter c = {0, 0, 0, 1, true};
  sc_subscriber s;
  sc_subscriber_init(&s);
  s.on_event = count_event;
  s.udata = &c;
  assert_int_equal(sc_engine_subscribe(e, &s, NULL), SC_OK);
  cJSON *config = fn_plan(N, "noop");
  sc_task *t = submit(e, "long", NULL, config, NULL);
  assert_int_equal(sc_task_stage_count(t), N);
  run_bounded(&loop, 100000);

  assert_int_equal(c.stage_completed, N);
  assert_int_equal(c.task_completed, 1);
  assert_int_equal(c.n, 2 * (size_t)N + 3);
  assert_true(c.seq_ok);
  assert_null(sc_engine_find_task(e, "long"));

  cJSON_Delete(config);
  stop_engine(e, NULL, &loop);
}

/* ---- kinds that finish later ---- */

static void stage_completing_from_a_timer_callback_completes_the_task(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL, 0);
  later_stats stats = {0, 0};
  assert_int_equal(sc_engine_register_kind(e, "later", &later_kind, &stats), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  cJSON *config = json_or_die("{\"stages\":["
                              "{\"name\":\"a\",\"kind\":\"later\",\"params\":{\"ms\":10,"
                              "\"output\":{\"from\":\"timer\"}}},"
                              "{\"name\":\"b\",\"kind\":\"later\",\"params\":{\"ms\":5}}]}");
  submit(e, "later-1", NULL, config, NULL);
  uint64_t t0;
  loop_elapsed_start(&loop, &t0);
  run_bounded(&loop, 5000);

  assert_true(loop_elapsed(&loop, t0) >= 15);
  assert_int_equal(stats.starts, 2);
  assert_int_equal(stats.cancels, 0);
  assert_string_equal(recorder_types(&r, NULL),
                      "task.created,task.started,stage.started,stage.completed,"
                      "stage.started,stage.completed,task.completed");
  assert_int_equal(check_seq(&r, "later-1"), 7);
  cJSON *root;
  const cJSON *data = event_data(&r, SC_EV_TASK_COMPLETED, 0, &root);
  assert_string_equal(str_of(cJSON_GetObjectItemCaseSensitive(data, "context"), "from"), "timer");
  cJSON_Delete(root);

  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

static void sleep_kind_waits_its_milliseconds(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL, 0);
  recorder r;
  recorder_attach(&r, e);
  cJSON *config =
      json_or_die("{\"stages\":[{\"name\":\"nap\",\"kind\":\"sleep\",\"params\":{\"ms\":25}}]}");
  submit(e, "sleeper", NULL, config, NULL);
  uint64_t t0;
  loop_elapsed_start(&loop, &t0);
  run_bounded(&loop, 5000);

  assert_true(loop_elapsed(&loop, t0) >= 25);
  assert_string_equal(recorder_types(&r, NULL),
                      "task.created,task.started,stage.started,stage.completed,task.completed");
  cJSON *root;
  const cJSON *data = event_data(&r, SC_EV_STAGE_COMPLETED, 0, &root);
  assert_true(num_of(data, "duration_ms") >= 20);
  cJSON_Delete(root);

  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

/* ---- failures ---- */

static void sync_failure_inside_start_fails_stage_then_task(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL, 0);
  flaky f = {0, 1000, false};
  assert_int_equal(sc_engine_register_fn(e, "fatal", fn_flaky, &f), SC_OK);
  assert_int_equal(sc_engine_register_fn(e, "noop", fn_noop, NULL), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  cJSON *config =
      json_or_die("{\"stages\":["
                  "{\"name\":\"bad\",\"kind\":\"fn\",\"params\":{\"fn\":\"fatal\"}},"
                  "{\"name\":\"never\",\"kind\":\"fn\",\"params\":{\"fn\":\"noop\"}}]}");
  sc_task *t = submit(e, "sync-fail", NULL, config, NULL);
  run_bounded(&loop, 5000);

  assert_string_equal(recorder_types(&r, NULL),
                      "task.created,task.started,stage.started,stage.failed,task.failed");
  assert_int_equal(check_seq(&r, "sync-fail"), 5);
  assert_ptr_equal(sc_engine_find_task(e, "sync-fail"), t); /* FAILED waits for retry/release */
  assert_int_equal(sc_task_get_status(t), SC_TASK_FAILED);
  cJSON *root;
  const cJSON *data = event_data(&r, SC_EV_STAGE_FAILED, 0, &root);
  const cJSON *err = cJSON_GetObjectItemCaseSensitive(data, "error");
  assert_int_equal((int)num_of(err, "code"), SC_EIO);
  assert_string_equal(str_of(err, "name"), "SC_EIO");
  assert_string_equal(str_of(err, "message"), "boom 1");
  assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(data, "will_retry")));
  assert_string_equal(str_of(data, "status"), "RUNNING");
  cJSON_Delete(root);
  data = event_data(&r, SC_EV_TASK_FAILED, 0, &root);
  assert_string_equal(str_of(data, "status"), "FAILED");
  assert_string_equal(str_of(cJSON_GetObjectItemCaseSensitive(data, "error"), "message"), "boom 1");
  cJSON_Delete(root);

  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

/* A value nested `depth` levels deep: {"n":{"n":...{}}} (depth objects). */
static cJSON *nested(int depth) {
  cJSON *inner = cJSON_CreateObject();
  for (int i = 1; i < depth && inner != NULL; i++) {
    cJSON *outer = cJSON_CreateObject();
    cJSON_AddItemToObject(outer, "n", inner);
    inner = outer;
  }
  return inner;
}

/* Completes with an output nested params.depth levels deep. */
static int fn_deep(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  const cJSON *d = cJSON_GetObjectItemCaseSensitive(sc_stage_params(ctx), "depth");
  sc_stage_complete(ctx, nested((int)d->valuedouble));
  return SC_OK;
}

/* An output, a config or a context nested deeper than an event line can be read back is refused
 * where it enters: the stage fails (not retried), the submit is refused; 512 levels are fine. */
static void values_nested_deeper_than_a_log_can_read_back_are_refused(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL, 0);
  assert_int_equal(sc_engine_register_fn(e, "deep", fn_deep, NULL), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  cJSON *config = json_or_die("{\"stages\":["
                              "{\"name\":\"fine\",\"kind\":\"fn\",\"params\":{\"fn\":\"deep\","
                              "\"depth\":512}},"
                              "{\"name\":\"deep\",\"kind\":\"fn\",\"params\":{\"fn\":\"deep\","
                              "\"depth\":1100},\"retry\":{\"max_attempts\":3}}]}");
  sc_task *t = submit(e, "deep-output", NULL, config, NULL);
  run_bounded(&loop, 5000);
  assert_string_equal(recorder_types(&r, NULL), "task.created,task.started,stage.started,"
                                                "stage.completed,stage.started,stage.failed,"
                                                "task.failed");
  assert_int_equal(sc_task_get_status(t), SC_TASK_FAILED);
  cJSON *root;
  const cJSON *data = event_data(&r, SC_EV_STAGE_FAILED, 0, &root);
  const cJSON *err = cJSON_GetObjectItemCaseSensitive(data, "error");
  assert_int_equal((int)num_of(err, "code"), SC_EINVAL);
  assert_non_null(strstr(str_of(err, "message"), "deeper than 512 levels"));
  cJSON_Delete(root);

  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.task_id = "deep-context";
  spec.config = config;
  cJSON *context = cJSON_CreateObject();
  cJSON_AddItemToObject(context, "n", nested(600));
  spec.context = context;
  sc_task *refused = NULL;
  assert_int_equal(sc_task_submit(e, &spec, &refused), SC_EINVAL);
  assert_null(refused);
  assert_non_null(strstr(sc_error_message(), "submit: context: \"n"));
  assert_non_null(strstr(sc_error_message(), "nests deeper than 512 levels"));
  cJSON_Delete(context);

  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

/* A stage's output that could not be read back from a log as the same value; params.what says
 * which kind. */
static int fn_unfit(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  const char *what = cJSON_GetStringValue(cJSON_GetObjectItem(sc_stage_params(ctx), "what"));
  cJSON *out = cJSON_CreateObject(), *inner = cJSON_AddArrayToObject(out, "r");
  cJSON_AddItemToArray(inner, cJSON_CreateTrue());
  if (strcmp(what, "raw") == 0)
    cJSON_AddItemToArray(inner, cJSON_CreateRaw("1}}\n"));
  else if (strcmp(what, "utf8") == 0)
    cJSON_AddItemToArray(inner, cJSON_CreateString("caf\xe9"));
  else if (strcmp(what, "nan") == 0)
    cJSON_AddItemToArray(inner, cJSON_CreateNumber(NAN));
  else if (strcmp(what, "inf") == 0)
    cJSON_AddItemToArray(inner, cJSON_CreateNumber(-INFINITY));
  else if (strcmp(what, "key") == 0)
    cJSON_AddItemToObject(cJSON_AddObjectToObject(out, "o"), "k\xfe", cJSON_CreateNull());
  sc_stage_complete(ctx, out);
  return SC_OK;
}

/* A config with one fn stage and, when v is given, the member "v". */
static cJSON *config_with(const char *stage_name, cJSON *v) {
  cJSON *c = cJSON_CreateObject();
  cJSON *st = cJSON_CreateObject();
  cJSON_AddStringToObject(st, "name", stage_name);
  cJSON_AddStringToObject(st, "kind", "fn");
  cJSON_AddStringToObject(cJSON_AddObjectToObject(st, "params"), "fn", "sign");
  cJSON_AddItemToArray(cJSON_AddArrayToObject(c, "stages"), st);
  if (v != NULL) cJSON_AddItemToObject(c, "v", v);
  return c;
}

static int fn_sign(sc_stage_ctx *ctx, void *udata) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(sc_stage_config(ctx), "v");
  int *seen = udata;
  *seen = cJSON_IsNumber(v) ? (signbit(v->valuedouble) ? -1 : 1) : 0;
  cJSON *out = cJSON_CreateObject();
  cJSON_AddNumberToObject(out, "z", -0.0);
  sc_stage_complete(ctx, out);
  return SC_OK;
}

/* Raw items, strings and member names that are not UTF-8, NaN and the infinities could not be
 * read back from a log as the same value: a stage's output with one fails the stage (not
 * retried), naming the JSON path, and the event line is still JSON. */
static void outputs_that_a_log_could_not_read_back_fail_the_stage_with_their_path(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL, 0);
  assert_int_equal(sc_engine_register_fn(e, "unfit", fn_unfit, NULL), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  const char *whats[] = {"raw", "utf8", "nan", "inf", "key"};
  const char *wants[] = {"stage output: \"r[1]\" is raw JSON text",
                         "stage output: \"r[1]\" is a string that is not valid UTF-8",
                         "stage output: \"r[1]\" is not a finite number",
                         "stage output: \"r[1]\" is not a finite number",
                         "stage output: \"o[\"k\xef\xbf\xbd\"]\" is a member whose name is not"};
  for (size_t i = 0; i < 5; i++) {
    char text[256], id[32];
    snprintf(text, sizeof(text),
             "{\"stages\":[{\"name\":\"out\",\"kind\":\"fn\",\"params\":{\"fn\":\"unfit\","
             "\"what\":\"%s\"},\"retry\":{\"max_attempts\":3}}]}",
             whats[i]);
    snprintf(id, sizeof(id), "unfit-%s", whats[i]);
    cJSON *config = json_or_die(text);
    sc_task *t = submit(e, id, NULL, config, NULL);
    cJSON_Delete(config);
    run_bounded(&loop, 5000);
    assert_int_equal(sc_task_get_status(t), SC_TASK_FAILED);
    assert_int_equal(recorder_count(&r, SC_EV_STAGE_STARTED, id), 1);
    cJSON *root;
    const cJSON *data = event_data(&r, SC_EV_STAGE_FAILED, i, &root);
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(data, "error");
    assert_int_equal((int)num_of(err, "code"), SC_EINVAL);
    if (strstr(str_of(err, "message"), wants[i]) == NULL)
      fail_msg("%s: message %s", whats[i], str_of(err, "message"));
    cJSON_Delete(root);
  }
  for (size_t i = 0; i < r.n; i++) {
    cJSON *line = cJSON_Parse(r.lines[i]);
    assert_non_null(line);
    cJSON_Delete(line);
  }
  sc_engine_free(e);
  recorder_free(&r);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* The same values in a config, a previous_config or a context are refused at submit and at
 * recovery, with the path; the config's are plan refusals (sc_plan_last_error). Two configs the
 * canonical form would have written alike (two stray bytes) can no longer share a cached plan. */
static void configs_and_contexts_that_a_log_could_not_read_back_are_refused(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL, 0);
  int seen = 0;
  assert_int_equal(sc_engine_register_fn(e, "sign", fn_sign, &seen), SC_OK);
  struct {
    cJSON *config;
    const char *field, *problem;
  } bad[] = {
      {config_with("s", cJSON_CreateRaw("1,\"injected\":true")), "v", "is raw JSON text"},
      {config_with("s", cJSON_CreateString("\xff")), "v", "is a string that is not valid UTF-8"},
      {config_with("s", cJSON_CreateString("\xed\xa0\x80")), "v", "not valid UTF-8"},
      {config_with("s", cJSON_CreateNumber(NAN)), "v", "is not a finite number"},
      {config_with("s", cJSON_CreateNumber(INFINITY)), "v", "is not a finite number"},
      {config_with("s\xfe", NULL), "stages[0].name", "not valid UTF-8"},
      {config_with("s", cJSON_CreateObject()), "v[\"a b\xef\xbf\xbd\"]", "member whose name"},
  };
  cJSON_AddNullToObject(cJSON_GetObjectItem(bad[6].config, "v"), "a b\xff");
  size_t nbad = sizeof(bad) / sizeof(bad[0]);
  cJSON *good = config_with("s", NULL);
  for (size_t i = 0; i < nbad; i++) {
    for (int where = 0; where < 3; where++) { /* config, previous_config, recovery's config */
      sc_task_spec s;
      sc_task_spec_init(&s);
      s.config = where == 1 ? good : bad[i].config;
      s.previous_config = where == 1 ? bad[i].config : NULL;
      sc_task *t = NULL;
      int rc;
      if (where < 2) {
        rc = sc_task_submit(e, &s, &t);
      } else {
        sc_recovery_request q;
        sc_recovery_request_init(&q);
        q.config = bad[i].config;
        rc = sc_recover_from_restart(e, &q, &t);
      }
      assert_int_equal(rc, SC_EINVAL);
      assert_null(t);
      const sc_plan_error *pe = sc_plan_last_error();
      if (pe == NULL) fail_msg("case %zu/%d: no plan refusal (%s)", i, where, sc_error_message());
      assert_int_equal(pe->code, SC_EINVAL);
      assert_non_null(pe->field);
      if (strcmp(pe->field, bad[i].field) != 0)
        fail_msg("case %zu/%d: field %s, not %s", i, where, pe->field, bad[i].field);
      assert_non_null(strstr(pe->problem, bad[i].problem));
      assert_int_equal(pe->previous_config, where == 1);
      assert_non_null(strstr(pe->message, where == 1 ? "previous_config: \"" : "config: \""));
    }
    /* as a context: not a plan refusal, the path in the message */
    cJSON *context = cJSON_CreateObject();
    cJSON_AddItemToObject(context, "ctx", cJSON_Duplicate(bad[i].config, true));
    for (int where = 0; where < 2; where++) {
      sc_task *t = NULL;
      int rc;
      if (where == 0) {
        sc_task_spec s;
        sc_task_spec_init(&s);
        s.config = good;
        s.context = context;
        rc = sc_task_submit(e, &s, &t);
      } else {
        sc_recovery_request q;
        sc_recovery_request_init(&q);
        q.config = good;
        q.context = context;
        rc = sc_recover_from_restart(e, &q, &t);
      }
      assert_int_equal(rc, SC_EINVAL);
      assert_null(t);
      assert_null(sc_plan_last_error());
      char want[128];
      snprintf(want, sizeof(want), "context: \"ctx.%s\" ", bad[i].field);
      if (bad[i].field[1] == '[') snprintf(want, sizeof(want), "context: \"ctx.v[");
      if (strstr(sc_error_message(), want) == NULL || !strstr(sc_error_message(), bad[i].problem))
        fail_msg("context case %zu/%d: %s", i, where, sc_error_message());
    }
    cJSON_Delete(context);
    cJSON_Delete(bad[i].config);
  }
  /* nothing was created */
  assert_int_equal(sc_engine_task_count(e), 0);
  cJSON_Delete(good);
  sc_engine_free(e);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* -0 is written as -0 (it reads back as itself), so {"v":-0.0} is not {"v":0}: each task runs
 * with its own config, not a cached plan's, and the digest tells them apart. */
static void negative_zero_is_a_value_of_its_own(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL, 0);
  int seen = 0;
  assert_int_equal(sc_engine_register_fn(e, "sign", fn_sign, &seen), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  cJSON *zero = config_with("s", cJSON_CreateNumber(0.0));
  cJSON *minus = config_with("s", cJSON_CreateNumber(-0.0));
  submit(e, "zero", NULL, zero, NULL);
  run_bounded(&loop, 5000);
  assert_int_equal(seen, 1);
  submit(e, "minus", NULL, minus, NULL);
  run_bounded(&loop, 5000);
  assert_int_equal(seen, -1);
  char dz[72], dm[72];
  assert_int_equal(sc_json_digest(zero, dz), SC_OK);
  assert_int_equal(sc_json_digest(minus, dm), SC_OK);
  assert_string_not_equal(dz, dm);
  /* the output's -0 is in the event line as -0 and reads back as -0 */
  cJSON *ctx = recorder_context(&r, SC_EV_STAGE_COMPLETED, 1);
  assert_non_null(ctx);
  const cJSON *z = cJSON_GetObjectItemCaseSensitive(ctx, "z");
  assert_true(cJSON_IsNumber(z));
  assert_true(z->valuedouble == 0 && signbit(z->valuedouble));
  cJSON_Delete(ctx);
  cJSON_Delete(zero);
  cJSON_Delete(minus);
  sc_engine_free(e);
  recorder_free(&r);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void start_returning_error_without_finishing_fails_stage_with_that_code(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL, 0);
  assert_int_equal(sc_engine_register_kind(e, "broken", &broken_kind, NULL), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  cJSON *config = json_or_die("{\"stages\":[{\"name\":\"b\",\"kind\":\"broken\"}]}");
  sc_task *t = submit(e, "broken-1", NULL, config, NULL);
  run_bounded(&loop, 5000);

  assert_string_equal(recorder_types(&r, NULL),
                      "task.created,task.started,stage.started,stage.failed,task.failed");
  assert_int_equal(sc_task_get_status(t), SC_TASK_FAILED);
  cJSON *root;
  const cJSON *data = event_data(&r, SC_EV_STAGE_FAILED, 0, &root);
  const cJSON *err = cJSON_GetObjectItemCaseSensitive(data, "error");
  assert_int_equal((int)num_of(err, "code"), SC_EAUTH);
  assert_string_equal(str_of(err, "name"), "SC_EAUTH");
  cJSON_Delete(root);
  data = event_data(&r, SC_EV_TASK_FAILED, 0, &root);
  assert_int_equal((int)num_of(cJSON_GetObjectItemCaseSensitive(data, "error"), "code"), SC_EAUTH);
  cJSON_Delete(root);

  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

/* ---- retries ---- */

static void retry_backs_off_exponentially_capped_then_succeeds(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL, 0);
  flaky f = {0, 2, true};
  assert_int_equal(sc_engine_register_fn(e, "flaky", fn_flaky, &f), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  cJSON *config =
      json_or_die("{\"stages\":[{\"name\":\"wobbly\",\"kind\":\"fn\",\"params\":{\"fn\":\"flaky\"},"
                  "\"retry\":{\"max_attempts\":3,\"initial_backoff_ms\":10,\"multiplier\":3,"
                  "\"max_backoff_ms\":20}}]}");
  submit(e, "retry-1", NULL, config, NULL);
  uint64_t t0;
  loop_elapsed_start(&loop, &t0);
  run_bounded(&loop, 5000);
  uint64_t elapsed = loop_elapsed(&loop, t0);

  assert_int_equal(f.calls, 3);
  assert_string_equal(recorder_types(&r, NULL),
                      "task.created,task.started,stage.started,stage.failed,stage.started,"
                      "stage.failed,stage.started,stage.completed,task.completed");
  assert_int_equal(check_seq(&r, "retry-1"), 9);
  for (size_t i = 0; i < 3; i++) {
    cJSON *root;
    const cJSON *data = event_data(&r, SC_EV_STAGE_STARTED, i, &root);
    assert_int_equal((int)num_of(data, "attempt"), (int)i + 1);
    cJSON_Delete(root);
  }
  const double expected_backoff[2] = {10, 20}; /* 10 * 3^0, min(10 * 3^1, 20) */
  for (size_t i = 0; i < 2; i++) {
    cJSON *root;
    const cJSON *data = event_data(&r, SC_EV_STAGE_FAILED, i, &root);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(data, "will_retry")));
    assert_true(num_of(data, "retry_in_ms") == expected_backoff[i]);
    assert_int_equal((int)num_of(data, "attempt"), (int)i + 1);
    cJSON_Delete(root);
  }
  assert_true(elapsed >= 30);

  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

static void non_retryable_failure_stops_retries_at_once(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL, 0);
  flaky f = {0, 1000, false};
  assert_int_equal(sc_engine_register_fn(e, "fatal", fn_flaky, &f), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  cJSON *config =
      json_or_die("{\"stages\":[{\"name\":\"once\",\"kind\":\"fn\",\"params\":{\"fn\":\"fatal\"},"
                  "\"retry\":{\"max_attempts\":3,\"initial_backoff_ms\":1}}]}");
  sc_task *t = submit(e, "noretry", NULL, config, NULL);
  run_bounded(&loop, 5000);

  assert_int_equal(f.calls, 1);
  assert_string_equal(recorder_types(&r, NULL),
                      "task.created,task.started,stage.started,stage.failed,task.failed");
  assert_int_equal(sc_task_get_status(t), SC_TASK_FAILED);
  cJSON *root;
  const cJSON *data = event_data(&r, SC_EV_STAGE_FAILED, 0, &root);
  assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(data, "will_retry")));
  assert_null(cJSON_GetObjectItemCaseSensitive(data, "retry_in_ms"));
  cJSON_Delete(root);

  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

static void exhausted_attempts_fail_task_with_last_error(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL, 0);
  flaky f = {0, 1000, true};
  assert_int_equal(sc_engine_register_fn(e, "flaky", fn_flaky, &f), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  cJSON *config = json_or_die(
      "{\"stages\":[{\"name\":\"hopeless\",\"kind\":\"fn\",\"params\":{\"fn\":\"flaky\"},"
      "\"retry\":{\"max_attempts\":3,\"initial_backoff_ms\":1}}]}");
  sc_task *t = submit(e, "exhausted", NULL, config, NULL);
  run_bounded(&loop, 5000);

  assert_int_equal(f.calls, 3);
  assert_string_equal(recorder_types(&r, NULL),
                      "task.created,task.started,stage.started,stage.failed,stage.started,"
                      "stage.failed,stage.started,stage.failed,task.failed");
  assert_int_equal(sc_task_get_status(t), SC_TASK_FAILED);
  cJSON *root;
  const cJSON *data = event_data(&r, SC_EV_STAGE_FAILED, 2, &root);
  assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(data, "will_retry")));
  assert_int_equal((int)num_of(data, "attempt"), 3);
  cJSON_Delete(root);
  data = event_data(&r, SC_EV_TASK_FAILED, 0, &root);
  const cJSON *err = cJSON_GetObjectItemCaseSensitive(data, "error");
  assert_string_equal(str_of(err, "message"), "boom 3");
  assert_int_equal((int)num_of(err, "code"), SC_EIO);
  cJSON_Delete(root);

  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

/* Backoffs stay finite and in range whatever the policy: 0 * 100^n is 0, never NaN, and a huge
 * product is capped at a day. */
static void backoff_is_zero_or_capped_for_extreme_policies(void **state) {
  (void)state;
  static const char *const policies[][2] = {
      {"{\"max_attempts\":200,\"initial_backoff_ms\":0,\"multiplier\":100}", "0"},
      {"{\"max_attempts\":200,\"initial_backoff_ms\":0,\"multiplier\":100,\"max_backoff_ms\":0}",
       "0"},
  };
  for (size_t k = 0; k < sizeof(policies) / sizeof(policies[0]); k++) {
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    sc_engine *e = engine_on(&loop, NULL, 0);
    flaky f = {0, 1000, true};
    assert_int_equal(sc_engine_register_fn(e, "flaky", fn_flaky, &f), SC_OK);
    recorder r;
    recorder_attach(&r, e);
    char text[512];
    snprintf(text, sizeof(text),
             "{\"stages\":[{\"name\":\"again\",\"kind\":\"fn\",\"params\":{\"fn\":\"flaky\"},"
             "\"retry\":%s}]}",
             policies[k][0]);
    cJSON *config = json_or_die(text);
    sc_task *t = submit(e, "extreme", NULL, config, NULL);
    run_bounded(&loop, 10000);
    assert_int_equal(f.calls, 200);
    assert_int_equal(sc_task_get_status(t), SC_TASK_FAILED);
    for (size_t i = 0; i < 199; i++) {
      cJSON *root;
      const cJSON *data = event_data(&r, SC_EV_STAGE_FAILED, i, &root);
      assert_int_equal((long)num_of(data, "retry_in_ms"), atol(policies[k][1]));
      cJSON_Delete(root);
    }
    cJSON_Delete(config);
    stop_engine(e, &r, &loop);
  }
}

/* ---- timeouts ---- */

typedef struct late_delivery {
  never_state *never;
  uv_timer_t timer;
} late_delivery;

static void deliver_late(uv_timer_t *timer) {
  late_delivery *d = timer->data;
  cJSON *out = cJSON_CreateObject();
  cJSON_AddBoolToObject(out, "late", true);
  sc_stage_complete(d->never->last, out);
  d->never->last = NULL;
}

static void timeout_fails_stage_cancels_kind_and_ignores_late_result(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  logbook log;
  sc_engine *e = engine_on(&loop, &log, 0);
  never_state never = {0};
  assert_int_equal(sc_engine_register_kind(e, "never", &never_kind, &never), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  cJSON *config =
      json_or_die("{\"stages\":[{\"name\":\"hang\",\"kind\":\"never\",\"timeout_ms\":30}]}");
  sc_task *t = submit(e, "timeout-1", NULL, config, NULL);
  uint64_t t0;
  loop_elapsed_start(&loop, &t0);
  run_bounded(&loop, 5000);

  assert_true(loop_elapsed(&loop, t0) >= 30);
  assert_string_equal(recorder_types(&r, NULL),
                      "task.created,task.started,stage.started,stage.failed,task.failed");
  assert_int_equal(never.starts, 1);
  assert_int_equal(never.cancels, 1);
  assert_true(never.cancelled_flag_seen);
  cJSON *root;
  const cJSON *data = event_data(&r, SC_EV_STAGE_FAILED, 0, &root);
  const cJSON *err = cJSON_GetObjectItemCaseSensitive(data, "error");
  assert_string_equal(str_of(err, "name"), "SC_ETIMEDOUT");
  assert_int_equal((int)num_of(err, "code"), SC_ETIMEDOUT);
  cJSON_Delete(root);
  assert_int_equal(sc_task_get_status(t), SC_TASK_FAILED);

  /* The kind delivers its result after the engine gave up: logged, not acted on. */
  assert_non_null(never.last);
  int logged = log.n;
  late_delivery d = {&never, {0}};
  uv_timer_init(&loop, &d.timer);
  d.timer.data = &d;
  uv_timer_start(&d.timer, deliver_late, 5, 0);
  run_bounded(&loop, 5000);
  uv_close((uv_handle_t *)&d.timer, NULL);
  run_bounded(&loop, 5000);

  assert_null(never.last);
  assert_true(log.n > logged);
  assert_true(logbook_has(&log, "not acted on"));
  assert_int_equal(recorder_count(&r, SC_EV_STAGE_COMPLETED, NULL), 0);
  assert_string_equal(recorder_types(&r, NULL),
                      "task.created,task.started,stage.started,stage.failed,task.failed");
  assert_ptr_equal(sc_engine_find_task(e, "timeout-1"), t);
  assert_int_equal(sc_task_get_status(t), SC_TASK_FAILED);
  assert_null(cJSON_GetObjectItemCaseSensitive(sc_task_context(t), "late"));

  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

static void each_retry_attempt_times_out_separately(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  logbook log;
  sc_engine *e = engine_on(&loop, &log, 0);
  never_state never = {0};
  never.finish_in_cancel = true;
  assert_int_equal(sc_engine_register_kind(e, "never", &never_kind, &never), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  cJSON *config = json_or_die("{\"stages\":[{\"name\":\"hang\",\"kind\":\"never\","
                              "\"timeout_ms\":30,\"retry\":{\"max_attempts\":2,"
                              "\"initial_backoff_ms\":5}}]}");
  submit(e, "timeout-2", NULL, config, NULL);
  uint64_t t0;
  loop_elapsed_start(&loop, &t0);
  run_bounded(&loop, 5000);

  assert_true(loop_elapsed(&loop, t0) >= 65); /* 30 + 5 + 30 */
  assert_int_equal(never.starts, 2);
  assert_int_equal(never.cancels, 2);
  assert_string_equal(recorder_types(&r, NULL),
                      "task.created,task.started,stage.started,stage.failed,stage.started,"
                      "stage.failed,task.failed");
  for (size_t i = 0; i < 2; i++) {
    cJSON *root;
    const cJSON *data = event_data(&r, SC_EV_STAGE_FAILED, i, &root);
    assert_string_equal(str_of(cJSON_GetObjectItemCaseSensitive(data, "error"), "name"),
                        "SC_ETIMEDOUT");
    assert_int_equal((int)num_of(data, "attempt"), (int)i + 1);
    assert_true(num_of(data, "duration_ms") >= 25);
    assert_int_equal(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(data, "will_retry")), i == 0);
    cJSON_Delete(root);
  }

  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

/* ---- outputs and the context ---- */

static void outputs_merge_shallowly_into_context_with_matching_digest(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL, 0);
  emitter em;
  memset(&em, 0, sizeof(em));
  assert_int_equal(sc_engine_register_fn(e, "emit", fn_emit, &em), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  cJSON *config =
      json_or_die("{\"stages\":["
                  "{\"name\":\"one\",\"kind\":\"fn\",\"params\":{\"fn\":\"emit\","
                  "\"output\":{\"a\":2,\"b\":{\"n\":1}}}},"
                  "{\"name\":\"two\",\"kind\":\"fn\",\"params\":{\"fn\":\"emit\","
                  "\"output\":{\"b\":\"replaced\",\"c\":[1,2]}}},"
                  "{\"name\":\"three\",\"kind\":\"fn\",\"params\":{\"fn\":\"emit\"}}]}");
  cJSON *initial = json_or_die("{\"keep\":\"x\",\"a\":1}");
  cJSON *after_one = json_or_die("{\"keep\":\"x\",\"a\":2,\"b\":{\"n\":1}}");
  cJSON *after_two = json_or_die("{\"keep\":\"x\",\"a\":2,\"b\":\"replaced\",\"c\":[1,2]}");
  submit(e, "outputs", NULL, config, initial);
  run_bounded(&loop, 5000);

  assert_int_equal(recorder_count(&r, SC_EV_TASK_COMPLETED, NULL), 1);
  /* What each stage saw, through the stage and through the task. */
  assert_true(cJSON_Compare(em.seen_stage_ctx[0], initial, true));
  assert_true(cJSON_Compare(em.seen_stage_ctx[1], after_one, true));
  assert_true(cJSON_Compare(em.seen_task_ctx[1], after_one, true));
  assert_true(cJSON_Compare(em.seen_stage_ctx[2], after_two, true));
  assert_true(cJSON_Compare(em.seen_task_ctx[2], after_two, true));

  const cJSON *expected[3] = {after_one, after_two, after_two};
  char digests[3][72];
  for (size_t i = 0; i < 3; i++) {
    cJSON *root;
    const cJSON *data = event_data(&r, SC_EV_STAGE_COMPLETED, i, &root);
    cJSON *whole = recorder_context(&r, SC_EV_STAGE_COMPLETED, i);
    assert_true(cJSON_Compare(whole, expected[i], true));
    cJSON_Delete(whole);
    if (i == 0) /* the first of a run carries the whole context in the event too */
      assert_true(
          cJSON_Compare(cJSON_GetObjectItemCaseSensitive(data, "context"), expected[i], true));
    char want[72];
    assert_int_equal(sc_json_digest(expected[i], want), SC_OK);
    assert_string_equal(str_of(data, "digest"), want);
    assert_int_equal(strncmp(want, "sha256:", 7), 0);
    snprintf(digests[i], sizeof(digests[i]), "%s", want);
    assert_int_equal(strncmp(str_of(data, "fingerprint"), "sha256:", 7), 0);
    assert_true(num_of(data, "duration_ms") >= 0);
    if (i == 0) {
      cJSON *out = json_or_die("{\"a\":2,\"b\":{\"n\":1}}");
      assert_true(cJSON_Compare(cJSON_GetObjectItemCaseSensitive(data, "output"), out, true));
      cJSON_Delete(out);
    }
    cJSON_Delete(root);
  }
  /* A NULL output leaves the context, and so its digest, as it was. */
  assert_string_equal(digests[2], digests[1]);
  cJSON *root;
  const cJSON *data = event_data(&r, SC_EV_TASK_COMPLETED, 0, &root);
  assert_true(cJSON_Compare(cJSON_GetObjectItemCaseSensitive(data, "context"), after_two, true));
  assert_string_equal(str_of(data, "digest"), digests[2]);
  cJSON_Delete(root);

  emitter_free(&em);
  cJSON_Delete(initial);
  cJSON_Delete(after_one);
  cJSON_Delete(after_two);
  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

static void null_output_keeps_context_and_digest(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL, 0);
  emitter em;
  memset(&em, 0, sizeof(em));
  assert_int_equal(sc_engine_register_fn(e, "emit", fn_emit, &em), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  cJSON *config = json_or_die(
      "{\"stages\":["
      "{\"name\":\"one\",\"kind\":\"fn\",\"params\":{\"fn\":\"emit\",\"output\":{\"v\":1}}},"
      "{\"name\":\"two\",\"kind\":\"fn\",\"params\":{\"fn\":\"emit\"}}]}");
  submit(e, "null-output", NULL, config, NULL);
  run_bounded(&loop, 5000);

  cJSON *r0, *r1;
  const cJSON *d0 = event_data(&r, SC_EV_STAGE_COMPLETED, 0, &r0);
  const cJSON *d1 = event_data(&r, SC_EV_STAGE_COMPLETED, 1, &r1);
  assert_string_equal(str_of(d0, "digest"), str_of(d1, "digest"));
  cJSON *c0 = recorder_context(&r, SC_EV_STAGE_COMPLETED, 0);
  cJSON *c1 = recorder_context(&r, SC_EV_STAGE_COMPLETED, 1);
  assert_non_null(c0);
  assert_true(cJSON_Compare(c0, c1, true));
  cJSON_Delete(c0);
  cJSON_Delete(c1);
  const cJSON *out = cJSON_GetObjectItemCaseSensitive(d1, "output");
  assert_true(out == NULL || cJSON_IsNull(out));
  cJSON_Delete(r0);
  cJSON_Delete(r1);

  emitter_free(&em);
  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

static void non_object_output_fails_stage_with_einval(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL, 0);
  emitter em;
  memset(&em, 0, sizeof(em));
  assert_int_equal(sc_engine_register_fn(e, "emit", fn_emit, &em), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  cJSON *config = json_or_die("{\"stages\":[{\"name\":\"arr\",\"kind\":\"fn\","
                              "\"params\":{\"fn\":\"emit\",\"output\":[1,2,3]}}]}");
  sc_task *t = submit(e, "bad-output", NULL, config, NULL);
  run_bounded(&loop, 5000);

  assert_string_equal(recorder_types(&r, NULL),
                      "task.created,task.started,stage.started,stage.failed,task.failed");
  assert_int_equal(sc_task_get_status(t), SC_TASK_FAILED);
  cJSON *root;
  const cJSON *data = event_data(&r, SC_EV_STAGE_FAILED, 0, &root);
  const cJSON *err = cJSON_GetObjectItemCaseSensitive(data, "error");
  assert_string_equal(str_of(err, "name"), "SC_EINVAL");
  assert_int_equal((int)num_of(err, "code"), SC_EINVAL);
  cJSON_Delete(root);
  assert_null(sc_task_context(t)->child);

  emitter_free(&em);
  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

static void second_completion_inside_start_is_refused_and_logged(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  logbook log;
  sc_engine *e = engine_on(&loop, &log, 0);
  assert_int_equal(sc_engine_register_fn(e, "twice", fn_twice, NULL), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  cJSON *config = json_or_die(
      "{\"stages\":[{\"name\":\"dbl\",\"kind\":\"fn\",\"params\":{\"fn\":\"twice\"}}]}");
  submit(e, "twice-sync", NULL, config, NULL);
  run_bounded(&loop, 5000);

  assert_string_equal(recorder_types(&r, NULL),
                      "task.created,task.started,stage.started,stage.completed,task.completed");
  assert_true(log.n >= 1);
  assert_true(logbook_has(&log, "twice"));
  cJSON *root;
  const cJSON *data = event_data(&r, SC_EV_TASK_COMPLETED, 0, &root);
  const cJSON *ctx = cJSON_GetObjectItemCaseSensitive(data, "context");
  assert_non_null(cJSON_GetObjectItemCaseSensitive(ctx, "first"));
  assert_null(cJSON_GetObjectItemCaseSensitive(ctx, "second"));
  cJSON_Delete(root);

  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

static void second_completion_in_same_timer_callback_is_refused_and_logged(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  logbook log;
  sc_engine *e = engine_on(&loop, &log, 0);
  later_stats stats = {0, 0};
  assert_int_equal(sc_engine_register_kind(e, "later", &later_kind, &stats), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  cJSON *config = json_or_die("{\"stages\":[{\"name\":\"dbl\",\"kind\":\"later\","
                              "\"params\":{\"ms\":5,\"twice\":true,\"output\":{\"first\":1}}}]}");
  submit(e, "twice-timer", NULL, config, NULL);
  run_bounded(&loop, 5000);

  assert_string_equal(recorder_types(&r, NULL),
                      "task.created,task.started,stage.started,stage.completed,task.completed");
  assert_true(log.n >= 1);
  assert_true(logbook_has(&log, "twice"));
  cJSON *root;
  const cJSON *data = event_data(&r, SC_EV_TASK_COMPLETED, 0, &root);
  const cJSON *ctx = cJSON_GetObjectItemCaseSensitive(data, "context");
  assert_non_null(cJSON_GetObjectItemCaseSensitive(ctx, "first"));
  assert_null(cJSON_GetObjectItemCaseSensitive(ctx, "second"));
  cJSON_Delete(root);

  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

/* ---- accessors and the task spec ---- */

static void stage_accessors_describe_the_running_stage(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL, 0);
  inspection in;
  memset(&in, 0, sizeof(in));
  assert_int_equal(sc_engine_register_fn(e, "noop", fn_noop, NULL), SC_OK);
  assert_int_equal(sc_engine_register_fn(e, "inspect", fn_inspect, &in), SC_OK);
  cJSON *config = json_or_die(
      "{\"version\":\"1.2.3\",\"stages\":["
      "{\"name\":\"first\",\"kind\":\"fn\",\"params\":{\"fn\":\"noop\"}},"
      "{\"name\":\"look\",\"kind\":\"fn\",\"params\":{\"fn\":\"inspect\",\"color\":\"blue\"}}]}");
  in.expected_config = config;
  cJSON *initial = json_or_die("{\"region\":\"eu\"}");
  sc_task *t = submit(e, "accessors", "acme", config, initial);
  run_bounded(&loop, 5000);

  assert_true(in.ran);
  assert_string_equal(in.name, "look");
  assert_int_equal(in.index, 1);
  assert_int_equal(in.attempt, 1);
  assert_string_equal(in.color, "blue");
  assert_true(in.config_matches);
  assert_true(cJSON_Compare(in.context, initial, true));
  assert_false(in.is_rollback);
  assert_false(in.cancelled);
  assert_ptr_equal(in.task, t);
  assert_ptr_equal(in.loop, &loop);
  assert_ptr_equal(sc_engine_loop(e), &loop);

  cJSON_Delete(in.context);
  cJSON_Delete(initial);
  cJSON_Delete(config);
  stop_engine(e, NULL, &loop);
}

static void initial_context_comes_from_task_spec_and_is_copied(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL, 0);
  inspection in;
  memset(&in, 0, sizeof(in));
  assert_int_equal(sc_engine_register_fn(e, "inspect", fn_inspect, &in), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  cJSON *config = json_or_die(
      "{\"stages\":[{\"name\":\"look\",\"kind\":\"fn\",\"params\":{\"fn\":\"inspect\"}}]}");
  cJSON *initial = json_or_die("{\"who\":\"ops\",\"n\":1}");
  cJSON *expected = cJSON_Duplicate(initial, true);
  sc_task *t = submit(e, "initial-ctx", NULL, config, initial);
  assert_true(cJSON_Compare(sc_task_context(t), expected, true));
  cJSON_Delete(initial); /* copied by submit */
  run_bounded(&loop, 5000);

  assert_true(in.ran);
  assert_true(cJSON_Compare(in.context, expected, true));
  cJSON *root;
  const cJSON *data = event_data(&r, SC_EV_TASK_CREATED, 0, &root);
  assert_true(cJSON_Compare(cJSON_GetObjectItemCaseSensitive(data, "context"), expected, true));
  cJSON_Delete(root);
  data = event_data(&r, SC_EV_STAGE_COMPLETED, 0, &root);
  char want[72];
  assert_int_equal(sc_json_digest(expected, want), SC_OK);
  assert_string_equal(str_of(data, "digest"), want);
  cJSON_Delete(root);

  cJSON_Delete(in.context);
  cJSON_Delete(expected);
  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

static void duplicate_live_task_id_is_busy_and_emits_nothing(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL, 0);
  assert_int_equal(sc_engine_register_fn(e, "noop", fn_noop, NULL), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  cJSON *config = fn_plan(2, "noop");
  sc_task *first = submit(e, "dup", NULL, config, NULL);
  assert_int_equal(r.n, 1);

  sc_task_spec s;
  sc_task_spec_init(&s);
  s.task_id = "dup";
  s.config = config;
  sc_task *second = first; /* a failed submit sets it to NULL */
  assert_int_equal(sc_task_submit(e, &s, &second), SC_EBUSY);
  assert_null(second);
  assert_non_null(strstr(sc_error_message(), "dup"));
  assert_int_equal(r.n, 1);
  assert_int_equal(sc_engine_task_count(e), 1);
  assert_ptr_equal(sc_engine_find_task(e, "dup"), first);

  run_bounded(&loop, 5000);
  assert_int_equal(recorder_count(&r, SC_EV_TASK_CREATED, NULL), 1);
  assert_int_equal(recorder_count(&r, SC_EV_TASK_COMPLETED, NULL), 1);
  assert_int_equal(check_seq(&r, "dup"), 7);
  /* Once the first is gone, the id is free again. */
  assert_null(sc_engine_find_task(e, "dup"));
  assert_int_equal(sc_task_submit(e, &s, NULL), SC_OK);
  run_bounded(&loop, 5000);
  assert_int_equal(recorder_count(&r, SC_EV_TASK_COMPLETED, NULL), 2);

  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

static void missing_task_id_is_generated_as_uuid_v7(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL, 0);
  assert_int_equal(sc_engine_register_fn(e, "noop", fn_noop, NULL), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  cJSON *config = fn_plan(1, "noop");
  sc_task *a = submit(e, NULL, NULL, config, NULL);
  sc_task *b = submit(e, NULL, NULL, config, NULL);
  char ida[64], idb[64];
  snprintf(ida, sizeof(ida), "%s", sc_task_id(a));
  snprintf(idb, sizeof(idb), "%s", sc_task_id(b));
  const char *ids[2] = {ida, idb};
  for (int k = 0; k < 2; k++) {
    const char *id = ids[k];
    assert_int_equal(strlen(id), 36);
    for (int i = 0; i < 36; i++) {
      if (i == 8 || i == 13 || i == 18 || i == 23)
        assert_int_equal(id[i], '-');
      else
        assert_true(isxdigit((unsigned char)id[i]) && !isupper((unsigned char)id[i]));
    }
    assert_int_equal(id[14], '7');           /* version 7 */
    assert_non_null(strchr("89ab", id[19])); /* RFC 9562 variant */
    assert_string_equal(r.task_ids[k], id);  /* task.created carries it */
  }
  assert_string_not_equal(ida, idb);
  run_bounded(&loop, 5000);
  assert_int_equal(recorder_count(&r, SC_EV_TASK_COMPLETED, ida), 1);
  assert_int_equal(recorder_count(&r, SC_EV_TASK_COMPLETED, idb), 1);

  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

/* ---- admission: tenants and max_active_tasks ---- */

static const char *sleep_config_json =
    "{\"stages\":[{\"name\":\"nap\",\"kind\":\"sleep\",\"params\":{\"ms\":10}},"
    "{\"name\":\"nap2\",\"kind\":\"sleep\",\"params\":{\"ms\":5}}]}";

static void same_tenant_tasks_run_one_after_another_in_submission_order(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL, 0);
  recorder r;
  recorder_attach(&r, e);
  cJSON *config = json_or_die(sleep_config_json);
  submit(e, "acme-1", "acme", config, NULL);
  submit(e, "acme-2", "acme", config, NULL);
  submit(e, "acme-3", "acme", config, NULL);
  run_bounded(&loop, 5000);

  assert_int_equal(recorder_count(&r, SC_EV_TASK_COMPLETED, NULL), 3);
  long done1 = event_pos(&r, SC_EV_TASK_COMPLETED, "acme-1", 0);
  long start2 = event_pos(&r, SC_EV_TASK_STARTED, "acme-2", 0);
  long done2 = event_pos(&r, SC_EV_TASK_COMPLETED, "acme-2", 0);
  long start3 = event_pos(&r, SC_EV_TASK_STARTED, "acme-3", 0);
  assert_true(done1 >= 0 && start2 > done1);
  assert_true(done2 >= 0 && start3 > done2);
  check_seq(&r, "acme-1");
  check_seq(&r, "acme-2");
  check_seq(&r, "acme-3");

  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

static void different_tenant_tasks_interleave(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL, 0);
  recorder r;
  recorder_attach(&r, e);
  cJSON *config = json_or_die(sleep_config_json);
  submit(e, "x-1", "x", config, NULL);
  submit(e, "y-1", "y", config, NULL);
  submit(e, "none-1", NULL, config, NULL);
  run_bounded(&loop, 5000);

  assert_int_equal(recorder_count(&r, SC_EV_TASK_COMPLETED, NULL), 3);
  long done_x = event_pos(&r, SC_EV_TASK_COMPLETED, "x-1", 0);
  assert_true(event_pos(&r, SC_EV_TASK_STARTED, "y-1", 0) < done_x);
  assert_true(event_pos(&r, SC_EV_TASK_STARTED, "none-1", 0) < done_x);
  assert_true(event_pos(&r, SC_EV_STAGE_STARTED, "y-1", 0) < done_x);

  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

static void max_active_tasks_one_serializes_different_tenants(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL, 1);
  recorder r;
  recorder_attach(&r, e);
  cJSON *config = json_or_die(sleep_config_json);
  submit(e, "x-1", "x", config, NULL);
  submit(e, "y-1", "y", config, NULL);
  submit(e, "none-1", NULL, config, NULL);
  run_bounded(&loop, 5000);

  assert_int_equal(recorder_count(&r, SC_EV_TASK_COMPLETED, NULL), 3);
  assert_true(event_pos(&r, SC_EV_TASK_STARTED, "y-1", 0) >
              event_pos(&r, SC_EV_TASK_COMPLETED, "x-1", 0));
  assert_true(event_pos(&r, SC_EV_TASK_STARTED, "none-1", 0) >
              event_pos(&r, SC_EV_TASK_COMPLETED, "y-1", 0));

  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

/* ---- engine life cycle ---- */

static void engine_free_during_sleep_stage_closes_loop_cleanly(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  logbook log;
  sc_engine *e = engine_on(&loop, &log, 0);
  recorder r;
  recorder_attach(&r, e);
  cJSON *config =
      json_or_die("{\"stages\":[{\"name\":\"long\",\"kind\":\"sleep\",\"params\":{\"ms\":60000},"
                  "\"timeout_ms\":120000}]}");
  submit(e, "freed", "acme", config, NULL);
  run_until_event(&loop, &r, SC_EV_STAGE_STARTED, 100);
  size_t before = r.n;

  sc_engine_free(e);
  assert_int_equal(r.n, before); /* freeing emits nothing */
  assert_int_equal(uv_loop_close(&loop), 0);
  cJSON_Delete(config);
  recorder_free(&r);
}

static void engine_with_own_loop_runs_tasks(void **state) {
  (void)state;
  sc_engine *e = start_engine(NULL, NULL, NULL);
  uv_loop_t *loop = sc_engine_loop(e);
  assert_non_null(loop);
  assert_int_equal(sc_engine_register_fn(e, "noop", fn_noop, NULL), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  cJSON *config =
      json_or_die("{\"stages\":[{\"name\":\"a\",\"kind\":\"fn\",\"params\":{\"fn\":\"noop\"}},"
                  "{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":5}}]}");
  submit(e, "own-loop", NULL, config, NULL);

  uv_timer_t guard;
  int fired = 0;
  uv_timer_init(loop, &guard);
  guard.data = &fired;
  uv_timer_start(&guard, harness_guard_fired, 5000, 0);
  uv_unref((uv_handle_t *)&guard);
  assert_int_equal(sc_engine_run(e), SC_OK);
  uv_close((uv_handle_t *)&guard, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
  assert_false(fired);

  assert_string_equal(recorder_types(&r, NULL),
                      "task.created,task.started,stage.started,stage.completed,"
                      "stage.started,stage.completed,task.completed");
  assert_int_equal(sc_engine_task_count(e), 0);

  cJSON_Delete(config);
  sc_engine_free(e); /* closes the engine's own loop */
  recorder_free(&r);
}

typedef struct post_state {
  sc_engine *e;
  uv_thread_t loop_thread;
  uv_timer_t guard;
  const cJSON *config;
  int post_rc, submit_rc;
  bool ran, on_loop_thread;
} post_state;

static void posted(sc_engine *e, void *udata) {
  post_state *s = udata;
  uv_thread_t self = uv_thread_self();
  s->ran = true;
  s->on_loop_thread = e == s->e && uv_thread_equal(&self, &s->loop_thread);
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.task_id = "posted";
  spec.config = s->config;
  s->submit_rc = sc_task_submit(e, &spec, NULL);
  uv_timer_stop(&s->guard);
}

static void post_thread(void *arg) {
  post_state *s = arg;
  s->post_rc = sc_engine_post(s->e, posted, s);
}

static void post_guard_fired(uv_timer_t *t) {
  (void)t;
}

static void post_from_another_thread_runs_on_loop_thread(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL, 0);
  assert_int_equal(sc_engine_register_fn(e, "noop", fn_noop, NULL), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  cJSON *config = fn_plan(2, "noop");
  post_state s;
  memset(&s, 0, sizeof(s));
  s.e = e;
  s.loop_thread = uv_thread_self();
  s.config = config;
  s.post_rc = 1;
  /* A referenced timer keeps the loop waiting for the post (the engine's async is unreferenced);
   * the posted function stops it. It also bounds the wait. */
  uv_timer_init(&loop, &s.guard);
  uv_timer_start(&s.guard, post_guard_fired, 5000, 0);
  uv_thread_t thread;
  assert_int_equal(uv_thread_create(&thread, post_thread, &s), 0);
  run_bounded(&loop, 10000);
  assert_int_equal(uv_thread_join(&thread), 0);
  uv_close((uv_handle_t *)&s.guard, NULL);
  run_bounded(&loop, 5000);

  assert_int_equal(s.post_rc, SC_OK);
  assert_true(s.ran);
  assert_true(s.on_loop_thread);
  assert_int_equal(s.submit_rc, SC_OK);
  assert_int_equal(recorder_count(&r, SC_EV_TASK_COMPLETED, "posted"), 1);

  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

/* ---- trace context and idempotency keys of stages ---- */

typedef struct traced {
  char traceparent[4][64]; /* "" for none */
  char key[4][72];
  size_t n;
} traced;

static int fn_traced(sc_stage_ctx *ctx, void *udata) {
  traced *t = udata;
  assert_true(t->n < 4);
  const char *tp = sc_stage_traceparent(ctx);
  snprintf(t->traceparent[t->n], sizeof(t->traceparent[0]), "%s", tp ? tp : "");
  snprintf(t->key[t->n], sizeof(t->key[0]), "%s", sc_stage_idempotency_key(ctx));
  t->n++;
  sc_stage_complete(ctx, NULL);
  return SC_OK;
}

static void each_stage_gets_a_span_of_the_tasks_trace_and_a_key_of_its_own(void **state) {
  (void)state;
  static const char *const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = engine_on(&loop, NULL, 0);
  traced t = {0};
  assert_int_equal(sc_engine_register_fn(e, "traced", fn_traced, &t), SC_OK);
  recorder r;
  recorder_attach(&r, e);
  cJSON *config = fn_plan(2, "traced");
  sc_task_spec s;
  sc_task_spec_init(&s);
  s.task_id = "traced-task";
  s.config = config;
  s.traceparent = tp;
  s.tracestate = "vendor=a1";
  sc_task *traced_task = NULL;
  assert_int_equal(sc_task_submit(e, &s, &traced_task), SC_OK);
  assert_string_equal(sc_task_traceparent(traced_task), tp);
  assert_string_equal(sc_task_tracestate(traced_task), "vendor=a1");
  cJSON *created_json = recorder_json(&r, SC_EV_TASK_CREATED, 0);
  const cJSON *created = cJSON_GetObjectItemCaseSensitive(created_json, "data");
  assert_string_equal(str_of(created, "tracestate"), "vendor=a1");
  cJSON_Delete(created_json);
  s.tracestate = NULL;
  s.task_id = "untraced-task";
  s.traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"; /* no flags */
  assert_int_equal(sc_task_submit(e, &s, NULL), SC_OK);
  run_bounded(&loop, 5000);
  assert_int_equal(t.n, 4);
  size_t traced_stages = 0;
  for (size_t i = 0; i < 4; i++) {
    assert_int_equal(strlen(t.key[i]), 64);
    assert_int_equal(strspn(t.key[i], "0123456789abcdef"), 64);
    if (t.traceparent[i][0] == '\0') continue;
    traced_stages++;
    /* the task's trace id and flags, a span id of the attempt's own */
    assert_true(sc_traceparent_valid(t.traceparent[i]));
    assert_memory_equal(t.traceparent[i], tp, 36);
    assert_string_equal(t.traceparent[i] + 52, "-01");
    assert_memory_not_equal(t.traceparent[i] + 36, tp + 36, 16);
  }
  assert_int_equal(traced_stages, 2);
  /* stage.started records the span: the same as the stage saw */
  size_t spans = 0;
  for (size_t i = 0; i < recorder_count(&r, SC_EV_STAGE_STARTED, NULL); i++) {
    cJSON *root;
    const cJSON *data = event_data(&r, SC_EV_STAGE_STARTED, i, &root);
    const cJSON *span_item = cJSON_GetObjectItemCaseSensitive(data, "span_id");
    const char *span = cJSON_IsString(span_item) ? span_item->valuestring : NULL;
    const char *task = cJSON_GetObjectItemCaseSensitive(root, "taskid")->valuestring;
    if (strcmp(task, "untraced-task") == 0) assert_null(span);
    if (span != NULL) {
      bool seen = false;
      for (size_t k = 0; k < 4; k++)
        seen = seen || (t.traceparent[k][0] && memcmp(t.traceparent[k] + 36, span, 16) == 0);
      assert_true(seen);
      spans++;
    }
    cJSON_Delete(root);
  }
  assert_int_equal(spans, 2);
  /* keys differ between the stages of a task and between tasks */
  for (size_t i = 0; i < 4; i++)
    for (size_t k = i + 1; k < 4; k++)
      assert_string_not_equal(t.key[i], t.key[k]);
  cJSON_Delete(config);
  stop_engine(e, &r, &loop);
}

static void traceparent_validation_follows_w3c_version_00(void **state) {
  (void)state;
  assert_true(sc_traceparent_valid("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
  assert_true(sc_traceparent_valid("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"));
  static const char *const bad[] = {
      NULL,
      "",
      "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  /* another version */
      "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  /* zero trace id */
      "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  /* zero span id */
      "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  /* upper case */
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-", /* too long */
      "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",  /* misplaced dash */
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    if (sc_traceparent_valid(bad[i])) fail_msg("accepted <%s>", bad[i] ? bad[i] : "NULL");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(each_stage_gets_a_span_of_the_tasks_trace_and_a_key_of_its_own),
      cmocka_unit_test(traceparent_validation_follows_w3c_version_00),
      cmocka_unit_test(sync_fn_stages_run_in_order_with_gapless_seq),
      cmocka_unit_test(hundred_thousand_sync_stages_complete_without_stack_growth),
      cmocka_unit_test(stage_completing_from_a_timer_callback_completes_the_task),
      cmocka_unit_test(sleep_kind_waits_its_milliseconds),
      cmocka_unit_test(sync_failure_inside_start_fails_stage_then_task),
      cmocka_unit_test(values_nested_deeper_than_a_log_can_read_back_are_refused),
      cmocka_unit_test(start_returning_error_without_finishing_fails_stage_with_that_code),
      cmocka_unit_test(retry_backs_off_exponentially_capped_then_succeeds),
      cmocka_unit_test(non_retryable_failure_stops_retries_at_once),
      cmocka_unit_test(exhausted_attempts_fail_task_with_last_error),
      cmocka_unit_test(backoff_is_zero_or_capped_for_extreme_policies),
      cmocka_unit_test(timeout_fails_stage_cancels_kind_and_ignores_late_result),
      cmocka_unit_test(each_retry_attempt_times_out_separately),
      cmocka_unit_test(outputs_merge_shallowly_into_context_with_matching_digest),
      cmocka_unit_test(null_output_keeps_context_and_digest),
      cmocka_unit_test(non_object_output_fails_stage_with_einval),
      cmocka_unit_test(second_completion_inside_start_is_refused_and_logged),
      cmocka_unit_test(second_completion_in_same_timer_callback_is_refused_and_logged),
      cmocka_unit_test(stage_accessors_describe_the_running_stage),
      cmocka_unit_test(initial_context_comes_from_task_spec_and_is_copied),
      cmocka_unit_test(duplicate_live_task_id_is_busy_and_emits_nothing),
      cmocka_unit_test(missing_task_id_is_generated_as_uuid_v7),
      cmocka_unit_test(same_tenant_tasks_run_one_after_another_in_submission_order),
      cmocka_unit_test(different_tenant_tasks_interleave),
      cmocka_unit_test(max_active_tasks_one_serializes_different_tenants),
      cmocka_unit_test(engine_free_during_sleep_stage_closes_loop_cleanly),
      cmocka_unit_test(engine_with_own_loop_runs_tasks),
      cmocka_unit_test(outputs_that_a_log_could_not_read_back_fail_the_stage_with_their_path),
      cmocka_unit_test(configs_and_contexts_that_a_log_could_not_read_back_are_refused),
      cmocka_unit_test(negative_zero_is_a_value_of_its_own),
      cmocka_unit_test(post_from_another_thread_runs_on_loop_thread),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
