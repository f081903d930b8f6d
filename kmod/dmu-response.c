// SPDX-License-Identifier: GPL-2.0
/*
 * dm-userspace responses: everything a daemon write()s is checked here,
 * field by field, before it can touch the cache or any bio.
 *
 * EXTENT and COPY messages are accumulated under the request (or push)
 * they belong to until DMU_RSP_FINAL; then the whole answer is checked
 * (extents do not overlap each other or an extent being filled, COPY lies
 * inside a NEW extent of the same answer, writable extents only on
 * writable devices) and applied: extents enter the cache, an answer that
 * must report DONE becomes a tracker (dmu-tracker.c), NEW extents start
 * filling (dmu-fill.c), discards drain (dmu-discard.c), and the waiting
 * bios are driven through the cache again.  A bad message is counted,
 * fails the I/O of the request it names (if that request is pending), and
 * stops the write().
 *
 * Runs under dt->mutex inside memalloc_noio_save() (dmu-control.c), so no
 * allocation here can recurse into writeback to this device.
 */
#include <linux/blkdev.h>
#include <linux/err.h>
#include <linux/slab.h>

#include "dmu.h"

void dmu_drop_pushes(struct dmu_target *dt)
{
	struct dmu_msg *m, *tmp;

	lockdep_assert_held(&dt->mutex);
	list_for_each_entry_safe(m, tmp, &dt->pushes, list) {
		list_del_init(&m->list);
		dmu_req_free(container_of(m, struct dmu_req, msg));
	}
	dt->nr_pushes = 0;
}

static struct dmu_req *dmu_find_push(struct dmu_target *dt, u64 id)
{
	struct dmu_msg *m;

	list_for_each_entry(m, &dt->pushes, list) {
		struct dmu_req *req = container_of(m, struct dmu_req, msg);

		if (req->id == id)
			return req;
	}
	return NULL;
}

/* Unlink a sent MAP or COMMIT named by id, or NULL if none is sent. */
static struct dmu_req *dmu_take_sent(struct dmu_target *dt, u64 id)
{
	struct dmu_req *req;

	spin_lock_irq(&dt->lock);
	req = dmu_req_lookup(dt, id);
	if (req && req->state == DMU_RS_SENT)
		dmu_req_unlink(req);
	else
		req = NULL;
	spin_unlock_irq(&dt->lock);
	return req;
}

static void dmu_end_bios(struct bio_list *bios, int error)
{
	struct bio *bio;

	while ((bio = bio_list_pop(bios)))
		dmu_end_bio(bio, error);
}

/*
 * An answered (already unlinked) MAP failed with error: its bios fail (with
 * EIO unless error is a plain failure, dmu_guest_errno); a write or discard
 * still reports DONE with the error itself.  If even that cannot
 * be allocated the DONE is lost, which is safe: nothing of the answer was
 * applied, and an answer with NEW extents only fails here after write()
 * refused it (a bad answer, or no memory to apply it), so the daemon knows.
 */
static void dmu_answer_failed(struct dmu_target *dt, struct dmu_req *req,
			      int error)
{
	struct dmu_tracker *tk = NULL;

	dmu_end_bios(&req->bios, dmu_guest_errno(error));
	if (req->map_flags & (DMU_MAP_WRITE | DMU_MAP_DISCARD))
		tk = dmu_tracker_alloc(dt, req->map_flags & DMU_MAP_DISCARD ?
				       DMU_TK_DISCARD : DMU_TK_WRITE,
				       req->id, 0);
	if (tk) {
		tk->block = req->block;
		tk->nr_blocks = req->nr_blocks;
		tk->map_flags = req->map_flags;
		tk->error = error;
		dmu_tracker_start(tk);
		dmu_tracker_put(tk, 0);
	}
	dmu_req_free(req);
}

