// Errors: every failure a user can cause (bad file, bad argument, too little memory) is thrown as
// detinfer::Error with a message that says what went wrong and, where we know, what to do.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace detinfer {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// cat("a", 1, 'b') -> "a1b": message building without <format> (gcc 12 lacks it).
template <typename... Args>
std::string cat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

template <typename... Args>
[[noreturn]] void fail(Args&&... args) {
  throw Error(cat(std::forward<Args>(args)...));
}

#define DETINFER_CHECK(cond, ...)                   \
  do {                                              \
    if (!(cond)) ::detinfer::fail(__VA_ARGS__);     \
  } while (0)

}  // namespace detinfer
