/* The one hash map of the library (not installed): string keys to pointers, open addressing with
 * linear probing and backward-shift deletion. The engine's tasks, plans and tenant locks and the
 * log scan's tasks use it. Keys are borrowed: each must stay valid while its entry is in the map.
 * A key is the bytes key[0 .. len): the _n functions take keys that may hold a NUL byte (an id
 * read from a damaged line); the others take NUL-terminated strings. */
#ifndef STAGECOACH_EVENTS_MAP_H
#define STAGECOACH_EVENTS_MAP_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct sc__map_slot {
  const char *key; /* NULL: a free slot */
  size_t len;
  void *value;
  uint64_t hash;
} sc__map_slot;

typedef struct sc__map {
  sc__map_slot *slots;
  size_t cap, n; /* cap is 0 or a power of two; n entries */
} sc__map;

/* A zeroed sc__map is an empty one too; init makes it so. free releases the slots (not the keys
 * or values) and leaves an empty map. */
void sc__map_init(sc__map *m);
void sc__map_free(sc__map *m);
void *sc__map_get_n(const sc__map *m, const char *key, size_t len); /* NULL when absent */
/* 0, or -1 when out of memory (the map is unchanged). Replaces the value of an existing key. */
int sc__map_put_n(sc__map *m, const char *key, size_t len, void *value);
void *sc__map_del_n(sc__map *m, const char *key, size_t len); /* the removed value, or NULL */

static inline void *sc__map_get(const sc__map *m, const char *key) {
  return sc__map_get_n(m, key, strlen(key));
}
static inline int sc__map_put(sc__map *m, const char *key, void *value) {
  return sc__map_put_n(m, key, strlen(key), value);
}
static inline void *sc__map_del(sc__map *m, const char *key) {
  return sc__map_del_n(m, key, strlen(key));
}

/* Iteration over the entries (slots with key != NULL), in no particular order. The body must not
 * put or delete. */
#define SC__MAP_FOREACH(m, s)                                                                      \
  for (sc__map_slot *s = (m)->slots; s != NULL && s < (m)->slots + (m)->cap; s++)                  \
    if (s->key != NULL)

#endif
