/* An intrusive doubly linked list (not installed): the one list every module of the library uses.
 * A node is a field of the element; the head is a node of its own that is never an element. An
 * empty list, and a node that is on no list, point at themselves, so removing a node twice, or one
 * never inserted, is harmless. Nothing here allocates. */
#ifndef STAGECOACH_EVENTS_QUEUE_H
#define STAGECOACH_EVENTS_QUEUE_H

#include <stdbool.h>
#include <stddef.h>

typedef struct sc__queue {
  struct sc__queue *next, *prev;
} sc__queue;

/* The element that holds node ptr in its field `field`. */
#define sc__queue_data(ptr, type, field) ((type *)((char *)(ptr)-offsetof(type, field)))

/* Walks every node of head h; the body must not remove q (use sc__queue_foreach_safe for that). */
#define sc__queue_foreach(q, h) for ((q) = (h)->next; (q) != (h); (q) = (q)->next)
/* Walks every node of h with n holding the next one, so the body may remove q. */
#define sc__queue_foreach_safe(q, n, h)                                                            \
  for ((q) = (h)->next, (n) = (q)->next; (q) != (h); (q) = (n), (n) = (q)->next)

static inline void sc__queue_init(sc__queue *q) {
  q->next = q;
  q->prev = q;
}

static inline bool sc__queue_empty(const sc__queue *h) {
  return h->next == h;
}

/* Whether node q is on some list (a node set up with sc__queue_init and not inserted is not). */
static inline bool sc__queue_linked(const sc__queue *q) {
  return q->next != q;
}

static inline sc__queue *sc__queue_head(const sc__queue *h) {
  return h->next == h ? NULL : h->next;
}

static inline sc__queue *sc__queue_tail(const sc__queue *h) {
  return h->prev == h ? NULL : h->prev;
}

static inline void sc__queue_insert_tail(sc__queue *h, sc__queue *q) {
  q->next = h;
  q->prev = h->prev;
  h->prev->next = q;
  h->prev = q;
}

static inline void sc__queue_insert_head(sc__queue *h, sc__queue *q) {
  q->prev = h;
  q->next = h->next;
  h->next->prev = q;
  h->next = q;
}

/* Takes q off its list and leaves it pointing at itself. */
static inline void sc__queue_remove(sc__queue *q) {
  q->prev->next = q->next;
  q->next->prev = q->prev;
  q->next = q;
  q->prev = q;
}

/* Moves every node of from to the tail of to, leaving from empty. */
static inline void sc__queue_move(sc__queue *from, sc__queue *to) {
  if (sc__queue_empty(from)) return;
  from->next->prev = to->prev;
  to->prev->next = from->next;
  from->prev->next = to;
  to->prev = from->prev;
  sc__queue_init(from);
}

#endif
