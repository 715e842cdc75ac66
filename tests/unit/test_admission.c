/* Admission: tenant locks, the lock provider, max_active_tasks and the pending approvals. */
#include <stdbool.h>
#include <stdint.h>

#include "harness.h"

/* ---- pipelines ---- */

#define STAGE_FN(name, fn) "{\"name\":\"" name "\",\"kind\":\"fn\",\"params\":{\"fn\":\"" fn "\"}}"
#define STEP(name)         STAGE_FN(name, "step")
#define HOLD(name)         "{\"name\":\"" name "\",\"kind\":\"hold\"}"
#define NAP(name, ms)      "{\"name\":\"" name "\",\"kind\":\"sleep\",\"params\":{\"ms\":" #ms "}}"
#define GATED(name, approval)                                                                      \
  "{\"name\":\"" name "\",\"kind\":\"fn\",\"params\":{\"fn\":\"step\"},\"approval\":" approval "}"
#define CONFIG(...) "{\"version\":\"1\",\"stages\":[" __VA_ARGS__ "]}"

/* ---- a probe: which stages ran, and the "hold" stages in flight ---- */

#define MAX_HELD 8

typedef struct probe {
  size_t runs;
  char order[2048]; /* "task/stage," in the order the stages started */
  sc_stage_ctx *held[MAX_HELD];
  int hold_cancels;
  int flaky_failures; /* "flaky" fails this many times, then completes */
} probe;

static void probe_record(probe *p, sc_stage_ctx *ctx) {
  p->runs++;
  size_t off = strlen(p->order);
  snprintf(p->order + off, sizeof(p->order) - off, "%s/%s,", sc_task_id(sc_stage_task(ctx)),
           sc_stage_name(ctx));
}

