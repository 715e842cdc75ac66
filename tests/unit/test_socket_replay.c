/* Replays from the log, in one process: the index of where each task begins (a task the log does
 * not hold costs a read of what was appended since, a known one starts at its first line, a
 * bounded index reads on from where it stopped, a compacted or rewritten log is indexed again), a
 * replaying client that takes nothing is dropped while a reading one gets everything, and a
 * replay in progress keeps neither the loop nor sc_socket_close waiting. */
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

#define SOCKFIX_DIR_PREFIX "/tmp/sc-sockreplay"
#include "sockfix.h"

/* An "fn" stage whose output is one member of 100 KB: lines longer than a chunk (64 KiB). */
static int bigpad(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  static char text[100 * 1024];
  memset(text, 'y', sizeof(text) - 1);
  cJSON *out = cJSON_CreateObject();
  cJSON_AddStringToObject(out, "pad", text);
  sc_stage_complete(ctx, out);
  return SC_OK;
}

static void sockfix_register(sc_engine *e) {
  assert_int_equal(sc_engine_register_fn(e, "bigpad", bigpad, NULL), SC_OK);
}

static char *slurp(const char *path, size_t *len) {
  int fd = open(path, O_RDONLY);
  assert_true(fd >= 0);
  struct stat st;
  assert_int_equal(fstat(fd, &st), 0);
  char *p = malloc((size_t)st.st_size + 1);
  assert_non_null(p);
  assert_int_equal(read(fd, p, (size_t)st.st_size), st.st_size);
  close(fd);
  p[st.st_size] = '\0';
  *len = (size_t)st.st_size;
  return p;
}

/* The number of lines of task id in the log, and the byte offset of the first (0 if none). */
static int lines_of(const char *log, const char *id, uint64_t *first) {
  size_t len;
  char *text = slurp(log, &len);
  char needle[96];
  snprintf(needle, sizeof(needle), "\"taskid\":\"%s\"", id);
  int n = 0;
  *first = 0;
  for (char *at = strstr(text, needle); at; at = strstr(at + 1, needle)) {
    char *line = at;
    while (n == 0 && line > text && line[-1] != '\n')
      line--;
    if (n++ == 0) *first = (uint64_t)(line - text);
  }
  free(text);
  return n;
}

static uint64_t first_line_of(const char *log, const char *id) {
  uint64_t first;
  assert_true(lines_of(log, id, &first) > 0);
  return first;
}

/* The byte offset of the log's last line. */
static uint64_t last_line_of(const char *log) {
  size_t len;
  char *text = slurp(log, &len);
  assert_true(len > 0 && text[len - 1] == '\n');
  size_t i = len - 1;
  while (i > 0 && text[i - 1] != '\n')
    i--;
  free(text);
  return i;
}

static uint64_t size_of(const char *path) {
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  return (uint64_t)st.st_size;
}

/* ---- a replay, read to its end ---- */

typedef struct replayed {
  uint64_t bytes;  /* of the log read for it */
  uint64_t start;  /* where its read began */
  int events;      /* event lines, in seq order from 1 (checked) */
  bool gap, other; /* a replay-gap line; another error line */
  bool gap_null;   /* the gap's first_available was null */
} replayed;

static void sub_line(char *out, size_t cap, const char *task) {
  snprintf(out, cap, "{\"subscribe\":{\"token\":\"" VIEW "\",\"task\":\"%s\",\"from_seq\":1}}",
           task);
}

/* Subscribes to task from seq 1 and reads until `events` event lines came (and, when gap, the gap
 * line): what the replay read and sent. */
