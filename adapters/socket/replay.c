/* The replay of a task's events from the log (a subscribe with from_seq that the ring cannot
 * answer): read on libuv's thread pool in pieces, the index of where each task begins in the log,
 * the seam to the ring and the live stream, and the clock that drops a replaying client that
 * takes nothing. */
#define _GNU_SOURCE /* memmem, asprintf */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "socket_int.h"

#include <stagecoach/jsonl.h>

/* A replay-gap line, with its newline; malloc'd, NULL when out of memory. Called on the loop and
 * on the thread pool. */
static char *gap_text(const char *task, uint64_t from, uint64_t first_available, bool known,
                      size_t *len) {
  cJSON *o = cJSON_CreateObject();
  if (o == NULL) return NULL;
  cJSON_AddStringToObject(o, "error", "replay-gap");
  cJSON_AddStringToObject(o, "task", task);
  cJSON_AddNumberToObject(o, "from_seq", (double)from);
  if (known)
    cJSON_AddNumberToObject(o, "first_available", (double)first_available);
  else
    cJSON_AddNullToObject(o, "first_available");
  char *text = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  if (text == NULL) return NULL;
  *len = strlen(text);
  text[(*len)++] = '\n'; /* the NUL becomes the newline: used by length */
  return text;
}

static void gap_line(sc__sock_client *c, const char *task, uint64_t from, uint64_t first_available,
                     bool known) {
  size_t len;
  char *text = gap_text(task, from, first_available, known, &len);
  if (text != NULL) sc__sock_client_send(c, text, len, true);
  free(text);
}

/* The log is read on libuv's thread pool, not on the loop, and in pieces: a work item reads about
 * REPLAY_PIECE bytes of the log, then the loop queues what it kept for the client and puts the
 * replay back at the end of the server's line of replays, whose next piece starts at the next
 * turn of the loop (sc__sock_replay_pump, before the loop waits). A replay therefore never keeps
 * the loop running for more than the piece on the pool: when nothing else does, uv_run returns
 * and sc_socket_close stops the replays. At most one piece per server is on the pool at a time,
 * so replays never take the threads the log writer's syncs need, and each replay holds one piece
 * and what its client has not yet taken: when that is more than REPLAY_AHEAD bytes, the replay
 * waits (parked) until the client has read it. The work owns copies of all it reads (the client
 * may go while it runs) and writes the lines it keeps into chunks of its own, which the loop
 * queues as they are, without a copy. Until the seam the client is REPLAYING: the live stream
 * passes it by and the ring keeps what it misses. */
#define REPLAY_PIECE (1u << 20)
#define REPLAY_AHEAD (1u << 20)

struct sc__sock_replay {
  uv_work_t req;
  sc__queue node; /* in the server's replays waiting for their turn (while waiting) */
  sc_socket *s;
  sc__sock_client *c;             /* NULL once the client is gone */
  sc__sock_index *ix;             /* the server's index: touched only by the piece on the pool */
  atomic_bool cancel;             /* set when the client goes: the read stops at its next line */
  char *log_path, *task, *needle; /* needle: "taskid":"ID", to skip other tasks' lines unparsed */
  sc__sock_filter filter;         /* a copy of the client's */
  uint64_t from, expected, upto;
  sc_jsonl_cursor *cur_log; /* where the read stands in the log (opened by the first piece) */
  sc_jsonl_position seeked; /* where the first piece started, when the index placed it */
  bool from_index;          /* it did, and no line has been read since */
  bool pending;             /* the line at the index's end was handed: the end moves past it */
  uint64_t start, bytes;    /* the first piece's offset; the bytes of the log the piece read */
  sc__queue chunks;         /* what the piece kept, in order, through the chunks' pool nodes */
  sc__sock_chunk *cur;
  size_t kept;  /* events the piece handed on */
  bool nomem;   /* out of memory: the client is told and closed */
  bool hit;     /* the piece stopped at an event the ring held (seq >= upto) */
  bool done;    /* the log holds nothing more now (its end, or a line that does not verify) */
  bool parked;  /* waiting for its client to take what is queued */
  bool running; /* a piece is on the pool */
  bool placed;  /* the first piece is done: s->replay_start was set */
};

