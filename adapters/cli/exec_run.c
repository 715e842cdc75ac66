/* One running command of the exec kind: its output passed on line by line, its exit (a pidfd on
 * the loop, or libuv's child watcher), what it left in its process group after it exited (the
 * sweep), a cancel's SIGTERM and SIGKILL, and its result read from $SC_OUTPUT. */
#define _GNU_SOURCE /* waitid's siginfo fields */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "exec_int.h"
#include "jsonpos.h"

/* Removes a directory and what a command left in it (not following links). */
void cli__exec_remove_tree(const char *path, int depth) {
  DIR *d = depth < 16 ? opendir(path) : NULL;
  if (d != NULL) {
    struct dirent *ent;
    while ((ent = readdir(d)) != NULL) {
      if (strcmp(ent->d_name, ".") == 0 || strcmp(ent->d_name, "..") == 0) continue;
      char *child = cli__exec_join(path, "/", ent->d_name);
      if (child == NULL) continue;
      struct stat st;
      if (lstat(child, &st) == 0 && S_ISDIR(st.st_mode))
        cli__exec_remove_tree(child, depth + 1);
      else
        unlink(child);
      free(child);
    }
    closedir(d);
  }
  rmdir(path);
}

void cli__exec_run_free(exec_run *run) {
  cli_exec *x = run->x;
  if (x != NULL) {
    sc__queue_remove(&run->node);
    x->nruns--;
    cli__exec_start_waiting(x, run);
  }
  free(run->task_id);
  cli__exec_strv_free(run->waiting_argv);
  cli__exec_strv_free(run->waiting_env);
  free(run->waiting_cwd);
  if (run->tmpdir != NULL) cli__exec_remove_tree(run->tmpdir, 0);
  free(run->tmpdir);
  free(run->output_path);
  free(run->context_path);
  free(run->partial[0].p);
  free(run->partial[1].p);
  free(run->stage);
  if (run->pidfd >= 0) close(run->pidfd);
  free(run);
}

static void on_handle_closed(uv_handle_t *h) {
  exec_run *run = h->data;
  if (--run->open_handles == 0) cli__exec_run_free(run);
}

/* Closes every handle of the run; it is freed when the last close callback has run. */
void cli__exec_close_all(exec_run *run) {
  run->closing = true;
  uv_handle_t *watch =
      run->by_libuv ? (uv_handle_t *)&run->process : (uv_handle_t *)&run->exit_poll;
  uv_handle_t *handles[] = {watch, (uv_handle_t *)&run->pipes[0], (uv_handle_t *)&run->pipes[1],
                            (uv_handle_t *)&run->grace};
  for (size_t i = 0; i < sizeof(handles) / sizeof(handles[0]); i++)
    if (handles[i]->type != UV_UNKNOWN_HANDLE && !uv_is_closing(handles[i]))
      uv_close(handles[i], on_handle_closed);
}

