/* The socket server: a listening socket and its clients watched with uv_poll_t in the engine's
 * loop, the subscriber that encodes each event once into a shared chunk that the replay ring and
 * every client's queue reference, and the writes, one sendmsg of the queued segments per client
 * per loop turn. Clients are plain non-blocking sockets: no write request of libuv is ever
 * pending, so no client keeps the loop running, and a client that does not read only fills its
 * own queue. */
#define _GNU_SOURCE /* accept4, asprintf */
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <linux/sockios.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "socket_int.h"

#define FLUSH_BYTES   (64 * 1024) /* per client: write once this much waits, even in a busy turn */
#define FLUSH_MS      5           /* and at the latest after this long */
#define CLOSE_WAIT    1000        /* ms a closing client gets to take what is queued */
#define DROP_WAIT     10000       /* ms a dropped client gets to read its slow-consumer line */
#define SLOW_LINE     "{\"error\":\"slow-consumer\"}\n"
#define TOO_MANY      "{\"error\":\"too-many-clients\"}\n"
#define CHUNK_BYTES   (64 * 1024) /* encoded lines are appended to shared chunks of this size */
#define WATCHED_PIECE (16 * 1024) /* bytes a sendmsg to a client the stall rule watches */
#define POOL_CHUNKS   16          /* unused chunks kept for reuse */
#define STOCK_CHUNKS  16          /* chunks the sender keeps ready, made off the engine's thread */

/* ---- chunks ---- */

sc__sock_chunk *sc__sock_chunk_alloc(size_t need) {
  size_t cap = need > CHUNK_BYTES ? need : CHUNK_BYTES;
  sc__sock_chunk *ch = malloc(sizeof(*ch) + cap);
  if (ch == NULL) return NULL;
  ch->cap = cap;
  ch->refs = 1;
  ch->len = 0;
  sc__queue_init(&ch->pool);
  return ch;
}

static void sender_wake(sc_socket *s);

/* A chunk from the pool, else from the sender's stock (so that a stream growing faster than its
 * clients read does not make the engine's thread wait on the allocator and on fresh pages), else
 * a new one. */
static sc__sock_chunk *chunk_new(sc_socket *s, size_t need) {
  if (need > CHUNK_BYTES) return sc__sock_chunk_alloc(need);
  sc__queue *q = sc__queue_head(&s->pool);
  if (q != NULL) {
    s->npool--;
  } else if (s->sender_running) {
    uv_mutex_lock(&s->mu);
    q = sc__queue_head(&s->stock);
    if (q != NULL) {
      sc__queue_remove(q); /* under the lock: the sender appends to the stock */
      s->nstock--;
    }
    if (s->nstock < STOCK_CHUNKS / 2 && !s->stock_low) {
      s->stock_low = true;
      sender_wake(s);
    }
    uv_mutex_unlock(&s->mu);
  }
  if (q == NULL) return sc__sock_chunk_alloc(need);
  if (sc__queue_linked(q)) sc__queue_remove(q); /* from the pool */
  sc__sock_chunk *ch = sc__queue_data(q, sc__sock_chunk, pool);
  ch->refs = 1;
  ch->len = 0;
  return ch;
}

void sc__sock_chunk_unref(sc_socket *s, sc__sock_chunk *ch) {
  if (ch == NULL || --ch->refs > 0) return;
  if (ch->cap == CHUNK_BYTES && s->npool < POOL_CHUNKS && !s->closing) {
    sc__queue_insert_head(&s->pool, &ch->pool);
    s->npool++;
  } else {
    free(ch);
  }
}

/* Room for need bytes at the end of *cur (the holder's reference): a new chunk when it is full. */
static bool chunk_room(sc_socket *s, sc__sock_chunk **cur, size_t need) {
  if (*cur != NULL && (*cur)->cap - (*cur)->len >= need) return true;
  sc__sock_chunk *ch = chunk_new(s, need);
  if (ch == NULL) return false;
  sc__sock_chunk_unref(s, *cur);
  *cur = ch;
  return true;
}

/* ---- client output ---- */

static void client_close(sc__sock_client *c);

static void on_client_io(uv_poll_t *p, int status, int events);

static void set_watch(sc__sock_client *c) {
  int ev = 0;
  if (c->state != SC__SOCK_CLOSING) ev |= UV_READABLE;
  if (ev != c->events) {
    c->events = ev;
    if (ev == 0)
      uv_poll_stop(&c->poll);
    else
      uv_poll_start(&c->poll, ev, on_client_io);
  }
}

static sc__sock_seg *seg_at(sc__sock_client *c, size_t i) {
  return &c->segs[(c->seg_head + i) % c->seg_cap];
}

static void seg_pop(sc__sock_client *c) {
  sc__sock_seg *g = seg_at(c, 0);
  c->queued -= g->len;
  sc__sock_chunk_unref(c->server, g->chunk);
  g->chunk = NULL;
  c->seg_head = (c->seg_head + 1) % c->seg_cap;
  c->seg_n--;
}

/* n bytes of the queue were written: the segments they cover go. */
static void queue_advance(sc__sock_client *c, size_t n) {
  c->taken += n;
  while (n > 0) {
    sc__sock_seg *g = seg_at(c, 0);
    if (n < g->len) {
      g->off += n;
      g->len -= n;
      c->queued -= n;
      c->mid_line = g->chunk->data[g->off - 1] != '\n';
      return;
    }
    n -= g->len;
    seg_pop(c);
  }
  c->mid_line = false;
}

/* ---- the sender thread ---- */

/* Moves w's iovecs on past n more written bytes. */
static void iov_consume(sc__sock_write *w, size_t n) {
  w->n += n;
  while (w->first < w->iovcnt && n >= w->iov[w->first].iov_len)
    n -= w->iov[w->first++].iov_len;
  if (n > 0) {
    w->iov[w->first].iov_base = (char *)w->iov[w->first].iov_base + n;
    w->iov[w->first].iov_len -= n;
  }
}

/* One sendmsg (of at most IOV_MAX iovecs) without blocking; true when w is finished (all written,
 * or the client is gone). */
