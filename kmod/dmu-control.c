// SPDX-License-Identifier: GPL-2.0
/*
 * dm-userspace control device /dev/dm-userspace (misc, 0600, root only).
 *
 * Each open file is a struct dmu_channel.  DMU_IOC_BIND attaches it to the
 * target whose table names the key (the most recently created one, so a
 * table reload binds to the new table); then read() hands out requests,
 * write() takes responses and poll() waits for requests.  Closing the file
 * unbinds (dmu_daemon_gone()).  When the target is destroyed first, the
 * channel is detached: every later call returns -ENODEV and poll reports
 * EPOLLHUP.  The channel holds a reference on the target, so a detached
 * channel never touches freed memory; it only looks at dt->dying.
 */
#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/poll.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "dmu.h"

struct dmu_channel {
	spinlock_t lock;		/* dt, detached */
	struct dmu_target *dt;		/* bound target (holds a reference) */
	bool detached;			/* the bound target was destroyed */
	wait_queue_head_t wait;		/* readers and pollers */
	struct mutex io_mutex;		/* rbuf, wbuf */
	struct dmu_request rbuf[DMU_IO_MSGS];
	struct dmu_req *rbatch[DMU_IO_MSGS];	/* what rbuf was made from */
	struct dmu_response wbuf[DMU_IO_MSGS];
};

static LIST_HEAD(dmu_registry);
static DEFINE_MUTEX(dmu_registry_lock);

void dmu_registry_add(struct dmu_target *dt)
{
	mutex_lock(&dmu_registry_lock);
	list_add(&dt->registry, &dmu_registry);
	mutex_unlock(&dmu_registry_lock);
}

void dmu_registry_del(struct dmu_target *dt)
{
	mutex_lock(&dmu_registry_lock);
	list_del_init(&dt->registry);
	mutex_unlock(&dmu_registry_lock);
}

static void dmu_target_release(struct kref *kref)
{
	kfree(container_of(kref, struct dmu_target, kref));
}

void dmu_target_put(struct dmu_target *dt)
{
	kref_put(&dt->kref, dmu_target_release);
}

void dmu_channel_wake(struct dmu_channel *ch)
{
	wake_up_interruptible(&ch->wait);
}

/* dtr: cut the bound channel loose; it keeps dt's memory alive only. */
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
	mutex_init(&ch->io_mutex);
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

static struct dmu_target *dmu_registry_find(const char *key)
{
	struct dmu_target *dt;

	lockdep_assert_held(&dmu_registry_lock);
	list_for_each_entry(dt, &dmu_registry, registry)
		if (!strcmp(dt->key, key))
			return dt;
	return NULL;
}

/* A new daemon: count what it gets again; its answer clock starts now. */
static unsigned int dmu_count_resent(struct dmu_target *dt)
{
	struct dmu_req *req;
	unsigned int n = 0;

	lockdep_assert_held(&dt->lock);
	list_for_each_entry(req, &dt->send_queue, list) {
		n += req->resent;
		req->queued_at = jiffies;
	}
	return n;
}

