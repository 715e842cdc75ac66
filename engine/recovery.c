/* Restart recovery: rebuild a stopped task from what the caller persisted and carry on, in RETRY
 * (continue after the last completed stage), ROLLBACK (re-run the touched stages with the
 * previous config) or COMPENSATE (undo the touched compensable stages, last first). Every check
 * runs before anything is created, so a refusal leaves no task and no event behind. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"

typedef struct prepared {
  sc__plan *plan;     /* a reference */
  sc__plan *run_plan; /* plan, or its previous plan (borrowed from plan) */
  int32_t start, end; /* stages start .. end run */
  int32_t in_flight;  /* the stage after last_completed_stage; -1 when all completed */
  bool gate;          /* ask approval before the in-flight irreversible stage */
  cJSON *report;      /* the recovery plan */
} prepared;

static cJSON *names(const sc__plan *p, int32_t from, int32_t to) {
  cJSON *a = cJSON_CreateArray();
  for (int32_t i = from; a != NULL && i <= to && i < (int32_t)p->nstages; i++)
    cJSON_AddItemToArray(a, cJSON_CreateString(p->stages[i].name));
  return a;
}

static cJSON *report(const sc_recovery_request *req, const prepared *p) {
  cJSON *r = cJSON_CreateObject();
  if (r == NULL) return NULL;
  bool rollback = req->mode == SC_RECOVER_ROLLBACK, compensate = req->mode == SC_RECOVER_COMPENSATE;
  if (req->recovered_from) cJSON_AddStringToObject(r, "recovered_from", req->recovered_from);
  cJSON_AddStringToObject(r, "mode", rollback ? "rollback" : compensate ? "compensate" : "retry");
  cJSON_AddNumberToObject(r, "start_index", p->start);
  if (req->last_completed_stage)
    cJSON_AddStringToObject(r, "last_completed_stage", req->last_completed_stage);
  else
    cJSON_AddNullToObject(r, "last_completed_stage");
  sc__json_put(r, "skipped",
               rollback || compensate ? cJSON_CreateArray() : names(p->plan, 0, p->start - 1));
  sc__json_put(r, "rerun", compensate ? cJSON_CreateArray() : names(p->run_plan, p->start, p->end));
  cJSON *undone = cJSON_CreateArray();
  for (int32_t i = p->start; compensate && undone != NULL && i >= 0; i--)
    if (p->plan->stages[i].effect == SC_EFFECT_COMPENSABLE)
      cJSON_AddItemToArray(undone, cJSON_CreateString(p->plan->stages[i].name));
  sc__json_put(r, "compensated", undone);
  if (p->in_flight >= 0) {
    const sc__stage *st = &p->plan->stages[p->in_flight];
    cJSON *f = cJSON_AddObjectToObject(r, "in_flight");
    cJSON_AddStringToObject(f, "stage", st->name);
    cJSON_AddNumberToObject(f, "index", p->in_flight);
    cJSON_AddStringToObject(f, "effect", sc__effect_name((int)st->effect));
  } else {
    cJSON_AddNullToObject(r, "in_flight");
  }
  cJSON_AddBoolToObject(r, "approval_required", p->gate);
  cJSON_AddStringToObject(r, "fingerprint", p->plan->fingerprint);
  if (rollback) cJSON_AddStringToObject(r, "rollback_fingerprint", p->run_plan->fingerprint);
  cJSON_AddNumberToObject(r, "epoch", (double)(req->epoch + 1));
  return r;
}

