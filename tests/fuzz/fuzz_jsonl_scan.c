/* libFuzzer target: sc_jsonl_verify and sc_jsonl_scan on an arbitrary file. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <stagecoach/jsonl.h>

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
  char path[] = "/tmp/sc-fuzz-scan-XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) return 0;
  if (write(fd, data, size) != (ssize_t)size) {
    close(fd);
    unlink(path);
    return 0;
  }
  close(fd);
  sc_jsonl_report r;
  sc_jsonl_verify(path, &r);
  sc_unfinished *u = NULL;
  size_t n = 0;
  sc_jsonl_scan_options o;
  sc_jsonl_scan_options_init(&o);
  o.stop_at_last_good_line = true;
  if (sc_jsonl_scan_ex(path, &o, &u, &n, &r) == 0) sc_unfinished_free(u, n);
  unlink(path);
  return 0;
}
