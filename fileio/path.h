// Splitting a path at its last '/', the one way every engine and Env does
// it (paths as given: no normalisation, no symlinks resolved).
#pragma once

#include <string>

namespace dmu {

// The directory that holds `path`, as a path to open: "dir" for "dir/a",
// "/" for "/a", "." for "a".
inline std::string parent_directory(const std::string& path) {
  const auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

// What a name relative to `path`'s directory is appended to: "dir/" for
// "dir/a", "/" for "/a", "" for "a".
inline std::string directory_prefix(const std::string& path) {
  const auto slash = path.rfind('/');
  return slash == std::string::npos ? std::string() : path.substr(0, slash + 1);
}

}  // namespace dmu
