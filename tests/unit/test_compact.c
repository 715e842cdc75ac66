/* Log compaction: what a compacted log holds, that recovery from it equals recovery from the
 * original, the link to the old chain, the lock, a kill at every step and failed writes. */
#define _GNU_SOURCE /* memmem */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include <stagecoach/jsonl.h>
#include <stagecoach/stagecoach.h>

#include "harness.h"

#define LOGFIX_DIR_PREFIX "/tmp/sc-compact"
#include "logfix.h"

/* A log with every kind of record compaction must tell apart:
 *   done     completes (finished);
 *   long     stops in hang9 after nine stages with outputs (snapshots and folds), then is
 *            recovered and stops in hang9 again (the first run is superseded);
 *   broken   fails in fail2 (FAILED: unfinished) and is recovered, failing again;
 *   stopped  is cancelled (finished);
 *   again    completes, then runs again under the same id and stops in hang3 (a replaced run);
 *   early    stops in hang0 before any stage completed. */
static void write_mixed_log(const char *path) {
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = new_engine(&loop);
  sc_jsonl *log = open_log(e, path);
  submit(e, "done", "s0,s1,s2");
  submit(e, "long", "s0,s1,s2,s3,s4,s5,s6,s7,s8,hang9,s10");
  submit(e, "broken", "s0,s1,fail2,s3");
  sc_task *stopped = submit(e, "stopped", "s0,hang1,s2");
  submit(e, "again", "s0,s1");
  submit(e, "early", "hang0,s1");
  run_a_while(&loop);
  assert_int_equal(sc_task_cancel(stopped, "operator"), SC_OK);
  run_a_while(&loop);
  submit(e, "again", "s0,s1,s2,hang3");
  run_a_while(&loop);
  assert_int_equal(sc_jsonl_close(log), SC_OK);
  sc_engine_free(e);
  run_a_while(&loop);
  /* The next process recovers long and broken: both stop again. */
  e = new_engine(&loop);
  log = open_log(e, path);
  sc_unfinished *u = NULL;
  size_t n = 0;
  assert_int_equal(sc_jsonl_unfinished(log, &u, &n), SC_OK);
  for (size_t i = 0; i < n; i++)
    if (strcmp(u[i].request.recovered_from, "long") == 0 ||
        strcmp(u[i].request.recovered_from, "broken") == 0)
      if (sc_recover_from_restart(e, &u[i].request, NULL) != SC_OK)
        fail_msg("recover %s: %s", u[i].request.recovered_from, sc_error_message());
  sc_unfinished_free(u, n);
  run_a_while(&loop);
  assert_int_equal(sc_jsonl_close(log), SC_OK);
  sc_engine_free(e);
  run_a_while(&loop);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void expect_same_string(const char *a, const char *b, const char *what, size_t i) {
  if ((a == NULL) != (b == NULL) || (a && strcmp(a, b) != 0))
    fail_msg("entry %zu: %s differs: '%s' and '%s'", i, what, a ? a : "(null)", b ? b : "(null)");
}

static void expect_same_json(const cJSON *a, const cJSON *b, const char *what, size_t i) {
  if ((a == NULL) != (b == NULL) || (a && !cJSON_Compare(a, b, true)))
    fail_msg("entry %zu: %s differs", i, what);
}

/* The two scans return the same entries, field by field, in the same order. */
static void expect_same_unfinished(const char *original, const char *compacted) {
  sc_unfinished *a = NULL, *b = NULL;
  size_t na = 0, nb = 0;
  assert_int_equal(sc_jsonl_scan(original, &a, &na, NULL), SC_OK);
  if (sc_jsonl_scan(compacted, &b, &nb, NULL) != SC_OK)
    fail_msg("scan of the compacted log: %s", sc_error_message());
  assert_int_equal(na, nb);
  for (size_t i = 0; i < na; i++) {
    const sc_recovery_request *x = &a[i].request, *y = &b[i].request;
    assert_int_equal(a[i].status, b[i].status);
    expect_same_string(x->recovered_from, y->recovered_from, "recovered_from", i);
    expect_same_string(x->tenant_id, y->tenant_id, "tenant", i);
    expect_same_string(x->plan_id, y->plan_id, "plan", i);
    expect_same_string(x->last_completed_stage, y->last_completed_stage, "last stage", i);
    expect_same_string(x->context_digest, y->context_digest, "digest", i);
    expect_same_string(x->plan_fingerprint, y->plan_fingerprint, "fingerprint", i);
    expect_same_string(x->traceparent, y->traceparent, "traceparent", i);
    expect_same_string(x->tracestate, y->tracestate, "tracestate", i);
    expect_same_string(x->root_task_id, y->root_task_id, "root", i);
    expect_same_json(x->context, y->context, "context", i);
    expect_same_json(x->config, y->config, "config", i);
    expect_same_json(x->previous_config, y->previous_config, "previous config", i);
    assert_int_equal(x->mode, y->mode);
    assert_int_equal(x->epoch, y->epoch);
    assert_int_equal(x->intent, y->intent);
  }
  sc_unfinished_free(a, na);
  sc_unfinished_free(b, nb);
}

static int count_task(const char *json, size_t len, void *udata) {
  struct {
    const char *needle;
    size_t n;
  } *c = udata;
  if (memmem(json, len, c->needle, strlen(c->needle)) != NULL) c->n++;
  return 0;
}

/* Lines of the log that name the task (its "taskid"). */
static size_t lines_of(const char *path, const char *task) {
  char needle[128];
  snprintf(needle, sizeof(needle), "\"taskid\":\"%s\"", task);
  struct {
    const char *needle;
    size_t n;
  } c = {needle, 0};
  assert_int_equal(sc_jsonl_read_events(path, count_task, &c), SC_OK);
  return c.n;
}

static void copy_file(const char *from, const char *to) {
  size_t len;
  char *data = slurp(from, &len);
  assert_non_null(data);
  spit(to, data, len);
  free(data);
}

/* ---- what a compacted log holds ---- */

static void compaction_keeps_what_recovery_needs_and_links_the_old_chain(void **state) {
  char path[256], orig[256], archive[256];
  temp_path(state, "job.jsonl", path);
  temp_path(state, "orig.jsonl", orig);
  temp_path(state, "old.jsonl", archive);
  write_mixed_log(path);
  copy_file(path, orig);
  sc_jsonl_report before;
  assert_int_equal(sc_jsonl_verify(path, &before), SC_OK);

  sc_jsonl_compact_options o;
  sc_jsonl_compact_options_init(&o);
  o.archive = archive;
  sc_jsonl_compact_report r;
  if (sc_jsonl_compact(path, &o, &r) != SC_OK) fail_msg("compact: %s", sc_error_message());
  assert_true(r.compacted);
  assert_int_equal(r.lines_before, before.lines);
  assert_true(r.lines_after < r.lines_before);
  /* long, broken (their recovered runs), again and early are unfinished; done, stopped, the
   * superseded first runs and the first run of again are finished and dropped. */
  assert_int_equal(r.unfinished, 4);
  assert_int_equal(r.kept_finished, 0);
  assert_int_equal(r.dropped, 5);

  sc_jsonl_report after;
  assert_int_equal(sc_jsonl_verify(path, &after), SC_OK);
  assert_int_equal(after.lines, r.lines_after);
  assert_int_equal(after.bytes, r.bytes_after);
  expect_same_unfinished(orig, path);
  assert_int_equal(lines_of(path, "done"), 0);
  assert_int_equal(lines_of(path, "stopped"), 0);
  /* The first task.created of "again" stays to keep the task's place in the scan's order. */
  assert_true(lines_of(path, "again") < lines_of(orig, "again"));
  /* long's lines up to its last snapshot are gone: it held nine stages of 3 KB outputs. */
  assert_true(lines_of(path, "long") < lines_of(orig, "long"));

  /* The archive is the old log itself, and the new chain names its end. */
  size_t alen, olen;
  char *a = slurp(archive, &alen), *b = slurp(orig, &olen);
  assert_int_equal(alen, olen);
  assert_memory_equal(a, b, alen);
  free(a);
  free(b);
  assert_int_equal(sc_jsonl_verify_link(path, archive), SC_OK);
  char head[300];
  snprintf(head, sizeof(head), "\"previous_chain\":\"%s\"", r.previous_chain);
  char *text = slurp(path, &alen);
  char *nl = strchr(text, '\n');
  assert_non_null(nl);
  assert_non_null(memmem(text, (size_t)(nl - text), head, strlen(head)));
  assert_non_null(strstr(text, "\"type\":\"stagecoach.log.compacted\""));
  free(text);
}

static void compacting_twice_changes_nothing_the_second_time(void **state) {
  char path[256], orig[256];
  temp_path(state, "job.jsonl", path);
  temp_path(state, "orig.jsonl", orig);
  write_mixed_log(path);
  copy_file(path, orig);
  sc_jsonl_compact_report r;
  assert_int_equal(sc_jsonl_compact(path, NULL, &r), SC_OK);
  assert_true(r.compacted);
  size_t len1, len2;
  char *first = slurp(path, &len1);
  assert_int_equal(sc_jsonl_compact(path, NULL, &r), SC_OK);
  assert_false(r.compacted);
  char *second = slurp(path, &len2);
  assert_int_equal(len1, len2);
  assert_memory_equal(first, second, len1);
  free(first);
  free(second);
  expect_same_unfinished(orig, path);
}

static void finished_tasks_younger_than_the_limit_are_kept_whole(void **state) {
  char path[256], orig[256];
  temp_path(state, "job.jsonl", path);
  temp_path(state, "orig.jsonl", orig);
  write_mixed_log(path);
  copy_file(path, orig);
  sc_jsonl_compact_options o;
  sc_jsonl_compact_options_init(&o);
  o.keep_finished_s = 3600;
  sc_jsonl_compact_report r;
  assert_int_equal(sc_jsonl_compact(path, &o, &r), SC_OK);
  assert_int_equal(r.kept_finished, 5);
  assert_int_equal(r.dropped, 0);
  assert_int_equal(lines_of(path, "done"), lines_of(orig, "done"));
  assert_int_equal(lines_of(path, "stopped"), lines_of(orig, "stopped"));
  expect_same_unfinished(orig, path);
  /* An hour later they are old: a second compaction drops them, and recovery stays the same. */
  o.now_s = (int64_t)time(NULL) + 3601;
  assert_int_equal(sc_jsonl_compact(path, &o, &r), SC_OK);
  assert_true(r.compacted);
  assert_int_equal(r.kept_finished, 0);
  assert_int_equal(r.dropped, 5);
  assert_int_equal(lines_of(path, "done"), 0);
  expect_same_unfinished(orig, path);
  assert_int_equal(sc_jsonl_verify(path, NULL), SC_OK);
}

static void a_writer_continues_the_compacted_log(void **state) {
  char path[256];
  temp_path(state, "job.jsonl", path);
  write_mixed_log(path);
  assert_int_equal(sc_jsonl_compact(path, NULL, NULL), SC_OK);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = new_engine(&loop);
  sc_jsonl *log = open_log(e, path);
  submit(e, "later", "s0,s1");
  run_a_while(&loop);
  assert_int_equal(sc_jsonl_close(log), SC_OK);
  sc_engine_free(e);
  assert_int_equal(uv_loop_close(&loop), 0);
  assert_int_equal(sc_jsonl_verify(path, NULL), SC_OK);
  assert_true(lines_of(path, "later") > 0);
}

/* ---- the lock ---- */

static void a_running_writer_makes_compaction_refuse_with_its_pid(void **state) {
  char path[256];
  temp_path(state, "job.jsonl", path);
  write_mixed_log(path);
  size_t len1, len2;
  char *before = slurp(path, &len1);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = new_engine(&loop);
  sc_jsonl *log = open_log(e, path);
  assert_int_equal(sc_jsonl_compact(path, NULL, NULL), SC_EBUSY);
  char pid[32];
  snprintf(pid, sizeof(pid), "pid %ld", (long)getpid());
  assert_non_null(strstr(sc_error_message(), pid));
  assert_int_equal(sc_jsonl_close(log), SC_OK);
  sc_engine_free(e);
  assert_int_equal(uv_loop_close(&loop), 0);
  char *after = slurp(path, &len2);
  assert_int_equal(len1, len2);
  assert_memory_equal(before, after, len1);
  free(before);
  free(after);
}

typedef struct writer_probe {
  const char *path;
  char steps[256];
  int refused; /* steps at which a writer was refused */
  int opened;  /* steps at which it got in */
} writer_probe;

/* At every step a writer tries to start: it must be refused until the compaction ends. */
static void try_a_writer(const char *step, void *udata) {
  writer_probe *p = udata;
  size_t off = strlen(p->steps);
  snprintf(p->steps + off, sizeof(p->steps) - off, "%s%s", off ? "," : "", step);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = new_engine(&loop);
  sc_jsonl *j = NULL;
  int rc = sc_jsonl_open(e, p->path, NULL, &j);
  if (rc == SC_EBUSY)
    p->refused++;
  else
    p->opened++;
  sc_jsonl_close(j);
  sc_engine_free(e);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void no_writer_starts_while_a_compaction_runs(void **state) {
  char path[256], archive[256];
  temp_path(state, "job.jsonl", path);
  temp_path(state, "old.jsonl", archive);
  write_mixed_log(path);
  writer_probe p = {.path = path};
  sc_jsonl_compact_options o;
  sc_jsonl_compact_options_init(&o);
  o.archive = archive;
  o.step = try_a_writer;
  o.step_udata = &p;
  assert_int_equal(sc_jsonl_compact(path, &o, NULL), SC_OK);
  assert_string_equal(p.steps, "locked,archived,written,synced,renamed,done");
  assert_int_equal(p.refused, 6);
  assert_int_equal(p.opened, 0);
}

/* ---- a crash at every step ---- */

static const char *const steps[] = {"locked", "archived", "written", "synced", "renamed", "done"};

static void kill_here(const char *step, void *udata) {
  if (strcmp(step, udata) == 0) raise(SIGKILL);
}

static void a_kill_at_any_step_leaves_the_old_log_or_the_new_one(void **state) {
  char path[256], orig[256], archive[256];
  temp_path(state, "job.jsonl", path);
  temp_path(state, "orig.jsonl", orig);
  temp_path(state, "old.jsonl", archive);
  write_mixed_log(path);
  copy_file(path, orig);
  size_t olen;
  char *old = slurp(orig, &olen);
  for (size_t s = 0; s < sizeof(steps) / sizeof(steps[0]); s++) {
    copy_file(orig, path);
    unlink(archive);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
      sc_jsonl_compact_options o;
      sc_jsonl_compact_options_init(&o);
      o.archive = archive;
      o.step = kill_here;
      o.step_udata = (void *)steps[s];
      sc_jsonl_compact(path, &o, NULL);
      _exit(0);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    /* The log is the old one, byte for byte, or a whole compacted one; recovery is the same. */
    size_t len;
    char *now = slurp(path, &len);
    assert_non_null(now);
    bool is_old = len == olen && memcmp(now, old, len) == 0;
    bool is_new = strncmp(now, "{\"specversion\":\"1.0\",\"id\":\"log.compacted/", 41) == 0;
    if (!is_old && !is_new) fail_msg("after a kill at '%s' the log is neither", steps[s]);
    if (s < 4) assert_true(is_old); /* before the rename */
    if (s >= 4) assert_true(is_new);
    free(now);
    assert_int_equal(sc_jsonl_verify(path, NULL), SC_OK);
    expect_same_unfinished(orig, path);
    if (s >= 1) { /* the archive, once made, is the old log */
      char *a = slurp(archive, &len);
      assert_non_null(a);
      assert_int_equal(len, olen);
      assert_memory_equal(a, old, len);
      free(a);
    }
    /* What the crash left is no obstacle: the next compaction finishes the job. */
    unlink(archive);
    sc_jsonl_compact_report r;
    if (sc_jsonl_compact(path, NULL, &r) != SC_OK) fail_msg("compact: %s", sc_error_message());
    assert_true(r.compacted == !is_new);
    expect_same_unfinished(orig, path);
    char tmp[300];
    snprintf(tmp, sizeof(tmp), "%s.compacting", path);
    assert_int_equal(access(tmp, F_OK), -1);
  }
  free(old);
}

/* ---- failures leave the old log ---- */

static void a_failed_write_leaves_the_old_log_and_no_new_file(void **state) {
  char path[256], orig[256], archive[256], tmp[300];
  temp_path(state, "job.jsonl", path);
  temp_path(state, "orig.jsonl", orig);
  temp_path(state, "old.jsonl", archive);
  snprintf(tmp, sizeof(tmp), "%s.compacting", path);
  write_mixed_log(path);
  copy_file(path, orig);
  size_t olen, len;
  char *old = slurp(orig, &olen);
  /* A file size limit of a few KB makes the new log's writes fail (EFBIG), as a full disk does. */
  struct rlimit saved, l;
  signal(SIGXFSZ, SIG_IGN);
  assert_int_equal(getrlimit(RLIMIT_FSIZE, &saved), 0);
  l = saved;
  l.rlim_cur = 4096;
  assert_int_equal(setrlimit(RLIMIT_FSIZE, &l), 0);
  sc_jsonl_compact_options o;
  sc_jsonl_compact_options_init(&o);
  o.archive = archive;
  int rc = sc_jsonl_compact(path, &o, NULL);
  assert_int_equal(setrlimit(RLIMIT_FSIZE, &saved), 0);
  assert_int_equal(rc, SC_EIO);
  assert_non_null(strstr(sc_error_message(), "write"));
  char *now = slurp(path, &len);
  assert_int_equal(len, olen);
  assert_memory_equal(now, old, len);
  free(now);
  free(old);
  assert_int_equal(access(tmp, F_OK), -1);
  assert_int_equal(access(archive, F_OK), -1); /* no second name is left either */
}

static void an_archive_that_exists_is_refused_with_nothing_changed(void **state) {
  char path[256], archive[256];
  temp_path(state, "job.jsonl", path);
  temp_path(state, "old.jsonl", archive);
  write_mixed_log(path);
  spit(archive, "mine\n", 5);
  size_t len1, len2;
  char *before = slurp(path, &len1);
  sc_jsonl_compact_options o;
  sc_jsonl_compact_options_init(&o);
  o.archive = archive;
  assert_int_equal(sc_jsonl_compact(path, &o, NULL), SC_EINVAL);
  char *after = slurp(path, &len2);
  assert_int_equal(len1, len2);
  assert_memory_equal(before, after, len1);
  free(before);
  free(after);
  char *mine = slurp(archive, &len1);
  assert_string_equal(mine, "mine\n");
  free(mine);
  o.archive = path;
  assert_int_equal(sc_jsonl_compact(path, &o, NULL), SC_EINVAL);
}

/* ---- only a log is compacted ---- */

static void expect_refused_and_unchanged(const char *path, int code) {
  size_t len1, len2;
  char *before = slurp(path, &len1);
  sc_jsonl_compact_report r;
  int rc = sc_jsonl_compact(path, NULL, &r);
  if (rc != code) fail_msg("compact %s: %d (%s), wanted %d", path, rc, sc_error_message(), code);
  assert_false(r.compacted);
  char *after = slurp(path, &len2);
  assert_int_equal(len1, len2);
  assert_memory_equal(before, after, len1);
  free(before);
  free(after);
}

static void a_file_that_is_not_a_log_is_refused_and_left_alone(void **state) {
  char path[256];
  temp_path(state, "p.json", path);
  const char pipeline[] = "{\"config\":{\"stages\":[{\"name\":\"a\",\"kind\":\"sleep\"}]}}\n";
  spit(path, pipeline, sizeof(pipeline) - 1);
  expect_refused_and_unchanged(path, SC_EPARSE);
  const char notes[] = "buy milk\ncall home";
  spit(path, notes, sizeof(notes) - 1);
  expect_refused_and_unchanged(path, SC_EPARSE);
  spit(path, "", 0); /* an empty log: nothing to do */
  expect_refused_and_unchanged(path, SC_OK);
  temp_path(state, "missing.jsonl", path);
  assert_int_equal(sc_jsonl_compact(path, NULL, NULL), SC_ENOTFOUND);
  assert_int_equal(access(path, F_OK), -1);
  temp_path(state, "fifo", path);
  assert_int_equal(mkfifo(path, 0600), 0);
  assert_int_equal(sc_jsonl_compact(path, NULL, NULL), SC_EPARSE);
  unlink(path);
}

static void a_log_whose_chain_breaks_is_refused_and_left_alone(void **state) {
  char path[256];
  temp_path(state, "job.jsonl", path);
  write_mixed_log(path);
  size_t len;
  char *text = slurp(path, &len);
  char *hit = strstr(text, "\"s1\":\"");
  assert_non_null(hit);
  hit[6] = hit[6] == 'b' ? 'c' : 'b'; /* one byte of an output */
  spit(path, text, len);
  free(text);
  expect_refused_and_unchanged(path, SC_ECORRUPT);
  /* The message says where the chain breaks and that nothing was compacted. */
  assert_non_null(strstr(sc_error_message(), "does not match the chain"));
  assert_non_null(strstr(sc_error_message(), "not compacted"));
}

static void a_torn_tail_is_dropped_by_compaction(void **state) {
  char path[256], orig[256];
  temp_path(state, "job.jsonl", path);
  temp_path(state, "orig.jsonl", orig);
  write_mixed_log(path);
  copy_file(path, orig);
  FILE *f = fopen(path, "ab");
  assert_non_null(f);
  fputs("{\"specversion\":\"1.0\",\"id\":\"long/9", f);
  fclose(f);
  sc_jsonl_compact_report r;
  assert_int_equal(sc_jsonl_compact(path, NULL, &r), SC_OK);
  assert_true(r.torn_tail_dropped);
  sc_jsonl_report v;
  assert_int_equal(sc_jsonl_verify(path, &v), SC_OK);
  assert_false(v.torn_tail);
  expect_same_unfinished(orig, path);
}

/* ---- the link ---- */

static void verify_link_refuses_another_archive_and_a_malformed_link(void **state) {
  char path[256], archive[256], other[256];
  temp_path(state, "job.jsonl", path);
  temp_path(state, "old.jsonl", archive);
  temp_path(state, "other.jsonl", other);
  write_mixed_log(path);
  copy_file(path, other);
  sc_jsonl_compact_options o;
  sc_jsonl_compact_options_init(&o);
  o.archive = archive;
  assert_int_equal(sc_jsonl_compact(path, &o, NULL), SC_OK);
  /* other is the old log with one more task: not the log it was compacted from. */
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = new_engine(&loop);
  sc_jsonl *log = open_log(e, other);
  submit(e, "extra", "s0");
  run_a_while(&loop);
  assert_int_equal(sc_jsonl_close(log), SC_OK);
  sc_engine_free(e);
  assert_int_equal(uv_loop_close(&loop), 0);
  assert_int_equal(sc_jsonl_verify_link(path, other), SC_ECORRUPT);
  assert_int_equal(sc_jsonl_verify_link(archive, path), SC_EINVAL); /* not a compacted log */
  assert_int_equal(sc_jsonl_verify_link(path, archive), SC_OK);

  /* A compacted line whose previous_chain is not a chain value: verify names line 1. */
  size_t len;
  char *text = slurp(path, &len);
  char *pc = strstr(text, "\"previous_chain\":\"");
  assert_non_null(pc);
  memcpy(pc + 18, "XYZ", 3);
  /* The chain of the changed line is recomputed, so only the link itself is wrong. */
  char *nl = strchr(text, '\n');
  size_t line_len = (size_t)(nl - text);
  size_t event_len = line_len - 76;
  char *event = malloc(event_len + 2);
  memcpy(event, text, event_len);
  event[event_len] = '}';
  event[event_len + 1] = '\0';
  unsigned char raw[32];
  unsigned int n = 0;
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  char zeros[64];
  memset(zeros, '0', 64);
  EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
  EVP_DigestUpdate(ctx, zeros, 64);
  EVP_DigestUpdate(ctx, event, event_len + 1);
  EVP_DigestFinal_ex(ctx, raw, &n);
  EVP_MD_CTX_free(ctx);
  free(event);
  char hex[65];
  for (int i = 0; i < 32; i++)
    snprintf(hex + 2 * i, 3, "%02x", raw[i]);
  /* Only the first line: the rest of the chain then breaks at line 2, after the link. */
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  fwrite(text, 1, event_len, f);
  fprintf(f, ",\"chain\":\"%s\"}\n", hex);
  fclose(f);
  free(text);
  sc_jsonl_report r;
  assert_int_equal(sc_jsonl_verify(path, &r), SC_ECORRUPT);
  assert_int_equal(r.first_bad_line, 1);
  assert_non_null(strstr(sc_error_message(), "previous_chain"));
}

static void a_log_behind_a_link_is_compacted_where_it_is_with_its_mode(void **state) {
  char path[256], link_path[256], orig[256];
  temp_path(state, "real.jsonl", path);
  temp_path(state, "link.jsonl", link_path);
  temp_path(state, "orig.jsonl", orig);
  write_mixed_log(path);
  copy_file(path, orig);
  assert_int_equal(chmod(path, 0640), 0);
  assert_int_equal(symlink("real.jsonl", link_path), 0);
  sc_jsonl_compact_report r;
  assert_int_equal(sc_jsonl_compact(link_path, NULL, &r), SC_OK);
  assert_true(r.compacted);
  struct stat st;
  assert_int_equal(lstat(link_path, &st), 0);
  assert_true(S_ISLNK(st.st_mode)); /* still a link, to the compacted log */
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0640);
  expect_same_unfinished(orig, link_path);
  unlink(link_path);
}

/* ---- the rule follows the scan on any log: lines taken away at random ---- */

/* Writes the given lines of text (a log) as a new chain. */
static void write_rechained(const char *path, char **lines, const size_t *lens, size_t n) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  char prev[65];
  memset(prev, '0', 64);
  prev[64] = '\0';
  for (size_t i = 0; i < n; i++) {
    size_t event_len = lens[i] - 76;
    char *event = malloc(event_len + 1);
    assert_non_null(event);
    memcpy(event, lines[i], event_len);
    event[event_len] = '}';
    unsigned char raw[32];
    unsigned int len = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    EVP_DigestUpdate(ctx, prev, 64);
    EVP_DigestUpdate(ctx, event, event_len + 1);
    EVP_DigestFinal_ex(ctx, raw, &len);
    EVP_MD_CTX_free(ctx);
    for (int k = 0; k < 32; k++)
      snprintf(prev + 2 * k, 3, "%02x", raw[k]);
    fwrite(event, 1, event_len, f);
    fprintf(f, ",\"chain\":\"%s\"}\n", prev);
    free(event);
  }
  fclose(f);
}

