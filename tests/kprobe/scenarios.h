// The probe's scenarios, one function each; every one prints
// `dmu-kmod-probe: event=<name> key=value ...` lines to stderr and returns
// the exit code (0 when the kernel did what the protocol header promises).
#pragma once

#include <cstdint>
#include <string>

namespace dmu::kprobe {

// Two threads, one fd: blocking reader, writer answering identity extents.
// With relocate_to, SIGUSR1 makes it push a relocation: block relocate
// becomes a NEW extent at block relocate_to's place, copied from its own.
struct ServeOptions {
  std::string key;
  uint64_t relocate = 0;
  uint64_t relocate_to = 0;
};
int serve(const ServeOptions& options);
// A read() or write() of the control device whose user buffer faults and
// stays unresolved (userfaultfd): the copy blocks for good.  The kernel
// must still serve messages, suspend and timeouts meanwhile.
int stall_copy(const std::string& key, bool write);
// BIND with another major version: -EPROTO and the kernel's version back.
int version_mismatch();
// A daemon answers a write with a NEW extent, reads its DONE, dies before a
// COMMIT (phase 1); the next daemon lists the allocation and reads the DONE
// again, then commits (phase 2); the one after sees nothing left (phase 3).
int done_replay(const std::string& key, int phase, uint64_t block, uint64_t id);
// Pushes count extents, then one LIST_EXTENTS with room for more must list
// them all.
int list_extents(const std::string& key, uint64_t count);
// Two threads BIND two keys on one fd at the same instant, rounds times,
// each round on a new fd: exactly one may succeed (the other gets
// EALREADY or, for the same key, EBUSY); two successes would leave the
// first target bound to a channel the fd's release never unbinds.
int bind_race(const std::string& key1, const std::string& key2, uint64_t rounds);
// fdatasync() of a device: one empty flush.
int fsync_device(const std::string& path);

}  // namespace dmu::kprobe