/* Fail an answered (already unlinked) request or push. */
static void dmu_fail_answered(struct dmu_target *dt, struct dmu_req *req,
			      int error)
{
	if (req->push)
		dmu_req_free(req);
	else if (req->msg.kind == DMU_MSG_COMMIT)
		dmu_commit_answered(dt, error);
	else
		dmu_answer_failed(dt, req, error);
}

static void dmu_bad(struct dmu_target *dt, const struct dmu_response *r,
		    const char *why)
{
	struct dmu_req *req = NULL;

	atomic64_inc(&dt->c.bad);
	DMERR_LIMIT("%s: bad message from daemon: %s (type %u flags %#x id %#llx block %llu nr %llu dev %u sector %llu)",
		    dt->key, why, r->type, r->flags, r->id, r->block,
		    r->nr_blocks, r->dev, r->sector);
	if (r->id & DMU_PUSH_ID) {
		req = dmu_find_push(dt, r->id);
		if (req) {
			list_del_init(&req->msg.list);
			dt->nr_pushes--;
		}
	} else if (r->id) {
		req = dmu_take_sent(dt, r->id);
	}
	if (req)
		dmu_fail_answered(dt, req, -EIO);
}

/*
 * Room for one more message of req's answer.  A daemon may leave answers
 * without FINAL to every MAP it was sent (up to max_unpublished of them),
 * so their room is bounded across the target too, not only per answer.
 */
static int dmu_append(struct dmu_req *req, const struct dmu_response *r)
{
	struct dmu_target *dt = req->dt;

	lockdep_assert_held(&dt->mutex);
	if (req->nr_msgs == DMU_MAX_ANSWER_MSGS)
		return -E2BIG;
	if (req->nr_msgs == req->max_msgs) {
		unsigned int max = min_t(unsigned int, max(8U, 2 * req->max_msgs),
					 DMU_MAX_ANSWER_MSGS);
		struct dmu_response *msgs;

		/* Only appends grow it, all under dt->mutex: no race here. */
		if (atomic_read(&dt->open_msgs) + max - req->max_msgs >
		    DMU_MAX_OPEN_MSGS)
			return -ENOSPC;
		msgs = krealloc_array(req->msgs, max, sizeof(*msgs), GFP_KERNEL);
		if (!msgs)
			return -ENOMEM;
		atomic_add(max - req->max_msgs, &dt->open_msgs);
		req->msgs = msgs;
		req->max_msgs = max;
	}
	req->msgs[req->nr_msgs++] = *r;
	return 0;
}

/* Extent nodes allocated before cache->lock is taken (map() never allocates). */
struct dmu_nodes {
	struct dmu_extent **v;
	unsigned int n;
};

static int dmu_nodes_alloc(struct dmu_target *dt, struct dmu_nodes *nodes,
			   unsigned int n)
{
	nodes->v = kcalloc(n, sizeof(*nodes->v), GFP_KERNEL);
	if (!nodes->v)
		return -ENOMEM;
	for (nodes->n = 0; nodes->n < n; nodes->n++) {
		nodes->v[nodes->n] = dmu_extent_alloc(&dt->cache);
		if (!nodes->v[nodes->n])
			return -ENOMEM;
	}
	return 0;
}

static void dmu_nodes_free(struct dmu_target *dt, struct dmu_nodes *nodes)
{
	while (nodes->n)
		dmu_extent_free(&dt->cache, nodes->v[--nodes->n]);
	kfree(nodes->v);
	nodes->v = NULL;
}

/* What an answer needs before it can be applied without failing. */
struct dmu_plan {
	struct dmu_nodes nodes;
	unsigned int nr_ext;
	unsigned int nr_new;
	unsigned int nr_copies;
	bool replaces_writable;		/* a NEW extent over a writable one */
	struct dmu_tracker *tk;
};

/*
 * Insert blocks [from, to) of the EXTENT message m; the caller holds
 * cache->lock and guarantees nothing BUSY overlaps them.  Takes one node
 * and one spare from nodes, giving the spare back if unused.  A NEW piece
 * is BUSY before it enters the cache, so eviction cannot take it: the
 * returned pointer stays valid only for NEW pieces.
 */
