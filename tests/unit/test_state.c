/* The task state machine, status and event type names, and error code names and texts. */
#include "harness.h"

#define N_STATUS ((int)SC_TASK__COUNT)

typedef struct transition {
  sc_task_status from, to;
} transition;

/* The table of DESIGN.md, "State machine", written out pair by pair. */
static const transition design_table[] = {
    {SC_TASK_CREATED, SC_TASK_PENDING},
    {SC_TASK_CREATED, SC_TASK_CANCELLED},
    {SC_TASK_PENDING, SC_TASK_RUNNING},
    {SC_TASK_PENDING, SC_TASK_ROLLING_BACK},
    {SC_TASK_PENDING, SC_TASK_CANCELLED},
    {SC_TASK_RUNNING, SC_TASK_PAUSED},
    {SC_TASK_RUNNING, SC_TASK_AWAITING_APPROVAL},
    {SC_TASK_RUNNING, SC_TASK_COMPLETED},
    {SC_TASK_RUNNING, SC_TASK_FAILED},
    {SC_TASK_RUNNING, SC_TASK_CANCELLED},
    {SC_TASK_PAUSED, SC_TASK_RUNNING},
    {SC_TASK_PAUSED, SC_TASK_ROLLING_BACK},
    {SC_TASK_PAUSED, SC_TASK_CANCELLED},
    {SC_TASK_AWAITING_APPROVAL, SC_TASK_RUNNING},
    {SC_TASK_AWAITING_APPROVAL, SC_TASK_PAUSED},
    {SC_TASK_AWAITING_APPROVAL, SC_TASK_FAILED},
    {SC_TASK_AWAITING_APPROVAL, SC_TASK_CANCELLED},
    {SC_TASK_FAILED, SC_TASK_RUNNING},
    {SC_TASK_FAILED, SC_TASK_ROLLING_BACK},
    {SC_TASK_ROLLING_BACK, SC_TASK_ROLLED_BACK},
    {SC_TASK_ROLLING_BACK, SC_TASK_ROLLBACK_FAILED},
    {SC_TASK_ROLLING_BACK, SC_TASK_PAUSED},
    {SC_TASK_ROLLBACK_FAILED, SC_TASK_ROLLING_BACK},
};

static bool design_allows(sc_task_status from, sc_task_status to) {
  for (size_t i = 0; i < sizeof(design_table) / sizeof(design_table[0]); i++)
    if (design_table[i].from == from && design_table[i].to == to) return true;
  return false;
}

/* The names of the states in the order of the enum. */
static const char *const status_names[] = {
    "CREATED", "PENDING",   "RUNNING",      "PAUSED",      "AWAITING_APPROVAL", "COMPLETED",
    "FAILED",  "CANCELLED", "ROLLING_BACK", "ROLLED_BACK", "ROLLBACK_FAILED",
};

/* The event types of DESIGN.md, "Events", in that order. */
static const char *const event_names[] = {
    "task.created",      "task.recovered",     "task.started",       "stage.started",
    "stage.completed",   "stage.failed",       "approval.requested", "approval.granted",
    "approval.rejected", "approval.timed_out", "task.paused",        "task.resumed",
    "task.completed",    "task.failed",        "task.cancelled",     "rollback.started",
    "stage.compensated", "rollback.completed", "rollback.failed",
};

/* ---- the transition table ---- */

static void every_transition_matches_the_design_table(void **state) {
  (void)state;
  int allowed = 0;
  for (int from = 0; from < N_STATUS; from++) {
    for (int to = 0; to < N_STATUS; to++) {
      bool want = design_allows((sc_task_status)from, (sc_task_status)to);
      bool got = sc_transition_allowed((sc_task_status)from, (sc_task_status)to);
      if (want != got)
        fail_msg("%s -> %s: expected %s, got %s", status_names[from], status_names[to],
                 want ? "allowed" : "refused", got ? "allowed" : "refused");
      allowed += got;
    }
  }
  assert_int_equal(allowed, (int)(sizeof(design_table) / sizeof(design_table[0])));
}