static bool sender_try(sc__sock_write *w) {
  size_t left = w->iovcnt - w->first;
  struct msghdr m = {.msg_iov = w->iov + w->first, .msg_iovlen = left < IOV_MAX ? left : IOV_MAX};
  struct iovec part[SC__SOCK_WRITE_SMALL];
  if (w->piece > 0) { /* the first piece bytes of what is left */
    size_t k = 0, bytes = 0;
    for (; k < left && k < SC__SOCK_WRITE_SMALL && bytes < w->piece; k++) {
      part[k] = w->iov[w->first + k];
      if (part[k].iov_len > w->piece - bytes) part[k].iov_len = w->piece - bytes;
      bytes += part[k].iov_len;
    }
    m.msg_iov = part;
    m.msg_iovlen = k;
  }
  ssize_t k;
  do
    k = sendmsg(w->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
  while (k < 0 && errno == EINTR);
  if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
    w->ready = false;
    return false;
  }
  if (k < 0) {
    w->err = errno;
    return true;
  }
  iov_consume(w, (size_t)k);
  atomic_store_explicit(&w->progress, w->n, memory_order_relaxed);
  return w->n == w->total;
}

typedef struct sender_state {
  sc__queue active; /* the writes it holds */
  struct pollfd *fds;
  sc__sock_write **polled; /* polled[i] is fds[i + 1]'s write */
  size_t nactive, fds_cap;
} sender_state;

/* Waits until a socket it holds a write for takes more, or the loop wakes it. */
static void sender_wait(sc_socket *s, sender_state *st) {
  if (st->fds_cap < st->nactive + 1) {
    size_t cap = (st->nactive + 1) * 2;
    struct pollfd *p = realloc(st->fds, cap * sizeof(*p));
    if (p != NULL) st->fds = p;
    sc__sock_write **v = p ? realloc(st->polled, cap * sizeof(*v)) : NULL;
    if (v != NULL) st->polled = v;
    if (p == NULL || v == NULL) { /* cannot poll them all: try them all again shortly */
      poll(NULL, 0, 1);
      sc__queue *q;
      sc__queue_foreach(q, &st->active) sc__queue_data(q, sc__sock_write, node)->ready = true;
      return;
    }
    st->fds_cap = cap;
  }
  size_t k = 0;
  st->fds[k++] = (struct pollfd){.fd = s->wake_fd, .events = POLLIN};
  sc__queue *q;
  sc__queue_foreach(q, &st->active) {
    sc__sock_write *w = sc__queue_data(q, sc__sock_write, node);
    st->polled[k - 1] = w;
    st->fds[k++] = (struct pollfd){.fd = w->fd, .events = POLLOUT};
  }
  if (poll(st->fds, k, -1) <= 0) return;
  if (st->fds[0].revents & POLLIN) {
    uint64_t v;
    ssize_t r = read(s->wake_fd, &v, sizeof(v));
    (void)r;
  }
  for (size_t i = 1; i < k; i++) /* POLLERR and POLLHUP too: its next write says what */
    if (st->fds[i].revents != 0) st->polled[i - 1]->ready = true;
}

/* Tops the stock of ready chunks up when the loop says it is low: each page is touched here, so
 * the faults are the sender's, not the engine's. */
static void stock_fill(sc_socket *s) {
  uv_mutex_lock(&s->mu);
  size_t want = s->stock_low && !s->stop ? STOCK_CHUNKS - s->nstock : 0;
  uv_mutex_unlock(&s->mu);
  if (want == 0) return;
  sc__queue made;
  sc__queue_init(&made);
  size_t n = 0;
  for (; n < want; n++) {
    sc__sock_chunk *ch = sc__sock_chunk_alloc(CHUNK_BYTES);
    if (ch == NULL) break;
    for (size_t i = 0; i < ch->cap; i += 4096)
      ch->data[i] = 0;
    sc__queue_insert_tail(&made, &ch->pool);
  }
  uv_mutex_lock(&s->mu);
  sc__queue_move(&made, &s->stock);
  s->nstock += n;
  s->stock_low = false;
  uv_mutex_unlock(&s->mu);
}

/* Takes the writes it is handed, writes each whole, waiting for its socket as long as it must
 * (one slow client does not hold up the others: every socket is tried in turn and all are
 * polled together), and hands each back when it is done or called back. It reads only the
 * writes (and the bytes they name); everything else is the loop thread's. */
static void sender_main(void *arg) {
  sc_socket *s = arg;
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals are the loop's to take */
  sender_state st = {.fds = NULL, .polled = NULL};
  sc__queue_init(&st.active);
  sc__queue done;
  sc__queue_init(&done);
  for (;;) {
    uv_mutex_lock(&s->mu);
    s->sleeping = false;
    sc__queue *q, *next;
    sc__queue_foreach(q, &s->jobs) {
      st.nactive++;
    }
    sc__queue_move(&s->jobs, &st.active);
    if (s->cancels || s->stop) { /* called back: returned as they are */
      s->cancels = false;
      sc__queue_foreach_safe(q, next, &st.active) {
        sc__sock_write *w = sc__queue_data(q, sc__sock_write, node);
        if (w->cancel || s->stop) {
          sc__queue_remove(q);
          st.nactive--;
          sc__queue_insert_tail(&done, q);
        }
      }
    }
    bool stop = s->stop;
    uv_mutex_unlock(&s->mu);
    sc__queue_foreach_safe(q, next, &st.active) {
      sc__sock_write *w = sc__queue_data(q, sc__sock_write, node);
      if (w->ready && sender_try(w)) {
        sc__queue_remove(q);
        st.nactive--;
        sc__queue_insert_tail(&done, q);
      }
    }
    stock_fill(s);
    bool back = !sc__queue_empty(&done), ready = false;
    sc__queue_foreach(q, &st.active) {
      if (sc__queue_data(q, sc__sock_write, node)->ready) ready = true;
    }
    uv_mutex_lock(&s->mu);
    sc__queue_move(&done, &s->results);
    bool more = !sc__queue_empty(&s->jobs) || s->cancels || s->stop || ready || s->stock_low;
    if (!more) s->sleeping = true;
    uv_mutex_unlock(&s->mu);
    if (back) uv_async_send(&s->sent);
    if (stop) break;
    if (!more) sender_wait(s, &st);
  }
  free(st.fds);
  free(st.polled);
}

/* Wakes the sender when it is (about to be) waiting; called with mu held. */
static void sender_wake(sc_socket *s) {
  if (!s->sleeping) return;
  s->sleeping = false;
  uint64_t one = 1;
  ssize_t r = write(s->wake_fd, &one, sizeof(one));
  (void)r;
}

/* Fills c's write from the head of its queue (segments of one chunk that follow each other are
 * one) and puts it on batch, to be handed to the sender with the others of this turn. */
