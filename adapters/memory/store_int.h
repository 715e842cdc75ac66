/* What the stores other than the log share (not installed): their events presented as a log, so
 * that the unfinished tasks and a restore point are read by the log's own scan and every store
 * agrees with the log by construction, and the fold of a checkpoint's context. */
#ifndef STAGECOACH_STORE_INT_H
#define STAGECOACH_STORE_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "stagecoach/store.h"

/* Event lines collected in store order, each given its chain member as the log writer does. */
typedef struct sc__eventlog {
  char *data;
  size_t len, cap;
  char prev[64]; /* the last chain value */
  void *chain;   /* the hash state (sc__chain) */
} sc__eventlog;

int sc__eventlog_init(sc__eventlog *l);
/* Appends one event (json as the engine encoded it, ending in '}'). */
int sc__eventlog_add(sc__eventlog *l, const char *json, size_t len);
/* The log scan over what was added: the same sc_unfinished list as sc_jsonl_scan() gives for a log
 * of these events. name is used in messages. */
int sc__eventlog_unfinished(sc__eventlog *l, const char *name, sc_unfinished **out, size_t *n);
void sc__eventlog_free(sc__eventlog *l);

/* Merges the members of output into context the way the engine does (replace in place, or
 * append). false when out of memory. */
bool sc__context_merge(cJSON *context, const cJSON *output);

/* Checks context against digest; SC_ECORRUPT (naming what) on a mismatch. */
int sc__context_verify(const cJSON *context, const char *digest, const char *store,
                       const char *checkpoint_id);

/* Checks that a checkpoint's output agrees with its (verified) context: the context after a stage
 * holds each member of the stage's output as it is (the merge is shallow). SC_ECORRUPT otherwise:
 * an output changed where the context came from a snapshot, which its digest does not cover. */
int sc__output_verify(const cJSON *context, const cJSON *output, const char *store,
                      const char *checkpoint_id);

/* Splits "<task_id>/<seq>" into the task id (malloc'd, caller frees) and the seq; SC_EINVAL with a
 * message for anything else. */
int sc__checkpoint_id_split(const char *id, char **task_id, uint64_t *seq);

#endif
