/* Operator control: pause, resume, cancel, approvals, retry, rollback and release, per state. */
#include <stdbool.h>
#include <stdint.h>

#include "harness.h"

/* ---- pipelines ---- */

#define STAGE_FN(name, fn) "{\"name\":\"" name "\",\"kind\":\"fn\",\"params\":{\"fn\":\"" fn "\"}}"
#define STEP(name)         STAGE_FN(name, "step")
#define HOLD(name)         "{\"name\":\"" name "\",\"kind\":\"hold\"}"
#define COMP(name)         "{\"name\":\"" name "\",\"kind\":\"comp\",\"effect\":\"compensable\"}"
#define GATED(name, approval)                                                                      \
  "{\"name\":\"" name "\",\"kind\":\"fn\",\"params\":{\"fn\":\"step\"},\"approval\":" approval "}"
#define CONFIG(...) "{\"version\":\"2\",\"stages\":[" __VA_ARGS__ "]}"

/* ---- a probe: which stages ran, the stage held open, compensations ---- */

#define MAX_RUNS 64

typedef struct probe {
  size_t n;
  char name[MAX_RUNS][16];
  char version[MAX_RUNS][16];  /* config.version as the stage saw it */
  char context[MAX_RUNS][256]; /* canonical context when the stage started */
  bool rollback[MAX_RUNS];
  unsigned retry_count[MAX_RUNS];
  sc_stage_ctx *held; /* the "hold" stage in flight */
  int hold_cancels;
  int flaky_failures; /* "flaky" fails this many times, then completes */
  char compensated[256];
  int compensation_failures; /* "comp" compensations of comp_fail_stage that fail */
  const char *comp_fail_stage;
} probe;

static void probe_record(probe *p, sc_stage_ctx *ctx) {
  if (p->n == MAX_RUNS) fail_msg("more than %d stage runs", MAX_RUNS);
  size_t i = p->n++;
  snprintf(p->name[i], sizeof(p->name[i]), "%s", sc_stage_name(ctx));
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(sc_stage_config(ctx), "version");
  snprintf(p->version[i], sizeof(p->version[i]), "%s", cJSON_IsString(v) ? v->valuestring : "?");
  char *c = sc_json_canonical(sc_stage_context(ctx), NULL);
  snprintf(p->context[i], sizeof(p->context[i]), "%s", c ? c : "?");
  free(c);
  p->rollback[i] = sc_stage_is_rollback(ctx);
  p->retry_count[i] = sc_task_retry_count(sc_stage_task(ctx));
}

static size_t runs_of(const probe *p, const char *name) {
  size_t c = 0;
  for (size_t i = 0; i < p->n; i++)
    if (strcmp(p->name[i], name) == 0) c++;
  return c;
}

/* "s0,s1": the stages in the order they ran. Static buffer. */
static const char *run_order(const probe *p) {
  static char buf[MAX_RUNS * 17];
  size_t off = 0;
  buf[0] = '\0';
  for (size_t i = 0; i < p->n; i++)
    off += (size_t)snprintf(buf + off, sizeof(buf) - off, "%s%s", i ? "," : "", p->name[i]);
  return buf;
}

/* Completes with {"<stage name>": <index>}. */
static int step_fn(sc_stage_ctx *ctx, void *udata) {
  probe_record(udata, ctx);
  cJSON *out = cJSON_CreateObject();
  cJSON_AddNumberToObject(out, sc_stage_name(ctx), sc_stage_index(ctx));
  sc_stage_complete(ctx, out);
  return SC_OK;
}

static int fail_fn(sc_stage_ctx *ctx, void *udata) {
  probe_record(udata, ctx);
  sc_stage_fail(ctx, SC_EIO, "boom", false);
  return SC_OK;
}

static int flaky_fn(sc_stage_ctx *ctx, void *udata) {
  probe *p = udata;
  probe_record(p, ctx);
  if (p->flaky_failures > 0) {
    p->flaky_failures--;
    sc_stage_fail(ctx, SC_EIO, "flaky", false);
  } else {
    sc_stage_complete(ctx, NULL);
  }
  return SC_OK;
}

static int retryable_fn(sc_stage_ctx *ctx, void *udata) {
  probe_record(udata, ctx);
  sc_stage_fail(ctx, SC_EIO, "try again", true);
  return SC_OK;
}

/* "hold": a stage that finishes when the test says so (release_held). */
static int hold_start(sc_stage_ctx *ctx, void *udata) {
  probe *p = udata;
  probe_record(p, ctx);
  p->held = ctx;
  return SC_OK;
}

static void hold_cancel(sc_stage_ctx *ctx, void *udata) {
  probe *p = udata;
  p->hold_cancels++;
  if (p->held == ctx) p->held = NULL;
  sc_stage_fail(ctx, SC_ECANCELLED, "held stage cancelled", false); /* a stage still finishes */
}

static void release_held(probe *p) {
  sc_stage_ctx *ctx = p->held;
  assert_non_null(ctx);
  p->held = NULL;
  sc_stage_complete(ctx, NULL);
}

/* "comp": a compensable stage kind; compensation appends the stage name to p->compensated. */
static int comp_start(sc_stage_ctx *ctx, void *udata) {
  probe_record(udata, ctx);
  sc_stage_complete(ctx, NULL);
  return SC_OK;
}

static int comp_compensate(sc_stage_ctx *ctx, void *udata) {
  probe *p = udata;
  size_t off = strlen(p->compensated);
  snprintf(p->compensated + off, sizeof(p->compensated) - off, "%s%s", off ? "," : "",
           sc_stage_name(ctx));
  assert_true(sc_stage_is_compensation(ctx));
  if (p->compensation_failures > 0 && p->comp_fail_stage &&
      strcmp(p->comp_fail_stage, sc_stage_name(ctx)) == 0) {
    p->compensation_failures--;
    sc_stage_fail(ctx, SC_EIO, "cannot undo", false);
  } else {
    sc_stage_complete(ctx, NULL);
  }
  return SC_OK;
}

/* ---- helpers ---- */

/* Initializes loop and starts an engine on it (harness.h) with the test kinds and the recorder
 * attached; stop_engine() undoes it and checks that nothing was left on the loop. */
static sc_engine *start_probed(uv_loop_t *loop, recorder *rec, probe *p) {
  assert_int_equal(uv_loop_init(loop), 0);
  sc_engine *e = start_engine(loop, NULL, NULL);
  memset(p, 0, sizeof(*p));
  assert_int_equal(sc_engine_register_fn(e, "step", step_fn, p), SC_OK);
  assert_int_equal(sc_engine_register_fn(e, "fail", fail_fn, p), SC_OK);
  assert_int_equal(sc_engine_register_fn(e, "flaky", flaky_fn, p), SC_OK);
  assert_int_equal(sc_engine_register_fn(e, "retryable", retryable_fn, p), SC_OK);
  static const sc_stage_kind hold = {SC_STAGE_KIND_VERSION, hold_start, hold_cancel, NULL};
  static const sc_stage_kind comp = {SC_STAGE_KIND_VERSION, comp_start, NULL, comp_compensate};
  assert_int_equal(sc_engine_register_kind(e, "hold", &hold, p), SC_OK);
  assert_int_equal(sc_engine_register_kind(e, "comp", &comp, p), SC_OK);
  recorder_attach(rec, e);
  return e;
}

