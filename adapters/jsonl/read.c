/* The event reader of the log: each verified line handed back as the event's own JSON (the line
 * without its chain member), the bytes the engine's encoder wrote. Replays read logs through it. */
#include <stdlib.h>
#include <string.h>

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
