// SPDX-License-Identifier: GPL-2.0
/*
 * dm-userspace control device /dev/dm-userspace (misc, 0600, root only).
 *
 * Each open file is a struct dmu_channel.  DMU_IOC_BIND attaches it to the
 * target (the per-key state, dmu-pool.c) whose tables name the key; then
 * read() hands out requests, write() takes responses and poll() waits for
 * requests.  Closing the file unbinds (dmu_daemon_gone()).  When the
 * target dies first, the channel is detached: every later call returns
 * -ENODEV and poll reports EPOLLHUP.  The channel holds a reference on the
 * target, so a detached channel never touches freed memory.
 *
 * Nothing here touches user memory while holding dt->mutex or dt->lock:
 * requests are formatted into a kernel buffer under the locks and copied
 * out after, responses are copied in before the locks are taken.  So a
 * daemon whose buffers fault (even on this very device) cannot hang the
 * target's timeout work, suspend or dtr.  read() and write() have mutexes
 * of their own, so one thread may block in read() while another writes.
 */
#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/poll.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "dmu.h"

struct dmu_channel {
	spinlock_t lock;		/* dt, detached, binding */
	struct dmu_target *dt;		/* bound target (holds a reference) */
	bool detached;			/* the bound target was destroyed */
	bool binding;			/* a BIND is under way on this fd */
	wait_queue_head_t wait;		/* readers and pollers */
	struct mutex rmutex;		/* rbuf, rbatch */
	struct mutex wmutex;		/* wbuf */
	struct dmu_request rbuf[DMU_IO_MSGS];
	struct dmu_msg *rbatch[DMU_IO_MSGS];	/* what rbuf was made from */
	struct dmu_response wbuf[DMU_IO_MSGS];
};

void dmu_channel_wake(struct dmu_channel *ch)
{
	wake_up_interruptible(&ch->wait);
}

/* The target dies: cut the bound channel loose; it keeps dt's memory only. */
void dmu_channel_detach(struct dmu_target *dt)
{
	struct dmu_channel *ch;

	lockdep_assert_held(&dt->mutex);
	spin_lock_irq(&dt->lock);
	ch = dt->channel;
	dt->channel = NULL;
	dt->features = 0;
	spin_unlock_irq(&dt->lock);
	if (!ch)
		return;
	spin_lock(&ch->lock);
	ch->dt = NULL;
	ch->detached = true;
	wake_up_all(&ch->wait);
	spin_unlock(&ch->lock);
	dmu_target_put(dt);
}

/* The bound target with a reference, or an error for the caller. */
static struct dmu_target *dmu_channel_get(struct dmu_channel *ch)
{
	struct dmu_target *dt;

	spin_lock(&ch->lock);
	dt = ch->dt;
	if (dt)
		kref_get(&dt->kref);
	else
		dt = ERR_PTR(ch->detached ? -ENODEV : -ENOTCONN);
	spin_unlock(&ch->lock);
	return dt;
}

/* With dt->mutex held: is ch still the daemon bound to a live dt? */
static int dmu_channel_check(struct dmu_channel *ch, struct dmu_target *dt)
{
	lockdep_assert_held(&dt->mutex);
	return dt->channel == ch && !dt->dying ? 0 : -ENODEV;
}

static int dmu_control_open(struct inode *inode, struct file *file)
{
	struct dmu_channel *ch;

	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	ch = kzalloc(sizeof(*ch), GFP_KERNEL);
	if (!ch)
		return -ENOMEM;
	spin_lock_init(&ch->lock);
	init_waitqueue_head(&ch->wait);
	mutex_init(&ch->rmutex);
	mutex_init(&ch->wmutex);
	file->private_data = ch;
	return nonseekable_open(inode, file);
}

