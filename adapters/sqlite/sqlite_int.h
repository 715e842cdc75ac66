/* The SQLite store's internals (not installed): the handle, its prepared statements and the
 * helpers its files share. */
#ifndef STAGECOACH_SQLITE_INT_H
#define STAGECOACH_SQLITE_INT_H

#include <sqlite3.h>
#include <sys/stat.h>
#include <time.h>
#include <uv.h>

#include "../../events/internal.h"
#include "../memory/store_int.h"
#include "stagecoach/sqlite.h"

enum {
  ST_EVENT,
  ST_TASK_NEW,
  ST_TASK_UPDATE,
  ST_CHECKPOINT,
  ST_APPROVAL_NEW,
  ST_APPROVAL_DECIDE,
  ST_HAS_EVENT,
  ST__COUNT
};

/* A task's row as the events of this loop turn left it, written once at the commit: a turn that
 * carries several events of a task updates its row once. */
typedef struct sc__task_update {
  char *id;
  char *stage, *error;
  const char *status; /* static: sc_task_status_name() */
  int stage_index;
  int64_t epoch, updated_ns, retry_count; /* retry_count -1: unchanged */
  bool finished;
} sc__task_update;

struct sc_sqlite {
  sc_store store; /* first: the interface hands out &db->store */
  sqlite3 *db;
  char *path;
  sc_sqlite_options opts;
  int lock_fd; /* the writer's flock on the file; -1 for a reader */
  sqlite3_stmt *st[ST__COUNT];
  sc_engine *engine;
  uv_loop_t *loop;
  sc_subscription *sub;
  uv_prepare_t prepare; /* the end of a loop turn: commit, then ack */
  bool prepare_init, prepare_active, in_tx;
  sc_ack **acks; /* the events of this turn's transaction */
  size_t nacks, capacks;
  sc__task_update *updates; /* this turn's, open addressing by id */
  size_t nupdates, capupdates;
  sc__buf scratch[2]; /* a checkpoint's output and context, encoded (reused, never shrunk) */
  /* The files as this writer's last commit left them: a main file that another program wrote,
   * deleted or replaced since, or a write-ahead log deleted or replaced, stops the projection
   * before the next commit (its events are then not acked as stored). */
  struct {
    bool valid, wal_known;
    off_t size;
    struct timespec mtime;
    dev_t wal_dev;
    ino_t wal_ino;
  } seen;
  char *wal_path;     /* path + "-wal" */
  unsigned retaining; /* sc_sqlite_retain_start() runs in flight */
  int err;            /* the first storage error, sticky */
  char errmsg[512];
};

/* Sets db's sticky error from SQLite's last one (what: the step that failed) and returns its
 * SC_E* code: SC_EBUSY for SQLITE_BUSY/LOCKED, SC_ECORRUPT for SQLITE_CORRUPT/NOTADB, SC_EIO
 * otherwise (SQLITE_FULL and SQLITE_IOERR among them). */
int sc__sqlite_fail(sc_sqlite *db, int rc, const char *what);
/* The SC_E* code for a SQLite result code, with the thread's message naming the file. */
int sc__sqlite_error(sc_sqlite *db, int rc, const char *what);
/* Notes the files as a commit of this writer left them (the main file's size and time, the
 * write-ahead log's identity); a no-op for a reader and for retention's own connection. */
void sc__sqlite_watch_note(sc_sqlite *db);
/* Writes this turn's task rows (before a commit, and before a query on the same connection). */
int sc__sqlite_flush(sc_sqlite *db);
/* Runs one SQL text without results; the SC_E* code on failure. */
int sc__sqlite_exec(sc_sqlite *db, const char *sql);
/* Stores one event (ev as the engine emitted it or as parsed from its line, json its encoding) in
 * the open transaction. */
int sc__sqlite_project(sc_sqlite *db, const sc_event *ev, const char *json, size_t len);

/* Deletes, in the open transaction, task_id's events and checkpoints and those of the unfinished
 * tasks it superseded (its recovered_from chain while unfinished), so that none of them is
 * offered to recovery again; rows: their approvals and task rows too. Adds what went to *events
 * and *checkpoints (either may be NULL). */
int sc__sqlite_drop_task(sc_sqlite *db, const char *task_id, bool rows, uint64_t *events,
                         uint64_t *checkpoints);

#endif
