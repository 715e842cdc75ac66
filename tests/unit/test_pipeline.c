/* The pipeline file loader of the `stagecoach` command: every refusal is reported as
 * FILE:LINE:COLUMN: what, malformed JSON, a wrong top level and the stage factory's refusals
 * alike; a good file gives the configs and the plan's fingerprint. */
#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"

#include "cli.h"

static char dir[64];   /* a mkdtemp directory for the files of every case */
static char file[256]; /* the file the last case wrote */

static int make_dir(void **state) {
  (void)state;
  snprintf(dir, sizeof(dir), "/tmp/test_pipeline.XXXXXX");
  return mkdtemp(dir) ? 0 : -1;
}

static int remove_dir(void **state) {
  (void)state;
  static const char *const names[] = {"pipeline.json", "deploy.json"};
  char path[256];
  for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
    snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
    unlink(path);
  }
  snprintf(path, sizeof(path), "%s/a-directory", dir);
  rmdir(path);
  return rmdir(dir);
}

/* ---- helpers ---- */

static const char *write_bytes(const char *name, const char *text, size_t len) {
  snprintf(file, sizeof(file), "%s/%s", dir, name);
  FILE *f = fopen(file, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(text, 1, len, f), len);
  assert_int_equal(fclose(f), 0);
  return file;
}

static const char *write_pipeline(const char *text) {
  return write_bytes("pipeline.json", text, strlen(text));
}

static void assert_zeroed(const cli_pipeline *p) {
  assert_null(p->path);
  assert_null(p->plan);
  assert_null(p->tenant);
  assert_null(p->config);
  assert_null(p->previous_config);
  assert_int_equal(p->fingerprint[0], '\0');
}

/* Loads the bytes with the built-in kinds plus exec and expects the report to be exactly the
 * given lines, each prefixed by the file's path. */
static void assert_bytes_report(const char *text, size_t len, const char *const *lines) {
  const char *path = write_bytes("pipeline.json", text, len);
  cli_pipeline p;
  char err[8192], want[8192];
  int rc = cli_pipeline_load(path, NULL, &p, err, sizeof(err));
  size_t off = 0;
  for (size_t i = 0; lines[i] != NULL; i++)
    off += (size_t)snprintf(want + off, sizeof(want) - off, "%s:%s\n", path, lines[i]);
  if (rc != CLI_EXIT_USAGE) fail_msg("expected a refusal of:\n%s\ngot %d", text, rc);
  if (strcmp(err, want) != 0) fail_msg("for:\n%s\n--- got:\n%s--- want:\n%s", text, err, want);
  assert_zeroed(&p);
}

static void assert_report(const char *text, const char *const *lines) {
  assert_bytes_report(text, strlen(text), lines);
}

/* The report is one line: "LINE:COLUMN: what". */
static void assert_refused(const char *text, const char *line) {
  const char *lines[] = {line, NULL};
  assert_report(text, lines);
}

/* One line, at the first byte of the nth (from 0) occurrence of needle in text. */
static void assert_refused_at(const char *text, const char *needle, int nth, const char *what) {
  const char *hit = strstr(text, needle);
  for (int i = 0; i < nth && hit != NULL; i++)
    hit = strstr(hit + 1, needle);
  if (hit == NULL) fail_msg("test bug: no \"%s\" #%d in:\n%s", needle, nth, text);
  unsigned line = 1, column = 1;
  for (const char *c = text; c < hit; c++, column++)
    if (*c == '\n') {
      line++;
      column = 0;
    }
  char expected[1024];
  snprintf(expected, sizeof(expected), "%u:%u: %s", line, column, what);
  assert_refused(text, expected);
}

/* A pipeline around a stages array (whose text starts on line 7), laid out as people write
 * them. Static buffer. */
static const char *with_stages(const char *stages) {
  static char text[4096];
  snprintf(text, sizeof(text),
           "{\n"
           "  \"plan\": \"tenant-deploy\",\n"
           "  \"tenant\": \"acme\",\n"
           "  \"config\": {\n"
           "    \"version\": \"2.4.1\",\n"
           "    \"stages\": [\n"
           "%s\n"
           "    ]\n"
           "  }\n"
           "}\n",
           stages);
  return text;
}

/* Loads a file that must be accepted; the caller frees p. */
static void load_good(const char *text, sc_engine *e, cli_pipeline *p) {
  const char *path = write_pipeline(text);
  char err[4096];
  int rc = cli_pipeline_load(path, e, p, err, sizeof(err));
  if (rc != 0) fail_msg("refused:\n%s\n---\n%s", text, err);
  assert_string_equal(err, "");
}

static const char *const good_file =
    "{\n"
    "  \"plan\": \"tenant-deploy\",\n"
    "  \"tenant\": \"acme\",\n"
    "  \"config\": {\n"
    "    \"version\": \"2.4.1\",\n"
    "    \"stages\": [\n"
    "      { \"name\": \"build\", \"kind\": \"fn\", \"params\": { \"fn\": \"build\" } },\n"
    "      { \"name\": \"wait\", \"kind\": \"sleep\", \"params\": { \"ms\": 200 } },\n"
    "      { \"name\": \"deploy\", \"kind\": \"exec\", \"run\": \"./deploy.sh\",\n"
    "        \"retry\": { \"max_attempts\": 3, \"initial_backoff_ms\": 200, \"multiplier\": 2 },\n"
    "        \"approval\": { \"required\": true, \"on_timeout\": \"reject\" },\n"
    "        \"effect\": \"irreversible\" }\n"
    "    ]\n"
    "  },\n"
    "  \"previous_config\": {\n"
    "    \"version\": \"2.4.0\",\n"
    "    \"stages\": [ { \"name\": \"deploy\", \"kind\": \"exec\", \"run\": \"./deploy.sh\" } ]\n"
    "  }\n"
    "}\n";

/* ---- a file that is accepted ---- */

static void good_file_fills_every_field(void **state) {
  (void)state;
  cli_pipeline p;
  load_good(good_file, NULL, &p);
  assert_string_equal(p.path, file);
  assert_string_equal(p.plan, "tenant-deploy");
  assert_string_equal(p.tenant, "acme");
  assert_true(cJSON_IsObject(p.config));
  assert_string_equal(cJSON_GetObjectItem(p.config, "version")->valuestring, "2.4.1");
  assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(p.config, "stages")), 3);
  assert_true(cJSON_IsObject(p.previous_config));
  assert_string_equal(cJSON_GetObjectItem(p.previous_config, "version")->valuestring, "2.4.0");
  /* detached from the file's top level: no member name of their own */
  assert_null(p.config->string);
  assert_null(p.previous_config->string);
  cli_pipeline_free(&p);
  assert_zeroed(&p);
}

