/* The task executor: one state machine step at a time, driven from the engine's run queue.
 *
 * A task moves by steps (STEP_*). sc__task_step() runs steps until the task has to wait: for a
 * stage that finishes later, a timer, a person, a resume, or the deferred acks of a barrier event.
 * A stage that finishes inside its start function only marks its context; the loop here picks the
 * result up, so a plan of any length runs without growing the stack. Control calls (pause, cancel,
 * approve, ...) record a request and queue the task; the step applies it, so no event of a task
 * is ever emitted re-entrantly from inside another event of the same task. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"

/* Steps a task may take per turn before it yields to other tasks and to the loop. */
#define STEP_BUDGET 1024

/* ---- small helpers ---- */

const cJSON *sc__task_context(const sc_task *t) {
  return t->context ? t->context : t->e->empty;
}

int sc__task_refresh_digest(sc_task *t) {
  if (!t->digest_stale) return SC_OK;
  int rc = sc__digest(t->e->sha, &t->e->scratch, sc__task_context(t), t->digest);
  if (rc == SC_OK) {
    t->digest_stale = false;
    t->context_bytes = t->e->scratch.len; /* the digest's canonical JSON: its size for free */
  }
  return rc;
}

int sc__task_set_status(sc_task *t, sc_task_status to) {
  if (!sc_transition_allowed((sc_task_status)t->status, to))
    return sc__error(SC_ETRANSITION, "task %s: no transition from %s to %s", t->id,
                     sc_task_status_name((sc_task_status)t->status), sc_task_status_name(to));
  t->status = (uint8_t)to;
  return SC_OK;
}

/* A status change the executor makes; the table allows every one it asks for, so a refusal is a
 * bug worth reporting loudly rather than a state to carry on in. */
static void set_status(sc_task *t, sc_task_status to) {
  if (sc__task_set_status(t, to) != SC_OK) {
    sc__engine_log(t->e, SC_LOG_ERROR, "internal: %s", sc_error_message());
    t->status = (uint8_t)to;
  }
}

cJSON *sc__error_json(int code, const char *message) {
  cJSON *err = cJSON_CreateObject();
  if (err == NULL) return NULL;
  cJSON_AddNumberToObject(err, "code", code);
  cJSON_AddStringToObject(err, "name", sc_err_name(code));
  cJSON_AddStringToObject(err, "message", message && *message ? message : sc_strerror(code));
  return err;
}

static bool wants(const sc_task *t, sc_event_type type) {
  return sc__bus_wants(t->e->bus, type);
}

static cJSON *new_data(const sc_task *t, sc_event_type type) {
  return wants(t, type) ? cJSON_CreateObject() : NULL;
}

/* ---- events and acks ---- */

/* Whether an event holds the task's next step until it is stored. */
static bool is_barrier(sc_event_type type, const sc__stage *stage) {
  return sc_event_type_is_barrier(type) ||
         (type == SC_EV_STAGE_STARTED && stage != NULL && stage->effect != SC_EFFECT_IDEMPOTENT);
}

void sc__task_emit(sc_task *t, sc_event_type type, const sc__stage *stage, int32_t index,
                   uint32_t attempt, cJSON *data) {
  sc_engine *e = t->e;
  sc_event ev;
  ev.type = type;
  ev.seq = ++t->seq;
  if (type == SC_EV_TASK_STARTED || type == SC_EV_ROLLBACK_STARTED)
    t->snapshot_due = true; /* a reader starts a run's fold at its first stage.completed */
  if (!sc__bus_wants(e->bus, type)) {
    cJSON_Delete(data);
    return;
  }
  ev.epoch = t->epoch;
  ev.time_ns = sc__now_ns();
  ev.task_id = t->id;
  ev.tenant_id = t->tenant;
  ev.plan_id = t->plan_id;
  ev.traceparent = t->traceparent;
  ev.stage = stage ? stage->name : NULL;
  ev.stage_index = stage ? index : -1;
  ev.attempt = stage ? attempt : 0;
  ev.status = (sc_task_status)t->status;
  ev.data = data;
  ev.source = e->source;
  ev.context = type == SC_EV_STAGE_COMPLETED || type == SC_EV_TASK_COMPLETED ||
                       type == SC_EV_ROLLBACK_COMPLETED
                   ? sc__task_context(t)
                   : NULL;
  int rc = sc__bus_dispatch(e->bus, &ev, t);
  cJSON_Delete(data);
  if (rc == SC_DEFER) {
    if (is_barrier(type, stage)) {
      t->barrier_pending++;
      if (type == SC_EV_STAGE_STARTED) t->started_barrier_seq = ev.seq;
    } else {
      t->acks_pending++;
    }
  } else if (rc < 0) {
    sc__task_request(t, SC__REQUEST_ACK_FAILED, rc, sc_error_message());
  }
}

/* Whether a caller asked for something the task's next step applies. */
static bool has_requests(const sc_task *t) {
  return t->pause_requested || t->resume_requested || t->cancel_requested || t->release_requested ||
         t->retry_requested || t->rollback_requested ||
         (t->approval != NULL &&
          (!sc__queue_empty(&t->approval->decisions) || t->approval->timeout_due));
}

void sc__task_settle(void *owner, sc_event_type type, uint64_t seq, int status, const char *msg,
                     void *udata) {
  (void)udata;
  sc_task *t = owner;
  /* One barrier stage.started at most is outstanding: the task takes no step while it is. */
  if (sc_event_type_is_barrier(type) ||
      (type == SC_EV_STAGE_STARTED && seq == t->started_barrier_seq && seq != 0)) {
    t->barrier_pending--;
    if (type == SC_EV_STAGE_STARTED) t->started_barrier_seq = 0;
  } else {
    t->acks_pending--;
  }
  if (status < 0) sc__task_request(t, SC__REQUEST_ACK_FAILED, status, msg);
  sc__task_check(t);
  /* Whatever was asked while the barrier held (a retry, an approval, a cancel) applies now. */
  if (t->barrier_pending == 0 && (t->step != STEP_WAIT || has_requests(t)))
    sc__engine_enqueue(t->e, t);
}

