/* The log writer: a subscriber that appends each event as a line and defers its acknowledgement
 * until the line is as durable as the mode asks. Lines are written on the loop's thread (whole
 * lines only, in one buffer, so they are never interleaved or split); fdatasync runs on the libuv
 * thread pool so the loop never waits for the disk. In BATCH mode the lines of a loop turn share
 * one sync, and lines written while a sync is in flight share the next one (group commit). */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
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
  sc__buf out;                      /* complete lines not yet written */
  ackq unwritten, written, syncing; /* acks by the state of their line */
  uint64_t offset;                  /* bytes in the file */
  uint64_t synced_offset;           /* bytes known durable: up to the end of the last good sync */
  uint64_t sync_target;             /* the offset the sync in flight makes durable */
  uv_prepare_t prepare;             /* the end of a loop turn: write, start a sync */
  bool prepare_active;
  uv_work_t work;
  bool sync_in_flight;
  int sync_errno;
  const char *sync_what; /* what failed in the sync: "fdatasync" or the directory's fsync */
  bool cut_pending;      /* a torn tail to cut before the first write */
  bool dir_sync_pending; /* a new log: its directory entry is synced with the first sync */
  int err;               /* sticky: after a failed write or sync every event fails */
  char errmsg[300];
  unsigned closing_handles;
  unsigned reopens; /* opened again: the name was replaced between the open and the lock */
  sc_jsonl_report open_report;
};

static void say(const sc_jsonl_options *o, const char *fmt, ...) SC__PRINTF(2, 3);

static int ackq_push(ackq *q, sc_ack *a) {
  if (!sc__grow(&q->v, &q->cap, q->n + 1, sizeof(*q->v), 64)) return SC_ENOMEM;
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
    /* The file keeps only what was acknowledged: the lines of events that now fail (written,
     * but their sync failed or never came) are cut, so a reader of the log sees those tasks
     * unfinished, as the engine does, and recovery finishes them. Best effort: should the cut
     * not last, the lines it loses still only record what happened. */
    uint64_t keep = j->opts.fsync == SC_FSYNC_NONE ? j->offset : j->synced_offset;
    if (ftruncate(j->fd, (off_t)keep) == 0) j->offset = keep;
  }
  ackq_finish(j, &j->syncing, SC_EIO);
  ackq_finish(j, &j->written, SC_EIO);
  ackq_finish(j, &j->unwritten, SC_EIO);
  j->out.len = 0;
}

/* Writes the buffered lines. A short write is retried; a failed one cuts what it left behind, so
 * the file keeps ending at a line boundary. */
static void flush_write(sc_jsonl *j) {
  if (j->out.len == 0 || j->err) return;
  if (j->cut_pending) {
    /* The torn tail goes only now, when there is something to write after it: a process that
     * opens a log and writes nothing leaves it byte for byte as it was. The sync that covers the
     * first lines covers the new size too. */
    if (ftruncate(j->fd, (off_t)j->open_report.good_bytes) != 0) {
      fail(j, "cut the torn tail of", errno);
      return;
    }
    j->cut_pending = false;
    say(&j->opts,
        "%s: cut a torn tail of %llu bytes after line %llu (a crash mid-write; it was never "
        "acknowledged)",
        j->path, (unsigned long long)(j->open_report.bytes - j->open_report.good_bytes),
        (unsigned long long)j->open_report.lines);
  }
  size_t done = 0;
  while (done < j->out.len) {
    ssize_t n = write(j->fd, j->out.p + done, j->out.len - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int errnum = n < 0 ? errno : EIO;
      fail(j, "write", errnum); /* cuts what the write left behind */
      return;
    }
    done += (size_t)n;
  }
  j->offset += j->out.len;
  j->out.len = 0;
  if (j->opts.fsync == SC_FSYNC_NONE) {
    ackq_finish(j, &j->unwritten, SC_OK);
  } else if (ackq_move(&j->unwritten, &j->written, j->unwritten.n) != SC_OK) {
    fail(j, "queue", ENOMEM);
  }
}

