/* The JSON-lines log: chained lines, fsync modes, barrier, torn tail, corruption, scan, ENOSPC. */
#define _GNU_SOURCE /* memmem */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include <stagecoach/jsonl.h>
#include <stagecoach/stagecoach.h>

#include "harness.h"

/* ---- a temporary directory per test ---- */

typedef struct fixture {
  char dir[64];
} fixture;

static int make_temp_dir(void **state) {
  fixture *f = calloc(1, sizeof(*f));
  if (f == NULL) return -1;
  snprintf(f->dir, sizeof(f->dir), "/tmp/sc-jsonl-XXXXXX");
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

static uint64_t file_size(const char *path) {
  struct stat st;
  if (stat(path, &st) != 0) fail_msg("stat %s failed", path);
  return (uint64_t)st.st_size;
}

/* ---- the log file as the test reads it ---- */

typedef struct logfile {
  char *data;
  size_t size;
  size_t n;          /* complete lines */
  size_t *off, *len; /* of each complete line; len without the newline */
  bool torn;         /* the file ends in an incomplete line */
} logfile;

static void log_read(const char *path, logfile *l) {
  memset(l, 0, sizeof(*l));
  FILE *f = fopen(path, "rb");
  if (f == NULL) fail_msg("cannot open %s", path);
  struct stat st;
  assert_int_equal(fstat(fileno(f), &st), 0);
  l->size = (size_t)st.st_size;
  l->data = malloc(l->size + 1);
  assert_non_null(l->data);
  assert_int_equal(fread(l->data, 1, l->size, f), l->size);
  fclose(f);
  l->data[l->size] = '\0';
  size_t lines = 0;
  for (size_t i = 0; i < l->size; i++)
    if (l->data[i] == '\n') lines++;
  l->off = calloc(lines + 1, sizeof(*l->off));
  l->len = calloc(lines + 1, sizeof(*l->len));
  assert_non_null(l->off);
  assert_non_null(l->len);
  size_t start = 0;
  for (size_t i = 0; i < l->size; i++)
    if (l->data[i] == '\n') {
      l->off[l->n] = start;
      l->len[l->n] = i - start;
      l->n++;
      start = i + 1;
    }
  l->torn = start < l->size;
}

static void log_free(logfile *l) {
  free(l->data);
  free(l->off);
  free(l->len);
  memset(l, 0, sizeof(*l));
}

static void write_file(const char *path, const char *data, size_t len) {
  FILE *f = fopen(path, "wb");
  if (f == NULL) fail_msg("cannot create %s", path);
  assert_int_equal(fwrite(data, 1, len, f), len);
  assert_int_equal(fclose(f), 0);
}

/* ---- the chain, computed independently with OpenSSL ---- */

#define CHAIN_MEMBER     ",\"chain\":\""
#define CHAIN_MEMBER_LEN (sizeof(CHAIN_MEMBER) - 1)
#define CHAIN_TAIL       (CHAIN_MEMBER_LEN + 64 + 2) /* ,"chain":" + 64 hex + "} */

static bool has_chain_member(const char *line, size_t len) {
  if (len < CHAIN_TAIL + 2 || line[0] != '{') return false;
  const char *tail = line + len - CHAIN_TAIL;
  if (memcmp(tail, CHAIN_MEMBER, CHAIN_MEMBER_LEN) != 0 || memcmp(line + len - 2, "\"}", 2) != 0)
    return false;
  for (size_t i = 0; i < 64; i++) {
    char c = tail[CHAIN_MEMBER_LEN + i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

/* The event's JSON of a log line: the line without its chain member, closed again. Caller frees. */
static char *event_text(const char *line, size_t len) {
  assert_true(has_chain_member(line, len));
  size_t n = len - CHAIN_TAIL;
  char *s = malloc(n + 2);
  assert_non_null(s);
  memcpy(s, line, n);
  s[n] = '}';
  s[n + 1] = '\0';
  return s;
}

/* Advances prev (64 hex + NUL) over a line; false when the line's chain value is not
 * hex(SHA-256(prev || the line's event JSON)). */
static bool chain_step(char prev[65], const char *line, size_t len) {
  if (!has_chain_member(line, len)) return false;
  unsigned char raw[EVP_MAX_MD_SIZE];
  unsigned int rawlen = 0;
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  assert_non_null(ctx);
  assert_int_equal(EVP_DigestInit_ex(ctx, EVP_sha256(), NULL), 1);
  assert_int_equal(EVP_DigestUpdate(ctx, prev, 64), 1);
  assert_int_equal(EVP_DigestUpdate(ctx, line, len - CHAIN_TAIL), 1);
  assert_int_equal(EVP_DigestUpdate(ctx, "}", 1), 1);
  assert_int_equal(EVP_DigestFinal_ex(ctx, raw, &rawlen), 1);
  EVP_MD_CTX_free(ctx);
  assert_int_equal(rawlen, 32);
  char hex[65];
  for (int i = 0; i < 32; i++)
    snprintf(hex + 2 * i, 3, "%02x", raw[i]);
  if (memcmp(hex, line + len - CHAIN_TAIL + CHAIN_MEMBER_LEN, 64) != 0) return false;
  memcpy(prev, hex, 65);
  return true;
}

/* The 1-based number of the first line whose chain does not match; 0 when all do. */
static size_t first_broken_line(const logfile *l) {
  char prev[65];
  memset(prev, '0', 64);
  prev[64] = '\0';
  for (size_t i = 0; i < l->n; i++)
    if (!chain_step(prev, l->data + l->off[i], l->len[i])) return i + 1;
  return 0;
}

/* ---- events in the log ---- */

static sc_event_doc *line_event(const logfile *l, size_t i) {
  sc_event_doc *d = NULL;
  int rc = sc_event_parse(l->data + l->off[i], l->len[i], &d);
  if (rc != SC_OK) fail_msg("line %zu does not parse: %s", i + 1, sc_error_message());
  return d;
}

/* The last event of a type of a task among the first `upto` lines; NULL: none. Caller frees. */
static sc_event_doc *last_event(const logfile *l, size_t upto, const char *task_id,
                                sc_event_type type) {
  sc_event_doc *found = NULL;
  for (size_t i = 0; i < upto && i < l->n; i++) {
    sc_event_doc *d = line_event(l, i);
    const sc_event *ev = sc_event_doc_event(d);
    if (ev->type == type && strcmp(ev->task_id, task_id) == 0) {
      sc_event_doc_free(found);
      found = d;
    } else {
      sc_event_doc_free(d);
    }
  }
  return found;
}

static size_t count_events(const logfile *l, const char *task_id, sc_event_type type) {
  size_t c = 0;
  for (size_t i = 0; i < l->n; i++) {
    sc_event_doc *d = line_event(l, i);
    const sc_event *ev = sc_event_doc_event(d);
    if (ev->type == type && (task_id == NULL || strcmp(ev->task_id, task_id) == 0)) c++;
    sc_event_doc_free(d);
  }
  return c;
}

static const char *string_of(const cJSON *obj, const char *key) {
  const cJSON *v = member(obj, key);
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Every line is the recorded event's sc_event_to_json text plus its chain member, in order, and
 * parses back to the same type and task. */
static void expect_lines_are_the_recorded_events(const logfile *l, const recorder *rec) {
  assert_false(l->torn);
  assert_int_equal(l->n, rec->n);
  for (size_t i = 0; i < l->n; i++) {
    char *text = event_text(l->data + l->off[i], l->len[i]);
    if (strcmp(text, rec->lines[i]) != 0)
      fail_msg("line %zu is not the event's JSON plus its chain member", i + 1);
    free(text);
    sc_event_doc *d = line_event(l, i);
    assert_int_equal(sc_event_doc_event(d)->type, rec->types[i]);
    assert_string_equal(sc_event_doc_event(d)->task_id, rec->task_ids[i]);
    sc_event_doc_free(d);
  }
}

/* seq counts 1, 2, ... per task in the order of the lines. Tasks are named "<prefix>NNN". */
static void expect_seq_per_task(const logfile *l, size_t tasks, size_t events_per_task) {
  uint64_t *last = calloc(tasks, sizeof(*last));
  assert_non_null(last);
  for (size_t i = 0; i < l->n; i++) {
    sc_event_doc *d = line_event(l, i);
    const sc_event *ev = sc_event_doc_event(d);
    size_t len = strlen(ev->task_id);
    assert_true(len >= 3);
    size_t k = (size_t)strtoul(ev->task_id + len - 3, NULL, 10);
    assert_true(k < tasks);
    if (ev->seq != last[k] + 1)
      fail_msg("line %zu: task %s has seq %llu after %llu", i + 1, ev->task_id,
               (unsigned long long)ev->seq, (unsigned long long)last[k]);
    last[k] = ev->seq;
    sc_event_doc_free(d);
  }
  for (size_t k = 0; k < tasks; k++)
    assert_int_equal(last[k], events_per_task);
  free(last);
}

static void expect_log_verifies(const char *path, const logfile *l) {
  sc_jsonl_report r;
  memset(&r, 0xa5, sizeof(r));
  int rc = sc_jsonl_verify(path, &r);
  if (rc != SC_OK) fail_msg("verify %s: %s", path, sc_error_message());
  assert_int_equal(r.lines, l->n);
  assert_int_equal(r.bytes, l->size);
  assert_int_equal(r.good_bytes, l->size);
  assert_false(r.torn_tail);
  assert_int_equal(r.first_bad_line, 0);
  assert_int_equal(sc_jsonl_verify(path, NULL), SC_OK);
}

/* ---- stages: a function and a kind whose behaviour each test chooses ---- */

#define MAX_NAMES 4

typedef struct behaviour {
  const char *hang[MAX_NAMES]; /* stages that never finish (until cancelled) */
  const char *fail[MAX_NAMES]; /* stages that fail, not retryable */
  size_t blob_bytes;           /* > 0: the stage named "big" outputs a string this long */
  size_t each_bytes;           /* > 0: every stage also outputs "<name>_blob", this long */
  const char *barrier_log;     /* set: each stage after the first looks for its predecessor */
  char ran[2048];              /* the stages started, in order: "a0,a1,..." */
  unsigned barrier_checks, barrier_misses;
  char barrier_miss[300];
} behaviour;

static bool listed(const char *const *names, const char *name) {
  for (int i = 0; i < MAX_NAMES && names[i] != NULL; i++)
    if (strcmp(names[i], name) == 0) return true;
  return false;
}

static bool has_run(const behaviour *b, const char *name) {
  char list[sizeof(b->ran) + 2], needle[64];
  snprintf(list, sizeof(list), ",%s,", b->ran);
  snprintf(needle, sizeof(needle), ",%s,", name);
  return strstr(list, needle) != NULL;
}

/* The stages of b->ran whose name starts with letter, in order: "d2,d3". Static buffer. */
static const char *ran_of(const behaviour *b, char letter) {
  static char out[sizeof(b->ran)];
  char copy[sizeof(b->ran)];
  snprintf(copy, sizeof(copy), "%s", b->ran);
  size_t off = 0;
  out[0] = '\0';
  char *save = NULL;
  for (char *n = strtok_r(copy, ",", &save); n != NULL; n = strtok_r(NULL, ",", &save))
    if (n[0] == letter)
      off += (size_t)snprintf(out + off, sizeof(out) - off, "%s%s", off ? "," : "", n);
  return out;
}

/* True when the log file holds, as a complete line, the stage.completed of a task's stage, and
 * the file verifies. */
static bool log_holds_completed(const char *path, const char *task_id, int index) {
  sc_jsonl_report r;
  if (sc_jsonl_verify(path, &r) != SC_OK || r.torn_tail) return false;
  logfile l;
  log_read(path, &l);
  bool found = false;
  for (size_t i = 0; i < l.n && !found; i++) {
    sc_event_doc *d = NULL;
    if (sc_event_parse(l.data + l.off[i], l.len[i], &d) != SC_OK) continue;
    const sc_event *ev = sc_event_doc_event(d);
    found = ev->type == SC_EV_STAGE_COMPLETED && strcmp(ev->task_id, task_id) == 0 &&
            ev->stage_index == index;
    sc_event_doc_free(d);
  }
  log_free(&l);
  return found;
}

static int work_start(sc_stage_ctx *ctx, void *udata) {
  behaviour *b = udata;
  const char *name = sc_stage_name(ctx);
  size_t off = strlen(b->ran);
  snprintf(b->ran + off, sizeof(b->ran) - off, "%s%s", off ? "," : "", name);
  if (b->barrier_log != NULL && sc_stage_index(ctx) > 0) {
    b->barrier_checks++;
    const char *id = sc_task_id(sc_stage_task(ctx));
    if (!log_holds_completed(b->barrier_log, id, sc_stage_index(ctx) - 1)) {
      b->barrier_misses++;
      snprintf(b->barrier_miss, sizeof(b->barrier_miss),
               "stage %s of %s started before the stage.completed of stage %d was in the log", name,
               id, sc_stage_index(ctx) - 1);
    }
  }
  if (listed(b->hang, name)) return SC_OK;
  if (listed(b->fail, name)) {
    sc_stage_fail(ctx, SC_EIO, "boom", false);
    return SC_OK;
  }
  cJSON *out = cJSON_CreateObject();
  cJSON_AddNumberToObject(out, name, sc_stage_index(ctx));
  if (b->blob_bytes > 0 && strcmp(name, "big") == 0) {
    char *blob = malloc(b->blob_bytes + 1);
    assert_non_null(blob);
    memset(blob, 'x', b->blob_bytes);
    blob[b->blob_bytes] = '\0';
    cJSON_AddStringToObject(out, "blob", blob);
    free(blob);
  }
  if (b->each_bytes > 0) {
    char *blob = malloc(b->each_bytes + 1), key[80];
    assert_non_null(blob);
    memset(blob, 'y', b->each_bytes);
    blob[b->each_bytes] = '\0';
    snprintf(key, sizeof(key), "%s_blob", name);
    cJSON_AddStringToObject(out, key, blob);
    free(blob);
  }
  sc_stage_complete(ctx, out);
  return SC_OK;
}

static void work_cancel(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  sc_stage_fail(ctx, SC_ECANCELLED, "cancelled", false);
}

/* An engine where fn "step" and kind "work" both run work_start with b. */
static sc_engine *new_engine(uv_loop_t *loop, behaviour *b) {
  static const sc_stage_kind work = {SC_STAGE_KIND_VERSION, work_start, work_cancel, NULL};
  sc_engine *e = start_engine(loop, NULL, NULL);
  assert_int_equal(sc_engine_register_kind(e, "work", &work, b), SC_OK);
  assert_int_equal(sc_engine_register_fn(e, "step", work_start, b), SC_OK);
  return e;
}

static sc_jsonl *open_log(sc_engine *e, const char *path, sc_fsync_mode mode) {
  sc_jsonl_options o;
  sc_jsonl_options_init(&o);
  o.fsync = mode;
  sc_jsonl *j = NULL;
  int rc = sc_jsonl_open(e, path, &o, &j);
  if (rc != SC_OK) fail_msg("sc_jsonl_open %s: %s", path, sc_error_message());
  assert_non_null(j);
  return j;
}

/* {"version":version,"stages":[...]}, one stage per comma-separated name, of kind "fn" (the
 * function "step") or "work". Caller frees. */
static cJSON *job(const char *version, const char *kind, const char *names) {
  cJSON *c = cJSON_CreateObject();
  cJSON_AddStringToObject(c, "version", version);
  cJSON *stages = cJSON_AddArrayToObject(c, "stages");
  char copy[4096];
  snprintf(copy, sizeof(copy), "%s", names);
  char *save = NULL;
  for (char *n = strtok_r(copy, ",", &save); n != NULL; n = strtok_r(NULL, ",", &save)) {
    cJSON *s = cJSON_CreateObject();
    cJSON_AddStringToObject(s, "name", n);
    cJSON_AddStringToObject(s, "kind", kind);
    if (strcmp(kind, "fn") == 0)
      cJSON_AddStringToObject(cJSON_AddObjectToObject(s, "params"), "fn", "step");
    cJSON_AddItemToArray(stages, s);
  }
  return c;
}

static sc_task *submit_job(sc_engine *e, const char *id, const char *names) {
  cJSON *config = job("1", "fn", names);
  sc_task *t = submit_config(e, id, NULL, NULL, config, NULL);
  cJSON_Delete(config);
  return t;
}

/* Runs the loop without blocking until cond holds; about ten seconds at most. */
static bool spin_until(uv_loop_t *loop, bool (*cond)(void *), void *udata) {
  const struct timespec pause = {0, 200000};
  for (int i = 0; i < 50000; i++) {
    if (cond(udata)) return true;
    uv_run(loop, UV_RUN_NOWAIT);
    if (!cond(udata)) nanosleep(&pause, NULL);
  }
  return cond(udata);
}

/* text holds prefix followed by the decimal number (and not by another digit). */
static bool names_number(const char *text, const char *prefix, unsigned long long number) {
  char needle[96];
  snprintf(needle, sizeof(needle), "%s%llu", prefix, number);
  for (const char *p = strstr(text, needle); p != NULL; p = strstr(p + 1, needle)) {
    char next = p[strlen(needle)];
    if (next < '0' || next > '9') return true;
  }
  return false;
}

/* ---- writer: each fsync mode ---- */

static void run_one_job_and_check_the_log(void **state, sc_fsync_mode mode) {
  char path[256];
  temp_path(state, "job.jsonl", path);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  behaviour b = {0};
  sc_engine *e = new_engine(&loop, &b);
  sc_jsonl *log = open_log(e, path, mode);
  recorder rec;
  recorder_attach(&rec, e);
  submit_job(e, "job-000", "s0,s1,s2,s3");
  settle_loop(&loop);
  assert_string_equal(b.ran, "s0,s1,s2,s3");
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, "job-000"), 1);
  assert_int_equal(sc_jsonl_close(log), SC_OK);

  logfile l;
  log_read(path, &l);
  /* task.created, task.started, 4 x (stage.started, stage.completed), task.completed */
  assert_int_equal(l.n, 11);
  expect_lines_are_the_recorded_events(&l, &rec);
  expect_seq_per_task(&l, 1, 11);
  assert_int_equal(first_broken_line(&l), 0);
  expect_log_verifies(path, &l);

  log_free(&l);
  sc_engine_free(e);
  recorder_free(&rec);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void fsync_none_writes_every_event_as_one_chained_line(void **state) {
  run_one_job_and_check_the_log(state, SC_FSYNC_NONE);
}

static void fsync_batch_writes_every_event_as_one_chained_line(void **state) {
  run_one_job_and_check_the_log(state, SC_FSYNC_BATCH);
}

static void fsync_always_writes_every_event_as_one_chained_line(void **state) {
  run_one_job_and_check_the_log(state, SC_FSYNC_ALWAYS);
}

static void
each_stage_starts_only_after_the_previous_stage_completed_line_is_in_the_file(void **state) {
  static const sc_fsync_mode modes[] = {SC_FSYNC_NONE, SC_FSYNC_BATCH, SC_FSYNC_ALWAYS};
  static const char *const files[] = {"none.jsonl", "batch.jsonl", "always.jsonl"};
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  for (size_t m = 0; m < 3; m++) {
    char path[256];
    temp_path(state, files[m], path);
    behaviour b = {0};
    b.barrier_log = path;
    sc_engine *e = new_engine(&loop, &b);
    sc_jsonl *log = open_log(e, path, modes[m]);
    submit_job(e, "job-000", "s0,s1,s2,s3,s4,s5");
    settle_loop(&loop);
    assert_int_equal(sc_jsonl_close(log), SC_OK);
    sc_engine_free(e);
    assert_string_equal(b.ran, "s0,s1,s2,s3,s4,s5");
    assert_int_equal(b.barrier_checks, 5);
    if (b.barrier_misses != 0) fail_msg("%s: %s", files[m], b.barrier_miss);
  }
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void run_many_tasks_and_check_the_log(void **state, size_t tasks, size_t buffer_bytes,
                                             sc_fsync_mode mode) {
  char path[256];
  temp_path(state, "many.jsonl", path);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  behaviour b = {0};
  sc_engine *e = new_engine(&loop, &b);
  sc_jsonl_options o;
  sc_jsonl_options_init(&o);
  o.fsync = mode;
  if (buffer_bytes) o.buffer_bytes = buffer_bytes;
  sc_jsonl *log = NULL;
  assert_int_equal(sc_jsonl_open(e, path, &o, &log), SC_OK);
  recorder rec;
  recorder_attach(&rec, e);
  for (size_t k = 0; k < tasks; k++) {
    char id[16];
    snprintf(id, sizeof(id), "t%03zu", k);
    submit_job(e, id, "s0,s1,s2,s3,s4"); /* NULL tenant: they all run at once */
  }
  settle_loop(&loop);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, NULL), tasks);
  assert_int_equal(sc_jsonl_close(log), SC_OK);

  logfile l;
  log_read(path, &l);
  assert_int_equal(l.n, tasks * 13);
  expect_lines_are_the_recorded_events(&l, &rec);
  expect_seq_per_task(&l, tasks, 13);
  assert_int_equal(first_broken_line(&l), 0);
  expect_log_verifies(path, &l);

  log_free(&l);
  sc_engine_free(e);
  recorder_free(&rec);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void concurrent_tasks_never_interleave_or_split_lines(void **state) {
  run_many_tasks_and_check_the_log(state, 200, 0, SC_FSYNC_BATCH);
}

static void a_buffer_smaller_than_a_line_still_writes_whole_lines(void **state) {
  run_many_tasks_and_check_the_log(state, 50, 64, SC_FSYNC_NONE);
}

static void a_300_kb_context_is_written_as_whole_lines(void **state) {
  const size_t blob = 300 * 1024;
  char path[256];
  temp_path(state, "big.jsonl", path);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  behaviour b = {0};
  b.blob_bytes = blob;
  b.barrier_log = path;
  sc_engine *e = new_engine(&loop, &b);
  sc_jsonl *log = open_log(e, path, SC_FSYNC_BATCH);
  recorder rec;
  recorder_attach(&rec, e);
  submit_job(e, "big-000", "s0,big,s2,s3");
  settle_loop(&loop);
  assert_string_equal(b.ran, "s0,big,s2,s3");
  assert_int_equal(b.barrier_misses, 0);
  assert_int_equal(sc_jsonl_close(log), SC_OK);

  logfile l;
  log_read(path, &l);
  /* The blob is in big's output, in the snapshot that output makes due, and in task.completed:
   * not in every later line (the log grows with the outputs, not stages x context). */
  assert_true(l.size > 3 * blob);
  assert_true(l.size < 4 * blob);
  expect_lines_are_the_recorded_events(&l, &rec);
  expect_seq_per_task(&l, 1, 11);
  assert_int_equal(first_broken_line(&l), 0);
  expect_log_verifies(path, &l);
  sc_event_doc *d = last_event(&l, l.n, "big-000", SC_EV_TASK_COMPLETED);
  assert_non_null(d);
  const char *kept = string_of(member(sc_event_doc_event(d)->data, "context"), "blob");
  assert_non_null(kept);
  assert_int_equal(strlen(kept), blob);
  sc_event_doc_free(d);

  log_free(&l);
  sc_engine_free(e);
  recorder_free(&rec);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* ---- reopening ---- */

static void reopening_a_log_continues_the_chain(void **state) {
  char path[256];
  temp_path(state, "reopen.jsonl", path);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);

  behaviour b1 = {0};
  sc_engine *e1 = new_engine(&loop, &b1);
  sc_jsonl *log = open_log(e1, path, SC_FSYNC_ALWAYS);
  submit_job(e1, "one-000", "s0,s1,s2");
  settle_loop(&loop);
  assert_int_equal(sc_jsonl_close(log), SC_OK);
  sc_engine_free(e1);
  logfile first;
  log_read(path, &first);
  assert_int_equal(first.n, 9);

  behaviour b2 = {0};
  sc_engine *e2 = new_engine(&loop, &b2);
  log = open_log(e2, path, SC_FSYNC_NONE);
  const sc_jsonl_report *r = sc_jsonl_open_report(log);
  assert_non_null(r);
  assert_int_equal(r->lines, first.n);
  assert_int_equal(r->bytes, first.size);
  assert_int_equal(r->good_bytes, first.size);
  assert_false(r->torn_tail);
  assert_int_equal(r->first_bad_line, 0);
  submit_job(e2, "two-000", "s0,s1");
  settle_loop(&loop);
  assert_int_equal(sc_jsonl_close(log), SC_OK);
  sc_engine_free(e2);

  logfile both;
  log_read(path, &both);
  assert_int_equal(both.n, first.n + 7);
  assert_memory_equal(both.data, first.data, first.size);
  assert_int_equal(first_broken_line(&both), 0);
  expect_log_verifies(path, &both);
  assert_int_equal(count_events(&both, "two-000", SC_EV_TASK_COMPLETED), 1);

  log_free(&first);
  log_free(&both);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* ---- a torn tail ---- */

typedef struct said {
  unsigned n;
  char last[512];
} said;

static void remember(const char *message, void *udata) {
  said *s = udata;
  s->n++;
  snprintf(s->last, sizeof(s->last), "%s", message);
}

static void open_cuts_a_torn_tail_and_says_so(void **state) {
  static const char torn[] = "{\"specversion\":\"1.0\",\"id\":\"one-000/99\",\"type\":\"stageco";
  char path[256];
  temp_path(state, "torn.jsonl", path);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);

  behaviour b1 = {0};
  sc_engine *e1 = new_engine(&loop, &b1);
  sc_jsonl *log = open_log(e1, path, SC_FSYNC_BATCH);
  submit_job(e1, "one-000", "s0,s1,s2");
  settle_loop(&loop);
  assert_int_equal(sc_jsonl_close(log), SC_OK);
  sc_engine_free(e1);
  uint64_t good = file_size(path);
  logfile before;
  log_read(path, &before);
  FILE *f = fopen(path, "ab");
  assert_non_null(f);
  assert_int_equal(fwrite(torn, 1, sizeof(torn) - 1, f), sizeof(torn) - 1);
  assert_int_equal(fclose(f), 0);

  sc_jsonl_report r;
  memset(&r, 0xa5, sizeof(r));
  assert_int_equal(sc_jsonl_verify(path, &r), SC_OK);
  assert_true(r.torn_tail);
  assert_int_equal(r.lines, before.n);
  assert_int_equal(r.good_bytes, good);
  assert_int_equal(r.bytes, good + sizeof(torn) - 1);
  assert_int_equal(r.first_bad_line, 0);

  said told = {0};
  behaviour b2 = {0};
  sc_engine *e2 = new_engine(&loop, &b2);
  sc_jsonl_options o;
  sc_jsonl_options_init(&o);
  o.log = remember;
  o.log_udata = &told;
  log = NULL;
  assert_int_equal(sc_jsonl_open(e2, path, &o, &log), SC_OK);
  /* Nothing is cut before there is something to write: opening alone changes nothing. */
  assert_int_equal(file_size(path), good + sizeof(torn) - 1);
  assert_int_equal(told.n, 0);
  const sc_jsonl_report *opened = sc_jsonl_open_report(log);
  assert_true(opened->torn_tail);
  assert_int_equal(opened->lines, before.n);
  assert_int_equal(opened->good_bytes, good);
  assert_int_equal(opened->bytes, good + sizeof(torn) - 1);
  assert_int_equal(opened->first_bad_line, 0);
  submit_job(e2, "two-000", "s0,s1");
  settle_loop(&loop);
  assert_int_equal(told.n, 1);
  if (strstr(told.last, path) == NULL || strstr(told.last, "torn tail") == NULL)
    fail_msg("the message does not name the file and the cut: %s", told.last);
  assert_int_equal(sc_jsonl_close(log), SC_OK);
  sc_engine_free(e2);

  logfile after;
  log_read(path, &after);
  assert_int_equal(after.n, before.n + 7);
  assert_memory_equal(after.data, before.data, before.size);
  assert_null(strstr(after.data, "one-000/99"));
  assert_int_equal(first_broken_line(&after), 0);
  expect_log_verifies(path, &after);

  log_free(&before);
  log_free(&after);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* ---- corruption ---- */

/* A good log: one task "job-000" of four fn stages, 11 lines. */
static void write_good_log(uv_loop_t *loop, const char *path, logfile *l) {
  behaviour b = {0};
  sc_engine *e = new_engine(loop, &b);
  sc_jsonl *log = open_log(e, path, SC_FSYNC_NONE);
  submit_job(e, "job-000", "s0,s1,s2,s3");
  settle_loop(loop);
  assert_int_equal(sc_jsonl_close(log), SC_OK);
  sc_engine_free(e);
  log_read(path, l);
  assert_int_equal(l->n, 11);
  assert_int_equal(first_broken_line(l), 0);
}

/* Rewrites the log from lines of l (0-based indexes; SIZE_MAX: `replacement` instead). */
static void rewrite_log(const char *path, const logfile *l, const size_t *order, size_t count,
                        const char *replacement) {
  size_t cap = l->size + 4096 + (replacement ? strlen(replacement) : 0);
  char *buf = malloc(cap);
  assert_non_null(buf);
  size_t len = 0;
  for (size_t i = 0; i < count; i++) {
    const char *src = order[i] == SIZE_MAX ? replacement : l->data + l->off[order[i]];
    size_t n = order[i] == SIZE_MAX ? strlen(replacement) : l->len[order[i]];
    assert_true(len + n + 1 <= cap);
    memcpy(buf + len, src, n);
    len += n;
    buf[len++] = '\n';
  }
  write_file(path, buf, len);
  free(buf);
}

/* What every reader says about a log whose chain breaks at line `bad` (1-based). */
static void expect_refused_from_line(uv_loop_t *loop, const char *path, size_t bad,
                                     const char *why) {
  logfile l;
  log_read(path, &l);
  assert_int_equal(first_broken_line(&l), bad); /* the test's own check agrees */
  uint64_t offset = l.off[bad - 1];

  sc_jsonl_report r;
  memset(&r, 0xa5, sizeof(r));
  assert_int_equal(sc_jsonl_verify(path, &r), SC_ECORRUPT);
  char msg[1024];
  snprintf(msg, sizeof(msg), "%s", sc_error_message());
  assert_int_equal(r.first_bad_line, (int64_t)bad);
  assert_int_equal(r.good_bytes, offset);
  assert_int_equal(r.bytes, l.size);
  assert_false(r.torn_tail);
  if (!names_number(msg, "line ", bad))
    fail_msg("the message does not name line %zu: %s", bad, msg);
  if (!names_number(msg, "byte offset ", offset))
    fail_msg("the message does not name byte offset %llu: %s", (unsigned long long)offset, msg);
  if (why != NULL && strstr(msg, why) == NULL)
    fail_msg("the message does not say \"%s\": %s", why, msg);

  /* Appending to it would hide the damage: open refuses and leaves the file alone. */
  behaviour b = {0};
  sc_engine *e = new_engine(loop, &b);
  sc_jsonl *log = NULL;
  assert_int_equal(sc_jsonl_open(e, path, NULL, &log), SC_ECORRUPT);
  assert_null(log);
  if (!names_number(sc_error_message(), "line ", bad))
    fail_msg("open's message does not name line %zu: %s", bad, sc_error_message());
  sc_engine_free(e);
  logfile unchanged;
  log_read(path, &unchanged);
  assert_int_equal(unchanged.size, l.size);
  assert_memory_equal(unchanged.data, l.data, l.size);
  log_free(&unchanged);

  sc_unfinished *u = NULL;
  size_t n = 99;
  memset(&r, 0xa5, sizeof(r));
  assert_int_equal(sc_jsonl_scan(path, &u, &n, &r), SC_ECORRUPT);
  assert_null(u);
  assert_int_equal(n, 0);
  assert_int_equal(r.first_bad_line, (int64_t)bad);

  /* The good prefix: job-000 has no terminal event there, so it is unfinished. */
  sc_jsonl_scan_options so;
  sc_jsonl_scan_options_init(&so);
  so.stop_at_last_good_line = true;
  memset(&r, 0xa5, sizeof(r));
  int rc = sc_jsonl_scan_ex(path, &so, &u, &n, &r);
  if (rc != SC_OK) fail_msg("scan_ex stop_at_last_good_line: %s", sc_error_message());
  assert_int_equal(r.first_bad_line, (int64_t)bad);
  assert_int_equal(r.good_bytes, offset);
  assert_int_equal(n, 1);
  assert_non_null(u);
  assert_string_equal(u[0].request.recovered_from, "job-000");
  assert_null(u[0].request.task_id);
  sc_event_doc *last = last_event(&l, bad - 1, "job-000", SC_EV_STAGE_COMPLETED);
  assert_non_null(last);
  assert_string_equal(u[0].request.last_completed_stage, sc_event_doc_event(last)->stage);
  assert_true(
      cJSON_Compare(u[0].request.context, member(sc_event_doc_event(last)->data, "context"), true));
  sc_event_doc_free(last);
  sc_unfinished_free(u, n);
  log_free(&l);
}

static void verify_reports_the_first_changed_line(void **state) {
  char path[256];
  temp_path(state, "changed.jsonl", path);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  logfile l;
  write_good_log(&loop, path, &l);
  size_t middle = l.n / 2; /* 0-based: line 6 of 11 */
  char *at = l.data + l.off[middle] + l.len[middle] / 2;
  *at = *at == 'a' ? 'b' : 'a';
  write_file(path, l.data, l.size);
  expect_refused_from_line(&loop, path, middle + 1, NULL);
  log_free(&l);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void verify_reports_an_inserted_copy_of_a_line(void **state) {
  char path[256];
  temp_path(state, "inserted.jsonl", path);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  logfile l;
  write_good_log(&loop, path, &l);
  size_t middle = l.n / 2, order[32], k = 0;
  for (size_t i = 0; i < l.n; i++) {
    if (i == middle) order[k++] = 1; /* a copy of line 2 */
    order[k++] = i;
  }
  rewrite_log(path, &l, order, k, NULL);
  expect_refused_from_line(&loop, path, middle + 1, NULL);
  log_free(&l);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void verify_reports_a_removed_line_at_the_line_after_it(void **state) {
  char path[256];
  temp_path(state, "removed.jsonl", path);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  logfile l;
  write_good_log(&loop, path, &l);
  size_t middle = l.n / 2, order[32], k = 0;
  for (size_t i = 0; i < l.n; i++)
    if (i != middle) order[k++] = i;
  rewrite_log(path, &l, order, k, NULL);
  expect_refused_from_line(&loop, path, middle + 1, NULL);
  log_free(&l);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void verify_reports_swapped_lines(void **state) {
  char path[256];
  temp_path(state, "swapped.jsonl", path);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  logfile l;
  write_good_log(&loop, path, &l);
  size_t middle = l.n / 2, order[32];
  for (size_t i = 0; i < l.n; i++)
    order[i] = i;
  order[middle] = middle + 1;
  order[middle + 1] = middle;
  rewrite_log(path, &l, order, l.n, NULL);
  expect_refused_from_line(&loop, path, middle + 1, NULL);
  log_free(&l);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void verify_reports_a_line_without_a_chain_member(void **state) {
  char path[256];
  temp_path(state, "unchained.jsonl", path);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  logfile l;
  write_good_log(&loop, path, &l);
  size_t middle = l.n / 2, order[32];
  for (size_t i = 0; i < l.n; i++)
    order[i] = i;
  order[middle] = SIZE_MAX;
  char *bare = event_text(l.data + l.off[middle], l.len[middle]);
  rewrite_log(path, &l, order, l.n, bare);
  free(bare);
  expect_refused_from_line(&loop, path, middle + 1, "no chain member");
  log_free(&l);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void an_empty_log_verifies_with_no_lines(void **state) {
  char path[256];
  temp_path(state, "empty.jsonl", path);
  write_file(path, "", 0);
  sc_jsonl_report r;
  memset(&r, 0xa5, sizeof(r));
  assert_int_equal(sc_jsonl_verify(path, &r), SC_OK);
  assert_int_equal(r.lines, 0);
  assert_int_equal(r.bytes, 0);
  assert_int_equal(r.good_bytes, 0);
  assert_false(r.torn_tail);
  assert_int_equal(r.first_bad_line, 0);
  sc_unfinished *u = NULL;
  size_t n = 99;
  assert_int_equal(sc_jsonl_scan(path, &u, &n, NULL), SC_OK);
  assert_null(u);
  assert_int_equal(n, 0);
}

/* A directory cannot be read as a log, a FIFO is no log: both refused at once (a FIFO must not
 * block the open), and neither is changed. */
static void a_directory_or_a_fifo_is_refused_at_once(void **state) {
  char path[256];
  temp_path(state, "fifo.jsonl", path);
  assert_int_equal(mkfifo(path, 0600), 0);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  behaviour b = {0};
  sc_engine *e = new_engine(&loop, &b);
  sc_jsonl *log = NULL;
  for (int dir = 0; dir <= 1; dir++) {
    if (dir) *strrchr(path, '/') = '\0';
    int code = dir ? SC_EIO : SC_EPARSE;
    sc_jsonl_report r;
    assert_int_equal(sc_jsonl_verify(path, &r), code);
    sc_unfinished *u = NULL;
    size_t n = 0;
    assert_int_equal(sc_jsonl_scan(path, &u, &n, &r), code);
    assert_int_equal(sc_jsonl_open(e, path, NULL, &log), code);
    assert_null(log);
    if (!dir && strstr(sc_error_message(), "not a stagecoach log") == NULL)
      fail_msg("message: %s", sc_error_message());
  }
  sc_engine_free(e);
  assert_int_equal(uv_loop_close(&loop), 0);
  temp_path(state, "fifo.jsonl", path);
  unlink(path);
}

/* ---- the cursor: the reader in pieces ---- */

typedef struct collected {
  char text[1 << 16]; /* the events handed, each with a newline */
  size_t len, n;
  size_t stop_at; /* a 1-based count: fn stops before that event (0: never) */
} collected;

static int collect(const char *json, size_t len, void *udata) {
  collected *c = udata;
  if (c->stop_at != 0 && c->n + 1 == c->stop_at) return 7;
  assert_true(c->len + len + 1 < sizeof(c->text));
  memcpy(c->text + c->len, json, len);
  c->text[c->len + len] = '\n';
  c->len += len + 1;
  c->n++;
  return 0;
}

/* Reads on until the end, at most `reads` reads; returns how many it took. */
static int cursor_to_end(sc_jsonl_cursor *cur, size_t piece, collected *c, int reads) {
  bool at_end = false;
  int k = 0;
  while (!at_end && k < reads) {
    assert_int_equal(sc_jsonl_cursor_read(cur, piece, collect, c, &at_end), SC_OK);
    k++;
  }
  assert_true(at_end);
  return k;
}

static void a_cursor_reads_the_events_in_pieces_and_resumes_where_it_stopped(void **state) {
  char path[256], part[256];
  temp_path(state, "cursor.jsonl", path);
  temp_path(state, "part.jsonl", part);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  logfile l;
  write_good_log(&loop, path, &l);
  static collected whole, pieces, again;
  memset(&whole, 0, sizeof(whole));
  assert_int_equal(sc_jsonl_read_events(path, collect, &whole), SC_OK);
  assert_int_equal(whole.n, 11);
  /* In pieces of 4096 bytes (the least): the same events, in more than one read. */
  sc_jsonl_cursor *cur;
  assert_int_equal(sc_jsonl_cursor_open(path, &cur), SC_OK);
  memset(&pieces, 0, sizeof(pieces));
  int reads = cursor_to_end(cur, 1, &pieces, 100);
  assert_true(reads > 1);
  assert_true((size_t)reads <= l.size / 4096 + 2);
  assert_int_equal(pieces.len, whole.len);
  assert_memory_equal(pieces.text, whole.text, whole.len);
  bool at_end = false; /* at the end, a read hands nothing and says so again */
  assert_int_equal(sc_jsonl_cursor_read(cur, 4096, collect, &pieces, &at_end), SC_OK);
  assert_true(at_end);
  assert_int_equal(pieces.n, 11);
  sc_jsonl_cursor_close(cur);
  /* A stop before the third event: the next read hands it again. */
  assert_int_equal(sc_jsonl_cursor_open(path, &cur), SC_OK);
  memset(&again, 0, sizeof(again));
  again.stop_at = 3;
  assert_int_equal(sc_jsonl_cursor_read(cur, 1 << 20, collect, &again, &at_end), 7);
  assert_int_equal(again.n, 2);
  again.stop_at = 0;
  cursor_to_end(cur, 1 << 20, &again, 2);
  assert_int_equal(again.len, whole.len);
  assert_memory_equal(again.text, whole.text, whole.len);
  sc_jsonl_cursor_close(cur);
  /* A line still being written (no newline yet) is left for a later read, which takes it whole
   * once it is there. */
  size_t cut = l.off[6] + l.len[6] / 2;
  write_file(part, l.data, cut);
  assert_int_equal(sc_jsonl_cursor_open(part, &cur), SC_OK);
  memset(&again, 0, sizeof(again));
  cursor_to_end(cur, 1 << 20, &again, 2);
  assert_int_equal(again.n, 6);
  FILE *f = fopen(part, "ab");
  assert_non_null(f);
  assert_int_equal(fwrite(l.data + cut, 1, l.size - cut, f), l.size - cut);
  assert_int_equal(fclose(f), 0);
  cursor_to_end(cur, 1 << 20, &again, 2);
  assert_int_equal(again.len, whole.len);
  assert_memory_equal(again.text, whole.text, whole.len);
  sc_jsonl_cursor_close(cur);
  /* A changed line: the events before it, then SC_ECORRUPT, and again at the next read. */
  l.data[l.off[4] + l.len[4] / 2] ^= 1;
  write_file(part, l.data, l.size);
  assert_int_equal(sc_jsonl_cursor_open(part, &cur), SC_OK);
  memset(&again, 0, sizeof(again));
  assert_int_equal(sc_jsonl_cursor_read(cur, 1 << 20, collect, &again, &at_end), SC_ECORRUPT);
  assert_int_equal(again.n, 4);
  assert_int_equal(sc_jsonl_cursor_read(cur, 1 << 20, collect, &again, &at_end), SC_ECORRUPT);
  assert_int_equal(again.n, 4);
  sc_jsonl_cursor_close(cur);
  /* No log: a missing file, a FIFO (not waited on), a directory. */
  temp_path(state, "none.jsonl", part);
  assert_int_equal(sc_jsonl_cursor_open(part, &cur), SC_ENOTFOUND);
  assert_int_equal(mkfifo(part, 0600), 0);
  assert_int_equal(sc_jsonl_cursor_open(part, &cur), SC_EPARSE);
  unlink(part);
  assert_int_equal(sc_jsonl_cursor_open(((fixture *)*state)->dir, &cur), SC_EPARSE);
  sc_jsonl_cursor_close(NULL);
  log_free(&l);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* Each line's position, told from inside the cursor's fn. */
typedef struct told {
  sc_jsonl_cursor *cur;
  sc_jsonl_position at[16];
  size_t n;
} told;

static int tell_each(const char *json, size_t len, void *udata) {
  (void)json;
  (void)len;
  told *t = udata;
  assert_true(t->n < 16);
  sc_jsonl_cursor_tell(t->cur, &t->at[t->n++]);
  return 0;
}

static void a_cursor_seeks_back_to_a_position_it_told(void **state) {
  char path[256], part[256];
  temp_path(state, "seek.jsonl", path);
  temp_path(state, "seek-part.jsonl", part);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  logfile l;
  write_good_log(&loop, path, &l);
  static collected whole, rest;
  memset(&whole, 0, sizeof(whole));
  assert_int_equal(sc_jsonl_read_events(path, collect, &whole), SC_OK);
  /* Inside fn: the line being handed; outside: the line the next read begins with. */
  told t = {0};
  assert_int_equal(sc_jsonl_cursor_open(path, &t.cur), SC_OK);
  bool at_end = false;
  assert_int_equal(sc_jsonl_cursor_read(t.cur, 1 << 20, tell_each, &t, &at_end), SC_OK);
  assert_int_equal(t.n, 11);
  for (size_t i = 0; i < t.n; i++) {
    assert_int_equal(t.at[i].offset, l.off[i]);
    assert_int_equal(t.at[i].line, i);
  }
  sc_jsonl_position end;
  sc_jsonl_cursor_tell(t.cur, &end);
  assert_int_equal(end.offset, l.size);
  assert_int_equal(end.line, 11);
  sc_jsonl_cursor_close(t.cur);
  /* Another cursor seeks to the sixth line and reads the last six events, verified. */
  sc_jsonl_cursor *cur;
  assert_int_equal(sc_jsonl_cursor_open(path, &cur), SC_OK);
  assert_int_equal(sc_jsonl_cursor_seek(cur, &t.at[5]), SC_OK);
  memset(&rest, 0, sizeof(rest));
  cursor_to_end(cur, 1 << 20, &rest, 2);
  assert_int_equal(rest.n, 6);
  const char *tail = whole.text;
  for (int i = 0; i < 5; i++)
    tail = strchr(tail, '\n') + 1;
  assert_int_equal(rest.len, whole.len - (size_t)(tail - whole.text));
  assert_memory_equal(rest.text, tail, rest.len);
  /* A chain value that is not the one before that line: the read refuses it. */
  sc_jsonl_position wrong = t.at[5];
  wrong.chain[0] = wrong.chain[0] == '0' ? '1' : '0';
  assert_int_equal(sc_jsonl_cursor_seek(cur, &wrong), SC_OK);
  assert_int_equal(sc_jsonl_cursor_read(cur, 1 << 20, collect, &rest, &at_end), SC_ECORRUPT);
  assert_int_equal(rest.n, 6);
  /* ... and a seek after it reads again (a broken line does not stop it for good). */
  assert_int_equal(sc_jsonl_cursor_seek(cur, &t.at[10]), SC_OK);
  assert_int_equal(sc_jsonl_cursor_read(cur, 1 << 20, collect, &rest, &at_end), SC_OK);
  assert_int_equal(rest.n, 7);
  sc_jsonl_cursor_close(cur);
  /* A position of another file (the same bytes, another inode) is refused; so is one past the
   * end of a file cut back. */
  write_file(part, l.data, l.size);
  assert_int_equal(sc_jsonl_cursor_open(part, &cur), SC_OK);
  assert_int_equal(sc_jsonl_cursor_seek(cur, &t.at[5]), SC_EINVAL);
  told p = {cur, {{0}}, 0};
  assert_int_equal(sc_jsonl_cursor_read(cur, 1 << 20, tell_each, &p, &at_end), SC_OK);
  assert_int_equal(truncate(part, (off_t)l.off[3]), 0);
  assert_int_equal(sc_jsonl_cursor_seek(cur, &p.at[5]), SC_EINVAL);
  assert_int_equal(sc_jsonl_cursor_seek(cur, &p.at[3]), SC_OK); /* the end itself is a place */
  sc_jsonl_cursor_close(cur);
  log_free(&l);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void a_missing_log_is_not_found_by_verify_and_scan(void **state) {
  char path[256];
  temp_path(state, "missing.jsonl", path);
  sc_jsonl_report r;
  assert_int_equal(sc_jsonl_verify(path, &r), SC_ENOTFOUND);
  assert_int_equal(sc_jsonl_verify(path, NULL), SC_ENOTFOUND);
  sc_unfinished *u = NULL;
  size_t n = 99;
  assert_int_equal(sc_jsonl_scan(path, &u, &n, &r), SC_ENOTFOUND);
  assert_null(u);
  assert_int_equal(n, 0);
}

/* ---- scan ---- */

static const char TRACEPARENT[] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

typedef struct mixed_log {
  cJSON *config_a, *config_b, *config_c, *config_d, *previous_d, *context_d;
} mixed_log;

static void mixed_log_free(mixed_log *m) {
  cJSON_Delete(m->config_a);
  cJSON_Delete(m->config_b);
  cJSON_Delete(m->config_c);
  cJSON_Delete(m->config_d);
  cJSON_Delete(m->previous_d);
  cJSON_Delete(m->context_d);
}

typedef struct watch {
  const recorder *rec;
  const behaviour *b;
  const char *completed; /* a task whose task.completed was seen; NULL: none */
  const char *started;   /* a stage that has started; NULL: none */
} watch;

static bool watch_done(void *udata) {
  const watch *w = udata;
  return (w->completed == NULL || recorder_count(w->rec, SC_EV_TASK_COMPLETED, w->completed) > 0) &&
         (w->started == NULL || has_run(w->b, w->started));
}

static bool mixed_log_done(void *udata) {
  const watch *w = udata;
  return recorder_count(w->rec, SC_EV_TASK_COMPLETED, "task-a") == 1 &&
         recorder_count(w->rec, SC_EV_TASK_CANCELLED, "task-b") == 1 &&
         recorder_count(w->rec, SC_EV_TASK_FAILED, "task-c") == 1 && has_run(w->b, "d2");
}

static sc_task *submit_spec(sc_engine *e, const char *id, const char *tenant, const char *plan,
                            const char *traceparent, const cJSON *config, const cJSON *previous,
                            const cJSON *context) {
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.task_id = id;
  spec.tenant_id = tenant;
  spec.plan_id = plan;
  spec.traceparent = traceparent;
  spec.config = config;
  spec.previous_config = previous;
  spec.context = context;
  sc_task *t = NULL;
  if (sc_task_submit(e, &spec, &t) != SC_OK) fail_msg("submit %s: %s", id, sc_error_message());
  return t;
}

/* A log of four tasks, submitted in this order: task-a completes; task-d stops in d2 (the engine
 * is freed while the stage runs); task-b is cancelled in b1; task-c fails in c1. */
static void write_mixed_log(uv_loop_t *loop, const char *path, mixed_log *m) {
  m->config_a = job("1", "work", "a0,a1,a2");
  m->config_d = job("2", "work", "d0,d1,d2,d3,d4");
  m->previous_d = job("1", "work", "d0,d1,d2,d3,d4");
  m->context_d = json_or_die("{\"seed\":7}");
  m->config_b = job("1", "work", "b0,b1,b2");
  m->config_c = job("3", "work", "c0,c1,c2");

  behaviour b = {.hang = {"d2", "b1"}, .fail = {"c1"}};
  sc_engine *e = new_engine(loop, &b);
  sc_jsonl *log = open_log(e, path, SC_FSYNC_BATCH);
  recorder rec;
  recorder_attach(&rec, e);
  submit_spec(e, "task-a", "acme", "deploy", NULL, m->config_a, NULL, NULL);
  submit_spec(e, "task-d", "globex", "migrate", TRACEPARENT, m->config_d, m->previous_d,
              m->context_d);
  sc_task *tb = submit_spec(e, "task-b", "initech", "deploy", NULL, m->config_b, NULL, NULL);
  submit_spec(e, "task-c", "umbrella", "build", NULL, m->config_c, NULL, NULL);
  watch w = {&rec, &b, NULL, "b1"};
  assert_true(spin_until(loop, watch_done, &w));
  assert_int_equal(sc_task_cancel(tb, "operator"), SC_OK);
  if (!spin_until(loop, mixed_log_done, &w)) fail_msg("events: %s", recorder_types(&rec, NULL));
  assert_string_equal(ran_of(&b, 'a'), "a0,a1,a2");
  assert_string_equal(ran_of(&b, 'd'), "d0,d1,d2");
  assert_int_equal(sc_jsonl_close(log), SC_OK);
  sc_engine_free(e); /* task-d stops in the middle of d2 */
  recorder_free(&rec);
}

typedef struct expected {
  const char *from; /* the stopped task's id */
  sc_task_status status;
  const char *tenant, *plan, *traceparent;
  const cJSON *config, *previous_config;
  const char *last_stage;
  uint64_t epoch;
  bool context_from_created; /* a recovered task without a stage of its own */
} expected;

static void expect_string_or_null(const char *actual, const char *wanted) {
  if (wanted == NULL)
    assert_null(actual);
  else {
    assert_non_null(actual);
    assert_string_equal(actual, wanted);
  }
}

static void expect_unfinished(const sc_unfinished *u, const logfile *l, const expected *x) {
  const sc_recovery_request *req = &u->request;
  assert_int_equal(req->version, SC_RECOVERY_REQUEST_VERSION);
  assert_non_null(req->recovered_from);
  assert_string_equal(req->recovered_from, x->from);
  assert_null(req->task_id);
  assert_int_equal(req->mode, SC_RECOVER_RETRY);
  assert_int_equal(u->status, x->status);
  assert_int_equal(req->epoch, x->epoch);
  expect_string_or_null(req->tenant_id, x->tenant);
  expect_string_or_null(req->plan_id, x->plan);
  expect_string_or_null(req->traceparent, x->traceparent);
  assert_true(cJSON_Compare(req->config, x->config, true));
  if (x->previous_config == NULL)
    assert_null(req->previous_config);
  else
    assert_true(cJSON_Compare(req->previous_config, x->previous_config, true));
  expect_string_or_null(req->last_completed_stage, x->last_stage);

  sc_event_doc *created = last_event(l, l->n, x->from, SC_EV_TASK_CREATED);
  assert_non_null(created);
  const char *fingerprint = string_of(sc_event_doc_event(created)->data, "fingerprint");
  assert_non_null(fingerprint);
  expect_string_or_null(req->plan_fingerprint, fingerprint);

  sc_event_doc *completed = NULL;
  const sc_event *source = sc_event_doc_event(created);
  if (!x->context_from_created && x->last_stage != NULL) {
    completed = last_event(l, l->n, x->from, SC_EV_STAGE_COMPLETED);
    assert_non_null(completed);
    source = sc_event_doc_event(completed);
    assert_string_equal(source->stage, x->last_stage);
  }
  /* A line carries the whole context now and then; the scan folds the outputs onto the last
   * snapshot, and the digest of the line says whether it got the same context. */
  const cJSON *context = member(source->data, "context");
  if (context == NULL) context = member(member(source->data, "recovery"), "context");
  if (context != NULL) assert_true(cJSON_Compare(req->context, context, true));
  assert_non_null(req->context);
  const char *recorded = string_of(source->data, "digest");
  if (recorded == NULL) recorded = string_of(member(source->data, "recovery"), "digest");
  expect_string_or_null(req->context_digest, recorded);
  char digest[72];
  assert_int_equal(sc_json_digest(req->context, digest), SC_OK);
  assert_string_equal(digest, req->context_digest);
  sc_event_doc_free(created);
  sc_event_doc_free(completed);
}

static void
scan_returns_the_failed_and_the_stopped_tasks_in_the_order_they_first_appear(void **state) {
  char path[256];
  temp_path(state, "mixed.jsonl", path);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  mixed_log m;
  write_mixed_log(&loop, path, &m);
  logfile l;
  log_read(path, &l);

  sc_unfinished *u = NULL;
  size_t n = 0;
  sc_jsonl_report r;
  int rc = sc_jsonl_scan(path, &u, &n, &r);
  if (rc != SC_OK) fail_msg("scan: %s", sc_error_message());
  assert_int_equal(r.lines, l.n);
  assert_int_equal(r.first_bad_line, 0);
  assert_false(r.torn_tail);
  assert_int_equal(n, 2);
  expected d = {"task-d",   SC_TASK_RUNNING, "globex", "migrate", TRACEPARENT,
                m.config_d, m.previous_d,    "d1",     0,         false};
  expected c = {"task-c",   SC_TASK_FAILED, "umbrella", "build", NULL,
                m.config_c, NULL,           "c0",       0,       false};
  expect_unfinished(&u[0], &l, &d);
  expect_unfinished(&u[1], &l, &c);
  sc_unfinished_free(u, n);

  log_free(&l);
  mixed_log_free(&m);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* Recovers every entry of a scan in e; ids[i] is the new task of entry i (caller frees). */
static void recover_all(sc_engine *e, const sc_unfinished *u, size_t n, char **ids) {
  for (size_t i = 0; i < n; i++) {
    sc_task *t = NULL;
    int rc = sc_recover_from_restart(e, &u[i].request, &t);
    if (rc != SC_OK)
      fail_msg("recover %s: %s: %s", u[i].request.recovered_from, sc_err_name(rc),
               sc_error_message());
    assert_non_null(t);
    ids[i] = strdup(sc_task_id(t));
    assert_non_null(ids[i]);
  }
}

static void scan_requests_recover_in_a_new_engine_and_run_only_the_remaining_stages(void **state) {
  char path[256];
  temp_path(state, "mixed.jsonl", path);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  mixed_log m;
  write_mixed_log(&loop, path, &m);

  sc_unfinished *u = NULL;
  size_t n = 0;
  assert_int_equal(sc_jsonl_scan(path, &u, &n, NULL), SC_OK);
  assert_int_equal(n, 2);
  behaviour b = {.hang = {"d3"}}; /* the recovered task-d stops again, after d2 */
  sc_engine *e = new_engine(&loop, &b);
  sc_jsonl *log = open_log(e, path, SC_FSYNC_BATCH);
  recorder rec;
  recorder_attach(&rec, e);
  char *ids[2] = {NULL, NULL};
  recover_all(e, u, n, ids);
  watch w = {&rec, &b, ids[1], "d3"};
  if (!spin_until(&loop, watch_done, &w)) fail_msg("events: %s", recorder_types(&rec, NULL));
  assert_string_equal(ran_of(&b, 'd'), "d2,d3");
  assert_string_equal(ran_of(&b, 'c'), "c1,c2");
  assert_int_equal(sc_jsonl_close(log), SC_OK);
  sc_engine_free(e);
  recorder_free(&rec);
  sc_unfinished_free(u, n);

  /* task-d and task-c are superseded; the recovered task-d is unfinished itself. */
  logfile l;
  log_read(path, &l);
  assert_int_equal(first_broken_line(&l), 0);
  u = NULL;
  n = 0;
  assert_int_equal(sc_jsonl_scan(path, &u, &n, NULL), SC_OK);
  assert_int_equal(n, 1);
  expected d = {ids[0],     SC_TASK_RUNNING, "globex", "migrate", TRACEPARENT,
                m.config_d, m.previous_d,    "d2",     1,         false};
  expect_unfinished(&u[0], &l, &d);
  sc_unfinished_free(u, n);

  free(ids[0]);
  free(ids[1]);
  log_free(&l);
  mixed_log_free(&m);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void
scan_carries_over_the_recovery_point_of_a_recovered_task_that_stopped_at_once(void **state) {
  char path[256];
  temp_path(state, "mixed.jsonl", path);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  mixed_log m;
  write_mixed_log(&loop, path, &m);

  /* Second run: the recovered task-d stops in d2 again, before completing a stage of its own. */
  sc_unfinished *u = NULL;
  size_t n = 0;
  assert_int_equal(sc_jsonl_scan(path, &u, &n, NULL), SC_OK);
  assert_int_equal(n, 2);
  behaviour b2 = {.hang = {"d2"}};
  sc_engine *e2 = new_engine(&loop, &b2);
  sc_jsonl *log = open_log(e2, path, SC_FSYNC_ALWAYS);
  recorder rec;
  recorder_attach(&rec, e2);
  char *ids[2] = {NULL, NULL};
  recover_all(e2, u, n, ids);
  watch w = {&rec, &b2, ids[1], "d2"};
  if (!spin_until(&loop, watch_done, &w)) fail_msg("events: %s", recorder_types(&rec, NULL));
  assert_string_equal(ran_of(&b2, 'd'), "d2");
  assert_int_equal(sc_jsonl_close(log), SC_OK);
  sc_engine_free(e2);
  recorder_free(&rec);
  sc_unfinished_free(u, n);

  logfile l;
  log_read(path, &l);
  u = NULL;
  n = 0;
  assert_int_equal(sc_jsonl_scan(path, &u, &n, NULL), SC_OK);
  assert_int_equal(n, 1);
  expected d = {ids[0],     SC_TASK_RUNNING, "globex", "migrate", TRACEPARENT,
                m.config_d, m.previous_d,    "d1",     1,         true};
  expect_unfinished(&u[0], &l, &d);
  assert_non_null(u[0].request.context_digest);

  /* Third run: the carried-over request is accepted (digest and fingerprint verify). */
  behaviour b3 = {0};
  sc_engine *e3 = new_engine(&loop, &b3);
  log = open_log(e3, path, SC_FSYNC_BATCH);
  recorder_attach(&rec, e3);
  char *third = NULL;
  recover_all(e3, u, n, &third);
  settle_loop(&loop);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, third), 1);
  assert_string_equal(ran_of(&b3, 'd'), "d2,d3,d4");
  assert_int_equal(sc_jsonl_close(log), SC_OK);
  sc_engine_free(e3);
  recorder_free(&rec);
  sc_unfinished_free(u, n);

  /* Everything finished or was superseded. */
  log_free(&l);
  log_read(path, &l);
  expect_log_verifies(path, &l);
  assert_int_equal(first_broken_line(&l), 0);
  u = NULL;
  n = 99;
  assert_int_equal(sc_jsonl_scan(path, &u, &n, NULL), SC_OK);
  assert_int_equal(n, 0);
  assert_null(u);

  free(ids[0]);
  free(ids[1]);
  free(third);
  log_free(&l);
  mixed_log_free(&m);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void unfinished_free_of_null_is_a_no_op(void **state) {
  (void)state;
  sc_unfinished_free(NULL, 0);
  sc_unfinished_free(NULL, 3);
}

/* ---- write errors ---- */

static bool paused_seen(void *udata) {
  return recorder_count(udata, SC_EV_TASK_PAUSED, NULL) > 0;
}

/* Makes every write to a regular file beyond its first `bytes` fail with EFBIG (a real failing
 * write(2), as on a full disk); restore_file_size_limit() undoes it. */
static struct rlimit saved_fsize;
static void limit_file_size(rlim_t bytes) {
  signal(SIGXFSZ, SIG_IGN);
  assert_int_equal(getrlimit(RLIMIT_FSIZE, &saved_fsize), 0);
  struct rlimit l = saved_fsize;
  l.rlim_cur = bytes;
  assert_int_equal(setrlimit(RLIMIT_FSIZE, &l), 0);
}
static void restore_file_size_limit(void) {
  assert_int_equal(setrlimit(RLIMIT_FSIZE, &saved_fsize), 0);
}

static void a_log_that_cannot_be_written_pauses_the_task_and_close_reports_eio(void **state) {
  char path[256];
  temp_path(state, "full.jsonl", path);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  behaviour b = {0};
  sc_engine *e = new_engine(&loop, &b);
  sc_jsonl *log = open_log(e, path, SC_FSYNC_BATCH);
  limit_file_size(0);
  recorder rec; /* subscribes after the log: it sees every event the log failed to store */
  recorder_attach(&rec, e);
  sc_task *t = submit_job(e, "full-000", "s0,s1,s2");
  if (!spin_until(&loop, paused_seen, &rec)) fail_msg("events: %s", recorder_types(&rec, NULL));
  for (int i = 0; i < 50; i++) /* give anything that would wrongly run a chance to */
    uv_run(&loop, UV_RUN_NOWAIT);

  assert_int_equal(rec.types[0], SC_EV_TASK_CREATED);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_PAUSED, "full-000"), 1);
  assert_int_equal(rec.types[rec.n - 1], SC_EV_TASK_PAUSED); /* nothing after the pause */
  assert_int_equal(sc_task_get_status(t), SC_TASK_PAUSED);
  cJSON *paused = recorder_json(&rec, SC_EV_TASK_PAUSED, 0);
  assert_non_null(paused);
  const cJSON *data = member(paused, "data");
  assert_string_equal(string_of(data, "reason"), "ack-failed");
  const char *message = string_of(member(data, "error"), "message");
  assert_non_null(message);
  if (strstr(message, path) == NULL || strstr(message, strerror(EFBIG)) == NULL)
    fail_msg("the error does not name the file and the cause: %s", message);
  cJSON_Delete(paused);
  /* task.created is a barrier: its write failed, so no stage ran at all. */
  if (strlen(b.ran) > 0) fail_msg("stages ran after the first failed ack: %s", b.ran);
  assert_int_equal(recorder_count(&rec, SC_EV_STAGE_COMPLETED, NULL), 0);
  assert_int_equal(recorder_count(&rec, SC_EV_STAGE_STARTED, NULL), 0);

  assert_int_equal(sc_jsonl_close(log), SC_EIO);
  restore_file_size_limit();
  assert_int_equal(file_size(path), 0); /* the failed write left nothing behind */
  if (strstr(sc_error_message(), path) == NULL)
    fail_msg("close's message does not name the file: %s", sc_error_message());
  sc_engine_free(e);
  recorder_free(&rec);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* Scans path and returns the entry of the task recovered_from id (fails when absent). */
static const sc_unfinished *find_unfinished(const sc_unfinished *u, size_t n, const char *id) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(u[i].request.recovered_from, id) == 0) return &u[i];
  fail_msg("no unfinished task '%s' among %zu", id, n);
  return NULL;
}

/* Ids are free text: one with quotes and a backslash is scanned like any other; an id used again
 * after its task completed is a new run; a task recovered under its own id stays visible. */
static void scan_reads_any_id_and_follows_reused_ones(void **state) {
  char path[256];
  temp_path(state, "ids.jsonl", path);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  behaviour b = {.hang = {"b"}};
  sc_engine *e = new_engine(&loop, &b);
  sc_jsonl *log = open_log(e, path, SC_FSYNC_NONE);
  submit_job(e, "id \"quoted\" back\\slash", "a,b");
  submit_job(e, "reused", "a"); /* completes */
  settle_loop(&loop);
  submit_job(e, "reused", "a,b"); /* the same id again, and it stops at b */
  submit_job(e, "self", "a,b");
  settle_loop(&loop);
  assert_int_equal(sc_jsonl_close(log), SC_OK);
  sc_engine_free(e);

  sc_unfinished *u = NULL;
  size_t n = 0;
  assert_int_equal(sc_jsonl_scan(path, &u, &n, NULL), SC_OK);
  assert_int_equal(n, 3);
  assert_string_equal(
      find_unfinished(u, n, "id \"quoted\" back\\slash")->request.last_completed_stage, "a");
  assert_string_equal(find_unfinished(u, n, "reused")->request.last_completed_stage, "a");
  /* "self" is recovered under its own id, and stops again at b */
  e = new_engine(&loop, &b);
  log = open_log(e, path, SC_FSYNC_NONE);
  sc_recovery_request req = find_unfinished(u, n, "self")->request;
  req.task_id = "self";
  assert_int_equal(sc_recover_from_restart(e, &req, NULL), SC_OK);
  settle_loop(&loop);
  assert_int_equal(sc_jsonl_close(log), SC_OK);
  sc_engine_free(e);
  sc_unfinished_free(u, n);
  assert_int_equal(sc_jsonl_scan(path, &u, &n, NULL), SC_OK);
  assert_int_equal(n, 3);
  const sc_unfinished *self = find_unfinished(u, n, "self");
  assert_string_equal(self->request.last_completed_stage, "a");
  assert_int_equal(self->request.epoch, 1);
  sc_unfinished_free(u, n);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* A task retried from an earlier stage that stops before completing one restarts where the retry
 * did: not after the stages the retry went back over, and with the context the retry left. */
static void scan_restarts_a_retried_task_at_the_retry(void **state) {
  for (int reset = 0; reset <= 1; reset++) {
    char path[256];
    temp_path(state, reset ? "retry-reset.jsonl" : "retry.jsonl", path);
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    behaviour b = {.fail = {"c"}};
    sc_engine *e = new_engine(&loop, &b);
    sc_jsonl *log = open_log(e, path, SC_FSYNC_NONE);
    sc_task *t = submit_job(e, "job", "a,b,c");
    settle_loop(&loop);
    assert_int_equal(sc_task_get_status(t), SC_TASK_FAILED);
    b.fail[0] = NULL;
    b.hang[0] = reset ? "a" : "b"; /* the retried run stops in its first stage */
    assert_int_equal(sc_task_retry(t, reset ? "a" : "b", reset), SC_OK);
    settle_loop(&loop);
    assert_int_equal(sc_jsonl_close(log), SC_OK);
    sc_engine_free(e);
    sc_unfinished *u = NULL;
    size_t n = 0;
    assert_int_equal(sc_jsonl_scan(path, &u, &n, NULL), SC_OK);
    assert_int_equal(n, 1);
    if (reset) {
      assert_null(u[0].request.last_completed_stage);
      assert_true(u[0].request.context == NULL || u[0].request.context->child == NULL);
      assert_null(u[0].request.context_digest);
    } else {
      assert_string_equal(u[0].request.last_completed_stage, "a");
      /* the context the retry kept: a's and b's outputs */
      assert_non_null(cJSON_GetObjectItemCaseSensitive(u[0].request.context, "b"));
    }
    /* and the request is one the engine takes */
    cJSON *plan = NULL;
    e = new_engine(&loop, &b);
    assert_int_equal(sc_recovery_plan(e, &u[0].request, &plan), SC_OK);
    cJSON_Delete(plan);
    sc_engine_free(e);
    sc_unfinished_free(u, n);
    assert_int_equal(uv_loop_close(&loop), 0);
  }
}

static int stray_bytes(sc_stage_ctx *ctx, void *udata) {
  const char *what = udata;
  cJSON *out = cJSON_CreateObject();
  cJSON_AddStringToObject(out, "k", "fine");
  if (strcmp(what, "byte") == 0) cJSON_AddStringToObject(out, "v", "caf\xe9");
  if (strcmp(what, "key") == 0) cJSON_AddNumberToObject(out, "\xff", 1);
  if (strcmp(what, "raw") == 0) cJSON_AddItemToObject(out, "v", cJSON_CreateRaw("1}}\n"));
  if (strcmp(what, "number") == 0) cJSON_AddItemToObject(out, "v", cJSON_CreateRaw("1.0"));
  sc_stage_complete(ctx, out);
  return SC_OK;
}

/* A stage whose output could not be read back from the log as the same value (a byte that is not
 * UTF-8, in a string or a name; a cJSON_Raw text, which would be written unchecked and break the
 * line or the digest) fails: the log stays whole, reopens, and the task is not left to recover
 * with a context whose digest would not match. */
static void an_output_the_log_could_not_read_back_fails_and_the_log_stays_whole(void **state) {
  const char *whats[] = {"byte", "key", "raw", "number"};
  for (size_t i = 0; i < 4; i++) {
    char path[256];
    temp_path(state, "stray.jsonl", path);
    remove(path);
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    behaviour b = {.fail = {"after"}};
    sc_engine *e = new_engine(&loop, &b);
    assert_int_equal(sc_engine_register_fn(e, "stray", stray_bytes, (void *)whats[i]), SC_OK);
    sc_jsonl *log = open_log(e, path, SC_FSYNC_NONE);
    cJSON *config = json_or_die("{\"stages\":[{\"name\":\"stray\",\"kind\":\"fn\",\"params\":"
                                "{\"fn\":\"stray\"}},{\"name\":\"after\",\"kind\":\"work\"}]}");
    sc_task_spec spec;
    sc_task_spec_init(&spec);
    spec.task_id = "stray";
    spec.config = config;
    sc_task *t = NULL;
    assert_int_equal(sc_task_submit(e, &spec, &t), SC_OK);
    settle_loop(&loop);
    assert_int_equal(sc_task_get_status(t), SC_TASK_FAILED);
    assert_int_equal(sc_jsonl_close(log), SC_OK);
    sc_engine_free(e);
    assert_int_equal(sc_jsonl_verify(path, NULL), SC_OK);
    sc_unfinished *u = NULL;
    size_t n = 0;
    assert_int_equal(sc_jsonl_scan(path, &u, &n, NULL), SC_OK);
    assert_int_equal(n, 1); /* failed at its first stage: nothing completed, no context */
    assert_null(u[0].request.last_completed_stage);
    e = new_engine(&loop, &b);
    log = open_log(e, path, SC_FSYNC_NONE); /* the next open reads the whole log */
    cJSON *plan = NULL;
    if (sc_recovery_plan(e, &u[0].request, &plan) != SC_OK) fail_msg("%s", sc_error_message());
    cJSON_Delete(plan);
    sc_unfinished_free(u, n);
    assert_int_equal(sc_jsonl_close(log), SC_OK);
    cJSON_Delete(config);
    sc_engine_free(e);
    assert_int_equal(uv_loop_close(&loop), 0);
  }
}

/* Writes events (JSON objects, lengths given: they may hold any byte) as a log with a valid chain.
 */
static void write_chained(const char *path, const char *const *events, const size_t *lens,
                          size_t n) {
  char prev[65];
  memset(prev, '0', 64);
  prev[64] = '\0';
  size_t cap = 1024;
  for (size_t i = 0; i < n; i++)
    cap += lens[i] + CHAIN_TAIL + 1;
  char *buf = malloc(cap), *p = buf;
  assert_non_null(buf);
  for (size_t i = 0; i < n; i++) {
    unsigned char raw[EVP_MAX_MD_SIZE];
    unsigned int rawlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    assert_non_null(ctx);
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    EVP_DigestUpdate(ctx, prev, 64);
    EVP_DigestUpdate(ctx, events[i], lens[i]);
    EVP_DigestFinal_ex(ctx, raw, &rawlen);
    EVP_MD_CTX_free(ctx);
    for (int k = 0; k < 32; k++)
      snprintf(prev + 2 * k, 3, "%02x", raw[k]);
    memcpy(p, events[i], lens[i] - 1);
    p += lens[i] - 1;
    p += sprintf(p, CHAIN_MEMBER "%s\"}\n", prev);
  }
  write_file(path, buf, (size_t)(p - buf));
  free(buf);
}

/* A line whose task id holds a NUL byte (no engine writes one; a damaged or forged log may) is a
 * task of its own, and reading it overruns nothing. Found by the fuzz target. */
static void a_task_id_with_a_nul_byte_is_read_safely(void **state) {
  char path[256];
  temp_path(state, "nul.jsonl", path);
  static const char a[] = "{\"type\":\"stagecoach.task.started\",\"taskid\":\"ab\",\"data\":"
                          "{\"status\":\"RUNNING\"}}";
  static const char b[] = "{\"type\":\"stagecoach.task.started\",\"taskid\":\"ab\0cd\",\"data\":"
                          "{\"status\":\"RUNNING\"}}";
  const char *events[] = {b, b, a};
  size_t lens[] = {sizeof(b) - 1, sizeof(b) - 1, sizeof(a) - 1};
  write_chained(path, events, lens, 3);
  sc_jsonl_report r;
  assert_int_equal(sc_jsonl_verify(path, &r), SC_OK);
  assert_int_equal(r.lines, 3);
  sc_unfinished *u = NULL;
  size_t n = 0;
  assert_int_equal(sc_jsonl_scan(path, &u, &n, &r), SC_OK);
  assert_int_equal(n, 0); /* no task.created: nothing to recover */
  sc_unfinished_free(u, n);
}

/* One writer per log. */
static void a_second_writer_is_refused(void **state) {
  char path[256];
  temp_path(state, "locked.jsonl", path);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  behaviour b = {0};
  sc_engine *e = new_engine(&loop, &b);
  sc_engine *e2 = new_engine(&loop, &b);
  sc_jsonl *log = open_log(e, path, SC_FSYNC_NONE), *second = NULL;
  submit_job(e, "first-000", "s0,s1");
  settle_loop(&loop);
  logfile before;
  log_read(path, &before);
  assert_int_equal(sc_jsonl_open(e2, path, NULL, &second), SC_EBUSY);
  assert_null(second);
  /* The holder is this very process: the message says so rather than "another process". */
  if (strstr(sc_error_message(), path) == NULL ||
      strstr(sc_error_message(), "already open for writing in this process") == NULL)
    fail_msg("the message does not name the log and this process: %s", sc_error_message());
  logfile after;
  log_read(path, &after); /* the refused writer changed nothing */
  assert_int_equal(after.size, before.size);
  assert_memory_equal(after.data, before.data, before.size);
  log_free(&before);
  log_free(&after);
  assert_int_equal(sc_jsonl_close(log), SC_OK);
  second = open_log(e2, path, SC_FSYNC_NONE); /* free again once the first is closed */
  assert_int_equal(sc_jsonl_close(second), SC_OK);
  sc_engine_free(e);
  sc_engine_free(e2);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* ---- one writer, and only logs are written ---- */

/* The lock comes before the first read: a file another writer holds is refused as busy whatever
 * it holds, even bytes that are no log at all (reading them would say so). */
static void the_lock_is_taken_before_the_log_is_read(void **state) {
  char path[256];
  temp_path(state, "held.jsonl", path);
  static const char notes[] = "not a log, and never read by a second writer\n";
  write_file(path, notes, sizeof(notes) - 1);
  int held = open(path, O_RDONLY | O_CLOEXEC);
  assert_true(held >= 0);
  assert_int_equal(flock(held, LOCK_EX | LOCK_NB), 0);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  behaviour b = {0};
  sc_engine *e = new_engine(&loop, &b);
  sc_jsonl *log = NULL;
  assert_int_equal(sc_jsonl_open(e, path, NULL, &log), SC_EBUSY);
  assert_null(log);
  close(held);
  assert_int_equal(sc_jsonl_open(e, path, NULL, &log), SC_EPARSE); /* now it is read */
  assert_null(log);
  logfile l;
  log_read(path, &l);
  assert_int_equal(l.size, sizeof(notes) - 1);
  assert_memory_equal(l.data, notes, l.size);
  log_free(&l);
  sc_engine_free(e);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* A writer in another process: refused, with that process's pid in the message. */
static void a_writer_in_another_process_is_named_by_its_pid(void **state) {
  char path[256];
  temp_path(state, "other-process.jsonl", path);
  write_file(path, "", 0);
  int ready[2], release[2];
  assert_int_equal(pipe(ready), 0);
  assert_int_equal(pipe(release), 0);
  pid_t child = fork();
  assert_true(child >= 0);
  if (child == 0) { /* holds the lock as a writer would, until told to let go */
    int fd = open(path, O_RDWR | O_CLOEXEC);
    char c = fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0 ? 'y' : 'n';
    if (write(ready[1], &c, 1) != 1 || read(release[0], &c, 1) < 0) _exit(1);
    _exit(0);
  }
  char c = 0;
  assert_int_equal(read(ready[0], &c, 1), 1);
  assert_int_equal(c, 'y');
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  behaviour b = {0};
  sc_engine *e = new_engine(&loop, &b);
  sc_jsonl *log = NULL;
  int rc = sc_jsonl_open(e, path, NULL, &log);
  char holder[64];
  snprintf(holder, sizeof(holder), "locked by pid %ld", (long)child);
  bool named = strstr(sc_error_message(), holder) != NULL;
  assert_int_equal(write(release[1], "x", 1), 1);
  int status = 0;
  assert_int_equal(waitpid(child, &status, 0), child);
  assert_int_equal(rc, SC_EBUSY);
  assert_null(log);
  if (!named) fail_msg("the message does not name pid %ld: %s", (long)child, sc_error_message());
  log = open_log(e, path, SC_FSYNC_NONE); /* the holder ended: free again */
  assert_int_equal(sc_jsonl_close(log), SC_OK);
  for (int i = 0; i < 2; i++) {
    close(ready[i]);
    close(release[i]);
  }
  sc_engine_free(e);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* What sc_jsonl_unfinished returns is what the locked file holds, even when the name has been
 * given to another file meanwhile. */
static void unfinished_reads_the_log_through_the_locked_descriptor(void **state) {
  char path[256], other[256];
  temp_path(state, "locked.jsonl", path);
  temp_path(state, "other.jsonl", other);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  behaviour b1 = {.hang = {"s2"}};
  sc_engine *e1 = new_engine(&loop, &b1);
  sc_jsonl *log = open_log(e1, path, SC_FSYNC_BATCH);
  submit_job(e1, "stops-000", "s0,s1,s2,s3");
  for (int i = 0; i < 1000 && !has_run(&b1, "s2"); i++)
    uv_run(&loop, UV_RUN_ONCE);
  assert_int_equal(sc_jsonl_close(log), SC_OK);
  sc_engine_free(e1);

  behaviour b2 = {0};
  sc_engine *e2 = new_engine(&loop, &b2);
  log = open_log(e2, path, SC_FSYNC_BATCH);
  write_file(other, "", 0);
  assert_int_equal(rename(other, path), 0); /* the name is another (empty) file now */
  sc_unfinished *u = NULL;
  size_t n = 0;
  assert_int_equal(sc_jsonl_unfinished(log, &u, &n), SC_OK);
  assert_int_equal(n, 1);
  assert_string_equal(u[0].request.recovered_from, "stops-000");
  assert_string_equal(u[0].request.last_completed_stage, "s1");
  sc_unfinished_free(u, n);
  assert_int_equal(sc_jsonl_scan(path, &u, &n, NULL), SC_OK); /* the name: an empty log */
  assert_int_equal(n, 0);
  assert_int_equal(sc_jsonl_close(log), SC_OK);
  sc_engine_free(e2);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* Opens path and expects SC_EPARSE ("not a stagecoach log"), with the file left byte for byte. */
static void expect_not_a_log(sc_engine *e, const char *path, size_t buffer_bytes) {
  logfile before;
  log_read(path, &before);
  sc_jsonl_options o;
  sc_jsonl_options_init(&o);
  if (buffer_bytes) o.buffer_bytes = buffer_bytes;
  sc_jsonl *log = NULL;
  int rc = sc_jsonl_open(e, path, &o, &log);
  if (rc != SC_EPARSE) fail_msg("%s: open gave %s: %s", path, sc_err_name(rc), sc_error_message());
  assert_null(log);
  if (strstr(sc_error_message(), "not a stagecoach log") == NULL)
    fail_msg("message: %s", sc_error_message());
  logfile after;
  log_read(path, &after);
  assert_int_equal(after.size, before.size);
  if (before.size) assert_memory_equal(after.data, before.data, before.size);
  log_free(&before);
  log_free(&after);
}

/* A machine that lost power after the log grew but before the blocks of its last, unsynced write
 * reached the disk: zeros where those bytes were, after lines that verify (alone, or after the
 * beginning of a line). A torn tail like any other: verified, scanned, cut by the next writer. A
 * file of zeros alone is no log. */
static void zeros_left_by_a_power_loss_are_a_torn_tail(void **state) {
  static const char start[] = "{\"specversion\":\"1.0\",\"id\":\"job-0";
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  for (int with_start = 0; with_start < 2; with_start++) {
    char path[256];
    temp_path(state, with_start ? "zeros-after-start.jsonl" : "zeros.jsonl", path);
    logfile good;
    write_good_log(&loop, path, &good);
    size_t tail = (with_start ? sizeof(start) - 1 : 0) + 4096;
    char *bytes = calloc(1, tail);
    assert_non_null(bytes);
    if (with_start) memcpy(bytes, start, sizeof(start) - 1);
    FILE *f = fopen(path, "ab");
    assert_non_null(f);
    assert_int_equal(fwrite(bytes, 1, tail, f), tail);
    assert_int_equal(fclose(f), 0);
    free(bytes);

    sc_jsonl_report r;
    assert_int_equal(sc_jsonl_verify(path, &r), SC_OK);
    assert_true(r.torn_tail);
    assert_int_equal(r.lines, good.n);
    assert_int_equal(r.good_bytes, good.size);
    assert_int_equal(r.bytes, good.size + tail);
    sc_unfinished *u = NULL;
    size_t n = 0;
    assert_int_equal(sc_jsonl_scan(path, &u, &n, NULL), SC_OK);
    sc_unfinished_free(u, n);

    behaviour b = {0};
    sc_engine *e = new_engine(&loop, &b);
    sc_jsonl *log = open_log(e, path, SC_FSYNC_BATCH);
    submit_job(e, "job-001", "s0");
    settle_loop(&loop);
    assert_int_equal(sc_jsonl_close(log), SC_OK);
    sc_engine_free(e);
    logfile after;
    log_read(path, &after);
    assert_true(after.n > good.n);
    assert_memory_equal(after.data, good.data, good.size);
    assert_null(memchr(after.data, '\0', after.size));
    assert_int_equal(first_broken_line(&after), 0);
    expect_log_verifies(path, &after);
    log_free(&after);
    log_free(&good);
  }
  char path[256];
  temp_path(state, "only-zeros.jsonl", path);
  char zeros[4096] = {0};
  write_file(path, zeros, sizeof(zeros));
  behaviour b = {0};
  sc_engine *e = new_engine(&loop, &b);
  expect_not_a_log(e, path, 0);
  sc_engine_free(e);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void a_file_that_is_not_a_log_is_refused_and_left_as_it_is(void **state) {
  static const char *const files[] = {
      "{\"plan\":\"t\",\"config\":{\"stages\":[]}}",   /* a pipeline without a newline */
      "{\"plan\":\"t\",\"config\":{\"stages\":[]}}\n", /* and with one */
      "meeting notes\nsecond line\n",
      "a line never ended",
      "\n",
  };
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  behaviour b = {0};
  sc_engine *e = new_engine(&loop, &b);
  for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
    char path[256], name[32];
    snprintf(name, sizeof(name), "not-a-log-%zu", i);
    temp_path(state, name, path);
    write_file(path, files[i], strlen(files[i]));
    expect_not_a_log(e, path, 0);
    sc_jsonl_report r;
    assert_int_equal(sc_jsonl_verify(path, &r), SC_EPARSE);
    sc_unfinished *u = NULL;
    size_t n = 0;
    assert_int_equal(sc_jsonl_scan(path, &u, &n, NULL), SC_EPARSE);
    assert_null(u);
  }
  sc_engine_free(e);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void a_device_is_not_a_log(void **state) {
  (void)state;
  sc_jsonl_report r;
  assert_int_equal(sc_jsonl_verify("/dev/zero", &r), SC_EPARSE); /* and it returns at once */
  if (strstr(sc_error_message(), "not a stagecoach log") == NULL)
    fail_msg("message: %s", sc_error_message());
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  behaviour b = {0};
  sc_engine *e = new_engine(&loop, &b);
  sc_jsonl *log = NULL;
  assert_int_equal(sc_jsonl_open(e, "/dev/null", NULL, &log), SC_EPARSE);
  assert_null(log);
  sc_engine_free(e);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* Writes a good log of one finished task at path, then appends tail (tail_len bytes). */
static void log_with_tail(uv_loop_t *loop, const char *path, const char *tail, size_t tail_len) {
  behaviour b = {0};
  sc_engine *e = new_engine(loop, &b);
  sc_jsonl *log = open_log(e, path, SC_FSYNC_NONE);
  submit_job(e, "done-000", "s0");
  settle_loop(loop);
  assert_int_equal(sc_jsonl_close(log), SC_OK);
  sc_engine_free(e);
  FILE *f = fopen(path, "ab");
  assert_non_null(f);
  assert_int_equal(fwrite(tail, 1, tail_len, f), tail_len);
  assert_int_equal(fclose(f), 0);
}

/* A tail is ours to cut when it could be a line the writer started: no longer than one buffered
 * write, or beginning as every line begins. */
static void a_torn_tail_is_cut_only_when_it_could_be_a_line_we_started(void **state) {
  char garbage[200], line_start[200];
  memset(garbage, 'x', sizeof(garbage));
  memset(line_start, 'x', sizeof(line_start));
  memcpy(line_start, "{\"specversion\":\"1.0\",", 21);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  behaviour b = {0};
  sc_engine *e = new_engine(&loop, &b);
  char path[256];

  temp_path(state, "long-garbage.jsonl", path); /* 200 bytes after a 64-byte buffer: not ours */
  log_with_tail(&loop, path, garbage, sizeof(garbage));
  expect_not_a_log(e, path, 64);

  temp_path(state, "long-line.jsonl", path); /* as long, but a line we started: cut */
  log_with_tail(&loop, path, line_start, sizeof(line_start));
  uint64_t size = file_size(path);
  sc_jsonl_options o;
  sc_jsonl_options_init(&o);
  o.buffer_bytes = 64;
  sc_jsonl *log = NULL;
  assert_int_equal(sc_jsonl_open(e, path, &o, &log), SC_OK);
  assert_int_equal(file_size(path), size); /* not before the first write */
  submit_job(e, "next-000", "s0");
  settle_loop(&loop);
  assert_int_equal(sc_jsonl_close(log), SC_OK);
  logfile l;
  log_read(path, &l);
  assert_false(l.torn);
  assert_int_equal(first_broken_line(&l), 0);
  assert_null(memmem(l.data, l.size, "xxxx", 4));
  log_free(&l);

  /* Short garbage is not ours either: every line, and so every part of one a write left, begins
   * with the opening. */
  temp_path(state, "short-garbage.jsonl", path);
  log_with_tail(&loop, path, garbage, 32);
  expect_not_a_log(e, path, 64);

  temp_path(state, "short-start.jsonl", path); /* the first 8 bytes of a line: ours, cut */
  log_with_tail(&loop, path, line_start, 8);
  log = open_log(e, path, SC_FSYNC_BATCH);
  assert_true(sc_jsonl_open_report(log)->torn_tail);
  assert_int_equal(sc_jsonl_close(log), SC_OK);

  sc_engine_free(e);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* A writer that writes nothing changes nothing: no torn tail cut, no file created when asked
 * for an existing one. */
static void opening_a_log_and_writing_nothing_changes_nothing(void **state) {
  char path[256], missing[256];
  temp_path(state, "idle.jsonl", path);
  temp_path(state, "missing.jsonl", missing);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  static const char torn[] = "{\"specversion\":\"1.0\",\"id\":\"cut-0";
  log_with_tail(&loop, path, torn, sizeof(torn) - 1);
  logfile before;
  log_read(path, &before);
  behaviour b = {0};
  sc_engine *e = new_engine(&loop, &b);
  sc_jsonl *log = open_log(e, path, SC_FSYNC_ALWAYS);
  assert_int_equal(sc_jsonl_close(log), SC_OK);
  logfile after;
  log_read(path, &after);
  assert_int_equal(after.size, before.size);
  assert_memory_equal(after.data, before.data, before.size);

  sc_jsonl_options o;
  sc_jsonl_options_init(&o);
  o.existing = true;
  log = NULL;
  assert_int_equal(sc_jsonl_open(e, missing, &o, &log), SC_ENOTFOUND);
  assert_null(log);
  assert_int_equal(access(missing, F_OK), -1);
  log_free(&before);
  log_free(&after);
  sc_engine_free(e);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* ---- linear growth and the fold ---- */

/* Lines of the log that carry a stage.completed with the whole context. */
static size_t snapshot_lines(const logfile *l) {
  size_t c = 0;
  for (size_t i = 0; i < l->n; i++) {
    sc_event_doc *d = line_event(l, i);
    const sc_event *ev = sc_event_doc_event(d);
    if (ev->type == SC_EV_STAGE_COMPLETED && member(ev->data, "context") != NULL) c++;
    sc_event_doc_free(d);
  }
  return c;
}

static void a_log_grows_with_the_outputs_not_with_stages_times_context(void **state) {
  char path[256];
  temp_path(state, "growth.jsonl", path);
  enum { STAGES = 150, EACH = 2000 };
  char names[STAGES * 8] = "";
  for (int i = 0; i < STAGES; i++)
    snprintf(names + strlen(names), sizeof(names) - strlen(names), "%sg%d", i ? "," : "", i);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  behaviour b = {.hang = {"g149"}, .each_bytes = EACH};
  sc_engine *e = new_engine(&loop, &b);
  sc_jsonl *log = open_log(e, path, SC_FSYNC_NONE);
  recorder rec;
  recorder_attach(&rec, e);
  submit_job(e, "grows-000", names);
  for (int i = 0; i < 100000 && !has_run(&b, "g149"); i++)
    uv_run(&loop, UV_RUN_NOWAIT);
  assert_true(has_run(&b, "g149"));
  assert_int_equal(sc_jsonl_close(log), SC_OK);

  logfile l;
  log_read(path, &l);
  /* 149 outputs of 2 KB: about 300 KB of outputs, and the snapshots (each at most twice the one
   * before) add at most twice the last context. Stages x context would be about 22 MB. */
  if (l.size > 4 * (size_t)STAGES * EACH)
    fail_msg("%zu bytes for %d outputs of %d bytes", l.size, STAGES - 1, EACH);
  size_t snapshots = snapshot_lines(&l);
  if (snapshots > 12) fail_msg("%zu lines carry the whole context", snapshots);

  /* The scan folds the outputs after the last snapshot onto it: the context the engine had. */
  sc_unfinished *u = NULL;
  size_t n = 0;
  int rc = sc_jsonl_scan(path, &u, &n, NULL);
  if (rc != SC_OK) fail_msg("scan: %s", sc_error_message());
  assert_int_equal(n, 1);
  assert_string_equal(u[0].request.last_completed_stage, "g148");
  cJSON *engine_had = recorder_context(&rec, SC_EV_STAGE_COMPLETED, STAGES - 2);
  assert_non_null(engine_had);
  assert_true(cJSON_Compare(u[0].request.context, engine_had, true));
  cJSON *plan = NULL; /* and the engine accepts it: the digest verifies */
  if (sc_recovery_plan(e, &u[0].request, &plan) != SC_OK) fail_msg("%s", sc_error_message());
  cJSON_Delete(plan);
  cJSON_Delete(engine_had);
  sc_unfinished_free(u, n);
  log_free(&l);
  sc_engine_free(e);
  recorder_free(&rec);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* Rewrites the log at path from its events, each changed by edit (which may leave it as it is),
 * with a chain that verifies. */
static void rewrite_events(const char *path, void (*edit)(cJSON *event, size_t i, void *udata),
                           void *udata) {
  logfile l;
  log_read(path, &l);
  char **texts = calloc(l.n, sizeof(*texts));
  size_t *lens = calloc(l.n, sizeof(*lens));
  assert_true(texts && lens);
  for (size_t i = 0; i < l.n; i++) {
    char *text = event_text(l.data + l.off[i], l.len[i]);
    cJSON *ev = cJSON_Parse(text);
    assert_non_null(ev);
    free(text);
    edit(ev, i, udata);
    texts[i] = cJSON_PrintUnformatted(ev);
    lens[i] = strlen(texts[i]);
    cJSON_Delete(ev);
  }
  write_chained(path, (const char *const *)texts, lens, l.n);
  for (size_t i = 0; i < l.n; i++)
    free(texts[i]);
  free(texts);
  free(lens);
  log_free(&l);
}

/* Writes a log whose task "fold-000" stopped in s3 after s0..s2 each added a little to a large
 * initial context (so only s0's stage.completed carries it whole). */
static void write_fold_log(uv_loop_t *loop, const char *path, recorder *rec) {
  behaviour b = {.hang = {"s3"}};
  sc_engine *e = new_engine(loop, &b);
  sc_jsonl *log = open_log(e, path, SC_FSYNC_NONE);
  recorder_attach(rec, e);
  cJSON *config = job("1", "fn", "s0,s1,s2,s3");
  cJSON *initial = json_or_die("{\"seed\":\"an initial context larger than the few bytes each "
                               "stage adds, so that later lines carry outputs only\"}");
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.task_id = "fold-000";
  spec.config = config;
  spec.context = initial;
  assert_int_equal(sc_task_submit(e, &spec, NULL), SC_OK);
  for (int i = 0; i < 10000 && !has_run(&b, "s3"); i++)
    uv_run(loop, UV_RUN_NOWAIT);
  assert_int_equal(sc_jsonl_close(log), SC_OK);
  sc_engine_free(e);
  cJSON_Delete(config);
  cJSON_Delete(initial);
}

static void break_last_digest(cJSON *ev, size_t i, void *udata) {
  (void)i;
  (void)udata;
  cJSON *data = cJSON_GetObjectItemCaseSensitive(ev, "data");
  const cJSON *type = cJSON_GetObjectItemCaseSensitive(ev, "type");
  const cJSON *stage = cJSON_GetObjectItemCaseSensitive(data, "stage");
  if (strcmp(type->valuestring, "stagecoach.stage.completed") != 0 ||
      strcmp(stage->valuestring, "s2") != 0)
    return;
  cJSON_ReplaceItemInObjectCaseSensitive(
      data, "digest",
      cJSON_CreateString(
          "sha256:0000000000000000000000000000000000000000000000000000000000000000"));
}

static void the_scan_refuses_a_fold_that_does_not_match_its_digest(void **state) {
  char path[256];
  temp_path(state, "fold.jsonl", path);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  write_fold_log(&loop, path, &rec);
  logfile l;
  log_read(path, &l);
  assert_int_equal(snapshot_lines(&l), 1);
  log_free(&l);
  sc_unfinished *u = NULL;
  size_t n = 0;
  assert_int_equal(sc_jsonl_scan(path, &u, &n, NULL), SC_OK); /* as written, it folds */
  assert_int_equal(n, 1);
  cJSON *had = recorder_context(&rec, SC_EV_STAGE_COMPLETED, 2);
  assert_true(cJSON_Compare(u[0].request.context, had, true));
  cJSON_Delete(had);
  sc_unfinished_free(u, n);

  rewrite_events(path, break_last_digest, NULL); /* a chain that verifies, a digest that lies */
  assert_int_equal(sc_jsonl_verify(path, NULL), SC_OK);
  assert_int_equal(sc_jsonl_scan(path, &u, &n, NULL), SC_ECORRUPT);
  if (strstr(sc_error_message(), "digest") == NULL || strstr(sc_error_message(), "s2") == NULL)
    fail_msg("message: %s", sc_error_message());
  assert_null(u);
  recorder_free(&rec);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* An older log: every stage.completed carries the whole context, after its output. */
static void context_on_every_line(cJSON *ev, size_t i, void *udata) {
  const recorder *rec = udata;
  if (rec->types[i] != SC_EV_STAGE_COMPLETED) return;
  cJSON *data = cJSON_GetObjectItemCaseSensitive(ev, "data");
  cJSON_DeleteItemFromObjectCaseSensitive(data, "context");
  cJSON *digest = cJSON_DetachItemFromObjectCaseSensitive(data, "digest");
  cJSON_AddItemToObject(data, "context", cJSON_Parse(rec->contexts[i]));
  cJSON_AddItemToObject(data, "digest", digest);
}

static void an_older_log_with_a_context_on_every_line_stays_readable(void **state) {
  char path[256];
  temp_path(state, "old.jsonl", path);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  recorder rec;
  write_fold_log(&loop, path, &rec);
  rewrite_events(path, context_on_every_line, &rec);
  logfile l;
  log_read(path, &l);
  assert_int_equal(snapshot_lines(&l), 3);
  log_free(&l);
  sc_unfinished *u = NULL;
  size_t n = 0;
  int rc = sc_jsonl_scan(path, &u, &n, NULL);
  if (rc != SC_OK) fail_msg("scan: %s", sc_error_message());
  assert_int_equal(n, 1);
  assert_string_equal(u[0].request.last_completed_stage, "s2");
  cJSON *had = recorder_context(&rec, SC_EV_STAGE_COMPLETED, 2);
  assert_true(cJSON_Compare(u[0].request.context, had, true));
  char digest[72];
  assert_int_equal(sc_json_digest(had, digest), SC_OK);
  assert_string_equal(u[0].request.context_digest, digest);
  cJSON_Delete(had);
  sc_unfinished_free(u, n);
  recorder_free(&rec);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* ---- a recovery recorded only in part ---- */

static void
a_log_ending_right_after_a_recovered_task_created_recovers_to_the_same_point(void **state) {
  char path[256];
  temp_path(state, "half.jsonl", path);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  mixed_log m;
  write_mixed_log(&loop, path, &m);
  sc_unfinished *u = NULL;
  size_t n = 0;
  assert_int_equal(sc_jsonl_scan(path, &u, &n, NULL), SC_OK);
  const sc_unfinished *d = find_unfinished(u, n, "task-d");
  uint64_t before = file_size(path);

  /* Recover task-d, then keep the log only up to the end of the recovered task's task.created:
   * a recovery that stopped right there (a full disk after that one line). */
  behaviour b2 = {.hang = {"d2"}};
  sc_engine *e2 = new_engine(&loop, &b2);
  sc_jsonl *log = open_log(e2, path, SC_FSYNC_BATCH);
  sc_task *t = NULL;
  assert_int_equal(sc_recover_from_restart(e2, &d->request, &t), SC_OK);
  char *recovered = strdup(sc_task_id(t));
  for (int i = 0; i < 10000 && !has_run(&b2, "d2"); i++)
    uv_run(&loop, UV_RUN_NOWAIT);
  assert_int_equal(sc_jsonl_close(log), SC_OK);
  sc_engine_free(e2);
  sc_unfinished_free(u, n);
  logfile l;
  log_read(path, &l);
  size_t end = 0;
  for (size_t i = 0; i < l.n && end == 0; i++)
    if (l.off[i] >= before) end = l.off[i] + l.len[i] + 1;
  sc_event_doc *created = NULL;
  assert_int_equal(sc_event_parse(l.data + before, end - before - 1, &created), SC_OK);
  const sc_event *ev = sc_event_doc_event(created);
  assert_int_equal(ev->type, SC_EV_TASK_CREATED);
  assert_string_equal(ev->task_id, recovered);
  const cJSON *point = member(ev->data, "recovery");
  assert_string_equal(string_of(ev->data, "recovered_from"), "task-d");
  assert_string_equal(string_of(point, "mode"), "retry");
  assert_string_equal(string_of(point, "last_completed_stage"), "d1");
  assert_int_equal((int)member(point, "start_index")->valuedouble, 2);
  assert_non_null(string_of(point, "digest"));
  assert_true(cJSON_IsObject(member(point, "context")));
  sc_event_doc_free(created);
  assert_int_equal(truncate(path, (off_t)end), 0);
  log_free(&l);

  /* The stopped task-d is superseded; the recovered one carries on from d2, never from d0. */
  u = NULL;
  assert_int_equal(sc_jsonl_scan(path, &u, &n, NULL), SC_OK);
  for (size_t i = 0; i < n; i++)
    if (strcmp(u[i].request.recovered_from, "task-d") == 0) fail_msg("task-d is not superseded");
  const sc_unfinished *again = find_unfinished(u, n, recovered);
  assert_string_equal(again->request.last_completed_stage, "d1");
  assert_int_equal(again->request.epoch, 1);
  behaviour b3 = {0};
  sc_engine *e3 = new_engine(&loop, &b3);
  log = open_log(e3, path, SC_FSYNC_BATCH);
  assert_int_equal(sc_recover_from_restart(e3, &again->request, NULL), SC_OK);
  settle_loop(&loop);
  assert_string_equal(ran_of(&b3, 'd'), "d2,d3,d4");
  assert_int_equal(sc_jsonl_close(log), SC_OK);
  sc_engine_free(e3);
  sc_unfinished_free(u, n);
  free(recovered);
  mixed_log_free(&m);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* A caller may point any field of a request at its own memory before recovering; the free
 * frees only what the scan allocated. */
static void unfinished_free_frees_only_what_the_scan_allocated(void **state) {
  char path[256];
  temp_path(state, "mixed.jsonl", path);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  mixed_log m;
  write_mixed_log(&loop, path, &m);
  sc_unfinished *u = NULL;
  size_t n = 0;
  assert_int_equal(sc_jsonl_scan(path, &u, &n, NULL), SC_OK);
  assert_true(n > 0);
  char mine[] = "my-own-id";
  cJSON *context = json_or_die("{\"mine\":true}");
  u[0].request.task_id = mine;
  u[0].request.context = context;
  u[0].request.context_digest = NULL;
  u[0].request.config = m.config_d;
  u[0].request.last_completed_stage = "d0";
  sc_unfinished_free(u, n); /* ASan: nothing of the caller's freed, nothing of the scan's leaked */
  assert_string_equal(mine, "my-own-id");
  assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(context, "mine")));
  cJSON_Delete(context);
  mixed_log_free(&m);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* ---- the idempotency key through crashes ---- */

/* What each start of the stage "flaky" does, in order: 'r' fails retryable, 'f' fails for good,
 * 'h' hangs (the crash point), anything else completes. Every key a stage was given is kept. */
typedef struct keyed {
  const char *actions;
  size_t next;
  char keys[16][80]; /* "stage/mode=key" */
  size_t nkeys;
} keyed;

static void keyed_note(keyed *k, sc_stage_ctx *ctx) {
  assert_true(k->nkeys < 16);
  const char *key = sc_stage_idempotency_key(ctx);
  assert_int_equal(strlen(key), 64);
  snprintf(k->keys[k->nkeys++], sizeof(k->keys[0]), "%s/%s=%s", sc_stage_name(ctx),
           sc_stage_is_compensation(ctx) ? "undo" : "do", key);
}

static int keyed_start(sc_stage_ctx *ctx, void *udata) {
  keyed *k = udata;
  keyed_note(k, ctx);
  char action = strcmp(sc_stage_name(ctx), "flaky") == 0 ? k->actions[k->next++] : 'c';
  if (action == 'h') return SC_OK;
  if (action == 'r' || action == 'f')
    sc_stage_fail(ctx, SC_EIO, "the outside API said no", action == 'r');
  else
    sc_stage_complete(ctx, NULL);
  return SC_OK;
}

static int keyed_compensate(sc_stage_ctx *ctx, void *udata) {
  keyed_note(udata, ctx);
  sc_stage_complete(ctx, NULL);
  return SC_OK;
}

static bool keys_at_least(void *udata) {
  const keyed *k = udata;
  return k->next == strlen(k->actions);
}

/* One life of the process: an engine with the log, until every action was used. */
static sc_engine *keyed_engine(uv_loop_t *loop, keyed *k, const char *path, sc_jsonl **log) {
  static const sc_stage_kind kind = {SC_STAGE_KIND_VERSION, keyed_start, work_cancel,
                                     keyed_compensate};
  sc_engine *e = start_engine(loop, NULL, NULL);
  assert_int_equal(sc_engine_register_kind(e, "keyed", &kind, k), SC_OK);
  *log = open_log(e, path, SC_FSYNC_NONE);
  return e;
}

static void crash(uv_loop_t *loop, sc_engine *e, sc_jsonl *log) {
  settle_loop(loop);
  assert_int_equal(sc_jsonl_close(log), SC_OK);
  sc_engine_free(e); /* the process ends in the middle of a stage */
  settle_loop(loop);
}

/* The stopped task's recovery request from the log alone, started in e. */
static sc_task *recover_from_log(sc_engine *e, const char *path, const char *root,
                                 uint32_t intent) {
  sc_unfinished *u = NULL;
  size_t n = 0;
  assert_int_equal(sc_jsonl_scan(path, &u, &n, NULL), SC_OK);
  assert_int_equal(n, 1);
  assert_string_equal(u[0].request.root_task_id, root);
  assert_int_equal(u[0].request.intent, intent);
  sc_task *t = NULL;
  if (sc_recover_from_restart(e, &u[0].request, &t) != SC_OK) fail_msg("%s", sc_error_message());
  sc_unfinished_free(u, n);
  return t;
}

static const char *key_of(const keyed *k, size_t i) {
  assert_true(i < k->nkeys);
  return strchr(k->keys[i], '=') + 1;
}

static void the_idempotency_key_survives_crashes_and_changes_with_a_new_intent(void **state) {
  char path[256];
  temp_path(state, "keys.jsonl", path);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  cJSON *config = json_or_die(
      "{\"stages\":[{\"name\":\"prepare\",\"kind\":\"keyed\",\"effect\":\"compensable\"},"
      "{\"name\":\"flaky\",\"kind\":\"keyed\",\"effect\":\"compensable\","
      "\"retry\":{\"max_attempts\":3,\"initial_backoff_ms\":1}}]}");
  /* Life 1: an automatic retry, then the crash. */
  keyed k1 = {.actions = "rh"};
  sc_jsonl *log;
  sc_engine *e = keyed_engine(&loop, &k1, path, &log);
  submit_spec(e, "root-task", "acme", "deploy", NULL, config, NULL, NULL);
  assert_true(spin_until(&loop, keys_at_least, &k1));
  crash(&loop, e, log);
  assert_int_equal(k1.nkeys, 3); /* prepare, flaky, flaky again */
  assert_string_equal(key_of(&k1, 1), key_of(&k1, 2));
  assert_string_not_equal(key_of(&k1, 0), key_of(&k1, 1));
  /* Life 2: recovered, the same key; it fails, a deliberate retry gets a new one; crash. */
  keyed k2 = {.actions = "fh"};
  e = keyed_engine(&loop, &k2, path, &log);
  sc_task *t = recover_from_log(e, path, "root-task", 0);
  char *recovered_id = strdup(sc_task_id(t));
  assert_string_equal(sc_task_root_id(t), "root-task");
  const char *actions = k2.actions;
  k2.actions = "f"; /* wait for the failure first */
  assert_true(spin_until(&loop, keys_at_least, &k2));
  settle_loop(&loop);
  t = sc_engine_find_task(e, recovered_id);
  assert_non_null(t);
  assert_int_equal(sc_task_get_status(t), SC_TASK_FAILED);
  k2.actions = actions;
  assert_int_equal(sc_task_retry(t, NULL, false), SC_OK);
  assert_true(spin_until(&loop, keys_at_least, &k2));
  crash(&loop, e, log);
  assert_int_equal(k2.nkeys, 2);
  assert_string_equal(key_of(&k2, 0), key_of(&k1, 1));     /* the same stage after a crash */
  assert_string_not_equal(key_of(&k2, 1), key_of(&k2, 0)); /* a deliberate retry */
  /* Life 3: the retry's key survives its crash; then a compensation, a new intent again. */
  keyed k3 = {.actions = "f"};
  e = keyed_engine(&loop, &k3, path, &log);
  t = recover_from_log(e, path, "root-task", 1);
  char *third_id = strdup(sc_task_id(t));
  assert_true(spin_until(&loop, keys_at_least, &k3));
  settle_loop(&loop);
  t = sc_engine_find_task(e, third_id);
  assert_non_null(t);
  assert_int_equal(sc_task_get_status(t), SC_TASK_FAILED);
  assert_int_equal(sc_task_rollback(t, SC_ROLLBACK_COMPENSATE), SC_OK);
  settle_loop(&loop);
  assert_int_equal(k3.nkeys, 2); /* flaky, then prepare's compensation */
  assert_string_equal(key_of(&k3, 0), key_of(&k2, 1));
  assert_memory_equal(k3.keys[1], "prepare/undo=", 13);
  for (size_t i = 0; i < 3; i++)
    assert_string_not_equal(key_of(&k3, 1), key_of(&k1, i));
  assert_int_equal(sc_jsonl_close(log), SC_OK);
  sc_engine_free(e);
  settle_loop(&loop);
  free(recovered_id);
  free(third_id);
  cJSON_Delete(config);
  assert_int_equal(uv_loop_close(&loop), 0);
}

#define T(name) cmocka_unit_test_setup_teardown(name, make_temp_dir, remove_temp_dir)

int main(void) {
  const struct CMUnitTest tests[] = {
      T(fsync_none_writes_every_event_as_one_chained_line),
      T(the_idempotency_key_survives_crashes_and_changes_with_a_new_intent),
      T(fsync_batch_writes_every_event_as_one_chained_line),
      T(fsync_always_writes_every_event_as_one_chained_line),
      T(each_stage_starts_only_after_the_previous_stage_completed_line_is_in_the_file),
      T(concurrent_tasks_never_interleave_or_split_lines),
      T(a_buffer_smaller_than_a_line_still_writes_whole_lines),
      T(a_300_kb_context_is_written_as_whole_lines),
      T(reopening_a_log_continues_the_chain),
      T(open_cuts_a_torn_tail_and_says_so),
      T(zeros_left_by_a_power_loss_are_a_torn_tail),
      T(verify_reports_the_first_changed_line),
      T(verify_reports_an_inserted_copy_of_a_line),
      T(verify_reports_a_removed_line_at_the_line_after_it),
      T(verify_reports_swapped_lines),
      T(verify_reports_a_line_without_a_chain_member),
      T(an_empty_log_verifies_with_no_lines),
      T(a_missing_log_is_not_found_by_verify_and_scan),
      T(a_cursor_reads_the_events_in_pieces_and_resumes_where_it_stopped),
      T(a_cursor_seeks_back_to_a_position_it_told),
      T(a_directory_or_a_fifo_is_refused_at_once),
      T(scan_returns_the_failed_and_the_stopped_tasks_in_the_order_they_first_appear),
      T(scan_requests_recover_in_a_new_engine_and_run_only_the_remaining_stages),
      T(scan_carries_over_the_recovery_point_of_a_recovered_task_that_stopped_at_once),
      T(unfinished_free_of_null_is_a_no_op),
      T(a_log_that_cannot_be_written_pauses_the_task_and_close_reports_eio),
      T(scan_reads_any_id_and_follows_reused_ones),
      T(scan_restarts_a_retried_task_at_the_retry),
      T(a_second_writer_is_refused),
      T(an_output_the_log_could_not_read_back_fails_and_the_log_stays_whole),
      T(a_task_id_with_a_nul_byte_is_read_safely),
      T(the_lock_is_taken_before_the_log_is_read),
      T(a_writer_in_another_process_is_named_by_its_pid),
      T(unfinished_reads_the_log_through_the_locked_descriptor),
      T(a_file_that_is_not_a_log_is_refused_and_left_as_it_is),
      T(a_device_is_not_a_log),
      T(a_torn_tail_is_cut_only_when_it_could_be_a_line_we_started),
      T(opening_a_log_and_writing_nothing_changes_nothing),
      T(a_log_grows_with_the_outputs_not_with_stages_times_context),
      T(the_scan_refuses_a_fold_that_does_not_match_its_digest),
      T(an_older_log_with_a_context_on_every_line_stays_readable),
      T(a_log_ending_right_after_a_recovered_task_created_recovers_to_the_same_point),
      T(unfinished_free_frees_only_what_the_scan_allocated),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