static int dmu_control_release(struct inode *inode, struct file *file)
{
	struct dmu_channel *ch = file->private_data;
	struct dmu_target *dt = dmu_channel_get(ch);

	if (!IS_ERR(dt)) {
		mutex_lock(&dt->mutex);
		if (dt->channel == ch) {
			spin_lock(&ch->lock);
			ch->dt = NULL;
			spin_unlock(&ch->lock);
			if (!dt->dying)
				dmu_daemon_gone(dt);
			dmu_target_put(dt);	/* the binding's reference */
		}
		mutex_unlock(&dt->mutex);
		dmu_target_put(dt);
	}
	kfree(ch);
	return 0;
}

/*
 * A new daemon: count what it gets again (b->resent, b->redelivered); its
 * answer clock starts now, for held MAPs too.
 */
static void dmu_count_resent(struct dmu_target *dt, struct dmu_bind *b)
{
	struct dmu_msg *m;

	lockdep_assert_held(&dt->lock);
	b->resent = 0;
	b->redelivered = 0;
	list_for_each_entry(m, &dt->send_queue, list) {
		struct dmu_req *req;

		if (m->kind == DMU_MSG_DONE) {
			b->redelivered += container_of(m, struct dmu_tracker,
						       msg)->resent;
			continue;
		}
		req = container_of(m, struct dmu_req, msg);
		b->resent += req->resent;
		req->queued_at = jiffies;
	}
	list_for_each_entry(m, &dt->held_maps, list)
		container_of(m, struct dmu_req, msg)->queued_at = jiffies;
}

static int dmu_bind_locked(struct dmu_channel *ch, struct dmu_target *dt,
			   struct dmu_bind *b)
{
	int r = 0;

	lockdep_assert_held(&dt->mutex);
	spin_lock_irq(&dt->lock);
	if (dt->dying) {
		r = -ENOENT;
	} else if (dt->channel) {
		r = -EBUSY;
	} else {
		dt->channel = ch;
		dt->features = b->features & DMU_FEATURE_ALL;
		dt->state = DMU_DAEMON_BOUND;
		dmu_count_resent(dt, b);
		/* Held MAPs wait for this daemon's COMMIT: ask for one now. */
		if (dt->nr_held)
			dmu_want_checkpoint(dt);
		b->allocations = dt->nr_records;
		if (!list_empty(&dt->send_queue))
			dmu_channel_wake(ch);
	}
	spin_unlock_irq(&dt->lock);
	if (r)
		return r;
	kref_get(&dt->kref);	/* the binding's reference */
	spin_lock(&ch->lock);
	ch->dt = dt;
	spin_unlock(&ch->lock);
	if (dt->opt.daemon_timeout)
		mod_delayed_work(dt->wq, &dt->timeout_work,
				 (unsigned long)dt->opt.daemon_timeout * HZ);
	b->features = dt->features;
	b->target_sectors = dt->len;
	b->block_sectors = dt->block_sectors;
	b->nr_devs = dt->nr_devs;
	b->writable_devs = dmu_writable_devs(dt);
	return 0;
}

