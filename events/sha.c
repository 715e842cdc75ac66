/* SHA-256 through OpenSSL's EVP interface with the digest fetched once and the context reused:
 * OpenSSL 3 looks the algorithm up on every EVP_sha256()/SHA256() call, which costs more than
 * hashing a short line. */
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "internal.h"

struct sc__sha {
  EVP_MD *md;
  EVP_MD_CTX *ctx;
};

sc__sha *sc__sha_new(void) {
  sc__sha *s = calloc(1, sizeof(*s));
  if (s == NULL) return NULL;
  s->md = EVP_MD_fetch(NULL, "SHA256", NULL);
  s->ctx = EVP_MD_CTX_new();
  if (s->md == NULL || s->ctx == NULL) {
    sc__sha_free(s);
    return NULL;
  }
  return s;
}

void sc__sha_free(sc__sha *s) {
  if (s == NULL) return;
  EVP_MD_CTX_free(s->ctx);
  EVP_MD_free(s->md);
  free(s);
}

int sc__sha_raw(sc__sha *s, const void *data, size_t len, unsigned char out[32]) {
  sc__sha *own = NULL;
  if (s == NULL && (s = own = sc__sha_new()) == NULL)
    return sc__error(SC_ENOMEM, "cannot create a SHA-256 context");
  unsigned int n = 0;
  int ok = EVP_DigestInit_ex(s->ctx, s->md, NULL) && EVP_DigestUpdate(s->ctx, data, len) &&
           EVP_DigestFinal_ex(s->ctx, out, &n);
  sc__sha_free(own);
  return ok && n == 32 ? SC_OK : sc__error(SC_EIO, "SHA-256 failed");
}

void sc__hex(const unsigned char *in, size_t n, char *out) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[in[i] >> 4];
    out[2 * i + 1] = digits[in[i] & 15];
  }
}

int sc__sha_hex(sc__sha *s, const void *data, size_t len, char out[72]) {
  unsigned char raw[32];
  int rc = sc__sha_raw(s, data, len, raw);
  if (rc != SC_OK) return rc;
  memcpy(out, "sha256:", 7);
  sc__hex(raw, 32, out + 7);
  out[71] = '\0';
  return SC_OK;
}

int sc__sha_begin(sc__sha *s) {
  return EVP_DigestInit_ex(s->ctx, s->md, NULL) ? SC_OK : sc__error(SC_EIO, "SHA-256 failed");
}

int sc__sha_update(sc__sha *s, const void *data, size_t len) {
  return EVP_DigestUpdate(s->ctx, data, len) ? SC_OK : sc__error(SC_EIO, "SHA-256 failed");
}

int sc__sha_end_raw(sc__sha *s, unsigned char out[32]) {
  unsigned int n = 0;
  if (!EVP_DigestFinal_ex(s->ctx, out, &n) || n != 32) return sc__error(SC_EIO, "SHA-256 failed");
  return SC_OK;
}

int sc__sha_end_hex(sc__sha *s, char out[72]) {
  unsigned char raw[32];
  int rc = sc__sha_end_raw(s, raw);
  if (rc != SC_OK) return rc;
  memcpy(out, "sha256:", 7);
  sc__hex(raw, 32, out + 7);
  out[71] = '\0';
  return SC_OK;
}
