/* The "exec" stage kind of the stagecoach command: the check of a stage's members, the command it
 * becomes (/bin/sh -c RUN stagecoach ARGS..., values only in its environment, arguments and
 * working directory) and its start through posix_spawn in a process group of its own. What
 * happens while it runs is in exec_run.c. */
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

#include "exec_int.h"

extern char **environ;

#define DEFAULT_GRACE_MS 5000
#define CONTEXT_ENV_MAX  (96 * 1024) /* a larger context is in $SC_CONTEXT_FILE only */

/* ---- starting ---- */

/* Fails ctx (not retryable) with a printf-style message; the kind's start then returns 0. */
static int refuse(sc_stage_ctx *ctx, int code, const char *fmt, ...) SC__PRINTF(3, 4);
static int refuse(sc_stage_ctx *ctx, int code, const char *fmt, ...) {
  char msg[1024];
  SC__FORMAT_ARGS(msg, fmt);
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
    "SC_TASK_ID",  "SC_TENANT",  "SC_STAGE",   "SC_ATTEMPT", "SC_MODE",        "SC_IDEMPOTENCY_KEY",
    "TRACEPARENT", "TRACESTATE", "SC_CONTEXT", "SC_OUTPUT",  "SC_CONTEXT_FILE"};
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
    SC__PRINTF(5, 6);

