/* The SQLite store's writer: opening (the writer's lock, WAL, the migrations), the projection of
 * every event into the tables in one transaction per loop turn, acked after the commit, and the
 * store interface. The queries are in query.c, retention in retain.c. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sqlite_int.h"

/* Version 1: the tables of docs/sqlite.md. A new version appends its statements here; a database
 * is brought up to date one step at a time inside one transaction. */
static const char *const migrations[] = {
    "CREATE TABLE tasks(id TEXT PRIMARY KEY, tenant TEXT, plan TEXT, status TEXT NOT NULL,"
    " stage TEXT, stage_index INTEGER, retry_count INTEGER NOT NULL DEFAULT 0,"
    " epoch INTEGER NOT NULL DEFAULT 0, recovered_from TEXT, created_ns INTEGER NOT NULL,"
    " updated_ns INTEGER NOT NULL, finished INTEGER NOT NULL DEFAULT 0, error TEXT,"
    " initial_context TEXT) WITHOUT ROWID;"
    "CREATE INDEX tasks_by_tenant_status ON tasks(tenant, status, id);"
    "CREATE TABLE events(id INTEGER PRIMARY KEY, task_id TEXT NOT NULL, seq INTEGER NOT NULL,"
    " type TEXT NOT NULL, time_ns INTEGER NOT NULL, json TEXT NOT NULL);"
    "CREATE INDEX events_by_task ON events(task_id, seq);"
    "CREATE TABLE checkpoints(task_id TEXT NOT NULL, seq INTEGER NOT NULL, stage TEXT NOT NULL,"
    " stage_index INTEGER NOT NULL, attempt INTEGER NOT NULL, epoch INTEGER NOT NULL,"
    " time_ns INTEGER NOT NULL, reason TEXT NOT NULL, output TEXT, digest TEXT NOT NULL,"
    " fingerprint TEXT, context TEXT, PRIMARY KEY(task_id, seq)) WITHOUT ROWID;"
    "CREATE TABLE approvals(task_id TEXT NOT NULL, seq INTEGER NOT NULL, stage TEXT NOT NULL,"
    " stage_index INTEGER NOT NULL, reason TEXT, requested_ns INTEGER NOT NULL,"
    " deadline_ns INTEGER, approvers_needed INTEGER NOT NULL DEFAULT 1,"
    " approvals INTEGER NOT NULL DEFAULT 0, decided TEXT, decided_ns INTEGER, reviewer TEXT,"
    " comment TEXT, PRIMARY KEY(task_id, seq)) WITHOUT ROWID;"
    "CREATE INDEX approvals_pending ON approvals(decided, task_id);",
};
#define SCHEMA_VERSION ((int)(sizeof(migrations) / sizeof(migrations[0])))
_Static_assert(SCHEMA_VERSION == SC_SQLITE_SCHEMA_VERSION, "one migration per schema version");

static const char *const statements[ST__COUNT] = {
    [ST_EVENT] = "INSERT INTO events(task_id, seq, type, time_ns, json) VALUES(?1,?2,?3,?4,?5)",
    [ST_TASK_NEW] =
        "INSERT OR REPLACE INTO tasks(id, tenant, plan, status, stage, stage_index, retry_count,"
        " epoch, recovered_from, created_ns, updated_ns, finished, error, initial_context)"
        " VALUES(?1,?2,?3,?4,NULL,-1,0,?5,?6,?7,?7,0,NULL,?8)",
    [ST_TASK_UPDATE] = "UPDATE tasks SET status=?2, stage=COALESCE(?3, stage),"
                       " stage_index=CASE WHEN ?4 >= 0 THEN ?4 ELSE stage_index END,"
                       " epoch=?5, updated_ns=?6, finished=MAX(finished, ?7),"
                       " error=CASE WHEN ?8 IS NOT NULL THEN ?8 ELSE error END,"
                       " retry_count=COALESCE(?9, retry_count) WHERE id=?1",
    [ST_CHECKPOINT] = "INSERT OR REPLACE INTO checkpoints(task_id, seq, stage, stage_index,"
                      " attempt, epoch, time_ns, reason, output, digest, fingerprint, context)"
                      " VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12)",
    [ST_APPROVAL_NEW] =
        "INSERT OR REPLACE INTO approvals(task_id, seq, stage, stage_index, reason,"
        " requested_ns, deadline_ns, approvers_needed) VALUES(?1,?2,?3,?4,?5,?6,?7,?8)",
    [ST_APPROVAL_DECIDE] =
        "UPDATE approvals SET approvals=COALESCE(?4, approvals), decided=?5, decided_ns=?6,"
        " reviewer=COALESCE(?7, reviewer), comment=COALESCE(?8, comment)"
        " WHERE task_id=?1 AND stage=?2 AND decided IS NULL AND seq=(SELECT MAX(seq) FROM"
        " approvals WHERE task_id=?1 AND stage=?2 AND seq < ?3)",
    [ST_HAS_EVENT] = "SELECT 1 FROM events WHERE task_id=?1 AND seq=?2 LIMIT 1",
};

