/* exec_bench: what an exec stage costs, beside a bare spawn of /bin/true measured in the same run
 * (baseline_spawn_us, uv_spawn from a small process: this program exec'd again), with 1,000 and
 * 100,000 stages in the plan and with 10,000 other tasks held by the engine: the cost must not grow
 * with the process. Prints `name value unit` lines. Not a test: nothing here fails. Usage:
 * exec_bench [MEASURED_STAGES] [ROUNDS] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static double rss_mb(void) {
  long pages = 0, resident = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  if (f == NULL) return 0;
  if (fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
  fclose(f);
  return (double)resident * (double)sysconf(_SC_PAGESIZE) / (1024.0 * 1024.0);
}

static void report(const char *name, double value, const char *unit) {
  printf("%s %.2f %s\n", name, value, unit);
  fflush(stdout);
}

/* ---- the baseline: uv_spawn of /bin/true and its exit, one after another ---- */

static int spawns_left;

static void on_true_exit(uv_process_t *p, int64_t status, int signal) {
  (void)status;
  (void)signal;
  uv_close((uv_handle_t *)p, NULL);
  spawns_left--;
}

static double baseline_us(int n) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  char *args[] = {"/bin/true", NULL};
  double start = now_us();
  for (spawns_left = n; spawns_left > 0;) {
    uv_process_t p;
    uv_process_options_t o;
    memset(&o, 0, sizeof(o));
    o.file = args[0];
    o.args = args;
    o.exit_cb = on_true_exit;
    o.flags = UV_PROCESS_DETACHED;
    if (uv_spawn(&loop, &p, &o) != 0) {
      fprintf(stderr, "exec_bench: cannot spawn /bin/true\n");
      exit(1);
    }
    int before = spawns_left;
    while (spawns_left == before)
      uv_run(&loop, UV_RUN_ONCE);
  }
  double us = (now_us() - start) / n;
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  return us;
}

/* ---- exec stages ---- */

typedef struct plan_shape {
  size_t stages;
  bool gate; /* the held tasks' plan: one stage behind an approval without a timeout */
} plan_shape;

/* n exec stages running `true`, built without a 100,000-entry JSON config. */
static int exec_factory(const cJSON *config, sc_plan_builder *b, void *udata) {
  const cJSON *n = cJSON_GetObjectItemCaseSensitive(config, "n");
  size_t stages = cJSON_IsNumber(n) ? (size_t)n->valuedouble : 1;
  (void)udata;
  cJSON *params = cJSON_CreateObject();
  cJSON_AddStringToObject(params, "run", "true");
  sc_stage_spec spec;
  sc_stage_spec_init(&spec);
  spec.kind = "exec";
  spec.params = params;
  spec.approval.required = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(config, "gate"));
  char name[32];
  int rc = SC_OK;
  for (size_t i = 0; i < stages && rc == SC_OK; i++) {
    snprintf(name, sizeof(name), "s%zu", i);
    spec.name = name;
    rc = sc_plan_add_stage(b, &spec);
  }
  cJSON_Delete(params);
  return rc;
}

typedef struct timing {
  sc_engine *e;
  size_t warmup, measured, completed;
  double started_at, finished_at;
} timing;

static int on_completed(const sc_event *ev, sc_ack *ack, void *udata) {
  (void)ack;
  timing *t = udata;
  if (ev->type != SC_EV_STAGE_COMPLETED || strcmp(ev->task_id, "measured") != 0) return SC_OK;
  t->completed++;
  if (t->completed == t->warmup) t->started_at = now_us();
  if (t->completed == t->warmup + t->measured) {
    t->finished_at = now_us();
    sc_task_cancel(sc_engine_find_task(t->e, "measured"), "measured enough");
  }
  return SC_OK;
}

static void quiet(const char *stage, int fd, const char *line, size_t len, void *udata) {
  (void)stage, (void)fd, (void)line, (void)len, (void)udata;
}

static void stop_when_done(uv_timer_t *timer) {
  timing *t = timer->data;
  if (t->finished_at > 0) uv_stop(timer->loop);
}

/* The time of one exec stage in a plan of `stages` stages, with `held` other tasks waiting at an
 * approval gate. */
