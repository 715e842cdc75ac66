/* `stagecoach run` and `stagecoach recover`: an engine with the exec kind, the durable log, live
 * progress, approval prompts on a terminal, and SIGINT/SIGTERM that cancel cleanly (a second one
 * exits at once). */
#define _GNU_SOURCE /* memmem */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "../../events/internal.h"
#include "jsonpos.h"

typedef struct prompt {
  char *task_id, *stage;
  struct prompt *next;
} prompt;

/* What the engine emitted for one task: the type of each event by seq, so that a log that could
 * not store them all can be told which ones it lacks. */
typedef struct emitted {
  char *task_id;
  uint8_t *types; /* types[seq - 1] */
  size_t n, cap;
} emitted;

typedef struct runtime {
  uv_loop_t loop;
  sc_engine *e;
  cli_exec *exec;
  sc_jsonl *log;
  const char *log_path;
  sc_sqlite *db; /* --db: the SQLite store, a second durable sink beside the log or alone */
  const char *db_path;
  sc_socket *socket;      /* --socket: the event stream and control (docs/socket.md) */
  uv_timer_t socket_tick; /* keeps the loop turning while a task waits for a socket client */
  emitted *emitted;
  size_t nemitted, capemitted;
  cli_progress *progress;
  bool live, prompts;
  uv_signal_t sigint, sigterm;
  int interrupts;
  uv_timer_t stopping; /* after the first interrupt: waits for the commands to be gone */
  char cancel_reason[64];
  /* Approval prompts, one at a time, read from the terminal. */
  prompt *queue;
  bool asking, asking_comment, decision_approve;
  uv_tty_t tty;
  bool tty_open;
  char line[512];
  size_t line_len;
} runtime;

/* ---- approvals on a terminal ---- */

static void ask_next(runtime *rt);

static const char *reviewer(void) {
  const char *u = getenv("USER");
  return u && *u ? u : "operator";
}

static void prompt_pop(runtime *rt) {
  prompt *p = rt->queue;
  rt->queue = p->next;
  free(p->task_id);
  free(p->stage);
  free(p);
}

static void decide(runtime *rt, const char *comment) {
  prompt *p = rt->queue;
  sc_task *t = sc_engine_find_task(rt->e, p->task_id);
  int rc = t == NULL ? SC_ENOTFOUND
           : rt->decision_approve
               ? sc_task_approve(t, p->stage, reviewer(), comment && *comment ? comment : NULL)
               : sc_task_reject(t, p->stage, reviewer(), comment && *comment ? comment : NULL);
  if (rc != SC_OK) cli_progress_say(rt->progress, "  (not recorded: %s)", sc_error_message());
  prompt_pop(rt);
  rt->asking = false;
  cli_progress_resume(rt->progress);
  ask_next(rt);
}

static void on_line(runtime *rt, char *line) {
  if (!rt->asking) return;
  while (*line == ' ')
    line++;
  if (!rt->asking_comment) {
    if (strcmp(line, "a") == 0 || strcmp(line, "approve") == 0 || strcmp(line, "y") == 0) {
      rt->decision_approve = true;
    } else if (strcmp(line, "r") == 0 || strcmp(line, "reject") == 0 || strcmp(line, "n") == 0) {
      rt->decision_approve = false;
    } else {
      fprintf(stdout, "  [a]pprove or [r]eject? ");
      fflush(stdout);
      return;
    }
    rt->asking_comment = true;
    fprintf(stdout, "  comment (optional): ");
    fflush(stdout);
    return;
  }
  rt->asking_comment = false;
  decide(rt, line);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  runtime *rt = h->data;
  buf->base = rt->line + rt->line_len;
  buf->len = sizeof(rt->line) - 1 - rt->line_len;
}

static void stop_reading(runtime *rt) {
  if (rt->tty_open) uv_read_stop((uv_stream_t *)&rt->tty);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  (void)buf;
  runtime *rt = s->data;
  if (n < 0) { /* end of input: nobody will answer; leave the decision to the stage's policy */
    stop_reading(rt);
    rt->asking = false;
    cli_progress_resume(rt->progress);
    return;
  }
  rt->line_len += (size_t)n;
  char *nl;
  while ((nl = memchr(rt->line, '\n', rt->line_len)) != NULL) {
    *nl = '\0';
    if (nl > rt->line && nl[-1] == '\r') nl[-1] = '\0';
    char text[512];
    snprintf(text, sizeof(text), "%s", rt->line);
    size_t used = (size_t)(nl - rt->line) + 1;
    memmove(rt->line, nl + 1, rt->line_len - used);
    rt->line_len -= used;
    on_line(rt, text);
  }
  if (rt->line_len >= sizeof(rt->line) - 1) rt->line_len = 0; /* an overlong line: drop it */
  if (!rt->asking) stop_reading(rt);
}

static void ask_next(runtime *rt) {
  if (rt->asking || rt->queue == NULL || !rt->tty_open) return;
  prompt *p = rt->queue;
  sc_task *t = sc_engine_find_task(rt->e, p->task_id);
  if (t == NULL || sc_task_get_status(t) != SC_TASK_AWAITING_APPROVAL) {
    prompt_pop(rt);
    ask_next(rt);
    return;
  }
  rt->asking = true;
  rt->asking_comment = false;
  cli_progress_hold(rt->progress);
  fprintf(stdout, "approval needed: stage '%s' of task %s. [a]pprove or [r]eject? ", p->stage,
          p->task_id);
  fflush(stdout);
  uv_read_start((uv_stream_t *)&rt->tty, on_alloc, on_read);
}

/* Whether ev settles the gate a prompt asks about, so the question no longer stands. */
static bool settles(const sc_event *ev, const prompt *p) {
  if (strcmp(ev->task_id, p->task_id) != 0) return false;
  switch (ev->type) {
    case SC_EV_APPROVAL_GRANTED:
    case SC_EV_APPROVAL_REJECTED:
    case SC_EV_APPROVAL_TIMED_OUT: return ev->stage != NULL && strcmp(ev->stage, p->stage) == 0;
    case SC_EV_TASK_PAUSED:
    case SC_EV_TASK_CANCELLED:
    case SC_EV_TASK_FAILED:
    case SC_EV_TASK_COMPLETED:
    case SC_EV_ROLLBACK_COMPLETED:
    case SC_EV_ROLLBACK_FAILED: return true;
    default: return false;
  }
}

