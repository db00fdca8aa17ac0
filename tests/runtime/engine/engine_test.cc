// The engine under load on the CPU backend (random weights at a tiny shape, Qwen3's real
// tokenizer): many concurrent requests with chunked prefill, preemption, stop strings, stop ids,
// max_tokens and cancellations give the same greedy outputs as one request at a time, with async
// scheduling (the next step launched before this one's ids are read, its decode inputs taken from
// them on the device) on and off, and the output work on the output thread (async_output, one
// step late for stop strings) and without it. Seeded sampling, penalties and logprobs (which make
// a step synchronous) give the same tokens with async scheduling on and off. The step trace of
// such a run has its phases and the output thread's track; its metrics have every step's device
// time.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/ops.h"
#include "runtime/engine/engine.h"
#include "runtime/engine/executor.h"

namespace tessera {
namespace {

constexpr int kBlockSize = 16;

ModelConfig TinyConfig() {
  ModelConfig c;
  c.model_type = "qwen3";
  c.vocab_size = 151936;  // Qwen3's, so that the real tokenizer's ids are all in it
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.max_position_embeddings = 512;
  c.tie_word_embeddings = true;
  return c;
}

struct Result {
  std::vector<int32_t> tokens;
  std::string text;
  FinishReason reason = FinishReason::kNone;
  int64_t completion_tokens = 0;
};

// Reads a stream to its end.
Result Drain(RequestStream& stream) {
  Result r;
  for (;;) {
    EngineOutput out;
    if (!stream.Next(&out, std::chrono::milliseconds(120000))) {
      ADD_FAILURE() << "no output for 120 s";
      return r;
    }
    r.tokens.insert(r.tokens.end(), out.token_ids.begin(), out.token_ids.end());
    r.text += out.text;
    if (out.finished) {
      r.reason = out.finish_reason;
      r.completion_tokens = out.completion_tokens;
      return r;
    }
  }
}

// Submits every request at once, then reads each stream to its end.
std::vector<Result> SubmitAll(Engine& engine, const std::vector<EngineRequest>& requests) {
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (const EngineRequest& req : requests) {
    auto stream = engine.Submit(req);
    EXPECT_TRUE(stream.ok()) << stream.status();
    if (!stream.ok()) return {};
    streams.push_back(*stream);
  }
  std::vector<Result> results;
  for (auto& stream : streams) results.push_back(Drain(*stream));
  return results;
}

// The value of sample `name` (a counter, or a histogram's _sum / _count) in Metrics::Render()'s
// text; -1 when absent.
double MetricValue(const std::string& text, const std::string& name) {
  const size_t at = text.find("\n" + name + "{");
  if (at == std::string::npos) return -1;
  const size_t value = text.find("} ", at);
  return value == std::string::npos ? -1 : std::atof(text.c_str() + value + 2);
}

class EngineLoadTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto tok =
        Tokenizer::Load(std::string(TESSERA_SOURCE_DIR) + "/tests/data/qwen3/tokenizer-qwen3-0.6b");
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = tok->release();
    backend_ = MakeCpuBackend().release();
  }

  // An engine over a fresh executor with `blocks` KV blocks, running on its own thread.
  struct Running {
    std::unique_ptr<Executor> executor;
    std::unique_ptr<Engine> engine;
    std::thread thread;
    ~Running() {
      engine->Stop();
      thread.join();
    }
  };
  std::unique_ptr<Running> Start(EngineOptions options, int blocks, Metrics* metrics) {
    const ModelConfig config = TinyConfig();
    auto parallel = ParallelConfig::Create(1, 0, 1, 1, 1, 1, ModelDimsOf(config));
    EXPECT_TRUE(parallel.ok()) << parallel.status();
    auto r = std::make_unique<Running>();
    r->executor = std::make_unique<Executor>(config, *parallel, nullptr);
    options.sampleable_vocab = tokenizer_->vocab_size();
    const StepLimits limits = EngineStepLimits(options, config, blocks, kBlockSize);
    absl::Status s = r->executor->LoadDummy(*backend_, blocks, kBlockSize, limits, /*seed=*/7);
    EXPECT_TRUE(s.ok()) << s;
    r->engine = std::make_unique<Engine>(*r->executor, tokenizer_, metrics, options);
    Engine* engine = r->engine.get();
    r->thread = std::thread([engine] { engine->Run(); });
    return r;
  }

