/* The exec stage kind of the stagecoach command: variable expansion, real shell commands through
 * libuv, their output, environment, exit statuses, timeouts, cancels and compensation. */
#define _GNU_SOURCE /* unshare, CLONE_NEWNS */
#include "harness.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"

/* ---- what the commands print ---- */

typedef struct out_line {
  char *stage, *text;
  int fd;
} out_line;

typedef struct capture {
  out_line *lines;
  size_t n, cap;
} capture;

static void on_output(const char *stage, int fd, const char *line, size_t len, void *udata) {
  capture *c = udata;
  if (c->n == c->cap) {
    c->cap = c->cap ? c->cap * 2 : 64;
    c->lines = realloc(c->lines, c->cap * sizeof(*c->lines));
    assert_non_null(c->lines);
  }
  out_line *l = &c->lines[c->n++];
  l->stage = strdup(stage);
  l->text = malloc(len + 1);
  memcpy(l->text, line, len);
  l->text[len] = '\0';
  l->fd = fd;
}

static bool capture_has(const capture *c, const char *stage, int fd, const char *text) {
  for (size_t i = 0; i < c->n; i++)
    if (strcmp(c->lines[i].stage, stage) == 0 && c->lines[i].fd == fd &&
        strcmp(c->lines[i].text, text) == 0)
      return true;
  return false;
}

static void capture_free(capture *c) {
  for (size_t i = 0; i < c->n; i++) {
    free(c->lines[i].stage);
    free(c->lines[i].text);
  }
  free(c->lines);
  memset(c, 0, sizeof(*c));
}

/* ---- one engine with the exec kind on a loop of the test's own ---- */

typedef struct fixture {
  uv_loop_t loop;
  sc_engine *e;
  cli_exec *x;
  recorder r;
  capture out;
  char dir[PATH_MAX]; /* a scratch directory for the commands' pid files */
} fixture;

static void fixture_open_with(fixture *f, cli_output_fn output) {
  memset(f, 0, sizeof(*f));
  assert_int_equal(uv_loop_init(&f->loop), 0);
  assert_int_equal(sc_engine_new(&f->loop, NULL, &f->e), SC_OK);
  assert_int_equal(cli_exec_register(f->e, output, &f->out, &f->x), SC_OK);
  assert_non_null(f->x);
  recorder_attach(&f->r, f->e);
  const char *base = getenv("TMPDIR");
  snprintf(f->dir, sizeof(f->dir), "%s/test-exec-XXXXXX", base && *base ? base : "/tmp");
  assert_non_null(mkdtemp(f->dir));
  char real[PATH_MAX];
  assert_non_null(realpath(f->dir, real));
  snprintf(f->dir, sizeof(f->dir), "%s", real);
}

static void fixture_open(fixture *f) {
  fixture_open_with(f, on_output);
}

typedef int (*cond_fn)(fixture *f, const void *arg);

typedef struct waiter {
  fixture *f;
  cond_fn cond;
  const void *arg;
  uint64_t deadline;
  int met;
} waiter;

static void waiter_tick(uv_timer_t *t) {
  waiter *w = t->data;
  if ((w->met = w->cond(w->f, w->arg)) || uv_now(t->loop) >= w->deadline) uv_stop(t->loop);
}

/* Runs the loop until cond holds, at most limit_ms; returns whether it holds. */
static int wait_for(fixture *f, cond_fn cond, const void *arg, uint64_t limit_ms) {
  if (cond(f, arg)) return 1;
  uv_timer_t timer;
  waiter w = {f, cond, arg, 0, 0};
  uv_update_time(&f->loop);
  w.deadline = uv_now(&f->loop) + limit_ms;
  uv_timer_init(&f->loop, &timer);
  timer.data = &w;
  uv_timer_start(&timer, waiter_tick, 2, 2);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&timer, NULL);
  uv_run(&f->loop, UV_RUN_NOWAIT);
  return cond(f, arg);
}

static int no_command_running(fixture *f, const void *arg) {
  (void)arg;
  return cli_exec_running(f->x) == 0;
}

static int has_event(fixture *f, const void *arg) {
  return recorder_count(&f->r, *(const sc_event_type *)arg, NULL) > 0;
}

typedef struct event_count {
  sc_event_type type;
  size_t n;
} event_count;

static int has_events(fixture *f, const void *arg) {
  const event_count *want = arg;
  return recorder_count(&f->r, want->type, NULL) >= want->n;
}

static void wait_event(fixture *f, sc_event_type type, uint64_t limit_ms) {
  if (!wait_for(f, has_event, &type, limit_ms))
    fail_msg("no %s after %llu ms; events: %s", sc_event_type_name(type),
             (unsigned long long)limit_ms, recorder_types(&f->r, NULL));
}

static void remove_dir(const char *dir) {
  char cmd[PATH_MAX + 16];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
  assert_int_equal(system(cmd), 0);
}

/* Every test ends here: no command left, the engine and the registry freed, the loop closed. */
static void fixture_close(fixture *f) {
  if (!wait_for(f, no_command_running, NULL, 10000))
    fail_msg("%zu commands still running after 10 s", cli_exec_running(f->x));
  sc_engine_free(f->e);
  cli_exec_free(f->x);
  recorder_free(&f->r);
  capture_free(&f->out);
  remove_dir(f->dir);
  assert_int_equal(uv_loop_close(&f->loop), 0);
}

/* ---- configs and tasks ---- */

/* {"name":name,"kind":"exec","run":run} (run may be NULL). */
static cJSON *exec_stage(const char *name, const char *run) {
  cJSON *st = cJSON_CreateObject();
  cJSON_AddStringToObject(st, "name", name);
  cJSON_AddStringToObject(st, "kind", "exec");
  if (run != NULL) cJSON_AddStringToObject(st, "run", run);
  return st;
}

static void add_json(cJSON *obj, const char *name, const char *json) {
  cJSON_AddItemToObject(obj, name, json_or_die(json));
}

/* {"version":"2.4.1","stages":[...]} from a NULL-terminated list of stages (taken over). */
static cJSON *config_of(cJSON *first, ...) {
  cJSON *config = cJSON_CreateObject();
  cJSON_AddStringToObject(config, "version", "2.4.1");
  cJSON *stages = cJSON_AddArrayToObject(config, "stages");
  va_list ap;
  va_start(ap, first);
  for (cJSON *st = first; st != NULL; st = va_arg(ap, cJSON *))
    cJSON_AddItemToArray(stages, st);
  va_end(ap);
  return config;
}

static sc_task *submit(fixture *f, const char *id, const char *tenant, const cJSON *config,
                       const cJSON *context) {
  return submit_config(f->e, id, tenant, "exec-test", config, context);
}

static const char *str_at(const cJSON *obj, const char *path) {
  const cJSON *v = obj;
  char buf[128];
  snprintf(buf, sizeof(buf), "%s", path);
  for (char *seg = strtok(buf, "."); seg != NULL && v != NULL; seg = strtok(NULL, "."))
    v = cJSON_GetObjectItemCaseSensitive(v, seg);
  if (!cJSON_IsString(v)) fail_msg("\"%s\" is not a string", path);
  return v->valuestring;
}

/* The error of the nth stage.failed: its name and message (copied into the buffers). */
static void failure(const fixture *f, size_t nth, char *name, char *message, size_t size,
                    bool *will_retry) {
  cJSON *root;
  const cJSON *data = event_data(&f->r, SC_EV_STAGE_FAILED, nth, &root);
  snprintf(name, 32, "%s", str_at(data, "error.name"));
  snprintf(message, size, "%s", str_at(data, "error.message"));
  if (will_retry != NULL)
    *will_retry = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(data, "will_retry"));
  cJSON_Delete(root);
}

/* ---- processes ---- */

static pid_t read_pid(const char *dir, const char *file) {
  char path[PATH_MAX + 64];
  snprintf(path, sizeof(path), "%s/%s", dir, file);
  FILE *fp = fopen(path, "r");
  if (fp == NULL) return 0;
  long pid = 0;
  if (fscanf(fp, "%ld", &pid) != 1) pid = 0;
  fclose(fp);
  return (pid_t)pid;
}

static int pid_written(fixture *f, const void *file) {
  return read_pid(f->dir, file) > 0;
}

/* Gone: no such process, or a zombie (an orphan whose parent, the container's init here, has not
 * reaped it: it is dead, only its entry remains). */
static bool process_gone(pid_t pid) {
  if (kill(pid, 0) == -1 && errno == ESRCH) return true;
  char path[64], buf[512];
  snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
  FILE *fp = fopen(path, "r");
  if (fp == NULL) return true;
  size_t n = fread(buf, 1, sizeof(buf) - 1, fp);
  fclose(fp);
  buf[n] = '\0';
  const char *paren = strrchr(buf, ')');
  return paren != NULL && paren[1] == ' ' && (paren[2] == 'Z' || paren[2] == 'X');
}

