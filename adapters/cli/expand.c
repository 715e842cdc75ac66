/* The ${...} variables of the exec kind: resolved in a stage's "env" values, "args" items and
 * "cwd", which reach the command as data, and found (to be refused) in "run" and "compensate",
 * which reach /bin/sh as syntax. Nothing here reads shell syntax. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exec_int.h"

static bool has_prefix(const char *name, size_t n, const char *prefix) {
  size_t k = strlen(prefix);
  return n > k && memcmp(name, prefix, k) == 0;
}

/* Whether ${name} is one of ours (config, context, task, tenant) rather than the shell's. */
static bool ours(const char *name, size_t n) {
  return name_is(name, n, "tenant") || name_is(name, n, "task") || has_prefix(name, n, "task.") ||
         name_is(name, n, "config") || has_prefix(name, n, "config.") ||
         name_is(name, n, "context") || has_prefix(name, n, "context.");
}

/* Follows a dotted path ("a.b.0") through objects (by member name) and arrays (by index). */
static const cJSON *walk(const cJSON *node, const char *path, size_t n) {
  char segment[256];
  while (node != NULL) {
    const char *dot = memchr(path, '.', n);
    size_t len = dot ? (size_t)(dot - path) : n;
    if (len == 0 || len >= sizeof(segment)) return NULL;
    memcpy(segment, path, len);
    segment[len] = '\0';
    if (cJSON_IsObject(node)) {
      node = cJSON_GetObjectItemCaseSensitive(node, segment);
    } else if (cJSON_IsArray(node) && strspn(segment, "0123456789") == len && len < 10) {
      node = cJSON_GetArrayItem(node, atoi(segment));
    } else {
      return NULL;
    }
    if (dot == NULL) return node;
    path += len + 1;
    n -= len + 1;
  }
  return NULL;
}

typedef enum var_result { VAR_FOREIGN, VAR_RESOLVED, VAR_UNRESOLVED, VAR_NOMEM } var_result;

/* Strings as they are; numbers, booleans, objects and arrays as compact JSON; null: no value. */
static var_result put_value(sc__buf *out, const cJSON *v) {
  if (v == NULL || cJSON_IsNull(v) || cJSON_IsInvalid(v)) return VAR_UNRESOLVED;
  if (cJSON_IsString(v)) return sc__buf_adds(out, v->valuestring) ? VAR_RESOLVED : VAR_NOMEM;
  char *json = cJSON_PrintUnformatted(v);
  bool ok = json != NULL && sc__buf_adds(out, json);
  free(json);
  return ok ? VAR_RESOLVED : VAR_NOMEM;
}

static var_result resolve(sc__buf *out, const char *name, size_t n, const cli_exec_vars *v) {
  if (name_is(name, n, "tenant"))
    return v->tenant == NULL              ? VAR_UNRESOLVED
           : sc__buf_adds(out, v->tenant) ? VAR_RESOLVED
                                          : VAR_NOMEM;
  if (name_is(name, n, "task.id"))
    return v->task_id == NULL              ? VAR_UNRESOLVED
           : sc__buf_adds(out, v->task_id) ? VAR_RESOLVED
                                           : VAR_NOMEM;
  if (name_is(name, n, "task") || has_prefix(name, n, "task.")) return VAR_UNRESOLVED;
  if (!ours(name, n)) return VAR_FOREIGN;
  bool config = name[3] == 'f'; /* "config" or "context" */
  const cJSON *root = config ? v->config : v->context;
  size_t skip = config ? 6 : 7;
  return put_value(out, n == skip ? root : walk(root, name + skip + 1, n - skip - 1));
}

bool cli_exec_find_variable(const char *text, size_t *offset, size_t *len) {
  for (const char *p = text; (p = strchr(p, '$')) != NULL;) {
    if (p[1] == '$' && p[2] == '{') { /* "$${": a literal "${" */
      p += 3;
      continue;
    }
    const char *close = p[1] == '{' ? strchr(p + 2, '}') : NULL;
    if (close != NULL && ours(p + 2, (size_t)(close - p - 2))) {
      *offset = (size_t)(p - text);
      *len = (size_t)(close + 1 - p);
      return true;
    }
    p++;
  }
  return false;
}