static struct dmu_extent *dmu_insert_piece(struct dmu_target *dt,
					   struct dmu_req *req,
					   struct dmu_tracker *tk,
					   const struct dmu_response *m,
					   u64 from, u64 to,
					   struct dmu_nodes *nodes)
{
	struct dmu_extent *e = nodes->v[--nodes->n];
	struct dmu_extent *spare = nodes->v[--nodes->n];

	e->block = from;
	e->nr_blocks = to - from;
	e->sector = m->kind == DMU_EXT_REMAP ?
		    m->sector + ((from - m->block) << dt->block_shift) : 0;
	e->dev = m->dev;
	e->kind = m->kind;
	/* A read-only table caches nothing writable (dmu_check_extent). */
	e->ext_flags = m->dev < dmu_writable_devs(dt) ?
		       m->ext_flags & DMU_EXT_WRITABLE : 0;
	if (req->push)
		e->state |= DMU_EXTENT_PUSHED;
	if (m->ext_flags & DMU_EXT_NEW) {
		e->state |= DMU_EXTENT_BUSY;
		e->owner = tk;
	}
	dmu_cache_insert(dt, e, &spare);
	if (spare)
		nodes->v[nodes->n++] = spare;
	return e;
}

/*
 * Check an answer against the cache and allocate what applying it needs:
 * extent nodes, and the tracker with its NEW extent and COPY records.
 * Returns why the answer is bad, or NULL with *error set on no memory (the
 * caller refuses the answer then too).
 * Nothing is changed, so a bad or failed answer leaves everything as it
 * was.  BUSY extents only appear under dt->mutex, which we hold: the count
 * can only shrink before dmu_apply_extents() inserts.
 */
static const char *dmu_plan_answer(struct dmu_target *dt, struct dmu_req *req,
				   struct dmu_plan *plan, int *error)
{
	bool discard = req->map_flags & DMU_MAP_DISCARD;
	struct dmu_cache *cache = &dt->cache;
	unsigned int i, pieces = 0;
	const struct dmu_response *m;
	bool tracked;

	lockdep_assert_held(&dt->mutex);
	*error = 0;
	spin_lock_irq(&cache->lock);
	for (i = 0; i < req->nr_msgs; i++) {
		unsigned int busy;

		m = &req->msgs[i];
		plan->nr_copies += m->type == DMU_RSP_COPY;
		if (m->type != DMU_RSP_EXTENT)
			continue;
		busy = dmu_cache_count_busy(cache, m->block, m->nr_blocks);
		if (busy && (m->ext_flags & DMU_EXT_NEW)) {
			spin_unlock_irq(&cache->lock);
			return "NEW extent overlaps an extent that is being filled";
		}
		plan->nr_ext++;
		plan->nr_new += !!(m->ext_flags & DMU_EXT_NEW);
		/* Decided before make_room() can evict what it looks for. */
		if ((m->ext_flags & DMU_EXT_NEW) &&
		    dmu_cache_has_writable(cache, m->block, m->nr_blocks))
			plan->replaces_writable = true;
		pieces += busy + 1;
	}
	spin_unlock_irq(&cache->lock);