static void good_file_fingerprint_is_the_plan_fingerprint_of_its_config(void **state) {
  (void)state;
  cli_pipeline p;
  load_good(good_file, NULL, &p);
  char fp[72];
  assert_int_equal(sc_plan_fingerprint(NULL, NULL, p.config, fp), SC_OK);
  assert_string_equal(p.fingerprint, fp);
  assert_int_equal(strlen(p.fingerprint), strlen("sha256:") + 64);
  cli_pipeline_free(&p);
}

static void plan_tenant_and_previous_config_are_optional(void **state) {
  (void)state;
  cli_pipeline p;
  load_good("{\"config\":{\"stages\":[{\"name\":\"a\",\"kind\":\"exec\",\"run\":\"true\"}]}}", NULL,
            &p);
  assert_null(p.plan);
  assert_null(p.tenant);
  assert_null(p.previous_config);
  assert_non_null(p.config);
  cli_pipeline_free(&p);
}

static void previous_config_null_is_no_previous_config(void **state) {
  (void)state;
  cli_pipeline p;
  load_good("{\"config\":{\"stages\":[{\"name\":\"a\",\"kind\":\"exec\",\"run\":\"true\"}]},"
            "\"previous_config\":null}",
            NULL, &p);
  assert_null(p.previous_config);
  cli_pipeline_free(&p);
}

static void unicode_escapes_and_surrogate_pairs_are_decoded_to_utf8(void **state) {
  (void)state;
  cli_pipeline p;
  load_good("{\"tenant\":\"caf\\u00e9 \\ud83d\\ude80 \\u2603 \\uD834\\uDD1E \\\" \\\\ \\/ "
            "\\b\\f\\n\\r\\t\","
            "\"config\":{\"stages\":[{\"name\":\"\\u0041\",\"kind\":\"exec\",\"run\":\"x\"}]}}",
            NULL, &p);
  assert_string_equal(p.tenant,
                      "caf\xC3\xA9 \xF0\x9F\x9A\x80 \xE2\x98\x83 \xF0\x9D\x84\x9E \" \\ / "
                      "\b\f\n\r\t");
  assert_string_equal(
      cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(p.config, "stages"), 0), "name")
          ->valuestring,
      "A");
  cli_pipeline_free(&p);
}

static void utf8_in_strings_passes_unchanged(void **state) {
  (void)state;
  cli_pipeline p;
  load_good("{\"tenant\":\"Z\xC3\xBCrich \xE6\x9D\xB1\xE4\xBA\xAC \xF0\x9F\x9A\x80\","
            "\"config\":{\"stages\":[{\"name\":\"a\",\"kind\":\"exec\",\"run\":\"x\"}]}}",
            NULL, &p);
  assert_string_equal(p.tenant, "Z\xC3\xBCrich \xE6\x9D\xB1\xE4\xBA\xAC \xF0\x9F\x9A\x80");
  cli_pipeline_free(&p);
}

static void numbers_of_the_rfc_grammar_are_read(void **state) {
  (void)state;
  cli_pipeline p;
  load_good("{\"config\":{\"n\":[0,-0,12,-12.25,0.5e-3,1E+2,2e2,1e-400,123456789012],"
            "\"stages\":[{\"name\":\"a\",\"kind\":\"sleep\",\"ms\":10}]}}",
            NULL, &p);
  const cJSON *n = cJSON_GetObjectItem(p.config, "n");
  static const double want[] = {0, -0.0, 12, -12.25, 0.0005, 100, 200, 0, 123456789012.0};
  assert_int_equal(cJSON_GetArraySize(n), 9);
  for (int i = 0; i < 9; i++)
    assert_true(cJSON_GetArrayItem(n, i)->valuedouble == want[i]);
  cli_pipeline_free(&p);
}

static void a_byte_order_mark_is_skipped(void **state) {
  (void)state;
  cli_pipeline p;
  load_good(
      "\xEF\xBB\xBF{\"config\":{\"stages\":[{\"name\":\"a\",\"kind\":\"exec\",\"run\":\"x\"}]}}",
      NULL, &p);
  assert_non_null(p.config);
  cli_pipeline_free(&p);
}

/* A file nested `depth` levels deep: the top level, config, then arrays in config.deep. */
static char *nested(int depth) {
  const char *head = "{\"config\":{\"stages\":[{\"name\":\"a\",\"kind\":\"exec\",\"run\":\"x\"}],"
                     "\"deep\":";
  size_t arrays = (size_t)depth - 2, len = strlen(head) + 2 * arrays + 3;
  char *text = malloc(len);
  assert_non_null(text);
  size_t off = (size_t)snprintf(text, len, "%s", head);
  memset(text + off, '[', arrays);
  memset(text + off + arrays, ']', arrays);
  memcpy(text + off + 2 * arrays, "}}", 3);
  return text;
}

static void nesting_512_deep_is_accepted(void **state) {
  (void)state;
  char *text = nested(512);
  cli_pipeline p;
  load_good(text, NULL, &p);
  cli_pipeline_free(&p);
  free(text);
}

static void nesting_513_deep_is_refused_at_the_bracket_too_deep(void **state) {
  (void)state;
  char *text = nested(513);
  char line[128];
  /* the 511th '[' of config.deep is the 513th level */
  const char *deep = strstr(text, "\"deep\":") + strlen("\"deep\":");
  snprintf(line, sizeof(line), "1:%zu: nesting deeper than 512 levels",
           (size_t)(deep - text) + 510 + 1);
  assert_refused(text, line);
  free(text);
}

static int never_runs(sc_stage_ctx *ctx, void *udata) {
  (void)ctx;
  (void)udata;
  return SC_EINVAL;
}

