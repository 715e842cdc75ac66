/* The SQLite store and the memory store: the projection, every query, the fold and its digest,
 * the unfinished list agreeing with the log's scan, restore, the writer's lock, schema versions,
 * storage errors, retention and import. */
#include <dirent.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include <stagecoach/jsonl.h>
#include <stagecoach/memory.h>
#include <stagecoach/sqlite.h>
#include <stagecoach/stagecoach.h>
#include <stagecoach/store.h>

#include "harness.h"

/* ---- a temporary directory per test ---- */

typedef struct fixture {
  char dir[64];
} fixture;

static int make_temp_dir(void **state) {
  fixture *f = calloc(1, sizeof(*f));
  if (f == NULL) return -1;
  snprintf(f->dir, sizeof(f->dir), "/tmp/sc-sqlite-XXXXXX");
  if (mkdtemp(f->dir) == NULL) {
    free(f);
    return -1;
  }
  *state = f;
  return 0;
}

static int remove_temp_dir(void **state) {
  fixture *f = *state;
  DIR *d = opendir(f->dir);
  if (d != NULL) {
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
      if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
      char path[512];
      snprintf(path, sizeof(path), "%s/%s", f->dir, de->d_name);
      unlink(path);
    }
    closedir(d);
  }
  int rc = rmdir(f->dir);
  free(f);
  return rc == 0 ? 0 : -1;
}

static void temp_path(void **state, const char *name, char out[256]) {
  snprintf(out, 256, "%s/%s", ((fixture *)*state)->dir, name);
}

/* ---- stages: "step" completes with {name: index}, unless its name is in hang ---- */

typedef struct behaviour {
  const char *hang; /* a stage name that never finishes (until cancelled) */
} behaviour;

static int step(sc_stage_ctx *ctx, void *udata) {
  behaviour *b = udata;
  if (b->hang && strcmp(b->hang, sc_stage_name(ctx)) == 0) return SC_OK;
  cJSON *out = cJSON_CreateObject();
  cJSON_AddNumberToObject(out, sc_stage_name(ctx), sc_stage_index(ctx));
  cJSON_AddStringToObject(out, "last", sc_stage_name(ctx));
  sc_stage_complete(ctx, out);
  return SC_OK;
}

static void hang_cancel(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  sc_stage_fail(ctx, SC_ECANCELLED, "cancelled", false);
}

static int hang_start(sc_stage_ctx *ctx, void *udata) {
  return step(ctx, udata);
}

static sc_engine *new_engine(uv_loop_t *loop, behaviour *b) {
  static const sc_stage_kind work = {SC_STAGE_KIND_VERSION, hang_start, hang_cancel, NULL};
  sc_engine *e = NULL;
  assert_int_equal(sc_engine_new(loop, NULL, &e), SC_OK);
  assert_int_equal(sc_engine_register_kind(e, "work", &work, b), SC_OK);
  return e;
}

/* A config of n stages s1..sn of kind "work"; approval on stage approve_at (0: none). */
static cJSON *job(int n, int approve_at) {
  cJSON *c = cJSON_CreateObject();
  cJSON_AddStringToObject(c, "version", "1");
  cJSON *stages = cJSON_AddArrayToObject(c, "stages");
  for (int i = 1; i <= n; i++) {
    cJSON *s = cJSON_CreateObject();
    char name[16];
    snprintf(name, sizeof(name), "s%d", i);
    cJSON_AddStringToObject(s, "name", name);
    cJSON_AddStringToObject(s, "kind", "work");
    if (i == approve_at)
      cJSON_AddBoolToObject(cJSON_AddObjectToObject(s, "approval"), "required", 1);
    cJSON_AddItemToArray(stages, s);
  }
  return c;
}

static void submit(sc_engine *e, const char *id, const char *tenant, int stages, int approve_at) {
  cJSON *config = job(stages, approve_at);
  cJSON *context = json_or_die("{\"start\":true}");
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.task_id = id;
  spec.tenant_id = tenant;
  spec.plan_id = "deploy";
  spec.config = config;
  spec.context = context;
  int rc = sc_task_submit(e, &spec, NULL);
  cJSON_Delete(config);
  cJSON_Delete(context);
  if (rc != SC_OK) fail_msg("submit %s: %s", id, sc_error_message());
}

static void settle(uv_loop_t *loop) {
  for (int i = 0; i < 100000 && uv_loop_alive(loop); i++)
    uv_run(loop, UV_RUN_ONCE);
}

static sc_sqlite *open_db(sc_engine *e, const char *path) {
  sc_sqlite *db = NULL;
  int rc = sc_sqlite_open(e, path, NULL, &db);
  if (rc != SC_OK) fail_msg("sc_sqlite_open %s: %s", path, sc_error_message());
  return db;
}

static sc_sqlite *open_readonly(const char *path) {
  sc_sqlite_options o;
  sc_sqlite_options_init(&o);
  o.readonly = true;
  sc_sqlite *db = NULL;
  int rc = sc_sqlite_open(NULL, path, &o, &db);
  if (rc != SC_OK) fail_msg("open read-only %s: %s", path, sc_error_message());
  return db;
}

static void sql(const char *path, const char *text) {
  sqlite3 *h;
  assert_int_equal(sqlite3_open(path, &h), SQLITE_OK);
  char *err = NULL;
  if (sqlite3_exec(h, text, NULL, NULL, &err) != SQLITE_OK) fail_msg("%s: %s", text, err);
  sqlite3_close(h);
}

static int count_event(const char *json, size_t len, void *udata) {
  (void)json;
  (void)len;
  (*(size_t *)udata)++;
  return 0;
}

/* One run: "done" (5 stages, completes), "stuck" (5 stages, hangs in s3), "waits" (3 stages,
 * waits for approval at s2), written to a log, a database and a memory store at once. The engine
 * is freed without closing anything first, as a crash leaves them (every acked event is in). */
typedef struct run {
  uv_loop_t loop;
  behaviour b;
  sc_engine *e;
  sc_jsonl *log;
  sc_sqlite *db;
  sc_store *mem;
} run;

static void start_run(run *r, const char *log, const char *dbpath) {
  memset(r, 0, sizeof(*r));
  assert_int_equal(uv_loop_init(&r->loop), 0);
  r->b.hang = "s3";
  r->e = new_engine(&r->loop, &r->b);
  assert_int_equal(sc_jsonl_open(r->e, log, NULL, &r->log), SC_OK);
  r->db = open_db(r->e, dbpath);
  assert_int_equal(sc_memory_store_new(&r->mem), SC_OK);
  assert_int_equal(sc_store_attach(r->mem, r->e), SC_OK);
  submit(r->e, "done", "acme", 2, 0);
  submit(r->e, "stuck", "globex", 5, 0);
  submit(r->e, "waits", "initech", 3, 2);
  settle(&r->loop);
}