/* Submits a task of config (JSON text) with NULL tenant; previous may be NULL. */
static sc_task *submit(sc_engine *e, const char *id, const char *tenant, const char *config,
                       const char *previous) {
  return submit_text(e, id, tenant, "ops", config, previous);
}

/* data.<key> of the nth event of a type, as a string. Static buffer. */
static const char *event_str(const recorder *r, sc_event_type type, size_t nth, const char *key) {
  static char buf[512];
  cJSON *j = event_json(r, type, nth);
  snprintf(buf, sizeof(buf), "%s", str_of(data_of(j), key));
  cJSON_Delete(j);
  return buf;
}

/* ---- pause and resume ---- */

static void pause_running_task_stops_at_next_stage_boundary(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  sc_task *t = submit(e, "t1", NULL, CONFIG(HOLD("h0") "," STEP("s1")), NULL);
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(t), SC_TASK_RUNNING);

  assert_int_equal(sc_task_pause(t), SC_OK);
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(t), SC_TASK_RUNNING); /* h0 is still running */
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_PAUSED, NULL), 0);
  release_held(&p);
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(t), SC_TASK_PAUSED);
  assert_int_equal(runs_of(&p, "s1"), 0);
  assert_string_equal(event_str(&rec, SC_EV_TASK_PAUSED, 0, "paused_from"), "RUNNING");
  assert_string_equal(event_str(&rec, SC_EV_TASK_PAUSED, 0, "reason"), "requested");

  assert_int_equal(sc_task_resume(t), SC_OK);
  settle_loop(&loop);
  assert_string_equal(run_order(&p), "h0,s1");
  assert_string_equal(recorder_types(&rec, NULL),
                      "task.created,task.started,stage.started,stage.completed,task.paused,"
                      "task.resumed,stage.started,stage.completed,task.completed");

  stop_engine(e, &rec, &loop);
}

static void resume_before_the_boundary_withdraws_the_pause(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  sc_task *t = submit(e, "t1", NULL, CONFIG(HOLD("h0") "," STEP("s1")), NULL);
  settle_loop(&loop);
  assert_int_equal(sc_task_pause(t), SC_OK);
  assert_int_equal(sc_task_resume(t), SC_OK);
  release_held(&p);
  settle_loop(&loop);
  assert_string_equal(run_order(&p), "h0,s1");
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_PAUSED, NULL), 0);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, "t1"), 1);

  stop_engine(e, &rec, &loop);
}

static void pause_awaiting_approval_then_resume_asks_for_approval_again(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  sc_task *t = submit(e, "t1", NULL, CONFIG(GATED("deploy", "{\"required\":true}")), NULL);
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(t), SC_TASK_AWAITING_APPROVAL);

  assert_int_equal(sc_task_pause(t), SC_OK);
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(t), SC_TASK_PAUSED);
  assert_string_equal(event_str(&rec, SC_EV_TASK_PAUSED, 0, "paused_from"), "AWAITING_APPROVAL");
  assert_int_equal(sc_task_approve(t, "deploy", "alice", NULL), SC_ETRANSITION);
  assert_error_has("PAUSED");

  assert_int_equal(sc_task_resume(t), SC_OK);
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(t), SC_TASK_AWAITING_APPROVAL);
  assert_int_equal(recorder_count(&rec, SC_EV_APPROVAL_REQUESTED, "t1"), 2);
  assert_int_equal(p.n, 0);
  assert_int_equal(sc_task_approve(t, "deploy", "alice", NULL), SC_OK);
  settle_loop(&loop);
  assert_string_equal(run_order(&p), "deploy");
  assert_string_equal(recorder_types(&rec, NULL),
                      "task.created,task.started,approval.requested,task.paused,task.resumed,"
                      "approval.requested,approval.granted,stage.started,stage.completed,"
                      "task.completed");

  stop_engine(e, &rec, &loop);
}

static void pause_is_refused_outside_running_and_awaiting_approval(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  sc_task *created = submit(e, "t1", NULL, CONFIG(STEP("s0")), NULL);
  assert_int_equal(sc_task_pause(created), SC_ETRANSITION);
  assert_error_has("CREATED");
  sc_task *failed = submit(e, "t2", NULL, CONFIG(STAGE_FN("f0", "fail")), NULL);
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(failed), SC_TASK_FAILED);
  assert_int_equal(sc_task_pause(failed), SC_ETRANSITION);
  assert_error_has("FAILED");
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_PAUSED, NULL), 0);

  stop_engine(e, &rec, &loop);
}

static void resume_is_refused_unless_paused(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  sc_task *t = submit(e, "t1", NULL, CONFIG(HOLD("h0")), NULL);
  settle_loop(&loop);
  assert_int_equal(sc_task_resume(t), SC_ETRANSITION);
  assert_error_has("RUNNING");
  release_held(&p);
  settle_loop(&loop);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_RESUMED, NULL), 0);

  stop_engine(e, &rec, &loop);
}

/* ---- cancel ---- */

static void cancel_right_after_submit_runs_nothing(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  sc_task *t = submit(e, "t1", NULL, CONFIG(STEP("s0")), NULL);
  assert_int_equal(sc_task_get_status(t), SC_TASK_CREATED);
  assert_int_equal(sc_task_cancel(t, "changed my mind"), SC_OK);
  settle_loop(&loop);
  assert_int_equal(p.n, 0);
  assert_string_equal(recorder_types(&rec, NULL), "task.created,task.cancelled");
  assert_string_equal(event_str(&rec, SC_EV_TASK_CANCELLED, 0, "reason"), "changed my mind");
  assert_string_equal(event_str(&rec, SC_EV_TASK_CANCELLED, 0, "status"), "CANCELLED");
  assert_null(sc_engine_find_task(e, "t1"));

  stop_engine(e, &rec, &loop);
}

static void cancel_pending_task_waiting_for_tenant_lock(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  sc_task *a = submit(e, "a", "acme", CONFIG(HOLD("h0")), NULL);
  sc_task *b = submit(e, "b", "acme", CONFIG(STEP("s0")), NULL);
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(a), SC_TASK_RUNNING);
  assert_int_equal(sc_task_get_status(b), SC_TASK_PENDING);

  assert_int_equal(sc_task_cancel(b, NULL), SC_OK);
  settle_loop(&loop);
  assert_string_equal(recorder_types(&rec, "b"), "task.created,task.cancelled");
  assert_null(sc_engine_find_task(e, "b"));
  release_held(&p);
  settle_loop(&loop);
  assert_string_equal(run_order(&p), "h0");
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, "a"), 1);

  stop_engine(e, &rec, &loop);
}