/* fsync of the directory that holds a new log, so that its name survives a crash as well. */
static int sync_dir_of(const char *path) {
  char *copy = strdup(path);
  if (copy == NULL) return ENOMEM;
  int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  int err = fd < 0 || fsync(fd) != 0 ? errno : 0;
  if (fd >= 0) close(fd);
  free(copy);
  return err;
}

/* The sync itself, on the thread pool or (closing) on the loop's thread. Reads dir_sync_pending
 * only: the loop's thread clears it once the sync is done. */
static int sync_now(sc_jsonl *j) {
  j->sync_what = "fdatasync";
  if (fdatasync(j->fd) != 0) return errno;
  if (!j->dir_sync_pending) return 0;
  j->sync_what = "fsync (the directory of)";
  return sync_dir_of(j->path);
}

static void sync_work(uv_work_t *w) {
  sc_jsonl *j = w->data;
  j->sync_errno = sync_now(j);
}

static void kick_sync(sc_jsonl *j);

static void sync_done(uv_work_t *w, int status) {
  sc_jsonl *j = w->data;
  j->sync_in_flight = false;
  if (status != 0 || j->sync_errno != 0) {
    /* After a failed fdatasync the kernel may have dropped the pages; a later sync that succeeds
     * proves nothing about them, so the failure is final. */
    fail(j, status != 0 ? "fdatasync" : j->sync_what, status != 0 ? EIO : j->sync_errno);
    return;
  }
  j->dir_sync_pending = false;
  j->synced_offset = j->sync_target;
  ackq_finish(j, &j->syncing, SC_OK);
  kick_sync(j);
}

static void kick_sync(sc_jsonl *j) {
  if (j->sync_in_flight || j->written.n == 0 || j->err) return;
  /* Every line written so far shares the sync. In ALWAYS mode each line is written and its sync
   * asked for at once; lines written while a sync is in flight share the next one, which starts
   * as soon as that one ends, so no line waits for more than the sync after its write. */
  if (ackq_move(&j->written, &j->syncing, j->written.n) != SC_OK) {
    fail(j, "queue", ENOMEM);
    return;
  }
  j->work.data = j;
  j->sync_in_flight = true;
  j->sync_target = j->offset; /* every line in syncing was written before this point */
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
  if (j->out.len == 0 && j->unwritten.n == 0) {
    uv_prepare_stop(&j->prepare);
    j->prepare_active = false;
  }
}

/* Room for extra more bytes; a failure fails this event only, so it is not kept as sticky. */
static bool reserve(sc_jsonl *j, size_t extra) {
  if (sc__buf_reserve(&j->out, extra)) return true;
  j->out.oom = false;
  return false;
}

static int on_event(const sc_event *ev, sc_ack *ack, void *udata) {
  sc_jsonl *j = udata;
  if (j->err) return sc_error_set(j->err, "%s", j->errmsg);
  if (!reserve(j, 1024 + CHAIN_SUFFIX_LEN + 1))
    return sc_error_set(SC_ENOMEM, "log %s: out of memory", j->path);
  long n = sc_event_encode(ev, j->out.p + j->out.len, j->out.cap - j->out.len);
  if (n < 0) return (int)n;
  if ((size_t)n + CHAIN_SUFFIX_LEN + 1 > j->out.cap - j->out.len) {
    if (!reserve(j, (size_t)n + CHAIN_SUFFIX_LEN + 1))
      return sc_error_set(SC_ENOMEM, "log %s: out of memory", j->path);
    n = sc_event_encode(ev, j->out.p + j->out.len, j->out.cap - j->out.len);
  }
  /* The ack is queued before the chain moves on: a line that cannot be queued leaves no trace. */
  if (ackq_push(&j->unwritten, ack) != SC_OK)
    return sc_error_set(SC_ENOMEM, "log %s: out of memory", j->path);
  char *line = j->out.p + j->out.len;
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
  j->out.len += (size_t)n - 1 + CHAIN_SUFFIX_LEN + 1;
  if (j->opts.fsync == SC_FSYNC_ALWAYS) {
    flush_write(j);
    kick_sync(j);
  } else if (j->out.len >= j->opts.buffer_bytes) {
    flush_write(j);
  }
  if (!j->prepare_active && (j->out.len > 0 || j->unwritten.n > 0 || j->written.n > 0)) {
    uv_prepare_start(&j->prepare, on_prepare);
    j->prepare_active = true;
  }
  return SC_DEFER;
}