static void end_run(run *r) {
  assert_int_equal(sc_jsonl_close(r->log), SC_OK);
  assert_int_equal(sc_sqlite_close(r->db), SC_OK);
  sc_engine_free(r->e);
  assert_int_equal(uv_loop_close(&r->loop), 0);
}

/* ---- the projection and the queries ---- */

static void the_projection_holds_every_event_and_one_checkpoint_per_stage_completed(void **state) {
  char log[256], path[256];
  temp_path(state, "run.jsonl", log);
  temp_path(state, "run.db", path);
  run r;
  start_run(&r, log, path);
  sc_store_close(r.mem);
  end_run(&r);

  sc_sqlite *db = open_readonly(path);
  size_t events = 0, logged = 0;
  assert_int_equal(sc_sqlite_events(db, NULL, 0, count_event, &events), SC_OK);
  assert_int_equal(sc_jsonl_read_events(log, count_event, &logged), SC_OK);
  assert_int_equal(events, logged);
  cJSON *list = NULL;
  assert_int_equal(sc_sqlite_checkpoints(db, "stuck", &list), SC_OK);
  assert_int_equal(cJSON_GetArraySize(list), 2); /* s1, s2 */
  assert_int_equal(strncmp(cJSON_GetArrayItem(list, 1)->child->valuestring, "stuck/", 6), 0);
  cJSON_Delete(list);
  assert_int_equal(sc_sqlite_checkpoints(db, "nobody", &list), SC_ENOTFOUND);
  assert_null(list);
  /* From a seq: the events of "stuck" from 4 on. */
  size_t from4 = 0, all = 0;
  assert_int_equal(sc_sqlite_events(db, "stuck", 4, count_event, &from4), SC_OK);
  assert_int_equal(sc_sqlite_events(db, "stuck", 1, count_event, &all), SC_OK);
  assert_int_equal(from4, all - 3);
  sc_sqlite_close(db);
}

static void the_latest_checkpoint_carries_the_whole_context_verified(void **state) {
  char log[256], path[256];
  temp_path(state, "run.jsonl", log);
  temp_path(state, "run.db", path);
  run r;
  start_run(&r, log, path);
  cJSON *expected = cJSON_Duplicate(sc_task_context(sc_engine_find_task(r.e, "stuck")), true);
  sc_store_close(r.mem);
  end_run(&r);
  sc_sqlite *db = open_readonly(path);
  cJSON *latest = NULL;
  assert_int_equal(sc_sqlite_latest(db, "stuck", &latest), SC_OK);
  assert_string_equal(cJSON_GetObjectItem(latest, "stage")->valuestring, "s2");
  assert_true(cJSON_Compare(cJSON_GetObjectItem(latest, "context"), expected, true));
  char digest[72];
  assert_int_equal(sc_json_digest(expected, digest), SC_OK);
  assert_string_equal(cJSON_GetObjectItem(latest, "digest")->valuestring, digest);
  cJSON_Delete(latest);
  cJSON_Delete(expected);
  sc_sqlite_close(db);
}

static void every_store_answers_the_same_checkpoints(void **state) {
  char log[256], path[256];
  temp_path(state, "run.jsonl", log);
  temp_path(state, "run.db", path);
  run r;
  start_run(&r, log, path);
  sc_store *db = sc_sqlite_store(r.db);
  const char *tasks[] = {"done", "stuck", "waits"};
  for (size_t t = 0; t < 3; t++) {
    cJSON *a = NULL, *b = NULL;
    assert_int_equal(sc_store_checkpoints(db, tasks[t], &a), SC_OK);
    assert_int_equal(sc_store_checkpoints(r.mem, tasks[t], &b), SC_OK);
    assert_true(cJSON_Compare(a, b, true));
    const cJSON *c;
    cJSON_ArrayForEach(c, a) {
      cJSON *x = NULL, *y = NULL;
      const char *id = cJSON_GetObjectItem(c, "id")->valuestring;
      assert_int_equal(sc_store_checkpoint(db, id, &x), SC_OK);
      assert_int_equal(sc_store_checkpoint(r.mem, id, &y), SC_OK);
      assert_true(cJSON_Compare(x, y, true));
      assert_non_null(cJSON_GetObjectItem(x, "context"));
      cJSON_Delete(x);
      cJSON_Delete(y);
    }
    cJSON_Delete(a);
    cJSON_Delete(b);
  }
  cJSON *x = NULL;
  assert_int_equal(sc_store_checkpoint(db, "stuck", &x), SC_EINVAL);
  assert_int_equal(sc_store_checkpoint(db, "stuck/0", &x), SC_EINVAL);
  assert_int_equal(sc_store_checkpoint(db, "stuck/999", &x), SC_ENOTFOUND);
  assert_int_equal(sc_store_checkpoint(r.mem, "stuck/999", &x), SC_ENOTFOUND);
  assert_null(x);
  sc_store_close(r.mem);
  end_run(&r);
}

static void a_changed_checkpoint_row_is_found_on_read(void **state) {
  char log[256], path[256];
  temp_path(state, "run.jsonl", log);
  temp_path(state, "run.db", path);
  run r;
  start_run(&r, log, path);
  sc_store_close(r.mem);
  end_run(&r);
  /* The second checkpoint's output is edited: its context no longer folds to its digest. */
  sql(path, "UPDATE checkpoints SET output='{\"s2\":99,\"last\":\"s2\"}' WHERE task_id='stuck' AND"
            " stage='s2'");
  sc_sqlite *db = open_readonly(path);
  cJSON *c = NULL;
  assert_int_equal(sc_sqlite_latest(db, "stuck", &c), SC_ECORRUPT);
  assert_null(c);
  assert_non_null(strstr(sc_error_message(), "changed row"));
  /* The first checkpoint is untouched and still reads. */
  cJSON *list = NULL;
  assert_int_equal(sc_sqlite_checkpoints(db, "stuck", &list), SC_OK);
  const char *first = cJSON_GetObjectItem(cJSON_GetArrayItem(list, 0), "id")->valuestring;
  assert_int_equal(sc_sqlite_checkpoint(db, first, &c), SC_OK);
  cJSON_Delete(c);
  const char *second = cJSON_GetObjectItem(cJSON_GetArrayItem(list, 1), "id")->valuestring;
  sc_unfinished *u = NULL;
  assert_int_equal(sc_sqlite_restore_request(db, second, SC_RECOVER_RETRY, &u), SC_ECORRUPT);
  assert_null(u);
  cJSON_Delete(list);
  sc_sqlite_close(db);
}

