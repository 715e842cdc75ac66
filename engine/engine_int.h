/* Internals of the engine (not installed): the plan, task, stage context and engine structs and
 * the functions the engine's files share.
 *
 * ---- The invariants of a task (struct sc_task below; sc__task_check() asserts them) ----
 *
 * Who writes what. Only the task's own step (task.c, and the steps it delegates to rollback.c and
 * admission.c) changes its status, index, attempt, context and timer. Everything else that wants
 * something of a task -- a caller's pause, resume, cancel or release, a lost tenant lock, a
 * failed acknowledgement -- asks through sc__task_request(), which records the request and queues
 * the task; approvals go onto approval->decisions, retry and rollback set their *_requested
 * fields (rollback.c). So a status never changes from inside another module's code.
 *
 * Held or let go. A task is held by the engine (in e->tasks, found by id) from sc__task_create()
 * until sc__task_let_go(): its terminal event acknowledged, sc_task_release(), or sc_engine_free().
 * A let-go task with references (refs > 0) lives on as a read-only handle: released is true, it is
 * on e->let_go (or on no list once the engine is freed, then e is NULL), it holds no slot, lock,
 * timer, stage, approval or request, and keeps id, status, context, plan and counters for the
 * accessors. The engine's own code never sees a released task; control calls refuse it.
 *
 * For a task the engine holds:
 *  - status is one of the table's; paused_from is meaningful only in PAUSED and is RUNNING,
 *    ROLLING_BACK or AWAITING_APPROVAL.
 *  - Slots: holds_lock implies active (the lock is taken with the slot and dropped with it);
 *    lock_lost implies holds_lock. RUNNING, ROLLING_BACK, AWAITING_APPROVAL and PAUSED imply
 *    active; CREATED and PENDING do not (admission gives the slot as the task leaves PENDING);
 *    COMPLETED, CANCELLED, ROLLED_BACK do not, and FAILED / ROLLBACK_FAILED do only while a
 *    retry or rollback is requested (the call takes the slot, so that it can refuse SC_EBUSY).
 *  - Lists: on e->pending (pending_link linked) only in PENDING and without a slot; on e->ready
 *    (ready_link linked) whenever its step should run soon, never while the engine is freeing.
 *  - ctx (the running attempt) only in RUNNING or ROLLING_BACK, with ctx->task == t; step is
 *    STEP_STAGE_DONE exactly when that attempt finished and was not yet taken (CTX_FINISHED).
 *  - approval != NULL in AWAITING_APPROVAL always; outside it only once decided (a decided gate
 *    that a failed ack paused, or the resumed task about to apply it in STEP_DECIDED).
 *    STEP_DECIDED implies a decided approval.
 *  - timer_use != TIMER_NONE implies timer != NULL; TIMER_APPROVAL implies an undecided approval
 *    in AWAITING_APPROVAL; TIMER_ADMIT implies CREATED or PENDING.
 *  - Requests: at most one of retry_requested and rollback_requested, each only in FAILED (a
 *    rollback also in ROLLBACK_FAILED); release_requested only in FAILED or ROLLBACK_FAILED;
 *    resume_requested only in PAUSED. A pause that the task asked itself (a failed ack, a lost
 *    lock) has pause_kind set and pause_requested true; pause_reason (may be NULL when out of
 *    memory) goes only with pause_kind. None of these outlives a terminal status.
 *  - rollback: the task runs backwards or with the previous config; compensating implies it.
 *    run_plan is plan, except in a redeploying rollback, where it is plan->previous_plan.
 *  - index: forward, 0 <= index <= end_index + 1 and end_index < run_plan->nstages; compensating,
 *    -1 <= index < run_plan->nstages.
 *  - Acks: started_barrier_seq != 0 implies barrier_pending > 0; no step runs while
 *    barrier_pending > 0. digest is the context's when !digest_stale. */
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
  unsigned refs; /* tasks and detached stages; 0 while it waits in the cache */
  size_t nstages;
  sc__stage *stages;
  char fingerprint[72];
  char key[72];           /* interning key: digest of the canonical config and previous config */
  cJSON *config;          /* owned */
  cJSON *previous_config; /* owned; may be NULL */
  struct sc__plan *previous_plan; /* the plan of previous_config; built on first use */
  bool interned;
  size_t bytes;   /* the canonical text of its configs: what the cache counts */
  sc__queue idle; /* on sc_engine.idle_plans while no task holds it */
} sc__plan;

