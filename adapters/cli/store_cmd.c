/* The commands and options of the stores: --db FILE and --store jsonl:PATH|sqlite:PATH for run and
 * recover (the database beside or instead of the log), and `checkpoints`, `retain` and `import`.
 * A build without SQLite (-Dsqlite=disabled) says so for everything that needs a database. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <stagecoach/memory.h>
#include <stagecoach/sqlite.h>
#include <stagecoach/store.h>

#include "cli.h"

const char *cli_help_checkpoints =
    "usage: stagecoach checkpoints (--db FILE | --log FILE | --store URI) TASK [--latest] "
    "[--json]\n"
    "\n"
    "Lists the checkpoints (one per stage.completed) of a task: id, stage, time and digest. A\n"
    "checkpoint id is TASK/SEQ, what `recover --from-checkpoint` takes. --latest shows the last\n"
    "one with its whole context, rebuilt from the last snapshot and the outputs after it and\n"
    "checked against its digest (a changed record is reported, never shown as good). --json\n"
    "prints the JSON of docs/sqlite.md. Exit codes: 0 shown, 1 a record does not verify, 2 no\n"
    "such task or database.\n";

const char *cli_help_retain =
    "usage: stagecoach retain (--db FILE | --store sqlite:PATH) [--keep-last N] [--max-age D]\n"
    "\n"
    "Deletes checkpoints beyond the last N of each task and/or older than D (30d, 12h, 15m, 45s,\n"
    "500ms), never the latest of an unfinished task nor any of a task that may still roll back,\n"
    "and the events of finished tasks older than D, in small transactions. Prints what it\n"
    "deleted and the longest transaction. The database must not be open by a run.\n";

const char *cli_help_import =
    "usage: stagecoach import LOG (--db FILE | --store sqlite:PATH)\n"
    "\n"
    "Reads a JSON-lines log (verifying its chain) into a database, so that both answer the same\n"
    "queries and the database can recover what the log holds. Events the database has already\n"
    "are skipped, so an import can be repeated; a log of another run under a task id the database\n"
    "holds already is refused (exit 2).\n";

int cli_store_uri(const char *uri, const char **log, const char **db, const char *cmd) {
  if (strncmp(uri, "jsonl:", 6) == 0 && uri[6]) {
    if (*log) return cli_usage_error(cmd, "--store %s and --log name two logs", uri);
    *log = uri + 6;
    return CLI_EXIT_COMPLETED;
  }
  if (strncmp(uri, "sqlite:", 7) == 0 && uri[7]) {
    if (*db) return cli_usage_error(cmd, "--store %s and --db name two databases", uri);
    *db = uri + 7;
    return CLI_EXIT_COMPLETED;
  }
  return cli_usage_error(cmd, "--store must be jsonl:PATH or sqlite:PATH (got '%s')", uri);
}

#ifdef SC_HAVE_SQLITE
#define NO_SQLITE(cmd) (void)0
#else
#define NO_SQLITE(cmd)                                                                             \
  return cli_usage_error(cmd, "this stagecoach was built without SQLite (-Dsqlite=disabled)")
#endif

int cli_db_open(sc_engine *e, const char *path, int flags, const char *cmd, sc_sqlite **out) {
  *out = NULL;
  NO_SQLITE(cmd);
#ifdef SC_HAVE_SQLITE
  sc_sqlite_options o;
  sc_sqlite_options_init(&o);
  o.existing = (flags & CLI_DB_EXISTING) != 0;
  o.readonly = (flags & CLI_DB_READONLY) != 0;
  /* --db /dev/stdout with stdout sent to a file: progress lines would go into the database. */
  struct stat sp, so;
  if (stat(path, &sp) == 0)
    for (int fd = 1; fd <= 2; fd++)
      if (fstat(fd, &so) == 0 && sp.st_dev == so.st_dev && sp.st_ino == so.st_ino)
        return cli_usage_error(cmd, "database %s is this command's %s: give a file of its own",
                               path, fd == 1 ? "stdout" : "stderr");
  if (sc_sqlite_open(e, path, &o, out) != SC_OK)
    return cli_usage_error(cmd, "%s", sc_error_message());
#else
  (void)e, (void)path, (void)flags;
#endif
  return CLI_EXIT_COMPLETED;
}

int cli_db_unfinished(sc_sqlite *db, sc_unfinished **out, size_t *n) {
#ifdef SC_HAVE_SQLITE
  return sc_sqlite_unfinished(db, out, n);
#else
  (void)db, (void)out, (void)n;
  return SC_EINVAL;
#endif
}

