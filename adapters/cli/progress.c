/* Live progress for operators: on a terminal one status line per active task (stage i/n, name,
 * attempt, elapsed, a spinner) redrawn in place, and a summary table at the end; piped, one plain
 * timestamped line per event. Output of the stages' commands is printed between the status lines,
 * which are cleared first and drawn again after. */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "../../events/internal.h"

static const char *or_default(const char *s, const char *fallback) {
  return s ? s : fallback;
}

typedef struct stage_row {
  char *name;
  const char *status; /* "pending", "running", "completed", "failed", "compensated", "skipped",
                       * "awaiting approval", "rejected", "cancelled" */
  unsigned attempts;
  int64_t started_ns, duration_ms;
} stage_row;

typedef struct task_row {
  char *id;
  sc_task_status status;
  int32_t index, count;
  uint32_t attempt;
  int64_t stage_started_ns, task_started_ns;
  char *stage;
  stage_row *stages;
  size_t nstages, cap;
  bool active;
  uint64_t epoch;
} task_row;

struct cli_progress {
  uv_loop_t *loop;
  FILE *out;
  bool live, held;
  task_row *tasks;
  size_t ntasks, cap;
  unsigned drawn; /* status lines on the screen */
  unsigned spin;
  uv_timer_t tick;
};

static const char *spinner[] = {"|", "/", "-", "\\"};

static task_row *task_of(cli_progress *p, const char *id) {
  for (size_t i = 0; i < p->ntasks; i++)
    if (strcmp(p->tasks[i].id, id) == 0) return &p->tasks[i];
  if (!sc__grow(&p->tasks, &p->cap, p->ntasks + 1, sizeof(*p->tasks), 8)) return NULL;
  task_row *t = &p->tasks[p->ntasks];
  memset(t, 0, sizeof(*t));
  if ((t->id = strdup(id)) == NULL) return NULL;
  t->status = SC_TASK__COUNT;
  t->index = -1;
  p->ntasks++;
  return t;
}

static stage_row *stage_of(task_row *t, const char *name) {
  for (size_t i = 0; i < t->nstages; i++)
    if (strcmp(t->stages[i].name, name) == 0) return &t->stages[i];
  if (!sc__grow(&t->stages, &t->cap, t->nstages + 1, sizeof(*t->stages), 8)) return NULL;
  stage_row *s = &t->stages[t->nstages];
  memset(s, 0, sizeof(*s));
  if ((s->name = strdup(name)) == NULL) return NULL;
  s->status = "pending";
  t->nstages++;
  return s;
}

static int64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void clear(cli_progress *p) {
  if (!p->live) return;
  for (unsigned i = 0; i < p->drawn; i++)
    fputs("\033[1A\033[2K", p->out);
  p->drawn = 0;
}

static void draw(cli_progress *p) {
  if (!p->live || p->held) return;
  clear(p);
  int64_t now = mono_ns();
  for (size_t i = 0; i < p->ntasks; i++) {
    task_row *t = &p->tasks[i];
    if (!t->active) continue;
    double elapsed = t->stage_started_ns ? (double)(now - t->stage_started_ns) / 1e9 : 0;
    const char *id = t->id + (strlen(t->id) > 12 ? strlen(t->id) - 12 : 0);
    if (t->status == SC_TASK_AWAITING_APPROVAL)
      fprintf(p->out, "%s %s [%d/%d] %s  waiting for approval  %.1fs\n", spinner[p->spin % 4], id,
              t->index + 1, t->count, t->stage ? t->stage : "", elapsed);
    else if (t->status == SC_TASK_PAUSED)
      fprintf(p->out, "  %s paused\n", id);
    else
      fprintf(p->out, "%s %s [%d/%d] %s  attempt %u  %.1fs\n", spinner[p->spin % 4], id,
              t->index + 1, t->count, t->stage ? t->stage : "-", t->attempt, elapsed);
    p->drawn++;
  }
  fflush(p->out);
}

static void on_tick(uv_timer_t *h) {
  cli_progress *p = h->data;
  p->spin++;
  draw(p);
}

