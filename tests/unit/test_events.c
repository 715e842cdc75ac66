/* The CloudEvents 1.0 codec of stagecoach events: encoding, parsing, round trips and refusals. */
#include "harness.h"

/* 2026-11-22T10:30:00Z */
#define T_20261122_103000 1795343400LL
#define NS                1000000000LL

static const char *const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/* Events about a stage carry stage, index and attempt; the rest are task-level. */
static bool is_stage_event(sc_event_type t) {
  switch (t) {
    case SC_EV_STAGE_STARTED:
    case SC_EV_STAGE_COMPLETED:
    case SC_EV_STAGE_FAILED:
    case SC_EV_STAGE_COMPENSATED:
    case SC_EV_APPROVAL_REQUESTED:
    case SC_EV_APPROVAL_GRANTED:
    case SC_EV_APPROVAL_REJECTED:
    case SC_EV_APPROVAL_TIMED_OUT: return true;
    default: return false;
  }
}

/* A data object with nested values, unicode and characters that need escaping. */
static cJSON *rich_data(void) {
  cJSON *data = json_or_die(
      "{\"output\":{\"nested\":{\"list\":[1,2.5,-3,true,false,null,\"x\",[],{}]},"
      "\"empty\":{},\"arr\":[[1],[2,[3]]]},"
      "\"unicode\":\"h\xc3\xa9llo w\xc3\xb6rld \xe2\x80\x94 \xe6\x97\xa5\xe6\x9c\xac "
      "\xf0\x9f\x98\x80\","
      "\"big\":9007199254740991,\"neg\":-17,\"frac\":0.125,\"flag\":true,\"none\":null,"
      "\"digest\":\"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a\"}");
  cJSON_AddStringToObject(data, "text",
                          "line1\nline2\t\"quoted\" back\\slash \x01 ctrl \x1f / \r\b\f end");
  cJSON_AddStringToObject(data, "key \"with\" quotes\n", "value");
  return data;
}

/* Fills ev for type t; data is borrowed. */
static void make_event(sc_event *ev, sc_event_type t, const cJSON *data) {
  memset(ev, 0, sizeof(*ev));
  ev->type = t;
  ev->seq = 1 + (uint64_t)t * 1000003u;
  ev->epoch = (uint64_t)t;
  ev->time_ns = (T_20261122_103000 + (int64_t)t * 3671) * NS + 123456000LL + (int64_t)t * 1000;
  ev->task_id = "0190f1d2-7c3b-7def-8abc-0123456789ab";
  ev->tenant_id = "acme \xc3\xa9";
  ev->plan_id = "tenant-deploy";
  ev->traceparent = traceparent;
  if (is_stage_event(t)) {
    ev->stage = "deploy \"prod\"";
    ev->stage_index = 3 + (int32_t)t;
    ev->attempt = 1 + (uint32_t)t % 3;
  } else {
    ev->stage = NULL;
    ev->stage_index = -1;
    ev->attempt = 0;
  }
  ev->status = (sc_task_status)((int)t % SC_TASK__COUNT);
  ev->data = data;
  ev->source = t % 2 ? "https://example.com/engine?x=\"1\"" : NULL;
}

static void assert_optional_string_equal(const char *got, const char *want) {
  if (want == NULL)
    assert_null(got);
  else {
    assert_non_null(got);
    assert_string_equal(got, want);
  }
}

static void assert_events_equal(const sc_event *got, const sc_event *want) {
  assert_int_equal(got->type, want->type);
  assert_true(got->seq == want->seq);
  assert_true(got->epoch == want->epoch);
  assert_true(got->time_ns == want->time_ns);
  assert_optional_string_equal(got->task_id, want->task_id);
  assert_optional_string_equal(got->tenant_id, want->tenant_id);
  assert_optional_string_equal(got->plan_id, want->plan_id);
  assert_optional_string_equal(got->traceparent, want->traceparent);
  assert_optional_string_equal(got->stage, want->stage);
  assert_int_equal(got->stage_index, want->stage_index);
  assert_int_equal(got->attempt, want->attempt);
  assert_int_equal(got->status, want->status);
  assert_string_equal(got->source, want->source ? want->source : "stagecoach");
}

static sc_event_doc *parse_or_die(const char *json) {
  sc_event_doc *doc = NULL;
  int rc = sc_event_parse(json, strlen(json), &doc);
  if (rc != SC_OK)
    fail_msg("parse failed: %s (%s)\n  %s", sc_err_name(rc), sc_error_message(), json);
  assert_non_null(doc);
  return doc;
}