static void write_prepare(sc__sock_client *c, sc__queue *batch) {
  sc__sock_write *w = &c->w;
  size_t cap = w->iov_cap ? w->iov_cap : SC__SOCK_WRITE_SMALL;
  if (c->seg_n > cap &&
      cap < SC__SOCK_WRITE_MAX) { /* a filtered client's events: one segment each */
    size_t want = cap;
    while (want < c->seg_n && want < SC__SOCK_WRITE_MAX)
      want *= 2;
    struct iovec *v = realloc(w->iov_cap ? w->iov : NULL, want * sizeof(*v));
    if (v != NULL) { /* else as many as it holds: the rest with the next write */
      w->iov = v;
      w->iov_cap = cap = want;
    }
  }
  if (w->iov_cap == 0) w->iov = w->small;
  size_t k = 0, total = 0;
  for (; k < c->seg_n && k < cap; k++) {
    sc__sock_seg *g = seg_at(c, k);
    w->iov[k].iov_base = g->chunk->data + g->off;
    w->iov[k].iov_len = g->len;
    total += g->len;
  }
  w->first = 0;
  w->iovcnt = k;
  w->total = total;
  w->n = 0;
  atomic_store_explicit(&w->progress, 0, memory_order_relaxed);
  w->err = 0;
  w->cancel = false;
  w->ready = true;
  w->piece = c->replay != NULL || c->cap > c->server->o.queue_bytes ? WATCHED_PIECE : 0;
  w->fd = c->fd;
  c->writing = true;
  sc__queue_insert_tail(batch, &w->node);
}

static void write_submit(sc_socket *s, sc__queue *batch) {
  if (sc__queue_empty(batch)) return;
  uv_mutex_lock(&s->mu);
  sc__queue_move(batch, &s->jobs);
  sender_wake(s);
  uv_mutex_unlock(&s->mu);
}

/* Calls c's write back from the sender (for a drop or a close): it returns with what it wrote. */
static void write_cancel(sc__sock_client *c) {
  sc_socket *s = c->server;
  if (!c->writing) return;
  uv_mutex_lock(&s->mu);
  c->w.cancel = true;
  s->cancels = true;
  sender_wake(s);
  uv_mutex_unlock(&s->mu);
}

/* Starts a write of what c has queued, unless one is under way. */
static void client_write(sc__sock_client *c) {
  if (c->writing || c->closed || c->seg_n == 0) return;
  sc__queue batch;
  sc__queue_init(&batch);
  write_prepare(c, &batch);
  write_submit(c->server, &batch);
}

static void mark_dirty(sc__sock_client *c, size_t len);
static void on_client_closed(uv_handle_t *h);
static bool client_copy(sc__sock_client *c, const char *line, size_t len);
static void queue_cut(sc__sock_client *c);

size_t sc__sock_client_unread(const sc__sock_client *c) {
  int held = 0;
  if (c->closed || ioctl(c->fd, SIOCOUTQ, &held) != 0 || held < 0) held = 0;
  return sc__sock_client_unwritten(c) + (size_t)held;
}

size_t sc__sock_client_unwritten(const sc__sock_client *c) {
  size_t sent = c->writing ? atomic_load_explicit(&c->w.progress, memory_order_relaxed) : 0;
  return c->queued - sent;
}

/* c's write is back from the sender. */
static void write_done(sc__sock_client *c) {
  sc_socket *s = c->server;
  c->writing = false;
  if (c->closed) { /* closed while it was away: now the fd may go */
    uv_close((uv_handle_t *)&c->poll, on_client_closed);
    return;
  }
  if (c->w.err != 0) {
    client_close(c);
    return;
  }
  queue_advance(c, c->w.n);
  if (c->drop_pending) {
    c->drop_pending = false;
    queue_cut(c);
    client_copy(c, SLOW_LINE, sizeof(SLOW_LINE) - 1);
  }
  if (c->replay != NULL) sc__sock_replay_drained(c);
  if (c->queued == 0) {
    c->reply_n = 0; /* it took them all */
    if (c->cap > s->o.queue_bytes) c->cap = s->o.queue_bytes;
    if (c->state == SC__SOCK_CLOSING) {
      client_close(c);
      return;
    }
  } else if (c->queued >= FLUSH_BYTES || c->state == SC__SOCK_CLOSING ||
             c->seg_n >= SC__SOCK_WRITE_SMALL) {
    client_write(c); /* enough for a write of its own now */
  } else {
    mark_dirty(c, 0); /* with the next flush */
  }
}

static void on_sent(uv_async_t *h) {
  sc_socket *s = h->data;
  sc__queue done;
  sc__queue_init(&done);
  uv_mutex_lock(&s->mu);
  sc__queue_move(&s->results, &done);
  uv_mutex_unlock(&s->mu);
  sc__queue *q;
  while ((q = sc__queue_head(&done)) != NULL) {
    sc__queue_remove(q);
    write_done(sc__queue_data(q, sc__sock_client, w.node));
  }
}

/* Starts the sender (before the server takes its first event); SC_EIO when it cannot. */
static int sender_start(sc_socket *s) {
  sc__queue_init(&s->jobs);
  sc__queue_init(&s->results);
  sc__queue_init(&s->stock);
  s->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (s->wake_fd < 0)
    return sc_error_set(SC_EIO, "socket: cannot make an eventfd: %s", strerror(errno));
  if (uv_mutex_init(&s->mu) != 0) {
    close(s->wake_fd);
    return sc_error_set(SC_EIO, "socket: cannot make a mutex");
  }
  int rc = uv_thread_create(&s->sender, sender_main, s);
  if (rc != 0) {
    uv_mutex_destroy(&s->mu);
    close(s->wake_fd);
    return sc_error_set(SC_EIO, "socket: cannot start the sender thread: %s", uv_strerror(rc));
  }
  s->sender_running = true;
  return SC_OK;
}

/* Stops the sender (what it still holds comes back as it is) and joins it. */
static void sender_stop(sc_socket *s) {
  if (!s->sender_running) return;
  uv_mutex_lock(&s->mu);
  s->stop = true;
  s->sleeping = true; /* wake it whatever it is doing */
  sender_wake(s);
  uv_mutex_unlock(&s->mu);
  uv_thread_join(&s->sender);
  uv_mutex_destroy(&s->mu);
  close(s->wake_fd);
  s->sender_running = false;
}

