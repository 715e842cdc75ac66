/* Retention for the SQLite store: old checkpoints and finished tasks' old events go, in
 * transactions of a bounded number of rows, never what recovery or a rollback still needs.
 *
 * What a policy deletes of a task's checkpoints is always a prefix (the oldest ones): keep-last
 * keeps the newest, an age limit removes the oldest. So the one thing to repair is the fold of the
 * first checkpoint kept, whose snapshot may be among the deleted: its context, folded and
 * verified, is written into its own row first, in the same transaction as the first deletion. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../events/internal.h"
#include "sqlite_int.h"

static int64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

typedef struct batch {
  sc_sqlite *db;
  sc_sqlite_retain_report *r;
  int64_t started;
  uint64_t checkpoints, events; /* deleted in the open transaction: counted once it commits */
} batch;

static int begin(batch *b) {
  b->started = mono_ns();
  b->checkpoints = b->events = 0;
  return sc__sqlite_exec(b->db, "BEGIN IMMEDIATE");
}

static int commit(batch *b, int rc) {
  if (rc == SC_OK) rc = sc__sqlite_exec(b->db, "COMMIT");
  if (rc != SC_OK) {
    char keep[512];
    snprintf(keep, sizeof(keep), "%s", sc_error_message());
    if (sqlite3_get_autocommit(b->db->db) == 0)
      sqlite3_exec(b->db->db, "ROLLBACK", NULL, NULL, NULL);
    return sc_error_set(rc, "%s", keep);
  }
  sc__sqlite_watch_note(b->db); /* its checkpoint may have written the main file */
  int64_t took = mono_ns() - b->started;
  b->r->batches++;
  b->r->checkpoints_deleted += b->checkpoints;
  b->r->events_deleted += b->events;
  if (took > b->r->longest_batch_ns) b->r->longest_batch_ns = took;
  return SC_OK;
}

static int run(sc_sqlite *db, const char *sql, const char *task, int64_t a, int64_t c,
               uint64_t *changed) {
  sqlite3_stmt *s;
  int rc = sqlite3_prepare_v2(db->db, sql, -1, &s, NULL);
  if (rc != SQLITE_OK) return sc__sqlite_error(db, rc, "prepare retention");
  if (task) sqlite3_bind_text(s, 1, task, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 2, a);
  sqlite3_bind_int64(s, 3, c);
  rc = sqlite3_step(s);
  sqlite3_finalize(s);
  if (rc != SQLITE_DONE) return sc__sqlite_error(db, rc, "retention");
  if (changed) *changed += (uint64_t)sqlite3_changes(db->db);
  return SC_OK;
}

/* Whether the task still has events or checkpoints (1), none (0), or an error (< 0). */
static int has_records(sc_sqlite *db, const char *task) {
  sqlite3_stmt *s;
  int rc = sqlite3_prepare_v2(db->db,
                              "SELECT EXISTS(SELECT 1 FROM events WHERE task_id=?1) OR"
                              " EXISTS(SELECT 1 FROM checkpoints WHERE task_id=?1)",
                              -1, &s, NULL);
  if (rc != SQLITE_OK) return sc__sqlite_error(db, rc, "prepare retention");
  sqlite3_bind_text(s, 1, task, -1, SQLITE_STATIC);
  rc = sqlite3_step(s);
  int has = rc == SQLITE_ROW ? sqlite3_column_int(s, 0) != 0 : -1;
  sqlite3_finalize(s);
  return has >= 0 ? has : sc__sqlite_error(db, rc, "read a task's records");
}

/* Whether a task in this status may still roll back, which needs every checkpoint it has. */
static bool may_roll_back(const char *status) {
  return strcmp(status, "FAILED") == 0 || strcmp(status, "ROLLING_BACK") == 0 ||
         strcmp(status, "ROLLBACK_FAILED") == 0;
}

