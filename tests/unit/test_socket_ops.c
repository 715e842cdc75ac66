/* The socket adapter's ops and stream in one process, end to end: a client is a plain socket read
 * between turns of the loop. A failed task retried from a stage with reset_context and rolled back
 * with each strategy, checked by the reply line and the events that follow; the missed line; the
 * bound on the records of finished tasks; a replay of a large log that does not stall a live
 * consumer. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

#include <stagecoach/jsonl.h>
#include <stagecoach/socket.h>

#include "../../adapters/socket/socket_int.h"

#define SOCKFIX_DIR_PREFIX "/tmp/sc-sockops"
#include "sockfix.h"

/* ---- the stages: kind "step" completes with {NAME: 1}, except the stage named fail_stage while
 * fail_count lasts; its compensation notes the stage in undo_order ---- */

static const char *fail_stage;
static int fail_count;
static int b_saw_a = -1;   /* whether the last run of stage b saw the context member a */
static int rollback_runs;  /* stage runs in a redeploying rollback */
static char undo_order[8]; /* the stages compensated, in order */

static int step_start(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  const char *name = sc_stage_name(ctx);
  if (sc_stage_is_rollback(ctx)) rollback_runs++;
  if (strcmp(name, "b") == 0)
    b_saw_a = cJSON_GetObjectItemCaseSensitive(sc_stage_context(ctx), "a") != NULL;
  if (!sc_stage_is_rollback(ctx) && fail_stage && strcmp(name, fail_stage) == 0 && fail_count > 0) {
    fail_count--;
    sc_stage_fail(ctx, SC_EIO, "failing on purpose", false);
    return SC_OK;
  }
  cJSON *out = cJSON_CreateObject();
  cJSON_AddNumberToObject(out, name, 1);
  sc_stage_complete(ctx, out);
  return SC_OK;
}

static int step_compensate(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  size_t n = strlen(undo_order);
  if (n + 1 < sizeof(undo_order)) {
    undo_order[n] = sc_stage_name(ctx)[0];
    undo_order[n + 1] = '\0';
  }
  sc_stage_complete(ctx, NULL);
  return SC_OK;
}

static void reset_stages(const char *fail, int count) {
  fail_stage = fail;
  fail_count = count;
  b_saw_a = -1;
  rollback_runs = 0;
  undo_order[0] = '\0';
}

static void sockfix_register(sc_engine *e) {
  static const sc_stage_kind step = {SC_STAGE_KIND_VERSION, step_start, NULL, step_compensate};
  assert_int_equal(sc_engine_register_kind(e, "step", &step, NULL), SC_OK);
}

/* Reads events until one of type `last` (dotted): their "type[:stage]" joined by spaces, from the
 * first of type `first` on, into out[cap]; the data of the first event of type `keep` is kept
 * in *kept (the caller deletes it). */
static void events_until(fx *f, cl *c, const char *first, const char *last, const char *keep,
                         cJSON **kept, char *out, size_t cap) {
  out[0] = '\0';
  bool on = false;
  for (;;) {
    cJSON *j = cl_line(f, c);
    assert_non_null(j);
    const char *type = str(j, "type");
    assert_non_null(type);
    type += strlen("stagecoach.");
    if (strcmp(type, first) == 0) on = true;
    if (on) {
      const cJSON *data = cJSON_GetObjectItemCaseSensitive(j, "data");
      const char *stage = str(data, "stage");
      snprintf(out + strlen(out), cap - strlen(out), "%s%s%s%s", out[0] ? " " : "", type,
               stage ? ":" : "", stage ? stage : "");
      if (keep && kept && *kept == NULL && strcmp(type, keep) == 0)
        *kept = cJSON_Duplicate(data, true);
    }
    bool done = on && strcmp(type, last) == 0;
    cJSON_Delete(j);
    if (done) return;
  }
}

#define ABC                                                                                        \
  "{\"stages\":[{\"name\":\"a\",\"kind\":\"step\"},{\"name\":\"b\",\"kind\":\"step\"},{\"name\":"  \
  "\"c\",\"kind\":\"step\"}]}"
