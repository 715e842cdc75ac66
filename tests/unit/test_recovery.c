/* Restart recovery: RETRY and ROLLBACK plans, refusals, epoch fencing, approvals, rate limit. */
#include <stdbool.h>
#include <stdint.h>

#include "harness.h"

/* ---- pipelines ---- */

#define STAGE_FN(name, fn) "{\"name\":\"" name "\",\"kind\":\"fn\",\"params\":{\"fn\":\"" fn "\"}}"
#define STEP(name)         STAGE_FN(name, "step")

static const char *const FOUR_STAGES =
    "{\"version\":\"2\",\"stages\":[" STEP("s0") "," STEP("s1") "," STEP("s2") "," STEP("s3") "]}";
static const char *const PREVIOUS_FOUR_STAGES =
    "{\"version\":\"1\",\"stages\":[" STEP("s0") "," STEP("s1") "," STEP("s2") "," STEP("s3") "]}";
static const char *const PREVIOUS_FAILING_S1 = "{\"version\":\"1\",\"stages\":[" STEP(
    "s0") "," STAGE_FN("s1", "fail") "," STEP("s2") "," STEP("s3") "]}";
static const char *const THREE_STAGES =
    "{\"version\":\"2\",\"stages\":[" STEP("a") "," STEP("b") "," STEP("c") "]}";
static const char *const IRREVERSIBLE_S2 = "{\"version\":\"2\",\"stages\":[" STEP("s0") "," STEP(
    "s1") ",{\"name\":\"s2\",\"kind\":\"fn\",\"params\":{\"fn\":\"step\"},"
          "\"effect\":\"irreversible\"}," STEP("s3") "]}";
static const char *const APPROVAL_S2 = "{\"version\":\"2\",\"stages\":[" STEP("s0") "," STEP(
    "s1") ",{\"name\":\"s2\",\"kind\":\"fn\",\"params\":{\"fn\":\"step\"},"
          "\"approval\":{\"required\":true}}," STEP("s3") "]}";
static const char *const APPROVAL_FIRST =
    "{\"version\":\"9\",\"stages\":[{\"name\":\"gate\",\"kind\":\"fn\",\"params\":{\"fn\":"
    "\"step\"},\"approval\":{\"required\":true}}]}";

/* ---- a probe: which stages ran, and what each saw ---- */

#define MAX_RUNS 64

typedef struct probe {
  size_t n;
  char name[MAX_RUNS][16];
  char version[MAX_RUNS][16];  /* config.version as the stage saw it */
  char context[MAX_RUNS][256]; /* canonical context when the stage started */
  bool rollback[MAX_RUNS];
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
}

/* "s2,s3": the stages in the order they ran. Static buffer. */
static const char *run_order(const probe *p) {
  static char buf[MAX_RUNS * 17];
  size_t off = 0;
  buf[0] = '\0';
  for (size_t i = 0; i < p->n; i++)
    off += (size_t)snprintf(buf + off, sizeof(buf) - off, "%s%s", i ? "," : "", p->name[i]);
  return buf;
}

/* Completes with {"<stage name>": <index>}, so each stage leaves a trace in the context. */
static int step_fn(sc_stage_ctx *ctx, void *udata) {
  probe_record(udata, ctx);
  cJSON *out = cJSON_CreateObject();
  cJSON_AddNumberToObject(out, sc_stage_name(ctx), sc_stage_index(ctx));
  sc_stage_complete(ctx, out);
  return SC_OK;
}

/* "undo": a kind whose compensation records "~name" in the probe. */
static int undo_start(sc_stage_ctx *ctx, void *udata) {
  return step_fn(ctx, udata);
}

static int undo_compensate(sc_stage_ctx *ctx, void *udata) {
  probe *p = udata;
  assert_true(sc_stage_is_compensation(ctx));
  assert_string_equal(sc_stage_mode(ctx), "compensate");
  if (p->n == MAX_RUNS) fail_msg("more than %d stage runs", MAX_RUNS);
  snprintf(p->name[p->n++], sizeof(p->name[0]), "~%s", sc_stage_name(ctx));
  sc_stage_complete(ctx, NULL);
  return SC_OK;
}

static int fail_fn(sc_stage_ctx *ctx, void *udata) {
  probe_record(udata, ctx);
  sc_stage_fail(ctx, SC_EIO, "boom", false);
  return SC_OK;
}

/* ---- helpers ---- */

/* An engine (harness.h) with the probe's kinds. */
static sc_engine *start_probed(uv_loop_t *loop, const sc_engine_options *opts, recorder *rec,
                               probe *p) {
  sc_engine *e = start_engine(loop, opts, NULL);
  memset(p, 0, sizeof(*p));
  assert_int_equal(sc_engine_register_fn(e, "step", step_fn, p), SC_OK);
  assert_int_equal(sc_engine_register_fn(e, "fail", fail_fn, p), SC_OK);
  static const sc_stage_kind undo = {SC_STAGE_KIND_VERSION, undo_start, NULL, undo_compensate};
  assert_int_equal(sc_engine_register_kind(e, "undo", &undo, p), SC_OK);
  if (rec != NULL) recorder_attach(rec, e);
  return e;
}

static void request_for(sc_recovery_request *r, const cJSON *config, const char *last) {
  sc_recovery_request_init(r);
  r->task_id = "t-new";
  r->recovered_from = "t-old";
  r->plan_id = "deploy";
  r->config = config;
  r->last_completed_stage = last;
}

/* An array of strings against "a,b,c" ("" for an empty array). */
static void assert_names(const cJSON *array, const char *expected) {
  char buf[512];
  size_t off = 0;
  buf[0] = '\0';
  assert_true(cJSON_IsArray(array));
  for (const cJSON *c = array->child; c != NULL; c = c->next) {
    assert_true(cJSON_IsString(c));
    off += (size_t)snprintf(buf + off, sizeof(buf) - off, "%s%s", off ? "," : "", c->valuestring);
  }
  assert_string_equal(buf, expected);
}

/* The data.status of every event of a task, joined by commas. Static buffer. */
static const char *status_path(const recorder *r, const char *task_id) {
  static char buf[4096];
  size_t off = 0;
  buf[0] = '\0';
  for (size_t i = 0; i < r->n; i++) {
    if (strcmp(r->task_ids[i], task_id) != 0) continue;
    cJSON *j = json_or_die(r->lines[i]);
    off += (size_t)snprintf(buf + off, sizeof(buf) - off, "%s%s", off ? "," : "",
                            str_of(data_of(j), "status"));
    cJSON_Delete(j);
  }
  return buf;
}