static replayed replay_of(fx *f, const char *task, int events, bool gap) {
  uint64_t before = f->s->replay_bytes, started = f->s->replays_started;
  cl c;
  cl_connect(f, &c);
  char line[256];
  sub_line(line, sizeof(line), task);
  cl_send(&c, line);
  replayed r = {0};
  while (r.events < events || (gap && !r.gap)) {
    cJSON *j = cl_line(f, &c);
    if (j == NULL) fail_msg("replay of %s: %d events, gap %d", task, r.events, r.gap);
    const char *err = str(j, "error");
    if (err && strcmp(err, "replay-gap") == 0) {
      r.gap = true;
      r.gap_null = cJSON_IsNull(cJSON_GetObjectItem(j, "first_available"));
    } else if (err) {
      r.other = true;
      fail_msg("replay of %s: %s", task, err);
    } else {
      assert_string_equal(str(j, "taskid"), task);
      assert_int_equal(num(j, "seq"), r.events + 1);
      r.events++;
    }
    cJSON_Delete(j);
  }
  /* Its read is over once the client streams (or, for a gap alone, has its line). */
  uint64_t until = now_ms() + 10000;
  while (replaying(f) > 0 && now_ms() < until)
    turn(f, -1);
  assert_int_equal(replaying(f), 0);
  assert_true(f->s->replays_started > started);
  r.bytes = f->s->replay_bytes - before;
  r.start = f->s->replay_start;
  cl_close(&c);
  return r;
}

#define TASKS  200
#define STAGES 2
#define EVENTS                                                                                     \
  (2 * STAGES + 3) /* created, started, each stage's started and completed, completed */

static void log_server(fx *f, const char *log, size_t index_limit) {
  sc_socket_options o;
  sc_socket_options_init(&o);
  o.ring_events = 16;
  o.log_path = log;
  fx_start(f, &o);
  f->s->index_limit = index_limit;
}

static void a_task_the_log_does_not_hold_costs_a_read_of_what_was_appended_since(void **state) {
  (void)state;
  char log[128];
  snprintf(log, sizeof(log), "%s/index.jsonl", dir);
  write_tasks(log, "t", 0, TASKS, STAGES, false);
  fx f;
  log_server(&f, log, 0);
  uint64_t size1 = size_of(log), last1 = last_line_of(log);
  /* The first time, the whole log is read (and indexed on the way). */
  replayed r = replay_of(&f, "nosuch", 0, true);
  assert_true(r.gap && r.gap_null);
  assert_int_equal(r.bytes, size1);
  assert_int_equal(sc__sock_index_count(f.s->index), TASKS);
  /* Then only what was appended since, and the last line indexed, read again to check it. */
  write_tasks(log, "t", TASKS, 20, STAGES, false);
  uint64_t size2 = size_of(log);
  r = replay_of(&f, "nosuch", 0, true);
  assert_true(r.gap && r.gap_null);
  assert_int_equal(r.start, last1);
  assert_int_equal(r.bytes, size2 - last1);
  assert_int_equal(sc__sock_index_count(f.s->index), TASKS + 20);
  /* Nothing appended: one line read. */
  r = replay_of(&f, "nosuch", 0, true);
  assert_int_equal(r.bytes, size2 - last_line_of(log));
  /* A task the index knows: the read starts at its first line. */
  uint64_t at = first_line_of(log, "t150");
  assert_true(at > 0);
  r = replay_of(&f, "t150", EVENTS, false);
  assert_false(r.gap);
  assert_int_equal(r.start, at);
  assert_true(r.bytes <= size2 - at);
  /* One appended after the first replay was indexed by the second. */
  r = replay_of(&f, "t210", EVENTS, false);
  assert_int_equal(r.start, first_line_of(log, "t210"));
  print_message("# log of %llu bytes: the first replay of an unknown task read %llu, the second "
                "%llu (appended %llu)\n",
                (unsigned long long)size2, (unsigned long long)size1,
                (unsigned long long)(size2 - last1), (unsigned long long)(size2 - size1));
  fx_stop(&f);
}

