/* sqlite_bench: the SQLite store's costs, each beside a baseline measured in the same run.
 *   sqlite_projection_events_per_s   an engine's events projected (WAL, synchronous=FULL, one
 *                                    transaction per loop turn, acked after the commit)
 *   baseline_sqlite_inserts_per_s    the same event rows inserted by hand into the same schema,
 *                                    one transaction per batch of as many rows as a loop turn
 *                                    held on average, same synchronous mode
 *   sqlite_checkpoints_query_us      list, latest (folded and verified) and one by id, for a task
 *                                    of 1,000 checkpoints in a database of 1,000,000 events
 * Files go to a temporary directory under $TMPDIR (default /tmp). Usage: sqlite_bench [scale]. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>
#include <stagecoach/sqlite.h>
#include <stagecoach/stagecoach.h>
#include <uv.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void report(const char *name, double value, const char *unit) {
  printf(strcmp(unit, "x") == 0 ? "%s %.2f %s\n" : "%s %.1f %s\n", name, value, unit);
  fflush(stdout);
}

static void die(const char *what) {
  fprintf(stderr, "sqlite_bench: %s: %s\n", what, sc_error_message());
  exit(1);
}

static int finish_now(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  cJSON *out = cJSON_CreateObject();
  cJSON_AddNumberToObject(out, sc_stage_name(ctx), sc_stage_index(ctx));
  sc_stage_complete(ctx, out);
  return SC_OK;
}

/* The events as encoded, kept for the baseline, and the loop turns they came in. */
typedef struct rows {
  char **json;
  char **task;
  long *seq;
  size_t n, cap;
  uint64_t turns;
} rows;

static void keep(rows *r, const char *task, long seq, const char *json) {
  if (r->n == r->cap) {
    r->cap = r->cap ? r->cap * 2 : 4096;
    r->json = realloc(r->json, r->cap * sizeof(*r->json));
    r->task = realloc(r->task, r->cap * sizeof(*r->task));
    r->seq = realloc(r->seq, r->cap * sizeof(*r->seq));
  }
  r->json[r->n] = strdup(json);
  r->task[r->n] = strdup(task);
  r->seq[r->n] = seq;
  r->n++;
}

static sqlite3 *raw(const char *path, const char *sync);

/* The rows the projection wrote, read back (outside the timed part). */
static void read_back(const char *path, rows *r) {
  sqlite3 *h = raw(path, "FULL");
  sqlite3_stmt *st;
  sqlite3_prepare_v2(h, "SELECT task_id, seq, json FROM events ORDER BY id", -1, &st, NULL);
  while (sqlite3_step(st) == SQLITE_ROW)
    keep(r, (const char *)sqlite3_column_text(st, 0), (long)sqlite3_column_int64(st, 1),
         (const char *)sqlite3_column_text(st, 2));
  sqlite3_finalize(st);
  sqlite3_close(h);
}

static void on_check(uv_check_t *c) {
  ((rows *)c->data)->turns++;
}

static cJSON *config_of(int nstages) {
  cJSON *config = cJSON_CreateObject();
  cJSON *stages = cJSON_AddArrayToObject(config, "stages");
  for (int i = 0; i < nstages; i++) {
    char name[16];
    snprintf(name, sizeof(name), "s%d", i);
    cJSON *st = cJSON_CreateObject();
    cJSON_AddStringToObject(st, "name", name);
    cJSON_AddStringToObject(st, "kind", "fn");
    cJSON_AddStringToObject(cJSON_AddObjectToObject(st, "params"), "fn", "finish_now");
    cJSON_AddItemToArray(stages, st);
  }
  return config;
}

/* Runs ntasks tasks of nstages stages at once, projected into path; seconds. */
static double run_projected(const char *path, int ntasks, int nstages, rows *r) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  sc_engine_options eo;
  sc_engine_options_init(&eo);
  eo.tenant_exclusive = false;
  sc_engine *e;
  if (sc_engine_new(&loop, &eo, &e) != SC_OK) die("engine");
  sc_engine_register_fn(e, "finish_now", finish_now, NULL);
  sc_sqlite *db = NULL;
  if (path && sc_sqlite_open(e, path, NULL, &db) != SC_OK) die("open");
  uv_check_t check;
  uv_check_init(&loop, &check);
  check.data = r;
  uv_check_start(&check, on_check);
  uv_unref((uv_handle_t *)&check);
  cJSON *config = config_of(nstages);
  double t0 = now_s();
  for (int i = 0; i < ntasks; i++) {
    char id[32];
    snprintf(id, sizeof(id), "task-%d", i);
    sc_task_spec spec;
    sc_task_spec_init(&spec);
    spec.task_id = id;
    spec.tenant_id = "acme";
    spec.config = config;
    if (sc_task_submit(e, &spec, NULL) != SC_OK) die("submit");
  }
  sc_engine_run(e);
  if (db && sc_sqlite_close(db) != SC_OK) die("close");
  double took = now_s() - t0;
  if (path) read_back(path, r);
  uv_close((uv_handle_t *)&check, NULL);
  sc_engine_free(e);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  cJSON_Delete(config);
  return took;
}

