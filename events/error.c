/* Error codes, their texts and the per-thread detail message behind sc_error_message(). */
#include <stdarg.h>
#include <stdio.h>

#include "internal.h"

static _Thread_local char last_message[512];

const char *sc_strerror(int err) {
  switch (err) {
    case SC_OK: return "success";
    case SC_DEFER: return "deferred";
#define SC__ERRNO_TEXT(name, value, text)                                                          \
  case SC_##name: return text;
      SC_ERRNO_MAP(SC__ERRNO_TEXT)
#undef SC__ERRNO_TEXT
    default: return "unknown error";
  }
}

const char *sc_err_name(int err) {
  switch (err) {
    case SC_OK: return "SC_OK";
    case SC_DEFER: return "SC_DEFER";
#define SC__ERRNO_NAME(name, value, text)                                                          \
  case SC_##name: return "SC_" #name;
      SC_ERRNO_MAP(SC__ERRNO_NAME)
#undef SC__ERRNO_NAME
    default: return "SC_EUNKNOWN";
  }
}

const char *sc_error_message(void) {
  return last_message;
}

int sc_error_set(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  sc__vformat(last_message, sizeof(last_message), fmt, ap);
  va_end(ap);
  return code;
}

void sc__error_clear(void) {
  last_message[0] = '\0';
}
