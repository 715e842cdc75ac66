/* The durable JSON-lines log: an adapter that appends every event of an engine to a file, one
 * CloudEvents JSON object per line, with a SHA-256 hash chain, and acknowledges each event only
 * once its line is as durable as the fsync mode says. Also the readers: verify a log's chain and
 * scan it for the tasks that did not finish, as ready recovery requests.
 *
 * The line format and the chain rule are in docs/jsonl.md. */
#ifndef STAGECOACH_JSONL_H
#define STAGECOACH_JSONL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <stagecoach/engine.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sc_jsonl sc_jsonl;

typedef enum sc_fsync_mode {
  SC_FSYNC_NONE,  /* ack after write(): survives a crash of the process, not of the machine */
  SC_FSYNC_BATCH, /* one fdatasync per loop turn for every line written in it (group commit) */
  SC_FSYNC_ALWAYS /* each line written at once and fdatasync'd before its ack; lines written
                     while a sync is in flight share the next one (at most one sync per event) */
} sc_fsync_mode;

#define SC_JSONL_OPTIONS_VERSION 2

typedef struct sc_jsonl_options {
  unsigned version;    /* SC_JSONL_OPTIONS_VERSION */
  sc_fsync_mode fsync; /* default SC_FSYNC_BATCH */
  size_t buffer_bytes; /* lines are written when this much is buffered, or at the end of the loop
                          turn; default 256 KiB */
  /* Told what the adapter did on its own: a torn tail cut when the log was opened. May be NULL. */
  void (*log)(const char *message, void *udata);
  void *log_udata;
  /* Version 2. true: the log must exist already (SC_ENOTFOUND otherwise, and nothing is
   * created), as for a recovery, which reads a log and has nothing to do without one. */
  bool existing;
} sc_jsonl_options;

/* Fills the defaults (batch fsync, 256 KiB buffer); inline, like every _init(). */
static inline void sc_jsonl_options_init(sc_jsonl_options *o) {
  memset(o, 0, sizeof(*o));
  o->version = SC_JSONL_OPTIONS_VERSION;
  o->fsync = SC_FSYNC_BATCH;
  o->buffer_bytes = 256 * 1024;
}

typedef struct sc_jsonl_report {
  uint64_t lines;         /* complete lines read */
  uint64_t bytes;         /* the file's size */
  uint64_t good_bytes;    /* bytes up to the end of the last line whose chain verified */
  bool torn_tail;         /* the file ends in an incomplete line (a crash mid-write) */
  int64_t first_bad_line; /* 1-based number of the first line that does not verify; 0: none */
  /* Reserved room (zeroed by the library): later fields go here, so the struct the library fills
   * keeps its size (docs/design.md, "ABI"). */
  uint64_t reserved[8];
} sc_jsonl_report;

/* Opens (creating it if needed, unless o->existing) a log for appending and subscribes to every
 * event of e. A log has one writer, and it holds the lock before it reads a byte: the file is
 * locked (flock) first, and a second open, in this process or another, is refused with SC_EBUSY
 * ("log job.jsonl is locked by pid 4242 ...", the holder read from /proc/locks) until the first is
 * closed or its process ended; the refused one changes nothing. Then the log is read through the
 * locked descriptor and verified: a log whose chain breaks is refused with SC_ECORRUPT naming the
 * line; a file that is not a log (a device, a FIFO, a first line without a chain member, bytes
 * without one complete line, or a tail without a newline that is longer than one buffered write
 * and does not begin as our lines begin) is refused with SC_EPARSE and left byte for byte as it
 * is. A torn tail of a log (a crash mid-write; never acknowledged) is cut before the first line
 * is written, and reported through the log callback then; an adapter that writes nothing changes
 * nothing. The chain continues from the last line. o NULL: defaults. On success *out is the
 * adapter, which the caller closes with sc_jsonl_close() before sc_engine_free(); on failure
 * *out is NULL. Write and sync errors (the directory's fsync of a new log included, done with
 * the first sync) acknowledge the events concerned with SC_EIO (the engine pauses the task),
 * with a message naming the file and the error; every later event fails the same way. */
SC_EXTERN int sc_jsonl_open(sc_engine *e, const char *path, const sc_jsonl_options *o,
                            sc_jsonl **out);

/* What sc_jsonl_open found in the existing file (lines, a torn tail that was cut). Borrowed,
 * valid until sc_jsonl_close(). */
