/* stagecoach error codes and the per-thread error message.
 *
 * Every function that can fail returns an int: 0 on success, a negative SC_E* code on failure.
 * A failure also leaves a human-readable detail for sc_error_message() on the calling thread. */
#ifndef STAGECOACH_ERROR_H
#define STAGECOACH_ERROR_H

/* SC_EXTERN marks every function of the public API, in every installed header; it is the one
 * export macro. The library is built with hidden visibility by default (meson.build), so a name
 * without it (the library's sc__ internals) never reaches the shared library's symbol table. */
#if defined(__GNUC__) && __GNUC__ >= 4
#define SC_EXTERN __attribute__((visibility("default")))
#else
#define SC_EXTERN
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* X(name, value, text): the one table behind the enum, sc_strerror() and sc_err_name(). */
#define SC_ERRNO_MAP(X)                                                                            \
  X(EINVAL, -1, "invalid argument")                                                                \
  X(ENOMEM, -2, "out of memory")                                                                   \
  X(ETRANSITION, -3, "operation not allowed in the task's state")                                  \
  X(EUNKNOWN_STAGE, -4, "unknown stage")                                                           \
  X(EPLAN, -5, "invalid plan")                                                                     \
  X(EPLAN_MISMATCH, -6, "plan fingerprint mismatch")                                               \
  X(EBUSY, -7, "resource busy")                                                                    \
  X(ENOTFOUND, -8, "not found")                                                                    \
  X(EIO, -9, "input/output error")                                                                 \
  X(ECORRUPT, -10, "data corrupted")                                                               \
  X(EPARSE, -11, "parse error")                                                                    \
  X(ECANCELLED, -12, "cancelled")                                                                  \
  X(ETIMEDOUT, -13, "timed out")                                                                   \
  X(EAUTH, -14, "not authorized")

enum {
  SC_OK = 0,
  SC_DEFER = 1, /* returned by a subscriber that will call sc_ack_done() later */
#define SC__ERRNO_ENUM(name, value, text) SC_##name = value,
  SC_ERRNO_MAP(SC__ERRNO_ENUM)
#undef SC__ERRNO_ENUM
};

/* Static text for an error code ("unknown stage"); never NULL. */
SC_EXTERN const char *sc_strerror(int err);

/* The code's name ("SC_EUNKNOWN_STAGE"); never NULL. */
SC_EXTERN const char *sc_err_name(int err);

/* Detail of the last failure on this thread ("unknown stage 'verfy' in plan 'deploy' (stages:
 * prepare, deploy, verify)"). Never NULL; "" when nothing failed yet. Thread-local storage, valid
 * until the next failing call on the same thread. */
SC_EXTERN const char *sc_error_message(void);

/* Sets this thread's message (printf-style) and returns code, so that stage kinds, factories and
 * adapters report the way the library does: `return sc_error_set(SC_EIO, "write %s: %s", ...)`. */
SC_EXTERN int sc_error_set(int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

#ifdef __cplusplus
}
#endif
#endif