static void the_callers_engine_gives_the_kinds(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sc_engine *e;
  assert_int_equal(sc_engine_new(&loop, NULL, &e), SC_OK);
  sc_stage_kind kind = {SC_STAGE_KIND_VERSION, never_runs, NULL, NULL};
  assert_int_equal(sc_engine_register_kind(e, "deploy", &kind, NULL), SC_OK);
  cli_pipeline p;
  load_good("{\"config\":{\"stages\":[{\"name\":\"a\",\"kind\":\"deploy\"}]}}", e, &p);
  cli_pipeline_free(&p);
  /* exec is not one of this engine's kinds */
  const char *path = write_pipeline(
      "{\"config\":{\"stages\":[{\"name\":\"a\",\"kind\":\"exec\",\"run\":\"x\"}]}}");
  char err[1024], want[1024];
  assert_int_equal(cli_pipeline_load(path, e, &p, err, sizeof(err)), CLI_EXIT_USAGE);
  snprintf(want, sizeof(want),
           "%s:1:41: stage \"a\": \"kind\" names an unknown kind \"exec\" (kinds: fn, sleep, "
           "deploy)\n",
           path);
  assert_string_equal(err, want);
  assert_int_equal(sc_engine_task_count(e), 0); /* checking submits nothing */
  stop_engine(e, NULL, &loop);
}

static void free_of_a_zeroed_or_freed_pipeline_is_harmless(void **state) {
  (void)state;
  cli_pipeline p;
  memset(&p, 0, sizeof(p));
  cli_pipeline_free(&p);
  cli_pipeline_free(&p);
  cli_pipeline_free(NULL);
  load_good(good_file, NULL, &p);
  cli_pipeline_free(&p);
  cli_pipeline_free(&p);
}

/* ---- a file that cannot be read ---- */

static void a_missing_file_cannot_be_read(void **state) {
  (void)state;
  char path[256], err[512], want[512];
  snprintf(path, sizeof(path), "%s/no-such-file.json", dir);
  cli_pipeline p;
  assert_int_equal(cli_pipeline_load(path, NULL, &p, err, sizeof(err)), CLI_EXIT_USAGE);
  snprintf(want, sizeof(want), "%s: cannot read: %s\n", path, strerror(ENOENT));
  assert_string_equal(err, want);
  assert_zeroed(&p);
}

static void a_directory_cannot_be_read(void **state) {
  (void)state;
  char path[256], err[512], want[512];
  snprintf(path, sizeof(path), "%s/a-directory", dir);
  assert_int_equal(mkdir(path, 0700), 0);
  cli_pipeline p;
  assert_int_equal(cli_pipeline_load(path, NULL, &p, err, sizeof(err)), CLI_EXIT_USAGE);
  snprintf(want, sizeof(want), "%s: cannot read: %s\n", path, strerror(EISDIR));
  assert_string_equal(err, want);
  assert_int_equal(rmdir(path), 0);
}

static void a_file_past_64_mib_is_refused_by_its_size(void **state) {
  (void)state;
  /* Sparse: the size is what counts, and the file is refused before a byte of it is read. */
  const char *path = write_pipeline("{}");
  assert_int_equal(truncate(path, (off_t)64 * 1024 * 1024 + 1), 0);
  cli_pipeline p;
  char err[512], want[512];
  assert_int_equal(cli_pipeline_load(path, NULL, &p, err, sizeof(err)), CLI_EXIT_USAGE);
  snprintf(want, sizeof(want), "%s: cannot read: larger than 64 MiB, not a pipeline file\n", path);
  assert_string_equal(err, want);
  assert_zeroed(&p);
}

static void a_pipe_is_read_like_a_file(void **state) {
  (void)state;
  const char *text = "{\"plan\": \"from-a-pipe\", \"config\": {\"stages\": [{\"name\": \"a\", "
                     "\"kind\": \"sleep\", \"params\": {\"ms\": 0}}]}}";
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  assert_int_equal(write(fds[1], text, strlen(text)), (ssize_t)strlen(text));
  assert_int_equal(close(fds[1]), 0);
  char path[64], err[512] = "";
  snprintf(path, sizeof(path), "/dev/fd/%d", fds[0]);
  cli_pipeline p;
  assert_int_equal(cli_pipeline_load(path, NULL, &p, err, sizeof(err)), 0);
  assert_string_equal(err, "");
  assert_string_equal(p.plan, "from-a-pipe");
  cli_pipeline_free(&p);
  assert_int_equal(close(fds[0]), 0);
}

static void a_short_error_buffer_gets_a_cut_message(void **state) {
  (void)state;
  const char *path = write_pipeline("{\"plan\": }");
  cli_pipeline p;
  char err[8];
  memset(err, 'x', sizeof(err));
  assert_int_equal(cli_pipeline_load(path, NULL, &p, err, sizeof(err)), CLI_EXIT_USAGE);
  assert_int_equal(strlen(err), sizeof(err) - 1);
  assert_memory_equal(err, path, sizeof(err) - 1);
  assert_int_equal(cli_pipeline_load(path, NULL, &p, NULL, 0), CLI_EXIT_USAGE);
}

/* ---- malformed JSON ---- */

static void an_empty_file_is_refused(void **state) {
  (void)state;
  assert_refused("", "1:1: the file is empty");
  assert_refused(" \n\t\r\n ", "1:1: the file is empty");
}

static void a_missing_comma_between_members_is_refused_where_it_belongs(void **state) {
  (void)state;
  assert_refused("{\"plan\": \"a\"\n \"tenant\": \"b\"}",
                 "2:2: expected ',' or '}' after an object member");
  assert_refused("{\n  \"plan\": \"a\"", "2:14: expected ',' or '}' after an object member");
}

static void a_missing_value_is_refused(void **state) {
  (void)state;
  assert_refused("{\"plan\": }", "1:10: expected a value");
  assert_refused("{\"plan\": ", "1:10: expected a value");
  assert_refused("{\"plan\": tru}", "1:10: expected a value");
  assert_refused("{\"plan\": nulls}", "1:10: expected a value");
  assert_refused("{\"plan\": 'a'}", "1:10: expected a value");
  assert_refused("{\"plan\": \xFF}", "1:10: expected a value");
}

static void a_bad_member_name_is_refused(void **state) {
  (void)state;
  assert_refused("{plan: 1}", "1:2: expected a member name (a string) or '}'");
  assert_refused("{\"plan\": \"a\", tenant: 1}",
                 "1:15: expected a member name (a string) after ','");
  assert_refused("{\"plan\": \"a\",}",
                 "1:14: expected a member name after ',' (a trailing comma is not allowed)");
  assert_refused("{\"plan\" \"a\"}", "1:9: expected ':' after a member name");
}

