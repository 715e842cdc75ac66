/* Internals of the `stagecoach` command (not installed): the pipeline file loader, the exec stage
 * kind, the progress display and the commands. */
#ifndef STAGECOACH_CLI_H
#define STAGECOACH_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <stagecoach/jsonl.h>
#include <stagecoach/socket.h>
#include <stagecoach/sqlite.h>
#include <stagecoach/stagecoach.h>
#include <uv.h>

/* Exit codes of every command. */
enum {
  CLI_EXIT_COMPLETED = 0,
  CLI_EXIT_FAILED = 1,
  CLI_EXIT_USAGE = 2, /* usage or input error */
  CLI_EXIT_CANCELLED = 3,
  CLI_EXIT_ROLLED_BACK = 4,
  CLI_EXIT_INCOMPLETE = 5,   /* the log could not store every event: the record is incomplete */
  CLI_EXIT_UNAUTHORIZED = 6, /* a socket server refused the token */
};

/* ---- pipeline.c: pipeline files ---- */

typedef struct cli_pipeline {
  char *path;             /* as given */
  char *plan;             /* "plan", may be NULL */
  char *tenant;           /* "tenant", may be NULL */
  cJSON *config;          /* owned */
  cJSON *previous_config; /* owned; NULL when absent */
  char fingerprint[72];   /* of config's plan */
} cli_pipeline;

/* Reads and checks a pipeline file: well-formed JSON, an object with "config" (an object) and the
 * optional "plan", "tenant" (strings) and "previous_config" (an object), and both configs accepted
 * by sc_json_stage_factory with the kinds registered in `e` (NULL: the built-in kinds plus
 * "exec"). On failure returns CLI_EXIT_USAGE and writes one message per line into err, each
 * "FILE:LINE:COLUMN: what", e.g.
 *   deploy.json:14:9: stage "verify": "timeout_ms" must be a non-negative integer
 *   deploy.json:3:17: expected ',' or '}' after an object member
 * (LINE and COLUMN 1-based; COLUMN counts bytes). On success returns 0 and fills *p, freed with
 * cli_pipeline_free(). */
int cli_pipeline_load(const char *path, sc_engine *e, cli_pipeline *p, char *err, size_t errlen);
void cli_pipeline_free(cli_pipeline *p);

/* ---- exec.c: the exec stage kind ---- */

typedef struct cli_exec cli_exec;

/* Where the exec kind sends each line a stage's command prints (stdout or stderr), without the
 * newline; the default (NULL) writes "[stage] line" to the terminal's stderr/stdout. */
typedef void (*cli_output_fn)(const char *stage, int fd /* 1 or 2 */, const char *line, size_t len,
                              void *udata);

/* Registers the "exec" kind in e. Stage params (stage members other than the spec fields land in
 * params): "run" (required, a script for /bin/sh -c, passed as written), "args" (optional array of
 * strings: the script's $1, $2, ...; $0 is "stagecoach"), "compensate" (optional script for
 * compensation, run with the same args), "no_retry_exit_codes" (array of integers),
 * "kill_grace_ms" (default 5000), "cwd" (optional working directory), "env" (optional object of
 * extra variables), "compensate_env" (variables for the compensation only, over "env": a value
 * of the context the run made). ${config.x}, ${context.x}, ${task.id} and ${tenant} are resolved in
 * env values, args and cwd only. *out is freed with cli_exec_free() after sc_engine_free(). */
