/* The "exec" stage kind of the stagecoach command: a stage's shell command run through uv_spawn in
 * its own process group, its output passed on line by line, its result read from $SC_OUTPUT. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "jsonpos.h"

extern char **environ;

#define TAIL_LINES       10                 /* lines of output kept for a failure message */
#define TAIL_LINE_BYTES  500                /* each truncated to this */
#define LINE_MAX_BYTES   (64 * 1024)        /* a longer line is passed on in pieces of this size */
#define OUTPUT_MAX_BYTES (16 * 1024 * 1024) /* the largest $SC_OUTPUT read */
#define READ_BYTES       (64 * 1024)
#define DEFAULT_GRACE_MS 5000
#define CONTEXT_ENV_MAX  (96 * 1024) /* a larger context is in $SC_CONTEXT_FILE only */
#define SWEEP_TICK_MS    10          /* how often a sweep looks whether the group is gone */
#define SWEEP_SETTLE_MS  100  /* after the group is gone, for the pipes to give their last bytes */
#define SWEEP_GIVE_UP_MS 1000 /* after SIGKILL, for a process that cannot die (uninterruptible) */

/* ---- growing strings ---- */

typedef struct strbuf {
  char *data; /* NUL-terminated when not NULL */
  size_t len, cap;
} strbuf;

static bool sb_append(strbuf *b, const char *s, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + n + 1)
      cap *= 2;
    char *data = realloc(b->data, cap);
    if (data == NULL) return false;
    b->data = data;
    b->cap = cap;
  }
  memcpy(b->data + b->len, s, n);
  b->len += n;
  b->data[b->len] = '\0';
  return true;
}

static bool sb_puts(strbuf *b, const char *s) {
  return sb_append(b, s, strlen(s));
}

/* ---- ${...} expansion ---- */

typedef enum var_result { VAR_FOREIGN, VAR_RESOLVED, VAR_UNRESOLVED, VAR_NOMEM } var_result;

static bool name_is(const char *name, size_t n, const char *word) {
  return strlen(word) == n && memcmp(name, word, n) == 0;
}

/* Follows a dotted path ("a.b.0") through objects (by member name) and arrays (by index). */
static const cJSON *walk(const cJSON *node, const char *path, size_t n) {
  char segment[256];
  while (node != NULL) {
    const char *dot = memchr(path, '.', n);
    size_t len = dot ? (size_t)(dot - path) : n;
    if (len == 0 || len >= sizeof(segment)) return NULL;
    memcpy(segment, path, len);
    segment[len] = '\0';
    if (cJSON_IsObject(node)) {
      node = cJSON_GetObjectItemCaseSensitive(node, segment);
    } else if (cJSON_IsArray(node) && strspn(segment, "0123456789") == len && len < 10) {
      node = cJSON_GetArrayItem(node, atoi(segment));
    } else {
      return NULL;
    }
    if (dot == NULL) return node;
    path += len + 1;
    n -= len + 1;
  }
  return NULL;
}

/* Where in a shell command a variable stands: outside quotes, inside '...', inside "...". */
typedef enum quoting { QUOTE_NONE, QUOTE_SINGLE, QUOTE_DOUBLE, QUOTE_OFF } quoting;

#define SHELL_DEPTH 16

/* What the shell makes of a command's text so far, as far as a variable after it is concerned. */
typedef struct shell_state {
  quoting q;       /* QUOTE_OFF: not shell text (cwd, env values) */
  bool escape;     /* the last byte was a backslash that applies to the next one */
  bool comment;    /* inside a comment: from a '#' that starts a word to the end of the line */
  bool word_start; /* the next byte would start a word (for '#') */
  bool escape_word_start; /* word_start before the backslash (a backslash-newline vanishes) */
  bool dollar;            /* the last byte was an unquoted or double-quoted '$' */
  bool in_name;           /* inside the NAME of a "$NAME" (a value next would lengthen it) */
  /* Places where the shell parses text again, so quoting cannot keep a value one word: */
  int depth;                  /* open "$(" (and "(" inside one); also "$((" */
  quoting outer[SHELL_DEPTH]; /* the quoting each open parenthesis returns to */
  bool backtick;              /* inside `...` */
  bool heredoc;               /* after "<<": here-documents, to the end of the command */
  bool unsure;                /* lost track (a "case" inside "$(", nesting too deep) */
} shell_state;

static bool shell_unsafe(const shell_state *sh) {
  return sh->q != QUOTE_OFF && (sh->depth > 0 || sh->backtick || sh->heredoc || sh->unsure);
}

/* Follows text[0 .. n): quotes open and close, a backslash outside single quotes takes the next
 * byte as it is (and with a newline vanishes), a '#' at the start of a word begins a comment,
 * "$(", "$((", backticks and "<<" open places a variable may not stand in. */
static void scan_shell(shell_state *sh, const char *text, size_t n) {
  if (sh->q == QUOTE_OFF) return;
  for (size_t i = 0; i < n; i++) {
    char c = text[i];
    bool dollar = sh->dollar;
    sh->dollar = false;
    bool name_char = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    sh->in_name = sh->q != QUOTE_SINGLE && !sh->comment && !sh->escape && !sh->backtick &&
                  (dollar ? name_char : sh->in_name && (name_char || (c >= '0' && c <= '9')));
    if (sh->comment) {
      if (c == '\n') sh->comment = false, sh->word_start = true;
      continue;
    }
    if (sh->escape) {
      sh->escape = false;
      sh->word_start = c == '\n' ? sh->escape_word_start : false;
      continue;
    }
    if (sh->backtick) { /* only the closing backtick matters: nothing inside is quoted by us */
      if (c == '\\') sh->escape = true, sh->escape_word_start = false;
      if (c == '`') sh->backtick = false;
      continue;
    }
    switch (sh->q) {
      case QUOTE_SINGLE:
        if (c == '\'') sh->q = QUOTE_NONE;
        break;
      case QUOTE_DOUBLE:
        if (c == '\\') sh->escape = true, sh->escape_word_start = false;
        if (c == '"') sh->q = QUOTE_NONE;
        if (c == '$') sh->dollar = true;
        if (c == '`') sh->backtick = true;
        if (c == '(' && dollar) {
          if (sh->depth == SHELL_DEPTH) {
            sh->unsure = true;
            break;
          }
          sh->outer[sh->depth++] = QUOTE_DOUBLE;
          sh->q = QUOTE_NONE;
          sh->word_start = true; /* a command starts: "case", '#' */
        }
        break;
      default:
        if (c == '#' && sh->word_start) {
          sh->comment = true;
          break;
        }
        if (sh->depth > 0 && sh->word_start && n - i >= 5 && memcmp(text + i, "case", 4) == 0 &&
            strchr(" \t\n", text[i + 4]) != NULL)
          sh->unsure = true; /* a "pattern)" would look like the end of the "$(" */
        if (c == '\\') sh->escape = true, sh->escape_word_start = sh->word_start;
        if (c == '"') sh->q = QUOTE_DOUBLE;
        if (c == '\'') sh->q = QUOTE_SINGLE;
        if (c == '$') sh->dollar = true;
        if (c == '`') sh->backtick = true;
        /* Inside "$((" "<<" is a shift; inside "$(" a here-document ends before the ")", and
         * variables there are refused anyway. */
        if (c == '<' && i + 1 < n && text[i + 1] == '<' && sh->depth == 0) sh->heredoc = true;
        if (c == '(' && (dollar || sh->depth > 0)) {
          if (sh->depth == SHELL_DEPTH) {
            sh->unsure = true;
            break;
          }
          sh->outer[sh->depth++] = QUOTE_NONE;
        } else if (c == ')' && sh->depth > 0) {
          sh->q = sh->outer[--sh->depth];
          sh->word_start = false; /* "$(...)#" is one word: that '#' starts no comment */
          break;
        }
        sh->word_start = strchr(" \t\n;&|()<>", c) != NULL;
        break;
    }
  }
}

