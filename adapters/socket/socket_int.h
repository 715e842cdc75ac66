/* Internals of the socket adapter (not installed): the server, its clients, the task table, the
 * replay ring, the token file and the line parser that the fuzz target drives. */
#ifndef STAGECOACH_SOCKET_INT_H
#define STAGECOACH_SOCKET_INT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <stagecoach/jsonl.h>
#include <stagecoach/socket.h>
#include <uv.h>

#include "../../events/map.h"
#include "../../events/queue.h"

/* ---- tokens.c ---- */

enum { SC__SOCK_ROLE_VIEWER = 1, SC__SOCK_ROLE_OPERATOR = 2, SC__SOCK_ROLE_APPROVER = 4 };

typedef struct sc__sock_token {
  char *name;
  unsigned char digest[32]; /* SHA-256 of the token: compared in constant time */
  unsigned roles;
} sc__sock_token;

typedef struct sc__sock_tokens {
  sc__sock_token *v;
  size_t n;
} sc__sock_tokens;

/* Parses the text of a token file (len bytes). SC_EAUTH with a message naming the line for a
 * malformed one. */
int sc__sock_tokens_parse(const char *text, size_t len, const char *path, sc__sock_tokens *out);
/* Reads a token file: refused (SC_EAUTH) when others than its owner may read or write it. */
int sc__sock_tokens_load(const char *path, sc__sock_tokens *out);
/* The entry whose token is token, or NULL; every entry is compared, in constant time each. */
const sc__sock_token *sc__sock_tokens_find(const sc__sock_tokens *t, const char *token);
void sc__sock_tokens_free(sc__sock_tokens *t);

/* ---- line.c: what a client line asks ---- */

typedef enum sc__sock_kind { SC__SOCK_SUBSCRIBE, SC__SOCK_OP } sc__sock_kind;

typedef enum sc__sock_op {
  SC__SOCK_OP_APPROVE,
  SC__SOCK_OP_REJECT,
  SC__SOCK_OP_PAUSE,
  SC__SOCK_OP_RESUME,
  SC__SOCK_OP_CANCEL,
  SC__SOCK_OP_RETRY,
  SC__SOCK_OP_ROLLBACK,
  SC__SOCK_OP_PENDING,
  SC__SOCK_OP_STATUS
} sc__sock_op;

typedef struct sc__sock_request {
  cJSON *root; /* owns every string below */
  sc__sock_kind kind;
  sc__sock_op op;
  const char *token, *task, *stage, *comment, *reason, *from_stage, *tenant;
  const cJSON *id;    /* echoed in the reply; may be NULL */
  const cJSON *types; /* subscribe: an array of strings, or NULL */
  bool has_from_seq, reset_context;
  uint64_t from_seq;
  sc_rollback_strategy strategy;
} sc__sock_request;

/* Parses one line (len bytes, no newline). SC_OK with *r filled (free with sc__sock_request_free);
 * otherwise SC_EPARSE (not JSON, not an object) or SC_EINVAL (an unknown op, a member of the
 * wrong type, a missing one) with why written into why[cap]. */
int sc__sock_request_parse(const char *line, size_t len, sc__sock_request *r, char *why,
                           size_t cap);
void sc__sock_request_free(sc__sock_request *r);
/* The role an op needs. */
unsigned sc__sock_op_role(sc__sock_op op);
const char *sc__sock_op_name(sc__sock_op op);

/* ---- address.c ---- */

struct sockaddr_un;

/* unix:/path or tcp:LOOPBACK:PORT as a socket address; SC_EINVAL with a message otherwise. */
int sc__sock_parse_address(const char *addr, struct sockaddr_storage *ss, socklen_t *len);
/* Binds and listens (the file born 0600, a stale one replaced), filling s's listen_fd, addr and
 * the file's identity; SC_EBUSY when something listens there, SC_EINVAL, SC_EIO. */
int sc__sock_listen_unix(sc_socket *s, const struct sockaddr_un *sa);
int sc__sock_listen_tcp(sc_socket *s, const char *addr, struct sockaddr_storage *ss, socklen_t len);

/* ---- server.c ---- */

typedef struct sc__sock_task_rec {
  char *id, *tenant, *stage;
  size_t stage_cap;
  uint64_t last_seq;
  sc_task_status status;
  int32_t stage_index;
  size_t ring_refs;   /* ring slots that name it: a forgotten record lives until they are reused */
  bool forgotten;     /* out of the table (a finished task beyond max_finished_tasks) */
  sc__queue all;      /* in the server's records, oldest first */
  sc__queue finished; /* in the server's finished records, in the order they ended */
} sc__sock_task_rec;

