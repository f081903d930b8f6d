// SPDX-License-Identifier: GPL-2.0
/*
 * dm-userspace extent cache: which virtual blocks map where.
 *
 * An rbtree of non-overlapping extents keyed by first block, plus a list in
 * insertion order that a clock hand sweeps for eviction, all under one
 * spinlock.  Chosen over the maple tree because the hit path needs one
 * lookup and a few flag updates under the same lock, inserts happen in
 * process context with preallocated nodes (so map() never allocates), and
 * an extent must be trimmed or split in place when a newer answer overlaps
 * it: an extent is a linear mapping, so any sub-range of it stays valid.
 *
 * map() looks extents up without the lock (dmu_cache_find_rcu()): every
 * change it could see is made inside a seqcount write section, published
 * with rb_link_node_rcu(), and an unlinked extent is freed only after an
 * RCU grace period, so a lockless walk only ever touches live extents and
 * a snapshot the seqcount confirms is one the tree really had.
 *
 * Memory is bounded by cache->max extents (plus at most one answer's worth).
 * Eviction drops extents that are not BUSY (being filled), giving those used
 * since the last sweep a second chance.  BUSY extents are never evicted, trimmed or invalidated: their
 * owner request still points at them.  They are bounded by the number of
 * pending answers times DMU_MAX_ANSWER_MSGS.
 */
#include <linux/slab.h>

#include "dmu.h"

int dmu_cache_init(struct dmu_cache *cache, unsigned long max)
{
	spin_lock_init(&cache->lock);
	seqcount_spinlock_init(&cache->seq, &cache->lock);
	cache->root = RB_ROOT;
	INIT_LIST_HEAD(&cache->lru);
	cache->nr = 0;
	cache->max = max;
	cache->slab = dmu_extent_slab;
	return 0;
}

/* No map() can run any more: no reader needs a grace period. */
void dmu_cache_exit(struct dmu_cache *cache)
{
	struct dmu_extent *e, *tmp;

	rbtree_postorder_for_each_entry_safe(e, tmp, &cache->root, node)
		kmem_cache_free(cache->slab, e);
	cache->root = RB_ROOT;
	INIT_LIST_HEAD(&cache->lru);
	cache->nr = 0;
}

struct dmu_extent *dmu_extent_alloc(struct dmu_cache *cache)
{
	return kmem_cache_zalloc(cache->slab, GFP_KERNEL);
}

/* For nodes that never entered the tree: no lockless reader can hold them. */
void dmu_extent_free(struct dmu_cache *cache, struct dmu_extent *e)
{
	if (e)
		kmem_cache_free(cache->slab, e);
}

static void dmu_extent_free_rcu(struct rcu_head *rcu)
{
	kmem_cache_free(dmu_extent_slab,
			container_of(rcu, struct dmu_extent, rcu));
}

/*
 * An unlinked extent may still be under a lockless reader's feet (it read
 * the pointer before the unlink): free it only after they all left.  The
 * module's exit waits for these callbacks (rcu_barrier()).
 */
static void dmu_extent_retire(struct dmu_extent *e)
{
	call_rcu(&e->rcu, dmu_extent_free_rcu);
}

static inline u64 dmu_extent_end(const struct dmu_extent *e)
{
	return e->block + e->nr_blocks;
}

/* The extent containing block, or NULL. */
struct dmu_extent *dmu_cache_find(struct dmu_cache *cache, u64 block)
{
	struct rb_node *n = cache->root.rb_node;

	lockdep_assert_held(&cache->lock);
	while (n) {
		struct dmu_extent *e = rb_entry(n, struct dmu_extent, node);

		if (block < e->block)
			n = n->rb_left;
		else if (block >= dmu_extent_end(e))
			n = n->rb_right;
		else
			return e;
	}
	return NULL;
}

/* The first extent that ends after block (extents do not overlap, so their
 * ends are ordered like their starts).
 */