#define ABC_UNDO                                                                                   \
  "{\"stages\":[{\"name\":\"a\",\"kind\":\"step\",\"effect\":\"compensable\"},{\"name\":\"b\","    \
  "\"kind\":\"step\",\"effect\":\"compensable\"},{\"name\":\"c\",\"kind\":\"step\",\"effect\":"    \
  "\"compensable\"}]}"
#define AB "{\"stages\":[{\"name\":\"a\",\"kind\":\"step\"},{\"name\":\"b\",\"kind\":\"step\"}]}"

static void retry_from_a_stage_with_reset_context_runs_the_task_to_completion(void **state) {
  (void)state;
  fx f;
  fx_start(&f, NULL);
  reset_stages("b", 1);
  submit(&f, "r1", ABC, NULL);
  until_status(&f, "r1", SC_TASK_FAILED);
  assert_int_equal(b_saw_a, 1); /* a's output was in the context when b failed */
  cl ctl, stream;
  cl_connect(&f, &ctl);
  cJSON *r = ask(&f, &ctl,
                 "{\"op\":\"retry\",\"token\":\"" OPER "\",\"task\":\"r1\",\"from_stage\":\"b\","
                 "\"reset_context\":true,\"id\":41}");
  assert_true(cJSON_IsTrue(cJSON_GetObjectItem(r, "ok")));
  assert_string_equal(str(r, "op"), "retry");
  assert_string_equal(str(r, "task"), "r1");
  assert_int_equal(num(r, "id"), 41);
  /* applied at the next turn of the loop: right after the call the task is still FAILED */
  assert_string_equal(str(r, "status"), "FAILED");
  cJSON_Delete(r);
  until_status(&f, "r1", SC_TASK_COMPLETED);
  assert_int_equal(b_saw_a, 0); /* the context was reset: b ran again without a's output */
  /* The whole history from the ring: the failure, then the retry from b to the end. */
  cl_connect(&f, &stream);
  cl_send(&stream, "{\"subscribe\":{\"token\":\"" VIEW "\",\"task\":\"r1\",\"from_seq\":1}}");
  char seen[512];
  cJSON *started = NULL;
  events_until(&f, &stream, "task.created", "task.completed", NULL, NULL, seen, sizeof(seen));
  assert_string_equal(seen, "task.created task.started stage.started:a stage.completed:a "
                            "stage.started:b stage.failed:b task.failed:b task.started "
                            "stage.started:b stage.completed:b stage.started:c "
                            "stage.completed:c task.completed");
  cl_close(&stream);
  cl_connect(&f, &stream);
  cl_send(&stream, "{\"subscribe\":{\"token\":\"" VIEW "\",\"task\":\"r1\",\"from_seq\":1}}");
  events_until(&f, &stream, "task.failed", "task.completed", "task.started", &started, seen,
               sizeof(seen));
  assert_non_null(started);
  assert_true(cJSON_IsTrue(cJSON_GetObjectItem(started, "retry")));
  assert_true(cJSON_IsTrue(cJSON_GetObjectItem(started, "reset_context")));
  assert_string_equal(str(started, "from_stage"), "b");
  assert_string_equal(str(started, "last_completed_stage"), "a");
  assert_int_equal(num(started, "retry_count"), 1);
  cJSON_Delete(started);
  /* status says it over the socket too */
  r = ask(&f, &ctl, "{\"op\":\"status\",\"token\":\"" VIEW "\",\"task\":\"r1\"}");
  assert_string_equal(str(cJSON_GetObjectItem(r, "task"), "status"), "COMPLETED");
  cJSON_Delete(r);
  cl_close(&ctl);
  cl_close(&stream);
  fx_stop(&f);
}