int cli_db_restore(sc_sqlite *db, const char *checkpoint_id, sc_unfinished **out) {
#ifdef SC_HAVE_SQLITE
  return sc_sqlite_restore_request(db, checkpoint_id, SC_RECOVER_RETRY, out);
#else
  (void)db, (void)checkpoint_id, (void)out;
  return SC_EINVAL;
#endif
}

static int ignore_event(const char *json, size_t len, void *udata) {
  (void)json, (void)len, (void)udata;
  return 1; /* one is enough */
}

bool cli_db_holds_task(sc_sqlite *db, const char *task_id) {
#ifdef SC_HAVE_SQLITE
  return sc_sqlite_events(db, task_id, 0, ignore_event, NULL) != SC_ENOTFOUND;
#else
  (void)db, (void)task_id, (void)ignore_event;
  return false;
#endif
}

int cli_db_file_holds_task(const char *path, const char *task_id) {
#ifdef SC_HAVE_SQLITE
  sc_sqlite_options o;
  sc_sqlite_options_init(&o);
  o.readonly = true;
  sc_sqlite *db;
  if (sc_sqlite_open(NULL, path, &o, &db) != SC_OK) return -1;
  int rc = sc_sqlite_events(db, task_id, 0, ignore_event, NULL);
  sc_sqlite_close(db);
  return rc == SC_ENOTFOUND ? 0 : rc < 0 ? -1 : 1;
#else
  (void)path, (void)task_id;
  return -1;
#endif
}

int cli_db_close(sc_sqlite *db) {
  if (db == NULL) return SC_OK;
#ifdef SC_HAVE_SQLITE
  return sc_sqlite_close(db);
#else
  (void)db;
  return SC_OK;
#endif
}

/* ---- checkpoints ---- */

static int add_line(const char *json, size_t len, void *udata) {
  return sc_memory_store_add(udata, json, len) == SC_OK ? 0 : 0; /* not an event: skipped */
}

/* A store to read from: the database, or the log loaded into a memory store. */
static int open_reader(const char *log, const char *db, const char *cmd, sc_store **out) {
  *out = NULL;
  if ((log == NULL) == (db == NULL))
    return cli_usage_error(cmd, "give one store: --db FILE, --log FILE or --store URI");
  if (db) {
    NO_SQLITE(cmd);
#ifdef SC_HAVE_SQLITE
    sc_sqlite_options o;
    sc_sqlite_options_init(&o);
    o.readonly = true;
    if (sc_sqlite_store_open(db, &o, out) != SC_OK)
      return cli_usage_error(cmd, "%s", sc_error_message());
#endif
    return CLI_EXIT_COMPLETED;
  }
  if (sc_memory_store_new(out) != SC_OK) return cli_usage_error(cmd, "%s", sc_error_message());
  int rc = sc_jsonl_read_events(log, add_line, *out);
  if (rc != SC_OK) {
    char why[512];
    snprintf(why, sizeof(why), "%s", sc_error_message());
    sc_store_close(*out);
    *out = NULL;
    if (rc == SC_ECORRUPT) {
      fprintf(stderr, "stagecoach %s: %s\n", cmd, why);
      return CLI_EXIT_FAILED;
    }
    return cli_usage_error(cmd, "%s", why);
  }
  return CLI_EXIT_COMPLETED;
}

static int store_options(int argc, char **argv, int *i, const char **log, const char **db,
                         const char *cmd, int *code) {
  const char *uri = NULL;
  int m;
  if ((m = cli_option(argc, argv, i, "--db", db)) != 0 ||
      (m = cli_option(argc, argv, i, "--log", log)) != 0) {
    *code = m < 0 ? cli_usage_error(cmd, "%s needs a value", argv[*i]) : CLI_EXIT_COMPLETED;
    return 1;
  }
  if ((m = cli_option(argc, argv, i, "--store", &uri)) != 0) {
    *code =
        m < 0 ? cli_usage_error(cmd, "--store needs a value") : cli_store_uri(uri, log, db, cmd);
    return 1;
  }
  return 0;
}

static void print_checkpoint(const cJSON *c) {
  const cJSON *time = cJSON_GetObjectItemCaseSensitive(c, "time");
  printf("%-40s %-20s %s  %s\n", cJSON_GetObjectItemCaseSensitive(c, "id")->valuestring,
         cJSON_GetObjectItemCaseSensitive(c, "stage")->valuestring,
         cJSON_IsString(time) ? time->valuestring : "?",
         cJSON_GetObjectItemCaseSensitive(c, "digest")->valuestring);
}

