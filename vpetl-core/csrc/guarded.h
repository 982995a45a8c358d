// What every shim function shares: C++ exceptions become a non-zero status (or a null pointer) and a
// per-thread message for `*_last_error`, whose first lines are shown (the rest of a c10 error is a
// C++ backtrace that means nothing to a user). Each shim library has its own copy.
#pragma once

#include <exception>
#include <string>

namespace vpetl {

inline thread_local std::string last_error;

template <typename F>
int guarded(F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
  } catch (...) {
    last_error = "unknown C++ exception";
  }
  return 1;
}

// The message of the last failure on this thread, without c10's backtrace.
inline const char* shown_last_error() {
  static thread_local std::string shown;
  auto end = last_error.find("\nException raised from");
  shown = end == std::string::npos ? last_error : last_error.substr(0, end);
  return shown.c_str();
}

}  // namespace vpetl
