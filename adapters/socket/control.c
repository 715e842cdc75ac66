/* What a client's lines do: the subscribe line (authentication, the filter, the replay from the
 * ring or the log and the seam to the live stream) and the control ops, each answered by exactly
 * one reply line. */
#define _GNU_SOURCE /* memmem, asprintf */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "socket_int.h"

#include <stagecoach/jsonl.h>

#define TOO_MANY_PENDING "{\"error\":\"too-many-pending\"}\n"

static void unauthorized(sc__sock_client *c, const char *message, const cJSON *id) {
  sc__sock_client_error_reply(c, "unauthorized", message, id);
}

/* ---- delivery from the ring ---- */

/* Everything the ring holds since the client connected that its filter takes. */
static void deliver_since_connect(sc__sock_client *c) {
  sc_socket *s = c->server;
  uint64_t oldest = s->ring_pos - s->ring_n, pos = c->start_pos;
  if (pos < oldest) {
    char line[160];
    int n = snprintf(line, sizeof(line),
                     "{\"error\":\"missed\",\"events\":%llu,\"message\":\"events since the "
                     "connection that the replay ring no longer held\"}\n",
                     (unsigned long long)(oldest - pos));
    sc__sock_client_send(c, line, (size_t)n, true);
    pos = oldest;
  }
  for (; pos < s->ring_pos && c->state == SC__SOCK_STREAM; pos++) {
    const sc__sock_ring_entry *r = &s->ring[pos % s->ring_cap];
    if (sc__sock_filter_match(&c->filter, r->task->id, r->task->tenant, r->type))
      sc__sock_client_send_seg(c, &r->line, true);
  }
}

/* ---- replay ---- */

/* A replay-gap line, with its newline; malloc'd, NULL when out of memory. Called on the loop and
 * on the thread pool. */
static char *gap_text(const char *task, uint64_t from, uint64_t first_available, bool known,
                      size_t *len) {
  cJSON *o = cJSON_CreateObject();
  if (o == NULL) return NULL;
  cJSON_AddStringToObject(o, "error", "replay-gap");
  cJSON_AddStringToObject(o, "task", task);
  cJSON_AddNumberToObject(o, "from_seq", (double)from);
  if (known)
    cJSON_AddNumberToObject(o, "first_available", (double)first_available);
  else
    cJSON_AddNullToObject(o, "first_available");
  char *text = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  if (text == NULL) return NULL;
  *len = strlen(text);
  text[(*len)++] = '\n'; /* the NUL becomes the newline: used by length */
  return text;
}

static void gap_line(sc__sock_client *c, const char *task, uint64_t from, uint64_t first_available,
                     bool known) {
  size_t len;
  char *text = gap_text(task, from, first_available, known, &len);
  if (text != NULL) sc__sock_client_send(c, text, len, true);
  free(text);
}

/* The log is read on libuv's thread pool, not on the loop, and in pieces: a work item reads about
 * REPLAY_PIECE bytes of the log, then the loop queues what it kept for the client and puts the
 * replay back at the end of the server's line of replays. At most one piece per server is on
 * the pool at a time, so replays never take the threads the log writer's syncs need, and each
 * replay holds one piece and what its client has not yet taken: when that is more than
 * REPLAY_AHEAD bytes, the replay waits (parked) until the client has read it. The work owns copies
 * of all it reads (the client may go while it runs) and writes the lines it keeps into chunks of
 * its own, which the loop queues as they are, without a copy. Until the seam the client is
 * REPLAYING: the live stream passes it by and the ring keeps what it misses. */
#define REPLAY_PIECE (1u << 20)
#define REPLAY_AHEAD (1u << 20)

struct sc__sock_replay {
  uv_work_t req;
  sc__queue node; /* in the server's replays waiting for their turn (while waiting) */
  sc_socket *s;
  sc__sock_client *c;             /* NULL once the client is gone */
  atomic_bool cancel;             /* set when the client goes: the read stops at its next line */
  char *log_path, *task, *needle; /* needle: "taskid":"ID", to skip other tasks' lines unparsed */
  sc__sock_filter filter;         /* a copy of the client's */
  uint64_t from, expected, upto;
  sc_jsonl_cursor *cur_log; /* where the read stands in the log (opened by the first piece) */
  sc__queue chunks;         /* what the piece kept, in order, through the chunks' pool nodes */
  sc__sock_chunk *cur;
  size_t kept;  /* events the piece handed on */
  bool nomem;   /* out of memory: the client is told and closed */
  bool hit;     /* the piece stopped at an event the ring held (seq >= upto) */
  bool done;    /* the log holds nothing more now (its end, or a line that does not verify) */
  bool parked;  /* waiting for its client to take what is queued */
  bool running; /* a piece is on the pool */
};