/* Encoded lines live in chunks, shared: an event is encoded once, into the server's current chunk,
 * and the ring and every client's queue hold references (chunk, offset, length) to its bytes, so
 * nothing is copied per client and one writev sends a client everything of a loop turn. A chunk
 * is freed (or kept in a small pool) when its last reference goes. */
typedef struct sc__sock_chunk {
  sc__queue pool; /* in the server's pool while unused */
  size_t refs, len, cap;
  char data[];
} sc__sock_chunk;

typedef struct sc__sock_seg {
  sc__sock_chunk *chunk; /* one reference */
  size_t off, len;       /* whole lines */
} sc__sock_seg;

typedef struct sc__sock_ring_entry {
  sc__sock_task_rec *task;
  sc_event_type type;
  uint64_t seq;
  sc__sock_seg line; /* the event's JSON and a newline; chunk NULL: an empty slot */
} sc__sock_ring_entry;

typedef enum sc__sock_state {
  SC__SOCK_WAITING,
  SC__SOCK_STREAM,
  SC__SOCK_REPLAYING, /* its replay from the log is being read: the live stream waits in the ring */
  SC__SOCK_CONTROL,
  SC__SOCK_CLOSING
} sc__sock_state;

typedef struct sc__sock_filter {
  char *tenant, *task;
  char **types; /* patterns: "stage.completed", "stage.*", "*" */
  size_t ntypes;
  uint64_t from_seq; /* with task: events of a lower seq are not sent (0: all) */
} sc__sock_filter;

typedef struct sc__sock_replay sc__sock_replay;
typedef struct sc__sock_index sc__sock_index;

/* A write holds SMALL iovecs in place, more in an array of the client's, at most MAX (64 KiB). */
#define SC__SOCK_WRITE_SMALL 16
#define SC__SOCK_WRITE_MAX   4096

/* One write a client's queue asks of the sender thread: the loop thread fills it from the head of
 * the queue and hands it over; the sender writes it whole, waiting for the socket to take it as
 * long as it must, and hands it back (sooner when it is called back, for a drop or a close).
 * While it is away the loop thread touches none of it but `cancel`, nor the bytes it names (the
 * queue holds their chunks' references until it is back). */
typedef struct sc__sock_write {
  sc__queue node; /* in the sender's jobs, its own list, then its results */
  /* every segment queued when it was handed over, one iovec each: iov[first, iovcnt) are still to
   * be written (the sender moves `first` and the first one's base on as they are written) */
  struct iovec *iov;
  size_t first, iovcnt, iov_cap; /* iov_cap: of the client's array (0: iov is `small`) */
  struct iovec small[SC__SOCK_WRITE_SMALL];
  int fd;
  size_t total;
  size_t n;               /* written so far */
  atomic_size_t progress; /* n, for the loop to look at while the write is away */
  int err;                /* errno of a failed write (the client is gone); 0 */
  bool cancel;            /* the loop wants it back now (guarded by the server's mu) */
  bool ready;             /* the sender's: its socket may take more (new, or poll said so) */
  size_t piece; /* at most this much a sendmsg (0: no bound): see sc__sock_client_unread */
} sc__sock_write;

