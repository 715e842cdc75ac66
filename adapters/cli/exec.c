/* The "exec" stage kind of the stagecoach command: a stage's script run by /bin/sh through
 * posix_spawn in its own process group, its output passed on line by line, its result read from
 * $SC_OUTPUT. Values reach it only as data: the environment, the arguments, the working directory.
 */
#define _GNU_SOURCE /* pipe2, posix_spawn_file_actions_addchdir_np */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"
#include "jsonpos.h"

extern char **environ;

#define TAIL_LINES       10                 /* lines of output kept for a failure message */
#define TAIL_LINE_BYTES  500                /* each truncated to this */
#define LINE_MAX_BYTES   (64 * 1024)        /* a longer line is passed on in pieces of this size */
#define OUTPUT_MAX_BYTES (16 * 1024 * 1024) /* the largest $SC_OUTPUT read */
#define READ_BYTES       (64 * 1024)
#define DEFAULT_GRACE_MS 5000
#define CONTEXT_ENV_MAX  (96 * 1024) /* a larger context is in $SC_CONTEXT_FILE only */
#define SWEEP_TICK_MS    10          /* how often a sweep looks whether the group is gone */
#define SWEEP_SETTLE_MS  100  /* after the group is gone, for the pipes to give their last bytes */
#define SWEEP_GIVE_UP_MS 1000 /* after SIGKILL, for a process that cannot die (uninterruptible) */

/* ---- growing strings ---- */

typedef struct strbuf {
  char *data; /* NUL-terminated when not NULL */
  size_t len, cap;
} strbuf;

static bool sb_append(strbuf *b, const char *s, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + n + 1)
      cap *= 2;
    char *data = realloc(b->data, cap);
    if (data == NULL) return false;
    b->data = data;
    b->cap = cap;
  }
  memcpy(b->data + b->len, s, n);
  b->len += n;
  b->data[b->len] = '\0';
  return true;
}

static bool sb_puts(strbuf *b, const char *s) {
  return sb_append(b, s, strlen(s));
}

static bool name_is(const char *name, size_t n, const char *word) {
  return strlen(word) == n && memcmp(name, word, n) == 0;
}

/* ---- the registry and one running command ---- */

typedef struct exec_run exec_run;

struct cli_exec {
  cli_output_fn output; /* NULL: write to our stdout/stderr */
  void *udata;
  exec_run *runs; /* every command whose handles are not all closed yet */
  size_t nruns;
};

struct exec_run {
  cli_exec *x; /* NULL after cli_exec_free */
  exec_run *prev, *next;
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
  bool sweeping, swept, sweep_killed; /* what the command left in its group, after it exited */
  uint64_t sweep_started, group_gone_at;
  int64_t exit_status;
  int term_signal;
  uint64_t kill_grace_ms;
  strbuf partial[2]; /* an unfinished line per pipe */
  char tail[TAIL_LINES][TAIL_LINE_BYTES + 1];
  size_t tail_next, tail_count;
  char *tmpdir, *output_path, *context_path;
  char readbuf[READ_BYTES];
};

/* Removes a directory and what a command left in it (not following links). */
static void remove_tree(const char *path, int depth) {
  DIR *d = depth < 16 ? opendir(path) : NULL;
  if (d != NULL) {
    struct dirent *ent;
    while ((ent = readdir(d)) != NULL) {
      if (strcmp(ent->d_name, ".") == 0 || strcmp(ent->d_name, "..") == 0) continue;
      strbuf child = {0};
      if (!sb_puts(&child, path) || !sb_puts(&child, "/") || !sb_puts(&child, ent->d_name)) {
        free(child.data);
        continue;
      }
      struct stat st;
      if (lstat(child.data, &st) == 0 && S_ISDIR(st.st_mode))
        remove_tree(child.data, depth + 1);
      else
        unlink(child.data);
      free(child.data);
    }
    closedir(d);
  }
  rmdir(path);
}

static void run_free(exec_run *run) {
  cli_exec *x = run->x;
  if (x != NULL) {
    if (run->prev)
      run->prev->next = run->next;
    else
      x->runs = run->next;
    if (run->next) run->next->prev = run->prev;
    x->nruns--;
  }
  if (run->tmpdir != NULL) remove_tree(run->tmpdir, 0);
  free(run->tmpdir);
  free(run->output_path);
  free(run->context_path);
  free(run->partial[0].data);
  free(run->partial[1].data);
  free(run->stage);
  if (run->pidfd >= 0) close(run->pidfd);
  free(run);
}

static void on_handle_closed(uv_handle_t *h) {
  exec_run *run = h->data;
  if (--run->open_handles == 0) run_free(run);
}

/* Closes every handle of the run; it is freed when the last close callback has run. */
static void close_all(exec_run *run) {
  run->closing = true;
  uv_handle_t *watch =
      run->by_libuv ? (uv_handle_t *)&run->process : (uv_handle_t *)&run->exit_poll;
  uv_handle_t *handles[] = {watch, (uv_handle_t *)&run->pipes[0], (uv_handle_t *)&run->pipes[1],
                            (uv_handle_t *)&run->grace};
  for (size_t i = 0; i < sizeof(handles) / sizeof(handles[0]); i++)
    if (handles[i]->type != UV_UNKNOWN_HANDLE && !uv_is_closing(handles[i]))
      uv_close(handles[i], on_handle_closed);
}

static void signal_group(exec_run *run, int sig) {
  if (run->pid > 0) kill(-run->pid, sig);
}

/* ---- output ---- */

/* Keeps a line for a failure message. A NUL byte would end the message early, so it becomes '?';
 * bytes that are not UTF-8 are left to the event writer, which writes U+FFFD for each. Cut at
 * TAIL_LINE_BYTES, not inside a UTF-8 sequence. */
static void keep_tail(exec_run *run, const char *line, size_t len) {
  if (len > TAIL_LINE_BYTES) {
    len = TAIL_LINE_BYTES;
    while (len > 0 && ((unsigned char)line[len] & 0xC0) == 0x80)
      len--;
  }
  char *to = run->tail[run->tail_next];
  for (size_t i = 0; i < len; i++)
    to[i] = line[i] == '\0' ? '?' : line[i];
  to[len] = '\0';
  run->tail_next = (run->tail_next + 1) % TAIL_LINES;
  if (run->tail_count < TAIL_LINES) run->tail_count++;
}