static void mark_dirty(sc__sock_client *c, size_t len) {
  sc_socket *s = c->server;
  if (sc__queue_empty(&s->dirty)) s->dirty_since = uv_now(s->loop);
  s->dirty_bytes += len;
  if (sc__queue_linked(&c->dirty)) return;
  s->ndirty++;
  sc__queue_insert_tail(&s->dirty, &c->dirty);
}

/* Appends a reference to len bytes at off in ch: one more segment, or a longer last one when the
 * bytes follow it in the same chunk (as a turn's events do). */
static bool queue_push(sc__sock_client *c, sc__sock_chunk *ch, size_t off, size_t len) {
  if (c->seg_n > 0) {
    sc__sock_seg *last = seg_at(c, c->seg_n - 1);
    if (last->chunk == ch && last->off + last->len == off) {
      last->len += len;
      c->queued += len;
      return true;
    }
  }
  if (c->seg_n == c->seg_cap) {
    size_t cap = c->seg_cap ? c->seg_cap * 2 : 8;
    sc__sock_seg *v = malloc(cap * sizeof(*v));
    if (v == NULL) return false;
    for (size_t i = 0; i < c->seg_n; i++)
      v[i] = *seg_at(c, i);
    free(c->segs);
    c->segs = v;
    c->seg_cap = cap;
    c->seg_head = 0;
  }
  *seg_at(c, c->seg_n) = (sc__sock_seg){ch, off, len};
  ch->refs++;
  c->seg_n++;
  c->queued += len;
  return true;
}

/* Drops what is queued (but the rest of a line already begun, so the client reads whole lines). */
static void queue_cut(sc__sock_client *c) {
  size_t keep = 0;
  if (c->seg_n > 0 && c->mid_line) {
    sc__sock_seg *g = seg_at(c, 0);
    const char *nl = memchr(g->chunk->data + g->off, '\n', g->len);
    size_t rest = nl ? (size_t)(nl - (g->chunk->data + g->off)) + 1 : g->len;
    c->queued -= g->len - rest;
    g->len = rest;
    keep = 1;
  }
  while (c->seg_n > keep) {
    sc__sock_seg *g = seg_at(c, c->seg_n - 1);
    c->queued -= g->len;
    sc__sock_chunk_unref(c->server, g->chunk);
    g->chunk = NULL;
    c->seg_n--;
  }
}

static void queue_free(sc__sock_client *c) {
  while (c->seg_n > 0)
    seg_pop(c);
  if (c->w.iov_cap) free(c->w.iov);
  free(c->reply_end);
  c->reply_end = NULL;
  free(c->segs);
  c->segs = NULL;
  sc__sock_chunk_unref(c->server, c->own);
  c->own = NULL;
}

static bool client_copy(sc__sock_client *c, const char *line, size_t len) {
  sc_socket *s = c->server;
  if (!chunk_room(s, &c->own, len)) return false;
  size_t off = c->own->len;
  memcpy(c->own->data + off, line, len);
  c->own->len += len;
  return queue_push(c, c->own, off, len);
}

/* The queue is full: what is not written yet goes, the client is told and closed once that is
 * written. */
static void drop_slow(sc__sock_client *c) {
  c->server->dropped++;
  c->state = SC__SOCK_CLOSING;
  c->deadline = uv_now(c->server->loop) + DROP_WAIT;
  if (c->writing) { /* the head of the queue is with the sender: cut when it is back */
    c->drop_pending = true;
    write_cancel(c);
  } else {
    queue_cut(c);
    client_copy(c, SLOW_LINE, sizeof(SLOW_LINE) - 1);
  }
  sc__sock_client_close_after_flush(c);
}

void sc__sock_client_drop_slow(sc__sock_client *c) {
  drop_slow(c);
}

static bool client_accept_bytes(sc__sock_client *c, size_t len, bool replay) {
  if (c->state == SC__SOCK_CLOSING || c->closed) return false;
  if (!replay && sc__sock_client_unwritten(c) + len > c->cap) {
    drop_slow(c);
    return false;
  }
  return true;
}

static void client_queued(sc__sock_client *c, size_t len, bool replay) {
  if (replay && c->queued > c->cap) c->cap = c->queued + c->server->o.queue_bytes;
  mark_dirty(c, len);
}

/* ---- the takers: streaming clients with no filter ---- */

/* Every event goes to each of them, so none is handed events one at a time: the stream's bytes
 * since the last flush are kept as a few segments (`recent`) and each taker gets them in one go
 * before anything else is queued for it, at each flush and before a line of its own. */

static bool takes_all(const sc__sock_client *c) {
  const sc__sock_filter *f = &c->filter;
  if (c->state != SC__SOCK_STREAM || f->task || f->tenant || f->from_seq) return false;
  if (f->ntypes == 0) return true;
  for (size_t i = 0; i < f->ntypes; i++)
    if (strcmp(f->types[i], "*") == 0) return true;
  return false;
}

/* The takers get what the stream made since they last did; one that no longer streams leaves. */
static void takers_catch_up(sc_socket *s) {
  sc__queue *q, *n;
  sc__queue_foreach_safe(q, n, &s->takers) {
    sc__sock_client *c = sc__queue_data(q, sc__sock_client, feed);
    for (size_t i = 0; i < s->nrecent && c->state == SC__SOCK_STREAM; i++)
      if (!client_accept_bytes(c, s->recent[i].len, false) ||
          !queue_push(c, s->recent[i].chunk, s->recent[i].off, s->recent[i].len))
        break;
    if (c->state != SC__SOCK_STREAM || c->closed) {
      sc__queue_remove(&c->feed);
      s->ntakers--;
      c->takes_all = false;
      if (!c->closed) sc__queue_insert_tail(&s->feed, &c->feed);
      continue;
    }
    mark_dirty(c, s->recent_bytes);
  }
  for (size_t i = 0; i < s->nrecent; i++)
    sc__sock_chunk_unref(s, s->recent[i].chunk);
  s->nrecent = 0;
  s->recent_bytes = 0;
}

/* c streams everything now: it leaves the feed for the takers (after they had what is recent,
 * which it had from the ring or from its own feed). */
static void taker_join(sc__sock_client *c) {
  sc_socket *s = c->server;
  takers_catch_up(s);
  sc__queue_remove(&c->feed);
  sc__queue_insert_tail(&s->takers, &c->feed);
  s->ntakers++;
  c->takes_all = true;
}