static bool plain_word(const char *s) {
  if (*s == '\0') return false;
  for (; *s; s++)
    if (!(*s >= 'a' && *s <= 'z') && !(*s >= 'A' && *s <= 'Z') && !(*s >= '0' && *s <= '9') &&
        strchr("_./:@%+,-", *s) == NULL) /* not '=': FOO=bar in front would be an assignment */
      return false;
  return true;
}

/* A word the shell reads as syntax at the start of a command. */
static bool reserved_word(const char *s) {
  static const char *const words[] = {"if",   "then", "else",   "elif",     "fi",    "do",
                                      "done", "case", "esac",   "while",    "until", "for",
                                      "in",   "time", "select", "function", "coproc"};
  for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
    if (strcmp(s, words[i]) == 0) return true;
  return false;
}

/* Writes value so that the shell reads it back as it is, one word, whatever it holds. */
static bool put_quoted(strbuf *out, const char *value, quoting q) {
  switch (q) {
    case QUOTE_OFF: return sb_puts(out, value);
    case QUOTE_NONE:
      if (plain_word(value) && !reserved_word(value)) return sb_puts(out, value);
      if (!sb_puts(out, "'")) return false;
      for (const char *c = value; *c; c++)
        if (!(*c == '\'' ? sb_puts(out, "'\\''") : sb_append(out, c, 1))) return false;
      return sb_puts(out, "'");
    case QUOTE_SINGLE: /* close, an escaped quote, open again */
      for (const char *c = value; *c; c++)
        if (!(*c == '\'' ? sb_puts(out, "'\\''") : sb_append(out, c, 1))) return false;
      return true;
    case QUOTE_DOUBLE:
      for (const char *c = value; *c; c++)
        if ((strchr("$`\"\\", *c) != NULL && !sb_puts(out, "\\")) || !sb_append(out, c, 1))
          return false;
      return true;
  }
  return false;
}

/* Strings as they are; numbers, booleans, objects and arrays as compact JSON; null: no value. */
static var_result put_value(strbuf *out, const cJSON *v, quoting q) {
  if (v == NULL || cJSON_IsNull(v) || cJSON_IsInvalid(v)) return VAR_UNRESOLVED;
  if (cJSON_IsString(v)) return put_quoted(out, v->valuestring, q) ? VAR_RESOLVED : VAR_NOMEM;
  char *json = cJSON_PrintUnformatted(v);
  bool ok = json != NULL && put_quoted(out, json, q);
  free(json);
  return ok ? VAR_RESOLVED : VAR_NOMEM;
}

static var_result put_string(strbuf *out, const char *s, quoting q) {
  if (s == NULL) return VAR_UNRESOLVED;
  return put_quoted(out, s, q) ? VAR_RESOLVED : VAR_NOMEM;
}

/* Our namespaces are config, context, task and tenant; any other ${NAME} belongs to the shell. */
static var_result resolve(strbuf *out, const char *name, size_t n, const cJSON *config,
                          const cJSON *context, const char *task_id, const char *tenant,
                          quoting q) {
  if (name_is(name, n, "tenant")) return put_string(out, tenant, q);
  if (name_is(name, n, "task.id")) return put_string(out, task_id, q);
  if (name_is(name, n, "task") || (n > 5 && memcmp(name, "task.", 5) == 0)) return VAR_UNRESOLVED;
  const cJSON *root;
  size_t skip;
  if (n >= 6 && memcmp(name, "config", 6) == 0 && (n == 6 || name[6] == '.')) {
    root = config;
    skip = 6;
  } else if (n >= 7 && memcmp(name, "context", 7) == 0 && (n == 7 || name[7] == '.')) {
    root = context;
    skip = 7;
  } else {
    return VAR_FOREIGN;
  }
  return put_value(out, n == skip ? root : walk(root, name + skip + 1, n - skip - 1), q);
}

/* Whether ${name} is one of ours (config, context, task, tenant) rather than the shell's. */
static bool ours(const char *name, size_t n) {
  return name_is(name, n, "tenant") || name_is(name, n, "task") ||
         (n > 5 && memcmp(name, "task.", 5) == 0) || name_is(name, n, "config") ||
         (n > 7 && memcmp(name, "config.", 7) == 0) || name_is(name, n, "context") ||
         (n > 8 && memcmp(name, "context.", 8) == 0);
}

/* Sets *problem (when not NULL) to a malloc'd message: what, then the variable p[0 .. len). */
static void say_problem(char **problem, const char *what, const char *p, size_t len,
                        const char *after) {
  if (problem == NULL) return;
  strbuf b = {0};
  if (sb_puts(&b, what) && sb_append(&b, p, len) && sb_puts(&b, after))
    *problem = b.data;
  else
    free(b.data);
}

