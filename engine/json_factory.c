/* The built-in stage factory: reads config.stages (docs/pipeline.md) into stage specs. Each
 * refusal names the stage index and the field. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "engine_int.h"

typedef struct reader {
  sc_plan_builder *b;
  size_t index;
  const char *name; /* for messages; NULL until read */
} reader;

/* field: the path inside the stage ("retry.multiplier"); NULL: the stage itself. */
static int refuse(reader *r, const char *field, const char *what) {
  sc__plan_refuse_stage(SC_EPLAN, (int32_t)r->index, r->name, field, "%s", what);
  sc__builder_refused(r->b);
  return SC_EPLAN;
}

/* A refusal about the config (field "stages") or the config as a whole (field NULL). */
static int refuse_config(reader *r, const char *field, const char *what) {
  sc__plan_refuse_config(SC_EPLAN, field, "%s", what);
  sc__builder_refused(r->b);
  return SC_EPLAN;
}

/* An optional integer v in [0, max]; keeps *out when v is NULL (absent). */
static int check_uint(reader *r, const cJSON *v, const char *field, double max, uint32_t *out) {
  if (v == NULL) return SC_OK;
  /* floor, not a cast: converting a double beyond int64 is undefined. */
  if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0) || v->valuedouble != floor(v->valuedouble))
    return refuse(r, field, "must be a non-negative integer");
  if (v->valuedouble > max) {
    /* A double past 2^53 is not the number that was written (9007199254740993 reads as
     * ...992), so it is not quoted back. */
    char what[96];
    if (v->valuedouble < 9007199254740992.0)
      snprintf(what, sizeof(what), "must be between 0 and %.0f (got %.0f)", max, v->valuedouble);
    else
      snprintf(what, sizeof(what), "must be between 0 and %.0f (got a larger number)", max);
    return refuse(r, field, what);
  }
  *out = (uint32_t)v->valuedouble;
  return SC_OK;
}

/* The optional integer member key of obj, as check_uint. */
static int read_uint(reader *r, const cJSON *obj, const char *key, const char *field, double max,
                     uint32_t *out) {
  return check_uint(r, cJSON_GetObjectItemCaseSensitive(obj, key), field, max, out);
}

/* An optional value v that must be one of names[]; *out gets the matching value. */
/* A word of names[0 .. n) (sc__effect_names, sc__action_names: the index is the enum value) that
 * allowed has the bit of, or the refusal expected. */
static int check_word(reader *r, const cJSON *v, const char *field, const char *const *names,
                      size_t n, unsigned allowed, const char *expected, int *out) {
  if (v == NULL) return SC_OK;
  int i = cJSON_IsString(v) ? sc__name_index(names, n, v->valuestring) : -1;
  if (i < 0 || !(allowed & 1u << i)) return refuse(r, field, expected);
  *out = i;
  return SC_OK;
}

/* The optional member key of obj, as check_word. */
static int read_word(reader *r, const cJSON *obj, const char *key, const char *field,
                     const char *const *names, size_t n, unsigned allowed, const char *expected,
                     int *out) {
  return check_word(r, cJSON_GetObjectItemCaseSensitive(obj, key), field, names, n, allowed,
                    expected, out);
}

/* Refuses a member of obj (the object at field) that is not one of names[n], as the top level of
 * a config refuses one: a misspelt "max_attempt" is not silently no retry. */
static int only_members(reader *r, const cJSON *obj, const char *field, const char *const *names,
                        size_t n) {
  for (const cJSON *m = obj->child; m != NULL; m = m->next) {
    size_t i = 0;
    while (i < n && (m->string == NULL || strcmp(m->string, names[i]) != 0))
      i++;
    if (i < n) continue;
    char path[160], what[256];
    snprintf(path, sizeof(path), "%s.%s", field, m->string ? m->string : "");
    int off = snprintf(what, sizeof(what), "is not a member of %s (members:", field);
    for (i = 0; i < n && off > 0 && (size_t)off < sizeof(what); i++)
      off += snprintf(what + off, sizeof(what) - (size_t)off, "%s %s", i ? "," : "", names[i]);
    if (off > 0 && (size_t)off < sizeof(what))
      snprintf(what + off, sizeof(what) - (size_t)off, ")");
    return refuse(r, path, what);
  }
  return SC_OK;
}