static long dmu_ioctl_bind(struct dmu_channel *ch, void __user *arg)
{
	struct dmu_bind b;
	struct dmu_target *dt;
	int r = 0;

	if (copy_from_user(&b, arg, sizeof(b)))
		return -EFAULT;
	if (b.reserved0 || b.reserved1)
		return -EINVAL;
	if (b.version_major != DMU_VERSION_MAJOR) {
		/* As dm-ioctl does: tell the daemon which version we speak. */
		b.version_major = DMU_VERSION_MAJOR;
		b.version_minor = DMU_VERSION_MINOR;
		b.version_patch = DMU_VERSION_PATCH;
		if (copy_to_user(arg, &b, sizeof(b)))
			return -EFAULT;
		return -EPROTO;
	}
	if (strnlen(b.key, DMU_KEY_LEN) == DMU_KEY_LEN)
		return -EINVAL;

	/*
	 * One BIND per fd: two threads binding different keys at once must
	 * not both pass this check, or the first target would keep a
	 * channel the file's release never unbinds.
	 */
	spin_lock(&ch->lock);
	if (ch->dt || ch->detached || ch->binding)
		r = -EALREADY;
	else
		ch->binding = true;
	spin_unlock(&ch->lock);
	if (r)
		return r;

	mutex_lock(&dmu_registry_lock);
	dt = dmu_registry_find(b.key);
	if (dt) {
		mutex_lock(&dt->mutex);
		r = dmu_bind_locked(ch, dt, &b);
		mutex_unlock(&dt->mutex);
	} else {
		r = -ENOENT;
	}
	mutex_unlock(&dmu_registry_lock);
	spin_lock(&ch->lock);
	ch->binding = false;
	spin_unlock(&ch->lock);
	if (r)
		return r;

	b.version_major = DMU_VERSION_MAJOR;
	b.version_minor = DMU_VERSION_MINOR;
	b.version_patch = DMU_VERSION_PATCH;
	if (copy_to_user(arg, &b, sizeof(b)))
		return -EFAULT;	/* stays bound; closing the file unbinds */
	return 0;
}

/* One chunk of LIST_EXTENTS: the cache, under its lock. */
static int dmu_list_extents_chunk(struct dmu_target *dt, u64 start, void *buf,
				  unsigned int max, u64 *next)
{
	int n;

	spin_lock_irq(&dt->cache.lock);
	n = dmu_cache_list(&dt->cache, start, buf, max, next);
	spin_unlock_irq(&dt->cache.lock);
	return n;
}

/* One chunk of LIST_ALLOCATIONS: the records, under dt->lock. */
static int dmu_list_allocations_chunk(struct dmu_target *dt, u64 start,
				      void *buf, unsigned int max, u64 *next)
{
	int n;

	spin_lock_irq(&dt->lock);
	n = dmu_list_allocations(dt, start, buf, max, next);
	spin_unlock_irq(&dt->lock);
	return n;
}

/*
 * The common shape of the LIST ioctls (struct dmu_list_extents and
 * struct dmu_list_allocations have the same layout): fill up to max
 * entries of size bytes at buf, in chunks copied out without locks held,
 * so that "repeat until count < max" holds for any max.
 */
static long dmu_ioctl_list(struct dmu_channel *ch, void __user *arg,
			   size_t size,
			   int (*chunk)(struct dmu_target *, u64, void *,
					unsigned int, u64 *))
{
	struct dmu_list_extents l;	/* layout of both LIST structs */
	struct dmu_target *dt;
	u64 pos, next;
	void *buf;
	int r = 0, n;

	if (copy_from_user(&l, arg, sizeof(l)))
		return -EFAULT;
	if (l.count || l.next_block || l.reserved[0] || l.reserved[1])
		return -EINVAL;
	buf = kmalloc_array(DMU_MAX_LIST, size, GFP_KERNEL);
	if (!buf)
		return -ENOMEM;
	dt = dmu_channel_get(ch);
	if (IS_ERR(dt)) {
		kfree(buf);
		return PTR_ERR(dt);
	}
	pos = l.start_block;
	while (l.count < l.max) {
		unsigned int want = min_t(u32, l.max - l.count, DMU_MAX_LIST);

		mutex_lock(&dt->mutex);
		r = dmu_channel_check(ch, dt);
		n = r ? 0 : chunk(dt, pos, buf, want, &next);
		mutex_unlock(&dt->mutex);
		if (r)
			break;
		if (n && copy_to_user(u64_to_user_ptr(l.buf) +
				      (size_t)l.count * size, buf, n * size)) {
			r = -EFAULT;
			break;
		}
		l.count += n;
		if (n)
			pos = next;
		if (n < want)
			break;
	}
	dmu_target_put(dt);
	kfree(buf);
	l.next_block = pos;
	if (!r && copy_to_user(arg, &l, sizeof(l)))
		r = -EFAULT;
	return r;
}