static struct dmu_extent *dmu_cache_first_after(struct dmu_cache *cache,
						u64 block)
{
	struct rb_node *n = cache->root.rb_node;
	struct dmu_extent *found = NULL;

	lockdep_assert_held(&cache->lock);
	while (n) {
		struct dmu_extent *e = rb_entry(n, struct dmu_extent, node);

		if (dmu_extent_end(e) > block) {
			found = e;
			n = n->rb_left;
		} else {
			n = n->rb_right;
		}
	}
	return found;
}

/*
 * More levels than any red-black tree of extents can have (its height is at
 * most 2 * log2(n + 1), n < 2^31): a walk that goes deeper is running
 * through nodes being rotated or retired, so map() takes the lock instead.
 */
#define DMU_RCU_MAX_DEPTH	64

/*
 * dmu_cache_find() for map()'s hit path, without cache->lock.  The caller
 * holds rcu_read_lock() and has read cache->seq (even); what this returns,
 * and what the caller reads from it, is meaningful only if cache->seq is
 * unchanged afterwards.  Why that suffices:
 *
 *  - Every node reachable during the walk was in the tree at some moment of
 *    the caller's RCU read side (nodes are published with
 *    rb_link_node_rcu(), the rbtree code stores child pointers with
 *    WRITE_ONCE(), and unlinked nodes are freed after a grace period), so
 *    the walk never touches freed memory, whatever it races with.
 *  - A concurrent rotation may make the walk miss the extent or wander;
 *    it then returns NULL (or a wrong extent) and the seqcount, which every
 *    change runs under, no longer matches: the caller falls back to the
 *    locked lookup.  The depth bound ends a walk that wanders.
 */
struct dmu_extent *dmu_cache_find_rcu(struct dmu_cache *cache, u64 block)
{
	struct rb_node *n = READ_ONCE(cache->root.rb_node);
	unsigned int depth;

	for (depth = 0; n && depth < DMU_RCU_MAX_DEPTH; depth++) {
		struct dmu_extent *e = rb_entry(n, struct dmu_extent, node);
		u64 start = READ_ONCE(e->block);

		if (block < start)
			n = READ_ONCE(n->rb_left);
		else if (block - start >= READ_ONCE(e->nr_blocks))
			n = READ_ONCE(n->rb_right);
		else
			return e;
	}
	return NULL;
}

static struct dmu_extent *dmu_extent_next(struct dmu_extent *e)
{
	struct rb_node *n = rb_next(&e->node);

	return n ? rb_entry(n, struct dmu_extent, node) : NULL;
}

/* A change map()'s lockless lookup could see: see dmu_cache_write_lock(). */
static inline void dmu_cache_assert_writing(struct dmu_cache *cache)
{
	lockdep_assert_held(&cache->lock);
	WARN_ON_ONCE(!(READ_ONCE(cache->seq.seqcount.sequence) & 1));
}

static void dmu_cache_link(struct dmu_cache *cache, struct dmu_extent *e)
{
	struct rb_node **link = &cache->root.rb_node, *parent = NULL;

	dmu_cache_assert_writing(cache);
	while (*link) {
		struct dmu_extent *x = rb_entry(*link, struct dmu_extent, node);

		parent = *link;
		if (e->block < x->block)
			link = &parent->rb_left;
		else
			link = &parent->rb_right;
	}
	/* rb_link_node_rcu(), open-coded: rb_left is not __rcu for sparse. */
	e->node.__rb_parent_color = (unsigned long)parent;
	e->node.rb_left = NULL;
	e->node.rb_right = NULL;
	/* Publish e's fields before map()'s lockless walk can reach e. */
	smp_store_release(link, &e->node);
	rb_insert_color(&e->node, &cache->root);
	list_add_tail(&e->lru, &cache->lru);
	cache->nr++;
}

static void dmu_cache_unlink(struct dmu_cache *cache, struct dmu_extent *e)
{
	dmu_cache_assert_writing(cache);
	rb_erase(&e->node, &cache->root);
	list_del(&e->lru);
	cache->nr--;
}

/* Drop the first d blocks of e; a REMAP extent's sector moves along. */
static void dmu_extent_trim_front(struct dmu_target *dt, struct dmu_extent *e,
				  u64 d)
{
	e->block += d;
	e->nr_blocks -= d;
	if (e->kind == DMU_EXT_REMAP)
		e->sector += d << dt->block_shift;
}