  // The requests: seeded prompts of 5..100 tokens, 4..20 new tokens, greedy.
  static std::vector<EngineRequest> Requests(int count) {
    std::mt19937 rng(1234);
    std::vector<EngineRequest> requests;
    for (int i = 0; i < count; ++i) {
      EngineRequest r;
      r.request_id = "r" + std::to_string(i);
      const int len = std::uniform_int_distribution<int>(5, 100)(rng);
      for (int t = 0; t < len; ++t)
        r.prompt.push_back(std::uniform_int_distribution<int>(100, 20000)(rng));
      r.max_tokens = std::uniform_int_distribution<int>(4, 20)(rng);
      r.sampling.temperature = 0;
      requests.push_back(std::move(r));
    }
    return requests;
  }

  // One request at a time on a plain engine (no output thread, synchronous steps).
  std::vector<Result> OneAtATime(const std::vector<EngineRequest>& requests) {
    EngineOptions options;
    options.max_num_seqs = 1;
    options.async_output = false;
    options.async_scheduling = false;
    auto r = Start(options, 64, nullptr);
    std::vector<Result> results;
    for (const EngineRequest& req : requests) {
      auto stream = r->engine->Submit(req);
      EXPECT_TRUE(stream.ok()) << stream.status();
      results.push_back(Drain(**stream));
    }
    return results;
  }

  // Serves `requests` on an engine with `options` and a step trace (file `name` + pid in the
  // test's temp dir), expects each result to equal `expected`'s, and returns the trace's JSON.
  std::string ServeTracedExpecting(EngineOptions options, const std::string& name,
                                   const std::vector<EngineRequest>& requests,
                                   const std::vector<Result>& expected) {
    const std::string trace =
        ::testing::TempDir() + "/engine-test-" + name + "-" + std::to_string(getpid()) + ".json";
    options.step_trace_path = trace;
    std::vector<Result> got;
    {
      auto r = Start(options, 64, nullptr);
      got = SubmitAll(*r->engine, requests);
    }
    EXPECT_EQ(got.size(), requests.size());
    for (size_t i = 0; i < got.size() && i < expected.size(); ++i) {
      EXPECT_EQ(got[i].tokens, expected[i].tokens) << "request " << i;
      EXPECT_EQ(got[i].reason, expected[i].reason) << "request " << i;
    }
    std::ifstream in(trace);
    std::stringstream ss;
    ss << in.rdbuf();
    std::remove(trace.c_str());
    return ss.str();
  }

  static const Tokenizer* tokenizer_;
  static Backend* backend_;
};
const Tokenizer* EngineLoadTest::tokenizer_ = nullptr;
Backend* EngineLoadTest::backend_ = nullptr;

// The stop strings: for every third request a piece from the middle of its unstopped text.
void AddStopStrings(std::vector<EngineRequest>* requests, const std::vector<Result>& plain) {
  for (size_t i = 0; i < requests->size(); i += 3) {
    const std::string& text = plain[i].text;
    size_t at = text.size() / 2;
    while (at > 0 && (static_cast<unsigned char>(text[at]) & 0xC0) == 0x80) --at;
    size_t end = std::min(text.size(), at + 2);
    while (end < text.size() && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) ++end;
    if (end > at) (*requests)[i].stop = {text.substr(at, end - at)};
  }
}

// The stop ids: for every third request (from the second) the id it generates halfway, an end
// that async scheduling sees one step late.
void AddStopIds(std::vector<EngineRequest>* requests, const std::vector<Result>& plain) {
  for (size_t i = 1; i < requests->size(); i += 3) {
    (*requests)[i].stop_token_ids = {plain[i].tokens[plain[i].tokens.size() / 2]};
  }
}

