/* spawn_bench: the baseline for cli_exec_stage_ratio — a bare uv_spawn of `/bin/true` from a small
 * process and waiting for its exit, in a loop. Prints baseline_spawn_us. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <uv.h>

static int left;

static void on_exit_cb(uv_process_t *p, int64_t status, int signal);

static void spawn_one(uv_loop_t *loop) {
  static char *args[] = {"/bin/true", NULL};
  uv_process_t *p = malloc(sizeof(*p));
  uv_process_options_t o = {0};
  o.file = "/bin/true";
  o.args = args;
  o.exit_cb = on_exit_cb;
  o.flags = UV_PROCESS_DETACHED;
  if (uv_spawn(loop, p, &o) != 0) {
    fprintf(stderr, "spawn failed\n");
    exit(1);
  }
}

static void closed(uv_handle_t *h) {
  free(h);
}

static void on_exit_cb(uv_process_t *p, int64_t status, int signal) {
  (void)status;
  (void)signal;
  uv_loop_t *loop = p->loop;
  uv_close((uv_handle_t *)p, closed);
  if (--left > 0) spawn_one(loop);
}

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 200;
  uv_loop_t loop;
  uv_loop_init(&loop);
  left = n;
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  spawn_one(&loop);
  uv_run(&loop, UV_RUN_DEFAULT);
  clock_gettime(CLOCK_MONOTONIC, &b);
  uv_loop_close(&loop);
  double us = ((double)(b.tv_sec - a.tv_sec) * 1e6 + (double)(b.tv_nsec - a.tv_nsec) / 1e3) / n;
  printf("baseline_spawn_us %.1f us/spawn\n", us);
  return 0;
}