int cli_checkpoints(int argc, char **argv) {
  const char *log = NULL, *db = NULL, *task = NULL;
  bool latest = false, json = false;
  for (int i = 0; i < argc; i++) {
    int code;
    if (store_options(argc, argv, &i, &log, &db, "checkpoints", &code)) {
      if (code != CLI_EXIT_COMPLETED) return code;
      continue;
    }
    if (strcmp(argv[i], "--latest") == 0) {
      latest = true;
    } else if (strcmp(argv[i], "--json") == 0) {
      json = true;
    } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
      return cli_usage_error("checkpoints",
                             "unknown option '%s' (see stagecoach checkpoints "
                             "--help)",
                             argv[i]);
    } else if (task) {
      return cli_usage_error("checkpoints", "one task at a time ('%s')", argv[i]);
    } else {
      task = argv[i];
    }
  }
  if (task == NULL)
    return cli_usage_error("checkpoints", "which task? (checkpoints --db FILE TASK)");
  sc_store *s;
  int code = open_reader(log, db, "checkpoints", &s);
  if (code != CLI_EXIT_COMPLETED) return code;
  cJSON *out = NULL;
  int rc = latest ? sc_store_latest(s, task, &out) : sc_store_checkpoints(s, task, &out);
  if (rc == SC_ECORRUPT) {
    fprintf(stderr, "stagecoach checkpoints: %s\n", sc_error_message());
    code = CLI_EXIT_FAILED;
  } else if (rc != SC_OK) {
    code = cli_usage_error("checkpoints", "%s", sc_error_message());
  } else if (json) {
    char *text = cJSON_PrintUnformatted(out);
    if (text) puts(text);
    free(text);
  } else if (latest) {
    print_checkpoint(out);
    char *text = cJSON_Print(cJSON_GetObjectItemCaseSensitive(out, "context"));
    if (text) printf("context (verified):\n%s\n", text);
    free(text);
  } else {
    const cJSON *c;
    cJSON_ArrayForEach(c, out) print_checkpoint(c);
    if (cJSON_GetArraySize(out) == 0) printf("task %s has no checkpoint yet\n", task);
  }
  cJSON_Delete(out);
  sc_store_close(s);
  return code;
}

/* ---- events ---- */

typedef struct events_filter {
  const char *task, *type;
  bool json;
  bool (*match)(const char *id, const char *want);
} events_filter;

static int print_line(const char *json, size_t len, void *udata) {
  const events_filter *f = udata;
  sc_event_doc *d;
  if (sc_event_parse(json, len, &d) != SC_OK) return 0;
  const sc_event *ev = sc_event_doc_event(d);
  const char *t = sc_event_type_name(ev->type) + strlen("stagecoach.");
  bool wanted = (f->task == NULL || f->match(ev->task_id, f->task)) &&
                (f->type == NULL || strncmp(t, f->type, strlen(f->type)) == 0);
  if (wanted && f->json)
    printf("%.*s\n", (int)len, json);
  else if (wanted)
    cli_print_event(stdout, ev);
  sc_event_doc_free(d);
  return 0;
}

int cli_events_db(const char *db, const char *task, const char *type, bool json,
                  bool (*match)(const char *id, const char *want)) {
  sc_store *s;
  int code = open_reader(NULL, db, "events", &s);
  if (code != CLI_EXIT_COMPLETED) return code;
  events_filter f = {task, type, json, match};
  int rc = sc_store_events(s, NULL, 0, print_line, &f);
  if (rc != SC_OK) code = cli_usage_error("events", "%s", sc_error_message());
  sc_store_close(s);
  return code;
}

/* ---- retain ---- */

#ifdef SC_HAVE_SQLITE
/* "30d", "12h", "15m", "45s", "500ms" or a number of seconds, in milliseconds; -1 otherwise. */
static int64_t parse_duration(const char *text) {
  errno = 0;
  char *end;
  double v = strtod(text, &end);
  if (errno != 0 || end == text || v < 0 || v > 1e12) return -1;
  double ms = strcmp(end, "ms") == 0                  ? v
              : strcmp(end, "s") == 0 || *end == '\0' ? v * 1e3
              : strcmp(end, "m") == 0                 ? v * 6e4
              : strcmp(end, "h") == 0                 ? v * 3.6e6
              : strcmp(end, "d") == 0                 ? v * 8.64e7
                                                      : -1;
  return ms < 0 || ms > 9e15 ? -1 : (int64_t)ms;
}
#endif

