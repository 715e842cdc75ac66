/* The store interface: what every persistence adapter (the JSON-lines log, SQLite, the in-memory
 * store, later others) offers to the engine, the command line, the socket's replay and the HTTP
 * server, so that none of them depends on one adapter. A store keeps the events of the tasks it
 * saw, answers what recovery needs (the unfinished tasks), the checkpoints of a task and its
 * events from a sequence number, and forgets a finished task on request.
 *
 * The interface is a versioned table of functions that begins the adapter's own object (the way
 * libgit2's backends are built): an adapter allocates a struct whose first member is an sc_store,
 * fills version, name and the functions it supports, and hands out a pointer to that member. The
 * inline sc_store_*() wrappers below are what callers use: they check the version and answer
 * SC_EINVAL, with a message naming the store, for a function a store does not have.
 *
 * Threading: a store attached to an engine belongs to the thread of the engine's loop. */
#ifndef STAGECOACH_STORE_H
#define STAGECOACH_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include <stagecoach/engine.h>
#include <stagecoach/error.h>
/* sc_unfinished and sc_unfinished_free(), which every store returns, are declared there. */
#include <stagecoach/jsonl.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sc_store sc_store;

/* Called with each stored event, in order: json is the event as the engine encoded it (one
 * CloudEvents object, sc_event_to_json(), without a newline; NUL-terminated; borrowed for the
 * call). A non-zero return stops the walk and is what sc_store_events() returns. The same shape as
 * sc_jsonl_event_fn. */
typedef int (*sc_store_event_fn)(const char *json, size_t len, void *udata);

#define SC_STORE_TASK_QUERY_VERSION 1

/* Which tasks sc_store_tasks() lists. */
typedef struct sc_store_task_query {
  unsigned version;      /* SC_STORE_TASK_QUERY_VERSION */
  const char *tenant_id; /* NULL: every tenant */
  const char *status;    /* a status name ("RUNNING"); "unfinished" for every non-terminal one;
                            NULL: any */
  const char *after;     /* the cursor a previous page returned ("next"); NULL: from the start */
  uint32_t limit;        /* at most this many per page; 0: 100 */
} sc_store_task_query;

static inline void sc_store_task_query_init(sc_store_task_query *q) {
  q->version = SC_STORE_TASK_QUERY_VERSION;
  q->tenant_id = NULL;
  q->status = NULL;
  q->after = NULL;
  q->limit = 0;
}

#define SC_STORE_VERSION 1

/* The table. Every function receives the sc_store pointer the adapter handed out. Any function
 * but close may be NULL: the store does not offer it. Functions follow the house rules: 0 or a
 * negative SC_E* code with a message (sc_error_set), out-parameters NULL on failure.
 *
 * Checkpoints. A checkpoint is a stage.completed event of a task; its id is that event's
 * CloudEvents id, "<task_id>/<seq>", the same in every store that saw the same run, so a log and a
 * database of one run answer the same queries. A checkpoint is a JSON object:
 *   {"id":"T/7","task":"T","tenant":"acme"|null,"plan":"deploy"|null,"stage":"deploy","index":1,
 *    "attempt":1,"seq":7,"epoch":0,"time":"2026-11-22T10:30:00.123456Z",
 *    "reason":"run"|"rollback","output":{...}|null,"digest":"sha256:...","fingerprint":"sha256:..."}
 * with, where the function says so, "context": the task's whole context after the stage, rebuilt
 * from the last snapshot and the outputs after it and checked against "digest" before it is
 * returned; a context that does not match is SC_ECORRUPT (naming the checkpoint), never returned.
 */
struct sc_store {
  unsigned version; /* SC_STORE_VERSION */
  const char *name; /* "jsonl", "sqlite", "memory": static storage, for messages */

  /* Subscribes the store to every event of e with deferred acks: an event is acknowledged once it
   * is as durable as the store promises (the same durability barrier as the log), and a failure to
   * store it fails its ack with the error, which pauses the task. A store attaches to one engine,
   * once (SC_EBUSY for a second attach), and must be closed before sc_engine_free(e). A store
   * opened read-only refuses with SC_EINVAL. */
  int (*attach)(sc_store *s, sc_engine *e);

  /* The tasks without a terminal event that no later task.recovered supersedes, as ready recovery
   * requests, exactly as sc_jsonl_scan() returns them. *out: an array of *n entries the caller
   * frees with sc_unfinished_free() (NULL when *n is 0). Call it before the attached engine emits
   * events of its own. */
  int (*unfinished)(sc_store *s, sc_unfinished **out, size_t *n);

  /* The checkpoints of a task in order (oldest first), without "context": *out is a JSON array
   * the caller frees with cJSON_Delete(). A task the store does not know is SC_ENOTFOUND; a known
   * task without a checkpoint gives []. */
  int (*checkpoints)(sc_store *s, const char *task_id, cJSON **out);

  /* The task's last checkpoint, with "context" (verified): *out is an object the caller frees
   * with cJSON_Delete(). SC_ENOTFOUND for an unknown task or one without a checkpoint. */
  int (*latest)(sc_store *s, const char *task_id, cJSON **out);

  /* One checkpoint by id ("<task_id>/<seq>"), with "context" (verified): *out as for latest.
   * SC_ENOTFOUND when there is no stage.completed of that id; SC_EINVAL for a malformed id. */
  int (*checkpoint)(sc_store *s, const char *checkpoint_id, cJSON **out);