/* The expansion, or (check_only) the check of a template without values. */
static char *expand(const char *text, const cJSON *config, const cJSON *context,
                    const char *task_id, const char *tenant, bool shell, bool check_only,
                    char **problem) {
  if (problem != NULL) *problem = NULL;
  strbuf out = {0};
  if (!sb_append(&out, "", 0)) return NULL;
  const char *p = text;
  shell_state sh = {.q = shell ? QUOTE_NONE : QUOTE_OFF, .word_start = true};
  while (*p != '\0') {
    const char *dollar = strchr(p, '$');
    if (dollar == NULL) {
      if (!sb_puts(&out, p)) goto nomem;
      break;
    }
    if (!sb_append(&out, p, (size_t)(dollar - p))) goto nomem;
    scan_shell(&sh, p, (size_t)(dollar - p));
    p = dollar;
    if (sh.escape || sh.comment) {
      /* "\${...}" is a literal for the shell, and a comment is not run: text, not a variable */
      if (!sb_append(&out, p, 1)) goto nomem;
      scan_shell(&sh, p, 1);
      p++;
      continue;
    }
    if (p[1] == '$' && p[2] == '{') { /* "$${": a literal "${" */
      if (!sb_append(&out, "${", 2)) goto nomem;
      scan_shell(&sh, "x{", 2); /* not a '$' for the shell either */
      p += 3;
      continue;
    }
    const char *close = p[1] == '{' ? strchr(p + 2, '}') : NULL;
    if (close == NULL) { /* a lone '$' or an unterminated "${": text */
      if (!sb_append(&out, p, 1)) goto nomem;
      scan_shell(&sh, p, 1);
      p++;
      continue;
    }
    const char *name = p + 2;
    size_t n = (size_t)(close - name);
    size_t whole = (size_t)(close + 1 - p);
    if (ours(name, n) && shell_unsafe(&sh)) {
      say_problem(problem, "", p, whole,
                  " stands inside $(...), $((...)), `...` or after a here-document (<<), where "
                  "the shell reads text twice and quoting cannot keep a value one word: pass it "
                  "in \"env\" and use \"$NAME\" there");
      free(out.data);
      return NULL;
    }
    /* "$PREFIX${config.x}": the value must not lengthen the shell's variable name */
    if (sh.in_name && ours(name, n) && !sb_puts(&out, "\"\"")) goto nomem;
    var_result r = check_only && ours(name, n)
                       ? VAR_RESOLVED
                       : resolve(&out, name, n, config, context, task_id, tenant, sh.q);
    switch (r) {
      case VAR_RESOLVED: sh.word_start = sh.in_name = false; break;
      case VAR_FOREIGN: {
        if (!sb_append(&out, p, whole)) goto nomem;
        scan_shell(&sh, p, whole);
        /* The shell's own ${NAME...} with an operator word ("${FOO%)}", "${FOO:-${...}") is
         * parsed by rules the scanner does not follow: after one, nothing of ours is placed. */
        const char *odd = strpbrk(name, "()'\"`\\${");
        if (sh.q != QUOTE_OFF && odd != NULL && (size_t)(odd - name) < n) sh.unsure = true;
        break;
      }
      case VAR_UNRESOLVED:
        free(out.data);
        say_problem(problem, "unresolved variable ", p, whole, "");
        return NULL;
      case VAR_NOMEM: goto nomem;
    }
    p = close + 1;
  }
  return out.data;
nomem:
  free(out.data);
  return NULL;
}

char *cli_exec_expand(const char *text, const cJSON *config, const cJSON *context,
                      const char *task_id, const char *tenant, bool shell, char **problem) {
  return expand(text, config, context, task_id, tenant, shell, false, problem);
}

/* ---- the registry and one running command ---- */

typedef struct exec_run exec_run;

struct cli_exec {
  cli_output_fn output; /* NULL: write to our stdout/stderr */
  void *udata;
  exec_run *runs; /* every command whose handles are not all closed yet */
  size_t nruns;
  bool stopping; /* cli_exec_stop_all(): results are held, nothing new starts */
};

/* The stage data of a stage whose command was stopped (or never started) by cli_exec_stop_all:
 * its result waits for the engine's cancel. */
static char held_marker;

struct exec_run {
  cli_exec *x; /* NULL after cli_exec_free */
  exec_run *prev, *next;
  sc_stage_ctx *ctx; /* NULL once the stage finished or the engine gave up on it */
  char *stage;       /* the stage's name, for output that comes after ctx is gone */
  uv_process_t process;
  uv_pipe_t pipes[2]; /* the command's stdout and stderr */
  uv_timer_t grace;   /* SIGKILL after a cancel's grace period */
  int open_handles;
  int pid; /* also the process group id */
  bool exited, eof[2], cancelled, closing;
  bool held; /* stopped by cli_exec_stop_all: its result waits for the task's cancel */
  bool sweeping, swept, sweep_killed; /* what the command left in its group, after it exited */
  uint64_t sweep_started, group_gone_at;
  int64_t exit_status;
  int term_signal;
  uint64_t kill_grace_ms;
  strbuf partial[2]; /* an unfinished line per pipe */
  char tail[TAIL_LINES][TAIL_LINE_BYTES + 1];
  size_t tail_next, tail_count;
  char *tmpdir, *output_path, *context_path;
  char readbuf[READ_BYTES];
};

/* Removes a directory and what a command left in it (not following links). */
static void remove_tree(const char *path, int depth) {
  DIR *d = depth < 16 ? opendir(path) : NULL;
  if (d != NULL) {
    struct dirent *ent;
    while ((ent = readdir(d)) != NULL) {
      if (strcmp(ent->d_name, ".") == 0 || strcmp(ent->d_name, "..") == 0) continue;
      strbuf child = {0};
      if (!sb_puts(&child, path) || !sb_puts(&child, "/") || !sb_puts(&child, ent->d_name)) {
        free(child.data);
        continue;
      }
      struct stat st;
      if (lstat(child.data, &st) == 0 && S_ISDIR(st.st_mode))
        remove_tree(child.data, depth + 1);
      else
        unlink(child.data);
      free(child.data);
    }
    closedir(d);
  }
  rmdir(path);
}

static void run_free(exec_run *run) {
  cli_exec *x = run->x;
  if (x != NULL) {
    if (run->prev)
      run->prev->next = run->next;
    else
      x->runs = run->next;
    if (run->next) run->next->prev = run->prev;
    x->nruns--;
  }
  if (run->tmpdir != NULL) remove_tree(run->tmpdir, 0);
  free(run->tmpdir);
  free(run->output_path);
  free(run->context_path);
  free(run->partial[0].data);
  free(run->partial[1].data);
  free(run->stage);
  free(run);
}

static void on_handle_closed(uv_handle_t *h) {
  exec_run *run = h->data;
  if (--run->open_handles == 0) run_free(run);
}

/* Closes every handle of the run; it is freed when the last close callback has run. */
static void close_all(exec_run *run) {
  run->closing = true;
  uv_handle_t *handles[] = {(uv_handle_t *)&run->process, (uv_handle_t *)&run->pipes[0],
                            (uv_handle_t *)&run->pipes[1], (uv_handle_t *)&run->grace};
  for (size_t i = 0; i < sizeof(handles) / sizeof(handles[0]); i++)
    if (!uv_is_closing(handles[i])) uv_close(handles[i], on_handle_closed);
}

static void signal_group(exec_run *run, int sig) {
  if (run->pid > 0) kill(-run->pid, sig);
}

/* ---- output ---- */

/* Keeps a line for a failure message. A NUL byte would end the message early, so it becomes '?';
 * bytes that are not UTF-8 are left to the event writer, which writes U+FFFD for each. Cut at
 * TAIL_LINE_BYTES, not inside a UTF-8 sequence. */