static int code_of(int rc) {
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED: return SC_EBUSY;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB: return SC_ECORRUPT;
    case SQLITE_NOMEM: return SC_ENOMEM;
    case SQLITE_CANTOPEN: return SC_ENOTFOUND;
    default: return SC_EIO;
  }
}

int sc__sqlite_error(sc_sqlite *db, int rc, const char *what) {
  const char *detail = db->db ? sqlite3_errmsg(db->db) : sqlite3_errstr(rc);
  return sc_error_set(code_of(rc), "database %s: %s: %s", db->path, what, detail);
}

int sc__sqlite_fail(sc_sqlite *db, int rc, const char *what) {
  int code = sc__sqlite_error(db, rc, what);
  if (db->err == 0) {
    db->err = code;
    snprintf(db->errmsg, sizeof(db->errmsg), "%s", sc_error_message());
  }
  return code;
}

int sc__sqlite_exec(sc_sqlite *db, const char *sql) {
  int rc = sqlite3_exec(db->db, sql, NULL, NULL, NULL);
  return rc == SQLITE_OK ? SC_OK : sc__sqlite_error(db, rc, sql);
}

/* ---- the writer's lock ---- */

/* The files this process holds the writer's lock of, by device and inode: a second open here is
 * refused before it opens a descriptor of its own, whose close would drop the POSIX locks SQLite
 * holds on the same file. */
static pthread_mutex_t held_mu = PTHREAD_MUTEX_INITIALIZER;
static struct held {
  dev_t dev;
  ino_t ino;
} held[64];
static size_t nheld;

static bool held_take(dev_t dev, ino_t ino) {
  pthread_mutex_lock(&held_mu);
  bool ok = nheld < sizeof(held) / sizeof(held[0]);
  for (size_t i = 0; ok && i < nheld; i++)
    if (held[i].dev == dev && held[i].ino == ino) ok = false;
  if (ok) held[nheld++] = (struct held){dev, ino};
  pthread_mutex_unlock(&held_mu);
  return ok;
}

static void held_drop(dev_t dev, ino_t ino) {
  pthread_mutex_lock(&held_mu);
  for (size_t i = 0; i < nheld; i++)
    if (held[i].dev == dev && held[i].ino == ino) {
      held[i] = held[--nheld];
      break;
    }
  pthread_mutex_unlock(&held_mu);
}

static int take_lock(sc_sqlite *db) {
  struct stat st;
  if (stat(db->path, &st) != 0)
    return sc_error_set(SC_EIO, "database %s: %s", db->path, strerror(errno));
  if (!S_ISREG(st.st_mode))
    return sc_error_set(SC_EINVAL, "database %s is not a regular file", db->path);
  if (!held_take(st.st_dev, st.st_ino))
    return sc_error_set(SC_EBUSY, "database %s is already open for writing in this process",
                        db->path);
  int fd = open(db->path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    held_drop(st.st_dev, st.st_ino);
    return sc_error_set(SC_EIO, "database %s: %s", db->path, strerror(errno));
  }
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int e = errno;
    close(fd); /* the file is not SQLite's yet in this process: nothing of its locks to drop */
    held_drop(st.st_dev, st.st_ino);
    return e == EWOULDBLOCK ? sc_error_set(SC_EBUSY,
                                           "database %s is open for writing by another process "
                                           "(one writer at a time)",
                                           db->path)
                            : sc_error_set(SC_EIO, "database %s: flock: %s", db->path, strerror(e));
  }
  db->lock_fd = fd;
  return SC_OK;
}

static void drop_lock(sc_sqlite *db) {
  if (db->lock_fd < 0) return;
  struct stat st;
  if (fstat(db->lock_fd, &st) == 0) held_drop(st.st_dev, st.st_ino);
  close(db->lock_fd);
  db->lock_fd = -1;
}

/* ---- the files under the writer ---- */

void sc__sqlite_watch_note(sc_sqlite *db) {
  struct stat st;
  db->seen.valid = false;
  if (db->lock_fd < 0 || fstat(db->lock_fd, &st) != 0) return;
  db->seen.size = st.st_size;
  db->seen.mtime = st.st_mtim;
  db->seen.wal_known = db->wal_path && stat(db->wal_path, &st) == 0;
  if (db->seen.wal_known) {
    db->seen.wal_dev = st.st_dev;
    db->seen.wal_ino = st.st_ino;
  }
  db->seen.valid = true;
}

static int watch_fail(sc_sqlite *db, int code, const char *what) {
  sc_error_set(code,
               "database %s %s during the run: the events since the last commit are not stored",
               db->path, what);
  if (db->err == 0) {
    db->err = code;
    snprintf(db->errmsg, sizeof(db->errmsg), "%s", sc_error_message());
  }
  return code;
}

/* Whether the files are still the ones this writer committed to. SQLite writes through its own
 * descriptors, so it goes on writing to a file deleted or renamed over (the data then lives only
 * until the process ends), and it reads the pages it has cached, so bytes changed under it go
 * unseen until a later open finds them. Only this writer writes the main file (its commits'
 * checkpoints; retention's connection does not checkpoint), so any other change of its size or
 * time is another program's. */
