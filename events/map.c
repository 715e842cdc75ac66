/* The string-keyed hash map behind task lookup, plan interning, tenant locks and the log scan. */
#include <stdlib.h>
#include <string.h>

#include "map.h"

static uint64_t hash_key(const char *s, size_t len) {
  uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
  for (size_t i = 0; i < len; i++)
    h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
  return h;
}

void sc__map_init(sc__map *m) {
  memset(m, 0, sizeof(*m));
}

void sc__map_free(sc__map *m) {
  free(m->slots);
  sc__map_init(m);
}

/* The slot that holds key, or the free slot where it would go; NULL in a map without slots. */
static sc__map_slot *find(const sc__map *m, const char *key, size_t len, uint64_t h) {
  if (m->cap == 0) return NULL;
  for (size_t i = h & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
    sc__map_slot *s = &m->slots[i];
    if (s->key == NULL) return s;
    if (s->hash == h && s->len == len && memcmp(s->key, key, len) == 0) return s;
  }
}

void *sc__map_get_n(const sc__map *m, const char *key, size_t len) {
  sc__map_slot *s = find(m, key, len, hash_key(key, len));
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
    sc__map_slot *s = find(m, old.slots[i].key, old.slots[i].len, old.slots[i].hash);
    *s = old.slots[i];
  }
  free(old.slots);
  return 0;
}

int sc__map_put_n(sc__map *m, const char *key, size_t len, void *value) {
  uint64_t h = hash_key(key, len);
  sc__map_slot *s = find(m, key, len, h);
  if (s != NULL && s->key != NULL) { /* an existing key: no growth needed */
    s->key = key;
    s->value = value;
    return 0;
  }
  if ((m->n + 1) * 4 > m->cap * 3) { /* at most three quarters full */
    if (grow(m) != 0) return -1;
    s = find(m, key, len, h);
  }
  *s = (sc__map_slot){key, len, value, h};
  m->n++;
  return 0;
}

void *sc__map_del_n(sc__map *m, const char *key, size_t len) {
  sc__map_slot *s = find(m, key, len, hash_key(key, len));
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
  m->slots[i] = (sc__map_slot){NULL, 0, NULL, 0};
  m->n--;
  return value;
}