static int step_fn(sc_stage_ctx *ctx, void *udata) {
  probe_record(udata, ctx);
  sc_stage_complete(ctx, NULL);
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

/* "hold": a stage that finishes when the test says so (release_held). */
static int hold_start(sc_stage_ctx *ctx, void *udata) {
  probe *p = udata;
  probe_record(p, ctx);
  for (size_t i = 0; i < MAX_HELD; i++)
    if (p->held[i] == NULL) {
      p->held[i] = ctx;
      return SC_OK;
    }
  fail_msg("more than %d held stages", MAX_HELD);
  return SC_EINVAL;
}

static void hold_cancel(sc_stage_ctx *ctx, void *udata) {
  probe *p = udata;
  p->hold_cancels++;
  for (size_t i = 0; i < MAX_HELD; i++)
    if (p->held[i] == ctx) p->held[i] = NULL;
  sc_stage_fail(ctx, SC_ECANCELLED, "held stage cancelled", false); /* a stage still finishes */
}

/* Completes the held stage of a task. */
static void release_held(probe *p, const char *task_id) {
  for (size_t i = 0; i < MAX_HELD; i++) {
    sc_stage_ctx *ctx = p->held[i];
    if (ctx != NULL && strcmp(sc_task_id(sc_stage_task(ctx)), task_id) == 0) {
      p->held[i] = NULL;
      sc_stage_complete(ctx, NULL);
      return;
    }
  }
  fail_msg("task %s holds no stage", task_id);
}

/* ---- a fake lock provider: a table tenant -> owner and call counters ---- */

#define MAX_LOCKS 8

typedef struct fake_locks {
  char tenant[MAX_LOCKS][32], owner[MAX_LOCKS][64];
  size_t n;
  int acquires, renews, releases; /* calls, granted or not */
  int fail_renew_at;              /* > 0: at that renew call the tenant is taken by "elsewhere" */
  char last_renew_owner[64];
  char log[2048]; /* "+tenant:owner " for each granted acquire, "-tenant:owner " for each release */
} fake_locks;

static int fake_find(const fake_locks *f, const char *tenant) {
  for (size_t i = 0; i < f->n; i++)
    if (strcmp(f->tenant[i], tenant) == 0) return (int)i;
  return -1;
}

/* Records owner as the holder of tenant (another process, when owner is not a task id). */
static void fake_hold(fake_locks *f, const char *tenant, const char *owner) {
  int i = fake_find(f, tenant);
  if (i < 0) {
    if (f->n == MAX_LOCKS) fail_msg("fake lock table is full");
    i = (int)f->n++;
    snprintf(f->tenant[i], sizeof(f->tenant[i]), "%s", tenant);
  }
  snprintf(f->owner[i], sizeof(f->owner[i]), "%s", owner);
}

static void fake_free(fake_locks *f, const char *tenant) {
  int i = fake_find(f, tenant);
  if (i < 0) return;
  f->n--;
  if ((size_t)i != f->n) {
    memcpy(f->tenant[i], f->tenant[f->n], sizeof(f->tenant[i]));
    memcpy(f->owner[i], f->owner[f->n], sizeof(f->owner[i]));
  }
}

static void fake_log(fake_locks *f, char sign, const char *tenant, const char *owner) {
  size_t off = strlen(f->log);
  snprintf(f->log + off, sizeof(f->log) - off, "%c%s:%s ", sign, tenant, owner);
}

static int fake_acquire(const char *tenant, const char *owner, uint32_t ttl_ms, void *udata) {
  fake_locks *f = udata;
  (void)ttl_ms;
  f->acquires++;
  int i = fake_find(f, tenant);
  if (i >= 0 && strcmp(f->owner[i], owner) != 0) return SC_EBUSY;
  fake_hold(f, tenant, owner);
  fake_log(f, '+', tenant, owner);
  return SC_OK;
}

static int fake_renew(const char *tenant, const char *owner, uint32_t ttl_ms, void *udata) {
  fake_locks *f = udata;
  (void)ttl_ms;
  f->renews++;
  snprintf(f->last_renew_owner, sizeof(f->last_renew_owner), "%s", owner);
  if (f->fail_renew_at > 0 && f->renews == f->fail_renew_at) fake_hold(f, tenant, "elsewhere");
  int i = fake_find(f, tenant);
  return i >= 0 && strcmp(f->owner[i], owner) == 0 ? SC_OK : SC_EBUSY;
}

static void fake_release(const char *tenant, const char *owner, void *udata) {
  fake_locks *f = udata;
  f->releases++;
  fake_log(f, '-', tenant, owner);
  int i = fake_find(f, tenant);
  if (i >= 0 && strcmp(f->owner[i], owner) == 0) fake_free(f, tenant);
}

static sc_lock_provider fake_provider(fake_locks *f, uint32_t ttl_ms, uint32_t retry_ms) {
  sc_lock_provider p;
  sc_lock_provider_init(&p);
  p.acquire = fake_acquire;
  p.renew = fake_renew;
  p.release = fake_release;
  p.udata = f;
  p.ttl_ms = ttl_ms;
  p.retry_ms = retry_ms;
  return p;
}

static void install_fake(sc_engine *e, fake_locks *f, uint32_t ttl_ms, uint32_t retry_ms) {
  sc_lock_provider p = fake_provider(f, ttl_ms, retry_ms);
  assert_int_equal(sc_engine_set_lock_provider(e, &p), SC_OK);
}

/* ---- helpers ---- */

/* An engine (harness.h) with the probe's kinds. */
static sc_engine *start_probed(uv_loop_t *loop, const sc_engine_options *opts, recorder *rec,
                               probe *p) {
  sc_engine *e = start_engine(loop, opts, NULL);
  memset(p, 0, sizeof(*p));
  assert_int_equal(sc_engine_register_fn(e, "step", step_fn, p), SC_OK);
  assert_int_equal(sc_engine_register_fn(e, "fail", fail_fn, p), SC_OK);
  assert_int_equal(sc_engine_register_fn(e, "flaky", flaky_fn, p), SC_OK);
  static const sc_stage_kind hold = {SC_STAGE_KIND_VERSION, hold_start, hold_cancel, NULL};
  assert_int_equal(sc_engine_register_kind(e, "hold", &hold, p), SC_OK);
  if (rec != NULL) recorder_attach(rec, e);
  return e;
}

static void on_guard(uv_timer_t *h) {
  uv_stop(h->loop);
}

/* Runs the loop for about ms milliseconds of loop time, whatever keeps it alive. */
static void run_for_ms(uv_loop_t *loop, uint64_t ms) {
  uv_timer_t guard;
  assert_int_equal(uv_timer_init(loop, &guard), 0);
  assert_int_equal(uv_timer_start(&guard, on_guard, ms, 0), 0);
  uv_run(loop, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&guard, NULL);
  uv_run(loop, UV_RUN_NOWAIT); /* runs the close */
}

static sc_task *submit(sc_engine *e, const char *id, const char *tenant, const char *config) {
  return submit_text(e, id, tenant, "admission", config, NULL);
}

/* The index in the recording of the first event of a type for a task; fails when there is none. */
static size_t event_index(const recorder *r, sc_event_type type, const char *task_id) {
  for (size_t i = 0; i < r->n; i++)
    if (r->types[i] == type && strcmp(r->task_ids[i], task_id) == 0) return i;
  fail_msg("no %s for %s among: %s", sc_event_type_name(type), task_id, recorder_types(r, NULL));
  return 0;
}

static void assert_has(const char *haystack, const char *needle) {
  if (strstr(haystack, needle) == NULL) fail_msg("\"%s\" lacks \"%s\"", haystack, needle);
}

/* ---- the lock provider ---- */

static void
provider_is_asked_once_per_task_with_the_task_id_and_tenant_tasks_still_run_in_turn(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  probe p;
  fake_locks f = {0};
  sc_engine *e = start_probed(&loop, NULL, &rec, &p);
  install_fake(e, &f, 30000, 20);
  sc_task *a = submit(e, "a", "acme", CONFIG(HOLD("h0")));
  sc_task *b = submit(e, "b", "acme", CONFIG(STEP("s0")));
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(a), SC_TASK_RUNNING);
  assert_int_equal(sc_task_get_status(b),
                   SC_TASK_PENDING); /* waits in process, not on the provider */
  assert_int_equal(f.acquires, 1);
  assert_int_equal(f.releases, 0);
  assert_string_equal(f.log, "+acme:a ");

  release_held(&p, "a");
  settle_loop(&loop);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, NULL), 2);
  assert_true(event_index(&rec, SC_EV_TASK_COMPLETED, "a") <
              event_index(&rec, SC_EV_TASK_STARTED, "b"));
  assert_string_equal(p.order, "a/h0,b/s0,");
  assert_int_equal(f.acquires, 2);
  assert_int_equal(f.releases, 2);
  assert_string_equal(f.log, "+acme:a -acme:a +acme:b -acme:b ");
  assert_int_equal(f.n, 0);
  assert_int_equal(sc_engine_task_count(e), 0);

  stop_engine(e, &rec, &loop);
}

