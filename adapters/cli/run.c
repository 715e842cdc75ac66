/* `stagecoach run` and `stagecoach recover`: an engine with the exec kind, the durable log, live
 * progress, approval prompts on a terminal, and SIGINT/SIGTERM that cancel cleanly (a second one
 * exits at once). */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

typedef struct prompt {
  char *task_id, *stage;
  struct prompt *next;
} prompt;

typedef struct runtime {
  uv_loop_t loop;
  sc_engine *e;
  cli_exec *exec;
  sc_jsonl *log;
  cli_progress *progress;
  bool live, prompts;
  uv_signal_t sigint, sigterm;
  int interrupts;
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

/* The progress subscriber, plus the approval prompts. */
static int on_event(const sc_event *ev, sc_ack *ack, void *udata) {
  runtime *rt = udata;
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

static void on_signal(uv_signal_t *h, int signum) {
  runtime *rt = h->data;
  if (++rt->interrupts > 1) {
    /* The second interrupt: stop now, and take the commands down with us. */
    cli_exec_kill_all(rt->exec);
    fprintf(stderr, "\nstagecoach: interrupted again, exiting now\n");
    _exit(128 + signum);
  }
  char reason[64];
  snprintf(reason, sizeof(reason), "interrupted by %s", signum == SIGINT ? "SIGINT" : "SIGTERM");
  cli_progress_say(rt->progress, "stagecoach: %s; cancelling (again to exit at once)", reason);
  for (size_t i = 0; i < cli_progress_task_count(rt->progress); i++) {
    sc_task *t = sc_engine_find_task(rt->e, cli_progress_task_id(rt->progress, i));
    if (t != NULL && sc_transition_allowed(sc_task_get_status(t), SC_TASK_CANCELLED))
      sc_task_cancel(t, reason);
  }
}

/* ---- setup and teardown ---- */

static void log_say(const char *message, void *udata) {
  runtime *rt = udata;
  cli_progress_say(rt->progress, "log: %s", message);
}

typedef struct run_options {
  const char *log, *fsync;
  bool plain, no_prompt;
} run_options;

static int runtime_open(runtime *rt, const run_options *o, const char *cmd) {
  memset(rt, 0, sizeof(*rt));
  uv_loop_init(&rt->loop);
  rt->live = !o->plain && isatty(STDOUT_FILENO);
  rt->prompts = !o->no_prompt && isatty(STDIN_FILENO);
  if (sc_engine_new(&rt->loop, NULL, &rt->e) != SC_OK)
    return cli_usage_error(cmd, "%s", sc_error_message());
  cli_progress_new(&rt->loop, rt->live, stdout, &rt->progress);
  cli_exec_register(rt->e, cli_progress_output, rt->progress, &rt->exec);
  if (o->log != NULL) {
    sc_jsonl_options jo;
    sc_jsonl_options_init(&jo);
    if (o->fsync == NULL || strcmp(o->fsync, "batch") == 0)
      jo.fsync = SC_FSYNC_BATCH;
    else if (strcmp(o->fsync, "always") == 0)
      jo.fsync = SC_FSYNC_ALWAYS;
    else if (strcmp(o->fsync, "none") == 0)
      jo.fsync = SC_FSYNC_NONE;
    else
      return cli_usage_error(cmd, "--fsync must be always, batch or none (got '%s')", o->fsync);
    jo.log = log_say;
    jo.log_udata = rt;
    if (sc_jsonl_open(rt->e, o->log, &jo, &rt->log) != SC_OK)
      return cli_usage_error(cmd, "%s", sc_error_message());
  }
  sc_subscriber s;
  sc_subscriber_init(&s);
  s.on_event = on_event;
  s.udata = rt;
  sc_engine_subscribe(rt->e, &s, NULL);
  uv_signal_init(&rt->loop, &rt->sigint);
  uv_signal_init(&rt->loop, &rt->sigterm);
  rt->sigint.data = rt->sigterm.data = rt;
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

/* Runs until nothing is in flight, then says what happened to each task. */
static int runtime_finish(runtime *rt) {
  sc_engine_run(rt->e);
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

static void runtime_close(runtime *rt) {
  while (rt->queue)
    prompt_pop(rt);
  if (rt->exec) {
    cli_exec_kill_all(rt->exec);
    for (int i = 0; i < 1000 && cli_exec_running(rt->exec) > 0; i++)
      uv_run(&rt->loop, UV_RUN_ONCE);
  }
  if (rt->log && sc_jsonl_close(rt->log) != SC_OK)
    fprintf(stderr, "stagecoach: %s\n", sc_error_message());
  sc_engine_free(rt->e);
  cli_exec_free(rt->exec);
  if (rt->progress) cli_progress_free(rt->progress);
  if (rt->tty_open) {
    uv_tty_reset_mode();
    uv_close((uv_handle_t *)&rt->tty, NULL);
  }
  uv_close((uv_handle_t *)&rt->sigint, NULL);
  uv_close((uv_handle_t *)&rt->sigterm, NULL);
  uv_run(&rt->loop, UV_RUN_DEFAULT);
  uv_loop_close(&rt->loop);
}

/* ---- run ---- */

static int common_option(int argc, char **argv, int *i, run_options *o, int *rc) {
  int m;
  if ((m = cli_option(argc, argv, i, "--log", &o->log)) != 0) return *rc = m < 0 ? -1 : 0, 1;
  if ((m = cli_option(argc, argv, i, "--fsync", &o->fsync)) != 0) return *rc = m < 0 ? -1 : 0, 1;
  if (strcmp(argv[*i], "--plain") == 0) return o->plain = true, *rc = 0, 1;
  if (strcmp(argv[*i], "--no-prompt") == 0) return o->no_prompt = true, *rc = 0, 1;
  return 0;
}

int cli_run(int argc, char **argv) {
  run_options o = {0};
  const char *pipeline = NULL, *task_id = NULL;
  for (int i = 0; i < argc; i++) {
    int rc, m;
    if (common_option(argc, argv, &i, &o, &rc)) {
      if (rc < 0) return cli_usage_error("run", "%s needs a value", argv[i]);
      continue;
    }
    if ((m = cli_option(argc, argv, &i, "--task-id", &task_id)) != 0) {
      if (m < 0) return cli_usage_error("run", "--task-id needs a value");
      continue;
    }
    if (argv[i][0] == '-' && argv[i][1] != '\0')
      return cli_usage_error("run", "unknown option '%s' (see stagecoach run --help)", argv[i]);
    if (pipeline != NULL) return cli_usage_error("run", "one pipeline at a time ('%s')", argv[i]);
    pipeline = argv[i];
  }
  if (pipeline == NULL)
    return cli_usage_error("run", "which pipeline? (stagecoach run PIPELINE.json)");
  runtime rt;
  int code = runtime_open(&rt, &o, "run");
  cli_pipeline p = {0};
  char err[4096];
  if (code == CLI_EXIT_COMPLETED && cli_pipeline_load(pipeline, rt.e, &p, err, sizeof(err)) != 0) {
    fputs(err, stderr);
    code = CLI_EXIT_USAGE;
  }
  if (code == CLI_EXIT_COMPLETED) {
    sc_task_spec spec;
    sc_task_spec_init(&spec);
    spec.task_id = task_id;
    spec.tenant_id = p.tenant;
    spec.plan_id = p.plan;
    spec.config = p.config;
    spec.previous_config = p.previous_config;
    spec.traceparent = getenv("TRACEPARENT");
    sc_task *t;
    if (sc_task_submit(rt.e, &spec, &t) != SC_OK) {
      code = cli_usage_error("run", "%s", sc_error_message());
    } else {
      code = runtime_finish(&rt);
    }
  }
  runtime_close(&rt);
  cli_pipeline_free(&p);
  return code;
}

/* ---- recover ---- */

int cli_recover(int argc, char **argv) {
  run_options o = {0};
  const char *pipeline = NULL, *mode = NULL, *from = NULL, *only = NULL;
  bool dry_run = false;
  for (int i = 0; i < argc; i++) {
    int rc, m = 0;
    if (common_option(argc, argv, &i, &o, &rc)) {
      if (rc < 0) return cli_usage_error("recover", "%s needs a value", argv[i]);
      continue;
    }
    if ((m = cli_option(argc, argv, &i, "--mode", &mode)) != 0 ||
        (m = cli_option(argc, argv, &i, "--from", &from)) != 0 ||
        (m = cli_option(argc, argv, &i, "--task", &only)) != 0) {
      if (m < 0) return cli_usage_error("recover", "%s needs a value", argv[i]);
      continue;
    }
    if (strcmp(argv[i], "--dry-run") == 0) {
      dry_run = true;
      continue;
    }
    if (argv[i][0] == '-' && argv[i][1] != '\0')
      return cli_usage_error("recover", "unknown option '%s' (see stagecoach recover --help)",
                             argv[i]);
    if (pipeline != NULL)
      return cli_usage_error("recover", "one pipeline at a time ('%s')", argv[i]);
    pipeline = argv[i];
  }
  if (pipeline == NULL)
    return cli_usage_error("recover",
                           "which pipeline? (stagecoach recover PIPELINE.json --log FILE)");
  if (o.log == NULL)
    return cli_usage_error("recover", "--log FILE is required: the log is what recovery reads");
  if (mode != NULL && strcmp(mode, "retry") != 0 && strcmp(mode, "rollback") != 0)
    return cli_usage_error("recover", "--mode must be retry or rollback (got '%s')", mode);

  sc_unfinished *todo = NULL;
  size_t n = 0;
  sc_jsonl_report report;
  int rc = sc_jsonl_scan(o.log, &todo, &n, &report);
  if (rc == SC_ENOTFOUND) return cli_usage_error("recover", "%s", sc_error_message());
  if (rc != SC_OK) {
    fprintf(stderr, "stagecoach recover: %s\n", sc_error_message());
    return CLI_EXIT_FAILED;
  }
  runtime rt;
  int code = CLI_EXIT_COMPLETED;
  if (dry_run) {
    o.log = NULL; /* a dry run changes nothing, not even the log */
    o.plain = true;
  }
  code = runtime_open(&rt, &o, "recover");
  cli_pipeline p = {0};
  char err[4096];
  if (code == CLI_EXIT_COMPLETED && cli_pipeline_load(pipeline, rt.e, &p, err, sizeof(err)) != 0) {
    fputs(err, stderr);
    code = CLI_EXIT_USAGE;
  }
  size_t chosen = 0;
  for (size_t i = 0; i < n && code == CLI_EXIT_COMPLETED; i++) {
    sc_recovery_request req = todo[i].request;
    if (only != NULL && strcmp(req.recovered_from, only) != 0) continue;
    chosen++;
    /* The pipeline as it is now: a changed plan is caught by the logged fingerprint. */
    req.config = p.config;
    req.previous_config = p.previous_config ? p.previous_config : todo[i].request.previous_config;
    if (mode != NULL)
      req.mode = strcmp(mode, "rollback") == 0 ? SC_RECOVER_ROLLBACK : SC_RECOVER_RETRY;
    char before[256];
    if (from != NULL) {
      /* Resume at a chosen stage: the one before it counts as the last completed. */
      cJSON *plan = NULL;
      sc_recovery_request probe = req;
      probe.last_completed_stage = NULL;
      probe.context_digest = NULL;
      if (sc_recovery_plan(rt.e, &probe, &plan) != SC_OK) {
        code = cli_usage_error("recover", "%s", sc_error_message());
        break;
      }
      const cJSON *rerun = cJSON_GetObjectItemCaseSensitive(plan, "rerun");
      const cJSON *prev = NULL, *found = NULL;
      for (const cJSON *s = rerun ? rerun->child : NULL; s; prev = s, s = s->next)
        if (cJSON_IsString(s) && strcmp(s->valuestring, from) == 0) {
          found = s;
          break;
        }
      if (found == NULL) {
        char list[1024] = "";
        for (const cJSON *s = rerun ? rerun->child : NULL; s; s = s->next)
          snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s", *list ? ", " : "",
                   s->valuestring);
        cJSON_Delete(plan);
        code = cli_usage_error("recover", "--from: unknown stage '%s' (stages: %s)", from, list);
        break;
      }
      snprintf(before, sizeof(before), "%s", prev ? prev->valuestring : "");
      req.last_completed_stage = prev ? before : NULL;
      req.context_digest = NULL; /* the context is the log's latest, whatever stage we go back to */
      cJSON_Delete(plan);
    }
    if (dry_run) {
      cJSON *plan = NULL;
      if (sc_recovery_plan(rt.e, &req, &plan) != SC_OK) {
        fprintf(stderr, "stagecoach recover: task %s: %s\n", req.recovered_from,
                sc_error_message());
        code = CLI_EXIT_USAGE;
        break;
      }
      char *text = cJSON_Print(plan);
      printf("task %s (%s in the log):\n%s\n", req.recovered_from,
             sc_task_status_name(todo[i].status), text);
      free(text);
      cJSON_Delete(plan);
      continue;
    }
    if (sc_recover_from_restart(rt.e, &req, NULL) != SC_OK) {
      fprintf(stderr, "stagecoach recover: task %s: %s\n", req.recovered_from, sc_error_message());
      code = CLI_EXIT_USAGE;
      break;
    }
  }
  if (code == CLI_EXIT_COMPLETED && only != NULL && chosen == 0)
    code = cli_usage_error("recover", "no unfinished task '%s' in %s", only,
                           o.log ? o.log : "the log");
  if (code == CLI_EXIT_COMPLETED && n == 0)
    printf("nothing to recover: every task in %s finished\n", o.log ? o.log : "the log");
  if (code == CLI_EXIT_COMPLETED && !dry_run && chosen > 0) code = runtime_finish(&rt);
  runtime_close(&rt);
  cli_pipeline_free(&p);
  sc_unfinished_free(todo, n);
  return code;
}