/* The line just encoded is the stream's next bytes. When `recent` cannot grow, the takers get
 * everything before it and then this line, each now. */
static void recent_push(sc_socket *s, const sc__sock_seg *line) {
  if (s->nrecent > 0) {
    sc__sock_seg *last = &s->recent[s->nrecent - 1];
    if (last->chunk == line->chunk && last->off + last->len == line->off) {
      last->len += line->len;
      s->recent_bytes += line->len;
      return;
    }
  }
  if (s->nrecent == s->recent_cap) {
    size_t cap = s->recent_cap ? s->recent_cap * 2 : 8;
    sc__sock_seg *v = realloc(s->recent, cap * sizeof(*v));
    if (v == NULL) {
      takers_catch_up(s); /* empties recent */
      sc__queue *q;
      sc__queue_foreach(q, &s->takers)
          sc__sock_client_send_seg(sc__queue_data(q, sc__sock_client, feed), line, false);
      return;
    }
    s->recent = v;
    s->recent_cap = cap;
  }
  if (s->nrecent == 0 && sc__queue_empty(&s->dirty)) s->dirty_since = uv_now(s->loop);
  s->recent[s->nrecent++] = *line;
  line->chunk->refs++;
  s->recent_bytes += line->len;
}

bool sc__sock_client_send(sc__sock_client *c, const char *line, size_t len, bool replay) {
  if (c->takes_all) takers_catch_up(c->server); /* the stream before it comes first */
  if (!client_accept_bytes(c, len, replay)) return false;
  if (!client_copy(c, line, len)) {
    drop_slow(c);
    return false;
  }
  client_queued(c, len, replay);
  return true;
}

bool sc__sock_client_send_seg(sc__sock_client *c, const sc__sock_seg *line, bool replay) {
  if (c->takes_all) takers_catch_up(c->server);
  if (!client_accept_bytes(c, line->len, replay)) return false;
  if (!queue_push(c, line->chunk, line->off, line->len)) {
    drop_slow(c);
    return false;
  }
  client_queued(c, line->len, replay);
  return true;
}

/* The reply just queued ends where the queue ends now. */
static void reply_note(sc__sock_client *c) {
  if (c->reply_n == c->reply_cap) {
    size_t cap = c->reply_cap ? c->reply_cap * 2 : 8;
    uint64_t *v = malloc(cap * sizeof(*v));
    if (v == NULL) return; /* not counted: the queue's limit still bounds what it holds */
    for (size_t i = 0; i < c->reply_n; i++)
      v[i] = c->reply_end[(c->reply_head + i) % c->reply_cap];
    free(c->reply_end);
    c->reply_end = v;
    c->reply_cap = cap;
    c->reply_head = 0;
  }
  c->reply_end[(c->reply_head + c->reply_n++) % c->reply_cap] = c->taken + c->queued;
}

size_t sc__sock_client_replies(sc__sock_client *c) {
  uint64_t taken = c->taken + (c->queued - sc__sock_client_unwritten(c));
  while (c->reply_n > 0 && c->reply_end[c->reply_head] <= taken) {
    c->reply_head = (c->reply_head + 1) % c->reply_cap;
    c->reply_n--;
  }
  return c->reply_n;
}

void sc__sock_client_reply(sc__sock_client *c, cJSON *reply, const cJSON *id) {
  if (reply == NULL) return;
  if (id != NULL) cJSON_AddItemToObject(reply, "id", cJSON_Duplicate(id, true));
  char *text = cJSON_PrintUnformatted(reply);
  cJSON_Delete(reply);
  if (text == NULL) return;
  size_t len = strlen(text);
  text[len] = '\n'; /* the NUL becomes the newline: sent by length */
  if (sc__sock_client_send(c, text, len + 1, true)) reply_note(c);
  free(text);
}

void sc__sock_client_error_reply(sc__sock_client *c, const char *error, const char *message,
                                 const cJSON *id) {
  cJSON *r = cJSON_CreateObject();
  if (r == NULL) return;
  cJSON_AddFalseToObject(r, "ok");
  cJSON_AddStringToObject(r, "error", error);
  if (message) cJSON_AddStringToObject(r, "message", message);
  sc__sock_client_reply(c, r, id);
}

static void start_tick(sc_socket *s);

void sc__sock_client_close_after_flush(sc__sock_client *c) {
  if (c->state != SC__SOCK_CLOSING) {
    c->state = SC__SOCK_CLOSING;
    c->deadline = uv_now(c->server->loop) + CLOSE_WAIT;
  }
  start_tick(c->server);
  mark_dirty(c, 0);
}

static void on_client_closed(uv_handle_t *h) {
  sc__sock_client *c = h->data;
  sc_socket *s = c->server;
  close(c->fd);
  sc__sock_filter_free(&c->filter);
  free(c->in);
  queue_free(c);
  free(c);
  s->open_handles--;
}

static void client_close(sc__sock_client *c) {
  sc_socket *s = c->server;
  if (c->closed) return;
  c->closed = true;
  sc__sock_replay_detach(c);
  if (sc__queue_linked(&c->dirty)) {
    sc__queue_remove(&c->dirty);
    s->ndirty--;
  }
  sc__queue_remove(&c->node);
  s->nclients--;
  sc__queue_remove(&c->feed);
  if (c->takes_all) s->ntakers--;
  c->takes_all = false;
  uv_poll_stop(&c->poll);
  /* fd stays open until the handle is closed: libuv may still hold it in its watcher list, and
   * the sender may be writing to it (then its result closes the handle) */
  if (c->writing)
    write_cancel(c);
  else
    uv_close((uv_handle_t *)&c->poll, on_client_closed);
  c->state = SC__SOCK_CLOSING;
}

static void flush_all(sc_socket *s) {
  if (s->nrecent > 0) takers_catch_up(s);
  sc__queue todo;
  sc__queue_init(&todo);
  sc__queue_move(&s->dirty, &todo);
  s->dirty_bytes = 0;
  s->ndirty = 0;
  sc__queue batch;
  sc__queue_init(&batch);
  sc__queue *q;
  while ((q = sc__queue_head(&todo)) != NULL) {
    sc__queue_remove(q);
    sc__sock_client *c = sc__queue_data(q, sc__sock_client, dirty);
    if (c->seg_n == 0 && c->state == SC__SOCK_CLOSING && !c->writing && !c->closed) {
      client_close(c); /* everything was written */
      continue;
    }
    /* one being written is marked again when its write is back */
    if (!c->writing && !c->closed && c->seg_n > 0) write_prepare(c, &batch);
  }
  write_submit(s, &batch);
}

