/* sqlite_bench: the SQLite store's costs, each beside a baseline measured in the same run.
 *   sqlite_projection_events_per_s   an engine's events projected (WAL, synchronous=FULL, one
 *                                    transaction per loop turn, acked after the commit)
 *   baseline_sqlite_inserts_per_s    the same rows the projection wrote (every event, every
 *                                    checkpoint, each task's row inserted once and updated once
 *                                    per loop turn that touched it) inserted by hand into the
 *                                    same schema with prepared statements, one transaction per
 *                                    loop turn of the projected run, same synchronous mode
 *   sqlite_checkpoints_query_us      list, latest (folded and verified) and one by id, for a task
 *                                    of 1,000 checkpoints in a database of 1,000,000 events
 * Files go to a temporary directory under $TMPDIR (default /tmp). Usage: sqlite_bench [scale]. */
#include <stdbool.h>
#include <stdint.h>
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

/* What the projection wrote, read back for the baseline: one entry per event (in the order the
 * events came, which is the order of the events table), with the loop turn it came in, its
 * checkpoint row if it has one, and whether it is its task's last event of that turn (where the
 * projection writes the task's row). */
typedef struct row {
  char *task, *type, *json;
  long seq;
  int64_t time_ns;
  uint32_t turn;
  bool update_task; /* the last event of its task in its turn */
  bool checkpoint;
  char *stage, *reason, *output, *digest, *fingerprint, *context;
  long stage_index, attempt, epoch;
} row;

typedef struct rows {
  row *v;
  size_t n, cap;
  uint32_t *turn_of; /* per event as delivered, the turn counter */
  size_t nturn, capturn;
  uint32_t turns;
} rows;

static char *dup_col(sqlite3_stmt *st, int i) {
  const char *t = (const char *)sqlite3_column_text(st, i);
  return t ? strdup(t) : NULL;
}

static sqlite3 *raw(const char *path, const char *sync);

/* The rows the projection wrote, read back (outside the timed part). */
static void read_back(const char *path, rows *r, int ntasks) {
  sqlite3 *h = raw(path, "FULL");
  sqlite3_stmt *st;
  sqlite3_prepare_v2(h,
                     "SELECT e.task_id, e.seq, e.type, e.time_ns, e.json, c.stage, c.stage_index,"
                     " c.attempt, c.epoch, c.reason, c.output, c.digest, c.fingerprint, c.context,"
                     " c.seq IS NOT NULL FROM events e LEFT JOIN checkpoints c ON"
                     " c.task_id=e.task_id AND c.seq=e.seq ORDER BY e.id",
                     -1, &st, NULL);
  while (sqlite3_step(st) == SQLITE_ROW) {
    if (r->n == r->cap) {
      r->cap = r->cap ? r->cap * 2 : 4096;
      r->v = realloc(r->v, r->cap * sizeof(*r->v));
    }
    row *w = &r->v[r->n];
    memset(w, 0, sizeof(*w));
    w->task = dup_col(st, 0);
    w->seq = (long)sqlite3_column_int64(st, 1);
    w->type = dup_col(st, 2);
    w->time_ns = sqlite3_column_int64(st, 3);
    w->json = dup_col(st, 4);
    w->checkpoint = sqlite3_column_int(st, 14) != 0;
    if (w->checkpoint) {
      w->stage = dup_col(st, 5);
      w->stage_index = (long)sqlite3_column_int64(st, 6);
      w->attempt = (long)sqlite3_column_int64(st, 7);
      w->epoch = (long)sqlite3_column_int64(st, 8);
      w->reason = dup_col(st, 9);
      w->output = dup_col(st, 10);
      w->digest = dup_col(st, 11);
      w->fingerprint = dup_col(st, 12);
      w->context = dup_col(st, 13);
    }
    w->turn = r->n < r->nturn ? r->turn_of[r->n] : 0;
    r->n++;
  }
  sqlite3_finalize(st);
  sqlite3_close(h);
  /* Walking back, the first event of a task met in a turn is its last of that turn. */
  uint32_t *seen = calloc((size_t)ntasks, sizeof(*seen));
  for (size_t i = r->n; i-- > 0;) {
    row *w = &r->v[i];
    int t = atoi(w->task + strlen("task-"));
    if (t < 0 || t >= ntasks) continue;
    if (seen[t] != w->turn + 1) {
      seen[t] = w->turn + 1;
      w->update_task = true;
    }
  }
  free(seen);
}

