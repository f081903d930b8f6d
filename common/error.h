// Errors as values.  Every fallible function returns Result<T>; an Error
// carries an errno-style code and a message that already names the file, the
// offset and what was expected, so the CLI can print it as one line.
#pragma once

#include <cerrno>
#include <string>
#include <utility>

#include <tl/expected.hpp>

namespace dmu {

struct Error {
  int code = EIO;       // errno value that best describes the failure
  std::string message;  // "disk.qcow2: L1 table at 0x30000 runs past end of file"

  // Prefixes context: Error{...}.context("base.qcow2") -> "base.qcow2: <message>".
  Error context(const std::string& what) const& { return Error{code, what + ": " + message}; }
  Error context(const std::string& what) && {
    message = what + ": " + message;
    return std::move(*this);
  }
};

template <class T>
using Result = tl::expected<T, Error>;

// Builds an unexpected Error; reads like `return fail(EINVAL, "bad magic");`.
inline tl::unexpected<Error> fail(int code, std::string message) {
  return tl::unexpected<Error>(Error{code, std::move(message)});
}
inline tl::unexpected<Error> fail(Error e) { return tl::unexpected<Error>(std::move(e)); }

// An Error from the current errno: "<what>: <strerror(errno)>".
Error errno_error(const std::string& what, int code = errno);

// Hex helper for messages about on-disk offsets.
std::string hex(unsigned long long value);

}  // namespace dmu

// Propagates a failed Result<T> from the current function.
#define DMU_TRY(expr)                                            \
  do {                                                           \
    if (auto dmu_try_result_ = (expr); !dmu_try_result_)         \
      return ::tl::unexpected(std::move(dmu_try_result_).error()); \
  } while (0)

#define DMU_CONCAT_INNER_(a, b) a##b
#define DMU_CONCAT_(a, b) DMU_CONCAT_INNER_(a, b)

// `DMU_ASSIGN_OR_RETURN(auto x, f());` declares x from a successful Result or
// returns its error.
#define DMU_ASSIGN_OR_RETURN(lhs, expr) \
  DMU_ASSIGN_OR_RETURN_IMPL_(DMU_CONCAT_(dmu_result_, __LINE__), lhs, expr)
#define DMU_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr)              \
  auto tmp = (expr);                                            \
  if (!tmp) return ::tl::unexpected(std::move(tmp).error());    \
  lhs = std::move(*tmp)