static void
recovery_from_a_compacted_log_equals_the_original_whatever_lines_it_lacks(void **state) {
  char path[256], orig[256], work[256];
  temp_path(state, "job.jsonl", path);
  temp_path(state, "orig.jsonl", orig);
  temp_path(state, "work.jsonl", work);
  write_mixed_log(path);
  size_t len;
  char *text = slurp(path, &len);
  char *lines[4096];
  size_t lens[4096], n = 0;
  for (char *p = text, *nl; (nl = strchr(p, '\n')) != NULL && n < 4096; p = nl + 1) {
    lines[n] = p;
    lens[n++] = (size_t)(nl - p);
  }
  char *kept[4096];
  size_t kept_lens[4096];
  uint64_t seed = 0x9e3779b97f4a7c15ull;
  int compared = 0;
  for (int variant = 0; variant < 150; variant++) {
    /* Each line goes with a chance of 1 in 2 to 1 in 40, so some variants lack a task.created,
     * a snapshot, a terminal event or a recovery, and others lack little. */
    unsigned every = 2 + (unsigned)variant % 39;
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
      seed = seed * 6364136223846793005ull + 1442695040888963407ull;
      if ((seed >> 33) % every != 0) {
        kept[m] = lines[i];
        kept_lens[m++] = lens[i];
      }
    }
    write_rechained(orig, kept, kept_lens, m);
    copy_file(orig, work);
    sc_unfinished *u = NULL;
    size_t un = 0;
    int scan_rc = sc_jsonl_scan(orig, &u, &un, NULL);
    sc_unfinished_free(u, un);
    int rc = sc_jsonl_compact(work, NULL, NULL);
    if (rc != SC_OK) fail_msg("variant %d: compact: %s", variant, sc_error_message());
    assert_int_equal(sc_jsonl_verify(work, NULL), SC_OK);
    if (scan_rc != SC_OK) { /* a fold that no longer matches: the compacted log says the same */
      assert_int_equal(sc_jsonl_scan(work, &u, &un, NULL), scan_rc);
      continue;
    }
    expect_same_unfinished(orig, work);
    /* and a second compaction changes nothing */
    sc_jsonl_compact_report r;
    assert_int_equal(sc_jsonl_compact(work, NULL, &r), SC_OK);
    assert_false(r.compacted);
    compared++;
  }
  assert_true(compared > 50);
  free(text);
}

