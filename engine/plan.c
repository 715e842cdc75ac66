/* Plans: the builder a stage factory fills, the checks on each stage spec, the structured record
 * of a refusal (sc_plan_last_error), the fingerprint over the canonical JSON of the specs, and the
 * plan cache: plans interned by the digest of their config, so that the tasks of one config share
 * one plan and one copy of the config, and kept a while after the last of them ended, so that the
 * next submit of that config builds nothing (docs/design.md, "Plan cache"). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"

void sc__builder_init(sc_plan_builder *b, sc_engine *e) {
  memset(b, 0, sizeof(*b));
  b->engine = e;
}

static void stage_free(sc__stage *s) {
  free(s->name);
  free(s->kind);
  cJSON_Delete(s->params);
}

void sc__builder_free(sc_plan_builder *b) {
  sc__map_free(&b->names);
  free(b->first);
  for (size_t i = 0; i < b->n; i++)
    stage_free(&b->stages[i]);
  free(b->stages);
  free(b->error);
  memset(b, 0, sizeof(*b));
}

/* ---- structured refusals ---- */

typedef struct sc__plan_refusal {
  bool set;
  sc_plan_error e;
  char stage[128], field[192], problem[448], message[1024];
} refusal;

static _Thread_local refusal last_refusal;

/* After sc__vformat wrote len bytes into out[cap]: a string that fills the field (it may have
 * been cut) ends before a partial UTF-8 sequence, since a program prints these fields. One that
 * fits exactly is checked too, which changes it only when it ended in a partial sequence anyway. */
static void mend_cut(char *out, size_t cap, size_t len) {
  if (len + 1 < cap) return;
  size_t start = len;
  while (start > 0 && ((unsigned char)out[start - 1] & 0xC0) == 0x80)
    start--;
  if (start > 0 && (unsigned char)out[start - 1] >= 0xC0) {
    unsigned char lead = (unsigned char)out[start - 1];
    size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2;
    if (len - (start - 1) < need) out[start - 1] = '\0';
  }
}

/* Formats into a field of the record: a long name or problem is cut, which is what the record's
 * fixed sizes mean. */
static void put(char *out, size_t cap, const char *fmt, ...) SC__PRINTF(3, 4);
static void put(char *out, size_t cap, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  size_t len = sc__vformat(out, cap, fmt, ap);
  va_end(ap);
  mend_cut(out, cap, len);
}

const sc_plan_error *sc_plan_last_error(void) {
  return last_refusal.set ? &last_refusal.e : NULL;
}

void sc__plan_error_clear(void) {
  last_refusal.set = false;
}

/* Fills the record from its parts; the message is built by the caller into r->message. */
static refusal *begin_refusal(int code, int32_t index, const char *stage, va_list ap,
                              const char *fmt) {
  refusal *r = &last_refusal;
  memset(&r->e, 0, sizeof(r->e));
  r->set = true;
  r->e.code = code;
  r->e.stage_index = index;
  r->e.other_stage_index = -1;
  r->stage[0] = r->field[0] = '\0';
  if (stage != NULL) put(r->stage, sizeof(r->stage), "%s", stage);
  r->e.stage = stage != NULL ? r->stage : NULL;
  mend_cut(r->problem, sizeof(r->problem), sc__vformat(r->problem, sizeof(r->problem), fmt, ap));
  r->e.problem = r->problem;
  r->e.message = r->message;
  return r;
}

int sc__plan_refuse_stage(int code, int32_t index, const char *stage, const char *field,
                          const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  refusal *r = begin_refusal(code, index, stage && *stage ? stage : NULL, ap, fmt);
  va_end(ap);
  if (field != NULL)
    put(r->field, sizeof(r->field), "stages[%d].%s", (int)index, field);
  else
    put(r->field, sizeof(r->field), "stages[%d]", (int)index);
  r->e.field = r->field;
  char label[192];
  if (r->e.stage != NULL)
    put(label, sizeof(label), "stage %d (\"%s\"):", (int)index, r->stage);
  else
    put(label, sizeof(label), "stage %d:", (int)index);
  if (field != NULL)
    put(r->message, sizeof(r->message), "%s \"%s\" %s", label, field, r->problem);
  else
    put(r->message, sizeof(r->message), "%s %s", label, r->problem);
  return sc__error(code, "%s", r->message);
}