/* The gate of the question on screen was settled elsewhere (its timeout, a cancel): drop the
 * question and stop reading the terminal, so nothing waits for an answer that means nothing. */
static void withdraw(runtime *rt, const sc_event *ev) {
  if (!rt->asking || rt->queue == NULL || !settles(ev, rt->queue)) return;
  fprintf(stdout, "\n  (no longer asked: %s)\n", sc_event_type_name(ev->type) + 11);
  fflush(stdout);
  stop_reading(rt);
  rt->line_len = 0;
  rt->asking = rt->asking_comment = false;
  prompt_pop(rt);
  cli_progress_resume(rt->progress);
  ask_next(rt);
}

/* Notes the event's type under its task and seq (nothing when out of memory: the report of what
 * the log lacks is then shorter, never wrong). */
static void note_emitted(runtime *rt, const sc_event *ev) {
  emitted *t = NULL;
  for (size_t i = rt->nemitted; i-- > 0 && t == NULL;)
    if (strcmp(rt->emitted[i].task_id, ev->task_id) == 0) t = &rt->emitted[i];
  if (t == NULL) {
    if (!sc__grow(&rt->emitted, &rt->capemitted, rt->nemitted + 1, sizeof(*rt->emitted), 8)) return;
    t = &rt->emitted[rt->nemitted];
    memset(t, 0, sizeof(*t));
    if ((t->task_id = strdup(ev->task_id)) == NULL) return;
    rt->nemitted++;
  }
  if (ev->seq == 0 || ev->seq > 1000000) return;
  if (!sc__grow(&t->types, &t->cap, (size_t)ev->seq, 1, 32)) return;
  t->types[ev->seq - 1] = (uint8_t)ev->type;
  if (ev->seq > t->n) t->n = ev->seq;
}

/* The progress subscriber, plus the approval prompts. */
static int on_event(const sc_event *ev, sc_ack *ack, void *udata) {
  runtime *rt = udata;
  if (rt->log != NULL || rt->db != NULL) note_emitted(rt, ev);
  withdraw(rt, ev);
  cli_progress_on_event(ev, ack, rt->progress);
  if (ev->type == SC_EV_APPROVAL_REQUESTED && rt->prompts) {
    prompt *p = calloc(1, sizeof(*p));
    if (p && (p->task_id = strdup(ev->task_id)) && (p->stage = strdup(ev->stage))) {
      prompt **tail = &rt->queue;
      while (*tail)
        tail = &(*tail)->next;
      *tail = p;
      ask_next(rt);
    } else if (p) {
      free(p->task_id);
      free(p);
    }
  }
  return SC_OK;
}

/* ---- signals ---- */

static void cancel_tasks(runtime *rt) {
  for (size_t i = 0; i < cli_progress_task_count(rt->progress); i++) {
    sc_task *t = sc_engine_find_task(rt->e, cli_progress_task_id(rt->progress, i));
    if (t != NULL && sc_transition_allowed(sc_task_get_status(t), SC_TASK_CANCELLED))
      sc_task_cancel(t, rt->cancel_reason);
  }
}

static void on_stopping(uv_timer_t *h) {
  runtime *rt = h->data;
  if (cli_exec_stopping(rt->exec) > 0) return;
  uv_timer_stop(h);
  cancel_tasks(rt);
}

static void on_signal(uv_signal_t *h, int signum) {
  runtime *rt = h->data;
  if (++rt->interrupts > 1) {
    /* The second interrupt: stop now, and take the commands down with us. No terminal event was
     * written (the cancel waits for the commands), so the log shows the tasks unfinished and
     * `recover` carries them on. */
    cli_exec_kill_all(rt->exec);
    fprintf(stderr, "\nstagecoach: interrupted again, exiting now\n");
    _exit(128 + signum);
  }
  snprintf(rt->cancel_reason, sizeof(rt->cancel_reason), "interrupted by %s",
           signum == SIGINT ? "SIGINT" : "SIGTERM");
  cli_progress_say(rt->progress, "stagecoach: %s; cancelling (again to exit at once)",
                   rt->cancel_reason);
  /* The tasks are cancelled (task.cancelled, a terminal event) only once their commands are
   * gone: until then a second interrupt leaves them as a crash would. */
  cli_exec_stop_all(rt->exec);
  if (cli_exec_stopping(rt->exec) == 0)
    cancel_tasks(rt);
  else
    uv_timer_start(&rt->stopping, on_stopping, 10, 10);
}

/* ---- setup and teardown ---- */

static void log_say(const char *message, void *udata) {
  runtime *rt = udata;
  cli_progress_say(rt->progress, "log: %s", message);
}

typedef struct run_options {
  const char *log, *fsync, *socket, *token_file, *socket_limits;
  const char *db; /* --db FILE, or --store sqlite:FILE */
  bool plain, no_prompt;
} run_options;

/* --fsync MODE; false for anything else. */
static bool parse_fsync(const char *text, sc_fsync_mode *mode) {
  if (text == NULL || strcmp(text, "batch") == 0)
    *mode = SC_FSYNC_BATCH;
  else if (strcmp(text, "always") == 0)
    *mode = SC_FSYNC_ALWAYS;
  else if (strcmp(text, "none") == 0)
    *mode = SC_FSYNC_NONE;
  else
    return false;
  return true;
}

/* Options every command shares, checked before anything is opened. */
static int check_options(const run_options *o, const char *cmd) {
  sc_fsync_mode mode;
  if (!parse_fsync(o->fsync, &mode))
    return cli_usage_error(cmd, "--fsync must be always, batch or none (got '%s')", o->fsync);
  if (o->fsync != NULL && o->log == NULL)
    return cli_usage_error(cmd, "--fsync needs --log FILE (it says how the log is written)");
  if ((o->token_file != NULL || o->socket_limits != NULL) && o->socket == NULL)
    return cli_usage_error(cmd, "--token-file and --socket-limits need --socket ADDR");
  return CLI_EXIT_COMPLETED;
}