/* ---- the index: task id -> the position of its first line in the log ---- */

/* A task's first line. */
typedef struct index_entry {
  uint64_t offset, line;
  char chain[64];
  char id[]; /* the map's key */
} index_entry;

/* What an entry costs: itself, its id, and the map's slots for it (at most about three: the map
 * doubles when it is three quarters full). */
static size_t entry_cost(size_t id_len) {
  return sizeof(index_entry) + id_len + 1 + 3 * sizeof(sc__map_slot);
}

static void index_clear(sc__sock_index *ix) {
  SC__MAP_FOREACH(&ix->tasks, slot) {
    free(slot->value);
  }
  sc__map_free(&ix->tasks);
  ix->bytes = 0;
  ix->frozen = false;
  ix->has_last = false;
  ix->built = false;
}

void sc__sock_index_free(sc__sock_index *ix) {
  if (ix == NULL) return;
  index_clear(ix);
  free(ix);
}

size_t sc__sock_index_count(const sc__sock_index *ix) {
  return ix ? ix->tasks.n : 0;
}

/* A new index of the file the cursor reads, which starts at its first line. */
static void index_reset(sc__sock_index *ix, const sc_jsonl_position *first) {
  index_clear(ix);
  ix->built = true;
  ix->dev = first->dev;
  ix->ino = first->ino;
  ix->end = *first;
}

/* The task id of an event line, when it needs no escaping (then the line holds it as it is): the
 * first "taskid" member is the attribute, which comes before the data. */
static bool line_task(const char *json, size_t len, const char **id, size_t *id_len) {
  static const char key[] = "\"taskid\":\"";
  const char *p = memmem(json, len, key, sizeof(key) - 1);
  if (p == NULL) return false;
  p += sizeof(key) - 1;
  const char *q = memchr(p, '"', len - (size_t)(p - json));
  if (q == NULL || memchr(p, '\\', (size_t)(q - p)) != NULL) return false;
  *id = p;
  *id_len = (size_t)(q - p);
  return true;
}

/* A line handed at position at: the index's end moves past the line handed before it (which was
 * at the end), and a line at the end has its task recorded when it is new. Past the index's
 * bound, the end stays where it is for good (the tasks of later lines would be missing). */
static void index_line(sc__sock_replay *w, const sc_jsonl_position *at, const char *json,
                       size_t len) {
  sc__sock_index *ix = w->ix;
  if (!ix->built || at->dev != ix->dev || at->ino != ix->ino)
    return; /* a cursor still on the log a compaction replaced: its lines are not the index's */
  if (w->pending && at->offset > ix->end.offset) {
    ix->last = ix->end;
    ix->has_last = true;
    ix->end = *at;
  }
  w->pending = false;
  if (ix->frozen || at->offset != ix->end.offset) return;
  const char *id;
  size_t n;
  if (line_task(json, len, &id, &n) && sc__map_get_n(&ix->tasks, id, n) == NULL) {
    index_entry *e = NULL;
    if (ix->bytes + entry_cost(n) <= ix->limit) e = malloc(sizeof(*e) + n + 1);
    if (e != NULL) {
      e->offset = at->offset;
      e->line = at->line;
      memcpy(e->chain, at->chain, sizeof(e->chain));
      memcpy(e->id, id, n);
      e->id[n] = '\0';
    }
    if (e == NULL || sc__map_put_n(&ix->tasks, e->id, n, e) != 0) {
      free(e);
      ix->frozen = true; /* the bound (or the memory) is reached: later tasks are read for */
      return;
    }
    ix->bytes += entry_cost(n);
  }
  w->pending = true;
}

/* After a piece: the line at the index's end was read whole when the cursor stands past it. */
static void index_piece_end(sc__sock_replay *w) {
  if (!w->pending) return;
  w->pending = false;
  sc_jsonl_position next;
  sc_jsonl_cursor_tell(w->cur_log, &next);
  if (next.dev == w->ix->dev && next.ino == w->ix->ino && next.offset > w->ix->end.offset) {
    w->ix->last = w->ix->end;
    w->ix->has_last = true;
    w->ix->end = next;
  }
}