/* A valid stage.completed event, as JSON text, for the refusal tests to break. */
static const char *const valid_event =
    "{\"specversion\":\"1.0\",\"id\":\"t1/3\",\"source\":\"stagecoach\","
    "\"type\":\"stagecoach.stage.completed\",\"time\":\"2026-11-22T10:30:00.123456Z\","
    "\"subject\":\"t1\",\"datacontenttype\":\"application/json\",\"taskid\":\"t1\","
    "\"tenantid\":\"acme\",\"planid\":\"p\",\"seq\":3,\"epoch\":0,"
    "\"data\":{\"stage\":\"deploy\",\"index\":1,\"attempt\":1,\"status\":\"RUNNING\"}}";

/* Text built by mutate() and with_time(); static, so that a failing assertion leaks nothing. */
static char scratch[4096];

static const char *print_to_scratch(cJSON *root) {
  char *text = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  assert_non_null(text);
  snprintf(scratch, sizeof(scratch), "%s", text);
  cJSON_free(text);
  return scratch;
}

/* valid_event with the member at path ("seq", "data.status") replaced by replacement (JSON
 * text), or removed when replacement is NULL. Static storage, valid until the next call. */
static const char *mutate(const char *path, const char *replacement) {
  cJSON *root = json_or_die(valid_event);
  cJSON *parent = root;
  const char *dot = strchr(path, '.');
  char head[64];
  const char *leaf = path;
  if (dot != NULL) {
    snprintf(head, sizeof(head), "%.*s", (int)(dot - path), path);
    parent = cJSON_GetObjectItemCaseSensitive(root, head);
    assert_non_null(parent);
    leaf = dot + 1;
  }
  cJSON_DeleteItemFromObjectCaseSensitive(parent, leaf);
  if (replacement != NULL) cJSON_AddItemToObject(parent, leaf, json_or_die(replacement));
  return print_to_scratch(root);
}

/* valid_event with the given "time" string. Static storage, valid until the next call. */
static const char *with_time(const char *time) {
  cJSON *root = json_or_die(valid_event);
  cJSON_DeleteItemFromObjectCaseSensitive(root, "time");
  cJSON_AddStringToObject(root, "time", time);
  return print_to_scratch(root);
}

/* Parsing json fails with SC_EPARSE, *out NULL, and a message that contains needle. */
static void assert_parse_refused_n(const char *json, size_t len, const char *needle) {
  sc_event_doc *doc = (sc_event_doc *)&doc; /* not NULL: the call must clear it */
  int rc = sc_event_parse(json, len, &doc);
  if (rc == SC_OK) sc_event_doc_free(doc);
  if (rc != SC_EPARSE)
    fail_msg("expected SC_EPARSE, got %s (%s) for\n  %.*s", sc_err_name(rc), sc_error_message(),
             (int)len, json);
  assert_null(doc);
  if (needle != NULL && strstr(sc_error_message(), needle) == NULL)
    fail_msg("message \"%s\" does not name \"%s\"", sc_error_message(), needle);
}

static void assert_parse_refused(const char *json, const char *needle) {
  assert_parse_refused_n(json, strlen(json), needle);
}

static void assert_mutation_refused(const char *path, const char *replacement, const char *needle) {
  assert_parse_refused(mutate(path, replacement), needle);
}

static int64_t parse_time_of(const char *time) {
  sc_event_doc *doc = parse_or_die(with_time(time));
  int64_t ns = sc_event_doc_event(doc)->time_ns;
  sc_event_doc_free(doc);
  return ns;
}

static void assert_time_refused(const char *time) {
  assert_parse_refused(with_time(time), "time");
}

/* ---- round trips ---- */

static void every_event_type_round_trips_field_for_field(void **state) {
  (void)state;
  cJSON *data = rich_data();
  for (int t = 0; t < SC_EV__COUNT; t++) {
    sc_event ev;
    make_event(&ev, (sc_event_type)t, data);
    size_t len = 0;
    char *json = sc_event_to_json(&ev, &len);
    assert_non_null(json);
    assert_int_equal(len, strlen(json));
    sc_event_doc *doc = NULL;
    int rc = sc_event_parse(json, len, &doc);
    if (rc != SC_OK)
      fail_msg("%s: %s\n  %s", sc_event_type_name(ev.type), sc_error_message(), json);
    const sc_event *back = sc_event_doc_event(doc);
    assert_events_equal(back, &ev);
    /* Every member of the data object comes back. */
    assert_non_null(back->data);
    for (const cJSON *m = data->child; m != NULL; m = m->next) {
      const cJSON *got = cJSON_GetObjectItemCaseSensitive(back->data, m->string);
      if (got == NULL || !cJSON_Compare(got, m, true))
        fail_msg("%s: data member \"%s\" differs", sc_event_type_name(ev.type), m->string);
    }
    /* Re-encoding the parsed event gives the same bytes. */
    size_t len2 = 0;
    char *again = sc_event_to_json(back, &len2);
    assert_non_null(again);
    assert_int_equal(len2, len);
    assert_string_equal(again, json);
    free(again);
    sc_event_doc_free(doc);
    free(json);
  }
  cJSON_Delete(data);
}

