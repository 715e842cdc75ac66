/* The internal utility layer of events/ (events/internal.h, map.h, queue.h): the hash map, the
 * growable buffer, the list, UTF-8, reading a file, formatting and the names of effects and
 * actions. The one unit test that includes internal headers: these have no public face. */
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"

#include "../../events/internal.h"

/* ---- the map ---- */

static void map_puts_gets_and_replaces(void **state) {
  (void)state;
  sc__map m;
  sc__map_init(&m);
  int a = 1, b = 2;
  assert_null(sc__map_get(&m, "absent")); /* a map without slots */
  assert_int_equal(sc__map_put(&m, "alpha", &a), 0);
  assert_ptr_equal(sc__map_get(&m, "alpha"), &a);
  assert_int_equal(sc__map_put(&m, "alpha", &b), 0);
  assert_ptr_equal(sc__map_get(&m, "alpha"), &b);
  assert_int_equal(m.n, 1);
  assert_null(sc__map_get(&m, "alph"));
  sc__map_free(&m);
  assert_int_equal(m.n, 0);
  assert_null(sc__map_get(&m, "alpha"));
}

static void map_keeps_every_key_through_growth_and_deletes(void **state) {
  (void)state;
  enum { N = 5000 };
  static char keys[N][16];
  static int values[N];
  sc__map m;
  sc__map_init(&m);
  for (int i = 0; i < N; i++) {
    snprintf(keys[i], sizeof(keys[i]), "task-%d", i);
    values[i] = i;
    assert_int_equal(sc__map_put(&m, keys[i], &values[i]), 0);
  }
  assert_int_equal(m.n, N);
  assert_true(m.n * 4 <= m.cap * 3); /* at most three quarters full */
  /* Deleting every third key shifts the probe runs back; the others must stay found. */
  for (int i = 0; i < N; i += 3)
    assert_ptr_equal(sc__map_del(&m, keys[i]), &values[i]);
  assert_null(sc__map_del(&m, keys[0])); /* a second delete finds nothing */
  for (int i = 0; i < N; i++) {
    if (i % 3 == 0)
      assert_null(sc__map_get(&m, keys[i]));
    else
      assert_ptr_equal(sc__map_get(&m, keys[i]), &values[i]);
  }
  size_t seen = 0;
  SC__MAP_FOREACH(&m, s) {
    assert_int_equal(*(int *)s->value % 3 != 0, 1);
    seen++;
  }
  assert_int_equal(seen, m.n);
  assert_int_equal(m.n, N - (N + 2) / 3);
  sc__map_free(&m);
}

static void map_keys_are_bytes_and_may_hold_a_nul(void **state) {
  (void)state;
  sc__map m;
  sc__map_init(&m);
  static const char k1[] = {'i', 'd', '\0', 'x'}, k2[] = {'i', 'd', '\0', 'y'};
  int a = 1, b = 2;
  assert_int_equal(sc__map_put_n(&m, k1, sizeof(k1), &a), 0);
  assert_int_equal(sc__map_put_n(&m, k2, sizeof(k2), &b), 0);
  assert_int_equal(m.n, 2);
  assert_ptr_equal(sc__map_get_n(&m, k1, sizeof(k1)), &a);
  assert_ptr_equal(sc__map_get_n(&m, k2, sizeof(k2)), &b);
  assert_null(sc__map_get(&m, "id")); /* the string "id" is a key of its own */
  assert_ptr_equal(sc__map_del_n(&m, k1, sizeof(k1)), &a);
  assert_ptr_equal(sc__map_get_n(&m, k2, sizeof(k2)), &b);
  sc__map_free(&m);
}

/* ---- the buffer ---- */

