/* The socket's output path: the sender thread that makes every write to a client, and the takers
 * (streaming clients with no filter) that get the stream in runs at each flush. Every taker gets
 * every event once and in order, beside a filtered client and with a reply of its own between
 * events; one that joins while the stream flows gets no gap and no duplicate; one that stops
 * reading is dropped with whole lines while another gets everything; one that goes away while its
 * write is with the sender is closed; a close with a write stuck at a client that never reads
 * returns within its bound; a filtered client (an event a segment) keeps up with 300 tasks at
 * once; one that sends a command every 10 ms while it streams gets every reply. Readers are
 * threads, so they keep up while sc_engine_run runs. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

#include <stagecoach/socket.h>

#include "../../adapters/socket/socket_int.h"

#define SOCKFIX_DIR_PREFIX "/tmp/sc-socksend"
#include "sockfix.h" /* the temporary directory and the timer that keeps a loop turning */

static void sockfix_register(sc_engine *e) { /* its fixture is not used here: no kinds of its own */
  (void)e;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- the engine: n "fn" stages that complete at once with a padded output ---- */

static int pad_bytes = 200;
static int (*at_stage)(int index); /* called by each stage before it completes; may be NULL */

static int padded(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  if (at_stage) at_stage(sc_stage_index(ctx));
  char *text = malloc((size_t)pad_bytes + 1);
  memset(text, 'x', (size_t)pad_bytes);
  text[pad_bytes] = '\0';
  cJSON *out = cJSON_CreateObject();
  cJSON_AddStringToObject(out, "pad", text);
  free(text);
  sc_stage_complete(ctx, out);
  return SC_OK;
}

static cJSON *config_of(int stages) {
  cJSON *cfg = cJSON_CreateObject(), *list = cJSON_AddArrayToObject(cfg, "stages");
  for (int i = 0; i < stages; i++) {
    cJSON *st = cJSON_CreateObject();
    char name[32];
    snprintf(name, sizeof(name), "s%d", i);
    cJSON_AddStringToObject(st, "name", name);
    cJSON_AddStringToObject(st, "kind", "fn");
    cJSON_AddStringToObject(st, "fn", "padded");
    cJSON_AddItemToArray(list, st);
  }
  return cfg;
}

static int count_events(const sc_event *ev, sc_ack *ack, void *udata) {
  (void)ev;
  (void)ack;
  (*(uint64_t *)udata)++;
  return SC_OK;
}

typedef struct sfx {
  uv_loop_t loop;
  uv_timer_t alive; /* the server's handles keep no loop running: this one does, for sfx_turn() */
  sc_engine *e;
  sc_socket *s;
  char path[128];
  uint64_t events; /* emitted by the engine */
} sfx;

static void sfx_start(sfx *f, size_t queue_bytes, uint32_t subscribe_wait_ms) {
  sc_socket_options o;
  sc_socket_options_init(&o);
  o.queue_bytes = queue_bytes;
  o.subscribe_wait_ms = subscribe_wait_ms;
  memset(f, 0, sizeof(*f));
  assert_int_equal(uv_loop_init(&f->loop), 0);
  uv_timer_init(&f->loop, &f->alive);
  uv_timer_start(&f->alive, noop_timer, 60000, 60000);
  uv_unref((uv_handle_t *)&f->alive);
  assert_int_equal(sc_engine_new(&f->loop, NULL, &f->e), SC_OK);
  assert_int_equal(sc_engine_register_fn(f->e, "padded", padded, NULL), SC_OK);
  sc_subscriber sub;
  sc_subscriber_init(&sub);
  sub.on_event = count_events;
  sub.udata = &f->events;
  assert_int_equal(sc_engine_subscribe(f->e, &sub, NULL), SC_OK);
  static int servers; /* a path each: a failed case leaves none in the next one's way */
  snprintf(f->path, sizeof(f->path), "%s/s%d", dir, servers++);
  char addr[160];
  snprintf(addr, sizeof(addr), "unix:%s", f->path);
  assert_int_equal(sc_socket_listen(f->e, addr, &o, &f->s), SC_OK);
}

/* A task of n stages, run until the engine has nothing left to do. */
static void run_task(sfx *f, const char *id, int stages) {
  cJSON *cfg = config_of(stages);
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.config = cfg;
  spec.task_id = id;
  assert_int_equal(sc_task_submit(f->e, &spec, NULL), SC_OK);
  sc_engine_run(f->e);
  cJSON_Delete(cfg);
}

/* One turn of the loop, at most ms long. */
static void sfx_turn(sfx *f, uint64_t ms) {
  uv_ref((uv_handle_t *)&f->alive);
  uv_timer_start(&f->alive, noop_timer, ms, 0);
  uv_run(&f->loop, UV_RUN_ONCE);
  uv_unref((uv_handle_t *)&f->alive);
}

static void sfx_stop(sfx *f) {
  sc_socket_close(f->s);
  uv_close((uv_handle_t *)&f->alive, NULL);
  sc_engine_free(f->e);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&f->loop), 0);
}

