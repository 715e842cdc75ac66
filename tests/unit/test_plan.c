/* Plans: the JSON stage factory, custom factories, fingerprints, canonical JSON and digests. */
#include "harness.h"

#include <math.h>

#define FP_LEN (sizeof("sha256:") - 1 + 64)

/* A pipeline config with every stage field in use. */
static const char *const base_config =
    "{\"version\":\"2.4.1\",\"stages\":["
    "{\"name\":\"build\",\"kind\":\"fn\",\"params\":{\"fn\":\"build\"}},"
    "{\"name\":\"wait\",\"kind\":\"sleep\",\"params\":{\"ms\":200,\"note\":\"x\"},"
    "\"timeout_ms\":1000,"
    "\"retry\":{\"max_attempts\":3,\"initial_backoff_ms\":200,\"max_backoff_ms\":2000,"
    "\"multiplier\":2},"
    "\"approval\":{\"required\":true,\"approvers_needed\":2,\"timeout_ms\":600000,"
    "\"on_timeout\":\"reject\",\"on_reject\":\"cancel\"},"
    "\"effect\":\"compensable\"}]}";

/* ---- helpers ---- */

static int fingerprint_of(const char *config_json, char out[72]) {
  cJSON *config = json_or_die(config_json);
  memset(out, 0, 72);
  int rc = sc_plan_fingerprint(NULL, NULL, config, out);
  cJSON_Delete(config);
  return rc;
}

static void fingerprint_or_die(const char *config_json, char out[72]) {
  int rc = fingerprint_of(config_json, out);
  if (rc != SC_OK)
    fail_msg("fingerprint of %s failed: %s (%s)", config_json, sc_err_name(rc), sc_error_message());
}

static void assert_same_fingerprint(const char *a, const char *b) {
  char fa[72], fb[72];
  fingerprint_or_die(a, fa);
  fingerprint_or_die(b, fb);
  if (strcmp(fa, fb) != 0) fail_msg("fingerprints differ:\n  %s\n  %s", a, b);
}

static void assert_different_fingerprint(const char *a, const char *b) {
  char fa[72], fb[72];
  fingerprint_or_die(a, fa);
  fingerprint_or_die(b, fb);
  if (strcmp(fa, fb) == 0) fail_msg("fingerprints are equal:\n  %s\n  %s", a, b);
}

