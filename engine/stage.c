/* Stage contexts: one per attempt, taken from a free list. The stage kind finishes an attempt with
 * sc_stage_complete() or sc_stage_fail(); an attempt the engine gave up on (timeout, cancel) is
 * "detached": its late result is logged and dropped, and the context is freed then. Also the
 * built-in kinds "fn" and "sleep". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"

sc_stage_ctx *sc__ctx_new(sc_task *t, const sc__stage *stage, int32_t index) {
  sc_engine *e = t->e;
  sc_stage_ctx *ctx = e->free_ctx;
  if (ctx != NULL)
    e->free_ctx = ctx->next_free;
  else if ((ctx = malloc(sizeof(*ctx))) == NULL)
    return NULL;
  /* link stays zeroed: only sc__ctx_detach() puts a context on a list, and only a detached one
   * is taken off it. */
  memset(ctx, 0, sizeof(*ctx));
  ctx->e = e;
  ctx->task = t;
  ctx->stage = stage;
  ctx->index = index;
  ctx->rollback = t->rollback;
  /* A redeploying rollback runs the previous config; a compensation undoes what ran with this one.
   */
  ctx->config = t->rollback && !t->compensating ? t->plan->previous_config : t->plan->config;
  ctx->state = CTX_RUNNING;
  ctx->started_ns = sc__now_ns();
  return ctx;
}

void sc__ctx_free(sc_engine *e, sc_stage_ctx *ctx) {
  free(ctx->message);
  cJSON_Delete(ctx->output);
  ctx->message = NULL;
  ctx->output = NULL;
  ctx->next_free = e->free_ctx;
  e->free_ctx = ctx;
}

static const sc__kind *resolve_kind(sc_stage_ctx *ctx) {
  sc__stage *st = (sc__stage *)ctx->stage; /* the cache fields are the engine's to update */
  if (st->kind_ref == NULL || st->kind_gen != ctx->e->kind_gen) {
    st->kind_ref = sc__engine_kind(ctx->e, st->kind);
    st->fn_ref = NULL;
    st->kind_gen = ctx->e->kind_gen;
  }
  return st->kind_ref;
}

void sc__ctx_fill_key(sc_stage_ctx *ctx) {
  if (ctx->key[0] != '\0' || ctx->root_id == NULL) return;
  /* Length-prefixed parts, so that no two different tuples hash the same bytes. */
  const char *kind = ctx->compensation ? "compensate" : ctx->rollback ? "rollback" : "run";
  char intent[16];
  snprintf(intent, sizeof(intent), "%u", (unsigned)ctx->intent);
  const char *parts[] = {"stagecoach-idempotency-key-1", ctx->root_id, ctx->stage->name, kind,
                         intent};
  sc__sha *sha = ctx->e->sha;
  char hex[72];
  if (sc__sha_begin(sha) != SC_OK) return;
  for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
    char len[24];
    int n = snprintf(len, sizeof(len), "%zu:", strlen(parts[i]));
    if (sc__sha_update(sha, len, (size_t)n) != SC_OK ||
        sc__sha_update(sha, parts[i], strlen(parts[i])) != SC_OK)
      return;
  }
  if (sc__sha_end_hex(sha, hex) != SC_OK) return;
  memcpy(ctx->key, hex + 7, 64); /* without the "sha256:" prefix */
  ctx->key[64] = '\0';
}

void sc__ctx_detach(sc_stage_ctx *ctx, bool call_cancel) {
  sc_engine *e = ctx->e;
  if (ctx->state == CTX_FINISHED) {
    sc__ctx_free(e, ctx); /* finished but not yet taken: nothing runs any more */
    return;
  }
  sc__ctx_fill_key(ctx); /* the root id is the task's: take the key while the task is there */
  ctx->root_id = NULL;
  ctx->state = CTX_DETACHED;
  ctx->cancelled = true;
  /* Keep the plan (names, params, config) alive for the kind until the stage finishes. */
  ctx->plan = ctx->task ? ctx->task->plan : NULL;
  if (ctx->plan) ctx->plan->refs++;
  ctx->task = NULL;
  sc__queue_insert_head(&e->detached, &ctx->link);
  const sc__kind *k = resolve_kind(ctx);
  if (call_cancel && k != NULL && k->vt.cancel != NULL) k->vt.cancel(ctx, k->udata);
}