static void pending_task_starts_when_the_tenant_lock_is_released(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  submit(e, "a", "acme", CONFIG(HOLD("h0")), NULL);
  sc_task *b = submit(e, "b", "acme", CONFIG(STEP("s0")), NULL);
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(b), SC_TASK_PENDING);
  release_held(&p);
  settle_loop(&loop);
  assert_string_equal(run_order(&p), "h0,s0");
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, "b"), 1);

  stop_engine(e, &rec, &loop);
}

static void cancel_running_task_cancels_the_stage_and_runs_nothing_more(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  sc_task *t = submit(e, "t1", NULL, CONFIG(HOLD("h0") "," STEP("s1")), NULL);
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(t), SC_TASK_RUNNING);
  assert_int_equal(sc_task_cancel(t, "stop"), SC_OK);
  settle_loop(&loop);
  assert_int_equal(p.hold_cancels, 1);
  assert_string_equal(run_order(&p), "h0");
  assert_string_equal(recorder_types(&rec, NULL),
                      "task.created,task.started,stage.started,task.cancelled");
  assert_null(sc_engine_find_task(e, "t1"));

  stop_engine(e, &rec, &loop);
}

static void cancel_paused_task(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  sc_task *t = submit(e, "t1", NULL, CONFIG(HOLD("h0") "," STEP("s1")), NULL);
  settle_loop(&loop);
  assert_int_equal(sc_task_pause(t), SC_OK);
  release_held(&p);
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(t), SC_TASK_PAUSED);
  assert_int_equal(sc_task_cancel(t, NULL), SC_OK);
  settle_loop(&loop);
  assert_string_equal(run_order(&p), "h0");
  assert_string_equal(recorder_types(&rec, NULL),
                      "task.created,task.started,stage.started,stage.completed,task.paused,"
                      "task.cancelled");
  assert_null(sc_engine_find_task(e, "t1"));

  stop_engine(e, &rec, &loop);
}

static void pause_then_cancel_before_the_boundary_cancels(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  sc_task *t = submit(e, "t1", NULL, CONFIG(HOLD("h0") "," STEP("s1")), NULL);
  settle_loop(&loop);
  assert_int_equal(sc_task_pause(t), SC_OK);
  assert_int_equal(sc_task_cancel(t, NULL), SC_OK);
  settle_loop(&loop);
  assert_int_equal(p.hold_cancels, 1);
  assert_string_equal(run_order(&p), "h0");
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_CANCELLED, "t1"), 1);
  assert_int_equal(recorder_count(&rec, SC_EV_STAGE_COMPLETED, "t1"), 0);
  assert_null(sc_engine_find_task(e, "t1"));

  stop_engine(e, &rec, &loop);
}

static void cancel_awaiting_approval_task(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  sc_task *t = submit(e, "t1", NULL, CONFIG(GATED("deploy", "{\"required\":true}")), NULL);
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(t), SC_TASK_AWAITING_APPROVAL);
  assert_int_equal(sc_task_cancel(t, "no"), SC_OK);
  settle_loop(&loop);
  assert_int_equal(p.n, 0);
  assert_string_equal(recorder_types(&rec, NULL),
                      "task.created,task.started,approval.requested,task.cancelled");
  assert_null(sc_engine_find_task(e, "t1"));

  stop_engine(e, &rec, &loop);
}

static void cancel_is_refused_on_failed_task_naming_its_status(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  sc_task *t = submit(e, "t1", NULL, CONFIG(STAGE_FN("f0", "fail")), NULL);
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(t), SC_TASK_FAILED);
  assert_int_equal(sc_task_cancel(t, NULL), SC_ETRANSITION);
  assert_error_has("FAILED");
  settle_loop(&loop);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_CANCELLED, NULL), 0);
  assert_int_equal(sc_task_get_status(t), SC_TASK_FAILED);

  stop_engine(e, &rec, &loop);
}

/* ---- approval gates ---- */

static void approval_required_asks_before_the_stage_with_its_policy(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  sc_task *t =
      submit(e, "t1", NULL,
             CONFIG(STEP("s0") "," GATED("deploy", "{\"required\":true,\"approvers_needed\":1,"
                                                   "\"timeout_ms\":600000,\"on_timeout\":\"fail\","
                                                   "\"on_reject\":\"fail\"}")),
             NULL);
  run_until_status(&loop, t, SC_TASK_AWAITING_APPROVAL);
  assert_string_equal(run_order(&p), "s0");
  cJSON *asked = event_json(&rec, SC_EV_APPROVAL_REQUESTED, 0);
  const cJSON *d = data_of(asked);
  assert_string_equal(str_of(d, "stage"), "deploy");
  assert_string_equal(str_of(d, "reason"), "policy");
  assert_int_equal(num_of(d, "approvers_needed"), 1);
  assert_int_equal(num_of(d, "timeout_ms"), 600000);
  assert_non_null(strchr(str_of(d, "deadline"), 'T'));
  assert_string_equal(str_of(d, "on_timeout"), "fail");
  assert_string_equal(str_of(d, "on_reject"), "fail");
  assert_string_equal(str_of(d, "status"), "AWAITING_APPROVAL");

  assert_int_equal(sc_task_approve(t, "deploy", "alice", "ship it"), SC_OK);
  settle_loop(&loop); /* the approval timer is stopped, or this would wait ten minutes */
  assert_string_equal(run_order(&p), "s0,deploy");
  cJSON *granted = event_json(&rec, SC_EV_APPROVAL_GRANTED, 0);
  assert_string_equal(str_of(data_of(granted), "reviewer"), "alice");
  assert_string_equal(str_of(data_of(granted), "comment"), "ship it");
  assert_string_equal(recorder_types(&rec, NULL),
                      "task.created,task.started,stage.started,stage.completed,"
                      "approval.requested,approval.granted,stage.started,stage.completed,"
                      "task.completed");

  cJSON_Delete(granted);
  cJSON_Delete(asked);
  stop_engine(e, &rec, &loop);
}

static void approval_without_timeout_has_no_deadline_and_defaults(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  sc_task *t = submit(e, "t1", NULL, CONFIG(GATED("deploy", "{\"required\":true}")), NULL);
  settle_loop(&loop);
  cJSON *asked = event_json(&rec, SC_EV_APPROVAL_REQUESTED, 0);
  const cJSON *d = data_of(asked);
  assert_int_equal(num_of(d, "timeout_ms"), 0);
  assert_null(member(d, "deadline"));
  assert_int_equal(num_of(d, "approvers_needed"), 1);
  assert_string_equal(str_of(d, "on_timeout"), "reject");
  assert_string_equal(str_of(d, "on_reject"), "cancel");
  assert_int_equal(sc_task_approve(t, NULL, "alice", NULL), SC_OK);
  settle_loop(&loop);
  assert_string_equal(run_order(&p), "deploy");

  cJSON_Delete(asked);
  stop_engine(e, &rec, &loop);
}

