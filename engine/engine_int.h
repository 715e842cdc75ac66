/* Internals of the engine (not installed): the plan, task, stage context and engine structs and
 * the functions the engine's files share. */
#ifndef STAGECOACH_ENGINE_INT_H
#define STAGECOACH_ENGINE_INT_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "stagecoach/engine.h"
#include "../events/internal.h"

/* ---- plans (plan.c) ---- */

typedef struct sc__kind {
  char *name;
  sc_stage_kind vt;
  void *udata;
} sc__kind;

typedef struct sc__fn {
  char *name;
  sc_stage_fn fn;
  void *udata;
} sc__fn;

typedef struct sc__stage {
  char *name, *kind;
  cJSON *params; /* never NULL */
  uint32_t timeout_ms;
  sc_retry_policy retry;
  sc_approval_policy approval;
  sc_effect effect;
  /* Resolved on first use and re-resolved when the registry changes (generation). */
  unsigned kind_gen;
  const sc__kind *kind_ref;
  const sc__fn *fn_ref;
} sc__stage;

typedef struct sc__plan {
  unsigned refs;
  size_t nstages;
  sc__stage *stages;
  char fingerprint[72];
  char key[72];           /* interning key: digest of the canonical config and previous config */
  cJSON *config;          /* owned */
  cJSON *previous_config; /* owned; may be NULL */
  struct sc__plan *previous_plan; /* the plan of previous_config; built on first use */
  bool interned;
} sc__plan;

struct sc_plan_builder {
  sc_engine *engine; /* NULL: no kind check */
  sc__stage *stages;
  size_t n, cap;
  sc__map names; /* name -> index + 1, for the duplicate check */
  char *error;   /* the factory's message */
};

void sc__builder_init(sc_plan_builder *b, sc_engine *e);
void sc__builder_free(sc_plan_builder *b);
/* Runs the factory and takes the builder's stages into a new plan (refs = 1). config and
 * previous_config are copied unless own_configs (then taken over). */
int sc__plan_build(sc_engine *e, sc_stage_factory_fn factory, void *udata, const cJSON *config,
                   sc__plan **out);
void sc__plan_unref(sc_engine *e, sc__plan *p);
/* The shared plan of a config (built and interned on first use); a new reference. */
int sc__plan_get(sc_engine *e, const cJSON *config, const cJSON *previous, sc__plan **out);
/* The plan of p's previous config, built on first use; borrowed from p. */
int sc__plan_previous(sc_engine *e, sc__plan *p, sc__plan **out);
int sc__stage_index(const sc__plan *p, const char *name);
/* "prepare, deploy, verify" into buf (truncated with "..." if needed). */
void sc__plan_stage_list(const sc__plan *p, char *buf, size_t cap);

/* Canonical JSON + SHA-256 with a reusable context (sha may be NULL). */
int sc__digest(sc__sha *sha, sc__buf *scratch, const cJSON *value, char out[72]);

/* ---- stage contexts (stage.c) ---- */

enum { CTX_RUNNING, CTX_FINISHED, CTX_DETACHED };

struct sc_stage_ctx {
  sc_engine *e;
  sc_task *task;  /* NULL once detached */
  sc__plan *plan; /* a reference while detached, so names and params stay valid */
  const sc__stage *stage;
  const cJSON *config;
  int32_t index;
  uint32_t attempt;
  uint8_t state;
  bool rollback, compensation, cancelled;
  const char *mode; /* static: run, retry, rollback, compensate */
  void *data;
  /* The idempotency key's parts, taken when the attempt starts, and the key once asked for. */
  const char *root_id; /* borrowed from the task; NULL once detached */
  uint32_t intent;
  char key[65];
  char traceparent[56]; /* "" when the task has no trace context */
  int64_t started_ns;
  /* the result */
  int code;
  bool retryable;
  char *message;
  cJSON *output;
  sc_stage_ctx *next; /* free list, or the engine's detached list */
  sc_stage_ctx *prev;
};

/* ---- tasks (task.c) ---- */

typedef enum task_step {
  STEP_WAIT,        /* waiting for something outside: a stage, a timer, a person, a resume */
  STEP_ADMIT,       /* PENDING: take the tenant lock and a slot, then start */
  STEP_BEGIN_STAGE, /* at a stage boundary: pause, cancel, approval, or start stage `index` */
  STEP_STAGE_DONE,  /* the running attempt finished: record it and move on */
  STEP_RELEASE,     /* terminal: free the task once its events are acknowledged */
  STEP_DECIDED,     /* a gate was rejected or timed out: apply it once its event is stored */
  STEP_LAUNCH,      /* stage.started emitted: start the attempt (once it is stored, if a barrier) */
} task_step;