static void expect_same_requests(const sc_unfinished *a, size_t na, const sc_unfinished *b,
                                 size_t nb) {
  assert_int_equal(na, nb);
  for (size_t i = 0; i < na; i++) {
    const sc_recovery_request *x = &a[i].request, *y = &b[i].request;
    assert_int_equal(a[i].status, b[i].status);
    assert_string_equal(x->recovered_from, y->recovered_from);
    assert_true((x->last_completed_stage == NULL) == (y->last_completed_stage == NULL));
    if (x->last_completed_stage)
      assert_string_equal(x->last_completed_stage, y->last_completed_stage);
    assert_true((x->context_digest == NULL) == (y->context_digest == NULL));
    if (x->context_digest) assert_string_equal(x->context_digest, y->context_digest);
    assert_true(cJSON_Compare(x->context, y->context, true) || (!x->context && !y->context));
    assert_true(cJSON_Compare(x->config, y->config, true));
    assert_string_equal(x->plan_fingerprint, y->plan_fingerprint);
    assert_string_equal(x->tenant_id, y->tenant_id);
    assert_int_equal(x->epoch, y->epoch);
    assert_int_equal(x->mode, y->mode);
    assert_string_equal(x->root_task_id, y->root_task_id);
  }
}

static void unfinished_agrees_with_the_log_scan_crash_included(void **state) {
  char log[256], path[256];
  temp_path(state, "run.jsonl", log);
  temp_path(state, "run.db", path);
  run r;
  start_run(&r, log, path);
  sc_unfinished *m = NULL;
  size_t nm = 0;
  assert_int_equal(sc_store_unfinished(r.mem, &m, &nm), SC_OK);
  sc_store_close(r.mem);
  /* The crash: the engine goes without a terminal event for "stuck" and "waits". */
  end_run(&r);
  sc_unfinished *a = NULL, *b = NULL;
  size_t na = 0, nb = 0;
  assert_int_equal(sc_jsonl_scan(log, &a, &nb, NULL), SC_OK);
  na = nb;
  sc_sqlite *db = open_readonly(path);
  assert_int_equal(sc_sqlite_unfinished(db, &b, &nb), SC_OK);
  assert_int_equal(na, 2);
  expect_same_requests(a, na, b, nb);
  expect_same_requests(a, na, m, nm);
  assert_string_equal(b[0].request.last_completed_stage, "s2");

  /* Recovery from the database alone, in a new engine writing to the same database: "stuck"
   * resumes at s3 and completes; then the database says only "waits" is unfinished. */
  sc_sqlite_close(db);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  behaviour none = {NULL};
  sc_engine *e = new_engine(&loop, &none);
  db = open_db(e, path);
  recorder rec;
  recorder_attach(&rec, e);
  assert_int_equal(sc_recover_from_restart(e, &b[0].request, NULL), SC_OK);
  settle(&loop);
  assert_string_equal(recorder_types(&rec, NULL),
                      "task.created,task.recovered,task.started,stage.started,stage.completed,"
                      "stage.started,stage.completed,stage.started,stage.completed,task.completed");
  sc_unfinished *c = NULL;
  size_t nc = 0;
  assert_int_equal(sc_sqlite_unfinished(db, &c, &nc), SC_OK);
  assert_int_equal(nc, 1);
  assert_string_equal(c[0].request.recovered_from, "waits");
  sc_unfinished_free(c, nc);
  assert_int_equal(sc_sqlite_close(db), SC_OK);
  sc_engine_free(e);
  recorder_free(&rec);
  assert_int_equal(uv_loop_close(&loop), 0);
  sc_unfinished_free(a, na);
  sc_unfinished_free(b, 2);
  sc_unfinished_free(m, nm);
}

static void restore_from_the_second_of_five_checkpoints_runs_the_rest(void **state) {
  char path[256];
  temp_path(state, "run.db", path);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  behaviour none = {NULL};
  sc_engine *e = new_engine(&loop, &none);
  sc_sqlite *db = open_db(e, path);
  submit(e, "five", "acme", 5, 0);
  settle(&loop);
  cJSON *list = NULL;
  assert_int_equal(sc_sqlite_checkpoints(db, "five", &list), SC_OK);
  assert_int_equal(cJSON_GetArraySize(list), 5);
  const char *second = cJSON_GetObjectItem(cJSON_GetArrayItem(list, 1), "id")->valuestring;
  sc_unfinished *u = NULL;
  assert_int_equal(sc_sqlite_restore_request(db, second, SC_RECOVER_RETRY, &u), SC_OK);
  assert_string_equal(u->request.last_completed_stage, "s2");
  assert_string_equal(u->request.recovered_from, "five");
  assert_string_equal(cJSON_GetObjectItem(u->request.context, "last")->valuestring, "s2");
  assert_null(cJSON_GetObjectItem(u->request.context, "s3"));
  recorder rec;
  recorder_attach(&rec, e);
  sc_task *t = NULL;
  assert_int_equal(sc_recover_from_restart(e, &u->request, &t), SC_OK);
  settle(&loop);
  assert_int_equal(recorder_count(&rec, SC_EV_STAGE_STARTED, NULL), 3); /* s3, s4, s5 */
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, NULL), 1);
  sc_unfinished_free(u, 1);
  assert_int_equal(sc_sqlite_restore_request(db, "five/999", SC_RECOVER_RETRY, &u), SC_ENOTFOUND);
  cJSON_Delete(list);
  assert_int_equal(sc_sqlite_close(db), SC_OK);
  sc_engine_free(e);
  recorder_free(&rec);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void tasks_page_by_tenant_and_status_and_approvals_pending(void **state) {
  char log[256], path[256];
  temp_path(state, "run.jsonl", log);
  temp_path(state, "run.db", path);
  run r;
  start_run(&r, log, path);
  sc_store_close(r.mem);
  sc_store *s = sc_sqlite_store(r.db);
  cJSON *pending = NULL;
  assert_int_equal(sc_store_approvals(s, NULL, &pending), SC_OK);
  assert_int_equal(cJSON_GetArraySize(pending), 1);
  assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(pending, 0), "task")->valuestring,
                      "waits");
  assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(pending, 0), "stage")->valuestring,
                      "s2");
  cJSON_Delete(pending);
  sc_store_task_query q;
  sc_store_task_query_init(&q);
  q.limit = 2;
  cJSON *page = NULL;
  assert_int_equal(sc_store_tasks(s, &q, &page), SC_OK);
  assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(page, "tasks")), 2);
  const cJSON *next = cJSON_GetObjectItem(page, "next");
  assert_true(cJSON_IsString(next));
  q.after = next->valuestring;
  cJSON *page2 = NULL;
  assert_int_equal(sc_store_tasks(s, &q, &page2), SC_OK);
  assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(page2, "tasks")), 1);
  assert_true(cJSON_IsNull(cJSON_GetObjectItem(page2, "next")));
  cJSON_Delete(page2);
  cJSON_Delete(page);
  sc_store_task_query_init(&q);
  q.tenant_id = "acme";
  assert_int_equal(sc_store_tasks(s, &q, &page), SC_OK);
  cJSON *only = cJSON_GetArrayItem(cJSON_GetObjectItem(page, "tasks"), 0);
  assert_string_equal(cJSON_GetObjectItem(only, "task")->valuestring, "done");
  assert_string_equal(cJSON_GetObjectItem(only, "status")->valuestring, "COMPLETED");
  cJSON_Delete(page);
  sc_store_task_query_init(&q);
  q.status = "unfinished";
  assert_int_equal(sc_store_tasks(s, &q, &page), SC_OK);
  assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(page, "tasks")), 2);
  cJSON_Delete(page);
  end_run(&r);
}

