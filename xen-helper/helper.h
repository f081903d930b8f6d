// dmu-xen-helper's work, event by event (main.cc runs the loop):
//
//  - add: block-dmu wrote B/dmu/request=add (and B/dmu/deadline).  We claim
//    it (backend.h), attach the target as xen-vbd-<domid>-<devid> into group
//    xen-dom<domid> (one mapping process per domain, daemon/group.h) within
//    what is left of block-dmu's wait, write block-dmu's own state (so its
//    `remove`, which runs `dmu detach`, works as if it had attached), the
//    keys blkback and libxl wait for, our debugging keys, and last
//    hotplug-status.  A failure is hotplug-error + hotplug-status=error.
//  - withdraw: an attached device whose add we could not answer is detached
//    by a `dmu detach` process, looked at and retried at every tick while it
//    is in use (or block-dmu's lock is busy).
//  - tick (every few seconds): the debugging keys of every xen-vbd record
//    whose backend shows dmu keys: mapping process pid, supervisor, the
//    kernel's counters (so a restarted mapping process shows up).
//  - gone domains (start-up, @releaseDomain, tick): records of domains Xen
//    no longer knows are detached once libxl is done with their backend (or
//    after a grace period) by `dmu detach` processes; once a record is
//    gone its keys and block-dmu state are removed.
//
// Nothing here owns a mapping process: they run in sessions of their own
// under their supervisors, so the helper can stop, restart or be upgraded
// while guests run; a new helper finds everything in /run/dmu.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "daemon/state_file.h"
#include "xen-helper/backend.h"
#include "xen-helper/xc.h"
#include "xen-helper/xs.h"

namespace dmu::xenhelper {

struct HelperOptions {
  std::string dmu_program;                     // the dmu binary (its `serve`)
  std::string hotplug_state = "/run/dmu/hotplug";  // block-dmu's state root
  std::chrono::seconds gone_grace{30};         // before detaching under a live backend
  // An attach waits this long for the domain's mapping process to bind the
  // disk, then refuses: block-dmu waits 29 s for our answer, and requests
  // of other domains wait behind this one.
  std::chrono::seconds attach_timeout{20};
};

class Helper {
 public:
  Helper(XenStore xs, XenCtrl xc, HelperOptions options)
      : xs_(std::move(xs)), xc_(std::move(xc)), o_(std::move(options)) {}

  // Watches, announces our pid, then catches up: requests made while no
  // helper ran, keys of devices attached before, gone domains.
  Result<void> start();
  // A watch fired on `path`.
  void on_watch(const std::string& path);
  // Periodic work (counters, gone domains).
  void tick();
  // Clean exit: block-dmu attaches by itself from now on.
  void stop();
  int fileno() const { return xs_.fileno(); }
  XenStore& xs() { return xs_; }

 private:
  void handle_add(BackendId id);
  Result<bool> answer(BackendId id, const std::vector<std::pair<std::string, std::string>>& keys,
                      std::vector<std::string> removes = {});
  void refuse(BackendId id, const std::string& message);
  // A device attached for an add we could not answer, to be detached.
  struct Withdrawal {
    BackendId id;
    std::string name;
    std::string why;
    std::chrono::steady_clock::time_point since;
    pid_t detaching = 0;  // its `dmu detach` process, while one runs
  };
  void withdraw(BackendId id, const daemon::DeviceState& s, const std::string& why);
  void retry_withdrawals();
  bool try_withdraw(Withdrawal& w);
  std::vector<std::pair<std::string, std::string>> changing_keys(BackendId id);
  void publish(BackendId id);
  void clean_gone_domains();
  void finish_gone_detaches(const std::set<uint32_t>& live);
  void scan_requests();

  XenStore xs_;
  XenCtrl xc_;
  HelperOptions o_;
  // Domains found gone, and when: their devices wait for libxl's remove.
  std::map<uint32_t, std::chrono::steady_clock::time_point> gone_since_;
  std::vector<Withdrawal> withdrawals_;  // retried at every tick until done
  // A gone domain's device, detached by a `dmu detach` process of its own
  // (a slow group may keep it a minute; no add waits for that).
  struct GoneDetach {
    BackendId id;
    std::string image;
    pid_t pid = 0;  // its `dmu detach` process (the last one started)
    std::chrono::steady_clock::time_point started;
    unsigned failures = 0;  // detaches that ended with the record still there
    std::chrono::steady_clock::time_point next_try;  // none before (backing off)
  };
  std::map<std::string, GoneDetach> gone_detaches_;  // by dm name
};

}  // namespace dmu::xenhelper