static int read_retry(reader *r, const cJSON *retry, sc_retry_policy *p) {
  static const char *const members[] = {"max_attempts", "initial_backoff_ms", "max_backoff_ms",
                                        "multiplier"};
  if (retry == NULL) return SC_OK;
  if (!cJSON_IsObject(retry)) return refuse(r, "retry", "must be an object");
  int rc;
  if ((rc = only_members(r, retry, "retry", members, 4)) != SC_OK) return rc;
  if ((rc = read_uint(r, retry, "max_attempts", "retry.max_attempts", 1000, &p->max_attempts)) ||
      (rc = read_uint(r, retry, "initial_backoff_ms", "retry.initial_backoff_ms", 86400000,
                      &p->initial_backoff_ms)) ||
      (rc = read_uint(r, retry, "max_backoff_ms", "retry.max_backoff_ms", 86400000,
                      &p->max_backoff_ms)))
    return rc;
  const cJSON *m = cJSON_GetObjectItemCaseSensitive(retry, "multiplier");
  if (m != NULL) {
    if (!cJSON_IsNumber(m)) return refuse(r, "retry.multiplier", "must be a number");
    if (m->valuedouble < 1 || m->valuedouble > 100)
      return refuse(r, "retry.multiplier", "must be between 1 and 100");
    p->multiplier = m->valuedouble;
  }
  return SC_OK;
}

static int read_approval(reader *r, const cJSON *approval, sc_approval_policy *p) {
  const size_t nactions = sizeof(sc__action_names) / sizeof(sc__action_names[0]);
  static const char *const members[] = {"required", "approvers_needed", "timeout_ms", "on_timeout",
                                        "on_reject"};
  if (approval == NULL) return SC_OK;
  if (!cJSON_IsObject(approval)) return refuse(r, "approval", "must be an object");
  int rc;
  if ((rc = only_members(r, approval, "approval", members, 5)) != SC_OK) return rc;
  const cJSON *req = cJSON_GetObjectItemCaseSensitive(approval, "required");
  if (req != NULL && !cJSON_IsBool(req))
    return refuse(r, "approval.required", "must be true or false");
  p->required = req == NULL || cJSON_IsTrue(req); /* an approval object without "required" asks */
  int on_timeout = (int)p->on_timeout, on_reject = (int)p->on_reject;
  if ((rc = read_uint(r, approval, "approvers_needed", "approval.approvers_needed", 100,
                      &p->approvers_needed)) ||
      (rc = read_uint(r, approval, "timeout_ms", "approval.timeout_ms", 4294967295.0,
                      &p->timeout_ms)) ||
      (rc = read_word(r, approval, "on_timeout", "approval.on_timeout", sc__action_names, nactions,
                      1u << SC_ACTION_APPROVE | 1u << SC_ACTION_REJECT | 1u << SC_ACTION_FAIL,
                      "must be \"approve\", \"reject\" or \"fail\"", &on_timeout)) ||
      (rc = read_word(r, approval, "on_reject", "approval.on_reject", sc__action_names, nactions,
                      1u << SC_ACTION_CANCEL | 1u << SC_ACTION_FAIL,
                      "must be \"cancel\" or \"fail\"", &on_reject)))
    return rc;
  if (p->approvers_needed == 0) return refuse(r, "approval.approvers_needed", "must be at least 1");
  p->on_timeout = (sc_approval_action)on_timeout;
  p->on_reject = (sc_approval_action)on_reject;
  return SC_OK;
}

/* The members of a stage that are spec fields; every other member is a param. */
enum { F_NAME, F_KIND, F_PARAMS, F_TIMEOUT, F_RETRY, F_APPROVAL, F_EFFECT, F_COUNT };

static int spec_field(const char *k) {
  static const char *const fields[F_COUNT] = {"name",  "kind",     "params", "timeout_ms",
                                              "retry", "approval", "effect"};
  static const signed char by_first[26] = {['a' - 'a'] = F_APPROVAL + 1, ['e' - 'a'] = F_EFFECT + 1,
                                           ['k' - 'a'] = F_KIND + 1,     ['n' - 'a'] = F_NAME + 1,
                                           ['p' - 'a'] = F_PARAMS + 1,   ['r' - 'a'] = F_RETRY + 1,
                                           ['t' - 'a'] = F_TIMEOUT + 1};
  if (k == NULL || *k < 'a' || *k > 'z') return -1;
  int f = by_first[*k - 'a'] - 1; /* the first letters of the fields differ */
  return f >= 0 && strcmp(k, fields[f]) == 0 ? f : -1;
}

