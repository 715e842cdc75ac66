/* The SQLite store's readers: the checkpoints (their context folded from the last snapshot and
 * the outputs after it, verified against the digest on every read), the unfinished tasks and a
 * restore point (both through the log's own scan over the stored events), events from a seq,
 * tasks by tenant and status, pending approvals, deleting a finished task, importing a log. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../events/internal.h"
#include "sqlite_int.h"

static int prepare(sc_sqlite *db, const char *sql, sqlite3_stmt **s) {
  int rc = sqlite3_prepare_v2(db->db, sql, -1, s, NULL);
  return rc == SQLITE_OK ? SC_OK : sc__sqlite_error(db, rc, "prepare a query");
}

/* The thread's message, prefixed with the database's name (copied first: the message is the
 * buffer the new one is formatted into). */
static int with_path(sc_sqlite *db, int rc) {
  char *was = strdup(sc_error_message());
  if (was == NULL) return rc;
  rc = sc_error_set(rc, "database %s: %s", db->path, was);
  free(was);
  return rc;
}

static const char *col_text(sqlite3_stmt *s, int i) {
  return (const char *)sqlite3_column_text(s, i);
}

static cJSON *string_or_null(const char *v) {
  return v ? cJSON_CreateString(v) : cJSON_CreateNull();
}

static cJSON *time_item(int64_t ns) {
  char buf[32];
  sc__format_time(ns, buf);
  return cJSON_CreateString(buf);
}

static int check_args(sc_sqlite *db, const void *a, const void *b) {
  if (db == NULL || a == NULL || b == NULL) return sc_error_set(SC_EINVAL, "sqlite: NULL argument");
  /* A query inside the turn's transaction sees the task rows as its events left them. */
  return db->in_tx ? sc__sqlite_flush(db) : SC_OK;
}

/* ---- checkpoints ---- */

#define CHECKPOINT_COLUMNS                                                                         \
  "c.task_id, t.tenant, t.plan, c.stage, c.stage_index, c.attempt, c.seq, c.epoch, c.time_ns,"     \
  " c.reason, c.output, c.digest, c.fingerprint"

/* One checkpoint object from a row of CHECKPOINT_COLUMNS; NULL when out of memory or when a
 * stored output does not parse (*corrupt then). */
static cJSON *checkpoint_json(sqlite3_stmt *s, bool *corrupt) {
  cJSON *o = cJSON_CreateObject();
  if (o == NULL) return NULL;
  const char *task = col_text(s, 0);
  size_t idlen = strlen(task) + 24;
  char *id = malloc(idlen);
  if (id == NULL) {
    cJSON_Delete(o);
    return NULL;
  }
  snprintf(id, idlen, "%s/%" PRId64, task, (int64_t)sqlite3_column_int64(s, 6));
  cJSON_AddItemToObject(o, "id", cJSON_CreateString(id));
  free(id);
  cJSON_AddItemToObject(o, "task", cJSON_CreateString(col_text(s, 0)));
  cJSON_AddItemToObject(o, "tenant", string_or_null(col_text(s, 1)));
  cJSON_AddItemToObject(o, "plan", string_or_null(col_text(s, 2)));
  cJSON_AddItemToObject(o, "stage", cJSON_CreateString(col_text(s, 3)));
  cJSON_AddNumberToObject(o, "index", sqlite3_column_int(s, 4));
  cJSON_AddNumberToObject(o, "attempt", (double)sqlite3_column_int64(s, 5));
  cJSON_AddNumberToObject(o, "seq", (double)sqlite3_column_int64(s, 6));
  cJSON_AddNumberToObject(o, "epoch", (double)sqlite3_column_int64(s, 7));
  cJSON_AddItemToObject(o, "time", time_item(sqlite3_column_int64(s, 8)));
  cJSON_AddItemToObject(o, "reason", cJSON_CreateString(col_text(s, 9)));
  const char *output = col_text(s, 10);
  cJSON *out = output ? cJSON_Parse(output) : cJSON_CreateNull();
  if (out == NULL) *corrupt = output != NULL;
  cJSON_AddItemToObject(o, "output", out);
  cJSON_AddItemToObject(o, "digest", string_or_null(col_text(s, 11)));
  cJSON_AddItemToObject(o, "fingerprint", string_or_null(col_text(s, 12)));
  if (*corrupt || cJSON_GetArraySize(o) != 14) {
    cJSON_Delete(o);
    return NULL;
  }
  return o;
}