	tracked = plan->nr_new || (req->map_flags & DMU_MAP_WRITE) || discard;
	/* A discard may split one cached extent in two. */
	if (plan->nr_ext || discard)
		*error = dmu_nodes_alloc(dt, &plan->nodes, 2 * pieces + discard);
	if (!*error && tracked) {
		plan->tk = dmu_tracker_alloc(dt, req->push ? DMU_TK_PUSH :
					     req->map_flags & DMU_MAP_DISCARD ?
					     DMU_TK_DISCARD : DMU_TK_WRITE,
					     req->id, plan->nr_new);
		if (!plan->tk)
			*error = -ENOMEM;
	}
	if (!*error && plan->nr_new) {
		plan->tk->new_ext = kcalloc(plan->nr_new,
					    sizeof(*plan->tk->new_ext), GFP_KERNEL);
		if (plan->nr_copies)
			plan->tk->copies = kcalloc(plan->nr_copies,
						   sizeof(*plan->tk->copies),
						   GFP_KERNEL);
		if (!plan->tk->new_ext || (plan->nr_copies && !plan->tk->copies))
			*error = -ENOMEM;
	}
	if (!*error && discard && dt->opt.discard_passdown) {
		plan->tk->passdown = kcalloc(DMU_MAX_PASSDOWN,
					     sizeof(*plan->tk->passdown),
					     GFP_KERNEL);
		if (!plan->tk->passdown)
			*error = -ENOMEM;
	}
	if (*error) {
		dmu_nodes_free(dt, &plan->nodes);
		if (plan->tk)
			dmu_tracker_free(plan->tk);
		plan->tk = NULL;
	}
	return NULL;
}

/* Record the answer's NEW extents and COPY sources in the tracker. */
static void dmu_plan_records(struct dmu_target *dt, struct dmu_req *req,
			     struct dmu_tracker *tk)
{
	unsigned int i;

	for (i = 0; i < req->nr_msgs; i++) {
		const struct dmu_response *m = &req->msgs[i];

		if (dmu_is_new(m)) {
			struct dmu_alloc *a = &tk->allocs[tk->nr_allocs++];

			a->block = m->block;
			a->nr_blocks = m->nr_blocks;
			a->sector = m->sector;
			a->dev = m->dev;
		} else if (m->type == DMU_RSP_COPY) {
			tk->copies[tk->nr_copies++] = *m;
			/* The guest may be writing the source: land that first. */
			if (m->dev < dt->opt.writable_devs)
				tk->needs_drain = true;
		}
	}
}

/*
 * Put the answer's extents into the cache.  NEW extents go in BUSY, owned
 * by tk, and are remembered in tk->new_ext for the fill; other extents are
 * inserted around extents still being filled (whose own mapping wins once
 * filled).
 */
static void dmu_apply_extents(struct dmu_target *dt, struct dmu_req *req,
			      struct dmu_plan *plan)
{
	struct dmu_cache *cache = &dt->cache;
	struct dmu_tracker *tk = plan->tk;
	const struct dmu_response *m;
	unsigned int i;

	dmu_cache_write_lock(cache);
	dmu_cache_make_room(dt, plan->nr_ext);
	for (i = 0; i < req->nr_msgs; i++) {
		u64 pos, end;

		m = &req->msgs[i];
		if (m->type != DMU_RSP_EXTENT)
			continue;
		pos = m->block;
		end = m->block + m->nr_blocks;
		if (m->ext_flags & DMU_EXT_NEW) {
			tk->new_ext[tk->nr_new++] =
				dmu_insert_piece(dt, req, tk, m, pos, end,
						 &plan->nodes);
			continue;
		}
		while (pos < end) {
			struct dmu_extent *busy = dmu_cache_first_busy(cache, pos,
								       end - pos);
			u64 stop = busy ? max(busy->block, pos) : end;

			if (stop > pos)
				dmu_insert_piece(dt, req, tk, m, pos, stop,
						 &plan->nodes);
			pos = busy ? min(busy->block + busy->nr_blocks, end) : end;
		}
	}
	dmu_cache_write_unlock(cache);
	dmu_nodes_free(dt, &plan->nodes);
	if (req->push)
		atomic64_add(plan->nr_ext, &dt->c.pushed);
}

/* Is the bio inside one of tk's NEW extents? */
static bool dmu_in_new_extent(struct dmu_target *dt, struct dmu_tracker *tk,
			      struct bio *bio)
{
	u64 block = dmu_block_of(dt, dmu_offset(dt, bio));
	unsigned int i;