/* A refusal: the same code from recover and from the dry run, a message containing needle, no
 * task, no event, and both out parameters left NULL. */
static void assert_refused(sc_engine *e, const recorder *rec, const sc_recovery_request *req,
                           int code, const char *needle) {
  size_t tasks = sc_engine_task_count(e), events = rec->n;
  sc_task *t = (sc_task *)&t; /* anything but NULL */
  assert_int_equal(sc_recover_from_restart(e, req, &t), code);
  if (needle != NULL && strstr(sc_error_message(), needle) == NULL)
    fail_msg("message \"%s\" lacks \"%s\"", sc_error_message(), needle);
  assert_null(t);
  cJSON *plan = (cJSON *)&plan;
  assert_int_equal(sc_recovery_plan(e, req, &plan), code);
  if (needle != NULL && strstr(sc_error_message(), needle) == NULL)
    fail_msg("dry-run message \"%s\" lacks \"%s\"", sc_error_message(), needle);
  assert_null(plan);
  assert_int_equal(sc_engine_task_count(e), tasks);
  if (req->task_id != NULL) assert_null(sc_engine_find_task(e, req->task_id));
  assert_int_equal(rec->n, events);
}

/* A task of another tenant that waits for approval, so refusals have a count to leave alone. */
static void submit_bystander(sc_engine *e, const cJSON *config) {
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.task_id = "bystander";
  spec.tenant_id = "elsewhere";
  spec.config = config;
  assert_int_equal(sc_task_submit(e, &spec, NULL), SC_OK);
}

/* ---- RETRY ---- */

static void recover_retry_with_nothing_completed_runs_every_stage(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, NULL, &rec, &p);
  cJSON *config = json_or_die(FOUR_STAGES);
  sc_recovery_request req;
  request_for(&req, config, NULL);

  sc_task *t = NULL;
  assert_int_equal(sc_recover_from_restart(e, &req, &t), SC_OK);
  assert_non_null(t);
  assert_string_equal(recorder_types(&rec, NULL), "task.created,task.recovered");
  cJSON *recovered = event_json(&rec, SC_EV_TASK_RECOVERED, 0);
  const cJSON *plan = data_of(recovered);
  assert_string_equal(str_of(plan, "mode"), "retry");
  assert_int_equal(num_of(plan, "start_index"), 0);
  assert_true(cJSON_IsNull(member(plan, "last_completed_stage")));
  assert_names(member(plan, "skipped"), "");
  assert_names(member(plan, "rerun"), "s0,s1,s2,s3");
  assert_string_equal(str_of(member(plan, "in_flight"), "stage"), "s0");

  settle_loop(&loop);
  assert_string_equal(run_order(&p), "s0,s1,s2,s3");
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, "t-new"), 1);
  assert_null(sc_engine_find_task(e, "t-new"));

  cJSON_Delete(recovered);
  cJSON_Delete(config);
  stop_engine(e, &rec, &loop);
}

static void recover_retry_after_stage_1_runs_only_stages_2_and_3(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, NULL, &rec, &p);
  cJSON *config = json_or_die(FOUR_STAGES);
  sc_recovery_request req;
  request_for(&req, config, "s1");

  assert_int_equal(sc_recover_from_restart(e, &req, NULL), SC_OK);
  cJSON *recovered = event_json(&rec, SC_EV_TASK_RECOVERED, 0);
  const cJSON *plan = data_of(recovered);
  assert_string_equal(str_of(plan, "mode"), "retry");
  assert_int_equal(num_of(plan, "start_index"), 2);
  assert_string_equal(str_of(plan, "last_completed_stage"), "s1");
  assert_names(member(plan, "skipped"), "s0,s1");
  assert_names(member(plan, "rerun"), "s2,s3");
  assert_names(member(plan, "compensated"), "");
  const cJSON *in_flight = member(plan, "in_flight");
  assert_string_equal(str_of(in_flight, "stage"), "s2");
  assert_int_equal(num_of(in_flight, "index"), 2);
  assert_string_equal(str_of(in_flight, "effect"), "idempotent");
  assert_false(cJSON_IsTrue(member(plan, "approval_required")));

  settle_loop(&loop);
  assert_string_equal(run_order(&p), "s2,s3");
  assert_string_equal(recorder_types(&rec, NULL),
                      "task.created,task.recovered,task.started,stage.started,stage.completed,"
                      "stage.started,stage.completed,task.completed");
  cJSON *started = event_json(&rec, SC_EV_TASK_STARTED, 0);
  assert_int_equal(num_of(data_of(started), "start_index"), 2);
  cJSON *first_stage = event_json(&rec, SC_EV_STAGE_STARTED, 0);
  assert_string_equal(str_of(data_of(first_stage), "stage"), "s2");
  assert_string_equal(str_of(data_of(first_stage), "mode"), "retry");

  cJSON_Delete(first_stage);
  cJSON_Delete(started);
  cJSON_Delete(recovered);
  cJSON_Delete(config);
  stop_engine(e, &rec, &loop);
}

static void recover_retry_after_final_stage_completes_at_once(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, NULL, &rec, &p);
  cJSON *config = json_or_die(FOUR_STAGES);
  sc_recovery_request req;
  request_for(&req, config, "s3");

  assert_int_equal(sc_recover_from_restart(e, &req, NULL), SC_OK);
  cJSON *recovered = event_json(&rec, SC_EV_TASK_RECOVERED, 0);
  const cJSON *plan = data_of(recovered);
  assert_int_equal(num_of(plan, "start_index"), 4);
  assert_names(member(plan, "skipped"), "s0,s1,s2,s3");
  assert_names(member(plan, "rerun"), "");
  assert_true(cJSON_IsNull(member(plan, "in_flight")));

  settle_loop(&loop);
  assert_int_equal(p.n, 0);
  assert_string_equal(recorder_types(&rec, NULL),
                      "task.created,task.recovered,task.started,task.completed");
  assert_string_equal(status_path(&rec, "t-new"), "CREATED,CREATED,RUNNING,COMPLETED");

  cJSON_Delete(recovered);
  cJSON_Delete(config);
  stop_engine(e, &rec, &loop);
}