/* line is NUL-terminated at len. */
static void emit_line(exec_run *run, int fd, const char *line, size_t len) {
  keep_tail(run, line, len);
  cli_exec *x = run->x;
  if (x == NULL) return;
  if (x->output != NULL) {
    x->output(run->stage, fd, line, len, x->udata);
    return;
  }
  FILE *f = fd == 1 ? stdout : stderr;
  fprintf(f, "[%s] ", run->stage);
  fwrite(line, 1, len, f);
  fputc('\n', f);
  fflush(f);
}

/* Splits what a pipe gave into lines; the piece after the last '\n' waits for the next read. */
static void feed(exec_run *run, int i, char *data, size_t n) {
  strbuf *pending = &run->partial[i];
  int fd = i + 1;
  while (n > 0) {
    char *nl = memchr(data, '\n', n);
    size_t take = nl ? (size_t)(nl - data) : n;
    if (pending->len + take > LINE_MAX_BYTES) {
      size_t room = LINE_MAX_BYTES - pending->len;
      if (sb_append(pending, data, room)) emit_line(run, fd, pending->data, pending->len);
      pending->len = 0;
      data += room;
      n -= room;
      continue;
    }
    if (nl == NULL) {
      if (!sb_append(pending, data, take)) pending->len = 0; /* out of memory: the piece is lost */
      return;
    }
    if (pending->len == 0) {
      *nl = '\0'; /* our own read buffer */
      emit_line(run, fd, data, take);
    } else {
      if (sb_append(pending, data, take)) emit_line(run, fd, pending->data, pending->len);
      pending->len = 0;
    }
    data += take + 1;
    n -= take + 1;
  }
}

/* The kept lines, oldest first, after "; last output:\n"; nothing when there are none. */
static void append_tail(exec_run *run, strbuf *msg) {
  if (run->tail_count == 0) return;
  sb_puts(msg, "; last output:");
  size_t first = (run->tail_next + TAIL_LINES - run->tail_count) % TAIL_LINES;
  for (size_t k = 0; k < run->tail_count; k++) {
    sb_puts(msg, "\n");
    sb_puts(msg, run->tail[(first + k) % TAIL_LINES]);
  }
}

/* ---- finishing ---- */

static const char *signal_name(int sig) {
  switch (sig) {
    case SIGHUP: return "SIGHUP";
    case SIGINT: return "SIGINT";
    case SIGQUIT: return "SIGQUIT";
    case SIGILL: return "SIGILL";
    case SIGABRT: return "SIGABRT";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGKILL: return "SIGKILL";
    case SIGUSR1: return "SIGUSR1";
    case SIGSEGV: return "SIGSEGV";
    case SIGUSR2: return "SIGUSR2";
    case SIGPIPE: return "SIGPIPE";
    case SIGALRM: return "SIGALRM";
    case SIGTERM: return "SIGTERM";
    default: return NULL;
  }
}

static bool exit_code_listed(const cJSON *params, int64_t status) {
  const cJSON *codes = cJSON_GetObjectItemCaseSensitive(params, "no_retry_exit_codes");
  const cJSON *c;
  cJSON_ArrayForEach(c, codes) {
    if (cJSON_IsNumber(c) && c->valuedouble == (double)status) return true;
  }
  return false;
}

/* Reads $SC_OUTPUT: 0 with *text (NULL when the file is gone), or -1 with errno set. */
static int read_file(const char *path, char **text, size_t *len) {
  *text = NULL;
  *len = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT ? 0 : -1;
  strbuf b = {0};
  char chunk[16384];
  ssize_t n;
  while ((n = read(fd, chunk, sizeof(chunk))) != 0) {
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 || b.len + (size_t)n > OUTPUT_MAX_BYTES || !sb_append(&b, chunk, (size_t)n)) {
      if (n > 0 && b.len + (size_t)n > OUTPUT_MAX_BYTES) errno = EFBIG;
      int saved = errno ? errno : ENOMEM;
      close(fd);
      free(b.data);
      errno = saved;
      return -1;
    }
  }
  close(fd);
  *text = b.data;
  *len = b.len;
  return 0;
}

static void complete_from_output(exec_run *run, sc_stage_ctx *ctx) {
  char *text;
  size_t len;
  char msg[512];
  if (read_file(run->output_path, &text, &len) != 0) {
    snprintf(msg, sizeof(msg), "cannot read SC_OUTPUT of stage %s: %s", run->stage,
             strerror(errno));
    sc_stage_fail(ctx, SC_EIO, msg, false);
    return;
  }
  size_t blank = 0;
  while (blank < len &&
         (text[blank] == ' ' || text[blank] == '\t' || text[blank] == '\r' || text[blank] == '\n'))
    blank++;
  if (blank == len) {
    free(text);
    sc_stage_complete(ctx, NULL);
    return;
  }
  /* The strict parser: what it accepts is valid UTF-8 JSON, fit to go into the events. */
  cJSON *output = NULL;
  cli_jsonpos *positions = NULL;
  cli_jsonpos_at at;
  char why[256];
  int rc = cli_jsonpos_parse(text, len, &output, &positions, &at, why, sizeof(why));
  cli_jsonpos_free(positions);
  free(text);
  if (rc != 0 || !cJSON_IsObject(output)) {
    cJSON_Delete(output);
    if (rc != 0)
      snprintf(msg, sizeof(msg), "SC_OUTPUT of stage %s is not valid JSON: %u:%u: %s", run->stage,
               (unsigned)at.line, (unsigned)at.column, why);
    else
      snprintf(msg, sizeof(msg), "SC_OUTPUT of stage %s is not a JSON object", run->stage);
    sc_stage_fail(ctx, rc == SC_ENOMEM ? SC_ENOMEM : SC_EPARSE, msg, rc == SC_ENOMEM);
    return;
  }
  sc_stage_complete(ctx, output);
}

