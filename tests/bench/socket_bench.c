/* socket_bench: the socket adapter's costs, as `name value unit` lines beside baselines measured
 * in the same run, each the median of three interleaved rounds (the `*_ratio` lines are the
 * medians of the per-round ratios, the figures to read on a noisy machine).
 * socket_events_per_s: events an engine emits reaching 1 and 10 consumers over a Unix socket, from
 * the first stage to the last line read by the slowest consumer, every event delivered (the queue
 * holds them all); beside baseline_unix_lines_per_s, buffered 64 KiB writes of the same line over
 * a Unix socket pair to the same reader, and engine_events_per_s, the engine alone (no socket, and
 * the socket with no consumer: the server encodes each event into its ring), which bound it.
 * stage_overhead_ns: the engine's time per stage with no socket, with the socket and no consumer,
 * and with 10 consumers attached that get every event (none dropped); stage_cpu_ns the same runs'
 * CPU time of the engine's thread alone (what the server costs it, whatever else the machine
 * runs: the consumers, the server's sender thread, other processes).
 * Not a test: nothing here fails. usage: socket_bench [scale] */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <stagecoach/socket.h>
#include <stagecoach/stagecoach.h>
#include <uv.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void report(const char *name, double value, const char *unit) {
  printf(strstr(name, "ratio") ? "%s %.3f %s\n" : "%s %.1f %s\n", name, value, unit);
  fflush(stdout);
}

/* ---- the engine: n fn stages that finish inside start ---- */

static int finish_now(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  sc_stage_complete(ctx, NULL);
  return SC_OK;
}

static int many_factory(const cJSON *config, sc_plan_builder *b, void *udata) {
  (void)config;
  size_t n = *(size_t *)udata;
  cJSON *params = cJSON_CreateObject();
  cJSON_AddStringToObject(params, "fn", "finish_now");
  sc_stage_spec spec;
  sc_stage_spec_init(&spec);
  spec.kind = "fn";
  spec.params = params;
  char name[32];
  int rc = SC_OK;
  for (size_t i = 0; i < n && rc == SC_OK; i++) {
    snprintf(name, sizeof(name), "s%zu", i);
    spec.name = name;
    rc = sc_plan_add_stage(b, &spec);
  }
  cJSON_Delete(params);
  return rc;
}

static uint64_t emitted;
static char sample[4096]; /* one stage.completed line, for the baseline */
static size_t sample_len;

static int count_event(const sc_event *ev, sc_ack *ack, void *udata) {
  (void)ack;
  (void)udata;
  emitted++;
  if (sample_len == 0 && ev->type == SC_EV_STAGE_COMPLETED) {
    long n = sc_event_encode(ev, sample, sizeof(sample) - 1);
    if (n > 0 && (size_t)n < sizeof(sample) - 1) {
      sample[n] = '\n';
      sample_len = (size_t)n + 1;
    }
  }
  return SC_OK;
}

/* ---- consumers: threads that read and count lines ---- */

typedef struct consumer {
  pthread_t thread;
  int fd;
  atomic_ullong lines;
  uint64_t want;          /* set before the thread starts */
  _Atomic double done_at; /* when it had `want` lines; 0: not yet */
} consumer;

static void *consume(void *arg) {
  consumer *c = arg;
  char buf[1 << 16];
  ssize_t n;
  while ((n = read(c->fd, buf, sizeof(buf))) > 0) {
    uint64_t got = 0;
    for (char *p = buf; (p = memchr(p, '\n', (size_t)(buf + n - p))) != NULL; p++)
      got++;
    uint64_t total = atomic_fetch_add(&c->lines, got) + got;
    if (c->want && total >= c->want && atomic_load(&c->done_at) == 0)
      atomic_store(&c->done_at, now_s());
  }
  return NULL;
}

static uint64_t events_per_run; /* what a run of n stages emits: counted by the warm-up */

static int connect_unix(const char *path) {
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  memcpy(sa.sun_path, path, strlen(path));
  if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
    perror("connect");
    exit(1);
  }
  return fd;
}

static void noop_timer(uv_timer_t *t) {
  (void)t;
}

static double thread_cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef struct result {
  double seconds, stage_ns, stage_cpu_ns;
  uint64_t events, delivered, dropped;
} result;

/* One run of n stages with `consumers` clients attached (socket: whether there is a server at
 * all). want_all: the clients must get every event (a queue that holds them all). */
