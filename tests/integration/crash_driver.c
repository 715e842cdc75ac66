/* crash_driver: the program behind tests/integration/crash.sh. It runs a 12-stage job with the
 * JSON-lines log and can die at a chosen event, or recovers from the log alone.
 *
 *   crash_driver run LOG RAN MODE MS KILL_AT   run the job; _exit(0) at event KILL_AT (0: never)
 *   crash_driver recover LOG RAN MODE MS       recover what the log says is unfinished (or start
 *                                              the job if the log holds no task) and run it out
 *   crash_driver completed LOG                 print the stages whose stage.completed is logged
 *   crash_driver last LOG                      print the type of the last event stored
 *
 * MODE is always, batch or none; each stage appends its name to RAN (synced) when it starts, then
 * finishes after MS milliseconds. A LOG whose name ends in ".db" is an SQLite database instead
 * (the store of adapters/sqlite; MODE always or batch: synchronous FULL, none: NORMAL). */
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <stagecoach/jsonl.h>
#ifdef SC_HAVE_SQLITE
#include <stagecoach/sqlite.h>
#endif
#include <stagecoach/stagecoach.h>
#include <uv.h>

static const char *ran_path;
static long kill_at, events_seen;

static void closed(uv_handle_t *h) {
  free(h);
}

static void finish(uv_timer_t *t) {
  sc_stage_ctx *ctx = t->data;
  uv_close((uv_handle_t *)t, closed);
  sc_stage_complete(ctx, NULL);
}