static void recovered_task_carries_request_epoch_plus_one_in_every_event(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, NULL, &rec, &p);
  cJSON *config = json_or_die(FOUR_STAGES);
  sc_recovery_request req;
  request_for(&req, config, "s0");
  req.epoch = 7;

  sc_task *t = NULL;
  assert_int_equal(sc_recover_from_restart(e, &req, &t), SC_OK);
  assert_int_equal(sc_task_epoch(t), 8);
  cJSON *recovered = event_json(&rec, SC_EV_TASK_RECOVERED, 0);
  assert_string_equal(str_of(data_of(recovered), "recovered_from"), "t-old");
  assert_int_equal(num_of(data_of(recovered), "epoch"), 8);

  settle_loop(&loop);
  assert_string_equal(run_order(&p), "s1,s2,s3");
  assert_true(rec.n >= 9);
  for (size_t i = 0; i < rec.n; i++) {
    cJSON *j = json_or_die(rec.lines[i]);
    assert_int_equal(num_of(j, "epoch"), 8);
    cJSON_Delete(j);
  }

  cJSON_Delete(recovered);
  cJSON_Delete(config);
  stop_engine(e, &rec, &loop);
}

static void recover_restores_the_context_snapshot_with_a_matching_digest(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, NULL, &rec, &p);
  cJSON *config = json_or_die(FOUR_STAGES);
  cJSON *context = json_or_die("{\"seed\":41,\"s0\":0,\"s1\":1}");
  char digest[72];
  assert_int_equal(sc_json_digest(context, digest), SC_OK);
  sc_recovery_request req;
  request_for(&req, config, "s1");
  req.context = context;
  req.context_digest = digest;

  sc_task *t = NULL;
  assert_int_equal(sc_recover_from_restart(e, &req, &t), SC_OK);
  assert_true(cJSON_Compare(sc_task_context(t), context, true));
  settle_loop(&loop);
  assert_string_equal(run_order(&p), "s2,s3");
  assert_string_equal(p.context[0], "{\"s0\":0,\"s1\":1,\"seed\":41}");
  assert_string_equal(p.context[1], "{\"s0\":0,\"s1\":1,\"s2\":2,\"seed\":41}");

  cJSON *done = event_json(&rec, SC_EV_TASK_COMPLETED, 0);
  cJSON *expected = json_or_die("{\"seed\":41,\"s0\":0,\"s1\":1,\"s2\":2,\"s3\":3}");
  assert_true(cJSON_Compare(member(data_of(done), "context"), expected, true));
  char final_digest[72];
  assert_int_equal(sc_json_digest(expected, final_digest), SC_OK);
  assert_string_equal(str_of(data_of(done), "digest"), final_digest);

  cJSON_Delete(expected);
  cJSON_Delete(done);
  cJSON_Delete(context);
  cJSON_Delete(config);
  stop_engine(e, &rec, &loop);
}

/* A recovered task's task.created is a recovery record of its own: a log that ends right after
 * it recovers to the same point. */
static void a_recovered_task_created_carries_its_recovery_point(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, NULL, &rec, &p);
  cJSON *config = json_or_die(FOUR_STAGES);
  cJSON *previous = json_or_die(PREVIOUS_FOUR_STAGES);
  cJSON *context = json_or_die("{\"seed\":41,\"s0\":0,\"s1\":1}");
  char digest[72];
  assert_int_equal(sc_json_digest(context, digest), SC_OK);
  sc_recovery_request req;
  request_for(&req, config, "s1");
  req.context = context;
  req.context_digest = digest;
  assert_int_equal(sc_recover_from_restart(e, &req, NULL), SC_OK);
  req.task_id = "t-back";
  req.mode = SC_RECOVER_ROLLBACK;
  req.previous_config = previous;
  assert_int_equal(sc_recover_from_restart(e, &req, NULL), SC_OK);
  settle_loop(&loop);

  const char *modes[] = {"retry", "rollback"};
  const int starts[] = {2, 0};
  for (size_t i = 0; i < 2; i++) {
    cJSON *created = event_json(&rec, SC_EV_TASK_CREATED, i);
    const cJSON *data = data_of(created);
    assert_string_equal(str_of(data, "recovered_from"), "t-old");
    const cJSON *point = member(data, "recovery");
    assert_true(cJSON_IsObject(point));
    assert_string_equal(str_of(point, "mode"), modes[i]);
    assert_int_equal(num_of(point, "start_index"), starts[i]);
    assert_string_equal(str_of(point, "last_completed_stage"), "s1");
    assert_true(cJSON_Compare(member(point, "context"), context, true));
    assert_string_equal(str_of(point, "digest"), digest);
    assert_null(member(data, "context")); /* once, in the recovery point */
    assert_non_null(member(data, "config"));
    cJSON_Delete(created);
  }
  /* A new task's task.created has no recovery point. */
  submit_bystander(e, config);
  settle_loop(&loop);
  cJSON *fresh = event_json(&rec, SC_EV_TASK_CREATED, 2);
  assert_null(member(data_of(fresh), "recovery"));
  assert_null(member(data_of(fresh), "recovered_from"));
  cJSON_Delete(fresh);
  cJSON_Delete(context);
  cJSON_Delete(previous);
  cJSON_Delete(config);
  stop_engine(e, &rec, &loop);
}

/* ---- refusals ---- */

static void recover_rejects_unknown_stage(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, NULL, &rec, &p);
  cJSON *config = json_or_die(THREE_STAGES);
  cJSON *gate = json_or_die(APPROVAL_FIRST);
  submit_bystander(e, gate);
  settle_loop(&loop);
  assert_int_equal(sc_engine_task_count(e), 1);
  sc_recovery_request req;
  request_for(&req, config, "z");

  assert_refused(e, &rec, &req, SC_EUNKNOWN_STAGE, "stages: a, b, c");
  assert_non_null(strstr(sc_error_message(), "'z'"));

  cJSON_Delete(gate);
  cJSON_Delete(config);
  stop_engine(e, &rec, &loop);
}

static void recover_rejects_fingerprint_of_another_config(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, NULL, &rec, &p);
  cJSON *config = json_or_die(THREE_STAGES);
  cJSON *other = json_or_die(FOUR_STAGES);
  char other_fingerprint[72];
  assert_int_equal(sc_plan_fingerprint(sc_json_stage_factory, NULL, other, other_fingerprint),
                   SC_OK);
  cJSON *gate = json_or_die(APPROVAL_FIRST);
  submit_bystander(e, gate);
  settle_loop(&loop);
  sc_recovery_request req;
  request_for(&req, config, "a");
  req.plan_fingerprint = other_fingerprint;

  assert_refused(e, &rec, &req, SC_EPLAN_MISMATCH, "stages: a, b, c");

  cJSON_Delete(gate);
  cJSON_Delete(other);
  cJSON_Delete(config);
  stop_engine(e, &rec, &loop);
}

