/* Retry and rollback of a FAILED task: the checks when the caller asks, and the status change and
 * event when the task's next step applies the request. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"

static int busy(const sc_task *t, const char *op) {
  sc_task *holder = t->tenant ? sc__map_get(&t->e->tenants, t->tenant) : NULL;
  if (holder != NULL && holder != t)
    return sc__error(SC_EBUSY, "cannot %s task %s: tenant '%s' is held by task %s", op, t->id,
                     t->tenant, holder->id);
  return sc__error(SC_EBUSY,
                   "cannot %s task %s: the engine runs %u tasks already (max_active_tasks)", op,
                   t->id, t->e->opts.max_active_tasks);
}

int sc_task_retry(sc_task *t, const char *from_stage, bool reset_context) {
  if (t == NULL) return sc__error(SC_EINVAL, "retry: NULL task");
  int rc = sc__task_check_held(t, "retry");
  if (rc != SC_OK) return rc;
  if (t->status != SC_TASK_FAILED || t->retry_requested || t->rollback_requested)
    return sc__error(SC_ETRANSITION, "cannot retry task %s: it is %s (retry needs FAILED)", t->id,
                     sc_task_status_name((sc_task_status)t->status));
  int32_t from = t->failed_index;
  if (from_stage != NULL) {
    from = sc__stage_index(t->plan, from_stage);
    if (from < 0) {
      char stages[512];
      sc__plan_stage_list(t->plan, stages, sizeof(stages));
      return sc__error(SC_EUNKNOWN_STAGE, "retry: unknown stage '%s' in plan '%s' (stages: %s)",
                       from_stage, t->plan_id ? t->plan_id : "(unnamed)", stages);
    }
    if (from > t->failed_index)
      return sc__error(SC_EINVAL, "retry: stage '%s' comes after the failed stage '%s'", from_stage,
                       t->plan->stages[t->failed_index].name);
  }
  if (!sc__task_try_acquire(t)) return busy(t, "retry");
  t->retry_requested = true;
  t->retry_from = from;
  t->retry_reset = reset_context;
  sc__task_check(t);
  sc__engine_enqueue(t->e, t);
  return SC_OK;
}

void sc__task_apply_retry(sc_task *t) {
  t->retry_requested = false;
  if (sc__task_set_status(t, SC_TASK_RUNNING) != SC_OK) return;
  t->retry_count++;
  t->intent++; /* a deliberate retry is a new intent: new idempotency keys */
  t->index = t->retry_from;
  t->attempt = 0;
  t->approved_index = -1;
  t->step = STEP_BEGIN_STAGE;
  if (t->retry_reset) {
    cJSON_Delete(t->context);
    t->context = NULL;
    memcpy(t->digest, t->e->empty_digest, sizeof(t->digest));
    t->digest_stale = false;
  }
  cJSON *data = NULL;
  if (sc__bus_wants(t->e->bus, SC_EV_TASK_STARTED) && (data = cJSON_CreateObject()) != NULL) {
    cJSON_AddBoolToObject(data, "retry", true);
    cJSON_AddNumberToObject(data, "retry_count", t->retry_count);
    cJSON_AddNumberToObject(data, "intent", t->intent);
    cJSON_AddStringToObject(data, "from_stage", t->plan->stages[t->index].name);
    cJSON_AddNumberToObject(data, "start_index", t->index);
    /* The restart point, as a recovery would name it: the stage before from_stage. */
    if (t->index > 0)
      cJSON_AddStringToObject(data, "last_completed_stage", t->plan->stages[t->index - 1].name);
    else
      cJSON_AddNullToObject(data, "last_completed_stage");
    cJSON_AddBoolToObject(data, "reset_context", t->retry_reset);
    cJSON_AddNumberToObject(data, "stages", (double)t->plan->nstages);
  }
  sc__task_emit(t, SC_EV_TASK_STARTED, NULL, -1, 0, data);
}

int sc_task_rollback(sc_task *t, sc_rollback_strategy how) {
  if (t == NULL) return sc__error(SC_EINVAL, "rollback: NULL task");
  int rc = sc__task_check_held(t, "roll back");
  if (rc != SC_OK) return rc;
  if ((t->status != SC_TASK_FAILED && t->status != SC_TASK_ROLLBACK_FAILED) || t->retry_requested ||
      t->rollback_requested)
    return sc__error(
        SC_ETRANSITION,
        "cannot roll back task %s: it is %s (rollback needs FAILED or ROLLBACK_FAILED)", t->id,
        sc_task_status_name((sc_task_status)t->status));
  if (how != SC_ROLLBACK_REDEPLOY && how != SC_ROLLBACK_COMPENSATE)
    return sc__error(SC_EINVAL, "rollback: unknown strategy %d", (int)how);
  if (how == SC_ROLLBACK_REDEPLOY) {
    sc__plan *previous;
    if (t->plan->previous_config == NULL)
      return sc__error(SC_EINVAL,
                       "cannot roll back task %s by redeploying: it has no previous_config", t->id);
    if ((rc = sc__plan_previous(t->e, t->plan, &previous)) != SC_OK) return rc;
  }
  if (!sc__task_try_acquire(t)) return busy(t, "roll back");
  t->rollback_requested = true;
  t->rollback_how = (uint8_t)how;
  sc__task_check(t);
  sc__engine_enqueue(t->e, t);
  return SC_OK;
}

void sc__task_apply_rollback(sc_task *t) {
  t->rollback_requested = false;
  bool again = t->status == SC_TASK_ROLLBACK_FAILED;
  bool was_compensating = t->compensating;
  if (sc__task_set_status(t, SC_TASK_ROLLING_BACK) != SC_OK) return;
  t->intent++; /* so is a rollback, also one tried again */
  /* The forward run failed at failed_index (a recovered rollback has none: every stage it ran
   * counts). */
  int32_t failed = t->failed_index >= 0 ? t->failed_index : (int32_t)t->plan->nstages - 1;
  t->rollback = true;
  t->attempt = 0;
  t->approved_index = -1;
  t->step = STEP_BEGIN_STAGE;
  if (t->rollback_how == SC_ROLLBACK_COMPENSATE) {
    t->compensating = true;
    t->run_plan = t->plan;
    /* Again after a failed compensation: carry on from the stage that failed to compensate. */
    if (!(again && was_compensating)) t->index = failed - 1;
  } else {
    sc__plan *previous = NULL;
    sc__plan_previous(t->e, t->plan, &previous);
    t->compensating = false;
    if (!(again && !was_compensating && t->run_plan == previous)) {
      t->end_index = failed < (int32_t)previous->nstages ? failed : (int32_t)previous->nstages - 1;
    }
    t->run_plan = previous;
    t->index = 0;
  }
  cJSON *data = NULL;
  if (sc__bus_wants(t->e->bus, SC_EV_ROLLBACK_STARTED) && (data = cJSON_CreateObject()) != NULL) {
    cJSON_AddStringToObject(data, "strategy", t->compensating ? "compensate" : "redeploy");
    cJSON_AddBoolToObject(data, "again", again);
    cJSON_AddNumberToObject(data, "intent", t->intent);
    if (!t->compensating) {
      cJSON_AddNumberToObject(data, "stages", t->end_index + 1);
      cJSON_AddStringToObject(data, "fingerprint", t->run_plan->fingerprint);
    }
  }
  sc__task_emit(t, SC_EV_ROLLBACK_STARTED, NULL, -1, 0, data);
}