static void rollback_by_redeploying_runs_the_previous_config(void **state) {
  (void)state;
  fx f;
  fx_start(&f, NULL);
  reset_stages("c", 1);
  submit(&f, "rb1", ABC, AB);
  until_status(&f, "rb1", SC_TASK_FAILED);
  cl ctl, stream;
  cl_connect(&f, &ctl);
  cl_connect(&f, &stream);
  cl_send(&stream, "{\"subscribe\":{\"token\":\"" VIEW "\",\"task\":\"rb1\"}}");
  /* a subscription made before the op: the events below are the live stream */
  for (int i = 0; i < 20; i++)
    turn(&f, -1);
  cJSON *r = ask(&f, &ctl,
                 "{\"op\":\"rollback\",\"token\":\"" OPER
                 "\",\"task\":\"rb1\",\"strategy\":\"redeploy\"}");
  assert_true(cJSON_IsTrue(cJSON_GetObjectItem(r, "ok")));
  assert_string_equal(str(r, "op"), "rollback");
  assert_string_equal(str(r, "task"), "rb1");
  cJSON_Delete(r);
  char seen[512];
  cJSON *started = NULL;
  events_until(&f, &stream, "rollback.started", "rollback.completed", "rollback.started", &started,
               seen, sizeof(seen));
  assert_string_equal(seen, "rollback.started stage.started:a stage.completed:a stage.started:b "
                            "stage.completed:b rollback.completed");
  assert_string_equal(str(started, "strategy"), "redeploy");
  cJSON_Delete(started);
  until_status(&f, "rb1", SC_TASK_ROLLED_BACK);
  assert_int_equal(rollback_runs, 2); /* a and b of the previous config */
  /* A second rollback of a rolled-back task is refused, with the engine's code. */
  r = ask(&f, &ctl,
          "{\"op\":\"rollback\",\"token\":\"" OPER
          "\",\"task\":\"rb1\",\"strategy\":\"redeploy\"}");
  assert_true(cJSON_IsFalse(cJSON_GetObjectItem(r, "ok")));
  cJSON_Delete(r);
  cl_close(&ctl);
  cl_close(&stream);
  fx_stop(&f);
}

static void rollback_by_compensating_undoes_the_completed_stages_last_first(void **state) {
  (void)state;
  fx f;
  fx_start(&f, NULL);
  reset_stages("c", 1);
  submit(&f, "rc1", ABC_UNDO, NULL);
  until_status(&f, "rc1", SC_TASK_FAILED);
  cl ctl, stream;
  cl_connect(&f, &ctl);
  cJSON *r = ask(&f, &ctl,
                 "{\"op\":\"rollback\",\"token\":\"" OPER
                 "\",\"task\":\"rc1\",\"strategy\":\"compensate\",\"id\":\"x\"}");
  assert_true(cJSON_IsTrue(cJSON_GetObjectItem(r, "ok")));
  assert_string_equal(str(r, "id"), "x");
  cJSON_Delete(r);
  until_status(&f, "rc1", SC_TASK_ROLLED_BACK);
  assert_string_equal(undo_order, "ba");
  assert_int_equal(rollback_runs, 0);
  cl_connect(&f, &stream);
  cl_send(&stream, "{\"subscribe\":{\"token\":\"" VIEW "\",\"task\":\"rc1\",\"from_seq\":1}}");
  char seen[512];
  cJSON *started = NULL;
  events_until(&f, &stream, "task.failed", "rollback.completed", "rollback.started", &started, seen,
               sizeof(seen));
  assert_string_equal(seen, "task.failed:c rollback.started stage.started:b stage.compensated:b "
                            "stage.started:a stage.compensated:a rollback.completed");
  assert_string_equal(str(started, "strategy"), "compensate");
  cJSON_Delete(started);
  cl_close(&ctl);
  cl_close(&stream);
  fx_stop(&f);
}

static int count_events(const sc_event *ev, sc_ack *ack, void *udata) {
  (void)ev;
  (void)ack;
  (*(uint64_t *)udata)++;
  return SC_OK;
}