static void assert_is_sha256(const char *s) {
  assert_int_equal(strlen(s), FP_LEN);
  assert_memory_equal(s, "sha256:", 7);
  for (size_t i = 7; i < FP_LEN; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
      fail_msg("not lowercase hex at %zu: %s", i, s);
}

/* The message must contain every non-NULL needle. */
static void assert_message_has(const char *message, const char *n1, const char *n2,
                               const char *n3) {
  const char *needles[] = {n1, n2, n3};
  for (size_t i = 0; i < 3; i++)
    if (needles[i] != NULL && strstr(message, needles[i]) == NULL)
      fail_msg("message \"%s\" does not contain \"%s\"", message, needles[i]);
}

/* The JSON factory refuses config_json with SC_EPLAN and a message naming n1, n2 and n3. */
static void assert_refused(const char *config_json, const char *n1, const char *n2,
                           const char *n3) {
  char fp[72];
  int rc = fingerprint_of(config_json, fp);
  if (rc != SC_EPLAN)
    fail_msg("expected SC_EPLAN for %s, got %s (%s)", config_json, sc_err_name(rc),
             sc_error_message());
  assert_message_has(sc_error_message(), n1, n2, n3);
}

/* The structured record of the last refusal (sc_plan_last_error): the stage index, the stage's
 * name (NULL: none) and the JSON path of the field (NULL: none). */
static void assert_plan_error(int code, int stage_index, const char *stage, const char *field) {
  const sc_plan_error *pe = sc_plan_last_error();
  if (pe == NULL) fail_msg("no plan error recorded (message: %s)", sc_error_message());
  assert_int_equal(pe->code, code);
  assert_int_equal(pe->stage_index, stage_index);
  if (stage == NULL && pe->stage != NULL) fail_msg("stage \"%s\", expected none", pe->stage);
  if (stage != NULL) {
    assert_non_null(pe->stage);
    assert_string_equal(pe->stage, stage);
  }
  if (field == NULL && pe->field != NULL) fail_msg("field \"%s\", expected none", pe->field);
  if (field != NULL) {
    if (pe->field == NULL) fail_msg("no field, expected \"%s\"", field);
    assert_string_equal(pe->field, field);
  }
  assert_non_null(pe->message);
  assert_non_null(pe->problem);
  assert_true(*pe->problem != '\0');
  assert_string_equal(pe->message, sc_error_message());
}

/* A config of a valid stage 0 followed by the given stage 1, which the factory refuses for
 * field (the path inside the stage, as "retry.multiplier"); the record names stage 1 and, when it
 * has a non-empty string name, that name. */
static void assert_stage1_refused(const char *stage_json, const char *field) {
  char config[1024], path[128];
  snprintf(config, sizeof(config),
           "{\"stages\":[{\"name\":\"first\",\"kind\":\"sleep\",\"params\":{\"ms\":1}},%s]}",
           stage_json);
  char fp[72];
  int rc = fingerprint_of(config, fp);
  if (rc != SC_EPLAN)
    fail_msg("expected SC_EPLAN for %s, got %s (%s)", config, sc_err_name(rc), sc_error_message());
  cJSON *stage = json_or_die(stage_json);
  const cJSON *name = cJSON_GetObjectItemCaseSensitive(stage, "name");
  snprintf(path, sizeof(path), "stages[1].%s", field);
  assert_plan_error(SC_EPLAN, 1,
                    cJSON_IsString(name) && *name->valuestring ? name->valuestring : NULL, path);
  cJSON_Delete(stage);
}

static void assert_stage1_accepted(const char *stage_json) {
  char config[1024], fp[72];
  snprintf(config, sizeof(config),
           "{\"stages\":[{\"name\":\"first\",\"kind\":\"sleep\",\"params\":{\"ms\":1}},%s]}",
           stage_json);
  fingerprint_or_die(config, fp);
}

static char *canonical_of(const char *json) {
  cJSON *v = json_or_die(json);
  size_t len = 0;
  char *c = sc_json_canonical(v, &len);
  cJSON_Delete(v);
  assert_non_null(c);
  assert_int_equal(len, strlen(c));
  return c;
}

static void assert_canonical(const char *json, const char *want) {
  char *got = canonical_of(json);
  if (strcmp(got, want) != 0) {
    char copy[1024];
    snprintf(copy, sizeof(copy), "%s", got);
    free(got);
    fail_msg("canonical JSON of %s:\n  got  %s\n  want %s", json, copy, want);
  }
  free(got);
}

/* A stage kind that completes at once. */
static int complete_now(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  sc_stage_complete(ctx, NULL);
  return SC_OK;
}

static void register_noop_kind(sc_engine *e, const char *name) {
  sc_stage_kind kind = {SC_STAGE_KIND_VERSION, complete_now, NULL, NULL};
  assert_int_equal(sc_engine_register_kind(e, name, &kind, NULL), SC_OK);
}

static int submit_json(sc_engine *e, const char *config_json, sc_task **out) {
  cJSON *config = json_or_die(config_json);
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.task_id = "t1";
  spec.tenant_id = "acme";
  spec.config = config;
  int rc = sc_task_submit(e, &spec, out);
  cJSON_Delete(config);
  return rc;
}

/* ---- the fingerprint ---- */

static void fingerprint_is_sha256_and_64_lowercase_hex(void **state) {
  (void)state;
  char fp[72];
  fingerprint_or_die(base_config, fp);
  assert_is_sha256(fp);
}

static void fingerprint_is_the_digest_of_the_filled_in_stage_specs(void **state) {
  (void)state;
  /* docs/events.md: SHA-256 over the canonical JSON array of the specs, every default filled in. */
  const char *config = "{\"stages\":[{\"name\":\"a\",\"kind\":\"sleep\",\"params\":{\"ms\":5}}]}";
  const char *specs =
      "[{\"name\":\"a\",\"kind\":\"sleep\",\"params\":{\"ms\":5},\"timeout_ms\":0,"
      "\"retry\":{\"max_attempts\":1,\"initial_backoff_ms\":0,\"max_backoff_ms\":0,"
      "\"multiplier\":2},"
      "\"approval\":{\"required\":false,\"approvers_needed\":1,\"timeout_ms\":0,"
      "\"on_timeout\":\"reject\",\"on_reject\":\"cancel\"},\"effect\":\"idempotent\"}]";
  char fp[72], digest[72];
  fingerprint_or_die(config, fp);
  cJSON *v = json_or_die(specs);
  assert_int_equal(sc_json_digest(v, digest), SC_OK);
  cJSON_Delete(v);
  assert_string_equal(fp, digest);
}

static void fingerprint_is_the_same_for_the_same_config(void **state) {
  (void)state;
  char a[72], b[72];
  fingerprint_or_die(base_config, a);
  fingerprint_or_die(base_config, b);
  assert_string_equal(a, b);
}

static void fingerprint_ignores_key_order(void **state) {
  (void)state;
  const char *reordered =
      "{\"stages\":["
      "{\"params\":{\"fn\":\"build\"},\"kind\":\"fn\",\"name\":\"build\"},"
      "{\"effect\":\"compensable\","
      "\"approval\":{\"on_reject\":\"cancel\",\"on_timeout\":\"reject\",\"timeout_ms\":600000,"
      "\"approvers_needed\":2,\"required\":true},"
      "\"retry\":{\"multiplier\":2,\"max_backoff_ms\":2000,\"initial_backoff_ms\":200,"
      "\"max_attempts\":3},"
      "\"timeout_ms\":1000,\"params\":{\"note\":\"x\",\"ms\":200},\"kind\":\"sleep\","
      "\"name\":\"wait\"}],\"version\":\"2.4.1\"}";
  assert_same_fingerprint(base_config, reordered);
}

static void fingerprint_ignores_whitespace(void **state) {
  (void)state;
  const char *spaced =
      "{\n  \"version\" : \"2.4.1\",\n  \"stages\" : [\n"
      "    { \"name\" : \"build\", \"kind\" : \"fn\", \"params\" : { \"fn\" : \"build\" } },\n"
      "    { \"name\":\"wait\",\t\"kind\":\"sleep\", \"params\": {\"ms\": 200, \"note\": \"x\"},\n"
      "      \"timeout_ms\": 1000,\r\n"
      "      \"retry\": { \"max_attempts\": 3, \"initial_backoff_ms\": 200,"
      " \"max_backoff_ms\": 2000, \"multiplier\": 2 },\n"
      "      \"approval\": { \"required\": true, \"approvers_needed\": 2, \"timeout_ms\": 600000,"
      " \"on_timeout\": \"reject\", \"on_reject\": \"cancel\" },\n"
      "      \"effect\": \"compensable\" }\n  ]\n}\n";
  assert_same_fingerprint(base_config, spaced);
}

static void fingerprint_ignores_defaults_spelled_out(void **state) {
  (void)state;
  const char *bare = "{\"stages\":[{\"name\":\"a\",\"kind\":\"sleep\",\"params\":{\"ms\":5}}]}";
  assert_same_fingerprint(bare, "{\"stages\":[{\"name\":\"a\",\"kind\":\"sleep\","
                                "\"params\":{\"ms\":5},\"timeout_ms\":0}]}");
  assert_same_fingerprint(bare, "{\"stages\":[{\"name\":\"a\",\"kind\":\"sleep\","
                                "\"params\":{\"ms\":5},\"effect\":\"idempotent\"}]}");
  assert_same_fingerprint(bare, "{\"stages\":[{\"name\":\"a\",\"kind\":\"sleep\","
                                "\"params\":{\"ms\":5},\"retry\":{}}]}");
  assert_same_fingerprint(bare, "{\"stages\":[{\"name\":\"a\",\"kind\":\"sleep\","
                                "\"params\":{\"ms\":5},\"retry\":{\"max_attempts\":0}}]}");
  assert_same_fingerprint(bare, "{\"stages\":[{\"name\":\"a\",\"kind\":\"sleep\","
                                "\"params\":{\"ms\":5},\"retry\":{\"max_attempts\":1}}]}");
  assert_same_fingerprint(bare, "{\"stages\":[{\"name\":\"a\",\"kind\":\"sleep\","
                                "\"params\":{\"ms\":5},\"approval\":{\"required\":false}}]}");
  assert_same_fingerprint(
      bare, "{\"stages\":[{\"name\":\"a\",\"kind\":\"sleep\",\"params\":{\"ms\":5},"
            "\"timeout_ms\":0,\"effect\":\"idempotent\","
            "\"retry\":{\"max_attempts\":1,\"initial_backoff_ms\":0,\"max_backoff_ms\":0,"
            "\"multiplier\":2},"
            "\"approval\":{\"required\":false,\"approvers_needed\":1,\"timeout_ms\":0,"
            "\"on_timeout\":\"reject\",\"on_reject\":\"cancel\"}}]}");
  assert_different_fingerprint(bare, "{\"stages\":[{\"name\":\"a\",\"kind\":\"sleep\","
                                     "\"params\":{\"ms\":5},\"timeout_ms\":1}]}");
  assert_different_fingerprint(bare, "{\"stages\":[{\"name\":\"a\",\"kind\":\"sleep\","
                                     "\"params\":{\"ms\":5},\"approval\":{}}]}");
  assert_same_fingerprint("{\"stages\":[{\"name\":\"a\",\"kind\":\"custom\"}]}",
                          "{\"stages\":[{\"name\":\"a\",\"kind\":\"custom\",\"params\":{}}]}");
}

static void fingerprint_changes_with_any_change_to_a_stage(void **state) {
  (void)state;
#define S0 "{\"name\":\"build\",\"kind\":\"fn\",\"params\":{\"fn\":\"build\"}}"
#define RETRY(a, i, m, x)                                                                          \
  "\"retry\":{\"max_attempts\":" a ",\"initial_backoff_ms\":" i ",\"max_backoff_ms\":" m           \
  ",\"multiplier\":" x "}"
#define APPROVAL(r, n, t, ot, orj)                                                                 \
  "\"approval\":{\"required\":" r ",\"approvers_needed\":" n ",\"timeout_ms\":" t                  \
  ",\"on_timeout\":\"" ot "\",\"on_reject\":\"" orj "\"}"
#define S1(name, kind, params, timeout, retry, approval, effect)                                   \
  "{\"name\":\"" name "\",\"kind\":\"" kind "\",\"params\":" params ",\"timeout_ms\":" timeout     \
  "," retry "," approval ",\"effect\":\"" effect "\"}"
#define BASE_RETRY     RETRY("3", "200", "2000", "2")
#define BASE_APPROVAL  APPROVAL("true", "2", "600000", "reject", "cancel")
#define BASE_PARAMS    "{\"ms\":200,\"note\":\"x\"}"
#define CONFIG(stages) "{\"version\":\"2.4.1\",\"stages\":[" stages "]}"
  const char *variants[] = {
      /* 0: the base, written like base_config */
      CONFIG(S0 "," S1("wait", "sleep", BASE_PARAMS, "1000", BASE_RETRY, BASE_APPROVAL,
                       "compensable")),
      /* name, kind, params */
      CONFIG(S0 "," S1("pause", "sleep", BASE_PARAMS, "1000", BASE_RETRY, BASE_APPROVAL,
                       "compensable")),
      CONFIG(S0 "," S1("wait", "timer", BASE_PARAMS, "1000", BASE_RETRY, BASE_APPROVAL,
                       "compensable")),
      CONFIG(S0 "," S1("wait", "sleep", "{\"ms\":201,\"note\":\"x\"}", "1000", BASE_RETRY,
                       BASE_APPROVAL, "compensable")),
      CONFIG(S0 "," S1("wait", "sleep", "{\"ms\":200,\"note\":\"y\"}", "1000", BASE_RETRY,
                       BASE_APPROVAL, "compensable")),
      CONFIG(S0 "," S1("wait", "sleep", "{\"ms\":200}", "1000", BASE_RETRY, BASE_APPROVAL,
                       "compensable")),
      CONFIG(S0 "," S1("wait", "sleep", "{\"ms\":200,\"note\":{\"deep\":[1]}}", "1000", BASE_RETRY,
                       BASE_APPROVAL, "compensable")),
      /* timeout */
      CONFIG(S0 "," S1("wait", "sleep", BASE_PARAMS, "1001", BASE_RETRY, BASE_APPROVAL,
                       "compensable")),
      CONFIG(S0
             "," S1("wait", "sleep", BASE_PARAMS, "0", BASE_RETRY, BASE_APPROVAL, "compensable")),
      /* retry fields */
      CONFIG(S0 "," S1("wait", "sleep", BASE_PARAMS, "1000", RETRY("4", "200", "2000", "2"),
                       BASE_APPROVAL, "compensable")),
      CONFIG(S0 "," S1("wait", "sleep", BASE_PARAMS, "1000", RETRY("3", "201", "2000", "2"),
                       BASE_APPROVAL, "compensable")),
      CONFIG(S0 "," S1("wait", "sleep", BASE_PARAMS, "1000", RETRY("3", "200", "2001", "2"),
                       BASE_APPROVAL, "compensable")),
      CONFIG(S0 "," S1("wait", "sleep", BASE_PARAMS, "1000", RETRY("3", "200", "2000", "3"),
                       BASE_APPROVAL, "compensable")),
      CONFIG(S0 "," S1("wait", "sleep", BASE_PARAMS, "1000", RETRY("3", "200", "2000", "2.5"),
                       BASE_APPROVAL, "compensable")),
      /* approval fields */
      CONFIG(S0 "," S1("wait", "sleep", BASE_PARAMS, "1000", BASE_RETRY,
                       APPROVAL("false", "2", "600000", "reject", "cancel"), "compensable")),
      CONFIG(S0 "," S1("wait", "sleep", BASE_PARAMS, "1000", BASE_RETRY,
                       APPROVAL("true", "3", "600000", "reject", "cancel"), "compensable")),
      CONFIG(S0 "," S1("wait", "sleep", BASE_PARAMS, "1000", BASE_RETRY,
                       APPROVAL("true", "2", "600001", "reject", "cancel"), "compensable")),
      CONFIG(S0 "," S1("wait", "sleep", BASE_PARAMS, "1000", BASE_RETRY,
                       APPROVAL("true", "2", "600000", "approve", "cancel"), "compensable")),
      CONFIG(S0 "," S1("wait", "sleep", BASE_PARAMS, "1000", BASE_RETRY,
                       APPROVAL("true", "2", "600000", "fail", "cancel"), "compensable")),
      CONFIG(S0 "," S1("wait", "sleep", BASE_PARAMS, "1000", BASE_RETRY,
                       APPROVAL("true", "2", "600000", "reject", "fail"), "compensable")),
      /* effect */
      CONFIG(S0
             "," S1("wait", "sleep", BASE_PARAMS, "1000", BASE_RETRY, BASE_APPROVAL, "idempotent")),
      CONFIG(S0 "," S1("wait", "sleep", BASE_PARAMS, "1000", BASE_RETRY, BASE_APPROVAL,
                       "irreversible")),
      /* stage order, a stage added, a stage removed */
      CONFIG(S1("wait", "sleep", BASE_PARAMS, "1000", BASE_RETRY, BASE_APPROVAL,
                "compensable") "," S0),
      CONFIG(S0 "," S1("wait", "sleep", BASE_PARAMS, "1000", BASE_RETRY, BASE_APPROVAL,
                       "compensable") ",{\"name\":\"more\",\"kind\":\"sleep\",\"params\":{\"ms\":1}"
                                      "}"),
      CONFIG(S0),
  };
#undef S0
#undef RETRY
#undef APPROVAL
#undef S1
#undef BASE_RETRY
#undef BASE_APPROVAL
#undef BASE_PARAMS
#undef CONFIG
  const size_t n = sizeof(variants) / sizeof(variants[0]);
  char fps[sizeof(variants) / sizeof(variants[0])][72];
  for (size_t i = 0; i < n; i++)
    fingerprint_or_die(variants[i], fps[i]);
  char base[72];
  fingerprint_or_die(base_config, base);
  assert_string_equal(fps[0], base);
  for (size_t i = 0; i < n; i++)
    for (size_t j = i + 1; j < n; j++)
      if (strcmp(fps[i], fps[j]) == 0)
        fail_msg("variants %zu and %zu have the same fingerprint:\n  %s\n  %s", i, j, variants[i],
                 variants[j]);
}

static void fingerprint_ignores_the_configs_other_members(void **state) {
  (void)state;
  const char *stages = "\"stages\":[{\"name\":\"a\",\"kind\":\"sleep\",\"params\":{\"ms\":5}}]";
  char a[256], b[256], c[256];
  snprintf(a, sizeof(a), "{\"version\":\"1.0\",%s}", stages);
  snprintf(b, sizeof(b), "{\"version\":\"2.0\",%s}", stages);
  snprintf(c, sizeof(c), "{%s,\"tenant\":\"acme\",\"extra\":{\"deep\":[1,2,3]}}", stages);
  assert_same_fingerprint(a, b);
  assert_same_fingerprint(a, c);
}

static void extra_stage_members_are_read_as_params(void **state) {
  (void)state;
  assert_same_fingerprint(
      "{\"stages\":[{\"name\":\"a\",\"kind\":\"sleep\",\"ms\":5}]}",
      "{\"stages\":[{\"name\":\"a\",\"kind\":\"sleep\",\"params\":{\"ms\":5}}]}");
  assert_same_fingerprint(
      "{\"stages\":[{\"name\":\"d\",\"kind\":\"exec\",\"run\":\"./deploy.sh\"}]}",
      "{\"stages\":[{\"name\":\"d\",\"kind\":\"exec\",\"params\":{\"run\":\"./deploy.sh\"}}]}");
  assert_same_fingerprint(
      "{\"stages\":[{\"name\":\"a\",\"kind\":\"sleep\",\"params\":{\"ms\":5},\"note\":[1]}]}",
      "{\"stages\":[{\"name\":\"a\",\"kind\":\"sleep\",\"params\":{\"ms\":5,\"note\":[1]}}]}");
}

/* ---- refusals of the JSON factory ---- */

static void json_factory_refuses_a_config_that_is_not_an_object(void **state) {
  (void)state;
  assert_refused("[]", "config", NULL, NULL);
  assert_refused("[{\"name\":\"a\",\"kind\":\"sleep\",\"params\":{\"ms\":5}}]", "config", NULL,
                 NULL);
  assert_refused("\"stages\"", "config", NULL, NULL);
  assert_refused("42", "config", NULL, NULL);
  assert_refused("null", "config", NULL, NULL);
  assert_plan_error(SC_EPLAN, -1, NULL, NULL);
}

static void json_factory_refuses_a_config_without_stages(void **state) {
  (void)state;
  assert_refused("{}", "stages", NULL, NULL);
  assert_plan_error(SC_EPLAN, -1, NULL, "stages");
  assert_refused("{\"version\":\"1\",\"stage\":[]}", "stages", NULL, NULL);
  assert_plan_error(SC_EPLAN, -1, NULL, "stages");
}

static void json_factory_refuses_empty_or_non_array_stages(void **state) {
  (void)state;
  assert_refused("{\"stages\":[]}", "stages", NULL, NULL);
  assert_refused("{\"stages\":{}}", "stages", NULL, NULL);
  assert_refused("{\"stages\":{\"name\":\"a\",\"kind\":\"sleep\"}}", "stages", NULL, NULL);
  assert_refused("{\"stages\":\"a\"}", "stages", NULL, NULL);
  assert_refused("{\"stages\":null}", "stages", NULL, NULL);
  assert_plan_error(SC_EPLAN, -1, NULL, "stages");
  assert_refused("{\"stages\":[]}", "stages", NULL, NULL);
  assert_plan_error(SC_EPLAN, -1, NULL, "stages");
}

static void json_factory_refuses_a_stage_that_is_not_an_object(void **state) {
  (void)state;
  assert_refused("{\"stages\":[{\"name\":\"a\",\"kind\":\"sleep\",\"params\":{\"ms\":1}},\"b\"]}",
                 "stage 1", NULL, NULL);
  assert_refused("{\"stages\":[{\"name\":\"a\",\"kind\":\"sleep\",\"params\":{\"ms\":1}},[]]}",
                 "stage 1", NULL, NULL);
  assert_refused("{\"stages\":[{\"name\":\"a\",\"kind\":\"sleep\",\"params\":{\"ms\":1}},null]}",
                 "stage 1", NULL, NULL);
  assert_plan_error(SC_EPLAN, 1, NULL, "stages[1]");
}

static void json_factory_refuses_a_stage_without_a_name(void **state) {
  (void)state;
  assert_stage1_refused("{\"kind\":\"sleep\",\"params\":{\"ms\":1}}", "name");
}

static void json_factory_refuses_a_name_that_is_not_a_string(void **state) {
  (void)state;
  assert_stage1_refused("{\"name\":5,\"kind\":\"sleep\",\"params\":{\"ms\":1}}", "name");
  assert_stage1_refused("{\"name\":null,\"kind\":\"sleep\",\"params\":{\"ms\":1}}", "name");
  assert_stage1_refused("{\"name\":[\"a\"],\"kind\":\"sleep\",\"params\":{\"ms\":1}}", "name");
  assert_stage1_refused("{\"name\":\"\",\"kind\":\"sleep\",\"params\":{\"ms\":1}}", "name");
}

static void json_factory_refuses_a_duplicate_name_naming_both_stages(void **state) {
  (void)state;
  assert_refused("{\"stages\":[{\"name\":\"a\",\"kind\":\"sleep\",\"params\":{\"ms\":1}},"
                 "{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":1}},"
                 "{\"name\":\"a\",\"kind\":\"sleep\",\"params\":{\"ms\":2}}]}",
                 "stage 2", "stage 0", "\"a\"");
  assert_plan_error(SC_EPLAN, 2, "a", "stages[2].name");
  assert_int_equal(sc_plan_last_error()->other_stage_index, 0);
}

