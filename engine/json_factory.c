/* The built-in stage factory: reads config.stages (docs/pipeline.md) into stage specs. Each
 * refusal names the stage index and the field. */
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

/* An optional integer member in [0, max]; keeps *out when absent. */
static int read_uint(reader *r, const cJSON *obj, const char *key, const char *field, double max,
                     uint32_t *out) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (v == NULL) return SC_OK;
  /* The range is checked before the cast: converting a double beyond int64 is undefined. */
  if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 9007199254740992.0 ||
      v->valuedouble != (double)(int64_t)v->valuedouble)
    return refuse(r, field, "must be a non-negative integer");
  if (v->valuedouble > max) {
    char what[96];
    snprintf(what, sizeof(what), "must be between 0 and %.0f (got %.0f)", max, v->valuedouble);
    return refuse(r, field, what);
  }
  *out = (uint32_t)v->valuedouble;
  return SC_OK;
}

/* An optional member that must be one of names[]; *out gets the matching value. */
static int read_word(reader *r, const cJSON *obj, const char *key, const char *field,
                     const char *const *names, const int *values, size_t n, const char *expected,
                     int *out) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (v == NULL) return SC_OK;
  if (cJSON_IsString(v))
    for (size_t i = 0; i < n; i++)
      if (strcmp(v->valuestring, names[i]) == 0) {
        *out = values[i];
        return SC_OK;
      }
  return refuse(r, field, expected);
}

static int read_retry(reader *r, const cJSON *retry, sc_retry_policy *p) {
  if (retry == NULL) return SC_OK;
  if (!cJSON_IsObject(retry)) return refuse(r, "retry", "must be an object");
  int rc;
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
  static const char *const timeout_names[] = {"approve", "reject", "fail"};
  static const int timeout_values[] = {SC_ACTION_APPROVE, SC_ACTION_REJECT, SC_ACTION_FAIL};
  static const char *const reject_names[] = {"cancel", "fail"};
  static const int reject_values[] = {SC_ACTION_CANCEL, SC_ACTION_FAIL};
  if (approval == NULL) return SC_OK;
  if (!cJSON_IsObject(approval)) return refuse(r, "approval", "must be an object");
  const cJSON *req = cJSON_GetObjectItemCaseSensitive(approval, "required");
  if (req != NULL && !cJSON_IsBool(req))
    return refuse(r, "approval.required", "must be true or false");
  p->required = req == NULL || cJSON_IsTrue(req); /* an approval object without "required" asks */
  int rc, on_timeout = (int)p->on_timeout, on_reject = (int)p->on_reject;
  if ((rc = read_uint(r, approval, "approvers_needed", "approval.approvers_needed", 100,
                      &p->approvers_needed)) ||
      (rc = read_uint(r, approval, "timeout_ms", "approval.timeout_ms", 4294967295.0,
                      &p->timeout_ms)) ||
      (rc = read_word(r, approval, "on_timeout", "approval.on_timeout", timeout_names,
                      timeout_values, 3, "must be \"approve\", \"reject\" or \"fail\"",
                      &on_timeout)) ||
      (rc = read_word(r, approval, "on_reject", "approval.on_reject", reject_names, reject_values,
                      2, "must be \"cancel\" or \"fail\"", &on_reject)))
    return rc;
  if (p->approvers_needed == 0) return refuse(r, "approval.approvers_needed", "must be at least 1");
  p->on_timeout = (sc_approval_action)on_timeout;
  p->on_reject = (sc_approval_action)on_reject;
  return SC_OK;
}

static bool is_spec_field(const char *k) {
  static const char *const fields[] = {"name",  "kind",     "params", "timeout_ms",
                                       "retry", "approval", "effect"};
  for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
    if (strcmp(k, fields[i]) == 0) return true;
  return false;
}

/* params: the "params" object plus every member that is not a spec field ("run", ...), so a
 * pipeline can write {"kind":"exec","run":"..."} as the design shows. */
static int read_params(reader *r, const cJSON *st, cJSON **out) {
  const cJSON *params = cJSON_GetObjectItemCaseSensitive(st, "params");
  if (params != NULL && !cJSON_IsObject(params)) return refuse(r, "params", "must be an object");
  cJSON *p = params ? cJSON_Duplicate(params, true) : cJSON_CreateObject();
  if (p == NULL) return sc__error(SC_ENOMEM, "plan: out of memory");
  for (const cJSON *m = st->child; m != NULL; m = m->next) {
    if (m->string == NULL || is_spec_field(m->string)) continue;
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
  static const char *const effect_names[] = {"idempotent", "compensable", "irreversible"};
  static const int effect_values[] = {SC_EFFECT_IDEMPOTENT, SC_EFFECT_COMPENSABLE,
                                      SC_EFFECT_IRREVERSIBLE};
  if (!cJSON_IsObject(st)) return refuse(r, NULL, "must be an object");
  const cJSON *name = cJSON_GetObjectItemCaseSensitive(st, "name");
  if (name == NULL) return refuse(r, "name", "is required");
  if (!cJSON_IsString(name) || !*name->valuestring)
    return refuse(r, "name", "must be a non-empty string");
  r->name = name->valuestring;
  const cJSON *kind = cJSON_GetObjectItemCaseSensitive(st, "kind");
  if (kind == NULL) return refuse(r, "kind", "is required");
  if (!cJSON_IsString(kind) || !*kind->valuestring)
    return refuse(r, "kind", "must be a non-empty string");
  sc_stage_spec spec;
  sc_stage_spec_init(&spec);
  spec.name = name->valuestring;
  spec.kind = kind->valuestring;
  int effect = (int)spec.effect, rc;
  if ((rc = read_uint(r, st, "timeout_ms", "timeout_ms", 4294967295.0, &spec.timeout_ms)) ||
      (rc = read_retry(r, cJSON_GetObjectItemCaseSensitive(st, "retry"), &spec.retry)) ||
      (rc = read_approval(r, cJSON_GetObjectItemCaseSensitive(st, "approval"), &spec.approval)) ||
      (rc = read_word(r, st, "effect", "effect", effect_names, effect_values, 3,
                      "must be \"idempotent\", \"compensable\" or \"irreversible\"", &effect)))
    return rc;
  spec.effect = (sc_effect)effect;
  cJSON *params = NULL;
  if ((rc = read_params(r, st, &params)) != SC_OK) return rc;
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