static bool work_append(sc__sock_replay *w, const char *p, size_t len) {
  if (w->cur == NULL || w->cur->cap - w->cur->len < len) {
    sc__sock_chunk *ch = sc__sock_chunk_alloc(len);
    if (ch == NULL) return false;
    sc__queue_insert_tail(&w->chunks, &ch->pool);
    w->cur = ch;
  }
  memcpy(w->cur->data + w->cur->len, p, len);
  w->cur->len += len;
  return true;
}

static int replay_line(const char *json, size_t len, void *udata) {
  sc__sock_replay *w = udata;
  if (atomic_load_explicit(&w->cancel, memory_order_relaxed)) return 1;
  if (w->needle && memmem(json, len, w->needle, strlen(w->needle)) == NULL) return 0;
  sc_event_doc *d;
  if (sc_event_parse(json, len, &d) != SC_OK) return 0;
  const sc_event *ev = sc_event_doc_event(d);
  int stop = 0;
  if (strcmp(ev->task_id, w->task) == 0 && ev->seq >= w->expected) {
    if (ev->seq >= w->upto) {
      stop = 1; /* the ring and the live stream hold the rest */
    } else {
      bool ok = true;
      if (ev->seq > w->expected) {
        size_t n;
        char *gap = gap_text(w->task, w->expected, ev->seq, true, &n);
        ok = gap != NULL && work_append(w, gap, n);
        free(gap);
      }
      if (ok && sc__sock_filter_match(&w->filter, ev->task_id, ev->tenant_id, ev->type))
        ok = work_append(w, json, len) && work_append(w, "\n", 1);
      w->kept++;
      if (!ok) {
        w->nomem = true;
        stop = 1;
      }
      w->expected = ev->seq + 1;
    }
  }
  sc_event_doc_free(d);
  return stop;
}

static void replay_read(uv_work_t *req) {
  sc__sock_replay *w = req->data;
  w->hit = false;
  w->kept = 0;
  if (w->cur_log == NULL && sc_jsonl_cursor_open(w->log_path, &w->cur_log) != SC_OK) {
    w->done = true; /* a log that cannot be read holds nothing more: the gap line says so */
    return;
  }
  bool at_end = false;
  int rc = sc_jsonl_cursor_read(w->cur_log, REPLAY_PIECE, replay_line, w, &at_end);
  if (rc == 1 && !w->nomem && !atomic_load(&w->cancel))
    w->hit = true;
  else if (rc != SC_OK || at_end)
    w->done = true; /* the end of the log, or a line that does not verify: nothing more */
}

static void chunks_free(sc__sock_replay *w) {
  sc__queue *q;
  while ((q = sc__queue_head(&w->chunks)) != NULL) {
    sc__queue_remove(q);
    sc__sock_chunk_unref(w->s, sc__queue_data(q, sc__sock_chunk, pool));
  }
  w->cur = NULL;
}

static void replay_free(sc__sock_replay *w) {
  chunks_free(w);
  if (sc__queue_linked(&w->node)) sc__queue_remove(&w->node);
  sc_jsonl_cursor_close(w->cur_log);
  free(w->log_path);
  free(w->task);
  free(w->needle);
  sc__sock_filter_free(&w->filter);
  free(w);
}

static bool plain_id(const char *id) {
  for (const unsigned char *p = (const unsigned char *)id; *p; p++)
    if (*p < 0x20 || *p == '"' || *p == '\\' || *p >= 0x80) return false;
  return true;
}

/* The first seq of task the ring or the live stream delivers from now on; UINT64_MAX when the
 * server knows nothing of the task. */
static uint64_t ring_first(sc_socket *s, const char *task) {
  for (uint64_t pos = s->ring_pos - s->ring_n; pos < s->ring_pos; pos++)
    if (strcmp(s->ring[pos % s->ring_cap].task->id, task) == 0)
      return s->ring[pos % s->ring_cap].seq;
  sc__sock_task_rec *rec = sc__sock_task_find(s, task);
  return rec ? rec->last_seq + 1 : UINT64_MAX;
}

/* The seam: the log gave every event from `from` to before `expected`; the ring gives the rest,
 * and the live stream carries on from there, so nothing is missed or sent twice. What neither
 * holds is said in a replay-gap line (none after the log's events of a task the server never
 * saw: the log holds all there is of it). */
