// SPDX-License-Identifier: GPL-2.0
/*
 * dm-userspace I/O generations: "wait until every bio remapped before now
 * has completed", without a lock on the hit path.
 *
 * Every bio remapped to a data device takes a reference on the current
 * generation, a percpu_ref (dmu_io_begin() in map(), dmu_io_end() in
 * end_io), so the hit path costs two per-cpu increments.  A drain cycle
 * makes the other generation current, kills the old one and, once the old
 * one's count drops to zero, runs the waiters that asked before the cycle
 * started.  Waiters that arrive while a cycle runs join the next one; as
 * with flushes, a single cycle serves all of them.
 *
 * Used before the space behind dropped mappings may be reused: INVALIDATE
 * (the write() returns after a drain), discards (their DONE waits for one)
 * and fills of NEW extents that replace cached mappings.
 */
#include <linux/completion.h>
#include <linux/refcount.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>

#include "dmu.h"

static void dmu_drain_release(struct percpu_ref *ref)
{
	struct dmu_io_gen *gen = container_of(ref, struct dmu_io_gen, ref);

	/* May run in interrupt context: the bio's completion. */
	queue_work(gen->drain->wq, &gen->drain->work);
}

/* Start a cycle; called with d->lock held and d->next not empty. */
static void dmu_drain_start(struct dmu_drain *d)
{
	unsigned int old = d->cur;

	lockdep_assert_held(&d->lock);
	d->running = true;
	list_splice_init(&d->next, &d->current_cycle);
	/*
	 * Whoever asked for this cycle changed the extent cache first, maybe
	 * on another cpu (this may be the worker).  map() joins a generation
	 * without cache->lock and then re-checks cache->seq: whoever sees the
	 * new cur must also see that seqcount change, and fall back.  A full
	 * barrier makes the asker's stores visible to all cpus before cur (a
	 * lock hand-over alone does not order them for a third cpu).
	 */
	smp_mb();
	/* New I/O joins the other generation before the old one is killed. */
	WRITE_ONCE(d->cur, !old);
	/* Pairs with smp_rmb() in dmu_io_begin(): a failed tryget sees cur. */
	smp_wmb();
	percpu_ref_kill(&d->gen[old].ref);
}

static void dmu_drain_work(struct work_struct *work)
{
	struct dmu_drain *d = container_of(work, struct dmu_drain, work);
	struct dmu_drain_waiter *w, *tmp;
	LIST_HEAD(done);

	/* The killed generation is zero: make it usable for the next cycle. */
	percpu_ref_reinit(&d->gen[!READ_ONCE(d->cur)].ref);
	spin_lock_irq(&d->lock);
	list_splice_init(&d->current_cycle, &done);
	d->running = false;
	if (!list_empty(&d->next))
		dmu_drain_start(d);
	spin_unlock_irq(&d->lock);
	wake_up_all(&d->idle);

	list_for_each_entry_safe(w, tmp, &done, list) {
		list_del_init(&w->list);
		w->fn(w);
	}
}

int dmu_drain_init(struct dmu_drain *d, struct workqueue_struct *wq)
{
	int r, i;

	spin_lock_init(&d->lock);
	INIT_LIST_HEAD(&d->next);
	INIT_LIST_HEAD(&d->current_cycle);
	INIT_WORK(&d->work, dmu_drain_work);
	init_waitqueue_head(&d->idle);
	d->wq = wq;
	d->cur = 0;
	for (i = 0; i < 2; i++) {
		d->gen[i].drain = d;
		r = percpu_ref_init(&d->gen[i].ref, dmu_drain_release,
				    PERCPU_REF_ALLOW_REINIT,
				    GFP_KERNEL);
		if (r) {
			while (i--)
				percpu_ref_exit(&d->gen[i].ref);
			return r;
		}
	}
	return 0;
}

static bool dmu_drain_idle(struct dmu_drain *d)
{
	bool idle;

	spin_lock_irq(&d->lock);
	idle = !d->running && list_empty(&d->next);
	spin_unlock_irq(&d->lock);
	return idle;
}