static void recover_rejects_context_digest_mismatch(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, NULL, &rec, &p);
  cJSON *config = json_or_die(THREE_STAGES);
  cJSON *context = json_or_die("{\"seed\":41}");
  cJSON *tampered = json_or_die("{\"seed\":42}");
  char digest[72];
  assert_int_equal(sc_json_digest(tampered, digest), SC_OK);
  sc_recovery_request req;
  request_for(&req, config, "a");
  req.context = context;
  req.context_digest = digest;

  assert_refused(e, &rec, &req, SC_ECORRUPT, "stages: a, b, c");

  cJSON_Delete(tampered);
  cJSON_Delete(context);
  cJSON_Delete(config);
  stop_engine(e, &rec, &loop);
}

static void recover_rollback_requires_previous_config(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, NULL, &rec, &p);
  cJSON *config = json_or_die(THREE_STAGES);
  sc_recovery_request req;
  request_for(&req, config, "a");
  req.mode = SC_RECOVER_ROLLBACK;

  assert_refused(e, &rec, &req, SC_EINVAL, "previous_config");

  cJSON_Delete(config);
  stop_engine(e, &rec, &loop);
}

static void recover_rejects_unsupported_request_version(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, NULL, &rec, &p);
  cJSON *config = json_or_die(THREE_STAGES);
  sc_recovery_request req;
  request_for(&req, config, "a");
  req.version = SC_RECOVERY_REQUEST_VERSION + 1;
  assert_refused(e, &rec, &req, SC_EINVAL, "version");
  req.version = 0;
  assert_refused(e, &rec, &req, SC_EINVAL, "version");

  cJSON_Delete(config);
  stop_engine(e, &rec, &loop);
}

static void recover_rejects_config_that_is_not_an_object(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, NULL, &rec, &p);
  cJSON *array = json_or_die("[" STEP("a") "]");
  sc_recovery_request req;
  request_for(&req, array, NULL);
  assert_refused(e, &rec, &req, SC_EINVAL, "config");
  request_for(&req, NULL, NULL);
  assert_refused(e, &rec, &req, SC_EINVAL, "config");

  cJSON_Delete(array);
  stop_engine(e, &rec, &loop);
}

static void recover_accepts_fingerprint_from_sc_plan_fingerprint(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, NULL, &rec, &p);
  cJSON *config = json_or_die(FOUR_STAGES);
  char fingerprint[72];
  assert_int_equal(sc_plan_fingerprint(sc_json_stage_factory, NULL, config, fingerprint), SC_OK);
  assert_memory_equal(fingerprint, "sha256:", 7);
  sc_recovery_request req;
  request_for(&req, config, "s2");
  req.plan_fingerprint = fingerprint;

  sc_task *t = NULL;
  assert_int_equal(sc_recover_from_restart(e, &req, &t), SC_OK);
  assert_string_equal(sc_task_fingerprint(t), fingerprint);
  settle_loop(&loop);
  assert_string_equal(run_order(&p), "s3");

  cJSON_Delete(config);
  stop_engine(e, &rec, &loop);
}

static void recover_accepts_fingerprint_from_task_created(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, NULL, &rec, &p);
  cJSON *config = json_or_die(FOUR_STAGES);
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.task_id = "t-old";
  spec.config = config;
  assert_int_equal(sc_task_submit(e, &spec, NULL), SC_OK);
  cJSON *created = event_json(&rec, SC_EV_TASK_CREATED, 0);
  settle_loop(&loop);
  assert_string_equal(run_order(&p), "s0,s1,s2,s3");

  sc_recovery_request req;
  request_for(&req, config, "s2");
  req.plan_fingerprint = str_of(data_of(created), "fingerprint");
  assert_int_equal(sc_recover_from_restart(e, &req, NULL), SC_OK);
  settle_loop(&loop);
  assert_string_equal(run_order(&p), "s0,s1,s2,s3,s3");
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, "t-new"), 1);

  cJSON_Delete(created);
  cJSON_Delete(config);
  stop_engine(e, &rec, &loop);
}

/* ---- ROLLBACK ---- */

static void recover_rollback_reruns_touched_stages_with_previous_config(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, NULL, &rec, &p);
  cJSON *config = json_or_die(FOUR_STAGES);
  cJSON *previous = json_or_die(PREVIOUS_FOUR_STAGES);
  char fingerprint[72], previous_fingerprint[72];
  assert_int_equal(sc_plan_fingerprint(NULL, NULL, config, fingerprint), SC_OK);
  assert_int_equal(sc_plan_fingerprint(NULL, NULL, previous, previous_fingerprint), SC_OK);
  sc_recovery_request req;
  request_for(&req, config, "s1");
  req.previous_config = previous;
  req.mode = SC_RECOVER_ROLLBACK;

  assert_int_equal(sc_recover_from_restart(e, &req, NULL), SC_OK);
  cJSON *recovered = event_json(&rec, SC_EV_TASK_RECOVERED, 0);
  const cJSON *plan = data_of(recovered);
  assert_string_equal(str_of(plan, "mode"), "rollback");
  assert_int_equal(num_of(plan, "start_index"), 0);
  assert_names(member(plan, "rerun"), "s0,s1,s2");
  assert_string_equal(str_of(plan, "fingerprint"), fingerprint);

  settle_loop(&loop);
  /* Index 0 up to and including the stage after the last completed one, with the old config. */
  assert_string_equal(run_order(&p), "s0,s1,s2");
  for (size_t i = 0; i < p.n; i++) {
    assert_string_equal(p.version[i], "1");
    assert_true(p.rollback[i]);
  }
  for (size_t i = 0; i < 3; i++) {
    cJSON *started = event_json(&rec, SC_EV_STAGE_STARTED, i);
    assert_string_equal(str_of(data_of(started), "mode"), "rollback");
    cJSON_Delete(started);
  }
  assert_string_equal(recorder_types(&rec, NULL),
                      "task.created,task.recovered,rollback.started,stage.started,stage.completed,"
                      "stage.started,stage.completed,stage.started,stage.completed,"
                      "rollback.completed");
  assert_string_equal(status_path(&rec, "t-new"),
                      "CREATED,CREATED,ROLLING_BACK,ROLLING_BACK,ROLLING_BACK,ROLLING_BACK,"
                      "ROLLING_BACK,ROLLING_BACK,ROLLING_BACK,ROLLED_BACK");
  cJSON *done = event_json(&rec, SC_EV_ROLLBACK_COMPLETED, 0);
  assert_string_equal(str_of(data_of(done), "status"), "ROLLED_BACK");
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_STARTED, NULL), 0);
  assert_null(sc_engine_find_task(e, "t-new"));

  cJSON_Delete(done);
  cJSON_Delete(recovered);
  cJSON_Delete(previous);
  cJSON_Delete(config);
  stop_engine(e, &rec, &loop);
}

