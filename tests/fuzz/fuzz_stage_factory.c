/* libFuzzer target: the JSON stage factory on arbitrary JSON configs (refusals are fine; crashes,
 * leaks and a fingerprint that changes between two runs are not). */
#include <stdlib.h>
#include <string.h>

#include <stagecoach/stagecoach.h>

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
  cJSON *config = cJSON_ParseWithLength((const char *)data, size);
  if (config == NULL) return 0;
  char a[72], b[72];
  int rc = sc_plan_fingerprint(NULL, NULL, config, a);
  if (rc == SC_OK) {
    if (sc_plan_fingerprint(NULL, NULL, config, b) != SC_OK || memcmp(a, b, 72) != 0) abort();
    char *canon = sc_json_canonical(config, NULL);
    cJSON *back = canon ? cJSON_Parse(canon) : NULL;
    if (back != NULL && sc_plan_fingerprint(NULL, NULL, back, b) == SC_OK && memcmp(a, b, 72) != 0)
      abort(); /* the canonical form of a config is the same config */
    cJSON_Delete(back);
    free(canon);
  }
  cJSON_Delete(config);
  return 0;
}