static void a_first_line_after_the_ring_moved_on_gets_the_missed_line(void **state) {
  (void)state;
  fx f;
  sc_socket_options o;
  sc_socket_options_init(&o);
  o.ring_events = 4;
  o.subscribe_wait_ms = 60000; /* the first line is waited for as long as the test needs */
  fx_start(&f, &o);
  uint64_t total = 0;
  sc_subscriber sub;
  sc_subscriber_init(&sub);
  sub.on_event = count_events;
  sub.udata = &total;
  sc_engine_subscribe(f.e, &sub, NULL);
  reset_stages(NULL, 0);
  cl c;
  cl_open(&f, &c, true); /* connected before the task: everything after is its to get */
  submit(&f, "m1", ABC, NULL);
  until_status(&f, "m1", SC_TASK_COMPLETED);
  assert_int_equal(total, 9); /* created, started, 3 x (stage started, completed), completed */
  cl_send(&c, "{\"subscribe\":{\"token\":\"" VIEW "\"}}");
  cJSON *j = cl_line(&f, &c);
  assert_string_equal(str(j, "error"), "missed");
  assert_int_equal(num(j, "events"), 5); /* 9 since it connected, the ring holds 4 */
  cJSON_Delete(j);
  for (int seq = 6; seq <= 9; seq++) { /* then what the ring holds, in order */
    j = cl_line(&f, &c);
    assert_int_equal(num(j, "seq"), seq);
    cJSON_Delete(j);
  }
  j = ask(&f, &c, "{\"op\":\"status\",\"token\":\"" VIEW "\",\"task\":\"m1\"}");
  assert_true(cJSON_IsTrue(cJSON_GetObjectItem(j, "ok"))); /* and the stream goes on */
  cJSON_Delete(j);
  cl_close(&c);
  fx_stop(&f);
}

static void the_records_of_finished_tasks_are_bounded(void **state) {
  (void)state;
  fx f;
  sc_socket_options o;
  sc_socket_options_init(&o);
  o.max_finished_tasks = 3;
  o.ring_events = 8; /* slots naming forgotten records are reused: they are freed then */
  fx_start(&f, &o);
  reset_stages(NULL, 0);
  char id[32];
  for (int i = 0; i < 40; i++) {
    snprintf(id, sizeof(id), "f%d", i);
    submit(&f, id, AB, NULL);
    until_status(&f, id, SC_TASK_COMPLETED);
    assert_true(f.s->ntasks <= 3);
  }
  assert_int_equal(f.s->ntasks, 3);
  assert_int_equal(f.s->forgotten, 37);
  /* A failed task is held by the engine: forgotten by the server, status still answers. */
  reset_stages("a", 1);
  submit(&f, "failed", AB, NULL);
  until_status(&f, "failed", SC_TASK_FAILED);
  for (int i = 0; i < 3; i++) {
    snprintf(id, sizeof(id), "g%d", i);
    reset_stages(NULL, 0);
    submit(&f, id, AB, NULL);
    until_status(&f, id, SC_TASK_COMPLETED);
  }
  assert_null(sc__sock_task_find(f.s, "failed"));
  cl c;
  cl_connect(&f, &c);
  cJSON *r = ask(&f, &c, "{\"op\":\"status\",\"token\":\"" VIEW "\",\"task\":\"f0\"}");
  assert_true(cJSON_IsFalse(cJSON_GetObjectItem(r, "ok")));
  assert_string_equal(str(r, "error"), "SC_ENOTFOUND");
  assert_non_null(strstr(str(r, "message"), "the last 3 finished"));
  cJSON_Delete(r);
  r = ask(&f, &c, "{\"op\":\"status\",\"token\":\"" VIEW "\",\"task\":\"failed\"}");
  const cJSON *t = cJSON_GetObjectItem(r, "task");
  assert_string_equal(str(t, "status"), "FAILED");
  assert_true(cJSON_IsTrue(cJSON_GetObjectItem(t, "held")));
  cJSON_Delete(r);
  r = ask(&f, &c, "{\"op\":\"status\",\"token\":\"" VIEW "\",\"task\":\"g2\"}");
  assert_string_equal(str(cJSON_GetObjectItem(r, "task"), "status"), "COMPLETED");
  cJSON_Delete(r);
  r = ask(&f, &c, "{\"op\":\"status\",\"token\":\"" VIEW "\"}");
  const cJSON *list = cJSON_GetObjectItem(r, "tasks");
  assert_int_equal(cJSON_GetArraySize(list), 3);
  assert_string_equal(str(cJSON_GetArrayItem(list, 0), "task"), "g2"); /* newest first */
  cJSON_Delete(r);
  /* Retried, the forgotten failed task is seen again, running then finished. */
  r = ask(&f, &c, "{\"op\":\"retry\",\"token\":\"" OPER "\",\"task\":\"failed\"}");
  assert_true(cJSON_IsTrue(cJSON_GetObjectItem(r, "ok")));
  cJSON_Delete(r);
  until_status(&f, "failed", SC_TASK_COMPLETED);
  assert_non_null(sc__sock_task_find(f.s, "failed"));
  assert_true(f.s->ntasks <= 3);
  cl_close(&c);
  fx_stop(&f);
}

