/* stagecoach engine: plans, stage kinds, tasks, subscriptions and restart recovery.
 *
 * Threading: an engine and everything reached through it belong to the thread that runs its libuv
 * loop; the one exception is sc_engine_post(). Ownership is stated on every pointer. */
#ifndef STAGECOACH_ENGINE_H
#define STAGECOACH_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cjson/cJSON.h>

#include <stagecoach/error.h>
#include <stagecoach/events.h>

#ifdef __cplusplus
extern "C" {
#endif

/* libuv's loop type, declared rather than included so that this header stands alone in strict
 * C11; a program that drives the loop includes <uv.h> itself. */
typedef struct uv_loop_s uv_loop_t;

typedef struct sc_engine sc_engine; /* opaque handles */
typedef struct sc_task sc_task;
/* sc_subscription: <stagecoach/events.h> */

/* ---- plans ---- */

typedef enum sc_effect {
  SC_EFFECT_IDEMPOTENT,
  SC_EFFECT_COMPENSABLE,
  SC_EFFECT_IRREVERSIBLE
} sc_effect;
typedef enum sc_approval_action {
  SC_ACTION_APPROVE,
  SC_ACTION_REJECT,
  SC_ACTION_FAIL,
  SC_ACTION_CANCEL
} sc_approval_action;

/* The value structs of a plan (the policies and the stage spec) are versioned like the options
 * structs: each starts with its version, filled by its inline _init() (docs/design.md, "ABI"). */
#define SC_RETRY_POLICY_VERSION    1
#define SC_APPROVAL_POLICY_VERSION 1
#define SC_STAGE_SPEC_VERSION      1

typedef struct sc_retry_policy {
  unsigned version;            /* SC_RETRY_POLICY_VERSION */
  uint32_t max_attempts;       /* 0 or 1: no retry */
  uint32_t initial_backoff_ms; /* delay before the second attempt */
  uint32_t max_backoff_ms;     /* cap; 0: no cap */
  double multiplier;           /* growth per attempt; 0 is read as 2 */
} sc_retry_policy;

typedef struct sc_approval_policy {
  unsigned version; /* SC_APPROVAL_POLICY_VERSION */
  bool required;
  uint32_t approvers_needed;     /* N distinct approvers; 0 is read as 1 */
  uint32_t timeout_ms;           /* 0: wait forever */
  sc_approval_action on_timeout; /* APPROVE, REJECT or FAIL */
  sc_approval_action on_reject;  /* CANCEL (default) or FAIL */
} sc_approval_policy;

typedef struct sc_stage_spec {
  unsigned version; /* SC_STAGE_SPEC_VERSION */
  const char *name, *kind;
  const cJSON *params; /* copied; NULL: {} */
  uint32_t timeout_ms; /* 0: none */
  sc_retry_policy retry;
  sc_approval_policy approval;
  sc_effect effect;
} sc_stage_spec;

/* The _init() functions are inline, so that they fill exactly the struct the caller was compiled
 * with and never write past it; the library reads only the fields of the version they set. */

/* Fills the defaults: no retry (multiplier 2). */
static inline void sc_retry_policy_init(sc_retry_policy *p) {
  memset(p, 0, sizeof(*p));
  p->version = SC_RETRY_POLICY_VERSION;
  p->multiplier = 2.0;
}

/* Fills the defaults: no approval (one approver, on_timeout REJECT, on_reject CANCEL). */
static inline void sc_approval_policy_init(sc_approval_policy *p) {
  memset(p, 0, sizeof(*p));
  p->version = SC_APPROVAL_POLICY_VERSION;
  p->approvers_needed = 1;
  p->on_timeout = SC_ACTION_REJECT;
  p->on_reject = SC_ACTION_CANCEL;
}

/* Fills the defaults: no timeout, the policies' defaults, effect IDEMPOTENT. */
static inline void sc_stage_spec_init(sc_stage_spec *s) {
  memset(s, 0, sizeof(*s));
  s->version = SC_STAGE_SPEC_VERSION;
  sc_retry_policy_init(&s->retry);
  sc_approval_policy_init(&s->approval);
  s->effect = SC_EFFECT_IDEMPOTENT;
}

typedef struct sc_plan_builder sc_plan_builder;

/* Appends a stage; everything is copied. SC_EINVAL on a missing or duplicate name, a missing kind
 * or an out-of-range number (the message names the stage index and the field, and
 * sc_plan_last_error() has them as fields). */
SC_EXTERN int sc_plan_add_stage(sc_plan_builder *b, const sc_stage_spec *spec);

/* Builds the plan for one config. Must be deterministic: the same config gives the same plan. A
 * negative return refuses the config; the factory should leave a message (sc_plan_builder_error).
 * config is borrowed for the call. */
typedef int (*sc_stage_factory_fn)(const cJSON *config, sc_plan_builder *b, void *udata);

/* Records a message for a factory's refusal (printf-style) and returns SC_EPLAN. The refusal's
 * record (sc_plan_last_error) has stage_index -1, no field, and the message as its problem. */
SC_EXTERN int sc_plan_builder_error(sc_plan_builder *b, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* The built-in factory: reads config.stages (docs/pipeline.md). Each error names the stage index
 * and the field: "stage 2 (\"verify\"): \"timeout_ms\" must be a non-negative integer". */
SC_EXTERN int sc_json_stage_factory(const cJSON *config, sc_plan_builder *b, void *udata);

/* A refused plan, as fields (DESIGN.md, "Structured refusals"), so that a program can point at
 * what was refused without reading the message. Paths are JSON paths inside the config the plan
 * is built from: "stages[2].timeout_ms", "stages[0].retry.multiplier", "stages"; a field of the
 * pipeline format that the JSON factory reads from elsewhere keeps its spec name ("params.fn" is
 * also found as the stage member "fn"). For a factory of one's own, the path of sc_plan_add_stage's
 * refusal names the field of the Nth stage added. */
typedef struct sc_plan_error {
  int stage_index;     /* the stage refused, from 0; -1 when not about one stage */
  const char *stage;   /* its name; NULL when it has none or the refusal is not about a stage */
  const char *field;   /* the JSON path of the field; NULL: the config (or the plan) as a whole */
  const char *message; /* the whole message (sc_error_message() has it too, cut at 511 bytes) */
  /* Additions: */
  int code;              /* what the call returned (SC_EPLAN, SC_EINVAL, SC_EPLAN_MISMATCH, ...) */
  const char *problem;   /* what is wrong, naming neither the stage nor the field: "must be
                            between 1 and 100"; the message when field is NULL */
  bool previous_config;  /* the refusal is about previous_config (its plan, for a rollback) */
  int other_stage_index; /* a duplicate name: the stage that has it first; else -1 */
} sc_plan_error;

/* The plan refusal of this thread's last call of sc_task_submit, sc_recover_from_restart,
 * sc_recovery_plan, sc_plan_fingerprint or sc_plan_add_stage (and of a factory that the engine
 * ran); NULL when that call succeeded or failed for another reason (a duplicate task id, a bad
 * context digest, no memory). Borrowed: static thread-local storage, valid until the next such
 * call on this thread. */
SC_EXTERN const sc_plan_error *sc_plan_last_error(void);

/* Runs a factory on a config without an engine and returns the fingerprint ("sha256:" + 64 hex)
 * in out (at least 72 bytes). udata is passed to the factory. */
SC_EXTERN int sc_plan_fingerprint(sc_stage_factory_fn factory, void *udata, const cJSON *config,
                                  char out[72]);

/* The digest of a JSON value as the engine computes it for contexts: "sha256:" + hex over the
 * canonical JSON (docs/events.md). NULL is read as {}. */
SC_EXTERN int sc_json_digest(const cJSON *value, char out[72]);

/* The canonical JSON of a value (sorted keys, no whitespace); caller frees with free(). */
SC_EXTERN char *sc_json_canonical(const cJSON *value, size_t *len);

/* ---- the engine ---- */

#define SC_ENGINE_OPTIONS_VERSION 1

typedef enum sc_log_level { SC_LOG_ERROR, SC_LOG_WARN, SC_LOG_INFO } sc_log_level;

typedef struct sc_engine_options {
  unsigned version;            /* SC_ENGINE_OPTIONS_VERSION */
  sc_stage_factory_fn factory; /* NULL: sc_json_stage_factory */
  void *factory_udata;
  uint32_t max_active_tasks;  /* 0: no limit */
  bool tenant_exclusive;      /* one active task per tenant (default true) */
  double recovery_rate_per_s; /* 0: no limit */
  const char *source;         /* CloudEvents source, copied; NULL: "stagecoach" */
  /* Things the engine must report but has no caller to return them to (a failed ack of a terminal
   * event, a stage result that arrives after its timeout). NULL: not reported. */
  void (*log)(sc_engine *e, sc_log_level level, const char *message, void *udata);
  void *log_udata;
} sc_engine_options;

/* Fills the defaults (no limits, tenant_exclusive) and the version. */
static inline void sc_engine_options_init(sc_engine_options *o) {
  memset(o, 0, sizeof(*o));
  o->version = SC_ENGINE_OPTIONS_VERSION;
  o->tenant_exclusive = true;
}

/* Creates an engine on loop (NULL: the engine creates and owns a loop). opts NULL: defaults; opts
 * is copied. On success *out is an engine the caller frees with sc_engine_free(); on failure *out
 * is left NULL. */
SC_EXTERN int sc_engine_new(uv_loop_t *loop, const sc_engine_options *opts, sc_engine **out);

/* Runs the loop (UV_RUN_DEFAULT) until no task has work in flight. Meant for an engine that owns
 * its loop; on a caller's loop it runs that loop. Returns what uv_run() returned: 0 when nothing
 * is left that keeps the loop alive, non-zero when uv_stop() ended the run while something still
 * does (SC_EINVAL for a NULL engine). */
SC_EXTERN int sc_engine_run(sc_engine *e);

/* The loop the engine runs on; borrowed, valid until sc_engine_free(). */
SC_EXTERN uv_loop_t *sc_engine_loop(sc_engine *e);

/* Cancels what is running (the stage kinds' cancel is called; no event is emitted), frees every
 * task and closes every handle of the engine, running the loop without blocking until their close
 * callbacks are done, so that uv_loop_close() on a caller's loop returns 0 afterwards (provided
 * the caller's own handles are closed and the stage kinds close theirs in cancel). Other due
 * callbacks of that loop may run meanwhile. NULL is a no-op. */
SC_EXTERN void sc_engine_free(sc_engine *e);

/* Calls fn(e, udata) on the loop's thread, soon. The one call that is safe from any thread. */
SC_EXTERN int sc_engine_post(sc_engine *e, void (*fn)(sc_engine *e, void *udata), void *udata);

/* ---- stage kinds ---- */

#define SC_STAGE_KIND_VERSION 1

typedef struct sc_stage_ctx sc_stage_ctx;

typedef struct sc_stage_kind {
  unsigned version; /* SC_STAGE_KIND_VERSION */
  /* Begins the stage. The stage finishes exactly once, with sc_stage_complete() or
   * sc_stage_fail(), inside start or later. A negative return without finishing fails the stage
   * with that code (retryable). */
  int (*start)(sc_stage_ctx *ctx, void *udata);
  /* The engine gave up on the stage (timeout, cancel, engine free): stop the work. The stage
   * should still finish; its result is then recorded in the log callback and not acted on. May be
   * NULL. */
  void (*cancel)(sc_stage_ctx *ctx, void *udata);
  /* Undoes a completed stage in a compensating rollback; finishes like start. May be NULL. */
  int (*compensate)(sc_stage_ctx *ctx, void *udata);
} sc_stage_kind;

/* Registers (or replaces) a stage kind by name; the table is copied, name copied, udata
 * borrowed until sc_engine_free(). "fn" and "sleep" are built in. */
SC_EXTERN int sc_engine_register_kind(sc_engine *e, const char *name, const sc_stage_kind *kind,
                                      void *udata);

/* The function behind an "fn" stage; finishes like sc_stage_kind.start. */
typedef int (*sc_stage_fn)(sc_stage_ctx *ctx, void *udata);
/* Registers (or replaces) a function for "fn" stages whose params.fn is name. */
SC_EXTERN int sc_engine_register_fn(sc_engine *e, const char *name, sc_stage_fn fn, void *udata);

/* Finishes the stage successfully. output (may be NULL) is taken over: an object's members are
 * merged into the task's context (a shallow merge: each member replaces the context member of
 * the same name); another type, or an object that a log could not give back as the same value
 * (nested deeper than 512 levels, a cJSON_Raw item, a string or member name that is not UTF-8, NaN
 * or an infinity: docs/events.md, "Values that enter the engine"), is refused and fails the stage
 * (SC_EINVAL, not retried, the JSON path in the message; sc_task_submit and recovery refuse such a
 * config, previous_config or context the same way). A second finish of the same stage
 * is refused (reported through the engine's log callback) and output is freed. After the call
 * ctx may be freed: do not use it again. */
SC_EXTERN void sc_stage_complete(sc_stage_ctx *ctx, cJSON *output);
/* Finishes the stage with a failure; code is an SC_E* code (SC_EIO if >= 0), message copied (may be
 * NULL). retryable: the retry policy may run the stage again. Same rules as complete. */
SC_EXTERN void sc_stage_fail(sc_stage_ctx *ctx, int code, const char *message, bool retryable);

/* Accessors. Strings and JSON borrowed, valid until the stage finishes. */
SC_EXTERN const char *sc_stage_name(const sc_stage_ctx *ctx);
SC_EXTERN int sc_stage_index(const sc_stage_ctx *ctx);
SC_EXTERN unsigned sc_stage_attempt(const sc_stage_ctx *ctx); /* from 1 */
SC_EXTERN const cJSON *sc_stage_params(const sc_stage_ctx *ctx);
/* The config the stage runs with: previous_config in a redeploying rollback; the task's config
 * otherwise, also in a compensation (which undoes what ran with it). */
SC_EXTERN const cJSON *sc_stage_config(const sc_stage_ctx *ctx);
SC_EXTERN const cJSON *sc_stage_context(const sc_stage_ctx *ctx);
SC_EXTERN bool sc_stage_is_rollback(const sc_stage_ctx *ctx);
SC_EXTERN bool sc_stage_is_compensation(const sc_stage_ctx *ctx);
/* "run", "retry" (a retried or recovered task), "rollback" or "compensate"; static storage. */
SC_EXTERN const char *sc_stage_mode(const sc_stage_ctx *ctx);
SC_EXTERN bool sc_stage_cancelled(const sc_stage_ctx *ctx);
SC_EXTERN sc_task *
sc_stage_task(const sc_stage_ctx *ctx); /* NULL once the engine gave up on the stage */
SC_EXTERN uv_loop_t *sc_stage_loop(const sc_stage_ctx *ctx);
/* The stage's idempotency key: 64 lowercase hex digits, the SHA-256 of the root task id of the
 * recovery chain, the stage name, what the attempt does ("run", "rollback" or "compensate") and
 * the task's intent (the deliberate retries and rollbacks so far, sc_task_intent()). It is the
 * same across the automatic retries of the stage and across restart recovery, and new after
 * sc_task_retry() and in a rollback or compensation (docs/design.md, "Idempotency key"). A stage
 * that calls an outside API passes it along so that the API deduplicates a re-run. Borrowed,
 * valid until the stage finishes; "" when SHA-256 is unavailable. */
SC_EXTERN const char *sc_stage_idempotency_key(const sc_stage_ctx *ctx);
/* The W3C traceparent for the work of this attempt: the task's trace id and flags with a span id
 * of the attempt's own (the one stage.started records as "span_id"); NULL when the task has no
 * valid trace context. Borrowed, valid until the stage finishes. */
SC_EXTERN const char *sc_stage_traceparent(const sc_stage_ctx *ctx);
/* A pointer-sized slot for the stage kind's own state. */
SC_EXTERN void sc_stage_set_data(sc_stage_ctx *ctx, void *data);
SC_EXTERN void *sc_stage_get_data(const sc_stage_ctx *ctx);

/* ---- tasks ---- */

#define SC_TASK_SPEC_VERSION 2

typedef struct sc_task_spec {
  unsigned version;                      /* SC_TASK_SPEC_VERSION */
  const char *task_id;                   /* copied; NULL: a generated UUIDv7 */
  const char *tenant_id, *plan_id;       /* copied; may be NULL */
  const cJSON *config, *previous_config; /* copied; previous_config may be NULL */
  const cJSON *context;                  /* initial context, copied; must be an object; NULL: {} */
  const char *traceparent;               /* copied; may be NULL */
  /* Version 2: */
  const char *tracestate; /* W3C tracestate going with traceparent; copied; may be NULL */
} sc_task_spec;

static inline void sc_task_spec_init(sc_task_spec *s) {
  memset(s, 0, sizeof(*s));
  s->version = SC_TASK_SPEC_VERSION;
}

/* Creates a task: builds the plan, emits task.created, and queues the task to start on the loop.
 * On success *out (may be NULL) is the task, borrowed: valid until the engine lets the task go
 * (its terminal event acknowledged, sc_task_release(), sc_engine_free()) unless the caller takes
 * a reference with sc_task_ref() ("Task lifetime" in docs/design.md). A failure (bad spec, a plan
 * the factory refuses, a duplicate task id: SC_EBUSY; a config, previous_config or context that a
 * log could not give back as the same value, as sc_stage_complete says) creates nothing and emits
 * nothing. */
SC_EXTERN int sc_task_submit(sc_engine *e, const sc_task_spec *spec, sc_task **out);

/* Control operations. Each returns SC_ETRANSITION, with a message naming the task's status, when
 * the task is in a state that does not allow it, and for a task the engine let go (a referenced
 * handle). */
SC_EXTERN int sc_task_pause(sc_task *t);  /* takes effect at the next stage boundary */
SC_EXTERN int sc_task_resume(sc_task *t); /* back to the status it paused from */
SC_EXTERN int sc_task_cancel(sc_task *t, const char *reason /* copied; may be NULL */);
SC_EXTERN int sc_task_approve(sc_task *t, const char *stage, const char *reviewer,
                              const char *comment);
SC_EXTERN int sc_task_reject(sc_task *t, const char *stage, const char *reviewer,
                             const char *comment);
SC_EXTERN int sc_task_retry(sc_task *t, const char *from_stage /* NULL: the failed one */,
                            bool reset_context);
typedef enum sc_rollback_strategy {
  SC_ROLLBACK_REDEPLOY,
  SC_ROLLBACK_COMPENSATE
} sc_rollback_strategy;
SC_EXTERN int sc_task_rollback(sc_task *t, sc_rollback_strategy how);
/* Forgets a FAILED or ROLLBACK_FAILED task: the engine lets it go on the loop, once its events are
 * acknowledged; the pointer is invalid afterwards unless referenced. SC_ETRANSITION (naming the
 * status) for a task in another status, one with a retry or rollback asked for, or one already
 * being released or let go; SC_EINVAL for NULL. */
SC_EXTERN int sc_task_release(sc_task *t);

/* Task references (docs/design.md, "Task lifetime"). sc_task_ref() keeps the handle readable
 * after the engine lets the task go: sc_task_id, sc_task_get_status (the last status, also after
 * sc_engine_free() stopped a running task), sc_task_context, sc_task_retry_count and the other
 * accessors keep working; control calls return SC_ETRANSITION naming the status;
 * sc_engine_find_task() no longer finds it. sc_task_unref() drops one reference; the last one
 * frees a task the engine let go (also after sc_engine_free()). References count: each ref needs
 * its unref. NULL is a no-op for both; an unref without a ref is ignored (and logged). Like
 * everything of an engine, on the loop's thread only (after sc_engine_free(), on any one thread).
 */
SC_EXTERN void sc_task_ref(sc_task *t);
SC_EXTERN void sc_task_unref(sc_task *t);

/* Borrowed; NULL when the engine holds no task of that id. */
SC_EXTERN sc_task *sc_engine_find_task(sc_engine *e, const char *task_id);
SC_EXTERN const char *sc_task_id(const sc_task *t);
SC_EXTERN const char *sc_task_tenant(const sc_task *t); /* may be NULL */
SC_EXTERN sc_task_status sc_task_get_status(const sc_task *t);
SC_EXTERN const cJSON *sc_task_context(const sc_task *t); /* borrowed; changes as stages complete */
SC_EXTERN unsigned sc_task_retry_count(const sc_task *t);
SC_EXTERN int sc_task_stage_index(const sc_task *t); /* the stage it is on */
SC_EXTERN size_t sc_task_stage_count(const sc_task *t);
SC_EXTERN uint64_t sc_task_epoch(const sc_task *t);
SC_EXTERN const char *sc_task_fingerprint(const sc_task *t);
SC_EXTERN const char *sc_task_traceparent(const sc_task *t); /* borrowed; may be NULL */
SC_EXTERN const char *sc_task_tracestate(const sc_task *t);  /* borrowed; may be NULL */
/* The id of the first task of the recovery chain this task belongs to: its own id, or for a
 * recovered task the root_task_id of the request (else its recovered_from). Borrowed. */
SC_EXTERN const char *sc_task_root_id(const sc_task *t);
/* The deliberate new intents of the chain so far: one for each sc_task_retry() and
 * sc_task_rollback() applied, carried through recovery (sc_recovery_request.intent). */
SC_EXTERN uint32_t sc_task_intent(const sc_task *t);
/* True when s is a well-formed W3C traceparent of version 00 ("00-" 32 hex "-" 16 hex "-" 2 hex,
 * lowercase, trace id and span id not all zero). */
SC_EXTERN bool sc_traceparent_valid(const char *s);
/* The number of tasks the engine holds. */
SC_EXTERN size_t sc_engine_task_count(const sc_engine *e);

/* ---- pending approvals ---- */

typedef struct sc_pending_approval {
  sc_task *task; /* borrowed, like every pointer here: valid until the task moves */
  const char *task_id, *tenant_id, *stage;
  int32_t stage_index;
  const char *reason;                /* "policy" or "irreversible-stage-in-flight" */
  int64_t requested_ns, deadline_ns; /* since the Unix epoch; deadline 0: none */
  uint32_t approvals, approvers_needed;
  /* Reserved room (zeroed by the library): later fields go here, so that the entries the library
   * writes into the caller's array keep their size (docs/design.md, "ABI"). */
  uint64_t reserved[6];
} sc_pending_approval;

/* The approvals the engine waits for. Fills at most cap entries of out (out may be NULL) and
 * returns how many there are; the entries are valid until the engine runs again. */
SC_EXTERN size_t sc_engine_pending_approvals(sc_engine *e, sc_pending_approval *out, size_t cap);

/* ---- tenant locks ---- */

#define SC_LOCK_PROVIDER_VERSION 1

/* A tenant lock beyond this process (a distributed lock). The engine always holds the lock in
 * process first; a provider must grant it too. Calls are synchronous on the loop's thread: a
 * provider that needs network I/O answers from a local view it keeps current (a watch). owner is
 * the task id. */
typedef struct sc_lock_provider {
  unsigned version; /* SC_LOCK_PROVIDER_VERSION */
  /* SC_OK: taken for ttl_ms; SC_EBUSY: held by another owner (the task waits and the engine asks
   * again every retry_ms); another negative code is logged and treated as busy. */
  int (*acquire)(const char *tenant, const char *owner, uint32_t ttl_ms, void *udata);
  /* Extends a held lock, every ttl_ms / 3. A failure pauses the task at its next stage boundary
   * ("lost the lock of tenant ..."); resume takes the lock again or is refused with SC_EBUSY. */
  int (*renew)(const char *tenant, const char *owner, uint32_t ttl_ms, void *udata);
  void (*release)(const char *tenant, const char *owner, void *udata);
  void *udata;
  uint32_t ttl_ms;   /* 0: 30000 */
  uint32_t retry_ms; /* 0: 1000 */
} sc_lock_provider;

static inline void sc_lock_provider_init(sc_lock_provider *p) {
  memset(p, 0, sizeof(*p));
  p->version = SC_LOCK_PROVIDER_VERSION;
  p->ttl_ms = 30000;
  p->retry_ms = 1000;
}

/* Installs a provider (copied); NULL: the in-process locks alone, the default. Refused with
 * SC_EBUSY while a tenant lock is held. */
SC_EXTERN int sc_engine_set_lock_provider(sc_engine *e, const sc_lock_provider *p);

/* ---- state machine ---- */

/* True when the table of docs/design.md allows a change from one status to the other. */
SC_EXTERN bool sc_transition_allowed(sc_task_status from, sc_task_status to);

/* ---- subscriptions ---- */

/* Subscribes; sub is copied. *out (may be NULL) can cancel the subscription; the engine frees
 * every subscription in sc_engine_free(). */
SC_EXTERN int sc_engine_subscribe(sc_engine *e, const sc_subscriber *sub, sc_subscription **out);
/* sc_subscription_cancel(): <stagecoach/events.h>, beside the bus that implements it. */

/* ---- restart recovery ---- */

/* RETRY and ROLLBACK as DESIGN.md defines them. COMPENSATE (an addition): undo instead of redo,
 * calling the compensate handler of every compensable stage the stopped task touched (the
 * completed ones and the one in flight), in reverse order; the task ends ROLLED_BACK or
 * ROLLBACK_FAILED, like sc_task_rollback(t, SC_ROLLBACK_COMPENSATE). */
typedef enum sc_recovery_mode {
  SC_RECOVER_RETRY,
  SC_RECOVER_ROLLBACK,
  SC_RECOVER_COMPENSATE
} sc_recovery_mode;

#define SC_RECOVERY_REQUEST_VERSION 2

typedef struct sc_recovery_request {
  unsigned version;           /* SC_RECOVERY_REQUEST_VERSION */
  const char *task_id;        /* id for the new task; NULL: generate one */
  const char *recovered_from; /* the id of the task that stopped; recorded in task.recovered */
  const char *tenant_id, *plan_id;
  const cJSON *config;              /* current config */
  const cJSON *previous_config;     /* required for SC_RECOVER_ROLLBACK */
  const char *last_completed_stage; /* NULL: nothing completed */
  sc_recovery_mode mode;            /* SC_RECOVER_RETRY | SC_RECOVER_ROLLBACK | _COMPENSATE */
  const cJSON *context;             /* context snapshot of the last stage.completed; may be NULL */
  const char *context_digest;       /* verified when set */
  const char *plan_fingerprint;     /* verified when set */
  const char *traceparent;
  uint64_t epoch; /* the stopped task's epoch; the new task gets epoch + 1 */
  /* Version 2: */
  const char *root_task_id; /* the first task of the recovery chain; NULL: recovered_from is */
  uint32_t intent;          /* the stopped task's sc_task_intent() (task.created, task.started of
                               a retry and rollback.started record it as "intent") */
  const char *tracestate;   /* goes with traceparent (task.created records it); may be NULL */
} sc_recovery_request;

static inline void sc_recovery_request_init(sc_recovery_request *r) {
  memset(r, 0, sizeof(*r));
  r->version = SC_RECOVERY_REQUEST_VERSION;
  r->mode = SC_RECOVER_RETRY;
}

/* Rebuilds the stopped task as a new one and carries on (docs/design.md, "Restart recovery").
 * Refusals create no task and emit no event: SC_EUNKNOWN_STAGE (the message lists the plan's
 * stages), SC_EPLAN_MISMATCH, SC_ECORRUPT (context digest), SC_EINVAL. *out may be NULL. */
SC_EXTERN int sc_recover_from_restart(sc_engine *e, const sc_recovery_request *req, sc_task **out);

/* The same checks and the recovery plan that task.recovered would carry, without creating a task.
 * *plan_out: caller frees with cJSON_Delete(); NULL on failure. */
SC_EXTERN int sc_recovery_plan(sc_engine *e, const sc_recovery_request *req, cJSON **plan_out);

#ifdef __cplusplus
}
#endif
#endif