SC_EXTERN const sc_jsonl_report *sc_jsonl_open_report(const sc_jsonl *j);

/* Writes what is buffered, syncs (unless SC_FSYNC_NONE), acknowledges every event still held,
 * unsubscribes, closes the file and frees the adapter. Runs the loop without blocking until its own
 * work on the thread pool and its handles are done; call it outside the loop's callbacks. Returns
 * SC_EIO if a write or sync failed at any point. NULL: SC_OK. */
SC_EXTERN int sc_jsonl_close(sc_jsonl *j);

/* Walks a log and checks every line's chain. SC_OK with r->torn_tail for a log that merely ends in
 * an incomplete line; SC_ECORRUPT with r->first_bad_line for a changed, inserted or removed line
 * (the message names the line and its byte offset); SC_EPARSE for a file that is not a log at all
 * (a device, a FIFO, a first line without a chain member, bytes without one complete line);
 * SC_ENOTFOUND when there is no such file; SC_EIO when it cannot be read (a directory, no
 * permission). An empty file is an empty log. Takes no lock and changes nothing. r may be NULL. */
SC_EXTERN int sc_jsonl_verify(const char *path, sc_jsonl_report *r);

typedef struct sc_unfinished {
  sc_recovery_request request; /* mode RETRY preset; task_id NULL; recovered_from the stopped id;
                                  the caller may change any field (sc_unfinished_free frees
                                  what the scan put there, not what the caller did) */
  sc_task_status status;       /* the task's last status in the log */
  sc_recovery_request scanned; /* private: the request as the scan allocated it */
  /* Reserved room (zero), so that the library's array keeps its element size when fields are
   * added or the request grows: a later version takes its room from here (docs/design.md, "ABI").
   * sizeof(sc_unfinished) is SC_UNFINISHED_SIZE on LP64 for the whole of soversion 1. */
  uint64_t reserved[29];
} sc_unfinished;

#define SC_UNFINISHED_SIZE 512

/* Reads a log and returns one entry per task that has no terminal event and is not superseded by a
 * later task.recovered: config and previous config from task.created, the last completed stage
 * with the context and digest of its stage.completed, the fingerprint, epoch, tenant, plan and
 * traceparent. The chain is verified as the log is read; a log that does not verify is refused
 * with SC_ECORRUPT (see sc_jsonl_scan_ex to recover from the good prefix). *out is an array of *n
 * entries that the caller frees with sc_unfinished_free() (NULL when there is none); r may be
 * NULL. */
SC_EXTERN int sc_jsonl_scan(const char *path, sc_unfinished **out, size_t *n, sc_jsonl_report *r);

#define SC_JSONL_SCAN_OPTIONS_VERSION 1

typedef struct sc_jsonl_scan_options {
  unsigned version; /* SC_JSONL_SCAN_OPTIONS_VERSION */
  /* true: a log whose chain breaks is read up to its last good line instead of refused;
   * r->first_bad_line still says where it broke. */
  bool stop_at_last_good_line;
} sc_jsonl_scan_options;

static inline void sc_jsonl_scan_options_init(sc_jsonl_scan_options *o) {
  memset(o, 0, sizeof(*o));
  o->version = SC_JSONL_SCAN_OPTIONS_VERSION;
}

/* sc_jsonl_scan with options (o NULL: defaults, the same as sc_jsonl_scan). */
SC_EXTERN int sc_jsonl_scan_ex(const char *path, const sc_jsonl_scan_options *o,
                               sc_unfinished **out, size_t *n, sc_jsonl_report *r);

/* What the open, locked log holds: the same entries as sc_jsonl_scan, read through the writer's
 * descriptor (the lines it verified when it opened, and those it wrote since), so that what a
 * recovery recovers is what the lock holder sees and no other writer can change it meanwhile.
 * Call it before the engine emits events of its own (lines still buffered are not read). *out
 * and *n as for sc_jsonl_scan. */
SC_EXTERN int sc_jsonl_unfinished(sc_jsonl *j, sc_unfinished **out, size_t *n);

/* Frees what sc_jsonl_scan or sc_jsonl_unfinished returned: every string and JSON value the scan
 * allocated. A request field the caller changed (a task_id of its own, another context) is not
 * freed: the caller owns what it put there. NULL is a no-op. */
SC_EXTERN void sc_unfinished_free(sc_unfinished *u, size_t n);

