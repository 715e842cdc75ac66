/* Fixtures of the socket adapter's tests in one process (test_socket_ops.c, test_socket_replay.c):
 * a temporary directory, a loop with an engine and a server with a token file, clients that are
 * plain sockets read between turns of the loop. Included once, after harness.h, the includes of
 * the test file and socket_int.h, with SOCKFIX_DIR_PREFIX naming the directory; the test file
 * defines sockfix_register(), which registers its own stage kinds. */
#ifndef STAGECOACH_TEST_SOCKFIX_H
#define STAGECOACH_TEST_SOCKFIX_H

static void sockfix_register(sc_engine *e);

#define OPER "tok-olga-0123456789"
#define VIEW "tok-vic-0123456789"

static char dir[64]; /* the test program's temporary directory */

static inline int setup(void **state) {
  (void)state;
  snprintf(dir, sizeof(dir), SOCKFIX_DIR_PREFIX "-XXXXXX");
  return mkdtemp(dir) ? 0 : -1;
}

static inline int teardown(void **state) {
  (void)state;
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
  return system(cmd);
}

static inline uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* An "fn" stage whose output replaces one member: the lines of a long task stay of one size. */
static inline int pad(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  char text[1024];
  memset(text, 'x', sizeof(text) - 1);
  text[sizeof(text) - 1] = '\0';
  cJSON *out = cJSON_CreateObject();
  cJSON_AddStringToObject(out, "pad", text);
  sc_stage_complete(ctx, out);
  return SC_OK;
}

/* ---- a fixture: a loop, an engine with the test's kinds, a server with a token file ---- */

typedef struct fx {
  uv_loop_t loop;
  uv_timer_t alive; /* the server's handles keep no loop running: this one does, for turn() */
  sc_engine *e;
  sc_socket *s;
  char addr[160];
} fx;

static inline void noop_timer(uv_timer_t *t) {
  (void)t;
}

static inline void write_tokens(const char *path) {
  const char *text = "olga:" OPER ":operator,viewer\nvic:" VIEW ":viewer\n";
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
}

static inline void engine_start(fx *f) {
  assert_int_equal(uv_loop_init(&f->loop), 0);
  uv_timer_init(&f->loop, &f->alive);
  uv_timer_start(&f->alive, noop_timer, 60000, 60000);
  assert_int_equal(sc_engine_new(&f->loop, NULL, &f->e), SC_OK);
  assert_int_equal(sc_engine_register_fn(f->e, "pad", pad, NULL), SC_OK);
  sockfix_register(f->e);
}

static inline void fx_start(fx *f, sc_socket_options *o) {
  engine_start(f);
  char tokens[128];
  snprintf(tokens, sizeof(tokens), "%s/tokens", dir);
  write_tokens(tokens);
  static int servers;
  snprintf(f->addr, sizeof(f->addr), "unix:%s/s%d", dir, servers++);
  sc_socket_options defaults;
  if (o == NULL) {
    sc_socket_options_init(&defaults);
    o = &defaults;
  }
  o->token_file = tokens;
  assert_int_equal(sc_socket_listen(f->e, f->addr, o, &f->s), SC_OK);
}

static inline void fx_stop(fx *f) {
  sc_socket_close(f->s);
  sc_engine_free(f->e);
  uv_close((uv_handle_t *)&f->alive, NULL);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&f->loop), 0);
}

static inline void submit(fx *f, const char *id, const char *config, const char *previous) {
  cJSON *cfg = cJSON_Parse(config), *prev = previous ? cJSON_Parse(previous) : NULL;
  assert_non_null(cfg);
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.task_id = id;
  spec.config = cfg;
  spec.previous_config = prev;
  assert_int_equal(sc_task_submit(f->e, &spec, NULL), SC_OK);
  cJSON_Delete(cfg);
  cJSON_Delete(prev);
}

/* One turn of the loop, then up to 1 ms for fd to become readable (-1: just wait). */
static inline void turn(fx *f, int fd) {
  uv_run(&f->loop, UV_RUN_NOWAIT);
  struct pollfd p = {fd, POLLIN, 0};
  poll(&p, fd >= 0 ? 1 : 0, 1);
}