/* ---- nothing is written through a name that is not ours ---- */

/* The log is what it was, byte for byte, and still a regular file (no link put in its place). */
static void expect_log_unchanged(const char *path, const char *before, size_t blen) {
  size_t len;
  char *now = slurp(path, &len);
  assert_non_null(now);
  assert_int_equal(len, blen);
  assert_memory_equal(now, before, len);
  free(now);
  struct stat st;
  assert_int_equal(lstat(path, &st), 0);
  assert_true(S_ISREG(st.st_mode));
  assert_int_equal(sc_jsonl_verify(path, NULL), SC_OK);
}

/* A compaction in a child, so that a crash (SIGBUS) is a failed assertion, not the end of the
 * test program: its exit status is the call's result, negated. */
static int compact_in_child(const char *path, const sc_jsonl_compact_options *o) {
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) { /* the harness's handlers would go on with the tests in the child */
    signal(SIGBUS, SIG_DFL);
    signal(SIGSEGV, SIG_DFL);
    _exit(-sc_jsonl_compact(path, o, NULL) & 0xff);
  }
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  if (!WIFEXITED(status)) fail_msg("compaction died of signal %d", WTERMSIG(status));
  return -WEXITSTATUS(status);
}

static void an_archive_that_is_the_log_or_the_new_logs_name_is_refused(void **state) {
  char path[256], tmp[300], other[256], dotted[300];
  temp_path(state, "job.jsonl", path);
  snprintf(tmp, sizeof(tmp), "%s.compacting", path);
  snprintf(dotted, sizeof(dotted), "%s/./job.jsonl", ((fixture *)*state)->dir);
  temp_path(state, "second-name.jsonl", other);
  write_mixed_log(path);
  size_t blen;
  char *before = slurp(path, &blen);
  sc_jsonl_compact_options o;
  sc_jsonl_compact_options_init(&o);
  /* the name the new log is written under: it would become a second name of the old log */
  o.archive = tmp;
  assert_int_equal(compact_in_child(path, &o), SC_EINVAL);
  expect_log_unchanged(path, before, blen);
  assert_int_equal(access(tmp, F_OK), -1);
  /* the log under another spelling of its name */
  o.archive = dotted;
  assert_int_equal(compact_in_child(path, &o), SC_EINVAL);
  expect_log_unchanged(path, before, blen);
  /* a second name of the log (what a kill right after archiving leaves) */
  assert_int_equal(link(path, other), 0);
  o.archive = other;
  assert_int_equal(sc_jsonl_compact(path, &o, NULL), SC_EINVAL);
  assert_non_null(strstr(sc_error_message(), "the log itself"));
  expect_log_unchanged(path, before, blen);
  assert_int_equal(unlink(other), 0);
  /* and with a proper name it goes */
  o.archive = other;
  sc_jsonl_compact_report r;
  assert_int_equal(sc_jsonl_compact(path, &o, &r), SC_OK);
  assert_true(r.compacted);
  assert_int_equal(sc_jsonl_verify_link(path, other), SC_OK);
  free(before);
}