	for (i = 0; i < tk->nr_new; i++)
		if (block >= tk->new_ext[i]->block &&
		    block - tk->new_ext[i]->block < tk->new_ext[i]->nr_blocks)
			return true;
	return false;
}

static bool dmu_push_fills_too_many(struct dmu_target *dt, struct dmu_req *req)
{
	unsigned int i;
	bool full;

	for (i = 0; i < req->nr_msgs; i++)
		if (dmu_is_new(&req->msgs[i]))
			break;
	if (i == req->nr_msgs)
		return false;
	spin_lock_irq(&dt->lock);
	full = dt->nr_push_inflight >= DMU_MAX_PUSH_FILLS ||
	       !dmu_tracker_room(dt) || dt->suspending;
	spin_unlock_irq(&dt->lock);
	return full;
}

/* Take an answered request off its lists; its bios move to *bios. */
static void dmu_unlink_answered(struct dmu_target *dt, struct dmu_req *req,
				struct bio_list *bios)
{
	if (req->push) {
		list_del_init(&req->msg.list);
		dt->nr_pushes--;
		return;
	}
	spin_lock_irq(&dt->lock);
	dmu_req_unlink(req);
	bio_list_merge(bios, &req->bios);
	bio_list_init(&req->bios);
	spin_unlock_irq(&dt->lock);
}

/*
 * The answer to req is complete (FINAL, or COMPLETE with status): apply
 * it.  Returns NULL, or why the answer is bad (then nothing was applied
 * and req is still linked).
 */
static const char *dmu_finish_answer(struct dmu_target *dt, struct dmu_req *req,
				     int status)
{
	struct dmu_plan plan = {};
	struct bio_list bios = BIO_EMPTY_LIST;
	struct dmu_tracker *tk;
	const char *why;
	struct bio *bio;
	int error = 0;

	lockdep_assert_held(&dt->mutex);
	if (req->push && dmu_push_fills_too_many(dt, req))
		return "push with NEW extents while too many are filling or unpublished, or the device is suspended";
	if (!status) {
		why = dmu_check_answer(dt, req);
		if (!why)
			why = dmu_plan_answer(dt, req, &plan, &error);
		/*
		 * Refused like a bad answer, so that write() tells the daemon:
		 * the DONE reporting the failure may not be allocatable either,
		 * and a daemon that never hears of the id keeps its allocation
		 * (and every later decision on those blocks) waiting.
		 */
		if (!why && error)
			why = "no memory to apply the answer";
		if (why)
			return why;
	}
	if (status) {
		struct bio_list reads = BIO_EMPTY_LIST;

		dmu_unlink_answered(dt, req, &bios);
		/*
		 * A read that joined a write's request is not what the daemon
		 * refused (a full image fails the write, not the read): it
		 * asks again on its own.
		 */
		while ((bio = bio_list_pop(&bios))) {
			if ((req->map_flags & DMU_MAP_WRITE) &&
			    !op_is_write(bio_op(bio)))
				bio_list_add(&reads, bio);
			else
				bio_list_add(&req->bios, bio);
		}
		dmu_answer_failed(dt, req, status);
		while ((bio = bio_list_pop(&reads)))
			dmu_map_bio(dt, bio, DMU_ROUTE_RETRY, NULL, NULL);
		return NULL;
	}

	tk = plan.tk;
	if (tk) {
		tk->block = req->block;
		tk->nr_blocks = req->nr_blocks;
		tk->map_flags = req->map_flags;
		/* Writes in flight through the replaced extents land first. */
		tk->needs_drain = plan.replaces_writable;
		dmu_plan_records(dt, req, tk);
	}
	if (req->map_flags & DMU_MAP_DISCARD) {
		struct dmu_extent *spare = plan.nodes.v[--plan.nodes.n];

		/* Drop the old mappings before the answer's own go in. */
		dmu_unlink_answered(dt, req, &bios);
		tk->discard_bios = bios;
		dmu_discard_answered(dt, tk, &spare);
		if (spare)
			plan.nodes.v[plan.nodes.n++] = spare;
		dmu_apply_extents(dt, req, &plan);
		dmu_req_free(req);
		dmu_tracker_put(tk, 0);
		return NULL;
	}
	/*
	 * Extents first, then off the pending list: a miss in between finds
	 * the extent (or waits for its fill) or the request.  A miss that
	 * looked the cache up just before the extents went in and takes
	 * dt->lock just after the unlink sees neither and asks again; the
	 * header's rule (a daemon decides a block once until its DONE) makes
	 * that a round trip, not a second allocation.
	 */
	dmu_apply_extents(dt, req, &plan);
	dmu_unlink_answered(dt, req, &bios);
	if (tk)
		dmu_tracker_start(tk);
	if (plan.nr_new) {
		struct bio_list rest = BIO_EMPTY_LIST;

		while ((bio = bio_list_pop(&bios))) {
			if (op_is_write(bio_op(bio)) &&
			    dmu_in_new_extent(dt, tk, bio))
				bio_list_add(&tk->direct, bio);
			else
				bio_list_add(&rest, bio);
		}
		bios = rest;
		dmu_fill_start(tk);
	}
	while ((bio = bio_list_pop(&bios)))
		dmu_map_bio(dt, bio, DMU_ROUTE_ANSWER, tk, req);
	dmu_req_free(req);
	if (tk)
		dmu_tracker_put(tk, 0);
	return NULL;
}

