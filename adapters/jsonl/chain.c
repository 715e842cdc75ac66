/* The log's hash chain and the walk over a log that verifies it line by line. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chain.h"

int sc__chain_init(sc__chain *c) {
  memset(c, 0, sizeof(*c));
  memset(c->prev, '0', sizeof(c->prev));
  c->sha = sc__sha_new();
  return c->sha != NULL ? SC_OK : SC_ENOMEM;
}

void sc__chain_free(sc__chain *c) {
  sc__sha_free(c->sha);
  c->sha = NULL;
}

static int digest(sc__chain *c, const char *a, size_t alen, const char *b, size_t blen,
                  char out[CHAIN_HEX]) {
  unsigned char raw[32];
  if (sc__sha_begin(c->sha) != SC_OK || sc__sha_update(c->sha, c->prev, CHAIN_HEX) != SC_OK ||
      sc__sha_update(c->sha, a, alen) != SC_OK ||
      (blen && sc__sha_update(c->sha, b, blen) != SC_OK) || sc__sha_end_raw(c->sha, raw) != SC_OK)
    return SC_EIO;
  sc__hex(raw, 32, out);
  return SC_OK;
}

int sc__chain_next(sc__chain *c, const char *event, size_t len, char out[CHAIN_HEX]) {
  char value[CHAIN_HEX];
  int rc = digest(c, event, len, NULL, 0, value);
  if (rc != SC_OK) return rc;
  memcpy(c->prev, value, CHAIN_HEX);
  if (out) memcpy(out, value, CHAIN_HEX);
  return SC_OK;
}

bool sc__chain_split(const char *line, size_t len, size_t *event_len, const char **hex) {
  if (len < CHAIN_SUFFIX_LEN + 2) return false;
  const char *suffix = line + len - CHAIN_SUFFIX_LEN;
  if (memcmp(suffix, CHAIN_PREFIX, CHAIN_PREFIX_LEN) != 0 || line[len - 2] != '"' ||
      line[len - 1] != '}' || line[0] != '{')
    return false;
  const char *h = suffix + CHAIN_PREFIX_LEN;
  for (int i = 0; i < CHAIN_HEX; i++)
    if (!((h[i] >= '0' && h[i] <= '9') || (h[i] >= 'a' && h[i] <= 'f'))) return false;
  *event_len = len - CHAIN_SUFFIX_LEN;
  *hex = h;
  return true;
}

bool sc__chain_check(sc__chain *c, const char *line, size_t len) {
  size_t event_len;
  const char *hex;
  char value[CHAIN_HEX];
  if (!sc__chain_split(line, len, &event_len, &hex)) return false;
  /* The hashed text is the line without the chain member: its JSON up to it, then the '}'. */
  if (digest(c, line, event_len, "}", 1, value) != SC_OK) return false;
  if (memcmp(value, hex, CHAIN_HEX) != 0) return false;
  memcpy(c->prev, value, CHAIN_HEX);
  return true;
}

/* The size of the regular file behind fd: SC_EIO (with errno) for a directory or a failed
 * fstat, SC_EPARSE for a device, a FIFO or a socket, which hold no log (reading /dev/zero would
 * never end). */
static int regular_size(int fd, size_t *size) {
  struct stat st;
  if (fstat(fd, &st) != 0) return SC_EIO;
  if (S_ISDIR(st.st_mode)) {
    errno = EISDIR;
    return SC_EIO;
  }
  if (!S_ISREG(st.st_mode)) return SC_EPARSE;
  *size = (size_t)st.st_size;
  return SC_OK;
}

int sc__log_map_fd(int fd, sc__log *l) {
  memset(l, 0, sizeof(*l));
  int rc = regular_size(fd, &l->size);
  if (rc != SC_OK) return rc;
  if (l->size > 0) {
    void *p = mmap(NULL, l->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) return SC_EIO;
    madvise(p, l->size, MADV_SEQUENTIAL);
    l->data = p;
    l->mapped = l->size;
  }
  return SC_OK;
}

/* Reads the file's bytes into memory: a reader takes no lock, and the writer may cut the file
 * (a torn tail, or back to what was acknowledged after a failed write) while it reads. A mapping
 * would then fault (SIGBUS) on the pages past the new end; a read just sees the shorter file. */
static int read_whole(int fd, sc__log *l) {
  size_t want = 0;
  int rc = regular_size(fd, &want);
  if (rc != SC_OK || want == 0) return rc;
  char *buf = malloc(want);
  if (buf == NULL) {
    errno = ENOMEM;
    return SC_EIO;
  }
  size_t got = 0;
  while (got < want) {
    ssize_t n = pread(fd, buf + got, want - got, (off_t)got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      free(buf);
      errno = err;
      return SC_EIO;
    }
    if (n == 0) break; /* cut meanwhile: what is left is the log */
    got += (size_t)n;
  }
  l->data = buf;
  l->size = got;
  l->heap = true;
  return SC_OK;
}

