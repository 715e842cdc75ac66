/* Fixtures of the tests that build logs with real engines (test_compact.c, test_jsonl_store.c): a
 * temporary directory per test, the engines, stages and logs they use. Included once, after
 * harness.h and the includes of the test file, with LOGFIX_DIR_PREFIX naming the directory. */
#ifndef STAGECOACH_TEST_LOGFIX_H
#define STAGECOACH_TEST_LOGFIX_H

/* ---- a temporary directory per test ---- */

typedef struct fixture {
  char dir[64];
} fixture;

static inline int make_temp_dir(void **state) {
  fixture *f = calloc(1, sizeof(*f));
  if (f == NULL) return -1;
  snprintf(f->dir, sizeof(f->dir), LOGFIX_DIR_PREFIX "-XXXXXX");
  if (mkdtemp(f->dir) == NULL) {
    free(f);
    return -1;
  }
  *state = f;
  return 0;
}

static inline int remove_temp_dir(void **state) {
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

static inline void temp_path(void **state, const char *name, char out[256]) {
  snprintf(out, 256, "%s/%s", ((fixture *)*state)->dir, name);
}

static inline char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return NULL;
  char *buf = NULL;
  size_t cap = 0, n = 0, got;
  do {
    if (n + 65536 > cap) {
      cap = cap ? cap * 2 : 65536;
      buf = realloc(buf, cap + 1);
      assert_non_null(buf);
    }
    got = fread(buf + n, 1, cap - n, f);
    n += got;
  } while (got > 0);
  fclose(f);
  buf[n] = '\0';
  *len = n;
  return buf;
}

static inline void spit(const char *path, const char *data, size_t len) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(data, 1, len, f), len);
  assert_int_equal(fclose(f), 0);
}

/* ---- an engine whose stages do what their names say ---- */

/* "hang*" never finishes, "fail*" fails, any other completes with an output of 3 KB under its
 * own name (so the log carries a whole snapshot every few stages and folds between). */
static inline int work_start(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  const char *name = sc_stage_name(ctx);
  if (strncmp(name, "hang", 4) == 0) return SC_OK;
  if (strncmp(name, "fail", 4) == 0) {
    sc_stage_fail(ctx, SC_EIO, "boom", false);
    return SC_OK;
  }
  char blob[3001];
  memset(blob, 'a' + sc_stage_index(ctx) % 26, 3000);
  blob[3000] = '\0';
  cJSON *out = cJSON_CreateObject();
  cJSON_AddStringToObject(out, name, blob);
  sc_stage_complete(ctx, out);
  return SC_OK;
}

static inline void work_cancel(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  sc_stage_fail(ctx, SC_ECANCELLED, "cancelled", false);
}

static inline sc_engine *new_engine(uv_loop_t *loop) {
  static const sc_stage_kind work = {SC_STAGE_KIND_VERSION, work_start, work_cancel, NULL};
  sc_engine *e = NULL;
  assert_int_equal(sc_engine_new(loop, NULL, &e), SC_OK);
  assert_int_equal(sc_engine_register_kind(e, "work", &work, NULL), SC_OK);
  return e;
}

static inline sc_jsonl *open_log(sc_engine *e, const char *path) {
  sc_jsonl *j = NULL;
  if (sc_jsonl_open(e, path, NULL, &j) != SC_OK)
    fail_msg("sc_jsonl_open %s: %s", path, sc_error_message());
  return j;
}

static inline cJSON *job(const char *names) {
  cJSON *c = cJSON_CreateObject();
  cJSON *stages = cJSON_AddArrayToObject(c, "stages");
  char copy[1024];
  snprintf(copy, sizeof(copy), "%s", names);
  char *save = NULL;
  for (char *n = strtok_r(copy, ",", &save); n != NULL; n = strtok_r(NULL, ",", &save)) {
    cJSON *s = cJSON_CreateObject();
    cJSON_AddStringToObject(s, "name", n);
    cJSON_AddStringToObject(s, "kind", "work");
    cJSON_AddItemToArray(stages, s);
  }
  return c;
}

static inline sc_task *submit(sc_engine *e, const char *id, const char *names) {
  cJSON *config = job(names);
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.task_id = id;
  spec.tenant_id = id; /* each its own tenant: they run side by side */
  spec.config = config;
  sc_task *t = NULL;
  int rc = sc_task_submit(e, &spec, &t);
  cJSON_Delete(config);
  if (rc != SC_OK) fail_msg("submit %s: %s", id, sc_error_message());
  return t;
}

/* Runs the loop without blocking for a while: every task that can go on has gone as far as it
 * can (the stages finish synchronously or never). */
static inline void run_a_while(uv_loop_t *loop) {
  const struct timespec pause = {0, 1000000};
  for (int i = 0; i < 200; i++) {
    uv_run(loop, UV_RUN_NOWAIT);
    nanosleep(&pause, NULL);
  }
}

#endif
