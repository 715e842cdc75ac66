/* The commands that talk to a socket server (`run --socket`): tail follows the event stream;
 * pending, approve and reject send one control line each and print its reply. Plain blocking
 * sockets: each command has one connection and nothing else to do. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "../../events/internal.h"

typedef struct reader {
  int fd;
  sc__buf in; /* what was read and not handed out yet, from off on */
  size_t off;
} reader;

/* Connects to unix:/path or tcp:LOOPBACK:PORT; -1 with a message on stderr. */
static int connect_addr(const char *cmd, const char *addr) {
  int fd;
  if (sc_socket_connect(addr, &fd) != SC_OK) {
    cli_usage_error(cmd, "%s", sc_error_message());
    return -1;
  }
  return fd;
}

/* The next line (without its newline; NUL-terminated, valid until the next call); NULL at the
 * end of the stream. */
static char *read_line(reader *r, size_t *len) {
  for (;;) {
    sc__buf *b = &r->in;
    char *nl = b->p == NULL ? NULL : memchr(b->p + r->off, '\n', b->len - r->off);
    if (nl != NULL) {
      char *line = b->p + r->off;
      *nl = '\0';
      *len = (size_t)(nl - line);
      r->off = (size_t)(nl - b->p) + 1;
      return line;
    }
    if (r->off > 0) {
      memmove(b->p, b->p + r->off, b->len - r->off);
      b->len -= r->off;
      r->off = 0;
    }
    if (!sc__buf_reserve(b, 4096)) return NULL;
    ssize_t n = read(r->fd, b->p + b->len, b->cap - b->len - 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return NULL; /* a last line without its newline is not a whole line */
    b->len += (size_t)n;
  }
}

static bool send_all(int fd, const char *text, size_t len) {
  while (len > 0) {
    ssize_t n = send(fd, text, len, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    text += n;
    len -= (size_t)n;
  }
  return true;
}

static bool send_json(int fd, cJSON *o) {
  char *text = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  if (text == NULL) return false;
  bool ok = send_all(fd, text, strlen(text)) && send_all(fd, "\n", 1);
  free(text);
  return ok;
}

/* The token: the file's first line that is not a comment ("TOKEN" or "name:token[:roles]"), or
 * $STAGECOACH_TOKEN. NULL when there is none; *owned is what the caller frees. */
static const char *find_token(const char *cmd, const char *file, char **owned, int *rc) {
  *owned = NULL;
  *rc = 0;
  if (file == NULL) return getenv("STAGECOACH_TOKEN");
  FILE *f = fopen(file, "r");
  if (f == NULL) {
    *rc = cli_usage_error(cmd, "--token-file %s: %s", file, strerror(errno));
    return NULL;
  }
  char *line = NULL;
  size_t cap = 0;
  ssize_t n;
  while ((n = getline(&line, &cap, f)) >= 0) {
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
      line[--n] = '\0';
    if (n == 0 || line[0] == '#') continue;
    char *c1 = strchr(line, ':');
    if (c1 == NULL) {
      *owned = strdup(line);
    } else {
      char *c2 = strchr(c1 + 1, ':');
      *owned = c2 ? strndup(c1 + 1, (size_t)(c2 - c1 - 1)) : strdup(c1 + 1);
    }
    break;
  }
  free(line);
  fclose(f);
  if (*owned == NULL) *rc = cli_usage_error(cmd, "--token-file %s holds no token", file);
  return *owned;
}

static const char *member_string(const cJSON *o, const char *name) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Sends one op and waits for its reply (lines that are not replies are skipped). Returns the
 * reply (the caller deletes it) or NULL with the exit code in *code. */
static cJSON *roundtrip(const char *cmd, const char *addr, cJSON *op, int *code) {
  int fd = connect_addr(cmd, addr);
  if (fd < 0) {
    cJSON_Delete(op);
    *code = CLI_EXIT_USAGE;
    return NULL;
  }
  reader r = {fd, {0}, 0};
  cJSON *reply = NULL;
  if (!send_json(fd, op)) {
    fprintf(stderr, "stagecoach %s: %s: %s\n", cmd, addr, strerror(errno));
    *code = CLI_EXIT_USAGE;
  } else {
    char *line;
    size_t len;
    while (reply == NULL && (line = read_line(&r, &len)) != NULL) {
      cJSON *o = cJSON_ParseWithLength(line, len);
      if (o && cJSON_GetObjectItemCaseSensitive(o, "ok") != NULL) {
        reply = o;
      } else if (o && member_string(o, "error") != NULL) { /* the connection's own error */
        fprintf(stderr, "stagecoach %s: the server says: %s\n", cmd, line);
        cJSON_Delete(o);
        break;
      } else {
        cJSON_Delete(o);
      }
    }
    if (reply == NULL) {
      fprintf(stderr, "stagecoach %s: %s closed the connection without a reply\n", cmd, addr);
      *code = CLI_EXIT_FAILED;
    }
  }
  sc__buf_free(&r.in);
  close(fd);
  if (reply && !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(reply, "ok"))) {
    const char *err = member_string(reply, "error"), *msg = member_string(reply, "message");
    fprintf(stderr, "stagecoach %s: %s: %s\n", cmd, err ? err : "refused", msg ? msg : "");
    *code = err && strcmp(err, "unauthorized") == 0 ? CLI_EXIT_UNAUTHORIZED : CLI_EXIT_FAILED;
    cJSON_Delete(reply);
    return NULL;
  }
  return reply;
}

/* ---- tail ---- */

int cli_tail(int argc, char **argv) {
  const char *addr = NULL, *tenant = NULL, *task = NULL, *from = NULL, *token_file = NULL;
  const char *types[32];
  size_t ntypes = 0;
  bool json = false;
  for (int i = 0; i < argc; i++) {
    int m;
    const char *type;
    if ((m = cli_option(argc, argv, &i, "--tenant", &tenant)) != 0 ||
        (m = cli_option(argc, argv, &i, "--task", &task)) != 0 ||
        (m = cli_option(argc, argv, &i, "--from-seq", &from)) != 0 ||
        (m = cli_option(argc, argv, &i, "--token-file", &token_file)) != 0) {
      if (m < 0) return cli_usage_error("tail", "%s needs a value", argv[i]);
      continue;
    }
    if ((m = cli_option(argc, argv, &i, "--type", &type)) != 0) {
      if (m < 0) return cli_usage_error("tail", "--type needs a value");
      if (ntypes == sizeof(types) / sizeof(types[0]))
        return cli_usage_error("tail", "at most 32 --type");
      types[ntypes++] = type;
      continue;
    }
    if (strcmp(argv[i], "--json") == 0) {
      json = true;
      continue;
    }
    if (cli_operand("tail", argv[i], "address", &addr) != 0) return CLI_EXIT_USAGE;
  }
  if (addr == NULL) return cli_usage_error("tail", "which server? (stagecoach tail ADDR)");
  char *end = NULL;
  unsigned long long from_seq = from ? strtoull(from, &end, 10) : 0;
  if (from && (*end != '\0' || from_seq == 0))
    return cli_usage_error("tail", "--from-seq must be a number from 1");
  if (from && task == NULL)
    return cli_usage_error("tail", "--from-seq replays one task: give --task ID too");
  char *owned;
  int rc;
  const char *token = find_token("tail", token_file, &owned, &rc);
  if (rc != 0) return rc;
  cJSON *line = cJSON_CreateObject(), *sub = cJSON_AddObjectToObject(line, "subscribe");
  if (tenant) cJSON_AddStringToObject(sub, "tenant", tenant);
  if (task) cJSON_AddStringToObject(sub, "task", task);
  if (from) cJSON_AddNumberToObject(sub, "from_seq", (double)from_seq);
  if (token) cJSON_AddStringToObject(sub, "token", token);
  if (ntypes) {
    cJSON *t = cJSON_AddArrayToObject(sub, "types");
    for (size_t i = 0; i < ntypes; i++)
      cJSON_AddItemToArray(t, cJSON_CreateString(types[i]));
  }
  free(owned);
  int fd = connect_addr("tail", addr);
  if (fd < 0) {
    cJSON_Delete(line);
    return CLI_EXIT_USAGE;
  }
  if (!send_json(fd, line)) {
    close(fd);
    return cli_usage_error("tail", "%s: %s", addr, strerror(errno));
  }
  reader r = {fd, {0}, 0};
  int code = CLI_EXIT_COMPLETED;
  char *text;
  size_t len;
  while ((text = read_line(&r, &len)) != NULL) {
    if (strncmp(text, "{\"error\"", 8) == 0 || strncmp(text, "{\"ok\"", 5) == 0) {
      cJSON *o = cJSON_ParseWithLength(text, len);
      const char *err = member_string(o, "error");
      fprintf(stderr, "stagecoach tail: %s\n", text);
      if (err && strcmp(err, "unauthorized") == 0)
        code = CLI_EXIT_UNAUTHORIZED;
      else if (err && strcmp(err, "replay-gap") != 0 && strcmp(err, "missed") != 0)
        code = CLI_EXIT_FAILED;
      cJSON_Delete(o);
      continue;
    }
    if (json) {
      text[len] = '\n';
      fwrite(text, 1, len + 1, stdout);
    } else {
      sc_event_doc *d;
      if (sc_event_parse(text, len, &d) == SC_OK) {
        cli_print_event(stdout, sc_event_doc_event(d));
        sc_event_doc_free(d);
      }
    }
    fflush(stdout);
  }
  sc__buf_free(&r.in);
  close(fd);
  return code;
}

/* ---- pending ---- */

int cli_pending(int argc, char **argv) {
  const char *addr = NULL, *token_file = NULL;
  bool json = false;
  for (int i = 0; i < argc; i++) {
    int m;
    if ((m = cli_option(argc, argv, &i, "--token-file", &token_file)) != 0) {
      if (m < 0) return cli_usage_error("pending", "--token-file needs a value");
      continue;
    }
    if (strcmp(argv[i], "--json") == 0) {
      json = true;
      continue;
    }
    if (cli_operand("pending", argv[i], "address", &addr) != 0) return CLI_EXIT_USAGE;
  }
  if (addr == NULL) return cli_usage_error("pending", "which server? (stagecoach pending ADDR)");
  char *owned;
  int code = 0;
  const char *token = find_token("pending", token_file, &owned, &code);
  if (code != 0) return code;
  cJSON *op = cJSON_CreateObject();
  cJSON_AddStringToObject(op, "op", "pending");
  if (token) cJSON_AddStringToObject(op, "token", token);
  free(owned);
  cJSON *reply = roundtrip("pending", addr, op, &code);
  if (reply == NULL) return code;
  const cJSON *list = cJSON_GetObjectItemCaseSensitive(reply, "pending");
  if (json) {
    char *text = cJSON_PrintUnformatted(list);
    printf("%s\n", text ? text : "[]");
    free(text);
  } else if (cJSON_GetArraySize(list) == 0) {
    printf("no approval pending\n");
  } else {
    printf("%-38s %-20s %-30s %-9s %s\n", "TASK", "STAGE", "REASON", "APPROVALS", "DEADLINE");
    for (const cJSON *p = list->child; p; p = p->next) {
      const cJSON *dl = cJSON_GetObjectItemCaseSensitive(p, "deadline_ms");
      char when[32] = "-";
      if (cJSON_IsNumber(dl)) {
        time_t sec = (time_t)(dl->valuedouble / 1000);
        struct tm tm;
        gmtime_r(&sec, &tm);
        strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%SZ", &tm);
      }
      char approvals[32];
      snprintf(approvals, sizeof(approvals), "%d/%d",
               cJSON_GetObjectItemCaseSensitive(p, "approvals")->valueint,
               cJSON_GetObjectItemCaseSensitive(p, "approvers_needed")->valueint);
      printf("%-38s %-20s %-30s %-9s %s\n", member_string(p, "task"), member_string(p, "stage"),
             member_string(p, "reason"), approvals, when);
    }
  }
  cJSON_Delete(reply);
  return CLI_EXIT_COMPLETED;
}

/* ---- approve, reject ---- */

static int decide(const char *cmd, int argc, char **argv) {
  const char *pos[3], *comment = NULL, *token_file = NULL;
  int npos = 0;
  for (int i = 0; i < argc; i++) {
    int m;
    if ((m = cli_option(argc, argv, &i, "--comment", &comment)) != 0 ||
        (m = cli_option(argc, argv, &i, "--token-file", &token_file)) != 0) {
      if (m < 0) return cli_usage_error(cmd, "%s needs a value", argv[i]);
      continue;
    }
    if (argv[i][0] == '-' && argv[i][1] != '\0')
      return cli_usage_error(cmd, "unknown option '%s' (see stagecoach %s --help)", argv[i], cmd);
    if (npos == 3) return cli_usage_error(cmd, "too many arguments ('%s')", argv[i]);
    pos[npos++] = argv[i];
  }
  if (npos != 3)
    return cli_usage_error(cmd,
                           "give the server, the task and the stage (stagecoach %s ADDR "
                           "TASK STAGE)",
                           cmd);
  char *owned;
  int code = 0;
  const char *token = find_token(cmd, token_file, &owned, &code);
  if (code != 0) return code;
  if (token == NULL)
    return cli_usage_error(cmd, "no token: give --token-file F or set STAGECOACH_TOKEN");
  cJSON *op = cJSON_CreateObject();
  cJSON_AddStringToObject(op, "op", cmd);
  cJSON_AddStringToObject(op, "token", token);
  cJSON_AddStringToObject(op, "task", pos[1]);
  cJSON_AddStringToObject(op, "stage", pos[2]);
  if (comment) cJSON_AddStringToObject(op, "comment", comment);
  free(owned);
  cJSON *reply = roundtrip(cmd, pos[0], op, &code);
  if (reply == NULL) return code;
  printf("%s stage %s of task %s as %s\n", strcmp(cmd, "approve") == 0 ? "approved" : "rejected",
         pos[2], pos[1], member_string(reply, "reviewer") ? member_string(reply, "reviewer") : "?");
  cJSON_Delete(reply);
  return CLI_EXIT_COMPLETED;
}

int cli_approve(int argc, char **argv) {
  return decide("approve", argc, argv);
}

int cli_reject(int argc, char **argv) {
  return decide("reject", argc, argv);
}

/* The largest values --socket-limits takes: a ring of 16 M events, 1 TiB of queue or line, a
 * million clients, pending replies or finished tasks' records. */
#define SOCKET_RING_MAX  (1ull << 24)
#define SOCKET_BYTES_MAX (1ull << 40)
#define SOCKET_COUNT_MAX 1000000ull

int cli_socket_limits(const char *text, sc_socket_options *o) {
  const char *p = text;
  while (*p) {
    const char *eq = strchr(p, '=');
    if (eq == NULL) return -1;
    char *end;
    errno = 0;
    /* digits only: strtoull would take a sign, spaces and "-1" as 2^64 - 1 */
    if (eq[1] < '0' || eq[1] > '9') return -1;
    unsigned long long v = strtoull(eq + 1, &end, 10);
    if (errno != 0 || (*end != ',' && *end != '\0') || (*end == ',' && end[1] == '\0')) return -1;
    size_t n = (size_t)(eq - p);
    if (n == 4 && memcmp(p, "ring", 4) == 0 && v <= SOCKET_RING_MAX)
      o->ring_events = (size_t)v;
    else if (n == 5 && memcmp(p, "queue", 5) == 0 && v > 0 && v <= SOCKET_BYTES_MAX)
      o->queue_bytes = (size_t)v;
    else if (n == 4 && memcmp(p, "line", 4) == 0 && v > 0 && v <= SOCKET_BYTES_MAX)
      o->max_line_bytes = (size_t)v;
    else if (n == 7 && memcmp(p, "clients", 7) == 0 && v > 0 && v <= SOCKET_COUNT_MAX)
      o->max_clients = (size_t)v;
    else if (n == 7 && memcmp(p, "pending", 7) == 0 && v > 0 && v <= SOCKET_COUNT_MAX)
      o->max_pending = (size_t)v;
    else if (n == 4 && memcmp(p, "wait", 4) == 0 && v <= 600000)
      o->subscribe_wait_ms = (uint32_t)v;
    else if (n == 8 && memcmp(p, "finished", 8) == 0 && v > 0 && v <= SOCKET_COUNT_MAX)
      o->max_finished_tasks = (size_t)v;
    else if (n == 5 && memcmp(p, "stall", 5) == 0 && v > 0 && v <= 3600000)
      o->replay_stall_ms = (uint32_t)v;
    else
      return -1;
    p = *end == ',' ? end + 1 : end;
  }
  return 0;
}