/* ---- a replay of a large log next to a live consumer ---- */

#define BIG_STAGES   6000
#define LIVE_STAGES  2000
#define MAX_STALL_MS 250 /* the longest a live consumer may wait between two events */
/* The bound a test holds to: 250 ms, or a quarter of the whole replay's time when the machine is
 * slow (valgrind, a loaded CI host), so a timing of the machine never fails it. A replay read on
 * the loop, or one that starves the thread pool, makes the live consumer wait about as long as
 * the replay itself, which no such bound lets through. */
static uint64_t stall_bound(uint64_t replay_ms) {
  return replay_ms / 4 > MAX_STALL_MS ? replay_ms / 4 : MAX_STALL_MS;
}

static void write_big_log(const char *log) {
  write_tasks(log, "big", 0, 1, BIG_STAGES, false); /* one task, big0 */
}

static void a_replay_from_a_large_log_does_not_stall_a_live_consumer(void **state) {
  (void)state;
  char log[128];
  snprintf(log, sizeof(log), "%s/big.jsonl", dir);
  reset_stages(NULL, 0);
  write_big_log(log);
  fx f;
  sc_socket_options o;
  sc_socket_options_init(&o);
  o.ring_events = 16; /* the ring holds none of it: all of it comes from the log */
  o.log_path = log;
  fx_start(&f, &o);
  cJSON *cfg = cJSON_CreateObject(), *stages = cJSON_AddArrayToObject(cfg, "stages");
  for (int i = 0; i < LIVE_STAGES; i++) {
    cJSON *s = cJSON_CreateObject();
    char name[16];
    snprintf(name, sizeof(name), "l%d", i);
    cJSON_AddStringToObject(s, "name", name);
    cJSON_AddStringToObject(s, "kind", "sleep");
    cJSON_AddNumberToObject(s, "ms", 1);
    cJSON_AddItemToArray(stages, s);
  }
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.task_id = "live";
  spec.config = cfg;
  cl live, rep;
  cl_connect(&f, &live);
  cl_send(&live, "{\"subscribe\":{\"token\":\"" VIEW
                 "\",\"task\":\"live\",\"types\":[\"stage.completed\"]}}");
  for (int i = 0; i < 20; i++)
    turn(&f, -1);
  assert_int_equal(sc_task_submit(f.e, &spec, NULL), SC_OK);
  cJSON_Delete(cfg);
  cJSON *first = cl_line(&f, &live); /* the live stream runs */
  assert_non_null(first);
  cJSON_Delete(first);
  /* A client that asks for the replay and goes at once: its read stops, nothing leaks. */
  cl quitter;
  cl_connect(&f, &quitter);
  cl_send(&quitter, "{\"subscribe\":{\"token\":\"" VIEW "\",\"task\":\"big0\",\"from_seq\":1}}");
  for (int i = 0; i < 5; i++)
    turn(&f, -1);
  cl_close(&quitter);
  cl_connect(&f, &rep);
  cl_send(&rep, "{\"subscribe\":{\"token\":\"" VIEW "\",\"task\":\"big0\",\"from_seq\":1}}");
  static char line[CL_BUF];
  uint64_t replayed = 0, live_events = 0, last_live = now_ms(), max_gap = 0;
  uint64_t began = now_ms(), until = now_ms() + 60000;
  bool replay_done = false;
  while (!replay_done && now_ms() < until && !rep.eof) {
    uv_run(&f.loop, UV_RUN_NOWAIT);
    struct pollfd p[2] = {{live.fd, POLLIN, 0}, {rep.fd, POLLIN, 0}};
    poll(p, 2, 1);
    cl_read(&live);
    cl_read(&rep);
    while (cl_take(&live, line, sizeof(line))) {
      uint64_t t = now_ms();
      if (t - last_live > max_gap) max_gap = t - last_live;
      last_live = t;
      live_events++;
    }
    while (cl_take(&rep, line, sizeof(line))) {
      if (strstr(line, "\"error\"")) fail_msg("%s", line); /* no gap line: the log has it all */
      replayed++;
      if (strstr(line, "\"type\":\"stagecoach.task.completed\"")) replay_done = true;
    }
  }
  assert_true(replay_done);
  assert_int_equal(replayed, 2 * BIG_STAGES + 3); /* every event of the task, from seq 1 */
  assert_true(live_events > 0);
  /* The live task may have finished during the replay: then the last gap is not the server's. */
  if (status_of(&f, "live") != SC_TASK_COMPLETED) {
    uint64_t t = now_ms();
    if (t - last_live > max_gap) max_gap = t - last_live;
  }
  print_message("# replay of %llu events: the live consumer got %llu events, at most %llu ms "
                "apart (bound %llu ms)\n",
                (unsigned long long)replayed, (unsigned long long)live_events,
                (unsigned long long)max_gap, (unsigned long long)stall_bound(now_ms() - began));
  assert_true(max_gap <= stall_bound(now_ms() - began));
  cl_close(&live);
  cl_close(&rep);
  sc_task *t = sc_engine_find_task(f.e, "live");
  if (t != NULL) sc_task_cancel(t, "the test is over");
  /* The server closed while a replay is being read: the close waits for the read to stop. */
  cl last;
  cl_connect(&f, &last);
  cl_send(&last, "{\"subscribe\":{\"token\":\"" VIEW "\",\"task\":\"big0\",\"from_seq\":1}}");
  uint64_t wait = now_ms() + 5000;
  while (f.s->replays == 0 && now_ms() < wait)
    turn(&f, -1);
  assert_int_equal(f.s->replays, 1);
  fx_stop(&f);
  cl_close(&last);
}