char *cli_exec_script(const char *text) {
  sc__buf out = {0};
  if (!sc__buf_add(&out, "", 0)) return NULL;
  for (const char *p = text;;) {
    const char *esc = strstr(p, "$${");
    if (esc == NULL) return sc__buf_adds(&out, p) ? out.p : (free(out.p), NULL);
    if (!sc__buf_add(&out, p, (size_t)(esc - p)) || !sc__buf_adds(&out, "${")) {
      free(out.p);
      return NULL;
    }
    p = esc + 3;
  }
}

char *cli_exec_expand(const char *text, const cli_exec_vars *vars, char **problem) {
  if (problem != NULL) *problem = NULL;
  sc__buf out = {0};
  if (!sc__buf_add(&out, "", 0)) return NULL;
  const char *p = text;
  while (*p != '\0') {
    const char *dollar = strchr(p, '$');
    if (dollar == NULL) {
      if (!sc__buf_adds(&out, p)) goto nomem;
      break;
    }
    if (!sc__buf_add(&out, p, (size_t)(dollar - p))) goto nomem;
    p = dollar;
    if (p[1] == '$' && p[2] == '{') {
      if (!sc__buf_add(&out, "${", 2)) goto nomem;
      p += 3;
      continue;
    }
    const char *close = p[1] == '{' ? strchr(p + 2, '}') : NULL;
    size_t whole = close ? (size_t)(close + 1 - p) : 1;
    var_result r = close ? resolve(&out, p + 2, (size_t)(close - p - 2), vars) : VAR_FOREIGN;
    if (r == VAR_NOMEM) goto nomem;
    if (r == VAR_UNRESOLVED) {
      if (problem != NULL) {
        sc__buf msg = {0};
        if (sc__buf_adds(&msg, "unresolved variable ") && sc__buf_add(&msg, p, whole))
          *problem = msg.p;
        else
          free(msg.p);
      }
      free(out.p);
      return NULL;
    }
    /* Another '$' (a lone one, the shell's ${HOME}) is text: nobody here reads it. */
    if (r == VAR_FOREIGN && !sc__buf_add(&out, p, whole)) goto nomem;
    p += whole;
  }
  return out.p;
nomem:
  free(out.p);
  return NULL;
}

void cli_exec_env_name(const char *variable, size_t len, char *out, size_t cap) {
  /* "${context.artifact}" -> ARTIFACT, "${task.id}" -> TASK_ID, "${config.db.0}" -> DB_0: the
   * last member name, or the last two when the last is an index or there is only a namespace. */
  const char *name = variable + 2;
  size_t n = len >= 3 ? len - 3 : 0;
  const char *from = name;
  const char *last = NULL, *before = NULL;
  for (const char *c = name; c < name + n; c++)
    if (*c == '.') before = last, last = c;
  if (last != NULL && strncmp(name, "task.", 5) != 0) {
    bool index = strspn(last + 1, "0123456789") == (size_t)(name + n - last - 1);
    from = index && before != NULL ? before + 1 : last + 1;
  }
  size_t k = 0;
  if (cap == 0) return;
  if (from < name + n && *from >= '0' && *from <= '9' && k + 1 < cap) out[k++] = 'V';
  for (const char *c = from; c < name + n && k + 1 < cap; c++) {
    char ch = *c;
    out[k++] = ch >= 'a' && ch <= 'z'                                 ? (char)(ch - 32)
               : (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ? ch
                                                                      : '_';
  }
  out[k] = '\0';
  bool taken = (k >= 3 && memcmp(out, "SC_", 3) == 0) || strcmp(out, "TRACEPARENT") == 0;
  if (taken && k + 2 < cap) { /* the kind sets those itself */
    memmove(out + 2, out, k);
    out[0] = 'V', out[1] = '_', k += 2;
  }
  out[k] = '\0';
}