static void recovered_rollback_goes_pending_rolling_back_rolled_back(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, NULL, &rec, &p);
  cJSON *gate = json_or_die(APPROVAL_FIRST);
  cJSON *config = json_or_die(FOUR_STAGES);
  cJSON *previous = json_or_die(PREVIOUS_FOUR_STAGES);
  /* A task of the same tenant holds the tenant's lock while it waits for a person. */
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.task_id = "holder";
  spec.tenant_id = "acme";
  spec.config = gate;
  sc_task *holder = NULL;
  assert_int_equal(sc_task_submit(e, &spec, &holder), SC_OK);
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(holder), SC_TASK_AWAITING_APPROVAL);

  sc_recovery_request req;
  request_for(&req, config, "s0");
  req.tenant_id = "acme";
  req.previous_config = previous;
  req.mode = SC_RECOVER_ROLLBACK;
  sc_task *t = NULL;
  assert_int_equal(sc_recover_from_restart(e, &req, &t), SC_OK);
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(t), SC_TASK_PENDING);
  assert_int_equal(p.n, 0);

  assert_int_equal(sc_task_cancel(holder, "make way"), SC_OK);
  settle_loop(&loop);
  assert_string_equal(run_order(&p), "s0,s1");
  assert_string_equal(status_path(&rec, "t-new"),
                      "CREATED,CREATED,ROLLING_BACK,ROLLING_BACK,ROLLING_BACK,ROLLING_BACK,"
                      "ROLLING_BACK,ROLLED_BACK");
  assert_string_equal(recorder_types(&rec, "t-new"),
                      "task.created,task.recovered,rollback.started,stage.started,stage.completed,"
                      "stage.started,stage.completed,rollback.completed");

  cJSON_Delete(previous);
  cJSON_Delete(config);
  cJSON_Delete(gate);
  stop_engine(e, &rec, &loop);
}

static void recovered_rollback_with_failing_stage_ends_rollback_failed(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, NULL, &rec, &p);
  cJSON *config = json_or_die(FOUR_STAGES);
  cJSON *previous = json_or_die(PREVIOUS_FAILING_S1);
  sc_recovery_request req;
  request_for(&req, config, "s2");
  req.previous_config = previous;
  req.mode = SC_RECOVER_ROLLBACK;

  sc_task *t = NULL;
  assert_int_equal(sc_recover_from_restart(e, &req, &t), SC_OK);
  settle_loop(&loop);
  assert_string_equal(run_order(&p), "s0,s1");
  assert_int_equal(sc_task_get_status(t), SC_TASK_ROLLBACK_FAILED);
  assert_int_equal(recorder_count(&rec, SC_EV_ROLLBACK_FAILED, "t-new"), 1);
  assert_int_equal(recorder_count(&rec, SC_EV_ROLLBACK_COMPLETED, "t-new"), 0);
  cJSON *failed = event_json(&rec, SC_EV_ROLLBACK_FAILED, 0);
  assert_string_equal(str_of(data_of(failed), "status"), "ROLLBACK_FAILED");
  assert_string_equal(str_of(data_of(failed), "stage"), "s1");

  sc_task_release(t);
  settle_loop(&loop);
  assert_null(sc_engine_find_task(e, "t-new"));

  cJSON_Delete(failed);
  cJSON_Delete(previous);
  cJSON_Delete(config);
  stop_engine(e, &rec, &loop);
}

/* ---- approvals after a restart ---- */

static void recovery_plan_flags_irreversible_in_flight_stage(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  probe p;
  sc_engine *e = start_probed(&loop, NULL, NULL, &p);
  cJSON *config = json_or_die(IRREVERSIBLE_S2);
  sc_recovery_request req;
  request_for(&req, config, "s1");

  cJSON *plan = NULL;
  assert_int_equal(sc_recovery_plan(e, &req, &plan), SC_OK);
  assert_true(cJSON_IsTrue(member(plan, "approval_required")));
  assert_string_equal(str_of(member(plan, "in_flight"), "stage"), "s2");
  assert_string_equal(str_of(member(plan, "in_flight"), "effect"), "irreversible");
  cJSON_Delete(plan);

  /* Once the irreversible stage completed, nothing irreversible is in flight. */
  req.last_completed_stage = "s2";
  assert_int_equal(sc_recovery_plan(e, &req, &plan), SC_OK);
  assert_false(cJSON_IsTrue(member(plan, "approval_required")));
  assert_string_equal(str_of(member(plan, "in_flight"), "effect"), "idempotent");
  cJSON_Delete(plan);

  cJSON_Delete(config);
  stop_engine(e, NULL, &loop);
}

static void recover_irreversible_in_flight(const char *approve_stage, const char *config_text) {
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, NULL, &rec, &p);
  cJSON *config = json_or_die(config_text);
  sc_recovery_request req;
  request_for(&req, config, "s1");

  sc_task *t = NULL;
  assert_int_equal(sc_recover_from_restart(e, &req, &t), SC_OK);
  cJSON *recovered = event_json(&rec, SC_EV_TASK_RECOVERED, 0);
  assert_true(cJSON_IsTrue(member(data_of(recovered), "approval_required")));
  settle_loop(&loop);
  assert_int_equal(p.n, 0);
  assert_int_equal(sc_task_get_status(t), SC_TASK_AWAITING_APPROVAL);
  cJSON *asked = event_json(&rec, SC_EV_APPROVAL_REQUESTED, 0);
  assert_string_equal(str_of(data_of(asked), "reason"), "irreversible-stage-in-flight");
  assert_string_equal(str_of(data_of(asked), "stage"), "s2");
  assert_string_equal(str_of(data_of(asked), "status"), "AWAITING_APPROVAL");

  assert_int_equal(sc_task_approve(t, approve_stage, "alice", "ok"), SC_OK);
  settle_loop(&loop);
  assert_string_equal(run_order(&p), "s2,s3");
  assert_string_equal(recorder_types(&rec, NULL),
                      "task.created,task.recovered,task.started,approval.requested,"
                      "approval.granted,stage.started,stage.completed,stage.started,"
                      "stage.completed,task.completed");

  cJSON_Delete(asked);
  cJSON_Delete(recovered);
  cJSON_Delete(config);
  stop_engine(e, &rec, &loop);
}

