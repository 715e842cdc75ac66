/* What a client's lines do: the subscribe line (authentication, the filter, the replay from the
 * ring or the log and the seam to the live stream) and the control ops, each answered by exactly
 * one reply line. */
#define _GNU_SOURCE /* memmem, asprintf */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "socket_int.h"

#include <stagecoach/jsonl.h>

#define TOO_MANY_PENDING "{\"error\":\"too-many-pending\"}\n"

static void send_json_line(sc__sock_client *c, cJSON *o) {
  char *text = o ? cJSON_PrintUnformatted(o) : NULL;
  cJSON_Delete(o);
  if (text == NULL) return;
  size_t len = strlen(text);
  text[len] = '\n';
  sc__sock_client_send(c, text, len + 1, true);
  free(text);
}

static void unauthorized(sc__sock_client *c, const char *message, const cJSON *id) {
  sc__sock_client_error_reply(c, "unauthorized", message, id);
}

static void gap_line(sc__sock_client *c, const char *task, uint64_t from, uint64_t first_available,
                     bool known) {
  cJSON *o = cJSON_CreateObject();
  if (o == NULL) return;
  cJSON_AddStringToObject(o, "error", "replay-gap");
  cJSON_AddStringToObject(o, "task", task);
  cJSON_AddNumberToObject(o, "from_seq", (double)from);
  if (known)
    cJSON_AddNumberToObject(o, "first_available", (double)first_available);
  else
    cJSON_AddNullToObject(o, "first_available");
  send_json_line(c, o);
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
      sc__sock_client_send(c, r->line, r->len, true);
  }
}

/* ---- replay ---- */

typedef struct replay_state {
  sc__sock_client *c;
  const char *task;
  const char *needle; /* "taskid":"ID", to skip other tasks' lines without parsing them */
  uint64_t expected, upto;
  bool any;
} replay_state;

static int replay_line(const char *json, size_t len, void *udata) {
  replay_state *st = udata;
  if (st->needle && memmem(json, len, st->needle, strlen(st->needle)) == NULL) return 0;
  sc_event_doc *d;
  if (sc_event_parse(json, len, &d) != SC_OK) return 0;
  const sc_event *ev = sc_event_doc_event(d);
  int stop = 0;
  if (strcmp(ev->task_id, st->task) == 0 && ev->seq >= st->expected) {
    if (ev->seq >= st->upto) {
      stop = 1; /* the ring and the live stream hold the rest */
    } else {
      if (ev->seq > st->expected) gap_line(st->c, st->task, st->expected, ev->seq, true);
      if (sc__sock_filter_match(&st->c->filter, ev->task_id, ev->tenant_id, ev->type)) {
        sc__sock_client_send(st->c, json, len, true);
        sc__sock_client_send(st->c, "\n", 1, true);
      }
      st->expected = ev->seq + 1;
      st->any = true;
    }
  }
  sc_event_doc_free(d);
  return stop;
}

static bool plain_id(const char *id) {
  for (const unsigned char *p = (const unsigned char *)id; *p; p++)
    if (*p < 0x20 || *p == '"' || *p == '\\' || *p >= 0x80) return false;
  return true;
}

/* The task's events from seq `from`: the log for what the ring no longer holds, then the ring;
 * the live stream carries on from there, so nothing is missed or sent twice at the seam. What
 * neither holds is said in a replay-gap line. */
static void replay(sc__sock_client *c, const char *task, uint64_t from) {
  sc_socket *s = c->server;
  sc__sock_task_rec *rec = sc__sock_task_find(s, task);
  uint64_t upto = UINT64_MAX; /* the first seq the ring or the live stream will deliver */
  if (rec != NULL) {
    upto = rec->last_seq + 1;
    for (uint64_t pos = s->ring_pos - s->ring_n; pos < s->ring_pos; pos++)
      if (s->ring[pos % s->ring_cap].task == rec) {
        upto = s->ring[pos % s->ring_cap].seq;
        break;
      }
  }
  uint64_t expected = from;
  if (from < upto && s->log_path != NULL) {
    char *needle = NULL;
    if (plain_id(task) && asprintf(&needle, "\"taskid\":\"%s\"", task) < 0) needle = NULL;
    replay_state st = {c, task, needle, from, upto, false};
    int rc = sc_jsonl_read_events(s->log_path, replay_line, &st);
    free(needle);
    (void)rc; /* a log that cannot be read holds nothing more: the gap line says so */
    expected = st.expected;
  }
  if (expected < upto) gap_line(c, task, expected, upto, upto != UINT64_MAX);
  if (rec == NULL) return;
  for (uint64_t pos = s->ring_pos - s->ring_n; pos < s->ring_pos && c->state == SC__SOCK_STREAM;
       pos++) {
    const sc__sock_ring_entry *r = &s->ring[pos % s->ring_cap];
    if (r->task == rec && r->seq >= from &&
        sc__sock_filter_match(&c->filter, rec->id, rec->tenant, r->type))
      sc__sock_client_send(c, r->line, r->len, true);
  }
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
      char msg[300];
      snprintf(msg, sizeof(msg), "no task '%.200s' (neither running here nor seen by this server)",
               r->task);
      sc__sock_client_error_reply(c, "SC_ENOTFOUND", msg, r->id);
      return;
    }
    cJSON *o = ok_reply(r->op);
    cJSON_AddItemToObject(o, "task", t);
    sc__sock_client_reply(c, o, r->id);
    return;
  }
  cJSON *o = ok_reply(r->op), *list = cJSON_AddArrayToObject(o, "tasks");
  for (sc__sock_task_rec *t = s->all; t && list; t = t->all)
    cJSON_AddItemToArray(list, task_json(s, t->id));
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