static void a_file_planted_at_the_temporary_name_is_never_written_through(void **state) {
  char path[256], tmp[300], victim[256];
  temp_path(state, "job.jsonl", path);
  temp_path(state, "victim.txt", victim);
  snprintf(tmp, sizeof(tmp), "%s.compacting", path);
  write_mixed_log(path);
  size_t blen, len;
  char *before = slurp(path, &blen);
  /* a link to someone's file */
  spit(victim, "precious\n", 9);
  assert_int_equal(symlink(victim, tmp), 0);
  assert_int_equal(compact_in_child(path, NULL), SC_EINVAL);
  expect_log_unchanged(path, before, blen);
  char *v = slurp(victim, &len);
  assert_string_equal(v, "precious\n");
  free(v);
  struct stat st;
  assert_int_equal(lstat(tmp, &st), 0);
  assert_true(S_ISLNK(st.st_mode)); /* left alone */
  assert_int_equal(unlink(tmp), 0);
  /* a link to the log itself: truncating it would cut the log being read */
  assert_int_equal(symlink(path, tmp), 0);
  assert_int_equal(compact_in_child(path, NULL), SC_EINVAL);
  expect_log_unchanged(path, before, blen);
  assert_int_equal(unlink(tmp), 0);
  /* a second (hard) name of the log */
  assert_int_equal(link(path, tmp), 0);
  assert_int_equal(compact_in_child(path, NULL), SC_EINVAL);
  expect_log_unchanged(path, before, blen);
  assert_int_equal(unlink(tmp), 0);
  /* a file of someone's that happens to have the name */
  spit(tmp, "precious\n", 9);
  assert_int_equal(sc_jsonl_compact(path, NULL, NULL), SC_EINVAL);
  assert_non_null(strstr(sc_error_message(), "not what a compaction left"));
  expect_log_unchanged(path, before, blen);
  v = slurp(tmp, &len);
  assert_string_equal(v, "precious\n");
  free(v);
  /* what a compaction of ours left is replaced: empty, or begun with a compacted line */
  spit(tmp, "", 0);
  sc_jsonl_compact_report r;
  assert_int_equal(sc_jsonl_compact(path, NULL, &r), SC_OK);
  assert_true(r.compacted);
  assert_int_equal(access(tmp, F_OK), -1);
  spit(path, before, blen);
  const char ours[] = "{\"specversion\":\"1.0\",\"id\":\"log.compacted/0123\",\"sour";
  spit(tmp, ours, sizeof(ours) - 1);
  assert_int_equal(sc_jsonl_compact(path, NULL, &r), SC_OK);
  assert_true(r.compacted);
  assert_int_equal(access(tmp, F_OK), -1);
  free(before);
}