static void a_bad_array_is_refused(void **state) {
  (void)state;
  assert_refused("{\"config\": [1 2]}", "1:15: expected ',' or ']' after an array element");
  assert_refused("{\"x\": [1,]}",
                 "1:10: expected a value after ',' (a trailing comma is not allowed)");
  assert_refused("{\"x\": [:]}", "1:8: expected a value or ']'");
  assert_refused("{\"x\": [1,:]}", "1:10: expected a value");
  assert_refused("{\"x\": [1", "1:9: expected ',' or ']' after an array element");
}

static void an_unterminated_string_is_refused_at_its_opening_quote(void **state) {
  (void)state;
  assert_refused("{\"plan\": \"abc", "1:10: unterminated string");
  assert_refused("{\n  \"pl", "2:3: unterminated string");
  assert_refused("{\"plan\": \"abc\\", "1:10: unterminated string");
  assert_refused("{\"plan\": \"\\u12", "1:10: unterminated string");
}

static void an_invalid_escape_is_refused_at_its_backslash(void **state) {
  (void)state;
  assert_refused("{\"plan\": \"a\\qb\"}",
                 "1:12: invalid escape \"\\q\" (expected \\\", \\\\, \\/, \\b, \\f, \\n, \\r, \\t "
                 "or \\uXXXX)");
  assert_refused("{\"plan\": \"\\u12G4\"}",
                 "1:11: invalid escape: \\u must be followed by four hex digits");
  assert_refused("{\"plan\": \"\\u0000\"}",
                 "1:11: invalid escape: \\u0000 is not allowed (a string cannot hold NUL)");
}

static void an_unpaired_surrogate_is_refused(void **state) {
  (void)state;
  assert_refused("{\"plan\": \"\\ud83d x\"}",
                 "1:11: invalid escape: \\uD83D is an unpaired UTF-16 surrogate");
  assert_refused("{\"plan\": \"\\ud83d\\u0041\"}",
                 "1:11: invalid escape: \\uD83D is an unpaired UTF-16 surrogate");
  assert_refused("{\"plan\": \"\\ude80\"}",
                 "1:11: invalid escape: \\uDE80 is an unpaired UTF-16 surrogate");
  assert_refused("{\"plan\": \"x\\ud83d\\ud83d\"}",
                 "1:12: invalid escape: \\uD83D is an unpaired UTF-16 surrogate");
}

static void a_control_character_in_a_string_is_refused(void **state) {
  (void)state;
  assert_refused("{\"plan\": \"a\tb\"}", "1:12: control character in a string (a tab: write \\t)");
  assert_refused("{\"plan\": \"abc\n\"}",
                 "1:14: control character in a string (a line break: is the closing quote "
                 "missing?)");
  assert_refused("{\"plan\": \"\x01\"}",
                 "1:11: control character in a string (U+0001: write \\u0001)");
  assert_bytes_report(
      "{\"plan\": \"a\0\"}", 14,
      (const char *const[]){"1:12: control character in a string (U+0000: write \\u0000)", NULL});
}

static void invalid_utf8_in_a_string_is_refused(void **state) {
  (void)state;
  assert_refused("{\"plan\": \"a\xFF\"}", "1:12: invalid UTF-8 in a string");
  assert_refused("{\"plan\": \"a\xC0\xAF\"}", "1:12: invalid UTF-8 in a string"); /* overlong */
  assert_refused("{\"plan\": \"a\xED\xA0\x80\"}",
                 "1:12: invalid UTF-8 in a string"); /* surrogate */
  assert_refused("{\"plan\": \"a\xF4\x90\x80\x80\"}", "1:12: invalid UTF-8 in a string");
  assert_refused("{\"plan\": \"a\xE2\x98\"}", "1:12: invalid UTF-8 in a string"); /* cut short */
}

static void trailing_text_after_the_top_level_value_is_refused(void **state) {
  (void)state;
  assert_refused("{}\n}", "2:1: trailing text after the top-level value");
  assert_refused("{} {}", "1:4: trailing text after the top-level value");
}

static void a_duplicate_member_is_refused_at_its_second_name(void **state) {
  (void)state;
  assert_refused("{\n  \"plan\": \"a\",\n  \"plan\": \"b\"\n}",
                 "3:3: duplicate member \"plan\" (first at 2:3)");
  assert_refused(with_stages("      { \"name\": \"a\", \"kind\": \"exec\", \"kind\": \"fn\" }"),
                 "7:38: duplicate member \"kind\" (first at 7:22)");
  /* the same name after decoding */
  assert_refused("{\"plan\": 1, \"pl\\u0061n\": 2}",
                 "1:13: duplicate member \"plan\" (first at 1:2)");
}

static void a_malformed_number_is_refused(void **state) {
  (void)state;
  assert_refused("{\"x\": -}", "1:8: invalid number: expected a digit after '-'");
  assert_refused("{\"x\": 01}", "1:7: invalid number: leading zeros are not allowed");
  assert_refused("{\"x\": -00}", "1:7: invalid number: leading zeros are not allowed");
  assert_refused("{\"x\": 1.}", "1:9: invalid number: expected a digit after '.'");
  assert_refused("{\"x\": 1.e5}", "1:9: invalid number: expected a digit after '.'");
  assert_refused("{\"x\": 1e}", "1:9: invalid number: expected a digit in the exponent");
  assert_refused("{\"x\": 1e+}", "1:10: invalid number: expected a digit in the exponent");
  assert_refused("{\"x\": +1}", "1:7: expected a value");
  assert_refused("{\"x\": .5}", "1:7: expected a value");
  assert_refused("{\"x\": 1e999}", "1:7: number out of range (it does not fit a double)");
  assert_refused("{\"x\": -1e999}", "1:7: number out of range (it does not fit a double)");
}

/* ---- the top level ---- */

static void a_top_level_that_is_not_an_object_is_refused(void **state) {
  (void)state;
  assert_refused("[1]", "1:1: the top level must be an object with \"config\" (found an array)");
  assert_refused("\n  \"x\"",
                 "2:3: the top level must be an object with \"config\" (found a string)");
}

static void unknown_member_is_named_with_the_expected_ones(void **state) {
  (void)state;
  assert_refused(
      "{\n  \"config\": {\"stages\":[{\"name\":\"a\",\"kind\":\"exec\",\"run\":\"x\"}]},\n"
      "  \"stage\": []\n}",
      "3:3: unknown member \"stage\" (expected plan, tenant, config, previous_config)");
}