/* ---- timers ---- */

static void on_timer(uv_timer_t *h);

int sc__task_start_timer(sc_task *t, task_timer_use use, uint64_t ms) {
  if (t->timer == NULL) {
    if ((t->timer = malloc(sizeof(*t->timer))) == NULL)
      return sc__error(SC_ENOMEM, "task %s: out of memory for a timer", t->id);
    uv_timer_init(t->e->loop, t->timer);
    t->timer->data = t;
  }
  t->timer_use = (uint8_t)use;
  uv_timer_start(t->timer, on_timer, ms, 0);
  return SC_OK;
}

void sc__task_stop_timer(sc_task *t) {
  if (t->timer != NULL) uv_timer_stop(t->timer);
  t->timer_use = TIMER_NONE;
}

static void on_timer_closed(uv_handle_t *h) {
  sc_engine *e = h->data;
  free(h);
  sc__engine_closing_done(e);
}

/* ---- stage results ---- */

static uint64_t backoff_ms(const sc__stage *st, uint32_t failed_attempt) {
  if (st->retry.initial_backoff_ms == 0) return 0; /* 0 * inf would be NaN */
  double d = st->retry.initial_backoff_ms * pow(st->retry.multiplier, (double)failed_attempt - 1);
  if (st->retry.max_backoff_ms && !(d <= st->retry.max_backoff_ms)) d = st->retry.max_backoff_ms;
  return !(d <= 86400000.0) ? 86400000 : (uint64_t)d; /* a day at most; also for inf */
}

/* Merges the members of an output object into the context; the output is consumed. When the
 * event wants the output as well, it gets the original and the context gets copies. */
static int merge_output(sc_task *t, cJSON *output, bool keep_output) {
  if (output == NULL || output->child == NULL) return SC_OK;
  if (t->context == NULL && (t->context = cJSON_CreateObject()) == NULL)
    return sc__error(SC_ENOMEM, "out of memory");
  for (cJSON *m = output->child, *next; m != NULL; m = next) {
    next = m->next;
    /* cJSON_Duplicate copies the member's name too. */
    cJSON *item = keep_output ? cJSON_Duplicate(m, true) : cJSON_DetachItemViaPointer(output, m);
    if (item == NULL) return sc__error(SC_ENOMEM, "out of memory");
    cJSON *old = cJSON_GetObjectItemCaseSensitive(t->context, item->string);
    if (old != NULL) {
      cJSON_ReplaceItemViaPointer(t->context, old, item);
    } else {
      item->next = item->prev = NULL;
      char *key = item->string;
      if (!cJSON_AddItemToObject(t->context, key, item)) {
        cJSON_Delete(item);
        return sc__error(SC_ENOMEM, "out of memory");
      }
    }
  }
  t->digest_stale = true;
  return SC_OK;
}

static void clear_pause_request(sc_task *t) {
  t->pause_requested = false;
  free(t->pause_reason);
  t->pause_reason = NULL;
  t->pause_kind = NULL;
}

static void fail_task(sc_task *t, const sc__stage *st, int32_t index, uint32_t attempt,
                      const sc__result *r) {
  bool rollback = t->rollback;
  if (!rollback) t->failed_index = index;
  clear_pause_request(t); /* nothing runs to pause; a retry or rollback starts afresh */
  set_status(t, rollback ? SC_TASK_ROLLBACK_FAILED : SC_TASK_FAILED);
  sc__task_release_slot(t);
  t->step = STEP_WAIT;
  sc_event_type type = rollback ? SC_EV_ROLLBACK_FAILED : SC_EV_TASK_FAILED;
  cJSON *data = new_data(t, type);
  if (data) sc__json_put(data, "error", sc__error_json(r->code, r->message));
  sc__task_emit(t, type, st, index, attempt, data);
}

static const char *mode_name(const sc_task *t) {
  if (t->compensating) return "compensate";
  if (t->rollback) return "rollback";
  if (t->retry_count > 0 || t->recovered) return "retry";
  return "run";
}

/* Whether this stage.completed carries the whole context (DESIGN.md, "Checkpoint"): the first of
 * a run does, and then one whenever the outputs since the last snapshot reach that snapshot's
 * size, so the serialized events grow with the sum of the outputs, never with stages x context.
 * Sizes are of the canonical JSON: the context's comes with its digest, an output's is written
 * into the scratch buffer (only when a subscriber wants the event). */
static bool snapshot_now(sc_task *t, const cJSON *output) {
  if (output != NULL && output->child != NULL) {
    sc__buf_reset(&t->e->scratch);
    sc__json_value(&t->e->scratch, output, false);
    t->outputs_since_snapshot += t->e->scratch.len;
  }
  if (!t->snapshot_due && t->outputs_since_snapshot < t->snapshot_bytes) return false;
  t->snapshot_due = false;
  t->snapshot_bytes = t->context_bytes;
  t->outputs_since_snapshot = 0;
  return true;
}

/* Records a finished attempt: stage.completed and the next stage, or stage.failed and a retry
 * after a backoff, or the task's failure. Consumes r. */
