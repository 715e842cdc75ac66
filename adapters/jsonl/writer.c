/* The log writer: a subscriber that appends each event as a line and defers its acknowledgement
 * until the line is as durable as the mode asks. Lines are written on the loop's thread (whole
 * lines only, in one buffer, so they are never interleaved or split); fdatasync runs on the libuv
 * thread pool so the loop never waits for the disk. In BATCH mode the lines of a loop turn share
 * one sync, and lines written while a sync is in flight share the next one (group commit). */
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include <uv.h>

#include "chain.h"

typedef struct ackq {
  sc_ack **v;
  size_t n, cap;
} ackq;

struct sc_jsonl {
  sc_engine *e;
  uv_loop_t *loop;
  char *path;
  int fd;
  sc_jsonl_options opts;
  sc_subscription *sub;
  sc__chain chain;
  char *buf; /* complete lines not yet written */
  size_t len, cap;
  ackq unwritten, written, syncing; /* acks by the state of their line */
  uint64_t offset;                  /* bytes in the file */
  uv_prepare_t prepare;             /* the end of a loop turn: write, start a sync */
  bool prepare_active;
  uv_work_t work;
  bool sync_in_flight;
  int sync_errno;
  int err; /* sticky: after a failed write or sync every event fails */
  char errmsg[300];
  unsigned closing_handles;
  sc_jsonl_report open_report;
};

void sc_jsonl_options_init(sc_jsonl_options *o) {
  memset(o, 0, sizeof(*o));
  o->version = SC_JSONL_OPTIONS_VERSION;
  o->fsync = SC_FSYNC_BATCH;
  o->buffer_bytes = 256 * 1024;
}

static int ackq_push(ackq *q, sc_ack *a) {
  if (q->n == q->cap) {
    size_t cap = q->cap ? q->cap * 2 : 64;
    sc_ack **v = realloc(q->v, cap * sizeof(*v));
    if (v == NULL) return SC_ENOMEM;
    q->v = v;
    q->cap = cap;
  }
  q->v[q->n++] = a;
  return SC_OK;
}

/* Moves the first `count` acks of `from` to the end of `to`. */
static int ackq_move(ackq *from, ackq *to, size_t count) {
  for (size_t i = 0; i < count; i++)
    if (ackq_push(to, from->v[i]) != SC_OK) return SC_ENOMEM;
  memmove(from->v, from->v + count, (from->n - count) * sizeof(*from->v));
  from->n -= count;
  return SC_OK;
}

static void ackq_finish(sc_jsonl *j, ackq *q, int status) {
  /* Copy out first: an ack may make the engine emit the next events into this adapter. */
  size_t n = q->n;
  sc_ack **v = q->v;
  q->v = NULL;
  q->n = q->cap = 0;
  for (size_t i = 0; i < n; i++) {
    if (status < 0)
      sc_ack_fail(v[i], status, j->errmsg);
    else
      sc_ack_done(v[i], status);
  }
  free(v);
}

static void fail(sc_jsonl *j, const char *what, int errnum) {
  if (j->err == 0) {
    j->err = SC_EIO;
    snprintf(j->errmsg, sizeof(j->errmsg), "%s %s: %s", what, j->path, strerror(errnum));
  }
  ackq_finish(j, &j->syncing, SC_EIO);
  ackq_finish(j, &j->written, SC_EIO);
  ackq_finish(j, &j->unwritten, SC_EIO);
  j->len = 0;
}

/* Writes the buffered lines. A short write is retried; a failed one cuts what it left behind, so
 * the file keeps ending at a line boundary. */
static void flush_write(sc_jsonl *j) {
  if (j->len == 0 || j->err) return;
  size_t done = 0;
  while (done < j->len) {
    ssize_t n = write(j->fd, j->buf + done, j->len - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int errnum = n < 0 ? errno : EIO;
      if (ftruncate(j->fd, (off_t)j->offset) != 0) { /* the log then ends in a torn tail */
      }
      fail(j, "write", errnum);
      return;
    }
    done += (size_t)n;
  }
  j->offset += j->len;
  j->len = 0;
  if (j->opts.fsync == SC_FSYNC_NONE) {
    ackq_finish(j, &j->unwritten, SC_OK);
  } else if (ackq_move(&j->unwritten, &j->written, j->unwritten.n) != SC_OK) {
    fail(j, "queue", ENOMEM);
  }
}

static void sync_work(uv_work_t *w) {
  sc_jsonl *j = w->data;
  j->sync_errno = fdatasync(j->fd) == 0 ? 0 : errno;
}

static void kick_sync(sc_jsonl *j);

static void sync_done(uv_work_t *w, int status) {
  sc_jsonl *j = w->data;
  j->sync_in_flight = false;
  if (status != 0 || j->sync_errno != 0) {
    /* After a failed fdatasync the kernel may have dropped the pages; a later sync that succeeds
     * proves nothing about them, so the failure is final. */
    fail(j, "fdatasync", status != 0 ? EIO : j->sync_errno);
    return;
  }
  ackq_finish(j, &j->syncing, SC_OK);
  kick_sync(j);
}

