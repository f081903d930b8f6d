// In-memory Env for unit tests: files live in a map and survive being closed
// and reopened through the same MemEnv.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "fileio/file.h"

namespace dmu {

class MemEnv : public Env {
 public:
  Result<std::unique_ptr<File>> open(const std::string& path, OpenMode mode) override;
  bool exists(const std::string& path) override;
  Result<void> remove(const std::string& path) override;
  // Nothing is lost here: names are durable at once.
  Result<void> sync_directory_of(const std::string&) override { return {}; }
  Result<std::string> identity(const std::string& path) override { return path; }

  // Test access to a file's bytes (empty if absent).
  std::vector<uint8_t> contents(const std::string& path);
  void set_contents(const std::string& path, std::vector<uint8_t> bytes);

 private:
  struct Data {
    std::mutex mu;
    std::vector<uint8_t> bytes;
  };
  class MemFile;

  std::mutex mu_;
  std::map<std::string, std::shared_ptr<Data>> files_;
};

}  // namespace dmu