/* Where the first piece starts (the cursor is open at the log's first line): at the task's first
 * line when the index knows it, at the last line the index holds when it does not (the task's
 * first line, if any, comes after it; that line is read again to check that the file still holds
 * it), at the first line otherwise. A log the index is not of (a compaction renamed a new one
 * over it, or it was cut back) gets a new index. */
static void replay_place(sc__sock_replay *w) {
  sc__sock_index *ix = w->ix;
  sc_jsonl_position first;
  sc_jsonl_cursor_tell(w->cur_log, &first);
  w->start = 0;
  if (!ix->built || ix->dev != first.dev || ix->ino != first.ino) {
    index_reset(ix, &first);
    return;
  }
  if (w->needle == NULL) return; /* an id the index cannot hold: the whole log is read */
  const index_entry *e = sc__map_get(&ix->tasks, w->task);
  sc_jsonl_position at = ix->has_last ? ix->last : ix->end;
  if (e != NULL) {
    at = (sc_jsonl_position){first.dev, first.ino, e->offset, e->line, {0}};
    memcpy(at.chain, e->chain, sizeof(at.chain));
  }
  if (sc_jsonl_cursor_seek(w->cur_log, &at) != SC_OK) {
    index_reset(ix, &first); /* past the file's end: it was cut back */
    return;
  }
  w->seeked = at;
  w->from_index = true;
  w->start = at.offset;
}

/* Appends a line (len bytes, then a newline unless nl is false: the text has its own) to the
 * piece's chunks, whole in one chunk: a segment the client is sent holds whole lines, which a
 * drop relies on to cut the queue at a line's end. */
static bool work_append(sc__sock_replay *w, const char *p, size_t len, bool nl) {
  size_t need = len + (nl ? 1 : 0);
  if (w->cur == NULL || w->cur->cap - w->cur->len < need) {
    sc__sock_chunk *ch = sc__sock_chunk_alloc(need);
    if (ch == NULL) return false;
    sc__queue_insert_tail(&w->chunks, &ch->pool);
    w->cur = ch;
  }
  memcpy(w->cur->data + w->cur->len, p, len);
  if (nl) w->cur->data[w->cur->len + len] = '\n';
  w->cur->len += need;
  return true;
}

static int replay_line(const char *json, size_t len, void *udata) {
  sc__sock_replay *w = udata;
  if (atomic_load_explicit(&w->cancel, memory_order_relaxed)) return 1;
  sc_jsonl_position at;
  sc_jsonl_cursor_tell(w->cur_log, &at);
  index_line(w, &at, json, len);
  if (w->needle && memmem(json, len, w->needle, strlen(w->needle)) == NULL) return 0;
  sc_event_doc *d;
  if (sc_event_parse(json, len, &d) != SC_OK) return 0;
  const sc_event *ev = sc_event_doc_event(d);
  int stop = 0;
  if (strcmp(ev->task_id, w->task) == 0 && ev->seq >= w->expected) {
    if (ev->seq >= w->upto) {
      stop = 1; /* the ring and the live stream hold the rest */
    } else {
      bool ok = true;
      if (ev->seq > w->expected) {
        size_t n;
        char *gap = gap_text(w->task, w->expected, ev->seq, true, &n);
        ok = gap != NULL && work_append(w, gap, n, false);
        free(gap);
      }
      if (ok && sc__sock_filter_match(&w->filter, ev->task_id, ev->tenant_id, ev->type))
        ok = work_append(w, json, len, true);
      w->kept++;
      if (!ok) {
        w->nomem = true;
        stop = 1;
      }
      w->expected = ev->seq + 1;
    }
  }
  sc_event_doc_free(d);
  return stop;
}

/* One piece of the read, on the thread pool. */
static int read_piece(sc__sock_replay *w, bool *at_end) {
  sc_jsonl_position before, after;
  sc_jsonl_cursor_tell(w->cur_log, &before);
  int rc = sc_jsonl_cursor_read(w->cur_log, REPLAY_PIECE, replay_line, w, at_end);
  index_piece_end(w);
  sc_jsonl_cursor_tell(w->cur_log, &after);
  w->bytes += after.offset - before.offset;
  return rc;
}

