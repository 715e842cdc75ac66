/* The string-keyed hash map behind task lookup, plan interning and tenant locks. */
#include <stdlib.h>
#include <string.h>

#include "map.h"

static uint64_t hash_key(const char *s) {
  uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
  return h ? h : 1;
}

void sc__map_init(sc__map *m) {
  memset(m, 0, sizeof(*m));
}

void sc__map_free(sc__map *m) {
  free(m->slots);
  sc__map_init(m);
}

static sc__map_slot *find(const sc__map *m, const char *key, uint64_t h) {
  if (m->cap == 0) return NULL;
  for (size_t i = h & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
    sc__map_slot *s = &m->slots[i];
    if (s->key == NULL) return s;
    if (s->hash == h && strcmp(s->key, key) == 0) return s;
  }
}

void *sc__map_get(const sc__map *m, const char *key) {
  sc__map_slot *s = find(m, key, hash_key(key));
  return s && s->key ? s->value : NULL;
}

static int grow(sc__map *m) {
  size_t cap = m->cap ? m->cap * 2 : 16;
  sc__map_slot *slots = calloc(cap, sizeof(*slots));
  if (slots == NULL) return -1;
  sc__map old = *m;
  m->slots = slots;
  m->cap = cap;
  for (size_t i = 0; i < old.cap; i++) {
    if (old.slots[i].key == NULL) continue;
    sc__map_slot *s = find(m, old.slots[i].key, old.slots[i].hash);
    *s = old.slots[i];
  }
  free(old.slots);
  return 0;
}

int sc__map_put(sc__map *m, const char *key, void *value) {
  if ((m->n + 1) * 4 > m->cap * 3 && grow(m) != 0) return -1;
  uint64_t h = hash_key(key);
  sc__map_slot *s = find(m, key, h);
  if (s->key == NULL) m->n++;
  s->key = key;
  s->value = value;
  s->hash = h;
  return 0;
}

void *sc__map_del(sc__map *m, const char *key) {
  sc__map_slot *s = find(m, key, hash_key(key));
  if (s == NULL || s->key == NULL) return NULL;
  void *value = s->value;
  size_t mask = m->cap - 1, i = (size_t)(s - m->slots);
  /* Backward-shift: move later members of the probe run into the hole. */
  for (size_t j = (i + 1) & mask;; j = (j + 1) & mask) {
    sc__map_slot *t = &m->slots[j];
    if (t->key == NULL) break;
    size_t home = t->hash & mask;
    if (((j - home) & mask) >= ((j - i) & mask)) {
      m->slots[i] = *t;
      i = j;
    }
  }
  m->slots[i].key = NULL;
  m->slots[i].value = NULL;
  m->n--;
  return value;
}
