/* stagecoach domain events: the task states, the event types, the sc_event value, the CloudEvents
 * 1.0 JSON codec and the subscriber/acknowledgement types of the event bus.
 *
 * The JSON schema is documented in docs/events.md; SC_EVENT_SCHEMA_VERSION names it. */
#ifndef STAGECOACH_EVENTS_H
#define STAGECOACH_EVENTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cjson/cJSON.h>

#include <stagecoach/error.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The version of the event JSON schema (the "schemaversion" extension attribute). */
#define SC_EVENT_SCHEMA_VERSION 1

/* The task states of the state machine in docs/design.md. */
#define SC_TASK_STATUS_MAP(X)                                                                      \
  X(CREATED)                                                                                       \
  X(PENDING)                                                                                       \
  X(RUNNING)                                                                                       \
  X(PAUSED)                                                                                        \
  X(AWAITING_APPROVAL)                                                                             \
  X(COMPLETED)                                                                                     \
  X(FAILED)                                                                                        \
  X(CANCELLED)                                                                                     \
  X(ROLLING_BACK)                                                                                  \
  X(ROLLED_BACK)                                                                                   \
  X(ROLLBACK_FAILED)

typedef enum sc_task_status {
#define SC__STATUS_ENUM(name) SC_TASK_##name,
  SC_TASK_STATUS_MAP(SC__STATUS_ENUM)
#undef SC__STATUS_ENUM
      SC_TASK__COUNT
} sc_task_status;

/* "RUNNING"; "?" for a value out of range. */
SC_EXTERN const char *sc_task_status_name(sc_task_status s);
/* The inverse of sc_task_status_name; SC_ENOTFOUND for an unknown name. */
SC_EXTERN int sc_task_status_from_name(const char *name, sc_task_status *out);
/* True for COMPLETED, CANCELLED and ROLLED_BACK. */
SC_EXTERN bool sc_task_status_is_terminal(sc_task_status s);

/* X(ENUM, "dotted.name"); the JSON type is "stagecoach." + the dotted name. */
#define SC_EVENT_TYPE_MAP(X)                                                                       \
  X(TASK_CREATED, "task.created")                                                                  \
  X(TASK_RECOVERED, "task.recovered")                                                              \
  X(TASK_STARTED, "task.started")                                                                  \
  X(STAGE_STARTED, "stage.started")                                                                \
  X(STAGE_COMPLETED, "stage.completed")                                                            \
  X(STAGE_FAILED, "stage.failed")                                                                  \
  X(APPROVAL_REQUESTED, "approval.requested")                                                      \
  X(APPROVAL_GRANTED, "approval.granted")                                                          \
  X(APPROVAL_REJECTED, "approval.rejected")                                                        \
  X(APPROVAL_TIMED_OUT, "approval.timed_out")                                                      \
  X(TASK_PAUSED, "task.paused")                                                                    \
  X(TASK_RESUMED, "task.resumed")                                                                  \
  X(TASK_COMPLETED, "task.completed")                                                              \
  X(TASK_FAILED, "task.failed")                                                                    \
  X(TASK_CANCELLED, "task.cancelled")                                                              \
  X(ROLLBACK_STARTED, "rollback.started")                                                          \
  X(STAGE_COMPENSATED, "stage.compensated")                                                        \
  X(ROLLBACK_COMPLETED, "rollback.completed")                                                      \
  X(ROLLBACK_FAILED, "rollback.failed")

typedef enum sc_event_type {
#define SC__EVTYPE_ENUM(name, text) SC_EV_##name,
  SC_EVENT_TYPE_MAP(SC__EVTYPE_ENUM)
#undef SC__EVTYPE_ENUM
      SC_EV__COUNT
} sc_event_type;

/* "stagecoach.stage.completed"; "stagecoach.unknown" for a value out of range. */
SC_EXTERN const char *sc_event_type_name(sc_event_type t);
/* The inverse: accepts "stagecoach.stage.completed" or "stage.completed". SC_ENOTFOUND otherwise.
 */
SC_EXTERN int sc_event_type_from_name(const char *name, sc_event_type *out);

/* Progress events are durability barriers: the engine takes no next step of the task until every
 * deferred acknowledgement of such an event is done (docs/design.md, "durability barrier"):
 * task.created and task.recovered (no stage starts before its task is on record), stage.completed,
 * the terminal events, approval decisions and the rollback events. stage.started is a barrier too
 * when its stage is compensable or irreversible, which its type alone does not tell: the engine
 * decides that one per stage. */
SC_EXTERN bool sc_event_type_is_barrier(sc_event_type t);

/* One event. Every pointer is borrowed: valid during the subscriber callback that receives it, or
 * for as long as the sc_event_doc it came from. */