static void busy_provider_keeps_the_task_pending_and_is_asked_again_every_retry_ms(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  probe p;
  fake_locks f = {0};
  fake_hold(&f, "acme", "elsewhere"); /* another process holds the tenant */
  sc_engine *e = start_probed(&loop, NULL, &rec, &p);
  install_fake(e, &f, 30000, 20);
  sc_task *t = submit(e, "t", "acme", CONFIG(STEP("s0")));

  run_for_ms(&loop, 100);
  assert_int_equal(sc_task_get_status(t), SC_TASK_PENDING);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_STARTED, NULL), 0);
  assert_int_equal(p.runs, 0);
  /* once at admission, then every 20 ms: about 6 in 100 ms */
  if (f.acquires < 3 || f.acquires > 6)
    fail_msg("%d acquire calls in 100 ms with retry_ms 20", f.acquires);
  assert_int_equal(f.releases, 0);
  int asked = f.acquires;

  fake_free(&f, "acme"); /* the other process lets go */
  settle_loop(&loop);
  assert_int_equal(f.acquires, asked + 1);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_STARTED, "t"), 1);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, "t"), 1);
  assert_string_equal(f.log, "+acme:t -acme:t ");
  assert_int_equal(f.n, 0);

  stop_engine(e, &rec, &loop);
}

static void provider_lock_is_renewed_about_every_third_of_the_ttl_while_a_stage_runs(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  probe p;
  fake_locks f = {0};
  sc_engine *e = start_probed(&loop, NULL, &rec, &p);
  install_fake(e, &f, 60, 20);
  submit(e, "t", "acme", CONFIG(NAP("nap", 200)));
  settle_loop(&loop);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, "t"), 1);
  /* every 20 ms during 200 ms: about 10 */
  if (f.renews < 4 || f.renews > 11) fail_msg("%d renew calls in 200 ms with ttl_ms 60", f.renews);
  assert_string_equal(f.last_renew_owner, "t");
  assert_string_equal(f.log, "+acme:t -acme:t ");
  int renews = f.renews;
  run_for_ms(&loop, 60); /* no holder: no renewing */
  assert_int_equal(f.renews, renews);

  stop_engine(e, &rec, &loop);
}

static void
lost_lock_pauses_at_the_next_stage_boundary_and_resume_needs_the_lock_again(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  probe p;
  fake_locks f = {0};
  f.fail_renew_at = 2; /* the second renew finds the tenant taken by another process */
  sc_engine *e = start_probed(&loop, NULL, &rec, &p);
  install_fake(e, &f, 60, 20);
  sc_task *t = submit(e, "t", "acme", CONFIG(NAP("nap", 100) "," STEP("s1")));
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(t), SC_TASK_PAUSED);
  assert_int_equal(p.runs, 0);                                           /* s1 did not start */
  assert_int_equal(recorder_count(&rec, SC_EV_STAGE_COMPLETED, "t"), 1); /* nap finished */
  cJSON *paused = recorder_json(&rec, SC_EV_TASK_PAUSED, 0);
  assert_non_null(paused);
  const cJSON *data = cJSON_GetObjectItemCaseSensitive(paused, "data");
  const cJSON *from = cJSON_GetObjectItemCaseSensitive(data, "paused_from");
  assert_true(cJSON_IsString(from));
  assert_string_equal(from->valuestring, "RUNNING");
  const cJSON *reason = cJSON_GetObjectItemCaseSensitive(data, "reason");
  assert_true(cJSON_IsString(reason));
  assert_string_equal(reason->valuestring, "lock-lost");
  const cJSON *msg =
      cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(data, "error"), "message");
  assert_true(cJSON_IsString(msg));
  assert_has(msg->valuestring, "lost the lock");
  assert_has(msg->valuestring, "acme");
  cJSON_Delete(paused);

  assert_int_equal(sc_task_resume(t), SC_EBUSY); /* "elsewhere" still holds it */
  assert_error_has("acme");
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(t), SC_TASK_PAUSED);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_RESUMED, NULL), 0);

  fake_free(&f, "acme");
  assert_int_equal(sc_task_resume(t), SC_OK);
  settle_loop(&loop);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, "t"), 1);
  assert_string_equal(p.order, "t/s1,");
  assert_int_equal(f.acquires, 3); /* admission, the refused resume, the accepted one */
  assert_string_equal(f.log, "+acme:t +acme:t -acme:t ");
  assert_int_equal(f.n, 0);

  stop_engine(e, &rec, &loop);
}