TEST_F(EngineLoadTest, UnderLoadEqualsOneAtATime) {
  std::vector<EngineRequest> requests = Requests(36);
  const std::vector<Result> plain = OneAtATime(requests);
  AddStopStrings(&requests, plain);
  AddStopIds(&requests, plain);
  const std::vector<Result> expected = OneAtATime(requests);
  int stopped_by_id = 0;
  for (size_t i = 1; i < requests.size(); i += 3) {
    stopped_by_id += expected[i].reason == FinishReason::kStop &&
                     expected[i].tokens.size() < plain[i].tokens.size();
  }
  EXPECT_GE(stopped_by_id, 6) << "the stop ids should end several requests early";
  int stopped_by_string = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_LE(expected[i].tokens.size(), plain[i].tokens.size());
    EXPECT_TRUE(
        std::equal(expected[i].tokens.begin(), expected[i].tokens.end(), plain[i].tokens.begin()))
        << i;
    if (!requests[i].stop.empty() && expected[i].reason == FinishReason::kStop) ++stopped_by_string;
  }
  EXPECT_GE(stopped_by_string, 6) << "the stop strings should end several requests";

  for (const auto& [async_scheduling, async_output] : std::vector<std::pair<bool, bool>>{
           {true, true}, {true, false}, {false, true}, {false, false}}) {
    SCOPED_TRACE(std::string(async_scheduling ? "async scheduling, " : "synchronous steps, ") +
                 (async_output ? "async output" : "output on the step loop"));
    Metrics metrics;
    EngineOptions options;
    options.max_num_seqs = 12;
    options.max_num_batched_tokens = 48;  // prompts up to 100 tokens: chunked prefill
    options.async_output = async_output;
    options.async_scheduling = async_scheduling;
    const std::string trace = ::testing::TempDir() + "/engine-test-steps-" +
                              std::to_string(async_scheduling) + std::to_string(async_output) +
                              "-" + std::to_string(getpid()) + ".json";
    options.step_trace_path = trace;
    std::vector<Result> got(requests.size());
    std::vector<Result> cancelled;
    const auto began = std::chrono::steady_clock::now();
    {
      // 40 blocks of 16 for up to 12 sequences of up to 120 tokens: preemption.
      auto r = Start(options, 40, &metrics);
      std::vector<std::shared_ptr<RequestStream>> streams;
      for (const EngineRequest& req : requests) {
        auto stream = r->engine->Submit(req);
        ASSERT_TRUE(stream.ok()) << stream.status();
        streams.push_back(*stream);
      }
      // Extra requests cancelled mid-flight.
      std::vector<std::shared_ptr<RequestStream>> to_cancel;
      for (int i = 0; i < 4; ++i) {
        EngineRequest req = requests[i];
        req.request_id = "cancel" + std::to_string(i);
        req.max_tokens = 200;
        req.stop.clear();
        auto stream = r->engine->Submit(req);
        ASSERT_TRUE(stream.ok()) << stream.status();
        to_cancel.push_back(*stream);
      }
      for (int i = 0; i < 4; ++i) r->engine->Cancel("cancel" + std::to_string(i));
      for (size_t i = 0; i < streams.size(); ++i) got[i] = Drain(*streams[i]);
      for (auto& s : to_cancel) cancelled.push_back(Drain(*s));
      // Every block comes back once the requests are done (and they leave the in-flight count
      // just after their last output is queued).
      for (int i = 0; i < 200 && (r->engine->stats().free_blocks != 40 || r->engine->in_flight());
           ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      EXPECT_EQ(r->engine->stats().free_blocks, 40);
      EXPECT_EQ(r->engine->in_flight(), 0);
    }
    const double wall =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
    for (size_t i = 0; i < requests.size(); ++i) {
      EXPECT_EQ(got[i].tokens, expected[i].tokens) << "request " << i;
      EXPECT_EQ(got[i].text, expected[i].text) << "request " << i;
      EXPECT_EQ(got[i].reason, expected[i].reason) << "request " << i;
      EXPECT_EQ(got[i].completion_tokens, expected[i].completion_tokens) << "request " << i;
    }
    for (const Result& c : cancelled) EXPECT_EQ(c.reason, FinishReason::kCancelled);
    const std::string rendered = metrics.Render();
    EXPECT_EQ(rendered.find("tessera:num_preemptions_total 0\n"), std::string::npos)
        << "the run should preempt";
    EXPECT_NE(rendered.find("tessera:engine_step_host_seconds_count"), std::string::npos);
    // Every collected step has its device time (here the forward's wall time): as many
    // observations as steps, a positive sum, within the run's wall time.
    const double steps = MetricValue(rendered, "tessera:engine_step_seconds_count");
    const double device_steps = MetricValue(rendered, "tessera:engine_step_device_seconds_count");
    const double device = MetricValue(rendered, "tessera:engine_step_device_seconds_sum");
    EXPECT_GT(steps, 0);
    EXPECT_EQ(device_steps, steps);
    EXPECT_GT(device, 0);
    EXPECT_LE(device, wall);

    std::ifstream in(trace);
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string json = ss.str();
    EXPECT_EQ(json.rfind("{\"displayTimeUnit\":\"ms\",\"traceEvents\":[", 0), 0u) << json.size();
    for (const char* phase :
         {"\"intake\"", "\"schedule\"", "\"plan\"", "\"forward\"", "\"collect\"", "\"sample\"",
          "\"output_wait\"", "\"output\"", "\"prefill_tokens\":", "\"collected_device_ms\":"}) {
      EXPECT_NE(json.find(phase), std::string::npos) << phase;
    }
    // Overlapped steps collect the step before the one they launch; synchronous ones their own.
    int overlapped = 0, own = 0;
    for (size_t at = json.find("\"name\":\"step "); at != std::string::npos;
         at = json.find("\"name\":\"step ", at + 1)) {
      const size_t step_at = json.find("\"step\":", at) + 7;
      const size_t collected_at = json.find("\"collected\":", at) + 12;
      const long step = std::stol(json.substr(step_at)),
                 collected = std::stol(json.substr(collected_at));
      overlapped += collected == step - 1;
      own += collected == step;
    }
    if (async_scheduling) {
      EXPECT_GT(overlapped, own) << "most steps should overlap";
    } else {
      EXPECT_EQ(overlapped, 0);
      EXPECT_GT(own, 0);
    }
    EXPECT_EQ(json.find("\"output_async\":true") != std::string::npos, async_output);
    EXPECT_EQ(json.find("\"tid\":2,\"ts\"") != std::string::npos, async_output);
    std::remove(trace.c_str());
  }
}