int sc__ctx_start(sc_stage_ctx *ctx) {
  const sc__kind *k = resolve_kind(ctx);
  if (k == NULL)
    return sc__error(SC_EPLAN, "stage '%s': kind '%s' is not registered", ctx->stage->name,
                     ctx->stage->kind);
  if (ctx->compensation) {
    if (k->vt.compensate == NULL)
      return sc__error(SC_EPLAN, "stage '%s': kind '%s' has no compensate handler",
                       ctx->stage->name, ctx->stage->kind);
    return k->vt.compensate(ctx, k->udata);
  }
  return k->vt.start(ctx, k->udata);
}

/* Both finishing calls end here. Returns false when the finish was refused. */
static bool finish(sc_stage_ctx *ctx, int code, const char *message, bool retryable,
                   cJSON *output) {
  if (ctx == NULL) {
    cJSON_Delete(output);
    return false;
  }
  sc_engine *e = ctx->e;
  if (ctx->state == CTX_FINISHED) {
    sc__engine_log(e, SC_LOG_WARN, "stage '%s' attempt %u finished twice; the second is ignored",
                   ctx->stage->name, ctx->attempt);
    cJSON_Delete(output);
    return false;
  }
  if (ctx->state == CTX_DETACHED) {
    sc__engine_log(e, SC_LOG_INFO,
                   "stage '%s' attempt %u %s after the engine gave up on it; not acted on",
                   ctx->stage->name, ctx->attempt, code == SC_OK ? "completed" : "failed");
    cJSON_Delete(output);
    sc__queue_remove(&ctx->link); /* off e->detached */
    sc__plan_unref(e, ctx->plan);
    free(ctx->message);
    free(ctx);
    return false;
  }
  ctx->state = CTX_FINISHED;
  ctx->code = code;
  ctx->retryable = retryable;
  ctx->message = message && *message ? strdup(message) : NULL;
  ctx->output = output;
  sc__task_stage_finished(ctx->task, ctx);
  return true;
}

void sc_stage_complete(sc_stage_ctx *ctx, cJSON *output) {
  if (output != NULL && !cJSON_IsObject(output)) {
    cJSON_Delete(output);
    finish(ctx, SC_EINVAL, "stage output must be a JSON object", false, NULL);
    return;
  }
  char path[160];
  const char *why = sc__json_unfit(output, path, sizeof(path));
  if (why != NULL) {
    char msg[320];
    if (path[0] == '\0')
      snprintf(msg, sizeof(msg), "stage output %s: it could not be read back from a log", why);
    else
      snprintf(msg, sizeof(msg), "stage output: \"%s\" %s: it could not be read back from a log",
               path, why);
    cJSON_Delete(output);
    finish(ctx, SC_EINVAL, msg, false, NULL);
    return;
  }
  finish(ctx, SC_OK, NULL, false, output);
}

void sc_stage_fail(sc_stage_ctx *ctx, int code, const char *message, bool retryable) {
  finish(ctx, code < 0 ? code : SC_EIO, message, retryable, NULL);
}