/* params: the "params" object plus every member that is not a spec field ("run", ...), so a
 * pipeline can write {"kind":"exec","run":"..."} as the design shows. */
static int read_params(reader *r, const cJSON *st, const cJSON *params, size_t extras,
                       cJSON **out) {
  if (params != NULL && !cJSON_IsObject(params)) return refuse(r, "params", "must be an object");
  cJSON *p = params ? cJSON_Duplicate(params, true) : cJSON_CreateObject();
  if (p == NULL) return sc__error(SC_ENOMEM, "plan: out of memory");
  for (const cJSON *m = st->child; extras > 0 && m != NULL; m = m->next) {
    if (m->string == NULL || spec_field(m->string) >= 0) continue;
    extras--;
    if (cJSON_GetObjectItemCaseSensitive(p, m->string) != NULL) {
      cJSON_Delete(p);
      return refuse(r, m->string, "is given both as a stage member and in params");
    }
    cJSON *copy = cJSON_Duplicate(m, true);
    if (copy == NULL || !cJSON_AddItemToObject(p, m->string, copy)) {
      cJSON_Delete(copy);
      cJSON_Delete(p);
      return sc__error(SC_ENOMEM, "plan: out of memory");
    }
  }
  *out = p;
  return SC_OK;
}

static int read_stage(reader *r, const cJSON *st) {
  if (!cJSON_IsObject(st)) return refuse(r, NULL, "must be an object");
  /* One pass over the members finds every spec field (the first of a name, as cJSON's lookup
   * would) and counts the params given at the stage level. */
  const cJSON *f[F_COUNT] = {NULL};
  size_t extras = 0;
  for (const cJSON *m = st->child; m != NULL; m = m->next) {
    int k = spec_field(m->string);
    if (k < 0)
      extras += m->string != NULL;
    else if (f[k] == NULL)
      f[k] = m;
  }
  const cJSON *name = f[F_NAME], *kind = f[F_KIND];
  if (name == NULL) return refuse(r, "name", "is required");
  if (!cJSON_IsString(name) || !*name->valuestring)
    return refuse(r, "name", "must be a non-empty string");
  r->name = name->valuestring;
  if (kind == NULL) return refuse(r, "kind", "is required");
  if (!cJSON_IsString(kind) || !*kind->valuestring)
    return refuse(r, "kind", "must be a non-empty string");
  sc_stage_spec spec;
  sc_stage_spec_init(&spec);
  spec.name = name->valuestring;
  spec.kind = kind->valuestring;
  int effect = (int)spec.effect, rc;
  if ((rc = check_uint(r, f[F_TIMEOUT], "timeout_ms", 4294967295.0, &spec.timeout_ms)) ||
      (rc = read_retry(r, f[F_RETRY], &spec.retry)) ||
      (rc = read_approval(r, f[F_APPROVAL], &spec.approval)) ||
      (rc = check_word(r, f[F_EFFECT], "effect", sc__effect_names,
                       sizeof(sc__effect_names) / sizeof(sc__effect_names[0]), ~0u,
                       "must be \"idempotent\", \"compensable\" or \"irreversible\"", &effect)))
    return rc;
  spec.effect = (sc_effect)effect;
  cJSON *params = NULL;
  if ((rc = read_params(r, st, f[F_PARAMS], extras, &params)) != SC_OK) return rc;
  spec.params = params;
  return sc__plan_add_stage_owned(r->b, &spec, params);
}

int sc_json_stage_factory(const cJSON *config, sc_plan_builder *b, void *udata) {
  (void)udata;
  reader r = {b, 0, NULL};
  if (!cJSON_IsObject(config)) return refuse_config(&r, NULL, "must be a JSON object");
  const cJSON *stages = cJSON_GetObjectItemCaseSensitive(config, "stages");
  if (stages == NULL) return refuse_config(&r, "stages", "is required");
  if (!cJSON_IsArray(stages) || stages->child == NULL)
    return refuse_config(&r, "stages", "must be a non-empty array");
  for (const cJSON *st = stages->child; st != NULL; st = st->next, r.index++) {
    r.name = NULL;
    int rc = read_stage(&r, st);
    if (rc < 0) return rc;
  }
  return SC_OK;
}