static void keep_tail(exec_run *run, const char *line, size_t len) {
  if (len > TAIL_LINE_BYTES) {
    len = TAIL_LINE_BYTES;
    while (len > 0 && ((unsigned char)line[len] & 0xC0) == 0x80)
      len--;
  }
  char *to = run->tail[run->tail_next];
  for (size_t i = 0; i < len; i++)
    to[i] = line[i] == '\0' ? '?' : line[i];
  to[len] = '\0';
  run->tail_next = (run->tail_next + 1) % TAIL_LINES;
  if (run->tail_count < TAIL_LINES) run->tail_count++;
}

/* line is NUL-terminated at len. */
static void emit_line(exec_run *run, int fd, const char *line, size_t len) {
  keep_tail(run, line, len);
  cli_exec *x = run->x;
  if (x == NULL) return;
  if (x->output != NULL) {
    x->output(run->stage, fd, line, len, x->udata);
    return;
  }
  FILE *f = fd == 1 ? stdout : stderr;
  fprintf(f, "[%s] ", run->stage);
  fwrite(line, 1, len, f);
  fputc('\n', f);
  fflush(f);
}

/* Splits what a pipe gave into lines; the piece after the last '\n' waits for the next read. */
static void feed(exec_run *run, int i, char *data, size_t n) {
  strbuf *pending = &run->partial[i];
  int fd = i + 1;
  while (n > 0) {
    char *nl = memchr(data, '\n', n);
    size_t take = nl ? (size_t)(nl - data) : n;
    if (pending->len + take > LINE_MAX_BYTES) {
      size_t room = LINE_MAX_BYTES - pending->len;
      if (sb_append(pending, data, room)) emit_line(run, fd, pending->data, pending->len);
      pending->len = 0;
      data += room;
      n -= room;
      continue;
    }
    if (nl == NULL) {
      if (!sb_append(pending, data, take)) pending->len = 0; /* out of memory: the piece is lost */
      return;
    }
    if (pending->len == 0) {
      *nl = '\0'; /* our own read buffer */
      emit_line(run, fd, data, take);
    } else {
      if (sb_append(pending, data, take)) emit_line(run, fd, pending->data, pending->len);
      pending->len = 0;
    }
    data += take + 1;
    n -= take + 1;
  }
}

/* The kept lines, oldest first, after "; last output:\n"; nothing when there are none. */
static void append_tail(exec_run *run, strbuf *msg) {
  if (run->tail_count == 0) return;
  sb_puts(msg, "; last output:");
  size_t first = (run->tail_next + TAIL_LINES - run->tail_count) % TAIL_LINES;
  for (size_t k = 0; k < run->tail_count; k++) {
    sb_puts(msg, "\n");
    sb_puts(msg, run->tail[(first + k) % TAIL_LINES]);
  }
}

/* ---- finishing ---- */

static const char *signal_name(int sig) {
  switch (sig) {
    case SIGHUP: return "SIGHUP";
    case SIGINT: return "SIGINT";
    case SIGQUIT: return "SIGQUIT";
    case SIGILL: return "SIGILL";
    case SIGABRT: return "SIGABRT";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGKILL: return "SIGKILL";
    case SIGUSR1: return "SIGUSR1";
    case SIGSEGV: return "SIGSEGV";
    case SIGUSR2: return "SIGUSR2";
    case SIGPIPE: return "SIGPIPE";
    case SIGALRM: return "SIGALRM";
    case SIGTERM: return "SIGTERM";
    default: return NULL;
  }
}

static bool exit_code_listed(const cJSON *params, int64_t status) {
  const cJSON *codes = cJSON_GetObjectItemCaseSensitive(params, "no_retry_exit_codes");
  const cJSON *c;
  cJSON_ArrayForEach(c, codes) {
    if (cJSON_IsNumber(c) && c->valuedouble == (double)status) return true;
  }
  return false;
}

/* Reads $SC_OUTPUT: 0 with *text (NULL when the file is gone), or -1 with errno set. */
static int read_file(const char *path, char **text, size_t *len) {
  *text = NULL;
  *len = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT ? 0 : -1;
  strbuf b = {0};
  char chunk[16384];
  ssize_t n;
  while ((n = read(fd, chunk, sizeof(chunk))) != 0) {
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 || b.len + (size_t)n > OUTPUT_MAX_BYTES || !sb_append(&b, chunk, (size_t)n)) {
      if (n > 0 && b.len + (size_t)n > OUTPUT_MAX_BYTES) errno = EFBIG;
      int saved = errno ? errno : ENOMEM;
      close(fd);
      free(b.data);
      errno = saved;
      return -1;
    }
  }
  close(fd);
  *text = b.data;
  *len = b.len;
  return 0;
}

static void complete_from_output(exec_run *run, sc_stage_ctx *ctx) {
  char *text;
  size_t len;
  char msg[512];
  if (read_file(run->output_path, &text, &len) != 0) {
    snprintf(msg, sizeof(msg), "cannot read SC_OUTPUT of stage %s: %s", run->stage,
             strerror(errno));
    sc_stage_fail(ctx, SC_EIO, msg, false);
    return;
  }
  size_t blank = 0;
  while (blank < len &&
         (text[blank] == ' ' || text[blank] == '\t' || text[blank] == '\r' || text[blank] == '\n'))
    blank++;
  if (blank == len) {
    free(text);
    sc_stage_complete(ctx, NULL);
    return;
  }
  /* The strict parser: what it accepts is valid UTF-8 JSON, fit to go into the events. */
  cJSON *output = NULL;
  cli_jsonpos *positions = NULL;
  cli_jsonpos_at at;
  char why[256];
  int rc = cli_jsonpos_parse(text, len, &output, &positions, &at, why, sizeof(why));
  cli_jsonpos_free(positions);
  free(text);
  if (rc != 0 || !cJSON_IsObject(output)) {
    cJSON_Delete(output);
    if (rc != 0)
      snprintf(msg, sizeof(msg), "SC_OUTPUT of stage %s is not valid JSON: %u:%u: %s", run->stage,
               (unsigned)at.line, (unsigned)at.column, why);
    else
      snprintf(msg, sizeof(msg), "SC_OUTPUT of stage %s is not a JSON object", run->stage);
    sc_stage_fail(ctx, rc == SC_ENOMEM ? SC_ENOMEM : SC_EPARSE, msg, rc == SC_ENOMEM);
    return;
  }
  sc_stage_complete(ctx, output);
}

static void deliver(exec_run *run, sc_stage_ctx *ctx) {
  if (run->term_signal == 0 && run->exit_status == 0) {
    complete_from_output(run, ctx);
    return;
  }
  strbuf msg = {0};
  char head[96];
  bool retryable = true;
  if (run->term_signal != 0) {
    const char *name = signal_name(run->term_signal);
    snprintf(head, sizeof(head), "killed by signal %d%s%s%s", run->term_signal, name ? " (" : "",
             name ? name : "", name ? ")" : "");
  } else {
    snprintf(head, sizeof(head), "exit status %lld", (long long)run->exit_status);
    retryable = !exit_code_listed(sc_stage_params(ctx), run->exit_status);
  }
  sb_puts(&msg, head);
  append_tail(run, &msg);
  sc_stage_fail(ctx, SC_EIO, msg.data ? msg.data : head, retryable);
  free(msg.data);
}