static int watch_check(sc_sqlite *db) {
  if (!db->seen.valid) return SC_OK;
  struct stat mine, there;
  if (fstat(db->lock_fd, &mine) != 0 || stat(db->path, &there) != 0 ||
      mine.st_dev != there.st_dev || mine.st_ino != there.st_ino)
    return watch_fail(db, SC_EIO, "was deleted or replaced");
  if (mine.st_size != db->seen.size || mine.st_mtim.tv_sec != db->seen.mtime.tv_sec ||
      mine.st_mtim.tv_nsec != db->seen.mtime.tv_nsec)
    return watch_fail(db, SC_ECORRUPT,
                      "was written by another program (its size or time changed outside this "
                      "writer's commits)");
  if (db->seen.wal_known && (stat(db->wal_path, &there) != 0 || there.st_dev != db->seen.wal_dev ||
                             there.st_ino != db->seen.wal_ino))
    return watch_fail(db, SC_EIO, "had its write-ahead log (-wal) deleted or replaced");
  return SC_OK;
}

/* ---- schema ---- */

static int user_version(sc_sqlite *db, int *out) {
  sqlite3_stmt *s;
  int rc = sqlite3_prepare_v2(
      db->db, "SELECT version FROM schema_version UNION ALL SELECT 0 LIMIT 1", -1, &s, NULL);
  if (rc != SQLITE_OK) {
    /* No version table: a new database, or a file that is not ours. */
    sqlite3_stmt *t;
    rc = sqlite3_prepare_v2(db->db, "SELECT count(*) FROM sqlite_master", -1, &t, NULL);
    if (rc != SQLITE_OK) return sc__sqlite_error(db, rc, "read the schema");
    rc = sqlite3_step(t);
    int tables = rc == SQLITE_ROW ? sqlite3_column_int(t, 0) : -1;
    sqlite3_finalize(t);
    if (tables < 0) return sc__sqlite_error(db, rc, "read the schema");
    if (tables > 0)
      return sc_error_set(SC_EPARSE,
                          "database %s is not a stagecoach database (it has tables but no "
                          "schema_version); it is left as it is",
                          db->path);
    *out = -1;
    return SC_OK;
  }
  rc = sqlite3_step(s);
  *out = rc == SQLITE_ROW ? sqlite3_column_int(s, 0) : 0;
  sqlite3_finalize(s);
  return rc == SQLITE_ROW ? SC_OK : sc__sqlite_error(db, rc, "read the schema version");
}

static int migrate(sc_sqlite *db) {
  int have;
  int rc = user_version(db, &have);
  if (rc != SC_OK) return rc;
  if (have > SCHEMA_VERSION)
    return sc_error_set(SC_EINVAL,
                        "database %s has schema version %d, newer than this stagecoach's %d: "
                        "open it with a newer stagecoach",
                        db->path, have, SCHEMA_VERSION);
  if (have == SCHEMA_VERSION) return SC_OK;
  struct stat st;
  if (db->opts.readonly && have < 0 && stat(db->path, &st) == 0 && st.st_size == 0)
    return sc_error_set(SC_ENOTFOUND,
                        "database %s is empty (created but never written: no task in it yet)",
                        db->path);
  if (db->opts.readonly)
    return sc_error_set(have < 0 ? SC_ENOTFOUND : SC_EINVAL,
                        have < 0 ? "database %s holds no stagecoach tables"
                                 : "database %s needs a migration, which a read-only open "
                                   "does not do",
                        db->path);
  if ((rc = sc__sqlite_exec(db, "BEGIN IMMEDIATE")) != SC_OK) return rc;
  if (have < 0) {
    rc = sc__sqlite_exec(db, "CREATE TABLE schema_version(version INTEGER NOT NULL);"
                             "INSERT INTO schema_version VALUES(0)");
    have = 0;
  }
  for (int v = have; rc == SC_OK && v < SCHEMA_VERSION; v++)
    rc = sc__sqlite_exec(db, migrations[v]);
  if (rc == SC_OK) {
    char sql[64];
    snprintf(sql, sizeof(sql), "UPDATE schema_version SET version=%d", SCHEMA_VERSION);
    rc = sc__sqlite_exec(db, sql);
  }
  if (rc == SC_OK) rc = sc__sqlite_exec(db, "COMMIT");
  if (rc != SC_OK) {
    char keep[512];
    snprintf(keep, sizeof(keep), "%s", sc_error_message());
    sqlite3_exec(db->db, "ROLLBACK", NULL, NULL, NULL);
    return sc_error_set(rc, "%s", keep);
  }
  return SC_OK;
}

/* ---- the projection ---- */

static const char *str_member(const cJSON *o, const char *name) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

static void bind_text(sqlite3_stmt *s, int i, const char *v) {
  if (v)
    sqlite3_bind_text(s, i, v, -1, SQLITE_STATIC);
  else
    sqlite3_bind_null(s, i);
}

