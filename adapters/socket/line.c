/* The line parser: what one line from a client asks, checked member by member before anything
 * acts on it. A line is a subscribe ({"subscribe":{...}}) or a control op ({"op":"..."}). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "socket_int.h"

static const char *op_names[] = {"approve", "reject",   "pause",   "resume", "cancel",
                                 "retry",   "rollback", "pending", "status"};

const char *sc__sock_op_name(sc__sock_op op) {
  return (unsigned)op < sizeof(op_names) / sizeof(op_names[0]) ? op_names[op] : "?";
}

unsigned sc__sock_op_role(sc__sock_op op) {
  switch (op) {
    case SC__SOCK_OP_APPROVE:
    case SC__SOCK_OP_REJECT: return SC__SOCK_ROLE_APPROVER;
    case SC__SOCK_OP_PENDING:
    case SC__SOCK_OP_STATUS: return SC__SOCK_ROLE_VIEWER;
    default: return SC__SOCK_ROLE_OPERATOR;
  }
}

/* A member that must be a string when present. */
static int string_member(const cJSON *o, const char *name, const char **out, char *why,
                         size_t cap) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
  *out = NULL;
  if (v == NULL || cJSON_IsNull(v)) return SC_OK;
  if (!cJSON_IsString(v) || v->valuestring == NULL) {
    snprintf(why, cap, "\"%s\" must be a string", name);
    return SC_EINVAL;
  }
  *out = v->valuestring;
  return SC_OK;
}

static int parse_subscribe(const cJSON *sub, sc__sock_request *r, char *why, size_t cap) {
  if (!cJSON_IsObject(sub)) {
    snprintf(why, cap, "\"subscribe\" must be an object");
    return SC_EINVAL;
  }
  int rc;
  if ((rc = string_member(sub, "tenant", &r->tenant, why, cap)) != SC_OK ||
      (rc = string_member(sub, "task", &r->task, why, cap)) != SC_OK ||
      (rc = string_member(sub, "token", &r->token, why, cap)) != SC_OK)
    return rc;
  const cJSON *types = cJSON_GetObjectItemCaseSensitive(sub, "types");
  if (types && !cJSON_IsNull(types)) {
    if (!cJSON_IsArray(types)) {
      snprintf(why, cap, "\"types\" must be an array of strings");
      return SC_EINVAL;
    }
    for (const cJSON *t = types->child; t; t = t->next)
      if (!cJSON_IsString(t) || t->valuestring == NULL || t->valuestring[0] == '\0') {
        snprintf(why, cap,
                 "\"types\" must be an array of strings (\"stage.*\", \"task.completed\")");
        return SC_EINVAL;
      }
    r->types = types;
  }
  const cJSON *from = cJSON_GetObjectItemCaseSensitive(sub, "from_seq");
  if (from && !cJSON_IsNull(from)) {
    double d = cJSON_IsNumber(from) ? from->valuedouble : -1;
    /* below 2^53: every such integer is exact in JSON, and in the gap line that may answer it */
    if (!(d >= 1 && d < 9007199254740992.0) || floor(d) != d) {
      snprintf(why, cap, "\"from_seq\" must be an integer from 1 to 2^53 - 1");
      return SC_EINVAL;
    }
    if (r->task == NULL) {
      snprintf(why, cap, "\"from_seq\" replays one task: give \"task\" too");
      return SC_EINVAL;
    }
    r->has_from_seq = true;
    r->from_seq = (uint64_t)d;
  }
  return SC_OK;
}