static int pids_gone(fixture *f, const void *arg) {
  (void)f;
  for (const pid_t *p = arg; *p != 0; p++)
    if (!process_gone(*p)) return 0;
  return 1;
}

/* ---- expansion ---- */

typedef struct vars {
  cJSON *config, *context;
} vars;

static vars vars_new(void) {
  vars v;
  v.config = json_or_die("{\"version\":\"2.4.1\",\"deploy\":{\"region\":\"eu-west\","
                         "\"replicas\":3,\"ratio\":0.5,\"canary\":true,\"big\":1e21,"
                         "\"hosts\":[\"a\",\"b\"],\"limits\":{\"cpu\":2},\"none\":null}}");
  v.context =
      json_or_die("{\"build_id\":\"b-7\",\"n\":-42,\"ok\":false,\"meta\":{\"sha\":\"abc\"}}");
  return v;
}

static void vars_free(vars *v) {
  cJSON_Delete(v->config);
  cJSON_Delete(v->context);
}

static void assert_expands(const vars *v, const char *text, const char *expected) {
  char *unresolved = (char *)"untouched";
  cli_exec_vars vars = {v->config, v->context, "task-1", "acme"};
  char *out = cli_exec_expand(text, &vars, &unresolved);
  if (out == NULL) fail_msg("\"%s\" did not expand (unresolved %s)", text, unresolved);
  assert_null(unresolved);
  assert_string_equal(out, expected);
  free(out);
}

static void assert_unresolved(const vars *v, const char *text, const char *task_id,
                              const char *tenant, const char *name) {
  char *unresolved = NULL;
  cli_exec_vars vars = {v->config, v->context, task_id, tenant};
  char *out = cli_exec_expand(text, &vars, &unresolved);
  if (out != NULL) fail_msg("\"%s\" expanded to \"%s\"", text, out);
  assert_non_null(unresolved);
  char expected[256];
  snprintf(expected, sizeof(expected), "unresolved variable %s", name);
  assert_string_equal(unresolved, expected);
  free(unresolved);
}

static void expand_resolves_every_variable_form(void **state) {
  (void)state;
  vars v = vars_new();
  assert_expands(&v, "./deploy.sh ${config.version}", "./deploy.sh 2.4.1");
  assert_expands(&v, "${config.deploy.region}/${context.build_id}", "eu-west/b-7");
  assert_expands(&v, "task=${task.id} tenant=${tenant}", "task=task-1 tenant=acme");
  assert_expands(&v, "${context.meta.sha}${config.deploy.hosts.1}", "abcb");
  assert_expands(&v, "no variables at all", "no variables at all");
  assert_expands(&v, "", "");
  vars_free(&v);
}

static void expand_writes_numbers_booleans_and_objects_as_json(void **state) {
  (void)state;
  vars v = vars_new();
  assert_expands(&v, "${config.deploy.replicas}", "3");
  assert_expands(&v, "${config.deploy.ratio}", "0.5");
  assert_expands(&v, "${context.n}", "-42");
  assert_expands(&v, "${config.deploy.big}", "1e+21");
  assert_expands(&v, "${config.deploy.canary}/${context.ok}", "true/false");
  assert_expands(&v, "${config.deploy.limits}", "{\"cpu\":2}");
  assert_expands(&v, "${config.deploy.hosts}", "[\"a\",\"b\"]");
  assert_expands(&v, "${context}",
                 "{\"build_id\":\"b-7\",\"n\":-42,\"ok\":false,"
                 "\"meta\":{\"sha\":\"abc\"}}");
  vars_free(&v);
}

static void expand_names_the_first_unresolved_variable(void **state) {
  (void)state;
  vars v = vars_new();
  assert_unresolved(&v, "echo ${context.build_id} ${context.build_number} ${config.nope}", "task-1",
                    "acme", "${context.build_number}");
  assert_unresolved(&v, "${config.deploy.nope}", "t", "acme", "${config.deploy.nope}");
  assert_unresolved(&v, "${config.version.major}", "t", "acme", "${config.version.major}");
  assert_unresolved(&v, "${config.deploy.hosts.2}", "t", "acme", "${config.deploy.hosts.2}");
  assert_unresolved(&v, "${config.deploy.none}", "t", "acme", "${config.deploy.none}");
  assert_unresolved(&v, "${config..version}", "t", "acme", "${config..version}");
  assert_unresolved(&v, "for ${tenant}", "t", NULL, "${tenant}");
  assert_unresolved(&v, "${task.id}", NULL, "acme", "${task.id}");
  assert_unresolved(&v, "${task.name}", "t", "acme", "${task.name}");
  /* Without a context or config every path is unresolved. */
  char *unresolved = NULL;
  cli_exec_vars none = {NULL, NULL, "t", NULL};
  assert_null(cli_exec_expand("${context.x}", &none, &unresolved));
  assert_string_equal(unresolved, "unresolved variable ${context.x}");
  free(unresolved);
  vars_free(&v);
}

static void expand_keeps_escapes_and_the_shells_own_variables(void **state) {
  (void)state;
  vars v = vars_new();
  assert_expands(&v, "echo $${context.build_id}", "echo ${context.build_id}");
  assert_expands(&v, "$${tenant}=${tenant}", "${tenant}=acme");
  assert_expands(&v, "cd ${HOME} && echo $HOME $$ $1 ${1} ${PATH:-/bin}",
                 "cd ${HOME} && echo $HOME $$ $1 ${1} ${PATH:-/bin}");
  assert_expands(&v, "cost: 5$ ${config.version", "cost: 5$ ${config.version");
  assert_expands(&v, "$", "$");
  assert_expands(&v, "${configuration}${contexts}", "${configuration}${contexts}");
  vars_free(&v);
}

/* The refusal of one script, as the pipeline loader shows it. */
static void assert_script_refused(const char *field, const char *script, const char *variable) {
  cJSON *stage = cJSON_CreateObject();
  cJSON_AddStringToObject(stage, "run", strcmp(field, "run") == 0 ? script : "true");
  if (strcmp(field, "compensate") == 0) cJSON_AddStringToObject(stage, "compensate", script);
  const cJSON *bad = NULL;
  size_t offset = 0;
  char why[1024];
  if (cli_exec_check(stage, NULL, &bad, &offset, why, sizeof(why)))
    fail_msg("%s <%s> was accepted", field, script);
  assert_ptr_equal(bad, cJSON_GetObjectItemCaseSensitive(stage, field));
  assert_true(offset < strlen(script));
  assert_memory_equal(script + offset, variable, strlen(variable));
  char start[256];
  snprintf(start, sizeof(start), "\"%s\" may not contain %s; pass it as \"env\": {\"", field,
           variable);
  if (strncmp(why, start, strlen(start)) != 0) fail_msg("<%s>: %s", script, why);
  cJSON_Delete(stage);
}

static void our_variables_in_a_script_are_refused_wherever_they_stand(void **state) {
  (void)state;
  /* Every place the old quoting got wrong, and the plain ones: a script never holds a value. */
  static const char *const scripts[] = {
      "./deploy.sh ${context.v}",
      "echo \"${context.v}\"",
      "echo '${context.v}'",
      "summary=$(cat <<EOF\n1) deployed ${context.v}\nEOF\n)",
      "echo \"$\\\n(echo ${context.v})\"",
      "cat <\\\n<EOF\n${context.v}\nEOF",
      "echo $\\\n(( ${context.v} ))",
      "echo $'[${context.v}]'",
      "echo $(basename ${context.v})",
      "echo `basename ${context.v}`",
      "# a comment ${context.v}",
      "echo \\${context.v}",
      "echo ${context.v:-default}",
      "echo ${config.version}",
      "echo ${config}",
      "echo ${task.id}",
      "echo ${tenant}",
      "echo $${tenant} ${context.v}",
  };
  for (size_t i = 0; i < sizeof(scripts) / sizeof(scripts[0]); i++) {
    size_t at, n;
    assert_true(cli_exec_find_variable(scripts[i], &at, &n));
    char variable[64];
    snprintf(variable, sizeof(variable), "%.*s", (int)n, scripts[i] + at);
    assert_script_refused("run", scripts[i], variable);
    assert_script_refused("compensate", scripts[i], variable);
  }
  /* The message names the fix in full. */
  cJSON *stage = json_or_die("{\"run\":\"./deploy.sh ${context.artifact}\"}");
  const cJSON *bad;
  char why[1024];
  assert_false(cli_exec_check(stage, NULL, &bad, NULL, why, sizeof(why)));
  assert_string_equal(why, "\"run\" may not contain ${context.artifact}; pass it as \"env\": "
                           "{\"ARTIFACT\": \"${context.artifact}\"} and write \"$ARTIFACT\"");
  cJSON_Delete(stage);
  char name[64];
  cli_exec_env_name("${task.id}", 10, name, sizeof(name));
  assert_string_equal(name, "TASK_ID");
  cli_exec_env_name("${config.db.hosts.0}", 20, name, sizeof(name));
  assert_string_equal(name, "HOSTS_0");
  cli_exec_env_name("${context.sc_output}", 20, name, sizeof(name));
  assert_string_equal(name, "V_SC_OUTPUT");
  cli_exec_env_name("${context.traceparent}", 22, name, sizeof(name));
  assert_string_equal(name, "V_TRACEPARENT");
  cli_exec_env_name("${tenant}", 9, name, sizeof(name));
  assert_string_equal(name, "TENANT");
}