/* Binds the canonical JSON of v (NULL when v is NULL); *buf is freed by the caller. */
static bool bind_json(sqlite3_stmt *s, int i, const cJSON *v, char **buf) {
  *buf = NULL;
  if (v == NULL) {
    sqlite3_bind_null(s, i);
    return true;
  }
  size_t len;
  if ((*buf = sc_json_canonical(v, &len)) == NULL) return false;
  sqlite3_bind_text(s, i, *buf, (int)len, SQLITE_STATIC);
  return true;
}

/* The same into one of the handle's buffers, valid until its next use: no allocation once the
 * buffer has grown to the size of the largest value. */
static bool bind_json_into(sqlite3_stmt *s, int i, const cJSON *v, sc__buf *b) {
  if (v == NULL) {
    sqlite3_bind_null(s, i);
    return true;
  }
  sc__buf_reset(b);
  sc__json_value(b, v, true);
  if (!sc__buf_cstr(b)) {
    sc__buf_free(b); /* incomplete: the next use starts over */
    return false;
  }
  sqlite3_bind_text(s, i, b->p, (int)b->len, SQLITE_STATIC);
  return true;
}

static int step_done(sc_sqlite *db, sqlite3_stmt *s, const char *what) {
  int rc = sqlite3_step(s);
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
  return rc == SQLITE_DONE ? SC_OK : sc__sqlite_fail(db, rc, what);
}

static bool finishes(sc_event_type t) {
  return t == SC_EV_TASK_COMPLETED || t == SC_EV_TASK_CANCELLED || t == SC_EV_ROLLBACK_COMPLETED;
}

static uint64_t hash_id(const char *s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
  return h;
}

static void clear_updates(sc_sqlite *db) {
  for (size_t i = 0; i < db->capupdates; i++) {
    sc__task_update *u = &db->updates[i];
    if (u->id == NULL) continue;
    free(u->id);
    free(u->stage);
    free(u->error);
    memset(u, 0, sizeof(*u));
  }
  db->nupdates = 0;
}

static sc__task_update *slot(sc__task_update *v, size_t cap, const char *id) {
  for (size_t i = hash_id(id) & (cap - 1);; i = (i + 1) & (cap - 1))
    if (v[i].id == NULL || strcmp(v[i].id, id) == 0) return &v[i];
}

/* The pending update of a task (created when asked); NULL when out of memory. */
static sc__task_update *find_update(sc_sqlite *db, const char *id, bool create) {
  if (db->capupdates && !create) {
    sc__task_update *u = slot(db->updates, db->capupdates, id);
    return u->id ? u : NULL;
  }
  if ((db->nupdates + 1) * 2 > db->capupdates) {
    size_t cap = db->capupdates ? db->capupdates * 2 : 64;
    sc__task_update *v = calloc(cap, sizeof(*v));
    if (v == NULL) return NULL;
    for (size_t i = 0; i < db->capupdates; i++)
      if (db->updates[i].id) *slot(v, cap, db->updates[i].id) = db->updates[i];
    free(db->updates);
    db->updates = v;
    db->capupdates = cap;
  }
  sc__task_update *u = slot(db->updates, db->capupdates, id);
  if (u->id == NULL) {
    if ((u->id = strdup(id)) == NULL) return NULL;
    u->stage_index = -1;
    u->retry_count = -1;
    db->nupdates++;
  }
  return u;
}

int sc__sqlite_flush(sc_sqlite *db) {
  if (db->nupdates == 0) return SC_OK;
  int rc = SC_OK;
  sqlite3_stmt *s = db->st[ST_TASK_UPDATE];
  for (size_t i = 0; i < db->capupdates && rc == SC_OK; i++) {
    const sc__task_update *u = &db->updates[i];
    if (u->id == NULL) continue;
    sqlite3_bind_text(s, 1, u->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, u->status, -1, SQLITE_STATIC);
    bind_text(s, 3, u->stage);
    sqlite3_bind_int(s, 4, u->stage_index);
    sqlite3_bind_int64(s, 5, u->epoch);
    sqlite3_bind_int64(s, 6, u->updated_ns);
    sqlite3_bind_int(s, 7, u->finished);
    bind_text(s, 8, u->error);
    if (u->retry_count >= 0) sqlite3_bind_int64(s, 9, u->retry_count);
    rc = step_done(db, s, "update a task");
  }
  clear_updates(db);
  return rc;
}