static void a_bounded_index_reads_on_from_where_it_stopped(void **state) {
  (void)state;
  char log[128];
  snprintf(log, sizeof(log), "%s/bounded.jsonl", dir);
  write_tasks(log, "b", 0, TASKS, STAGES, false);
  fx f;
  log_server(&f, log, 4096); /* room for a few tasks only */
  uint64_t size = size_of(log);
  replayed r = replay_of(&f, "nosuch", 0, true);
  assert_int_equal(r.bytes, size);
  const sc__sock_index *ix = f.s->index;
  size_t known = sc__sock_index_count(ix);
  assert_true(ix->frozen);
  assert_true(known > 0 && known < TASKS);
  assert_true(ix->bytes <= 4096);
  /* Past the bound, a replay reads from the last line indexed: more than what was appended, less
   * than the whole log, and every answer is still right. */
  r = replay_of(&f, "nosuch", 0, true);
  assert_int_equal(r.start, ix->last.offset);
  assert_int_equal(r.bytes, size - ix->last.offset);
  char late[16];
  snprintf(late, sizeof(late), "b%d", TASKS - 1);
  r = replay_of(&f, late, EVENTS, false);
  assert_int_equal(r.start, ix->last.offset);
  r = replay_of(&f, "b1", EVENTS, false);
  assert_int_equal(r.start, first_line_of(log, "b1"));
  assert_int_equal(sc__sock_index_count(f.s->index), known); /* it grew no further */
  fx_stop(&f);
}

static void a_compacted_or_rewritten_log_is_indexed_again(void **state) {
  (void)state;
  char log[128], archive[128];
  snprintf(log, sizeof(log), "%s/compact.jsonl", dir);
  snprintf(archive, sizeof(archive), "%s/compact.old", dir);
  write_tasks(log, "c", 0, TASKS, STAGES, true); /* c-gate waits in the middle of the log */
  fx f;
  log_server(&f, log, 0);
  uint64_t at;
  int gate_events = lines_of(log, "c-gate", &at);
  assert_true(gate_events >= 3); /* created, started, approval.requested at least */
  replayed r = replay_of(&f, "c-gate", gate_events, false);
  assert_true(at > 0);
  r = replay_of(&f, "c-gate", gate_events, false);
  assert_int_equal(r.start, at); /* from the index */
  /* A compaction renames a new log over the path: only the unfinished task is left. */
  sc_jsonl_compact_options co;
  sc_jsonl_compact_options_init(&co);
  co.archive = archive;
  sc_jsonl_compact_report cr;
  assert_int_equal(sc_jsonl_compact(log, &co, &cr), SC_OK);
  assert_true(cr.compacted);
  r = replay_of(&f, "c-gate", gate_events, false);
  assert_int_equal(r.start, 0); /* another file: indexed again */
  assert_int_equal(r.bytes, size_of(log));
  r = replay_of(&f, "c7", 0, true); /* dropped by the compaction: a gap now */
  assert_true(r.gap_null);
  /* The old log's bytes written over the new one in place (the same inode, longer): the line the
   * index names does not follow its chain value there, and the log is read from its start. */
  size_t len;
  char *old = slurp(archive, &len);
  int fd = open(log, O_WRONLY | O_TRUNC);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, old, len), (ssize_t)len);
  close(fd);
  free(old);
  r = replay_of(&f, "c-gate", gate_events, false);
  assert_int_equal(r.start, 0);
  r = replay_of(&f, "c-gate", gate_events, false);
  assert_int_equal(r.start, first_line_of(log, "c-gate"));
  /* Cut back below what the index holds: read from the start again. */
  assert_int_equal(truncate(log, (off_t)at - 10), 0);
  r = replay_of(&f, "c-gate", 0, true);
  assert_true(r.gap_null);
  assert_int_equal(r.start, 0);
  fx_stop(&f);
}

/* ---- a replaying client that takes nothing ---- */

#define BIG_STAGES 3000
#define STALL_MS   300