int cli_progress_new(uv_loop_t *loop, bool live, FILE *out, cli_progress **pp) {
  cli_progress *p = calloc(1, sizeof(*p));
  if (p == NULL) return SC_ENOMEM;
  p->loop = loop;
  p->live = live;
  p->out = out;
  uv_timer_init(loop, &p->tick);
  p->tick.data = p;
  if (live) {
    uv_timer_start(&p->tick, on_tick, 100, 100);
    uv_unref((uv_handle_t *)&p->tick); /* the spinner keeps nothing alive */
  }
  *pp = p;
  return SC_OK;
}

static void plain_line(cli_progress *p, const sc_event *ev, const char *detail) {
  char when[32];
  time_t sec = (time_t)(ev->time_ns / 1000000000);
  struct tm tm;
  gmtime_r(&sec, &tm);
  strftime(when, sizeof(when), "%H:%M:%S", &tm);
  const char *type = sc_event_type_name(ev->type) + strlen("stagecoach.");
  fprintf(p->out, "%s.%03d %s %-18s", when, (int)(ev->time_ns / 1000000 % 1000), ev->task_id, type);
  if (ev->stage) fprintf(p->out, " %s", ev->stage);
  if (ev->attempt > 1) fprintf(p->out, " (attempt %u)", ev->attempt);
  if (detail && *detail) fprintf(p->out, " %s", detail);
  fputc('\n', p->out);
  fflush(p->out);
}

