// DmDevice implementation over libdevmapper: create (with a udev cookie, or
// the library's own node creation when udev is absent), status, message,
// remove.  libdevmapper reports problems through its log callback, so each
// operation collects the error lines it logs and returns them as the Error.
#include "mapper/dm_device.h"

#include <libdevmapper.h>
#include <linux/dm-ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <utility>

namespace dmu::mapper {
namespace {

// libdevmapper's log levels (libdevmapper.h does not export them).
constexpr int kLogLevelMask = 0xf;
constexpr int kLogWarn = 4;

thread_local std::string g_dm_log;  // error/warning lines of the current operation
thread_local int g_dm_errno = 0;

void capture_dm_log(int level, const char* /*file*/, int /*line*/, int dm_errno_or_class,
                    const char* f, ...) {
  if ((level & kLogLevelMask) > kLogWarn) return;  // notices and debug chatter
  char buf[512];
  va_list ap;
  va_start(ap, f);
  std::vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  if (!g_dm_log.empty()) g_dm_log += "; ";
  g_dm_log += buf;
  if (dm_errno_or_class > 0) g_dm_errno = dm_errno_or_class;
}

bool udev_running() {
  if (const char* v = std::getenv("DM_DISABLE_UDEV"); v && *v) return false;
  return ::access("/run/udev/control", F_OK) == 0;
}

// Once per process: our log callback, and no udev synchronisation when
// there is no udev to synchronise with (libdevmapper then makes the nodes).
void setup_libdevmapper() {
  static std::once_flag once;
  std::call_once(once, [] {
    dm_log_with_errno_init(capture_dm_log);
    if (!udev_running()) dm_udev_set_sync_support(0);
  });
}

// Starts an operation: clears what the previous one logged.
void begin_operation() {
  setup_libdevmapper();
  g_dm_log.clear();
  g_dm_errno = 0;
}

Error operation_error(const std::string& what) {
  int code = g_dm_errno ? g_dm_errno : (errno ? errno : EIO);
  std::string detail = g_dm_log.empty() ? "device-mapper operation failed" : g_dm_log;
  return Error{code, what + ": " + detail};
}

struct TaskDeleter {
  void operator()(dm_task* t) const { dm_task_destroy(t); }
};
using Task = std::unique_ptr<dm_task, TaskDeleter>;

Result<Task> new_task(int type, const std::string& name, const std::string& what) {
  Task t(dm_task_create(type));
  if (!t) return fail(operation_error(what + ": create libdevmapper task"));
  if (!name.empty() && !dm_task_set_name(t.get(), name.c_str()))
    return fail(operation_error(what + ": set name"));
  return t;
}

// Runs a task that creates or removes a node and waits for the node work
// (udev's, or the library's fallback) to finish.
bool run_with_cookie(dm_task* t, uint16_t udev_flags = 0) {
  uint32_t cookie = 0;
  if (!dm_task_set_cookie(t, &cookie, udev_flags)) return false;
  bool ok = dm_task_run(t) != 0;
  (void)dm_udev_wait(cookie);
  return ok;
}

bool node_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISBLK(st.st_mode);
}

}  // namespace

bool DmDevice::available() {
  begin_operation();
  char version[64];
  return dm_driver_version(version, sizeof version) != 0;
}