/* The first BUSY extent overlapping [block, block + nr_blocks), or NULL. */
struct dmu_extent *dmu_cache_first_busy(struct dmu_cache *cache, u64 block,
					u64 nr_blocks)
{
	struct dmu_extent *e = dmu_cache_first_after(cache, block);

	lockdep_assert_held(&cache->lock);
	for (; e && e->block < block + nr_blocks; e = dmu_extent_next(e))
		if (e->state & DMU_EXTENT_BUSY)
			return e;
	return NULL;
}

/* How many BUSY extents overlap [block, block + nr_blocks). */
unsigned int dmu_cache_count_busy(struct dmu_cache *cache, u64 block,
				  u64 nr_blocks)
{
	struct dmu_extent *e = dmu_cache_first_after(cache, block);
	unsigned int n = 0;

	lockdep_assert_held(&cache->lock);
	for (; e && e->block < block + nr_blocks; e = dmu_extent_next(e))
		n += !!(e->state & DMU_EXTENT_BUSY);
	return n;
}

/* Does a writable REMAP extent overlap [block, block + nr_blocks)? */
bool dmu_cache_has_writable(struct dmu_cache *cache, u64 block, u64 nr_blocks)
{
	struct dmu_extent *e = dmu_cache_first_after(cache, block);

	lockdep_assert_held(&cache->lock);
	for (; e && e->block < block + nr_blocks; e = dmu_extent_next(e))
		if (e->kind == DMU_EXT_REMAP && (e->ext_flags & DMU_EXT_WRITABLE))
			return true;
	return false;
}

/* Mark BUSY extents overlapping the range to be dropped once filled. */
unsigned int dmu_cache_doom_busy(struct dmu_cache *cache, u64 block,
				 u64 nr_blocks)
{
	struct dmu_extent *e = dmu_cache_first_after(cache, block);
	unsigned int n = 0;

	lockdep_assert_held(&cache->lock);
	for (; e && e->block < block + nr_blocks; e = dmu_extent_next(e)) {
		if (e->state & DMU_EXTENT_BUSY) {
			e->state |= DMU_EXT_DOOMED;
			n++;
		}
	}
	return n;
}

/*
 * Up to max device ranges of the non-BUSY writable REMAP extents inside
 * [block, block + nr_blocks), clipped to it and to the target's end.
 */
unsigned int dmu_cache_writable_ranges(struct dmu_target *dt, u64 block,
				       u64 nr_blocks, struct dmu_range *out,
				       unsigned int max)
{
	struct dmu_extent *e = dmu_cache_first_after(&dt->cache, block);
	u64 end = block + nr_blocks;
	unsigned int n = 0;

	lockdep_assert_held(&dt->cache.lock);
	for (; e && e->block < end && n < max; e = dmu_extent_next(e)) {
		u64 from = max(e->block, block);
		u64 to = min(dmu_extent_end(e), end);
		sector_t vend = min_t(u64, dt->len, dmu_block_start(dt, to));

		if (e->kind != DMU_EXT_REMAP || !(e->ext_flags & DMU_EXT_WRITABLE) ||
		    (e->state & DMU_EXTENT_BUSY) || vend <= dmu_block_start(dt, from))
			continue;
		out[n].dev = e->dev;
		out[n].sector = e->sector + ((from - e->block) << dt->block_shift);
		out[n].nr_sectors = vend - dmu_block_start(dt, from);
		n++;
	}
	return n;
}

/*
 * Remove [block, block + nr_blocks) from the cache, trimming extents that
 * stick out of it.  Splitting one extent in two uses *spare (set to NULL
 * when taken); at most one extent can need it.  With skip_busy, BUSY
 * extents are left alone.  Returns the number of extents dropped.
 */
