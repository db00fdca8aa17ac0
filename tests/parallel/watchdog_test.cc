// The watchdog over a lone GPU's host waits (WatchedStreamWait, installed by launch/device.cc when
// no NCCL communicator watches the stream): the wait records its event on the stream and returns
// once it has passed; when it never does (a hung device), the watchdog ends the job with exit
// code 3, naming the wait, after the collective timeout. On the CPU, with an event that passes
// after a number of polls or never.
#include <memory>

#include <gtest/gtest.h>

#include "parallel/watchdog.h"

namespace tessera {
namespace {

// An event that passes at its `passes_at`-th query after being recorded (never when < 0).
class PollCountEvent final : public DeviceEvent {
 public:
  explicit PollCountEvent(int passes_at) : passes_at_(passes_at) {}
  void Record() override {
    ++records;
    queries = 0;
  }
  bool Query() override { return passes_at_ >= 0 && ++queries >= passes_at_; }
  void Wait() override {}
  int records = 0, queries = 0;

 private:
  const int passes_at_;
};

TEST(WatchdogTest, StreamWaitReturnsOnceTheEventPasses) {
  for (int passes_at : {1, 7}) {
    auto event = std::make_shared<PollCountEvent>(passes_at);
    const std::function<void()> wait = WatchedStreamWait(event);
    wait();
    wait();
    EXPECT_EQ(event->records, 2);
    EXPECT_EQ(event->queries, passes_at);
  }
}

TEST(WatchdogDeathTest, StreamWaitOnAHungDeviceEndsTheJob) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        CollectiveTimeoutSeconds() = 0.5;
        WatchedStreamWait(std::make_shared<PollCountEvent>(-1))();
      },
      ::testing::ExitedWithCode(3), "stuck in stream wait on communicator 'device'");
}

}  // namespace
}  // namespace tessera