static result run(size_t n, int consumers, bool socket, bool want_all) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  sc_engine_options o;
  sc_engine_options_init(&o);
  o.factory = many_factory;
  o.factory_udata = &n;
  sc_engine *e;
  sc_engine_new(&loop, &o, &e);
  sc_engine_register_fn(e, "finish_now", finish_now, NULL);
  emitted = 0;
  sc_subscriber sub;
  sc_subscriber_init(&sub);
  sub.on_event = count_event;
  sc_engine_subscribe(e, &sub, NULL);
  char path[64];
  snprintf(path, sizeof(path), "/tmp/sc-bench-%d.sock", (int)getpid());
  sc_socket *s = NULL;
  consumer *cs = calloc((size_t)consumers + 1, sizeof(*cs));
  uv_timer_t wake;
  uv_timer_init(&loop, &wake);
  if (socket) {
    sc_socket_options so;
    sc_socket_options_init(&so);
    so.subscribe_wait_ms = 0;
    if (want_all) so.queue_bytes = (size_t)1 << 31;
    char addr[80];
    snprintf(addr, sizeof(addr), "unix:%s", path);
    if (sc_socket_listen(e, addr, &so, &s) != SC_OK) {
      fprintf(stderr, "listen: %s\n", sc_error_message());
      exit(1);
    }
    for (int i = 0; i < consumers; i++) {
      cs[i].fd = connect_unix(path);
      cs[i].want = events_per_run;
      pthread_create(&cs[i].thread, NULL, consume, &cs[i]);
    }
    while (sc_socket_client_count(s) < (size_t)consumers) {
      uv_timer_start(&wake, noop_timer, 1, 0);
      uv_run(&loop, UV_RUN_ONCE);
    }
  }
  cJSON *config = cJSON_Parse("{\"stages\":\"built by the factory\"}");
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.config = config;
  sc_task_submit(e, &spec, NULL);
  /* task.created was emitted by the submit; the clock starts with the stages */
  double t0 = now_s(), c0 = thread_cpu_s();
  sc_engine_run(e);
  double t1 = now_s(), c1 = thread_cpu_s();
  result r = {t1 - t0, (t1 - t0) * 1e9 / (double)n, (c1 - c0) * 1e9 / (double)n, emitted, 0, 0};
  if (socket) {
    /* the loop goes on turning until every consumer has everything (or was dropped) */
    double until = now_s() + 60;
    for (;;) {
      bool all = true;
      for (int i = 0; i < consumers; i++)
        if (atomic_load(&cs[i].lines) < emitted) all = false;
      if (all || now_s() > until || sc_socket_client_count(s) == 0) break;
      uv_timer_start(&wake, noop_timer, 1, 0);
      uv_run(&loop, UV_RUN_ONCE);
    }
    double last = t0;
    for (int i = 0; i < consumers; i++) {
      double d = atomic_load(&cs[i].done_at);
      if (d == 0) d = now_s(); /* dropped, or not all in 60 s: counted as done now */
      if (d > last) last = d;
      r.delivered += atomic_load(&cs[i].lines);
    }
    if (want_all) r.seconds = last - t0;
    r.dropped = sc_socket_dropped_count(s);
    sc_socket_close(s);
    for (int i = 0; i < consumers; i++) {
      pthread_join(cs[i].thread, NULL);
      close(cs[i].fd);
    }
  }
  uv_close((uv_handle_t *)&wake, NULL);
  free(cs);
  sc_engine_free(e);
  cJSON_Delete(config);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  return r;
}

/* ---- the baseline: buffered writes of the same bytes over a Unix socket pair ---- */

static void *drain(void *arg) {
  consumer *c = arg;
  return consume(c);
}

static double baseline_lines_per_s(uint64_t lines) {
  int sv[2];
  socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
  consumer c = {.fd = sv[1], .want = lines};
  pthread_t t;
  pthread_create(&t, NULL, drain, &c);
  char *buf = malloc(64 * 1024 + sizeof(sample));
  size_t len = 0;
  double t0 = now_s();
  for (uint64_t i = 0; i < lines; i++) {
    memcpy(buf + len, sample, sample_len);
    len += sample_len;
    if (len >= 64 * 1024 || i + 1 == lines) {
      size_t off = 0;
      while (off < len) {
        ssize_t n = write(sv[0], buf + off, len - off);
        if (n <= 0) break;
        off += (size_t)n;
      }
      len = 0;
    }
  }
  close(sv[0]);
  pthread_join(t, NULL);
  double t1 = atomic_load(&c.done_at) > 0 ? atomic_load(&c.done_at) : now_s();
  close(sv[1]);
  free(buf);
  return (double)lines / (t1 - t0);
}

