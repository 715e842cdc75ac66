/* Log compaction: rewrites a log to hold what recovery needs and the recent history, as a new
 * chain whose first line names the old chain's last value, and puts it in place atomically under
 * the writer's lock (docs/jsonl.md, "Compaction").
 *
 * Which lines a recovery needs follows the scan (scan.c) rule for rule: each line is given to
 * the record of its task (a record is one run of an id, from its task.created), and an unfinished
 * record keeps its task.created, every line that changes what the scan remembers (task.recovered,
 * task.started, rollback.started), the lines from the first one its context fold starts at (the
 * last snapshot) on, and its last lines with a status and an epoch. A finished record (terminal,
 * superseded by a recovery, or replaced by a later run of its id) is kept whole or not at all. */
#define _GNU_SOURCE /* memmem */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "chain.h"

#define NONE SIZE_MAX

typedef struct record {
  char *id;
  size_t idlen;
  struct record *next_in_bucket;
  struct record *first_run; /* the id's first record (itself for the first) */
  struct record *superseded_by;
  size_t first_line, created, fold_first, last_status, last_epoch, last_line;
  int64_t last_time; /* seconds since the epoch of its last line; INT64_MIN: unknown */
  bool has_created, terminal, superseded, replaced, rolling_back;
  bool id_kept;  /* on the id's first record: a line of some run of the id stays */
  bool id_lines; /* on the id's first record: the log holds a line of the id */
  bool anchor;   /* the id's first record, whose first line keeps the id's place in the scan's
                    order for a later run that is unfinished */
  int keep;      /* memo of keep_whole(): -1 unknown, 0 no, 1 yes, 2 being decided */
} record;

enum { LINE_STATE = 1 }; /* a line whose kind the scan remembers */

typedef struct line_info {
  size_t off, len;
  record *rec; /* NULL: not a line of a task (the old compacted line): dropped */
  unsigned flags;
} line_info;

typedef struct compactor {
  const char *path;
  const sc__log *log;
  line_info *lines;
  size_t nlines, caplines;
  record **buckets; /* the current record of each id */
  size_t nbuckets;
  record **all; /* every record, in the order made */
  size_t nall, capall;
  cJSON *old_dropped; /* the ids an older compacted line names as dropped */
  int err;
} compactor;

static uint64_t hash_id(const char *s, size_t len) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < len; i++)
    h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
  return h;
}

static record **bucket_of(compactor *c, const char *id, size_t len) {
  record **b = &c->buckets[hash_id(id, len) & (c->nbuckets - 1)];
  while (*b != NULL && !((*b)->idlen == len && memcmp((*b)->id, id, len) == 0))
    b = &(*b)->next_in_bucket;
  return b;
}

static bool grow_buckets(compactor *c) {
  size_t n = c->nbuckets ? c->nbuckets * 2 : 1024;
  record **v = calloc(n, sizeof(*v));
  if (v == NULL) return false;
  record **old = c->buckets;
  size_t oldn = c->nbuckets;
  c->buckets = v;
  c->nbuckets = n;
  for (size_t i = 0; i < oldn; i++)
    for (record *r = old[i], *next; r != NULL; r = next) {
      next = r->next_in_bucket;
      r->next_in_bucket = NULL;
      *bucket_of(c, r->id, r->idlen) = r;
    }
  free(old);
  return true;
}

/* The current record of an id; with create, a new one when there is none (replacing the current
 * one when fresh_run: a task.created for an id whose record has one already). */
static record *record_of(compactor *c, const char *id, size_t len, bool create, bool fresh_run) {
  if (c->nbuckets == 0 || c->nall + 1 > c->nbuckets) {
    if (!create && c->nbuckets == 0) return NULL;
    if (create && !grow_buckets(c)) return NULL;
  }
  record **slot = bucket_of(c, id, len);
  record *cur = *slot;
  if (cur != NULL && !(fresh_run && cur->has_created)) return cur;
  if (!create) return cur;
  if (c->nall == c->capall) {
    size_t cap = c->capall ? c->capall * 2 : 256;
    record **v = realloc(c->all, cap * sizeof(*v));
    if (v == NULL) return NULL;
    c->all = v;
    c->capall = cap;
  }
  record *r = calloc(1, sizeof(*r));
  if (r == NULL || (r->id = malloc(len + 1)) == NULL) {
    free(r);
    return NULL;
  }
  memcpy(r->id, id, len);
  r->id[len] = '\0';
  r->idlen = len;
  r->first_line = r->created = r->fold_first = r->last_status = r->last_epoch = r->last_line = NONE;
  r->last_time = INT64_MIN;
  r->keep = -1;
  r->first_run = r;
  if (cur != NULL) { /* a new run of the id: the old record is replaced, and leaves the chain */
    cur->replaced = true;
    r->first_run = cur->first_run;
    r->next_in_bucket = cur->next_in_bucket;
    cur->next_in_bucket = NULL;
  }
  *slot = r;
  c->all[c->nall++] = r;
  return r;
}

static void compactor_free(compactor *c) {
  for (size_t i = 0; i < c->nall; i++) {
    free(c->all[i]->id);
    free(c->all[i]);
  }
  free(c->all);
  free(c->buckets);
  free(c->lines);
  cJSON_Delete(c->old_dropped);
}