/* A task paused by a caller that loses its lock meanwhile is not paused a second time when it
 * resumes: the resume takes the lock again and the task runs on. */
static void a_paused_task_that_loses_its_lock_resumes_once_it_has_it_again(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  probe p;
  fake_locks f = {0};
  sc_engine *e = start_probed(&loop, NULL, &rec, &p);
  install_fake(e, &f, 60, 20);
  sc_task *t = submit(e, "t", "acme", CONFIG(NAP("nap", 30) "," STEP("s1")));
  run_for_ms(&loop, 5); /* in the nap */
  assert_int_equal(sc_task_pause(t), SC_OK);
  run_for_ms(&loop, 60);
  assert_int_equal(sc_task_get_status(t), SC_TASK_PAUSED);
  f.fail_renew_at = f.renews + 1; /* the next renew finds the tenant taken */
  run_for_ms(&loop, 100);
  assert_int_equal(sc_task_get_status(t), SC_TASK_PAUSED);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_PAUSED, "t"), 1);
  assert_int_equal(sc_task_resume(t), SC_EBUSY); /* "elsewhere" holds it */
  fake_free(&f, "acme");
  assert_int_equal(sc_task_resume(t), SC_OK);
  settle_loop(&loop);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, "t"), 1);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_PAUSED, "t"), 1);
  assert_string_equal(p.order, "t/s1,");
  stop_engine(e, &rec, &loop);
}

static void renewing_goes_on_after_a_resumed_task_took_its_lock_again(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  probe p;
  fake_locks f = {0};
  f.fail_renew_at = 1;
  sc_engine *e = start_probed(&loop, NULL, &rec, &p);
  install_fake(e, &f, 60, 20);
  sc_task *t = submit(e, "t", "acme", CONFIG(NAP("nap", 50) "," NAP("long", 200)));
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(t), SC_TASK_PAUSED);
  fake_free(&f, "acme");
  assert_int_equal(sc_task_resume(t), SC_OK);
  int before = f.renews;
  settle_loop(&loop);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, "t"), 1);
  /* the 200 ms stage after the resume holds the lock: it must be renewed again */
  if (f.renews - before < 4)
    fail_msg("%d renew calls during a 200 ms stage after the resume (ttl_ms 60)",
             f.renews - before);

  stop_engine(e, &rec, &loop);
}

static void set_lock_provider_is_refused_while_a_tenant_lock_is_held(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  probe p;
  fake_locks f = {0};
  sc_engine *e = start_probed(&loop, NULL, &rec, &p);
  sc_lock_provider prov = fake_provider(&f, 30000, 20);
  submit(e, "a", "acme", CONFIG(HOLD("h0")));
  settle_loop(&loop);
  assert_int_equal(sc_engine_set_lock_provider(e, &prov), SC_EBUSY);
  assert_int_equal(sc_engine_set_lock_provider(e, NULL), SC_EBUSY);

  release_held(&p, "a");
  settle_loop(&loop);
  assert_int_equal(f.acquires + f.releases, 0); /* never installed */
  submit(e, "n", NULL, CONFIG(HOLD("h0")));     /* a task without a tenant holds no lock */
  settle_loop(&loop);
  assert_int_equal(sc_engine_set_lock_provider(e, &prov), SC_OK);
  submit(e, "b", "acme", CONFIG(STEP("s0")));
  settle_loop(&loop);
  assert_string_equal(f.log, "+acme:b -acme:b ");
  release_held(&p, "n");
  settle_loop(&loop);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, NULL), 3);
  assert_int_equal(f.acquires, 1); /* not for the task without a tenant */

  stop_engine(e, &rec, &loop);
}

static void set_lock_provider_refuses_a_provider_missing_a_callback(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  probe p;
  fake_locks f = {0};
  sc_engine *e = start_probed(&loop, NULL, &rec, &p);
  sc_lock_provider prov = fake_provider(&f, 30000, 20);
  prov.acquire = NULL;
  assert_int_equal(sc_engine_set_lock_provider(e, &prov), SC_EINVAL);
  prov = fake_provider(&f, 30000, 20);
  prov.renew = NULL;
  assert_int_equal(sc_engine_set_lock_provider(e, &prov), SC_EINVAL);
  prov = fake_provider(&f, 30000, 20);
  prov.release = NULL;
  assert_int_equal(sc_engine_set_lock_provider(e, &prov), SC_EINVAL);
  assert_int_equal(sc_engine_set_lock_provider(NULL, &prov), SC_EINVAL);

  submit(e, "t", "acme", CONFIG(STEP("s0"))); /* nothing was installed */
  settle_loop(&loop);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, "t"), 1);
  assert_int_equal(f.acquires + f.renews + f.releases, 0);

  stop_engine(e, &rec, &loop);
}