static void cut_the_log(const char *step, void *udata) {
  if (strcmp(step, "archived") == 0) assert_int_equal(truncate(udata, 0), 0);
}

static void a_log_cut_by_another_process_mid_way_is_no_crash(void **state) {
  char path[256], archive[256];
  temp_path(state, "job.jsonl", path);
  temp_path(state, "old.jsonl", archive);
  write_mixed_log(path);
  char orig[256];
  temp_path(state, "orig.jsonl", orig);
  copy_file(path, orig);
  sc_jsonl_compact_options o;
  sc_jsonl_compact_options_init(&o);
  o.archive = archive;
  o.step = cut_the_log;
  o.step_udata = path;
  /* The compaction read the log before: it writes the new one from what it read. */
  assert_int_equal(compact_in_child(path, &o), SC_OK);
  assert_int_equal(sc_jsonl_verify(path, NULL), SC_OK);
  expect_same_unfinished(orig, path);
}

static void what_is_not_a_regular_file_is_not_a_log(void **state) {
  char path[256];
  temp_path(state, "adir", path);
  assert_int_equal(mkdir(path, 0700), 0);
  assert_int_equal(sc_jsonl_compact(path, NULL, NULL), SC_EPARSE);
  assert_non_null(strstr(sc_error_message(), "a directory"));
  assert_int_equal(rmdir(path), 0);
  /* a size of 0 that reads as bytes: not an empty log */
  assert_int_equal(sc_jsonl_compact("/proc/self/status", NULL, NULL), SC_EPARSE);
  /* a socket */
  temp_path(state, "sock", path);
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  assert_true(strlen(path) < sizeof(sa.sun_path));
  memcpy(sa.sun_path, path, strlen(path) + 1);
  assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
  assert_int_equal(sc_jsonl_compact(path, NULL, NULL), SC_EPARSE);
  assert_non_null(strstr(sc_error_message(), "a socket"));
  close(fd);
  unlink(path);
  /* and verify --archive says what a FIFO is, not "Success" */
  char log[256];
  temp_path(state, "job.jsonl", log);
  write_mixed_log(log);
  assert_int_equal(sc_jsonl_compact(log, NULL, NULL), SC_OK);
  temp_path(state, "fifo", path);
  assert_int_equal(mkfifo(path, 0600), 0);
  assert_int_equal(sc_jsonl_verify_link(log, path), SC_EPARSE);
  assert_null(strstr(sc_error_message(), "Success"));
  assert_non_null(strstr(sc_error_message(), "not a stagecoach log"));
  assert_int_equal(sc_jsonl_verify_link(log, "/dev/zero"), SC_EPARSE);
  unlink(path);
}