static int prepare(sc_engine *e, const sc_recovery_request *req, prepared *p) {
  memset(p, 0, sizeof(*p));
  sc__plan_error_clear();
  if (e == NULL || req == NULL) return sc__error(SC_EINVAL, "recover: NULL argument");
  if (req->version < 1 || req->version > SC_RECOVERY_REQUEST_VERSION)
    return sc__error(SC_EINVAL, "recover: unsupported sc_recovery_request version %u",
                     req->version);
  if (req->mode != SC_RECOVER_RETRY && req->mode != SC_RECOVER_ROLLBACK &&
      req->mode != SC_RECOVER_COMPENSATE)
    return sc__error(SC_EINVAL, "recover: unknown mode %d", (int)req->mode);
  if (!cJSON_IsObject(req->config))
    return sc__plan_refuse_plan(SC_EINVAL, NULL, "recover: config must be a JSON object");
  if (req->mode == SC_RECOVER_ROLLBACK && !cJSON_IsObject(req->previous_config)) {
    sc__plan_refuse_plan(SC_EINVAL, NULL,
                         "recover: ROLLBACK needs the previous_config to roll back to");
    sc__plan_error_mark_previous();
    return SC_EINVAL;
  }
  if (req->context != NULL && !cJSON_IsObject(req->context))
    return sc__error(SC_EINVAL, "recover: the context must be a JSON object");
  int rc = sc__check_values("recover", req->config, req->previous_config, req->context);
  if (rc != SC_OK) return rc;
  rc = sc__plan_get(e, req->config, req->previous_config, &p->plan);
  if (rc != SC_OK) return rc;
  char stages[512];
  sc__plan_stage_list(p->plan, stages, sizeof(stages));
  const char *plan_name = req->plan_id ? req->plan_id : "(unnamed)";
  if (req->plan_fingerprint && strcmp(req->plan_fingerprint, p->plan->fingerprint) != 0) {
    rc = sc__plan_refuse_plan(
        SC_EPLAN_MISMATCH, NULL,
        "plan '%s' changed: the stopped task ran %s, the config now gives %s (stages: %s)",
        plan_name, req->plan_fingerprint, p->plan->fingerprint, stages);
    goto fail;
  }
  int32_t last = -1;
  if (req->last_completed_stage != NULL &&
      (last = sc__stage_index(p->plan, req->last_completed_stage)) < 0) {
    rc = sc__plan_refuse_plan(SC_EUNKNOWN_STAGE, req->last_completed_stage,
                              "unknown stage '%s' in plan '%s' (stages: %s)",
                              req->last_completed_stage, plan_name, stages);
    goto fail;
  }
  if (req->context_digest != NULL) {
    char digest[72];
    if ((rc = sc__digest(e->sha, &e->scratch, req->context, digest)) != SC_OK) goto fail;
    if (strcmp(digest, req->context_digest) != 0) {
      rc = sc__error(SC_ECORRUPT,
                     "context digest mismatch after stage '%s': recorded %s, computed %s "
                     "(plan '%s', stages: %s)",
                     req->last_completed_stage ? req->last_completed_stage : "(none)",
                     req->context_digest, digest, plan_name, stages);
      goto fail;
    }
  }
  int32_t n = (int32_t)p->plan->nstages;
  p->in_flight = last + 1 < n ? last + 1 : -1;
  if (req->mode == SC_RECOVER_RETRY) {
    p->run_plan = p->plan;
    p->start = last + 1;
    p->end = n - 1;
    p->gate = p->in_flight >= 0 && p->plan->stages[p->in_flight].effect == SC_EFFECT_IRREVERSIBLE;
  } else if (req->mode == SC_RECOVER_COMPENSATE) {
    /* Backwards from the stage in flight (it may have done part of its work) to the first. */
    p->run_plan = p->plan;
    p->start = p->in_flight >= 0 ? p->in_flight : n - 1;
    p->end = 0;
  } else {
    if ((rc = sc__plan_previous(e, p->plan, &p->run_plan)) != SC_OK) goto fail;
    p->start = 0;
    /* The stages the stopped task touched: up to and including the one in flight. */
    int32_t touched = p->in_flight >= 0 ? p->in_flight : n - 1;
    p->end = touched < (int32_t)p->run_plan->nstages ? touched : (int32_t)p->run_plan->nstages - 1;
  }
  if ((p->report = report(req, p)) == NULL) {
    rc = sc__error(SC_ENOMEM, "recover: out of memory");
    goto fail;
  }
  return SC_OK;
fail:
  sc__plan_unref(e, p->plan);
  p->plan = NULL;
  return rc;
}

int sc_recovery_plan(sc_engine *e, const sc_recovery_request *req, cJSON **plan_out) {
  if (plan_out) *plan_out = NULL;
  if (plan_out == NULL) return sc__error(SC_EINVAL, "recovery_plan: NULL out");
  prepared p;
  int rc = prepare(e, req, &p);
  if (rc != SC_OK) return rc;
  sc__plan_unref(e, p.plan);
  *plan_out = p.report;
  return SC_OK;
}

int sc_recover_from_restart(sc_engine *e, const sc_recovery_request *req, sc_task **out) {
  if (out) *out = NULL;
  prepared p;
  int rc = prepare(e, req, &p);
  if (rc != SC_OK) return rc;
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.task_id = req->task_id;
  spec.tenant_id = req->tenant_id;
  spec.plan_id = req->plan_id;
  spec.context = req->context;
  spec.traceparent = req->traceparent;
  spec.tracestate = req->version >= 2 ? req->tracestate : NULL;
  sc_task *t;
  if ((rc = sc__task_create(e, &spec, p.plan, &t)) != SC_OK) {
    sc__plan_unref(e, p.plan);
    cJSON_Delete(p.report);
    return rc;
  }
  t->epoch = req->epoch + 1;
  t->recovered = true;
  const char *root =
      req->version >= 2 && req->root_task_id ? req->root_task_id : req->recovered_from;
  if (req->version >= 2) t->intent = req->intent;
  if (root != NULL && (t->root_id = strdup(root)) == NULL) {
    t->root_id = t->id; /* not emitted yet: the task can still go */
    sc__task_let_go(t);
    cJSON_Delete(p.report);
    return sc__error(SC_ENOMEM, "recover: out of memory");
  }
  if (root == NULL) t->root_id = t->id;
  t->rollback = req->mode != SC_RECOVER_RETRY;
  t->compensating = req->mode == SC_RECOVER_COMPENSATE;
  t->run_plan = p.run_plan;
  t->index = p.start;
  t->end_index = p.end;
  t->gate_index = p.gate ? p.in_flight : -1;
  sc__emit_created(t, req,
                   req->mode == SC_RECOVER_ROLLBACK     ? "rollback"
                   : req->mode == SC_RECOVER_COMPENSATE ? "compensate"
                                                        : "retry",
                   p.start);
  sc__task_emit(t, SC_EV_TASK_RECOVERED, NULL, -1, 0, p.report);
  sc__engine_enqueue(e, t);
  if (out) *out = t;
  return SC_OK;
}
