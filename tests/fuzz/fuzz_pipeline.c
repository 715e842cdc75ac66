/* libFuzzer target: the pipeline file loader of the `stagecoach` command (its strict JSON reader
 * with positions, the checks of every member, the exec kind's own checks) on arbitrary bytes. A
 * refusal must come as "FILE:LINE:COLUMN: what" lines; an accepted file must load the same twice.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
  char path[] = "/tmp/sc-fuzz-pipeline-XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) return 0;
  if (write(fd, data, size) != (ssize_t)size) {
    close(fd);
    unlink(path);
    return 0;
  }
  close(fd);
  cli_pipeline p, q;
  char err[4096];
  int rc = cli_pipeline_load(path, NULL, &p, err, sizeof(err));
  if (rc != 0) {
    /* every line of the report names the file, then a line and a column */
    size_t n = strlen(path);
    for (const char *line = err; *line; line = strchr(line, '\n') + 1) {
      if (strncmp(line, path, n) != 0 || line[n] != ':' || strchr(line, '\n') == NULL) abort();
    }
  } else {
    if (cli_pipeline_load(path, NULL, &q, err, sizeof(err)) != 0) abort();
    if (strcmp(p.fingerprint, q.fingerprint) != 0) abort();
    cli_pipeline_free(&q);
    cli_pipeline_free(&p);
  }
  unlink(path);
  return 0;
}
