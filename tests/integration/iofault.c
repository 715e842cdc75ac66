/* iofault: an LD_PRELOAD shim for the fault suites. It watches the calls a process makes on one
 * file, the log named by SC_IOFAULT_LOG, and nothing else: writes and syncs of the log (and the
 * sync of its directory) are counted, the Nth of them can fail with a chosen errno, the process
 * can kill itself with SIGKILL right after the Nth line it writes to the log, and it can be held
 * at its open or its lock of the log until the test lets it go. Other files (stdout, stderr, the
 * pipes of the stages) are never counted, failed or held.
 *
 *   SC_IOFAULT_LOG=PATH       the log (required; without it the shim does nothing)
 *   SC_IOFAULT_TRACE=FILE     append one line per counted call: "N write|sync BYTES", and
 *                             "N fail write|sync ERRNO" for the one failed
 *                             and, not counted, "- read BYTES" for a read or a map of the log
 *                             and "- locked" once the process holds its lock
 *   SC_IOFAULT_FAIL=N         the Nth counted call fails (returns -1, does nothing)...
 *   SC_IOFAULT_ERRNO=E        ... with errno E: EIO (default) or ENOSPC
 *   SC_IOFAULT_SHORT=1        a write that fails writes half its bytes first and returns that
 *                             short count; the next write of the log (the rest) fails with E, as
 *                             a write does when the disk fills up in the middle of it
 *   SC_IOFAULT_KILL_LINE=N    write the log up to the end of its Nth line (of this process),
 *                             then SIGKILL: a crash exactly at that event boundary
 *   SC_IOFAULT_HOLD=WHERE     hold once: "open" (after the log is opened), "lock" (before it
 *                             is locked) or "locked" (after it is locked)...
 *   SC_IOFAULT_HOLD_DIR=DIR   ... by creating DIR/held (holding the pid) and waiting, at most
 *                             60 s, until DIR/release exists
 *
 * The failure is a real one for the caller: the call returns -1 with errno and its data never
 * reaches the file. The counters are shared by every thread of the process, so a sync made on
 * the thread pool is counted like one made on the loop's thread. The shim is built without the
 * sanitizers: it is also loaded into the stages' shells, which are not instrumented. */
#define _GNU_SOURCE
/* The plain and the 64 names are both defined below; 64-bit offsets would alias them. */
#undef _FILE_OFFSET_BITS
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static char log_path[PATH_MAX], dir_path[PATH_MAX];
static bool active;
static int trace_fd = -1;
static long fail_at, kill_line;
static int fail_errno = EIO;
static char hold_where[16], hold_dir[PATH_MAX - 16];
static long calls, lines; /* counted calls and log lines written, by every thread */
static int held;          /* the hold is done once */
static bool short_writes;
static int rest_fails; /* a short write was made: the write of the rest fails */

/* Writes the trace with the raw system call, so that the shim does not see its own writes. */
static void trace(const char *fmt, ...) {
  if (trace_fd < 0) return;
  char line[128];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  if (n > 0)
    syscall(SYS_write, trace_fd, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line));
}

__attribute__((constructor)) static void iofault_init(void) {
  const char *p = getenv("SC_IOFAULT_LOG");
  if (p == NULL || *p == '\0' || strlen(p) >= sizeof(log_path)) return;
  /* The log may not exist yet: resolve its directory, keep its name. */
  char copy[PATH_MAX];
  snprintf(copy, sizeof(copy), "%s", p);
  char *slash = strrchr(copy, '/');
  const char *name = slash ? slash + 1 : copy;
  if (slash) *slash = '\0';
  if (realpath(slash ? (copy[0] ? copy : "/") : ".", dir_path) == NULL) return;
  if (snprintf(log_path, sizeof(log_path), "%s/%s", strcmp(dir_path, "/") ? dir_path : "", name) >=
      (int)sizeof(log_path))
    return;
  const char *t = getenv("SC_IOFAULT_TRACE");
  if (t && *t)
    trace_fd =
        (int)syscall(SYS_openat, AT_FDCWD, t, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  const char *f = getenv("SC_IOFAULT_FAIL");
  fail_at = f ? atol(f) : 0;
  const char *e = getenv("SC_IOFAULT_ERRNO");
  fail_errno = e && strcmp(e, "ENOSPC") == 0 ? ENOSPC : EIO;
  const char *sh = getenv("SC_IOFAULT_SHORT");
  short_writes = sh && strcmp(sh, "1") == 0;
  const char *k = getenv("SC_IOFAULT_KILL_LINE");
  kill_line = k ? atol(k) : 0;
  const char *h = getenv("SC_IOFAULT_HOLD"), *hd = getenv("SC_IOFAULT_HOLD_DIR");
  if (h && hd && strlen(h) < sizeof(hold_where) && strlen(hd) < sizeof(hold_dir)) {
    strcpy(hold_where, h);
    strcpy(hold_dir, hd);
  }
  active = true;
}

/* What the descriptor is: 1 the log, 2 the log's directory, 0 anything else. */
static int what(int fd) {
  if (!active || fd < 0) return 0;
  char link[32], target[PATH_MAX];
  snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, target, sizeof(target) - 1);
  if (n <= 0) return 0;
  target[n] = '\0';
  if (strcmp(target, log_path) == 0) return 1;
  if (strcmp(target, dir_path) == 0) return 2;
  return 0;
}

