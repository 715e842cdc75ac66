/* Task lifetime: references keep a handle readable after the engine lets the task go (terminal
 * event, release, engine free), control calls on such a handle are refused, and sc_engine_run
 * returns what the loop returned. Run under AddressSanitizer, a case that read freed memory or
 * leaked a task fails. */
#include <stdbool.h>
#include <stdint.h>

#include "harness.h"

#define STAGE_FN(name, fn) "{\"name\":\"" name "\",\"kind\":\"fn\",\"params\":{\"fn\":\"" fn "\"}}"
#define STEP(name)         STAGE_FN(name, "step")
#define HOLD(name)         "{\"name\":\"" name "\",\"kind\":\"hold\"}"
#define GATED(name)                                                                                \
  "{\"name\":\"" name                                                                              \
  "\",\"kind\":\"fn\",\"params\":{\"fn\":\"step\"},\"approval\":{\"required\":"                    \
  "true}}"
#define CONFIG(version, ...) "{\"version\":\"" version "\",\"stages\":[" __VA_ARGS__ "]}"

/* The "hold" stage in flight, finished by the test (or cancelled by the engine). */
typedef struct holder {
  sc_stage_ctx *held;
  int cancels;
} holder;

/* Completes with {"<stage name>": <index>}. */
static int step_fn(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  cJSON *out = cJSON_CreateObject();
  cJSON_AddNumberToObject(out, sc_stage_name(ctx), sc_stage_index(ctx));
  sc_stage_complete(ctx, out);
  return SC_OK;
}

static int fail_fn(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  sc_stage_fail(ctx, SC_EIO, "boom", false);
  return SC_OK;
}

static int hold_start(sc_stage_ctx *ctx, void *udata) {
  ((holder *)udata)->held = ctx;
  return SC_OK;
}

static void hold_cancel(sc_stage_ctx *ctx, void *udata) {
  holder *h = udata;
  h->cancels++;
  if (h->held == ctx) h->held = NULL;
  sc_stage_fail(ctx, SC_ECANCELLED, "held stage cancelled", false);
}

static sc_engine *start(uv_loop_t *loop, const sc_engine_options *opts, recorder *rec, holder *h) {
  assert_int_equal(uv_loop_init(loop), 0);
  sc_engine *e = start_engine(loop, opts, rec);
  memset(h, 0, sizeof(*h));
  static const sc_stage_kind hold = {SC_STAGE_KIND_VERSION, hold_start, hold_cancel, NULL};
  assert_int_equal(sc_engine_register_kind(e, "hold", &hold, h), SC_OK);
  assert_int_equal(sc_engine_register_fn(e, "step", step_fn, NULL), SC_OK);
  assert_int_equal(sc_engine_register_fn(e, "fail", fail_fn, NULL), SC_OK);
  return e;
}

/* Each task is its own tenant, so that none waits for another's tenant lock. */
static sc_task *submit(sc_engine *e, const char *id, const char *config, const char *previous) {
  return submit_text(e, id, id, "lifetime", config, previous);
}

/* Every control call on t is refused with SC_ETRANSITION and a message naming status. */
static void assert_every_control_call_refused(sc_task *t, const char *status) {
  struct {
    const char *op;
    int rc;
  } calls[] = {
      {"pause", sc_task_pause(t)},
      {"resume", sc_task_resume(t)},
      {"cancel", sc_task_cancel(t, "late")},
      {"approve", sc_task_approve(t, NULL, "ann", NULL)},
      {"reject", sc_task_reject(t, NULL, "ann", NULL)},
      {"retry", sc_task_retry(t, NULL, false)},
      {"rollback", sc_task_rollback(t, SC_ROLLBACK_REDEPLOY)},
      {"compensate", sc_task_rollback(t, SC_ROLLBACK_COMPENSATE)},
      {"release", sc_task_release(t)},
  };
  for (size_t i = 0; i < sizeof(calls) / sizeof(calls[0]); i++) {
    if (calls[i].rc != SC_ETRANSITION)
      fail_msg("%s on a let-go task returned %s", calls[i].op, sc_err_name(calls[i].rc));
  }
  /* Each call left its own message; the last one (release) stands for all. */
  assert_error_has(status);
  assert_error_has("let it go");
  assert_int_equal(sc_task_pause(t), SC_ETRANSITION);
  assert_error_has(status);
}