static void replay_seam(sc__sock_client *c, const char *task, uint64_t from, uint64_t expected) {
  sc_socket *s = c->server;
  uint64_t upto = ring_first(s, task);
  if (expected < upto && !(upto == UINT64_MAX && expected > from))
    gap_line(c, task, expected, upto, upto != UINT64_MAX);
  if (c->state == SC__SOCK_REPLAYING) c->state = SC__SOCK_STREAM;
  for (uint64_t pos = s->ring_pos - s->ring_n; pos < s->ring_pos && c->state == SC__SOCK_STREAM;
       pos++) {
    const sc__sock_ring_entry *r = &s->ring[pos % s->ring_cap];
    if (r->seq >= expected && strcmp(r->task->id, task) == 0 &&
        sc__sock_filter_match(&c->filter, r->task->id, r->task->tenant, r->type))
      sc__sock_client_send_seg(c, &r->line, true);
  }
}

static void replay_done(uv_work_t *req, int status);

/* Starts the next waiting replay's piece when none is on the pool. */
static void replay_pump(sc_socket *s) {
  sc__queue *q;
  while (s->replays == 0 && (q = sc__queue_head(&s->replay_wait)) != NULL) {
    sc__queue_remove(q);
    sc__queue_init(q);
    sc__sock_replay *w = sc__queue_data(q, sc__sock_replay, node);
    if (uv_queue_work(s->loop, &w->req, replay_read, replay_done) == 0) {
      s->replays++;
      w->running = true;
      return;
    }
    sc__sock_client *c = w->c; /* cannot happen with a live loop; said all the same */
    c->replay = NULL;
    replay_free(w);
    sc__sock_client_error_reply(c, "SC_EIO", "the log could not be read", NULL);
    sc__sock_client_close_after_flush(c);
  }
}

/* Another piece, in its turn, or later when the client has too much queued still. */
static void replay_again(sc__sock_replay *w) {
  if (w->c->queued > REPLAY_AHEAD) {
    w->parked = true;
    return;
  }
  w->parked = false;
  sc__queue_insert_tail(&w->s->replay_wait, &w->node);
  replay_pump(w->s);
}

static void replay_done(uv_work_t *req, int status) {
  (void)status;
  sc__sock_replay *w = req->data;
  sc_socket *s = w->s;
  sc__sock_client *c = w->c;
  s->replays--;
  if (c == NULL) {
    replay_free(w);
    replay_pump(s);
    return;
  }
  sc__queue *q;
  sc__queue_foreach(q, &w->chunks) {
    sc__sock_chunk *ch = sc__queue_data(q, sc__sock_chunk, pool);
    sc__sock_seg seg = {ch, 0, ch->len};
    if (ch->len > 0 && !sc__sock_client_send_seg(c, &seg, true)) break;
  }
  chunks_free(w);
  w->running = false;
  if (w->c == NULL) { /* dropped while queueing: the close detached it */
    replay_free(w);
  } else if (w->nomem) {
    c->replay = NULL;
    replay_free(w);
    sc__sock_client_error_reply(c, "SC_ENOMEM", "out of memory while replaying the log", NULL);
    sc__sock_client_close_after_flush(c);
  } else if (!w->hit && !w->done) {
    replay_again(w); /* the piece ended: the next one in its turn */
  } else {
    /* The ring may have moved past events during the read: what it no longer holds is read on
     * from the log, up to what it holds now, while that makes progress (the piece stopped at an
     * event the ring held then, or the log grew). */
    uint64_t upto = ring_first(s, w->task);
    if (upto != UINT64_MAX && w->expected < upto && (upto > w->upto || (w->done && w->kept > 0))) {
      w->upto = upto;
      w->done = false;
      replay_again(w);
    } else {
      c->replay = NULL;
      replay_seam(c, w->task, w->from, w->expected);
      replay_free(w);
    }
  }
  replay_pump(s);
}

void sc__sock_replay_drained(sc__sock_client *c) {
  sc__sock_replay *w = c->replay;
  if (w != NULL && w->parked && c->queued <= REPLAY_AHEAD / 2) replay_again(w);
}

void sc__sock_replay_detach(sc__sock_client *c) {
  sc__sock_replay *w = c->replay;
  if (w == NULL) return;
  c->replay = NULL;
  if (w->running) { /* the piece on the pool stops at its next line; its callback frees it */
    w->c = NULL;
    atomic_store(&w->cancel, true);
  } else {
    replay_free(w);
  }
}