static double median3(double v[3]) {
  double a = v[0], b = v[1], c = v[2];
  if (a > b) {
    double x = a;
    a = b;
    b = x;
  }
  if (b > c) {
    double x = b;
    b = c;
    c = x;
  }
  if (a > b) {
    double x = a;
    a = b;
    b = x;
  }
  return b;
}

int main(int argc, char **argv) {
  double scale = argc > 1 ? atof(argv[1]) : 1.0;
  if (scale <= 0) scale = 1.0;
  size_t n = (size_t)(100000 * scale);
  run(n, 0, false, false); /* a warm-up, which also takes the sample line and the event count */
  events_per_run = emitted;
  enum { ROUNDS = 3 };
  double base[ROUNDS], one[ROUNDS], ten[ROUNDS], r1[ROUNDS], r10[ROUNDS], eng[ROUNDS],
      eng_sock[ROUNDS];
  double none[ROUNDS], sock0[ROUNDS], sock10[ROUNDS], ratio_none[ROUNDS], ratio_sock[ROUNDS];
  double cpu_none[ROUNDS], cpu_sock0[ROUNDS], cpu_sock10[ROUNDS], cpu_ratio[ROUNDS];
  uint64_t dropped = 0, delivered = 0, want = 0;
  for (int i = 0; i < ROUNDS; i++) { /* interleaved: each round has all of them */
    base[i] = baseline_lines_per_s(events_per_run);
    result a = run(n, 1, true, true), b = run(n, 10, true, true);
    one[i] = (double)a.events / a.seconds;
    ten[i] = (double)b.events * 10 / b.seconds;
    r1[i] = one[i] / base[i];
    r10[i] = ten[i] / base[i];
    result e0 = run(n, 0, false, false), e1 = run(n, 0, true, false), e10 = run(n, 10, true, true);
    eng[i] = (double)e0.events / e0.seconds;
    eng_sock[i] = (double)e1.events / e1.seconds;
    none[i] = e0.stage_ns;
    sock0[i] = e1.stage_ns;
    sock10[i] = e10.stage_ns;
    ratio_none[i] = e10.stage_ns / e0.stage_ns;
    ratio_sock[i] = e10.stage_ns / e1.stage_ns;
    cpu_none[i] = e0.stage_cpu_ns;
    cpu_sock0[i] = e1.stage_cpu_ns;
    cpu_sock10[i] = e10.stage_cpu_ns;
    cpu_ratio[i] = e10.stage_cpu_ns / e1.stage_cpu_ns;
    dropped += a.dropped + b.dropped + e10.dropped;
    delivered += a.delivered + b.delivered + e10.delivered;
    want += a.events + b.events * 10 + e10.events * 10;
  }
  report("baseline_unix_lines_per_s", median3(base), "lines/s");
  report("engine_events_per_s_no_socket", median3(eng), "events/s (the engine alone)");
  report("engine_events_per_s_socket_no_consumer", median3(eng_sock),
         "events/s (the engine and the server's encoding into its ring)");
  report("socket_events_per_s_1_consumer", median3(one), "events/s");
  report("socket_events_per_s_10_consumers", median3(ten), "events/s (summed over the consumers)");
  report("socket_vs_baseline_ratio_1_consumer", median3(r1), "x");
  report("socket_vs_baseline_ratio_10_consumers", median3(r10), "x");
  report("socket_event_bytes", (double)sample_len, "bytes/line");
  report("stage_overhead_ns_no_socket", median3(none), "ns/stage");
  report("stage_overhead_ns_socket_no_consumer", median3(sock0), "ns/stage");
  report("stage_overhead_ns_10_consumers", median3(sock10), "ns/stage (every event delivered)");
  report("stage_overhead_ratio_10_consumers", median3(ratio_none), "x (vs no socket)");
  report("stage_overhead_ratio_10_consumers_vs_no_consumer", median3(ratio_sock),
         "x (vs the socket with no consumer)");
  report("stage_cpu_ns_no_socket", median3(cpu_none), "ns/stage (the engine thread's CPU time)");
  report("stage_cpu_ns_socket_no_consumer", median3(cpu_sock0), "ns/stage");
  report("stage_cpu_ns_10_consumers", median3(cpu_sock10), "ns/stage");
  report("stage_cpu_ratio_10_consumers_vs_no_consumer", median3(cpu_ratio), "x");
  report("socket_consumers_dropped", (double)dropped, "(in every round: none expected)");
  report("socket_events_delivered_share", 100.0 * (double)delivered / (double)want, "%");
  return 0;
}
