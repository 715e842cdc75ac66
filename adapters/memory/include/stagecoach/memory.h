/* The in-memory store: the sc_store interface over events kept in memory, for tests and for
 * embedders that persist nothing. It acknowledges every event at once (nothing is durable) and
 * answers every query the way the durable stores do. */
#ifndef STAGECOACH_MEMORY_H
#define STAGECOACH_MEMORY_H

#include <stagecoach/store.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A new, empty store. On success *out is closed (and freed) with sc_store_close(); on failure
 * *out is NULL. */
SC_EXTERN int sc_memory_store_new(sc_store **out);

/* Adds one event, json as the engine encoded it (len bytes, no NUL needed), as if an attached
 * engine had emitted it: a store can be filled from a log (sc_jsonl_read_events) and then
 * queried like any other. SC_EPARSE for a line that is not an event; s must be a memory store. */
SC_EXTERN int sc_memory_store_add(sc_store *s, const char *json, size_t len);

#ifdef __cplusplus
}
#endif
#endif