static bool filter_copy(sc__sock_filter *to, const sc__sock_filter *from) {
  memset(to, 0, sizeof(*to));
  to->from_seq = from->from_seq;
  if ((from->tenant && (to->tenant = strdup(from->tenant)) == NULL) ||
      (from->task && (to->task = strdup(from->task)) == NULL))
    return false;
  if (from->ntypes && (to->types = calloc(from->ntypes, sizeof(*to->types))) == NULL) return false;
  for (; to->ntypes < from->ntypes; to->ntypes++)
    if ((to->types[to->ntypes] = strdup(from->types[to->ntypes])) == NULL) return false;
  return true;
}

/* The task's events from seq `from`: from the log (on the thread pool) what the ring no longer
 * holds, then the ring. */
static void replay(sc__sock_client *c, const char *task, uint64_t from) {
  sc_socket *s = c->server;
  uint64_t upto = ring_first(s, task);
  if (from >= upto || s->log_path == NULL) {
    replay_seam(c, task, from, from);
    return;
  }
  sc__sock_replay *w = calloc(1, sizeof(*w));
  bool ok = w != NULL;
  if (ok) {
    sc__queue_init(&w->chunks);
    sc__queue_init(&w->node);
    atomic_init(&w->cancel, false);
    w->s = s;
    w->c = c;
    w->from = w->expected = from;
    w->upto = upto;
    w->req.data = w;
    ok = (w->log_path = strdup(s->log_path)) != NULL && (w->task = strdup(task)) != NULL &&
         filter_copy(&w->filter, &c->filter) &&
         (!plain_id(task) || asprintf(&w->needle, "\"taskid\":\"%s\"", task) >= 0);
    if (!plain_id(task) || !ok) w->needle = NULL;
  }
  if (ok) {
    c->replay = w;
    c->state = SC__SOCK_REPLAYING;
    sc__queue_insert_tail(&s->replay_wait, &w->node);
    replay_pump(s);
    return;
  }
  if (w != NULL) replay_free(w);
  sc__sock_client_error_reply(c, "SC_ENOMEM", "out of memory", NULL);
  sc__sock_client_close_after_flush(c);
}

/* ---- subscribe ---- */

static bool set_filter(sc__sock_client *c, const sc__sock_request *r) {
  sc__sock_filter *f = &c->filter;
  if ((r->tenant && (f->tenant = strdup(r->tenant)) == NULL) ||
      (r->task && (f->task = strdup(r->task)) == NULL))
    return false;
  size_t n = (size_t)cJSON_GetArraySize(r->types);
  if (n > 0 && (f->types = calloc(n, sizeof(*f->types))) == NULL) return false;
  for (const cJSON *t = r->types ? r->types->child : NULL; t; t = t->next) {
    const char *v = t->valuestring;
    if (strncmp(v, "stagecoach.", 11) == 0) v += 11;
    if ((f->types[f->ntypes] = strdup(v)) == NULL) return false;
    f->ntypes++;
  }
  return true;
}

static void subscribe(sc__sock_client *c, const sc__sock_request *r) {
  sc_socket *s = c->server;
  if (c->state != SC__SOCK_WAITING) {
    sc__sock_client_error_reply(
        c, "SC_EINVAL",
        "subscribe must be the first line (a connection that sent an op, or "
        "that already streams, keeps what it has)",
        r->id);
    return;
  }
  if (s->have_tokens) {
    const sc__sock_token *t = sc__sock_tokens_find(&s->tokens, r->token);
    if (t == NULL || !(t->roles & SC__SOCK_ROLE_VIEWER)) {
      unauthorized(c, t ? "this token has no viewer role" : "a valid token is needed to read",
                   r->id);
      sc__sock_client_close_after_flush(c);
      return;
    }
    c->roles = t->roles;
  }
  if (!set_filter(c, r)) {
    sc__sock_client_error_reply(c, "SC_ENOMEM", "out of memory", r->id);
    sc__sock_client_close_after_flush(c);
    return;
  }
  c->state = SC__SOCK_STREAM;
  if (r->has_from_seq) c->filter.from_seq = r->from_seq; /* the live stream starts there too */
  if (r->has_from_seq)
    replay(c, r->task, r->from_seq);
  else
    deliver_since_connect(c);
}

void sc__sock_start_unfiltered(sc__sock_client *c) {
  if (c->server->have_tokens) {
    unauthorized(c, "this server needs a token to read: send {\"subscribe\":{\"token\":\"...\"}}",
                 NULL);
    sc__sock_client_close_after_flush(c);
    return;
  }
  c->state = SC__SOCK_STREAM;
  deliver_since_connect(c);
}