Result<DmDevice> DmDevice::create(const std::string& name, const std::vector<DmTableLine>& table,
                                  const DmCreateOptions& options) {
  const std::string what = "dm device " + name;
  if (name.empty() || name.size() >= DM_NAME_LEN || name.find('/') != std::string::npos)
    return fail(EINVAL, what + ": invalid device name");
  if (table.empty()) return fail(EINVAL, what + ": empty table");
  begin_operation();
  DMU_ASSIGN_OR_RETURN(Task t, new_task(DM_DEVICE_CREATE, name, what));
  if (!options.uuid.empty() && !dm_task_set_uuid(t.get(), options.uuid.c_str()))
    return fail(operation_error(what + ": set uuid"));
  for (const auto& line : table) {
    if (!dm_task_add_target(t.get(), line.start, line.length, line.type.c_str(),
                            line.params.c_str()))
      return fail(operation_error(what + ": add table line " + line.type + " " + line.params));
  }
  if (options.read_only && !dm_task_set_ro(t.get()))
    return fail(operation_error(what + ": set read-only"));
  (void)dm_task_set_add_node(t.get(), DM_ADD_NODE_ON_CREATE);
  if (!run_with_cookie(t.get())) {
    std::string table_text;
    for (const auto& line : table)
      table_text += (table_text.empty() ? "" : " | ") + std::to_string(line.start) + " " +
                    std::to_string(line.length) + " " + line.type + " " + line.params;
    return fail(operation_error(what + ": create with table '" + table_text + "'"));
  }
  dm_info info{};
  if (!dm_task_get_info(t.get(), &info) || !info.exists)
    return fail(operation_error(what + ": created but not found"));

  DmDevice dev;
  dev.name_ = name;
  dev.dev_ = makedev(info.major, info.minor);
  // Without udev the library made the node while waiting on the cookie; make
  // sure of it, since callers hand /dev/mapper/NAME to others.
  if (!node_exists(dev.node_path())) {
    begin_operation();
    if (!dm_mknodes(name.c_str()) || !node_exists(dev.node_path()))
      return fail(operation_error(what + ": create node " + dev.node_path()));
  }
  return dev;
}

Result<DmDevice> DmDevice::adopt(const std::string& name) {
  const std::string what = "dm device " + name;
  begin_operation();
  DMU_ASSIGN_OR_RETURN(Task t, new_task(DM_DEVICE_INFO, name, what));
  if (!dm_task_run(t.get())) return fail(operation_error(what + ": info"));
  dm_info info{};
  if (!dm_task_get_info(t.get(), &info)) return fail(operation_error(what + ": info"));
  if (!info.exists) return fail(ENXIO, what + ": no such device");
  DmDevice dev;
  dev.name_ = name;
  dev.dev_ = makedev(info.major, info.minor);
  return dev;
}

DmDevice::DmDevice(DmDevice&& other) noexcept {
  *this = std::move(other);
}

DmDevice& DmDevice::operator=(DmDevice&& other) noexcept {
  if (this != &other) {
    (void)remove();
    name_ = std::exchange(other.name_, std::string());
    dev_ = std::exchange(other.dev_, 0);
  }
  return *this;
}

DmDevice::~DmDevice() {
  (void)remove();
}

Result<std::vector<DmTableLine>> DmDevice::status() const {
  const std::string what = "dm device " + name_;
  begin_operation();
  DMU_ASSIGN_OR_RETURN(Task t, new_task(DM_DEVICE_STATUS, name_, what));
  (void)dm_task_no_open_count(t.get());
  if (!dm_task_run(t.get())) return fail(operation_error(what + ": status"));
  std::vector<DmTableLine> lines;
  void* next = nullptr;
  do {
    uint64_t start = 0, length = 0;
    char* type = nullptr;
    char* params = nullptr;
    next = dm_get_next_target(t.get(), next, &start, &length, &type, &params);
    if (type) lines.push_back({start, length, type, params ? params : ""});
  } while (next);
  return lines;
}

Result<std::string> DmDevice::message(const std::string& text, uint64_t sector) const {
  return dm_message(name_, text, sector);
}

Result<std::string> dm_message(const std::string& name, const std::string& text, uint64_t sector) {
  const std::string what = "dm device " + name + ": message '" + text + "'";
  begin_operation();
  DMU_ASSIGN_OR_RETURN(Task t, new_task(DM_DEVICE_TARGET_MSG, name, what));
  if (!dm_task_set_sector(t.get(), sector) || !dm_task_set_message(t.get(), text.c_str()))
    return fail(operation_error(what));
  if (!dm_task_run(t.get())) return fail(operation_error(what));
  const char* reply = dm_task_get_message_response(t.get());
  return std::string(reply ? reply : "");
}

Result<void> DmDevice::remove() {
  if (name_.empty()) return {};
  const std::string what = "dm device " + name_;
  begin_operation();
  DMU_ASSIGN_OR_RETURN(Task t, new_task(DM_DEVICE_REMOVE, name_, what));
  (void)dm_task_retry_remove(t.get());
  if (!run_with_cookie(t.get())) return fail(operation_error(what + ": remove"));
  name_.clear();
  dev_ = 0;
  return {};
}