  /* Calls fn for each stored event of task_id whose seq is >= from_seq, in seq order (task_id
   * NULL: every event of every task, in the order stored, from_seq applying to each task). A task
   * the store does not know is SC_ENOTFOUND. The socket's replay and the HTTP event stream read
   * through it; a store that no longer holds some of the events asked for (retention) starts with
   * the first one it holds, and the caller sees the gap from the seq numbers. */
  int (*events)(sc_store *s, const char *task_id, uint64_t from_seq, sc_store_event_fn fn,
                void *udata);

  /* Forgets a finished task: its events, checkpoints and approvals. SC_EBUSY for a task that has
   * no terminal event (recovery still needs it), SC_ENOTFOUND for an unknown one. */
  int (*delete_task)(sc_store *s, const char *task_id);

  /* A page of tasks: *out is {"tasks":[{"task":..,"tenant":..,"plan":..,"status":..,"stage":..,
   * "index":..,"retry_count":..,"epoch":..,"recovered_from":..,"created":..,"updated":..,
   * "error":..},...],"next":"<cursor>"|null}, ordered by task id; the caller frees it with
   * cJSON_Delete(). */
  int (*tasks)(sc_store *s, const sc_store_task_query *q, cJSON **out);

  /* The approvals asked for and not decided yet (task_id NULL: of every task): *out is a JSON
   * array of {"task","tenant","stage","index","reason","requested","deadline"|null,"approvals",
   * "approvers_needed"} the caller frees with cJSON_Delete(). */
  int (*approvals)(sc_store *s, const char *task_id, cJSON **out);

  /* Writes and syncs what is pending, acknowledges every event still held (with an error if it
   * could not be stored), unsubscribes and frees the store: s is invalid afterwards. Returns the
   * first storage error seen since the store opened, SC_OK otherwise. Call it outside the loop's
   * callbacks. Never NULL. */
  int (*close)(sc_store *s);
};

/* ---- the wrappers callers use ---- */

static inline int sc__store_missing(const sc_store *s, const char *what) {
  if (s == NULL) return sc_error_set(SC_EINVAL, "store: NULL store");
  if (s->version < 1 || s->version > SC_STORE_VERSION)
    return sc_error_set(SC_EINVAL, "store %s: unsupported sc_store version %u",
                        s->name ? s->name : "?", s->version);
  return sc_error_set(SC_EINVAL, "store %s cannot %s", s->name ? s->name : "?", what);
}

static inline bool sc__store_ok(const sc_store *s) {
  return s != NULL && s->version >= 1 && s->version <= SC_STORE_VERSION;
}

static inline int sc_store_attach(sc_store *s, sc_engine *e) {
  if (!sc__store_ok(s) || s->attach == NULL) return sc__store_missing(s, "attach to an engine");
  return s->attach(s, e);
}

static inline int sc_store_unfinished(sc_store *s, sc_unfinished **out, size_t *n) {
  if (out) *out = NULL;
  if (n) *n = 0;
  if (!sc__store_ok(s) || s->unfinished == NULL)
    return sc__store_missing(s, "list unfinished tasks");
  return s->unfinished(s, out, n);
}

static inline int sc_store_checkpoints(sc_store *s, const char *task_id, cJSON **out) {
  if (out) *out = NULL;
  if (!sc__store_ok(s) || s->checkpoints == NULL) return sc__store_missing(s, "list checkpoints");
  return s->checkpoints(s, task_id, out);
}

static inline int sc_store_latest(sc_store *s, const char *task_id, cJSON **out) {
  if (out) *out = NULL;
  if (!sc__store_ok(s) || s->latest == NULL)
    return sc__store_missing(s, "read the latest checkpoint");
  return s->latest(s, task_id, out);
}

static inline int sc_store_checkpoint(sc_store *s, const char *checkpoint_id, cJSON **out) {
  if (out) *out = NULL;
  if (!sc__store_ok(s) || s->checkpoint == NULL) return sc__store_missing(s, "read a checkpoint");
  return s->checkpoint(s, checkpoint_id, out);
}

static inline int sc_store_events(sc_store *s, const char *task_id, uint64_t from_seq,
                                  sc_store_event_fn fn, void *udata) {
  if (!sc__store_ok(s) || s->events == NULL) return sc__store_missing(s, "read events");
  return s->events(s, task_id, from_seq, fn, udata);
}

static inline int sc_store_delete_task(sc_store *s, const char *task_id) {
  if (!sc__store_ok(s) || s->delete_task == NULL) return sc__store_missing(s, "delete a task");
  return s->delete_task(s, task_id);
}

static inline int sc_store_tasks(sc_store *s, const sc_store_task_query *q, cJSON **out) {
  if (out) *out = NULL;
  if (!sc__store_ok(s) || s->tasks == NULL) return sc__store_missing(s, "list tasks");
  return s->tasks(s, q, out);
}

static inline int sc_store_approvals(sc_store *s, const char *task_id, cJSON **out) {
  if (out) *out = NULL;
  if (!sc__store_ok(s) || s->approvals == NULL) return sc__store_missing(s, "list approvals");
  return s->approvals(s, task_id, out);
}

/* NULL: SC_OK. */
static inline int sc_store_close(sc_store *s) {
  if (s == NULL) return SC_OK;
  if (!sc__store_ok(s) || s->close == NULL) return sc__store_missing(s, "close");
  return s->close(s);
}

#ifdef __cplusplus
}
#endif
#endif