static void approval_needs_distinct_reviewers_up_to_approvers_needed(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  sc_task *t = submit(e, "t1", NULL,
                      CONFIG(GATED("deploy", "{\"required\":true,\"approvers_needed\":2}")), NULL);
  settle_loop(&loop);
  assert_int_equal(sc_task_approve(t, "deploy", "alice", NULL), SC_OK);
  assert_int_equal(sc_task_approve(t, "deploy", "alice", NULL), SC_EINVAL); /* not yet applied */
  assert_error_has("alice");
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(t), SC_TASK_AWAITING_APPROVAL);
  assert_int_equal(p.n, 0);
  cJSON *first = event_json(&rec, SC_EV_APPROVAL_GRANTED, 0);
  assert_int_equal(num_of(data_of(first), "approvals"), 1);
  assert_int_equal(num_of(data_of(first), "approvers_needed"), 2);
  assert_int_equal(sc_task_approve(t, "deploy", "alice", NULL), SC_EINVAL); /* applied */
  assert_error_has("alice");
  assert_int_equal(sc_task_approve(t, "deploy", "bob", NULL), SC_OK);
  settle_loop(&loop);
  assert_string_equal(run_order(&p), "deploy");
  assert_int_equal(recorder_count(&rec, SC_EV_APPROVAL_GRANTED, "t1"), 2);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, "t1"), 1);

  cJSON_Delete(first);
  stop_engine(e, &rec, &loop);
}

static void reject_cancels_the_task_by_default(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  sc_task *t = submit(e, "t1", NULL, CONFIG(GATED("deploy", "{\"required\":true}")), NULL);
  settle_loop(&loop);
  assert_int_equal(sc_task_reject(t, "deploy", "bob", "not today"), SC_OK);
  settle_loop(&loop);
  assert_int_equal(p.n, 0);
  assert_string_equal(recorder_types(&rec, NULL),
                      "task.created,task.started,approval.requested,approval.rejected,"
                      "task.cancelled");
  assert_string_equal(event_str(&rec, SC_EV_APPROVAL_REJECTED, 0, "reviewer"), "bob");
  assert_non_null(strstr(event_str(&rec, SC_EV_TASK_CANCELLED, 0, "reason"), "bob"));
  assert_null(sc_engine_find_task(e, "t1"));

  stop_engine(e, &rec, &loop);
}

static void reject_fails_the_task_when_on_reject_is_fail(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  sc_task *t = submit(e, "t1", NULL,
                      CONFIG(GATED("deploy", "{\"required\":true,\"on_reject\":\"fail\"}")), NULL);
  settle_loop(&loop);
  assert_int_equal(sc_task_reject(t, NULL, "bob", NULL), SC_OK);
  settle_loop(&loop);
  assert_int_equal(p.n, 0);
  assert_int_equal(sc_task_get_status(t), SC_TASK_FAILED);
  assert_string_equal(recorder_types(&rec, NULL),
                      "task.created,task.started,approval.requested,approval.rejected,task.failed");

  stop_engine(e, &rec, &loop);
}

static void approve_is_refused_for_another_stage(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  sc_task *t =
      submit(e, "t1", NULL, CONFIG(STEP("s0") "," GATED("deploy", "{\"required\":true}")), NULL);
  settle_loop(&loop);
  assert_int_equal(sc_task_approve(t, "s0", "alice", NULL), SC_ETRANSITION);
  assert_error_has("'deploy'");
  assert_int_equal(sc_task_reject(t, "verify", "alice", NULL), SC_ETRANSITION);
  assert_error_has("'deploy'");
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(t), SC_TASK_AWAITING_APPROVAL);
  assert_int_equal(recorder_count(&rec, SC_EV_APPROVAL_GRANTED, NULL), 0);
  assert_int_equal(recorder_count(&rec, SC_EV_APPROVAL_REJECTED, NULL), 0);

  stop_engine(e, &rec, &loop);
}

static void approve_is_refused_when_no_approval_is_pending(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  sc_task *t = submit(e, "t1", NULL, CONFIG(HOLD("h0")), NULL);
  assert_int_equal(sc_task_approve(t, NULL, "alice", NULL), SC_ETRANSITION);
  assert_error_has("CREATED");
  settle_loop(&loop);
  assert_int_equal(sc_task_approve(t, "h0", "alice", NULL), SC_ETRANSITION);
  assert_error_has("RUNNING");
  assert_int_equal(sc_task_reject(t, NULL, "alice", NULL), SC_ETRANSITION);
  assert_error_has("RUNNING");
  release_held(&p);
  settle_loop(&loop);
  assert_int_equal(recorder_count(&rec, SC_EV_APPROVAL_GRANTED, NULL), 0);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, "t1"), 1);

  stop_engine(e, &rec, &loop);
}

static void approval_timeout_with_approve_runs_the_stage(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  submit(
      e, "t1", NULL,
      CONFIG(GATED("deploy", "{\"required\":true,\"timeout_ms\":30,\"on_timeout\":\"approve\"}")),
      NULL);
  settle_loop(&loop); /* the approval timer keeps the loop running until it fires */
  assert_string_equal(run_order(&p), "deploy");
  assert_string_equal(recorder_types(&rec, NULL),
                      "task.created,task.started,approval.requested,approval.timed_out,"
                      "stage.started,stage.completed,task.completed");
  assert_string_equal(event_str(&rec, SC_EV_APPROVAL_TIMED_OUT, 0, "action"), "approve");

  stop_engine(e, &rec, &loop);
}

static void approval_timeout_with_reject_cancels_the_task(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  submit(e, "t1", NULL,
         CONFIG(GATED("deploy", "{\"required\":true,\"timeout_ms\":30,\"on_timeout\":\"reject\"}")),
         NULL);
  settle_loop(&loop);
  assert_int_equal(p.n, 0);
  assert_string_equal(recorder_types(&rec, NULL),
                      "task.created,task.started,approval.requested,approval.timed_out,"
                      "task.cancelled");
  assert_string_equal(event_str(&rec, SC_EV_APPROVAL_TIMED_OUT, 0, "action"), "reject");
  assert_null(sc_engine_find_task(e, "t1"));

  stop_engine(e, &rec, &loop);
}

static void approval_timeout_with_fail_fails_the_task(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  sc_task *t = submit(
      e, "t1", NULL,
      CONFIG(GATED("deploy", "{\"required\":true,\"timeout_ms\":30,\"on_timeout\":\"fail\"}")),
      NULL);
  settle_loop(&loop);
  assert_int_equal(p.n, 0);
  assert_int_equal(sc_task_get_status(t), SC_TASK_FAILED);
  assert_string_equal(recorder_types(&rec, NULL),
                      "task.created,task.started,approval.requested,approval.timed_out,"
                      "task.failed");

  stop_engine(e, &rec, &loop);
}