int cli_retain(int argc, char **argv) {
  NO_SQLITE("retain");
  const char *log = NULL, *db = NULL, *keep = NULL, *age = NULL;
  for (int i = 0; i < argc; i++) {
    int code, m;
    if (store_options(argc, argv, &i, &log, &db, "retain", &code)) {
      if (code != CLI_EXIT_COMPLETED) return code;
      continue;
    }
    if ((m = cli_option(argc, argv, &i, "--keep-last", &keep)) != 0 ||
        (m = cli_option(argc, argv, &i, "--max-age", &age)) != 0) {
      if (m < 0) return cli_usage_error("retain", "%s needs a value", argv[i]);
      continue;
    }
    return cli_usage_error("retain", "unknown argument '%s' (see stagecoach retain --help)",
                           argv[i]);
  }
  if (log)
    return cli_usage_error("retain",
                           "a log is not trimmed in place: `stagecoach compact LOG` rewrites it");
  if (db == NULL) return cli_usage_error("retain", "which database? (retain --db FILE)");
  if (keep == NULL && age == NULL)
    return cli_usage_error("retain", "give --keep-last N and/or --max-age D (nothing to do)");
#ifdef SC_HAVE_SQLITE
  sc_sqlite_retention p;
  sc_sqlite_retention_init(&p);
  if (keep) {
    char *end;
    errno = 0;
    unsigned long n = strtoul(keep, &end, 10);
    if (errno || *end || keep[0] == '-' || n == 0 || n > UINT32_MAX)
      return cli_usage_error("retain", "--keep-last must be a whole number from 1 (got '%s')",
                             keep);
    p.keep_last = (uint32_t)n;
  }
  if (age && ((p.max_age_ms = parse_duration(age)) <= 0))
    return cli_usage_error("retain",
                           "--max-age must be a duration such as 30d, 12h or 90s (got "
                           "'%s')",
                           age);
  sc_sqlite *h;
  int code = cli_db_open(NULL, db, CLI_DB_EXISTING, "retain", &h);
  if (code != CLI_EXIT_COMPLETED) return code;
  sc_sqlite_retain_report r;
  int rc = sc_sqlite_retain(h, &p, &r);
  if (rc != SC_OK) {
    fprintf(stderr, "stagecoach retain: %s\n", sc_error_message());
    /* A record that does not verify is 1; the database failing to store the deletion is 5. */
    code = rc == SC_ECORRUPT ? CLI_EXIT_FAILED : CLI_EXIT_INCOMPLETE;
  }
  /* Only what committed is counted: a failed transaction deleted nothing. */
  printf("deleted %" PRIu64 " checkpoints and %" PRIu64 " events and %" PRIu64
         " approvals in %" PRIu64 " transactions (longest %.3f ms)%s\n",
         r.checkpoints_deleted, r.events_deleted, r.approvals_deleted, r.batches,
         (double)r.longest_batch_ns / 1e6, rc == SC_OK ? "" : ", then stopped at the error");
  if (cli_db_close(h) != SC_OK && code == CLI_EXIT_COMPLETED) code = CLI_EXIT_FAILED;
  return code;
#endif
}

/* ---- import ---- */

int cli_import(int argc, char **argv) {
  NO_SQLITE("import");
  const char *log = NULL, *db = NULL, *file = NULL;
  for (int i = 0; i < argc; i++) {
    int code;
    if (store_options(argc, argv, &i, &log, &db, "import", &code)) {
      if (code != CLI_EXIT_COMPLETED) return code;
      continue;
    }
    if (argv[i][0] == '-' && argv[i][1] != '\0')
      return cli_usage_error("import", "unknown option '%s' (see stagecoach import --help)",
                             argv[i]);
    if (file) return cli_usage_error("import", "one log at a time ('%s')", argv[i]);
    file = argv[i];
  }
  if (file == NULL && log) file = log, log = NULL;
  if (file == NULL || db == NULL)
    return cli_usage_error("import", "give a log and a database (import LOG --db FILE)");
  /* A device would be read for ever and a FIFO waits for a writer: a log is a regular file. */
  struct stat st;
  if (stat(file, &st) != 0) return cli_usage_error("import", "%s: %s", file, strerror(errno));
  if (!S_ISREG(st.st_mode))
    return cli_usage_error("import", "%s is not a stagecoach log (not a regular file)", file);
#ifdef SC_HAVE_SQLITE
  sc_sqlite *h;
  int code = cli_db_open(NULL, db, 0, "import", &h);
  if (code != CLI_EXIT_COMPLETED) return code;
  uint64_t n = 0;
  int rc = sc_sqlite_import(h, file, &n);
  if (rc == SC_OK) {
    printf("imported %" PRIu64 " events from %s into %s\n", n, file, db);
  } else {
    const char *why = sc_error_message();
    fprintf(stderr, "stagecoach import: %s\n", why[0] ? why : "the log could not be read");
    code = rc == SC_ECORRUPT                ? CLI_EXIT_FAILED
           : rc == SC_EIO || rc == SC_EBUSY ? CLI_EXIT_INCOMPLETE
                                            : CLI_EXIT_USAGE;
  }
  if (cli_db_close(h) != SC_OK && code == CLI_EXIT_COMPLETED) code = CLI_EXIT_FAILED;
  return code;
#endif
}