static void json_factory_refuses_a_stage_without_a_kind(void **state) {
  (void)state;
  assert_stage1_refused("{\"name\":\"b\",\"params\":{\"ms\":1}}", "kind");
  assert_stage1_refused("{\"name\":\"b\",\"kind\":7}", "kind");
  assert_stage1_refused("{\"name\":\"b\",\"kind\":\"\"}", "kind");
}

static void json_factory_refuses_a_bad_timeout(void **state) {
  (void)state;
  assert_stage1_refused("{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":1},"
                        "\"timeout_ms\":-1}",
                        "timeout_ms");
  assert_stage1_refused("{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":1},"
                        "\"timeout_ms\":1.5}",
                        "timeout_ms");
  assert_stage1_refused("{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":1},"
                        "\"timeout_ms\":\"100\"}",
                        "timeout_ms");
  assert_stage1_refused("{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":1},"
                        "\"timeout_ms\":4294967296}",
                        "timeout_ms");
  assert_stage1_refused("{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":1},"
                        "\"timeout_ms\":1e30}",
                        "timeout_ms");
}

/* stage 1's refusal for field has a problem containing want and not unwanted (may be NULL). */
static void assert_stage1_problem(const char *stage_json, const char *field, const char *want,
                                  const char *unwanted) {
  assert_stage1_refused(stage_json, field);
  const char *problem = sc_plan_last_error()->problem;
  if (strstr(problem, want) == NULL) fail_msg("%s: problem \"%s\"", stage_json, problem);
  if (unwanted != NULL && strstr(problem, unwanted) != NULL)
    fail_msg("%s: problem \"%s\" has \"%s\"", stage_json, problem, unwanted);
}

/* An integer too large is told the range, not that it is no integer; past 2^53 the number read is
 * not the one written, so it is not quoted. */
static void a_timeout_too_large_is_told_the_range(void **state) {
  (void)state;
  const char *huge[] = {"18446744073709551616", "1e16", "1e300", "9007199254740993"};
  for (size_t i = 0; i < 4; i++) {
    char stage[256];
    snprintf(stage, sizeof(stage),
             "{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":1},\"timeout_ms\":%s}",
             huge[i]);
    assert_stage1_problem(stage, "timeout_ms", "must be between 0 and 4294967295",
                          "9007199254740992");
  }
  assert_stage1_problem("{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":1},"
                        "\"timeout_ms\":5000000000}",
                        "timeout_ms", "(got 5000000000)", NULL);
  assert_stage1_problem("{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":1},"
                        "\"timeout_ms\":-1e300}",
                        "timeout_ms", "must be a non-negative integer", NULL);
}

/* retry and approval refuse a member they do not have, as the top level does: a misspelt
 * "max_attempt" is not a stage without retries. */
static void retry_and_approval_refuse_unknown_members(void **state) {
  (void)state;
  assert_stage1_problem("{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":1},"
                        "\"retry\":{\"max_attempt\":3}}",
                        "retry.max_attempt", "is not a member of retry (members: max_attempts",
                        NULL);
  assert_stage1_problem("{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":1},"
                        "\"approval\":{\"required\":true,\"aprovers_needed\":2}}",
                        "approval.aprovers_needed", "is not a member of approval", NULL);
  assert_stage1_accepted("{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":1},"
                         "\"retry\":{\"max_attempts\":3,\"initial_backoff_ms\":1,"
                         "\"max_backoff_ms\":2,\"multiplier\":2},\"approval\":{\"required\":"
                         "true,\"approvers_needed\":2,\"timeout_ms\":5,\"on_timeout\":\"fail\","
                         "\"on_reject\":\"fail\"}}");
}

static void json_factory_accepts_timeouts_up_to_uint32_max(void **state) {
  (void)state;
  assert_stage1_accepted("{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":1},"
                         "\"timeout_ms\":4294967295}");
  assert_stage1_accepted("{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":1},"
                         "\"timeout_ms\":0}");
}

static void json_factory_refuses_a_retry_that_is_not_an_object(void **state) {
  (void)state;
  assert_stage1_refused("{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":1},\"retry\":3}",
                        "retry");
  assert_stage1_refused("{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":1},"
                        "\"retry\":[3]}",
                        "retry");
}

static void json_factory_refuses_more_than_1000_attempts(void **state) {
  (void)state;
  assert_stage1_refused("{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":1},"
                        "\"retry\":{\"max_attempts\":1001}}",
                        "retry.max_attempts");
  assert_stage1_accepted("{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":1},"
                         "\"retry\":{\"max_attempts\":1000}}");
}

static void json_factory_refuses_a_multiplier_outside_1_to_100(void **state) {
  (void)state;
  assert_stage1_refused("{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":1},"
                        "\"retry\":{\"multiplier\":0.5}}",
                        "retry.multiplier");
  assert_stage1_refused("{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":1},"
                        "\"retry\":{\"multiplier\":101}}",
                        "retry.multiplier");
  assert_stage1_refused("{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":1},"
                        "\"retry\":{\"multiplier\":\"2\"}}",
                        "retry.multiplier");
  assert_stage1_accepted("{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":1},"
                         "\"retry\":{\"multiplier\":1}}");
  assert_stage1_accepted("{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":1},"
                         "\"retry\":{\"multiplier\":100}}");
}

static void json_factory_refuses_an_unknown_on_timeout_action(void **state) {
  (void)state;
  assert_stage1_refused("{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":1},"
                        "\"approval\":{\"on_timeout\":\"maybe\"}}",
                        "approval.on_timeout");
  assert_stage1_refused("{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":1},"
                        "\"approval\":{\"on_timeout\":\"cancel\"}}",
                        "approval.on_timeout");
}

static void json_factory_refuses_an_unknown_on_reject_action(void **state) {
  (void)state;
  assert_stage1_refused("{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":1},"
                        "\"approval\":{\"on_reject\":\"approve\"}}",
                        "approval.on_reject");
}

static void json_factory_refuses_zero_approvers(void **state) {
  (void)state;
  assert_stage1_refused("{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":1},"
                        "\"approval\":{\"approvers_needed\":0}}",
                        "approval.approvers_needed");
}

static void json_factory_refuses_an_unknown_effect(void **state) {
  (void)state;
  assert_stage1_refused("{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":1},"
                        "\"effect\":\"sometimes\"}",
                        "effect");
  assert_stage1_refused("{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":1},"
                        "\"effect\":1}",
                        "effect");
}

static void json_factory_refuses_params_that_are_not_an_object(void **state) {
  (void)state;
  assert_stage1_refused("{\"name\":\"b\",\"kind\":\"sleep\",\"params\":[1]}", "params");
  assert_stage1_refused("{\"name\":\"b\",\"kind\":\"sleep\",\"params\":\"ms=1\"}", "params");
}

static void json_factory_refuses_a_member_given_twice(void **state) {
  (void)state;
  assert_stage1_refused("{\"name\":\"b\",\"kind\":\"sleep\",\"ms\":5,\"params\":{\"ms\":5}}", "ms");
}

