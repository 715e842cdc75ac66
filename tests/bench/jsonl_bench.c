/* jsonl_bench: the JSON-lines log's costs, each beside a baseline measured in the same run.
 * usage: jsonl_bench [scale [events]]; "events": only the first figures (events per second).
 * Files go to a temporary directory under $TMPDIR (default /tmp), which must be on a real disk for
 * the fdatasync figures to mean anything. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <stagecoach/jsonl.h>
#include <stagecoach/stagecoach.h>
#include <uv.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void report(const char *name, double value, const char *unit) {
  printf(strcmp(unit, "x") == 0 ? "%s %.2f %s\n" : "%s %.1f %s\n", name, value, unit);
  fflush(stdout);
}

static int finish_now(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  sc_stage_complete(ctx, NULL);
  return SC_OK;
}

static int count_event(const sc_event *ev, sc_ack *ack, void *udata) {
  (void)ev;
  (void)ack;
  (*(uint64_t *)udata)++;
  return SC_OK;
}

static cJSON *config_of(int nstages) {
  cJSON *config = cJSON_CreateObject();
  cJSON_AddStringToObject(config, "version", "2.4.1");
  cJSON *stages = cJSON_AddArrayToObject(config, "stages");
  for (int i = 0; i < nstages; i++) {
    char name[16];
    snprintf(name, sizeof(name), "stage-%d", i);
    cJSON *st = cJSON_CreateObject();
    cJSON_AddStringToObject(st, "name", name);
    cJSON_AddStringToObject(st, "kind", "fn");
    cJSON *params = cJSON_AddObjectToObject(st, "params");
    cJSON_AddStringToObject(params, "fn", "finish_now");
    cJSON_AddItemToArray(stages, st);
  }
  return config;
}

/* Runs ntasks tasks of nstages fn stages with the log in the given mode; returns seconds and the
 * number of events. */
static double run_logged(const char *path, sc_fsync_mode mode, int ntasks, int nstages,
                         uint64_t *events) {
  sc_engine *e;
  sc_engine_new(NULL, NULL, &e);
  sc_engine_register_fn(e, "finish_now", finish_now, NULL);
  sc_jsonl_options o;
  sc_jsonl_options_init(&o);
  o.fsync = mode;
  sc_jsonl *log;
  if (sc_jsonl_open(e, path, &o, &log) != SC_OK) {
    fprintf(stderr, "open %s: %s\n", path, sc_error_message());
    exit(1);
  }
  *events = 0;
  sc_subscriber s;
  sc_subscriber_init(&s);
  s.on_event = count_event;
  s.udata = events;
  sc_engine_subscribe(e, &s, NULL);
  cJSON *config = config_of(nstages);
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.config = config;
  spec.plan_id = "bench";
  double t0 = now_s();
  for (int i = 0; i < ntasks; i++)
    sc_task_submit(e, &spec, NULL);
  sc_engine_run(e);
  sc_jsonl_close(log);
  double t1 = now_s();
  sc_engine_free(e);
  cJSON_Delete(config);
  return t1 - t0;
}

static char *read_file(const char *path, size_t *size) {
  FILE *f = fopen(path, "rb");
  fseek(f, 0, SEEK_END);
  *size = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = malloc(*size + 1);
  if (fread(buf, 1, *size, f) != *size) *size = 0;
  fclose(f);
  return buf;
}

/* SHA-256 of each line (digest fetched once, context reused) plus buffered write() of the same
 * bytes: the work a log writer cannot avoid. Returns lines per second. */
static double baseline_hash_write(const char *lines, size_t size, const char *out_path,
                                  uint64_t *nlines) {
  EVP_MD *md = EVP_MD_fetch(NULL, "SHA256", NULL);
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  int fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  static char buf[256 * 1024];
  size_t used = 0;
  unsigned char digest[32];
  unsigned int dlen;
  *nlines = 0;
  double t0 = now_s();
  for (size_t off = 0; off < size;) {
    const char *nl = memchr(lines + off, '\n', size - off);
    size_t len = (size_t)(nl - (lines + off)) + 1;
    EVP_DigestInit_ex(ctx, md, NULL);
    EVP_DigestUpdate(ctx, lines + off, len);
    EVP_DigestFinal_ex(ctx, digest, &dlen);
    if (used + len > sizeof(buf)) {
      if (write(fd, buf, used) != (ssize_t)used) break;
      used = 0;
    }
    memcpy(buf + used, lines + off, len);
    used += len;
    off += len;
    (*nlines)++;
  }
  if (used && write(fd, buf, used) != (ssize_t)used) fprintf(stderr, "write failed\n");
  double t1 = now_s();
  close(fd);
  EVP_MD_CTX_free(ctx);
  EVP_MD_free(md);
  return (double)*nlines / (t1 - t0);
}

