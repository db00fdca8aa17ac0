// The collective watchdog's entry point for communicator backends (communicator.h): a rank
// stuck in one collective (or, for NCCL, in a host wait for the stream its collectives were
// enqueued on; on a lone GPU, in any host wait for its stream: WatchStreamWaits) past
// CollectiveTimeoutSeconds() prints the rank, the communicator and the operation, runs the fatal
// hook and ends the process with exit code 3.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "kernels/ops.h"
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

// The watchdog's fatal path, for a backend that finds a failure itself (e.g. an NCCL
// asynchronous error while waiting for the stream): prints "tessera: watchdog: rank R: <message>;
// ending the job", runs the fatal hook, then `cleanup` (e.g. ncclCommAbort, which may itself
// block: the watchdog thread stays armed, so a CollectiveGuard still held bounds it), and exits
// with code 3. When two threads get here, the second waits a few seconds for the first to end the
// process and then ends it itself.
[[noreturn]] void EndJob(const std::string& message, const std::function<void()>& cleanup);

// A host wait for a stream that no communicator watches (one GPU: the NCCL communicator installs
// its own, parallel/nccl_communicator.h): records `event` on the stream and polls it (yielding
// for the first 50 ms, then sleeping 100 us between polls) under a CollectiveGuard on
// communicator "device", so a device that never finishes ends the job after
// CollectiveTimeoutSeconds() ("stuck in stream wait on communicator 'device'", exit code 3)
// instead of blocking forever. A device error ends it at the poll that sees it (the event's
// Query fails).
std::function<void()> WatchedStreamWait(std::shared_ptr<DeviceEvent> event);
// Installs WatchedStreamWait with an event of `backend` as its Backend::SetStreamWait.
void WatchStreamWaits(Backend& backend);

}  // namespace tessera
