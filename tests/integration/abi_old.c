/* A program built against older headers, run against the current shared library (docs/design.md,
 * "ABI"). The structs below are copied as they were in the version before a field was added:
 * sc_task_spec and sc_recovery_request version 1 (before tracestate, root_task_id and intent),
 * sc_jsonl_options version 1 (before existing). Each lives in a heap block of exactly its old
 * size, so that AddressSanitizer reports any read of the library past it; the test also checks
 * that the library gave the fields the old version lacks their defaults, and that the inline
 * _init() of today's headers fills only the struct it is given. The arrays the library hands back
 * (sc_jsonl_scan's, sc_engine_pending_approvals') and the report it fills are read with this
 * program's sizeof, entry by entry. Speaks TAP. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include <stagecoach/jsonl.h>
#include <stagecoach/stagecoach.h>

/* sc_task_spec as version 1 had it. */
typedef struct old_task_spec {
  unsigned version;
  const char *task_id;
  const char *tenant_id, *plan_id;
  const cJSON *config, *previous_config;
  const cJSON *context;
  const char *traceparent;
} old_task_spec;

/* sc_recovery_request as version 1 had it. */
typedef struct old_recovery_request {
  unsigned version;
  const char *task_id;
  const char *recovered_from;
  const char *tenant_id, *plan_id;
  const cJSON *config;
  const cJSON *previous_config;
  const char *last_completed_stage;
  sc_recovery_mode mode;
  const cJSON *context;
  const char *context_digest;
  const char *plan_fingerprint;
  const char *traceparent;
  uint64_t epoch;
} old_recovery_request;

/* sc_jsonl_options as version 1 had it. */
typedef struct old_jsonl_options {
  unsigned version;
  sc_fsync_mode fsync;
  size_t buffer_bytes;
  void (*log)(const char *message, void *udata);
  void *log_udata;
} old_jsonl_options;

static int tests_run, tests_failed;

/* A heap block of exactly n bytes (the test cannot go on without it). */
static void *block(size_t n) {
  void *p = malloc(n);
  if (p == NULL) {
    printf("Bail out! out of memory\n");
    exit(1);
  }
  return p;
}

static void check(int ok, const char *what) {
  tests_run++;
  if (!ok) tests_failed++;
  printf("%sok %d - %s\n", ok ? "" : "not ", tests_run, what);
  if (!ok) printf("# last error: %s\n", sc_error_message());
}

/* The ids of the tasks that completed, as task.completed events name them. */
static char completed[4][32];
static int ncompleted;

static int on_event(const sc_event *ev, sc_ack *ack, void *udata) {
  (void)ack;
  (void)udata;
  if (ev->type == SC_EV_TASK_COMPLETED && ncompleted < 4)
    snprintf(completed[ncompleted++], sizeof(completed[0]), "%s", ev->task_id);
  return SC_OK;
}

static int was_completed(const char *id) {
  for (int i = 0; i < ncompleted; i++)
    if (strcmp(completed[i], id) == 0) return 1;
  return 0;
}

static int stage_ok(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  sc_stage_complete(ctx, cJSON_Parse("{\"done\":true}"));
  return SC_OK;
}

/* Runs the loop until nothing is in flight, at most a bounded number of turns. */
static void run_bounded(uv_loop_t *loop) {
  for (int i = 0; i < 1000 && uv_run(loop, UV_RUN_NOWAIT) != 0; i++)
    usleep(1000);
}

/* A factory of one stage, spoiled as udata says: 0 not at all, 1 the spec's version, 2 the retry
 * policy's, 3 the approval policy's. */
static int spoiled_factory(const cJSON *config, sc_plan_builder *b, void *udata) {
  (void)config;
  int which = *(const int *)udata;
  sc_stage_spec spec;
  sc_stage_spec_init(&spec);
  spec.name = "a";
  spec.kind = "fn";
  cJSON *params = cJSON_Parse("{\"fn\":\"ok\"}");
  spec.params = params;
  if (which == 1) spec.version = SC_STAGE_SPEC_VERSION + 1;
  if (which == 2) spec.retry.version = 0; /* a policy that was never set up */
  if (which == 3) spec.approval.version = SC_APPROVAL_POLICY_VERSION + 1;
  int rc = sc_plan_add_stage(b, &spec); /* copies params */
  cJSON_Delete(params);
  return rc;
}

/* Whether the plan of spoiled_factory(which) is refused, with the field named. */
static int refused_naming(int which, const char *field) {
  char fingerprint[72];
  int rc = sc_plan_fingerprint(spoiled_factory, &which, NULL, fingerprint);
  return rc < 0 && strstr(sc_error_message(), field) != NULL;
}