static int connect_to(const sfx *f, int rcvbuf) {
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  if (rcvbuf > 0) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  memcpy(sa.sun_path, f->path, strlen(f->path));
  assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
  return fd;
}

static void accept_all(sfx *f, size_t n) {
  for (int i = 0; i < 200 && sc_socket_client_count(f->s) < n; i++)
    sfx_turn(f, 5);
  assert_int_equal(sc_socket_client_count(f->s), n);
}

static void send_line(int fd, const char *line) {
  size_t len = strlen(line);
  assert_int_equal(write(fd, line, len), (ssize_t)len);
}

/* ---- a reader thread: everything a client receives, until EOF or `stop` ---- */

typedef struct reader {
  pthread_t thread;
  int fd;
  char *buf;
  size_t len, cap;
  atomic_size_t lines;
  atomic_bool stop, done;
} reader;

static void *read_all(void *arg) {
  reader *r = arg;
  while (!atomic_load(&r->stop)) {
    struct pollfd p = {.fd = r->fd, .events = POLLIN};
    if (poll(&p, 1, 20) <= 0) continue;
    if (r->cap - r->len < 65536) {
      r->cap = r->cap ? r->cap * 2 : 1 << 20;
      r->buf = realloc(r->buf, r->cap);
    }
    ssize_t n = read(r->fd, r->buf + r->len, r->cap - r->len);
    if (n <= 0) break;
    size_t got = 0;
    for (ssize_t i = 0; i < n; i++)
      got += r->buf[r->len + (size_t)i] == '\n';
    r->len += (size_t)n;
    atomic_fetch_add(&r->lines, got);
  }
  atomic_store(&r->done, true);
  return NULL;
}

static void reader_start(reader *r, int fd) {
  memset(r, 0, sizeof(*r));
  r->fd = fd;
  assert_int_equal(pthread_create(&r->thread, NULL, read_all, r), 0);
}

static void reader_stop(reader *r) {
  atomic_store(&r->stop, true);
  pthread_join(r->thread, NULL);
  close(r->fd);
}

/* Turns the loop until every reader has `want` lines (or 20 s). */
static void wait_lines(sfx *f, reader *rs, size_t n, size_t want) {
  double until = now_s() + 20;
  for (;;) {
    bool all = true;
    for (size_t i = 0; i < n; i++)
      if (atomic_load(&rs[i].lines) < want) all = false;
    if (all || now_s() > until) break;
    sfx_turn(f, 5);
  }
  for (size_t i = 0; i < n; i++)
    assert_int_equal(atomic_load(&rs[i].lines), want);
}

/* Checks the stream a reader got: whole JSON lines; the events' seq go up by one from `first`
 * (the task's seq, or 0: whatever the first is), or with a type (a filtered stream, every event
 * of that type) only go up; other lines (replies, error lines) are counted. Returns the number of
 * events. */