static long dmu_ioctl_bind(struct dmu_channel *ch, void __user *arg)
{
	struct dmu_bind b;
	struct dmu_target *dt;
	int r = 0;

	if (copy_from_user(&b, arg, sizeof(b)))
		return -EFAULT;
	if (b.reserved0 || b.reserved[0] || b.reserved[1] || b.reserved[2])
		return -EINVAL;
	if (b.version_major != DMU_VERSION_MAJOR)
		return -EPROTO;
	if (strnlen(b.key, DMU_KEY_LEN) == DMU_KEY_LEN)
		return -EINVAL;

	spin_lock(&ch->lock);
	if (ch->dt || ch->detached)
		r = -EALREADY;
	spin_unlock(&ch->lock);
	if (r)
		return r;

	mutex_lock(&dmu_registry_lock);
	dt = dmu_registry_find(b.key);
	if (!dt) {
		mutex_unlock(&dmu_registry_lock);
		return -ENOENT;
	}
	mutex_lock(&dt->mutex);
	spin_lock_irq(&dt->lock);
	if (dt->dying) {
		r = -ENOENT;
	} else if (dt->channel) {
		r = -EBUSY;
	} else {
		dt->channel = ch;
		dt->features = b.features & DMU_FEATURE_ALL;
		dt->state = DMU_DAEMON_BOUND;
		b.resent = dmu_count_resent(dt);
		if (!list_empty(&dt->send_queue))
			dmu_channel_wake(ch);
	}
	spin_unlock_irq(&dt->lock);
	if (!r) {
		kref_get(&dt->kref);	/* the binding's reference */
		spin_lock(&ch->lock);
		ch->dt = dt;
		spin_unlock(&ch->lock);
		if (dt->daemon_timeout)
			mod_delayed_work(dt->wq, &dt->timeout_work,
					 (unsigned long)dt->daemon_timeout * HZ);
		b.features = dt->features;
		b.target_sectors = dt->ti->len;
		b.block_sectors = dt->block_sectors;
		b.nr_devs = dt->nr_devs;
	}
	mutex_unlock(&dt->mutex);
	mutex_unlock(&dmu_registry_lock);
	if (r)
		return r;

	b.version_major = DMU_VERSION_MAJOR;
	b.version_minor = DMU_VERSION_MINOR;
	b.version_patch = DMU_VERSION_PATCH;
	if (copy_to_user(arg, &b, sizeof(b)))
		return -EFAULT;	/* stays bound; closing the file unbinds */
	return 0;
}

static long dmu_ioctl_list(struct dmu_channel *ch, void __user *arg)
{
	struct dmu_extent_info *buf;
	struct dmu_list_extents l;
	struct dmu_target *dt;
	unsigned int max;
	u64 next;
	int r;

	if (copy_from_user(&l, arg, sizeof(l)))
		return -EFAULT;
	if (l.count || l.next_block || l.reserved[0] || l.reserved[1])
		return -EINVAL;
	max = min_t(u32, l.max, DMU_MAX_LIST);
	buf = kvmalloc_array(max(max, 1U), sizeof(*buf), GFP_KERNEL);
	if (!buf)
		return -ENOMEM;
	dt = dmu_channel_get(ch);
	if (IS_ERR(dt)) {
		kvfree(buf);
		return PTR_ERR(dt);
	}
	mutex_lock(&dt->mutex);
	r = dmu_channel_check(ch, dt);
	if (!r) {
		spin_lock_irq(&dt->cache.lock);
		l.count = dmu_cache_list(&dt->cache, l.start_block, buf, max, &next);
		spin_unlock_irq(&dt->cache.lock);
		l.next_block = next;
	}
	mutex_unlock(&dt->mutex);
	dmu_target_put(dt);
	if (!r && (copy_to_user(u64_to_user_ptr(l.buf), buf,
				l.count * sizeof(*buf)) ||
		   copy_to_user(arg, &l, sizeof(l))))
		r = -EFAULT;
	kvfree(buf);
	return r;
}

static long dmu_control_ioctl(struct file *file, unsigned int cmd,
			      unsigned long arg)
{
	struct dmu_channel *ch = file->private_data;

	switch (cmd) {
	case DMU_IOC_BIND:
		return dmu_ioctl_bind(ch, (void __user *)arg);
	case DMU_IOC_LIST_EXTENTS:
		return dmu_ioctl_list(ch, (void __user *)arg);
	default:
		return -ENOTTY;
	}
}

static void dmu_format(struct dmu_request *m, struct dmu_req *req)
{
	memset(m, 0, sizeof(*m));
	m->id = req->id;
	switch (req->kind) {
	case DMU_RQ_MAP:
		m->type = DMU_REQ_MAP;
		m->flags = req->map_flags;
		m->block = req->block;
		m->nr_blocks = req->nr_blocks;
		break;
	case DMU_RQ_COMMIT:
		m->type = DMU_REQ_COMMIT;
		break;
	default:
		m->type = DMU_REQ_DONE;
		m->status = req->error;
		break;
	}
}

/*
 * Move up to max queued requests to the sent list and format them into
 * ch->rbuf.  DONE messages are finished with once read; a discard for a
 * daemon without DMU_FEATURE_DISCARD is completed here instead.
 */