static void a_script_reaches_the_shell_as_written(void **state) {
  (void)state;
  /* The shell's own variables, "$$", a lone '$': no variable of ours, nothing changed. */
  static const char *const kept[] = {
      "cd ${HOME} && echo $HOME $$ $1 ${1} ${PATH:-/bin} \"$@\"",
      "echo ${configuration} ${contexts} ${taskid} 5$",
      "cat <<EOF\n$(date) `id` '$x'\nEOF",
  };
  size_t at, n;
  for (size_t i = 0; i < sizeof(kept) / sizeof(kept[0]); i++) {
    assert_false(cli_exec_find_variable(kept[i], &at, &n));
    char *script = cli_exec_script(kept[i]);
    assert_string_equal(script, kept[i]);
    free(script);
  }
  /* "$${" is the one rewrite: a literal "${" */
  assert_false(cli_exec_find_variable("echo '$${context.x}'", &at, &n));
  char *script = cli_exec_script("echo '$${context.x}' $${HOME}");
  assert_string_equal(script, "echo '${context.x}' ${HOME}");
  free(script);
  /* args must be strings */
  cJSON *stage = json_or_die("{\"run\":\"true\",\"args\":[\"a\",3]}");
  const cJSON *bad;
  char why[256];
  assert_false(cli_exec_check(stage, NULL, &bad, NULL, why, sizeof(why)));
  assert_string_equal(why, "\"args\" must be an array of strings");
  cJSON_Delete(stage);
}

/* ---- values never become syntax, whatever /bin/sh is ---- */

typedef struct payload {
  char *value;
  bool name; /* usable as a directory name: also tried as cwd */
} payload;

static bool file_is(const char *path, const char *want, size_t len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return false;
  char *got = malloc(len + 2);
  size_t n = got ? fread(got, 1, len + 1, f) : 0;
  fclose(f);
  bool same = got != NULL && n == len && memcmp(got, want, len) == 0;
  free(got);
  return same;
}

typedef struct sweep_watch {
  uv_timer_t timer;
  sc_engine *e;
  cli_exec *x;
  size_t n;
  uint64_t deadline;
} sweep_watch;

static void sweep_tick(uv_timer_t *t) {
  sweep_watch *w = (sweep_watch *)t;
  size_t open = 0;
  for (size_t i = 0; i < w->n; i++) {
    char id[32];
    snprintf(id, sizeof(id), "sweep-%zu", i);
    sc_task *task = sc_engine_find_task(w->e, id);
    open += task != NULL && sc_task_get_status(task) != SC_TASK_FAILED;
  }
  if ((open == 0 && cli_exec_running(w->x) == 0) || uv_now(t->loop) > w->deadline) uv_stop(t->loop);
}

static bool write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  if (f == NULL) return false;
  bool ok = fputs(text, f) >= 0;
  return fclose(f) == 0 && ok;
}

/* A mount namespace of our own: as root directly; otherwise inside a new user namespace (where we
 * hold the capabilities a bind mount needs), our ids mapped to themselves. */
static bool own_mount_namespace(void) {
  if (unshare(CLONE_NEWNS) == 0) return true;
  uid_t uid = geteuid();
  gid_t gid = getegid();
  if (unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0) return false;
  char map[64];
  snprintf(map, sizeof(map), "%u %u 1\n", (unsigned)uid, (unsigned)uid);
  if (!write_file("/proc/self/uid_map", map)) return false;
  snprintf(map, sizeof(map), "%u %u 1\n", (unsigned)gid, (unsigned)gid);
  return write_file("/proc/self/setgroups", "deny") && write_file("/proc/self/gid_map", map);
}

/* Whether a bind mount made now stays in our namespace: "/" made private, recursively. In a
 * chroot whose root is not a mount point (a build root) "/" cannot be named (EINVAL); there the
 * mounts we can see are checked instead, and none may propagate ("shared:" in mountinfo). */
static bool mounts_are_private(void) {
  /* The kernel ignores the type here; a string rather than NULL keeps Valgrind from reading one. */
  if (mount(NULL, "/", "none", MS_REC | MS_PRIVATE, NULL) == 0) return true;
  if (errno != EINVAL) return false;
  FILE *f = fopen("/proc/self/mountinfo", "r");
  if (f == NULL) return false;
  char line[4096];
  bool shared = false;
  while (!shared && fgets(line, sizeof(line), f) != NULL)
    shared = strstr(line, " shared:") != NULL;
  fclose(f);
  errno = shared ? EPERM : 0;
  return !shared;
}

/* The sweep, in a child process that made /bin/sh the given shell in a mount namespace of its
 * own. No cmocka here (its failures jump back into the parent's test runner): each mismatch is
 * printed, and the exit status is how many there were (2 and more: could not set up). */
