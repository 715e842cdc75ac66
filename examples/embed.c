/* embed: the smallest useful program that embeds stagecoach.
 *
 * It registers a C stage kind, subscribes a printer to the event stream, runs a three-stage task
 * to completion, and then shows restart recovery: a second task is rebuilt as if the process had
 * stopped after the first stage, and carries on from the second. Build: meson compiles it as
 * build/examples/embed; outside the tree, cc embed.c $(pkg-config --cflags --libs stagecoach). */
#include <stdio.h>
#include <stdlib.h>

#include <stagecoach/stagecoach.h>

/* A stage function: reads its params and the context, writes an output object that the engine
 * merges into the context. It may finish now, as here, or later from a libuv callback. */
static int build_step(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  const cJSON *version = cJSON_GetObjectItemCaseSensitive(sc_stage_config(ctx), "version");
  cJSON *out = cJSON_CreateObject();
  cJSON_AddStringToObject(out, "artifact", cJSON_IsString(version) ? version->valuestring : "?");
  sc_stage_complete(ctx, out); /* takes over `out` */
  return SC_OK;
}

/* A stage kind of our own: "echo" prints its params.text and completes. */
static int echo_start(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  const cJSON *text = cJSON_GetObjectItemCaseSensitive(sc_stage_params(ctx), "text");
  printf("    [echo] %s (attempt %u)\n", cJSON_IsString(text) ? text->valuestring : "",
         sc_stage_attempt(ctx));
  sc_stage_complete(ctx, NULL);
  return SC_OK;
}

/* The subscriber: one line per event. A persistence adapter would write the event and return
 * SC_DEFER, then call sc_ack_done() once it is durable; the engine waits for that on progress
 * events before it takes the next step. */
static int print_event(const sc_event *ev, sc_ack *ack, void *udata) {
  (void)ack;
  (void)udata;
  printf("%-28s seq=%-2llu %-10s %s\n", sc_event_type_name(ev->type), (unsigned long long)ev->seq,
         ev->stage ? ev->stage : "-", sc_task_status_name(ev->status));
  return SC_OK;
}

static const char *config_json =
    "{\"version\":\"2.4.1\",\"stages\":["
    "{\"name\":\"build\",\"kind\":\"fn\",\"params\":{\"fn\":\"build\"}},"
    "{\"name\":\"wait\",\"kind\":\"sleep\",\"params\":{\"ms\":20}},"
    "{\"name\":\"announce\",\"kind\":\"echo\",\"params\":{\"text\":\"deployed\"}}]}";

int main(void) {
  sc_engine *engine;
  if (sc_engine_new(NULL, NULL, &engine) != SC_OK) { /* NULL loop: the engine owns one */
    fprintf(stderr, "engine: %s\n", sc_error_message());
    return 1;
  }
  static const sc_stage_kind echo = {SC_STAGE_KIND_VERSION, echo_start, NULL, NULL};
  sc_engine_register_kind(engine, "echo", &echo, NULL);
  sc_engine_register_fn(engine, "build", build_step, NULL);

  sc_subscriber printer;
  sc_subscriber_init(&printer); /* every event type */
  printer.on_event = print_event;
  sc_engine_subscribe(engine, &printer, NULL);

  cJSON *config = cJSON_Parse(config_json);
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.task_id = "deploy-1";
  spec.tenant_id = "acme";
  spec.plan_id = "tenant-deploy";
  spec.config = config; /* copied */
  if (sc_task_submit(engine, &spec, NULL) != SC_OK) {
    fprintf(stderr, "submit: %s\n", sc_error_message());
    return 1;
  }
  printf("-- a new task\n");
  sc_engine_run(engine); /* returns when no task has work left */

  /* Restart recovery: what a log would hand back after a crash during "wait". */
  printf("-- recovery after 'build' completed\n");
  sc_recovery_request req;
  sc_recovery_request_init(&req);
  req.recovered_from = "deploy-1";
  req.task_id = "deploy-1-r1";
  req.tenant_id = "acme";
  req.plan_id = "tenant-deploy";
  req.config = config;
  req.last_completed_stage = "build";
  req.mode = SC_RECOVER_RETRY;
  if (sc_recover_from_restart(engine, &req, NULL) != SC_OK) {
    fprintf(stderr, "recover: %s\n", sc_error_message());
    return 1;
  }
  sc_engine_run(engine);

  /* A refusal: a stage the plan does not have. Nothing is created, nothing emitted. */
  req.task_id = "deploy-1-r2";
  req.last_completed_stage = "biuld";
  int rc = sc_recover_from_restart(engine, &req, NULL);
  printf("-- refused: %s: %s\n", sc_err_name(rc), sc_error_message());

  sc_engine_free(engine);
  cJSON_Delete(config);
  return 0;
}