#define UNDO(name) "{\"name\":\"" name "\",\"kind\":\"undo\",\"effect\":\"compensable\"}"

/* COMPENSATE: the touched compensable stages (completed, and the one in flight) are undone, last
 * first; nothing runs forward; the task ends ROLLED_BACK. */
static void recover_compensate_undoes_the_touched_compensable_stages_in_reverse(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, NULL, &rec, &p);
  cJSON *config = json_or_die(
      "{\"stages\":[" UNDO("u0") "," STEP("s1") "," UNDO("u2") "," UNDO("u3") "," UNDO("u4") "]}");
  sc_recovery_request req;
  request_for(&req, config, "u2"); /* u3 was in flight, u4 never started */
  req.mode = SC_RECOVER_COMPENSATE;
  cJSON *plan = NULL;
  assert_int_equal(sc_recovery_plan(e, &req, &plan), SC_OK);
  assert_string_equal(str_of(plan, "mode"), "compensate");
  assert_names(member(plan, "compensated"), "u3,u2,u0");
  assert_names(member(plan, "rerun"), "");
  assert_names(member(plan, "skipped"), "");
  cJSON_Delete(plan);
  assert_int_equal(rec.n, 0); /* the dry run emits nothing */

  sc_task *t = NULL;
  assert_int_equal(sc_recover_from_restart(e, &req, &t), SC_OK);
  settle_loop(&loop);
  assert_string_equal(run_order(&p), "~u3,~u2,~u0");
  assert_string_equal(recorder_types(&rec, NULL),
                      "task.created,task.recovered,rollback.started,stage.started,"
                      "stage.compensated,stage.started,stage.compensated,stage.started,"
                      "stage.compensated,rollback.completed");
  cJSON *started = event_json(&rec, SC_EV_ROLLBACK_STARTED, 0);
  assert_string_equal(str_of(data_of(started), "strategy"), "compensate");
  cJSON_Delete(started);
  cJSON_Delete(config);
  stop_engine(e, &rec, &loop);
}

static void recover_retry_asks_approval_before_irreversible_in_flight_stage(void **state) {
  (void)state;
  recover_irreversible_in_flight(NULL, IRREVERSIBLE_S2);
}

/* An in-flight irreversible stage that also has an approval policy: the request says why it is
 * asked now, the in-flight effect. */
static void recover_in_flight_irreversible_gated_stage_says_in_flight(void **state) {
  (void)state;
  recover_irreversible_in_flight(
      NULL,
      "{\"version\":\"2\",\"stages\":[" STEP("s0") "," STEP(
          "s1") ",{\"name\":\"s2\",\"kind\":\"fn\",\"params\":{\"fn\":\"step\"},"
                "\"effect\":\"irreversible\",\"approval\":{\"required\":true}}," STEP("s3") "]}");
}

static void recover_retry_runs_irreversible_stage_once_approved_by_name(void **state) {
  (void)state;
  recover_irreversible_in_flight("s2", IRREVERSIBLE_S2);
}

static void recover_asks_again_for_approval_granted_before_the_crash(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, NULL, &rec, &p);
  cJSON *config = json_or_die(APPROVAL_S2);
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.task_id = "t-old";
  spec.config = config;
  sc_task *old = NULL;
  assert_int_equal(sc_task_submit(e, &spec, &old), SC_OK);
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(old), SC_TASK_AWAITING_APPROVAL);
  assert_int_equal(sc_task_approve(old, "s2", "alice", NULL), SC_OK);
  settle_loop(&loop);
  assert_string_equal(run_order(&p), "s0,s1,s2,s3");

  /* The process stopped while s2 ran: its approval is not carried over. */
  sc_recovery_request req;
  request_for(&req, config, "s1");
  sc_task *t = NULL;
  assert_int_equal(sc_recover_from_restart(e, &req, &t), SC_OK);
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(t), SC_TASK_AWAITING_APPROVAL);
  assert_int_equal(recorder_count(&rec, SC_EV_APPROVAL_REQUESTED, "t-new"), 1);
  assert_string_equal(run_order(&p), "s0,s1,s2,s3");
  cJSON *asked = event_json(&rec, SC_EV_APPROVAL_REQUESTED, 1);
  assert_string_equal(str_of(asked, "taskid"), "t-new");
  assert_string_equal(str_of(data_of(asked), "reason"), "policy");
  assert_string_equal(str_of(data_of(asked), "stage"), "s2");

  assert_int_equal(sc_task_approve(t, NULL, "bob", NULL), SC_OK);
  settle_loop(&loop);
  assert_string_equal(run_order(&p), "s0,s1,s2,s3,s2,s3");

  cJSON_Delete(asked);
  cJSON_Delete(config);
  stop_engine(e, &rec, &loop);
}

/* ---- the dry run ---- */

static void recovery_plan_is_a_dry_run_with_the_json_of_task_recovered(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, NULL, &rec, &p);
  cJSON *config = json_or_die(IRREVERSIBLE_S2);
  cJSON *context = json_or_die("{\"s0\":0}");
  char digest[72];
  assert_int_equal(sc_json_digest(context, digest), SC_OK);
  sc_recovery_request req;
  request_for(&req, config, "s0");
  req.context = context;
  req.context_digest = digest;
  req.epoch = 3;

  cJSON *plan = NULL;
  assert_int_equal(sc_recovery_plan(e, &req, &plan), SC_OK);
  assert_non_null(plan);
  assert_int_equal(sc_engine_task_count(e), 0);
  assert_null(sc_engine_find_task(e, "t-new"));
  assert_int_equal(rec.n, 0);
  assert_string_equal(str_of(plan, "recovered_from"), "t-old");
  assert_string_equal(str_of(plan, "mode"), "retry");
  assert_int_equal(num_of(plan, "start_index"), 1);
  assert_names(member(plan, "skipped"), "s0");
  assert_names(member(plan, "rerun"), "s1,s2,s3");
  assert_false(cJSON_IsTrue(member(plan, "approval_required")));
  assert_int_equal(num_of(plan, "epoch"), 4);
  assert_memory_equal(str_of(plan, "fingerprint"), "sha256:", 7);

  assert_int_equal(sc_recover_from_restart(e, &req, NULL), SC_OK);
  cJSON *recovered = event_json(&rec, SC_EV_TASK_RECOVERED, 0);
  cJSON *data = cJSON_DetachItemFromObjectCaseSensitive(recovered, "data");
  cJSON_DeleteItemFromObjectCaseSensitive(data, "status"); /* the event's own member */
  assert_true(cJSON_Compare(plan, data, true));
  settle_loop(&loop);

  cJSON_Delete(data);
  cJSON_Delete(recovered);
  cJSON_Delete(plan);
  cJSON_Delete(context);
  cJSON_Delete(config);
  stop_engine(e, &rec, &loop);
}

