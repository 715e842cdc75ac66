/* The task API: submission, the control operations and the accessors. Each control operation
 * checks its precondition now (and refuses with SC_ETRANSITION and a message naming the task's
 * status), records the request and queues the task; the task's next step applies it on the
 * loop, so events are never emitted from inside another event of the same task. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"

/* task.created: the fingerprint and the configs, so that a log alone is enough to recover; for a
 * recovered task also the task it carries on and the point it recovers to, so that a log ending
 * right after this event recovers to that same point. */
void sc__emit_created(sc_task *t, const sc_recovery_request *req, const char *mode,
                      int32_t start_index) {
  cJSON *data = NULL;
  if (sc__bus_wants(t->e->bus, SC_EV_TASK_CREATED) && (data = cJSON_CreateObject()) != NULL) {
    sc__json_put(data, "fingerprint", cJSON_CreateStringReference(t->plan->fingerprint));
    cJSON_AddNumberToObject(data, "stages", (double)t->plan->nstages);
    bool context = t->context && sc__task_refresh_digest(t) == SC_OK;
    if (req != NULL) {
      if (req->recovered_from)
        sc__json_put(data, "recovered_from", cJSON_CreateStringReference(req->recovered_from));
      cJSON *point = cJSON_CreateObject();
      if (point != NULL) {
        sc__json_put(point, "mode", cJSON_CreateStringReference(mode));
        cJSON_AddNumberToObject(point, "start_index", start_index);
        sc__json_put(point, "last_completed_stage",
                     req->last_completed_stage
                         ? cJSON_CreateStringReference(req->last_completed_stage)
                         : cJSON_CreateNull());
        if (context) {
          sc__json_put(point, "context", cJSON_CreateObjectReference(t->context->child));
          sc__json_put(point, "digest", cJSON_CreateStringReference(t->digest));
        }
      }
      sc__json_put(data, "recovery", point);
    }
    sc__json_put(data, "config", cJSON_CreateObjectReference(t->plan->config->child));
    if (t->plan->previous_config)
      sc__json_put(data, "previous_config",
                   cJSON_CreateObjectReference(t->plan->previous_config->child));
    if (t->tracestate) sc__json_put(data, "tracestate", cJSON_CreateStringReference(t->tracestate));
    if (t->recovered) {
      /* What the next recovery needs for the idempotency key: the chain's first task, the intent */
      sc__json_put(data, "root_task_id", cJSON_CreateStringReference(t->root_id));
      if (t->intent > 0) cJSON_AddNumberToObject(data, "intent", t->intent);
    }
    if (context && req == NULL) {
      sc__json_put(data, "context", cJSON_CreateObjectReference(t->context->child));
      sc__json_put(data, "digest", cJSON_CreateStringReference(t->digest));
    }
  }
  sc__task_emit(t, SC_EV_TASK_CREATED, NULL, -1, 0, data);
}

int sc_task_submit(sc_engine *e, const sc_task_spec *spec, sc_task **out) {
  if (out) *out = NULL;
  if (e == NULL || spec == NULL) return sc__error(SC_EINVAL, "submit: NULL argument");
  if (spec->version < 1 || spec->version > SC_TASK_SPEC_VERSION)
    return sc__error(SC_EINVAL, "submit: unsupported sc_task_spec version %u", spec->version);
  if (spec->config == NULL) return sc__error(SC_EINVAL, "submit: a task needs a config");
  const cJSON *values[] = {spec->config, spec->previous_config, spec->context};
  const char *names[] = {"config", "previous_config", "context"};
  for (size_t i = 0; i < 3; i++)
    if (sc__json_too_deep(values[i], SC__JSON_MAX_DEPTH))
      return sc__error(SC_EINVAL,
                       "submit: the %s nests deeper than %d levels: it could not be read back "
                       "from a log",
                       names[i], SC__JSON_MAX_DEPTH);
  sc__plan *plan;
  int rc = sc__plan_get(e, spec->config, spec->previous_config, &plan);
  if (rc != SC_OK) return rc;
  sc_task *t;
  if ((rc = sc__task_create(e, spec, plan, &t)) != SC_OK) {
    sc__plan_unref(e, plan);
    return rc;
  }
  sc__emit_created(t, NULL, NULL, 0);
  sc__engine_enqueue(e, t);
  if (out) *out = t;
  return SC_OK;
}