/* ---- control ---- */

static cJSON *task_json(sc_socket *s, const char *id) {
  sc_task *t = sc_engine_find_task(s->e, id);
  sc__sock_task_rec *rec = sc__sock_task_find(s, id);
  if (t == NULL && rec == NULL) return NULL;
  cJSON *o = cJSON_CreateObject();
  if (o == NULL) return NULL;
  cJSON_AddStringToObject(o, "task", id);
  const char *tenant = t ? sc_task_tenant(t) : rec->tenant;
  if (tenant) cJSON_AddStringToObject(o, "tenant", tenant);
  cJSON_AddStringToObject(o, "status",
                          sc_task_status_name(t ? sc_task_get_status(t) : rec->status));
  if (rec && rec->stage) cJSON_AddStringToObject(o, "stage", rec->stage);
  if (t) {
    cJSON_AddNumberToObject(o, "index", sc_task_stage_index(t));
    cJSON_AddNumberToObject(o, "stages", (double)sc_task_stage_count(t));
    cJSON_AddNumberToObject(o, "epoch", (double)sc_task_epoch(t));
    cJSON_AddNumberToObject(o, "retry_count", sc_task_retry_count(t));
  } else if (rec->stage_index >= 0) {
    cJSON_AddNumberToObject(o, "index", rec->stage_index);
  }
  if (rec) cJSON_AddNumberToObject(o, "seq", (double)rec->last_seq);
  cJSON_AddBoolToObject(o, "held", t != NULL);
  return o;
}

static cJSON *ok_reply(sc__sock_op op) {
  cJSON *o = cJSON_CreateObject();
  if (o == NULL) return NULL;
  cJSON_AddTrueToObject(o, "ok");
  cJSON_AddStringToObject(o, "op", sc__sock_op_name(op));
  return o;
}

static void op_pending(sc__sock_client *c, const sc__sock_request *r) {
  sc_socket *s = c->server;
  size_t n = sc_engine_pending_approvals(s->e, NULL, 0);
  sc_pending_approval *v = n ? calloc(n, sizeof(*v)) : NULL;
  if (n && v == NULL) {
    sc__sock_client_error_reply(c, "SC_ENOMEM", "out of memory", r->id);
    return;
  }
  n = sc_engine_pending_approvals(s->e, v, n);
  cJSON *o = ok_reply(r->op), *list = cJSON_AddArrayToObject(o, "pending");
  for (size_t i = 0; i < n && list; i++) {
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "task", v[i].task_id);
    if (v[i].tenant_id) cJSON_AddStringToObject(p, "tenant", v[i].tenant_id);
    cJSON_AddStringToObject(p, "stage", v[i].stage);
    cJSON_AddNumberToObject(p, "index", v[i].stage_index);
    cJSON_AddStringToObject(p, "reason", v[i].reason ? v[i].reason : "policy");
    cJSON_AddNumberToObject(p, "approvals", v[i].approvals);
    cJSON_AddNumberToObject(p, "approvers_needed", v[i].approvers_needed);
    cJSON_AddNumberToObject(p, "requested_ms", (double)(v[i].requested_ns / 1000000));
    if (v[i].deadline_ns)
      cJSON_AddNumberToObject(p, "deadline_ms", (double)(v[i].deadline_ns / 1000000));
    cJSON_AddItemToArray(list, p);
  }
  free(v);
  sc__sock_client_reply(c, o, r->id);
}

static void op_status(sc__sock_client *c, const sc__sock_request *r) {
  sc_socket *s = c->server;
  if (r->task) {
    cJSON *t = task_json(s, r->task);
    if (t == NULL) {
      char msg[400];
      snprintf(msg, sizeof(msg),
               "no task '%.200s': not held by the engine, and not among the tasks this server "
               "remembers (the last %zu finished)",
               r->task, s->o.max_finished_tasks);
      sc__sock_client_error_reply(c, "SC_ENOTFOUND", msg, r->id);
      return;
    }
    cJSON *o = ok_reply(r->op);
    cJSON_AddItemToObject(o, "task", t);
    sc__sock_client_reply(c, o, r->id);
    return;
  }
  cJSON *o = ok_reply(r->op), *list = cJSON_AddArrayToObject(o, "tasks");
  sc__queue *q;
  for (q = s->all.prev; q != &s->all && list; q = q->prev) /* newest first */
    cJSON_AddItemToArray(list, task_json(s, sc__queue_data(q, sc__sock_task_rec, all)->id));
  sc__sock_client_reply(c, o, r->id);
}