static void deliver(exec_run *run, sc_stage_ctx *ctx) {
  if (run->term_signal == 0 && run->exit_status == 0) {
    complete_from_output(run, ctx);
    return;
  }
  strbuf msg = {0};
  char head[96];
  bool retryable = true;
  if (run->term_signal != 0) {
    const char *name = signal_name(run->term_signal);
    snprintf(head, sizeof(head), "killed by signal %d%s%s%s", run->term_signal, name ? " (" : "",
             name ? name : "", name ? ")" : "");
  } else {
    snprintf(head, sizeof(head), "exit status %lld", (long long)run->exit_status);
    retryable = !exit_code_listed(sc_stage_params(ctx), run->exit_status);
  }
  sb_puts(&msg, head);
  append_tail(run, &msg);
  sc_stage_fail(ctx, SC_EIO, msg.data ? msg.data : head, retryable);
  free(msg.data);
}

/* Whether /proc/PID/stat says the process is a zombie (dead, waiting to be reaped by whoever
 * inherited it, which may take a while). */
static bool is_zombie(const char *pid) {
  char path[64], buf[512];
  snprintf(path, sizeof(path), "/proc/%s/stat", pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return true; /* gone meanwhile */
  ssize_t n = read(fd, buf, sizeof(buf) - 1);
  close(fd);
  if (n <= 0) return true;
  buf[n] = '\0';
  const char *paren = strrchr(buf, ')'); /* the command name may hold anything */
  return paren != NULL && paren[1] == ' ' && paren[2] == 'Z';
}

/* Whether a process of the command's group still runs. kill(-pgid, 0) also counts zombies, and
 * a zombie holds no pipe and does no work; where /proc tells, they are left out. */
static bool group_alive(const exec_run *run) {
  if (run->pid <= 0 || kill(-run->pid, 0) != 0) return false;
  DIR *d = opendir("/proc");
  if (d == NULL) return true;
  bool alive = false;
  struct dirent *ent;
  while (!alive && (ent = readdir(d)) != NULL) {
    if (ent->d_name[0] < '1' || ent->d_name[0] > '9') continue;
    pid_t pid = (pid_t)strtol(ent->d_name, NULL, 10);
    alive = getpgid(pid) == run->pid && !is_zombie(ent->d_name);
  }
  closedir(d);
  return alive;
}

static void start_sweep(exec_run *run);

/* The command is done when its process has exited and both pipes reached end of file, in
 * whichever order those come. Whatever it left running in its group is then ended: SIGTERM,
 * SIGKILL after the grace period (the sweep); the run is freed when the group is gone. */
static void maybe_finish(exec_run *run) {
  if (run->closing || !run->exited || !run->eof[0] || !run->eof[1]) return;
  /* A cancelled command's leader is gone and its pipes are closed: whatever is left of its group
   * is an orphan of a stage nobody waits for. */
  if (run->cancelled) signal_group(run, SIGKILL);
  sc_stage_ctx *ctx = run->ctx;
  run->ctx = NULL;
  if (ctx != NULL) deliver(run, ctx);
  if (!run->cancelled && !run->swept && group_alive(run)) {
    start_sweep(run);
    return;
  }
  close_all(run);
}

/* Gives up the pipes a process that left the group may still hold: nothing more is read. */
static void abandon_pipes(exec_run *run) {
  for (int i = 0; i < 2; i++) {
    if (run->eof[i]) continue;
    uv_read_stop((uv_stream_t *)&run->pipes[i]);
    if (run->partial[i].len > 0) emit_line(run, i + 1, run->partial[i].data, run->partial[i].len);
    run->partial[i].len = 0;
    run->eof[i] = true;
  }
}

static void on_sweep(uv_timer_t *timer) {
  exec_run *run = timer->data;
  if (run->closing) return;
  uint64_t now = uv_now(timer->loop), waited = now - run->sweep_started;
  if (group_alive(run)) {
    if (waited < run->kill_grace_ms) return;
    if (!run->sweep_killed) {
      signal_group(run, SIGKILL);
      run->sweep_killed = true;
    }
    if (waited < run->kill_grace_ms + SWEEP_GIVE_UP_MS) return;
  } else {
    if (run->group_gone_at == 0) run->group_gone_at = now;
    if (now - run->group_gone_at < SWEEP_SETTLE_MS && !(run->eof[0] && run->eof[1])) return;
  }
  uv_timer_stop(timer);
  run->swept = true;
  abandon_pipes(run);
  maybe_finish(run);
}

/* The command exited and left processes in its group (a job sent to the background, a daemon):
 * they get SIGTERM now and SIGKILL after the grace period. The stage's result does not wait for
 * them longer than that, even when one of them keeps the output pipes open. */
static void start_sweep(exec_run *run) {
  if (run->sweeping || run->closing) return;
  run->sweeping = true;
  run->sweep_started = uv_now(run->grace.loop);
  signal_group(run, SIGTERM);
  uv_timer_start(&run->grace, on_sweep, SWEEP_TICK_MS, SWEEP_TICK_MS);
}

static void process_exited(exec_run *run, int64_t exit_status, int term_signal) {
  run->exited = true;
  run->exit_status = exit_status;
  run->term_signal = term_signal;
  /* Pipes still open: their last bytes are on the way, or a process holds them, in the group or
   * one that left it (setsid); the sweep waits a moment, then ends the group and gives them up. */
  if (!run->cancelled && (!run->eof[0] || !run->eof[1])) start_sweep(run);
  maybe_finish(run);
}

static void on_process_exit(uv_process_t *process, int64_t exit_status, int term_signal) {
  process_exited(process->data, exit_status, term_signal);
}

/* The pidfd became readable: the process exited. It is reaped here (no one else waits for it:
 * libuv's SIGCHLD handler waits only for the children it spawned itself). */
static void on_pidfd(uv_poll_t *poll, int status, int events) {
  (void)events;
  exec_run *run = poll->data;
  siginfo_t info;
  memset(&info, 0, sizeof(info));
  int rc;
  while ((rc = waitid(P_PID, (id_t)run->pid, &info, WEXITED | WNOHANG)) < 0 && errno == EINTR) {
  }
  if (rc == 0 && info.si_pid == 0 && status == 0) return; /* not yet: a spurious wakeup */
  uv_poll_stop(poll);
  if (rc < 0) { /* reaped elsewhere: the status is lost */
    process_exited(run, 255, 0);
    return;
  }
  bool signalled = info.si_code == CLD_KILLED || info.si_code == CLD_DUMPED;
  process_exited(run, signalled ? 0 : info.si_status, signalled ? info.si_status : 0);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  exec_run *run = h->data;
  /* One buffer serves both pipes: libuv hands each read to on_read before the next alloc. */
  *buf = uv_buf_init(run->readbuf, sizeof(run->readbuf));
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  exec_run *run = stream->data;
  int i = stream == (uv_stream_t *)&run->pipes[0] ? 0 : 1;
  if (nread > 0) {
    feed(run, i, buf->base, (size_t)nread);
    return;
  }
  if (nread == 0) return;
  /* End of file, or an error: either way nothing more comes. A last line without '\n' counts. */
  uv_read_stop(stream);
  strbuf *pending = &run->partial[i];
  if (pending->len > 0) {
    emit_line(run, i + 1, pending->data, pending->len);
    pending->len = 0;
  }
  run->eof[i] = true;
  maybe_finish(run);
}

/* SIGKILL came too late for a process that left the group and holds the pipes: give them up. */
static void on_give_up(uv_timer_t *timer) {
  exec_run *run = timer->data;
  if (run->closing || !run->exited) return;
  abandon_pipes(run);
  maybe_finish(run);
}

static void on_grace(uv_timer_t *timer) {
  exec_run *run = timer->data;
  if (run->closing) return;
  signal_group(run, SIGKILL);
  uv_timer_start(timer, on_give_up, SWEEP_GIVE_UP_MS, 0);
}

/* ---- starting ---- */

/* Fails ctx (not retryable) with a printf-style message; the kind's start then returns 0. */
static int refuse(sc_stage_ctx *ctx, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

static int refuse(sc_stage_ctx *ctx, int code, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  sc_stage_fail(ctx, code, msg, false);
  return SC_OK;
}

/* Expands one value of the stage; NULL after failing the stage (what names the field). */
static char *expand_for(sc_stage_ctx *ctx, const char *text, const char *what) {
  sc_task *t = sc_stage_task(ctx);
  cli_exec_vars vars = {sc_stage_config(ctx), sc_stage_context(ctx), t ? sc_task_id(t) : NULL,
                        t ? sc_task_tenant(t) : NULL};
  char *problem = NULL;
  char *out = cli_exec_expand(text, &vars, &problem);
  if (out != NULL) return out;
  if (problem != NULL)
    refuse(ctx, SC_EPLAN, "%s in \"%s\"", problem, what);
  else
    sc_stage_fail(ctx, SC_ENOMEM, "out of memory expanding variables", true);
  free(problem);
  return NULL;
}

/* The variables the kind sets; params.env may not replace them. */
static const char *const own_vars[] = {
    "SC_TASK_ID",         "SC_TENANT",   "SC_STAGE",   "SC_ATTEMPT", "SC_MODE",
    "SC_IDEMPOTENCY_KEY", "TRACEPARENT", "SC_CONTEXT", "SC_OUTPUT",  "SC_CONTEXT_FILE"};
#define OWN_VAR_COUNT (sizeof(own_vars) / sizeof(own_vars[0]))

/* A member of the stage object, or of its "params" (the factory merges the two). */
static const cJSON *param(const cJSON *stage, const cJSON *params, const char *name) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(stage, name);
  return v != NULL ? v : cJSON_GetObjectItemCaseSensitive(params, name);
}

static bool is_integer_in(const cJSON *v, double min, double max) {
  return cJSON_IsNumber(v) && v->valuedouble >= min && v->valuedouble <= max &&
         v->valuedouble == (double)(int64_t)v->valuedouble;
}

/* Fills why and *bad, returns false. */
static bool wrong(const cJSON **bad, const cJSON *v, char *why, size_t len, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 5, 6)))
#endif
    ;