int sc__log_read_fd(int fd, sc__log *l) {
  memset(l, 0, sizeof(*l));
  int rc = read_whole(fd, l);
  if (rc != SC_OK || l->size > 0) return rc;
  /* A file that says it is empty yet gives bytes (/proc, sysfs) is no file a writer appends to. */
  char one;
  ssize_t n = pread(fd, &one, 1, 0);
  return n > 0 ? SC_EPARSE : SC_OK;
}

int sc__log_map(const char *path, sc__log *l) {
  memset(l, 0, sizeof(*l));
  /* O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer. */
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return errno == ENOENT ? SC_ENOTFOUND : SC_EIO;
  int rc = read_whole(fd, l);
  int err = errno;
  close(fd);
  errno = err;
  return rc;
}

void sc__log_unmap(sc__log *l) {
  if (l->heap)
    free(l->data);
  else if (l->data)
    munmap(l->data, l->mapped);
  memset(l, 0, sizeof(*l));
}

bool sc__log_tail_is_ours(const char *tail, size_t len, bool first_line) {
  static const char start[] = "{\"specversion\":\"1.0\",";
  static const char created[] = "\"type\":\"stagecoach.task.created\"";
  /* A machine that lost power after the file grew but before the written blocks reached the disk
   * leaves zeros where the unsynced bytes were (ext4 and XFS do): after lines that verify, a tail
   * of zeros, or a line's beginning then zeros, is such a write. A file of zeros alone is not. */
  size_t all = len;
  while (len > 0 && tail[len - 1] == '\0')
    len--;
  if (len == 0) return all > 0 && !first_line;
  /* A write that stopped part way left the beginning of a line: all of its opening, or a part. */
  size_t n = len < sizeof(start) - 1 ? len : sizeof(start) - 1;
  if (memcmp(tail, start, n) != 0) return false;
  if (!first_line) return true;
  /* No line before it: the first line of every log is a task.created, whose type comes within
   * its first bytes (after the id); a CloudEvents file of someone else's is not ours. */
  size_t window = len < 4096 ? len : 4096;
  for (size_t i = 0; i + sizeof(created) - 1 <= window; i++)
    if (memcmp(tail + i, created, sizeof(created) - 1) == 0) return true;
  return false;
}

int sc__log_walk(const char *path, const sc__log *l, sc__chain *c, sc__line_fn fn, void *udata,
                 sc_jsonl_report *r) {
  memset(r, 0, sizeof(*r));
  r->bytes = l->size;
  size_t off = 0;
  uint64_t lineno = 0;
  while (off < l->size) {
    const char *line = l->data + off;
    const char *nl = memchr(line, '\n', l->size - off);
    if (nl == NULL) {
      r->torn_tail = true; /* the last line never got its newline: a crash mid-write */
      break;
    }
    size_t len = (size_t)(nl - line);
    lineno++;
    if (!sc__chain_check(c, line, len)) {
      r->first_bad_line = (int64_t)lineno;
      r->lines = lineno;
      size_t event_len;
      const char *hex;
      bool shaped = sc__chain_split(line, len, &event_len, &hex);
      if (lineno == 1 && !shaped)
        return sc_error_set(SC_EPARSE,
                            "%s is not a stagecoach log: its first line is no event line "
                            "(it is left as it is)",
                            path);
      return sc_error_set(SC_ECORRUPT, "%s: line %llu (byte offset %zu) %s", path,
                          (unsigned long long)lineno, off,
                          shaped ? "does not match the chain: it or a line before it was changed, "
                                   "inserted or removed"
                                 : "has no chain member: it is not a line of this log");
    }
    if (lineno == 1) { /* a compacted log names the chain it continues: it must say it well */
      char prev[CHAIN_HEX];
      uint64_t prev_lines;
      bool bad = false;
      if (sc__jsonl_compacted_line(line, len, prev, &prev_lines, &bad) && bad) {
        r->first_bad_line = 1;
        r->lines = 1;
        return sc_error_set(SC_ECORRUPT,
                            "%s: line 1 (byte offset 0) is a stagecoach.log.compacted line "
                            "without a well-formed previous_chain and previous_lines",
                            path);
      }
    }
    r->lines = lineno;
    off += len + 1;
    r->good_bytes = off;
    if (fn != NULL) {
      int rc = fn(line, len, off - len - 1, lineno, udata);
      if (rc != 0) return rc;
    }
  }
  /* Bytes without one complete line are a log only when they are the start of a first line we
   * wrote (a crash during the first write of a new log); bytes after the last line only when
   * they are the start of a line (a crash in the middle of a write). Anything else no writer of
   * ours left: it is not cut, and the file is not taken for a log. */
  if (lineno == 0 && l->size > 0 && !sc__log_tail_is_ours(l->data, l->size, true))
    return sc_error_set(SC_EPARSE,
                        "%s is not a stagecoach log: it holds %zu bytes and not one complete "
                        "event line (it is left as it is)",
                        path, l->size);
  if (lineno > 0 && r->torn_tail &&
      !sc__log_tail_is_ours(l->data + r->good_bytes, l->size - r->good_bytes, false))
    return sc_error_set(SC_EPARSE,
                        "%s is not a stagecoach log: it ends in %zu bytes without a newline that "
                        "no writer of ours left (it is left as it is)",
                        path, l->size - (size_t)r->good_bytes);
  return SC_OK;
}