static sqlite3 *raw(const char *path, const char *sync) {
  sqlite3 *h;
  if (sqlite3_open(path, &h) != SQLITE_OK) die("raw open");
  char sql[128];
  snprintf(sql, sizeof(sql), "PRAGMA journal_mode=WAL; PRAGMA synchronous=%s", sync);
  sqlite3_exec(h, sql, NULL, NULL, NULL);
  return h;
}

/* The baseline: the same rows into the events table, batch rows per transaction; seconds. */
static double insert_plain(const char *path, const rows *r, size_t batch) {
  sc_sqlite *db;
  if (sc_sqlite_open(NULL, path, NULL, &db) != SC_OK) die("open baseline"); /* the schema */
  sc_sqlite_close(db);
  sqlite3 *h = raw(path, "FULL");
  sqlite3_stmt *st;
  sqlite3_prepare_v2(h,
                     "INSERT INTO events(task_id, seq, type, time_ns, json) VALUES(?1,?2,"
                     "'stage.completed',0,?3)",
                     -1, &st, NULL);
  double t0 = now_s();
  for (size_t i = 0; i < r->n; i++) {
    if (i % batch == 0) sqlite3_exec(h, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    sqlite3_bind_text(st, 1, r->task[i], -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, r->seq[i]);
    sqlite3_bind_text(st, 3, r->json[i], -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) die("baseline insert");
    sqlite3_reset(st);
    if (i % batch == batch - 1 || i == r->n - 1) sqlite3_exec(h, "COMMIT", NULL, NULL, NULL);
  }
  double took = now_s() - t0;
  sqlite3_finalize(st);
  sqlite3_close(h);
  return took;
}

/* Fills path up to total events with other tasks' rows (and a checkpoint for every third), fast:
 * one transaction, synchronous off. */
static void fill(const char *path, long have, long total) {
  sqlite3 *h = raw(path, "OFF");
  sqlite3_stmt *ev, *cp, *task;
  sqlite3_prepare_v2(h,
                     "INSERT INTO events(task_id, seq, type, time_ns, json) VALUES(?1,?2,"
                     "'stage.completed',?3,'{\"specversion\":\"1.0\",\"filler\":true}')",
                     -1, &ev, NULL);
  sqlite3_prepare_v2(h,
                     "INSERT INTO checkpoints(task_id, seq, stage, stage_index, attempt, epoch,"
                     " time_ns, reason, output, digest) VALUES(?1,?2,'s',0,1,0,?3,'run',"
                     "'{\"x\":1}','sha256:0')",
                     -1, &cp, NULL);
  sqlite3_prepare_v2(h,
                     "INSERT INTO tasks(id, status, created_ns, updated_ns, finished) VALUES(?1,"
                     "'COMPLETED',0,0,1)",
                     -1, &task, NULL);
  sqlite3_exec(h, "BEGIN", NULL, NULL, NULL);
  char id[32] = "";
  for (long i = 0; i < total - have; i++) {
    long t = i / 1000, seq = i % 1000 + 1;
    if (seq == 1) {
      snprintf(id, sizeof(id), "filler-%06ld", t);
      sqlite3_bind_text(task, 1, id, -1, SQLITE_STATIC);
      sqlite3_step(task);
      sqlite3_reset(task);
    }
    sqlite3_bind_text(ev, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(ev, 2, seq);
    sqlite3_bind_int64(ev, 3, i);
    if (sqlite3_step(ev) != SQLITE_DONE) die("fill");
    sqlite3_reset(ev);
    if (seq % 3 == 0) {
      sqlite3_bind_text(cp, 1, id, -1, SQLITE_STATIC);
      sqlite3_bind_int64(cp, 2, seq);
      sqlite3_bind_int64(cp, 3, i);
      sqlite3_step(cp);
      sqlite3_reset(cp);
    }
  }
  sqlite3_exec(h, "COMMIT", NULL, NULL, NULL);
  sqlite3_finalize(ev);
  sqlite3_finalize(cp);
  sqlite3_finalize(task);
  sqlite3_exec(h, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL);
  sqlite3_close(h);
}

static void free_rows(rows *r) {
  for (size_t i = 0; i < r->n; i++) {
    free(r->json[i]);
    free(r->task[i]);
  }
  free(r->json);
  free(r->task);
  free(r->seq);
  memset(r, 0, sizeof(*r));
}

static void remove_db(const char *path) {
  char p[600];
  unlink(path);
  snprintf(p, sizeof(p), "%s-wal", path);
  unlink(p);
  snprintf(p, sizeof(p), "%s-shm", path);
  unlink(p);
}

int main(int argc, char **argv) {
  double scale = argc > 1 ? atof(argv[1]) : 1.0;
  if (scale <= 0) scale = 1.0;
  const char *tmpdir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  char dir[512], a[600], b[600], c[600];
  snprintf(dir, sizeof(dir), "%s/sc-sqlite-bench-XXXXXX", tmpdir);
  if (mkdtemp(dir) == NULL) die("mkdtemp");
  snprintf(a, sizeof(a), "%s/projection.db", dir);
  snprintf(b, sizeof(b), "%s/baseline.db", dir);
  snprintf(c, sizeof(c), "%s/query.db", dir);

  /* Throughput: many tasks at once, so that a loop turn carries the events of many. */
  rows r = {0};
  int ntasks = (int)(200 * scale), nstages = 20;
  double projected = run_projected(a, ntasks, nstages, &r);
  rows none = {0};
  double alone = run_projected(NULL, ntasks, nstages, &none);
  printf("# the engine alone runs the same tasks in %.3f s, with the projection in %.3f s\n", alone,
         projected);
  size_t batch = r.turns ? (size_t)(r.n / r.turns) : 1;
  if (batch == 0) batch = 1;
  double plain = insert_plain(b, &r, batch);
  double eps = (double)r.n / projected, base = (double)r.n / plain;
  printf("# %zu events of %d tasks x %d stages; %llu loop turns, about %zu events a turn\n", r.n,
         ntasks, nstages, (unsigned long long)r.turns, batch);
  report("sqlite_projection_events_per_s", eps, "events/s");
  report("baseline_sqlite_inserts_per_s", base, "rows/s");
  report("sqlite_projection_vs_baseline", eps / base, "x");
  free_rows(&r);
  remove_db(a);
  remove_db(b);

  /* Queries: a task of 1,000 checkpoints in a database of 1,000,000 events. */
  long total = (long)(1000000 * (scale < 1 ? scale : 1));
  rows q = {0};
  run_projected(c, 1, 1000, &q);
  double t0 = now_s();
  fill(c, (long)q.n, total);
  printf("# filled %ld events in %.1f s\n", total, now_s() - t0);
  free_rows(&q);
  sc_sqlite_options o;
  sc_sqlite_options_init(&o);
  o.readonly = true;
  sc_sqlite *db;
  if (sc_sqlite_open(NULL, c, &o, &db) != SC_OK) die("open query db");
  const int reps = 20;
  double list = 0, latest = 0, one = 0;
  for (int i = 0; i < reps; i++) {
    cJSON *out;
    double s = now_s();
    if (sc_sqlite_checkpoints(db, "task-0", &out) != SC_OK || cJSON_GetArraySize(out) != 1000)
      die("checkpoints");
    list += now_s() - s;
    cJSON_Delete(out);
    s = now_s();
    if (sc_sqlite_latest(db, "task-0", &out) != SC_OK) die("latest");
    latest += now_s() - s;
    cJSON_Delete(out);
    s = now_s();
    if (sc_sqlite_checkpoint(db, "task-0/1504", &out) != SC_OK) die("checkpoint by id");
    one += now_s() - s;
    cJSON_Delete(out);
  }
  sc_sqlite_close(db);
  report("sqlite_checkpoints_query_us", list / reps * 1e6, "us");
  report("sqlite_latest_checkpoint_us", latest / reps * 1e6, "us");
  report("sqlite_checkpoint_by_id_us", one / reps * 1e6, "us");
  remove_db(c);
  rmdir(dir);
  return 0;
}