/* The pid of the process holding an flock on the file open as fd, from /proc/locks (Linux);
 * 0 when it cannot be told. The kernel records the lock's owner there, so nothing of ours needs
 * to be written beside the log. */
long sc__jsonl_lock_holder(int fd) {
  struct stat st;
  if (fstat(fd, &st) != 0) return 0;
  FILE *f = fopen("/proc/locks", "r");
  if (f == NULL) return 0;
  char want[64], line[256];
  snprintf(want, sizeof(want), "%02x:%02x:%llu", (unsigned)major(st.st_dev),
           (unsigned)minor(st.st_dev), (unsigned long long)st.st_ino);
  long pid = 0;
  while (pid == 0 && fgets(line, sizeof(line), f) != NULL) {
    /* "1: FLOCK  ADVISORY  WRITE 4242 fe:00:1234 0 EOF"; a blocked waiter has "->" first. */
    char kind[16], mode[16], access[16], dev[64];
    long p;
    if (strstr(line, "->") == NULL &&
        sscanf(line, "%*d: %15s %15s %15s %ld %63s", kind, mode, access, &p, dev) == 5 &&
        strcmp(kind, "FLOCK") == 0 && strcmp(dev, want) == 0 && p > 0)
      pid = p;
  }
  fclose(f);
  return pid;
}

/* Opens the file, creating it when allowed and needed; *created says whether it did. */
static int open_file(sc_jsonl *j, bool create, bool *created) {
  const int flags = O_RDWR | O_APPEND | O_CLOEXEC | O_NONBLOCK; /* a FIFO must not block us */
  *created = false;
  j->fd = open(j->path, flags);
  if (j->fd < 0 && errno == ENOENT && create) {
    j->fd = open(j->path, flags | O_CREAT | O_EXCL, 0644);
    if (j->fd >= 0)
      *created = true;
    else if (errno == EEXIST) /* created by someone else meanwhile */
      j->fd = open(j->path, flags);
  }
  if (j->fd >= 0) return SC_OK;
  if (errno == ENOENT && !create)
    return sc_error_set(SC_ENOTFOUND, "open %s: no such log (%s)", j->path, strerror(errno));
  return sc_error_set(SC_EIO, "open %s: %s", j->path, strerror(errno));
}

/* Reads the locked log through its descriptor: verifies every line, leaves the chain at the last
 * one and notes a torn tail to cut before the first write. */
