/* The event reader of the log: each verified line handed back as the event's own JSON (the line
 * without its chain member), the bytes the engine's encoder wrote. Replays read logs through it. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chain.h"

typedef struct read_state {
  sc_jsonl_event_fn fn;
  void *udata;
  sc__buf line; /* the event's JSON, NUL-terminated */
  int err;
} read_state;

static int each_line(const char *line, size_t len, uint64_t offset, uint64_t lineno, void *udata) {
  (void)offset;
  (void)lineno;
  read_state *s = udata;
  size_t event_len;
  const char *hex;
  if (!sc__chain_split(line, len, &event_len, &hex)) return SC_OK; /* the walk verified it */
  sc__buf_reset(&s->line);
  if (!sc__buf_add(&s->line, line, event_len) || !sc__buf_add(&s->line, "}", 1))
    return s->err = sc_error_set(SC_ENOMEM, "read log: out of memory");
  int rc = s->fn(s->line.p, s->line.len, s->udata);
  return rc != 0 ? (s->err = rc) : SC_OK;
}

int sc_jsonl_read_events(const char *path, sc_jsonl_event_fn fn, void *udata) {
  if (path == NULL || fn == NULL) return sc_error_set(SC_EINVAL, "read log: NULL argument");
  sc__log l;
  int rc = sc__log_map(path, &l);
  if (rc != SC_OK) return rc;
  sc__chain c;
  if (sc__chain_init(&c) != SC_OK) {
    sc__log_unmap(&l);
    return sc_error_set(SC_ENOMEM, "read log: out of memory");
  }
  read_state s = {fn, udata, {0}, 0};
  sc_jsonl_report r;
  rc = sc__log_walk(path, &l, &c, each_line, &s, &r);
  if (s.err != 0) rc = s.err;
  sc__buf_free(&s.line);
  sc__chain_free(&c);
  sc__log_unmap(&l);
  return rc;
}

/* ---- the cursor: the same walk in pieces ---- */

struct sc_jsonl_cursor {
  int fd;
  char *path;
  uint64_t dev, ino; /* the file open as fd */
  uint64_t off;      /* where the next line begins */
  uint64_t lineno;
  sc__chain chain;           /* as it stands before the line at off */
  sc_jsonl_position handing; /* the line being handed to fn (while in_fn) */
  bool in_fn;
  char *buf;
  size_t cap;
  sc__buf line;
  int err; /* a broken line stops the cursor for good */
};

int sc_jsonl_cursor_open(const char *path, sc_jsonl_cursor **out) {
  if (path == NULL || out == NULL) return sc_error_set(SC_EINVAL, "read log: NULL argument");
  *out = NULL;
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0)
    return errno == ENOENT ? sc_error_set(SC_ENOTFOUND, "%s: no such log", path)
                           : sc_error_set(SC_EIO, "%s: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return sc_error_set(SC_EPARSE, "%s is not a stagecoach log: not a regular file", path);
  }
  sc_jsonl_cursor *c = calloc(1, sizeof(*c));
  if (c == NULL || (c->path = strdup(path)) == NULL || sc__chain_init(&c->chain) != SC_OK) {
    if (c != NULL) free(c->path);
    free(c);
    close(fd);
    return sc_error_set(SC_ENOMEM, "read log: out of memory");
  }
  c->fd = fd;
  c->dev = (uint64_t)st.st_dev;
  c->ino = (uint64_t)st.st_ino;
  sc__buf_init(&c->line);
  *out = c;
  return SC_OK;
}

/* Reads what follows off into c->buf, growing it until it holds a whole line or the file ends;
 * *n the bytes read. */
static int cursor_fill(sc_jsonl_cursor *c, size_t want, size_t *n) {
  *n = 0;
  for (;;) {
    if (c->cap < want) {
      char *b = realloc(c->buf, want);
      if (b == NULL) return sc_error_set(SC_ENOMEM, "read log: out of memory");
      c->buf = b;
      c->cap = want;
    }
    while (*n < want) {
      ssize_t r = pread(c->fd, c->buf + *n, want - *n, (off_t)(c->off + *n));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return sc_error_set(SC_EIO, "%s: %s", c->path, strerror(errno));
      if (r == 0) return SC_OK; /* the end of the file, for now */
      *n += (size_t)r;
    }
    if (memchr(c->buf, '\n', *n) != NULL) return SC_OK;
    want *= 2; /* one line longer than a piece: read on until its newline */
  }
}