static int project_task(sc_sqlite *db, const sc_event *ev) {
  const cJSON *data = ev->data;
  sqlite3_stmt *s;
  char *buf = NULL;
  int rc;
  if (ev->type == SC_EV_TASK_CREATED) {
    /* An id used again: what its old run left this turn is written before the new row. */
    if (find_update(db, ev->task_id, false) && (rc = sc__sqlite_flush(db)) != SC_OK) return rc;
    s = db->st[ST_TASK_NEW];
    const cJSON *point = cJSON_GetObjectItemCaseSensitive(data, "recovery");
    const cJSON *initial =
        cJSON_GetObjectItemCaseSensitive(cJSON_IsObject(point) ? point : data, "context");
    sqlite3_bind_text(s, 1, ev->task_id, -1, SQLITE_STATIC);
    bind_text(s, 2, ev->tenant_id);
    bind_text(s, 3, ev->plan_id);
    sqlite3_bind_text(s, 4, sc_task_status_name(ev->status), -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 5, (sqlite3_int64)ev->epoch);
    bind_text(s, 6, str_member(data, "recovered_from"));
    sqlite3_bind_int64(s, 7, ev->time_ns);
    if (!bind_json(s, 8, cJSON_IsObject(initial) ? initial : NULL, &buf)) {
      sqlite3_reset(s);
      return sc__sqlite_fail(db, SQLITE_NOMEM, "encode a context");
    }
    rc = step_done(db, s, "insert a task");
    free(buf);
    return rc;
  }
  sc__task_update *u = find_update(db, ev->task_id, true);
  if (u == NULL) return sc__sqlite_fail(db, SQLITE_NOMEM, "update a task");
  u->status = sc_task_status_name(ev->status);
  if (ev->stage && (u->stage == NULL || strcmp(u->stage, ev->stage) != 0)) {
    char *stage = strdup(ev->stage);
    if (stage == NULL) return sc__sqlite_fail(db, SQLITE_NOMEM, "update a task");
    free(u->stage);
    u->stage = stage;
  }
  if (ev->stage) u->stage_index = ev->stage_index;
  u->epoch = (int64_t)ev->epoch;
  u->updated_ns = ev->time_ns;
  if (finishes(ev->type)) u->finished = true;
  const cJSON *error = cJSON_GetObjectItemCaseSensitive(data, "error");
  const char *message = str_member(error, "message");
  if (message == NULL && cJSON_IsString(error)) message = error->valuestring;
  if (message && (ev->type == SC_EV_TASK_FAILED || ev->type == SC_EV_TASK_PAUSED ||
                  ev->type == SC_EV_ROLLBACK_FAILED)) {
    char *copy = strdup(message);
    if (copy == NULL) return sc__sqlite_fail(db, SQLITE_NOMEM, "update a task");
    free(u->error);
    u->error = copy;
  }
  const cJSON *retries = cJSON_GetObjectItemCaseSensitive(data, "retry_count");
  if (ev->type == SC_EV_TASK_STARTED && cJSON_IsNumber(retries))
    u->retry_count = (int64_t)retries->valuedouble;
  return SC_OK;
}

static int project_checkpoint(sc_sqlite *db, const sc_event *ev) {
  const cJSON *data = ev->data;
  const char *digest = str_member(data, "digest");
  if (digest == NULL || ev->stage == NULL) return SC_OK; /* nothing a checkpoint can be */
  sqlite3_stmt *s = db->st[ST_CHECKPOINT];
  sqlite3_bind_text(s, 1, ev->task_id, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 2, (sqlite3_int64)ev->seq);
  sqlite3_bind_text(s, 3, ev->stage, -1, SQLITE_STATIC);
  sqlite3_bind_int(s, 4, ev->stage_index);
  sqlite3_bind_int64(s, 5, ev->attempt);
  sqlite3_bind_int64(s, 6, (sqlite3_int64)ev->epoch);
  sqlite3_bind_int64(s, 7, ev->time_ns);
  sqlite3_bind_text(s, 8, ev->status == SC_TASK_ROLLING_BACK ? "rollback" : "run", -1,
                    SQLITE_STATIC);
  const cJSON *output = cJSON_GetObjectItemCaseSensitive(data, "output");
  const cJSON *context = cJSON_GetObjectItemCaseSensitive(data, "context");
  sqlite3_bind_text(s, 10, digest, -1, SQLITE_STATIC);
  bind_text(s, 11, str_member(data, "fingerprint"));
  if (!bind_json_into(s, 9, output, &db->scratch[0]) ||
      !bind_json_into(s, 12, cJSON_IsObject(context) ? context : NULL, &db->scratch[1])) {
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return sc__sqlite_fail(db, SQLITE_NOMEM, "encode a checkpoint");
  }
  return step_done(db, s, "insert a checkpoint");
}