/* Opens the log (after the pipeline was loaded and checked: a bad pipeline leaves the log
 * alone). existing: the log must be there already (recover). */
static int runtime_open_log(runtime *rt, const run_options *o, const char *cmd, bool existing) {
  sc_jsonl_options jo;
  sc_jsonl_options_init(&jo);
  (void)parse_fsync(o->fsync, &jo.fsync); /* check_options() refused anything else */
  jo.log = log_say;
  jo.log_udata = rt;
  jo.existing = existing;
  if (sc_jsonl_open(rt->e, o->log, &jo, &rt->log) != SC_OK)
    return cli_usage_error(cmd, "%s", sc_error_message());
  rt->log_path = o->log;
  return CLI_EXIT_COMPLETED;
}

/* --socket: the server, listening before the first event, replaying older events from the log. */
static int runtime_open_socket(runtime *rt, const run_options *o, const char *cmd) {
  if (o->socket == NULL) return CLI_EXIT_COMPLETED;
  sc_socket_options so;
  sc_socket_options_init(&so);
  so.token_file = o->token_file;
  so.log_path = o->log;
  if (o->socket_limits && cli_socket_limits(o->socket_limits, &so) != 0)
    return cli_usage_error(cmd,
                           "--socket-limits %s: give ring=N,queue=BYTES,line=BYTES,clients=N,"
                           "pending=N,wait=MS,finished=N,stall=MS (any of them)",
                           o->socket_limits);
  if (sc_socket_listen(rt->e, o->socket, &so, &rt->socket) != SC_OK)
    return cli_usage_error(cmd, "%s", sc_error_message());
  return CLI_EXIT_COMPLETED;
}

/* With a socket, a task that waits for a person (an approval, a resume) may get the answer from
 * a client: the run goes on while one does. */
static bool waits_for_socket(runtime *rt) {
  if (rt->socket == NULL || rt->interrupts > 0) return false;
  for (size_t i = 0; i < cli_progress_task_count(rt->progress); i++) {
    sc_task_status s = cli_progress_status(rt->progress, cli_progress_task_id(rt->progress, i));
    if (s == SC_TASK_AWAITING_APPROVAL || s == SC_TASK_PAUSED) return true;
  }
  return false;
}

static void on_socket_tick(uv_timer_t *t) {
  (void)t;
}

/* Opens what a run needs but the log; runtime_close() undoes any part of it, also after a
 * failure. */
static int runtime_open(runtime *rt, const run_options *o, const char *cmd) {
  memset(rt, 0, sizeof(*rt));
  uv_loop_init(&rt->loop);
  uv_signal_init(&rt->loop, &rt->sigint);
  uv_signal_init(&rt->loop, &rt->sigterm);
  uv_timer_init(&rt->loop, &rt->stopping);
  uv_timer_init(&rt->loop, &rt->socket_tick);
  rt->sigint.data = rt->sigterm.data = rt->stopping.data = rt;
  rt->live = !o->plain && isatty(STDOUT_FILENO);
  rt->prompts = !o->no_prompt && isatty(STDIN_FILENO);
  if (sc_engine_new(&rt->loop, NULL, &rt->e) != SC_OK)
    return cli_usage_error(cmd, "%s", sc_error_message());
  cli_progress_new(&rt->loop, rt->live, stdout, &rt->progress);
  cli_exec_register(rt->e, cli_progress_output, rt->progress, &rt->exec);
  sc_subscriber s;
  sc_subscriber_init(&s);
  s.on_event = on_event;
  s.udata = rt;
  sc_engine_subscribe(rt->e, &s, NULL);
  uv_signal_start(&rt->sigint, on_signal, SIGINT);
  uv_signal_start(&rt->sigterm, on_signal, SIGTERM);
  uv_unref((uv_handle_t *)&rt->sigint);
  uv_unref((uv_handle_t *)&rt->sigterm);
  if (rt->prompts && uv_tty_init(&rt->loop, &rt->tty, STDIN_FILENO, 1) == 0) {
    rt->tty.data = rt;
    rt->tty_open = true;
  }
  return CLI_EXIT_COMPLETED;
}

/* runtime_open, then the pipeline, loaded and checked before any log is opened: a bad one leaves
 * the log alone. */
static int runtime_open_with(runtime *rt, const run_options *o, const char *cmd,
                             const char *pipeline, cli_pipeline *p) {
  int code = runtime_open(rt, o, cmd);
  char err[4096];
  if (code == CLI_EXIT_COMPLETED && cli_pipeline_load(pipeline, rt->e, p, err, sizeof(err)) != 0) {
    fputs(err, stderr);
    code = CLI_EXIT_USAGE;
  }
  return code;
}

/* Runs until nothing is in flight, then says what happened to each task. */
static int runtime_finish(runtime *rt) {
  sc_engine_run(rt->e);
  while (waits_for_socket(rt)) {
    uv_timer_start(&rt->socket_tick, on_socket_tick, 100, 0);
    uv_run(&rt->loop, UV_RUN_ONCE);
    sc_engine_run(rt->e);
  }
  /* Commands still running (a cancelled stage waiting out its grace period) are waited for. */
  while (cli_exec_running(rt->exec) > 0)
    uv_run(&rt->loop, UV_RUN_ONCE);
  int code = CLI_EXIT_COMPLETED;
  bool any_failed = false, any_cancelled = false, all_rolled_back = true;
  for (size_t i = 0; i < cli_progress_task_count(rt->progress); i++) {
    const char *id = cli_progress_task_id(rt->progress, i);
    sc_task_status s = cli_progress_status(rt->progress, id);
    if (s != SC_TASK_ROLLED_BACK) all_rolled_back = false;
    if (s == SC_TASK_CANCELLED) any_cancelled = true;
    if (s == SC_TASK_FAILED || s == SC_TASK_ROLLBACK_FAILED || s == SC_TASK_PAUSED)
      any_failed = true;
    if (s == SC_TASK_AWAITING_APPROVAL) {
      any_failed = true;
      sc_task *t = sc_engine_find_task(rt->e, id);
      sc_pending_approval pa;
      if (t && sc_engine_pending_approvals(rt->e, &pa, 1) > 0)
        cli_progress_say(rt->progress,
                         "task %s waits for approval of stage '%s' and nothing here can give it "
                         "(no terminal, or --no-prompt, and no approval timeout)",
                         id, pa.stage);
    }
    if (s == SC_TASK_PAUSED)
      cli_progress_say(rt->progress, "task %s is paused (see task.paused above)", id);
  }
  cli_progress_summary(rt->progress);
  if (any_failed)
    code = CLI_EXIT_FAILED;
  else if (any_cancelled)
    code = CLI_EXIT_CANCELLED;
  else if (all_rolled_back && cli_progress_task_count(rt->progress) > 0)
    code = CLI_EXIT_ROLLED_BACK;
  return code;
}