static void
a_replaying_client_that_takes_nothing_is_dropped_and_a_reader_gets_everything(void **state) {
  (void)state;
  char log[128];
  snprintf(log, sizeof(log), "%s/stall.jsonl", dir);
  write_tasks(log, "big", 0, 1, BIG_STAGES, false);
  fx f;
  sc_socket_options o;
  sc_socket_options_init(&o);
  o.ring_events = 16;
  o.log_path = log;
  o.replay_stall_ms = STALL_MS;
  fx_start(&f, &o);
  /* A stream that does not read, but replays nothing: the stall rule is not for it. */
  cl quiet, lazy, reader;
  cl_connect(&f, &quiet);
  cl_send(&quiet, "{\"subscribe\":{\"token\":\"" VIEW "\",\"task\":\"quiet\"}}");
  cl_connect(&f, &lazy);
  int small = 4096;
  setsockopt(lazy.fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
  cl_send(&lazy, "{\"subscribe\":{\"token\":\"" VIEW "\",\"task\":\"big0\",\"from_seq\":1}}");
  cl_connect(&f, &reader);
  cl_send(&reader, "{\"subscribe\":{\"token\":\"" VIEW "\",\"task\":\"big0\",\"from_seq\":1}}");
  static char line[CL_BUF];
  uint64_t t0 = now_ms(), dropped_at = 0, until = t0 + 30000;
  int got = 0;
  bool done = false;
  while ((!done || dropped_at == 0) && now_ms() < until) {
    turn(&f, reader.fd);
    cl_read_some(&reader, 64 * 1024);
    while (cl_take(&reader, line, sizeof(line))) {
      if (strstr(line, "\"error\"")) fail_msg("%s", line);
      cJSON *j = cJSON_Parse(line);
      assert_int_equal(num(j, "seq"), got + 1);
      cJSON_Delete(j);
      if (++got == 2 * BIG_STAGES + 3) done = true;
    }
    if (dropped_at == 0 && sc_socket_dropped_count(f.s) > 0) dropped_at = now_ms();
  }
  assert_true(done);
  assert_true(dropped_at > 0);
  print_message("# the client that took nothing was dropped after %llu ms (stall %d ms)\n",
                (unsigned long long)(dropped_at - t0), STALL_MS);
  assert_true(dropped_at - t0 >= STALL_MS);
  assert_true(dropped_at - t0 <= STALL_MS + 2000);
  assert_int_equal(sc_socket_dropped_count(f.s), 1);
  /* What it finally reads: whole lines, the last one the slow-consumer line, then the end. */
  char last[256] = "";
  until = now_ms() + 10000;
  while (!lazy.eof && now_ms() < until) {
    turn(&f, lazy.fd);
    cl_read(&lazy);
    while (cl_take(&lazy, line, sizeof(line))) {
      cJSON *j = cJSON_Parse(line);
      assert_non_null(j); /* never a torn line */
      cJSON_Delete(j);
      snprintf(last, sizeof(last), "%.200s", line);
    }
  }
  assert_true(lazy.eof);
  assert_string_equal(last, "{\"error\":\"slow-consumer\"}");
  /* The quiet stream is still there, after many times the stall bound. */
  assert_int_equal(sc_socket_client_count(f.s), 2);
  cl_close(&lazy);
  cl_close(&reader);
  cl_close(&quiet);
  fx_stop(&f);
}

/* The lazy client of a log whose lines are longer than a chunk: each line of a replay is whole
 * in one chunk, so the drop, which cuts the queue at the end of the line being written, leaves
 * no torn line before the slow-consumer line. */
static void a_dropped_replaying_client_reads_whole_long_lines(void **state) {
  (void)state;
  char log[128];
  snprintf(log, sizeof(log), "%s/long.jsonl", dir);
  write_tasks(log, "long", 0, 1, 1, false);
  fx f;
  sc_socket_options o;
  sc_socket_options_init(&o);
  o.ring_events = 16;
  o.log_path = log;
  o.replay_stall_ms = STALL_MS;
  fx_start(&f, &o);
  /* The log's own task, with stages of long lines: written by a writer of this engine. */
  sc_jsonl_options jo;
  sc_jsonl_options_init(&jo);
  jo.fsync = SC_FSYNC_NONE;
  sc_jsonl *j;
  assert_int_equal(sc_jsonl_open(f.e, log, &jo, &j), SC_OK);
  cJSON *cfg = cJSON_CreateObject(), *list = cJSON_AddArrayToObject(cfg, "stages");
  for (int i = 0; i < 40; i++) {
    cJSON *st = cJSON_CreateObject();
    char name[16];
    snprintf(name, sizeof(name), "y%d", i);
    cJSON_AddStringToObject(st, "name", name);
    cJSON_AddStringToObject(st, "kind", "fn");
    cJSON_AddStringToObject(st, "fn", "bigpad");
    cJSON_AddItemToArray(list, st);
  }
  start_task(&f, "longlines", cfg);
  until_status(&f, "longlines", SC_TASK_COMPLETED);
  sc_jsonl_close(j);
  cl lazy;
  cl_connect(&f, &lazy);
  int small = 4096;
  setsockopt(lazy.fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
  cl_send(&lazy, "{\"subscribe\":{\"token\":\"" VIEW "\",\"task\":\"longlines\",\"from_seq\":1}}");
  uint64_t until = now_ms() + 10000;
  while (sc_socket_dropped_count(f.s) == 0 && now_ms() < until)
    turn(&f, -1);
  assert_int_equal(sc_socket_dropped_count(f.s), 1);
  static char line[CL_BUF];
  char last[256] = "";
  int lines = 0;
  until = now_ms() + 10000;
  while (!lazy.eof && now_ms() < until) {
    turn(&f, lazy.fd);
    cl_read(&lazy);
    while (cl_take(&lazy, line, sizeof(line))) {
      cJSON *ev = cJSON_Parse(line);
      if (ev == NULL) fail_msg("a torn line after %d lines: %.80s...", lines, line);
      cJSON_Delete(ev);
      snprintf(last, sizeof(last), "%.200s", line);
      lines++;
    }
  }
  assert_true(lazy.eof);
  assert_string_equal(last, "{\"error\":\"slow-consumer\"}");
  cl_close(&lazy);
  fx_stop(&f);
}

/* ---- a replay in progress and the loop ---- */

static void a_replay_in_progress_keeps_neither_the_loop_nor_the_close_waiting(void **state) {
  (void)state;
  char log[128];
  snprintf(log, sizeof(log), "%s/loop.jsonl", dir);
  write_tasks(log, "l", 0, 1, BIG_STAGES, false); /* a few pieces of the read */
  fx f;
  log_server(&f, log, 0);
  cl c;
  cl_connect(&f, &c);
  cl_send(&c, "{\"subscribe\":{\"token\":\"" VIEW "\",\"task\":\"nosuch\",\"from_seq\":1}}");
  uint64_t until = now_ms() + 5000;
  while (f.s->replays == 0 && now_ms() < until) /* a piece of its read is on the pool */
    turn(&f, -1);
  assert_int_equal(f.s->replays, 1);
  assert_int_equal(replaying(&f), 1);
  /* Nothing but the replay would keep the loop running: uv_run returns after the piece on the
   * pool, with the replay not done. */
  uv_unref((uv_handle_t *)&f.alive);
  uint64_t t0 = now_ms();
  uv_run(&f.loop, UV_RUN_DEFAULT);
  uint64_t ran = now_ms() - t0;
  assert_int_equal(replaying(&f), 1);
  assert_true(f.s->replay_bytes < size_of(log));
  /* The close stops it at once: the client gets no gap line, just the end. */
  t0 = now_ms();
  sc_socket_close(f.s);
  uint64_t closed = now_ms() - t0;
  print_message("# uv_run returned after %llu ms, sc_socket_close took %llu ms\n",
                (unsigned long long)ran, (unsigned long long)closed);
  assert_true(ran < 2000);
  assert_true(closed < 2000);
  cl_read(&c);
  assert_true(c.eof);
  assert_int_equal(c.len, 0);
  cl_close(&c);
  sc_engine_free(f.e);
  uv_close((uv_handle_t *)&f.alive, NULL);
  uv_run(&f.loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&f.loop), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(a_task_the_log_does_not_hold_costs_a_read_of_what_was_appended_since),
      cmocka_unit_test(a_bounded_index_reads_on_from_where_it_stopped),
      cmocka_unit_test(a_compacted_or_rewritten_log_is_indexed_again),
      cmocka_unit_test(
          a_replaying_client_that_takes_nothing_is_dropped_and_a_reader_gets_everything),
      cmocka_unit_test(a_dropped_replaying_client_reads_whole_long_lines),
      cmocka_unit_test(a_replay_in_progress_keeps_neither_the_loop_nor_the_close_waiting),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
