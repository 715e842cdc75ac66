/* The engine: its loop and handles, the stage-kind and function registries, subscriptions, the
 * run queue that drives tasks without recursion, sc_engine_post, and teardown. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"

void sc__engine_log(sc_engine *e, sc_log_level level, const char *fmt, ...) {
  if (e->opts.log == NULL) return;
  char msg[768];
  SC__FORMAT_ARGS(msg, fmt);
  e->opts.log(e, level, msg, e->opts.log_udata);
}

/* ---- the run queue ---- */

/* Runs the queued tasks. A task that keeps finishing stages synchronously is re-queued after a
 * budget of steps (task.c), and one call serves only the tasks queued when it began, so the loop
 * gets a turn between rounds. */
static void drain(sc_engine *e) {
  if (e->draining) return;
  e->draining = true;
  /* This round: the tasks queued now. A task queued while it runs goes to e->ready, the next
   * round; one let go meanwhile leaves this list like any other. */
  sc__queue round;
  sc__queue_init(&round);
  sc__queue_move(&e->ready, &round);
  while (!sc__queue_empty(&round)) {
    sc__queue *q = sc__queue_head(&round);
    sc__queue_remove(q);
    sc__task_step(sc__queue_data(q, sc_task, ready_link));
  }
  e->draining = false;
  if (sc__queue_empty(&e->ready) && e->kick_active) {
    uv_idle_stop(&e->kick);
    e->kick_active = false;
  }
}

static void on_kick(uv_idle_t *h) {
  drain(h->data);
}

void sc__engine_enqueue(sc_engine *e, sc_task *t) {
  if (sc__queue_linked(&t->ready_link) || e->freeing) return;
  sc__queue_insert_tail(&e->ready, &t->ready_link);
  if (!e->kick_active) {
    uv_idle_start(&e->kick, on_kick);
    e->kick_active = true;
  }
}

/* ---- posting from other threads ---- */

static void on_async(uv_async_t *h) {
  sc_engine *e = h->data;
  uv_mutex_lock(&e->post_lock);
  sc__post *list = e->posts;
  e->posts = NULL;
  uv_mutex_unlock(&e->post_lock);
  /* The list is newest first; run in posting order. */
  sc__post *rev = NULL;
  while (list) {
    sc__post *next = list->next;
    list->next = rev;
    rev = list;
    list = next;
  }
  while (rev) {
    sc__post *next = rev->next;
    rev->fn(e, rev->udata);
    free(rev);
    rev = next;
  }
}

int sc_engine_post(sc_engine *e, void (*fn)(sc_engine *, void *), void *udata) {
  if (e == NULL || fn == NULL) return sc__error(SC_EINVAL, "post: NULL argument");
  sc__post *p = malloc(sizeof(*p));
  if (p == NULL) return sc__error(SC_ENOMEM, "post: out of memory");
  p->fn = fn;
  p->udata = udata;
  uv_mutex_lock(&e->post_lock);
  p->next = e->posts;
  e->posts = p;
  uv_mutex_unlock(&e->post_lock);
  uv_async_send(&e->async);
  return SC_OK;
}

/* ---- registries ---- */

const sc__kind *sc__engine_kind(sc_engine *e, const char *name) {
  for (size_t i = 0; i < e->nkinds; i++)
    if (strcmp(e->kinds[i].name, name) == 0) return &e->kinds[i];
  return NULL;
}

const sc__fn *sc__engine_fn(sc_engine *e, const char *name) {
  for (size_t i = 0; i < e->nfns; i++)
    if (strcmp(e->fns[i].name, name) == 0) return &e->fns[i];
  return NULL;
}