static size_t check_stream(const reader *r, uint64_t first, size_t *others, const char *type) {
  size_t events = 0, other = 0;
  uint64_t want = first;
  const char *p = r->buf, *end = r->buf + r->len;
  while (p < end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    assert_non_null(nl); /* whole lines only */
    cJSON *j = cJSON_ParseWithLength(p, (size_t)(nl - p));
    assert_non_null(j);
    const cJSON *seq = cJSON_GetObjectItemCaseSensitive(j, "seq");
    if (cJSON_IsNumber(seq)) {
      if (want == 0 || type)
        want = (uint64_t)seq->valuedouble > want ? (uint64_t)seq->valuedouble : 0;
      assert_int_equal((uint64_t)seq->valuedouble, want);
      if (type) assert_string_equal(cJSON_GetObjectItemCaseSensitive(j, "type")->valuestring, type);
      want++;
      events++;
    } else {
      other++;
    }
    cJSON_Delete(j);
    p = nl + 1;
  }
  if (others) *others = other;
  return events;
}

/* ---- the cases ---- */

static int taker_fd = -1; /* the client that asks for a status in the middle of the stream */

static int ask_status_at_stage_50(int index) {
  if (index == 50) send_line(taker_fd, "{\"op\":\"status\",\"id\":\"mid\"}\n");
  return 0;
}

static void every_taker_gets_every_event_once_in_order_beside_a_filtered_client(void **state) {
  (void)state;
  sfx f;
  sfx_start(&f, 64u << 20, 5000);
  enum { TAKERS = 4, STAGES = 300 };
  int fds[TAKERS + 1];
  for (int i = 0; i <= TAKERS; i++)
    fds[i] = connect_to(&f, 0);
  accept_all(&f, TAKERS + 1);
  send_line(fds[0], "{\"subscribe\":{}}\n");
  send_line(fds[1], "{\"subscribe\":{\"types\":[\"*\"]}}\n");
  send_line(fds[2], "{\"subscribe\":{\"types\":[\"stage.started\",\"*\"]}}\n");
  send_line(fds[3], "{\"subscribe\":{}}\n");
  send_line(fds[TAKERS], "{\"subscribe\":{\"types\":[\"stage.completed\"]}}\n");
  for (int i = 0; i < 20; i++)
    sfx_turn(&f, 2);
  reader rs[TAKERS + 1];
  for (int i = 0; i <= TAKERS; i++)
    reader_start(&rs[i], fds[i]);
  taker_fd = fds[3];
  at_stage = ask_status_at_stage_50;
  run_task(&f, "t1", STAGES);
  at_stage = NULL;
  uint64_t events = f.events;
  assert_true(events > 2 * STAGES);
  wait_lines(&f, rs, 3, (size_t)events);
  wait_lines(&f, &rs[3], 1, (size_t)events + 1); /* and its reply */
  wait_lines(&f, &rs[TAKERS], 1, STAGES);
  for (int i = 0; i <= TAKERS; i++)
    reader_stop(&rs[i]); /* their buffers are read below */
  size_t others;
  for (int i = 0; i < TAKERS; i++) {
    assert_int_equal(check_stream(&rs[i], 1, &others, NULL), events);
    assert_int_equal(others, i == 3 ? 1 : 0);
  }
  /* every taker got the same bytes (the reply aside) */
  assert_int_equal(rs[1].len, rs[0].len);
  assert_memory_equal(rs[1].buf, rs[0].buf, rs[0].len);
  assert_memory_equal(rs[2].buf, rs[0].buf, rs[0].len);
  assert_int_equal(check_stream(&rs[TAKERS], 0, &others, "stagecoach.stage.completed"), 0 + STAGES);
  assert_int_equal(others, 0);
  /* the reply came whole, between events, after what was streamed before it was asked */
  const char *reply = memmem(rs[3].buf, rs[3].len, "\"id\":\"mid\"", 10);
  assert_non_null(reply);
  const char *line = reply;
  while (line > rs[3].buf && line[-1] != '\n')
    line--;
  assert_true(line > rs[3].buf + 100 * 100); /* at least the first stages' events came first */
  for (int i = 0; i <= TAKERS; i++)
    free(rs[i].buf);
  assert_int_equal(sc_socket_dropped_count(f.s), 0);
  sfx_stop(&f);
}