static void no_state_may_stay_in_itself(void **state) {
  (void)state;
  for (int s = 0; s < N_STATUS; s++)
    if (sc_transition_allowed((sc_task_status)s, (sc_task_status)s))
      fail_msg("%s -> %s is allowed", status_names[s], status_names[s]);
}

static void no_state_leads_back_to_created(void **state) {
  (void)state;
  for (int s = 0; s < N_STATUS; s++)
    assert_false(sc_transition_allowed((sc_task_status)s, SC_TASK_CREATED));
}

static void terminal_states_allow_no_transition(void **state) {
  (void)state;
  const sc_task_status terminal[] = {SC_TASK_COMPLETED, SC_TASK_CANCELLED, SC_TASK_ROLLED_BACK};
  for (size_t i = 0; i < 3; i++)
    for (int to = 0; to < N_STATUS; to++)
      if (sc_transition_allowed(terminal[i], (sc_task_status)to))
        fail_msg("terminal %s -> %s is allowed", status_names[terminal[i]], status_names[to]);
}

static void paused_resumes_only_to_running_rolling_back_or_cancelled(void **state) {
  (void)state;
  for (int to = 0; to < N_STATUS; to++) {
    bool want = to == SC_TASK_RUNNING || to == SC_TASK_ROLLING_BACK || to == SC_TASK_CANCELLED;
    assert_int_equal(sc_transition_allowed(SC_TASK_PAUSED, (sc_task_status)to), want);
  }
}

static void out_of_range_states_allow_no_transition(void **state) {
  (void)state;
  const int bad[] = {-1, N_STATUS, N_STATUS + 1, 1000};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    for (int s = 0; s < N_STATUS; s++) {
      assert_false(sc_transition_allowed((sc_task_status)bad[i], (sc_task_status)s));
      assert_false(sc_transition_allowed((sc_task_status)s, (sc_task_status)bad[i]));
    }
    assert_false(sc_transition_allowed((sc_task_status)bad[i], (sc_task_status)bad[i]));
  }
}

/* ---- status names ---- */

static void status_count_matches_the_design(void **state) {
  (void)state;
  assert_int_equal(N_STATUS, 11);
  assert_int_equal(sizeof(status_names) / sizeof(status_names[0]), 11);
}

static void status_names_are_the_upper_case_enum_names(void **state) {
  (void)state;
  for (int s = 0; s < N_STATUS; s++)
    assert_string_equal(sc_task_status_name((sc_task_status)s), status_names[s]);
}

static void status_name_round_trips_for_every_state(void **state) {
  (void)state;
  for (int s = 0; s < N_STATUS; s++) {
    sc_task_status back = (sc_task_status)-1;
    assert_int_equal(sc_task_status_from_name(sc_task_status_name((sc_task_status)s), &back),
                     SC_OK);
    assert_int_equal(back, s);
  }
}

static void status_from_name_refuses_an_unknown_name(void **state) {
  (void)state;
  const char *bad[] = {"", "?", "BOGUS", "RUNNINGX", "RUNNIN", "COMPLETE", " RUNNING", "running"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    sc_task_status out = SC_TASK_RUNNING;
    assert_int_equal(sc_task_status_from_name(bad[i], &out), SC_ENOTFOUND);
  }
  sc_task_status out;
  assert_int_equal(sc_task_status_from_name("NOT_A_STATE", &out), SC_ENOTFOUND);
  assert_non_null(strstr(sc_error_message(), "NOT_A_STATE"));
}

static void status_name_of_an_out_of_range_value_is_a_question_mark(void **state) {
  (void)state;
  assert_string_equal(sc_task_status_name(SC_TASK__COUNT), "?");
  assert_string_equal(sc_task_status_name((sc_task_status)(N_STATUS + 7)), "?");
  assert_string_equal(sc_task_status_name((sc_task_status)-1), "?");
}

static void only_completed_cancelled_and_rolled_back_are_terminal(void **state) {
  (void)state;
  for (int s = 0; s < N_STATUS; s++) {
    bool want = s == SC_TASK_COMPLETED || s == SC_TASK_CANCELLED || s == SC_TASK_ROLLED_BACK;
    if (sc_task_status_is_terminal((sc_task_status)s) != want)
      fail_msg("%s: terminal should be %d", status_names[s], want);
  }
  assert_false(sc_task_status_is_terminal(SC_TASK__COUNT));
  assert_false(sc_task_status_is_terminal((sc_task_status)-1));
}