static int work_start(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  int fd = open(ran_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return sc_error_set(SC_EIO, "open %s", ran_path);
  char line[64];
  int n = snprintf(line, sizeof(line), "%s\n", sc_stage_name(ctx));
  int ok = write(fd, line, (size_t)n) == n && fdatasync(fd) == 0;
  close(fd);
  if (!ok) return sc_error_set(SC_EIO, "write %s", ran_path);
  const cJSON *ms = cJSON_GetObjectItemCaseSensitive(sc_stage_config(ctx), "ms");
  uv_timer_t *t = malloc(sizeof(*t));
  uv_timer_init(sc_stage_loop(ctx), t);
  t->data = ctx;
  sc_stage_set_data(ctx, t);
  uv_timer_start(t, finish, cJSON_IsNumber(ms) ? (uint64_t)ms->valuedouble : 0, 0);
  return SC_OK;
}

static void work_cancel(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  uv_close((uv_handle_t *)sc_stage_get_data(ctx), closed);
  sc_stage_fail(ctx, SC_ECANCELLED, "cancelled", false);
}

static int killer(const sc_event *ev, sc_ack *ack, void *udata) {
  (void)ev;
  (void)ack;
  (void)udata;
  if (++events_seen == kill_at) _exit(0); /* a crash: no flush, no close, no ack */
  return SC_OK;
}

static cJSON *job_config(long ms) {
  cJSON *config = cJSON_CreateObject();
  cJSON_AddNumberToObject(config, "ms", (double)ms);
  cJSON *stages = cJSON_AddArrayToObject(config, "stages");
  for (int i = 0; i < 12; i++) {
    char name[8];
    snprintf(name, sizeof(name), "s%d", i);
    cJSON *st = cJSON_CreateObject();
    cJSON_AddStringToObject(st, "name", name);
    cJSON_AddStringToObject(st, "kind", "work");
    cJSON_AddItemToArray(stages, st);
  }
  return config;
}

static sc_fsync_mode parse_mode(const char *s) {
  return strcmp(s, "always") == 0 ? SC_FSYNC_ALWAYS
         : strcmp(s, "none") == 0 ? SC_FSYNC_NONE
                                  : SC_FSYNC_BATCH;
}

static int print_completed(const char *line, size_t len) {
  sc_event_doc *d;
  if (sc_event_parse(line, len, &d) != SC_OK) return 0;
  const sc_event *ev = sc_event_doc_event(d);
  if (ev->type == SC_EV_STAGE_COMPLETED) printf("%s\n", ev->stage);
  sc_event_doc_free(d);
  return 0;
}

static char last_type[64];

static int note_line(const char *line, size_t len, void *udata) {
  sc_event_doc *d;
  if (udata == NULL) return print_completed(line, len);
  if (sc_event_parse(line, len, &d) != SC_OK) return 0;
  snprintf(last_type, sizeof(last_type), "%s", sc_event_type_name(sc_event_doc_event(d)->type));
  sc_event_doc_free(d);
  return 0;
}

static bool is_db(const char *path) {
  size_t n = strlen(path);
  return n > 3 && strcmp(path + n - 3, ".db") == 0;
}

/* Walks the stored events of a log or a database with note_line. */
static int walk(const char *path, void *udata) {
  if (!is_db(path)) return sc_jsonl_read_events(path, note_line, udata) == SC_ENOTFOUND ? 0 : 0;
#ifdef SC_HAVE_SQLITE
  sc_sqlite_options o;
  sc_sqlite_options_init(&o);
  o.readonly = true;
  sc_sqlite *db;
  if (sc_sqlite_open(NULL, path, &o, &db) != SC_OK) return 0;
  sc_sqlite_events(db, NULL, 0, note_line, udata);
  sc_sqlite_close(db);
#endif
  return 0;
}

static int completed(const char *path) {
  if (is_db(path)) return walk(path, NULL);
  FILE *f = fopen(path, "r");
  if (f == NULL) return 0;
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  while ((len = getline(&line, &cap, f)) > 0)
    if (line[len - 1] == '\n') print_completed(line, (size_t)len - 1);
  free(line);
  fclose(f);
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 3 && strcmp(argv[1], "completed") == 0) return completed(argv[2]);
  if (argc >= 3 && strcmp(argv[1], "last") == 0) {
    walk(argv[2], last_type);
    printf("%s\n", last_type);
    return 0;
  }
  if (argc < 6) {
    fprintf(stderr, "usage: see the comment at the top of crash_driver.c\n");
    return 2;
  }
  const char *cmd = argv[1], *log_path = argv[2];
  ran_path = argv[3];
  sc_fsync_mode mode = parse_mode(argv[4]);
  long ms = atol(argv[5]);
  kill_at = argc > 6 ? atol(argv[6]) : 0;

  sc_engine *e;
  if (sc_engine_new(NULL, NULL, &e) != SC_OK) return 1;
  static const sc_stage_kind work = {SC_STAGE_KIND_VERSION, work_start, work_cancel, NULL};
  sc_engine_register_kind(e, "work", &work, NULL);

  /* The store first (locked), then what it holds, read through it. */
  sc_jsonl *log = NULL;
  sc_unfinished *todo = NULL;
  size_t n = 0;
  uint64_t stored = 0;
#ifdef SC_HAVE_SQLITE
  sc_sqlite *db = NULL;
  if (is_db(log_path)) {
    sc_sqlite_options so;
    sc_sqlite_options_init(&so);
    so.synchronous = mode == SC_FSYNC_NONE ? SC_SQLITE_SYNC_NORMAL : SC_SQLITE_SYNC_FULL;
    if (sc_sqlite_open(e, log_path, &so, &db) != SC_OK) {
      fprintf(stderr, "open: %s\n", sc_error_message());
      return 1;
    }
    walk(log_path, last_type);
    stored = last_type[0] != '\0';
    if (strcmp(cmd, "recover") == 0 && sc_sqlite_unfinished(db, &todo, &n) != SC_OK) {
      fprintf(stderr, "scan: %s\n", sc_error_message());
      return 1;
    }
  } else
#endif
  {
    sc_jsonl_options o;
    sc_jsonl_options_init(&o);
    o.fsync = mode;
    if (sc_jsonl_open(e, log_path, &o, &log) != SC_OK) {
      fprintf(stderr, "open: %s\n", sc_error_message());
      return 1;
    }
    stored = sc_jsonl_open_report(log)->lines;
    if (strcmp(cmd, "recover") == 0 && sc_jsonl_unfinished(log, &todo, &n) != SC_OK) {
      fprintf(stderr, "scan: %s\n", sc_error_message());
      return 1;
    }
  }
  if (kill_at > 0) {
    sc_subscriber s;
    sc_subscriber_init(&s);
    s.on_event = killer;
    sc_engine_subscribe(e, &s, NULL);
  }
  cJSON *config = job_config(ms);
  int rc = 0;
  if (n > 0) {
    for (size_t i = 0; i < n; i++)
      if (sc_recover_from_restart(e, &todo[i].request, NULL) != SC_OK) {
        fprintf(stderr, "recover: %s\n", sc_error_message());
        rc = 1;
      }
  } else if (strcmp(cmd, "run") == 0 || stored == 0) {
    sc_task_spec spec;
    sc_task_spec_init(&spec);
    spec.task_id = "job";
    spec.tenant_id = "acme";
    spec.plan_id = "crash";
    spec.config = config;
    if (sc_task_submit(e, &spec, NULL) != SC_OK) rc = 1;
  }
  sc_engine_run(e);
  sc_unfinished_free(todo, n);
  cJSON_Delete(config);
  if (log && sc_jsonl_close(log) != SC_OK) rc = 1;
#ifdef SC_HAVE_SQLITE
  if (db && sc_sqlite_close(db) != SC_OK) rc = 1;
#endif
  sc_engine_free(e);
  return rc;
}
