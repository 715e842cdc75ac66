/* The small utilities of the internal layer that are not inline in internal.h: formatting into a
 * fixed buffer, reading a whole file, and the names of effects and approval actions. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

size_t sc__vformat(char *buf, size_t cap, const char *fmt, va_list ap) {
  if (cap == 0) return 0;
  int n = vsnprintf(buf, cap, fmt, ap);
  if (n < 0) { /* an encoding error: nothing usable was written */
    buf[0] = '\0';
    return 0;
  }
  return (size_t)n < cap ? (size_t)n : cap - 1;
}

size_t sc__format(char *buf, size_t cap, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  size_t n = sc__vformat(buf, cap, fmt, ap);
  va_end(ap);
  return n;
}

void sc__format_append(char *buf, size_t cap, size_t *off, const char *fmt, ...) {
  if (buf == NULL || *off + 1 >= cap) return;
  va_list ap;
  va_start(ap, fmt);
  *off += sc__vformat(buf + *off, cap - *off, fmt, ap);
  va_end(ap);
}

bool sc__grow(void *items, size_t *cap, size_t need, size_t elem, size_t first) {
  if (need <= *cap) return true;
  size_t n = *cap ? *cap : first;
  while (n < need) {
    if (n > SIZE_MAX / 2 / elem) return false;
    n *= 2;
  }
  void *old;
  memcpy(&old, items, sizeof(old));
  void *p = realloc(old, n * elem);
  if (p == NULL) return false;
  memcpy(items, &p, sizeof(p));
  *cap = n;
  return true;
}

int sc__read_file(const char *path, size_t max_bytes, bool regular_only, char **text, size_t *len) {
  *text = NULL;
  *len = 0;
  /* Opened without blocking: the open of a FIFO that no one writes would wait for ever. A pipe or
   * FIFO that is read anyway is then read blocking, as it comes (a shell's <(...) has its writer;
   * one without a writer reads as empty at once). */
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) return errno;
  struct stat st;
  bool regular = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
  if (regular_only && !regular) {
    close(fd);
    return SC__READ_NOT_REGULAR;
  }
  if (!regular) {
    int fl = fcntl(fd, F_GETFL);
    if (fl != -1) (void)fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
  }
  if (regular && st.st_size > 0 && (uint64_t)st.st_size > max_bytes) {
    close(fd); /* too large already: refused without reading it */
    return EFBIG;
  }
  sc__buf b;
  sc__buf_init(&b);
  int err = 0;
  /* The size fstat tells is a hint (the file may grow meanwhile, a pipe tells none). */
  if (regular && st.st_size > 0 && (uint64_t)st.st_size <= max_bytes &&
      !sc__buf_reserve(&b, (size_t)st.st_size + 1))
    err = ENOMEM;
  char probe[4096]; /* a full buffer reads here first: a file that ends there costs no growth */
  while (err == 0) {
    bool full = b.cap < b.len + 2;
    ssize_t got = full ? read(fd, probe, sizeof(probe)) : read(fd, b.p + b.len, b.cap - b.len - 1);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) {
      err = errno;
    } else if (got == 0) {
      break;
    } else if (b.len + (size_t)got > max_bytes) {
      err = EFBIG;
    } else if (full) {
      sc__buf_put(&b, probe, (size_t)got);
      if (b.oom) err = ENOMEM;
    } else {
      b.len += (size_t)got;
    }
  }
  close(fd);
  if (err == 0 && b.len > 0 && !sc__buf_cstr(&b)) err = ENOMEM;
  if (err != 0) {
    sc__buf_free(&b);
    return err;
  }
  *len = b.len;
  *text = b.len > 0 ? sc__buf_take(&b) : NULL;
  sc__buf_free(&b);
  return 0;
}

const char *const sc__effect_names[3] = {"idempotent", "compensable", "irreversible"};
const char *const sc__action_names[4] = {"approve", "reject", "fail", "cancel"};

const char *sc__effect_name(int effect) {
  return effect >= 0 && effect < 3 ? sc__effect_names[effect] : sc__effect_names[0];
}

const char *sc__action_name(int action) {
  return action >= 0 && action < 4 ? sc__action_names[action] : sc__action_names[3];
}

int sc__name_index(const char *const *names, size_t n, const char *word) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(names[i], word) == 0) return (int)i;
  return -1;
}