/* Whether the first line of the log names id among the dropped task ids. */
static bool names_dropped(const char *path, const char *id) {
  size_t len;
  char *text = slurp(path, &len);
  assert_non_null(text);
  char *nl = strchr(text, '\n');
  assert_non_null(nl);
  cJSON *root = cJSON_ParseWithLength(text, (size_t)(nl - text));
  assert_non_null(root);
  const cJSON *ids = cJSON_GetObjectItem(cJSON_GetObjectItem(root, "data"), "dropped_task_ids");
  assert_true(cJSON_IsArray(ids));
  bool found = false;
  size_t times = 0;
  const cJSON *it;
  cJSON_ArrayForEach(it, ids) {
    assert_true(cJSON_IsString(it));
    if (strcmp(it->valuestring, id) == 0) times++;
  }
  assert_true(times <= 1); /* each once */
  found = times == 1;
  cJSON_Delete(root);
  free(text);
  return found;
}

static void the_compacted_line_keeps_the_ids_it_dropped(void **state) {
  char path[256];
  temp_path(state, "job.jsonl", path);
  write_mixed_log(path);
  sc_jsonl_compact_report r;
  assert_int_equal(sc_jsonl_compact(path, NULL, &r), SC_OK);
  assert_true(r.compacted);
  /* done and stopped finished and went, long and broken were superseded by their recoveries
   * (under new ids) and went; early is unfinished and kept, and again's later run too */
  const char *gone[] = {"done", "stopped", "long", "broken"};
  for (size_t i = 0; i < 4; i++) {
    assert_true(names_dropped(path, gone[i]));
    assert_int_equal(lines_of(path, gone[i]), 0);
  }
  assert_false(names_dropped(path, "early"));
  assert_false(names_dropped(path, "again"));
  assert_true(lines_of(path, "early") > 0 && lines_of(path, "again") > 0);
  /* A later task that finishes, then another compaction: the older ids stay listed. */
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = new_engine(&loop);
  sc_jsonl *log = open_log(e, path);
  submit(e, "later", "s0,s1");
  run_a_while(&loop);
  assert_int_equal(sc_jsonl_close(log), SC_OK);
  sc_engine_free(e);
  assert_int_equal(uv_loop_close(&loop), 0);
  assert_int_equal(sc_jsonl_compact(path, NULL, &r), SC_OK);
  assert_true(r.compacted);
  assert_true(names_dropped(path, "later"));
  for (size_t i = 0; i < 4; i++)
    assert_true(names_dropped(path, gone[i]));
  assert_false(names_dropped(path, "early"));
  assert_int_equal(sc_jsonl_verify(path, NULL), SC_OK);
}