int main(void) {
  printf("1..26\n");
  uv_loop_t loop;
  uv_loop_init(&loop);
  cJSON *config =
      cJSON_Parse("{\"stages\":[{\"name\":\"a\",\"kind\":\"fn\",\"params\":{\"fn\":\"ok\"}}]}");

  /* The engine options in a block of exactly their size, filled by the inline _init(). */
  sc_engine_options *opts = block(sizeof(*opts));
  sc_engine_options_init(opts);
  check(opts->version == SC_ENGINE_OPTIONS_VERSION && opts->tenant_exclusive,
        "sc_engine_options_init fills the caller's struct with the defaults");
  sc_engine *e = NULL;
  check(sc_engine_new(&loop, opts, &e) == SC_OK, "an engine is created from those options");
  free(opts);
  sc_engine_register_fn(e, "ok", stage_ok, NULL);
  sc_subscriber *sub = block(sizeof(*sub));
  sc_subscriber_init(sub);
  sub->on_event = on_event;
  sc_engine_subscribe(e, sub, NULL);
  free(sub);

  /* A version 1 task spec: the library must not read tracestate, which it does not have. */
  old_task_spec *spec = block(sizeof(*spec));
  memset(spec, 0, sizeof(*spec));
  spec->version = 1;
  spec->task_id = "old-spec";
  spec->tenant_id = "acme";
  spec->config = config;
  sc_task *t = NULL;
  check(sc_task_submit(e, (const sc_task_spec *)spec, &t) == SC_OK,
        "a version 1 sc_task_spec is accepted");
  free(spec);
  check(t != NULL && sc_task_tracestate(t) == NULL,
        "the task of a version 1 spec has no tracestate (the default)");
  run_bounded(&loop);
  check(was_completed("old-spec"), "the task of a version 1 spec runs to COMPLETED");

  /* A version 1 recovery request: no root_task_id, intent or tracestate. */
  old_recovery_request *req = block(sizeof(*req));
  memset(req, 0, sizeof(*req));
  req->version = 1;
  req->task_id = "old-recovered";
  req->recovered_from = "stopped-task";
  req->tenant_id = "acme";
  req->config = config;
  req->mode = SC_RECOVER_RETRY;
  req->epoch = 3;
  t = NULL;
  check(sc_recover_from_restart(e, (const sc_recovery_request *)req, &t) == SC_OK,
        "a version 1 sc_recovery_request is accepted");
  free(req);
  check(t != NULL && strcmp(sc_task_root_id(t), "stopped-task") == 0,
        "its root task id defaults to recovered_from");
  check(t != NULL && sc_task_intent(t) == 0 && sc_task_tracestate(t) == NULL,
        "its intent defaults to 0 and its tracestate to none");
  check(t != NULL && sc_task_epoch(t) == 4, "its epoch is the stopped task's plus one");
  run_bounded(&loop);
  check(was_completed("old-recovered"), "the recovered task runs to COMPLETED");

  /* A version 1 log options struct: no "existing", so a missing log is created. */
  char path[] = "/tmp/stagecoach-abi-XXXXXX";
  int fd = mkstemp(path);
  if (fd >= 0) close(fd);
  unlink(path);
  old_jsonl_options *jo = block(sizeof(*jo));
  memset(jo, 0, sizeof(*jo));
  jo->version = 1;
  jo->fsync = SC_FSYNC_NONE;
  jo->buffer_bytes = 4096;
  sc_jsonl *log = NULL;
  check(sc_jsonl_open(e, path, (const sc_jsonl_options *)jo, &log) == SC_OK,
        "a version 1 sc_jsonl_options is accepted and creates the missing log");
  free(jo);
  check(access(path, F_OK) == 0, "the log file exists");
  check(sc_jsonl_close(log) == SC_OK, "the log closes");
  unlink(path);

  /* A version the library does not know is refused, not half read. */
  sc_task_spec future;
  sc_task_spec_init(&future);
  future.version = SC_TASK_SPEC_VERSION + 1;
  future.config = config;
  check(sc_task_submit(e, &future, NULL) == SC_EINVAL, "a newer sc_task_spec version is refused");

  /* The stage spec and its policies, filled by the inline _init()s (a write past the struct would
   * be a stack-buffer-overflow). */
  sc_stage_spec st;
  sc_stage_spec_init(&st);
  check(st.version == SC_STAGE_SPEC_VERSION && st.retry.version == SC_RETRY_POLICY_VERSION &&
            st.approval.version == SC_APPROVAL_POLICY_VERSION && st.retry.multiplier == 2.0 &&
            st.approval.approvers_needed == 1 && st.approval.on_reject == SC_ACTION_CANCEL,
        "sc_stage_spec_init fills the spec and both policies with their versions and defaults");

  int none = 0;
  char fingerprint[72];
  check(sc_plan_fingerprint(spoiled_factory, &none, NULL, fingerprint) == SC_OK,
        "a stage spec from sc_stage_spec_init is accepted");
  check(refused_naming(1, "\"version\""), "a stage spec of a later version is refused");
  check(refused_naming(2, "\"retry.version\""),
        "a retry policy that was never set up (version 0) is refused, naming retry.version");
  check(refused_naming(3, "\"approval.version\""),
        "an approval policy of a later version is refused, naming approval.version");

  /* Arrays the library hands back, stepped through with this program's sizeof: two tasks wait at
   * an approval gate, logged; the pending approvals go into a block of exactly one entry, the
   * scan's array and the report are read entry by entry (a wrong element size would read the
   * second entry from the middle of the first). */
  check(sizeof(sc_unfinished) == SC_UNFINISHED_SIZE || sizeof(void *) != 8,
        "sc_unfinished has the size the soversion promises");
  char gpath[] = "/tmp/stagecoach-abi-gate-XXXXXX";
  fd = mkstemp(gpath);
  if (fd >= 0) close(fd);
  unlink(gpath);
  cJSON *gated = cJSON_Parse("{\"stages\":[{\"name\":\"gate\",\"kind\":\"fn\",\"params\":"
                             "{\"fn\":\"ok\"},\"approval\":{\"required\":true}}]}");
  log = NULL;
  check(sc_jsonl_open(e, gpath, NULL, &log) == SC_OK, "a log for the gated tasks opens");
  const char *ids[] = {"gated-1", "gated-2"};
  int submitted = 1;
  for (int i = 0; i < 2; i++) {
    sc_task_spec gs;
    sc_task_spec_init(&gs);
    gs.task_id = ids[i];
    gs.tenant_id = i ? "beta" : "acme";
    gs.config = gated;
    submitted &= sc_task_submit(e, &gs, NULL) == SC_OK;
  }
  run_bounded(&loop);
  sc_pending_approval *one = block(sizeof(*one));
  size_t waiting = sc_engine_pending_approvals(e, one, 1);
  check(submitted && waiting == 2 && one->approvers_needed == 1 && one->stage_index == 0 &&
            (strcmp(one->task_id, "gated-1") == 0 || strcmp(one->task_id, "gated-2") == 0),
        "sc_engine_pending_approvals counts both and fills only the one entry it was given");
  int zero = 1;
  for (size_t k = 0; k < sizeof(one->reserved) / sizeof(one->reserved[0]); k++)
    zero &= one->reserved[k] == 0;
  check(zero, "the pending approval's reserved room is zero");
  free(one);
  check(log != NULL && sc_jsonl_close(log) == SC_OK, "the log of the gated tasks closes");
  sc_jsonl_report *rep = block(sizeof(*rep));
  memset(rep, 0xA5, sizeof(*rep));
  sc_unfinished *todo = NULL;
  size_t n = 0;
  int scanned = sc_jsonl_scan(gpath, &todo, &n, rep) == SC_OK;
  zero = 1;
  for (size_t k = 0; k < sizeof(rep->reserved) / sizeof(rep->reserved[0]); k++)
    zero &= rep->reserved[k] == 0;
  check(scanned && n == 2 && rep->lines > 0 && rep->first_bad_line == 0 && zero,
        "the scan finds both tasks and fills the report, its reserved room zeroed");
  free(rep);
  int right = n == 2;
  for (size_t i = 0; i < n && right; i++) {
    const sc_unfinished *u = &todo[i];
    right = u->request.version == SC_RECOVERY_REQUEST_VERSION &&
            u->request.mode == SC_RECOVER_RETRY && u->request.recovered_from != NULL &&
            strcmp(u->request.recovered_from, ids[i]) == 0 &&
            strcmp(u->request.tenant_id, i ? "beta" : "acme") == 0 &&
            cJSON_IsObject(u->request.config) && u->status == SC_TASK_AWAITING_APPROVAL;
    for (size_t k = 0; k < sizeof(u->reserved) / sizeof(u->reserved[0]); k++)
      right &= u->reserved[k] == 0;
  }
  check(right,
        "each entry of the scan's array reads as its own task (version, id, tenant, status)");
  sc_unfinished_free(todo, n);
  unlink(gpath);
  cJSON_Delete(gated);

  sc_engine_free(e);
  cJSON_Delete(config);
  int closed = uv_loop_close(&loop);
  if (closed != 0) {
    printf("# uv_loop_close: %d\n", closed);
    tests_failed++;
  }
  return tests_failed ? 1 : 0;
}