static void null_lock_provider_restores_the_in_process_default(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  probe p;
  fake_locks f = {0};
  sc_engine *e = start_probed(&loop, NULL, &rec, &p);
  install_fake(e, &f, 30000, 20);
  submit(e, "a", "acme", CONFIG(STEP("s0")));
  settle_loop(&loop);
  assert_string_equal(f.log, "+acme:a -acme:a ");

  assert_int_equal(sc_engine_set_lock_provider(e, NULL), SC_OK);
  fake_hold(&f, "acme", "elsewhere"); /* would refuse, if it were still asked */
  sc_task *b = submit(e, "b", "acme", CONFIG(HOLD("h0")));
  sc_task *c = submit(e, "c", "acme", CONFIG(STEP("s0")));
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(b), SC_TASK_RUNNING);
  assert_int_equal(sc_task_get_status(c), SC_TASK_PENDING); /* the in-process lock still holds */
  release_held(&p, "b");
  settle_loop(&loop);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, NULL), 3);
  assert_string_equal(p.order, "a/s0,b/h0,c/s0,");
  assert_int_equal(f.acquires, 1);
  assert_int_equal(f.releases, 1);
  assert_int_equal(f.renews, 0);

  stop_engine(e, &rec, &loop);
}

static void provider_release_is_called_when_a_task_is_cancelled_fails_or_completes(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  probe p;
  fake_locks f = {0};
  sc_engine *e = start_probed(&loop, NULL, &rec, &p);
  install_fake(e, &f, 30000, 20);
  sc_task *x = submit(e, "x", "tx", CONFIG(HOLD("h0")));
  sc_task *y = submit(e, "y", "ty", CONFIG(STAGE_FN("f0", "fail")));
  submit(e, "z", "tz", CONFIG(STEP("s0")));
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(x), SC_TASK_RUNNING);
  assert_int_equal(sc_task_get_status(y), SC_TASK_FAILED);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, "z"), 1);
  assert_int_equal(f.acquires, 3);
  assert_int_equal(f.releases, 2);
  assert_has(f.log, "-ty:y ");
  assert_has(f.log, "-tz:z ");

  assert_int_equal(sc_task_cancel(x, "stop"), SC_OK);
  settle_loop(&loop);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_CANCELLED, "x"), 1);
  assert_int_equal(f.releases, 3);
  assert_has(f.log, "-tx:x ");
  assert_int_equal(f.n, 0);

  sc_task_release(y); /* forgetting a FAILED task releases nothing twice */
  assert_int_equal(f.releases, 3);

  stop_engine(e, &rec, &loop);
}

/* ---- max_active_tasks and tenant_exclusive ---- */

typedef struct concurrency {
  int active, max, completed, other_ends;
  char started[256]; /* task ids in the order they started */
} concurrency;

static int concurrency_on_event(const sc_event *ev, sc_ack *ack, void *udata) {
  (void)ack;
  concurrency *c = udata;
  size_t off = strlen(c->started);
  switch (ev->type) {
    case SC_EV_TASK_STARTED:
      c->active++;
      if (c->active > c->max) c->max = c->active;
      snprintf(c->started + off, sizeof(c->started) - off, "%s,", ev->task_id);
      break;
    case SC_EV_TASK_COMPLETED:
      c->completed++;
      c->active--;
      break;
    case SC_EV_TASK_FAILED:
    case SC_EV_TASK_CANCELLED:
      c->other_ends++;
      c->active--;
      break;
    default: break;
  }
  return SC_OK;
}

static void
max_active_tasks_two_never_runs_more_than_two_and_starts_in_submission_order(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  probe p;
  sc_engine_options o;
  sc_engine_options_init(&o);
  o.max_active_tasks = 2;
  sc_engine *e = start_probed(&loop, &o, NULL, &p);
  concurrency c = {0};
  sc_subscriber s;
  sc_subscriber_init(&s);
  s.on_event = concurrency_on_event;
  s.udata = &c;
  assert_int_equal(sc_engine_subscribe(e, &s, NULL), SC_OK);
  static const char *const ids[] = {"t0", "t1", "t2", "t3", "t4"};
  static const char *const tenants[] = {"a", "b", "c", "d", "e"};
  sc_task *t[5];
  for (int i = 0; i < 5; i++)
    t[i] = submit(e, ids[i], tenants[i], CONFIG(NAP("nap", 20) "," STEP("s1")));

  run_until_status(&loop, t[1], SC_TASK_RUNNING);
  assert_int_equal(sc_task_get_status(t[0]), SC_TASK_RUNNING);
  for (int i = 2; i < 5; i++)
    assert_int_equal(sc_task_get_status(t[i]), SC_TASK_PENDING);

  settle_loop(&loop);
  assert_int_equal(c.completed, 5);
  assert_int_equal(c.other_ends, 0);
  assert_int_equal(c.max, 2);
  assert_string_equal(c.started, "t0,t1,t2,t3,t4,");
  assert_int_equal(sc_engine_task_count(e), 0);

  stop_engine(e, NULL, &loop);
}