/* Reads a log's events in order: calls fn(json, len, udata) for every line whose chain verifies,
 * with json the event exactly as the engine encoded it (the line without its chain member and
 * newline, NUL-terminated; borrowed for the call). A non-zero return of fn stops the walk and is
 * returned. Otherwise SC_OK, or the errors of sc_jsonl_verify (the lines before a broken one are
 * still handed over). Takes no lock and changes nothing. The socket adapter replays from it. */
typedef int (*sc_jsonl_event_fn)(const char *json, size_t len, void *udata);
SC_EXTERN int sc_jsonl_read_events(const char *path, sc_jsonl_event_fn fn, void *udata);

/* The same reading in pieces, from where the last piece stopped (the socket's replays read a large
 * log a piece at a time, so that none holds a thread for long). sc_jsonl_cursor_read hands the
 * verified lines after the cursor to fn, about max_bytes of them (at least 4096; a longer line
 * whole), and moves the cursor past them. A non-zero return of fn stops the read *before* that
 * line, which the next read hands again; it is returned. *at_end (may be NULL) is set when the
 * read reached the end of the file as it is now (a line without its newline yet included: a
 * later read takes it whole). SC_ECORRUPT for a line that does not verify (the cursor stays there
 * for good), SC_EIO, SC_ENOMEM. The cursor keeps the file open: a log replaced meanwhile is read
 * as it was. */
typedef struct sc_jsonl_cursor sc_jsonl_cursor;
SC_EXTERN int sc_jsonl_cursor_open(const char *path, sc_jsonl_cursor **out);
SC_EXTERN int sc_jsonl_cursor_read(sc_jsonl_cursor *c, size_t max_bytes, sc_jsonl_event_fn fn,
                                   void *udata, bool *at_end);
SC_EXTERN void sc_jsonl_cursor_close(sc_jsonl_cursor *c);

/* A place in a log that a cursor can come back to (the socket's replay index keeps one per task,
 * so that a replay starts at the task's first line instead of the log's). */
typedef struct sc_jsonl_position {
  uint64_t dev, ino; /* the file it was told in */
  uint64_t offset;   /* the byte offset of a line's start */
  uint64_t line;     /* that line's number, from 0 */
  char chain[64];    /* the chain value of the line before it (64 '0' before the first) */
} sc_jsonl_position;

/* Where c stands: called from the fn of sc_jsonl_cursor_read, the line being handed to it;
 * otherwise the line the next read begins with. */
SC_EXTERN void sc_jsonl_cursor_tell(const sc_jsonl_cursor *c, sc_jsonl_position *pos);
/* Moves c to pos, which a cursor on the same file told (also one that stopped at a broken line):
 * SC_EINVAL, and c unchanged, when pos is of another file (a compaction renamed a new log over
 * the path) or beyond the file's end (it was cut back). The line at pos is verified against
 * pos's chain value when it is read: a file rewritten in place gets SC_ECORRUPT there. */
SC_EXTERN int sc_jsonl_cursor_seek(sc_jsonl_cursor *c, const sc_jsonl_position *pos);

/* ---- compaction (docs/jsonl.md, "Compaction") ---- */

#define SC_JSONL_COMPACT_OPTIONS_VERSION 1

typedef struct sc_jsonl_compact_options {
  unsigned version; /* SC_JSONL_COMPACT_OPTIONS_VERSION */
  /* Finished tasks (a terminal event, or superseded by a recovery) whose last line is younger
   * than this many seconds are kept whole; 0: none is kept; negative: every one is kept. */
  int64_t keep_finished_s;
  /* A name for the old log, which is kept as it is under it: a hard link made before the new
   * log replaces the old one (same file system; a name that exists already is refused). NULL:
   * the old log goes once the new one is in place. Borrowed for the call. */
  const char *archive;
  /* The time, in seconds since the epoch, that ages are measured from; 0: the clock. */
  int64_t now_s;
  /* Called at each step of a compaction ("locked", "archived", "written", "synced", "renamed",
   * "done"); may be NULL. Tests stop the process there. */
  void (*step)(const char *step, void *udata);
  void *step_udata;
} sc_jsonl_compact_options;

/* Fills the defaults (nothing finished kept, no archive, the clock); inline, like every _init(). */
static inline void sc_jsonl_compact_options_init(sc_jsonl_compact_options *o) {
  memset(o, 0, sizeof(*o));
  o->version = SC_JSONL_COMPACT_OPTIONS_VERSION;
}

