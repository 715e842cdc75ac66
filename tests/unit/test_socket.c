/* The socket adapter in process: addresses and options refused, the token file's rules, the line
 * parser, and a stream to a client that never reads, which is dropped while the engine runs on.
 * The protocol end to end, with the `stagecoach` binary, is tests/integration/sockets.py. */
#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "harness.h"

#include <stagecoach/socket.h>

#include "../../adapters/socket/socket_int.h"

static char dir[64];

static int setup(void **state) {
  (void)state;
  snprintf(dir, sizeof(dir), "/tmp/sc-sock-XXXXXX");
  return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
  return system(cmd);
}

static void write_file(const char *path, const char *text, mode_t mode) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
  chmod(path, mode);
}

static void listen_refuses_bad_addresses(void **state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  sc_engine *e;
  assert_int_equal(sc_engine_new(&loop, NULL, &e), SC_OK);
  const char *bad[] = {"foo", "unix:", "tcp:10.1.2.3:80", "tcp:127.0.0.1:99999", "tcp:127.0.0.1"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    sc_socket *s = (sc_socket *)&loop;
    assert_int_equal(sc_socket_listen(e, bad[i], NULL, &s), SC_EINVAL);
    assert_null(s);
  }
  sc_socket_options o;
  sc_socket_options_init(&o);
  o.version = 99;
  sc_socket *s;
  assert_int_equal(sc_socket_listen(e, "tcp:127.0.0.1:0", &o, &s), SC_EINVAL);
  sc_engine_free(e);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void listen_on_port_zero_reports_the_port(void **state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  sc_engine *e;
  assert_int_equal(sc_engine_new(&loop, NULL, &e), SC_OK);
  sc_socket *s;
  assert_int_equal(sc_socket_listen(e, "tcp:127.0.0.1:0", NULL, &s), SC_OK);
  const char *addr = sc_socket_address(s);
  assert_true(strncmp(addr, "tcp:127.0.0.1:", 14) == 0 && atoi(addr + 14) > 0);
  assert_int_equal(sc_socket_client_count(s), 0);
  sc_socket *s6;
  assert_int_equal(sc_socket_listen(e, "tcp:[::1]:0", NULL, &s6), SC_OK);
  assert_true(strncmp(sc_socket_address(s6), "tcp:[::1]:", 10) == 0);
  sc_socket_close(s6);
  sc_socket_close(s);
  sc_engine_free(e);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void token_file_others_may_read_is_refused(void **state) {
  (void)state;
  char path[128];
  snprintf(path, sizeof(path), "%s/tokens", dir);
  write_file(path, "alice:secret\n", 0644);
  sc__sock_tokens t;
  assert_int_equal(sc__sock_tokens_load(path, &t), SC_EAUTH);
  assert_non_null(strstr(sc_error_message(), "chmod 600"));
  write_file(path, "alice:secret\n", 0640);
  assert_int_equal(sc__sock_tokens_load(path, &t), SC_EAUTH);
  write_file(path, "alice:secret\n", 0600);
  assert_int_equal(sc__sock_tokens_load(path, &t), SC_OK);
  assert_int_equal(t.n, 1);
  sc__sock_tokens_free(&t);
}

static void token_file_lines_are_checked(void **state) {
  (void)state;
  sc__sock_tokens t;
  const char *bad[] = {"nameonly\n",  ":token\n",           "name:\n",
                       "a:b:admin\n", "# only a comment\n", "a:b:viewer,\n"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    assert_int_equal(sc__sock_tokens_parse(bad[i], strlen(bad[i]), "f", &t), SC_EAUTH);
  const char *text = "# team\nalice:tok-a:approver\r\n\n  bob:tok-b\nvic:tok-v:viewer,operator\n";
  assert_int_equal(sc__sock_tokens_parse(text, strlen(text), "f", &t), SC_OK);
  assert_int_equal(t.n, 3);
  const sc__sock_token *a = sc__sock_tokens_find(&t, "tok-a");
  assert_non_null(a);
  assert_string_equal(a->name, "alice");
  assert_int_equal(a->roles, SC__SOCK_ROLE_APPROVER);
  assert_int_equal(sc__sock_tokens_find(&t, "tok-b")->roles,
                   SC__SOCK_ROLE_VIEWER | SC__SOCK_ROLE_OPERATOR | SC__SOCK_ROLE_APPROVER);
  assert_int_equal(sc__sock_tokens_find(&t, "tok-v")->roles,
                   SC__SOCK_ROLE_VIEWER | SC__SOCK_ROLE_OPERATOR);
  assert_null(sc__sock_tokens_find(&t, "tok-"));   /* a prefix */
  assert_null(sc__sock_tokens_find(&t, "tok-aa")); /* longer */
  assert_null(sc__sock_tokens_find(&t, ""));
  assert_null(sc__sock_tokens_find(&t, NULL));
  sc__sock_tokens_free(&t);
}

static int parse(const char *line, sc__sock_request *r) {
  char why[256];
  return sc__sock_request_parse(line, strlen(line), r, why, sizeof(why));
}

static void lines_are_parsed_member_by_member(void **state) {
  (void)state;
  sc__sock_request r;
  assert_int_equal(
      parse("{\"subscribe\":{\"tenant\":\"acme\",\"task\":\"j\",\"types\":[\"stage.*\"],"
            "\"from_seq\":3}}",
            &r),
      SC_OK);
  assert_int_equal(r.kind, SC__SOCK_SUBSCRIBE);
  assert_string_equal(r.tenant, "acme");
  assert_true(r.has_from_seq && r.from_seq == 3);
  sc__sock_request_free(&r);
  assert_int_equal(parse("{\"op\":\"retry\",\"task\":\"j\",\"from_stage\":\"b\","
                         "\"reset_context\":true,\"id\":5}",
                         &r),
                   SC_OK);
  assert_int_equal(r.op, SC__SOCK_OP_RETRY);
  assert_true(r.reset_context);
  assert_string_equal(r.from_stage, "b");
  assert_int_equal(sc__sock_op_role(r.op), SC__SOCK_ROLE_OPERATOR);
  sc__sock_request_free(&r);
  assert_int_equal(parse("{\"subscribe\":{\"from_seq\":1}}", &r), SC_EINVAL); /* no task */
  assert_int_equal(parse("{\"subscribe\":{\"task\":\"j\",\"from_seq\":0}}", &r), SC_EINVAL);
  /* 2^53 is not exact in JSON numbers (9007199254740993 reads as it): refused, one below taken */
  assert_int_equal(parse("{\"subscribe\":{\"task\":\"j\",\"from_seq\":9007199254740992}}", &r),
                   SC_EINVAL);
  assert_int_equal(parse("{\"subscribe\":{\"task\":\"j\",\"from_seq\":9007199254740993}}", &r),
                   SC_EINVAL);
  assert_int_equal(parse("{\"subscribe\":{\"task\":\"j\",\"from_seq\":9007199254740991}}", &r),
                   SC_OK);
  assert_true(r.from_seq == 9007199254740991ull);
  sc__sock_request_free(&r);
  assert_int_equal(parse("{\"subscribe\":{\"types\":\"stage.*\"}}", &r), SC_EINVAL);
  assert_int_equal(parse("{\"op\":\"approve\",\"task\":\"j\"}", &r), SC_EINVAL); /* no stage */
  assert_int_equal(parse("{\"op\":\"pause\"}", &r), SC_EINVAL);                  /* no task */
  assert_int_equal(parse("{\"op\":\"rollback\",\"task\":\"j\",\"strategy\":\"x\"}", &r), SC_EINVAL);
  assert_int_equal(parse("{\"op\":\"status\"} {}", &r), SC_EPARSE);
  assert_int_equal(parse("\"op\"", &r), SC_EPARSE);
  /* A refusal keeps the id, so that the reply names the line it answers. */
  assert_int_equal(parse("{\"op\":\"nope\",\"id\":\"q1\"}", &r), SC_EINVAL);
  assert_non_null(r.id);
  assert_string_equal(r.id->valuestring, "q1");
  sc__sock_request_free(&r);
}

static int finish_now(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  cJSON *out = cJSON_CreateObject();
  cJSON_AddStringToObject(out, "pad", "0123456789012345678901234567890123456789");
  sc_stage_complete(ctx, out);
  return SC_OK;
}

static void noop_timer(uv_timer_t *t) {
  (void)t;
}

static int last_status(const sc_event *ev, sc_ack *ack, void *udata) {
  (void)ack;
  *(sc_task_status *)udata = ev->status;
  return SC_OK;
}

static void a_client_that_never_reads_is_dropped_and_the_task_completes(void **state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  sc_engine *e;
  assert_int_equal(sc_engine_new(&loop, NULL, &e), SC_OK);
  sc_engine_register_fn(e, "finish_now", finish_now, NULL);
  char path[128], addr[160];
  snprintf(path, sizeof(path), "%s/s", dir);
  snprintf(addr, sizeof(addr), "unix:%s", path);
  sc_socket_options o;
  sc_socket_options_init(&o);
  o.queue_bytes = 4096;
  o.subscribe_wait_ms = 0;
  sc_socket *s;
  assert_int_equal(sc_socket_listen(e, addr, &o, &s), SC_OK);
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0600);
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  int small = 1024;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  memcpy(sa.sun_path, path, strlen(path));
  assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
  /* The server's handles keep no loop alive: a timer does, while the connection is accepted. */
  uv_timer_t wake;
  uv_timer_init(&loop, &wake);
  for (int i = 0; i < 100 && sc_socket_client_count(s) == 0; i++) {
    uv_timer_start(&wake, noop_timer, 10, 0);
    uv_run(&loop, UV_RUN_ONCE);
  }
  uv_close((uv_handle_t *)&wake, NULL);
  assert_int_equal(sc_socket_client_count(s), 1);
  const char *text = "{\"stages\":[";
  char config[16384];
  snprintf(config, sizeof(config), "%s", text);
  for (int i = 0; i < 200; i++)
    snprintf(config + strlen(config), sizeof(config) - strlen(config),
             "%s{\"name\":\"s%d\",\"kind\":\"fn\",\"fn\":\"finish_now\"}", i ? "," : "", i);
  strcat(config, "]}");
  cJSON *cfg = cJSON_Parse(config);
  sc_task_spec spec;
  sc_task_spec_init(&spec);
  spec.config = cfg;
  sc_task_status status = SC_TASK__COUNT;
  sc_subscriber sub;
  sc_subscriber_init(&sub);
  sub.on_event = last_status;
  sub.udata = &status;
  sc_engine_subscribe(e, &sub, NULL);
  assert_int_equal(sc_task_submit(e, &spec, NULL), SC_OK);
  sc_engine_run(e); /* returns: nothing waits for the client that does not read */
  assert_int_equal(status, SC_TASK_COMPLETED);
  assert_int_equal(sc_socket_dropped_count(s), 1);
  sc_socket_close(s);
  assert_int_not_equal(stat(path, &st), 0); /* removed */
  close(fd);
  cJSON_Delete(cfg);
  sc_engine_free(e);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(listen_refuses_bad_addresses),
      cmocka_unit_test(listen_on_port_zero_reports_the_port),
      cmocka_unit_test(token_file_others_may_read_is_refused),
      cmocka_unit_test(token_file_lines_are_checked),
      cmocka_unit_test(lines_are_parsed_member_by_member),
      cmocka_unit_test(a_client_that_never_reads_is_dropped_and_the_task_completes),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
