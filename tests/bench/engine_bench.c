/* engine_bench: the engine's costs, each printed as `name value unit` beside a baseline measured
 * in the same run (these machines are noisy; read the ratios). Not a test: nothing here fails. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <stagecoach/jsonl.h>
#include <stagecoach/stagecoach.h>
#include <uv.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long rss_bytes(void) {
  long pages = 0, resident = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  if (f == NULL) return 0;
  if (fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
  fclose(f);
  return resident * sysconf(_SC_PAGESIZE);
}

static void report(const char *name, double value, const char *unit) {
  printf(value < 10 ? "%s %.3f %s\n" : "%s %.1f %s\n", name, value, unit);
  fflush(stdout);
}

/* ---- stage_overhead_ns: a million fn stages that finish inside start ---- */

static uint64_t events_seen;

static int count_event(const sc_event *ev, sc_ack *ack, void *udata) {
  (void)ev;
  (void)ack;
  (*(uint64_t *)udata)++;
  return SC_OK;
}

static int finish_now(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  sc_stage_complete(ctx, NULL);
  return SC_OK;
}

typedef struct many_stages {
  size_t n;
} many_stages;

/* A factory that builds n identical fn stages without a million-entry JSON config. */
static int many_factory(const cJSON *config, sc_plan_builder *b, void *udata) {
  (void)config;
  many_stages *m = udata;
  cJSON *params = cJSON_CreateObject();
  cJSON_AddStringToObject(params, "fn", "finish_now");
  sc_stage_spec spec;
  sc_stage_spec_init(&spec);
  spec.kind = "fn";
  spec.params = params;
  char name[32];
  int rc = SC_OK;
  for (size_t i = 0; i < m->n && rc == SC_OK; i++) {
    snprintf(name, sizeof(name), "s%zu", i);
    spec.name = name;
    rc = sc_plan_add_stage(b, &spec);
  }
  cJSON_Delete(params);
  return rc;
}

static void (*volatile counter_fn)(uint64_t *);
static void count_call(uint64_t *c) {
  (*c)++;
}

static void bench_stage_overhead(size_t n) {
  many_stages m = {n};
  sc_engine_options o;
  sc_engine_options_init(&o);
  o.factory = many_factory;
  o.factory_udata = &m;
  sc_engine *e;
  sc_engine_new(NULL, &o, &e);
  sc_engine_register_fn(e, "finish_now", finish_now, NULL);
  events_seen = 0;
  sc_subscriber s;
  sc_subscriber_init(&s);
  s.on_event = count_event;
  s.udata = &events_seen;
  sc_engine_subscribe(e, &s, NULL);
  cJSON *config = cJSON_Parse("{\"stages\":\"built by the factory\"}");
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.config = config;
  if (sc_task_submit(e, &spec, NULL) != SC_OK) {
    fprintf(stderr, "submit: %s\n", sc_error_message());
    exit(1);
  }
  double t0 = now_s();
  sc_engine_run(e);
  double t1 = now_s();
  sc_engine_free(e);
  cJSON_Delete(config);

  /* Baseline: the same number of indirect calls to a function that does the same counting. */
  uint64_t calls = events_seen, counted = 0;
  counter_fn = count_call;
  double b0 = now_s();
  for (uint64_t i = 0; i < calls; i++)
    counter_fn(&counted);
  double b1 = now_s();
  report("stage_overhead_ns", (t1 - t0) * 1e9 / (double)n, "ns/stage");
  report("stage_events_per_stage", (double)events_seen / (double)n, "events");
  report("baseline_call_ns", (b1 - b0) * 1e9 / (double)n, "ns/stage");
}

/* ---- concurrent_stages_per_s: 10,000 tasks of 10 stages finishing from a zero-delay timer ---- */

static void timer_closed(uv_handle_t *h) {
  free(h);
}

static void timer_fired(uv_timer_t *t) {
  sc_stage_ctx *ctx = t->data;
  uv_close((uv_handle_t *)t, timer_closed);
  sc_stage_complete(ctx, NULL);
}

static int timer_start(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  uv_timer_t *t = malloc(sizeof(*t));
  uv_timer_init(sc_stage_loop(ctx), t);
  t->data = ctx;
  uv_timer_start(t, timer_fired, 0, 0);
  return SC_OK;
}

typedef struct chain {
  uv_timer_t timer;
  int left;
} chain;

