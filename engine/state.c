/* The task state machine: the one table of allowed status changes (docs/design.md). */
#include "engine_int.h"

#define BIT(s) (1u << SC_TASK_##s)

static const unsigned allowed[SC_TASK__COUNT] = {
    [SC_TASK_CREATED] = BIT(PENDING) | BIT(CANCELLED),
    [SC_TASK_PENDING] = BIT(RUNNING) | BIT(ROLLING_BACK) | BIT(CANCELLED),
    [SC_TASK_RUNNING] =
        BIT(PAUSED) | BIT(AWAITING_APPROVAL) | BIT(COMPLETED) | BIT(FAILED) | BIT(CANCELLED),
    [SC_TASK_PAUSED] = BIT(RUNNING) | BIT(ROLLING_BACK) | BIT(CANCELLED),
    [SC_TASK_AWAITING_APPROVAL] = BIT(RUNNING) | BIT(PAUSED) | BIT(FAILED) | BIT(CANCELLED),
    [SC_TASK_COMPLETED] = 0,
    [SC_TASK_FAILED] = BIT(RUNNING) | BIT(ROLLING_BACK),
    [SC_TASK_CANCELLED] = 0,
    [SC_TASK_ROLLING_BACK] = BIT(ROLLED_BACK) | BIT(ROLLBACK_FAILED) | BIT(PAUSED),
    [SC_TASK_ROLLED_BACK] = 0,
    [SC_TASK_ROLLBACK_FAILED] = BIT(ROLLING_BACK),
};

bool sc_transition_allowed(sc_task_status from, sc_task_status to) {
  if ((unsigned)from >= SC_TASK__COUNT || (unsigned)to >= SC_TASK__COUNT) return false;
  return (allowed[from] >> to) & 1u;
}