static unsigned long dmu_cache_carve(struct dmu_target *dt, u64 block,
				     u64 nr_blocks, struct dmu_extent **spare,
				     bool skip_busy)
{
	struct dmu_cache *cache = &dt->cache;
	u64 end = block + nr_blocks;
	struct dmu_extent *e, *next;
	unsigned long dropped = 0;

	dmu_cache_assert_writing(cache);
	for (e = dmu_cache_first_after(cache, block); e && e->block < end; e = next) {
		u64 e_end = dmu_extent_end(e);

		next = dmu_extent_next(e);
		if (skip_busy && (e->state & DMU_EXTENT_BUSY))
			continue;
		if (e->block >= block && e_end <= end) {
			dmu_cache_unlink(cache, e);
			dmu_extent_retire(e);
			dropped++;
		} else if (e->block < block && e_end > end) {
			struct dmu_extent *right = *spare;

			*spare = NULL;
			*right = *e;
			e->nr_blocks = block - e->block;
			dmu_extent_trim_front(dt, right, end - right->block);
			dmu_cache_link(cache, right);
			break;
		} else if (e->block < block) {
			e->nr_blocks = block - e->block;
		} else {
			/* Trimming the front keeps the tree order. */
			dmu_extent_trim_front(dt, e, end - e->block);
		}
	}
	return dropped;
}

/*
 * Evict until incoming new extents fit under max.  Called before an answer
 * is inserted, so an answer's own extents are never evicted before its bios
 * used them; an answer larger than max overshoots until the next one.
 */
void dmu_cache_make_room(struct dmu_target *dt, unsigned long incoming)
{
	struct dmu_cache *cache = &dt->cache;
	unsigned long budget = 2 * cache->nr;

	lockdep_assert_held(&cache->lock);
	while (cache->nr && cache->nr + incoming > cache->max && budget--) {
		struct dmu_extent *e = list_first_entry(&cache->lru,
							struct dmu_extent, lru);

		if ((e->state & DMU_EXTENT_BUSY) || e->referenced) {
			e->referenced = 0;
			list_move_tail(&e->lru, &cache->lru);
			continue;
		}
		dmu_cache_unlink(cache, e);
		dmu_extent_retire(e);
		atomic64_inc(&dt->c.evicted);
	}
}

/*
 * Insert e, replacing whatever overlaps it.  The caller has checked under
 * the same lock hold that nothing in the range is BUSY, made room with
 * dmu_cache_make_room(), and supplies a spare node in case an older extent
 * must be split.
 */
void dmu_cache_insert(struct dmu_target *dt, struct dmu_extent *e,
		      struct dmu_extent **spare)
{
	lockdep_assert_held(&dt->cache.lock);
	dmu_cache_carve(dt, e->block, e->nr_blocks, spare, false);
	dmu_cache_link(&dt->cache, e);
}

unsigned long dmu_cache_invalidate(struct dmu_target *dt, u64 block,
				   u64 nr_blocks, struct dmu_extent **spare)
{
	lockdep_assert_held(&dt->cache.lock);
	return dmu_cache_carve(dt, block, nr_blocks, spare, true);
}

void dmu_cache_remove(struct dmu_target *dt, struct dmu_extent *e)
{
	lockdep_assert_held(&dt->cache.lock);
	dmu_cache_unlink(&dt->cache, e);
	dmu_extent_retire(e);
}

/* Copy up to max extents ending after start into out; see LIST_EXTENTS. */
int dmu_cache_list(struct dmu_cache *cache, u64 start,
		   struct dmu_extent_info *out, unsigned int max, u64 *next)
{
	struct dmu_extent *e;
	unsigned int n = 0;

	lockdep_assert_held(&cache->lock);
	*next = start;
	for (e = dmu_cache_first_after(cache, start); e && n < max;
	     e = dmu_extent_next(e), n++) {
		out[n].block = e->block;
		out[n].nr_blocks = e->nr_blocks;
		out[n].sector = e->sector;
		out[n].dev = e->dev;
		out[n].kind = e->kind;
		out[n].ext_flags = e->ext_flags;
		out[n].state = e->state & (DMU_EXTENT_PUSHED | DMU_EXTENT_USED |
					   DMU_EXTENT_BUSY);
		*next = dmu_extent_end(e);
	}
	return n;
}