static void plan_and_tenant_must_be_strings(void **state) {
  (void)state;
  assert_refused("{\"config\":{\"stages\":[{\"name\":\"a\",\"kind\":\"exec\",\"run\":\"x\"}]},"
                 "\"plan\": 7}",
                 "1:69: \"plan\" must be a string (found a number)");
  assert_refused("{\"config\":{\"stages\":[{\"name\":\"a\",\"kind\":\"exec\",\"run\":\"x\"}]},"
                 "\"tenant\": null}",
                 "1:71: \"tenant\" must be a string (found null)");
}

static void config_is_required(void **state) {
  (void)state;
  assert_refused("{\"plan\": \"p\"}", "1:1: \"config\" is required (an object with \"stages\")");
  assert_refused("  {}", "1:3: \"config\" is required (an object with \"stages\")");
}

static void config_must_be_an_object(void **state) {
  (void)state;
  assert_refused("{\"config\": []}",
                 "1:12: \"config\" must be an object with \"stages\" (found an array)");
}

static void previous_config_must_be_an_object_or_null(void **state) {
  (void)state;
  assert_refused("{\"config\":{\"stages\":[{\"name\":\"a\",\"kind\":\"exec\",\"run\":\"x\"}]},"
                 "\"previous_config\": \"2.4.0\"}",
                 "1:80: \"previous_config\" must be an object or null (found a string)");
}

static void every_top_level_mistake_is_reported_in_file_order(void **state) {
  (void)state;
  const char *const lines[] = {
      "2:13: \"tenant\" must be a string (found a boolean)",
      "3:3: unknown member \"plans\" (expected plan, tenant, config, previous_config)",
      "4:22: \"previous_config\" must be an object or null (found a number)",
      "5:63: stage \"a\": \"timeout_ms\" must be a non-negative integer",
      NULL,
  };
  assert_report(
      "{\n"
      "  \"tenant\": true,\n"
      "  \"plans\": \"x\",\n"
      "  \"previous_config\": 3,\n"
      "  \"config\": {\"stages\":[{\"name\":\"a\",\"kind\":\"exec\",\"timeout_ms\":-1}]}\n"
      "}",
      lines);
}

/* ---- the factory's refusals, located ---- */

static void the_design_example_reads_as_documented(void **state) {
  (void)state;
  static const char *const text =
      "{\n"
      "  \"plan\": \"tenant-deploy\",\n"
      "  \"tenant\": \"acme\",\n"
      "  \"config\": {\n"
      "    \"version\": \"2.4.1\",\n"
      "    \"stages\": [\n"
      "      { \"name\": \"build\", \"kind\": \"exec\", \"run\": \"make\" },\n"
      "      { \"name\": \"deploy\", \"kind\": \"exec\", \"run\": \"./deploy.sh\",\n"
      "        \"retry\": { \"max_attempts\": 3 } },\n"
      "      {\n"
      "        \"name\": \"verify\",\n"
      "        \"kind\": \"exec\",\n"
      "        \"run\": \"./verify.sh\", \"timeout_ms\":\n"
      "        -5 }\n"
      "    ]\n"
      "  }\n"
      "}\n";
  write_bytes("deploy.json", text, strlen(text));
  char cwd[4096], err[1024];
  assert_non_null(getcwd(cwd, sizeof(cwd)));
  assert_int_equal(chdir(dir), 0);
  cli_pipeline p;
  int rc = cli_pipeline_load("deploy.json", NULL, &p, err, sizeof(err));
  assert_int_equal(chdir(cwd), 0);
  assert_int_equal(rc, CLI_EXIT_USAGE);
  assert_string_equal(err,
                      "deploy.json:14:9: stage \"verify\": \"timeout_ms\" must be a non-negative "
                      "integer\n");
}

static void a_negative_timeout_is_located_at_its_value(void **state) {
  (void)state;
  assert_refused_at(
      with_stages("      { \"name\": \"verify\", \"kind\": \"exec\", \"run\": \"x\",\n"
                  "        \"timeout_ms\": -5 }"),
      "-5", 0, "stage \"verify\": \"timeout_ms\" must be a non-negative integer");
}

static void an_unknown_kind_is_located_at_its_value(void **state) {
  (void)state;
  assert_refused_at(
      with_stages("      { \"name\": \"build\", \"kind\": \"exec\", \"run\": \"make\" },\n"
                  "      { \"name\": \"deploy\", \"kind\": \"deplyo\" }"),
      "\"deplyo\"", 0,
      "stage \"deploy\": \"kind\" names an unknown kind \"deplyo\" (kinds: fn, sleep, exec)");
}