static void replay_read(uv_work_t *req) {
  sc__sock_replay *w = req->data;
  w->hit = false;
  w->kept = 0;
  w->bytes = 0;
  if (w->cur_log == NULL) {
    if (sc_jsonl_cursor_open(w->log_path, &w->cur_log) != SC_OK) {
      w->done = true; /* a log that cannot be read holds nothing more: the gap line says so */
      return;
    }
    replay_place(w);
  }
  bool at_end = false;
  int rc = read_piece(w, &at_end);
  sc_jsonl_position now;
  sc_jsonl_cursor_tell(w->cur_log, &now);
  if (rc == SC_ECORRUPT && w->from_index && now.offset == w->seeked.offset) {
    /* The line the index named does not follow its chain value there: the file was rewritten in
     * place. A new index, and the read from the first line. */
    sc_jsonl_cursor_close(w->cur_log);
    w->cur_log = NULL;
    w->from_index = false;
    w->ix->built = false;
    if (sc_jsonl_cursor_open(w->log_path, &w->cur_log) != SC_OK) {
      w->done = true;
      return;
    }
    replay_place(w);
    rc = read_piece(w, &at_end);
  } else if (now.offset != w->seeked.offset) {
    w->from_index = false;
  }
  if (rc == 1 && !w->nomem && !atomic_load(&w->cancel))
    w->hit = true;
  else if (rc != SC_OK || at_end)
    w->done = true; /* the end of the log, or a line that does not verify: nothing more */
}

static void chunks_free(sc__sock_replay *w) {
  sc__queue *q;
  while ((q = sc__queue_head(&w->chunks)) != NULL) {
    sc__queue_remove(q);
    sc__sock_chunk_unref(w->s, sc__queue_data(q, sc__sock_chunk, pool));
  }
  w->cur = NULL;
}

static void replay_free(sc__sock_replay *w) {
  chunks_free(w);
  if (sc__queue_linked(&w->node)) sc__queue_remove(&w->node);
  sc_jsonl_cursor_close(w->cur_log);
  free(w->log_path);
  free(w->task);
  free(w->needle);
  sc__sock_filter_free(&w->filter);
  free(w);
}

static bool plain_id(const char *id) {
  for (const unsigned char *p = (const unsigned char *)id; *p; p++)
    if (*p < 0x20 || *p == '"' || *p == '\\' || *p >= 0x80) return false;
  return true;
}

/* The first seq of task the ring or the live stream delivers from now on; UINT64_MAX when the
 * server knows nothing of the task. */
static uint64_t ring_first(sc_socket *s, const char *task) {
  for (uint64_t pos = s->ring_pos - s->ring_n; pos < s->ring_pos; pos++)
    if (strcmp(s->ring[pos % s->ring_cap].task->id, task) == 0)
      return s->ring[pos % s->ring_cap].seq;
  sc__sock_task_rec *rec = sc__sock_task_find(s, task);
  return rec ? rec->last_seq + 1 : UINT64_MAX;
}

/* The seam: the log gave every event from `from` to before `expected`; the ring gives the rest,
 * and the live stream carries on from there, so nothing is missed or sent twice. What neither
 * holds is said in a replay-gap line (none after the log's events of a task the server never
 * saw: the log holds all there is of it). */
static void replay_seam(sc__sock_client *c, const char *task, uint64_t from, uint64_t expected) {
  sc_socket *s = c->server;
  uint64_t upto = ring_first(s, task);
  if (expected < upto && !(upto == UINT64_MAX && expected > from))
    gap_line(c, task, expected, upto, upto != UINT64_MAX);
  if (c->state == SC__SOCK_REPLAYING) c->state = SC__SOCK_STREAM;
  for (uint64_t pos = s->ring_pos - s->ring_n; pos < s->ring_pos && c->state == SC__SOCK_STREAM;
       pos++) {
    const sc__sock_ring_entry *r = &s->ring[pos % s->ring_cap];
    if (r->seq >= expected && strcmp(r->task->id, task) == 0 &&
        sc__sock_filter_match(&c->filter, r->task->id, r->task->tenant, r->type))
      sc__sock_client_send_seg(c, &r->line, true);
  }
}