/* Before the loop waits for I/O, and in a busy loop at least every FLUSH_BYTES or FLUSH_MS:
 * one send() per client for everything of a loop turn, not one per event. */
static void on_prepare(uv_prepare_t *h) {
  sc_socket *s = h->data;
  sc__sock_replay_pump(s); /* from here, not from a callback: no replay keeps the loop running */
  if (sc__queue_empty(&s->dirty) && s->nrecent == 0) return;
  if (uv_backend_timeout(s->loop) != 0 || s->recent_bytes >= FLUSH_BYTES ||
      (s->ndirty > 0 && s->dirty_bytes >= FLUSH_BYTES * s->ndirty) ||
      uv_now(s->loop) - s->dirty_since >= FLUSH_MS)
    flush_all(s);
}

/* ---- the clock: first lines not sent in time, closing clients that do not read, replaying
 * clients that take nothing ---- */

static void on_tick(uv_timer_t *t) {
  sc_socket *s = t->data;
  uint64_t now = uv_now(s->loop);
  bool waiting = false;
  sc__queue *q, *n;
  sc__queue_foreach_safe(q, n, &s->clients) {
    sc__sock_client *c = sc__queue_data(q, sc__sock_client, node);
    if (c->state == SC__SOCK_WAITING && now >= c->deadline) {
      sc__sock_start_unfiltered(c);
    } else if (c->state == SC__SOCK_CLOSING && now >= c->deadline) {
      client_close(c);
      continue;
    }
    if (c->state == SC__SOCK_WAITING || c->state == SC__SOCK_CLOSING) waiting = true;
    if (sc__sock_replay_watch(c, now)) waiting = true;
  }
  if (!waiting) {
    uv_timer_stop(&s->tick);
    s->tick_active = false;
  }
}

static void start_tick(sc_socket *s) {
  if (s->tick_active) return;
  s->tick_active = true;
  uv_timer_start(&s->tick, on_tick, 20, 20);
}

void sc__sock_tick_start(sc_socket *s) {
  start_tick(s);
}

/* ---- reading ---- */

static void client_read(sc__sock_client *c) {
  sc_socket *s = c->server;
  size_t max = s->o.max_line_bytes;
  for (int rounds = 0; rounds < 16 && !c->closed && c->state != SC__SOCK_CLOSING; rounds++) {
    if (c->in_cap - c->in_len < 4096) {
      size_t cap = c->in_cap ? c->in_cap * 2 : 8192;
      if (cap > max + 8192) cap = max + 8192;
      if (cap <= c->in_len) {
        c->in_len = 0; /* cannot happen: a full buffer holds a line over the limit */
        continue;
      }
      char *p = realloc(c->in, cap);
      if (p == NULL) {
        client_close(c);
        return;
      }
      c->in = p;
      c->in_cap = cap;
    }
    ssize_t n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n <= 0) { /* the client went away; a half line it left is dropped unread */
      if (c->queued > 0 && n == 0) {
        sc__sock_client_close_after_flush(c);
        set_watch(c);
      } else {
        client_close(c);
      }
      return;
    }
    c->in_len += (size_t)n;
    size_t start = 0;
    char *nl;
    while (c->state != SC__SOCK_CLOSING &&
           (nl = memchr(c->in + start, '\n', c->in_len - start)) != NULL) {
      size_t len = (size_t)(nl - (c->in + start));
      if (len > max) break;
      if (len > 0 && c->in[start + len - 1] == '\r') len--;
      if (len > 0) sc__sock_handle_line(c, c->in + start, len);
      start = (size_t)(nl - c->in) + 1;
    }
    if (c->state == SC__SOCK_CLOSING) return;
    memmove(c->in, c->in + start, c->in_len - start);
    c->in_len -= start;
    const char *nl2 = memchr(c->in, '\n', c->in_len);
    if ((nl2 ? (size_t)(nl2 - c->in) : c->in_len) > max) {
      char line[96];
      int len = snprintf(line, sizeof(line),
                         "{\"error\":\"line-too-long\",\"max_line_bytes\":%zu}\n", max);
      sc__sock_client_send(c, line, (size_t)len, true);
      sc__sock_client_close_after_flush(c);
      return;
    }
  }
}

static void on_client_io(uv_poll_t *p, int status, int events) {
  sc__sock_client *c = p->data;
  if (status < 0) {
    client_close(c);
    return;
  }
  if (events & (UV_READABLE | UV_DISCONNECT)) client_read(c);
  if (!c->closed && c->state != SC__SOCK_CLOSING) set_watch(c);
}

/* ---- accepting ---- */

static void on_accept(uv_poll_t *p, int status, int events) {
  (void)events;
  sc_socket *s = p->data;
  if (status < 0) return;
  for (int i = 0; i < 64; i++) {
    int fd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return; /* EAGAIN, or out of descriptors: the next turn tries again */
    if (s->nclients >= s->o.max_clients || s->closing) {
      ssize_t n = send(fd, TOO_MANY, sizeof(TOO_MANY) - 1, MSG_NOSIGNAL);
      (void)n;
      close(fd);
      continue;
    }
    sc__sock_client *c = calloc(1, sizeof(*c));
    if (c == NULL || uv_poll_init(s->loop, &c->poll, fd) != 0) {
      free(c);
      close(fd);
      continue;
    }
    s->open_handles++;
    uv_unref((uv_handle_t *)&c->poll);
    c->poll.data = c;
    c->fd = fd;
    c->server = s;
    c->cap = s->o.queue_bytes;
    c->state = SC__SOCK_WAITING;
    c->start_pos = s->ring_pos;
    c->deadline = uv_now(s->loop) + s->o.subscribe_wait_ms;
    sc__queue_init(&c->dirty);
    sc__queue_insert_tail(&s->clients, &c->node);
    sc__queue_insert_tail(&s->feed, &c->feed);
    s->nclients++;
    set_watch(c);
    if (s->o.subscribe_wait_ms == 0)
      sc__sock_start_unfiltered(c); /* no first line is waited for */
    else
      start_tick(s);
  }
}

/* ---- the subscriber ---- */