void cli__exec_signal_group(exec_run *run, int sig) {
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
void cli__exec_emit_line(exec_run *run, int fd, const char *line, size_t len) {
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
  sc__buf *pending = &run->partial[i];
  int fd = i + 1;
  while (n > 0) {
    char *nl = memchr(data, '\n', n);
    size_t take = nl ? (size_t)(nl - data) : n;
    if (pending->len + take > LINE_MAX_BYTES) {
      size_t room = LINE_MAX_BYTES - pending->len;
      if (sc__buf_add(pending, data, room)) cli__exec_emit_line(run, fd, pending->p, pending->len);
      sc__buf_reset(pending);
      data += room;
      n -= room;
      continue;
    }
    if (nl == NULL) {
      if (!sc__buf_add(pending, data, take))
        sc__buf_reset(pending); /* out of memory: the piece is lost */
      return;
    }
    if (pending->len == 0) {
      *nl = '\0'; /* our own read buffer */
      cli__exec_emit_line(run, fd, data, take);
    } else {
      if (sc__buf_add(pending, data, take)) cli__exec_emit_line(run, fd, pending->p, pending->len);
      sc__buf_reset(pending);
    }
    data += take + 1;
    n -= take + 1;
  }
}

/* The kept lines, oldest first, after "; last output:\n"; nothing when there are none. */
static void append_tail(exec_run *run, sc__buf *msg) {
  if (run->tail_count == 0) return;
  sc__buf_adds(msg, "; last output:");
  size_t first = (run->tail_next + TAIL_LINES - run->tail_count) % TAIL_LINES;
  for (size_t k = 0; k < run->tail_count; k++) {
    sc__buf_adds(msg, "\n");
    sc__buf_adds(msg, run->tail[(first + k) % TAIL_LINES]);
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

static void complete_from_output(exec_run *run, sc_stage_ctx *ctx) {
  char *text;
  size_t len;
  char msg[512];
  /* The command may have put anything under that name: only a regular file is read, opened
   * without blocking, so a FIFO or a terminal there can never stall the loop. A file that is
   * gone is an empty output. */
  int got = sc__read_file(run->output_path, OUTPUT_MAX_BYTES, true, &text, &len);
  if (got == ENOENT) got = 0;
  if (got == SC__READ_NOT_REGULAR) {
    snprintf(msg, sizeof(msg),
             "SC_OUTPUT of stage %s is not a regular file (a FIFO, device or "
             "directory was put in its place): it is not read",
             run->stage);
    sc_stage_fail(ctx, SC_EIO, msg, false);
    return;
  }
  if (got != 0) {
    snprintf(msg, sizeof(msg), "cannot read SC_OUTPUT of stage %s: %s", run->stage, strerror(got));
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
  sc__buf msg = {0};
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
  sc__buf_adds(&msg, head);
  append_tail(run, &msg);
  sc_stage_fail(ctx, SC_EIO, msg.p ? msg.p : head, retryable);
  free(msg.p);
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
  if (run->cancelled) cli__exec_signal_group(run, SIGKILL);
  sc_stage_ctx *ctx = run->ctx;
  run->ctx = NULL;
  if (ctx != NULL && run->held) {
    sc_stage_set_data(ctx, &cli__exec_held_marker); /* no result: the cancel that follows ends it */
    ctx = NULL;
  }
  if (ctx != NULL) deliver(run, ctx);
  if (!run->cancelled && !run->swept && group_alive(run)) {
    start_sweep(run);
    return;
  }
  cli__exec_close_all(run);
}

/* Gives up the pipes a process that left the group may still hold: nothing more is read. */
static void abandon_pipes(exec_run *run) {
  for (int i = 0; i < 2; i++) {
    if (run->eof[i]) continue;
    uv_read_stop((uv_stream_t *)&run->pipes[i]);
    if (run->partial[i].len > 0)
      cli__exec_emit_line(run, i + 1, run->partial[i].p, run->partial[i].len);
    sc__buf_reset(&run->partial[i]);
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
      cli__exec_signal_group(run, SIGKILL);
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
  cli__exec_signal_group(run, SIGTERM);
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

void cli__exec_on_process_exit(uv_process_t *process, int64_t exit_status, int term_signal) {
  process_exited(process->data, exit_status, term_signal);
}

/* The pidfd became readable: the process exited. It is reaped here (no one else waits for it:
 * libuv's SIGCHLD handler waits only for the children it spawned itself). */
void cli__exec_on_pidfd(uv_poll_t *poll, int status, int events) {
  (void)status; /* whatever the poll says, waitid tells whether the process exited */
  (void)events;
  exec_run *run = poll->data;
  siginfo_t info;
  memset(&info, 0, sizeof(info));
  int rc;
  while ((rc = waitid(P_PID, (id_t)run->pid, &info, WEXITED | WNOHANG)) < 0 && errno == EINTR) {
  }
  if (rc == 0 && info.si_pid == 0) return; /* not exited yet: a spurious wakeup */
  uv_poll_stop(poll);
  if (rc < 0) { /* reaped elsewhere: the status is lost */
    process_exited(run, 255, 0);
    return;
  }
  bool signalled = info.si_code == CLD_KILLED || info.si_code == CLD_DUMPED;
  process_exited(run, signalled ? 0 : info.si_status, signalled ? info.si_status : 0);
}

void cli__exec_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  exec_run *run = h->data;
  /* One buffer serves both pipes: libuv hands each read to cli__exec_on_read before the next alloc.
   */
  *buf = uv_buf_init(run->readbuf, sizeof(run->readbuf));
}

void cli__exec_on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  exec_run *run = stream->data;
  int i = stream == (uv_stream_t *)&run->pipes[0] ? 0 : 1;
  if (nread > 0) {
    feed(run, i, buf->base, (size_t)nread);
    return;
  }
  if (nread == 0) return;
  /* End of file, or an error: either way nothing more comes. A last line without '\n' counts. */
  uv_read_stop(stream);
  sc__buf *pending = &run->partial[i];
  if (pending->len > 0) {
    cli__exec_emit_line(run, i + 1, pending->p, pending->len);
    sc__buf_reset(pending);
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

void cli__exec_on_grace(uv_timer_t *timer) {
  exec_run *run = timer->data;
  if (run->closing) return;
  cli__exec_signal_group(run, SIGKILL);
  uv_timer_start(timer, on_give_up, SWEEP_GIVE_UP_MS, 0);
}
