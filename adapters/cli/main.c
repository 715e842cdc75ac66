/* The `stagecoach` command: run and recover pipelines from a shell, verify and read their logs,
 * validate pipeline files. Exit codes: 0 completed (or OK), 1 failed, 2 usage or input error,
 * 3 cancelled, 4 rolled back, 5 the log could not store every event (the record is incomplete). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

static const char *or_default(const char *s, const char *fallback) {
  return s ? s : fallback;
}

static const char *usage_text =
    "usage: stagecoach COMMAND [ARGS]\n"
    "\n"
    "  run PIPELINE.json [--log FILE] [--db FILE] [--fsync always|batch|none] [--task-id ID]\n"
    "                    [--plain] [--no-prompt]      run a pipeline\n"
    "  recover PIPELINE.json --log FILE | --db FILE [--mode retry|rollback|compensate]\n"
    "                    [--from STAGE | --from-checkpoint ID] [--task ID] [--dry-run]\n"
    "                                                  recover what the store says is unfinished\n"
    "  checkpoints --db FILE | --log FILE TASK [--latest] [--json]\n"
    "                                                  a task's checkpoints, verified\n"
    "  retain --db FILE [--keep-last N] [--max-age D]  delete old checkpoints and events\n"
    "  import LOG --db FILE                            copy a log into a database\n"
    "  (--store jsonl:PATH | sqlite:PATH names a store wherever --log or --db does)\n"
    "  verify FILE [--archive OLD]                     check a log's hash chain\n"
    "  compact LOG [--keep-finished D] [--archive FILE]\n"
    "                                                  drop what recovery no longer needs\n"
    "  events FILE [--task ID] [--type T] [--json]     print a log as a timeline\n"
    "  validate PIPELINE.json                          check a pipeline file\n"
    "  tail ADDR [--tenant T] [--task ID] [--from-seq N] [--type T] [--json]\n"
    "                                                  follow a socket's event stream\n"
    "  pending ADDR [--json]                           the approvals a socket server waits for\n"
    "  approve|reject ADDR TASK STAGE [--comment C]    decide an approval over a socket\n"
    "  (run and recover take --socket unix:/path|tcp:127.0.0.1:PORT [--token-file F];\n"
    "   tail, pending, approve, reject take --token-file F or $STAGECOACH_TOKEN)\n"
    "\n"
    "  --help (also after a command), --version\n"
    "exit codes: 0 completed, 1 failed, 2 usage or input error, 3 cancelled, 4 rolled back,\n"
    "            5 the log could not store every event (recover finishes the task),\n"
    "            6 a socket server refused the token\n";

static const char *help_run =
    "usage: stagecoach run PIPELINE.json [--log FILE] [--fsync always|batch|none] [--task-id ID]\n"
    "                      [--plain] [--no-prompt] [--socket ADDR [--token-file F]]\n"
    "\n"
    "Runs the pipeline's config as one task. Stages of kind exec run their command through\n"
    "/bin/sh -c; their output is shown prefixed with the stage name.\n"
    "\n"
    "  --log FILE      append every event to FILE (a JSON-lines log with a hash chain); the\n"
    "                  log is what `stagecoach recover` reads after a crash\n"
    "  --fsync MODE    always: one fdatasync per event; batch (default): one per loop turn;\n"
    "                  none: no fdatasync\n"
    "  --db FILE       write every event to the SQLite database FILE too (or alone): one\n"
    "                  transaction per loop turn, synchronous=FULL; each store holds the\n"
    "                  durability barrier (docs/sqlite.md)\n"
    "  --store URI     jsonl:PATH (the same as --log PATH) or sqlite:PATH (--db PATH)\n"
    "  --task-id ID    the task's id (default: a generated UUIDv7)\n"
    "  --plain         plain timestamped lines, also on a terminal\n"
    "  --no-prompt     do not ask for approvals on the terminal; an approval gate then waits\n"
    "                  for its timeout and applies its policy\n"
    "  --socket ADDR   serve the event stream and control lines on unix:/path or\n"
    "                  tcp:127.0.0.1:PORT (docs/socket.md); a task waiting for an approval\n"
    "                  or a resume then waits for a client\n"
    "  --token-file F  the name:token[:roles] lines that may read and control it (mode 0600)\n"
    "  --socket-limits ring=N,queue=BYTES,line=BYTES,clients=N,pending=N,wait=MS,\n"
    "                  finished=N,stall=MS\n"
    "                  the server's limits (docs/socket.md); finished: the finished tasks\n"
    "                  it remembers for status, stall: how long a replaying client may\n"
    "                  take nothing before it is dropped as slow\n"
    "\n"
    "On a terminal the progress is redrawn in place and approvals are asked for. SIGINT or\n"
    "SIGTERM cancels the task (the running command gets SIGTERM, then SIGKILL); a second one\n"
    "exits at once, writing no terminal event (recover carries the task on). Exit codes: 0\n"
    "completed, 1 failed, 2 input error, 3 cancelled, 5 the log could not store every event.\n";

static const char *help_recover =
    "usage: stagecoach recover PIPELINE.json --log FILE | --db FILE [--mode "
    "retry|rollback|compensate]\n"
    "                          [--from-checkpoint ID]\n"
    "                          [--from STAGE] [--task ID] [--dry-run] [--fsync MODE] [--plain]\n"
    "                          [--no-prompt] [--socket ADDR [--token-file F]]\n"
    "\n"
    "Reads the log, finds every task without a terminal event, and carries each on as a new\n"
    "task (epoch + 1) appended to the same log. The pipeline file gives the current config; a\n"
    "pipeline whose plan changed since the log was written is refused (its fingerprint).\n"
    "\n"
    "  --mode retry       continue after the last completed stage (default)\n"
    "  --mode rollback    re-run the touched stages with previous_config\n"
    "  --mode compensate  run the compensate command of every touched compensable stage,\n"
    "                     last first\n"
    "  --from STAGE       resume at STAGE instead (the stage before it counts as completed)\n"
    "  --task ID          only the task ID\n"
    "  --dry-run          print each recovery plan and change nothing\n"
    "  --db FILE          recover from the SQLite database instead (when no --log is given);\n"
    "                     beside --log, the log is read and the database written too\n"
    "  --from-checkpoint ID  restore: carry the task on from that checkpoint (TASK/SEQ, see\n"
    "                     `stagecoach checkpoints`) with its verified context; needs --db\n"
    "  --socket ADDR, --token-file F, --socket-limits L   as for run\n"
    "\n"
    "Exit codes: 0 completed (or nothing to recover), 1 failed, 2 input error, 3 cancelled,\n"
    "4 rolled back, 5 the log could not store every event.\n";

static const char *help_verify =
    "usage: stagecoach verify FILE [--archive OLD]\n"
    "\n"
    "Checks the hash chain of every line of a log; with --archive, also that FILE was compacted\n"
    "from OLD (its first line names OLD's last chain value and line count). A last line without\n"
    "its newline is a torn tail (a crash mid-write), reported but not an error. Exit codes: 0 the "
    "chain verifies, 1 a\n"
    "line does not (its number and byte offset are printed), 2 the file cannot be read or is not\n"
    "a stagecoach log (a device, a file without one event line).\n";

static const char *help_events =
    "usage: stagecoach events FILE | --db FILE [--task ID] [--type T] [--json]\n"
    "\n"
    "Prints a log as a timeline: time, task, epoch, sequence number, type, stage, status and a\n"
    "detail. --task keeps one task's events (the id or its last characters); --type keeps one\n"
    "type (stage.failed, or a prefix such as approval); --json prints the raw lines. --db FILE\n"
    "(or --store sqlite:FILE) reads an SQLite database's events instead, in the order stored.\n";

static const char *help_tail =
    "usage: stagecoach tail ADDR [--tenant T] [--task ID] [--from-seq N] [--type T]... [--json]\n"
    "                      [--token-file F]\n"
    "\n"
    "Follows the event stream of a `run --socket ADDR` (or any socket server) and prints it as\n"
    "`stagecoach events` does; --json prints the raw lines. --from-seq N (with --task) replays\n"
    "the task's events from N first. Exit codes: 0 the server closed the stream, 1 the server\n"
    "dropped this client (it read too slowly) or said something went wrong, 2 usage or no\n"
    "connection, 6 the token was refused.\n";

static const char *help_pending =
    "usage: stagecoach pending ADDR [--json] [--token-file F]\n"
    "\n"
    "Lists the approvals the server's engine waits for: task, stage, reason, approvals so far\n"
    "and needed, deadline. Needs a viewer token (--token-file F or $STAGECOACH_TOKEN).\n"
    "Exit codes: 0 listed, 1 refused by the server, 2 usage or no connection, 6 the token was\n"
    "refused.\n";

static const char *help_approve =
    "usage: stagecoach approve|reject ADDR TASK STAGE [--comment C] [--token-file F]\n"
    "\n"
    "Approves or rejects the approval gate of STAGE of task TASK over a socket. The reviewer\n"
    "recorded is the name of the token (--token-file F, or $STAGECOACH_TOKEN), which needs the\n"
    "approver role. Exit codes: 0 recorded, 1 refused by the engine (the message says why: not\n"
    "waiting for approval, unknown task), 2 usage or no connection, 6 the token was refused.\n";

static const char *help_validate =
    "usage: stagecoach validate PIPELINE.json\n"
    "\n"
    "Checks a pipeline file and prints its stages and the plan fingerprint (exit 0), or every\n"
    "error as FILE:LINE:COLUMN: message (exit 2).\n";

int cli_usage_error(const char *cmd, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "stagecoach %s: ", cmd);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  return CLI_EXIT_USAGE;
}

int cli_option(int argc, char **argv, int *i, const char *name, const char **value) {
  size_t len = strlen(name);
  const char *a = argv[*i];
  if (strncmp(a, name, len) != 0) return 0;
  if (a[len] == '=') {
    *value = a + len + 1;
    return 1;
  }
  if (a[len] != '\0') return 0;
  if (*i + 1 >= argc) return -1;
  *value = argv[++*i];
  return 1;
}

int cli_operand(const char *cmd, const char *arg, const char *what, const char **slot) {
  if (arg[0] == '-' && arg[1] != '\0')
    return cli_usage_error(cmd, "unknown option '%s' (see stagecoach %s --help)", arg, cmd);
  if (*slot != NULL) return cli_usage_error(cmd, "one %s at a time ('%s')", what, arg);
  *slot = arg;
  return 0;
}

static bool wants_help(int argc, char **argv) {
  for (int i = 0; i < argc; i++)
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) return true;
  return false;
}

/* ---- verify ---- */