static bool wrong(const cJSON **bad, const cJSON *v, char *why, size_t len, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, len, fmt, ap);
  va_end(ap);
  *bad = v;
  return false;
}

/* A script may not hold a value: what the shell reads in it is syntax, whatever quoting a lexer
 * of ours would add (docs/cli.md, "Values reach commands as data"). */
static bool check_script(const cJSON *v, const char *field, const cJSON **bad, size_t *offset,
                         char *why, size_t len) {
  size_t at, n;
  if (!cli_exec_find_variable(v->valuestring, &at, &n)) return true;
  char name[64];
  cli_exec_env_name(v->valuestring + at, n, name, sizeof(name));
  if (offset != NULL) *offset = at;
  int shown = n > 200 ? 200 : (int)n;
  return wrong(bad, v, why, len,
               "\"%s\" may not contain %.*s; pass it as \"env\": {\"%s\": \"%.*s\"} and write "
               "\"$%s\"",
               field, shown, v->valuestring + at, name, shown, v->valuestring + at, name);
}

static bool check_env(const cJSON *v, const char *field, const cJSON **bad, char *why, size_t len) {
  if (v == NULL) return true;
  if (!cJSON_IsObject(v)) return wrong(bad, v, why, len, "\"%s\" must be an object", field);
  const cJSON *m;
  cJSON_ArrayForEach(m, v) {
    if (m->string[0] == '\0' || strchr(m->string, '=') != NULL)
      return wrong(bad, m, why, len, "\"%s\" has an invalid variable name \"%s\"", field,
                   m->string);
    for (size_t i = 0; i < OWN_VAR_COUNT; i++)
      if (strcmp(m->string, own_vars[i]) == 0)
        return wrong(bad, m, why, len, "\"%s\" may not set %s (the exec kind sets it)", field,
                     m->string);
  }
  return true;
}