static double baseline_fdatasync(const char *path, int iterations) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
  const char line[] =
      "{\"specversion\":\"1.0\",\"type\":\"stagecoach.stage.completed\",\"seq\":1}\n";
  double t0 = now_s();
  for (int i = 0; i < iterations; i++) {
    if (write(fd, line, sizeof(line) - 1) < 0 || fdatasync(fd) != 0) break;
  }
  double t1 = now_s();
  close(fd);
  return iterations / (t1 - t0);
}

/* Reading a log back: map, split, SHA-256 per line — the floor under a scan. */
static double baseline_hash_read(const char *path, uint64_t *nlines) {
  double t0 = now_s();
  size_t size;
  char *data = read_file(path, &size);
  EVP_MD *md = EVP_MD_fetch(NULL, "SHA256", NULL);
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  unsigned char digest[32];
  unsigned int dlen;
  *nlines = 0;
  for (size_t off = 0; off < size;) {
    const char *nl = memchr(data + off, '\n', size - off);
    size_t len = (size_t)(nl - (data + off)) + 1;
    EVP_DigestInit_ex(ctx, md, NULL);
    EVP_DigestUpdate(ctx, data + off, len);
    EVP_DigestFinal_ex(ctx, digest, &dlen);
    off += len;
    (*nlines)++;
  }
  double t1 = now_s();
  EVP_MD_CTX_free(ctx);
  EVP_MD_free(md);
  free(data);
  return (double)*nlines / (t1 - t0);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* The middle of n values (sorted in place). */
static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof(*v), cmp_double);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

#define ROUNDS 5