static int retain_task(batch *b, const sc_sqlite_retention *p, int64_t cutoff, const char *task,
                       bool finished, const char *status) {
  sc_sqlite *db = b->db;
  if (!finished && may_roll_back(status)) return SC_OK;
  sqlite3_stmt *s;
  int rc = sqlite3_prepare_v2(db->db,
                              "SELECT seq, time_ns, context IS NOT NULL FROM checkpoints WHERE"
                              " task_id=?1 ORDER BY seq",
                              -1, &s, NULL);
  if (rc != SQLITE_OK) return sc__sqlite_error(db, rc, "prepare retention");
  sqlite3_bind_text(s, 1, task, -1, SQLITE_STATIC);
  size_t n = 0, cap = 0;
  struct row {
    int64_t seq, time_ns;
    bool snapshot;
  } *rows = NULL;
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    if (n == cap) {
      cap = cap ? cap * 2 : 64;
      struct row *v = realloc(rows, cap * sizeof(*v));
      if (v == NULL) {
        free(rows);
        sqlite3_finalize(s);
        return sc_error_set(SC_ENOMEM, "retention: out of memory");
      }
      rows = v;
    }
    rows[n++] = (struct row){sqlite3_column_int64(s, 0), sqlite3_column_int64(s, 1),
                             sqlite3_column_int(s, 2) != 0};
  }
  sqlite3_finalize(s);
  if (rc != SQLITE_DONE) {
    free(rows);
    return sc__sqlite_error(db, rc, "read checkpoints");
  }
  size_t first_kept = 0;
  if (p->keep_last && n > p->keep_last) first_kept = n - p->keep_last;
  /* A finished task's age is its end's: it goes whole or not at all (sc_sqlite_retain). */
  if (p->max_age_ms > 0 && !finished)
    while (first_kept < n && rows[first_kept].time_ns < cutoff)
      first_kept++;
  if (!finished && first_kept >= n && n > 0) first_kept = n - 1; /* recovery resumes from it */
  rc = SC_OK;
  if (first_kept > 0 && first_kept < n && !rows[first_kept].snapshot) {
    /* Its snapshot goes: it becomes one, with the context its fold gives now (verified). */
    size_t idlen = strlen(task) + 24;
    char *id = malloc(idlen);
    cJSON *cp = NULL;
    if (id == NULL)
      rc = sc_error_set(SC_ENOMEM, "retention: out of memory");
    else
      snprintf(id, idlen, "%s/%lld", task, (long long)rows[first_kept].seq);
    if (rc == SC_OK) rc = sc_sqlite_checkpoint(db, id, &cp);
    free(id);
    if (rc == SC_OK) {
      char *text = sc_json_canonical(cJSON_GetObjectItemCaseSensitive(cp, "context"), NULL);
      cJSON_Delete(cp);
      if (text == NULL) rc = sc_error_set(SC_ENOMEM, "retention: out of memory");
      if (rc == SC_OK && (rc = begin(b)) == SC_OK) {
        sqlite3_stmt *u;
        int src = sqlite3_prepare_v2(
            db->db, "UPDATE checkpoints SET context=?1 WHERE task_id=?2 AND seq=?3", -1, &u, NULL);
        if (src == SQLITE_OK) {
          sqlite3_bind_text(u, 1, text, -1, SQLITE_STATIC);
          sqlite3_bind_text(u, 2, task, -1, SQLITE_STATIC);
          sqlite3_bind_int64(u, 3, rows[first_kept].seq);
          src = sqlite3_step(u);
          sqlite3_finalize(u);
        }
        if (src != SQLITE_DONE && src != SQLITE_OK) rc = sc__sqlite_error(db, src, "retention");
        rc = commit(b, rc);
      }
      free(text);
    }
  }
  uint32_t per = p->batch_rows ? p->batch_rows : 500;
  for (size_t i = 0; rc == SC_OK && i < first_kept; i += per) {
    size_t end = i + per < first_kept ? i + per : first_kept;
    if ((rc = begin(b)) != SC_OK) break;
    rc = run(db, "DELETE FROM checkpoints WHERE task_id=?1 AND seq>=?2 AND seq<=?3", task,
             rows[i].seq, rows[end - 1].seq, &b->checkpoints);
    rc = commit(b, rc);
  }
  free(rows);
  return rc;
}