/* Whether /proc/PID/stat says the process is a zombie (dead, waiting to be reaped by whoever
 * inherited it, which may take a while). */
static bool is_zombie(const char *pid) {
  char path[64], buf[512];
  snprintf(path, sizeof(path), "/proc/%s/stat", pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return true; /* gone meanwhile */
  ssize_t n = read(fd, buf, sizeof(buf) - 1);
  close(fd);
  if (n <= 0) return true;
  buf[n] = '\0';
  const char *paren = strrchr(buf, ')'); /* the command name may hold anything */
  return paren != NULL && paren[1] == ' ' && paren[2] == 'Z';
}

/* Whether a process of the command's group still runs. kill(-pgid, 0) also counts zombies, and
 * a zombie holds no pipe and does no work; where /proc tells, they are left out. */
static bool group_alive(const exec_run *run) {
  if (run->pid <= 0 || kill(-run->pid, 0) != 0) return false;
  DIR *d = opendir("/proc");
  if (d == NULL) return true;
  bool alive = false;
  struct dirent *ent;
  while (!alive && (ent = readdir(d)) != NULL) {
    if (ent->d_name[0] < '1' || ent->d_name[0] > '9') continue;
    pid_t pid = (pid_t)strtol(ent->d_name, NULL, 10);
    alive = getpgid(pid) == run->pid && !is_zombie(ent->d_name);
  }
  closedir(d);
  return alive;
}

static void start_sweep(exec_run *run);

/* The command is done when its process has exited and both pipes reached end of file, in
 * whichever order those come. Whatever it left running in its group is then ended: SIGTERM,
 * SIGKILL after the grace period (the sweep); the run is freed when the group is gone. */
static void maybe_finish(exec_run *run) {
  if (run->closing || !run->exited || !run->eof[0] || !run->eof[1]) return;
  /* A cancelled command's leader is gone and its pipes are closed: whatever is left of its group
   * is an orphan of a stage nobody waits for. */
  if (run->cancelled) signal_group(run, SIGKILL);
  sc_stage_ctx *ctx = run->ctx;
  run->ctx = NULL;
  if (ctx != NULL && run->held) {
    sc_stage_set_data(ctx, &held_marker); /* no result: the cancel that follows finishes it */
    ctx = NULL;
  }
  if (ctx != NULL) deliver(run, ctx);
  if (!run->cancelled && !run->swept && group_alive(run)) {
    start_sweep(run);
    return;
  }
  close_all(run);
}

/* Gives up the pipes a process that left the group may still hold: nothing more is read. */
static void abandon_pipes(exec_run *run) {
  for (int i = 0; i < 2; i++) {
    if (run->eof[i]) continue;
    uv_read_stop((uv_stream_t *)&run->pipes[i]);
    if (run->partial[i].len > 0) emit_line(run, i + 1, run->partial[i].data, run->partial[i].len);
    run->partial[i].len = 0;
    run->eof[i] = true;
  }
}

static void on_sweep(uv_timer_t *timer) {
  exec_run *run = timer->data;
  if (run->closing) return;
  uint64_t now = uv_now(timer->loop), waited = now - run->sweep_started;
  if (group_alive(run)) {
    if (waited < run->kill_grace_ms) return;
    if (!run->sweep_killed) {
      signal_group(run, SIGKILL);
      run->sweep_killed = true;
    }
    if (waited < run->kill_grace_ms + SWEEP_GIVE_UP_MS) return;
  } else {
    if (run->group_gone_at == 0) run->group_gone_at = now;
    if (now - run->group_gone_at < SWEEP_SETTLE_MS && !(run->eof[0] && run->eof[1])) return;
  }
  uv_timer_stop(timer);
  run->swept = true;
  abandon_pipes(run);
  maybe_finish(run);
}

/* The command exited and left processes in its group (a job sent to the background, a daemon):
 * they get SIGTERM now and SIGKILL after the grace period. The stage's result does not wait for
 * them longer than that, even when one of them keeps the output pipes open. */
static void start_sweep(exec_run *run) {
  if (run->sweeping || run->closing) return;
  run->sweeping = true;
  run->sweep_started = uv_now(run->grace.loop);
  signal_group(run, SIGTERM);
  uv_timer_start(&run->grace, on_sweep, SWEEP_TICK_MS, SWEEP_TICK_MS);
}

static void on_process_exit(uv_process_t *process, int64_t exit_status, int term_signal) {
  exec_run *run = process->data;
  run->exited = true;
  run->exit_status = exit_status;
  run->term_signal = term_signal;
  /* Pipes still open: their last bytes are on the way, or a process holds them, in the group or
   * one that left it (setsid); the sweep waits a moment, then ends the group and gives them up. */
  if (!run->cancelled && (!run->eof[0] || !run->eof[1])) start_sweep(run);
  maybe_finish(run);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  exec_run *run = h->data;
  /* One buffer serves both pipes: libuv hands each read to on_read before the next alloc. */
  *buf = uv_buf_init(run->readbuf, sizeof(run->readbuf));
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  exec_run *run = stream->data;
  int i = stream == (uv_stream_t *)&run->pipes[0] ? 0 : 1;
  if (nread > 0) {
    feed(run, i, buf->base, (size_t)nread);
    return;
  }
  if (nread == 0) return;
  /* End of file, or an error: either way nothing more comes. A last line without '\n' counts. */
  uv_read_stop(stream);
  strbuf *pending = &run->partial[i];
  if (pending->len > 0) {
    emit_line(run, i + 1, pending->data, pending->len);
    pending->len = 0;
  }
  run->eof[i] = true;
  maybe_finish(run);
}

/* SIGKILL came too late for a process that left the group and holds the pipes: give them up. */
static void on_give_up(uv_timer_t *timer) {
  exec_run *run = timer->data;
  if (run->closing || !run->exited) return;
  abandon_pipes(run);
  maybe_finish(run);
}

static void on_grace(uv_timer_t *timer) {
  exec_run *run = timer->data;
  if (run->closing) return;
  signal_group(run, SIGKILL);
  uv_timer_start(timer, on_give_up, SWEEP_GIVE_UP_MS, 0);
}

/* ---- starting ---- */

/* Fails ctx (not retryable) with a printf-style message; the kind's start then returns 0. */
static int refuse(sc_stage_ctx *ctx, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

static int refuse(sc_stage_ctx *ctx, int code, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  sc_stage_fail(ctx, code, msg, false);
  return SC_OK;
}

/* Expands one text of the stage; NULL after failing the stage (what names the field). */
static char *expand_for(sc_stage_ctx *ctx, const char *text, const char *what, bool shell) {
  sc_task *t = sc_stage_task(ctx);
  char *problem = NULL;
  char *out =
      cli_exec_expand(text, sc_stage_config(ctx), sc_stage_context(ctx), t ? sc_task_id(t) : NULL,
                      t ? sc_task_tenant(t) : NULL, shell, &problem);
  if (out != NULL) return out;
  if (problem != NULL)
    refuse(ctx, SC_EPLAN, "%s in \"%s\"", problem, what);
  else
    sc_stage_fail(ctx, SC_ENOMEM, "out of memory expanding variables", true);
  free(problem);
  return NULL;
}

/* The variables the kind sets; params.env may not replace them. */
static const char *const own_vars[] = {"SC_TASK_ID", "SC_TENANT",  "SC_STAGE",  "SC_ATTEMPT",
                                       "SC_MODE",    "SC_CONTEXT", "SC_OUTPUT", "SC_CONTEXT_FILE"};
#define OWN_VAR_COUNT (sizeof(own_vars) / sizeof(own_vars[0]))

/* A member of the stage object, or of its "params" (the factory merges the two). */
static const cJSON *param(const cJSON *stage, const cJSON *params, const char *name) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(stage, name);
  return v != NULL ? v : cJSON_GetObjectItemCaseSensitive(params, name);
}

static bool is_integer_in(const cJSON *v, double min, double max) {
  return cJSON_IsNumber(v) && v->valuedouble >= min && v->valuedouble <= max &&
         v->valuedouble == (double)(int64_t)v->valuedouble;
}

/* Fills why and *bad, returns false. */
static bool wrong(const cJSON **bad, const cJSON *v, char *why, size_t len, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 5, 6)))
#endif
    ;