int sc__plan_refuse_config(int code, const char *field, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  refusal *r = begin_refusal(code, -1, NULL, ap, fmt);
  va_end(ap);
  if (field != NULL) {
    put(r->field, sizeof(r->field), "%s", field);
    r->e.field = r->field;
    put(r->message, sizeof(r->message), "config: \"%s\" %s", field, r->problem);
  } else {
    put(r->message, sizeof(r->message), "config %s", r->problem);
  }
  return sc__error(code, "%s", r->message);
}

int sc__plan_refuse_value(int code, bool previous, const char *field, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  refusal *r = begin_refusal(code, -1, NULL, ap, fmt);
  va_end(ap);
  const char *what = previous ? "previous_config" : "config";
  r->e.previous_config = previous;
  if (field != NULL && *field != '\0') {
    put(r->field, sizeof(r->field), "%s", field);
    r->e.field = r->field;
    put(r->message, sizeof(r->message), "%s: \"%s\" %s", what, field, r->problem);
  } else {
    put(r->message, sizeof(r->message), "%s %s", what, r->problem);
  }
  return sc__error(code, "%s", r->message);
}

int sc__plan_refuse_plan(int code, const char *stage, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  refusal *r = begin_refusal(code, -1, stage, ap, fmt);
  va_end(ap);
  put(r->message, sizeof(r->message), "%s", r->problem);
  return sc__error(code, "%s", r->message);
}

int sc__plan_refuse_previous(int code) {
  refusal *r = &last_refusal;
  if (!r->set) return code;
  static const char prefix[] = "previous_config: ";
  size_t len = strlen(r->message), room = sizeof(r->message) - sizeof(prefix);
  if (len > room) len = room;
  memmove(r->message + sizeof(prefix) - 1, r->message, len);
  memcpy(r->message, prefix, sizeof(prefix) - 1);
  r->message[sizeof(prefix) - 1 + len] = '\0';
  r->e.previous_config = true;
  r->e.code = code;
  return sc__error(code, "%s", r->message);
}

/* The record as it was when r was copied, its pointers into last_refusal. */
static void restore(const refusal *r) {
  last_refusal = *r;
  sc_plan_error *e = &last_refusal.e;
  e->stage = r->e.stage ? last_refusal.stage : NULL;
  e->field = r->e.field ? last_refusal.field : NULL;
  e->problem = last_refusal.problem;
  e->message = last_refusal.message;
}

void sc__builder_refused(sc_plan_builder *b) {
  if (b == NULL) return;
  b->refused = true;
  if (b->error == NULL) b->error = strdup(sc_error_message());
  if (b->first == NULL && last_refusal.set && (b->first = malloc(sizeof(refusal))) != NULL)
    memcpy(b->first, &last_refusal, sizeof(refusal));
}

int sc_plan_builder_error(sc_plan_builder *b, const char *fmt, ...) {
  char msg[512];
  SC__FORMAT_ARGS(msg, fmt);
  sc__plan_refuse_plan(SC_EPLAN, NULL, "%s", msg);
  sc__builder_refused(b);
  return SC_EPLAN;
}

/* The refusal of a field of stage spec number b->n. */
static int spec_error(sc_plan_builder *b, const sc_stage_spec *spec, const char *field,
                      const char *what) {
  return sc__plan_refuse_stage(SC_EINVAL, (int32_t)b->n, spec->name, field, "%s", what);
}

#define MAX_ATTEMPTS   1000
#define MAX_APPROVERS  100
#define MAX_BACKOFF_MS 86400000u /* the JSON factory's bound, the same for every factory */

static bool utf8_ok(const char *s) {
  cJSON probe = {.type = cJSON_String, .valuestring = (char *)s};
  char path[2];
  return sc__json_unfit(&probe, path, sizeof(path)) == NULL;
}

static int check_builtin_params(sc_plan_builder *b, const sc_stage_spec *spec) {
  if (strcmp(spec->kind, "fn") == 0) {
    const cJSON *fn = cJSON_GetObjectItemCaseSensitive(spec->params, "fn");
    if (!cJSON_IsString(fn) || !*fn->valuestring)
      return spec_error(b, spec, "params.fn", "must name a registered function (a string)");
  } else if (strcmp(spec->kind, "sleep") == 0) {
    const cJSON *ms = cJSON_GetObjectItemCaseSensitive(spec->params, "ms");
    if (!cJSON_IsNumber(ms) || ms->valuedouble < 0 || ms->valuedouble > 4294967295.0 ||
        ms->valuedouble != (double)(int64_t)ms->valuedouble)
      return spec_error(b, spec, "params.ms", "must be a non-negative integer (milliseconds)");
  }
  return SC_OK;
}