static int sweep_child(const char *shell, const char *dir) {
  if (!own_mount_namespace() || !mounts_are_private() ||
      mount(shell, "/bin/sh", "none", MS_BIND, NULL) != 0) {
    fprintf(stderr, "cannot bind %s on /bin/sh in a mount namespace: %s\n", shell, strerror(errno));
    return 100;
  }
  /* It is that shell now: bash says its version, dash has none. */
  FILE *id = popen("/bin/sh -c 'printf %s \"${BASH_VERSION:-dash}\"'", "r");
  char which[64] = "";
  if (id == NULL || fgets(which, sizeof(which), id) == NULL) return 101;
  pclose(id);
  if ((strstr(shell, "bash") != NULL) == (strcmp(which, "dash") == 0)) {
    fprintf(stderr, "/bin/sh is %s, not %s\n", which, shell);
    return 102;
  }
  char canary[PATH_MAX + 16];
  snprintf(canary, sizeof(canary), "%s/pwned", dir);
  /* Each way a value could be read as syntax, by the old quoting or by any shell. */
  const char *forms[] = {"2.4.1$(touch %s)", "`touch %s`", "; touch %s; #", "\\'; touch %s; #",
                         "'; touch %s; '", "\"; touch %s; \"", "\ntouch %s\n", "EOF\ntouch %s\nEOF",
                         "$(touch %s)\n)", "x\\\n$(touch %s)", "$((0)) $(touch %s)", "*", "--",
                         "-n", "'", "\"", "\\", "${HOME} $HOME $$ $1", "a\nb\n",
                         /* a context is UTF-8 (other bytes are refused at submit) */
                         "\xc3\xa9\xe2\x80\xae\xef\xbf\xbd\xf0\x9f\x98\x80 (", "", "-- -x --y=z"};
  size_t nforms = sizeof(forms) / sizeof(forms[0]);
  payload p[32];
  size_t n = 0;
  for (size_t i = 0; i < nforms; i++) {
    char v[PATH_MAX * 2];
    snprintf(v, sizeof(v), forms[i], canary);
    p[n].value = strdup(v);
    p[n].name = v[0] != '\0' && strchr(v, '/') == NULL && strcmp(v, "-n") != 0 && strcmp(v, "--");
    n++;
  }
  p[n].value = malloc(100 * 1024 + 1); /* a large value the kernel still passes */
  static const char mix[] = "$(`';\"\\\n *x";
  for (size_t i = 0; i < 100 * 1024; i++)
    p[n].value[i] = mix[i % (sizeof(mix) - 1)];
  p[n].value[100 * 1024] = '\0';
  p[n++].name = false;
  size_t big = n; /* more than a command can be given: refused, nothing runs */
  p[n].value = malloc(1024 * 1024 + 1);
  memset(p[n].value, 'x', 1024 * 1024);
  memcpy(p[n].value, "$(touch ", 8);
  p[n].value[1024 * 1024] = '\0';
  p[n++].name = false;

  uv_loop_t loop;
  sc_engine *e = NULL;
  cli_exec *x = NULL;
  if (uv_loop_init(&loop) != 0 || sc_engine_new(&loop, NULL, &e) != SC_OK ||
      cli_exec_register(e, NULL, NULL, &x) != SC_OK)
    return 103;
  const char *script = "printf '%s' \"$V\" >\"$OUT/env\"\n"
                       "printf '%s' \"$1\" >\"$OUT/arg\"\n"
                       "printf '%s' \"$#\" >\"$OUT/argc\"\n"
                       "cat >\"$OUT/heredoc\" <<EOF\n1) deployed $V\nEOF\n"
                       "summary=$(cat <<EOF\n1) deployed $V\nEOF\n)\n"
                       "printf '%s' \"[$summary]\" >\"$OUT/subst\"\n"
                       /* a backslash-newline that makes "$(": the value is still one word */
                       "printf '[%s]' \"$\\\n(printf '%s' \"$V\")\" >\"$OUT/joined\"\n"
                       /* a here-document whose "<<" a backslash-newline splits */
                       "cat >\"$OUT/split\" <\\\n<EOF\n1) deployed $V\nEOF\n"
                       /* bash's $'...' quoting around a value (dash reads "$" and '...') */
                       "printf '%s' $'['\"$V\"$']' >\"$OUT/ansi\"\n"
                       "pwd -P >\"$OUT/cwd\"\n";
  for (size_t i = 0; i < n; i++) {
    char out[PATH_MAX + 32], cwd[PATH_MAX * 2];
    snprintf(out, sizeof(out), "%s/out-%zu", dir, i);
    mkdir(out, 0700);
    snprintf(cwd, sizeof(cwd), "%s/%s", dir, p[i].value);
    if (p[i].name && mkdir(cwd, 0700) != 0) return 104;
    cJSON *stage = cJSON_CreateObject();
    cJSON_AddStringToObject(stage, "name", "values");
    cJSON_AddStringToObject(stage, "kind", "exec");
    cJSON_AddStringToObject(stage, "run", script);
    cJSON *env = cJSON_AddObjectToObject(stage, "env");
    cJSON_AddStringToObject(env, "V", "${context.v}");
    cJSON_AddStringToObject(env, "OUT", "${context.out}");
    cJSON *args = cJSON_AddArrayToObject(stage, "args");
    cJSON_AddItemToArray(args, cJSON_CreateString("${context.v}"));
    if (p[i].name) cJSON_AddStringToObject(stage, "cwd", "${context.dir}");
    cJSON *config = cJSON_CreateObject();
    cJSON_AddItemToArray(cJSON_AddArrayToObject(config, "stages"), stage);
    cJSON *context = cJSON_CreateObject();
    cJSON_AddStringToObject(context, "v", p[i].value);
    cJSON_AddStringToObject(context, "out", out);
    cJSON_AddStringToObject(context, "dir", cwd);
    sc_task_spec s;
    sc_task_spec_init(&s);
    char id[32];
    snprintf(id, sizeof(id), "sweep-%zu", i);
    s.task_id = id;
    s.config = config;
    s.context = context;
    if (sc_task_submit(e, &s, NULL) != SC_OK) return 105;
    cJSON_Delete(config);
    cJSON_Delete(context);
  }
  sweep_watch w = {.e = e, .x = x, .n = n, .deadline = uv_now(&loop) + 60000};
  uv_timer_init(&loop, &w.timer);
  uv_timer_start(&w.timer, sweep_tick, 10, 10);
  uv_run(&loop, UV_RUN_DEFAULT);
  int failures = 0;
  if (uv_now(&loop) > w.deadline) {
    fprintf(stderr, "%s: the sweep did not finish in time\n", shell);
    failures++;
  }
  for (size_t i = 0; i < n; i++) {
    char path[PATH_MAX + 64], want[PATH_MAX * 2 + 64];
    size_t len = strlen(p[i].value);
    const char *files[] = {"env", "arg",    "argc",  "heredoc", "subst",
                           "cwd", "joined", "split", "ansi"};
    for (size_t k = 0; k < sizeof(files) / sizeof(files[0]); k++) {
      snprintf(path, sizeof(path), "%s/out-%zu/%s", dir, i, files[k]);
      bool ok;
      if (i == big) { /* refused before it started */
        ok = access(path, F_OK) != 0;
      } else if (k <= 1) {
        ok = file_is(path, p[i].value, len);
      } else if (k == 2) {
        ok = file_is(path, "1", 1);
      } else if (k == 7) {
        char *w = malloc(len + 32);
        int wl = snprintf(w, len + 32, "1) deployed %s\n", p[i].value);
        ok = file_is(path, w, (size_t)wl);
        free(w);
      } else if (k == 8) {
        bool bash = strstr(shell, "bash") != NULL;
        char *w = malloc(len + 8);
        int wl = snprintf(w, len + 8, "%s%s%s", bash ? "[" : "$[", p[i].value, bash ? "]" : "$]");
        ok = file_is(path, w, (size_t)wl);
        free(w);
      } else if (k == 3 || k == 4) {
        /* "$(...)" drops the trailing newlines */
        size_t body = len;
        while (k == 4 && body > 0 && p[i].value[body - 1] == '\n')
          body--;
        char *w = malloc(len + 32);
        int wl = snprintf(w, len + 32, "%s1) deployed %.*s%s", k == 4 ? "[" : "", (int)body,
                          p[i].value, k == 4 ? "]" : "\n");
        ok = file_is(path, w, (size_t)wl);
        free(w);
      } else if (k == 6) {
        size_t body = len;
        while (body > 0 && p[i].value[body - 1] == '\n')
          body--;
        char *w = malloc(len + 8);
        int wl = snprintf(w, len + 8, "[%.*s]", (int)body, p[i].value);
        ok = file_is(path, w, (size_t)wl);
        free(w);
      } else {
        int wl = p[i].name ? snprintf(want, sizeof(want), "%s/%s\n", dir, p[i].value)
                           : snprintf(want, sizeof(want), "%s\n", dir);
        ok = !p[i].name || file_is(path, want, (size_t)wl);
      }
      if (!ok) {
        fprintf(stderr, "%s: value %zu (%.40s...): %s is not what the command was given\n", shell,
                i, p[i].value, files[k]);
        failures++;
      }
    }
  }
  if (access(canary, F_OK) == 0) {
    fprintf(stderr, "%s: a value was run as a command (%s exists)\n", shell, canary);
    failures++;
  }
  /* Everything freed, so that a leak checker following the fork (valgrind) has nothing to say. */
  uv_close((uv_handle_t *)&w.timer, NULL);
  sc_engine_free(e);
  cli_exec_free(x);
  uv_run(&loop, UV_RUN_NOWAIT);
  uv_loop_close(&loop);
  for (size_t i = 0; i < n; i++)
    free(p[i].value);
  return failures > 99 ? 99 : failures;
}