static int project_approval(sc_sqlite *db, const sc_event *ev) {
  const cJSON *data = ev->data;
  sqlite3_stmt *s;
  if (ev->stage == NULL) return SC_OK;
  if (ev->type == SC_EV_APPROVAL_REQUESTED) {
    s = db->st[ST_APPROVAL_NEW];
    sqlite3_bind_text(s, 1, ev->task_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, (sqlite3_int64)ev->seq);
    sqlite3_bind_text(s, 3, ev->stage, -1, SQLITE_STATIC);
    sqlite3_bind_int(s, 4, ev->stage_index);
    bind_text(s, 5, str_member(data, "reason"));
    sqlite3_bind_int64(s, 6, ev->time_ns);
    const cJSON *timeout = cJSON_GetObjectItemCaseSensitive(data, "timeout_ms");
    if (cJSON_IsNumber(timeout) && timeout->valuedouble > 0)
      sqlite3_bind_int64(s, 7, ev->time_ns + (int64_t)timeout->valuedouble * 1000000);
    const cJSON *needed = cJSON_GetObjectItemCaseSensitive(data, "approvers_needed");
    sqlite3_bind_int64(s, 8, cJSON_IsNumber(needed) ? (sqlite3_int64)needed->valuedouble : 1);
    return step_done(db, s, "insert an approval");
  }
  const cJSON *approvals = cJSON_GetObjectItemCaseSensitive(data, "approvals");
  const cJSON *needed = cJSON_GetObjectItemCaseSensitive(data, "approvers_needed");
  /* A grant that does not reach the number needed yet leaves the approval pending. */
  bool partial = ev->type == SC_EV_APPROVAL_GRANTED && cJSON_IsNumber(approvals) &&
                 cJSON_IsNumber(needed) && approvals->valuedouble < needed->valuedouble;
  s = db->st[ST_APPROVAL_DECIDE];
  sqlite3_bind_text(s, 1, ev->task_id, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 2, ev->stage, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 3, (sqlite3_int64)ev->seq);
  if (cJSON_IsNumber(approvals)) sqlite3_bind_int64(s, 4, (sqlite3_int64)approvals->valuedouble);
  const char *decided = ev->type == SC_EV_APPROVAL_GRANTED    ? "granted"
                        : ev->type == SC_EV_APPROVAL_REJECTED ? "rejected"
                                                              : "timed_out";
  if (!partial) {
    sqlite3_bind_text(s, 5, decided, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 6, ev->time_ns);
  }
  bind_text(s, 7, str_member(data, "reviewer"));
  bind_text(s, 8, str_member(data, "comment"));
  return step_done(db, s, "record an approval decision");
}

int sc__sqlite_project(sc_sqlite *db, const sc_event *ev, const char *json, size_t len) {
  sqlite3_stmt *s = db->st[ST_EVENT];
  sqlite3_bind_text(s, 1, ev->task_id, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 2, (sqlite3_int64)ev->seq);
  const char *type = sc_event_type_name(ev->type);
  sqlite3_bind_text(s, 3, type + strlen("stagecoach."), -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 4, ev->time_ns);
  sqlite3_bind_text(s, 5, json, (int)len, SQLITE_STATIC);
  int rc = step_done(db, s, "insert an event");
  if (rc == SC_OK) rc = project_task(db, ev);
  if (rc == SC_OK && ev->type == SC_EV_STAGE_COMPLETED) rc = project_checkpoint(db, ev);
  if (rc == SC_OK && (ev->type == SC_EV_APPROVAL_REQUESTED || ev->type == SC_EV_APPROVAL_GRANTED ||
                      ev->type == SC_EV_APPROVAL_REJECTED || ev->type == SC_EV_APPROVAL_TIMED_OUT))
    rc = project_approval(db, ev);
  return rc;
}

static void finish_acks(sc_sqlite *db, int status) {
  /* Copied out first: an ack may make the engine emit the next events into this store. */
  sc_ack **v = db->acks;
  size_t n = db->nacks;
  db->acks = NULL;
  db->nacks = db->capacks = 0;
  for (size_t i = 0; i < n; i++) {
    if (status < 0)
      sc_ack_fail(v[i], status, db->errmsg);
    else
      sc_ack_done(v[i], SC_OK);
  }
  free(v);
}

/* Ends the turn's transaction: commits, then acks; a failed commit rolls back and fails them. */
static int commit_turn(sc_sqlite *db) {
  if (db->in_tx) {
    db->in_tx = false;
    if (!db->err) watch_check(db);
    if (!db->err) sc__sqlite_flush(db);
    int rc = db->err ? SQLITE_ABORT : sqlite3_exec(db->db, "COMMIT", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
      if (!db->err) sc__sqlite_fail(db, rc, "commit");
      if (sqlite3_get_autocommit(db->db) == 0) sqlite3_exec(db->db, "ROLLBACK", NULL, NULL, NULL);
    } else {
      sc__sqlite_watch_note(db);
    }
  }
  clear_updates(db);
  finish_acks(db, db->err ? db->err : SC_OK);
  return db->err;
}

static void on_prepare(uv_prepare_t *h) {
  sc_sqlite *db = h->data;
  commit_turn(db);
  if (db->nacks == 0 && !db->in_tx) {
    uv_prepare_stop(&db->prepare);
    db->prepare_active = false;
  }
}