/* ---- event type names ---- */

static void event_type_count_matches_the_design(void **state) {
  (void)state;
  assert_int_equal(SC_EV__COUNT, sizeof(event_names) / sizeof(event_names[0]));
  assert_int_equal(SC_EV__COUNT, 19);
}

static void event_type_names_carry_the_stagecoach_prefix(void **state) {
  (void)state;
  assert_string_equal(sc_event_type_name(SC_EV_STAGE_COMPLETED), "stagecoach.stage.completed");
  for (int t = 0; t < SC_EV__COUNT; t++) {
    char want[64];
    snprintf(want, sizeof(want), "stagecoach.%s", event_names[t]);
    assert_string_equal(sc_event_type_name((sc_event_type)t), want);
  }
}

static void event_type_from_name_accepts_the_full_and_the_short_name(void **state) {
  (void)state;
  for (int t = 0; t < SC_EV__COUNT; t++) {
    sc_event_type out = SC_EV__COUNT;
    assert_int_equal(sc_event_type_from_name(sc_event_type_name((sc_event_type)t), &out), SC_OK);
    assert_int_equal(out, t);
    out = SC_EV__COUNT;
    assert_int_equal(sc_event_type_from_name(event_names[t], &out), SC_OK);
    assert_int_equal(out, t);
  }
}

static void event_type_from_name_refuses_an_unknown_name(void **state) {
  (void)state;
  const char *bad[] = {"",
                       "stagecoach.",
                       "stagecoach",
                       "stagecoach.unknown",
                       "task",
                       "stagecoach.task",
                       "task.exploded",
                       "stagecoach.task.exploded",
                       "stagecoach.stagecoach.task.created",
                       "other.task.created",
                       "STAGECOACH.TASK.CREATED",
                       "Task.Created",
                       "task.created ",
                       "stage.completedx"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    sc_event_type out = SC_EV_TASK_CREATED;
    int rc = sc_event_type_from_name(bad[i], &out);
    if (rc != SC_ENOTFOUND) fail_msg("'%s' gave %d, expected SC_ENOTFOUND", bad[i], rc);
  }
}

static void event_type_name_of_an_out_of_range_value_is_unknown(void **state) {
  (void)state;
  assert_string_equal(sc_event_type_name(SC_EV__COUNT), "stagecoach.unknown");
  assert_string_equal(sc_event_type_name((sc_event_type)-1), "stagecoach.unknown");
  assert_string_equal(sc_event_type_name((sc_event_type)500), "stagecoach.unknown");
}

/* ---- error codes ---- */

typedef struct error_code {
  int code, value;
  const char *name, *text;
} error_code;

/* The codes of DESIGN.md with the texts of <stagecoach/error.h>. */
static const error_code error_codes[] = {
    {SC_EINVAL, -1, "SC_EINVAL", "invalid argument"},
    {SC_ENOMEM, -2, "SC_ENOMEM", "out of memory"},
    {SC_ETRANSITION, -3, "SC_ETRANSITION", "operation not allowed in the task's state"},
    {SC_EUNKNOWN_STAGE, -4, "SC_EUNKNOWN_STAGE", "unknown stage"},
    {SC_EPLAN, -5, "SC_EPLAN", "invalid plan"},
    {SC_EPLAN_MISMATCH, -6, "SC_EPLAN_MISMATCH", "plan fingerprint mismatch"},
    {SC_EBUSY, -7, "SC_EBUSY", "resource busy"},
    {SC_ENOTFOUND, -8, "SC_ENOTFOUND", "not found"},
    {SC_EIO, -9, "SC_EIO", "input/output error"},
    {SC_ECORRUPT, -10, "SC_ECORRUPT", "data corrupted"},
    {SC_EPARSE, -11, "SC_EPARSE", "parse error"},
    {SC_ECANCELLED, -12, "SC_ECANCELLED", "cancelled"},
    {SC_ETIMEDOUT, -13, "SC_ETIMEDOUT", "timed out"},
    {SC_EAUTH, -14, "SC_EAUTH", "not authorized"},
};
#define N_ERRORS (sizeof(error_codes) / sizeof(error_codes[0]))

