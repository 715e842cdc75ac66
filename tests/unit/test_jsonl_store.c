/* The JSON-lines log behind the store interface: attach, unfinished, checkpoints (listed, the
 * latest, by id, each context folded and verified), events from a seq, delete, close. */
#define _GNU_SOURCE /* memmem */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include <stagecoach/jsonl.h>
#include <stagecoach/stagecoach.h>
#include <stagecoach/store.h>

#include "harness.h"

#define LOGFIX_DIR_PREFIX "/tmp/sc-jstore"
#include "logfix.h"

/* A store on path, attached to a new engine on loop. */
static sc_store *attached(uv_loop_t *loop, sc_engine **e, const char *path) {
  *e = new_engine(loop);
  sc_store *s = NULL;
  assert_int_equal(sc_jsonl_store_open(path, NULL, &s), SC_OK);
  if (sc_store_attach(s, *e) != SC_OK) fail_msg("attach: %s", sc_error_message());
  return s;
}

/* "job" runs nine stages with 3 KB outputs and completes (snapshots now and then, folds between);
 * "stuck" completes two and stops in hang2. rec records what the engine emitted. */
static void write_log(const char *path, recorder *rec) {
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e;
  sc_store *s = attached(&loop, &e, path);
  recorder_attach(rec, e);
  submit(e, "job", "s0,s1,s2,s3,s4,s5,s6,s7,s8");
  submit(e, "stuck", "s0,s1,hang2");
  run_a_while(&loop);
  assert_int_equal(sc_store_close(s), SC_OK);
  sc_engine_free(e);
  run_a_while(&loop);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* The nth stage.completed of task in the recorder: its whole in-process context. */
static cJSON *context_of(const recorder *rec, const char *task, size_t nth) {
  size_t k = 0;
  for (size_t i = 0; i < rec->n; i++)
    if (rec->types[i] == SC_EV_STAGE_COMPLETED && strcmp(rec->task_ids[i], task) == 0 && k++ == nth)
      return cJSON_Parse(rec->contexts[i]);
  return NULL;
}

static void attach_writes_the_log_and_unfinished_reads_it(void **state) {
  char path[256];
  temp_path(state, "job.jsonl", path);
  recorder rec;
  write_log(path, &rec);
  recorder_free(&rec);
  assert_int_equal(sc_jsonl_verify(path, NULL), SC_OK);
  /* Not attached: the scan of the file. */
  sc_store *s = NULL;
  assert_int_equal(sc_jsonl_store_open(path, NULL, &s), SC_OK);
  assert_null(sc_jsonl_store_log(s));
  sc_unfinished *u = NULL;
  size_t n = 0;
  assert_int_equal(sc_store_unfinished(s, &u, &n), SC_OK);
  assert_int_equal(n, 1);
  assert_string_equal(u[0].request.recovered_from, "stuck");
  assert_string_equal(u[0].request.last_completed_stage, "s1");
  sc_unfinished_free(u, n);
  /* Attached: the writer holds the lock, a second attach and a second writer are refused. */
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = new_engine(&loop);
  assert_int_equal(sc_store_attach(s, e), SC_OK);
  assert_non_null(sc_jsonl_store_log(s));
  assert_int_equal(sc_store_attach(s, e), SC_EBUSY);
  sc_store *other = NULL;
  assert_int_equal(sc_jsonl_store_open(path, NULL, &other), SC_OK);
  assert_int_equal(sc_store_attach(other, e), SC_EBUSY);
  assert_int_equal(sc_store_close(other), SC_OK);
  assert_int_equal(sc_store_unfinished(s, &u, &n), SC_OK);
  assert_int_equal(n, 1);
  assert_int_equal(sc_recover_from_restart(e, &u[0].request, NULL), SC_OK);
  sc_unfinished_free(u, n);
  run_a_while(&loop);
  assert_int_equal(sc_store_close(s), SC_OK);
  sc_engine_free(e);
  assert_int_equal(uv_loop_close(&loop), 0);
  /* The recovered task stopped in hang2 again: it is the one unfinished now. */
  assert_int_equal(sc_jsonl_scan(path, &u, &n, NULL), SC_OK);
  assert_int_equal(n, 1);
  assert_string_not_equal(u[0].request.recovered_from, "stuck");
  sc_unfinished_free(u, n);
  assert_int_equal(sc_store_close(NULL), SC_OK);
}

static void checkpoints_are_listed_in_order_without_context(void **state) {
  char path[256];
  temp_path(state, "job.jsonl", path);
  recorder rec;
  write_log(path, &rec);
  sc_store *s = NULL;
  assert_int_equal(sc_jsonl_store_open(path, NULL, &s), SC_OK);
  cJSON *list = NULL;
  assert_int_equal(sc_store_checkpoints(s, "job", &list), SC_OK);
  assert_int_equal(cJSON_GetArraySize(list), 9);
  int i = 0;
  uint64_t last_seq = 0;
  for (const cJSON *c = list->child; c != NULL; c = c->next, i++) {
    char stage[8];
    snprintf(stage, sizeof(stage), "s%d", i);
    assert_string_equal(cJSON_GetObjectItem(c, "stage")->valuestring, stage);
    assert_int_equal(cJSON_GetObjectItem(c, "index")->valueint, i);
    assert_string_equal(cJSON_GetObjectItem(c, "task")->valuestring, "job");
    assert_string_equal(cJSON_GetObjectItem(c, "reason")->valuestring, "run");
    uint64_t seq = (uint64_t)cJSON_GetObjectItem(c, "seq")->valuedouble;
    assert_true(seq > last_seq);
    last_seq = seq;
    char id[32];
    snprintf(id, sizeof(id), "job/%llu", (unsigned long long)seq);
    assert_string_equal(cJSON_GetObjectItem(c, "id")->valuestring, id);
    assert_true(cJSON_IsObject(cJSON_GetObjectItem(c, "output")));
    assert_non_null(strstr(cJSON_GetObjectItem(c, "digest")->valuestring, "sha256:"));
    assert_null(cJSON_GetObjectItem(c, "context"));
  }
  cJSON_Delete(list);
  assert_int_equal(sc_store_checkpoints(s, "nobody", &list), SC_ENOTFOUND);
  assert_null(list);
  assert_int_equal(sc_store_close(s), SC_OK);
  recorder_free(&rec);
}

static void latest_and_by_id_carry_the_context_the_engine_had(void **state) {
  char path[256];
  temp_path(state, "job.jsonl", path);
  recorder rec;
  write_log(path, &rec);
  sc_store *s = NULL;
  assert_int_equal(sc_jsonl_store_open(path, NULL, &s), SC_OK);
  cJSON *cp = NULL;
  assert_int_equal(sc_store_latest(s, "job", &cp), SC_OK);
  assert_string_equal(cJSON_GetObjectItem(cp, "stage")->valuestring, "s8");
  cJSON *want = context_of(&rec, "job", 8);
  assert_non_null(want);
  assert_true(cJSON_Compare(cJSON_GetObjectItem(cp, "context"), want, true));
  cJSON_Delete(want);
  cJSON_Delete(cp);
  /* Every checkpoint by its id: the context after that stage, not one later. */
  cJSON *list = NULL;
  assert_int_equal(sc_store_checkpoints(s, "job", &list), SC_OK);
  size_t nth = 0;
  for (const cJSON *c = list->child; c != NULL; c = c->next, nth++) {
    const char *id = cJSON_GetObjectItem(c, "id")->valuestring;
    if (sc_store_checkpoint(s, id, &cp) != SC_OK) fail_msg("%s: %s", id, sc_error_message());
    want = context_of(&rec, "job", nth);
    assert_true(cJSON_Compare(cJSON_GetObjectItem(cp, "context"), want, true));
    assert_string_equal(cJSON_GetObjectItem(cp, "id")->valuestring, id);
    cJSON_Delete(want);
    cJSON_Delete(cp);
  }
  cJSON_Delete(list);
  assert_int_equal(sc_store_latest(s, "stuck", &cp), SC_OK);
  assert_string_equal(cJSON_GetObjectItem(cp, "stage")->valuestring, "s1");
  cJSON_Delete(cp);
  assert_int_equal(sc_store_latest(s, "nobody", &cp), SC_ENOTFOUND);
  assert_null(cp);
  assert_int_equal(sc_store_checkpoint(s, "job/1", &cp), SC_ENOTFOUND); /* task.created */
  assert_int_equal(sc_store_checkpoint(s, "nobody/4", &cp), SC_ENOTFOUND);
  const char *malformed[] = {"job", "job/", "job/0", "/3", "job/3x", "job/-1"};
  for (size_t i = 0; i < sizeof(malformed) / sizeof(malformed[0]); i++) {
    assert_int_equal(sc_store_checkpoint(s, malformed[i], &cp), SC_EINVAL);
    assert_null(cp);
  }
  assert_int_equal(sc_store_close(s), SC_OK);
  recorder_free(&rec);
}

/* Rewrites every line's chain member, so that an edit is not caught by the chain. */
static void rechain(const char *path) {
  size_t len;
  char *text = slurp(path, &len);
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  char prev[65];
  memset(prev, '0', 64);
  prev[64] = '\0';
  for (char *line = text, *nl; (nl = strchr(line, '\n')) != NULL; line = nl + 1) {
    size_t event_len = (size_t)(nl - line) - 76;
    line[event_len] = '}';
    unsigned char raw[32];
    unsigned int n = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    EVP_DigestUpdate(ctx, prev, 64);
    EVP_DigestUpdate(ctx, line, event_len + 1);
    EVP_DigestFinal_ex(ctx, raw, &n);
    EVP_MD_CTX_free(ctx);
    for (int i = 0; i < 32; i++)
      snprintf(prev + 2 * i, 3, "%02x", raw[i]);
    fwrite(line, 1, event_len, f);
    fprintf(f, ",\"chain\":\"%s\"}\n", prev);
  }
  fclose(f);
  free(text);
}

static void a_changed_checkpoint_is_reported_corrupt_never_returned(void **state) {
  char path[256];
  temp_path(state, "job.jsonl", path);
  recorder rec;
  write_log(path, &rec);
  recorder_free(&rec);
  /* One byte of s4's output: the chain breaks at that line. */
  size_t len;
  char *text = slurp(path, &len);
  char *hit = strstr(text, "\"output\":{\"s4\":\"");
  assert_non_null(hit);
  hit[16] = hit[16] == 'z' ? 'y' : 'z';
  spit(path, text, len);
  free(text);
  sc_store *s = NULL;
  assert_int_equal(sc_jsonl_store_open(path, NULL, &s), SC_OK);
  cJSON *cp = NULL;
  assert_int_equal(sc_store_latest(s, "job", &cp), SC_ECORRUPT);
  assert_null(cp);
  /* With the chain recomputed the line verifies, but its context no longer matches a digest. */
  rechain(path);
  assert_int_equal(sc_jsonl_verify(path, NULL), SC_OK);
  cJSON *list = NULL;
  assert_int_equal(sc_store_checkpoints(s, "job", &list), SC_OK);
  const char *id4 = cJSON_GetObjectItem(cJSON_GetArrayItem(list, 4), "id")->valuestring;
  const char *id3 = cJSON_GetObjectItem(cJSON_GetArrayItem(list, 3), "id")->valuestring;
  assert_int_equal(sc_store_checkpoint(s, id4, &cp), SC_ECORRUPT);
  assert_null(cp);
  assert_non_null(strstr(sc_error_message(), id4));
  assert_int_equal(sc_store_checkpoint(s, id3, &cp), SC_OK); /* before the change: good */
  cJSON_Delete(cp);
  cJSON_Delete(list);
  assert_int_equal(sc_store_close(s), SC_OK);
}

typedef struct seen {
  uint64_t seqs[256];
  size_t n;
  size_t stop_after; /* 0: never */
} seen;

static int note_event(const char *json, size_t len, void *udata) {
  seen *w = udata;
  sc_event_doc *d = NULL;
  assert_int_equal(sc_event_parse(json, len, &d), SC_OK);
  if (w->n < 256) w->seqs[w->n++] = sc_event_doc_event(d)->seq;
  sc_event_doc_free(d);
  return w->stop_after && w->n == w->stop_after ? 42 : 0;
}

static void events_are_given_from_a_seq_in_order(void **state) {
  char path[256];
  temp_path(state, "job.jsonl", path);
  recorder rec;
  write_log(path, &rec);
  size_t total = 0;
  for (size_t i = 0; i < rec.n; i++)
    total += strcmp(rec.task_ids[i], "job") == 0;
  recorder_free(&rec);
  sc_store *s = NULL;
  assert_int_equal(sc_jsonl_store_open(path, NULL, &s), SC_OK);
  seen w = {0};
  assert_int_equal(sc_store_events(s, "job", 5, note_event, &w), SC_OK);
  assert_int_equal(w.n, total - 4);
  for (size_t i = 0; i < w.n; i++)
    assert_int_equal(w.seqs[i], 5 + i);
  memset(&w, 0, sizeof(w));
  assert_int_equal(sc_store_events(s, NULL, 1, note_event, &w), SC_OK);
  assert_true(w.n > total);
  memset(&w, 0, sizeof(w));
  w.stop_after = 3;
  assert_int_equal(sc_store_events(s, "job", 1, note_event, &w), 42);
  assert_int_equal(w.n, 3);
  assert_int_equal(sc_store_events(s, "nobody", 1, note_event, &w), SC_ENOTFOUND);
  assert_int_equal(sc_store_events(s, "job", 1, NULL, NULL), SC_EINVAL);
  assert_int_equal(sc_store_close(s), SC_OK);
}

static void delete_is_left_to_compaction_and_says_so(void **state) {
  char path[256];
  temp_path(state, "job.jsonl", path);
  recorder rec;
  write_log(path, &rec);
  recorder_free(&rec);
  size_t len1, len2;
  char *before = slurp(path, &len1);
  sc_store *s = NULL;
  assert_int_equal(sc_jsonl_store_open(path, NULL, &s), SC_OK);
  assert_int_equal(sc_store_delete_task(s, "job"), SC_EINVAL);
  assert_non_null(strstr(sc_error_message(), "compact"));
  assert_int_equal(sc_store_delete_task(s, "stuck"), SC_EBUSY);
  assert_int_equal(sc_store_delete_task(s, "nobody"), SC_ENOTFOUND);
  assert_int_equal(sc_store_close(s), SC_OK);
  char *after = slurp(path, &len2);
  assert_int_equal(len1, len2);
  assert_memory_equal(before, after, len1);
  free(before);
  free(after);
}

static void a_missing_log_has_no_tasks(void **state) {
  char path[256];
  temp_path(state, "missing.jsonl", path);
  sc_store *s = NULL;
  assert_int_equal(sc_jsonl_store_open(path, NULL, &s), SC_OK);
  cJSON *out = NULL;
  assert_int_equal(sc_store_checkpoints(s, "job", &out), SC_ENOTFOUND);
  sc_unfinished *u = NULL;
  size_t n = 0;
  assert_int_equal(sc_store_unfinished(s, &u, &n), SC_ENOTFOUND);
  assert_int_equal(sc_store_close(s), SC_OK);
  assert_int_equal(access(path, F_OK), -1);
  assert_int_equal(sc_jsonl_store_open(NULL, NULL, &s), SC_EINVAL);
  assert_null(s);
}

static void a_compacted_log_answers_the_same_for_an_unfinished_task(void **state) {
  char path[256];
  temp_path(state, "job.jsonl", path);
  recorder rec;
  write_log(path, &rec);
  sc_store *s = NULL;
  assert_int_equal(sc_jsonl_store_open(path, NULL, &s), SC_OK);
  cJSON *before = NULL, *after = NULL;
  assert_int_equal(sc_store_latest(s, "stuck", &before), SC_OK);
  assert_int_equal(sc_jsonl_compact(path, NULL, NULL), SC_OK);
  assert_int_equal(sc_store_latest(s, "stuck", &after), SC_OK);
  assert_true(cJSON_Compare(before, after, true));
  cJSON_Delete(before);
  cJSON_Delete(after);
  assert_int_equal(sc_store_latest(s, "job", &after), SC_ENOTFOUND); /* finished: dropped */
  assert_null(after);
  assert_int_equal(sc_store_close(s), SC_OK);
  recorder_free(&rec);
}

static void a_reused_id_answers_for_its_latest_run(void **state) {
  char path[256];
  temp_path(state, "job.jsonl", path);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e;
  sc_store *s = attached(&loop, &e, path);
  submit(e, "job", "s0,s1,s2");
  run_a_while(&loop);
  submit(e, "job", "t0");
  run_a_while(&loop);
  assert_int_equal(sc_store_close(s), SC_OK);
  sc_engine_free(e);
  assert_int_equal(uv_loop_close(&loop), 0);
  assert_int_equal(sc_jsonl_store_open(path, NULL, &s), SC_OK);
  cJSON *list = NULL;
  assert_int_equal(sc_store_checkpoints(s, "job", &list), SC_OK);
  assert_int_equal(cJSON_GetArraySize(list), 1);
  assert_string_equal(cJSON_GetObjectItem(list->child, "stage")->valuestring, "t0");
  cJSON_Delete(list);
  assert_int_equal(sc_store_close(s), SC_OK);
}

/* A config whose stage "gate" asks for two approvals first. */
static cJSON *gated_job(void) {
  cJSON *c = job("s0,gate,s2");
  cJSON *gate = cJSON_GetArrayItem(cJSON_GetObjectItem(c, "stages"), 1);
  cJSON *approval = cJSON_AddObjectToObject(gate, "approval");
  cJSON_AddBoolToObject(approval, "required", true);
  cJSON_AddNumberToObject(approval, "approvers_needed", 2);
  cJSON_AddNumberToObject(approval, "timeout_ms", 600000);
  return c;
}

static void tasks_are_paged_by_id_and_approvals_pending_listed(void **state) {
  char path[256];
  temp_path(state, "job.jsonl", path);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e;
  sc_store *s = attached(&loop, &e, path);
  submit(e, "t1", "s0");
  submit(e, "t2", "s0,hang1");
  submit(e, "t4", "fail0");
  cJSON *config = gated_job();
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.task_id = "t3";
  spec.tenant_id = "acme";
  spec.config = config;
  sc_task *gated = NULL;
  assert_int_equal(sc_task_submit(e, &spec, &gated), SC_OK);
  cJSON_Delete(config);
  run_a_while(&loop);
  assert_int_equal(sc_task_approve(gated, "gate", "ann", NULL), SC_OK); /* one of two */
  run_a_while(&loop);
  assert_int_equal(sc_store_close(s), SC_OK);
  sc_engine_free(e);
  assert_int_equal(uv_loop_close(&loop), 0);

  assert_int_equal(sc_jsonl_store_open(path, NULL, &s), SC_OK);
  sc_store_task_query q;
  sc_store_task_query_init(&q);
  q.limit = 3;
  cJSON *page = NULL;
  assert_int_equal(sc_store_tasks(s, &q, &page), SC_OK);
  cJSON *tasks = cJSON_GetObjectItem(page, "tasks");
  assert_int_equal(cJSON_GetArraySize(tasks), 3);
  assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(tasks, 0), "task")->valuestring, "t1");
  assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(tasks, 0), "status")->valuestring,
                      "COMPLETED");
  assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(tasks, 1), "stage")->valuestring,
                      "hang1");
  assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(tasks, 2), "status")->valuestring,
                      "AWAITING_APPROVAL");
  assert_string_equal(cJSON_GetObjectItem(page, "next")->valuestring, "t3");
  q.after = "t3";
  cJSON *second = NULL;
  assert_int_equal(sc_store_tasks(s, &q, &second), SC_OK);
  tasks = cJSON_GetObjectItem(second, "tasks");
  assert_int_equal(cJSON_GetArraySize(tasks), 1);
  cJSON *t4 = cJSON_GetArrayItem(tasks, 0);
  assert_string_equal(cJSON_GetObjectItem(t4, "status")->valuestring, "FAILED");
  assert_non_null(strstr(cJSON_GetObjectItem(t4, "error")->valuestring, "boom"));
  assert_true(cJSON_IsNull(cJSON_GetObjectItem(second, "next")));
  cJSON_Delete(page);
  cJSON_Delete(second);
  sc_store_task_query_init(&q);
  q.status = "unfinished";
  assert_int_equal(sc_store_tasks(s, &q, &page), SC_OK);
  assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(page, "tasks")), 3); /* t2 t3 t4 */
  cJSON_Delete(page);
  sc_store_task_query_init(&q);
  q.tenant_id = "acme";
  assert_int_equal(sc_store_tasks(s, &q, &page), SC_OK);
  assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(page, "tasks")), 1);
  cJSON_Delete(page);

  cJSON *pending = NULL;
  assert_int_equal(sc_store_approvals(s, NULL, &pending), SC_OK);
  assert_int_equal(cJSON_GetArraySize(pending), 1);
  cJSON *a = cJSON_GetArrayItem(pending, 0);
  assert_string_equal(cJSON_GetObjectItem(a, "task")->valuestring, "t3");
  assert_string_equal(cJSON_GetObjectItem(a, "stage")->valuestring, "gate");
  assert_int_equal(cJSON_GetObjectItem(a, "approvals")->valueint, 1);
  assert_int_equal(cJSON_GetObjectItem(a, "approvers_needed")->valueint, 2);
  assert_true(cJSON_IsString(cJSON_GetObjectItem(a, "deadline")));
  cJSON_Delete(pending);
  assert_int_equal(sc_store_approvals(s, "t1", &pending), SC_OK);
  assert_int_equal(cJSON_GetArraySize(pending), 0);
  cJSON_Delete(pending);
  assert_int_equal(sc_store_close(s), SC_OK);
}