static void values_reach_the_command_exactly_under_dash_and_bash(void **state) {
  (void)state;
  const char *shells[] = {"/bin/dash", "/bin/bash"};
  for (size_t i = 0; i < 2; i++) {
    char dir[PATH_MAX], real[PATH_MAX];
    const char *base = getenv("TMPDIR");
    snprintf(dir, sizeof(dir), "%s/test-sweep-XXXXXX", base && *base ? base : "/tmp");
    assert_non_null(mkdtemp(dir));
    assert_non_null(realpath(dir, real));
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) _exit(sweep_child(shells[i], real));
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    char rm[PATH_MAX + 16];
    snprintf(rm, sizeof(rm), "rm -rf '%s'", real);
    assert_int_equal(system(rm), 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
      fail_msg("under %s: %d mismatches or setup failure (see above)", shells[i],
               WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  }
}

/* ---- output ---- */

static void output_lines_reach_the_callback_with_stage_and_fd(void **state) {
  (void)state;
  fixture f;
  fixture_open(&f);
  cJSON *config = config_of(exec_stage("talk", "echo out1; echo err1 >&2; printf 'par'; sleep 0.1; "
                                               "printf 'tial\\n'; seq 1 3000; printf 'no-newline'"),
                            NULL);
  submit(&f, "talk-task", NULL, config, NULL);
  wait_event(&f, SC_EV_TASK_COMPLETED, 10000);
  assert_true(capture_has(&f.out, "talk", 1, "out1"));
  assert_true(capture_has(&f.out, "talk", 2, "err1"));
  assert_false(capture_has(&f.out, "talk", 1, "err1"));
  assert_true(capture_has(&f.out, "talk", 1, "partial"));
  /* stdout in order, every line whole, the last one without its newline too */
  size_t next = 0, k = 0;
  const char *expected_head[] = {"out1", "partial"};
  for (size_t i = 0; i < f.out.n; i++) {
    if (f.out.lines[i].fd != 1) continue;
    if (k < 2) {
      assert_string_equal(f.out.lines[i].text, expected_head[k++]);
    } else if (next < 3000) {
      char want[16];
      snprintf(want, sizeof(want), "%zu", ++next);
      assert_string_equal(f.out.lines[i].text, want);
    } else {
      assert_string_equal(f.out.lines[i].text, "no-newline");
      next++;
    }
  }
  assert_int_equal(next, 3001);
  assert_int_equal(f.out.n, 3004);
  cJSON_Delete(config);
  fixture_close(&f);
}

static void default_output_writes_stage_prefixed_lines(void **state) {
  (void)state;
  fixture f;
  fixture_open_with(&f, NULL);
  char path[PATH_MAX + 16];
  snprintf(path, sizeof(path), "%s/stderr.txt", f.dir);
  fflush(stderr);
  int saved = dup(STDERR_FILENO);
  FILE *capture_file = fopen(path, "w");
  assert_non_null(capture_file);
  dup2(fileno(capture_file), STDERR_FILENO);
  cJSON *config = config_of(exec_stage("quiet", "echo 'to stderr' >&2; printf last >&2"), NULL);
  submit(&f, "quiet-task", NULL, config, NULL);
  wait_event(&f, SC_EV_TASK_COMPLETED, 10000);
  fflush(stderr);
  dup2(saved, STDERR_FILENO);
  close(saved);
  fclose(capture_file);
  FILE *in = fopen(path, "r");
  char text[256] = "";
  size_t n = fread(text, 1, sizeof(text) - 1, in);
  text[n] = '\0';
  fclose(in);
  assert_string_equal(text, "[quiet] to stderr\n[quiet] last\n");
  cJSON_Delete(config);
  fixture_close(&f);
}

/* ---- environment, output file and context ---- */

static void commands_see_the_sc_variables_env_and_cwd(void **state) {
  (void)state;
  fixture f;
  fixture_open(&f);
  setenv("SC_STAGE", "from-the-parent", 1); /* replaced, not duplicated */
  setenv("STAGECOACH_TEST_PARENT", "inherited", 1);
  cJSON *st = exec_stage(
      "inspect",
      "[ \"$SC_ATTEMPT\" -ge 2 ] || exit 1; "
      "printf '{\"seen\":{\"task\":\"%s\",\"tenant\":\"%s\",\"stage\":\"%s\",\"attempt\":\"%s\","
      "\"mode\":\"%s\",\"context\":%s,\"extra\":\"%s\",\"num\":\"%s\",\"flag\":\"%s\","
      "\"parent\":\"%s\",\"cwd\":\"%s\",\"outdir\":\"%s\"}}' \"$SC_TASK_ID\" \"$SC_TENANT\" "
      "\"$SC_STAGE\" \"$SC_ATTEMPT\" \"$SC_MODE\" \"$SC_CONTEXT\" \"$EXTRA\" \"$NUM\" \"$FLAG\" "
      "\"$STAGECOACH_TEST_PARENT\" \"$(pwd)\" \"$(dirname \"$SC_OUTPUT\")\" > \"$SC_OUTPUT\"");
  add_json(st, "env", "{\"EXTRA\":\"x-${config.version}\",\"NUM\":3,\"FLAG\":true}");
  cJSON_AddStringToObject(st, "cwd", f.dir);
  add_json(st, "retry", "{\"max_attempts\":2,\"initial_backoff_ms\":1}");
  cJSON *config = config_of(st, NULL);
  cJSON *context = json_or_die("{\"k\":\"v\",\"n\":2}");
  submit(&f, "env-task", "acme", config, context);
  wait_event(&f, SC_EV_TASK_COMPLETED, 10000);
  unsetenv("SC_STAGE");
  unsetenv("STAGECOACH_TEST_PARENT");

  cJSON *root;
  const cJSON *data = event_data(&f.r, SC_EV_STAGE_COMPLETED, 0, &root);
  const cJSON *seen =
      cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(data, "context"), "seen");
  assert_non_null(seen);
  assert_string_equal(str_at(seen, "task"), "env-task");
  assert_string_equal(str_at(seen, "tenant"), "acme");
  assert_string_equal(str_at(seen, "stage"), "inspect");
  assert_string_equal(str_at(seen, "attempt"), "2");
  assert_string_equal(str_at(seen, "mode"), "run");
  assert_true(cJSON_Compare(cJSON_GetObjectItemCaseSensitive(seen, "context"), context, true));
  assert_string_equal(str_at(seen, "extra"), "x-2.4.1");
  assert_string_equal(str_at(seen, "num"), "3");
  assert_string_equal(str_at(seen, "flag"), "true");
  assert_string_equal(str_at(seen, "parent"), "inherited");
  assert_string_equal(str_at(seen, "cwd"), f.dir);
  char outdir[PATH_MAX];
  snprintf(outdir, sizeof(outdir), "%s", str_at(seen, "outdir"));
  cJSON_Delete(root);
  fixture_close(&f);
  /* the private directory of $SC_OUTPUT is gone with the stage */
  struct stat sb;
  assert_int_equal(stat(outdir, &sb), -1);
  assert_int_equal(errno, ENOENT);
  cJSON_Delete(config);
  cJSON_Delete(context);
}

static void output_json_is_merged_and_feeds_the_next_stage(void **state) {
  (void)state;
  fixture f;
  fixture_open(&f);
  cJSON *second = exec_stage("second", "echo \"built $BUILD n=$N v=$1 t=$2 tenant=$3\"; "
                                       "printf '{\"echoed\":\"%s\"}' \"$BUILD\" > \"$SC_OUTPUT\"");
  add_json(second, "env", "{\"BUILD\":\"${context.build_id}\",\"N\":\"${context.n}\"}");
  add_json(second, "args", "[\"${config.version}\",\"${task.id}\",\"${tenant}\"]");
  cJSON *config =
      config_of(exec_stage("first", "printf '{\"build_id\":\"b-42\",\"n\":3}' > \"$SC_OUTPUT\""),
                second, exec_stage("third", "printf '  \\n\\t \\n' > \"$SC_OUTPUT\""), NULL);
  submit(&f, "merge-task", "acme", config, NULL);
  wait_event(&f, SC_EV_TASK_COMPLETED, 10000);
  assert_true(capture_has(&f.out, "second", 1, "built b-42 n=3 v=2.4.1 t=merge-task tenant=acme"));
  cJSON *root;
  const cJSON *data = event_data(&f.r, SC_EV_TASK_COMPLETED, 0, &root);
  cJSON *expected = json_or_die("{\"build_id\":\"b-42\",\"n\":3,\"echoed\":\"b-42\"}");
  assert_true(cJSON_Compare(cJSON_GetObjectItemCaseSensitive(data, "context"), expected, true));
  cJSON_Delete(expected);
  cJSON_Delete(root);
  /* whitespace only: completed without an output */
  data = event_data(&f.r, SC_EV_STAGE_COMPLETED, 2, &root);
  assert_null(cJSON_GetObjectItemCaseSensitive(data, "output"));
  cJSON_Delete(root);
  cJSON_Delete(config);
  fixture_close(&f);
}