bool cli_exec_check(const cJSON *stage, const cJSON *params, const cJSON **bad, size_t *offset,
                    char *why, size_t len) {
  *bad = NULL;
  if (offset != NULL) *offset = SIZE_MAX;
  const cJSON *v = param(stage, params, "run");
  if (!cJSON_IsString(v) || v->valuestring[0] == '\0')
    return wrong(bad, v, why, len, "\"run\" is required (a non-empty shell command)");
  if (!check_script(v, "run", bad, offset, why, len)) return false;
  v = param(stage, params, "compensate");
  if (v != NULL && (!cJSON_IsString(v) || v->valuestring[0] == '\0'))
    return wrong(bad, v, why, len, "\"compensate\" must be a non-empty shell command");
  if (v != NULL && !check_script(v, "compensate", bad, offset, why, len)) return false;
  v = param(stage, params, "args");
  if (v != NULL) {
    const cJSON *a;
    if (!cJSON_IsArray(v)) return wrong(bad, v, why, len, "\"args\" must be an array of strings");
    cJSON_ArrayForEach(a, v) {
      if (!cJSON_IsString(a))
        return wrong(bad, a, why, len, "\"args\" must be an array of strings");
    }
  }
  v = param(stage, params, "kill_grace_ms");
  if (v != NULL && !is_integer_in(v, 0, 86400000.0))
    return wrong(bad, v, why, len, "\"kill_grace_ms\" must be an integer 0..86400000");
  v = param(stage, params, "no_retry_exit_codes");
  if (v != NULL) {
    const cJSON *c;
    if (!cJSON_IsArray(v))
      return wrong(bad, v, why, len, "\"no_retry_exit_codes\" must be an array of integers");
    cJSON_ArrayForEach(c, v) {
      if (!is_integer_in(c, 0, 255))
        return wrong(bad, c, why, len,
                     "\"no_retry_exit_codes\" must be an array of integers 0..255");
    }
  }
  v = param(stage, params, "cwd");
  if (v != NULL && (!cJSON_IsString(v) || v->valuestring[0] == '\0'))
    return wrong(bad, v, why, len, "\"cwd\" must be a non-empty string");
  return check_env(param(stage, params, "env"), "env", bad, why, len) &&
         check_env(param(stage, params, "compensate_env"), "compensate_env", bad, why, len);
}

/* Whether the object env sets the variable name[0 .. n). */
static bool sets(const cJSON *env, const char *name, size_t n) {
  const cJSON *m;
  cJSON_ArrayForEach(m, env) {
    if (name_is(name, n, m->string)) return true;
  }
  return false;
}

/* True when the "NAME=value" entry of our environment is replaced by the stage's. */
static bool replaced(const char *entry, const cJSON *env, const cJSON *over) {
  size_t n = strcspn(entry, "=");
  for (size_t i = 0; i < OWN_VAR_COUNT; i++)
    if (name_is(entry, n, own_vars[i])) return true;
  return sets(env, entry, n) || sets(over, entry, n);
}

static char *env_entry(const char *name, const char *value) {
  strbuf b = {0};
  if (!sb_puts(&b, name) || !sb_puts(&b, "=") || !sb_puts(&b, value)) {
    free(b.data);
    return NULL;
  }
  return b.data;
}

static void strv_free(char **v) {
  if (v == NULL) return;
  for (char **p = v; *p != NULL; p++)
    free(*p);
  free(v);
}