static void replay_done(uv_work_t *req, int status);

/* Before the loop waits: the next waiting replay's piece, when none is on the pool. Never while
 * the server closes. */
void sc__sock_replay_pump(sc_socket *s) {
  sc__queue *q;
  while (s->replays == 0 && !s->closing && (q = sc__queue_head(&s->replay_wait)) != NULL) {
    sc__queue_remove(q);
    sc__queue_init(q);
    sc__sock_replay *w = sc__queue_data(q, sc__sock_replay, node);
    if (uv_queue_work(s->loop, &w->req, replay_read, replay_done) == 0) {
      s->replays++;
      w->running = true;
      return;
    }
    sc__sock_client *c = w->c; /* cannot happen with a live loop; said all the same */
    c->replay = NULL;
    replay_free(w);
    sc__sock_client_error_reply(c, "SC_EIO", "the log could not be read", NULL);
    sc__sock_client_close_after_flush(c);
  }
}

/* Another piece, in its turn (from the next turn of the loop on), or later when the client has
 * too much queued still. */
static void replay_again(sc__sock_replay *w) {
  if (w->c->queued > REPLAY_AHEAD) {
    w->parked = true;
    return;
  }
  w->parked = false;
  sc__queue_insert_tail(&w->s->replay_wait, &w->node);
}

static void replay_done(uv_work_t *req, int status) {
  (void)status;
  sc__sock_replay *w = req->data;
  sc_socket *s = w->s;
  sc__sock_client *c = w->c;
  s->replays--;
  s->replay_bytes += w->bytes;
  if (!w->placed) s->replay_start = w->start;
  w->placed = true;
  if (c == NULL) {
    replay_free(w);
    return;
  }
  sc__queue *q;
  sc__queue_foreach(q, &w->chunks) {
    sc__sock_chunk *ch = sc__queue_data(q, sc__sock_chunk, pool);
    sc__sock_seg seg = {ch, 0, ch->len};
    if (ch->len > 0 && !sc__sock_client_send_seg(c, &seg, true)) break;
  }
  chunks_free(w);
  w->running = false;
  c->stall_mark = sc__sock_client_unread(c); /* what it queued now is not what it took */
  if (w->c == NULL) {                        /* dropped while queueing: the close detached it */
    replay_free(w);
  } else if (c->state == SC__SOCK_CLOSING) { /* going (dropped): no more of the log for it */
    sc__sock_replay_detach(c);
  } else if (w->nomem) {
    c->replay = NULL;
    replay_free(w);
    sc__sock_client_error_reply(c, "SC_ENOMEM", "out of memory while replaying the log", NULL);
    sc__sock_client_close_after_flush(c);
  } else if (!w->hit && !w->done) {
    replay_again(w); /* the piece ended: the next one in its turn */
  } else {
    /* The ring may have moved past events during the read: what it no longer holds is read on
     * from the log, up to what it holds now, while that makes progress (the piece stopped at an
     * event the ring held then, or the log grew). */
    uint64_t upto = ring_first(s, w->task);
    if (upto != UINT64_MAX && w->expected < upto && (upto > w->upto || (w->done && w->kept > 0))) {
      w->upto = upto;
      w->done = false;
      replay_again(w);
    } else {
      c->replay = NULL;
      replay_seam(c, w->task, w->from, w->expected);
      replay_free(w);
    }
  }
}

/* The client took some of its queue (it is called after each write): a replay waiting for that
 * reads on, and the clock of stall_ms starts again. */
void sc__sock_replay_drained(sc__sock_client *c) {
  if (sc__sock_client_unread(c) < c->stall_mark) {
    c->stall_mark = sc__sock_client_unread(c);
    c->stall_since = uv_now(c->server->loop);
  }
  sc__sock_replay *w = c->replay;
  if (w != NULL && w->parked && c->queued <= REPLAY_AHEAD / 2) replay_again(w);
}