static void op_task(sc__sock_client *c, const sc__sock_request *r, const sc__sock_token *who) {
  sc_socket *s = c->server;
  sc_task *t = sc_engine_find_task(s->e, r->task);
  int rc;
  char reason[200];
  if (t == NULL) {
    rc = sc_error_set(SC_ENOTFOUND, "no task '%.200s' held by the engine (finished or unknown)",
                      r->task);
  } else {
    switch (r->op) {
      case SC__SOCK_OP_APPROVE: rc = sc_task_approve(t, r->stage, who->name, r->comment); break;
      case SC__SOCK_OP_REJECT: rc = sc_task_reject(t, r->stage, who->name, r->comment); break;
      case SC__SOCK_OP_PAUSE: rc = sc_task_pause(t); break;
      case SC__SOCK_OP_RESUME: rc = sc_task_resume(t); break;
      case SC__SOCK_OP_CANCEL:
        snprintf(reason, sizeof(reason), "%s", r->reason ? r->reason : "");
        if (!r->reason) snprintf(reason, sizeof(reason), "cancelled by %.100s", who->name);
        rc = sc_task_cancel(t, reason);
        break;
      case SC__SOCK_OP_RETRY: rc = sc_task_retry(t, r->from_stage, r->reset_context); break;
      case SC__SOCK_OP_ROLLBACK: rc = sc_task_rollback(t, r->strategy); break;
      default: rc = sc_error_set(SC_EINVAL, "op %s takes no task action", sc__sock_op_name(r->op));
    }
  }
  if (rc != SC_OK) {
    sc__sock_client_error_reply(c, sc_err_name(rc), sc_error_message(), r->id);
    return;
  }
  cJSON *o = ok_reply(r->op);
  cJSON_AddStringToObject(o, "task", r->task);
  t = sc_engine_find_task(s->e, r->task);
  if (t) cJSON_AddStringToObject(o, "status", sc_task_status_name(sc_task_get_status(t)));
  if (r->op == SC__SOCK_OP_APPROVE || r->op == SC__SOCK_OP_REJECT)
    cJSON_AddStringToObject(o, "reviewer", who->name);
  sc__sock_client_reply(c, o, r->id);
}

static void control(sc__sock_client *c, const sc__sock_request *r) {
  sc_socket *s = c->server;
  if (c->state == SC__SOCK_WAITING)
    c->state = SC__SOCK_CONTROL; /* a control connection gets no events */
  if (!s->have_tokens) {
    unauthorized(c, "this server has no token file: control is off", r->id);
    return;
  }
  const sc__sock_token *who = sc__sock_tokens_find(&s->tokens, r->token);
  if (who == NULL) {
    unauthorized(c, r->token ? "unknown token" : "\"token\" is required", r->id);
    return;
  }
  unsigned need = sc__sock_op_role(r->op);
  if (!(who->roles & need)) {
    char msg[200];
    snprintf(msg, sizeof(msg), "token '%.64s' may not %s: it needs the %s role", who->name,
             sc__sock_op_name(r->op),
             need == SC__SOCK_ROLE_APPROVER   ? "approver"
             : need == SC__SOCK_ROLE_OPERATOR ? "operator"
                                              : "viewer");
    unauthorized(c, msg, r->id);
    return;
  }
  switch (r->op) {
    case SC__SOCK_OP_PENDING: op_pending(c, r); break;
    case SC__SOCK_OP_STATUS: op_status(c, r); break;
    default: op_task(c, r, who);
  }
}

void sc__sock_handle_line(sc__sock_client *c, const char *line, size_t len) {
  if (c->replies >= c->server->o.max_pending) {
    /* It sends and does not read its replies: no more work for it. */
    sc__sock_client_send(c, TOO_MANY_PENDING, sizeof(TOO_MANY_PENDING) - 1, true);
    sc__sock_client_close_after_flush(c);
    return;
  }
  sc__sock_request r;
  char why[256];
  int rc = sc__sock_request_parse(line, len, &r, why, sizeof(why));
  if (rc != SC_OK) {
    sc__sock_client_error_reply(c, sc_err_name(rc), why, r.id);
    sc__sock_request_free(&r);
    return;
  }
  if (r.kind == SC__SOCK_SUBSCRIBE)
    subscribe(c, &r);
  else
    control(c, &r);
  sc__sock_request_free(&r);
}
