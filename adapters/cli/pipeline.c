/* The pipeline file loader of the `stagecoach` command: reads a pipeline file, checks its JSON, its
 * members and both configs (with the engine's own stage factory and kinds), and reports every
 * mistake as FILE:LINE:COLUMN: what, so that an operator can go straight to it. */
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "jsonpos.h"
#include "../../events/internal.h"

/* One mistake to report. */
typedef struct complaint {
  cli_jsonpos_at at;
  size_t seq; /* the order found, to break ties */
  char *text;
} complaint;

/* Every mistake is collected, then written sorted by position: one run of `validate` shows
 * them all (except that the factory stops at the first refusal of each config). */
typedef struct loader {
  const cli_jsonpos *positions;
  const char *text; /* the file, for a position inside a string */
  size_t len;
  complaint *list;
  size_t n, cap;
  bool oom;
} loader;

/* The members of the top level that were accepted. */
typedef struct top {
  cJSON *plan, *tenant, *config, *previous_config;
} top;

/* ---- reading ---- */

/* A pipeline file is a few kilobytes; past this it is the wrong file (/dev/zero, a log). */
#define PIPELINE_MAX_BYTES (64u * 1024 * 1024)

/* ---- complaints ---- */

static cli_jsonpos_at value_at(const loader *l, const cJSON *item) {
  cli_jsonpos_at at = {1, 1};
  cli_jsonpos_value(l->positions, item, &at);
  return at;
}

/* Where a member's name starts; the value's position for anything else. */
static cli_jsonpos_at key_at(const loader *l, const cJSON *item) {
  cli_jsonpos_at at;
  return cli_jsonpos_key(l->positions, item, &at) ? at : value_at(l, item);
}

static void complain(loader *l, cli_jsonpos_at at, const char *fmt, ...) SC__PRINTF(3, 4);
static void complain(loader *l, cli_jsonpos_at at, const char *fmt, ...) {
  char text[1024];
  SC__FORMAT_ARGS(text, fmt);
  if (!sc__grow(&l->list, &l->cap, l->n + 1, sizeof(*l->list), 8)) {
    l->oom = true;
    return;
  }
  char *copy = strdup(text);
  if (copy == NULL) {
    l->oom = true;
    return;
  }
  l->list[l->n] = (complaint){at, l->n, copy};
  l->n++;
}