/* ---- several replays beside a live task whose log syncs on the thread pool ---- */

#define REPLAYS      4
#define LIVE_FOREVER 20000      /* more stages of 1 ms than the test lasts: cancelled at its end */
#define REPLAY_HELD  (3u << 20) /* what a server may queue for a client that does not read */

static void
several_replays_beside_a_live_task_logged_with_batch_fsync_do_not_stall_it(void **state) {
  (void)state;
  char log[128];
  snprintf(log, sizeof(log), "%s/big.jsonl", dir);
  reset_stages(NULL, 0);
  write_big_log(log);
  fx f;
  sc_socket_options o;
  sc_socket_options_init(&o);
  o.ring_events = 16;
  o.log_path = log;
  fx_start(&f, &o);
  sc_jsonl_options jo;
  sc_jsonl_options_init(&jo);
  jo.fsync = SC_FSYNC_BATCH; /* every turn's lines synced on the pool before their acks */
  sc_jsonl *j;
  assert_int_equal(sc_jsonl_open(f.e, log, &jo, &j), SC_OK);
  cl live;
  cl_connect(&f, &live);
  cl_send(&live, "{\"subscribe\":{\"token\":\"" VIEW
                 "\",\"task\":\"live\",\"types\":[\"stage.completed\"]}}");
  for (int i = 0; i < 20; i++)
    turn(&f, -1);
  start_task(&f, "live", sleep_stages(LIVE_FOREVER, "l"));
  cJSON *first = cl_line(&f, &live);
  assert_non_null(first);
  cJSON_Delete(first);
  /* REPLAYS clients replay the whole large task; rep[0] reads nothing until the others are done
   * (what the server holds for it stays bounded); one more asks for a task nobody logged. */
  cl rep[REPLAYS], none;
  uint64_t got[REPLAYS] = {0};
  bool done[REPLAYS] = {false};
  for (int i = 0; i < REPLAYS; i++) {
    cl_connect(&f, &rep[i]);
    cl_send(&rep[i], "{\"subscribe\":{\"token\":\"" VIEW "\",\"task\":\"big0\",\"from_seq\":1}}");
  }
  cl_connect(&f, &none);
  cl_send(&none, "{\"subscribe\":{\"token\":\"" VIEW "\",\"task\":\"nosuch\",\"from_seq\":1}}");
  static char line[CL_BUF];
  uint64_t live_events = 0, last_live = now_ms(), max_gap = 0, t0 = now_ms();
  uint64_t until = t0 + 90000;
  size_t held = 0;
  int ndone = 0, none_lines = 0;
  while ((ndone < REPLAYS || none_lines == 0) && now_ms() < until) {
    uv_run(&f.loop, UV_RUN_NOWAIT);
    struct pollfd p[REPLAYS + 2] = {{live.fd, POLLIN, 0}, {none.fd, POLLIN, 0}};
    for (int i = 0; i < REPLAYS; i++)
      p[i + 2] = (struct pollfd){rep[i].fd, POLLIN, 0};
    poll(p, REPLAYS + 2, 1);
    cl_read(&live);
    while (cl_take(&live, line, sizeof(line))) {
      uint64_t t = now_ms();
      if (t - last_live > max_gap) max_gap = t - last_live;
      last_live = t;
      live_events++;
    }
    cl_read(&none);
    while (cl_take(&none, line, sizeof(line))) {
      assert_non_null(strstr(line, "\"error\":\"replay-gap\""));
      assert_non_null(strstr(line, "\"first_available\":null"));
      none_lines++;
    }
    size_t q = server_queued(&f);
    if (!done[1] || !done[2] || !done[3]) held = q > held ? q : held;
    for (int i = 0; i < REPLAYS; i++) {
      if (done[i] || (i == 0 && ndone < REPLAYS - 1)) continue;
      cl_read_some(&rep[i], 32 * 1024);
      while (cl_take(&rep[i], line, sizeof(line))) {
        if (strstr(line, "\"error\"")) fail_msg("%s", line); /* the log has it all */
        got[i]++;
        if (strstr(line, "\"type\":\"stagecoach.task.completed\"")) {
          done[i] = true;
          ndone++;
        }
      }
    }
  }
  assert_int_equal(ndone, REPLAYS);
  for (int i = 0; i < REPLAYS; i++)
    assert_int_equal(got[i], 2 * BIG_STAGES + 3);
  assert_int_equal(none_lines, 1); /* its gap line, and nothing else */
  assert_int_equal(status_of(&f, "live"), SC_TASK_RUNNING);
  uint64_t t = now_ms();
  if (t - last_live > max_gap) max_gap = t - last_live;
  print_message("# %d replays of %d events and one of an unknown task in %llu ms: the live "
                "consumer got %llu events, at most %llu ms apart (bound %llu ms); at most %zu "
                "bytes queued for one client (bound %u)\n",
                REPLAYS, 2 * BIG_STAGES + 3, (unsigned long long)(t - t0),
                (unsigned long long)live_events, (unsigned long long)max_gap,
                (unsigned long long)stall_bound(t - t0), held, REPLAY_HELD);
  assert_true(live_events > 0);
  assert_true(max_gap <= stall_bound(t - t0));
  assert_true(held <= REPLAY_HELD);
  for (int i = 0; i < REPLAYS; i++)
    cl_close(&rep[i]);
  cl_close(&none);
  cl_close(&live);
  sc_task_cancel(sc_engine_find_task(f.e, "live"), "the test is over");
  until_status(&f, "live", SC_TASK_CANCELLED);
  sc_jsonl_close(j);
  fx_stop(&f);
}