int main(int argc, char **argv) {
  double scale = argc > 1 ? atof(argv[1]) : 1.0;
  if (scale <= 0) scale = 1.0;
  const char *tmpdir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  char dir[512], path[600], other[600];
  snprintf(dir, sizeof(dir), "%s/sc-jsonl-bench-XXXXXX", tmpdir);
  if (mkdtemp(dir) == NULL) return 1;
  snprintf(path, sizeof(path), "%s/log.jsonl", dir);
  snprintf(other, sizeof(other), "%s/baseline.jsonl", dir);

  /* The machine is shared and its page cache write-back comes in bursts, so each figure is taken
   * in ROUNDS rounds, each measuring the log and then its baseline on the same bytes; the medians
   * are printed, and the median of the per-round ratios. */
  double rate[ROUNDS], base[ROUNDS], ratio[ROUNDS];
  uint64_t events, lines;
  size_t size = 0;

  /* Events per second, fsync none, chain on: 1,000 concurrent tasks of 100 stages. */
  for (int i = 0; i < ROUNDS; i++) {
    double secs = run_logged(path, SC_FSYNC_NONE, (int)(1000 * scale), 100, &events);
    char *text = read_file(path, &size);
    base[i] = baseline_hash_write(text, size, other, &lines);
    free(text);
    rate[i] = (double)events / secs;
    ratio[i] = rate[i] / base[i];
    unlink(path);
    unlink(other);
  }
  report("jsonl_events_per_s", median(rate, ROUNDS), "events/s");
  report("baseline_hash_write_lines_per_s", median(base, ROUNDS), "lines/s");
  report("jsonl_events_vs_baseline", median(ratio, ROUNDS), "x");
  report("jsonl_bytes_per_event", (double)size / (double)lines, "bytes");
  if (argc > 2 && strcmp(argv[2], "events") == 0) goto out;

  /* Durable stages per second with group commit: 1,000 concurrent tasks of 10 stages. */
  for (int i = 0; i < ROUNDS; i++) {
    base[i] = baseline_fdatasync(other, (int)(1000 * scale));
    rate[i] =
        1000 * scale * 10 / run_logged(path, SC_FSYNC_BATCH, (int)(1000 * scale), 10, &events);
    ratio[i] = rate[i] / base[i];
    unlink(path);
    unlink(other);
  }
  report("jsonl_durable_stages_per_s", median(rate, ROUNDS), "stages/s");
  report("baseline_fdatasync_per_s", median(base, ROUNDS), "syncs/s");
  report("jsonl_durable_vs_fdatasync", median(ratio, ROUNDS), "x");

  /* One task alone, batch mode: each idempotent stage should cost about one sync, not more. */
  for (int i = 0; i < ROUNDS; i++) {
    base[i] = baseline_fdatasync(other, (int)(200 * scale));
    rate[i] =
        run_logged(path, SC_FSYNC_BATCH, 1, (int)(200 * scale), &events) * 1e6 / (200 * scale);
    ratio[i] = rate[i] * base[i] / 1e6;
    unlink(path);
    unlink(other);
  }
  report("jsonl_single_task_durable_us_per_stage", median(rate, ROUNDS), "us/stage");
  report("jsonl_single_task_syncs_per_stage", median(ratio, ROUNDS), "x");

  /* always mode with 100 tasks writing at once, beside batch mode on the same work. */
  double batch100[ROUNDS];
  for (int i = 0; i < ROUNDS; i++) {
    rate[i] = 100 * 10 / run_logged(path, SC_FSYNC_ALWAYS, 100, 10, &events);
    unlink(path);
    batch100[i] = 100 * 10 / run_logged(path, SC_FSYNC_BATCH, 100, 10, &events);
    unlink(path);
  }
  report("jsonl_always_100_tasks_stages_per_s", median(rate, ROUNDS), "stages/s");
  report("jsonl_batch_100_tasks_stages_per_s", median(batch100, ROUNDS), "stages/s");

  /* Scanning a log of a million lines (chain verified), three times beside the floor. */
  run_logged(path, SC_FSYNC_NONE, (int)(20000 * scale), 24, &events);
  sc_jsonl_report r = {0};
  for (int i = 0; i < 3; i++) {
    double t0 = now_s();
    sc_unfinished *u;
    size_t n;
    int rc = sc_jsonl_scan(path, &u, &n, &r);
    double t1 = now_s();
    if (rc != SC_OK) fprintf(stderr, "scan: %s\n", sc_error_message());
    sc_unfinished_free(u, n);
    rate[i] = (double)r.lines / (t1 - t0);
    base[i] = baseline_hash_read(path, &lines);
    ratio[i] = rate[i] / base[i];
  }
  report("jsonl_scan_lines", (double)r.lines, "lines");
  report("jsonl_scan_lines_per_s", median(rate, 3), "lines/s");
  report("baseline_hash_read_lines_per_s", median(base, 3), "lines/s");
  report("jsonl_scan_vs_baseline", median(ratio, 3), "x");

  /* Compaction of the same log, the worst case: every task kept (a torn tail appended each time
   * makes it rewrite every line: verified, sorted into tasks, rechained, written, synced), beside
   * the scan above; then the common case, every finished task dropped. */
  double compact_rate[3];
  for (int i = 0; i < 3; i++) {
    FILE *f = fopen(path, "ab");
    if (f != NULL) {
      fputs("{\"specversion\":\"1.0\",", f);
      fclose(f);
    }
    sc_jsonl_compact_options co;
    sc_jsonl_compact_options_init(&co);
    co.keep_finished_s = -1;
    sc_jsonl_compact_report cr;
    double t0 = now_s();
    int rc = sc_jsonl_compact(path, &co, &cr);
    double t1 = now_s();
    if (rc != SC_OK || !cr.compacted) fprintf(stderr, "compact: %s\n", sc_error_message());
    compact_rate[i] = (double)cr.lines_before / (t1 - t0);
    ratio[i] = compact_rate[i] / rate[i];
  }
  report("compact_lines_per_s", median(compact_rate, 3), "lines/s");
  report("compact_vs_jsonl_scan", median(ratio, 3), "x");
  {
    sc_jsonl_compact_report cr;
    double t0 = now_s();
    int rc = sc_jsonl_compact(path, NULL, &cr);
    double t1 = now_s();
    if (rc != SC_OK) fprintf(stderr, "compact: %s\n", sc_error_message());
    report("compact_drop_finished_lines_per_s", (double)cr.lines_before / (t1 - t0), "lines/s");
  }
  unlink(path);
out:
  rmdir(dir);
  return 0;
}