static void error_codes_have_the_values_of_the_design(void **state) {
  (void)state;
  assert_int_equal(SC_OK, 0);
  assert_int_equal(SC_DEFER, 1);
  for (size_t i = 0; i < N_ERRORS; i++)
    assert_int_equal(error_codes[i].code, error_codes[i].value);
}

static void every_error_code_has_its_name(void **state) {
  (void)state;
  for (size_t i = 0; i < N_ERRORS; i++)
    assert_string_equal(sc_err_name(error_codes[i].code), error_codes[i].name);
  assert_string_equal(sc_err_name(SC_OK), "SC_OK");
  assert_string_equal(sc_err_name(SC_DEFER), "SC_DEFER");
}

static void every_error_code_has_its_text(void **state) {
  (void)state;
  for (size_t i = 0; i < N_ERRORS; i++)
    assert_string_equal(sc_strerror(error_codes[i].code), error_codes[i].text);
}

static void error_names_and_texts_are_distinct(void **state) {
  (void)state;
  for (size_t i = 0; i < N_ERRORS; i++)
    for (size_t j = i + 1; j < N_ERRORS; j++) {
      assert_string_not_equal(sc_err_name(error_codes[i].code), sc_err_name(error_codes[j].code));
      assert_string_not_equal(sc_strerror(error_codes[i].code), sc_strerror(error_codes[j].code));
    }
}

static void unknown_error_codes_still_have_a_name_and_a_text(void **state) {
  (void)state;
  const int unknown[] = {-15, -100, 2, 42, -2147483647 - 1};
  for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
    const char *name = sc_err_name(unknown[i]), *text = sc_strerror(unknown[i]);
    assert_non_null(name);
    assert_non_null(text);
    assert_true(*name != '\0');
    assert_true(*text != '\0');
    for (size_t j = 0; j < N_ERRORS; j++) {
      assert_string_not_equal(name, error_codes[j].name);
      assert_string_not_equal(text, error_codes[j].text);
    }
  }
}

static void error_message_is_never_null(void **state) {
  (void)state;
  assert_non_null(sc_error_message());
  sc_task_status out;
  assert_int_equal(sc_task_status_from_name("NOPE", &out), SC_ENOTFOUND);
  assert_non_null(sc_error_message());
  assert_true(*sc_error_message() != '\0');
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(every_transition_matches_the_design_table),
      cmocka_unit_test(no_state_may_stay_in_itself),
      cmocka_unit_test(no_state_leads_back_to_created),
      cmocka_unit_test(terminal_states_allow_no_transition),
      cmocka_unit_test(paused_resumes_only_to_running_rolling_back_or_cancelled),
      cmocka_unit_test(out_of_range_states_allow_no_transition),
      cmocka_unit_test(status_count_matches_the_design),
      cmocka_unit_test(status_names_are_the_upper_case_enum_names),
      cmocka_unit_test(status_name_round_trips_for_every_state),
      cmocka_unit_test(status_from_name_refuses_an_unknown_name),
      cmocka_unit_test(status_name_of_an_out_of_range_value_is_a_question_mark),
      cmocka_unit_test(only_completed_cancelled_and_rolled_back_are_terminal),
      cmocka_unit_test(event_type_count_matches_the_design),
      cmocka_unit_test(event_type_names_carry_the_stagecoach_prefix),
      cmocka_unit_test(event_type_from_name_accepts_the_full_and_the_short_name),
      cmocka_unit_test(event_type_from_name_refuses_an_unknown_name),
      cmocka_unit_test(event_type_name_of_an_out_of_range_value_is_unknown),
      cmocka_unit_test(error_codes_have_the_values_of_the_design),
      cmocka_unit_test(every_error_code_has_its_name),
      cmocka_unit_test(every_error_code_has_its_text),
      cmocka_unit_test(error_names_and_texts_are_distinct),
      cmocka_unit_test(unknown_error_codes_still_have_a_name_and_a_text),
      cmocka_unit_test(error_message_is_never_null),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
