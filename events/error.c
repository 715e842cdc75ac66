/* Error codes, their texts and the per-thread detail message behind sc_error_message(). */
#include <stdarg.h>
#include <string.h>
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
  /* Formatted aside first: an argument may be sc_error_message() itself (a message that wraps
   * the one before it), and vsnprintf must not write the buffer it reads. */
  char next[sizeof(last_message)];
  va_list ap;
  va_start(ap, fmt);
  sc__vformat(next, sizeof(next), fmt, ap);
  va_end(ap);
  memcpy(last_message, next, strlen(next) + 1);
  return code;
}

void sc__error_clear(void) {
  last_message[0] = '\0';
}