static void stage_finished(sc_task *t, sc__result *r) {
  const sc__stage *st = &t->run_plan->stages[t->index];
  int32_t index = t->index;
  uint32_t attempt = t->attempt;
  int64_t duration_ms = (sc__now_ns() - r->started_ns) / 1000000;
  if (r->code == SC_OK && t->compensating) {
    cJSON *data = new_data(t, SC_EV_STAGE_COMPENSATED);
    if (data) cJSON_AddNumberToObject(data, "duration_ms", (double)duration_ms);
    t->index--;
    t->attempt = 0;
    t->step = STEP_BEGIN_STAGE;
    sc__task_emit(t, SC_EV_STAGE_COMPENSATED, st, index, attempt, data);
    goto out;
  }
  if (r->code == SC_OK) {
    bool want = wants(t, SC_EV_STAGE_COMPLETED);
    int rc = merge_output(t, r->output, want);
    if (rc != SC_OK) {
      r->code = rc;
      r->retryable = true;
      free(r->message);
      r->message = strdup(sc_error_message());
    } else {
      cJSON *data = NULL;
      if (want && sc__task_refresh_digest(t) == SC_OK && (data = cJSON_CreateObject()) != NULL) {
        /* The whole context goes first, where a reader looks for it without parsing the line. */
        if (snapshot_now(t, r->output))
          sc__json_put(data, "context", cJSON_CreateObjectReference(sc__task_context(t)->child));
        if (r->output) sc__json_put(data, "output", r->output);
        r->output = NULL;
        sc__json_put(data, "digest", cJSON_CreateStringReference(t->digest));
        sc__json_put(data, "fingerprint", cJSON_CreateStringReference(t->plan->fingerprint));
        cJSON_AddNumberToObject(data, "duration_ms", (double)duration_ms);
      }
      t->index++;
      t->attempt = 0;
      t->step = STEP_BEGIN_STAGE;
      sc__task_emit(t, SC_EV_STAGE_COMPLETED, st, index, attempt, data);
      goto out;
    }
  }
  bool will_retry = r->retryable && attempt < st->retry.max_attempts && !t->cancel_requested;
  uint64_t delay = will_retry ? backoff_ms(st, attempt) : 0;
  cJSON *data = new_data(t, SC_EV_STAGE_FAILED);
  if (data) {
    sc__json_put(data, "error", sc__error_json(r->code, r->message));
    cJSON_AddBoolToObject(data, "will_retry", will_retry);
    if (will_retry) cJSON_AddNumberToObject(data, "retry_in_ms", (double)delay);
    cJSON_AddNumberToObject(data, "duration_ms", (double)duration_ms);
  }
  if (will_retry) {
    if (delay > 0 && sc__task_start_timer(t, TIMER_BACKOFF, delay) == SC_OK)
      t->step = STEP_WAIT;
    else
      t->step = STEP_BEGIN_STAGE;
    sc__task_emit(t, SC_EV_STAGE_FAILED, st, index, attempt, data);
  } else {
    sc__task_emit(t, SC_EV_STAGE_FAILED, st, index, attempt, data);
    fail_task(t, st, index, attempt, r);
  }
out:
  free(r->message);
  cJSON_Delete(r->output);
  memset(r, 0, sizeof(*r));
}

/* Takes the result out of a finished context and frees the context. */
static void take_result(sc_task *t, sc__result *r) {
  sc_stage_ctx *ctx = t->ctx;
  t->ctx = NULL;
  r->code = ctx->code;
  r->retryable = ctx->retryable;
  r->message = ctx->message;
  r->output = ctx->output;
  r->started_ns = ctx->started_ns;
  ctx->message = NULL;
  ctx->output = NULL;
  sc__ctx_free(t->e, ctx);
}

void sc__task_stage_finished(sc_task *t, sc_stage_ctx *ctx) {
  (void)ctx;
  if (t->timer_use == TIMER_TIMEOUT) sc__task_stop_timer(t);
  t->step = STEP_STAGE_DONE;
  if (!t->stepping) sc__engine_enqueue(t->e, t);
}

/* ---- approvals ---- */

static void approval_free(sc__approval_state *a) {
  if (a == NULL) return;
  free(a->decided_why);
  for (uint32_t i = 0; i < a->napproved; i++)
    free(a->reviewers[i]);
  free(a->reviewers);
  sc__queue *q, *next;
  sc__queue_foreach_safe(q, next, &a->decisions) {
    sc__decision *d = sc__queue_data(q, sc__decision, link);
    free(d->reviewer);
    free(d->comment);
    free(d);
  }
  free(a);
}

static bool needs_approval(const sc_task *t, const sc__stage *st) {
  if (t->rollback || t->approved_index == t->index) return false;
  return st->approval.required || t->gate_index == t->index;
}

static void request_approval(sc_task *t, const sc__stage *st) {
  sc__approval_state *a = calloc(1, sizeof(*a));
  if (a == NULL) {
    sc__result r = {SC_ENOMEM, false, strdup("out of memory for an approval"), NULL, sc__now_ns()};
    fail_task(t, st, t->index, t->attempt, &r);
    free(r.message);
    return;
  }
  sc__queue_init(&a->decisions);
  a->index = t->index;
  /* The recovered in-flight stage asks because of its effect, whatever its own policy. */
  bool in_flight = t->gate_index == t->index;
  a->reason = in_flight ? "irreversible-stage-in-flight" : "policy";
  a->needed = st->approval.required ? st->approval.approvers_needed : 1;
  a->requested_ns = sc__now_ns();
  uint32_t timeout_ms = st->approval.required ? st->approval.timeout_ms : 0;
  if (timeout_ms) a->deadline_ns = a->requested_ns + (int64_t)timeout_ms * 1000000;
  approval_free(t->approval);
  t->approval = a;
  set_status(t, SC_TASK_AWAITING_APPROVAL);
  t->step = STEP_WAIT;
  if (timeout_ms) sc__task_start_timer(t, TIMER_APPROVAL, timeout_ms);
  cJSON *data = new_data(t, SC_EV_APPROVAL_REQUESTED);
  if (data) {
    cJSON_AddStringToObject(data, "reason", a->reason);
    cJSON_AddNumberToObject(data, "approvers_needed", a->needed);
    cJSON_AddNumberToObject(data, "timeout_ms", timeout_ms);
    if (a->deadline_ns) {
      char when[32];
      sc__format_time(a->deadline_ns, when);
      cJSON_AddStringToObject(data, "deadline", when);
    }
    cJSON_AddStringToObject(data, "on_timeout", sc__action_name((int)st->approval.on_timeout));
    cJSON_AddStringToObject(data, "on_reject", sc__action_name((int)st->approval.on_reject));
    cJSON_AddStringToObject(data, "effect", sc__effect_name((int)st->effect));
  }
  sc__task_emit(t, SC_EV_APPROVAL_REQUESTED, st, t->index, 0, data);
}

static void cancel_now(sc_task *t, const char *reason);

/* The gate is rejected (by a person or a timeout) or its timeout fails it. Its event was just
 * emitted, a barrier: what follows (the task FAILED or CANCELLED) is taken by STEP_DECIDED, after
 * the event is stored, like any step after a barrier. */