static int check_spec(sc_plan_builder *b, const sc_stage_spec *spec) {
  /* Version 1 of each struct is all there is: a later version is refused rather than half read,
   * and 0 means the struct was not set up with its _init(). */
  if (spec->version < 1 || spec->version > SC_STAGE_SPEC_VERSION)
    return spec_error(b, spec, "version", "is not a supported sc_stage_spec version");
  if (spec->retry.version < 1 || spec->retry.version > SC_RETRY_POLICY_VERSION)
    return spec_error(b, spec, "retry.version", "is not a supported sc_retry_policy version");
  if (spec->approval.version < 1 || spec->approval.version > SC_APPROVAL_POLICY_VERSION)
    return spec_error(b, spec, "approval.version", "is not a supported sc_approval_policy version");
  if (spec->name == NULL || !*spec->name) return spec_error(b, spec, "name", "is required");
  uintptr_t dup = (uintptr_t)sc__map_get(&b->names, spec->name);
  if (dup != 0) {
    int rc = sc__plan_refuse_stage(SC_EINVAL, (int32_t)b->n, spec->name, "name",
                                   "duplicates stage %zu", (size_t)(dup - 1));
    last_refusal.e.other_stage_index = (int)(dup - 1);
    return rc;
  }
  if (spec->kind == NULL || !*spec->kind) return spec_error(b, spec, "kind", "is required");
  if (!utf8_ok(spec->name)) return spec_error(b, spec, "name", "is not valid UTF-8");
  if (!utf8_ok(spec->kind)) return spec_error(b, spec, "kind", "is not valid UTF-8");
  if (b->engine != NULL && sc__engine_kind(b->engine, spec->kind) == NULL) {
    /* The list is cut with ", ..." where it would not fit, and always closed. */
    char what[256], kind[64];
    snprintf(kind, sizeof(kind), "%s", spec->kind);
    mend_cut(kind, sizeof(kind), strlen(kind));
    int off = snprintf(what, sizeof(what), "names an unknown kind \"%s%s\" (kinds:", kind,
                       strlen(spec->kind) >= sizeof(kind) ? "..." : "");
    for (size_t i = 0; i < b->engine->nkinds; i++) {
      const char *name = b->engine->kinds[i].name;
      size_t need = strlen(name) + 2;
      if ((size_t)off + need + 6 >= sizeof(what)) { /* room for ", ...)" */
        off += snprintf(what + off, sizeof(what) - (size_t)off, ", ...");
        break;
      }
      off += snprintf(what + off, sizeof(what) - (size_t)off, "%s %s", i ? "," : "", name);
    }
    snprintf(what + off, sizeof(what) - (size_t)off, ")");
    return spec_error(b, spec, "kind", what);
  }
  if (spec->params != NULL && !cJSON_IsObject(spec->params))
    return spec_error(b, spec, "params", "must be an object");
  char path[160], field[176];
  const char *why = sc__json_unfit(spec->params, path, sizeof(path));
  if (why != NULL) {
    snprintf(field, sizeof(field), "params%s%s", path[0] == '[' ? "" : ".", path);
    return sc__plan_refuse_stage(SC_EINVAL, (int32_t)b->n, spec->name, field,
                                 "%s: it could not be read back from a log", why);
  }
  if (spec->retry.initial_backoff_ms > MAX_BACKOFF_MS)
    return spec_error(b, spec, "retry.initial_backoff_ms", "must be at most 86400000 (a day)");
  if (spec->retry.max_backoff_ms > MAX_BACKOFF_MS)
    return spec_error(b, spec, "retry.max_backoff_ms", "must be at most 86400000 (a day)");
  if (spec->retry.max_attempts > MAX_ATTEMPTS)
    return spec_error(b, spec, "retry.max_attempts", "must be at most 1000");
  if (spec->retry.multiplier != 0 &&
      !(spec->retry.multiplier >= 1 && spec->retry.multiplier <= 100))
    return spec_error(b, spec, "retry.multiplier", "must be between 1 and 100");
  if (spec->retry.max_backoff_ms != 0 &&
      spec->retry.max_backoff_ms < spec->retry.initial_backoff_ms)
    return spec_error(b, spec, "retry.max_backoff_ms", "must be 0 or at least initial_backoff_ms");
  if (spec->approval.approvers_needed > MAX_APPROVERS)
    return spec_error(b, spec, "approval.approvers_needed", "must be at most 100");
  if (spec->approval.on_timeout != SC_ACTION_APPROVE &&
      spec->approval.on_timeout != SC_ACTION_REJECT && spec->approval.on_timeout != SC_ACTION_FAIL)
    return spec_error(b, spec, "approval.on_timeout", "must be approve, reject or fail");
  if (spec->approval.on_reject != SC_ACTION_CANCEL && spec->approval.on_reject != SC_ACTION_FAIL)
    return spec_error(b, spec, "approval.on_reject", "must be cancel or fail");
  if ((unsigned)spec->effect > SC_EFFECT_IRREVERSIBLE)
    return spec_error(b, spec, "effect", "must be idempotent, compensable or irreversible");
  return SC_OK;
}

