/* The task API: submission, the control operations and the accessors. Each control operation
 * checks its precondition now (and refuses with SC_ETRANSITION and a message naming the task's
 * status), records the request and queues the task; the task's next step applies it on the
 * loop, so events are never emitted from inside another event of the same task. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"

int sc__check_values(const char *op, const cJSON *config, const cJSON *previous,
                     const cJSON *context) {
  char path[160];
  const char *why = sc__json_unfit(config, path, sizeof(path));
  if (why != NULL)
    return sc__plan_refuse_value(SC_EINVAL, false, path, "%s: it could not be read back from a log",
                                 why);
  if ((why = sc__json_unfit(previous, path, sizeof(path))) != NULL)
    return sc__plan_refuse_value(SC_EINVAL, true, path, "%s: it could not be read back from a log",
                                 why);
  if ((why = sc__json_unfit(context, path, sizeof(path))) != NULL) {
    if (path[0] == '\0')
      return sc__error(SC_EINVAL, "%s: the context %s: it could not be read back from a log", op,
                       why);
    return sc__error(SC_EINVAL, "%s: context: \"%s\" %s: it could not be read back from a log", op,
                     path, why);
  }
  return SC_OK;
}

int sc_task_submit(sc_engine *e, const sc_task_spec *spec, sc_task **out) {
  if (out) *out = NULL;
  sc__plan_error_clear();
  if (e == NULL || spec == NULL) return sc__error(SC_EINVAL, "submit: NULL argument");
  if (spec->version < 1 || spec->version > SC_TASK_SPEC_VERSION)
    return sc__error(SC_EINVAL, "submit: unsupported sc_task_spec version %u", spec->version);
  if (spec->config == NULL)
    return sc__plan_refuse_plan(SC_EINVAL, NULL, "submit: a task needs a config");
  int rc = sc__check_values("submit", spec->config, spec->previous_config, spec->context);
  if (rc != SC_OK) return rc;
  sc__plan *plan;
  rc = sc__plan_get(e, spec->config, spec->previous_config, &plan);
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
  int rc = sc__task_check_held(t, "pause");
  if (rc != SC_OK) return rc;
  switch (t->status) {
    case SC_TASK_RUNNING:
    case SC_TASK_ROLLING_BACK:
    case SC_TASK_AWAITING_APPROVAL: sc__task_request(t, SC__REQUEST_PAUSE, 0, NULL); return SC_OK;
    default: return refuse(t, "pause", "pause needs RUNNING, ROLLING_BACK or AWAITING_APPROVAL");
  }
}

int sc_task_resume(sc_task *t) {
  if (t == NULL) return sc__error(SC_EINVAL, "resume: NULL task");
  int rc = sc__task_check_held(t, "resume");
  if (rc != SC_OK) return rc;
  if (t->status == SC_TASK_PAUSED) {
    if ((rc = sc__task_reacquire_lost_lock(t)) != SC_OK) return rc;
  } else if (!t->pause_requested || sc__task_self_paused(t)) {
    return refuse(t, "resume", "resume needs PAUSED");
  }
  /* PAUSED: resume; otherwise the caller's pause, not yet in effect, is withdrawn. */
  sc__task_request(t, SC__REQUEST_RESUME, 0, NULL);
  return SC_OK;
}

int sc_task_cancel(sc_task *t, const char *reason) {
  if (t == NULL) return sc__error(SC_EINVAL, "cancel: NULL task");
  int rc = sc__task_check_held(t, "cancel");
  if (rc != SC_OK) return rc;
  if (!sc_transition_allowed((sc_task_status)t->status, SC_TASK_CANCELLED))
    return refuse(t, "cancel",
                  "cancel needs CREATED, PENDING, RUNNING, PAUSED or AWAITING_APPROVAL");
  sc__task_request(t, SC__REQUEST_CANCEL, SC_ECANCELLED, reason);
  return SC_OK;
}

static int decide(sc_task *t, const char *stage, const char *reviewer, const char *comment,
                  bool approve) {
  const char *op = approve ? "approve" : "reject";
  if (t == NULL) return sc__error(SC_EINVAL, "%s: NULL task", op);
  int rc = sc__task_check_held(t, op);
  if (rc != SC_OK) return rc;
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
  sc__queue *q;
  sc__queue_foreach(q, &a->decisions) {
    const sc__decision *d = sc__queue_data(q, sc__decision, link);
    if (strcmp(d->reviewer, reviewer) == 0)
      return sc__error(SC_EINVAL, "%s: %s already decided on stage '%s' of task %s", op, reviewer,
                       waiting, t->id);
  }
  sc__decision *d = calloc(1, sizeof(*d));
  if (d == NULL || (d->reviewer = strdup(reviewer)) == NULL ||
      (comment && (d->comment = strdup(comment)) == NULL)) {
    if (d) free(d->reviewer);
    free(d);
    return sc__error(SC_ENOMEM, "%s: out of memory", op);
  }
  d->approve = approve;
  sc__queue_insert_tail(&a->decisions, &d->link);
  sc__engine_enqueue(t->e, t);
  return SC_OK;
}

int sc_task_approve(sc_task *t, const char *stage, const char *reviewer, const char *comment) {
  return decide(t, stage, reviewer, comment, true);
}

int sc_task_reject(sc_task *t, const char *stage, const char *reviewer, const char *comment) {
  return decide(t, stage, reviewer, comment, false);
}

int sc_task_release(sc_task *t) {
  if (t == NULL) return sc__error(SC_EINVAL, "release: NULL task");
  int rc = sc__task_check_held(t, "release");
  if (rc != SC_OK) return rc;
  if (t->status != SC_TASK_FAILED && t->status != SC_TASK_ROLLBACK_FAILED)
    return refuse(t, "release", "release needs FAILED or ROLLBACK_FAILED");
  if (t->retry_requested || t->rollback_requested)
    return sc__error(SC_ETRANSITION, "cannot release task %s: it is %s and a %s was asked for",
                     t->id, sc_task_status_name((sc_task_status)t->status),
                     t->retry_requested ? "retry" : "rollback");
  sc__task_request(t, SC__REQUEST_RELEASE, 0, NULL);
  return SC_OK;
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
  /* {} for a task without context whose engine is gone (a referenced handle): read-only. */
  static const cJSON empty = {.type = cJSON_Object};
  if (t == NULL) return NULL;
  if (t->context == NULL && t->e == NULL) return &empty;
  return sc__task_context(t);
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