static int task_known(sc_sqlite *db, const char *task_id) {
  sqlite3_stmt *s;
  int rc = prepare(db, "SELECT finished FROM tasks WHERE id=?1", &s);
  if (rc != SC_OK) return rc;
  sqlite3_bind_text(s, 1, task_id, -1, SQLITE_STATIC);
  int step = sqlite3_step(s);
  rc = step == SQLITE_ROW ? sqlite3_column_int(s, 0)
       : step == SQLITE_DONE
           ? sc_error_set(SC_ENOTFOUND, "database %s: no task '%s'", db->path, task_id)
           : sc__sqlite_error(db, step, "read a task");
  sqlite3_finalize(s);
  return rc;
}

int sc_sqlite_checkpoints(sc_sqlite *db, const char *task_id, cJSON **out) {
  int rc = check_args(db, task_id, out);
  if (rc != SC_OK) return rc;
  *out = NULL;
  if ((rc = task_known(db, task_id)) < 0) return rc;
  sqlite3_stmt *s;
  if ((rc = prepare(db,
                    "SELECT " CHECKPOINT_COLUMNS " FROM checkpoints c LEFT JOIN tasks t ON"
                    " t.id=c.task_id WHERE c.task_id=?1 ORDER BY c.seq",
                    &s)) != SC_OK)
    return rc;
  sqlite3_bind_text(s, 1, task_id, -1, SQLITE_STATIC);
  cJSON *list = cJSON_CreateArray();
  int step;
  bool corrupt = false;
  while (list && (step = sqlite3_step(s)) == SQLITE_ROW) {
    cJSON *c = checkpoint_json(s, &corrupt);
    if (c == NULL) {
      rc = corrupt ? sc_error_set(SC_ECORRUPT,
                                  "database %s: a checkpoint of task %s has an "
                                  "output that is not JSON (a changed row)",
                                  db->path, task_id)
                   : sc_error_set(SC_ENOMEM, "sqlite: out of memory");
      break;
    }
    cJSON_AddItemToArray(list, c);
  }
  if (list == NULL)
    rc = sc_error_set(SC_ENOMEM, "sqlite: out of memory");
  else if (rc == SC_OK && step != SQLITE_DONE)
    rc = sc__sqlite_error(db, step, "read checkpoints");
  sqlite3_finalize(s);
  if (rc != SC_OK) {
    cJSON_Delete(list);
    return rc;
  }
  *out = list;
  return SC_OK;
}

/* The context after checkpoint (task_id, seq): the last snapshot at or before it (else the task's
 * initial context) with the outputs after it merged on. */
static int fold(sc_sqlite *db, const char *task_id, int64_t seq, cJSON **out) {
  *out = NULL;
  sqlite3_stmt *s;
  int rc = prepare(db,
                   "SELECT seq, context FROM checkpoints WHERE task_id=?1 AND seq<=?2 AND context"
                   " IS NOT NULL ORDER BY seq DESC LIMIT 1",
                   &s);
  if (rc != SC_OK) return rc;
  sqlite3_bind_text(s, 1, task_id, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 2, seq);
  int64_t from = 0;
  cJSON *context = NULL;
  const char *text = NULL;
  int step = sqlite3_step(s);
  if (step == SQLITE_ROW) {
    from = sqlite3_column_int64(s, 0);
    text = col_text(s, 1);
  } else if (step != SQLITE_DONE) {
    rc = sc__sqlite_error(db, step, "read a snapshot");
  }
  if (rc == SC_OK && text) context = cJSON_Parse(text);
  sqlite3_finalize(s);
  if (rc != SC_OK) return rc;
  if (text == NULL) { /* no snapshot: the task's initial context */
    if ((rc = prepare(db, "SELECT initial_context FROM tasks WHERE id=?1", &s)) != SC_OK) return rc;
    sqlite3_bind_text(s, 1, task_id, -1, SQLITE_STATIC);
    if (sqlite3_step(s) == SQLITE_ROW && (text = col_text(s, 0)) != NULL)
      context = cJSON_Parse(text);
    else
      context = cJSON_CreateObject();
    sqlite3_finalize(s);
  }
  if (!cJSON_IsObject(context)) {
    cJSON_Delete(context);
    return sc_error_set(SC_ECORRUPT,
                        "database %s: checkpoint %s/%" PRId64 ": its snapshot is not a JSON "
                        "object (a changed row)",
                        db->path, task_id, seq);
  }
  if ((rc = prepare(db,
                    "SELECT output FROM checkpoints WHERE task_id=?1 AND seq>?2 AND seq<=?3"
                    " ORDER BY seq",
                    &s)) != SC_OK) {
    cJSON_Delete(context);
    return rc;
  }
  sqlite3_bind_text(s, 1, task_id, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 2, from);
  sqlite3_bind_int64(s, 3, seq);
  while ((step = sqlite3_step(s)) == SQLITE_ROW) {
    const char *o = col_text(s, 0);
    if (o == NULL) continue;
    cJSON *output = cJSON_Parse(o);
    bool ok = output && sc__context_merge(context, output);
    cJSON_Delete(output);
    if (!ok) {
      rc =
          sc_error_set(SC_ECORRUPT, "database %s: an output of task %s is not JSON (a changed row)",
                       db->path, task_id);
      break;
    }
  }
  if (rc == SC_OK && step != SQLITE_DONE) rc = sc__sqlite_error(db, step, "read outputs");
  sqlite3_finalize(s);
  if (rc != SC_OK) {
    cJSON_Delete(context);
    return rc;
  }
  *out = context;
  return SC_OK;
}