static void every_event_type_is_a_cloudevent(void **state) {
  (void)state;
  cJSON *data = rich_data();
  for (int t = 0; t < SC_EV__COUNT; t++) {
    sc_event ev;
    make_event(&ev, (sc_event_type)t, data);
    char *json = sc_event_to_json(&ev, NULL);
    assert_non_null(json);
    assert_null(strchr(json, '\n'));
    cJSON *root = json_or_die(json);
    free(json);
    char want[128];
    assert_string_equal(str_of(root, "specversion"), "1.0");
    snprintf(want, sizeof(want), "%s/%llu", ev.task_id, (unsigned long long)ev.seq);
    assert_string_equal(str_of(root, "id"), want);
    assert_string_equal(str_of(root, "source"), ev.source ? ev.source : "stagecoach");
    assert_string_equal(str_of(root, "type"), sc_event_type_name(ev.type));
    assert_memory_equal(str_of(root, "type"), "stagecoach.", 11);
    assert_string_equal(str_of(root, "subject"), ev.task_id);
    assert_string_equal(str_of(root, "datacontenttype"), "application/json");
    assert_string_equal(str_of(root, "taskid"), ev.task_id);
    assert_string_equal(str_of(root, "tenantid"), ev.tenant_id);
    assert_string_equal(str_of(root, "planid"), ev.plan_id);
    assert_string_equal(str_of(root, "traceparent"), traceparent);
    assert_true(num_of(root, "seq") == (double)ev.seq);
    assert_true(num_of(root, "epoch") == (double)ev.epoch);
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(root, "data");
    assert_true(cJSON_IsObject(d));
    assert_string_equal(str_of(d, "status"), sc_task_status_name(ev.status));
    if (ev.stage != NULL) {
      assert_string_equal(str_of(d, "stage"), ev.stage);
      assert_true(num_of(d, "index") == ev.stage_index);
      assert_true(num_of(d, "attempt") == ev.attempt);
    } else {
      assert_null(cJSON_GetObjectItemCaseSensitive(d, "stage"));
      assert_null(cJSON_GetObjectItemCaseSensitive(d, "index"));
      assert_null(cJSON_GetObjectItemCaseSensitive(d, "attempt"));
    }
    assert_string_equal(str_of(d, "text"), str_of(data, "text"));
    cJSON_Delete(root);
  }
  cJSON_Delete(data);
}

static void encoder_writes_the_time_in_rfc3339_with_microseconds(void **state) {
  (void)state;
  sc_event ev;
  make_event(&ev, SC_EV_TASK_STARTED, NULL);
  ev.time_ns = T_20261122_103000 * NS + 123456000LL;
  char *json = sc_event_to_json(&ev, NULL);
  cJSON *root = json_or_die(json);
  assert_string_equal(str_of(root, "time"), "2026-11-22T10:30:00.123456Z");
  cJSON_Delete(root);
  free(json);
  ev.time_ns = 0;
  json = sc_event_to_json(&ev, NULL);
  root = json_or_die(json);
  assert_string_equal(str_of(root, "time"), "1970-01-01T00:00:00.000000Z");
  cJSON_Delete(root);
  free(json);
}

static void encoder_writes_the_common_members_from_the_fields_not_from_data(void **state) {
  (void)state;
  cJSON *data = json_or_die("{\"stage\":\"other\",\"index\":99,\"attempt\":42,"
                            "\"status\":\"FAILED\",\"output\":1}");
  sc_event ev;
  make_event(&ev, SC_EV_STAGE_COMPLETED, data);
  ev.status = SC_TASK_RUNNING;
  char *json = sc_event_to_json(&ev, NULL);
  cJSON *root = json_or_die(json);
  const cJSON *d = cJSON_GetObjectItemCaseSensitive(root, "data");
  assert_string_equal(str_of(d, "stage"), ev.stage);
  assert_true(num_of(d, "index") == ev.stage_index);
  assert_true(num_of(d, "attempt") == ev.attempt);
  assert_string_equal(str_of(d, "status"), "RUNNING");
  assert_true(num_of(d, "output") == 1);
  /* Each member once. */
  int count = 0;
  for (const cJSON *m = d->child; m != NULL; m = m->next)
    count++;
  assert_int_equal(count, 5);
  cJSON_Delete(root);
  free(json);
  cJSON_Delete(data);
}