typedef struct sc_jsonl_compact_report {
  bool compacted;          /* false: nothing to drop, and the file was not touched */
  uint64_t lines_before;   /* complete lines of the old log */
  uint64_t bytes_before;   /* its size (a torn tail included) */
  uint64_t lines_after;    /* lines of the new log, its stagecoach.log.compacted line included */
  uint64_t bytes_after;    /* its size */
  uint64_t unfinished;     /* tasks kept because recovery needs them (in part) */
  uint64_t kept_finished;  /* finished tasks kept whole (younger than keep_finished_s) */
  uint64_t dropped;        /* finished tasks dropped */
  bool torn_tail_dropped;  /* the old log ended in a torn line, which the new one does not hold */
  char previous_chain[65]; /* the chain value of the old log's last line (hex, NUL-terminated) */
} sc_jsonl_compact_report;

/* Rewrites the log at path to hold only what the unfinished tasks need (their task.created, the
 * lines that change their state, and their lines from their last context snapshot on) and the
 * finished tasks younger than o->keep_finished_s, as a new chain whose first line,
 * `stagecoach.log.compacted`, names the old chain's last value and line count. A recovery from
 * the new log equals one from the old: the same sc_unfinished entries, contexts and digests.
 *
 * It takes the writer's lock first (SC_EBUSY naming the holder's pid while a writer runs) and
 * holds it throughout, so no writer starts meanwhile. The new log is written beside the old one
 * (PATH.compacting), fsync'd, locked, renamed over PATH, and the directory fsync'd: a crash at
 * any point leaves the old log or the new one under PATH, whole. o->archive is linked to the old
 * log before the rename. A log whose chain breaks is refused (SC_ECORRUPT), a file that is not a
 * log too (SC_EPARSE), each left as it is; a log with nothing to drop is not touched (r->compacted
 * false). A failed write or sync is SC_EIO, and the old log stays. o NULL: defaults (nothing
 * finished kept, no archive). r may be NULL. */
SC_EXTERN int sc_jsonl_compact(const char *path, const sc_jsonl_compact_options *o,
                               sc_jsonl_compact_report *r);

/* Checks that the log at path was compacted from the log at archive: both verify, and the first
 * line of path is a stagecoach.log.compacted line naming the chain value of archive's last line
 * and its line count. SC_OK, or SC_ECORRUPT saying what differs (SC_EINVAL: path does not begin
 * with a compacted line), or the errors of sc_jsonl_verify. Takes no lock and changes nothing. */
SC_EXTERN int sc_jsonl_verify_link(const char *path, const char *archive);

/* ---- the log as a store (<stagecoach/store.h>; docs/jsonl.md, "The log as a store") ---- */

struct sc_store;

/* The log at path behind the store interface. Nothing is opened yet: the queries read the log
 * (no lock; SC_ENOTFOUND while it does not exist), and sc_store_attach() opens its writer with o
 * (sc_jsonl_open: the lock, the verification; o NULL: defaults, copied). Then unfinished reads
 * through the locked descriptor (sc_jsonl_unfinished), otherwise it is sc_jsonl_scan. checkpoints,
 * latest and checkpoint are the stage.completed lines of the task's latest run (an id used again
 * starts afresh), a context folded from the last snapshot and checked against the line's digest
 * (SC_ECORRUPT when it does not match; a changed line whose chain was not recomputed is
 * SC_ECORRUPT from the chain). events gives the lines of a task (every run of its id, in the
 * log's order) from a seq. delete_task forgets nothing: a log is append-only, and its finished
 * tasks go all at once with sc_jsonl_compact(); it answers SC_EBUSY for an unfinished task,
 * SC_ENOTFOUND for an unknown one and SC_EINVAL (saying so) for a finished one. tasks and
 * approvals read the whole log (each id's latest run), as a database would answer them. On
 * success *out is the store, which
 * the caller closes with sc_store_close() (before sc_engine_free() of an attached engine). */
SC_EXTERN int sc_jsonl_store_open(const char *path, const sc_jsonl_options *o,
                                  struct sc_store **out);

/* The writer of an attached jsonl store (for sc_jsonl_open_report()); NULL before attach or for
 * another kind of store. Borrowed, valid until sc_store_close(). */
SC_EXTERN sc_jsonl *sc_jsonl_store_log(struct sc_store *s);

#ifdef __cplusplus
}
#endif
#endif