static int cmd_verify(int argc, char **argv) {
  const char *archive = NULL;
  if (argc == 3 && strcmp(argv[1], "--archive") == 0) {
    archive = argv[2];
    argc = 1;
  }
  if (argc != 1 || argv[0][0] == '-')
    return cli_usage_error("verify", "give one log file (stagecoach verify FILE [--archive OLD])");
  sc_jsonl_report r;
  int rc = sc_jsonl_verify(argv[0], &r);
  if (rc == SC_ENOTFOUND || rc == SC_EIO || rc == SC_EPARSE) /* EPARSE: not a log at all */
    return cli_usage_error("verify", "%s", sc_error_message());
  if (rc == SC_ECORRUPT) {
    printf("%s: chain BROKEN at line %lld\n  %s\n  %llu lines before it verify (%llu bytes)\n",
           argv[0], (long long)r.first_bad_line, sc_error_message(),
           (unsigned long long)(r.first_bad_line - 1), (unsigned long long)r.good_bytes);
    return CLI_EXIT_FAILED;
  }
  printf("%s: %llu lines, %llu bytes, chain verified\n", argv[0], (unsigned long long)r.lines,
         (unsigned long long)r.bytes);
  if (r.torn_tail)
    printf("  torn tail: %llu bytes after line %llu (a crash mid-write; never acknowledged; cut "
           "when the log is next opened)\n",
           (unsigned long long)(r.bytes - r.good_bytes), (unsigned long long)r.lines);
  if (archive != NULL) {
    rc = sc_jsonl_verify_link(argv[0], archive);
    if (rc == SC_ENOTFOUND || rc == SC_EIO || rc == SC_EPARSE)
      return cli_usage_error("verify", "%s", sc_error_message());
    if (rc != SC_OK) {
      printf("%s: NOT compacted from %s\n  %s\n", argv[0], archive, sc_error_message());
      return CLI_EXIT_FAILED;
    }
    printf("  compacted from %s: its first line names that log's last chain value\n", archive);
  }
  return CLI_EXIT_COMPLETED;
}