/* The checkpoint of the row the query selects, with its context verified. */
static int one_checkpoint(sc_sqlite *db, const char *sql, const char *task_id, int64_t seq,
                          const char *what, cJSON **out) {
  *out = NULL;
  sqlite3_stmt *s;
  int rc = prepare(db, sql, &s);
  if (rc != SC_OK) return rc;
  sqlite3_bind_text(s, 1, task_id, -1, SQLITE_STATIC);
  if (seq > 0) sqlite3_bind_int64(s, 2, seq);
  int step = sqlite3_step(s);
  bool corrupt = false;
  cJSON *c = NULL;
  if (step == SQLITE_ROW) {
    c = checkpoint_json(s, &corrupt);
    if (c == NULL)
      rc = corrupt ? sc_error_set(SC_ECORRUPT,
                                  "database %s: %s has an output that is not JSON (a changed row)",
                                  db->path, what)
                   : sc_error_set(SC_ENOMEM, "sqlite: out of memory");
  } else {
    rc = step == SQLITE_DONE ? sc_error_set(SC_ENOTFOUND, "database %s: no %s", db->path, what)
                             : sc__sqlite_error(db, step, "read a checkpoint");
  }
  sqlite3_finalize(s);
  if (rc != SC_OK) return rc;
  cJSON *context;
  int64_t at = (int64_t)cJSON_GetObjectItemCaseSensitive(c, "seq")->valuedouble;
  const char *id = cJSON_GetObjectItemCaseSensitive(c, "id")->valuestring;
  const cJSON *digest = cJSON_GetObjectItemCaseSensitive(c, "digest");
  if ((rc = fold(db, task_id, at, &context)) == SC_OK &&
      (rc = sc__context_verify(context, cJSON_IsString(digest) ? digest->valuestring : NULL,
                               "sqlite", id)) != SC_OK) {
    cJSON_Delete(context);
    rc = with_path(db, SC_ECORRUPT);
  }
  if (rc == SC_OK && (rc = sc__output_verify(context, cJSON_GetObjectItemCaseSensitive(c, "output"),
                                             "sqlite", id)) != SC_OK) {
    cJSON_Delete(context);
    rc = with_path(db, SC_ECORRUPT);
  }
  if (rc != SC_OK) {
    cJSON_Delete(c);
    return rc;
  }
  cJSON_AddItemToObject(c, "context", context);
  *out = c;
  return SC_OK;
}

int sc_sqlite_latest(sc_sqlite *db, const char *task_id, cJSON **out) {
  int rc = check_args(db, task_id, out);
  if (rc != SC_OK) return rc;
  char what[300];
  snprintf(what, sizeof(what), "checkpoint of task '%s'", task_id);
  return one_checkpoint(db,
                        "SELECT " CHECKPOINT_COLUMNS " FROM checkpoints c LEFT JOIN tasks t ON"
                        " t.id=c.task_id WHERE c.task_id=?1 ORDER BY c.seq DESC LIMIT 1",
                        task_id, 0, what, out);
}

int sc_sqlite_checkpoint(sc_sqlite *db, const char *checkpoint_id, cJSON **out) {
  int rc = check_args(db, checkpoint_id, out);
  if (rc != SC_OK) return rc;
  *out = NULL;
  char *task;
  uint64_t seq;
  if ((rc = sc__checkpoint_id_split(checkpoint_id, &task, &seq)) != SC_OK) return rc;
  char what[300];
  snprintf(what, sizeof(what), "checkpoint '%s'", checkpoint_id);
  rc = one_checkpoint(db,
                      "SELECT " CHECKPOINT_COLUMNS " FROM checkpoints c LEFT JOIN tasks t ON"
                      " t.id=c.task_id WHERE c.task_id=?1 AND c.seq=?2",
                      task, (int64_t)seq, what, out);
  free(task);
  return rc;
}