static void decide_gate(sc_task *t, bool fail, int code, const char *why) {
  sc__approval_state *a = t->approval;
  sc__task_stop_timer(t);
  a->decided = true;
  a->decided_fail = fail;
  a->decided_code = code;
  a->decided_why = strdup(why);
  t->step = STEP_DECIDED;
}

static void apply_decided(sc_task *t) {
  sc__approval_state *a = t->approval;
  const sc__stage *st = &t->run_plan->stages[a->index];
  t->approval = NULL;
  if (a->decided_fail) {
    sc__result r = {a->decided_code, false, a->decided_why, NULL, sc__now_ns()};
    a->decided_why = NULL;
    fail_task(t, st, t->index, t->attempt, &r);
    free(r.message);
  } else {
    cancel_now(t, a->decided_why ? a->decided_why : "rejected");
  }
  approval_free(a);
}

static void grant(sc_task *t) {
  approval_free(t->approval);
  t->approval = NULL;
  sc__task_stop_timer(t);
  t->approved_index = t->index;
  t->step = STEP_BEGIN_STAGE;
}

static void apply_decision(sc_task *t, sc__decision *d) {
  const sc__stage *st = &t->run_plan->stages[t->index];
  sc__approval_state *a = t->approval;
  sc_event_type type = d->approve ? SC_EV_APPROVAL_GRANTED : SC_EV_APPROVAL_REJECTED;
  cJSON *data = new_data(t, type);
  if (data) {
    cJSON_AddStringToObject(data, "reviewer", d->reviewer);
    if (d->comment) cJSON_AddStringToObject(data, "comment", d->comment);
  }
  if (!d->approve) {
    char why[300];
    snprintf(why, sizeof(why), "rejected by %s%s%s", d->reviewer, d->comment ? ": " : "",
             d->comment ? d->comment : "");
    sc__task_emit(t, type, st, t->index, 0, data);
    decide_gate(t, st->approval.on_reject == SC_ACTION_FAIL, SC_ECANCELLED, why);
    return;
  }
  if (sc__grow(&a->reviewers, &a->reviewers_cap, (size_t)a->napproved + 1, sizeof(*a->reviewers),
               4)) {
    a->reviewers[a->napproved] = d->reviewer;
    d->reviewer = NULL;
    a->napproved++;
  }
  if (data) {
    cJSON_AddNumberToObject(data, "approvals", a->napproved);
    cJSON_AddNumberToObject(data, "approvers_needed", a->needed);
  }
  bool enough = a->napproved >= a->needed;
  if (enough) {
    set_status(t, t->rollback ? SC_TASK_ROLLING_BACK : SC_TASK_RUNNING);
    grant(t);
  }
  sc__task_emit(t, type, st, t->index, 0, data);
}

static void apply_decisions(sc_task *t) {
  while (t->approval && !sc__queue_empty(&t->approval->decisions) && !t->approval->decided &&
         t->status == SC_TASK_AWAITING_APPROVAL && t->barrier_pending == 0) {
    sc__queue *q = sc__queue_head(&t->approval->decisions);
    sc__queue_remove(q);
    sc__decision *d = sc__queue_data(q, sc__decision, link);
    apply_decision(t, d);
    free(d->reviewer);
    free(d->comment);
    free(d);
  }
}

static void approval_timed_out(sc_task *t) {
  const sc__stage *st = &t->run_plan->stages[t->index];
  sc_approval_action action = st->approval.on_timeout;
  cJSON *data = new_data(t, SC_EV_APPROVAL_TIMED_OUT);
  if (data) {
    cJSON_AddStringToObject(data, "action", sc__action_name((int)action));
    cJSON_AddNumberToObject(data, "timeout_ms", st->approval.timeout_ms);
  }
  if (action == SC_ACTION_APPROVE) {
    set_status(t, SC_TASK_RUNNING);
    grant(t);
    sc__task_emit(t, SC_EV_APPROVAL_TIMED_OUT, st, t->index, 0, data);
    return;
  }
  sc__task_emit(t, SC_EV_APPROVAL_TIMED_OUT, st, t->index, 0, data);
  char why[128];
  snprintf(why, sizeof(why), "approval of '%s' timed out after %u ms", st->name,
           st->approval.timeout_ms);
  if (action == SC_ACTION_FAIL)
    decide_gate(t, true, SC_ETIMEDOUT, why);
  else
    decide_gate(t, st->approval.on_reject == SC_ACTION_FAIL, SC_ECANCELLED, why);
}

/* ---- pause, resume, cancel ---- */

static void enter_pause(sc_task *t) {
  sc_task_status from = (sc_task_status)t->status;
  t->pause_requested = false;
  if (from == SC_TASK_AWAITING_APPROVAL && !(t->approval && t->approval->decided)) {
    /* Pausing withdraws the request; resume asks again (the table has no PAUSED ->
     * AWAITING_APPROVAL: the task resumes RUNNING at the gate). */
    approval_free(t->approval);
    t->approval = NULL;
    sc__task_stop_timer(t);
  }
  t->paused_from = (uint8_t)from;
  set_status(t, SC_TASK_PAUSED);
  t->step = STEP_WAIT;
  cJSON *data = new_data(t, SC_EV_TASK_PAUSED);
  if (data) {
    cJSON_AddStringToObject(data, "paused_from", sc_task_status_name(from));
    if (t->pause_kind) {
      cJSON_AddStringToObject(data, "reason", t->pause_kind);
      sc__json_put(data, "error", sc__error_json(t->pause_code, t->pause_reason));
    } else {
      cJSON_AddStringToObject(data, "reason", "requested");
    }
  }
  clear_pause_request(t);
  sc__task_emit(t, SC_EV_TASK_PAUSED, NULL, -1, 0, data);
}

