// Fatal invariant checks for conditions no user input can cause.
//
// A failed TESSERA_CHECK prints the statement, file:line and the MPI rank (when one is set by
// launch/) and aborts. Anything a user can cause (bad config, bad request) returns absl::Status
// instead: see status_macros.h.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>

namespace tessera {

// The rank printed in fatal messages; launch/ sets it once MPI is up. -1 means "not distributed".
int& ProcessRank();

[[noreturn]] void FatalError(const char* file, int line, const std::string& message);

namespace internal {
// Collects `<<` context after a failed check, then aborts in its destructor.
class CheckFailure {
 public:
  CheckFailure(const char* file, int line, const char* condition) : file_(file), line_(line) {
    stream_ << "check failed: " << condition;
  }
  [[noreturn]] ~CheckFailure() { FatalError(file_, line_, stream_.str()); }
  template <typename T>
  CheckFailure& operator<<(const T& value) {
    if (!has_detail_) {
      stream_ << ": ";
      has_detail_ = true;
    }
    stream_ << value;
    return *this;
  }

 private:
  const char* file_;
  int line_;
  bool has_detail_ = false;
  std::ostringstream stream_;
};
struct Voidify {
  void operator&(const CheckFailure&) {}
};
}  // namespace internal

}  // namespace tessera

#define TESSERA_CHECK(condition)                 \
  (condition) ? (void)0                          \
              : ::tessera::internal::Voidify() & \
                    ::tessera::internal::CheckFailure(__FILE__, __LINE__, #condition)

#define TESSERA_CHECK_EQ(a, b) \
  TESSERA_CHECK((a) == (b)) << #a " = " << (a) << ", " #b " = " << (b) << " "
#define TESSERA_CHECK_LT(a, b) \
  TESSERA_CHECK((a) < (b)) << #a " = " << (a) << ", " #b " = " << (b) << " "
#define TESSERA_CHECK_LE(a, b) \
  TESSERA_CHECK((a) <= (b)) << #a " = " << (a) << ", " #b " = " << (b) << " "