static int on_event(const sc_event *ev, sc_ack *ack, void *udata) {
  sc_sqlite *db = udata;
  if (db->err) return sc_error_set(db->err, "%s", db->errmsg);
  if (db->nacks == db->capacks) {
    size_t cap = db->capacks ? db->capacks * 2 : 64;
    sc_ack **v = realloc(db->acks, cap * sizeof(*v));
    if (v == NULL) return sc_error_set(SC_ENOMEM, "database %s: out of memory", db->path);
    db->acks = v;
    db->capacks = cap;
  }
  size_t len;
  char *json = sc_event_to_json(ev, &len);
  if (json == NULL) return sc_error_set(SC_ENOMEM, "database %s: cannot encode an event", db->path);
  int rc = SC_OK;
  if (!db->in_tx) {
    int src = sqlite3_exec(db->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    if (src != SQLITE_OK)
      rc = sc__sqlite_fail(db, src, "begin");
    else
      db->in_tx = true;
  }
  if (rc == SC_OK) rc = sc__sqlite_project(db, ev, json, len);
  free(json);
  if (rc != SC_OK) {
    /* The turn's transaction is lost with this event: its earlier events fail at the end of the
     * turn, and this one now. */
    if (!db->prepare_active) {
      uv_prepare_start(&db->prepare, on_prepare);
      db->prepare_active = true;
    }
    return db->err ? sc_error_set(db->err, "%s", db->errmsg) : rc; /* the message is set */
  }
  db->acks[db->nacks++] = ack;
  if (!db->prepare_active) {
    uv_prepare_start(&db->prepare, on_prepare);
    db->prepare_active = true;
  }
  return SC_DEFER;
}

static int attach(sc_sqlite *db, sc_engine *e) {
  if (db->opts.readonly)
    return sc_error_set(SC_EINVAL, "database %s is open read-only: it cannot attach", db->path);
  if (db->engine) return sc_error_set(SC_EBUSY, "database %s is attached already", db->path);
  db->loop = sc_engine_loop(e);
  uv_prepare_init(db->loop, &db->prepare);
  db->prepare.data = db;
  db->prepare_init = true;
  sc_subscriber s;
  sc_subscriber_init(&s);
  s.on_event = on_event;
  s.udata = db;
  int rc = sc_engine_subscribe(e, &s, &db->sub);
  if (rc != SC_OK) return rc;
  db->engine = e;
  sc__sqlite_watch_note(db);
  return SC_OK;
}

/* ---- the store interface ---- */

#define DB(s) ((sc_sqlite *)(s))
static int st_attach(sc_store *s, sc_engine *e) {
  return attach(DB(s), e);
}
static int st_unfinished(sc_store *s, sc_unfinished **out, size_t *n) {
  return sc_sqlite_unfinished(DB(s), out, n);
}
static int st_checkpoints(sc_store *s, const char *t, cJSON **out) {
  return sc_sqlite_checkpoints(DB(s), t, out);
}
static int st_latest(sc_store *s, const char *t, cJSON **out) {
  return sc_sqlite_latest(DB(s), t, out);
}
static int st_checkpoint(sc_store *s, const char *id, cJSON **out) {
  return sc_sqlite_checkpoint(DB(s), id, out);
}
static int st_events(sc_store *s, const char *t, uint64_t from, sc_store_event_fn fn, void *u) {
  return sc_sqlite_events(DB(s), t, from, fn, u);
}
static int st_delete(sc_store *s, const char *t) {
  return sc_sqlite_delete_task(DB(s), t);
}
static int st_tasks(sc_store *s, const sc_store_task_query *q, cJSON **out) {
  return sc_sqlite_tasks(DB(s), q, out);
}
static int st_approvals(sc_store *s, const char *t, cJSON **out) {
  return sc_sqlite_approvals(DB(s), t, out);
}
static int st_close(sc_store *s) {
  return sc_sqlite_close(DB(s));
}

sc_store *sc_sqlite_store(sc_sqlite *db) {
  return db ? &db->store : NULL;
}

/* ---- open and close ---- */

static void free_db(sc_sqlite *db) {
  for (int i = 0; i < ST__COUNT; i++)
    sqlite3_finalize(db->st[i]);
  if (db->db) sqlite3_close(db->db);
  drop_lock(db); /* after SQLite let go of the file: see held_take */
  clear_updates(db);
  sc__buf_free(&db->scratch[0]);
  sc__buf_free(&db->scratch[1]);
  free(db->updates);
  free(db->path);
  free(db->wal_path);
  free(db->acks);
  free(db);
}

static void on_close(uv_handle_t *h) {
  *(bool *)h->data = true;
}

int sc_sqlite_close(sc_sqlite *db) {
  if (db == NULL) return SC_OK;
  while (db->retaining > 0) /* a retention on the thread pool ends first (its callback runs) */
    uv_run(db->loop, UV_RUN_ONCE);
  if (db->engine) {
    commit_turn(db);
    sc_subscription_cancel(db->sub);
  }
  if (db->prepare_init) {
    bool closed = false;
    db->prepare.data = &closed;
    uv_close((uv_handle_t *)&db->prepare, on_close);
    while (!closed)
      uv_run(db->loop, UV_RUN_NOWAIT);
  }
  if (db->db && !db->opts.readonly && db->err == 0)
    sqlite3_exec(db->db, "PRAGMA wal_checkpoint(PASSIVE)", NULL, NULL, NULL);
  int err = db->err;
  char msg[512];
  snprintf(msg, sizeof(msg), "%s", db->errmsg);
  free_db(db);
  return err ? sc_error_set(err, "%s", msg) : SC_OK;
}

static int configure(sc_sqlite *db) {
  sqlite3_busy_timeout(db->db, (int)db->opts.busy_timeout_ms);
  sqlite3_extended_result_codes(db->db, 1);
  if (db->opts.readonly) return SC_OK;
  /* A page cache large enough for the pages one turn's transaction touches (the events' append,
   * the index by task, the rows of the tasks and checkpoints of the turn): with SQLite's 2 MB
   * default, a turn of many tasks reads back pages it just wrote. */
  int rc = sc__sqlite_exec(db, "PRAGMA cache_size=-32768");
  if (rc == SC_OK) rc = sc__sqlite_exec(db, "PRAGMA journal_mode=WAL");
  if (rc == SC_OK)
    rc = sc__sqlite_exec(db, db->opts.synchronous == SC_SQLITE_SYNC_NORMAL
                                 ? "PRAGMA synchronous=NORMAL"
                                 : "PRAGMA synchronous=FULL");
  return rc;
}

int sc_sqlite_open(sc_engine *e, const char *path, const sc_sqlite_options *o, sc_sqlite **out) {
  if (out) *out = NULL;
  if (path == NULL || out == NULL) return sc_error_set(SC_EINVAL, "sqlite: NULL argument");
  if (o != NULL && (o->version < 1 || o->version > SC_SQLITE_OPTIONS_VERSION))
    return sc_error_set(SC_EINVAL, "sqlite: unsupported sc_sqlite_options version %u", o->version);
  sc_sqlite *db = calloc(1, sizeof(*db));
  size_t plen = strlen(path);
  if (db == NULL || (db->path = strdup(path)) == NULL ||
      (db->wal_path = malloc(plen + 5)) == NULL) {
    if (db) free(db->path);
    free(db);
    return sc_error_set(SC_ENOMEM, "sqlite: out of memory");
  }
  memcpy(db->wal_path, path, plen);
  memcpy(db->wal_path + plen, "-wal", 5);
  db->lock_fd = -1;
  if (o)
    db->opts = *o;
  else
    sc_sqlite_options_init(&db->opts);
  if (db->opts.busy_timeout_ms == 0) db->opts.busy_timeout_ms = 2000;
  db->store = (sc_store){.version = SC_STORE_VERSION,
                         .name = "sqlite",
                         .attach = st_attach,
                         .unfinished = st_unfinished,
                         .checkpoints = st_checkpoints,
                         .latest = st_latest,
                         .checkpoint = st_checkpoint,
                         .events = st_events,
                         .delete_task = st_delete,
                         .tasks = st_tasks,
                         .approvals = st_approvals,
                         .close = st_close};
  int rc = SC_OK;
  struct stat st;
  bool exists = stat(path, &st) == 0;
  if (exists && !S_ISREG(st.st_mode)) {
    /* A FIFO would block the open, a directory or device is no database. */
    rc = sc_error_set(SC_EINVAL, "database %s is not a regular file (%s)", path,
                      S_ISDIR(st.st_mode)    ? "a directory"
                      : S_ISFIFO(st.st_mode) ? "a FIFO"
                      : S_ISSOCK(st.st_mode) ? "a socket"
                                             : "a device");
    goto fail;
  }
  if (!exists && lstat(path, &st) == 0) {
    rc = sc_error_set(SC_ENOTFOUND, "database %s is a symbolic link to nothing", path);
    goto fail;
  }
  if (!exists && (db->opts.existing || db->opts.readonly)) {
    rc = sc_error_set(SC_ENOTFOUND, "database %s: no such file", path);
    goto fail;
  }
  if (!exists && !db->opts.readonly) {
    /* Created empty first, so that the writer's lock is taken before SQLite writes a byte. */
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0 && errno != EEXIST) {
      rc = sc_error_set(SC_EIO, "database %s: %s", path, strerror(errno));
      goto fail;
    }
    if (fd >= 0) close(fd);
  }
  if (!db->opts.readonly && (rc = take_lock(db)) != SC_OK) goto fail;
  int flags = db->opts.readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE;
  int src = sqlite3_open_v2(path, &db->db, flags | SQLITE_OPEN_NOMUTEX, NULL);
  if (src != SQLITE_OK) {
    rc = sc__sqlite_error(db, src, "open");
    goto fail;
  }
  if ((rc = configure(db)) != SC_OK || (rc = migrate(db)) != SC_OK) goto fail;
  if (!db->opts.readonly)
    for (int i = 0; i < ST__COUNT; i++) {
      src = sqlite3_prepare_v3(db->db, statements[i], -1, SQLITE_PREPARE_PERSISTENT, &db->st[i],
                               NULL);
      if (src != SQLITE_OK) {
        rc = sc__sqlite_error(db, src, "prepare");
        goto fail;
      }
    }
  if (e != NULL && (rc = attach(db, e)) != SC_OK) goto fail;
  *out = db;
  return SC_OK;
fail : {
  char keep[512];
  snprintf(keep, sizeof(keep), "%s", sc_error_message());
  if (db->prepare_init) {
    bool closed = false;
    db->prepare.data = &closed;
    uv_close((uv_handle_t *)&db->prepare, on_close);
    while (!closed)
      uv_run(db->loop, UV_RUN_NOWAIT);
  }
  free_db(db);
  return sc_error_set(rc, "%s", keep);
}
}

int sc_sqlite_store_open(const char *path, const sc_sqlite_options *o, sc_store **out) {
  if (out) *out = NULL;
  sc_sqlite *db;
  int rc = sc_sqlite_open(NULL, path, o, &db);
  if (rc == SC_OK) *out = &db->store;
  return rc;
}