static void on_check(uv_check_t *c) {
  ((rows *)c->data)->turns++;
}

/* A plain subscriber: the turn each event came in (the events table keeps their order). */
static int on_turn_event(const sc_event *ev, sc_ack *ack, void *udata) {
  (void)ev;
  (void)ack;
  rows *r = udata;
  if (r->nturn == r->capturn) {
    r->capturn = r->capturn ? r->capturn * 2 : 4096;
    r->turn_of = realloc(r->turn_of, r->capturn * sizeof(*r->turn_of));
  }
  r->turn_of[r->nturn++] = r->turns;
  return SC_OK;
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
  sc_subscriber sub;
  sc_subscriber_init(&sub);
  sub.on_event = on_turn_event;
  sub.udata = r;
  if (sc_engine_subscribe(e, &sub, NULL) != SC_OK) die("subscribe");
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
  /* Every event is committed and acked when the run returns (a terminal event waits for its
   * ack); the close's checkpoint of the WAL into the file is left out, as the baseline's is. */
  double took = now_s() - t0;
  if (db && sc_sqlite_close(db) != SC_OK) die("close");
  if (path) read_back(path, r, ntasks);
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

static sqlite3_stmt *prepare(sqlite3 *h, const char *sql) {
  sqlite3_stmt *st;
  if (sqlite3_prepare_v2(h, sql, -1, &st, NULL) != SQLITE_OK) die(sqlite3_errmsg(h));
  return st;
}

static void bind_or_null(sqlite3_stmt *st, int i, const char *v) {
  if (v)
    sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC);
  else
    sqlite3_bind_null(st, i);
}

static void step_or_die(sqlite3_stmt *st, const char *what) {
  if (sqlite3_step(st) != SQLITE_DONE) die(what);
  sqlite3_reset(st);
}

/* The baseline: the rows the projection wrote, inserted by hand, one transaction per loop turn of
 * the projected run (the task row's update once per task per turn, as the projection does it);
 * seconds. */
