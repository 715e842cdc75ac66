/* The hash chain of the JSON-lines log and the walk over a log's lines (not installed).
 *
 * A line is the event's JSON with one more member at the end, `"chain":"<64 hex>"`. The chain
 * value of line i is the lowercase hex SHA-256 of the chain value of line i-1 (64 ASCII hex
 * characters; 64 '0' before the first line) followed by the line's JSON without that member. */
#ifndef STAGECOACH_JSONL_CHAIN_H
#define STAGECOACH_JSONL_CHAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "stagecoach/jsonl.h"
#include "../../events/internal.h"

#define CHAIN_HEX        64
#define CHAIN_PREFIX     ",\"chain\":\""
#define CHAIN_PREFIX_LEN (sizeof(CHAIN_PREFIX) - 1)
/* `,"chain":"` + 64 hex + `"}` */
#define CHAIN_SUFFIX_LEN (CHAIN_PREFIX_LEN + CHAIN_HEX + 2)

typedef struct sc__chain {
  sc__sha *sha;         /* the digest, fetched once (events/sha.c) */
  char prev[CHAIN_HEX]; /* the last chain value */
} sc__chain;

int sc__chain_init(sc__chain *c);
void sc__chain_free(sc__chain *c);
/* The next chain value over an event's JSON (event[len-1] must be its closing '}'); also
 * advances prev. out may be NULL. */
int sc__chain_next(sc__chain *c, const char *event, size_t len, char out[CHAIN_HEX]);

/* Splits a log line (without its newline): *event_len is the length of the JSON before the chain
 * member (the closing '}' is then implied), *hex the stored value. False when the line does not
 * end in a well-formed chain member. */
bool sc__chain_split(const char *line, size_t len, size_t *event_len, const char **hex);
/* Checks a line against the chain and advances it; false on a mismatch. */
bool sc__chain_check(sc__chain *c, const char *line, size_t len);

/* A log file read into memory: the walk over its lines. */
typedef struct sc__log {
  char *data; /* the file's bytes (mmap'd, read into memory, or NULL when empty) */
  size_t size;
  size_t mapped;
  bool heap; /* data was read into memory (free), not mapped (munmap) */
} sc__log;

/* Reads a log: SC_OK, SC_ENOTFOUND (no such file), SC_EIO with errno (cannot be read, a
 * directory), or SC_EPARSE for a device, FIFO or socket (no log). sc__log_map, for readers that
 * take no lock, reads the bytes into memory (the writer may cut the file meanwhile, which a
 * mapping would not survive); the _fd form maps a file whose writer's lock the caller holds, so
 * that only the caller can cut it. */
int sc__log_map(const char *path, sc__log *l);
/* Whether the len bytes of tail, which end a file without a newline, can be what a writer of ours
 * left when it stopped in the middle of a write: the beginning of a line (all or part of the
 * opening every line has, {"specversion":"1.0",), and for a first line (first_line: no complete
 * line before it) the beginning of a task.created. */
bool sc__log_tail_is_ours(const char *tail, size_t len, bool first_line);
int sc__log_map_fd(int fd, sc__log *l);
/* Reads the file open as fd into memory (as sc__log_map does), for a reader that holds the lock
 * but not every process that could cut the file: SC_EPARSE also for a file whose size says 0 and
 * that yields bytes all the same (/proc). */
int sc__log_read_fd(int fd, sc__log *l);
void sc__log_unmap(sc__log *l);

/* The walk of sc_jsonl_verify: calls line_fn(line, len, offset, lineno, udata) for every line
 * whose chain verifies, in order; stops at the first that does not (or when line_fn returns
 * non-zero). Fills r and leaves the chain at the last good line. Returns SC_OK, SC_ECORRUPT (with
 * a message naming the line and byte offset), SC_EPARSE for what is not a log at all (a first line
 * without a chain member, or bytes without one complete line), or line_fn's non-zero return. */
typedef int (*sc__line_fn)(const char *line, size_t len, uint64_t offset, uint64_t lineno,
                           void *udata);
int sc__log_walk(const char *path, const sc__log *l, sc__chain *c, sc__line_fn fn, void *udata,
                 sc_jsonl_report *r);

/* The pid holding an flock on the file open as fd, read from /proc/locks; 0 when unknown. */
long sc__jsonl_lock_holder(int fd);
/* Whether fd is still the file named path (a compaction may have renamed another over it). */
bool sc__jsonl_is_named(int fd, const char *path);
/* Checks the first line of a log when it is a stagecoach.log.compacted line: true when it is one
 * (*bad set when its link is malformed), with the chain value and line count it names. */
bool sc__jsonl_compacted_line(const char *line, size_t len, char prev[CHAIN_HEX],
                              uint64_t *prev_lines, bool *bad);

/* Merges the members of output into context as the engine does (scan.c); false without memory. */
bool sc__jsonl_merge_into(cJSON *context, const cJSON *output);

/* The scan of sc_jsonl_scan over a mapped log (the writer passes its locked one). */
int sc__jsonl_scan_log(const char *path, const sc__log *l, bool stop_at_good, sc_unfinished **out,
                       size_t *n, sc_jsonl_report *r);

#endif