static void buf_string_forms_keep_a_terminating_nul(void **state) {
  (void)state;
  sc__buf b;
  sc__buf_init(&b);
  assert_true(sc__buf_add(&b, "", 0)); /* an empty string is a string */
  assert_string_equal(b.p, "");
  assert_true(sc__buf_adds(&b, "stage"));
  assert_true(sc__buf_add(&b, " deploy!", 7));
  assert_string_equal(b.p, "stage deploy");
  assert_int_equal(b.len, 12);
  for (int i = 0; i < 1000; i++)
    assert_true(sc__buf_adds(&b, "0123456789"));
  assert_int_equal(b.len, 10012);
  assert_int_equal(strlen(b.p), 10012);
  sc__buf_reset(&b);
  assert_int_equal(b.len, 0);
  assert_true(sc__buf_adds(&b, "again"));
  assert_string_equal(b.p, "again");
  char *taken = sc__buf_take(&b);
  assert_null(b.p);
  assert_int_equal(b.len, 0);
  assert_string_equal(taken, "again");
  free(taken);
  sc__buf_free(&b);
}

static void buf_fixed_keeps_counting_past_its_array(void **state) {
  (void)state;
  char array[8];
  sc__buf b;
  sc__buf_init_fixed(&b, array, sizeof(array));
  sc__buf_lit(&b, "abcdef");
  sc__buf_lit(&b, "ghij");
  assert_int_equal(b.len, 10); /* the length the whole content needs */
  assert_memory_equal(array, "abcdefgh", 8);
  assert_false(sc__buf_cstr(&b)); /* no room for the NUL: not a string */
  sc__buf_free(&b);               /* the caller's array is not freed */
}

/* ---- the list ---- */

typedef struct item {
  int value;
  sc__queue node;
} item;

static void queue_keeps_order_and_survives_removal_while_walking(void **state) {
  (void)state;
  sc__queue head, other;
  sc__queue_init(&head);
  sc__queue_init(&other);
  item items[5];
  for (int i = 0; i < 5; i++) {
    items[i].value = i;
    sc__queue_init(&items[i].node);
    assert_false(sc__queue_linked(&items[i].node));
    sc__queue_insert_tail(&head, &items[i].node);
  }
  assert_ptr_equal(sc__queue_head(&head), &items[0].node);
  assert_ptr_equal(sc__queue_tail(&head), &items[4].node);
  sc__queue *q, *next;
  sc__queue_foreach_safe(q, next, &head) { /* remove the odd ones while walking */
    item *it = sc__queue_data(q, item, node);
    if (it->value % 2) sc__queue_remove(q);
  }
  int expect[] = {0, 2, 4}, k = 0;
  sc__queue_foreach(q, &head) {
    assert_int_equal(sc__queue_data(q, item, node)->value, expect[k++]);
  }
  assert_int_equal(k, 3);
  sc__queue_remove(&items[1].node); /* twice: harmless */
  sc__queue_insert_head(&other, &items[3].node);
  sc__queue_move(&head, &other);
  assert_true(sc__queue_empty(&head));
  int moved[] = {3, 0, 2, 4};
  k = 0;
  sc__queue_foreach(q, &other) {
    assert_int_equal(sc__queue_data(q, item, node)->value, moved[k++]);
  }
  assert_int_equal(k, 4);
  assert_null(sc__queue_head(&head));
}

/* ---- UTF-8 ---- */

static size_t utf8(const char *s) {
  return sc__utf8_length((const unsigned char *)s, strlen(s));
}

static void utf8_length_accepts_well_formed_sequences_only(void **state) {
  (void)state;
  assert_int_equal(utf8("\xc3\xa9"), 2);         /* é */
  assert_int_equal(utf8("\xe2\x82\xac"), 3);     /* € */
  assert_int_equal(utf8("\xf0\x9f\x9a\x82"), 4); /* a locomotive */
  assert_int_equal(utf8("\xf4\x8f\xbf\xbf"), 4); /* U+10FFFF, the last code point */
  assert_int_equal(utf8("\xc0\xaf"), 0);         /* overlong */
  assert_int_equal(utf8("\xe0\x80\xaf"), 0);     /* overlong */
  assert_int_equal(utf8("\xed\xa0\x80"), 0);     /* a surrogate */
  assert_int_equal(utf8("\xf4\x90\x80\x80"), 0); /* above U+10FFFF */
  assert_int_equal(utf8("\x80"), 0);             /* a lone continuation byte */
  assert_int_equal(utf8("\xe2\x82"), 0);         /* cut short */
  assert_int_equal(utf8("\xc3("), 0);            /* a continuation that is not one */
  /* The length bounds the look: a sequence longer than what is left is refused. */
  assert_int_equal(sc__utf8_length((const unsigned char *)"\xe2\x82\xac", 2), 0);
}