/* What the exec kind reads is checked when the file is loaded, not when the stage starts. */
static void exec_members_are_checked_at_load_where_they_are(void **state) {
  (void)state;
  assert_refused_at(
      with_stages("      { \"name\": \"first\", \"kind\": \"exec\", \"run\": \"true\" },\n"
                  "      { \"name\": \"late\", \"kind\": \"exec\", \"run\": \"x\",\n"
                  "        \"kill_grace_ms\": \"soon\" }"),
      "\"soon\"", 0, "stage \"late\": \"kill_grace_ms\" must be an integer 0..86400000");
  assert_refused_at(with_stages("      { \"name\": \"norun\", \"kind\": \"exec\" }"), "{ \"name\"",
                    0, "stage \"norun\": \"run\" is required (a non-empty shell command)");
  assert_refused_at(with_stages("      { \"name\": \"num\", \"kind\": \"exec\", \"run\": 5 }"), "5",
                    0, "stage \"num\": \"run\" is required (a non-empty shell command)");
  assert_refused_at(with_stages("      { \"name\": \"codes\", \"kind\": \"exec\", \"run\": \"x\",\n"
                                "        \"no_retry_exit_codes\": [2, 256] }"),
                    "256", 0,
                    "stage \"codes\": \"no_retry_exit_codes\" must be an array of integers 0..255");
  assert_refused_at(with_stages("      { \"name\": \"env\", \"kind\": \"exec\", \"run\": \"x\",\n"
                                "        \"env\": { \"A\": \"1\", \"SC_MODE\": \"run\" } }"),
                    "\"run\" }", 0,
                    "stage \"env\": \"env\" may not set SC_MODE (the exec kind sets it)");
  assert_refused_at(with_stages("      { \"name\": \"undo\", \"kind\": \"exec\", \"run\": \"x\",\n"
                                "        \"params\": { \"compensate\": \"\" } }"),
                    "\"\" }", 0,
                    "stage \"undo\": \"compensate\" must be a non-empty shell command");
  /* A variable of ours in a script: located at its "${", also past escapes in the string */
  assert_refused_at(with_stages("      { \"name\": \"sub\", \"kind\": \"exec\",\n"
                                "        \"run\": \"echo \\\"$(basename ${context.file})\\\"\" }"),
                    "${context.file}", 0,
                    "stage \"sub\": \"run\" may not contain ${context.file}; pass it as \"env\": "
                    "{\"FILE\": \"${context.file}\"} and write \"$FILE\"");
  assert_refused_at(
      with_stages("      { \"name\": \"deploy\", \"kind\": \"exec\", \"run\": \"true\",\n"
                  "        \"compensate\": \"printf '\\u00e9\\t%s' ${context.artifact}\" }"),
      "${context.artifact}", 0,
      "stage \"deploy\": \"compensate\" may not contain ${context.artifact}; pass it as "
      "\"env\": {\"ARTIFACT\": \"${context.artifact}\"} and write \"$ARTIFACT\"");
  /* A member the exec kind does not have, at the stage or in params, as the top level refuses */
  assert_refused_at(with_stages("      { \"name\": \"odd\", \"kind\": \"exec\", \"run\": \"x\",\n"
                                "        \"bogus\": 7 }"),
                    "7 }", 0,
                    "stage \"odd\": \"bogus\" is not a member of an exec stage (members: run, "
                    "compensate, args, kill_grace_ms, no_retry_exit_codes, cwd, env, "
                    "compensate_env)");
  assert_refused_at(with_stages("      { \"name\": \"odd\", \"kind\": \"exec\", \"run\": \"x\",\n"
                                "        \"params\": { \"comensate\": \"y\" } }"),
                    "\"y\"", 0,
                    "stage \"odd\": \"comensate\" is not a member of an exec stage (members: "
                    "run, compensate, args, kill_grace_ms, no_retry_exit_codes, cwd, env, "
                    "compensate_env)");
  /* previous_config is checked the same way */
  assert_refused_at(
      "{\"config\":{\"stages\":[{\"name\":\"a\",\"kind\":\"exec\",\"run\":\"x\"}]},\n"
      "\"previous_config\":{\"stages\":[{\"name\":\"a\",\"kind\":\"exec\",\"cwd\":\"\","
      "\"run\":\"x\"}]}}",
      "\"\",", 0, "previous_config: stage \"a\": \"cwd\" must be a non-empty string");
}

static void a_duplicate_stage_name_is_located_at_the_second_name(void **state) {
  (void)state;
  assert_refused(
      with_stages("      { \"name\": \"build\", \"kind\": \"exec\", \"run\": \"make\" },\n"
                  "      { \"name\": \"build\", \"kind\": \"exec\", \"run\": \"make\" }"),
      "8:17: stage \"build\": \"name\" duplicates stage 0 (at 7:17)");
}

static void a_multiplier_below_one_is_located_at_its_value(void **state) {
  (void)state;
  assert_refused_at(
      with_stages("      { \"name\": \"deploy\", \"kind\": \"exec\", \"run\": \"x\",\n"
                  "        \"retry\": { \"max_attempts\": 3, \"multiplier\": 0.5 } }"),
      "0.5", 0, "stage \"deploy\": \"retry.multiplier\" must be between 1 and 100");
}

static void a_max_backoff_below_the_initial_one_is_located_at_its_value(void **state) {
  (void)state;
  assert_refused_at(
      with_stages("      { \"name\": \"deploy\", \"kind\": \"exec\", \"run\": \"x\",\n"
                  "        \"retry\": { \"initial_backoff_ms\": 500, \"max_backoff_ms\": 100 } }"),
      "100", 0,
      "stage \"deploy\": \"retry.max_backoff_ms\" must be 0 or at least initial_backoff_ms");
}

static void a_retry_that_is_not_an_object_is_located_at_its_value(void **state) {
  (void)state;
  assert_refused_at(
      with_stages("      { \"name\": \"deploy\", \"kind\": \"exec\", \"run\": \"x\",\n"
                  "        \"retry\": 3 }"),
      "3 }", 0, "stage \"deploy\": \"retry\" must be an object");
}

static void an_unknown_on_timeout_is_located_at_its_value(void **state) {
  (void)state;
  assert_refused_at(
      with_stages("      { \"name\": \"deploy\", \"kind\": \"exec\", \"run\": \"x\",\n"
                  "        \"approval\": { \"timeout_ms\": 1000, \"on_timeout\": \"maybe\" } }"),
      "\"maybe\"", 0,
      "stage \"deploy\": \"approval.on_timeout\" must be \"approve\", \"reject\" or \"fail\"");
}

static void an_unknown_effect_is_located_at_its_value(void **state) {
  (void)state;
  assert_refused_at(with_stages("      { \"name\": \"deploy\", \"kind\": \"exec\", \"run\": \"x\","
                                " \"effect\": \"risky\" }"),
                    "\"risky\"", 0,
                    "stage \"deploy\": \"effect\" must be \"idempotent\", \"compensable\" or "
                    "\"irreversible\"");
}

static void a_missing_params_fn_is_located_at_the_stage(void **state) {
  (void)state;
  assert_refused_at(with_stages("      { \"name\": \"build\", \"kind\": \"fn\" }"), "{ \"name\"", 0,
                    "stage \"build\": \"params.fn\" must name a registered function (a string)");
}

static void a_missing_params_fn_is_located_at_the_params_object(void **state) {
  (void)state;
  assert_refused_at(with_stages("      { \"name\": \"build\", \"kind\": \"fn\", \"params\": { } }"),
                    "{ } }", 0,
                    "stage \"build\": \"params.fn\" must name a registered function (a string)");
}

static void a_bad_params_fn_given_at_the_stage_level_is_located_there(void **state) {
  (void)state;
  assert_refused_at(with_stages("      { \"name\": \"build\", \"kind\": \"fn\", \"fn\": 42 }"),
                    "42", 0,
                    "stage \"build\": \"params.fn\" must name a registered function (a string)");
  assert_refused_at(
      with_stages("      { \"name\": \"build\", \"kind\": \"fn\", \"params\": { \"fn\": \"\" } }"),
      "\"\" }", 0, "stage \"build\": \"params.fn\" must name a registered function (a string)");
}