struct sc_plan_builder {
  sc_engine *engine; /* NULL: no kind check */
  sc__stage *stages;
  size_t n, cap;
  sc__map names; /* name -> index + 1, for the duplicate check */
  char *error;   /* the factory's message */
  bool refused;  /* a structured refusal was recorded (sc_plan_last_error) */
  struct sc__plan_refusal
      *first; /* a copy of the first refusal's record (plan.c), reported for the build */
};

void sc__builder_init(sc_plan_builder *b, sc_engine *e);
void sc__builder_free(sc_plan_builder *b);
/* After a sc__plan_refuse* for b: the builder keeps the first refusal's message (and the record
 * stays the first refusal's). */
void sc__builder_refused(sc_plan_builder *b);
/* sc_plan_add_stage that takes over params (spec->params points at it; freed on failure too), so
 * the JSON factory does not copy each stage's params twice. */
int sc__plan_add_stage_owned(sc_plan_builder *b, const sc_stage_spec *spec, cJSON *params);
/* Runs the factory and takes the builder's stages into a new plan (refs = 1). config and
 * previous_config are copied unless own_configs (then taken over). */
int sc__plan_build(sc_engine *e, sc_stage_factory_fn factory, void *udata, const cJSON *config,
                   sc__plan **out);
/* Drops a reference; a plan of e's that no task holds waits in the cache (docs/design.md, "Plan
 * cache") until it is evicted or the engine is freed. */
void sc__plan_unref(sc_engine *e, sc__plan *p);
/* Frees every cached plan (sc_engine_free). */
void sc__plan_cache_free(sc_engine *e);
/* The shared plan of a config (from the cache, or built and interned); a new reference. */
int sc__plan_get(sc_engine *e, const cJSON *config, const cJSON *previous, sc__plan **out);
/* The plan of p's previous config, built on first use; borrowed from p. */
int sc__plan_previous(sc_engine *e, sc__plan *p, sc__plan **out);
int sc__stage_index(const sc__plan *p, const char *name);
/* "prepare, deploy, verify" into buf (truncated with "..." if needed). */
void sc__plan_stage_list(const sc__plan *p, char *buf, size_t cap);

/* Structured refusals (sc_plan_last_error). Each call that can refuse a plan clears the record
 * first, so that afterwards the record is about that call. Each sc__plan_refuse* records a
 * refusal, sets the thread's message (sc_error_message) and returns code; the problem
 * (printf-style) says what is wrong without naming the stage or the field. */
void sc__plan_error_clear(void);
/* A stage's field: field is the path inside the stage ("retry.multiplier"; NULL: the stage
 * itself); stage is its name or NULL. Message: stage 2 ("verify"): "timeout_ms" PROBLEM. */
int sc__plan_refuse_stage(int code, int32_t stage_index, const char *stage, const char *field,
                          const char *fmt, ...) SC__PRINTF(5, 6);
/* A member of the config (field "stages"), or the config itself (field NULL). Message:
 * config: "stages" PROBLEM, or config PROBLEM. */
int sc__plan_refuse_config(int code, const char *field, const char *fmt, ...) SC__PRINTF(3, 4);
/* A value of the config (or of previous_config) that could not be read back from a log (field:
 * its JSON path; NULL or "": the config itself). Message: config: "stages[0].name" PROBLEM. */
int sc__plan_refuse_value(int code, bool previous, const char *field, const char *fmt, ...)
    SC__PRINTF(4, 5);
/* The entry check of a task's values (docs/design.md, "Values"): SC_EINVAL for a config,
 * previous_config or context that could not be written into a log and read back as the same value
 * (sc__json_unfit). The config's and previous_config's are plan refusals (sc_plan_last_error, with
 * the JSON path as field); op starts the context's message ("submit", "recover"). */