static void resume_now(sc_task *t) {
  t->resume_requested = false;
  sc_task_status to = (sc_task_status)t->paused_from;
  set_status(t, to == SC_TASK_AWAITING_APPROVAL ? SC_TASK_RUNNING : to);
  /* At a gate already decided, the decision applies; anywhere else the next stage begins. */
  t->step = t->approval && t->approval->decided ? STEP_DECIDED : STEP_BEGIN_STAGE;
  sc__task_emit(t, SC_EV_TASK_RESUMED, NULL, -1, 0, new_data(t, SC_EV_TASK_RESUMED));
}

static void cancel_now(sc_task *t, const char *reason) {
  t->cancel_requested = false;
  t->resume_requested = false; /* a cancelled task resumes nothing */
  clear_pause_request(t);
  if (t->ctx != NULL) {
    sc_stage_ctx *ctx = t->ctx;
    t->ctx = NULL;
    sc__ctx_detach(ctx, true);
  }
  sc__task_stop_timer(t);
  sc__pending_unlink(t);
  approval_free(t->approval);
  t->approval = NULL;
  set_status(t, SC_TASK_CANCELLED);
  sc__task_release_slot(t);
  t->step = STEP_RELEASE;
  cJSON *data = new_data(t, SC_EV_TASK_CANCELLED);
  if (data) cJSON_AddStringToObject(data, "reason", reason ? reason : "cancelled");
  sc__task_emit(t, SC_EV_TASK_CANCELLED, NULL, -1, 0, data);
}

/* ---- the steps ---- */

static void admit(sc_task *t) {
  if (t->status == SC_TASK_CREATED) set_status(t, SC_TASK_PENDING);
  if (t->recovered && !t->rate_passed && t->e->opts.recovery_rate_per_s > 0) {
    uint64_t wait = sc__rate_wait_ms(t->e);
    if (wait > 0 && sc__task_start_timer(t, TIMER_ADMIT, wait) == SC_OK) {
      t->step = STEP_WAIT;
      return;
    }
    t->rate_passed = true;
  }
  if (!sc__task_try_acquire(t)) {
    sc__pending_append(t);
    t->step = STEP_WAIT;
    return;
  }
  t->step = STEP_BEGIN_STAGE;
  if (t->rollback) {
    set_status(t, SC_TASK_ROLLING_BACK);
    cJSON *data = new_data(t, SC_EV_ROLLBACK_STARTED);
    if (data) cJSON_AddNumberToObject(data, "intent", t->intent);
    if (data && t->compensating) {
      cJSON_AddStringToObject(data, "strategy", "compensate");
    } else if (data) {
      cJSON_AddStringToObject(data, "strategy", "redeploy");
      cJSON_AddNumberToObject(data, "stages", t->end_index + 1);
      sc__json_put(data, "fingerprint", cJSON_CreateStringReference(t->run_plan->fingerprint));
    }
    sc__task_emit(t, SC_EV_ROLLBACK_STARTED, NULL, -1, 0, data);
  } else {
    set_status(t, SC_TASK_RUNNING);
    cJSON *data = new_data(t, SC_EV_TASK_STARTED);
    if (data) {
      cJSON_AddNumberToObject(data, "stages", (double)t->run_plan->nstages);
      cJSON_AddNumberToObject(data, "start_index", t->index);
    }
    sc__task_emit(t, SC_EV_TASK_STARTED, NULL, -1, 0, data);
  }
}

static void finish(sc_task *t) {
  bool rollback = t->rollback;
  set_status(t, rollback ? SC_TASK_ROLLED_BACK : SC_TASK_COMPLETED);
  sc__task_release_slot(t);
  t->step = STEP_RELEASE;
  sc_event_type type = rollback ? SC_EV_ROLLBACK_COMPLETED : SC_EV_TASK_COMPLETED;
  cJSON *data = NULL;
  if (wants(t, type) && sc__task_refresh_digest(t) == SC_OK && (data = cJSON_CreateObject())) {
    sc__json_put(data, "context", cJSON_CreateObjectReference(sc__task_context(t)->child));
    sc__json_put(data, "digest", cJSON_CreateStringReference(t->digest));
  }
  sc__task_emit(t, type, NULL, -1, 0, data);
}

/* stage.started; the attempt starts in launch(), at once for an idempotent stage and, for a
 * compensable or irreversible one, once the event is stored (recovery must know it was in
 * flight). */
static void start_attempt(sc_task *t, const sc__stage *st) {
  t->attempt++;
  t->step = STEP_LAUNCH;
  /* The attempt's span is chosen here, so that stage.started names the span the stage runs in. */
  t->attempt_span[0] = '\0';
  if (t->traceparent != NULL && sc_traceparent_valid(t->traceparent)) {
    sc__span_id(t->e, t->attempt_span);
    t->attempt_span[16] = '\0';
  }
  cJSON *data = new_data(t, SC_EV_STAGE_STARTED);
  if (data) {
    sc__json_put(data, "kind", cJSON_CreateStringReference(st->kind));
    sc__json_put(data, "mode", cJSON_CreateStringReference(mode_name(t)));
    if (t->attempt_span[0])
      sc__json_put(data, "span_id", cJSON_CreateStringReference(t->attempt_span));
  }
  sc__task_emit(t, SC_EV_STAGE_STARTED, st, t->index, t->attempt, data);
}

static void launch(sc_task *t) {
  const sc__stage *st = &t->run_plan->stages[t->index];
  if (sc__task_self_paused(t)) {
    /* stage.started was not stored (or something before it was not): the stage does not run.
     * The attempt starts again, with a new stage.started, when the task is resumed. */
    t->attempt--;
    t->step = STEP_BEGIN_STAGE;
    return;
  }
  sc_stage_ctx *ctx = sc__ctx_new(t, st, t->index);
  if (ctx == NULL) {
    sc__result r = {SC_ENOMEM, false, strdup("out of memory for a stage"), NULL, sc__now_ns()};
    fail_task(t, st, t->index, t->attempt, &r);
    free(r.message);
    return;
  }
  ctx->attempt = t->attempt;
  ctx->compensation = t->compensating;
  ctx->mode = mode_name(t);
  ctx->root_id = t->root_id;
  ctx->intent = t->intent;
  if (t->attempt_span[0]) {
    /* The attempt's own span in the task's trace: "00-" trace id "-" span id "-" flags. */
    memcpy(ctx->traceparent, t->traceparent, 36);
    memcpy(ctx->traceparent + 36, t->attempt_span, 16);
    ctx->traceparent[52] = '-';
    memcpy(ctx->traceparent + 53, t->traceparent + 53, 3);
  }
  t->ctx = ctx;
  t->step = STEP_WAIT;
  if (st->timeout_ms) sc__task_start_timer(t, TIMER_TIMEOUT, st->timeout_ms);
  int rc = sc__ctx_start(ctx);
  if (rc < 0 && ctx->state == CTX_RUNNING) sc_stage_fail(ctx, rc, sc_error_message(), true);
}