static const char *context_member(const sc_task *t, const char *key, char *buf, size_t cap) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(sc_task_context(t), key);
  snprintf(buf, cap, "%s", cJSON_IsNumber(v) ? "number" : v ? "other" : "absent");
  return buf;
}

/* ---- the case of the issue: rollback, run the loop, read the status ---- */

static void a_referenced_task_reads_rolled_back_after_the_loop_let_it_go(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  holder h;
  sc_engine *e = start(&loop, NULL, &rec, &h);
  sc_task *f = submit(e, "f", CONFIG("2", STEP("s0") "," STAGE_FN("s1", "fail")),
                      CONFIG("1", STEP("s0") "," STEP("s1")));
  sc_task_ref(f);
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(f), SC_TASK_FAILED);

  assert_int_equal(sc_task_rollback(f, SC_ROLLBACK_REDEPLOY), SC_OK);
  assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
  /* The engine let the task go once rollback.completed was delivered; the handle stays. */
  assert_int_equal(recorder_count(&rec, SC_EV_ROLLBACK_COMPLETED, "f"), 1);
  assert_int_equal(sc_task_get_status(f), SC_TASK_ROLLED_BACK);
  assert_string_equal(sc_task_id(f), "f");
  assert_string_equal(sc_task_tenant(f), "f");
  assert_int_equal(sc_task_retry_count(f), 0);
  char buf[16];
  assert_string_equal(context_member(f, "s0", buf, sizeof(buf)), "number");
  assert_null(sc_engine_find_task(e, "f"));
  assert_int_equal(sc_engine_task_count(e), 0);
  assert_every_control_call_refused(f, "ROLLED_BACK");

  sc_task_unref(f); /* frees it: ASan's leak check would catch a task left behind */
  stop_engine(e, &rec, &loop);
}

/* ---- references before and after the end ---- */

static void ref_then_unref_before_the_end_leaves_the_task_to_the_engine(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  holder h;
  sc_engine *e = start(&loop, NULL, &rec, &h);
  sc_task *t = submit(e, "t", CONFIG("1", HOLD("h0") "," STEP("s1")), NULL);
  settle_loop(&loop);
  sc_task_ref(t);
  sc_task_unref(t); /* still held by the engine: nothing is freed */
  assert_ptr_equal(sc_engine_find_task(e, "t"), t);
  assert_int_equal(sc_task_get_status(t), SC_TASK_RUNNING);
  sc_stage_complete(h.held, NULL);
  settle_loop(&loop);
  /* Without a reference the engine freed it at its end; the id is free again. */
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, "t"), 1);
  assert_null(sc_engine_find_task(e, "t"));
  assert_int_equal(sc_engine_task_count(e), 0);
  stop_engine(e, &rec, &loop);
}

static void two_references_need_two_unrefs(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  holder h;
  sc_engine *e = start(&loop, NULL, &rec, &h);
  sc_task *t = submit(e, "t", CONFIG("1", STEP("s0")), NULL);
  sc_task_ref(t);
  sc_task_ref(t);
  settle_loop(&loop);
  assert_null(sc_engine_find_task(e, "t"));
  sc_task_unref(t);
  /* One reference is left: still readable. */
  assert_int_equal(sc_task_get_status(t), SC_TASK_COMPLETED);
  assert_string_equal(sc_task_id(t), "t");
  sc_task_unref(t);
  stop_engine(e, &rec, &loop);
}

static void null_ref_and_unref_are_no_ops_and_a_stray_unref_is_ignored(void **state) {
  (void)state;
  sc_task_ref(NULL);
  sc_task_unref(NULL);
  uv_loop_t loop;
  recorder rec;
  holder h;
  logbook log;
  sc_engine_options o;
  logbook_options(&o, &log);
  sc_engine *e = start(&loop, &o, &rec, &h);
  sc_task *t = submit(e, "t", CONFIG("1", HOLD("h0")), NULL);
  settle_loop(&loop);
  sc_task_unref(t); /* no reference was taken: nothing happens but a line in the log */
  assert_true(logbook_has(&log, "without a reference"));
  assert_ptr_equal(sc_engine_find_task(e, "t"), t);
  assert_int_equal(sc_task_get_status(t), SC_TASK_RUNNING);
  stop_engine(e, &rec, &loop);
  assert_int_equal(h.cancels, 1);
}