static void approve_after_the_timeout_decided_is_refused(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  sc_task *failed = submit(
      e, "t1", NULL,
      CONFIG(GATED("deploy", "{\"required\":true,\"timeout_ms\":30,\"on_timeout\":\"fail\"}")),
      NULL);
  sc_task *approved =
      submit(e, "t2", NULL,
             CONFIG(GATED("deploy", "{\"required\":true,\"timeout_ms\":30,\"on_timeout\":"
                                    "\"approve\"}") "," HOLD("h1")),
             NULL);
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(failed), SC_TASK_FAILED);
  assert_int_equal(sc_task_approve(failed, "deploy", "alice", NULL), SC_ETRANSITION);
  assert_error_has("FAILED");
  assert_int_equal(sc_task_get_status(approved), SC_TASK_RUNNING);
  assert_int_equal(sc_task_approve(approved, "deploy", "alice", NULL), SC_ETRANSITION);
  assert_error_has("RUNNING");
  release_held(&p);
  settle_loop(&loop);
  assert_int_equal(recorder_count(&rec, SC_EV_APPROVAL_GRANTED, NULL), 0);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, "t2"), 1);

  stop_engine(e, &rec, &loop);
}

/* ---- retry ---- */

#define RETRY_PIPELINE CONFIG(STEP("s0") "," STAGE_FN("s1", "flaky") "," STEP("s2"))

static void retry_failed_task_reruns_from_the_failed_stage(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  p.flaky_failures = 1;
  sc_task *t = submit(e, "t1", NULL, RETRY_PIPELINE, NULL);
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(t), SC_TASK_FAILED);
  assert_int_equal(sc_task_retry_count(t), 0);

  assert_int_equal(sc_task_retry(t, NULL, false), SC_OK);
  settle_loop(&loop);
  assert_string_equal(run_order(&p), "s0,s1,s1,s2");
  assert_int_equal(p.retry_count[2], 1);
  assert_string_equal(p.context[2], "{\"s0\":0}"); /* the context is kept */
  cJSON *restarted = event_json(&rec, SC_EV_TASK_STARTED, 1);
  const cJSON *d = data_of(restarted);
  assert_true(cJSON_IsTrue(member(d, "retry")));
  assert_int_equal(num_of(d, "retry_count"), 1);
  assert_string_equal(str_of(d, "from_stage"), "s1");
  assert_string_equal(str_of(d, "status"), "RUNNING");
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, "t1"), 1);

  cJSON_Delete(restarted);
  stop_engine(e, &rec, &loop);
}

static void retry_from_an_earlier_named_stage(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  p.flaky_failures = 1;
  sc_task *t = submit(e, "t1", NULL, RETRY_PIPELINE, NULL);
  settle_loop(&loop);
  assert_int_equal(sc_task_retry(t, "s0", false), SC_OK);
  settle_loop(&loop);
  assert_string_equal(run_order(&p), "s0,s1,s0,s1,s2");
  assert_string_equal(event_str(&rec, SC_EV_TASK_STARTED, 1, "from_stage"), "s0");

  stop_engine(e, &rec, &loop);
}

static void retry_refuses_a_later_or_unknown_stage(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  p.flaky_failures = 1;
  sc_task *t = submit(e, "t1", NULL, RETRY_PIPELINE, NULL);
  settle_loop(&loop);
  assert_int_equal(sc_task_retry(t, "s2", false), SC_EINVAL);
  assert_error_has("s2");
  assert_int_equal(sc_task_retry(t, "s9", false), SC_EUNKNOWN_STAGE);
  assert_error_has("stages: s0, s1, s2");
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(t), SC_TASK_FAILED);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_STARTED, "t1"), 1);

  stop_engine(e, &rec, &loop);
}

static void retry_with_reset_context_starts_from_an_empty_context(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  p.flaky_failures = 1;
  sc_task *t = submit(e, "t1", NULL, RETRY_PIPELINE, NULL);
  settle_loop(&loop);
  assert_string_equal(p.context[1], "{\"s0\":0}");
  assert_int_equal(sc_task_retry(t, NULL, true), SC_OK);
  settle_loop(&loop);
  assert_string_equal(run_order(&p), "s0,s1,s1,s2");
  assert_string_equal(p.context[2], "{}");
  cJSON *restarted = event_json(&rec, SC_EV_TASK_STARTED, 1);
  assert_true(cJSON_IsTrue(member(data_of(restarted), "reset_context")));
  cJSON_Delete(restarted);

  stop_engine(e, &rec, &loop);
}

static void retry_is_refused_unless_failed(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  sc_task *t = submit(e, "t1", NULL, CONFIG(HOLD("h0")), NULL);
  assert_int_equal(sc_task_retry(t, NULL, false), SC_ETRANSITION);
  assert_error_has("CREATED");
  settle_loop(&loop);
  assert_int_equal(sc_task_retry(t, NULL, false), SC_ETRANSITION);
  assert_error_has("RUNNING");
  release_held(&p);
  settle_loop(&loop);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_STARTED, "t1"), 1);

  stop_engine(e, &rec, &loop);
}

/* ---- rollback and release ---- */

static void rollback_redeploy_reruns_up_to_the_failed_stage_with_previous_config(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  sc_task *t = submit(e, "t1", NULL,
                      CONFIG(STEP("s0") "," STEP("s1") "," STAGE_FN("s2", "fail") "," STEP("s3")),
                      "{\"version\":\"1\",\"stages\":[" STEP("s0") "," STEP("s1") "," STEP(
                          "s2") "," STEP("s3") "]}");
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(t), SC_TASK_FAILED);

  assert_int_equal(sc_task_rollback(t, SC_ROLLBACK_REDEPLOY), SC_OK);
  settle_loop(&loop);
  assert_string_equal(run_order(&p), "s0,s1,s2,s0,s1,s2");
  for (size_t i = 0; i < 3; i++) {
    assert_string_equal(p.version[i], "2");
    assert_false(p.rollback[i]);
    assert_string_equal(p.version[3 + i], "1");
    assert_true(p.rollback[3 + i]);
  }
  assert_string_equal(event_str(&rec, SC_EV_STAGE_STARTED, 3, "mode"), "rollback");
  assert_string_equal(event_str(&rec, SC_EV_ROLLBACK_STARTED, 0, "strategy"), "redeploy");
  assert_string_equal(event_str(&rec, SC_EV_ROLLBACK_STARTED, 0, "status"), "ROLLING_BACK");
  assert_string_equal(event_str(&rec, SC_EV_ROLLBACK_COMPLETED, 0, "status"), "ROLLED_BACK");
  assert_int_equal(recorder_count(&rec, SC_EV_ROLLBACK_COMPLETED, "t1"), 1);
  assert_null(sc_engine_find_task(e, "t1"));

  stop_engine(e, &rec, &loop);
}