static int parse_op(const cJSON *root, sc__sock_request *r, char *why, size_t cap) {
  const cJSON *op = cJSON_GetObjectItemCaseSensitive(root, "op");
  if (!cJSON_IsString(op) || op->valuestring == NULL) {
    snprintf(why, cap, "\"op\" must be a string");
    return SC_EINVAL;
  }
  size_t i, n = sizeof(op_names) / sizeof(op_names[0]);
  for (i = 0; i < n; i++)
    if (strcmp(op->valuestring, op_names[i]) == 0) break;
  if (i == n) {
    snprintf(why, cap,
             "unknown op '%.64s' (approve, reject, pause, resume, cancel, retry, rollback, "
             "pending, status)",
             op->valuestring);
    return SC_EINVAL;
  }
  r->op = (sc__sock_op)i;
  int rc;
  if ((rc = string_member(root, "token", &r->token, why, cap)) != SC_OK ||
      (rc = string_member(root, "task", &r->task, why, cap)) != SC_OK ||
      (rc = string_member(root, "stage", &r->stage, why, cap)) != SC_OK ||
      (rc = string_member(root, "comment", &r->comment, why, cap)) != SC_OK ||
      (rc = string_member(root, "reason", &r->reason, why, cap)) != SC_OK ||
      (rc = string_member(root, "from_stage", &r->from_stage, why, cap)) != SC_OK)
    return rc;
  const cJSON *reset = cJSON_GetObjectItemCaseSensitive(root, "reset_context");
  if (reset && !cJSON_IsBool(reset) && !cJSON_IsNull(reset)) {
    snprintf(why, cap, "\"reset_context\" must be true or false");
    return SC_EINVAL;
  }
  r->reset_context = cJSON_IsTrue(reset);
  const char *strategy;
  if ((rc = string_member(root, "strategy", &strategy, why, cap)) != SC_OK) return rc;
  r->strategy = SC_ROLLBACK_REDEPLOY;
  if (strategy && strcmp(strategy, "compensate") == 0)
    r->strategy = SC_ROLLBACK_COMPENSATE;
  else if (strategy && strcmp(strategy, "redeploy") != 0) {
    snprintf(why, cap, "\"strategy\" must be redeploy or compensate");
    return SC_EINVAL;
  }
  bool needs_task = r->op != SC__SOCK_OP_PENDING && r->op != SC__SOCK_OP_STATUS;
  if (needs_task && r->task == NULL) {
    snprintf(why, cap, "op %s needs \"task\"", op_names[i]);
    return SC_EINVAL;
  }
  if ((r->op == SC__SOCK_OP_APPROVE || r->op == SC__SOCK_OP_REJECT) && r->stage == NULL) {
    snprintf(why, cap, "op %s needs \"stage\"", op_names[i]);
    return SC_EINVAL;
  }
  return SC_OK;
}

int sc__sock_request_parse(const char *line, size_t len, sc__sock_request *r, char *why,
                           size_t cap) {
  memset(r, 0, sizeof(*r));
  why[0] = '\0';
  const char *end = NULL;
  r->root = cJSON_ParseWithLengthOpts(line, len, &end, false);
  if (r->root == NULL || !cJSON_IsObject(r->root)) {
    snprintf(why, cap, r->root ? "a line must be a JSON object" : "not JSON");
    sc__sock_request_free(r);
    return SC_EPARSE;
  }
  while (end != NULL && end < line + len && (*end == ' ' || *end == '\t'))
    end++;
  if (end != NULL && end < line + len) {
    snprintf(why, cap, "one JSON object per line: bytes after it");
    sc__sock_request_free(r);
    return SC_EPARSE;
  }
  const cJSON *id = cJSON_GetObjectItemCaseSensitive(r->root, "id");
  if (id && (cJSON_IsString(id) || cJSON_IsNumber(id))) r->id = id;
  const cJSON *sub = cJSON_GetObjectItemCaseSensitive(r->root, "subscribe");
  const cJSON *op = cJSON_GetObjectItemCaseSensitive(r->root, "op");
  int rc;
  if (sub && op) {
    snprintf(why, cap, "a line is a subscribe or an op, not both");
    rc = SC_EINVAL;
  } else if (sub) {
    r->kind = SC__SOCK_SUBSCRIBE;
    rc = parse_subscribe(sub, r, why, cap);
  } else if (op) {
    r->kind = SC__SOCK_OP;
    rc = parse_op(r->root, r, why, cap);
  } else {
    snprintf(why, cap, "a line is {\"subscribe\":{...}} or {\"op\":\"...\",...}");
    rc = SC_EINVAL;
  }
  if (rc != SC_OK) {
    const cJSON *keep = r->id;
    cJSON *root = r->root;
    r->root = NULL;
    memset(r, 0, sizeof(*r));
    /* the id survives a refusal, so that the reply can name it */
    if (keep) {
      r->root = root;
      r->id = keep;
    } else {
      cJSON_Delete(root);
    }
  }
  return rc;
}

void sc__sock_request_free(sc__sock_request *r) {
  cJSON_Delete(r->root);
  memset(r, 0, sizeof(*r));
}