static void json_factory_refuses_an_fn_stage_without_params_fn(void **state) {
  (void)state;
  assert_stage1_refused("{\"name\":\"b\",\"kind\":\"fn\"}", "params.fn");
  assert_stage1_refused("{\"name\":\"b\",\"kind\":\"fn\",\"params\":{}}", "params.fn");
  assert_stage1_refused("{\"name\":\"b\",\"kind\":\"fn\",\"params\":{\"fn\":3}}", "params.fn");
  assert_stage1_refused("{\"name\":\"b\",\"kind\":\"fn\",\"params\":{\"fn\":\"\"}}", "params.fn");
}

static void json_factory_refuses_a_sleep_stage_without_valid_params_ms(void **state) {
  (void)state;
  assert_stage1_refused("{\"name\":\"b\",\"kind\":\"sleep\"}", "params.ms");
  assert_stage1_refused("{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":\"5\"}}",
                        "params.ms");
  assert_stage1_refused("{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":-1}}", "params.ms");
  assert_stage1_refused("{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":1.5}}", "params.ms");
  assert_stage1_refused("{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":4294967296}}",
                        "params.ms");
}

static void json_factory_refusal_message_names_the_stage(void **state) {
  (void)state;
  assert_refused("{\"stages\":[{\"name\":\"build\",\"kind\":\"sleep\",\"params\":{\"ms\":1}},"
                 "{\"name\":\"verify\",\"kind\":\"sleep\",\"params\":{\"ms\":1},"
                 "\"timeout_ms\":-5}]}",
                 "stage 1", "\"verify\"", "\"timeout_ms\"");
  assert_plan_error(SC_EPLAN, 1, "verify", "stages[1].timeout_ms");
  assert_string_equal(sc_plan_last_error()->problem, "must be a non-negative integer");
  assert_false(sc_plan_last_error()->previous_config);
}

/* A factory of one's own that gives, as udata says, 0: no stage; 1: a backoff the JSON factory
 * refuses; 2: params holding a Raw item; 3: params with NaN; 4: a name that is not UTF-8; 5: the
 * largest backoff, which is fine. */
static int odd_factory(const cJSON *config, sc_plan_builder *b, void *udata) {
  (void)config;
  int which = *(const int *)udata;
  if (which == 0) return SC_OK;
  sc_stage_spec s;
  sc_stage_spec_init(&s);
  s.name = which == 4 ? "s\xff" : "s";
  s.kind = "noop";
  cJSON *params = cJSON_CreateObject();
  cJSON *inner = cJSON_AddObjectToObject(params, "x");
  if (which == 1) s.retry.initial_backoff_ms = 100000000;
  if (which == 5) s.retry.initial_backoff_ms = 86400000;
  if (which == 2) cJSON_AddItemToObject(inner, "y", cJSON_CreateRaw("1}"));
  if (which == 3) cJSON_AddItemToObject(inner, "y", cJSON_CreateNumber(NAN));
  s.params = params;
  int rc = sc_plan_add_stage(b, &s);
  cJSON_Delete(params);
  return rc;
}

/* sc_plan_add_stage holds every factory to what the JSON factory holds a config to: no empty plan,
 * the same bounds, and params and names a log can give back. */
static void add_stage_holds_a_factory_of_ones_own_to_the_json_factorys_rules(void **state) {
  (void)state;
  struct {
    const char *field, *problem;
  } want[] = {{NULL, "no stages"},
              {"stages[0].retry.initial_backoff_ms", "at most 86400000"},
              {"stages[0].params.x.y", "raw JSON text"},
              {"stages[0].params.x.y", "not a finite number"},
              {"stages[0].name", "not valid UTF-8"}};
  for (int which = 0; which < 5; which++) {
    char fp[72];
    int rc = sc_plan_fingerprint(odd_factory, &which, NULL, fp);
    if (rc != SC_EPLAN) fail_msg("case %d: %s (%s)", which, sc_err_name(rc), sc_error_message());
    const sc_plan_error *pe = sc_plan_last_error();
    assert_non_null(pe);
    if (want[which].field == NULL)
      assert_null(pe->field);
    else if (pe->field == NULL || strcmp(pe->field, want[which].field) != 0)
      fail_msg("case %d: field %s", which, pe->field ? pe->field : "(none)");
    if (strstr(pe->problem, want[which].problem) == NULL)
      fail_msg("case %d: problem %s", which, pe->problem);
  }
  char fp[72];
  int bound = 5;
  assert_int_equal(sc_plan_fingerprint(odd_factory, &bound, NULL, fp), SC_OK);
}