static void begin_stage(sc_task *t) {
  if (t->pause_requested) {
    enter_pause(t);
    return;
  }
  if (t->compensating) {
    /* Backwards over the completed stages; only compensable ones have anything to undo. */
    while (t->index >= 0 && t->run_plan->stages[t->index].effect != SC_EFFECT_COMPENSABLE)
      t->index--;
    if (t->index < 0) {
      finish(t);
      return;
    }
  } else if (t->index > t->end_index) {
    finish(t);
    return;
  }
  const sc__stage *st = &t->run_plan->stages[t->index];
  if (needs_approval(t, st)) {
    request_approval(t, st);
    return;
  }
  start_attempt(t, st);
}

/* Requests that apply whatever the step: cancel first, then resume, then a pause while waiting
 * for a person. Returns true when the task may take its regular step. */
static bool apply_requests(sc_task *t) {
  if (t->release_requested) {
    t->step = STEP_RELEASE;
    return true;
  }
  if (t->cancel_requested) {
    if (sc_transition_allowed((sc_task_status)t->status, SC_TASK_CANCELLED)) {
      cancel_now(t, t->cancel_reason);
      return true;
    }
    t->cancel_requested = false; /* the task ended before the request was applied */
  }
  if (t->retry_requested) sc__task_apply_retry(t);
  if (t->rollback_requested) sc__task_apply_rollback(t);
  if (t->status == SC_TASK_PAUSED) {
    if (t->resume_requested) {
      resume_now(t);
      return true;
    }
    return false;
  }
  /* A decided gate is not withdrawn by a caller's pause (the decision wins), but a failed ack
   * of the decision pauses the task, which applies the decision when resumed. */
  if (t->pause_requested && t->status == SC_TASK_AWAITING_APPROVAL &&
      (t->step != STEP_DECIDED || sc__task_self_paused(t))) {
    enter_pause(t);
    return false;
  }
  if (t->status == SC_TASK_AWAITING_APPROVAL) apply_decisions(t);
  if (t->status == SC_TASK_AWAITING_APPROVAL && t->approval && t->approval->timeout_due &&
      !t->approval->decided && t->barrier_pending == 0) {
    t->approval->timeout_due = false;
    approval_timed_out(t);
  }
  return true;
}

void sc__task_step(sc_task *t) {
  if (t->stepping) return;
  t->stepping = true;
  for (unsigned budget = STEP_BUDGET; budget > 0; budget--) {
    if (t->barrier_pending > 0) break;
    if (!apply_requests(t)) break;
    if (t->barrier_pending > 0) break;
    sc__task_check(t);
    switch ((task_step)t->step) {
      case STEP_WAIT: t->stepping = false; return;
      case STEP_ADMIT: admit(t); break;
      case STEP_BEGIN_STAGE: begin_stage(t); break;
      case STEP_STAGE_DONE: {
        sc__result r;
        take_result(t, &r);
        stage_finished(t, &r);
        break;
      }
      case STEP_DECIDED: apply_decided(t); break;
      case STEP_LAUNCH: launch(t); break;
      case STEP_RELEASE:
        t->stepping = false;
        if (t->acks_pending == 0 && t->barrier_pending == 0) sc__task_let_go(t);
        return;
    }
    sc__task_check(t);
    if (budget == 1) {
      t->stepping = false;
      sc__engine_enqueue(t->e, t); /* yield: other tasks and the loop get a turn */
      return;
    }
  }
  t->stepping = false;
}

/* ---- timers ---- */

static void on_timer(uv_timer_t *h) {
  sc_task *t = h->data;
  task_timer_use use = (task_timer_use)t->timer_use;
  t->timer_use = TIMER_NONE;
  if (t->stepping) return; /* cannot happen: timers fire from the loop, never inside a step */
  t->stepping = true;
  switch (use) {
    case TIMER_TIMEOUT:
      if (t->ctx != NULL && t->ctx->state == CTX_RUNNING) {
        const sc__stage *st = t->ctx->stage;
        sc__result r = {SC_ETIMEDOUT, true, NULL, NULL, t->ctx->started_ns};
        char msg[160];
        snprintf(msg, sizeof(msg), "stage '%s' timed out after %u ms", st->name, st->timeout_ms);
        r.message = strdup(msg);
        sc_stage_ctx *ctx = t->ctx;
        t->ctx = NULL;
        sc__ctx_detach(ctx, true);
        stage_finished(t, &r);
      }
      break;
    case TIMER_BACKOFF: t->step = STEP_BEGIN_STAGE; break;
    case TIMER_APPROVAL:
      /* Like a decision, the timeout waits for a barrier in progress (an earlier approval being
       * stored); the step after it applies the timeout. */
      if (t->status == SC_TASK_AWAITING_APPROVAL && t->approval != NULL) {
        if (t->barrier_pending > 0)
          t->approval->timeout_due = true;
        else
          approval_timed_out(t);
      }
      break;
    case TIMER_ADMIT: t->step = STEP_ADMIT; break;
    default: break;
  }
  t->stepping = false;
  sc__task_check(t);
  sc__engine_enqueue(t->e, t);
}

/* ---- creation and teardown ---- */

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