/* ---- the unfinished tasks and restore ---- */

/* Feeds the rows of s (one column: an event's JSON) to a log in memory and scans it. */
static int scan_rows(sc_sqlite *db, sqlite3_stmt *s, sc_unfinished **out, size_t *n) {
  sc__eventlog log;
  int rc = sc__eventlog_init(&log), step = SQLITE_DONE;
  while (rc == SC_OK && (step = sqlite3_step(s)) == SQLITE_ROW)
    rc = sc__eventlog_add(&log, col_text(s, 0), (size_t)sqlite3_column_bytes(s, 0));
  if (rc == SC_OK && step != SQLITE_DONE) rc = sc__sqlite_error(db, step, "read events");
  if (rc == SC_OK) {
    rc = sc__eventlog_unfinished(&log, db->path, out, n);
    if (rc != SC_OK) rc = with_path(db, rc);
  }
  sc__eventlog_free(&log);
  return rc;
}

int sc_sqlite_unfinished(sc_sqlite *db, sc_unfinished **out, size_t *n) {
  int rc = check_args(db, out, n);
  if (rc != SC_OK) return rc;
  *out = NULL;
  *n = 0;
  sqlite3_stmt *s;
  /* The unfinished tasks' events, and of the others what tells that they finished or whom they
   * supersede: the scan then decides exactly as it does over a log. */
  if ((rc = prepare(db,
                    "SELECT json FROM events WHERE task_id IN (SELECT id FROM tasks WHERE"
                    " finished=0) OR type IN ('task.created','task.recovered','task.completed',"
                    "'task.cancelled','rollback.completed') ORDER BY id",
                    &s)) != SC_OK)
    return rc;
  rc = scan_rows(db, s, out, n);
  sqlite3_finalize(s);
  return rc;
}

/* The last unfinished task of task_id's recovery chain (its latest unfinished recovery, that
 * one's, ...): a copy in *out, NULL when task_id has none. */
static int latest_unfinished_recovery(sc_sqlite *db, const char *task_id, char **out) {
  *out = NULL;
  sqlite3_stmt *s;
  int rc = prepare(db,
                   "SELECT id FROM tasks WHERE recovered_from=?1 AND finished=0 AND id<>?1"
                   " ORDER BY created_ns DESC, id DESC LIMIT 1",
                   &s);
  if (rc != SC_OK) return rc;
  const char *at = task_id;
  /* Bounded: a cycle only a hand edit could make ends here. */
  for (int hops = 0; rc == SC_OK && hops < 100000; hops++) {
    sqlite3_reset(s);
    sqlite3_bind_text(s, 1, at, -1, SQLITE_TRANSIENT);
    int step = sqlite3_step(s);
    if (step == SQLITE_DONE) break;
    if (step != SQLITE_ROW) {
      rc = sc__sqlite_error(db, step, "read tasks");
      break;
    }
    char *next = strdup(col_text(s, 0));
    if (next == NULL) {
      rc = sc_error_set(SC_ENOMEM, "sqlite: out of memory");
      break;
    }
    free(*out);
    at = *out = next;
  }
  sqlite3_finalize(s);
  if (rc != SC_OK) {
    free(*out);
    *out = NULL;
  }
  return rc;
}