/* ---- a replay whose ring moves past during the read ---- */

static atomic_bool pool_blocked;

static void block_work(uv_work_t *req) {
  (void)req;
  uint64_t until = now_ms() + 10000;
  while (atomic_load(&pool_blocked) && now_ms() < until)
    usleep(1000);
}

static void block_done(uv_work_t *req, int status) {
  (void)status;
  free(req);
}

static void a_replay_reads_on_from_the_log_what_the_ring_moved_past_during_the_read(void **state) {
  (void)state;
  char log[128];
  snprintf(log, sizeof(log), "%s/moving.jsonl", dir);
  unlink(log);
  fx f;
  sc_socket_options o;
  sc_socket_options_init(&o);
  o.ring_events = 16;
  o.log_path = log;
  fx_start(&f, &o);
  sc_jsonl_options jo;
  sc_jsonl_options_init(&jo);
  jo.fsync = SC_FSYNC_NONE; /* its lines are in the file after each turn; no sync on the pool */
  sc_jsonl *j;
  assert_int_equal(sc_jsonl_open(f.e, log, &jo, &j), SC_OK);
  start_task(&f, "mv", sleep_stages(400, "m"));
  uint64_t until = now_ms() + 10000;
  while (sc__sock_task_find(f.s, "mv") == NULL || sc__sock_task_find(f.s, "mv")->last_seq < 100)
    if (now_ms() < until)
      turn(&f, -1);
    else
      fail_msg("the task does not run");
  /* Every thread of the pool busy: the replay's read waits while the task runs on and the ring
   * of 16 moves far past what it held at the subscribe. */
  atomic_store(&pool_blocked, true);
  for (int i = 0; i < 4; i++) {
    uv_work_t *w = calloc(1, sizeof(*w));
    assert_non_null(w);
    assert_int_equal(uv_queue_work(&f.loop, w, block_work, block_done), 0);
  }
  cl c;
  cl_connect(&f, &c);
  int small = 2048; /* and it reads slowly */
  setsockopt(c.fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
  cl_send(&c, "{\"subscribe\":{\"token\":\"" VIEW "\",\"task\":\"mv\",\"from_seq\":1}}");
  uint64_t at_subscribe = 0;
  while (sc__sock_task_find(f.s, "mv")->last_seq < 300) {
    if (at_subscribe == 0 && replaying(&f) > 0)
      at_subscribe = sc__sock_task_find(f.s, "mv")->last_seq;
    if (now_ms() > until) fail_msg("the task does not run on");
    turn(&f, -1);
  }
  assert_true(at_subscribe > 0 && at_subscribe < 200);
  atomic_store(&pool_blocked, false);
  static char line[CL_BUF];
  uint64_t want = 1;
  until = now_ms() + 20000;
  while (want <= 2 * 400 + 3 && now_ms() < until && !c.eof) {
    turn(&f, c.fd);
    cl_read(&c);
    while (cl_take(&c, line, sizeof(line))) {
      if (strstr(line, "\"error\"")) fail_msg("at seq %llu: %s", (unsigned long long)want, line);
      cJSON *ev = cJSON_Parse(line);
      assert_non_null(ev);
      assert_int_equal(num(ev, "seq"), (double)want); /* in order, none missed, none twice */
      cJSON_Delete(ev);
      want++;
    }
    usleep(200);
  }
  assert_int_equal(want, 2 * 400 + 3 + 1);
  cl_close(&c);
  sc_jsonl_close(j);
  fx_stop(&f);
}

int main(void) {
  setenv("UV_THREADPOOL_SIZE", "4", 1); /* the pool the blocking test fills: four threads */
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(retry_from_a_stage_with_reset_context_runs_the_task_to_completion),
      cmocka_unit_test(rollback_by_redeploying_runs_the_previous_config),
      cmocka_unit_test(rollback_by_compensating_undoes_the_completed_stages_last_first),
      cmocka_unit_test(a_first_line_after_the_ring_moved_on_gets_the_missed_line),
      cmocka_unit_test(the_records_of_finished_tasks_are_bounded),
      cmocka_unit_test(a_replay_from_a_large_log_does_not_stall_a_live_consumer),
      cmocka_unit_test(several_replays_beside_a_live_task_logged_with_batch_fsync_do_not_stall_it),
      cmocka_unit_test(a_replay_reads_on_from_the_log_what_the_ring_moved_past_during_the_read),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