/* The highest seq of each task the log holds, read back from the file (its lines up to the
 * first that does not parse). */
static void stored_seqs(const char *path, const runtime *rt, uint64_t *stored) {
  FILE *f = fopen(path, "r");
  if (f == NULL) return;
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  while ((len = getline(&line, &cap, f)) > 0) {
    if (line[len - 1] != '\n') break; /* a torn tail: not stored */
    sc_event_doc *d;
    if (sc_event_parse(line, (size_t)len - 1, &d) != SC_OK) continue;
    const sc_event *ev = sc_event_doc_event(d);
    for (size_t i = 0; i < rt->nemitted; i++)
      if (strcmp(rt->emitted[i].task_id, ev->task_id) == 0 && ev->seq > stored[i])
        stored[i] = ev->seq;
    sc_event_doc_free(d);
  }
  free(line);
  fclose(f);
}

/* After a failed write or sync: says, per task, which events the log does not hold. */
static void report_unstored(const runtime *rt, const char *why) {
  fprintf(stderr, "stagecoach: the log is incomplete: %s\n", why);
  uint64_t *stored = calloc(rt->nemitted ? rt->nemitted : 1, sizeof(*stored));
  if (stored != NULL) stored_seqs(rt->log_path, rt, stored);
  size_t unrecorded = 0, unfinished = 0;
  for (size_t i = 0; stored != NULL && i < rt->nemitted; i++) {
    const emitted *t = &rt->emitted[i];
    if (stored[i] >= t->n) continue;
    if (stored[i] == 0)
      unrecorded++; /* not even its task.created: no stage of it ran (a barrier) */
    else
      unfinished++;
    char list[512] = "";
    size_t shown = 0;
    for (uint64_t seq = stored[i] + 1; seq <= t->n && shown < 6; seq++, shown++)
      snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s#%llu %s", shown ? ", " : "",
               (unsigned long long)seq,
               sc_event_type_name((sc_event_type)t->types[seq - 1]) + strlen("stagecoach."));
    fprintf(stderr, "  not stored: task %s, events %s%s\n", t->task_id, list,
            t->n - stored[i] > 6 ? ", ..." : "");
  }
  free(stored);
  if (unfinished > 0 || stored == NULL)
    fprintf(stderr,
            "  the log shows %s unfinished: fix the cause, then `stagecoach recover` finishes "
            "%s\n",
            unfinished == 1 ? "that task" : "those tasks", unfinished == 1 ? "it" : "them");
  if (unrecorded > 0)
    fprintf(stderr,
            "  %s no event in the log, so no stage of %s ran: fix the cause, then run the same "
            "command again\n",
            unrecorded == 1 ? "one task has" : "some tasks have", unrecorded == 1 ? "it" : "them");
}

/* Closes everything; CLI_EXIT_INCOMPLETE when the log could not store every event. */
static int runtime_close(runtime *rt) {
  int code = CLI_EXIT_COMPLETED;
  while (rt->queue)
    prompt_pop(rt);
  if (rt->exec) {
    cli_exec_kill_all(rt->exec);
    for (int i = 0; i < 1000 && cli_exec_running(rt->exec) > 0; i++)
      uv_run(&rt->loop, UV_RUN_ONCE);
  }
  sc_socket_close(rt->socket); /* its clients get the last events first */
  if (rt->log && sc_jsonl_close(rt->log) != SC_OK) {
    report_unstored(rt, sc_error_message());
    code = CLI_EXIT_INCOMPLETE;
  }
  if (rt->db && cli_db_close(rt->db) != SC_OK) {
    fprintf(stderr, "stagecoach: the database is incomplete: %s\n", sc_error_message());
    /* Which tasks it holds at all, read again: one without even its task.created is not
     * recovered from there (no stage of it ran), it is run again. */
    size_t held = 0, missing = 0;
    for (size_t i = 0; i < rt->nemitted; i++) {
      int h = rt->db_path ? cli_db_file_holds_task(rt->db_path, rt->emitted[i].task_id) : -1;
      if (h == 0)
        missing++;
      else
        held++;
    }
    if (held > 0 || rt->nemitted == 0)
      fprintf(stderr, "  the tasks it shows unfinished stopped there: fix the cause, then "
                      "`stagecoach recover --db` finishes them\n");
    if (missing > 0)
      fprintf(stderr,
              "  %s no event in the database, so no stage of %s ran: fix the cause, then run "
              "the same command again\n",
              missing == 1 ? "one task has" : "some tasks have", missing == 1 ? "it" : "them");
    code = CLI_EXIT_INCOMPLETE;
  }
  for (size_t i = 0; i < rt->nemitted; i++) {
    free(rt->emitted[i].task_id);
    free(rt->emitted[i].types);
  }
  free(rt->emitted);
  sc_engine_free(rt->e);
  cli_exec_free(rt->exec);
  if (rt->progress) cli_progress_free(rt->progress);
  if (rt->tty_open) {
    uv_tty_reset_mode();
    uv_close((uv_handle_t *)&rt->tty, NULL);
  }
  uv_close((uv_handle_t *)&rt->sigint, NULL);
  uv_close((uv_handle_t *)&rt->sigterm, NULL);
  uv_close((uv_handle_t *)&rt->stopping, NULL);
  uv_close((uv_handle_t *)&rt->socket_tick, NULL);
  uv_run(&rt->loop, UV_RUN_DEFAULT);
  uv_loop_close(&rt->loop);
  return code;
}