static int refuse(const sc_task *t, const char *op, const char *needs) {
  return sc__error(SC_ETRANSITION, "cannot %s task %s: it is %s (%s)", op, t->id,
                   sc_task_status_name((sc_task_status)t->status), needs);
}

int sc_task_pause(sc_task *t) {
  if (t == NULL) return sc__error(SC_EINVAL, "pause: NULL task");
  switch (t->status) {
    case SC_TASK_RUNNING:
    case SC_TASK_ROLLING_BACK:
    case SC_TASK_AWAITING_APPROVAL:
      t->pause_requested = true;
      sc__engine_enqueue(t->e, t);
      return SC_OK;
    default: return refuse(t, "pause", "pause needs RUNNING, ROLLING_BACK or AWAITING_APPROVAL");
  }
}

int sc_task_resume(sc_task *t) {
  if (t == NULL) return sc__error(SC_EINVAL, "resume: NULL task");
  if (t->status == SC_TASK_PAUSED) {
    int rc = sc__task_reacquire_lost_lock(t);
    if (rc != SC_OK) return rc;
    t->resume_requested = true;
    sc__engine_enqueue(t->e, t);
    return SC_OK;
  }
  if (t->pause_requested && t->pause_reason == NULL) {
    t->pause_requested = false; /* not yet in effect: withdraw it */
    return SC_OK;
  }
  return refuse(t, "resume", "resume needs PAUSED");
}

int sc_task_cancel(sc_task *t, const char *reason) {
  if (t == NULL) return sc__error(SC_EINVAL, "cancel: NULL task");
  if (!sc_transition_allowed((sc_task_status)t->status, SC_TASK_CANCELLED))
    return refuse(t, "cancel",
                  "cancel needs CREATED, PENDING, RUNNING, PAUSED or AWAITING_APPROVAL");
  if (!t->cancel_requested) {
    free(t->cancel_reason);
    t->cancel_reason = reason ? strdup(reason) : NULL;
    t->cancel_requested = true;
  }
  sc__engine_enqueue(t->e, t);
  return SC_OK;
}

static int decide(sc_task *t, const char *stage, const char *reviewer, const char *comment,
                  bool approve) {
  const char *op = approve ? "approve" : "reject";
  if (t == NULL) return sc__error(SC_EINVAL, "%s: NULL task", op);
  if (reviewer == NULL || !*reviewer) return sc__error(SC_EINVAL, "%s: a reviewer is required", op);
  sc__approval_state *a = t->approval;
  if (t->status != SC_TASK_AWAITING_APPROVAL || a == NULL)
    return refuse(t, op, "no approval is pending");
  if (a->decided)
    return sc__error(SC_ETRANSITION, "cannot %s stage '%s' of task %s: its gate was already %s", op,
                     t->run_plan->stages[a->index].name, t->id,
                     a->decided_code == SC_ETIMEDOUT ? "failed by its timeout" : "rejected");
  const char *waiting = t->run_plan->stages[a->index].name;
  if (stage != NULL && strcmp(stage, waiting) != 0)
    return sc__error(SC_ETRANSITION,
                     "cannot %s stage '%s' of task %s: it waits for approval of '%s'", op, stage,
                     t->id, waiting);
  for (uint32_t i = 0; i < a->napproved; i++)
    if (strcmp(a->reviewers[i], reviewer) == 0)
      return sc__error(SC_EINVAL, "%s: %s already approved stage '%s' of task %s", op, reviewer,
                       waiting, t->id);
  for (sc__decision *d = a->decisions; d != NULL; d = d->next)
    if (strcmp(d->reviewer, reviewer) == 0)
      return sc__error(SC_EINVAL, "%s: %s already decided on stage '%s' of task %s", op, reviewer,
                       waiting, t->id);
  sc__decision *d = calloc(1, sizeof(*d));
  if (d == NULL || (d->reviewer = strdup(reviewer)) == NULL ||
      (comment && (d->comment = strdup(comment)) == NULL)) {
    if (d) free(d->reviewer);
    free(d);
    return sc__error(SC_ENOMEM, "%s: out of memory", op);
  }
  d->approve = approve;
  if (a->decisions_tail)
    a->decisions_tail->next = d;
  else
    a->decisions = d;
  a->decisions_tail = d;
  sc__engine_enqueue(t->e, t);
  return SC_OK;
}