int sc_jsonl_cursor_read(sc_jsonl_cursor *c, size_t max_bytes, sc_jsonl_event_fn fn, void *udata,
                         bool *at_end) {
  if (c == NULL || fn == NULL) return sc_error_set(SC_EINVAL, "read log: NULL argument");
  if (at_end) *at_end = false;
  if (c->err != 0) return c->err;
  if (max_bytes < 4096) max_bytes = 4096;
  size_t n;
  int rc = cursor_fill(c, max_bytes, &n);
  if (rc != SC_OK) return rc;
  size_t pos = 0;
  bool whole = false; /* a line was handed or skipped: the piece is not the end */
  while (pos < n) {
    const char *line = c->buf + pos;
    const char *nl = memchr(line, '\n', n - pos);
    if (nl == NULL) break; /* the rest is for the next read (or a line still being written) */
    size_t len = (size_t)(nl - line);
    char prev[CHAIN_HEX];
    memcpy(prev, c->chain.prev, CHAIN_HEX);
    if (!sc__chain_check(&c->chain, line, len))
      return c->err = sc_error_set(
                 SC_ECORRUPT, "%s: line %llu (byte offset %llu) does not match the chain", c->path,
                 (unsigned long long)c->lineno + 1, (unsigned long long)(c->off + pos));
    size_t event_len;
    const char *hex;
    if (sc__chain_split(line, len, &event_len, &hex)) {
      sc__buf_reset(&c->line);
      if (!sc__buf_add(&c->line, line, event_len) || !sc__buf_add(&c->line, "}", 1)) {
        memcpy(c->chain.prev, prev, CHAIN_HEX);
        c->off += pos;
        return sc_error_set(SC_ENOMEM, "read log: out of memory");
      }
      c->handing = (sc_jsonl_position){c->dev, c->ino, c->off + pos, c->lineno, {0}};
      memcpy(c->handing.chain, prev, CHAIN_HEX);
      c->in_fn = true;
      int stop = fn(c->line.p, c->line.len, udata);
      c->in_fn = false;
      if (stop != 0) { /* the cursor stays on this line: the next read hands it again */
        memcpy(c->chain.prev, prev, CHAIN_HEX);
        c->off += pos;
        return stop;
      }
    }
    c->lineno++;
    pos += len + 1;
    whole = true;
  }
  c->off += pos;
  if (at_end) *at_end = !whole || n < max_bytes;
  return SC_OK;
}

void sc_jsonl_cursor_tell(const sc_jsonl_cursor *c, sc_jsonl_position *pos) {
  if (c->in_fn) {
    *pos = c->handing;
    return;
  }
  *pos = (sc_jsonl_position){c->dev, c->ino, c->off, c->lineno, {0}};
  memcpy(pos->chain, c->chain.prev, CHAIN_HEX);
}

int sc_jsonl_cursor_seek(sc_jsonl_cursor *c, const sc_jsonl_position *pos) {
  if (c == NULL || pos == NULL) return sc_error_set(SC_EINVAL, "read log: NULL argument");
  struct stat st;
  if (fstat(c->fd, &st) != 0) return sc_error_set(SC_EIO, "%s: %s", c->path, strerror(errno));
  if (pos->dev != c->dev || pos->ino != c->ino)
    return sc_error_set(SC_EINVAL, "%s: the position is of another file", c->path);
  if (pos->offset > (uint64_t)st.st_size)
    return sc_error_set(SC_EINVAL, "%s: the position (byte %llu) is past its end (%llu bytes)",
                        c->path, (unsigned long long)pos->offset, (unsigned long long)st.st_size);
  c->off = pos->offset;
  c->lineno = pos->line;
  memcpy(c->chain.prev, pos->chain, CHAIN_HEX);
  c->err = 0;
  return SC_OK;
}

void sc_jsonl_cursor_close(sc_jsonl_cursor *c) {
  if (c == NULL) return;
  close(c->fd);
  free(c->path);
  free(c->buf);
  sc__buf_free(&c->line);
  sc__chain_free(&c->chain);
  free(c);
}
