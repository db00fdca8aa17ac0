#include "kernels/base/check.h"

namespace tessera {

int& ProcessRank() {
  static int rank = -1;
  return rank;
}

void FatalError(const char* file, int line, const std::string& message) {
  if (ProcessRank() >= 0) {
    std::fprintf(stderr, "tessera: fatal [rank %d] %s:%d: %s\n", ProcessRank(), file, line,
                 message.c_str());
  } else {
    std::fprintf(stderr, "tessera: fatal %s:%d: %s\n", file, line, message.c_str());
  }
  std::fflush(stderr);
  std::abort();
}

}  // namespace tessera