/* The raw string value of the first member named key; NULL when absent or escaped. */
static const char *find_string(const char *p, const char *end, const char *key, size_t keylen,
                               size_t *len) {
  const char *k = memmem(p, (size_t)(end - p), key, keylen);
  if (k == NULL) return NULL;
  const char *v = k + keylen, *q = memchr(v, '"', (size_t)(end - v));
  if (q == NULL || memchr(v, '\\', (size_t)(q - v)) != NULL) return NULL;
  *len = (size_t)(q - v);
  return v;
}
#define FIND(p, end, key, len) find_string((p), (end), key, sizeof(key) - 1, (len))
#define HAS(p, n, lit)         (memmem((p), (n), lit, sizeof(lit) - 1) != NULL)

/* "2026-11-22T10:30:00.123456Z" to seconds since the epoch; INT64_MIN when it is not one. */
static int64_t parse_time(const char *s, size_t len) {
  struct tm tm;
  memset(&tm, 0, sizeof(tm));
  char buf[40];
  if (len < 20 || len >= sizeof(buf)) return INT64_MIN;
  memcpy(buf, s, len);
  buf[len] = '\0';
  int n = 0;
  if (sscanf(buf, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
             &tm.tm_min, &tm.tm_sec, &n) != 6 ||
      buf[len - 1] != 'Z')
    return INT64_MIN;
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  time_t t = timegm(&tm);
  return t == (time_t)-1 ? INT64_MIN : (int64_t)t;
}

/* A task.created that carries its recovery point, or a task.recovered: the task it names (not
 * itself) is superseded, and the mode says whether this one rolls back (scan.c, note_recovery). */
static int note_recovery(compactor *c, const char *line, size_t len, record *r, bool created) {
  sc_event_doc *d;
  if (sc_event_parse(line, len, &d) != SC_OK) return SC_OK;
  const cJSON *data = sc_event_doc_event(d)->data;
  const cJSON *from = cJSON_GetObjectItemCaseSensitive(data, "recovered_from");
  const cJSON *point = cJSON_GetObjectItemCaseSensitive(data, "recovery");
  int rc = SC_OK;
  if (created && !cJSON_IsObject(point)) goto out;
  if (cJSON_IsString(from) && strcmp(from->valuestring, r->id) != 0) {
    record *old = record_of(c, from->valuestring, strlen(from->valuestring), true, false);
    if (old == NULL) {
      rc = SC_ENOMEM;
      goto out;
    }
    old->superseded = true;
    old->superseded_by = r;
  }
  const cJSON *mode =
      cJSON_GetObjectItemCaseSensitive(cJSON_IsObject(point) ? point : data, "mode");
  if (cJSON_IsString(mode))
    r->rolling_back =
        strcmp(mode->valuestring, "compensate") == 0 || strcmp(mode->valuestring, "rollback") == 0;
out:
  sc_event_doc_free(d);
  return rc;
}

/* Gives one line of a task to its record and notes what the scan would note. */
static int take_line(compactor *c, size_t idx, const char *type, size_t tlen, const char *id,
                     size_t idlen, const char *data) {
  line_info *li = &c->lines[idx];
  const char *line = c->log->data + li->off, *end = line + li->len;
  char name[32];
  sc_event_type ev;
  bool known = tlen < sizeof(name);
  if (known) {
    memcpy(name, type, tlen);
    name[tlen] = '\0';
    known = sc_event_type_from_name(name, &ev) == SC_OK;
  }
  /* A line of a type the scan does not know changes nothing: it goes with its task's record. */
  record *r = record_of(c, id, idlen, known, known && ev == SC_EV_TASK_CREATED);
  if (r == NULL) return known ? SC_ENOMEM : SC_OK;
  li->rec = r;
  r->first_run->id_lines = true;
  if (r->first_line == NONE) r->first_line = idx;
  r->last_line = idx;
  size_t slen;
  const char *t = FIND(line, data, "\"time\":\"", &slen);
  if (t != NULL) r->last_time = parse_time(t, slen);
  if (!known) return SC_OK;
  const char *status = FIND(data, end, "\"status\":\"", &slen);
  if (status != NULL && slen < sizeof(name)) r->last_status = idx;
  if (memmem(line, (size_t)(data - line), "\"epoch\":", 8) != NULL) r->last_epoch = idx;
  switch (ev) {
    case SC_EV_TASK_CREATED:
      r->has_created = true;
      r->created = idx;
      r->fold_first = NONE;
      li->flags |= LINE_STATE;
      if (HAS(data, (size_t)(end - data), "\"recovered_from\":"))
        return note_recovery(c, line, li->len, r, true);
      break;
    case SC_EV_TASK_RECOVERED:
      li->flags |= LINE_STATE;
      return note_recovery(c, line, li->len, r, false);
    case SC_EV_STAGE_COMPLETED:
      if (r->rolling_back) break;
      if (r->fold_first == NONE || (status != NULL && (size_t)(end - (status + slen)) > 12 &&
                                    memcmp(status + slen, "\",\"context\":{", 13) == 0))
        r->fold_first = idx;
      break;
    case SC_EV_ROLLBACK_STARTED:
      r->rolling_back = true;
      li->flags |= LINE_STATE;
      break;
    case SC_EV_TASK_STARTED:
      r->rolling_back = false;
      li->flags |= LINE_STATE;
      break;
    case SC_EV_TASK_COMPLETED:
    case SC_EV_TASK_CANCELLED:
    case SC_EV_ROLLBACK_COMPLETED: r->terminal = true; break;
    default: break;
  }
  return SC_OK;
}