static double stage_us(size_t stages, size_t held, size_t measured, double *rss) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  sc_engine_options o;
  sc_engine_options_init(&o);
  o.factory = exec_factory;
  sc_engine *e = NULL;
  cli_exec *x = NULL;
  if (sc_engine_new(&loop, &o, &e) != SC_OK || cli_exec_register(e, quiet, NULL, &x) != SC_OK) {
    fprintf(stderr, "exec_bench: %s\n", sc_error_message());
    exit(1);
  }
  timing t = {.e = e, .warmup = 10, .measured = measured};
  sc_subscriber sub;
  sc_subscriber_init(&sub);
  sub.mask = 1ull << SC_EV_STAGE_COMPLETED;
  sub.on_event = on_completed;
  sub.udata = &t;
  sc_engine_subscribe(e, &sub, NULL);
  cJSON *gated = cJSON_CreateObject();
  cJSON_AddNumberToObject(gated, "n", 1);
  cJSON_AddTrueToObject(gated, "gate");
  for (size_t i = 0; i < held; i++) {
    char id[32];
    snprintf(id, sizeof(id), "held-%zu", i);
    sc_task_spec s;
    sc_task_spec_init(&s);
    s.task_id = id;
    s.config = gated;
    if (sc_task_submit(e, &s, NULL) != SC_OK) exit(1);
  }
  cJSON_Delete(gated);
  cJSON *config = cJSON_CreateObject();
  cJSON_AddNumberToObject(config, "n", (double)stages);
  sc_task_spec s;
  sc_task_spec_init(&s);
  s.task_id = "measured";
  s.config = config;
  if (sc_task_submit(e, &s, NULL) != SC_OK) exit(1);
  cJSON_Delete(config);
  uv_timer_t timer;
  uv_timer_init(&loop, &timer);
  timer.data = &t;
  uv_timer_start(&timer, stop_when_done, 1, 1);
  uv_run(&loop, UV_RUN_DEFAULT);
  *rss = rss_mb();
  uv_close((uv_handle_t *)&timer, NULL);
  sc_engine_free(e);
  while (cli_exec_running(x) > 0)
    uv_run(&loop, UV_RUN_ONCE);
  cli_exec_free(x);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  return (t.finished_at - t.started_at) / (double)measured;
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(double *v, size_t n) {
  qsort(v, n, sizeof(*v), by_value);
  return v[n / 2];
}

#define ROUNDS_MAX 15

/* The baseline from a fresh, small process (this program again, exec'd with --baseline): in this
 * one, grown by the plans and tasks of the rounds before, a uv_spawn would cost more. */
static double small_process_baseline_us(size_t n) {
  char self[4096], command[4200];
  ssize_t len = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (len <= 0) {
    fprintf(stderr, "exec_bench: cannot find this program\n");
    exit(1);
  }
  self[len] = '\0';
  snprintf(command, sizeof(command), "'%s' --baseline %zu", self, n);
  FILE *f = popen(command, "r");
  double us = 0;
  if (f == NULL || fscanf(f, "%lf", &us) != 1 || us <= 0) {
    fprintf(stderr, "exec_bench: cannot measure the baseline\n");
    exit(1);
  }
  pclose(f);
  return us;
}

int main(int argc, char **argv) {
  if (argc > 2 && strcmp(argv[1], "--baseline") == 0) {
    printf("%.3f\n", baseline_us(atoi(argv[2])));
    return 0;
  }
  size_t measured = argc > 1 ? (size_t)atol(argv[1]) : 200;
  size_t rounds = argc > 2 ? (size_t)atol(argv[2]) : 5;
  if (measured < 1) measured = 1;
  if (rounds < 1 || rounds > ROUNDS_MAX) rounds = 5;
  static const struct {
    const char *name;
    size_t stages, held;
  } runs[] = {{"1k_stages", 1000, 0}, {"100k_stages", 100000, 0}, {"10k_tasks", 1000, 10000}};
  enum { RUNS = sizeof(runs) / sizeof(runs[0]) };
  /* This machine is noisy: the baseline and the three are measured in turn, round after round,
   * and the medians are printed, the ratio's of the per-round ratios. */
  double base[ROUNDS_MAX], us[RUNS][ROUNDS_MAX], ratio[RUNS][ROUNDS_MAX], rss[RUNS] = {0};
  for (size_t r = 0; r < rounds; r++) {
    base[r] = small_process_baseline_us(measured);
    for (size_t i = 0; i < RUNS; i++) {
      us[i][r] = stage_us(runs[i].stages, runs[i].held, measured, &rss[i]);
      ratio[i][r] = us[i][r] / base[r];
    }
  }
  report("baseline_spawn_us", median(base, rounds), "us/spawn");
  for (size_t i = 0; i < RUNS; i++) {
    char name[96];
    snprintf(name, sizeof(name), "cli_exec_stage_us_%s", runs[i].name);
    report(name, median(us[i], rounds), "us/stage");
    snprintf(name, sizeof(name), "cli_exec_stage_ratio_%s", runs[i].name);
    report(name, median(ratio[i], rounds), "x");
    snprintf(name, sizeof(name), "rss_mb_%s", runs[i].name);
    report(name, rss[i], "MB");
  }
  return 0;
}