typedef struct sc_event {
  sc_event_type type;
  uint64_t seq;    /* per task, from 1, no gaps */
  uint64_t epoch;  /* 0 for a new task, +1 for each recovery */
  int64_t time_ns; /* since the Unix epoch */
  const char *task_id, *tenant_id, *plan_id,
      *traceparent;      /* tenant, plan, traceparent may be NULL */
  const char *stage;     /* NULL for task-level events */
  int32_t stage_index;   /* -1 for task-level events */
  uint32_t attempt;      /* from 1 for stage events; 0 for task-level events */
  sc_task_status status; /* the task's status after this event */
  /* The type-specific members of the CloudEvents "data" object (output, context, digest, ...).
   * May be NULL. The encoder writes "stage", "index", "attempt" and "status" from the fields above
   * and skips members of these names here; a parsed event's data is the whole object read. */
  const cJSON *data;
  const char *source; /* CloudEvents source; NULL: "stagecoach" */
  /* The task's whole context after the event, for stage.completed, task.completed and
   * rollback.completed (borrowed, at no cost: the engine's own), whether or not data carries it;
   * NULL for other events. The serialized stage.completed carries data.context only now and then
   * (docs/events.md); a parsed event's context is its data.context, or NULL. Not encoded. */
  const cJSON *context;
} sc_event;

/* Encodes an event as one line of CloudEvents 1.0 JSON (structured mode), without a newline.
 * Returns a malloc'd NUL-terminated string, the caller frees it with free(); *len (may be NULL)
 * receives its length. NULL on allocation failure or an invalid event (SC_EINVAL message). */
SC_EXTERN char *sc_event_to_json(const sc_event *ev, size_t *len);

/* Appends the encoding to a caller's buffer: writes at most cap bytes into buf and returns the
 * length the full encoding needs (as snprintf does, without the NUL). A return larger than cap
 * means buf holds a truncated prefix; a negative return is an SC_E* error. Lets an adapter encode
 * into a reused buffer without an allocation per event. */
SC_EXTERN long sc_event_encode(const sc_event *ev, char *buf, size_t cap);

/* A parsed event and the memory behind it. */
typedef struct sc_event_doc sc_event_doc;

/* Parses one event line (len bytes; no NUL needed). On success *out is a document the caller frees
 * with sc_event_doc_free(). On failure returns SC_EPARSE (malformed JSON, a missing or mistyped
 * attribute; the message names it) and leaves *out NULL. */
SC_EXTERN int sc_event_parse(const char *json, size_t len, sc_event_doc **out);
/* The event of a document; borrowed, valid until sc_event_doc_free(). */
SC_EXTERN const sc_event *sc_event_doc_event(const sc_event_doc *d);
/* The whole parsed JSON object (extension attributes included); borrowed like the event. */
SC_EXTERN const cJSON *sc_event_doc_json(const sc_event_doc *d);
/* NULL is a no-op. */
SC_EXTERN void sc_event_doc_free(sc_event_doc *d);

/* ---- subscribers and acknowledgements ---- */

typedef struct sc_ack sc_ack;
typedef struct sc_subscription sc_subscription; /* see sc_engine_subscribe() */

#define SC_SUBSCRIBER_VERSION 1

typedef struct sc_subscriber {
  unsigned version; /* SC_SUBSCRIBER_VERSION */
  uint64_t mask;    /* bit (1ull << type) per wanted type; 0: every type */
  /* Called synchronously, in order, for every event of a wanted type. Returns SC_OK when done with
   * the event, or SC_DEFER and then calls sc_ack_done(ack, status) exactly once, later (from the
   * loop's thread, or through sc_engine_post). A negative return counts as a failed ack. */
  int (*on_event)(const sc_event *ev, sc_ack *ack, void *udata);
  void *udata;
} sc_subscriber;

/* Fills the defaults: version set, every type, no callback. Inline: it fills exactly the struct the
 * caller was compiled with. */
static inline void sc_subscriber_init(sc_subscriber *s) {
  memset(s, 0, sizeof(*s));
  s->version = SC_SUBSCRIBER_VERSION;
}

/* Stops delivery (also from inside the subscriber's own callback) and frees the subscription.
 * Deferred acks already handed out stay valid until done. NULL is a no-op. */
SC_EXTERN void sc_subscription_cancel(sc_subscription *s);

/* Acknowledges a deferred event. status >= 0: the event is stored; < 0: it was not (an SC_E*
 * code), and the engine pauses the task with this error. Exactly once per SC_DEFER; the ack is
 * invalid after the call. */
SC_EXTERN void sc_ack_done(sc_ack *ack, int status);

/* sc_ack_done() with a message for the task.paused event ("write jobs.jsonl: No space left on
 * device"); message is copied, may be NULL. */
SC_EXTERN void sc_ack_fail(sc_ack *ack, int status, const char *message);

#ifdef __cplusplus
}
#endif
#endif