int sc__check_values(const char *op, const cJSON *config, const cJSON *previous,
                     const cJSON *context);
/* Not about a field (a fingerprint mismatch, an unknown stage, another factory's words): stage
 * is the stage it names or NULL; the message is the problem. */
int sc__plan_refuse_plan(int code, const char *stage, const char *fmt, ...) SC__PRINTF(3, 4);
/* Marks the recorded refusal as one of previous_config's plan (the message gets the prefix
 * "previous_config: "); returns code. */
int sc__plan_refuse_previous(int code);
/* Marks the recorded refusal as one about previous_config, its message unchanged. */
void sc__plan_error_mark_previous(void);

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
  sc__queue link;                 /* on the engine's detached list */
  struct sc_stage_ctx *next_free; /* on the engine's free list, a stack of spares */
};

/* ---- tasks (task.c) ---- */

typedef enum task_step {
  STEP_WAIT,        /* waiting for something outside: a stage, a timer, a person, a resume */
  STEP_ADMIT,       /* PENDING: take the tenant lock and a slot, then start */
  STEP_BEGIN_STAGE, /* at a stage boundary: pause, cancel, approval, or start stage `index` */
  STEP_STAGE_DONE,  /* the running attempt finished: record it and move on */
  STEP_RELEASE,     /* terminal or released: let it go once its events are acknowledged */
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
  sc__queue link; /* on the approval's decisions, oldest first */
} sc__decision;

/* The gate a task waits at; allocated when the approval is requested. */
typedef struct sc__approval_state {
  int32_t index;      /* the stage waited for */
  const char *reason; /* "policy" or "irreversible-stage-in-flight" */
  uint32_t needed;
  char **reviewers; /* who approved so far */
  uint32_t napproved;
  size_t reviewers_cap;
  int64_t requested_ns, deadline_ns; /* deadline 0: none */
  sc__queue decisions; /* sc__decision: made by callers, applied by the task's next step */
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
  sc_engine *e;       /* NULL once the engine is freed (a released task with references) */
  sc__plan *plan;     /* the plan of config (shared, referenced) */
  sc__plan *run_plan; /* the plan being run: plan, or plan->previous_plan in a rollback */
  char *id, *tenant, *plan_id, *traceparent; /* one allocation behind id */
  char *tracestate;                          /* in the same allocation; may be NULL */
  char *root_id;                             /* id, or a copy for a recovered task */
  uint32_t intent;                           /* sc_task_intent() */
  unsigned refs;                             /* the caller's sc_task_ref()s */
  char
      attempt_span[17]; /* the span id of the attempt stage.started announced; "" without a trace */
  cJSON *context;       /* NULL: {} */
  char digest[72];      /* of the context; valid when !digest_stale */
  bool digest_stale;
  uint8_t status, paused_from, step, timer_use;
  bool released; /* the engine let it go; only references keep it */
  bool active, rollback, cancel_requested, pause_requested, recovered;
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
  const char *pause_kind; /* a pause the task asked itself: "ack-failed" or "lock-lost" */
  int pause_code;
  char *cancel_reason;
  cJSON *recovery_plan; /* emitted as task.recovered at admission */
  sc__approval_state *approval;
  sc__queue ready_link;   /* on e->ready: its step runs soon */
  sc__queue pending_link; /* on e->pending: waits for a slot or its tenant's lock; or, released,
                             on e->let_go */
};

/* ---- the engine (engine.c) ---- */