/* The ring's slot for the next position takes a reference to the event's line. */
static void ring_push(sc_socket *s, sc__sock_task_rec *t, const sc_event *ev,
                      const sc__sock_seg *line) {
  if (s->ring_cap == 0) return;
  sc__sock_ring_entry *slot = &s->ring[s->ring_pos % s->ring_cap];
  sc__sock_chunk_unref(s, slot->line.chunk);
  sc__sock_ring_release(slot->task);
  t->ring_refs++;
  slot->line = *line;
  line->chunk->refs++;
  if (s->ring_n < s->ring_cap) s->ring_n++;
  slot->task = t;
  slot->type = ev->type;
  slot->seq = ev->seq;
  s->ring_pos++;
}

/* Encodes ev once, with its newline, at the end of the server's current chunk. */
static bool encode_line(sc_socket *s, const sc_event *ev, sc__sock_seg *line) {
  sc__sock_chunk *ch = s->cur;
  size_t room = ch ? ch->cap - ch->len : 0;
  long n = sc_event_encode(ev, ch ? ch->data + ch->len : NULL, room > 0 ? room - 1 : 0);
  if (n < 0) return false;
  if ((size_t)n + 1 > room) {
    if (!chunk_room(s, &s->cur, (size_t)n + 1)) return false;
    ch = s->cur;
    n = sc_event_encode(ev, ch->data + ch->len, ch->cap - ch->len - 1);
    if (n < 0 || (size_t)n + 1 > ch->cap - ch->len) return false;
  }
  ch->data[ch->len + (size_t)n] = '\n';
  *line = (sc__sock_seg){ch, ch->len, (size_t)n + 1};
  ch->len += (size_t)n + 1;
  return true;
}

static int on_event(const sc_event *ev, sc_ack *ack, void *udata) {
  (void)ack;
  sc_socket *s = udata;
  sc__sock_task_rec *t = sc__sock_task_record(s, ev);
  if (t == NULL) return SC_OK; /* out of memory: the stream misses it; the engine goes on */
  t->last_seq = ev->seq;
  t->status = ev->status;
  t->stage_index = ev->stage_index;
  sc__sock_task_note_status(s, t);
  if (ev->stage && (t->stage == NULL || strcmp(t->stage, ev->stage) != 0)) {
    size_t n = strlen(ev->stage) + 1;
    if (n > t->stage_cap) { /* reused: no allocation per stage once it is long enough */
      char *p = realloc(t->stage, n);
      if (p != NULL) {
        t->stage = p;
        t->stage_cap = n;
      }
    }
    if (n <= t->stage_cap) memcpy(t->stage, ev->stage, n);
  }
  if (s->ring_cap == 0 && sc__queue_empty(&s->clients)) return SC_OK;
  sc__sock_seg line;
  if (!encode_line(s, ev, &line)) return SC_OK;
  ring_push(s, t, ev, &line);
  sc__queue *q, *next;
  sc__queue_foreach_safe(q, next, &s->feed) {
    sc__sock_client *c = sc__queue_data(q, sc__sock_client, feed);
    if (c->state != SC__SOCK_STREAM) continue;
    if (takes_all(c))
      taker_join(c); /* this event and the rest come to it with the takers' */
    else if (ev->seq >= c->filter.from_seq &&
             sc__sock_filter_match(&c->filter, t->id, t->tenant, ev->type))
      sc__sock_client_send_seg(c, &line, false);
  }
  if (s->ntakers > 0) recent_push(s, &line);
  return SC_OK; /* never SC_DEFER: no step of the engine waits for a client */
}

static void on_handle_closed(uv_handle_t *h) {
  sc_socket *s = h->data;
  s->open_handles--;
}

static void on_sent_closed(uv_handle_t *h) {
  sc_socket *s = h->data;
  s->sent_closed = true;
}

static void free_server(sc_socket *s) {
  for (size_t i = 0; s->ring != NULL && i < s->ring_cap; i++) {
    sc__sock_chunk_unref(s, s->ring[i].line.chunk);
    sc__sock_ring_release(s->ring[i].task); /* frees the forgotten records the ring named */
  }
  free(s->ring);
  for (size_t i = 0; i < s->nrecent; i++)
    sc__sock_chunk_unref(s, s->recent[i].chunk);
  free(s->recent);
  sc__sock_chunk_unref(s, s->cur);
  sc__queue *q;
  while ((q = sc__queue_head(&s->pool)) != NULL) {
    sc__queue_remove(q);
    free(sc__queue_data(q, sc__sock_chunk, pool));
  }
  while (s->stock.next != NULL && (q = sc__queue_head(&s->stock)) != NULL) {
    sc__queue_remove(q);
    free(sc__queue_data(q, sc__sock_chunk, pool));
  }
  while ((q = sc__queue_head(&s->all)) != NULL) {
    sc__queue_remove(q);
    sc__sock_task_free(sc__queue_data(q, sc__sock_task_rec, all));
  }
  sc__map_free(&s->tasks);
  sc__sock_index_free(s->index);
  sc__sock_tokens_free(&s->tokens);
  free(s->log_path);
  free(s->addr);
  free(s->unix_path);
  free(s);
}