static double insert_plain(const char *path, const rows *r) {
  sc_sqlite *db;
  if (sc_sqlite_open(NULL, path, NULL, &db) != SC_OK) die("open baseline"); /* the schema */
  sc_sqlite_close(db);
  sqlite3 *h = raw(path, "FULL");
  sqlite3_exec(h, "PRAGMA cache_size=-32768", NULL, NULL, NULL); /* as the store sets it */
  sqlite3_stmt *ev = prepare(h, "INSERT INTO events(task_id, seq, type, time_ns, json)"
                                " VALUES(?1,?2,?3,?4,?5)");
  sqlite3_stmt *task =
      prepare(h, "INSERT INTO tasks(id, tenant, plan, status, stage_index, epoch, created_ns,"
                 " updated_ns, initial_context) VALUES(?1,'acme',NULL,'CREATED',-1,0,?2,?2,NULL)");
  sqlite3_stmt *update = prepare(h, "UPDATE tasks SET status=?2, stage=?3, stage_index=?4,"
                                    " epoch=?5, updated_ns=?6, finished=?7 WHERE id=?1");
  sqlite3_stmt *cp = prepare(h, "INSERT INTO checkpoints(task_id, seq, stage, stage_index,"
                                " attempt, epoch, time_ns, reason, output, digest, fingerprint,"
                                " context) VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12)");
  double t0 = now_s();
  for (size_t first = 0; first < r->n;) {
    size_t end = first;
    while (end < r->n && r->v[end].turn == r->v[first].turn)
      end++;
    sqlite3_exec(h, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    for (size_t i = first; i < end; i++) {
      const row *w = &r->v[i];
      sqlite3_bind_text(ev, 1, w->task, -1, SQLITE_STATIC);
      sqlite3_bind_int64(ev, 2, w->seq);
      sqlite3_bind_text(ev, 3, w->type, -1, SQLITE_STATIC);
      sqlite3_bind_int64(ev, 4, w->time_ns);
      sqlite3_bind_text(ev, 5, w->json, -1, SQLITE_STATIC);
      step_or_die(ev, "baseline event");
      if (strcmp(w->type, "task.created") == 0) {
        sqlite3_bind_text(task, 1, w->task, -1, SQLITE_STATIC);
        sqlite3_bind_int64(task, 2, w->time_ns);
        step_or_die(task, "baseline task");
      }
      if (w->checkpoint) {
        sqlite3_bind_text(cp, 1, w->task, -1, SQLITE_STATIC);
        sqlite3_bind_int64(cp, 2, w->seq);
        sqlite3_bind_text(cp, 3, w->stage, -1, SQLITE_STATIC);
        sqlite3_bind_int64(cp, 4, w->stage_index);
        sqlite3_bind_int64(cp, 5, w->attempt);
        sqlite3_bind_int64(cp, 6, w->epoch);
        sqlite3_bind_int64(cp, 7, w->time_ns);
        sqlite3_bind_text(cp, 8, w->reason, -1, SQLITE_STATIC);
        bind_or_null(cp, 9, w->output);
        sqlite3_bind_text(cp, 10, w->digest, -1, SQLITE_STATIC);
        bind_or_null(cp, 11, w->fingerprint);
        bind_or_null(cp, 12, w->context);
        step_or_die(cp, "baseline checkpoint");
      }
    }
    for (size_t i = first; i < end; i++) {
      const row *w = &r->v[i];
      if (!w->update_task) continue;
      sqlite3_bind_text(update, 1, w->task, -1, SQLITE_STATIC);
      sqlite3_bind_text(update, 2, "RUNNING", -1, SQLITE_STATIC);
      bind_or_null(update, 3, w->stage);
      sqlite3_bind_int64(update, 4, w->stage_index);
      sqlite3_bind_int64(update, 5, w->epoch);
      sqlite3_bind_int64(update, 6, w->time_ns);
      sqlite3_bind_int(update, 7, strcmp(w->type, "task.completed") == 0);
      step_or_die(update, "baseline task update");
    }
    if (sqlite3_exec(h, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) die("baseline commit");
    first = end;
  }
  double took = now_s() - t0;
  sqlite3_finalize(ev);
  sqlite3_finalize(task);
  sqlite3_finalize(update);
  sqlite3_finalize(cp);
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
    row *w = &r->v[i];
    free(w->task);
    free(w->type);
    free(w->json);
    free(w->stage);
    free(w->reason);
    free(w->output);
    free(w->digest);
    free(w->fingerprint);
    free(w->context);
  }
  free(r->v);
  free(r->turn_of);
  memset(r, 0, sizeof(*r));
}

static void remove_db(const char *path) {
  char p[640];
  unlink(path);
  snprintf(p, sizeof(p), "%s-wal", path);
  unlink(p);
  snprintf(p, sizeof(p), "%s-shm", path);
  unlink(p);
}

static double median3(const double v[3]) {
  double a = v[0], b = v[1], c = v[2];
  if (a > b) {
    double t = a;
    a = b;
    b = t;
  }
  return c < a ? a : c > b ? b : c;
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

  /* Throughput: many tasks at once, so that a loop turn carries the events of many. Three
   * rounds, the projection and its baseline interleaved, the medians reported: the disk's fsync
   * and the other work on the machine vary more between runs than the two differ. */
  int ntasks = (int)(200 * scale), nstages = 20;
  double eps[3], base[3], ratio[3];
  for (int round = 0; round < 3; round++) {
    rows r = {0};
    double projected = run_projected(a, ntasks, nstages, &r);
    rows none = {0};
    double alone = run_projected(NULL, ntasks, nstages, &none);
    free_rows(&none);
    double plain = insert_plain(b, &r);
    size_t ncheckpoints = 0, nupdates = 0, nturns = 0;
    for (size_t i = 0; i < r.n; i++) {
      ncheckpoints += r.v[i].checkpoint;
      nupdates += r.v[i].update_task;
      nturns += i == 0 || r.v[i].turn != r.v[i - 1].turn;
    }
    eps[round] = (double)r.n / projected;
    base[round] = (double)r.n / plain;
    ratio[round] = eps[round] / base[round];
    if (round == 0)
      printf("# %zu events of %d tasks x %d stages in %zu loop turns, about %zu events a turn; "
             "the baseline writes them, %zu checkpoints, %d task rows and %zu updates of them\n",
             r.n, ntasks, nstages, nturns, nturns ? r.n / nturns : 0, ncheckpoints, ntasks,
             nupdates);
    printf("# round %d: the engine alone %.3f s, with the projection %.3f s; the baseline's "
           "inserts %.3f s (%.2f x)\n",
           round + 1, alone, projected, plain, ratio[round]);
    free_rows(&r);
    remove_db(a);
    remove_db(b);
  }
  report("sqlite_projection_events_per_s", median3(eps), "events/s");
  report("baseline_sqlite_inserts_per_s", median3(base), "rows/s");
  report("sqlite_projection_vs_baseline", median3(ratio), "x");

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