int dmu_invalidate(struct dmu_target *dt, u64 block, u64 nr_blocks)
{
	struct dmu_extent *spare = dmu_extent_alloc(&dt->cache);
	unsigned long n;

	/*
	 * Only an extent sticking out on both sides needs the spare: none
	 * does of a range up to U64_MAX, which a shorter table's resume
	 * drops, and which must not fail for want of memory.
	 */
	if (!spare && nr_blocks != U64_MAX - block)
		return -ENOMEM;
	dmu_cache_write_lock(&dt->cache);
	n = dmu_cache_invalidate(dt, block, nr_blocks, &spare);
	dmu_cache_write_unlock(&dt->cache);
	atomic64_add(n, &dt->c.invalidated);
	dmu_extent_free(&dt->cache, spare);
	return 0;
}

static struct dmu_req *dmu_push_alloc(struct dmu_target *dt, u64 id)
{
	struct dmu_req *req = kmem_cache_zalloc(dmu_req_slab, GFP_KERNEL);

	if (!req)
		return NULL;
	INIT_LIST_HEAD(&req->msg.list);
	RB_CLEAR_NODE(&req->pending);
	INIT_HLIST_NODE(&req->hash);
	req->msg.kind = DMU_MSG_MAP;
	req->dt = dt;
	req->push = true;
	req->id = id;
	return req;
}

/* An EXTENT or COPY message: accumulate it; FINAL applies the answer. */
static const char *dmu_handle_piece(struct dmu_target *dt,
				    const struct dmu_response *r)
{
	struct dmu_req *req;
	int error;

	if (r->id & DMU_PUSH_ID) {
		if (!(dt->features & DMU_FEATURE_PUSH))
			return "push without DMU_FEATURE_PUSH";
		req = dmu_find_push(dt, r->id);
		if (!req) {
			if (dt->nr_pushes >= DMU_MAX_OPEN_PUSHES)
				return "too many push batches without FINAL";
			/* Not from the pool: map() alone may rely on it. */
			req = dmu_push_alloc(dt, r->id);
			if (!req)
				return "no memory for a push";
			list_add_tail(&req->msg.list, &dt->pushes);
			dt->nr_pushes++;
		}
	} else {
		spin_lock_irq(&dt->lock);
		req = dmu_req_lookup(dt, r->id);
		if (req && (req->state != DMU_RS_SENT ||
			    req->msg.kind != DMU_MSG_MAP))
			req = NULL;
		spin_unlock_irq(&dt->lock);
		if (!req)
			return "answer to an id that is not a pending MAP";
		if (req->map_flags & DMU_MAP_DISCARD && r->type == DMU_RSP_COPY)
			return "COPY in the answer to a discard";
	}
	error = dmu_append(req, r);
	if (error == -E2BIG)
		return "answer has too many messages";
	if (error == -ENOSPC)
		return "too many messages in answers without FINAL";
	if (error)
		return "no memory for the answer";
	if (r->flags & DMU_RSP_FINAL)
		return dmu_finish_answer(dt, req, 0);
	return NULL;
}