typedef enum task_timer_use {
  TIMER_NONE,
  TIMER_TIMEOUT,
  TIMER_BACKOFF,
  TIMER_APPROVAL,
  TIMER_ADMIT
} task_timer_use;

typedef struct sc__decision {
  bool approve;
  char *reviewer, *comment;
  struct sc__decision *next;
} sc__decision;

/* The gate a task waits at; allocated when the approval is requested. */
typedef struct sc__approval_state {
  int32_t index;      /* the stage waited for */
  const char *reason; /* "policy" or "irreversible-stage-in-flight" */
  uint32_t needed;
  char **reviewers; /* who approved so far */
  uint32_t napproved;
  int64_t requested_ns, deadline_ns;        /* deadline 0: none */
  sc__decision *decisions, *decisions_tail; /* made by callers, applied by the task's next step */
  /* Rejected or timed out; applied by STEP_DECIDED after the event's barrier: */
  bool decided, decided_fail; /* fail the task (else cancel it) */
  bool timeout_due;           /* the timeout fired while a barrier held: applied after it */
  int decided_code;
  char *decided_why;
} sc__approval_state;

/* The result of one attempt, taken from its context or made by the engine (a timeout). */
typedef struct sc__result {
  int code;
  bool retryable;
  char *message; /* owned */
  cJSON *output; /* owned */
  int64_t started_ns;
} sc__result;

struct sc_task {
  sc_engine *e;
  sc__plan *plan;     /* the plan of config (shared, referenced) */
  sc__plan *run_plan; /* the plan being run: plan, or plan->previous_plan in a rollback */
  char *id, *tenant, *plan_id, *traceparent; /* one allocation behind id */
  char *tracestate;                          /* in the same allocation; may be NULL */
  char *root_id;                             /* id, or a copy for a recovered task */
  uint32_t intent;                           /* sc_task_intent() */
  char
      attempt_span[17]; /* the span id of the attempt stage.started announced; "" without a trace */
  cJSON *context;       /* NULL: {} */
  char digest[72];      /* of the context; valid when !digest_stale */
  bool digest_stale;
  uint8_t status, paused_from, step, timer_use;
  bool queued, pending_listed, active, rollback, cancel_requested, pause_requested, recovered;
  bool holds_lock, lock_lost, stepping, resume_requested, release_requested, rate_passed;
  bool compensating; /* a COMPENSATE rollback: stages run backwards through compensate */
  bool retry_requested, retry_reset, rollback_requested;
  uint8_t rollback_how;     /* sc_rollback_strategy of the requested rollback */
  int32_t retry_from;       /* the stage a requested retry starts at */
  int32_t failed_index;     /* the stage the forward run failed at; -1 */
  int32_t gate_index;       /* a recovered task asks approval before this irreversible stage; -1 */
  int32_t approved_index;   /* the stage whose approval was granted; -1 */
  int32_t index, end_index; /* run stages index .. end_index */
  uint32_t attempt;
  unsigned retry_count;
  uint64_t seq, epoch;
  uint32_t barrier_pending, acks_pending;
  uint64_t started_barrier_seq; /* the seq of a stage.started that is a barrier; 0: none */
  /* The serialized stage.completed carries the whole context only now and then (DESIGN.md,
   * "Checkpoint"): the canonical size of the last snapshot, the bytes of outputs since, and
   * whether the next one must carry it (the first of a run). */
  size_t context_bytes, snapshot_bytes, outputs_since_snapshot;
  bool snapshot_due;
  sc_stage_ctx *ctx;      /* the running attempt */
  uv_timer_t *timer;      /* lazily created */
  char *pause_reason;     /* a failed ack's or a lost lock's message, for task.paused */
  const char *pause_kind; /* with pause_reason: "ack-failed" or "lock-lost" */
  int pause_code;
  char *cancel_reason;
  cJSON *recovery_plan; /* emitted as task.recovered at admission */
  sc__approval_state *approval;
  sc_task *next_ready, *next_pending, *prev_pending;
};

/* ---- the engine (engine.c) ---- */

typedef struct sc__post {
  void (*fn)(sc_engine *, void *);
  void *udata;
  struct sc__post *next;
} sc__post;

