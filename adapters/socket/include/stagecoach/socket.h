/* The socket adapter: an NDJSON server in the engine's loop, on a Unix socket or a loopback TCP
 * port. Every client gets the event stream (one CloudEvents JSON line per event, the bytes of the
 * log's line without its chain member), filtered and replayed on request, and may send control
 * lines (approve, reject, pause, resume, cancel, retry, rollback, pending, status) authenticated
 * by a token file. A slow client is dropped; it never slows the engine or the other clients, and
 * no acknowledgement ever waits for a client.
 *
 * The protocol, its error lines and the limits are in docs/socket.md. */
#ifndef STAGECOACH_SOCKET_H
#define STAGECOACH_SOCKET_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <stagecoach/engine.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sc_socket sc_socket;

#define SC_SOCKET_OPTIONS_VERSION 3

typedef struct sc_socket_options {
  unsigned version; /* SC_SOCKET_OPTIONS_VERSION */
  /* A file of "name:token[:roles]" lines (roles viewer, operator, approver, comma-separated; none
   * given: all three). Read once, by sc_socket_listen; a file that others than its owner may read
   * is refused. NULL: no tokens, the stream is open to whoever can connect and every control line
   * is refused (unauthorized). Copied. */
  const char *token_file;
  /* A JSON-lines log (<stagecoach/jsonl.h>) to replay events from when the ring no longer holds
   * them; NULL: the ring only. Copied; read, never written. */
  const char *log_path;
  size_t queue_bytes;         /* per-client output queue; default 4 MiB */
  size_t ring_events;         /* events kept in memory for replay; default 4096 (0: none) */
  size_t max_line_bytes;      /* longest line a client may send; default 64 KiB */
  size_t max_clients;         /* default 1024 */
  size_t max_pending;         /* replies a client has not read yet; default 64 */
  uint32_t subscribe_wait_ms; /* how long a new client's first line is waited for before it gets
                                 every event unfiltered; default 100 */
  /* Version 2. The server keeps a record of every task it saw (for `status` and replay); of the
   * tasks that finished (a terminal status), only the last max_finished_tasks are kept, the
   * longest finished forgotten first: `status` then answers for a forgotten one from the engine
   * if the engine still holds it, SC_ENOTFOUND otherwise. Default 1024. */
  size_t max_finished_tasks;
  /* Version 3. A client whose replay from the log is being read (or whose queue still holds what
   * the replay queued beyond queue_bytes) and that takes nothing of its queue for this long is
   * dropped as a slow consumer ({"error":"slow-consumer"}), so that it holds no replay for ever.
   * Default 10000 ms. */
  uint32_t replay_stall_ms;
} sc_socket_options;

/* Fills the defaults; inline, like every _init(). */
static inline void sc_socket_options_init(sc_socket_options *o) {
  memset(o, 0, sizeof(*o));
  o->version = SC_SOCKET_OPTIONS_VERSION;
  o->queue_bytes = 4u << 20;
  o->ring_events = 4096;
  o->max_line_bytes = 64u << 10;
  o->max_clients = 1024;
  o->max_pending = 64;
  o->subscribe_wait_ms = 100;
  o->max_finished_tasks = 1024;
  o->replay_stall_ms = 10000;
}

/* Listens on addr, "unix:/path" (the socket file is created with mode 0600 and removed by
 * sc_socket_close; a file left there by a crash is replaced only when nothing listens on it) or
 * "tcp:127.0.0.1:PORT" / "tcp:[::1]:PORT" (loopback only; PORT 0 picks a free one, see
 * sc_socket_address), and subscribes to every event of e. Its handles do not keep the loop
 * running, nor do its replays from the log (uv_run returns with one unfinished when nothing else
 * keeps the loop going). Everything runs on the loop's thread except the writes to clients, which
 * a thread of the server's own makes (started here, joined by sc_socket_close; it blocks every
 * signal and calls nothing of the engine). o NULL: defaults. On success *out is the server, closed
 * with sc_socket_close() before sc_engine_free(); on failure (SC_EINVAL for a bad address or
 * option, SC_EAUTH for a token file that is unsafe or malformed, SC_EBUSY when something listens
 * on addr already, SC_EIO, also when its thread cannot be started) *out is NULL, with a message. */
SC_EXTERN int sc_socket_listen(sc_engine *e, const char *addr, const sc_socket_options *o,
                               sc_socket **out);

/* Connects to a server at addr (the forms sc_socket_listen takes; loopback only), for a client
 * in C: on success *fd_out is a connected, blocking stream socket the caller closes; on failure
 * (SC_EINVAL for a bad address, SC_EIO when nothing can be reached there) *fd_out is -1, with a
 * message. */
SC_EXTERN int sc_socket_connect(const char *addr, int *fd_out);

/* The address listened on, with the port a "tcp:...:0" got ("tcp:127.0.0.1:40123"). Borrowed,
 * valid until sc_socket_close(). */
SC_EXTERN const char *sc_socket_address(const sc_socket *s);

/* The number of clients connected now. */
SC_EXTERN size_t sc_socket_client_count(const sc_socket *s);

/* The number of clients dropped so far for not reading (slow-consumer). */
SC_EXTERN uint64_t sc_socket_dropped_count(const sc_socket *s);

/* Stops listening, gives each client up to a second to take what is queued for it (one that has
 * not taken it all is closed anyway: its last line may end short), closes every connection,
 * removes the Unix socket file, unsubscribes and frees the server. A replay from the log being
 * read stops: no piece of it starts any more, and the one on the thread pool (about 1 MiB of the
 * log) stops at its next line and is the only one waited for. Runs the loop without blocking on
 * anything else until its handles are closed; call it outside the loop's callbacks. NULL is a no-
 * op. */
SC_EXTERN void sc_socket_close(sc_socket *s);

#ifdef __cplusplus
}
#endif
#endif
