/* Admission: the engine's slots (max_active_tasks), the per-tenant locks and the order in which
 * waiting tasks get them, the lock provider that extends a tenant lock beyond this process, and
 * the rate limiter of recovered tasks.
 *
 * A tenant lock is always taken in this engine first (the `tenants` map gives one holder per
 * tenant and submission order among local waiters); with a provider set, the provider must grant
 * it too. A task the provider refuses stays PENDING and the engine asks again every retry_ms. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"

#define DEFAULT_TTL_MS   30000
#define DEFAULT_RETRY_MS 1000

static void arm_retry(sc_engine *e);
static void arm_renew(sc_engine *e);

/* ---- the pending list ---- */

void sc__pending_unlink(sc_task *t) {
  sc__queue_remove(&t->pending_link); /* harmless when on no list */
}

void sc__pending_append(sc_task *t) {
  if (!sc__queue_linked(&t->pending_link)) sc__queue_insert_tail(&t->e->pending, &t->pending_link);
}

/* ---- acquiring and releasing ---- */

static bool provider_acquire(sc_task *t) {
  sc_engine *e = t->e;
  const sc_lock_provider *p = &e->locks;
  int rc = p->acquire(t->tenant, t->id, p->ttl_ms, p->udata);
  if (rc == SC_OK) return true;
  if (rc != SC_EBUSY)
    sc__engine_log(e, SC_LOG_WARN, "lock provider: acquire of tenant '%s' for task %s failed: %s",
                   t->tenant, t->id, sc_strerror(rc));
  arm_retry(e);
  return false;
}

bool sc__task_try_acquire(sc_task *t) {
  sc_engine *e = t->e;
  if (t->active) return true;
  if (e->opts.max_active_tasks && e->active >= e->opts.max_active_tasks) return false;
  bool lock = e->opts.tenant_exclusive && t->tenant != NULL;
  if (lock) {
    sc_task *holder = sc__map_get(&e->tenants, t->tenant);
    if (holder != NULL && holder != t) return false;
    if (e->has_locks && !provider_acquire(t)) return false;
    if (holder == NULL && sc__map_put(&e->tenants, t->tenant, t) != 0) {
      if (e->has_locks) e->locks.release(t->tenant, t->id, e->locks.udata);
      return false;
    }
    t->holds_lock = true;
    if (e->has_locks) arm_renew(e);
  }
  t->active = true;
  e->active++;
  return true;
}

/* Wakes waiting tasks in submission order; each woken task already holds what it waited for, so
 * a later submission can never overtake an earlier one of the same tenant. */
void sc__wake_pending(sc_engine *e) {
  sc__queue *q, *next;
  sc__queue_foreach_safe(q, next, &e->pending) {
    sc_task *w = sc__queue_data(q, sc_task, pending_link);
    if (e->opts.max_active_tasks && e->active >= e->opts.max_active_tasks) break;
    if (sc__task_try_acquire(w)) {
      sc__pending_unlink(w);
      w->step = STEP_ADMIT;
      sc__engine_enqueue(e, w);
    }
  }
}

void sc__task_release_slot(sc_task *t) {
  sc_engine *e = t->e;
  if (t->holds_lock) {
    if (sc__map_get(&e->tenants, t->tenant) == t) sc__map_del(&e->tenants, t->tenant);
    if (e->has_locks) e->locks.release(t->tenant, t->id, e->locks.udata);
    t->holds_lock = false;
    t->lock_lost = false;
  }
  if (t->active) {
    t->active = false;
    e->active--;
  }
  if (!e->freeing) sc__wake_pending(e);
}

/* ---- the provider's timers ---- */

static void on_retry(uv_timer_t *h) {
  sc__wake_pending(h->data);
}

static void arm_retry(sc_engine *e) {
  if (uv_is_active((uv_handle_t *)&e->lock_retry)) return;
  uv_timer_start(&e->lock_retry, on_retry, e->locks.retry_ms, 0);
}