/* $SC_CONTEXT_FILE: the context as JSON, beside $SC_OUTPUT. 0, or -1 after failing the stage. */
static int write_context(sc_stage_ctx *ctx, exec_run *run, const char *json) {
  strbuf path = {0};
  if (!sb_puts(&path, run->tmpdir) || !sb_puts(&path, "/context.json")) {
    free(path.data);
    sc_stage_fail(ctx, SC_ENOMEM, "out of memory", true);
    return -1;
  }
  run->context_path = path.data;
  size_t len = strlen(json), done = 0;
  int fd = open(run->context_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  int err = fd < 0 ? errno : 0;
  while (err == 0 && done < len) {
    ssize_t w = write(fd, json + done, len - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0)
      err = w < 0 ? errno : EIO;
    else
      done += (size_t)w;
  }
  if (fd >= 0) close(fd);
  if (err != 0) {
    char msg[512];
    snprintf(msg, sizeof(msg), "stage %s: cannot write %s: %s", sc_stage_name(ctx),
             run->context_path, strerror(err));
    sc_stage_fail(ctx, SC_EIO, msg, true);
    return -1;
  }
  return 0;
}

/* Linux passes at most MAX_ARG_STRLEN (32 pages) bytes per argument or "NAME=value" string; a
 * longer value fails the stage with what to do instead, rather than reach the command cut. */
#define ARG_STRING_MAX (32 * 4096)

static bool too_long(sc_stage_ctx *ctx, const char *what, const char *name, const char *value) {
  size_t len = strlen(value), total = (name ? strlen(name) + 1 : 0) + len + 1;
  if (total <= ARG_STRING_MAX) return false;
  refuse(ctx, SC_EPLAN,
         "\"%s\" is %zu bytes, more than the %d the kernel passes to a command in one variable "
         "or argument: read large values from the file $SC_CONTEXT_FILE (the whole context as "
         "JSON) instead",
         what, len, ARG_STRING_MAX - 1);
  return true;
}

/* Appends obj's variables (those over does not set) to env[*n], expanded. 0, -1 out of memory,
 * -2 after failing the stage. */
static int add_vars(sc_stage_ctx *ctx, char **env, size_t *n, const cJSON *obj, const cJSON *over,
                    const char *field) {
  const cJSON *m;
  cJSON_ArrayForEach(m, obj) {
    if (sets(over, m->string, strlen(m->string))) continue;
    char what[300];
    snprintf(what, sizeof(what), "%s.%s", field, m->string);
    char *value = NULL;
    if (cJSON_IsString(m)) {
      if ((value = expand_for(ctx, m->valuestring, what)) == NULL) return -2;
    } else if (!cJSON_IsNull(m) && (value = cJSON_PrintUnformatted(m)) == NULL) {
      return -1;
    }
    if (too_long(ctx, what, m->string, value ? value : "")) {
      free(value);
      return -2;
    }
    env[(*n)++] = env_entry(m->string, value ? value : "");
    free(value);
    if (env[*n - 1] == NULL) return -1;
  }
  return 0;
}

/* The command's environment: ours, then the SC_* variables, then params.env, and for a
 * compensation params.compensate_env over it (over may be NULL). NULL after failing the stage. */
static char **build_env(sc_stage_ctx *ctx, exec_run *run, const cJSON *env_params,
                        const cJSON *over) {
  size_t ours = 0,
         extra = (size_t)cJSON_GetArraySize(env_params) + (size_t)cJSON_GetArraySize(over);
  while (environ != NULL && environ[ours] != NULL)
    ours++;
  char **env = calloc(ours + OWN_VAR_COUNT + extra + 1, sizeof(*env));
  if (env == NULL) goto nomem;
  size_t n = 0;
  for (size_t i = 0; i < ours; i++)
    if (!replaced(environ[i], env_params, over) && (env[n++] = strdup(environ[i])) == NULL)
      goto nomem;
  sc_task *t = sc_stage_task(ctx);
  const char *tenant = t ? sc_task_tenant(t) : NULL;
  char attempt[16];
  snprintf(attempt, sizeof(attempt), "%u", sc_stage_attempt(ctx));
  char *context = cJSON_PrintUnformatted(sc_stage_context(ctx));
  if (context == NULL) goto nomem;
  if (write_context(ctx, run, context) < 0) {
    free(context);
    strv_free(env);
    return NULL; /* the stage failed */
  }
  /* A string in the environment is limited (128 KiB on Linux); past that only the file has it. */
  const char *values[OWN_VAR_COUNT] = {
      t ? sc_task_id(t) : "",    tenant ? tenant : "",
      sc_stage_name(ctx),        attempt,
      sc_stage_mode(ctx),        sc_stage_idempotency_key(ctx),
      sc_stage_traceparent(ctx), strlen(context) <= CONTEXT_ENV_MAX ? context : NULL,
      run->output_path,          run->context_path};
  bool ok = true;
  for (size_t i = 0; i < OWN_VAR_COUNT && ok; i++)
    ok = values[i] == NULL || (env[n++] = env_entry(own_vars[i], values[i])) != NULL;
  free(context);
  if (!ok) goto nomem;
  int rc = add_vars(ctx, env, &n, env_params, over, "env");
  if (rc == 0) rc = add_vars(ctx, env, &n, over, NULL, "compensate_env");
  if (rc == -1) goto nomem;
  if (rc < 0) {
    strv_free(env);
    return NULL; /* the stage failed */
  }
  return env;
nomem:
  strv_free(env);
  sc_stage_fail(ctx, SC_ENOMEM, "out of memory building the command's environment", true);
  return NULL;
}

/* The argument vector: /bin/sh -c SCRIPT stagecoach ARGS..., each of args expanded. NULL after
 * failing the stage. */
static char **build_argv(sc_stage_ctx *ctx, const char *script, const cJSON *args) {
  size_t extra = (size_t)cJSON_GetArraySize(args);
  char **argv = calloc(extra + 5, sizeof(*argv));
  if (argv == NULL || (argv[0] = strdup("/bin/sh")) == NULL || (argv[1] = strdup("-c")) == NULL ||
      (argv[2] = cli_exec_script(script)) == NULL || (argv[3] = strdup("stagecoach")) == NULL)
    goto nomem;
  size_t i = 4;
  const cJSON *a;
  cJSON_ArrayForEach(a, args) {
    char what[32];
    snprintf(what, sizeof(what), "args.%zu", i - 4);
    if ((argv[i] = expand_for(ctx, a->valuestring, what)) == NULL ||
        too_long(ctx, what, NULL, argv[i])) {
      strv_free(argv);
      return NULL; /* the stage failed */
    }
    i++;
  }
  return argv;
nomem:
  strv_free(argv);
  sc_stage_fail(ctx, SC_ENOMEM, "out of memory building the command's arguments", true);
  return NULL;
}

/* Where the stages' private directories go: $TMPDIR when set; else a memory-backed directory
 * ($XDG_RUNTIME_DIR, /dev/shm) when there is one we may write to; else /tmp. Creating and removing
 * three files per stage on a disk file system costs more than starting the command itself (on
 * ext4 here, about 0.4 ms of the 1.2 ms a spawn takes); in memory it is a few microseconds. */
static const char *work_base(void) {
  const char *base = getenv("TMPDIR");
  if (base != NULL && base[0] != '\0') return base;
  const char *const memory[] = {getenv("XDG_RUNTIME_DIR"), "/dev/shm"};
  for (size_t i = 0; i < sizeof(memory) / sizeof(memory[0]); i++) {
    struct stat st;
    if (memory[i] != NULL && memory[i][0] == '/' && stat(memory[i], &st) == 0 &&
        S_ISDIR(st.st_mode) && access(memory[i], W_OK | X_OK) == 0)
      return memory[i];
  }
  return "/tmp";
}

/* A private directory with an empty output file for $SC_OUTPUT. */
static int make_output(sc_stage_ctx *ctx, exec_run *run) {
  const char *base = work_base();
  strbuf dir = {0};
  if (!sb_puts(&dir, base) || !sb_puts(&dir, "/stagecoach-exec-XXXXXX")) {
    free(dir.data);
    sc_stage_fail(ctx, SC_ENOMEM, "out of memory", true);
    return -1;
  }
  if (mkdtemp(dir.data) == NULL) {
    char msg[512];
    snprintf(msg, sizeof(msg), "stage %s: cannot create a temporary directory in %s: %s",
             sc_stage_name(ctx), base, strerror(errno));
    free(dir.data);
    sc_stage_fail(ctx, SC_EIO, msg, true);
    return -1;
  }
  run->tmpdir = dir.data;
  strbuf path = {0};
  if (!sb_puts(&path, run->tmpdir) || !sb_puts(&path, "/output.json")) {
    free(path.data);
    sc_stage_fail(ctx, SC_ENOMEM, "out of memory", true);
    return -1;
  }
  run->output_path = path.data;
  int fd = open(run->output_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    char msg[512];
    snprintf(msg, sizeof(msg), "stage %s: cannot create %s: %s", sc_stage_name(ctx),
             run->output_path, strerror(errno));
    sc_stage_fail(ctx, SC_EIO, msg, true);
    return -1;
  }
  close(fd);
  return 0;
}

static void run_link(cli_exec *x, exec_run *run) {
  run->x = x;
  run->next = x->runs;
  if (x->runs) x->runs->prev = run;
  x->runs = run;
  x->nruns++;
}

/* Whether the kernel gives pidfds (Linux 5.3 and later); asked once. */
static bool have_pidfd(void) {
  static int known; /* 0: not asked yet, 1: yes, -1: no */
  if (known == 0) {
    int fd = (int)syscall(SYS_pidfd_open, getpid(), 0);
    known = fd >= 0 ? 1 : -1;
    if (fd >= 0) close(fd);
  }
  return known > 0;
}

/* posix_spawn, which glibc runs as clone(CLONE_VM | CLONE_VFORK): the child shares our memory
 * until it calls exec, so the cost does not grow with our size, where fork (uv_spawn) copies the
 * page tables of a process that holds every task (docs/cli.md, "Spawning"). The child gets its own
 * process group, default signal handling, an empty signal mask, /dev/null as stdin and the pipes
 * as stdout and stderr. 0 or a negative errno. */
static int spawn_posix(exec_run *run, uv_loop_t *loop, char **argv, const char *cwd, char **env,
                       int out[2], int err[2]) {
  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attr;
  if (posix_spawn_file_actions_init(&actions) != 0) return -ENOMEM;
  if (posix_spawnattr_init(&attr) != 0) {
    posix_spawn_file_actions_destroy(&actions);
    return -ENOMEM;
  }
  sigset_t none, defaults;
  sigemptyset(&none);
  sigemptyset(&defaults);
  for (int sig = 1; sig < 32; sig++)
    if (sig != SIGKILL && sig != SIGSTOP) sigaddset(&defaults, sig);
  int rc = posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  if (rc == 0) rc = posix_spawn_file_actions_adddup2(&actions, out[1], 1);
  if (rc == 0) rc = posix_spawn_file_actions_adddup2(&actions, err[1], 2);
  if (rc == 0 && cwd != NULL) rc = posix_spawn_file_actions_addchdir_np(&actions, cwd);
  if (rc == 0)
    rc = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                             POSIX_SPAWN_SETSIGDEF);
  if (rc == 0) rc = posix_spawnattr_setpgroup(&attr, 0);
  if (rc == 0) rc = posix_spawnattr_setsigmask(&attr, &none);
  if (rc == 0) rc = posix_spawnattr_setsigdefault(&attr, &defaults);
  pid_t pid = 0;
  if (rc == 0) rc = posix_spawn(&pid, argv[0], &actions, &attr, argv, env);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) return -rc;
  run->pid = pid;
  run->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
  rc = run->pidfd < 0 ? -errno : uv_poll_init(loop, &run->exit_poll, run->pidfd);
  if (rc < 0) { /* out of descriptors: the command may not run unwatched */
    kill(-pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
    }
    run->pid = 0;
    return rc;
  }
  run->open_handles++;
  run->exit_poll.data = run;
  uv_poll_start(&run->exit_poll, UV_READABLE, on_pidfd);
  return 0;
}