static void tenant_exclusive_false_lets_two_tasks_of_one_tenant_run_interleaved(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  probe p;
  sc_engine_options o;
  sc_engine_options_init(&o);
  o.tenant_exclusive = false;
  sc_engine *e = start_probed(&loop, &o, &rec, &p);
  sc_task *a = submit(e, "a", "acme", CONFIG(HOLD("h0") "," STEP("s1")));
  sc_task *b = submit(e, "b", "acme", CONFIG(HOLD("h0") "," STEP("s1")));
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(a), SC_TASK_RUNNING);
  assert_int_equal(sc_task_get_status(b), SC_TASK_RUNNING);
  assert_string_equal(p.order, "a/h0,b/h0,");

  release_held(&p, "b"); /* the later one finishes first */
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(a), SC_TASK_RUNNING);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, "b"), 1);
  release_held(&p, "a");
  settle_loop(&loop);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, "a"), 1);
  assert_string_equal(p.order, "a/h0,b/h0,b/s1,a/s1,");
  assert_true(event_index(&rec, SC_EV_TASK_STARTED, "b") <
              event_index(&rec, SC_EV_TASK_COMPLETED, "a"));

  stop_engine(e, &rec, &loop);
}

static void failed_task_releases_its_tenant_lock_and_its_retry_waits_for_the_tenant(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  probe p;
  sc_engine *e = start_probed(&loop, NULL, &rec, &p);
  p.flaky_failures = 1;
  sc_task *a = submit(e, "a", "acme", CONFIG(STAGE_FN("f0", "flaky")));
  sc_task *b = submit(e, "b", "acme", CONFIG(HOLD("h0")));
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(a), SC_TASK_FAILED);
  assert_int_equal(sc_task_get_status(b), SC_TASK_RUNNING); /* started once a failed */
  assert_true(event_index(&rec, SC_EV_TASK_FAILED, "a") <
              event_index(&rec, SC_EV_TASK_STARTED, "b"));

  assert_int_equal(sc_task_retry(a, NULL, false), SC_EBUSY);
  assert_error_has("acme");
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(a), SC_TASK_FAILED);
  assert_int_equal(sc_task_retry_count(a), 0);

  release_held(&p, "b");
  settle_loop(&loop);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, "b"), 1);
  assert_int_equal(sc_task_retry(a, NULL, false), SC_OK);
  settle_loop(&loop);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, "a"), 1);
  assert_string_equal(p.order, "a/f0,b/h0,a/f0,");
  assert_int_equal(sc_engine_task_count(e), 0);

  stop_engine(e, &rec, &loop);
}

/* ---- pending approvals ---- */

typedef struct waiting {
  sc_task *two, *timed, *rec;
} waiting;

/* Three tasks waiting for approval: "two" (tenant t1, stage 1 needs two approvers, alice approved),
 * "timed" (t2, stage 0 with a timeout) and "rec" (t3, recovered before its irreversible stage 1).
 */
static void three_waiting(uv_loop_t *loop, sc_engine *e, waiting *w) {
  w->two =
      submit(e, "two", "t1",
             CONFIG(STEP("s0") "," GATED("deploy", "{\"required\":true,\"approvers_needed\":2}")));
  cJSON *config = json_or_die(
      CONFIG(STEP("prepare") ",{\"name\":\"charge\",\"kind\":\"fn\",\"params\":{\"fn\":\"step\"},"
                             "\"effect\":\"irreversible\"}"));
  sc_recovery_request r;
  sc_recovery_request_init(&r);
  r.task_id = "rec";
  r.recovered_from = "old";
  r.tenant_id = "t3";
  r.plan_id = "admission";
  r.config = config;
  r.last_completed_stage = "prepare";
  r.mode = SC_RECOVER_RETRY;
  assert_int_equal(sc_recover_from_restart(e, &r, &w->rec), SC_OK);
  cJSON_Delete(config);
  settle_loop(loop);
  assert_int_equal(sc_task_get_status(w->two), SC_TASK_AWAITING_APPROVAL);
  assert_int_equal(sc_task_get_status(w->rec), SC_TASK_AWAITING_APPROVAL);
  assert_int_equal(sc_task_approve(w->two, "deploy", "alice", NULL), SC_OK);
  settle_loop(loop);
  assert_int_equal(sc_task_get_status(w->two), SC_TASK_AWAITING_APPROVAL);

  w->timed =
      submit(e, "timed", "t2", CONFIG(GATED("ship", "{\"required\":true,\"timeout_ms\":600000}")));
  run_until_status(loop, w->timed, SC_TASK_AWAITING_APPROVAL);
}