static void a_submitted_task_with_the_id_of_a_let_go_one_is_a_new_task(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  holder h;
  sc_engine *e = start(&loop, NULL, &rec, &h);
  sc_task *old = submit(e, "same", CONFIG("1", STEP("s0")), NULL);
  sc_task_ref(old);
  settle_loop(&loop);
  sc_task *again = submit(e, "same", CONFIG("1", HOLD("h0")), NULL);
  settle_loop(&loop);
  assert_ptr_not_equal(old, again);
  assert_ptr_equal(sc_engine_find_task(e, "same"), again);
  assert_int_equal(sc_task_get_status(old), SC_TASK_COMPLETED);
  assert_int_equal(sc_task_get_status(again), SC_TASK_RUNNING);
  assert_int_equal(sc_task_pause(old), SC_ETRANSITION);
  assert_int_equal(sc_task_pause(again), SC_OK); /* the refusal is about the old handle only */
  sc_task_unref(old);
  stop_engine(e, &rec, &loop);
}

/* ---- the engine goes first ---- */

static void unref_after_engine_free_frees_a_task_the_engine_stopped(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  holder h;
  sc_engine *e = start(&loop, NULL, &rec, &h);
  sc_task *t = submit(e, "t", CONFIG("1", STEP("s0") "," HOLD("h1")), NULL);
  sc_task *bare = submit(e, "bare", CONFIG("1", GATED("g0")), NULL);
  sc_task_ref(t);
  sc_task_ref(bare);
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(t), SC_TASK_RUNNING);
  assert_int_equal(sc_task_get_status(bare), SC_TASK_AWAITING_APPROVAL);
  stop_engine(e, &rec, &loop);
  assert_int_equal(h.cancels, 1);

  /* The engine is gone; the handles are not. Their last status is what they read. */
  assert_string_equal(sc_task_id(t), "t");
  assert_int_equal(sc_task_get_status(t), SC_TASK_RUNNING);
  assert_int_equal(sc_task_stage_index(t), 1);
  assert_int_equal(sc_task_stage_count(t), 2);
  assert_non_null(sc_task_fingerprint(t));
  char buf[16];
  assert_string_equal(context_member(t, "s0", buf, sizeof(buf)), "number");
  assert_every_control_call_refused(t, "RUNNING");
  /* A task without a context reads {} without its engine. */
  const cJSON *empty = sc_task_context(bare);
  assert_true(cJSON_IsObject(empty));
  assert_null(empty->child);
  assert_every_control_call_refused(bare, "AWAITING_APPROVAL");
  sc_task_unref(t);
  sc_task_unref(bare);
}

static void a_released_task_with_a_reference_reads_failed(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  holder h;
  sc_engine *e = start(&loop, NULL, &rec, &h);
  sc_task *t = submit(e, "t", CONFIG("1", STAGE_FN("f0", "fail")), NULL);
  sc_task_ref(t);
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(t), SC_TASK_FAILED);
  assert_int_equal(sc_task_release(t), SC_OK);
  /* Being released: nothing else is accepted, not even a second release. */
  assert_int_equal(sc_task_release(t), SC_ETRANSITION);
  assert_error_has("being released");
  assert_int_equal(sc_task_retry(t, NULL, false), SC_ETRANSITION);
  settle_loop(&loop);
  assert_null(sc_engine_find_task(e, "t"));
  assert_int_equal(sc_task_get_status(t), SC_TASK_FAILED);
  assert_every_control_call_refused(t, "FAILED");
  sc_task_unref(t);
  stop_engine(e, &rec, &loop);
}

/* ---- sc_task_release refuses a wrong state ---- */

