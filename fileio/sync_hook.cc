// SyncHook: see sync_hook.h.
#include "fileio/sync_hook.h"

#include <cassert>

namespace dmu {
namespace {

thread_local SyncHook* current = nullptr;

}  // namespace

SyncHook::SyncHook(std::function<void()> before, std::function<void()> after)
    : before_(std::move(before)), after_(std::move(after)) {
  assert(!current);
  current = this;
}

SyncHook::~SyncHook() {
  current = nullptr;
}

Result<void> SyncHook::around(const std::function<Result<void>()>& sync) {
  SyncHook* hook = current;
  if (!hook) return sync();
  // Off while its own code runs: a sync made by before() or after() runs
  // plain instead of recursing.
  current = nullptr;
  hook->before_();
  Result<void> r = sync();
  hook->after_();
  current = hook;
  return r;
}

}  // namespace dmu
