/* What a client's lines do: the subscribe line (authentication, the filter, the delivery from the
 * ring; the replay from the log is replay.c's) and the control ops, each answered by exactly one
 * reply line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "socket_int.h"

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
    sc__sock_replay_start(c, r->task, r->from_seq);
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
  if (sc__sock_client_replies(c) >= c->server->o.max_pending) {
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