struct sc_engine {
  uv_loop_t *loop;
  bool own_loop;
  sc_engine_options opts;
  char *source;
  sc__bus *bus;
  sc__sha *sha;
  sc__buf scratch; /* canonical JSON for digests */
  sc__kind *kinds;
  size_t nkinds;
  sc__fn *fns;
  size_t nfns;
  unsigned kind_gen;
  sc__map tasks;   /* id -> sc_task */
  sc__map plans;   /* key -> sc__plan */
  sc__map tenants; /* tenant -> active task (tenant_exclusive) */
  size_t active;   /* tasks holding a slot */
  sc_task *ready_head, *ready_tail;
  sc_task *pending_head, *pending_tail; /* waiting for admission, in submission order */
  uv_idle_t kick;
  bool kick_active, draining, freeing;
  uv_async_t async;
  uv_mutex_t post_lock;
  sc__post *posts;
  unsigned closing; /* handles whose close callback has not run yet */
  sc_stage_ctx *free_ctx;
  sc_stage_ctx *detached; /* stages the engine gave up on, still running */
  uint64_t uuid_state[2];
  int64_t uuid_last_ms;
  uint32_t uuid_seq;
  sc_lock_provider locks; /* valid when has_locks */
  bool has_locks;
  uv_timer_t lock_retry, lock_renew;
  double tokens; /* recovery rate limiter */
  int64_t tokens_at_ns;
  cJSON *empty; /* {} for a task without context */
  char empty_digest[72];
};

void sc__engine_log(sc_engine *e, sc_log_level level, const char *fmt, ...) SC__PRINTF(3, 4);
const sc__kind *sc__engine_kind(sc_engine *e, const char *name);
const sc__fn *sc__engine_fn(sc_engine *e, const char *name);
void sc__engine_enqueue(sc_engine *e, sc_task *t);
void sc__engine_closing_done(sc_engine *e);
void sc__uuid_v7(sc_engine *e, char out[37]);
/* Sixteen lowercase hex digits, not all zero: a new span id. */
void sc__span_id(sc_engine *e, char out[17]);
void sc__builtin_kinds(sc_engine *e);

/* task.c */
int sc__task_create(sc_engine *e, const sc_task_spec *spec, sc__plan *plan, sc_task **out);
void sc__task_step(sc_task *t);
void sc__task_emit(sc_task *t, sc_event_type type, const sc__stage *stage, int32_t index,
                   uint32_t attempt, cJSON *data /* taken */);
void sc__task_settle(void *owner, sc_event_type type, uint64_t seq, int status, const char *msg,
                     void *udata);
void sc__task_free(sc_task *t);
int sc__task_set_status(sc_task *t, sc_task_status to);
/* admission.c */
void sc__task_release_slot(sc_task *t);
bool sc__task_try_acquire(sc_task *t);
void sc__wake_pending(sc_engine *e);
void sc__pending_append(sc_task *t);
void sc__pending_unlink(sc_task *t);
uint64_t sc__rate_wait_ms(sc_engine *e);
int sc__task_reacquire_lost_lock(sc_task *t);
/* rollback.c: applies a requested retry or rollback in the task's step. */
void sc__task_apply_retry(sc_task *t);
void sc__task_apply_rollback(sc_task *t);
void sc__task_stage_finished(sc_task *t, sc_stage_ctx *ctx);
void sc__task_stop_timer(sc_task *t);
int sc__task_start_timer(sc_task *t, task_timer_use use, uint64_t ms);
const cJSON *sc__task_context(const sc_task *t);
int sc__task_refresh_digest(sc_task *t);
void sc__task_enter_terminal(sc_task *t, sc_task_status to, sc_event_type type, cJSON *data);
cJSON *sc__error_json(int code, const char *message);
/* task.created; req and the rest for a recovered task (req NULL for a new one). */
void sc__emit_created(sc_task *t, const sc_recovery_request *req, const char *mode,
                      int32_t start_index);

/* stage.c */
sc_stage_ctx *sc__ctx_new(sc_task *t, const sc__stage *stage, int32_t index);
void sc__ctx_free(sc_engine *e, sc_stage_ctx *ctx);
void sc__ctx_detach(sc_stage_ctx *ctx, bool call_cancel);
/* Fills ctx->key (once). */
void sc__ctx_fill_key(sc_stage_ctx *ctx);
int sc__ctx_start(sc_stage_ctx *ctx);

#endif