int cli_exec_register(sc_engine *e, cli_output_fn output, void *udata, cli_exec **out);
/* Checks what the exec kind reads of a stage: "run" (required), "compensate", "args",
 * "kill_grace_ms", "no_retry_exit_codes", "cwd" and "env", each taken from the stage object or
 * else from its params (either may be NULL). True when they are right; otherwise false with why
 * (at most len bytes), e.g. "\"kill_grace_ms\" must be an integer 0..86400000", *bad the
 * offending value (NULL when a required member is missing) and *offset (may be NULL) the byte
 * offset in bad's string where the mistake is (SIZE_MAX: the value as a whole). A ${...} of ours
 * in "run" or "compensate" is refused with the "env" form that replaces it:
 *   "run" may not contain ${context.artifact}; pass it as "env": {"ARTIFACT":
 *   "${context.artifact}"} and write "$ARTIFACT"
 * The pipeline loader calls it, so that `validate` finds what would otherwise fail the stage when
 * it starts. */
bool cli_exec_check(const cJSON *stage, const cJSON *params, const cJSON **bad, size_t *offset,
                    char *why, size_t len);

/* The number of commands still running. */
size_t cli_exec_running(const cli_exec *x);
/* Sends SIGKILL to the process group of every command still running. */
void cli_exec_kill_all(cli_exec *x);
/* Interrupted: stops the command of every stage whose task can be cancelled (SIGTERM to its
 * process group, SIGKILL after its grace period) and holds those stages' results, so that nothing
 * more is recorded of them until the engine cancels their tasks; no new command of such a task
 * starts. A rolling-back task, which cannot be cancelled, runs on. cli_exec_stopping() says when
 * the commands are gone. */
void cli_exec_stop_all(cli_exec *x);
/* The commands cli_exec_stop_all stopped that are not gone yet. */
size_t cli_exec_stopping(const cli_exec *x);
void cli_exec_free(cli_exec *x);

/* ---- expand.c: the exec kind's ${...} variables ---- */

/* What ${...} resolves against; each may be NULL (a variable of it is then unresolved). */
typedef struct cli_exec_vars {
  const cJSON *config, *context;
  const char *task_id, *tenant;
} cli_exec_vars;

/* Resolves ${config.a.b}, ${context.x}, ${task.id} and ${tenant} in a value that reaches the
 * command as data (an env value, an args item, cwd). Returns a malloc'd string, or NULL with
 * *problem (malloc'd; NULL for out of memory) saying "unresolved variable ${context.build_id}"
 * for the first variable without a value. Strings are written as they are; numbers, booleans,
 * objects and arrays as compact JSON. "$${" writes a literal "${"; any other '$' is text. */
char *cli_exec_expand(const char *text, const cli_exec_vars *vars, char **problem);
/* Finds the first ${...} of ours in a script ("$${" is not one): true with *offset and *len its
 * bytes in text. */
bool cli_exec_find_variable(const char *text, size_t *offset, size_t *len);
/* The script as /bin/sh gets it: text with each "$${" written "${", nothing else changed.
 * malloc'd; NULL for out of memory. */
char *cli_exec_script(const char *text);
/* The environment variable name suggested for variable[0 .. len) ("${context.artifact}" gives
 * ARTIFACT), NUL-terminated in out[cap]. */
void cli_exec_env_name(const char *variable, size_t len, char *out, size_t cap);

/* ---- progress.c: what an operator sees while tasks run ---- */

typedef struct cli_progress cli_progress;

/* live: redraw one status line per active task in place (a terminal); otherwise plain timestamped
 * lines. out is where it writes (stdout). */