static void absent_tenant_plan_and_traceparent_are_omitted_and_read_back_as_null(void **state) {
  (void)state;
  sc_event ev;
  make_event(&ev, SC_EV_TASK_CREATED, NULL);
  ev.tenant_id = NULL;
  ev.plan_id = NULL;
  ev.traceparent = NULL;
  char *json = sc_event_to_json(&ev, NULL);
  assert_non_null(json);
  cJSON *root = json_or_die(json);
  assert_null(cJSON_GetObjectItemCaseSensitive(root, "tenantid"));
  assert_null(cJSON_GetObjectItemCaseSensitive(root, "planid"));
  assert_null(cJSON_GetObjectItemCaseSensitive(root, "traceparent"));
  cJSON_Delete(root);
  sc_event_doc *doc = parse_or_die(json);
  const sc_event *back = sc_event_doc_event(doc);
  assert_null(back->tenant_id);
  assert_null(back->plan_id);
  assert_null(back->traceparent);
  assert_events_equal(back, &ev);
  char *again = sc_event_to_json(back, NULL);
  assert_string_equal(again, json);
  free(again);
  sc_event_doc_free(doc);
  free(json);
}

static void null_data_encodes_only_the_common_members(void **state) {
  (void)state;
  sc_event ev;
  make_event(&ev, SC_EV_TASK_RESUMED, NULL);
  ev.status = SC_TASK_RUNNING;
  char *json = sc_event_to_json(&ev, NULL);
  assert_non_null(json);
  assert_non_null(strstr(json, "\"data\":{\"status\":\"RUNNING\"}"));
  sc_event_doc *doc = parse_or_die(json);
  assert_events_equal(sc_event_doc_event(doc), &ev);
  sc_event_doc_free(doc);
  free(json);
}

static void extreme_numbers_round_trip(void **state) {
  (void)state;
  sc_event ev;
  make_event(&ev, SC_EV_STAGE_FAILED, NULL);
  ev.seq = 9007199254740991ULL;
  ev.epoch = 4294967296ULL;
  ev.stage_index = INT32_MAX;
  ev.attempt = UINT32_MAX;
  ev.time_ns = 7258118399LL * NS + 999999000LL; /* 2199-12-31T23:59:59.999999Z */
  char *json = sc_event_to_json(&ev, NULL);
  assert_non_null(json);
  assert_non_null(strstr(json, "\"2199-12-31T23:59:59.999999Z\""));
  sc_event_doc *doc = parse_or_die(json);
  assert_events_equal(sc_event_doc_event(doc), &ev);
  sc_event_doc_free(doc);
  free(json);
}

static void task_id_with_characters_to_escape_round_trips(void **state) {
  (void)state;
  sc_event ev;
  make_event(&ev, SC_EV_TASK_CREATED, NULL);
  ev.task_id = "t\"1\\x\n";
  ev.seq = 12;
  char *json = sc_event_to_json(&ev, NULL);
  assert_non_null(json);
  cJSON *root = json_or_die(json);
  assert_string_equal(str_of(root, "id"), "t\"1\\x\n/12");
  assert_string_equal(str_of(root, "subject"), "t\"1\\x\n");
  cJSON_Delete(root);
  sc_event_doc *doc = parse_or_die(json);
  assert_events_equal(sc_event_doc_event(doc), &ev);
  sc_event_doc_free(doc);
  free(json);
}