static int by_position(const void *a, const void *b) {
  const complaint *x = a, *y = b;
  if (x->at.line != y->at.line) return x->at.line < y->at.line ? -1 : 1;
  if (x->at.column != y->at.column) return x->at.column < y->at.column ? -1 : 1;
  return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static void write_complaints(loader *l, const char *path, char *err, size_t errlen) {
  size_t off = 0;
  qsort(l->list, l->n, sizeof(*l->list), by_position);
  for (size_t i = 0; i < l->n; i++)
    sc__format_append(err, errlen, &off, "%s:%u:%u: %s\n", path, (unsigned)l->list[i].at.line,
                      (unsigned)l->list[i].at.column, l->list[i].text);
  if (l->oom) sc__format_append(err, errlen, &off, "%s: out of memory\n", path);
}

/* ---- JSON helpers ---- */

static const char *type_name(const cJSON *v) {
  if (cJSON_IsObject(v)) return "an object";
  if (cJSON_IsArray(v)) return "an array";
  if (cJSON_IsString(v)) return "a string";
  if (cJSON_IsNumber(v)) return "a number";
  if (cJSON_IsBool(v)) return "a boolean";
  return "null";
}

/* The member named by name[0 .. n) of an object; NULL when obj is not an object. */
static cJSON *member_n(const cJSON *obj, const char *name, size_t n) {
  if (!cJSON_IsObject(obj)) return NULL;
  for (cJSON *m = obj->child; m != NULL; m = m->next)
    if (m->string != NULL && strlen(m->string) == n && memcmp(m->string, name, n) == 0) return m;
  return NULL;
}

static cJSON *member(const cJSON *obj, const char *name) {
  return member_n(obj, name, strlen(name));
}

/* A member of the top level, detached and without its name: the caller owns it. */
static cJSON *detach(cJSON *root, cJSON *item) {
  cJSON_DetachItemViaPointer(root, item);
  cJSON_free(item->string);
  item->string = NULL;
  return item;
}

/* ---- the top level ---- */

static void check_members(loader *l, const cJSON *root, top *t) {
  memset(t, 0, sizeof(*t));
  if (!cJSON_IsObject(root)) {
    complain(l, value_at(l, root), "the top level must be an object with \"config\" (found %s)",
             type_name(root));
    return;
  }
  bool has_config = false;
  for (cJSON *m = root->child; m != NULL; m = m->next) {
    bool is_plan = strcmp(m->string, "plan") == 0;
    if (is_plan || strcmp(m->string, "tenant") == 0) {
      if (!cJSON_IsString(m))
        complain(l, value_at(l, m), "\"%s\" must be a string (found %s)", m->string, type_name(m));
      else if (is_plan)
        t->plan = m;
      else
        t->tenant = m;
    } else if (strcmp(m->string, "config") == 0) {
      has_config = true;
      if (cJSON_IsObject(m))
        t->config = m;
      else
        complain(l, value_at(l, m), "\"config\" must be an object with \"stages\" (found %s)",
                 type_name(m));
    } else if (strcmp(m->string, "previous_config") == 0) {
      if (cJSON_IsObject(m))
        t->previous_config = m;
      else if (!cJSON_IsNull(m))
        complain(l, value_at(l, m), "\"previous_config\" must be an object or null (found %s)",
                 type_name(m));
    } else {
      char name[96];
      complain(l, key_at(l, m),
               "unknown member %s (expected plan, tenant, config, previous_config)",
               cli_jsonpos_quote(name, sizeof(name), m->string));
    }
  }
  if (!has_config)
    complain(l, value_at(l, root), "\"config\" is required (an object with \"stages\")");
}

/* ---- the factory's refusals ---- */

/* Where a refused field of a stage is: the member's value ("retry.multiplier" is
 * stage.retry.multiplier); when it is absent, the nearest object on the way to it, at worst the
 * stage. */
static const cJSON *resolve(const cJSON *stage, const char *field) {
  if (!*field) return stage;
  const cJSON *whole = member(stage, field); /* a params member given at the stage level */
  if (whole != NULL) return whole;
  const cJSON *cur = stage;
  for (const char *seg = field;;) {
    const char *dot = strchr(seg, '.');
    const cJSON *next = member_n(cur, seg, dot ? (size_t)(dot - seg) : strlen(seg));
    if (next == NULL) break;
    cur = next;
    if (dot == NULL) return cur;
    seg = dot + 1;
  }
  /* The factory moves every stage member that is not a spec field into params. */
  if (strncmp(field, "params.", 7) == 0) {
    const cJSON *moved = member(stage, field + 7);
    if (moved != NULL) return moved;
  }
  return cur;
}

static const char *stage_name(const cJSON *stage) {
  const cJSON *name = member(stage, "name");
  return cJSON_IsString(name) && *name->valuestring ? name->valuestring : NULL;
}

/* The part of a refused field's JSON path inside its stage: "retry.multiplier" of
 * "stages[2].retry.multiplier", "" for "stages[2]" itself. */
static const char *field_in_stage(const char *path) {
  const char *close = path ? strchr(path, ']') : NULL;
  if (close == NULL) return "";
  return close[1] == '.' ? close + 2 : "";
}

/* Reports the engine's refusal of a config at the position of what it names, from the fields of
 * sc_plan_last_error(): the stage by its index, the member by its JSON path; what the operator
 * reads is "stage NAME: FIELD PROBLEM", built from the same fields. A refusal without a record
 * (not a plan's) is reported at the config with its message. */
static void report_refusal(loader *l, const cJSON *config, bool previous, int at_index) {
  const char *which = previous ? "previous_config" : "config";
  const sc_plan_error *pe = sc_plan_last_error();
  const cJSON *stages = member(config, "stages");
  if (pe == NULL) {
    complain(l, value_at(l, config), "%s: %s", which, sc_error_message());
    return;
  }
  if (pe->stage_index >= 0) {
    int index = at_index >= 0 ? at_index : pe->stage_index;
    const cJSON *stage =
        cJSON_IsArray(stages) && index < INT_MAX ? cJSON_GetArrayItem(stages, index) : NULL;
    const char *field = field_in_stage(pe->field);
    const cJSON *target = stage ? resolve(stage, field) : stages ? stages : config;
    char label[128], quoted[112], hint[64] = "";
    /* the name as the file has it: the record's copy is cut at its size */
    const char *name = pe->stage != NULL && stage_name(stage) ? stage_name(stage) : pe->stage;
    if (name != NULL)
      snprintf(label, sizeof(label), "stage %s", cli_jsonpos_quote(quoted, sizeof(quoted), name));
    else
      snprintf(label, sizeof(label), "stage %d", index);
    const cJSON *first;
    if (pe->other_stage_index >= 0 && pe->other_stage_index < INT_MAX &&
        (first = member(cJSON_GetArrayItem(stages, pe->other_stage_index), "name")) != NULL) {
      cli_jsonpos_at at = value_at(l, first);
      snprintf(hint, sizeof(hint), " (at %u:%u)", (unsigned)at.line, (unsigned)at.column);
    }
    complain(l, value_at(l, target), "%s%s: %s%s%s%s%s", previous ? "previous_config: " : "", label,
             *field ? "\"" : "", field, *field ? "\" " : "", pe->problem, hint);
    return;
  }
  if (pe->field != NULL) { /* a member of the config: "stages" */
    const cJSON *target = member(config, pe->field);
    complain(l, value_at(l, target ? target : config), "%s: \"%s\" %s", which, pe->field,
             pe->problem);
    return;
  }
  complain(l, value_at(l, config), "%s: %s", which, pe->message);
}

static int refuse_to_run(sc_stage_ctx *ctx, void *udata) {
  (void)ctx;
  (void)udata;
  return sc_error_set(SC_EINVAL, "this engine only checks pipeline files");
}

/* An engine that knows the kinds of a `stagecoach` run: the built-in ones and "exec". It runs
 * nothing: it only builds plans. */
static int checking_engine(sc_engine **out) {
  static const sc_stage_kind exec_kind = {SC_STAGE_KIND_VERSION, refuse_to_run, NULL, NULL};
  int rc = sc_engine_new(NULL, NULL, out);
  if (rc == SC_OK && (rc = sc_engine_register_kind(*out, "exec", &exec_kind, NULL)) != SC_OK) {
    sc_engine_free(*out);
    *out = NULL;
  }
  return rc;
}

/* The factory stops at the first stage it refuses (first); every error is reported all the same
 * (docs/cli.md): each later stage is checked alone, as the only stage of a config, and its
 * refusal reported at its own place. What only the whole plan shows (a duplicate name) is found
 * once the stages before it are fixed. */
static void check_later_stages(loader *l, sc_engine *e, const cJSON *config, bool previous,
                               int first) {
  const cJSON *stages = member(config, "stages");
  int count = cJSON_IsArray(stages) ? cJSON_GetArraySize(stages) : 0;
  for (int j = first + 1; j < count && !l->oom; j++) {
    cJSON *alone = cJSON_CreateObject(), *list = cJSON_AddArrayToObject(alone, "stages");
    cJSON *copy = cJSON_Duplicate(cJSON_GetArrayItem(stages, j), true);
    if (list == NULL || copy == NULL || !cJSON_AddItemToArray(list, copy)) {
      cJSON_Delete(copy);
      cJSON_Delete(alone);
      l->oom = true;
      return;
    }
    sc_recovery_request req;
    sc_recovery_request_init(&req);
    req.config = alone;
    cJSON *plan = NULL;
    if (sc_recovery_plan(e, &req, &plan) != SC_OK) report_refusal(l, config, previous, j);
    cJSON_Delete(plan);
    cJSON_Delete(alone);
  }
}

/* Builds the plan of a config with e's factory and kinds, as a run or a recovery of it would.
 * sc_recovery_plan() does exactly that and creates nothing (no task, no event), which suits a
 * caller's engine; sc_task_submit() would start the task, and sc_plan_fingerprint() checks no
 * kinds. On success fingerprint (may be NULL) gets the plan's fingerprint as the engine records
 * it in task.created. */
static void check_config(loader *l, sc_engine *e, const cJSON *config, bool previous,
                         char *fingerprint) {
  sc_recovery_request req;
  sc_recovery_request_init(&req);
  req.config = config;
  cJSON *plan = NULL;
  int rc = sc_recovery_plan(e, &req, &plan);
  if (rc != SC_OK) {
    const sc_plan_error *pe = sc_plan_last_error();
    int first = pe != NULL ? pe->stage_index : -1;
    report_refusal(l, config, previous, -1);
    if (first >= 0) check_later_stages(l, e, config, previous, first);
    return;
  }
  const cJSON *fp = cJSON_GetObjectItemCaseSensitive(plan, "fingerprint");
  if (fingerprint != NULL) {
    if (cJSON_IsString(fp))
      snprintf(fingerprint, 72, "%s", fp->valuestring);
    else if (sc_plan_fingerprint(NULL, NULL, config, fingerprint) != SC_OK)
      complain(l, value_at(l, config), "%s", sc_error_message());
  }
  cJSON_Delete(plan);
}

/* Where byte offset of the decoded string item stands in the file: the string's position moved
 * past the raw characters that decode to those bytes (an escape is several; a JSON string holds
 * no newline, so the line stays). */
static cli_jsonpos_at string_at(const loader *l, const cJSON *item, size_t offset) {
  cli_jsonpos_at at = value_at(l, item);
  if (offset == SIZE_MAX || l->text == NULL) return at;
  size_t i = 0;
  for (uint32_t line = 1; line < at.line && i < l->len; i++)
    if (l->text[i] == '\n') line++;
  i += at.column; /* past the opening quote */
  size_t start = i, decoded = 0;
  while (decoded < offset && i < l->len && l->text[i] != '"') {
    if (l->text[i] != '\\') {
      i++, decoded++;
    } else if (i + 1 < l->len && l->text[i + 1] == 'u' && i + 5 < l->len) {
      unsigned cp = 0;
      for (size_t k = i + 2; k < i + 6; k++) {
        char c = l->text[k];
        cp = cp * 16 + (unsigned)(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
      }
      i += 6;
      if (cp >= 0xD800 && cp < 0xDC00) { /* a surrogate pair: one 4-byte character */
        i += 6;
        decoded += 4;
      } else {
        decoded += cp < 0x80 ? 1 : cp < 0x800 ? 2 : 3;
      }
    } else {
      i += 2, decoded++;
    }
  }
  at.column += (uint32_t)(i - start) + 1;
  return at;
}

/* What the exec kind would refuse when the stage starts, found now: each exec stage of a config
 * the factory accepted. */
static void check_exec_stages(loader *l, const cJSON *config, bool previous) {
  const cJSON *stages = member(config, "stages"), *stage;
  cJSON_ArrayForEach(stage, stages) {
    const cJSON *kind = member(stage, "kind"), *bad;
    if (!cJSON_IsString(kind) || strcmp(kind->valuestring, "exec") != 0) continue;
    char why[768], quoted[112];
    size_t offset;
    if (cli_exec_check(stage, member(stage, "params"), &bad, &offset, why, sizeof(why))) continue;
    const char *name = stage_name(stage);
    complain(l, bad ? string_at(l, bad, offset) : value_at(l, stage), "%sstage %s: %s",
             previous ? "previous_config: " : "",
             name ? cli_jsonpos_quote(quoted, sizeof(quoted), name) : "?", why);
  }
}

/* ---- the loader ---- */

int cli_pipeline_load(const char *path, sc_engine *e, cli_pipeline *p, char *err, size_t errlen) {
  loader l = {0};
  char *text = NULL, fingerprint[72] = "";
  size_t len = 0, off = 0;
  cJSON *root = NULL;
  cli_jsonpos *positions = NULL;
  sc_engine *own = NULL;
  int rc = CLI_EXIT_USAGE;
  memset(p, 0, sizeof(*p));
  if (err != NULL && errlen > 0) err[0] = '\0';
  if (path == NULL) {
    sc__format_append(err, errlen, &off, "no pipeline file given\n");
    goto out;
  }
  /* Any file, not only a regular one: `validate /dev/stdin` reads a pipe. */
  int errnum = sc__read_file(path, PIPELINE_MAX_BYTES, false, &text, &len);
  if (errnum != 0) {
    if (errnum == EFBIG)
      sc__format_append(err, errlen, &off,
                        "%s: cannot read: larger than %u MiB, not a pipeline file\n", path,
                        PIPELINE_MAX_BYTES / (1024 * 1024));
    else
      sc__format_append(err, errlen, &off, "%s: cannot read: %s\n", path, strerror(errnum));
    goto out;
  }
  cli_jsonpos_at where;
  char message[256];
  if (cli_jsonpos_parse(text, len, &root, &positions, &where, message, sizeof(message)) != 0) {
    sc__format_append(err, errlen, &off, "%s:%u:%u: %s\n", path, (unsigned)where.line,
                      (unsigned)where.column, message);
    goto out;
  }
  l.positions = positions;
  l.text = text;
  l.len = len;
  top t;
  check_members(&l, root, &t);
  if (e == NULL && (t.config || t.previous_config) && checking_engine(&own) != SC_OK) {
    sc__format_append(err, errlen, &off, "%s: cannot check the configs: %s\n", path,
                      sc_error_message());
    goto out;
  }
  size_t before = l.n;
  if (t.config) check_config(&l, e ? e : own, t.config, false, fingerprint);
  if (t.config && l.n == before) check_exec_stages(&l, t.config, false);
  before = l.n;
  if (t.previous_config) check_config(&l, e ? e : own, t.previous_config, true, NULL);
  if (t.previous_config && l.n == before) check_exec_stages(&l, t.previous_config, true);
  if (l.n > 0 || l.oom) {
    write_complaints(&l, path, err, errlen);
    goto out;
  }
  if ((p->path = strdup(path)) == NULL ||
      (t.plan && (p->plan = strdup(t.plan->valuestring)) == NULL) ||
      (t.tenant && (p->tenant = strdup(t.tenant->valuestring)) == NULL)) {
    cli_pipeline_free(p);
    sc__format_append(err, errlen, &off, "%s: out of memory\n", path);
    goto out;
  }
  p->config = detach(root, t.config);
  p->previous_config = t.previous_config ? detach(root, t.previous_config) : NULL;
  memcpy(p->fingerprint, fingerprint, sizeof(p->fingerprint));
  rc = 0;
out:
  for (size_t i = 0; i < l.n; i++)
    free(l.list[i].text);
  free(l.list);
  sc_engine_free(own);
  cli_jsonpos_free(positions);
  cJSON_Delete(root);
  free(text);
  return rc;
}

void cli_pipeline_free(cli_pipeline *p) {
  if (p == NULL) return;
  free(p->path);
  free(p->plan);
  free(p->tenant);
  cJSON_Delete(p->config);
  cJSON_Delete(p->previous_config);
  memset(p, 0, sizeof(*p));
}