int sc_engine_register_kind(sc_engine *e, const char *name, const sc_stage_kind *kind,
                            void *udata) {
  if (e == NULL || name == NULL || !*name || kind == NULL || kind->start == NULL)
    return sc__error(SC_EINVAL, "register_kind: a kind needs a name and a start function");
  if (kind->version < 1 || kind->version > SC_STAGE_KIND_VERSION)
    return sc__error(SC_EINVAL, "register_kind: unsupported sc_stage_kind version %u",
                     kind->version);
  sc__kind *k = (sc__kind *)sc__engine_kind(e, name);
  if (k == NULL) {
    if (!sc__grow(&e->kinds, &e->kinds_cap, e->nkinds + 1, sizeof(*e->kinds), 8))
      return sc__error(SC_ENOMEM, "register_kind: out of memory");
    k = &e->kinds[e->nkinds];
    if ((k->name = strdup(name)) == NULL)
      return sc__error(SC_ENOMEM, "register_kind: out of memory");
    e->nkinds++;
  }
  k->vt = *kind;
  k->udata = udata;
  e->kind_gen++; /* a growth may have moved every entry: stages re-resolve */
  return SC_OK;
}

int sc_engine_register_fn(sc_engine *e, const char *name, sc_stage_fn fn, void *udata) {
  if (e == NULL || name == NULL || !*name || fn == NULL)
    return sc__error(SC_EINVAL, "register_fn: a function needs a name");
  sc__fn *f = (sc__fn *)sc__engine_fn(e, name);
  if (f == NULL) {
    if (!sc__grow(&e->fns, &e->fns_cap, e->nfns + 1, sizeof(*e->fns), 8))
      return sc__error(SC_ENOMEM, "register_fn: out of memory");
    f = &e->fns[e->nfns];
    if ((f->name = strdup(name)) == NULL) return sc__error(SC_ENOMEM, "register_fn: out of memory");
    e->nfns++;
  }
  f->fn = fn;
  f->udata = udata;
  e->kind_gen++;
  return SC_OK;
}

int sc_engine_subscribe(sc_engine *e, const sc_subscriber *sub, sc_subscription **out) {
  if (out) *out = NULL;
  if (e == NULL) return sc__error(SC_EINVAL, "subscribe: NULL engine");
  return sc__bus_subscribe(e->bus, sub, out);
}

/* ---- UUIDv7 ---- */