static void release_refuses_a_task_that_is_not_failed(void **state) {
  (void)state;
  assert_int_equal(sc_task_release(NULL), SC_EINVAL);
  uv_loop_t loop;
  recorder rec;
  holder h;
  sc_engine *e = start(&loop, NULL, &rec, &h);
  sc_task *t = submit(e, "t", CONFIG("1", HOLD("h0")), NULL);
  settle_loop(&loop);
  assert_int_equal(sc_task_release(t), SC_ETRANSITION);
  assert_error_has("RUNNING");
  assert_ptr_equal(sc_engine_find_task(e, "t"), t);

  /* A FAILED task with a retry asked for is about to run again: not released. */
  sc_task *f = submit(e, "f", CONFIG("1", STAGE_FN("f0", "fail")), NULL);
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(f), SC_TASK_FAILED);
  assert_int_equal(sc_task_retry(f, NULL, false), SC_OK);
  assert_int_equal(sc_task_release(f), SC_ETRANSITION);
  assert_error_has("retry");
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(f), SC_TASK_FAILED);
  assert_int_equal(sc_task_retry_count(f), 1);
  assert_int_equal(sc_task_release(f), SC_OK);
  settle_loop(&loop);
  assert_null(sc_engine_find_task(e, "f"));
  stop_engine(e, &rec, &loop);
}

/* ---- calls from inside the event stream ---- */

/* Takes a reference to the task and releases it from inside its task.failed. */
typedef struct releaser {
  sc_engine *e;
  sc_task *task;
  int release_rc;
} releaser;

static int release_on_failed(const sc_event *ev, sc_ack *ack, void *udata) {
  (void)ack;
  releaser *r = udata;
  if (ev->type != SC_EV_TASK_FAILED) return SC_OK;
  r->task = sc_engine_find_task(r->e, ev->task_id);
  assert_non_null(r->task);
  sc_task_ref(r->task);
  r->release_rc = sc_task_release(r->task);
  return SC_OK;
}

static void a_release_asked_inside_task_failed_waits_for_the_deferred_acks(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  holder h;
  sc_engine *e = start(&loop, NULL, &rec, &h);
  rec.defer = 1;
  rec.defer_mask = 1ull << SC_EV_TASK_FAILED;
  releaser r = {e, NULL, 1};
  sc_subscriber s;
  sc_subscriber_init(&s);
  s.on_event = release_on_failed;
  s.udata = &r;
  assert_int_equal(sc_engine_subscribe(e, &s, NULL), SC_OK);
  sc_task *t = submit(e, "t", CONFIG("1", STAGE_FN("f0", "fail")), NULL);
  settle_loop(&loop);
  assert_int_equal(r.release_rc, SC_OK);
  assert_ptr_equal(r.task, t);
  /* task.failed is not acknowledged yet: the engine still holds the task. */
  assert_ptr_equal(sc_engine_find_task(e, "t"), t);
  assert_int_equal(recorder_ack_all(&rec, SC_OK), 1);
  settle_loop(&loop);
  assert_null(sc_engine_find_task(e, "t"));
  assert_int_equal(sc_task_get_status(t), SC_TASK_FAILED);
  assert_every_control_call_refused(t, "FAILED");
  sc_task_unref(t);
  stop_engine(e, &rec, &loop);
}

static void a_failed_ack_of_the_terminal_event_still_lets_a_referenced_task_go(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  holder h;
  logbook log;
  sc_engine_options o;
  logbook_options(&o, &log);
  sc_engine *e = start(&loop, &o, &rec, &h);
  rec.defer = 1;
  rec.defer_mask = 1ull << SC_EV_TASK_COMPLETED;
  sc_task *t = submit(e, "t", CONFIG("1", STEP("s0")), NULL);
  sc_task_ref(t);
  settle_loop(&loop);
  assert_ptr_equal(sc_engine_find_task(e, "t"), t);
  assert_int_equal(recorder_ack_all(&rec, SC_EIO), 1);
  settle_loop(&loop);
  assert_true(logbook_has(&log, "was not stored"));
  assert_null(sc_engine_find_task(e, "t"));
  assert_int_equal(sc_task_get_status(t), SC_TASK_COMPLETED);
  sc_task_unref(t);
  stop_engine(e, &rec, &loop);
}