/* A call posted from another thread. Kept a plain singly linked stack on purpose, not an
 * sc__queue: it is pushed under post_lock and taken whole by one pointer swap, so the lock is held
 * for two stores, and the loop thread walks its copy with no lock at all. */
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
  size_t nkinds, kinds_cap;
  sc__fn *fns;
  size_t nfns, fns_cap;
  unsigned kind_gen;
  sc__map tasks;        /* id -> sc_task */
  sc__map plans;        /* key -> sc__plan: held by tasks, or idle in the cache */
  sc__queue idle_plans; /* the cache: plans no task holds, least recently used first */
  size_t idle_count, idle_bytes;
  sc__map tenants;   /* tenant -> active task (tenant_exclusive) */
  size_t active;     /* tasks holding a slot */
  sc__queue ready;   /* sc_task.ready_link: tasks whose step runs soon, in order */
  sc__queue pending; /* sc_task.pending_link: waiting for admission, in submission order */
  sc__queue let_go;  /* sc_task.pending_link: released tasks the caller still references */
  uv_idle_t kick;
  bool kick_active, draining, freeing;
  uv_async_t async;
  uv_mutex_t post_lock;
  sc__post *posts;
  unsigned closing;       /* handles whose close callback has not run yet */
  sc_stage_ctx *free_ctx; /* contexts to reuse: a stack through next_free (a pop and a push per
                             attempt, cheaper than a list node's four pointers) */
  sc__queue detached;     /* sc_stage_ctx.link: stages the engine gave up on, still running */
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
/* The engine lets the task go: everything it holds for the engine (slot, lock, lists, timer,
 * stage, approval, acks) is given up and the task leaves e->tasks. Without references it is freed;
 * with some it stays readable until the last sc_task_unref(). */
void sc__task_let_go(sc_task *t);
/* At sc_engine_free, after every task was let go: the released tasks that the caller still
 * references lose their engine (their plans no longer belong to its interning map). */
void sc__task_orphan_let_go(sc_engine *e);
int sc__task_set_status(sc_task *t, sc_task_status to);
/* The attempt in ctx finished (sc_stage_complete/fail): its result is taken by the next step. */
void sc__task_stage_finished(sc_task *t, sc_stage_ctx *ctx);
void sc__task_stop_timer(sc_task *t);
int sc__task_start_timer(sc_task *t, task_timer_use use, uint64_t ms);
const cJSON *sc__task_context(const sc_task *t);
int sc__task_refresh_digest(sc_task *t);
cJSON *sc__error_json(int code, const char *message);
/* task.created; req and the rest for a recovered task (req NULL for a new one). */
void sc__emit_created(sc_task *t, const sc_recovery_request *req, const char *mode,
                      int32_t start_index);

/* What a task is asked to do from outside its step: the one way (besides approvals and the
 * retry and rollback requests of rollback.c) that other code changes what a task will do. Each
 * records the request and queues the task; its next step applies it. */
typedef enum sc__request {
  SC__REQUEST_PAUSE,      /* a caller's pause: at the next stage boundary */
  SC__REQUEST_RESUME,     /* PAUSED: resume; otherwise withdraw a caller's pause not yet taken */
  SC__REQUEST_CANCEL,     /* message: the reason (copied, may be NULL); the first one counts */
  SC__REQUEST_RELEASE,    /* forget a FAILED or ROLLBACK_FAILED task */
  SC__REQUEST_LOCK_LOST,  /* the tenant lock's renew failed: pause with code and message */
  SC__REQUEST_ACK_FAILED, /* an event was not stored: pause with code and message */
} sc__request;
void sc__task_request(sc_task *t, sc__request what, int code, const char *message);
/* Whether the pause the task waits for is one it asked itself (ack failed, lock lost), which only
 * a resume of the paused task ends. */
bool sc__task_self_paused(const sc_task *t);
/* SC_OK, or SC_ETRANSITION naming the task's status when the engine let the task go or is about
 * to (op is the refused operation, for the message). */
int sc__task_check_held(const sc_task *t, const char *op);

/* The invariants at the top of this file; asserts in a build without NDEBUG. */
#ifdef NDEBUG
#define sc__task_check(t) ((void)0)
#else
void sc__task_check(const sc_task *t);
#endif

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

/* stage.c */
sc_stage_ctx *sc__ctx_new(sc_task *t, const sc__stage *stage, int32_t index);
void sc__ctx_free(sc_engine *e, sc_stage_ctx *ctx);
void sc__ctx_detach(sc_stage_ctx *ctx, bool call_cancel);
/* Fills ctx->key (once). */
void sc__ctx_fill_key(sc_stage_ctx *ctx);
int sc__ctx_start(sc_stage_ctx *ctx);

#endif
