/* Internals of the exec stage kind (not installed): the state of one running command, shared by
 * the kind (exec.c: checking a stage, building the command and spawning it) and the run
 * (exec_run.c: its output, its exit, what it left in its group, its result). */
#ifndef STAGECOACH_CLI_EXEC_INT_H
#define STAGECOACH_CLI_EXEC_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "../../events/internal.h"

#define TAIL_LINES       10                 /* lines of output kept for a failure message */
#define TAIL_LINE_BYTES  500                /* each truncated to this */
#define LINE_MAX_BYTES   (64 * 1024)        /* a longer line is passed on in pieces of this size */
#define OUTPUT_MAX_BYTES (16 * 1024 * 1024) /* the largest $SC_OUTPUT read */
#define READ_BYTES       (64 * 1024)
#define SWEEP_TICK_MS    10   /* how often a sweep looks whether the group is gone */
#define SWEEP_SETTLE_MS  100  /* after the group is gone, for the pipes to give their last bytes */
#define SWEEP_GIVE_UP_MS 1000 /* after SIGKILL, for a process that cannot die (uninterruptible) */

/* ---- strings ---- */

static inline bool name_is(const char *name, size_t n, const char *word) {
  return strlen(word) == n && memcmp(name, word, n) == 0;
}

/* ---- one running command ---- */

typedef struct exec_run exec_run;

struct cli_exec {
  cli_output_fn output; /* NULL: write to our stdout/stderr */
  void *udata;
  sc__queue runs; /* every command whose handles are not all closed yet (exec_run.node) */
  size_t nruns;
  bool stopping; /* cli_exec_stop_all(): results are held, nothing new starts */
  bool killed;   /* cli_exec_kill_all(): a waiting attempt is not started any more */
};

/* The stage data of a stage whose command was stopped (or never started) by cli_exec_stop_all:
 * its result waits for the engine's cancel. */
extern char cli__exec_held_marker;

struct exec_run {
  cli_exec *x;       /* NULL after cli_exec_free */
  sc__queue node;    /* on x->runs, newest first */
  sc_stage_ctx *ctx; /* NULL once the stage finished or the engine gave up on it */
  char *stage;       /* the stage's name, for output that comes after ctx is gone */
  /* The exit watch: a pidfd polled on the loop (posix_spawn), or libuv's child watcher where the
   * kernel has no pidfd (uv_spawn, which forks). */
  uv_poll_t exit_poll;
  uv_process_t process;
  bool by_libuv;
  int pidfd;
  uv_pipe_t pipes[2]; /* the command's stdout and stderr */
  uv_timer_t grace;   /* SIGKILL after a cancel's grace period */
  int open_handles;
  int pid; /* also the process group id */
  bool exited, eof[2], cancelled, closing;
  bool held;     /* stopped by cli_exec_stop_all: its result waits for the task's cancel */
  char *task_id; /* the task's id: an attempt of the same stage and task waits for this one */
  /* An earlier attempt of the same stage of the same task whose command is still ending (the
   * engine gave up on it: a timeout, a cancel): this one spawns only when that one is gone, so
   * two commands of one stage never run at once. Until then nothing is open; what to spawn is
   * kept here. */
  exec_run *waits_for;
  char **waiting_argv, **waiting_env, *waiting_cwd;
  bool sweeping, swept, sweep_killed; /* what the command left in its group, after it exited */
  uint64_t sweep_started, group_gone_at;
  int64_t exit_status;
  int term_signal;
  uint64_t kill_grace_ms;
  sc__buf partial[2]; /* an unfinished line per pipe */
  char tail[TAIL_LINES][TAIL_LINE_BYTES + 1];
  size_t tail_next, tail_count;
  char *tmpdir, *output_path, *context_path;
  char readbuf[READ_BYTES];
};

static inline exec_run *cli__exec_run_of(sc__queue *q) {
  return sc__queue_data(q, exec_run, node);
}

/* exec_run.c. The run frees itself when the last of its handles closed (after close_all). */
void cli__exec_run_free(exec_run *run); /* a run whose handles were never opened */
/* exec.c: spawns the runs that waited for gone, which is being freed. */
void cli__exec_start_waiting(cli_exec *x, exec_run *gone);
void cli__exec_strv_free(char **v);
/* a, b and c (may be NULL) joined in a string the caller frees; NULL when out of memory. */
char *cli__exec_join(const char *a, const char *b, const char *c);
/* Removes a directory and what it holds (16 levels deep at most; depth: 0). */
void cli__exec_remove_tree(const char *path, int depth);
/* Passes one line of a command's output on (fd 1 or 2), and keeps it for a failure message. */
void cli__exec_emit_line(exec_run *run, int fd, const char *line, size_t len);
void cli__exec_close_all(exec_run *run);
void cli__exec_signal_group(exec_run *run, int sig);
/* The loop's callbacks of a run (each handle's data is the run). */
void cli__exec_on_process_exit(uv_process_t *process, int64_t exit_status, int term_signal);
void cli__exec_on_pidfd(uv_poll_t *poll, int status, int events);
void cli__exec_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
void cli__exec_on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
void cli__exec_on_grace(uv_timer_t *timer);

#endif
