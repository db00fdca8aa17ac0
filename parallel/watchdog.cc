// The collective watchdog (communicator.h): one thread per process that ends the job when a rank
// stays in one collective past the timeout.
#include "parallel/watchdog.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "kernels/base/check.h"

namespace tessera {

double& CollectiveTimeoutSeconds() {
  static double seconds = [] {
    const char* env = std::getenv("TESSERA_COLLECTIVE_TIMEOUT");
    return env ? std::atof(env) : 300.0;
  }();
  return seconds;
}

namespace {

std::mutex& HookMutex() {
  static std::mutex mu;
  return mu;
}
std::function<void()>& FatalHook() {
  static std::function<void()> hook;
  return hook;
}

}  // namespace

void SetWatchdogFatalHook(std::function<void()> hook) {
  std::lock_guard<std::mutex> lock(HookMutex());
  FatalHook() = std::move(hook);
}

namespace {

// One watchdog thread per process: it ends the process when the operation in flight overstays.
class Watchdog {
 public:
  static Watchdog& Get() {
    static Watchdog* watchdog = new Watchdog();  // never destroyed: the thread outlives statics
    return *watchdog;
  }
  void Enter(const std::string& comm, const char* op, size_t count) {
    std::lock_guard<std::mutex> lock(mu_);
    comm_ = comm;
    op_ = op;
    count_ = count;
    start_ = std::chrono::steady_clock::now();
    busy_ = true;
  }
  void Leave() {
    std::lock_guard<std::mutex> lock(mu_);
    busy_ = false;
  }

 private:
  Watchdog() {
    std::thread([this] { Run(); }).detach();
  }
  void Run() {
    for (;;) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      const double limit = CollectiveTimeoutSeconds();
      std::lock_guard<std::mutex> lock(mu_);
      if (!busy_ || limit <= 0) continue;
      const double waited =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
      if (waited > limit) {
        char message[512];
        std::snprintf(message, sizeof(message),
                      "stuck in %s on communicator '%s' (%zu elements) for %.1f s (limit %.1f s)",
                      op_, comm_.c_str(), count_, waited, limit);
        EndJob(message, nullptr);
      }
    }
  }
  std::mutex mu_;
  bool busy_ = false;
  std::string comm_;
  const char* op_ = "";
  size_t count_ = 0;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace

[[noreturn]] void EndJob(const std::string& message, const std::function<void()>& cleanup) {
  static std::atomic<bool> ending{false};
  if (ending.exchange(true)) {
    // Another thread is ending the job; if its cleanup hangs, this one ends it.
    std::this_thread::sleep_for(std::chrono::seconds(10));
    std::_Exit(3);
  }
  std::fprintf(stderr, "tessera: watchdog: rank %d %s; ending the job\n", ProcessRank(),
               message.c_str());
  std::fflush(stderr);
  {
    std::lock_guard<std::mutex> hook_lock(HookMutex());
    if (FatalHook()) FatalHook()();
  }
  if (cleanup) cleanup();
  std::_Exit(3);  // mpirun sees a non-zero exit and tears the job down
}

CollectiveGuard::CollectiveGuard(const std::string& comm, const char* op, size_t count) {
  Watchdog::Get().Enter(comm, op, count);
}
CollectiveGuard::~CollectiveGuard() { Watchdog::Get().Leave(); }

std::function<void()> WatchedStreamWait(std::shared_ptr<DeviceEvent> event) {
  return [event] {
    event->Record();
    if (event->Query()) return;
    CollectiveGuard guard("device", "stream wait", 0);
    const auto start = std::chrono::steady_clock::now();
    while (!event->Query()) {
      // NOTE: as the NCCL communicator's wait: a decode step ends within the yield phase.
      if (std::chrono::steady_clock::now() - start < std::chrono::milliseconds(50)) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      }
    }
  };
}

void WatchStreamWaits(Backend& backend) {
  backend.SetStreamWait(WatchedStreamWait(std::shared_ptr<DeviceEvent>(backend.CreateEvent())));
}

}  // namespace tessera