static void recovery_plan_refuses_what_recover_refuses(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, NULL, &rec, &p);
  cJSON *config = json_or_die(THREE_STAGES);
  cJSON *array = json_or_die("[]");
  cJSON *context = json_or_die("{\"k\":1}");
  char other_fingerprint[72], wrong_digest[72];
  cJSON *other = json_or_die(FOUR_STAGES);
  assert_int_equal(sc_plan_fingerprint(NULL, NULL, other, other_fingerprint), SC_OK);
  assert_int_equal(sc_json_digest(config, wrong_digest), SC_OK);
  sc_recovery_request req;

  request_for(&req, config, "nope");
  assert_refused(e, &rec, &req, SC_EUNKNOWN_STAGE, "stages: a, b, c");
  request_for(&req, config, "b");
  req.plan_fingerprint = other_fingerprint;
  assert_refused(e, &rec, &req, SC_EPLAN_MISMATCH, "stages: a, b, c");
  request_for(&req, config, "b");
  req.context = context;
  req.context_digest = wrong_digest;
  assert_refused(e, &rec, &req, SC_ECORRUPT, "stages: a, b, c");
  request_for(&req, config, "b");
  req.mode = SC_RECOVER_ROLLBACK;
  assert_refused(e, &rec, &req, SC_EINVAL, NULL);
  request_for(&req, config, "b");
  req.version = 77;
  assert_refused(e, &rec, &req, SC_EINVAL, NULL);
  request_for(&req, array, NULL);
  assert_refused(e, &rec, &req, SC_EINVAL, NULL);
  assert_int_equal(sc_engine_task_count(e), 0);

  cJSON_Delete(other);
  cJSON_Delete(context);
  cJSON_Delete(array);
  cJSON_Delete(config);
  stop_engine(e, &rec, &loop);
}

/* ---- many recoveries at once ---- */

typedef struct start_times {
  int64_t ns[8];
  size_t n;
} start_times;

static int on_task_started(const sc_event *ev, sc_ack *ack, void *udata) {
  (void)ack;
  start_times *s = udata;
  if (s->n < 8) s->ns[s->n++] = ev->time_ns;
  return SC_OK;
}

static void recoveries_are_spread_out_by_recovery_rate(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine_options opts;
  sc_engine_options_init(&opts);
  opts.recovery_rate_per_s = 5;
  probe p;
  sc_engine *e = start_probed(&loop, &opts, NULL, &p);
  start_times starts = {{0}, 0};
  sc_subscriber sub;
  sc_subscriber_init(&sub);
  sub.mask = 1ull << SC_EV_TASK_STARTED;
  sub.on_event = on_task_started;
  sub.udata = &starts;
  assert_int_equal(sc_engine_subscribe(e, &sub, NULL), SC_OK);
  cJSON *config = json_or_die(FOUR_STAGES);

  static const char *const ids[] = {"r0", "r1", "r2", "r3"};
  static const char *const tenants[] = {"t0", "t1", "t2", "t3"};
  for (size_t i = 0; i < 4; i++) {
    sc_recovery_request req;
    request_for(&req, config, "s2");
    req.task_id = ids[i];
    req.tenant_id = tenants[i];
    assert_int_equal(sc_recover_from_restart(e, &req, NULL), SC_OK);
  }
  settle_loop(&loop);
  assert_int_equal(starts.n, 4);
  assert_string_equal(run_order(&p), "s3,s3,s3,s3");
  int64_t first = starts.ns[0], last = starts.ns[0];
  for (size_t i = 1; i < starts.n; i++) {
    if (starts.ns[i] < first) first = starts.ns[i];
    if (starts.ns[i] > last) last = starts.ns[i];
  }
  /* 5 a second: the 2nd, 3rd and 4th start about 200, 400 and 600 ms after the 1st. */
  int64_t spread_ms = (last - first) / 1000000;
  if (spread_ms < 350 || spread_ms > 10000)
    fail_msg("starts spread over %lld ms", (long long)spread_ms);

  cJSON_Delete(config);
  stop_engine(e, NULL, &loop);
}

/* ---- a crash, simulated ---- */

static void recovery_in_a_new_engine_from_a_persisted_checkpoint_runs_only_the_rest(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  cJSON *config = json_or_die(FOUR_STAGES);

  /* The first process: what a log would hold. */
  recorder rec;
  probe p;
  sc_engine *first = start_probed(&loop, NULL, &rec, &p);
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.task_id = "t-old";
  spec.tenant_id = "acme";
  spec.plan_id = "deploy";
  spec.config = config;
  assert_int_equal(sc_task_submit(first, &spec, NULL), SC_OK);
  settle_loop(&loop);
  assert_string_equal(run_order(&p), "s0,s1,s2,s3");
  cJSON *created = event_json(&rec, SC_EV_TASK_CREATED, 0);
  cJSON *checkpoint = event_json(&rec, SC_EV_STAGE_COMPLETED, 1);
  cJSON *completed = event_json(&rec, SC_EV_TASK_COMPLETED, 0);
  assert_string_equal(str_of(data_of(checkpoint), "stage"), "s1");
  sc_engine_free(first);
  recorder_free(&rec);

  /* The second process knows only those lines. */
  sc_engine *second = start_probed(&loop, NULL, &rec, &p);
  sc_recovery_request req;
  sc_recovery_request_init(&req);
  req.recovered_from = str_of(checkpoint, "taskid");
  req.tenant_id = str_of(checkpoint, "tenantid");
  req.plan_id = str_of(checkpoint, "planid");
  req.config = member(data_of(created), "config");
  req.last_completed_stage = str_of(data_of(checkpoint), "stage");
  req.context = member(data_of(checkpoint), "context");
  req.context_digest = str_of(data_of(checkpoint), "digest");
  req.plan_fingerprint = str_of(data_of(created), "fingerprint");
  req.epoch = (uint64_t)num_of(checkpoint, "epoch");
  sc_task *t = NULL;
  assert_int_equal(sc_recover_from_restart(second, &req, &t), SC_OK);
  char id[64];
  snprintf(id, sizeof(id), "%s", sc_task_id(t));
  settle_loop(&loop);

  assert_string_equal(run_order(&p), "s2,s3");
  assert_string_equal(p.context[0], "{\"s0\":0,\"s1\":1}");
  cJSON *done = event_json(&rec, SC_EV_TASK_COMPLETED, 0);
  assert_string_equal(str_of(done, "taskid"), id);
  assert_int_equal(num_of(done, "epoch"), 1);
  /* The recovered run ends in the very state the uninterrupted run reached. */
  assert_string_equal(str_of(data_of(done), "digest"), str_of(data_of(completed), "digest"));
  cJSON *recovered = event_json(&rec, SC_EV_TASK_RECOVERED, 0);
  assert_string_equal(str_of(data_of(recovered), "recovered_from"), "t-old");

  cJSON_Delete(recovered);
  cJSON_Delete(done);
  cJSON_Delete(completed);
  cJSON_Delete(checkpoint);
  cJSON_Delete(created);
  cJSON_Delete(config);
  stop_engine(second, &rec, &loop);
}

