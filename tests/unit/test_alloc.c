/* Fault injection: every allocation the library makes is failed in turn (the Nth, for N = 1, 2, ...
 * until a run completes without a failure) while an engine runs and recovers a task. Each run must
 * end cleanly: an error code or a finished task, never a crash, a leak or a loop left open. The
 * test is linked with --wrap for malloc, calloc, realloc and strdup, and cJSON's hooks point here.
 */
#include "harness.h"

#include <unistd.h>

#include <stagecoach/jsonl.h>

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
char *__real_strdup(const char *s);

static long countdown = -1; /* allocations left before the one that fails; -1: never fail */
static int failed;          /* how many allocations were failed in this run */

static int should_fail(void) {
  if (countdown < 0) return 0;
  if (countdown-- == 0) {
    failed++;
    return 1;
  }
  return 0;
}

void *__wrap_malloc(size_t n) {
  return should_fail() ? NULL : __real_malloc(n);
}
void *__wrap_calloc(size_t n, size_t size) {
  return should_fail() ? NULL : __real_calloc(n, size);
}
void *__wrap_realloc(void *p, size_t n) {
  return should_fail() ? NULL : __real_realloc(p, n);
}
char *__wrap_strdup(const char *s) {
  return should_fail() ? NULL : __real_strdup(s);
}
static void *json_malloc(size_t n) {
  return __wrap_malloc(n);
}
static void json_free(void *p) {
  free(p);
}

static int count_events(const sc_event *ev, sc_ack *ack, void *udata) {
  (void)ev;
  (void)ack;
  (*(int *)udata)++;
  return SC_OK;
}

static int produce(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  /* The stage's own allocation may fail too; finishing without output is the clean answer. */
  cJSON *out = cJSON_CreateObject();
  if (out != NULL && cJSON_AddNumberToObject(out, "n", sc_stage_index(ctx)) == NULL) {
    cJSON_Delete(out);
    out = NULL;
  }
  sc_stage_complete(ctx, out);
  return SC_OK;
}

static const char *config_text =
    "{\"version\":\"1\",\"stages\":["
    "{\"name\":\"a\",\"kind\":\"fn\",\"params\":{\"fn\":\"produce\"}},"
    "{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":0},\"retry\":{\"max_attempts\":2}},"
    "{\"name\":\"c\",\"kind\":\"fn\",\"params\":{\"fn\":\"produce\"},\"timeout_ms\":1000}]}";

/* One run: engine, subscriber, a task run to its end, a recovery run to its end, teardown. */
static void one_run(const cJSON *config) {
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = NULL;
  int events = 0;
  int rc = sc_engine_new(&loop, NULL, &e);
  if (rc != SC_OK) {
    assert_null(e);
    assert_true(rc < 0);
    goto out;
  }
  sc_engine_register_fn(e, "produce", produce, NULL);
  sc_subscriber s;
  sc_subscriber_init(&s);
  s.on_event = count_events;
  s.udata = &events;
  sc_engine_subscribe(e, &s, NULL);
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.config = config;
  spec.tenant_id = "acme";
  sc_task *t = NULL;
  rc = sc_task_submit(e, &spec, &t);
  if (rc != SC_OK) assert_null(t);
  uv_run(&loop, UV_RUN_DEFAULT);

  sc_recovery_request req;
  sc_recovery_request_init(&req);
  req.config = config;
  req.tenant_id = "acme";
  req.last_completed_stage = "a";
  req.recovered_from = "x";
  t = NULL;
  rc = sc_recover_from_restart(e, &req, &t);
  if (rc != SC_OK) assert_null(t);
  uv_run(&loop, UV_RUN_DEFAULT);

  cJSON *plan = NULL;
  rc = sc_recovery_plan(e, &req, &plan);
  if (rc != SC_OK) assert_null(plan);
  cJSON_Delete(plan);
  /* A task that failed for want of memory waits for a decision; the engine frees it. */
  sc_engine_free(e);
out:
  countdown = -1;
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void every_allocation_failure_ends_cleanly(void **state) {
  (void)state;
  cJSON_Hooks hooks = {json_malloc, json_free};
  cJSON *config = json_or_die(config_text);
  cJSON_InitHooks(&hooks);
  long n;
  for (n = 0; n < 20000; n++) {
    failed = 0;
    countdown = n;
    one_run(config);
    if (failed == 0) break; /* this run needed fewer than n allocations: all were covered */
  }
  cJSON_InitHooks(NULL);
  cJSON_Delete(config);
  assert_true(n > 50); /* the scenario allocates; the loop really injected failures */
  assert_true(n < 20000);
  print_message("# %ld allocation failures injected\n", n);
}

/* The same with the JSON-lines log: whatever allocation fails, the log left behind verifies (an
 * event that could not be queued is acknowledged with an error and leaves no trace in the chain).
 */
static void one_logged_run(const cJSON *config, const char *path) {
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = NULL;
  sc_jsonl *log = NULL;
  if (sc_engine_new(&loop, NULL, &e) != SC_OK) goto out;
  sc_engine_register_fn(e, "produce", produce, NULL);
  sc_jsonl_options o;
  sc_jsonl_options_init(&o);
  o.fsync = SC_FSYNC_NONE; /* nothing on the thread pool: the countdown is not thread-safe */
  if (sc_jsonl_open(e, path, &o, &log) == SC_OK) {
    for (int i = 0; i < 3; i++) {
      sc_task_spec spec;
      sc_task_spec_init(&spec);
      spec.config = config;
      sc_task *t = NULL;
      if (sc_task_submit(e, &spec, &t) != SC_OK) assert_null(t);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    sc_jsonl_close(log);
  }
  sc_engine_free(e);
out:
  countdown = -1;
  assert_int_equal(uv_loop_close(&loop), 0);
  sc_jsonl_report r;
  int rc = sc_jsonl_verify(path, &r);
  if (rc != SC_OK && rc != SC_ENOTFOUND)
    fail_msg("after %d failed allocation(s) the log does not verify: %s", failed,
             sc_error_message());
}

static void every_allocation_failure_leaves_a_log_that_verifies(void **state) {
  (void)state;
  char dir[] = "/tmp/stagecoach-alloc-XXXXXX", path[64];
  assert_non_null(mkdtemp(dir));
  snprintf(path, sizeof(path), "%s/job.jsonl", dir);
  cJSON_Hooks hooks = {json_malloc, json_free};
  cJSON *config = json_or_die(config_text);
  cJSON_InitHooks(&hooks);
  long n;
  for (n = 0; n < 20000; n++) {
    failed = 0;
    countdown = n;
    one_logged_run(config, path);
    if (failed == 0) break;
  }
  cJSON_InitHooks(NULL);
  cJSON_Delete(config);
  unlink(path);
  rmdir(dir);
  assert_true(n > 50);
  assert_true(n < 20000);
  print_message("# %ld allocation failures injected with the log\n", n);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(every_allocation_failure_ends_cleanly),
      cmocka_unit_test(every_allocation_failure_leaves_a_log_that_verifies),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
