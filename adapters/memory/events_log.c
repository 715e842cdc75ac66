/* The part the memory and SQLite stores share: their events laid out as a log in memory (each line
 * chained as the log writer chains it) and read by the log's own scan, so that what a store says
 * is unfinished is what a log of the same events says; and the helpers of the checkpoint fold. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../jsonl/chain.h"
#include "store_int.h"

int sc__eventlog_init(sc__eventlog *l) {
  memset(l, 0, sizeof(*l));
  sc__chain *c = malloc(sizeof(*c));
  if (c == NULL) return sc_error_set(SC_ENOMEM, "store: out of memory");
  if (sc__chain_init(c) != SC_OK) {
    free(c);
    return sc_error_set(SC_ENOMEM, "store: SHA-256 is unavailable");
  }
  l->chain = c;
  return SC_OK;
}

int sc__eventlog_add(sc__eventlog *l, const char *json, size_t len) {
  if (len < 2 || json[len - 1] != '}')
    return sc_error_set(SC_ECORRUPT, "store: a stored event is not a JSON object");
  size_t need = len - 1 + CHAIN_SUFFIX_LEN + 1;
  if (l->len + need > l->cap) {
    size_t cap = l->cap ? l->cap : 64 * 1024;
    while (cap < l->len + need)
      cap *= 2;
    char *p = realloc(l->data, cap);
    if (p == NULL) return sc_error_set(SC_ENOMEM, "store: out of memory");
    l->data = p;
    l->cap = cap;
  }
  char hex[CHAIN_HEX];
  if (sc__chain_next(l->chain, json, len, hex) != SC_OK)
    return sc_error_set(SC_EIO, "store: SHA-256 failed");
  char *p = l->data + l->len;
  memcpy(p, json, len - 1);
  p += len - 1;
  memcpy(p, CHAIN_PREFIX, CHAIN_PREFIX_LEN);
  p += CHAIN_PREFIX_LEN;
  memcpy(p, hex, CHAIN_HEX);
  p += CHAIN_HEX;
  memcpy(p, "\"}\n", 3);
  l->len += need;
  return SC_OK;
}

int sc__eventlog_unfinished(sc__eventlog *l, const char *name, sc_unfinished **out, size_t *n) {
  sc__log log = {.data = l->data, .size = l->len, .mapped = l->len, .heap = true};
  return sc__jsonl_scan_log(name, &log, false, out, n, NULL);
}

void sc__eventlog_free(sc__eventlog *l) {
  if (l->chain) {
    sc__chain_free(l->chain);
    free(l->chain);
  }
  free(l->data);
  memset(l, 0, sizeof(*l));
}

bool sc__context_merge(cJSON *context, const cJSON *output) {
  for (const cJSON *m = cJSON_IsObject(output) ? output->child : NULL; m != NULL; m = m->next) {
    cJSON *item = cJSON_Duplicate(m, true);
    if (item == NULL) return false;
    if (cJSON_GetObjectItemCaseSensitive(context, m->string) != NULL) {
      cJSON_ReplaceItemInObjectCaseSensitive(context, m->string, item);
    } else if (!cJSON_AddItemToObject(context, m->string, item)) {
      cJSON_Delete(item);
      return false;
    }
  }
  return true;
}

int sc__context_verify(const cJSON *context, const char *digest, const char *store,
                       const char *checkpoint_id) {
  char got[72];
  if (sc_json_digest(context, got) != SC_OK)
    return sc_error_set(SC_ENOMEM, "store %s: cannot compute a digest", store);
  if (digest == NULL || strcmp(got, digest) != 0)
    return sc_error_set(SC_ECORRUPT,
                        "store %s: checkpoint %s: the context folded from its snapshot and the "
                        "outputs after it does not match its digest (recorded %s, folded %s): a "
                        "changed row",
                        store, checkpoint_id, digest ? digest : "none", got);
  return SC_OK;
}

int sc__output_verify(const cJSON *context, const cJSON *output, const char *store,
                      const char *checkpoint_id) {
  if (output != NULL && !cJSON_IsNull(output) && !cJSON_IsObject(output))
    return sc_error_set(SC_ECORRUPT, "store %s: checkpoint %s: its output is not an object", store,
                        checkpoint_id);
  for (const cJSON *m = cJSON_IsObject(output) ? output->child : NULL; m; m = m->next)
    if (!cJSON_Compare(cJSON_GetObjectItemCaseSensitive(context, m->string), m, true))
      return sc_error_set(SC_ECORRUPT,
                          "store %s: checkpoint %s: its output's \"%s\" is not what its context "
                          "holds: a changed row",
                          store, checkpoint_id, m->string);
  return SC_OK;
}

int sc__checkpoint_id_split(const char *id, char **task_id, uint64_t *seq) {
  *task_id = NULL;
  const char *slash = id ? strrchr(id, '/') : NULL;
  if (slash == NULL || slash == id || slash[1] < '1' || slash[1] > '9')
    return sc_error_set(SC_EINVAL, "checkpoint id '%s' is not <task_id>/<seq>", id ? id : "");
  errno = 0;
  char *end;
  unsigned long long v = strtoull(slash + 1, &end, 10);
  if (errno != 0 || *end != '\0')
    return sc_error_set(SC_EINVAL, "checkpoint id '%s' is not <task_id>/<seq>", id);
  char *t = strndup(id, (size_t)(slash - id));
  if (t == NULL) return sc_error_set(SC_ENOMEM, "store: out of memory");
  *task_id = t;
  *seq = (uint64_t)v;
  return SC_OK;
}