/* ---- files ---- */

static void write_file(const char *path, const char *text, size_t len) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, text, len), (ssize_t)len);
  close(fd);
}

static void read_file_reads_a_file_whole_with_a_nul(void **state) {
  (void)state;
  char dir[] = "/tmp/stagecoach-util-XXXXXX";
  assert_non_null(mkdtemp(dir));
  char path[128];
  snprintf(path, sizeof(path), "%s/f.json", dir);
  static char big[100000];
  for (size_t i = 0; i < sizeof(big); i++)
    big[i] = (char)('a' + i % 26);
  write_file(path, big, sizeof(big));
  char *text;
  size_t len;
  assert_int_equal(sc__read_file(path, 1 << 20, true, &text, &len), 0);
  assert_int_equal(len, sizeof(big));
  assert_memory_equal(text, big, sizeof(big));
  assert_int_equal(text[len], '\0');
  free(text);
  /* Past the limit: EFBIG, nothing handed out. */
  assert_int_equal(sc__read_file(path, 1000, false, &text, &len), EFBIG);
  assert_null(text);
  assert_int_equal(len, 0);
  /* A regular file whose size is past the limit (a sparse gigabyte) is refused too. */
  assert_int_equal(truncate(path, (off_t)1 << 30), 0);
  assert_int_equal(sc__read_file(path, 1000, true, &text, &len), EFBIG);
  assert_null(text);
  assert_int_equal(len, 0);
  /* An empty file: no text. */
  write_file(path, "", 0);
  assert_int_equal(sc__read_file(path, 1000, true, &text, &len), 0);
  assert_null(text);
  assert_int_equal(len, 0);
  unlink(path);
  assert_int_equal(sc__read_file(path, 1000, true, &text, &len), ENOENT);
  /* A FIFO is not read when only a regular file will do (and the open does not block). */
  assert_int_equal(mkfifo(path, 0600), 0);
  assert_int_equal(sc__read_file(path, 1000, true, &text, &len), SC__READ_NOT_REGULAR);
  assert_null(text);
  unlink(path);
  /* A directory neither. */
  assert_int_equal(sc__read_file(dir, 1000, true, &text, &len), SC__READ_NOT_REGULAR);
  rmdir(dir);
}

/* ---- formatting and errors ---- */

/* A printf-style function written with SC__FORMAT_ARGS. */
static size_t format_into_eight(char out[8], const char *fmt, ...) SC__PRINTF(2, 3);
static size_t format_into_eight(char out[8], const char *fmt, ...) {
  char buf[8];
  SC__FORMAT_ARGS(buf, fmt);
  memcpy(out, buf, sizeof(buf));
  return strlen(buf);
}

static void format_args_formats_the_callers_arguments_cut_to_its_array(void **state) {
  (void)state;
  char out[8];
  assert_int_equal(format_into_eight(out, "%s-%d", "ab", 7), 4);
  assert_string_equal(out, "ab-7");
  assert_int_equal(format_into_eight(out, "%s%u", "abcdef", 123u), 7);
  assert_string_equal(out, "abcdef1");
}