static uint64_t next_random(sc_engine *e) {
  /* xorshift128+, seeded from the kernel once per engine: ids need uniqueness, not secrecy. */
  uint64_t s1 = e->uuid_state[0];
  const uint64_t s0 = e->uuid_state[1];
  e->uuid_state[0] = s0;
  s1 ^= s1 << 23;
  e->uuid_state[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
  return e->uuid_state[1] + s0;
}

void sc__span_id(sc_engine *e, char out[17]) {
  uint64_t r;
  while ((r = next_random(e)) == 0) {
  }
  unsigned char b[8];
  for (int i = 0; i < 8; i++)
    b[i] = (unsigned char)(r >> (56 - 8 * i));
  sc__hex(b, 8, out);
  out[16] = '\0';
}

void sc__uuid_v7(sc_engine *e, char out[37]) {
  int64_t ms = sc__now_ns() / 1000000;
  /* rand_a counts up within one millisecond so ids of one engine sort by creation. */
  if (ms <= e->uuid_last_ms) {
    ms = e->uuid_last_ms;
    if (++e->uuid_seq > 0xfff) {
      ms = ++e->uuid_last_ms;
      e->uuid_seq = (uint32_t)(next_random(e) & 0x3ff);
    }
  } else {
    e->uuid_last_ms = ms;
    e->uuid_seq = (uint32_t)(next_random(e) & 0x3ff);
  }
  unsigned char b[16];
  uint64_t r = next_random(e);
  for (int i = 0; i < 6; i++)
    b[i] = (unsigned char)((uint64_t)ms >> (40 - 8 * i));
  b[6] = (unsigned char)(0x70 | ((e->uuid_seq >> 8) & 0x0f));
  b[7] = (unsigned char)(e->uuid_seq & 0xff);
  for (int i = 8; i < 16; i++)
    b[i] = (unsigned char)(r >> (8 * (i - 8)));
  b[8] = (unsigned char)(0x80 | (b[8] & 0x3f));
  char hex[32];
  sc__hex(b, 16, hex);
  snprintf(out, 37, "%.8s-%.4s-%.4s-%.4s-%.12s", hex, hex + 8, hex + 12, hex + 16, hex + 20);
}

/* ---- life cycle ---- */

static void on_handle_closed(uv_handle_t *h) {
  sc__engine_closing_done(h->data);
}

void sc__engine_closing_done(sc_engine *e) {
  e->closing--;
}

int sc_engine_new(uv_loop_t *loop, const sc_engine_options *opts, sc_engine **out) {
  if (out == NULL) return sc__error(SC_EINVAL, "engine_new: NULL out");
  *out = NULL;
  if (opts != NULL && (opts->version < 1 || opts->version > SC_ENGINE_OPTIONS_VERSION))
    return sc__error(SC_EINVAL, "engine_new: unsupported sc_engine_options version %u",
                     opts->version);
  sc_engine *e = calloc(1, sizeof(*e));
  if (e == NULL) return sc__error(SC_ENOMEM, "engine_new: out of memory");
  if (opts)
    e->opts = *opts;
  else
    sc_engine_options_init(&e->opts);
  if (e->opts.factory == NULL) e->opts.factory = sc_json_stage_factory;
  if (e->opts.recovery_rate_per_s < 0) e->opts.recovery_rate_per_s = 0;
  sc__map_init(&e->tasks);
  sc__map_init(&e->plans);
  sc__queue_init(&e->idle_plans);
  sc__map_init(&e->tenants);
  sc__queue_init(&e->ready);
  sc__queue_init(&e->pending);
  sc__queue_init(&e->let_go);
  sc__queue_init(&e->detached);
  sc__buf_init(&e->scratch);
  int rc = SC_ENOMEM;
  e->source = strdup(e->opts.source ? e->opts.source : "stagecoach");
  e->opts.source = e->source;
  e->sha = sc__sha_new();
  e->empty = cJSON_CreateObject();
  if (e->source == NULL || e->sha == NULL || e->empty == NULL) goto fail;
  if ((rc = sc__bus_new(sc__task_settle, e, &e->bus)) != SC_OK) goto fail;
  if ((rc = sc__digest(e->sha, &e->scratch, e->empty, e->empty_digest)) != SC_OK) goto fail;
  if (loop == NULL) {
    if ((loop = malloc(sizeof(*loop))) == NULL) goto fail;
    if (uv_loop_init(loop) != 0) {
      free(loop);
      rc = sc__error(SC_EIO, "engine_new: uv_loop_init failed");
      goto fail;
    }
    e->own_loop = true;
  }
  e->loop = loop;
  if (uv_mutex_init(&e->post_lock) != 0) {
    rc = sc__error(SC_EIO, "engine_new: uv_mutex_init failed");
    goto fail_loop;
  }
  uv_idle_init(loop, &e->kick);
  e->kick.data = e;
  uv_timer_init(loop, &e->lock_retry);
  e->lock_retry.data = e;
  uv_timer_init(loop, &e->lock_renew);
  e->lock_renew.data = e;
  uv_unref((uv_handle_t *)&e->lock_renew); /* renewing alone keeps nothing alive */
  uv_async_init(loop, &e->async, on_async);
  e->async.data = e;
  uv_unref((uv_handle_t *)&e->async);
  if (uv_random(NULL, NULL, e->uuid_state, sizeof(e->uuid_state), 0, NULL) != 0) {
    e->uuid_state[0] = (uint64_t)sc__now_ns() ^ (uint64_t)(uintptr_t)e;
    e->uuid_state[1] = 0x9e3779b97f4a7c15ull;
  }
  if ((e->uuid_state[0] | e->uuid_state[1]) == 0) e->uuid_state[1] = 1;
  e->tokens = 1;
  e->tokens_at_ns = sc__now_ns();
  sc__builtin_kinds(e);
  *out = e;
  return SC_OK;

fail_loop:
  if (e->own_loop) {
    uv_loop_close(loop);
    free(loop);
  }
fail:
  if (rc == SC_ENOMEM) sc__error(SC_ENOMEM, "engine_new: out of memory");
  sc__bus_free(e->bus);
  sc__sha_free(e->sha);
  cJSON_Delete(e->empty);
  sc__buf_free(&e->scratch);
  free(e->source);
  free(e);
  return rc;
}

int sc_engine_run(sc_engine *e) {
  if (e == NULL) return sc__error(SC_EINVAL, "engine_run: NULL engine");
  return uv_run(e->loop, UV_RUN_DEFAULT);
}

uv_loop_t *sc_engine_loop(sc_engine *e) {
  return e ? e->loop : NULL;
}

size_t sc_engine_task_count(const sc_engine *e) {
  return e ? e->tasks.n : 0;
}

sc_task *sc_engine_find_task(sc_engine *e, const char *task_id) {
  if (e == NULL || task_id == NULL) return NULL;
  return sc__map_get(&e->tasks, task_id);
}

void sc_engine_free(sc_engine *e) {
  if (e == NULL) return;
  e->freeing = true;
  /* Collect first: freeing a task edits the map being walked. */
  size_t n = e->tasks.n, i = 0;
  sc_task **all = n ? malloc(n * sizeof(*all)) : NULL;
  SC__MAP_FOREACH(&e->tasks, s) {
    if (all) all[i++] = s->value;
  }
  for (size_t j = 0; j < i; j++)
    sc__task_let_go(all[j]);
  free(all);
  /* Stages given up on earlier are freed with the engine; their kinds were told in cancel. */
  while (!sc__queue_empty(&e->detached)) {
    sc__queue *q = sc__queue_head(&e->detached);
    sc__queue_remove(q);
    sc_stage_ctx *c = sc__queue_data(q, sc_stage_ctx, link);
    sc__plan_unref(e, c->plan);
    c->plan = NULL;
    free(c->message);
    cJSON_Delete(c->output);
    free(c);
  }
  while (e->free_ctx) {
    sc_stage_ctx *c = e->free_ctx;
    e->free_ctx = c->next_free;
    free(c);
  }
  if (e->kick_active) uv_idle_stop(&e->kick);
  e->closing += 4;
  uv_close((uv_handle_t *)&e->lock_retry, on_handle_closed);
  uv_close((uv_handle_t *)&e->lock_renew, on_handle_closed);
  uv_close((uv_handle_t *)&e->kick, on_handle_closed);
  uv_close((uv_handle_t *)&e->async, on_handle_closed);
  /* Close callbacks run at the end of a loop iteration; a non-blocking run gets there. */
  do {
    uv_run(e->loop, UV_RUN_NOWAIT);
  } while (e->closing > 0);
  for (sc__post *p = e->posts, *next; p != NULL; p = next) {
    next = p->next;
    free(p);
  }
  uv_mutex_destroy(&e->post_lock);
  if (e->own_loop) {
    uv_loop_close(e->loop);
    free(e->loop);
  }
  sc__plan_cache_free(e);
  SC__MAP_FOREACH(&e->plans, s) {
    /* Left only by released tasks the caller still references: those free their plans later,
     * without the engine. */
    ((sc__plan *)s->value)->interned = false;
  }
  sc__task_orphan_let_go(e);
  sc__map_free(&e->tasks);
  sc__map_free(&e->plans);
  sc__map_free(&e->tenants);
  for (size_t k = 0; k < e->nkinds; k++)
    free(e->kinds[k].name);
  free(e->kinds);
  for (size_t k = 0; k < e->nfns; k++)
    free(e->fns[k].name);
  free(e->fns);
  sc__bus_free(e->bus);
  sc__sha_free(e->sha);
  sc__buf_free(&e->scratch);
  cJSON_Delete(e->empty);
  free(e->source);
  free(e);
}