static bool wrong(const cJSON **bad, const cJSON *v, char *why, size_t len, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  sc__vformat(why, len, fmt, ap);
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

/* The first member of obj that is neither an exec param nor (skip_spec) a stage's spec field. */
static const cJSON *unknown_member(const cJSON *obj, bool skip_spec) {
  static const char *const known[] = {"run",           "compensate",          "args",
                                      "kill_grace_ms", "no_retry_exit_codes", "cwd",
                                      "env",           "compensate_env"};
  static const char *const spec[] = {"name",  "kind",     "params", "timeout_ms",
                                     "retry", "approval", "effect"};
  const cJSON *m;
  cJSON_ArrayForEach(m, obj) {
    if (m->string == NULL) return m;
    if (sc__name_index(known, sizeof(known) / sizeof(known[0]), m->string) >= 0) continue;
    if (skip_spec && sc__name_index(spec, sizeof(spec) / sizeof(spec[0]), m->string) >= 0) continue;
    return m;
  }
  return NULL;
}

bool cli_exec_check(const cJSON *stage, const cJSON *params, const cJSON **bad, size_t *offset,
                    char *why, size_t len) {
  *bad = NULL;
  if (offset != NULL) *offset = SIZE_MAX;
  /* A misspelt member ("comensate") is refused, as the top level of a pipeline refuses one. */
  const cJSON *odd = cJSON_IsObject(stage) ? unknown_member(stage, true) : NULL;
  if (odd == NULL && cJSON_IsObject(params)) odd = unknown_member(params, false);
  if (odd != NULL)
    return wrong(bad, odd, why, len,
                 "\"%s\" is not a member of an exec stage (members: run, compensate, args, "
                 "kill_grace_ms, no_retry_exit_codes, cwd, env, compensate_env)",
                 odd->string ? odd->string : "");
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

char *cli__exec_join(const char *a, const char *b, const char *c) {
  sc__buf out = {0};
  if (sc__buf_adds(&out, a) && sc__buf_adds(&out, b) && (c == NULL || sc__buf_adds(&out, c)))
    return out.p;
  sc__buf_free(&out);
  return NULL;
}

/* A path in the run's directory; NULL after failing the stage. */
static char *path_for(sc_stage_ctx *ctx, const char *dir, const char *name) {
  char *path = cli__exec_join(dir, name, NULL);
  if (path == NULL) sc_stage_fail(ctx, SC_ENOMEM, "out of memory", true);
  return path;
}

void cli__exec_strv_free(char **v) {
  if (v == NULL) return;
  for (char **p = v; *p != NULL; p++)
    free(*p);
  free(v);
}
#define strv_free cli__exec_strv_free

/* $SC_CONTEXT_FILE: the context as JSON, beside $SC_OUTPUT. 0, or -1 after failing the stage. */
static int write_context(sc_stage_ctx *ctx, exec_run *run, const char *json) {
  if ((run->context_path = path_for(ctx, run->tmpdir, "/context.json")) == NULL) return -1;
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
    env[(*n)++] = cli__exec_join(m->string, "=", value ? value : "");
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
  /* TRACEPARENT and TRACESTATE are the task's trace (the stage's span), never ours: a task
   * without one leaves the command without either. */
  const char *traceparent = sc_stage_traceparent(ctx);
  const char *values[OWN_VAR_COUNT] = {t ? sc_task_id(t) : "",
                                       tenant ? tenant : "",
                                       sc_stage_name(ctx),
                                       attempt,
                                       sc_stage_mode(ctx),
                                       sc_stage_idempotency_key(ctx),
                                       traceparent,
                                       traceparent && t ? sc_task_tracestate(t) : NULL,
                                       strlen(context) <= CONTEXT_ENV_MAX ? context : NULL,
                                       run->output_path,
                                       run->context_path};
  bool ok = true;
  for (size_t i = 0; i < OWN_VAR_COUNT && ok; i++)
    ok = values[i] == NULL || (env[n++] = cli__exec_join(own_vars[i], "=", values[i])) != NULL;
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

/* The argument vector: /bin/sh -c -- SCRIPT stagecoach ARGS..., each of args expanded. NULL after
 * failing the stage. */
static char **build_argv(sc_stage_ctx *ctx, const char *script, const cJSON *args) {
  size_t extra = (size_t)cJSON_GetArraySize(args);
  char **argv = calloc(extra + 6, sizeof(*argv));
  /* "--": a script that begins with '-' or '+' is the script, not an option of the shell. */
  if (argv == NULL || (argv[0] = strdup("/bin/sh")) == NULL || (argv[1] = strdup("-c")) == NULL ||
      (argv[2] = strdup("--")) == NULL || (argv[3] = cli_exec_script(script)) == NULL ||
      (argv[4] = strdup("stagecoach")) == NULL)
    goto nomem;
  size_t i = 5;
  const cJSON *a;
  cJSON_ArrayForEach(a, args) {
    char what[32];
    snprintf(what, sizeof(what), "args.%zu", i - 5);
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

/* Where the stages' private directories go: $TMPDIR when set to an absolute path; else a
 * memory-backed directory
 * ($XDG_RUNTIME_DIR, /dev/shm) when there is one we may write to; else /tmp. Creating and removing
 * three files per stage on a disk file system costs more than starting the command itself (on
 * ext4 here, about 0.4 ms of the 1.2 ms a spawn takes); in memory it is a few microseconds. */
static const char *work_base(void) {
  /* Only an absolute one: the command runs in its own cwd, where a relative path names
   * something else. */
  const char *base = getenv("TMPDIR");
  if (base != NULL && base[0] == '/') return base;
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
  char name[64];
  snprintf(name, sizeof(name), "/stagecoach-exec-%ld-XXXXXX", (long)getpid());
  char *dir = path_for(ctx, base, name);
  if (dir == NULL) return -1;
  if (mkdtemp(dir) == NULL) {
    char msg[512];
    snprintf(msg, sizeof(msg), "stage %s: cannot create a temporary directory in %s: %s",
             sc_stage_name(ctx), base, strerror(errno));
    free(dir);
    sc_stage_fail(ctx, SC_EIO, msg, true);
    return -1;
  }
  run->tmpdir = dir;
  if ((run->output_path = path_for(ctx, run->tmpdir, "/output.json")) == NULL) return -1;
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
  sc__queue_insert_head(&x->runs, &run->node);
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
 * session (and process group), default signal handling, an empty signal mask, /dev/null as stdin
 * and the pipes as stdout and stderr. 0 or a negative errno. */
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
    /* A session of its own, as uv_spawn's detached child has: its group is signalled as a whole,
     * and without a controlling terminal a command that reads /dev/tty fails at once instead of
     * being stopped by SIGTTIN in a background group of ours. */
    rc = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK |
                                             POSIX_SPAWN_SETSIGDEF);
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
  uv_poll_start(&run->exit_poll, UV_READABLE, cli__exec_on_pidfd);
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
  options.exit_cb = cli__exec_on_process_exit;
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
    if (run->pid > 0)
      cli__exec_signal_group(run, SIGKILL); /* started, but its output cannot be read */
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
    cli__exec_close_all(run);
    return;
  }
  uv_read_start((uv_stream_t *)&run->pipes[0], cli__exec_on_alloc, cli__exec_on_read);
  uv_read_start((uv_stream_t *)&run->pipes[1], cli__exec_on_alloc, cli__exec_on_read);
  run->ctx = ctx;
  sc_stage_set_data(ctx, run);
}

/* A run of the same stage of the same task that the engine gave up on and whose command has not
 * ended yet; NULL when there is none. */
static exec_run *still_ending(cli_exec *x, const exec_run *run) {
  if (run->task_id == NULL) return NULL;
  sc__queue *q;
  sc__queue_foreach(q, &x->runs) {
    exec_run *r = cli__exec_run_of(q);
    if (r->ctx == NULL && r->waits_for == NULL && r->task_id != NULL &&
        strcmp(r->task_id, run->task_id) == 0 && strcmp(r->stage, run->stage) == 0)
      return r;
  }
  return NULL;
}

/* A run that waits for an earlier one leaves the list and is freed (it has nothing open). */
static void drop_waiting(exec_run *run) {
  run->waits_for = NULL;
  cli__exec_run_free(run);
}

void cli__exec_start_waiting(cli_exec *x, exec_run *gone) {
  sc__queue *q = x->runs.next;
  while (q != &x->runs) {
    exec_run *r = cli__exec_run_of(q);
    sc__queue *next = q->next;
    if (r->waits_for == gone && x->killed) { /* everything is being taken down */
      sc_stage_ctx *ctx = r->ctx;
      char msg[256];
      snprintf(msg, sizeof(msg), "stage %s cancelled before its command started", r->stage);
      sc_stage_set_data(ctx, NULL);
      drop_waiting(r);
      sc_stage_fail(ctx, SC_ECANCELLED, msg, false);
      next = x->runs.next;
    } else if (r->waits_for == gone) {
      sc_stage_ctx *ctx = r->ctx;
      char **argv = r->waiting_argv, **env = r->waiting_env;
      char *cwd = r->waiting_cwd;
      r->waits_for = NULL;
      r->waiting_argv = r->waiting_env = NULL;
      r->waiting_cwd = NULL;
      r->ctx = NULL;
      spawn(ctx, r, argv, cwd, env);
      strv_free(argv);
      strv_free(env);
      free(cwd);
      next = x->runs.next; /* spawn may have failed and changed the list: look again */
    }
    q = next;
  }
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
  sc__queue_init(&run->node);
  run->pidfd = -1;
  run->kill_grace_ms = grace_ms;
  if (make_output(ctx, run) < 0) goto out;
  const cJSON *over = strcmp(field, "compensate") == 0
                          ? cJSON_GetObjectItemCaseSensitive(params, "compensate_env")
                          : NULL;
  if ((env = build_env(ctx, run, env_params, over)) == NULL) goto out;
  const sc_task *task = sc_stage_task(ctx);
  if (task != NULL && (run->task_id = strdup(sc_task_id(task))) == NULL) {
    sc_stage_fail(ctx, SC_ENOMEM, "out of memory", true);
    goto out;
  }
  exec_run *earlier = still_ending(x, run);
  run_link(x, run);
  if (earlier != NULL) {
    /* The engine has moved on from that attempt, its command has not: this one starts when
     * that one is gone (its grace period at most, then SIGKILL). */
    run->waits_for = earlier;
    run->waiting_argv = argv;
    run->waiting_env = env;
    run->waiting_cwd = cwd;
    argv = env = NULL;
    cwd = NULL;
    run->ctx = ctx;
    sc_stage_set_data(ctx, run);
    char note[160];
    int len = snprintf(note, sizeof(note),
                       "stagecoach: this attempt starts once the command of the one before "
                       "(process group %d) has ended",
                       earlier->pid);
    cli__exec_emit_line(run, 2, note, (size_t)len);
    run = NULL;
    goto out;
  }
  spawn(ctx, run, argv, cwd, env);
  run = NULL; /* the handles own it now */
out:
  if (run != NULL) cli__exec_run_free(run); /* not linked yet */
  strv_free(env);
  strv_free(argv);
  free(cwd);
  return SC_OK;
}

char cli__exec_held_marker;

/* Whether the stage's task can still be cancelled (a rollback cannot: it runs to its end). */
static bool cancellable(sc_stage_ctx *ctx) {
  sc_task *t = sc_stage_task(ctx);
  return t != NULL && sc_transition_allowed(sc_task_get_status(t), SC_TASK_CANCELLED);
}

static int exec_start(sc_stage_ctx *ctx, void *udata) {
  cli_exec *x = udata;
  if (x->stopping && cancellable(ctx)) { /* interrupted: the cancel that follows ends it */
    sc_stage_set_data(ctx, &cli__exec_held_marker);
    return SC_OK;
  }
  return exec_begin(ctx, x, "run");
}

static int exec_compensate(sc_stage_ctx *ctx, void *udata) {
  cli_exec *x = udata;
  if (x->stopping && cancellable(ctx)) {
    sc_stage_set_data(ctx, &cli__exec_held_marker);
    return SC_OK;
  }
  return exec_begin(ctx, x, "compensate");
}

/* The engine gave up on the stage (timeout, task cancel, engine teardown). The stage is finished
 * here rather than when the process exits: sc_engine_free frees the contexts it gave up on, so a
 * later finish could reach freed memory. The process is still signalled and waited for; the loop
 * runs until cli_exec_running() is 0. */
static void exec_cancel(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  if (sc_stage_get_data(ctx) == &cli__exec_held_marker) {
    sc_stage_set_data(ctx, NULL);
    char msg[256];
    snprintf(msg, sizeof(msg), "stage %s cancelled: its command was stopped", sc_stage_name(ctx));
    sc_stage_fail(ctx, SC_ECANCELLED, msg, false);
    return;
  }
  exec_run *run = sc_stage_get_data(ctx);
  if (run == NULL || run->ctx != ctx) return;
  if (run->waits_for != NULL) { /* never spawned */
    char msg[256];
    snprintf(msg, sizeof(msg),
             "stage %s cancelled before its command started (the previous attempt's command was "
             "still ending)",
             run->stage);
    sc_stage_set_data(ctx, NULL);
    drop_waiting(run);
    sc_stage_fail(ctx, SC_ECANCELLED, msg, false);
    return;
  }
  run->ctx = NULL;
  run->cancelled = true;
  char msg[256];
  snprintf(msg, sizeof(msg),
           "stage %s cancelled: sent SIGTERM to process group %d (SIGKILL after %llu ms)",
           run->stage, run->pid, (unsigned long long)run->kill_grace_ms);
  if (!run->closing) {
    cli__exec_signal_group(run, SIGTERM);
    uv_timer_start(&run->grace, cli__exec_on_grace, run->kill_grace_ms, 0);
  }
  sc_stage_fail(ctx, SC_ECANCELLED, msg, false);
}

/* ---- the registry ---- */

/* Removes the private directories that a stagecoach killed with -9 left behind (they hold the
 * context it passed its commands): those named for a process that no longer exists and owned by
 * us. A directory of a live process, or of another user, is left alone. */
static void sweep_stale_dirs(void) {
  const char *base = work_base();
  DIR *d = opendir(base);
  if (d == NULL) return;
  static const char prefix[] = "stagecoach-exec-";
  struct dirent *ent;
  while ((ent = readdir(d)) != NULL) {
    if (strncmp(ent->d_name, prefix, sizeof(prefix) - 1) != 0) continue;
    char *end;
    long pid = strtol(ent->d_name + sizeof(prefix) - 1, &end, 10);
    if (end == ent->d_name + sizeof(prefix) - 1 || *end != '-' || pid <= 0 || pid == getpid() ||
        kill((pid_t)pid, 0) == 0 || errno != ESRCH)
      continue;
    char *path = cli__exec_join(base, "/", ent->d_name);
    struct stat st;
    if (path != NULL && lstat(path, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == geteuid())
      cli__exec_remove_tree(path, 0);
    free(path);
  }
  closedir(d);
}

int cli_exec_register(sc_engine *e, cli_output_fn output, void *udata, cli_exec **out) {
  static const sc_stage_kind kind = {SC_STAGE_KIND_VERSION, exec_start, exec_cancel,
                                     exec_compensate};
  if (out != NULL) *out = NULL;
  if (e == NULL || out == NULL) return sc_error_set(SC_EINVAL, "cli_exec_register: NULL argument");
  cli_exec *x = calloc(1, sizeof(*x));
  if (x == NULL) return sc_error_set(SC_ENOMEM, "out of memory");
  x->output = output;
  x->udata = udata;
  sc__queue_init(&x->runs);
  sweep_stale_dirs();
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

size_t cli_exec_stopping(const cli_exec *x) {
  /* Only the commands stop_all stopped. A command the engine gave up on before (a timeout, in its
   * grace period) is not waited for: the engine would meanwhile go on timing out the attempts
   * that wait for it, and fail the task instead of cancelling it. It ends with its grace period,
   * or by cli_exec_kill_all when the program exits. */
  size_t n = 0;
  sc__queue *q;
  if (x == NULL) return 0;
  sc__queue_foreach(q, &x->runs) {
    n += cli__exec_run_of(q)->held;
  }
  return n;
}

void cli_exec_stop_all(cli_exec *x) {
  if (x == NULL) return;
  x->stopping = true;
  sc__queue *q, *next;
  sc__queue_foreach_safe(q, next, &x->runs) {
    exec_run *run = cli__exec_run_of(q);
    if (run->waits_for != NULL && cancellable(run->ctx)) { /* not started: it never will be */
      sc_stage_set_data(run->ctx, &cli__exec_held_marker);
      drop_waiting(run);
      continue;
    }
    if (run->waits_for != NULL || run->closing || run->exited || run->cancelled || run->sweeping ||
        run->ctx == NULL || !cancellable(run->ctx))
      continue;
    run->held = true;
    cli__exec_signal_group(run, SIGTERM);
    uv_timer_start(&run->grace, cli__exec_on_grace, run->kill_grace_ms, 0);
  }
}

void cli_exec_kill_all(cli_exec *x) {
  if (x == NULL) return;
  x->killed = true;
  sc__queue *q;
  sc__queue_foreach(q, &x->runs) {
    exec_run *run = cli__exec_run_of(q);
    if (!run->closing) cli__exec_signal_group(run, SIGKILL);
  }
}

void cli_exec_free(cli_exec *x) {
  if (x == NULL) return;
  /* Normally none is left (the caller ran the loop until cli_exec_running() was 0); any that is
   * frees itself when its handles close and passes nothing on any more. */
  sc__queue *q, *next;
  sc__queue_foreach_safe(q, next, &x->runs) {
    exec_run *run = cli__exec_run_of(q);
    if (!run->closing) cli__exec_signal_group(run, SIGKILL);
    run->x = NULL;
    sc__queue_remove(&run->node);
    if (run->waits_for != NULL) cli__exec_run_free(run); /* nothing open: nothing will free it */
  }
  free(x);
}