typedef struct sc__sock_client {
  uv_poll_t poll;
  int fd;
  sc_socket *server;
  sc__queue node;  /* in the server's clients */
  sc__queue dirty; /* in the server's clients with output to write (linked: it is) */
  bool closed;     /* uv_close called; freed in its callback */
  sc__sock_state state;
  unsigned roles; /* of the token of its subscribe line (a stream with a token file) */
  sc__sock_filter filter;
  uint64_t start_pos; /* the ring position when it connected */
  uint64_t deadline;  /* uv_now() by which it must have sent its first line / be closed */
  int events;         /* the poll events watched */
  char *in;
  size_t in_len, in_cap;
  /* the output queue: segs[(seg_head + i) % seg_cap] for i < seg_n, `queued` bytes in all */
  sc__sock_seg *segs;
  size_t seg_head, seg_n, seg_cap, queued;
  bool mid_line;           /* what was written of the head segment ends inside a line */
  sc__sock_chunk *own;     /* where its own lines (replies, error lines) are appended */
  sc__sock_replay *replay; /* its replay from the log, while it is read */
  size_t cap;              /* the queue's limit now: queue_bytes, more while a replay drains */
  /* the reply lines it has not taken yet: where each ends in its stream (bytes since it
   * connected), oldest first, reply_end[(reply_head + i) % reply_cap] for i < reply_n */
  uint64_t taken; /* bytes of its stream written so far (a write the sender holds aside) */
  uint64_t *reply_end;
  size_t reply_head, reply_n, reply_cap;
  /* the write with the sender thread: while `writing`, the fd stays open and the head of the
   * queue stays put (a drop or a close waits for the result) */
  sc__sock_write w;
  bool writing;
  bool drop_pending; /* dropped while writing: the queue is cut when the write is back */
  /* in the server's feed (gets each event as it comes, through its filter) or, once it streams
   * everything unfiltered, in its `takers` (gets the stream's bytes in whole runs at each flush) */
  sc__queue feed;
  bool takes_all;
  /* replay.c: a replaying client that takes nothing of its queue for replay_stall_ms is dropped */
  size_t stall_mark;    /* queued when last looked at: less later means it took some */
  uint64_t stall_since; /* uv_now() when it last took some (or had nothing to take) */
} sc__sock_client;

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
  sc__sock_tokens tokens;
  bool have_tokens;
  char *log_path;
  sc__queue clients;
  size_t nclients;
  sc__queue feed;   /* clients that get each event as it comes (their filter decides) */
  sc__queue takers; /* streaming clients with no filter: they get `recent` at each flush */
  size_t ntakers;
  sc__sock_seg
      *recent; /* the stream's bytes since the takers last had them: segments, a reference each */
  size_t nrecent, recent_cap, recent_bytes;
  uint64_t dropped;
  sc__queue dirty;
  size_t dirty_bytes, ndirty;
  uint64_t dirty_since;
  /* the ring: positions [ring_pos - ring_n, ring_pos) at slots pos % ring_cap */
  sc__sock_ring_entry *ring;
  size_t ring_cap, ring_n;
  uint64_t ring_pos;
  /* the tasks seen */
  sc__map tasks; /* id -> sc__sock_task_rec, the records not forgotten (keys: their ids) */
  size_t ntasks;
  sc__queue all;      /* every record, oldest first */
  sc__queue finished; /* records of tasks in a terminal state, the longest finished first */
  size_t nfinished;
  uint64_t forgotten; /* records forgotten so far */
  sc__sock_task_rec *last_task;
  sc__sock_chunk *cur; /* the chunk events are encoded into */
  sc__queue pool;      /* unused chunks of CHUNK_BYTES, at most POOL_CHUNKS */
  size_t npool;
  int open_handles;
  size_t replays;        /* pieces of replays on the thread pool not done yet (0 or 1) */
  sc__queue replay_wait; /* replays waiting for their next piece, in turn */
  bool closing;
  /* the sender thread, which makes every write to a client (so the kernel's copying of the
   * stream into the clients' sockets is not on the engine's thread); jobs and results are
   * guarded by `mu`, the rest of the server is the loop thread's alone */
  uv_thread_t sender;
  bool sender_running;
  uv_mutex_t mu;
  int wake_fd;   /* an eventfd the sender polls beside its clients' sockets */
  bool sleeping; /* the sender is (about to be) in poll: a new job must wake it (guarded by mu) */
  bool cancels;  /* some job's cancel was set (guarded by mu) */
  sc__queue jobs, results;
  bool stop;
  sc__queue stock;  /* chunks the sender made ready (their pages touched), for the loop to take */
  size_t nstock;    /* guarded by mu, with stock */
  bool stock_low;   /* the loop took the stock below half: the sender makes more (guarded by mu) */
  uv_async_t sent;  /* the sender's results are back */
  bool sent_closed; /* the async handle's close callback ran */
  /* replay.c */
  sc__sock_index *index; /* where each task begins in the log; NULL until the first replay */
  size_t index_limit;    /* its bound in bytes; 0: SC__SOCK_INDEX_BYTES (tests set less) */
  uint64_t replay_bytes; /* bytes of the log read by replays so far */
  uint64_t replay_start; /* the offset the latest replay's first piece read from */
  uint64_t replays_started;
};

/* A chunk of at least need bytes, one reference (no pool: callable off the loop). */
sc__sock_chunk *sc__sock_chunk_alloc(size_t need);
/* Drops a reference; the last one frees the chunk or keeps it in the server's pool. */
void sc__sock_chunk_unref(sc_socket *s, sc__sock_chunk *ch);

/* Output to a client: a line as it is (with its newline; copied), counted against the queue unless
 * replay; false when the client was dropped for it. */