static void a_member_given_twice_is_located_at_the_stage_level_one(void **state) {
  (void)state;
  assert_refused_at(
      with_stages(
          "      { \"name\": \"deploy\", \"kind\": \"exec\", \"params\": { \"run\": \"a\" },\n"
          "        \"run\": \"b\" }"),
      "\"b\"", 0, "stage \"deploy\": \"run\" is given both as a stage member and in params");
}

static void a_stage_without_a_name_is_located_at_the_stage(void **state) {
  (void)state;
  assert_refused(
      with_stages("      { \"name\": \"build\", \"kind\": \"exec\", \"run\": \"make\" },\n"
                  "      { \"kind\": \"exec\" }"),
      "8:7: stage 1: \"name\" is required");
  assert_refused(with_stages("      { \"name\": \"\", \"kind\": \"exec\" }"),
                 "7:17: stage 0: \"name\" must be a non-empty string");
}

static void a_stage_without_a_kind_is_located_at_the_stage(void **state) {
  (void)state;
  assert_refused(with_stages("      { \"name\": \"build\" }"),
                 "7:7: stage \"build\": \"kind\" is required");
}

static void a_stage_that_is_not_an_object_is_located_at_it(void **state) {
  (void)state;
  assert_refused(
      with_stages("      { \"name\": \"build\", \"kind\": \"exec\", \"run\": \"make\" },\n"
                  "      \"deploy\""),
      "8:7: stage 1: must be an object");
}

static void empty_stages_are_located_at_the_array(void **state) {
  (void)state;
  assert_refused("{\"config\": {\"stages\": []}}",
                 "1:23: config: \"stages\" must be a non-empty array");
  assert_refused("{\"config\": {\"stages\": {}}}",
                 "1:23: config: \"stages\" must be a non-empty array");
}

static void missing_stages_are_located_at_the_config(void **state) {
  (void)state;
  assert_refused("{\n  \"config\": { \"version\": \"1\" }\n}",
                 "2:13: config: \"stages\" is required");
}

static void a_previous_config_refusal_says_previous_config(void **state) {
  (void)state;
  static const char *const text =
      "{\n"
      "  \"config\": { \"stages\": [ { \"name\": \"deploy\", \"kind\": \"exec\", \"run\": \"x\" } "
      "] },\n"
      "  \"previous_config\": {\n"
      "    \"stages\": [ { \"name\": \"deploy\", \"kind\": \"exec\", \"run\": \"x\",\n"
      "                  \"retry\": { \"multiplier\": 500 } } ]\n"
      "  }\n"
      "}\n";
  assert_refused_at(text, "500", 0,
                    "previous_config: stage \"deploy\": \"retry.multiplier\" must be between 1 "
                    "and 100");
  assert_refused("{\"config\": {\"stages\": [{\"name\":\"a\",\"kind\":\"exec\",\"run\":\"x\"}]},\n"
                 " \"previous_config\": {\"stages\": []}}",
                 "2:32: previous_config: \"stages\" must be a non-empty array");
}

static void both_configs_are_checked_and_reported(void **state) {
  (void)state;
  const char *const lines[] = {
      "2:50: stage \"a\": \"kind\" names an unknown kind \"nope\" (kinds: fn, sleep, exec)",
      "3:65: previous_config: stage \"a\": \"timeout_ms\" must be between 0 and 4294967295 (got "
      "4294967296)",
      NULL,
  };
  assert_report(
      "{\n"
      "  \"config\": { \"stages\": [ { \"name\": \"a\", \"kind\": \"nope\" } ] },\n"
      "  \"previous_config\": { \"stages\": [ { \"name\": \"a\", \"timeout_ms\": 4294967296, "
      "\"kind\": \"exec\" } ] }\n"
      "}",
      lines);
}

/* The factory stops at the first stage it refuses; validate still reports the later stages'
 * errors, each at its place, in one pass. */
static void every_refused_stage_of_a_config_is_reported(void **state) {
  (void)state;
  const char *const lines[] = {
      "2:48: stage \"a\": \"timeout_ms\" must be a non-negative integer",
      "4:3: stage 2: \"name\" is required",
      "5:58: stage \"d\": \"retry.multiplier\" must be between 1 and 100",
      NULL,
  };
  assert_report(
      "{\"config\": {\"stages\": [\n"
      "  {\"name\": \"a\", \"kind\": \"sleep\", \"timeout_ms\": -1, \"params\": {\"ms\": 1}},\n"
      "  {\"name\": \"b\", \"kind\": \"sleep\", \"params\": {\"ms\": 1}},\n"
      "  {\"kind\": \"sleep\", \"params\": {\"ms\": 1}},\n"
      "  {\"name\": \"d\", \"kind\": \"sleep\", \"retry\": {\"multiplier\": 0}}]}}",
      lines);
}

static void a_stage_name_with_quotes_is_quoted_in_the_report(void **state) {
  (void)state;
  assert_refused(
      "{\"config\": {\"stages\": [{\"name\": \"say \\\"hi\\\"\", \"kind\": \"zz\"}]}}",
      "1:55: stage \"say \\\"hi\\\"\": \"kind\" names an unknown kind \"zz\" (kinds: fn, "
      "sleep, exec)");
}

static void a_duplicate_inside_an_earlier_member_is_reported_first(void **state) {
  (void)state;
  /* the inner "q" repeats before the outer "a" does: the first in the text is reported */
  assert_refused("{\"a\": 1,\n \"b\": {\"q\": 1, \"q\": 2},\n \"a\": 3}",
                 "2:16: duplicate member \"q\" (first at 2:8)");
  assert_refused("{\"a\": [ {\"x\": 1}, {\"x\": 1, \"y\": {}, \"x\": 2} ], \"a\": 3}",
                 "1:37: duplicate member \"x\" (first at 1:20)");
}

static void a_syntax_error_is_reported_before_a_duplicate(void **state) {
  (void)state;
  assert_refused("{\"plan\": 1, \"plan\": 2,\n \"x\": 01}",
                 "2:7: invalid number: leading zeros are not allowed");
}