int sc__task_create(sc_engine *e, const sc_task_spec *spec, sc__plan *plan, sc_task **out) {
  *out = NULL;
  char generated[37];
  const char *id = spec->task_id;
  if (id == NULL) {
    sc__uuid_v7(e, generated);
    id = generated;
  }
  if (!*id) return sc__error(SC_EINVAL, "task id must not be empty");
  if (sc__map_get(&e->tasks, id) != NULL)
    return sc__error(SC_EBUSY, "a task with id '%s' is already running in this engine", id);
  if (spec->context != NULL && !cJSON_IsObject(spec->context))
    return sc__error(SC_EINVAL, "task %s: the initial context must be a JSON object", id);
  size_t lid = strlen(id) + 1, lten = spec->tenant_id ? strlen(spec->tenant_id) + 1 : 0;
  size_t lplan = spec->plan_id ? strlen(spec->plan_id) + 1 : 0;
  size_t ltrace = spec->traceparent ? strlen(spec->traceparent) + 1 : 0;
  const char *tracestate = spec->version >= 2 ? spec->tracestate : NULL;
  size_t lstate = tracestate ? strlen(tracestate) + 1 : 0;
  /* The strings live right behind the struct: one allocation per task. */
  sc_task *t = calloc(1, sizeof(*t) + lid + lten + lplan + ltrace + lstate);
  if (t == NULL) return sc__error(SC_ENOMEM, "out of memory for a task");
  char *p = (char *)(t + 1);
  t->id = memcpy(p, id, lid);
  p += lid;
  if (lten) t->tenant = memcpy(p, spec->tenant_id, lten);
  p += lten;
  if (lplan) t->plan_id = memcpy(p, spec->plan_id, lplan);
  p += lplan;
  if (ltrace) t->traceparent = memcpy(p, spec->traceparent, ltrace);
  p += ltrace;
  if (lstate) t->tracestate = memcpy(p, tracestate, lstate);
  t->root_id = t->id;
  t->e = e;
  sc__queue_init(&t->ready_link);
  sc__queue_init(&t->pending_link);
  t->plan = plan;
  t->run_plan = plan;
  t->status = SC_TASK_CREATED;
  t->step = STEP_ADMIT;
  t->end_index = (int32_t)plan->nstages - 1;
  t->gate_index = -1;
  t->approved_index = -1;
  t->failed_index = -1;
  if (spec->context != NULL && spec->context->child != NULL) {
    if ((t->context = cJSON_Duplicate(spec->context, true)) == NULL) {
      free(t);
      return sc__error(SC_ENOMEM, "out of memory for a task context");
    }
    t->digest_stale = true;
  } else {
    memcpy(t->digest, e->empty_digest, sizeof(t->digest));
  }
  if (sc__map_put(&e->tasks, t->id, t) != 0) {
    cJSON_Delete(t->context);
    free(t);
    return sc__error(SC_ENOMEM, "out of memory for a task");
  }
  *out = t;
  return SC_OK;
}

/* What a released task keeps for its references goes with the last of them. */
static void free_remains(sc_task *t) {
  sc__queue_remove(&t->pending_link); /* off e->let_go */
  cJSON_Delete(t->context);
  if (t->root_id != t->id) free(t->root_id);
  sc__plan_unref(t->e, t->plan);
  free(t);
}

void sc__task_let_go(sc_task *t) {
  sc_engine *e = t->e;
  sc__queue_remove(&t->ready_link);
  if (t->ctx != NULL) {
    sc_stage_ctx *ctx = t->ctx;
    t->ctx = NULL;
    sc__ctx_detach(ctx, true);
  }
  sc__pending_unlink(t);
  sc__task_release_slot(t);
  sc__bus_orphan_acks(e->bus, t);
  if (t->timer != NULL) {
    t->timer->data = e;
    e->closing++;
    uv_close((uv_handle_t *)t->timer, on_timer_closed);
    t->timer = NULL;
  }
  if (sc__map_get(&e->tasks, t->id) == t) sc__map_del(&e->tasks, t->id);
  approval_free(t->approval);
  t->approval = NULL;
  cJSON_Delete(t->recovery_plan);
  t->recovery_plan = NULL;
  free(t->pause_reason);
  free(t->cancel_reason);
  t->pause_reason = t->cancel_reason = NULL;
  t->pause_kind = NULL;
  t->pause_requested = t->resume_requested = t->cancel_requested = false;
  t->retry_requested = t->rollback_requested = t->release_requested = false;
  t->timer_use = TIMER_NONE;
  t->released = true;
  if (t->refs == 0) {
    free_remains(t);
    return;
  }
  /* The caller keeps a handle: it stays readable (sc_task_ref). */
  sc__queue_insert_tail(&e->let_go, &t->pending_link);
}

void sc__task_orphan_let_go(sc_engine *e) {
  while (!sc__queue_empty(&e->let_go)) {
    sc__queue *q = sc__queue_head(&e->let_go);
    sc__queue_remove(q);
    sc_task *t = sc__queue_data(q, sc_task, pending_link);
    t->e = NULL;
  }
}

void sc_task_ref(sc_task *t) {
  if (t != NULL) t->refs++;
}

void sc_task_unref(sc_task *t) {
  if (t == NULL) return;
  if (t->refs == 0) {
    /* More unrefs than refs: the caller's bug; the handle is left alone rather than freed. */
    if (t->e != NULL)
      sc__engine_log(t->e, SC_LOG_WARN, "unref of task %s without a reference; ignored", t->id);
    return;
  }
  if (--t->refs == 0 && t->released) free_remains(t);
}

/* ---- requests ---- */

bool sc__task_self_paused(const sc_task *t) {
  return t->pause_requested && t->pause_kind != NULL;
}

int sc__task_check_held(const sc_task *t, const char *op) {
  if (t->released)
    return sc__error(SC_ETRANSITION, "cannot %s task %s: it is %s and the engine let it go", op,
                     t->id, sc_task_status_name((sc_task_status)t->status));
  if (t->release_requested)
    return sc__error(SC_ETRANSITION, "cannot %s task %s: it is %s and being released", op, t->id,
                     sc_task_status_name((sc_task_status)t->status));
  return SC_OK;
}