static void on_renew(uv_timer_t *h) {
  sc_engine *e = h->data;
  bool any = false;
  SC__MAP_FOREACH(&e->tenants, s) {
    sc_task *t = s->value;
    if (!t->holds_lock || t->lock_lost) continue;
    any = true;
    int rc = e->locks.renew(t->tenant, t->id, e->locks.ttl_ms, e->locks.udata);
    if (rc == SC_OK) continue;
    char why[256];
    snprintf(why, sizeof(why), "lost the lock of tenant '%s': %s", t->tenant, sc_strerror(rc));
    sc__task_request(t, SC__REQUEST_LOCK_LOST, SC_EBUSY, why);
  }
  if (!any) uv_timer_stop(&e->lock_renew);
}

static void arm_renew(sc_engine *e) {
  if (uv_is_active((uv_handle_t *)&e->lock_renew)) return;
  uint64_t every = e->locks.ttl_ms / 3 ? e->locks.ttl_ms / 3 : 1;
  uv_timer_start(&e->lock_renew, on_renew, every, every);
}

int sc__task_reacquire_lost_lock(sc_task *t) {
  sc_engine *e = t->e;
  if (!t->lock_lost) return SC_OK;
  int rc = e->locks.acquire(t->tenant, t->id, e->locks.ttl_ms, e->locks.udata);
  if (rc != SC_OK)
    return sc__error(SC_EBUSY, "cannot resume task %s: the lock of tenant '%s' is held elsewhere",
                     t->id, t->tenant);
  t->lock_lost = false;
  arm_renew(e);
  return SC_OK;
}

int sc_engine_set_lock_provider(sc_engine *e, const sc_lock_provider *p) {
  if (e == NULL) return sc__error(SC_EINVAL, "set_lock_provider: NULL engine");
  if (e->tenants.n > 0)
    return sc__error(SC_EBUSY, "set_lock_provider: %zu tenant locks are held", e->tenants.n);
  if (p == NULL) {
    e->has_locks = false;
    return SC_OK;
  }
  if (p->version < 1 || p->version > SC_LOCK_PROVIDER_VERSION)
    return sc__error(SC_EINVAL, "set_lock_provider: unsupported sc_lock_provider version %u",
                     p->version);
  if (p->acquire == NULL || p->renew == NULL || p->release == NULL)
    return sc__error(SC_EINVAL, "set_lock_provider: acquire, renew and release are required");
  e->locks = *p;
  if (e->locks.ttl_ms == 0) e->locks.ttl_ms = DEFAULT_TTL_MS;
  if (e->locks.retry_ms == 0) e->locks.retry_ms = DEFAULT_RETRY_MS;
  e->has_locks = true;
  return SC_OK;
}

/* ---- the recovery rate limiter ---- */

/* A token bucket of recovery_rate_per_s tokens a second, holding at most max(1, rate) tokens.
 * Returns 0 when a recovered task may go, or the milliseconds to wait. */
uint64_t sc__rate_wait_ms(sc_engine *e) {
  double rate = e->opts.recovery_rate_per_s;
  int64_t now = sc__now_ns();
  double burst = rate > 1 ? rate : 1;
  e->tokens += (double)(now - e->tokens_at_ns) / 1e9 * rate;
  if (e->tokens > burst) e->tokens = burst;
  e->tokens_at_ns = now;
  if (e->tokens >= 1) {
    e->tokens -= 1;
    return 0;
  }
  return (uint64_t)((1 - e->tokens) / rate * 1000.0) + 1;
}

/* ---- pending approvals ---- */

size_t sc_engine_pending_approvals(sc_engine *e, sc_pending_approval *out, size_t cap) {
  if (e == NULL) return 0;
  size_t n = 0;
  SC__MAP_FOREACH(&e->tasks, s) {
    sc_task *t = s->value;
    if (t->status != SC_TASK_AWAITING_APPROVAL || t->approval == NULL || t->approval->decided)
      continue;
    if (out != NULL && n < cap) {
      const sc__approval_state *a = t->approval;
      sc_pending_approval *p = &out[n];
      memset(p, 0, sizeof(*p)); /* the reserved room too */
      p->task = t;
      p->task_id = t->id;
      p->tenant_id = t->tenant;
      p->stage = t->run_plan->stages[a->index].name;
      p->stage_index = a->index;
      p->reason = a->reason;
      p->requested_ns = a->requested_ns;
      p->deadline_ns = a->deadline_ns;
      p->approvals = a->napproved;
      p->approvers_needed = a->needed;
    }
    n++;
  }
  return n;
}