static void rollback_redeploy_is_refused_without_previous_config(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  sc_task *t = submit(e, "t1", NULL, CONFIG(STEP("s0") "," STAGE_FN("s1", "fail")), NULL);
  settle_loop(&loop);
  assert_int_equal(sc_task_rollback(t, SC_ROLLBACK_REDEPLOY), SC_EINVAL);
  assert_error_has("previous_config");
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(t), SC_TASK_FAILED);
  assert_int_equal(recorder_count(&rec, SC_EV_ROLLBACK_STARTED, NULL), 0);

  stop_engine(e, &rec, &loop);
}

#define COMPENSATE_PIPELINE                                                                        \
  CONFIG(COMP("c0") "," STEP("i1") "," COMP("c2") "," STAGE_FN("f3", "fail"))

static void rollback_compensate_undoes_compensable_stages_in_reverse(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  sc_task *t = submit(e, "t1", NULL, COMPENSATE_PIPELINE, NULL);
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(t), SC_TASK_FAILED);

  assert_int_equal(sc_task_rollback(t, SC_ROLLBACK_COMPENSATE), SC_OK);
  settle_loop(&loop);
  assert_string_equal(p.compensated, "c2,c0");
  assert_string_equal(run_order(&p), "c0,i1,c2,f3"); /* nothing ran forward again */
  assert_int_equal(recorder_count(&rec, SC_EV_STAGE_COMPENSATED, "t1"), 2);
  assert_string_equal(event_str(&rec, SC_EV_STAGE_COMPENSATED, 0, "stage"), "c2");
  assert_string_equal(event_str(&rec, SC_EV_STAGE_COMPENSATED, 1, "stage"), "c0");
  assert_string_equal(event_str(&rec, SC_EV_ROLLBACK_STARTED, 0, "strategy"), "compensate");
  assert_string_equal(event_str(&rec, SC_EV_ROLLBACK_COMPLETED, 0, "status"), "ROLLED_BACK");
  assert_null(sc_engine_find_task(e, "t1"));

  stop_engine(e, &rec, &loop);
}

static void failed_compensation_ends_rollback_failed_and_can_run_again(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  p.comp_fail_stage = "c2";
  p.compensation_failures = 1;
  sc_task *t = submit(e, "t1", NULL, COMPENSATE_PIPELINE, NULL);
  settle_loop(&loop);
  assert_int_equal(sc_task_rollback(t, SC_ROLLBACK_COMPENSATE), SC_OK);
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(t), SC_TASK_ROLLBACK_FAILED);
  assert_string_equal(p.compensated, "c2");
  assert_int_equal(recorder_count(&rec, SC_EV_ROLLBACK_FAILED, "t1"), 1);
  assert_int_equal(recorder_count(&rec, SC_EV_STAGE_COMPENSATED, "t1"), 0);

  assert_int_equal(sc_task_rollback(t, SC_ROLLBACK_COMPENSATE), SC_OK);
  settle_loop(&loop);
  assert_string_equal(p.compensated, "c2,c2,c0");
  assert_int_equal(recorder_count(&rec, SC_EV_ROLLBACK_STARTED, "t1"), 2);
  cJSON *again = event_json(&rec, SC_EV_ROLLBACK_STARTED, 1);
  assert_true(cJSON_IsTrue(member(data_of(again), "again")));
  assert_int_equal(recorder_count(&rec, SC_EV_STAGE_COMPENSATED, "t1"), 2);
  assert_int_equal(recorder_count(&rec, SC_EV_ROLLBACK_COMPLETED, "t1"), 1);
  assert_null(sc_engine_find_task(e, "t1"));

  cJSON_Delete(again);
  stop_engine(e, &rec, &loop);
}

static void rollback_is_refused_unless_failed(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  sc_task *t = submit(e, "t1", NULL, CONFIG(HOLD("h0")), "{\"stages\":[" STEP("h0") "]}");
  settle_loop(&loop);
  assert_int_equal(sc_task_rollback(t, SC_ROLLBACK_REDEPLOY), SC_ETRANSITION);
  assert_error_has("RUNNING");
  assert_int_equal(sc_task_rollback(t, SC_ROLLBACK_COMPENSATE), SC_ETRANSITION);
  release_held(&p);
  settle_loop(&loop);
  assert_int_equal(recorder_count(&rec, SC_EV_ROLLBACK_STARTED, NULL), 0);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, "t1"), 1);

  stop_engine(e, &rec, &loop);
}

static void release_forgets_a_failed_task(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  sc_task *t = submit(e, "t1", NULL, CONFIG(STAGE_FN("f0", "fail")), NULL);
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(t), SC_TASK_FAILED);
  assert_int_equal(sc_engine_task_count(e), 1);
  sc_task_release(t);
  settle_loop(&loop);
  assert_null(sc_engine_find_task(e, "t1"));
  assert_int_equal(sc_engine_task_count(e), 0);

  stop_engine(e, &rec, &loop);
}

/* ---- races with the executor ---- */

static int failed_once(void *udata) {
  return recorder_count(udata, SC_EV_STAGE_FAILED, NULL) >= 1;
}

static void cancel_during_retry_backoff_makes_no_further_attempt(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  sc_task *t = submit(e, "t1", NULL,
                      CONFIG("{\"name\":\"r0\",\"kind\":\"fn\",\"params\":{\"fn\":\"retryable\"},"
                             "\"retry\":{\"max_attempts\":3,\"initial_backoff_ms\":60000}}"),
                      NULL);
  assert_true(run_until(&loop, failed_once, &rec, 100));
  cJSON *failed = event_json(&rec, SC_EV_STAGE_FAILED, 0);
  assert_true(cJSON_IsTrue(member(data_of(failed), "will_retry")));
  assert_int_equal(sc_task_cancel(t, "enough"), SC_OK);
  settle_loop(&loop); /* the backoff timer is stopped, or this would wait a minute */
  assert_string_equal(run_order(&p), "r0");
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_CANCELLED, "t1"), 1);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_FAILED, "t1"), 0);
  assert_null(sc_engine_find_task(e, "t1"));

  cJSON_Delete(failed);
  stop_engine(e, &rec, &loop);
}

static int holds_an_ack(void *udata) {
  return ((recorder *)udata)->nacks > 0;
}

static void cancel_while_a_stage_completed_ack_is_deferred_runs_no_next_stage(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  rec.defer = 1;
  rec.defer_mask = 1ull << SC_EV_STAGE_COMPLETED;
  sc_task *t = submit(e, "t1", NULL, CONFIG(STEP("s0") "," STEP("s1")), NULL);
  assert_true(run_until(&loop, holds_an_ack, &rec, 100));
  assert_int_equal(sc_task_cancel(t, "stop"), SC_OK);
  for (int i = 0; i < 10; i++)
    uv_run(&loop, UV_RUN_NOWAIT);
  assert_string_equal(run_order(&p), "s0"); /* the barrier holds: nothing runs past it */
  assert_int_equal(recorder_ack_all(&rec, SC_OK), 1);
  settle_loop(&loop);
  assert_string_equal(run_order(&p), "s0");
  assert_string_equal(recorder_types(&rec, NULL),
                      "task.created,task.started,stage.started,stage.completed,task.cancelled");
  assert_null(sc_engine_find_task(e, "t1"));

  stop_engine(e, &rec, &loop);
}