static void chain_fired(uv_timer_t *t) {
  chain *c = (chain *)t;
  if (--c->left > 0) uv_timer_start(t, chain_fired, 0, 0);
}

static void bench_concurrent(int ntasks, int nstages) {
  sc_engine *e;
  sc_engine_new(NULL, NULL, &e);
  static const sc_stage_kind kind = {SC_STAGE_KIND_VERSION, timer_start, NULL, NULL};
  sc_engine_register_kind(e, "tick", &kind, NULL);
  uint64_t seen = 0;
  sc_subscriber s;
  sc_subscriber_init(&s);
  s.on_event = count_event;
  s.udata = &seen;
  sc_engine_subscribe(e, &s, NULL);
  char buf[64];
  cJSON *config = cJSON_CreateObject();
  cJSON *stages = cJSON_AddArrayToObject(config, "stages");
  for (int i = 0; i < nstages; i++) {
    cJSON *st = cJSON_CreateObject();
    snprintf(buf, sizeof(buf), "s%d", i);
    cJSON_AddStringToObject(st, "name", buf);
    cJSON_AddStringToObject(st, "kind", "tick");
    cJSON_AddItemToArray(stages, st);
  }
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.config = config;
  double t0 = now_s();
  for (int i = 0; i < ntasks; i++)
    sc_task_submit(e, &spec, NULL);
  sc_engine_run(e);
  double t1 = now_s();
  sc_engine_free(e);
  cJSON_Delete(config);

  /* Baseline: the same number of zero-delay timer callbacks in the same many chains. */
  uv_loop_t loop;
  uv_loop_init(&loop);
  chain *chains = calloc((size_t)ntasks, sizeof(*chains));
  double b0 = now_s();
  for (int i = 0; i < ntasks; i++) {
    uv_timer_init(&loop, &chains[i].timer);
    chains[i].left = nstages;
    uv_timer_start(&chains[i].timer, chain_fired, 0, 0);
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  double b1 = now_s();
  for (int i = 0; i < ntasks; i++)
    uv_close((uv_handle_t *)&chains[i].timer, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  free(chains);
  double total = (double)ntasks * nstages;
  report("concurrent_stages_per_s", total / (t1 - t0), "stages/s");
  report("baseline_timer_callbacks_per_s", total / (b1 - b0), "callbacks/s");
}

/* ---- event_encode_ns / event_parse_ns: a typical stage.completed ---- */

static void bench_codec(int iterations) {
  cJSON *data = cJSON_Parse(
      "{\"output\":{\"artifact\":\"registry.example/acme/app:2.4.1\",\"replicas\":3},"
      "\"context\":{\"version\":\"2.4.1\",\"artifact\":\"registry.example/acme/app:2.4.1\","
      "\"replicas\":3,\"region\":\"eu-west-1\",\"migrated\":true},"
      "\"digest\":\"sha256:9f2c1d0b8e7a6f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0f9e8d7c\","
      "\"fingerprint\":\"sha256:0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9\","
      "\"duration_ms\":1234}");
  sc_event ev = {0};
  ev.type = SC_EV_STAGE_COMPLETED;
  ev.seq = 7;
  ev.time_ns = 1795861800123456000;
  ev.task_id = "0190f5d2-7c3e-7a11-9b2c-3d4e5f607182";
  ev.tenant_id = "acme";
  ev.plan_id = "tenant-deploy";
  ev.traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  ev.stage = "deploy";
  ev.stage_index = 2;
  ev.attempt = 1;
  ev.status = SC_TASK_RUNNING;
  ev.data = data;
  size_t len = 0, total = 0;
  char *line = sc_event_to_json(&ev, &len);
  char buf[4096];
  double t0 = now_s();
  for (int i = 0; i < iterations; i++)
    total += (size_t)sc_event_encode(&ev, buf, sizeof(buf));
  double t1 = now_s();
  for (int i = 0; i < iterations; i++) {
    sc_event_doc *d;
    sc_event_parse(line, len, &d);
    total += sc_event_doc_event(d)->seq;
    sc_event_doc_free(d);
  }
  double t2 = now_s();
  /* Baselines: cJSON printing the same event as a tree, and cJSON parsing the same line. */
  cJSON *tree = cJSON_Parse(line);
  double b0 = now_s();
  for (int i = 0; i < iterations; i++) {
    char *p = cJSON_PrintUnformatted(tree);
    total += strlen(p);
    free(p);
  }
  double b1 = now_s();
  for (int i = 0; i < iterations; i++) {
    cJSON *j = cJSON_ParseWithLength(line, len);
    total += j != NULL;
    cJSON_Delete(j);
  }
  double b2 = now_s();
  if (total == 0) puts("");
  report("event_bytes", (double)len, "bytes");
  report("event_encode_ns", (t1 - t0) * 1e9 / iterations, "ns/event");
  report("baseline_cjson_print_ns", (b1 - b0) * 1e9 / iterations, "ns/event");
  report("event_parse_ns", (t2 - t1) * 1e9 / iterations, "ns/event");
  report("baseline_cjson_parse_ns", (b2 - b1) * 1e9 / iterations, "ns/event");
  cJSON_Delete(tree);
  free(line);
  cJSON_Delete(data);
}

/* ---- rss_per_idle_task_bytes: 100,000 tasks waiting in a sleep stage ---- */

static int count_started(const sc_event *ev, sc_ack *ack, void *udata) {
  (void)ack;
  if (ev->type == SC_EV_STAGE_STARTED) (*(uint64_t *)udata)++;
  return SC_OK;
}

static double idle_task_rss(int ntasks) {
  sc_engine *e;
  sc_engine_new(NULL, NULL, &e);
  uint64_t started = 0;
  sc_subscriber s;
  sc_subscriber_init(&s);
  s.mask = 1ull << SC_EV_STAGE_STARTED;
  s.on_event = count_started;
  s.udata = &started;
  sc_engine_subscribe(e, &s, NULL);
  cJSON *config = cJSON_Parse("{\"version\":\"2.4.1\",\"stages\":["
                              "{\"name\":\"wait\",\"kind\":\"sleep\",\"params\":{\"ms\":3600000}},"
                              "{\"name\":\"after\",\"kind\":\"sleep\",\"params\":{\"ms\":0}}]}");
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.config = config;
  spec.tenant_id = NULL; /* no tenant: every task may be active at once */
  long before = rss_bytes();
  for (int i = 0; i < ntasks; i++)
    sc_task_submit(e, &spec, NULL);
  for (int turns = 0; started < (uint64_t)ntasks && turns < 100000; turns++)
    uv_run(sc_engine_loop(e), UV_RUN_NOWAIT);
  long after = rss_bytes();
  if (started < (uint64_t)ntasks)
    fprintf(stderr, "only %llu tasks started\n", (unsigned long long)started);
  sc_engine_free(e);
  cJSON_Delete(config);
  return (double)(after - before) / ntasks;
}

static double alloc_2k_rss(int ntasks) {
  long before = rss_bytes();
  char **blocks = malloc((size_t)ntasks * sizeof(*blocks));
  for (int i = 0; i < ntasks; i++) {
    blocks[i] = malloc(2048);
    memset(blocks[i], 1, 2048);
  }
  long after = rss_bytes();
  for (int i = 0; i < ntasks; i++)
    free(blocks[i]);
  free(blocks);
  return (double)(after - before) / ntasks;
}

/* Each RSS figure is taken in a fresh child process, so neither sees the other's freed heap. */
static double in_child(double (*fn)(int), int n) {
  int fds[2];
  double v = -1;
  if (pipe(fds) != 0) return v;
  pid_t pid = fork();
  if (pid == 0) {
    v = fn(n);
    if (write(fds[1], &v, sizeof(v)) != (ssize_t)sizeof(v)) _exit(1);
    _exit(0);
  }
  close(fds[1]);
  if (read(fds[0], &v, sizeof(v)) != (ssize_t)sizeof(v)) v = -1;
  close(fds[0]);
  waitpid(pid, NULL, 0);
  return v;
}

static void bench_idle_rss(int ntasks) {
  report("rss_per_idle_task_bytes", in_child(idle_task_rss, ntasks), "bytes");
  report("baseline_rss_2k_alloc_bytes", in_child(alloc_2k_rss, ntasks), "bytes");
}

/* ---- approvals: 100,000 tasks waiting at a gate, then approved ---- */

typedef struct approval_counts {
  uint64_t requested, started;
} approval_counts;

static int count_approval(const sc_event *ev, sc_ack *ack, void *udata) {
  (void)ack;
  approval_counts *c = udata;
  if (ev->type == SC_EV_APPROVAL_REQUESTED) c->requested++;
  if (ev->type == SC_EV_STAGE_STARTED) c->started++;
  return SC_OK;
}

static const char *gate_config =
    "{\"stages\":[{\"name\":\"gate\",\"kind\":\"fn\",\"params\":{\"fn\":\"finish_now\"},"
    "\"approval\":{\"required\":true}}]}";

static sc_engine *waiting_engine(int ntasks, approval_counts *c, sc_task **tasks) {
  sc_engine *e;
  sc_engine_new(NULL, NULL, &e);
  sc_engine_register_fn(e, "finish_now", finish_now, NULL);
  sc_subscriber s;
  sc_subscriber_init(&s);
  s.mask = 1ull << SC_EV_APPROVAL_REQUESTED | 1ull << SC_EV_STAGE_STARTED;
  s.on_event = count_approval;
  s.udata = c;
  sc_engine_subscribe(e, &s, NULL);
  cJSON *config = cJSON_Parse(gate_config);
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.config = config;
  for (int i = 0; i < ntasks; i++)
    sc_task_submit(e, &spec, tasks ? &tasks[i] : NULL);
  cJSON_Delete(config);
  for (int turns = 0; c->requested < (uint64_t)ntasks && turns < 100000; turns++)
    uv_run(sc_engine_loop(e), UV_RUN_NOWAIT);
  return e;
}

static double waiting_task_rss(int ntasks) {
  approval_counts c = {0};
  long before = rss_bytes();
  sc_engine *e = waiting_engine(ntasks, &c, NULL);
  long after = rss_bytes();
  sc_engine_free(e);
  return (double)(after - before) / ntasks;
}

typedef struct wakeup {
  uv_timer_t timer;
  uint64_t *fired;
} wakeup;

static void woke(uv_timer_t *t) {
  (*((wakeup *)t)->fired)++;
}

static void bench_approvals(int ntasks) {
  report("rss_per_waiting_task_bytes", in_child(waiting_task_rss, ntasks), "bytes");
  approval_counts c = {0};
  sc_task **tasks = malloc((size_t)ntasks * sizeof(*tasks));
  sc_engine *e = waiting_engine(ntasks, &c, tasks);
  double t0 = now_s();
  for (int i = 0; i < ntasks; i++)
    sc_task_approve(tasks[i], NULL, "alice", NULL);
  for (int turns = 0; c.started < (uint64_t)ntasks && turns < 1000000; turns++)
    uv_run(sc_engine_loop(e), UV_RUN_NOWAIT);
  double t1 = now_s();
  sc_engine_run(e);
  sc_engine_free(e);
  free(tasks);
  /* Baseline: one loop wake-up per task (a zero-delay timer and its callback). */
  uv_loop_t loop;
  uv_loop_init(&loop);
  wakeup *w = calloc((size_t)ntasks, sizeof(*w));
  uint64_t fired = 0;
  double b0 = now_s();
  for (int i = 0; i < ntasks; i++) {
    uv_timer_init(&loop, &w[i].timer);
    w[i].fired = &fired;
    uv_timer_start(&w[i].timer, woke, 0, 0);
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  double b1 = now_s();
  for (int i = 0; i < ntasks; i++)
    uv_close((uv_handle_t *)&w[i].timer, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  free(w);
  report("approval_roundtrip_ns", (t1 - t0) * 1e9 / ntasks, "ns/task");
  report("baseline_timer_wakeup_ns", (b1 - b0) * 1e9 / ntasks, "ns/task");
}

/* ---- submit_and_run_us_per_stage: a 100-stage JSON config of fn stages, submitted 1,000 times
 * ---- */

/* The config of n fn stages as a pipeline writes it: the JSON factory reads it, as it would for
 * a `stagecoach run`. Caller frees with cJSON_Delete(). */
static cJSON *fn_config(size_t n) {
  cJSON *config = cJSON_CreateObject();
  cJSON_AddStringToObject(config, "version", "2.4.1");
  cJSON *stages = cJSON_AddArrayToObject(config, "stages");
  char name[32];
  for (size_t i = 0; i < n; i++) {
    cJSON *st = cJSON_CreateObject();
    snprintf(name, sizeof(name), "s%zu", i);
    cJSON_AddStringToObject(st, "name", name);
    cJSON_AddStringToObject(st, "kind", "fn");
    cJSON_AddItemToObject(st, "params", cJSON_CreateObject());
    cJSON_AddStringToObject(cJSON_GetObjectItem(st, "params"), "fn", "finish_now");
    cJSON_AddNumberToObject(st, "timeout_ms", 60000);
    cJSON_AddItemToArray(stages, st);
  }
  return config;
}

/* Each task is submitted and run to its end before the next is submitted, so no two tasks share
 * a plan by being alive at once: what a service that runs the same pipeline again and again
 * pays. The baseline is stage_overhead_ns (one task of a million stages, its plan built once). */
static void bench_submit_and_run(size_t nstages, int ntasks) {
  sc_engine *e;
  sc_engine_new(NULL, NULL, &e);
  sc_engine_register_fn(e, "finish_now", finish_now, NULL);
  uint64_t seen = 0;
  sc_subscriber s;
  sc_subscriber_init(&s);
  s.on_event = count_event;
  s.udata = &seen;
  sc_engine_subscribe(e, &s, NULL);
  cJSON *config = fn_config(nstages);
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.config = config;
  double submit_s = 0, t0 = now_s();
  for (int i = 0; i < ntasks; i++) {
    double s0 = now_s();
    if (sc_task_submit(e, &spec, NULL) != SC_OK) {
      fprintf(stderr, "submit: %s\n", sc_error_message());
      exit(1);
    }
    submit_s += now_s() - s0;
    sc_engine_run(e);
  }
  double t1 = now_s();
  sc_engine_free(e);
  /* The plan building alone, as sc_plan_fingerprint does it (no engine, no cache). */
  double f0 = now_s();
  char fp[72];
  for (int i = 0; i < ntasks / 10; i++)
    sc_plan_fingerprint(NULL, NULL, config, fp);
  double f1 = now_s();
  cJSON_Delete(config);
  double stages = (double)nstages * ntasks;
  report("submit_and_run_us_per_stage", (t1 - t0) * 1e6 / stages, "us/stage");
  report("submit_us_per_stage", submit_s * 1e6 / stages, "us/stage");
  report("plan_build_us_per_stage", (f1 - f0) * 1e6 / ((double)nstages * (ntasks / 10)),
         "us/stage");
}

/* ---- recover_engine_us: scan + open + recover of a 100-stage task stopped half way ---- */

static int never_finish(sc_stage_ctx *ctx, void *udata) {
  (void)ctx;
  (void)udata;
  return SC_OK; /* finishes never: the task stops here when the engine is freed */
}

static int copy_file(const char *from, const char *to) {
  FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
  char buf[65536];
  size_t n;
  int rc = in && out ? 0 : -1;
  while (rc == 0 && (n = fread(buf, 1, sizeof(buf), in)) > 0)
    if (fwrite(buf, 1, n, out) != n) rc = -1;
  if (in) fclose(in);
  if (out && fclose(out) != 0) rc = -1;
  return rc;
}

/* Writes a log whose one task ran 50 of its 100 stages and stopped in the 51st. */
static int stopped_log(const char *path, size_t nstages) {
  sc_engine *e;
  sc_engine_new(NULL, NULL, &e);
  sc_engine_register_fn(e, "finish_now", finish_now, NULL);
  sc_engine_register_fn(e, "never_finish", never_finish, NULL);
  sc_jsonl_options o;
  sc_jsonl_options_init(&o);
  o.fsync = SC_FSYNC_NONE;
  sc_jsonl *j;
  int rc = sc_jsonl_open(e, path, &o, &j);
  cJSON *config = fn_config(nstages);
  cJSON *stuck = cJSON_GetArrayItem(cJSON_GetObjectItem(config, "stages"), (int)nstages / 2);
  cJSON_ReplaceItemInObject(cJSON_GetObjectItem(stuck, "params"), "fn",
                            cJSON_CreateString("never_finish"));
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.config = config;
  spec.tenant_id = "acme";
  uint64_t started = 0;
  sc_subscriber s;
  sc_subscriber_init(&s);
  s.mask = 1ull << SC_EV_STAGE_STARTED;
  s.on_event = count_started;
  s.udata = &started;
  sc_engine_subscribe(e, &s, NULL);
  if (rc == SC_OK) rc = sc_task_submit(e, &spec, NULL);
  for (int turns = 0; rc == SC_OK && started <= nstages / 2 && turns < 100000; turns++)
    uv_run(sc_engine_loop(e), UV_RUN_NOWAIT);

  if (j != NULL && sc_jsonl_close(j) != SC_OK && rc == SC_OK) rc = SC_EIO;
  sc_engine_free(e);
  cJSON_Delete(config);
  return rc;
}

static void bench_recover(size_t nstages, int iterations) {
  char dir[] = "/tmp/engine_bench.XXXXXX", log[64], work[64];
  if (mkdtemp(dir) == NULL) return;
  snprintf(log, sizeof(log), "%s/stopped.jsonl", dir);
  snprintf(work, sizeof(work), "%s/work.jsonl", dir);
  if (stopped_log(log, nstages) != SC_OK) {
    fprintf(stderr, "recover bench: %s\n", sc_error_message());
    return;
  }
  sc_jsonl_options o;
  sc_jsonl_options_init(&o);
  o.fsync = SC_FSYNC_NONE;
  o.existing = true;
  double total = 0, scan = 0;
  int recovered = 0;
  for (int i = 0; i < iterations; i++) {
    if (copy_file(log, work) != 0) break; /* a fresh copy: each recovery appends to the log */
    double t0 = now_s();
    sc_engine *e;
    sc_engine_new(NULL, NULL, &e);
    sc_engine_register_fn(e, "finish_now", finish_now, NULL);
    sc_engine_register_fn(e, "never_finish", never_finish, NULL);
    sc_jsonl *j = NULL;
    sc_unfinished *u = NULL;
    size_t n = 0;
    double s0 = now_s();
    if (sc_jsonl_open(e, work, &o, &j) == SC_OK && sc_jsonl_unfinished(j, &u, &n) == SC_OK &&
        n == 1) {
      scan += now_s() - s0;
      recovered += sc_recover_from_restart(e, &u[0].request, NULL) == SC_OK;
    }
    double t1 = now_s();
    total += t1 - t0;
    sc_unfinished_free(u, n);
    sc_jsonl_close(j);
    sc_engine_free(e);
  }
  /* Baseline: reading the same bytes with read() and parsing each line with cJSON. */
  double b = 0;
  for (int i = 0; i < iterations; i++) {
    double b0 = now_s();
    FILE *f = fopen(log, "rb");
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    while (f != NULL && (got = getline(&line, &cap, f)) > 0) {
      cJSON *ev = cJSON_ParseWithLength(line, (size_t)got);
      recovered += ev == NULL;
      cJSON_Delete(ev);
    }
    free(line);
    if (f) fclose(f);
    b += now_s() - b0;
  }
  unlink(work);
  unlink(log);
  rmdir(dir);
  if (recovered != iterations) fprintf(stderr, "recovered %d of %d\n", recovered, iterations);
  report("recover_engine_us", total * 1e6 / iterations, "us");
  report("recover_open_and_scan_us", scan * 1e6 / iterations, "us");
  report("baseline_read_and_parse_log_us", b * 1e6 / iterations, "us");
}

/* engine_bench [SCALE [NAME...]]: NAME (idle, approvals, stages, submit, recover, concurrent,
 * codec) runs only those; none: all. */
static bool wanted(int argc, char **argv, const char *name) {
  if (argc <= 2) return true;
  for (int i = 2; i < argc; i++)
    if (strcmp(argv[i], name) == 0) return true;
  return false;
}

int main(int argc, char **argv) {
  double scale = argc > 1 ? atof(argv[1]) : 1.0; /* a smaller scale for a quick look */
  if (scale <= 0) scale = 1.0;
  if (wanted(argc, argv, "idle")) bench_idle_rss((int)(100000 * scale));
  if (wanted(argc, argv, "approvals")) bench_approvals((int)(100000 * scale));
  if (wanted(argc, argv, "stages") || wanted(argc, argv, "submit"))
    bench_stage_overhead((size_t)(1000000 * scale));
  if (wanted(argc, argv, "submit"))
    bench_submit_and_run(100, (int)(1000 * scale) > 10 ? (int)(1000 * scale) : 10);
  if (wanted(argc, argv, "recover"))
    bench_recover(100, (int)(200 * scale) > 5 ? (int)(200 * scale) : 5);
  if (wanted(argc, argv, "concurrent")) bench_concurrent((int)(10000 * scale), 10);
  if (wanted(argc, argv, "codec")) bench_codec((int)(200000 * scale));
  return 0;
}