int sc_sqlite_restore_request(sc_sqlite *db, const char *checkpoint_id, sc_recovery_mode mode,
                              sc_unfinished **out) {
  int rc = check_args(db, checkpoint_id, out);
  if (rc != SC_OK) return rc;
  *out = NULL;
  cJSON *cp;
  if ((rc = sc_sqlite_checkpoint(db, checkpoint_id, &cp)) != SC_OK) return rc;
  const char *task = cJSON_GetObjectItemCaseSensitive(cp, "task")->valuestring;
  const char *stage = cJSON_GetObjectItemCaseSensitive(cp, "stage")->valuestring;
  const char *reason = cJSON_GetObjectItemCaseSensitive(cp, "reason")->valuestring;
  const cJSON *digest = cJSON_GetObjectItemCaseSensitive(cp, "digest");
  int64_t seq = (int64_t)cJSON_GetObjectItemCaseSensitive(cp, "seq")->valuedouble;
  if (strcmp(reason, "run") != 0) {
    rc = sc_error_set(SC_EINVAL,
                      "checkpoint %s was taken during a rollback: restore from one of the "
                      "forward run's",
                      checkpoint_id);
    goto out;
  }
  sqlite3_stmt *s;
  if ((rc = prepare(db, "SELECT json FROM events WHERE task_id=?1 AND seq<=?2 ORDER BY id", &s)) !=
      SC_OK)
    goto out;
  sqlite3_bind_text(s, 1, task, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 2, seq);
  sc_unfinished *u = NULL;
  size_t n = 0;
  rc = scan_rows(db, s, &u, &n);
  sqlite3_finalize(s);
  if (rc != SC_OK) goto out;
  if (n != 1 || u[0].request.last_completed_stage == NULL ||
      strcmp(u[0].request.last_completed_stage, stage) != 0 ||
      u[0].request.context_digest == NULL || !cJSON_IsString(digest) ||
      strcmp(u[0].request.context_digest, digest->valuestring) != 0) {
    sc_unfinished_free(u, n);
    rc = sc_error_set(SC_ECORRUPT,
                      "database %s: the events of task %s up to checkpoint %s do not rebuild it "
                      "(changed or missing rows)",
                      db->path, task, checkpoint_id);
    goto out;
  }
  u[0].request.mode = mode;
  u[0].scanned.mode = mode;
  /* An unfinished recovery of that task (or of its recovery, ...) would stay runnable beside the
   * restored one: the restored task supersedes the chain's latest unfinished task instead. */
  char *latest = NULL;
  if ((rc = latest_unfinished_recovery(db, task, &latest)) != SC_OK) {
    sc_unfinished_free(u, n);
    goto out;
  }
  if (latest != NULL) {
    free((char *)u[0].scanned.recovered_from);
    u[0].request.recovered_from = u[0].scanned.recovered_from = latest;
  }
  *out = u;
out:
  cJSON_Delete(cp);
  return rc;
}

/* ---- events, tasks, approvals ---- */

int sc_sqlite_events(sc_sqlite *db, const char *task_id, uint64_t from_seq, sc_store_event_fn fn,
                     void *udata) {
  int rc = db && fn ? SC_OK : sc_error_set(SC_EINVAL, "sqlite: NULL argument");
  if (rc != SC_OK) return rc;
  if (task_id && (rc = task_known(db, task_id)) < 0) return rc;
  sqlite3_stmt *s;
  if ((rc =
           prepare(db,
                   task_id ? "SELECT json FROM events WHERE task_id=?1 AND seq>=?2 ORDER BY seq, id"
                           : "SELECT json FROM events WHERE seq>=?2 ORDER BY id",
                   &s)) != SC_OK)
    return rc;
  if (task_id) sqlite3_bind_text(s, 1, task_id, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 2, (sqlite3_int64)from_seq);
  int step;
  rc = SC_OK;
  while ((step = sqlite3_step(s)) == SQLITE_ROW)
    if ((rc = fn(col_text(s, 0), (size_t)sqlite3_column_bytes(s, 0), udata)) != 0) break;
  if (rc == SC_OK && step != SQLITE_DONE) rc = sc__sqlite_error(db, step, "read events");
  sqlite3_finalize(s);
  return rc;
}