static void delete_forgets_a_finished_task_and_refuses_an_unfinished_one(void **state) {
  char log[256], path[256];
  temp_path(state, "run.jsonl", log);
  temp_path(state, "run.db", path);
  run r;
  start_run(&r, log, path);
  sc_store *stores[2] = {sc_sqlite_store(r.db), r.mem};
  for (int i = 0; i < 2; i++) {
    assert_int_equal(sc_store_delete_task(stores[i], "stuck"), SC_EBUSY);
    assert_int_equal(sc_store_delete_task(stores[i], "done"), SC_OK);
    cJSON *l = NULL;
    assert_int_equal(sc_store_checkpoints(stores[i], "done", &l), SC_ENOTFOUND);
    assert_int_equal(sc_store_delete_task(stores[i], "done"), SC_ENOTFOUND);
    size_t n = 0;
    assert_int_equal(sc_store_events(stores[i], "stuck", 1, count_event, &n), SC_OK);
    assert_true(n > 0);
  }
  sc_store_close(r.mem);
  end_run(&r);
}

static int add_to_memory(const char *json, size_t len, void *udata) {
  return sc_memory_store_add(udata, json, len);
}

/* A task stopped mid-way, recovered by a task that finishes: deleting the finished one takes
 * the one it superseded along, which is not offered to recovery again. */