void sc__sock_replay_detach(sc__sock_client *c) {
  sc__sock_replay *w = c->replay;
  if (w == NULL) return;
  c->replay = NULL;
  if (w->running) { /* the piece on the pool stops at its next line; its callback frees it */
    w->c = NULL;
    atomic_store(&w->cancel, true);
  } else {
    replay_free(w);
  }
}

/* A replaying client (its replay is being read, or what the replay queued beyond queue_bytes is
 * not taken yet) that has taken nothing of its queue for replay_stall_ms is dropped as a slow
 * consumer: it would hold its replay and what it queued for ever. True while the client needs
 * the server's clock. */
bool sc__sock_replay_watch(sc__sock_client *c, uint64_t now) {
  sc_socket *s = c->server;
  if (c->closed || (c->state != SC__SOCK_REPLAYING && c->state != SC__SOCK_STREAM)) return false;
  if (c->replay == NULL && c->cap <= s->o.queue_bytes) return false;
  size_t unread = sc__sock_client_unread(c); /* a write the sender holds counts as it goes */
  if (unread == 0 || unread < c->stall_mark) {
    c->stall_mark = unread;
    c->stall_since = now;
    return true;
  }
  c->stall_mark = unread;
  if (now - c->stall_since < s->o.replay_stall_ms) return true;
  sc__sock_replay_detach(c);
  sc__sock_client_drop_slow(c);
  return false;
}

static bool filter_copy(sc__sock_filter *to, const sc__sock_filter *from) {
  memset(to, 0, sizeof(*to));
  to->from_seq = from->from_seq;
  if ((from->tenant && (to->tenant = strdup(from->tenant)) == NULL) ||
      (from->task && (to->task = strdup(from->task)) == NULL))
    return false;
  if (from->ntypes && (to->types = calloc(from->ntypes, sizeof(*to->types))) == NULL) return false;
  for (; to->ntypes < from->ntypes; to->ntypes++)
    if ((to->types[to->ntypes] = strdup(from->types[to->ntypes])) == NULL) return false;
  return true;
}

/* The task's events from seq `from`: from the log (on the thread pool) what the ring no longer
 * holds, then the ring. */
void sc__sock_replay_start(sc__sock_client *c, const char *task, uint64_t from) {
  sc_socket *s = c->server;
  uint64_t upto = ring_first(s, task);
  if (from >= upto || s->log_path == NULL) {
    replay_seam(c, task, from, from);
    return;
  }
  if (s->index == NULL && (s->index = calloc(1, sizeof(*s->index))) != NULL)
    s->index->limit = s->index_limit ? s->index_limit : SC__SOCK_INDEX_BYTES;
  sc__sock_replay *w = s->index ? calloc(1, sizeof(*w)) : NULL;
  bool ok = w != NULL;
  if (ok) {
    sc__queue_init(&w->chunks);
    sc__queue_init(&w->node);
    atomic_init(&w->cancel, false);
    w->s = s;
    w->c = c;
    w->ix = s->index;
    w->from = w->expected = from;
    w->upto = upto;
    w->req.data = w;
    ok = (w->log_path = strdup(s->log_path)) != NULL && (w->task = strdup(task)) != NULL &&
         filter_copy(&w->filter, &c->filter) &&
         (!plain_id(task) || asprintf(&w->needle, "\"taskid\":\"%s\"", task) >= 0);
    if (!plain_id(task) || !ok) w->needle = NULL;
  }
  if (ok) {
    c->replay = w;
    c->state = SC__SOCK_REPLAYING;
    c->stall_mark = sc__sock_client_unread(c);
    c->stall_since = uv_now(s->loop);
    s->replays_started++;
    sc__queue_insert_tail(&s->replay_wait, &w->node);
    sc__sock_tick_start(s);
    return; /* its first piece starts before the loop waits (sc__sock_replay_pump) */
  }
  if (w != NULL) replay_free(w);
  sc__sock_client_error_reply(c, "SC_ENOMEM", "out of memory", NULL);
  sc__sock_client_close_after_flush(c);
}