/* ---- events ---- */

static const char *member_string(const cJSON *o, const char *name) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

static void event_detail(const sc_event *ev, char *buf, size_t cap) {
  const cJSON *err = cJSON_GetObjectItemCaseSensitive(ev->data, "error");
  const char *msg = member_string(err, "message");
  buf[0] = '\0';
  if (msg) {
    snprintf(buf, cap, "%s", msg);
    char *nl = strchr(buf, '\n');
    if (nl) *nl = '\0';
  }
  const char *s;
  if ((s = member_string(ev->data, "reviewer")))
    snprintf(buf, cap, "by %s%s%s", s, member_string(ev->data, "comment") ? ": " : "",
             member_string(ev->data, "comment") ? member_string(ev->data, "comment") : "");
  else if ((s = member_string(ev->data, "recovered_from")))
    snprintf(
        buf, cap, "from %s (%s)", s,
        or_default(member_string(ev->data, "mode"),
                   or_default(member_string(cJSON_GetObjectItemCaseSensitive(ev->data, "recovery"),
                                            "mode"),
                              "?")));
  else if ((s = member_string(ev->data, "reason")) && !msg)
    snprintf(buf, cap, "%s", s);
  else if ((s = member_string(ev->data, "action")))
    snprintf(buf, cap, "-> %s", s);
  const cJSON *retry = cJSON_GetObjectItemCaseSensitive(ev->data, "will_retry");
  if (cJSON_IsTrue(retry)) snprintf(buf + strlen(buf), cap - strlen(buf), " (will retry)");
}