#define T(name) cmocka_unit_test_setup_teardown(name, make_temp_dir, remove_temp_dir)

int main(void) {
  const struct CMUnitTest tests[] = {
      T(compaction_keeps_what_recovery_needs_and_links_the_old_chain),
      T(compacting_twice_changes_nothing_the_second_time),
      T(finished_tasks_younger_than_the_limit_are_kept_whole),
      T(a_writer_continues_the_compacted_log),
      T(a_running_writer_makes_compaction_refuse_with_its_pid),
      T(no_writer_starts_while_a_compaction_runs),
      T(a_kill_at_any_step_leaves_the_old_log_or_the_new_one),
      T(a_failed_write_leaves_the_old_log_and_no_new_file),
      T(an_archive_that_exists_is_refused_with_nothing_changed),
      T(a_file_that_is_not_a_log_is_refused_and_left_alone),
      T(a_log_whose_chain_breaks_is_refused_and_left_alone),
      T(a_torn_tail_is_dropped_by_compaction),
      T(verify_link_refuses_another_archive_and_a_malformed_link),
      T(a_log_behind_a_link_is_compacted_where_it_is_with_its_mode),
      T(recovery_from_a_compacted_log_equals_the_original_whatever_lines_it_lacks),
      T(an_archive_that_is_the_log_or_the_new_logs_name_is_refused),
      T(a_file_planted_at_the_temporary_name_is_never_written_through),
      T(a_log_cut_by_another_process_mid_way_is_no_crash),
      T(what_is_not_a_regular_file_is_not_a_log),
      T(the_compacted_line_keeps_the_ids_it_dropped),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
