/* Internals of the socket adapter (not installed): the server, its clients, the task table, the
 * replay ring, the token file and the line parser that the fuzz target drives. */
#ifndef STAGECOACH_SOCKET_INT_H
#define STAGECOACH_SOCKET_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <stagecoach/socket.h>
#include <uv.h>

/* ---- tokens.c ---- */

enum { SK_ROLE_VIEWER = 1, SK_ROLE_OPERATOR = 2, SK_ROLE_APPROVER = 4 };

typedef struct sk_token {
  char *name;
  unsigned char digest[32]; /* SHA-256 of the token: compared in constant time */
  unsigned roles;
} sk_token;

typedef struct sk_tokens {
  sk_token *v;
  size_t n;
} sk_tokens;

/* Parses the text of a token file (len bytes). SC_EAUTH with a message naming the line for a
 * malformed one. */
int sk_tokens_parse(const char *text, size_t len, const char *path, sk_tokens *out);
/* Reads a token file: refused (SC_EAUTH) when others than its owner may read or write it. */
int sk_tokens_load(const char *path, sk_tokens *out);
/* The entry whose token is token, or NULL; every entry is compared, in constant time each. */
const sk_token *sk_tokens_find(const sk_tokens *t, const char *token);
void sk_tokens_free(sk_tokens *t);

/* ---- line.c: what a client line asks ---- */

typedef enum sk_kind { SK_SUBSCRIBE, SK_OP } sk_kind;

typedef enum sk_op {
  SK_OP_APPROVE,
  SK_OP_REJECT,
  SK_OP_PAUSE,
  SK_OP_RESUME,
  SK_OP_CANCEL,
  SK_OP_RETRY,
  SK_OP_ROLLBACK,
  SK_OP_PENDING,
  SK_OP_STATUS
} sk_op;

typedef struct sk_request {
  cJSON *root; /* owns every string below */
  sk_kind kind;
  sk_op op;
  const char *token, *task, *stage, *comment, *reason, *from_stage, *tenant;
  const cJSON *id;    /* echoed in the reply; may be NULL */
  const cJSON *types; /* subscribe: an array of strings, or NULL */
  bool has_from_seq, reset_context;
  uint64_t from_seq;
  sc_rollback_strategy strategy;
} sk_request;

/* Parses one line (len bytes, no newline). SC_OK with *r filled (free with sk_request_free);
 * otherwise SC_EPARSE (not JSON, not an object) or SC_EINVAL (an unknown op, a member of the
 * wrong type, a missing one) with why written into why[cap]. */
int sk_request_parse(const char *line, size_t len, sk_request *r, char *why, size_t cap);
void sk_request_free(sk_request *r);
/* The role an op needs. */
unsigned sk_op_role(sk_op op);
const char *sk_op_name(sk_op op);

/* ---- server.c ---- */

typedef struct sk_task_rec {
  char *id, *tenant, *stage;
  uint64_t last_seq;
  sc_task_status status;
  int32_t stage_index;
  struct sk_task_rec *next; /* hash chain */
  struct sk_task_rec *all;  /* every record, newest first */
} sk_task_rec;

typedef struct sk_ring_entry {
  sk_task_rec *task;
  sc_event_type type;
  uint64_t seq;
  char *line; /* the event's JSON and a newline */
  size_t len;
} sk_ring_entry;

typedef enum sk_state { SK_WAITING, SK_STREAM, SK_CONTROL, SK_CLOSING } sk_state;

typedef struct sk_filter {
  char *tenant, *task;
  char **types; /* patterns: "stage.completed", "stage.*", "*" */
  size_t ntypes;
} sk_filter;

typedef struct sk_client {
  uv_poll_t poll;
  int fd;
  sc_socket *server;
  struct sk_client *prev, *next;
  struct sk_client *dirty_next; /* in the server's list of clients with output to write */
  bool dirty;
  bool closed; /* uv_close called; freed in its callback */
  sk_state state;
  unsigned roles; /* of the token of its subscribe line (a stream with a token file) */
  sk_filter filter;
  uint64_t start_pos; /* the ring position when it connected */
  uint64_t deadline;  /* uv_now() by which it must have sent its first line / be closed */
  int events;         /* the poll events watched */
  char *in;
  size_t in_len, in_cap;
  char *out;
  size_t out_off, out_len, out_cap;
  size_t cap;     /* the queue's limit now: queue_bytes, more while a replay drains */
  size_t replies; /* reply lines queued since the output was last empty */
} sk_client;

struct sc_socket {
  sc_engine *e;
  uv_loop_t *loop;
  sc_socket_options o;
  char *addr;
  char *unix_path; /* the socket file, removed at close */
  uint64_t unix_ino, unix_dev;
  int listen_fd;
  uv_poll_t listen_poll;
  uv_prepare_t prepare;
  uv_timer_t tick;
  bool tick_active;
  sc_subscription *sub;
  sk_tokens tokens;
  bool have_tokens;
  char *log_path;
  sk_client *clients;
  size_t nclients;
  uint64_t dropped;
  sk_client *dirty;
  size_t dirty_bytes;
  uint64_t dirty_since;
  /* the ring: positions [ring_pos - ring_n, ring_pos) at slots pos % ring_cap */
  sk_ring_entry *ring;
  size_t ring_cap, ring_n;
  uint64_t ring_pos;
  /* the tasks seen */
  sk_task_rec **buckets;
  size_t nbuckets, ntasks;
  sk_task_rec *all;
  char *scratch;
  size_t scratch_cap;
  int open_handles;
  bool closing;
};

/* Output to a client: a line as it is (with its newline), counted against the queue unless
 * replay; false when the client was dropped for it. */
bool sk_client_send(sk_client *c, const char *line, size_t len, bool replay);
/* A reply line built from a JSON object (taken over and deleted), with the request's id. */
void sk_client_reply(sk_client *c, cJSON *reply, const cJSON *id);
void sk_client_error_reply(sk_client *c, const char *error, const char *message, const cJSON *id);
/* Writes what is queued, then closes it (a deadline bounds the wait). */
void sk_client_close_after_flush(sk_client *c);
sk_task_rec *sk_task_find(sc_socket *s, const char *id);
bool sk_filter_match(const sk_filter *f, const char *task_id, const char *tenant,
                     sc_event_type type);
void sk_filter_free(sk_filter *f);

/* ---- control.c ---- */

/* A complete line from a client. */
void sk_handle_line(sk_client *c, const char *line, size_t len);
/* The client's first line did not come in time: everything since it connected, unfiltered. */
void sk_start_unfiltered(sk_client *c);

#endif
