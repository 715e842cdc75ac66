/* The durability barrier and the checkpoint as the engine emits them: which events hold a task's
 * next step until a subscriber acknowledges them, and when stage.completed carries the whole
 * context (docs/events.md). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <stagecoach/stagecoach.h>
#include <uv.h>

#include "harness.h"

/* The stages that ran, by name, in order ("a,b"). */
typedef struct ran {
  char names[512];
  unsigned count;
} ran;

/* Completes at once with {"<name>_out": "<out_bytes x's>"} (no output when out_bytes is 0). */
typedef struct maker {
  ran *ran;
  size_t out_bytes;
} maker;

static int fn_make(sc_stage_ctx *ctx, void *udata) {
  maker *m = udata;
  size_t len = strlen(m->ran->names);
  snprintf(m->ran->names + len, sizeof(m->ran->names) - len, "%s%s", len ? "," : "",
           sc_stage_name(ctx));
  m->ran->count++;
  cJSON *out = NULL;
  if (m->out_bytes > 0) {
    char *blob = malloc(m->out_bytes + 1);
    assert_non_null(blob);
    memset(blob, 'x', m->out_bytes);
    blob[m->out_bytes] = '\0';
    char key[80];
    snprintf(key, sizeof(key), "%s_out", sc_stage_name(ctx));
    out = cJSON_CreateObject();
    cJSON_AddStringToObject(out, key, blob);
    free(blob);
  }
  sc_stage_complete(ctx, out);
  return SC_OK;
}

/* {"stages":[...]}: one fn stage "make" per name, with the effect named after a ':'
 * ("b:irreversible"). */
static cJSON *plan_of(const char *names) {
  cJSON *config = cJSON_CreateObject();
  cJSON *stages = cJSON_AddArrayToObject(config, "stages");
  char copy[512];
  snprintf(copy, sizeof(copy), "%s", names);
  char *save = NULL;
  for (char *n = strtok_r(copy, ",", &save); n != NULL; n = strtok_r(NULL, ",", &save)) {
    char *effect = strchr(n, ':');
    if (effect) *effect++ = '\0';
    cJSON *st = cJSON_CreateObject();
    cJSON_AddStringToObject(st, "name", n);
    cJSON_AddStringToObject(st, "kind", "fn");
    cJSON_AddStringToObject(cJSON_AddObjectToObject(st, "params"), "fn", "make");
    if (effect) cJSON_AddStringToObject(st, "effect", effect);
    if (effect && strcmp(effect, "compensable") == 0)
      cJSON_AddStringToObject(st, "compensate", "true");
    cJSON_AddItemToArray(stages, st);
  }
  return config;
}

static sc_engine *engine_with(uv_loop_t *loop, maker *m) {
  sc_engine *e = start_engine(loop, NULL, NULL);
  assert_int_equal(sc_engine_register_fn(e, "make", fn_make, m), SC_OK);
  return e;
}

static sc_task *submit(sc_engine *e, const char *id, const char *names, const cJSON *context) {
  cJSON *config = plan_of(names);
  sc_task *t = submit_config(e, id, NULL, NULL, config, context);
  cJSON_Delete(config);
  return t;
}

/* A few turns of the loop without blocking: what would wrongly run gets its chance. */
static void turns(uv_loop_t *loop) {
  for (int i = 0; i < 20; i++)
    uv_run(loop, UV_RUN_NOWAIT);
}

static void drain(uv_loop_t *loop) {
  for (int i = 0; i < 100000 && uv_loop_alive(loop); i++)
    uv_run(loop, UV_RUN_ONCE);
}

/* ---- barriers ---- */

static void no_stage_starts_before_its_task_created_is_acknowledged(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  ran r = {0};
  maker m = {&r, 0};
  sc_engine *e = engine_with(&loop, &m);
  recorder rec;
  recorder_attach(&rec, e);
  rec.defer = 1;
  rec.defer_mask = 1ull << SC_EV_TASK_CREATED;
  sc_task *t = submit(e, "held", "a,b", NULL);
  turns(&loop);
  assert_int_equal(r.count, 0);
  assert_string_equal(recorder_types(&rec, NULL), "task.created");
  assert_int_equal(sc_task_get_status(t), SC_TASK_CREATED);
  assert_int_equal(recorder_ack_all(&rec, SC_OK), 1);
  drain(&loop);
  assert_string_equal(r.names, "a,b");
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, "held"), 1);
  stop_engine(e, &rec, &loop);
}

static void a_failed_ack_of_task_created_pauses_the_task_before_any_stage(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  ran r = {0};
  maker m = {&r, 0};
  sc_engine *e = engine_with(&loop, &m);
  recorder rec;
  recorder_attach(&rec, e);
  rec.defer = 1;
  rec.defer_mask = 1ull << SC_EV_TASK_CREATED;
  sc_task *t = submit(e, "lost", "a,b", NULL);
  turns(&loop);
  for (size_t i = 0; i < rec.nacks; i++)
    sc_ack_fail(rec.acks[i], SC_EIO, "write job.jsonl: No space left on device");
  rec.nacks = 0;
  drain(&loop);
  assert_int_equal(r.count, 0);
  assert_int_equal(sc_task_get_status(t), SC_TASK_PAUSED);
  assert_int_equal(recorder_count(&rec, SC_EV_STAGE_STARTED, NULL), 0);
  stop_engine(e, &rec, &loop);
}