int sc_sqlite_retain(sc_sqlite *db, const sc_sqlite_retention *p, sc_sqlite_retain_report *r) {
  sc_sqlite_retain_report local;
  if (r == NULL) r = &local;
  memset(r, 0, sizeof(*r));
  if (db == NULL || p == NULL) return sc_error_set(SC_EINVAL, "retain: NULL argument");
  if (p->version < 1 || p->version > SC_SQLITE_RETENTION_VERSION)
    return sc_error_set(SC_EINVAL, "retain: unsupported sc_sqlite_retention version %u",
                        p->version);
  if (db->opts.readonly) return sc_error_set(SC_EINVAL, "database %s is open read-only", db->path);
  if (p->max_age_ms < 0) return sc_error_set(SC_EINVAL, "retain: a negative age");
  if (db->in_tx)
    return sc_error_set(SC_EBUSY, "retain: the store's transaction of this loop "
                                  "turn is open; call it outside event callbacks");
  int64_t now = p->now_ns ? p->now_ns : sc__now_ns();
  /* Saturated: an age longer than the clock can count keeps everything. */
  int64_t cutoff = INT64_MIN;
  if (p->max_age_ms > 0 && p->max_age_ms <= INT64_MAX / 1000000 &&
      now >= INT64_MIN + p->max_age_ms * 1000000)
    cutoff = now - p->max_age_ms * 1000000;
  batch b = {.db = db, .r = r};
  sqlite3_stmt *s;
  int rc = sqlite3_prepare_v2(
      db->db, "SELECT id, finished, status, updated_ns FROM tasks ORDER BY id", -1, &s, NULL);
  if (rc != SQLITE_OK) return sc__sqlite_error(db, rc, "prepare retention");
  /* The task list is read first: the deletions then run in transactions of their own. */
  char **ids = NULL, **statuses = NULL;
  int *fin = NULL;
  int64_t *ended = NULL;
  size_t n = 0, cap = 0;
  rc = SC_OK;
  int step;
  while ((step = sqlite3_step(s)) == SQLITE_ROW) {
    if (n == cap) {
      cap = cap ? cap * 2 : 64;
      char **a = realloc(ids, cap * sizeof(*a));
      if (a) ids = a;
      char **c = realloc(statuses, cap * sizeof(*c));
      if (c) statuses = c;
      int *f = realloc(fin, cap * sizeof(*f));
      if (f) fin = f;
      int64_t *t = realloc(ended, cap * sizeof(*t));
      if (t) ended = t;
      if (!a || !c || !f || !t) {
        rc = sc_error_set(SC_ENOMEM, "retain: out of memory");
        break;
      }
    }
    ids[n] = strdup((const char *)sqlite3_column_text(s, 0));
    statuses[n] = strdup((const char *)sqlite3_column_text(s, 2));
    fin[n] = sqlite3_column_int(s, 1);
    ended[n] = sqlite3_column_int64(s, 3);
    n++;
    if (!ids[n - 1] || !statuses[n - 1]) {
      rc = sc_error_set(SC_ENOMEM, "retain: out of memory");
      break;
    }
  }
  if (rc == SC_OK && step != SQLITE_DONE) rc = sc__sqlite_error(db, step, "read tasks");
  sqlite3_finalize(s);
  /* A finished task older than the age, judged by its end, goes whole: its events and
   * checkpoints, with those of the unfinished tasks it recovered (they would otherwise be
   * offered to recovery again), one transaction for each. Its row stays. */
  for (size_t i = 0; rc == SC_OK && i < n; i++) {
    if (!fin[i] || cutoff == INT64_MIN || ended[i] >= cutoff) continue;
    fin[i] = -1;
    int has = has_records(db, ids[i]); /* gone before: no transaction for it */
    if (has <= 0) {
      rc = has < 0 ? has : SC_OK;
      continue;
    }
    if ((rc = begin(&b)) != SC_OK) break;
    rc = sc__sqlite_drop_task(db, ids[i], false, &b.events, &b.checkpoints);
    rc = commit(&b, rc);
  }
  if (p->keep_last || p->max_age_ms > 0)
    for (size_t i = 0; rc == SC_OK && i < n; i++)
      if (fin[i] >= 0) rc = retain_task(&b, p, cutoff, ids[i], fin[i] != 0, statuses[i]);
  uint32_t per = p->batch_rows ? p->batch_rows : 500;
  if (rc == SC_OK && p->max_age_ms > 0 && cutoff != INT64_MIN) {
    /* A finished task's approvals older than the limit go with its events: nothing waits on
     * them, and the pending query never lists a finished task's. */
    for (; rc == SC_OK;) {
      uint64_t before = r->approvals_deleted;
      if ((rc = begin(&b)) != SC_OK) break;
      rc = run(db,
               "DELETE FROM approvals WHERE (task_id, seq) IN (SELECT a.task_id, a.seq FROM"
               " approvals a JOIN tasks t ON t.id=a.task_id WHERE t.finished=1 AND"
               " a.requested_ns<?2 LIMIT ?3)",
               NULL, cutoff, per, &r->approvals_deleted);
      if ((rc = commit(&b, rc)) != SC_OK || r->approvals_deleted - before < per) break;
    }
  }
  for (size_t i = 0; i < n; i++) {
    free(ids[i]);
    free(statuses[i]);
  }
  free(ids);
  free(statuses);
  free(fin);
  free(ended);
  return rc;
}