static int read_log(sc_jsonl *j) {
  sc__log l;
  int rc = sc__log_map_fd(j->fd, &l);
  if (rc == SC_EPARSE)
    return sc_error_set(SC_EPARSE,
                        "%s is not a stagecoach log (a device, FIFO or socket, not a file); it "
                        "is left as it is",
                        j->path);
  if (rc != SC_OK) return sc_error_set(SC_EIO, "read %s: %s", j->path, strerror(errno));
  /* The walk refuses a tail that no writer of ours left: only a torn line of ours is cut. */
  rc = sc__log_walk(j->path, &l, &j->chain, NULL, NULL, &j->open_report);
  sc__log_unmap(&l);
  if (rc != SC_OK) return rc;
  j->offset = j->synced_offset = j->open_report.good_bytes;
  j->cut_pending = j->open_report.torn_tail;
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
  sc_jsonl_options_init(&j->opts);
  if (o) memcpy(&j->opts, o, o->version >= 2 ? sizeof(*o) : offsetof(sc_jsonl_options, existing));
  j->opts.version = SC_JSONL_OPTIONS_VERSION;
  if (j->opts.buffer_bytes == 0) j->opts.buffer_bytes = 256 * 1024;
  j->e = e;
  j->loop = sc_engine_loop(e);
  int rc = SC_ENOMEM;
  bool created = false;
  if ((j->path = strdup(path)) == NULL || sc__chain_init(&j->chain) != SC_OK) {
    rc = sc_error_set(SC_ENOMEM, "jsonl_open: out of memory");
    goto fail;
  }
reopen:
  if ((rc = open_file(j, !j->opts.existing, &created)) != SC_OK) goto fail;
  /* One writer per log, and it holds the lock before it reads a byte: what it reads is then what
   * it appends to. The lock goes with the file description, so a writer that crashed holds
   * nothing. */
  if (flock(j->fd, LOCK_EX | LOCK_NB) != 0) {
    int lock_errno = errno; /* sc__jsonl_lock_holder() reads /proc and may change errno */
    long pid = lock_errno == EWOULDBLOCK ? sc__jsonl_lock_holder(j->fd) : 0;
    if (lock_errno != EWOULDBLOCK)
      rc = sc_error_set(SC_EIO, "lock %s: %s", path, strerror(lock_errno));
    else if (pid == (long)getpid())
      rc = sc_error_set(SC_EBUSY,
                        "log %s is already open for writing in this process (one writer per "
                        "log); nothing was changed",
                        path);
    else if (pid > 0)
      rc = sc_error_set(SC_EBUSY,
                        "log %s is locked by pid %ld: another process is writing it (one writer "
                        "per log); nothing was changed",
                        path, pid);
    else
      rc = sc_error_set(SC_EBUSY,
                        "log %s is locked by another writer (one writer per log); nothing was "
                        "changed",
                        path);
    goto fail;
  }
  /* A compaction renames a new log over the name while it holds the lock: a file opened just
   * before that and locked after it is no longer the log, so it is opened again. */
  if (!sc__jsonl_is_named(j->fd, path)) {
    close(j->fd);
    j->fd = -1;
    if (++j->reopens > 8) {
      rc = sc_error_set(SC_EBUSY,
                        "log %s keeps being replaced (a compaction?); nothing was changed", path);
      goto fail;
    }
    goto reopen;
  }
  if ((rc = read_log(j)) != SC_OK) goto fail;
  /* A new log's name must survive a crash too; an empty file may be one whose creator died before
   * its first sync, so it is treated as new. */
  j->dir_sync_pending = (created || j->open_report.bytes == 0) && j->opts.fsync != SC_FSYNC_NONE;
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

int sc_jsonl_unfinished(sc_jsonl *j, sc_unfinished **out, size_t *n) {
  if (out) *out = NULL;
  if (n) *n = 0;
  if (j == NULL || out == NULL || n == NULL)
    return sc_error_set(SC_EINVAL, "jsonl_unfinished: NULL argument");
  /* Through the locked descriptor: the file another process may have replaced under the name
   * is not the one read. */
  sc__log l;
  int rc = sc__log_map_fd(j->fd, &l);
  if (rc != SC_OK) return sc_error_set(SC_EIO, "read %s: %s", j->path, strerror(errno));
  rc = sc__jsonl_scan_log(j->path, &l, false, out, n, NULL);
  sc__log_unmap(&l);
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
    int err = sync_now(j);
    if (err != 0)
      fail(j, j->sync_what, err);
    else
      j->synced_offset = j->offset;
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
  sc__buf_free(&j->out);
  free(j->path);
  free(j);
  return rc;
}

static void say(const sc_jsonl_options *o, const char *fmt, ...) {
  if (o->log == NULL) return;
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  sc__vformat(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  o->log(msg, o->log_udata);
}