static void every_one_of_many_mistakes_is_located(void **state) {
  (void)state;
  enum { N = 300 };
  size_t cap = 32 * N + 256, off = 0;
  char *text = malloc(cap);
  assert_non_null(text);
  off += (size_t)snprintf(
      text + off, cap - off,
      "{\"config\":{\"stages\":[{\"name\":\"a\",\"kind\":\"exec\",\"run\":\"x\"}]}");
  for (int i = 0; i < N; i++)
    off += (size_t)snprintf(text + off, cap - off, ",\n  \"x%d\": %d", i, i);
  snprintf(text + off, cap - off, "\n}");
  const char *path = write_pipeline(text);
  cli_pipeline p;
  size_t errlen = 128 * N;
  char *err = malloc(errlen);
  assert_non_null(err);
  assert_int_equal(cli_pipeline_load(path, NULL, &p, err, errlen), CLI_EXIT_USAGE);
  /* member i is on line i + 2, at column 3 */
  const char *line = err;
  for (int i = 0; i < N; i++) {
    char want[256];
    int n = snprintf(want, sizeof(want),
                     "%s:%d:3: unknown member \"x%d\" (expected plan, tenant, config, "
                     "previous_config)\n",
                     path, i + 2, i);
    if (strncmp(line, want, (size_t)n) != 0) fail_msg("complaint %d: got %.200s", i, line);
    line += n;
  }
  assert_string_equal(line, "");
  free(err);
  free(text);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(good_file_fills_every_field),
      cmocka_unit_test(good_file_fingerprint_is_the_plan_fingerprint_of_its_config),
      cmocka_unit_test(plan_tenant_and_previous_config_are_optional),
      cmocka_unit_test(previous_config_null_is_no_previous_config),
      cmocka_unit_test(unicode_escapes_and_surrogate_pairs_are_decoded_to_utf8),
      cmocka_unit_test(utf8_in_strings_passes_unchanged),
      cmocka_unit_test(numbers_of_the_rfc_grammar_are_read),
      cmocka_unit_test(a_byte_order_mark_is_skipped),
      cmocka_unit_test(nesting_512_deep_is_accepted),
      cmocka_unit_test(nesting_513_deep_is_refused_at_the_bracket_too_deep),
      cmocka_unit_test(the_callers_engine_gives_the_kinds),
      cmocka_unit_test(free_of_a_zeroed_or_freed_pipeline_is_harmless),
      cmocka_unit_test(a_missing_file_cannot_be_read),
      cmocka_unit_test(a_directory_cannot_be_read),
      cmocka_unit_test(a_file_past_64_mib_is_refused_by_its_size),
      cmocka_unit_test(a_pipe_is_read_like_a_file),
      cmocka_unit_test(a_short_error_buffer_gets_a_cut_message),
      cmocka_unit_test(an_empty_file_is_refused),
      cmocka_unit_test(a_missing_comma_between_members_is_refused_where_it_belongs),
      cmocka_unit_test(a_missing_value_is_refused),
      cmocka_unit_test(a_bad_member_name_is_refused),
      cmocka_unit_test(a_bad_array_is_refused),
      cmocka_unit_test(an_unterminated_string_is_refused_at_its_opening_quote),
      cmocka_unit_test(an_invalid_escape_is_refused_at_its_backslash),
      cmocka_unit_test(an_unpaired_surrogate_is_refused),
      cmocka_unit_test(a_control_character_in_a_string_is_refused),
      cmocka_unit_test(invalid_utf8_in_a_string_is_refused),
      cmocka_unit_test(trailing_text_after_the_top_level_value_is_refused),
      cmocka_unit_test(a_duplicate_member_is_refused_at_its_second_name),
      cmocka_unit_test(a_malformed_number_is_refused),
      cmocka_unit_test(a_top_level_that_is_not_an_object_is_refused),
      cmocka_unit_test(unknown_member_is_named_with_the_expected_ones),
      cmocka_unit_test(plan_and_tenant_must_be_strings),
      cmocka_unit_test(config_is_required),
      cmocka_unit_test(config_must_be_an_object),
      cmocka_unit_test(previous_config_must_be_an_object_or_null),
      cmocka_unit_test(every_top_level_mistake_is_reported_in_file_order),
      cmocka_unit_test(the_design_example_reads_as_documented),
      cmocka_unit_test(a_negative_timeout_is_located_at_its_value),
      cmocka_unit_test(an_unknown_kind_is_located_at_its_value),
      cmocka_unit_test(a_duplicate_stage_name_is_located_at_the_second_name),
      cmocka_unit_test(a_multiplier_below_one_is_located_at_its_value),
      cmocka_unit_test(a_max_backoff_below_the_initial_one_is_located_at_its_value),
      cmocka_unit_test(a_retry_that_is_not_an_object_is_located_at_its_value),
      cmocka_unit_test(an_unknown_on_timeout_is_located_at_its_value),
      cmocka_unit_test(an_unknown_effect_is_located_at_its_value),
      cmocka_unit_test(a_missing_params_fn_is_located_at_the_stage),
      cmocka_unit_test(a_missing_params_fn_is_located_at_the_params_object),
      cmocka_unit_test(a_bad_params_fn_given_at_the_stage_level_is_located_there),
      cmocka_unit_test(a_member_given_twice_is_located_at_the_stage_level_one),
      cmocka_unit_test(a_stage_without_a_name_is_located_at_the_stage),
      cmocka_unit_test(a_stage_without_a_kind_is_located_at_the_stage),
      cmocka_unit_test(a_stage_that_is_not_an_object_is_located_at_it),
      cmocka_unit_test(empty_stages_are_located_at_the_array),
      cmocka_unit_test(missing_stages_are_located_at_the_config),
      cmocka_unit_test(a_previous_config_refusal_says_previous_config),
      cmocka_unit_test(both_configs_are_checked_and_reported),
      cmocka_unit_test(every_refused_stage_of_a_config_is_reported),
      cmocka_unit_test(a_stage_name_with_quotes_is_quoted_in_the_report),
      cmocka_unit_test(exec_members_are_checked_at_load_where_they_are),
      cmocka_unit_test(a_duplicate_inside_an_earlier_member_is_reported_first),
      cmocka_unit_test(a_syntax_error_is_reported_before_a_duplicate),
      cmocka_unit_test(every_one_of_many_mistakes_is_located),
  };
  return cmocka_run_group_tests(tests, make_dir, remove_dir);
}