/* A pause the task asks itself; the first reason counts. */
static void self_pause(sc_task *t, const char *kind, int code, const char *message) {
  if (t->pause_kind == NULL) {
    t->pause_kind = kind;
    t->pause_code = code;
    free(t->pause_reason);
    /* Out of memory the reason is NULL: task.paused then gives the code's text. */
    t->pause_reason = strdup(message && *message ? message : sc_strerror(code));
  }
  t->pause_requested = true;
}

void sc__task_request(sc_task *t, sc__request what, int code, const char *message) {
  sc_task_status s = (sc_task_status)t->status;
  switch (what) {
    case SC__REQUEST_PAUSE: t->pause_requested = true; break;
    case SC__REQUEST_RESUME:
      if (s != SC_TASK_PAUSED) {
        t->pause_requested = false; /* not yet in effect: withdraw it */
        return;
      }
      t->resume_requested = true;
      break;
    case SC__REQUEST_CANCEL:
      if (!t->cancel_requested) {
        free(t->cancel_reason);
        t->cancel_reason = message ? strdup(message) : NULL;
        t->cancel_requested = true;
      }
      break;
    case SC__REQUEST_RELEASE: t->release_requested = true; break;
    case SC__REQUEST_LOCK_LOST:
      /* Someone else may hold the tenant now: stop at the next boundary, and say why. A task
       * that is not running (paused, failed) only notes it; resuming it takes the lock again. */
      t->lock_lost = true;
      if (!sc_transition_allowed(s, SC_TASK_PAUSED)) return;
      self_pause(t, "lock-lost", code, message);
      break;
    case SC__REQUEST_ACK_FAILED:
      if (sc_task_status_is_terminal(s) || s == SC_TASK_FAILED || s == SC_TASK_ROLLBACK_FAILED) {
        /* Nothing further runs anyway; say so where someone can read it. */
        sc__engine_log(t->e, SC_LOG_ERROR, "task %s (%s): an event was not stored: %s", t->id,
                       sc_task_status_name(s), message ? message : sc_strerror(code));
        return;
      }
      self_pause(t, "ack-failed", code, message);
      break;
  }
  sc__task_check(t);
  sc__engine_enqueue(t->e, t);
}

/* ---- invariants ---- */

#ifndef NDEBUG
#include <assert.h>

static bool status_in(sc_task_status s, unsigned mask) {
  return (mask >> s) & 1u;
}
#define BIT(s) (1u << (s))

void sc__task_check(const sc_task *t) {
  assert(t->status <= SC_TASK_ROLLBACK_FAILED);
  sc_task_status s = (sc_task_status)t->status;
  if (t->released) {
    assert(!t->active && !t->holds_lock && t->ctx == NULL && t->approval == NULL);
    assert(!sc__queue_linked(&t->ready_link));
    return;
  }
  const unsigned running = BIT(SC_TASK_RUNNING) | BIT(SC_TASK_ROLLING_BACK);
  const unsigned holding = running | BIT(SC_TASK_AWAITING_APPROVAL) | BIT(SC_TASK_PAUSED);
  const unsigned failed = BIT(SC_TASK_FAILED) | BIT(SC_TASK_ROLLBACK_FAILED);
  if (s == SC_TASK_PAUSED)
    assert(status_in((sc_task_status)t->paused_from, holding & ~BIT(SC_TASK_PAUSED)));
  /* slots and locks */
  assert(!t->holds_lock || t->active);
  assert(!t->lock_lost || t->holds_lock);
  if (status_in(s, holding)) assert(t->active);
  if (s == SC_TASK_CREATED || s == SC_TASK_PENDING) assert(!t->active || t->step == STEP_ADMIT);
  if (sc_task_status_is_terminal(s)) assert(!t->active);
  if (status_in(s, failed)) assert(!t->active || t->retry_requested || t->rollback_requested);
  if (sc__queue_linked(&t->pending_link)) assert(s == SC_TASK_PENDING && !t->active);
  if (t->holds_lock) assert(sc__map_get(&t->e->tenants, t->tenant) == t);
  /* the running attempt */
  if (t->ctx != NULL) assert(status_in(s, running) && t->ctx->task == t);
  assert((t->step == STEP_STAGE_DONE) == (t->ctx != NULL && t->ctx->state == CTX_FINISHED));
  /* the approval gate */
  if (s == SC_TASK_AWAITING_APPROVAL) assert(t->approval != NULL);
  if (t->approval != NULL && s != SC_TASK_AWAITING_APPROVAL) assert(t->approval->decided);
  if (t->step == STEP_DECIDED) assert(t->approval != NULL && t->approval->decided);
  /* timers */
  if (t->timer_use != TIMER_NONE) assert(t->timer != NULL);
  if (t->timer_use == TIMER_APPROVAL)
    assert(s == SC_TASK_AWAITING_APPROVAL && t->approval != NULL && !t->approval->decided);
  if (t->timer_use == TIMER_ADMIT) assert(s == SC_TASK_CREATED || s == SC_TASK_PENDING);
  if (t->timer_use == TIMER_TIMEOUT) assert(t->ctx != NULL);
  /* requests */
  assert(!(t->retry_requested && t->rollback_requested));
  if (t->retry_requested) assert(s == SC_TASK_FAILED);
  if (t->rollback_requested || t->release_requested) assert(status_in(s, failed));
  if (t->resume_requested) assert(s == SC_TASK_PAUSED);
  if (t->pause_reason != NULL) assert(t->pause_kind != NULL);
  if (t->pause_kind != NULL) assert(t->pause_requested);
  if (sc_task_status_is_terminal(s))
    assert(!t->pause_requested && !t->resume_requested && !t->cancel_requested &&
           !t->retry_requested && !t->rollback_requested && !t->release_requested);
  /* the plan and the position in it */
  assert(!t->compensating || t->rollback);
  assert(t->run_plan == t->plan || (t->rollback && !t->compensating));
  int32_t n = (int32_t)t->run_plan->nstages;
  if (t->compensating) {
    assert(t->index >= -1 && t->index < n);
  } else {
    assert(t->end_index < n && t->index >= 0 && t->index <= t->end_index + 1);
  }
  /* acknowledgements */
  if (t->started_barrier_seq != 0) assert(t->barrier_pending > 0);
}
#endif