/* ---- run ---- */

static int common_option(int argc, char **argv, int *i, run_options *o, int *rc) {
  int m;
  if ((m = cli_option(argc, argv, i, "--log", &o->log)) != 0) return *rc = m < 0 ? -1 : 0, 1;
  if ((m = cli_option(argc, argv, i, "--fsync", &o->fsync)) != 0) return *rc = m < 0 ? -1 : 0, 1;
  if ((m = cli_option(argc, argv, i, "--db", &o->db)) != 0) return *rc = m < 0 ? -1 : 0, 1;
  const char *uri;
  if ((m = cli_option(argc, argv, i, "--store", &uri)) != 0)
    return *rc = m < 0 ? -1 : cli_store_uri(uri, &o->log, &o->db, "store") ? -2 : 0, 1;
  if ((m = cli_option(argc, argv, i, "--socket", &o->socket)) != 0) return *rc = m < 0 ? -1 : 0, 1;
  if ((m = cli_option(argc, argv, i, "--token-file", &o->token_file)) != 0)
    return *rc = m < 0 ? -1 : 0, 1;
  if ((m = cli_option(argc, argv, i, "--socket-limits", &o->socket_limits)) != 0)
    return *rc = m < 0 ? -1 : 0, 1;
  if (strcmp(argv[*i], "--plain") == 0) return o->plain = true, *rc = 0, 1;
  if (strcmp(argv[*i], "--no-prompt") == 0) return o->no_prompt = true, *rc = 0, 1;
  return 0;
}

/* Whether the id is written as it is in a JSON string: no '"', '\\', control character or byte
 * above 0x7F (which the event writer may replace). */
static bool json_plain(const char *id) {
  for (const unsigned char *c = (const unsigned char *)id; *c; c++)
    if (*c < 0x20 || *c == '"' || *c == '\\' || *c >= 0x80) return false;
  return true;
}

/* Whether a log's compacted first line names id among the ids whose lines a compaction dropped
 * (a new run under one would repeat that run's idempotency keys). */
static bool compacted_dropped(const char *line, size_t len, const char *id) {
  cJSON *root = cJSON_ParseWithLength(line, len);
  const cJSON *data = cJSON_GetObjectItemCaseSensitive(root, "data");
  const cJSON *it, *ids = cJSON_GetObjectItemCaseSensitive(data, "dropped_task_ids");
  bool found = false;
  cJSON_ArrayForEach(it, ids) {
    if (cJSON_IsString(it) && strcmp(it->valuestring, id) == 0) found = true;
  }
  cJSON_Delete(root);
  return found;
}

/* Whether the log at path already holds events of the task id, or its compacted first line names
 * the id as dropped (false when there is no log). */
static bool log_holds_task(const char *path, const char *id) {
  FILE *f = fopen(path, "r");
  if (f == NULL) return false;
  char *line = NULL;
  size_t cap = 0, idlen = strlen(id);
  ssize_t len;
  bool found = false, plain = json_plain(id);
  while (!found && (len = getline(&line, &cap, f)) > 0 && line != NULL) {
    /* A plain id is in its lines as it is: the others are skipped cheaply. */
    if (plain && memmem(line, (size_t)len, id, idlen) == NULL) continue;
    if (memmem(line, len < 256 ? (size_t)len : 256, "\"type\":\"stagecoach.log.compacted\"", 33)) {
      found = compacted_dropped(line, (size_t)len, id);
      continue;
    }
    sc_event_doc *d;
    if (sc_event_parse(line, (size_t)len - (line[len - 1] == '\n'), &d) != SC_OK) continue;
    found = strcmp(sc_event_doc_event(d)->task_id, id) == 0;
    sc_event_doc_free(d);
  }
  free(line);
  fclose(f);
  return found;
}