int cli_progress_new(uv_loop_t *loop, bool live, FILE *out, cli_progress **p);
/* The subscriber to attach to the engine (udata is the progress). */
int cli_progress_on_event(const sc_event *ev, sc_ack *ack, void *udata);
/* A line printed by a stage's command; fits cli_output_fn. */
void cli_progress_output(const char *stage, int fd, const char *line, size_t len, void *udata);
/* Prints a message between the status lines (the status lines are cleared and redrawn). */
void cli_progress_say(cli_progress *p, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* Clears the status lines (before a prompt) and stops redrawing until cli_progress_resume. */
void cli_progress_hold(cli_progress *p);
void cli_progress_resume(cli_progress *p);
/* The last status seen of a task (SC_TASK__COUNT: unknown), and how many tasks were seen. */
sc_task_status cli_progress_status(const cli_progress *p, const char *task_id);
size_t cli_progress_task_count(const cli_progress *p);
const char *cli_progress_task_id(const cli_progress *p, size_t i);
/* The summary table: stage, status, attempts, duration, per task. */
void cli_progress_summary(cli_progress *p);
void cli_progress_free(cli_progress *p);

/* ---- run.c: run and recover ---- */

int cli_run(int argc, char **argv);
int cli_recover(int argc, char **argv);

/* ---- store_cmd.c: the stores' options and commands ---- */

/* --store jsonl:PATH sets *log, sqlite:PATH sets *db; anything else (or a second log or database)
 * is a usage error, printed, CLI_EXIT_USAGE returned. */
int cli_store_uri(const char *uri, const char **log, const char **db, const char *cmd);
enum { CLI_DB_EXISTING = 1, CLI_DB_READONLY = 2 };
/* Opens the database at path (attached to e when not NULL); flags CLI_DB_*. A failure is printed
 * as a usage error of cmd and returned as CLI_EXIT_USAGE (also in a build without SQLite). */
int cli_db_open(sc_engine *e, const char *path, int flags, const char *cmd, sc_sqlite **out);
int cli_db_unfinished(sc_sqlite *db, sc_unfinished **out, size_t *n); /* SC_* codes */
int cli_db_restore(sc_sqlite *db, const char *checkpoint_id, sc_unfinished **out);
int cli_db_close(sc_sqlite *db); /* NULL: SC_OK */
/* Whether the database holds events of the task id. */
bool cli_db_holds_task(sc_sqlite *db, const char *task_id);
/* Whether the database file holds task_id, opened read-only for the question: 1, 0, or -1 when
 * it cannot be read. */
int cli_db_file_holds_task(const char *path, const char *task_id);
/* `events --db FILE`: prints the database's events as `events` prints a log's; match says whether
 * an event's task id is the one asked for. */
int cli_events_db(const char *db, const char *task, const char *type, bool json,
                  bool (*match)(const char *id, const char *want));
int cli_checkpoints(int argc, char **argv);
int cli_retain(int argc, char **argv);
int cli_import(int argc, char **argv);
extern const char *cli_help_checkpoints, *cli_help_retain, *cli_help_import;

/* ---- client.c: the commands that talk to a socket server ---- */

int cli_tail(int argc, char **argv);
int cli_pending(int argc, char **argv);
int cli_approve(int argc, char **argv);
int cli_reject(int argc, char **argv);
/* --socket-limits ring=N,queue=BYTES,line=BYTES,clients=N,pending=N,wait=MS into o; -1 for a
 * malformed text. */
int cli_socket_limits(const char *text, sc_socket_options *o);

/* ---- main.c ---- */

/* One event as a line of `stagecoach events` (time, task, epoch, seq, type, stage, status,
 * detail). */
void cli_print_event(FILE *out, const sc_event *ev);

/* Prints "stagecoach CMD: message" to stderr and returns CLI_EXIT_USAGE. */
/* ---- compact.c: the compact command ---- */
extern const char *cli_help_compact;
int cli_compact(int argc, char **argv);

int cli_usage_error(const char *cmd, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* Matches "--name VALUE" and "--name=VALUE" at argv[*i]; advances *i past the value. Returns 1 on
 * a match (with *value set), 0 when argv[*i] is another argument, -1 when the value is missing. */
int cli_option(int argc, char **argv, int *i, const char *name, const char **value);
/* An argument that is no option of cmd: refused when it looks like an option ("unknown option")
 * or when *slot is taken already ("one WHAT at a time"), else stored in *slot. 0, or
 * CLI_EXIT_USAGE after the message. */
int cli_operand(const char *cmd, const char *arg, const char *what, const char **slot);

#endif