static int on_line(const char *line, size_t len, uint64_t offset, uint64_t lineno, void *udata) {
  (void)lineno;
  compactor *c = udata;
  if (c->nlines == c->caplines) {
    size_t cap = c->caplines ? c->caplines * 2 : 4096;
    line_info *v = realloc(c->lines, cap * sizeof(*v));
    if (v == NULL) return c->err = sc_error_set(SC_ENOMEM, "compact: out of memory");
    c->lines = v;
    c->caplines = cap;
  }
  size_t idx = c->nlines++;
  c->lines[idx] = (line_info){(size_t)offset, len, NULL, 0};
  const char *end = line + len;
  size_t tlen = 0, idlen = 0;
  const char *type = FIND(line, end, "\"type\":\"stagecoach.", &tlen);
  const char *id = FIND(line, end, "\"taskid\":\"", &idlen);
  const char *data = memmem(line, len, "\"data\":{", 8);
  sc_event_doc *doc = NULL;
  if (id == NULL && type != NULL && data != NULL && sc_event_parse(line, len, &doc) == SC_OK &&
      sc_event_doc_event(doc)->task_id != NULL) {
    id = sc_event_doc_event(doc)->task_id; /* an id with escapes */
    idlen = strlen(id);
  }
  if (idx == 0 && id == NULL && type != NULL && data != NULL && c->old_dropped == NULL &&
      tlen == sizeof("log.compacted") - 1 && memcmp(type, "log.compacted", tlen) == 0) {
    /* An older compaction's list of the ids it dropped: they stay refused for a new run. */
    size_t event_len;
    const char *hex;
    cJSON *root = NULL;
    if (sc__chain_split(line, len, &event_len, &hex)) {
      char *copy = malloc(event_len + 1);
      if (copy == NULL) return c->err = sc_error_set(SC_ENOMEM, "compact: out of memory");
      memcpy(copy, line, event_len);
      copy[event_len] = '}';
      root = cJSON_ParseWithLength(copy, event_len + 1);
      free(copy);
    }
    cJSON *ids = cJSON_DetachItemFromObjectCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(root, "data"), "dropped_task_ids");
    cJSON_Delete(root);
    if (cJSON_IsArray(ids))
      c->old_dropped = ids;
    else
      cJSON_Delete(ids);
  }
  int rc = id == NULL || type == NULL || data == NULL
               ? SC_OK
               : take_line(c, idx, type, tlen, id, idlen, data);
  sc_event_doc_free(doc);
  if (rc != SC_OK && c->err == 0) c->err = sc_error_set(rc, "compact: out of memory");
  return rc;
}

static bool unfinished(const record *r) {
  return r->has_created && !r->terminal && !r->superseded && !r->replaced;
}

/* Whether a finished record is kept whole: it is young enough, and when a recovery superseded
 * it, the record that says so is kept too (else the task would reappear as unfinished). */
static bool keep_whole(record *r, const sc_jsonl_compact_options *o, int64_t now) {
  if (r->keep == 0 || r->keep == 1) return r->keep == 1;
  if (r->keep == 2) return false; /* records that supersede each other: both go */
  r->keep = 2;
  bool young = o->keep_finished_s < 0 ||
               (o->keep_finished_s > 0 &&
                (r->last_time == INT64_MIN || now - r->last_time < o->keep_finished_s));
  bool keep = young;
  if (keep && r->superseded && r->superseded_by != NULL) {
    record *s = r->superseded_by;
    keep = unfinished(s) || keep_whole(s, o, now);
  }
  r->keep = keep ? 1 : 0;
  return keep;
}

static bool keep_line(compactor *c, size_t idx, const sc_jsonl_compact_options *o, int64_t now) {
  const line_info *li = &c->lines[idx];
  record *r = li->rec;
  if (r == NULL) return false;
  if (!unfinished(r)) return keep_whole(r, o, now) || (r->anchor && idx == r->first_line);
  size_t cut = r->fold_first != NONE ? r->fold_first : r->created;
  return idx < r->created || idx >= cut || (li->flags & LINE_STATE) || idx == r->last_status ||
         idx == r->last_epoch;
}

/* ---- writing the new log ---- */

typedef struct out_file {
  const char *path;
  int fd;
  sc__chain chain;
  char *buf;
  size_t len, cap;
  uint64_t lines, bytes;
} out_file;

