/* logged: a job that survives a crash. It runs a deploy-like job with the durable JSON-lines log,
 * and on its next start recovers whatever the log says is unfinished.
 *
 *   logged LOG             run: recover the unfinished tasks in LOG, or start a new job
 *   logged LOG --timeline  print the log as a timeline
 *
 * Kill it with SIGKILL in the middle and start it again: it carries on after the last stage whose
 * stage.completed reached the log, and re-runs at most the stage that was in flight. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <stagecoach/jsonl.h>
#include <stagecoach/stagecoach.h>
#include <uv.h>

/* A stage kind that "works" for params.ms milliseconds on a libuv timer. */
static void work_closed(uv_handle_t *h) {
  free(h);
}

static void work_done(uv_timer_t *timer) {
  sc_stage_ctx *ctx = timer->data;
  uv_close((uv_handle_t *)timer, work_closed);
  cJSON *out = cJSON_CreateObject();
  char key[64];
  snprintf(key, sizeof(key), "%s_done", sc_stage_name(ctx));
  cJSON_AddTrueToObject(out, key);
  sc_stage_complete(ctx, out);
}

static int work_start(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  const cJSON *ms = cJSON_GetObjectItemCaseSensitive(sc_stage_params(ctx), "ms");
  printf("  running %-10s attempt %u%s\n", sc_stage_name(ctx), sc_stage_attempt(ctx),
         sc_stage_is_rollback(ctx) ? " (rollback)" : "");
  fflush(stdout);
  uv_timer_t *timer = malloc(sizeof(*timer));
  uv_timer_init(sc_stage_loop(ctx), timer);
  timer->data = ctx;
  sc_stage_set_data(ctx, timer);
  uv_timer_start(timer, work_done, cJSON_IsNumber(ms) ? (uint64_t)ms->valuedouble : 100, 0);
  return SC_OK;
}

static void work_cancel(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  uv_timer_t *timer = sc_stage_get_data(ctx);
  uv_close((uv_handle_t *)timer, work_closed);
  sc_stage_fail(ctx, SC_ECANCELLED, "cancelled", false);
}

static void say(const char *message, void *udata) {
  (void)udata;
  printf("log: %s\n", message);
}

static const char *job = "{\"version\":\"2.4.1\",\"stages\":["
                         "{\"name\":\"prepare\",\"kind\":\"work\",\"params\":{\"ms\":300}},"
                         "{\"name\":\"migrate\",\"kind\":\"work\",\"params\":{\"ms\":400}},"
                         "{\"name\":\"build\",\"kind\":\"work\",\"params\":{\"ms\":400}},"
                         "{\"name\":\"deploy\",\"kind\":\"work\",\"params\":{\"ms\":500},"
                         "\"retry\":{\"max_attempts\":3,\"initial_backoff_ms\":100}},"
                         "{\"name\":\"verify\",\"kind\":\"work\",\"params\":{\"ms\":300}},"
                         "{\"name\":\"announce\",\"kind\":\"work\",\"params\":{\"ms\":100}}]}";

static int timeline(const char *path) {
  sc_jsonl_report r;
  int rc = sc_jsonl_verify(path, &r);
  printf("%s: %llu lines, chain %s%s\n", path, (unsigned long long)r.lines,
         rc == SC_OK ? "verified" : "BROKEN", r.torn_tail ? ", torn tail" : "");
  FILE *f = fopen(path, "r");
  if (f == NULL) return 1;
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  while ((len = getline(&line, &cap, f)) > 0) {
    sc_event_doc *d;
    if (sc_event_parse(line, (size_t)len, &d) != SC_OK) continue;
    const sc_event *ev = sc_event_doc_event(d);
    time_t sec = (time_t)(ev->time_ns / 1000000000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    printf("%02d:%02d:%02d.%03d  …%s e%llu #%-3llu %-20s %-10s %s\n", tm.tm_hour, tm.tm_min,
           tm.tm_sec, (int)(ev->time_ns / 1000000 % 1000),
           ev->task_id + (strlen(ev->task_id) > 8 ? strlen(ev->task_id) - 8 : 0),
           (unsigned long long)ev->epoch, (unsigned long long)ev->seq,
           sc_event_type_name(ev->type) + strlen("stagecoach."), ev->stage ? ev->stage : "",
           sc_task_status_name(ev->status));
    sc_event_doc_free(d);
  }
  free(line);
  fclose(f);
  return rc == SC_OK ? 0 : 1;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s LOG [--timeline]\n", argv[0]);
    return 2;
  }
  const char *path = argv[1];
  if (argc > 2 && strcmp(argv[2], "--timeline") == 0) return timeline(path);

  sc_engine *e;
  sc_engine_new(NULL, NULL, &e);
  static const sc_stage_kind work = {SC_STAGE_KIND_VERSION, work_start, work_cancel, NULL};
  sc_engine_register_kind(e, "work", &work, NULL);

  /* The log is opened (and locked: one writer) first; what it says is unfinished is then read
   * through it, so no other process can change it between the read and the recovery. */
  sc_jsonl_options o;
  sc_jsonl_options_init(&o);
  o.fsync = SC_FSYNC_BATCH;
  o.log = say;
  sc_jsonl *log;
  if (sc_jsonl_open(e, path, &o, &log) != SC_OK) {
    fprintf(stderr, "open: %s\n", sc_error_message());
    return 1;
  }
  sc_unfinished *todo = NULL;
  size_t n = 0;
  int rc = sc_jsonl_unfinished(log, &todo, &n);
  if (rc != SC_OK) {
    fprintf(stderr, "scan: %s\n", sc_error_message());
    sc_jsonl_close(log);
    sc_engine_free(e);
    return 1;
  }

  if (n > 0) {
    for (size_t i = 0; i < n; i++) {
      sc_recovery_request *req = &todo[i].request;
      printf("recovering %s (%s) after stage %s\n", req->recovered_from,
             sc_task_status_name(todo[i].status),
             req->last_completed_stage ? req->last_completed_stage : "(none)");
      if (sc_recover_from_restart(e, req, NULL) != SC_OK)
        fprintf(stderr, "recover: %s\n", sc_error_message());
    }
  } else {
    cJSON *config = cJSON_Parse(job);
    sc_task_spec spec;
    sc_task_spec_init(&spec);
    spec.tenant_id = "acme";
    spec.plan_id = "tenant-deploy";
    spec.config = config;
    sc_task *t;
    sc_task_submit(e, &spec, &t);
    printf("started task %s\n", sc_task_id(t));
    cJSON_Delete(config);
  }
  fflush(stdout);
  sc_engine_run(e);
  sc_unfinished_free(todo, n);
  rc = sc_jsonl_close(log);
  sc_engine_free(e);
  printf("done\n");
  return rc == SC_OK ? 0 : 1;
}