/* Requests made while a barrier's ack is outstanding wait for it, then apply: none is lost. */
static void a_retry_asked_while_task_failed_is_stored_applies_after_the_ack(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  rec.defer = 1;
  rec.defer_mask = 1ull << SC_EV_TASK_FAILED;
  p.flaky_failures = 1;
  sc_task *t = submit(e, "t1", "acme", CONFIG(STAGE_FN("f0", "flaky")), NULL);
  assert_true(run_until(&loop, holds_an_ack, &rec, 100));
  assert_int_equal(sc_task_get_status(t), SC_TASK_FAILED);
  assert_int_equal(sc_task_retry(t, NULL, false), SC_OK);
  for (int i = 0; i < 10; i++)
    uv_run(&loop, UV_RUN_NOWAIT);
  assert_int_equal(runs_of(&p, "f0"), 1); /* the barrier holds */
  rec.defer = 0;
  assert_int_equal(recorder_ack_all(&rec, SC_OK), 1);
  settle_loop(&loop);
  assert_int_equal(runs_of(&p, "f0"), 2);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, "t1"), 1);
  /* the tenant is free again: a next task of acme runs */
  submit(e, "t2", "acme", CONFIG(STEP("s0")), NULL);
  settle_loop(&loop);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, "t2"), 1);
  stop_engine(e, &rec, &loop);
}

static void approvals_and_cancels_asked_during_a_barrier_apply_after_it(void **state) {
  (void)state;
  for (int cancel = 0; cancel <= 1; cancel++) {
    uv_loop_t loop;
    recorder rec;
    probe p;
    sc_engine *e = start_probed(&loop, &rec, &p);
    sc_task *t = submit(e, "t1", NULL,
                        CONFIG(GATED("g0", "{\"required\":true,\"approvers_needed\":2}")), NULL);
    settle_loop(&loop);
    rec.defer = 1;
    rec.defer_mask = 1ull << SC_EV_APPROVAL_GRANTED;
    assert_int_equal(sc_task_approve(t, "g0", "alice", NULL), SC_OK);
    assert_true(run_until(&loop, holds_an_ack, &rec, 100)); /* alice's grant is being stored */
    if (cancel)
      assert_int_equal(sc_task_cancel(t, "stop"), SC_OK);
    else
      assert_int_equal(sc_task_approve(t, "g0", "bob", NULL), SC_OK);
    for (int i = 0; i < 10; i++)
      uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(runs_of(&p, "g0"), 0);
    rec.defer = 0;
    assert_int_equal(recorder_ack_all(&rec, SC_OK), 1);
    settle_loop(&loop);
    if (cancel) {
      assert_int_equal(recorder_count(&rec, SC_EV_TASK_CANCELLED, "t1"), 1);
      assert_int_equal(runs_of(&p, "g0"), 0);
    } else {
      assert_int_equal(recorder_count(&rec, SC_EV_APPROVAL_GRANTED, "t1"), 2);
      assert_int_equal(runs_of(&p, "g0"), 1);
      assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, "t1"), 1);
    }
    stop_engine(e, &rec, &loop);
  }
}

/* A rejection is a barrier too: the task is cancelled (or failed) only once it is stored, and a
 * failed ack of it leaves the task where it was, paused, not silently cancelled. */
static void a_rejection_takes_effect_after_its_event_is_stored(void **state) {
  (void)state;
  for (int ack_fails = 0; ack_fails <= 1; ack_fails++) {
    uv_loop_t loop;
    recorder rec;
    probe p;
    sc_engine *e = start_probed(&loop, &rec, &p);
    sc_task *t = submit(e, "t1", NULL, CONFIG(GATED("g0", "{\"required\":true}")), NULL);
    settle_loop(&loop);
    rec.defer = 1;
    rec.defer_mask = 1ull << SC_EV_APPROVAL_REJECTED;
    assert_int_equal(sc_task_reject(t, "g0", "carol", "no"), SC_OK);
    assert_true(run_until(&loop, holds_an_ack, &rec, 100));
    for (int i = 0; i < 10; i++)
      uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(recorder_count(&rec, SC_EV_TASK_CANCELLED, "t1"), 0);
    assert_int_equal(sc_task_get_status(t), SC_TASK_AWAITING_APPROVAL);
    /* decided: no second decision, and no longer listed as pending */
    assert_int_equal(sc_task_approve(t, "g0", "dave", NULL), SC_ETRANSITION);
    assert_error_has("already rejected");
    assert_int_equal(sc_engine_pending_approvals(e, NULL, 0), 0);
    rec.defer = 0;
    assert_int_equal(recorder_ack_all(&rec, ack_fails ? SC_EIO : SC_OK), 1);
    settle_loop(&loop);
    if (ack_fails) {
      assert_int_equal(recorder_count(&rec, SC_EV_TASK_CANCELLED, "t1"), 0);
      assert_int_equal(sc_task_get_status(t), SC_TASK_PAUSED);
      assert_string_equal(event_str(&rec, SC_EV_TASK_PAUSED, 0, "reason"), "ack-failed");
      /* resumed, the decision stands: the task is cancelled, the stage never runs */
      assert_int_equal(sc_task_resume(t), SC_OK);
      settle_loop(&loop);
      assert_int_equal(recorder_count(&rec, SC_EV_TASK_CANCELLED, "t1"), 1);
      assert_int_equal(runs_of(&p, "g0"), 0);
    } else {
      assert_int_equal(recorder_count(&rec, SC_EV_TASK_CANCELLED, "t1"), 1);
      assert_string_equal(recorder_types(&rec, "t1"),
                          "task.created,task.started,approval.requested,approval.rejected,"
                          "task.cancelled");
    }
    stop_engine(e, &rec, &loop);
  }
}

static void stop_loop(uv_timer_t *h) {
  uv_stop(h->loop);
}