static sfx *joining_fx;
static int joiner_fd = -1;

static int connect_at_stage_100(int index) {
  if (index == 100) joiner_fd = connect_to(joining_fx, 0);
  return 0;
}

static void a_client_joining_while_the_stream_flows_gets_no_gap_and_no_duplicate(void **state) {
  (void)state;
  sfx f;
  sfx_start(&f, 64u << 20, 0);
  int early = connect_to(&f, 0);
  accept_all(&f, 1);
  reader rs[2];
  reader_start(&rs[0], early);
  joining_fx = &f;
  at_stage = connect_at_stage_100;
  run_task(&f, "t2", 400);
  at_stage = NULL;
  assert_true(joiner_fd >= 0);
  reader_start(&rs[1], joiner_fd);
  wait_lines(&f, rs, 1, (size_t)f.events);
  for (int i = 0; i < 100 && atomic_load(&rs[1].lines) == 0; i++)
    sfx_turn(&f, 5);
  size_t joined = 0;
  for (int i = 0; i < 200; i++) { /* until its count stops growing */
    sfx_turn(&f, 5);
    size_t now = atomic_load(&rs[1].lines);
    if (now == joined && now > 0 && i > 20) break;
    joined = now;
  }
  for (int i = 0; i < 2; i++)
    reader_stop(&rs[i]); /* their buffers are read below */
  size_t others;
  assert_int_equal(check_stream(&rs[0], 1, &others, NULL), f.events);
  /* the joiner: from the ring, since it connected, then live, consecutive up to the last event */
  size_t got = check_stream(&rs[1], 0, &others, NULL);
  assert_int_equal(others, 0);
  assert_true(got > 0 && got < f.events);
  const char *last = rs[1].buf + rs[1].len - 1;
  while (last > rs[1].buf && last[-1] != '\n')
    last--;
  cJSON *j = cJSON_ParseWithLength(last, (size_t)(rs[1].buf + rs[1].len - last));
  assert_non_null(j);
  assert_int_equal((uint64_t)cJSON_GetObjectItemCaseSensitive(j, "seq")->valuedouble, f.events);
  cJSON_Delete(j);
  for (int i = 0; i < 2; i++)
    free(rs[i].buf);
  sfx_stop(&f);
}

static int pace(int index) { /* a stream a reader keeps up with: 2 KB every 100 us */
  (void)index;
  usleep(100);
  return 0;
}

static void a_taker_that_stops_reading_is_dropped_while_another_gets_everything(void **state) {
  (void)state;
  sfx f;
  sfx_start(&f, 8u << 20,
            0); /* more than two turns of the loop make (flushes come between turns) */
  int lazy = connect_to(&f, 4096), fast = connect_to(&f, 0);
  accept_all(&f, 2);
  reader r;
  reader_start(&r, fast);
  pad_bytes = 1024;
  at_stage = pace;
  run_task(&f, "t3", 6000); /* ~14 MB of events: far past the lazy one's queue */
  at_stage = NULL;
  pad_bytes = 200;
  wait_lines(&f, &r, 1, (size_t)f.events);
  reader_stop(&r); /* its buffer is read below */
  assert_int_equal(check_stream(&r, 1, NULL, NULL), f.events);
  assert_int_equal(sc_socket_dropped_count(f.s), 1);
  /* the lazy one reads now: whole lines, consecutive, the last one the slow-consumer line */
  reader lr;
  reader_start(&lr, lazy);
  double until = now_s() + 20;
  while (!atomic_load(&lr.done) && now_s() < until)
    sfx_turn(&f, 5);
  assert_true(atomic_load(&lr.done)); /* closed by the server after its last line */
  reader_stop(&lr);
  size_t others;
  size_t got = check_stream(&lr, 1, &others, NULL);
  assert_int_equal(others, 1);
  assert_true(got < f.events);
  assert_true(lr.len > 0);
  const char *slow = "{\"error\":\"slow-consumer\"}\n";
  assert_memory_equal(lr.buf + lr.len - strlen(slow), slow, strlen(slow));
  free(r.buf);
  free(lr.buf);
  sfx_stop(&f);
}

