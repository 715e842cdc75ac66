/* The addresses a server listens on and a client connects to: unix:/path and loopback TCP only,
 * the Unix socket file born 0600, and a stale one (left by a crash) replaced only when nothing
 * listens on it. */
#define _GNU_SOURCE /* asprintf */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "socket_int.h"

/* unix:/path or tcp:LOOPBACK:PORT as a socket address; SC_EINVAL with a message for anything
 * else. Only loopback is served or reached: control lines would otherwise cross the network. */
int sc__sock_parse_address(const char *addr, struct sockaddr_storage *ss, socklen_t *len) {
  memset(ss, 0, sizeof(*ss));
  if (strncmp(addr, "unix:", 5) == 0) {
    const char *path = addr + 5;
    struct sockaddr_un *sa = (struct sockaddr_un *)ss;
    if (strlen(path) == 0 || strlen(path) >= sizeof(sa->sun_path))
      return sc_error_set(SC_EINVAL, "socket unix:%s: the path must be 1 to %zu bytes", path,
                          sizeof(sa->sun_path) - 1);
    sa->sun_family = AF_UNIX;
    memcpy(sa->sun_path, path, strlen(path));
    *len = sizeof(*sa);
    return SC_OK;
  }
  if (strncmp(addr, "tcp:", 4) != 0)
    return sc_error_set(SC_EINVAL, "socket address '%s': give unix:/path or tcp:127.0.0.1:PORT",
                        addr);
  const char *hostport = addr + 4, *colon = strrchr(hostport, ':');
  char host[64];
  if (colon == NULL || (size_t)(colon - hostport) >= sizeof(host))
    return sc_error_set(SC_EINVAL, "socket tcp:%s: give tcp:127.0.0.1:PORT or tcp:[::1]:PORT",
                        hostport);
  memcpy(host, hostport, (size_t)(colon - hostport));
  host[colon - hostport] = '\0';
  char *end;
  long port = strtol(colon + 1, &end, 10);
  if (*end != '\0' || colon[1] == '\0' || port < 0 || port > 65535)
    return sc_error_set(SC_EINVAL, "socket tcp:%s: the port must be 0..65535", hostport);
  if (strcmp(host, "[::1]") == 0 || strcmp(host, "::1") == 0) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
    a->sin6_family = AF_INET6;
    a->sin6_addr = in6addr_loopback;
    a->sin6_port = htons((uint16_t)port);
    *len = sizeof(*a);
    return SC_OK;
  }
  struct sockaddr_in *a = (struct sockaddr_in *)ss;
  a->sin_family = AF_INET;
  if (inet_pton(AF_INET, host, &a->sin_addr) != 1 || (ntohl(a->sin_addr.s_addr) >> 24) != 127)
    return sc_error_set(SC_EINVAL,
                        "socket tcp:%s: only a loopback address (127.0.0.1, [::1]) is served: "
                        "control lines would otherwise cross the network",
                        hostport);
  a->sin_port = htons((uint16_t)port);
  *len = sizeof(*a);
  return SC_OK;
}

int sc_socket_connect(const char *addr, int *fd_out) {
  if (fd_out) *fd_out = -1;
  if (addr == NULL || fd_out == NULL) return sc_error_set(SC_EINVAL, "socket: NULL argument");
  struct sockaddr_storage ss;
  socklen_t sl;
  int rc = sc__sock_parse_address(addr, &ss, &sl);
  if (rc != SC_OK) return rc;
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return sc_error_set(SC_EIO, "socket: %s", strerror(errno));
  if (connect(fd, (struct sockaddr *)&ss, sl) != 0) {
    int err = errno;
    close(fd);
    return sc_error_set(SC_EIO, "cannot connect to %s: %s", addr, strerror(err));
  }
  *fd_out = fd;
  return SC_OK;
}

int sc__sock_listen_unix(sc_socket *s, const struct sockaddr_un *sa) {
  const char *path = sa->sun_path;
  struct stat st;
  if (lstat(path, &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      return sc_error_set(SC_EINVAL, "socket unix:%s: the file exists and is not a socket", path);
    /* A socket file: replaced only when nothing listens on it (one a crash left behind). */
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe < 0) return sc_error_set(SC_EIO, "socket: %s", strerror(errno));
    int rc = connect(probe, (const struct sockaddr *)sa, sizeof(*sa));
    int err = errno;
    close(probe);
    if (rc == 0 || err != ECONNREFUSED)
      return sc_error_set(SC_EBUSY, "socket unix:%s: something listens on it already", path);
    if (unlink(path) != 0)
      return sc_error_set(SC_EIO, "socket unix:%s: cannot remove the stale socket: %s", path,
                          strerror(errno));
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return sc_error_set(SC_EIO, "socket: %s", strerror(errno));
  mode_t old = umask(0177); /* the file is born 0600: no moment where others could connect */
  int rc = bind(fd, (const struct sockaddr *)sa, sizeof(*sa));
  int err = errno;
  umask(old);
  if (rc != 0 || chmod(path, 0600) != 0 || listen(fd, 512) != 0 || lstat(path, &st) != 0) {
    err = rc != 0 ? err : errno;
    close(fd);
    if (rc == 0) unlink(path);
    return sc_error_set(err == EADDRINUSE ? SC_EBUSY : SC_EIO, "socket unix:%s: %s", path,
                        strerror(err));
  }
  s->unix_path = strdup(path);
  s->unix_ino = st.st_ino;
  s->unix_dev = st.st_dev;
  s->listen_fd = fd;
  if (asprintf(&s->addr, "unix:%s", path) < 0) s->addr = NULL;
  return SC_OK;
}

int sc__sock_listen_tcp(sc_socket *s, const char *addr, struct sockaddr_storage *ss, socklen_t sl) {
  int family = ss->ss_family;
  int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return sc_error_set(SC_EIO, "socket: %s", strerror(errno));
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  if (bind(fd, (struct sockaddr *)ss, sl) != 0 || listen(fd, 512) != 0) {
    int err = errno;
    close(fd);
    return sc_error_set(err == EADDRINUSE ? SC_EBUSY : SC_EIO, "socket %s: %s", addr,
                        strerror(err));
  }
  sl = sizeof(*ss);
  getsockname(fd, (struct sockaddr *)ss, &sl);
  char host[INET_ADDRSTRLEN] = "127.0.0.1";
  unsigned bound;
  if (family == AF_INET6) {
    bound = ntohs(((struct sockaddr_in6 *)ss)->sin6_port);
  } else {
    bound = ntohs(((struct sockaddr_in *)ss)->sin_port);
    inet_ntop(AF_INET, &((struct sockaddr_in *)ss)->sin_addr, host, sizeof(host));
  }
  s->listen_fd = fd;
  if (asprintf(&s->addr, "tcp:%s:%u", family == AF_INET6 ? "[::1]" : host, bound) < 0)
    s->addr = NULL;
  return SC_OK;
}