/* params: taken over (freed on failure too); NULL: spec->params is copied. */
static int add_stage(sc_plan_builder *b, const sc_stage_spec *spec, cJSON *params) {
  sc__plan_error_clear();
  if (b == NULL || spec == NULL) {
    cJSON_Delete(params);
    return sc__error(SC_EINVAL, "plan: NULL argument");
  }
  int rc = check_spec(b, spec);
  if (rc == SC_OK && spec->params != NULL) rc = check_builtin_params(b, spec);
  if (rc == SC_OK && spec->params == NULL &&
      (strcmp(spec->kind, "fn") == 0 || strcmp(spec->kind, "sleep") == 0))
    rc = check_builtin_params(b, spec);
  if (rc != SC_OK) {
    cJSON_Delete(params);
    sc__builder_refused(b);
    return rc;
  }
  if (!sc__grow(&b->stages, &b->cap, b->n + 1, sizeof(*b->stages), 8)) {
    cJSON_Delete(params);
    return sc__error(SC_ENOMEM, "plan: out of memory");
  }
  sc__stage *s = &b->stages[b->n];
  memset(s, 0, sizeof(*s));
  s->name = strdup(spec->name);
  s->kind = strdup(spec->kind);
  s->params = params                 ? params
              : spec->params != NULL ? cJSON_Duplicate(spec->params, true)
                                     : cJSON_CreateObject();
  if (s->name == NULL || s->kind == NULL || s->params == NULL) {
    stage_free(s);
    return sc__error(SC_ENOMEM, "plan: out of memory");
  }
  s->timeout_ms = spec->timeout_ms;
  s->retry = spec->retry;
  if (s->retry.multiplier == 0) s->retry.multiplier = 2.0;
  if (s->retry.max_attempts == 0) s->retry.max_attempts = 1;
  s->approval = spec->approval;
  if (s->approval.approvers_needed == 0) s->approval.approvers_needed = 1;
  s->effect = spec->effect;
  /* Keys point at the stage names; a realloc of stages moves the structs, not the names. */
  if (sc__map_put(&b->names, s->name, (void *)(uintptr_t)(b->n + 1)) != 0) {
    stage_free(s);
    return sc__error(SC_ENOMEM, "plan: out of memory");
  }
  b->n++;
  return SC_OK;
}

int sc_plan_add_stage(sc_plan_builder *b, const sc_stage_spec *spec) {
  return add_stage(b, spec, NULL);
}

int sc__plan_add_stage_owned(sc_plan_builder *b, const sc_stage_spec *spec, cJSON *params) {
  return add_stage(b, spec, params);
}

/* The spec of one stage with every default filled in, so that a field spelled out with its
 * default value and a field left out give the same fingerprint. */