static void a_client_that_goes_away_while_its_write_is_with_the_sender_is_closed(void **state) {
  (void)state;
  sfx f;
  sfx_start(&f, 64u << 20, 0);
  int fd = connect_to(&f, 4096), stay = connect_to(&f, 0);
  accept_all(&f, 2);
  reader r;
  reader_start(&r, stay);
  run_task(&f, "t4", 1000);
  char buf[1000];
  assert_true(read(fd, buf, sizeof(buf)) > 0); /* it took a little, then goes */
  close(fd);
  double until = now_s() + 10;
  while (sc_socket_client_count(f.s) > 1 && now_s() < until)
    sfx_turn(&f, 5);
  assert_int_equal(sc_socket_client_count(f.s), 1);
  wait_lines(&f, &r, 1, (size_t)f.events);
  reader_stop(&r); /* its buffer is read below */
  assert_int_equal(check_stream(&r, 1, NULL, NULL), f.events);
  free(r.buf);
  sfx_stop(&f);
}

static void
closing_with_a_write_stuck_at_a_client_that_never_reads_returns_in_its_bound(void **state) {
  (void)state;
  sfx f;
  sfx_start(&f, 64u << 20, 0);
  int fd = connect_to(&f, 4096);
  accept_all(&f, 1);
  run_task(&f, "t5", 1000);
  for (int i = 0; i < 20; i++)
    sfx_turn(&f, 2); /* its write is with the sender, waiting for a socket that is full */
  assert_int_equal(sc_socket_client_count(f.s), 1);
  double t0 = now_s();
  sc_socket_close(f.s);
  double took = now_s() - t0;
  assert_true(took < 5.0); /* a second for the client to take what is queued, and no more */
  /* the server's end is closed: what it got is whole lines, then EOF */
  char buf[65536];
  ssize_t n;
  size_t total = 0;
  do {
    n = read(fd, buf, sizeof(buf));
    if (n > 0) total += (size_t)n;
  } while (n > 0);
  assert_int_equal(n, 0);
  assert_true(total > 0);
  close(fd);
  uv_close((uv_handle_t *)&f.alive, NULL);
  sc_engine_free(f.e);
  uv_run(&f.loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&f.loop), 0);
}

/* ---- many tasks at once: a filtered client's events are one segment each ---- */

typedef struct op_sender {
  pthread_t thread;
  int fd, n, sent;
} op_sender;

static void *send_ops(void *arg) {
  op_sender *o = arg;
  const char *line = "{\"op\":\"status\"}\n";
  for (int i = 0; i < o->n; i++) {
    if (send(o->fd, line, strlen(line), MSG_NOSIGNAL) != (ssize_t)strlen(line)) break;
    o->sent++;
    usleep(10000);
  }
  return NULL;
}

static size_t lines_with(const reader *r, const char *needle) {
  size_t n = 0;
  for (const char *p = r->buf; p < r->buf + r->len;) {
    const char *nl = memchr(p, '\n', (size_t)(r->buf + r->len - p));
    if (nl == NULL) break;
    if (memmem(p, (size_t)(nl - p), needle, strlen(needle))) n++;
    p = nl + 1;
  }
  return n;
}