/* uv_spawn, for a kernel without pidfds. 0 or a libuv error. */
static int spawn_libuv(exec_run *run, uv_loop_t *loop, char **argv, const char *cwd, char **env,
                       int out[2], int err[2]) {
  uv_stdio_container_t stdio[3];
  stdio[0].flags = UV_IGNORE; /* libuv opens /dev/null in the child */
  stdio[1].flags = UV_INHERIT_FD;
  stdio[1].data.fd = out[1];
  stdio[2].flags = UV_INHERIT_FD;
  stdio[2].data.fd = err[1];
  uv_process_options_t options;
  memset(&options, 0, sizeof(options));
  options.exit_cb = on_process_exit;
  options.file = argv[0];
  options.args = argv;
  options.env = env;
  options.cwd = cwd;
  options.flags = UV_PROCESS_DETACHED; /* its own process group, signalled as a whole */
  options.stdio_count = 3;
  options.stdio = stdio;
  run->by_libuv = true;
  run->open_handles++; /* uv_spawn initializes the process handle also when it fails */
  run->process.data = run;
  int rc = uv_spawn(loop, &run->process, &options);
  if (rc == 0) run->pid = run->process.pid;
  return rc;
}

/* Spawns the command; on failure the stage is failed and the run closes itself. */
static void spawn(sc_stage_ctx *ctx, exec_run *run, char **argv, const char *cwd, char **env) {
  uv_loop_t *loop = sc_stage_loop(ctx);
  uv_timer_init(loop, &run->grace);
  run->grace.data = run;
  run->open_handles = 1;
  int out[2] = {-1, -1}, err[2] = {-1, -1};
  int rc = 0;
  if (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0) rc = -errno;
  if (rc == 0)
    rc = have_pidfd() ? spawn_posix(run, loop, argv, cwd, env, out, err)
                      : spawn_libuv(run, loop, argv, cwd, env, out, err);
  if (out[1] >= 0) close(out[1]); /* the child's ends: it has its own copies now */
  if (err[1] >= 0) close(err[1]);
  if (rc == 0) {
    for (int i = 0; i < 2; i++) {
      uv_pipe_init(loop, &run->pipes[i], 0);
      run->pipes[i].data = run;
      run->open_handles++;
      int fd = i == 0 ? out[0] : err[0];
      if ((rc = uv_pipe_open(&run->pipes[i], fd)) == 0) {
        if (i == 0) out[0] = -1;
        if (i == 1) err[0] = -1;
      }
      if (rc < 0) break;
    }
  }
  if (out[0] >= 0) close(out[0]);
  if (err[0] >= 0) close(err[0]);
  if (rc < 0) {
    if (run->pid > 0) signal_group(run, SIGKILL); /* started, but its output cannot be read */
    bool transient = rc == UV_EAGAIN || rc == UV_ENOMEM || rc == UV_EMFILE || rc == UV_ENFILE;
    char msg[1024];
    snprintf(msg, sizeof(msg), "stage %s: cannot start /bin/sh%s%s%s: %s", run->stage,
             cwd ? " in \"" : "", cwd ? cwd : "", cwd ? "\"" : "", uv_strerror(rc));
    sc_stage_fail(ctx, SC_EIO, msg, transient);
    if (run->pid > 0) { /* it is watched: the run closes when it has exited */
      run->cancelled = true;
      run->eof[0] = run->eof[1] = true;
      return;
    }
    close_all(run);
    return;
  }
  uv_read_start((uv_stream_t *)&run->pipes[0], on_alloc, on_read);
  uv_read_start((uv_stream_t *)&run->pipes[1], on_alloc, on_read);
  run->ctx = ctx;
  sc_stage_set_data(ctx, run);
}

