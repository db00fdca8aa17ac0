// The collective watchdog's entry point for communicator backends (communicator.h): a rank
// stuck in one collective past CollectiveTimeoutSeconds() prints the rank, the communicator and
// the operation, runs the fatal hook and ends the process with exit code 3.
#pragma once

#include <cstddef>
#include <string>

#include "parallel/communicator.h"

namespace tessera {

// Marks a collective as in flight on this process for its lifetime (one at a time: collectives
// run on one thread).
class CollectiveGuard {
 public:
  CollectiveGuard(const std::string& comm, const char* op, size_t count);
  ~CollectiveGuard();
  CollectiveGuard(const CollectiveGuard&) = delete;
  CollectiveGuard& operator=(const CollectiveGuard&) = delete;
};

}  // namespace tessera