static int out_flush(out_file *f) {
  size_t done = 0;
  while (done < f->len) {
    ssize_t n = write(f->fd, f->buf + done, f->len - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      return sc_error_set(SC_EIO, "write %s: %s", f->path, n < 0 ? strerror(errno) : "no space");
    done += (size_t)n;
  }
  f->len = 0;
  return SC_OK;
}

/* Appends the event (its JSON, closing '}' included) as a line of the new chain. */
static int out_event(out_file *f, const char *event, size_t len) {
  size_t need = len - 1 + CHAIN_SUFFIX_LEN + 1;
  if (f->len + need > f->cap) {
    int rc = out_flush(f);
    if (rc != SC_OK) return rc;
    if (need > f->cap) {
      char *p = realloc(f->buf, need);
      if (p == NULL) return sc_error_set(SC_ENOMEM, "compact: out of memory");
      f->buf = p;
      f->cap = need;
    }
  }
  char hex[CHAIN_HEX];
  if (sc__chain_next(&f->chain, event, len, hex) != SC_OK)
    return sc_error_set(SC_EIO, "compact: SHA-256 failed");
  char *p = f->buf + f->len;
  memcpy(p, event, len - 1);
  p += len - 1;
  memcpy(p, CHAIN_PREFIX, CHAIN_PREFIX_LEN);
  p += CHAIN_PREFIX_LEN;
  memcpy(p, hex, CHAIN_HEX);
  p += CHAIN_HEX;
  memcpy(p, "\"}\n", 3);
  f->len += need;
  f->lines++;
  f->bytes += need;
  return SC_OK;
}

/* An old line, rechained: its event is the line without its chain member. */
static int out_line(out_file *f, const char *line, size_t len) {
  size_t event_len;
  const char *hex;
  if (!sc__chain_split(line, len, &event_len, &hex))
    return sc_error_set(SC_EIO, "compact: a verified line lost its chain member");
  /* The event's closing brace is where the chain member begins: hash event_len bytes and '}'. */
  size_t need = event_len + CHAIN_SUFFIX_LEN + 1;
  if (f->len + need > f->cap) {
    int rc = out_flush(f);
    if (rc != SC_OK) return rc;
    if (need > f->cap) {
      char *p = realloc(f->buf, need);
      if (p == NULL) return sc_error_set(SC_ENOMEM, "compact: out of memory");
      f->buf = p;
      f->cap = need;
    }
  }
  char *p = f->buf + f->len;
  memcpy(p, line, event_len);
  p[event_len] = '}';
  char value[CHAIN_HEX];
  if (sc__chain_next(&f->chain, p, event_len + 1, value) != SC_OK)
    return sc_error_set(SC_EIO, "compact: SHA-256 failed");
  p += event_len;
  memcpy(p, CHAIN_PREFIX, CHAIN_PREFIX_LEN);
  p += CHAIN_PREFIX_LEN;
  memcpy(p, value, CHAIN_HEX);
  p += CHAIN_HEX;
  memcpy(p, "\"}\n", 3);
  f->len += need;
  f->lines++;
  f->bytes += need;
  return SC_OK;
}

static const char compacted_type[] = "\"type\":\"stagecoach.log.compacted\"";

bool sc__jsonl_compacted_line(const char *line, size_t len, char prev[CHAIN_HEX],
                              uint64_t *prev_lines, bool *bad) {
  *bad = false;
  size_t window = len < 256 ? len : 256;
  if (memmem(line, window, compacted_type, sizeof(compacted_type) - 1) == NULL) return false;
  size_t event_len;
  const char *hex;
  cJSON *root = NULL;
  if (sc__chain_split(line, len, &event_len, &hex)) {
    char *copy = malloc(event_len + 1);
    if (copy != NULL) {
      memcpy(copy, line, event_len);
      copy[event_len] = '}';
      root = cJSON_ParseWithLength(copy, event_len + 1);
      free(copy);
    }
  }
  const cJSON *data = cJSON_GetObjectItemCaseSensitive(root, "data");
  const cJSON *pc = cJSON_GetObjectItemCaseSensitive(data, "previous_chain");
  const cJSON *pl = cJSON_GetObjectItemCaseSensitive(data, "previous_lines");
  bool good = cJSON_IsString(pc) && strlen(pc->valuestring) == CHAIN_HEX && cJSON_IsNumber(pl) &&
              pl->valuedouble >= 1 && pl->valuedouble < 9007199254740992.0;
  for (size_t i = 0; good && i < CHAIN_HEX; i++) {
    char ch = pc->valuestring[i];
    good = (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f');
  }
  if (good) {
    memcpy(prev, pc->valuestring, CHAIN_HEX);
    *prev_lines = (uint64_t)pl->valuedouble;
  }
  *bad = !good;
  cJSON_Delete(root);
  return true;
}

static void format_time(int64_t now, char out[64]) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  time_t t = (time_t)now;
  struct tm tm;
  gmtime_r(&t, &tm);
  char base[32];
  strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(out, 64, "%s.%06ldZ", base, (long)(ts.tv_nsec / 1000) % 1000000);
}

/* Appends s to the buffer as a JSON string. */
static bool put_json_string(sc__buf *b, const char *s) {
  sc__buf_put(b, "\"", 1);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '"' || *p == '\\') {
      char esc[2] = {'\\', (char)*p};
      sc__buf_put(b, esc, 2);
    } else if (*p < 0x20) {
      char esc[8];
      snprintf(esc, sizeof(esc), "\\u%04x", *p);
      sc__buf_put(b, esc, 6);
    } else {
      sc__buf_put(b, p, 1);
    }
  }
  sc__buf_put(b, "\"", 1);
  return !b->oom;
}

/* The ids no line of the new log names, which a new run must not take again (a run under an id
 * it had before would carry the old run's idempotency keys): those of this compaction's dropped
 * records and those an older compacted line listed, each once. */