/* start and compensate: run params[field]. */
static int exec_begin(sc_stage_ctx *ctx, cli_exec *x, const char *field) {
  const char *stage = sc_stage_name(ctx);
  const cJSON *params = sc_stage_params(ctx);
  const cJSON *command = cJSON_GetObjectItemCaseSensitive(params, field), *bad;
  char why[1024];
  if (!cli_exec_check(NULL, params, &bad, NULL, why, sizeof(why)))
    return refuse(ctx, SC_EPLAN, "stage %s: %s", stage, why);
  if (command == NULL) return refuse(ctx, SC_EPLAN, "stage %s has no compensate command", stage);
  const cJSON *grace = cJSON_GetObjectItemCaseSensitive(params, "kill_grace_ms");
  uint64_t grace_ms = grace ? (uint64_t)grace->valuedouble : DEFAULT_GRACE_MS;
  const cJSON *cwd_param = cJSON_GetObjectItemCaseSensitive(params, "cwd");
  const cJSON *env_params = cJSON_GetObjectItemCaseSensitive(params, "env");
  const cJSON *args = cJSON_GetObjectItemCaseSensitive(params, "args");
  char *cwd = NULL, **argv = NULL, **env = NULL;
  exec_run *run = NULL;
  if ((argv = build_argv(ctx, command->valuestring, args)) == NULL) goto out;
  if (cwd_param != NULL && (cwd = expand_for(ctx, cwd_param->valuestring, "cwd")) == NULL) goto out;
  if ((run = calloc(1, sizeof(*run))) == NULL || (run->stage = strdup(stage)) == NULL) {
    sc_stage_fail(ctx, SC_ENOMEM, "out of memory", true);
    goto out;
  }
  run->pidfd = -1;
  run->kill_grace_ms = grace_ms;
  if (make_output(ctx, run) < 0) goto out;
  const cJSON *over = strcmp(field, "compensate") == 0
                          ? cJSON_GetObjectItemCaseSensitive(params, "compensate_env")
                          : NULL;
  if ((env = build_env(ctx, run, env_params, over)) == NULL) goto out;
  run_link(x, run);
  spawn(ctx, run, argv, cwd, env);
  run = NULL; /* the handles own it now */
out:
  if (run != NULL) run_free(run); /* not linked yet */
  strv_free(env);
  strv_free(argv);
  free(cwd);
  return SC_OK;
}

static int exec_start(sc_stage_ctx *ctx, void *udata) {
  return exec_begin(ctx, udata, "run");
}

static int exec_compensate(sc_stage_ctx *ctx, void *udata) {
  return exec_begin(ctx, udata, "compensate");
}

/* The engine gave up on the stage (timeout, task cancel, engine teardown). The stage is finished
 * here rather than when the process exits: sc_engine_free frees the contexts it gave up on, so a
 * later finish could reach freed memory. The process is still signalled and waited for; the loop
 * runs until cli_exec_running() is 0. */
static void exec_cancel(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  exec_run *run = sc_stage_get_data(ctx);
  if (run == NULL || run->ctx != ctx) return;
  run->ctx = NULL;
  run->cancelled = true;
  char msg[256];
  snprintf(msg, sizeof(msg),
           "stage %s cancelled: sent SIGTERM to process group %d (SIGKILL after %llu ms)",
           run->stage, run->pid, (unsigned long long)run->kill_grace_ms);
  if (!run->closing) {
    signal_group(run, SIGTERM);
    uv_timer_start(&run->grace, on_grace, run->kill_grace_ms, 0);
  }
  sc_stage_fail(ctx, SC_ECANCELLED, msg, false);
}

/* ---- the registry ---- */

int cli_exec_register(sc_engine *e, cli_output_fn output, void *udata, cli_exec **out) {
  static const sc_stage_kind kind = {SC_STAGE_KIND_VERSION, exec_start, exec_cancel,
                                     exec_compensate};
  if (out != NULL) *out = NULL;
  if (e == NULL || out == NULL) return sc_error_set(SC_EINVAL, "cli_exec_register: NULL argument");
  cli_exec *x = calloc(1, sizeof(*x));
  if (x == NULL) return sc_error_set(SC_ENOMEM, "out of memory");
  x->output = output;
  x->udata = udata;
  int rc = sc_engine_register_kind(e, "exec", &kind, x);
  if (rc < 0) {
    free(x);
    return rc;
  }
  *out = x;
  return SC_OK;
}

size_t cli_exec_running(const cli_exec *x) {
  return x ? x->nruns : 0;
}

void cli_exec_kill_all(cli_exec *x) {
  if (x == NULL) return;
  for (exec_run *run = x->runs; run != NULL; run = run->next)
    if (!run->closing) signal_group(run, SIGKILL);
}

void cli_exec_free(cli_exec *x) {
  if (x == NULL) return;
  /* Normally none is left (the caller ran the loop until cli_exec_running() was 0); any that is
   * frees itself when its handles close and passes nothing on any more. */
  for (exec_run *run = x->runs, *next; run != NULL; run = next) {
    next = run->next;
    if (!run->closing) signal_group(run, SIGKILL);
    run->x = NULL;
    run->prev = run->next = NULL;
  }
  free(x);
}