/* The ids of a task list as one comma-separated string, in order. */
static void ids_of(const cJSON *list, const char *member_name, char *out, size_t cap) {
  out[0] = '\0';
  const cJSON *it;
  cJSON_ArrayForEach(it, list) {
    const cJSON *id = cJSON_GetObjectItem(it, member_name);
    assert_true(cJSON_IsString(id));
    size_t used = strlen(out);
    snprintf(out + used, cap - used, "%s%s", used ? "," : "", id->valuestring);
  }
}

static int by_string(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* What tasks(unfinished) and approvals say agrees with unfinished (the scan): a task a recovery
 * superseded is no longer unfinished, and its gate no longer pending. */
static void expect_tasks_agree_with_unfinished(const char *path, size_t want,
                                               size_t want_finished) {
  sc_store *s = NULL;
  assert_int_equal(sc_jsonl_store_open(path, NULL, &s), SC_OK);
  sc_unfinished *u = NULL;
  size_t n = 0;
  assert_int_equal(sc_store_unfinished(s, &u, &n), SC_OK);
  assert_int_equal(n, want);
  char *names[16];
  assert_true(n <= 16);
  for (size_t i = 0; i < n; i++)
    names[i] = (char *)u[i].request.recovered_from;
  qsort(names, n, sizeof(*names), by_string);
  char expect[1024] = "";
  for (size_t i = 0; i < n; i++) {
    size_t used = strlen(expect);
    snprintf(expect + used, sizeof(expect) - used, "%s%s", i ? "," : "", names[i]);
  }
  sc_store_task_query q;
  sc_store_task_query_init(&q);
  q.status = "unfinished";
  cJSON *page = NULL;
  assert_int_equal(sc_store_tasks(s, &q, &page), SC_OK);
  char listed[1024];
  ids_of(cJSON_GetObjectItem(page, "tasks"), "task", listed, sizeof(listed));
  assert_string_equal(listed, expect);
  cJSON_Delete(page);
  cJSON *pending = NULL;
  assert_int_equal(sc_store_approvals(s, NULL, &pending), SC_OK);
  const cJSON *a;
  cJSON_ArrayForEach(a, pending) { /* every gate listed belongs to an unfinished task */
    const char *task = cJSON_GetObjectItem(a, "task")->valuestring;
    bool found = false;
    for (size_t i = 0; i < n; i++)
      found = found || strcmp(names[i], task) == 0;
    if (!found) fail_msg("approvals list %s, which is not unfinished", task);
  }
  assert_int_equal(cJSON_GetArraySize(pending), 1); /* the gate of the recovered task */
  cJSON_Delete(pending);
  /* and delete_task agrees too: busy exactly for the unfinished ones */
  assert_int_equal(sc_store_tasks(s, NULL, &page), SC_OK);
  const cJSON *t;
  size_t finished = 0;
  cJSON_ArrayForEach(t, cJSON_GetObjectItem(page, "tasks")) {
    const char *task = cJSON_GetObjectItem(t, "task")->valuestring;
    bool open = false;
    for (size_t i = 0; i < n; i++)
      open = open || strcmp(names[i], task) == 0;
    int rc = sc_store_delete_task(s, task);
    if (rc != (open ? SC_EBUSY : SC_EINVAL))
      fail_msg("delete %s (%s): %d %s", task, open ? "unfinished" : "finished", rc,
               sc_error_message());
    finished += !open;
  }
  assert_int_equal(finished, want_finished);
  cJSON_Delete(page);
  sc_unfinished_free(u, n);
  assert_int_equal(sc_store_close(s), SC_OK);
}

static void superseded_tasks_are_not_listed_as_unfinished(void **state) {
  char path[256];
  temp_path(state, "job.jsonl", path);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e;
  sc_store *s = attached(&loop, &e, path);
  submit(e, "h", "s0,hang1");
  cJSON *config = gated_job();
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.task_id = "g";
  spec.tenant_id = "acme";
  spec.config = config;
  sc_task *gated = NULL;
  assert_int_equal(sc_task_submit(e, &spec, &gated), SC_OK);
  cJSON_Delete(config);
  run_a_while(&loop);
  assert_int_equal(sc_store_close(s), SC_OK);
  sc_engine_free(e);
  run_a_while(&loop);
  /* The next process recovers both: they stop again where they were, under new runs. */
  s = attached(&loop, &e, path);
  sc_unfinished *u = NULL;
  size_t n = 0;
  assert_int_equal(sc_store_unfinished(s, &u, &n), SC_OK);
  assert_int_equal(n, 2);
  for (size_t i = 0; i < n; i++) { /* each under a new id: the old one is superseded */
    char id[64];
    snprintf(id, sizeof(id), "%s-again", u[i].request.recovered_from);
    sc_recovery_request req = u[i].request;
    req.task_id = id;
    if (sc_recover_from_restart(e, &req, NULL) != SC_OK)
      fail_msg("recover %s: %s", u[i].request.recovered_from, sc_error_message());
  }
  sc_unfinished_free(u, n);
  run_a_while(&loop);
  assert_int_equal(sc_store_close(s), SC_OK);
  sc_engine_free(e);
  run_a_while(&loop);
  assert_int_equal(uv_loop_close(&loop), 0);
  expect_tasks_agree_with_unfinished(path, 2, 2); /* g and h are superseded: finished */
  /* the same after compaction, which drops the superseded runs */
  sc_jsonl_compact_report r;
  assert_int_equal(sc_jsonl_compact(path, NULL, &r), SC_OK);
  assert_true(r.compacted);
  expect_tasks_agree_with_unfinished(path, 2, 0);
}

static void events_of_a_log_that_breaks_are_never_delivered(void **state) {
  char path[256];
  temp_path(state, "job.jsonl", path);
  recorder rec;
  write_log(path, &rec);
  recorder_free(&rec);
  /* Change one byte of a line in the middle: every call fails, and none calls back first. */
  size_t len;
  char *text = slurp(path, &len);
  size_t lines = 0, at = 0;
  for (size_t i = 0; i < len; i++)
    if (text[i] == '\n' && ++lines == 12) at = i + 1;
  assert_true(lines > 20 && at > 0);
  char *seq = strstr(text + at, "\"seq\":");
  assert_non_null(seq);
  seq[6] = seq[6] == '9' ? '8' : '9';
  spit(path, text, len);
  free(text);
  sc_store *s = NULL;
  assert_int_equal(sc_jsonl_store_open(path, NULL, &s), SC_OK);
  seen w = {0};
  assert_int_equal(sc_store_events(s, NULL, 1, note_event, &w), SC_ECORRUPT);
  assert_int_equal(w.n, 0);
  assert_int_equal(sc_store_events(s, "job", 1, note_event, &w), SC_ECORRUPT);
  assert_int_equal(w.n, 0);
  assert_int_equal(sc_store_close(s), SC_OK);
}

static void a_null_out_is_refused(void **state) {
  char path[256];
  temp_path(state, "job.jsonl", path);
  recorder rec;
  write_log(path, &rec);
  recorder_free(&rec);
  sc_store *s = NULL;
  assert_int_equal(sc_jsonl_store_open(path, NULL, &s), SC_OK);
  assert_int_equal(sc_store_tasks(s, NULL, NULL), SC_EINVAL);
  assert_int_equal(sc_store_approvals(s, NULL, NULL), SC_EINVAL);
  assert_int_equal(sc_store_checkpoints(s, "job", NULL), SC_EINVAL);
  assert_int_equal(sc_store_latest(s, "job", NULL), SC_EINVAL);
  assert_int_equal(sc_store_checkpoint(s, "job/3", NULL), SC_EINVAL);
  assert_int_equal(sc_store_close(s), SC_OK);
}

#define T(name) cmocka_unit_test_setup_teardown(name, make_temp_dir, remove_temp_dir)

int main(void) {
  const struct CMUnitTest tests[] = {
      T(attach_writes_the_log_and_unfinished_reads_it),
      T(checkpoints_are_listed_in_order_without_context),
      T(latest_and_by_id_carry_the_context_the_engine_had),
      T(a_changed_checkpoint_is_reported_corrupt_never_returned),
      T(events_are_given_from_a_seq_in_order),
      T(delete_is_left_to_compaction_and_says_so),
      T(a_missing_log_has_no_tasks),
      T(a_compacted_log_answers_the_same_for_an_unfinished_task),
      T(a_reused_id_answers_for_its_latest_run),
      T(tasks_are_paged_by_id_and_approvals_pending_listed),
      T(superseded_tasks_are_not_listed_as_unfinished),
      T(events_of_a_log_that_breaks_are_never_delivered),
      T(a_null_out_is_refused),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