static void format_cuts_to_the_buffer_and_says_what_it_wrote(void **state) {
  (void)state;
  char buf[8];
  assert_int_equal(sc__format(buf, sizeof(buf), "%s", "abc"), 3);
  assert_string_equal(buf, "abc");
  assert_int_equal(sc__format(buf, sizeof(buf), "stage %d of %d", 12, 100), 7);
  assert_string_equal(buf, "stage 1");
  assert_int_equal(sc__format(buf, 0, "%s", "nothing"), 0);
  char line[16];
  size_t off = 0;
  sc__format_append(line, sizeof(line), &off, "%s:", "a.json");
  sc__format_append(line, sizeof(line), &off, "%u:%u", 3u, 14u);
  assert_string_equal(line, "a.json:3:14");
  assert_int_equal(off, 11);
  sc__format_append(line, sizeof(line), &off, " and much more text");
  assert_int_equal(off, sizeof(line) - 1);
  assert_string_equal(line, "a.json:3:14 and");
  sc__format_append(line, sizeof(line), &off, "x"); /* full: nothing more */
  assert_int_equal(off, sizeof(line) - 1);
}

static void the_internal_error_setter_is_the_public_one(void **state) {
  (void)state;
  assert_int_equal(sc__error(SC_EIO, "write %s: %s", "job.jsonl", "disk full"), SC_EIO);
  assert_string_equal(sc_error_message(), "write job.jsonl: disk full");
  assert_int_equal(sc_error_set(SC_EINVAL, "%d", 42), SC_EINVAL);
  assert_string_equal(sc_error_message(), "42");
  /* A message that wraps the one before it, passed as an argument: the buffer is not read while
   * it is written. */
  assert_int_equal(sc_error_set(SC_EIO, "database %s: %s", "d.db", sc_error_message()), SC_EIO);
  assert_string_equal(sc_error_message(), "database d.db: 42");
  char longer[600];
  memset(longer, 'm', sizeof(longer) - 1);
  longer[sizeof(longer) - 1] = '\0';
  sc_error_set(SC_EIO, "%s", longer);
  sc_error_set(SC_EIO, "x: %s", sc_error_message());
  assert_int_equal(strncmp(sc_error_message(), "x: mmm", 6), 0);
  assert_int_equal(strlen(sc_error_message()), 511);
  sc__error_clear();
  assert_string_equal(sc_error_message(), "");
}

/* ---- names ---- */

static void effect_and_action_names_follow_the_enums(void **state) {
  (void)state;
  assert_string_equal(sc__effect_name(SC_EFFECT_IDEMPOTENT), "idempotent");
  assert_string_equal(sc__effect_name(SC_EFFECT_COMPENSABLE), "compensable");
  assert_string_equal(sc__effect_name(SC_EFFECT_IRREVERSIBLE), "irreversible");
  assert_string_equal(sc__effect_name(99), "idempotent");
  assert_string_equal(sc__action_name(SC_ACTION_APPROVE), "approve");
  assert_string_equal(sc__action_name(SC_ACTION_REJECT), "reject");
  assert_string_equal(sc__action_name(SC_ACTION_FAIL), "fail");
  assert_string_equal(sc__action_name(SC_ACTION_CANCEL), "cancel");
  assert_string_equal(sc__action_name(-1), "cancel");
  assert_int_equal(sc__name_index(sc__effect_names, 3, "irreversible"), SC_EFFECT_IRREVERSIBLE);
  assert_int_equal(sc__name_index(sc__action_names, 4, "reject"), SC_ACTION_REJECT);
  assert_int_equal(sc__name_index(sc__action_names, 4, "Reject"), -1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(format_args_formats_the_callers_arguments_cut_to_its_array),
      cmocka_unit_test(map_puts_gets_and_replaces),
      cmocka_unit_test(map_keeps_every_key_through_growth_and_deletes),
      cmocka_unit_test(map_keys_are_bytes_and_may_hold_a_nul),
      cmocka_unit_test(buf_string_forms_keep_a_terminating_nul),
      cmocka_unit_test(buf_fixed_keeps_counting_past_its_array),
      cmocka_unit_test(queue_keeps_order_and_survives_removal_while_walking),
      cmocka_unit_test(utf8_length_accepts_well_formed_sequences_only),
      cmocka_unit_test(read_file_reads_a_file_whole_with_a_nul),
      cmocka_unit_test(format_cuts_to_the_buffer_and_says_what_it_wrote),
      cmocka_unit_test(the_internal_error_setter_is_the_public_one),
      cmocka_unit_test(effect_and_action_names_follow_the_enums),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
