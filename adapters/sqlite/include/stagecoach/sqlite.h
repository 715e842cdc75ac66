/* The SQLite store: a projection of an engine's events into a database (tasks, events,
 * checkpoints, approvals) that is a durable sink of its own, holding the same durability barrier
 * as the JSON-lines log, and the queries, recovery, restore and retention read from it.
 *
 * The schema, the queries' JSON and what each synchronous mode gives are in docs/sqlite.md. */
#ifndef STAGECOACH_SQLITE_H
#define STAGECOACH_SQLITE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <stagecoach/engine.h>
#include <stagecoach/store.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sc_sqlite sc_sqlite;

/* The schema version this library writes; a database of a newer one is refused. */
#define SC_SQLITE_SCHEMA_VERSION 1

typedef enum sc_sqlite_sync {
  SC_SQLITE_SYNC_FULL,  /* synchronous=FULL: a commit is on disk before its events are acked */
  SC_SQLITE_SYNC_NORMAL /* synchronous=NORMAL: WAL commits are synced at checkpoints only; an
                           acked event survives a crash of the process, not of the machine */
} sc_sqlite_sync;

#define SC_SQLITE_OPTIONS_VERSION 1

typedef struct sc_sqlite_options {
  unsigned version;           /* SC_SQLITE_OPTIONS_VERSION */
  sc_sqlite_sync synchronous; /* default SC_SQLITE_SYNC_FULL */
  bool readonly;              /* queries only: no lock, no migration, no attach */
  bool existing;              /* the database must exist already (SC_ENOTFOUND otherwise) */
  uint32_t busy_timeout_ms;   /* how long a statement waits for another connection's lock;
                                 default 2000 */
} sc_sqlite_options;

/* Fills the defaults (synchronous FULL, 2 s busy timeout); inline, like every _init(). */
static inline void sc_sqlite_options_init(sc_sqlite_options *o) {
  memset(o, 0, sizeof(*o));
  o->version = SC_SQLITE_OPTIONS_VERSION;
  o->synchronous = SC_SQLITE_SYNC_FULL;
  o->busy_timeout_ms = 2000;
}

/* Opens (creating it unless o->existing or o->readonly) the database at path, applies the
 * migrations up to SC_SQLITE_SCHEMA_VERSION (a database of a newer version is refused with
 * SC_EINVAL naming both versions) and, when e is not NULL, subscribes to every event of e with
 * deferred acks: the events of one loop turn are written in one transaction, committed at the end
 * of the turn, and acked after the commit. A writer (not readonly) holds an exclusive lock on the
 * file: a second writer, in this process or another, is refused with SC_EBUSY and changes
 * nothing. A failed write or commit (SQLITE_BUSY, SQLITE_FULL, SQLITE_IOERR, a corrupt file) fails
 * the acks of its events with the error, so the engine pauses those tasks, and every later event
 * fails the same way. o NULL: defaults. On success *out is closed with sc_sqlite_close(); on
 * failure *out is NULL. */
SC_EXTERN int sc_sqlite_open(sc_engine *e, const char *path, const sc_sqlite_options *o,
                             sc_sqlite **out);

/* Commits what is pending, acks every event still held, unsubscribes, closes and frees. Returns
 * the first storage error seen (SC_EIO, SC_EBUSY, SC_ECORRUPT), SC_OK otherwise. NULL: SC_OK. */
SC_EXTERN int sc_sqlite_close(sc_sqlite *db);

/* The store interface of db (borrowed, valid until sc_sqlite_close(); its close closes db). */
SC_EXTERN sc_store *sc_sqlite_store(sc_sqlite *db);

/* Opens a database as a store (sc_sqlite_open with e NULL; attach with sc_store_attach()). */
SC_EXTERN int sc_sqlite_store_open(const char *path, const sc_sqlite_options *o, sc_store **out);

/* The queries: each as the sc_store function of the same name (<stagecoach/store.h>); *out is
 * JSON the caller frees with cJSON_Delete(). */
SC_EXTERN int sc_sqlite_unfinished(sc_sqlite *db, sc_unfinished **out, size_t *n);
SC_EXTERN int sc_sqlite_checkpoints(sc_sqlite *db, const char *task_id, cJSON **out);
SC_EXTERN int sc_sqlite_latest(sc_sqlite *db, const char *task_id, cJSON **out);
SC_EXTERN int sc_sqlite_checkpoint(sc_sqlite *db, const char *checkpoint_id, cJSON **out);
SC_EXTERN int sc_sqlite_events(sc_sqlite *db, const char *task_id, uint64_t from_seq,
                               sc_store_event_fn fn, void *udata);