/* Counts one call; true when it is the one to fail (errno is then set). */
static bool count(const char *kind, size_t bytes) {
  long n = __atomic_add_fetch(&calls, 1, __ATOMIC_SEQ_CST);
  if (n == fail_at) {
    trace("%ld fail %s %s\n", n, kind, fail_errno == ENOSPC ? "ENOSPC" : "EIO");
    errno = fail_errno;
    return true;
  }
  trace("%ld %s %zu\n", n, kind, bytes);
  return false;
}

static void hold(const char *where) {
  if (hold_where[0] == '\0' || strcmp(hold_where, where) != 0) return;
  if (__atomic_exchange_n(&held, 1, __ATOMIC_SEQ_CST)) return;
  int saved = errno;
  char path[PATH_MAX], pid[32];
  snprintf(path, sizeof(path), "%s/held", hold_dir);
  int fd = (int)syscall(SYS_openat, AT_FDCWD, path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd >= 0) {
    int n = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
    syscall(SYS_write, fd, pid, (size_t)n);
    syscall(SYS_close, fd);
  }
  snprintf(path, sizeof(path), "%s/release", hold_dir);
  struct timespec tick = {0, 10 * 1000 * 1000};
  for (int i = 0; i < 6000 && access(path, F_OK) != 0; i++)
    nanosleep(&tick, NULL);
  errno = saved;
}