static void write_spec(sc__buf *out, const sc__stage *s) {
  sc__buf_lit(out, "{\"approval\":{\"approvers_needed\":");
  sc__json_uint(out, s->approval.approvers_needed);
  sc__buf_lit(out, ",\"on_reject\":");
  sc__json_string(out, sc__action_name((int)s->approval.on_reject));
  sc__buf_lit(out, ",\"on_timeout\":");
  sc__json_string(out, sc__action_name((int)s->approval.on_timeout));
  sc__buf_lit(out, ",\"required\":");
  if (s->approval.required)
    sc__buf_lit(out, "true");
  else
    sc__buf_lit(out, "false");
  sc__buf_lit(out, ",\"timeout_ms\":");
  sc__json_uint(out, s->approval.timeout_ms);
  sc__buf_lit(out, "},\"effect\":");
  sc__json_string(out, sc__effect_name((int)s->effect));
  sc__buf_lit(out, ",\"kind\":");
  sc__json_string(out, s->kind);
  sc__buf_lit(out, ",\"name\":");
  sc__json_string(out, s->name);
  sc__buf_lit(out, ",\"params\":");
  sc__json_value(out, s->params, true);
  sc__buf_lit(out, ",\"retry\":{\"initial_backoff_ms\":");
  sc__json_uint(out, s->retry.initial_backoff_ms);
  sc__buf_lit(out, ",\"max_attempts\":");
  sc__json_uint(out, s->retry.max_attempts);
  sc__buf_lit(out, ",\"max_backoff_ms\":");
  sc__json_uint(out, s->retry.max_backoff_ms);
  sc__buf_lit(out, ",\"multiplier\":");
  sc__json_number(out, s->retry.multiplier);
  sc__buf_lit(out, "},\"timeout_ms\":");
  sc__json_uint(out, s->timeout_ms);
  sc__buf_putc(out, '}');
}

/* The canonical JSON of the specs is streamed through SHA-256 in chunks, so a plan of a million
 * stages does not need its whole text in memory. */
static int fingerprint(sc__sha *sha, const sc__stage *stages, size_t n, char out[72]) {
  sc__sha *own = NULL;
  if (sha == NULL && (sha = own = sc__sha_new()) == NULL)
    return sc__error(SC_ENOMEM, "plan: out of memory");
  sc__buf b;
  sc__buf_init(&b);
  int rc = sc__sha_begin(sha);
  sc__buf_putc(&b, '[');
  for (size_t i = 0; i < n && rc == SC_OK; i++) {
    if (i) sc__buf_putc(&b, ',');
    write_spec(&b, &stages[i]);
    if (b.len >= 65536) {
      rc = b.oom ? sc__error(SC_ENOMEM, "plan: out of memory") : sc__sha_update(sha, b.p, b.len);
      sc__buf_reset(&b);
    }
  }
  sc__buf_putc(&b, ']');
  if (rc == SC_OK)
    rc = b.oom ? sc__error(SC_ENOMEM, "plan: out of memory") : sc__sha_update(sha, b.p, b.len);
  if (rc == SC_OK) rc = sc__sha_end_hex(sha, out);
  sc__buf_free(&b);
  sc__sha_free(own);
  return rc;
}

int sc__digest(sc__sha *sha, sc__buf *scratch, const cJSON *value, char out[72]) {
  sc__buf local;
  sc__buf *b = scratch;
  if (b == NULL) {
    sc__buf_init(&local);
    b = &local;
  }
  sc__buf_reset(b);
  if (value == NULL)
    sc__buf_lit(b, "{}");
  else
    sc__json_value(b, value, true);
  int rc =
      b->oom ? sc__error(SC_ENOMEM, "digest: out of memory") : sc__sha_hex(sha, b->p, b->len, out);
  if (b == &local) sc__buf_free(&local);
  return rc;
}

int sc_json_digest(const cJSON *value, char out[72]) {
  if (out == NULL) return sc__error(SC_EINVAL, "digest: NULL argument");
  return sc__digest(NULL, NULL, value, out);
}

char *sc_json_canonical(const cJSON *value, size_t *len) {
  sc__buf b;
  sc__buf_init(&b);
  sc__json_value(&b, value, true);
  if (!sc__buf_cstr(&b)) {
    sc__buf_free(&b);
    sc__error(SC_ENOMEM, "canonical JSON: out of memory");
    return NULL;
  }
  if (len) *len = b.len;
  return b.p;
}