void cli_print_event(FILE *out, const sc_event *ev) {
  time_t sec = (time_t)(ev->time_ns / 1000000000);
  struct tm tm;
  gmtime_r(&sec, &tm);
  char when[32], detail[300];
  strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm);
  event_detail(ev, detail, sizeof(detail));
  fprintf(out, "%s.%03d  %s  e%llu #%-3llu %-19s %-14s %-17s %s\n", when,
          (int)(ev->time_ns / 1000000 % 1000), ev->task_id, (unsigned long long)ev->epoch,
          (unsigned long long)ev->seq, sc_event_type_name(ev->type) + strlen("stagecoach."),
          ev->stage ? ev->stage : "-", sc_task_status_name(ev->status), detail);
}

static bool id_matches(const char *id, const char *want) {
  size_t a = strlen(id), b = strlen(want);
  return strcmp(id, want) == 0 || (b >= 4 && b <= a && strcmp(id + a - b, want) == 0);
}

static int cmd_events(int argc, char **argv) {
  const char *file = NULL, *task = NULL, *type = NULL, *db = NULL, *store = NULL;
  bool json = false;
  for (int i = 0; i < argc; i++) {
    int m;
    if ((m = cli_option(argc, argv, &i, "--task", &task)) != 0 ||
        (m = cli_option(argc, argv, &i, "--type", &type)) != 0 ||
        (m = cli_option(argc, argv, &i, "--db", &db)) != 0 ||
        (m = cli_option(argc, argv, &i, "--store", &store)) != 0) {
      if (m < 0) return cli_usage_error("events", "%s needs a value", argv[i]);
      continue;
    }
    if (strcmp(argv[i], "--json") == 0) {
      json = true;
      continue;
    }
    if (cli_operand("events", argv[i], "log", &file) != 0) return CLI_EXIT_USAGE;
  }
  if (store && cli_store_uri(store, &file, &db, "events") != CLI_EXIT_COMPLETED)
    return CLI_EXIT_USAGE;
  if (db != NULL) { /* a database: its events, the same lines the log would hold */
    if (file) return cli_usage_error("events", "give a log or --db FILE, not both");
    return cli_events_db(db, task, type, json, id_matches);
  }
  if (file == NULL) return cli_usage_error("events", "which log? (stagecoach events FILE)");
  if (type && strncmp(type, "stagecoach.", 11) == 0) type += 11;
  /* A log is a regular file: a device (/dev/zero) would be read for ever, a FIFO would wait for
   * a writer. */
  int fd = open(file, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return cli_usage_error("events", "%s: cannot read: %s", file, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return cli_usage_error("events", "%s is not a stagecoach log (not a regular file)", file);
  }
  FILE *f = fdopen(fd, "r");
  if (f == NULL) {
    close(fd);
    return cli_usage_error("events", "%s: cannot read: %s", file, strerror(errno));
  }
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  unsigned long lineno = 0, bad = 0, events = 0;
  bool first_is_ours = false;
  static const char ours[] = "{\"specversion\":\"1.0\",";
  while ((len = getline(&line, &cap, f)) > 0) {
    if (lineno++ == 0) first_is_ours = strncmp(line, ours, sizeof(ours) - 1) == 0;
    if (line[len - 1] != '\n') break; /* a torn tail */
    sc_event_doc *d;
    if (sc_event_parse(line, (size_t)len - 1, &d) != SC_OK) {
      /* A compacted log's first line names the chain it continues: no task's event. */
      if (lineno != 1 || strstr(line, "\"type\":\"stagecoach.log.compacted\"") == NULL) bad++;
      continue;
    }
    events++;
    const sc_event *ev = sc_event_doc_event(d);
    const char *t = sc_event_type_name(ev->type) + 11;
    if ((task && !id_matches(ev->task_id, task)) || (type && strncmp(t, type, strlen(type)) != 0)) {
      sc_event_doc_free(d);
      continue;
    }
    if (json)
      fwrite(line, 1, (size_t)len, stdout);
    else
      cli_print_event(stdout, ev);
    sc_event_doc_free(d);
  }
  int read_error = ferror(f) ? errno : 0;
  free(line);
  fclose(f);
  if (read_error != 0)
    return cli_usage_error("events", "%s: cannot read: %s", file, strerror(read_error));
  if (events == 0 && lineno > 0 && !first_is_ours)
    return cli_usage_error(
        "events", "%s is not a stagecoach log: none of its %lu lines is an event", file, lineno);
  if (bad) fprintf(stderr, "stagecoach events: %lu lines of %s are not events\n", bad, file);
  return CLI_EXIT_COMPLETED;
}

/* ---- validate ---- */

static void print_stages(const cJSON *config) {
  const cJSON *stages = cJSON_GetObjectItemCaseSensitive(config, "stages");
  int i = 0;
  for (const cJSON *st = stages ? stages->child : NULL; st; st = st->next, i++) {
    const char *name = member_string(st, "name"), *kind = member_string(st, "kind");
    printf("  %2d  %-20s %-8s", i + 1, name ? name : "?", kind ? kind : "?");
    const cJSON *v;
    if ((v = cJSON_GetObjectItemCaseSensitive(st, "timeout_ms")) && cJSON_IsNumber(v))
      printf(" timeout %.0f ms", v->valuedouble);
    const cJSON *retry = cJSON_GetObjectItemCaseSensitive(st, "retry");
    if ((v = cJSON_GetObjectItemCaseSensitive(retry, "max_attempts")) && cJSON_IsNumber(v))
      printf(" attempts %.0f", v->valuedouble);
    const cJSON *approval = cJSON_GetObjectItemCaseSensitive(st, "approval");
    if (approval && !cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(approval, "required")))
      printf(" approval");
    if ((v = cJSON_GetObjectItemCaseSensitive(st, "effect")) && cJSON_IsString(v))
      printf(" %s", v->valuestring);
    printf("\n");
  }
}