static bool wrong(const cJSON **bad, const cJSON *v, char *why, size_t len, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, len, fmt, ap);
  va_end(ap);
  *bad = v;
  return false;
}

bool cli_exec_check(const cJSON *stage, const cJSON *params, const cJSON **bad, char *why,
                    size_t len) {
  *bad = NULL;
  const cJSON *v = param(stage, params, "run");
  if (!cJSON_IsString(v) || v->valuestring[0] == '\0')
    return wrong(bad, v, why, len, "\"run\" is required (a non-empty shell command)");
  const cJSON *commands[] = {v, param(stage, params, "compensate")};
  if (commands[1] != NULL && (!cJSON_IsString(commands[1]) || commands[1]->valuestring[0] == '\0'))
    return wrong(bad, commands[1], why, len, "\"compensate\" must be a non-empty shell command");
  for (size_t i = 0; i < 2 && commands[i] != NULL; i++) {
    char *problem = NULL,
         *text = expand(commands[i]->valuestring, NULL, NULL, NULL, NULL, true, true, &problem);
    free(text);
    if (problem != NULL) {
      wrong(bad, commands[i], why, len, "\"%s\": %s", i ? "compensate" : "run", problem);
      free(problem);
      return false;
    }
  }
  v = param(stage, params, "kill_grace_ms");
  if (v != NULL && !is_integer_in(v, 0, 86400000.0))
    return wrong(bad, v, why, len, "\"kill_grace_ms\" must be an integer 0..86400000");
  v = param(stage, params, "no_retry_exit_codes");
  if (v != NULL) {
    const cJSON *c;
    if (!cJSON_IsArray(v))
      return wrong(bad, v, why, len, "\"no_retry_exit_codes\" must be an array of integers");
    cJSON_ArrayForEach(c, v) {
      if (!is_integer_in(c, 0, 255))
        return wrong(bad, c, why, len,
                     "\"no_retry_exit_codes\" must be an array of integers 0..255");
    }
  }
  v = param(stage, params, "cwd");
  if (v != NULL && (!cJSON_IsString(v) || v->valuestring[0] == '\0'))
    return wrong(bad, v, why, len, "\"cwd\" must be a non-empty string");
  v = param(stage, params, "env");
  if (v == NULL) return true;
  if (!cJSON_IsObject(v)) return wrong(bad, v, why, len, "\"env\" must be an object");
  const cJSON *m;
  cJSON_ArrayForEach(m, v) {
    if (m->string[0] == '\0' || strchr(m->string, '=') != NULL)
      return wrong(bad, m, why, len, "\"env\" has an invalid variable name \"%s\"", m->string);
    for (size_t i = 0; i < OWN_VAR_COUNT; i++)
      if (strcmp(m->string, own_vars[i]) == 0)
        return wrong(bad, m, why, len, "\"env\" may not set %s (the exec kind sets it)", m->string);
  }
  return true;
}

/* True when the "NAME=value" entry of our environment is replaced by the stage's. */
static bool replaced(const char *entry, const cJSON *env) {
  size_t n = strcspn(entry, "=");
  for (size_t i = 0; i < OWN_VAR_COUNT; i++)
    if (name_is(entry, n, own_vars[i])) return true;
  const cJSON *m;
  cJSON_ArrayForEach(m, env) {
    if (name_is(entry, n, m->string)) return true;
  }
  return false;
}

static char *env_entry(const char *name, const char *value) {
  strbuf b = {0};
  if (!sb_puts(&b, name) || !sb_puts(&b, "=") || !sb_puts(&b, value)) {
    free(b.data);
    return NULL;
  }
  return b.data;
}

static void env_free(char **env) {
  if (env == NULL) return;
  for (char **p = env; *p != NULL; p++)
    free(*p);
  free(env);
}