int sc_sqlite_tasks(sc_sqlite *db, const sc_store_task_query *q, cJSON **out) {
  int rc = check_args(db, out, out);
  if (rc != SC_OK) return rc;
  *out = NULL;
  if (q && (q->version < 1 || q->version > SC_STORE_TASK_QUERY_VERSION))
    return sc_error_set(SC_EINVAL, "sqlite: unsupported sc_store_task_query version %u",
                        q->version);
  uint32_t limit = q && q->limit ? q->limit : 100;
  bool unfinished = q && q->status && strcmp(q->status, "unfinished") == 0;
  sqlite3_stmt *s;
  if ((rc = prepare(db,
                    "SELECT id, tenant, plan, status, stage, stage_index, retry_count, epoch,"
                    " recovered_from, created_ns, updated_ns, error FROM tasks WHERE"
                    " (?1 IS NULL OR tenant=?1) AND (?2 IS NULL OR status=?2) AND (?3=0 OR"
                    " finished=0) AND (?4 IS NULL OR id>?4) ORDER BY id LIMIT ?5",
                    &s)) != SC_OK)
    return rc;
  if (q && q->tenant_id) sqlite3_bind_text(s, 1, q->tenant_id, -1, SQLITE_STATIC);
  if (q && q->status && !unfinished) sqlite3_bind_text(s, 2, q->status, -1, SQLITE_STATIC);
  sqlite3_bind_int(s, 3, unfinished);
  if (q && q->after) sqlite3_bind_text(s, 4, q->after, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 5, (sqlite3_int64)limit + 1);
  cJSON *page = cJSON_CreateObject(), *list = cJSON_AddArrayToObject(page, "tasks");
  uint32_t count = 0;
  int step;
  char *next = NULL;
  while (list && (step = sqlite3_step(s)) == SQLITE_ROW) {
    if (++count > limit) break;
    cJSON *t = cJSON_CreateObject();
    cJSON_AddItemToArray(list, t);
    cJSON_AddItemToObject(t, "task", cJSON_CreateString(col_text(s, 0)));
    cJSON_AddItemToObject(t, "tenant", string_or_null(col_text(s, 1)));
    cJSON_AddItemToObject(t, "plan", string_or_null(col_text(s, 2)));
    cJSON_AddItemToObject(t, "status", cJSON_CreateString(col_text(s, 3)));
    cJSON_AddItemToObject(t, "stage", string_or_null(col_text(s, 4)));
    cJSON_AddNumberToObject(t, "index", sqlite3_column_int(s, 5));
    cJSON_AddNumberToObject(t, "retry_count", (double)sqlite3_column_int64(s, 6));
    cJSON_AddNumberToObject(t, "epoch", (double)sqlite3_column_int64(s, 7));
    cJSON_AddItemToObject(t, "recovered_from", string_or_null(col_text(s, 8)));
    cJSON_AddItemToObject(t, "created", time_item(sqlite3_column_int64(s, 9)));
    cJSON_AddItemToObject(t, "updated", time_item(sqlite3_column_int64(s, 10)));
    cJSON_AddItemToObject(t, "error", string_or_null(col_text(s, 11)));
    free(next);
    next = strdup(col_text(s, 0));
    if (next == NULL) {
      cJSON_Delete(page);
      page = list = NULL;
      break;
    }
  }
  if (list == NULL)
    rc = sc_error_set(SC_ENOMEM, "sqlite: out of memory");
  else if (step != SQLITE_DONE && step != SQLITE_ROW)
    rc = sc__sqlite_error(db, step, "read tasks");
  sqlite3_finalize(s);
  if (rc == SC_OK)
    cJSON_AddItemToObject(page, "next",
                          count > limit ? cJSON_CreateString(next) : cJSON_CreateNull());
  free(next);
  if (rc != SC_OK) {
    cJSON_Delete(page);
    return rc;
  }
  *out = page;
  return SC_OK;
}

int sc_sqlite_approvals(sc_sqlite *db, const char *task_id, cJSON **out) {
  int rc = check_args(db, out, out);
  if (rc != SC_OK) return rc;
  *out = NULL;
  sqlite3_stmt *s;
  if ((rc = prepare(db,
                    "SELECT a.task_id, t.tenant, a.stage, a.stage_index, a.reason, a.requested_ns,"
                    " a.deadline_ns, a.approvals, a.approvers_needed FROM approvals a JOIN tasks t"
                    " ON t.id=a.task_id WHERE a.decided IS NULL AND t.finished=0 AND"
                    " (?1 IS NULL OR a.task_id=?1) ORDER BY a.requested_ns, a.task_id",
                    &s)) != SC_OK)
    return rc;
  if (task_id) sqlite3_bind_text(s, 1, task_id, -1, SQLITE_STATIC);
  cJSON *list = cJSON_CreateArray();
  int step;
  while (list && (step = sqlite3_step(s)) == SQLITE_ROW) {
    cJSON *a = cJSON_CreateObject();
    cJSON_AddItemToArray(list, a);
    cJSON_AddItemToObject(a, "task", cJSON_CreateString(col_text(s, 0)));
    cJSON_AddItemToObject(a, "tenant", string_or_null(col_text(s, 1)));
    cJSON_AddItemToObject(a, "stage", cJSON_CreateString(col_text(s, 2)));
    cJSON_AddNumberToObject(a, "index", sqlite3_column_int(s, 3));
    cJSON_AddItemToObject(a, "reason", string_or_null(col_text(s, 4)));
    cJSON_AddItemToObject(a, "requested", time_item(sqlite3_column_int64(s, 5)));
    cJSON_AddItemToObject(a, "deadline",
                          sqlite3_column_type(s, 6) == SQLITE_NULL
                              ? cJSON_CreateNull()
                              : time_item(sqlite3_column_int64(s, 6)));
    cJSON_AddNumberToObject(a, "approvals", (double)sqlite3_column_int64(s, 7));
    cJSON_AddNumberToObject(a, "approvers_needed", (double)sqlite3_column_int64(s, 8));
  }
  if (list == NULL)
    rc = sc_error_set(SC_ENOMEM, "sqlite: out of memory");
  else if (step != SQLITE_DONE)
    rc = sc__sqlite_error(db, step, "read approvals");
  sqlite3_finalize(s);
  if (rc != SC_OK) {
    cJSON_Delete(list);
    return rc;
  }
  *out = list;
  return SC_OK;
}