static int run_factory(sc_engine *e, sc_stage_factory_fn factory, void *udata, const cJSON *config,
                       sc_plan_builder *b) {
  sc__builder_init(b, e);
  sc__error_clear();
  sc__plan_error_clear();
  int rc = factory(config, b, udata);
  if (rc >= 0 && b->n == 0) { /* a plan does something: the JSON factory refuses [] too */
    sc__plan_refuse_plan(SC_EPLAN, NULL, "the stage factory gave a plan of no stages");
    sc__builder_free(b);
    return SC_EPLAN;
  }
  if (rc >= 0) {
    sc__plan_error_clear(); /* a refusal the factory got past is not the plan's */
    return SC_OK;
  }
  /* The first refusal is the one reported, whatever the factory did after it; a factory that
   * refused without recording why gets a record of its own. A refusal is SC_EPLAN. */
  const char *why = b->error ? b->error : sc_error_message();
  if (b->first != NULL) {
    restore(b->first);
    sc__error(SC_EPLAN, "%s", b->first->message);
  } else {
    sc__plan_refuse_plan(SC_EPLAN, NULL, "%s", *why ? why : "the stage factory refused the config");
  }
  last_refusal.e.code = SC_EPLAN;
  sc__builder_free(b);
  return SC_EPLAN;
}

int sc__plan_build(sc_engine *e, sc_stage_factory_fn factory, void *udata, const cJSON *config,
                   sc__plan **out) {
  *out = NULL;
  sc_plan_builder b;
  int rc = run_factory(e, factory, udata, config, &b);
  if (rc != SC_OK) return rc;
  sc__plan *p = calloc(1, sizeof(*p));
  if (p == NULL) {
    sc__builder_free(&b);
    return sc__error(SC_ENOMEM, "plan: out of memory");
  }
  p->refs = 1;
  sc__queue_init(&p->idle);
  p->stages = b.stages;
  p->nstages = b.n;
  free(b.error);
  free(b.first);
  sc__map_free(&b.names);
  rc = fingerprint(e ? e->sha : NULL, p->stages, p->nstages, p->fingerprint);
  if (rc != SC_OK) {
    sc__plan_unref(e, p);
    return rc;
  }
  *out = p;
  return SC_OK;
}

void sc__plan_error_mark_previous(void) {
  last_refusal.e.previous_config = true;
}

/* A refusal about previous_config as a whole, in the words given. */
static int previous_refusal(int code, const char *message) {
  sc__plan_refuse_plan(code, NULL, "%s", message);
  sc__plan_error_mark_previous();
  return code;
}

/* ---- the plan cache ---- */

/* What the cache keeps of plans no task holds: at most this many, and at most this much canonical
 * config text between them (the trees and stages in memory are a few times that). A config
 * larger than the whole budget is not kept. */
#define CACHE_MAX_PLANS 64
#define CACHE_MAX_BYTES (1024u * 1024)

static void plan_free(sc_engine *e, sc__plan *p) {
  if (p->interned && e != NULL) sc__map_del(&e->plans, p->key);
  if (sc__queue_linked(&p->idle)) {
    sc__queue_remove(&p->idle);
    e->idle_count--;
    e->idle_bytes -= p->bytes;
  }
  for (size_t i = 0; i < p->nstages; i++)
    stage_free(&p->stages[i]);
  free(p->stages);
  cJSON_Delete(p->config);
  cJSON_Delete(p->previous_config);
  sc__plan_unref(e, p->previous_plan);
  free(p);
}

/* Evicts the least recently used idle plans until the cache is within its bounds. */
static void cache_trim(sc_engine *e) {
  sc__queue *q;
  while ((e->idle_count > CACHE_MAX_PLANS || e->idle_bytes > CACHE_MAX_BYTES) &&
         (q = sc__queue_head(&e->idle_plans)) != NULL)
    plan_free(e, sc__queue_data(q, sc__plan, idle));
}

void sc__plan_unref(sc_engine *e, sc__plan *p) {
  if (p == NULL || --p->refs > 0) return;
  if (p->interned && e != NULL && !e->freeing) {
    /* Kept for the next task of the same config: it stays in e->plans under its key. */
    sc__queue_insert_tail(&e->idle_plans, &p->idle);
    e->idle_count++;
    e->idle_bytes += p->bytes;
    cache_trim(e);
    return;
  }
  plan_free(e, p);
}

void sc__plan_cache_free(sc_engine *e) {
  sc__queue *q;
  while ((q = sc__queue_head(&e->idle_plans)) != NULL)
    plan_free(e, sc__queue_data(q, sc__plan, idle));
}