/* $SC_CONTEXT_FILE: the context as JSON, beside $SC_OUTPUT. 0, or -1 after failing the stage. */
static int write_context(sc_stage_ctx *ctx, exec_run *run, const char *json) {
  strbuf path = {0};
  if (!sb_puts(&path, run->tmpdir) || !sb_puts(&path, "/context.json")) {
    free(path.data);
    sc_stage_fail(ctx, SC_ENOMEM, "out of memory", true);
    return -1;
  }
  run->context_path = path.data;
  size_t len = strlen(json), done = 0;
  int fd = open(run->context_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  int err = fd < 0 ? errno : 0;
  while (err == 0 && done < len) {
    ssize_t w = write(fd, json + done, len - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0)
      err = w < 0 ? errno : EIO;
    else
      done += (size_t)w;
  }
  if (fd >= 0) close(fd);
  if (err != 0) {
    char msg[512];
    snprintf(msg, sizeof(msg), "stage %s: cannot write %s: %s", sc_stage_name(ctx),
             run->context_path, strerror(err));
    sc_stage_fail(ctx, SC_EIO, msg, true);
    return -1;
  }
  return 0;
}

/* The command's environment: ours, then the SC_* variables, then params.env. NULL after failing
 * the stage. */
static char **build_env(sc_stage_ctx *ctx, exec_run *run, const cJSON *env_params) {
  size_t ours = 0, extra = (size_t)cJSON_GetArraySize(env_params);
  while (environ != NULL && environ[ours] != NULL)
    ours++;
  char **env = calloc(ours + OWN_VAR_COUNT + extra + 1, sizeof(*env));
  if (env == NULL) goto nomem;
  size_t n = 0;
  for (size_t i = 0; i < ours; i++)
    if (!replaced(environ[i], env_params) && (env[n++] = strdup(environ[i])) == NULL) goto nomem;
  sc_task *t = sc_stage_task(ctx);
  const char *tenant = t ? sc_task_tenant(t) : NULL;
  char attempt[16];
  snprintf(attempt, sizeof(attempt), "%u", sc_stage_attempt(ctx));
  char *context = cJSON_PrintUnformatted(sc_stage_context(ctx));
  if (context == NULL) goto nomem;
  if (write_context(ctx, run, context) < 0) {
    free(context);
    env_free(env);
    return NULL; /* the stage failed */
  }
  /* A string in the environment is limited (128 KiB on Linux); past that only the file has it. */
  const char *values[OWN_VAR_COUNT] = {
      t ? sc_task_id(t) : "", tenant ? tenant : "",
      sc_stage_name(ctx),     attempt,
      sc_stage_mode(ctx),     strlen(context) <= CONTEXT_ENV_MAX ? context : NULL,
      run->output_path,       run->context_path};
  bool ok = true;
  for (size_t i = 0; i < OWN_VAR_COUNT && ok; i++)
    ok = values[i] == NULL || (env[n++] = env_entry(own_vars[i], values[i])) != NULL;
  free(context);
  if (!ok) goto nomem;
  const cJSON *m;
  cJSON_ArrayForEach(m, env_params) {
    char what[300];
    snprintf(what, sizeof(what), "env.%s", m->string);
    char *value = NULL;
    if (cJSON_IsString(m)) {
      if ((value = expand_for(ctx, m->valuestring, what, false)) == NULL) {
        env_free(env);
        return NULL; /* the stage failed */
      }
    } else if (!cJSON_IsNull(m) && (value = cJSON_PrintUnformatted(m)) == NULL) {
      goto nomem;
    }
    env[n++] = env_entry(m->string, value ? value : "");
    free(value);
    if (env[n - 1] == NULL) goto nomem;
  }
  return env;
nomem:
  env_free(env);
  sc_stage_fail(ctx, SC_ENOMEM, "out of memory building the command's environment", true);
  return NULL;
}

/* Where the stages' private directories go: $TMPDIR when set; else a memory-backed directory
 * ($XDG_RUNTIME_DIR, /dev/shm) when there is one we may write to; else /tmp. Creating and removing
 * three files per stage on a disk file system costs more than starting the command itself (on
 * ext4 here, about 0.4 ms of the 1.2 ms a spawn takes); in memory it is a few microseconds. */
static const char *work_base(void) {
  const char *base = getenv("TMPDIR");
  if (base != NULL && base[0] != '\0') return base;
  const char *const memory[] = {getenv("XDG_RUNTIME_DIR"), "/dev/shm"};
  for (size_t i = 0; i < sizeof(memory) / sizeof(memory[0]); i++) {
    struct stat st;
    if (memory[i] != NULL && memory[i][0] == '/' && stat(memory[i], &st) == 0 &&
        S_ISDIR(st.st_mode) && access(memory[i], W_OK | X_OK) == 0)
      return memory[i];
  }
  return "/tmp";
}

/* A private directory with an empty output file for $SC_OUTPUT. */
static int make_output(sc_stage_ctx *ctx, exec_run *run) {
  const char *base = work_base();
  strbuf dir = {0};
  if (!sb_puts(&dir, base) || !sb_puts(&dir, "/stagecoach-exec-XXXXXX")) {
    free(dir.data);
    sc_stage_fail(ctx, SC_ENOMEM, "out of memory", true);
    return -1;
  }
  if (mkdtemp(dir.data) == NULL) {
    char msg[512];
    snprintf(msg, sizeof(msg), "stage %s: cannot create a temporary directory in %s: %s",
             sc_stage_name(ctx), base, strerror(errno));
    free(dir.data);
    sc_stage_fail(ctx, SC_EIO, msg, true);
    return -1;
  }
  run->tmpdir = dir.data;
  strbuf path = {0};
  if (!sb_puts(&path, run->tmpdir) || !sb_puts(&path, "/output.json")) {
    free(path.data);
    sc_stage_fail(ctx, SC_ENOMEM, "out of memory", true);
    return -1;
  }
  run->output_path = path.data;
  int fd = open(run->output_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    char msg[512];
    snprintf(msg, sizeof(msg), "stage %s: cannot create %s: %s", sc_stage_name(ctx),
             run->output_path, strerror(errno));
    sc_stage_fail(ctx, SC_EIO, msg, true);
    return -1;
  }
  close(fd);
  return 0;
}

static void run_link(cli_exec *x, exec_run *run) {
  run->x = x;
  run->next = x->runs;
  if (x->runs) x->runs->prev = run;
  x->runs = run;
  x->nruns++;
}

/* Spawns the command; on failure the stage is failed and the run closes itself. */
static void spawn(sc_stage_ctx *ctx, exec_run *run, const char *command, const char *cwd,
                  char **env) {
  uv_loop_t *loop = sc_stage_loop(ctx);
  uv_pipe_init(loop, &run->pipes[0], 0);
  uv_pipe_init(loop, &run->pipes[1], 0);
  uv_timer_init(loop, &run->grace);
  run->pipes[0].data = run->pipes[1].data = run->grace.data = run->process.data = run;
  run->open_handles = 4; /* uv_spawn initializes the process handle also when it fails */
  char *args[] = {"/bin/sh", "-c", (char *)command, NULL};
  uv_stdio_container_t stdio[3];
  stdio[0].flags = UV_IGNORE; /* libuv opens /dev/null in the child */
  stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
  stdio[1].data.stream = (uv_stream_t *)&run->pipes[0];
  stdio[2].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
  stdio[2].data.stream = (uv_stream_t *)&run->pipes[1];
  uv_process_options_t options;
  memset(&options, 0, sizeof(options));
  options.exit_cb = on_process_exit;
  options.file = args[0];
  options.args = args;
  options.env = env;
  options.cwd = cwd;
  options.flags = UV_PROCESS_DETACHED; /* its own process group, signalled as a whole */
  options.stdio_count = 3;
  options.stdio = stdio;
  int rc = uv_spawn(loop, &run->process, &options);
  if (rc < 0) {
    bool transient = rc == UV_EAGAIN || rc == UV_ENOMEM || rc == UV_EMFILE || rc == UV_ENFILE;
    char msg[1024];
    snprintf(msg, sizeof(msg), "stage %s: cannot start /bin/sh%s%s%s: %s", run->stage,
             cwd ? " in \"" : "", cwd ? cwd : "", cwd ? "\"" : "", uv_strerror(rc));
    sc_stage_fail(ctx, SC_EIO, msg, transient);
    close_all(run);
    return;
  }
  run->pid = run->process.pid;
  uv_read_start((uv_stream_t *)&run->pipes[0], on_alloc, on_read);
  uv_read_start((uv_stream_t *)&run->pipes[1], on_alloc, on_read);
  run->ctx = ctx;
  sc_stage_set_data(ctx, run);
}

/* start and compensate: run params[field]. */
static int exec_begin(sc_stage_ctx *ctx, cli_exec *x, const char *field) {
  const char *stage = sc_stage_name(ctx);
  const cJSON *params = sc_stage_params(ctx);
  const cJSON *command = cJSON_GetObjectItemCaseSensitive(params, field), *bad;
  char why[256];
  if (!cli_exec_check(NULL, params, &bad, why, sizeof(why)))
    return refuse(ctx, SC_EPLAN, "stage %s: %s", stage, why);
  if (command == NULL) return refuse(ctx, SC_EPLAN, "stage %s has no compensate command", stage);
  const cJSON *grace = cJSON_GetObjectItemCaseSensitive(params, "kill_grace_ms");
  uint64_t grace_ms = grace ? (uint64_t)grace->valuedouble : DEFAULT_GRACE_MS;
  const cJSON *cwd_param = cJSON_GetObjectItemCaseSensitive(params, "cwd");
  const cJSON *env_params = cJSON_GetObjectItemCaseSensitive(params, "env");
  char *expanded = NULL, *cwd = NULL, **env = NULL;
  exec_run *run = NULL;
  if ((expanded = expand_for(ctx, command->valuestring, field, true)) == NULL) goto out;
  if (cwd_param != NULL && (cwd = expand_for(ctx, cwd_param->valuestring, "cwd", false)) == NULL)
    goto out;
  if ((run = calloc(1, sizeof(*run))) == NULL || (run->stage = strdup(stage)) == NULL) {
    sc_stage_fail(ctx, SC_ENOMEM, "out of memory", true);
    goto out;
  }
  run->kill_grace_ms = grace_ms;
  if (make_output(ctx, run) < 0) goto out;
  if ((env = build_env(ctx, run, env_params)) == NULL) goto out;
  run_link(x, run);
  spawn(ctx, run, expanded, cwd, env);
  run = NULL; /* the handles own it now */
out:
  if (run != NULL) run_free(run); /* not linked yet */
  env_free(env);
  free(expanded);
  free(cwd);
  return SC_OK;
}

/* Whether the stage's task can still be cancelled (a rollback cannot: it runs to its end). */
static bool cancellable(sc_stage_ctx *ctx) {
  sc_task *t = sc_stage_task(ctx);
  return t != NULL && sc_transition_allowed(sc_task_get_status(t), SC_TASK_CANCELLED);
}

static int exec_start(sc_stage_ctx *ctx, void *udata) {
  cli_exec *x = udata;
  if (x->stopping && cancellable(ctx)) { /* interrupted: the cancel that follows ends it */
    sc_stage_set_data(ctx, &held_marker);
    return SC_OK;
  }
  return exec_begin(ctx, x, "run");
}

static int exec_compensate(sc_stage_ctx *ctx, void *udata) {
  cli_exec *x = udata;
  if (x->stopping && cancellable(ctx)) {
    sc_stage_set_data(ctx, &held_marker);
    return SC_OK;
  }
  return exec_begin(ctx, x, "compensate");
}

/* The engine gave up on the stage (timeout, task cancel, engine teardown). The stage is finished
 * here rather than when the process exits: sc_engine_free frees the contexts it gave up on, so a
 * later finish could reach freed memory. The process is still signalled and waited for; the loop
 * runs until cli_exec_running() is 0. */
static void exec_cancel(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  if (sc_stage_get_data(ctx) == &held_marker) {
    sc_stage_set_data(ctx, NULL);
    char msg[256];
    snprintf(msg, sizeof(msg), "stage %s cancelled: its command was stopped", sc_stage_name(ctx));
    sc_stage_fail(ctx, SC_ECANCELLED, msg, false);
    return;
  }
  exec_run *run = sc_stage_get_data(ctx);
  if (run == NULL || run->ctx != ctx) return;
  run->ctx = NULL;
  run->cancelled = true;
  char msg[256];
  snprintf(msg, sizeof(msg),
           "stage %s cancelled: sent SIGTERM to process group %d (SIGKILL after %llu ms)",
           run->stage, run->pid, (unsigned long long)run->kill_grace_ms);
  if (!run->closing) {
    signal_group(run, SIGTERM);
    uv_timer_start(&run->grace, on_grace, run->kill_grace_ms, 0);
  }
  sc_stage_fail(ctx, SC_ECANCELLED, msg, false);
}

/* ---- the registry ---- */

int cli_exec_register(sc_engine *e, cli_output_fn output, void *udata, cli_exec **out) {
  static const sc_stage_kind kind = {SC_STAGE_KIND_VERSION, exec_start, exec_cancel,
                                     exec_compensate};
  if (out != NULL) *out = NULL;
  if (e == NULL || out == NULL) return sc_error_set(SC_EINVAL, "cli_exec_register: NULL argument");
  cli_exec *x = calloc(1, sizeof(*x));
  if (x == NULL) return sc_error_set(SC_ENOMEM, "out of memory");
  x->output = output;
  x->udata = udata;
  int rc = sc_engine_register_kind(e, "exec", &kind, x);
  if (rc < 0) {
    free(x);
    return rc;
  }
  *out = x;
  return SC_OK;
}

size_t cli_exec_running(const cli_exec *x) {
  return x ? x->nruns : 0;
}

size_t cli_exec_stopping(const cli_exec *x) {
  size_t n = 0;
  for (const exec_run *run = x ? x->runs : NULL; run != NULL; run = run->next)
    n += run->held;
  return n;
}

void cli_exec_stop_all(cli_exec *x) {
  if (x == NULL) return;
  x->stopping = true;
  for (exec_run *run = x->runs; run != NULL; run = run->next) {
    if (run->closing || run->exited || run->cancelled || run->sweeping || run->ctx == NULL ||
        !cancellable(run->ctx))
      continue;
    run->held = true;
    signal_group(run, SIGTERM);
    uv_timer_start(&run->grace, on_grace, run->kill_grace_ms, 0);
  }
}

void cli_exec_kill_all(cli_exec *x) {
  if (x == NULL) return;
  for (exec_run *run = x->runs; run != NULL; run = run->next)
    if (!run->closing) signal_group(run, SIGKILL);
}

void cli_exec_free(cli_exec *x) {
  if (x == NULL) return;
  /* Normally none is left (the caller ran the loop until cli_exec_running() was 0); any that is
   * frees itself when its handles close and passes nothing on any more. */
  for (exec_run *run = x->runs, *next; run != NULL; run = next) {
    next = run->next;
    if (!run->closing) signal_group(run, SIGKILL);
    run->x = NULL;
    run->prev = run->next = NULL;
  }
  free(x);
}