static const char *string_of(const cJSON *data, const char *name) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(data, name);
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* A message in one line: its first, and of "...; last output:\nA\nB" (the exec kind's failures)
 * the last line of output too. */
static void one_line(const char *msg, char *buf, size_t cap) {
  snprintf(buf, cap, "%s", msg);
  char *nl = strchr(buf, '\n');
  if (nl) *nl = '\0';
  static const char marker[] = "; last output:";
  size_t n = strlen(buf), m = sizeof(marker) - 1;
  const char *last = strrchr(msg, '\n');
  if (n >= m && strcmp(buf + n - m, marker) == 0 && last != NULL)
    snprintf(buf + n - m, cap - (n - m), " (last output: %.160s)", last + 1);
}

/* A short note for the events an operator must see even on a terminal. */
static void describe(const sc_event *ev, char *buf, size_t cap) {
  buf[0] = '\0';
  const cJSON *err = cJSON_GetObjectItemCaseSensitive(ev->data, "error");
  const char *msg = string_of(err, "message");
  switch (ev->type) {
    case SC_EV_STAGE_FAILED: {
      const cJSON *retry = cJSON_GetObjectItemCaseSensitive(ev->data, "will_retry");
      const cJSON *in = cJSON_GetObjectItemCaseSensitive(ev->data, "retry_in_ms");
      char first[300];
      one_line(msg ? msg : "failed", first, sizeof(first));
      if (cJSON_IsTrue(retry))
        snprintf(buf, cap, "%s; retrying in %.0f ms", first,
                 cJSON_IsNumber(in) ? in->valuedouble : 0);
      else
        snprintf(buf, cap, "%s", first);
      break;
    }
    case SC_EV_TASK_FAILED:
    case SC_EV_ROLLBACK_FAILED: one_line(msg ? msg : "", buf, cap); break;
    case SC_EV_TASK_CANCELLED:
      snprintf(buf, cap, "%s", or_default(string_of(ev->data, "reason"), ""));
      break;
    case SC_EV_TASK_PAUSED:
      snprintf(buf, cap, "%s", msg ? msg : (or_default(string_of(ev->data, "reason"), "")));
      break;
    case SC_EV_APPROVAL_REQUESTED:
      snprintf(buf, cap, "(%s)", or_default(string_of(ev->data, "reason"), ""));
      break;
    case SC_EV_APPROVAL_GRANTED:
    case SC_EV_APPROVAL_REJECTED:
      snprintf(buf, cap, "by %s%s%s", or_default(string_of(ev->data, "reviewer"), "?"),
               string_of(ev->data, "comment") ? ": " : "",
               or_default(string_of(ev->data, "comment"), ""));
      break;
    case SC_EV_APPROVAL_TIMED_OUT:
      snprintf(buf, cap, "-> %s", or_default(string_of(ev->data, "action"), ""));
      break;
    case SC_EV_TASK_RECOVERED: {
      const cJSON *start = cJSON_GetObjectItemCaseSensitive(ev->data, "start_index");
      snprintf(buf, cap, "from %s, %s mode, starting at stage %d",
               or_default(string_of(ev->data, "recovered_from"), "?"),
               or_default(string_of(ev->data, "mode"), "?"),
               cJSON_IsNumber(start) ? (int)start->valuedouble + 1 : 0);
      break;
    }
    default: break;
  }
}

static bool worth_a_line_live(sc_event_type type) {
  switch (type) {
    case SC_EV_STAGE_FAILED:
    case SC_EV_TASK_FAILED:
    case SC_EV_TASK_CANCELLED:
    case SC_EV_TASK_COMPLETED:
    case SC_EV_TASK_PAUSED:
    case SC_EV_TASK_RESUMED:
    case SC_EV_TASK_RECOVERED:
    case SC_EV_APPROVAL_GRANTED:
    case SC_EV_APPROVAL_REJECTED:
    case SC_EV_APPROVAL_TIMED_OUT:
    case SC_EV_ROLLBACK_STARTED:
    case SC_EV_ROLLBACK_COMPLETED:
    case SC_EV_ROLLBACK_FAILED: return true;
    default: return false;
  }
}

static void track(task_row *t, const sc_event *ev) {
  int64_t now = ev->time_ns;
  t->status = ev->status;
  t->epoch = ev->epoch;
  const cJSON *n = cJSON_GetObjectItemCaseSensitive(ev->data, "stages");
  if (cJSON_IsNumber(n) && ev->type != SC_EV_TASK_CREATED) t->count = (int32_t)n->valuedouble;
  if (cJSON_IsNumber(n) && ev->type == SC_EV_TASK_CREATED && t->count == 0)
    t->count = (int32_t)n->valuedouble;
  t->active = !sc_task_status_is_terminal(ev->status) && ev->status != SC_TASK_FAILED &&
              ev->status != SC_TASK_ROLLBACK_FAILED && ev->status != SC_TASK_CREATED;
  if (ev->type == SC_EV_TASK_STARTED || ev->type == SC_EV_ROLLBACK_STARTED)
    t->task_started_ns = now;
  if (ev->type == SC_EV_TASK_CANCELLED) /* the stage it stopped in */
    for (size_t i = 0; i < t->nstages; i++) {
      stage_row *s = &t->stages[i];
      if (strcmp(s->status, "running") != 0 && strcmp(s->status, "awaiting approval") != 0)
        continue;
      if (strcmp(s->status, "running") == 0) s->duration_ms = (now - s->started_ns) / 1000000;
      s->status = "cancelled";
    }
  if (ev->stage == NULL) return;
  free(t->stage);
  t->stage = strdup(ev->stage);
  t->index = ev->stage_index;
  stage_row *s = stage_of(t, ev->stage);
  if (s == NULL) return;
  switch (ev->type) {
    case SC_EV_STAGE_STARTED:
      t->attempt = ev->attempt;
      t->stage_started_ns = now;
      s->status = "running";
      s->attempts = ev->attempt;
      if (ev->attempt == 1) s->started_ns = now;
      break;
    case SC_EV_STAGE_COMPLETED:
      s->status = "completed";
      s->duration_ms = (now - s->started_ns) / 1000000;
      break;
    case SC_EV_STAGE_FAILED:
      s->status = "failed";
      s->duration_ms = (now - s->started_ns) / 1000000;
      break;
    case SC_EV_STAGE_COMPENSATED: s->status = "compensated"; break;
    case SC_EV_APPROVAL_REQUESTED:
      s->status = "awaiting approval";
      t->stage_started_ns = now;
      break;
    case SC_EV_APPROVAL_REJECTED: s->status = "rejected"; break;
    default: break;
  }
}

int cli_progress_on_event(const sc_event *ev, sc_ack *ack, void *udata) {
  (void)ack;
  cli_progress *p = udata;
  task_row *t = task_of(p, ev->task_id);
  if (t == NULL) return SC_OK;
  track(t, ev);
  char detail[400];
  describe(ev, detail, sizeof(detail));
  if (!p->live) {
    plain_line(p, ev, detail);
  } else if (worth_a_line_live(ev->type)) {
    clear(p);
    const char *id = ev->task_id + (strlen(ev->task_id) > 12 ? strlen(ev->task_id) - 12 : 0);
    fprintf(p->out, "  %s %s%s%s%s%s\n", id, sc_event_type_name(ev->type) + strlen("stagecoach."),
            ev->stage ? " " : "", ev->stage ? ev->stage : "", *detail ? ": " : "", detail);
    draw(p);
  } else {
    draw(p);
  }
  return SC_OK;
}

void cli_progress_output(const char *stage, int fd, const char *line, size_t len, void *udata) {
  cli_progress *p = udata;
  FILE *to = fd == 2 && !p->live ? stderr : p->out;
  clear(p);
  if (!p->live) {
    char when[16];
    time_t sec = time(NULL);
    struct tm tm;
    gmtime_r(&sec, &tm);
    strftime(when, sizeof(when), "%H:%M:%S", &tm);
    fprintf(to, "%s [%s] ", when, stage);
  } else {
    fprintf(to, "  [%s] ", stage);
  }
  fwrite(line, 1, len, to); /* all of it, NUL bytes too */
  fputc('\n', to);
  fflush(to);
  draw(p);
}

void cli_progress_say(cli_progress *p, const char *fmt, ...) {
  clear(p);
  va_list ap;
  va_start(ap, fmt);
  vfprintf(p->out, fmt, ap);
  va_end(ap);
  fputc('\n', p->out);
  fflush(p->out);
  draw(p);
}

void cli_progress_hold(cli_progress *p) {
  clear(p);
  fflush(p->out);
  p->held = true;
}

void cli_progress_resume(cli_progress *p) {
  p->held = false;
  draw(p);
}

sc_task_status cli_progress_status(const cli_progress *p, const char *task_id) {
  for (size_t i = 0; i < p->ntasks; i++)
    if (strcmp(p->tasks[i].id, task_id) == 0) return p->tasks[i].status;
  return SC_TASK__COUNT;
}

size_t cli_progress_task_count(const cli_progress *p) {
  return p->ntasks;
}

const char *cli_progress_task_id(const cli_progress *p, size_t i) {
  return i < p->ntasks ? p->tasks[i].id : NULL;
}

void cli_progress_summary(cli_progress *p) {
  clear(p);
  for (size_t i = 0; i < p->ntasks; i++) {
    task_row *t = &p->tasks[i];
    fprintf(p->out, "\ntask %s (epoch %llu): %s\n", t->id, (unsigned long long)t->epoch,
            t->status < SC_TASK__COUNT ? sc_task_status_name(t->status) : "?");
    if (t->nstages == 0) continue;
    fprintf(p->out, "  %-20s %-18s %8s %10s\n", "stage", "status", "attempts", "duration");
    for (size_t k = 0; k < t->nstages; k++) {
      stage_row *s = &t->stages[k];
      char dur[32] = "-";
      if (strcmp(s->status, "completed") == 0 || strcmp(s->status, "failed") == 0)
        snprintf(dur, sizeof(dur), "%.1fs", (double)s->duration_ms / 1000.0);
      fprintf(p->out, "  %-20s %-18s %8u %10s\n", s->name, s->status, s->attempts, dur);
    }
  }
  fflush(p->out);
}

static void tick_closed(uv_handle_t *h) {
  free(h->data);
}

void cli_progress_free(cli_progress *p) {
  if (p == NULL) return;
  clear(p);
  for (size_t i = 0; i < p->ntasks; i++) {
    for (size_t k = 0; k < p->tasks[i].nstages; k++)
      free(p->tasks[i].stages[k].name);
    free(p->tasks[i].stages);
    free(p->tasks[i].stage);
    free(p->tasks[i].id);
  }
  free(p->tasks);
  p->tasks = NULL;
  uv_close((uv_handle_t *)&p->tick, tick_closed);
}