bool sc__sock_client_send(sc__sock_client *c, const char *line, size_t len, bool replay);
/* The same for bytes of a shared chunk (a reference is taken; nothing is copied). */
bool sc__sock_client_send_seg(sc__sock_client *c, const sc__sock_seg *line, bool replay);
/* A reply line built from a JSON object (taken over and deleted), with the request's id. */
void sc__sock_client_reply(sc__sock_client *c, cJSON *reply, const cJSON *id);
void sc__sock_client_error_reply(sc__sock_client *c, const char *error, const char *message,
                                 const cJSON *id);
/* The reply lines queued for the client that it has not taken yet (a write the sender holds
 * counts as far as it went). */
size_t sc__sock_client_replies(sc__sock_client *c);
/* What the client has not read yet: what it has not taken of its queue and what its socket still
 * holds for it (SIOCOUTQ). A socket frees what the client read a whole sendmsg at a time, so the
 * writes to a client the stall rule watches are made in pieces of 16 KiB: its progress shows in
 * steps of that much, not of a socket buffer. */
size_t sc__sock_client_unread(const sc__sock_client *c);
/* What of its queue the client has not taken yet: `queued` less what the sender has written of
 * the write it holds. */
size_t sc__sock_client_unwritten(const sc__sock_client *c);
/* Writes what is queued, then closes it (a deadline bounds the wait). */
void sc__sock_client_close_after_flush(sc__sock_client *c);
/* Drops the client as a slow consumer: what is not written yet goes, the slow-consumer line is
 * queued and the connection closed once that is written (or after a deadline). */
void sc__sock_client_drop_slow(sc__sock_client *c);
/* Runs the server's clock (first lines, closing clients, replaying clients) if it is stopped. */
void sc__sock_tick_start(sc_socket *s);
/* ---- tasks.c ---- */

sc__sock_task_rec *sc__sock_task_find(sc_socket *s, const char *id);
/* The record of ev's task, made when it is new; NULL when out of memory. */
sc__sock_task_rec *sc__sock_task_record(sc_socket *s, const sc_event *ev);
/* After t's status changed: keeps the finished list, and forgets the oldest beyond the bound. */
void sc__sock_task_note_status(sc_socket *s, sc__sock_task_rec *t);
/* A ring slot no longer names t (a forgotten record is freed with the last slot naming it). */
void sc__sock_ring_release(sc__sock_task_rec *t);
void sc__sock_task_free(sc__sock_task_rec *t);
bool sc__sock_filter_match(const sc__sock_filter *f, const char *task_id, const char *tenant,
                           sc_event_type type);
void sc__sock_filter_free(sc__sock_filter *f);

/* ---- control.c ---- */

/* A complete line from a client. */
void sc__sock_handle_line(sc__sock_client *c, const char *line, size_t len);
/* The client's first line did not come in time: everything since it connected, unfiltered. */
void sc__sock_start_unfiltered(sc__sock_client *c);

/* ---- replay.c ---- */

#define SC__SOCK_INDEX_BYTES (8u << 20) /* the default bound of a server's replay index */

/* The replay index: the position of each task's first line in the log (an sc__map of id ->
 * entry), complete for the lines before `end`. Built and extended only by the replays' pieces on
 * the thread pool, one at a time; freed with the server. */
struct sc__sock_index {
  sc__map tasks;
  bool built;    /* it is an index of the file dev/ino */
  bool frozen;   /* the bound was reached: end moves no more */
  bool has_last; /* last is set */
  uint64_t dev, ino;
  sc_jsonl_position end, last; /* the first line not indexed, and the one before it */
  size_t bytes, limit;         /* what its entries cost, and the bound */
};

/* The client's events of task from seq `from`: at once from the ring when it holds them, else
 * read from the log on the thread pool, then the ring and the live stream. */
void sc__sock_replay_start(sc__sock_client *c, const char *task, uint64_t from);
/* Before the loop waits: starts the next waiting replay's piece when none is on the pool. */
void sc__sock_replay_pump(sc_socket *s);
/* The client goes: its replay, if one is being read, is told to stop and forgets it. */
void sc__sock_replay_detach(sc__sock_client *c);
/* The client took some of its queue: a replay waiting for that reads on. */
void sc__sock_replay_drained(sc__sock_client *c);
/* The clock's look at a client: drops a replaying one that took nothing for replay_stall_ms.
 * True while it needs the clock. */
bool sc__sock_replay_watch(sc__sock_client *c, uint64_t now);
size_t sc__sock_index_count(const sc__sock_index *ix);
void sc__sock_index_free(sc__sock_index *ix);

#endif
