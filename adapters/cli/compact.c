/* `stagecoach compact LOG [--keep-finished D] [--archive FILE]`: rewrites a log to hold what
 * recovery needs and the recent history (sc_jsonl_compact, docs/jsonl.md "Compaction"). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

const char *cli_help_compact =
    "usage: stagecoach compact LOG [--keep-finished D] [--archive FILE]\n"
    "\n"
    "Rewrites LOG to hold what the unfinished tasks need to recover (their task.created and\n"
    "their events from their last context snapshot on) and the finished tasks whose last event\n"
    "is younger than D (a number with s, m, h or d; plain: seconds; default 0: none). The new\n"
    "log is a new hash chain whose first line, stagecoach.log.compacted, names the last chain\n"
    "value and the line count of the old one. It is written beside LOG, synced and renamed over\n"
    "it under the writer's lock: a running writer makes compact refuse, and a crash leaves the\n"
    "old log or the new one. --archive FILE keeps the old log under FILE (a hard link on the same\n"
    "file system; `stagecoach verify LOG --archive FILE` checks the link). A log with nothing to\n"
    "drop is left as it is.\n"
    "Exit codes: 0 compacted or nothing to do, 1 refused (a writer holds the lock, the chain\n"
    "breaks, a write or sync failed: the old log stays), 2 usage or input error.\n";

/* "90", "90s", "15m", "12h", "30d" to seconds; -1 when it is none of those. */
static long long parse_duration(const char *s) {
  char *end = NULL;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno != 0 || end == s || v < 0 || s[0] == '-' || s[0] == '+') return -1;
  long long unit = 1;
  if (*end == 's')
    end++;
  else if (*end == 'm')
    unit = 60, end++;
  else if (*end == 'h')
    unit = 3600, end++;
  else if (*end == 'd')
    unit = 86400, end++;
  if (*end != '\0' || v > 9000000000000000000LL / unit) return -1;
  return v * unit;
}

static void show_size(char *buf, size_t cap, uint64_t bytes) {
  if (bytes >= 10 * 1024 * 1024)
    snprintf(buf, cap, "%llu MiB", (unsigned long long)(bytes >> 20));
  else if (bytes >= 10 * 1024)
    snprintf(buf, cap, "%llu KiB", (unsigned long long)(bytes >> 10));
  else
    snprintf(buf, cap, "%llu bytes", (unsigned long long)bytes);
}

int cli_compact(int argc, char **argv) {
  const char *log = NULL;
  sc_jsonl_compact_options o;
  sc_jsonl_compact_options_init(&o);
  for (int i = 0; i < argc; i++) {
    if (strcmp(argv[i], "--keep-finished") == 0 || strcmp(argv[i], "--archive") == 0) {
      if (i + 1 >= argc) return cli_usage_error("compact", "%s needs a value", argv[i]);
      if (argv[i][2] == 'a') {
        o.archive = argv[++i];
        continue;
      }
      long long d = parse_duration(argv[++i]);
      if (d < 0)
        return cli_usage_error("compact",
                               "--keep-finished '%s': give a duration such as 3600, 90m, 12h "
                               "or 30d",
                               argv[i]);
      o.keep_finished_s = d;
    } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
      return cli_usage_error("compact", "unknown option '%s' (see stagecoach compact --help)",
                             argv[i]);
    } else if (log != NULL) {
      return cli_usage_error("compact", "one log at a time ('%s')", argv[i]);
    } else {
      log = argv[i];
    }
  }
  if (log == NULL) return cli_usage_error("compact", "which log? (stagecoach compact LOG)");
  sc_jsonl_compact_report r;
  int rc = sc_jsonl_compact(log, &o, &r);
  /* The library's messages may begin with "compact: ": the command's prefix says it already. */
  const char *msg = sc_error_message();
  if (strncmp(msg, "compact: ", 9) == 0) msg += 9;
  if (rc == SC_ENOTFOUND || rc == SC_EPARSE || rc == SC_EINVAL)
    return cli_usage_error("compact", "%s", msg);
  if (rc != SC_OK) {
    fprintf(stderr, "stagecoach compact: %s\n", msg);
    return CLI_EXIT_FAILED;
  }
  char before[32], after[32];
  show_size(before, sizeof(before), r.bytes_before);
  show_size(after, sizeof(after), r.bytes_after);
  if (!r.compacted) {
    printf("%s: nothing to compact (%llu lines, %s; %llu unfinished and %llu finished tasks "
           "kept); the file is unchanged%s%s%s\n",
           log, (unsigned long long)r.lines_before, before, (unsigned long long)r.unfinished,
           (unsigned long long)r.kept_finished, o.archive ? ", and no archive was made (" : "",
           o.archive ? o.archive : "", o.archive ? " does not exist)" : "");
  } else {
    printf("%s: compacted %llu lines (%s) to %llu (%s): %llu unfinished tasks kept for "
           "recovery, %llu finished kept, %llu dropped%s\n",
           log, (unsigned long long)r.lines_before, before, (unsigned long long)r.lines_after,
           after, (unsigned long long)r.unfinished, (unsigned long long)r.kept_finished,
           (unsigned long long)r.dropped, r.torn_tail_dropped ? "; a torn tail dropped" : "");
    printf("  the new chain begins by naming the old one's last value %.16s...\n",
           r.previous_chain);
    if (o.archive) printf("  the old log is kept as %s\n", o.archive);
  }
  /* The log is compacted either way; a summary that could not be written is still a failure of
   * the command (a script reading it would see nothing). */
  if (fflush(stdout) != 0 || ferror(stdout)) {
    fprintf(stderr, "stagecoach compact: %s was %s, but writing this summary failed: %s\n", log,
            r.compacted ? "compacted" : "left as it was", strerror(errno));
    return CLI_EXIT_FAILED;
  }
  return CLI_EXIT_COMPLETED;
}