Result<void> DmDevice::fail_io() {
  const std::string what = "dm device " + name_;
  DMU_ASSIGN_OR_RETURN(auto lines, dm_table(name_));
  uint64_t sectors = 0;
  for (const auto& l : lines) sectors = std::max(sectors, l.start + l.length);
  if (sectors == 0) return fail(EINVAL, what + ": no table to replace");
  begin_operation();
  {
    DMU_ASSIGN_OR_RETURN(Task t, new_task(DM_DEVICE_RELOAD, name_, what));
    if (!dm_task_add_target(t.get(), 0, sectors, "error", "") || !dm_task_run(t.get()))
      return fail(operation_error(what + ": load an error table"));
  }
  begin_operation();
  DMU_ASSIGN_OR_RETURN(Task t, new_task(DM_DEVICE_RESUME, name_, what));
  // The suspend that comes with the swap: without a flush (which would wait
  // for the held I/O) and without freezing a file system.  udev's disk
  // rules need not look at a device that is about to go.
  if (!dm_task_no_flush(t.get()) || !dm_task_skip_lockfs(t.get()))
    return fail(operation_error(what + ": resume flags"));
  if (!run_with_cookie(t.get(), DM_UDEV_DISABLE_DISK_RULES_FLAG | DM_UDEV_DISABLE_OTHER_RULES_FLAG)) {
    Error e = operation_error(what + ": resume with the error table");
    undo_failed_swap();
    return fail(e);
  }
  return {};
}

void DmDevice::undo_failed_swap() {
  // A resume can fail after its suspend succeeded (the swap refused): the
  // old table would stay suspended and every reader would block in dm
  // core.  Drop the error table and resume the old one, as dmsetup does.
  begin_operation();
  if (auto clear = new_task(DM_DEVICE_CLEAR, name_, name_); clear) (void)dm_task_run(clear->get());
  auto info = dm_device_info(name_);
  if (!info || !info->suspended) return;
  begin_operation();
  if (auto resume = new_task(DM_DEVICE_RESUME, name_, name_); resume)
    (void)run_with_cookie(resume->get());
}

namespace {

// DM_DEVICE_STATUS or DM_DEVICE_TABLE of any device, as lines.
Result<std::vector<DmTableLine>> target_lines(const std::string& name, int type,
                                              const std::string& what) {
  begin_operation();
  DMU_ASSIGN_OR_RETURN(Task t, new_task(type, name, what));
  (void)dm_task_no_open_count(t.get());
  if (!dm_task_run(t.get())) return fail(operation_error(what));
  dm_info info{};
  if (!dm_task_get_info(t.get(), &info) || !info.exists)
    return fail(ENXIO, what + ": no such device");
  std::vector<DmTableLine> lines;
  void* next = nullptr;
  do {
    uint64_t start = 0, length = 0;
    char* type_name = nullptr;
    char* params = nullptr;
    next = dm_get_next_target(t.get(), next, &start, &length, &type_name, &params);
    if (type_name) lines.push_back({start, length, type_name, params ? params : ""});
  } while (next);
  return lines;
}

}  // namespace

Result<DmInfo> dm_device_info(const std::string& name) {
  const std::string what = "dm device " + name + ": info";
  begin_operation();
  DMU_ASSIGN_OR_RETURN(Task t, new_task(DM_DEVICE_INFO, name, what));
  if (!dm_task_run(t.get())) return fail(operation_error(what));
  dm_info info{};
  if (!dm_task_get_info(t.get(), &info)) return fail(operation_error(what));
  DmInfo out;
  out.exists = info.exists != 0;
  if (!out.exists) return out;
  out.open_count = info.open_count;
  out.suspended = info.suspended != 0;
  out.read_only = info.read_only != 0;
  out.dev = makedev(info.major, info.minor);
  if (const char* uuid = dm_task_get_uuid(t.get())) out.uuid = uuid;
  return out;
}

Result<std::vector<DmTableLine>> dm_status(const std::string& name) {
  return target_lines(name, DM_DEVICE_STATUS, "dm device " + name + ": status");
}

Result<std::vector<DmTableLine>> dm_table(const std::string& name) {
  return target_lines(name, DM_DEVICE_TABLE, "dm device " + name + ": table");
}

}  // namespace dmu::mapper