// --long-prefill-token-threshold: a prompt is prefilled in chunks of at most that many tokens
// (the step trace's largest prefill is the cap, one sequence at a time), decodes ride beside them,
// and the greedy outputs are those of whole-prompt prefills.
TEST_F(EngineLoadTest, LongPrefillThresholdChunksPromptsAndKeepsOutputs) {
  const std::vector<EngineRequest> requests = Requests(12);
  const std::vector<Result> expected = OneAtATime(requests);
  for (int max_seqs : {1, 6}) {
    SCOPED_TRACE("max_num_seqs " + std::to_string(max_seqs));
    EngineOptions options;
    options.max_num_seqs = max_seqs;
    options.long_prefill_token_threshold = 16;
    const std::string json = ServeTracedExpecting(
        options, "long-prefill-" + std::to_string(max_seqs), requests, expected);
    int largest = 0, steps = 0, mixed = 0;
    const std::string key = "\"prefill_tokens\":", decode_key = "\"decode_tokens\":";
    for (size_t at = json.find(key); at != std::string::npos; at = json.find(key, at + 1)) {
      const int prefill = std::atoi(json.c_str() + at + key.size());
      const size_t d = json.find(decode_key, at);
      ASSERT_NE(d, std::string::npos);
      const int decode = std::atoi(json.c_str() + d + decode_key.size());
      largest = std::max(largest, prefill);
      mixed += prefill > 0 && decode > 0;
      ++steps;
    }
    ASSERT_GT(steps, 0) << json.size();
    // One sequence: every prefill row is one prompt's chunk. Several: at most one chunk each.
    if (max_seqs == 1) {
      EXPECT_EQ(largest, 16);
    } else {
      EXPECT_LE(largest, 16 * max_seqs);
      EXPECT_GT(mixed, 0) << "decodes should share steps with prompt chunks";
    }
  }
}

