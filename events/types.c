/* Names of task states and event types, generated from the tables in <stagecoach/events.h>. */
#include <string.h>

#include "internal.h"

static const char *const status_names[] = {
#define SC__STATUS_NAME(name) #name,
    SC_TASK_STATUS_MAP(SC__STATUS_NAME)
#undef SC__STATUS_NAME
};

static const char *const type_names[] = {
#define SC__TYPE_NAME(name, text) "stagecoach." text,
    SC_EVENT_TYPE_MAP(SC__TYPE_NAME)
#undef SC__TYPE_NAME
};

#define PREFIX_LEN (sizeof("stagecoach.") - 1)

const char *sc_task_status_name(sc_task_status s) {
  return (unsigned)s < SC_TASK__COUNT ? status_names[s] : "?";
}

int sc_task_status_from_name(const char *name, sc_task_status *out) {
  for (int i = 0; name != NULL && i < SC_TASK__COUNT; i++) {
    if (strcmp(name, status_names[i]) == 0) {
      *out = (sc_task_status)i;
      return SC_OK;
    }
  }
  return sc__error(SC_ENOTFOUND, "unknown task status '%s'", name ? name : "(null)");
}

bool sc_task_status_is_terminal(sc_task_status s) {
  return s == SC_TASK_COMPLETED || s == SC_TASK_CANCELLED || s == SC_TASK_ROLLED_BACK;
}

const char *sc_event_type_name(sc_event_type t) {
  return (unsigned)t < SC_EV__COUNT ? type_names[t] : "stagecoach.unknown";
}

int sc_event_type_from_name(const char *name, sc_event_type *out) {
  if (name == NULL) return sc__error(SC_ENOTFOUND, "missing event type");
  const char *short_name = strncmp(name, "stagecoach.", PREFIX_LEN) == 0 ? name + PREFIX_LEN : name;
  for (int i = 0; i < SC_EV__COUNT; i++) {
    if (strcmp(short_name, type_names[i] + PREFIX_LEN) == 0) {
      *out = (sc_event_type)i;
      return SC_OK;
    }
  }
  return sc__error(SC_ENOTFOUND, "unknown event type '%s'", name);
}

bool sc_event_type_is_barrier(sc_event_type t) {
  switch (t) {
    case SC_EV_TASK_CREATED:
    case SC_EV_TASK_RECOVERED:
    case SC_EV_STAGE_COMPLETED:
    case SC_EV_TASK_COMPLETED:
    case SC_EV_TASK_FAILED:
    case SC_EV_TASK_CANCELLED:
    case SC_EV_APPROVAL_GRANTED:
    case SC_EV_APPROVAL_REJECTED:
    case SC_EV_APPROVAL_TIMED_OUT:
    case SC_EV_ROLLBACK_STARTED:
    case SC_EV_STAGE_COMPENSATED:
    case SC_EV_ROLLBACK_COMPLETED:
    case SC_EV_ROLLBACK_FAILED: return true;
    default: return false;
  }
}