static_assert(sizeof(struct dmu_list_allocations) == sizeof(struct dmu_list_extents));
static_assert(offsetof(struct dmu_list_allocations, next) ==
	      offsetof(struct dmu_list_extents, next_block));
static_assert(offsetof(struct dmu_list_allocations, count) ==
	      offsetof(struct dmu_list_extents, count));

static long dmu_control_ioctl(struct file *file, unsigned int cmd,
			      unsigned long arg)
{
	struct dmu_channel *ch = file->private_data;
	unsigned int noio = memalloc_noio_save();
	long r;

	switch (cmd) {
	case DMU_IOC_BIND:
		r = dmu_ioctl_bind(ch, (void __user *)arg);
		break;
	case DMU_IOC_LIST_EXTENTS:
		r = dmu_ioctl_list(ch, (void __user *)arg,
				   sizeof(struct dmu_extent_info),
				   dmu_list_extents_chunk);
		break;
	case DMU_IOC_LIST_ALLOCATIONS:
		r = dmu_ioctl_list(ch, (void __user *)arg,
				   sizeof(struct dmu_allocation),
				   dmu_list_allocations_chunk);
		break;
	default:
		r = -ENOTTY;
	}
	memalloc_noio_restore(noio);
	return r;
}

static void dmu_format(struct dmu_request *m, struct dmu_msg *msg)
{
	memset(m, 0, sizeof(*m));
	if (msg->kind == DMU_MSG_DONE) {
		struct dmu_tracker *tk = container_of(msg, struct dmu_tracker, msg);

		m->type = DMU_REQ_DONE;
		m->id = tk->id;
		m->flags = tk->map_flags;
		m->block = tk->block;
		m->nr_blocks = tk->nr_blocks;
		m->status = tk->error;
	} else {
		struct dmu_req *req = container_of(msg, struct dmu_req, msg);

		m->id = req->id;
		if (msg->kind == DMU_MSG_COMMIT) {
			m->type = DMU_REQ_COMMIT;
		} else {
			m->type = DMU_REQ_MAP;
			m->flags = req->map_flags;
			m->block = req->block;
			m->nr_blocks = req->nr_blocks;
		}
	}
}

/*
 * Move up to max queued messages to where read ones go (MAP and COMMIT to
 * sent, DONE to done_read; a COMMIT covers the DONEs read before it) and
 * format them into ch->rbuf.  A discard for a daemon without
 * DMU_FEATURE_DISCARD is completed here instead.
 */
static unsigned int dmu_take_requests(struct dmu_target *dt,
				      struct dmu_channel *ch, unsigned int max,
				      struct list_head *done,
				      struct bio_list *discards)
{
	struct dmu_msg *m, *tmp;
	unsigned int n = 0;
	bool completed = false;

	spin_lock_irq(&dt->lock);
	list_for_each_entry_safe(m, tmp, &dt->send_queue, list) {
		struct dmu_req *req = container_of(m, struct dmu_req, msg);

		if (n == max)
			break;
		if (m->kind == DMU_MSG_MAP &&
		    (req->map_flags & DMU_MAP_DISCARD) &&
		    !(dt->features & DMU_FEATURE_DISCARD)) {
			dmu_req_unlink(req);
			bio_list_merge(discards, &req->bios);
			bio_list_init(&req->bios);
			list_add_tail(&m->list, done);
			completed = true;
			continue;
		}
		ch->rbatch[n] = m;
		dmu_format(&ch->rbuf[n++], m);
		if (m->kind == DMU_MSG_DONE) {
			dmu_done_read(dt, container_of(m, struct dmu_tracker, msg));
			continue;
		}
		req->state = DMU_RS_SENT;
		list_move_tail(&m->list, &dt->sent);
		if (m->kind == DMU_MSG_COMMIT)
			dmu_commit_read(dt);
	}
	/* The discards completed here made room for held MAPs. */
	if (completed)
		dmu_release_held_maps(dt);
	spin_unlock_irq(&dt->lock);
	return n;
}