int sc__stage_index(const sc__plan *p, const char *name) {
  for (size_t i = 0; i < p->nstages; i++)
    if (strcmp(p->stages[i].name, name) == 0) return (int)i;
  return -1;
}

void sc__plan_stage_list(const sc__plan *p, char *buf, size_t cap) {
  size_t off = 0;
  buf[0] = '\0';
  for (size_t i = 0; i < p->nstages; i++) {
    int n = snprintf(buf + off, cap - off, "%s%s", i ? ", " : "", p->stages[i].name);
    if (n < 0 || (size_t)n >= cap - off) {
      if (cap > 4) strcpy(buf + cap - 4, "...");
      return;
    }
    off += (size_t)n;
  }
}

int sc_plan_fingerprint(sc_stage_factory_fn factory, void *udata, const cJSON *config,
                        char out[72]) {
  if (out == NULL) return sc__error(SC_EINVAL, "fingerprint: NULL argument");
  sc__plan *p;
  int rc = sc__plan_build(NULL, factory ? factory : sc_json_stage_factory, udata, config, &p);
  if (rc != SC_OK) return rc;
  memcpy(out, p->fingerprint, 72);
  sc__plan_unref(NULL, p);
  return SC_OK;
}

/* The interning key: SHA-256 over the canonical config, a separator and the canonical previous
 * config. Equal keys mean equal configs, so the deterministic factory would build the same plan. */
static int plan_key(sc_engine *e, const cJSON *config, const cJSON *previous, char out[72],
                    size_t *bytes) {
  sc__buf *b = &e->scratch;
  sc__buf_reset(b);
  sc__json_value(b, config, true);
  sc__buf_putc(b, '\n');
  sc__json_value(b, previous, true);
  if (b->oom) return sc__error(SC_ENOMEM, "plan: out of memory");
  *bytes = b->len;
  return sc__sha_hex(e->sha, b->p, b->len, out);
}

int sc__plan_get(sc_engine *e, const cJSON *config, const cJSON *previous, sc__plan **out) {
  *out = NULL;
  if (!cJSON_IsObject(config))
    return sc__plan_refuse_config(SC_EINVAL, NULL, "must be a JSON object");
  if (previous != NULL && !cJSON_IsObject(previous) && !cJSON_IsNull(previous))
    return previous_refusal(SC_EINVAL, "previous_config must be a JSON object");
  if (cJSON_IsNull(previous)) previous = NULL;
  char key[72];
  size_t bytes = 0;
  int rc = plan_key(e, config, previous, key, &bytes);
  if (rc != SC_OK) return rc;
  sc__plan *p = sc__map_get(&e->plans, key);
  if (p != NULL) {
    if (p->refs == 0) { /* from the cache */
      sc__queue_remove(&p->idle);
      e->idle_count--;
      e->idle_bytes -= p->bytes;
    }
    p->refs++;
    *out = p;
    return SC_OK;
  }
  /* A refusal is not kept: the config may be accepted later (a kind registered since). */
  rc = sc__plan_build(e, e->opts.factory, e->opts.factory_udata, config, &p);
  if (rc != SC_OK) return rc;
  memcpy(p->key, key, sizeof(key));
  p->bytes = bytes;
  p->config = cJSON_Duplicate(config, true);
  p->previous_config = previous ? cJSON_Duplicate(previous, true) : NULL;
  if (p->config == NULL || (previous && p->previous_config == NULL) ||
      sc__map_put(&e->plans, p->key, p) != 0) {
    sc__plan_unref(e, p);
    return sc__error(SC_ENOMEM, "plan: out of memory");
  }
  p->interned = true;
  *out = p;
  return SC_OK;
}

int sc__plan_previous(sc_engine *e, sc__plan *p, sc__plan **out) {
  *out = NULL;
  if (p->previous_config == NULL)
    return previous_refusal(SC_EINVAL, "no previous_config to roll back to");
  if (p->previous_plan == NULL) {
    int rc = sc__plan_build(e, e->opts.factory, e->opts.factory_udata, p->previous_config,
                            &p->previous_plan);
    if (rc != SC_OK) return sc__plan_refuse_previous(rc);
  }
  *out = p->previous_plan;
  return SC_OK;
}