static int cmd_validate(int argc, char **argv) {
  if (argc != 1 || argv[0][0] == '-')
    return cli_usage_error("validate",
                           "give one pipeline file (stagecoach validate PIPELINE.json)");
  cli_pipeline p = {0};
  char err[8192];
  if (cli_pipeline_load(argv[0], NULL, &p, err, sizeof(err)) != 0) {
    fputs(err, stderr);
    return CLI_EXIT_USAGE;
  }
  printf("%s: plan %s, tenant %s\n", argv[0], p.plan ? p.plan : "(none)",
         p.tenant ? p.tenant : "(none)");
  print_stages(p.config);
  printf("fingerprint %s\n", p.fingerprint);
  if (p.previous_config) {
    char fp[72];
    sc_plan_fingerprint(NULL, NULL, p.previous_config, fp);
    printf("previous_config (for rollback):\n");
    print_stages(p.previous_config);
    printf("fingerprint %s\n", fp);
  }
  cli_pipeline_free(&p);
  return CLI_EXIT_COMPLETED;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fputs(usage_text, stderr);
    return CLI_EXIT_USAGE;
  }
  /* Descriptors 0, 1 and 2 are always open: started with one closed, the next file we open (the
   * log, the loop's epoll) would take its number, and a progress line would go into it. */
  for (int fd = 0; fd <= 2; fd++)
    if (fcntl(fd, F_GETFD) == -1 && errno == EBADF && open("/dev/null", O_RDWR) != fd)
      return CLI_EXIT_USAGE;
  /* A reader of our output that goes away (`| head`, a closed pipe) must not end a run as a crash
   * would: the writes fail and the run goes on. Commands get the default back (exec.c). */
  signal(SIGPIPE, SIG_IGN);
  /* A file size limit (ulimit -f) reached by the log is a failed write (EFBIG), reported as any
   * failed write is (exit 5), not a death by SIGXFSZ that leaves the commands orphaned. */
  signal(SIGXFSZ, SIG_IGN);
  const char *cmd = argv[1];
  if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
    printf("stagecoach %s\n", SC_VERSION_STRING);
    return CLI_EXIT_COMPLETED;
  }
  if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
    fputs(usage_text, stdout);
    return CLI_EXIT_COMPLETED;
  }
  static const struct {
    const char *name, *help;
    int (*fn)(int, char **);
  } commands[] = {
      {"run", NULL, cli_run},
      {"recover", NULL, cli_recover},
      {"verify", NULL, cmd_verify},
      {"events", NULL, cmd_events},
      {"validate", NULL, cmd_validate},
      {"tail", NULL, cli_tail},
      {"pending", NULL, cli_pending},
      {"approve", NULL, cli_approve},
      {"reject", NULL, cli_reject},
      {"compact", NULL, cli_compact},
      {"checkpoints", NULL, cli_checkpoints},
      {"retain", NULL, cli_retain},
      {"import", NULL, cli_import},
  };
  const char *helps[] = {help_run,       help_recover,     help_verify,          help_events,
                         help_validate,  help_tail,        help_pending,         help_approve,
                         help_approve,   cli_help_compact, cli_help_checkpoints, cli_help_retain,
                         cli_help_import};
  for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
    if (strcmp(cmd, commands[i].name) != 0) continue;
    if (wants_help(argc - 2, argv + 2)) {
      fputs(helps[i], stdout);
      return CLI_EXIT_COMPLETED;
    }
    return commands[i].fn(argc - 2, argv + 2);
  }
  fprintf(stderr, "stagecoach: unknown command '%s'\n\n%s", cmd, usage_text);
  return CLI_EXIT_USAGE;
}