static bool dmu_readable(struct dmu_channel *ch)
{
	struct dmu_target *dt;
	bool r;

	spin_lock(&ch->lock);
	dt = ch->dt;
	r = !dt || !list_empty_careful(&dt->send_queue);
	spin_unlock(&ch->lock);
	return r;
}

/* Is m on list?  (m may have been freed: only compare pointers.) */
static bool dmu_on_list(struct list_head *list, struct dmu_msg *m)
{
	struct dmu_msg *x;

	list_for_each_entry(x, list, list)
		if (x == m)
			return true;
	return false;
}

/*
 * copy_to_user() of a batch failed: put back at the head of the queue, in
 * order, what is still where the read left it.  MAP and COMMIT requests
 * are found again by id (a concurrent write() may have answered one); a
 * DONE only if it is still on done_read (a COMMIT answered meanwhile may
 * have published and freed it), so its pointer is never dereferenced
 * unless found there.  A rare error path: the scans are linear.
 */
static void dmu_requeue_read(struct dmu_target *dt, struct dmu_channel *ch,
			     unsigned int n)
{
	lockdep_assert_held(&dt->mutex);
	spin_lock_irq(&dt->lock);
	while (n--) {
		struct dmu_msg *m = ch->rbatch[n];
		struct dmu_req *req;

		if (ch->rbuf[n].type == DMU_REQ_DONE) {
			if (dmu_on_list(&dt->done_read, m))
				list_move(&m->list, &dt->send_queue);
			continue;
		}
		req = dmu_req_lookup(dt, ch->rbuf[n].id);
		if (!req || req->state != DMU_RS_SENT)
			continue;
		req->state = DMU_RS_QUEUED;
		/* An answer to an id not read yet was a guess: forget it. */
		dmu_req_drop_answer(req);
		list_move(&req->msg.list, &dt->send_queue);
		/* Not read after all: what it covered was read before it. */
		if (req->msg.kind == DMU_MSG_COMMIT)
			list_splice_init(&dt->done_covered, &dt->done_read);
	}
	spin_unlock_irq(&dt->lock);
}

/* Free discards nobody needs to see. */
static void dmu_finish_taken(struct list_head *done, struct bio_list *discards)
{
	struct dmu_msg *m, *tmp;
	struct bio *bio;

	list_for_each_entry_safe(m, tmp, done, list) {
		list_del_init(&m->list);
		dmu_req_free(container_of(m, struct dmu_req, msg));
	}
	while ((bio = bio_list_pop(discards)))
		bio_endio(bio);
}

static ssize_t dmu_control_read(struct file *file, char __user *buf,
				size_t len, loff_t *ppos)
{
	struct dmu_channel *ch = file->private_data;
	unsigned int max = min_t(size_t, len / DMU_MSG_SIZE, DMU_IO_MSGS);
	struct bio_list discards = BIO_EMPTY_LIST;
	struct dmu_target *dt;
	unsigned int n;
	LIST_HEAD(done);
	ssize_t r;

	if (!max)
		return -EINVAL;
	/* A second reader waits behind one sleeping for requests: killably. */
	if (mutex_lock_interruptible(&ch->rmutex))
		return -ERESTARTSYS;
	for (;;) {
		dt = dmu_channel_get(ch);
		if (IS_ERR(dt)) {
			r = PTR_ERR(dt);
			break;
		}
		mutex_lock(&dt->mutex);
		r = dmu_channel_check(ch, dt);
		n = r ? 0 : dmu_take_requests(dt, ch, max, &done, &discards);
		/* Under dt->mutex: dtr cannot tear the pool down meanwhile. */
		dmu_finish_taken(&done, &discards);
		mutex_unlock(&dt->mutex);
		if (n) {
			r = n * DMU_MSG_SIZE;
			if (copy_to_user(buf, ch->rbuf, r)) {
				r = -EFAULT;
				mutex_lock(&dt->mutex);
				if (!dmu_channel_check(ch, dt))
					dmu_requeue_read(dt, ch, n);
				mutex_unlock(&dt->mutex);
			}
		}
		dmu_target_put(dt);
		if (r)
			break;
		if (file->f_flags & O_NONBLOCK) {
			r = -EAGAIN;
			break;
		}
		r = wait_event_interruptible(ch->wait, dmu_readable(ch));
		if (r)
			break;
	}
	mutex_unlock(&ch->rmutex);
	return r;
}