/* True when text[0 .. n) is well-formed UTF-8 (checked here byte by byte, independently). */
static bool is_utf8(const unsigned char *t, size_t n) {
  for (size_t i = 0; i < n;) {
    unsigned c = t[i], len = c < 0x80         ? 1
                             : (c >> 5) == 6  ? 2
                             : (c >> 4) == 14 ? 3
                             : (c >> 3) == 30 ? 4
                                              : 0;
    if (len == 0 || i + len > n || (len == 2 && c < 0xC2)) return false;
    unsigned cp = len == 1 ? c : c & (0x7F >> len);
    for (unsigned k = 1; k < len; k++) {
      if ((t[i + k] & 0xC0) != 0x80) return false;
      cp = cp << 6 | (t[i + k] & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += len;
  }
  return true;
}

static void bytes_that_are_not_utf8_are_written_as_replacement_characters(void **state) {
  (void)state;
  sc_event ev;
  cJSON *data = cJSON_CreateObject();
  /* a stray byte, a cut sequence, an overlong '/', an encoded surrogate; then good "é€😀" */
  cJSON_AddStringToObject(
      data, "message", "a\xff b\xc3 c\xc0\xaf d\xed\xa0\x80 \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
  cJSON_AddStringToObject(data, "k\xfe", "key too");
  make_event(&ev, SC_EV_STAGE_FAILED, data);
  ev.stage = "st\x80ge";
  char *json = sc_event_to_json(&ev, NULL);
  assert_non_null(json);
  assert_true(is_utf8((const unsigned char *)json, strlen(json)));
  cJSON *root = json_or_die(json);
  const cJSON *d = cJSON_GetObjectItemCaseSensitive(root, "data");
  assert_string_equal(str_of(d, "message"),
                      "a\xef\xbf\xbd b\xef\xbf\xbd c\xef\xbf\xbd\xef\xbf\xbd "
                      "d\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
  assert_string_equal(str_of(d, "k\xef\xbf\xbd"), "key too");
  assert_string_equal(str_of(d, "stage"), "st\xef\xbf\xbdge");
  cJSON_Delete(root);
  free(json);
  cJSON_Delete(data);
}

/* Canonical JSON sorts keys as they are written: a key with a stray byte sorts where its U+FFFD
 * form does, so the canonical text (and a digest) is the same before and after a round trip. */
static void canonical_keys_sort_as_written(void **state) {
  (void)state;
  cJSON *raw = cJSON_CreateObject();
  cJSON_AddNumberToObject(raw, "\xf0\x90\x80\x80", 3);
  cJSON_AddNumberToObject(raw, "\xff", 1);
  cJSON_AddNumberToObject(raw,
                          "\xef\xbf\xbd"
                          "0",
                          2);
  char *a = sc_json_canonical(raw, NULL);
  cJSON *back = json_or_die(a);
  char *b = sc_json_canonical(back, NULL);
  assert_string_equal(a, b);
  assert_string_equal(a, "{\"\xef\xbf\xbd\":1,\"\xef\xbf\xbd"
                         "0\":2,\"\xf0\x90\x80\x80\":3}");
  free(a);
  free(b);
  cJSON_Delete(back);
  cJSON_Delete(raw);
}

static void parsed_document_keeps_extension_attributes(void **state) {
  (void)state;
  sc_event_doc *doc = parse_or_die(mutate("myext", "\"value\""));
  const cJSON *root = sc_event_doc_json(doc);
  assert_non_null(root);
  assert_string_equal(str_of(root, "myext"), "value");
  assert_string_equal(str_of(root, "specversion"), "1.0");
  const sc_event *ev = sc_event_doc_event(doc);
  assert_int_equal(ev->type, SC_EV_STAGE_COMPLETED);
  assert_string_equal(ev->task_id, "t1");
  assert_string_equal(ev->stage, "deploy");
  assert_int_equal(ev->stage_index, 1);
  assert_int_equal(ev->attempt, 1);
  assert_int_equal(ev->status, SC_TASK_RUNNING);
  assert_true(ev->seq == 3);
  sc_event_doc_free(doc);
}

static void parse_reads_only_len_bytes(void **state) {
  (void)state;
  size_t n = strlen(valid_event);
  char *buf = malloc(n + 32);
  memcpy(buf, valid_event, n);
  memcpy(buf + n, "garbage that is not JSON", 25);
  sc_event_doc *doc = NULL;
  assert_int_equal(sc_event_parse(buf, n, &doc), SC_OK);
  assert_non_null(doc);
  assert_string_equal(sc_event_doc_event(doc)->task_id, "t1");
  sc_event_doc_free(doc);
  /* Without a terminating NUL at all. */
  char *exact = malloc(n);
  memcpy(exact, valid_event, n);
  assert_int_equal(sc_event_parse(exact, n, &doc), SC_OK);
  sc_event_doc_free(doc);
  free(exact);
  free(buf);
}

/* ---- sc_event_encode ---- */

static void encode_into_a_small_buffer_returns_the_full_length_and_writes_a_prefix(void **state) {
  (void)state;
  cJSON *data = rich_data();
  sc_event ev;
  make_event(&ev, SC_EV_STAGE_COMPLETED, data);
  size_t len = 0;
  char *json = sc_event_to_json(&ev, &len);
  assert_non_null(json);
  char buf[64];
  memset(buf, '#', sizeof(buf));
  long n = sc_event_encode(&ev, buf, 16);
  assert_int_equal(n, (long)len);
  assert_memory_equal(buf, json, 16);
  for (size_t i = 16; i < sizeof(buf); i++)
    assert_int_equal(buf[i], '#');
  assert_int_equal(sc_event_encode(&ev, NULL, 0), (long)len);
  /* One byte short: still the full length, and every byte but the last. */
  char *short_buf = malloc(len);
  short_buf[len - 1] = '#';
  assert_int_equal(sc_event_encode(&ev, short_buf, len - 1), (long)len);
  assert_memory_equal(short_buf, json, len - 1);
  assert_int_equal(short_buf[len - 1], '#');
  free(short_buf);
  free(json);
  cJSON_Delete(data);
}

static void encode_into_a_big_buffer_gives_the_bytes_of_to_json(void **state) {
  (void)state;
  cJSON *data = rich_data();
  for (int t = 0; t < SC_EV__COUNT; t++) {
    sc_event ev;
    make_event(&ev, (sc_event_type)t, data);
    size_t len = 0;
    char *json = sc_event_to_json(&ev, &len);
    assert_non_null(json);
    char buf[4096];
    assert_true(len < sizeof(buf));
    long n = sc_event_encode(&ev, buf, sizeof(buf));
    assert_int_equal(n, (long)len);
    assert_memory_equal(buf, json, len);
    /* Exactly the length needed is enough. */
    char *exact = malloc(len);
    assert_int_equal(sc_event_encode(&ev, exact, len), (long)len);
    assert_memory_equal(exact, json, len);
    free(exact);
    free(json);
  }
  cJSON_Delete(data);
}

static void encoder_refuses_an_invalid_event(void **state) {
  (void)state;
  sc_event ev;
  make_event(&ev, SC_EV_TASK_CREATED, NULL);
  ev.task_id = NULL;
  size_t len = 99;
  assert_null(sc_event_to_json(&ev, &len));
  assert_int_equal(len, 0);
  char buf[64];
  assert_int_equal(sc_event_encode(&ev, buf, sizeof(buf)), SC_EINVAL);
  make_event(&ev, SC_EV__COUNT, NULL);
  assert_null(sc_event_to_json(&ev, NULL));
  assert_true(sc_event_encode(&ev, buf, sizeof(buf)) < 0);
  make_event(&ev, SC_EV_TASK_CREATED, NULL);
  ev.status = SC_TASK__COUNT;
  assert_null(sc_event_to_json(&ev, NULL));
  assert_true(sc_event_encode(&ev, buf, sizeof(buf)) < 0);
  assert_null(sc_event_to_json(NULL, NULL));
}

/* ---- time ---- */

static void time_with_microseconds_parses_to_nanoseconds(void **state) {
  (void)state;
  assert_true(parse_time_of("2026-11-22T10:30:00.123456Z") == T_20261122_103000 * NS + 123456000LL);
  assert_true(parse_time_of("2026-11-22T10:30:00Z") == T_20261122_103000 * NS);
  assert_true(parse_time_of("2026-11-22T10:30:00.1Z") == T_20261122_103000 * NS + 100000000LL);
  assert_true(parse_time_of("2026-11-22T10:30:00.123456789Z") ==
              T_20261122_103000 * NS + 123456789LL);
  assert_true(parse_time_of("1970-01-01T00:00:00.000000Z") == 0);
  assert_true(parse_time_of("2024-02-29T00:00:00Z") == 1709164800LL * NS);
}

static void time_offset_is_honoured(void **state) {
  (void)state;
  const int64_t want = T_20261122_103000 * NS + 123456000LL;
  assert_true(parse_time_of("2026-11-22T12:30:00.123456+02:00") == want);
  assert_true(parse_time_of("2026-11-22T05:00:00.123456-05:30") == want);
  assert_true(parse_time_of("2026-11-22T10:30:00.123456+00:00") == want);
  assert_true(parse_time_of("2026-11-23T00:30:00.123456+14:00") == want);
}

static void bad_timestamps_are_refused(void **state) {
  (void)state;
  const char *bad[] = {"",
                       "yesterday",
                       "2026-11-22",
                       "2026-11-22T10:30:00",
                       "2026-11-22T10:30:00.123456",
                       "2026-11-22T10:30Z",
                       "2026-11-22T10:30:00.Z",
                       "2026-13-01T00:00:00Z",
                       "2026-00-01T00:00:00Z",
                       "2026-11-32T00:00:00Z",
                       "2026-11-00T00:00:00Z",
                       "2026-11-22T25:00:00Z",
                       "2026-11-22T10:60:00Z",
                       "2026-11-22T10:30:00+0200",
                       "2026-11-22T10:30:00+02",
                       "2026-11-22T10:30:00Zjunk",
                       "2026-11-22T10:30:00.123456Z ",
                       "26-11-22T10:30:00Z",
                       "2026/11/22T10:30:00Z"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    assert_time_refused(bad[i]);
}

static void mistyped_optional_attributes_are_refused(void **state) {
  (void)state;
  /* A present attribute of the wrong type is "a mistyped attribute" (<stagecoach/events.h>), not
   * an absent one. */
  assert_mutation_refused("time", "1795343400", "time");
  assert_mutation_refused("tenantid", "5", "tenantid");
  assert_mutation_refused("planid", "[\"p\"]", "planid");
  assert_mutation_refused("traceparent", "{}", "traceparent");
  assert_mutation_refused("epoch", "-1", "epoch");
  assert_mutation_refused("epoch", "\"0\"", "epoch");
  assert_mutation_refused("data.stage", "5", "data.stage");
}

static void impossible_calendar_dates_are_refused(void **state) {
  (void)state;
  /* RFC 3339 5.7: the day must exist in its month and year. */
  assert_time_refused("2026-02-30T00:00:00Z");
  assert_time_refused("2026-04-31T00:00:00Z");
  assert_time_refused("2025-02-29T00:00:00Z");
}

static void times_beyond_the_range_of_time_ns_are_refused(void **state) {
  (void)state;
  /* time_ns is an int64 of nanoseconds: 1677-09-21T00:12:43Z .. 2262-04-11T23:47:16Z */
  assert_time_refused("9999-12-31T23:59:59Z");
  assert_time_refused("2262-04-12T00:00:00Z");
  assert_time_refused("0001-01-01T00:00:00Z");
  assert_time_refused("1677-09-20T00:00:00Z");
  assert_true(parse_time_of("2262-04-11T00:00:00.999999Z") > 0);
  assert_true(parse_time_of("1677-09-22T00:00:00Z") < 0);
}

/* ---- parse refusals ---- */

static void malformed_json_is_refused_with_a_byte_offset(void **state) {
  (void)state;
  const char *bad[] = {"{\"specversion\":\"1.0\",", "{\"a\":1,,}", "", "{", "nope", "{\"a\" 1}"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    assert_parse_refused(bad[i], "byte");
    const char *at = strstr(sc_error_message(), "byte ");
    assert_non_null(at);
    char *end = NULL;
    unsigned long offset = strtoul(at + 5, &end, 10);
    assert_true(end != at + 5);
    assert_true(offset <= strlen(bad[i]));
  }
}

static void trailing_garbage_is_refused(void **state) {
  (void)state;
  char buf[2048];
  snprintf(buf, sizeof(buf), "%sx", valid_event);
  assert_parse_refused(buf, "byte");
  snprintf(buf, sizeof(buf), "%s %s", valid_event, valid_event);
  assert_parse_refused(buf, NULL);
  snprintf(buf, sizeof(buf), "%s}", valid_event);
  assert_parse_refused(buf, NULL);
}

static void a_value_that_is_not_an_object_is_refused(void **state) {
  (void)state;
  assert_parse_refused("[1,2]", NULL);
  assert_parse_refused("\"event\"", NULL);
  assert_parse_refused("42", NULL);
  assert_parse_refused("null", NULL);
  assert_parse_refused("true", NULL);
}

static void missing_or_unsupported_specversion_is_refused(void **state) {
  (void)state;
  assert_mutation_refused("specversion", NULL, "specversion");
  assert_mutation_refused("specversion", "\"0.3\"", "specversion");
  assert_mutation_refused("specversion", "\"1.0.0\"", "specversion");
  assert_mutation_refused("specversion", "1.0", "specversion");
}

static void missing_id_is_refused(void **state) {
  (void)state;
  assert_mutation_refused("id", NULL, "id");
  assert_mutation_refused("id", "7", "id");
}

static void missing_source_is_refused(void **state) {
  (void)state;
  assert_mutation_refused("source", NULL, "source");
  assert_mutation_refused("source", "null", "source");
}

static void unknown_or_missing_type_is_refused(void **state) {
  (void)state;
  assert_mutation_refused("type", "\"stagecoach.task.exploded\"", "type");
  assert_mutation_refused("type", "\"com.example.other\"", "type");
  assert_mutation_refused("type", NULL, "type");
  assert_mutation_refused("type", "3", "type");
}

static void missing_taskid_is_refused(void **state) {
  (void)state;
  assert_mutation_refused("taskid", NULL, "taskid");
  assert_mutation_refused("taskid", "1", "taskid");
}

static void seq_must_be_a_positive_integer(void **state) {
  (void)state;
  assert_mutation_refused("seq", "0", "seq");
  assert_mutation_refused("seq", "-1", "seq");
  assert_mutation_refused("seq", "1.5", "seq");
  assert_mutation_refused("seq", "\"3\"", "seq");
  assert_mutation_refused("seq", NULL, "seq");
  assert_mutation_refused("seq", "null", "seq");
}

static void data_must_be_an_object(void **state) {
  (void)state;
  assert_mutation_refused("data", NULL, "data");
  assert_mutation_refused("data", "\"RUNNING\"", "data");
  assert_mutation_refused("data", "[]", "data");
  assert_mutation_refused("data", "null", "data");
}

static void data_status_must_be_a_known_status(void **state) {
  (void)state;
  assert_mutation_refused("data.status", "\"BOGUS\"", "data.status");
  assert_mutation_refused("data.status", "\"running\"", "data.status");
  assert_mutation_refused("data.status", "2", "data.status");
  assert_mutation_refused("data.status", NULL, "data.status");
}

static void data_index_must_be_an_integer(void **state) {
  (void)state;
  assert_mutation_refused("data.index", "1.5", "data.index");
  assert_mutation_refused("data.index", "\"1\"", "data.index");
  assert_mutation_refused("data.index", "true", "data.index");
}

static void data_attempt_must_not_be_negative(void **state) {
  (void)state;
  assert_mutation_refused("data.attempt", "-1", "data.attempt");
  assert_mutation_refused("data.attempt", "0.5", "data.attempt");
  assert_mutation_refused("data.attempt", "\"1\"", "data.attempt");
}

static void doc_free_of_null_is_a_no_op(void **state) {
  (void)state;
  sc_event_doc_free(NULL);
}

/* ---- barriers ---- */

static void progress_events_are_barriers(void **state) {
  (void)state;
  const sc_event_type barriers[] = {
      SC_EV_TASK_CREATED,      SC_EV_TASK_RECOVERED,     SC_EV_STAGE_COMPLETED,
      SC_EV_TASK_COMPLETED,    SC_EV_TASK_FAILED,        SC_EV_TASK_CANCELLED,
      SC_EV_APPROVAL_GRANTED,  SC_EV_APPROVAL_REJECTED,  SC_EV_APPROVAL_TIMED_OUT,
      SC_EV_ROLLBACK_STARTED,  SC_EV_ROLLBACK_COMPLETED, SC_EV_ROLLBACK_FAILED,
      SC_EV_STAGE_COMPENSATED,
  };
  /* stage.started is a barrier only for a compensable or irreversible stage (the engine's
   * choice, tested in test_executor). */
  const sc_event_type others[] = {
      SC_EV_STAGE_STARTED, SC_EV_TASK_STARTED,       SC_EV_TASK_PAUSED,
      SC_EV_TASK_RESUMED,  SC_EV_APPROVAL_REQUESTED, SC_EV_STAGE_FAILED,
  };
  const size_t nb = sizeof(barriers) / sizeof(barriers[0]);
  const size_t no = sizeof(others) / sizeof(others[0]);
  assert_int_equal(nb + no, SC_EV__COUNT);
  for (size_t i = 0; i < nb; i++)
    if (!sc_event_type_is_barrier(barriers[i]))
      fail_msg("%s should be a barrier", sc_event_type_name(barriers[i]));
  for (size_t i = 0; i < no; i++)
    if (sc_event_type_is_barrier(others[i]))
      fail_msg("%s should not be a barrier", sc_event_type_name(others[i]));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(every_event_type_round_trips_field_for_field),
      cmocka_unit_test(every_event_type_is_a_cloudevent),
      cmocka_unit_test(encoder_writes_the_time_in_rfc3339_with_microseconds),
      cmocka_unit_test(encoder_writes_the_common_members_from_the_fields_not_from_data),
      cmocka_unit_test(absent_tenant_plan_and_traceparent_are_omitted_and_read_back_as_null),
      cmocka_unit_test(null_data_encodes_only_the_common_members),
      cmocka_unit_test(extreme_numbers_round_trip),
      cmocka_unit_test(task_id_with_characters_to_escape_round_trips),
      cmocka_unit_test(bytes_that_are_not_utf8_are_written_as_replacement_characters),
      cmocka_unit_test(canonical_keys_sort_as_written),
      cmocka_unit_test(parsed_document_keeps_extension_attributes),
      cmocka_unit_test(parse_reads_only_len_bytes),
      cmocka_unit_test(encode_into_a_small_buffer_returns_the_full_length_and_writes_a_prefix),
      cmocka_unit_test(encode_into_a_big_buffer_gives_the_bytes_of_to_json),
      cmocka_unit_test(encoder_refuses_an_invalid_event),
      cmocka_unit_test(time_with_microseconds_parses_to_nanoseconds),
      cmocka_unit_test(time_offset_is_honoured),
      cmocka_unit_test(bad_timestamps_are_refused),
      cmocka_unit_test(impossible_calendar_dates_are_refused),
      cmocka_unit_test(times_beyond_the_range_of_time_ns_are_refused),
      cmocka_unit_test(mistyped_optional_attributes_are_refused),
      cmocka_unit_test(malformed_json_is_refused_with_a_byte_offset),
      cmocka_unit_test(trailing_garbage_is_refused),
      cmocka_unit_test(a_value_that_is_not_an_object_is_refused),
      cmocka_unit_test(missing_or_unsupported_specversion_is_refused),
      cmocka_unit_test(missing_id_is_refused),
      cmocka_unit_test(missing_source_is_refused),
      cmocka_unit_test(unknown_or_missing_type_is_refused),
      cmocka_unit_test(missing_taskid_is_refused),
      cmocka_unit_test(seq_must_be_a_positive_integer),
      cmocka_unit_test(data_must_be_an_object),
      cmocka_unit_test(data_status_must_be_a_known_status),
      cmocka_unit_test(data_index_must_be_an_integer),
      cmocka_unit_test(data_attempt_must_not_be_negative),
      cmocka_unit_test(doc_free_of_null_is_a_no_op),
      cmocka_unit_test(progress_events_are_barriers),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