static void stage_started_of_an_idempotent_stage_is_not_a_barrier(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  ran r = {0};
  maker m = {&r, 0};
  sc_engine *e = engine_with(&loop, &m);
  recorder rec;
  recorder_attach(&rec, e);
  rec.defer = 1;
  rec.defer_mask = 1ull << SC_EV_STAGE_STARTED;
  submit(e, "quick", "a,b", NULL);
  drain(&loop);
  /* Both ran with their stage.started still held: recovery re-runs an idempotent stage anyway. */
  assert_string_equal(r.names, "a,b");
  assert_int_equal(recorder_ack_all(&rec, SC_OK), 2);
  drain(&loop);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, "quick"), 1);
  stop_engine(e, &rec, &loop);
}

static void stage_started_of_an_irreversible_or_compensable_stage_is_a_barrier(void **state) {
  (void)state;
  const char *effects[] = {"irreversible", "compensable"};
  for (int k = 0; k < 2; k++) {
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    ran r = {0};
    maker m = {&r, 0};
    sc_engine *e = engine_with(&loop, &m);
    recorder rec;
    recorder_attach(&rec, e);
    rec.defer = 1;
    rec.defer_mask = 1ull << SC_EV_STAGE_STARTED;
    char names[64];
    snprintf(names, sizeof(names), "a,b:%s,c", effects[k]);
    submit(e, "careful", names, NULL);
    drain(&loop);
    /* a ran with its stage.started held; b waits until its stage.started is stored. */
    assert_string_equal(r.names, "a");
    assert_int_equal(recorder_count(&rec, SC_EV_STAGE_STARTED, NULL), 2);
    assert_int_equal(recorder_ack_all(&rec, SC_OK), 2);
    drain(&loop);
    assert_string_equal(r.names, "a,b,c");
    recorder_ack_all(&rec, SC_OK);
    drain(&loop);
    assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, "careful"), 1);
    stop_engine(e, &rec, &loop);
  }
}

static void
a_failed_ack_of_an_irreversible_stage_started_pauses_before_the_stage_runs(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  ran r = {0};
  maker m = {&r, 0};
  sc_engine *e = engine_with(&loop, &m);
  recorder rec;
  recorder_attach(&rec, e);
  rec.defer = 1;
  rec.defer_mask = 1ull << SC_EV_STAGE_STARTED;
  sc_task *t = submit(e, "refused", "a:irreversible,b", NULL);
  drain(&loop);
  assert_int_equal(r.count, 0);
  assert_int_equal(rec.nacks, 1);
  sc_ack_fail(rec.acks[0], SC_EIO, "fdatasync job.jsonl: Input/output error");
  rec.nacks = 0;
  drain(&loop);
  assert_int_equal(r.count, 0); /* never run without its record */
  assert_int_equal(sc_task_get_status(t), SC_TASK_PAUSED);
  /* Resumed (the cause fixed), the stage starts again with a stage.started of its own. */
  rec.defer = 0;
  assert_int_equal(sc_task_resume(t), SC_OK);
  drain(&loop);
  assert_string_equal(r.names, "a,b");
  assert_int_equal(recorder_count(&rec, SC_EV_STAGE_STARTED, "refused"), 3);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, "refused"), 1);
  stop_engine(e, &rec, &loop);
}

static void task_recovered_is_a_barrier_for_a_recovered_task(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  ran r = {0};
  maker m = {&r, 0};
  sc_engine *e = engine_with(&loop, &m);
  recorder rec;
  recorder_attach(&rec, e);
  rec.defer = 1;
  rec.defer_mask = 1ull << SC_EV_TASK_RECOVERED;
  cJSON *config = plan_of("a,b,c");
  sc_recovery_request req;
  sc_recovery_request_init(&req);
  req.recovered_from = "stopped";
  req.config = config;
  req.last_completed_stage = "a";
  assert_int_equal(sc_recover_from_restart(e, &req, NULL), SC_OK);
  turns(&loop);
  assert_int_equal(r.count, 0);
  assert_int_equal(recorder_ack_all(&rec, SC_OK), 1);
  drain(&loop);
  assert_string_equal(r.names, "b,c");
  cJSON_Delete(config);
  stop_engine(e, &rec, &loop);
}

/* ---- the checkpoint ---- */

/* Whether the data of the nth stage.completed serializes the whole context. */
static bool carries_context(const recorder *rec, size_t nth) {
  cJSON *root = recorder_json(rec, SC_EV_STAGE_COMPLETED, nth);
  assert_non_null(root);
  const cJSON *data = cJSON_GetObjectItemCaseSensitive(root, "data");
  bool has = cJSON_GetObjectItemCaseSensitive(data, "context") != NULL;
  assert_non_null(cJSON_GetObjectItemCaseSensitive(data, "digest"));
  cJSON_Delete(root);
  return has;
}

