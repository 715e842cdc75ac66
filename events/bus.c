/* The event bus: subscribers in subscription order, masks, and the acknowledgements behind the
 * durability barrier. Unsubscribing during a dispatch only marks the subscription; it is unlinked
 * and freed once the outermost dispatch returns, so the loop over subscribers stays valid. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct sc_subscription {
  sc__bus *bus;
  sc_subscriber sub;
  bool dead;
};

struct sc_ack {
  /* First, so that a list pointer is a pointer to the ack (leak checkers see it as one). */
  sc__queue node; /* on the outstanding list, or on the free list */
  sc__bus *bus;
  void *owner; /* NULL once orphaned */
  sc_event_type type;
  uint64_t seq;
  uint32_t pending; /* deferred acks not yet done, plus one while the dispatch runs */
  int status;       /* the first failure, or SC_OK */
  char *message;    /* of the first failure; malloc'd */
};

struct sc__bus {
  sc_subscription **subs;
  size_t nsubs, cap;
  unsigned depth; /* nested dispatches in progress */
  bool has_dead;
  uint64_t wanted; /* the union of the live subscribers' masks */
  sc__bus_settle_fn settle;
  void *udata;
  sc__queue outstanding; /* acks with deferred parts not yet done */
  sc__queue free_acks;
};

#define ALL_TYPES ((1ull << SC_EV__COUNT) - 1)

int sc__bus_new(sc__bus_settle_fn settle, void *udata, sc__bus **out) {
  sc__bus *b = calloc(1, sizeof(*b));
  if (b == NULL) return sc__error(SC_ENOMEM, "bus: out of memory");
  b->settle = settle;
  b->udata = udata;
  sc__queue_init(&b->outstanding);
  sc__queue_init(&b->free_acks);
  *out = b;
  return SC_OK;
}

static void ack_free(sc_ack *a) {
  free(a->message);
  free(a);
}

void sc__bus_free(sc__bus *b) {
  if (b == NULL) return;
  for (size_t i = 0; i < b->nsubs; i++)
    free(b->subs[i]);
  free(b->subs);
  /* Acks a subscriber still holds die with the bus: adapters must be closed first. */
  sc__queue *q, *next;
  sc__queue_move(&b->free_acks, &b->outstanding);
  sc__queue_foreach_safe(q, next, &b->outstanding) {
    ack_free(sc__queue_data(q, sc_ack, node));
  }
  free(b);
}

static void recompute_wanted(sc__bus *b) {
  uint64_t w = 0;
  for (size_t i = 0; i < b->nsubs; i++)
    if (!b->subs[i]->dead) w |= b->subs[i]->sub.mask ? b->subs[i]->sub.mask : ALL_TYPES;
  b->wanted = w;
}

bool sc__bus_wants(const sc__bus *b, sc_event_type type) {
  return (b->wanted >> type) & 1;
}

int sc__bus_subscribe(sc__bus *b, const sc_subscriber *sub, sc_subscription **out) {
  if (out) *out = NULL;
  if (sub == NULL || sub->on_event == NULL)
    return sc__error(SC_EINVAL, "subscribe: a subscriber needs an on_event callback");
  if (sub->version < 1 || sub->version > SC_SUBSCRIBER_VERSION)
    return sc__error(SC_EINVAL, "subscribe: unsupported sc_subscriber version %u", sub->version);
  if (!sc__grow(&b->subs, &b->cap, b->nsubs + 1, sizeof(*b->subs), 4))
    return sc__error(SC_ENOMEM, "subscribe: out of memory");
  sc_subscription *s = calloc(1, sizeof(*s));
  if (s == NULL) return sc__error(SC_ENOMEM, "subscribe: out of memory");
  s->bus = b;
  s->sub = *sub;
  b->subs[b->nsubs++] = s;
  recompute_wanted(b);
  if (out) *out = s;
  return SC_OK;
}

static void sweep_dead(sc__bus *b) {
  size_t j = 0;
  for (size_t i = 0; i < b->nsubs; i++) {
    if (b->subs[i]->dead)
      free(b->subs[i]);
    else
      b->subs[j++] = b->subs[i];
  }
  b->nsubs = j;
  b->has_dead = false;
}

void sc_subscription_cancel(sc_subscription *s) {
  if (s == NULL || s->dead) return;
  sc__bus *b = s->bus;
  s->dead = true;
  b->has_dead = true;
  recompute_wanted(b);
  if (b->depth == 0) sweep_dead(b);
}

static sc_ack *ack_get(sc__bus *b) {
  sc__queue *q = sc__queue_head(&b->free_acks);
  sc_ack *a;
  if (q != NULL) {
    sc__queue_remove(q);
    a = sc__queue_data(q, sc_ack, node);
  } else if ((a = malloc(sizeof(*a))) == NULL) {
    return NULL;
  }
  memset(a, 0, sizeof(*a));
  sc__queue_init(&a->node);
  a->bus = b;
  return a;
}

static void ack_put(sc__bus *b, sc_ack *a) {
  free(a->message);
  a->message = NULL;
  sc__queue_insert_head(&b->free_acks, &a->node);
}

static void ack_record(sc_ack *a, int status, const char *message) {
  if (status >= 0 || a->status < 0) return; /* the first failure is the one reported */
  a->status = status;
  a->message = strdup(message && *message ? message : sc_strerror(status));
}

int sc__bus_dispatch(sc__bus *b, const sc_event *ev, void *owner) {
  if (!sc__bus_wants(b, ev->type)) return SC_OK;
  sc_ack *a = ack_get(b);
  if (a == NULL) return sc__error(SC_ENOMEM, "bus: out of memory for an acknowledgement");
  a->owner = owner;
  a->type = ev->type;
  a->seq = ev->seq;
  a->pending = 1;
  b->depth++;
  /* Subscribers added during the dispatch see the next event, not this one. */
  size_t n = b->nsubs;
  for (size_t i = 0; i < n; i++) {
    sc_subscription *s = b->subs[i];
    if (s->dead || !((s->sub.mask ? s->sub.mask : ALL_TYPES) >> ev->type & 1)) continue;
    a->pending++; /* counted before the call: the subscriber may ack inside it */
    int rc = s->sub.on_event(ev, a, s->sub.udata);
    if (rc == SC_DEFER) continue;
    a->pending--;
    if (rc < 0) ack_record(a, rc, sc_error_message());
  }
  if (--b->depth == 0 && b->has_dead) sweep_dead(b);
  if (--a->pending > 0) {
    sc__queue_insert_tail(&b->outstanding, &a->node);
    return SC_DEFER;
  }
  int status = a->status;
  if (status < 0) sc__error(status, "%s", a->message ? a->message : sc_strerror(status));
  ack_put(b, a);
  return status;
}

void sc__bus_orphan_acks(sc__bus *b, void *owner) {
  sc__queue *q;
  sc__queue_foreach(q, &b->outstanding) {
    sc_ack *a = sc__queue_data(q, sc_ack, node);
    if (a->owner == owner) a->owner = NULL;
  }
}

void sc_ack_fail(sc_ack *a, int status, const char *message) {
  if (a == NULL || a->pending == 0) return;
  ack_record(a, status, message);
  if (--a->pending > 0) return;
  sc__bus *b = a->bus;
  sc__queue_remove(&a->node);
  if (a->owner != NULL) b->settle(a->owner, a->type, a->seq, a->status, a->message, b->udata);
  ack_put(b, a);
}

void sc_ack_done(sc_ack *a, int status) {
  sc_ack_fail(a, status, NULL);
}
