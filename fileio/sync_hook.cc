// SyncHook: see sync_hook.h.
#include "fileio/sync_hook.h"

namespace dmu {
namespace {

thread_local SyncHook* current = nullptr;

}  // namespace

SyncHook::SyncHook(std::function<void()> before, std::function<void()> after)
    : before_(std::move(before)), after_(std::move(after)), outer_(current) {
  current = this;
}

SyncHook::~SyncHook() {
  current = outer_;
}

Result<void> SyncHook::around(const std::function<Result<void>()>& sync) {
  SyncHook* hook = current;
  if (!hook) return sync();
  // Off while its own code runs: a sync made by before() or after() runs
  // plain instead of recursing.
  current = nullptr;
  struct Restore {
    SyncHook* hook;
    bool armed = false;  // before() ran: after() must
    ~Restore() {
      if (armed) hook->after_();
      current = hook;
    }
  } restore{hook};
  hook->before_();
  restore.armed = true;
  return sync();
}

}  // namespace dmu