int sc_task_approve(sc_task *t, const char *stage, const char *reviewer, const char *comment) {
  return decide(t, stage, reviewer, comment, true);
}

int sc_task_reject(sc_task *t, const char *stage, const char *reviewer, const char *comment) {
  return decide(t, stage, reviewer, comment, false);
}

void sc_task_release(sc_task *t) {
  if (t == NULL) return;
  if (t->status != SC_TASK_FAILED && t->status != SC_TASK_ROLLBACK_FAILED) {
    sc__engine_log(t->e, SC_LOG_WARN, "release: task %s is %s, not FAILED or ROLLBACK_FAILED",
                   t->id, sc_task_status_name((sc_task_status)t->status));
    return;
  }
  t->release_requested = true;
  sc__engine_enqueue(t->e, t);
}

/* ---- accessors ---- */

const char *sc_task_id(const sc_task *t) {
  return t ? t->id : NULL;
}
const char *sc_task_tenant(const sc_task *t) {
  return t ? t->tenant : NULL;
}
sc_task_status sc_task_get_status(const sc_task *t) {
  return t ? (sc_task_status)t->status : SC_TASK_CREATED;
}
const cJSON *sc_task_context(const sc_task *t) {
  return t ? sc__task_context(t) : NULL;
}
const char *sc_task_traceparent(const sc_task *t) {
  return t ? t->traceparent : NULL;
}

const char *sc_task_tracestate(const sc_task *t) {
  return t ? t->tracestate : NULL;
}

const char *sc_task_root_id(const sc_task *t) {
  return t ? t->root_id : NULL;
}

uint32_t sc_task_intent(const sc_task *t) {
  return t ? t->intent : 0;
}

static bool lower_hex(const char *s, size_t n) {
  bool nonzero = false;
  for (size_t i = 0; i < n; i++) {
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
    nonzero = nonzero || s[i] != '0';
  }
  return nonzero;
}

bool sc_traceparent_valid(const char *s) {
  /* "00-" trace-id(32) "-" parent-id(16) "-" flags(2); the flags may be all zero. */
  return s != NULL && strlen(s) == 55 && memcmp(s, "00-", 3) == 0 && lower_hex(s + 3, 32) &&
         s[35] == '-' && lower_hex(s + 36, 16) && s[52] == '-' &&
         (lower_hex(s + 53, 2) || memcmp(s + 53, "00", 2) == 0);
}

unsigned sc_task_retry_count(const sc_task *t) {
  return t ? t->retry_count : 0;
}
int sc_task_stage_index(const sc_task *t) {
  return t ? t->index : -1;
}
size_t sc_task_stage_count(const sc_task *t) {
  return t ? t->run_plan->nstages : 0;
}
uint64_t sc_task_epoch(const sc_task *t) {
  return t ? t->epoch : 0;
}
const char *sc_task_fingerprint(const sc_task *t) {
  return t ? t->plan->fingerprint : NULL;
}
