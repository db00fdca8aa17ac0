// Reliability under faults and abuse, as clients see it: a real `mpirun -np 2 tessera serve` job
// on the CPU backend, driven through the real gRPC client. Each test pins one bound that
// docs/reliability.md promises: the drain cut-off ends the job at once, a hung rank of an idle
// server and a wedged step loop turn health NOT_SERVING, a frozen client is dropped and its KV
// blocks freed, a slow reader's buffering is bounded, bad input is refused whole, errors are
// counted once, and 5,000 queued streams leave the running batch, health and cancellation alone.
//
// Fault bounds are generous (a loaded 2-core CI machine) but far below what the old behaviour
// took (a 60 s collective timeout, ~78 s for an idle hang, a generation run to its end); the
// flood test asserts the issue's own bar, with medians, a percentile and one retry.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "tests/rpc/server_harness.h"

namespace tessera {
namespace {

using Clock = std::chrono::steady_clock;
using testing::ServerJob;
const std::string kFixture = std::string(TESSERA_SOURCE_DIR) + "/tests/golden/fixtures/dense_gqa";

double Since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

v1::GenerateRequest Long(int32_t tag, int max_tokens) {
  v1::GenerateRequest r;
  for (int32_t id : {11, 12, 13, tag}) r.add_prompt_token_ids(id);
  r.set_max_tokens(max_tokens);
  r.set_ignore_eos(true);
  r.mutable_sampling()->set_temperature(0.0f);
  return r;
}

// Rank 1's pid: mpirun's tessera child that is not rank 0.
int Rank1Pid(const ServerJob& job) {
  const std::string cmd = "pgrep -P " + std::to_string(job.mpirun_pid()) + " -f 'tessera serve'";
  FILE* pipe = popen(cmd.c_str(), "r");
  int pid, rank1 = -1;
  while (fscanf(pipe, "%d", &pid) == 1) {
    if (pid != job.rank0_pid()) rank1 = pid;
  }
  pclose(pipe);
  return rank1;
}

std::string Health(const ServerJob& job) {
  ClientOptions options;
  options.address = job.address();
  options.timeout = std::chrono::milliseconds(2000);
  Client client(options);
  std::string state;
  grpc::Status status = client.Health("", &state);
  return status.ok() ? state : "ERROR " + status.error_message();
}

// Polls until health answers `want`; seconds it took, or -1 after `limit` seconds.
double WaitForHealth(const ServerJob& job, const std::string& want, double limit) {
  const auto start = Clock::now();
  while (Since(start) < limit) {
    if (Health(job) == want) return Since(start);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return -1;
}

// A sample of /metrics with its labels, e.g. `tessera:request_errors_total{code="UNAVAILABLE"}`.
double LabelledMetric(const ServerJob& job, const std::string& sample) {
  const std::string cmd =
      "curl -s http://127.0.0.1:" + std::to_string(job.metrics_port()) + "/metrics";
  FILE* pipe = popen(cmd.c_str(), "r");
  char line[4096];
  double value = 0;
  while (fgets(line, sizeof(line), pipe)) {
    // Every sample carries model_name first ({model_name="...",finished_reason="..."}); `sample`
    // names the other labels only.
    std::string l(line);
    const size_t model = l.find("{model_name=\"");
    if (model != std::string::npos) {
      const size_t end = l.find('"', model + 13);
      const size_t cut = end != std::string::npos && l[end + 1] == ',' ? end + 2 : end + 1;
      if (end != std::string::npos) l.erase(model + 1, cut - model - 1);
    }
    if (l.rfind(sample + " ", 0) == 0) value = std::stod(l.substr(sample.size() + 1));
  }
  pclose(pipe);
  return value;
}

int HttpHealth(const ServerJob& job) {
  const std::string cmd = "curl -s -o /dev/null -w '%{http_code}' --max-time 2 http://127.0.0.1:" +
                          std::to_string(job.metrics_port()) + "/health";
  FILE* pipe = popen(cmd.c_str(), "r");
  int code = 0;
  if (fscanf(pipe, "%d", &code) != 1) code = -1;
  pclose(pipe);
  return code;
}

// Streams `n` long requests on threads of their own; `started` counts those with a first token.
struct Streams {
  std::vector<grpc::Status> status;
  std::vector<std::thread> threads;
  std::atomic<int> started{0};
  const ServerJob& job;
  Streams(const ServerJob& job, int n, int max_tokens) : status(n), job(job) {
    for (int i = 0; i < n; ++i) {
      threads.emplace_back([this, &job, i, max_tokens] {
        auto client = job.MakeClient();
        bool first = true;
        status[i] = client->Generate(Long(i, max_tokens), [&](const v1::GenerateResponse&) {
          if (first) ++started;
          first = false;
        });
      });
    }
  }
  void WaitStarted(int n) {
    const auto start = Clock::now();
    while (started < n && Since(start) < 120)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    ASSERT_EQ(started.load(), n) << "the streams did not start";
  }
  void Join() {
    for (auto& t : threads) t.join();
    threads.clear();
  }
  ~Streams() {
    // A test that ended early: end the job first, or the streams run to their end.
    if (!threads.empty()) kill(-job.mpirun_pid(), SIGKILL);
    for (auto& t : threads) t.join();
  }
};

// The drain's cut-off ends the job with 1 at once: the workers are told to shut down, instead of
// waiting in a broadcast until their collective watchdog fires (60 s here).
TEST(ReliabilityTest, DrainCutOffExitsOneRightAway) {
  ServerJob job(2, {"--drain-timeout", "2", "--collective-timeout", "60"});
  Streams streams(job, 5, 3000);
  streams.WaitStarted(5);
  ASSERT_EQ(kill(job.rank0_pid(), SIGTERM), 0);
  const auto sent = Clock::now();
  streams.Join();
  const double cut = Since(sent);
  for (const grpc::Status& s : streams.status) {
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  }
  EXPECT_GT(cut, 1.5);  // the streams had their drain time
  EXPECT_EQ(job.Wait(std::chrono::seconds(50)), 1) << job.Log();
  // 2 s of drain, then about a step and the shutdown broadcast; 8 s leaves room for a busy CI.
  EXPECT_LT(Since(sent), 8.0) << job.Log();
}

// A hung rank of an idle server: the idle heartbeat needs every rank's answer, so health turns
// NOT_SERVING within --engine-stall-timeout (+ the 1 s heartbeat period) and the collective
// watchdog ends the job within --collective-timeout (+ the period).
TEST(ReliabilityTest, HungRankOfAnIdleServerIsDetected) {
  ServerJob job(2,
                {"--model", kFixture, "--collective-timeout", "6", "--engine-stall-timeout", "2"});
  ASSERT_EQ(Health(job), "SERVING");
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));  // idle heartbeats pass
  ASSERT_EQ(Health(job), "SERVING") << "an idle healthy server must stay SERVING";
  const int rank1 = Rank1Pid(job);
  ASSERT_GT(rank1, 0);
  ASSERT_EQ(kill(rank1, SIGSTOP), 0);
  const auto stopped = Clock::now();
  const double unhealthy = WaitForHealth(job, "NOT_SERVING", 10);
  EXPECT_GE(unhealthy, 0) << "health stayed SERVING with a hung rank\n" << job.Log();
  EXPECT_LT(unhealthy, 2 + 1 + 2.5);
  const int code = job.Wait(std::chrono::seconds(30));
  EXPECT_NE(code, 0);
  EXPECT_NE(code, -1) << "the job did not end\n" << job.Log();
  EXPECT_LT(Since(stopped), 6 + 1 + 4.0) << job.Log();
  EXPECT_NE(job.Log().find("watchdog"), std::string::npos) << job.Log();
  kill(rank1, SIGKILL);
}

// A wedged step loop (TESSERA_FAULT=stall-step@0) with work waiting turns health NOT_SERVING, on
// gRPC and on /health, within --engine-stall-timeout; a drain still ends the job.
TEST(ReliabilityTest, WedgedStepLoopTurnsHealthNotServing) {
  setenv("TESSERA_FAULT", "stall-step@0", 1);
  setenv("TESSERA_FAULT_AFTER_STEPS", "5", 1);
  ServerJob job(2, {"--model", kFixture, "--engine-stall-timeout", "2", "--drain-timeout", "1"});
  unsetenv("TESSERA_FAULT");
  unsetenv("TESSERA_FAULT_AFTER_STEPS");
  ASSERT_EQ(Health(job), "SERVING");
  EXPECT_EQ(HttpHealth(job), 200);
  const auto start = Clock::now();
  Streams streams(job, 1, 100);
  streams.WaitStarted(1);
  const double unhealthy = WaitForHealth(job, "NOT_SERVING", 10);
  EXPECT_GE(unhealthy, 0) << "health stayed SERVING with a wedged step loop\n" << job.Log();
  EXPECT_LT(Since(start), 2 + 4.0);
  EXPECT_EQ(HttpHealth(job), 503);
  EXPECT_NE(job.Log().find("made no progress"), std::string::npos) << job.Log();
  ASSERT_EQ(kill(job.rank0_pid(), SIGTERM), 0);
  streams.Join();
  EXPECT_EQ(streams.status[0].error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(job.Wait(std::chrono::seconds(20)), 1) << job.Log();
}

// A client that stops answering (SIGSTOP) is found by HTTP/2 keepalive: its connection is dropped,
// its request cancelled and its KV blocks freed, well before its 3,000 tokens would be done.
TEST(ReliabilityTest, FrozenClientIsDroppedAndItsBlocksFreed) {
  ServerJob job(
      2, {"--num-kv-blocks", "256", "--client-keepalive", "1", "--client-keepalive-timeout", "1"});
  const double idle = job.Metric("tessera:kv_cache_free_blocks");
  ASSERT_GT(idle, 0);
  const std::string cmd = std::string(TESSERA_BINARY) + " client --address " + job.address() +
                          " generate --prompt-ids 1,2,3,4,5 --max-tokens 3000 --ignore-eos" +
                          " --temperature 0 > /dev/null 2>&1 & echo $!";
  FILE* pipe = popen(cmd.c_str(), "r");
  int client = -1;
  ASSERT_EQ(fscanf(pipe, "%d", &client), 1);
  pclose(pipe);
  auto start = Clock::now();
  while (job.Metric("tessera:kv_cache_free_blocks") == idle && Since(start) < 60)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_LT(job.Metric("tessera:kv_cache_free_blocks"), idle) << "the request never ran";
  ASSERT_EQ(kill(client, SIGSTOP), 0);
  start = Clock::now();
  while (job.Metric("tessera:kv_cache_free_blocks") != idle && Since(start) < 30)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const double freed = Since(start);
  const double tokens = job.Metric("tessera:generation_tokens_total");
  kill(client, SIGKILL);
  EXPECT_EQ(job.Metric("tessera:kv_cache_free_blocks"), idle);
  // keepalive 1 s + timeout 1 s, then one step; generous for CI, far below 3,000 tokens' time.
  EXPECT_LT(freed, 6.0);
  EXPECT_LT(tokens, 3000) << "the generation ran to its end";
  EXPECT_EQ(LabelledMetric(job, "tessera:request_success_total{finished_reason=\"cancelled\"}"), 1);
  EXPECT_EQ(Health(job), "SERVING");
}

// Integers past 32 bits are refused with the value sent, not truncated and served.
TEST(ReliabilityTest, WideIntegersAreRefusedNotTruncated) {
  ServerJob job(2, {"--model", kFixture});
  auto client = job.MakeClient();
  auto expect = [&](const v1::GenerateRequest& r, const std::string& needle) {
    grpc::Status s = client->Generate(r, [](const v1::GenerateResponse&) {});
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << needle;
    EXPECT_NE(s.error_message().find(needle), std::string::npos) << s.error_message();
  };
  v1::GenerateRequest r = Long(1, 2);
  r.set_prompt_token_ids(0, static_cast<int64_t>(uint64_t{1} << 63));  // 2^63 on the wire
  expect(r, "-9223372036854775808");
  r = Long(1, 2);
  r.set_prompt_token_ids(1, int64_t{1} << 32);  // was read as 0
  expect(r, "4294967296");
  r = Long(1, 2);
  r.set_logprobs(4294967295u);
  expect(r, "got 4294967295");
  r = Long(1, 2);
  r.set_logprobs(uint64_t{1} << 32);  // was read as 0: the chosen token's logprob
  expect(r, "got 4294967296");
  r = Long(1, 2);
  r.set_max_tokens((uint64_t{1} << 32) + 2);  // was read as 2
  expect(r, "max_tokens is too large: 4294967298");
  r = Long(1, 2);
  r.add_stop_token_ids(int64_t{1} << 32);
  expect(r, "stop token id 4294967296");
  r = Long(1, 2);
  r.mutable_sampling()->set_top_k(int64_t{1} << 32);
  expect(r, "top_k");
  r = Long(1, 2);
  r.set_priority(-(int64_t{1} << 40));
  expect(r, "priority");
  EXPECT_TRUE(client->Generate(Long(1, 2), [](const v1::GenerateResponse&) {}).ok());
}

// An error the engine ends a request with is counted once in request_errors_total.
TEST(ReliabilityTest, EngineErrorsAreCountedOnce) {
  ServerJob job(2, {"--model", kFixture});
  ClientOptions options;
  options.address = job.address();
  options.timeout = std::chrono::milliseconds(50);
  Client client(options);
  constexpr int kRequests = 6;
  int failed = 0;
  for (int i = 0; i < kRequests; ++i) {
    grpc::Status s = client.Generate(Long(i, 480), [](const v1::GenerateResponse&) {});
    failed += s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
  }
  ASSERT_EQ(failed, kRequests);
  // Each request ended once, either by the engine's deadline (an error) or by gRPC's cancelling
  // the call at the same deadline (not an error); never counted twice.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const double errors =
      LabelledMetric(job, "tessera:request_errors_total{code=\"DEADLINE_EXCEEDED\"}");
  const double finished =
      LabelledMetric(job, "tessera:request_success_total{finished_reason=\"error\"}");
  EXPECT_LE(errors, kRequests);
  // Exactly one of the two counters per request: an error never shows as a finish too.
  EXPECT_EQ(finished, 0);
}

// Thousands of queued streams opened with the async client API: one completion queue, no thread
// per stream. Start() returns once every call is started; Cancel() cancels them all.
class QueuedFlood {
 public:
  QueuedFlood(const std::string& address, int n) : calls_(n) {
    // Several connections, as many clients would open (distinct arguments: no shared subchannel).
    for (int c = 0; c < 8; ++c) {
      grpc::ChannelArguments args;
      args.SetInt("tessera.test.channel", c);
      stubs_.push_back(v1::Generation::NewStub(
          grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args)));
    }
    poller_ = std::thread([this] {
      void* tag;
      bool ok;
      while (cq_.Next(&tag, &ok)) ++events_;
    });
    for (int i = 0; i < n; ++i) {
      Call& call = calls_[i];
      call.context.set_wait_for_ready(true);
      call.reader =
          stubs_[i % stubs_.size()]->AsyncGenerate(&call.context, Long(1000 + i, 100), &cq_, &call);
    }
  }
  void Cancel() {
    for (Call& call : calls_) call.context.TryCancel();
  }
  ~QueuedFlood() {
    Cancel();
    for (Call& call : calls_) call.reader->Finish(&call.status, &call);
    while (events_ < 2 * static_cast<int64_t>(calls_.size()))
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    cq_.Shutdown();
    poller_.join();
  }

 private:
  struct Call {
    grpc::ClientContext context;
    std::unique_ptr<grpc::ClientAsyncReader<v1::GenerateResponse>> reader;
    grpc::Status status;
  };
  std::vector<std::unique_ptr<v1::Generation::Stub>> stubs_;
  grpc::CompletionQueue cq_;
  std::vector<Call> calls_;
  std::atomic<int64_t> events_{0};
  std::thread poller_;
};

// Generated tokens per second over `seconds`.
double DecodeRate(const ServerJob& job, double seconds) {
  const double before = job.Metric("tessera:generation_tokens_total");
  const auto start = Clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  return (job.Metric("tessera:generation_tokens_total") - before) / Since(start);
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// The `q` quantile (nearest rank) of `n` health checks 25 ms apart, in seconds.
double HealthLatency(const ServerJob& job, int n, double q) {
  std::vector<double> took;
  for (int i = 0; i < n; ++i) {
    const auto start = Clock::now();
    EXPECT_EQ(Health(job), "SERVING");
    took.push_back(Since(start));
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  std::sort(took.begin(), took.end());
  return took[std::min(n - 1, static_cast<int>(q * n))];
}

// One measurement of the flood bar, on a job whose kRunning streams are decoding: the decode
// rate in 1 s windows before the flood, with it and after cancelling it (medians compared, so
// a burst of load from elsewhere on a shared machine moves one window, not the result); health's
// 90th percentile over 40 checks under the flood; the time from the client's last cancel until
// the engine's queue is empty (the server's backlog of cancels plus the step in progress; the
// client itself takes 0.2-0.8 s to send 5,000 cancels on 2 cores, printed as `sent`).
struct FloodFigures {
  double control = 0, flooded = 0, health = 0, sent = 0, cancelled = 0;
  bool MeetsTheBar() const { return flooded >= 0.9 * control && health < 0.1 && cancelled < 1.0; }
};

FloodFigures MeasureFlood(const ServerJob& job, int running, int queued) {
  FloodFigures f;
  std::vector<double> control, flooded;
  for (int i = 0; i < 3; ++i) control.push_back(DecodeRate(job, 1));
  const auto flood_start = Clock::now();
  auto flood = std::make_unique<QueuedFlood>(job.address(), queued);
  while (job.Metric("tessera:num_requests_waiting") < queued && Since(flood_start) < 60)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(job.Metric("tessera:num_requests_waiting"), queued);
  EXPECT_EQ(job.Metric("tessera:num_requests_running"), running);
  for (int i = 0; i < 5; ++i) flooded.push_back(DecodeRate(job, 1));
  f.health = HealthLatency(job, 40, 0.9);
  const auto cancel_start = Clock::now();
  flood->Cancel();
  const auto cancel_sent = Clock::now();
  while (job.Metric("tessera:num_requests_waiting") > 0 && Since(cancel_start) < 30)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  f.cancelled = Since(cancel_sent);
  f.sent = std::chrono::duration<double>(cancel_sent - cancel_start).count();
  EXPECT_EQ(job.Metric("tessera:num_requests_running"), running);
  flood.reset();
  std::this_thread::sleep_for(std::chrono::seconds(1));  // the cancelled calls' ends are sent
  for (int i = 0; i < 3; ++i) control.push_back(DecodeRate(job, 1));
  f.control = Median(control);
  f.flooded = Median(flooded);
  std::printf(
      "decode %.0f tok/s with %d streams, %.0f tok/s with %d more queued (%.0f%%); health p90 "
      "%.0f ms; %d queued streams cancelled (sent in %.2f s) and freed %.2f s after the last\n",
      f.control, running, f.flooded, queued, 100 * f.flooded / f.control, 1000 * f.health, queued,
      f.sent, f.cancelled);
  return f;
}

// The front end scales with work, not with queued streams (issue 13's bar, on the CPU backend):
// with 32 running and 5,000 queued streams, decode throughput within 10% of the 32-stream
// control, health within 100 ms, and cancelling every queued stream frees them within 1 s. A
// measurement that misses is taken once more (a shared CI machine has bursts of other work);
// the test prints the figures of each.
TEST(ReliabilityTest, QueuedStreamFloodDoesNotStarveTheRunningBatch) {
  constexpr int kRunning = 32, kQueued = 5000;
  // Two attention-DP replicas of kRunning / 2 sequences each.
  ServerJob job(2, {"--max-num-seqs", std::to_string(kRunning / 2), "--max-queue", "6000",
                    "--num-kv-blocks", "2048", "--drain-timeout", "1"});
  Streams running(job, kRunning, 3900);
  running.WaitStarted(kRunning);
  FloodFigures f = MeasureFlood(job, kRunning, kQueued);
  if (!f.MeetsTheBar()) f = MeasureFlood(job, kRunning, kQueued);
  EXPECT_GE(f.flooded, 0.9 * f.control);
  EXPECT_LT(f.health, 0.1);
  EXPECT_LT(f.cancelled, 1.0);
  EXPECT_LT(f.sent + f.cancelled, 5.0);
  ASSERT_EQ(kill(job.rank0_pid(), SIGTERM), 0);  // the drain's cut-off ends the running streams
  running.Join();
  EXPECT_EQ(job.Wait(std::chrono::seconds(30)), 1) << job.Log();
}

// A client that stops reading its stream: the server's writes wait on HTTP/2 flow control, the
// engine buffers that request's outputs up to --max-buffered-outputs and then ends it
// RESOURCE_EXHAUSTED, freeing its KV blocks; other requests are served meanwhile. When the
// client reads again it gets the buffered outputs, then the error.
TEST(ReliabilityTest, SlowReaderIsBoundedAndEndedAlone) {
  constexpr int kBuffered = 64, kMaxTokens = 400;
  ServerJob job(2, {"--model", kFixture, "--num-kv-blocks", "256", "--max-buffered-outputs",
                    std::to_string(kBuffered)});
  const double idle = job.Metric("tessera:kv_cache_free_blocks");
  ASSERT_GT(idle, 0);
  // A small, fixed receive window (no BDP growth): the server can send a few hundred bytes of
  // outputs before its writes wait for the client.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 1024);
  auto stub = v1::Generation::NewStub(
      grpc::CreateCustomChannel(job.address(), grpc::InsecureChannelCredentials(), args));
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
      stub->Generate(&context, Long(7, kMaxTokens));
  v1::GenerateResponse response;
  ASSERT_TRUE(reader->Read(&response));  // started; now the client stops reading
  const std::string too_slow = "tessera:request_errors_total{code=\"RESOURCE_EXHAUSTED\"}";
  auto start = Clock::now();
  while (LabelledMetric(job, too_slow) == 0 && Since(start) < 120)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_EQ(LabelledMetric(job, too_slow), 1) << "the slow reader's request was not ended";
  start = Clock::now();
  while (job.Metric("tessera:kv_cache_free_blocks") != idle && Since(start) < 10)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(job.Metric("tessera:kv_cache_free_blocks"), idle) << "its KV blocks stay taken";
  const double generated = job.Metric("tessera:generation_tokens_total");
  EXPECT_LT(generated, kMaxTokens) << "the generation ran to its end";
  // Another client is served while the slow one still holds its stream.
  auto client = job.MakeClient();
  int tokens = 0;
  grpc::Status other = client->Generate(
      Long(8, 16), [&](const v1::GenerateResponse& r) { tokens += r.token_ids_size(); });
  EXPECT_TRUE(other.ok()) << other.error_message();
  EXPECT_EQ(tokens, 16);
  // Reading again: what was buffered (the bound plus what the transport held), then the error.
  int read = 1;
  while (reader->Read(&response)) ++read;
  grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_NE(status.error_message().find("reads too slowly"), std::string::npos);
  std::printf("slow reader: ended after %.0f of %d tokens; read %d outputs afterwards\n", generated,
              kMaxTokens, read);
  EXPECT_GE(read, kBuffered);
  EXPECT_LT(read, kMaxTokens);
  EXPECT_EQ(Health(job), "SERVING");
}

// `--api-key ""` would serve without authentication: refused at start, saying why.
TEST(ReliabilityTest, EmptyApiKeyIsRefused) {
  ServerJob job(1, {"--model", kFixture, "--api-key", ""}, /*expect_ready=*/false);
  EXPECT_EQ(job.Wait(std::chrono::seconds(60)), 2) << job.Log();
  EXPECT_NE(job.Log().find("--api-key is empty"), std::string::npos) << job.Log();
}

}  // namespace
}  // namespace tessera