static void in_process_subscribers_get_the_whole_context_of_every_stage_completed(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  ran r = {0};
  maker m = {&r, 16};
  sc_engine *e = engine_with(&loop, &m);
  recorder rec;
  recorder_attach(&rec, e);
  cJSON *initial = json_or_die("{\"seed\":\"a long enough initial context to outweigh the "
                               "outputs of a few stages, which are small\"}");
  submit(e, "whole", "a,b,c,d", initial);
  drain(&loop);
  cJSON *expect = cJSON_Duplicate(initial, true);
  const char *names[] = {"a", "b", "c", "d"};
  for (size_t i = 0; i < 4; i++) {
    char key[16];
    snprintf(key, sizeof(key), "%s_out", names[i]);
    cJSON_AddStringToObject(expect, key, "xxxxxxxxxxxxxxxx");
    cJSON *whole = recorder_context(&rec, SC_EV_STAGE_COMPLETED, i);
    assert_non_null(whole);
    assert_true(cJSON_Compare(whole, expect, true));
    cJSON_Delete(whole);
    /* ... and the digest in the event is that context's. */
    char want[72];
    assert_int_equal(sc_json_digest(expect, want), SC_OK);
    cJSON *root = recorder_json(&rec, SC_EV_STAGE_COMPLETED, i);
    const cJSON *digest =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "data"), "digest");
    assert_string_equal(digest->valuestring, want);
    cJSON_Delete(root);
  }
  assert_true(carries_context(&rec, 0));
  assert_false(carries_context(&rec, 1)); /* small outputs do not outweigh the snapshot */
  cJSON_Delete(expect);
  cJSON_Delete(initial);
  stop_engine(e, &rec, &loop);
}

static void
stage_completed_serializes_the_context_first_then_when_outputs_outweigh_it(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  ran r = {0};
  maker m = {&r, 1000};
  sc_engine *e = engine_with(&loop, &m);
  recorder rec;
  recorder_attach(&rec, e);
  char names[2048] = "";
  const size_t stages = 64;
  for (size_t i = 0; i < stages; i++)
    snprintf(names + strlen(names), sizeof(names) - strlen(names), "%ss%zu", i ? "," : "", i);
  submit(e, "growing", names, NULL);
  drain(&loop);
  assert_int_equal(recorder_count(&rec, SC_EV_STAGE_COMPLETED, NULL), stages);
  /* The first carries it; after that one whenever the outputs since reach the snapshot's size:
   * the snapshots double, so there are about log2(stages) of them, and the serialized events
   * grow with the sum of the outputs. */
  size_t snapshots = 0, bytes = 0;
  for (size_t i = 0; i < rec.n; i++)
    bytes += strlen(rec.lines[i]);
  for (size_t i = 0; i < stages; i++)
    snapshots += carries_context(&rec, i);
  assert_true(carries_context(&rec, 0));
  if (snapshots < 3 || snapshots > 9) fail_msg("%zu snapshots in %zu stages", snapshots, stages);
  /* Outputs 64 KB, snapshots at most twice the final context, task.completed one more. */
  if (bytes > 5 * stages * 1000)
    fail_msg("%zu bytes of events for %zu KB of outputs", bytes, stages);
  stop_engine(e, &rec, &loop);
}

static void a_retry_run_starts_again_with_a_snapshot(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  ran r = {0};
  maker m = {&r, 4};
  sc_engine *e = engine_with(&loop, &m);
  recorder rec;
  recorder_attach(&rec, e);
  cJSON *initial = json_or_die("{\"seed\":\"large enough to outweigh four-byte outputs\"}");
  cJSON *config = plan_of("a,b");
  sc_recovery_request req;
  sc_recovery_request_init(&req);
  req.recovered_from = "before";
  req.config = config;
  req.context = initial;
  assert_int_equal(sc_recover_from_restart(e, &req, NULL), SC_OK);
  drain(&loop);
  /* A recovered run's first stage.completed is a snapshot: a reader folds from it. */
  assert_true(carries_context(&rec, 0));
  assert_false(carries_context(&rec, 1));
  cJSON_Delete(config);
  cJSON_Delete(initial);
  stop_engine(e, &rec, &loop);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(no_stage_starts_before_its_task_created_is_acknowledged),
      cmocka_unit_test(a_failed_ack_of_task_created_pauses_the_task_before_any_stage),
      cmocka_unit_test(stage_started_of_an_idempotent_stage_is_not_a_barrier),
      cmocka_unit_test(stage_started_of_an_irreversible_or_compensable_stage_is_a_barrier),
      cmocka_unit_test(a_failed_ack_of_an_irreversible_stage_started_pauses_before_the_stage_runs),
      cmocka_unit_test(task_recovered_is_a_barrier_for_a_recovered_task),
      cmocka_unit_test(in_process_subscribers_get_the_whole_context_of_every_stage_completed),
      cmocka_unit_test(stage_completed_serializes_the_context_first_then_when_outputs_outweigh_it),
      cmocka_unit_test(a_retry_run_starts_again_with_a_snapshot),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