/* Runs one deletion of a task's rows; adds what it deleted to *changed. */
static int delete_rows(sc_sqlite *db, const char *sql, const char *task, uint64_t *changed) {
  sqlite3_stmt *s;
  int rc = prepare(db, sql, &s);
  if (rc != SC_OK) return rc;
  sqlite3_bind_text(s, 1, task, -1, SQLITE_STATIC);
  int step = sqlite3_step(s);
  if (step != SQLITE_DONE) rc = sc__sqlite_error(db, step, "delete a task");
  sqlite3_finalize(s);
  if (rc == SC_OK && changed) *changed += (uint64_t)sqlite3_changes(db->db);
  return rc;
}

/* The unfinished task task_id recovered (its recovered_from, when that task is stored and not
 * finished): a copy in *out, or NULL. */
static int superseded_by(sc_sqlite *db, const char *task_id, char **out) {
  *out = NULL;
  sqlite3_stmt *s;
  int rc = prepare(db,
                   "SELECT p.id FROM tasks t JOIN tasks p ON p.id=t.recovered_from WHERE t.id=?1"
                   " AND p.finished=0 AND p.id<>t.id",
                   &s);
  if (rc != SC_OK) return rc;
  sqlite3_bind_text(s, 1, task_id, -1, SQLITE_STATIC);
  int step = sqlite3_step(s);
  if (step == SQLITE_ROW) {
    if ((*out = strdup(col_text(s, 0))) == NULL) rc = sc_error_set(SC_ENOMEM, "out of memory");
  } else if (step != SQLITE_DONE) {
    rc = sc__sqlite_error(db, step, "read a task");
  }
  sqlite3_finalize(s);
  return rc;
}

int sc__sqlite_drop_task(sc_sqlite *db, const char *task_id, bool rows, uint64_t *events,
                         uint64_t *checkpoints) {
  char *task = strdup(task_id);
  if (task == NULL) return sc_error_set(SC_ENOMEM, "out of memory");
  int rc = SC_OK;
  /* A chain longer than the tasks a database can hold is a cycle a hand edit made. */
  for (int hops = 0; rc == SC_OK && task != NULL && hops < 1000000; hops++) {
    char *prev = NULL;
    if ((rc = superseded_by(db, task, &prev)) != SC_OK) break;
    rc = delete_rows(db, "DELETE FROM events WHERE task_id=?1", task, events);
    if (rc == SC_OK)
      rc = delete_rows(db, "DELETE FROM checkpoints WHERE task_id=?1", task, checkpoints);
    if (rc == SC_OK && rows)
      rc = delete_rows(db, "DELETE FROM approvals WHERE task_id=?1", task, NULL);
    if (rc == SC_OK && rows) rc = delete_rows(db, "DELETE FROM tasks WHERE id=?1", task, NULL);
    free(task);
    task = prev;
  }
  free(task);
  return rc;
}

int sc_sqlite_delete_task(sc_sqlite *db, const char *task_id) {
  int rc = check_args(db, task_id, task_id);
  if (rc != SC_OK) return rc;
  if (db->opts.readonly) return sc_error_set(SC_EINVAL, "database %s is open read-only", db->path);
  if ((rc = task_known(db, task_id)) < 0) return rc;
  if (rc == 0)
    return sc_error_set(SC_EBUSY, "database %s: task %s has not finished: recovery needs it",
                        db->path, task_id);
  if ((rc = sc__sqlite_exec(db, "SAVEPOINT del")) != SC_OK) return rc;
  /* The unfinished tasks it recovered go with it: left alone, they would be unfinished again. */
  rc = sc__sqlite_drop_task(db, task_id, true, NULL, NULL);
  if (rc != SC_OK) {
    char keep[512];
    snprintf(keep, sizeof(keep), "%s", sc_error_message());
    sqlite3_exec(db->db, "ROLLBACK TO del; RELEASE del", NULL, NULL, NULL);
    return sc_error_set(rc, "%s", keep);
  }
  return sc__sqlite_exec(db, "RELEASE del");
}