/* The list of kinds in an unknown kind's problem is cut with "..." and still closed. */
static void an_unknown_kind_among_many_long_kinds_is_listed_cut_and_closed(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = NULL;
  assert_int_equal(sc_engine_new(&loop, NULL, &e), SC_OK);
  for (int i = 0; i < 20; i++) {
    char name[64];
    snprintf(name, sizeof(name), "a-rather-long-kind-name-number-%02d", i);
    register_noop_kind(e, name);
  }
  assert_int_equal(submit_json(e, "{\"stages\":[{\"name\":\"a\",\"kind\":\"nope\"}]}", NULL),
                   SC_EPLAN);
  const sc_plan_error *pe = sc_plan_last_error();
  assert_non_null(pe);
  size_t len = strlen(pe->problem);
  assert_true(len > 0 && pe->problem[len - 1] == ')');
  assert_non_null(strstr(pe->problem, ", ...)"));
  assert_non_null(strstr(pe->problem, "(kinds: fn, sleep"));
  sc_engine_free(e);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* ---- the JSON factory on an engine ---- */

static void submit_refuses_an_unknown_kind_listing_the_registered_kinds(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = start_engine(&loop, NULL, NULL);
  recorder rec;
  recorder_attach(&rec, e);
  sc_task *t = (sc_task *)&rec;
  int rc = submit_json(e,
                       "{\"stages\":[{\"name\":\"a\",\"kind\":\"sleep\",\"params\":{\"ms\":1}},"
                       "{\"name\":\"b\",\"kind\":\"telepathy\"}]}",
                       &t);
  assert_int_equal(rc, SC_EPLAN);
  assert_null(t);
  assert_message_has(sc_error_message(), "stage 1", "\"kind\"", "telepathy");
  assert_message_has(sc_error_message(), "fn", "sleep", NULL);
  assert_int_equal(rec.n, 0);
  assert_int_equal(sc_engine_task_count(e), 0);
  assert_null(sc_engine_find_task(e, "t1"));
  stop_engine(e, &rec, &loop);
}

/* Whether s ends with a whole UTF-8 sequence (or with ASCII). */
static int ends_with_a_whole_character(const char *s) {
  size_t len = strlen(s), start = len;
  while (start > 0 && ((unsigned char)s[start - 1] & 0xC0) == 0x80)
    start--;
  if (start == len) return len == 0 || (unsigned char)s[len - 1] < 0x80;
  if (start == 0) return 0;
  unsigned char lead = (unsigned char)s[start - 1];
  size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2;
  return len - (start - 1) == need;
}

static void an_unknown_kind_with_a_long_name_is_cut_between_characters(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = start_engine(&loop, NULL, NULL);
  /* "x" then 200 two-byte characters: the message's cut falls inside one unless it is mended. */
  char config[1024];
  size_t off =
      (size_t)snprintf(config, sizeof(config), "{\"stages\":[{\"name\":\"a\",\"kind\":\"x");
  for (int i = 0; i < 200; i++)
    off += (size_t)snprintf(config + off, sizeof(config) - off, "\xc3\xa9");
  snprintf(config + off, sizeof(config) - off, "\"}]}");
  sc_task *t = NULL;
  assert_int_equal(submit_json(e, config, &t), SC_EPLAN);
  assert_null(t);
  const sc_plan_error *pe = sc_plan_last_error();
  assert_non_null(pe);
  assert_non_null(strstr(pe->problem, "names an unknown kind \"x\xc3\xa9"));
  if (!ends_with_a_whole_character(pe->problem))
    fail_msg("cut inside a character: %s", pe->problem);
  if (!ends_with_a_whole_character(sc_error_message()))
    fail_msg("cut inside a character: %s", sc_error_message());
  stop_engine(e, NULL, &loop);
}

static void unknown_kind_message_lists_a_kind_registered_later(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = start_engine(&loop, NULL, NULL);
  register_noop_kind(e, "noop");
  int rc = submit_json(e, "{\"stages\":[{\"name\":\"a\",\"kind\":\"nope\"}]}", NULL);
  assert_int_equal(rc, SC_EPLAN);
  assert_message_has(sc_error_message(), "nope", "noop", "sleep");
  stop_engine(e, NULL, &loop);
}

static void submit_refuses_a_bad_stage_and_emits_nothing(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = start_engine(&loop, NULL, NULL);
  recorder rec;
  recorder_attach(&rec, e);
  int rc = submit_json(e,
                       "{\"stages\":[{\"name\":\"a\",\"kind\":\"sleep\",\"params\":{\"ms\":1},"
                       "\"retry\":{\"multiplier\":0.5}}]}",
                       NULL);
  assert_int_equal(rc, SC_EPLAN);
  assert_message_has(sc_error_message(), "stage 0", "\"retry.multiplier\"", NULL);
  assert_int_equal(rec.n, 0);
  assert_int_equal(sc_engine_task_count(e), 0);
  stop_engine(e, &rec, &loop);
}

static void task_created_carries_the_plan_fingerprint(void **state) {
  (void)state;
  const char *config = "{\"version\":\"1\",\"stages\":[{\"name\":\"a\",\"kind\":\"sleep\","
                       "\"params\":{\"ms\":1}},{\"name\":\"b\",\"kind\":\"noop\"}]}";
  char want[72];
  fingerprint_or_die(config, want);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = start_engine(&loop, NULL, NULL);
  register_noop_kind(e, "noop");
  recorder rec;
  recorder_attach(&rec, e);
  sc_task *t = NULL;
  assert_int_equal(submit_json(e, config, &t), SC_OK);
  assert_non_null(t);
  assert_string_equal(sc_task_fingerprint(t), want);
  assert_int_equal(sc_task_stage_count(t), 2);
  cJSON *created = recorder_json(&rec, SC_EV_TASK_CREATED, 0);
  assert_non_null(created);
  const cJSON *fp = cJSON_GetObjectItemCaseSensitive(
      cJSON_GetObjectItemCaseSensitive(created, "data"), "fingerprint");
  assert_true(cJSON_IsString(fp));
  assert_string_equal(fp->valuestring, want);
  cJSON_Delete(created);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(recorder_count(&rec, SC_EV_TASK_COMPLETED, "t1"), 1);
  stop_engine(e, &rec, &loop);
}

/* ---- custom factories and sc_plan_add_stage ---- */

typedef struct factory_log {
  int calls;
  const void *udata_seen;
  int first_rc, second_rc;
  char second_message[512];
} factory_log;

/* Adds stage "a" twice and keeps the plan of one stage. */
static int duplicate_factory(const cJSON *config, sc_plan_builder *b, void *udata) {
  (void)config;
  factory_log *log = udata;
  log->calls++;
  log->udata_seen = udata;
  sc_stage_spec s;
  sc_stage_spec_init(&s);
  s.name = "a";
  s.kind = "noop";
  log->first_rc = sc_plan_add_stage(b, &s);
  s.kind = "noop";
  log->second_rc = sc_plan_add_stage(b, &s);
  snprintf(log->second_message, sizeof(log->second_message), "%s", sc_error_message());
  return SC_OK;
}

static void add_stage_refuses_a_duplicate_name_with_einval(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  factory_log log = {0};
  sc_engine_options o;
  sc_engine_options_init(&o);
  o.factory = duplicate_factory;
  o.factory_udata = &log;
  sc_engine *e = start_engine(&loop, &o, NULL);
  register_noop_kind(e, "noop");
  sc_task *t = NULL;
  assert_int_equal(submit_json(e, "{\"anything\":true}", &t), SC_OK);
  assert_int_equal(log.calls, 1);
  assert_ptr_equal(log.udata_seen, &log);
  assert_int_equal(log.first_rc, SC_OK);
  assert_int_equal(log.second_rc, SC_EINVAL);
  assert_message_has(log.second_message, "\"a\"", "stage 1", "stage 0");
  assert_non_null(t);
  assert_int_equal(sc_task_stage_count(t), 1);
  uv_run(&loop, UV_RUN_DEFAULT);
  stop_engine(e, NULL, &loop);
}

/* Propagates the refusal of a duplicate. */
static int strict_duplicate_factory(const cJSON *config, sc_plan_builder *b, void *udata) {
  (void)config;
  (void)udata;
  sc_stage_spec s;
  sc_stage_spec_init(&s);
  s.name = "a";
  s.kind = "noop";
  int rc = sc_plan_add_stage(b, &s);
  if (rc == SC_OK) rc = sc_plan_add_stage(b, &s);
  return rc;
}

static void submit_of_a_factory_that_passes_on_a_refusal_fails_with_eplan(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine_options o;
  sc_engine_options_init(&o);
  o.factory = strict_duplicate_factory;
  sc_engine *e = start_engine(&loop, &o, NULL);
  register_noop_kind(e, "noop");
  recorder rec;
  recorder_attach(&rec, e);
  assert_int_equal(submit_json(e, "{}", NULL), SC_EPLAN);
  assert_message_has(sc_error_message(), "\"a\"", "stage 0", NULL);
  assert_int_equal(rec.n, 0);
  assert_int_equal(sc_engine_task_count(e), 0);
  stop_engine(e, &rec, &loop);
}

static int builder_error_factory(const cJSON *config, sc_plan_builder *b, void *udata) {
  (void)udata;
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(config, "version");
  return sc_plan_builder_error(b, "no pipeline for version %s",
                               cJSON_IsString(v) ? v->valuestring : "(none)");
}

static void factory_refusal_with_builder_error_fails_submit_with_its_message(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine_options o;
  sc_engine_options_init(&o);
  o.factory = builder_error_factory;
  sc_engine *e = start_engine(&loop, &o, NULL);
  recorder rec;
  recorder_attach(&rec, e);
  sc_task *t = (sc_task *)&rec;
  assert_int_equal(submit_json(e, "{\"version\":\"9.9\"}", &t), SC_EPLAN);
  assert_null(t);
  assert_string_equal(sc_error_message(), "no pipeline for version 9.9");
  assert_int_equal(rec.n, 0);
  assert_int_equal(sc_engine_task_count(e), 0);
  stop_engine(e, &rec, &loop);
}

static void builder_error_returns_eplan(void **state) {
  (void)state;
  cJSON *config = json_or_die("{\"version\":\"1.2\"}");
  char fp[72];
  assert_int_equal(sc_plan_fingerprint(builder_error_factory, NULL, config, fp), SC_EPLAN);
  assert_string_equal(sc_error_message(), "no pipeline for version 1.2");
  cJSON_Delete(config);
}

static int silent_refusal_factory(const cJSON *config, sc_plan_builder *b, void *udata) {
  (void)config;
  (void)b;
  (void)udata;
  return SC_EIO;
}

static void factory_refusal_without_a_message_still_fails_submit_with_a_message(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine_options o;
  sc_engine_options_init(&o);
  o.factory = silent_refusal_factory;
  sc_engine *e = start_engine(&loop, &o, NULL);
  int rc = submit_json(e, "{}", NULL);
  assert_true(rc < 0);
  assert_true(*sc_error_message() != '\0');
  assert_int_equal(sc_engine_task_count(e), 0);
  stop_engine(e, NULL, &loop);
}

/* Builds the plan of base_config's stages by hand, with strings and params that die at once. */
static int hand_built_factory(const cJSON *config, sc_plan_builder *b, void *udata) {
  (void)config;
  int *seen = udata;
  (*seen)++;
  char name[16], kind[16];
  sc_stage_spec s;
  sc_stage_spec_init(&s);
  snprintf(name, sizeof(name), "build");
  snprintf(kind, sizeof(kind), "fn");
  cJSON *params = json_or_die("{\"fn\":\"build\"}");
  s.name = name;
  s.kind = kind;
  s.params = params;
  int rc = sc_plan_add_stage(b, &s);
  cJSON_Delete(params);
  memset(name, 'x', sizeof(name) - 1);
  memset(kind, 'y', sizeof(kind) - 1);
  if (rc != SC_OK) return rc;

  sc_stage_spec_init(&s);
  snprintf(name, sizeof(name), "wait");
  snprintf(kind, sizeof(kind), "sleep");
  params = json_or_die("{\"note\":\"x\",\"ms\":200}");
  s.name = name;
  s.kind = kind;
  s.params = params;
  s.timeout_ms = 1000;
  s.retry = (sc_retry_policy){SC_RETRY_POLICY_VERSION, 3, 200, 2000, 2.0};
  s.approval.required = true;
  s.approval.approvers_needed = 2;
  s.approval.timeout_ms = 600000;
  s.approval.on_timeout = SC_ACTION_REJECT;
  s.approval.on_reject = SC_ACTION_CANCEL;
  s.effect = SC_EFFECT_COMPENSABLE;
  rc = sc_plan_add_stage(b, &s);
  cJSON_Delete(params);
  return rc;
}

static void custom_factory_and_json_factory_agree_on_the_fingerprint(void **state) {
  (void)state;
  int calls = 0;
  char by_hand[72], by_json[72];
  cJSON *config = json_or_die("{\"ignored\":true}");
  assert_int_equal(sc_plan_fingerprint(hand_built_factory, &calls, config, by_hand), SC_OK);
  cJSON_Delete(config);
  assert_int_equal(calls, 1);
  fingerprint_or_die(base_config, by_json);
  assert_string_equal(by_hand, by_json);
}

static void engine_fingerprint_of_a_custom_factory_matches_plan_fingerprint(void **state) {
  (void)state;
  int calls = 0;
  char want[72];
  cJSON *config = json_or_die("{\"x\":1}");
  assert_int_equal(sc_plan_fingerprint(hand_built_factory, &calls, config, want), SC_OK);
  cJSON_Delete(config);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine_options o;
  sc_engine_options_init(&o);
  o.factory = hand_built_factory;
  o.factory_udata = &calls;
  sc_engine *e = start_engine(&loop, &o, NULL);
  sc_task *t = NULL;
  assert_int_equal(submit_json(e, "{\"x\":1}", &t), SC_OK);
  assert_int_equal(calls, 2);
  assert_string_equal(sc_task_fingerprint(t), want);
  assert_int_equal(sc_task_stage_count(t), 2);
  stop_engine(e, NULL, &loop);
}

static int init_only_factory(const cJSON *config, sc_plan_builder *b, void *udata) {
  (void)config;
  (void)udata;
  sc_stage_spec s;
  sc_stage_spec_init(&s);
  s.name = "only";
  s.kind = "custom";
  return sc_plan_add_stage(b, &s);
}

static void stage_spec_init_gives_the_json_defaults(void **state) {
  (void)state;
  /* A stage added with only name and kind set fingerprints like the bare JSON stage. */
  char want[72], got[72];
  fingerprint_or_die("{\"stages\":[{\"name\":\"only\",\"kind\":\"custom\"}]}", want);
  cJSON *config = json_or_die("{}");
  assert_int_equal(sc_plan_fingerprint(init_only_factory, NULL, config, got), SC_OK);
  cJSON_Delete(config);
  assert_string_equal(got, want);
  sc_stage_spec s;
  sc_stage_spec_init(&s);
  assert_null(s.name);
  assert_null(s.kind);
  assert_null(s.params);
  assert_int_equal(s.timeout_ms, 0);
  assert_false(s.approval.required);
  assert_int_equal(s.approval.on_timeout, SC_ACTION_REJECT);
  assert_int_equal(s.approval.on_reject, SC_ACTION_CANCEL);
  assert_int_equal(s.effect, SC_EFFECT_IDEMPOTENT);
}

typedef struct add_results {
  int rc[16];
  char message[16][512];
  /* sc_plan_last_error() after each call: recorded or not, stage index, stage, field */
  bool recorded[16];
  int index[16];
  char stage[16][32], field[16][64];
  size_t n;
} add_results;

static void try_add(add_results *r, sc_plan_builder *b, const sc_stage_spec *s) {
  r->rc[r->n] = sc_plan_add_stage(b, s);
  snprintf(r->message[r->n], sizeof(r->message[0]), "%s", sc_error_message());
  const sc_plan_error *pe = sc_plan_last_error();
  r->recorded[r->n] = pe != NULL;
  r->index[r->n] = pe ? pe->stage_index : -2;
  snprintf(r->stage[r->n], sizeof(r->stage[0]), "%s", pe && pe->stage ? pe->stage : "(none)");
  snprintf(r->field[r->n], sizeof(r->field[0]), "%s", pe && pe->field ? pe->field : "(none)");
  r->n++;
}

/* Tries one bad spec after another; the builder holds the one good stage "ok". */
static int bad_specs_factory(const cJSON *config, sc_plan_builder *b, void *udata) {
  (void)config;
  add_results *r = udata;
  sc_stage_spec good;
  sc_stage_spec_init(&good);
  good.name = "ok";
  good.kind = "custom";
  try_add(r, b, &good); /* 0 */
  sc_stage_spec s = good;
  s.name = NULL;
  try_add(r, b, &s); /* 1: no name */
  s = good;
  s.name = "";
  try_add(r, b, &s); /* 2: empty name */
  s = good;
  s.name = "k";
  s.kind = NULL;
  try_add(r, b, &s); /* 3: no kind */
  s = good;
  s.name = "m";
  s.retry.max_attempts = 1001;
  try_add(r, b, &s); /* 4 */
  s = good;
  s.name = "n";
  s.retry.multiplier = 0.5;
  try_add(r, b, &s); /* 5 */
  s = good;
  s.name = "o";
  s.approval.approvers_needed = 101;
  try_add(r, b, &s); /* 6 */
  s = good;
  s.name = "p";
  s.approval.on_timeout = SC_ACTION_CANCEL;
  try_add(r, b, &s); /* 7 */
  s = good;
  s.name = "q";
  s.approval.on_reject = SC_ACTION_APPROVE;
  try_add(r, b, &s); /* 8 */
  s = good;
  s.name = "r";
  s.effect = (sc_effect)7;
  try_add(r, b, &s); /* 9 */
  cJSON *array = cJSON_CreateArray();
  s = good;
  s.name = "s";
  s.params = array;
  try_add(r, b, &s); /* 10 */
  cJSON_Delete(array);
  s = good;
  try_add(r, b, &s); /* 11: duplicate of "ok" */
  return SC_OK;
}

static void add_stage_refuses_bad_specs_with_einval_naming_the_field(void **state) {
  (void)state;
  add_results r;
  memset(&r, 0, sizeof(r));
  cJSON *config = json_or_die("{}");
  char fp[72], want[72];
  assert_int_equal(sc_plan_fingerprint(bad_specs_factory, &r, config, fp), SC_OK);
  cJSON_Delete(config);
  assert_int_equal(r.n, 12);
  assert_int_equal(r.rc[0], SC_OK);
  const char *fields[] = {NULL,
                          "name",
                          "name",
                          "kind",
                          "retry.max_attempts",
                          "retry.multiplier",
                          "approval.approvers_needed",
                          "approval.on_timeout",
                          "approval.on_reject",
                          "effect",
                          "params",
                          "name"};
  static const char *const stages[] = {NULL, "(none)", "(none)", "k", "m", "n",
                                       "o",  "p",      "q",      "r", "s", "ok"};
  assert_false(r.recorded[0]);
  for (size_t i = 1; i < r.n; i++) {
    if (r.rc[i] != SC_EINVAL) fail_msg("spec %zu: expected SC_EINVAL, got %d", i, r.rc[i]);
    assert_message_has(r.message[i], "stage 1", fields[i], NULL);
    /* the record of each call is that call's refusal */
    char path[64];
    snprintf(path, sizeof(path), "stages[1].%s", fields[i]);
    assert_true(r.recorded[i]);
    assert_int_equal(r.index[i], 1);
    assert_string_equal(r.field[i], path);
    assert_string_equal(r.stage[i], stages[i]);
  }
  assert_message_has(r.message[11], "stage 0", "\"ok\"", NULL);
  /* The refusals left the plan as the one good stage. */
  fingerprint_or_die("{\"stages\":[{\"name\":\"ok\",\"kind\":\"custom\"}]}", want);
  assert_string_equal(fp, want);
}

/* ---- canonical JSON and digests ---- */

static void canonical_json_sorts_keys_at_every_depth(void **state) {
  (void)state;
  assert_canonical("{\"b\":1,\"a\":{\"d\":[{\"z\":1,\"y\":{\"k\":2,\"j\":3}}],\"c\":true}}",
                   "{\"a\":{\"c\":true,\"d\":[{\"y\":{\"j\":3,\"k\":2},\"z\":1}]},\"b\":1}");
}

static void canonical_json_sorts_keys_by_their_bytes(void **state) {
  (void)state;
  assert_canonical("{\"b\":1,\"a\":2,\"B\":3,\"_\":4,\"\xc3\xa9\":5,\"aa\":6,\"\":7}",
                   "{\"\":7,\"B\":3,\"_\":4,\"a\":2,\"aa\":6,\"b\":1,\"\xc3\xa9\":5}");
}

static void canonical_json_keeps_array_order(void **state) {
  (void)state;
  assert_canonical("[3,1,2,{\"b\":0,\"a\":0},[\"z\",\"a\"]]",
                   "[3,1,2,{\"a\":0,\"b\":0},[\"z\",\"a\"]]");
}

static void canonical_json_keeps_the_order_of_equal_keys(void **state) {
  (void)state;
  assert_canonical("{\"b\":0,\"a\":2,\"a\":1}", "{\"a\":2,\"a\":1,\"b\":0}");
}

static void canonical_json_has_no_whitespace(void **state) {
  (void)state;
  assert_canonical("{ \"a\" : [ 1 , 2 , { } , [ ] ] ,\n\t\"b\" : \"x y\" , \"c\" : null }",
                   "{\"a\":[1,2,{},[]],\"b\":\"x y\",\"c\":null}");
}

static void canonical_json_writes_literals(void **state) {
  (void)state;
  assert_canonical("[true,false,null]", "[true,false,null]");
  assert_canonical("{}", "{}");
  assert_canonical("[]", "[]");
  assert_canonical("\"s\"", "\"s\"");
}

static void canonical_json_writes_integers_without_exponent_or_fraction(void **state) {
  (void)state;
  assert_canonical("[1e3,100.0,-42,0,2.5e1,123456789012,9007199254740991,-9007199254740991]",
                   "[1000,100,-42,0,25,123456789012,9007199254740991,-9007199254740991]");
}

static void canonical_json_writes_fractions_that_read_back(void **state) {
  (void)state;
  assert_canonical("[0.5,1.25,-0.125,0.1]", "[0.5,1.25,-0.125,0.1]");
  char *c = canonical_of("[3.141592653589793,1e-7,1e300]");
  cJSON *back = json_or_die(c);
  assert_true(cJSON_GetArrayItem(back, 0)->valuedouble == 3.141592653589793);
  assert_true(cJSON_GetArrayItem(back, 1)->valuedouble == 1e-7);
  assert_true(cJSON_GetArrayItem(back, 2)->valuedouble == 1e300);
  cJSON_Delete(back);
  free(c);
}

static void canonical_json_escapes_strings(void **state) {
  (void)state;
  cJSON *v = cJSON_CreateObject();
  cJSON_AddStringToObject(v, "s", "a\nb\"c\\d\te\rf\bg\fh\x01i\x1fj/k\xc3\xa9");
  cJSON_AddStringToObject(v, "k\"\n", "v");
  size_t len = 0;
  char *c = sc_json_canonical(v, &len);
  cJSON_Delete(v);
  assert_non_null(c);
  assert_string_equal(c,
                      "{\"k\\\"\\n\":\"v\",\"s\":\"a\\nb\\\"c\\\\d\\te\\rf\\bg\\fh\\u0001i\\u001fj/"
                      "k\xc3\xa9\"}");
  assert_int_equal(len, strlen(c));
  free(c);
}

static void canonical_json_len_may_be_null(void **state) {
  (void)state;
  cJSON *v = json_or_die("{\"b\":1,\"a\":2}");
  char *c = sc_json_canonical(v, NULL);
  cJSON_Delete(v);
  assert_non_null(c);
  assert_string_equal(c, "{\"a\":2,\"b\":1}");
  free(c);
}

static void digest_is_sha256_of_the_canonical_json(void **state) {
  (void)state;
  char d[72];
  cJSON *v = json_or_die("{\"b\" : [true, null], \"a\" : 1.0}");
  assert_int_equal(sc_json_digest(v, d), SC_OK);
  cJSON_Delete(v);
  /* printf '%s' '{"a":1,"b":[true,null]}' | sha256sum */
  assert_string_equal(d, "sha256:1cc69c7fa23616ca2ec3ee70d24390a6225c8832db8a4c814c7e0e7f942f8668");
}

static void digest_of_null_is_the_digest_of_an_empty_object(void **state) {
  (void)state;
  char of_null[72], of_empty[72];
  assert_int_equal(sc_json_digest(NULL, of_null), SC_OK);
  cJSON *empty = cJSON_CreateObject();
  assert_int_equal(sc_json_digest(empty, of_empty), SC_OK);
  cJSON_Delete(empty);
  assert_string_equal(of_null, of_empty);
  /* printf '%s' '{}' | sha256sum */
  assert_string_equal(of_null,
                      "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a");
}

static void digest_ignores_key_order_and_whitespace(void **state) {
  (void)state;
  char a[72], b[72], c[72];
  cJSON *x = json_or_die("{\"a\":1,\"b\":{\"c\":[1,2],\"d\":\"e\"}}");
  cJSON *y = json_or_die("{ \"b\" : { \"d\" : \"e\", \"c\" : [ 1, 2 ] }, \"a\" : 1 }");
  cJSON *z = json_or_die("{\"a\":1,\"b\":{\"c\":[2,1],\"d\":\"e\"}}");
  assert_int_equal(sc_json_digest(x, a), SC_OK);
  assert_int_equal(sc_json_digest(y, b), SC_OK);
  assert_int_equal(sc_json_digest(z, c), SC_OK);
  cJSON_Delete(x);
  cJSON_Delete(y);
  cJSON_Delete(z);
  assert_is_sha256(a);
  assert_string_equal(a, b);
  assert_string_not_equal(a, c);
}

/* ---- structured refusals (sc_plan_last_error) ---- */

static void submit_records_the_refused_stage_and_field(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = start_engine(&loop, NULL, NULL);
  assert_int_equal(
      submit_json(e,
                  "{\"stages\":[{\"name\":\"a\",\"kind\":\"sleep\",\"params\":{\"ms\":1}},"
                  "{\"name\":\"b\",\"kind\":\"telepathy\"}]}",
                  NULL),
      SC_EPLAN);
  assert_plan_error(SC_EPLAN, 1, "b", "stages[1].kind");
  assert_int_equal(sc_plan_last_error()->other_stage_index, -1);
  assert_int_equal(
      submit_json(e,
                  "{\"stages\":[{\"name\":\"a\",\"kind\":\"sleep\",\"params\":{\"ms\":1},"
                  "\"approval\":{\"on_reject\":\"later\"}}]}",
                  NULL),
      SC_EPLAN);
  assert_plan_error(SC_EPLAN, 0, "a", "stages[0].approval.on_reject");
  stop_engine(e, NULL, &loop);
}

static void plan_error_is_cleared_by_success_and_by_a_refusal_that_is_not_a_plans(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = start_engine(&loop, NULL, NULL);
  const char *bad = "{\"stages\":[{\"name\":\"a\",\"kind\":\"sleep\",\"params\":{\"ms\":-1}}]}";
  const char *good = "{\"stages\":[{\"name\":\"a\",\"kind\":\"sleep\",\"params\":{\"ms\":0}}]}";
  assert_int_equal(submit_json(e, bad, NULL), SC_EPLAN);
  assert_plan_error(SC_EPLAN, 0, "a", "stages[0].params.ms");
  assert_int_equal(submit_json(e, good, NULL), SC_OK); /* task t1 */
  assert_null(sc_plan_last_error());
  assert_int_equal(submit_json(e, bad, NULL), SC_EPLAN);
  assert_non_null(sc_plan_last_error());
  assert_int_equal(submit_json(e, good, NULL), SC_EBUSY); /* t1 again: not a plan's refusal */
  assert_null(sc_plan_last_error());
  /* a fingerprint of a good config clears it too */
  assert_int_equal(submit_json(e, bad, NULL), SC_EPLAN);
  char fp[72];
  cJSON *config = json_or_die(good);
  assert_int_equal(sc_plan_fingerprint(NULL, NULL, config, fp), SC_OK);
  cJSON_Delete(config);
  assert_null(sc_plan_last_error());
  uv_run(&loop, UV_RUN_DEFAULT);
  stop_engine(e, NULL, &loop);
}

static void submit_without_a_config_records_a_refusal_of_the_config(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = start_engine(&loop, NULL, NULL);
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  assert_int_equal(sc_task_submit(e, &spec, NULL), SC_EINVAL);
  assert_plan_error(SC_EINVAL, -1, NULL, NULL);
  assert_false(sc_plan_last_error()->previous_config);
  cJSON *config = json_or_die("[1]");
  spec.config = config;
  assert_int_equal(sc_task_submit(e, &spec, NULL), SC_EINVAL);
  assert_plan_error(SC_EINVAL, -1, NULL, NULL);
  cJSON *good =
      json_or_die("{\"stages\":[{\"name\":\"a\",\"kind\":\"sleep\",\"params\":{\"ms\":0}}]}");
  spec.config = good;
  spec.previous_config = config; /* an array */
  assert_int_equal(sc_task_submit(e, &spec, NULL), SC_EINVAL);
  assert_plan_error(SC_EINVAL, -1, NULL, NULL);
  assert_true(sc_plan_last_error()->previous_config);
  cJSON_Delete(config);
  cJSON_Delete(good);
  stop_engine(e, NULL, &loop);
}

static void a_factorys_own_refusal_is_recorded_without_a_field(void **state) {
  (void)state;
  cJSON *config = json_or_die("{\"version\":\"1.2\"}");
  char fp[72];
  assert_int_equal(sc_plan_fingerprint(builder_error_factory, NULL, config, fp), SC_EPLAN);
  assert_plan_error(SC_EPLAN, -1, NULL, NULL);
  assert_string_equal(sc_plan_last_error()->problem, "no pipeline for version 1.2");
  assert_int_equal(sc_plan_fingerprint(silent_refusal_factory, NULL, config, fp), SC_EPLAN);
  assert_plan_error(SC_EPLAN, -1, NULL, NULL);
  cJSON_Delete(config);
}

static void a_factory_that_passes_on_a_refusal_reports_that_refusal(void **state) {
  (void)state;
  cJSON *config = json_or_die("{}");
  char fp[72];
  assert_int_equal(sc_plan_fingerprint(strict_duplicate_factory, NULL, config, fp), SC_EPLAN);
  assert_plan_error(SC_EPLAN, 1, "a", "stages[1].name");
  assert_int_equal(sc_plan_last_error()->other_stage_index, 0);
  cJSON_Delete(config);
}

/* Refuses with a builder error after a refused stage: the first refusal is the one reported. */
static int refuse_twice_factory(const cJSON *config, sc_plan_builder *b, void *udata) {
  (void)config;
  (void)udata;
  sc_stage_spec s;
  sc_stage_spec_init(&s);
  s.name = "x";
  s.kind = "noop";
  s.retry.multiplier = 0.25;
  sc_plan_add_stage(b, &s);
  return sc_plan_builder_error(b, "and something else");
}

static void the_first_refusal_of_a_factory_is_the_one_reported(void **state) {
  (void)state;
  cJSON *config = json_or_die("{}");
  char fp[72];
  assert_int_equal(sc_plan_fingerprint(refuse_twice_factory, NULL, config, fp), SC_EPLAN);
  assert_plan_error(SC_EPLAN, 0, "x", "stages[0].retry.multiplier");
  cJSON_Delete(config);
}

static const char *const recover_config =
    "{\"stages\":[{\"name\":\"a\",\"kind\":\"sleep\",\"params\":{\"ms\":0}},"
    "{\"name\":\"b\",\"kind\":\"sleep\",\"params\":{\"ms\":0}}]}";

static void recovery_refusals_are_recorded(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e = start_engine(&loop, NULL, NULL);
  cJSON *config = json_or_die(recover_config);
  cJSON *bad = json_or_die("{\"stages\":[{\"name\":\"a\",\"kind\":\"sleep\"}]}");
  sc_recovery_request req;
  sc_recovery_request_init(&req);
  req.recovered_from = "old";
  req.config = config;
  cJSON *plan = NULL;
  /* a fingerprint that does not match */
  req.plan_fingerprint = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
  assert_int_equal(sc_recover_from_restart(e, &req, NULL), SC_EPLAN_MISMATCH);
  assert_plan_error(SC_EPLAN_MISMATCH, -1, NULL, NULL);
  assert_int_equal(sc_recovery_plan(e, &req, &plan), SC_EPLAN_MISMATCH);
  assert_plan_error(SC_EPLAN_MISMATCH, -1, NULL, NULL);
  req.plan_fingerprint = NULL;
  /* an unknown last completed stage names that stage */
  req.last_completed_stage = "deploy";
  assert_int_equal(sc_recover_from_restart(e, &req, NULL), SC_EUNKNOWN_STAGE);
  assert_plan_error(SC_EUNKNOWN_STAGE, -1, "deploy", NULL);
  req.last_completed_stage = "a";
  /* a config the factory refuses */
  req.config = bad;
  assert_int_equal(sc_recover_from_restart(e, &req, NULL), SC_EPLAN);
  assert_plan_error(SC_EPLAN, 0, "a", "stages[0].params.ms");
  assert_false(sc_plan_last_error()->previous_config);
  /* ROLLBACK to a previous config the factory refuses */
  req.config = config;
  req.previous_config = bad;
  req.mode = SC_RECOVER_ROLLBACK;
  assert_int_equal(sc_recovery_plan(e, &req, &plan), SC_EPLAN);
  assert_null(plan);
  assert_plan_error(SC_EPLAN, 0, "a", "stages[0].params.ms");
  assert_true(sc_plan_last_error()->previous_config);
  assert_memory_equal(sc_plan_last_error()->message, "previous_config: ", 17);
  /* ROLLBACK without one */
  req.previous_config = NULL;
  assert_int_equal(sc_recover_from_restart(e, &req, NULL), SC_EINVAL);
  assert_plan_error(SC_EINVAL, -1, NULL, NULL);
  assert_true(sc_plan_last_error()->previous_config);
  /* a context digest that does not match is not a plan's refusal */
  req.mode = SC_RECOVER_RETRY;
  req.context_digest = "sha256:00";
  assert_int_equal(sc_recover_from_restart(e, &req, NULL), SC_ECORRUPT);
  assert_null(sc_plan_last_error());
  assert_int_equal(sc_engine_task_count(e), 0);
  cJSON_Delete(config);
  cJSON_Delete(bad);
  stop_engine(e, NULL, &loop);
}

static void refuse_on_a_thread(void *arg) {
  cJSON *config = json_or_die("{}");
  char fp[72];
  *(int *)arg =
      sc_plan_fingerprint(NULL, NULL, config, fp) == SC_EPLAN && sc_plan_last_error() != NULL;
  cJSON_Delete(config);
}

static void plan_error_belongs_to_the_thread(void **state) {
  (void)state;
  char fp[72];
  cJSON *config = json_or_die(recover_config);
  assert_int_equal(sc_plan_fingerprint(NULL, NULL, config, fp), SC_OK);
  cJSON_Delete(config);
  int refused = 0;
  uv_thread_t thread;
  assert_int_equal(uv_thread_create(&thread, refuse_on_a_thread, &refused), 0);
  assert_int_equal(uv_thread_join(&thread), 0);
  assert_true(refused);
  assert_null(sc_plan_last_error());
}

/* Whether s is well-formed UTF-8 as far as lead and continuation bytes go. */
static bool utf8_whole(const char *s) {
  for (const unsigned char *c = (const unsigned char *)s; *c;) {
    size_t n = *c < 0x80 ? 1 : *c >= 0xF0 ? 4 : *c >= 0xE0 ? 3 : *c >= 0xC0 ? 2 : 0;
    if (n == 0) return false;
    for (size_t k = 1; k < n; k++)
      if ((c[k] & 0xC0) != 0x80) return false;
    c += n;
  }
  return true;
}

static void a_long_name_is_cut_in_the_record_between_characters(void **state) {
  (void)state;
  char name[701], config[1024];
  for (int i = 0; i < 700; i += 2)
    memcpy(name + i, "\xC3\xA9", 2); /* é */
  name[700] = '\0';
  for (int shift = 0; shift < 2; shift++) { /* the cut falls inside a character once */
    snprintf(config, sizeof(config), "{\"stages\":[{\"name\":\"%s%s\",\"kind\":\"nope\"}]}",
             shift ? "x" : "", name);
    char fp[72];
    cJSON *c = json_or_die(config);
    assert_int_equal(sc_plan_fingerprint(NULL, NULL, c, fp), SC_OK); /* no engine: no kind check */
    cJSON_Delete(c);
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    sc_engine *e = start_engine(&loop, NULL, NULL);
    assert_int_equal(submit_json(e, config, NULL), SC_EPLAN);
    const sc_plan_error *pe = sc_plan_last_error();
    assert_non_null(pe);
    assert_int_equal(pe->stage_index, 0);
    assert_string_equal(pe->field, "stages[0].kind");
    assert_non_null(pe->stage);
    assert_true(strlen(pe->stage) < strlen(name));
    assert_true(utf8_whole(pe->stage));
    assert_true(utf8_whole(pe->message));
    assert_true(utf8_whole(pe->problem));
    stop_engine(e, NULL, &loop);
  }
}

/* ---- the plan cache ---- */

/* The JSON factory, counting its calls in *udata. */
static int counting_factory(const cJSON *config, sc_plan_builder *b, void *udata) {
  (*(int *)udata)++;
  return sc_json_stage_factory(config, b, NULL);
}

static sc_engine *counting_engine(uv_loop_t *loop, int *calls) {
  sc_engine_options o;
  sc_engine_options_init(&o);
  o.factory = counting_factory;
  o.factory_udata = calls;
  assert_int_equal(uv_loop_init(loop), 0);
  sc_engine *e = start_engine(loop, &o, NULL);
  register_noop_kind(e, "noop");
  return e;
}

/* Submits a task of config (and previous, may be NULL) and runs it to its end. */
static void submit_and_finish(uv_loop_t *loop, sc_engine *e, const char *config_json,
                              const char *previous_json) {
  cJSON *config = json_or_die(config_json);
  cJSON *previous = previous_json ? json_or_die(previous_json) : NULL;
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.config = config;
  spec.previous_config = previous;
  int rc = sc_task_submit(e, &spec, NULL);
  if (rc != SC_OK) fail_msg("submit %s: %s", config_json, sc_error_message());
  cJSON_Delete(config);
  cJSON_Delete(previous);
  uv_run(loop, UV_RUN_DEFAULT);
  assert_int_equal(sc_engine_task_count(e), 0);
}

static void an_identical_config_reuses_the_plan_after_its_task_ended(void **state) {
  (void)state;
  uv_loop_t loop;
  int calls = 0;
  sc_engine *e = counting_engine(&loop, &calls);
  const char *a = "{\"v\":1,\"stages\":[{\"name\":\"x\",\"kind\":\"noop\"}]}";
  submit_and_finish(&loop, e, a, NULL);
  assert_int_equal(calls, 1);
  submit_and_finish(&loop, e, a, NULL);
  assert_int_equal(calls, 1);
  /* the same canonical JSON: other whitespace and member order */
  submit_and_finish(&loop, e, "{ \"stages\": [ {\"kind\":\"noop\", \"name\":\"x\"} ], \"v\": 1 }",
                    NULL);
  assert_int_equal(calls, 1);
  /* the key is the config and the previous config */
  submit_and_finish(&loop, e, a, "{\"v\":0,\"stages\":[{\"name\":\"x\",\"kind\":\"noop\"}]}");
  assert_int_equal(calls, 2);
  /* any change of the config is another plan, even one the plan does not read */
  submit_and_finish(&loop, e, "{\"v\":2,\"stages\":[{\"name\":\"x\",\"kind\":\"noop\"}]}", NULL);
  assert_int_equal(calls, 3);
  submit_and_finish(&loop, e, a, NULL);
  assert_int_equal(calls, 3);
  stop_engine(e, NULL, &loop);
}

static void a_refused_config_is_not_cached(void **state) {
  (void)state;
  uv_loop_t loop;
  int calls = 0;
  sc_engine *e = counting_engine(&loop, &calls);
  const char *later = "{\"stages\":[{\"name\":\"x\",\"kind\":\"later\"}]}";
  assert_int_equal(submit_json(e, later, NULL), SC_EPLAN);
  assert_int_equal(submit_json(e, later, NULL), SC_EPLAN);
  assert_int_equal(calls, 2);
  register_noop_kind(e, "later"); /* registered since: the config is accepted now */
  submit_and_finish(&loop, e, later, NULL);
  assert_int_equal(calls, 3);
  stop_engine(e, NULL, &loop);
}

static void the_cache_keeps_the_most_recent_plans_and_evicts_the_oldest(void **state) {
  (void)state;
  uv_loop_t loop;
  int calls = 0;
  sc_engine *e = counting_engine(&loop, &calls);
  char config[128];
  enum { N = 200 }; /* more than the cache holds (docs/design.md, "Plan cache") */
  for (int i = 0; i < N; i++) {
    snprintf(config, sizeof(config), "{\"n\":%d,\"stages\":[{\"name\":\"x\",\"kind\":\"noop\"}]}",
             i);
    submit_and_finish(&loop, e, config, NULL);
  }
  assert_int_equal(calls, N);
  snprintf(config, sizeof(config), "{\"n\":%d,\"stages\":[{\"name\":\"x\",\"kind\":\"noop\"}]}",
           N - 1);
  submit_and_finish(&loop, e, config, NULL); /* the last one is kept */
  assert_int_equal(calls, N);
  submit_and_finish(&loop, e, "{\"n\":0,\"stages\":[{\"name\":\"x\",\"kind\":\"noop\"}]}", NULL);
  assert_int_equal(calls, N + 1); /* the first one was evicted */
  stop_engine(e, NULL, &loop);
}

static void a_plan_in_use_is_never_evicted(void **state) {
  (void)state;
  uv_loop_t loop;
  int calls = 0;
  sc_engine *e = counting_engine(&loop, &calls);
  cJSON *gated =
      json_or_die("{\"stages\":[{\"name\":\"gate\",\"kind\":\"noop\","
                  "\"approval\":{\"required\":true}},{\"name\":\"after\",\"kind\":\"noop\"}]}");
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.task_id = "waiting";
  spec.config = gated;
  sc_task *t = NULL;
  assert_int_equal(sc_task_submit(e, &spec, &t), SC_OK);
  uv_run(&loop, UV_RUN_DEFAULT); /* waits for a person */
  assert_int_equal(sc_task_get_status(t), SC_TASK_AWAITING_APPROVAL);
  char config[128];
  for (int i = 0; i < 200; i++) {
    snprintf(config, sizeof(config), "{\"n\":%d,\"stages\":[{\"name\":\"x\",\"kind\":\"noop\"}]}",
             i);
    cJSON *c = json_or_die(config);
    sc_task_spec other;
    sc_task_spec_init(&other);
    other.config = c;
    assert_int_equal(sc_task_submit(e, &other, NULL), SC_OK);
    cJSON_Delete(c);
    uv_run(&loop, UV_RUN_DEFAULT);
  }
  assert_int_equal(sc_engine_task_count(e), 1);
  assert_string_equal(sc_task_fingerprint(t),
                      sc_task_fingerprint(sc_engine_find_task(e, "waiting")));
  assert_int_equal(sc_task_stage_count(t), 2);
  /* a second task of the waiting task's config shares its plan: no build */
  int before = calls;
  spec.task_id = "second";
  assert_int_equal(sc_task_submit(e, &spec, NULL), SC_OK);
  assert_int_equal(calls, before);
  assert_int_equal(sc_task_approve(t, "gate", "alice", NULL), SC_OK);
  uv_run(&loop, UV_RUN_DEFAULT); /* t completes; "second" waits at its gate */
  assert_null(sc_engine_find_task(e, "waiting"));
  assert_int_equal(sc_engine_task_count(e), 1);
  cJSON_Delete(gated);
  stop_engine(e, NULL, &loop);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(fingerprint_is_sha256_and_64_lowercase_hex),
      cmocka_unit_test(fingerprint_is_the_digest_of_the_filled_in_stage_specs),
      cmocka_unit_test(fingerprint_is_the_same_for_the_same_config),
      cmocka_unit_test(fingerprint_ignores_key_order),
      cmocka_unit_test(fingerprint_ignores_whitespace),
      cmocka_unit_test(fingerprint_ignores_defaults_spelled_out),
      cmocka_unit_test(fingerprint_changes_with_any_change_to_a_stage),
      cmocka_unit_test(fingerprint_ignores_the_configs_other_members),
      cmocka_unit_test(extra_stage_members_are_read_as_params),
      cmocka_unit_test(json_factory_refuses_a_config_that_is_not_an_object),
      cmocka_unit_test(json_factory_refuses_a_config_without_stages),
      cmocka_unit_test(json_factory_refuses_empty_or_non_array_stages),
      cmocka_unit_test(json_factory_refuses_a_stage_that_is_not_an_object),
      cmocka_unit_test(json_factory_refuses_a_stage_without_a_name),
      cmocka_unit_test(json_factory_refuses_a_name_that_is_not_a_string),
      cmocka_unit_test(json_factory_refuses_a_duplicate_name_naming_both_stages),
      cmocka_unit_test(json_factory_refuses_a_stage_without_a_kind),
      cmocka_unit_test(json_factory_refuses_a_bad_timeout),
      cmocka_unit_test(json_factory_accepts_timeouts_up_to_uint32_max),
      cmocka_unit_test(json_factory_refuses_a_retry_that_is_not_an_object),
      cmocka_unit_test(json_factory_refuses_more_than_1000_attempts),
      cmocka_unit_test(json_factory_refuses_a_multiplier_outside_1_to_100),
      cmocka_unit_test(json_factory_refuses_an_unknown_on_timeout_action),
      cmocka_unit_test(json_factory_refuses_an_unknown_on_reject_action),
      cmocka_unit_test(json_factory_refuses_zero_approvers),
      cmocka_unit_test(json_factory_refuses_an_unknown_effect),
      cmocka_unit_test(json_factory_refuses_params_that_are_not_an_object),
      cmocka_unit_test(json_factory_refuses_a_member_given_twice),
      cmocka_unit_test(json_factory_refuses_an_fn_stage_without_params_fn),
      cmocka_unit_test(json_factory_refuses_a_sleep_stage_without_valid_params_ms),
      cmocka_unit_test(json_factory_refusal_message_names_the_stage),
      cmocka_unit_test(submit_refuses_an_unknown_kind_listing_the_registered_kinds),
      cmocka_unit_test(a_timeout_too_large_is_told_the_range),
      cmocka_unit_test(retry_and_approval_refuse_unknown_members),
      cmocka_unit_test(add_stage_holds_a_factory_of_ones_own_to_the_json_factorys_rules),
      cmocka_unit_test(an_unknown_kind_among_many_long_kinds_is_listed_cut_and_closed),
      cmocka_unit_test(unknown_kind_message_lists_a_kind_registered_later),
      cmocka_unit_test(an_unknown_kind_with_a_long_name_is_cut_between_characters),
      cmocka_unit_test(submit_refuses_a_bad_stage_and_emits_nothing),
      cmocka_unit_test(task_created_carries_the_plan_fingerprint),
      cmocka_unit_test(add_stage_refuses_a_duplicate_name_with_einval),
      cmocka_unit_test(submit_of_a_factory_that_passes_on_a_refusal_fails_with_eplan),
      cmocka_unit_test(factory_refusal_with_builder_error_fails_submit_with_its_message),
      cmocka_unit_test(builder_error_returns_eplan),
      cmocka_unit_test(factory_refusal_without_a_message_still_fails_submit_with_a_message),
      cmocka_unit_test(custom_factory_and_json_factory_agree_on_the_fingerprint),
      cmocka_unit_test(engine_fingerprint_of_a_custom_factory_matches_plan_fingerprint),
      cmocka_unit_test(stage_spec_init_gives_the_json_defaults),
      cmocka_unit_test(add_stage_refuses_bad_specs_with_einval_naming_the_field),
      cmocka_unit_test(canonical_json_sorts_keys_at_every_depth),
      cmocka_unit_test(canonical_json_sorts_keys_by_their_bytes),
      cmocka_unit_test(canonical_json_keeps_array_order),
      cmocka_unit_test(canonical_json_keeps_the_order_of_equal_keys),
      cmocka_unit_test(canonical_json_has_no_whitespace),
      cmocka_unit_test(canonical_json_writes_literals),
      cmocka_unit_test(canonical_json_writes_integers_without_exponent_or_fraction),
      cmocka_unit_test(canonical_json_writes_fractions_that_read_back),
      cmocka_unit_test(canonical_json_escapes_strings),
      cmocka_unit_test(canonical_json_len_may_be_null),
      cmocka_unit_test(digest_is_sha256_of_the_canonical_json),
      cmocka_unit_test(digest_of_null_is_the_digest_of_an_empty_object),
      cmocka_unit_test(digest_ignores_key_order_and_whitespace),
      cmocka_unit_test(submit_records_the_refused_stage_and_field),
      cmocka_unit_test(plan_error_is_cleared_by_success_and_by_a_refusal_that_is_not_a_plans),
      cmocka_unit_test(submit_without_a_config_records_a_refusal_of_the_config),
      cmocka_unit_test(a_factorys_own_refusal_is_recorded_without_a_field),
      cmocka_unit_test(a_factory_that_passes_on_a_refusal_reports_that_refusal),
      cmocka_unit_test(the_first_refusal_of_a_factory_is_the_one_reported),
      cmocka_unit_test(recovery_refusals_are_recorded),
      cmocka_unit_test(plan_error_belongs_to_the_thread),
      cmocka_unit_test(an_identical_config_reuses_the_plan_after_its_task_ended),
      cmocka_unit_test(a_refused_config_is_not_cached),
      cmocka_unit_test(the_cache_keeps_the_most_recent_plans_and_evicts_the_oldest),
      cmocka_unit_test(a_plan_in_use_is_never_evicted),
      cmocka_unit_test(a_long_name_is_cut_in_the_record_between_characters),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