static void a_filtered_client_keeps_up_with_many_tasks_at_once(void **state) {
  (void)state;
  enum { TASKS = 300, STAGES = 60 };
  sfx f;
  sfx_start(&f, 4u << 20, 5000); /* many turns' events, far less than all of them (10 MB) */
  int fd = connect_to(&f, 0);
  accept_all(&f, 1);
  send_line(fd, "{\"subscribe\":{\"types\":[\"stage.completed\"]}}\n");
  for (int i = 0; i < 20; i++)
    sfx_turn(&f, 2);
  reader r;
  reader_start(&r, fd);
  /* stages that end on a timer: each turn of the loop ends a stage of every task, so each turn
   * queues the client TASKS events that are not next to each other, a segment each */
  cJSON *cfg = cJSON_CreateObject(), *list = cJSON_AddArrayToObject(cfg, "stages");
  for (int i = 0; i < STAGES; i++) {
    cJSON *st = cJSON_CreateObject();
    char name[32];
    snprintf(name, sizeof(name), "z%d", i);
    cJSON_AddStringToObject(st, "name", name);
    cJSON_AddStringToObject(st, "kind", "sleep");
    cJSON_AddNumberToObject(st, "ms", 1);
    cJSON_AddItemToArray(list, st);
  }
  for (int i = 0; i < TASKS; i++) {
    char id[32];
    snprintf(id, sizeof(id), "m%d", i);
    sc_task_spec spec;
    sc_task_spec_init(&spec);
    spec.config = cfg;
    spec.task_id = id;
    assert_int_equal(sc_task_submit(f.e, &spec, NULL), SC_OK);
  }
  sc_engine_run(f.e);
  double until = now_s() + 20;
  while (now_s() < until && atomic_load(&r.lines) < (size_t)TASKS * STAGES &&
         sc_socket_dropped_count(f.s) == 0)
    sfx_turn(&f, 5);
  reader_stop(&r); /* its buffer is read below */
  assert_int_equal(sc_socket_dropped_count(f.s), 0);
  assert_int_equal(lines_with(&r, "stagecoach.stage.completed"), (size_t)TASKS * STAGES);
  assert_int_equal(lines_with(&r, "\"seq\""), (size_t)TASKS * STAGES);
  free(r.buf);
  cJSON_Delete(cfg);
  sfx_stop(&f);
}

static void a_streaming_client_sending_a_command_every_10_ms_gets_every_reply(void **state) {
  (void)state;
  enum { OPS = 60 };
  sfx f;
  sfx_start(&f, 8u << 20, 0);
  int fd = connect_to(&f, 0);
  accept_all(&f, 1);
  reader r;
  reader_start(&r, fd);
  op_sender ops = {.fd = fd, .n = OPS};
  assert_int_equal(pthread_create(&ops.thread, NULL, send_ops, &ops), 0);
  at_stage = pace; /* ~5 MB/s, in turns of ~30 ms, for about as long as the commands come */
  run_task(&f, "t6", 6000);
  at_stage = NULL;
  pthread_join(ops.thread, NULL);
  assert_int_equal(ops.sent, OPS);
  double until = now_s() + 20;
  while (now_s() < until && atomic_load(&r.lines) < f.events + OPS &&
         sc_socket_client_count(f.s) == 1)
    sfx_turn(&f, 5);
  reader_stop(&r); /* its buffer is read below */
  assert_int_equal(lines_with(&r, "\"seq\""), f.events);
  assert_int_equal(lines_with(&r, "\"ok\""), OPS); /* a reply each, none cut off */
  assert_int_equal(lines_with(&r, "too-many-pending"), 0);
  assert_int_equal(sc_socket_dropped_count(f.s), 0);
  free(r.buf);
  sfx_stop(&f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(every_taker_gets_every_event_once_in_order_beside_a_filtered_client),
      cmocka_unit_test(a_client_joining_while_the_stream_flows_gets_no_gap_and_no_duplicate),
      cmocka_unit_test(a_taker_that_stops_reading_is_dropped_while_another_gets_everything),
      cmocka_unit_test(a_client_that_goes_away_while_its_write_is_with_the_sender_is_closed),
      cmocka_unit_test(
          closing_with_a_write_stuck_at_a_client_that_never_reads_returns_in_its_bound),
      cmocka_unit_test(a_filtered_client_keeps_up_with_many_tasks_at_once),
      cmocka_unit_test(a_streaming_client_sending_a_command_every_10_ms_gets_every_reply),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