/* Whether a and b name the same existing file. */
static bool same_file(const char *a, const char *b) {
  struct stat sa, sb;
  return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

/* The directory part of path resolved, then its last name: the same for "same" and "./same"
 * before the file exists. NULL when the directory does not resolve or out of memory. */
static char *resolved_name(const char *path) {
  const char *slash = strrchr(path, '/');
  char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
  char *real = dir ? realpath(dir, NULL) : NULL;
  free(dir);
  if (real == NULL) return NULL;
  const char *base = slash ? slash + 1 : path;
  size_t n = strlen(real) + strlen(base) + 2;
  char *out = malloc(n);
  if (out) snprintf(out, n, "%s/%s", real, base);
  free(real);
  return out;
}

/* Whether a and b are the same file, or would be once created. */
static bool same_path(const char *a, const char *b) {
  if (strcmp(a, b) == 0 || same_file(a, b)) return true;
  char *ra = resolved_name(a), *rb = resolved_name(b);
  bool same = ra && rb && strcmp(ra, rb) == 0;
  free(ra);
  free(rb);
  return same;
}

/* Whether path names the file our stdout or stderr goes to (--log /dev/stdout with stdout sent
 * to a file): progress lines would be written into the log. */
static bool is_our_output(const char *path) {
  struct stat sp, so;
  if (stat(path, &sp) != 0) return false;
  for (int fd = 1; fd <= 2; fd++)
    if (fstat(fd, &so) == 0 && sp.st_dev == so.st_dev && sp.st_ino == so.st_ino) return true;
  return false;
}

/* ---- trace context from the environment ---- */

/* A W3C tracestate list: at most 32 "key=value" members separated by commas (blanks around them
 * allowed), a key of lowercase letters, digits, '_', '-', '*' and '/' (one '@' for a tenant@system
 * key), a value of printable ASCII other than ',' and '=' not ending in a space. */
static bool tracestate_valid(const char *s) {
  size_t members = 0;
  while (*s != '\0') {
    while (*s == ' ' || *s == '\t')
      s++;
    const char *key = s;
    size_t at = 0;
    while ((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
           (*s != '\0' && strchr("_-*/@", *s) != NULL)) {
      at += *s == '@';
      s++;
    }
    size_t klen = (size_t)(s - key);
    if (klen == 0 || klen > 256 || at > 1 || *s != '=' || key[0] == '@' || s[-1] == '@')
      return false;
    const char *value = ++s;
    while (*s >= 0x20 && *s <= 0x7e && *s != ',' && *s != '=')
      s++;
    const char *end = s;
    while (end > value && (end[-1] == ' ' || end[-1] == '\t'))
      end--;
    if (end == value || end - value > 256) return false;
    while (*s == ' ' || *s == '\t')
      s++;
    if (++members > 32 || (*s != ',' && *s != '\0')) return false;
    if (*s == ',') s++;
  }
  return members > 0;
}

/* TRACEPARENT and TRACESTATE of our environment, the OpenTelemetry carriers: 0 with *traceparent
 * and *tracestate (NULL when unset), or CLI_EXIT_USAGE after saying what is wrong. A malformed
 * value is refused rather than half-used. */
static int trace_context(const char *cmd, const char **traceparent, const char **tracestate) {
  *traceparent = *tracestate = NULL;
  const char *tp = getenv("TRACEPARENT"), *ts = getenv("TRACESTATE");
  /* Exported but empty is the same as unset (a shell's `export TRACESTATE=`). */
  if (tp != NULL && tp[0] == '\0') tp = NULL;
  if (ts != NULL && ts[0] == '\0') ts = NULL;
  if (tp != NULL && !sc_traceparent_valid(tp))
    return cli_usage_error(cmd,
                           "TRACEPARENT \"%.80s\" is not a W3C traceparent "
                           "(00-<32 hex>-<16 hex>-<2 hex>, lowercase, ids not all zero)",
                           tp);
  if (ts != NULL && tp == NULL)
    return cli_usage_error(cmd, "TRACESTATE is set without TRACEPARENT: it belongs to a trace");
  if (ts != NULL && !tracestate_valid(ts))
    return cli_usage_error(cmd,
                           "TRACESTATE \"%.80s\" is not a W3C tracestate (up to 32 key=value "
                           "members separated by commas)",
                           ts);
  *traceparent = tp;
  *tracestate = ts;
  return 0;
}

int cli_run(int argc, char **argv) {
  run_options o = {0};
  const char *pipeline = NULL, *task_id = NULL;
  for (int i = 0; i < argc; i++) {
    int rc, m;
    if (common_option(argc, argv, &i, &o, &rc)) {
      if (rc == -2) return CLI_EXIT_USAGE;
      if (rc < 0) return cli_usage_error("run", "%s needs a value", argv[i]);
      continue;
    }
    if ((m = cli_option(argc, argv, &i, "--task-id", &task_id)) != 0) {
      if (m < 0) return cli_usage_error("run", "--task-id needs a value");
      continue;
    }
    if (cli_operand("run", argv[i], "pipeline", &pipeline) != 0) return CLI_EXIT_USAGE;
  }
  if (pipeline == NULL)
    return cli_usage_error("run", "which pipeline? (stagecoach run PIPELINE.json)");
  if (check_options(&o, "run") != CLI_EXIT_COMPLETED) return CLI_EXIT_USAGE;
  const char *traceparent, *tracestate;
  if (trace_context("run", &traceparent, &tracestate) != 0) return CLI_EXIT_USAGE;
  /* An id that is not UTF-8 would be stored with U+FFFD in place of its bad bytes, so two
   * distinct ids could become one in the log. */
  if (task_id != NULL && !cli_utf8_valid(task_id))
    return cli_usage_error("run",
                           "--task-id must be valid UTF-8 (an id with bad bytes would be stored "
                           "changed, and two ids could become one)");
  if (o.log != NULL && same_file(o.log, pipeline))
    return cli_usage_error("run", "--log %s is the pipeline file itself; give the log its own file",
                           o.log);
  if (o.log != NULL && is_our_output(o.log))
    return cli_usage_error("run",
                           "--log %s is where this command's own output goes; give the log its "
                           "own file",
                           o.log);
  if (o.db != NULL && (same_file(o.db, pipeline) || (o.log != NULL && same_path(o.db, o.log))))
    return cli_usage_error("run", "--db %s is the %s; give the database its own file", o.db,
                           same_file(o.db, pipeline) ? "pipeline file itself" : "log's file");
  runtime rt;
  cli_pipeline p = {0};
  int code = runtime_open_with(&rt, &o, "run", pipeline, &p);
  if (code == CLI_EXIT_COMPLETED && o.log != NULL) code = runtime_open_log(&rt, &o, "run", false);
  rt.db_path = o.db;
  if (code == CLI_EXIT_COMPLETED && o.db != NULL) code = cli_db_open(rt.e, o.db, 0, "run", &rt.db);
  if (code == CLI_EXIT_COMPLETED) code = runtime_open_socket(&rt, &o, "run");
  /* Read under the writer's lock: no other run can add the id meanwhile. */
  if (code == CLI_EXIT_COMPLETED && task_id != NULL && rt.db != NULL &&
      cli_db_holds_task(rt.db, task_id))
    code = cli_usage_error("run",
                           "task '%s' is already in %s: a database holds one task per id "
                           "(stagecoach recover --db carries an unfinished one on)",
                           task_id, o.db);
  if (code == CLI_EXIT_COMPLETED && task_id != NULL && o.log != NULL &&
      log_holds_task(o.log, task_id))
    code = cli_usage_error("run",
                           "task '%s' is already in %s: a log holds one task per id, or "
                           "recovery could not tell the runs apart (stagecoach recover carries "
                           "an unfinished one on)",
                           task_id, o.log);
  if (code == CLI_EXIT_COMPLETED) {
    sc_task_spec spec;
    sc_task_spec_init(&spec);
    spec.task_id = task_id;
    spec.tenant_id = p.tenant;
    spec.plan_id = p.plan;
    spec.config = p.config;
    spec.previous_config = p.previous_config;
    spec.traceparent = traceparent;
    spec.tracestate = tracestate;
    sc_task *t;
    if (sc_task_submit(rt.e, &spec, &t) != SC_OK) {
      code = cli_usage_error("run", "%s", sc_error_message());
    } else {
      code = runtime_finish(&rt);
    }
  }
  int closed = runtime_close(&rt);
  if (closed != CLI_EXIT_COMPLETED) code = closed;
  cli_pipeline_free(&p);
  return code;
}

/* ---- recover ---- */

/* --from STAGE: *before is the stage before it in the plan the recovery would run (NULL for the
 * first), so that recovery resumes at STAGE. Returns CLI_EXIT_COMPLETED or CLI_EXIT_USAGE. */
static int resume_at(sc_engine *e, const sc_recovery_request *req, const char *stage,
                     char **before) {
  cJSON *plan = NULL;
  sc_recovery_request probe = *req;
  probe.last_completed_stage = NULL;
  probe.context_digest = NULL;
  if (sc_recovery_plan(e, &probe, &plan) != SC_OK)
    return cli_usage_error("recover", "%s", sc_error_message());
  const cJSON *rerun = cJSON_GetObjectItemCaseSensitive(plan, "rerun");
  const cJSON *prev = NULL, *found = NULL;
  for (const cJSON *s = rerun ? rerun->child : NULL; s; prev = s, s = s->next)
    if (cJSON_IsString(s) && strcmp(s->valuestring, stage) == 0) {
      found = s;
      break;
    }
  int code = CLI_EXIT_COMPLETED;
  if (found == NULL) {
    char list[1024] = "";
    for (const cJSON *s = rerun ? rerun->child : NULL; s; s = s->next)
      snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s", *list ? ", " : "",
               s->valuestring);
    code = cli_usage_error("recover", "--from: unknown stage '%s' (stages: %s)", stage, list);
  } else if (prev != NULL && (*before = strdup(prev->valuestring)) == NULL) {
    code = cli_usage_error("recover", "out of memory");
  }
  cJSON_Delete(plan);
  return code;
}

int cli_recover(int argc, char **argv) {
  run_options o = {0};
  const char *pipeline = NULL, *mode = NULL, *from = NULL, *only = NULL, *checkpoint = NULL;
  bool dry_run = false;
  for (int i = 0; i < argc; i++) {
    int rc, m = 0;
    if (common_option(argc, argv, &i, &o, &rc)) {
      if (rc == -2) return CLI_EXIT_USAGE;
      if (rc < 0) return cli_usage_error("recover", "%s needs a value", argv[i]);
      continue;
    }
    if ((m = cli_option(argc, argv, &i, "--mode", &mode)) != 0 ||
        (m = cli_option(argc, argv, &i, "--from", &from)) != 0 ||
        (m = cli_option(argc, argv, &i, "--task", &only)) != 0 ||
        (m = cli_option(argc, argv, &i, "--from-checkpoint", &checkpoint)) != 0) {
      if (m < 0) return cli_usage_error("recover", "%s needs a value", argv[i]);
      continue;
    }
    if (strcmp(argv[i], "--dry-run") == 0) {
      dry_run = true;
      continue;
    }
    if (cli_operand("recover", argv[i], "pipeline", &pipeline) != 0) return CLI_EXIT_USAGE;
  }
  if (pipeline == NULL)
    return cli_usage_error("recover",
                           "which pipeline? (stagecoach recover PIPELINE.json --log FILE)");
  if (o.log == NULL && o.db == NULL)
    return cli_usage_error("recover",
                           "--log FILE or --db FILE is required: the store is what recovery reads");
  /* The store read: the log when one is named, else the database; --from-checkpoint reads the
   * database's checkpoints. The other one, when named, is written beside it. */
  bool from_db = o.log == NULL || checkpoint != NULL;
  if (checkpoint != NULL && o.db == NULL)
    return cli_usage_error("recover", "--from-checkpoint needs --db FILE (the checkpoints' store)");
  if (checkpoint != NULL && from != NULL)
    return cli_usage_error("recover", "--from-checkpoint and --from both say where to resume");
  if (mode != NULL && strcmp(mode, "retry") != 0 && strcmp(mode, "rollback") != 0 &&
      strcmp(mode, "compensate") != 0)
    return cli_usage_error("recover", "--mode must be retry, rollback or compensate (got '%s')",
                           mode);
  if (from != NULL && mode != NULL && strcmp(mode, "retry") != 0)
    return cli_usage_error("recover",
                           "--from names where a retry resumes; it does not go with "
                           "--mode %s",
                           mode);
  if (check_options(&o, "recover") != CLI_EXIT_COMPLETED) return CLI_EXIT_USAGE;
  /* Set: the recovered tasks join that trace; else each keeps the one the log recorded. */
  const char *traceparent, *tracestate;
  if (trace_context("recover", &traceparent, &tracestate) != 0) return CLI_EXIT_USAGE;
  const char *log_name = from_db ? o.db : o.log;
  if (o.db != NULL && same_file(o.db, pipeline))
    return cli_usage_error("recover", "--db %s is the pipeline file itself, not a database", o.db);
  if (o.db != NULL && o.log != NULL && same_path(o.db, o.log))
    return cli_usage_error("recover", "--db %s is the log's file; give the database its own file",
                           o.db);
  if (o.log != NULL && same_file(o.log, pipeline))
    return cli_usage_error("recover", "--log %s is the pipeline file itself, not a log", o.log);
  if (o.log != NULL && is_our_output(o.log))
    return cli_usage_error("recover",
                           "--log %s is where this command's own output goes; give the log its "
                           "own file",
                           o.log);

  runtime rt;
  if (dry_run) o.plain = true;
  cli_pipeline p = {0};
  int code = runtime_open_with(&rt, &o, "recover", pipeline, &p);
  sc_unfinished *todo = NULL;
  size_t n = 0;
  int rc = SC_OK;
  struct stat dst;
  if (code == CLI_EXIT_COMPLETED && from_db && dry_run && checkpoint == NULL &&
      stat(o.db, &dst) == 0 && S_ISREG(dst.st_mode) && dst.st_size == 0) {
    /* Created, never written (a run killed as it started): what a writer would find, no task. */
  } else if (code == CLI_EXIT_COMPLETED && from_db) {
    /* The database's writer's lock first (a dry run opens it read-only), then the read. */
    code = cli_db_open(dry_run ? NULL : rt.e, o.db, dry_run ? CLI_DB_READONLY : CLI_DB_EXISTING,
                       "recover", &rt.db);
    if (code == CLI_EXIT_COMPLETED) {
      rc = checkpoint ? cli_db_restore(rt.db, checkpoint, &todo)
                      : cli_db_unfinished(rt.db, &todo, &n);
      if (checkpoint && rc == SC_OK) n = 1;
    }
    if (code == CLI_EXIT_COMPLETED && rc == SC_OK && o.log != NULL && !dry_run)
      code = runtime_open_log(&rt, &o, "recover", false); /* written beside it */
  } else if (code == CLI_EXIT_COMPLETED && dry_run) {
    rc = sc_jsonl_scan(o.log, &todo, &n, NULL); /* a dry run takes no lock and changes nothing */
  } else if (code == CLI_EXIT_COMPLETED) {
    /* The writer's lock first, then the scan through it: what is recovered is what the lock
     * holder sees, and a second recover is refused before it reads a byte. */
    sc_jsonl_options jo;
    sc_jsonl_options_init(&jo);
    (void)parse_fsync(o.fsync, &jo.fsync);
    jo.log = log_say;
    jo.log_udata = &rt;
    jo.existing = true;
    rc = sc_jsonl_open(rt.e, o.log, &jo, &rt.log);
    if (rc == SC_OK) {
      rt.log_path = o.log;
      rc = sc_jsonl_unfinished(rt.log, &todo, &n);
    }
    if (rc == SC_OK && o.db != NULL)
      code = cli_db_open(rt.e, o.db, 0, "recover", &rt.db); /* written beside it */
    rt.db_path = o.db;
  }
  if (code == CLI_EXIT_COMPLETED && rc == SC_ECORRUPT) {
    fprintf(stderr, "stagecoach recover: %s\n", sc_error_message());
    code = CLI_EXIT_FAILED;
  } else if (code == CLI_EXIT_COMPLETED && rc != SC_OK) {
    code = cli_usage_error("recover", "%s", sc_error_message());
  }
  /* Every request is made and checked before any task starts, so a refusal changes nothing. */
  sc_recovery_request *reqs = calloc(n ? n : 1, sizeof(*reqs));
  char **resume = calloc(n ? n : 1, sizeof(*resume));
  size_t chosen = 0, other_plans = 0;
  if (reqs == NULL || resume == NULL) code = cli_usage_error("recover", "out of memory");
  for (size_t i = 0; i < n && code == CLI_EXIT_COMPLETED; i++) {
    sc_recovery_request req = todo[i].request;
    if (only != NULL && strcmp(req.recovered_from, only) != 0) continue;
    /* A task without a plan id belongs to a pipeline without "plan", and only to one of those. */
    bool same_plan = p.plan == NULL || req.plan_id == NULL ? p.plan == req.plan_id
                                                           : strcmp(p.plan, req.plan_id) == 0;
    if (only == NULL && !same_plan) {
      other_plans++; /* a task of another pipeline that shares the log: its own recover runs it */
      continue;
    }
    /* The pipeline as it is now: a changed plan is caught by the logged fingerprint. */
    req.config = p.config;
    if (traceparent != NULL) {
      req.traceparent = traceparent;
      req.tracestate = tracestate; /* the state of that trace, not of the old one */
    }
    req.previous_config = p.previous_config ? p.previous_config : todo[i].request.previous_config;
    if (mode != NULL)
      req.mode = strcmp(mode, "rollback") == 0     ? SC_RECOVER_ROLLBACK
                 : strcmp(mode, "compensate") == 0 ? SC_RECOVER_COMPENSATE
                                                   : SC_RECOVER_RETRY;
    if (from != NULL) {
      /* Resume at a chosen stage: the one before it counts as the last completed. */
      code = resume_at(rt.e, &req, from, &resume[chosen]);
      if (code != CLI_EXIT_COMPLETED) break;
      req.last_completed_stage = resume[chosen];
      req.context_digest = NULL; /* the context is the log's latest, whatever stage we go back to */
    }
    cJSON *plan = NULL;
    if (sc_recovery_plan(rt.e, &req, &plan) != SC_OK) {
      fprintf(stderr, "stagecoach recover: task %s: %s\n", req.recovered_from, sc_error_message());
      code = CLI_EXIT_USAGE;
      break;
    }
    if (dry_run) {
      char *text = cJSON_Print(plan);
      printf("task %s (%s in the log):\n%s\n", req.recovered_from,
             sc_task_status_name(todo[i].status), text);
      free(text);
    }
    cJSON_Delete(plan);
    reqs[chosen++] = req;
  }
  if (code == CLI_EXIT_COMPLETED && !dry_run) code = runtime_open_socket(&rt, &o, "recover");
  if (code == CLI_EXIT_COMPLETED && only != NULL && chosen == 0)
    code = cli_usage_error("recover", "no unfinished task '%s' in %s", only, log_name);
  if (code == CLI_EXIT_COMPLETED && chosen == 0) {
    if (other_plans > 0)
      printf("nothing to recover for plan '%s' in %s (%zu unfinished task%s of other plans)\n",
             p.plan ? p.plan : "(unnamed)", log_name, other_plans, other_plans == 1 ? "" : "s");
    else
      printf("nothing to recover: every task in %s finished\n", log_name);
  }
  size_t started = 0;
  for (size_t i = 0; i < chosen && code == CLI_EXIT_COMPLETED && !dry_run; i++) {
    if (sc_recover_from_restart(rt.e, &reqs[i], NULL) == SC_OK) {
      started++;
    } else {
      /* Checked above; only running out of memory gets here. */
      fprintf(stderr, "stagecoach recover: task %s: %s\n", reqs[i].recovered_from,
              sc_error_message());
      code = CLI_EXIT_FAILED;
    }
  }
  if (started > 0) { /* the ones that started run to their end, whatever became of the others */
    int finished = runtime_finish(&rt);
    if (code == CLI_EXIT_COMPLETED) code = finished;
  }
  int closed = runtime_close(&rt);
  if (closed != CLI_EXIT_COMPLETED) code = closed;
  cli_pipeline_free(&p);
  for (size_t i = 0; resume != NULL && i < n; i++)
    free(resume[i]);
  free(resume);
  free(reqs);
  sc_unfinished_free(todo, n);
  return code;
}