static void a_pending_task_referenced_across_engine_free_reads_pending(void **state) {
  (void)state;
  uv_loop_t loop;
  recorder rec;
  holder h;
  sc_engine *e = start(&loop, NULL, &rec, &h);
  sc_task *first = submit_text(e, "first", "acme", "lifetime", CONFIG("1", HOLD("h0")), NULL);
  sc_task *second = submit_text(e, "second", "acme", "lifetime", CONFIG("1", STEP("s0")), NULL);
  sc_task_ref(second);
  sc_task_ref(second);
  settle_loop(&loop);
  assert_int_equal(sc_task_get_status(first), SC_TASK_RUNNING);
  assert_int_equal(sc_task_get_status(second), SC_TASK_PENDING);
  stop_engine(e, &rec, &loop);
  assert_int_equal(sc_task_get_status(second), SC_TASK_PENDING);
  assert_every_control_call_refused(second, "PENDING");
  sc_task_unref(second);
  assert_string_equal(sc_task_id(second), "second"); /* one reference left */
  sc_task_unref(second);
}

/* ---- sc_engine_run returns what the loop returned ---- */

typedef struct stopper {
  uv_timer_t keep; /* a referenced timer that keeps the loop alive */
  int started;
} stopper;

static void never(uv_timer_t *t) {
  (void)t;
}

/* Stops the loop while a referenced handle of its own is still active. */
static int stop_fn(sc_stage_ctx *ctx, void *udata) {
  stopper *s = udata;
  if (!s->started++) {
    uv_timer_init(sc_stage_loop(ctx), &s->keep);
    uv_timer_start(&s->keep, never, 60000, 0);
  }
  uv_stop(sc_stage_loop(ctx));
  sc_stage_complete(ctx, NULL);
  return SC_OK;
}

static void engine_run_returns_what_the_loop_returned(void **state) {
  (void)state;
  assert_int_equal(sc_engine_run(NULL), SC_EINVAL);
  sc_engine *e = start_engine(NULL, NULL, NULL);
  stopper s = {0};
  assert_int_equal(sc_engine_register_fn(e, "stop", stop_fn, &s), SC_OK);
  assert_int_equal(sc_engine_register_fn(e, "step", step_fn, NULL), SC_OK);
  cJSON *c = json_or_die(CONFIG("1", STEP("s0")));
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.config = c;
  submit_or_fail(e, &spec);
  assert_int_equal(sc_engine_run(e), 0); /* the task completed: nothing keeps the loop */
  cJSON_Delete(c);

  c = json_or_die(CONFIG("1", STAGE_FN("s0", "stop")));
  spec.config = c;
  submit_or_fail(e, &spec);
  /* Stopped while the stage's timer still holds the loop: uv_run's non-zero comes back. */
  assert_int_not_equal(sc_engine_run(e), 0);
  assert_int_equal(s.started, 1);
  uv_close((uv_handle_t *)&s.keep, NULL);
  assert_int_equal(sc_engine_run(e), 0);
  cJSON_Delete(c);
  sc_engine_free(e);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(a_referenced_task_reads_rolled_back_after_the_loop_let_it_go),
      cmocka_unit_test(ref_then_unref_before_the_end_leaves_the_task_to_the_engine),
      cmocka_unit_test(two_references_need_two_unrefs),
      cmocka_unit_test(null_ref_and_unref_are_no_ops_and_a_stray_unref_is_ignored),
      cmocka_unit_test(a_submitted_task_with_the_id_of_a_let_go_one_is_a_new_task),
      cmocka_unit_test(unref_after_engine_free_frees_a_task_the_engine_stopped),
      cmocka_unit_test(a_released_task_with_a_reference_reads_failed),
      cmocka_unit_test(release_refuses_a_task_that_is_not_failed),
      cmocka_unit_test(a_release_asked_inside_task_failed_waits_for_the_deferred_acks),
      cmocka_unit_test(a_failed_ack_of_the_terminal_event_still_lets_a_referenced_task_go),
      cmocka_unit_test(a_pending_task_referenced_across_engine_free_reads_pending),
      cmocka_unit_test(engine_run_returns_what_the_loop_returned),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