static void delete_takes_the_recovered_task_along(void **state) {
  char path[256];
  temp_path(state, "chain.db", path);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  behaviour b = {"s2"};
  sc_engine *e = new_engine(&loop, &b);
  sc_sqlite *db = open_db(e, path);
  submit(e, "first", "acme", 3, 0); /* hangs in s2: unfinished when the engine goes */
  settle(&loop);
  assert_int_equal(sc_sqlite_close(db), SC_OK);
  sc_engine_free(e);
  assert_int_equal(uv_loop_close(&loop), 0);

  assert_int_equal(uv_loop_init(&loop), 0);
  b.hang = NULL;
  e = new_engine(&loop, &b);
  db = open_db(e, path);
  sc_unfinished *u = NULL;
  size_t n = 0;
  assert_int_equal(sc_sqlite_unfinished(db, &u, &n), SC_OK);
  assert_int_equal(n, 1);
  sc_task *t = NULL;
  assert_int_equal(sc_recover_from_restart(e, &u->request, &t), SC_OK);
  char *second = strdup(sc_task_id(t));
  settle(&loop);
  sc_unfinished_free(u, n);
  assert_int_equal(sc_sqlite_unfinished(db, &u, &n), SC_OK);
  assert_int_equal(n, 0);
  /* The memory store, loaded with the same events, answers the same. */
  sc_store *mem = NULL;
  assert_int_equal(sc_memory_store_new(&mem), SC_OK);
  assert_int_equal(sc_sqlite_events(db, NULL, 0, add_to_memory, mem), SC_OK);
  assert_int_equal(sc_store_unfinished(mem, &u, &n), SC_OK);
  assert_int_equal(n, 0);
  assert_int_equal(sc_store_delete_task(mem, second), SC_OK);
  assert_int_equal(sc_store_unfinished(mem, &u, &n), SC_OK);
  assert_int_equal(n, 0);
  size_t left = 0;
  assert_int_equal(sc_store_events(mem, NULL, 0, count_event, &left), SC_OK);
  assert_int_equal(left, 0);
  sc_store_close(mem);
  assert_int_equal(sc_sqlite_delete_task(db, second), SC_OK);
  assert_int_equal(sc_sqlite_unfinished(db, &u, &n), SC_OK);
  assert_int_equal(n, 0);
  size_t events = 0;
  assert_int_equal(sc_sqlite_events(db, "first", 0, count_event, &events), SC_ENOTFOUND);
  free(second);
  assert_int_equal(sc_sqlite_close(db), SC_OK);
  sc_engine_free(e);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* ---- the writer, schema versions, errors ---- */

static void a_second_writer_is_refused_and_a_reader_is_not(void **state) {
  char path[256];
  temp_path(state, "one.db", path);
  sc_sqlite *a = open_db(NULL, path), *b = NULL;
  assert_int_equal(sc_sqlite_open(NULL, path, NULL, &b), SC_EBUSY);
  assert_null(b);
  assert_non_null(strstr(sc_error_message(), "open for writing"));
  /* The child says what it got through a pipe, not its exit status: a leak checker following the
   * fork (valgrind) may set the status of a child that exits holding the parent's memory. */
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  pid_t pid = fork();
  if (pid == 0) {
    sc_sqlite *c = NULL;
    char got = sc_sqlite_open(NULL, path, NULL, &c) == SC_EBUSY ? 'y' : 'n';
    _exit(write(fds[1], &got, 1) == 1 ? 0 : 1);
  }
  close(fds[1]);
  char got = 0;
  assert_int_equal(read(fds[0], &got, 1), 1);
  close(fds[0]);
  assert_int_equal(got, 'y');
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  sc_sqlite *reader = open_readonly(path);
  cJSON *l = NULL;
  assert_int_equal(sc_sqlite_checkpoints(reader, "x", &l), SC_ENOTFOUND);
  sc_sqlite_close(reader);
  /* The first writer still works after the refusals. */
  uint64_t n = 1;
  assert_int_equal(sc_sqlite_retain(a, &(sc_sqlite_retention){.version = 1, .keep_last = 1}, NULL),
                   SC_OK);
  (void)n;
  assert_int_equal(sc_sqlite_close(a), SC_OK);
  a = open_db(NULL, path);
  assert_int_equal(sc_sqlite_close(a), SC_OK);
}

static void a_newer_database_is_refused_and_a_foreign_file_left_alone(void **state) {
  char path[256], other[256];
  temp_path(state, "new.db", path);
  sc_sqlite_close(open_db(NULL, path));
  sql(path, "UPDATE schema_version SET version=99");
  sc_sqlite *db = NULL;
  assert_int_equal(sc_sqlite_open(NULL, path, NULL, &db), SC_EINVAL);
  assert_non_null(strstr(sc_error_message(), "schema version 99"));
  assert_null(db);
  temp_path(state, "notes.db", other);
  FILE *f = fopen(other, "w");
  fputs("these are notes, not a database\n", f);
  fclose(f);
  assert_int_equal(sc_sqlite_open(NULL, other, NULL, &db), SC_ECORRUPT);
  struct stat st;
  assert_int_equal(stat(other, &st), 0);
  assert_int_equal(st.st_size, 32);
  temp_path(state, "theirs.db", other);
  sql(other, "CREATE TABLE mine(x)");
  assert_int_equal(sc_sqlite_open(NULL, other, NULL, &db), SC_EPARSE);
  sc_sqlite_options o;
  sc_sqlite_options_init(&o);
  o.existing = true;
  temp_path(state, "missing.db", other);
  assert_int_equal(sc_sqlite_open(NULL, other, &o, &db), SC_ENOTFOUND);
  assert_int_not_equal(access(other, F_OK), 0);
}

static bool paused(void *udata) {
  sc_engine *e = udata;
  sc_task *t = sc_engine_find_task(e, "blocked");
  return t && sc_task_get_status(t) == SC_TASK_PAUSED;
}

static int run_until_paused(uv_loop_t *loop, sc_engine *e) {
  const struct timespec pause = {0, 1000000};
  for (int i = 0; i < 5000; i++) {
    if (paused(e)) return 1;
    uv_run(loop, UV_RUN_NOWAIT);
    nanosleep(&pause, NULL);
  }
  return paused(e);
}

static void a_busy_database_pauses_the_task_with_the_error(void **state) {
  char path[256];
  temp_path(state, "busy.db", path);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  behaviour none = {NULL};
  sc_engine *e = new_engine(&loop, &none);
  sc_sqlite_options o;
  sc_sqlite_options_init(&o);
  o.busy_timeout_ms = 20;
  sc_sqlite *db = NULL;
  assert_int_equal(sc_sqlite_open(e, path, &o, &db), SC_OK);
  /* Another connection holds the write lock, as a tool poking at the file would. */
  sqlite3 *other;
  assert_int_equal(sqlite3_open(path, &other), SQLITE_OK);
  assert_int_equal(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
  recorder rec;
  recorder_attach(&rec, e);
  cJSON *config = job(2, 0);
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.task_id = "blocked";
  spec.config = config;
  int rc = sc_task_submit(e, &spec, NULL);
  cJSON_Delete(config);
  /* task.created itself cannot be stored: the submit is refused or the task pauses. */
  if (rc == SC_OK) assert_true(run_until_paused(&loop, e));
  assert_int_equal(recorder_count(&rec, SC_EV_STAGE_STARTED, NULL), 0);
  sqlite3_exec(other, "ROLLBACK", NULL, NULL, NULL);
  sqlite3_close(other);
  assert_int_equal(sc_sqlite_close(db), SC_EBUSY);
  assert_non_null(strstr(sc_error_message(), "busy.db"));
  sc_engine_free(e);
  recorder_free(&rec);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* ---- the file changed under a running writer ---- */

typedef enum { DAMAGE_DELETE, DAMAGE_REPLACE, DAMAGE_WAL_DELETE, DAMAGE_OVERWRITE } damage;

static void do_damage(const char *path, damage how) {
  char other[300];
  switch (how) {
    case DAMAGE_DELETE: assert_int_equal(unlink(path), 0); break;
    case DAMAGE_REPLACE: {
      snprintf(other, sizeof(other), "%s.new", path);
      FILE *f = fopen(other, "w");
      assert_non_null(f);
      fputs("not a database\n", f);
      fclose(f);
      assert_int_equal(rename(other, path), 0);
      break;
    }
    case DAMAGE_WAL_DELETE:
      snprintf(other, sizeof(other), "%s-wal", path);
      assert_int_equal(unlink(other), 0);
      break;
    case DAMAGE_OVERWRITE: {
      /* Garbage over the header and the first pages, as a stray program or a bad disk leaves. */
      FILE *f = fopen(path, "r+");
      assert_non_null(f);
      char junk[8192];
      memset(junk, 0xa5, sizeof(junk));
      assert_int_equal(fwrite(junk, 1, sizeof(junk), f), sizeof(junk));
      fclose(f);
      break;
    }
  }
}

static bool task_paused(sc_engine *e, const char *id) {
  sc_task *t = sc_engine_find_task(e, id);
  return t && sc_task_get_status(t) == SC_TASK_PAUSED;
}

/* A task waits for approval at s2 (s1 stored and acked); the file is damaged; the approval makes
 * the next events, which must not be acked as stored: the task pauses with the store's error,
 * s2 never starts, and the store's close reports the error. */
static void damaged_during_a_run(void **state, damage how, int code, const char *says) {
  char path[256];
  temp_path(state, "damaged.db", path);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  behaviour none = {NULL};
  sc_engine *e = new_engine(&loop, &none);
  sc_sqlite *db = open_db(e, path);
  recorder rec;
  recorder_attach(&rec, e);
  submit(e, "t", "acme", 3, 2);
  settle(&loop);
  sc_task *t = sc_engine_find_task(e, "t");
  assert_non_null(t);
  assert_int_equal(sc_task_get_status(t), SC_TASK_AWAITING_APPROVAL);
  assert_int_equal(recorder_count(&rec, SC_EV_STAGE_COMPLETED, "t"), 1);
  do_damage(path, how);
  assert_int_equal(sc_task_approve(t, "s2", "ops", NULL), SC_OK);
  for (int i = 0; i < 1000 && !task_paused(e, "t"); i++)
    uv_run(&loop, UV_RUN_NOWAIT);
  assert_true(task_paused(e, "t"));
  assert_int_equal(recorder_count(&rec, SC_EV_STAGE_STARTED, "t"), 1);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_PAUSED, "t"), 1);
  const char *paused = NULL;
  for (size_t i = 0; i < rec.n; i++)
    if (rec.types[i] == SC_EV_TASK_PAUSED) paused = rec.lines[i];
  assert_non_null(paused);
  if (strstr(paused, says) == NULL || strstr(paused, "ack-failed") == NULL)
    fail_msg("task.paused does not say '%s': %s", says, paused);
  assert_int_equal(sc_sqlite_close(db), code);
  assert_non_null(strstr(sc_error_message(), says));
  sc_engine_free(e);
  recorder_free(&rec);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void a_database_deleted_during_a_run_pauses_the_task(void **state) {
  damaged_during_a_run(state, DAMAGE_DELETE, SC_EIO, "deleted or replaced");
}

static void a_database_replaced_during_a_run_pauses_the_task(void **state) {
  damaged_during_a_run(state, DAMAGE_REPLACE, SC_EIO, "deleted or replaced");
}

static void a_write_ahead_log_deleted_during_a_run_pauses_the_task(void **state) {
  damaged_during_a_run(state, DAMAGE_WAL_DELETE, SC_EIO, "write-ahead log");
}

static void a_database_overwritten_during_a_run_pauses_the_task(void **state) {
  damaged_during_a_run(state, DAMAGE_OVERWRITE, SC_ECORRUPT, "another program");
}

/* ---- retention and import ---- */

static void retention_keeps_what_recovery_needs_and_the_folds_still_verify(void **state) {
  char path[256];
  temp_path(state, "keep.db", path);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  behaviour b = {"s8"};
  sc_engine *e = new_engine(&loop, &b);
  sc_sqlite *db = open_db(e, path);
  submit(e, "long", "acme", 10, 0);   /* completes s1..s7, hangs in s8 */
  submit(e, "short", "globex", 3, 0); /* completes */
  settle(&loop);
  sc_unfinished *before = NULL, *after = NULL;
  size_t nb = 0, na = 0;
  assert_int_equal(sc_sqlite_unfinished(db, &before, &nb), SC_OK);
  assert_int_equal(nb, 1);
  assert_int_equal(sc_sqlite_close(db), SC_OK);
  sc_engine_free(e);
  assert_int_equal(uv_loop_close(&loop), 0);

  db = open_db(NULL, path);
  sc_sqlite_retention p;
  sc_sqlite_retention_init(&p);
  p.keep_last = 2;
  p.batch_rows = 2;
  sc_sqlite_retain_report rep;
  assert_int_equal(sc_sqlite_retain(db, &p, &rep), SC_OK);
  assert_int_equal(rep.checkpoints_deleted, 5 + 1);
  assert_true(rep.batches >= 4);
  assert_true(rep.longest_batch_ns > 0);
  cJSON *list = NULL;
  assert_int_equal(sc_sqlite_checkpoints(db, "long", &list), SC_OK);
  assert_int_equal(cJSON_GetArraySize(list), 2);
  const cJSON *c;
  cJSON_ArrayForEach(c, list) {
    cJSON *one = NULL;
    int rc = sc_sqlite_checkpoint(db, cJSON_GetObjectItem(c, "id")->valuestring, &one);
    if (rc != SC_OK) fail_msg("%s", sc_error_message());
    cJSON_Delete(one);
  }
  cJSON_Delete(list);
  assert_int_equal(sc_sqlite_unfinished(db, &after, &na), SC_OK);
  expect_same_requests(before, nb, after, na);
  /* An age longer than the clock can count (saturated, not wrapped) deletes nothing. */
  sc_sqlite_retention_init(&p);
  p.max_age_ms = INT64_MAX;
  assert_int_equal(sc_sqlite_retain(db, &p, &rep), SC_OK);
  assert_int_equal(rep.events_deleted + rep.checkpoints_deleted, 0);
  /* An age of zero length deletes nothing more than the policy allows: the latest of the
   * unfinished task stays, and the finished task's events go. */
  sc_sqlite_retention_init(&p);
  p.max_age_ms = 1;
  p.now_ns = INT64_MAX / 2;
  assert_int_equal(sc_sqlite_retain(db, &p, &rep), SC_OK);
  assert_int_equal(sc_sqlite_checkpoints(db, "long", &list), SC_OK);
  assert_int_equal(cJSON_GetArraySize(list), 1);
  cJSON_Delete(list);
  assert_true(rep.events_deleted > 0);
  size_t n = 0;
  assert_int_equal(sc_sqlite_events(db, "short", 1, count_event, &n), SC_OK);
  assert_int_equal(n, 0);
  sc_unfinished_free(after, na);
  assert_int_equal(sc_sqlite_unfinished(db, &after, &na), SC_OK);
  expect_same_requests(before, nb, after, na);
  sc_unfinished_free(before, nb);
  sc_unfinished_free(after, na);
  assert_int_equal(sc_sqlite_close(db), SC_OK);
}

static long rows_of(const char *path, const char *query) {
  sqlite3 *h;
  sqlite3_stmt *st;
  assert_int_equal(sqlite3_open(path, &h), SQLITE_OK);
  assert_int_equal(sqlite3_prepare_v2(h, query, -1, &st, NULL), SQLITE_OK);
  assert_int_equal(sqlite3_step(st), SQLITE_ROW);
  long n = (long)sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  sqlite3_close(h);
  return n;
}

static void retention_deletes_the_approvals_of_old_finished_tasks_only(void **state) {
  char path[256];
  temp_path(state, "approvals.db", path);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  behaviour none = {NULL};
  sc_engine *e = new_engine(&loop, &none);
  sc_sqlite *db = open_db(e, path);
  submit(e, "granted", "acme", 2, 1);   /* approved below, then completes */
  submit(e, "waiting", "globex", 2, 2); /* stays waiting at s2 */
  settle(&loop);
  sc_task *t = sc_engine_find_task(e, "granted");
  assert_non_null(t);
  assert_int_equal(sc_task_approve(t, "s1", "ops", "fine"), SC_OK);
  settle(&loop);
  assert_null(sc_engine_find_task(e, "granted"));
  assert_int_equal(sc_sqlite_close(db), SC_OK);
  sc_engine_free(e);
  assert_int_equal(uv_loop_close(&loop), 0);
  assert_int_equal(rows_of(path, "SELECT count(*) FROM approvals"), 2);

  db = open_db(NULL, path);
  sc_sqlite_retention p;
  sc_sqlite_retention_init(&p);
  sc_sqlite_retain_report rep;
  /* Younger than the limit: nothing goes. */
  p.max_age_ms = 3600 * 1000;
  assert_int_equal(sc_sqlite_retain(db, &p, &rep), SC_OK);
  assert_int_equal(rep.approvals_deleted, 0);
  /* Older: the finished task's approval goes, the waiting task's stays and is still pending. */
  p.max_age_ms = 1;
  p.now_ns = INT64_MAX / 2;
  p.batch_rows = 1;
  assert_int_equal(sc_sqlite_retain(db, &p, &rep), SC_OK);
  assert_int_equal(rep.approvals_deleted, 1);
  cJSON *pending = NULL;
  assert_int_equal(sc_sqlite_approvals(db, NULL, &pending), SC_OK);
  assert_int_equal(cJSON_GetArraySize(pending), 1);
  assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(pending, 0), "task")->valuestring,
                      "waiting");
  cJSON_Delete(pending);
  assert_int_equal(sc_sqlite_close(db), SC_OK);
  assert_int_equal(rows_of(path, "SELECT count(*) FROM approvals WHERE task_id='granted'"), 0);
  assert_int_equal(rows_of(path, "SELECT count(*) FROM approvals WHERE task_id='waiting'"), 1);
}