static bool put_dropped_ids(sc__buf *b, compactor *c) {
  bool first = true;
  sc__buf_put(b, ",\"dropped_task_ids\":[", 21);
  for (size_t i = 0; i < c->nall; i++) {
    record *x = c->all[i];
    if (x->first_run != x || !x->id_lines || x->id_kept) continue;
    if (!first) sc__buf_put(b, ",", 1);
    first = false;
    if (!put_json_string(b, x->id)) return false;
  }
  const cJSON *it;
  cJSON_ArrayForEach(it, c->old_dropped) {
    if (!cJSON_IsString(it)) continue;
    record **slot = c->nbuckets ? bucket_of(c, it->valuestring, strlen(it->valuestring)) : NULL;
    if (slot != NULL && *slot != NULL && (*slot)->first_run->id_lines)
      continue; /* used again since (through the library): it is listed above or kept */
    if (!first) sc__buf_put(b, ",", 1);
    first = false;
    if (!put_json_string(b, it->valuestring)) return false;
  }
  sc__buf_put(b, "]", 1);
  return !b->oom;
}

static int write_compacted_line(out_file *f, compactor *c, const sc_jsonl_compact_report *r,
                                int64_t now) {
  char when[64], head[1024];
  format_time(now, when);
  int n = snprintf(head, sizeof(head),
                   "{\"specversion\":\"1.0\",\"id\":\"log.compacted/%.16s\",\"source\":"
                   "\"stagecoach\",\"type\":\"stagecoach.log.compacted\",\"time\":\"%s\","
                   "\"datacontenttype\":\"application/json\",\"data\":{\"previous_chain\":\"%s\","
                   "\"previous_lines\":%llu,\"previous_bytes\":%llu,\"unfinished_tasks\":%llu,"
                   "\"kept_finished_tasks\":%llu,\"dropped_tasks\":%llu",
                   r->previous_chain, when, r->previous_chain, (unsigned long long)r->lines_before,
                   (unsigned long long)r->bytes_before, (unsigned long long)r->unfinished,
                   (unsigned long long)r->kept_finished, (unsigned long long)r->dropped);
  sc__buf b;
  sc__buf_init(&b);
  sc__buf_put(&b, head, (size_t)n);
  int rc = put_dropped_ids(&b, c) ? SC_OK : sc_error_set(SC_ENOMEM, "compact: out of memory");
  sc__buf_put(&b, "}}", 2);
  if (rc == SC_OK && b.oom) rc = sc_error_set(SC_ENOMEM, "compact: out of memory");
  if (rc == SC_OK) rc = out_event(f, b.p, b.len);
  sc__buf_free(&b);
  return rc;
}

/* ---- the steps ---- */

static int sync_dir(const char *path) {
  char *copy = strdup(path);
  if (copy == NULL) return sc_error_set(SC_ENOMEM, "compact: out of memory");
  int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  int err = fd < 0 || fsync(fd) != 0 ? errno : 0;
  if (fd >= 0) close(fd);
  int rc =
      err ? sc_error_set(SC_EIO, "fsync (the directory of) %s: %s", path, strerror(err)) : SC_OK;
  free(copy);
  return rc;
}

