/* The token file: "name:token[:roles]" lines, read once when the server starts. Tokens are kept
 * as SHA-256 digests and a presented token is compared with every entry in constant time, so
 * neither the time of a refusal nor its length tells how much of a token was right. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "socket_int.h"

static bool digest(const char *text, size_t len, unsigned char out[32]) {
  unsigned int n = 0;
  return EVP_Digest(text, len, out, &n, EVP_sha256(), NULL) == 1 && n == 32;
}

static int parse_roles(const char *text, size_t len, unsigned *roles) {
  *roles = 0;
  if (len == 0) {
    *roles = SC__SOCK_ROLE_VIEWER | SC__SOCK_ROLE_OPERATOR | SC__SOCK_ROLE_APPROVER;
    return SC_OK;
  }
  size_t i = 0;
  while (i <= len) {
    size_t j = i;
    while (j < len && text[j] != ',')
      j++;
    size_t n = j - i;
    if (n == 6 && memcmp(text + i, "viewer", 6) == 0)
      *roles |= SC__SOCK_ROLE_VIEWER;
    else if (n == 8 && memcmp(text + i, "operator", 8) == 0)
      *roles |= SC__SOCK_ROLE_OPERATOR;
    else if (n == 8 && memcmp(text + i, "approver", 8) == 0)
      *roles |= SC__SOCK_ROLE_APPROVER;
    else
      return SC_EINVAL;
    i = j + 1;
  }
  return SC_OK;
}

int sc__sock_tokens_parse(const char *text, size_t len, const char *path, sc__sock_tokens *out) {
  memset(out, 0, sizeof(*out));
  size_t off = 0, lineno = 0;
  int rc = SC_OK;
  while (off < len && rc == SC_OK) {
    const char *line = text + off;
    const char *nl = memchr(line, '\n', len - off);
    size_t n = nl ? (size_t)(nl - line) : len - off;
    off += n + 1;
    lineno++;
    if (n > 0 && line[n - 1] == '\r') n--;
    while (n > 0 && (*line == ' ' || *line == '\t'))
      line++, n--;
    if (n == 0 || line[0] == '#') continue;
    const char *c1 = memchr(line, ':', n);
    const char *c2 = c1 ? memchr(c1 + 1, ':', n - (size_t)(c1 + 1 - line)) : NULL;
    size_t name_len = c1 ? (size_t)(c1 - line) : 0;
    size_t token_len = c1 ? (c2 ? (size_t)(c2 - c1 - 1) : n - name_len - 1) : 0;
    unsigned roles = 0;
    if (c1 == NULL || name_len == 0 || token_len == 0 || memchr(line, '\0', n) != NULL) {
      rc = sc_error_set(SC_EAUTH, "token file %s, line %zu: expected name:token[:roles]", path,
                        lineno);
      break;
    }
    if (parse_roles(c2 ? c2 + 1 : "", c2 ? n - (size_t)(c2 + 1 - line) : 0, &roles) != SC_OK) {
      rc = sc_error_set(SC_EAUTH,
                        "token file %s, line %zu: roles are viewer, operator, approver "
                        "(comma-separated)",
                        path, lineno);
      break;
    }
    sc__sock_token *v = realloc(out->v, (out->n + 1) * sizeof(*v));
    if (v == NULL || (v[out->n].name = malloc(name_len + 1)) == NULL) {
      if (v) out->v = v;
      rc = sc_error_set(SC_ENOMEM, "token file %s: out of memory", path);
      break;
    }
    out->v = v;
    memcpy(v[out->n].name, line, name_len); /* the text need not end in a NUL */
    v[out->n].name[name_len] = '\0';
    v[out->n].roles = roles;
    if (!digest(c1 + 1, token_len, v[out->n].digest)) {
      free(v[out->n].name);
      rc = sc_error_set(SC_ENOMEM, "token file %s: SHA-256 failed", path);
      break;
    }
    out->n++;
  }
  if (rc == SC_OK && out->n == 0)
    rc = sc_error_set(SC_EAUTH, "token file %s holds no token (name:token[:roles] lines)", path);
  if (rc != SC_OK) sc__sock_tokens_free(out);
  return rc;
}

int sc__sock_tokens_load(const char *path, sc__sock_tokens *out) {
  memset(out, 0, sizeof(*out));
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return sc_error_set(SC_EAUTH, "token file %s: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return sc_error_set(SC_EAUTH, "token file %s: not a regular file", path);
  }
  if (st.st_mode & (S_IRWXG | S_IRWXO)) {
    close(fd);
    return sc_error_set(SC_EAUTH,
                        "token file %s may be read or changed by others (mode %04o): "
                        "chmod 600 %s",
                        path, (unsigned)(st.st_mode & 07777), path);
  }
  if (st.st_size > (1 << 20)) {
    close(fd);
    return sc_error_set(SC_EAUTH, "token file %s is over 1 MiB", path);
  }
  char *text = malloc((size_t)st.st_size + 1);
  size_t got = 0;
  while (text && got < (size_t)st.st_size) {
    ssize_t n = read(fd, text + got, (size_t)st.st_size - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += (size_t)n;
  }
  close(fd);
  if (text == NULL) return sc_error_set(SC_ENOMEM, "token file %s: out of memory", path);
  text[got] = '\0';
  int rc = sc__sock_tokens_parse(text, got, path, out);
  OPENSSL_cleanse(text, got);
  free(text);
  return rc;
}

const sc__sock_token *sc__sock_tokens_find(const sc__sock_tokens *t, const char *token) {
  unsigned char want[32];
  if (token == NULL || !digest(token, strlen(token), want)) return NULL;
  const sc__sock_token *found = NULL;
  for (size_t i = 0; i < t->n; i++) /* no early exit: every entry costs the same */
    if (CRYPTO_memcmp(want, t->v[i].digest, sizeof(want)) == 0) found = &t->v[i];
  return found;
}

void sc__sock_tokens_free(sc__sock_tokens *t) {
  for (size_t i = 0; i < t->n; i++)
    free(t->v[i].name);
  free(t->v);
  memset(t, 0, sizeof(*t));
}