#define REAL(name, ret, ...)                                                                       \
  static ret (*real_##name)(__VA_ARGS__);                                                          \
  if (real_##name == NULL) *(void **)&real_##name = dlsym(RTLD_NEXT, #name)

/* The bytes of `buf` up to the end of the line that makes `kill_line`, or `len` if none does. */
static size_t until_kill(const char *buf, size_t len) {
  if (kill_line <= 0) return len;
  long seen = __atomic_load_n(&lines, __ATOMIC_SEQ_CST);
  for (size_t i = 0; i < len; i++)
    if (buf[i] == '\n' && ++seen == kill_line) return i + 1;
  return len;
}

static void after_write(const char *buf, size_t done) {
  for (size_t i = 0; i < done; i++)
    if (buf[i] == '\n' && __atomic_add_fetch(&lines, 1, __ATOMIC_SEQ_CST) == kill_line) {
      trace("kill after line %ld\n", kill_line);
      kill(getpid(), SIGKILL);
    }
}

/* A write of the log that fails: -1, or with SC_IOFAULT_SHORT the first half for real (the rest
 * then fails). `put` writes `len` bytes at the caller's position. */
static ssize_t failed_write(const char *buf, size_t len,
                            ssize_t (*put)(const char *, size_t, void *), void *how) {
  if (!short_writes || len < 2) return -1;
  int saved = errno;
  ssize_t n = put(buf, len / 2, how);
  if (n <= 0) {
    errno = saved;
    return -1;
  }
  trace("- short write of %zd of %zu bytes\n", n, len);
  after_write(buf, (size_t)n);
  __atomic_store_n(&rest_fails, 1, __ATOMIC_SEQ_CST);
  return n;
}

/* True when this write is the rest of a short one: it fails (errno is set). */
static bool rest_of_short(void) {
  if (!__atomic_exchange_n(&rest_fails, 0, __ATOMIC_SEQ_CST)) return false;
  trace("- the rest fails %s\n", fail_errno == ENOSPC ? "ENOSPC" : "EIO");
  errno = fail_errno;
  return true;
}

typedef struct {
  int fd;
  off_t off;
  bool positional;
} where_to;

static ssize_t put_plain(const char *buf, size_t len, void *how) {
  REAL(write, ssize_t, int, const void *, size_t);
  REAL(pwrite, ssize_t, int, const void *, size_t, off_t);
  where_to *w = how;
  return w->positional ? real_pwrite(w->fd, buf, len, w->off) : real_write(w->fd, buf, len);
}

ssize_t write(int fd, const void *buf, size_t len) {
  REAL(write, ssize_t, int, const void *, size_t);
  if (what(fd) != 1) return real_write(fd, buf, len);
  if (rest_of_short()) return -1;
  if (count("write", len)) return failed_write(buf, len, put_plain, &(where_to){fd, 0, false});
  size_t part = until_kill(buf, len);
  ssize_t n = real_write(fd, buf, part);
  if (n > 0) after_write(buf, (size_t)n);
  return n;
}

ssize_t pwrite(int fd, const void *buf, size_t len, off_t off) {
  REAL(pwrite, ssize_t, int, const void *, size_t, off_t);
  if (what(fd) != 1) return real_pwrite(fd, buf, len, off);
  if (rest_of_short()) return -1;
  if (count("write", len)) return failed_write(buf, len, put_plain, &(where_to){fd, off, true});
  size_t part = until_kill(buf, len);
  ssize_t n = real_pwrite(fd, buf, part, off);
  if (n > 0) after_write(buf, (size_t)n);
  return n;
}

ssize_t pwrite64(int fd, const void *buf, size_t len, off_t off) {
  return pwrite(fd, buf, len, off);
}

/* A vector is written one piece at a time when a kill is due inside it; otherwise whole. */
static ssize_t vector_write(int fd, const struct iovec *iov, int cnt, off_t off, bool positional) {
  REAL(writev, ssize_t, int, const struct iovec *, int);
  REAL(pwritev, ssize_t, int, const struct iovec *, int, off_t);
  if (what(fd) != 1)
    return positional ? real_pwritev(fd, iov, cnt, off) : real_writev(fd, iov, cnt);
  size_t total = 0;
  for (int i = 0; i < cnt; i++)
    total += iov[i].iov_len;
  if (rest_of_short() || count("write", total)) return -1;
  ssize_t done = 0;
  for (int i = 0; i < cnt; i++) {
    size_t part = until_kill(iov[i].iov_base, iov[i].iov_len);
    struct iovec one = {iov[i].iov_base, part};
    ssize_t n = positional ? real_pwritev(fd, &one, 1, off + done) : real_writev(fd, &one, 1);
    if (n < 0) return done > 0 ? done : -1;
    after_write(iov[i].iov_base, (size_t)n);
    done += n;
    if ((size_t)n < iov[i].iov_len) break;
  }
  return done;
}

ssize_t writev(int fd, const struct iovec *iov, int cnt) {
  return vector_write(fd, iov, cnt, 0, false);
}

ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off) {
  return vector_write(fd, iov, cnt, off, true);
}

ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off_t off) {
  return vector_write(fd, iov, cnt, off, true);
}

int fdatasync(int fd) {
  REAL(fdatasync, int, int);
  if (what(fd) != 0 && count("sync", 0)) return -1;
  return real_fdatasync(fd);
}

int fsync(int fd) {
  REAL(fsync, int, int);
  if (what(fd) != 0 && count("sync", 0)) return -1;
  return real_fsync(fd);
}

int sync_file_range(int fd, off_t off, off_t len, unsigned flags) {
  REAL(sync_file_range, int, int, off_t, off_t, unsigned);
  if (what(fd) == 1 && count("sync", 0)) return -1;
  return real_sync_file_range(fd, off, len, flags);
}

static void got_lock(void) {
  trace("- locked\n");
  hold("locked");
}

int flock(int fd, int op) {
  REAL(flock, int, int, int);
  bool log = what(fd) == 1 && (op & (LOCK_EX | LOCK_SH));
  if (log) hold("lock");
  int rc = real_flock(fd, op);
  if (log && rc == 0) got_lock();
  return rc;
}