const char *sc_stage_name(const sc_stage_ctx *ctx) {
  return ctx->stage->name;
}
int sc_stage_index(const sc_stage_ctx *ctx) {
  return ctx->index;
}
unsigned sc_stage_attempt(const sc_stage_ctx *ctx) {
  return ctx->attempt;
}
const cJSON *sc_stage_params(const sc_stage_ctx *ctx) {
  return ctx->stage->params;
}
const cJSON *sc_stage_config(const sc_stage_ctx *ctx) {
  return ctx->config;
}
const cJSON *sc_stage_context(const sc_stage_ctx *ctx) {
  return ctx->task ? sc__task_context(ctx->task) : ctx->e->empty;
}
bool sc_stage_is_rollback(const sc_stage_ctx *ctx) {
  return ctx->rollback;
}
bool sc_stage_is_compensation(const sc_stage_ctx *ctx) {
  return ctx->compensation;
}
const char *sc_stage_mode(const sc_stage_ctx *ctx) {
  return ctx->mode ? ctx->mode : "run";
}
bool sc_stage_cancelled(const sc_stage_ctx *ctx) {
  return ctx->cancelled;
}
sc_task *sc_stage_task(const sc_stage_ctx *ctx) {
  return ctx->task;
}
uv_loop_t *sc_stage_loop(const sc_stage_ctx *ctx) {
  return ctx->e->loop;
}
void sc_stage_set_data(sc_stage_ctx *ctx, void *data) {
  ctx->data = data;
}
void *sc_stage_get_data(const sc_stage_ctx *ctx) {
  return ctx->data;
}
const char *sc_stage_idempotency_key(const sc_stage_ctx *ctx) {
  /* The key is computed on first use: most stages never ask, and a digest costs a microsecond. */
  sc__ctx_fill_key((sc_stage_ctx *)ctx);
  return ctx->key;
}
const char *sc_stage_traceparent(const sc_stage_ctx *ctx) {
  return ctx->traceparent[0] ? ctx->traceparent : NULL;
}

/* ---- built-in kinds ---- */

static int fn_start(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  sc__stage *st = (sc__stage *)ctx->stage;
  if (st->fn_ref == NULL || st->kind_gen != ctx->e->kind_gen) {
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(st->params, "fn");
    st->fn_ref = cJSON_IsString(name) ? sc__engine_fn(ctx->e, name->valuestring) : NULL;
    if (st->fn_ref == NULL)
      return sc__error(SC_EPLAN, "stage '%s': no function '%s' is registered", st->name,
                       cJSON_IsString(name) ? name->valuestring : "(none)");
  }
  return st->fn_ref->fn(ctx, st->fn_ref->udata);
}

static void sleep_closed(uv_handle_t *h) {
  free(h);
}

static void sleep_done(uv_timer_t *timer) {
  sc_stage_ctx *ctx = timer->data;
  uv_close((uv_handle_t *)timer, sleep_closed);
  sc_stage_complete(ctx, NULL);
}

static int sleep_start(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  const cJSON *ms = cJSON_GetObjectItemCaseSensitive(sc_stage_params(ctx), "ms");
  uv_timer_t *timer = malloc(sizeof(*timer));
  if (timer == NULL) return sc__error(SC_ENOMEM, "sleep: out of memory");
  uv_timer_init(sc_stage_loop(ctx), timer);
  timer->data = ctx;
  sc_stage_set_data(ctx, timer);
  uv_timer_start(timer, sleep_done, cJSON_IsNumber(ms) ? (uint64_t)ms->valuedouble : 0, 0);
  return SC_OK;
}

static void sleep_cancel(sc_stage_ctx *ctx, void *udata) {
  (void)udata;
  uv_timer_t *timer = sc_stage_get_data(ctx);
  uv_close((uv_handle_t *)timer, sleep_closed);
  sc_stage_fail(ctx, SC_ECANCELLED, "sleep cancelled", false);
}

void sc__builtin_kinds(sc_engine *e) {
  static const sc_stage_kind fn_kind = {SC_STAGE_KIND_VERSION, fn_start, NULL, NULL};
  static const sc_stage_kind sleep_kind = {SC_STAGE_KIND_VERSION, sleep_start, sleep_cancel, NULL};
  sc_engine_register_kind(e, "fn", &fn_kind, NULL);
  sc_engine_register_kind(e, "sleep", &sleep_kind, NULL);
}