bool sc__jsonl_is_named(int fd, const char *path) {
  struct stat a, b;
  return fstat(fd, &a) == 0 && stat(path, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

/* Appends to the message of the error just set (copied first: the message is rewritten in
 * place). */
static void add_to_message(int code, const char *more) {
  char first[512];
  snprintf(first, sizeof(first), "%s", sc_error_message());
  sc_error_set(code, "%s; %s", first, more);
}

static void step(const sc_jsonl_compact_options *o, const char *name) {
  if (o->step != NULL) o->step(name, o->step_udata);
}

/* Opens and locks the log; SC_EBUSY naming the holder while a writer (or a compaction) runs. */
static int lock_log(const char *path, int *out) {
  for (int attempt = 0; attempt < 8; attempt++) {
    int fd = open(path, O_RDWR | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
      return errno == ENOENT ? sc_error_set(SC_ENOTFOUND, "no such log %s", path)
                             : sc_error_set(SC_EIO, "open %s: %s", path, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
      int err = errno;
      long pid = err == EWOULDBLOCK ? sc__jsonl_lock_holder(fd) : 0;
      close(fd);
      if (err != EWOULDBLOCK) return sc_error_set(SC_EIO, "lock %s: %s", path, strerror(err));
      if (pid > 0)
        return sc_error_set(SC_EBUSY,
                            "log %s is locked by pid %ld: a writer or another compaction is "
                            "running (let it finish or stop it first); nothing was changed",
                            path, pid);
      return sc_error_set(SC_EBUSY,
                          "log %s is locked by a writer or another compaction; nothing was changed",
                          path);
    }
    if (sc__jsonl_is_named(fd, path)) {
      *out = fd;
      return SC_OK;
    }
    close(fd); /* another compaction put a new log under the name meanwhile: lock that one */
  }
  return sc_error_set(SC_EBUSY, "log %s keeps being replaced; nothing was changed", path);
}

static int write_new_log(compactor *c, out_file *f, const sc_jsonl_compact_options *o,
                         sc_jsonl_compact_report *r, int64_t now) {
  int rc = write_compacted_line(f, c, r, now);
  for (size_t i = 0; i < c->nlines && rc == SC_OK; i++)
    if (keep_line(c, i, o, now)) rc = out_line(f, c->log->data + c->lines[i].off, c->lines[i].len);
  if (rc == SC_OK) rc = out_flush(f);
  return rc;
}

/* What a file that is not a regular file is, for the refusal. */
static const char *kind_of(mode_t m) {
  return S_ISDIR(m)                 ? "a directory"
         : S_ISFIFO(m)              ? "a FIFO"
         : S_ISSOCK(m)              ? "a socket"
         : S_ISCHR(m) || S_ISBLK(m) ? "a device"
                                    : "not a regular file";
}

/* The absolute name of path with its directory resolved and its last part kept as it is (a
 * symbolic link there stays the link); NULL when the directory does not resolve. */
static char *resolve_dir(const char *path) {
  char *a = strdup(path), *b = strdup(path);
  char *dir = a ? realpath(dirname(a), NULL) : NULL, *out = NULL;
  if (dir != NULL && b != NULL && asprintf(&out, "%s/%s", dir, basename(b)) < 0) out = NULL;
  free(dir);
  free(a);
  free(b);
  return out;
}

/* Whether the file at tmp is what a compaction of ours left when it stopped before its rename:
 * a regular file with no other name, of this user, empty or beginning with a compacted line.
 * Anything else under that name is someone's, and is not touched. */
static bool our_leftover(const char *tmp) {
  static const char head[] = "{\"specversion\":\"1.0\",\"id\":\"log.compacted/";
  struct stat st;
  if (lstat(tmp, &st) != 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1 || st.st_uid != geteuid())
    return false;
  if (st.st_size == 0) return true;
  int fd = open(tmp, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) return false;
  char buf[sizeof(head) - 1];
  ssize_t n = pread(fd, buf, sizeof(buf), 0);
  struct stat again;
  bool same = fstat(fd, &again) == 0 && again.st_dev == st.st_dev && again.st_ino == st.st_ino;
  close(fd);
  return same && n == (ssize_t)sizeof(buf) && memcmp(buf, head, sizeof(buf)) == 0;
}

/* Creates the new log's file: a name of its own that no other file has (O_EXCL, O_NOFOLLOW: a
 * link or a file planted there is never written through), after removing what an earlier
 * compaction left under it. */
static int create_tmp(const char *tmp, int *out) {
  struct stat st;
  if (lstat(tmp, &st) == 0) {
    if (!our_leftover(tmp))
      return sc_error_set(SC_EINVAL,
                          "compact: %s exists and is not what a compaction left (%s): it is "
                          "left alone; move it away and compact again (nothing was changed)",
                          tmp,
                          S_ISLNK(st.st_mode)    ? "a symbolic link"
                          : !S_ISREG(st.st_mode) ? kind_of(st.st_mode)
                          : st.st_nlink != 1     ? "a file with another name"
                                                 : "a file of someone else's");
    if (unlink(tmp) != 0 && errno != ENOENT)
      return sc_error_set(SC_EIO, "remove the leftover %s: %s", tmp, strerror(errno));
  }
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0)
    return sc_error_set(errno == EEXIST ? SC_EINVAL : SC_EIO, "create %s: %s%s", tmp,
                        strerror(errno),
                        errno == EEXIST ? " (another file took the name meanwhile; nothing "
                                          "was changed)"
                                        : "");
  *out = fd;
  return SC_OK;
}

/* The archive must be a new name, and neither the log nor the new log's file: the old log gets
 * it as a second name, and the new one is written beside. */
static int check_archive(const char *archive, const char *real, const char *tmp, int log_fd) {
  char *full = resolve_dir(archive);
  if (full == NULL)
    return sc_error_set(SC_EINVAL, "compact: archive %s: its directory: %s", archive,
                        strerror(errno ? errno : ENOENT));
  int rc = SC_OK;
  struct stat st, lst;
  if (strcmp(full, real) == 0 || (fstat(log_fd, &lst) == 0 && stat(archive, &st) == 0 &&
                                  st.st_dev == lst.st_dev && st.st_ino == lst.st_ino))
    rc = sc_error_set(SC_EINVAL,
                      "compact: archive %s is the log itself (another name of the same file, "
                      "as a compaction killed right after archiving leaves): it would be no "
                      "copy; remove that name or give another (nothing was changed)",
                      archive);
  else if (strcmp(full, tmp) == 0)
    rc = sc_error_set(SC_EINVAL,
                      "compact: archive %s is the name the new log is written under; give "
                      "another (nothing was changed)",
                      archive);
  else if (lstat(archive, &st) == 0)
    rc = sc_error_set(SC_EINVAL, "compact: archive %s: %s (nothing was changed)", archive,
                      strerror(EEXIST));
  free(full);
  return rc;
}

int sc_jsonl_compact(const char *path, const sc_jsonl_compact_options *o,
                     sc_jsonl_compact_report *r) {
  sc_jsonl_compact_report local;
  if (r == NULL) r = &local;
  memset(r, 0, sizeof(*r));
  if (path == NULL || !*path) return sc_error_set(SC_EINVAL, "compact: NULL path");
  sc_jsonl_compact_options opts;
  sc_jsonl_compact_options_init(&opts);
  if (o != NULL) {
    if (o->version < 1 || o->version > SC_JSONL_COMPACT_OPTIONS_VERSION)
      return sc_error_set(SC_EINVAL, "compact: unsupported sc_jsonl_compact_options version %u",
                          o->version);
    opts = *o;
  }
  int64_t now = opts.now_s ? opts.now_s : (int64_t)time(NULL);
  if (opts.archive != NULL && (!*opts.archive || strcmp(opts.archive, path) == 0))
    return sc_error_set(SC_EINVAL, "compact: the archive must be another name than the log");
  /* Only a regular file is a log: a directory, a FIFO, a socket or a device is refused before
   * it is opened (opening a FIFO would wait, and /dev/stdin is no name to rename over). */
  struct stat pst;
  if (stat(path, &pst) != 0)
    return errno == ENOENT ? sc_error_set(SC_ENOTFOUND, "no such log %s", path)
                           : sc_error_set(SC_EIO, "%s: %s", path, strerror(errno));
  if (!S_ISREG(pst.st_mode))
    return sc_error_set(SC_EPARSE, "%s is not a stagecoach log (%s)", path, kind_of(pst.st_mode));
  /* A log reached through a symbolic link is compacted where it is: the new file goes beside
   * the file itself and takes its name, and the link stays a link. */
  char *real = realpath(path, NULL);
  if (real == NULL)
    return errno == ENOENT ? sc_error_set(SC_ENOTFOUND, "no such log %s", path)
                           : sc_error_set(SC_EIO, "%s: %s", path, strerror(errno));
  char *tmp = NULL;
  if (asprintf(&tmp, "%s.compacting", real) < 0) {
    free(real);
    return sc_error_set(SC_ENOMEM, "compact: out of memory");
  }
  path = real;
  int fd = -1;
  bool linked = false, tmp_made = false;
  sc__log l = {0};
  compactor c = {.path = path, .log = &l};
  out_file f = {.path = tmp, .fd = -1};
  int rc = lock_log(path, &fd);
  if (rc != SC_OK) goto out;
  step(&opts, "locked");
  /* Read into memory, not mapped: the lock keeps our writers out, not a process that cuts the
   * file, and a mapping of a file cut under it faults. */
  rc = sc__log_read_fd(fd, &l);
  if (rc == SC_EPARSE) {
    rc = sc_error_set(SC_EPARSE,
                      "%s is not a stagecoach log (not a regular file: a file whose size says 0 "
                      "but that reads as bytes, as in /proc, or no file at all)",
                      path);
    goto out;
  }
  if (rc != SC_OK) {
    rc = sc_error_set(SC_EIO, "read %s: %s", path, strerror(errno));
    goto out;
  }
  if (opts.archive != NULL && (rc = check_archive(opts.archive, real, tmp, fd)) != SC_OK) goto out;
  sc__chain chain;
  if (sc__chain_init(&chain) != SC_OK) {
    rc = sc_error_set(SC_ENOMEM, "compact: out of memory");
    goto out;
  }
  sc_jsonl_report vr;
  rc = sc__log_walk(path, &l, &chain, on_line, &c, &vr);
  memcpy(r->previous_chain, chain.prev, CHAIN_HEX);
  sc__chain_free(&chain);
  if (c.err != 0) rc = c.err;
  if (rc == SC_ECORRUPT)
    add_to_message(SC_ECORRUPT, "a log that does not verify is not compacted (nothing changed)");
  if (rc != SC_OK) goto out;
  r->lines_before = vr.lines;
  r->bytes_before = vr.bytes;
  for (size_t i = 0; i < c.nbuckets; i++)
    for (record *x = c.buckets[i]; x != NULL; x = x->next_in_bucket)
      if (unfinished(x) && x->first_run != x) x->first_run->anchor = true;
  r->torn_tail_dropped = vr.torn_tail;
  /* What goes: count the records and the lines. */
  uint64_t kept_lines = 0, dropped_lines = 0;
  for (size_t i = 0; i < c.nlines; i++) {
    bool keep = keep_line(&c, i, &opts, now);
    keep ? kept_lines++ : dropped_lines++;
    if (keep && c.lines[i].rec != NULL) c.lines[i].rec->first_run->id_kept = true;
  }
  for (size_t i = 0; i < c.nall; i++) {
    record *x = c.all[i];
    if (x->first_line == NONE) continue; /* only named by another task's recovery */
    if (unfinished(x))
      r->unfinished++;
    else if (keep_whole(x, &opts, now))
      r->kept_finished++;
    else
      r->dropped++;
  }
  /* Nothing to drop (the old compacted line aside, which a new one would only replace): the
   * file is left as it is, so compacting twice changes nothing the second time. */
  bool old_head = c.nlines > 0 && c.lines[0].rec == NULL;
  if (vr.lines == 0 || (!vr.torn_tail && dropped_lines == (old_head ? 1u : 0u))) {
    r->lines_after = r->lines_before;
    r->bytes_after = r->bytes_before;
    rc = SC_OK;
    goto out;
  }
  /* The archive first: a second name of the old log, before anything else changes, so that a
   * name that exists already or another file system is refused with nothing done. */
  if (opts.archive != NULL) {
    if (link(path, opts.archive) != 0) {
      rc = sc_error_set(errno == EEXIST ? SC_EINVAL : SC_EIO, "compact: archive %s: %s%s",
                        opts.archive, strerror(errno),
                        errno == EXDEV ? " (the archive must be on the log's file system)" : "");
      goto out;
    }
    linked = true;
    if ((rc = sync_dir(opts.archive)) != SC_OK) goto out;
    step(&opts, "archived");
  }
  if ((rc = create_tmp(tmp, &f.fd)) != SC_OK) goto out;
  tmp_made = true;
  /* The new log has the old one's permissions (and owner, where we may give it). */
  struct stat st;
  if (fstat(fd, &st) != 0 || fchmod(f.fd, st.st_mode & 07777) != 0) {
    rc = sc_error_set(SC_EIO, "compact: permissions of %s: %s", tmp, strerror(errno));
    goto out;
  }
  if (fchown(f.fd, st.st_uid, st.st_gid) != 0)
    errno = 0; /* not ours to give away: the new log stays the compacting user's */
  if (sc__chain_init(&f.chain) != SC_OK || (f.buf = malloc(f.cap = 256 * 1024)) == NULL) {
    rc = sc_error_set(SC_ENOMEM, "compact: out of memory");
    goto out;
  }
  rc = write_new_log(&c, &f, &opts, r, now);
  if (rc != SC_OK) goto out;
  step(&opts, "written");
  if (fsync(f.fd) != 0) {
    rc = sc_error_set(SC_EIO, "fsync %s: %s", tmp, strerror(errno));
    goto out;
  }
  step(&opts, "synced");
  /* The new log is locked before it takes the name: a writer that opens it then waits for us. */
  if (flock(f.fd, LOCK_EX | LOCK_NB) != 0) {
    rc = sc_error_set(SC_EIO, "lock %s: %s", tmp, strerror(errno));
    goto out;
  }
  if (rename(tmp, path) != 0) {
    rc = sc_error_set(SC_EIO, "rename %s to %s: %s", tmp, path, strerror(errno));
    goto out;
  }
  tmp_made = false;
  linked = false; /* the archive now holds the only copy of the old log: it stays */
  step(&opts, "renamed");
  r->compacted = true;
  r->lines_after = f.lines;
  r->bytes_after = f.bytes;
  if ((rc = sync_dir(path)) != SC_OK) {
    /* Too late to go back: the new log has the name. A crash of the machine before the
     * directory reaches the disk may bring back the old one, whole, which recovers the same. */
    add_to_message(rc, "the compacted log is in place, but until the directory is synced a crash "
                       "of the machine may bring back the old log (it recovers the same)");
    goto out;
  }
  step(&opts, "done");
out:
  if (tmp_made) unlink(tmp);
  if (linked) unlink(opts.archive); /* the old log is still the log: no second name is left */
  if (f.fd >= 0 && close(f.fd) != 0 && rc == SC_OK)
    rc = sc_error_set(SC_EIO, "close %s: %s", tmp, strerror(errno));
  sc__chain_free(&f.chain);
  free(f.buf);
  compactor_free(&c);
  sc__log_unmap(&l);
  if (fd >= 0) close(fd);
  free(tmp);
  free(real);
  return rc;
}

/* The last chain value and line count of a log, verified. */
static int chain_end(const char *path, char prev[CHAIN_HEX], uint64_t *lines, sc__log *l,
                     bool *is_compacted, char named[CHAIN_HEX], uint64_t *named_lines) {
  int rc = sc__log_map(path, l);
  if (rc == SC_ENOTFOUND) return sc_error_set(rc, "no such log %s", path);
  if (rc == SC_EPARSE)
    return sc_error_set(rc, "%s is not a stagecoach log (a FIFO, a socket or a device)", path);
  if (rc != SC_OK) return sc_error_set(rc, "read %s: %s", path, strerror(errno));
  sc__chain c;
  if (sc__chain_init(&c) != SC_OK) return sc_error_set(SC_ENOMEM, "out of memory");
  sc_jsonl_report r;
  rc = sc__log_walk(path, l, &c, NULL, NULL, &r);
  memcpy(prev, c.prev, CHAIN_HEX);
  sc__chain_free(&c);
  *lines = r.lines;
  if (rc != SC_OK || is_compacted == NULL) return rc;
  const char *nl = l->size ? memchr(l->data, '\n', l->size) : NULL;
  bool bad = false;
  *is_compacted =
      nl != NULL &&
      sc__jsonl_compacted_line(l->data, (size_t)(nl - l->data), named, named_lines, &bad) && !bad;
  return SC_OK;
}

int sc_jsonl_verify_link(const char *path, const char *archive) {
  if (path == NULL || archive == NULL) return sc_error_set(SC_EINVAL, "verify: NULL path");
  char prev[CHAIN_HEX], named[CHAIN_HEX], unused[CHAIN_HEX];
  uint64_t lines = 0, archive_lines = 0, named_lines = 0;
  bool compacted = false;
  sc__log a = {0}, b = {0};
  int rc = chain_end(path, unused, &lines, &a, &compacted, named, &named_lines);
  if (rc == SC_OK) rc = chain_end(archive, prev, &archive_lines, &b, NULL, NULL, NULL);
  if (rc == SC_OK && !compacted)
    rc = sc_error_set(SC_EINVAL, "%s does not begin with a stagecoach.log.compacted line", path);
  else if (rc == SC_OK && (memcmp(prev, named, CHAIN_HEX) != 0 || archive_lines != named_lines))
    rc = sc_error_set(SC_ECORRUPT,
                      "%s was not compacted from %s as it is: its first line names %llu lines "
                      "ending in chain %.16s..., the archive has %llu lines ending in %.16s...",
                      path, archive, (unsigned long long)named_lines, named,
                      (unsigned long long)archive_lines, prev);
  sc__log_unmap(&a);
  sc__log_unmap(&b);
  return rc;
}