static void sc_output_that_is_not_an_object_fails_without_retry(void **state) {
  (void)state;
  static const char *const cases[][2] = {
      {"echo 'not json' > \"$SC_OUTPUT\"", "is not valid JSON: 1:1: expected a value"},
      {"echo '[1,2]' > \"$SC_OUTPUT\"", "is not a JSON object"},
      {"echo '\"text\"' > \"$SC_OUTPUT\"", "is not a JSON object"},
      {"printf '{\"a\":' > \"$SC_OUTPUT\"", "is not valid JSON: 1:6: expected a value"},
      /* Bytes that are not UTF-8 would go into the events as they are: refused. */
      {"printf '{\"a\":\"\\377\"}' > \"$SC_OUTPUT\"", "is not valid JSON: 1:7: invalid UTF-8"},
      {"printf '{\"a\":1,\"a\":2}' > \"$SC_OUTPUT\"", "is not valid JSON: 1:8: duplicate"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    fixture f;
    fixture_open(&f);
    cJSON *st = exec_stage("bad", cases[i][0]);
    add_json(st, "retry", "{\"max_attempts\":3,\"initial_backoff_ms\":1}");
    cJSON *config = config_of(st, NULL);
    submit(&f, "bad-output", NULL, config, NULL);
    wait_event(&f, SC_EV_TASK_FAILED, 10000);
    char name[32], message[256], expected[256];
    bool will_retry;
    failure(&f, 0, name, message, sizeof(message), &will_retry);
    snprintf(expected, sizeof(expected), "SC_OUTPUT of stage bad %s", cases[i][1]);
    if (strncmp(message, expected, strlen(expected)) != 0)
      fail_msg("case %zu: \"%s\" does not start with \"%s\"", i, message, expected);
    assert_false(will_retry);
    assert_int_equal(recorder_count(&f.r, SC_EV_STAGE_STARTED, NULL), 1);
    cJSON_Delete(config);
    fixture_close(&f);
  }
}

/* ---- failures ---- */

static void a_large_context_is_in_sc_context_file(void **state) {
  (void)state;
  fixture f;
  fixture_open(&f);
  /* Stage one adds 200 KB to the context: more than one environment string may hold. The next
   * stage still starts, without $SC_CONTEXT, with all of it in $SC_CONTEXT_FILE. */
  cJSON *config = config_of(
      exec_stage("big", "printf '{\"blob\":\"%s\"}' \"$(head -c 200000 /dev/zero | tr '\\0' b)\" "
                        "> \"$SC_OUTPUT\""),
      exec_stage("reader", "test -z \"${SC_CONTEXT+set}\" && test $(wc -c < \"$SC_CONTEXT_FILE\") "
                           "-gt 200000 && grep -q bbbb \"$SC_CONTEXT_FILE\""),
      NULL);
  submit(&f, "big-task", NULL, config, NULL);
  wait_event(&f, SC_EV_TASK_COMPLETED, 10000);
  cJSON_Delete(config);
  fixture_close(&f);
  fixture_open(&f);
  config = config_of(exec_stage("small", "test \"$SC_CONTEXT\" = \"$(cat \"$SC_CONTEXT_FILE\")\""),
                     NULL);
  cJSON *context = json_or_die("{\"k\":\"it's \\\"quoted\\\"\"}");
  submit(&f, "small-task", NULL, config, context);
  wait_event(&f, SC_EV_TASK_COMPLETED, 10000);
  cJSON_Delete(context);
  cJSON_Delete(config);
  fixture_close(&f);
}

static void the_last_lines_in_a_failure_are_text(void **state) {
  (void)state;
  fixture f;
  fixture_open(&f);
  cJSON *config = config_of(
      exec_stage("binary", "printf 'a\\000b\\377c\\303\\251d\\355\\240\\200e\\n'; exit 4"), NULL);
  submit(&f, "binary-task", NULL, config, NULL);
  wait_event(&f, SC_EV_TASK_FAILED, 10000);
  char name[32], message[256];
  bool will_retry;
  failure(&f, 0, name, message, sizeof(message), &will_retry);
  /* the NUL becomes '?'; a stray byte and each byte of an encoded surrogate become U+FFFD in
   * the event; the "é" stays */
  assert_string_equal(message, "exit status 4; last output:\na?b\xef\xbf\xbd"
                               "c\xc3\xa9"
                               "d\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"
                               "e");
  cJSON_Delete(config);
  fixture_close(&f);
}

static void nonzero_exit_fails_with_status_and_the_last_lines(void **state) {
  (void)state;
  fixture f;
  fixture_open(&f);
  cJSON *config = config_of(exec_stage("noisy", "i=1; while [ $i -le 12 ]; do echo line$i; "
                                                "i=$((i+1)); done; sleep 0.2; echo err-line >&2; "
                                                "sleep 0.2; head -c 2000 /dev/zero | tr '\\0' y; "
                                                "exit 3"),
                            NULL);
  submit(&f, "noisy-task", NULL, config, NULL);
  wait_event(&f, SC_EV_TASK_FAILED, 10000);
  char name[32], message[4096];
  bool will_retry;
  failure(&f, 0, name, message, sizeof(message), &will_retry);
  assert_string_equal(name, "SC_EIO");
  char expected[4096];
  int n = snprintf(expected, sizeof(expected),
                   "exit status 3; last output:\nline5\nline6\nline7\nline8\nline9\nline10\n"
                   "line11\nline12\nerr-line\n");
  memset(expected + n, 'y', 500); /* the 2000-byte last line, cut to 500 */
  expected[n + 500] = '\0';
  assert_string_equal(message, expected);
  assert_true(capture_has(&f.out, "noisy", 2, "err-line"));
  cJSON *root;
  const cJSON *data = event_data(&f.r, SC_EV_TASK_FAILED, 0, &root);
  assert_non_null(strstr(str_at(data, "error.message"), "exit status 3"));
  cJSON_Delete(root);
  cJSON_Delete(config);
  fixture_close(&f);
}

static void no_retry_exit_codes_stop_retries_and_other_codes_retry(void **state) {
  (void)state;
  fixture f;
  fixture_open(&f);
  cJSON *final = exec_stage("deploy", "echo denied; exit 4");
  add_json(final, "no_retry_exit_codes", "[4, 9]");
  add_json(final, "retry", "{\"max_attempts\":3,\"initial_backoff_ms\":1}");
  cJSON *flaky = exec_stage("deploy", "exit 5");
  add_json(flaky, "no_retry_exit_codes", "[4, 9]");
  add_json(flaky, "retry", "{\"max_attempts\":3,\"initial_backoff_ms\":1}");
  cJSON *c1 = config_of(final, NULL), *c2 = config_of(flaky, NULL);
  submit(&f, "final", NULL, c1, NULL);
  submit(&f, "flaky", NULL, c2, NULL);
  event_count two_failed = {SC_EV_TASK_FAILED, 2};
  assert_true(wait_for(&f, has_events, &two_failed, 10000));
  assert_int_equal(recorder_count(&f.r, SC_EV_TASK_FAILED, NULL), 2);
  assert_int_equal(recorder_count(&f.r, SC_EV_STAGE_FAILED, "final"), 1);
  assert_int_equal(recorder_count(&f.r, SC_EV_STAGE_FAILED, "flaky"), 3);
  for (size_t i = 0; i < 4; i++) {
    char name[32], message[512];
    bool will_retry;
    failure(&f, i, name, message, sizeof(message), &will_retry);
    if (strncmp(message, "exit status 4", 13) == 0) {
      assert_string_equal(message, "exit status 4; last output:\ndenied");
      assert_false(will_retry);
    } else {
      assert_string_equal(message, "exit status 5");
    }
  }
  cJSON_Delete(c1);
  cJSON_Delete(c2);
  fixture_close(&f);
}

static void a_missing_command_exits_127_and_retries(void **state) {
  (void)state;
  fixture f;
  fixture_open(&f);
  cJSON *st = exec_stage("ghost", "no-such-command-stagecoach-test --flag");
  add_json(st, "retry", "{\"max_attempts\":2,\"initial_backoff_ms\":1}");
  cJSON *config = config_of(st, NULL);
  submit(&f, "ghost-task", NULL, config, NULL);
  wait_event(&f, SC_EV_TASK_FAILED, 10000);
  assert_int_equal(recorder_count(&f.r, SC_EV_STAGE_FAILED, NULL), 2);
  char name[32], message[512];
  bool will_retry;
  failure(&f, 0, name, message, sizeof(message), &will_retry);
  assert_true(will_retry);
  assert_non_null(strstr(message, "exit status 127; last output:\n"));
  assert_non_null(strstr(message, "no-such-command-stagecoach-test"));
  failure(&f, 1, name, message, sizeof(message), &will_retry);
  assert_false(will_retry);
  assert_non_null(strstr(message, "exit status 127"));
  cJSON_Delete(config);
  fixture_close(&f);
}

static void a_command_killed_by_a_signal_fails_retryable(void **state) {
  (void)state;
  fixture f;
  fixture_open(&f);
  cJSON *st = exec_stage("suicide", "echo \"bye tenant=[$SC_TENANT]\"; kill -TERM $$; sleep 5");
  add_json(st, "retry", "{\"max_attempts\":2,\"initial_backoff_ms\":1}");
  cJSON *config = config_of(st, NULL);
  submit(&f, "signal-task", NULL, config, NULL);
  wait_event(&f, SC_EV_TASK_FAILED, 10000);
  assert_int_equal(recorder_count(&f.r, SC_EV_STAGE_FAILED, NULL), 2);
  char name[32], message[512];
  bool will_retry;
  failure(&f, 0, name, message, sizeof(message), &will_retry);
  assert_true(will_retry);
  assert_string_equal(message, "killed by signal 15 (SIGTERM); last output:\nbye tenant=[]");
  cJSON_Delete(config);
  fixture_close(&f);
}

static void a_missing_or_unresolvable_command_fails_without_retry(void **state) {
  (void)state;
  fixture f;
  fixture_open(&f);
  cJSON *no_run = exec_stage("empty", NULL);
  add_json(no_run, "retry", "{\"max_attempts\":3,\"initial_backoff_ms\":1}");
  cJSON *unresolved = exec_stage("needs-build", "echo \"$1\"");
  add_json(unresolved, "args", "[\"${context.build_id}\"]");
  add_json(unresolved, "retry", "{\"max_attempts\":3,\"initial_backoff_ms\":1}");
  cJSON *bad_env = exec_stage("bad-env", "true");
  add_json(bad_env, "env", "{\"TAG\":\"${config.tag}\"}");
  cJSON *own_env = exec_stage("own-env", "true");
  add_json(own_env, "env", "{\"SC_STAGE\":\"fake\"}");
  cJSON *c1 = config_of(no_run, NULL), *c2 = config_of(unresolved, NULL),
        *c3 = config_of(bad_env, NULL), *c4 = config_of(own_env, NULL);
  submit(&f, "t1", NULL, c1, NULL);
  submit(&f, "t2", NULL, c2, NULL);
  submit(&f, "t3", NULL, c3, NULL);
  submit(&f, "t4", NULL, c4, NULL);
  event_count four_failed = {SC_EV_TASK_FAILED, 4};
  assert_true(wait_for(&f, has_events, &four_failed, 10000));
  assert_int_equal(recorder_count(&f.r, SC_EV_TASK_FAILED, NULL), 4);
  assert_int_equal(recorder_count(&f.r, SC_EV_STAGE_FAILED, NULL), 4);
  int seen = 0;
  for (size_t i = 0; i < 4; i++) {
    char name[32], message[512];
    bool will_retry;
    failure(&f, i, name, message, sizeof(message), &will_retry);
    assert_string_equal(name, "SC_EPLAN");
    assert_false(will_retry);
    if (strcmp(message, "unresolved variable ${context.build_id} in \"args.0\"") == 0) seen |= 1;
    if (strcmp(message, "stage empty: \"run\" is required (a non-empty shell command)") == 0)
      seen |= 2;
    if (strcmp(message, "unresolved variable ${config.tag} in \"env.TAG\"") == 0) seen |= 4;
    if (strcmp(message, "stage own-env: \"env\" may not set SC_STAGE (the exec kind sets it)") == 0)
      seen |= 8;
  }
  assert_int_equal(seen, 15);
  assert_int_equal(f.out.n, 0); /* nothing ran */
  cJSON_Delete(c1);
  cJSON_Delete(c2);
  cJSON_Delete(c3);
  cJSON_Delete(c4);
  fixture_close(&f);
}

static void a_cwd_that_is_not_a_directory_fails_the_spawn(void **state) {
  (void)state;
  fixture f;
  fixture_open(&f);
  cJSON *st = exec_stage("lost", "echo never");
  cJSON_AddStringToObject(st, "cwd", "/nonexistent-stagecoach-test/dir");
  cJSON *config = config_of(st, NULL);
  submit(&f, "cwd-task", NULL, config, NULL);
  wait_event(&f, SC_EV_TASK_FAILED, 10000);
  char name[32], message[512];
  failure(&f, 0, name, message, sizeof(message), NULL);
  assert_string_equal(name, "SC_EIO");
  assert_non_null(strstr(message, "cannot start /bin/sh in \"/nonexistent-stagecoach-test/dir\""));
  assert_int_equal(f.out.n, 0);
  cJSON_Delete(config);
  fixture_close(&f);
}

/* ---- timeouts, cancels, teardown ---- */

static void a_timeout_kills_the_whole_group_after_the_grace_period(void **state) {
  (void)state;
  fixture f;
  fixture_open(&f);
  char run[PATH_MAX * 2 + 128];
  /* The shell and its sleep ignore SIGTERM: only the SIGKILL after the grace period ends them. */
  snprintf(run, sizeof(run),
           "trap '' TERM; echo $$ > '%s/sh.pid'; sleep 30 & echo $! > '%s/sleep.pid'; wait", f.dir,
           f.dir);
  cJSON *st = exec_stage("slow", run);
  cJSON_AddNumberToObject(st, "timeout_ms", 200);
  cJSON_AddNumberToObject(st, "kill_grace_ms", 200);
  cJSON *config = config_of(st, NULL);
  submit(&f, "slow-task", NULL, config, NULL);
  wait_event(&f, SC_EV_STAGE_FAILED, 10000);
  uv_update_time(&f.loop);
  uint64_t failed_at = uv_now(&f.loop);
  char name[32], message[512];
  failure(&f, 0, name, message, sizeof(message), NULL);
  assert_string_equal(name, "SC_ETIMEDOUT");
  wait_event(&f, SC_EV_TASK_FAILED, 10000);
  pid_t pids[3] = {read_pid(f.dir, "sh.pid"), read_pid(f.dir, "sleep.pid"), 0};
  assert_true(pids[0] > 0 && pids[1] > 0);
  assert_true(wait_for(&f, no_command_running, NULL, 3000));
  uv_update_time(&f.loop);
  assert_true(uv_now(&f.loop) - failed_at >= 150); /* SIGTERM alone did not do it */
  assert_true(wait_for(&f, pids_gone, pids, 2000));
  cJSON_Delete(config);
  fixture_close(&f);
}

static void task_cancel_ends_the_command_and_its_children(void **state) {
  (void)state;
  fixture f;
  fixture_open(&f);
  char run[PATH_MAX * 2 + 128];
  snprintf(run, sizeof(run), "echo $$ > '%s/sh.pid'; sleep 30 & echo $! > '%s/sleep.pid'; wait",
           f.dir, f.dir);
  cJSON *config = config_of(exec_stage("long", run), NULL); /* default grace: 5 s */
  sc_task *t = submit(&f, "cancel-task", NULL, config, NULL);
  assert_true(wait_for(&f, pid_written, "sleep.pid", 5000));
  pid_t pids[3] = {read_pid(f.dir, "sh.pid"), read_pid(f.dir, "sleep.pid"), 0};
  assert_false(pids_gone(&f, pids));
  assert_int_equal(cli_exec_running(f.x), 1);
  assert_int_equal(sc_task_cancel(t, "operator"), SC_OK);
  wait_event(&f, SC_EV_TASK_CANCELLED, 5000);
  /* SIGTERM to the group is enough here: well within the grace period */
  assert_true(wait_for(&f, no_command_running, NULL, 2000));
  assert_true(wait_for(&f, pids_gone, pids, 2000));
  assert_int_equal(recorder_count(&f.r, SC_EV_STAGE_COMPLETED, NULL), 0);
  cJSON_Delete(config);
  fixture_close(&f);
}

static void a_background_job_neither_holds_the_stage_nor_outlives_it(void **state) {
  (void)state;
  fixture f;
  fixture_open(&f);
  /* One job keeps the output pipes, one does not; the command itself exits at once. */
  char run[PATH_MAX * 2 + 128];
  snprintf(run, sizeof(run),
           "sleep 30 & echo $! > '%s/piped.pid'; sleep 31 >/dev/null 2>&1 & "
           "echo $! > '%s/quiet.pid'; echo started",
           f.dir, f.dir);
  cJSON *config = config_of(exec_stage("bg", run), NULL);
  uint64_t began = uv_now(&f.loop);
  submit(&f, "bg-task", NULL, config, NULL);
  wait_event(&f, SC_EV_TASK_COMPLETED, 5000);
  assert_true(uv_now(&f.loop) - began < 2000); /* not the 30 s of the job */
  pid_t pids[3] = {read_pid(f.dir, "piped.pid"), read_pid(f.dir, "quiet.pid"), 0};
  assert_true(wait_for(&f, no_command_running, NULL, 2000));
  assert_true(wait_for(&f, pids_gone, pids, 2000));
  assert_true(capture_has(&f.out, "bg", 1, "started"));
  cJSON_Delete(config);
  fixture_close(&f);
}

static void a_job_that_ignores_sigterm_gets_sigkill_after_the_grace_period(void **state) {
  (void)state;
  fixture f;
  fixture_open(&f);
  char run[PATH_MAX * 2 + 160];
  /* The job writes its pid once it ignores SIGTERM; the command waits for that, then exits. */
  snprintf(run, sizeof(run),
           "sh -c 'trap \"\" TERM; echo $$ > %s/stubborn.pid; exec sleep 30' & "
           "while [ ! -s %s/stubborn.pid ]; do sleep 0.01; done",
           f.dir, f.dir);
  cJSON *st = exec_stage("stubborn", run);
  cJSON_AddNumberToObject(st, "kill_grace_ms", 300);
  cJSON *config = config_of(st, NULL);
  uint64_t began = uv_now(&f.loop);
  submit(&f, "stubborn-task", NULL, config, NULL);
  wait_event(&f, SC_EV_TASK_COMPLETED, 5000);
  uint64_t took = uv_now(&f.loop) - began;
  if (took < 250 || took > 1200) /* held for the grace period, then killed */
    fail_msg("the stage took %llu ms with a grace period of 300 ms", (unsigned long long)took);
  pid_t pids[2] = {read_pid(f.dir, "stubborn.pid"), 0};
  assert_true(wait_for(&f, no_command_running, NULL, 2000));
  assert_true(wait_for(&f, pids_gone, pids, 2000));
  cJSON_Delete(config);
  fixture_close(&f);
}

/* A process that left the group (setsid) and holds the output pipes is not ours to kill, and the
 * stage does not wait for it: it ends a moment after the command, its pipes given up. */
static void a_process_that_left_the_group_does_not_hold_the_stage(void **state) {
  (void)state;
  fixture f;
  fixture_open(&f);
  char run[PATH_MAX * 2 + 160];
  snprintf(run, sizeof(run),
           "setsid sh -c 'echo $$ > %s/away.pid; exec sleep 30' & "
           "while [ ! -s %s/away.pid ]; do sleep 0.01; done; echo started",
           f.dir, f.dir);
  cJSON *config = config_of(exec_stage("away", run), NULL);
  uint64_t began = uv_now(&f.loop);
  submit(&f, "away-task", NULL, config, NULL);
  wait_event(&f, SC_EV_TASK_COMPLETED, 5000);
  uint64_t took = uv_now(&f.loop) - began;
  pid_t away = read_pid(f.dir, "away.pid");
  kill(away, SIGKILL); /* ours to end here: the test started it */
  if (took > 2000) fail_msg("the stage took %llu ms", (unsigned long long)took);
  assert_true(capture_has(&f.out, "away", 1, "started"));
  assert_true(wait_for(&f, no_command_running, NULL, 2000));
  cJSON_Delete(config);
  fixture_close(&f);
}

static void engine_free_while_a_command_runs_leaves_no_process(void **state) {
  (void)state;
  fixture f;
  fixture_open(&f);
  char run[PATH_MAX + 64];
  snprintf(run, sizeof(run), "sleep 30 & echo $! > '%s/sleep.pid'; wait", f.dir);
  cJSON *st = exec_stage("long", run);
  cJSON_AddNumberToObject(st, "kill_grace_ms", 300);
  cJSON *config = config_of(st, NULL);
  submit(&f, "teardown-task", NULL, config, NULL);
  assert_true(wait_for(&f, pid_written, "sleep.pid", 5000));
  pid_t pids[2] = {read_pid(f.dir, "sleep.pid"), 0};
  sc_engine_free(f.e); /* calls cancel; the command outlives the engine for a moment */
  f.e = NULL;
  assert_true(wait_for(&f, no_command_running, NULL, 3000));
  assert_true(wait_for(&f, pids_gone, pids, 2000));
  cJSON_Delete(config);
  fixture_close(&f);
}

static void kill_all_sends_sigkill_to_every_command(void **state) {
  (void)state;
  fixture f;
  fixture_open(&f);
  char run[PATH_MAX + 64];
  snprintf(run, sizeof(run), "trap '' TERM; echo $$ > '%s/sh.pid'; sleep 30", f.dir);
  cJSON *config = config_of(exec_stage("stuck", run), NULL);
  submit(&f, "kill-task", NULL, config, NULL);
  assert_true(wait_for(&f, pid_written, "sh.pid", 5000));
  cli_exec_kill_all(f.x);
  wait_event(&f, SC_EV_TASK_FAILED, 5000);
  char name[32], message[512];
  bool will_retry;
  failure(&f, 0, name, message, sizeof(message), &will_retry);
  assert_string_equal(message, "killed by signal 9 (SIGKILL)");
  assert_false(will_retry); /* retryable, but the policy has a single attempt */
  cJSON_Delete(config);
  fixture_close(&f);
}

/* ---- retry and compensation ---- */

static void a_retried_task_runs_with_mode_retry(void **state) {
  (void)state;
  fixture f;
  fixture_open(&f);
  cJSON *config =
      config_of(exec_stage("picky", "echo \"mode=$SC_MODE\"; [ \"$SC_MODE\" = retry ]"), NULL);
  sc_task *t = submit(&f, "retry-task", NULL, config, NULL);
  wait_event(&f, SC_EV_TASK_FAILED, 10000);
  assert_int_equal(sc_task_retry(t, NULL, false), SC_OK);
  wait_event(&f, SC_EV_TASK_COMPLETED, 10000);
  assert_true(capture_has(&f.out, "picky", 1, "mode=run"));
  assert_true(capture_has(&f.out, "picky", 1, "mode=retry"));
  cJSON_Delete(config);
  fixture_close(&f);
}

static void compensation_runs_the_compensate_command(void **state) {
  (void)state;
  fixture f;
  fixture_open(&f);
  cJSON *a = exec_stage("a", "echo did-a; printf '{\"made\":\"thing-1\"}' > \"$SC_OUTPUT\"");
  cJSON_AddStringToObject(a, "effect", "compensable");
  /* No ${config.x} here: sc_stage_config() of a compensation is previous_config (none here). */
  cJSON_AddStringToObject(a, "compensate",
                          "echo \"undo mode=$SC_MODE stage=$SC_STAGE made=$MADE\"");
  add_json(a, "compensate_env", "{\"MADE\":\"${context.made}\"}");
  cJSON *b = exec_stage("b", "exit 1");
  cJSON_AddStringToObject(b, "effect", "compensable");
  cJSON_AddStringToObject(b, "compensate", "echo undo-b");
  cJSON *config = config_of(a, b, NULL);
  sc_task *t = submit(&f, "comp-task", NULL, config, NULL);
  wait_event(&f, SC_EV_TASK_FAILED, 10000);
  assert_int_equal(sc_task_rollback(t, SC_ROLLBACK_COMPENSATE), SC_OK);
  wait_event(&f, SC_EV_ROLLBACK_COMPLETED, 10000);
  assert_true(capture_has(&f.out, "a", 1, "did-a"));
  assert_true(capture_has(&f.out, "a", 1, "undo mode=compensate stage=a made=thing-1"));
  assert_false(capture_has(&f.out, "b", 1, "undo-b")); /* b never completed */
  assert_int_equal(recorder_count(&f.r, SC_EV_STAGE_COMPENSATED, NULL), 1);
  cJSON_Delete(config);
  fixture_close(&f);
}

static void compensation_without_a_command_fails_the_rollback(void **state) {
  (void)state;
  fixture f;
  fixture_open(&f);
  cJSON *a = exec_stage("a", "true");
  cJSON_AddStringToObject(a, "effect", "compensable");
  cJSON *config = config_of(a, exec_stage("b", "exit 2"), NULL);
  sc_task *t = submit(&f, "nocomp-task", NULL, config, NULL);
  wait_event(&f, SC_EV_TASK_FAILED, 10000);
  assert_int_equal(sc_task_rollback(t, SC_ROLLBACK_COMPENSATE), SC_OK);
  wait_event(&f, SC_EV_ROLLBACK_FAILED, 10000);
  cJSON *root;
  const cJSON *data = event_data(&f.r, SC_EV_ROLLBACK_FAILED, 0, &root);
  assert_non_null(strstr(str_at(data, "error.message"), "stage a has no compensate command"));
  cJSON_Delete(root);
  cJSON_Delete(config);
  fixture_close(&f);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(expand_resolves_every_variable_form),
      cmocka_unit_test(expand_writes_numbers_booleans_and_objects_as_json),
      cmocka_unit_test(expand_names_the_first_unresolved_variable),
      cmocka_unit_test(expand_keeps_escapes_and_the_shells_own_variables),
      cmocka_unit_test(our_variables_in_a_script_are_refused_wherever_they_stand),
      cmocka_unit_test(a_script_reaches_the_shell_as_written),
      cmocka_unit_test(values_reach_the_command_exactly_under_dash_and_bash),
      cmocka_unit_test(output_lines_reach_the_callback_with_stage_and_fd),
      cmocka_unit_test(default_output_writes_stage_prefixed_lines),
      cmocka_unit_test(commands_see_the_sc_variables_env_and_cwd),
      cmocka_unit_test(output_json_is_merged_and_feeds_the_next_stage),
      cmocka_unit_test(sc_output_that_is_not_an_object_fails_without_retry),
      cmocka_unit_test(a_large_context_is_in_sc_context_file),
      cmocka_unit_test(the_last_lines_in_a_failure_are_text),
      cmocka_unit_test(nonzero_exit_fails_with_status_and_the_last_lines),
      cmocka_unit_test(no_retry_exit_codes_stop_retries_and_other_codes_retry),
      cmocka_unit_test(a_missing_command_exits_127_and_retries),
      cmocka_unit_test(a_command_killed_by_a_signal_fails_retryable),
      cmocka_unit_test(a_missing_or_unresolvable_command_fails_without_retry),
      cmocka_unit_test(a_cwd_that_is_not_a_directory_fails_the_spawn),
      cmocka_unit_test(a_timeout_kills_the_whole_group_after_the_grace_period),
      cmocka_unit_test(task_cancel_ends_the_command_and_its_children),
      cmocka_unit_test(a_background_job_neither_holds_the_stage_nor_outlives_it),
      cmocka_unit_test(a_job_that_ignores_sigterm_gets_sigkill_after_the_grace_period),
      cmocka_unit_test(a_process_that_left_the_group_does_not_hold_the_stage),
      cmocka_unit_test(engine_free_while_a_command_runs_leaves_no_process),
      cmocka_unit_test(kill_all_sends_sigkill_to_every_command),
      cmocka_unit_test(a_retried_task_runs_with_mode_retry),
      cmocka_unit_test(compensation_runs_the_compensate_command),
      cmocka_unit_test(compensation_without_a_command_fails_the_rollback),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