static inline sc_task_status status_of(fx *f, const char *id) {
  sc_task *t = sc_engine_find_task(f->e, id);
  if (t != NULL) return sc_task_get_status(t);
  sc__sock_task_rec *rec = sc__sock_task_find(f->s, id);
  return rec ? rec->status : SC_TASK__COUNT;
}

static inline void until_status(fx *f, const char *id, sc_task_status want) {
  uint64_t until = now_ms() + 10000;
  while (status_of(f, id) != want && now_ms() < until)
    turn(f, -1);
  assert_int_equal(status_of(f, id), want);
}

/* ---- a client ---- */

#define CL_BUF (1 << 20) /* the task.created line of a task of 6,000 stages is long */

typedef struct cl {
  int fd;
  char *buf;
  size_t len;
  bool eof;
} cl;

/* Connects; accepted: and waits until the server has accepted it (no other client comes or goes
 * meanwhile). */
static inline void cl_open(fx *f, cl *c, bool accepted) {
  c->len = 0;
  c->eof = false;
  c->buf = malloc(CL_BUF);
  assert_non_null(c->buf);
  assert_int_equal(sc_socket_connect(f->addr, &c->fd), SC_OK);
  assert_int_equal(fcntl(c->fd, F_SETFL, O_NONBLOCK), 0);
  size_t before = sc_socket_client_count(f->s);
  uint64_t until = now_ms() + 5000;
  while (accepted && sc_socket_client_count(f->s) == before && now_ms() < until)
    turn(f, -1);
  if (accepted) assert_int_equal(sc_socket_client_count(f->s), before + 1);
}

static inline void cl_connect(fx *f, cl *c) {
  cl_open(f, c, false);
}

static inline void cl_close(cl *c) {
  close(c->fd);
  free(c->buf);
}

static inline void cl_send(cl *c, const char *line) {
  size_t len = strlen(line);
  assert_int_equal(send(c->fd, line, len, MSG_NOSIGNAL), (ssize_t)len);
  assert_int_equal(send(c->fd, "\n", 1, MSG_NOSIGNAL), 1);
}

static inline void cl_read(cl *c) {
  ssize_t n = recv(c->fd, c->buf + c->len, CL_BUF - c->len, 0);
  if (n == 0) c->eof = true;
  if (n > 0) c->len += (size_t)n;
}

/* Reads at most max bytes: the test takes lines by moving the rest of the buffer, which for a
 * buffer of a whole MiB would cost the loop's thread (the test's too) more than the server does. */
static inline void cl_read_some(cl *c, size_t max) {
  size_t room = CL_BUF - c->len < max ? CL_BUF - c->len : max;
  ssize_t n = recv(c->fd, c->buf + c->len, room, 0);
  if (n == 0 && room > 0) c->eof = true;
  if (n > 0) c->len += (size_t)n;
}

/* The next complete line, NUL-terminated into out[cap], or false. */
static inline bool cl_take(cl *c, char *out, size_t cap) {
  char *nl = memchr(c->buf, '\n', c->len);
  if (nl == NULL) {
    assert_true(c->len < CL_BUF); /* no line of the tests is that long */
    return false;
  }
  size_t n = (size_t)(nl - c->buf);
  assert_true(n < cap);
  memcpy(out, c->buf, n);
  out[n] = '\0';
  memmove(c->buf, nl + 1, c->len - n - 1);
  c->len -= n + 1;
  return true;
}

/* The next line as JSON, within 5 s of turning the loop; NULL at a timeout or the end. */
static inline cJSON *cl_line(fx *f, cl *c) {
  static char line[CL_BUF];
  uint64_t until = now_ms() + 5000;
  while (!cl_take(c, line, sizeof(line))) {
    if (c->eof || now_ms() > until) return NULL;
    turn(f, c->fd);
    cl_read(c);
  }
  cJSON *j = cJSON_Parse(line);
  assert_non_null(j);
  return j;
}

static inline const char *str(const cJSON *o, const char *name) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

static inline double num(const cJSON *o, const char *name) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
  return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

/* Sends an op and returns its reply (the first line with an "ok" member). */
static inline cJSON *ask(fx *f, cl *c, const char *line) {
  cl_send(c, line);
  cJSON *j;
  while ((j = cl_line(f, c)) != NULL && !cJSON_HasObjectItem(j, "ok"))
    cJSON_Delete(j);
  assert_non_null(j);
  return j;
}