/* The idempotency key of stage s0 of a task, taken while it runs. */
static int key_fn(sc_stage_ctx *ctx, void *udata) {
  snprintf(udata, 72, "%s", sc_stage_idempotency_key(ctx));
  sc_stage_complete(ctx, NULL);
  return SC_OK;
}

static void a_recovered_task_carries_the_root_of_its_chain_and_its_intent(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, NULL, &rec, &p);
  char key[72] = "";
  assert_int_equal(sc_engine_register_fn(e, "key", key_fn, key), SC_OK);
  cJSON *config = json_or_die("{\"stages\":[{\"name\":\"s0\",\"kind\":\"fn\","
                              "\"params\":{\"fn\":\"key\"}}]}");
  /* The first task of the chain is its own root; its task.created says nothing of a root. */
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.task_id = "t-first";
  spec.config = config;
  sc_task *t = NULL;
  assert_int_equal(sc_task_submit(e, &spec, &t), SC_OK);
  assert_string_equal(sc_task_root_id(t), "t-first");
  assert_int_equal(sc_task_intent(t), 0);
  cJSON *created = event_json(&rec, SC_EV_TASK_CREATED, 0);
  assert_null(member(data_of(created), "root_task_id"));
  cJSON_Delete(created);
  settle_loop(&loop);
  char first[72];
  snprintf(first, sizeof(first), "%s", key);
  /* Version 1 of the request: recovered_from is the root, the intent 0: the same key. */
  sc_recovery_request req;
  request_for(&req, config, NULL);
  req.version = 1;
  req.recovered_from = "t-first";
  req.root_task_id = "ignored: not in version 1";
  req.intent = 7;
  assert_int_equal(sc_recover_from_restart(e, &req, &t), SC_OK);
  assert_string_equal(sc_task_root_id(t), "t-first");
  assert_int_equal(sc_task_intent(t), 0);
  created = event_json(&rec, SC_EV_TASK_CREATED, 1);
  assert_string_equal(str_of(data_of(created), "root_task_id"), "t-first");
  assert_null(member(data_of(created), "intent"));
  cJSON_Delete(created);
  settle_loop(&loop);
  assert_string_equal(key, first);
  /* Version 2: the root and the intent as the request says; a new intent, a new key. */
  request_for(&req, config, NULL);
  req.task_id = "t-third";
  req.recovered_from = "t-new";
  req.root_task_id = "t-first";
  req.intent = 2;
  assert_int_equal(sc_recover_from_restart(e, &req, &t), SC_OK);
  assert_string_equal(sc_task_root_id(t), "t-first");
  assert_int_equal(sc_task_intent(t), 2);
  created = event_json(&rec, SC_EV_TASK_CREATED, 2);
  assert_string_equal(str_of(data_of(created), "root_task_id"), "t-first");
  assert_int_equal(num_of(data_of(created), "intent"), 2);
  cJSON_Delete(created);
  settle_loop(&loop);
  assert_string_not_equal(key, first);
  cJSON_Delete(config);
  stop_engine(e, &rec, &loop);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(a_recovered_task_carries_the_root_of_its_chain_and_its_intent),
      cmocka_unit_test(recover_retry_with_nothing_completed_runs_every_stage),
      cmocka_unit_test(recover_retry_after_stage_1_runs_only_stages_2_and_3),
      cmocka_unit_test(recover_retry_after_final_stage_completes_at_once),
      cmocka_unit_test(recovered_task_carries_request_epoch_plus_one_in_every_event),
      cmocka_unit_test(recover_restores_the_context_snapshot_with_a_matching_digest),
      cmocka_unit_test(a_recovered_task_created_carries_its_recovery_point),
      cmocka_unit_test(recover_rejects_unknown_stage),
      cmocka_unit_test(recover_rejects_fingerprint_of_another_config),
      cmocka_unit_test(recover_rejects_context_digest_mismatch),
      cmocka_unit_test(recover_rollback_requires_previous_config),
      cmocka_unit_test(recover_rejects_unsupported_request_version),
      cmocka_unit_test(recover_rejects_config_that_is_not_an_object),
      cmocka_unit_test(recover_accepts_fingerprint_from_sc_plan_fingerprint),
      cmocka_unit_test(recover_accepts_fingerprint_from_task_created),
      cmocka_unit_test(recover_rollback_reruns_touched_stages_with_previous_config),
      cmocka_unit_test(recovered_rollback_goes_pending_rolling_back_rolled_back),
      cmocka_unit_test(recovered_rollback_with_failing_stage_ends_rollback_failed),
      cmocka_unit_test(recovery_plan_flags_irreversible_in_flight_stage),
      cmocka_unit_test(recover_retry_asks_approval_before_irreversible_in_flight_stage),
      cmocka_unit_test(recover_retry_runs_irreversible_stage_once_approved_by_name),
      cmocka_unit_test(recover_in_flight_irreversible_gated_stage_says_in_flight),
      cmocka_unit_test(recover_compensate_undoes_the_touched_compensable_stages_in_reverse),
      cmocka_unit_test(recover_asks_again_for_approval_granted_before_the_crash),
      cmocka_unit_test(recovery_plan_is_a_dry_run_with_the_json_of_task_recovered),
      cmocka_unit_test(recovery_plan_refuses_what_recover_refuses),
      cmocka_unit_test(recoveries_are_spread_out_by_recovery_rate),
      cmocka_unit_test(recovery_in_a_new_engine_from_a_persisted_checkpoint_runs_only_the_rest),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