SC_EXTERN int sc_sqlite_tasks(sc_sqlite *db, const sc_store_task_query *q, cJSON **out);
SC_EXTERN int sc_sqlite_approvals(sc_sqlite *db, const char *task_id, cJSON **out);
/* Deletes a finished task's records and rows, with those of the unfinished tasks it recovered
 * (its recovered_from chain while unfinished), which would otherwise be unfinished again. */
SC_EXTERN int sc_sqlite_delete_task(sc_sqlite *db, const char *task_id);

/* Restore from a checkpoint: the recovery request of the task as if it had stopped right after
 * checkpoint_id ("<task_id>/<seq>"): that stage as the last completed, its context (folded and
 * verified) and digest, the config, fingerprint and epoch of the task, mode as given. *out is one
 * entry the caller frees with sc_unfinished_free(*out, 1). SC_ENOTFOUND for an unknown checkpoint,
 * SC_ECORRUPT for a context that does not match its digest. */
SC_EXTERN int sc_sqlite_restore_request(sc_sqlite *db, const char *checkpoint_id,
                                        sc_recovery_mode mode, sc_unfinished **out);

/* Imports a JSON-lines log (verified as it is read) into db, which must not be attached: every
 * event as the projection would have stored it, so that the log and the database answer the same
 * queries. Events already in the database (same task id and seq, same type and time) are skipped;
 * one of the same task id and seq that differs is another run under that id: SC_EINVAL, naming
 * the task. *imported (may be NULL) receives the number of events added. */
SC_EXTERN int sc_sqlite_import(sc_sqlite *db, const char *log_path, uint64_t *imported);

#define SC_SQLITE_RETENTION_VERSION 1

typedef struct sc_sqlite_retention {
  unsigned version;    /* SC_SQLITE_RETENTION_VERSION */
  uint32_t keep_last;  /* keep the last N checkpoints of each task; 0: no count limit */
  int64_t max_age_ms;  /* delete unfinished tasks' checkpoints older than this, and finished
                          tasks that ended longer ago, whole; 0: no age limit; beyond what
                          nanoseconds count: no limit */
  uint32_t batch_rows; /* rows deleted per transaction; default 500 */
  int64_t now_ns;      /* the time ages are measured from; 0: now */
} sc_sqlite_retention;

/* Fills the defaults (no limit, 500 rows a batch, now); inline, like every _init(). */
static inline void sc_sqlite_retention_init(sc_sqlite_retention *p) {
  memset(p, 0, sizeof(*p));
  p->version = SC_SQLITE_RETENTION_VERSION;
  p->batch_rows = 500;
}

typedef struct sc_sqlite_retain_report {
  uint64_t checkpoints_deleted, events_deleted, approvals_deleted;
  uint64_t batches;         /* transactions committed */
  int64_t longest_batch_ns; /* the longest one: how long a loop would have been held */
} sc_sqlite_retain_report;

/* Deletes the checkpoints beyond the last keep_last of each task and/or older than max_age, but
 * never the latest checkpoint of an unfinished task (recovery resumes from it) nor any checkpoint
 * of a task that is rolling back or failed (a rollback still needs them); a kept checkpoint whose
 * snapshot goes gets the context it folds to written into its own row first. A finished task that
 * ended longer than max_age ago loses all its events and checkpoints in one transaction, with the
 * unfinished tasks it recovered (their rows stay); one that ended later keeps them all but for
 * keep_last; the approvals of finished tasks requested before max_age go too. Works in transactions
 * of batch_rows rows otherwise; r counts only what committed and may be NULL. */
SC_EXTERN int sc_sqlite_retain(sc_sqlite *db, const sc_sqlite_retention *p,
                               sc_sqlite_retain_report *r);

/* Called on the loop's thread when a retention started with sc_sqlite_retain_start() is done:
 * status SC_OK or the error (sc_error_message() has its detail), r what it did (borrowed for
 * the call). */
typedef void (*sc_sqlite_retain_cb)(int status, const sc_sqlite_retain_report *r, void *udata);

/* The same retention beside a running engine: db must be attached. It runs on the loop's thread
 * pool over a connection of its own, so the loop goes on; each batch holds the database's write
 * lock for one short transaction, which the projection's commit of a turn waits for (the busy
 * timeout). The policy is copied. cb is called exactly once, unless this returns an error.
 * sc_sqlite_close() waits for it. */
SC_EXTERN int sc_sqlite_retain_start(sc_sqlite *db, const sc_sqlite_retention *p,
                                     sc_sqlite_retain_cb cb, void *udata);

#ifdef __cplusplus
}
#endif
#endif
