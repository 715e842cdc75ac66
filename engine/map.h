/* A string-keyed hash map of pointers (open addressing, linear probing, backward-shift delete).
 * Keys are borrowed: each must stay valid while its entry is in the map. */
#ifndef STAGECOACH_MAP_H
#define STAGECOACH_MAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct sc__map_slot {
  const char *key;
  void *value;
  uint64_t hash;
} sc__map_slot;

typedef struct sc__map {
  sc__map_slot *slots;
  size_t cap, n; /* cap is 0 or a power of two */
} sc__map;

void sc__map_init(sc__map *m);
void sc__map_free(sc__map *m);
void *sc__map_get(const sc__map *m, const char *key);
/* 0, or -1 when out of memory. Replaces the value of an existing key. */
int sc__map_put(sc__map *m, const char *key, void *value);
/* The removed value, or NULL. */
void *sc__map_del(sc__map *m, const char *key);
/* Iteration: slots with key != NULL. */
#define SC__MAP_FOREACH(m, s)                                                                      \
  for (sc__map_slot *s = (m)->slots; s != NULL && s < (m)->slots + (m)->cap; s++)                  \
    if (s->key != NULL)

#endif