static ssize_t dmu_control_write(struct file *file, const char __user *buf,
				 size_t len, loff_t *ppos)
{
	struct dmu_channel *ch = file->private_data;
	struct dmu_drain_sync *drain = NULL;
	struct dmu_target *dt;
	bool bad = false;
	unsigned int noio;
	size_t done = 0;
	int r = 0;

	if (!len || len % DMU_MSG_SIZE)
		return -EINVAL;
	dt = dmu_channel_get(ch);
	if (IS_ERR(dt))
		return PTR_ERR(dt);
	if (mutex_lock_interruptible(&ch->wmutex)) {
		dmu_target_put(dt);
		return -ERESTARTSYS;
	}
	while (!r && !bad && done < len) {
		unsigned int n = min_t(size_t, (len - done) / DMU_MSG_SIZE,
				       DMU_IO_MSGS);
		unsigned int ok;

		/* One write() may carry millions of messages. */
		if (done && fatal_signal_pending(current))
			break;
		cond_resched();
		if (copy_from_user(ch->wbuf, buf + done, n * DMU_MSG_SIZE)) {
			r = -EFAULT;
			break;
		}
		mutex_lock(&dt->mutex);
		r = dmu_channel_check(ch, dt);
		if (!r) {
			/* Answering must not recurse into I/O to this device. */
			noio = memalloc_noio_save();
			ok = dmu_handle_responses(dt, ch->wbuf, n, &bad,
						  &drain);
			memalloc_noio_restore(noio);
			done += (size_t)ok * DMU_MSG_SIZE;
		}
		mutex_unlock(&dt->mutex);
	}
	mutex_unlock(&ch->wmutex);
	/*
	 * INVALIDATE: no I/O through the dropped extents is left in flight.
	 * Only a fatal signal ends the wait early; the process is going away.
	 */
	if (drain) {
		atomic64_inc(&dt->c.drains);
		dmu_drain_sync_wait(&dt->drain, drain);
	}
	dmu_target_put(dt);
	if (done)
		return done;
	if (bad)
		return -EINVAL;
	return r;
}

static __poll_t dmu_control_poll(struct file *file, poll_table *wait)
{
	struct dmu_channel *ch = file->private_data;
	__poll_t mask = EPOLLOUT | EPOLLWRNORM;
	struct dmu_target *dt;

	poll_wait(file, &ch->wait, wait);
	spin_lock(&ch->lock);
	dt = ch->dt;
	if (ch->detached)
		mask |= EPOLLHUP | EPOLLERR;
	else if (dt && !list_empty_careful(&dt->send_queue))
		mask |= EPOLLIN | EPOLLRDNORM;
	spin_unlock(&ch->lock);
	return mask;
}

static const struct file_operations dmu_control_fops = {
	.owner = THIS_MODULE,
	.open = dmu_control_open,
	.release = dmu_control_release,
	.read = dmu_control_read,
	.write = dmu_control_write,
	.poll = dmu_control_poll,
	.unlocked_ioctl = dmu_control_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
};

static struct miscdevice dmu_control_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = DMU_CONTROL_NAME,
	.fops = &dmu_control_fops,
	.mode = 0600,
};

int dmu_control_init(void)
{
	return misc_register(&dmu_control_misc);
}

void dmu_control_exit(void)
{
	misc_deregister(&dmu_control_misc);
}