/* Runs the loop for ms milliseconds (the timers of the engine fire meanwhile). */
static void run_for_ms(uv_loop_t *loop, uint64_t ms) {
  uv_timer_t t;
  uv_timer_init(loop, &t);
  uv_timer_start(&t, stop_loop, ms, 0);
  uv_run(loop, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
}

/* An approval timeout that fires while an earlier approval is being stored waits for it too. */
static void an_approval_timeout_during_a_barrier_applies_after_it(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  sc_task *t =
      submit(e, "t1", NULL,
             CONFIG(GATED("g0", "{\"required\":true,\"approvers_needed\":2,\"timeout_ms\":50,"
                                "\"on_timeout\":\"reject\"}")),
             NULL);
  run_for_ms(&loop, 5);
  rec.defer = 1;
  rec.defer_mask = 1ull << SC_EV_APPROVAL_GRANTED;
  assert_int_equal(sc_task_approve(t, "g0", "alice", NULL), SC_OK);
  run_for_ms(&loop, 150); /* the timeout is due while alice's grant is held */
  assert_int_equal(recorder_count(&rec, SC_EV_APPROVAL_GRANTED, "t1"), 1);
  assert_int_equal(recorder_count(&rec, SC_EV_APPROVAL_TIMED_OUT, "t1"), 0);
  rec.defer = 0;
  assert_int_equal(recorder_ack_all(&rec, SC_OK), 1);
  settle_loop(&loop);
  assert_string_equal(recorder_types(&rec, "t1"),
                      "task.created,task.started,approval.requested,approval.granted,"
                      "approval.timed_out,task.cancelled");
  assert_int_equal(runs_of(&p, "g0"), 0);
  stop_engine(e, &rec, &loop);
}

/* A pause asked while a stage runs that then fails does not outlive the failure. */
static void a_pause_request_ends_with_a_failure(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  sc_task *t = submit(e, "t1", NULL, CONFIG(HOLD("h0") "," STEP("s1")), NULL);
  settle_loop(&loop);
  assert_int_equal(sc_task_pause(t), SC_OK);
  sc_stage_ctx *held = p.held;
  p.held = NULL;
  sc_stage_fail(held, SC_EIO, "broke", false);
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(t), SC_TASK_FAILED);
  assert_int_equal(sc_task_resume(t), SC_ETRANSITION); /* nothing is paused or about to be */
  assert_int_equal(sc_task_retry(t, NULL, false), SC_OK);
  settle_loop(&loop);
  release_held(&p); /* h0 again, and this time it completes */
  settle_loop(&loop);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_PAUSED, "t1"), 0);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, "t1"), 1);
  stop_engine(e, &rec, &loop);
}

static int cancel_on_stage_started(const sc_event *ev, sc_ack *ack, void *udata) {
  (void)ack;
  if (ev->type == SC_EV_STAGE_STARTED)
    assert_int_equal(sc_task_cancel(sc_engine_find_task(udata, ev->task_id), "from a subscriber"),
                     SC_OK);
  return SC_OK;
}

/* A cancel from a stage.started subscriber: the stage never starts, and its kind is not asked
 * to cancel what it never began. */
static void cancel_inside_stage_started_neither_starts_nor_cancels_the_stage(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, &rec, &p);
  sc_subscriber s;
  sc_subscriber_init(&s);
  s.on_event = cancel_on_stage_started;
  s.udata = e;
  assert_int_equal(sc_engine_subscribe(e, &s, NULL), SC_OK);
  submit(e, "t1", NULL, CONFIG(HOLD("h0")), NULL);
  settle_loop(&loop);
  assert_int_equal(p.n, 0);            /* never started */
  assert_int_equal(p.hold_cancels, 0); /* and never asked to cancel */
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_CANCELLED, "t1"), 1);
  /* the built-in sleep kind the same way (its cancel closes a timer it never opened) */
  submit(e, "t2", NULL,
         "{\"stages\":[{\"name\":\"nap\",\"kind\":\"sleep\",\"params\":{\"ms\":10000}}]}", NULL);
  settle_loop(&loop);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_CANCELLED, "t2"), 1);
  stop_engine(e, &rec, &loop);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(a_retry_asked_while_task_failed_is_stored_applies_after_the_ack),
      cmocka_unit_test(approvals_and_cancels_asked_during_a_barrier_apply_after_it),
      cmocka_unit_test(a_rejection_takes_effect_after_its_event_is_stored),
      cmocka_unit_test(a_pause_request_ends_with_a_failure),
      cmocka_unit_test(an_approval_timeout_during_a_barrier_applies_after_it),
      cmocka_unit_test(cancel_inside_stage_started_neither_starts_nor_cancels_the_stage),
      cmocka_unit_test(pause_running_task_stops_at_next_stage_boundary),
      cmocka_unit_test(resume_before_the_boundary_withdraws_the_pause),
      cmocka_unit_test(pause_awaiting_approval_then_resume_asks_for_approval_again),
      cmocka_unit_test(pause_is_refused_outside_running_and_awaiting_approval),
      cmocka_unit_test(resume_is_refused_unless_paused),
      cmocka_unit_test(cancel_right_after_submit_runs_nothing),
      cmocka_unit_test(cancel_pending_task_waiting_for_tenant_lock),
      cmocka_unit_test(pending_task_starts_when_the_tenant_lock_is_released),
      cmocka_unit_test(cancel_running_task_cancels_the_stage_and_runs_nothing_more),
      cmocka_unit_test(cancel_paused_task),
      cmocka_unit_test(pause_then_cancel_before_the_boundary_cancels),
      cmocka_unit_test(cancel_awaiting_approval_task),
      cmocka_unit_test(cancel_is_refused_on_failed_task_naming_its_status),
      cmocka_unit_test(approval_required_asks_before_the_stage_with_its_policy),
      cmocka_unit_test(approval_without_timeout_has_no_deadline_and_defaults),
      cmocka_unit_test(approval_needs_distinct_reviewers_up_to_approvers_needed),
      cmocka_unit_test(reject_cancels_the_task_by_default),
      cmocka_unit_test(reject_fails_the_task_when_on_reject_is_fail),
      cmocka_unit_test(approve_is_refused_for_another_stage),
      cmocka_unit_test(approve_is_refused_when_no_approval_is_pending),
      cmocka_unit_test(approval_timeout_with_approve_runs_the_stage),
      cmocka_unit_test(approval_timeout_with_reject_cancels_the_task),
      cmocka_unit_test(approval_timeout_with_fail_fails_the_task),
      cmocka_unit_test(approve_after_the_timeout_decided_is_refused),
      cmocka_unit_test(retry_failed_task_reruns_from_the_failed_stage),
      cmocka_unit_test(retry_from_an_earlier_named_stage),
      cmocka_unit_test(retry_refuses_a_later_or_unknown_stage),
      cmocka_unit_test(retry_with_reset_context_starts_from_an_empty_context),
      cmocka_unit_test(retry_is_refused_unless_failed),
      cmocka_unit_test(rollback_redeploy_reruns_up_to_the_failed_stage_with_previous_config),
      cmocka_unit_test(rollback_redeploy_is_refused_without_previous_config),
      cmocka_unit_test(rollback_compensate_undoes_compensable_stages_in_reverse),
      cmocka_unit_test(failed_compensation_ends_rollback_failed_and_can_run_again),
      cmocka_unit_test(rollback_is_refused_unless_failed),
      cmocka_unit_test(release_forgets_a_failed_task),
      cmocka_unit_test(cancel_during_retry_backoff_makes_no_further_attempt),
      cmocka_unit_test(cancel_while_a_stage_completed_ack_is_deferred_runs_no_next_stage),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