/* Ids longer than any fixed buffer: every checkpoint id ends in its own /SEQ, the tasks' pages
 * go on after a long id, and retention of such a task keeps a checkpoint that folds. */
static void long_task_ids_are_never_cut(void **state) {
  char path[256];
  temp_path(state, "long.db", path);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  behaviour b = {NULL};
  sc_engine *e = new_engine(&loop, &b);
  sc_sqlite *db = open_db(e, path);
  sc_store *mem = NULL;
  assert_int_equal(sc_memory_store_new(&mem), SC_OK);
  assert_int_equal(sc_store_attach(mem, e), SC_OK);
  char ids[3][700];
  for (int i = 0; i < 3; i++) {
    memset(ids[i], 'x', 600);
    snprintf(ids[i] + 600, 100, "-%d", i);
    submit(e, ids[i], "acme", 4, 0);
  }
  settle(&loop);
  sc_store *stores[2] = {sc_sqlite_store(db), mem};
  for (int k = 0; k < 2; k++) {
    cJSON *list = NULL;
    assert_int_equal(sc_store_checkpoints(stores[k], ids[0], &list), SC_OK);
    assert_int_equal(cJSON_GetArraySize(list), 4);
    const cJSON *c;
    cJSON_ArrayForEach(c, list) {
      char want[720];
      snprintf(want, sizeof(want), "%s/%d", ids[0], cJSON_GetObjectItem(c, "seq")->valueint);
      assert_string_equal(cJSON_GetObjectItem(c, "id")->valuestring, want);
    }
    cJSON_Delete(list);
  }
  sc_store_task_query q;
  sc_store_task_query_init(&q);
  q.limit = 1;
  char *after = NULL;
  for (int i = 0; i < 3; i++) {
    q.after = after;
    cJSON *page = NULL;
    assert_int_equal(sc_sqlite_tasks(db, &q, &page), SC_OK);
    cJSON *t = cJSON_GetArrayItem(cJSON_GetObjectItem(page, "tasks"), 0);
    assert_non_null(t);
    assert_string_equal(cJSON_GetObjectItem(t, "task")->valuestring, ids[i]);
    const cJSON *next = cJSON_GetObjectItem(page, "next");
    free(after);
    after = cJSON_IsString(next) ? strdup(next->valuestring) : NULL;
    assert_true(i == 2 ? after == NULL : after != NULL);
    cJSON_Delete(page);
  }
  sc_store_close(mem);
  assert_int_equal(sc_sqlite_close(db), SC_OK);
  sc_engine_free(e);
  assert_int_equal(uv_loop_close(&loop), 0);
  db = open_db(NULL, path);
  sc_sqlite_retention p;
  sc_sqlite_retention_init(&p);
  p.keep_last = 1;
  sc_sqlite_retain_report rep;
  if (sc_sqlite_retain(db, &p, &rep) != SC_OK) fail_msg("%s", sc_error_message());
  assert_int_equal(rep.checkpoints_deleted, 3 * 3);
  cJSON *latest = NULL;
  for (int i = 0; i < 3; i++) {
    if (sc_sqlite_latest(db, ids[i], &latest) != SC_OK) fail_msg("%s", sc_error_message());
    assert_int_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(latest, "context"), "s4")->valueint,
                     3);
    cJSON_Delete(latest);
  }
  assert_int_equal(sc_sqlite_close(db), SC_OK);
}

