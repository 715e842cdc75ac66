/* The event reader of the log: each verified line handed back as the event's own JSON (the line
 * without its chain member), the bytes the engine's encoder wrote. Replays read logs through it. */
#include <stdlib.h>
#include <string.h>

#include "chain.h"

typedef struct read_state {
  sc_jsonl_event_fn fn;
  void *udata;
  char *buf;
  size_t cap;
  int err;
} read_state;

static int each_line(const char *line, size_t len, uint64_t offset, uint64_t lineno, void *udata) {
  (void)offset;
  (void)lineno;
  read_state *s = udata;
  size_t event_len;
  const char *hex;
  if (!sc__chain_split(line, len, &event_len, &hex)) return SC_OK; /* the walk verified it */
  if (event_len + 2 > s->cap) {
    size_t cap = s->cap ? s->cap : 4096;
    while (cap < event_len + 2)
      cap *= 2;
    char *p = realloc(s->buf, cap);
    if (p == NULL) return s->err = sc_error_set(SC_ENOMEM, "read log: out of memory");
    s->buf = p;
    s->cap = cap;
  }
  memcpy(s->buf, line, event_len);
  s->buf[event_len] = '}';
  s->buf[event_len + 1] = '\0';
  int rc = s->fn(s->buf, event_len + 1, s->udata);
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
  read_state s = {fn, udata, NULL, 0, 0};
  sc_jsonl_report r;
  rc = sc__log_walk(path, &l, &c, each_line, &s, &r);
  if (s.err != 0) rc = s.err;
  free(s.buf);
  sc__chain_free(&c);
  sc__log_unmap(&l);
  return rc;
}