static inline cJSON *sleep_stages(int n, const char *prefix) {
  cJSON *cfg = cJSON_CreateObject(), *stages = cJSON_AddArrayToObject(cfg, "stages");
  for (int i = 0; i < n; i++) {
    cJSON *s = cJSON_CreateObject();
    char name[16];
    snprintf(name, sizeof(name), "%s%d", prefix, i);
    cJSON_AddStringToObject(s, "name", name);
    cJSON_AddStringToObject(s, "kind", "sleep");
    cJSON_AddNumberToObject(s, "ms", 1);
    cJSON_AddItemToArray(stages, s);
  }
  return cfg;
}

static inline void start_task(fx *f, const char *id, cJSON *cfg) {
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.task_id = id;
  spec.config = cfg;
  assert_int_equal(sc_task_submit(f->e, &spec, NULL), SC_OK);
  cJSON_Delete(cfg);
}

static inline size_t replaying(fx *f) {
  size_t n = 0;
  sc__queue *q;
  sc__queue_foreach(q, &f->s->clients) {
    n += sc__queue_data(q, sc__sock_client, node)->state == SC__SOCK_REPLAYING;
  }
  return n;
}

/* The most the server holds queued for one client. */
static inline size_t server_queued(fx *f) {
  size_t most = 0;
  sc__queue *q;
  sc__queue_foreach(q, &f->s->clients) {
    sc__sock_client *c = sc__queue_data(q, sc__sock_client, node);
    if (c->queued > most) most = c->queued;
  }
  return most;
}

/* ---- logs written by an engine of their own (the server does not see their events) ---- */

/* n tasks PREFIX<from>... of `stages` pad stages each, appended to the log; gate: one more task,
 * PREFIX-gate, left waiting at an approval (unfinished in the log), after the first half. */
static inline void write_tasks(const char *log, const char *prefix, int from, int n, int stages,
                               bool gate) {
  fx f;
  engine_start(&f);
  sc_jsonl_options jo;
  sc_jsonl_options_init(&jo);
  jo.fsync = SC_FSYNC_NONE;
  sc_jsonl *j;
  assert_int_equal(sc_jsonl_open(f.e, log, &jo, &j), SC_OK);
  cJSON *cfg = cJSON_CreateObject(), *list = cJSON_AddArrayToObject(cfg, "stages");
  for (int i = 0; i < stages; i++) {
    cJSON *s = cJSON_CreateObject();
    char name[16];
    snprintf(name, sizeof(name), "s%d", i);
    cJSON_AddStringToObject(s, "name", name);
    cJSON_AddStringToObject(s, "kind", "fn");
    cJSON_AddStringToObject(s, "fn", "pad");
    cJSON_AddItemToArray(list, s);
  }
  cJSON *held = cJSON_Parse("{\"stages\":[{\"name\":\"g\",\"kind\":\"sleep\",\"ms\":1,"
                            "\"approval\":{\"required\":true}}]}");
  uv_unref((uv_handle_t *)&f.alive);
  for (int i = from; i < from + n; i++) {
    char id[64];
    snprintf(id, sizeof(id), "%s%d", prefix, i);
    sc_task_spec spec;
    sc_task_spec_init(&spec);
    spec.task_id = id;
    spec.config = cfg;
    assert_int_equal(sc_task_submit(f.e, &spec, NULL), SC_OK);
    sc_engine_run(f.e);
    if (gate && i == from + n / 2) {
      snprintf(id, sizeof(id), "%s-gate", prefix);
      spec.task_id = id;
      spec.config = held;
      assert_int_equal(sc_task_submit(f.e, &spec, NULL), SC_OK);
      sc_engine_run(f.e); /* returns while it waits for a person */
      assert_int_equal(sc_task_get_status(sc_engine_find_task(f.e, id)), SC_TASK_AWAITING_APPROVAL);
    }
  }
  cJSON_Delete(cfg);
  cJSON_Delete(held);
  sc_jsonl_close(j); /* before the engine goes: the waiting task stays unfinished in the log */
  sc_engine_free(f.e);
  uv_close((uv_handle_t *)&f.alive, NULL);
  uv_run(&f.loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&f.loop), 0);
}

#endif