static const char *dmu_handle_complete(struct dmu_target *dt,
				       const struct dmu_response *r)
{
	struct dmu_req *req;

	spin_lock_irq(&dt->lock);
	req = dmu_req_lookup(dt, r->id);
	if (req && (req->state != DMU_RS_SENT || req->msg.kind != DMU_MSG_MAP))
		req = NULL;
	spin_unlock_irq(&dt->lock);
	if (!req)
		return "COMPLETE for an id that is not a pending MAP";
	return dmu_finish_answer(dt, req, r->status);
}

static const char *dmu_handle_committed(struct dmu_target *dt,
					const struct dmu_response *r)
{
	struct dmu_req *req;

	spin_lock_irq(&dt->lock);
	req = dmu_req_lookup(dt, r->id);
	if (req && req->msg.kind == DMU_MSG_COMMIT && req->state == DMU_RS_SENT)
		dmu_req_unlink(req);
	else
		req = NULL;
	spin_unlock_irq(&dt->lock);
	if (!req)
		return "COMMITTED for an id that is not a pending COMMIT";
	atomic64_inc(&dt->c.commits);
	dmu_commit_answered(dt, r->status);
	return NULL;
}

static const char *dmu_handle_one(struct dmu_target *dt,
				  const struct dmu_response *r,
				  struct dmu_drain_sync **drain)
{
	const char *why = dmu_check_fields(dt, r);

	if (why)
		return why;
	switch (r->type) {
	case DMU_RSP_EXTENT:
	case DMU_RSP_COPY:
		return dmu_handle_piece(dt, r);
	case DMU_RSP_COMPLETE:
		return dmu_handle_complete(dt, r);
	case DMU_RSP_COMMITTED:
		return dmu_handle_committed(dt, r);
	default:
		/* The write() waits for a drain: have the waiter first. */
		if (!*drain)
			*drain = dmu_drain_sync_alloc();
		if (!*drain || dmu_invalidate(dt, r->block, r->nr_blocks))
			return "no memory for INVALIDATE";
		return NULL;
	}
}

/*
 * Process n messages from the bound daemon.  Returns how many were
 * accepted; *bad is set when processing stopped at a bad message.  An
 * INVALIDATE leaves a drain waiter in *drain: the caller waits with it for
 * in-flight I/O before write() returns.
 */
unsigned int dmu_handle_responses(struct dmu_target *dt,
				  const struct dmu_response *msgs,
				  unsigned int n, bool *bad,
				  struct dmu_drain_sync **drain)
{
	unsigned int i;

	lockdep_assert_held(&dt->mutex);
	*bad = false;
	for (i = 0; i < n; i++) {
		const char *why = dmu_handle_one(dt, &msgs[i], drain);

		if (why) {
			dmu_bad(dt, &msgs[i], why);
			*bad = true;
			break;
		}
	}
	/*
	 * Answers that started no tracker made room for held MAPs.  Unlocked
	 * look first: a MAP held after it saw room as our answers left it,
	 * and waits for the next event that makes room.
	 */
	if (READ_ONCE(dt->nr_held)) {
		spin_lock_irq(&dt->lock);
		dmu_release_held_maps(dt);
		spin_unlock_irq(&dt->lock);
	}
	return i;
}