static void kick_sync(sc_jsonl *j) {
  if (j->sync_in_flight || j->written.n == 0 || j->err) return;
  /* ALWAYS: one event per sync. BATCH: every line written so far. */
  size_t count = j->opts.fsync == SC_FSYNC_ALWAYS ? 1 : j->written.n;
  if (ackq_move(&j->written, &j->syncing, count) != SC_OK) {
    fail(j, "queue", ENOMEM);
    return;
  }
  j->work.data = j;
  j->sync_in_flight = true;
  int rc = uv_queue_work(j->loop, &j->work, sync_work, sync_done);
  if (rc != 0) {
    j->sync_in_flight = false;
    fail(j, "fdatasync (queue)", EIO);
  }
}

static void on_prepare(uv_prepare_t *h) {
  sc_jsonl *j = h->data;
  flush_write(j);
  kick_sync(j);
  if (j->len == 0 && j->unwritten.n == 0) {
    uv_prepare_stop(&j->prepare);
    j->prepare_active = false;
  }
}

static bool reserve(sc_jsonl *j, size_t extra) {
  if (j->len + extra <= j->cap) return true;
  size_t cap = j->cap ? j->cap : 64 * 1024;
  while (cap < j->len + extra)
    cap *= 2;
  char *p = realloc(j->buf, cap);
  if (p == NULL) return false;
  j->buf = p;
  j->cap = cap;
  return true;
}

static int on_event(const sc_event *ev, sc_ack *ack, void *udata) {
  sc_jsonl *j = udata;
  if (j->err) return sc_error_set(j->err, "%s", j->errmsg);
  if (!reserve(j, 1024 + CHAIN_SUFFIX_LEN + 1))
    return sc_error_set(SC_ENOMEM, "log %s: out of memory", j->path);
  long n = sc_event_encode(ev, j->buf + j->len, j->cap - j->len);
  if (n < 0) return (int)n;
  if ((size_t)n + CHAIN_SUFFIX_LEN + 1 > j->cap - j->len) {
    if (!reserve(j, (size_t)n + CHAIN_SUFFIX_LEN + 1))
      return sc_error_set(SC_ENOMEM, "log %s: out of memory", j->path);
    n = sc_event_encode(ev, j->buf + j->len, j->cap - j->len);
  }
  /* The ack is queued before the chain moves on: a line that cannot be queued leaves no trace. */
  if (ackq_push(&j->unwritten, ack) != SC_OK)
    return sc_error_set(SC_ENOMEM, "log %s: out of memory", j->path);
  char *line = j->buf + j->len;
  char hex[CHAIN_HEX];
  if (sc__chain_next(&j->chain, line, (size_t)n, hex) != SC_OK) {
    j->unwritten.n--; /* the ack just queued: the caller is told, not deferred */
    return sc_error_set(SC_EIO, "log %s: SHA-256 failed", j->path);
  }
  /* Replace the closing brace with the chain member and close again. */
  char *p = line + n - 1;
  memcpy(p, CHAIN_PREFIX, CHAIN_PREFIX_LEN);
  p += CHAIN_PREFIX_LEN;
  memcpy(p, hex, CHAIN_HEX);
  p += CHAIN_HEX;
  memcpy(p, "\"}\n", 3);
  j->len += (size_t)n - 1 + CHAIN_SUFFIX_LEN + 1;
  if (j->opts.fsync == SC_FSYNC_ALWAYS) {
    flush_write(j);
    kick_sync(j);
  } else if (j->len >= j->opts.buffer_bytes) {
    flush_write(j);
  }
  if (!j->prepare_active && (j->len > 0 || j->unwritten.n > 0 || j->written.n > 0)) {
    uv_prepare_start(&j->prepare, on_prepare);
    j->prepare_active = true;
  }
  return SC_DEFER;
}

static void sync_dir_of(const char *path) {
  char *copy = strdup(path);
  if (copy == NULL) return;
  int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    fsync(fd);
    close(fd);
  }
  free(copy);
}

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void
say(const sc_jsonl_options *o, const char *fmt, ...);

/* Verifies an existing log, cuts a torn tail, and leaves the chain at its last line. */
static int recover_tail(sc_jsonl *j, bool *created) {
  sc__log l;
  int rc = sc__log_map(j->path, &l);
  *created = rc == SC_ENOTFOUND;
  if (rc == SC_ENOTFOUND) return SC_OK;
  if (rc != SC_OK) return sc_error_set(SC_EIO, "open %s: %s", j->path, strerror(errno));
  rc = sc__log_walk(j->path, &l, &j->chain, NULL, NULL, &j->open_report);
  sc__log_unmap(&l);
  if (rc != SC_OK) return rc;
  j->offset = j->open_report.good_bytes;
  return SC_OK;
}