static const sc_pending_approval *find_pending(const sc_pending_approval *list, size_t n,
                                               const char *task_id) {
  for (size_t i = 0; i < n; i++)
    if (list[i].task_id != NULL && strcmp(list[i].task_id, task_id) == 0) return &list[i];
  fail_msg("task %s is not among the %zu pending approvals", task_id, n);
  return NULL;
}

static void pending_approvals_lists_every_waiting_task_with_its_gate(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  probe p;
  sc_engine *e = start_probed(&loop, NULL, NULL, &p);
  waiting w;
  three_waiting(&loop, e, &w);

  sc_pending_approval list[8];
  memset(list, 0, sizeof(list));
  assert_int_equal(sc_engine_pending_approvals(e, list, 8), 3);

  const sc_pending_approval *two = find_pending(list, 3, "two");
  assert_ptr_equal(two->task, w.two);
  assert_string_equal(two->tenant_id, "t1");
  assert_string_equal(two->stage, "deploy");
  assert_int_equal(two->stage_index, 1);
  assert_string_equal(two->reason, "policy");
  assert_int_equal(two->approvals, 1);
  assert_int_equal(two->approvers_needed, 2);
  assert_true(two->requested_ns > 0);
  assert_int_equal(two->deadline_ns, 0);

  const sc_pending_approval *timed = find_pending(list, 3, "timed");
  assert_ptr_equal(timed->task, w.timed);
  assert_string_equal(timed->tenant_id, "t2");
  assert_string_equal(timed->stage, "ship");
  assert_int_equal(timed->stage_index, 0);
  assert_string_equal(timed->reason, "policy");
  assert_int_equal(timed->approvals, 0);
  assert_int_equal(timed->approvers_needed, 1);
  assert_true(timed->requested_ns > 0);
  assert_true(timed->deadline_ns > timed->requested_ns);
  int64_t window = timed->deadline_ns - timed->requested_ns;
  assert_true(window == (int64_t)600000 * 1000000);

  const sc_pending_approval *rec = find_pending(list, 3, "rec");
  assert_ptr_equal(rec->task, w.rec);
  assert_string_equal(rec->tenant_id, "t3");
  assert_string_equal(rec->stage, "charge");
  assert_int_equal(rec->stage_index, 1);
  assert_string_equal(rec->reason, "irreversible-stage-in-flight");
  assert_int_equal(rec->approvals, 0);
  assert_int_equal(rec->approvers_needed, 1);
  assert_int_equal(rec->deadline_ns, 0);

  stop_engine(e, NULL, &loop);
}

static void pending_approvals_fills_at_most_cap_entries_and_returns_the_total(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  probe p;
  sc_engine *e = start_probed(&loop, NULL, NULL, &p);
  waiting w;
  three_waiting(&loop, e, &w);

  assert_int_equal(sc_engine_pending_approvals(e, NULL, 0), 3);
  assert_int_equal(sc_engine_pending_approvals(e, NULL, 8), 3); /* out NULL: counts only */

  static const char sentinel[] = "untouched";
  sc_pending_approval list[3];
  memset(list, 0, sizeof(list));
  list[2].task_id = sentinel;
  list[2].stage_index = -42;
  assert_int_equal(sc_engine_pending_approvals(e, list, 2), 3);
  assert_non_null(list[0].task_id);
  assert_non_null(list[1].task_id);
  assert_string_not_equal(list[0].task_id, list[1].task_id);
  assert_ptr_equal(list[2].task_id, sentinel);
  assert_int_equal(list[2].stage_index, -42);

  list[0].task_id = sentinel;
  assert_int_equal(sc_engine_pending_approvals(e, list, 0), 3);
  assert_ptr_equal(list[0].task_id, sentinel);

  stop_engine(e, NULL, &loop);
}

static void pending_approvals_shrink_as_tasks_are_approved(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  probe p;
  sc_engine *e = start_probed(&loop, NULL, NULL, &p);
  waiting w;
  three_waiting(&loop, e, &w);
  assert_int_equal(sc_engine_pending_approvals(e, NULL, 0), 3);

  assert_int_equal(sc_task_approve(w.timed, "ship", "alice", NULL), SC_OK);
  settle_loop(&loop); /* the deadline timer stops with the approval */
  assert_null(sc_engine_find_task(e, "timed"));
  sc_pending_approval list[4];
  assert_int_equal(sc_engine_pending_approvals(e, list, 4), 2);
  find_pending(list, 2, "two");
  find_pending(list, 2, "rec");

  assert_int_equal(sc_task_approve(w.two, "deploy", "bob", NULL), SC_OK);
  settle_loop(&loop);
  assert_int_equal(sc_engine_pending_approvals(e, list, 4), 1);
  assert_string_equal(list[0].task_id, "rec");

  assert_int_equal(sc_task_approve(w.rec, "charge", "alice", NULL), SC_OK);
  settle_loop(&loop);
  assert_int_equal(sc_engine_pending_approvals(e, list, 4), 0);
  assert_int_equal(sc_engine_task_count(e), 0);

  stop_engine(e, NULL, &loop);
}

