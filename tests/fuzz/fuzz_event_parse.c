/* libFuzzer target: sc_event_parse on arbitrary bytes, and a parsed event must encode and parse
 * back to the same text. */
#include <stdlib.h>
#include <string.h>

#include <stagecoach/stagecoach.h>

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
  sc_event_doc *d = NULL;
  if (sc_event_parse((const char *)data, size, &d) != SC_OK) return 0;
  size_t len;
  char *once = sc_event_to_json(sc_event_doc_event(d), &len);
  if (once != NULL) {
    sc_event_doc *again = NULL;
    if (sc_event_parse(once, len, &again) != SC_OK) abort();
    char *twice = sc_event_to_json(sc_event_doc_event(again), NULL);
    if (twice == NULL || strcmp(once, twice) != 0) abort();
    free(twice);
    sc_event_doc_free(again);
    free(once);
  }
  sc_event_doc_free(d);
  return 0;
}