static bool is_lock(int cmd) {
  return cmd == F_SETLK || cmd == F_SETLKW
#ifdef F_OFD_SETLK
         || cmd == F_OFD_SETLK || cmd == F_OFD_SETLKW
#endif
      ;
}

static int lock_call(const char *name, int fd, int cmd, void *arg) {
  typedef int (*fcntl_fn)(int, int, ...);
  static fcntl_fn real_fcntl, real_fcntl64;
  fcntl_fn *slot = strcmp(name, "fcntl") == 0 ? &real_fcntl : &real_fcntl64;
  if (*slot == NULL) *(void **)slot = dlsym(RTLD_NEXT, name);
  if (*slot == NULL) *(void **)slot = dlsym(RTLD_NEXT, "fcntl");
  bool log = is_lock(cmd) && what(fd) == 1 && ((struct flock *)arg)->l_type != F_UNLCK;
  if (log) hold("lock");
  int rc = (*slot)(fd, cmd, arg);
  if (log && rc == 0) got_lock();
  return rc;
}

/* Every fcntl command takes an int, a pointer or nothing; a pointer-sized read covers all three
 * on the ABIs this runs on. */
int fcntl(int fd, int cmd, ...) {
  va_list ap;
  va_start(ap, cmd);
  void *arg = va_arg(ap, void *);
  va_end(ap);
  return lock_call("fcntl", fd, cmd, arg);
}

int fcntl64(int fd, int cmd, ...) {
  va_list ap;
  va_start(ap, cmd);
  void *arg = va_arg(ap, void *);
  va_end(ap);
  return lock_call("fcntl64", fd, cmd, arg);
}

static int opened(int fd) {
  if (fd >= 0 && what(fd) == 1) hold("open");
  return fd;
}

int open(const char *path, int flags, ...) {
  REAL(open, int, const char *, int, ...);
  va_list ap;
  va_start(ap, flags);
  mode_t mode = (flags & (O_CREAT | O_TMPFILE)) ? va_arg(ap, mode_t) : 0;
  va_end(ap);
  return opened(real_open(path, flags, mode));
}

int open64(const char *path, int flags, ...) {
  REAL(open64, int, const char *, int, ...);
  va_list ap;
  va_start(ap, flags);
  mode_t mode = (flags & (O_CREAT | O_TMPFILE)) ? va_arg(ap, mode_t) : 0;
  va_end(ap);
  return opened(real_open64(path, flags, mode));
}

int openat(int dirfd, const char *path, int flags, ...) {
  REAL(openat, int, int, const char *, int, ...);
  va_list ap;
  va_start(ap, flags);
  mode_t mode = (flags & (O_CREAT | O_TMPFILE)) ? va_arg(ap, mode_t) : 0;
  va_end(ap);
  return opened(real_openat(dirfd, path, flags, mode));
}

int openat64(int dirfd, const char *path, int flags, ...) {
  REAL(openat64, int, int, const char *, int, ...);
  va_list ap;
  va_start(ap, flags);
  mode_t mode = (flags & (O_CREAT | O_TMPFILE)) ? va_arg(ap, mode_t) : 0;
  va_end(ap);
  return opened(real_openat64(dirfd, path, flags, mode));
}

/* Reads are only traced: the two-writer suite checks that a writer locks before it reads. */
ssize_t read(int fd, void *buf, size_t len) {
  REAL(read, ssize_t, int, void *, size_t);
  if (what(fd) == 1) trace("- read %zu\n", len);
  return real_read(fd, buf, len);
}

ssize_t pread(int fd, void *buf, size_t len, off_t off) {
  REAL(pread, ssize_t, int, void *, size_t, off_t);
  if (what(fd) == 1) trace("- read %zu\n", len);
  return real_pread(fd, buf, len, off);
}

ssize_t pread64(int fd, void *buf, size_t len, off_t off) {
  return pread(fd, buf, len, off);
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
  REAL(mmap, void *, void *, size_t, int, int, int, off_t);
  if (fd >= 0 && what(fd) == 1) trace("- read %zu\n", len);
  return real_mmap(addr, len, prot, flags, fd, off);
}

void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
  return mmap(addr, len, prot, flags, fd, off);
}