typedef struct pause_watch {
  uint64_t last_ns, longest_ns, turns;
  bool done;
  int status;
  sc_sqlite_retain_report report;
} pause_watch;

static void on_turn(uv_check_t *c) {
  pause_watch *w = c->data;
  uint64_t now = uv_hrtime();
  if (w->last_ns && !w->done && now - w->last_ns > w->longest_ns) w->longest_ns = now - w->last_ns;
  w->last_ns = now;
  w->turns++;
}

static void retained(int status, const sc_sqlite_retain_report *r, void *udata) {
  pause_watch *w = udata;
  w->done = true;
  w->status = status;
  w->report = *r;
}

static void retention_runs_beside_a_running_engine_and_the_loop_goes_on(void **state) {
  char path[256];
  temp_path(state, "beside.db", path);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  behaviour none = {NULL};
  sc_engine_options eo;
  sc_engine_options_init(&eo);
  eo.tenant_exclusive = false;
  sc_engine *e = NULL;
  static const sc_stage_kind work = {SC_STAGE_KIND_VERSION, hang_start, hang_cancel, NULL};
  assert_int_equal(sc_engine_new(&loop, &eo, &e), SC_OK);
  assert_int_equal(sc_engine_register_kind(e, "work", &work, &none), SC_OK);
  sc_sqlite *db = open_db(e, path);
  char id[32];
  for (int i = 0; i < 40; i++) {
    snprintf(id, sizeof(id), "old-%02d", i);
    submit(e, id, "acme", 10, 0);
  }
  settle(&loop);
  sc_sqlite_retention p;
  sc_sqlite_retention_init(&p);
  p.keep_last = 1;
  p.batch_rows = 3;
  pause_watch w = {0};
  uv_check_t check;
  uv_check_init(&loop, &check);
  check.data = &w;
  uv_check_start(&check, on_turn);
  uv_unref((uv_handle_t *)&check); /* it watches the loop, it does not keep it alive */
  assert_int_equal(sc_sqlite_retain_start(NULL, &p, retained, &w), SC_EINVAL);
  assert_int_equal(sc_sqlite_retain_start(db, &p, retained, &w), SC_OK);
  for (int i = 0; i < 40; i++) { /* new tasks run while the old ones are trimmed */
    snprintf(id, sizeof(id), "new-%02d", i);
    submit(e, id, "acme", 10, 0);
  }
  for (int i = 0; i < 200000 && (!w.done || uv_loop_alive(&loop)); i++)
    uv_run(&loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&check, NULL);
  uv_run(&loop, UV_RUN_NOWAIT);
  if (w.status != SC_OK) fail_msg("retention: %s", sc_error_message());
  assert_true(w.done);
  assert_int_equal(w.report.checkpoints_deleted >= 40 * 9, true);
  assert_true(w.report.batches > 40);
  print_message("# retention of %llu checkpoints in %llu batches beside a running engine: the loop "
                "turned %llu times, its longest pause %.1f ms (longest batch %.1f ms)\n",
                (unsigned long long)w.report.checkpoints_deleted,
                (unsigned long long)w.report.batches, (unsigned long long)w.turns,
                (double)w.longest_ns / 1e6, (double)w.report.longest_batch_ns / 1e6);
  assert_true(w.longest_ns < 2000000000ull); /* bounded by one batch and the busy timeout */
  /* Every new task completed, with every event stored. */
  sc_unfinished *u = NULL;
  size_t n = 0;
  assert_int_equal(sc_sqlite_unfinished(db, &u, &n), SC_OK);
  assert_int_equal(n, 0);
  cJSON *list = NULL;
  assert_int_equal(sc_sqlite_checkpoints(db, "new-39", &list), SC_OK);
  assert_int_equal(cJSON_GetArraySize(list), 10);
  cJSON_Delete(list);
  assert_int_equal(sc_sqlite_checkpoints(db, "old-00", &list), SC_OK);
  assert_int_equal(cJSON_GetArraySize(list), 1);
  cJSON_Delete(list);
  assert_int_equal(sc_sqlite_close(db), SC_OK);
  sc_engine_free(e);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void an_imported_log_answers_the_same_queries_as_the_projection(void **state) {
  char log[256], path[256], imported[256];
  temp_path(state, "run.jsonl", log);
  temp_path(state, "run.db", path);
  temp_path(state, "imported.db", imported);
  run r;
  start_run(&r, log, path);
  sc_store_close(r.mem);
  end_run(&r);
  sc_sqlite *a = open_readonly(path), *b = open_db(NULL, imported);
  uint64_t n = 0, again = 0;
  assert_int_equal(sc_sqlite_import(b, log, &n), SC_OK);
  assert_true(n > 10);
  assert_int_equal(sc_sqlite_import(b, log, &again), SC_OK);
  assert_int_equal(again, 0);
  const char *tasks[] = {"done", "stuck", "waits"};
  for (int i = 0; i < 3; i++) {
    cJSON *x = NULL, *y = NULL;
    assert_int_equal(sc_sqlite_checkpoints(a, tasks[i], &x), SC_OK);
    assert_int_equal(sc_sqlite_checkpoints(b, tasks[i], &y), SC_OK);
    assert_true(cJSON_Compare(x, y, true));
    cJSON_Delete(x);
    cJSON_Delete(y);
  }
  cJSON *x = NULL, *y = NULL;
  assert_int_equal(sc_sqlite_latest(a, "stuck", &x), SC_OK);
  assert_int_equal(sc_sqlite_latest(b, "stuck", &y), SC_OK);
  assert_true(cJSON_Compare(x, y, true));
  cJSON_Delete(x);
  cJSON_Delete(y);
  sc_unfinished *u = NULL, *v = NULL;
  size_t nu = 0, nv = 0;
  assert_int_equal(sc_sqlite_unfinished(a, &u, &nu), SC_OK);
  assert_int_equal(sc_sqlite_unfinished(b, &v, &nv), SC_OK);
  expect_same_requests(u, nu, v, nv);
  sc_unfinished_free(u, nu);
  sc_unfinished_free(v, nv);
  sc_sqlite_close(a);
  sc_sqlite_close(b);
}

static void the_store_wrappers_refuse_what_a_store_lacks(void **state) {
  (void)state;
  sc_store bare = {.version = SC_STORE_VERSION, .name = "bare"};
  cJSON *out = NULL;
  assert_int_equal(sc_store_tasks(&bare, NULL, &out), SC_EINVAL);
  assert_non_null(strstr(sc_error_message(), "store bare cannot list tasks"));
  sc_store future = {.version = SC_STORE_VERSION + 1, .name = "future"};
  assert_int_equal(sc_store_latest(&future, "x", &out), SC_EINVAL);
  assert_non_null(strstr(sc_error_message(), "version"));
  assert_int_equal(sc_store_close(NULL), SC_OK);
  sc_store *m;
  assert_int_equal(sc_memory_store_new(&m), SC_OK);
  assert_int_equal(sc_store_tasks(m, NULL, &out), SC_EINVAL);
  assert_int_equal(sc_store_close(m), SC_OK);
}

#define T(f) cmocka_unit_test_setup_teardown(f, make_temp_dir, remove_temp_dir)
int main(void) {
  const struct CMUnitTest tests[] = {
      T(the_projection_holds_every_event_and_one_checkpoint_per_stage_completed),
      T(the_latest_checkpoint_carries_the_whole_context_verified),
      T(every_store_answers_the_same_checkpoints),
      T(a_changed_checkpoint_row_is_found_on_read),
      T(unfinished_agrees_with_the_log_scan_crash_included),
      T(restore_from_the_second_of_five_checkpoints_runs_the_rest),
      T(tasks_page_by_tenant_and_status_and_approvals_pending),
      T(retention_deletes_the_approvals_of_old_finished_tasks_only),
      T(a_database_deleted_during_a_run_pauses_the_task),
      T(a_database_replaced_during_a_run_pauses_the_task),
      T(a_write_ahead_log_deleted_during_a_run_pauses_the_task),
      T(a_database_overwritten_during_a_run_pauses_the_task),
      T(delete_forgets_a_finished_task_and_refuses_an_unfinished_one),
      T(delete_takes_the_recovered_task_along),
      T(a_second_writer_is_refused_and_a_reader_is_not),
      T(a_newer_database_is_refused_and_a_foreign_file_left_alone),
      T(a_busy_database_pauses_the_task_with_the_error),
      T(retention_keeps_what_recovery_needs_and_the_folds_still_verify),
      T(retention_runs_beside_a_running_engine_and_the_loop_goes_on),
      T(long_task_ids_are_never_cut),
      T(an_imported_log_answers_the_same_queries_as_the_projection),
      T(the_store_wrappers_refuse_what_a_store_lacks),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