/* ---- many tasks ---- */

#define MANY 100000

static int count_event(const sc_event *ev, sc_ack *ack, void *udata) {
  (void)ev;
  (void)ack;
  (*(size_t *)udata)++;
  return SC_OK;
}

static int count_step(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  sc_stage_complete(ctx, NULL);
  return SC_OK;
}

static void hundred_thousand_tasks_wait_for_approval_and_all_complete_once_approved(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = start_engine(&loop, NULL, NULL);
  assert_int_equal(sc_engine_register_fn(e, "step", count_step, NULL), SC_OK);
  size_t requested = 0, completed = 0;
  sc_subscriber s;
  sc_subscriber_init(&s);
  s.mask = 1ull << SC_EV_APPROVAL_REQUESTED;
  s.on_event = count_event;
  s.udata = &requested;
  assert_int_equal(sc_engine_subscribe(e, &s, NULL), SC_OK);
  s.mask = 1ull << SC_EV_TASK_COMPLETED;
  s.udata = &completed;
  assert_int_equal(sc_engine_subscribe(e, &s, NULL), SC_OK);

  cJSON *config = json_or_die(CONFIG(GATED("gate", "{\"required\":true}") "," STEP("work")));
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.plan_id = "many";
  spec.config = config;
  sc_task **tasks = malloc(MANY * sizeof(*tasks));
  assert_non_null(tasks);
  for (size_t i = 0; i < MANY; i++)
    assert_int_equal(sc_task_submit(e, &spec, &tasks[i]), SC_OK);
  cJSON_Delete(config);
  assert_int_equal(sc_engine_task_count(e), MANY);

  for (int i = 0; i < 1000 && uv_loop_alive(&loop); i++)
    uv_run(&loop, UV_RUN_ONCE);
  assert_false(uv_loop_alive(&loop));
  assert_int_equal(requested, MANY);
  assert_int_equal(sc_engine_pending_approvals(e, NULL, 0), MANY);
  for (size_t i = 0; i < MANY; i++)
    assert_int_equal(sc_task_get_status(tasks[i]), SC_TASK_AWAITING_APPROVAL);

  for (size_t i = 0; i < MANY; i++)
    assert_int_equal(sc_task_approve(tasks[i], NULL, "alice", NULL), SC_OK);
  free(tasks);
  for (int i = 0; i < 1000 && uv_loop_alive(&loop); i++)
    uv_run(&loop, UV_RUN_ONCE);
  assert_false(uv_loop_alive(&loop));
  assert_int_equal(completed, MANY);
  assert_int_equal(sc_engine_task_count(e), 0);
  assert_int_equal(sc_engine_pending_approvals(e, NULL, 0), 0);

  stop_engine(e, NULL, &loop);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(
          provider_is_asked_once_per_task_with_the_task_id_and_tenant_tasks_still_run_in_turn),
      cmocka_unit_test(busy_provider_keeps_the_task_pending_and_is_asked_again_every_retry_ms),
      cmocka_unit_test(provider_lock_is_renewed_about_every_third_of_the_ttl_while_a_stage_runs),
      cmocka_unit_test(lost_lock_pauses_at_the_next_stage_boundary_and_resume_needs_the_lock_again),
      cmocka_unit_test(renewing_goes_on_after_a_resumed_task_took_its_lock_again),
      cmocka_unit_test(a_paused_task_that_loses_its_lock_resumes_once_it_has_it_again),
      cmocka_unit_test(set_lock_provider_is_refused_while_a_tenant_lock_is_held),
      cmocka_unit_test(set_lock_provider_refuses_a_provider_missing_a_callback),
      cmocka_unit_test(null_lock_provider_restores_the_in_process_default),
      cmocka_unit_test(provider_release_is_called_when_a_task_is_cancelled_fails_or_completes),
      cmocka_unit_test(
          max_active_tasks_two_never_runs_more_than_two_and_starts_in_submission_order),
      cmocka_unit_test(tenant_exclusive_false_lets_two_tasks_of_one_tenant_run_interleaved),
      cmocka_unit_test(failed_task_releases_its_tenant_lock_and_its_retry_waits_for_the_tenant),
      cmocka_unit_test(pending_approvals_lists_every_waiting_task_with_its_gate),
      cmocka_unit_test(pending_approvals_fills_at_most_cap_entries_and_returns_the_total),
      cmocka_unit_test(pending_approvals_shrink_as_tasks_are_approved),
      cmocka_unit_test(hundred_thousand_tasks_wait_for_approval_and_all_complete_once_approved),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