int sc_jsonl_open(sc_engine *e, const char *path, const sc_jsonl_options *o, sc_jsonl **out) {
  if (out == NULL) return sc_error_set(SC_EINVAL, "jsonl_open: NULL out");
  *out = NULL;
  if (e == NULL || path == NULL || !*path)
    return sc_error_set(SC_EINVAL, "jsonl_open: NULL argument");
  if (o != NULL && (o->version < 1 || o->version > SC_JSONL_OPTIONS_VERSION))
    return sc_error_set(SC_EINVAL, "jsonl_open: unsupported sc_jsonl_options version %u",
                        o->version);
  sc_jsonl *j = calloc(1, sizeof(*j));
  if (j == NULL) return sc_error_set(SC_ENOMEM, "jsonl_open: out of memory");
  j->fd = -1;
  if (o)
    j->opts = *o;
  else
    sc_jsonl_options_init(&j->opts);
  if (j->opts.buffer_bytes == 0) j->opts.buffer_bytes = 256 * 1024;
  j->e = e;
  j->loop = sc_engine_loop(e);
  int rc = SC_ENOMEM;
  if ((j->path = strdup(path)) == NULL || sc__chain_init(&j->chain) != SC_OK) {
    rc = sc_error_set(SC_ENOMEM, "jsonl_open: out of memory");
    goto fail;
  }
  bool created;
  if ((rc = recover_tail(j, &created)) != SC_OK) goto fail;
  j->fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (j->fd < 0) {
    rc = sc_error_set(SC_EIO, "open %s: %s", path, strerror(errno));
    goto fail;
  }
  /* One writer per log: a second one would interleave two chains. The lock goes with the file
   * description, so a writer that crashed holds nothing. */
  if (flock(j->fd, LOCK_EX | LOCK_NB) != 0) {
    rc = errno == EWOULDBLOCK
             ? sc_error_set(SC_EBUSY, "log %s is open for writing elsewhere (it is locked)", path)
             : sc_error_set(SC_EIO, "lock %s: %s", path, strerror(errno));
    goto fail;
  }
  if (j->open_report.torn_tail) {
    uint64_t cut = j->open_report.bytes - j->open_report.good_bytes;
    if (ftruncate(j->fd, (off_t)j->open_report.good_bytes) != 0 || fdatasync(j->fd) != 0) {
      rc = sc_error_set(SC_EIO, "cut the torn tail of %s: %s", path, strerror(errno));
      goto fail;
    }
    say(&j->opts,
        "%s: cut a torn tail of %llu bytes after line %llu (a crash mid-write; it was never "
        "acknowledged)",
        path, (unsigned long long)cut, (unsigned long long)j->open_report.lines);
  }
  if (created && j->opts.fsync != SC_FSYNC_NONE) sync_dir_of(path);
  uv_prepare_init(j->loop, &j->prepare);
  j->prepare.data = j;
  sc_subscriber s;
  sc_subscriber_init(&s);
  s.on_event = on_event;
  s.udata = j;
  if ((rc = sc_engine_subscribe(e, &s, &j->sub)) != SC_OK) {
    uv_close((uv_handle_t *)&j->prepare, NULL);
    uv_run(j->loop, UV_RUN_NOWAIT);
    goto fail;
  }
  *out = j;
  return SC_OK;
fail:
  if (j->fd >= 0) close(j->fd);
  sc__chain_free(&j->chain);
  free(j->path);
  free(j);
  return rc;
}

const sc_jsonl_report *sc_jsonl_open_report(const sc_jsonl *j) {
  return j ? &j->open_report : NULL;
}

static void on_closed(uv_handle_t *h) {
  sc_jsonl *j = h->data;
  j->closing_handles--;
}

int sc_jsonl_close(sc_jsonl *j) {
  if (j == NULL) return SC_OK;
  sc_subscription_cancel(j->sub);
  j->sub = NULL;
  /* Let the sync in flight finish; its completion is delivered by the loop. */
  while (j->sync_in_flight)
    uv_run(j->loop, UV_RUN_ONCE);
  flush_write(j);
  if (!j->err && j->opts.fsync != SC_FSYNC_NONE && (j->written.n > 0)) {
    if (fdatasync(j->fd) != 0) fail(j, "fdatasync", errno);
  }
  ackq_finish(j, &j->written, j->err ? j->err : SC_OK);
  ackq_finish(j, &j->unwritten, j->err ? j->err : SC_OK);
  if (close(j->fd) != 0 && j->err == SC_OK) {
    j->err = SC_EIO;
    snprintf(j->errmsg, sizeof(j->errmsg), "close %s: %s", j->path, strerror(errno));
  }
  int rc = j->err;
  if (rc != SC_OK) sc_error_set(rc, "%s", j->errmsg);
  j->closing_handles = 1;
  uv_close((uv_handle_t *)&j->prepare, on_closed);
  while (j->closing_handles > 0)
    uv_run(j->loop, UV_RUN_NOWAIT);
  sc__chain_free(&j->chain);
  free(j->unwritten.v);
  free(j->written.v);
  free(j->syncing.v);
  free(j->buf);
  free(j->path);
  free(j);
  return rc;
}

static void say(const sc_jsonl_options *o, const char *fmt, ...) {
  if (o->log == NULL) return;
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  o->log(msg, o->log_udata);
}