// Mixed steps put their one-token sequences (decodes, and the last token of a 17-token prompt
// chunked by 16) first: in every step's trace the micro-batch's leading one-token count
// (StepBatch::single_token_seqs) is every one-token sequence of the step, some steps mix them
// with longer chunks, some hold a 1-token prompt chunk, and the greedy outputs are unchanged.
TEST_F(EngineLoadTest, OneTokenSequencesLeadMixedSteps) {
  std::vector<EngineRequest> requests = Requests(12);
  for (size_t i = 0; i < requests.size(); i += 3) requests[i].prompt.resize(17);
  const std::vector<Result> expected = OneAtATime(requests);
  for (bool async_scheduling : {true, false}) {
    SCOPED_TRACE(async_scheduling ? "async scheduling" : "synchronous steps");
    EngineOptions options;
    options.max_num_seqs = 6;
    options.long_prefill_token_threshold = 16;
    options.async_scheduling = async_scheduling;
    const std::string json = ServeTracedExpecting(
        options, "one-token-" + std::to_string(async_scheduling), requests, expected);
    auto field = [&json](size_t at, const std::string& name) {
      const size_t f = json.find("\"" + name + "\":", at);
      EXPECT_NE(f, std::string::npos) << name;
      return f == std::string::npos ? -1 : std::atoi(json.c_str() + f + name.size() + 3);
    };
    int steps = 0, mixed = 0, one_token_chunks = 0;
    for (size_t at = json.find("\"name\":\"step "); at != std::string::npos;
         at = json.find("\"name\":\"step ", at + 1)) {
      const int seqs = field(at, "seqs"), one = field(at, "one_token_seqs"),
                single = field(at, "single_token_seqs"), decode = field(at, "decode_tokens");
      EXPECT_EQ(single, one) << "step " << field(at, "step") << ": one-token sequences lead";
      mixed += 0 < single && single < seqs;
      one_token_chunks += one > decode;
      ++steps;
    }
    ASSERT_GT(steps, 0) << json.size();
    EXPECT_GT(mixed, 0) << "decodes should share steps with prompt chunks";
    EXPECT_GT(one_token_chunks, 0) << "17-token prompts chunked by 16 end in a 1-token chunk";
  }
}

// Sampling that is not greedy: seeded draws (and unseeded ones, drawn from the engine's seed and
// the arrival number), penalties and logprobs (those steps run synchronously) under load give
// the same tokens with async scheduling on and off, and as one request at a time.
TEST_F(EngineLoadTest, SamplingSameWithAndWithoutAsyncScheduling) {
  std::vector<EngineRequest> requests = Requests(20);
  for (size_t i = 0; i < requests.size(); ++i) {
    SamplingParams& p = requests[i].sampling;
    p.temperature = 0.9f;
    p.top_k = 50;
    if (i % 4 != 3) p.seed = 100 + i;
    if (i % 5 == 1) p.repetition_penalty = 1.3f;
    if (i % 7 == 2) requests[i].top_logprobs = 2;
  }
  std::vector<std::vector<Result>> runs;
  for (bool async_scheduling : {true, false}) {
    EngineOptions options;
    options.max_num_seqs = 8;
    options.max_num_batched_tokens = 64;
    options.async_scheduling = async_scheduling;
    options.seed = 5;
    auto r = Start(options, 64, nullptr);
    std::vector<Result> got = SubmitAll(*r->engine, requests);
    ASSERT_EQ(got.size(), requests.size());
    runs.push_back(std::move(got));
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(runs[0][i].tokens, runs[1][i].tokens) << "request " << i;
    EXPECT_EQ(runs[0][i].reason, runs[1][i].reason) << "request " << i;
  }
  // Seeded requests draw by their own stream: one at a time gives the same tokens.
  const std::vector<Result> alone = OneAtATime(requests);
  for (size_t i = 0; i < requests.size(); ++i) {
    if (!requests[i].sampling.seed) continue;
    EXPECT_EQ(alone[i].tokens, runs[0][i].tokens) << "request " << i;
  }
}

}  // namespace
}  // namespace tessera