/* ---- beside a running engine ---- */

typedef struct retain_job {
  uv_work_t work;
  sc_sqlite *db;
  sc_sqlite_retention policy;
  sc_sqlite_retain_report report;
  sc_sqlite_retain_cb cb;
  void *udata;
  int status;
  char message[512];
} retain_job;

/* On a thread of the pool: a connection of its own (the writer's lock is the handle's, held by
 * the process already), the batches, closed again. */
static void retain_work(uv_work_t *w) {
  retain_job *job = w->data;
  sc_sqlite shadow;
  memset(&shadow, 0, sizeof(shadow));
  shadow.path = job->db->path;
  shadow.opts = job->db->opts;
  shadow.lock_fd = -1;
  int rc =
      sqlite3_open_v2(shadow.path, &shadow.db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
  if (rc != SQLITE_OK) {
    job->status = sc__sqlite_error(&shadow, rc, "open for retention");
  } else {
    sqlite3_busy_timeout(shadow.db, (int)shadow.opts.busy_timeout_ms);
    /* The writer alone checkpoints into the main file: it watches that file for other writers. */
    sqlite3_exec(shadow.db, "PRAGMA wal_autocheckpoint=0", NULL, NULL, NULL);
    sqlite3_exec(shadow.db,
                 shadow.opts.synchronous == SC_SQLITE_SYNC_NORMAL ? "PRAGMA synchronous=NORMAL"
                                                                  : "PRAGMA synchronous=FULL",
                 NULL, NULL, NULL);
    job->status = sc_sqlite_retain(&shadow, &job->policy, &job->report);
  }
  if (job->status != SC_OK) snprintf(job->message, sizeof(job->message), "%s", sc_error_message());
  if (shadow.db) sqlite3_close(shadow.db);
}

static void retain_done(uv_work_t *w, int status) {
  retain_job *job = w->data;
  if (status != 0 && job->status == SC_OK) {
    job->status = SC_ECANCELLED;
    snprintf(job->message, sizeof(job->message), "retention cancelled");
  }
  job->db->retaining--;
  if (job->status != SC_OK) sc_error_set(job->status, "%s", job->message);
  job->cb(job->status, &job->report, job->udata);
  free(job);
}

int sc_sqlite_retain_start(sc_sqlite *db, const sc_sqlite_retention *p, sc_sqlite_retain_cb cb,
                           void *udata) {
  if (db == NULL || p == NULL || cb == NULL)
    return sc_error_set(SC_EINVAL, "retain: NULL argument");
  if (db->engine == NULL)
    return sc_error_set(
        SC_EINVAL, "database %s is not attached to an engine: use sc_sqlite_retain()", db->path);
  if (p->version < 1 || p->version > SC_SQLITE_RETENTION_VERSION)
    return sc_error_set(SC_EINVAL, "retain: unsupported sc_sqlite_retention version %u",
                        p->version);
  retain_job *job = calloc(1, sizeof(*job));
  if (job == NULL) return sc_error_set(SC_ENOMEM, "retain: out of memory");
  job->db = db;
  job->policy = *p;
  job->cb = cb;
  job->udata = udata;
  job->work.data = job;
  if (uv_queue_work(db->loop, &job->work, retain_work, retain_done) != 0) {
    free(job);
    return sc_error_set(SC_EIO, "retain: cannot queue the work");
  }
  db->retaining++;
  return SC_OK;
}