int sc_socket_listen(sc_engine *e, const char *addr, const sc_socket_options *o, sc_socket **out) {
  if (out) *out = NULL;
  if (e == NULL || addr == NULL || out == NULL)
    return sc_error_set(SC_EINVAL, "socket: NULL argument");
  sc_socket_options defaults;
  sc_socket_options_init(&defaults);
  if (o != NULL && (o->version < 1 || o->version > SC_SOCKET_OPTIONS_VERSION))
    return sc_error_set(SC_EINVAL, "socket: options version %u, expected 1 to %u", o->version,
                        SC_SOCKET_OPTIONS_VERSION);
  sc_socket *s = calloc(1, sizeof(*s));
  if (s == NULL) return sc_error_set(SC_ENOMEM, "socket: out of memory");
  s->o = defaults;
  if (o != NULL) /* only the fields its version has: a version 1 caller's struct ends earlier */
    memcpy(&s->o, o,
           o->version == 1   ? offsetof(sc_socket_options, max_finished_tasks)
           : o->version == 2 ? offsetof(sc_socket_options, replay_stall_ms)
                             : sizeof(*o));
  s->o.version = SC_SOCKET_OPTIONS_VERSION;
  if (s->o.max_finished_tasks == 0) s->o.max_finished_tasks = defaults.max_finished_tasks;
  if (s->o.replay_stall_ms == 0) s->o.replay_stall_ms = defaults.replay_stall_ms;
  if (s->o.queue_bytes == 0) s->o.queue_bytes = defaults.queue_bytes;
  if (s->o.max_line_bytes == 0) s->o.max_line_bytes = defaults.max_line_bytes;
  if (s->o.max_clients == 0) s->o.max_clients = defaults.max_clients;
  if (s->o.max_pending == 0) s->o.max_pending = defaults.max_pending;
  s->o.token_file = s->o.log_path = NULL; /* copied below, not kept borrowed */
  s->e = e;
  s->loop = sc_engine_loop(e);
  s->listen_fd = -1;
  sc__queue_init(&s->clients);
  sc__queue_init(&s->feed);
  sc__queue_init(&s->takers);
  sc__queue_init(&s->replay_wait);
  sc__queue_init(&s->dirty);
  sc__queue_init(&s->pool);
  sc__queue_init(&s->all);
  sc__queue_init(&s->finished);
  int rc = SC_OK;
  if (o && o->token_file) {
    rc = sc__sock_tokens_load(o->token_file, &s->tokens);
    s->have_tokens = rc == SC_OK;
  }
  if (rc == SC_OK && o && o->log_path && (s->log_path = strdup(o->log_path)) == NULL)
    rc = sc_error_set(SC_ENOMEM, "socket: out of memory");
  s->ring_cap = s->o.ring_events;
  if (rc == SC_OK && s->ring_cap && (s->ring = calloc(s->ring_cap, sizeof(*s->ring))) == NULL)
    rc = sc_error_set(SC_ENOMEM, "socket: out of memory");
  if (rc == SC_OK) {
    struct sockaddr_storage ss;
    socklen_t sl;
    rc = sc__sock_parse_address(addr, &ss, &sl);
    if (rc == SC_OK)
      rc = ss.ss_family == AF_UNIX ? sc__sock_listen_unix(s, (const struct sockaddr_un *)&ss)
                                   : sc__sock_listen_tcp(s, addr, &ss, sl);
  }
  if (rc == SC_OK && s->addr == NULL) rc = sc_error_set(SC_ENOMEM, "socket: out of memory");
  sc_subscriber sub;
  sc_subscriber_init(&sub);
  sub.on_event = on_event;
  sub.udata = s;
  if (rc == SC_OK) rc = sender_start(s);
  if (rc == SC_OK) rc = sc_engine_subscribe(e, &sub, &s->sub);
  if (rc != SC_OK) {
    sender_stop(s);
    if (s->listen_fd >= 0) close(s->listen_fd);
    if (s->unix_path) unlink(s->unix_path);
    free_server(s);
    return rc;
  }
  uv_poll_init(s->loop, &s->listen_poll, s->listen_fd);
  uv_prepare_init(s->loop, &s->prepare);
  uv_timer_init(s->loop, &s->tick);
  uv_async_init(s->loop, &s->sent, on_sent);
  s->listen_poll.data = s->prepare.data = s->tick.data = s->sent.data = s;
  s->open_handles = 3;
  uv_poll_start(&s->listen_poll, UV_READABLE, on_accept);
  uv_prepare_start(&s->prepare, on_prepare);
  uv_unref((uv_handle_t *)&s->listen_poll);
  uv_unref((uv_handle_t *)&s->prepare);
  uv_unref((uv_handle_t *)&s->tick);
  uv_unref((uv_handle_t *)&s->sent);
  *out = s;
  return SC_OK;
}

const char *sc_socket_address(const sc_socket *s) {
  return s ? s->addr : NULL;
}

size_t sc_socket_client_count(const sc_socket *s) {
  return s ? s->nclients : 0;
}

uint64_t sc_socket_dropped_count(const sc_socket *s) {
  return s ? s->dropped : 0;
}

void sc_socket_close(sc_socket *s) {
  if (s == NULL) return;
  s->closing = true;
  sc_subscription_cancel(s->sub);
  uv_poll_stop(&s->listen_poll);
  close(s->listen_fd);
  s->listen_fd = -1;
  if (s->unix_path) {
    struct stat st;
    /* Removed only while it is ours: a later server may have replaced it. */
    if (lstat(s->unix_path, &st) == 0 && (uint64_t)st.st_ino == s->unix_ino &&
        (uint64_t)st.st_dev == s->unix_dev)
      unlink(s->unix_path);
  }
  /* Every client gets what is queued for it, within CLOSE_WAIT, the takers what the stream made
   * since the last flush too; the sender's results keep the loop alive until they are back. */
  takers_catch_up(s);
  uv_ref((uv_handle_t *)&s->sent);
  sc__queue *q, *n;
  sc__queue_foreach(q, &s->clients) {
    sc__sock_client *c = sc__queue_data(q, sc__sock_client, node);
    c->state = SC__SOCK_CLOSING;
    c->deadline = uv_now(s->loop) + CLOSE_WAIT;
  }
  flush_all(s);
  sc__queue_foreach_safe(q, n, &s->clients) {
    sc__sock_client *c = sc__queue_data(q, sc__sock_client, node);
    if (c->queued == 0) client_close(c);
  }
  uv_update_time(s->loop);
  uint64_t until = uv_now(s->loop) + CLOSE_WAIT;
  if (!sc__queue_empty(&s->clients)) {
    uv_ref((uv_handle_t *)&s->tick);
    uv_timer_start(&s->tick, on_tick, 20, 20);
    s->tick_active = true;
  }
  while (!sc__queue_empty(&s->clients) && uv_now(s->loop) < until + 100)
    uv_run(s->loop, UV_RUN_ONCE);
  while ((q = sc__queue_head(&s->clients)) != NULL)
    client_close(sc__queue_data(q, sc__sock_client, node));
  uv_close((uv_handle_t *)&s->listen_poll, on_handle_closed);
  uv_close((uv_handle_t *)&s->prepare, on_handle_closed);
  uv_close((uv_handle_t *)&s->tick, on_handle_closed);
  while (s->replays > 0) /* a read of the log stops at its next line; its request ends */
    uv_run(s->loop, UV_RUN_ONCE);
  while (s->open_handles > 0) /* a client's handle closes once its write is back */
    uv_run(s->loop, UV_RUN_NOWAIT);
  sender_stop(s);
  uv_close((uv_handle_t *)&s->sent, on_sent_closed);
  while (!s->sent_closed)
    uv_run(s->loop, UV_RUN_NOWAIT);
  free_server(s);
}