/*
 * All I/O has ended; a cycle under way finishes by itself.  Waiters that
 * come later (a write() that raced with the target's death) run at once.
 */
void dmu_drain_exit(struct dmu_drain *d)
{
	if (!d->wq)
		return;
	spin_lock_irq(&d->lock);
	d->dead = true;
	spin_unlock_irq(&d->lock);
	wait_event(d->idle, dmu_drain_idle(d));
	flush_work(&d->work);
	percpu_ref_exit(&d->gen[0].ref);
	percpu_ref_exit(&d->gen[1].ref);
	d->wq = NULL;
}

/*
 * Join the current generation; never fails, never sleeps; the caller holds
 * rcu_read_lock() (dmu_io_begin() takes it).  The RCU read
 * side spans reading cur and the tryget: a drain cycle cannot kill, drain
 * and reinit the generation read (that needs a grace period) in between,
 * so a successful tryget is always on a generation that is current or
 * whose cycle has not ended.
 */
struct percpu_ref *dmu_io_begin_rcu(struct dmu_drain *d)
{
	struct percpu_ref *ref;

	RCU_LOCKDEP_WARN(!rcu_read_lock_held(), "joining an I/O generation outside RCU");
	for (;;) {
		ref = &d->gen[READ_ONCE(d->cur)].ref;
		if (likely(percpu_ref_tryget_live_rcu(ref)))
			break;
		/* Pairs with smp_wmb() in dmu_drain_start(): re-read cur. */
		smp_rmb();
	}
	return ref;
}

struct percpu_ref *dmu_io_begin(struct dmu_drain *d)
{
	struct percpu_ref *ref;

	rcu_read_lock();
	ref = dmu_io_begin_rcu(d);
	rcu_read_unlock();
	return ref;
}

void dmu_io_end(struct percpu_ref *ref)
{
	percpu_ref_put(ref);
}

/* Call w->fn once every bio that began I/O before now has ended. */
void dmu_drain_async(struct dmu_drain *d, struct dmu_drain_waiter *w)
{
	unsigned long flags;
	bool dead;

	spin_lock_irqsave(&d->lock, flags);
	dead = d->dead;
	if (!dead) {
		list_add_tail(&w->list, &d->next);
		if (!d->running)
			dmu_drain_start(d);
	}
	spin_unlock_irqrestore(&d->lock, flags);
	if (dead)
		w->fn(w);
}

/*
 * A synchronous wait.  A fatal signal ends the wait early (-EINTR) but the
 * waiter stays queued, so it lives on the heap and whoever finishes last
 * frees it.
 */
struct dmu_drain_sync {
	struct dmu_drain_waiter w;
	struct completion done;
	refcount_t refs;
};

static void dmu_drain_sync_done(struct dmu_drain_waiter *w)
{
	struct dmu_drain_sync *s = container_of(w, struct dmu_drain_sync, w);

	complete(&s->done);
	if (refcount_dec_and_test(&s->refs))
		kfree(s);
}

struct dmu_drain_sync *dmu_drain_sync_alloc(void)
{
	struct dmu_drain_sync *s = kmalloc(sizeof(*s), GFP_NOIO);

	if (s) {
		init_completion(&s->done);
		refcount_set(&s->refs, 2);
		s->w.fn = dmu_drain_sync_done;
	}
	return s;
}

/* Start a drain with s and wait for it (killable); frees s. */
int dmu_drain_sync_wait(struct dmu_drain *d, struct dmu_drain_sync *s)
{
	int r;

	dmu_drain_async(d, &s->w);
	r = wait_for_completion_killable(&s->done);
	if (refcount_dec_and_test(&s->refs))
		kfree(s);
	return r ? -EINTR : 0;
}

int dmu_drain_wait(struct dmu_drain *d)
{
	struct dmu_drain_sync *s = dmu_drain_sync_alloc();

	return s ? dmu_drain_sync_wait(d, s) : -ENOMEM;
}
