/* libFuzzer target: sc_jsonl_verify and sc_jsonl_scan on an arbitrary file, twice: as it is (the
 * chain check against garbage), and with a valid chain member appended to each line that ends in
 * '}' (the chain rule of docs/jsonl.md), so that the fuzzer reaches what the scan does with lines
 * whose chain verifies. Every request the scan returns is then handed to sc_recovery_plan. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

#include <stagecoach/jsonl.h>

static const char hexdigits[] = "0123456789abcdef";

/* Writes data with each line that ends in '}' given its chain member. */
static size_t chained(const unsigned char *data, size_t size, unsigned char *out) {
  char prev[64];
  memset(prev, '0', sizeof(prev));
  size_t o = 0;
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  for (size_t i = 0; i < size;) {
    const unsigned char *nl = memchr(data + i, '\n', size - i);
    size_t len = nl ? (size_t)(nl - (data + i)) : size - i;
    const unsigned char *line = data + i;
    if (len > 0 && line[len - 1] == '}' && md != NULL) {
      unsigned char digest[32];
      EVP_DigestInit_ex(md, EVP_sha256(), NULL);
      EVP_DigestUpdate(md, prev, sizeof(prev));
      EVP_DigestUpdate(md, line, len);
      EVP_DigestFinal_ex(md, digest, NULL);
      for (int k = 0; k < 32; k++) {
        prev[2 * k] = hexdigits[digest[k] >> 4];
        prev[2 * k + 1] = hexdigits[digest[k] & 15];
      }
      memcpy(out + o, line, len - 1);
      o += len - 1;
      memcpy(out + o, ",\"chain\":\"", 10);
      o += 10;
      memcpy(out + o, prev, 64);
      o += 64;
      memcpy(out + o, "\"}", 2);
      o += 2;
    } else {
      memcpy(out + o, line, len);
      o += len;
    }
    if (nl != NULL) out[o++] = '\n';
    i += len + (nl != NULL);
  }
  EVP_MD_CTX_free(md);
  return o;
}

static void scan_file(const unsigned char *data, size_t size, sc_engine *e) {
  char path[] = "/tmp/sc-fuzz-scan-XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) return;
  if (write(fd, data, size) != (ssize_t)size) {
    close(fd);
    unlink(path);
    return;
  }
  close(fd);
  sc_jsonl_report r;
  sc_jsonl_verify(path, &r);
  sc_unfinished *u = NULL;
  size_t n = 0;
  sc_jsonl_scan_options o;
  sc_jsonl_scan_options_init(&o);
  o.stop_at_last_good_line = true;
  if (sc_jsonl_scan_ex(path, &o, &u, &n, &r) == 0) {
    for (size_t i = 0; i < n; i++) {
      cJSON *plan = NULL;
      if (sc_recovery_plan(e, &u[i].request, &plan) == SC_OK) cJSON_Delete(plan);
    }
    sc_unfinished_free(u, n);
  }
  unlink(path);
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
  static sc_engine *e;
  if (e == NULL && sc_engine_new(NULL, NULL, &e) != SC_OK) abort();
  scan_file(data, size, e);
  /* each line grows by at most 76 bytes */
  size_t lines = 1;
  for (size_t i = 0; i < size; i++)
    lines += data[i] == '\n';
  unsigned char *with_chain = malloc(size + lines * 76 + 1);
  if (with_chain == NULL) return 0;
  scan_file(with_chain, chained(data, size, with_chain), e);
  free(with_chain);
  return 0;
}