/* ---- import ---- */

typedef struct import_state {
  sc_sqlite *db;
  uint64_t added, in_tx;
  int err;
  sqlite3_stmt *stored; /* the type and time of a stored (task, seq) */
} import_state;

static int import_line(const char *json, size_t len, void *udata) {
  import_state *st = udata;
  sc_sqlite *db = st->db;
  sc_event_doc *d;
  if (sc_event_parse(json, len, &d) != SC_OK) return SC_OK; /* verified but not an event of ours */
  const sc_event *ev = sc_event_doc_event(d);
  sqlite3_stmt *has = st->stored;
  sqlite3_bind_text(has, 1, ev->task_id, -1, SQLITE_STATIC);
  sqlite3_bind_int64(has, 2, (sqlite3_int64)ev->seq);
  int step = sqlite3_step(has);
  int rc = SC_OK;
  if (step == SQLITE_ROW) {
    /* The same event again (a repeated import, or the log of a run that also wrote here) is
     * skipped; another run under the same id would splice two tasks into one. */
    const char *type = sc_event_type_name(ev->type) + strlen("stagecoach.");
    const char *was = col_text(has, 0);
    if (sqlite3_column_int64(has, 1) != ev->time_ns || was == NULL || strcmp(was, type) != 0)
      rc = sc_error_set(SC_EINVAL,
                        "task '%s' is already in %s from another run (its event %" PRIu64
                        " differs): a database holds one task per id",
                        ev->task_id, db->path, ev->seq);
  }
  sqlite3_reset(has);
  if (step == SQLITE_DONE) {
    if (st->in_tx == 0) rc = sc__sqlite_exec(db, "BEGIN IMMEDIATE");
    if (rc == SC_OK) rc = sc__sqlite_project(db, ev, json, len);
    if (rc == SC_OK) st->added++;
    if (rc == SC_OK && ++st->in_tx == 10000) {
      rc = sc__sqlite_flush(db);
      if (rc == SC_OK) rc = sc__sqlite_exec(db, "COMMIT");
      st->in_tx = 0;
    }
  } else if (step != SQLITE_ROW) {
    rc = sc__sqlite_error(db, step, "read events");
  }
  sqlite3_clear_bindings(has);
  sc_event_doc_free(d);
  st->err = rc;
  return rc;
}

int sc_sqlite_import(sc_sqlite *db, const char *log_path, uint64_t *imported) {
  if (imported) *imported = 0;
  int rc = check_args(db, log_path, log_path);
  if (rc != SC_OK) return rc;
  if (db->opts.readonly || db->engine)
    return sc_error_set(SC_EINVAL, "database %s: import needs a writer that is not attached",
                        db->path);
  import_state st = {.db = db};
  if ((rc = prepare(db, "SELECT type, time_ns FROM events WHERE task_id=?1 AND seq=?2 LIMIT 1",
                    &st.stored)) != SC_OK)
    return rc;
  rc = sc_jsonl_read_events(log_path, import_line, &st);
  sqlite3_finalize(st.stored);
  if (rc == SC_ECORRUPT && st.err == SC_OK && st.in_tx) {
    /* The log breaks at a line: the good lines before it are kept. */
    char keep[512];
    snprintf(keep, sizeof(keep), "%s", sc_error_message());
    int crc = sc__sqlite_flush(db);
    if (crc == SC_OK) crc = sc__sqlite_exec(db, "COMMIT");
    st.in_tx = 0;
    rc = crc == SC_OK ? sc_error_set(SC_ECORRUPT, "%s", keep) : crc;
  }
  if (rc == SC_OK && st.in_tx) rc = sc__sqlite_flush(db);
  if (rc == SC_OK && st.in_tx) rc = sc__sqlite_exec(db, "COMMIT");
  if (rc != SC_OK) {
    char keep[512];
    snprintf(keep, sizeof(keep), "%s", sc_error_message());
    if (sqlite3_get_autocommit(db->db) == 0) sqlite3_exec(db->db, "ROLLBACK", NULL, NULL, NULL);
    db->err = 0; /* the projection's statements reported into the sticky error: not a run's */
    return sc_error_set(rc, "%s", keep);
  }
  db->err = 0;
  if (imported) *imported = st.added;
  return SC_OK;
}
