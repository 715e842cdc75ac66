/* libFuzzer target: the socket adapter's line parser and token file parser on arbitrary bytes.
 * Neither may crash, leak or read past the input; a parsed request must name a known op or a
 * subscribe, and a refused one must leave nothing allocated but the id it keeps for the reply. */
#include <stdlib.h>
#include <string.h>

#include "../../adapters/socket/socket_int.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
  sc__sock_request r;
  char why[256];
  int rc = sc__sock_request_parse((const char *)data, size, &r, why, sizeof(why));
  if (rc == SC_OK) {
    if (r.kind == SC__SOCK_OP && strcmp(sc__sock_op_name(r.op), "?") == 0) abort();
    if (r.has_from_seq && (r.task == NULL || r.from_seq == 0)) abort();
  } else if (rc != SC_EPARSE && rc != SC_EINVAL) {
    abort();
  }
  sc__sock_request_free(&r);
  sc__sock_tokens t;
  if (sc__sock_tokens_parse((const char *)data, size, "fuzz", &t) == SC_OK) {
    if (t.n == 0) abort();
    for (size_t i = 0; i < t.n; i++)
      if (t.v[i].name[0] == '\0' || t.v[i].roles == 0) abort();
    sc__sock_tokens_free(&t);
  }
  return 0;
}