static unsigned int dmu_take_requests(struct dmu_target *dt,
				      struct dmu_channel *ch, unsigned int max,
				      struct list_head *done,
				      struct bio_list *discards)
{
	struct dmu_req *req, *tmp;
	unsigned int n = 0;

	spin_lock_irq(&dt->lock);
	list_for_each_entry_safe(req, tmp, &dt->send_queue, list) {
		if (n == max)
			break;
		if (req->kind == DMU_RQ_MAP &&
		    (req->map_flags & DMU_MAP_DISCARD) &&
		    !(dt->features & DMU_FEATURE_DISCARD)) {
			dmu_req_unlink(req);
			bio_list_merge(discards, &req->bios);
			bio_list_init(&req->bios);
			list_add_tail(&req->list, done);
			continue;
		}
		ch->rbatch[n] = req;
		dmu_format(&ch->rbuf[n++], req);
		if (req->kind == DMU_RQ_DONE) {
			list_move_tail(&req->list, done);
		} else {
			req->state = DMU_RS_SENT;
			list_move_tail(&req->list, &dt->sent);
		}
	}
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

/* copy_to_user() failed: put the batch back at the head of the queue. */
static void dmu_requeue(struct dmu_target *dt, struct dmu_channel *ch,
			unsigned int n)
{
	spin_lock_irq(&dt->lock);
	while (n--) {
		struct dmu_req *req = ch->rbatch[n];

		if (req->kind != DMU_RQ_DONE)
			req->state = DMU_RS_QUEUED;
		list_move(&req->list, &dt->send_queue);
	}
	spin_unlock_irq(&dt->lock);
}

/* Free read DONE messages, complete discards nobody needs to see. */
static void dmu_finish_taken(struct list_head *done, struct bio_list *discards)
{
	struct dmu_req *req, *tmp;
	struct bio *bio;

	list_for_each_entry_safe(req, tmp, done, list) {
		list_del_init(&req->list);
		dmu_req_free(req);
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
	mutex_lock(&ch->io_mutex);
	for (;;) {
		dt = dmu_channel_get(ch);
		if (IS_ERR(dt)) {
			r = PTR_ERR(dt);
			break;
		}
		mutex_lock(&dt->mutex);
		r = dmu_channel_check(ch, dt);
		n = r ? 0 : dmu_take_requests(dt, ch, max, &done, &discards);
		if (n && copy_to_user(buf, ch->rbuf, n * DMU_MSG_SIZE)) {
			dmu_requeue(dt, ch, n);
			r = -EFAULT;
		} else if (n) {
			r = n * DMU_MSG_SIZE;
		}
		/* Under dt->mutex: dtr cannot tear the pool down meanwhile. */
		dmu_finish_taken(&done, &discards);
		mutex_unlock(&dt->mutex);
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
	mutex_unlock(&ch->io_mutex);
	return r;
}

static ssize_t dmu_control_write(struct file *file, const char __user *buf,
				 size_t len, loff_t *ppos)
{
	struct dmu_channel *ch = file->private_data;
	struct dmu_target *dt;
	size_t done = 0;
	bool bad = false;
	int r;

	if (!len || len % DMU_MSG_SIZE)
		return -EINVAL;
	dt = dmu_channel_get(ch);
	if (IS_ERR(dt))
		return PTR_ERR(dt);
	mutex_lock(&ch->io_mutex);
	mutex_lock(&dt->mutex);
	r = dmu_channel_check(ch, dt);
	while (!r && !bad && done < len) {
		unsigned int n = min_t(size_t, (len - done) / DMU_MSG_SIZE,
				       DMU_IO_MSGS);
		unsigned int ok;

		if (copy_from_user(ch->wbuf, buf + done, n * DMU_MSG_SIZE)) {
			r = -EFAULT;
			break;
		}
		ok = dmu_handle_responses(dt, ch->wbuf, n, &bad);
		done += (size_t)ok * DMU_MSG_SIZE;
	}
	mutex_unlock(&dt->mutex);
	mutex_unlock(&ch->io_mutex);
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
